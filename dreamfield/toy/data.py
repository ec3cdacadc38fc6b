"""Ground-truth renders of the toy world (TOY_DOMAIN.md "Images"), by analytic sphere tracing in torch.

A render is 64x64 RGB on white: Lambertian albedo * (ambient 0.35 + diffuse 0.65 * max(0, n.l)) with the
light near the camera, clamped to [0, 1], anti-aliased by 2x2 supersampling.

Geometry and colour are separated: since every pixel of a sub-sample is either background (white) or
``albedo * shade``, the 2x2 average is ``albedo * A + (1 - C)`` with ``A`` = mean(hit * shade) and
``C`` = mean(hit). So :func:`render_geometry` traces each (shape, camera) once into the two maps (A, C),
and :func:`colourise` turns them into an image of any colour. This makes the data 6x cheaper.

Cameras are the project's own (``dreamfield.scene.cameras``: z up, azimuth 0 on +x, OpenGL camera),
drawn from ``CameraConfig``'s defaults, the same distribution ``dreamfield generate`` trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from dreamfield.config import CameraConfig
from dreamfield.scene.cameras import Cameras, get_rays, sample_cameras
from dreamfield.toy import shapes as shp
from dreamfield.toy.domain import COLOURS, COLOUR_NAMES, SHAPES, caption

AMBIENT, DIFFUSE = 0.35, 0.65


def sample_views(
    n: int, generator: torch.Generator, cfg: Optional[CameraConfig] = None, device: torch.device | str = "cpu"
) -> Cameras:
    """Random cameras per the contract: distance U[1.6, 2], elevation U[-10, 60] with a share of
    overhead views U[60, 85], azimuth uniform, fov U[40, 50]; light = camera + N(0, jitter^2).
    These are ``CameraConfig``'s defaults, drawn by the same sampler ``dreamfield generate`` uses."""
    return sample_cameras(cfg or CameraConfig(), n, generator, device)


def sphere_trace(
    shape: str, origins: torch.Tensor, dirs: torch.Tensor, max_iters: int = 96, hit_eps: float = 1e-4
) -> tuple[torch.Tensor, torch.Tensor]:
    """First hit of rays with a primitive. origins, dirs (N, 3) -> (hit bool (N,), points (N, 3)).

    Rays start where they enter the bounding sphere; only rays still marching are evaluated each
    iteration (the naive loop over all rays was ~90x slower in the prototype).
    """
    R = shp.BOUNDING_RADIUS
    b = (origins * dirs).sum(-1)
    c = (origins * origins).sum(-1) - R * R
    disc = b * b - c
    enters = disc > 0
    sq = disc.clamp_min(0).sqrt()
    t = (-b - sq).clamp_min(0)
    t_far = -b + sq
    hit = torch.zeros_like(enters)
    active = torch.nonzero(enters).squeeze(-1)
    for _ in range(max_iters):
        if active.numel() == 0:
            break
        p = origins[active] + t[active, None] * dirs[active]
        d = shp.sdf(shape, p)
        done = d < hit_eps
        hit[active[done]] = True
        t[active] = t[active] + torch.where(done, torch.zeros_like(d), d)
        escaped = t[active] > t_far[active]
        active = active[~done & ~escaped]
    # Rays that ran out of iterations while grazing the surface count as hits if they are that close.
    if active.numel() > 0:
        p = origins[active] + t[active, None] * dirs[active]
        hit[active] = shp.sdf(shape, p) < 2 * hit_eps
    return hit, origins + t[:, None] * dirs


@torch.no_grad()
def render_geometry(shape: str, views: Cameras, size: int = 64, supersample: int = 2, chunk: int = 64) -> torch.Tensor:
    """Colour-free render of ``shape``: (B, 2, size, size) maps A = mean(hit * shade), C = mean(hit)
    over each pixel's supersample x supersample sub-pixels (see module doc). Same device as ``views``."""
    out = []
    S = size * supersample
    for i in range(0, len(views), chunk):
        sl = slice(i, i + chunk)
        o, d = get_rays(views[sl], S, S)  # (b, S, S, 3)
        b = o.shape[0]
        hit, x = sphere_trace(shape, o.reshape(-1, 3), d.reshape(-1, 3))
        shade = torch.zeros(hit.shape, dtype=o.dtype, device=o.device)
        if hit.any():
            xh = x[hit]
            n = shp.sdf_normals(shape, xh)
            light = views.light_pos[sl][:, None, None, :].expand(b, S, S, 3).reshape(-1, 3)[hit]
            l_dir = torch.nn.functional.normalize(light - xh, dim=-1)
            shade[hit] = AMBIENT + DIFFUSE * (n * l_dir).sum(-1).clamp_min(0)
        hitf = hit.to(o.dtype).reshape(b, 1, S, S)
        maps = torch.cat([shade.reshape(b, 1, S, S), hitf], dim=1)
        out.append(torch.nn.functional.avg_pool2d(maps, supersample))
    return torch.cat(out)


