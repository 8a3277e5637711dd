"""Keypoints of real datasets (data/real/keypoints.py): the reduced skeleton per source, gaps and
missing hands, frame-count mismatches, the crop mapping, and where each dataset's keypoints are found.
Fixtures: OpenPose JSON folders and `.pose` files written with pose-format (tests/real_fixtures.py)."""
from __future__ import annotations

import os
import pickle

import numpy as np
import torch
import pytest

import tests.real_fixtures as fx
from config import make_config
from data import skeleton
from data.real import DatasetError, DatasetNotFoundError, build_real_dataset
from data.real import keypoints as kp
from data.video_io import write_gif, write_mp4

J = skeleton.INDEX
# data/skeleton.py's table, written out: the source point of every reduced point.
OPENPOSE_BODY = {"nose": 0, "neck": 1, "right_shoulder": 2, "left_shoulder": 5, "right_elbow": 3,
                 "left_elbow": 6, "right_wrist": 4, "left_wrist": 7}
MEDIAPIPE_BODY = {"nose": 0, "right_shoulder": 12, "left_shoulder": 11, "right_elbow": 14, "left_elbow": 13,
                  "right_wrist": 16, "left_wrist": 15}
HAND_POINT = {"hand": 9, "thumb_tip": 4, "index_tip": 8, "middle_tip": 12, "ring_tip": 16, "pinky_tip": 20}


def cfg_for(dataset: str, root, tmp_path, pose_cond: bool = False, **kw):
    values = dict(dataset=dataset, data_root=str(root), cache_dir=str(tmp_path / "cache"), num_frames=4,
                  frame_size_px=16, patch_size_px=4, max_bad_clip_fraction=0.5, pose_cond=pose_cond)
    values.update(kw)
    return make_config("tiny", values)


def expected_x(body: dict, right_base: float, left_base: float) -> np.ndarray:
    """x of every reduced point when body point k has x = 100 + k, hand point m x = base + m."""
    out = np.zeros(skeleton.NUM_POINTS)
    for name, j in J.items():
        side, _, rest = name.partition("_")
        if rest in HAND_POINT:
            out[j] = (right_base if side == "right" else left_base) + HAND_POINT[rest]
        elif name in body:
            out[j] = 100 + body[name]
    return out


def test_reduced_skeleton_indices_for_openpose_json(tmp_path):
    person = fx.openpose_person(body={k: (100 + k, 50 + k, 0.9) for k in range(25)},
                                right={m: (300 + m, 60, 0.8) for m in range(21)},
                                left={m: (400 + m, 70, 0.7) for m in range(21)})
    fx.write_openpose_folder(str(tmp_path / "clip"), "clip", [[person]] * 3)
    pose = kp.read_pose(str(tmp_path / "clip"), fps=24, width_px=1280, height_px=720)
    assert (pose.header.dimensions.width, pose.header.dimensions.height) == (1280, 720)
    xy, visible = kp.reduce_pose(pose, 1280, 720)
    assert xy.shape == (3, skeleton.NUM_POINTS, 2) and visible.all()
    np.testing.assert_allclose(xy[0, :, 0], expected_x(OPENPOSE_BODY, 300, 400))
    assert xy[0, J["neck"], 1] == 51 and xy[0, J["right_hand"], 1] == 60 and xy[0, J["left_pinky_tip"], 1] == 70


