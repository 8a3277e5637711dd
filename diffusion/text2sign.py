"""Text2Sign diffusion: noise schedule, q_sample, prediction conversions, loss weighting, samplers.

Notation follows DDPM / improved-diffusion: betas, alphas_cumprod (ᾱ_t), t = 0 … T-1 with t = T-1
the noisiest step, x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps, SNR(t) = ᾱ_t / (1 - ᾱ_t). The model is passed in as
an argument: this module owns the math, never the network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch

from models.architectures.pose import pose_losses

# Clamp for SNR -> inf at ᾱ = 1 and 1/SNR at ᾱ -> 0 (only reachable with zero terminal SNR).
_EPS = 1e-12


def make_betas(schedule: str, num_timesteps: int, zero_terminal_snr: bool = False) -> torch.Tensor:
    """Betas (T,) float64 for 'linear' or 'cosine'.

    linear: the DDPM range 1e-4 … 0.02 at T = 1000, scaled by 1000/T so any T ends near pure noise
    (as improved-diffusion does). cosine: Nichol & Dhariwal 2021, s = 0.008, betas clipped at 0.999.
    zero_terminal_snr: Lin et al. 2023 rescaling so ᾱ_{T-1} = 0 exactly.
    """
    if schedule == "linear":
        scale = 1000.0 / num_timesteps
        betas = torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)
    elif schedule == "cosine":
        steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
        f = torch.cos((steps + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"beta_schedule must be 'linear' or 'cosine', got {schedule!r}")
    if zero_terminal_snr:
        sqrt_ac = torch.cumprod(1 - betas, 0).sqrt()
        first, last = sqrt_ac[0].clone(), sqrt_ac[-1].clone()
        sqrt_ac = (sqrt_ac - last) * first / (first - last)
        ac = sqrt_ac**2
        betas = 1 - torch.cat([ac[:1], ac[1:] / ac[:-1]])
    return betas


@dataclass
class Schedule:
    """Per-timestep quantities (float32 tensors of shape (T,)) on one device."""

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    # x0 prediction's low-noise skip c(t) = SNR / (SNR + x0_skip_snr); None when off.
    x0_skip: torch.Tensor | None = None

    @classmethod
    def create(cls, schedule: str, num_timesteps: int, zero_terminal_snr: bool = False,
               device: torch.device | str = "cpu", x0_skip_snr: float = 0.0) -> "Schedule":
        betas = make_betas(schedule, num_timesteps, zero_terminal_snr)
        ac = torch.cumprod(1 - betas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        snr = ac / (1 - ac).clamp(min=_EPS)
        skip = (snr / (snr + x0_skip_snr)).float().to(device) if x0_skip_snr > 0 else None
        return cls(*(v.float().to(device) for v in (betas, ac, ac_prev)), x0_skip=skip)

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 - ᾱ_t), shape of t."""
        ac = self.alphas_cumprod[t]
        return ac / (1 - ac).clamp(min=_EPS)


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def q_sample(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process: x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps."""
    ac = _bcast(sched.alphas_cumprod[t], x0)
    return ac.sqrt() * x0 + (1 - ac).sqrt() * noise


def predict_x0_from_eps(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    ac = _bcast(sched.alphas_cumprod[t], x_t)
    return (x_t - (1 - ac).sqrt() * eps) / ac.sqrt().clamp(min=_EPS)


def predict_eps_from_x0(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    ac = _bcast(sched.alphas_cumprod[t], x_t)
    return (x_t - ac.sqrt() * x0) / (1 - ac).sqrt().clamp(min=_EPS)


def v_target(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """v = √ᾱ_t eps - √(1-ᾱ_t) x0 (Salimans & Ho 2022)."""
    ac = _bcast(sched.alphas_cumprod[t], x0)
    return ac.sqrt() * noise - (1 - ac).sqrt() * x0


def predict_x0_from_v(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    ac = _bcast(sched.alphas_cumprod[t], x_t)
    return ac.sqrt() * x_t - (1 - ac).sqrt() * v


def model_output_to_x0_eps(sched: Schedule, prediction_type: str, x_t: torch.Tensor, t: torch.Tensor,
                           out: torch.Tensor, clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Convert a model output of `prediction_type` to (x0, eps); optionally clip x0 to [-1, 1]."""
    if prediction_type == "eps":
        x0 = predict_x0_from_eps(sched, x_t, t, out)
    elif prediction_type == "v":
        x0 = predict_x0_from_v(sched, x_t, t, out)
    elif prediction_type == "x0":
        x0 = x0_from_output(sched, x_t, t, out)
    else:
        raise ValueError(f"prediction_type must be eps, v or x0, got {prediction_type!r}")
    if clip_x0:
        x0 = x0.clamp(-1, 1)
    if prediction_type == "eps" and not clip_x0:
        return x0, out
    return x0, predict_eps_from_x0(sched, x_t, t, x0)


def training_target(sched: Schedule, prediction_type: str, x0: torch.Tensor, t: torch.Tensor,
                    noise: torch.Tensor) -> torch.Tensor:
    if prediction_type == "eps":
        return noise
    if prediction_type == "v":
        return v_target(sched, x0, t, noise)
    if prediction_type == "x0":
        if sched.x0_skip is None:
            return x0
        c = _bcast(sched.x0_skip[t], x0)
        root_ac = _bcast(sched.alphas_cumprod[t], x0).sqrt().clamp(min=_EPS)
        return (x0 - c * q_sample(sched, x0, t, noise) / root_ac) / (1 - c)
    raise ValueError(f"prediction_type must be eps, v or x0, got {prediction_type!r}")


def x0_from_output(sched: Schedule, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """x0 = c(t)·x_t/√ᾱ_t + (1 − c(t))·out: the x0 model's output, with its low-noise skip.

    Why: an x0 network with 8×8-pixel tokens has an error floor (~0.013 MSE in the demo) that at low
    noise is above the noise left in x_t itself (0.0017 at t = 0), so its last sampling steps add
    speckle. With c(t) = SNR/(SNR + x0_skip_snr) the prediction is x_t (rescaled) plus a correction
    whose share shrinks as the noise does, EDM's c_skip idea applied only where x_t is informative.
    Measured on the demo recipe (docs/experiments.md row 26): the network then has to cancel x_t's
    noise and does not, so samples stay noisy; off by default.
    """
    if sched.x0_skip is None:
        return out
    c = _bcast(sched.x0_skip[t], x_t)
    return c * x_t / _bcast(sched.alphas_cumprod[t], x_t).sqrt().clamp(min=_EPS) + (1 - c) * out


def snr_clamp_weights(snr: torch.Tensor, min_snr: float, max_snr: float,
                      mean_over: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's weighting: w = clamp(SNR, min, max), then w / mean(w).

    The mean is taken over `mean_over` (the SNR of every timestep of the schedule, so that the
    expected weight under uniform t is 1 and a batch's weights do not depend on its other samples);
    with mean_over=None it is the batch mean, as the seed computed it.
    """
    w = snr.clamp(min_snr, max_snr)
    ref = w if mean_over is None else mean_over.clamp(min_snr, max_snr)
    return w / ref.mean()


def x0_space_weights(snr: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """Weights that turn the target-space MSE into the x0-space MSE: eps 1/SNR, v 1/(SNR + 1), x0 1.

    With v prediction this trains exactly the x0 objective of an x0 model, but through the
    preconditioned output x0 = √ᾱ·x_t − √(1−ᾱ)·v (EDM's c_skip/c_out idea): at low noise the
    prediction is x_t plus a small correction, so the model cannot add more error than x_t holds.
    """
    if prediction_type == "eps":
        return 1.0 / snr.clamp(min=_EPS)
    if prediction_type == "v":
        return 1.0 / (snr + 1)
    if prediction_type == "x0":
        return torch.ones_like(snr)
    raise ValueError(f"prediction_type must be eps, v or x0, got {prediction_type!r}")


def min_snr_weights(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023) in the loss space of `prediction_type`.

    eps: min(SNR, γ)/SNR (weight 1 where SNR = 0: the 0/0 guard of the paper's code);
    v: min(SNR, γ)/(SNR + 1); x0: min(SNR, γ).
    """
    clipped = snr.clamp(max=gamma)
    if prediction_type == "eps":
        return torch.where(snr > 0, clipped / snr.clamp(min=_EPS), torch.ones_like(snr))
    if prediction_type == "v":
        return clipped / (snr + 1)
    if prediction_type == "x0":
        return clipped
    raise ValueError(f"prediction_type must be eps, v or x0, got {prediction_type!r}")


Denoiser = Callable[..., torch.Tensor]


class Text2SignDiffusion:
    """Training loss and samplers around a denoiser `model(x_t, t, tokens, token_mask, drop_text)`."""

    def __init__(self, *, num_timesteps: int = 50, beta_schedule: str = "cosine",
                 zero_terminal_snr: bool = False, prediction_type: str = "x0",
                 loss_weighting: str = "snr_clamp", use_timestep_weighting: bool = True,
                 weight_min_snr: float = 0.1, weight_max_snr: float = 10.0,
                 min_snr_gamma: float = 5.0, motion_loss_weight: float = 0.0,
                 cond_drop_prob: float = 0.1, timestep_sampling_power: float = 0.0,
                 noise_shared_frac: float = 0.0, x0_skip_snr: float = 0.0,
                 pose_loss_weight: float = 0.0, pose_truth_min_t: int = 0, device: torch.device | str = "cpu"):
        if x0_skip_snr and prediction_type != "x0":
            raise ValueError(f"x0_skip_snr={x0_skip_snr} needs prediction_type 'x0', got {prediction_type!r}")
        self.sched = Schedule.create(beta_schedule, num_timesteps, zero_terminal_snr, device, x0_skip_snr)
        self.prediction_type = prediction_type
        self.loss_weighting = loss_weighting if use_timestep_weighting else "none"
        self.weight_min_snr, self.weight_max_snr = weight_min_snr, weight_max_snr
        self.min_snr_gamma = min_snr_gamma
        self.motion_loss_weight = motion_loss_weight
        self.cond_drop_prob = cond_drop_prob
        # p(t) ∝ (t + 1)^power: power 0 is uniform; > 0 spends more of each batch at high noise,
        # where the text decides the layout (at low noise x_t already shows where the hands are).
        steps = torch.arange(1, num_timesteps + 1, dtype=torch.float64, device=device)
        self.timestep_probs = (steps ** timestep_sampling_power / (steps ** timestep_sampling_power).sum()).float()
        self.timestep_sampling_power = timestep_sampling_power
        if not 0.0 <= noise_shared_frac < 1.0:
            raise ValueError(f"noise_shared_frac must be in [0, 1), got {noise_shared_frac}")
        self.noise_shared_frac = noise_shared_frac
        self.pose_loss_weight = pose_loss_weight
        # Below this step the heatmaps show the pose stage's own prediction, as in sampling, so the
        # denoiser learns to trust x_t over them where x_t already shows the hands (0 = always true).
        self.pose_truth_min_t = pose_truth_min_t

    @classmethod
    def from_config(cls, cfg, device: torch.device | str = "cpu") -> "Text2SignDiffusion":
        return cls(num_timesteps=cfg.num_timesteps, beta_schedule=cfg.beta_schedule,
                   zero_terminal_snr=cfg.zero_terminal_snr, prediction_type=cfg.prediction_type,
                   loss_weighting=cfg.loss_weighting, use_timestep_weighting=cfg.use_timestep_weighting,
                   weight_min_snr=cfg.weight_min_snr, weight_max_snr=cfg.weight_max_snr,
                   min_snr_gamma=cfg.min_snr_gamma, motion_loss_weight=cfg.motion_loss_weight,
                   cond_drop_prob=cfg.cond_drop_prob,
                   timestep_sampling_power=cfg.timestep_sampling_power,
                   noise_shared_frac=cfg.noise_shared_frac, x0_skip_snr=cfg.x0_skip_snr,
                   pose_loss_weight=cfg.pose_loss_weight if cfg.pose_cond else 0.0,
                   pose_truth_min_t=cfg.pose_truth_min_t, device=device)

    @property
    def num_timesteps(self) -> int:
        return self.sched.num_timesteps

    def loss_weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-sample loss weight (B,) for timesteps t under the configured weighting.

        With the x0 skip the network's output error is the x0 error / (1 − c(t)); the factor
        (1 − c(t))² keeps every weighting defined on the x0 error."""
        weights = self._weights(t)
        if self.prediction_type == "x0" and self.sched.x0_skip is not None:
            weights = weights * (1 - self.sched.x0_skip[t]) ** 2
        return weights

    def _weights(self, t: torch.Tensor) -> torch.Tensor:
        snr = self.sched.snr(t)
        if self.loss_weighting == "snr_clamp":
            all_snr = self.sched.snr(torch.arange(self.num_timesteps, device=t.device))
            return snr_clamp_weights(snr, self.weight_min_snr, self.weight_max_snr, all_snr)
        if self.loss_weighting == "min_snr":
            return min_snr_weights(snr, self.min_snr_gamma, self.prediction_type)
        if self.loss_weighting == "x0":
            return x0_space_weights(snr, self.prediction_type)
        return torch.ones_like(snr)

    def motion_mask(self, x0: torch.Tensor) -> torch.Tensor:
        """(B,1,T,H,W) weight map 1 + motion_loss_weight on pixels that change over time in x0.

        Moving pixels (the hands and arms) are a few percent of a sign clip; without extra weight
        a small model first learns the static body and background.
        """
        change = (x0 - x0.mean(dim=2, keepdim=True)).abs().amax(dim=1, keepdim=True)
        moving = (change > 0.1).float()
        return 1 + self.motion_loss_weight * moving

    def noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """Standard-normal noise for (B, C, T, H, W) videos, a share `noise_shared_frac` of whose
        variance is common to all frames of a clip (PYoCo's mixed noise prior, Ge et al. 2023).

        Every element stays N(0, 1), so the schedule and the baselines are unchanged; what changes is
        that a static region sees the same noise in every frame, so the denoiser can keep the
        background and body still instead of re-deciding them frame by frame (flicker). With 0 the
        draws are exactly the iid ones (same generator stream)."""
        eps = torch.randn(shape, device=device, generator=generator)
        if self.noise_shared_frac == 0:
            return eps
        if len(shape) != 5:
            raise ValueError(f"shared-frame noise needs (B, C, T, H, W) shapes, got {tuple(shape)}")
        shared = torch.randn((shape[0], shape[1], 1, shape[3], shape[4]), device=device, generator=generator)
        f = self.noise_shared_frac
        return math.sqrt(1 - f) * eps + math.sqrt(f) * shared

    def draw_training_noise(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
                            device: torch.device | str = "cpu") -> tuple[torch.Tensor, ...]:
        """(t (B,), noise shape, drop_text (B,)) for one batch: t ~ timestep_probs (uniform unless
        timestep_sampling_power > 0), text dropped w.p. cond_drop_prob."""
        b = shape[0]
        if self.timestep_sampling_power == 0:
            t = torch.randint(0, self.num_timesteps, (b,), device=device, generator=generator)
        else:
            t = torch.multinomial(self.timestep_probs.to(device), b, replacement=True, generator=generator)
        noise = self.noise(shape, generator, device)
        drop = torch.rand(b, device=device, generator=generator) < self.cond_drop_prob
        return t, noise, drop

    def training_losses(self, model: Denoiser, x0: torch.Tensor, tokens: torch.Tensor,
                        token_mask: torch.Tensor, generator: torch.Generator | None = None,
                        draws: tuple[torch.Tensor, ...] | None = None,
                        hand_xy: torch.Tensor | None = None) -> dict:
        """One stochastic loss evaluation. Returns dict(loss scalar, per_sample (B,), t (B,), drop).

        `draws` = (t, noise, drop) from draw_training_noise, or None to draw them from `generator`
        (torchrun draws the global batch's and slices it, so N ranks equal one process).
        `hand_xy` (B,T,2,2): ground-truth hand centres for a pose-conditioned model (pose_loss_weight
        > 0): its heatmaps show them, and the loss adds pose_loss_weight x the pose stage's loss
        (`pose_losses`: position MSE + travel term) on the samples that kept their text; the
        position MSE alone is returned as `pose_mse`.
        """
        if draws is None:
            draws = self.draw_training_noise(tuple(x0.shape), generator, x0.device)
        t, noise, drop = draws
        x_t = q_sample(self.sched, x0, t, noise)
        pose_mse = None
        if self.pose_loss_weight > 0 and hand_xy is not None:
            truth = t >= self.pose_truth_min_t if self.pose_truth_min_t > 0 else None
            out, pose = model(x_t, t, tokens, token_mask, drop, hand_xy=hand_xy, return_pose=True,
                              truth_mask=truth)
            keep = (~drop).float()
            mse, per_clip = pose_losses(pose.float(), hand_xy.float())
            pose_mse = (mse * keep).sum() / keep.sum().clamp(min=1.0)
            pose_loss = (per_clip * keep).sum() / keep.sum().clamp(min=1.0)
        else:
            out = model(x_t, t, tokens, token_mask, drop)
        target = training_target(self.sched, self.prediction_type, x0, t, noise)
        err = (out.float() - target.float()) ** 2
        if self.motion_loss_weight > 0:
            err = err * self.motion_mask(x0)
        per_sample = err.mean(dim=(1, 2, 3, 4))
        loss = (per_sample * self.loss_weights(t)).mean()
        result = dict(loss=loss, per_sample=per_sample.detach(), t=t, drop=drop)
        if pose_mse is not None:
            result["loss"] = loss + self.pose_loss_weight * pose_loss
            result["pose_mse"] = pose_mse.detach()
        return result

    def predict(self, model: Denoiser, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor, guidance_scale: float = 1.0,
                clip_x0: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at x_t; guidance runs cond and uncond as ONE batched forward pass.

        At guidance_scale == 1 only the conditional pass runs (the result equals it exactly).
        """
        if guidance_scale == 1.0:
            out = model(x_t, t, tokens, token_mask, None)
        else:
            b = x_t.shape[0]
            drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(x_t.device)
            both = model(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([tokens, tokens]),
                         torch.cat([token_mask, token_mask]), drop)
            cond, uncond = both.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        return model_output_to_x0_eps(self.sched, self.prediction_type, x_t, t, out.float(), clip_x0)

    @torch.no_grad()
    def sample(self, model: Denoiser, tokens: torch.Tensor, token_mask: torch.Tensor,
               shape: tuple[int, ...], *, sampler: str = "ddim", steps: int = 20, eta: float = 0.0,
               guidance_scale: float = 1.0, generator: torch.Generator | None = None,
               callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
               init: torch.Tensor | None = None, start_t: int | None = None) -> torch.Tensor:
        """Generate videos of `shape` (B,3,T,H,W) in [-1, 1].

        sampler='ddpm': ancestral sampling over all T steps (posterior mean and variance β̃_t).
        sampler='ddim': `steps` evenly spaced timesteps, stochasticity `eta` (0 = deterministic).
        callback(t, x_t, x0_pred) is called at every step (the diagnostics record statistics).
        init, start_t: SDEdit (Meng et al. 2021): start from the clean clips `init` noised to step
        start_t instead of from pure noise (DDIM keeps its step spacing: ~steps·(start_t+1)/T
        steps). Where the samples go wrong tells which noise levels fail (evaluate.py --start-t).
        """
        device = tokens.device
        last = self.num_timesteps - 1
        if init is None:
            if start_t is not None:
                raise ValueError("start_t needs the clean clips `init` to noise")
            x = self.noise(shape, generator, device)
        else:
            if start_t is None or not 0 <= start_t <= last:
                raise ValueError(f"start_t must be in [0, {last}] with init, got {start_t}")
            last = start_t
            x = q_sample(self.sched, init.to(device), torch.full((shape[0],), start_t, device=device),
                         self.noise(shape, generator, device))
        if sampler == "ddpm":
            timesteps = list(range(last, -1, -1))
        elif sampler == "ddim":
            if not 1 <= steps <= self.num_timesteps:
                raise ValueError(f"DDIM steps must be in [1, {self.num_timesteps}], got {steps}")
            steps = max(2, round(steps * (last + 1) / self.num_timesteps)) if last < self.num_timesteps - 1 else steps
            timesteps = torch.linspace(last, 0, steps).round().long().tolist()
        else:
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        ac = self.sched.alphas_cumprod
        for i, t_int in enumerate(timesteps):
            t = torch.full((shape[0],), t_int, device=device, dtype=torch.long)
            x0, eps = self.predict(model, x, t, tokens, token_mask, guidance_scale)
            if callback is not None:
                callback(t_int, x, x0)
            if sampler == "ddpm":
                x = self._ddpm_step(x, x0, t_int, generator)
            else:
                prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                a_t = ac[t_int]
                a_prev = ac[prev] if prev >= 0 else torch.ones((), device=device)
                sigma = eta * ((1 - a_prev) / (1 - a_t).clamp(min=_EPS) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
                x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
                if prev >= 0 and eta > 0:
                    x = x + sigma * self.noise(x.shape, generator, device)
        return x.clamp(-1, 1)

    def _ddpm_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int,
                   generator: torch.Generator | None) -> torch.Tensor:
        """Sample x_{t-1} ~ q(x_{t-1} | x_t, x0) (DDPM eq. 6-7)."""
        s = self.sched
        beta, ac, ac_prev = s.betas[t], s.alphas_cumprod[t], s.alphas_cumprod_prev[t]
        coef_x0 = ac_prev.sqrt() * beta / (1 - ac)
        coef_xt = (1 - beta).sqrt() * (1 - ac_prev) / (1 - ac)
        mean = coef_x0 * x0 + coef_xt * x_t
        if t == 0:
            return mean
        var = beta * (1 - ac_prev) / (1 - ac)
        return mean + var.sqrt() * self.noise(x_t.shape, generator, x_t.device)


def per_timestep_mse(values: torch.Tensor, t: torch.Tensor, num_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Sum and count of `values` (B,) per timestep, for logging loss by timestep bucket."""
    sums = torch.zeros(num_timesteps).index_add_(0, t.cpu(), values.detach().float().cpu())
    counts = torch.zeros(num_timesteps).index_add_(0, t.cpu(), torch.ones(len(t)))
    return sums, counts


__all__ = [
    "Schedule", "Text2SignDiffusion", "make_betas", "q_sample", "predict_x0_from_eps",
    "predict_eps_from_x0", "predict_x0_from_v", "v_target", "model_output_to_x0_eps", "x0_from_output",
    "training_target", "snr_clamp_weights", "min_snr_weights", "per_timestep_mse",
]
