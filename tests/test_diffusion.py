import math

import numpy as np
import pytest
import torch

from config import make_config
from diffusion import build_diffusion, build_objective
from diffusion.gaussian import (GaussianDiffusion, Prediction, Schedule, edm_coefficients, make_betas,
                                predict_eps_from_x0, predict_x0_from_eps, predict_x0_from_v, q_sample, v_target)
from diffusion.objective import MinSNR, SNRClamp, TimestepSampler, Uniform, motion_mask, temporal_difference_error


def _diffusion(prediction="x0", sigma_data=0.5, schedule="cosine", zero_terminal_snr=False):
    return GaussianDiffusion(Schedule.create(schedule, 50, zero_terminal_snr), prediction, sigma_data)


def _objective(**overrides):
    # Fake models below return plain tensors: the temporal blend's second output is tested on its own.
    cfg = make_config("tiny", dict(pose_cond=False, pixel_temporal_blend=False) | overrides)
    diffusion = build_diffusion(cfg)
    return build_objective(cfg, diffusion), diffusion


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_schedule_properties(schedule):
    sched = Schedule.create(schedule, 50)
    ac = sched.alphas_cumprod
    assert ac.shape == (50,)
    assert (ac[1:] < ac[:-1]).all(), "alphas_cumprod must decrease"
    assert ac[0] > 0.97 and ac[-1] < 0.01, "t=0 nearly clean, last step nearly pure noise"
    torch.testing.assert_close(sched.sigma(torch.arange(50)), 1 / sched.snr(torch.arange(50)).sqrt())


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
    with pytest.raises(ValueError, match="eps prediction"):
        GaussianDiffusion(sched, "eps")


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
    for kind in Prediction:  # the target of every parameterization converts back to x0
        diffusion = GaussianDiffusion(sched, kind)
        x0_hat, _ = diffusion.to_x0_eps(xt, t, diffusion.target(x0, t, eps), clip_x0=False)
        torch.testing.assert_close(x0_hat, x0, atol=2e-3, rtol=1e-3)


def test_edm_coefficients_match_the_closed_forms_and_their_limits():
    sigma = torch.tensor([1e-4, 0.1, 0.5, 2.0, 1e3], dtype=torch.float64)
    c_skip, c_out, c_in = edm_coefficients(sigma, 0.5)
    torch.testing.assert_close(c_skip, 0.25 / (sigma**2 + 0.25))
    torch.testing.assert_close(c_out, sigma * 0.5 / (sigma**2 + 0.25).sqrt())
    torch.testing.assert_close(c_in, 1 / (sigma**2 + 0.25).sqrt())
    assert c_skip[0] > 1 - 1e-6 and c_out[0] < 1e-4  # sigma -> 0: the output is x̃ itself
    assert c_skip[-1] < 1e-6 and abs(c_out[-1] - 0.5) < 1e-6  # sigma -> inf: the output is F · sigma_d
    # The network's input c_in·x̃ and target have unit variance at every sigma on data of std sigma_d.
    gen = torch.Generator().manual_seed(0)
    diffusion = _diffusion("edm", sigma_data=0.5)
    x0 = torch.randn(4000, 3, 1, 2, 2, generator=gen) * 0.5
    for t_int in (0, 5, 25, 49):
        t = torch.full((4000,), t_int)
        noise = torch.randn(x0.shape, generator=gen)
        x_in = diffusion.model_input(q_sample(diffusion.sched, x0, t, noise), t)
        assert abs(x_in.var().item() - 1) < 0.05, t_int
        assert abs(diffusion.target(x0, t, noise).var().item() - 1) < 0.05, t_int


