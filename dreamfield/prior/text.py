"""Text conditioning shared by every prior: the embedding container and view-dependent prompts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TextEmbedding:
    """Conditional and unconditional text embeddings for a batch of prompts.

    cond:     (B, L, D) one row per prompt, in the prior's dtype and device.
    uncond:   (B, L, D) the negative prompt's embedding (the empty prompt by default), repeated.
    prompts:  the B prompts, in order (an analytic prior reads its condition from these).
    negative: the negative prompt.
    """

    cond: Tensor
    uncond: Tensor
    prompts: tuple[str, ...]
    negative: str = ""

    def __post_init__(self) -> None:
        if self.cond.shape != self.uncond.shape or self.cond.shape[0] != len(self.prompts):
            raise ValueError(
                f"TextEmbedding: cond {tuple(self.cond.shape)}, uncond {tuple(self.uncond.shape)} and "
                f"{len(self.prompts)} prompts do not agree"
            )

    def __len__(self) -> int:
        return len(self.prompts)

    def repeat(self, n: int) -> TextEmbedding:
        """A batch of ``n`` copies of a one-prompt embedding (B = 1 -> n); other sizes must equal n."""
        if len(self) == n:
            return self
        if len(self) != 1:
            raise ValueError(f"TextEmbedding of batch {len(self)} cannot be broadcast to batch {n}")
        return TextEmbedding(
            self.cond.expand(n, *self.cond.shape[1:]),
            self.uncond.expand(n, *self.uncond.shape[1:]),
            self.prompts * n,
            self.negative,
        )

    @staticmethod
    def concat(a: TextEmbedding, b: TextEmbedding) -> TextEmbedding:
        """The batch ``a`` followed by the batch ``b`` (used to run two conditions in one UNet call)."""
        if a.negative != b.negative:
            raise ValueError(f"TextEmbedding.concat: negative prompts differ ({a.negative!r} vs {b.negative!r})")
        return TextEmbedding(
            torch.cat([a.cond, b.cond]), torch.cat([a.uncond, b.uncond]), a.prompts + b.prompts, a.negative
        )


def view_label(azimuth_deg: float, elevation_deg: float) -> str:
    """DreamFusion's view bucket: "overhead", "front", "side" or "back" (rule of TOY_DOMAIN).

    Overhead when elevation > 60 degrees; otherwise, with the azimuth wrapped to (-180, 180],
    front when |azimuth| <= 45, back when |azimuth| >= 135, side in between.
    """
    if elevation_deg > 60.0:
        return "overhead"
    az = float(azimuth_deg) % 360.0  # [0, 360)
    if az > 180.0:
        az -= 360.0  # (-180, 180]
    if abs(az) <= 45.0:
        return "front"
    if abs(az) >= 135.0:
        return "back"
    return "side"


def view_prompt(prompt: str, azimuth_deg: float, elevation_deg: float) -> str:
    """``prompt`` with DreamFusion's view suffix, e.g. ``"a red cube, side view"`` (Poole et al. 2022, Sec. 3.2)."""
    return f"{prompt}, {view_label(azimuth_deg, elevation_deg)} view"
