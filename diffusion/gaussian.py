"""Gaussian diffusion: the noise schedule, q_sample, the prediction parameterizations and the samplers.

Notation follows DDPM / improved-diffusion: betas, alphas_cumprod (ᾱ_t), t = 0 … T-1 with t = T-1
the noisiest step, x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps, SNR(t) = ᾱ_t / (1 - ᾱ_t). EDM's variables (Karras
et al. 2022) are the same process seen through x̃ = x_t / √ᾱ_t = x0 + σ eps with σ² = 1 / SNR.
The denoiser is passed in as an argument: this module owns the math, never the network.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from typing import Any, Callable

import torch

# Clamp for SNR -> inf at ᾱ = 1 and 1/SNR at ᾱ -> 0 (only reachable with zero terminal SNR).
_EPS = 1e-12


class Prediction(str, Enum):
    """What the network outputs. EPS/V/X0 are the DDPM targets; EDM is Karras et al.'s preconditioned
    F of D = c_skip·x̃ + c_out·F(c_in·x̃), whose target has unit variance at every noise level."""

    EPS = "eps"
    V = "v"
    X0 = "x0"
    EDM = "edm"


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

    @classmethod
    def create(cls, schedule: str, num_timesteps: int, zero_terminal_snr: bool = False,
               device: torch.device | str = "cpu") -> "Schedule":
        betas = make_betas(schedule, num_timesteps, zero_terminal_snr)
        ac = torch.cumprod(1 - betas, 0)
        ac_prev = torch.cat([torch.ones(1, dtype=ac.dtype), ac[:-1]])
        return cls(*(v.float().to(device) for v in (betas, ac, ac_prev)))

    @property
    def num_timesteps(self) -> int:
        return self.betas.shape[0]

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = ᾱ_t / (1 - ᾱ_t), shape of t."""
        ac = self.alphas_cumprod[t]
        return ac / (1 - ac).clamp(min=_EPS)

    def sigma(self, t: torch.Tensor) -> torch.Tensor:
        """EDM's noise level of x̃ = x_t/√ᾱ_t: σ(t) = √((1 - ᾱ_t)/ᾱ_t) = 1/√SNR(t), shape of t."""
        ac = self.alphas_cumprod[t]
        return ((1 - ac) / ac.clamp(min=_EPS)).sqrt()


