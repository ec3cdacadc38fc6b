"""The one interface to a frozen latent diffusion prior.

A prior has ``schedule``, ``device``, ``dtype``, ``native_size``, ``latent_channels`` and
``encode(rgb) -> z``, ``decode(z) -> rgb``, ``embed(prompts, negative) -> TextEmbedding``,
``eps(z_t, t, text, guidance_scale) -> eps_hat``. Two implementations: :class:`DiffusersPrior`
(a Stable-Diffusion-style folder, loaded by :func:`load_prior`) and the analytic :class:`GaussianPrior`.

diffusers/transformers are imported inside ``load_prior`` only, so ``import dreamfield.prior`` stays light.
"""

from dreamfield.prior.diffusers_prior import DiffusersPrior, PriorLoadError, load_prior, resolve_dtype
from dreamfield.prior.gaussian import GaussianPrior
from dreamfield.prior.interface import Prior
from dreamfield.prior.text import TextEmbedding, view_label, view_prompt

__all__ = [
    "DiffusersPrior",
    "GaussianPrior",
    "Prior",
    "PriorLoadError",
    "TextEmbedding",
    "load_prior",
    "resolve_dtype",
    "view_label",
    "view_prompt",
]