def test_edm_with_zero_output_is_the_exact_posterior_mean_on_gaussian_data():
    """On x0 ~ N(0, σ_d²) the denoiser F = 0 gives D = c_skip·x̃ = E[x0 | x̃]: the best possible
    estimate, so the x0 error equals the posterior variance σ²σ_d²/(σ² + σ_d²) at every σ."""
    gen = torch.Generator().manual_seed(0)
    diffusion = _diffusion("edm", sigma_data=0.5)
    x0 = torch.randn(200000, generator=gen) * 0.5
    for t_int in (0, 3, 10, 25, 40, 49):
        t = torch.full((len(x0),), t_int)
        x_t = q_sample(diffusion.sched, x0, t, torch.randn(x0.shape, generator=gen))
        d = diffusion.to_x0(x_t, t, torch.zeros_like(x0))
        sigma2 = float(diffusion.sched.sigma(torch.tensor([t_int])) ** 2)
        posterior_var = sigma2 * 0.25 / (sigma2 + 0.25)
        assert float(((d - x0) ** 2).mean()) == pytest.approx(posterior_var, rel=0.02), t_int
        # no worse than either trivial estimate: x̃ itself (do nothing) and 0 (the data mean)
        x_tilde = x_t / diffusion.sched.alphas_cumprod[t_int].sqrt()
        assert float(((d - x0) ** 2).mean()) <= min(float(((x_tilde - x0) ** 2).mean()), float((x0**2).mean()))


def test_historical_snr_clamp_weighting_by_hand():
    snr = torch.tensor([0.01, 0.5, 4.0, 100.0])
    w = SNRClamp(0.1, 10.0, schedule_snr=snr)(snr)  # the mean over these four "timesteps"
    clamped = [0.1, 0.5, 4.0, 10.0]
    expected = torch.tensor([c / (sum(clamped) / 4) for c in clamped])
    torch.testing.assert_close(w, expected)
    assert abs(w.mean().item() - 1) < 1e-6


def test_snr_clamp_schedule_mean_is_one_in_expectation():
    objective, _ = _objective(loss_weighting="snr_clamp")
    w = objective.weights(torch.arange(50))
    assert abs(w.mean().item() - 1) < 1e-5
    assert w[0] > w[-1], "the historical clamp up-weights low t"
    off, _ = _objective(loss_weighting="snr_clamp", use_timestep_weighting=False)
    assert torch.equal(off.weights(torch.arange(50)), torch.ones(50))
    assert isinstance(_objective(loss_weighting="none")[0].weighting, Uniform)


def test_min_snr_by_hand_including_zero_guard():
    snr = torch.tensor([0.0, 1.0, 5.0, 20.0])
    torch.testing.assert_close(MinSNR(5.0, "eps")(snr), torch.tensor([1.0, 1.0, 1.0, 0.25]))
    torch.testing.assert_close(MinSNR(5.0, "v")(snr), torch.tensor([0.0, 0.5, 5 / 6, 5 / 21]))
    torch.testing.assert_close(MinSNR(5.0, "x0")(snr), torch.tensor([0.0, 1.0, 5.0, 5.0]))
    assert torch.isfinite(MinSNR(5.0, "eps")(snr)).all()
    # EDM: the x0-space weight min(SNR, γ) times c_out², the x0 error's scale
    sigma2 = 1 / snr[1:]
    torch.testing.assert_close(MinSNR(5.0, "edm", 0.5)(snr[1:]), snr[1:].clamp(max=5) * sigma2 * 0.25 / (sigma2 + 0.25))


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


@pytest.mark.parametrize("prediction", ["eps", "edm"])
def test_guidance_scale_one_equals_conditional(prediction):
    diff = _diffusion(prediction)
    model = _Linear()
    x = torch.randn(2, 3, 2, 4, 4)
    t = torch.tensor([10, 40])
    tokens, mask = torch.tensor([[3, 4], [5, 6]]), torch.ones(2, 2, dtype=torch.bool)
    x0_g, _ = diff.predict(model, x, t, tokens, mask, guidance_scale=1.0)
    x0_c, _ = diff.to_x0_eps(x, t, model(diff.model_input(x, t), t, tokens, mask), clip_x0=True)
    torch.testing.assert_close(x0_g, x0_c)
    x0_3, _ = diff.predict(model, x, t, tokens, mask, guidance_scale=3.0)
    assert (x0_3 - x0_g).abs().max() > 1e-6


