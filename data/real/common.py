"""Pieces shared by the real-dataset readers: the clip record, errors, annotation checks, the square
crop + resize, temporal resampling and signer-disjoint splits.

Readers (how2sign.py, phoenix.py, wlasl.py, folder.py) only parse annotations into `ClipRecord`s;
decoding, caching and windowing are the same for all of them (cache.py, dataset.py).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np

from data.text import normalize_caption

log = logging.getLogger("text2sign.data")

SPLITS = ("train", "val", "test")


class DatasetError(ValueError):
    """A dataset that cannot be used as laid out (the message names the file, row or setting)."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """An expected annotation file or folder is missing."""


@dataclass(frozen=True)
class ClipRecord:
    """One annotated clip, before decoding.

    clip_id: unique within the dataset (a file stem, PHOENIX name or WLASL video_id).
    path: video file or frame folder (may not exist: counted as a bad clip when caching).
    frame_start/frame_end: 0-based, end exclusive; end -1 = to the last frame.
    bbox_px: (x0, y0, x1, y1) in source pixels to centre the square crop on, or None (centre crop).
    fps_hint: rate to assume when the file carries none (frame folders).
    glosses: the release's gloss labels of the clip (PHOENIX `orth`, WLASL's gloss); () = none.
    keypoints_path: a `.pose` file or an OpenPose JSON folder (may not exist: a bad clip when
        caching); "" = this dataset has no keypoints for the clip (keypoints.py).
    error: why the clip is unusable before decoding (e.g. an unreadable caption file); "" = none.
    """
    clip_id: str
    path: str
    caption: str
    signer: str = ""
    frame_start: int = 0
    frame_end: int = -1
    bbox_px: tuple[float, float, float, float] | None = None
    fps_hint: float = 0.0
    glosses: tuple[str, ...] = ()
    keypoints_path: str = ""
    error: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def make_record(clip_id: str, path: str, raw_caption: str, **kw) -> ClipRecord:
    """A record with its caption normalized (data.text.normalize_caption: any script, casefolded)."""
    return ClipRecord(clip_id=clip_id, path=path, caption=normalize_caption(raw_caption), **kw)


def check_columns(path: str, found: list[str], expected: tuple[str, ...],
                  alternatives: tuple[tuple[str, ...], ...] = (), hint: str = "") -> None:
    """Fail with the file, the columns found and those expected unless `found` has all of one set."""
    for required in (expected,) + alternatives:
        if all(c in found for c in required):
            return
    wanted = " or ".join(str(list(r)) for r in (expected,) + alternatives)
    raise DatasetError(f"{path}: wrong columns; found {list(found)}, expected {wanted}{hint}")


def square_crop_box(height_px: int, width_px: int,
                    bbox_px: tuple[float, float, float, float] | None) -> tuple[int, int, int]:
    """(top, left, side) of a square inside the frame: centred on `bbox_px` (side = its longer edge)
    or on the frame (side = the shorter frame edge), shifted to stay inside the frame."""
    if bbox_px is None:
        side = min(height_px, width_px)
        return (height_px - side) // 2, (width_px - side) // 2, side
    x0, y0, x1, y1 = bbox_px
    side = int(round(min(max(x1 - x0, y1 - y0, 1), height_px, width_px)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    top = int(np.clip(round(cy - side / 2), 0, height_px - side))
    left = int(np.clip(round(cx - side / 2), 0, width_px - side))
    return top, left, side


def crop_resize(frames: np.ndarray, frame_size_px: int,
                bbox_px: tuple[float, float, float, float] | None = None,
                crop_box: tuple[int, int, int] | None = None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, S, S, 3) uint8: square crop `crop_box` (top, left, side), by default
    square_crop_box(H, W, bbox_px), then area resize to S."""
    from PIL import Image

    top, left, side = crop_box or square_crop_box(frames.shape[1], frames.shape[2], bbox_px)
    out = np.empty((len(frames), frame_size_px, frame_size_px, 3), np.uint8)
    for i, frame in enumerate(frames):
        crop = Image.fromarray(np.ascontiguousarray(frame[top:top + side, left:left + side]))
        # reducing_gap: PIL first shrinks by an integer box filter, then resamples (fast, no aliasing).
        out[i] = np.asarray(crop.resize((frame_size_px, frame_size_px), Image.BICUBIC, reducing_gap=2.0))
    return out


def resample_indices(num_source: int, num_target: int) -> np.ndarray:
    """Index map spreading `num_target` picks evenly over `num_source` frames (repeats when shorter).

    Used for short clips (frames repeated, never black padding) and for fps changes.
    """
    return np.minimum((np.arange(num_target) * num_source) // num_target, num_source - 1)


def fps_indices(num_source: int, source_fps: float, target_fps: float) -> np.ndarray:
    """Frames to keep to turn a `source_fps` clip into a `target_fps` one (0 = keep all)."""
    if target_fps <= 0 or source_fps <= 0 or abs(target_fps - source_fps) < 1e-6:
        return np.arange(num_source)
    num_target = max(1, int(round(num_source * target_fps / source_fps)))
    return resample_indices(num_source, num_target)


def signer_disjoint_split(records: list[ClipRecord], split: str, seed: int,
                          eval_fraction: float = 0.1) -> list[ClipRecord]:
    """Re-split all `records` (every official split pooled) so that no signer is in two splits.

    Signers are shuffled by `seed`; test takes signers until it holds >= eval_fraction of the clips,
    then val likewise, train the rest. Deterministic in (records, seed).
    """
    signers = sorted({r.signer for r in records})
    if "" in signers:
        missing = [r.clip_id for r in records if not r.signer][:5]
        raise DatasetError(f"signer_disjoint=true but clips have no signer id (e.g. {missing})")
    if len(signers) < 3:
        raise DatasetError(f"signer_disjoint=true needs at least 3 signers for train/val/test; "
                           f"found {len(signers)}: {signers}")
    counts = {s: 0 for s in signers}
    for r in records:
        counts[r.signer] += 1
    order = [signers[i] for i in np.random.default_rng(seed % 2**32).permutation(len(signers))]
    assignment, target = {}, eval_fraction * len(records)
    for name in ("test", "val"):
        taken = 0
        while taken < target and len(order) > 1 + (name == "test"):  # leave a signer for the rest
            signer = order.pop(0)
            assignment[signer], taken = name, taken + counts[signer]
    assignment.update({s: "train" for s in order})
    chosen = [r for r in records if assignment[r.signer] == split]
    log.info("signer-disjoint %s split: signers %s (%d clips)", split,
             sorted(s for s, a in assignment.items() if a == split), len(chosen))
    return chosen
