"""The preprocessing cache: every clip of a split decoded once, cropped, resized and stored as uint8.

On disk, in `cache_dir` (default `<data_root>/.text2sign_cache`), per (dataset, split, settings):
    {dataset}_{split}_{key}.npy         uint8 (total_frames, S, S, 3), all clips back to back;
                                        training opens it with np.load(mmap_mode="r")
    {dataset}_{split}_{key}.pose.npy    float32 (total_frames, J, 3) when the clips have keypoints:
                                        the reduced skeleton (x, y in frame units, visible 1/0) of
                                        every cached frame, same order (keypoints.py)
    {dataset}_{split}_{key}.index.json  clip ids, captions, glosses, signers, frame offsets/lengths,
                                        crop boxes, the bad clips with their reasons, the settings
`key` hashes everything that shapes the frames: format version, dataset, split, frame_size_px,
sample_fps, crop, the keypoint settings, the clip list (paths, keypoint paths, frame ranges, bboxes,
signers, captions) and the size and mtime of every annotation, clip and keypoint file (an OpenPose
folder by its own mtime, which changes when files are added, removed or renamed in it). Changing any
of them builds a new cache; old ones are left in place (delete the folder to reclaim space). Files
are written through `checkpoint.atomic_write` (temp names `.tmp_<name>_<PID>`, fsync, os.replace), the
index last, so an interrupted build
leaves no cache that looks complete; the temp files of a killed build are removed by the next one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from checkpoint import atomic_write, remove_stale_temp_files, write_text_atomic
from data import skeleton, video_io
from data.real import keypoints
from data.real.common import ClipRecord, DatasetError, crop_resize, fps_indices

log = logging.getLogger("text2sign.data")

CACHE_FORMAT_VERSION = 2
CROP_MODE = "square-bbox-or-signer-or-centre"  # part of the key: changing the crop rule invalidates caches
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
    glosses: list[list[str]] | None = None  # per clip, where the release has gloss labels
    pose_path: str = ""  # the .pose.npy beside the frames; "" = no keypoints
    crop_boxes: list[tuple[int, int, int]] | None = None  # (top, left, side) source px per clip


def cache_key(dataset: str, split: str, frame_size_px: int, sample_fps: float,
              records: list[ClipRecord], annotation_files: list[str]) -> str:
    """16 hex digits identifying the frames this build would produce."""
    h = hashlib.sha256()
    h.update(json.dumps(dict(version=CACHE_FORMAT_VERSION, dataset=dataset, split=split,
                             frame_size_px=frame_size_px, sample_fps=float(sample_fps), crop=CROP_MODE,
                             keypoints=keypoints.SETTINGS), sort_keys=True).encode())
    for rec in records:
        h.update(json.dumps(rec.to_dict(), sort_keys=True).encode())
        h.update(_stat_signature(rec.path).encode())
        if rec.keypoints_path:
            h.update(_stat_signature(rec.keypoints_path).encode())
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
    for path in remove_stale_temp_files(cache_dir):
        log.info("removed %s, a temp file of an interrupted cache build", path)
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
            f"are missing, undecodable or without usable keypoints, above "
            f"max_bad_clip_fraction={max_bad_clip_fraction}:\n{listing}")


def preprocess_clip(record: ClipRecord, frame_size_px: int, sample_fps: float):
    """Decode one clip -> (frames uint8 (T, S, S, 3), pose float32 (T, J, 3) or None, crop box
    (top, left, side) in source pixels): frame range, fps resampling, square crop, resize; the
    keypoints (if the record has a keypoints_path) through the same steps (keypoints.py).

    Raises video_io.VideoDecodeError (missing/truncated/undecodable) or DatasetError (bad range,
    missing or unusable keypoints).
    """
    frames, fps = video_io.read_video(record.path, fps_hint=record.fps_hint or None)
    num_source, height_px, width_px = frames.shape[:3]
    end = num_source if record.frame_end < 0 else min(record.frame_end, num_source)
    if record.frame_start >= end:
        raise DatasetError(f"frame range [{record.frame_start}, {record.frame_end}) is empty for a "
                           f"{num_source}-frame clip")
    xy = visible = None
    if record.keypoints_path:
        xy, visible = keypoints.prepare(record.keypoints_path, num_source, fps, height_px, width_px,
                                        record.frame_start, end, sample_fps)
    frames = frames[record.frame_start:end]
    frames = frames[fps_indices(len(frames), fps, sample_fps)]
    box = keypoints.crop_box_for(height_px, width_px, record.bbox_px, xy, visible)
    pose = None if xy is None else keypoints.to_frame_units(xy, visible, box)
    return crop_resize(frames, frame_size_px, crop_box=box), pose, box


def _build(stem: str, key: str, dataset: str, split: str, records: list[ClipRecord], frame_size_px: int,
           sample_fps: float, num_workers: int, progress: bool) -> None:
    from tqdm import tqdm

    with_pose = any(rec.keypoints_path for rec in records)
    clips, bad, total_frames = [], [], 0

    def work(rec: ClipRecord):
        if rec.error:
            return rec, None, rec.error
        if not rec.caption:
            return rec, None, "empty caption"
        if with_pose and not rec.keypoints_path:  # every item of a split carries keypoints, or none
            return rec, None, "no keypoints for this clip"
        try:
            return rec, preprocess_clip(rec, frame_size_px, sample_fps), ""
        except (video_io.VideoDecodeError, DatasetError) as exc:
            return rec, None, str(exc)

    # Threads, not processes: PyAV and PIL release the GIL while decoding/resizing, and results
    # need no pickling. Order is kept (map), so the cache is identical for any worker count.
    pool = ThreadPoolExecutor(num_workers) if num_workers > 1 else None
    results = pool.map(work, records) if pool else map(work, records)
    def stream(fh, pose_fh) -> None:
        nonlocal total_frames
        for out in (fh, pose_fh) if with_pose else (fh,):
            out.write(b"\0" * _NPY_HEADER_BYTES)
        for rec, result, reason in tqdm(results, total=len(records), unit="clip", disable=not progress,
                                        desc=f"caching {dataset} {split}"):
            if result is None:
                bad.append((rec.clip_id, reason))
                log.warning("skipping %s clip %s: %s", dataset, rec.clip_id, reason)
                continue
            frames, pose, box = result
            fh.write(np.ascontiguousarray(frames).tobytes())
            if with_pose:
                pose_fh.write(np.ascontiguousarray(pose, np.float32).tobytes())
            clips.append(dict(id=rec.clip_id, caption=rec.caption, signer=rec.signer,
                              glosses=list(rec.glosses), crop_px=list(box),
                              offset=total_frames, length=len(frames)))
            total_frames += len(frames)
        fh.seek(0)
        fh.write(_npy_header((total_frames, frame_size_px, frame_size_px, 3)))
        if with_pose:
            pose_fh.seek(0)
            pose_fh.write(_npy_header((total_frames, skeleton.NUM_POINTS, 3), "<f4"))

    try:
        # Frames and keypoints are streamed side by side; the keypoints file is renamed into place
        # first, the frames next and the index last, so a build cut short never looks complete.
        if with_pose:
            atomic_write(stem + ".npy", lambda fh: atomic_write(stem + ".pose.npy", lambda pfh: stream(fh, pfh)))
        else:
            atomic_write(stem + ".npy", lambda fh: stream(fh, None))
    finally:
        if pool:
            pool.shutdown()
    meta = dict(version=CACHE_FORMAT_VERSION, key=key, dataset=dataset, split=split,
                frame_size_px=frame_size_px, sample_fps=sample_fps, crop=CROP_MODE,
                frames_file=os.path.basename(stem) + ".npy", total_frames=total_frames,
                pose_file=os.path.basename(stem) + ".pose.npy" if with_pose else "",
                num_records=len(records), clips=clips, bad_clips=[dict(id=c, reason=r) for c, r in bad])
    write_text_atomic(stem + ".index.json", json.dumps(meta))
    log.info("cached %s %s: %d clips, %d frames, %d skipped -> %s.npy", dataset, split, len(clips),
             total_frames, len(bad), stem)


def _npy_header(shape: tuple[int, ...], descr: str = "|u1") -> bytes:
    """A .npy v1.0 header for `shape` of dtype `descr`, space-padded to exactly _NPY_HEADER_BYTES."""
    text = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {tuple(shape)}, }}"
    body_len = _NPY_HEADER_BYTES - 10
    if len(text) + 1 > body_len:
        raise DatasetError(f"cache shape {shape} does not fit the fixed .npy header")
    return b"\x93NUMPY\x01\x00" + body_len.to_bytes(2, "little") + (text.ljust(body_len - 1) + "\n").encode()


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
    pose_path = os.path.join(os.path.dirname(stem), meta["pose_file"]) if meta.get("pose_file") else ""
    pose_bytes = _NPY_HEADER_BYTES + meta.get("total_frames", -1) * skeleton.NUM_POINTS * 3 * 4
    if meta.get("version") != CACHE_FORMAT_VERSION or not os.path.isfile(frames_path) \
            or os.path.getsize(frames_path) != expected_bytes \
            or (pose_path and (not os.path.isfile(pose_path) or os.path.getsize(pose_path) != pose_bytes)):
        log.warning("cache %s is incomplete or from another version; rebuilding", stem)
        return None
    clips = meta["clips"]
    return CacheIndex(frames_path=frames_path, clip_ids=[c["id"] for c in clips],
                      captions=[c["caption"] for c in clips], signers=[c["signer"] for c in clips],
                      offsets=np.array([c["offset"] for c in clips], dtype=np.int64),
                      lengths=np.array([c["length"] for c in clips], dtype=np.int64),
                      bad_clips=[(b["id"], b["reason"]) for b in meta["bad_clips"]],
                      num_records=meta["num_records"], glosses=[list(c["glosses"]) for c in clips],
                      pose_path=pose_path, crop_boxes=[tuple(c["crop_px"]) for c in clips])
