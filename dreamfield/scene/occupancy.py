"""Occupancy grid for empty-space skipping: nerfacc's OccGridEstimator (Instant-NGP's density bitfield).

A cell is occupied when its occupancy, density * render_step_size (about the opacity of one marching
step), exceeds min(mean occupancy, occ_threshold). On CUDA the renderer marches rays through the
occupied cells only (nerfacc.OccGridEstimator.sampling, packed samples); on CPU the dense renderer
uses the same bitfield to skip field evaluations at samples in empty cells (``occupied``).
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from nerfacc import OccGridEstimator
from torch import nn

from dreamfield.config import RenderConfig

Tensor = torch.Tensor


class OccupancyGrid(nn.Module):
    """One-level occupancy grid over the scene box [-bound, bound]^3.

    cfg.occ_resolution cells per side; refreshed every cfg.occ_update_every steps by ``update``.
    Move it to the field's device with ``.to(device)``.
    """

    def __init__(self, cfg: RenderConfig, bound: float = 1.0) -> None:
        super().__init__()  # cfg is validated once, by dreamfield.config.validate
        self.cfg = cfg
        self.bound = bound
        self.estimator = OccGridEstimator(
            roi_aabb=[-bound, -bound, -bound, bound, bound, bound], resolution=cfg.occ_resolution, levels=1
        )

    def _occ_fn(self, field: nn.Module) -> Callable[[Tensor], Tensor]:
        step = self.cfg.render_step_size

        def occ_eval_fn(x: Tensor) -> Tensor:  # (N, 3) -> (N,)
            return field.density(x) * step

        return occ_eval_fn

    @torch.no_grad()
    def update(self, step: int, field: nn.Module) -> None:
        """nerfacc's EMA refresh, run when step % occ_update_every == 0: every cell (one random point
        each) for the first 256 steps, then a quarter of the cells plus occupied ones."""
        self.estimator.train()
        self.estimator.update_every_n_steps(
            step=step, occ_eval_fn=self._occ_fn(field), occ_thre=self.cfg.occ_threshold, n=self.cfg.occ_update_every
        )

    @torch.no_grad()
    def refresh(self, field: nn.Module, points_per_cell: int = 8, dilate: int = 1) -> None:
        """Rebuild the grid from scratch, conservatively: a cell's occupancy is the max over
        ``points_per_cell`` random points in it, and the bitfield is dilated by ``dilate`` cells so
        that a thin surface between sampled points is not lost. For a start, an export or a check."""
        est = self.estimator
        res = est.resolution.to(torch.float32)
        coords = est.grid_coords.to(torch.float32)  # (cells, 3)
        lo, hi = est.aabbs[0, :3], est.aabbs[0, 3:]
        occ = torch.zeros(est.cells_per_lvl, device=coords.device)
        fn = self._occ_fn(field)
        for _ in range(points_per_cell):
            x = lo + (coords + torch.rand_like(coords)) / res * (hi - lo)
            occ = torch.maximum(occ, fn(x).reshape(-1).to(occ.dtype))
        est.occs.copy_(occ)
        thre = min(float(occ.mean()), self.cfg.occ_threshold)
        binaries = (occ > thre).view(est.binaries.shape)
        if dilate > 0:
            k = 2 * dilate + 1
            binaries = F.max_pool3d(binaries.float(), kernel_size=k, stride=1, padding=dilate) > 0
        est.binaries = binaries.view(est.binaries.shape)

    def occupied(self, x: Tensor) -> Tensor:
        """Bitfield lookup: x (..., 3) world points -> bool (...), False outside the box."""
        est = self.estimator
        lo, hi = est.aabbs[0, :3], est.aabbs[0, 3:]
        u = (x - lo) / (hi - lo)  # (..., 3) in [0, 1] inside the box
        inside = ((u >= 0) & (u < 1)).all(dim=-1)
        res = est.resolution.to(x.device)
        idx = (u.clamp(0, 1 - 1e-6) * res).long()  # (..., 3) cell coordinates (x, y, z)
        flat = (idx[..., 0] * res[1] + idx[..., 1]) * res[2] + idx[..., 2]
        return est.binaries.reshape(-1)[flat] & inside

    @property
    def occupied_fraction(self) -> float:
        return float(self.estimator.binaries.float().mean())
