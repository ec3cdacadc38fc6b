"""``dreamfield generate``: text to 3D by score distillation, from a fresh blob or a stopped run.

    dreamfield generate "a red cube"              -> outputs/a-red-cube-<time>/
    dreamfield generate --resume RUN               continue exactly where RUN stopped

The objective is chosen once from ``guidance.space`` (:func:`dreamfield.distill.objectives.make_objective`);
the loop (:func:`dreamfield.optimize.optimize`) writes the run folder through :class:`dreamfield.run.RunFolder`;
with ``surface.enabled`` a surface stage follows the coarse one (:mod:`dreamfield.surface`), and the run is exported at the end (mesh, turntable, views) unless ``--no-export`` or ``run.export=false``.
"""

from __future__ import annotations

import time
from typing import Callable, Optional, Sequence

import torch

from dreamfield.checkpoint import load_checkpoint
from dreamfield.config import Config, load_saved_config
from dreamfield.device import resolve_device, set_threads
from dreamfield.distill.coverage import CoverageAnchor, prior_area
from dreamfield.distill.objectives import make_objective, step_texts
from dreamfield.errors import UsageError, check_prompt
from dreamfield.optimize import optimize
from dreamfield.prior import load_prior
from dreamfield.prior.diffusers_prior import DiffusersPrior
from dreamfield.prior.interface import Prior
from dreamfield.run import RunFolder, check_same_layout, export_run, say
from dreamfield.surface import SURFACE_DIR, EikonalObjective, hand_over, load_surface_scene, stage_config
from dreamfield.toy.domain import COLOUR_NAMES, SHAPES, normalise_prompt, unknown_words
from dreamfield.scene.scene import Scene


def resume_config(resume: str, files: Sequence[str], overrides: Sequence[str]) -> tuple[RunFolder, Config, str]:
    """A stopped generate run: its folder, its config (with ``files`` and ``overrides`` on top) and its prompt."""
    run = RunFolder(resume)
    if not (run.dir / "config.yaml").is_file():
        raise UsageError(f"--resume {run.dir}: not a run folder (no config.yaml)")
    meta = run.meta()
    if meta.get("command", "generate") != "generate" or not isinstance(meta.get("prompt"), str):
        raise UsageError(f"--resume {run.dir}: not a generate run (prompt.json: command {meta.get('command')!r})")
    cfg = load_saved_config(run.dir / "config.yaml", files, overrides)
    check_same_layout(load_saved_config(run.dir / "config.yaml"), cfg, "--resume")
    if run.last.exists():
        load_checkpoint(run.last)  # a corrupt checkpoint is refused before anything is written
    return run, cfg, check_prompt(meta["prompt"])


def packed_or_dense(cfg: Config, device: torch.device, probe: Callable[[torch.device], Optional[str]]) -> None:
    """On CUDA with render.use_occupancy_grid, keep nerfacc's packed path only if ``probe(device)`` finds it
    working (None); else one warning line and the dense path on the GPU (cfg records it). Runs before the
    prior loads, so a broken extension costs seconds, not a model load."""
    if device.type != "cuda" or not cfg.render.use_occupancy_grid:
        return
    try:
        reason = probe(device)
    except Exception as exc:  # the probe promises not to raise; a traceback must not reach the user regardless
        reason = " ".join(str(exc).split()) or type(exc).__name__
    if reason:
        say(f"warning: nerfacc's CUDA path is unavailable ({reason}); rendering with the dense path on the GPU")
        cfg.render.use_occupancy_grid = False


def open_prior(cfg: Config) -> tuple[torch.device, Prior]:
    """Threads, device, the render path (:func:`packed_or_dense`) and the prior of a run."""
    from dreamfield.scene.nerfacc_cuda import probe_packed

    set_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    packed_or_dense(cfg, device, probe_packed)
    prior = load_prior(cfg.prior.model, device, cfg.prior.dtype, cfg.prior.local_files_only, cfg.prior.channels_last)
    return device, prior


def embed_once(prior: Prior, cfg: Config, *prompts: str) -> None:
    """Embed every text the run's steps can ask for, then move a diffusers prior's text encoder off the GPU
    (the embeddings stay cached on the device)."""
    prior.embed(step_texts(*prompts), cfg.prior.negative_prompt)
    if isinstance(prior, DiffusersPrior):
        prior.offload_text_encoder()


