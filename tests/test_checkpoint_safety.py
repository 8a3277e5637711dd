"""Issue 21, rows 1-4, 15 and 18: which files are a run's checkpoints, their integrity record,
rotation past unreadable ones, diverged weights, the fall-back after a non-finite first step, the
metrics of redone steps, and the run-folder lock (tiny preset, CPU)."""
from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import main as train_main
from checkpoint import (FORMAT_VERSION, CheckpointError, DivergedError, checkpoint_paths, load_checkpoint,
                        load_latest, save_checkpoint)
from config import make_config
from integrity import integrity_record
from run_folder import RunFolder, RunInUseError, read_metrics, trim_metrics
from tests.run_helpers import argv, interrupt_at, make_state, max_abs_diff
from training import NonFiniteError, Trainer

ROOT = Path(__file__).resolve().parents[1]
SHORT = dict(max_steps=6, checkpoint_every_steps=2, log_every_steps=1)


@pytest.fixture(scope="module")
def four_steps(tmp_path_factory) -> Path:
    """A tiny 6-step run stopped (SIGINT) at step 4, with checkpoints at 2 and 4 (copied by the tests
    that change it)."""
    out = tmp_path_factory.mktemp("four")
    with pytest.MonkeyPatch.context() as mp:
        interrupt_at(mp, 4)
        assert train_main.main(argv(out, "run", **SHORT)) == 130
    return out / "run"


@pytest.fixture(scope="module")
def six_steps(tmp_path_factory) -> Path:
    """The same run straight to step 6: what every recovered run must equal."""
    out = tmp_path_factory.mktemp("six")
    assert train_main.main(argv(out, "run", **SHORT)) == 0
    return out / "run"


def copy_run(run: Path, tmp_path: Path) -> Path:
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def same_final_model(run: Path, reference: Path) -> None:
    got, want = load_checkpoint(checkpoint_paths(run)[0]), load_checkpoint(checkpoint_paths(reference)[0])
    assert got["step"] == want["step"]
    assert max(max_abs_diff(got[k], want[k], k) for k in ("model", "ema", "optimizer")) == 0.0


# --- row 1: only ckpt_<8 digits>.pt whose step matches its name ------------------------------------

def test_row1_a_users_copy_is_not_the_newest_checkpoint(tmp_path, capsys, four_steps, six_steps):
    run = copy_run(four_steps, tmp_path)
    ckpts = run / "checkpoints"
    shutil.copy(ckpts / "ckpt_00000002.pt", ckpts / "ckpt_best.pt")
    shutil.copy(ckpts / "ckpt_00000002.pt", ckpts / "ckpt_00000002.pt.bak")
    assert [p.name for p in checkpoint_paths(run)] == ["ckpt_00000004.pt", "ckpt_00000002.pt"]
    capsys.readouterr()
    assert train_main.main(argv(tmp_path, "run", **SHORT)) == 0
    assert "ckpt_00000004.pt at step 4" in capsys.readouterr().out
    assert (ckpts / "ckpt_best.pt").exists() and (ckpts / "ckpt_00000002.pt.bak").exists()  # not rotated away
    assert [p.name for p in checkpoint_paths(run)] == ["ckpt_00000006.pt", "ckpt_00000004.pt"]
    same_final_model(run, six_steps)


def test_row1_order_is_by_step_and_a_renamed_copy_is_refused(tmp_path):
    cfg = make_config("tiny")
    for step in (9, 10, 123456789):
        save_checkpoint(tmp_path, make_state(cfg, step), keep=5)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_123456789.pt", "ckpt_00000010.pt",
                                                            "ckpt_00000009.pt"]
    shutil.copy(tmp_path / "checkpoints" / "ckpt_00000009.pt", tmp_path / "checkpoints" / "ckpt_999999999.pt")
    warnings = []
    state, path = load_latest(tmp_path, log=warnings.append)
    assert path.name == "ckpt_123456789.pt" and state["step"] == 123456789
    assert "holds step 9, not the step in its name" in warnings[0]


# --- row 2: the integrity record ------------------------------------------------------------------

