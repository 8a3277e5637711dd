"""What a training run must survive (../shared/RELIABILITY.md, issue 7), on the tiny CPU preset.

The rules that need the training loop: exact resume, non-finite loss or gradient, signals, disk-full
and corrupt checkpoints met by a running loop. The file-level rules are in
tests/test_reliability_state.py. Training runs go through
`main.main(argv)` in-process; a real subprocess is used only where a fresh process is the point
(SIGTERM, and one resume).
"""
from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main as train_main
from checkpoint import FORMAT_VERSION, REQUIRED_KEYS, checkpoint_paths, load_checkpoint
from config import config_from_dict, make_config
from data import StepSampler
from diffusion.objective import DenoisingLoss
from tests.run_helpers import argv, half_write_then, interrupt_at, max_abs_diff, metrics, plain_types_only

ROOT = Path(__file__).resolve().parents[1]
NAN_OR_INF_STEP = 7  # 0-based index of the step whose loss/gradient is made non-finite


# --- rule 1: exact resume ---------------------------------------------------------------------------

RESUME_ARGS = dict(max_steps=20, log_every_steps=1)  # interrupted at k = 10; the epoch ends at step 16
COMPARED_METRICS = ("step", "loss", "lr", "grad_norm", "loss_q1", "loss_q2", "loss_q3", "loss_q4")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert train_main.main(argv(out, "run", **RESUME_ARGS)) == 0
    return out / "run"


