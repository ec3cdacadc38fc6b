"""Background colour seen where the volume is transparent: bg(directions (..., 3)) -> rgb (..., 3)."""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamfield.config import RenderConfig

Tensor = torch.Tensor


class ConstantBackground(nn.Module):
    """The same colour in every direction; no parameters."""

    def __init__(self, color: tuple[float, float, float]) -> None:
        super().__init__()
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32))

    def forward(self, directions: Tensor) -> Tensor:
        return self.color.to(directions).expand(*directions.shape[:-1], 3)


class MLPBackground(nn.Module):
    """A small MLP on the ray direction (DreamFusion's learned environment map).

    directions (..., 3) unit -> [d, sin(2^k pi d), cos(2^k pi d)] for k < n_freqs -> 32 -> ReLU -> 3 -> sigmoid.
    The last layer starts at zero weight with its bias at logit(background_color), so the first
    renders see the configured colour.
    """

    def __init__(self, color: tuple[float, float, float], n_freqs: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.register_buffer("freqs", (2.0 ** torch.arange(n_freqs, dtype=torch.float32)) * math.pi, persistent=False)
        in_dim = 3 + 6 * n_freqs
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, 3))
        last = self.net[-1]
        assert isinstance(last, nn.Linear)
        nn.init.zeros_(last.weight)
        c = torch.tensor(color, dtype=torch.float32).clamp(0.01, 0.99)
        with torch.no_grad():
            last.bias.copy_(torch.log(c / (1 - c)))

    def forward(self, directions: Tensor) -> Tensor:
        d = directions
        ang = d[..., None, :] * self.freqs[:, None]  # (..., F, 3)
        enc = torch.cat([d, torch.sin(ang).flatten(-2), torch.cos(ang).flatten(-2)], dim=-1)
        return torch.sigmoid(self.net(enc))


def make_background(cfg: RenderConfig) -> nn.Module:
    """cfg.background: "constant" (cfg.background_color) or "mlp" (learned, starts at that colour)."""
    if cfg.background == "constant":
        return ConstantBackground(tuple(cfg.background_color))
    if cfg.background == "mlp":
        return MLPBackground(tuple(cfg.background_color))
    raise ValueError(f"render.background: {cfg.background!r} is not one of constant, mlp")
