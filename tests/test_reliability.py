"""What a training run must survive (../shared/RELIABILITY.md, issue 7), on the tiny CPU preset.

One test per rule: exact resume, atomic/rotated checkpoints, interrupted and disk-full saves,
corrupt-checkpoint fallback, signals, non-finite loss, data position, safe loading, wrapper keys,
model-setting mismatch, config rejection and round-trip, odd prompts. Training runs go through
`main.main(argv)` in-process; a real subprocess is used only where a fresh process is the point
(SIGTERM, and one resume).
"""
from __future__ import annotations

import errno
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import main as train_main
from checkpoint import (FORMAT_VERSION, REQUIRED_KEYS, CheckpointError, checkpoint_paths, load_checkpoint,
                        load_latest, rng_state, save_checkpoint, unwrap)
from config import config_from_dict, make_config
from data import StepSampler, build_dataset, make_train_loader
from data.text import Tokenizer
from diffusion import build_diffusion
from diffusion.objective import DenoisingLoss
from models import build_model
from training import Trainer, make_ema, param_groups
from pipeline import encode_prompts, generate, load_run

ROOT = Path(__file__).resolve().parents[1]
NAN_OR_INF_STEP = 7  # 0-based index of the step whose loss/gradient is made non-finite


# --- helpers -----------------------------------------------------------------------------------

