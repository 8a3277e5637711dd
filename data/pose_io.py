"""Reduced-skeleton keypoints (data/skeleton.py) to and from `.pose` files (pose-format).

A file holds one person and one header component, COMPONENT, whose points are `skeleton.POINTS` and
whose limbs are `skeleton.LIMBS` (index pairs into those points, as pose-format's own headers store
them), with one colour per point (pose-format's visualizer colours points and blends a limb from its
two ends): the signer's right side warm, the left side cool, head and shoulders grey. The point
format is XYC: x, y in pixels of the frame (`dimensions` = the frame size), C = visibility (1 or 0),
so pose-format masks the invisible points. Any pose-format tool reads it, e.g.

    visualize_pose -i clip.pose -o clip.mp4   # needs opencv, which the project itself never imports

The project's arrays are in frame units [0, 1] (x right, y down); `skeleton_pose` and `read_pose`
convert with the frame size, so a non-square frame keeps its aspect ratio in the file.
"""
from __future__ import annotations

import os

import numpy as np
from pose_format import Pose
from pose_format.numpy import NumPyPoseBody
from pose_format.pose_header import PoseHeader, PoseHeaderComponent, PoseHeaderDimensions, PoseNormalizationInfo

from checkpoint import atomic_write
from data import skeleton
from data.real.common import DatasetError

COMPONENT = "TEXT2SIGN_REDUCED_SKELETON"
POSE_HEADER_VERSION = 0.2  # the .pose format version pose-format 0.15 writes and reads
_MAX_DIMENSION_PX = 65535  # the header stores width and height as uint16

_RIGHT_RGB, _LEFT_RGB, _HEAD_RGB = (230, 120, 20), (30, 110, 230), (110, 110, 110)


def _point_colours() -> list[tuple[int, int, int]]:
    colours = []
    for name in skeleton.POINTS:
        colours.append(_RIGHT_RGB if name.startswith("right_") else _LEFT_RGB if name.startswith("left_")
                       else _HEAD_RGB)
    return colours


def skeleton_header(frame_wh_px: tuple[int, int]) -> PoseHeader:
    """The header of a reduced-skeleton `.pose` for frames of (width_px, height_px)."""
    width_px, height_px = (int(v) for v in frame_wh_px)
    if not (1 <= width_px <= _MAX_DIMENSION_PX and 1 <= height_px <= _MAX_DIMENSION_PX):
        raise ValueError(f"frame size {frame_wh_px} px: width and height must be 1..{_MAX_DIMENSION_PX}")
    component = PoseHeaderComponent(name=COMPONENT, points=list(skeleton.POINTS),
                                    limbs=[tuple(limb) for limb in skeleton.LIMBS],
                                    colors=_point_colours(), point_format="XYC")
    return PoseHeader(POSE_HEADER_VERSION, PoseHeaderDimensions(width_px, height_px, 0), [component])


def shoulder_normalization_info(header: PoseHeader) -> PoseNormalizationInfo:
    """pose-format's normalisation points of this skeleton: the two shoulders (width -> 1)."""
    return header.normalization_info(p1=(COMPONENT, "right_shoulder"), p2=(COMPONENT, "left_shoulder"))


def _check_arrays(xy, visible) -> tuple[np.ndarray, np.ndarray]:
    xy = np.asarray(xy.detach().cpu() if hasattr(xy, "detach") else xy, dtype=np.float32)
    visible = np.asarray(visible.detach().cpu() if hasattr(visible, "detach") else visible)
    if xy.ndim != 3 or xy.shape[1:] != (skeleton.NUM_POINTS, 2) or len(xy) < 1:
        raise ValueError(f"pose xy must be (T >= 1, {skeleton.NUM_POINTS}, 2) in frame units, "
                         f"got shape {xy.shape}")
    if visible.shape != xy.shape[:2]:
        raise ValueError(f"pose visibility must be (T, {skeleton.NUM_POINTS}) matching xy {xy.shape}, "
                         f"got shape {visible.shape}")
    if not np.isfinite(xy[visible.astype(bool)]).all():
        raise ValueError("pose xy has non-finite coordinates at visible points")
    return xy, visible.astype(bool)


def skeleton_pose(xy, visible, fps: float, frame_wh_px: tuple[int, int]) -> Pose:
    """A pose-format Pose of one person from xy (T, J, 2) in frame units and visible (T, J) bool."""
    xy, visible = _check_arrays(xy, visible)
    if not (np.isfinite(fps) and fps > 0):
        raise ValueError(f"pose fps must be > 0, got {fps}")
    header = skeleton_header(frame_wh_px)
    scale = np.array([header.dimensions.width, header.dimensions.height], np.float32)
    # Invisible points may hold anything (NaN from a tracker): store 0 there, the mask hides them.
    data_px = np.where(visible[..., None], xy * scale, np.float32(0))[:, None]  # (T, people=1, J, 2)
    confidence = visible.astype(np.float32)[:, None]  # (T, 1, J)
    return Pose(header, NumPyPoseBody(fps=float(fps), data=data_px, confidence=confidence))


def write_pose(path: str, xy, visible, fps: float, frame_wh_px: tuple[int, int]) -> None:
    """Write a reduced-skeleton clip as `.pose` (atomically: a temp file, then os.replace)."""
    pose = skeleton_pose(xy, visible, fps, frame_wh_px)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, pose.write)


def read_pose(path: str) -> tuple[np.ndarray, np.ndarray, float, tuple[int, int]]:
    """(xy (T, J, 2) float32 frame units, visible (T, J) bool, fps, (width_px, height_px)) of a
    reduced-skeleton `.pose` written by `write_pose` (first person if there are several)."""
    try:
        with open(path, "rb") as f:
            pose = Pose.read(f.read())
    except FileNotFoundError:
        raise DatasetError(f"pose file {path} does not exist") from None
    except Exception as exc:  # pose-format raises struct/index errors on a damaged file
        raise DatasetError(f"{path} is not a readable .pose file ({type(exc).__name__}: {exc})") from None
    names = [c.name for c in pose.header.components]
    if len(names) != 1 or names[0] != COMPONENT or tuple(pose.header.components[0].points) != skeleton.POINTS:
        raise DatasetError(f"{path} holds components {names}, expected the single component {COMPONENT!r} "
                           f"with the reduced skeleton's {skeleton.NUM_POINTS} points (data/skeleton.py)")
    width_px, height_px = pose.header.dimensions.width, pose.header.dimensions.height
    if width_px < 1 or height_px < 1:
        raise DatasetError(f"{path} has frame dimensions {width_px}x{height_px}; expected >= 1 px")
    data = np.asarray(pose.body.data.data, np.float32)[:, 0]  # (T, J, 2) px
    if data.shape[0] == 0:
        raise DatasetError(f"{path} has no frames")
    visible = np.asarray(pose.body.confidence, np.float32)[:, 0] > 0
    xy = (data / np.array([width_px, height_px], np.float32)).astype(np.float32)
    return xy, visible, float(pose.body.fps), (int(width_px), int(height_px))
