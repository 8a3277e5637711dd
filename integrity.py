"""Checkpoint integrity: a digest of every part of a checkpoint, written with it and checked on load.

Why: torch's zip container does not check its CRCs on load, so bytes garbled inside a tensor's
storage (a bad disk, a bad copy, an edit) loaded silently and the resumed run stopped on a NaN loss
on every rerun (issue 21, row 2). `integrity_record(state)` hashes each top-level entry (tensors by
dtype, shape and raw bytes; plain values by type and repr; dicts in their order), `check_integrity`
recomputes it after loading and names the entry that changed.

Also here: `nonfinite_tensor`, the finite-weights check every save runs first (a diverged model is
never written over the last good one).
"""
from __future__ import annotations

import hashlib
from typing import Any

import torch

ALGORITHM = "sha256"
RECORD_KEY = "integrity"  # where the record lives in a checkpoint
_UNHASHED = ("format_version", RECORD_KEY)  # the version selects the check; the record is the check


def _feed(h: "hashlib._Hash", value: Any) -> None:
    if isinstance(value, torch.Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    elif isinstance(value, dict):
        h.update(f"D{len(value)}|".encode())
        for key, item in value.items():
            _feed(h, key)
            _feed(h, item)
    elif isinstance(value, (list, tuple)):
        h.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)}|".encode())
        for item in value:
            _feed(h, item)
    else:  # None, bool, int, float, str: what weights_only loading allows besides tensors
        h.update(f"{type(value).__name__}:{value!r}|".encode())


def digest(value: Any) -> str:
    h = hashlib.new(ALGORITHM)
    _feed(h, value)
    return h.hexdigest()


def integrity_record(state: dict[str, Any]) -> dict[str, Any]:
    """{'algorithm': 'sha256', 'parts': {key: hex digest}} for every entry of `state` but the
    format version and the record itself."""
    return dict(algorithm=ALGORITHM, parts={k: digest(v) for k, v in state.items() if k not in _UNHASHED})


def integrity_mismatch(state: dict[str, Any]) -> str | None:
    """None when `state` matches the record it carries, else what is wrong (names the entry)."""
    record = state.get(RECORD_KEY)
    if not isinstance(record, dict) or record.get("algorithm") != ALGORITHM or not isinstance(record.get("parts"), dict):
        return f"its integrity record is missing or malformed (expected '{RECORD_KEY}' with {ALGORITHM} digests)"
    parts = record["parts"]
    present = [k for k in state if k not in _UNHASHED]
    if set(parts) != set(present):
        return (f"its entries {sorted(present)} differ from those its integrity record lists "
                f"{sorted(parts)}")
    for key in present:
        if digest(state[key]) != parts[key]:
            return (f"'{key}' does not match its {ALGORITHM} digest: its bytes changed after it was "
                    "written (disk corruption, a bad copy or an edit)")
    return None


def nonfinite_tensor(state: dict[str, Any], keys: tuple[str, ...] = ("model", "ema", "optimizer")) -> str | None:
    """The dotted name of the first floating tensor under `keys` holding NaN or inf, else None."""
    def walk(value: Any, where: str) -> str | None:
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and value.numel() and not bool(torch.isfinite(value).all()):
                return where
            return None
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
        for key, item in items:
            found = walk(item, f"{where}.{key}")
            if found:
                return found
        return None
    for key in keys:
        found = walk(state.get(key), key)
        if found:
            return found
    return None
