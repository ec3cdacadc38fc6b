"""Spatial encodings of a point in the scene box [-bound, bound]^3: a dense voxel grid and a
multiresolution hash grid (Instant-NGP), both in plain PyTorch (so they run, and double-backward,
on CPU and CUDA alike).

The hash grid's lookup is a custom autograd Function that saves only its inputs (x and the table)
and recomputes the corner indices and trilinear weights level by level in its backward, as
tiny-cuda-nn does: autograd would otherwise keep int64 (N, L, 8, 3) index tensors per call. Its
x-Jacobian is written out too (HashEncoding.grad_x), so the hash field's exact normals need no
double backward. hash_encode_reference is the plain-autograd lookup it replaced, kept to test against.
"""

from __future__ import annotations

import math
from typing import NamedTuple

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


# Points per pass over the levels: the per-level temporaries ((N, 8) indices, weights, gathered rows)
# then never exceed this many rows, however many points a call brings. On CUDA, memory is plentiful
# and each pass costs kernel launches, so its chunks are larger.
_CHUNK = 1 << 16
_CHUNK_CUDA = 1 << 20


def _chunk(x: Tensor) -> int:
    return _CHUNK_CUDA if x.is_cuda else _CHUNK


class _Level(NamedTuple):
    """One level's lattice: N_l cells per axis, side = N_l + 1 vertices per axis, its table rows
    [offset, offset + size), hashed (size a power of two) or dense (the rule in HashEncoding)."""

    resolution: float
    side: int
    hashed: bool
    size: int
    offset: int


class _Cell(NamedTuple):
    """Where points sit in one level: idx (N, 8) int64 rows of the level's table slice, corner
    c = x_bit + 2 y_bit + 4 z_bit; per-axis linear weights wx, wy, wz (N, 2) = (1 - f, f) of the
    position f in the cell; dfrac (N, 3) = d f / d x."""

    idx: Tensor
    wx: Tensor
    wy: Tensor
    wz: Tensor
    dfrac: Tensor


def _box_coords(x: Tensor, bound: float) -> tuple[Tensor, Tensor]:
    """x (N, 3) -> u (N, 3), x mapped to [0, 1] and clamped to the box, and inside (N, 3), 1.0 where
    the clamp passes the gradient (on [0, 1], ends included, as autograd's clamp does) else 0.0."""
    t = (x + bound) / (2 * bound)
    with torch.no_grad():
        inside = ((t >= 0.0) & (t <= 1.0)).to(x.dtype)
    return t.clamp(0.0, 1.0), inside


def _cell(u: Tensor, inside: Tensor, level: _Level, bound: float, primes: tuple[int, ...]) -> _Cell:
    """The 8 table rows around each point of u (N, 3) (from _box_coords) at one level, and its weights.

    The weights are differentiable in u when grad mode is on (only the encoding's double backward
    records that graph; Function.forward runs without one). The hash is built from per-axis (N, 2)
    products, so no (N, 8, 3) tensor is made.
    """
    pos = u * level.resolution  # (N, 3) in vertex units
    base = torch.floor(pos).detach()
    frac = pos - base
    w = torch.stack([1 - frac, frac], dim=1)  # (N, 2, 3): [corner bit, axis]
    with torch.no_grad():
        b = base.long()
        v = torch.stack([b, b + 1], dim=1)  # (N, 2, 3)
        if level.hashed:  # python-int factors: no host-to-device copy per level on CUDA
            px, py, pz = (v[:, :, k] * primes[k] for k in range(3))  # (N, 2) each
            idx = pz[:, :, None, None] ^ py[:, None, :, None] ^ px[:, None, None, :]  # (N, 2z, 2y, 2x)
            idx = idx & (level.size - 1)  # mod 2^k of non-negative integers
        else:
            v = v.clamp(max=level.side - 1)  # the box's far face: its +1 corners carry weight 0
            s = level.side
            idx = (v[:, :, None, None, 2] * s + v[:, None, :, None, 1]) * s + v[:, None, None, :, 0]
    dfrac = inside * (level.resolution / (2 * bound))
    return _Cell(idx.reshape(-1, 8), w[:, :, 0], w[:, :, 1], w[:, :, 2], dfrac)


