"""The diffusion core on a CUDA device agrees with the CPU float64 computation (skips without CUDA)."""

import pytest
import torch

from dreamfield.diffusion import NoiseSchedule, ddim_step, ddpm_step, sample
from dreamfield.diffusion.analytic import GaussianData, GaussianMixture

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 2e-6), (torch.float16, 4e-3)])
def test_schedule_ops_on_cuda_match_cpu_float64(dtype, tol):
    s = NoiseSchedule(prediction_type="v_prediction")
    g = torch.Generator().manual_seed(0)
    x0, noise, out, z = torch.randn(4, 4, 4, 16, 16, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 10, 500, 999])
    t_prev = torch.tensor([-1, 0, 480, 979])
    cuda = torch.device("cuda")

    def on(x):  # the same numbers, rounded to dtype, on the GPU (and the float64 of that rounding on the CPU)
        return x.to(dtype).to(cuda)

    x0c, noisec, outc, zc = map(on, (x0, noise, out, z))
    x0r, noiser, outr, zr = (v.to(dtype).double() for v in (x0, noise, out, z))
    cases = [
        (s.q_sample(x0c, t.to(cuda), noisec), s.q_sample(x0r, t, noiser)),
        (s.predict_x0(x0c, t.to(cuda), outc), s.predict_x0(x0r, t, outr)),
        (s.to_eps(x0c, t.to(cuda), outc), s.to_eps(x0r, t, outr)),
        (ddpm_step(s, outc, t.to(cuda), x0c, zc), ddpm_step(s, outr, t, x0r, zr)),
        (ddim_step(s, outc, t.to(cuda), t_prev.to(cuda), x0c, eta=0.5, noise=zc), ddim_step(s, outr, t, t_prev, x0r, eta=0.5, noise=zr)),
    ]
    for got, ref in cases:
        assert got.device.type == "cuda" and got.dtype == dtype
        scale = ref.abs().max().clamp(min=1.0)
        assert ((got.double().cpu() - ref).abs().max() / scale).item() <= tol


def test_sampling_on_cuda_with_a_cpu_generator_matches_cpu():
    """A CPU generator draws the same noise for either device, so CUDA and CPU samples agree."""
    s = NoiseSchedule()
    gm = GaussianMixture([0.4, 0.6], torch.tensor([[-1.0, 0.5], [1.0, -0.5]], dtype=torch.float64), [0.4, 0.6])
    gm_cuda = GaussianMixture(gm.weights, gm.means.cuda(), gm.sigmas)
    for method in ("ddim", "ddpm", "langevin"):
        kw = dict(method=method, steps=20, eta=0.3, dtype=torch.float64)
        ref = sample(lambda x, t: gm.eps(x, t, s), (256, 2), s, generator=torch.Generator().manual_seed(1), **kw)
        got = sample(
            lambda x, t: gm_cuda.eps(x, t, s), (256, 2), s, generator=torch.Generator().manual_seed(1), device="cuda", **kw
        )
        assert got.device.type == "cuda"
        assert (got.cpu() - ref).abs().max().item() < 1e-9, method


def test_gaussian_data_eps_on_cuda_half():
    s = NoiseSchedule()
    data = GaussianData(torch.zeros(4, 8, 8, device="cuda"), 0.5)
    x = torch.randn(3, 4, 8, 8, device="cuda", dtype=torch.float16)
    t = torch.tensor([5, 500, 995], device="cuda")
    eps = data.eps(x, t, s)
    ref = GaussianData(torch.zeros(4, 8, 8, dtype=torch.float64), 0.5).eps(x.double().cpu(), t.cpu(), s)
    assert eps.dtype == torch.float16 and (eps.double().cpu() - ref).abs().max() < 4e-3
