"""Samplers driven by the exact eps of Gaussian mixtures must reproduce the mixture.

Each sampler draws n = 10000 samples with the SD schedule (scaled_linear, T = 1000). Samples are
labelled by their most probable component (Bayes rule at t = 0); the same rule is applied to
n_ref = 200000 exact draws, so the small truncation effects of labelling cancel. Per component we
compare weight, mean and variance with the reference:

  |w - w_ref|       <= 4.5 SE,  SE^2 = w (1 - w) (1/n + 1/n_ref)
  |mean - mean_ref| <= 4.5 SE,  SE^2 = var (1/n_k + 1/n_ref_k)           (each coordinate)
  var / var_ref - 1 in [-4.5 SE - low, 4.5 SE + high],  SE^2 = 2/n_k + 2/n_ref_k

where (low, high) allow the known discretisation bias of each sampler on these component widths
(s = 0.5 to 0.7). In 2-D the variance is averaged over the two coordinates, so its SE is conservative.

Measured with seed 0 (per component: absolute error, and in SE units):
  DDPM, 1000 steps, N(0, I) start      (allowed bias low 4 %: fixed_small variance under-disperses
                                        by about beta_t / s^2 per log-step at small t, ~2 %)
    1-D  w +0.003 (0.6 SE)  mean <= 0.005 (0.5 SE)  var -5.2 % (-2.0 SE), -2.7 % (-1.6 SE)
    2-D  w <= 0.004 (0.8 SE)  mean <= 0.022 (2.2 SE)  var 0.0 %, -1.8 %, -1.6 % (>= -0.8 SE)
  DDIM eta 0, 200 steps, exact start   (allowed bias low 4 %: the deterministic map contracts a little
                                        at the coarse last steps)
    1-D  w 0.006 (1.3 SE)  mean <= 0.007 (0.8 SE)  var -6.0 % (-2.3 SE), -1.5 % (-0.9 SE)
    2-D  w <= 0.004 (0.7 SE)  mean <= 0.023 (2.3 SE)  var -3.2 %, -0.5 %, -1.4 % (>= -1.0 SE)
  Langevin, 250 levels x 4 steps, step_scale 1, N(0, I) start  (allowed bias high 15 %: the last,
                                        small-noise levels mix slowly, so excess variance survives)
    1-D  w 0.007 (1.4 SE)  mean <= 0.006 (0.6 SE)  var +7.5 % (+2.8 SE), +6.7 % (+3.9 SE)
    2-D  w <= 0.006 (1.5 SE)  mean <= 0.024 (2.1 SE)  var +9.5 %, +3.7 %, +4.3 % (<= +2.9 SE)
"""

import math

import pytest
import torch

from dreamfield.diffusion import NoiseSchedule, make_timesteps, sample
from dreamfield.diffusion.analytic import GaussianMixture

N, N_REF = 10000, 200000
SCHEDULE = NoiseSchedule()  # scaled_linear, 1000 steps, eps-prediction

MIX_1D = GaussianMixture([0.3, 0.7], torch.tensor([[-2.5], [2.0]], dtype=torch.float64), [0.5, 0.7])
MIX_2D = GaussianMixture(
    [0.2, 0.3, 0.5], torch.tensor([[-2.5, 0.0], [2.0, 2.0], [1.5, -2.5]], dtype=torch.float64), [0.5, 0.6, 0.7]
)

# method, sample() keywords, (low, high) variance-bias allowance, exact start
CASES = {
    "ddpm": (dict(method="ddpm", steps=1000), (0.04, 0.0), False),
    # DDIM is deterministic, so the mismatch between N(0, I) and the true marginal at its first step
    # (abar_990 = 0.005: the mixture's mean is still sqrt(abar) * 0.7 = 0.05 off zero) would carry into
    # the weights (measured ~0.02 = 6 SE with an N(0, I) start); start it from the exact marginal.
    "ddim": (dict(method="ddim", steps=200, eta=0.0), (0.04, 0.0), True),
    "langevin": (dict(method="langevin", steps=250, corrector_steps=4, step_scale=1.0), (0.0, 0.15), False),
}


