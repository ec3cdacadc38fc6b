"""A signed-distance voxel grid rendered as a volume (VolSDF), the geometry of the surface stage.

The field stores d(x), the signed distance to the surface (negative inside), on a dense voxel grid
read trilinearly, and three albedo logits per voxel. The renderer sees an ordinary density field:

    sigma(x) = alpha * Psi_beta(-d(x)),   alpha = 1 / beta                      (VolSDF, Yariv et al. 2021, Eq. 2)
    Psi_beta(s) = 0.5 exp(s / beta)            if s <= 0
                = 1 - 0.5 exp(-s / beta)       if s > 0                          (Eq. 3, the Laplace CDF)

so the surface {d = 0} is where sigma is alpha / 2, and the learned sharpness beta sets how thick
the transition is (beta = beta_min + exp(log_beta): it can shrink but never reach zero, where the
sampled renderer would alias). Normals are the SDF's gradient, n = grad d / |grad d|, and the
eikonal term mean (|grad d| - 1)^2 over the lattice (Gropp et al. 2020, IGR) keeps d a distance.
Both use central differences on the voxel lattice (one voxel step), like GridField's normals.

:func:`sdf_from_occupancy` makes the starting grid from an inside/outside voxel mask (the coarse
stage's density level set) with Euclidean distance transforms; :func:`smooth_sdf` optionally blurs it.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import nn

from dreamfield.config import SurfaceConfig
from dreamfield.scene.encoding import sample_grid

Tensor = torch.Tensor


def laplace_cdf(s: Tensor, beta: Tensor) -> Tensor:
    """Psi_beta(s) (module docstring), computed as 0.5 exp(-|s| / beta) mirrored, so no exp overflows."""
    half = 0.5 * torch.exp(-s.abs() / beta)
    return torch.where(s <= 0, half, 1.0 - half)


def lattice_gradient(v: Tensor, bound: float) -> Tensor:
    """Central differences of a voxel volume v (1, 1, R, R, R) laid out (z, y, x), corners at +-bound, in
    world units -> (1, 3, R, R, R) channels (d/dx, d/dy, d/dz); one-sided at the faces (replicate padding)."""
    p = F.pad(v, (1, 1, 1, 1, 1, 1), mode="replicate")
    h = 2.0 * bound / (v.shape[-1] - 1)
    gx = p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]
    gy = p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]
    gz = p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]
    # a replicated face voxel differs from its neighbour over one step, an inner one over two
    span = torch.full((v.shape[-1],), 2.0 * h, dtype=v.dtype, device=v.device)
    span[0] = span[-1] = h
    return torch.cat([gx / span, gy / span[:, None], gz / span[:, None, None]], dim=1)


class SdfGridField(nn.Module):
    """Signed distance + albedo on a dense grid in [-bound, bound]^3, rendered by VolSDF's density.

    sdf_grid: (1, 1, R, R, R) signed distance in world units (layout (z, y, x), corners at +-bound);
    color_grid: (1, 3, R, R, R) albedo logits; log_beta: () the learned sharpness (module docstring).
    A fresh field is the sphere of radius ``radius`` with grey albedo; the surface stage overwrites
    both grids from the coarse field (:meth:`set_grids`).
    """

    def __init__(self, cfg: SurfaceConfig, bound: float, bounding_radius: float = 0.0, radius: float = 0.5) -> None:
        super().__init__()
        if cfg.resolution < 4 or bound <= 0 or cfg.beta_init <= cfg.beta_min or cfg.beta_min <= 0:
            raise ValueError(f"surface: need resolution >= 4, bound > 0 and beta_init > beta_min > 0, got "
                             f"{cfg.resolution}, {bound}, {cfg.beta_init}, {cfg.beta_min}")
        self.cfg, self.bound, self.bounding_radius = cfg, bound, bounding_radius
        r = cfg.resolution
        axis = torch.linspace(-bound, bound, r)
        z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
        self.sdf_grid = nn.Parameter((torch.sqrt(x * x + y * y + z * z) - radius)[None, None].contiguous())
        self.color_grid = nn.Parameter(torch.zeros(1, 3, r, r, r))
        self.log_beta = nn.Parameter(torch.tensor(math.log(cfg.beta_init - cfg.beta_min)))
        # a ceiling on beta set from outside (the surface stage's schedule, dreamfield.surface.beta_cap_at);
        # not a parameter nor state: a pure function of the stage's step, set again on resume and load
        self.beta_cap = math.inf

    @torch.no_grad()
    def set_grids(self, sdf: Tensor, albedo_logits: Tensor) -> None:
        """Replace the grids: sdf (R, R, R), albedo_logits (3, R, R, R), both laid out (z, y, x)."""
        self.sdf_grid.copy_(sdf[None, None])
        self.color_grid.copy_(albedo_logits[None])

    @property
    def beta(self) -> Tensor:
        """min(beta_min + exp(log_beta), beta_cap): the gradient reaches log_beta only below the ceiling."""
        learned = self.cfg.beta_min + torch.exp(self.log_beta)
        return learned if math.isinf(self.beta_cap) else learned.clamp(max=self.beta_cap)

    def _inside_box(self, x: Tensor) -> Tensor:
        # sample_grid reads 0 (a surface) outside the box; the renderer stays inside it, this guards other callers
        return x.clamp(-self.bound, self.bound)

    def sdf(self, x: Tensor) -> Tensor:
        """x (N, 3) -> signed distance (N,)."""
        return sample_grid(self.sdf_grid, self._inside_box(x), self.bound)[:, 0]

    def _sigma(self, d: Tensor, x: Tensor) -> Tensor:
        beta = self.beta
        sigma = laplace_cdf(-d, beta) / beta
        if self.bounding_radius > 0:
            sigma = sigma * ((x * x).sum(dim=-1) < self.bounding_radius**2).to(sigma.dtype)
        return sigma

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, 3) -> sigma (N,) >= 0, albedo (N, 3) in [0, 1] (one lookup over all four channels)."""
        vals = sample_grid(torch.cat([self.sdf_grid, self.color_grid], dim=1), self._inside_box(x), self.bound)
        return self._sigma(vals[:, 0], x), torch.sigmoid(vals[:, 1:])

    def density(self, x: Tensor) -> Tensor:
        """x (N, 3) -> sigma (N,)."""
        return self._sigma(self.sdf(x), x)

    def gradient(self, x: Tensor) -> Tensor:
        """grad d at x (N, 3) -> (N, 3): the lattice's central differences read trilinearly (continuous
        across voxel faces, where the exact gradient of trilinear interpolation jumps)."""
        return sample_grid(lattice_gradient(self.sdf_grid, self.bound), self._inside_box(x), self.bound)

    def normals(self, x: Tensor) -> Tensor:
        """Outward unit normals grad d / |grad d| at x (N, 3) -> (N, 3) (zero where the gradient is)."""
        g = self.gradient(x)
        return g * torch.rsqrt((g * g).sum(dim=-1, keepdim=True) + 1e-24)

    def eikonal(self) -> Tensor:
        """mean over the lattice of (|grad d| - 1)^2 (IGR's eikonal term) -> scalar; 0 for an exact SDF
        whose lattice differences are exact (a plane), O(h^2 / r^2) for a sphere of radius r."""
        g = lattice_gradient(self.sdf_grid, self.bound)[0]  # (3, R, R, R)
        return ((g.pow(2).sum(dim=0) + 1e-12).sqrt() - 1.0).pow(2).mean()

    def param_groups(self, optim_cfg=None) -> list[dict]:
        """Adam groups: the SDF, the albedo and the sharpness, with the surface section's rates
        (``optim_cfg`` is accepted for the loop's call and not used)."""
        c = self.cfg
        return [
            {"params": [self.sdf_grid], "lr": c.lr_sdf, "name": "sdf"},
            {"params": [self.color_grid], "lr": c.lr_color, "name": "color"},
            {"params": [self.log_beta], "lr": c.lr_beta, "name": "sharpness"},
        ]