def garble_a_tensor(path: Path, tensor: torch.Tensor, num_bytes: int = 1000) -> None:
    """Overwrite bytes inside `tensor`'s storage in the file (the zip container does not notice)."""
    data = bytearray(path.read_bytes())
    raw = tensor.contiguous().view(torch.uint8).numpy().tobytes()
    at = data.find(raw)
    assert at > 0, "tensor bytes not found in the file"
    num_bytes = min(num_bytes, len(raw))
    data[at:at + num_bytes] = os.urandom(num_bytes)
    path.write_bytes(bytes(data))


def test_row2_garbled_tensor_bytes_are_caught_and_the_previous_checkpoint_used(tmp_path, capsys, four_steps,
                                                                            six_steps):
    run = copy_run(four_steps, tmp_path)
    latest = run / "checkpoints" / "ckpt_00000004.pt"
    state = load_checkpoint(latest)
    biggest = max(state["model"], key=lambda k: state["model"][k].numel())
    garble_a_tensor(latest, state["model"][biggest])
    raw = torch.load(latest, weights_only=True)  # torch itself loads the garbled file silently
    assert not torch.equal(raw["model"][biggest], state["model"][biggest])
    with pytest.raises(CheckpointError, match=r"ckpt_00000004\.pt is corrupt: 'model' does not match its sha256"):
        load_checkpoint(latest)
    capsys.readouterr()
    assert train_main.main(argv(tmp_path, "run", **SHORT)) == 0
    out = capsys.readouterr().out
    assert "WARNING: checkpoint" in out and "is corrupt" in out and "ckpt_00000002.pt at step 2" in out
    same_final_model(run, six_steps)


def test_row2_every_entry_is_covered_and_version_2_still_reads(tmp_path):
    cfg = make_config("tiny")
    state = make_state(cfg)
    assert set(integrity_record(state)["parts"]) == set(state) - {"format_version"}
    path = save_checkpoint(tmp_path, state, keep=2)
    raw = torch.load(path, weights_only=True)
    raw["step"] = 6  # a plain value changed, e.g. by an edit of the pickle
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match="'step' does not match"):
        load_checkpoint(path)
    old = {**make_state(cfg), "format_version": 2}  # written before the record existed
    torch.save(old, tmp_path / "v2.pt")
    assert FORMAT_VERSION == 3 and load_checkpoint(tmp_path / "v2.pt")["step"] == 5


# --- row 3: rotation counts only checkpoints that load --------------------------------------------

def test_row3_rotation_never_counts_an_unreadable_checkpoint(tmp_path):
    cfg = make_config("tiny")
    good = save_checkpoint(tmp_path, make_state(cfg, 2), keep=2)
    corrupt = save_checkpoint(tmp_path, make_state(cfg, 4), keep=2)
    corrupt.write_bytes(corrupt.read_bytes()[:5000])  # truncated
    # The run resumed from step 2 and was stopped at step 3: its save rotates.
    save_checkpoint(tmp_path, make_state(cfg, 3), keep=2)
    names = [p.name for p in checkpoint_paths(tmp_path)]
    assert "ckpt_00000002.pt" in names and "ckpt_00000003.pt" in names  # two loadable ones kept
    assert load_checkpoint(good)["step"] == 2
    save_checkpoint(tmp_path, make_state(cfg, 5), keep=2)
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_00000005.pt", "ckpt_00000004.pt",
                                                            "ckpt_00000003.pt"]
    save_checkpoint(tmp_path, make_state(cfg, 7), keep=2)  # the window has moved past the corrupt one
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_00000007.pt", "ckpt_00000005.pt"]


# --- row 4: diverged weights are never saved; a non-finite first step falls back once --------------

def test_row4_non_finite_weights_are_not_saved(tmp_path):
    cfg = make_config("tiny")
    previous = save_checkpoint(tmp_path, make_state(cfg, 2), keep=2)
    state = make_state(cfg, 4)
    next(iter(state["ema"].values())).view(-1)[0] = float("nan")
    with pytest.raises(DivergedError, match=r"not saving step 4: ema\.\S+ holds NaN or inf.*"
                                            r"ckpt_00000002\.pt is kept"):
        save_checkpoint(tmp_path, state, keep=2)
    assert checkpoint_paths(tmp_path) == [previous]


