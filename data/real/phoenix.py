"""RWTH-PHOENIX-Weather-2014T (DGS): `annotations/manual/PHOENIX-2014-T.{train,dev,test}.corpus.csv`,
`|`-separated, header name|video|start|end|speaker|orth|translation; frames at
`features/fullFrame-210x260px/{split}/{name}/images0001.png …` (210 wide x 260 tall, 25 fps).

The caption is `translation` (German text) or `orth` (upper-case glosses) by cfg.text_field; the
signer is `speaker`; the glosses are `orth` split on spaces. data_root may be the PHOENIX-2014-T
folder or any folder above it. Keypoints: `pose_dir` (sign-language-datasets' holistic poses).
"""
from __future__ import annotations

import csv
import os

from data.real.common import DatasetNotFoundError, ClipRecord, check_columns, make_record

SPLIT_NAMES = {"train": "train", "val": "dev", "test": "test"}
COLUMNS = ("name", "video", "start", "end", "speaker", "orth", "translation")
FRAME_FOLDER = os.path.join("features", "fullFrame-210x260px")
FPS = 25.0
HAS_SIGNERS = True
HAS_GLOSSES = True  # `orth`, split on spaces


def release_root(root: str) -> str:
    """The folder holding annotations/manual and features/: root itself or the first one below it."""
    marker = os.path.join("annotations", "manual", "PHOENIX-2014-T.train.corpus.csv")
    for folder, dirs, _ in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in ("features", ".text2sign_cache"))
        if os.path.isfile(os.path.join(folder, marker)):
            return folder
    raise DatasetNotFoundError(f"PHOENIX-2014T not found under {root}: expected {marker} in it or "
                               "in a folder below it (see docs/datasets.md)")


def read_split(root: str, split: str, cfg) -> tuple[list[ClipRecord], list[str]]:
    """(records, annotation files read) of split train|val|test (val = the release's dev)."""
    base = release_root(root)
    name = SPLIT_NAMES[split]
    path = os.path.join(base, "annotations", "manual", f"PHOENIX-2014-T.{name}.corpus.csv")
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"PHOENIX-2014T {split} annotations not found: {path}")
    frames_dir = os.path.join(base, FRAME_FOLDER, name)
    field = getattr(cfg, "text_field", "translation")
    records = []
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh, delimiter="|", quoting=csv.QUOTE_NONE)
        check_columns(path, list(reader.fieldnames or []), COLUMNS, hint=" ('|'-separated)")
        for row in reader:
            records.append(make_record(row["name"], os.path.join(frames_dir, row["name"]),
                                       row[field] or "", signer=row["speaker"], fps_hint=FPS,
                                       glosses=tuple((row["orth"] or "").split())))
    return records, [path]
