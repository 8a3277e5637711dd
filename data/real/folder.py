"""A folder of captioned clips: `name.gif`, `name.mp4` or a `name/` folder of PNG frames, with the
caption in `name.txt` beside it. Optional `train/`, `val/` (or `dev/`), `test/` sub-folders; without
them the clips are split by a seeded shuffle (5% val, 5% test, at least one clip each).
"""
from __future__ import annotations

import os

import numpy as np

from data.real.common import DatasetError, DatasetNotFoundError, ClipRecord, make_record
from data.video_io import FRAME_EXTENSIONS, VIDEO_EXTENSIONS

SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "dev"), "test": ("test",)}
HAS_SIGNERS = False
EVAL_FRACTION = 0.05


def _clips_in(folder: str) -> list[ClipRecord]:
    """Every `name.txt` with a clip beside it; a caption without a clip keeps a missing path."""
    names = sorted(os.listdir(folder))
    records = []
    for txt in (n for n in names if n.endswith(".txt")):
        stem = txt[:-4]
        clip = next((os.path.join(folder, stem + ext) for ext in (".gif",) + VIDEO_EXTENSIONS
                     if stem + ext in names), None)
        frame_dir = os.path.join(folder, stem)
        if clip is None and os.path.isdir(frame_dir) and any(
                f.lower().endswith(FRAME_EXTENSIONS) for f in os.listdir(frame_dir)):
            clip = frame_dir
        with open(os.path.join(folder, txt), encoding="utf-8") as fh:
            caption = fh.read()
        records.append(make_record(stem, clip or os.path.join(folder, stem + ".gif"), caption))
    return records


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
    files = [os.path.join(os.path.dirname(r.path), r.clip_id + ".txt") for r in records]
    return records, files
