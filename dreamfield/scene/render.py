"""Differentiable volume rendering of a field seen by a batch of cameras.

Notation (per ray r(t) = o + t d, samples i = 1..S on intervals [t_i, t_i + delta_i]):

    alpha_i = 1 - exp(-sigma_i delta_i)
    T_i     = exp(-sum_{j<i} sigma_j delta_j)                     (transmittance)
    w_i     = T_i alpha_i                                          (Max 1995; NeRF, Mildenhall et al. 2020, Eq. 3)
    C       = sum_i w_i c_i + (1 - sum_i w_i) c_bg                 (c_i = shaded sample colour)

Two sampling paths render the same image:

- dense (any device; the CPU path): S = cfg.n_samples equal intervals between the ray's entry and
  exit of the scene box (slab test), the sample placed uniformly at random in its interval
  (stratified, training) or at its midpoint (deterministic). Weights from nerfacc's dense
  ``render_weight_from_density`` on (n_rays, S) tensors. An ``occupancy`` grid, if given on CPU,
  skips the field at samples in empty cells.
- packed (CUDA with an ``occupancy`` grid): nerfacc's ``OccGridEstimator.sampling`` marches with
  step cfg.render_step_size through occupied cells only, culling samples behind opaque ones
  (transmittance < cfg.early_stop_eps); weights and sums through nerfacc's packed functions.

Both agree up to quadrature error: tests/test_scene_render.py asserts max |rgb difference| < 0.03
and mean < 0.003 on CUDA for a smooth blob field (dense 1024 samples vs packed step 0.002); an H100
measured max 2e-4, mean 1e-5, with 433k packed samples against 8.05M dense ones.

The renderer reads two optional attributes of the field: ``bound`` (the scene box is
[-bound, bound]^3; 1.0 without it) and ``bounding_radius`` (density is zero outside that sphere, so
the dense path skips those samples; 0 or absent = no skipping).
"""

from __future__ import annotations

from dataclasses import dataclass

import nerfacc
import torch
from torch import nn

from dreamfield.config import RenderConfig
from dreamfield.scene.cameras import Cameras, get_rays
from dreamfield.scene.occupancy import OccupancyGrid
from dreamfield.scene.shading import check_shading, choose_shading, shade

Tensor = torch.Tensor

__all__ = ["RenderOut", "render", "render_rays", "choose_shading", "ray_box", "compute_weights"]


@dataclass(frozen=True)
class RenderOut:
    """What one render returns. Images are (B, C, H, W); ``orientation`` is a scalar.

    rgb:         (B, 3, H, W) shaded colour over the background, in [0, 1]
    opacity:     (B, 1, H, W) accumulated weight sum_i w_i (the opacity/entropy regularisers read it)
    depth:       (B, 1, H, W) expected ray distance sum_i w_i t_i / max(opacity, eps); 0 where empty
    normal:      (B, 3, H, W) composited world-space normals sum_i w_i n_i (not renormalised; 0 on background)
    albedo:      (B, 3, H, W) composited albedo sum_i w_i rho_i (no background)
    orientation: () DreamFusion's orientation penalty (Poole et al. 2022, App. A.2, Eq. 3),
                 sum_i stop_grad(w_i) max(0, n_i . d)^2 per ray, averaged over all B H W rays
    shading:     the shading used
    n_samples:   how many samples the field was evaluated at (a cost measure)
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor
    albedo: Tensor
    orientation: Tensor
    shading: str
    n_samples: int


def ray_box(origins: Tensor, directions: Tensor, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """Slab test against the box [-bound, bound]^3.

    origins, directions: (N, 3). Returns t_near (N,) >= 0, t_far (N,) and hit (N,) bool; for a ray
    that misses, t_near = t_far.
    """
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    inv = 1.0 / safe
    t0 = (-bound - origins) * inv
    t1 = (bound - origins) * inv
    t_near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    t_far = torch.maximum(t0, t1).amin(dim=-1)
    hit = t_far > t_near
    t_far = torch.where(hit, t_far, t_near)
    return t_near, t_far, hit


def compute_weights(t_starts: Tensor, t_ends: Tensor, sigmas: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Dense compositing weights (n_rays, S) -> (weights w_i, transmittance T_i, alpha_i), each (n_rays, S).

    nerfacc.render_weight_from_density on batched inputs (pure torch: runs on CPU, differentiable).
    """
    return nerfacc.render_weight_from_density(t_starts, t_ends, sigmas)


def _light_dirs(x: Tensor, light: Tensor) -> Tensor:
    return torch.nn.functional.normalize(light - x, dim=-1)


def _field_at(field: nn.Module, x: Tensor, keep: Tensor | None) -> tuple[Tensor, Tensor]:
    """field(x) at x (N, 3), evaluated only where keep (N,) is True (zeros elsewhere)."""
    if keep is None:
        return field(x)
    idx = keep.nonzero().squeeze(1)  # index_select/index_copy: much faster than boolean masks on CPU
    if idx.numel() == 0:
        return x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0], 3)
    s, a = field(x.index_select(0, idx))
    sigma = x.new_zeros(x.shape[0]).index_copy(0, idx, s)
    albedo = x.new_zeros(x.shape[0], 3).index_copy(0, idx, a)
    return sigma, albedo


