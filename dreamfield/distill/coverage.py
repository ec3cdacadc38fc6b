"""A size anchor from the prior itself: how large the prompt's object is in the prior's own samples.

SDS from a blob sets the object's size in its first, high-noise steps, and the size it reaches there depends on the
prompt's colour (docs/RESULTS.md, "A size anchor from the prior's samples"); the prior's samples, drawn without
classifier-free guidance, are as large as the training images' objects. :func:`prior_area` measures that size once
per run as a projected area, and :class:`CoverageAnchor` adds

    loss.coverage * mean_b (mean(opacity_b) - loss.coverage_scale * area / (2 s_b)^2)^2,  s_b = d_b tan(fov_b / 2)

to the density stage's objective: (2 s)^2 is the area of the frame at the origin's distance d, so a camera twice as
far asks for a quarter of the coverage, and every prompt is pulled towards the size its own samples have.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from dreamfield.config import Config
from dreamfield.diffusion.sampling import sample
from dreamfield.distill.objectives import Term, View, prompts_for
from dreamfield.prior.interface import Prior
from dreamfield.scene.cameras import Cameras, sample_cameras

FOREGROUND = 0.15  # a sample's pixel is the object's when its mean |rgb - background| is at least this
CHUNK = 8  # samples drawn at once (bounds the memory of a full-size prior)


def frame_area(cams: Cameras) -> Tensor:
    """(B,) the area (2 d tan(fov_y / 2))^2 a square frame spans at the origin's distance d."""
    return (2.0 * cams.distance * torch.tan(torch.deg2rad(cams.fov_y_deg) / 2.0)) ** 2


@torch.no_grad()
def prior_area(prior: Prior, prompt: str, cfg: Config, generator: torch.Generator) -> float:
    """The object's mean projected area, coverage x frame_area, over loss.coverage_samples DDIM samples of ``prompt``
    (loss.coverage_steps steps each).

    Each sample has its own camera drawn from cfg.camera (the training cameras' distribution) and, with
    prior.view_dependent, that camera's view suffix; guidance scale loss.coverage_guidance (1: the conditional
    model alone; classifier-free guidance draws larger objects). Coverage is the share of pixels whose mean
    absolute difference from render.background_color is at least FOREGROUND. Normalising by the frame's area
    removes most of the spread that the cameras' distance and field of view put into coverage. Draws the
    cameras, then each chunk's noise, from ``generator``.
    """
    n, w = cfg.loss.coverage_samples, cfg.loss.coverage_guidance
    cams = sample_cameras(cfg.camera, n, generator, "cpu")
    texts = prompts_for(prompt, cams, cfg.prior.view_dependent)
    background = torch.tensor(cfg.render.background_color).view(1, 3, 1, 1)
    covered = []
    for i in range(0, n, CHUNK):
        text = prior.embed(texts[i:i + CHUNK], cfg.prior.negative_prompt)
        shape = (len(text), prior.latent_channels, prior.latent_size, prior.latent_size)
        z = sample(lambda x, t: prior.eps(x, t, text, w), shape, prior.schedule, steps=cfg.loss.coverage_steps,
                   generator=generator)
        img = prior.decode(z).float().cpu()  # (b, 3, S, S) in [0, 1]
        covered.append(((img - background).abs().mean(dim=1) >= FOREGROUND).float().mean(dim=(1, 2)))
    return float((torch.cat(covered) * frame_area(cams)).mean())


def coverage_loss(opacity: Tensor, target: Tensor) -> Tensor:
    """mean_b (mean accumulated opacity of image b - target_b)^2 for opacity (B, 1, H, W), target (B,) -> scalar."""
    return ((opacity.mean(dim=(1, 2, 3)) - target) ** 2).mean()


class CoverageAnchor:
    """An objective plus ``weight * coverage_loss(out.opacity, area / frame_area(cams))`` as its extra term
    "coverage"; ``area`` is the target projected area (loss.coverage_scale x :func:`prior_area`)."""

    def __init__(self, inner, area: float, weight: float) -> None:
        self.inner, self.area, self.weight = inner, area, weight

    def __call__(self, step: int, out, view: View, generator: torch.Generator) -> Term:
        term = self.inner(step, out, view, generator)
        target = (self.area / frame_area(view.host_cams)).to(out.opacity.device, out.opacity.dtype)
        anchor = ("coverage", self.weight * coverage_loss(out.opacity, target))
        return dataclasses.replace(term, extra=(*term.extra, anchor))
