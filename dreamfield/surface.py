"""The surface stage of ``generate``: after the coarse density stage, a signed-distance grid refined with the
same distillation (see :mod:`dreamfield.scene.sdf`).

    coarse stage   optim.steps on the density field           <run>/checkpoints, metrics.jsonl, previews
      -> hand-over  sdf = distance transform of the coarse level set {blur(sigma) = surface.init_level},
                    albedo copied from the coarse field at every voxel
    surface stage  surface.steps on the SDF field              <run>/surface/checkpoints, metrics.jsonl, previews, config.yaml (the stage's)
      -> export     marching cubes at d = 0 (dreamfield.export.sdf_mesh): the rendered surface itself

Each stage checkpoints into its own folder, so ``--resume`` continues inside either one: a run whose
surface folder holds a checkpoint resumes there, otherwise the coarse stage resumes (a finished one
runs no step) and the hand-over, which is deterministic, starts the surface stage again.

The loop is :func:`dreamfield.optimize.optimize` unchanged: the stage runs it under :func:`stage_config`
(its steps, timesteps, shading, no azimuth widening, no density TV) on a scene whose field is an
:class:`~dreamfield.scene.sdf.SdfGridField`, and the eikonal term rides on the objective's ``extra``
terms (:class:`EikonalObjective`).
"""

from __future__ import annotations

import dataclasses
import math
import sys
from pathlib import Path
from typing import Callable

import torch

from dreamfield.config import Config
from dreamfield.distill.objectives import Term, View
from dreamfield.scene.background import make_background
from dreamfield.scene.scene import Scene
from dreamfield.scene.sdf import SdfGridField, lattice_gradient, sdf_from_occupancy, smooth_sdf

SURFACE_DIR = "surface"  # the stage's folder inside the run folder (a run folder of its own)
INIT_COLOUR_BAND = 3.0  # voxels: how far from the starting surface surface.init_colour_depth recolours


def _stderr(msg: str) -> None:
    print(f"dreamfield: {msg}", file=sys.stderr)


