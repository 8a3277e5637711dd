"""Checkpoint policy: what a checkpoint holds and must match, atomic writes, RNG state, rotation.

Saves are atomic (`atomic_write`: temp file in the same folder, fsync, os.replace, fsync of the
folder; every file the project writes goes through it), the newest `keep` are kept, and loading uses
`torch.load(weights_only=True)`: a checkpoint holds tensors and plain Python types only. A
checkpoint that fails to load is reported and the previous one is used. Every checkpoint carries an
integrity record (integrity.py), checked on load; only `ckpt_<8 digits>.pt` files whose step matches
their name are a run's checkpoints; rotation counts only checkpoints that load; a save refuses
non-finite weights (`DivergedError`).
"""
from __future__ import annotations

import errno
import io
import os
import random
import re
from pathlib import Path
from typing import Any, Callable, IO

import numpy as np
import torch

from integrity import RECORD_KEY, integrity_mismatch, integrity_record, nonfinite_tensor

# 2: the pose stage predicts keypoints with visibility, and removed options are gone from the config.
# 3: an integrity record (integrity.py) of every entry; version 2 (no record) is still read.
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
CHECKPOINT_NAME = re.compile(r"^ckpt_(\d{8,})\.pt$")  # what save_checkpoint writes; nothing else is the run's
REQUIRED_KEYS = ("format_version", "step", "data_position", "model", "ema", "ema_num_updates",
                 "optimizer", "rng", "config", "tokenizer")
_PREFIXES = ("module.", "_orig_mod.")

# Config keys that shape the model's parameters.
PARAMETER_KEYS = ("model_size", "num_frames", "frame_size_px", "patch_size_px", "tubelet_frames",
                  "mlp_ratio", "text_depth", "frame_cond_depth", "max_text_len_tokens", "decoder_channels",
                  "final_norm", "residual_input", "pose_cond", "pose_skeleton", "pose_depth", "refine_channels",
                  "refine_layers", "pixel_norm_over_clip", "pixel_temporal_blend")
# Config keys that give the network's output its meaning: the same weights under another schedule or
# prediction type are another model.
OUTPUT_KEYS = ("prediction_type", "sigma_data", "num_timesteps", "beta_schedule", "zero_terminal_snr")
# What a resumed run must agree on with its checkpoint.
MUST_MATCH = PARAMETER_KEYS + OUTPUT_KEYS


def model_config_mismatch(saved: dict[str, Any], cfg) -> dict[str, tuple[Any, Any]]:
    """{key: (checkpoint value, requested value)} for the MUST_MATCH keys that differ."""
    return {k: (saved.get(k), getattr(cfg, k)) for k in MUST_MATCH if saved.get(k) != getattr(cfg, k)}


_TEMP_FILE = re.compile(r"^\.tmp_(?P<name>.+)_(?P<pid>\d+)$")  # what atomic_write names its temp files


def temp_path(path: str | os.PathLike) -> Path:
    """The temp file `atomic_write` fills for `path`: hidden, beside it, named by this process's PID."""
    path = Path(path)
    return path.with_name(f".tmp_{path.name}_{os.getpid()}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except PermissionError:  # it exists, owned by another user
        return True
    except (ProcessLookupError, OverflowError):  # no such process (or no PID could be this large)
        return False
    return True


def remove_stale_temp_files(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files `atomic_write` left in `folder` for processes that are gone (a kill -9,
    a power loss mid-write): they are never valid files and can be as large as one. A live process's
    are kept, it may still be writing them. Returns the removed paths."""
    removed = []
    try:
        names = os.listdir(folder)
    except OSError:
        return removed
    for name in names:
        match = _TEMP_FILE.match(name)
        if match and not _pid_alive(int(match.group("pid"))):
            path = Path(folder) / name
            try:
                path.unlink()
                removed.append(path)
            except OSError:  # another process removed it first, or a read-only folder: not ours to fix
                pass
    return removed


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> None:
    """Write `path` all or nothing: `write(fh)` fills a temp file in the same folder, which is flushed,
    fsynced and renamed over `path`; the folder is fsynced so the rename survives a power loss. On any
    failure the temp file is removed and `path` keeps its previous content."""
    path = Path(path)
    tmp = temp_path(path)
    try:
        with open(tmp, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda fh: fh.write(text.encode("utf-8")))


class CheckpointError(RuntimeError):
    """A checkpoint could not be written or read (the message names the file)."""


class DivergedError(CheckpointError):
    """A save refused: the weights (or optimizer state) hold NaN or inf."""


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DDP (`.module`) and torch.compile (`._orig_mod`) wrappers."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip wrapper prefixes ('module.', '_orig_mod.') so any checkpoint loads into a plain model."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """All random states of this process as tensors and plain types (weights_only-safe)."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "generator": generator.get_state(),
    }


def gather_rng_states(generator: torch.Generator) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order) under torch.distributed: all_gather_object fails to
    unpickle tensors here ("UntypedStorage has no attribute dtype"), so each state travels as
    torch.save bytes and is read back with weights_only."""
    import torch.distributed as dist

    buffer = io.BytesIO()
    torch.save(rng_state(generator), buffer)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, buffer.getvalue())
    return [torch.load(io.BytesIO(b), weights_only=True) for b in gathered]


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    random.setstate(state["python"])
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    generator.set_state(state["generator"])


def checkpoint_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoint files, newest first: only `ckpt_<8 digits>.pt`, ordered by that step
    (a user's `ckpt_best.pt` or `ckpt_00000010.pt.bak` is not one of them)."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := CHECKPOINT_NAME.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def step_of(path: str | os.PathLike) -> int | None:
    """The step in a checkpoint's file name, or None for a name save_checkpoint does not write."""
    match = CHECKPOINT_NAME.match(Path(path).name)
    return int(match.group(1)) if match else None


