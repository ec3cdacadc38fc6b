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
  (transmittance < cfg.early_stop_eps); weights from nerfacc's packed ``render_weight_from_density``.

Both agree up to quadrature error (tests/test_scene_render.py; the measured gap is in docs/RESULTS.md).

Both paths sample, weight their samples and hand them to one function, :func:`composite`, which
shades, composites and computes the orientation penalty (per-ray sums over a dense (rays, S) layout
or packed ray indices). The scene box and the field's bounding sphere are arguments (``bound``,
``radius``), not read off the field.
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

__all__ = ["RenderOut", "Samples", "composite", "render", "render_rays", "choose_shading", "ray_box", "compute_weights"]


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
    n_samples:   () tensor: how many samples the field was evaluated at (a cost measure; int() it when needed)
    """

    rgb: Tensor
    opacity: Tensor
    depth: Tensor
    normal: Tensor
    albedo: Tensor
    orientation: Tensor
    shading: str
    n_samples: Tensor


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
    """field(x) at x (N, 3), evaluated only where keep (N,) is True (zeros elsewhere). On a GPU every point
    is evaluated and the rest zeroed: selecting the kept ones (nonzero) would make the host wait each step."""
    if keep is None:
        return field(x)
    if x.is_cuda:
        sigma, albedo = field(x)
        return sigma * keep.to(sigma.dtype), albedo * keep[:, None].to(albedo.dtype)
    idx = keep.nonzero().squeeze(1)  # index_select/index_copy: much faster than boolean masks on CPU
    if idx.numel() == 0:
        return x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0], 3)
    s, a = field(x.index_select(0, idx))
    sigma = x.new_zeros(x.shape[0]).index_copy(0, idx, s)
    albedo = x.new_zeros(x.shape[0], 3).index_copy(0, idx, a)
    return sigma, albedo


def _normals_at(field: nn.Module, x: Tensor, keep: Tensor) -> Tensor:
    """field.normals at x (N, 3) where keep (N,) is True, zeros elsewhere (on a GPU: all, then masked, as
    in :func:`_field_at`)."""
    if x.is_cuda:
        return field.normals(x) * keep[:, None].to(x.dtype)
    idx = keep.nonzero().squeeze(1)
    normals = x.new_zeros(x.shape[0], 3)
    if idx.numel() > 0:
        normals = normals.index_copy(0, idx, field.normals(x.index_select(0, idx)))
    return normals


@dataclass(frozen=True)
class Samples:
    """Points along rays, flat: M samples grouped into ``n_rays`` rays.

    x (M, 3) positions, t (M,) their distances along the ray, dirs (M, 3) unit ray directions,
    lights (M, 3) light positions. ``ray_indices`` (M,) names each sample's ray (packed samples,
    any count per ray); None means the dense layout: M = n_rays * S, ray-major, S per ray.
    """

    x: Tensor
    t: Tensor
    dirs: Tensor
    lights: Tensor
    n_rays: int
    ray_indices: Tensor | None = None

    def ray_sum(self, v: Tensor) -> Tensor:
        """Sum per-sample values v (M, ...) over each ray -> (n_rays, ...)."""
        if self.ray_indices is None:
            return v.reshape(self.n_rays, -1, *v.shape[1:]).sum(dim=1)
        return v.new_zeros((self.n_rays, *v.shape[1:])).index_add_(0, self.ray_indices, v)


def composite(
    field: nn.Module, s: Samples, weights: Tensor, albedo: Tensor, shading: str, cfg: RenderConfig
) -> dict[str, Tensor]:
    """Shade samples and composite them along their rays (the module docstring's C = sum_i w_i c_i).

    weights (M,) are the compositing weights w_i, albedo (M, 3) the field's albedo at s.x. Normals are
    evaluated only where w_i > cfg.normal_weight_threshold (zero elsewhere). Returns per-ray tensors:
    color (R, 3) (no background), albedo (R, 3), normal (R, 3), opacity (R, 1), depth (R, 1) (sum w_i t_i
    over the opacity) and orientation (R,), DreamFusion's penalty sum_i stop_grad(w_i) max(0, n_i . d)^2
    (Poole et al. 2022, App. A.2, after Ref-NeRF).
    """
    need = weights.detach() > cfg.normal_weight_threshold
    normals = _normals_at(field, s.x, need)  # (M, 3)
    lights = None if shading == "albedo" else _light_dirs(s.x, s.lights)
    color = shade(albedo, normals, lights, shading, cfg.ambient, cfg.diffuse)
    orient = weights.detach() * (normals * s.dirs).sum(-1).clamp(min=0.0) ** 2  # (M,)
    opacity = s.ray_sum(weights)[:, None]  # (R, 1)
    out = {"opacity": opacity, "depth": s.ray_sum(weights * s.t)[:, None] / opacity.clamp(min=1e-10)}
    for key, v in (("color", color), ("albedo", albedo), ("normal", normals)):
        out[key] = s.ray_sum(weights[:, None] * v)
    out["orientation"] = s.ray_sum(orient)
    return out


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
        u = torch.rand(n, s, generator=generator, device=gdev, dtype=o.dtype).to(o.device, non_blocking=True)
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
    per_sample = lambda v: v[:, None, :].expand(n, s, 3).reshape(-1, 3)  # noqa: E731  (N, 3) -> (N S, 3)
    samples = Samples(x, t.reshape(-1), per_sample(d), per_sample(light), n)
    out = composite(field, samples, weights.reshape(-1), albedo, shading, cfg)
    out["n_samples"] = keep.sum() if keep is not None else torch.tensor(n * s)  # a tensor: no GPU wait
    return out


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
    samples = Samples(x, t_mid, d[ray_indices], light[ray_indices], n, ray_indices)
    out = composite(field, samples, weights, albedo, shading, cfg)
    out["n_samples"] = torch.tensor(x.shape[0])
    return out


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
    bound: float = 1.0,
    radius: float = 0.0,
    stratified: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Render flat rays origins, directions (unit), light_pos: (N, 3), in chunks of cfg.chunk_samples //
    cfg.n_samples rays (cfg.chunk_samples bounds the samples one field call sees: a large preview, video frame or export render
    costs the memory of one chunk, whatever its size).

    The scene box is [-bound, bound]^3; samples farther than ``radius`` from the origin are skipped
    when radius > 0 (a field that is zero outside its bounding sphere). See :func:`render`.

    Returns per-ray tensors: rgb (N, 3) over the background, albedo (N, 3), normal (N, 3),
    opacity (N, 1), depth (N, 1), orientation (N,) (per-ray penalty), n_samples (scalar).
    """
    check_shading(shading)
    packed = occupancy is not None and origins.is_cuda
    parts = []
    rays = max(cfg.chunk_samples // cfg.n_samples, 1)
    for start in range(0, origins.shape[0], rays):
        sl = slice(start, start + rays)
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
    bound: float = 1.0,
    radius: float = 0.0,
    stratified: bool | None = None,
    generator: torch.Generator | None = None,
) -> RenderOut:
    """Render B cameras at H x W.

    field: any module with field(x (N, 3)) -> (sigma (N,), albedo (N, 3)), .density(x) and .normals(x).
    bound: the scene box is [-bound, bound]^3 (FieldConfig.bound).
    radius: the field's bounding sphere (FieldConfig.bounding_radius): samples outside it are
        skipped when > 0 (0 = none skipped).
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
        bound=bound,
        radius=radius,
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
        n_samples=flat["n_samples"],
    )
