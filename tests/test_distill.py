"""SDS / DDS gradients, timesteps, weights and regularisers, checked on exact Gaussian priors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dreamfield.config import GuidanceConfig
from dreamfield.diffusion import NoiseSchedule
from dreamfield.distill import (
    NonFiniteError,
    dds_grad,
    entropy_loss,
    grad_to_loss,
    opacity_loss,
    sample_timesteps,
    sds_grad,
    t_max_at,
    t_min_at,
    timestep_range,
    weight,
)
from dreamfield.prior import GaussianPrior

SIGMA = 0.5


def _abar_reference(T=1000, b0=0.00085, b1=0.012) -> np.ndarray:
    """SD's scaled_linear abar_t computed independently in numpy float64."""
    betas = np.linspace(b0**0.5, b1**0.5, T) ** 2
    return np.cumprod(1.0 - betas)


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


# ------------------------------------------------------------------ grad_to_loss
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_grad_to_loss_backward_gives_g_exactly(dtype):
    g_ = _gen(1)
    z = torch.randn(3, 4, 8, 8, generator=g_, dtype=dtype, requires_grad=True)
    g = torch.randn(3, 4, 8, 8, generator=g_, dtype=dtype) * 1e3
    grad_to_loss(z, g).backward()
    assert torch.equal(z.grad, g)


def test_grad_to_loss_reaches_parameters_through_a_graph():
    # z = A p: d loss / d p must be A^T g (chain rule through a non-leaf z), g itself on z.
    g_ = _gen(2)
    p = torch.randn(5, generator=g_, dtype=torch.float64, requires_grad=True)
    A = torch.randn(6, 5, generator=g_, dtype=torch.float64)
    z = A @ p
    z.retain_grad()
    g = torch.randn(6, generator=g_, dtype=torch.float64)
    grad_to_loss(z, g).backward()
    assert torch.equal(z.grad, g)
    torch.testing.assert_close(p.grad, A.T @ g, rtol=0, atol=1e-12)


def test_grad_to_loss_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        grad_to_loss(torch.zeros(2, 3), torch.zeros(3, 2))


# ------------------------------------------------------------------ weights and timesteps
def test_weights_match_closed_forms():
    s = NoiseSchedule()
    t = torch.tensor([0, 20, 500, 980, 999])
    abar = _abar_reference()[t.numpy()]
    np.testing.assert_allclose(weight(s, t, "sds").numpy(), 1 - abar, rtol=1e-6)
    np.testing.assert_allclose(weight(s, t, "uniform").numpy(), np.ones(5))
    np.testing.assert_allclose(weight(s, t, "snr_sqrt").numpy(), np.sqrt(abar * (1 - abar)), rtol=1e-6)
    assert weight(s, t, "sds").dtype == torch.float32


def test_snr_sqrt_weight_is_an_x0_residual():
    # Documented identity: sqrt(abar (1 - abar)) (eps_hat - eps) = -abar (x0_hat - z).
    s = NoiseSchedule()
    mu = torch.randn(3, 4, 4, generator=_gen(3), dtype=torch.float64)
    prior = GaussianPrior(mu, SIGMA, s)
    z = torch.randn(4, 3, 4, 4, generator=_gen(4))
    t = torch.tensor([50, 300, 700, 950])
    noise = torch.randn(z.shape, generator=_gen(5))
    g = sds_grad(prior, z, prior.embed(["p"]), t, noise, 1.0, weighting="snr_sqrt")
    z_t = s.q_sample(z, t, noise)
    x0_hat = s.predict_x0(z_t, t, prior.eps(z_t, t, prior.embed(["p"]), 1.0), "epsilon")
    abar = torch.tensor(_abar_reference()[t.numpy()], dtype=torch.float32).reshape(-1, 1, 1, 1)
    torch.testing.assert_close(g, -abar * (x0_hat - z), rtol=1e-4, atol=1e-5)


def test_weight_rejects_unknown_kind():
    with pytest.raises(ValueError, match="snr_sqrt"):
        weight(NoiseSchedule(), torch.tensor([1]), "sigma")