def _trilinear(wx: Tensor, wy: Tensor, wz: Tensor) -> Tensor:
    """Corner weights w_c = wx[c_x] wy[c_y] wz[c_z] (N, 8), in corner order c = x + 2 y + 4 z."""
    return ((wx[:, None, None, :] * wy[:, None, :, None]) * wz[:, :, None, None]).reshape(-1, 8)


def _weight_jvp(cell: _Cell, d: Tensor) -> Tensor:
    """sum_k (d w_c / d x_k) d_k for each corner: d (N, 3) -> (N, 8)."""
    d = d * cell.dfrac
    # d (1 - f, f) / d f = (-1, 1)
    ex, ey, ez = (torch.cat([-d[:, k : k + 1], d[:, k : k + 1]], dim=1) for k in range(3))
    return _trilinear(ex, cell.wy, cell.wz) + _trilinear(cell.wx, ey, cell.wz) + _trilinear(cell.wx, cell.wy, ez)


def _weight_vjp(cell: _Cell, s: Tensor) -> Tensor:
    """sum_c s_c d w_c / d x: s (N, 8) -> (N, 3) (the transpose of _weight_jvp)."""
    s = s.reshape(-1, 2, 2, 2)  # (N, z, y, x)
    dx = s[..., 1] - s[..., 0]  # (N, z, y)
    dy = s[:, :, 1, :] - s[:, :, 0, :]  # (N, z, x)
    dz = s[:, 1] - s[:, 0]  # (N, y, x)
    gx = ((dx * cell.wy[:, None, :]).sum(-1) * cell.wz).sum(-1)
    gy = ((dy * cell.wx[:, None, :]).sum(-1) * cell.wz).sum(-1)
    gz = ((dz * cell.wx[:, None, :]).sum(-1) * cell.wy).sum(-1)
    return torch.stack([gx, gy, gz], dim=-1) * cell.dfrac


def _gather(table: Tensor, level: _Level, cell: _Cell, dtype: torch.dtype) -> Tensor:
    """The level's table rows at the cell corners: (N, 8, F)."""
    rows = table.narrow(0, level.offset, level.size).index_select(0, cell.idx.reshape(-1))
    return rows.view(-1, 8, table.shape[1]).to(dtype)


def _scatter(gt: Tensor, level: _Level, cell: _Cell, values: Tensor) -> None:
    """gt[rows at the cell corners] += values (N, 8, F), in place."""
    rows = gt.narrow(0, level.offset, level.size)
    rows.index_add_(0, cell.idx.reshape(-1), values.reshape(-1, gt.shape[1]).to(gt.dtype))


Levels = tuple[_Level, ...]
Primes = tuple[int, ...]


def _encode(x: Tensor, table: Tensor, levels: Levels, bound: float, primes: Primes) -> Tensor:
    """E(x) = concat_l sum_c w_c(x) T[idx_l,c(x)]: x (N, 3) -> (N, L F), chunk by chunk (no graph)."""
    n, f = x.shape[0], table.shape[1]
    out = x.new_empty(n, len(levels), f)
    c = _chunk(x)
    for a in range(0, n, c):
        u, inside = _box_coords(x[a : a + c], bound)
        for l, level in enumerate(levels):
            cell = _cell(u, inside, level, bound, primes)
            w = _trilinear(cell.wx, cell.wy, cell.wz)  # (n, 8)
            out[a : a + c, l] = torch.bmm(w[:, None, :], _gather(table, level, cell, x.dtype))[:, 0]  # (n, F)
    return out.reshape(n, len(levels) * f)


