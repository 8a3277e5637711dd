"""Regression tests for rows 7, 10 and 14 of issue 21's defect table (bad input to the real loaders)."""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import tests.real_fixtures as fx
from config import make_config
from data.real import DatasetError, build_real_dataset
from data.video_io import write_gif, write_mp4


def cfg_for(root, tmp_path, **kw):
    values = dict(dataset="folder", data_root=str(root), cache_dir=str(tmp_path / "cache"), num_frames=4,
                  frame_size_px=16, patch_size_px=4, max_bad_clip_fraction=0.5,
                  pose_cond=False)  # these fixtures have no keypoints (tests/test_keypoints.py has them)
    values.update(kw)
    return make_config("tiny", values)


def write_clip(folder, name: str, ext: str, caption: bytes, length: int = 6) -> None:
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name + ext)
    (write_gif if ext.lower() == ".gif" else write_mp4)(path, fx.make_frames(length), 8)
    with open(os.path.join(folder, name + ".txt"), "wb") as fh:
        fh.write(caption)


def test_row7_non_utf8_caption_is_a_bad_clip_named_by_file(tmp_path):
    root = tmp_path / "clips"
    for name in ("a", "b", "c"):
        write_clip(root / "train", name, ".gif", b"hello there")
    with open(root / "train" / "a.txt", "wb") as fh:
        fh.write(b"caf\xe9 hi")  # Latin-1, not UTF-8
    data = build_real_dataset(cfg_for(root, tmp_path), "train", progress=False)
    assert sorted(data.index.clip_ids) == ["b", "c"]
    (clip, reason), = data.index.bad_clips
    assert clip == "a" and str(root / "train" / "a.txt") in reason and "UTF-8" in reason
    # Counted against max_bad_clip_fraction like any other bad clip (1 of 3 > 0.2).
    with pytest.raises(DatasetError, match="a.txt"):
        build_real_dataset(cfg_for(root, tmp_path, max_bad_clip_fraction=0.2), "train", progress=False)


def test_row10_upper_case_extensions_are_recognised(tmp_path):
    root = tmp_path / "clips"
    write_clip(root / "train", "CAMERA01", ".MP4", b"hello camera")
    write_clip(root / "train", "CAMERA02", ".GIF", b"hello gif")
    write_clip(root / "train", "mixed", ".Mp4", b"mixed case")
    data = build_real_dataset(cfg_for(root, tmp_path, max_bad_clip_fraction=0.0), "train", progress=False)
    assert sorted(data.index.clip_ids) == ["CAMERA01", "CAMERA02", "mixed"]
    assert not data.index.bad_clips
    assert data[0]["video"].shape == (3, 4, 16, 16)


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid  # reaped: no live process has it (until the kernel reuses it)


def test_row14_temp_files_of_a_killed_build_are_removed_on_the_next_build(tmp_path):
    root = tmp_path / "clips"
    write_clip(root / "train", "a", ".gif", b"hello there")
    cache = tmp_path / "cache"
    cache.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    stale = [cache / f".tmp_folder_train_0123456789abcdef.npy_{dead}",  # checkpoint.atomic_write's names
             cache / f".tmp_folder_train_0123456789abcdef.index.json_{dead}",
             cache / f".tmp_folder_val_fedcba9876543210.pose.npy_{dead}"]
    live = cache / f".tmp_folder_train_0123456789abcdef.npy_{alive}"  # a build running right now
    unrelated = cache / "notes.tmp123"
    for path in stale + [live, unrelated]:
        path.write_bytes(b"\0" * 64)
    build_real_dataset(cfg_for(root, tmp_path), "train", progress=False)
    left = set(os.listdir(cache))
    assert not any(p.name in left for p in stale)
    assert live.name in left and unrelated.name in left
    assert sum(n.endswith(".npy") for n in left) == 1 and np.load(cache / next(
        n for n in left if n.endswith(".npy")), mmap_mode="r").shape[0] == 6
