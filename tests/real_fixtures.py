"""Tiny datasets in the exact released layouts of How2Sign, PHOENIX-2014T, WLASL and a clip folder.

Every frame is identifiable after lossy coding: its green/blue level is FRAME_LEVEL(i), and the red
channel is bright on the left (x < 24 px) and dark elsewhere, so a crop's position shows in its mean.
"""
from __future__ import annotations

import json
import os

import numpy as np
from PIL import Image

from data.video_io import write_gif, write_mp4

HEIGHT_PX, WIDTH_PX = 48, 64
LEFT_EDGE_PX = 24


def frame_level(i: int) -> int:
    return 40 + 12 * i


def level_to_frame(level: float) -> int:
    return int(round((level - 40) / 12))


def make_frames(num_frames: int, height_px: int = HEIGHT_PX, width_px: int = WIDTH_PX) -> np.ndarray:
    """uint8 (T, H, W, 3); never black (the darkest level is 40)."""
    frames = np.empty((num_frames, height_px, width_px, 3), np.uint8)
    for i in range(num_frames):
        frames[i, :, :, 1:] = frame_level(i)
        frames[i, :, :, 0] = 20
        frames[i, :, :LEFT_EDGE_PX, 0] = 220
    return frames


def write_png_folder(folder: str, frames: np.ndarray) -> None:
    os.makedirs(folder, exist_ok=True)
    for i, frame in enumerate(frames):
        Image.fromarray(frame).save(os.path.join(folder, f"images{i + 1:04d}.png"))


