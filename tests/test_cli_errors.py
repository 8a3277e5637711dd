"""Issue 21, rows 5, 6, 11, 12, 13 and 17: every user-facing error is one `error:` line with exit 2
(bad input) or 1 (environment), huge sizes are refused before any work from a memory estimate,
signals stop the final evaluation, and the evaluation survives captions with no training word."""
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

import cli
import main as train_main
from checkpoint import checkpoint_paths
from config import make_config
from data import build_dataset
from data.text import Tokenizer, usable_prompt
from diffusion import build_diffusion
from limits import MemoryEstimate, check_memory, estimate_memory
from models import build_model
from tests.run_helpers import argv
from training import Trainer

ROOT = Path(__file__).resolve().parents[1]


def one_error_line(err: str) -> str:
    lines = [ln for ln in err.replace("\r", "\n").splitlines() if ln.strip() and "it/s" not in ln and "%|" not in ln]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# --- rows 12 and 13: bad input is rejected before any work, exit 2 ---------------------------------

@pytest.mark.parametrize("args, named", [
    (["--lr", "nan"], "'lr'"),
    (["--adam_beta2", "1.5"], "'adam_beta2'"),
    (["--seed", "99999999999999999999"], "'seed'"),
    (["--num_frames", "2"], "'num_frames'"),
    (["--experiment_name", "a\0b"], "'experiment_name'"),
    (["--experiment_name", "x" * 300], "(300 bytes)"),
    (["--experiment_name", "tab\there"], "'experiment_name'"),
    (["--grad_clip_norm", "0"], "'grad_clip_norm'"),
    (["--ema_decay", "-3"], "'ema_decay'"),
], ids=["lr-nan", "beta2", "seed", "frames-2", "nul", "long-name", "control-char", "clip-0", "ema"])
def test_row12_13_bad_values_are_one_line_exit_2(tmp_path, capsys, args, named):
    code = train_main.main(argv(tmp_path, "x") + args)
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and named in line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("content, expected", [
    (b"preset: 5\n", "'preset': expected a preset name"),
    (b"preset: [tiny]\n", "'preset': expected a preset name"),
    (bytes(range(256)) * 4, "not a UTF-8 text file"),
    (None, "is a folder, expected a YAML file"),
], ids=["preset-int", "preset-list", "binary", "folder"])
def test_row12_bad_config_files(tmp_path, capsys, content, expected):
    path = tmp_path / "c.yaml"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    code = train_main.main(["--config", str(path), "--experiment_name", "x", "--output_dir", str(tmp_path / "out")])
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and str(path) in line and expected in line
    assert not (tmp_path / "out").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_row12_cuda_without_a_gpu(tmp_path, capsys):
    assert train_main.main(argv(tmp_path, "x", device="cuda")) == 2
    assert "'device'='cuda' but no CUDA device" in one_error_line(capsys.readouterr().err)


