import math

import numpy as np
import pytest
import torch

from diffusion.text2sign import (Schedule, Text2SignDiffusion, make_betas, min_snr_weights,
                                 model_output_to_x0_eps, predict_eps_from_x0, predict_x0_from_eps,
                                 predict_x0_from_v, q_sample, snr_clamp_weights, training_target,
                                 v_target)


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_properties(schedule):
    sched = Schedule.create(schedule, 50)
    ac = sched.alphas_cumprod
    assert ac.shape == (50,)
    assert (ac[1:] < ac[:-1]).all(), "alphas_cumprod must decrease"
    assert ac[0] > 0.97 and ac[-1] < 0.01, "t=0 nearly clean, last step nearly pure noise"


def test_linear_schedule_against_numpy_reference():
    betas = np.linspace(20 * 1e-4, 20 * 0.02, 50)  # DDPM range scaled by 1000/T
    np.testing.assert_allclose(make_betas("linear", 50).numpy(), betas, rtol=1e-12)


def test_cosine_schedule_against_closed_form():
    ac = Schedule.create("cosine", 50).alphas_cumprod.double()
    f = lambda t: math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2
    expected = torch.tensor([f(t + 1) / f(0) for t in range(50)], dtype=torch.float64)
    torch.testing.assert_close(ac[:-1], expected[:-1], rtol=1e-5, atol=1e-6)  # last beta is clipped


def test_zero_terminal_snr():
    sched = Schedule.create("cosine", 50, zero_terminal_snr=True)
    assert sched.alphas_cumprod[-1] == 0
    assert sched.snr(torch.tensor([49])) == 0


def test_q_sample_statistics():
    sched = Schedule.create("cosine", 50)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.full((20000,), 0.5)
    for t in (0, 25, 49):
        noise = torch.randn(20000, generator=gen)
        xt = q_sample(sched, x0, torch.full((20000,), t), noise)
        ac = sched.alphas_cumprod[t].item()
        assert abs(xt.mean().item() - math.sqrt(ac) * 0.5) < 0.02
        assert abs(xt.std().item() - math.sqrt(1 - ac)) < 0.02


def test_conversions_invert_each_other():
    sched = Schedule.create("cosine", 50)
    x0, eps = torch.randn(4, 3, 2, 4, 4), torch.randn(4, 3, 2, 4, 4)
    t = torch.tensor([0, 10, 30, 48])
    xt = q_sample(sched, x0, t, eps)
    torch.testing.assert_close(predict_x0_from_eps(sched, xt, t, eps), x0, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(predict_eps_from_x0(sched, xt, t, x0), eps, atol=2e-3, rtol=1e-3)
    torch.testing.assert_close(predict_x0_from_v(sched, xt, t, v_target(sched, x0, t, eps)), x0, atol=1e-4, rtol=1e-4)
    for kind, out in (("eps", eps), ("x0", x0), ("v", v_target(sched, x0, t, eps))):
        x0_hat, _ = model_output_to_x0_eps(sched, kind, xt, t, out, clip_x0=False)
        torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)


def test_seed_snr_clamp_weighting_by_hand():
    snr = torch.tensor([0.01, 0.5, 4.0, 100.0])
    w = snr_clamp_weights(snr, 0.1, 10.0)  # batch mean, as the seed computed it
    clamped = [0.1, 0.5, 4.0, 10.0]
    expected = torch.tensor([c / (sum(clamped) / 4) for c in clamped])
    torch.testing.assert_close(w, expected)
    assert abs(w.mean().item() - 1) < 1e-6


def test_snr_clamp_schedule_mean_is_one_in_expectation():
    diff = Text2SignDiffusion(num_timesteps=50, loss_weighting="snr_clamp")
    w = diff.loss_weights(torch.arange(50))
    assert abs(w.mean().item() - 1) < 1e-5
    assert w[0] > w[-1], "the seed's clamp up-weights low t"
    off = Text2SignDiffusion(num_timesteps=50, use_timestep_weighting=False)
    assert torch.equal(off.loss_weights(torch.arange(50)), torch.ones(50))


def test_min_snr_by_hand_including_zero_guard():
    snr = torch.tensor([0.0, 1.0, 5.0, 20.0])
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.25]))
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "v"), torch.tensor([0.0, 0.5, 5 / 6, 5 / 21]))
    torch.testing.assert_close(min_snr_weights(snr, 5.0, "x0"), torch.tensor([0.0, 1.0, 5.0, 5.0]))
    assert torch.isfinite(min_snr_weights(snr, 5.0, "eps")).all()