def test_reduced_skeleton_indices_for_holistic_pose_and_rescaling(tmp_path):
    off = fx.holistic_offsets()
    xy = np.full((2, 576, 2), 9999.0, np.float32)  # face and world landmarks: never used
    xy[:, :33, 0] = 100 + np.arange(33)
    xy[:, off["RIGHT_HAND_LANDMARKS"]:off["RIGHT_HAND_LANDMARKS"] + 21, 0] = 300 + np.arange(21)
    xy[:, off["LEFT_HAND_LANDMARKS"]:off["LEFT_HAND_LANDMARKS"] + 21, 0] = 400 + np.arange(21)
    xy[:, :, 1] = 20.0
    conf = np.ones((2, 576), np.float32)
    conf[1, 11] = 0.0  # frame 1: left shoulder missing, so the neck (their midpoint) is too
    fx.write_pose(str(tmp_path / "a.pose"), xy, conf, width_px=210, height_px=260)
    pose = kp.read_pose(str(tmp_path / "a.pose"), 25, 210, 260)
    got, visible = kp.reduce_pose(pose, 210, 260)
    want = expected_x(MEDIAPIPE_BODY, 300, 400)
    want[J["neck"]] = (112 + 111) / 2
    np.testing.assert_allclose(got[0, :, 0], want)
    assert visible[0].all() and not visible[1, J["left_shoulder"]] and not visible[1, J["neck"]]
    assert visible[1, J["right_shoulder"]] and got[1, J["neck"]].tolist() == [0, 0]
    # Coordinates are pixels of the header's frame: a video twice that size doubles them.
    doubled, _ = kp.reduce_pose(pose, 420, 520)
    np.testing.assert_allclose(doubled[0], 2 * got[0])


def _hand_track_frames(num_frames: int, right_missing=(), left_missing=(), left_wrist_missing=()):
    frames = []
    for i in range(num_frames):
        body = {k: (100 + k, 200, 1.0) for k in range(8)}
        body[4] = (500 + 10 * i, 400, 1.0)  # right wrist
        body[7] = (700, 400, 1.0)  # left wrist
        if i in left_wrist_missing:
            body[7] = (0, 0, 0)
        right = {} if i in right_missing else {m: (300 + 10 * i, 300 + m, 0.5) for m in range(21)}
        left = {} if i in left_missing else {m: (600.0, 300 + m, 0.5) for m in range(21)}
        frames.append([fx.openpose_person(body, right, left)])
    return frames


def test_missing_hands_masked_short_gaps_filled_long_ones_fall_back_to_the_wrist(tmp_path):
    # 10 fps: gaps up to round(0.2 s * 10) = 2 frames are interpolated.
    folder = str(tmp_path / "c")
    fx.write_openpose_folder(folder, "c", _hand_track_frames(
        12, right_missing=(5, 8, 9, 10, 11), left_missing=(2, 3, 4, 5, 6), left_wrist_missing=(2, 3, 4)))
    xy, visible = kp.prepare(folder, 12, fps=10, height_px=720, width_px=1280, frame_start=0, frame_end=12,
                             sample_fps=0)
    rh, lh, tip = J["right_hand"], J["left_hand"], J["right_index_tip"]
    assert visible[:, rh].all()
    assert xy[5, rh, 0] == pytest.approx(350)  # one-frame gap: interpolated, not the wrist
    assert visible[5, tip] and xy[5, tip, 1] == pytest.approx(308)
    np.testing.assert_allclose(xy[8:, rh, 0], 500 + 10 * np.arange(8, 12))  # trailing: the right wrist
    assert not visible[8:, tip].any() and (xy[8:, tip] == 0).all()  # fingertips have no fallback
    assert not visible[2:5, lh].any()  # neither hand nor wrist found (both gaps too long to fill)
    assert visible[5:7, lh].all() and (xy[5:7, lh, 0] == 700).all()  # the rest of the gap: the left wrist
    assert visible[[0, 1, 7], lh].all() and (xy[[0, 1, 7], lh, 0] == 600).all()
    # Resampled with the frames' fps_indices: 12 frames at 10 fps -> 6 at 5 fps, frames 0, 2, 4, ...
    half, _ = kp.prepare(folder, 12, 10, 720, 1280, 0, 12, sample_fps=5)
    np.testing.assert_allclose(half[:, J["right_wrist"], 0], 500 + 10 * np.arange(0, 12, 2))


def test_no_hands_in_most_frames_is_unusable(tmp_path):
    folder = str(tmp_path / "c")
    gone = tuple(range(2, 10))
    frames = _hand_track_frames(12, right_missing=gone, left_missing=gone, left_wrist_missing=gone)
    for i in gone:  # the right wrist too: no hand anywhere
        frames[i][0]["pose_keypoints_2d"][3 * 4 + 2] = 0.0
    fx.write_openpose_folder(folder, "c", frames)
    with pytest.raises(kp.KeypointError, match="a hand found in 4 of 12 frames"):
        kp.prepare(folder, 12, 10, 720, 1280, 0, 12, 0)


