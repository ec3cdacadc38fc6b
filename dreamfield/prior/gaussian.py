"""An analytic prior with the prior interface: latents are Gaussian, eps is exact (for tests and checks).

Data z_0 ~ N(mu_y, sigma^2 I) for the prompt y; the exact noise prediction under the schedule is
eps*(z_t, t) = sqrt(1 - abar_t) (z_t - sqrt(abar_t) mu_y) / (abar_t sigma^2 + 1 - abar_t)
(:class:`dreamfield.diffusion.analytic.GaussianData`). SDS on this prior has the fixed point mu_y,
and DDS between two prompts moves a latent by mu_tgt - mu_src, which the distillation tests check.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfield.diffusion import NoiseSchedule
from dreamfield.diffusion.analytic import GaussianData
from dreamfield.prior.text import TextEmbedding


class GaussianPrior:
    """Prior interface over Gaussian latents N(mu_y, sigma^2 I), identity encoder.

    Args:
        mu: the mean (C, h, w) for every prompt, or a mapping prompt -> mean (C, h, w) (all the same shape).
        sigma: standard deviation of the data (> 0).
        schedule: the noise schedule (default: SD's scaled_linear, 1000 steps, epsilon).
        uncond_mu: the mean of the unconditional model. When given, eps applies classifier-free guidance
            exactly (eps_u + s (eps_c - eps_u), whose SDS fixed point is uncond_mu + s (mu_y - uncond_mu));
            when None, guidance_scale is ignored and eps is the conditional eps.
        device: where tensors live.

    encode is the identity after a bilinear resize to (h, w) (so C must be 3 to encode images); decode
    is the identity clamped to [0, 1]. Text embeddings are placeholders (B, 1, 1): the prompt strings
    they carry select mu.
    """

    def __init__(
        self,
        mu: Tensor | Mapping[str, Tensor],
        sigma: float,
        schedule: NoiseSchedule | None = None,
        uncond_mu: Tensor | None = None,
        device: str | torch.device = "cpu",
    ) -> None:
        self.device = torch.device(device)
        self.dtype = torch.float32
        self.schedule = schedule if schedule is not None else NoiseSchedule()
        means = dict(mu) if isinstance(mu, Mapping) else {None: mu}
        shapes = {tuple(m.shape) for m in means.values()}
        if len(shapes) != 1 or len(next(iter(shapes))) != 3:
            raise ValueError(f"GaussianPrior: every mu must have the same shape (C, h, w), got {sorted(shapes)}")
        self._data = {k: GaussianData(m.to(self.device, self.dtype), sigma) for k, m in means.items()}
        self._uncond = None if uncond_mu is None else GaussianData(uncond_mu.to(self.device, self.dtype), sigma)
        C, h, w = next(iter(shapes))
        self.latent_channels = C
        self.native_size = h
        self.latent_size = h
        self._hw = (h, w)

    def mu(self, prompt: str) -> Tensor:
        """The mean (C, h, w) for a prompt."""
        return self._lookup(prompt).mu

    def _lookup(self, prompt: str) -> GaussianData:
        if None in self._data:
            return self._data[None]
        if prompt not in self._data:
            raise ValueError(f"GaussianPrior has no mean for prompt {prompt!r}; known: {sorted(self._data)}")
        return self._data[prompt]

    def encode(self, rgb: Tensor) -> Tensor:
        """Images (B, 3, H, W) -> latents (B, 3, h, w): bilinear resize, otherwise the identity."""
        if self.latent_channels != 3:
            raise ValueError(f"GaussianPrior.encode needs 3 latent channels, this prior has {self.latent_channels}")
        x = rgb.to(self.device, self.dtype)
        if x.shape[-2:] != self._hw:
            x = F.interpolate(x, size=self._hw, mode="bilinear", align_corners=False, antialias=False)
        return x

    def decode(self, z: Tensor) -> Tensor:
        """Latents (B, C, h, w) -> the same values clamped to [0, 1]."""
        return z.to(self.device, self.dtype).clamp(0.0, 1.0)

    def embed(self, prompts: list[str], negative: str = "") -> TextEmbedding:
        """Placeholder embeddings (B, 1, 1) carrying the prompt strings (unknown prompts are an error)."""
        if isinstance(prompts, str):
            raise ValueError("embed expects a list of prompts, got a single string; wrap it in a list")
        for p in prompts:
            self._lookup(p)
        zeros = torch.zeros(len(prompts), 1, 1, device=self.device)
        return TextEmbedding(zeros, zeros.clone(), tuple(prompts), negative)

    @torch.no_grad()
    def eps(self, z_t: Tensor, t: Tensor, text: TextEmbedding, guidance_scale: float) -> Tensor:
        """Exact eps (B, C, h, w) float32 at z_t (B, C, h, w), t LongTensor (B,), one prompt per row."""
        B = z_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.long, device=self.device).reshape(-1).expand(B)
        text = text.repeat(B)
        x = z_t.to(self.device, torch.float32)
        eps_c = torch.empty_like(x)
        for prompt in dict.fromkeys(text.prompts):
            rows = torch.tensor([i for i, p in enumerate(text.prompts) if p == prompt], device=self.device)
            eps_c[rows] = self._lookup(prompt).eps(x[rows], t[rows], self.schedule)
        if self._uncond is None:
            return eps_c
        eps_u = self._uncond.eps(x, t, self.schedule)
        return eps_u + guidance_scale * (eps_c - eps_u)  # classifier-free guidance (Ho & Salimans 2022, Eq. 6)
