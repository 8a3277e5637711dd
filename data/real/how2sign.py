"""How2Sign (English sentences): tab-separated `how2sign_realigned_{split}.csv` (despite the name)
with VIDEO_ID VIDEO_NAME SENTENCE_ID SENTENCE_NAME START_REALIGNED END_REALIGNED SENTENCE (the
original files have START/END); one clip per sentence at `…/raw_videos/{SENTENCE_NAME}.mp4`.

The START/END times locate the sentence in the full-length video; the sentence clips are already
cut, so they are used whole. The files carry no signer ids, so signer-disjoint splits are refused.
Keypoints: the release's OpenPose output, `…/openpose_output/json/{SENTENCE_NAME}/` folders of
`{SENTENCE_NAME}_{frame:012d}_keypoints.json` anywhere below data_root (data/real/keypoints.py).
"""
from __future__ import annotations

import csv
import os

from data.real.common import DatasetError, DatasetNotFoundError, ClipRecord, check_columns, make_record

SPLIT_NAMES = {"train": "train", "val": "val", "test": "test"}
COLUMNS = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED",
           "END_REALIGNED", "SENTENCE")
ORIGINAL_COLUMNS = ("VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START", "END", "SENTENCE")
HAS_SIGNERS = False
HAS_GLOSSES = False
OPENPOSE_DIR = "openpose_output"  # holds json/{SENTENCE_NAME}/; never walked into (millions of files)
_SKIP_DIRS = (".text2sign_cache", OPENPOSE_DIR)


def annotation_file(root: str, split: str) -> str:
    """The split's annotation file anywhere under root (realigned preferred over the original)."""
    wanted = [f"how2sign_realigned_{SPLIT_NAMES[split]}.csv", f"how2sign_{SPLIT_NAMES[split]}.csv"]
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in ("raw_videos",) + _SKIP_DIRS]
        for name in wanted:
            if name in files and name not in found:
                found[name] = os.path.join(folder, name)
    for name in wanted:
        if name in found:
            return found[name]
    raise DatasetNotFoundError(f"How2Sign {split} annotations not found under {root}: expected one of "
                               f"{wanted} (see docs/datasets.md)")


def _clip_paths(root: str) -> dict[str, str]:
    """SENTENCE_NAME -> path of every .mp4 under root (clips sit in one or several raw_videos/)."""
    paths: dict[str, str] = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if d not in _SKIP_DIRS]
        for name in files:
            if name.lower().endswith(".mp4"):
                paths.setdefault(name[:-4], os.path.join(folder, name))
    return paths


def keypoint_paths(root: str, records: list[ClipRecord]) -> tuple[dict[str, str], list[str]]:
    """({SENTENCE_NAME: its OpenPose JSON folder}, the folders searched) for every
    `openpose_output/json/` below root; only those folders are listed, not the JSON files in them."""
    found: dict[str, str] = {}
    json_dirs = []
    for folder, dirs, _ in os.walk(root):
        if OPENPOSE_DIR in dirs and os.path.isdir(os.path.join(folder, OPENPOSE_DIR, "json")):
            json_dirs.append(os.path.join(folder, OPENPOSE_DIR, "json"))
        dirs[:] = sorted(d for d in dirs if d not in ("raw_videos",) + _SKIP_DIRS)
    wanted = {r.clip_id for r in records}
    for json_dir in json_dirs:
        for name in sorted(os.listdir(json_dir)):
            if name in wanted:
                found.setdefault(name, os.path.join(json_dir, name))
    searched = json_dirs or [os.path.join(root, "**", OPENPOSE_DIR, "json")]
    return found, [os.path.join(d, "{SENTENCE_NAME}") for d in searched]


def expected_keypoint_path(record: ClipRecord, found: dict[str, str]) -> str:
    """Where a clip's missing OpenPose folder was expected: beside those of the split's other clips."""
    some = next(iter(found.values()))
    return os.path.join(os.path.dirname(some), record.clip_id)


def read_split(root: str, split: str, cfg) -> tuple[list[ClipRecord], list[str]]:
    """(records, annotation files read). Rows whose clip is missing keep a non-existent path so the
    cache counts and names them as bad clips."""
    path = annotation_file(root, split)
    clips = _clip_paths(root)
    missing_dir = os.path.join(os.path.dirname(path), "raw_videos")
    records = []
    with open(path, newline="", encoding="utf-8") as fh:
        # QUOTE_NONE: sentences contain bare double quotes that are not CSV quoting.
        reader = csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        check_columns(path, list(reader.fieldnames or []), COLUMNS, (ORIGINAL_COLUMNS,),
                      hint=" (How2Sign files are tab-separated)")
        for line, row in enumerate(reader, start=2):
            name = (row["SENTENCE_NAME"] or "").strip()
            if not name:
                raise DatasetError(f"{path}:{line}: empty SENTENCE_NAME")
            clip = clips.get(name, os.path.join(missing_dir, name + ".mp4"))
            records.append(make_record(name, clip, row["SENTENCE"] or ""))
    return records, [path]