def _signer_pose(num_frames: int, width_px: int, height_px: int, shoulder_x: float, shoulder_y: float,
                 hand_xy: tuple[float, float]) -> tuple[np.ndarray, np.ndarray]:
    """Holistic xy (T, 576, 2), conf (T, 576): shoulders 12 px either side of shoulder_x, the right hand
    centre at hand_xy, wrists below it; nothing else found."""
    off = fx.holistic_offsets()
    xy = np.zeros((num_frames, 576, 2), np.float32)
    conf = np.zeros((num_frames, 576), np.float32)
    for index, point in ((12, (shoulder_x - 12, shoulder_y)), (11, (shoulder_x + 12, shoulder_y)),
                         (16, (hand_xy[0], hand_xy[1] + 2)), (15, (shoulder_x + 12, height_px - 2)),
                         (off["RIGHT_HAND_LANDMARKS"] + 9, hand_xy)):
        xy[:, index], conf[:, index] = point, 1.0
    return xy, conf


@pytest.fixture(scope="module")
def pose_folder(tmp_path_factory):
    """Clips of 40 frames, 64x36 (16:9): a.pose has 38 frames, b.pose 30, c has none, d.pose 40."""
    root = tmp_path_factory.mktemp("posefolder")
    frames = np.full((40, 36, 64, 3), 60, np.uint8)
    frames += np.arange(40, dtype=np.uint8)[:, None, None, None]  # GIF writers merge identical frames
    for name, pose_frames in (("a", 38), ("b", 30), ("c", 0), ("d", 40)):
        write_gif(str(root / "train" / f"{name}.gif"), frames, fps=10)
        (root / "train" / f"{name}.txt").write_text(f"clip {name}")
        if pose_frames:
            xy, conf = _signer_pose(pose_frames, 64, 36, 44, 16, (40, 20))
            fx.write_pose(str(root / "train" / f"{name}.pose"), xy, conf, 64, 36)
    return root


def test_pose_with_38_frames_for_a_40_frame_video_leaves_the_last_two_invisible(pose_folder, tmp_path):
    data = build_real_dataset(cfg_for("folder", pose_folder, tmp_path, pose_cond=True, num_frames=40),
                              "train", progress=False)
    assert data.index.clip_ids == ["a", "d"]
    a = data[data.index.clip_ids.index("a")]
    assert a["pose_xy"].shape == (40, skeleton.NUM_POINTS, 2) and a["pose_visible"].dtype == torch.bool
    seen = a["pose_visible"][:, J["right_hand"]].numpy()
    assert seen[:38].all() and not a["pose_visible"][38:].any()
    assert data[data.index.clip_ids.index("d")]["pose_visible"][:, J["right_hand"]].all()
    copy = pickle.loads(pickle.dumps(data))  # what a DataLoader worker gets: it reopens the memory maps
    assert copy._pose is None and torch.equal(copy[0]["pose_xy"], data[0]["pose_xy"])


def test_clip_folder_names_the_clip_without_pose_and_the_one_with_too_few_frames(pose_folder, tmp_path):
    data = build_real_dataset(cfg_for("folder", pose_folder, tmp_path), "train", progress=False)
    reasons = dict(data.index.bad_clips)
    assert set(reasons) == {"b", "c"}
    assert "30 frames for a 40-frame video" in reasons["b"] and "b.pose" in reasons["b"]
    assert reasons["c"] == f"keypoints not found: {pose_folder / 'train' / 'c.pose'}"


