"""The optimisation loop shared by ``generate`` (SDS) and ``edit`` (DDS).

One step reads top to bottom (see ../shared/DESIGN.md):

    cameras -> render -> prior.encode -> t, eps -> SDS or DDS gradient on the latents
    -> loss = sds * grad_to_loss(z, g) + sum_k lambda_k * regulariser_k -> backward -> Adam step

A run lives in one folder: ``config.yaml`` (fully resolved), ``prompt.json``, ``metrics.jsonl``,
``previews/``, ``checkpoints/last.pt`` and ``checkpoints/step_XXXXXX.pt``. Every random draw of
the loop comes from one ``torch.Generator`` (plus torch's global RNG, used for sample jitter inside
the renderer); both are checkpointed, so ``--resume`` continues the exact same trajectory.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from dreamfield.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from dreamfield.config import Config, save_config
from dreamfield.distill import dds_grad, grad_to_loss, sample_timesteps, sds_grad, sds_image_loss, sds_image_target
from dreamfield.distill import entropy_loss, opacity_loss
from dreamfield.prior import view_prompt
from dreamfield.scene.background import make_background
from dreamfield.scene.cameras import azimuth_range_at, orbit_cameras, sample_cameras
from dreamfield.scene.field import make_field
from dreamfield.scene.occupancy import OccupancyGrid
from dreamfield.scene.render import RenderOut, choose_shading, render


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or inf; the run stops without writing a checkpoint of the bad state."""


@dataclass
class Scene:
    """What the loop optimises: the field and the background (both nn.Modules)."""

    field: torch.nn.Module
    background: torch.nn.Module

    def state_dict(self) -> dict:
        return {"field": self.field.state_dict(), "background": self.background.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])


@dataclass
class EditSource:
    """DDS editing: the frozen source scene and its prompt (Hertz et al. 2023)."""

    scene: Scene
    source_prompt: str


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return dev


def make_scene(cfg: Config, device: torch.device) -> Scene:
    return Scene(make_field(cfg.field).to(device), make_background(cfg.render).to(device))


def make_optimizer(cfg: Config, scene: Scene) -> torch.optim.Optimizer:
    groups = list(scene.field.param_groups(cfg.optim))
    bg_params = [p for p in scene.background.parameters() if p.requires_grad]
    if bg_params:
        groups.append({"params": bg_params, "lr": cfg.optim.lr_background})
    return torch.optim.Adam(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)


def resolution_at(cfg: Config, step: int) -> int:
    """Coarse-to-fine: the render size in force at ``step`` (last milestone <= step)."""
    if not cfg.coarse_to_fine.enabled:
        return cfg.render.resolution
    res = cfg.coarse_to_fine.resolutions[0]
    for m, r in zip(cfg.coarse_to_fine.milestones, cfg.coarse_to_fine.resolutions):
        if step >= m:
            res = r
    return res


def prompts_for(prompt: str, cams, view_dependent: bool) -> list[str]:
    if not view_dependent:
        return [prompt] * cams.c2w.shape[0]
    return [view_prompt(prompt, float(a), float(e)) for a, e in zip(cams.azimuth_deg, cams.elevation_deg)]


