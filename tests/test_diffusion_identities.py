"""The seed identities of DDPM checked numerically, the KL helper, and the user-facing errors."""

import math

import pytest
import torch
from diffusers import DDIMScheduler

from dreamfield.diffusion import NoiseSchedule, ddim_step, ddpm_step, kl_gaussian, make_timesteps, sample

SCHEDULES = ["scaled_linear", "squaredcos_cap_v2"]


@pytest.mark.parametrize("beta_schedule,T", [("scaled_linear", 1000), ("squaredcos_cap_v2", 200)])
def test_q_sample_equals_composed_one_step_kernels(beta_schedule, T):
    """q(x_t | x_0) (Eq. 4) == composing q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I) (Eq. 2).

    Monte Carlo with n = 20000 chains per start value; mean and variance are checked within 5 standard
    errors (SE(mean) = sqrt(var / n), SE(var) = var sqrt(2 / (n - 1)) for Gaussian samples).
    """
    s = NoiseSchedule(beta_schedule=beta_schedule, num_train_timesteps=T)
    g = torch.Generator().manual_seed(0)
    n = 20000
    x0 = torch.tensor([-1.5, 0.0, 2.0], dtype=torch.float64)
    x = x0.repeat(n, 1)  # (n, 3): n chains for each of the 3 start values
    check = {0, 9, T // 10 - 1, T // 2 - 1, T - 1}
    for t in range(s.num_train_timesteps):
        beta = s.betas[t].item()
        x = math.sqrt(1.0 - beta) * x + math.sqrt(beta) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t in check:
            abar = s.alphas_cumprod[t].item()
            var_true = 1.0 - abar
            mean_mc, var_mc = x.mean(0), x.var(0)
            se_mean, se_var = math.sqrt(var_true / n), var_true * math.sqrt(2.0 / (n - 1))
            assert ((mean_mc - math.sqrt(abar) * x0).abs() < 5 * se_mean).all(), (t, mean_mc)
            assert ((var_mc - var_true).abs() < 5 * se_var).all(), (t, var_mc, var_true)
            # ... and q_sample uses exactly these two moments
            tt = torch.full((3,), t)
            assert torch.allclose(s.q_sample(x0, tt, torch.zeros(3, dtype=torch.float64)), math.sqrt(abar) * x0)
            assert torch.allclose(
                s.q_sample(torch.zeros(3, dtype=torch.float64), tt, torch.ones(3, dtype=torch.float64)),
                torch.full((3,), math.sqrt(var_true), dtype=torch.float64),
            )


@pytest.mark.parametrize("beta_schedule", ["linear", *SCHEDULES])
def test_posterior_matches_gaussian_conditioning(beta_schedule):
    """Eqs. 6-7 vs Bayes on the joint Gaussian of (x_{t-1}, x_t) given x_0, built only from the Markov chain:

    x_{t-1} | x_0 ~ N(sqrt(abar_{t-1}) x_0, 1 - abar_{t-1}),  x_t = sqrt(alpha_t) x_{t-1} + sqrt(beta_t) z.
    Conditioning a 2-D Gaussian: mean = m1 + S12 S22^{-1} (x_t - m2), var = S11 - S12 S22^{-1} S21.
    """
    s = NoiseSchedule(beta_schedule=beta_schedule)
    ts = torch.tensor([1, 2, 10, 100, 400, 750, 999])
    x0 = torch.tensor([0.7, -1.2, 2.5, 0.0, -0.3, 1.1, -2.0], dtype=torch.float64)
    x_t = torch.tensor([1.0, 0.4, -0.5, 2.0, 0.9, -1.3, 0.2], dtype=torch.float64)
    mean, var = s.posterior(x0, x_t, ts)
    for i, t in enumerate(ts.tolist()):
        abar_prev = torch.prod(1.0 - s.betas[:t])  # independent of alphas_cumprod: a fresh product
        a, b = 1.0 - s.betas[t], s.betas[t]
        m = torch.stack([abar_prev.sqrt() * x0[i], a.sqrt() * abar_prev.sqrt() * x0[i]])
        v1 = 1.0 - abar_prev
        cov = torch.stack([torch.stack([v1, a.sqrt() * v1]), torch.stack([a.sqrt() * v1, a * v1 + b])])
        gain = cov[0, 1] / cov[1, 1]
        mean_ref = m[0] + gain * (x_t[i] - m[1])
        var_ref = cov[0, 0] - cov[0, 1] * gain
        assert abs(mean[i].item() - mean_ref.item()) < 1e-10
        assert abs(var[i].item() - var_ref.item()) < 1e-12
        # the precomputed variance is also the Schur complement via torch.linalg
        prec = torch.linalg.inv(cov)
        assert abs(var[i].item() - 1.0 / prec[0, 0].item()) < 1e-10
    # at t = 0 the posterior is a point mass at x_0 (abar_{-1} = 1)
    mean0, var0 = s.posterior(x0[:2], x_t[:2], torch.zeros(2, dtype=torch.long))
    assert torch.allclose(mean0, x0[:2], atol=1e-12) and torch.all(var0 == 0)


def test_posterior_mean_is_ddpm_mean_with_true_eps():
    """ddpm_step fed the true eps of x_t = q_sample(x0, t, eps) returns the posterior mean (+ sqrt(var) noise)."""
    s = NoiseSchedule()
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    z = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([1, 50, 500, 999])
    x_t = s.q_sample(x0, t, eps)
    mean, var = s.posterior(x0, x_t, t)
    assert (ddpm_step(s, eps, t, x_t, z) - (mean + var.sqrt() * z)).abs().max() < 1e-10
    # eta = 1 DDIM is the same ancestral step when t_prev = t - 1 (DDIM Eq. 16 remark)
    assert (ddim_step(s, eps, t, t - 1, x_t, eta=1.0, noise=z) - (mean + var.sqrt() * z)).abs().max() < 1e-10


def test_v_prediction_round_trip():
    s = NoiseSchedule(prediction_type="v_prediction")
    g = torch.Generator().manual_seed(2)
    x0 = torch.randn(5, 3, generator=g, dtype=torch.float64)
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 3, 300, 700, 999])
    x_t = s.q_sample(x0, t, eps)
    v = s.velocity(x0, eps, t)
    assert (s.predict_x0(x_t, t, v) - x0).abs().max() < 1e-12
    assert (s.to_eps(x_t, t, v) - eps).abs().max() < 1e-12
    assert (s.predict_x0(x_t, t, eps, prediction_type="epsilon") - x0).abs().max() < 1e-9


