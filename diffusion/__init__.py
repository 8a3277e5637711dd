"""Diffusion: the Gaussian process and its samplers (gaussian.py), the training objective (objective.py).

    diffusion = build_diffusion(cfg, device)
    objective = build_objective(cfg, diffusion)
"""
from __future__ import annotations

import torch

from diffusion.gaussian import GaussianDiffusion, Prediction, Schedule
from diffusion.objective import DenoisingLoss, LossTerms, MinSNR, SNRClamp, TimestepSampler, Uniform

__all__ = ["GaussianDiffusion", "Prediction", "Schedule", "DenoisingLoss", "LossTerms", "build_diffusion",
           "build_objective"]


def build_diffusion(cfg, device: torch.device | str = "cpu") -> GaussianDiffusion:
    """The process of `cfg` (schedule, prediction type, σ_data) on `device`."""
    sched = Schedule.create(cfg.beta_schedule, cfg.num_timesteps, cfg.zero_terminal_snr, device)
    return GaussianDiffusion(sched, cfg.prediction_type, cfg.sigma_data)


def build_objective(cfg, diffusion: GaussianDiffusion) -> DenoisingLoss:
    """The training loss of `cfg`: timestep sampling, weighting (off when use_timestep_weighting is
    false, the historical switch), motion weighting, the temporal-difference term, text dropout and
    the pose stage's term."""
    from models import has_temporal_blend  # models imports diffusion.gaussian: not at the top

    device = diffusion.sched.betas.device
    if not cfg.use_timestep_weighting or cfg.loss_weighting == "none":
        weighting = Uniform()
    elif cfg.loss_weighting == "snr_clamp":
        weighting = SNRClamp(cfg.weight_min_snr, cfg.weight_max_snr,
                             diffusion.sched.snr(torch.arange(cfg.num_timesteps, device=device)))
    else:
        weighting = MinSNR(cfg.min_snr_gamma, diffusion.prediction, cfg.sigma_data)
    return DenoisingLoss(diffusion, weighting, TimestepSampler(cfg.num_timesteps, cfg.timestep_sampling_power, device),
                         cfg.cond_drop_prob, cfg.motion_loss_weight, cfg.temporal_diff_loss_weight,
                         aux_weights={"pose": cfg.pose_loss_weight} if cfg.pose_cond else {},
                         blend_aux=has_temporal_blend(cfg))
