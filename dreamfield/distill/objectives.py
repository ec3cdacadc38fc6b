"""The distillation objectives of the loop, one signature for all three:

    term = objective(step, out, view, generator)       -> Term(loss, pull, t, extra)

- :class:`LatentSDS`: SDS on the latents of the render (DreamFusion; ``guidance.space=latent``).
- :class:`ImageSDS`: SDS against an image-space target decoded from k DDIM steps (HiFA;
  ``guidance.space=image``, the embedded prior's default).
- :class:`DDS`: Delta Denoising Score against a frozen source scene (Hertz et al. 2023; ``edit``),
  with its preservation terms.

Each draws its timesteps and noise from the loop's generator in the same order (t, then eps), so a
run is reproduced exactly from its checkpointed RNG state. ``loss`` is the distillation term (the
loop weights it by ``loss.sds``), ``pull`` what the loop logs as ``distill_norm`` (the gradient on
the latents, or rgb - target in image space), ``extra`` the objective's own weighted terms (DDS's
preservation), added after the loop's regularisers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from dreamfield.config import Config
from dreamfield.distill.score import dds_grad, grad_to_loss, sds_grad, sds_image_loss, sds_image_target
from dreamfield.distill.timesteps import sample_timesteps
from dreamfield.prior.interface import Prior
from dreamfield.prior.text import TextEmbedding, view_prompt
from dreamfield.scene.cameras import Cameras
from dreamfield.scene.render import RenderOut
from dreamfield.scene.scene import Scene

VIEW_LABELS = ("front", "side", "back", "overhead")  # what view_label returns


@dataclass(frozen=True)
class View:
    """What one step rendered: the cameras (on the scene's device, and their host copy, which the view
    prompts read without waiting for the GPU), their shading and the render size."""

    cams: Cameras
    shading: str
    resolution: int
    host_cams: Cameras


@dataclass(frozen=True)
class Term:
    """An objective's result for one step (see the module docstring)."""

    loss: Tensor  # scalar
    pull: Tensor  # (B, ...) logged as its norm
    t: Tensor  # (B,) the step's timesteps
    extra: tuple[tuple[str, Tensor], ...] = ()


def step_texts(*prompts: str) -> list[str]:
    """Every text a step can embed for these prompts: each bare and with each view suffix."""
    return [t for p in prompts for t in (p, *(f"{p}, {v} view" for v in VIEW_LABELS))]


def prompts_for(prompt: str, cams: Cameras, view_dependent: bool) -> list[str]:
    """One prompt per camera, with DreamFusion's view suffix when ``view_dependent``."""
    if not view_dependent:
        return [prompt] * cams.c2w.shape[0]
    return [view_prompt(prompt, float(a), float(e)) for a, e in zip(cams.azimuth_deg, cams.elevation_deg)]