def test_row4_a_step_that_makes_weights_nan_exits_3_without_a_save(tmp_path, monkeypatch, capsys):
    real = Trainer.step

    def step(self, batches, index):
        record = real(self, batches, index)
        if index == 3:  # finite loss, but the update left a NaN weight (saved at step 4)
            next(self.model.parameters()).data.view(-1)[0] = float("nan")
        return record
    monkeypatch.setattr(Trainer, "step", step)
    code = train_main.main(argv(tmp_path, "run", **{**SHORT, "max_steps": 4}))
    err = capsys.readouterr().err
    assert code == 3 and "not saving step 4: its weights hold NaN or inf" in err and "ckpt_00000002.pt is kept" in err
    assert [p.name for p in checkpoint_paths(tmp_path / "run")] == ["ckpt_00000002.pt"]


def test_row4_huge_lr_is_not_saved_over_the_last_good_checkpoint(tmp_path, capsys, four_steps, six_steps):
    """--lr 1e30 leaves finite weights of ~1e30 after one step (the next step's loss is NaN): they
    must not be saved, or every resume stops there and rotation deletes the good fallbacks."""
    run = copy_run(four_steps, tmp_path)
    code = train_main.main(argv(tmp_path, "run", **{**SHORT, "lr": 1e30, "checkpoint_every_steps": 1}))
    err = capsys.readouterr().err
    assert code == 3 and "not saving step 5" in err and "ckpt_00000004.pt is kept" in err
    assert [p.name for p in checkpoint_paths(run)] == ["ckpt_00000004.pt", "ckpt_00000002.pt"]
    assert train_main.main(argv(tmp_path, "run", **SHORT)) == 0  # the lr put back
    same_final_model(run, six_steps)


def test_row4_a_checkpoint_whose_weights_gave_a_nan_step_is_set_aside(tmp_path, monkeypatch, capsys, four_steps):
    """A step that is NaN whoever reaches it: the resume falls back once (to step 2), meets it again,
    and stops; each checkpoint holding the weights that met it is renamed out of the run's
    checkpoints, and the message names the one still good."""
    run = copy_run(four_steps, tmp_path)
    real = Trainer.step

    def step(self, batches, index):
        if index == 4:  # NaN however it is reached (say, a bad clip in its batch)
            raise NonFiniteError(index, float("nan"), 1.0, [])
        return real(self, batches, index)
    monkeypatch.setattr(Trainer, "step", step)
    code = train_main.main(argv(tmp_path, "run", **SHORT))
    captured = capsys.readouterr()
    err = captured.err
    assert "falling back (once) to" in captured.out and captured.out.count("falling back") == 1
    assert code == 3 and "the last good checkpoint" in err and "ckpt_00000002.pt is kept" in err
    assert [p.name for p in checkpoint_paths(run)] == ["ckpt_00000002.pt"]
    assert (run / "checkpoints" / "ckpt_00000004.pt.diverged").exists()


def test_row2_row4_non_finite_first_step_after_loading_falls_back_once(tmp_path, capsys, four_steps, six_steps):
    run = copy_run(four_steps, tmp_path)
    latest = run / "checkpoints" / "ckpt_00000004.pt"
    state = load_checkpoint(latest)
    state["model"]["patch_embed.weight"].fill_(1e30)  # finite, intact record, but a NaN loss
    latest.unlink()
    save_checkpoint(run, state, keep=2)
    capsys.readouterr()
    assert train_main.main(argv(tmp_path, "run", **SHORT)) == 0
    out = capsys.readouterr().out
    assert "the first step after loading the checkpoint; falling back (once) to" in out
    assert "ckpt_00000002.pt at step 2" in out
    assert (run / "checkpoints" / "ckpt_00000004.pt.diverged").exists()
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl")] == list(range(1, 7))
    same_final_model(run, six_steps)


# --- row 15: metrics of redone steps --------------------------------------------------------------