def test_keypoints_land_where_the_frame_shows_them_after_crop_and_resize(tmp_path):
    """How2Sign layout, 64x36 MP4: the signer (shoulders at x = 44) is off-centre, so the crop is the
    36 px square from x = 26 (a centre crop would start at 14); a bright block around the right hand
    centre (42, 22) must sit where its keypoint says in the cached 12 px frames."""
    root = tmp_path / "h2s"
    name = "sIgNeR0001_0-1-rgb_front"
    frames = np.full((6, 36, 64, 3), 40, np.uint8)
    frames[:, 19:25, 39:45] = 250  # pixels 39..44 x 19..24: centre (42, 22) in continuous coordinates
    write_mp4(str(root / "sentence_level/train/rgb_front/raw_videos" / f"{name}.mp4"), frames, fps=8)
    body = {2: (32, 16, 0.9), 5: (56, 16, 0.9), 1: (44, 16, 0.9), 0: (44, 8, 0.9), 4: (42, 26, 0.9)}
    person = fx.openpose_person(body, right={9: (42, 22, 0.9)})
    fx.write_openpose_folder(str(root / "sentence_level/train/rgb_front/features/openpose_output/json" / name),
                             name, [[person]] * 6)
    with open(root / "how2sign_realigned_train.csv", "w") as fh:
        fh.write("\t".join(fx.HOW2SIGN_HEADER) + "\n")
        fh.write("\t".join(["sIgNeR0001", "sIgNeR0001-1-rgb_front", "sIgNeR0001_0", name, "0", "1", "Hi."]) + "\n")
    data = build_real_dataset(cfg_for("how2sign", root, tmp_path, frame_size_px=12, patch_size_px=4),
                              "train", progress=False)
    assert data.index.crop_boxes == [(0, 26, 36)]
    item = data[0]
    level = ((item["video"][1] + 1) * 127.5 - 40).clamp(min=0).numpy()  # (T, 12, 12) weight of the block
    centres = (np.arange(12) + 0.5) / 12
    cx = (level * centres[None, None, :]).sum((1, 2)) / level.sum((1, 2))
    cy = (level * centres[None, :, None]).sum((1, 2)) / level.sum((1, 2))
    hand = item["pose_xy"][:, J["right_hand"]].numpy()
    np.testing.assert_allclose(hand, [[(42 - 26) / 36, 22 / 36]] * 4, atol=1e-6)
    np.testing.assert_allclose(np.stack([cx, cy], 1), hand, atol=0.25 / 12)  # within a quarter pixel
    assert not item["pose_visible"][:, J["left_hand"]].any()


def _phoenix_poses(base: str, pose_dir: str) -> None:
    """sign-language-datasets' holistic/{train,validation,test}/{name}.pose for the PHOENIX fixture."""
    folders = {"train": "train", "dev": "validation", "test": "test"}
    for split, sub in folders.items():
        for name in sorted(os.listdir(os.path.join(base, "features", "fullFrame-210x260px", split))):
            count = len(os.listdir(os.path.join(base, "features", "fullFrame-210x260px", split, name)))
            xy, conf = _signer_pose(count, 210, 260, 105, 130, (105, 148))
            fx.write_pose(os.path.join(pose_dir, "holistic", sub, f"{name}.pose"), xy, conf, 210, 260)


def test_pose_dir_finds_the_holistic_tree_and_enters_the_cache_key(tmp_path):
    base = fx.write_phoenix(str(tmp_path / "ph"))
    pose_dir = str(tmp_path / "poses")
    _phoenix_poses(base, pose_dir)
    cfg = cfg_for("phoenix", tmp_path / "ph", tmp_path, pose_cond=True, pose_dir=pose_dir)
    for split, count in (("train", 4), ("val", 1), ("test", 1)):
        data = build_real_dataset(cfg, split, progress=False)
        assert len(data) == count and not data.index.bad_clips
    item = data[0]
    assert item["glosses"] == ["REGEN", "SCHNEE", "NORD"]
    # Portrait 210x260: side 210, shoulders (y = 130) on row 0.44 of the crop -> top = 38.
    assert data.index.crop_boxes == [(38, 0, 210)]
    np.testing.assert_allclose(item["pose_xy"][0, J["right_hand"]].numpy(), [105 / 210, (148 - 38) / 210],
                               atol=1e-6)
    train = build_real_dataset(cfg, "train", progress=False)
    name = train.index.clip_ids[0]
    path = os.path.join(pose_dir, "holistic", "train", f"{name}.pose")
    count = int(train.index.lengths[0])
    fx.write_pose(path, *_signer_pose(count, 210, 260, 100, 130, (90, 148)), 210, 260)
    os.utime(path, ns=(1, 1))  # a different mtime even on a coarse clock
    rebuilt = build_real_dataset(cfg, "train", progress=False)
    assert rebuilt.index.pose_path != train.index.pose_path
    assert float(rebuilt[0]["pose_xy"][0, J["right_hand"], 0]) == pytest.approx(90 / 210)
    with pytest.raises(DatasetError, match="holds no {clip_id}.pose"):
        build_real_dataset(cfg_for("phoenix", tmp_path / "ph", tmp_path, pose_dir=str(tmp_path / "ph")), "train")
    with pytest.raises(DatasetNotFoundError, match="pose_dir"):
        build_real_dataset(cfg_for("phoenix", tmp_path / "ph", tmp_path, pose_dir=str(tmp_path / "x")), "train")


