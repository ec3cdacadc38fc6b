"""Regularisers of the rendered scene, each a scalar loss; the loop weights and sums them explicitly.

DreamFusion's orientation penalty is computed per sample while compositing
(:func:`dreamfield.scene.render.composite`, ``RenderOut.orientation``)."""

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
