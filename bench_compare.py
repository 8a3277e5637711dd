"""The bench's precision side: both matmul ceilings, MFU against the one the step ran at, and
`--compare_precision` (the same preset as fp32 eager and as configured, timed in one sitting).

Why two ceilings: on a CPU with AMX-BF16 the bf16 matmul ceiling is several times the fp32 one
(docs/performance.md, round 6), so an MFU against the fp32 ceiling says nothing about a bf16 step,
and one against the bf16 ceiling says how far the step is from the best the machine has.
Imported by bench.py (this file imports bench: bench.py imports it inside main()).
"""
from __future__ import annotations

import statistics
import time

import torch

from bench import BenchTrainer, matmul_gflops, random_batch, repeat, sync
from config import make_config
from data import build_dataset, make_train_loader
from data.text import build_tokenizer
from training import cpu_bf16_units

# What "fp32 eager" switches off: autocast and every lever the presets may turn on.
FP32_EAGER = dict(precision="fp32", compile="off")
PRECISIONS = ("fp32", "bf16")


def cpu_flags() -> dict:
    """What the CPU offers for matmuls, as torch sees it: its ISA level, the bf16-related cpuinfo
    flags, and the precision choice's verdict (recorded beside the figures they explain)."""
    caps = torch.cpu.get_capabilities()
    keys = ("amx_bf16", "amx_tile", "amx_fp16", "avx512_bf16", "avx512_fp16", "avx512_f", "avx2", "bf16")
    return dict(cpu_capability=torch.backends.cpu.get_cpu_capability(),
                cpu_flags=[k for k in keys if caps.get(k)], cpu_bf16_units=cpu_bf16_units()[1])


def ceiling_sizes(device: torch.device, n: int) -> dict[str, int]:
    """Matmul side per precision: `n` for fp32; bf16 at 8192 on CUDA (tensor cores need it to fill),
    at `n` on a CPU with bf16 matrix units, and at 1024 elsewhere, where bf16 is emulated
    (~1 GFLOP/s: a 4096^2 product would take minutes)."""
    if device.type == "cuda":
        return dict(fp32=n, bf16=8192)
    return dict(fp32=n, bf16=n if cpu_bf16_units()[0] else 1024)


def measure_ceilings(device: torch.device, sizes: dict[str, int], repeats: int,
                     into: dict[str, list[float]] | None = None) -> dict[str, list[float]]:
    """GFLOP/s samples of both precisions' n x n products, appended to `into` (called at the start of
    the bench and again at the end, so a load change reaches both sides of MFU)."""
    into = into if into is not None else {p: [] for p in PRECISIONS}
    for name in PRECISIONS:
        into[name] += matmul_gflops(device, getattr(torch, {"fp32": "float32", "bf16": "bfloat16"}[name]),
                                    sizes[name], repeats)
    return into


def machine_ceilings(samples: dict[str, list[float]], sizes: dict[str, int]) -> dict:
    """The `machine` keys: `fp32_gflops`, `bf16_gflops` (medians), their samples and sizes, and which
    precision has the higher ceiling (`best_precision`)."""
    out = {}
    for name in PRECISIONS:
        out[f"{name}_gflops"] = statistics.median(samples[name])
        out[f"{name}_gflops_samples"] = samples[name]
        out[f"{name}_matmul_n"] = sizes[name]
    out["best_precision"] = max(PRECISIONS, key=lambda p: out[f"{p}_gflops"])
    return out


def mfu_fields(achieved_gflops: float, precision: str, machine: dict) -> dict:
    """`mfu` against the ceiling of the precision the step ran at (`mfu_ceiling` names it), and
    `mfu_best` against the machine's highest ceiling."""
    best = machine["best_precision"]
    return dict(mfu=achieved_gflops / machine[f"{precision}_gflops"], mfu_ceiling=precision,
                mfu_best=achieved_gflops / machine[f"{best}_gflops"], mfu_best_ceiling=best)


def bench_compare(cfg, device: torch.device, quick: bool) -> dict:
    """fp32 eager against the configured path (auto precision and the adopted levers), both built in
    this process and timed in alternating rounds of steps on the same loader: the ratio of the two is
    measured in one sitting, immune to the machine's speed drifting between separate runs.

    Returns {"fp32_eager": {...}, "default": {...}, "default_over_fp32_eager": samples/s ratio}; each
    variant has samples_per_s (median over its rounds), step_s, first_step_s (compile included),
    precision, compile, and achieved_gflops."""
    from bench import cfg_overrides

    configs = {"fp32_eager": make_config(cfg.preset, {**cfg_overrides(cfg), **FP32_EAGER}), "default": cfg}
    try:
        dataset = build_dataset(cfg, "train")
    except ImportError:
        dataset = None
    tokenizer = build_tokenizer(cfg, dataset.captions if dataset is not None else ["a b c d e f g h"])
    batches = (iter(make_train_loader(cfg, dataset, tokenizer, start_step=0)) if dataset is not None
               else repeat(random_batch(cfg, cfg.batch_size, len(tokenizer))))
    trainers, out = {}, {}
    for name, run_cfg in configs.items():
        trainer = trainers[name] = BenchTrainer(run_cfg, device, len(tokenizer))
        t0 = time.perf_counter()
        trainer.step(next(batches))  # compiles, where the config compiles
        sync(device)
        out[name] = dict(precision=trainer.precision.name, compile=trainer.trainer.compiled,
                         first_step_s=time.perf_counter() - t0)
        for _ in range(1 if quick else 2):
            trainer.step(next(batches))
    rounds, per_round = (2, 2) if quick else (4, 5)
    step_s = {name: [] for name in trainers}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            step_s[name].append(trainer.time_steps(batches, warmup=0, steps=per_round)["step_s"])
    first = next(batches)
    flops = trainers["fp32_eager"].flops_per_sample(first)  # the same model: one count serves both
    for name, trainer in trainers.items():
        seconds = statistics.median(step_s[name])
        out[name].update(step_s=seconds, round_step_s=step_s[name], samples_per_s=cfg.batch_size / seconds,
                         achieved_gflops=flops * cfg.batch_size / seconds / 1e9)
        trainer.trainer.close()
    # The median of the per-round ratios: each round's pair ran back to back.
    out["default_over_fp32_eager"] = statistics.median(
        a / b for a, b in zip(step_s["fp32_eager"], step_s["default"]))
    sync(device)
    return out
