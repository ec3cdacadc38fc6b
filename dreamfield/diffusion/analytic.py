"""Exact noise predictions for Gaussian and Gaussian-mixture data, for checking samplers and SDS.

Under the forward process x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM Eq. 4), data
x_0 ~ N(mu, s^2 I) gives the marginal q(x_t) = N(sqrt(abar_t) mu, (abar_t s^2 + 1 - abar_t) I), and a
mixture sum_k w_k N(mu_k, s_k^2 I) gives the mixture of those. The optimal noise predictor is
eps*(x_t, t) = E[eps | x_t] = -sqrt(1 - abar_t) grad log q(x_t) (Tweedie's formula; the link between
denoising and score matching used in DDPM Sec. 3.2 and Song et al. 2021, Eq. 7).

All methods take x_t (B, *event) with t LongTensor (B,), compute in float64 (like the schedule) and
return per-sample values (B, *event) or (B,) in x_t's dtype, differentiable in x_t.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dreamfield.diffusion.schedule import NoiseSchedule, _compute_dtype


def _abar(schedule: NoiseSchedule, t: Tensor, x: Tensor) -> Tensor:
    """abar_t (B,) in x's dtype and device."""
    return schedule.alphas_cumprod[torch.as_tensor(t, dtype=torch.long).cpu()].to(device=x.device, dtype=x.dtype)


def _up(x: Tensor) -> Tensor:
    """x in the float64 compute dtype (float32 on MPS)."""
    return x.to(_compute_dtype(x))