def colour_table(device: torch.device | str = "cpu") -> torch.Tensor:
    """(6, 3) albedos in COLOUR_NAMES order."""
    return torch.tensor([COLOURS[c] for c in COLOUR_NAMES], device=device)


def colourise(geometry: torch.Tensor, albedo: torch.Tensor) -> torch.Tensor:
    """geometry (B, 2, H, W) maps (A, C), albedo (B, 3) -> rgb (B, 3, H, W) in [0, 1] on white."""
    A, C = geometry[:, :1], geometry[:, 1:]
    return (albedo[:, :, None, None] * A + (1.0 - C)).clamp(0.0, 1.0)


@dataclass(frozen=True)
class GeometryBank:
    """Colour-free renders of every shape: maps (S, V, 2, H, W) and the cameras' azimuth/elevation (S, V)."""

    maps: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor


def make_geometry_bank(
    views_per_shape: int, seed: int, size: int = 64, device: torch.device | str = "cpu", progress: bool = False
) -> GeometryBank:
    """Render ``views_per_shape`` random views of each of the six shapes (fresh cameras per shape)."""
    g = torch.Generator().manual_seed(seed)
    maps, az, el = [], [], []
    it = SHAPES
    if progress:
        from tqdm import tqdm

        it = tqdm(SHAPES, desc="render", unit="shape")
    for shape in it:
        v = sample_views(views_per_shape, g, device=device)
        maps.append(render_geometry(shape, v, size=size, chunk=500 if str(device).startswith("cuda") else 32))
        az.append(v.azimuth_deg)
        el.append(v.elevation_deg)
    return GeometryBank(torch.stack(maps), torch.stack(az), torch.stack(el))


def draw_batch(
    bank: GeometryBank, pairs: torch.Tensor, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A random batch from the bank restricted to ``pairs`` (P, 2) of (colour idx, shape idx).

    Returns rgb (n, 3, H, W), colour idx (n,), shape idx (n,), view idx (n,) (index into the bank's views).
    The generator must live on the bank's device.
    """
    dev = bank.maps.device
    which = torch.randint(0, pairs.shape[0], (n,), generator=generator, device=dev)
    colour, shape = pairs[which, 0], pairs[which, 1]
    view = torch.randint(0, bank.maps.shape[1], (n,), generator=generator, device=dev)
    geo = bank.maps[shape, view].float()
    rgb = colourise(geo, colour_table(dev)[colour])
    return rgb, colour, shape, view


def captions_for(colour: torch.Tensor, shape: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor) -> list[str]:
    """View-suffixed captions ("a red cube, side view") for index tensors (n,) and angles (n,)."""
    return [
        caption(COLOUR_NAMES[c], SHAPES[s], a, e)
        for c, s, a, e in zip(colour.tolist(), shape.tolist(), azimuth.tolist(), elevation.tolist())
    ]


def pairs_tensor(pairs: Sequence[tuple[str, str]], device: torch.device | str = "cpu") -> torch.Tensor:
    """(colour, shape) names -> (P, 2) long tensor of (colour idx, shape idx)."""
    return torch.tensor([(COLOUR_NAMES.index(c), SHAPES.index(s)) for c, s in pairs], dtype=torch.long, device=device)


def render_pairs(
    pairs: Sequence[tuple[str, str]], views_per_pair: int, seed: int, size: int = 64, device: torch.device | str = "cpu"
) -> dict[str, torch.Tensor]:
    """Fresh renders (each image its own camera) for a list of pairs, for tests and evaluation.

    Returns images (N, 3, H, W), colour (N,), shape (N,), azimuth (N,), elevation (N,) with N = P * views,
    in the order of ``pairs`` (pair-major). The pairs of one shape are traced in one batch.
    """
    g = torch.Generator().manual_seed(seed)
    n = views_per_pair
    views = sample_views(len(pairs) * n, g, device=device)
    shape_idx = torch.tensor([SHAPES.index(s) for _, s in pairs]).repeat_interleave(n)
    colour_idx = torch.tensor([COLOUR_NAMES.index(c) for c, _ in pairs]).repeat_interleave(n)
    geo = torch.empty(len(shape_idx), 2, size, size, device=device)
    for k, shape in enumerate(SHAPES):
        sel = torch.nonzero(shape_idx == k).squeeze(1)
        if sel.numel():
            geo[sel.to(device)] = render_geometry(shape, views[sel.to(device)], size=size).to(geo.dtype)
    images = colourise(geo, colour_table(device)[colour_idx.to(device)])
    return dict(
        images=images,
        colour=colour_idx,
        shape=shape_idx,
        azimuth=views.azimuth_deg.cpu(),
        elevation=views.elevation_deg.cpu(),
    )
