"""Benchmark: the machine's matmul ceiling, training MFU, sampling cost and scaling, in one run.

    python bench.py                                   # cpu preset, prints a table
    python bench.py --preset gpu --device cuda --json out.json
    python bench.py --preset tiny --quick --json /tmp/b.json   # seconds; what the test runs
    python bench.py --preset cpu --compare_precision --skip sample,scaling   # fp32 eager vs default

MFU = achieved training GFLOP/s (FLOPs counted by torch.utils.flop_counter over one forward and
backward, times measured samples/s) / the median GFLOP/s of a 4096x4096 matmul in the precision the
step ran at (fp32 or bf16, both measured in the same run, at the start and again at the end, so a
machine shared with other jobs loads both sides of the ratio alike); `mfu_best` is against the
higher of the two. `--compare_precision` also times the preset as fp32 eager and as configured, in
alternating rounds (bench_compare.py). Every figure is a median over repeats after warm-up. Training uses the
real data loader, so the data-wait share is the time spent in `next(loader)` over the step time.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time

import cli  # stdlib only, so it comes first: see cli.quiet_interrupts

cli.quiet_interrupts(__name__)
import torch
from torch.utils.flop_counter import FlopCounterMode

from config import ConfigError, make_config, parse_value
from data import build_dataset, make_train_loader
from data.skeleton import NUM_POINTS
from data.text import Tokenizer, build_tokenizer
from diffusion import build_diffusion, build_objective
from models import build_model
from limits import check_memory
from pipeline import resolve_device
from training import Trainer, batch_cond, choose_precision


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_gflops(device: torch.device, dtype: torch.dtype, n: int, repeats: int) -> list[float]:
    """GFLOP/s of repeated n x n @ n x n products (2 n^3 FLOPs each), one figure per repeat."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    c = a @ b  # warm-up
    out = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        torch.matmul(a, b, out=c)
        sync(device)
        out.append(2 * n**3 / (time.perf_counter() - t0) / 1e9)
    return out


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:  # Linux: writing 5 resets the VmHWM (peak RSS) counter of this process
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_memory_mb(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


class BenchTrainer:
    """training.Trainer on a fixed preset, with the timing and FLOP counting the bench reports."""

    def __init__(self, cfg, device: torch.device, vocab_size: int):
        torch.manual_seed(cfg.seed)
        self.cfg, self.device = cfg, device
        self.model = build_model(cfg, vocab_size).to(device)
        self.precision = choose_precision(cfg, device)
        self.trainer = Trainer(cfg, self.model, build_objective(cfg, build_diffusion(cfg, device)), device,
                               self.precision, streams=cfg.cpu_streams if device.type == "cpu" else 1)
        self.steps = 0

    def step(self, batch: dict) -> None:
        self.trainer.step(iter([batch]), self.steps)
        self.steps += 1

    def flops_per_sample(self, batch: dict) -> float:
        """Forward + backward FLOPs of one sample (matmuls, convs, attention), counted, not estimated."""
        counter = FlopCounterMode(display=False)
        tr = self.trainer
        # Eager, so compiled regions neither compile again under the counting mode nor hide their ops.
        with counter, torch.compiler.set_stance("force_eager"):
            self.model.zero_grad(set_to_none=True)
            x0 = batch["video"].to(self.device)
            draws = tr.objective.draw(tuple(x0.shape), tr.generator, self.device)
            with self.precision.autocast(self.device):
                tr.objective(self.model, x0, batch["tokens"].to(self.device), batch["token_mask"].to(self.device),
                             draws, batch_cond(batch, self.cfg.pose_cond, self.device)).loss.backward()
        return counter.get_total_flops() / x0.shape[0]

    def time_steps(self, batches, warmup: int, steps: int) -> dict:
        """Median seconds per step and the share of step time spent waiting for `next(batches)`."""
        first_s = None
        for i in range(warmup):
            t0 = time.perf_counter()
            self.step(next(batches))
            sync(self.device)
            if i == 0:
                first_s = time.perf_counter() - t0
        step_s, wait_s = [], []
        for _ in range(steps):
            t0 = time.perf_counter()
            batch = next(batches)
            t1 = time.perf_counter()
            self.step(batch)
            sync(self.device)
            step_s.append(time.perf_counter() - t0)
            wait_s.append(t1 - t0)
        return dict(step_s=statistics.median(step_s), first_step_s=first_s,
                    data_wait_share=sum(wait_s) / sum(step_s))


# Op classes of the profile summary: where the FLOPs run, and everything else (elementwise, copies,
# norms, optimizer), which MFU pays for without counting.
MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::matmul")
CONV_OPS = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
            "aten::cudnn_convolution", "aten::mkldnn_convolution_backward")


