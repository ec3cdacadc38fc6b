"""Perspective cameras looking at the origin, and their rays.

World frame (TOY_DOMAIN): right-handed, z up, object at the origin; azimuth 0 puts the camera on +x,
azimuth 90 on +y; elevation is measured up from the xy-plane. Camera frame (OpenGL): the camera
looks along its -z axis, +y is up in the image, +x to the right.

A camera at azimuth ``a``, elevation ``e`` and distance ``d`` sits at

    p = d * (cos e cos a, cos e sin a, sin e)

and its axes, as columns of the camera-to-world rotation, are

    right   = (-sin a, cos a, 0)              (independent of e, so e = +-90 is not degenerate)
    back    = p / |p|                         (camera +z; it looks along -back, at the origin)
    up      = back x right
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from dreamfield.config import CameraConfig

Tensor = torch.Tensor


@dataclass(frozen=True)
class Cameras:
    """A batch of B cameras.

    c2w:           (B, 4, 4) camera-to-world (OpenGL convention: looks along its -z, +y up)
    fov_y_deg:     (B,) vertical field of view in degrees
    azimuth_deg:   (B,) in (-180, 180]
    elevation_deg: (B,)
    distance:      (B,) distance from the origin
    light_pos:     (B, 3) world position of the point light used by Lambertian shading
    """

    c2w: Tensor
    fov_y_deg: Tensor
    azimuth_deg: Tensor
    elevation_deg: Tensor
    distance: Tensor
    light_pos: Tensor

    def __len__(self) -> int:
        return self.c2w.shape[0]

    @property
    def position(self) -> Tensor:
        """(B, 3) camera centres in world coordinates."""
        return self.c2w[:, :3, 3]

    @property
    def device(self) -> torch.device:
        return self.c2w.device

    def to(self, device: torch.device | str) -> "Cameras":
        """The same cameras on ``device`` (host -> GPU copies do not wait for the GPU: non_blocking)."""
        return Cameras(*(t.to(device, non_blocking=True) for t in self._tensors()))

    def __getitem__(self, index: int | slice) -> "Cameras":
        """A sub-batch; an int index keeps the batch dimension (B = 1)."""
        if isinstance(index, int):
            index = slice(index, index + 1 if index != -1 else None)
        return Cameras(*(t[index] for t in self._tensors()))

    def _tensors(self) -> tuple[Tensor, ...]:
        return (self.c2w, self.fov_y_deg, self.azimuth_deg, self.elevation_deg, self.distance, self.light_pos)


def wrap_azimuth(azimuth_deg: Tensor) -> Tensor:
    """Wrap degrees to (-180, 180]."""
    wrapped = torch.remainder(azimuth_deg + 180.0, 360.0) - 180.0  # [-180, 180)
    return torch.where(wrapped == -180.0, torch.full_like(wrapped, 180.0), wrapped)


def _as_batch(value: float | Tensor, like: Tensor | None = None) -> Tensor:
    t = torch.as_tensor(value, dtype=torch.float32)
    if like is not None:
        t = t.to(like.device)
    return t.reshape(-1)


def look_at(
    azimuth_deg: float | Tensor,
    elevation_deg: float | Tensor,
    distance: float | Tensor,
    fov_deg: float | Tensor,
    light_pos: Tensor | None = None,
) -> Cameras:
    """Cameras on a sphere around the origin, looking at it.

    Each argument is a float or a (B,) tensor (floats broadcast against the tensors); the device is
    the first tensor's. light_pos (B, 3) defaults to the camera position (a headlight).
    """
    ref = next((v for v in (azimuth_deg, elevation_deg, distance, fov_deg) if isinstance(v, Tensor)), None)
    az, el, dist, fov = (_as_batch(v, ref) for v in (azimuth_deg, elevation_deg, distance, fov_deg))
    az, el, dist, fov = torch.broadcast_tensors(az, el, dist, fov)
    a, e = torch.deg2rad(az), torch.deg2rad(el)
    back = torch.stack([torch.cos(e) * torch.cos(a), torch.cos(e) * torch.sin(a), torch.sin(e)], dim=-1)  # (B, 3)
    right = torch.stack([-torch.sin(a), torch.cos(a), torch.zeros_like(a)], dim=-1)  # (B, 3)
    up = torch.cross(back, right, dim=-1)  # (B, 3)
    position = back * dist[:, None]
    c2w = torch.zeros(az.shape[0], 4, 4, dtype=torch.float32, device=az.device)
    c2w[:, :3, 0] = right
    c2w[:, :3, 1] = up
    c2w[:, :3, 2] = back
    c2w[:, :3, 3] = position
    c2w[:, 3, 3] = 1.0
    if light_pos is None:
        light_pos = position.clone()
    return Cameras(
        c2w=c2w,
        fov_y_deg=fov.clone(),
        azimuth_deg=wrap_azimuth(az),
        elevation_deg=el.clone(),
        distance=dist.clone(),
        light_pos=light_pos.to(position),
    )


def azimuth_range_at(cfg: CameraConfig, step: int) -> tuple[float, float]:
    """The azimuth range (degrees) in force at ``step`` under progressive views.

    The span grows linearly from ``azimuth_start_span`` at step 0 to the width of ``cfg.azimuth`` at step
    ``azimuth_widen_steps``, centred on the middle of ``cfg.azimuth`` (the front, 0, by default); never wider
    than ``cfg.azimuth``. The intent: early views from one side shape the object from that side first, instead
    of a full orbit of views from the start, which a prior that draws e.g. a cube at any yaw averages towards a
    body of revolution. Measured on the toy prior (README): it helped cones, not cubes.
    """
    lo, hi = cfg.azimuth
    full = hi - lo
    if cfg.azimuth_widen_steps <= 0 or step >= cfg.azimuth_widen_steps:
        return lo, hi
    frac = max(step, 0) / cfg.azimuth_widen_steps
    span = min(full, cfg.azimuth_start_span + (full - cfg.azimuth_start_span) * frac)
    mid = 0.5 * (lo + hi)
    return mid - 0.5 * span, mid + 0.5 * span


def sample_cameras(
    cfg: CameraConfig,
    batch: int,
    generator: torch.Generator,
    device: torch.device | str,
    azimuth: tuple[float, float] | None = None,
) -> Cameras:
    """Random training cameras drawn uniformly from cfg's ranges (``azimuth`` overrides cfg.azimuth).

    With probability cfg.overhead_prob a view's elevation is drawn from [elevation[1], overhead_max]
    instead of cfg.elevation (the toy domain's "share of overhead views"). The light sits at the camera
    position plus N(0, light_jitter^2) per axis (DreamFusion samples the light around the camera).
    Random numbers come from ``generator`` (on its own device), so a seed fixes the cameras.
    """
    gdev = generator.device

    def uniform(lo: float, hi: float) -> Tensor:
        return lo + (hi - lo) * torch.rand(batch, generator=generator, device=gdev)

    dist = uniform(*cfg.distance)
    el = uniform(*cfg.elevation)
    if cfg.overhead_prob > 0:
        overhead = torch.rand(batch, generator=generator, device=gdev) < cfg.overhead_prob
        el_over = uniform(cfg.elevation[1], max(cfg.overhead_max, cfg.elevation[1]))
        el = torch.where(overhead, el_over, el)
    az = uniform(*(cfg.azimuth if azimuth is None else azimuth))
    fov = uniform(*cfg.fov)
    jitter = cfg.light_jitter * torch.randn(batch, 3, generator=generator, device=gdev)
    cams = look_at(az.to(device), el.to(device), dist.to(device), fov.to(device))
    return Cameras(
        c2w=cams.c2w,
        fov_y_deg=cams.fov_y_deg,
        azimuth_deg=cams.azimuth_deg,
        elevation_deg=cams.elevation_deg,
        distance=cams.distance,
        light_pos=cams.position + jitter.to(device),
    )


def orbit_cameras(
    n: int, elevation_deg: float, distance: float, fov_deg: float, device: torch.device | str = "cpu"
) -> Cameras:
    """n cameras at azimuths 360 k / n, k = 0..n-1 (starting at the front, +x), headlight light."""
    az = torch.arange(n, dtype=torch.float32, device=device) * (360.0 / n)
    return look_at(az, elevation_deg, distance, fov_deg)


def get_rays(cams: Cameras, H: int, W: int) -> tuple[Tensor, Tensor]:
    """Rays through pixel centres.

    Pixel (i, j) (row i from the top, column j from the left) maps to the camera-frame direction

        ((2 (j + 0.5) / W - 1) * tan(fov_y / 2) * W / H,  (1 - 2 (i + 0.5) / H) * tan(fov_y / 2),  -1)

    Returns origins (B, H, W, 3) and unit directions (B, H, W, 3) in world coordinates.
    """
    device = cams.device
    tan_half = torch.tan(torch.deg2rad(cams.fov_y_deg) / 2.0)  # (B,)
    j = (torch.arange(W, device=device, dtype=torch.float32) + 0.5) / W * 2.0 - 1.0  # (W,)
    i = 1.0 - (torch.arange(H, device=device, dtype=torch.float32) + 0.5) / H * 2.0  # (H,)
    x = j[None, None, :] * (tan_half * (W / H))[:, None, None]  # (B, 1, W)
    y = i[None, :, None] * tan_half[:, None, None]  # (B, H, 1)
    x, y = torch.broadcast_tensors(x, y)  # (B, H, W)
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # (B, H, W, 3)
    rot = cams.c2w[:, :3, :3]  # (B, 3, 3)
    d_world = torch.einsum("bij,bhwj->bhwi", rot, d_cam)
    d_world = d_world / torch.linalg.norm(d_world, dim=-1, keepdim=True)
    origins = cams.position[:, None, None, :].expand_as(d_world)
    return origins, d_world


def fov_focal(fov_y_deg: float, H: int) -> float:
    """Focal length in pixels for a vertical field of view (handy for exporters)."""
    return 0.5 * H / math.tan(math.radians(fov_y_deg) / 2.0)