def test_row12_output_dir_under_a_file(tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    code = train_main.main(argv(tmp_path / "afile" / "sub", "x"))
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "'output_dir'" in line and f"{tmp_path / 'afile'} is a file, not a folder" in line


def test_row12_bad_clip_fraction_is_one_line(tmp_path, capsys):
    from tests.test_real_data_defects import write_clip

    root = tmp_path / "clips"
    write_clip(root / "train", "a", ".gif", b"caf\xe9 hi")  # not UTF-8: a bad clip
    write_clip(root / "train", "b", ".gif", b"hello there")
    write_clip(root / "val", "c", ".gif", b"hello again")
    code = train_main.main(argv(tmp_path, "x", dataset="folder", data_root=root, pose_cond=False,
                                cache_dir=tmp_path / "cache"))
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and "max_bad_clip_fraction=0.05" in line and "a.txt" in line


# --- row 11: limits from a memory estimate, before any work ----------------------------------------

@pytest.mark.parametrize("key, value, part", [
    ("num_frames", 100000, "activations"),
    ("frame_size_px", 2048, "activations"),
    ("max_text_len_tokens", 1000000000, "parameters"),
    ("num_train_samples", 1000000000000, "data"),
])
def test_row11_huge_sizes_are_refused_from_the_estimate(tmp_path, capsys, key, value, part):
    start = time.perf_counter()
    code = train_main.main(argv(tmp_path, "x", **{key: value}))
    line = one_error_line(capsys.readouterr().err)
    assert time.perf_counter() - start < 2.0  # nothing was rendered or allocated
    assert code == 2 and "config needs an estimated" in line and "available" in line and key in line
    assert line.index(part) < line.index("GiB (")  # the largest part is named first, with its figure
    assert list(tmp_path.iterdir()) == []


def test_row11_the_estimate_follows_the_memory_a_step_keeps():
    """Within a small factor of the bytes autograd saves for the backward pass (parameters aside),
    measured on the tiny preset at three shapes, and low enough that the presets fit where they run."""
    for overrides in ({}, dict(num_frames=32), dict(frame_size_px=48, model_size="S", batch_size=2)):
        cfg = make_config("tiny", dict(overrides, cpu_streams=1))
        model = build_model(cfg, 100)
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t
        from diffusion import build_objective
        from data.skeleton import NUM_POINTS

        objective = build_objective(cfg, build_diffusion(cfg))
        b = cfg.batch_size
        x0 = torch.rand(b, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px) * 2 - 1
        tokens = torch.randint(2, 100, (b, 12))
        cond = dict(pose_xy=torch.rand(b, cfg.num_frames, NUM_POINTS, 2),
                    pose_visible=torch.ones(b, cfg.num_frames, NUM_POINTS, dtype=torch.bool))
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            objective(model, x0, tokens, tokens > 0, objective.draw(x0.shape, torch.Generator().manual_seed(0),
                                                                     torch.device("cpu")), cond)
        ratio = estimate_memory(cfg).parts["activations"] / sum(saved.values())
        assert 0.7 < ratio < 1.5, (overrides, ratio)
        counted = sum(p.numel() for p in model.parameters())
        assert abs(estimate_memory(cfg, vocab_size=100).num_params / counted - 1) < 0.05
    gib = 2**30
    assert estimate_memory(make_config("cpu")).total < 1 * gib
    assert estimate_memory(make_config("gpu"), device_type="cuda").total < 70 * gib  # an 80 GB GPU


def test_row11_the_message_gives_the_estimate_and_what_is_available():
    cfg = make_config("tiny")
    est = check_memory(cfg, torch.device("cpu"))
    assert isinstance(est, MemoryEstimate) and est.total > 0
    with pytest.raises(Exception, match=r"needs an estimated \d+\.\d MiB of memory, this machine has 1\.0 MiB "
                                        r"available \(given\): .*activations"):
        check_memory(cfg, torch.device("cpu"), available=2**20)


# --- rows 12: a read-only or full disk, at start and during the run: exit 1 -----------------------

@pytest.fixture
def tmpfs(tmp_path):
    """mount(size, read_only) -> a fresh tmpfs folder (root only; skipped where mounting is refused)."""
    mounted = []

    def mount(size: str, read_only: bool = False) -> Path:
        where = tmp_path / f"fs{len(mounted)}"
        where.mkdir()
        options = f"size={size}" + (",ro" if read_only else "")
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(where)], capture_output=True)
        if proc.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
        mounted.append(where)
        return where
    yield mount
    for where in mounted:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)


def test_row12_full_or_read_only_disk_at_start(tmp_path, capsys, tmpfs):
    full = tmpfs("1m")
    assert train_main.main(argv(full, "x")) == 1
    line = one_error_line(capsys.readouterr().err)
    assert f"{full}: not enough free disk space: 1.0 MiB free, the run needs about" in line
    assert "(disk full)" in line and list(full.iterdir()) == []
    read_only = tmpfs("1m", read_only=True)
    assert train_main.main(argv(read_only, "x")) == 1
    assert "read-only file system" in one_error_line(capsys.readouterr().err)


def _fill(folder: Path) -> None:
    with open(folder / "filler", "wb", buffering=0) as fh:
        for chunk in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    fh.write(b"\0" * chunk)
            except OSError:
                pass


def test_row12_disk_fills_during_the_metrics_append(tmp_path, monkeypatch, capsys, tmpfs):
    disk = tmpfs("16m")
    real = Trainer.step

    def step(self, batches, index):
        if index == 2:
            _fill(disk)
        return real(self, batches, index)
    monkeypatch.setattr(Trainer, "step", step)
    # A full tmpfs still takes appends inside the file's last page: the error comes a few rows on.
    code = train_main.main(argv(disk, "run", max_steps=60, log_every_steps=1, checkpoint_every_steps=1000))
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and f"cannot append to {disk / 'run' / 'metrics.jsonl'}: No space left on device" in line
    assert "no checkpoint was written yet" in line