def profile_steps(trainer: BenchTrainer, batches, steps: int, top: int = 12) -> dict:
    """torch.profiler over `steps` training steps: self time per op (ms per step, share of the
    profiled self time), the matmul and conv shares, and the `top` ops by self time."""
    from torch.profiler import ProfilerActivity, _ExperimentalConfig, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if trainer.device.type == "cuda" else [])
    # profile_all_threads: the CPU streams run their forward and backward in worker threads.
    config = _ExperimentalConfig(profile_all_threads=True)
    with profile(activities=activities, experimental_config=config) as prof:
        for _ in range(steps):
            trainer.step(next(batches))
            sync(trainer.device)
    attr = "self_device_time_total" if trainer.device.type == "cuda" else "self_cpu_time_total"
    events = [(e.key, getattr(e, attr), e.count) for e in prof.key_averages()]
    total_us = sum(us for _, us, _ in events) or 1.0
    matmul_us = sum(us for k, us, _ in events if k in MATMUL_OPS)
    conv_us = sum(us for k, us, _ in events if k in CONV_OPS)
    ranked = sorted(events, key=lambda e: -e[1])[:top]
    return dict(steps=steps, self_ms_per_step=total_us / 1e3 / steps, matmul_share=matmul_us / total_us,
                conv_share=conv_us / total_us,
                top_ops=[dict(op=k, ms_per_step=us / 1e3 / steps, share=us / total_us, calls_per_step=n / steps)
                         for k, us, n in ranked])


def random_batch(cfg, batch_size: int, vocab_size: int, text_len: int = 8) -> dict:
    gen = torch.Generator().manual_seed(0)
    video = torch.rand(batch_size, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px, generator=gen) * 2 - 1
    tokens = torch.randint(2, vocab_size, (batch_size, text_len), generator=gen)
    # Keypoints for the pose stage's map (pose_cond): anywhere in the middle of the frame, all visible.
    pose_xy = torch.rand(batch_size, cfg.num_frames, NUM_POINTS, 2, generator=gen) * 0.8 + 0.1
    return dict(video=video, tokens=tokens, token_mask=torch.ones_like(tokens, dtype=torch.bool),
                pose_xy=pose_xy, pose_visible=torch.ones(batch_size, cfg.num_frames, NUM_POINTS, dtype=torch.bool),
                index=list(range(batch_size)))


def repeat(batch: dict):
    while True:
        yield batch


def bench_train(cfg, device, quick: bool, profile: bool = False) -> tuple[dict, dict, Tokenizer, torch.nn.Module]:
    try:
        dataset = build_dataset(cfg, "train")
    except ImportError as exc:  # a dataset whose optional dependency is missing: time the model alone
        print(f"warning: no dataset ({exc}); training on a fixed random batch, data wait not measured")
        dataset = None
    tokenizer = build_tokenizer(cfg, dataset.captions if dataset is not None else ["a b c d e f g h"])
    batches = (iter(make_train_loader(cfg, dataset, tokenizer, start_step=0)) if dataset is not None
               else repeat(random_batch(cfg, cfg.batch_size, len(tokenizer))))
    trainer = BenchTrainer(cfg, device, len(tokenizer))
    first = next(batches)
    flops = trainer.flops_per_sample(first)
    reset_peak_memory(device)
    timing = trainer.time_steps(batches, warmup=2 if quick else 5, steps=3 if quick else 20)
    peak_mb = peak_memory_mb(device)  # before the profiler's own buffers
    prof = profile_steps(trainer, batches, 2 if quick else 5) if profile else None
    samples_per_s = cfg.batch_size / timing["step_s"]
    result = dict(samples_per_s=samples_per_s, step_s=timing["step_s"], batch_size=cfg.batch_size,
                  flops_per_sample=flops, achieved_gflops=flops * samples_per_s / 1e9,
                  peak_memory_mb=peak_mb, data_wait_share=timing["data_wait_share"],
                  first_step_s=timing["first_step_s"], compile=trainer.trainer.compiled,
                  compile_reason=trainer.trainer.compile_reason,
                  precision=trainer.precision.name, precision_reason=trainer.precision.reason)
    if prof is not None:
        result["profile"] = prof
    if dataset is None:
        result["data_wait_share"] = None
    trainer.trainer.close()
    # Sampling runs on the EMA copy, as in main.py: eager, whatever the training step compiled.
    return result, first, tokenizer, trainer.trainer.ema.module


