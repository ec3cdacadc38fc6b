"""Which diffusion timesteps score distillation samples, and how it weights them.

Notation as in :mod:`dreamfield.diffusion.schedule`: T training timesteps, abar_t = alphas_cumprod[t],
SNR_t = abar_t / (1 - abar_t).
"""

from __future__ import annotations

import torch
from torch import Tensor

from dreamfield.config import GuidanceConfig
from dreamfield.diffusion import NoiseSchedule

WEIGHTINGS = ("sds", "uniform", "snr_sqrt")


def t_max_at(step: int, total_steps: int, cfg: GuidanceConfig) -> float:
    """The upper end of the timestep range (a fraction of T) at ``step``.

    Without annealing (``cfg.t_max_end`` None) it is ``cfg.t_max``. With annealing it moves linearly
    from t_max at step 0 to t_max_end at ``cfg.anneal_steps`` (0 = ``total_steps``) and stays there;
    lowering the largest noise level late in a run sharpens detail (as threestudio and the toy prior
    facts found: 0.98 -> 0.5).
    """
    if cfg.t_max_end is None:
        return cfg.t_max
    span = cfg.anneal_steps if cfg.anneal_steps > 0 else total_steps
    frac = 1.0 if span <= 0 else min(max(step / span, 0.0), 1.0)
    return cfg.t_max + (cfg.t_max_end - cfg.t_max) * frac


def t_min_at(step: int, cfg: GuidanceConfig) -> float:
    """The lower end of the timestep range (a fraction of T) at ``step``: ``cfg.t_min_start`` for the first
    ``cfg.t_min_start_steps`` steps when it is set, ``cfg.t_min`` after (a step, not a ramp)."""
    if cfg.t_min_start is not None and step < cfg.t_min_start_steps:
        return cfg.t_min_start
    return cfg.t_min


def timestep_range(step: int, total_steps: int, cfg: GuidanceConfig, T: int) -> tuple[int, int]:
    """The inclusive integer range [lo, hi] of timesteps at ``step``: lo = int(t_min T), hi = int(t_max T),
    with t_min from :func:`t_min_at` and t_max from :func:`t_max_at`.

    hi is capped at T - 1 and is at least lo. Raises ValueError for fractions outside [0, 1].
    """
    lo_frac, hi_frac = t_min_at(step, cfg), t_max_at(step, total_steps, cfg)
    for name, v in (("t_min", lo_frac), ("t_max", cfg.t_max), ("t_max (annealed)", hi_frac)):
        if not 0.0 <= v <= 1.0:
            raise ValueError(f"guidance.{name}={v} must lie in [0, 1]")
    lo = min(int(lo_frac * T), T - 1)
    hi = max(min(int(hi_frac * T), T - 1), lo)
    return lo, hi


def sample_timesteps(
    batch: int,
    step: int,
    total_steps: int,
    cfg: GuidanceConfig,
    T: int,
    generator: torch.Generator | None = None,
    device: str | torch.device = "cpu",
) -> Tensor:
    """Timesteps t ~ U{lo, ..., hi} (see :func:`timestep_range`), LongTensor (batch,) on ``device``.

    DreamFusion (Poole et al. 2022, Sec. 3) samples t ~ U(0.02, 0.98); the integers are drawn with
    ``generator`` on the generator's own device, so a CPU generator gives the same draws for any device.
    """
    lo, hi = timestep_range(step, total_steps, cfg, T)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    t = torch.randint(lo, hi + 1, (batch,), generator=generator, device=gen_device)
    return t.to(device, non_blocking=True)


def weight(schedule: NoiseSchedule, t: Tensor, kind: str) -> Tensor:
    """The per-timestep weight w(t) of the distillation gradient, float32 (B,) on t's device.

    "sds":      w = 1 - abar_t = sigma_t^2, the w(t) of DreamFusion's gradient (Poole et al. 2022, Eq. 3)
                as threestudio sets it by default.
    "uniform":  w = 1 (the raw residual eps_hat - eps; DDS as Hertz et al. 2023, Sec. 3, write it).
    "snr_sqrt": w = sqrt(abar_t (1 - abar_t)) = (1 - abar_t) sqrt(SNR_t). Since
                x0_hat - z = -sqrt((1 - abar_t) / abar_t) (eps_hat - eps), this weight makes the
                gradient -abar_t (x0_hat - z): an x0-space residual scaled by abar_t, which fades out the
                largest noise levels, where x0_hat is a blurry average.
    """
    if kind not in WEIGHTINGS:
        raise ValueError(f"weighting {kind!r} is not one of {', '.join(WEIGHTINGS)}")
    abar = schedule.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()]  # float64 (B,)
    if kind == "sds":
        w = 1.0 - abar
    elif kind == "uniform":
        w = torch.ones_like(abar)
    else:  # "snr_sqrt"
        w = (abar * (1.0 - abar)).sqrt()
    return w.to(device=t.device, dtype=torch.float32)