def _encode_vjp(
    x: Tensor,
    table: Tensor,
    grad: Tensor,
    levels: Levels,
    bound: float,
    primes: Primes,
    need_x: bool,
    gt: Tensor | None,
) -> Tensor | None:
    """For grad (N, L F): adds grad^T dE/dtable into gt (rows, F) when given, and returns
    grad^T dE/dx (N, 3) when need_x. dE_l/dT[idx_c] = w_c; dE_l/dx = sum_c T[idx_c] (d w_c / d x)."""
    n, f = x.shape[0], table.shape[1]
    grad = grad.reshape(n, len(levels), f)
    parts = []
    c = _chunk(x)
    for a in range(0, n, c):
        u, inside = _box_coords(x[a : a + c], bound)
        gx = None
        for l, level in enumerate(levels):
            cell = _cell(u, inside, level, bound, primes)
            g = grad[a : a + c, l]  # (n, F)
            if gt is not None:
                _scatter(gt, level, cell, _trilinear(cell.wx, cell.wy, cell.wz)[..., None] * g[:, None, :])
            if need_x:
                s = torch.bmm(_gather(table, level, cell, x.dtype), g[:, :, None].to(x.dtype))[..., 0]  # (n, 8)
                gx = _weight_vjp(cell, s) if gx is None else gx + _weight_vjp(cell, s)
        parts.append(gx)
    if not need_x:
        return None
    return torch.cat(parts) if parts else torch.zeros_like(x)  # no parts: no points


def _grad_x_vjp(
    x: Tensor,
    table: Tensor,
    h: Tensor,
    grad: Tensor,
    levels: Levels,
    bound: float,
    primes: Primes,
    gt: Tensor | None,
    need_h: bool,
) -> Tensor | None:
    """Backward of (dE/dx)^T h for grad (N, 3): adds d/dtable into gt when given, returns d/dh (N, L F)
    when need_h. Both use q_c = (d w_c / d x) . grad: d/dh_l = sum_c T[idx_c] q_c, d/dT[idx_c] += q_c h_l."""
    n, f = x.shape[0], table.shape[1]
    h = h.reshape(n, len(levels), f)
    gh = h.new_empty(h.shape) if need_h else None
    c = _chunk(x)
    for a in range(0, n, c):
        u, inside = _box_coords(x[a : a + c], bound)
        for l, level in enumerate(levels):
            cell = _cell(u, inside, level, bound, primes)
            q = _weight_jvp(cell, grad[a : a + c])  # (n, 8)
            if gt is not None:
                _scatter(gt, level, cell, q[..., None] * h[a : a + c, l, None, :])
            if gh is not None:
                gh[a : a + c, l] = torch.bmm(q[:, None, :].to(h.dtype), _gather(table, level, cell, h.dtype))[:, 0]
    return None if gh is None else gh.reshape(n, len(levels) * f)