def image_grid(images: torch.Tensor, nrow: int) -> Image.Image:
    """(N, 3, H, W) in [0, 1] -> one PIL image, ``nrow`` images per row."""
    n, _, h, w = images.shape
    rows = math.ceil(n / nrow)
    canvas = torch.ones(3, rows * h, nrow * w)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i].detach().float().cpu()
    arr = (canvas.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


@torch.no_grad()
def preview(cfg: Config, scene: Scene, path: Path, views: int = 4, resolution: int = 96, occupancy=None) -> None:
    """A grid of rgb (lambertian) over normals on a fixed orbit."""
    device = next(scene.field.parameters()).device
    cams = orbit_cameras(views, cfg.camera.preview_elevation, cfg.camera.preview_distance, cfg.camera.preview_fov, device)
    out = render(scene.field, cams, resolution, resolution, cfg.render, scene.background, "lambertian", occupancy)
    normals = (out.normal * 0.5 + 0.5) * out.opacity + (1 - out.opacity)
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(torch.cat([out.rgb, normals]), nrow=views).save(path)


class Run:
    """Owns the run folder: metrics, previews, checkpoints."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)
        self.ckpt_dir = self.dir / "checkpoints"
        self.metrics_path = self.dir / "metrics.jsonl"

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop metric lines written after the checkpoint (they will be recomputed)."""
        if not self.metrics_path.is_file():
            return
        keep = [l for l in self.metrics_path.read_text().splitlines() if l.strip() and json.loads(l).get("step", -1) < step]
        self.metrics_path.write_text("".join(l + "\n" for l in keep))


def optimize(
    cfg: Config,
    prompt: str,
    run_dir: Path,
    prior,
    device: torch.device,
    resume: bool = False,
    edit: Optional[EditSource] = None,
    scene: Optional[Scene] = None,
    on_step: Optional[Callable[[int], None]] = None,
    progress: bool = True,
) -> Scene:
    """Optimise a scene for ``prompt`` (SDS), or edit ``edit.scene`` towards it (DDS).

    ``scene`` is the starting scene (a fresh blob when None; for editing, a copy of the source).
    With ``resume`` the state in ``run_dir/checkpoints/last.pt`` is restored first.
    """
    run = Run(run_dir)
    generator = torch.Generator(device="cpu").manual_seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    if scene is None:
        scene = make_scene(cfg, device)
    optimizer = make_optimizer(cfg, scene)
    # CUDA: nerfacc's occupancy grid skips empty space (packed rendering); the CPU path renders dense samples.
    occupancy = None
    if device.type == "cuda" and cfg.render.use_occupancy_grid:
        occupancy = OccupancyGrid(cfg.render, cfg.field.bound).to(device)

    start = 0
    if resume:
        state = load_checkpoint(run.ckpt_dir / "last.pt")
        scene.load_state_dict(state["scene"])
        optimizer.load_state_dict(state["optimizer"])
        if occupancy is not None and "occupancy" in state:
            occupancy.load_state_dict(state["occupancy"])
        set_rng_state(state["rng"], generator)
        start = int(state["step"])
        run.truncate_metrics(start)
    else:
        run.dir.mkdir(parents=True, exist_ok=True)
        save_config(cfg, run.dir / "config.yaml")

    total = cfg.optim.steps
    if edit is not None:
        for p in edit.scene.field.parameters():
            p.requires_grad_(False)

    def checkpoint(step: int, periodic: bool) -> None:
        state = {
            "step": step,
            "scene": scene.state_dict(),
            "optimizer": optimizer.state_dict(),
            "rng": rng_state(generator),
            "prompt": prompt,
        }
        if occupancy is not None:
            state["occupancy"] = occupancy.state_dict()
        save_checkpoint(run.ckpt_dir / "last.pt", state)
        if periodic:
            save_checkpoint(run.ckpt_dir / f"step_{step:06d}.pt", state)

    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, desc="dreamfield", unit="it")
    t_last = time.perf_counter()
    for step in bar:
        # 1. camera, shading and resolution for this step
        cams = sample_cameras(cfg.camera, cfg.guidance.batch_size, generator, device, azimuth_range_at(cfg.camera, step))
        shading = choose_shading(cfg.render, generator)
        res = resolution_at(cfg, step)

        # 2. render the scene and encode the render into the prior's latent space
        if occupancy is not None:
            occupancy.update(step, scene.field)
        out: RenderOut = render(
            scene.field, cams, res, res, cfg.render, scene.background, shading, occupancy, generator=generator
        )
        latent_space = cfg.guidance.space == "latent" or edit is not None
        with torch.set_grad_enabled(latent_space):
            z = prior.encode(out.rgb)  # (B, C, h, w); differentiable only when the loss lives on latents

        # 3. timestep and noise (shared by both DDS branches), text embeddings per view
        t = sample_timesteps(z.shape[0], step, total, cfg.guidance, prior.schedule.num_train_timesteps, generator, z.device)
        noise = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
        text = prior.embed(prompts_for(prompt, cams, cfg.prior.view_dependent), cfg.prior.negative_prompt)
        gs = cfg.prior.guidance_scale

        # 4. the distillation term: SDS on latents, SDS against an image-space target, or DDS vs the source
        if edit is not None:
            with torch.no_grad():
                src_out = render(
                    edit.scene.field, cams, res, res, cfg.render, edit.scene.background, shading, stratified=False
                )
                z_src = prior.encode(src_out.rgb)
            source_text = prior.embed(prompts_for(edit.source_prompt, cams, cfg.prior.view_dependent), cfg.prior.negative_prompt)
            g = dds_grad(prior, z, z_src, text, source_text, t, noise, gs, cfg.guidance.weighting, cfg.guidance.grad_clip, step=step)
        elif latent_space:
            g = sds_grad(prior, z, text, t, noise, gs, cfg.guidance.weighting, cfg.guidance.grad_clip, step=step)
        else:
            # (B, 3, S, S) at the prior's native size S -> the render's size (coarse-to-fine, render.resolution)
            target = sds_image_target(prior, z, text, t, noise, gs, step=step, denoise_steps=cfg.guidance.denoise_steps)
            if target.shape[-2:] != out.rgb.shape[-2:]:
                target = torch.nn.functional.interpolate(target, size=out.rgb.shape[-2:], mode="area")
            loss_distill = sds_image_loss(out.rgb, target, prior.schedule, t, cfg.guidance.weighting)
            g = out.rgb.detach() - target  # logged: the pull on the image
        if latent_space:
            loss_distill = grad_to_loss(z, g)  # backward delivers exactly g to z (DreamFusion Eq. 3)

        # 5. the loss: distillation term plus regularisers, summed explicitly with their weights
        loss_opacity = opacity_loss(out.opacity)
        loss_entropy = entropy_loss(out.opacity)
        loss_orient = out.orientation
        loss = (
            cfg.loss.sds * loss_distill
            + cfg.loss.opacity * loss_opacity
            + cfg.loss.entropy * loss_entropy
            + cfg.loss.orientation * loss_orient
        )
        if cfg.loss.tv > 0:
            loss = loss + cfg.loss.tv * scene.field.density_tv()
        if edit is not None and cfg.loss.preserve > 0:
            loss = loss + cfg.loss.preserve * torch.mean((out.rgb - src_out.rgb) ** 2)
        if edit is not None and cfg.edit.anchor_density > 0:
            # density anchoring (edit.py): |log(1 + sigma) - log(1 + sigma_src)|^2 at random points of the box
            x = ((torch.rand(cfg.edit.anchor_points, 3, generator=generator) * 2 - 1) * cfg.field.bound).to(device)
            with torch.no_grad():
                sigma_src = edit.scene.field.density(x)
            loss_anchor = torch.mean((torch.log1p(scene.field.density(x)) - torch.log1p(sigma_src)) ** 2)
            loss = loss + cfg.edit.anchor_density * loss_anchor
        if not torch.isfinite(loss):
            bar.close()
            raise NonFiniteLossError(
                f"loss is {loss.item()} at step {step} (t={t.tolist()}); stopped, last checkpoint kept in {run.ckpt_dir}"
            )

        # 6. optimiser step
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1

        # 7. log (host syncs only on logged steps), preview, checkpoint
        now = time.perf_counter()
        step_seconds, t_last = now - t_last, now
        if step % cfg.run.log_every == 0 or done == total:
            rec = {
                "step": step,
                "loss": float(loss.detach()),
                "distill_norm": float(g.norm()),
                "opacity": float(loss_opacity.detach()),
                "entropy": float(loss_entropy.detach()),
                "orientation": float(loss_orient.detach()),
                "t": int(t[0]),
                "shading": shading,
                "resolution": res,
                "sec": step_seconds,
            }
            run.log(rec)
            bar.set_postfix(loss=f"{rec['loss']:.4g}", t=rec["t"], opac=f"{rec['opacity']:.3f}")
        if cfg.run.preview_every > 0 and (done % cfg.run.preview_every == 0 or done == total):
            preview(cfg, scene, run.dir / "previews" / f"step_{done:06d}.png", occupancy=occupancy)
        periodic = cfg.run.checkpoint_every > 0 and done % cfg.run.checkpoint_every == 0
        if periodic or done == total:
            checkpoint(done, periodic)
        if on_step is not None:
            on_step(done)
    bar.close()
    return scene
