"""Sign-fidelity evaluation of a trained run (see evaluation/runner.py for the conditions).

    python evaluate.py --experiment demo [--split test] [--json eval.json]
    python evaluate.py --checkpoint experiments/demo/checkpoints/ckpt_00001000.pt --num_clips 16
    python evaluate.py --experiment demo --start_t 20   # SDEdit: which noise levels lose the signs
"""
from __future__ import annotations

import argparse
import os
import sys

import cli  # stdlib only, so it comes first: see cli.quiet_interrupts

cli.quiet_interrupts(__name__)
import torch

from checkpoint import CheckpointError
from data.real.common import DatasetError
from evaluation.runner import evaluate_run
from pipeline import add_run_arguments, load_run, resolve_device


def main(argv: list[str]) -> int:
    parser = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(parser, required=True)
    parser.add_argument("--split", default="test", choices=("val", "test"))
    parser.add_argument("--num_clips", type=cli.positive(int), default=None,
                        help="default: the config's num_eval_samples")
    parser.add_argument("--guidance", type=cli.finite, default=None, help="classifier-free guidance scale")
    parser.add_argument("--sampler", choices=("ddim", "ddpm"), default=None, help="default: the config's")
    parser.add_argument("--steps", type=cli.positive(int), default=None, help="DDIM steps")
    parser.add_argument("--eta", type=cli.finite, default=None, help="DDIM stochasticity (0 deterministic, 1 DDPM-like)")
    parser.add_argument("--start_t", type=int, default=None,
                        help="start from each reference clip noised to this step (SDEdit) instead of "
                             "pure noise: if the signs read from t=20 but not from noise, the layout "
                             "decided at high noise is what fails")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--scorer", default="auto", choices=("auto", "synthetic", "real"),
                        help="synthetic: the exact back-translator (the synthetic signer, or a release-layout "
                             "export of it: python -m data.export_synthetic); real: PSNR/SSIM; auto: by dataset")
    parser.add_argument("--recognizer", default="auto",
                        help="the learned pose -> gloss recogniser for the pose section: a file from "
                             "python -m evaluation.recognizer, 'auto' (the dataset's own, if trained) or 'none'")
    args = parser.parse_args(argv)
    if args.eta is not None and args.eta < 0:
        parser.error(f"argument --eta: expected a number >= 0, got {args.eta}")
    run = load_run(experiment=args.experiment, checkpoint=args.checkpoint, output_dir=args.output_dir,
                   device=resolve_device(args.device), use_ema=not args.raw)
    cfg = run.cfg
    if args.steps is not None and args.steps > cfg.num_timesteps:
        parser.error(f"argument --steps: at most the run's num_timesteps={cfg.num_timesteps}, got {args.steps}")
    if args.guidance is not None:
        cfg.guidance_scale = args.guidance
    if args.sampler is not None:
        cfg.sampler = args.sampler
    if args.steps is not None:
        cfg.sampling_steps = args.steps
    if args.eta is not None:
        cfg.ddim_eta = args.eta
    print(f"{run.path} (step {run.step}, {'raw' if args.raw else 'EMA'} weights)")
    if args.start_t is not None and not 0 <= args.start_t < cfg.num_timesteps:
        parser.error(f"--start_t {args.start_t}: expected a step in 0..{cfg.num_timesteps - 1}")
    try:
        recognizer = find_recognizer(args.recognizer, cfg, args.scorer == "synthetic")
    except (CheckpointError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with torch.no_grad():
        evaluate_run(run.model, run.diffusion, run.tokenizer, cfg, args.split, args.json,
                     num_clips=args.num_clips, seed=args.seed, start_t=args.start_t, scorer=args.scorer,
                     recognizer=recognizer)
    return 0


def find_recognizer(choice: str, cfg, synthetic_captions: bool):
    """The recogniser the pose section uses: a given file, the dataset's own if one was trained
    (`python -m evaluation.recognizer`), or none."""
    from evaluation.recognizer import Recognizer
    from evaluation.recognizer_cache import trained_recognizer

    if choice == "none":
        return None
    if choice != "auto":
        if not os.path.isfile(choice):
            raise CheckpointError(f"--recognizer {choice}: file not found")
        return Recognizer.load(choice)
    recognizer = trained_recognizer(cfg, synthetic_captions)
    if recognizer is None:
        print("no recogniser trained for this dataset: the pose section has no recogniser WER "
              "(python -m evaluation.recognizer trains one)")
    return recognizer


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:], restore_signals=False))