def test_kl_gaussian_matches_torch_distributions():
    g = torch.Generator().manual_seed(3)
    m1, m2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, (0.5 * lv1).exp()), torch.distributions.Normal(m2, (0.5 * lv2).exp())
    )
    kl = kl_gaussian(m1, lv1, m2, lv2)
    assert kl.shape == (50,) and (kl - ref).abs().max() < 1e-12
    assert torch.all(kl >= 0)
    # the VAE's use: KL to N(0, 1) with plain numbers for the prior, and KL(p || p) = 0
    kl0 = kl_gaussian(m1, lv1, 0.0, 0.0)
    assert (kl0 - 0.5 * (m1**2 + lv1.exp() - 1 - lv1)).abs().max() < 1e-12
    assert kl_gaussian(m1, lv1, m1, lv1).abs().max() < 1e-15


def test_from_diffusers_config():
    sd = {
        "_class_name": "PNDMScheduler",
        "_diffusers_version": "0.6.0",
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "num_train_timesteps": 1000,
        "set_alpha_to_one": False,
        "skip_prk_steps": True,
        "steps_offset": 1,
        "trained_betas": None,
        "clip_sample": False,
        "prediction_type": "v_prediction",
    }
    s = NoiseSchedule.from_diffusers(sd)
    assert s.prediction_type == "v_prediction" and s.num_train_timesteps == 1000
    assert torch.equal(s.alphas_cumprod, NoiseSchedule(prediction_type="v_prediction").alphas_cumprod)
    # a diffusers scheduler's own FrozenDict config works too
    cfg = DDIMScheduler(beta_schedule="squaredcos_cap_v2", num_train_timesteps=500).config
    s = NoiseSchedule.from_diffusers(cfg)
    assert s.num_train_timesteps == 500 and torch.equal(s.betas, NoiseSchedule("squaredcos_cap_v2", 500).betas)
    with pytest.raises(ValueError, match="rescale_betas_zero_snr"):
        NoiseSchedule.from_diffusers({**sd, "rescale_betas_zero_snr": True})


def test_errors_name_the_valid_values():
    with pytest.raises(ValueError, match="'cosine'.*linear.*scaled_linear.*squaredcos_cap_v2"):
        NoiseSchedule(beta_schedule="cosine")
    with pytest.raises(ValueError, match="'sample'.*epsilon.*v_prediction"):
        NoiseSchedule(prediction_type="sample")
    with pytest.raises(ValueError, match="'sample'.*epsilon.*v_prediction"):
        NoiseSchedule.from_diffusers({"prediction_type": "sample"})
    s = NoiseSchedule()
    with pytest.raises(ValueError, match="'euler'.*ddim.*ddpm.*langevin"):
        sample(lambda x, t: x, (2, 3), s, method="euler")
    with pytest.raises(ValueError, match="'uniform'.*leading.*trailing.*linspace"):
        make_timesteps(s, 10, "uniform")
    with pytest.raises(ValueError, match="steps=0"):
        make_timesteps(s, 0)
