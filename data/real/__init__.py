"""Real sign-language datasets: How2Sign, RWTH-PHOENIX-2014T, WLASL and a folder of captioned clips.

    build_real_dataset(cfg, "train")  # parses annotations, builds/opens the cache, returns a Dataset

Each reader turns its release's annotation files into ClipRecords; the shared cache decodes them once
(cache.py) and CachedClipDataset serves fixed-length windows from the memory-mapped frames.
Layouts, commands and bad-data behaviour: docs/datasets.md.
"""
from __future__ import annotations

from data.real import folder, how2sign, phoenix, wlasl
from data.real.cache import default_cache_dir, load_or_build
from data.real.common import SPLITS, ClipRecord, DatasetError, DatasetNotFoundError, signer_disjoint_split
from data.real.dataset import CachedClipDataset

READERS = {"how2sign": how2sign, "phoenix": phoenix, "wlasl": wlasl, "folder": folder}

__all__ = ["build_real_dataset", "list_records", "CachedClipDataset", "ClipRecord", "DatasetError",
           "DatasetNotFoundError", "READERS"]


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
    return unique, files


def build_real_dataset(cfg, split: str, progress: bool = True) -> CachedClipDataset:
    """The Dataset of cfg.dataset's `split` (train|val|test), building its preprocessing cache first
    if needed. Items: {video (3, num_frames, S, S) float32 in [-1, 1], caption, index[, signer]}."""
    records, files = list_records(cfg, split)
    cache_dir = getattr(cfg, "cache_dir", "") or default_cache_dir(cfg.data_root)
    index = load_or_build(cache_dir, cfg.dataset, split, records, files, cfg.frame_size_px,
                          getattr(cfg, "sample_fps", 0.0), getattr(cfg, "max_bad_clip_fraction", 0.05),
                          num_workers=getattr(cfg, "num_workers", 0), progress=progress)
    return CachedClipDataset(index, cfg.num_frames, train=split == "train", seed=cfg.seed,
                             with_signers=READERS[cfg.dataset].HAS_SIGNERS)
