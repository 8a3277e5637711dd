"""The preprocessing cache: every clip of a split decoded once, cropped, resized and stored as uint8.

On disk, in `cache_dir` (default `<data_root>/.text2sign_cache`), per (dataset, split, settings):
    {dataset}_{split}_{key}.npy         uint8 (total_frames, S, S, 3), all clips back to back;
                                        training opens it with np.load(mmap_mode="r")
    {dataset}_{split}_{key}.index.json  clip ids, captions, signers, frame offsets/lengths, the bad
                                        clips with their reasons, and the settings that made it
`key` hashes everything that shapes the frames: format version, dataset, split, frame_size_px,
sample_fps, crop, the clip list (paths, frame ranges, bboxes, signers, captions) and the size and
mtime of every annotation and clip file. Changing any of them builds a new cache; old ones are left
in place (delete the folder to reclaim space). Files are written to a temp name and os.replace'd, the
index last, so an interrupted build leaves no cache that looks complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from data import video_io
from data.real.common import ClipRecord, DatasetError, crop_resize, fps_indices

log = logging.getLogger("text2sign.data")

CACHE_FORMAT_VERSION = 1
CROP_MODE = "square-centre-or-bbox"  # part of the key: changing the crop rule invalidates caches
_NPY_HEADER_BYTES = 128  # fixed, so the final shape can be written after streaming the frames


@dataclass
class CacheIndex:
    """What the dataset needs from a built cache (the frames are memory-mapped separately)."""
    frames_path: str
    clip_ids: list[str]
    captions: list[str]
    signers: list[str]
    offsets: np.ndarray  # (N,) int64, first frame of each clip in the frames array
    lengths: np.ndarray  # (N,) int64, frames per clip (>= 1)
    bad_clips: list[tuple[str, str]]  # (clip_id, reason)
    num_records: int  # clips listed in the annotations (good + bad)


def cache_key(dataset: str, split: str, frame_size_px: int, sample_fps: float,
              records: list[ClipRecord], annotation_files: list[str]) -> str:
    """16 hex digits identifying the frames this build would produce."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(version=CACHE_FORMAT_VERSION, dataset=dataset, split=split,
                             frame_size_px=frame_size_px, sample_fps=float(sample_fps), crop=CROP_MODE),
                        sort_keys=True).encode())
    for rec in records:
        h.update(json.dumps(rec.to_dict(), sort_keys=True).encode())
        h.update(_stat_signature(rec.path).encode())
    for path in sorted(annotation_files):
        h.update(f"{path}:{_stat_signature(path)}".encode())
    return h.hexdigest()[:16]


def _stat_signature(path: str) -> str:
    try:
        st = os.stat(path)
    except OSError:
        return "missing"
    return f"{st.st_size}:{st.st_mtime_ns}"


def default_cache_dir(data_root: str) -> str:
    return os.path.join(data_root, ".text2sign_cache")


def load_or_build(cache_dir: str, dataset: str, split: str, records: list[ClipRecord],
                  annotation_files: list[str], frame_size_px: int, sample_fps: float,
                  max_bad_clip_fraction: float, num_workers: int = 0,
                  progress: bool = True) -> CacheIndex:
    """Open the cache for these settings, building it first if absent; enforce the bad-clip limit."""
    key = cache_key(dataset, split, frame_size_px, sample_fps, records, annotation_files)
    stem = os.path.join(cache_dir, f"{dataset}_{split}_{key}")
    index = _load(stem)
    if index is None:
        os.makedirs(cache_dir, exist_ok=True)
        _build(stem, key, dataset, split, records, frame_size_px, sample_fps, num_workers, progress)
        index = _load(stem)
        if index is None:
            raise DatasetError(f"cache {stem}.index.json could not be read back after building it")
    else:
        log.info("using cached %s %s clips: %s.npy (%d clips)", dataset, split, stem, len(index.clip_ids))
    check_bad_clips(index, dataset, split, max_bad_clip_fraction)
    return index


def check_bad_clips(index: CacheIndex, dataset: str, split: str, max_bad_clip_fraction: float) -> None:
    """Log the skipped clips; raise DatasetError listing them above the allowed fraction."""
    if not index.bad_clips:
        return
    fraction = len(index.bad_clips) / max(1, index.num_records)
    listing = "\n".join(f"  {cid}: {why}" for cid, why in index.bad_clips)
    log.warning("%s %s: skipped %d of %d clips (%.1f%%) that could not be used:\n%s", dataset, split,
                len(index.bad_clips), index.num_records, 100 * fraction, listing)
    if fraction > max_bad_clip_fraction or not index.clip_ids:
        raise DatasetError(
            f"{dataset} {split}: {len(index.bad_clips)} of {index.num_records} clips ({100 * fraction:.1f}%) "
            f"are missing or undecodable, above max_bad_clip_fraction={max_bad_clip_fraction}:\n{listing}")


