"""Volume rendering: hand-worked compositing, gradchecks, an exact hard sphere, shading, background,
orientation penalty, occupancy skipping, chunking; CUDA: dense and packed paths agree."""

from __future__ import annotations

import math

import nerfacc
import pytest
import torch
import torch.nn.functional as F

from dreamfield.config import FieldConfig, RenderConfig
from dreamfield.scene.background import make_background
from dreamfield.scene.cameras import get_rays, look_at
from dreamfield.scene.field import make_field
from dreamfield.scene.occupancy import OccupancyGrid
from dreamfield.scene.render import Samples, composite, compute_weights, ray_box, render, render_rays
from dreamfield.scene.shading import choose_shading, shade

LN2 = math.log(2.0)


class HardSphere(torch.nn.Module):
    """Density `peak` inside radius r at the origin, 0 outside; constant albedo; exact normals."""

    bound = 1.0

    def __init__(self, r=0.5, peak=1e3, albedo=(0.8, 0.4, 0.2), inward=False):
        super().__init__()
        self.r, self.peak, self.inward = r, peak, inward
        self.register_buffer("rho", torch.tensor(albedo))

    def density(self, x):
        return self.peak * (x.norm(dim=-1) < self.r).to(x.dtype)

    def forward(self, x):
        return self.density(x), self.rho.to(x).expand(x.shape[0], 3)

    def normals(self, x):
        n = F.normalize(x, dim=-1, eps=1e-12)
        return -n if self.inward else n


class SoftBlob(torch.nn.Module):
    """sigma = a exp(-|x|^2 / s), albedo = c: smooth, differentiable in (a, c), for gradcheck."""

    bound = 1.0

    def __init__(self, a, c, s=0.1):
        super().__init__()
        self.a, self.c, self.s = a, c, s

    def density(self, x):
        return self.a * torch.exp(-(x * x).sum(-1) / self.s)

    def forward(self, x):
        return self.density(x), torch.sigmoid(self.c).expand(x.shape[0], 3)

    def normals(self, x):
        return F.normalize(x, dim=-1, eps=1e-12)


# ---------------------------------------------------------------------------------------------------
# compositing


def test_hand_worked_weights():
    # ray 0: deltas 1, sigma delta = (ln 2, ln 4, 0) -> alpha (1/2, 3/4, 0), T (1, 1/2, 1/8), w (1/2, 3/8, 0)
    # ray 1: intervals [0, .5], [.5, 2], [2, 2.25], sigma delta = (ln 2, 1.5 ln 2, ln 2)
    #        -> alpha (1/2, 1 - 2^-1.5, 1/2), T (1, 1/2, 2^-2.5), w (1/2, (1 - 2^-1.5)/2, 2^-3.5)
    t_starts = torch.tensor([[0.0, 1.0, 2.0], [0.0, 0.5, 2.0]], dtype=torch.float64)
    t_ends = torch.tensor([[1.0, 2.0, 3.0], [0.5, 2.0, 2.25]], dtype=torch.float64)
    sigmas = torch.tensor([[LN2, 2 * LN2, 0.0], [2 * LN2, LN2, 4 * LN2]], dtype=torch.float64)
    expected_w = torch.tensor([[0.5, 0.375, 0.0], [0.5, (1 - 2**-1.5) / 2, 2**-3.5]], dtype=torch.float64)
    expected_t = torch.tensor([[1.0, 0.5, 0.125], [1.0, 0.5, 2**-2.5]], dtype=torch.float64)
    expected_a = torch.tensor([[0.5, 0.75, 0.0], [0.5, 1 - 2**-1.5, 0.5]], dtype=torch.float64)
    w, trans, alpha = compute_weights(t_starts, t_ends, sigmas)
    for got, want in ((w, expected_w), (trans, expected_t), (alpha, expected_a)):
        assert torch.allclose(got, want, atol=1e-12)
    w_nf, t_nf, a_nf = nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)
    assert torch.allclose(w_nf, expected_w, atol=1e-12) and torch.allclose(t_nf, expected_t, atol=1e-12)
    # opacity 7/8 and expected depth at interval midpoints (0.5 * 1/2 + 1.5 * 3/8) / (7/8) = 13/14
    mids = (t_starts + t_ends) / 2
    colours, opacity, depth, _ = nerfacc.rendering(
        t_starts, t_ends, rgb_sigma_fn=lambda s, e, i: (torch.ones(*s.shape, 3, dtype=s.dtype), sigmas)
    )
    assert float(opacity[0]) == pytest.approx(0.875) and float(depth[0]) == pytest.approx(13 / 14)
    ours = nerfacc.accumulate_along_rays(w, mids[..., None]) / nerfacc.accumulate_along_rays(w, None)
    assert torch.allclose(ours, depth)