class _HashEncode(torch.autograd.Function):
    """E(x): x (N, 3), table (rows, F) -> (N, L F), see _encode.

    Saves only x and the table; the backward recomputes each level's corners. The backward is made
    of differentiable torch ops, so a double backward (field.normals="autograd" through
    DensityField.raw_gradient) still works, at the cost of recording that graph.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, table: Tensor, levels: Levels, bound: float, primes: Primes
    ) -> Tensor:
        ctx.save_for_backward(x, table)
        ctx.levels, ctx.bound, ctx.primes = levels, bound, primes
        return _encode(x, table, levels, bound, primes)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, table = ctx.saved_tensors
        gt = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        gx = _encode_vjp(x, table, grad, ctx.levels, ctx.bound, ctx.primes, ctx.needs_input_grad[0], gt)
        return gx, gt, None, None, None


class _HashEncodeGradX(torch.autograd.Function):
    """(dE/dx)^T h: x (N, 3), table (rows, F), h (N, L F) -> (N, 3), the chain rule's step from the
    encoding's output back to the point, without an autograd graph of the lookup. Linear in the
    table and in h, so its backward (_grad_x_vjp) is one more pass over the corners. The points are
    constants here (HashEncoding.grad_x refuses x that requires grad)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx, x: Tensor, table: Tensor, h: Tensor, levels: Levels, bound: float, primes: Primes
    ) -> Tensor:
        ctx.save_for_backward(x, table, h)
        ctx.levels, ctx.bound, ctx.primes = levels, bound, primes
        return _encode_vjp(x, table, h, levels, bound, primes, need_x=True, gt=None)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        x, table, h = ctx.saved_tensors
        gt = torch.zeros_like(table) if ctx.needs_input_grad[1] else None
        gh = _grad_x_vjp(x, table, h, grad, ctx.levels, ctx.bound, ctx.primes, gt, ctx.needs_input_grad[2])
        return None, gt, gh, None, None, None


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
        per_level = zip(resolutions, hashed, sizes, offsets)
        self._levels = tuple(_Level(float(r), r + 1, h, s, o) for r, h, s, o in per_level)

    @property
    def out_dim(self) -> int:
        return self.levels * self.features_per_level

    def forward(self, x: Tensor) -> Tensor:
        """x (N, 3) -> (N, L F); the same values as hash_encode_reference, lean in memory."""
        return _HashEncode.apply(x, self.table, self._levels, self.bound, self.PRIMES)

    def grad_x(self, x: Tensor, h: Tensor) -> Tensor:
        """(d E / d x)^T h at x (N, 3) for h (N, L F) -> (N, 3): the gradient in x of sum_j h_j E_j(x)
        with h held fixed, differentiable w.r.t. the table and h. x must not require grad."""
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError("HashEncoding.grad_x: x must not require grad (no second derivative in x)")
        return _HashEncodeGradX.apply(x, self.table, h, self._levels, self.bound, self.PRIMES)


def hash_encode_reference(enc: HashEncoding, x: Tensor) -> Tensor:
    """The original all-levels-at-once lookup in plain autograd, x (N, 3) -> (N, L F): the reference
    HashEncoding.forward is tested against (it keeps (N, L, 8, 3) int64 tensors for the backward)."""
    n = x.shape[0]
    u = ((x + enc.bound) / (2 * enc.bound)).clamp(0.0, 1.0)  # (N, 3) in [0, 1]
    pos = u[:, None, :] * enc.resolution[None, :, None]  # (N, L, 3) in vertex units
    base = torch.floor(pos).detach()
    frac = pos - base  # (N, L, 3), differentiable in x
    base = base.long()
    vert = base[:, :, None, :] + enc.corners[None, None]  # (N, L, 8, 3)
    side = enc.resolution.long() + 1  # (L,) vertices per axis
    vert_c = torch.minimum(vert, (side - 1)[None, :, None, None])
    dense_idx = vert_c[..., 0] + side[None, :, None] * (vert_c[..., 1] + side[None, :, None] * vert_c[..., 2])
    p = vert * enc.primes
    hash_idx = torch.bitwise_xor(torch.bitwise_xor(p[..., 0], p[..., 1]), p[..., 2])
    idx = torch.where(enc.hashed[None, :, None], hash_idx, dense_idx)
    idx = torch.remainder(idx, enc.size[None, :, None]) + enc.offset[None, :, None]  # (N, L, 8)
    feats = enc.table[idx.reshape(-1)].reshape(n, enc.levels, 8, enc.features_per_level)
    # trilinear weights: prod over axes of (frac if corner bit else 1 - frac)
    c = enc.corners.to(frac.dtype)  # (8, 3)
    w = (c * frac[:, :, None, :] + (1 - c) * (1 - frac[:, :, None, :])).prod(dim=-1)  # (N, L, 8)
    out = (w[..., None] * feats.to(w.dtype)).sum(dim=2)  # (N, L, F)
    return out.reshape(n, enc.out_dim)