def test_row15_redone_steps_are_not_logged_twice(tmp_path, four_steps, six_steps):
    run = copy_run(four_steps, tmp_path)
    (run / "checkpoints" / "ckpt_00000004.pt").unlink()  # killed after logging step 4, before its save
    with open(run / "metrics.jsonl", "a") as fh:
        fh.write('{"step": 5, "loss": 0.')  # and torn mid-append
    assert train_main.main(argv(tmp_path, "run", **SHORT)) == 0
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7))
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 6
    keys = ("step", "loss", "lr", "grad_norm")
    assert [{k: r[k] for k in keys} for r in rows] == [{k: r[k] for k in keys}
                                                       for r in read_metrics(six_steps / "metrics.jsonl")]


def test_row15_trim_keeps_lines_byte_for_byte(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 0.1000000000000000055511}\n{"step": 2}\n{"step": 3}\n{"ste')
    assert trim_metrics(path, 2) == 2
    assert path.read_text() == '{"step": 1, "loss": 0.1000000000000000055511}\n{"step": 2}\n'
    assert trim_metrics(path, 2) == 0


# --- row 18: one run per folder ---------------------------------------------------------------------

_HOLD = """
import sys, time
sys.path.insert(0, sys.argv[2])
from run_folder import RunFolder
with RunFolder(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_row18_second_run_on_a_folder_is_refused(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(tmp_path / "run"), str(ROOT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        code = train_main.main(argv(tmp_path, "run", **SHORT))
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: run folder")
        assert f"in use by process {holder.pid}" in err and "Traceback" not in err
        assert not (tmp_path / "run" / "checkpoints").exists()
    finally:
        holder.communicate("")
    assert train_main.main(argv(tmp_path, "run", **SHORT)) == 0  # the lock went with its process


def test_row18_a_save_keeps_temp_files_of_live_processes(tmp_path):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"]) as alive:
        try:
            live_tmp = folder / f".tmp_ckpt_00000008.pt_{alive.pid}"
            dead_tmp = folder / f".tmp_ckpt_00000006.pt_{dead.pid}"
            live_tmp.write_bytes(b"being written")
            dead_tmp.write_bytes(b"left by a kill -9")
            save_checkpoint(tmp_path, make_state(make_config("tiny"), 4), keep=2)
            assert live_tmp.exists() and not dead_tmp.exists()
        finally:
            alive.kill()


def _sleep(seconds: float, started=None) -> None:
    if started is not None:
        started.set()
    time.sleep(seconds)


def test_row18_forked_children_do_not_keep_the_lock(tmp_path):
    """A DataLoader worker is a fork: it must not hold the lock once its parent has let go."""
    folder = RunFolder(tmp_path / "run")
    folder.acquire()
    (tmp_path / "run" / "config.yaml").write_text("seed: 0\n")  # a run's folder is not left empty
    ctx = multiprocessing.get_context("fork")
    started = ctx.Event()
    child = ctx.Process(target=_sleep, args=(20, started))
    child.start()
    # The child closes its copy of the lock in its after-fork hook, before it runs any Python: once
    # it has started, the hook has run (on a loaded machine a child can be scheduled seconds later).
    assert started.wait(30)
    try:
        with pytest.raises(RunInUseError, match=f"in use by process {os.getpid()}"):
            RunFolder(tmp_path / "run").acquire()
        folder.release()
        again = RunFolder(tmp_path / "run")
        again.acquire()  # the child is alive, and holds nothing
        again.release()
    finally:
        child.kill()
        child.join()


def test_row12_a_stale_temp_file_that_cannot_be_removed_does_not_stop_a_save(tmp_path, monkeypatch):
    """(Read-only or foreign-owned temp files.) The clean-up is best effort; the save goes on."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = folder / f".tmp_ckpt_00000002.pt_{dead.pid}"
    stale.write_bytes(b"left by a kill -9")
    real_unlink = Path.unlink

    def unlink(self, *args, **kwargs):
        if self == stale:
            raise PermissionError(13, "Permission denied", str(self))
        return real_unlink(self, *args, **kwargs)
    monkeypatch.setattr(Path, "unlink", unlink)
    path = save_checkpoint(tmp_path, make_state(make_config("tiny"), 4), keep=2)
    assert load_checkpoint(path)["step"] == 4 and stale.exists()