@pytest.mark.parametrize("num_workers, resume_in", [(0, "subprocess"), (2, "process")])
def test_resume_is_exact(tmp_path, monkeypatch, capsys, straight_run, num_workers, resume_in):
    """20 steps straight == 10 steps, SIGINT, a fresh process/objects resuming 10 more steps."""
    args = argv(tmp_path, "run", num_workers=num_workers, **RESUME_ARGS)
    interrupt_at(monkeypatch, 10)
    assert train_main.main(args) == 130
    monkeypatch.undo()
    assert [p.name for p in checkpoint_paths(tmp_path / "run")] == ["ckpt_00000010.pt"]
    assert [r["step"] for r in metrics(tmp_path / "run")] == list(range(1, 11))
    if resume_in == "subprocess":
        proc = subprocess.run([sys.executable, "main.py", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "at step 10" in proc.stdout
    else:
        capsys.readouterr()
        assert train_main.main(args) == 0
        assert "at step 10" in capsys.readouterr().out

    resumed = load_checkpoint(checkpoint_paths(tmp_path / "run")[0])
    straight = load_checkpoint(checkpoint_paths(straight_run)[0])
    assert resumed["step"] == straight["step"] == 20
    assert resumed["data_position"] == straight["data_position"] == 80
    figures = {key: max_abs_diff(resumed[key], straight[key], key)
               for key in ("model", "ema", "ema_num_updates", "optimizer", "rng", "tokenizer")}
    print(f"\nresume equivalence (workers={num_workers}, resumed in a {resume_in}): max |delta| {figures}")
    assert figures == dict.fromkeys(figures, 0.0)
    differs = {k for k in straight["config"] if straight["config"][k] != resumed["config"][k]}
    assert differs <= {"output_dir", "num_workers"}
    got = [{k: r[k] for k in COMPARED_METRICS} for r in metrics(tmp_path / "run")]
    want = [{k: r[k] for k in COMPARED_METRICS} for r in metrics(straight_run)]
    assert got == want  # per-step loss, LR and grad norm, bit for bit


def test_checkpoint_from_training_is_weights_only_safe(straight_run):
    path = checkpoint_paths(straight_run)[0]
    raw = torch.load(path, map_location="cpu", weights_only=True)
    plain_types_only(raw)
    assert set(REQUIRED_KEYS) <= set(raw) and raw["format_version"] == FORMAT_VERSION
    assert set(raw["rng"]) == {"python", "numpy", "torch", "cuda", "generator"}
    assert not any(k.startswith(("module.", "_orig_mod.")) for k in raw["model"])
    assert config_from_dict(raw["config"]) == make_config("tiny", {
        **RESUME_ARGS, "experiment_name": "run", "output_dir": str(straight_run.parent), "num_threads": 1})
    assert [p.name for p in checkpoint_paths(straight_run)] == ["ckpt_00000020.pt", "ckpt_00000010.pt"]


# --- rule 4: non-finite loss or gradient ----------------------------------------------------------

class _InfGrad(torch.autograd.Function):
    """Identity forward, infinite gradient backward: a finite loss with a non-finite gradient."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("inf")


@pytest.mark.parametrize("kind", ["nan_loss", "inf_loss", "inf_grad"])
def test_non_finite_stops_before_optimizer_step(tmp_path, monkeypatch, capsys, kind):
    run = tmp_path / "run"
    real = DenoisingLoss.__call__
    seen = {}
    streams = make_config("tiny").cpu_streams  # the loss runs once per stream slice and step

    def losses(self, model, *args, **kwargs):
        with lock:
            seen["calls"] = seen.get("calls", 0) + 1
            calls = seen["calls"]
            if calls == NAN_OR_INF_STEP * streams + 1:  # the bad step's first slice, before any backward
                seen["model"] = model
                seen["params"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
                seen["ckpt"] = {p: p.read_bytes() for p in checkpoint_paths(run)}
        result = real(self, model, *args, **kwargs)
        if NAN_OR_INF_STEP * streams < calls <= (NAN_OR_INF_STEP + 1) * streams:
            loss = result.loss
            result.loss = {"nan_loss": loss * float("nan"), "inf_loss": loss * float("inf"),
                           "inf_grad": _InfGrad.apply(loss)}[kind]
        return result
    import threading
    lock = threading.Lock()
    monkeypatch.setattr(DenoisingLoss, "__call__", losses)
    code = train_main.main(argv(tmp_path, "run", max_steps=12, checkpoint_every_steps=5))
    err = capsys.readouterr().err
    assert code == train_main.EXIT_NONFINITE == 3
    expected = [i for i, _ in StepSampler(64, 4, seed=0).indices(NAN_OR_INF_STEP, 0)]
    assert f"at step {NAN_OR_INF_STEP}, batch indices {expected}" in err, err
    assert ("non-finite loss nan" if kind == "nan_loss" else "non-finite loss inf" if kind == "inf_loss"
            else "gradient norm inf") in err or "gradient norm nan" in err
    assert "no optimizer step" in err
    # the last good checkpoint (step 5) is untouched and nothing newer was written
    assert list(seen["ckpt"]) == checkpoint_paths(run) and [p.name for p in seen["ckpt"]] == ["ckpt_00000005.pt"]
    assert all(p.read_bytes() == data for p, data in seen["ckpt"].items())
    # no optimizer step: the parameters are those the bad step started from
    assert max_abs_diff(seen["model"].state_dict(), seen["params"]) == 0.0
    assert all(bool(torch.isfinite(v).all()) for v in seen["model"].state_dict().values())
    assert [r["step"] for r in metrics(run)] == [5]


# --- rule 3: signals --------------------------------------------------------------------------------

def test_sigterm_saves_at_step_boundary_and_resume_continues(tmp_path, capsys):
    run = tmp_path / "run"
    args = argv(tmp_path, "run", max_steps=200, log_every_steps=1, checkpoint_every_steps=1000)
    with open(tmp_path / "log.txt", "w") as log:
        proc = subprocess.Popen([sys.executable, "main.py", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
                assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "log.txt").read_text()
                time.sleep(0.05)
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    output = (tmp_path / "log.txt").read_text()
    assert code == 143, output
    stopped = metrics(run)[-1]["step"]
    assert 3 <= stopped < 200 and f"stopped by signal SIGTERM at step {stopped}" in output
    assert [p.name for p in checkpoint_paths(run)] == [f"ckpt_{stopped:08d}.pt"]
    assert load_checkpoint(checkpoint_paths(run)[0])["step"] == stopped
    assert not list((run / "checkpoints").glob(".tmp*"))

    capsys.readouterr()
    assert train_main.main(argv(tmp_path, "run", max_steps=stopped + 2, log_every_steps=1)) == 0
    assert f"ckpt_{stopped:08d}.pt at step {stopped}" in capsys.readouterr().out
    assert [r["step"] for r in metrics(run)] == list(range(1, stopped + 3))
    assert load_checkpoint(checkpoint_paths(run)[0])["step"] == stopped + 2


_SLOW_DATA_MAIN = """
import sys, time
import data.synthetic as synthetic
from data import StepSampler
real = synthetic.SyntheticSignDataset.__getitem__
slow_items = {i for i, _ in StepSampler(64, 4, seed=0).indices(3, 0)}
def slow(self, index):  # from step 3 on, the main process waits on a worker busy loading its batch
    time.sleep(1.0 if index in slow_items else 0.0)
    return real(self, index)
synthetic.SyntheticSignDataset.__getitem__ = slow
import main
sys.exit(main.main(sys.argv[1:]))
"""


def test_ctrl_c_to_process_group_with_loader_workers_saves_and_exits_130(tmp_path):
    """A terminal's Ctrl-C reaches the DataLoader workers too; they must not die before the save."""
    run = tmp_path / "run"
    args = argv(tmp_path, "run", max_steps=200, log_every_steps=1, num_workers=2, checkpoint_every_steps=1000)
    proc = subprocess.Popen([sys.executable, "-c", _SLOW_DATA_MAIN, *args], cwd=ROOT, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not ((run / "metrics.jsonl").exists() and len(metrics(run)) >= 3):
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()[0]
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        output = proc.communicate(timeout=60)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, output[-3000:]
    stopped = metrics(run)[-1]["step"]
    assert f"stopped by signal SIGINT at step {stopped}" in output
    assert load_checkpoint(checkpoint_paths(run)[0])["step"] == stopped


# --- rules 2 and 7 through the training loop ------------------------------------------------------

def test_training_disk_full_exits_1_and_keeps_previous(tmp_path, monkeypatch, capsys):
    real = torch.save
    saves = []

    def save(obj, f, *args, **kwargs):
        saves.append(1)
        if len(saves) == 2:
            return half_write_then(OSError(errno.ENOSPC, "No space left on device"))(obj, f)
        return real(obj, f, *args, **kwargs)
    monkeypatch.setattr(torch, "save", save)
    code = train_main.main(argv(tmp_path, "run", max_steps=10, checkpoint_every_steps=5))
    monkeypatch.undo()
    err = capsys.readouterr().err
    assert code == 1
    assert "disk full while writing" in err and "ckpt_00000005.pt is intact" in err
    assert [p.name for p in (tmp_path / "run" / "checkpoints").iterdir()] == ["ckpt_00000005.pt"]
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "ckpt_00000005.pt")["step"] == 5


def test_training_resumes_from_previous_when_latest_is_corrupt(tmp_path, capsys):
    args = argv(tmp_path, "run", max_steps=10, checkpoint_every_steps=5, log_every_steps=1)
    assert train_main.main(args) == 0
    latest = checkpoint_paths(tmp_path / "run")[0]
    latest.write_bytes(latest.read_bytes()[:1000])  # a torn write from some other tool
    capsys.readouterr()
    assert train_main.main(args) == 0
    out = capsys.readouterr().out
    assert f"WARNING: cannot read checkpoint {latest}" in out
    assert "from " + str(tmp_path / "run" / "checkpoints" / "ckpt_00000005.pt") + " at step 5" in out
    assert load_checkpoint(latest)["step"] == 10  # rewritten by the resumed run
