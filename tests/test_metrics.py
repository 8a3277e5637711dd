"""Contracts of hand tracking, back-translation and the video metrics (evaluation/)."""
import math

import numpy as np
import pytest
import torch

from data.signer import GLOSSES, render_sentence
from evaluation.metrics import (dtw_hand_error, gloss_accuracy, gloss_wer, motion_ratio, noise_level, psnr,
                                ssim)
from evaluation.tracking import back_translate, track_hands


def _random_sentences(num, num_frames, size_px, seed):
    rng = np.random.default_rng(seed)
    for _ in range(num):
        glosses = [str(g) for g in rng.choice(GLOSSES, rng.integers(1, 4), replace=False)]
        yield glosses, render_sentence(glosses, num_frames, size_px, rng)


def _to_float_clip(video_uint8):
    return torch.from_numpy(video_uint8).permute(3, 0, 1, 2).float() / 127.5 - 1


def _noisy(video_uint8, sigma, seed=0):
    noise = np.random.default_rng(seed).normal(0, sigma * 255, video_uint8.shape)
    return np.clip(video_uint8 + noise, 0, 255).round().astype(np.uint8)


@pytest.mark.parametrize("num_frames,size_px,num,min_acc", [(16, 32, 200, 0.97), (32, 64, 24, 0.97)])
def test_back_translation_of_ground_truth(num_frames, size_px, num, min_acc):
    correct = total = 0
    for glosses, out in _random_sentences(num, num_frames, size_px, seed=num_frames):
        xy, found = track_hands(out["video"])
        pred = back_translate(xy, found)
        correct += gloss_accuracy(pred, glosses) * len(glosses)
        total += len(glosses)
    assert correct / total >= min_acc


def test_back_translation_survives_moderate_noise():
    correct = total = 0
    for glosses, out in _random_sentences(60, 16, 32, seed=7):
        xy, found = track_hands(_noisy(out["video"], 0.1))
        correct += gloss_accuracy(back_translate(xy, found), glosses) * len(glosses)
        total += len(glosses)
    assert correct / total >= 0.95


def test_tracking_matches_rendered_hand_positions():
    errors_px, found_visible = [], []
    for _, out in _random_sentences(30, 16, 32, seed=1):
        for video in (out["video"], _to_float_clip(out["video"])):  # both accepted formats
            xy, found = track_hands(video)
            found_visible.append(found[out["hand_visible"]])
            ok = found & out["hand_visible"]
            errors_px.append(np.linalg.norm(xy - out["hand_xy"], axis=-1)[ok] * 32)
    assert np.concatenate(found_visible).mean() > 0.98
    assert np.concatenate(errors_px).mean() < 0.5


def test_tracking_reports_missing_hands():
    out = render_sentence(["HELLO"], 8, 32, np.random.default_rng(0))
    blank = np.broadcast_to(out["video"][:, :1, :1], out["video"].shape).copy()  # background colour only
    xy, found = track_hands(blank)
    assert not found.any() and np.isnan(xy).all()


def test_gloss_accuracy_and_wer_hand_made():
    ref = ["HELLO", "EAT", "HOUSE"]
    assert gloss_accuracy(ref, ref) == 1.0 and gloss_wer(ref, ref) == 0.0
    assert gloss_accuracy(["HELLO", "DRINK", "HOUSE"], ref) == pytest.approx(2 / 3)
    assert gloss_wer(["HELLO", "DRINK", "HOUSE"], ref) == pytest.approx(1 / 3)
    assert gloss_accuracy(["EAT", "HOUSE"], ref) == 0.0  # shifted by a deletion: positions all wrong
    assert gloss_wer(["EAT", "HOUSE"], ref) == pytest.approx(1 / 3)
    assert gloss_wer([], ref) == 1.0 and gloss_accuracy([], ref) == 0.0
    assert gloss_wer(["A", "B", "C", "D"], ["X"]) == 4.0


def test_dtw_hand_error():
    out = render_sentence(["GO", "RAIN"], 16, 32, np.random.default_rng(0))
    xy = out["hand_xy"]
    assert dtw_hand_error(xy, xy) == 0.0
    # a time shift is absorbed by the alignment, a spatial shift is not
    delayed = np.concatenate([xy[:1], xy[:-1]])
    frame_by_frame = np.linalg.norm(delayed - xy, axis=-1).mean()
    assert dtw_hand_error(delayed, xy) < min(0.03, 0.75 * frame_by_frame)
    shifted = xy + np.float32([0.05, 0.0])
    assert dtw_hand_error(shifted, xy) == pytest.approx(0.05, abs=1e-4)
    missing = np.ones((16, 2), bool)
    missing[5:8, 0] = False
    assert 0 < dtw_hand_error(xy, xy, gen_found=missing) < 0.03  # filled by interpolation, not NaN


def test_noise_level_zero_on_ground_truth_and_monotone():
    out = render_sentence(["CAR", "HELLO"], 16, 32, np.random.default_rng(2))
    video = out["video"]
    assert noise_level(video, video) == 0.0
    assert noise_level(_to_float_clip(video), video) == pytest.approx(0.0, abs=1e-6)
    assert noise_level(video, video, against="ref") == 0.0
    levels = [noise_level(_noisy(video, s), video) for s in (0.02, 0.05, 0.1, 0.2)]
    assert levels[0] > 0 and all(a < b for a, b in zip(levels, levels[1:]))
    assert noise_level(_noisy(video, 0.1), video, against="ref") > 0


def test_motion_ratio():
    out = render_sentence(["HOUSE", "YES"], 16, 32, np.random.default_rng(3))
    xy, found = track_hands(out["video"])
    assert motion_ratio(xy, out["hand_xy"], found) == pytest.approx(1.0, abs=0.05)
    still = np.repeat(out["video"][:1], 16, axis=0)
    sxy, sfound = track_hands(still)
    assert motion_ratio(sxy, out["hand_xy"], sfound) < 0.01


def test_psnr_ssim():
    out = render_sentence(["WORK"], 8, 32, np.random.default_rng(4))
    clip = _to_float_clip(out["video"])
    assert math.isinf(psnr(clip, clip)) and ssim(clip, clip) == pytest.approx(1.0, abs=1e-9)
    noisy = (clip + 0.1 * torch.randn_like(clip)).clamp(-1, 1)
    noisier = (clip + 0.3 * torch.randn_like(clip)).clamp(-1, 1)
    assert 15 < psnr(noisy, clip) < 40 and psnr(noisier, clip) < psnr(noisy, clip)
    assert ssim(noisier, clip) < ssim(noisy, clip) < 1.0
    assert psnr(clip[None].repeat(2, 1, 1, 1, 1), clip[None].repeat(2, 1, 1, 1, 1)) == math.inf
