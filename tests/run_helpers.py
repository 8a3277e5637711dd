"""Helpers of the tests that train the tiny preset in-process: the argv of a run, its metrics, a
complete checkpoint state without the loop, structural comparison, a signal at a chosen step."""
from __future__ import annotations

import io
import json
import os
import signal
from pathlib import Path

import torch

from checkpoint import FORMAT_VERSION, rng_state
from data.text import Tokenizer
from models import build_model
from training import Trainer, make_ema, param_groups


def argv(out: Path, name: str, **overrides) -> list[str]:
    # One intra-op thread: on a shared 2-core machine more threads only fight each other.
    args = ["--preset", "tiny", "--experiment_name", name, "--output_dir", str(out), "--num_threads", "1"]
    for key, value in overrides.items():
        args += [f"--{key}", str(value)]
    return args


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def make_state(cfg, step: int = 5) -> dict:
    """A complete checkpoint state as main.py writes it, without running the loop."""
    tokenizer = Tokenizer(["hello", "sign", "world"])
    model = build_model(cfg, len(tokenizer))
    ema = make_ema(model, cfg.ema_decay)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=cfg.lr)
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    optimizer.step()  # so the optimizer state holds tensors
    ema.update_parameters(model)
    return dict(format_version=FORMAT_VERSION, step=step, data_position=step * cfg.batch_size,
                model=model.state_dict(), ema=ema.module.state_dict(), ema_num_updates=int(ema.n_averaged),
                optimizer=optimizer.state_dict(), rng=rng_state(torch.Generator().manual_seed(0)),
                config=cfg.to_dict(), tokenizer=tokenizer.state())


def max_abs_diff(a, b, where: str = "") -> float:
    """Largest |a - b| over two nested structures; asserts they have the same structure."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype, where
        if a.numel() == 0:
            return 0.0
        if not a.is_floating_point():
            return float((a.long() - b.long()).abs().max()) if a.dtype != torch.bool else float((a != b).any())
        return float((a.double() - b.double()).abs().max())
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (where, set(a) ^ set(b))
        return max([max_abs_diff(a[k], b[k], f"{where}.{k}") for k in a], default=0.0)
    if isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        return max([max_abs_diff(x, y, f"{where}[{i}]") for i, (x, y) in enumerate(zip(a, b))], default=0.0)
    assert a == b, (where, a, b)
    return 0.0


def plain_types_only(value, where: str = "state") -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            assert isinstance(key, (str, int)), (where, key)
            plain_types_only(item, f"{where}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            plain_types_only(item, f"{where}[{i}]")
    else:
        assert value is None or isinstance(value, (torch.Tensor, bool, int, float, str)), (where, type(value))


def interrupt_at(monkeypatch, step: int, signum=signal.SIGINT) -> None:
    """Deliver a real signal to this process during 0-based step `step - 1`, before its forward."""
    real = Trainer.step

    def stepped(self, batches, index):
        if index == step - 1:
            os.kill(os.getpid(), signum)
        return real(self, batches, index)
    monkeypatch.setattr(Trainer, "step", stepped)


def half_write_then(exc: BaseException):
    """A torch.save that writes half of the real bytes, then fails (crash / full disk mid-write)."""
    real_save = torch.save

    def fake_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc
    return fake_save
