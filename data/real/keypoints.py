"""Keypoint files -> the reduced skeleton (data/skeleton.py) of a clip, aligned with its cached frames.

Sources are read with pose-format (field notes, item 16): an OpenPose JSON folder
(`…_{frame:012d}_keypoints.json`, BODY_25 + 2x21 hands + 70 face) through `load_openpose_directory`,
or a `.pose` file (MediaPipe Holistic, or OpenPose converted) through `Pose.read`. Per clip
(`prepare`, called by the cache with the decoded frames):

1. reduce: the 20 points of data/skeleton.py in source pixels, visible where the confidence is > 0
   (MediaPipe's neck = the shoulders' midpoint); per frame the person with the most confident points;
   `.pose` coordinates are rescaled from the header's width x height to the video's;
2. align: keypoint frame i is video frame i. Up to FRAME_SLACK frames too few (the estimator missed
   the last frames) leave those frames invisible; extra frames are dropped; more apart is a bad clip;
3. the record's frame range, then gaps of up to MAX_GAP_S linearly interpolated (longer ones stay
   invisible), then a hand not found takes the body wrist (field notes, item 16);
4. unusable (a bad clip) when fewer than MIN_HAND_FRAME_FRACTION of the frames have a hand;
5. the frames' `fps_indices`, then the frames' square crop: with no bbox from the release it is
   centred on the signer (`signer_crop_box`), and the points are mapped to frame units [0, 1] of it.

Coordinates are continuous image coordinates (pixel column i covers [i, i+1)) for every source; the
sources' half-pixel conventions differ by less than a cached pixel.
"""
from __future__ import annotations

import os

import numpy as np

from data import skeleton
from data.real.common import DatasetError, fps_indices, square_crop_box
from data.signer import SHOULDER_XY

# Part of the cache key: changing any of these rebuilds the caches that hold keypoints.
MAX_GAP_S = 0.2  # interpolate gaps up to this long (a few frames: motion blur, a missed detection)
FRAME_SLACK = (2, 0.1)  # keypoint and video frame counts may differ by max(2 frames, 10 %)
MIN_HAND_FRAME_FRACTION = 0.5  # "no hands found in most frames" below this share
SETTINGS = dict(version=1, max_gap_s=MAX_GAP_S, frame_slack=FRAME_SLACK,
                min_hand_frame_fraction=MIN_HAND_FRAME_FRACTION, shoulder_row=float(SHOULDER_XY[0, 1]))

# Source points of each reduced point, by (component, point name) as pose-format names them; two
# entries = their midpoint. pose-format labels OpenPose's hand points one joint off (its "M_CMC" is
# OpenPose hand point 9, the middle-finger MCP; "T_IP" … "P_DIP" are the fingertips 4, 8, 12, 16, 20).
_OP_BODY, _OP_HAND = "pose_keypoints_2d", "hand_{}_keypoints_2d"
_OP_TIPS = ("T_IP", "I_DIP", "M_DIP", "R_DIP", "P_DIP")
_MP_BODY, _MP_HAND = "POSE_LANDMARKS", "{}_HAND_LANDMARKS"
_MP_TIPS = ("THUMB_TIP", "INDEX_FINGER_TIP", "MIDDLE_FINGER_TIP", "RING_FINGER_TIP", "PINKY_TIP")


def _source_table(kind: str) -> list[tuple[tuple[str, str], ...]]:
    """Per reduced point (skeleton.POINTS order), its source (component, point) names."""
    if kind == "openpose":
        body = {"nose": "Nose", "neck": "Neck", "right_shoulder": "RShoulder", "left_shoulder": "LShoulder",
                "right_elbow": "RElbow", "left_elbow": "LElbow", "right_wrist": "RWrist", "left_wrist": "LWrist"}
        table = {k: ((_OP_BODY, v),) for k, v in body.items()}
        hand, centre, tips = _OP_HAND, "M_CMC", _OP_TIPS
    else:
        body = {"nose": "NOSE", "right_shoulder": "RIGHT_SHOULDER", "left_shoulder": "LEFT_SHOULDER",
                "right_elbow": "RIGHT_ELBOW", "left_elbow": "LEFT_ELBOW", "right_wrist": "RIGHT_WRIST",
                "left_wrist": "LEFT_WRIST"}
        table = {k: ((_MP_BODY, v),) for k, v in body.items()}
        table["neck"] = table["right_shoulder"] + table["left_shoulder"]
        hand, centre, tips = _MP_HAND, "MIDDLE_FINGER_MCP", _MP_TIPS
    for side in ("right", "left"):
        comp = hand.format(side if kind == "openpose" else side.upper())
        table[f"{side}_hand"] = ((comp, centre),)
        for tip, name in zip(("thumb", "index", "middle", "ring", "pinky"), tips):
            table[f"{side}_{tip}_tip"] = ((comp, name),)
    return [table[name] for name in skeleton.POINTS]


