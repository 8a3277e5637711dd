import pytest
import torch

from config import PRESETS, make_config
from models import build_model


def _inputs(cfg, batch=2, vocab=50):
    x = torch.randn(batch, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    t = torch.randint(0, cfg.num_timesteps, (batch,))
    tokens = torch.randint(2, vocab, (batch, 5))
    return x, t, tokens, torch.ones_like(tokens, dtype=torch.bool)


@pytest.mark.parametrize("preset", list(PRESETS))
def test_output_shape_every_preset(preset):
    cfg = make_config(preset)
    if cfg.frame_size_px * cfg.num_frames > 16 * 32:  # shrink the big presets, same layout
        cfg = make_config(preset, dict(num_frames=4 * cfg.tubelet_frames, frame_size_px=4 * cfg.patch_size_px,
                                       model_size="tiny", device="cpu", precision="fp32", compile=False))
    model = build_model(cfg, 50)
    x, t, tokens, mask = _inputs(cfg)
    assert model(x, t, tokens, mask).shape == x.shape


def test_untrained_output_is_zero_and_residual_adds_input():
    from evaluation.historical import HistoricalDenoiser

    cfg = make_config("tiny")
    x, t, tokens, mask = _inputs(cfg)
    plain = make_config("tiny", dict(pixel_temporal_blend=False))
    assert build_model(plain, 50)(x, t, tokens, mask).abs().max() == 0  # zero-init head (adaLN-Zero)
    # With the temporal blend an untrained F = 0 is moved by the gate's 0.5 toward the clip mean:
    # D = c_skip·(x̃ + mean_T x̃)/2, the Gaussian-data posterior mean of a half-averaged input.
    model = build_model(cfg, 50)
    expected = model.blend_toward_clip_mean(torch.zeros_like(x), torch.zeros_like(x[:, :1]), x, t)
    assert torch.allclose(model(x, t, tokens, mask), expected)
    buggy = build_model(make_config("tiny", dict(residual_input=True)), 50)
    assert isinstance(buggy, HistoricalDenoiser) and not buggy.head.sees_input
    assert torch.equal(buggy(x, t, tokens, mask), x)


def test_output_scale_is_learnable_parameter():
    model = build_model(make_config("tiny", dict(output_scale_init=0.5)), 50)
    assert isinstance(model.output_scale, torch.nn.Parameter) and model.output_scale.item() == 0.5


def _randomized(cfg):
    torch.manual_seed(1)
    model = build_model(cfg, 50)
    with torch.no_grad():  # leave the zero init so every path carries signal
        for p in model.parameters():
            if p.dim() >= 1 and p.abs().sum() == 0:
                p.normal_(0, 0.05)
    return model.eval()


@pytest.mark.parametrize("frame_cond_depth", [0, 1])
def test_word_order_changes_output(frame_cond_depth):
    cfg = make_config("tiny", dict(frame_cond_depth=frame_cond_depth))
    model = _randomized(cfg)
    x, t, _, _ = _inputs(cfg, batch=1)
    a = torch.tensor([[5, 9]])
    b = torch.tensor([[9, 5]])
    mask = torch.ones(1, 2, dtype=torch.bool)
    assert (model(x, t, a, mask) - model(x, t, b, mask)).abs().max() > 1e-4


@pytest.mark.parametrize("frame_cond_depth", [0, 1])
def test_padding_does_not_change_output_and_null_text_does(frame_cond_depth):
    cfg = make_config("tiny", dict(frame_cond_depth=frame_cond_depth))
    model = _randomized(cfg)
    x, t, _, _ = _inputs(cfg, batch=1)
    short = model(x, t, torch.tensor([[5, 9]]), torch.tensor([[True, True]]))
    padded = model(x, t, torch.tensor([[5, 9, 0, 0]]), torch.tensor([[True, True, False, False]]))
    assert torch.allclose(short, padded, atol=1e-5)
    dropped = model(x, t, torch.tensor([[5, 9]]), torch.tensor([[True, True]]), torch.tensor([True]))
    other = model(x, t, torch.tensor([[7, 3]]), torch.tensor([[True, True]]), torch.tensor([True]))
    assert torch.allclose(dropped, other, atol=1e-6)  # null text ignores the tokens
    assert (dropped - short).abs().max() > 1e-4


def test_empty_prompt_is_finite():
    cfg = make_config("tiny")
    model = _randomized(cfg)
    x, t, _, _ = _inputs(cfg, batch=1)
    out = model(x, t, torch.zeros(1, 1, dtype=torch.long), torch.zeros(1, 1, dtype=torch.bool))
    assert torch.isfinite(out).all()


def test_frames_interact_through_temporal_attention():
    cfg = make_config("tiny")
    model = _randomized(cfg)
    x, t, tokens, mask = _inputs(cfg, batch=1)
    y = x.clone()
    y[:, :, -1] += 1.0  # change only the last frame
    diff = (model(x, t, tokens, mask) - model(y, t, tokens, mask)).abs()
    assert diff[:, :, 0].max() > 1e-5


def test_frame_conditioning_differs_per_frame_and_trains():
    cfg = make_config("tiny", dict(frame_cond_depth=1))
    model = _randomized(cfg).train()
    x, t, tokens, mask = _inputs(cfg, batch=2)
    ctx, ctx_mask = model.text(tokens, mask, None)
    per_frame = model.frame_cond(ctx, ctx_mask)
    assert per_frame.shape == (2, cfg.num_frames // cfg.tubelet_frames, 32)
    assert (per_frame[:, 0] - per_frame[:, -1]).abs().max() > 1e-4  # frames get different vectors
    model(x, t, tokens, mask).square().mean().backward()
    assert model.frame_cond.queries.grad.abs().max() > 0


def test_batchnorm_option_builds():
    model = build_model(make_config("tiny", dict(final_norm="batch", cpu_streams=1)), 50)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())


def test_wrong_input_shape_is_named():
    cfg = make_config("tiny")
    model = build_model(cfg, 50)
    x, t, tokens, mask = _inputs(cfg)
    with pytest.raises(ValueError, match="expected x of shape"):
        model(x[:, :, :2], t, tokens, mask)


@pytest.mark.parametrize("seq_dim", [1, 2])
def test_self_attention_over_any_axis_matches_a_reference(seq_dim):
    """Attention along axis seq_dim of (B, T, N, D) tokens = standard multi-head attention on that
    axis moved next to D (the fused q/k/v projection and head layout must not mix heads or axes)."""
    from models.architectures.blocks import Attention
    torch.manual_seed(0)
    att = Attention(width=32, heads=4)
    x = torch.randn(2, 3, 5, 32)
    seq_first = x.movedim(seq_dim, -2)  # (..., L, D)
    lead = seq_first.shape[:-2]
    flat = seq_first.reshape(-1, *seq_first.shape[-2:])
    q = torch.nn.functional.linear(flat, att.q.weight, att.q.bias)
    k, v = torch.nn.functional.linear(flat, att.kv.weight, att.kv.bias).chunk(2, dim=-1)
    heads = [t.unflatten(-1, (4, 8)).transpose(1, 2) for t in (q, k, v)]  # (M, H, L, hd)
    ref = torch.nn.functional.scaled_dot_product_attention(*heads).transpose(1, 2).flatten(-2)
    ref = att.proj(ref).reshape(*lead, *seq_first.shape[-2:]).movedim(-2, seq_dim)
    torch.testing.assert_close(att(x, seq_dim=seq_dim), ref, rtol=1e-5, atol=1e-6)


def _random_(module):
    torch.manual_seed(2)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.eval()


@pytest.mark.parametrize("over_clip", [False, True])
def test_clip_norm_keeps_a_still_background_still_while_an_arm_moves(over_clip):
    """A clip whose frames differ only by a moving blob: far from the blob the head's output is the
    same in every frame when its norm takes the clip's statistics; with per-frame statistics the
    blob's position leaks into the whole frame (the brightness pumping of docs/experiments.md, row 67)."""
    from models.architectures.vivit import FinalProjection

    frames, size = 6, 24
    head = _random_(FinalProjection(8, "group", input_channels=3))
    x_up = torch.randn(1, 8, size, size).repeat(frames, 1, 1, 1)
    x_in = torch.randn(1, 3, size, size).repeat(frames, 1, 1, 1)
    for f in range(frames):  # the blob moves along the top rows and grows
        x_up[f, :, 0:3, 3 * f:3 * f + 3 + f] += 4.0
    out = head(x_up, x_in, frames if over_clip else 1)
    far = out[:, :, 12:, :]  # rows the 5x5 convs cannot reach from the blob
    spread = (far - far[:1]).abs().max()
    assert (spread < 1e-5) if over_clip else (spread > 1e-3)


def _blend_model():
    cfg = make_config("tiny", dict(prediction_type="edm", pixel_temporal_blend=True))
    return cfg, build_model(cfg, 50)


@pytest.mark.parametrize("t_int", [0, 3, 9])
def test_temporal_blend_is_the_x0_estimate_moved_toward_its_clip_mean(t_int):
    """In x0 space the blended output is (1 − α)·D + α·mean over the clip's frames of D, with D the
    estimate of the unblended F (EDM: D = c_skip·x̃ + c_out·F), whatever F, the gate and x_t are."""
    from diffusion import build_diffusion

    cfg, model = _blend_model()
    diffusion = build_diffusion(cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(t_int)
    shape = (2, 3, cfg.num_frames, cfg.frame_size_px, cfg.frame_size_px)
    x_t, f_out = torch.randn(shape, generator=g), torch.randn(shape, generator=g)
    logit = torch.randn(2, 1, *shape[2:], generator=g)
    t = torch.full((2,), t_int)
    blended = model.blend_toward_clip_mean(f_out, logit, diffusion.model_input(x_t, t), t)
    d_plain, d_blend = diffusion.to_x0(x_t, t, f_out), diffusion.to_x0(x_t, t, blended)
    alpha = torch.sigmoid(logit)
    expected = (1 - alpha) * d_plain + alpha * d_plain.mean(2, keepdim=True)
    assert torch.allclose(d_blend, expected, atol=1e-4 * (1 + d_plain.abs().max()))


def test_temporal_blend_gate_open_makes_every_frame_the_same_and_closed_changes_nothing():
    from diffusion import build_diffusion

    cfg, model = _blend_model()
    diffusion = build_diffusion(cfg, torch.device("cpu"))
    x_t, t, _, _ = _inputs(cfg)
    f_out = torch.randn_like(x_t)
    gate = torch.ones(x_t.shape[0], 1, *x_t.shape[2:])
    inp = diffusion.model_input(x_t, t)
    still = diffusion.to_x0(x_t, t, model.blend_toward_clip_mean(f_out, 30 * gate, inp, t))
    assert (still - still[:, :, :1]).abs().max() < 1e-3 * (1 + still.abs().max())
    assert torch.allclose(model.blend_toward_clip_mean(f_out, -30 * gate, inp, t), f_out, atol=1e-6)


def test_temporal_blend_gate_is_drawn_by_the_refine_path_and_trains():
    """The refine path's extra output channel is the gate: a model with the blend has one more output
    channel there, and the gate's weights get a gradient through the blend."""
    cfg, model = _blend_model()
    plain = build_model(make_config("tiny", dict(pixel_temporal_blend=False)), 50)
    assert model.refine.out.out_channels == plain.refine.out.out_channels + 1 == 4
    x, t, tokens, mask = _inputs(cfg)
    for p in model.refine.out.parameters():
        torch.nn.init.normal_(p, std=0.1)
    model(x, t, tokens, mask).square().mean().backward()
    assert model.refine.out.weight.grad[3].abs().sum() > 0
    assert "blend_ratio" not in model.state_dict()  # a constant of the schedule, rebuilt from the config