def test_pose_cond_without_any_keypoint_source_names_the_paths_searched(tmp_path):
    fx.write_how2sign(str(tmp_path / "h2s"), missing_clip=False, truncated_clip=False)
    with pytest.raises(DatasetError) as err:
        build_real_dataset(cfg_for("how2sign", tmp_path / "h2s", tmp_path, pose_cond=True), "train")
    msg = str(err.value)
    assert "pose_cond=true" in msg and os.path.join(str(tmp_path / "h2s"), "**", "openpose_output", "json") in msg
    assert "pose_dir" in msg
    fx.write_folder(str(tmp_path / "clips"))
    with pytest.raises(DatasetError, match=r"searched .*train.*NAME\.pose"):
        build_real_dataset(cfg_for("folder", tmp_path / "clips", tmp_path, pose_cond=True), "train")
    fx.write_phoenix(str(tmp_path / "ph"))
    with pytest.raises(DatasetError, match="phoenix ships no keypoints of its own"):
        build_real_dataset(cfg_for("phoenix", tmp_path / "ph", tmp_path, pose_cond=True), "train")
    # Without pose_cond the same datasets load, without pose keys.
    item = build_real_dataset(cfg_for("how2sign", tmp_path / "h2s", tmp_path), "train", progress=False)[0]
    assert "pose_xy" not in item and "glosses" not in item


def test_wlasl_keypoints_follow_the_frame_range_and_the_bbox_crop(tmp_path):
    written = fx.write_wlasl(str(tmp_path / "wl"))
    pose_dir = tmp_path / "poses"
    for inst in written:  # 16-frame 64x48 clips; the right hand moves 1 px a frame
        xy, conf = _signer_pose(16, 64, 48, 44, 20, (40, 24))
        xy[:, fx.holistic_offsets()["RIGHT_HAND_LANDMARKS"] + 9, 0] = 30 + np.arange(16)
        fx.write_pose(str(pose_dir / f"{inst['video_id']}.pose"), xy, conf, 64, 48)
    data = build_real_dataset(cfg_for("wlasl", tmp_path / "wl", tmp_path, pose_dir=str(pose_dir), num_frames=16),
                              "train", progress=False)
    k = data.index.clip_ids.index("00002")  # frames 2..11 of 16; bbox [32, 8, 64, 40] -> crop (8, 32, 32)
    assert data.index.crop_boxes[k] == (8, 32, 32) and int(data.index.lengths[k]) == 10
    item = data[k]
    assert item["glosses"] == ["book"] and item["caption"] == "book"
    source_frames = np.arange(2, 12)[np.minimum(np.arange(16) * 10 // 16, 9)]  # 10 frames stretched to 16
    np.testing.assert_allclose(item["pose_xy"][:, J["right_hand"], 0].numpy(), (30 + source_frames - 32) / 32,
                               atol=1e-6)
    np.testing.assert_allclose(item["pose_xy"][:, J["right_hand"], 1].numpy(), (24 - 8) / 32, atol=1e-6)