def stage_steps(cfg: Config) -> int:
    """The surface stage's steps: surface.steps, or a quarter of the coarse stage's when that is None."""
    return cfg.surface.steps if cfg.surface.steps is not None else max(1, cfg.optim.steps // 4)


def stage_config(cfg: Config) -> Config:
    """The config the loop runs the surface stage under: :func:`stage_steps` steps, t_max annealed from
    surface.t_max to surface.t_max_end over them (no high-noise start), surface.p_* shading, every azimuth from
    the first step, no density TV (the SDF has the eikonal term instead)."""
    s = cfg.surface
    return dataclasses.replace(
        cfg,
        optim=dataclasses.replace(cfg.optim, steps=stage_steps(cfg)),
        guidance=dataclasses.replace(cfg.guidance, t_max=s.t_max, t_max_end=s.t_max_end, anneal_steps=0,
                                     t_min_start=None),
        render=dataclasses.replace(cfg.render, p_albedo=s.p_albedo, p_lambertian=s.p_lambertian,
                                   p_textureless=s.p_textureless),
        camera=dataclasses.replace(cfg.camera, azimuth_widen_steps=0),
        loss=dataclasses.replace(cfg.loss, tv=0.0),
    )


def make_surface_scene(cfg: Config, device: torch.device | str) -> Scene:
    """A fresh surface scene (a sphere SDF, grey albedo; a checkpoint or :func:`hand_over` fills it)."""
    field = SdfGridField(cfg.surface, cfg.field.bound, cfg.field.bounding_radius)
    return Scene(field.to(device), make_background(cfg.render).to(device), cfg.field.bound, cfg.field.bounding_radius)


def lattice_points(resolution: int, bound: float) -> torch.Tensor:
    """The SDF lattice's voxel positions (R, R, R, 3) as (x, y, z), laid out (z, y, x), corners at +-bound."""
    axis = torch.linspace(-bound, bound, resolution)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    return torch.stack([x, y, z], dim=-1)


@torch.no_grad()
def lattice_values(field, resolution: int, bound: float, device, chunk: int = 1 << 18) -> tuple[torch.Tensor, torch.Tensor]:
    """The coarse field's density (R, R, R) and albedo (3, R, R, R) at the SDF lattice, layout (z, y, x)."""
    pts = lattice_points(resolution, bound).reshape(-1, 3)
    sigma, albedo = [], []
    for c in pts.split(chunk):
        s, a = field(c.to(device))
        sigma.append(s.float().cpu())
        albedo.append(a.float().cpu())
    r = resolution
    return torch.cat(sigma).reshape(r, r, r), torch.cat(albedo).t().reshape(3, r, r, r)


def hand_over(cfg: Config, coarse: Scene, device: torch.device | str, say: Callable[[str], None] = _stderr) -> Scene:
    """The surface scene started from the coarse one: sdf from its blurred density's level set
    surface.init_level (the one-stage export's surface), albedo logits from its albedo, its background.
    A coarse field without that level set is handed over at its mid-range level, or as a sphere when uniform
    (each with a warning through ``say``)."""
    from dreamfield.export.mesh import blur_density  # the export's blur, so the start is the one-stage mesh

    s, bound = cfg.surface, cfg.field.bound
    sigma, albedo = lattice_values(coarse.field, s.resolution, bound, device)
    blurred = blur_density(sigma, s.init_blur, bound)
    level = s.init_level
    if not bool((blurred > level).any()):  # a faint coarse field: its densest half, the export's fallback rule
        level = 0.5 * (float(blurred.min()) + float(blurred.max()))
        say(f"warning: the coarse field stays below surface.init_level={s.init_level}; handing over at {level:.3g}")
    inside = blurred.numpy() > level
    scene = make_surface_scene(cfg, device)
    if inside.any() and not inside.all():
        sdf = torch.from_numpy(smooth_sdf(sdf_from_occupancy(inside, bound), s.init_smooth, bound))
    else:  # a uniform coarse field has no surface: the fresh field's sphere
        say("warning: the coarse field has no surface to hand over; the surface stage starts from a sphere")
        sdf = scene.field.sdf_grid.detach()[0, 0].cpu()
    if s.init_colour_depth > 0:
        albedo = along_the_normal(coarse.field, sdf, albedo, bound, s.init_colour_depth, device)
    logits = torch.logit(albedo.clamp(1e-3, 1 - 1e-3))
    scene.field.set_grids(sdf.to(device), logits.to(device))
    scene.field.beta_cap = beta_cap_at(cfg, 0)
    scene.background.load_state_dict(coarse.background.state_dict())
    return scene


def along_the_normal(field, sdf: torch.Tensor, albedo: torch.Tensor, bound: float, depth: float,
                     device: torch.device | str) -> torch.Tensor:
    """albedo (3, R, R, R) with the voxels within INIT_COLOUR_BAND voxels of {sdf = 0} (sdf (R, R, R), layout
    (z, y, x), corners at +-bound) replaced by ``field``'s colour composited along the inward normal grad sdf over
    +-depth (:func:`dreamfield.export.albedo.surface_albedo`, the export's colour)."""
    from dreamfield.export.albedo import surface_albedo

    r = sdf.shape[-1]
    h = 2.0 * bound / (r - 1)
    near = sdf.abs() < INIT_COLOUR_BAND * h  # (R, R, R)
    if not bool(near.any()):
        return albedo
    points = lattice_points(r, bound)[near]  # (M, 3)
    normals = lattice_gradient(sdf[None, None].float(), bound)[0][:, near].t()  # (M, 3) as (d/dx, d/dy, d/dz)
    out = albedo.clone()
    out[:, near] = surface_albedo(field, points, normals, depth, device=device).t()
    return out


def beta_cap_at(cfg: Config, done: int) -> float:
    """The ceiling on beta for the render after ``done`` of the stage's N steps: inf before step
    k0 = N (1 - surface.beta_anneal), then beta_init (beta_end / beta_init)^((done - k0) / (N - k0)),
    geometric down to beta_end after the last step (beta_anneal 0: inf until the last step, then
    beta_end); inf without surface.beta_end."""
    s = cfg.surface
    if s.beta_end is None:
        return math.inf
    n = stage_steps(cfg)
    if done >= n:
        return s.beta_end
    k0 = n * (1.0 - s.beta_anneal)
    if done < k0:
        return math.inf
    return s.beta_init * (s.beta_end / s.beta_init) ** ((done - k0) / (n - k0))


class EikonalObjective:
    """The stage's objective: the distillation term plus surface.eikonal * field.eikonal() as an extra term.
    It also moves the field's beta ceiling on (:func:`beta_cap_at`) for the next step's render: the loop
    renders before it calls the objective, and checkpoints after, so a checkpoint after ``done`` steps and
    the ceiling the next render uses agree (hand_over sets the first, load_surface_scene a resumed one)."""

    def __init__(self, inner, field: SdfGridField, cfg: Config) -> None:
        self.inner, self.field, self.cfg = inner, field, cfg

    def __call__(self, step: int, out, view: View, generator: torch.Generator) -> Term:
        term = self.inner(step, out, view, generator)
        self.field.beta_cap = beta_cap_at(self.cfg, step + 1)  # the render that used the old one is done
        weight = self.cfg.surface.eikonal
        if weight <= 0:
            return term
        eik = ("eikonal", weight * self.field.eikonal())
        return dataclasses.replace(term, extra=(*term.extra, eik))


def load_surface_scene(cfg: Config, checkpoint: str | Path, device: torch.device | str) -> Scene:
    """The surface scene saved in ``checkpoint`` (``<run>/surface/checkpoints/last.pt``; for ``export``)."""
    from dreamfield.checkpoint import load_checkpoint
    from dreamfield.scene.scene import load_scene_state

    scene = make_surface_scene(cfg, device)
    state = load_checkpoint(checkpoint)
    load_scene_state(scene, state["scene"], checkpoint)
    scene.field.beta_cap = beta_cap_at(cfg, int(state.get("step", stage_steps(cfg))))
    return scene