def test_row12_read_only_checkpoints_during_the_run(tmp_path, monkeypatch, capsys, tmpfs):
    disk = tmpfs("16m")
    checkpoints = disk / "run" / "checkpoints"
    real = Trainer.step
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()

    def step(self, batches, index):
        if index == 3:  # a stale temp file whose clean-up fails too, then the folder turns read-only
            (checkpoints / f".tmp_ckpt_00000009.pt_{dead.pid}").write_bytes(b"x")
            subprocess.run(["mount", "--bind", str(checkpoints), str(checkpoints)], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", str(checkpoints)], check=True)
        return real(self, batches, index)
    monkeypatch.setattr(Trainer, "step", step)
    try:
        code = train_main.main(argv(disk, "run", max_steps=6, log_every_steps=100, checkpoint_every_steps=2))
    finally:
        subprocess.run(["umount", str(checkpoints)], capture_output=True)
    line = one_error_line(capsys.readouterr().err)
    assert code == 1 and "ckpt_00000004.pt" in line and "Read-only file system" in line
    assert "ckpt_00000002.pt is intact" in line


def test_row12_write_errors_without_a_real_disk(tmp_path, monkeypatch, capsys):
    """The same paths where no tmpfs can be mounted: EACCES from the checkpoint folder, ENOSPC from
    the metrics file."""
    import builtins

    import checkpoint

    real_open = builtins.open

    def no_checkpoints(path, *a, **k):
        if "checkpoints" in str(path):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, *a, **k)
    monkeypatch.setattr(checkpoint, "open", no_checkpoints, raising=False)
    assert train_main.main(argv(tmp_path, "a", max_steps=2, checkpoint_every_steps=2)) == 1
    line = one_error_line(capsys.readouterr().err)
    assert "cannot write" in line and "ckpt_00000002.pt: Permission denied" in line
    monkeypatch.undo()

    def full(path, mode="r", *a, **k):
        if str(path).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(path, mode, *a, **k)
    monkeypatch.setattr(builtins, "open", full)
    assert train_main.main(argv(tmp_path, "b", max_steps=2, log_every_steps=1)) == 1
    monkeypatch.undo()
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot append to {tmp_path / 'b' / 'metrics.jsonl'}: No space left on device (disk full)" in line


# --- the other entry points ---------------------------------------------------------------------