def _normals_at(field: nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """field.normals at x (N, 3) where keep (N,) is True, zeros elsewhere."""
    idx = keep.nonzero().squeeze(1)
    normals = x.new_zeros(x.shape[0], 3)
    if idx.numel() > 0:
        normals = normals.index_copy(0, idx, field.normals(x.index_select(0, idx)))
    return normals


def _render_dense(
    field: nn.Module,
    o: Tensor,
    d: Tensor,
    light: Tensor,
    cfg: RenderConfig,
    bound: float,
    radius: float,
    shading: str,
    occupancy: OccupancyGrid | None,
    stratified: bool,
    generator: torch.Generator | None,
) -> dict[str, Tensor]:
    """Rays o, d, light (N, 3) -> per-ray results; see render_rays."""
    n, s = o.shape[0], cfg.n_samples
    t_near, t_far, _ = ray_box(o, d, bound)
    steps = torch.linspace(0.0, 1.0, s + 1, device=o.device, dtype=o.dtype)
    edges = t_near[:, None] + (t_far - t_near)[:, None] * steps  # (N, S + 1)
    t_starts, t_ends = edges[:, :-1], edges[:, 1:]
    if stratified:
        gdev = generator.device if generator is not None else o.device
        u = torch.rand(n, s, generator=generator, device=gdev, dtype=o.dtype).to(o.device)
    else:
        u = torch.full((n, s), 0.5, device=o.device, dtype=o.dtype)
    t = t_starts + u * (t_ends - t_starts)  # (N, S) sample positions
    x = (o[:, None, :] + t[..., None] * d[:, None, :]).reshape(-1, 3)  # (N S, 3)
    keep = occupancy.occupied(x) if occupancy is not None else None
    if radius > 0:  # the field is zero outside its bounding sphere: skip those samples
        inside = (x * x).sum(dim=-1) < radius * radius
        keep = inside if keep is None else keep & inside

    sigma, albedo = _field_at(field, x, keep)  # (N S,), (N S, 3)
    weights, _, _ = compute_weights(t_starts, t_ends, sigma.reshape(n, s))  # (N, S)
    w_flat = weights.reshape(-1)
    need = w_flat.detach() > cfg.normal_weight_threshold
    normals = _normals_at(field, x, need)  # (N S, 3)
    dirs = d[:, None, :].expand(n, s, 3).reshape(-1, 3)
    lights = None if shading == "albedo" else _light_dirs(x, light[:, None, :].expand(n, s, 3).reshape(-1, 3))
    color = shade(albedo, normals, lights, shading, cfg.ambient, cfg.diffuse)
    orient = weights.detach() * ((normals * dirs).sum(-1).clamp(min=0.0) ** 2).reshape(n, s)

    acc = nerfacc.accumulate_along_rays  # sum_i w_i v_i over (N, S) samples
    opacity = weights.sum(dim=-1, keepdim=True)  # (N, 1)
    depth = (weights * t).sum(dim=-1, keepdim=True) / opacity.clamp(min=1e-10)
    return {
        "color": acc(weights, color.reshape(n, s, 3)),
        "albedo": acc(weights, albedo.reshape(n, s, 3)),
        "normal": acc(weights, normals.reshape(n, s, 3)),
        "opacity": opacity,
        "depth": depth,
        "orientation": orient.sum(-1),
        "n_samples": torch.tensor(int(keep.sum()) if keep is not None else n * s),
    }


def _render_packed(
    field: nn.Module,
    o: Tensor,
    d: Tensor,
    light: Tensor,
    cfg: RenderConfig,
    bound: float,
    shading: str,
    occupancy: OccupancyGrid,
    stratified: bool,
) -> dict[str, Tensor]:
    """CUDA path: nerfacc occupancy-grid marching and packed compositing; per-ray results."""
    n = o.shape[0]
    t_near, t_far, _ = ray_box(o, d, bound)

    def sigma_fn(t_starts: Tensor, t_ends: Tensor, ray_indices: Tensor) -> Tensor:
        pts = o[ray_indices] + d[ray_indices] * ((t_starts + t_ends) / 2.0)[:, None]
        return field.density(pts)

    ray_indices, t_starts, t_ends = occupancy.estimator.sampling(
        o,
        d,
        sigma_fn=sigma_fn,
        t_min=t_near,
        t_max=t_far,
        render_step_size=cfg.render_step_size,
        early_stop_eps=cfg.early_stop_eps,
        alpha_thre=0.0,
        stratified=stratified,
    )
    t_mid = (t_starts + t_ends) / 2.0  # (M,)
    x = o[ray_indices] + d[ray_indices] * t_mid[:, None]  # (M, 3)
    if x.shape[0] > 0:
        sigma, albedo = field(x)
    else:
        sigma, albedo = x.new_zeros(0), x.new_zeros(0, 3)
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_ends, sigma, ray_indices=ray_indices, n_rays=n)
    need = weights.detach() > cfg.normal_weight_threshold
    normals = _normals_at(field, x, need)
    dirs = d[ray_indices]
    lights = None if shading == "albedo" else _light_dirs(x, light[ray_indices])
    color = shade(albedo, normals, lights, shading, cfg.ambient, cfg.diffuse)
    orient_w = weights.detach() * (normals * dirs).sum(-1).clamp(min=0.0) ** 2

    acc = nerfacc.accumulate_along_rays
    summed = acc(weights, torch.cat([color, albedo, normals], dim=-1), ray_indices=ray_indices, n_rays=n)
    opacity = acc(weights, None, ray_indices=ray_indices, n_rays=n)
    depth = acc(weights, t_mid[:, None], ray_indices=ray_indices, n_rays=n) / opacity.clamp(min=1e-10)
    orient = acc(orient_w, None, ray_indices=ray_indices, n_rays=n)[:, 0]
    return {
        "color": summed[:, 0:3],
        "albedo": summed[:, 3:6],
        "normal": summed[:, 6:9],
        "opacity": opacity,
        "depth": depth,
        "orientation": orient,
        "n_samples": torch.tensor(int(x.shape[0])),
    }


