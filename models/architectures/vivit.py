"""The ViViT denoiser: factorized space-time self-attention over all tokens, text cross-attention.

Layout (ViViT "factorized self-attention", as Latte uses it for diffusion): every block runs
spatial attention within each frame, then temporal attention across frames at each patch position,
then cross-attention from every video token to the text tokens, then an MLP. All tokens are kept
(the factorized *encoder*, which pools a frame to one token, cannot produce a dense output).

Timestep conditioning is adaLN: the sinusoidal timestep embedding (plus the pooled text, plus,
when `frame_cond_depth` > 0, one text vector per frame from `FrameAligner`) goes through an MLP to
per-block, per-frame shift/scale/gate vectors. The shift and scale enter with weight
`temporal_modulation_weight` (the seed's "temporal modulation", raised from 0.1 to 0.5); the gates
are zero-initialised (DiT's adaLN-Zero) so every block starts as the identity.

The decoder turns tokens back into pixel-space features `x_up` (decoder_channels per pixel), then
the seed's final projection: 5x5 conv, normalization, ReLU, 5x5 output conv, times a learnable
`output_scale`. The historical bug `out = final_conv(x_up) + x` is kept behind `residual_input`
only so the diagnostics can reproduce it.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.architectures.pose import NUM_HANDS, PoseStage, hand_heatmaps

# Size registry: width (channels per token), depth (blocks), heads. DiT-style names.
MODEL_SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(width=32, depth=2, heads=2),
    "S": dict(width=128, depth=6, heads=4),
    "M": dict(width=192, depth=8, heads=6),
    "B": dict(width=384, depth=12, heads=6),
}


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (B,) -> (B, dim), as in the DDPM/DiT code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v. q (..., L, d); k, v (..., S, d); mask broadcast to (..., L, S).

    Sequences here are short (16 spatial or temporal tokens, ~10 text tokens): on CPU two batched
    matmuls and a softmax were faster than F.scaled_dot_product_attention's fused kernel, which is
    tiled for long sequences (docs/performance.md). On CUDA the fused kernel is used.
    """
    if q.is_cuda:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = torch.matmul(q, k.transpose(-2, -1)).mul_(q.shape[-1] ** -0.5)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    return torch.matmul(scores.softmax(dim=-1), v)


class Attention(nn.Module):
    """Multi-head attention over axis `seq_dim` of x (..., D); self-attention when ctx is None.

    Attending over any axis lets the temporal blocks work on (B, T, N, D) tokens as they lie, with
    no transposed copy of the tokens in and out. Cross-attention: x (B, L, D), ctx (B, S, D),
    ctx_mask (B, S) bool (True = attend).
    """

    def __init__(self, width: int, heads: int, cross: bool = False):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        self.cross = cross

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None,
                ctx_mask: torch.Tensor | None = None, seq_dim: int = -2) -> torch.Tensor:
        heads, width, dims = self.heads, x.shape[-1], x.dim()
        if ctx is not None:
            n = x.shape[0]
            q = self.q(x).view(n, -1, heads, width // heads).transpose(1, 2)
            k, v = self.kv(ctx).view(n, ctx.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
            out = attention(q, k, v, None if ctx_mask is None else ctx_mask[:, None, None, :])
            return self.proj(out.transpose(1, 2).reshape(x.shape))
        seq = seq_dim % dims
        batch_dims = [i for i in range(dims - 1) if i != seq]
        # q, k and v from one matmul on the concatenated weights (the parameters stay `q` and `kv`,
        # so checkpoints load): one GEMM of width 3D instead of three of D, forward and backward.
        w_qkv = torch.cat([self.q.weight, self.kv.weight])
        qkv = F.linear(x, w_qkv, torch.cat([self.q.bias, self.kv.bias])).unflatten(-1, (3, heads, -1))
        # (..., L at seq, ..., 3, H, hd) -> (3, *batch, H, L, hd)
        q, k, v = qkv.permute(dims - 1, *batch_dims, dims, seq, dims + 1).unbind(0)
        out = attention(q, k, v)  # (*batch, H, L, hd)
        nb = len(batch_dims)
        back = [nb + 1 if i == seq else batch_dims.index(i) for i in range(dims - 1)] + [nb, nb + 2]
        return self.proj(out.permute(*back).reshape(x.shape))


class MLP(nn.Sequential):
    def __init__(self, width: int, mlp_ratio: float):
        hidden = int(width * mlp_ratio)
        super().__init__(nn.Linear(width, hidden), nn.GELU(approximate="tanh"), nn.Linear(hidden, width))


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor, weight: float) -> torch.Tensor:
    """adaLN: x * (1 + w*scale) + w*shift, with shift/scale broadcast over the token dims.

    One fused multiply-add over the tokens (the small shift/scale vectors are combined first).
    """
    return torch.addcmul(weight * shift, x, 1 + weight * scale)


class Block(nn.Module):
    """Spatial attention, temporal attention, text cross-attention, MLP; each adaLN-Zero gated."""

    def __init__(self, width: int, heads: int, mlp_ratio: float, modulation_weight: float):
        super().__init__()
        self.modulation_weight = modulation_weight
        self.norm_s = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn_s = Attention(width, heads)
        self.norm_t = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn_t = Attention(width, heads)
        self.norm_c = nn.LayerNorm(width, eps=1e-6)
        self.attn_c = Attention(width, heads, cross=True)
        self.norm_m = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = MLP(width, mlp_ratio)
        # 3 x (shift, scale, gate) for spatial/temporal/mlp + 1 gate for cross-attention.
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 10 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor,
                ctx_mask: torch.Tensor) -> torch.Tensor:
        """x (B, T, N, D) tokens; c (B, 1 or T, D) conditioning; ctx (B, S, D) text; ctx_mask (B, S)."""
        b, t, n, d = x.shape
        w = self.modulation_weight
        mods = self.ada(c)[:, :, None, :].chunk(10, dim=-1)
        sh_s, sc_s, g_s, sh_t, sc_t, g_t, sh_m, sc_m, g_m, g_c = mods
        x = torch.addcmul(x, g_s, self.attn_s(modulate(self.norm_s(x), sh_s, sc_s, w), seq_dim=2))
        x = torch.addcmul(x, g_t, self.attn_t(modulate(self.norm_t(x), sh_t, sc_t, w), seq_dim=1))
        h = self.norm_c(x).view(b, t * n, d)
        x = torch.addcmul(x, g_c, self.attn_c(h, ctx, ctx_mask).view(b, t, n, d))
        return torch.addcmul(x, g_m, self.mlp(modulate(self.norm_m(x), sh_m, sc_m, w)))


