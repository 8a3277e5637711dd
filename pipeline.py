"""What training, evaluation and the diagnostics share: loading a run, encoding prompts, sampling,
and writing sample videos. One copy, imported everywhere (STYLE.md: diagnostics import, never copy).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist

import cli
from checkpoint import CheckpointError, load_checkpoint, load_latest, load_weights
from config import Config, ConfigError, config_from_dict
from data import build_dataset
from data import skeleton
from data.pose_io import write_pose
from data.text import Tokenizer, check_prompts, tokenizer_from_state
from data.video_io import to_uint8_frames, upscale, write_gif, write_mp4
from diffusion import GaussianDiffusion, build_diffusion
from models import build_model
from models.architectures.vivit import ViViTDenoiser
from training import choose_precision


def run_dir(cfg: Config) -> Path:
    return Path(cfg.output_dir) / cfg.experiment_name


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("config key 'device'='cuda' but no CUDA device is available (use cpu or auto)")
    return torch.device(name)


def init_distributed(device: torch.device) -> tuple[torch.device, int, int]:
    """(device, rank, world) of this process: under torchrun (RANK set) it joins the process group
    (NCCL on CUDA, each rank on its LOCAL_RANK's GPU; gloo on CPU); otherwise rank 0 of 1."""
    if "RANK" not in os.environ:
        return device, 0, 1
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, dist.get_rank(), dist.get_world_size()


def add_run_arguments(parser, *, required: bool = False) -> None:
    """The flags every script that reads a trained run shares, spelled the same everywhere."""
    src = parser.add_mutually_exclusive_group(required=required)
    src.add_argument("--experiment", help="run name under --output_dir (its latest checkpoint)")
    src.add_argument("--checkpoint", help="path to a checkpoint file")
    parser.add_argument("--output_dir", default="experiments", help="parent folder of run folders")
    parser.add_argument("--raw", action="store_true", help="the raw weights instead of the EMA")
    parser.add_argument("--seed", type=cli.seed, default=0, help="seed of the sampling / evaluation noise")
    parser.add_argument("--json", help="also write the results to this file")


@dataclass
class Clips:
    """The first n clips of a split, stacked: what the diagnostics and the evaluation score on."""

    items: list[dict[str, Any]]
    videos: torch.Tensor  # (N, 3, T, H, W) float in [-1, 1]
    captions: list[str]
    pose_xy: torch.Tensor | None  # (N, T, J, 2) frame units, where the data has keypoints
    pose_visible: torch.Tensor | None  # (N, T, J) bool


def first_clips(cfg: Config, split: str, n: int = 0) -> Clips:
    """The first `n` clips of `split` (all of them if n <= 0), in index order: fixed clips, so two
    runs or two models are scored on the same ones."""
    dataset = build_dataset(cfg, split)
    count = len(dataset) if n <= 0 else min(n, len(dataset))
    items = [dataset[i] for i in range(count)]
    has_pose = "pose_xy" in items[0]
    return Clips(items=items, videos=torch.stack([it["video"] for it in items]).float(),
                 captions=[it["caption"] for it in items],
                 pose_xy=torch.stack([it["pose_xy"] for it in items]).float() if has_pose else None,
                 pose_visible=torch.stack([it["pose_visible"] for it in items]) if has_pose else None)


@dataclass
class LoadedRun:
    cfg: Config
    model: ViViTDenoiser  # EMA weights unless loaded with use_ema=False; in eval mode
    diffusion: GaussianDiffusion
    tokenizer: Tokenizer
    step: int
    path: Path


def load_run(*, experiment: str | None = None, checkpoint: str | None = None,
             output_dir: str = "experiments", device: str | torch.device = "cpu",
             use_ema: bool = True) -> LoadedRun:
    """Rebuild model, diffusion and tokenizer from a checkpoint alone (no flags needed)."""
    if checkpoint:
        path = Path(checkpoint)
        if not path.is_file():
            raise CheckpointError(f"--checkpoint {checkpoint}: file not found")
        state = load_checkpoint(path, "cpu")
    elif experiment:
        found = load_latest(Path(output_dir) / experiment, "cpu")
        if found is None:
            raise CheckpointError(f"--experiment {experiment}: no checkpoint in {Path(output_dir) / experiment}"
                                  "/checkpoints (train it first: python main.py --experiment_name "
                                  f"{experiment})")
        state, path = found
    else:
        raise ValueError("give an experiment name or a checkpoint path")
    try:
        cfg = config_from_dict(state["config"])
    except ConfigError as exc:
        raise CheckpointError(f"{path}: {exc}") from None
    tokenizer = tokenizer_from_state(state["tokenizer"])
    model = build_model(cfg, len(tokenizer))
    load_weights(model, state["ema" if use_ema else "model"], path)
    device = torch.device(device)
    model.to(device).eval()
    return LoadedRun(cfg, model, build_diffusion(cfg, device), tokenizer, int(state["step"]), path)


def encode_prompts(tokenizer: Tokenizer, prompts: list[str], max_len: int,
                   device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens for user prompts, with the documented behaviour for odd input.

    An empty prompt, or one whose first max_len tokens are all unknown to the training vocabulary,
    is rejected (ValueError naming it): the model would silently produce an arbitrary sign. Unknown
    words inside a prompt map to <unk> with a warning; prompts longer than max_len tokens are
    truncated with a warning (data.text.check_prompts).
    """
    check_prompts(tokenizer, prompts, max_len)
    tokens, mask = tokenizer.batch(prompts, max_len)
    return tokens.to(device), mask.to(device)


@torch.no_grad()
def generate(model: torch.nn.Module, diffusion: GaussianDiffusion, tokenizer: Tokenizer,
             prompts: list[str], cfg: Config, *, seed: int = 0, sampler: str | None = None,
             steps: int | None = None, eta: float | None = None, guidance_scale: float | None = None,
             callback: Callable | None = None, batch_size: int = 16,
             init: torch.Tensor | None = None, start_t: int | None = None) -> torch.Tensor:
    """Sample one video per prompt: (len(prompts), 3, T, H, W) in [-1, 1] on the CPU.

    Defaults come from the config; the noise is drawn from a generator seeded by `seed`, so the same
    prompts and seed give the same videos. `init` (one clean clip per prompt) and `start_t`: start
    from those clips noised to step start_t (SDEdit; see Text2SignDiffusion.sample).
    Runs under the config's precision choice (training.choose_precision): bf16 autocast where the
    hardware has bf16 matrix units, with the same evaluation figures as fp32 (docs/performance.md, round 6).
    """
    device = next(model.parameters()).device
    precision = choose_precision(cfg, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    was_training = model.training
    model.eval()
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start:start + batch_size]
        tokens, mask = encode_prompts(tokenizer, chunk, cfg.max_text_len_tokens, device)
        shape = (len(chunk), 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
        with precision.autocast(device):
            video = diffusion.sample(
                model, tokens, mask, shape, sampler=sampler or cfg.sampler,
                steps=steps or cfg.sampling_steps, eta=cfg.ddim_eta if eta is None else eta,
                guidance_scale=cfg.guidance_scale if guidance_scale is None else guidance_scale,
                generator=gen, callback=callback, start_t=start_t,
                init=None if init is None else init[start:start + batch_size])
        out.append(video.float().cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def predict_keypoints(model: torch.nn.Module, tokenizer: Tokenizer, prompts: list[str], cfg: Config, *,
                      no_text: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """The pose stage's skeleton for each prompt, on the CPU: xy (N, T, J, 2) in frame units and
    visible (N, T, J) bool over data/skeleton.py's J points (those the stage does not predict are
    invisible). `no_text`: the stage under the null text (the no-text control). Milliseconds: no
    video is denoised."""
    device = next(model.parameters()).device
    tokens, mask = encode_prompts(tokenizer, prompts, cfg.max_text_len_tokens, device)
    drop = torch.ones(len(prompts), dtype=torch.bool, device=device) if no_text else None
    was_training = model.training
    model.eval()
    pred, pred_visible = model.predict_pose(tokens, mask, drop)
    model.train(was_training)
    xy = torch.zeros(len(prompts), cfg.num_frames, skeleton.NUM_POINTS, 2)
    visible = torch.zeros(len(prompts), cfg.num_frames, skeleton.NUM_POINTS, dtype=torch.bool)
    xy[:, :, model.pose_points] = pred.float().cpu()
    visible[:, :, model.pose_points] = pred_visible.cpu()
    return xy, visible


def video_grid(videos: torch.Tensor, pad_px: int = 1) -> torch.Tensor:
    """(B,3,T,H,W) -> (3,T,H,B*W + gaps): clips side by side, separated by white columns."""
    b, c, t, h, w = videos.shape
    grid = torch.ones(c, t, h, b * w + (b - 1) * pad_px)
    for i in range(b):
        grid[..., i * (w + pad_px): i * (w + pad_px) + w] = videos[i]
    return grid


def save_samples(stem: str | os.PathLike, videos: torch.Tensor, fps: int = 8, scale: int = 4,
                 poses: tuple[torch.Tensor, torch.Tensor] | None = None, frame_size_px: int = 0) -> list[Path]:
    """Write a side-by-side grid of `videos` as stem.gif and stem.mp4, and with `poses` (xy (N, T, J, 2),
    visible (N, T, J) from predict_keypoints) each video's predicted skeleton as stem_pNN.pose
    (pose-format, frames of frame_size_px); returns the paths."""
    grid = video_grid(videos)
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    gif, mp4 = stem.with_suffix(".gif"), stem.with_suffix(".mp4")
    frames = upscale(to_uint8_frames(grid), scale)
    write_gif(str(gif), frames, fps=fps)
    write_mp4(str(mp4), frames, fps=fps)
    paths = [gif, mp4]
    for i, (xy, visible) in enumerate(zip(*poses) if poses is not None else ()):
        path = stem.with_name(f"{stem.name}_p{i:02d}.pose")
        write_pose(str(path), xy, visible, fps, (frame_size_px, frame_size_px))
        paths.append(path)
    return paths
