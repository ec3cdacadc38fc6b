"""Cameras: ranges, world frame (z up, azimuth 0 on +x), rays, view labels (TOY_DOMAIN rule)."""

from __future__ import annotations

import math

import pytest
import torch

from dreamfield.config import CameraConfig
from dreamfield.prior.text import view_label  # the one copy of the rule; sampled cameras feed it below
from dreamfield.scene.cameras import azimuth_range_at, get_rays, look_at, orbit_cameras, sample_cameras


def test_view_label_rule_and_boundaries():
    assert view_label(0.0, 0.0) == "front"
    assert view_label(45.0, 0.0) == "front"
    assert view_label(-45.0, 10.0) == "front"
    assert view_label(45.1, 0.0) == "side"
    assert view_label(90.0, 0.0) == "side"
    assert view_label(134.9, 0.0) == "side"
    assert view_label(135.0, 0.0) == "back"
    assert view_label(-135.0, 0.0) == "back"
    assert view_label(180.0, 0.0) == "back"
    assert view_label(-180.0, 0.0) == "back"
    # wrapping to (-180, 180]
    assert view_label(315.0, 0.0) == "front"  # -45
    assert view_label(225.0, 0.0) == "back"  # -135
    assert view_label(-270.0, 0.0) == "side"  # 90
    assert view_label(360.0, 0.0) == "front"
    # overhead wins when elevation > 60
    assert view_label(0.0, 60.0) == "front"
    assert view_label(0.0, 60.1) == "overhead"
    assert view_label(180.0, 85.0) == "overhead"


def test_azimuth_zero_sits_on_plus_x_and_looks_at_origin():
    cams = look_at(0.0, 0.0, 2.0, 45.0)
    assert torch.allclose(cams.position[0], torch.tensor([2.0, 0.0, 0.0]), atol=1e-6)
    forward = -cams.c2w[0, :3, 2]  # the camera looks along its -z
    assert torch.allclose(forward, torch.tensor([-1.0, 0.0, 0.0]), atol=1e-6)
    up = cams.c2w[0, :3, 1]
    assert torch.allclose(up, torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)  # z up
    cams90 = look_at(90.0, 0.0, 1.5, 45.0)
    assert torch.allclose(cams90.position[0], torch.tensor([0.0, 1.5, 0.0]), atol=1e-6)
    top = look_at(30.0, 90.0, 1.0, 45.0)  # straight overhead: no degenerate frame
    assert torch.allclose(top.position[0], torch.tensor([0.0, 0.0, 1.0]), atol=1e-6)
    assert torch.isfinite(top.c2w).all()


def test_look_at_frames_are_rotations_aimed_at_origin():
    az = torch.tensor([-170.0, -30.0, 0.0, 45.0, 120.0, 179.0])
    el = torch.tensor([-10.0, 0.0, 20.0, 45.0, 60.0, 85.0])
    cams = look_at(az, el, torch.full((6,), 1.8), 45.0)
    rot = cams.c2w[:, :3, :3]
    eye = torch.eye(3).expand(6, 3, 3)
    assert torch.allclose(rot.transpose(1, 2) @ rot, eye, atol=1e-5)
    assert torch.allclose(torch.linalg.det(rot), torch.ones(6), atol=1e-5)
    forward = -rot[:, :, 2]
    to_origin = -cams.position / cams.position.norm(dim=-1, keepdim=True)
    assert torch.allclose(forward, to_origin, atol=1e-5)
    assert (rot[:, 2, 1] > 0).all()  # camera up has a positive world-z part (elevation < 90)
    # elevation is the angle above the xy-plane
    measured = torch.rad2deg(torch.asin(cams.position[:, 2] / cams.position.norm(dim=-1)))
    assert torch.allclose(measured, el, atol=1e-3)


def test_rays_through_pixel_centres():
    H, W, fov = 4, 6, 40.0
    cams = look_at(0.0, 0.0, 2.0, fov)
    o, d = get_rays(cams, H, W)
    assert o.shape == (1, H, W, 3) and d.shape == (1, H, W, 3)
    assert torch.allclose(d.norm(dim=-1), torch.ones(1, H, W), atol=1e-6)
    assert torch.allclose(o, cams.position[0].expand(1, H, W, 3))
    # camera at +x looking at -x: image right is +y, image up is +z
    assert d[0, 0, 0, 2] > 0 and d[0, -1, 0, 2] < 0  # top row looks up
    assert d[0, 0, 0, 1] < 0 and d[0, 0, -1, 1] > 0  # left column looks to -y
    # camera forward is -x, so tan of the vertical angle of row i is z / -x = (1 - 2 (i + 0.5) / H) tan(fov / 2)
    tan_half = math.tan(math.radians(fov / 2))
    col = d[0, :, 2]  # any column
    expected = torch.tensor([(1 - 2 * (i + 0.5) / H) * tan_half for i in range(H)])
    assert torch.allclose(col[:, 2] / -col[:, 0], expected, atol=1e-5)
    # square pixels: the horizontal tangent of column j is (2 (j + 0.5) / W - 1) tan(fov / 2) W / H
    row = d[0, 1]  # any row: tan of the horizontal angle in the camera frame = y / -x
    ratio = row[:, 1] / -row[:, 0]
    expected = torch.tensor([(2 * (j + 0.5) / W - 1) * tan_half * W / H for j in range(W)])
    assert torch.allclose(ratio, expected, atol=1e-5)


