"""The pose stage of pose-guided generation: text -> per-frame keypoints -> a rendered pose map.

Sign-language production has long split text -> pose -> video (Stoll et al. 2020, "Text2Sign";
Saunders et al. 2020, "Progressive Transformers"): the hard, low-dimensional part (which hand goes
where, when) is learned as a regression, and the video generator paints a clip that follows it.
Here the split lives inside one denoiser: `PoseStage` reads the text and predicts each frame's
keypoints and their visibility (through a `LengthRegulator`); `render_pose` draws them as image
channels (joints as Gaussian blobs, limbs as Gaussian lines: a stick figure, as pose-guided video
diffusion feeds a skeleton, e.g. ControlNet or Animate Anyone) that join x_t as extra input channels.

Why (docs/experiments.md, row 27): starting the sampler from ground-truth clips noised to t = 20
keeps the signs readable, from pure noise it does not: the denoiser paints readable signs once the
layout is known, and what fails is deciding the layout from text at high noise.

Training feeds the ground-truth keypoints (teacher forcing, invisible points left out of the map and
of the loss) and trains the stage on them; sampling feeds the stage's prediction. The null text of
classifier-free guidance also drops the pose map.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from models.architectures.blocks import MLP, PreNormLayer

# Blob and line radius in frame units: about a glove's radius on the synthetic signer (data/signer.py
# HAND_RADIUS), so a blob covers the few pixels of a hand at 32 px instead of a single one.
HEATMAP_SIGMA = 0.05
# Weight of the squared hand-travel error next to the position MSE (both in frame units). A pure MSE
# regresses to the mean path over the data's random timing and cuts corners (row 30).
TRAVEL_LOSS_WEIGHT = 0.01
# Weight of the visibility cross-entropy next to the position MSE: visibility only decides which
# points are drawn at sampling, so it must not pull the shared features away from positions.
VISIBILITY_LOSS_WEIGHT = 0.01


class LengthRegulator(nn.Module):
    """Text tokens -> one feature per frame through learned, monotonic token durations.

    FastSpeech's length regulator (Ren et al. 2019), made soft so durations train by gradient:
    every token gets a duration (fillers can learn ~0), durations are normalised to the clip, and
    frame f reads the tokens whose span covers its time (f + 0.5) / frames, plus where inside that
    span it is (the sign's phase). Signs follow the word order, so this bias replaces what learned
    frame queries must otherwise discover by attention (docs/experiments.md, row 28).
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
    """Text context -> keypoints (B, frames, points, 2) in frame units [0, 1] and visibility logits
    (B, frames, points).

    After the length regulator, `depth` pre-LN self-attention layers over the clip's frames: each
    frame's features then see the whole sentence's timing (where the neighbouring signs start and
    end, how long this one lasts), which the regulator gives each frame only through its own span.
    Why (docs/experiments.md, row 88): fed the reference keypoints, the demo's video stage reached the
    other-rendering floor of the fvd, so the stage's keypoints made the distance; two such layers buy
    what four times the steps buy without them, for ~1.4% of the step's FLOPs."""

    def __init__(self, width: int, frames: int, num_points: int, mlp_ratio: float, heads: int = 1, depth: int = 0):
        super().__init__()
        self.num_points = num_points
        self.regulator = LengthRegulator(width, frames)
        self.layers = nn.ModuleList(PreNormLayer(width, heads, mlp_ratio) for _ in range(depth))
        self.mlp = nn.Sequential(nn.LayerNorm(width), *MLP(width, mlp_ratio))
        self.head = nn.Linear(width, num_points * 3)
        # Start every point at the frame centre, visible: the loss then only has to learn offsets.
        nn.init.zeros_(self.head.weight)
        with torch.no_grad():
            self.head.bias.view(num_points, 3).copy_(torch.tensor([0.5, 0.5, 2.0]))

    def forward(self, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.regulator(ctx, ctx_mask)
        for layer in self.layers:  # (B, frames, D): attention over the frames
            h = layer(h)
        out = self.head(h + self.mlp(h)).unflatten(-1, (self.num_points, 3))
        return out[..., :2], out[..., 2]


def hand_travel(xy: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
    """(B, T, hands, 2) -> (B,) summed frame-to-frame distance of all hands (frame units), over the
    steps whose both frames are visible when `visible` (B, T, hands) is given."""
    step = (xy[:, 1:] - xy[:, :-1]).norm(dim=-1)
    if visible is not None:
        step = step * (visible[:, 1:] & visible[:, :-1])
    return step.sum(dim=(1, 2))


def pose_losses(pred_xy: torch.Tensor, vis_logits: torch.Tensor, truth_xy: torch.Tensor,
                visible: torch.Tensor, hands: Sequence[int]) -> dict[str, torch.Tensor]:
    """Per clip (B,) terms of the pose stage: `pose_mse`, the position MSE over visible points, and
    `pose`, the loss it trains on: the position MSE of the visible hand centres plus that of the other
    visible points (each a mean of its own, so the hands weigh as much as the rest of the skeleton
    together; docs/experiments.md, row 52) + TRAVEL_LOSS_WEIGHT x squared hand-travel error +
    VISIBILITY_LOSS_WEIGHT x visibility cross-entropy. `hands` index the hand centres among the points."""
    vis = visible.to(pred_xy.dtype)
    sq = ((pred_xy - truth_xy) ** 2).sum(-1) * vis  # (B, T, P)

    def mse_over(points) -> torch.Tensor:  # per clip, over the visible ones of `points` (0 if none)
        return sq[:, :, points].sum(dim=(1, 2)) / (2 * vis[:, :, points].sum(dim=(1, 2)).clamp(min=1.0))

    hands = list(hands)
    body = [p for p in range(pred_xy.shape[2]) if p not in hands]
    mse = mse_over(slice(None))
    travel = hand_travel(pred_xy[:, :, hands], visible[:, :, hands]) - hand_travel(truth_xy[:, :, hands], visible[:, :, hands])
    bce = F.binary_cross_entropy_with_logits(vis_logits, vis, reduction="none").mean(dim=(1, 2))
    return dict(pose_mse=mse, pose=mse_over(hands) + mse_over(body) + TRAVEL_LOSS_WEIGHT * travel**2 + VISIBILITY_LOSS_WEIGHT * bce)


def render_pose(xy: torch.Tensor, visible: torch.Tensor, groups: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]],
                size_px: int, sigma: float = HEATMAP_SIGMA) -> torch.Tensor:
    """(B, T, P, 2) keypoints in frame units and (B, T, P) visibility -> (B, C, T, size_px, size_px)
    maps in [0, 1], one channel per group (joints, limbs): the max over the group of each joint's
    Gaussian blob and each limb's Gaussian line (distance to the segment). Invisible joints, and limbs
    touching one, are not drawn."""
    grid = (torch.arange(size_px, device=xy.device, dtype=xy.dtype) + 0.5) / size_px
    gx, gy = grid.view(1, 1, 1, 1, -1), grid.view(1, 1, 1, -1, 1)  # (1, 1, 1, 1, W), (1, 1, 1, H, 1)
    vis = visible.to(xy.dtype)
    channels = []
    for joints, limbs in groups:
        joints = list(joints)
        p = xy[:, :, joints, None, None]  # (B, T, J, 1, 1, 2)
        d2 = (gx - p[..., 0]) ** 2 + (gy - p[..., 1]) ** 2  # (B, T, J, H, W)
        maps = torch.exp(d2 / (-2 * sigma * sigma)) * vis[:, :, joints, None, None]
        if limbs:
            a_idx, b_idx = [a for a, _ in limbs], [b for _, b in limbs]
            a, b = xy[:, :, a_idx, None, None], xy[:, :, b_idx, None, None]
            ab = b - a
            u = (((gx - a[..., 0]) * ab[..., 0] + (gy - a[..., 1]) * ab[..., 1])
                 / (ab ** 2).sum(-1).clamp(min=1e-9)).clamp(0, 1)
            dl2 = (gx - a[..., 0] - u * ab[..., 0]) ** 2 + (gy - a[..., 1] - u * ab[..., 1]) ** 2
            lines = torch.exp(dl2 / (-2 * sigma * sigma)) * (vis[:, :, a_idx] * vis[:, :, b_idx])[..., None, None]
            maps = torch.cat([maps, lines], dim=2)
        channels.append(maps.amax(dim=2))
    return torch.stack(channels, dim=1)