class GaussianData:
    """Data x_0 ~ N(mu, diag(sigma^2)) with mu of any event shape (e.g. a latent (4, 16, 16)).

    Args:
        mu: mean, a tensor of the event shape.
        sigma: standard deviation, a float or a tensor broadcastable to mu's shape (positive).
    """

    def __init__(self, mu: Tensor, sigma: float | Tensor) -> None:
        self.mu = torch.as_tensor(mu)
        self.sigma = torch.as_tensor(sigma, dtype=self.mu.dtype, device=self.mu.device)
        if not bool((self.sigma > 0).all()):
            raise ValueError(f"sigma must be positive, got {sigma}")
        self.event_shape = tuple(self.mu.shape)

    def _moments(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor]:
        """Mean and variance of q(x_t), each (B, *event)."""
        abar = _abar(schedule, t, x_t).reshape(-1, *([1] * len(self.event_shape)))
        mu = self.mu.to(device=x_t.device, dtype=x_t.dtype)
        sigma = self.sigma.to(device=x_t.device, dtype=x_t.dtype)
        mean = abar.sqrt() * mu
        var = abar * sigma**2 + (1.0 - abar)
        return mean.expand_as(x_t), var.expand_as(x_t)

    def score(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """grad_x log q(x_t) = -(x_t - sqrt(abar) mu) / (abar sigma^2 + 1 - abar), (B, *event)."""
        x = _up(x_t)
        mean, var = self._moments(x, t, schedule)
        return (-(x - mean) / var).to(x_t.dtype)

    def eps(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """The exact noise prediction -sqrt(1 - abar_t) score, (B, *event)."""
        x = _up(x_t)
        mean, var = self._moments(x, t, schedule)
        abar = _abar(schedule, t, x).reshape(-1, *([1] * len(self.event_shape)))
        return ((1.0 - abar).sqrt() * (x - mean) / var).to(x_t.dtype)

    def log_prob_marginal(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """log q(x_t) summed over the event dimensions, (B,)."""
        x = _up(x_t)
        mean, var = self._moments(x, t, schedule)
        lp = -0.5 * ((x - mean) ** 2 / var + torch.log(2 * math.pi * var))
        return lp.reshape(x.shape[0], -1).sum(dim=1).to(x_t.dtype)

    def sample(self, n: int, generator: torch.Generator | None = None) -> Tensor:
        """n draws of x_0, (n, *event) in mu's dtype and device."""
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=self.mu.dtype, device=self.mu.device)
        return self.mu + self.sigma * z


class GaussianMixture:
    """Data x_0 ~ sum_k w_k N(mu_k, s_k^2 I), isotropic components.

    Args:
        weights: (K,) non-negative, normalised here.
        means: (K, *event).
        sigmas: (K,) positive standard deviations.
    """

    def __init__(self, weights: Tensor, means: Tensor, sigmas: Tensor) -> None:
        self.means = torch.as_tensor(means)
        dtype, device = self.means.dtype, self.means.device
        weights = torch.as_tensor(weights, dtype=dtype, device=device)
        self.sigmas = torch.as_tensor(sigmas, dtype=dtype, device=device)
        K = self.means.shape[0]
        if weights.shape != (K,) or self.sigmas.shape != (K,):
            raise ValueError(f"weights {tuple(weights.shape)} and sigmas {tuple(self.sigmas.shape)} must be ({K},)")
        if not bool((weights >= 0).all()) or float(weights.sum()) <= 0 or not bool((self.sigmas > 0).all()):
            raise ValueError("weights must be non-negative with a positive sum and sigmas positive")
        self.weights = weights / weights.sum()
        self.event_shape = tuple(self.means.shape[1:])
        self.dim = math.prod(self.event_shape)

    def _components(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> tuple[Tensor, Tensor, Tensor]:
        """Per-component (diff (B, K, *event), var (B, K), log w_k + log N_k(x_t) (B, K))."""
        B, K = x_t.shape[0], self.means.shape[0]
        abar = _abar(schedule, t, x_t)[:, None]  # (B, 1)
        means = self.means.to(device=x_t.device, dtype=x_t.dtype)
        sig2 = self.sigmas.to(device=x_t.device, dtype=x_t.dtype) ** 2
        logw = self.weights.to(device=x_t.device, dtype=x_t.dtype).log()
        var = abar * sig2[None] + (1.0 - abar)  # (B, K): abar s_k^2 + 1 - abar
        diff = x_t[:, None] - abar.reshape(B, 1, *([1] * len(self.event_shape))).sqrt() * means[None]
        sq = (diff**2).reshape(B, K, -1).sum(dim=2)  # (B, K)
        logn = -0.5 * (sq / var + self.dim * torch.log(2 * math.pi * var))
        return diff, var, logw[None] + logn

    def log_prob_marginal(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """log q(x_t) = logsumexp_k (log w_k + log N(x_t; sqrt(abar) mu_k, v_k I)), (B,)."""
        _, _, logp = self._components(_up(x_t), t, schedule)
        return torch.logsumexp(logp, dim=1).to(x_t.dtype)

    def responsibilities(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """Posterior component probabilities p(k | x_t), (B, K); at t = 0 nearly p(k | x_0)."""
        _, _, logp = self._components(_up(x_t), t, schedule)
        return torch.softmax(logp, dim=1).to(x_t.dtype)

    def score(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """grad log q(x_t) = -sum_k r_k(x_t) (x_t - sqrt(abar) mu_k) / v_k, r = posterior responsibilities."""
        return self._score(_up(x_t), t, schedule).to(x_t.dtype)

    def _score(self, x: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        diff, var, logp = self._components(x, t, schedule)
        resp = torch.softmax(logp, dim=1)  # (B, K)
        coef = (resp / var).reshape(*resp.shape, *([1] * len(self.event_shape)))
        return -(coef * diff).sum(dim=1)

    def eps(self, x_t: Tensor, t: Tensor, schedule: NoiseSchedule) -> Tensor:
        """The exact noise prediction -sqrt(1 - abar_t) score, (B, *event)."""
        x = _up(x_t)
        abar = _abar(schedule, t, x).reshape(-1, *([1] * len(self.event_shape)))
        return (-(1.0 - abar).sqrt() * self._score(x, t, schedule)).to(x_t.dtype)

    def sample(
        self, n: int, generator: torch.Generator | None = None, return_labels: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """n draws of x_0 (n, *event); with ``return_labels`` also their component indices (n,) long."""
        device = self.means.device
        labels = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator).to(device)
        z = torch.randn((n, *self.event_shape), generator=generator, dtype=self.means.dtype, device=device)
        s = self.sigmas[labels].reshape(n, *([1] * len(self.event_shape)))
        x0 = self.means[labels] + s * z
        return (x0, labels) if return_labels else x0