class KeypointError(DatasetError):
    """Keypoints that are missing, unreadable or unusable for their clip (the message says why)."""


def read_pose(path: str, fps: float, width_px: int, height_px: int):
    """A pose_format.Pose from an OpenPose JSON folder (frame size given: pose-format's default is
    1000x1000) or a `.pose` file. Raises KeypointError naming the path."""
    from pose_format import Pose
    from pose_format.utils.openpose import load_openpose_directory

    if not os.path.exists(path):
        raise KeypointError(f"keypoints not found: {path}")
    try:
        if os.path.isdir(path):
            if not any(n.endswith("_keypoints.json") for n in os.listdir(path)):
                raise KeypointError(f"{path}: no OpenPose *_keypoints.json files in the folder")
            return load_openpose_directory(path, fps=fps, width=width_px, height=height_px)
        with open(path, "rb") as fh:
            return Pose.read(fh.read())
    except KeypointError:
        raise
    except Exception as exc:  # json, struct, index errors from a damaged file
        raise KeypointError(f"{path}: cannot read keypoints ({type(exc).__name__}: {exc})") from exc


def _point_index(header, component: str, point: str) -> int | None:
    start = 0
    for comp in header.components:
        if comp.name == component:
            return start + comp.points.index(point) if point in comp.points else None
        start += len(comp.points)
    return None


def reduce_pose(pose, width_px: int, height_px: int, path: str = "") -> tuple[np.ndarray, np.ndarray]:
    """(xy_px float32 (T, J, 2) in the video's pixels, visible bool (T, J)) of the reduced skeleton.

    Points the header lacks (e.g. a reduced holistic file without NOSE) are never visible."""
    from pose_format.utils.generic import detect_known_pose_format

    try:
        kind = detect_known_pose_format(pose.header)
    except ValueError:
        kind = ""
    if kind not in ("openpose", "holistic"):
        names = [c.name for c in pose.header.components]
        raise KeypointError(f"{path}: unsupported skeleton with components {names}; expected OpenPose "
                            f"({_OP_BODY}, hand_*_keypoints_2d) or MediaPipe Holistic ({_MP_BODY}, *_HAND_LANDMARKS)")
    sources = [[_point_index(pose.header, c, p) for c, p in entry] for entry in _source_table(kind)]
    data = np.asarray(np.ma.getdata(pose.body.data), np.float64)[..., :2]  # (T, P, N, 2)
    conf = np.asarray(pose.body.confidence, np.float64)  # (T, P, N)
    num_frames, num_people = data.shape[:2]
    xy = np.zeros((num_frames, skeleton.NUM_POINTS, 2), np.float32)
    visible = np.zeros((num_frames, skeleton.NUM_POINTS), bool)
    if num_people == 0:
        return xy, visible
    used = sorted({i for entry in sources for i in entry if i is not None})
    person = conf[:, :, used].clip(0, None).sum(2).argmax(1)  # (T,) the most confident person
    frames = np.arange(num_frames)
    data, conf = data[frames, person], conf[frames, person]  # (T, N, 2), (T, N)
    ok = (conf > 0) & np.isfinite(data).all(-1)
    dims = pose.header.dimensions
    scale = np.array([width_px / dims.width if dims.width > 0 else 1.0,
                      height_px / dims.height if dims.height > 0 else 1.0])
    for j, entry in enumerate(sources):
        if any(i is None for i in entry):
            continue
        visible[:, j] = ok[:, entry].all(1)
        xy[:, j] = data[:, entry].mean(1) * scale
    xy[~visible] = 0.0
    return xy, visible


def align_frames(xy: np.ndarray, visible: np.ndarray, num_video_frames: int, path: str = ""):
    """Keypoint frame i <-> video frame i, cut or padded (invisible) to `num_video_frames`."""
    slack = max(FRAME_SLACK[0], int(round(FRAME_SLACK[1] * num_video_frames)))
    if abs(len(xy) - num_video_frames) > slack:
        raise KeypointError(f"{path}: keypoints have {len(xy)} frames for a {num_video_frames}-frame video "
                            f"(at most {slack} apart)")
    pad = max(0, num_video_frames - len(xy))
    xy = np.concatenate([xy[:num_video_frames], np.zeros((pad,) + xy.shape[1:], xy.dtype)])
    visible = np.concatenate([visible[:num_video_frames], np.zeros((pad,) + visible.shape[1:], bool)])
    return xy, visible


