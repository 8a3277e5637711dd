"""Transformer parts of the ViViT denoiser: attention over any axis, the adaLN-Zero block, the text
encoder and the FrameAligner (text -> one conditioning vector per frame).

Layout (ViViT "factorized self-attention", as Latte uses it for diffusion): every block runs
spatial attention within each frame, then temporal attention across frames at each patch position,
then cross-attention from every video token to the text tokens, then an MLP. All tokens are kept
(the factorized *encoder*, which pools a frame to one token, cannot produce a dense output).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of integer timesteps t (B,) -> (B, dim), as in the DDPM/DiT code."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              mask: torch.Tensor | None = None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) v. q (..., L, d); k, v (..., S, d); mask broadcast to (..., L, S).

    Sequences here are short (a frame's patches, a clip's frames, a caption's tokens): on CPU two
    batched matmuls and a softmax were faster than F.scaled_dot_product_attention's fused kernel,
    which is tiled for long sequences (docs/performance.md, first table). On CUDA the fused kernel runs.
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


class PreNormLayer(nn.ModuleList):
    """A pre-LN transformer layer over axis -2: x + attention(LN(x)), then x + MLP(LN(x)); with `mask`
    (B, S) the keys it may attend to. A ModuleList of [norm, attention, norm, MLP], so its parameters
    keep the names (`0.weight` … `3.2.bias`) that earlier text-encoder checkpoints hold."""

    def __init__(self, width: int, heads: int, mlp_ratio: float):
        super().__init__([nn.LayerNorm(width), Attention(width, heads), nn.LayerNorm(width), MLP(width, mlp_ratio)])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        norm1, attn, norm2, mlp = self
        y = norm1(x)
        x = x + (attn(y) if mask is None else attn(y, y, mask))
        return x + mlp(norm2(x))


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
        self.layers = nn.ModuleList(PreNormLayer(width, heads, mlp_ratio) for _ in range(depth))
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
        for layer in self.layers:
            x = layer(x, mask)
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
    text-to-time alignment on its own, and short demos ignored the text (docs/experiments.md, rows
    6 and 18). Here one query per latent frame learns it once and the answer modulates every token
    of that frame in every block, the direct path a text -> motion mapping needs.
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
