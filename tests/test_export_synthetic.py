"""data/export_synthetic.py: the synthetic splits as a How2Sign tree that the real loader reads back
with the captions, frames and keypoints that were written."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from config import make_config
from data import skeleton
from data.export_synthetic import ExportSettings, export, main, sentence_name
from data.real import build_real_dataset
from data.signer import parse_caption
from data.synthetic import SyntheticSignDataset
from data.text import normalize_caption
from evaluation.tracking import track_hands

HEIGHT_PX, NUM_FRAMES, FRAME_SIZE_PX = 72, 6, 24  # 128x72 exports, cached at 24 px (a third)


def settings_for(out, noise_px: float = 0.0, drop_rate: float = 0.0) -> ExportSettings:
    return ExportSettings(str(out), num_train=3, num_eval=2, num_frames=NUM_FRAMES, frame_height_px=HEIGHT_PX,
                          fps=8.0, seed=5, keypoint_noise_px=noise_px, keypoint_drop_rate=drop_rate)


def load(root, tmp_path, split: str):
    cfg = make_config("tiny", dict(dataset="how2sign", data_root=str(root), cache_dir=str(tmp_path / "cache"),
                                   num_frames=NUM_FRAMES, frame_size_px=FRAME_SIZE_PX, patch_size_px=4,
                                   max_bad_clip_fraction=0.0, seed=5))
    return build_real_dataset(cfg, split, progress=False)


def written_keypoints(root, split: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """(xy (T, J, 2), visible (T, J)) read straight from the exported JSON (BODY_25 + hand point 9)."""
    name = sentence_name(split, index)
    folder = os.path.join(root, "sentence_level", split, "rgb_front", "features", "openpose_output", "json", name)
    body = {"nose": 0, "neck": 1, "right_shoulder": 2, "right_elbow": 3, "right_wrist": 4, "left_shoulder": 5,
            "left_elbow": 6, "left_wrist": 7}
    xy, visible = np.zeros((NUM_FRAMES, skeleton.NUM_POINTS, 2)), np.zeros((NUM_FRAMES, skeleton.NUM_POINTS), bool)
    for t in range(NUM_FRAMES):
        with open(os.path.join(folder, f"{name}_{t:012d}_keypoints.json")) as fh:
            person = json.load(fh)["people"][0]
        points = [(j, person["pose_keypoints_2d"], k) for n, k in body.items() for j in [skeleton.INDEX[n]]]
        points += [(skeleton.INDEX["right_hand"], person["hand_right_keypoints_2d"], 9),
                   (skeleton.INDEX["left_hand"], person["hand_left_keypoints_2d"], 9)]
        for j, values, k in points:
            xy[t, j], visible[t, j] = values[3 * k:3 * k + 2], values[3 * k + 2] > 0
        assert len(person["face_keypoints_2d"]) == 210 and not any(person["face_keypoints_2d"])
    return xy, visible


@pytest.fixture(scope="module")
def clean_tree(tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "h2s"
    info = export(settings_for(out), num_workers=1, progress=False)
    return out, info


def test_export_reads_back_through_the_how2sign_loader(clean_tree, tmp_path):
    root, info = clean_tree
    assert info["clips"] == {"train": 3, "val": 2, "test": 2} and info["frame_width_px"] == 128
    with open(root / "export.json") as fh:
        assert json.load(fh)["seed"] == 5
    for split, count in (("train", 3), ("val", 2), ("test", 2)):
        data, synth = load(root, tmp_path, split), SyntheticSignDataset(split, count, NUM_FRAMES, 32, seed=5)
        assert data.captions == [normalize_caption(synth.caption_of(i)) for i in range(count)]
        assert [parse_caption(c) for c in data.captions] == [synth.glosses_of(i) for i in range(count)]
        for i in range(count):
            item, box = data[i], data.index.crop_boxes[i]
            assert box[0] == 0 and box[2] == HEIGHT_PX and 0 <= box[1] <= 128 - HEIGHT_PX
            xy, visible = written_keypoints(root, split, i)
            got = item["pose_xy"].numpy() * box[2] + [box[1], box[0]]  # back to exported pixels
            assert (item["pose_visible"].numpy()[:, :10] == visible[:, :10]).all()
            np.testing.assert_allclose(got[visible], xy[visible], atol=1e-3)  # the JSON's 3 decimals
            # Against the signer's own skeleton: one horizontal shift (the crop centres the shoulders
            # instead of the scene), no scale, no vertical change.
            want = synth[i]["pose_xy"].numpy()
            shift = item["pose_xy"].numpy()[visible] - want[visible]
            assert np.ptp(shift[:, 0]) < 1e-4 and np.abs(shift[:, 1]).max() < 1e-4
            assert abs(shift[0, 0]) <= 0.03 * 1.04 + 1 / HEIGHT_PX  # the style's body offset, rounded


def test_exported_frames_show_the_gloves_where_the_keypoints_say(clean_tree, tmp_path):
    root, _ = clean_tree
    data = load(root, tmp_path, "train")
    names = {os.path.basename(p) for p in os.listdir(root / "sentence_level" / "train" / "rgb_front" / "raw_videos")}
    assert names == {sentence_name("train", i) + ".mp4" for i in range(3)}
    # The signer sits anywhere along the 16:9 frame, not only where the style's body offset puts it.
    shoulders_x = [written_keypoints(root, split, i)[0][0, list(skeleton.SHOULDERS), 0].mean()
                   for split, n in (("train", 3), ("val", 2), ("test", 2)) for i in range(n)]
    assert np.ptp(shoulders_x) > 0.2 * (128 - HEIGHT_PX) + 2 * 0.03 * HEIGHT_PX
    errors = []
    for i in range(len(data)):
        item = data[i]
        track, found = track_hands(item["video"])
        hands = item["pose_xy"].numpy()[:, list(skeleton.HANDS)]
        errors.append(np.linalg.norm(track - hands, axis=-1)[found])
    errors = np.concatenate(errors)
    assert len(errors) >= 0.8 * 2 * NUM_FRAMES * len(data)
    assert np.median(errors) < 0.5 / FRAME_SIZE_PX and errors.max() < 1.5 / FRAME_SIZE_PX


def test_keypoint_noise_jitters_and_drops_points_and_hands(clean_tree, tmp_path):
    noisy = tmp_path / "noisy"
    export(settings_for(noisy, noise_px=2.0, drop_rate=0.2), num_workers=1, progress=False)
    clean_root, _ = clean_tree
    diffs, dropped, hands_lost = [], 0, 0
    for i in range(3):
        xy, visible = written_keypoints(clean_root, "train", i)
        nxy, nvisible = written_keypoints(noisy, "train", i)
        both = visible & nvisible
        diffs.append((nxy - xy)[both])
        dropped += int((visible & ~nvisible).sum())
        hands_lost += int((~nvisible[:, list(skeleton.HANDS)]).sum())
    diffs = np.concatenate(diffs)
    assert 1.6 < diffs.std() < 2.4 and abs(diffs.mean()) < 0.5  # N(0, 2 px) per coordinate
    assert 0.15 < dropped / (3 * NUM_FRAMES * 10) < 0.5 and hands_lost > 0
    data = load(noisy, tmp_path, "train")  # dropped hands fall back to the wrist: the clips stay usable
    assert len(data) == 3 and data[0]["pose_visible"][:, list(skeleton.HANDS)].float().mean() > 0.9


def test_cli_refuses_a_non_empty_folder_and_bad_values(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert main([str(tmp_path / "x"), "--num_train", "1", "--num_eval", "1"]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main([str(tmp_path / "y"), "--frame_height_px", "35"]) == 2
    assert "--frame_height_px" in capsys.readouterr().err
    assert not (tmp_path / "y").exists()


def test_a_run_on_the_export_is_scored_in_pose_space_through_evaluate(clean_tree, tmp_path, capsys):
    """The real-data path end to end at toy size: train on the How2Sign tree (keypoints from its
    OpenPose JSON only), then evaluate.py's pose section for every condition, and the exact
    back-translator on the exported captions."""
    import evaluate
    import main as train_main

    root, _ = clean_tree
    flags = ["--preset", "tiny", "--dataset", "how2sign", "--data_root", str(root), "--cache_dir",
             str(tmp_path / "cache"), "--num_frames", str(NUM_FRAMES), "--frame_size_px", str(FRAME_SIZE_PX),
             "--patch_size_px", "4", "--max_bad_clip_fraction", "0", "--seed", "5", "--max_steps", "2",
             "--num_sample_prompts", "1", "--output_dir", str(tmp_path), "--experiment_name", "h2s"]
    assert train_main.main(flags) == 0
    out = tmp_path / "eval.json"
    assert evaluate.main(["--experiment", "h2s", "--output_dir", str(tmp_path), "--split", "test",
                          "--scorer", "synthetic", "--recognizer", "none", "--json", str(out)]) == 0
    with open(out) as fh:
        results = json.load(fh)
    pose = results["pose"]
    for condition in ("intended", "no_text", "shuffled", "ground_truth"):
        assert {"dtw_mje", "total_distance"} <= set(pose[condition]), condition
    assert pose["ground_truth"]["dtw_mje"] == pytest.approx(0.0, abs=1e-6)  # the reference against itself
    assert pose["ground_truth"]["total_distance"] == pytest.approx(1.0, abs=1e-6)
    assert pose["intended"]["dtw_mje"] > 0  # two steps of training do not reproduce the reference
    assert 0 <= results["intended"]["gloss_accuracy"] <= 1  # the exact back-translator read the clips
    assert "pose metric" in capsys.readouterr().out  # the table printed the pose section
