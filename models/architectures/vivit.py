"""The ViViT denoiser: factorized space-time transformer over all tokens, text cross-attention,
a pose-map input, and a pixel-space head.

Timestep conditioning is adaLN: the sinusoidal timestep embedding (plus the pooled text, plus, when
`frame_cond_depth` > 0, one text vector per frame from `FrameAligner`) goes through an MLP to
per-block, per-frame shift/scale/gate vectors. The shift and scale enter with weight
`temporal_modulation_weight`; the gates are zero-initialised (DiT's adaLN-Zero) so every block starts
as the identity. The transformer parts live in blocks.py, the pose stage in pose.py.

The decoder turns tokens back into pixel-space features `x_up` (decoder_channels per pixel), then
the final projection: 5x5 conv (which also sees the model input), normalization, ReLU, 5x5 output
conv, times a learnable `output_scale`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.architectures.blocks import Block, FrameAligner, TextEncoder, modulate, timestep_embedding
from models.architectures.pose import PoseStage, pose_losses, render_pose

# Size registry: width (channels per token), depth (blocks), heads. DiT-style names.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=32, depth=2, heads=2),
    "S": dict(width=128, depth=6, heads=4),
    "M": dict(width=192, depth=8, heads=6),
    "B": dict(width=384, depth=12, heads=6),
}


@dataclass
class Condition:
    """The text's (and the pose stage's) part of a forward pass (`ViViTDenoiser.encode_condition`):
    ctx/ctx_mask the text tokens (B, S, D)/(B, S) the blocks attend to, text_vec (B, D) the pooled
    text's share of the adaLN vector, frame_vec (B, T', D) FrameAligner's or None, maps
    (B, groups, T, H, W) the pose map or None, and the pose stage's outputs behind it (pred_xy,
    vis_logits) with the keypoints drawn (shown, shown_vis)."""
    ctx: torch.Tensor
    ctx_mask: torch.Tensor
    text_vec: torch.Tensor
    frame_vec: torch.Tensor | None
    maps: torch.Tensor | None
    pred_xy: torch.Tensor | None = None
    vis_logits: torch.Tensor | None = None
    shown: torch.Tensor | None = None
    shown_vis: torch.Tensor | None = None



def clip_norm(norm: nn.Module, z: torch.Tensor, frames: int) -> torch.Tensor:
    """`norm` (GroupNorm/BatchNorm) of z (B*T, C, H, W) in fp32 with statistics over each run of
    `frames` frames: T (the clip) or 1 (each frame alone, the legacy span). Why the clip: per-frame
    statistics move with the arms, so the still background's output shifts with them, a frame-wide
    brightness pumping (docs/experiments.md, row 67); video U-Nets normalise over the clip
    (GroupNorm on (B, C, T, H, W)). On channels-last memory the reshapes are views. (BatchNorm's
    statistics span the batch and every frame either way.)"""
    bt, c, h, w = z.shape
    b = bt // frames
    y = norm(z.float().view(b, frames, c, h, w).transpose(1, 2).reshape(b, c, frames * h, w))
    return y.view(b, c, frames, h, w).transpose(1, 2).reshape(bt, c, h, w)


class FinalProjection(nn.Module):
    """The head: 5x5 conv, norm, ReLU (residual on x_up), 5x5 conv to RGB.

    The first conv also sees the model input (x_t and the pose map): a learned, local skip (what a
    U-Net's long skip gives). At low noise the clean frame is x_t minus a little noise, which a token
    that must emit a whole patch through `width` numbers cannot reproduce to the noise level; a 5x5
    conv on x_t can (docs/experiments.md, row 2). Unlike the historical bug (evaluation/historical.py:
    the input added to the output at every noise level) the head learns how much of x_t to use.
    """

    def __init__(self, channels: int, norm: str, input_channels: int = 3):
        super().__init__()
        self.sees_input = input_channels > 0
        self.conv = nn.Conv2d(channels + input_channels, channels, 5, padding=2)
        if norm == "group":
            self.norm = nn.GroupNorm(min(8, channels), channels)
        elif norm == "batch":
            self.norm = nn.BatchNorm2d(channels)
        else:
            raise ValueError(f"final_norm must be 'group' or 'batch', got {norm!r}")
        self.out = nn.Conv2d(channels, 3, 5, padding=2)
        nn.init.zeros_(self.out.weight)  # untrained model outputs 0 (field notes, item 5)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_up: torch.Tensor, x_in: torch.Tensor, norm_frames: int) -> torch.Tensor:
        """x_up (B*T, C, H, W), x_in (B*T, input_channels, H, W) -> (B*T, 3, H, W); the norm's
        statistics span `norm_frames` frames (`clip_norm`)."""
        h = self.conv(torch.cat([x_up, x_in], dim=1) if self.sees_input else x_up)
        # The norm in fp32: under bf16 autocast, GroupNorm on channels-last activations takes a slow
        # path in torch (docs/performance.md, round 6).
        return self.out(x_up + F.relu(clip_norm(self.norm, h, norm_frames)).to(h.dtype))


class PixelRefiner(nn.Module):
    """A full-resolution path beside the head: `layers` 3x3 convs of `channels` over the pixel features
    and the model input, each normalised and modulated per frame by the conditioning vector (FiLM), so
    it knows the noise level; zero-initialised output (the model still starts at 0).

    Why: with EDM's preconditioning the network's output at low noise is mostly the noise to remove,
    a pixel-level field that tokens of whole patches cannot carry (field notes, items 11 and 14); a
    few convs on x_t can, once they know how much of x_t is noise (docs/experiments.md, rows 40-44).
    """

    def __init__(self, in_channels: int, channels: int, layers: int, cond_width: int, out_channels: int = 3):
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(in_channels if i == 0 else channels, channels, 3, padding=1)
                                   for i in range(layers))
        self.norms = nn.ModuleList(nn.GroupNorm(min(8, channels), channels, affine=False) for _ in range(layers))
        self.film = nn.Sequential(nn.SiLU(), nn.Linear(cond_width, 2 * channels * layers))
        nn.init.zeros_(self.film[1].weight)
        nn.init.zeros_(self.film[1].bias)
        self.out = nn.Conv2d(channels, out_channels, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, feats: torch.Tensor, cond: torch.Tensor, norm_frames: int) -> torch.Tensor:
        """feats (B*T, in_channels, H, W), cond (B*T, cond_width) -> (B*T, 3, H, W); the norms'
        statistics span `norm_frames` frames (`clip_norm`)."""
        film = self.film(cond)[:, :, None, None].chunk(2 * len(self.convs), dim=1)
        h = None
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            z = conv(feats if h is None else h)
            # fp32 norm: the slow bf16 channels-last GroupNorm path, as in FinalProjection
            normed = clip_norm(norm, z, norm_frames).to(z.dtype)
            y = F.silu(torch.addcmul(film[2 * i + 1], normed, 1 + film[2 * i]))
            h = y if h is None else h + y
        return self.out(h)


class ViViTDenoiser(nn.Module):
    """Text-conditioned video denoiser. forward(x (B,3,T,H,W), t (B,), tokens, mask) -> (B,3,T,H,W).

    With `pose_cond`, a pose stage predicts the keypoints `pose_points` (indices into the data's
    skeleton arrays, data/skeleton.py), and `pose_groups` (per map channel: joint and limb indices
    into pose_points) says how they are drawn; `pose_hands` are the hand centres among pose_points.
    """

    def __init__(self, *, vocab_size: int, num_frames: int, frame_size_px: int, patch_size_px: int,
                 tubelet_frames: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 text_depth: int, frame_cond_depth: int, max_text_len_tokens: int,
                 decoder_channels: int, final_norm: str, output_scale_init: float,
                 temporal_modulation_weight: float, activation_checkpointing: bool = False,
                 pose_cond: bool = False, pose_points: Sequence[int] = (),
                 pose_groups: Sequence[tuple[Sequence[int], Sequence[tuple[int, int]]]] = (),
                 pose_hands: Sequence[int] = (), pose_depth: int = 0, refine_channels: int = 0, refine_layers: int = 3,
                 norm_over_clip: bool = False, temporal_blend_ratio: Sequence[float] | None = None):
        super().__init__()
        if frame_size_px % patch_size_px or num_frames % tubelet_frames:
            raise ValueError("frame_size_px / num_frames must be divisible by patch / tubelet size")
        if pose_cond and not (pose_points and pose_groups and pose_hands):
            raise ValueError("pose_cond needs pose_points, pose_groups and pose_hands")
        self.num_frames, self.frame_size_px = num_frames, frame_size_px
        self.patch, self.tubelet, self.width = patch_size_px, tubelet_frames, width
        self.grid_t, self.grid_s = num_frames // tubelet_frames, frame_size_px // patch_size_px
        self.decoder_channels = decoder_channels
        self.activation_checkpointing = activation_checkpointing
        self.pose_points = list(pose_points) if pose_cond else []
        self.pose_groups = [(list(j), [tuple(limb) for limb in limbs]) for j, limbs in pose_groups] if pose_cond else []
        self.pose_hands = list(pose_hands) if pose_cond else []
        # pose_cond: the rendered pose map joins x_t as extra channels (pose.py).
        self.in_channels = 3 + len(self.pose_groups)
        self.pose = PoseStage(width, num_frames, len(self.pose_points), mlp_ratio, heads, pose_depth) if pose_cond else None
        self.patch_embed = nn.Conv3d(self.in_channels, width, (tubelet_frames, patch_size_px, patch_size_px),
                                     stride=(tubelet_frames, patch_size_px, patch_size_px))
        self.pos_spatial = nn.Parameter(torch.randn(self.grid_s**2, width) * 0.02)
        # Temporal positions are added before the first temporal block (field notes, item 9).
        self.pos_temporal = nn.Parameter(torch.randn(self.grid_t, width) * 0.02)
        self.time_mlp = nn.Sequential(nn.Linear(256, width), nn.SiLU(), nn.Linear(width, width))
        self.text = TextEncoder(vocab_size, width, heads, text_depth, max_text_len_tokens, mlp_ratio)
        self.text_pool = nn.Linear(width, width)
        self.frame_cond = (FrameAligner(width, heads, frame_cond_depth, self.grid_t, mlp_ratio)
                           if frame_cond_depth else None)
        self.blocks = nn.ModuleList(
            Block(width, heads, mlp_ratio, temporal_modulation_weight) for _ in range(depth))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        nn.init.zeros_(self.ada_out[1].weight)
        nn.init.zeros_(self.ada_out[1].bias)
        self.modulation_weight = temporal_modulation_weight
        self.unpatch = nn.Linear(width, tubelet_frames * patch_size_px**2 * decoder_channels)
        self.norm_over_clip = norm_over_clip
        self.head = FinalProjection(decoder_channels, final_norm, input_channels=self.in_channels)
        if temporal_blend_ratio is not None and not refine_channels:
            raise ValueError("temporal_blend_ratio needs the refine path (refine_channels > 0): it draws the gate")
        self.refine = (PixelRefiner(decoder_channels + self.in_channels, refine_channels, refine_layers, width,
                                    out_channels=3 + (temporal_blend_ratio is not None))
                       if refine_channels else None)
        # σ_d/σ(t) per timestep (models.temporal_blend_ratio); a constant of the schedule, not a weight.
        self.register_buffer("blend_ratio", None if temporal_blend_ratio is None else
                             torch.tensor(list(temporal_blend_ratio), dtype=torch.float32), persistent=False)
        self.output_scale = nn.Parameter(torch.tensor(float(output_scale_init)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
                pose_xy: torch.Tensor | None = None, pose_visible: torch.Tensor | None = None,
                return_aux: bool = False, condition: Condition | None = None):
        """x (B,3,T,H,W) model input; t (B,) long; tokens/token_mask (B,L); drop_text (B,) bool.

        With the pose stage: `pose_xy` (B,T,J,2) and `pose_visible` (B,T,J) are the data's skeleton
        (training: the map shows them, teacher forcing); without them the map shows the stage's own
        prediction. `return_aux` (with the pose stage it needs pose_xy) returns (output, aux): the
        stage's loss terms, per-clip values (B,) (pose.py `pose_losses`), and with the temporal blend
        aux["unblended"], the output before it (B, 3, T, H, W). `condition`: what `encode_condition`
        made of the same tokens (and keypoints), instead of computing it again (a sampler's steps).
        """
        b, c, frames, height, width_px = x.shape
        if (c, frames, height, width_px) != (3, self.num_frames, self.frame_size_px, self.frame_size_px):
            raise ValueError(f"expected x of shape (B, 3, {self.num_frames}, {self.frame_size_px}, "
                             f"{self.frame_size_px}), got {tuple(x.shape)}")
        if self.pose is None and pose_xy is not None:
            raise ValueError("pose_xy needs a model built with pose_cond=True")
        if return_aux and self.pose is not None and pose_xy is None:
            raise ValueError("return_aux needs the ground-truth pose_xy and pose_visible")
        if condition is None:
            condition = self.encode_condition(tokens, token_mask, drop_text, pose_xy, pose_visible)
        elif return_aux:
            raise ValueError("return_aux computes the pose stage's losses: pass the tokens and pose_xy, not a condition")
        ctx, ctx_mask = condition.ctx, condition.ctx_mask
        aux = {}
        if condition.maps is not None:
            if return_aux:
                aux = pose_losses(condition.pred_xy.float(), condition.vis_logits.float(), condition.shown.float(),
                                  condition.shown_vis, self.pose_hands)
            x = torch.cat([x, condition.maps.to(x.dtype)], dim=1)
        x_image = x[:, :3]  # the model input without the pose map (what the temporal blend averages)
        h = self.patchify(x)
        h = (h + self.pos_spatial + self.pos_temporal[:, None, :]).contiguous()  # (B, T', N, D)
        cond = (self.time_mlp(timestep_embedding(t, 256)) + condition.text_vec)[:, None, :]
        if condition.frame_vec is not None:
            cond = cond + condition.frame_vec  # (B, T', D): one vector per frame
        for block in self.blocks:
            if self.activation_checkpointing and self.training:
                h = checkpoint(block, h, cond, ctx, ctx_mask, use_reentrant=False)
            else:
                h = block(h, cond, ctx, ctx_mask)
        shift, scale = self.ada_out(cond)[:, :, None, :].chunk(2, dim=-1)
        h = self.unpatch(modulate(self.norm_out(h), shift, scale, self.modulation_weight))
        x_up = self.unpatchify(h)  # (B*T, C, H, W): pixel-space features, frames folded into batch
        x_frames = x.transpose(1, 2).reshape(b * frames, self.in_channels, height, width_px)
        x_frames = x_frames.contiguous(memory_format=torch.channels_last)
        norm_frames = frames if self.norm_over_clip else 1
        out = self.head(x_up, x_frames, norm_frames)
        gate = None
        if self.refine is not None:  # one conditioning vector per frame (per latent frame, repeated)
            frame_cond = cond.expand(b, self.grid_t, -1).repeat_interleave(self.tubelet, dim=1)
            refined = self.refine(torch.cat([x_up, x_frames], dim=1), frame_cond.reshape(b * frames, -1),
                                  norm_frames)
            if self.blend_ratio is not None:
                refined, gate = refined[:, :3], refined[:, 3:]
            out = out + refined
        out = (self.output_scale * out).reshape(b, frames, 3, height, width_px).transpose(1, 2)
        if gate is not None:
            gate = gate.reshape(b, frames, 1, height, width_px).transpose(1, 2)
            if return_aux:  # the objective fits this one too (DenoisingLoss, blend_aux)
                aux["unblended"] = out
            out = self.blend_toward_clip_mean(out, gate, x_image, t)
        return (out, aux) if return_aux else out

    def encode_condition(self, tokens: torch.Tensor, token_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
                         pose_xy: torch.Tensor | None = None, pose_visible: torch.Tensor | None = None) -> Condition:
        """What forward computes from the text (and the keypoints) alone: the same at every timestep,
        so a sampler computes it once per sample instead of at each of its steps (the text encoder,
        the pose stage and its map were ~15% of a sampling step: docs/performance.md, round 15).
        The order of the ops is forward's own, so the gradients sum in the same order."""
        ctx, ctx_mask = self.text(tokens, token_mask, drop_text)
        pred_xy = vis_logits = shown = shown_vis = maps = None
        if self.pose is not None:
            pred_xy, vis_logits = self.pose(ctx, ctx_mask)
            if pose_xy is None:
                shown, shown_vis = pred_xy.detach(), vis_logits.detach() > 0
            else:
                shown = pose_xy[:, :, self.pose_points].to(pred_xy.dtype)
                shown_vis = pose_visible[:, :, self.pose_points]
            maps = render_pose(shown, shown_vis, self.pose_groups, self.frame_size_px)
            if drop_text is not None:  # the null condition has no pose either
                maps = maps * (~drop_text).to(maps.dtype)[:, None, None, None, None]
        pooled = (ctx * ctx_mask[..., None]).sum(1) / ctx_mask.sum(1, keepdim=True)
        text_vec = self.text_pool(pooled)
        frame_vec = self.frame_cond(ctx, ctx_mask) if self.frame_cond is not None else None
        return Condition(ctx, ctx_mask, text_vec, frame_vec, maps, pred_xy, vis_logits, shown, shown_vis)

    def blend_toward_clip_mean(self, out: torch.Tensor, gate_logit: torch.Tensor, x_image: torch.Tensor,
                               t: torch.Tensor) -> torch.Tensor:
        """Move each pixel's estimate toward the clip's mean estimate by a learned gate α = sigmoid(logit).

        Why: a still pixel's denoised value is the same in every frame, and its per-frame estimates
        carry independent errors (each frame is denoised from its own noise, spatially): the
        remaining flicker is white in time (docs/experiments.md, rows 77-78). The mean over the clip's
        frames of the *denoised* estimate averages that error away without passing the frames'
        shared noise on as content (rows 63, 66, 72 mixed x_t-derived features and made mottle), as
        long as the estimate before the blend is fitted too (the objective's `blend_aux`; row 77
        without it: mottle again).
        In EDM's variables, D = c_skip·x̃ + c_out·F; D → (1 − α)·D + α·mean_T(D) is, in F's space,
        F + α·[(mean_T F − F) + (σ_d/σ)·(mean_T inp − inp)] with inp = c_in·x̃ (the network's input),
        since c_skip/c_out·x̃ = (σ_d/σ)·inp. The gate comes from the refine path (x_up knows, through
        temporal attention, which pixels stay still); it starts at α = 0.5."""
        out = out.float()
        ratio = self.blend_ratio[t].view(-1, 1, 1, 1, 1)
        x_image = x_image.float()
        toward = (out.mean(2, keepdim=True) - out) + ratio * (x_image.mean(2, keepdim=True) - x_image)
        return out + torch.sigmoid(gate_logit.float()) * toward

    def predict_pose(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                     drop_text: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The pose stage's keypoints (B, T, P, 2) and visibility (B, T, P) bool for these texts (what
        sampling draws; `drop_text` (B,) bool: the null text instead); P indexes `pose_points`."""
        if self.pose is None:
            raise ValueError("predict_pose needs a model built with pose_cond=True")
        xy, logits = self.pose(*self.text(tokens, token_mask, drop_text))
        return xy, logits > 0

    def patchify(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T, H, W) -> tokens (B, T', N, D): the strided Conv3d `patch_embed` as one matmul."""
        b, c = x.shape[:2]
        g, p, k = self.grid_s, self.patch, self.tubelet
        patches = x.view(b, c, self.grid_t, k, g, p, g, p).permute(0, 2, 4, 6, 1, 3, 5, 7)
        patches = patches.reshape(b, self.grid_t, g * g, c * k * p * p)  # (c, k, p, p) as the conv weight
        return F.linear(patches, self.patch_embed.weight.flatten(1), self.patch_embed.bias)

    def unpatchify(self, h: torch.Tensor) -> torch.Tensor:
        """(B, T', N, tubelet*p*p*C) -> (B*T, C, H, W)."""
        b = h.shape[0]
        g, p, k, ch = self.grid_s, self.patch, self.tubelet, self.decoder_channels
        h = h.view(b, self.grid_t, g, g, k, p, p, ch)
        # (B*T, H, W, C) memory seen as NCHW: channels-last, the faster layout for the 5x5 convs.
        h = h.permute(0, 1, 4, 2, 5, 3, 6, 7).reshape(b * self.num_frames, g * p, g * p, ch)
        return h.permute(0, 3, 1, 2)
