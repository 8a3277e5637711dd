"""flicker_ratio and the in-domain video distance (fvd): ground truth scores its floor, broken video does not."""
import pytest

from checkpoint import CheckpointError
import torch

from config import make_config
from data.synthetic import SyntheticSignDataset
from evaluation.metrics import flicker_ratio
from evaluation.video_distance import (ENCODER_RECIPE, VideoEncoder, _as_uint8, _load_clips, clip_features,
                                       clip_labels, kernel_video_distance, load_or_train_encoder, train_encoder)

FRAMES, SIZE = 8, 16
# A tiny recipe: the tests check the contracts in seconds, not the default's accuracy.
TINY = dict(ENCODER_RECIPE, channels=(8, 16, 16), feature_dim=16, train_clips=192, heldout_clips=32, epochs=10,
            batch_size=16)


def _clips(split, n, start=0):
    ds = SyntheticSignDataset(split, start + n, FRAMES, SIZE, seed=0)
    return torch.stack([ds[i]["video"] for i in range(start, start + n)])


def _cfg(tmp_path):
    return make_config("tiny", dict(num_frames=FRAMES, frame_size_px=SIZE, num_train_samples=400,
                                    output_dir=str(tmp_path)))


@pytest.fixture(scope="module")
def encoder(tmp_path_factory):
    return load_or_train_encoder(_cfg(tmp_path_factory.mktemp("enc")), log=lambda *a: None, recipe=TINY)


def test_flicker_ratio_is_one_on_ground_truth_and_grows_with_noise():
    clips = _clips("test", 3, 0)
    gen = torch.Generator().manual_seed(0)
    for clip in clips:
        assert flicker_ratio(clip, clip) == 1.0
        noisy = clip + 0.04 * torch.randn(clip.shape, generator=gen)  # ~5 8-bit levels of grain per frame
        assert flicker_ratio(noisy, clip) > 1.3
        assert flicker_ratio(clip[:, :1].expand_as(clip), clip) == 0.0  # a frozen clip does not change
    assert flicker_ratio(clips[0][:, :1].expand_as(clips[0]), clips[0][:, :1].expand_as(clips[0])) != \
        flicker_ratio(clips[0][:, :1].expand_as(clips[0]), clips[0][:, :1].expand_as(clips[0]))  # NaN


def test_labels_are_glosses_or_caption_words():
    assert clip_labels(dict(glosses=["HELLO", "GO", "HELLO"], caption="hi, go")) == ["GO", "HELLO"]
    assert clip_labels(dict(caption="Der Regen, der REGEN kommt-morgen.")) == ["der", "kommt", "morgen", "regen"]


def test_encoder_training_is_deterministic_and_leaves_the_callers_rng_alone(tmp_path):
    ds = SyntheticSignDataset("train", 64, FRAMES, SIZE, seed=0)
    clips = torch.stack([_as_uint8(ds[i]["video"]) for i in range(64)])
    labels = [ds.glosses_of(i) for i in range(64)]
    recipe = dict(TINY, epochs=1)
    a, b = (train_encoder(clips, labels, recipe, log=lambda *x: None) for _ in range(2))
    for (name, pa), pb in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(pa, pb), name
    probe = _clips("test", 4)
    assert torch.equal(clip_features(a, probe), clip_features(b, probe))
    # The evaluation's sampling noise must not depend on whether the encoder was trained or loaded.
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    load_or_train_encoder(_cfg(tmp_path), log=lambda *x: None, recipe=recipe)
    assert torch.equal(torch.rand(3), expected)


def test_encoder_is_cached_and_reloads_the_same_features(tmp_path, monkeypatch):
    import evaluation.video_distance as vd

    cfg, logs = _cfg(tmp_path), []
    recipe = dict(TINY, epochs=1, train_clips=64)
    first = load_or_train_encoder(cfg, log=logs.append, recipe=recipe)
    assert any("held-out ground truth" in line and "accuracy" in line for line in logs)  # printed when it trains
    logs.clear()
    loaded, load_clips = [], vd._load_clips
    monkeypatch.setattr(vd, "_load_clips", lambda ds, idx: loaded.append(len(idx)) or load_clips(ds, idx))
    second = load_or_train_encoder(cfg, log=logs.append, recipe=recipe)
    assert not logs and sum(loaded) <= 8  # loaded, not retrained; a hit reads only the fingerprint's clips
    monkeypatch.undo()
    probe = _clips("test", 4)
    assert torch.equal(clip_features(first, probe), clip_features(second, probe))
    # What shapes the encoder is in the key: another recipe trains another one.
    load_or_train_encoder(cfg, log=logs.append, recipe=dict(recipe, seed=1))
    assert logs and len(list((tmp_path / ".text2sign_cache").glob("*.pt"))) == 2
    for path in (tmp_path / ".text2sign_cache").glob("*.pt"):
        path.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="video encoder cache .* could not be loaded"):
        load_or_train_encoder(cfg, log=lambda *x: None, recipe=recipe)