def test_guided_prediction_is_one_batched_forward():
    diff = _diffusion("x0")
    calls = []
    model = _Linear()
    model.register_forward_hook(lambda m, inp, out: calls.append(inp[0].shape[0]))
    diff.predict(model, torch.randn(2, 3, 2, 4, 4), torch.tensor([1, 2]), torch.ones(2, 2, dtype=torch.long),
                 torch.ones(2, 2, dtype=torch.bool), guidance_scale=2.0)
    assert calls == [4]


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_deterministic_under_seed(sampler):
    diff = _diffusion("x0")
    model = _Linear()
    tokens, mask = torch.tensor([[3, 4]]), torch.ones(1, 2, dtype=torch.bool)
    runs = [diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), sampler=sampler, steps=10, eta=0.0,
                        generator=torch.Generator().manual_seed(7)) for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    assert runs[0].abs().max() <= 1


def test_ddim_eta_zero_is_deterministic_given_start_noise():
    diff = _diffusion("eps")
    model = _Linear()
    tokens, mask = torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.bool)
    a = diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), steps=10, generator=torch.Generator().manual_seed(1))
    b = diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), steps=10, generator=torch.Generator().manual_seed(1))
    c = diff.sample(model, tokens, mask, (1, 3, 2, 4, 4), steps=10, eta=1.0, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_perfect_x0_model_recovers_data():
    """With an oracle denoiser both samplers land on the data."""
    target = torch.rand(1, 3, 2, 4, 4) * 1.6 - 0.8
    diff = _diffusion("x0")
    oracle = lambda x, t, tokens, mask, drop=None: target.expand_as(x)
    for sampler in ("ddpm", "ddim"):
        out = diff.sample(oracle, torch.ones(1, 1, dtype=torch.long), torch.ones(1, 1, dtype=torch.bool),
                          target.shape, sampler=sampler, steps=20, generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(out, target, atol=1e-3, rtol=0)


def test_ddim_eta_zero_trajectory_is_q_sample_of_the_oracle_x0_with_the_same_noise():
    """DDIM with η = 0 and a perfect x0 keeps x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps with the starting eps at
    every step (Song et al. 2021, eq. 12): checked at each step, so a wrong coefficient anywhere fails
    (landing on the data at the end alone would not show it: the last step has ᾱ = 1)."""
    target = torch.rand(2, 3, 2, 4, 4, generator=torch.Generator().manual_seed(3)) * 1.6 - 0.8
    diff = _diffusion("x0")
    oracle = lambda x, t, tokens, mask, drop=None: target.expand_as(x)
    seen = []
    diff.sample(oracle, torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool), target.shape,
                sampler="ddim", steps=10, generator=torch.Generator().manual_seed(4),
                callback=lambda t, x_t, x0: seen.append((t, x_t.clone())))
    x_start = torch.randn(target.shape, generator=torch.Generator().manual_seed(4))
    # The noise x_T holds beside the oracle's x0 (ᾱ_T is small, not 0, on the clipped cosine).
    eps = predict_eps_from_x0(diff.sched, x_start, torch.full((2,), 49), target)
    assert len(seen) == 10 and seen[0][0] == 49
    for t_int, x_t in seen:
        expected = q_sample(diff.sched, target, torch.full((2,), t_int), eps)
        torch.testing.assert_close(x_t, expected, atol=1e-5, rtol=1e-5, msg=f"t={t_int}")


def test_ddpm_step_is_the_posterior_mean_with_its_variance():
    diff = _diffusion("x0")
    s = diff.sched
    x0, x_t = torch.full((20000,), 0.3), torch.full((20000,), -0.2)
    for t in (1, 20, 49):
        noise = torch.randn(20000, generator=torch.Generator().manual_seed(t))
        out = diff.ddpm_step(x_t, x0, t, noise)
        ac, ac_prev, beta = float(s.alphas_cumprod[t]), float(s.alphas_cumprod_prev[t]), float(s.betas[t])
        mean = math.sqrt(ac_prev) * beta / (1 - ac) * 0.3 + math.sqrt(1 - beta) * (1 - ac_prev) / (1 - ac) * -0.2
        assert out.mean().item() == pytest.approx(mean, abs=0.01)
        assert out.var().item() == pytest.approx(beta * (1 - ac_prev) / (1 - ac), rel=0.05)
    torch.testing.assert_close(diff.ddpm_step(x_t, x0, 0, None), diff.ddpm_step(x_t, x0, 0, torch.ones(20000)))


def test_training_loss_uses_weighting_and_motion_mask():
    objective, diffusion = _objective(motion_loss_weight=4.0)
    x0 = torch.zeros(2, 3, 4, 4, 4)
    x0[:, :, 2, 1, 1] = 1.0  # one moving pixel
    mask = motion_mask(x0, 4.0)
    assert mask.max() == 5.0 and mask.min() == 1.0
    draws = objective.draw(tuple(x0.shape), torch.Generator().manual_seed(0))
    out = objective(_Linear(), x0, torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool), draws)
    assert out.loss.ndim == 0 and torch.isfinite(out.loss) and out.per_sample.shape == (2,)


