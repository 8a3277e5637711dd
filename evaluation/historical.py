"""The historical ViViT denoiser's bug, kept only so the diagnostics can reproduce it.

The earlier project's denoiser added its input back: `out = final_conv(x_up) + x`. For an eps model
that is right where x_t ≈ noise (high t) and wrong where x_t ≈ x0 (low t): its samples were pure
noise (docs/diagnostics.md tells the story). Its head saw only x_up; with the model input as well,
the head could learn to cancel the residual and the diagnostics could not reproduce the failure.
Built by `models.build_model` when `residual_input` is set; never part of the recipe.
"""
from __future__ import annotations

import torch

from models.architectures.vivit import FinalProjection, ViViTDenoiser


class HistoricalDenoiser(ViViTDenoiser):
    """ViViTDenoiser with the input residual and the input-blind head (`residual_input=True`)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.head = FinalProjection(self.decoder_channels, kwargs["final_norm"], input_channels=0)
        self.norm_over_clip = False  # the seed's head normalised each frame alone

    def forward(self, x: torch.Tensor, *args, **kwargs):
        out = super().forward(x, *args, **kwargs)
        if isinstance(out, tuple):
            return out[0] + x, out[1]
        return out + x