def sdf_from_occupancy(inside: np.ndarray, bound: float) -> np.ndarray:
    """Signed distance (R, R, R) float32, negative inside, of a boolean voxel mask ``inside`` (R, R, R)
    whose voxels sit on the lattice with corners at +-bound.

    Euclidean distance transforms (scipy.ndimage.distance_transform_edt) give every voxel its distance
    to the nearest voxel of the other class; the surface lies half-way between the two classes, hence
    the half-voxel shift. An empty or full mask has no surface (ValueError).
    """
    if not inside.any() or inside.all():
        raise ValueError("the coarse field has no surface at the hand-over level (empty or full); "
                         "lower or raise surface.init_level")
    h = 2.0 * bound / (inside.shape[0] - 1)
    outside_d = ndimage.distance_transform_edt(~inside)  # outside voxels: distance to the nearest inside voxel
    inside_d = ndimage.distance_transform_edt(inside)
    sdf = np.where(inside, -(inside_d - 0.5), outside_d - 0.5) * h
    return sdf.astype(np.float32)


def smooth_sdf(sdf: np.ndarray, sigma: float, bound: float) -> np.ndarray:
    """A Gaussian blur of a signed-distance lattice (R, R, R), sigma in world units (0: unchanged).

    d * G_sigma solves the heat equation for time sigma^2 / 2, so to first order it is
    d + (sigma^2 / 2) lap d; an exact SDF has lap d = 2 H (twice the mean curvature), so the level set
    d = 0 moves inward by sigma^2 H: a sphere of radius r shrinks by sigma^2 / r, a plane stays put.
    The lattice's faces are extended by their nearest value (the box edge has no surface on it)."""
    if sigma <= 0:
        return sdf
    h = 2.0 * bound / (sdf.shape[0] - 1)
    return ndimage.gaussian_filter(sdf.astype(np.float64), sigma / h, mode="nearest").astype(np.float32)