def test_render_rays_matches_hand_worked_ray():
    """A slab of density ln 2 per unit between x = -0.5 and x = 0.5 seen along -x from x = 2:
    the box is entered at t = 1 and left at t = 3; with 4 samples of width 0.5 at midpoints
    t = 1.25, 1.75, 2.25, 2.75 only the 2nd and 3rd (x = 0.25, -0.25) are inside:
    alpha = 1 - 2^-0.5 each, opacity = 1 - 2^-1 = 1/2, rgb = albedo * 1/2 + white * 1/2."""

    class Slab(torch.nn.Module):
        bound = 1.0

        def density(self, x):
            return LN2 * (x[:, 0].abs() < 0.5).to(x.dtype)

        def forward(self, x):
            return self.density(x), torch.tensor([0.2, 0.4, 0.6], dtype=x.dtype).expand(x.shape[0], 3)

        def normals(self, x):
            return torch.tensor([1.0, 0.0, 0.0], dtype=x.dtype).expand(x.shape[0], 3)

    cfg = RenderConfig(n_samples=4)
    o = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
    d = torch.tensor([[-1.0, 0.0, 0.0]], dtype=torch.float64)
    out = render_rays(Slab(), o, d, o, cfg, make_background(cfg).double(), "albedo", stratified=False)
    a = 1 - 2**-0.5
    w2, w3 = a, (1 - a) * a
    assert float(out["opacity"]) == pytest.approx(0.5, abs=1e-12)
    assert torch.allclose(out["rgb"][0], torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64) * 0.5 + 0.5)
    assert float(out["depth"]) == pytest.approx((1.75 * w2 + 2.25 * w3) / 0.5, abs=1e-12)
    # headlight on the +x face, normal +x: lambertian = albedo * (0.35 + 0.65 * 1)
    lam = render_rays(Slab(), o, d, o, cfg, make_background(cfg).double(), "lambertian", stratified=False)
    assert torch.allclose(lam["rgb"], out["rgb"])
    # the penalty: n . d = -1 (normals face the camera): zero
    assert float(lam["orientation"]) == 0.0


