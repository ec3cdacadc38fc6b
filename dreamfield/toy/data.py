"""Ground-truth renders of the toy world (TOY_DOMAIN.md "Images"), by analytic sphere tracing in torch.

A render is 64x64 RGB on white: Lambertian albedo * (ambient 0.35 + diffuse 0.65 * max(0, n.l)) with the
light near the camera, clamped to [0, 1], anti-aliased by 2x2 supersampling.

Geometry and colour are separated: since every pixel of a sub-sample is either background (white) or
``albedo * shade``, the 2x2 average is ``albedo * A + (1 - C)`` with ``A`` = mean(hit * shade) and
``C`` = mean(hit). So :func:`render_geometry` traces each (shape, camera) once into the two maps (A, C),
and :func:`colourise` turns them into an image of any colour. This makes the data 6x cheaper.

Cameras follow the project's conventions (z up, azimuth 0 on +x, elevation up from the xy-plane,
OpenGL camera looking down its -z with +y up), drawn from ``CameraConfig``'s defaults, the same
distribution ``dreamfield generate`` trains with.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from dreamfield.config import CameraConfig
from dreamfield.toy import shapes as shp
from dreamfield.toy.domain import COLOURS, COLOUR_NAMES, SHAPES, caption

AMBIENT, DIFFUSE = 0.35, 0.65


@dataclass(frozen=True)
class Views:
    """A batch of cameras. All tensors (B,) except ``c2w`` (B, 4, 4) and ``light`` (B, 3)."""

    azimuth: torch.Tensor  # degrees, (-180, 180]
    elevation: torch.Tensor  # degrees
    distance: torch.Tensor
    fov: torch.Tensor  # vertical field of view, degrees
    c2w: torch.Tensor  # camera-to-world, OpenGL convention
    light: torch.Tensor  # light position, world


def look_at(azimuth: torch.Tensor, elevation: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Camera-to-world matrices (B, 4, 4) of cameras on a sphere looking at the origin, world z up.

    The camera's -z axis points at the origin, +x to the right, +y up (OpenGL).
    """
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    pos = torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1) * distance[:, None]
    back = torch.nn.functional.normalize(pos, dim=-1)  # camera +z
    world_up = torch.zeros_like(pos)
    world_up[:, 2] = 1.0
    right = torch.nn.functional.normalize(torch.cross(world_up, back, dim=-1), dim=-1)
    up = torch.cross(back, right, dim=-1)
    c2w = torch.zeros(pos.shape[0], 4, 4, dtype=pos.dtype, device=pos.device)
    c2w[:, :3, 0], c2w[:, :3, 1], c2w[:, :3, 2], c2w[:, :3, 3] = right, up, back, pos
    c2w[:, 3, 3] = 1.0
    return c2w


def get_rays(c2w: torch.Tensor, fov_deg: torch.Tensor, H: int, W: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixel-centre rays: origins (B, H, W, 3) and unit directions (B, H, W, 3); row 0 is the top."""
    dev, dt = c2w.device, c2w.dtype
    focal = 0.5 * H / torch.tan(torch.deg2rad(fov_deg) / 2)  # (B,)
    j = torch.arange(W, device=dev, dtype=dt) + 0.5 - W / 2
    i = torch.arange(H, device=dev, dtype=dt) + 0.5 - H / 2
    ii, jj = torch.meshgrid(i, j, indexing="ij")  # (H, W)
    d_cam = torch.stack(
        [jj[None] / focal[:, None, None], -ii[None] / focal[:, None, None], -torch.ones_like(ii)[None].expand(len(focal), H, W)],
        dim=-1,
    )  # (B, H, W, 3)
    dirs = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], d_cam)
    dirs = torch.nn.functional.normalize(dirs, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(dirs)
    return origins, dirs


def sample_views(
    n: int, generator: torch.Generator, cfg: Optional[CameraConfig] = None, device: torch.device | str = "cpu"
) -> Views:
    """Random cameras per the contract: distance U[1.6, 2], elevation U[-10, 60] with a share of
    overhead views U[60, 85], azimuth uniform, fov U[40, 50]; light = camera + N(0, jitter^2)."""
    cfg = cfg or CameraConfig()

    def uni(lo_hi: Sequence[float]) -> torch.Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    distance, fov = uni(cfg.distance), uni(cfg.fov)
    azimuth = uni(cfg.azimuth)
    elevation = uni(cfg.elevation)
    overhead = torch.rand(n, generator=generator) < cfg.overhead_prob
    elevation = torch.where(overhead, uni((cfg.elevation[1], cfg.overhead_max)), elevation)
    jitter = torch.randn(n, 3, generator=generator) * cfg.light_jitter
    azimuth, elevation, distance, fov, jitter = (v.to(device) for v in (azimuth, elevation, distance, fov, jitter))
    c2w = look_at(azimuth, elevation, distance)
    return Views(azimuth, elevation, distance, fov, c2w, c2w[:, :3, 3] + jitter)


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
def render_geometry(shape: str, views: Views, size: int = 64, supersample: int = 2, chunk: int = 64) -> torch.Tensor:
    """Colour-free render of ``shape``: (B, 2, size, size) maps A = mean(hit * shade), C = mean(hit)
    over each pixel's supersample x supersample sub-pixels (see module doc). Same device as ``views``."""
    out = []
    S = size * supersample
    for i in range(0, len(views.fov), chunk):
        sl = slice(i, i + chunk)
        o, d = get_rays(views.c2w[sl], views.fov[sl], S, S)  # (b, S, S, 3)
        b = o.shape[0]
        hit, x = sphere_trace(shape, o.reshape(-1, 3), d.reshape(-1, 3))
        shade = torch.zeros(hit.shape, dtype=o.dtype, device=o.device)
        if hit.any():
            xh = x[hit]
            n = shp.sdf_normals(shape, xh)
            light = views.light[sl][:, None, None, :].expand(b, S, S, 3).reshape(-1, 3)[hit]
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
        maps.append(render_geometry(shape, v, size=size, chunk=256 if str(device).startswith("cuda") else 32))
        az.append(v.azimuth)
        el.append(v.elevation)
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

    Returns images (N, 3, H, W), colour (N,), shape (N,), azimuth (N,), elevation (N,) with N = P * views.
    """
    g = torch.Generator().manual_seed(seed)
    imgs, cols, shs, azs, els = [], [], [], [], []
    table = colour_table(device)
    for c, s in pairs:
        v = sample_views(views_per_pair, g, device=device)
        geo = render_geometry(s, v, size=size)
        ci = COLOUR_NAMES.index(c)
        imgs.append(colourise(geo, table[ci].expand(views_per_pair, 3)))
        cols.append(torch.full((views_per_pair,), ci, dtype=torch.long))
        shs.append(torch.full((views_per_pair,), SHAPES.index(s), dtype=torch.long))
        azs.append(v.azimuth.cpu())
        els.append(v.elevation.cpu())
    return dict(
        images=torch.cat(imgs),
        colour=torch.cat(cols),
        shape=torch.cat(shs),
        azimuth=torch.cat(azs),
        elevation=torch.cat(els),
    )

