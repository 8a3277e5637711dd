"""Contracts of the procedural signer (data/signer.py) and SyntheticSignDataset (data/synthetic.py)."""
import multiprocessing as mp

import numpy as np
import pytest
import torch

from data.signer import (GLOSSES, FILLERS, SYNONYMS, make_caption, parse_caption, reference_trajectory,
                         render_sentence)
from data.synthetic import SyntheticSignDataset, is_held_out, verify_splits


def test_vocabulary_size_and_disjoint_synonyms():
    assert len(GLOSSES) >= 24 and len(set(GLOSSES)) == len(GLOSSES)
    words = [w for g in GLOSSES for w in SYNONYMS[g]]
    assert len(words) == len(set(words)), "a caption word belongs to two glosses"
    assert not set(words) & set(FILLERS)
    assert all(len(SYNONYMS[g]) >= 2 for g in GLOSSES)


@pytest.mark.parametrize("num_frames,size_px,glosses", [(16, 32, ["HELLO", "EAT", "HOUSE"]),
                                                        (32, 64, ["CAR"]), (8, 16, ["WAIT", "LOVE"])])
def test_render_shapes_and_ranges(num_frames, size_px, glosses):
    out = render_sentence(glosses, num_frames, size_px, np.random.default_rng(0))
    assert out["video"].shape == (num_frames, size_px, size_px, 3) and out["video"].dtype == np.uint8
    assert out["hand_xy"].shape == (num_frames, 2, 2) and out["hand_xy"].dtype == np.float32
    assert ((out["hand_xy"] > 0) & (out["hand_xy"] < 1)).all()
    assert out["hand_visible"].shape == (num_frames, 2) and out["hand_visible"].dtype == bool
    spans = out["gloss_spans"]
    assert len(spans) == len(glosses) and spans[0][0] == 0 and spans[-1][1] == num_frames
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:])) and all(e > s for s, e in spans)
    assert out["video"].std(0).max() > 0, "nothing moves"


def test_render_is_deterministic_and_styles_vary():
    a = render_sentence(["FRIEND", "GO"], 16, 32, np.random.default_rng(5))
    b = render_sentence(["FRIEND", "GO"], 16, 32, np.random.default_rng(5))
    c = render_sentence(["FRIEND", "GO"], 16, 32, np.random.default_rng(6))
    assert np.array_equal(a["video"], b["video"]) and np.array_equal(a["hand_xy"], b["hand_xy"])
    assert not np.array_equal(a["video"], c["video"])


def test_every_gloss_moves_and_starts_at_rest():
    for gloss in GLOSSES:
        ref = reference_trajectory(gloss, 32)
        assert np.abs(np.diff(ref, axis=0)).max() > 0.01, gloss
        assert np.linalg.norm(ref[0] - ref[-1], axis=-1).max() < 0.02, gloss  # rest at both ends


def test_captions_use_synonyms_and_parse_back():
    rng = np.random.default_rng(0)
    raw_hits, words_used = 0, set()
    for _ in range(200):
        glosses = list(rng.choice(GLOSSES, rng.integers(1, 4), replace=False))
        caption = make_caption(glosses, rng)
        assert parse_caption(caption) == glosses, caption
        raw_hits += caption == " ".join(glosses)
        words_used |= set(caption.lower().strip(".!").replace(",", "").split())
    assert raw_hits == 0
    # several synonyms of the same gloss occur, so the text is not a lookup of the gloss string
    assert sum(len(set(SYNONYMS[g]) & words_used) >= 2 for g in GLOSSES) >= len(GLOSSES) // 2


def test_dataset_item_contract():
    ds = SyntheticSignDataset("train", 40, 16, 32, seed=3)
    item = ds[30]
    assert item["video"].shape == (3, 16, 32, 32) and item["video"].dtype == torch.float32
    assert item["video"].min() >= -1 and item["video"].max() <= 1
    assert item["hand_xy"].shape == (16, 2, 2) and item["hand_visible"].dtype == torch.bool
    assert item["index"] == 30 and item["glosses"] == ds.glosses_of(30)
    assert item["caption"] == ds.captions[30] and parse_caption(item["caption"]) == item["glosses"]
    assert len(ds.captions) == 40
    with pytest.raises(IndexError):
        ds[40]


def _item_in_subprocess(args):
    split, index = args
    return SyntheticSignDataset(split, 50, 8, 16, seed=11)[index]["video"].numpy()


def test_dataset_deterministic_across_order_and_processes():
    ds = SyntheticSignDataset("test", 50, 8, 16, seed=11)
    later = ds[7]["video"]
    _ = [ds[i] for i in (3, 1, 9)]
    again = SyntheticSignDataset("test", 50, 8, 16, seed=11)[7]["video"]
    assert torch.equal(later, again) and torch.equal(later, ds[7]["video"])
    with mp.get_context("fork").Pool(1) as pool:
        remote = pool.map(_item_in_subprocess, [("test", 7)])[0]
    assert np.array_equal(remote, later.numpy())
    other_seed = SyntheticSignDataset("test", 50, 8, 16, seed=12)[7]["video"]
    assert not torch.equal(other_seed, later)


def test_splits_hold_out_combinations():
    train = SyntheticSignDataset("train", 1000, 16, 32, seed=0)
    test = SyntheticSignDataset("test", 300, 16, 32, seed=0)
    val = SyntheticSignDataset("val", 300, 16, 32, seed=0)
    stats = verify_splits(train, test)
    assert stats["glosses_seen"] == len(GLOSSES)
    assert all(len(test.glosses_of(i)) >= 2 for i in range(len(test)))
    assert not any(is_held_out(val.glosses_of(i)) for i in range(len(val)))
    assert {len(train.glosses_of(i)) for i in range(len(train))} == {1, 2, 3}
    held = np.mean([is_held_out(list(rng_pair)) for rng_pair in
                    [(a, b) for a in GLOSSES for b in GLOSSES if a != b]])
    assert 0.04 < held < 0.2
    # val is not a copy of train: different sample streams
    assert sum(train.captions[i] == val.captions[i] for i in range(100, 300)) < 10
