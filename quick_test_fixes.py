"""Per-timestep noise-prediction check of a ViViT denoiser, with baselines that cannot be fooled.

    python quick_test_fixes.py                              # self-check: historical vs fixed (~1-2 min)
    python quick_test_fixes.py --experiment demo            # a trained run (EMA weights, val split)
    python quick_test_fixes.py --checkpoint PATH --raw --timesteps 0,10,25,49 --json out.json

Self-check (no model given): trains the fixed denoiser and the historical variant (residual_input=True,
the historical `out = final_conv(x_up) + x`) the same short way on the built-in synthetic dataset and
prints both tables side by side. Exit code 0 when the fixed model passes and the historical one is
caught with its historical signature; with a model: 0 when it passes, 1 otherwise; 2 on bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict

import cli  # stdlib only, so it comes first: see cli.quiet_interrupts

cli.quiet_interrupts(__name__)
import torch

from checkpoint import CheckpointError
from config import make_config
from data import build_dataset, make_train_loader
from data.text import Tokenizer, build_tokenizer
from diffusion import build_diffusion, build_objective
from evaluation.timesteps import (THRESHOLDS, add_pose_gain, add_text_gain, format_pose_gain, format_table,
                                  format_text_gain, thresholds_help, timestep_table, verdict)
from models import build_model
from pipeline import add_run_arguments, first_clips
from training import Trainer, choose_precision

# The self-check's one config, shared by both variants (HISTORICAL adds the historical model's
# pre-repair settings): eps prediction for both, as the historical model had, with its clamped-SNR
# weighting, one-frame tokens, no per-frame text decoder and no pose stage. (An x0 target would need
# an x0 RMSE that a seconds-long CPU run cannot reach to beat the zero baseline at t = 0: eps error =
# √SNR · x0 error.) 2-px patches: a token carries 12 pixel values through width 32, no bottleneck
# (field notes, item 11), so neither needs the recipe's full-resolution refine path. No
# temporal-difference term either: the historical model had none, and on an eps target it charges the
# frame-to-frame change of the noise estimate itself (with it, 35 steps leave the fixed model below the
# zero baseline at t = 0; docs/experiments.md, row 62 (the demo)).
SELF_CHECK = dict(num_frames=4, frame_size_px=16, patch_size_px=2, prediction_type="eps",
                  loss_weighting="snr_clamp", timestep_sampling_power=0.0, temporal_diff_loss_weight=0.0,
                  tubelet_frames=1,
                  frame_cond_depth=0, pose_cond=False, refine_channels=0, pixel_temporal_blend=False,
                  cpu_streams=1, num_train_samples=256,
                  num_eval_samples=32, batch_size=16, lr=2e-3, warmup_steps=1, min_lr_ratio=1.0,
                  weight_decay=0.0)
# Short on purpose: the residual variant learns to cancel x_t (out ≈ (1-c) x_t) within a few steps
# and then sits near the zero baseline at t=0; with more steps it also starts to denoise there and
# the historical failure fades (docs/diagnostics.md shows the t = 0 error against the step count).
SELF_CHECK_STEPS = 35
# The historical model before its repair: the input residual, timestep modulation at 0.1, no loss
# weighting. Weak timestep modulation is what kept it from learning when to cancel its residual.
HISTORICAL = dict(residual_input=True, temporal_modulation_weight=0.1, use_timestep_weighting=False)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.ArgumentParser(description=__doc__, epilog=thresholds_help(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p)
    p.add_argument("--timesteps", default="all", help="'all' or a comma list, e.g. 0,10,25,49")
    p.add_argument("--num_clips", type=int, default=0, help="validation clips (0 = the whole val split)")
    p.add_argument("--steps", type=int, default=SELF_CHECK_STEPS, help="self-check: training steps per model (0: untrained)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1: tiny ops gain nothing from more, and shared cores thrash)")
    args = p.parse_args(argv)
    if args.steps < 0:
        p.error(f"--steps {args.steps}: expected 0 (the untrained models) or more training steps")
    if args.num_clips < 0:
        p.error(f"--num_clips {args.num_clips}: expected 0 (the whole val split) or more clips")
    if args.threads < 0:
        p.error(f"--threads {args.threads}: expected 0 (1 thread) or more")
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


def train_briefly(cfg, tokenizer: Tokenizer, steps: int):
    """`steps` training steps exactly as main.py takes them (training.Trainer: AdamW with its parameter
    groups, clipping, EMA) on the synthetic train split; the raw weights are evaluated (no EMA over a
    few dozen steps). The same init seed and the same draws for every variant."""
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, len(tokenizer))
    diffusion = build_diffusion(cfg)
    trainer = Trainer(cfg, model, build_objective(cfg, diffusion), torch.device("cpu"),
                      choose_precision(cfg, torch.device("cpu")))
    batches = iter(make_train_loader(cfg, build_dataset(cfg, "train"), tokenizer, start_step=0))
    loss = float("nan")  # --steps 0: the untrained model (historical: the identity)
    for step in range(steps):
        loss = trainer.step(batches, step).loss.item()
    trainer.close()
    return model.eval(), diffusion, loss


def self_check(args) -> tuple[dict, int]:
    t_start = time.perf_counter()
    base = make_config("tiny", dict(SELF_CHECK, max_steps=max(1, args.steps)))
    tokenizer = build_tokenizer(base, build_dataset(base, "train").captions)
    val = first_clips(base, "val", args.num_clips)
    val_tokens, val_mask = tokenizer.batch(val.captions, base.max_text_len_tokens)
    timesteps = parse_timesteps(args.timesteps, base.num_timesteps)
    print(f"Self-check: tiny ViViT ({base.num_frames} frames x {base.frame_size_px} px, patch "
          f"{base.patch_size_px}, {base.prediction_type} prediction, {base.loss_weighting} weighting), "
          f"{args.steps} steps x {base.batch_size} clips each on {base.num_train_samples} synthetic clips; "
          f"{len(val.videos)} val clips, noise seed {args.seed}", flush=True)
    tables, report = {}, {}
    variants = {"historical (residual_input)": True, "fixed": False}
    for name, residual in variants.items():
        cfg = make_config("tiny", dict(SELF_CHECK, max_steps=max(1, args.steps), **(HISTORICAL if residual else {})))
        t0 = time.perf_counter()
        model, diffusion, last_loss = train_briefly(cfg, tokenizer, args.steps)
        print(f"  trained {name}: {time.perf_counter() - t0:.1f} s, last loss {last_loss:.4f}", flush=True)
        tables[name] = timestep_table(model, diffusion, val.videos, val_tokens, val_mask, timesteps, seed=args.seed)
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
          f"{'shows' if hist['signature'] else 'does NOT show'} the historical signature "
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
    val = first_clips(cfg, "val", args.num_clips)
    videos = val.videos
    tokens, mask = run.tokenizer.batch(val.captions, cfg.max_text_len_tokens)
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
    if cfg.pose_cond and val.pose_xy is not None:
        # The same x_t with the true keypoints in the pose map (as in training): how much of the
        # error is the pose stage's placing of the body, how much the denoiser's own.
        true_pose = timestep_table(run.model, run.diffusion, videos, tokens, mask, timesteps, seed=args.seed,
                                   pose=(val.pose_xy, val.pose_visible))
        attribution = add_pose_gain(rows, true_pose)
        print("\nPose stage: x0-MSE with its own pose map (as sampled) / with the true keypoints "
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
    sys.exit(cli.run(main, sys.argv[1:], restore_signals=False))
