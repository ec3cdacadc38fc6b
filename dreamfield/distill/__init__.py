"""Score distillation as pure functions: timesteps and weights, SDS and DDS gradients, regularisers.

Nothing here imports diffusers: the prior is reached only through its interface
(:class:`dreamfield.prior.interface.Prior`), so every function runs on an analytic prior in tests.
"""

from dreamfield.distill.regularizers import entropy_loss, opacity_loss
from dreamfield.distill.score import NonFiniteError, dds_grad, grad_to_loss, sds_grad, sds_image_loss, sds_image_target
from dreamfield.distill.timesteps import WEIGHTINGS, sample_timesteps, t_max_at, t_min_at, timestep_range, weight

__all__ = [
    "WEIGHTINGS",
    "NonFiniteError",
    "dds_grad",
    "entropy_loss",
    "grad_to_loss",
    "opacity_loss",
    "sample_timesteps",
    "sds_grad",
    "sds_image_loss",
    "sds_image_target",
    "t_max_at",
    "t_min_at",
    "timestep_range",
    "weight",
]
