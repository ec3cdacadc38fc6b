"""Image-space SDS target (decoded x0_hat): exact on a Gaussian prior, and its fixed point is the prior mean."""

import torch

from dreamfield.diffusion import NoiseSchedule
from dreamfield.distill import sds_image_loss, sds_image_target
from dreamfield.prior import GaussianPrior


def test_target_is_tweedie_estimate_on_gaussian_prior():
    torch.manual_seed(0)
    mu = torch.rand(3, 8, 8) * 0.6 + 0.2
    sigma = 0.1
    prior = GaussianPrior(mu, sigma=sigma)
    s = NoiseSchedule()
    z = torch.rand(2, 3, 8, 8)
    noise = torch.randn(2, 3, 8, 8)
    t = torch.tensor([100, 700])
    target = sds_image_target(prior, z, prior.embed(["x", "x"]), t, noise, 1.0)
    # Closed form: E[x0 | x_t] for x0 ~ N(mu, sigma^2) is mu + sqrt(abar) sigma^2 (x_t - sqrt(abar) mu) / (abar sigma^2 + 1 - abar)
    x_t = s.q_sample(z, t, noise).double()
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = mu.double() + abar.sqrt() * sigma**2 * (x_t - abar.sqrt() * mu.double()) / (abar * sigma**2 + 1 - abar)
    assert torch.allclose(target.double(), expected.clamp(0, 1), atol=1e-5)


def test_image_space_sds_converges_to_the_mean():
    torch.manual_seed(0)
    mu = torch.rand(3, 8, 8) * 0.6 + 0.2
    prior = GaussianPrior(mu, sigma=0.05)
    x = torch.full((1, 3, 8, 8), 0.5, requires_grad=True)
    opt = torch.optim.SGD([x], lr=0.05)
    g = torch.Generator().manual_seed(1)
    text = prior.embed(["x"])
    for _ in range(600):
        t = torch.randint(20, 980, (1,), generator=g)
        noise = torch.randn(1, 3, 8, 8, generator=g)
        target = sds_image_target(prior, x.detach(), text, t, noise, 1.0)
        loss = 0.5 * ((x - target) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    err = (x.detach()[0] - mu).abs()
    # measured: max error ~0.03 (noise of the last steps at lr 0.05); the start was 0.3 away at most
    assert err.max() < 0.08, err.max()


def test_image_loss_gradient_has_the_latent_sds_strength():
    s = NoiseSchedule()
    rgb = torch.rand(2, 3, 8, 8, requires_grad=True)
    target = torch.rand(2, 3, 16, 16)
    t = torch.tensor([50, 600])
    sds_image_loss(rgb, target, s, t, "sds").backward()
    abar = s.alphas_cumprod[t].view(-1, 1, 1, 1)
    small = torch.nn.functional.interpolate(target, size=(8, 8), mode="area")
    expected = (1 - abar) * (abar / (1 - abar)).sqrt() * (rgb.detach().double() - small.double())
    assert torch.allclose(rgb.grad.double(), expected, atol=1e-6)
