"""The six toy primitives (TOY_DOMAIN.md), z up, centred at the origin: occupancy and signed distance.

``occupancy`` is written straight from the contract's table (the ground truth for measures);
``sdf`` is a signed distance for sphere tracing and normals (negative inside). It is exact for every
shape except the pyramid, where it is the largest signed distance to the five face planes: exact
inside and on the faces, a lower bound outside near edges, which is all sphere tracing needs.
Both take ``points`` (N, 3) as a torch tensor (or anything ``torch.as_tensor`` accepts).
"""

from __future__ import annotations

import math

import torch

from dreamfield.toy.domain import SHAPES

SPHERE_RADIUS = 0.5
CUBE_HALF = 0.4
CYLINDER_RADIUS, HALF_HEIGHT = 0.4, 0.45  # cylinder, cone and pyramid span z in [-0.45, 0.45]
CONE_RADIUS = 0.5
TORUS_MAJOR, TORUS_MINOR = 0.35, 0.15
PYRAMID_HALF = 0.45  # half the base side

# Closed-form volumes, for tests and sanity checks.
VOLUMES: dict[str, float] = {
    "sphere": 4.0 / 3.0 * math.pi * SPHERE_RADIUS**3,
    "cube": (2 * CUBE_HALF) ** 3,
    "cylinder": math.pi * CYLINDER_RADIUS**2 * 2 * HALF_HEIGHT,
    "cone": math.pi * CONE_RADIUS**2 * 2 * HALF_HEIGHT / 3.0,
    "torus": 2.0 * math.pi**2 * TORUS_MAJOR * TORUS_MINOR**2,
    "pyramid": (2 * PYRAMID_HALF) ** 2 * 2 * HALF_HEIGHT / 3.0,
}

# Radius of a sphere that holds every shape (the pyramid's base corners are the farthest, at 0.78).
BOUNDING_RADIUS = 0.8


def _check(shape: str, points) -> torch.Tensor:
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    p = torch.as_tensor(points)
    if not p.is_floating_point():
        p = p.float()
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"points must have shape (N, 3), got {tuple(p.shape)}")
    return p


def occupancy(shape: str, points) -> torch.Tensor:
    """Inside test straight from the definition table. points (N, 3) -> bool (N,)."""
    p = _check(shape, points)
    x, y, z = p.unbind(-1)
    if shape == "sphere":
        return x * x + y * y + z * z <= SPHERE_RADIUS**2
    if shape == "cube":
        return p.abs().amax(-1) <= CUBE_HALF
    r = torch.sqrt(x * x + y * y)
    in_slab = z.abs() <= HALF_HEIGHT
    if shape == "cylinder":
        return in_slab & (r <= CYLINDER_RADIUS)
    # Height above the base as a share of the full height: 0 at the base, 1 at the apex.
    up = (z + HALF_HEIGHT) / (2 * HALF_HEIGHT)
    if shape == "cone":
        return in_slab & (r <= CONE_RADIUS * (1.0 - up))
    if shape == "pyramid":
        return in_slab & (torch.maximum(x.abs(), y.abs()) <= PYRAMID_HALF * (1.0 - up))
    # torus
    return (r - TORUS_MAJOR) ** 2 + z * z <= TORUS_MINOR**2


def _box2(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Signed distance to a 2D quadrant corner given per-axis signed offsets u, v (both (N,))."""
    outside = torch.sqrt(u.clamp_min(0) ** 2 + v.clamp_min(0) ** 2)
    inside = torch.maximum(u, v).clamp_max(0)
    return outside + inside


def _segment_dist(q: torch.Tensor, a: tuple[float, float], b: tuple[float, float]) -> torch.Tensor:
    """Distance from 2D points q (N, 2) to the segment a-b."""
    a_t = q.new_tensor(a)
    ab = q.new_tensor(b) - a_t
    h = (((q - a_t) @ ab) / (ab @ ab)).clamp(0.0, 1.0)
    return (q - a_t - h[:, None] * ab).norm(dim=-1)


def sdf(shape: str, points) -> torch.Tensor:
    """Signed distance (negative inside). points (N, 3) -> (N,). Exact except the pyramid (see module doc)."""
    p = _check(shape, points)
    x, y, z = p.unbind(-1)
    if shape == "sphere":
        return p.norm(dim=-1) - SPHERE_RADIUS
    if shape == "cube":
        d = p.abs() - CUBE_HALF  # (N, 3)
        return d.clamp_min(0).norm(dim=-1) + d.amax(-1).clamp_max(0)
    r = torch.sqrt(x * x + y * y)
    if shape == "cylinder":
        return _box2(r - CYLINDER_RADIUS, z.abs() - HALF_HEIGHT)
    if shape == "torus":
        return torch.sqrt((r - TORUS_MAJOR) ** 2 + z * z) - TORUS_MINOR
    if shape == "cone":
        # A solid of revolution whose meridian section touches the axis: the distance is the 2D distance
        # in the (r, z) half-plane to the right triangle (0,-h), (R,-h), (0,h).
        q = torch.stack([r, z], dim=-1)
        h, R = HALF_HEIGHT, CONE_RADIUS
        d_base = _segment_dist(q, (0.0, -h), (R, -h))
        d_slant = _segment_dist(q, (R, -h), (0.0, h))
        dist = torch.minimum(d_base, d_slant)  # the axis edge is interior to the solid, never nearest
        inside = occupancy("cone", p)
        return torch.where(inside, -dist, dist)
    # pyramid: largest signed distance to the base plane and the four slanted face planes.
    h, a = HALF_HEIGHT, PYRAMID_HALF
    # A slanted face passes through (a, *, -h) and the apex (0, 0, h): unit normal (2h, 0, a) / |(2h, a)|.
    n = math.hypot(2 * h, a)
    slant = (2 * h * torch.maximum(x.abs(), y.abs()) + a * z - a * h) / n
    return torch.maximum(slant, -z - h)


def sdf_lattice(shape: str, resolution: int, bound: float) -> torch.Tensor:
    """``sdf`` at the nodes of a voxel lattice with corners at +-bound, laid out (z, y, x) like the scene's
    grids -> (R, R, R) float32."""
    axis = torch.linspace(-bound, bound, resolution, dtype=torch.float64)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return sdf(shape, torch.stack([x, y, z], dim=-1).reshape(-1, 3)).reshape((resolution,) * 3).float()


def sdf_normals(shape: str, points, eps: float = 1e-4) -> torch.Tensor:
    """Unit outward normals from central differences of ``sdf``. points (N, 3) -> (N, 3)."""
    p = _check(shape, points)
    offsets = torch.eye(3, dtype=p.dtype, device=p.device) * eps
    grad = torch.stack([sdf(shape, p + offsets[i]) - sdf(shape, p - offsets[i]) for i in range(3)], dim=-1)
    return torch.nn.functional.normalize(grad, dim=-1)