def test_sample_timesteps_range_and_determinism():
    cfg = GuidanceConfig(t_min=0.02, t_max=0.98)
    t = sample_timesteps(20000, 0, 100, cfg, 1000, _gen(0))
    assert t.dtype == torch.long and t.shape == (20000,)
    assert int(t.min()) == 20 and int(t.max()) == 980  # inclusive ends, both reached in 20000 draws
    assert torch.equal(t, sample_timesteps(20000, 0, 100, cfg, 1000, _gen(0)))
    # roughly uniform: each tenth of the range holds about a tenth of the draws
    hist = torch.histc(t.float(), bins=10, min=20, max=981)
    assert float(hist.min()) > 0.08 * 20000 and float(hist.max()) < 0.12 * 20000


def test_sample_timesteps_anneals_t_max():
    cfg = GuidanceConfig(t_min=0.02, t_max=0.98, t_max_end=0.5, anneal_steps=100)
    assert t_max_at(0, 1000, cfg) == 0.98
    assert t_max_at(50, 1000, cfg) == pytest.approx(0.74)
    assert t_max_at(100, 1000, cfg) == pytest.approx(0.5) and t_max_at(900, 1000, cfg) == pytest.approx(0.5)
    late = sample_timesteps(5000, 200, 1000, cfg, 1000, _gen(1))
    assert int(late.max()) == 500 and int(late.min()) == 20
    mid = sample_timesteps(5000, 50, 1000, cfg, 1000, _gen(1))
    assert int(mid.max()) == 740
    # anneal_steps = 0 means over the whole run
    whole = GuidanceConfig(t_min=0.02, t_max=0.98, t_max_end=0.5, anneal_steps=0)
    assert t_max_at(500, 1000, whole) == pytest.approx(0.74)
    # no annealing: t_max stays
    assert t_max_at(999, 1000, GuidanceConfig(t_max=0.98, t_max_end=None)) == 0.98


def test_sample_timesteps_high_noise_start():
    # t_min is t_min_start for steps 0..t_min_start_steps-1, then t_min; t_max anneals as without it
    cfg = GuidanceConfig(t_min=0.02, t_max=0.98, t_max_end=0.5, anneal_steps=100, t_min_start=0.6,
                         t_min_start_steps=40)
    assert [t_min_at(s, cfg) for s in (0, 39, 40, 500)] == [0.6, 0.6, 0.02, 0.02]
    assert timestep_range(0, 1000, cfg, 1000) == (600, 980)
    assert t_max_at(39, 1000, cfg) == pytest.approx(0.7928) and t_max_at(40, 1000, cfg) == pytest.approx(0.788)
    assert timestep_range(39, 1000, cfg, 1000) == (600, int(t_max_at(39, 1000, cfg) * 1000))
    assert timestep_range(40, 1000, cfg, 1000) == (20, int(t_max_at(40, 1000, cfg) * 1000))
    early = sample_timesteps(5000, 10, 1000, cfg, 1000, _gen(3))
    assert int(early.min()) == 600 and int(early.max()) == int(t_max_at(10, 1000, cfg) * 1000)
    # past its steps, and when unset, the draws are those of the plain range with the same generator
    plain = GuidanceConfig(t_min=0.02, t_max=0.98, t_max_end=0.5, anneal_steps=100)
    assert torch.equal(sample_timesteps(500, 40, 1000, cfg, 1000, _gen(4)),
                       sample_timesteps(500, 40, 1000, plain, 1000, _gen(4)))
    assert t_min_at(0, plain) == 0.02 and t_min_at(0, GuidanceConfig(t_min_start=0.6)) == 0.02  # 0 steps: off
    # an annealed t_max below the start's t_min gives the one-point range [lo, lo]
    low = GuidanceConfig(t_min=0.02, t_max=0.98, t_max_end=0.3, anneal_steps=10, t_min_start=0.6, t_min_start_steps=20)
    assert timestep_range(15, 100, low, 1000) == (600, 600)


def test_sample_timesteps_caps_at_T_minus_1_and_rejects_bad_fractions():
    t = sample_timesteps(5000, 0, 10, GuidanceConfig(t_min=0.9, t_max=1.0), 1000, _gen(2))
    assert int(t.max()) == 999
    with pytest.raises(ValueError, match="t_max"):
        sample_timesteps(1, 0, 10, GuidanceConfig(t_min=0.1, t_max=1.5), 1000, _gen(2))


