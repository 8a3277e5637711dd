"""Model-level sign-fidelity evaluation: sample under conditioning controls, score every video.

Conditions (each scored against the intended clip's ground truth):
- `intended`: the clip's own caption;
- `no_text`: the learned null text (what the model makes with no conditioning);
- `shuffled`: another clip's caption (a model that ignores text scores like `intended` here);
- `ground_truth`: the reference renderings themselves, the ceiling of every metric;
- `other_rendering` (synthetic only): the same glosses rendered again with another style and
  timing jitter, which the text does not fix: what a perfect model could score (DTW error, motion
  ratio), the realistic ceiling beside the trivial one.
Plus `prompt_ranking_top1`: for each clip, the conditional denoising loss under its true caption
vs 3 other captions (same timesteps and noise for all four), top-1 accuracy; chance is 25%.
Real datasets have no tracker: they get PSNR/SSIM against the reference and prompt ranking (a
release-layout export of the synthetic signer is scored with the tracker: scorer `synthetic`).
For a model whose pose stage predicts the skeleton, `pose` holds the field's pose metrics of each
condition's keypoints and, given a trained recogniser, its WER (evaluation/pose_report.py).
Every condition, synthetic or real, also gets `flicker_ratio` (per clip, against its reference) and
`fvd`: the in-domain video distance (evaluation/video_distance.py) of the condition's clips to a
disjoint pool of the split's other ground-truth clips; its floor is the `ground_truth` column (the
evaluated clips' own renderings are another draw of that distribution).

A clip whose caption has no word the model read in training (data.text.usable_prompt: its first
max_text_len_tokens tokens are all unknown) cannot be sampled from its text: it is skipped and
counted (`meta.skipped_clips`, `meta.skipped_captions`), and every condition is scored on the rest.
A split where no clip is left is a DatasetError.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable

import torch

from checkpoint import write_text_atomic
from config import Config
from data import build_dataset, skeleton
from data.real.common import DatasetError
from data.signer import parse_caption, sentence_trajectory
from data.text import Tokenizer, usable_prompt
from diffusion import GaussianDiffusion, build_objective
from diffusion.gaussian import encode_condition, q_sample
from evaluation.metrics import (NOISE_TOLERANCE, back_translate, dtw_hand_error, flicker_ratio, gloss_accuracy, gloss_wer,
                                motion_ratio, noise_level, psnr, ssim)
from evaluation.pose_report import format_pose_table, gloss_labels, pose_report
from evaluation.tracking import track_hands
from evaluation.video_distance import clip_features, dataset_features, kernel_video_distance, load_or_train_encoder
from pipeline import Clips, first_clips, generate
from training import choose_precision

CONDITIONS = ("intended", "no_text", "shuffled", "ground_truth", "other_rendering")
RANKING_TIMESTEPS = (5, 15, 25, 35, 45)  # spread over the schedule; scaled to num_timesteps
RANKING_DISTRACTORS = 3
# Ground-truth clips of the split (beyond the evaluated ones) that every condition's fvd is measured
# against. Rendering and encoding them is cheap next to sampling, and a large pool leaves the
# figure's spread to the generated side (docs/experiments.md, the fvd stability row).
FVD_REFERENCE_CLIPS = 1024


class _NoText(torch.nn.Module):
    """The model with its text always replaced by the learned null text."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x, t, tokens, token_mask, drop_text=None, condition=None):
        if condition is not None:
            return self.model(x, t, tokens, token_mask, condition=condition)
        return self.model(x, t, tokens, token_mask, torch.ones(x.shape[0], dtype=torch.bool, device=x.device))

    def encode_condition(self, tokens, token_mask, drop_text=None):
        return self.model.encode_condition(tokens, token_mask, torch.ones(tokens.shape[0], dtype=torch.bool,
                                                                          device=tokens.device))