def test_timestep_sampling_power_shifts_t_by_the_formula():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    t0 = TimestepSampler(50, 0.0)(20000, gen(), "cpu")
    assert abs(t0.float().mean().item() - 24.5) < 0.5  # uniform over 0..49
    t1 = TimestepSampler(50, 1.0)(20000, gen(), "cpu")
    steps = torch.arange(1, 51, dtype=torch.float64)
    expected_mean = ((steps - 1) * steps).sum() / steps.sum()  # p(t) ∝ t + 1
    assert abs(t1.double().mean().item() - expected_mean.item()) < 0.5
    assert (t1 >= 25).double().mean().item() > 0.7  # ~3/4 of the batch in the noisier half
    assert torch.equal(t1, TimestepSampler(50, 1.0)(20000, gen(), "cpu"))


@pytest.mark.parametrize("prediction", ["x0", "edm"])
def test_uniform_loss_is_the_target_space_mse(prediction):
    objective, diffusion = _objective(prediction_type=prediction, loss_weighting="none", temporal_diff_loss_weight=0.0)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(6, 3, 4, 16, 16, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([0, 3, 10, 25, 40, 49])
    wrong = torch.randn(x0.shape, generator=gen)
    seen = {}

    def model(x_in, t_, tokens, mask, drop):  # a fixed, wrong output; records what it was shown
        seen["x_in"] = x_in
        return wrong
    out = objective(model, x0, torch.zeros(6, 1, dtype=torch.long), torch.ones(6, 1, dtype=torch.bool),
                    (t, noise, torch.zeros(6, dtype=torch.bool)))
    target = diffusion.target(x0, t, noise)
    assert float(out.loss) == pytest.approx(float(((wrong - target) ** 2).mean()), rel=1e-5)
    torch.testing.assert_close(seen["x_in"], diffusion.model_input(q_sample(diffusion.sched, x0, t, noise), t))


def test_temporal_diff_term_charges_flicker_and_not_a_steady_offset():
    objective, diffusion = _objective(loss_weighting="none", temporal_diff_loss_weight=2.0)
    gen = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 8, 8, 8, generator=gen) * 2 - 1
    noise = torch.randn(x0.shape, generator=gen)
    t = torch.tensor([3, 30])
    target = diffusion.target(x0, t, noise)
    steady = torch.full((1, 1, 8, 1, 1), 0.5)  # the same error in every frame
    flicker = 0.5 * (-1.0) ** torch.arange(8.0).view(1, 1, 8, 1, 1)  # equal MSE, sign flips per frame
    losses = {}
    for name, err in (("steady", steady), ("flicker", flicker)):
        out = objective(lambda *a: target + err, x0, torch.zeros(2, 1, dtype=torch.long),
                        torch.ones(2, 1, dtype=torch.bool), (t, noise, torch.zeros(2, dtype=torch.bool)))
        losses[name] = float(out.loss)
        assert float(out.per_sample.mean()) == pytest.approx(0.25, rel=1e-5)  # the logged MSE is plain
    assert losses["steady"] == pytest.approx(0.25, rel=1e-5)  # no temporal change: plain MSE
    assert losses["flicker"] == pytest.approx(0.25 + 2.0 * 1.0, rel=1e-5)  # change 1.0 per frame pair, squared
    white = torch.randn(4, 3, 16, 8, 8, generator=gen)
    assert float(temporal_difference_error(white).mean()) == pytest.approx(2.0, rel=0.05)  # 2·var for white error