# ------------------------------------------------------------------ SDS on an exact Gaussian prior
def test_sds_gradient_matches_closed_form():
    # eps*(z_t) = sqrt(1-a) (z_t - sqrt(a) mu) / V with V = a s^2 + 1 - a, so with z_t = sqrt(a) z + sqrt(1-a) e:
    # eps* - e = sqrt(a (1-a)) / V (z - mu) - a s^2 / V e.
    s = NoiseSchedule()
    mu = torch.randn(4, 8, 8, generator=_gen(6))
    prior = GaussianPrior(mu, SIGMA, s)
    z = torch.randn(3, 4, 8, 8, generator=_gen(7))
    noise = torch.randn(z.shape, generator=_gen(8))
    t = torch.tensor([30, 400, 900])
    g = sds_grad(prior, z, prior.embed(["p"]), t, noise, 7.5, weighting="sds")
    a = torch.tensor(_abar_reference()[t.numpy()], dtype=torch.float64).reshape(-1, 1, 1, 1)
    V = a * SIGMA**2 + 1 - a
    expected = (1 - a) * ((a * (1 - a)).sqrt() / V * (z - mu).double() - a * SIGMA**2 / V * noise.double())
    torch.testing.assert_close(g.double(), expected, rtol=1e-4, atol=1e-5)
    assert g.dtype == torch.float32 and not g.requires_grad


def _optimise(grad_fn, z0: torch.Tensor, steps: int, lr: float, seed: int) -> torch.Tensor:
    """SGD on a free latent with random t and noise; lr drops 20x for the second half (noise averaging)."""
    g_ = _gen(seed)
    cfg = GuidanceConfig(t_min=0.02, t_max=0.98)
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=lr)
    for i in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr if i < steps // 2 else lr / 20
        t = sample_timesteps(z.shape[0], i, steps, cfg, 1000, g_)
        noise = torch.randn(z.shape, generator=g_)
        opt.zero_grad()
        grad_to_loss(z, grad_fn(z, t, noise, i)).backward()
        opt.step()
    return z.detach()


def test_sds_on_a_free_latent_converges_to_the_gaussian_mean():
    mu = torch.randn(4, 8, 8, generator=_gen(9))
    prior = GaussianPrior(mu, SIGMA)
    text = prior.embed(["p"])
    z = _optimise(lambda z, t, n, i: sds_grad(prior, z, text, t, n, 7.5, step=i), torch.zeros(1, 4, 8, 8), 1500, 0.5, 10)
    err = z[0] - mu
    # measured: rms 0.015, max 0.049 (seed 10); mu has rms 1
    assert float(err.pow(2).mean().sqrt()) < 0.03
    assert float(err.abs().max()) < 0.1


def test_sds_with_exact_guidance_converges_to_the_extrapolated_mean():
    # CFG eps_u + s (eps_c - eps_u) on equal-variance Gaussians is the exact eps of mean mu_u + s (mu_c - mu_u).
    mu_c = torch.randn(4, 8, 8, generator=_gen(11)) * 0.5
    mu_u = torch.randn(4, 8, 8, generator=_gen(12)) * 0.5
    prior = GaussianPrior(mu_c, SIGMA, uncond_mu=mu_u)
    text = prior.embed(["p"])
    z = _optimise(lambda z, t, n, i: sds_grad(prior, z, text, t, n, 3.0), torch.zeros(1, 4, 8, 8), 1500, 0.5, 13)
    target = mu_u + 3.0 * (mu_c - mu_u)
    err = z[0] - target
    # measured: rms 0.015, max 0.046; the target has rms 1.9
    assert float(err.pow(2).mean().sqrt()) < 0.03
    assert float(err.abs().max()) < 0.1


# ------------------------------------------------------------------ DDS on exact Gaussian priors
def _dds_prior():
    mu_src = torch.randn(4, 8, 8, generator=_gen(14))
    mu_tgt = torch.randn(4, 8, 8, generator=_gen(15))
    return GaussianPrior({"source": mu_src, "target": mu_tgt}, SIGMA), mu_src, mu_tgt


