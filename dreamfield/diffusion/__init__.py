"""The self-contained diffusion core: schedule (float64), forward process, posterior, DDPM/DDIM/Langevin.

Nothing here imports diffusers; diffusers' schedulers serve only as references in the tests.
"""

from dreamfield.diffusion.sampling import (
    METHODS,
    SPACINGS,
    make_timesteps,
    sample,
    sample_ddim,
    sample_ddpm,
    sample_langevin,
)
from dreamfield.diffusion.schedule import (
    BETA_SCHEDULES,
    PREDICTION_TYPES,
    NoiseSchedule,
    ddim_step,
    ddpm_step,
    kl_gaussian,
)

__all__ = [
    "BETA_SCHEDULES",
    "METHODS",
    "PREDICTION_TYPES",
    "SPACINGS",
    "NoiseSchedule",
    "ddim_step",
    "ddpm_step",
    "kl_gaussian",
    "make_timesteps",
    "sample",
    "sample_ddim",
    "sample_ddpm",
    "sample_langevin",
]
