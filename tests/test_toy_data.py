"""Ground-truth renders of the toy world: cameras, silhouettes, shading, batches."""

import math

import pytest
import torch

from dreamfield.config import CameraConfig
from dreamfield.scene.cameras import get_rays, look_at
from dreamfield.toy import data, domain


def _views(az, el, dist, fov, light=None):
    light_pos = None if light is None else torch.tensor([light], dtype=torch.float32)
    return look_at(float(az), float(el), float(dist), float(fov), light_pos=light_pos)


def test_sphere_silhouette_matches_analytic_disc():
    v = _views(30, 20, 1.8, 45)
    geo = data.render_geometry("sphere", v, size=64)  # (1, 2, 64, 64)
    # Exact per-sub-pixel coverage: a ray hits the sphere iff its distance to the centre is < r.
    o, d = get_rays(v, 128, 128)
    t_closest = -(o * d).sum(-1, keepdim=True)
    miss_dist = (o + t_closest * d).norm(dim=-1)
    ref = torch.nn.functional.avg_pool2d((miss_dist < 0.5).to(geo.dtype)[:, None], 2)[0, 0]
    cov = geo[0, 1]
    assert (cov - ref).abs().sum() / ref.sum() < 1e-3
    # ...and the disc has the analytic apparent radius f * tan(asin(r / d)).
    focal = 32 / math.tan(math.radians(22.5))
    radius_px = focal * math.tan(math.asin(0.5 / 1.8))
    assert cov.sum().item() == pytest.approx(math.pi * radius_px**2, rel=0.01)
    ii, jj = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    centroid = ((cov * ii).sum() / cov.sum(), (cov * jj).sum() / cov.sum())
    assert centroid[0].item() == pytest.approx(31.5, abs=0.05) and centroid[1].item() == pytest.approx(31.5, abs=0.05)


def test_shading_and_colour():
    v = _views(0, 0, 1.8, 45, light=(1.5, 0.6, 0.4))
    geo = data.render_geometry("sphere", v, size=64)
    red = torch.tensor([domain.COLOURS["red"]], dtype=geo.dtype)
    rgb = data.colourise(geo, red)[0]  # (3, 64, 64)
    # With the light at the camera, the surface facing it has ambient + diffuse = 1: the pixel is the albedo.
    at_cam = data.colourise(data.render_geometry("sphere", _views(0, 0, 1.8, 45), size=64), red)[0]
    assert torch.allclose(at_cam[:, 31:33, 31:33].mean((1, 2)), red[0], atol=2e-3)
    assert torch.equal(rgb[:, 0, 0], torch.ones(3, dtype=rgb.dtype))  # white background
    assert rgb.min() >= 0 and rgb.max() <= 1
    # Every fully covered pixel has the analytic Lambertian shade averaged over its 2x2 sub-pixels.
    o, d = get_rays(v, 128, 128)
    b = (o * d).sum(-1)
    t_hit = -b - (b * b - ((o * o).sum(-1) - 0.25)).clamp_min(0).sqrt()
    x = o + t_hit[..., None] * d
    n = x / 0.5
    l_dir = torch.nn.functional.normalize(v.light_pos[:, None, None] - x, dim=-1)
    shade = 0.35 + 0.65 * (n * l_dir).sum(-1).clamp_min(0)
    ref = torch.nn.functional.avg_pool2d(shade[:, None], 2)[0, 0]
    full = geo[0, 1] == 1
    assert full.sum() > 1000
    # (grazing hits stop up to hit_eps off the surface, so allow a few 1e-3 there)
    assert (geo[0, 0][full] - ref[full]).abs().max() < 5e-3
    assert (geo[0, 0][full] - ref[full]).abs().mean() < 2e-4


def test_cone_stands_upright():
    geo = data.render_geometry("cone", _views(0, 0, 1.8, 45), size=64)
    cov = geo[0, 1]
    rows = cov.sum(1).nonzero().squeeze(1)
    top_width, bottom_width = cov[rows[2]].sum(), cov[rows[-3]].sum()
    assert top_width < 0.3 * bottom_width  # apex up (z up, row 0 at the top)


def test_camera_distribution_and_labels():
    g = torch.Generator().manual_seed(0)
    v = data.sample_views(4000, g)
    cfg = CameraConfig()
    assert v.distance.min() >= cfg.distance[0] and v.distance.max() <= cfg.distance[1]
    assert v.fov_y_deg.min() >= cfg.fov[0] and v.fov_y_deg.max() <= cfg.fov[1]
    assert v.elevation_deg.min() >= cfg.elevation[0] and v.elevation_deg.max() <= cfg.overhead_max
    overhead = (v.elevation_deg > cfg.elevation[1]).double().mean().item()
    assert overhead == pytest.approx(cfg.overhead_prob, abs=0.02)
    assert v.azimuth_deg.min() < -170 and v.azimuth_deg.max() > 170
    assert (v.light_pos - v.position).norm(dim=-1).mean() == pytest.approx(cfg.light_jitter * 1.596, rel=0.05)
    caps = data.captions_for(torch.tensor([0, 5]), torch.tensor([1, 4]), torch.tensor([0.0, 170.0]), torch.tensor([0.0, 70.0]))
    assert caps == ["a red cube, front view", "a orange torus, overhead view"]


def test_render_pairs_and_batches_use_only_their_pairs():
    out = data.render_pairs([("blue", "torus"), ("yellow", "cube")], 2, seed=3, size=32)
    assert out["images"].shape == (4, 3, 32, 32)
    assert out["colour"].tolist() == [2, 2, 3, 3] and out["shape"].tolist() == [4, 4, 1, 1]
    bank = data.make_geometry_bank(3, seed=0, size=16)
    assert bank.maps.shape == (6, 3, 2, 16, 16)
    pairs = data.pairs_tensor(domain.HELD_OUT[:2])
    rgb, col, shape, view = data.draw_batch(bank, pairs, 50, torch.Generator().manual_seed(0))
    got = set(zip(col.tolist(), shape.tolist()))
    assert got <= {tuple(p) for p in pairs.tolist()} and len(got) == 2
    assert torch.allclose(rgb, data.colourise(bank.maps[shape, view], data.colour_table()[col]))
