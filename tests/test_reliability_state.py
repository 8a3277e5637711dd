"""What a run's files and inputs must survive without a training loop (../shared/RELIABILITY.md,
issue 7): atomic, rotated checkpoints; interrupted and disk-full saves; corrupt-checkpoint fallback;
missing keys; safe loading and wrapper-independent keys; model-setting mismatch; config rejection
and round trip; odd prompts; the data position (tiny CPU preset). The rules that need the loop
(exact resume, non-finite loss, signals, disk-full during training) are in tests/test_reliability.py."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import main as train_main
from checkpoint import (REQUIRED_KEYS, CheckpointError, checkpoint_paths, load_checkpoint,
                        load_latest, save_checkpoint, unwrap)
from config import config_from_dict, make_config
from data import StepSampler, build_dataset, make_train_loader
from data.text import Tokenizer
from diffusion import build_diffusion
from models import build_model
from pipeline import encode_prompts, generate, load_run
from tests.run_helpers import argv, half_write_then, make_state, max_abs_diff, plain_types_only


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


@pytest.mark.parametrize("exc", [RuntimeError("killed half-way"), KeyboardInterrupt()], ids=["error", "ctrl-c"])
def test_interrupted_save_keeps_previous_checkpoint(tmp_path, monkeypatch, exc):
    cfg = make_config("tiny")
    previous = save_checkpoint(tmp_path, make_state(cfg, 5), keep=2)
    before = previous.read_bytes()
    monkeypatch.setattr(torch, "save", half_write_then(exc))
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
    monkeypatch.setattr(torch, "save", half_write_then(OSError(errno.ENOSPC, "No space left on device")))
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


