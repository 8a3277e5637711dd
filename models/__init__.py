"""Model builder: one `build_model(cfg, vocab_size)` used by training, diagnostics and tests.

`cfg` is read for its model keys only (no import of config: config imports the size registry)."""
from __future__ import annotations

import torch

from data.skeleton import stage_layout
from diffusion.gaussian import Schedule
from models.architectures.vivit import MODEL_SIZES, ViViTDenoiser

__all__ = ["MODEL_SIZES", "ViViTDenoiser", "build_model", "has_temporal_blend", "model_kwargs"]


def model_kwargs(cfg, vocab_size: int) -> dict:
    """ViViTDenoiser's constructor arguments for `cfg` (its size from MODEL_SIZES[cfg.model_size])."""
    size = MODEL_SIZES[cfg.model_size]
    points, groups, hands = stage_layout(cfg.pose_skeleton)
    return dict(
        vocab_size=vocab_size, num_frames=cfg.num_frames, frame_size_px=cfg.frame_size_px,
        patch_size_px=cfg.patch_size_px, tubelet_frames=cfg.tubelet_frames, width=size["width"],
        depth=size["depth"], heads=size["heads"], mlp_ratio=cfg.mlp_ratio, text_depth=cfg.text_depth,
        frame_cond_depth=cfg.frame_cond_depth, max_text_len_tokens=cfg.max_text_len_tokens,
        decoder_channels=cfg.decoder_channels, final_norm=cfg.final_norm,
        output_scale_init=cfg.output_scale_init, temporal_modulation_weight=cfg.temporal_modulation_weight,
        activation_checkpointing=cfg.activation_checkpointing, pose_cond=cfg.pose_cond,
        pose_points=points, pose_groups=groups, pose_hands=hands, pose_depth=cfg.pose_depth,
        refine_channels=cfg.refine_channels,
        refine_layers=cfg.refine_layers, norm_over_clip=cfg.pixel_norm_over_clip,
        temporal_blend_ratio=temporal_blend_ratio(cfg) if has_temporal_blend(cfg) else None)


def has_temporal_blend(cfg) -> bool:
    """Whether `cfg`'s model blends toward the clip mean; the historical model (`residual_input`) never
    does, as the seed did not. The objective reads the same answer (it fits the unblended output too)."""
    return cfg.pixel_temporal_blend and not cfg.residual_input


def temporal_blend_ratio(cfg) -> list[float]:
    """σ_d/σ(t) = σ_d·√SNR(t) per timestep: what turns the clip-mean deviation of the network's input
    (c_in·x̃) into the output space of EDM's F (ViViTDenoiser.blend_toward_clip_mean)."""
    sched = Schedule.create(cfg.beta_schedule, cfg.num_timesteps, cfg.zero_terminal_snr)
    return (cfg.sigma_data * sched.snr(torch.arange(cfg.num_timesteps)).sqrt()).tolist()


def build_model(cfg, vocab_size: int) -> ViViTDenoiser:
    """The denoiser of `cfg`; with `residual_input` the historical variant the diagnostics reproduce."""
    if cfg.residual_input:
        from evaluation.historical import HistoricalDenoiser  # diagnostics only, never the recipe

        return HistoricalDenoiser(**model_kwargs(cfg, vocab_size))
    return ViViTDenoiser(**model_kwargs(cfg, vocab_size))