def fill_gaps(xy: np.ndarray, visible: np.ndarray, max_gap_frames: int) -> tuple[np.ndarray, np.ndarray]:
    """Each point's runs of <= max_gap_frames invisible frames between two visible ones, linearly
    interpolated and made visible; longer runs and runs at either end stay invisible."""
    xy, visible = xy.copy(), visible.copy()
    for j in range(visible.shape[1]):
        seen = np.flatnonzero(visible[:, j])
        gaps = np.diff(seen) - 1
        for k in np.flatnonzero((gaps > 0) & (gaps <= max_gap_frames)):
            a, b = seen[k], seen[k + 1]
            w = ((np.arange(a + 1, b) - a) / (b - a)).astype(np.float32)[:, None]
            xy[a + 1:b, j] = xy[a, j] + w * (xy[b, j] - xy[a, j])
            visible[a + 1:b, j] = True
    return xy, visible


def wrist_fallback(xy: np.ndarray, visible: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A hand centre that is not visible takes its body wrist where that is."""
    xy, visible = xy.copy(), visible.copy()
    for hand, wrist in zip(skeleton.HANDS, skeleton.WRISTS):
        use = ~visible[:, hand] & visible[:, wrist]
        xy[use, hand] = xy[use, wrist]
        visible[use, hand] = True
    return xy, visible


def signer_crop_box(height_px: int, width_px: int, xy: np.ndarray, visible: np.ndarray):
    """(top, left, side) of the square crop centred on the signer, or None without visible shoulders.

    side = the shorter frame edge (the centre crop's scale, so every clip keeps its framing); the
    median shoulder midpoint over the clip goes to the crop's horizontal centre and to the row where
    the synthetic signer's shoulders sit. The shoulders, not the hands' extent: the body stays put
    while the hands sign, so the crop does not move with the signs (the back-translator reads hand
    positions relative to a fixed body)."""
    both = visible[:, list(skeleton.SHOULDERS)].all(1)
    if not both.any():
        return None
    cx, cy = np.median(xy[both][:, list(skeleton.SHOULDERS)].mean(1), axis=0)
    side = min(height_px, width_px)
    top = int(np.clip(round(cy - SHOULDER_XY[0, 1] * side), 0, height_px - side))
    left = int(np.clip(round(cx - side / 2), 0, width_px - side))
    return top, left, side


def prepare(path: str, num_video_frames: int, fps: float, height_px: int, width_px: int,
            frame_start: int, frame_end: int, sample_fps: float):
    """Steps 1-5 of the module docstring up to the crop: (xy_px (T', J, 2), visible (T', J)) for the
    record's frame range [frame_start, frame_end) after `fps_indices`, T' = the cached length."""
    pose = read_pose(path, fps, width_px, height_px)
    xy, visible = reduce_pose(pose, width_px, height_px, path)
    xy, visible = align_frames(xy, visible, num_video_frames, path)
    xy, visible = xy[frame_start:frame_end], visible[frame_start:frame_end]
    xy, visible = fill_gaps(xy, visible, max(1, int(round(MAX_GAP_S * fps))))
    xy, visible = wrist_fallback(xy, visible)
    with_hand = visible[:, list(skeleton.HANDS)].any(1)
    if with_hand.mean() < MIN_HAND_FRAME_FRACTION:
        raise KeypointError(f"{path}: keypoints unusable: a hand found in {int(with_hand.sum())} of "
                            f"{len(with_hand)} frames (need {MIN_HAND_FRAME_FRACTION:.0%})")
    keep = fps_indices(len(xy), fps, sample_fps)
    return xy[keep], visible[keep]


def crop_box_for(height_px: int, width_px: int, bbox_px, xy: np.ndarray | None, visible: np.ndarray | None):
    """The clip's square crop: the release's bbox, else centred on the signer, else the frame centre."""
    if bbox_px is None and xy is not None:
        box = signer_crop_box(height_px, width_px, xy, visible)
        if box is not None:
            return box
    return square_crop_box(height_px, width_px, bbox_px)


def to_frame_units(xy: np.ndarray, visible: np.ndarray, crop_box: tuple[int, int, int]) -> np.ndarray:
    """float32 (T, J, 3): x, y in frame units [0, 1] of the cropped frame (any resize keeps them) and
    visibility 1/0; invisible points are (0, 0, 0), as the synthetic signer's fingertips."""
    top, left, side = crop_box
    out = np.zeros(xy.shape[:2] + (3,), np.float32)
    out[..., 0] = (xy[..., 0] - left) / side
    out[..., 1] = (xy[..., 1] - top) / side
    out[..., 2] = visible
    out[~visible] = 0.0
    return out