class TextEncoder(nn.Module):
    """Word embeddings + learned positions + pre-LN transformer layers (so word order matters).

    A learned start token is prepended and always attended to, so an empty prompt (all padding)
    still yields a valid context; classifier-free guidance replaces the whole context by a learned
    null token (everything else masked out).
    """

    def __init__(self, vocab_size: int, width: int, heads: int, depth: int, max_len: int,
                 mlp_ratio: float):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, width, padding_idx=0)
        self.pos = nn.Parameter(torch.randn(max_len + 1, width) * 0.02)
        self.start = nn.Parameter(torch.randn(width) * 0.02)
        self.null = nn.Parameter(torch.randn(width) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(width), Attention(width, heads), nn.LayerNorm(width),
                           MLP(width, mlp_ratio)]) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.max_len = max_len

    def forward(self, tokens: torch.Tensor, token_mask: torch.Tensor,
                drop_text: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """tokens (B, L) long, token_mask (B, L) bool, drop_text (B,) bool -> ctx (B, L+1, D), mask."""
        b, length = tokens.shape
        if length > self.max_len:
            raise ValueError(f"text of {length} tokens exceeds max_text_len_tokens={self.max_len}")
        x = torch.cat([self.start.expand(b, 1, -1), self.embed(tokens)], dim=1)
        x = x + self.pos[: length + 1]
        mask = torch.cat([token_mask.new_ones(b, 1), token_mask], dim=1)
        for norm1, attn, norm2, mlp in self.layers:
            y = norm1(x)
            x = x + attn(y, y, mask)
            x = x + mlp(norm2(x))
        x = self.norm(x)
        if drop_text is not None:
            keep = ~drop_text
            x = torch.cat([torch.where(keep[:, None], x[:, 0], self.null.expand(b, -1))[:, None],
                           x[:, 1:]], dim=1)
            mask = mask & torch.cat([mask.new_ones(b, 1), keep[:, None].expand(b, length)], dim=1)
        return x, mask


class FrameAligner(nn.Module):
    """Text -> one conditioning vector per (latent) frame, fed to every block's adaLN.

    Learned frame queries attend to each other (so a frame knows how many signs the sentence holds)
    and to the text tokens (which word is being signed now), like a small DETR/Perceiver decoder.
    Why: with only per-token cross-attention, each of the T*N video tokens must discover the
    text-to-time alignment on its own, and in 600-step demos the samples ignored the text (gloss
    accuracy at chance, docs/experiments.md). Here 16 queries learn it once and the answer modulates
    every token of that frame in every block, the direct path a text -> motion mapping needs.
    """

    def __init__(self, width: int, heads: int, depth: int, frames: int, mlp_ratio: float):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(frames, width) * 0.02)
        self.layers = nn.ModuleList(
            nn.ModuleList([nn.LayerNorm(width), Attention(width, heads), nn.LayerNorm(width),
                           Attention(width, heads, cross=True), nn.LayerNorm(width),
                           MLP(width, mlp_ratio)]) for _ in range(depth))
        self.out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width))

    def forward(self, ctx: torch.Tensor, ctx_mask: torch.Tensor) -> torch.Tensor:
        """ctx (B, S, D), ctx_mask (B, S) -> (B, frames, D)."""
        x = self.queries.expand(ctx.shape[0], -1, -1)
        for norm_s, attn_s, norm_c, attn_c, norm_m, mlp in self.layers:
            x = x + attn_s(norm_s(x))
            x = x + attn_c(norm_c(x), ctx, ctx_mask)
            x = x + mlp(norm_m(x))
        return self.out(x)


