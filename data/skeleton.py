"""The reduced skeleton: one set of 2D keypoints for every source (synthetic signer, OpenPose, MediaPipe).

Sign-language production works in pose space (field notes, items 15-17). Every keypoint source is
reduced to these POINTS, in image coordinates of the cached frame: x right, y down, both in frame
units [0, 1], with a per-point visibility (False = not detected, masked out of every loss, rendering
and metric). "right" is the signer's own right hand (drawn on the image's left), as in OpenPose and
MediaPipe.

    index  name               OpenPose (BODY_25 / hand_*_keypoints_2d)   MediaPipe Holistic
    0      nose               pose 0 Nose                               POSE_LANDMARKS NOSE
    1      neck               pose 1 Neck                               midpoint of the two shoulders
    2, 3   right/left shoulder pose 2 RShoulder / 5 LShoulder            RIGHT_/LEFT_SHOULDER
    4, 5   right/left elbow    pose 3 RElbow / 6 LElbow                  RIGHT_/LEFT_ELBOW
    6, 7   right/left wrist    pose 4 RWrist / 7 LWrist                  RIGHT_/LEFT_WRIST
    8, 9   right/left hand     hand point 9 (middle-finger MCP)          *_HAND_LANDMARKS MIDDLE_FINGER_MCP
    10-14  right fingertips    right hand points 4, 8, 12, 16, 20        RIGHT_HAND_LANDMARKS *_TIP
    15-19  left fingertips     left hand points 4, 8, 12, 16, 20         LEFT_HAND_LANDMARKS *_TIP

The hand centre is the middle-finger MCP, as pose-format's `hands_indexes` takes it; where a hand was
not found it falls back to the body wrist (field notes, item 16). The synthetic signer reports the
body points and the hand centres (its wrists sit on the forearm, one glove radius from the centre) and
has no fingers: its fingertips are never visible.
"""
from __future__ import annotations

POINTS: tuple[str, ...] = (
    "nose", "neck", "right_shoulder", "left_shoulder", "right_elbow", "left_elbow",
    "right_wrist", "left_wrist", "right_hand", "left_hand",
    "right_thumb_tip", "right_index_tip", "right_middle_tip", "right_ring_tip", "right_pinky_tip",
    "left_thumb_tip", "left_index_tip", "left_middle_tip", "left_ring_tip", "left_pinky_tip",
)
NUM_POINTS = len(POINTS)
INDEX = {name: i for i, name in enumerate(POINTS)}
HANDS = (INDEX["right_hand"], INDEX["left_hand"])  # [right, left], the order of every hand array
WRISTS = (INDEX["right_wrist"], INDEX["left_wrist"])
SHOULDERS = (INDEX["right_shoulder"], INDEX["left_shoulder"])
FINGERTIPS = tuple(range(INDEX["right_thumb_tip"], NUM_POINTS))

_TIPS = ("thumb", "index", "middle", "ring", "pinky")
LIMBS: tuple[tuple[int, int], ...] = tuple(
    (INDEX[a], INDEX[b]) for a, b in (
        ("neck", "nose"), ("neck", "right_shoulder"), ("neck", "left_shoulder"),
        ("right_shoulder", "right_elbow"), ("right_elbow", "right_wrist"), ("right_wrist", "right_hand"),
        ("left_shoulder", "left_elbow"), ("left_elbow", "left_wrist"), ("left_wrist", "left_hand"),
        *(("right_hand", f"right_{f}_tip") for f in _TIPS),
        *(("left_hand", f"left_{f}_tip") for f in _TIPS),
    ))

# Rendering groups: each is one image channel of the stick figure that joins x_t (a ControlNet-style
# pose map). Hands get channels of their own, since they carry the sign; arms one per side; head and
# shoulders one. A channel holds its limbs as lines and its joints as blobs.
RENDER_GROUPS: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("right_hand", (INDEX["right_hand"],) + FINGERTIPS[:5]),
    ("left_hand", (INDEX["left_hand"],) + FINGERTIPS[5:]),
    ("right_arm", (INDEX["right_shoulder"], INDEX["right_elbow"], INDEX["right_wrist"], INDEX["right_hand"])),
    ("left_arm", (INDEX["left_shoulder"], INDEX["left_elbow"], INDEX["left_wrist"], INDEX["left_hand"])),
    ("head_shoulders", (INDEX["nose"], INDEX["neck"], INDEX["right_shoulder"], INDEX["left_shoulder"])),
)


def group_limbs() -> list[list[tuple[int, int]]]:
    """Per render group, the limbs whose both ends belong to it (the lines that channel draws)."""
    return [[(a, b) for a, b in LIMBS if a in members and b in members] for _, members in RENDER_GROUPS]


def stage_layout(kind: str) -> tuple[list[int], list[tuple[list[int], list[tuple[int, int]]]], list[int]]:
    """What the pose stage predicts and draws for `kind` (config key `pose_skeleton`):
    (points: indices into POINTS, groups: per map channel (joints, limbs) as positions in points,
    hands: positions of the two hand centres in points).

    hands: the two hand centres, one blob channel each. full: every point, RENDER_GROUPS' channels."""
    if kind == "hands":
        return list(HANDS), [([0], []), ([1], [])], [0, 1]
    if kind == "full":
        groups = [(list(members), limbs) for (_, members), limbs in zip(RENDER_GROUPS, group_limbs())]
        return list(range(NUM_POINTS)), groups, list(HANDS)
    raise ValueError(f"pose skeleton must be 'hands' or 'full', got {kind!r}")