def score_synthetic(videos: torch.Tensor, refs: list[dict[str, Any]]) -> dict[str, float]:
    """Mean sign-fidelity metrics of generated `videos` (B,3,T,H,W) against reference samples."""
    totals = dict(gloss_accuracy=0.0, gloss_wer=0.0, dtw_hand_error=0.0, noise_level=0.0, motion_ratio=0.0,
                  flicker_ratio=0.0)
    for video, ref in zip(videos, refs):
        xy, found = track_hands(video)
        pred = back_translate(xy, found)
        totals["gloss_accuracy"] += gloss_accuracy(pred, ref["glosses"])
        totals["gloss_wer"] += gloss_wer(pred, ref["glosses"])
        totals["dtw_hand_error"] += dtw_hand_error(xy, ref["hand_xy"].numpy(), found, ref["hand_visible"].numpy())
        totals["noise_level"] += noise_level(video, ref["video"])
        totals["motion_ratio"] += motion_ratio(xy, ref["hand_xy"].numpy(), found, ref["hand_visible"].numpy())
        totals["flicker_ratio"] += flicker_ratio(video, ref["video"])
    return {k: v / len(refs) for k, v in totals.items()}


def canonical_dtw_floor(refs: list[dict[str, Any]], num_frames: int) -> float:
    """Mean DTW hand error of each sentence's canonical track (centred body, no style, speed or
    amplitude jitter: the motion the text alone implies) against the reference track. A model that
    sees only the text cannot do much better: the style's body offset and scale and the timing
    jitter are not in the text. (`other_rendering` scores a random rendering, about √2 of this.)"""
    return sum(dtw_hand_error(sentence_trajectory(r["glosses"], num_frames)[0], r["hand_xy"].numpy(),
                              None, r["hand_visible"].numpy()) for r in refs) / len(refs)


def score_real(videos: torch.Tensor, refs: list[dict[str, Any]]) -> dict[str, float]:
    return dict(psnr=sum(psnr(v, r["video"]) for v, r in zip(videos, refs)) / len(refs),
                ssim=sum(ssim(v, r["video"]) for v, r in zip(videos, refs)) / len(refs),
                flicker_ratio=sum(flicker_ratio(v, r["video"]) for v, r in zip(videos, refs)) / len(refs))


def fvd_reference_pool(cfg: Config, split: str, num_evaluated: int,
                       num_clips: int = FVD_REFERENCE_CLIPS) -> tuple[Any, list[int]]:
    """(dataset, indices): ground-truth clips num_evaluated … num_evaluated + M - 1 of `split`, disjoint
    from the evaluated ones (M = num_clips, or what a real split has left; may be 0)."""
    if cfg.dataset == "synthetic":
        from data.synthetic import SyntheticSignDataset

        # Sample i is a pure function of (seed, split, i): a longer split has the same first clips.
        dataset = SyntheticSignDataset(split, num_evaluated + num_clips, cfg.num_frames, cfg.frame_size_px, cfg.seed)
    else:
        dataset = build_dataset(cfg, split)
    return dataset, list(range(num_evaluated, min(len(dataset), num_evaluated + num_clips)))


def video_distances(videos: dict[str, torch.Tensor], cfg: Config, split: str,
                    log: Callable[[str], None] = print, num_read: int | None = None) -> tuple[dict[str, float], int]:
    """({condition: fvd of its clips (N, 3, T, H, W) to the split's reference pool}, pool size); NaN
    for every condition when the split has fewer than 2 clips beyond the evaluated ones. `num_read`:
    the clips the evaluation read (skipped ones included), where the pool starts; default N."""
    started = time.time()
    dataset, pool = fvd_reference_pool(cfg, split, num_read or len(next(iter(videos.values()))))
    if len(pool) < 2:
        log(f"fvd: the {split} split has {len(pool)} clips beyond the evaluated ones; it needs 2 or more "
            "(evaluate fewer clips with --num_clips): reporting NaN")
        return {cond: float("nan") for cond in videos}, len(pool)
    if len(next(iter(videos.values()))) < 2:  # e.g. all but one clip skipped (unreadable captions)
        log("fvd: needs 2 or more evaluated clips: reporting NaN")
        return {cond: float("nan") for cond in videos}, len(pool)
    encoder = load_or_train_encoder(cfg, log)
    ref_feats = dataset_features(encoder, dataset, pool)
    fvd = {cond: kernel_video_distance(clip_features(encoder, v), ref_feats) for cond, v in videos.items()}
    log(f"fvd: {len(videos)} conditions against {len(pool)} reference clips in {time.time() - started:.1f} s")
    return fvd, len(pool)


