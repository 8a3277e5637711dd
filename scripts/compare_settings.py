"""Train short runs that differ in one setting and compare them on the same validation clips.

    python scripts/compare_settings.py --key final_norm --values group,batch
    python scripts/compare_settings.py --key prediction_type --values x0,eps,v --max_steps 400 --set pixel_temporal_blend=false

Each variant is a real `main.py` run (same seed, data order and noise) of `--preset` plus the
overrides; the score is the per-timestep table of evaluation/timesteps.py on fixed val clips
(EMA weights): mean and median x0-MSE over all timesteps (lower is better; it is what sampling consumes; eps
models' x0 error explodes at the last step, where x0 = (x_t - √(1-ᾱ) eps)/√ᾱ with √ᾱ ≈ 0.001),
mean eps-MSE, and the worst-timestep skill against the predict-zero-noise baseline. The README's
design-choice figures come from this script.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

import main as train_main  # noqa: E402
from config import parse_value  # noqa: E402
from data import build_dataset  # noqa: E402
from evaluation.timesteps import timestep_table  # noqa: E402
from pipeline import load_run  # noqa: E402


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--key", required=True, help="config key to vary")
    parser.add_argument("--values", required=True, help="comma-separated values")
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--max_steps", type=int, default=300)
    parser.add_argument("--set", action="append", default=[], help="extra override key=value (repeatable)")
    parser.add_argument("--output_dir", default="experiments/compare")
    parser.add_argument("--num_clips", type=int, default=32)
    parser.add_argument("--json", help="write the comparison here")
    args = parser.parse_args(argv)
    extra = []
    for item in args.set:
        key, _, value = item.partition("=")
        extra += [f"--{key}", value]
    results = {}
    for value in args.values.split(","):
        parse_value(args.key, value)  # fail early on a bad key or value
        name = f"{args.key}-{value}"
        start = time.perf_counter()
        code = train_main.main(["--preset", args.preset, "--experiment_name", name, "--output_dir",
                                args.output_dir, "--max_steps", str(args.max_steps), f"--{args.key}", value,
                                "--eval_at_end", "false", "--sample_every_steps", "0", *extra])
        if code != 0:
            print(f"error: training {name} exited with {code}", file=sys.stderr)
            return code
        train_s = time.perf_counter() - start
        run = load_run(experiment=name, output_dir=args.output_dir)
        val = build_dataset(run.cfg, "val")
        clips = [val[i] for i in range(min(args.num_clips, len(val)))]
        tokens, mask = run.tokenizer.batch([c["caption"] for c in clips], run.cfg.max_text_len_tokens)
        rows = timestep_table(run.model, run.diffusion, torch.stack([c["video"] for c in clips]), tokens, mask,
                              list(range(run.cfg.num_timesteps)), seed=0)
        results[value] = dict(
            mean_x0_mse=sum(r["x0_mse"] for r in rows) / len(rows),
            median_x0_mse=sorted(r["x0_mse"] for r in rows)[len(rows) // 2],
            mean_eps_mse=sum(r["eps_mse"] for r in rows) / len(rows),
            min_skill=min(r["skill"] for r in rows), train_s=train_s)
    print(f"\n{args.key} ({args.preset} preset, {args.max_steps} steps, {args.num_clips} val clips, EMA)")
    print(f"{'value':<10}{'mean x0-MSE':>14}{'median x0-MSE':>15}{'mean eps-MSE':>14}{'min skill':>12}{'train s':>10}")
    for value, r in results.items():
        print(f"{value:<10}{r['mean_x0_mse']:>14.5f}{r['median_x0_mse']:>15.5f}{r['mean_eps_mse']:>14.5f}{r['min_skill']:>12.3f}"
              f"{r['train_s']:>10.1f}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(key=args.key, preset=args.preset, max_steps=args.max_steps, results=results), fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