def test_auxiliary_terms_join_the_loss_with_their_weight_over_the_clips_that_kept_their_text():
    objective, _ = _objective()
    objective.aux_weights = {"pose": 10.0}
    x0 = torch.zeros(4, 3, 4, 16, 16)
    drop = torch.tensor([False, True, False, False])
    draws = (torch.tensor([1, 2, 3, 4]), torch.zeros(x0.shape), drop)

    def model(x_in, t, tokens, mask, drop_text, pose_xy=None, pose_visible=None, return_aux=False):
        return torch.zeros_like(x_in), dict(pose=torch.tensor([1.0, 100.0, 3.0, 5.0]), pose_mse=torch.ones(4))
    out = objective(model, x0, torch.ones(4, 1, dtype=torch.long), torch.ones(4, 1, dtype=torch.bool), draws,
                    dict(pose_xy=torch.zeros(4, 4, 20, 2), pose_visible=torch.ones(4, 4, 20, dtype=torch.bool)))
    assert out.aux_mean("pose") == pytest.approx(3.0)  # (1 + 3 + 5) / 3: the dropped clip is left out
    assert float(out.loss) == pytest.approx(10.0 * 9.0 / 4)  # a mean over the batch, the dropped clip as 0
    assert out.aux_mean("pose_mse") == 1.0 and float(out.kept) == 3  # reported, not in the loss


def test_blend_aux_fits_the_blended_and_the_unblended_output_half_each():
    """With the temporal blend the model also returns its output before the blend; the fit is the mean
    of both (each frame's own estimate keeps learning), the logged per-clip MSE the blended one's."""
    objective, _ = _objective()
    objective.blend_aux = True
    x0 = torch.zeros(2, 3, 4, 8, 8)
    draws = (torch.tensor([1, 2]), torch.zeros(x0.shape), torch.tensor([False, False]))
    target = objective.diffusion.target(x0, draws[0], draws[1])

    def model(x_in, t, tokens, mask, drop_text, return_aux=False):
        assert return_aux
        return target + 1.0, dict(unblended=target + 3.0)
    out = objective(model, x0, torch.ones(2, 1, dtype=torch.long), torch.ones(2, 1, dtype=torch.bool), draws)
    assert float(out.loss) == pytest.approx(0.5 * (1.0 + 9.0))
    assert torch.allclose(out.per_sample, torch.ones(2))
    assert build_objective(make_config("tiny"), objective.diffusion).blend_aux  # the default has the blend
    assert not build_objective(make_config("tiny", dict(residual_input=True)), objective.diffusion).blend_aux
    with pytest.raises(ValueError, match="unblended"):
        objective(lambda *a, return_aux=False: (target, {}), x0, torch.ones(2, 1, dtype=torch.long),
                  torch.ones(2, 1, dtype=torch.bool), draws)


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_sdedit_start_noises_the_clips_to_start_t_and_runs_from_there(sampler):
    diff = _diffusion("x0")
    clips = torch.rand(2, 3, 2, 4, 4) * 2 - 1
    seen = []
    diff.sample(_Linear(), torch.tensor([[3], [4]]), torch.ones(2, 1, dtype=torch.bool), clips.shape,
                sampler=sampler, steps=20, generator=torch.Generator().manual_seed(5), init=clips, start_t=19,
                callback=lambda t, x_t, x0: seen.append((t, x_t.clone())))
    noise = torch.randn(clips.shape, generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(seen[0][1], q_sample(diff.sched, clips, torch.full((2,), 19), noise))
    ts = [t for t, _ in seen]
    assert ts[0] == 19 and ts[-1] == 0 and ts == sorted(ts, reverse=True)
    assert len(ts) == (20 if sampler == "ddpm" else 8)  # DDIM keeps its spacing: 20 * 20/50 steps
    with pytest.raises(ValueError, match="start_t"):
        diff.sample(_Linear(), torch.tensor([[3]]), torch.ones(1, 1, dtype=torch.bool), clips[:1].shape,
                    init=clips[:1], start_t=50)