@pytest.fixture(autouse=True)
def _restore_signal_handlers():
    """main() installs SIGINT/SIGTERM handlers; put pytest's back so Ctrl-C still works."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


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


# --- rule 2: atomic, rotated checkpoints ---------------------------------------------------------

def test_save_is_atomic_fsynced_and_rotated(tmp_path, monkeypatch):
    """Temp file in the same folder, fsync before os.replace, newest K kept, no temp file left."""
    cfg = make_config("tiny")
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda src, dst: (events.append(("replace", str(src), str(dst))),
                                                         real_replace(src, dst))[1])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / ".tmp_ckpt_00000001.pt_99999").write_bytes(b"left by a killed run")
    for step in (5, 10, 15):
        final = save_checkpoint(tmp_path, make_state(cfg, step), keep=2)
        assert final.name == f"ckpt_{step:08d}.pt"
    replaces = [e for e in events if e[0] == "replace"]
    assert len(replaces) == 3
    for _, src, dst in replaces:
        assert Path(src).parent == Path(dst).parent  # same folder: os.replace is atomic
        i = events.index(("replace", src, dst))
        assert ("fsync", src) in events[:i]  # data on disk before the rename
    assert [p.name for p in checkpoint_paths(tmp_path)] == ["ckpt_00000015.pt", "ckpt_00000010.pt"]
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["ckpt_00000010.pt", "ckpt_00000015.pt"]
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, make_state(cfg, 20), keep=0)


def _half_write_then(exc: BaseException):
    """A torch.save that writes half of the real bytes, then fails (crash / full disk mid-write)."""
    real_save = torch.save

    def fake_save(obj, f, *args, **kwargs):
        buf = io.BytesIO()
        real_save(obj, buf)
        f.write(buf.getvalue()[: len(buf.getvalue()) // 2])
        raise exc
    return fake_save


@pytest.mark.parametrize("exc", [RuntimeError("killed half-way"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, exc):
    cfg = make_config("tiny")
    previous = save_checkpoint(tmp_path, make_state(cfg, 5), keep=2)
    before = previous.read_bytes()
    monkeypatch.setattr(torch, "save", _half_write_then(exc))
    with pytest.raises(CheckpointError if isinstance(exc, Exception) else KeyboardInterrupt) as info:
        save_checkpoint(tmp_path, make_state(cfg, 10), keep=2)
    monkeypatch.undo()
    if isinstance(exc, Exception):
        assert "killed half-way" in str(info.value) and f"{previous} is intact" in str(info.value)
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [previous.name]  # no partial, no temp
    assert previous.read_bytes() == before
    state, path = load_latest(tmp_path)
    assert path == previous and state["step"] == 5


def test_disk_full_says_previous_checkpoint_intact(tmp_path, monkeypatch):
    cfg = make_config("tiny")
    previous = save_checkpoint(tmp_path, make_state(cfg, 5), keep=2)
    monkeypatch.setattr(torch, "save", _half_write_then(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(CheckpointError, match=r"disk full while writing .*ckpt_00000010\.pt; the previous "
                                              r"checkpoint .*ckpt_00000005\.pt is intact"):
        save_checkpoint(tmp_path, make_state(cfg, 10), keep=2)
    monkeypatch.undo()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == [previous.name]
    assert load_checkpoint(previous)["step"] == 5


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage", "missing_key", "pickled_object"])
def test_corrupt_latest_checkpoint_is_reported_and_previous_used(tmp_path, damage):
    cfg = make_config("tiny")
    save_checkpoint(tmp_path, make_state(cfg, 5), keep=3)
    latest = save_checkpoint(tmp_path, make_state(cfg, 10), keep=3)
    data = latest.read_bytes()
    if damage == "truncated":
        latest.write_bytes(data[: len(data) // 3])
    elif damage == "empty":
        latest.write_bytes(b"")
    elif damage == "garbage":
        latest.write_bytes(os.urandom(4096))
    elif damage == "missing_key":
        state = make_state(cfg, 10)
        del state["optimizer"]
        torch.save(state, latest)
    else:  # arbitrary objects must not be unpickled (weights_only=True)
        torch.save({**make_state(cfg, 10), "extra": Path("x")}, latest)
    warnings = []
    state, path = load_latest(tmp_path, log=warnings.append)
    assert state["step"] == 5 and path.name == "ckpt_00000005.pt"
    assert len(warnings) == 1 and "ckpt_00000010.pt" in warnings[0] and "previous" in warnings[0]
    if damage == "missing_key":
        assert "optimizer" in warnings[0]


def test_no_loadable_checkpoint_is_an_error_naming_each(tmp_path):
    cfg = make_config("tiny")
    for step in (5, 10):
        save_checkpoint(tmp_path, make_state(cfg, step), keep=2).write_bytes(b"broken")
    with pytest.raises(CheckpointError, match=r"(?s)no loadable checkpoint.*ckpt_00000010.*ckpt_00000005"):
        load_latest(tmp_path, log=lambda *a: None)
    assert load_latest(tmp_path / "never_trained") is None


# --- rule 1/4: a missing key is an error -----------------------------------------------------------

@pytest.mark.parametrize("key", REQUIRED_KEYS)
def test_missing_required_key_is_an_error(tmp_path, key):
    state = make_state(make_config("tiny"))
    del state[key]
    with pytest.raises(CheckpointError, match=key):
        save_checkpoint(tmp_path, state, keep=2)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=rf"partial\.pt is missing required keys \['{key}'\]"):
        load_checkpoint(tmp_path / "partial.pt")


def test_missing_model_tensor_is_not_silently_skipped(tmp_path):
    cfg = make_config("tiny")
    state = make_state(cfg)
    dropped = next(iter(state["ema"]))
    del state["ema"][dropped]
    loaded = load_checkpoint(save_checkpoint(tmp_path, state, keep=2))
    with pytest.raises(RuntimeError, match=dropped):
        build_model(cfg, len(loaded["tokenizer"])).load_state_dict(loaded["ema"])


# --- rule 5: safe loading, wrapper-independent keys, model-setting mismatch ------------------------

def test_wrapped_model_checkpoint_loads_into_plain_model(tmp_path):
    """State dicts of DDP (`module.`) and torch.compile (`_orig_mod.`) wrappers load into a plain model."""
    cfg = make_config("tiny")
    state = make_state(cfg)
    plain = build_model(cfg, len(state["tokenizer"]))
    plain.load_state_dict(state["model"])
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        ddp = DDP(plain)
        compiled = torch.compile(plain)  # wrapper only: nothing is compiled until it is called
        both = torch.compile(ddp)
        assert unwrap(ddp) is plain and unwrap(compiled) is plain and unwrap(both) is plain
        for wrapped, prefix in ((ddp, "module."), (compiled, "_orig_mod."), (both, "_orig_mod.module.")):
            wrapped_sd = wrapped.state_dict()
            assert all(k.startswith(prefix) for k in wrapped_sd)
            saved = {**state, "model": wrapped_sd, "ema": wrapped_sd}
            loaded = load_checkpoint(save_checkpoint(tmp_path / prefix.strip("."), saved, keep=2))
            fresh = build_model(cfg, len(state["tokenizer"]))
            fresh.load_state_dict(loaded["model"])  # strict
            fresh.load_state_dict(loaded["ema"])
            assert max_abs_diff(fresh.state_dict(), plain.state_dict()) == 0.0
    finally:
        dist.destroy_process_group()


def test_checkpoint_holds_plain_types_and_loads_weights_only(tmp_path):
    state = make_state(make_config("tiny"))
    path = save_checkpoint(tmp_path, state, keep=2)
    raw = torch.load(path, map_location="cpu", weights_only=True)
    plain_types_only(raw)
    assert set(raw.pop("integrity")["parts"]) == set(state) - {"format_version"}  # integrity.py
    assert max_abs_diff(raw, state) == 0.0


def test_different_model_settings_fail_naming_keys(tmp_path, capsys):
    save_checkpoint(tmp_path / "run", make_state(make_config("tiny")), keep=2)
    before = {p: p.read_bytes() for p in checkpoint_paths(tmp_path / "run")}
    code = train_main.main(argv(tmp_path, "run", decoder_channels=4, text_depth=2))
    err = capsys.readouterr().err
    assert code == 2
    assert "different model settings" in err and "decoder_channels: checkpoint 8 vs requested 4" in err
    assert "text_depth: checkpoint 1 vs requested 2" in err and "model_size" not in err
    assert {p: p.read_bytes() for p in checkpoint_paths(tmp_path / "run")} == before


def test_weights_that_do_not_fit_the_config_are_named(tmp_path, capsys):
    """A checkpoint whose tensors do not match the model its own config builds (another code
    version) fails with the file and the keys, not a bare load_state_dict traceback."""
    state = make_state(make_config("tiny"))
    dropped = next(iter(state["ema"]))
    del state["ema"][dropped]
    path = save_checkpoint(tmp_path / "run", state, keep=2)
    with pytest.raises(CheckpointError, match=rf"{path.name}.*missing {re.escape(dropped)}"):
        load_run(checkpoint=str(path))
    # Resuming training goes through the same check (checkpoint.load_weights): exit 2, no traceback.
    code = train_main.main(argv(tmp_path, "run"))
    err = capsys.readouterr().err
    assert code == 2 and "do not fit the model" in err and "Traceback" not in err


# --- rule 6 (config): rejection before any work, round trip through a checkpoint -----------------

@pytest.mark.parametrize("args, key", [
    (["--max_stepz", "3"], "max_stepz"),
    (["--lr", "fast"], "lr"),
    (["--batch_size", "2.5"], "batch_size"),
    (["--compile", "maybe"], "compile"),
    (["--frame_size_px", "18"], "frame_size_px"),
    (["--zero_terminal_snr", "true", "--prediction_type", "eps"], "zero_terminal_snr"),
    (["--batch_size", "4", "--grad_accum_steps", "3"], "grad_accum_steps"),
    (["--keep_checkpoints", "1"], "keep_checkpoints"),
    (["--prediction_type", "score"], "prediction_type"),
], ids=["unknown", "type-float", "type-int", "type-bool", "patch", "ztsnr-eps", "accum", "keep", "choice"])
def test_bad_config_rejected_before_any_work(tmp_path, capsys, args, key):
    code = train_main.main(argv(tmp_path, "x") + args)
    err = capsys.readouterr().err
    assert code == 2 and f"'{key}'" in err and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # no run folder, nothing written


def test_bad_yaml_config_rejected_naming_key(tmp_path, capsys):
    path = tmp_path / "c.yaml"
    path.write_text("preset: tiny\nlearning_rate: 0.1\n")
    code = train_main.main(["--config", str(path), "--experiment_name", "x", "--output_dir", str(tmp_path)])
    assert code == 2 and "'learning_rate'" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_config_round_trips_through_checkpoint(tmp_path):
    cfg = make_config("tiny", dict(lr=2e-3, seed=11, cond_drop_prob=0.2, prediction_type="v",
                                   pixel_temporal_blend=False,
                                   zero_terminal_snr=True, experiment_name="rt", output_dir=str(tmp_path)))
    state = make_state(cfg)
    path = save_checkpoint(tmp_path / "rt", state, keep=2)
    assert config_from_dict(load_checkpoint(path)["config"]) == cfg
    run = load_run(checkpoint=str(path), use_ema=True)  # the model rebuilt from the checkpoint alone
    assert run.cfg == cfg and run.step == state["step"] and run.tokenizer.state() == state["tokenizer"]
    assert max_abs_diff(run.model.state_dict(), state["ema"]) == 0.0


# --- rule 6 (prompts): clear messages, never a deep crash ----------------------------------------

def test_odd_prompts_give_clear_messages():
    tok = Tokenizer(["hello", "sign", "world"])
    for prompt in ("", "   ", "?!."):
        with pytest.raises(ValueError, match="empty after normalization"):
            encode_prompts(tok, ["hello", prompt], max_len=4)
    with pytest.raises(ValueError, match=r"'zebra quokka': no word is in the training vocabulary"):
        encode_prompts(tok, ["zebra quokka"], max_len=4)
    with pytest.warns(UserWarning, match=r"unknown words \['zebra'\]"):
        tokens, _ = encode_prompts(tok, ["hello zebra"], max_len=4)
    assert tokens.tolist() == [[tok.index["hello"], 1]]
    with pytest.warns(UserWarning, match="has 30 words; only the first 4 are used"):
        tokens, mask = encode_prompts(tok, ["hello " * 30], max_len=4)
    assert tokens.shape == (1, 4) and bool(mask.all())


def test_generate_survives_long_and_partly_unknown_prompts():
    cfg = make_config("tiny", dict(sampling_steps=2))
    tok = Tokenizer(["hello", "sign", "world"])
    model = build_model(cfg, len(tok))
    diffusion = build_diffusion(cfg)
    prompts = ["hello sign " * 50, "hello unknownword", "WORLD!!"]
    with pytest.warns(UserWarning):
        videos = generate(model, diffusion, tok, prompts, cfg, seed=0)
    assert videos.shape == (3, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    assert bool(torch.isfinite(videos).all())
    with pytest.raises(ValueError, match="empty"):
        generate(model, diffusion, tok, ["hello", ""], cfg)


# --- data position --------------------------------------------------------------------------------

@pytest.mark.parametrize("accum, world", [(1, 1), (2, 1), (1, 2)])
def test_step_sampler_restored_at_any_step_matches_uninterrupted(accum, world):
    num, batch = 64, 4  # tiny preset: an epoch is 16 steps
    straight = [StepSampler(num, batch, seed=3, grad_accum_steps=accum, rank=r, world_size=world)
                for r in range(world)]
    iters = [iter(s) for s in straight]
    per_step = accum
    reference = [[next(it) for _ in range(40 * per_step)] for it in iters]
    for rank in range(world):
        for start in (1, 10, 15, 16, 17, 31, 32, 33):
            resumed = iter(StepSampler(num, batch, seed=3, start_step=start, grad_accum_steps=accum,
                                       rank=rank, world_size=world))
            got = [next(resumed) for _ in range((40 - start) * per_step)]
            assert got == reference[rank][start * per_step:], (rank, start)
    # global batches: all ranks' micro-batches together are each epoch's permutation, once
    flat = [idx for step in range(40) for m in range(accum) for r in range(world)
            for idx in reference[r][step * accum + m]]
    for epoch in range(2):
        assert sorted(i for i, e in flat[epoch * num:(epoch + 1) * num]) == list(range(num))
        assert {e for _, e in flat[epoch * num:(epoch + 1) * num]} == {epoch}
    assert [i for i, _ in flat[:num]] != [i for i, _ in flat[num:2 * num]]  # reshuffled per epoch


@pytest.mark.parametrize("num_workers", [0, 2])
def test_loader_restored_across_epoch_boundary_yields_identical_batches(num_workers):
    cfg = make_config("tiny", dict(num_workers=num_workers))
    dataset = build_dataset(cfg, "train")
    tok = Tokenizer.from_captions(dataset.captions)
    straight = iter(make_train_loader(cfg, dataset, tok, start_step=0))
    reference = [next(straight) for _ in range(19)]
    resumed = iter(make_train_loader(cfg, dataset, tok, start_step=14))  # epoch boundary at step 16
    for step in range(14, 19):
        got, want = next(resumed), reference[step]
        assert got["index"] == want["index"], step
        assert torch.equal(got["video"], want["video"]) and torch.equal(got["tokens"], want["tokens"])
    del straight, resumed


# --- rule 1: exact resume ---------------------------------------------------------------------------

RESUME_ARGS = dict(max_steps=20, log_every_steps=1)  # interrupted at k = 10; the epoch ends at step 16
COMPARED_METRICS = ("step", "loss", "lr", "grad_norm", "loss_q1", "loss_q2", "loss_q3", "loss_q4")


@pytest.fixture(scope="module")
def straight_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    assert train_main.main(argv(out, "run", **RESUME_ARGS)) == 0
    return out / "run"


def _interrupt_at(monkeypatch, step: int, signum=signal.SIGINT) -> None:
    """Deliver a real signal to this process during 0-based step `step - 1`, before its forward."""
    real = Trainer.step

    def stepped(self, batches, index):
        if index == step - 1:
            os.kill(os.getpid(), signum)
        return real(self, batches, index)
    monkeypatch.setattr(Trainer, "step", stepped)


@pytest.mark.parametrize("num_workers, resume_in", [(0, "subprocess"), (2, "process")])
def test_resume_is_exact(tmp_path, monkeypatch, capsys, straight_run, num_workers, resume_in):
    """20 steps straight == 10 steps, SIGINT, a fresh process/objects resuming 10 more steps."""
    args = argv(tmp_path, "run", num_workers=num_workers, **RESUME_ARGS)
    _interrupt_at(monkeypatch, 10)
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
            return _half_write_then(OSError(errno.ENOSPC, "No space left on device"))(obj, f)
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
