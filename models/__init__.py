"""Model builder: one `build_model(cfg, vocab_size)` used by training, diagnostics and tests.

`cfg` is read for its model keys only (no import of config: config imports the size registry)."""
from __future__ import annotations

from data.skeleton import stage_layout
from models.architectures.vivit import MODEL_SIZES, ViViTDenoiser

__all__ = ["MODEL_SIZES", "ViViTDenoiser", "build_model", "model_kwargs"]


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
        pose_points=points, pose_groups=groups, pose_hands=hands, refine_channels=cfg.refine_channels,
        refine_layers=cfg.refine_layers, norm_over_clip=cfg.pixel_norm_over_clip)


def build_model(cfg, vocab_size: int) -> ViViTDenoiser:
    """The denoiser of `cfg`; with `residual_input` the historical variant the diagnostics reproduce."""
    if cfg.residual_input:
        from evaluation.historical import HistoricalDenoiser  # diagnostics only, never the recipe

        return HistoricalDenoiser(**model_kwargs(cfg, vocab_size))
    return ViViTDenoiser(**model_kwargs(cfg, vocab_size))
