"""WLASL: `WLASL_v0.3.json`, a list of {gloss, instances: [{video_id, frame_start (1-based),
frame_end (-1 = to the end, else inclusive), bbox [x0, y0, x1, y1], split, signer_id, fps, …}]};
clips at `videos/{video_id}.mp4`. The caption is the gloss word, also yielded as `glosses`; the crop
is centred on the bbox. Keypoints: `pose_dir` ({video_id}.pose).
"""
from __future__ import annotations

import glob
import json
import os

from data.real.common import DatasetError, DatasetNotFoundError, ClipRecord, make_record

SPLIT_NAMES = {"train": "train", "val": "val", "test": "test"}
INSTANCE_KEYS = ("video_id", "frame_start", "frame_end", "split")
HAS_SIGNERS = True
HAS_GLOSSES = True  # the entry's gloss, one per clip


def annotation_file(root: str) -> str:
    preferred = os.path.join(root, "WLASL_v0.3.json")
    if os.path.isfile(preferred):
        return preferred
    others = sorted(glob.glob(os.path.join(root, "WLASL_v*.json")))
    if others:
        return others[-1]
    raise DatasetNotFoundError(f"WLASL annotations not found: expected {preferred} (see docs/datasets.md)")


def read_split(root: str, split: str, cfg) -> tuple[list[ClipRecord], list[str]]:
    """(records, annotation files read) of split train|val|test."""
    path = annotation_file(root)
    try:
        with open(path, encoding="utf-8") as fh:
            entries = json.load(fh)
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(entries, list):
        raise DatasetError(f"{path}: expected a list of {{gloss, instances}}, got {type(entries).__name__}")
    records = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "gloss" not in entry or "instances" not in entry:
            found = sorted(entry) if isinstance(entry, dict) else type(entry).__name__
            raise DatasetError(f"{path}: entry {i}: wrong keys; found {found}, expected ['gloss', 'instances']")
        for inst in entry["instances"]:
            missing = [k for k in INSTANCE_KEYS if k not in inst]
            if missing:
                raise DatasetError(f"{path}: gloss {entry['gloss']!r}: instance keys found {sorted(inst)}, "
                                   f"expected {list(INSTANCE_KEYS)} (+ optional bbox, signer_id, fps)")
            if inst["split"] != SPLIT_NAMES[split]:
                continue
            start, end = int(inst["frame_start"]), int(inst["frame_end"])
            bbox = inst.get("bbox")
            records.append(make_record(
                str(inst["video_id"]), os.path.join(root, "videos", f"{inst['video_id']}.mp4"), entry["gloss"],
                signer=str(inst.get("signer_id", "")),
                frame_start=max(0, start - 1),  # 1-based inclusive -> 0-based
                frame_end=-1 if end < 0 else end,  # inclusive 1-based end == exclusive 0-based end
                bbox_px=tuple(float(v) for v in bbox) if bbox and len(bbox) == 4 else None,
                fps_hint=float(inst.get("fps") or 0.0), glosses=(str(entry["gloss"]),)))
    return records, [path]
