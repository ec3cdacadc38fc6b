"""Regularisers of the rendered scene, each a scalar loss; the loop weights and sums them explicitly."""

from __future__ import annotations

import torch
from torch import Tensor


def opacity_loss(opacity: Tensor) -> Tensor:
    """Sparsity: the mean accumulated opacity, (B, 1, H, W) in [0, 1] -> scalar.

    Penalising opacity (an L1 on alpha, as DreamFusion's and threestudio's sparsity terms do in spirit)
    removes fog in empty space and keeps the object from filling the frame.
    """
    return opacity.mean()


def entropy_loss(opacity: Tensor, eps: float = 1e-5) -> Tensor:
    """Binary entropy of the opacity, mean over pixels, in nats: (B, 1, H, W) -> scalar.

    H(o) = -(o log o + (1 - o) log(1 - o)), largest (log 2) at o = 0.5 and 0 at o in {0, 1}, so it pushes
    every pixel to fully transparent or fully opaque against the semi-transparent fog of SDS. o is
    clamped to [eps, 1 - eps] so that the gradient (log((1 - o) / o)) stays finite.
    """
    o = opacity.clamp(eps, 1.0 - eps)
    return -(o * torch.log(o) + (1.0 - o) * torch.log1p(-o)).mean()


def orientation_penalty(normals: Tensor, weights: Tensor, dirs: Tensor) -> Tensor:
    """DreamFusion's orientation loss: sum_i stopgrad(w_i) max(0, n_i . d)^2 per ray, mean over rays.

    (Poole et al. 2022, R_orient, following Ref-NeRF.) Normals that face away from the camera (positive dot
    product with the viewing direction d, camera -> point) are penalised, weighted by each sample's
    contribution w_i to the pixel; the weights are detached so the penalty moves normals, not opacity.

    normals: (R, S, 3) unit, outward; weights: (R, S) volume-rendering weights; dirs: (R, 3) unit ray
    directions (or (R, S, 3)). Any leading shape works in place of R. Returns a scalar. The renderer's
    ``RenderOut.orientation`` is this value, already averaged; use it directly when rendering.
    """
    if dirs.ndim == normals.ndim - 1:
        dirs = dirs.unsqueeze(-2)
    facing = (normals * dirs).sum(-1).clamp(min=0.0)  # max(0, n . d)
    return (weights.detach() * facing**2).sum(-1).mean()
