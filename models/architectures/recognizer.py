"""The pose -> gloss recogniser's network: residual temporal convolutions over skeleton frames, CTC logits.

Used by evaluation/recognizer.py (training, decoding, the file); pure nn.Modules, no I/O.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class _ConvBlock(nn.Module):
    def __init__(self, width: int, kernel_frames: int):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.conv = nn.Conv1d(width, width, kernel_frames, padding=kernel_frames // 2)
        self.mix = nn.Conv1d(width, width, 1)

    def forward(self, h: torch.Tensor, frame_mask: torch.Tensor) -> torch.Tensor:
        """h (B, T, C), frame_mask (B, T, 1): padded frames are zeroed before the convolution."""
        x = (self.norm(h) * frame_mask).transpose(1, 2)
        return h + self.mix(F.gelu(self.conv(x))).transpose(1, 2)


class PoseCTCRecognizer(nn.Module):
    """Normalised skeleton clips xy (B, T, J, 2) + visible (B, T, J) bool + lengths (B,) (frames in
    use; later ones are padding) -> CTC logits (B, T, vocab_size + 1), class 0 the blank. A frame's
    input is (x, y) * visible and visible per point, so a lost point is not a point at (0, 0)."""

    def __init__(self, num_points: int, vocab_size: int, width: int, depth: int, kernel_frames: int):
        super().__init__()
        if kernel_frames % 2 == 0:
            raise ValueError(f"kernel_frames must be odd (centred), got {kernel_frames}")
        self.num_points = num_points
        self.embed = nn.Linear(3 * num_points, width)
        self.blocks = nn.ModuleList(_ConvBlock(width, kernel_frames) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, vocab_size + 1)

    def forward(self, xy: torch.Tensor, visible: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        b, t, j, _ = xy.shape
        if j != self.num_points or visible.shape != (b, t, j) or lengths.shape != (b,):
            raise ValueError(f"expected xy (B, T, {self.num_points}, 2), visible (B, T, J), lengths (B,); got "
                             f"{tuple(xy.shape)}, {tuple(visible.shape)}, {tuple(lengths.shape)}")
        vis = visible.float()
        frame_mask = (torch.arange(t, device=xy.device)[None] < lengths[:, None]).float()[..., None]
        h = self.embed(torch.cat([xy * vis[..., None], vis[..., None]], -1).reshape(b, t, 3 * j))
        for block in self.blocks:
            h = block(h * frame_mask, frame_mask)
        return self.head(self.norm(h))