class _Distill:
    """What the three share: the prior, the settings, the target prompt; t, eps and text for a step."""

    def __init__(self, cfg: Config, prior: Prior, prompt: str) -> None:
        self.cfg, self.prior, self.prompt = cfg, prior, prompt

    def _noise(self, z: Tensor, step: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """t (B,) from the annealed range of the step, then eps like z (the order the RNG state expects)."""
        cfg = self.cfg
        t = sample_timesteps(z.shape[0], step, cfg.optim.steps, cfg.guidance, self.prior.schedule.num_train_timesteps,
                             generator, z.device)
        noise = torch.randn(z.shape, generator=generator).to(z.device, z.dtype, non_blocking=True)
        return t, noise

    def _text(self, prompt: str, cams: Cameras) -> TextEmbedding:
        return self.prior.embed(prompts_for(prompt, cams, self.cfg.prior.view_dependent), self.cfg.prior.negative_prompt)


class LatentSDS(_Distill):
    """SDS through the VAE encoder: g = w(t) (eps_hat(z_t) - eps) on z = encode(rgb) (DreamFusion Eq. 3)."""

    def __call__(self, step: int, out: RenderOut, view: View, generator: torch.Generator) -> Term:
        g_cfg = self.cfg.guidance
        z = self.prior.encode(out.rgb)  # (B, C, h, w), differentiable in the render
        t, noise = self._noise(z, step, generator)
        text = self._text(self.prompt, view.host_cams)
        g = sds_grad(self.prior, z, text, t, noise, self.cfg.prior.guidance_scale, g_cfg.weighting, g_cfg.grad_clip,
                     step=step)
        return Term(grad_to_loss(z, g), g, t)


class ImageSDS(_Distill):
    """SDS against decode(x0_hat) of k DDIM steps from z_t, as a weighted squared error on the render
    (HiFA, Zhu et al. 2023; see :func:`dreamfield.distill.score.sds_image_target`)."""

    def __call__(self, step: int, out: RenderOut, view: View, generator: torch.Generator) -> Term:
        with torch.no_grad():
            z = self.prior.encode(out.rgb)  # the loss lives on the image: no graph through the encoder
        t, noise = self._noise(z, step, generator)
        text = self._text(self.prompt, view.host_cams)
        target = sds_image_target(self.prior, z, text, t, noise, self.cfg.prior.guidance_scale, step=step,
                                  denoise_steps=self.cfg.guidance.denoise_steps)
        if target.shape[-2:] != out.rgb.shape[-2:]:  # (B, 3, S, S) at the prior's size -> the render's size
            target = torch.nn.functional.interpolate(target, size=out.rgb.shape[-2:], mode="area")
        loss = sds_image_loss(out.rgb, target, self.prior.schedule, t, self.cfg.guidance.weighting)
        return Term(loss, out.rgb.detach() - target, t)


class DDS(_Distill):
    """Delta Denoising Score towards ``prompt`` from the frozen ``source`` scene and its prompt.

    Every step renders the source from the same cameras with the same shading (midpoint samples),
    noises both latents with the same t and eps and follows
    g = w(t) (eps_hat(z_t; y_target) - eps - lambda (eps_hat(z_src_t; y_source) - eps)) (:func:`dds_grad`),
    lambda from ``edit.source_weight`` to ``edit.source_weight_end`` over the steps; a step at lambda = 0 is
    ``guidance.space``'s SDS objective instead (:func:`make_objective`; the source is not rendered for it).
    Its preservation terms, both off by default:

    - ``loss.preserve``: mean squared difference of the edited and the source renders. DDS has no term
      that holds what the prompts do not mention; this pulls every pixel back, the edited ones too.
    - ``edit.anchor_density``: mean |log(1 + sigma) - log(1 + sigma_src)|^2 at ``edit.anchor_points``
      uniform points of the box: keeps the geometry while the albedo is free (the log keeps dense
      interiors from dominating; most points are empty space, so it needs large weights).
    """

    def __init__(self, cfg: Config, prior: Prior, prompt: str, source: Scene, source_prompt: str, edited: Scene) -> None:
        super().__init__(cfg, prior, prompt)
        self.source, self.source_prompt, self.edited = source, source_prompt, edited
        # the objective of the steps at lambda = 0: guidance.space's (image: generate's image-space target);
        # the steps at lambda > 0 are DDS on the latents whatever guidance.space says
        self.sds = make_objective(cfg, prior, prompt)
        for p in source.field.parameters():
            p.requires_grad_(False)

    def __call__(self, step: int, out: RenderOut, view: View, generator: torch.Generator) -> Term:
        cfg = self.cfg
        lam = source_weight_at(cfg, step)
        if lam > 0 or cfg.loss.preserve > 0:
            with torch.no_grad():
                res = view.resolution
                src_out = self.source.render(view.cams, res, res, cfg.render, view.shading, stratified=False)
        if lam > 0:
            z = self.prior.encode(out.rgb)
            t, noise = self._noise(z, step, generator)
            text = self._text(self.prompt, view.host_cams)
            with torch.no_grad():
                z_src = self.prior.encode(src_out.rgb)
            source_text = self._text(self.source_prompt, view.host_cams)
            g = dds_grad(self.prior, z, z_src, text, source_text, t, noise, cfg.prior.guidance_scale,
                         cfg.guidance.weighting, cfg.guidance.grad_clip, step=step, source_weight=lam)
            term = Term(grad_to_loss(z, g), g, t)
        else:  # lambda = 0: the source branch drops out of dds_grad, which is then SDS (half the prior's work):
            term = self.sds(step, out, view, generator)  # guidance.space's objective, the same t and eps draws
        extra = []
        if cfg.loss.preserve > 0:
            extra.append(("preserve", cfg.loss.preserve * torch.mean((out.rgb - src_out.rgb) ** 2)))
        if cfg.edit.anchor_density > 0:
            extra.append(("anchor", cfg.edit.anchor_density * self._anchor(generator, out.rgb.device)))
        return Term(term.loss, term.pull, term.t, tuple(extra))

    def _anchor(self, generator: torch.Generator, device: torch.device) -> Tensor:
        bound = self.cfg.field.bound
        x = ((torch.rand(self.cfg.edit.anchor_points, 3, generator=generator) * 2 - 1) * bound).to(device, non_blocking=True)
        with torch.no_grad():
            sigma_src = self.source.field.density(x)
        return torch.mean((torch.log1p(self.edited.field.density(x)) - torch.log1p(sigma_src)) ** 2)


def source_weight_at(cfg: Config, step: int) -> float:
    """lambda of :func:`dds_grad` at ``step`` (0-based): edit.source_weight at the first step to
    edit.source_weight_end at the last (optim.steps - 1), linearly; constant where the end is None."""
    e = cfg.edit
    if e.source_weight_end is None:
        return e.source_weight
    frac = min(1.0, step / max(1, cfg.optim.steps - 1))
    return e.source_weight + frac * (e.source_weight_end - e.source_weight)


def make_objective(cfg: Config, prior: Prior, prompt: str) -> LatentSDS | ImageSDS:
    """The SDS objective that ``guidance.space`` names (``edit`` builds :class:`DDS` itself)."""
    if cfg.guidance.space == "latent":
        return LatentSDS(cfg, prior, prompt)
    return ImageSDS(cfg, prior, prompt)