def test_dds_gradient_has_zero_variance_over_the_noise_and_the_closed_form():
    prior, mu_src, mu_tgt = _dds_prior()
    z_src = torch.randn(1, 4, 8, 8, generator=_gen(16))
    z = z_src + 0.3 * torch.randn(1, 4, 8, 8, generator=_gen(17))
    tgt, src = prior.embed(["target"]), prior.embed(["source"])
    t = torch.tensor([600])
    g_ = _gen(18)
    grads = torch.stack(
        [dds_grad(prior, z, z_src, tgt, src, t, torch.randn(z.shape, generator=g_), 7.5)[0] for _ in range(64)]
    )
    assert float(grads.std(dim=0).max()) < 1e-5  # float32 rounding only
    # the SDS gradient at the same point has noise std (1 - a) a s^2 / V per element: DDS removes it
    a = float(_abar_reference()[600])
    V = a * SIGMA**2 + 1 - a
    sds = torch.stack(
        [sds_grad(prior, z, tgt, t, torch.randn(z.shape, generator=g_), 7.5)[0] for _ in range(64)]
    )
    assert float(sds.std(dim=0).mean()) == pytest.approx((1 - a) * a * SIGMA**2 / V, rel=0.1)
    expected = (1 - a) * math.sqrt(a * (1 - a)) / V * ((z - z_src)[0] - (mu_tgt - mu_src))
    torch.testing.assert_close(grads.mean(0), expected, rtol=1e-4, atol=1e-5)


def test_dds_edit_converges_to_source_plus_mean_shift():
    prior, mu_src, mu_tgt = _dds_prior()
    z_src = torch.randn(2, 4, 8, 8, generator=_gen(19))
    tgt, src = prior.embed(["target"]), prior.embed(["source"])
    z = _optimise(lambda z, t, n, i: dds_grad(prior, z, z_src, tgt, src, t, n, 7.5), z_src, 600, 0.5, 20)
    err = z - (z_src + mu_tgt - mu_src)
    # measured: max 1e-6 (no noise in the DDS gradient; each step contracts the error)
    assert float(err.abs().max()) < 1e-3


def test_dds_source_weight_one_is_dds_and_zero_is_sds_exactly():
    prior, mu_src, mu_tgt = _dds_prior()
    z_src = torch.randn(1, 4, 8, 8, generator=_gen(21))
    z = z_src + 0.3 * torch.randn(1, 4, 8, 8, generator=_gen(22))
    tgt, src = prior.embed(["target"]), prior.embed(["source"])
    t, noise = torch.tensor([400]), torch.randn(z.shape, generator=_gen(23))
    g1 = dds_grad(prior, z, z_src, tgt, src, t, noise, 7.5, source_weight=1.0)
    assert torch.equal(g1, dds_grad(prior, z, z_src, tgt, src, t, noise, 7.5))
    torch.testing.assert_close(dds_grad(prior, z, z_src, tgt, src, t, noise, 7.5, source_weight=0.0),
                               sds_grad(prior, z, tgt, t, noise, 7.5), rtol=0, atol=1e-6)
    # linear in lambda: g(lambda) = g_sds - lambda (g_sds - g_dds)
    g_sds = sds_grad(prior, z, tgt, t, noise, 7.5)
    torch.testing.assert_close(dds_grad(prior, z, z_src, tgt, src, t, noise, 7.5, source_weight=0.3),
                               g_sds - 0.3 * (g_sds - g1), rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="source_weight"):
        dds_grad(prior, z, z_src, tgt, src, t, noise, 7.5, source_weight=1.5)


@pytest.mark.parametrize("lam", [0.0, 0.5, 1.0])
def test_dds_carries_the_sources_distance_from_its_prompt_into_the_edit(lam):
    # Gaussian prompts: E[g] = k (z - mu_tgt) - lambda k (z_src - mu_src), so the fixed point is
    # mu_tgt + lambda (z_src - mu_src): a source away from its prompt's mean (a mislabelled source) moves the
    # DDS edit (lambda = 1) by the same offset; lambda = 0 (SDS) lands on the target's mean.
    prior, mu_src, mu_tgt = _dds_prior()
    z_src = mu_src + torch.randn(1, 4, 8, 8, generator=_gen(24))  # the source is not what its prompt describes
    tgt, src = prior.embed(["target"]), prior.embed(["source"])
    z = _optimise(lambda z, t, n, i: dds_grad(prior, z, z_src, tgt, src, t, n, 7.5, source_weight=lam), z_src.clone(),
                  1500, 0.5, 25)
    err = z - (mu_tgt + lam * (z_src - mu_src))
    # measured: rms 0.022 / 0.011 / 1e-7 (lambda 0 / 0.5 / 1: the noise left is (1 - lambda) SDS's); the offset
    # z_src - mu_src has rms 1
    assert float(err.pow(2).mean().sqrt()) < 0.045
    assert float(err.abs().max()) < 0.15