def test_ray_box():
    o = torch.tensor([[2.0, 0.0, 0.0], [2.0, 2.0, 0.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[-1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    t_near, t_far, hit = ray_box(o, d, 1.0)
    assert hit.tolist() == [True, False, True]
    assert torch.allclose(t_near, torch.tensor([1.0, t_near[1], 0.0])) and torch.allclose(t_far[[0, 2]], torch.tensor([3.0, 1.0]))
    assert float(t_far[1]) == float(t_near[1])


def test_gradcheck_compositing():
    gen = torch.Generator().manual_seed(0)
    t = torch.sort(torch.rand(3, 6, generator=gen, dtype=torch.float64) * 2, dim=-1).values
    t_starts, t_ends = t[:, :-1], t[:, 1:]
    sigmas = (torch.rand(3, 5, generator=gen, dtype=torch.float64) * 3).requires_grad_(True)
    colours = torch.rand(3, 5, 3, generator=gen, dtype=torch.float64).requires_grad_(True)

    def composite(s, c):
        w, _, _ = compute_weights(t_starts, t_ends, s)
        return nerfacc.accumulate_along_rays(w, c), nerfacc.accumulate_along_rays(w, None)

    assert torch.autograd.gradcheck(composite, (sigmas, colours))


def test_gradcheck_shading_wrt_albedo_and_normals():
    gen = torch.Generator().manual_seed(1)
    albedo = torch.rand(7, 3, generator=gen, dtype=torch.float64).requires_grad_(True)
    normals = F.normalize(torch.randn(7, 3, generator=gen, dtype=torch.float64), dim=-1)
    light = F.normalize(torch.randn(7, 3, generator=gen, dtype=torch.float64), dim=-1)
    for mode in ("albedo", "lambertian", "textureless"):
        assert torch.autograd.gradcheck(lambda a: shade(a, normals, light, mode, 0.35, 0.65), (albedo,))
    n = normals.clone().requires_grad_(True)  # also through n . l (away from the max(0, .) kink)
    keep = (normals * light).sum(-1).abs() > 0.05
    assert torch.autograd.gradcheck(lambda m: shade(albedo.detach(), m, light, "lambertian", 0.35, 0.65)[keep], (n,))
    # closed form
    lit = shade(albedo, normals, light, "lambertian", 0.35, 0.65)
    expect = albedo * (0.35 + 0.65 * (normals * light).sum(-1, keepdim=True).clamp(min=0))
    assert torch.allclose(lit, expect)
    white = shade(albedo, normals, light, "textureless", 0.35, 0.65)
    assert torch.allclose(white, (expect / albedo).detach())


def test_gradcheck_through_render_rays():
    """Density amplitude and albedo logit -> rendered rgb, lambertian, float64, deterministic samples."""
    cfg = RenderConfig(n_samples=12, normal_weight_threshold=0.0)
    gen = torch.Generator().manual_seed(2)
    o = torch.tensor([[1.8, 0.1, 0.2], [0.3, -1.7, 0.4], [0.0, 0.2, 1.9]], dtype=torch.float64)
    d = F.normalize(-o + 0.1 * torch.randn(3, 3, generator=gen, dtype=torch.float64), dim=-1)
    light = o + torch.tensor([0.3, 0.3, 0.3], dtype=torch.float64)
    bg = make_background(cfg).double()
    a = torch.tensor(3.0, dtype=torch.float64, requires_grad=True)
    c = torch.tensor([0.1, -0.4, 0.9], dtype=torch.float64, requires_grad=True)

    def f(a, c):
        out = render_rays(SoftBlob(a, c), o, d, light, cfg, bg, "lambertian", stratified=False)
        return out["rgb"], out["opacity"]

    assert torch.autograd.gradcheck(f, (a, c))


def test_choose_shading_probabilities():
    gen = torch.Generator().manual_seed(0)
    cfg = RenderConfig(p_albedo=0.2, p_lambertian=0.6, p_textureless=0.2)
    picks = [choose_shading(cfg, gen) for _ in range(3000)]
    for name, p in (("albedo", 0.2), ("lambertian", 0.6), ("textureless", 0.2)):
        assert abs(picks.count(name) / 3000 - p) < 0.04
    only = RenderConfig(p_albedo=0.0, p_lambertian=0.0, p_textureless=1.0)
    assert {choose_shading(only, gen) for _ in range(50)} == {"textureless"}
    from dreamfield.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="p_"):  # validated once, when the config loads
        load_config([], ["render.p_albedo=0", "render.p_lambertian=0", "render.p_textureless=0"])


# ---------------------------------------------------------------------------------------------------
# an exact scene


def _exact_sphere(cams, H, W, r):
    o, d = get_rays(cams, H, W)
    o, d = o.double(), d.double()
    b = (o * d).sum(-1)  # ray: |o + t d|^2 = r^2 -> t^2 + 2 b t + |o|^2 - r^2 = 0
    dist2 = (o * o).sum(-1) - b * b  # squared distance of the ray's line from the centre
    hit = dist2 < r * r
    t_hit = -b - torch.sqrt((r * r - dist2).clamp(min=0))
    return hit, t_hit, o, d


@pytest.fixture(scope="module")
def sphere_renders():
    cams = look_at(torch.tensor([30.0, -120.0]), torch.tensor([20.0, -5.0]), torch.tensor([2.0, 1.7]), 45.0)
    cfg = RenderConfig(n_samples=64)
    bg = make_background(cfg)
    with torch.no_grad():
        out = {s: render(HardSphere(), cams, 64, 64, cfg, bg, s) for s in ("albedo", "lambertian", "textureless")}
    return cams, cfg, out


def test_hard_sphere_silhouette_and_depth(sphere_renders):
    cams, cfg, out = sphere_renders
    r = 0.5
    hit, t_hit, o, d = _exact_sphere(cams, 64, 64, r)
    mask = out["albedo"].opacity[:, 0] > 0.5
    iou = float((mask & hit).sum() / (mask | hit).sum())
    assert iou >= 0.98, iou
    # depth within one sample spacing (box entry to exit over n_samples) of the exact entry
    t_near, t_far, _ = ray_box(o.reshape(-1, 3), d.reshape(-1, 3), 1.0)
    spacing = ((t_far - t_near) / cfg.n_samples).reshape(hit.shape)
    both = mask & hit
    err = (out["albedo"].depth[:, 0].double() - t_hit)[both]
    assert (err >= -1e-5).all() and (err <= spacing[both] + 1e-5).all(), (err.min(), (err - spacing[both]).max())
    # rgb: the albedo inside, white outside
    rgb = out["albedo"].rgb.permute(0, 2, 3, 1)
    inside = out["albedo"].opacity[:, 0] > 0.999
    assert torch.allclose(rgb[inside], torch.tensor([0.8, 0.4, 0.2]).expand_as(rgb[inside]), atol=1e-4)
    assert torch.allclose(rgb[~hit & ~mask], torch.ones_like(rgb[~hit & ~mask]), atol=1e-6)
    assert out["albedo"].orientation.abs() < 1e-6  # outward normals all face the camera


def test_hard_sphere_lambertian_closed_form(sphere_renders):
    cams, cfg, out = sphere_renders
    hit, t_hit, o, d = _exact_sphere(cams, 64, 64, 0.5)
    p = o + t_hit[..., None] * d  # exact surface points (B, H, W, 3)
    n = F.normalize(p, dim=-1)
    l = F.normalize(cams.light_pos.double()[:, None, None, :] - p, dim=-1)
    lum = 0.35 + 0.65 * (n * l).sum(-1).clamp(min=0)  # (B, H, W)
    solid = out["lambertian"].opacity[:, 0] > 0.999
    rgb = out["lambertian"].rgb.permute(0, 2, 3, 1).double()
    expect = torch.tensor([0.8, 0.4, 0.2], dtype=torch.float64) * lum[..., None]
    # The sample sits up to one spacing s ~ 0.03 behind the surface, so its normal and its light
    # direction each turn by up to s / r ~ 0.06 rad: |error| <= 0.65 * 2 * 0.06 * 0.8 ~ 0.06.
    err = (rgb[solid] - expect[solid]).abs()
    assert err.max() < 0.06 and err.mean() < 0.015, (err.max(), err.mean())
    tex = out["textureless"].rgb.permute(0, 2, 3, 1).double()
    err_tex = (tex[solid] - lum[solid][:, None]).abs()
    assert err_tex.max() < 0.08 and err_tex.mean() < 0.02, (err_tex.max(), err_tex.mean())
    # normal map: composited normals match the exact ones on solid pixels
    nm = out["lambertian"].normal.permute(0, 2, 3, 1).double()
    assert (nm[solid] * n[solid]).sum(-1).min() > 0.99


def test_orientation_penalty_of_inward_normals():
    """Inward normals face away from the camera: penalty = mean over rays of opacity (n_in . d)^2."""
    cams = look_at(0.0, 0.0, 2.0, 45.0)
    cfg = RenderConfig(n_samples=64)
    with torch.no_grad():
        out = render(HardSphere(inward=True), cams, 32, 32, cfg, make_background(cfg), "albedo")
    hit, t_hit, o, d = _exact_sphere(cams, 32, 32, 0.5)
    n_in = -F.normalize(o + t_hit[..., None] * d, dim=-1)
    per_ray = torch.where(hit, (n_in * d).sum(-1).clamp(min=0) ** 2, torch.zeros_like(t_hit))
    expected = float(per_ray.mean())
    assert expected > 0.1
    assert float(out.orientation) == pytest.approx(expected, rel=0.05)


class GivenNormals(torch.nn.Module):
    """A stand-in field whose normals at the i-th sample are the i-th row of a fixed table."""

    def __init__(self, normals: torch.Tensor):
        super().__init__()
        self.table = normals

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        return self.table[x[:, 0].long()]


def test_composite_orientation_hand_case():
    # two rays, two samples each, ray direction +z; sample i sits at x = (i, 0, 0) to look its normal up
    normals = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.6, 0.0, 0.8], [1.0, 0.0, 0.0]], requires_grad=True)
    weights = torch.tensor([0.5, 0.5, 1.0, 0.2], requires_grad=True)
    x = torch.tensor([[float(i), 0.0, 0.0] for i in range(4)])
    dirs = torch.tensor([[0.0, 0.0, 1.0]] * 4)
    s = Samples(x, torch.tensor([1.0, 2.0, 1.0, 3.0]), dirs, dirs, n_rays=2)
    out = composite(GivenNormals(normals), s, weights, torch.full((4, 3), 0.5), "albedo", RenderConfig())
    # ray 0: 0.5 * 1^2 + 0.5 * 0 = 0.5; ray 1: 1.0 * 0.8^2 + 0.2 * 0 = 0.64
    assert out["orientation"].tolist() == pytest.approx([0.5, 0.64])
    assert out["opacity"][:, 0].tolist() == pytest.approx([1.0, 1.2])
    assert out["depth"][:, 0].tolist() == pytest.approx([1.5, (1.0 + 0.6) / 1.2])
    out["orientation"].sum().backward()
    assert weights.grad is None or float(weights.grad.abs().sum()) == 0.0  # detached: it moves normals only
    assert float(normals.grad[0, 2]) == pytest.approx(1.0)  # d/dn_z of 0.5 n_z^2