def _bcast(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def q_sample(sched: Schedule, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Forward process (DDPM eq. 4): x_t = √ᾱ_t x0 + √(1-ᾱ_t) eps."""
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


def edm_coefficients(sigma: torch.Tensor, sigma_data: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of Karras et al. 2022, table 1: c_skip = σ_d²/(σ² + σ_d²),
    c_out = σ·σ_d/√(σ² + σ_d²), c_in = 1/√(σ² + σ_d²). As σ -> 0, c_skip -> 1 and c_out -> 0: the
    denoised output is x̃ plus a correction of size σ, right at low noise by construction."""
    total = sigma**2 + sigma_data**2
    return sigma_data**2 / total, sigma * sigma_data / total.sqrt(), 1 / total.sqrt()


def _guided_text(tokens: torch.Tensor, token_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Guidance's one batch: the texts twice, the second copy dropped to the null text."""
    b = tokens.shape[0]
    drop = torch.cat([torch.zeros(b, dtype=torch.bool), torch.ones(b, dtype=torch.bool)]).to(tokens.device)
    return torch.cat([tokens, tokens]), torch.cat([token_mask, token_mask]), drop


def encode_condition(model: Callable, tokens: torch.Tensor, token_mask: torch.Tensor, guidance_scale: float = 1.0) -> Any:
    """The model's timestep-free part for a whole sample (`model.encode_condition`, in the batch layout
    `GaussianDiffusion.predict` uses at this guidance), or None for a model without one (it then
    encodes its text at every step)."""
    encode = getattr(model, "encode_condition", None)
    if encode is None:
        return None
    return encode(tokens, token_mask, None) if guidance_scale == 1.0 else encode(*_guided_text(tokens, token_mask))


class GaussianDiffusion:
    """The process for one schedule and one parameterization: conversions between the network's
    output and (x0, eps), classifier-free-guided prediction, and the DDPM and DDIM samplers.

    A denoiser is called as `model(model_input(x_t, t), t, tokens, token_mask, drop_text)`; one that
    also has `encode_condition(tokens, token_mask, drop_text)` gets it once per sample and is called
    with `condition=` its result (`encode_condition` below)."""

    def __init__(self, sched: Schedule, prediction: Prediction | str, sigma_data: float = 0.5):
        self.sched = sched
        self.prediction = Prediction(prediction)
        self.sigma_data = sigma_data
        if self.prediction is Prediction.EPS and float(sched.alphas_cumprod[-1]) == 0.0:
            raise ValueError("eps prediction divides by zero at a zero-terminal-SNR step; use v, x0 or edm")

    @property
    def num_timesteps(self) -> int:
        return self.sched.num_timesteps

    def _edm(self, t: torch.Tensor, like: torch.Tensor):
        return tuple(_bcast(c, like) for c in edm_coefficients(self.sched.sigma(t), self.sigma_data))

    def model_input(self, x_t: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the network sees: x_t, or for EDM c_in·x̃ (unit variance at every noise level)."""
        if self.prediction is not Prediction.EDM:
            return x_t
        _, _, c_in = self._edm(t, x_t)
        return c_in * x_t / _bcast(self.sched.alphas_cumprod[t], x_t).sqrt().clamp(min=_EPS)

    def to_x0(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        """The clean-video estimate the network's output implies (no clipping)."""
        if self.prediction is Prediction.EPS:
            return predict_x0_from_eps(self.sched, x_t, t, out)
        if self.prediction is Prediction.V:
            return predict_x0_from_v(self.sched, x_t, t, out)
        if self.prediction is Prediction.X0:
            return out
        c_skip, c_out, _ = self._edm(t, x_t)
        return c_skip * x_t / _bcast(self.sched.alphas_cumprod[t], x_t).sqrt().clamp(min=_EPS) + c_out * out

    def to_x0_eps(self, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor,
                  clip_x0: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) of a network output; with clip_x0 the x0 is clipped to [-1, 1] and eps follows it."""
        x0 = self.to_x0(x_t, t, out)
        if not clip_x0 and self.prediction is Prediction.EPS:
            return x0, out
        if clip_x0:
            x0 = x0.clamp(-1, 1)
        return x0, predict_eps_from_x0(self.sched, x_t, t, x0)

    def target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The training target of the network's output for clean x0 noised with `noise` at t."""
        if self.prediction is Prediction.EPS:
            return noise
        if self.prediction is Prediction.V:
            return v_target(self.sched, x0, t, noise)
        if self.prediction is Prediction.X0:
            return x0
        c_skip, c_out, _ = self._edm(t, x0)
        x_tilde = q_sample(self.sched, x0, t, noise) / _bcast(self.sched.alphas_cumprod[t], x0).sqrt().clamp(min=_EPS)
        return (x0 - c_skip * x_tilde) / c_out

    def predict(self, model: Callable, x_t: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor,
                token_mask: torch.Tensor, guidance_scale: float = 1.0,
                clip_x0: bool = True, condition: Any = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0, eps) at x_t. Guidance (Ho & Salimans 2022) runs cond and uncond as ONE batched forward;
        at guidance_scale == 1 only the conditional pass runs. The outputs are combined before the
        conversion, which is affine in the output, so this equals combining the x0 estimates.
        `condition`: `encode_condition(model, ...)` of these tokens and this guidance, made once per
        sample (the model then skips its text encoder and pose stage)."""
        inp = self.model_input(x_t, t)
        extra = {} if condition is None else dict(condition=condition)
        if guidance_scale == 1.0:
            out = model(inp, t, tokens, token_mask, None, **extra)
        else:
            both = model(torch.cat([inp, inp]), torch.cat([t, t]), *_guided_text(tokens, token_mask), **extra)
            cond, uncond = both.chunk(2)
            out = uncond + guidance_scale * (cond - uncond)
        return self.to_x0_eps(x_t, t, out.float(), clip_x0)

    def ddim_step(self, x_t: torch.Tensor, x0: torch.Tensor, eps: torch.Tensor, t: int, t_prev: int,
                  eta: float, noise: torch.Tensor | None) -> torch.Tensor:
        """x_{t_prev} from x_t (Song et al. 2021, eq. 12): √ᾱ_prev·x0 + √(1 − ᾱ_prev − σ²)·eps + σ·z
        with σ = η·√((1 − ᾱ_prev)/(1 − ᾱ_t))·√(1 − ᾱ_t/ᾱ_prev); t_prev = -1 is the clean end (ᾱ = 1)."""
        ac = self.sched.alphas_cumprod
        a_t = ac[t]
        a_prev = ac[t_prev] if t_prev >= 0 else torch.ones((), device=x_t.device)
        sigma = eta * ((1 - a_prev) / (1 - a_t).clamp(min=_EPS) * (1 - a_t / a_prev)).clamp(min=0).sqrt()
        x = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).clamp(min=0).sqrt() * eps
        return x + sigma * noise if noise is not None and t_prev >= 0 and eta > 0 else x

    def ddpm_step(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, noise: torch.Tensor | None) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x0) (Ho et al. 2020, eq. 6-7): the posterior mean
        √ᾱ_{t-1}β_t/(1-ᾱ_t)·x0 + √α_t(1-ᾱ_{t-1})/(1-ᾱ_t)·x_t plus √β̃_t noise (none at t = 0)."""
        s = self.sched
        beta, ac, ac_prev = s.betas[t], s.alphas_cumprod[t], s.alphas_cumprod_prev[t]
        mean = ac_prev.sqrt() * beta / (1 - ac) * x0 + (1 - beta).sqrt() * (1 - ac_prev) / (1 - ac) * x_t
        if t == 0 or noise is None:
            return mean
        return mean + (beta * (1 - ac_prev) / (1 - ac)).sqrt() * noise

    def timesteps(self, sampler: str, steps: int, last: int) -> list[int]:
        """The reverse-process timesteps from `last` down to 0: all of them for DDPM, `steps` evenly
        spaced ones for DDIM (fewer, in proportion, when starting below the top, as SDEdit does)."""
        if sampler == "ddpm":
            return list(range(last, -1, -1))
        if sampler != "ddim":
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}")
        if not 1 <= steps <= self.num_timesteps:
            raise ValueError(f"DDIM steps must be in [1, {self.num_timesteps}], got {steps}")
        if last < self.num_timesteps - 1:
            steps = max(2, round(steps * (last + 1) / self.num_timesteps))
        return torch.linspace(last, 0, steps).round().long().tolist()

    @torch.no_grad()
    def sample(self, model: Callable, tokens: torch.Tensor, token_mask: torch.Tensor,
               shape: tuple[int, ...], *, sampler: str = "ddim", steps: int = 20, eta: float = 0.0,
               guidance_scale: float = 1.0, generator: torch.Generator | None = None,
               callback: Callable[[int, torch.Tensor, torch.Tensor], None] | None = None,
               init: torch.Tensor | None = None, start_t: int | None = None) -> torch.Tensor:
        """Generate videos of `shape` (B,3,T,H,W) in [-1, 1].

        callback(t, x_t, x0_pred) is called at every step (the diagnostics record statistics).
        init, start_t: SDEdit (Meng et al. 2021): start from the clean clips `init` noised to step
        start_t instead of from pure noise. Where the samples go wrong tells which noise levels fail.
        """
        device = tokens.device
        last = self.num_timesteps - 1

        def noise() -> torch.Tensor:
            return torch.randn(shape, device=device, generator=generator)

        if init is None:
            if start_t is not None:
                raise ValueError("start_t needs the clean clips `init` to noise")
            x = noise()
        else:
            if start_t is None or not 0 <= start_t <= last:
                raise ValueError(f"start_t must be in [0, {last}] with init, got {start_t}")
            last = start_t
            x = q_sample(self.sched, init.to(device), torch.full((shape[0],), start_t, device=device), noise())
        timesteps = self.timesteps(sampler, steps, last)
        condition = encode_condition(model, tokens, token_mask, guidance_scale)
        for i, t_int in enumerate(timesteps):
            t = torch.full((shape[0],), t_int, device=device, dtype=torch.long)
            x0, eps = self.predict(model, x, t, tokens, token_mask, guidance_scale, condition=condition)
            if callback is not None:
                callback(t_int, x, x0)
            if sampler == "ddpm":
                x = self.ddpm_step(x, x0, t_int, noise() if t_int > 0 else None)
            else:
                prev = timesteps[i + 1] if i + 1 < len(timesteps) else -1
                x = self.ddim_step(x, x0, eps, t_int, prev, eta, noise() if prev >= 0 and eta > 0 else None)
        return x.clamp(-1, 1)
