"""The learned pose -> gloss back-translator (evaluation/recognizer.py): it learns, it is deterministic,
its file loads safely, it scores predicted keypoints, and its CLI keys the file by the dataset."""
import os

import pytest
import torch

from config import make_config
from data import skeleton
from data.real.common import DatasetError
from data.synthetic import SyntheticSignDataset
from checkpoint import CheckpointError
from evaluation.recognizer import (BLANK, PoseCTCRecognizer, Recognizer, RecognizerSpec, augment_clips, collect_clips,
                                   ctc_collapse, dataset_scores, recognizer_scores, train_recognizer)
from evaluation.recognizer_cache import load_or_train, main, recognizer_path

# Small enough to train in a few seconds on one CPU thread, large enough to fit 32 clips exactly.
TINY = RecognizerSpec(width=32, depth=3, kernel_frames=5, steps=250, batch_size=32, lr=1e-2, warmup_steps=10)


@pytest.fixture(scope="module")
def tiny_set():
    return SyntheticSignDataset("train", 32, num_frames=12, frame_size_px=16, seed=0)


@pytest.fixture(scope="module")
def tiny_recognizer(tiny_set):
    return train_recognizer(tiny_set, TINY)


def test_trains_on_a_tiny_synthetic_set_to_wer_zero(tiny_set, tiny_recognizer):
    scores = dataset_scores(tiny_recognizer, tiny_set)
    assert scores["num_clips"] == 32 and scores["num_unreadable"] == 0
    assert scores["gloss_wer"] == 0.0 and scores["gloss_accuracy"] == 1.0
    assert tiny_recognizer.vocab == sorted({g for i in range(32) for g in tiny_set.glosses_of(i)})


def test_training_is_deterministic_under_the_seed(tiny_set):
    spec = RecognizerSpec(width=16, depth=1, steps=5, batch_size=8)
    data = collect_clips(tiny_set)
    a, b = train_recognizer(data, spec), train_recognizer(data, spec)
    c = train_recognizer(data, RecognizerSpec(width=16, depth=1, steps=5, batch_size=8, seed=1))
    sa, sb, sc = a.model.state_dict(), b.model.state_dict(), c.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_file_holds_plain_tensors_and_loads_with_weights_only(tmp_path, tiny_set, tiny_recognizer):
    path = str(tmp_path / "rec.pt")
    tiny_recognizer.save(path)
    payload = torch.load(path, weights_only=True)  # would raise on any pickled object
    assert payload["vocab"] == tiny_recognizer.vocab and payload["num_points"] == skeleton.NUM_POINTS
    loaded = Recognizer.load(path)
    items = [tiny_set[i] for i in range(8)]
    xy = [it["pose_xy"] for it in items]
    vis = [it["pose_visible"] for it in items]
    assert loaded.decode(xy, vis) == tiny_recognizer.decode(xy, vis)
    assert loaded.spec == TINY
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="not a loadable recogniser"):
        Recognizer.load(str(tmp_path / "bad.pt"))


def test_scores_predicted_keypoint_batches_against_gloss_lists(tiny_set, tiny_recognizer):
    items = [tiny_set[i] for i in range(6)]
    xy = torch.stack([it["pose_xy"] for it in items])  # (B, T, J, 2), as the pose stage predicts
    vis = torch.stack([it["pose_visible"] for it in items])
    truth = [it["glosses"] for it in items]
    assert recognizer_scores(tiny_recognizer, xy, vis, truth)["gloss_wer"] == 0.0
    shuffled = truth[1:] + truth[:1]
    assert recognizer_scores(tiny_recognizer, xy, vis, shuffled)["gloss_wer"] > 0.5
    frozen = xy[:, :1].expand_as(xy)  # the rest pose held: no sign at all
    assert recognizer_scores(tiny_recognizer, frozen, vis, truth)["gloss_accuracy"] < 0.5
    lost = vis.clone()
    lost[0, :, list(skeleton.SHOULDERS)] = False  # clip 0 cannot be normalised
    out = recognizer_scores(tiny_recognizer, xy, lost, truth)
    assert out["num_unreadable"] == 1 and out["predictions"][0] == []
    assert out["gloss_wer"] == pytest.approx(1 / 6)
    # Padded clips: lengths cut the padding off before reading.
    padded = torch.cat([xy, torch.zeros(6, 5, skeleton.NUM_POINTS, 2)], 1)
    padded_vis = torch.cat([vis, torch.zeros(6, 5, skeleton.NUM_POINTS, dtype=torch.bool)], 1)
    lengths = torch.full((6,), xy.shape[1])
    assert recognizer_scores(tiny_recognizer, padded, padded_vis, truth, lengths)["gloss_wer"] == 0.0


