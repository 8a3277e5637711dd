"""The training objective: which timesteps, which weights, which pixels, plus the model's own terms.

Small loss classes in the manner of EDM's `loss.py`: a timestep sampler, a per-timestep weighting,
and `DenoisingLoss`, which noises a batch, calls the denoiser and returns one typed `LossTerms`.
Auxiliary terms (the pose stage's loss) come back from the model as a dict of per-clip values; the
objective averages them over the clips that kept their text and adds them with their weights.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from diffusion.gaussian import _EPS, GaussianDiffusion, Prediction, q_sample


@dataclass
class LossTerms:
    """One loss evaluation on a batch (or a slice of one).

    loss: scalar that backward() sees (weighted denoising loss + weighted auxiliary terms);
    per_sample (B,): unweighted target-space MSE of each clip (logged by timestep bucket);
    t (B,): the clips' timesteps; aux_sums: each auxiliary term summed over the clips that kept their
    text, and kept: how many did (so a slice's terms add up to the whole batch's exactly)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor
    aux_sums: dict[str, torch.Tensor] = field(default_factory=dict)
    kept: torch.Tensor | float = 0.0

    def aux_mean(self, name: str) -> float:
        """Mean of an auxiliary term over the clips that kept their text."""
        return float(self.aux_sums[name]) / max(float(self.kept), 1.0)

    @staticmethod
    def merge(parts: list["LossTerms"], shares: list[float]) -> "LossTerms":
        """The terms of a whole batch from those of its slices (`shares` = slice size / batch size)."""
        return LossTerms(loss=sum(p.loss.detach() * s for p, s in zip(parts, shares)),
                         per_sample=torch.cat([p.per_sample for p in parts]),
                         t=torch.cat([p.t for p in parts]),
                         aux_sums={k: sum(p.aux_sums[k] for p in parts) for k in parts[0].aux_sums},
                         kept=sum(p.kept for p in parts))


class TimestepSampler:
    """Training t ~ p(t) ∝ (t + 1)^power: 0 is uniform; > 0 spends more of each batch at high noise,
    where the text decides the layout (docs/experiments.md, rows 11 and 14)."""

    def __init__(self, num_timesteps: int, power: float, device: torch.device | str = "cpu"):
        steps = torch.arange(1, num_timesteps + 1, dtype=torch.float64, device=device)
        self.probs = (steps**power / (steps**power).sum()).float()
        self.power, self.num_timesteps = power, num_timesteps

    def __call__(self, batch: int, generator: torch.Generator | None, device: torch.device | str) -> torch.Tensor:
        if self.power == 0:
            return torch.randint(0, self.num_timesteps, (batch,), device=device, generator=generator)
        return torch.multinomial(self.probs.to(device), batch, replacement=True, generator=generator)


class Uniform:
    """Every timestep weighs 1 in the target space (for EDM's F this is EDM's λ(σ) = 1/c_out²)."""

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        return torch.ones_like(snr)


class SNRClamp:
    """The historical weighting: w = clamp(SNR, min, max) / mean over the schedule's timesteps, so the
    expected weight under uniform t is 1 and a batch's weights do not depend on its other clips."""

    def __init__(self, min_snr: float, max_snr: float, schedule_snr: torch.Tensor):
        self.min_snr, self.max_snr = min_snr, max_snr
        self.mean = float(schedule_snr.clamp(min_snr, max_snr).mean())

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        return snr.clamp(self.min_snr, self.max_snr) / self.mean


class MinSNR:
    """Min-SNR-γ (Hang et al. 2023) in the target space of the prediction: eps min(SNR, γ)/SNR (1 at
    SNR = 0, the 0/0 guard of the paper's code), v min(SNR, γ)/(SNR + 1), x0 min(SNR, γ), EDM
    min(SNR, γ)·c_out² (the x0-space weight times the x0 error's scale)."""

    def __init__(self, gamma: float, prediction: Prediction, sigma_data: float = 0.5):
        self.gamma, self.prediction, self.sigma_data = gamma, Prediction(prediction), sigma_data

    def __call__(self, snr: torch.Tensor) -> torch.Tensor:
        clipped = snr.clamp(max=self.gamma)
        if self.prediction is Prediction.EPS:
            return torch.where(snr > 0, clipped / snr.clamp(min=_EPS), torch.ones_like(snr))
        if self.prediction is Prediction.V:
            return clipped / (snr + 1)
        if self.prediction is Prediction.X0:
            return clipped
        sigma2 = 1 / snr.clamp(min=_EPS)
        return clipped * sigma2 * self.sigma_data**2 / (sigma2 + self.sigma_data**2)


def motion_mask(x0: torch.Tensor, extra_weight: float) -> torch.Tensor:
    """(B,1,T,H,W) weight map 1 + extra_weight on pixels that change over time in x0.

    Moving pixels (hands and arms) are a few percent of a sign clip; without extra weight, and without
    a pose stage that places them, a small model first learns the static body (docs/experiments.md,
    row 2)."""
    change = (x0 - x0.mean(dim=2, keepdim=True)).abs().amax(dim=1, keepdim=True)
    return 1 + extra_weight * (change > 0.1).float()