def test_sample_cameras_honours_ranges_and_seed():
    cfg = CameraConfig(overhead_prob=0.25)
    g = torch.Generator().manual_seed(3)
    cams = sample_cameras(cfg, 4000, g, "cpu")
    assert len(cams) == 4000
    assert cams.distance.min() >= 1.6 and cams.distance.max() <= 2.0
    assert cams.fov_y_deg.min() >= 40.0 and cams.fov_y_deg.max() <= 50.0
    assert cams.elevation_deg.min() >= -10.0 and cams.elevation_deg.max() <= 85.0
    assert cams.azimuth_deg.min() > -180.0 and cams.azimuth_deg.max() <= 180.0
    over = (cams.elevation_deg > 60.0).float().mean()
    assert 0.21 < float(over) < 0.29  # the overhead share, 0.25 +- ~4 sigma
    # every azimuth quadrant is visited, positions match the stored angles and distance
    assert torch.histc(cams.azimuth_deg, bins=4, min=-180, max=180).min() > 800
    assert torch.allclose(cams.position.norm(dim=-1), cams.distance, atol=1e-5)
    # light near the camera: camera position + N(0, jitter^2)
    off = cams.light_pos - cams.position
    assert off.mean().abs() < 0.03 and abs(float(off.std()) - cfg.light_jitter) < 0.03
    again = sample_cameras(cfg, 4000, torch.Generator().manual_seed(3), "cpu")
    assert torch.equal(cams.c2w, again.c2w) and torch.equal(cams.light_pos, again.light_pos)


def test_progressive_azimuth_span_widens_linearly_to_the_full_range():
    cfg = CameraConfig(azimuth_start_span=60.0, azimuth_widen_steps=100)
    assert azimuth_range_at(cfg, 0) == (-30.0, 30.0)
    assert azimuth_range_at(cfg, 50) == pytest.approx((-105.0, 105.0))  # 60 + (360 - 60) / 2 = 210 degrees
    assert azimuth_range_at(cfg, 100) == (-180.0, 180.0)
    assert azimuth_range_at(cfg, 10_000) == (-180.0, 180.0)
    assert azimuth_range_at(CameraConfig(azimuth_widen_steps=0), 0) == (-180.0, 180.0)  # 0 steps: off
    # centred on the middle of a narrower range, never wider than it
    narrow = CameraConfig(azimuth=(0.0, 90.0), azimuth_start_span=360.0, azimuth_widen_steps=10)
    assert azimuth_range_at(narrow, 0) == (0.0, 90.0)
    assert azimuth_range_at(CameraConfig(azimuth=(0.0, 90.0), azimuth_start_span=10.0, azimuth_widen_steps=10), 0) == (40.0, 50.0)
    # the sampled views stay inside the span, and with a span of 60 all are labelled front views
    cams = sample_cameras(cfg, 2000, torch.Generator().manual_seed(0), "cpu", azimuth_range_at(cfg, 0))
    assert cams.azimuth_deg.abs().max() <= 30.0 and cams.azimuth_deg.abs().max() > 29.0
    labels = {view_label(float(a), float(e)) for a, e in zip(cams.azimuth_deg, cams.elevation_deg)}
    assert labels == {"front", "overhead"}


def test_sample_cameras_bad_range():
    from dreamfield.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="camera.fov"):  # validated once, when the config loads
        load_config([], ["camera.fov=[50,40]"])


def test_orbit_cameras():
    cams = orbit_cameras(8, 20.0, 1.8, 45.0)
    expected = torch.tensor([0.0, 45.0, 90.0, 135.0, 180.0, -135.0, -90.0, -45.0])
    assert torch.allclose(cams.azimuth_deg, expected, atol=1e-4)
    assert torch.allclose(cams.elevation_deg, torch.full((8,), 20.0))
    assert torch.allclose(cams.light_pos, cams.position)
    assert cams[2].c2w.shape == (1, 4, 4) and torch.equal(cams[2].c2w[0], cams.c2w[2])