def test_dataset_without_glosses_is_rejected_by_name():
    class NoGlosses(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return dict(pose_xy=torch.zeros(4, skeleton.NUM_POINTS, 2), pose_visible=torch.ones(4, skeleton.NUM_POINTS))

    with pytest.raises(DatasetError, match=r"item 0 of NoGlosses has no \['glosses'\]"):
        collect_clips(NoGlosses())


def test_greedy_ctc_merges_repeats_then_drops_blanks():
    assert BLANK == 0
    assert ctc_collapse([0, 3, 3, 0, 0, 2, 2, 2, 0, 3, 0, 3, 3]) == [3, 2, 3, 3]
    assert ctc_collapse([0, 0]) == [] and ctc_collapse([1, 2, 2, 1]) == [1, 2, 1]


def test_model_sees_visibility_and_checks_its_input_shapes():
    model = PoseCTCRecognizer(skeleton.NUM_POINTS, 3, 8, 1, 3)
    xy = torch.rand(2, 5, skeleton.NUM_POINTS, 2)
    vis = torch.ones(2, 5, skeleton.NUM_POINTS, dtype=torch.bool)
    logits = model(xy, vis, torch.tensor([5, 3]))
    assert logits.shape == (2, 5, 4)
    hidden = vis.clone()
    hidden[:, :, skeleton.HANDS[0]] = False  # a lost hand is not the same input as a hand at its xy
    assert not torch.allclose(model(xy, hidden, torch.tensor([5, 3])), logits)
    with pytest.raises(ValueError, match="expected xy"):
        model(xy[:, :, :4], torch.ones(2, 5, 4, dtype=torch.bool), torch.tensor([5, 3]))


def test_file_is_keyed_by_the_dataset_and_reused(tmp_path):
    spec = RecognizerSpec(width=16, depth=1, steps=3, batch_size=8)
    cfg = make_config("tiny", dict(output_dir=str(tmp_path)))
    rec, path, trained = load_or_train(cfg, spec)
    assert trained and os.path.dirname(path) == os.path.join(str(tmp_path), ".text2sign_cache")
    rec2, path2, trained2 = load_or_train(cfg, spec)
    assert path2 == path and not trained2 and rec2.vocab == rec.vocab
    from data import build_dataset

    other = make_config("tiny", dict(output_dir=str(tmp_path), num_frames=6))  # a changed dataset
    assert recognizer_path(other, build_dataset(other, "train"), spec) != path
    reseeded = make_config("tiny", dict(output_dir=str(tmp_path), seed=1))
    assert recognizer_path(reseeded, build_dataset(reseeded, "train"), spec) != path


def test_cli_trains_saves_and_reports_test_wer(tmp_path, capsys):
    code = main(["--preset", "tiny", "--output_dir", str(tmp_path), "--rec_steps", "3", "--num_threads", "1"])
    text = capsys.readouterr().out
    assert code == 0 and "trained and saved to" in text and "gloss WER" in text and "(8 clips" in text
    saved = [n for n in os.listdir(tmp_path / ".text2sign_cache") if n.startswith("recognizer_")]
    assert len(saved) == 1
    assert main(["--preset", "tiny", "--output_dir", str(tmp_path), "--rec_steps", "3"]) == 0
    assert "loaded from" in capsys.readouterr().out
    assert main(["--preset", "tiny", "--rec_steps", "many"]) == 2
    assert "error: --rec_steps expects an integer" in capsys.readouterr().err


def test_augmentation_smooths_within_each_clip_and_keeps_lost_points_lost():
    gen = torch.Generator().manual_seed(0)
    t, j = 6, skeleton.NUM_POINTS
    xy = torch.zeros(2, t, j, 2)
    xy[:, :, :, 0] = torch.arange(t, dtype=torch.float32)[None, :, None]  # x = frame index: a line in time
    visible = torch.ones(2, t, j, dtype=torch.bool)
    visible[:, :, 3] = False  # one point never seen
    lengths = torch.tensor([6, 4])  # clip 1: frames 4-5 are padding
    xy[1, 4:] = 0.0
    spec = RecognizerSpec(augment_smooth_max_frames=3, augment_jitter=0.0)
    widths = []
    for _ in range(8):  # widths 1 or 3 drawn per clip: a centred average of a line is the line inside it
        out = augment_clips(xy, visible, lengths, spec, gen)
        assert torch.allclose(out[0, 1:5, 0, 0], xy[0, 1:5, 0, 0])
        assert torch.allclose(out[1, 1:3, 0, 0], xy[1, 1:3, 0, 0])
        widths.append(float(out[1, 3, 0, 0]))  # last in-length frame: 3, or (2 + 3) / 2 without the padding
        assert torch.all(out[:, :, 3] == 0) and torch.all(out[1, 4:] == 0)
    assert set(widths) == {3.0, 2.5}  # both widths drawn; the padding frame never pulled the average
    jittered = augment_clips(xy, visible, lengths, RecognizerSpec(augment_smooth_max_frames=1, augment_jitter=0.1), gen)
    noise = (jittered - xy)[visible & (torch.arange(t)[None] < lengths[:, None])[..., None]]
    assert 0.05 < float(noise.std()) < 0.15
