"""Shading of volume samples before compositing (DreamFusion, Poole et al. 2022, Sec. 3.1).

    albedo:      c = rho
    lambertian:  c = rho * (ambient + diffuse * max(0, n . l))
    textureless: c = ambient + diffuse * max(0, n . l)          (lambertian with a white albedo)

rho is the albedo, n the outward unit normal and l the unit direction from the point to the light.
With ambient + diffuse = 1 (0.35 + 0.65 by default, as in the toy domain) c stays in [0, 1].
"""

from __future__ import annotations

import torch

from dreamfield.config import RenderConfig

Tensor = torch.Tensor

SHADINGS = ("albedo", "lambertian", "textureless")


def check_shading(shading: str) -> None:
    if shading not in SHADINGS:
        raise ValueError(f"shading {shading!r} is not one of {', '.join(SHADINGS)}")


def shade(albedo: Tensor, normals: Tensor | None, light_dir: Tensor | None, shading: str, ambient: float, diffuse: float) -> Tensor:
    """Per-sample colour (N, 3) from albedo (N, 3), normals (N, 3) and light directions (N, 3).

    normals and light_dir may be None for "albedo". Equations in the module docstring.
    """
    check_shading(shading)
    if shading == "albedo":
        return albedo
    if normals is None or light_dir is None:
        raise ValueError(f"shading {shading!r} needs normals and light directions")
    lum = ambient + diffuse * (normals * light_dir).sum(dim=-1, keepdim=True).clamp(min=0.0)  # (N, 1)
    if shading == "lambertian":
        return albedo * lum
    return lum.expand_as(albedo)


def choose_shading(cfg: RenderConfig, generator: torch.Generator | None = None) -> str:
    """Draw this step's shading with probabilities proportional to p_albedo, p_lambertian, p_textureless."""
    p = torch.tensor([cfg.p_albedo, cfg.p_lambertian, cfg.p_textureless], dtype=torch.float64)  # validated: >= 0, not all 0
    device = generator.device if generator is not None else "cpu"
    u = float(torch.rand((), generator=generator, device=device, dtype=torch.float64))
    cdf = (p / p.sum()).cumsum(0)
    for name, c in zip(SHADINGS, cdf.tolist()):
        if u < c:
            return name
    return SHADINGS[int(torch.nonzero(p > 0)[-1])]  # u rounded up to 1.0: the last shading with p > 0
