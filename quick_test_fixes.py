"""Per-timestep noise-prediction check of a ViViT denoiser, with baselines that cannot be fooled.

    python quick_test_fixes.py                              # self-check: historical vs fixed (~1-2 min)
    python quick_test_fixes.py --experiment demo            # a trained run (EMA weights, val split)
    python quick_test_fixes.py --checkpoint PATH --raw --timesteps 0,10,25,49 --json out.json

Self-check (no model given): trains the fixed denoiser and the historical variant (residual_input=True,
the seed's `out = final_conv(x_up) + x`) the same short way on the built-in synthetic dataset and
prints both tables side by side. Exit code 0 when the fixed model passes and the historical one is
caught with the seed's signature; with a model: 0 when it passes, 1 otherwise; 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import torch

from checkpoint import CheckpointError
from config import make_config
from data import build_dataset
from data.text import Tokenizer
from diffusion.text2sign import Text2SignDiffusion
from evaluation.timesteps import (THRESHOLDS, add_pose_gain, add_text_gain, format_pose_gain, format_table,
                                  format_text_gain, thresholds_help, timestep_table, verdict)
from models import build_model

# The self-check's one config, shared by both variants (HISTORICAL adds the seed's pre-repair
# settings). eps prediction for both: the historical model predicted eps.
# (The project default x0 target would need x0 RMSE < 0.04 at t=0 to beat the zero baseline there,
# since eps error = √SNR · x0 error with SNR(0) ≈ 570: out of reach of a seconds-long CPU run.)
# 2-px patches: a token carries 12 pixel values through width 32, no bottleneck (field notes, item 11).
SELF_CHECK = dict(num_frames=4, frame_size_px=16, patch_size_px=2, prediction_type="eps",
                  num_train_samples=256, num_eval_samples=32, batch_size=16, lr=2e-3)
# Short on purpose: the residual variant learns to cancel x_t (out ≈ (1-c) x_t) within ~10 steps
# and then sits near the zero baseline at t=0; with more steps it also starts to denoise there and
# the seed's failure fades. At 35 steps the fixed model already removes >5% of the error at every t.
SELF_CHECK_STEPS = 35
# The seed before its repair: the input residual, timestep modulation at 0.1, no loss weighting.
# Weak timestep modulation is what kept the seed from learning when to cancel its residual; with
# it, this variant's low/high ratio is ~65x (27x with the fixed model's 0.5 and weighting). Its
# t=0 eps-MSE lands at 0.97-0.98 (skill ~+0.03), just under the zero baseline rather than the
# seed's 1.92: a pure identity scores 1 + E[x0^2] = 1.16 on this signer (0.92 was the seed's data).
HISTORICAL = dict(residual_input=True, temporal_modulation_weight=0.1, use_timestep_weighting=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, epilog=thresholds_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--experiment", help="run name under --output_dir (its latest checkpoint)")
    src.add_argument("--checkpoint", help="path to a checkpoint file")
    p.add_argument("--output_dir", default="experiments", help="parent folder of run folders")
    p.add_argument("--raw", action="store_true", help="evaluate the raw weights instead of the EMA")
    p.add_argument("--timesteps", default="all", help="'all' or a comma list, e.g. 0,10,25,49")
    p.add_argument("--num-clips", type=int, default=0, help="validation clips (0 = the whole val split)")
    p.add_argument("--seed", type=int, default=0, help="seed of the evaluation noise")
    p.add_argument("--steps", type=int, default=SELF_CHECK_STEPS, help="self-check: training steps per model (0: untrained)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: tiny ops gain nothing from more, and shared cores thrash)")
    p.add_argument("--json", help="write the tables, thresholds and verdicts to this file")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error(f"--steps {args.steps}: expected 0 (the untrained models) or more training steps")
    return args


def parse_timesteps(text: str, num_timesteps: int) -> list[int]:
    if text == "all":
        return list(range(num_timesteps))
    try:
        ts = sorted({int(s) for s in text.split(",") if s.strip()})
    except ValueError:
        ts = []
    if not ts or ts[0] < 0 or ts[-1] >= num_timesteps:
        print(f"error: --timesteps {text!r}: expected 'all' or integers in 0..{num_timesteps - 1} "
              "like 0,10,25,49", file=sys.stderr)
        raise SystemExit(2)
    return ts


def val_batch(cfg, tokenizer: Tokenizer, num_clips: int):
    """The fixed validation clips: the first `num_clips` of the val split (all if 0), their captions,
    and their hand positions (None where the data has no hand labels)."""
    val = build_dataset(cfg, "val")
    n = len(val) if num_clips <= 0 else min(num_clips, len(val))
    items = [val[i] for i in range(n)]
    tokens, mask = tokenizer.batch([it["caption"] for it in items], cfg.max_text_len_tokens)
    hand_xy = torch.stack([it["hand_xy"] for it in items]).float() if "hand_xy" in items[0] else None
    return torch.stack([it["video"] for it in items]).float(), tokens, mask, hand_xy


def train_briefly(cfg, vocab_size: int, videos, tokens, mask, steps: int, seed: int = 0):
    """`steps` AdamW steps (constant LR, raw weights: no EMA over a few dozen steps) on random batches
    of pre-rendered clips; the same init seed and the same draws for every variant."""
    torch.manual_seed(seed)
    model = build_model(cfg, vocab_size)
    diffusion = Text2SignDiffusion.from_config(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, betas=(0.9, cfg.adam_beta2), weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    loss = torch.tensor(float("nan"))  # --steps 0: the untrained model (historical: the identity)
    for _ in range(steps):
        idx = torch.randint(0, len(videos), (cfg.batch_size,), generator=gen)
        loss = diffusion.training_losses(model, videos[idx], tokens[idx], mask[idx], generator=gen)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip_norm)
        opt.step()
    return model.eval(), diffusion, loss.item()


def self_check(args) -> tuple[dict, int]:
    t_start = time.perf_counter()
    base = make_config("tiny", SELF_CHECK)
    train = build_dataset(base, "train")
    tokenizer = Tokenizer.from_captions(train.captions)
    videos = torch.stack([train[i]["video"] for i in range(len(train))]).float()
    tokens, mask = tokenizer.batch(train.captions, base.max_text_len_tokens)
    val_videos, val_tokens, val_mask, _ = val_batch(base, tokenizer, args.num_clips)
    timesteps = parse_timesteps(args.timesteps, base.num_timesteps)
    print(f"Self-check: tiny ViViT ({base.num_frames} frames x {base.frame_size_px} px, patch "
          f"{base.patch_size_px}, {base.prediction_type} prediction, {base.loss_weighting} weighting), "
          f"{args.steps} steps x {base.batch_size} clips each on {len(videos)} synthetic clips; "
          f"{len(val_videos)} val clips, noise seed {args.seed}", flush=True)
    tables, report = {}, {}
    variants = {"historical (residual_input)": True, "fixed": False}
    for name, residual in variants.items():
        cfg = make_config("tiny", dict(SELF_CHECK, **(HISTORICAL if residual else {})))
        t0 = time.perf_counter()
        model, diffusion, last_loss = train_briefly(cfg, len(tokenizer), videos, tokens, mask, args.steps)
        print(f"  trained {name}: {time.perf_counter() - t0:.1f} s, last loss {last_loss:.4f}", flush=True)
        tables[name] = timestep_table(model, diffusion, val_videos, val_tokens, val_mask, timesteps, seed=args.seed)
    print()
    print(format_table(tables))
    print()
    for name, rows in tables.items():
        v = verdict(rows, base.num_timesteps)
        lo, hi = rows[0], rows[-1]
        print(f"[{name}] low/high ratio: eps-MSE {lo['eps_mse']:.4f} at t={lo['t']} / {hi['eps_mse']:.4f} "
              f"at t={hi['t']} = {v.ratio:.4g}×")
        print("\n".join(v.lines))
        report[name] = dict(rows=rows, verdict=v.to_dict(), passed=v.passed, signature=v.signature,
                            residual_input=variants[name])
        print()
    fixed, hist = report["fixed"], report["historical (residual_input)"]
    exit_ok = fixed["passed"] and not fixed["signature"] and hist["signature"] and not hist["passed"]
    wall = time.perf_counter() - t_start
    print(f"Self-check {'PASSED' if exit_ok else 'FAILED'}: fixed model "
          f"{'passes' if fixed['passed'] else 'fails'}, historical model "
          f"{'shows' if hist['signature'] else 'does NOT show'} the seed's signature "
          f"({wall:.0f} s wall)")
    return dict(mode="self_check", config=base.to_dict(), steps=args.steps, wall_s=wall,
                models=report, passed=exit_ok), 0 if exit_ok else 1


def check_run(args) -> tuple[dict, int]:
    from pipeline import load_run

    t_start = time.perf_counter()
    run = load_run(experiment=args.experiment, checkpoint=args.checkpoint, output_dir=args.output_dir,
                   use_ema=not args.raw)
    cfg = run.cfg
    timesteps = parse_timesteps(args.timesteps, cfg.num_timesteps)
    videos, tokens, mask, hand_xy = val_batch(cfg, run.tokenizer, args.num_clips)
    weights = "raw" if args.raw else "EMA"
    name = f"{cfg.experiment_name} step {run.step} ({weights}, {cfg.prediction_type})"
    print(f"Checkpoint {run.path}: step {run.step}, {weights} weights, {cfg.prediction_type} prediction, "
          f"residual_input={cfg.residual_input}; {len(videos)} val clips, noise seed {args.seed}", flush=True)
    rows = timestep_table(run.model, run.diffusion, videos, tokens, mask, timesteps, seed=args.seed)
    print()
    print(format_table({name: rows}))
    # Another clip's caption for every clip (a rotation of the batch): does the text matter, and where?
    shuffled = timestep_table(run.model, run.diffusion, videos, tokens.roll(1, 0), mask.roll(1, 0),
                              timesteps, seed=args.seed)
    add_text_gain(rows, shuffled)
    print("\nText conditioning: x0-MSE with another clip's caption / with the clip's own "
          "(1.00× = the text is ignored)")
    print(format_text_gain(rows))
    attribution = []
    if cfg.pose_cond and hand_xy is not None:
        # The same x_t with the true hand positions in the heatmaps (as in training): how much of the
        # error is the pose stage's placing of the hands, how much the denoiser's own.
        true_pose = timestep_table(run.model, run.diffusion, videos, tokens, mask, timesteps, seed=args.seed,
                                   hand_xy=hand_xy)
        attribution = add_pose_gain(rows, true_pose)
        print("\nPose stage: x0-MSE with its hand heatmaps (as sampled) / with the true hand positions "
              "(as trained)")
        print(format_pose_gain(rows))
    print()
    v = verdict(rows, cfg.num_timesteps)
    lo, hi = rows[0], rows[-1]
    print(f"Low/high ratio: eps-MSE {lo['eps_mse']:.4f} at t={lo['t']} / {hi['eps_mse']:.4f} at t={hi['t']} "
          f"= {v.ratio:.4g}×")
    print("\n".join(v.lines + attribution))
    wall = time.perf_counter() - t_start
    print(f"({wall:.1f} s wall)")
    report = {name: dict(rows=rows, verdict=v.to_dict(), passed=v.passed, signature=v.signature,
                         residual_input=cfg.residual_input, pose_attribution=attribution)}
    return dict(mode="checkpoint", checkpoint=str(run.path), step=run.step, use_ema=not args.raw,
                config=cfg.to_dict(), wall_s=wall, models=report, passed=v.passed), 0 if v.passed else 1


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    try:
        result, code = check_run(args) if (args.experiment or args.checkpoint) else self_check(args)
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)
    if args.json:
        result["thresholds"] = asdict(THRESHOLDS)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
        print(f"wrote {args.json}")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