@torch.no_grad()
def prompt_ranking(model: torch.nn.Module, diffusion: GaussianDiffusion, tokenizer: Tokenizer,
                   refs: list[dict[str, Any]], cfg: Config, seed: int = 0) -> float:
    """Top-1 accuracy of the true caption among 1 + 3 candidates by conditional denoising loss
    (target-space MSE times the training loss weight of each timestep)."""
    device = next(model.parameters()).device
    captions = [r["caption"] for r in refs]
    objective = build_objective(cfg, diffusion)
    gen = torch.Generator().manual_seed(seed)
    steps = sorted({min(diffusion.num_timesteps - 1, round(s * diffusion.num_timesteps / 50))
                    for s in RANKING_TIMESTEPS})
    correct = 0
    for i, ref in enumerate(refs):
        # Distractors: the next clips whose caption differs (deterministic, no RNG involved).
        others = [c for c in captions[i + 1:] + captions[:i] if c != ref["caption"]][:RANKING_DISTRACTORS]
        candidates = [ref["caption"]] + others
        k = len(candidates)
        tokens, mask = (v.to(device) for v in tokenizer.batch(candidates, cfg.max_text_len_tokens))
        condition = encode_condition(model, tokens, mask)  # the candidates' text, once for every timestep
        extra = {} if condition is None else dict(condition=condition)
        x0 = ref["video"][None].to(device)
        losses = torch.zeros(k)
        for t_int in steps:
            noise = torch.randn(x0.shape, generator=gen).to(device)
            t = torch.full((k,), t_int, device=device)
            x_t = q_sample(diffusion.sched, x0, t[:1], noise).expand(k, *x0.shape[1:])
            out = model(diffusion.model_input(x_t, t), t, tokens, mask, **extra)
            target = diffusion.target(x0, t[:1], noise)
            weight = objective.weights(t[:1]).float().cpu()  # the timestep's training weight
            losses += weight * ((out.float() - target) ** 2).mean(dim=(1, 2, 3, 4)).cpu()
        # Strictly lowest: a text-blind model ties every candidate and must not score.
        correct += int(bool((losses[0] < losses[1:]).all()))
    return correct / len(refs)


@torch.no_grad()
def pose_error_px(model: torch.nn.Module, tokenizer: Tokenizer, refs: list[dict[str, Any]], cfg: Config) -> float:
    """RMS error (pixels, per coordinate) of the pose stage's keypoints against the references',
    over the points visible in the reference."""
    device = next(model.parameters()).device
    tokens, mask = tokenizer.batch([r["caption"] for r in refs], cfg.max_text_len_tokens)
    pred = model.predict_pose(tokens.to(device), mask.to(device))[0].float().cpu()
    points = model.pose_points
    truth = torch.stack([r["pose_xy"] for r in refs])[:, :, points]
    visible = torch.stack([r["pose_visible"] for r in refs])[:, :, points].float()
    mse = (((pred - truth) ** 2).sum(-1) * visible).sum() / (2 * visible.sum().clamp(min=1))
    return float(mse.sqrt()) * cfg.frame_size_px


