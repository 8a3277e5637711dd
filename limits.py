"""Resource limits checked before any work: the memory a configuration needs and the disk a run needs.

Why: huge sizes used to be found by the allocator after the run folder existed and seconds to hours
of work were spent (issue 21, row 11: `--num_frames 100000` rendered for 25 s then died,
`--max_text_len_tokens 1000000000` asked for 128 GB, `--num_train_samples 1000000000000` hung).
`estimate_memory(cfg)` adds up, from the config alone (nothing is allocated or built):
- parameters: the denoiser's parameters, counted from its shapes (the dominant terms of
  models/architectures: blocks, text encoder, positions, embeddings, head), times the copies training
  keeps (weights, gradients, AdamW's two moments, the EMA);
- activations: what one optimizer step keeps for the backward pass: per block and video token the
  tensors of its three attentions and MLP, the attention score matrices (spatial N², temporal T'²,
  text T'N·S per clip and head), the text encoder, and the pixel-space head; the whole micro-batch
  at once (every CPU stream holds its slice at the same time);
- data: the batches the loader holds (in flight and prefetched) and, for synthetic data, the captions
  of every sample and the sampler's permutation (real clips are memory-mapped from the cache on disk);
- the diffusion schedule's buffers.
The estimate is a floor (it leaves out allocator slack and temporaries), so a run it rejects cannot
fit; the tests keep it within a small factor of the peak memory actually measured.
"""
from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from data.skeleton import stage_layout

FLOAT_BYTES = 4
# Copies of every parameter a training step holds: weights, gradients, AdamW exp_avg and exp_avg_sq, EMA.
TRAINING_COPIES = 5
# Saved activations per video token and block, in units of the width (LayerNorm and modulate outputs,
# q/k/v and their head-major copies, attention and projection outputs for the spatial, temporal and
# text attentions; the MLP's input, hidden pre- and post-GELU; the gated residual sums).
BLOCK_ACTS_PER_TOKEN_WIDTHS = 26
# bf16 autocast: the share of fp32 activation bytes still kept (LayerNorm and softmax stay fp32;
# measured 0.57-0.67 on the tiny/cpu/gpu presets' shapes), plus a bf16 copy of every weight.
BF16_ACTIVATION_SHARE = 0.55
# Python str + list slot of one synthetic caption (measured: ~110 bytes) and the sampler's int64 index.
CAPTION_BYTES = 110
PERMUTATION_BYTES = 8
TEXT_TOKENS_ASSUMED = 64  # captions are padded to the longest in the batch, not to max_text_len_tokens
LOADER_PREFETCH = 4  # data.make_train_loader's prefetch_factor
SCHEDULE_ARRAYS = 16  # float64 arrays of length num_timesteps in diffusion/gaussian.py's schedule
CHECKPOINT_COPIES = 4  # weights, EMA, AdamW's two moments: the size of one checkpoint file


def _gib(n: float) -> str:
    if n >= 2**30 / 10:
        return f"{n / 2**30:.1f} GiB"
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 / 10 else f"{n / 2**10:.1f} KiB"


@dataclass
class MemoryEstimate:
    """Bytes per part (parameters, activations, data, schedule) and the figures behind them."""

    parts: dict[str, int] = field(default_factory=dict)
    detail: dict[str, str] = field(default_factory=dict)
    num_params: int = 0

    @property
    def total(self) -> int:
        return sum(self.parts.values())

    def describe(self) -> str:
        return ", ".join(f"{name} {_gib(n)} ({self.detail[name]})" for name, n in
                         sorted(self.parts.items(), key=lambda kv: -kv[1]) if n)

    def largest(self) -> str:
        return max(self.parts, key=self.parts.get)


