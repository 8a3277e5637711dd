"""Look inside the reverse process of a trained denoiser: videos, predicted-x0 strips, per-step statistics.

    python debug_vivit_sampling.py --experiment demo
    python debug_vivit_sampling.py --checkpoint PATH --prompt "hello thank you" --sampler ddpm --json stats.json

    python debug_vivit_sampling.py --experiment demo --pose_only   # text -> pose only, milliseconds

Writes under --out (default outputs/debug_sampling/<experiment>): one GIF and one MP4 per prompt
(its samples side by side) and, for a model with a pose stage, the predicted skeleton as a `.pose`
file beside them (pose-format: `visualize_pose -i F.pose -o F.mp4` draws it); grid.png (rows =
prompts, columns = frames); with the default prompts (dataset captions) vs_truth.png, each sample's
row above the same caption's ground-truth rendering; x0_strip_XX.png per prompt (rows = the
predicted clean video at chosen reverse steps, columns = frames). Prints one row per reverse step and
warns on blow-ups, saturation, leftover noise and flicker in the final videos. Sampling goes through
pipeline.generate with a callback: the same sampler as training and evaluation. `--pose_only` runs
the pose stage alone and writes the `.pose` files (no video is denoised).
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
from pathlib import Path

import cli  # stdlib only, so it comes first: see cli.quiet_interrupts

cli.quiet_interrupts(__name__)
import numpy as np
import torch
from tqdm import tqdm

from data import build_dataset
from data.video_io import to_uint8_frames, upscale
from diffusion.gaussian import predict_eps_from_x0
from data.pose_io import write_pose
from pipeline import add_run_arguments, first_clips, generate, load_run, predict_keypoints, save_samples

# Warning thresholds (units in the names). Data statistics are measured on the val clips of the run.
BLOWUP_STD = 3.0  # x_t std above this at any step: the reverse process is diverging (x_T has std 1)
SATURATION_EXCESS = 0.10  # final pixels at ±1: warn when this share above the data's own share
NOISE_ENERGY_RATIO = 3.0  # final high-frequency energy / the data's: leftover noise above this
X0_CLIPPED_FRACTION = 0.25  # share of x0 clipped at the last step above this: the model overshoots
FLICKER_RATIO = 2.0  # final mean |frame-to-frame change| / the data's: flicker above this
GEN_BATCH = 16  # prompts per sampling batch


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = cli.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(p, required=True)
    p.add_argument("--prompt", action="append", help="prompt (repeatable); default: 2 val + 2 test captions")
    p.add_argument("--sampler", choices=("ddpm", "ddim"), help="default: the run's config")
    p.add_argument("--steps", type=cli.positive(int), help="DDIM steps (default: the run's sampling_steps)")
    p.add_argument("--eta", type=cli.finite, help="DDIM eta (default: the run's ddim_eta)")
    p.add_argument("--guidance", type=cli.finite, help="classifier-free guidance scale (default: the run's)")
    p.add_argument("--num_samples", type=cli.positive(int), default=1, help="samples per prompt")
    p.add_argument("--strip_steps", type=cli.positive(int), default=6, help="reverse steps shown in each x0 strip")
    p.add_argument("--fps", type=cli.positive(int), default=8, help="frames per second of the written videos")
    p.add_argument("--out", help="output folder (default outputs/debug_sampling/<experiment>)")
    p.add_argument("--pose_only", action="store_true",
                   help="run the pose stage alone: text -> keypoints as .pose files, no video denoised")
    args = p.parse_args(argv)
    if args.eta is not None and args.eta < 0:
        p.error(f"argument --eta: expected a number >= 0, got {args.eta}")
    if args.steps is not None and args.sampler == "ddpm":
        p.error("argument --steps: ddpm always runs the run's num_timesteps steps; drop --steps or use "
                "--sampler ddim")
    args.error = p.error  # for the checks that need the run's config
    return args


def high_freq_energy(videos: torch.Tensor) -> float:
    """Mean squared difference between horizontally and vertically neighbouring pixels of (B,3,T,H,W).

    i.i.d. noise of std s adds 2 s^2; the synthetic signer's flat shapes score far lower.
    """
    dx = videos[..., :, 1:] - videos[..., :, :-1]
    dy = videos[..., 1:, :] - videos[..., :-1, :]
    return float(0.5 * (dx.pow(2).mean() + dy.pow(2).mean()))


def saturation(videos: torch.Tensor) -> float:
    return float((videos.abs() >= 1 - 1e-3).float().mean())


def tile_png(path: Path, rows: list[torch.Tensor], scale: int = 4, pad_px: int = 2) -> None:
    """Rows of clips (3,T,H,W) in [-1, 1] -> one PNG, frames left to right, white gaps."""
    from PIL import Image

    strips = [upscale(to_uint8_frames(clip), scale) for clip in rows]  # (T, H, W, 3) each
    t, h, w, _ = strips[0].shape
    img = np.full((len(rows) * (h + pad_px) - pad_px, t * (w + pad_px) - pad_px, 3), 255, np.uint8)
    for r, frames in enumerate(strips):
        for f in range(t):
            img[r * (h + pad_px): r * (h + pad_px) + h, f * (w + pad_px): f * (w + pad_px) + w] = frames[f]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")[:40] or "prompt"


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    t_start = time.perf_counter()
    run = load_run(experiment=args.experiment, checkpoint=args.checkpoint, output_dir=args.output_dir,
                   use_ema=not args.raw)
    cfg = run.cfg
    if args.steps is not None and args.steps > cfg.num_timesteps:
        args.error(f"argument --steps: at most the run's num_timesteps={cfg.num_timesteps}, got {args.steps}")
    if args.sampler is None and cfg.sampler == "ddpm" and args.steps is not None:
        args.error("argument --steps: this run samples with ddpm, which always runs num_timesteps steps; "
                   "drop --steps or use --sampler ddim")
    val, test = build_dataset(cfg, "val"), build_dataset(cfg, "test")
    prompts = args.prompt or list(val.captions[:2]) + list(test.captions[:2])
    truth = None if args.prompt else [val[0]["video"], val[1]["video"], test[0]["video"], test[1]["video"]]
    sampler = args.sampler or cfg.sampler
    steps = cfg.num_timesteps if sampler == "ddpm" else (args.steps or cfg.sampling_steps)
    out = Path(args.out or Path("outputs") / "debug_sampling" / (args.experiment or Path(args.checkpoint).stem))
    if args.pose_only:
        return pose_only(run, prompts, out, args)
    batch = [p for p in prompts for _ in range(args.num_samples)]  # prompt-major: sample j of prompt i
    print(f"Checkpoint {run.path}: step {run.step}, {'raw' if args.raw else 'EMA'} weights, "
          f"{cfg.prediction_type} prediction; {sampler} {steps} steps, eta "
          f"{cfg.ddim_eta if args.eta is None else args.eta}, guidance "
          f"{cfg.guidance_scale if args.guidance is None else args.guidance}, seed {args.seed}, "
          f"{len(prompts)} prompts x {args.num_samples} samples", flush=True)

    # --- per-step statistics through the sampler's callback ---------------------------------------
    records: list[dict] = []
    strip_at = set(np.linspace(0, steps - 1, min(args.strip_steps, steps)).round().astype(int).tolist())
    strips: dict[int, list[tuple[int, torch.Tensor]]] = {}  # sample index -> [(t, x0 clip)]
    calls = [0]
    bar = tqdm(total=steps * math.ceil(len(batch) / GEN_BATCH), desc="sampling", dynamic_ncols=True)

    def callback(t_int: int, x_t: torch.Tensor, x0: torch.Tensor) -> None:
        i = calls[0] % steps  # generate runs `steps` callbacks per batch of GEN_BATCH prompts
        t = torch.full((x_t.shape[0],), t_int, dtype=torch.long, device=x_t.device)
        eps = predict_eps_from_x0(run.diffusion.sched, x_t, t, x0)
        xf, x0f = x_t.float(), x0.float()
        records.append(dict(step=i, t=t_int, xt_mean=float(xf.mean()), xt_std=float(xf.std()),
                            xt_min=float(xf.min()), xt_max=float(xf.max()), x0_std=float(x0f.std()),
                            x0_clipped=saturation(x0f), eps_rms=float(eps.float().pow(2).mean().sqrt()),
                            nonfinite=int((~torch.isfinite(xf)).sum() + (~torch.isfinite(x0f)).sum())))
        if i in strip_at:
            start = (calls[0] // steps) * GEN_BATCH
            for b in range(x0.shape[0]):
                strips.setdefault(start + b, []).append((t_int, x0[b].float().cpu()))
        calls[0] += 1
        bar.update(1)

    try:
        videos = generate(run.model, run.diffusion, run.tokenizer, batch, cfg, seed=args.seed, sampler=sampler,
                          steps=steps, eta=args.eta, guidance_scale=args.guidance, callback=callback,
                          batch_size=GEN_BATCH)
    except ValueError as exc:  # an empty prompt, or one with no known word (pipeline.encode_prompts)
        bar.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    bar.close()
    # Average the per-step rows over generate's batches of 16 (one row per reverse step).
    per_step = []
    for i in range(steps):
        rows = [r for r in records if r["step"] == i]
        merged = {k: float(np.mean([r[k] for r in rows])) for k in rows[0] if k not in ("step", "t", "nonfinite")}
        merged.update(step=i, t=rows[0]["t"], nonfinite=sum(r["nonfinite"] for r in rows),
                      xt_min=min(r["xt_min"] for r in rows), xt_max=max(r["xt_max"] for r in rows))
        per_step.append(merged)

    print(f"\n{'step':>4} {'t':>3} {'x_t mean':>9} {'x_t std':>8} {'x_t min':>8} {'x_t max':>8} "
          f"{'x0 std':>7} {'x0 clip':>8} {'eps rms':>8} {'NaN/Inf':>7}")
    for r in per_step:
        print(f"{r['step']:>4} {r['t']:>3} {r['xt_mean']:>+9.4f} {r['xt_std']:>8.4f} {r['xt_min']:>8.3f} "
              f"{r['xt_max']:>8.3f} {r['x0_std']:>7.4f} {r['x0_clipped']:>8.2%} {r['eps_rms']:>8.4f} "
              f"{r['nonfinite']:>7d}")

    # --- final videos against the data ------------------------------------------------------------
    data = first_clips(cfg, "val", 16).videos
    final = dict(hf_energy=high_freq_energy(videos), data_hf_energy=high_freq_energy(data),
                 saturation=saturation(videos), data_saturation=saturation(data),
                 mean=float(videos.mean()), std=float(videos.std()), data_mean=float(data.mean()),
                 data_std=float(data.std()),
                 temporal_diff=float((videos[:, :, 1:] - videos[:, :, :-1]).abs().mean()),
                 data_temporal_diff=float((data[:, :, 1:] - data[:, :, :-1]).abs().mean()))
    final["hf_ratio"] = final["hf_energy"] / max(final["data_hf_energy"], 1e-12)
    print(f"\nfinal videos vs {len(data)} val clips: high-frequency energy {final['hf_energy']:.4f} vs "
          f"{final['data_hf_energy']:.4f} ({final['hf_ratio']:.2f}×), saturated pixels "
          f"{final['saturation']:.2%} vs {final['data_saturation']:.2%}, mean/std {final['mean']:+.3f}/"
          f"{final['std']:.3f} vs {final['data_mean']:+.3f}/{final['data_std']:.3f}, frame-to-frame change "
          f"{final['temporal_diff']:.4f} vs {final['data_temporal_diff']:.4f}")
    warnings = []
    blown = [r["step"] for r in per_step if r["xt_std"] > BLOWUP_STD or r["nonfinite"]]
    if blown:
        warnings.append(f"blow-up: x_t std > {BLOWUP_STD} or NaN/Inf at steps {blown[:10]}")
    if final["saturation"] > final["data_saturation"] + SATURATION_EXCESS:
        warnings.append(f"saturation: {final['saturation']:.1%} of final pixels at ±1 (data "
                        f"{final['data_saturation']:.1%})")
    if final["hf_ratio"] > NOISE_ENERGY_RATIO:
        warnings.append(f"leftover noise: final high-frequency energy {final['hf_ratio']:.1f}× the data's "
                        f"(limit {NOISE_ENERGY_RATIO}×)")
    if final["temporal_diff"] > FLICKER_RATIO * final["data_temporal_diff"]:
        warnings.append(f"flicker: frame-to-frame change {final['temporal_diff']:.3f} vs the data's "
                        f"{final['data_temporal_diff']:.3f} (limit {FLICKER_RATIO}×)")
    if per_step[-1]["x0_clipped"] > X0_CLIPPED_FRACTION:
        warnings.append(f"x0 overshoot: {per_step[-1]['x0_clipped']:.0%} of the last predicted x0 clipped")
    for w in warnings:
        print(f"WARNING: {w}")
    if not warnings:
        print("no warnings (no blow-up, saturation, leftover noise or flicker beyond the thresholds)")

    # --- files ------------------------------------------------------------------------------------
    files = []
    poses = predict_keypoints(run.model, run.tokenizer, prompts, cfg) if cfg.pose_cond else None
    for i, prompt in enumerate(prompts):
        clips = videos[i * args.num_samples:(i + 1) * args.num_samples]
        files += save_samples(out / f"prompt_{i:02d}_{slug(prompt)}", clips, fps=args.fps)
        if poses is not None:
            write_pose(str(out / f"prompt_{i:02d}_{slug(prompt)}.pose"), poses[0][i], poses[1][i], args.fps,
                       (cfg.frame_size_px, cfg.frame_size_px))
            files.append(out / f"prompt_{i:02d}_{slug(prompt)}.pose")
        rows = strips.get(i * args.num_samples, [])
        if rows:
            tile_png(out / f"x0_strip_{i:02d}.png", [clip for _, clip in rows])
            files.append(out / f"x0_strip_{i:02d}.png")
    tile_png(out / "grid.png", [videos[i * args.num_samples] for i in range(len(prompts))])
    files.append(out / "grid.png")
    if truth is not None:  # each sample above the ground-truth rendering of the same caption
        tile_png(out / "vs_truth.png", [clip for i in range(len(prompts))
                                        for clip in (videos[i * args.num_samples], truth[i])])
        files.append(out / "vs_truth.png")
    strip_ts = [t for t, _ in strips.get(0, [])]
    (out / "prompts.txt").write_text("".join(f"{i:02d}\t{p}\n" for i, p in enumerate(prompts)) +
                                     f"x0 strip rows: t = {strip_ts}\n")
    files.append(out / "prompts.txt")
    print(f"\nwrote {len(files)} files to {out}/ (grid.png rows = prompts; x0_strip rows: t = {strip_ts})")
    wall = time.perf_counter() - t_start
    print(f"({wall:.1f} s wall)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(dict(checkpoint=str(run.path), step=run.step, use_ema=not args.raw, sampler=sampler,
                           steps=steps, eta=args.eta, guidance=args.guidance, seed=args.seed,
                           prompts=prompts, num_samples=args.num_samples, per_step=per_step, final=final,
                           warnings=warnings, strip_timesteps=strip_ts,
                           files=[str(f) for f in files], wall_s=wall), fh, indent=1)
        print(f"wrote {args.json}")
    return 1 if blown else 0


def pose_only(run, prompts: list[str], out: Path, args) -> int:
    """Text -> the pose stage's keypoints, one .pose file per prompt; no video is denoised."""
    cfg = run.cfg
    if not cfg.pose_cond:
        print(f"error: --pose_only: checkpoint {run.path} has no pose stage (pose_cond false)", file=sys.stderr)
        return 2
    t0 = time.perf_counter()
    try:
        xy, visible = predict_keypoints(run.model, run.tokenizer, prompts, cfg)
    except ValueError as exc:  # an empty prompt, or one with no known word
        print(f"error: {exc}", file=sys.stderr)
        return 2
    elapsed_ms = (time.perf_counter() - t0) * 1e3
    for i, prompt in enumerate(prompts):
        path = out / f"prompt_{i:02d}_{slug(prompt)}.pose"
        write_pose(str(path), xy[i], visible[i], args.fps, (cfg.frame_size_px, cfg.frame_size_px))
        print(f"{path}  ({int(visible[i].any(0).sum())} of {visible.shape[-1]} points predicted visible)")
    print(f"pose stage: {len(prompts)} prompts in {elapsed_ms:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:], restore_signals=False))