def synthetic_refs(refs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """References of a release-layout export of the synthetic signer (data/export_synthetic.py) in
    the form the exact back-translator scores: glosses parsed from the captions, the gloves' tracks
    from the keypoints' hand centres."""
    hands = list(skeleton.HANDS)
    return [dict(r, glosses=parse_caption(r["caption"]), hand_xy=r["pose_xy"][:, hands],
                 hand_visible=r["pose_visible"][:, hands]) for r in refs]


def meaningful_metrics(synthetic_scorer: bool, pose: bool, recognizer: bool) -> str:
    """One line saying which figures mean something for this data."""
    if synthetic_scorer:
        text = ("synthetic signer: the exact back-translator's gloss accuracy/WER, DTW hand error and motion "
                "ratio are exact; noise level, flicker and fvd judge the pixels; prompt ranking the text")
    else:
        text = ("real data: no exact back-translator; prompt ranking (text), fvd and flicker (what a viewer "
                "sees) carry the most; PSNR/SSIM compare against one reference rendering the text does not "
                "fix, so they barely separate systems")
    if pose:
        text += "; pose metrics: DTW-MJE barely separates systems, total distance exposes under-articulation"
    if recognizer:
        text += "; the learned recogniser's WER reads the poses as the field's back-translation does"
    return text


def evaluate_model(model: torch.nn.Module, diffusion: GaussianDiffusion, tokenizer: Tokenizer, cfg: Config,
                   split: str = "test", num_clips: int | None = None, seed: int = 0,
                   log: Callable[[str], None] = print, start_t: int | None = None,
                   scorer: str = "auto", recognizer=None) -> dict[str, Any]:
    """Sample every condition for the first `num_clips` clips of `split` and score them.

    start_t: start each sample from its reference clip noised to that step (SDEdit) instead of from
    pure noise: the fidelity left when the layout above start_t is given. scorer: `synthetic` scores
    with the exact back-translator (the synthetic dataset, or a release-layout export of it), `real`
    with PSNR/SSIM, `auto` by the dataset. recognizer: a learned pose -> gloss back-translator
    (evaluation/recognizer.py) whose WER of each condition's keypoints joins the pose section."""
    clips, skipped = readable_clips(first_clips(cfg, split, num_clips or cfg.num_eval_samples), tokenizer,
                                    cfg.max_text_len_tokens, split)
    if skipped:
        log(f"skipping {len(skipped)} {split} clips whose caption has no word of the training vocabulary "
            f"(e.g. {skipped[0]!r}); scoring the other {len(clips.items)}")
    refs, captions, n = clips.items, clips.captions, len(clips.items)
    shuffled = captions[1:] + captions[:1]
    synthetic = cfg.dataset == "synthetic"
    synthetic_scorer = synthetic if scorer == "auto" else scorer == "synthetic"
    if synthetic_scorer and not synthetic:
        refs = synthetic_refs(refs)
    score = score_synthetic if synthetic_scorer else score_real
    model.eval()
    results: dict[str, Any] = {}
    log(f"evaluating {n} {split} clips: sampling intended / no_text / shuffled"
        + ("" if start_t is None else f" from the references noised to t={start_t}") + " ...")
    init = None if start_t is None else clips.videos
    start = dict(seed=seed, init=init, start_t=start_t)
    videos = dict(intended=generate(model, diffusion, tokenizer, captions, cfg, **start),
                  no_text=generate(_NoText(model), diffusion, tokenizer, captions, cfg, guidance_scale=1.0, **start),
                  shuffled=generate(model, diffusion, tokenizer, shuffled, cfg, **start),
                  ground_truth=clips.videos)
    if synthetic:
        dataset = build_dataset(cfg, split)
        videos["other_rendering"] = torch.stack([dataset.rerender(r["index"]) for r in clips.items])
    fvd, pool_size = video_distances(videos, cfg, split, log, num_read=n + len(skipped))
    for cond, video in videos.items():
        results[cond] = dict(score(video, refs), fvd=fvd[cond])
    # Under the same precision as sampling (generate): bf16 ranked every clip as fp32 did (round 6).
    device = next(model.parameters()).device
    with choose_precision(cfg, device).autocast(device):
        results["prompt_ranking_top1"] = prompt_ranking(model, diffusion, tokenizer, refs, cfg, seed)
    if synthetic:
        results["canonical_dtw_floor"] = canonical_dtw_floor(refs, cfg.num_frames)
    has_pose = getattr(model, "pose", None) is not None and clips.pose_xy is not None
    if has_pose:
        results["pose_rmse_px"] = pose_error_px(model, tokenizer, refs, cfg)
        glosses = gloss_labels(refs, synthetic_scorer)
        other = [dataset.rerender_item(r["index"]) for r in clips.items] if synthetic else None
        results["pose"] = pose_report(model, tokenizer, refs, cfg, captions, shuffled, other,
                                      recognizer if glosses is not None else None, glosses)
    results["meaningful"] = meaningful_metrics(synthetic_scorer, has_pose,
                                               has_pose and recognizer is not None and "recognizer_wer" in results["pose"]["intended"])
    results["meta"] = dict(split=split, num_clips=n, sampler=cfg.sampler, sampling_steps=cfg.sampling_steps,
                           ddim_eta=cfg.ddim_eta, guidance_scale=cfg.guidance_scale, seed=seed,
                           start_t=start_t, fvd_reference_clips=pool_size,
                           scorer="synthetic" if synthetic_scorer else "real",
                           recognizer=getattr(recognizer, "path", None), skipped_clips=len(skipped),
                           skipped_captions=skipped[:20])
    return results


def readable_clips(clips: Clips, tokenizer: Tokenizer, max_len: int, split: str) -> tuple[Clips, list[str]]:
    """The clips whose caption the model can read (usable_prompt), and the captions of the others."""
    keep = [i for i, c in enumerate(clips.captions) if usable_prompt(tokenizer, c, max_len)]
    skipped = [c for i, c in enumerate(clips.captions) if i not in set(keep)]
    if not keep:
        raise DatasetError(f"{split} split: none of its {len(clips.captions)} clips has a caption with a word of "
                           f"the training vocabulary (e.g. {clips.captions[0]!r}); nothing to evaluate")
    if not skipped:
        return clips, []
    pick = torch.tensor(keep)
    return Clips(items=[clips.items[i] for i in keep], videos=clips.videos[pick],
                 captions=[clips.captions[i] for i in keep],
                 pose_xy=None if clips.pose_xy is None else clips.pose_xy[pick],
                 pose_visible=None if clips.pose_visible is None else clips.pose_visible[pick]), skipped


def format_table(results: dict[str, Any]) -> str:
    """The results as a text table: one row per metric, one column per condition."""
    metrics = [k for k in results["intended"]]
    conditions = [c for c in CONDITIONS if c in results]
    lines = [f"{'metric':<16}" + "".join(f"{c:>16}" for c in conditions)]
    for m in metrics:
        lines.append(f"{m:<16}" + "".join(f"{results[c][m]:>16.4f}" for c in conditions))
    lines.append(f"{'prompt_rank_top1':<16}{results['prompt_ranking_top1']:>14.4f}   (chance 0.25; "
                 "ground-truth ceiling 1.0)")
    if "noise_level" in results["intended"]:
        lines.append(f"{'noise tolerance':<16}{NOISE_TOLERANCE:>16.4f}   (one 8-bit level; the long-run "
                     f"target is noise_level <= {2 * NOISE_TOLERANCE:.4f})")
    if "fvd" in results["intended"]:
        lines.append(f"{'fvd floor':<16}{results['ground_truth']['fvd']:>16.4f}   (ground_truth column: "
                     f"another draw of the split's ground truth against the same {results['meta']['fvd_reference_clips']} "
                     "reference clips; unbiased, so ~0 of either sign at the floor)")
        lines.append(f"{'flicker floor':<16}{1.0:>16.4f}   (flicker_ratio of the ground truth: as steady as the data)")
    if "canonical_dtw_floor" in results:
        lines.append(f"{'dtw floor':<16}{results['canonical_dtw_floor']:>16.4f}   (DTW hand error of the "
                     "canonical track the text implies: centred body, no style or timing jitter)")
    if "pose_rmse_px" in results:
        lines.append(f"{'pose_rmse_px':<16}{results['pose_rmse_px']:>16.4f}   (pose stage's keypoints "
                     "vs the reference's, RMS per coordinate; the text fixes neither the signer's timing "
                     "nor their size, so the data's own jitter bounds it: docs/experiments.md, row 28)")
    if "pose" in results:
        lines.append("")
        lines.append(format_pose_table(results["pose"]))
    lines.append(f"meaningful here: {results['meaningful']}")
    return "\n".join(lines)


def evaluate_run(model, diffusion, tokenizer, cfg: Config, split: str = "test",
                 json_path: str | os.PathLike | None = None, log: Callable[[str], None] = print,
                 num_clips: int | None = None, seed: int = 0, start_t: int | None = None,
                 scorer: str = "auto", recognizer=None) -> dict[str, Any]:
    """evaluate_model + print the table + write JSON (atomically)."""
    results = evaluate_model(model, diffusion, tokenizer, cfg, split, num_clips, seed, log, start_t, scorer,
                             recognizer)
    log(format_table(results))
    if json_path:
        write_text_atomic(json_path, json.dumps(results, indent=2))
        log(f"wrote {json_path}")
    return results
