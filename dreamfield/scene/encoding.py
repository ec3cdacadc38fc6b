"""Spatial encodings of a point in the scene box [-bound, bound]^3: a dense voxel grid and a
multiresolution hash grid (Instant-NGP), both in plain PyTorch (so they run, and double-backward,
on CPU and CUDA alike).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Tensor = torch.Tensor


def sample_grid(volume: Tensor, x: Tensor, bound: float) -> Tensor:
    """Trilinear lookup of a voxel volume at world points.

    volume: (1, C, R, R, R) laid out (z, y, x) as F.grid_sample expects, its corner voxels at
        -bound and +bound (align_corners=True).
    x: (N, 3) world points; points outside the box read zeros.
    Returns (N, C).
    """
    grid = (x / bound).reshape(1, 1, 1, -1, 3).to(volume.dtype)  # grid_sample wants (x, y, z) order
    out = F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=True)  # (1, C, 1, 1, N)
    return out.reshape(volume.shape[1], -1).t()


class HashEncoding(nn.Module):
    """Multiresolution hash encoding (Mueller et al. 2022, "Instant Neural Graphics Primitives", Sec. 3).

    Level l has resolution N_l = floor(N_min * b^l) with b = exp((ln N_max - ln N_min) / (L - 1))
    (their Eq. 2 and 3). A point's 8 surrounding vertices index a table of T = 2^log2_table_size
    feature vectors: directly when the level's (N_l + 1)^3 vertices fit in T, else through the
    spatial hash h(v) = (v_x * 1 xor v_y * 2654435761 xor v_z * 805459861) mod T (their Eq. 4).
    Features are trilinearly interpolated and the L levels concatenated.

    forward(x (N, 3) in [-bound, bound]^3) -> (N, L * F)
    """

    PRIMES = (1, 2654435761, 805459861)

    def __init__(
        self,
        bound: float,
        levels: int,
        features_per_level: int,
        log2_table_size: int,
        base_resolution: int,
        max_resolution: int,
    ) -> None:
        super().__init__()
        if levels < 1 or features_per_level < 1:
            raise ValueError(f"hash grid needs levels >= 1 and features >= 1, got {levels}, {features_per_level}")
        self.bound = bound
        self.levels = levels
        self.features_per_level = features_per_level
        table = 2**log2_table_size
        growth = math.exp((math.log(max_resolution) - math.log(base_resolution)) / max(levels - 1, 1))
        resolutions, sizes, hashed = [], [], []
        for level in range(levels):
            res = int(math.floor(base_resolution * growth**level + 1e-6))  # + 1e-6: 2 * 2.0**1 may land on 3.9999
            dense = (res + 1) ** 3
            resolutions.append(res)
            sizes.append(min(dense, table))
            hashed.append(dense > table)
        offsets = [0]
        for s in sizes:
            offsets.append(offsets[-1] + s)
        self.register_buffer("resolution", torch.tensor(resolutions, dtype=torch.float32), persistent=False)
        self.register_buffer("size", torch.tensor(sizes, dtype=torch.int64), persistent=False)
        self.register_buffer("hashed", torch.tensor(hashed), persistent=False)
        self.register_buffer("offset", torch.tensor(offsets[:-1], dtype=torch.int64), persistent=False)
        # Instant-NGP initialises the tables uniformly in [-1e-4, 1e-4].
        self.table = nn.Parameter(torch.empty(offsets[-1], features_per_level).uniform_(-1e-4, 1e-4))
        corners = torch.tensor([[(c >> 0) & 1, (c >> 1) & 1, (c >> 2) & 1] for c in range(8)], dtype=torch.int64)
        self.register_buffer("corners", corners, persistent=False)  # (8, 3)
        self.register_buffer("primes", torch.tensor(self.PRIMES, dtype=torch.int64), persistent=False)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features_per_level

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        u = ((x + self.bound) / (2 * self.bound)).clamp(0.0, 1.0)  # (N, 3) in [0, 1]
        pos = u[:, None, :] * self.resolution[None, :, None]  # (N, L, 3) in vertex units
        base = torch.floor(pos).detach()
        frac = pos - base  # (N, L, 3), differentiable in x
        base = base.long()
        vert = base[:, :, None, :] + self.corners[None, None]  # (N, L, 8, 3)
        side = self.resolution.long() + 1  # (L,) vertices per axis
        vert_c = torch.minimum(vert, (side - 1)[None, :, None, None])
        dense_idx = vert_c[..., 0] + side[None, :, None] * (vert_c[..., 1] + side[None, :, None] * vert_c[..., 2])
        p = vert * self.primes
        hash_idx = torch.bitwise_xor(torch.bitwise_xor(p[..., 0], p[..., 1]), p[..., 2])
        idx = torch.where(self.hashed[None, :, None], hash_idx, dense_idx)
        idx = torch.remainder(idx, self.size[None, :, None]) + self.offset[None, :, None]  # (N, L, 8)
        feats = self.table[idx.reshape(-1)].reshape(n, self.levels, 8, self.features_per_level)
        # trilinear weights: prod over axes of (frac if corner bit else 1 - frac)
        c = self.corners.to(frac.dtype)  # (8, 3)
        w = (c * frac[:, :, None, :] + (1 - c) * (1 - frac[:, :, None, :])).prod(dim=-1)  # (N, L, 8)
        out = (w[..., None] * feats.to(w.dtype)).sum(dim=2)  # (N, L, F)
        return out.reshape(n, self.out_dim)
