"""The pose stage of pose-guided generation: text -> per-frame hand positions -> heatmaps.

Sign-language production has long split text -> pose -> video (Stoll et al. 2020, "Text2Sign";
Saunders et al. 2020, "Progressive Transformers"): the hard, low-dimensional part (which hand goes
where, when) is learned as a regression, and the video generator paints a clip that follows it.
Here the split lives inside one denoiser: `PoseStage` reads the text and predicts each frame's hand
centres (through a `LengthRegulator`); `hand_heatmaps` draws them as Gaussian blobs that join x_t
as extra input channels (the way pose-guided video diffusion feeds a skeleton, e.g. ControlNet or
Animate Anyone).

Why (docs/experiments.md, row 27): starting the demo's sampler from ground-truth clips noised to
t = 20 gave back-translated gloss accuracy 0.80, from pure noise 0.12: the denoiser paints readable
signs once the layout is known, and what fails is deciding the layout from text at high noise.

Training feeds the ground-truth positions (teacher forcing) and trains the stage on them; sampling
feeds the stage's prediction. The null text of classifier-free guidance also drops the heatmaps.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

# Blob radius in frame units: about a glove's radius (0.047-0.062 in data/signer.py), so a blob
# covers the few pixels of a hand at 32 px instead of a single one.
HEATMAP_SIGMA = 0.05
NUM_HANDS = 2
# Weight of the squared hand-travel error next to the position MSE (both in frame units). A pure
# MSE regresses to the mean path over the data's random timing and cuts corners: in a probe its
# predicted tracks travelled 0.80-0.84 of the reference; with this term 0.96-1.04 at the same
# position error (1.87 vs 1.96 px after 1000 steps; docs/experiments.md, row 30).
TRAVEL_LOSS_WEIGHT = 0.01


class LengthRegulator(nn.Module):
    """Text tokens -> one feature per frame through learned, monotonic token durations.

    FastSpeech's length regulator (Ren et al. 2019), made soft so durations train by gradient:
    every token gets a duration (fillers can learn ~0), durations are normalised to the clip, and
    frame f reads the tokens whose span covers its time (f + 0.5) / frames, plus where inside that
    span it is (the sign's phase). Signs follow the word order, so this bias replaces what learned
    frame queries must otherwise discover by attention: in a 1000-step probe a FrameAligner-based
    stage got 4.9 -> 2.2 px RMS hand error, this one 1.8 px (the jitter of the data leaves ~1.5;
    docs/experiments.md, row 28).
    """

    def __init__(self, width: int, frames: int, phase_freqs: int = 8):
        super().__init__()
        self.frames = frames
        self.duration = nn.Linear(width, 1)
        self.register_buffer("freqs", math.pi * torch.arange(1, phase_freqs + 1).float(), persistent=False)
        self.phase = nn.Linear(2 * phase_freqs, width)
        # Boundary softness: a token's span edge ramps (12% -> 88%) over about two thirds of a frame.
        self.sharpness = 3.0 * frames

    def forward(self, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        """ctx (B, S, D) with the start token first, ctx_mask (B, S) -> (B, frames, D)."""
        words = ctx_mask.clone()
        words[:, 0] = False  # the start token holds no time
        dur = F.softplus(self.duration(ctx).squeeze(-1)) * words
        total = dur.sum(1, keepdim=True).clamp(min=1e-6)
        end = dur.cumsum(1) / total  # (B, S) span ends in clip time [0, 1]
        start = end - dur / total
        time = (torch.arange(self.frames, device=ctx.device, dtype=ctx.dtype) + 0.5) / self.frames
        time = time[None, :, None]  # (1, frames, 1)
        inside = torch.sigmoid((time - start[:, None]) * self.sharpness) * torch.sigmoid(
            (end[:, None] - time) * self.sharpness) * words[:, None]
        weights = inside / inside.sum(-1, keepdim=True).clamp(min=1e-6)  # (B, frames, S)
        phase = ((time - start[:, None]) / (end - start)[:, None].clamp(min=1e-6)).clamp(0, 1)
        phase = (weights * phase).sum(-1, keepdim=True)  # (B, frames, 1): where in the sign
        angles = phase * self.freqs
        return weights @ ctx + self.phase(torch.cat([angles.sin(), angles.cos()], dim=-1))


class PoseStage(nn.Module):
    """Text context -> hand centres (B, frames, NUM_HANDS, 2), (x, y) in frame units [0, 1]."""

    def __init__(self, width: int, frames: int, mlp: Callable[[int, float], nn.Sequential], mlp_ratio: float):
        """`mlp(width, mlp_ratio)`: the denoiser's transformer MLP (passed in: vivit.py imports this file)."""
        super().__init__()
        self.regulator = LengthRegulator(width, frames)
        self.mlp = nn.Sequential(nn.LayerNorm(width), *mlp(width, mlp_ratio))
        self.head = nn.Linear(width, NUM_HANDS * 2)
        # Start at the frame centre: the loss then only has to learn offsets.
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, 0.5)

    def forward(self, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        h = self.regulator(ctx, ctx_mask)
        return self.head(h + self.mlp(h)).unflatten(-1, (NUM_HANDS, 2))


def hand_travel(hand_xy: torch.Tensor) -> torch.Tensor:
    """(B, T, hands, 2) -> (B,) summed frame-to-frame distance of all hands (frame units)."""
    return (hand_xy[:, 1:] - hand_xy[:, :-1]).norm(dim=-1).sum(dim=(1, 2))


def pose_losses(pred: torch.Tensor, truth: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per clip (B,): (position MSE, position MSE + TRAVEL_LOSS_WEIGHT x squared travel error)."""
    mse = ((pred - truth) ** 2).mean(dim=(1, 2, 3))
    return mse, mse + TRAVEL_LOSS_WEIGHT * (hand_travel(pred) - hand_travel(truth)) ** 2


def hand_heatmaps(hand_xy: torch.Tensor, size_px: int, sigma: float = HEATMAP_SIGMA) -> torch.Tensor:
    """(B, T, hands, 2) centres in frame units -> (B, hands, T, size_px, size_px) blobs in [0, 1]."""
    grid = (torch.arange(size_px, device=hand_xy.device, dtype=hand_xy.dtype) + 0.5) / size_px
    x = hand_xy[..., 0].transpose(1, 2)[..., None, None]  # (B, hands, T, 1, 1)
    y = hand_xy[..., 1].transpose(1, 2)[..., None, None]
    dist2 = (grid.view(1, 1, 1, 1, -1) - x) ** 2 + (grid.view(1, 1, 1, -1, 1) - y) ** 2
    return torch.exp(dist2 / (-2 * sigma * sigma))
