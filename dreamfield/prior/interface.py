"""The prior interface as a typing Protocol (what SDS, DDS and the samplers may call)."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from dreamfield.diffusion import NoiseSchedule
from dreamfield.prior.text import TextEmbedding


class Prior(Protocol):
    """A frozen latent diffusion model seen through encode / decode / embed / eps.

    Every tensor a method returns is float32; the networks may run in ``dtype``.
    """

    schedule: NoiseSchedule
    device: torch.device
    dtype: torch.dtype
    native_size: int  # image side the encoder expects (inputs are resized to it)
    latent_channels: int

    def encode(self, rgb: Tensor) -> Tensor:
        """(B, 3, H, W) in [0, 1] -> latents (B, C, h, w), differentiable."""
        ...

    def decode(self, z: Tensor) -> Tensor:
        """(B, C, h, w) -> images (B, 3, native, native) in [0, 1]."""
        ...

    def embed(self, prompts: list[str], negative: str = "") -> TextEmbedding:
        """Text embeddings for B prompts (cached)."""
        ...

    def eps(self, z_t: Tensor, t: Tensor, text: TextEmbedding, guidance_scale: float) -> Tensor:
        """Guided noise prediction (B, C, h, w) at noisy latents z_t and timesteps t (B,), no gradient."""
        ...