def test_distance_is_near_zero_between_ground_truth_draws_and_large_for_broken_video(encoder):
    ref = clip_features(encoder, _clips("test", 192, 0))
    truth = _clips("test", 96, 192)
    gen = torch.Generator().manual_seed(0)
    floor = kernel_video_distance(clip_features(encoder, truth), ref)
    noisy = (truth + 0.3 * torch.randn(truth.shape, generator=gen)).clamp(-1, 1)
    frozen = truth[:, :, :1].expand_as(truth)
    noise = torch.rand(truth.shape, generator=gen) * 2 - 1
    d_noisy, d_frozen, d_noise = (kernel_video_distance(clip_features(encoder, v), ref) for v in (noisy, frozen, noise))
    assert abs(floor) < 0.1 * min(d_noisy, d_frozen, d_noise), (floor, d_noisy, d_frozen, d_noise)
    assert d_noise > d_noisy > 0


def test_kernel_distance_is_unbiased_and_checks_its_input():
    gen = torch.Generator().manual_seed(0)
    same = [kernel_video_distance(torch.randn(40, 8, generator=gen), torch.randn(200, 8, generator=gen))
            for _ in range(20)]
    shifted = kernel_video_distance(torch.randn(40, 8, generator=gen) + 1.0, torch.randn(200, 8, generator=gen))
    assert abs(sum(same) / len(same)) < 0.02 and min(same) < 0 < max(same)  # unbiased: either sign
    assert shifted > 10 * max(abs(v) for v in same)
    with pytest.raises(ValueError, match="feature sets"):
        kernel_video_distance(torch.randn(1, 8), torch.randn(5, 8))


def test_loader_workers_hand_back_the_clips_and_labels_in_order():
    ds = SyntheticSignDataset("train", 40, FRAMES, SIZE, seed=0)
    indices = [7, 3, 30, 12, 0, 25]
    inline = _load_clips(ds, indices, workers=0)
    pooled = _load_clips(ds, indices, workers=2)
    assert torch.equal(inline[0], pooled[0]) and inline[1] == pooled[1]
    assert torch.equal(inline[0][1], _as_uint8(ds[3]["video"])) and inline[1][1] == clip_labels(ds[3])


def test_encoder_rejects_a_wrong_shape():
    with pytest.raises(ValueError, match=r"\(B, 3, T, H, W\)"):
        VideoEncoder(4).features(torch.zeros(2, 8, 3, 16, 16))


def test_fvd_on_a_real_dataset_learns_caption_words_and_needs_a_pool(tmp_path):
    import tests.real_fixtures as fx
    from evaluation.runner import video_distances

    fx.write_how2sign(str(tmp_path / "h2s"), missing_clip=False, truncated_clip=False)
    cfg = make_config("tiny", dict(dataset="how2sign", data_root=str(tmp_path / "h2s"), cache_dir=str(tmp_path / "cache"),
                                   num_frames=FRAMES, frame_size_px=SIZE, patch_size_px=4, pose_cond=False))
    logs = []
    train = torch.stack([_clips("train", 1)[0]] * 2)  # two "generated" clips: the pool is the other two
    fvd, pool = video_distances(dict(intended=train), cfg, "train", log=logs.append)
    assert pool == 2 and fvd["intended"] == fvd["intended"]  # finite
    assert any("held-out ground truth (2 clips)" in line for line in logs)  # trained on How2Sign's own clips
    encoder = load_or_train_encoder(cfg, log=logs.append)
    assert {"jane", "kite", "string"} <= set(encoder.vocab) and "." not in encoder.vocab
    logs.clear()
    fvd, pool = video_distances(dict(intended=train), cfg, "val", log=logs.append)  # val has 2 clips: none left
    assert pool == 0 and fvd["intended"] != fvd["intended"] and "needs 2 or more" in logs[0]


def test_the_default_demos_encoder_ships_with_the_code(tmp_path, monkeypatch):
    """The default config finds its encoder in evaluation/encoders/ (so it trains nothing and writes no
    cache); a renderer, data-default or recipe change moves the key and fails here until
    `python scripts/ship_video_encoder.py` is run."""
    import evaluation.video_distance as vd

    def no_training(*args, **kwargs):
        raise AssertionError("the default demo's video encoder is not shipped under its current key: "
                             "run python scripts/ship_video_encoder.py")

    monkeypatch.setattr(vd, "train_encoder", no_training)
    logs = []
    encoder = load_or_train_encoder(make_config("cpu", dict(output_dir=str(tmp_path))), log=logs.append)
    assert len(logs) == 1 and "shipped with the code" in logs[0] and "exact-set accuracy" in logs[0]
    assert encoder.info["exact_set_accuracy"] > 0.85 and encoder.info["heldout_clips"] == ENCODER_RECIPE["heldout_clips"]
    assert not (tmp_path / ".text2sign_cache").exists()
