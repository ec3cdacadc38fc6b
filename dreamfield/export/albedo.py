"""The colour a field shows at a point of its exported surface, for vertex colours and texture bakes.

A volume render does not show the albedo at one level set: a camera ray gathers colour over the
depth where its weights fall, inside a soft field or a VolSDF shell a few cells deep. So the colour
of a surface point p with outward unit normal n is the render of a short ray looking straight at
it, from p + depth n to p - depth n, with the emission-absorption quadrature the renderer uses
(Max 1995, "Optical models for direct volume rendering"; Mildenhall et al. 2020, eq. 3):

    alpha_i = 1 - exp(-sigma_i dt),  T_i = prod_{j<i} (1 - alpha_j),  w_i = T_i alpha_i,
    colour(p) = sum_i w_i a_i / sum_i w_i

over RAY_SAMPLES midpoints. Normalising by sum_i w_i keeps the ray's colour, not its opacity (the mesh
is opaque). Where the ray gathers next to nothing (sum_i w_i < MIN_WEIGHT) the albedo at p is used;
depth = 0 is that albedo everywhere.
"""

from __future__ import annotations

import numpy as np
import torch

RAY_SAMPLES = 16
MIN_WEIGHT = 1e-4


def _points(a: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N, 3) float32 CPU tensor of an array or tensor, a copy (trimesh's cached arrays are read-only)."""
    if isinstance(a, torch.Tensor):
        return a.detach().to("cpu", torch.float32)
    return torch.from_numpy(np.array(a, dtype=np.float32))


@torch.no_grad()
def surface_albedo(field, points: np.ndarray | torch.Tensor, normals: np.ndarray | torch.Tensor, depth: float,
                   chunk: int = 262144, device=None) -> torch.Tensor:
    """sRGB colour in [0, 1] (N, 3), CPU float32, of surface points (N, 3) with outward normals (N, 3)
    (any length; zero-length ones give the albedo at the point), in the field's frame.

    field: ``field(x (M, 3)) -> (sigma (M,), albedo (M, 3))`` on `device`; chunk: points per field call.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")
    p = _points(points)
    n = torch.nn.functional.normalize(_points(normals), dim=-1)
    out = torch.empty(p.shape[0], 3)
    k = RAY_SAMPLES if depth > 0 else 1
    dt = 2.0 * depth / k
    offsets = depth - dt * (torch.arange(k, dtype=torch.float32) + 0.5)  # outside -> inside, midpoints
    step = max(1, chunk // k)
    for start in range(0, p.shape[0], step):
        pc, nc = p[start : start + step], n[start : start + step]
        x = (pc[:, None, :] + offsets[None, :, None] * nc[:, None, :]).reshape(-1, 3)
        sigma, albedo = field(x.to(device))
        sigma, albedo = sigma.float().cpu().reshape(-1, k), albedo.float().cpu().reshape(-1, k, 3)
        if k == 1:
            out[start : start + step] = albedo[:, 0]
            continue
        alpha = 1.0 - torch.exp(-sigma.clamp(min=0) * dt)
        trans = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1.0 - alpha[:, :-1]], 1), 1)
        w = trans * alpha  # (n, k)
        total = w.sum(1, keepdim=True)
        ray = (w[..., None] * albedo).sum(1) / total.clamp(min=MIN_WEIGHT)
        empty = (total[:, 0] < MIN_WEIGHT).nonzero().squeeze(1)
        if empty.numel():  # nothing gathered along these rays: the albedo at the point
            ray[empty] = field(pc[empty].to(device))[1].float().cpu()
        out[start : start + step] = ray
    return out.clamp(0.0, 1.0)
