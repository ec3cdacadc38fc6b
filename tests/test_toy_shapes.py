"""The analytic primitives against their definitions (TOY_DOMAIN.md "Shapes")."""

import math

import pytest
import torch

from dreamfield.toy import shapes
from dreamfield.toy.domain import SHAPES

# (point, inside?) pairs read off the definition table, close to each boundary.
KNOWN = {
    "sphere": [((0.49, 0, 0), True), ((0.51, 0, 0), False), ((0.28, 0.28, 0.28), True), ((0.29, 0.29, 0.29), False)],
    "cube": [((0.39, 0.39, 0.39), True), ((0.41, 0, 0), False), ((0, 0, -0.41), False), ((-0.39, 0.2, -0.39), True)],
    "cylinder": [((0.39, 0, 0.44), True), ((0.41, 0, 0), False), ((0, 0, 0.46), False), ((0.28, 0.28, -0.44), True)],
    "cone": [((0, 0, 0.44), True), ((0.49, 0, -0.44), True), ((0.3, 0, 0.2), False), ((0.13, 0, 0.2), True),
             ((0, 0, -0.46), False)],
    "torus": [((0.35, 0, 0), True), ((0, 0, 0), False), ((0.49, 0, 0), True), ((0.51, 0, 0), False),
              ((0, 0.35, 0.14), True), ((0, 0.35, 0.16), False)],
    "pyramid": [((0.44, 0.44, -0.44), True), ((0.2, 0.2, 0.2), False), ((0.12, -0.12, 0.2), True),
                ((0.46, 0, -0.44), False), ((0, 0, 0.44), True)],
}


@pytest.mark.parametrize("shape", SHAPES)
def test_known_points(shape):
    pts = torch.tensor([p for p, _ in KNOWN[shape]], dtype=torch.float64)
    expected = torch.tensor([inside for _, inside in KNOWN[shape]])
    assert torch.equal(shapes.occupancy(shape, pts), expected)
    assert torch.equal(shapes.sdf(shape, pts) < 0, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_monte_carlo_volume_matches_closed_form(shape):
    closed = {
        "sphere": 4 / 3 * math.pi * 0.5**3,
        "cube": 0.512,
        "cylinder": math.pi * 0.16 * 0.9,
        "cone": math.pi * 0.25 * 0.9 / 3,
        "torus": 2 * math.pi**2 * 0.35 * 0.15**2,
        "pyramid": 0.81 * 0.9 / 3,
    }[shape]
    assert shapes.VOLUMES[shape] == pytest.approx(closed, rel=1e-12)
    g = torch.Generator().manual_seed(0)
    n, half = 400_000, 0.8
    pts = (torch.rand(n, 3, generator=g, dtype=torch.float64) * 2 - 1) * half
    p = shapes.occupancy(shape, pts).double().mean().item()
    box = (2 * half) ** 3
    se = box * math.sqrt(p * (1 - p) / n)
    assert abs(p * box - closed) < 4 * se
    assert shapes.occupancy(shape, pts).any() and (shapes.occupancy(shape, pts * 0 + 0.79)).logical_not().all()


@pytest.mark.parametrize("shape", SHAPES)
def test_sdf_is_a_distance_bound_and_tight_where_exact(shape):
    """No boundary lies inside the ball of radius |sdf(p)|; for the exact sdfs, the point |sdf(p)| down the
    gradient is on the boundary (a small ball around it holds inside and outside points), so the
    distance is not an underestimate."""
    g = torch.Generator().manual_seed(1)
    p = (torch.rand(300, 3, generator=g, dtype=torch.float64) * 2 - 1) * 0.9
    d = shapes.sdf(shape, p)
    keep = d.abs() > 1e-3
    p, d = p[keep], d[keep]
    occ = shapes.occupancy(shape, p)
    assert torch.equal(occ, d < 0)
    dirs = torch.nn.functional.normalize(torch.randn(len(p), 32, 3, generator=g, dtype=torch.float64), dim=-1)
    radii = torch.rand(len(p), 32, 1, generator=g, dtype=torch.float64) * 0.98 * d.abs()[:, None, None]
    ball = (p[:, None] + dirs * radii).reshape(-1, 3)
    assert torch.equal(shapes.occupancy(shape, ball).reshape(len(p), 32), occ[:, None].expand(-1, 32))
    n = shapes.sdf_normals(shape, p, eps=1e-6)
    if shape != "pyramid":
        foot = p - d[:, None] * n  # (M, 3), claimed nearest boundary point
        # 256 directions: at the cone's apex the solid fills only ~6 % of the directions.
        around = torch.nn.functional.normalize(torch.randn(len(p), 256, 3, generator=g, dtype=torch.float64), dim=-1)
        near = (foot[:, None] + around * 2e-3).reshape(-1, 3)
        occ_near = shapes.occupancy(shape, near).reshape(len(p), 256)
        assert occ_near.any(1).all() and (~occ_near).any(1).all()


def test_sdf_normals_are_outward():
    pts = torch.tensor([[0.6, 0.0, 0.0], [0.0, 0.0, 0.3], [0.5, 0.0, 0.0]], dtype=torch.float64)
    n = shapes.sdf_normals("sphere", pts)
    assert torch.allclose(n, torch.tensor([[1.0, 0, 0], [0, 0, 1.0], [1.0, 0, 0]], dtype=torch.float64), atol=1e-6)
    # Pyramid slanted face toward +x: normal (2h, 0, a) / |.|.
    n = shapes.sdf_normals("pyramid", torch.tensor([[0.25, 0.0, -0.05]], dtype=torch.float64))
    expected = torch.tensor([[0.9, 0.0, 0.45]], dtype=torch.float64) / math.hypot(0.9, 0.45)
    assert torch.allclose(n, expected, atol=1e-6)


def test_bad_input_raises():
    with pytest.raises(ValueError, match="unknown shape"):
        shapes.sdf("blob", torch.zeros(1, 3))
    with pytest.raises(ValueError, match=r"\(N, 3\)"):
        shapes.occupancy("cube", torch.zeros(3))


def test_sdf_lattice_is_the_sdf_at_the_grid_nodes_in_z_y_x_order():
    lat = shapes.sdf_lattice("cube", 9, 1.0)  # nodes at -1, -0.75, ..., 1
    assert lat.shape == (9, 9, 9) and lat.dtype == torch.float32
    assert lat[4, 4, 4].item() == pytest.approx(-0.4)  # the centre: 0.4 inside every face
    assert lat[4, 4, 8].item() == pytest.approx(0.6)  # (x, y, z) = (1, 0, 0): layout (z, y, x)
    assert lat[8, 4, 4].item() == pytest.approx(0.6) and lat[4, 8, 4].item() == pytest.approx(0.6)
    assert lat[8, 8, 8].item() == pytest.approx(math.sqrt(3) * 0.6, rel=1e-6)  # the corner's distance
    tor = shapes.sdf_lattice("torus", 9, 1.0)
    assert tor[4, 4, 4].item() == pytest.approx(0.35 - 0.15)  # the hole's centre, outside