def run_generate(cfg: Config, prompt: str, run: RunFolder, resume: bool = False, export: bool = True,
                 progress: bool = True) -> Scene:
    """Optimise a scene for ``prompt`` into ``run`` (created here unless resuming), then export it."""
    device, prior = open_prior(cfg)
    if cfg.prior.model is None:
        prompt = toy_prompt(prompt)
    meta = {"command": "generate", "prompt": prompt}
    if not resume:
        coverage = coverage_target(cfg, prior, prompt, meta)
        run.create(cfg, {**meta, "coverage_area": coverage} if coverage is not None else meta)
    else:
        run.open_for_resume()
        run.record_overrides(cfg)
        say(f"resuming {run.dir} " + (f"from {run.last}" if run.last.exists() else "from step 0 (no checkpoint yet)"))
    say(f"generating {prompt!r} in {run.dir} on {device}")
    embed_once(prior, cfg, prompt)
    t0 = time.perf_counter()
    # the coarse density stage, then (surface.enabled) the surface stage; a run resumed inside the surface
    # stage skips the coarse one (its checkpoint is final)
    in_surface = cfg.surface.enabled and resume and surface_folder(run).last.exists()
    scene = None
    if not in_surface:
        objective = make_objective(cfg, prior, prompt)
        if resume:
            coverage = coverage_target(cfg, prior, prompt, run.meta())
        if coverage is not None:
            objective = CoverageAnchor(objective, cfg.loss.coverage_scale * coverage, cfg.loss.coverage)
        scene = optimize(cfg, run, objective, device, resume=resume, progress=progress)
    if cfg.surface.enabled:
        if not in_surface:  # the coarse stage's share, for a side-by-side with one-stage runs
            run.write_timing(time.perf_counter() - t0, "coarse_optimize_seconds")
        scene = run_surface_stage(cfg, run, prior, prompt, scene, device, resume=resume, progress=progress)
    run.write_timing(time.perf_counter() - t0)
    if cfg.run.export and export:
        export_run(cfg, scene, run)
    say(f"done: {run.dir} (report: {run.write_report()})")
    return scene


def coverage_target(cfg: Config, prior: Prior, prompt: str, meta: dict) -> Optional[float]:
    """The projected area of the prior's samples of ``prompt`` (:func:`prior_area`), for loss.coverage; None when
    the term is off. A run records it in prompt.json ("coverage_area"); a resumed run reads it from ``meta`` (its
    prompt.json), so the resumed steps see the value the first ones saw."""
    if cfg.loss.coverage <= 0:
        return None
    if isinstance(meta.get("coverage_area"), (int, float)):
        return float(meta["coverage_area"])
    t0 = time.perf_counter()
    area = prior_area(prior, prompt, cfg, torch.Generator().manual_seed(cfg.run.seed))
    say(f"size anchor: the object's projected area in {cfg.loss.coverage_samples} of the prior's samples is "
        f"{area:.3f} ({time.perf_counter() - t0:.1f} s)")
    return area


# -- the surface stage (dreamfield.surface): its folder, its loop, its export -------------------------------
def surface_folder(run: RunFolder) -> RunFolder:
    """The surface stage's own run folder inside the run: checkpoints, metrics, previews, the stage's config."""
    return RunFolder(run.dir / SURFACE_DIR)


def run_surface_stage(cfg: Config, run: RunFolder, prior, prompt: str, coarse: Optional[Scene],
                      device, resume: bool = False, progress: bool = True) -> Scene:
    """The surface stage in ``run/surface``: resumed from its checkpoint when there is one, else handed over
    from ``coarse`` (needed then). Returns the refined surface scene."""
    folder = surface_folder(run)
    stage = stage_config(cfg)
    resume_here = resume and folder.last.exists()
    if resume_here:
        folder.open_for_resume()
        scene = load_surface_scene(cfg, folder.last, device)  # the loop restores its optimiser and RNG there too
        say(f"resuming the surface stage from {folder.last}")
    else:
        if coarse is None:
            raise RuntimeError("the surface stage needs the coarse scene to start from")
        folder.create(stage, {"command": "generate", "prompt": prompt, "stage": "surface"})  # what the stage runs under
        folder.truncate_metrics(0)
        t0 = time.perf_counter()
        scene = hand_over(cfg, coarse, device, say)
        say(f"surface stage: {cfg.surface.resolution}^3 SDF from the coarse level set in {time.perf_counter() - t0:.1f} s")
    objective = EikonalObjective(make_objective(stage, prior, prompt), scene.field, cfg)
    return optimize(stage, folder, objective, device, scene=scene, resume=resume_here, progress=progress)


def toy_prompt(prompt: str) -> str:
    """The prompt as the embedded prior reads it (normalised), with one warning line for words it does not know."""
    norm = normalise_prompt(prompt)
    unknown = unknown_words(norm)
    if unknown:
        say(f"warning: the embedded toy prior does not know {', '.join(repr(w) for w in unknown)}: it knows "
            f"'a {{colour}} {{shape}}' with colours {', '.join(COLOUR_NAMES)} and shapes {', '.join(SHAPES)}; "
            "for other prompts load a full model with --model PATH")
    return norm