class _Linear(torch.nn.Module):
    """A tiny text-dependent stand-in denoiser for sampler tests."""

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Parameter(torch.tensor(0.3))
        self.b = torch.nn.Parameter(torch.tensor(0.2))

    def forward(self, x, t, tokens, mask, drop_text=None):
        cond = tokens.float().mean(1).view(-1, 1, 1, 1, 1) * 0.01
        if drop_text is not None:
            cond = torch.where(drop_text.view(-1, 1, 1, 1, 1), torch.zeros_like(cond), cond)
        return self.a * x + self.b * cond


def test_guidance_scale_one_equals_conditional():
    diff = Text2SignDiffusion(num_timesteps=50, prediction_type="eps")
    model = _Linear()
    x = torch.randn(2, 3, 2, 4, 4)
    t = torch.tensor([10, 40])
    tokens, mask = torch.tensor([[3, 4], [5, 6]]), torch.ones(2, 2, dtype=torch.bool)
    x0_g, _ = diff.predict(model, x, t, tokens, mask, guidance_scale=1.0)
    x0_c, _ = model_output_to_x0_eps(diff.sched, "eps", x, t, model(x, t, tokens, mask), clip_x0=True)
    torch.testing.assert_close(x0_g, x0_c)
    x0_3, _ = diff.predict(model, x, t, tokens, mask, guidance_scale=3.0)
    assert (x0_3 - x0_g).abs().max() > 1e-6


def test_guided_prediction_is_one_batched_forward():
    diff = Text2SignDiffusion(num_timesteps=50)
    calls = []
    model = _Linear()
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    diff.predict(model, torch.randn(2, 3, 2, 4, 4), torch.tensor([1, 2]), torch.ones(2, 2, dtype=torch.long),
                 torch.ones(2, 2, dtype=torch.bool), guidance_scale=2.0)
    assert calls == [4]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_deterministic_under_seed(sampler):
    diff = Text2SignDiffusion(num_timesteps=50, prediction_type="x0")
    model = _Linear()
    tokens, mask = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.bool)
    runs = [diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), sampler=sampler, steps=10, eta=0.0,
                        generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].abs().max() <= 1


def test_ddim_eta_zero_is_deterministic_given_start_noise():
    diff = Text2SignDiffusion(num_timesteps=50, prediction_type="eps")
    model = _Linear()
    tokens, mask = torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.bool)
    a = diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), steps=10, generator=torch.Generator().manual_seed(1))
    b = diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), steps=10, generator=torch.Generator().manual_seed(1))
    c = diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_perfect_x0_model_recovers_data():
    """With an oracle denoiser both samplers land on the data (the update rules are right)."""
    target = torch.rand(1, 3, 2, 4, 4) * 1.6 - 0.8
    diff = Text2SignDiffusion(num_timesteps=50, prediction_type="x0")
    oracle = lambda x, t, tokens, mask, drop=None: target.expand_as(x)
    for sampler in ("ddpm", "ddim"):
        out = diff.sample(oracle, torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                          target.shape, sampler=sampler, steps=20, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, target, atol=1e-3, rtol=0)


def test_training_loss_uses_weighting_and_motion_mask():
    diff = Text2SignDiffusion(num_timesteps=50, prediction_type="x0", motion_loss_weight=4.0)
    x0 = torch.zeros(2, 3, 4, 4, 4)
    x0[:, :, 2, 1, 1] = 1.0  # one moving pixel
    mask = diff.motion_mask(x0)
    assert mask.max() == 5.0 and mask.min() == 1.0
    out = diff.training_losses(_Linear(), x0, torch.ones(2, 1, dtype=torch.long),
                               torch.ones(2, 1, dtype=torch.bool), torch.Generator().manual_seed(0))
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"]) and out["per_sample"].shape == (2,)


def test_timestep_sampling_power_shifts_t_by_the_formula():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    uniform = Text2SignDiffusion(num_timesteps=50)
    t0, _, _ = uniform.draw_training_noise((20000, 1), gen())
    assert abs(t0.float().mean().item() - 24.5) < 0.5  # uniform over 0..49
    biased = Text2SignDiffusion(num_timesteps=50, timestep_sampling_power=1.0)
    t1, _, _ = biased.draw_training_noise((20000, 1), gen())
    steps = torch.arange(1, 51, dtype=torch.float64)
    expected_mean = ((steps - 1) * steps).sum() / steps.sum()  # p(t) ∝ t + 1
    assert abs(t1.double().mean().item() - expected_mean.item()) < 0.5
    assert (t1 >= 25).double().mean().item() > 0.7  # ~3/4 of the batch in the noisier half
    t1_again, _, _ = biased.draw_training_noise((20000, 1), gen())
    assert torch.equal(t1, t1_again)