def truncate(path: str) -> None:
    with open(path, "rb") as fh:
        data = fh.read()
    with open(path, "wb") as fh:
        fh.write(data[: len(data) // 2])


HOW2SIGN_HEADER = ["VIDEO_ID", "VIDEO_NAME", "SENTENCE_ID", "SENTENCE_NAME", "START_REALIGNED",
                   "END_REALIGNED", "SENTENCE"]


def write_how2sign(root: str, missing_clip: bool = True, truncated_clip: bool = True) -> dict:
    """Tab-separated how2sign_realigned_{split}.csv + {split}_rgb_front_clips/raw_videos/*.mp4.

    train: 4 good clips (one ID starting with '-'), plus optionally a row without a clip and a
    truncated MP4. Returns {split: [sentence names of the good clips]}.
    """
    rows = {"train": [("-fZc293MpJk", 0, "Hi, I'm Jane!"), ("G3g0-BeFN3c", 1, "Let's make a \"kite\" today."),
                      ("aBc123xyz_0", 2, "Don't forget: THE STRING."), ("zZz987qwe-1", 0, "Fold it in half.")],
            "val": [("vAl0000001", 0, "Fold the string, Jane."), ("vAl0000002", 1, "Make a kite!")],
            "test": [("tEsT000001", 0, "Fly it today.")]}
    good = {}
    for split, items in rows.items():
        clip_dir = os.path.join(root, f"{split}_rgb_front_clips", "raw_videos")
        os.makedirs(clip_dir, exist_ok=True)
        lines, good[split] = [], []
        for k, (video_id, sent, text) in enumerate(items):
            name = f"{video_id}_{sent}-1-rgb_front"
            write_mp4(os.path.join(clip_dir, name + ".mp4"), make_frames(12 + 2 * k), fps=24)
            lines.append([video_id, f"{video_id}-1-rgb_front", f"{video_id}_{sent}", name, "1.5", "4.25", text])
            good[split].append(name)
        if split == "train" and missing_clip:
            lines.append(["NoClip00001", "NoClip00001-1-rgb_front", "NoClip00001_0", "NoClip00001_0-1-rgb_front",
                          "0.0", "2.0", "This clip was never downloaded."])
        if split == "train" and truncated_clip:
            name = "Trunc000001_0-1-rgb_front"
            path = os.path.join(clip_dir, name + ".mp4")
            write_mp4(path, make_frames(16), fps=24)
            truncate(path)
            lines.append(["Trunc000001", "Trunc000001-1-rgb_front", "Trunc000001_0", name, "0.0", "1.0",
                          "A broken download."])
        with open(os.path.join(root, f"how2sign_realigned_{split}.csv"), "w", newline="") as fh:
            fh.write("\t".join(HOW2SIGN_HEADER) + "\n")
            for line in lines:
                fh.write("\t".join(line) + "\n")
    return good


PHOENIX_BASE = os.path.join("PHOENIX-2014-T-release-v3", "PHOENIX-2014-T")


def write_phoenix(root: str) -> str:
    """|-separated corpus files + 210x260 PNG frame folders; 4 signers in train. Returns the base."""
    base = os.path.join(root, PHOENIX_BASE)
    os.makedirs(os.path.join(base, "annotations", "manual"), exist_ok=True)
    plan = {"train": [("01April_2010_Thursday_heute-6694", "Signer01", 10),
                      ("01April_2010_Thursday_heute-6695", "Signer02", 6),
                      ("03July_2011_Sunday_tagesschau-1", "Signer03", 12),
                      ("05May_2011_Thursday_tagesschau-3", "Signer04", 8)],
            "dev": [("11August_2010_Wednesday_tagesschau-2", "Signer05", 9)],
            "test": [("25October_2010_Monday_tagesschau-17", "Signer01", 7)]}
    for split, items in plan.items():
        path = os.path.join(base, "annotations", "manual", f"PHOENIX-2014-T.{split}.corpus.csv")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("name|video|start|end|speaker|orth|translation\n")
            for name, signer, length in items:
                fh.write(f"{name}|{name}/1/*.png|-1|-1|{signer}|REGEN SCHNEE NORD|"
                         f"regen und schnee im norden , später überall sonne .\n")
                write_png_folder(os.path.join(base, "features", "fullFrame-210x260px", split, name),
                                 make_frames(length, 260, 210))
    return base


def write_wlasl(root: str) -> list[dict]:
    """WLASL_v0.3.json + videos/{video_id}.mp4; 5 signers, bboxes on the right part of the frame,
    1-based frame_start and frame_end -1 or inclusive. Returns the instances written."""
    os.makedirs(os.path.join(root, "videos"), exist_ok=True)
    instances = {"book": [("00001", "train", 1, 2, -1), ("00002", "train", 2, 3, 12), ("00003", "val", 3, 1, -1),
                          ("00004", "test", 4, 1, -1)],
                 "drink": [("00005", "train", 5, 4, 14), ("00006", "train", 1, 1, -1), ("00007", "val", 2, 1, -1),
                           ("00008", "test", 3, 1, -1)]}
    entries, written = [], []
    for gloss, insts in instances.items():
        out = []
        for video_id, split, signer, start, end in insts:
            write_mp4(os.path.join(root, "videos", f"{video_id}.mp4"), make_frames(16), fps=25)
            inst = dict(bbox=[32, 8, 64, 40], fps=25, frame_end=end, frame_start=start, instance_id=0,
                        signer_id=signer, source="aslbrick", split=split, url="https://example.org/x.mp4",
                        variation_id=0, video_id=video_id)
            out.append(inst)
            written.append(dict(inst, gloss=gloss))
        entries.append(dict(gloss=gloss, instances=out))
    with open(os.path.join(root, "WLASL_v0.3.json"), "w") as fh:
        json.dump(entries, fh)
    return written


def write_folder(root: str, with_splits: bool = True) -> None:
    """name.gif / name.mp4 / name/ (PNG frames) with name.txt, in train/ val/ test/ sub-folders."""
    layout = {"train": [("hello", "Hello there!", "gif", 10), ("thanks", "Thank you.", "mp4", 14),
                        ("short", "Short one", "gif", 4), ("frames", "From PNG frames", "png", 8)],
              "val": [("bye", "Hello, thank you!", "gif", 9)], "test": [("yes", "Short hello.", "mp4", 12)]}
    for split, clips in layout.items():
        folder = os.path.join(root, split) if with_splits else root
        os.makedirs(folder, exist_ok=True)
        for name, caption, kind, length in clips:
            frames, path = make_frames(length), os.path.join(folder, name)
            if kind == "gif":
                write_gif(path + ".gif", frames, fps=8)
            elif kind == "mp4":
                write_mp4(path + ".mp4", frames, fps=8)
            else:
                write_png_folder(path, frames)
            with open(path + ".txt", "w") as fh:
                fh.write(caption + "\n")


# --- keypoints ----------------------------------------------------------------------------------------

def openpose_person(body: dict | None = None, right: dict | None = None, left: dict | None = None) -> dict:
    """One OpenPose person: {BODY_25 index: (x, y, c)}, {hand index: (x, y, c)} per hand; the other
    points (and all 70 face points) c = 0, as OpenPose writes points it did not find."""
    def flat(points: dict | None, count: int) -> list[float]:
        out = [0.0] * (3 * count)
        for k, xyc in (points or {}).items():
            out[3 * k:3 * k + 3] = [float(v) for v in xyc]
        return out

    return {"person_id": [-1], "pose_keypoints_2d": flat(body, 25), "face_keypoints_2d": flat(None, 70),
            "hand_left_keypoints_2d": flat(left, 21), "hand_right_keypoints_2d": flat(right, 21),
            "pose_keypoints_3d": [], "face_keypoints_3d": [], "hand_left_keypoints_3d": [],
            "hand_right_keypoints_3d": []}


def write_openpose_folder(folder: str, name: str, people_per_frame: list[list[dict]]) -> None:
    """`{name}_{frame:012d}_keypoints.json` per frame, as How2Sign's openpose_output/json/{name}/."""
    os.makedirs(folder, exist_ok=True)
    for i, people in enumerate(people_per_frame):
        with open(os.path.join(folder, f"{name}_{i:012d}_keypoints.json"), "w") as fh:
            json.dump({"version": 1.3, "people": people}, fh)


# MediaPipe's landmark names (mediapipe.solutions.holistic.PoseLandmark / HandLandmark), written out
# so the fixtures need no mediapipe.
MP_BODY = ("NOSE LEFT_EYE_INNER LEFT_EYE LEFT_EYE_OUTER RIGHT_EYE_INNER RIGHT_EYE RIGHT_EYE_OUTER LEFT_EAR "
           "RIGHT_EAR MOUTH_LEFT MOUTH_RIGHT LEFT_SHOULDER RIGHT_SHOULDER LEFT_ELBOW RIGHT_ELBOW LEFT_WRIST "
           "RIGHT_WRIST LEFT_PINKY RIGHT_PINKY LEFT_INDEX RIGHT_INDEX LEFT_THUMB RIGHT_THUMB LEFT_HIP RIGHT_HIP "
           "LEFT_KNEE RIGHT_KNEE LEFT_ANKLE RIGHT_ANKLE LEFT_HEEL RIGHT_HEEL LEFT_FOOT_INDEX RIGHT_FOOT_INDEX").split()
MP_HAND = ("WRIST THUMB_CMC THUMB_MCP THUMB_IP THUMB_TIP INDEX_FINGER_MCP INDEX_FINGER_PIP INDEX_FINGER_DIP "
           "INDEX_FINGER_TIP MIDDLE_FINGER_MCP MIDDLE_FINGER_PIP MIDDLE_FINGER_DIP MIDDLE_FINGER_TIP "
           "RING_FINGER_MCP RING_FINGER_PIP RING_FINGER_DIP RING_FINGER_TIP PINKY_MCP PINKY_PIP PINKY_DIP "
           "PINKY_TIP").split()


def holistic_components():
    """The five components of a MediaPipe Holistic `.pose` (sign-language-datasets' layout), XYZC."""
    from pose_format.pose_header import PoseHeaderComponent

    def comp(name, points):
        return PoseHeaderComponent(name=name, points=list(points), limbs=[], colors=[(255, 0, 0)],
                                   point_format="XYZC")

    return [comp("POSE_LANDMARKS", MP_BODY), comp("FACE_LANDMARKS", [str(i) for i in range(468)]),
            comp("LEFT_HAND_LANDMARKS", MP_HAND), comp("RIGHT_HAND_LANDMARKS", MP_HAND),
            comp("POSE_WORLD_LANDMARKS", MP_BODY)]


def holistic_offsets() -> dict[str, int]:
    """First point index of each holistic component."""
    return {"POSE_LANDMARKS": 0, "FACE_LANDMARKS": 33, "LEFT_HAND_LANDMARKS": 501, "RIGHT_HAND_LANDMARKS": 522,
            "POSE_WORLD_LANDMARKS": 543}


def write_pose(path: str, xy: np.ndarray, conf: np.ndarray, width_px: int, height_px: int,
               components=None, fps: float = 25.0) -> None:
    """A `.pose` file (pose-format) of one person: xy (T, N, 2) pixels, conf (T, N); holistic
    components unless given. Built on pose-format's `fake_pose`, its data replaced."""
    from pose_format.pose_header import PoseHeaderDimensions
    from pose_format.utils.generic import fake_pose

    pose = fake_pose(len(xy), fps=fps, components=components or holistic_components())
    dims = pose.body.data.shape[-1]
    data = np.zeros(pose.body.data.shape, np.float32)
    data[:, 0, :, :2] = xy
    mask = np.repeat((conf == 0)[:, None, :, None], dims, axis=-1)
    pose.body.data = np.ma.masked_array(data, mask=mask)
    pose.body.confidence = conf[:, None].astype(np.float32)
    pose.header.dimensions = PoseHeaderDimensions(width=width_px, height=height_px, depth=0)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "wb") as fh:
        pose.write(fh)