# ------------------------------------------------------------------ clipping, NaN guard, bad values
def test_grad_clip_is_elementwise():
    prior = GaussianPrior(torch.full((4, 2, 2), 10.0), SIGMA)
    z = torch.zeros(1, 4, 2, 2)
    noise = torch.zeros_like(z)
    t = torch.tensor([500])
    g = sds_grad(prior, z, prior.embed(["p"]), t, noise, 1.0)
    gc = sds_grad(prior, z, prior.embed(["p"]), t, noise, 1.0, grad_clip=0.1)
    assert float(g.abs().min()) > 0.1
    assert torch.equal(gc, g.clamp(-0.1, 0.1))


def test_non_finite_gradient_raises_naming_step_and_t():
    prior = GaussianPrior(torch.zeros(4, 2, 2), SIGMA)
    z = torch.zeros(1, 4, 2, 2)
    z[0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteError, match=r"step 7, t=\[123\].*latents finite: False"):
        sds_grad(prior, z, prior.embed(["p"]), torch.tensor([123]), torch.zeros_like(z), 7.5, step=7)
    with pytest.raises(NonFiniteError, match="DDS"):
        dds_grad(prior, z, torch.zeros_like(z), prior.embed(["p"]), prior.embed(["p"]), torch.tensor([5]),
                 torch.zeros_like(z), 7.5)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(weighting="sigma"), "weighting"),
        (dict(guidance_scale=-1.0), "guidance_scale"),
        (dict(guidance_scale=float("nan")), "guidance_scale"),
        (dict(grad_clip=0.0), "grad_clip"),
        (dict(t=torch.tensor([1000])), "timesteps"),
        (dict(t=torch.tensor([1.0])), "LongTensor"),
        (dict(noise=torch.zeros(1, 4, 2, 3)), "same shape"),
    ],
)
def test_sds_rejects_bad_values(kwargs, match):
    prior = GaussianPrior(torch.zeros(4, 2, 2), SIGMA)
    args = dict(z=torch.zeros(1, 4, 2, 2), text=prior.embed(["p"]), t=torch.tensor([10]),
                noise=torch.zeros(1, 4, 2, 2), guidance_scale=7.5)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        sds_grad(prior, **args)


# ------------------------------------------------------------------ regularisers
def test_opacity_and_entropy_losses():
    o = torch.tensor([0.0, 0.25, 0.5, 1.0]).reshape(1, 1, 2, 2)
    assert float(opacity_loss(o)) == pytest.approx(0.4375)
    h = lambda p: -(p * math.log(p) + (1 - p) * math.log(1 - p))  # noqa: E731
    assert float(entropy_loss(o)) == pytest.approx((h(1e-5) + h(0.25) + h(0.5) + h(1 - 1e-5)) / 4, rel=1e-5)
    assert float(entropy_loss(torch.full((1, 1, 1, 1), 0.5))) == pytest.approx(math.log(2))
    # gradient pushes below 0.5 towards 0 and above towards 1; finite at the ends
    o = torch.tensor([0.0, 0.3, 0.7, 1.0], requires_grad=True)
    entropy_loss(o).backward()
    assert torch.isfinite(o.grad).all() and o.grad[1] > 0 and o.grad[2] < 0


def test_dds_source_weight_anneals_linearly_over_the_steps():
    from dreamfield.config import load_config
    from dreamfield.distill.objectives import source_weight_at

    cfg = load_config([], ["optim.steps=11", "edit.source_weight=1", "edit.source_weight_end=0.2"])
    assert [round(source_weight_at(cfg, s), 6) for s in (0, 5, 10)] == [1.0, 0.6, 0.2]
    cfg = load_config([], ["edit.source_weight=0.7"])
    assert source_weight_at(cfg, 0) == source_weight_at(cfg, 10**6) == 0.7
