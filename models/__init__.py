"""Model builders: one `build_model(cfg, vocab_size)` used by training, diagnostics and tests."""
from __future__ import annotations

from config import Config
from models.architectures.vivit import MODEL_SIZES, ViViTDenoiser

# Config keys that shape the model's parameters: a checkpoint must agree on all of them.
MODEL_KEYS = ("model_size", "num_frames", "frame_size_px", "patch_size_px", "tubelet_frames",
              "mlp_ratio", "text_depth", "frame_cond_depth", "long_skips", "max_text_len_tokens",
              "decoder_channels", "final_norm", "residual_input", "prediction_type", "num_timesteps", "beta_schedule",
              "zero_terminal_snr", "pose_cond")


def build_model(cfg: Config, vocab_size: int) -> ViViTDenoiser:
    """The ViViT denoiser for `cfg` (its size from MODEL_SIZES[cfg.model_size])."""
    size = MODEL_SIZES[cfg.model_size]
    return ViViTDenoiser(
        vocab_size=vocab_size, num_frames=cfg.num_frames, frame_size_px=cfg.frame_size_px,
        patch_size_px=cfg.patch_size_px, tubelet_frames=cfg.tubelet_frames, width=size["width"],
        depth=size["depth"], heads=size["heads"], mlp_ratio=cfg.mlp_ratio, text_depth=cfg.text_depth,
        frame_cond_depth=cfg.frame_cond_depth,
        max_text_len_tokens=cfg.max_text_len_tokens, decoder_channels=cfg.decoder_channels,
        final_norm=cfg.final_norm, output_scale_init=cfg.output_scale_init,
        temporal_modulation_weight=cfg.temporal_modulation_weight,
        residual_input=cfg.residual_input, activation_checkpointing=cfg.activation_checkpointing,
        long_skips=cfg.long_skips, pose_cond=cfg.pose_cond)