def render_rays(
    field: nn.Module,
    origins: Tensor,
    directions: Tensor,
    light_pos: Tensor,
    cfg: RenderConfig,
    background: nn.Module,
    shading: str = "lambertian",
    occupancy: OccupancyGrid | None = None,
    *,
    stratified: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Render flat rays origins, directions (unit), light_pos: (N, 3), chunked over cfg.chunk rays.

    Returns per-ray tensors: rgb (N, 3) over the background, albedo (N, 3), normal (N, 3),
    opacity (N, 1), depth (N, 1), orientation (N,) (per-ray penalty), n_samples (scalar).
    """
    check_shading(shading)
    bound = float(getattr(field, "bound", 1.0))
    radius = float(getattr(field, "bounding_radius", 0.0))
    packed = occupancy is not None and origins.is_cuda
    parts = []
    for start in range(0, origins.shape[0], max(cfg.chunk, 1)):
        sl = slice(start, start + max(cfg.chunk, 1))
        o, d, lp = origins[sl], directions[sl], light_pos[sl]
        if packed:
            assert occupancy is not None
            parts.append(_render_packed(field, o, d, lp, cfg, bound, shading, occupancy, stratified))
        else:
            parts.append(_render_dense(field, o, d, lp, cfg, bound, radius, shading, occupancy, stratified, generator))
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0] if k != "n_samples"}
    out["n_samples"] = sum(p["n_samples"] for p in parts)
    out["rgb"] = out.pop("color") + (1.0 - out["opacity"]) * background(directions)
    return out


def render(
    field: nn.Module,
    cams: Cameras,
    H: int,
    W: int,
    cfg: RenderConfig,
    background: nn.Module,
    shading: str = "lambertian",
    occupancy: OccupancyGrid | None = None,
    *,
    stratified: bool | None = None,
    generator: torch.Generator | None = None,
) -> RenderOut:
    """Render B cameras at H x W.

    field: any module with field(x (N, 3)) -> (sigma (N,), albedo (N, 3)), .density(x) and .normals(x);
        the scene box is [-field.bound, field.bound]^3 (bound 1.0 if the field has no ``bound``), and
        samples outside field.bounding_radius (if it has one, > 0) are skipped.
    shading: "albedo", "lambertian" or "textureless" (see shading.py); the light is cams.light_pos.
    occupancy: an OccupancyGrid; on CUDA it switches to nerfacc's packed marching, on CPU it skips
        the field in empty cells of the dense samples.
    stratified: jitter samples inside their intervals (training) or take midpoints (deterministic);
        None = jitter when grad mode is on, midpoints under torch.no_grad (previews, videos).
    generator: random numbers of the dense path's jitter (the packed path uses torch's global RNG).
    """
    if stratified is None:
        stratified = torch.is_grad_enabled()
    b = len(cams)
    origins, directions = get_rays(cams, H, W)  # (B, H, W, 3)
    light = cams.light_pos[:, None, None, :].expand_as(origins)
    flat = render_rays(
        field,
        origins.reshape(-1, 3),
        directions.reshape(-1, 3),
        light.reshape(-1, 3),
        cfg,
        background,
        shading,
        occupancy,
        stratified=stratified,
        generator=generator,
    )

    def image(v: Tensor) -> Tensor:  # (B H W, C) -> (B, C, H, W)
        return v.reshape(b, H, W, -1).permute(0, 3, 1, 2).contiguous()

    return RenderOut(
        rgb=image(flat["rgb"]),
        opacity=image(flat["opacity"]),
        depth=image(flat["depth"]),
        normal=image(flat["normal"]),
        albedo=image(flat["albedo"]),
        orientation=flat["orientation"].mean(),
        shading=shading,
        n_samples=int(flat["n_samples"]),
    )