def test_shared_frame_noise_has_unit_variance_and_the_asked_frame_correlation():
    shape = (64, 3, 4, 8, 8)
    iid = Text2SignDiffusion(num_timesteps=50).noise(shape, torch.Generator().manual_seed(0))
    assert torch.equal(iid, torch.randn(shape, generator=torch.Generator().manual_seed(0)))
    mixed = Text2SignDiffusion(num_timesteps=50, noise_shared_frac=0.5).noise(
        shape, torch.Generator().manual_seed(0))
    assert abs(mixed.var().item() - 1.0) < 0.03
    a, b = mixed[:, :, 0].flatten(), mixed[:, :, 3].flatten()
    corr = ((a - a.mean()) * (b - b.mean())).mean() / (a.std() * b.std())
    assert abs(corr.item() - 0.5) < 0.05  # frames share half of the variance
    with pytest.raises(ValueError, match="noise_shared_frac"):
        Text2SignDiffusion(num_timesteps=50, noise_shared_frac=1.0)


@pytest.mark.parametrize("prediction_type", ["eps", "v", "x0"])
def test_x0_weighting_makes_the_loss_the_x0_space_mse(prediction_type):
    diffusion = Text2SignDiffusion(num_timesteps=50, prediction_type=prediction_type, loss_weighting="x0")
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 2, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 3, 10, 25, 40, 49])
    drop = torch.zeros(6, dtype=torch.bool)
    wrong = torch.randn(x0.shape, generator=gen)

    def model(x_t, t_, tokens, mask, drop_):  # a fixed, wrong prediction in the target space
        return wrong
    loss = diffusion.training_losses(model, x0, torch.zeros(6, 1, dtype=torch.long),
                                     torch.ones(6, 1, dtype=torch.bool), draws=(t, noise, drop))["loss"]
    x_t = q_sample(diffusion.sched, x0, t, noise)
    x0_hat, _ = model_output_to_x0_eps(diffusion.sched, prediction_type, x_t, t, wrong, clip_x0=False)
    assert float(loss) == pytest.approx(float(((x0_hat - x0) ** 2).mean()), rel=1e-4)


def test_x0_skip_round_trips_and_weights_the_x0_error():
    diffusion = Text2SignDiffusion(num_timesteps=50, prediction_type="x0", loss_weighting="none", x0_skip_snr=25.0)
    sched = diffusion.sched
    assert sched.x0_skip[0] > 0.95 and sched.x0_skip[49] < 1e-6  # identity-like at t=0, off at t=49
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 2, 4, 4, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 3, 10, 25, 40, 49])
    x_t = q_sample(sched, x0, t, noise)
    target = training_target(sched, "x0", x0, t, noise)
    x0_back, _ = model_output_to_x0_eps(sched, "x0", x_t, t, target, clip_x0=False)
    torch.testing.assert_close(x0_back, x0, atol=1e-4, rtol=1e-4)
    # An untrained (zero) output already predicts x0 from x_t about as well as x_t itself at t = 0.
    zero_x0, _ = model_output_to_x0_eps(sched, "x0", x_t, t, torch.zeros_like(x0), clip_x0=False)
    assert float(((zero_x0[0] - x0[0]) ** 2).mean()) < 0.01
    wrong = torch.randn(x0.shape, generator=gen)
    loss = diffusion.training_losses(lambda *a: wrong, x0, torch.zeros(6, 1, dtype=torch.long),
                                     torch.ones(6, 1, dtype=torch.bool),
                                     draws=(t, noise, torch.zeros(6, dtype=torch.bool)))["loss"]
    wrong_x0, _ = model_output_to_x0_eps(sched, "x0", x_t, t, wrong, clip_x0=False)
    assert float(loss) == pytest.approx(float(((wrong_x0 - x0) ** 2).mean()), rel=1e-4)
    with pytest.raises(ValueError, match="x0_skip_snr"):
        Text2SignDiffusion(prediction_type="v", x0_skip_snr=25.0)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sdedit_start_noises_the_clips_to_start_t_and_runs_from_there(sampler):
    diff = Text2SignDiffusion(num_timesteps=50, prediction_type="x0")
    clips = torch.rand(2, 3, 2, 4, 4) * 2 - 1
    seen = []
    diff.sample(_Linear(), torch.tensor([[3], [4]]), torch.ones(2, 1, dtype=torch.bool), clips.shape,
                sampler=sampler, steps=20, generator=torch.Generator().manual_seed(5), init=clips, start_t=19,
                callback=lambda t, x_t, x0: seen.append((t, x_t.clone())))
    noise = diff.noise(clips.shape, torch.Generator().manual_seed(5))
    torch.testing.assert_close(seen[0][1], q_sample(diff.sched, clips, torch.full((2,), 19), noise))
    ts = [t for t, _ in seen]
    assert ts[0] == 19 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert len(ts) == (20 if sampler == "ddpm" else 8)  # DDIM keeps its spacing: 20 * 20/50 steps
    with pytest.raises(ValueError, match="start_t"):
        diff.sample(_Linear(), torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.bool), clips[:1].shape,
                    init=clips[:1], start_t=50)