@torch.no_grad()
def bench_sample(cfg, device, model, batch: dict, quick: bool) -> dict:
    """Seconds per clip for DDPM (all T steps) and DDIM-20, with and without guidance."""
    diffusion = build_diffusion(cfg, device)
    model.eval()
    clips = min(4, batch["video"].shape[0])
    tokens, mask = batch["tokens"][:clips].to(device), batch["token_mask"][:clips].to(device)
    shape = (clips, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    bf16 = choose_precision(cfg, device).bf16

    def timed(fn, repeats: int = 1 if quick else 3, warmup: bool = True) -> float:
        if warmup:
            fn()
        times = []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    x = torch.randn(shape, device=device)
    t = torch.full((clips,), cfg.num_timesteps // 2, device=device, dtype=torch.long)
    x2, t2 = torch.cat([x, x]), torch.cat([t, t])
    tokens2, mask2 = torch.cat([tokens, tokens]), torch.cat([mask, mask])
    drop2 = torch.tensor([False] * clips + [True] * clips, device=device)
    bare = {False: lambda: model(x, t, tokens, mask), True: lambda: model(x2, t2, tokens2, mask2, drop2)}
    out = {"clips_per_batch": clips}
    # A sampling run and a loop of as many bare forwards, interleaved and repeated: the ratio of the
    # two is then immune to the machine's speed drifting between measurements (a single median of a
    # few bare forwards swung the ratio widely on a busy 2-core machine: docs/performance.md).
    repeats = 1 if quick else 3
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=bf16):
        forward_s = timed(bare[False])
        forward2_s = timed(bare[True])
        runs = [("ddim20", "ddim", 20), ("ddpm", "ddpm", cfg.num_timesteps)]
        for name, sampler, steps in runs:
            steps = min(steps, cfg.num_timesteps)
            for guided, scale in ((False, 1.0), (True, 2.0)):
                key = f"{name}{'_guided' if guided else ''}"
                sample_s, ratios = [], []
                for _ in range(repeats):
                    loop_s = timed(lambda: [bare[guided]() for _ in range(steps)], repeats=1, warmup=False)
                    seconds = timed(lambda: diffusion.sample(model, tokens, mask, shape, sampler=sampler,
                                                             steps=steps, guidance_scale=scale),
                                    repeats=1, warmup=False)
                    sample_s.append(seconds)
                    ratios.append(seconds / loop_s)
                out[f"{key}_s_per_clip"] = statistics.median(sample_s) / clips
                out[f"{key}_step_over_forward"] = statistics.median(ratios)
    out.update(forward_s=forward_s, forward_batch2x_s=forward2_s)
    model.train()
    return out


def bench_scaling(cfg, device, vocab_size: int, quick: bool) -> dict:
    """Training seconds per sample at 8/16/32/64 frames (preset frame size), and at two frame sizes.

    Eager mode even when the preset compiles (a compile per shape would dominate the run).
    """
    batch_size = 2 if quick else 4
    steps = 2 if quick else 4
    frame_counts = [8, 16, 32, 64]
    sizes = [cfg.frame_size_px, 2 * cfg.frame_size_px]

    def seconds_per_sample(**overrides) -> float:
        run_cfg = make_config(cfg.preset, {**cfg_overrides(cfg), **overrides, "batch_size": batch_size,
                                           "grad_accum_steps": 1, "compile": "off"})
        trainer = BenchTrainer(run_cfg, device, vocab_size)
        timing = trainer.time_steps(repeat(random_batch(run_cfg, batch_size, vocab_size)), warmup=1, steps=steps)
        return timing["step_s"] / batch_size

    frames = {str(f): seconds_per_sample(num_frames=f)
              for f in frame_counts}
    size = {str(s): seconds_per_sample(frame_size_px=s) for s in sizes}
    return dict(batch_size=batch_size, frames=frames, frame_size_px=size,
                frames_64_over_8=frames["64"] / frames["8"])


def cfg_overrides(cfg) -> dict:
    """The config's values that differ from its preset (so scaling runs keep CLI overrides)."""
    base = make_config(cfg.preset).to_dict()
    return {k: v for k, v in cfg.to_dict().items() if v != base[k] and k != "preset"}


def print_report(r: dict) -> None:
    m, tr, s, sc = r["machine"], r["train"], r["sample"], r["scaling"]
    print(f"\n== text2sign bench | preset {r['preset']} | {m['device']} | {m['threads']} threads | torch {m['torch']} | "
          f"CPU {m['cpu_capability']} ({', '.join(m['cpu_flags'])})")
    print(f"ceiling  matmul GFLOP/s, medians of {len(m['fp32_gflops_samples'])}: fp32 {m['fp32_matmul_n']}^2 "
          f"{m['fp32_gflops']:.1f} (min {min(m['fp32_gflops_samples']):.1f}, max {max(m['fp32_gflops_samples']):.1f}) | "
          f"bf16 {m['bf16_matmul_n']}^2 {m['bf16_gflops']:.1f} (min {min(m['bf16_gflops_samples']):.1f}, "
          f"max {max(m['bf16_gflops_samples']):.1f}) | load {m['load_avg']:.2f} -> {m['load_avg_end']:.2f}")
    print(f"train    {tr['precision']} ({tr['precision_reason']}), compile {tr['compile']} | "
          f"{tr['samples_per_s']:.2f} samples/s | {tr['flops_per_sample'] / 1e9:.2f} GFLOP/sample | "
          f"{tr['achieved_gflops']:.1f} GFLOP/s | MFU {100 * tr['mfu']:.1f}% of {tr['mfu_ceiling']} "
          f"({100 * tr['mfu_best']:.1f}% of {tr['mfu_best_ceiling']}) | peak mem "
          f"{tr['peak_memory_mb'] or float('nan'):.0f} MB | data wait {100 * (tr['data_wait_share'] or float('nan')):.1f}% | "
          f"first step {tr['first_step_s']:.2f} s")
    if r.get("compare"):
        c = r["compare"]
        print("compare  " + " | ".join(
            f"{name} ({c[name]['precision']}, compile {c[name]['compile']}): {c[name]['samples_per_s']:.2f} samples/s, "
            f"MFU {100 * c[name]['mfu']:.1f}% of {c[name]['mfu_ceiling']}, first step {c[name]['first_step_s']:.1f} s"
            for name in ("fp32_eager", "default")) + f" | default / fp32 eager {c['default_over_fp32_eager']:.2f}x")
    if "profile" in tr:
        pr = tr["profile"]
        print(f"profile  {pr['steps']} steps, self time by op class: matmul {100 * pr['matmul_share']:.1f}%, "
              f"conv {100 * pr['conv_share']:.1f}%, everything else "
              f"{100 * (1 - pr['matmul_share'] - pr['conv_share']):.1f}% | top ops (ms/step, share, calls/step):")
        for o in pr["top_ops"]:
            print(f"           {o['op'][:48]:<48s} {o['ms_per_step']:8.1f} {100 * o['share']:5.1f}% {o['calls_per_step']:7.0f}")
    print(f"sample   s/clip: DDIM-20 {s['ddim20_s_per_clip']:.3f}, guided {s['ddim20_guided_s_per_clip']:.3f} | "
          f"DDPM-{r['config']['num_timesteps']} {s['ddpm_s_per_clip']:.3f}, guided {s['ddpm_guided_s_per_clip']:.3f} | "
          f"step / bare forward {s['ddim20_step_over_forward']:.2f} (guided {s['ddim20_guided_step_over_forward']:.2f})")
    print("scaling  s/sample by frames: " + ", ".join(f"{k}: {v * 1e3:.1f} ms" for k, v in sc["frames"].items()) +
          f" (64/8 = {sc['frames_64_over_8']:.1f}x) | by frame size: " +
          ", ".join(f"{k}px: {v * 1e3:.1f} ms" for k, v in sc["frame_size_px"].items()))


def main(argv: list[str]) -> int:
    import bench_compare  # imports this module: here, not at the top

    parser = cli.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="cpu")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--json", default="", help="also write the results to this file")
    parser.add_argument("--quick", action="store_true", help="few repeats, 2048^2 ceiling (tests)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = default)")
    parser.add_argument("--compile", default="", choices=["", "auto", "on", "off"], help="override cfg.compile")
    parser.add_argument("--skip", default="", help="comma list of sections to skip: sample,scaling")
    parser.add_argument("--compare_precision", action="store_true",
                        help="also time the preset as fp32 eager and as configured, in alternating rounds")
    parser.add_argument("--profile", action="store_true",
                        help="also profile a few training steps (torch.profiler): time by op class and the top ops")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="config override, e.g. --set batch_size 32")
    args = parser.parse_args(argv)
    try:
        overrides = {k: parse_value(k, v) for k, v in args.set}
        overrides["device"] = args.device if args.device != "auto" else make_config(args.preset).device
        if args.compile:
            overrides["compile"] = args.compile
        cfg = make_config(args.preset, overrides)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.threads < 0:
        parser.error(f"argument --threads: expected 0 (the default) or more, got {args.threads}")
    if args.threads or cfg.num_threads:
        torch.set_num_threads(args.threads or cfg.num_threads)
    device = resolve_device(cfg.device)
    check_memory(cfg, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    skip = set(filter(None, args.skip.split(",")))
    n = 2048 if args.quick else 4096
    reps = 3 if args.quick else 5

    sizes = bench_compare.ceiling_sizes(device, n)
    ceilings = bench_compare.measure_ceilings(device, sizes, reps)
    machine = dict(device=str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
                   threads=torch.get_num_threads(), torch=torch.__version__, cpu=platform.processor(),
                   cores=os.cpu_count(), load_avg=os.getloadavg()[0], matmul_n=n, **bench_compare.cpu_flags())
    train, batch, tokenizer, model = bench_train(cfg, device, args.quick, args.profile)
    sample = {} if "sample" in skip else bench_sample(cfg, device, model, batch, args.quick)
    scaling = {} if "scaling" in skip else bench_scaling(cfg, device, len(tokenizer), args.quick)
    compare = bench_compare.bench_compare(cfg, device, args.quick) if args.compare_precision else {}
    bench_compare.measure_ceilings(device, sizes, reps, into=ceilings)  # again at the end: load changes
    machine.update(bench_compare.machine_ceilings(ceilings, sizes), load_avg_end=os.getloadavg()[0])
    # MFU against the ceiling of the precision each step ran at, and against the machine's best.
    train.update(bench_compare.mfu_fields(train["achieved_gflops"], train["precision"], machine))
    for name in ("fp32_eager", "default") if compare else ():
        compare[name].update(bench_compare.mfu_fields(compare[name]["achieved_gflops"],
                                                      compare[name]["precision"], machine))
    result = dict(preset=cfg.preset, machine=machine, config=cfg.to_dict(), train=train, sample=sample,
                  scaling=scaling, compare=compare)
    if not skip:
        print_report(result)
    else:
        print(json.dumps({k: result[k] for k in ("machine", "train", "sample", "scaling", "compare")}, indent=1))
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(cli.run(main, sys.argv[1:], restore_signals=False))