def temporal_difference_error(diff: torch.Tensor) -> torch.Tensor:
    """(B,) mean squared frame-to-frame change of the error `diff` (B, C, T, H, W).

    c_skip and c_out are constant over a clip's frames, so in EDM's target space this is the x0
    error's temporal difference up to the clip's loss weight. Added to the plain MSE with weight w it
    weighs the error's temporal frequency ω by 1 + w·(2 − 2cos ω): a change every frame (ω = π, the
    grain and flicker of docs/experiments.md rows 61–64) 1 + 4w, an offset constant over the clip 1.
    Any positive weighting of the error's spectrum has the same minimiser, the posterior mean
    E[x0 | x_t]; it only decides which errors a small, briefly trained model removes first."""
    return (diff[:, :, 1:] - diff[:, :, :-1]).pow(2).mean(dim=tuple(range(1, diff.dim())))


class DenoisingLoss:
    """The denoising loss of `diffusion`'s parameterization, plus the model's auxiliary terms.

    draw(shape) -> (t, noise, drop_text) for one batch; __call__(model, x0, tokens, mask, draws, cond)
    -> LossTerms. `cond` is passed to the model as keyword arguments (the pose stage's ground-truth
    keypoints); with a non-empty cond the model is asked for its auxiliary terms (`return_aux=True`:
    it returns (output, {name: per-clip values (B,)})). They are conditional on the text, so a clip
    whose text was dropped contributes 0; terms named in `aux_weights` join the loss with that weight
    as a mean over the batch's clips (a sum over clips / B, which adds up exactly over the CPU
    streams' and the ranks' slices); the others are only reported. A model with the temporal blend
    (`blend_aux`) also returns its output before the blend, aux["unblended"] (B, 3, T, H, W): the
    fit is then the mean of both outputs' fits, so each frame's own estimate keeps learning to
    denoise (docs/experiments.md, rows 77-78)."""

    def __init__(self, diffusion: GaussianDiffusion, weighting, timestep_sampler: TimestepSampler,
                 cond_drop_prob: float, motion_loss_weight: float = 0.0, temporal_diff_loss_weight: float = 0.0,
                 aux_weights: dict[str, float] | None = None, blend_aux: bool = False):
        self.diffusion, self.weighting, self.timestep_sampler = diffusion, weighting, timestep_sampler
        self.blend_aux = blend_aux
        self.cond_drop_prob, self.motion_loss_weight = cond_drop_prob, motion_loss_weight
        self.temporal_diff_loss_weight = temporal_diff_loss_weight
        self.aux_weights = dict(aux_weights or {})

    def _fit(self, diff: torch.Tensor, x0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(per-clip MSE, per-clip fit: the MSE with motion weighting plus the temporal-difference term)."""
        err = diff**2
        if self.motion_loss_weight > 0:
            err = err * motion_mask(x0, self.motion_loss_weight)
        per_sample = err.mean(dim=tuple(range(1, err.dim())))
        fit = per_sample
        if self.temporal_diff_loss_weight > 0:
            fit = fit + self.temporal_diff_loss_weight * temporal_difference_error(diff)
        return per_sample, fit

    def weights(self, t: torch.Tensor) -> torch.Tensor:
        """Per-clip loss weight (B,) of timesteps t."""
        return self.weighting(self.diffusion.sched.snr(t))

    def draw(self, shape: tuple[int, ...], generator: torch.Generator | None = None,
             device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(t (B,), noise of `shape`, drop_text (B,)): text dropped w.p. cond_drop_prob (CFG training)."""
        t = self.timestep_sampler(shape[0], generator, device)
        noise = torch.randn(shape, device=device, generator=generator)
        drop = torch.rand(shape[0], device=device, generator=generator) < self.cond_drop_prob
        return t, noise, drop

    def __call__(self, model, x0: torch.Tensor, tokens: torch.Tensor, token_mask: torch.Tensor,
                 draws: tuple[torch.Tensor, ...], cond: dict[str, torch.Tensor] | None = None) -> LossTerms:
        t, noise, drop = draws
        d = self.diffusion
        x_t = q_sample(d.sched, x0, t, noise)
        inp = d.model_input(x_t, t)
        if cond or self.blend_aux:
            out, aux = model(inp, t, tokens, token_mask, drop, **(cond or {}), return_aux=True)
        else:
            out, aux = model(inp, t, tokens, token_mask, drop), {}
        unblended = aux.pop("unblended", None)
        if self.blend_aux and unblended is None:
            raise ValueError("blend_aux: the model returned no 'unblended' output")
        target = d.target(x0, t, noise).float()
        per_sample, fit = self._fit(out.float() - target, x0)
        if unblended is not None:
            fit = 0.5 * (fit + self._fit(unblended.float() - target, x0)[1])
        loss = (fit * self.weights(t)).mean()
        keep = (~drop).float()
        sums = {k: (v.float() * keep).sum() for k, v in aux.items()}
        for name, weight in self.aux_weights.items():
            if cond and name not in sums:
                raise ValueError(f"the model returned no auxiliary term {name!r} (got {sorted(sums)})")
            if name in sums:
                loss = loss + weight * sums[name] / x0.shape[0]
        return LossTerms(loss=loss, per_sample=per_sample.detach(), t=t,
                         aux_sums={k: v.detach() for k, v in sums.items()}, kept=keep.sum())
