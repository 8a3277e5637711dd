"""Real-dataset loaders on tiny fixtures in the released layouts (tests/real_fixtures.py), plus a
smoke test on the two real PHOENIX-2014T frames shipped by the `sign-language-datasets` package."""
from __future__ import annotations

import importlib.util
import logging
import os
import pickle

import numpy as np
import pytest
import torch

import tests.real_fixtures as fx
from config import make_config, parse_cli
from data import video_io
from data.real import DatasetError, build_real_dataset
from data.real.common import resample_indices, square_crop_box

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cfg_for(dataset: str, root, tmp_path, **kw):
    values = dict(dataset=dataset, data_root=str(root), cache_dir=str(tmp_path / "cache"), num_frames=8,
                  frame_size_px=16, patch_size_px=4, max_bad_clip_fraction=0.5,
                  pose_cond=False)  # these fixtures have no keypoints (tests/test_keypoints.py has them)
    values.update(kw)
    return make_config("tiny", values)


def frame_ids(video: torch.Tensor) -> list[int]:
    """Source frame number of each output frame of a (3, T, S, S) [-1, 1] clip (fixture levels)."""
    green = ((video[1] + 1) * 127.5).mean(dim=(1, 2))
    return [fx.level_to_frame(float(g)) for g in green]


def check_item(item: dict, cfg) -> None:
    video = item["video"]
    assert video.dtype == torch.float32
    assert tuple(video.shape) == (3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    assert -1.0 <= float(video.min()) and float(video.max()) <= 1.0
    assert float(((video + 1) * 127.5).amax(dim=(0, 2, 3)).min()) > 30  # no black frame anywhere


@pytest.fixture(scope="module")
def how2sign_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("how2sign")
    fx.write_how2sign(str(root))
    return root


@pytest.fixture(scope="module")
def wlasl_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("wlasl")
    fx.write_wlasl(str(root))
    return root


# --- decoding --------------------------------------------------------------------------------------

def test_read_video_mp4_gif_png_folder_and_truncated(tmp_path):
    frames = fx.make_frames(10)
    video_io.write_mp4(str(tmp_path / "a.mp4"), frames, fps=24)
    video_io.write_gif(str(tmp_path / "a.gif"), frames, fps=10)
    fx.write_png_folder(str(tmp_path / "a"), frames)
    for name, fps in (("a.mp4", 24.0), ("a.gif", 10.0), ("a", 25.0)):
        decoded, got_fps = video_io.read_video(str(tmp_path / name))
        assert decoded.dtype == np.uint8 and decoded.shape == frames.shape, name
        assert got_fps == pytest.approx(fps), name
        assert np.abs(decoded.astype(int) - frames).mean() < 4, name
    fx.truncate(str(tmp_path / "a.mp4"))
    with pytest.raises(video_io.VideoDecodeError, match="a.mp4"):
        video_io.read_video(str(tmp_path / "a.mp4"))
    with pytest.raises(video_io.VideoDecodeError, match="not found"):
        video_io.read_video(str(tmp_path / "nope.mp4"))


# --- each format ------------------------------------------------------------------------------------

def test_how2sign_items_captions_and_bad_clips_named(how2sign_root, tmp_path, caplog):
    cfg = cfg_for("how2sign", how2sign_root, tmp_path)
    with caplog.at_level(logging.WARNING, logger="text2sign.data"):
        train = build_real_dataset(cfg, "train", progress=False)
    assert len(train) == 4 and len(train.captions) == 4
    assert train.index.clip_ids[0].startswith("-fZc293MpJk")
    assert train.captions[:3] == ["hi i'm jane", "let's make a kite today", "don't forget the string"]
    assert "NoClip00001_0-1-rgb_front" in caplog.text and "Trunc000001_0-1-rgb_front" in caplog.text
    assert train.index.bad_clips and len(train.index.bad_clips) == 2
    item = train[0]
    check_item(item, cfg)
    assert item["caption"] == train.captions[0] and item["index"] == 0 and "signer" not in item
    assert len(build_real_dataset(cfg, "val", progress=False)) == 2


def test_bad_clip_threshold_stops_with_the_list(how2sign_root, tmp_path):
    cfg = cfg_for("how2sign", how2sign_root, tmp_path, max_bad_clip_fraction=0.2)  # 2 of 6 bad
    with pytest.raises(DatasetError) as err:
        build_real_dataset(cfg, "train", progress=False)
    msg = str(err.value)
    assert "2 of 6" in msg and "NoClip00001_0-1-rgb_front" in msg and "Trunc000001_0-1-rgb_front" in msg
    assert "max_bad_clip_fraction=0.2" in msg


def test_how2sign_wrong_columns_names_file_found_and_expected(tmp_path):
    root = tmp_path / "h2s"
    fx.write_how2sign(str(root), missing_clip=False, truncated_clip=False)
    path = root / "how2sign_realigned_train.csv"
    text = path.read_text().replace("\t", ",")  # someone "fixed" the TSV into a real CSV
    path.write_text(text)
    with pytest.raises(DatasetError) as err:
        build_real_dataset(cfg_for("how2sign", root, tmp_path), "train", progress=False)
    msg = str(err.value)
    assert str(path) in msg and "VIDEO_ID,VIDEO_NAME" in msg and "'SENTENCE_NAME'" in msg and "tab" in msg


def test_phoenix_frames_captions_signers_and_text_field(tmp_path):
    fx.write_phoenix(str(tmp_path / "ph"))
    cfg = cfg_for("phoenix", tmp_path / "ph", tmp_path)
    train = build_real_dataset(cfg, "train", progress=False)
    assert len(train) == 4
    assert train.captions[0] == "regen und schnee im norden später überall sonne"
    item = train[1]
    check_item(item, cfg)
    assert item["signer"] == "Signer02"
    val = build_real_dataset(cfg, "val", progress=False)  # the release's dev split
    assert val.index.clip_ids == ["11August_2010_Wednesday_tagesschau-2"]
    gloss = build_real_dataset(cfg_for("phoenix", tmp_path / "ph", tmp_path, text_field="orth"), "train",
                               progress=False)
    assert gloss.captions[0] == "regen schnee nord"


def test_wlasl_frame_range_bbox_and_gloss(wlasl_root, tmp_path):
    cfg = cfg_for("wlasl", wlasl_root, tmp_path, num_frames=4)
    val = build_real_dataset(cfg, "val", progress=False)
    assert val.captions == ["book", "drink"] and val[0]["signer"] == "3"
    train = build_real_dataset(cfg, "train", progress=False)
    ids = train.index.clip_ids
    # 00002: frame_start 3 (1-based), frame_end 12 (inclusive) -> source frames 2..11, 10 frames.
    k = ids.index("00002")
    assert int(train.index.lengths[k]) == 10
    frames = np.load(train.index.frames_path, mmap_mode="r")
    first = frames[train.index.offsets[k]]
    assert fx.level_to_frame(first[..., 1].mean()) == 2
    # 00006: frame_start 1, frame_end -1 -> all 16 frames.
    assert int(train.index.lengths[ids.index("00006")]) == 16
    # bbox [32, 8, 64, 40] lies right of the bright-red left band: the crop must not contain it.
    assert first[..., 0].mean() < 60
    assert square_crop_box(48, 64, (32, 8, 64, 40)) == (8, 32, 32)


def test_folder_gif_mp4_png_with_and_without_split_folders(tmp_path):
    fx.write_folder(str(tmp_path / "clips"))
    cfg = cfg_for("folder", tmp_path / "clips", tmp_path)
    train = build_real_dataset(cfg, "train", progress=False)
    assert sorted(train.captions) == ["from png frames", "hello there", "short one", "thank you"]
    for i in range(len(train)):
        check_item(train[i], cfg)
    assert build_real_dataset(cfg, "val", progress=False).captions == ["hello thank you"]
    fx.write_folder(str(tmp_path / "flat"), with_splits=False)
    flat = {s: build_real_dataset(cfg_for("folder", tmp_path / "flat", tmp_path), s, progress=False)
            for s in ("train", "val", "test")}
    ids = {s: set(d.index.clip_ids) for s, d in flat.items()}
    assert len(ids["val"]) == len(ids["test"]) == 1 and len(ids["train"]) == 4
    assert not (ids["train"] & ids["val"]) and not (ids["train"] & ids["test"]) and not (ids["val"] & ids["test"])


# --- cache ------------------------------------------------------------------------------------------

def test_cache_reused_without_decoding_and_invalidated_by_settings(wlasl_root, tmp_path, monkeypatch):
    cfg = cfg_for("wlasl", wlasl_root, tmp_path)
    first = build_real_dataset(cfg, "train", progress=False)
    video = first[0]["video"].clone()
    assert np.load(first.index.frames_path, mmap_mode="r").dtype == np.uint8

    def fail(*args, **kwargs):
        raise AssertionError("decoded although the cache is valid")

    monkeypatch.setattr(video_io, "read_video", fail)
    again = build_real_dataset(cfg, "train", progress=False)
    assert again.index.frames_path == first.index.frames_path and torch.equal(again[0]["video"], video)
    # num_frames does not shape the cache (windows are cut at load time): still no decoding.
    build_real_dataset(cfg_for("wlasl", wlasl_root, tmp_path, num_frames=4), "train", progress=False)
    for changed in (dict(frame_size_px=8), dict(sample_fps=12.5)):
        with pytest.raises(AssertionError, match="decoded although"):
            build_real_dataset(cfg_for("wlasl", wlasl_root, tmp_path, **changed), "train", progress=False)
    monkeypatch.undo()
    # Editing the annotation file (size/mtime) invalidates too.
    ann = wlasl_root / "WLASL_v0.3.json"
    ann.write_text(ann.read_text() + "\n")
    rebuilt = build_real_dataset(cfg, "train", progress=False)
    assert rebuilt.index.frames_path != first.index.frames_path
    leftovers = [n for n in os.listdir(tmp_path / "cache") if ".tmp" in n]
    assert not leftovers


def test_sample_fps_resamples_in_the_cache(wlasl_root, tmp_path):
    half = build_real_dataset(cfg_for("wlasl", wlasl_root, tmp_path, sample_fps=12.5), "train", progress=False)
    k = half.index.clip_ids.index("00006")  # 16 frames at 25 fps -> 8 at 12.5 fps
    assert int(half.index.lengths[k]) == 8


# --- windows ----------------------------------------------------------------------------------------

def test_training_windows_deterministic_in_seed_index_epoch_and_centred_in_eval(wlasl_root, tmp_path):
    cfg = cfg_for("wlasl", wlasl_root, tmp_path, num_frames=4)
    train = build_real_dataset(cfg, "train", progress=False)
    k = train.index.clip_ids.index("00006")  # 16 frames
    windows = {}
    for epoch in range(6):
        train.set_epoch(epoch)
        windows[epoch] = frame_ids(train[k]["video"])
        assert windows[epoch] == list(range(windows[epoch][0], windows[epoch][0] + 4))
    fresh = build_real_dataset(cfg, "train", progress=False)  # a resumed run: new object, same windows
    fresh.set_epoch(3)
    assert frame_ids(fresh[k]["video"]) == windows[3]
    assert len({w[0] for w in windows.values()}) > 1  # windows move between epochs
    torch.manual_seed(123)
    np.random.seed(123)  # global RNGs must not matter
    fresh.set_epoch(3)
    assert frame_ids(fresh[k]["video"]) == windows[3]
    test = build_real_dataset(cfg, "test", progress=False)
    assert frame_ids(test[0]["video"]) == [6, 7, 8, 9]  # centred in 16 frames
    assert pickle.loads(pickle.dumps(train))._frames is None  # workers reopen the memory map


def test_short_clips_are_resampled_never_padded(tmp_path):
    fx.write_folder(str(tmp_path / "clips"))
    cfg = cfg_for("folder", tmp_path / "clips", tmp_path, num_frames=16)
    train = build_real_dataset(cfg, "train", progress=False)
    k = train.index.clip_ids.index("short")  # 4 frames -> 16
    ids = frame_ids(train[k]["video"])
    assert ids == [0] * 4 + [1] * 4 + [2] * 4 + [3] * 4
    check_item(train[k], cfg)
    assert list(resample_indices(3, 7)) == [0, 0, 0, 1, 1, 2, 2]


# --- splits -----------------------------------------------------------------------------------------

def test_signer_disjoint_splits(wlasl_root, tmp_path):
    cfg = cfg_for("wlasl", wlasl_root, tmp_path, signer_disjoint=True)
    splits = {s: build_real_dataset(cfg, s, progress=False) for s in ("train", "val", "test")}
    signers = {s: set(d.index.signers) for s, d in splits.items()}
    assert all(signers.values())
    assert not (signers["train"] & signers["val"]) and not (signers["train"] & signers["test"])
    assert not (signers["val"] & signers["test"])
    assert sum(len(d) for d in splits.values()) == 8  # every clip of every official split, once
    with pytest.raises(DatasetError, match="no signer ids"):
        build_real_dataset(cfg_for("folder", tmp_path, tmp_path, signer_disjoint=True), "train")


# --- entry points -----------------------------------------------------------------------------------

def test_prepare_cli_and_yaml_presets(wlasl_root, tmp_path):
    from data.prepare import main as prepare_main

    args = ["--dataset", "wlasl", "--data_root", str(wlasl_root), "--cache_dir", str(tmp_path / "c"),
            "--frame_size_px", "16", "--patch_size_px", "4", "--splits", "train", "val"]
    assert prepare_main(args) == 0
    assert len([n for n in os.listdir(tmp_path / "c") if n.endswith(".npy")]) == 2
    assert prepare_main(["--dataset", "wlasl", "--data_root", str(tmp_path / "nothing")]) == 2
    for name in ("how2sign", "phoenix", "wlasl", "folder"):
        path = os.path.join(ROOT, "configs", f"{name}.yaml")
        cfg, _ = parse_cli(["--config", path, "--data_root", "/d"])
        assert cfg.dataset == name and cfg.pose_cond and cfg.motion_loss_weight == 0.0  # the recipe, pose stage on
        bare, _ = parse_cli(["--config", path, "--data_root", "/d", "--preset", "no_keypoints"])
        assert not bare.pose_cond and bare.motion_loss_weight == 4.0  # without it the weighting moves the hands (row 2)
        assert {k: v for k, v in bare.to_dict().items() if k not in ("pose_cond", "motion_loss_weight", "preset")} == \
            {k: v for k, v in cfg.to_dict().items() if k not in ("pose_cond", "motion_loss_weight", "preset")}


@pytest.mark.parametrize("dataset", ["how2sign", "phoenix", "wlasl", "folder"])
def test_main_trains_on_each_fixture_dataset(dataset, tmp_path):
    import main as train_main

    root = tmp_path / dataset
    {"how2sign": fx.write_how2sign, "phoenix": fx.write_phoenix, "wlasl": fx.write_wlasl,
     "folder": fx.write_folder}[dataset](str(root))
    args = ["--experiment_name", dataset, "--output_dir", str(tmp_path / "runs"), "--preset", "tiny",
            "--dataset", dataset, "--data_root", str(root), "--max_steps", "1", "--checkpoint_every_steps", "1",
            "--max_bad_clip_fraction", "0.5", "--pose_cond", "false"]
    assert train_main.main(args) == 0


# --- real data --------------------------------------------------------------------------------------

def _phoenix_dummy_root() -> str | None:
    # find_spec does not execute the package (its __init__ may import TensorFlow).
    spec = importlib.util.find_spec("sign_language_datasets")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        path = os.path.join(location, "datasets", "rwth_phoenix2014_t", "dummy_data")
        if os.path.isdir(path):
            return path
    return None


def test_real_phoenix_frames_from_sign_language_datasets(tmp_path):
    root = _phoenix_dummy_root()
    if root is None:
        pytest.skip("sign-language-datasets 0.4.0 not installed (pip install --no-deps "
                    "sign-language-datasets==0.4.0): it ships the two real PHOENIX-2014T frames")
    cfg = cfg_for("phoenix", root, tmp_path, num_frames=4, frame_size_px=32, patch_size_px=8)
    for split in ("train", "val", "test"):
        data = build_real_dataset(cfg, split, progress=False)
        assert data.index.clip_ids == ["25October_2010_Monday_tagesschau-17"]
        assert int(data.index.lengths[0]) == 2  # images0001.png, images0002.png
        assert data.captions[0].startswith("regen und schnee lassen an den alpen in der nacht nach")
        item = data[0]
        check_item(item, cfg)
        assert item["signer"] == "Signer01"
        assert frame_ids_are_two_real_frames(item["video"])
    assert not os.path.exists(os.path.join(root, ".text2sign_cache"))  # nothing written into the package


def frame_ids_are_two_real_frames(video: torch.Tensor) -> bool:
    """4 output frames from 2 real ones: frames 0,1 equal, 2,3 equal (repeat, not padding)."""
    return torch.equal(video[:, 0], video[:, 1]) and torch.equal(video[:, 2], video[:, 3]) \
        and float(video.std()) > 0.05
