"""Real sign-language datasets: How2Sign, RWTH-PHOENIX-2014T, WLASL and a folder of captioned clips.

    build_real_dataset(cfg, "train")  # parses annotations, builds/opens the cache, returns a Dataset

Each reader turns its release's annotation files into ClipRecords; `attach_keypoints` points each
record at its keypoint file where the split has keypoints; the shared cache decodes them once
(cache.py, keypoints.py) and CachedClipDataset serves fixed-length windows from the memory-mapped
frames and keypoints. Layouts, commands and bad-data behaviour: docs/datasets.md.
"""
from __future__ import annotations

import dataclasses
import os

from data.real import folder, how2sign, phoenix, wlasl
from data.real.cache import default_cache_dir, load_or_build
from data.real.common import SPLITS, ClipRecord, DatasetError, DatasetNotFoundError, signer_disjoint_split
from data.real.dataset import CachedClipDataset

READERS = {"how2sign": how2sign, "phoenix": phoenix, "wlasl": wlasl, "folder": folder}

__all__ = ["build_real_dataset", "list_records", "attach_keypoints", "pose_files", "CachedClipDataset",
           "ClipRecord", "DatasetError", "DatasetNotFoundError", "READERS"]


def list_records(cfg, split: str) -> tuple[list[ClipRecord], list[str]]:
    """(records of `split`, annotation files read) after the signer-disjoint re-split if asked."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if cfg.dataset not in READERS:
        raise DatasetError(f"dataset {cfg.dataset!r} is not a real dataset; one of {tuple(READERS)}")
    reader = READERS[cfg.dataset]
    if not getattr(cfg, "signer_disjoint", False):
        records, files = reader.read_split(cfg.data_root, split, cfg)
    else:
        if not reader.HAS_SIGNERS:
            raise DatasetError(f"signer_disjoint=true: dataset '{cfg.dataset}' has no signer ids in its "
                               "annotations; use its official splits (signer_disjoint=false)")
        records, files = [], []
        for name in SPLITS:
            part, part_files = reader.read_split(cfg.data_root, name, cfg)
            records += part
            files += [f for f in part_files if f not in files]
        records = signer_disjoint_split(records, split, cfg.seed)
    seen, unique = set(), []
    for rec in records:  # a clip listed twice would count twice in training and in the cache
        if rec.clip_id not in seen:
            seen.add(rec.clip_id)
            unique.append(rec)
    if not unique:
        raise DatasetError(f"{cfg.dataset} split '{split}' under {cfg.data_root} lists no clips")
    return attach_keypoints(cfg, split, unique), files


def pose_files(pose_dir: str) -> dict[str, str]:
    """{name: path} of every `name.pose` below pose_dir (sign-language-datasets' holistic/{train,
    validation,test}/ tree as it is); the first in sorted walk order wins a name found twice."""
    found: dict[str, str] = {}
    for folder, dirs, files in os.walk(pose_dir):
        dirs[:] = sorted(d for d in dirs if d != ".text2sign_cache")
        for name in sorted(files):
            stem, ext = os.path.splitext(name)
            if ext.lower() == ".pose":
                found.setdefault(stem, os.path.join(folder, name))
    return found


def attach_keypoints(cfg, split: str, records: list[ClipRecord]) -> list[ClipRecord]:
    """Records with keypoints_path set, from `pose_dir` ({clip_id}.pose) if given, else from the
    dataset's own keypoints (How2Sign's OpenPose folders, a clip folder's name.pose). As soon as one
    clip of the split has keypoints every clip gets a path (a missing one makes it a bad clip), so
    all items of a split carry pose_xy or none do. Unchanged records when the split has none;
    pose_cond=true then raises DatasetError naming what was searched."""
    reader, pose_dir = READERS[cfg.dataset], getattr(cfg, "pose_dir", "")
    if pose_dir:
        if not os.path.isdir(pose_dir):
            raise DatasetNotFoundError(f"config key 'pose_dir': folder not found: {pose_dir}")
        files = pose_files(pose_dir)
        found = {r.clip_id: files[r.clip_id] for r in records if r.clip_id in files}
        if not found:
            raise DatasetError(f"config key 'pose_dir': {pose_dir} holds no {{clip_id}}.pose for any of the "
                               f"{len(records)} {cfg.dataset} {split} clips (e.g. {records[0].clip_id}.pose)")
        expected = {r.clip_id: os.path.join(pose_dir, r.clip_id + ".pose") for r in records}
        searched = [os.path.join(pose_dir, "**", "{clip_id}.pose")]
    elif hasattr(reader, "keypoint_paths"):
        found, searched = reader.keypoint_paths(cfg.data_root, records)
        expected = {r.clip_id: reader.expected_keypoint_path(r, found) for r in records} if found else {}
    else:
        found, searched = {}, []
    if not found:
        if getattr(cfg, "pose_cond", False):
            where = ", ".join(searched) if searched else f"nothing ({cfg.dataset} ships no keypoints of its own)"
            raise DatasetError(f"pose_cond=true needs keypoints, but {cfg.dataset} {split} has none: searched "
                               f"{where}; set config key 'pose_dir' to a folder of {{clip_id}}.pose files "
                               "(docs/datasets.md, 'Keypoints'), or train without keypoints: --preset no_keypoints")
        return records
    return [dataclasses.replace(r, keypoints_path=found.get(r.clip_id) or expected[r.clip_id]) for r in records]


def build_real_dataset(cfg, split: str, progress: bool = True) -> CachedClipDataset:
    """The Dataset of cfg.dataset's `split` (train|val|test), building its preprocessing cache first
    if needed. Items: {video (3, num_frames, S, S) float32 in [-1, 1], caption, index[, signer]
    [, glosses][, pose_xy (num_frames, J, 2), pose_visible (num_frames, J)]} (CachedClipDataset)."""
    records, files = list_records(cfg, split)
    cache_dir = getattr(cfg, "cache_dir", "") or default_cache_dir(cfg.data_root)
    index = load_or_build(cache_dir, cfg.dataset, split, records, files, cfg.frame_size_px,
                          getattr(cfg, "sample_fps", 0.0), getattr(cfg, "max_bad_clip_fraction", 0.05),
                          num_workers=getattr(cfg, "num_workers", 0), progress=progress)
    return CachedClipDataset(index, cfg.num_frames, train=split == "train", seed=cfg.seed,
                             with_signers=READERS[cfg.dataset].HAS_SIGNERS,
                             with_glosses=READERS[cfg.dataset].HAS_GLOSSES)
