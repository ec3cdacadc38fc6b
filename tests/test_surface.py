"""The surface stage: the SDF field's closed forms (VolSDF density, sphere and plane SDFs, eikonal term,
normals, silhouette), the distance-transform hand-over, the zero-level-set export, the stage's config,
and the two-stage generate run: hand-over and resume inside either stage give bit-identical parameters."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from scipy import stats

from dreamfield.config import Config, ConfigError, SurfaceConfig, load_config
from dreamfield.scene.cameras import get_rays, orbit_cameras
from dreamfield.scene.sdf import SdfGridField, laplace_cdf, lattice_gradient, sdf_from_occupancy, smooth_sdf

R = 0.5  # the fresh field's sphere


def sphere_field(resolution: int = 49, beta: float = 0.005, bounding_radius: float = 0.0) -> SdfGridField:
    cfg = SurfaceConfig(resolution=resolution, beta_init=beta + 1e-3, beta_min=beta)  # beta = beta_min + 1e-3
    return SdfGridField(cfg, bound=1.0, bounding_radius=bounding_radius, radius=R)


def test_laplace_cdf_matches_scipy_and_has_a_float64_gradient():
    s = torch.linspace(-0.3, 0.3, 101, dtype=torch.float64)
    beta = torch.tensor(0.05, dtype=torch.float64)
    assert torch.allclose(laplace_cdf(s, beta), torch.from_numpy(stats.laplace.cdf(s.numpy(), scale=0.05)), atol=1e-12)
    s_off = torch.tensor([-0.2, -0.01, 0.02, 0.3], dtype=torch.float64, requires_grad=True)  # away from the kink
    b = beta.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(laplace_cdf, (s_off, b))


def test_volsdf_density_is_half_alpha_on_the_surface_and_alpha_deep_inside():
    field = sphere_field()
    beta = float(field.beta.detach())  # resolution 49: x = 0.5 and 0 are lattice nodes, d is exact there
    x = torch.tensor([[R, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 0.9, 0.0]])
    sigma = field.density(x)
    assert sigma[0].item() == pytest.approx(0.5 / beta, rel=1e-4)  # d = 0: alpha Psi(0) = alpha / 2 (VolSDF Eq. 2)
    assert sigma[1].item() == pytest.approx(1.0 / beta, rel=1e-6)  # d = -0.5 = -83 beta
    assert sigma[2].item() < 1e-20  # d = +0.4


def test_plane_sdf_has_zero_eikonal_and_exact_normals():
    field = sphere_field(resolution=16)
    axis = torch.linspace(-1, 1, 16)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    d = (0.6 * x - 0.8 * z + 0.1).float()  # a plane, unit normal (0.6, 0, -0.8)
    field.set_grids(d, torch.zeros(3, 16, 16, 16))
    assert field.eikonal().item() < 1e-10  # central differences of a linear function are exact
    n = field.normals(torch.rand(50, 3) * 1.6 - 0.8)
    assert torch.allclose(n, torch.tensor([0.6, 0.0, -0.8]).expand_as(n), atol=1e-5)


def test_sphere_sdf_is_a_fixed_point_unit_gradient_radial_normals():
    field = sphere_field(resolution=64)
    g = lattice_gradient(field.sdf_grid, 1.0)[0].norm(dim=0)  # (R, R, R)
    axis = torch.linspace(-1, 1, 64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    near = ((x * x + y * y + z * z).sqrt() - R).abs() < 0.2  # a band around the surface (the centre is a kink)
    h = 2.0 / 63
    assert (g[near] - 1).abs().max().item() < h**2 / 0.3**2  # central differences' error, O(h^2 / r^2)
    assert field.eikonal().item() < 2e-3  # the kink at the centre and the box faces are all that is left
    u = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    on_surface = R * u
    assert field.sdf(on_surface).abs().max().item() < 2e-3  # trilinear reading of |x| - R
    assert torch.allclose(field.normals(on_surface), u, atol=5e-3)


def test_rendering_a_sphere_sdf_gives_its_exact_silhouette():
    from dreamfield.config import RenderConfig
    from dreamfield.scene.background import make_background
    from dreamfield.scene.render import render

    field = sphere_field(resolution=64, beta=0.002)
    rcfg = RenderConfig(n_samples=256, background_color=(1.0, 1.0, 1.0))
    cams = orbit_cameras(2, 20.0, 1.8, 45.0)
    H = 32
    out = render(field, cams, H, H, rcfg, make_background(rcfg), "albedo", bound=1.0, stratified=False)
    o, d = get_rays(cams, H, H)
    # distance from the centre to each ray: the sphere covers the pixel iff it is below R
    closest = (o - (o * d).sum(-1, keepdim=True) * d).norm(dim=-1)  # (B, H, W)
    inside, outside = closest < R - 0.01, closest > R + 0.01  # the rim's pixels (a pixel is 0.047 wide) left out
    opacity = out.opacity[:, 0]
    assert inside.sum() > 100 and outside.sum() > 100
    assert opacity[inside].min().item() > 0.999
    assert opacity[outside].max().item() < 0.5  # the Laplace tail outside d = 0 stays below half opacity
    assert opacity[closest > R + 0.05].max().item() < 1e-4  # and dies within 0.05 = 17 beta


def test_sdf_from_occupancy_matches_a_sphere_within_a_voxel():
    res, bound = 48, 1.0
    axis = np.linspace(-bound, bound, res)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    exact = np.sqrt(x * x + y * y + z * z) - 0.45
    sdf = sdf_from_occupancy(exact < 0, bound)
    h = 2 * bound / (res - 1)
    band = np.abs(exact) < 0.3
    assert np.abs(sdf - exact)[band].max() < h  # the voxel mask loses sub-voxel position, no more
    assert np.all(np.sign(sdf[np.abs(exact) > h]) == np.sign(exact[np.abs(exact) > h]))
    with pytest.raises(ValueError, match="no surface"):
        sdf_from_occupancy(np.zeros((8, 8, 8), bool), bound)


def test_smoothing_a_sphere_sdf_shrinks_it_by_the_heat_equation_closed_form():
    # E|x + sigma Z| over a 3-D Gaussian Z is rho + sigma^2 / rho (plus terms of order exp(-rho^2 / 2 sigma^2)), so
    # the blurred sphere SDF |x| - r has its zero at rho + sigma^2 / rho = r: rho* = (r + sqrt(r^2 - 4 sigma^2)) / 2
    n, bound, r, sigma = 129, 1.0, 0.5, 0.06
    axis = np.linspace(-bound, bound, n)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    sdf = (np.sqrt(x * x + y * y + z * z) - r).astype(np.float32)
    blurred = smooth_sdf(sdf, sigma, bound).astype(np.float64)
    line = blurred[n // 2, n // 2, n // 2:]  # along +x from the centre
    i = int(np.flatnonzero(line > 0)[0])  # first node outside
    x0, x1 = axis[n // 2 + i - 1], axis[n // 2 + i]
    zero = x0 + (x1 - x0) * (-line[i - 1]) / (line[i] - line[i - 1])
    expected = 0.5 * (r + math.sqrt(r * r - 4 * sigma * sigma))
    h = 2 * bound / (n - 1)
    assert abs(zero - expected) < 0.05 * h  # the shrink itself is sigma^2 / r ~ 0.46 h
    assert abs(zero - r) > 0.4 * h
    # a plane's SDF (linear) is unchanged away from the box faces; sigma 0 is the identity
    plane = (x - 0.1).astype(np.float32)
    inner = (slice(20, -20),) * 3
    assert np.abs(smooth_sdf(plane, sigma, bound)[inner] - plane[inner]).max() < 1e-5
    assert smooth_sdf(sdf, 0.0, bound) is sdf


def test_sdf_export_is_the_zero_level_set():
    from dreamfield.config import ExportConfig
    from dreamfield.export.sdf_mesh import extract_sdf_mesh
    from dreamfield.toy.measures import gltf_to_world

    field = sphere_field(resolution=64)
    mesh = extract_sdf_mesh(field, ExportConfig(resolution=64, target_faces=0, threshold=2.6, density_blur=0.06),
                            1.0, "cpu")
    radii = np.linalg.norm(gltf_to_world(np.asarray(mesh.vertices)), axis=1)
    assert np.abs(radii - R).max() < 2e-3  # neither the density level nor the blur moved it
    assert mesh.is_watertight and mesh.volume == pytest.approx(4 / 3 * math.pi * R**3, rel=0.01)
    assert mesh.metadata["level"] == 0.0
    # the bounding sphere cuts the SDF as the renderer's density cut does
    cut = extract_sdf_mesh(sphere_field(resolution=64, bounding_radius=0.3), ExportConfig(resolution=64, target_faces=0),
                           1.0, "cpu")
    assert np.linalg.norm(gltf_to_world(np.asarray(cut.vertices)), axis=1).max() < 0.3 + 2e-3


def coarse_sphere(colour_logits):
    """(cfg, coarse scene): a 32^3 grid field whose density crosses surface.init_level 2.0 at r = 0.4, with albedo
    logits colour_logits(x, y, z, r) (3, 32, 32, 32) on its lattice; the hand-over cuts it there (no blur)."""
    from dreamfield.scene.scene import make_scene

    cfg = load_config([], ["field.grid_resolution=32", "surface.resolution=40", "surface.init_blur=0",
                           "surface.init_level=2.0"])
    coarse = make_scene(cfg, "cpu")
    axis = torch.linspace(-1, 1, 32)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    r = (x * x + y * y + z * z).sqrt()
    with torch.no_grad():  # raw density whose exp crosses 2.0 at r = 0.4 (bias -4, blob 5 exp(-r^2 / 0.5))
        target = torch.log(torch.tensor(2.0)) - (-4.0 + 5.0 * torch.exp(-r * r / 0.5)) + 20.0 * (0.4 - r)
        coarse.field.density_grid.copy_(target[None, None])
        coarse.field.color_grid.copy_(colour_logits(x, y, z, r)[None])
    return cfg, coarse


def test_hand_over_puts_the_surface_at_the_coarse_level_set_and_copies_albedo():
    from dreamfield.surface import hand_over

    cfg, coarse = coarse_sphere(lambda x, y, z, r: torch.stack([x, y, z]))
    scene = hand_over(cfg, coarse, "cpu")
    u = torch.nn.functional.normalize(torch.randn(300, 3), dim=-1)
    assert scene.field.sdf(0.4 * u).abs().max().item() < 2.0 / 39 + 0.01  # a voxel, plus the coarse grid's lerp
    pts = torch.rand(100, 3) * 1.2 - 0.6
    _, a_coarse = coarse.field(pts)
    _, a_surf = scene.field(pts)
    assert torch.allclose(a_surf, a_coarse, atol=0.02)  # both trilinear, on different lattices
    # surface.init_smooth blurs the start: the sphere shrinks by about sigma^2 / r, its surface stays within reach
    smooth = hand_over(dataclasses.replace(cfg, surface=dataclasses.replace(cfg.surface, init_smooth=0.06)), coarse, "cpu")
    d_plain, d_smooth = scene.field.sdf(0.4 * u), smooth.field.sdf(0.4 * u)
    assert (d_smooth - d_plain).mean().item() == pytest.approx(0.06**2 / 0.4, abs=0.004)


def blurred_ball_radius(rho: float, r: float, sigma: float, level: float) -> float:
    """Where a ball of density rho (radius r, zero outside) blurred by a 3-D Gaussian of std sigma falls to level:
    rho P(|c + sigma Z| < r) = level at |c| = s, with P(s) = Phi((r - s) / sigma) - Phi((-r - s) / sigma)
    - (sigma / s) (phi((r - s) / sigma) - phi((r + s) / sigma)), the integral of the Gaussian over the ball."""
    from scipy.optimize import brentq
    from scipy.stats import norm

    def p(s):
        a, b = (r - s) / sigma, (r + s) / sigma
        return norm.cdf(a) - norm.cdf(-b) - sigma / s * (norm.pdf(a) - norm.pdf(b))

    return brentq(lambda s: rho * p(s) - level, 0.5 * r, r + 6 * sigma)


def test_hand_over_blur_grows_a_sharp_ball_as_the_blurred_indicator_closed_form():
    # A sharp coarse field (density 50 inside r = 0.4, 0.01 outside, as a well-fitted anchored run's) handed over
    # at surface.init_level 2.6: its blurred level set lies outside the solid by about sigma Phi^-1(1 - 2.6 / 50)
    # (1.6 sigma on a plane; on this ball 0.09 at a 0.06 blur, 0.05 at 0.03), the starting surface the stage keeps
    from dreamfield.scene.field import blob
    from dreamfield.scene.scene import make_scene
    from dreamfield.surface import hand_over, lattice_points

    res, r0, rho = 96, 0.4, 50.0
    h = 2.0 / (res - 1)
    u = torch.nn.functional.normalize(torch.randn(400, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    t = torch.linspace(0.3, 0.65, 351)  # 0.001 apart along each direction
    cfg = load_config([], [f"field.grid_resolution={res}", f"surface.resolution={res}", "surface.init_level=2.6",
                           "surface.init_colour_depth=0"])
    coarse = make_scene(cfg, "cpu")
    pts = lattice_points(res, 1.0).reshape(-1, 3)  # the grid field's nodes, in its (z, y, x) layout
    pre = torch.where(pts.norm(dim=-1) < r0, torch.tensor(rho).log(), torch.tensor(0.01).log())
    with torch.no_grad():  # the field adds density_bias and the blob to its grid: take them out again
        raw = pre - cfg.field.density_bias - blob(cfg.field, pts)[0]
        coarse.field.density_grid.copy_(raw.reshape(1, 1, res, res, res))
    sigma_nodes, _ = coarse.field(pts)
    near = pts.norm(dim=-1) < 0.8  # inside the field's bounding sphere, which zeroes the density beyond it
    assert torch.allclose(sigma_nodes[near], pre[near].exp(), rtol=1e-4)  # the ball at the nodes
    grown = {}
    for sigma in (0.03, 0.06):
        blurred = dataclasses.replace(cfg, surface=dataclasses.replace(cfg.surface, init_blur=sigma))
        scene = hand_over(blurred, coarse, "cpu", say=lambda m: None)
        with torch.no_grad():
            d = scene.field.sdf((t[:, None, None] * u[None]).reshape(-1, 3)).reshape(len(t), len(u))
        first_out = (d > 0).float().argmax(dim=0)  # the start's zero crossing along each direction
        radius = t[first_out].mean().item()
        # the node-sampled ball is a staircase of radius r0 on average; the voxel mask loses sub-voxel position
        assert radius == pytest.approx(blurred_ball_radius(rho, r0, sigma, 2.6), abs=0.15 * h), sigma
        grown[sigma] = radius - r0
    assert grown[0.06] > grown[0.03] + 1.5 * h  # each 0.03 of blur grows the start by 1.4-1.6 sigma
    assert grown[0.03] > 1.2 * h  # even the smaller blur starts the stage a voxel outside a sharp solid


def test_hand_over_with_init_colour_depth_takes_the_colour_along_the_normal():
    from dreamfield.export.albedo import surface_albedo
    from dreamfield.surface import INIT_COLOUR_BAND, hand_over

    red = torch.tensor([2.0, -2.0, -2.0]).view(3, 1, 1, 1)  # the sphere red inside r = 0.42, a white halo outside
    cfg, coarse = coarse_sphere(lambda x, y, z, r: torch.where(r < 0.42, red, torch.tensor(4.0)))
    plain, deep = (hand_over(dataclasses.replace(cfg, surface=dataclasses.replace(cfg.surface, init_colour_depth=d)),
                             coarse, "cpu") for d in (0.0, 0.1))
    assert torch.equal(plain.field.sdf_grid, deep.field.sdf_grid)  # the geometry is the same
    u = torch.nn.functional.normalize(torch.randn(200, 3), dim=-1)
    on = 0.4 * u
    _, a_plain = plain.field(on)
    _, a_deep = deep.field(on)
    expected = surface_albedo(coarse.field, on, u, 0.1)  # the coarse colour along the inward normal at the surface
    assert a_plain[:, 1].mean().item() > 0.5  # the voxels next to r = 0.4 carry the halo's white (green 0.98)
    diff = (a_deep - expected).abs()  # the lerp of voxels up to a lattice step from the point, each along its normal
    assert diff.mean().item() < 0.03 and diff.max().item() < 0.15
    assert a_deep[:, 1].mean().item() < 0.5 * a_plain[:, 1].mean().item()  # nearer red (green 0.12) than the halo
    h = 2.0 / 39
    far = torch.tensor([[0.0, 0.0, 0.4 + (INIT_COLOUR_BAND + 2) * h]])  # beyond the band the voxels are untouched
    assert torch.allclose(deep.field(far)[1], plain.field(far)[1])


def test_beta_ceiling_falls_geometrically_and_stops_the_learned_beta():
    from dreamfield.surface import beta_cap_at

    cfg = load_config([], ["optim.steps=40", "surface.beta_init=0.02", "surface.beta_end=0.002",
                           "surface.beta_anneal=1"])  # 10 stage steps, the ceiling falls over all of them
    assert beta_cap_at(cfg, 0) == pytest.approx(0.02)
    assert beta_cap_at(cfg, 5) == pytest.approx((0.02 * 0.002) ** 0.5)  # the geometric midpoint
    assert beta_cap_at(cfg, 10) == pytest.approx(0.002) and beta_cap_at(cfg, 99) == pytest.approx(0.002)
    assert beta_cap_at(load_config([], ["surface.beta_end=null"]), 5) == float("inf")
    half = load_config([], ["optim.steps=40", "surface.beta_end=0.002", "surface.beta_anneal=0.5"])
    assert beta_cap_at(half, 4) == float("inf") and beta_cap_at(half, 5) == pytest.approx(0.02)
    assert beta_cap_at(half, 10) == pytest.approx(0.002)
    default = load_config([], ["optim.steps=40"])  # the default: the stage at the learned beta, its final field sharp
    assert beta_cap_at(default, 9) == float("inf") and beta_cap_at(default, 10) == pytest.approx(0.001)
    with pytest.raises(ConfigError, match=r"surface\.beta_end"):
        load_config([], ["surface.beta_end=0.05"])  # above beta_init

    field = sphere_field(resolution=16, beta=0.02)
    learned = float(field.beta.detach())
    field.beta_cap = 0.004
    beta = field.beta
    assert float(beta.detach()) == pytest.approx(0.004)
    beta.backward()
    assert float(field.log_beta.grad) == 0.0  # held at the ceiling: no gradient to the learned value
    field.beta_cap = float("inf")
    assert float(field.beta.detach()) == pytest.approx(learned)


def test_stage_config_and_validation():
    from dreamfield.surface import stage_config, stage_steps

    cfg = load_config([], ["optim.steps=40", "loss.tv=0.5", "surface.t_max=0.6", "surface.t_max_end=0.25",
                           "guidance.t_min_start=0.7", "guidance.t_min_start_steps=5"])
    assert stage_steps(cfg) == 10
    st = stage_config(cfg)
    assert (st.optim.steps, st.guidance.t_max, st.guidance.t_max_end, st.loss.tv) == (10, 0.6, 0.25, 0.0)
    assert st.guidance.t_min_start is None  # the density stage's high-noise start is not repeated on the surface
    assert st.camera.azimuth_widen_steps == 0 and st.field == cfg.field
    assert stage_steps(load_config([], ["surface.steps=7"])) == 7
    for bad, key in (("surface.beta_init=0.001", "surface.beta_init"), ("surface.t_max=0.1", "surface.t_max"),
                     ("surface.lr_sdf=0", "surface.lr_sdf"), ("surface.steps=0", "surface.steps"),
                     ("surface.resolution=2", "surface.resolution")):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
            load_config([], [bad])
    assert load_config(["configs/one_stage.yaml"]).surface.enabled is False
    assert load_config([]).surface.enabled is True  # the cascade is the default
    assert load_config(["configs/sd21.yaml"]).surface.resolution == 128


# -- the two-stage generate run on the tiny SD ----------------------------------------------------------------
FAST = ["--set", "render.resolution=16", "--set", "render.n_samples=12", "--set", "field.grid_resolution=16",
        "--set", "surface.resolution=16", "--set", "surface.steps=4", "--set", "surface.init_level=1.0",
        "--set", "run.log_every=1", "--set", "run.checkpoint_every=1", "--set", "run.preview_every=0", "--quiet"]


def _field_state(path) -> dict:
    return torch.load(path, weights_only=True)["scene"]["field"]


def _stop_in_stage(stage: int, n: int):
    """generate.optimize that raises KeyboardInterrupt after n steps of call number ``stage`` (0 coarse, 1 surface)."""
    from dreamfield import optimize as opt

    calls = []

    def stopped(*args, **kwargs):
        calls.append(1)
        if len(calls) - 1 != stage:
            return opt.optimize(*args, **kwargs)

        def on_step(done):
            if done == n:
                raise KeyboardInterrupt

        return opt.optimize(*args, **kwargs, on_step=on_step)

    return stopped


@pytest.mark.parametrize("stage", [0, 1])
def test_resume_inside_either_stage_is_exact(tiny_sd_path, tmp_path, stage):
    from dreamfield.cli import main

    # the default: two stages; beta's ceiling falls to 0.004 over the 4 stage steps, below the learned beta
    common = ["--model", str(tiny_sd_path), "--steps", "4", "--no-export", "--set", "surface.beta_end=0.004",
              "--set", "surface.beta_anneal=1"] + FAST
    full = tmp_path / "full"
    assert main(["generate", "a blue sphere", "--out", str(full)] + common) == 0
    assert (full / "surface" / "checkpoints" / "last.pt").is_file()
    surf = _field_state(full / "surface" / "checkpoints" / "last.pt")
    assert set(surf) == {"sdf_grid", "color_grid", "log_beta"}
    assert "density_grid" in _field_state(full / "checkpoints" / "last.pt")

    stopped = tmp_path / "stopped"
    patch = pytest.MonkeyPatch()
    patch.setattr("dreamfield.generate.optimize", _stop_in_stage(stage, 2))
    try:
        assert main(["generate", "a blue sphere", "--out", str(stopped)] + common) == 130
    finally:
        patch.undo()
    folder = stopped / "surface" if stage == 1 else stopped
    assert torch.load(folder / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert (stage == 1) == (stopped / "surface").exists()
    assert main(["generate", "--resume", str(stopped), "--quiet", "--no-export"]) == 0

    for sub in ("checkpoints", "surface/checkpoints"):
        a, b = _field_state(full / sub / "last.pt"), _field_state(stopped / sub / "last.pt")
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), (sub, k)
    steps = [json.loads(l)["step"] for l in (stopped / "surface" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]
    rec = json.loads((stopped / "surface" / "metrics.jsonl").read_text().splitlines()[-1])
    assert rec["eikonal"] >= 0
    from dreamfield.run import load_run_scene

    for run in (full, stopped):  # what export renders: the field after the last step, at the ceiling's end
        assert float(load_run_scene(run)[1].field.beta.detach()) == pytest.approx(0.004)


def test_one_stage_run_has_no_surface_folder_and_exports_the_sdf_otherwise(tiny_sd_path, tmp_path):
    from dreamfield.cli import main

    common = ["--model", str(tiny_sd_path), "--steps", "2"] + FAST + ["--set", "export.video_frames=2",
                                                                      "--set", "export.compare_views=0"]
    one = tmp_path / "one"
    assert main(["generate", "a red cube", "--out", str(one), "--config", "configs/one_stage.yaml"] + common) == 0
    assert not (one / "surface").exists()
    two = tmp_path / "two"
    assert main(["generate", "a red cube", "--out", str(two)] + common) == 0  # the default: two stages
    assert (two / "surface" / "config.yaml").is_file() and (two / "turntable.mp4").is_file()