def test_composite_dense_and_packed_layouts_agree():
    # the same samples, laid out dense (rays x S) and packed (shuffled, with ray indices): same per-ray sums
    g = torch.Generator().manual_seed(0)
    n_rays, s_per = 5, 7
    x = torch.rand(n_rays * s_per, 3, generator=g) - 0.5
    t = torch.rand(n_rays * s_per, generator=g)
    dirs = F.normalize(torch.randn(n_rays * s_per, 3, generator=g), dim=-1)
    lights = torch.randn(n_rays * s_per, 3, generator=g) * 3
    w = torch.rand(n_rays * s_per, generator=g) * 0.3
    albedo = torch.rand(n_rays * s_per, 3, generator=g)
    field = make_field(FieldConfig(grid_resolution=8))
    cfg = RenderConfig(normal_weight_threshold=0.05)
    dense = composite(field, Samples(x, t, dirs, lights, n_rays), w, albedo, "lambertian", cfg)
    perm = torch.randperm(n_rays * s_per, generator=g)
    rays = torch.arange(n_rays).repeat_interleave(s_per)[perm]
    packed = composite(field, Samples(x[perm], t[perm], dirs[perm], lights[perm], n_rays, rays), w[perm], albedo[perm],
                       "lambertian", cfg)
    for k in dense:
        torch.testing.assert_close(dense[k], packed[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------
# sampling modes, chunks, background, occupancy


def test_stratified_jitter_and_deterministic_midpoints():
    field = make_field(FieldConfig(grid_resolution=16))
    cams = look_at(10.0, 15.0, 1.8, 45.0)
    cfg = RenderConfig(n_samples=16)
    bg = make_background(cfg)
    with torch.no_grad():
        a = render(field, cams, 16, 16, cfg, bg, "lambertian")  # no_grad: midpoints by default
        b = render(field, cams, 16, 16, cfg, bg, "lambertian")
        assert torch.equal(a.rgb, b.rgb)
        g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
        j1 = render(field, cams, 16, 16, cfg, bg, "lambertian", stratified=True, generator=g1)
        j2 = render(field, cams, 16, 16, cfg, bg, "lambertian", stratified=True, generator=g2)
        assert torch.equal(j1.rgb, j2.rgb)  # same seed, same jitter
        assert not torch.equal(j1.rgb, a.rgb)
        assert (j1.rgb - a.rgb).abs().max() < 0.1  # jitter moves samples within their interval only
    out = render(field, cams, 16, 16, cfg, bg, "lambertian")  # grad mode: jittered, differentiable
    (out.rgb.mean() + out.orientation).backward()
    assert field.density_grid.grad.abs().sum() > 0 and field.color_grid.grad.abs().sum() > 0


def test_chunking_gives_the_same_image():
    field = make_field(FieldConfig(grid_resolution=16))
    cams = look_at(torch.tensor([0.0, 200.0]), 30.0, 1.8, 45.0)
    with torch.no_grad():
        whole = render(field, cams, 12, 12, RenderConfig(n_samples=16), make_background(RenderConfig()))
        parts = render(field, cams, 12, 12, RenderConfig(n_samples=16, chunk_samples=50 * 16), make_background(RenderConfig()))
    for k in ("rgb", "opacity", "depth", "normal", "albedo"):
        assert torch.allclose(getattr(whole, k), getattr(parts, k), atol=1e-6), k
    assert whole.rgb.shape == (2, 3, 12, 12) and whole.opacity.shape == (2, 1, 12, 12)
    # render.chunk_samples bounds the samples of one field call (50 rays x 16 samples here), whatever the image size
    sizes = []
    real = field.forward
    field.forward = lambda x: sizes.append(x.shape[0]) or real(x)
    with torch.no_grad():
        render(field, cams, 12, 12, RenderConfig(n_samples=16, chunk_samples=50 * 16), make_background(RenderConfig()))
    assert len(sizes) == -(-2 * 12 * 12 // 50) and max(sizes) <= 50 * 16


def test_backgrounds():
    cfg = RenderConfig(background="mlp", background_color=(0.2, 0.5, 0.9))
    bg = make_background(cfg)
    dirs = F.normalize(torch.randn(10, 3), dim=-1)
    assert torch.allclose(bg(dirs), torch.tensor([0.2, 0.5, 0.9]).expand(10, 3), atol=1e-5)
    assert sum(p.numel() for p in bg.parameters()) > 0
    const = make_background(RenderConfig(background_color=(0.1, 0.2, 0.3)))
    assert list(const.parameters()) == [] and torch.allclose(const(dirs[:, None]), torch.tensor([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match="render.background"):
        make_background(RenderConfig(background="sky"))


def test_cpu_occupancy_skipping_renders_the_same_image():
    field = HardSphere(r=0.4)
    cfg = RenderConfig(n_samples=48, occ_resolution=32)
    occ = OccupancyGrid(cfg, bound=1.0)
    torch.manual_seed(0)
    occ.refresh(field)
    assert 0.01 < occ.occupied_fraction < 0.15  # the sphere's cells (dilated), not the whole box
    cams = look_at(torch.tensor([20.0, 160.0]), 10.0, 1.8, 45.0)
    bg = make_background(cfg)
    with torch.no_grad():
        full = render(field, cams, 32, 32, cfg, bg, "lambertian")
        skip = render(field, cams, 32, 32, cfg, bg, "lambertian", occupancy=occ)
    assert skip.n_samples < 0.25 * full.n_samples
    for k in ("rgb", "opacity", "depth", "normal"):
        assert torch.allclose(getattr(full, k), getattr(skip, k), atol=1e-6), k
    # nerfacc's EMA update runs on CPU too, and marks the sphere's centre
    occ2 = OccupancyGrid(cfg, bound=1.0)
    occ2.update(0, field)
    assert bool(occ2.occupied(torch.zeros(1, 3))) and not bool(occ2.occupied(torch.tensor([[0.9, 0.9, 0.9]])))


# ---------------------------------------------------------------------------------------------------
# CUDA: nerfacc's packed occupancy-grid path against the dense path


def _cuda_blob_field():
    """A smooth grid field without fog (softplus(-15) ~ 3e-7 away from the blob, so the occupancy
    grid's culling changes nothing): a blob of peak ~15, radius ~0.25, random colours."""
    torch.manual_seed(0)
    field = make_field(FieldConfig(grid_resolution=64, blob_density=30.0, density_bias=-15.0))
    with torch.no_grad():
        field.density_grid.normal_(0.0, 0.5)
        field.color_grid.normal_(0.0, 1.0)
    return field.cuda()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nerfacc's packed marching)")
def test_cuda_packed_path_agrees_with_dense(nerfacc_cuda):
    """Tolerance: max |rgb difference| < 0.03, mean < 0.003, opacity max < 0.03, depth (where opacity > 0.5)
    max < 0.02; both discretise the same integral with ~0.002 steps (dense 1024 samples over the box
    segment, packed step 0.002). The field has no fog: the packed path drops cells whose density *
    step is below the occupancy threshold, so a faint fog below it (density_bias -5 gave a floor of
    0.007 here: mean |rgb difference| 0.004-0.007 on an H100) adds a difference of its own."""
    field = _cuda_blob_field()
    cfg_dense = RenderConfig(n_samples=1024)
    cfg_occ = RenderConfig(render_step_size=0.002, occ_threshold=1e-4, occ_resolution=64)
    occ = OccupancyGrid(cfg_occ, bound=1.0).cuda()
    occ.refresh(field)
    assert occ.occupied_fraction < 0.5
    cams = look_at(torch.tensor([0.0, 100.0, -150.0]), torch.tensor([10.0, 40.0, -5.0]), 1.8, 45.0).to("cuda")
    bg = make_background(cfg_dense).cuda()
    with torch.no_grad():
        for shading in ("albedo", "lambertian"):
            dense = render(field, cams, 64, 64, cfg_dense, bg, shading)
            packed = render(field, cams, 64, 64, cfg_occ, bg, shading, occupancy=occ)
            diff = (dense.rgb - packed.rgb).abs()
            assert diff.max() < 0.03 and diff.mean() < 0.003, (shading, float(diff.max()), float(diff.mean()))
            assert (dense.opacity - packed.opacity).abs().max() < 0.03
            solid = (dense.opacity > 0.5) & (packed.opacity > 0.5)
            assert (dense.depth - packed.depth).abs()[solid].max() < 0.02
            assert packed.n_samples < dense.n_samples


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (nerfacc's packed marching)")
def test_cuda_packed_path_gradients_and_update(nerfacc_cuda):
    field = _cuda_blob_field()
    cfg = RenderConfig(render_step_size=0.005)
    occ = OccupancyGrid(cfg, bound=1.0).cuda()
    for step in range(0, 64, cfg.occ_update_every):
        occ.update(step, field)
    assert 0.0 < occ.occupied_fraction < 0.5
    cams = look_at(torch.tensor([30.0, -60.0]), 20.0, 1.8, 45.0).to("cuda")
    bg = make_background(cfg).cuda()
    out = render(field, cams, 64, 64, cfg, bg, "lambertian", occupancy=occ)
    ref = render(field, cams, 64, 64, RenderConfig(n_samples=512), bg, "lambertian", stratified=False)
    (out.rgb.mean() + out.orientation).backward()
    g_packed = field.density_grid.grad.clone()
    field.zero_grad()
    (ref.rgb.mean() + ref.orientation).backward()
    g_dense = field.density_grid.grad
    cos = F.cosine_similarity(g_packed.flatten(), g_dense.flatten(), dim=0)
    assert cos > 0.9, float(cos)
