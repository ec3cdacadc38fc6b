"""Neural fields: a point in the scene box -> (density sigma, albedo).

Two kinds, chosen by ``FieldConfig.kind``:

- ``"grid"``: a learnable dense voxel grid read trilinearly (F.grid_sample). Channel 0 is raw density;
  albedo comes either straight from three sigmoid colour channels (``grid_decoder="direct"``, the
  CPU default: the prototype's voxel grid) or from ``grid_features - 1`` feature channels through a
  one-hidden-layer MLP (``grid_decoder="mlp"``).
- ``"hashgrid"``: Instant-NGP's multiresolution hash encoding feeding a small MLP that outputs raw
  density and albedo logits.

Both share the density head (DreamFusion, Poole et al. 2022, Sec. 3.1 and App. A.2):

    raw   = network(x) + density_bias + blob_density * exp(-rho(x)^2 / (2 blob_radius^2))
    sigma = activation(raw) * [|x| < bounding_radius]

The Gaussian "blob" makes the first renders an object at the centre rather than fog; the density
is forced to zero outside the bounding sphere (the toy prototype found that mattered). rho is the
Euclidean norm for blob_p = 2 (DreamFusion's ball); for another p it is the p-norm scaled so that every
level set keeps the volume of the ball it replaces (:func:`blob`): p > 2 makes a rounded box, aligned
with the axes.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from dreamfield.config import FieldConfig, OptimConfig
from dreamfield.scene.encoding import HashEncoding, sample_grid

Tensor = torch.Tensor


class _TruncExp(torch.autograd.Function):
    """exp(x) whose backward uses exp(min(x, 15)), so a large raw density cannot blow up the step
    (Instant-NGP's trunc_exp). The backward is written in torch ops, so it double-differentiates."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: Tensor) -> Tensor:
    return _TruncExp.apply(x)


def superball_scale(p: float) -> float:
    """c_p with vol{x : c_p ||x||_p <= r} = vol{x : ||x||_2 <= r}: the unit p-ball's volume is
    8 Gamma(1 + 1/p)^3 / Gamma(1 + 3/p) (the sphere's 4 pi / 3 at p = 2), so c_p = (V_p / V_2)^(1/3)."""
    volume = 8.0 * math.gamma(1.0 + 1.0 / p) ** 3 / math.gamma(1.0 + 3.0 / p)
    return (volume / (4.0 * math.pi / 3.0)) ** (1.0 / 3.0)


def blob(cfg: FieldConfig, x: Tensor) -> tuple[Tensor, Tensor]:
    """The density blob lambda exp(-rho^2 / (2 sigma^2)) at x (N, 3) -> (value (N,), d value / d x (N, 3)).

    rho = |x| for blob_p = 2; otherwise rho = c_p ||x||_p (:func:`superball_scale`), so each level set is a
    superball of the volume of the p = 2 ball at that level. d rho / d x_i = c_p^p sign(x_i) |x_i|^(p-1) / rho^(p-1),
    hence d value / d x = -value rho d rho / d x / sigma^2 (= -value x / sigma^2 at p = 2)."""
    s2 = cfg.blob_radius**2
    if cfg.blob_p == 2.0:
        value = cfg.blob_density * torch.exp(-(x * x).sum(dim=-1) / (2.0 * s2))
        return value, -(value / s2)[:, None] * x
    p, c = cfg.blob_p, superball_scale(cfg.blob_p)
    rho = c * x.abs().pow(p).sum(dim=-1).pow(1.0 / p)
    value = cfg.blob_density * torch.exp(-rho * rho / (2.0 * s2))
    # rho d rho / d x_i = c sign(x_i) (c |x_i| / rho)^(p-1) rho, bounded by c rho: 0 at the centre
    ratio = (c * x.abs() / rho.clamp_min(1e-12)[:, None]).pow(p - 1.0)
    return value, -(value * rho / s2)[:, None] * c * torch.sign(x) * ratio


class DensityField(nn.Module):
    """What both field kinds share: the density head, normals and the Adam groups.

    Subclasses implement ``_raw_density(x) -> (N,)`` and ``_raw_all(x) -> (raw (N,), albedo_logits (N, 3))``.
    """

    def __init__(self, cfg: FieldConfig) -> None:
        super().__init__()  # cfg is validated once, by dreamfield.config.validate
        self.cfg = cfg
        self.bound = cfg.bound
        self.bounding_radius = cfg.bounding_radius

    # -- the two raw heads, per kind -------------------------------------------------------------
    def _raw_density(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _raw_all(self, x: Tensor) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    # -- shared ------------------------------------------------------------------------------------
    def _blob(self, x: Tensor) -> Tensor:
        """The density blob at x (N, 3) -> (N,) (:func:`blob`)."""
        return blob(self.cfg, x)[0]

    def _activate(self, raw: Tensor, x: Tensor) -> Tensor:
        """Network raw density (N,) at points x (N, 3) -> sigma (N,) >= 0 (module docstring)."""
        cfg = self.cfg
        pre = raw + cfg.density_bias + self._blob(x)
        sigma = F.softplus(pre) if cfg.density_activation == "softplus" else trunc_exp(pre)
        if cfg.bounding_radius > 0:
            sigma = sigma * ((x * x).sum(dim=-1) < cfg.bounding_radius**2).to(sigma.dtype)
        return sigma

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x (N, 3) -> sigma (N,) >= 0, albedo (N, 3) in [0, 1]."""
        raw, logits = self._raw_all(x)
        return self._activate(raw, x), torch.sigmoid(logits)

    def density(self, x: Tensor) -> Tensor:
        """x (N, 3) -> sigma (N,); cheaper than forward (no colour)."""
        return self._activate(self._raw_density(x), x)

    def normals(self, x: Tensor) -> Tensor:
        """Outward unit normals at x (N, 3) -> (N, 3): n = -g / |g|, g the gradient of the
        pre-activation density  raw(x) + density_bias + blob(x).

        That gradient points the same way as grad sigma wherever sigma > 0 (softplus and exp are
        increasing), but it stays informative where the activation saturates (softplus' slope
        vanishes in empty space, so grad sigma underflows to noise) and it ignores the bounding
        sphere's cut, which is not a surface. The blob's part is exact (:func:`blob`).

        ``finite_difference`` (default): central differences of the network's raw density with step
        fd_eps along each axis, 6 extra density-only lookups in one batched call; the loss's backward
        through them is an ordinary first-order backward (the grid field uses its voxel lattice as
        the stencil instead, see GridField.raw_gradient_fd). ``autograd``: the exact d raw / d x. The grid
        and hash fields write it out (trilinear weights' derivatives, chained through the hash field's
        MLP), so the loss's backward stays first order; other fields take it with create_graph=True and
        differentiate twice. The finite difference also smooths over its
        step, which suits a piecewise-trilinear grid whose exact gradient jumps at every voxel face.
        Zero gradient (empty space) gives the zero vector.
        Differentiable w.r.t. the field's parameters when grad mode is on.
        """
        grad = self.raw_gradient(x) if self.cfg.normals == "autograd" else self.raw_gradient_fd(x)
        grad = grad + blob(self.cfg, x)[1]
        # n = -g / |g|; the 1e-24 keeps |g| = 0 (empty space) at n = 0 instead of 0 / 0
        return -grad * torch.rsqrt((grad * grad).sum(dim=-1, keepdim=True) + 1e-24)

    def raw_gradient_fd(self, x: Tensor) -> Tensor:
        """Central differences of the network's raw density, step fd_eps: x (N, 3) -> (N, 3)."""
        eps = self.cfg.fd_eps
        offsets = eps * torch.eye(3, dtype=x.dtype, device=x.device)  # (3, 3)
        pts = torch.cat([x[None] + offsets[:, None], x[None] - offsets[:, None]], dim=0)  # (6, N, 3)
        raw = self._raw_density(pts.reshape(-1, 3)).reshape(6, -1)  # (6, N)
        return ((raw[:3] - raw[3:]) / (2.0 * eps)).t()

    def raw_gradient(self, x: Tensor) -> Tensor:
        """Exact d raw / d x (N, 3) of the network's raw density by autograd (blob not included);
        keeps the graph (create_graph) when grad mode is on."""
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            raw = self._raw_density(xg)
            (grad,) = torch.autograd.grad(raw.sum(), xg, create_graph=keep)
        return grad

    def param_groups(self, optim_cfg: OptimConfig) -> list[dict]:
        """Adam parameter groups: [{"params", "lr", "name"}, ...] (empty groups left out)."""
        groups = [
            {"params": self._density_params(), "lr": optim_cfg.lr_density, "name": "density"},
            {"params": self._color_params(), "lr": optim_cfg.lr_color, "name": "color"},
            {"params": self._network_params(), "lr": optim_cfg.lr_network, "name": "network"},
        ]
        return [g for g in groups if g["params"]]

    def _density_params(self) -> list[nn.Parameter]:
        return []

    def _color_params(self) -> list[nn.Parameter]:
        return []

    def _network_params(self) -> list[nn.Parameter]:
        return []


class GridField(DensityField):
    """Dense voxel grid (kind "grid").

    density_grid: (1, 1, R, R, R) raw density; color_grid: (1, C, R, R, R), C = 3 albedo logits
    ("direct") or grid_features - 1 features for the MLP ("mlp"). Voxel layout (z, y, x), corners
    at +-bound. Both start at zero: the blob alone shapes the first renders, albedo starts grey.
    """

    def __init__(self, cfg: FieldConfig) -> None:
        super().__init__(cfg)
        r = cfg.grid_resolution
        self.density_grid = nn.Parameter(torch.zeros(1, 1, r, r, r))
        if cfg.grid_decoder == "direct":
            self.color_grid = nn.Parameter(torch.zeros(1, 3, r, r, r))
            self.decoder = None
        else:
            self.color_grid = nn.Parameter(0.1 * torch.randn(1, cfg.grid_features - 1, r, r, r))
            self.decoder = nn.Sequential(
                nn.Linear(cfg.grid_features - 1, cfg.hidden_dim), nn.ReLU(), nn.Linear(cfg.hidden_dim, 3)
            )

    def _raw_density(self, x: Tensor) -> Tensor:
        return sample_grid(self.density_grid, x, self.bound)[:, 0]

    def raw_gradient_fd(self, x: Tensor) -> Tensor:
        """Finite differences on the voxel lattice: central differences between neighbouring voxels
        (step one voxel, 2 bound / (R - 1)), read trilinearly at x (N, 3) -> (N, 3).

        One 3-channel lookup instead of six 1-channel ones (about half the time of the generic
        fd_eps stencil on CPU), and the result is continuous across voxel faces, where the exact
        gradient of trilinear interpolation jumps. fd_eps is not used by the grid field.
        """
        v = self.density_grid  # (1, 1, R, R, R), layout (z, y, x)
        p = F.pad(v, (1, 1, 1, 1, 1, 1), mode="replicate")
        two_h = 2.0 * (2.0 * self.bound / (v.shape[-1] - 1))
        gx = p[:, :, 1:-1, 1:-1, 2:] - p[:, :, 1:-1, 1:-1, :-2]
        gy = p[:, :, 1:-1, 2:, 1:-1] - p[:, :, 1:-1, :-2, 1:-1]
        gz = p[:, :, 2:, 1:-1, 1:-1] - p[:, :, :-2, 1:-1, 1:-1]
        return sample_grid(torch.cat([gx, gy, gz], dim=1) / two_h, x, self.bound)

    def raw_gradient(self, x: Tensor) -> Tensor:
        """The exact gradient of the trilinear density at x (N, 3) -> (N, 3), written out from the
        cell's 8 voxel values. It is linear in those values, so the loss's backward through the
        normals stays first order: no double backward through grid_sample, which some torch builds
        do not implement (torch 2.11 with CUDA raises "derivative for grid_sampler_3d_backward is
        not implemented")."""
        v = self.density_grid[0, 0]  # (R, R, R), layout (z, y, x)
        r = v.shape[-1]
        scale = 0.5 * (r - 1) / self.bound  # voxel units per world unit
        p = (x + self.bound) * scale  # (N, 3) continuous voxel coordinates (x, y, z)
        base = p.detach().floor().clamp(0, r - 2)
        f = p - base  # (N, 3) position inside the cell
        i = base.long()
        flat = v.reshape(-1)

        def corner(dx: int, dy: int, dz: int) -> Tensor:
            return flat[((i[:, 2] + dz) * r + (i[:, 1] + dy)) * r + (i[:, 0] + dx)]

        c = {(a, b, e): corner(a, b, e) for a in (0, 1) for b in (0, 1) for e in (0, 1)}
        fx, fy, fz = f[:, 0], f[:, 1], f[:, 2]

        def lerp2(v00: Tensor, v10: Tensor, v01: Tensor, v11: Tensor, s: Tensor, t: Tensor) -> Tensor:
            return v00 * (1 - s) * (1 - t) + v10 * s * (1 - t) + v01 * (1 - s) * t + v11 * s * t

        gx = lerp2(*(c[1, b, e] - c[0, b, e] for e in (0, 1) for b in (0, 1)), fy, fz)
        gy = lerp2(*(c[a, 1, e] - c[a, 0, e] for e in (0, 1) for a in (0, 1)), fx, fz)
        gz = lerp2(*(c[a, b, 1] - c[a, b, 0] for b in (0, 1) for a in (0, 1)), fx, fy)
        return torch.stack([gx, gy, gz], dim=-1) * scale

    def _raw_all(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # one grid_sample over all channels is cheaper than two (the index math is shared)
        vals = sample_grid(torch.cat([self.density_grid, self.color_grid], dim=1), x, self.bound)  # (N, 1 + C)
        feats = vals[:, 1:]
        logits = feats if self.decoder is None else self.decoder(feats)
        return vals[:, 0], logits

    def density_tv(self) -> Tensor:
        """Total variation of the raw density grid (Plenoxels, Fridovich-Keil et al. 2022, use it on voxel grids):
        sum over the three axes of the mean squared difference between neighbouring voxels -> scalar."""
        v = self.density_grid[0, 0]
        return sum(torch.diff(v, dim=d).pow(2).mean() for d in range(3))

    def _density_params(self) -> list[nn.Parameter]:
        return [self.density_grid]

    def _color_params(self) -> list[nn.Parameter]:
        return [self.color_grid]

    def _network_params(self) -> list[nn.Parameter]:
        return [] if self.decoder is None else list(self.decoder.parameters())


class HashGridField(DensityField):
    """Instant-NGP hash encoding + MLP (kind "hashgrid").

    MLP: (L * F) -> hidden_dim x num_layers (ReLU) -> 4 outputs (raw density, 3 albedo logits).
    Adam groups: the hash tables feed density and colour alike and take lr_color (0.01 by default,
    Instant-NGP's rate; lr_density's 0.05 was tuned for the grid field's raw voxel densities, where
    one parameter is one voxel's density); the MLP takes lr_network.
    """

    def __init__(self, cfg: FieldConfig) -> None:
        super().__init__(cfg)
        self.encoding = HashEncoding(
            bound=cfg.bound,
            levels=cfg.hash_levels,
            features_per_level=cfg.hash_features_per_level,
            log2_table_size=cfg.hash_log2_table_size,
            base_resolution=cfg.hash_base_resolution,
            max_resolution=cfg.hash_max_resolution,
        )
        layers: list[nn.Module] = []
        width = self.encoding.out_dim
        for _ in range(cfg.num_layers):
            layers += [nn.Linear(width, cfg.hidden_dim), nn.ReLU()]
            width = cfg.hidden_dim
        last = nn.Linear(width, 4)
        with torch.no_grad():  # start near raw = 0 and grey albedo, so the blob shapes the first renders
            last.weight.mul_(0.1)
            last.bias.zero_()
        layers.append(last)
        self.mlp = nn.Sequential(*layers)

    def _raw_all(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.mlp(self.encoding(x))  # (N, 4)
        return out[:, 0], out[:, 1:]

    def _raw_density(self, x: Tensor) -> Tensor:
        return self._raw_all(x)[0]

    # Stencil points per recomputed chunk in raw_gradient_fd's backward (bounds its temporaries).
    FD_CHUNK = 1 << 16

    def raw_gradient_fd(self, x: Tensor) -> Tensor:
        """DensityField's central differences (step fd_eps, six density lookups): x (N, 3) -> (N, 3),
        but with the six lookups' MLP activations recomputed in the backward, FD_CHUNK stencil points
        at a time, instead of kept (gradient checkpointing, Chen et al. 2016, "Training Deep Nets with
        Sublinear Memory Cost"): kept, they are most of a training step's memory. One more forward of
        the stencil in the backward buys that; the values and gradients are DensityField's."""
        if not torch.is_grad_enabled():
            return super().raw_gradient_fd(x)
        eps = self.cfg.fd_eps
        offsets = eps * torch.eye(3, dtype=x.dtype, device=x.device)  # (3, 3)
        pts = torch.cat([x[None] + offsets[:, None], x[None] - offsets[:, None]], dim=0).reshape(-1, 3)  # (6 N, 3)
        # preserve_rng_state=False: the field draws no random numbers
        chunks = pts.split(self.FD_CHUNK)
        raw = [checkpoint(self._raw_density, c, use_reentrant=False, preserve_rng_state=False) for c in chunks]
        raw = torch.cat(raw).reshape(6, -1)  # (6, N)
        return ((raw[:3] - raw[3:]) / (2.0 * eps)).t()

    def raw_gradient(self, x: Tensor) -> Tensor:
        """The exact d raw / d x at x (N, 3) -> (N, 3) (field.normals="autograd"), by the chain rule
        written out instead of a double backward through the hash gathers:

            raw = m(E(x)),   d raw / d x = (dE/dx)^T h,   h = d m / d E = W_1^T D_1 W_2^T D_2 ... w_out,

        m the MLP's density output, W_k its weights and D_k the 0/1 ReLU masks at E(x). The masks are
        piecewise constant, so h depends on the MLP's weights only (a double backward through ReLU
        finds the same: its mask has zero derivative). The result is differentiable w.r.t. the
        table and the MLP's weights when grad mode is on; x is taken as a constant, as in
        DensityField.raw_gradient.
        """
        x = x.detach()
        linears = [m for m in self.mlp if isinstance(m, nn.Linear)]
        with torch.no_grad():  # the ReLU masks at E(x)
            a = self.encoding(x)
            masks = []
            for lin in linears[:-1]:
                a = lin(a)
                masks.append(a > 0)
                a = a.relu()
        v = linears[-1].weight[0].expand(x.shape[0], -1)  # (N, hidden): d raw / d last hidden activation
        for lin, mask in zip(reversed(linears[:-1]), reversed(masks)):
            v = torch.where(mask, v, 0.0) @ lin.weight  # back through ReLU then Linear: (N, in)
        return self.encoding.grad_x(x, v)  # v = h (N, L F)

    def _color_params(self) -> list[nn.Parameter]:
        return [self.encoding.table]

    def _network_params(self) -> list[nn.Parameter]:
        return list(self.mlp.parameters())


def make_field(cfg: FieldConfig) -> DensityField:
    """The field named by cfg.kind ("grid" or "hashgrid")."""
    if cfg.kind == "grid":
        return GridField(cfg)
    if cfg.kind == "hashgrid":
        return HashGridField(cfg)
    raise ValueError(f"field.kind: {cfg.kind!r} is not one of grid, hashgrid")