_VERIFIED: dict[tuple[str, int, int], bool] = {}  # (path, size, mtime_ns) -> loads, so rotation reads each file once


def is_loadable(path: Path) -> bool:
    """Whether `path` loads and passes its integrity check (cached per file version)."""
    try:
        st = path.stat()
    except OSError:
        return False
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        try:
            _VERIFIED[key] = load_checkpoint(path, "cpu", mmap=True)["step"] == step_of(path)
        except CheckpointError:
            _VERIFIED[key] = False
    return _VERIFIED[key]


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any], keep: int) -> Path:
    """Write `state` atomically as checkpoints/ckpt_{step:08d}.pt with its integrity record, and keep
    the newest `keep` checkpoints that load (one that does not is never counted).

    A failure part-way (full disk, crash, exception) leaves no partial file under the final name
    and every earlier checkpoint untouched. Non-finite weights raise DivergedError before anything
    is written.
    """
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint state is missing keys {missing}")
    if keep < 1:
        raise ValueError(f"keep must be >= 1 (the new checkpoint itself), got {keep}")
    folder = Path(run_dir) / "checkpoints"
    final = folder / f"ckpt_{state['step']:08d}.pt"
    bad = nonfinite_tensor(state)
    if bad:
        previous = next((p for p in checkpoint_paths(run_dir) if p != final), None)
        raise DivergedError(f"not saving step {state['step']}: {bad} holds NaN or inf, the run has diverged "
                            f"(e.g. a learning rate too high); "
                            + (f"the last good checkpoint {previous} is kept" if previous else "no checkpoint is kept"))
    state = {**state, RECORD_KEY: integrity_record(state)}
    try:
        folder.mkdir(parents=True, exist_ok=True)
        remove_stale_temp_files(folder)  # so repeated crashes mid-save cannot fill the disk
        atomic_write(final, lambda fh: torch.save(state, fh))
    except BaseException as exc:
        previous = next((p for p in checkpoint_paths(run_dir) if p != final), None)
        kept = f"the previous checkpoint {previous} is intact" if previous else "no earlier checkpoint exists"
        if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
            raise CheckpointError(f"disk full while writing {final}; {kept}") from exc
        if isinstance(exc, OSError):
            raise CheckpointError(f"cannot write {final}: {exc.strerror or exc}; {kept}") from exc
        if isinstance(exc, Exception):
            raise CheckpointError(f"failed to write {final} ({exc}); {kept}") from exc
        raise
    # Newest first: everything older than the `keep` newest checkpoints that load goes. One that
    # does not load is never counted (it left a run with one fallback fewer, issue 21 row 3).
    good = 0
    for path in checkpoint_paths(run_dir):
        if good >= keep:
            path.unlink(missing_ok=True)
        elif is_loadable(path):
            good += 1
    return final


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    mmap: bool = False) -> dict[str, Any]:
    """Load one checkpoint safely and check it is complete and unchanged since it was written."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except Exception as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {exc}") from exc
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} does not hold a dict")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing:
        raise CheckpointError(f"checkpoint {path} is missing required keys {missing}")
    if state["format_version"] not in READABLE_VERSIONS:
        raise CheckpointError(f"checkpoint {path} has format_version {state['format_version']}, "
                              f"this code reads {READABLE_VERSIONS} (written by another version of "
                              "text2sign: train it again with this one)")
    if state["format_version"] >= 3:  # version 2 predates the record
        problem = integrity_mismatch(state)
        if problem:
            raise CheckpointError(f"checkpoint {path} is corrupt: {problem}")
    state.pop(RECORD_KEY, None)
    state["model"] = clean_state_dict(state["model"])
    state["ema"] = clean_state_dict(state["ema"])
    return state


def load_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor], path: str | os.PathLike) -> None:
    """Strict load of `weights` into `module`; a key mismatch (a checkpoint from a code version with
    other model settings) raises CheckpointError naming the file and the keys."""
    expected = module.state_dict().keys()
    missing, unexpected = sorted(expected - weights.keys()), sorted(weights.keys() - expected)
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: its weights do not fit the model its config describes (missing "
            f"{_few(missing)}; unexpected {_few(unexpected)}); was it written by another version "
            "of models/architectures/vivit.py?")
    module.load_state_dict(weights)


def _few(keys: list[str], shown: int = 3) -> str:
    if not keys:
        return "none"
    return ", ".join(keys[:shown]) + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def load_latest(run_dir: str | os.PathLike, map_location: str | torch.device = "cpu",
                log=print, before_step: int | None = None) -> tuple[dict[str, Any], Path] | None:
    """The newest loadable checkpoint of a run (falling back past corrupt ones), or None if none;
    with `before_step`, the newest one older than that step."""
    paths = [p for p in checkpoint_paths(run_dir) if before_step is None or step_of(p) < before_step]
    errors = []
    for path in paths:
        try:
            state = load_checkpoint(path, map_location)
            if state["step"] != step_of(path):
                raise CheckpointError(f"checkpoint {path} holds step {state['step']}, not the step in its "
                                      "name: a renamed copy, not a checkpoint this run wrote")
            return state, path
        except CheckpointError as exc:
            errors.append(str(exc))
            log(f"WARNING: {exc}; trying the previous checkpoint")
    if paths:
        raise CheckpointError("no loadable checkpoint in " + str(run_dir) + ": " + "; ".join(errors))
    return None