def count_parameters(cfg, vocab_size: int) -> int:
    """Parameters of the denoiser `cfg` describes, from its shapes (models/architectures)."""
    from models.architectures.vivit import MODEL_SIZES

    size = MODEL_SIZES[cfg.model_size]
    d, depth = size["width"], size["depth"]
    hidden = int(d * cfg.mlp_ratio)
    mlp = 2 * d * hidden + hidden + d
    attn = 4 * d * d + 4 * d
    grid_t, grid_s = cfg.num_frames // cfg.tubelet_frames, cfg.frame_size_px // cfg.patch_size_px
    k_p2 = cfg.tubelet_frames * cfg.patch_size_px ** 2
    channels_in = 3 + (len(stage_layout(cfg.pose_skeleton)[1]) if cfg.pose_cond else 0)  # + pose map channels
    c = cfg.decoder_channels
    n = 0
    n += depth * (3 * attn + mlp + d * 10 * d + 10 * d + 2 * d)  # blocks: 3 attentions, MLP, adaLN
    n += cfg.text_depth * (attn + mlp + 4 * d) + vocab_size * d + (cfg.max_text_len_tokens + 1) * d + 4 * d
    n += cfg.frame_cond_depth * (2 * attn + mlp + 6 * d) + grid_t * d + d * d + 3 * d if cfg.frame_cond_depth else 0
    n += grid_s ** 2 * d + grid_t * d  # positions
    n += channels_in * k_p2 * d + d  # patch embedding
    n += 256 * d + d * d + 2 * d + d * d + d + d * 2 * d + 2 * d  # time MLP, text pool, final adaLN
    n += d * k_p2 * c + k_p2 * c  # unpatchify
    n += 25 * (c + channels_in) * c + c + 25 * c * 3 + 3 + 2 * c  # head: two 5x5 convs and the norm
    if cfg.pose_cond:
        n += 2 * d * d + mlp + d * 3 * len(stage_layout(cfg.pose_skeleton)[0])  # regulator, MLP, keypoint head
        n += cfg.pose_depth * (attn + mlp + 4 * d)  # its layers over the frames
    r = cfg.refine_channels
    if r:  # full-resolution refine path: 3x3 convs, FiLM, RGB out
        n += 9 * (c + channels_in) * r + (cfg.refine_layers - 1) * 9 * r * r + cfg.refine_layers * (r + 2 * r * (d + 1))
        n += 9 * r * 3 + 3
    return n


def estimate_memory(cfg, vocab_size: int | None = None, device_type: str = "cpu") -> MemoryEstimate:
    """What one training process of `cfg` on `device_type` needs in memory (module docstring). On
    CUDA the fused attention keeps no score matrices, and bf16 autocast (the CUDA default) keeps
    about half the activation bytes."""
    from models.architectures.vivit import MODEL_SIZES
    from training import choose_precision

    import torch

    bf16 = choose_precision(cfg, torch.device(device_type)).bf16
    cuda = device_type == "cuda"

    if vocab_size is None:
        vocab_size = cfg.subword_vocab_size if cfg.tokenizer == "bpe" else 1000
    size = MODEL_SIZES[cfg.model_size]
    d, depth, heads = size["width"], size["depth"], size["heads"]
    est = MemoryEstimate()
    est.num_params = count_parameters(cfg, vocab_size)
    est.parts["parameters"] = est.num_params * FLOAT_BYTES * TRAINING_COPIES
    est.detail["parameters"] = (f"{est.num_params / 1e6:.2f} M parameters x {TRAINING_COPIES} copies: weights, "
                                "gradients, AdamW moments, EMA")

    micro = cfg.batch_size // cfg.grad_accum_steps
    grid_t, n_s = cfg.num_frames // cfg.tubelet_frames, (cfg.frame_size_px // cfg.patch_size_px) ** 2
    tokens = grid_t * n_s
    text = min(cfg.max_text_len_tokens, TEXT_TOKENS_ASSUMED) + 1
    hidden = int(d * cfg.mlp_ratio)
    scores = 0 if cuda else 2 * heads * (grid_t * n_s ** 2 + n_s * grid_t ** 2 + tokens * text)  # + softmax
    per_block = tokens * (BLOCK_ACTS_PER_TOKEN_WIDTHS * d + 2 * hidden) + scores
    blocks = per_block * (1 + (depth - 1) * (0 if cfg.activation_checkpointing else 1))
    if cfg.activation_checkpointing:
        blocks += depth * tokens * d  # each block's input, kept to recompute it
    text_acts = (cfg.text_depth + cfg.frame_cond_depth) * (text * (12 * d + 2 * hidden) + (0 if cuda else 2 * heads * text * text))
    pixels = cfg.num_frames * cfg.frame_size_px ** 2
    head = pixels * (6 * cfg.decoder_channels + 12)  # x_up, conv, norm, ReLU, sum, RGB out, inputs
    if cfg.refine_channels:  # per layer: conv out, fp32 norm, modulated, SiLU, running sum; its input
        head += pixels * (5 * cfg.refine_layers * cfg.refine_channels + cfg.decoder_channels + 8)
    if cfg.pixel_temporal_blend:  # the blend in fp32: output, deviations, gate, result; the second fit
        head += pixels * 3 * 6
    acts = micro * (blocks + text_acts + head) * FLOAT_BYTES
    est.parts["activations"] = int(acts * BF16_ACTIVATION_SHARE + est.num_params * 2) if bf16 else acts
    est.detail["activations"] = (f"micro-batch {micro} x {grid_t} x {n_s} video tokens of width {d} through "
                                 f"{depth} blocks, {cfg.num_frames} frames of {cfg.frame_size_px}x"
                                 f"{cfg.frame_size_px} px{', bf16' if bf16 else ''}")

    clip_bytes = 3 * pixels * FLOAT_BYTES
    in_flight = 2 + cfg.num_workers * LOADER_PREFETCH
    data = in_flight * cfg.batch_size * clip_bytes
    detail = f"{in_flight} batches of {cfg.batch_size} clips in flight"
    if cfg.dataset == "synthetic":
        samples = cfg.num_train_samples + 2 * cfg.num_eval_samples
        data += samples * CAPTION_BYTES + cfg.num_train_samples * PERMUTATION_BYTES
        detail += f", captions of {samples} synthetic samples"
    est.parts["data"] = data
    est.detail["data"] = detail
    est.parts["schedule"] = cfg.num_timesteps * SCHEDULE_ARRAYS * 8
    est.detail["schedule"] = f"{cfg.num_timesteps} timesteps"
    return est


