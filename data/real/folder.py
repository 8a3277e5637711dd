"""A folder of captioned clips: `name.gif`, `name.mp4` or a `name/` folder of PNG frames, with the
caption in `name.txt` beside it, and optionally its keypoints in `name.pose` (pose-format; as soon as
one clip of a split has one, a clip without is a bad clip). Extensions in any case. Optional `train/`,
`val/` (or `dev/`), `test/` sub-folders; without them the clips are split by a seeded shuffle (5% val,
5% test, at least one clip each).
"""
from __future__ import annotations

import os

import numpy as np

from data.real.common import DatasetError, DatasetNotFoundError, ClipRecord, make_record
from data.video_io import FRAME_EXTENSIONS, VIDEO_EXTENSIONS

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "dev"), "test": ("test",)}
HAS_SIGNERS = False
HAS_GLOSSES = False
EVAL_FRACTION = 0.05


def _clips_in(folder: str) -> list[tuple[ClipRecord, str]]:
    """Every `name.txt` with a clip beside it (extensions in any case: `CAMERA01.MP4`); a caption
    without a clip keeps a missing path, one that is not UTF-8 text an error (both bad clips).
    Returns (record, caption file) pairs."""
    names = sorted(os.listdir(folder))
    by_ext: dict[str, dict[str, str]] = {}  # lower-case extension -> stem -> file name
    for name in names:
        stem, ext = os.path.splitext(name)
        by_ext.setdefault(ext.lower(), {}).setdefault(stem, name)
    records = []
    for txt in names:  # file-name order, as before: the seeded split of a flat folder depends on it
        stem, ext = os.path.splitext(txt)
        if ext.lower() != ".txt" or by_ext[".txt"][stem] != txt:
            continue
        clip = next((os.path.join(folder, by_ext[ext][stem]) for ext in (".gif",) + VIDEO_EXTENSIONS
                     if stem in by_ext.get(ext, {})), None)
        frame_dir = os.path.join(folder, stem)
        if clip is None and os.path.isdir(frame_dir) and any(
                f.lower().endswith(FRAME_EXTENSIONS) for f in os.listdir(frame_dir)):
            clip = frame_dir
        path, error = os.path.join(folder, txt), ""
        try:
            with open(path, encoding="utf-8") as fh:
                caption = fh.read()
        except UnicodeDecodeError as exc:
            caption, error = "", (f"{path}: caption is not UTF-8 text (byte {exc.object[exc.start]:#04x} at "
                                  f"offset {exc.start}); save it as UTF-8")
        records.append((make_record(stem, clip or os.path.join(folder, stem + ".gif"), caption, error=error), path))
    return records


def keypoint_paths(root: str, records: list[ClipRecord]) -> tuple[dict[str, str], list[str]]:
    """({clip_id: path of `name.pose` beside the clip}, the patterns searched)."""
    found, folders = {}, sorted({os.path.dirname(r.path) for r in records})
    for folder in folders:
        for name in os.listdir(folder):
            stem, ext = os.path.splitext(name)
            if ext.lower() == ".pose":
                found.setdefault(stem, os.path.join(folder, name))
    wanted = {r.clip_id for r in records}
    return {k: v for k, v in found.items() if k in wanted}, [os.path.join(f, "NAME.pose") for f in folders]


def expected_keypoint_path(record: ClipRecord, found: dict[str, str]) -> str:
    """Where a clip's missing keypoints were expected: `name.pose` beside it."""
    return os.path.join(os.path.dirname(record.path), record.clip_id + ".pose")


def read_split(root: str, split: str, cfg) -> tuple[list[ClipRecord], list[str]]:
    """(records, caption files read) of split train|val|test."""
    if not os.path.isdir(root):
        raise DatasetNotFoundError(f"clip folder not found: {root}")
    has_split_dirs = any(os.path.isdir(os.path.join(root, d)) for ds in SPLIT_FOLDERS.values() for d in ds)
    if has_split_dirs:
        folder = next((os.path.join(root, d) for d in SPLIT_FOLDERS[split]
                       if os.path.isdir(os.path.join(root, d))), None)
        records = _clips_in(folder) if folder else []
    else:
        everything = _clips_in(root)
        order = np.random.default_rng(cfg.seed % 2**32).permutation(len(everything))
        n_eval = max(1, int(round(EVAL_FRACTION * len(everything))))
        if len(everything) < 3:  # too few to hold out: every split sees every clip
            chosen = range(len(everything))
        else:
            bounds = {"test": (0, n_eval), "val": (n_eval, 2 * n_eval), "train": (2 * n_eval, None)}[split]
            chosen = sorted(order[bounds[0]:bounds[1]])
        records = [everything[i] for i in chosen]
    if not records:
        raise DatasetError(f"no captioned clips (name.txt + name.gif/.mp4) for split '{split}' in {root}")
    return [r for r, _ in records], [txt for _, txt in records]