class FinalProjection(nn.Module):
    """The seed's stronger head: 5x5 conv, norm, ReLU (residual on x_up), 5x5 conv to RGB.

    The first conv also sees the noisy frame x_t (3 extra input channels): a learned, local skip
    (what a U-Net's long skip gives). At low noise the clean frame is x_t minus a little noise, which
    a token that must emit a whole 8x8 patch through `width` numbers cannot reproduce to the noise
    level; a 5x5 conv on x_t can (`sees_input`). Unlike the seed's bug (`final_conv(x_up) + x`, an
    identity added to the output at every noise level) the head learns how much of x_t to use.
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
        nn.init.zeros_(self.out.weight)  # untrained model outputs 0 (field notes: zero-init head)
        nn.init.zeros_(self.out.bias)

    def forward(self, x_up: torch.Tensor, x_t: torch.Tensor) -> torch.Tensor:
        """x_up (B*T, C, H, W), x_t (B*T, input_channels, H, W) -> (B*T, 3, H, W)."""
        h = self.conv(torch.cat([x_up, x_t], dim=1) if self.sees_input else x_up)
        return self.out(x_up + F.relu(self.norm(h)))


class ViViTDenoiser(nn.Module):
    """Text-conditioned video denoiser. forward(x (B,3,T,H,W), t (B,), tokens, mask) -> (B,3,T,H,W)."""

    def __init__(self, *, vocab_size: int, num_frames: int, frame_size_px: int, patch_size_px: int,
                 tubelet_frames: int, width: int, depth: int, heads: int, mlp_ratio: float,
                 text_depth: int, frame_cond_depth: int, max_text_len_tokens: int,
                 decoder_channels: int, final_norm: str,
                 output_scale_init: float, temporal_modulation_weight: float, residual_input: bool,
                 activation_checkpointing: bool = False, long_skips: bool = False,
                 pose_cond: bool = False):
        super().__init__()
        if frame_size_px % patch_size_px or num_frames % tubelet_frames:
            raise ValueError("frame_size_px / num_frames must be divisible by patch / tubelet size")
        self.num_frames, self.frame_size_px = num_frames, frame_size_px
        self.patch, self.tubelet, self.width = patch_size_px, tubelet_frames, width
        self.grid_t, self.grid_s = num_frames // tubelet_frames, frame_size_px // patch_size_px
        self.decoder_channels = decoder_channels
        self.residual_input = residual_input
        self.activation_checkpointing = activation_checkpointing
        # pose_cond: the pose stage's hand heatmaps join x_t as extra channels (models/.../pose.py).
        self.in_channels = 3 + NUM_HANDS * pose_cond
        self.pose = PoseStage(width, num_frames, MLP, mlp_ratio) if pose_cond else None
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
        # U-ViT long skips (Bao et al. 2023): block i's output joins block depth-1-i's input through
        # a linear on the concatenation. Initialised to pass the stream through unchanged, so the
        # model still starts as the identity (adaLN-Zero) and learns how much of the skip to use.
        self.skips = nn.ModuleList(nn.Linear(2 * width, width) for _ in range((depth - 1) // 2)
                                   ) if long_skips else nn.ModuleList()
        for skip in self.skips:
            nn.init.zeros_(skip.weight)
            nn.init.zeros_(skip.bias)
            with torch.no_grad():
                skip.weight[:, :width].copy_(torch.eye(width))
        self.norm_out = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada_out = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        nn.init.zeros_(self.ada_out[1].weight)
        nn.init.zeros_(self.ada_out[1].bias)
        self.modulation_weight = temporal_modulation_weight
        self.unpatch = nn.Linear(width, tubelet_frames * patch_size_px**2 * decoder_channels)
        # The historical variant keeps the seed's head, which saw only x_up: with x_t as an input
        # the head could learn to cancel the residual and the diagnostics could not reproduce it.
        self.head = FinalProjection(decoder_channels, final_norm,
                                    input_channels=0 if residual_input else self.in_channels)
        self.output_scale = nn.Parameter(torch.tensor(float(output_scale_init)))

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor, drop_text: torch.Tensor | None = None,
                hand_xy: torch.Tensor | None = None, return_pose: bool = False,
                truth_mask: torch.Tensor | None = None):
        """x (B,3,T,H,W) noisy video; t (B,) long; tokens/token_mask (B,L); drop_text (B,) bool.

        With the pose stage: `hand_xy` (B,T,2,2) are the hand centres the heatmaps show (training:
        the ground truth); None uses the stage's own prediction; `truth_mask` (B,) bool keeps
        hand_xy only where True (the prediction elsewhere). `return_pose` returns (output,
        predicted hand_xy) instead of the output alone.
        """
        b, c, frames, height, width_px = x.shape
        if (c, frames, height, width_px) != (3, self.num_frames, self.frame_size_px, self.frame_size_px):
            raise ValueError(f"expected x of shape (B, 3, {self.num_frames}, {self.frame_size_px}, "
                             f"{self.frame_size_px}), got {tuple(x.shape)}")
        ctx, ctx_mask = self.text(tokens, token_mask, drop_text)
        x_noisy, pose = x, None
        if self.pose is not None:
            pose = self.pose(ctx, ctx_mask)
            shown = pose.detach() if hand_xy is None else hand_xy.to(pose.dtype)
            if hand_xy is not None and truth_mask is not None:
                shown = torch.where(truth_mask[:, None, None, None], shown, pose.detach())
            heat = hand_heatmaps(shown, self.frame_size_px).to(x.dtype)
            if drop_text is not None:  # the null condition has no pose either
                heat = heat * (~drop_text).to(x.dtype)[:, None, None, None, None]
            x = torch.cat([x, heat], dim=1)
        elif return_pose or hand_xy is not None:
            raise ValueError("hand_xy / return_pose need a model built with pose_cond=True")
        h = self.patchify(x)
        h = (h + self.pos_spatial + self.pos_temporal[:, None, :]).contiguous()  # (B, T', N, D)
        pooled = (ctx * ctx_mask[..., None]).sum(1) / ctx_mask.sum(1, keepdim=True)
        cond = (self.time_mlp(timestep_embedding(t, 256)) + self.text_pool(pooled))[:, None, :]
        if self.frame_cond is not None:
            cond = cond + self.frame_cond(ctx, ctx_mask)  # (B, T', D): one vector per frame
        saved, first_out = [], len(self.blocks) - len(self.skips)
        for i, block in enumerate(self.blocks):
            if i >= first_out:
                h = self.skips[i - first_out](torch.cat([h, saved.pop()], dim=-1))
            if self.activation_checkpointing and self.training:
                h = checkpoint(block, h, cond, ctx, ctx_mask, use_reentrant=False)
            else:
                h = block(h, cond, ctx, ctx_mask)
            if i < len(self.skips):
                saved.append(h)
        shift, scale = self.ada_out(cond)[:, :, None, :].chunk(2, dim=-1)
        h = self.unpatch(modulate(self.norm_out(h), shift, scale, self.modulation_weight))
        x_up = self.unpatchify(h)  # (B*T, C, H, W): pixel-space features, frames folded into batch
        x_frames = x.transpose(1, 2).reshape(b * frames, self.in_channels, height, width_px)
        out = self.output_scale * self.head(x_up, x_frames.contiguous(memory_format=torch.channels_last))
        out = out.reshape(b, frames, 3, height, width_px).transpose(1, 2)
        if self.residual_input:
            out = out + x_noisy
        return (out, pose) if return_pose else out

    def predict_pose(self, tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
        """The pose stage's hand centres (B, T, 2, 2) for these texts (the heatmaps sampling shows)."""
        if self.pose is None:
            raise ValueError("predict_pose needs a model built with pose_cond=True")
        return self.pose(*self.text(tokens, token_mask, None))

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
