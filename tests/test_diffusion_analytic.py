"""Exact eps of Gaussian and Gaussian-mixture data: autograd scores, closed forms, E[eps | x_t]."""

import math

import torch

from dreamfield.diffusion import NoiseSchedule
from dreamfield.diffusion.analytic import GaussianData, GaussianMixture


def _autograd_score(dist, x_t, t, s):
    x = x_t.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(dist.log_prob_marginal(x, t, s).sum(), x)
    return grad


def test_gaussian_data_score_and_eps_match_autograd():
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(4, 6, 6, generator=g, dtype=torch.float64)  # latent-shaped mean
    t = torch.tensor([0, 250, 999])
    x_t = torch.randn(3, 4, 6, 6, generator=g, dtype=torch.float64)
    for sigma in (0.3, torch.rand(4, 1, 1, generator=g, dtype=torch.float64) + 0.2):  # scalar and per-channel
        data = GaussianData(mu, sigma)
        score = data.score(x_t, t, s)
        assert score.shape == x_t.shape
        assert (score - _autograd_score(data, x_t, t, s)).abs().max() < 1e-10
        abar = s.alphas_cumprod[t].reshape(3, 1, 1, 1)
        assert (data.eps(x_t, t, s) + (1 - abar).sqrt() * score).abs().max() < 1e-12
        # log density against torch.distributions with the marginal's moments
        ref = torch.distributions.Normal(abar.sqrt() * mu, (abar * data.sigma**2 + 1 - abar).sqrt())
        assert (data.log_prob_marginal(x_t, t, s) - ref.log_prob(x_t).sum(dim=(1, 2, 3))).abs().max() < 1e-9


def test_mixture_score_matches_autograd_and_reduces_to_gaussian():
    s = NoiseSchedule(beta_schedule="squaredcos_cap_v2")
    g = torch.Generator().manual_seed(1)
    gm = GaussianMixture(
        [0.2, 0.5, 0.3],
        torch.tensor([[-2.0, 0.0], [1.5, 1.5], [1.0, -2.0]], dtype=torch.float64),
        [0.3, 0.6, 0.4],
    )
    t = torch.tensor([0, 10, 100, 400, 800, 999])
    x_t = 2.0 * torch.randn(6, 2, generator=g, dtype=torch.float64)
    assert (gm.score(x_t, t, s) - _autograd_score(gm, x_t, t, s)).abs().max() < 1e-10
    # one component == GaussianData
    one = GaussianMixture([1.0], torch.tensor([[0.5, -1.0]], dtype=torch.float64), [0.7])
    data = GaussianData(torch.tensor([0.5, -1.0], dtype=torch.float64), 0.7)
    assert (one.eps(x_t, t, s) - data.eps(x_t, t, s)).abs().max() < 1e-12
    assert (one.log_prob_marginal(x_t, t, s) - data.log_prob_marginal(x_t, t, s)).abs().max() < 1e-12


def test_mixture_eps_is_the_conditional_mean_of_the_noise():
    """eps*(x_t) = E[eps | x_t] (Tweedie): the residual eps - eps*(x_t) is orthogonal to functions of x_t.

    Monte Carlo with n = 200000 forward samples at a few t; each average of (eps - eps*) f(x_t) must be
    within 5 standard errors of 0. A wrong sign or scale of eps* gives errors of order 1 (hundreds of SE).
    """
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(2)
    gm = GaussianMixture([0.3, 0.7], torch.tensor([[-2.0], [1.5]], dtype=torch.float64), [0.3, 0.5])
    n = 200000
    for t_int in (50, 300, 700):
        x0 = gm.sample(n, g)
        eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
        t = torch.full((n,), t_int)
        x_t = s.q_sample(x0, t, eps)
        resid = eps - gm.eps(x_t, t, s)
        for f in (torch.ones_like(x_t), x_t, x_t**2, torch.tanh(3 * x_t)):
            prod = resid * f
            assert prod.mean().abs() < 5 * prod.std() / math.sqrt(n), t_int


def test_samples_have_the_stated_moments():
    g = torch.Generator().manual_seed(3)
    data = GaussianData(torch.tensor([1.0, -2.0], dtype=torch.float64), 0.5)
    x = data.sample(40000, g)
    assert x.shape == (40000, 2)
    assert (x.mean(0) - data.mu).abs().max() < 5 * 0.5 / math.sqrt(40000)
    assert (x.var(0) - 0.25).abs().max() < 5 * 0.25 * math.sqrt(2 / 40000)
    gm = GaussianMixture([1.0, 3.0], torch.tensor([[-1.0], [2.0]], dtype=torch.float64), [0.2, 0.4])
    x, labels = gm.sample(40000, g, return_labels=True)
    assert torch.allclose(gm.weights, torch.tensor([0.25, 0.75], dtype=torch.float64))
    assert abs((labels == 1).double().mean().item() - 0.75) < 5 * math.sqrt(0.75 * 0.25 / 40000)
    assert abs(x[labels == 1].std().item() - 0.4) < 0.02