def preprocess_clip(record: ClipRecord, frame_size_px: int, sample_fps: float) -> np.ndarray:
    """Decode one clip -> uint8 (T, S, S, 3): frame range, fps resampling, square crop, resize.

    Raises video_io.VideoDecodeError (missing/truncated/undecodable) or DatasetError (bad range).
    """
    frames, fps = video_io.read_video(record.path, fps_hint=record.fps_hint or None)
    end = len(frames) if record.frame_end < 0 else min(record.frame_end, len(frames))
    if record.frame_start >= end:
        raise DatasetError(f"frame range [{record.frame_start}, {record.frame_end}) is empty for a "
                           f"{len(frames)}-frame clip")
    frames = frames[record.frame_start:end]
    frames = frames[fps_indices(len(frames), fps, sample_fps)]
    return crop_resize(frames, frame_size_px, record.bbox_px)


def _build(stem: str, key: str, dataset: str, split: str, records: list[ClipRecord], frame_size_px: int,
           sample_fps: float, num_workers: int, progress: bool) -> None:
    from tqdm import tqdm

    tmp_frames = f"{stem}.npy.tmp{os.getpid()}"
    clips, bad, total_frames = [], [], 0

    def work(rec: ClipRecord):
        if not rec.caption:
            return rec, None, "empty caption"
        try:
            return rec, preprocess_clip(rec, frame_size_px, sample_fps), ""
        except (video_io.VideoDecodeError, DatasetError) as exc:
            return rec, None, str(exc)

    # Threads, not processes: PyAV and PIL release the GIL while decoding/resizing, and results
    # need no pickling. Order is kept (map), so the cache is identical for any worker count.
    pool = ThreadPoolExecutor(num_workers) if num_workers > 1 else None
    results = pool.map(work, records) if pool else map(work, records)
    try:
        with open(tmp_frames, "wb") as fh:
            fh.write(b"\0" * _NPY_HEADER_BYTES)
            for rec, frames, reason in tqdm(results, total=len(records), unit="clip", disable=not progress,
                                            desc=f"caching {dataset} {split}"):
                if frames is None:
                    bad.append((rec.clip_id, reason))
                    log.warning("skipping %s clip %s: %s", dataset, rec.clip_id, reason)
                    continue
                fh.write(np.ascontiguousarray(frames).tobytes())
                clips.append(dict(id=rec.clip_id, caption=rec.caption, signer=rec.signer,
                                  offset=total_frames, length=len(frames)))
                total_frames += len(frames)
            fh.seek(0)
            fh.write(_npy_header((total_frames, frame_size_px, frame_size_px, 3)))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_frames, stem + ".npy")
    finally:
        if pool:
            pool.shutdown()
        if os.path.exists(tmp_frames):
            os.remove(tmp_frames)
    meta = dict(version=CACHE_FORMAT_VERSION, key=key, dataset=dataset, split=split,
                frame_size_px=frame_size_px, sample_fps=sample_fps, crop=CROP_MODE,
                frames_file=os.path.basename(stem) + ".npy", total_frames=total_frames,
                num_records=len(records), clips=clips, bad_clips=[dict(id=c, reason=r) for c, r in bad])
    _write_json_atomic(stem + ".index.json", meta)
    log.info("cached %s %s: %d clips, %d frames, %d skipped -> %s.npy", dataset, split, len(clips),
             total_frames, len(bad), stem)


def _npy_header(shape: tuple[int, ...]) -> bytes:
    """A .npy v1.0 header for uint8 `shape`, space-padded to exactly _NPY_HEADER_BYTES."""
    text = f"{{'descr': '|u1', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    body_len = _NPY_HEADER_BYTES - 10
    if len(text) + 1 > body_len:
        raise DatasetError(f"cache shape {shape} does not fit the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + (text.ljust(body_len - 1) + "\n").encode()


def _write_json_atomic(path: str, data: dict) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        json.dump(data, fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _load(stem: str) -> CacheIndex | None:
    """The cache index if both files exist and agree; None means "build it"."""
    try:
        with open(stem + ".index.json") as fh:
            meta = json.load(fh)
    except (OSError, json.JSONDecodeError):
        return None
    frames_path = os.path.join(os.path.dirname(stem), meta.get("frames_file", ""))
    s = meta.get("frame_size_px", 0)
    expected_bytes = _NPY_HEADER_BYTES + meta.get("total_frames", -1) * s * s * 3
    if meta.get("version") != CACHE_FORMAT_VERSION or not os.path.isfile(frames_path) \
            or os.path.getsize(frames_path) != expected_bytes:
        log.warning("cache %s is incomplete or from another version; rebuilding", stem)
        return None
    clips = meta["clips"]
    return CacheIndex(frames_path=frames_path, clip_ids=[c["id"] for c in clips],
                      captions=[c["caption"] for c in clips], signers=[c["signer"] for c in clips],
                      offsets=np.array([c["offset"] for c in clips], dtype=np.int64),
                      lengths=np.array([c["length"] for c in clips], dtype=np.int64),
                      bad_clips=[(b["id"], b["reason"]) for b in meta["bad_clips"]],
                      num_records=meta["num_records"])