def available_memory(device) -> tuple[int | None, str]:
    """(bytes free for this run, where the figure comes from) on `device`; None when unknown."""
    if getattr(device, "type", str(device)) == "cuda":
        import torch

        free, _total = torch.cuda.mem_get_info(device)
        return free, f"free memory of {torch.cuda.get_device_name(device)}"
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "MemAvailable in /proc/meminfo"
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"), "available physical pages"
    except (ValueError, OSError, AttributeError):
        return None, "unknown"


_HINTS = {"parameters": "lower max_text_len_tokens, subword_vocab_size, model_size or mlp_ratio",
          "activations": "lower batch_size (or raise grad_accum_steps), num_frames or frame_size_px, or "
                         "set activation_checkpointing",
          "data": "lower num_train_samples / num_eval_samples, batch_size or num_workers",
          "schedule": "lower num_timesteps"}


DEVICE_PARTS = ("parameters", "activations", "schedule")  # on CUDA these live on the GPU; data on the host


def check_memory(cfg, device, available: int | None = None) -> MemoryEstimate:
    """Raise ConfigError when the estimate exceeds the memory available: the host's (on CPU), or the
    GPU's for the model's parts and the host's for the data (on CUDA). `available` overrides the
    machine's figure (tests). Returns the estimate."""
    from config import ConfigError

    device_type = getattr(device, "type", str(device))
    est = estimate_memory(cfg, device_type=device_type)
    groups = ([("the GPU", DEVICE_PARTS), ("the host", ("data",))] if device_type == "cuda"
              else [("this machine", tuple(est.parts))])
    for where, names in groups:
        need = sum(est.parts[n] for n in names)
        if available is not None:
            have, source = available, "given"
        else:
            have, source = available_memory(device if where == "the GPU" else "cpu")
        if have is not None and need > have:
            part = MemoryEstimate({n: est.parts[n] for n in names}, est.detail, est.num_params)
            raise ConfigError(f"config needs an estimated {_gib(need)} of memory, {where} has "
                              f"{_gib(have)} available ({source}): {part.describe()}; "
                              f"{_HINTS[part.largest()]}")
    return est


def check_disk(cfg, est: MemoryEstimate) -> None:
    """Before the run folder exists: `output_dir` must be (or be creatable as) a writable folder with
    room for keep_checkpoints + 1 checkpoints (the newest kept while the next one is written).
    Raises ConfigError (bad path: exit 2) or OSError (read-only or full disk: exit 1)."""
    import errno

    from config import ConfigError

    path = Path(cfg.output_dir) / cfg.experiment_name
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise ConfigError(f"config key 'output_dir': {cfg.output_dir!r} cannot hold the run folder: "
                          f"{probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise OSError(errno.EROFS if _read_only(probe) else errno.EACCES,
                      "cannot create or write the run folder " + ("(read-only file system)" if _read_only(probe)
                                                                  else "(permission denied)"), str(probe))
    need = est.num_params * FLOAT_BYTES * CHECKPOINT_COPIES * (cfg.keep_checkpoints + 1)
    free = shutil.disk_usage(probe).free
    if free < need:
        raise OSError(errno.ENOSPC, f"not enough free disk space: {_gib(free)} free, the run needs about {_gib(need)} for "
                                    f"{cfg.keep_checkpoints + 1} checkpoints of {_gib(need / (cfg.keep_checkpoints + 1))}",
                      str(probe))


def _read_only(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


if __name__ == "__main__":  # print the estimate of a config: python limits.py --preset gpu
    import sys

    from config import parse_cli

    config, _ = parse_cli(sys.argv[1:])
    e = estimate_memory(config)
    print(f"{_gib(e.total)}: {e.describe()}")
    print(f"available: {_gib(available_memory('cpu')[0] or 0)}")