@pytest.mark.parametrize("module, args, expected", [
    ("evaluate", ["--checkpoint", "/nonexistent.pt"], "--checkpoint /nonexistent.pt: file not found"),
    ("evaluate", ["--experiment", "never", "--output_dir", "/nonexistent"], "no checkpoint in"),
    ("evaluate", ["--checkpoint", "x.pt", "--num_clips", "0"], "argument --num_clips"),
    ("evaluate", ["--checkpoint", "x.pt", "--eta", "nan"], "argument --eta"),
    ("evaluate", ["--checkpoint", "x.pt", "--seed", "-1"], "argument --seed"),
    ("quick_test_fixes", ["--checkpoint", "/nonexistent.pt"], "file not found"),
    ("quick_test_fixes", ["--num_clips", "-2"], "--num_clips -2"),
    ("debug_vivit_sampling", ["--checkpoint", "/nonexistent.pt"], "file not found"),
    ("debug_vivit_sampling", ["--checkpoint", "x.pt", "--fps", "0"], "argument --fps"),
    ("debug_vivit_sampling", ["--checkpoint", "x.pt", "--num_samples", "0"], "argument --num_samples"),
    ("debug_vivit_sampling", ["--checkpoint", "x.pt", "--steps", "0"], "argument --steps"),
    ("debug_vivit_sampling", ["--checkpoint", "x.pt", "--sampler", "ddpm", "--steps", "5"], "ddpm always runs"),
    ("bench", ["--preset", "tiny", "--set", "lr", "nan"], "'lr'"),
    ("bench", ["--preset", "tiny", "--set", "num_frames", "100000"], "config needs an estimated"),
    ("data.prepare", ["--dataset", "folder", "--data_root", "/nonexistent"], "/nonexistent"),
    ("data.prepare", ["--splits", "nope"], "--splits"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 24 else None)
def test_row12_row17_entry_points_give_one_line(capsys, module, args, expected):
    """Row 17: debug_vivit_sampling's --fps 0, --num_samples 0 and --steps 0 are refused before any
    checkpoint is read (x.pt does not exist)."""
    import importlib

    entry = importlib.import_module(module)
    try:
        code = cli.run(entry.main, args)
    except SystemExit as exc:  # argparse errors (cli.ArgumentParser)
        code = exc.code
    line = one_error_line(capsys.readouterr().err)
    assert code == 2 and expected in line


def test_entry_point_subprocess_prints_one_line():
    proc = subprocess.run([sys.executable, "evaluate.py", "--checkpoint", "/nonexistent.pt"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr == "error: --checkpoint /nonexistent.pt: file not found\n"


# --- row 5: signals during the final sampling and evaluation ---------------------------------------

_SLOW_EVAL_MAIN = """
import sys, time
import evaluation.runner as runner
real = runner.generate
def slow(*args, **kwargs):  # the evaluation takes long enough to be interrupted
    time.sleep(0.5)
    return real(*args, **kwargs)
runner.generate = slow
import main
sys.exit(main.main(sys.argv[1:], restore_signals=False))  # as `python main.py` does
"""


def test_row5_sigint_three_times_during_the_evaluation_stops_it(tmp_path, capsys):
    args = argv(tmp_path, "run", max_steps=2, eval_at_end="true", num_eval_samples=2)
    proc = subprocess.Popen([sys.executable, "-u", "-c", _SLOW_EVAL_MAIN, *args], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for line in proc.stdout:
            if line.startswith("evaluating"):
                break
        for _ in range(3):
            proc.send_signal(signal.SIGINT)
            time.sleep(0.1)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-2000:]
    assert "stopped by signal SIGINT during the final samples and evaluation" in out and "Traceback" not in err
    assert not (tmp_path / "run" / "eval_test.json").exists()
    assert [p.name for p in checkpoint_paths(tmp_path / "run")] == ["ckpt_00000002.pt"]
    assert train_main.main(args) == 0  # the same command finishes the evaluation
    assert (tmp_path / "run" / "eval_test.json").exists()


def test_row5_a_signal_before_training_exits_143_without_a_traceback(tmp_path, capsys, monkeypatch):
    def interrupted(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
    monkeypatch.setattr(train_main, "build_dataset", interrupted)
    assert train_main.main(argv(tmp_path, "run")) == 143
    assert capsys.readouterr().err.strip() == "stopped by signal SIGTERM"
    assert not (tmp_path / "run").exists()  # the folder it had created held nothing: removed


# --- row 6: captions with no training word --------------------------------------------------------

def test_row6_evaluation_skips_and_counts_clips_it_cannot_read():
    from evaluation.runner import evaluate_model

    cfg = make_config("tiny", dict(num_eval_samples=8, sampling_steps=2))
    captions = build_dataset(cfg, "test").captions
    tokenizer = Tokenizer(sorted(set(" ".join(captions[:2]).split())))  # knows the words of clips 0 and 1 only
    unusable = [c for c in captions if not usable_prompt(tokenizer, c, cfg.max_text_len_tokens)]
    assert 0 < len(unusable) < len(captions)
    model = build_model(cfg, len(tokenizer)).eval()
    results = evaluate_model(model, build_diffusion(cfg), tokenizer, cfg, "test", log=lambda *a: None)
    meta = results["meta"]
    assert meta["skipped_clips"] == len(unusable) and meta["skipped_captions"] == unusable
    assert meta["num_clips"] == len(captions) - len(unusable)
    assert 0.0 <= results["intended"]["gloss_accuracy"] <= 1.0
    from data.real.common import DatasetError

    with pytest.raises(DatasetError, match="none of its 8 clips has a caption with a word"):
        evaluate_model(model, build_diffusion(cfg), Tokenizer(["zzz"]), cfg, "test", log=lambda *a: None)


def test_flags_have_one_spelling_and_the_hyphen_form_reads_as_it():
    import cli

    parser = cli.ArgumentParser(prog="t")
    parser.add_argument("--output_dir")
    parser.add_argument("--pose_only", action="store_true")
    parser.add_argument("value", nargs="?")
    args = parser.parse_args(["--output-dir=/a-b", "--pose-only", "-3"])
    assert (args.output_dir, args.pose_only, args.value) == ("/a-b", True, "-3")  # values keep their hyphens