def _labelled_stats(x, gm):
    """Per component: weight, mean (D,), variance averaged over coordinates, count."""
    t0 = torch.zeros(x.shape[0], dtype=torch.long)
    labels = gm.responsibilities(x, t0, SCHEDULE).argmax(dim=1)
    out = []
    for k in range(gm.means.shape[0]):
        xk = x[labels == k].reshape(-1, gm.dim)
        out.append((xk.shape[0] / x.shape[0], xk.mean(0), xk.var(0).mean().item(), xk.shape[0]))
    return out


def _draw(gm, case, seed):
    kwargs, _, exact_start = CASES[case]
    g = torch.Generator().manual_seed(seed)
    shape = (N, *gm.event_shape)
    x_T = None
    if exact_start:
        t_start = make_timesteps(SCHEDULE, kwargs["steps"], "leading")[:1].expand(N)
        x0 = gm.sample(N, g)
        x_T = SCHEDULE.q_sample(x0, t_start, torch.randn(shape, generator=g, dtype=torch.float64))
    return sample(lambda x, t: gm.eps(x, t, SCHEDULE), shape, SCHEDULE, generator=g, x_T=x_T, dtype=torch.float64, **kwargs)


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dim", [1, 2])
def test_sampler_reproduces_mixture(case, dim):
    gm = MIX_1D if dim == 1 else MIX_2D
    low, high = CASES[case][1]
    x = _draw(gm, case, seed=0)
    assert x.shape == (N, dim) and torch.isfinite(x).all()
    ref = _labelled_stats(gm.sample(N_REF, torch.Generator().manual_seed(123)), gm)
    for k, ((w, m, v, nk), (w0, m0, v0, nk0)) in enumerate(zip(_labelled_stats(x, gm), ref)):
        se_w = math.sqrt(w0 * (1 - w0) * (1 / N + 1 / N_REF))
        se_m = math.sqrt(v0 * (1 / nk + 1 / nk0))
        se_v = math.sqrt(2 / nk + 2 / nk0)
        assert abs(w - w0) <= 4.5 * se_w, (case, k, "weight", w, w0)
        assert (m - m0).abs().max().item() <= 4.5 * se_m, (case, k, "mean", m, m0)
        ratio = v / v0 - 1
        assert -4.5 * se_v - low <= ratio <= 4.5 * se_v + high, (case, k, "variance ratio - 1", ratio)
        # the labelled reference itself is close to the mixture's parameters
        assert abs(w0 - gm.weights[k].item()) < 0.01 and abs(v0 / gm.sigmas[k].item() ** 2 - 1) < 0.03


def test_ddim_eta0_is_deterministic():
    s = NoiseSchedule(beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction")  # eps_fn returns eps
    gm = MIX_2D

    def eps_fn(x, t):
        return gm.eps(x, t, s)

    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    a = sample(eps_fn, x_T.shape, s, method="ddim", steps=30, x_T=x_T, generator=torch.Generator().manual_seed(1))
    b = sample(eps_fn, x_T.shape, s, method="ddim", steps=30, x_T=x_T.clone(), generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    c = sample(eps_fn, x_T.shape, s, method="ddim", steps=30, x_T=x_T + 0.1)
    assert not torch.allclose(a, c)
    # with eta > 0 the output depends on the generator, and is reproducible for a fixed seed
    d1 = sample(eps_fn, x_T.shape, s, method="ddim", steps=30, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(1))
    d2 = sample(eps_fn, x_T.shape, s, method="ddim", steps=30, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(1))
    d3 = sample(eps_fn, x_T.shape, s, method="ddim", steps=30, eta=1.0, x_T=x_T, generator=torch.Generator().manual_seed(3))
    assert torch.equal(d1, d2) and not torch.allclose(d1, d3)
