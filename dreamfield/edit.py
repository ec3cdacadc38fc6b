"""``dreamfield edit``: change an existing scene with Delta Denoising Score (Hertz et al. 2023).

    dreamfield edit SOURCE --source-prompt "a red cube" --target-prompt "a blue cube"

SOURCE is a run folder (or one of its checkpoints) made by ``generate`` or an earlier ``edit``, or
a mesh file (GLB/glTF/OBJ/PLY, read as glTF Y up; see :mod:`dreamfield.scene.mesh_import`), which
is first imported into a field by fitting the field to it.

The edit. The source scene is frozen; the edited scene starts as a deep copy of it. Every step
renders both from the same camera with the same shading, encodes both, noises both latents with
the same t and eps, and follows the difference of the two guided noise predictions,

    g = w(t) (eps_hat(z_t; y_target) - eps_hat(z_src_t; y_source))

(:func:`dreamfield.distill.dds_grad`). Where the renders agree, whatever the prior would say
about them regardless of the prompt (the noisy, mode-seeking part of SDS that blurs and
over-saturates) cancels between the two terms; only the change that the prompt edit asks for
remains. With Gaussian priors the gradient has no noise at all and the edit converges to
z_src + (mu_target - mu_source): tests/test_distill.py checks both.

Preservation (both off by default; configs/edit.yaml):

- ``loss.preserve``: mean squared difference of the edited and the source renders of the step.
  DDS alone has no term that holds what the prompts don't mention; with an imperfect prior the
  residual of the two noise predictions drifts parts of the scene the edit should not touch. This
  term pulls every pixel back, the edited ones included, so its weight trades edit strength for
  fidelity (it is a mean over pixels, the distillation term a sum over latents).
- ``edit.anchor_density``: |log(1 + sigma_edit) - log(1 + sigma_source)|^2 at random points of
  the box. An appearance edit ("red" -> "blue") should not change the geometry, but the
  distillation gradient reaches the density through every rendered pixel; anchoring the density
  keeps the shape while leaving the albedo free. The log keeps dense interiors from dominating.
  It is a mean over edit.anchor_points uniform points of the box, most of them in empty space, so
  it needs large weights: editing a foggy generated red cube to blue (scripts/eval_edit.py, 150
  steps) kept a volumetric IoU with the source of 0.76 without it, 0.80 at weight 10 or 100, and
  0.90 at 1e4, still blue. An imported (sharp) cube kept 0.9999 without it.

``--method pds`` (Posterior Distillation Sampling, Koo et al. 2024) is not implemented. Its
gradient is the difference of the two "stochastic latents" (x_{t-1} - mu_phi(x_t)) / sigma_t with
x_t and x_{t-1} drawn from q(. | x_0) with noises shared between source and target. Written out,
the x_0 terms cancel exactly whenever mu_phi is the DDPM posterior mean between those two
timesteps, leaving DDS reweighted by c_0 sqrt((1 - abar_t) / abar_t) / sigma_t; the source-pulling
x_0 term of the reference code comes from taking one-step beta_t with a two-step t_prev. Adding it
faithfully means choosing which of the two to reproduce, so it is left out rather than guessed.

Outputs, as for ``generate``: ``config.yaml``, ``prompt.json``, ``metrics.jsonl``, ``previews/``,
``checkpoints/``, ``timing.json``, the export (``mesh.glb``, ``turntable.mp4``, ``views.png``), and
in addition ``source.json`` (what the source was, and for a mesh how well the field fits it),
``source.pt`` (the frozen source scene, so ``--resume`` needs neither the source run nor the mesh
again) and ``before_after.png`` (source views over edited views on the same orbit).
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path
from typing import Optional

import torch

from dreamfield.checkpoint import load_checkpoint, save_checkpoint
from dreamfield.cli import UsageError, _export, _set_threads, _write_timing, check_prompt, load_cfg, load_run_scene, new_run_dir
from dreamfield.config import Config
from dreamfield.optimize import EditSource, Scene, image_grid, make_scene, optimize, resolve_device
from dreamfield.scene.cameras import orbit_cameras
from dreamfield.scene.mesh_import import MESH_SUFFIXES, fit_field_to_mesh, import_mesh, silhouette_agreement
from dreamfield.scene.render import render

# The edit defaults: the repository's configs/edit.yaml (the package is installed editable).
EDIT_DEFAULTS = Path(__file__).resolve().parent.parent / "configs" / "edit.yaml"
SOURCE_SCENE = "source.pt"


def _say(msg: str) -> None:
    print(f"dreamfield: {msg}", file=sys.stderr)


def _edit_defaults() -> list[str]:
    if EDIT_DEFAULTS.is_file():
        return [str(EDIT_DEFAULTS)]
    _say(f"warning: {EDIT_DEFAULTS} not found; editing with the built-in defaults")
    return []


def source_kind(source: Optional[str]) -> tuple[str, Path]:
    """("run", path) for a run folder or checkpoint file, ("mesh", path) for a mesh file.

    Raises UsageError (one line) for a missing path or a file of another kind.
    """
    if source is None or not str(source).strip():
        raise UsageError("no SOURCE given: name a run folder, a checkpoint (.pt) or a mesh file (.glb, .gltf, .obj, .ply)")
    path = Path(source)
    if not path.exists():
        raise UsageError(f"source not found: {path} (give a run folder, a checkpoint .pt or a mesh .glb/.gltf/.obj/.ply)")
    if path.is_dir() or path.suffix == ".pt":
        return "run", path
    if path.suffix.lower() in MESH_SUFFIXES:
        return "mesh", path
    raise UsageError(f"source {path}: not a run folder, a checkpoint (.pt) or a mesh file ({', '.join(MESH_SUFFIXES)})")


def check_prompts(source_prompt: Optional[str], target_prompt: Optional[str]) -> tuple[str, str]:
    """Both prompts non-empty; identical prompts only warn (DDS then leaves the scene as it is)."""
    src = check_prompt(source_prompt, "--source-prompt")
    tgt = check_prompt(target_prompt, "--target-prompt")
    if src == tgt:
        _say(f"warning: source and target prompts are both {tgt!r}: the DDS gradient is then zero up to "
             "render noise and the scene will barely change")
    return src, tgt


def check_method(method: str) -> None:
    if method == "pds":
        raise UsageError("--method pds (Posterior Distillation Sampling) is not implemented; use --method dds")
    if method != "dds":
        raise UsageError(f"--method {method!r} is not one of dds, pds")


def _same_scene_layout(cfg: Config, source_cfg: Config) -> None:
    """The edited scene is a copy of the source, so its field and background must be built alike."""
    if cfg.field != source_cfg.field:
        diff = [k for k in vars(cfg.field) if getattr(cfg.field, k) != getattr(source_cfg.field, k)]
        raise UsageError(
            f"field settings come from the source run and cannot change in an edit (differ: {', '.join('field.' + k for k in diff)})"
        )
    if cfg.render.background != source_cfg.render.background:
        raise UsageError(
            f"render.background comes from the source run ({source_cfg.render.background!r}); it cannot change in an edit"
        )


def load_source(kind: str, path: Path, args) -> tuple[Config, Scene, torch.device, dict]:
    """The edit's config, the frozen source scene on its device, and the description for source.json."""
    if kind == "run":
        run_dir = path.parent.parent if path.is_file() else path
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"{run_dir} is not a dreamfield run folder (no config.yaml)")
        cfg = load_cfg(args, [str(run_dir / "config.yaml")] + _edit_defaults())
        source_cfg, scene, device = load_run_scene(path, cfg.run.device)
        _same_scene_layout(cfg, source_cfg)
        meta_path = run_dir / "prompt.json"
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        ckpt = path if path.is_file() else run_dir / "checkpoints" / "last.pt"
        info = {
            "kind": "run",
            "path": str(run_dir.resolve()),
            "checkpoint": str(ckpt.resolve()),
            "step": int(load_checkpoint(ckpt)["step"]),
            "command": meta.get("command"),
            "prompt": meta.get("prompt"),
        }
        return cfg, scene, device, info

    cfg = load_cfg(args, _edit_defaults())
    device = resolve_device(cfg.run.device)
    mesh, info = import_mesh(path, cfg)
    scene, report = fit_field_to_mesh(mesh, cfg, device, seed=cfg.run.seed)
    agreement = silhouette_agreement(scene, mesh, cfg)
    info["fit"] = {
        "field": cfg.field.kind,
        "inside_test": report.inside_test,
        "grid_resolution": report.grid_resolution,
        "inside_voxels": report.inside_voxels,
        "adam_steps": report.adam_steps,
        "final_loss": report.final_loss,
        "seconds": round(report.seconds, 3),
    }
    info["silhouette"] = agreement
    _say(
        f"imported {path.name} ({info['faces']} faces, {'closed' if info['watertight'] else 'open'}, colour from "
        f"{info['colour_source']}) into a {cfg.field.kind} field in {report.seconds:.1f} s; silhouette IoU "
        f"{agreement['iou']:.3f} over {agreement['views']} views"
    )
    if "warning" in info:
        _say(f"warning: {info['warning']}")
    return cfg, scene, device, info


@torch.no_grad()
def before_after(cfg: Config, source: Scene, edited: Scene, path: Path, views: int, resolution: int) -> Path:
    """Source views (top row) over edited views (bottom row), Lambertian, on the preview orbit."""
    device = next(edited.field.parameters()).device
    cams = orbit_cameras(views, cfg.camera.preview_elevation, cfg.camera.preview_distance, cfg.camera.preview_fov, device)
    rows = [
        render(s.field, cams, resolution, resolution, cfg.render, s.background, "lambertian", stratified=False).rgb
        for s in (source, edited)
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    image_grid(torch.cat(rows), nrow=views).save(path)
    return path


def run_edit(args) -> int:
    """The ``edit`` command (see the module docstring); returns the exit status."""
    from dreamfield.prior import load_prior

    t_start = time.perf_counter()
    if args.resume:
        run_dir = Path(args.resume)
        for need in ("config.yaml", "prompt.json", SOURCE_SCENE, "checkpoints/last.pt"):
            if not (run_dir / need).is_file():
                raise UsageError(f"--resume {run_dir}: not an edit run folder to resume (no {need})")
        meta = json.loads((run_dir / "prompt.json").read_text())
        if meta.get("command") != "edit":
            raise UsageError(f"--resume {run_dir}: a {meta.get('command')!r} run; resume it with that command")
        if args.source or args.source_prompt or args.target_prompt:
            _say("note: --resume continues the recorded edit; SOURCE and the prompts given are ignored")
        cfg = load_cfg(args, [str(run_dir / "config.yaml")])
        source_prompt, target_prompt = meta["source_prompt"], meta["prompt"]
        check_method(cfg.edit.method)
        _set_threads(cfg)
        device = resolve_device(cfg.run.device)
        source = make_scene(cfg, device)
        source.load_state_dict(load_checkpoint(run_dir / SOURCE_SCENE)["scene"])
        edited = make_scene(cfg, device)  # optimize() restores checkpoints/last.pt into it
    else:
        kind, path = source_kind(args.source)
        source_prompt = args.source_prompt
        if source_prompt is None and kind == "run":  # default: what the source run was made for
            rd = path.parent.parent if path.is_file() else path
            meta_path = rd / "prompt.json"
            source_prompt = json.loads(meta_path.read_text()).get("prompt") if meta_path.is_file() else None
        source_prompt, target_prompt = check_prompts(source_prompt, args.target_prompt)
        method = args.method or "dds"
        check_method(method)
        run_dir = new_run_dir(args.out, target_prompt)
        cfg, source, device, info = load_source(kind, path, args)
        if args.method is None:
            check_method(cfg.edit.method)
        else:
            cfg.edit.method = args.method
        cfg.edit.source_prompt, cfg.edit.target_prompt = source_prompt, target_prompt
        _set_threads(cfg)
        edited = copy.deepcopy(source)  # the edit starts at the source; the source itself stays frozen
        run_dir.mkdir(parents=True, exist_ok=True)
        meta = {"command": "edit", "prompt": target_prompt, "source_prompt": source_prompt, "method": cfg.edit.method}
        (run_dir / "prompt.json").write_text(json.dumps(meta) + "\n")
        (run_dir / "source.json").write_text(json.dumps(info, indent=2) + "\n")
        save_checkpoint(run_dir / SOURCE_SCENE, {"step": 0, "scene": source.state_dict()})

    prior = load_prior(cfg.prior.model, device, cfg.prior.dtype, cfg.prior.local_files_only, cfg.prior.channels_last)
    _say(f"editing {source_prompt!r} -> {target_prompt!r} ({cfg.edit.method}) in {run_dir} on {device}")
    t0 = time.perf_counter()
    edited = optimize(
        cfg, target_prompt, run_dir, prior, device, resume=bool(args.resume),
        edit=EditSource(source, source_prompt), scene=edited, progress=not args.quiet,
    )
    _write_timing(run_dir, time.perf_counter() - t0)
    before_after(cfg, source, edited, run_dir / "before_after.png", cfg.edit.before_after_views, cfg.export.video_resolution)
    if cfg.run.export and not args.no_export:
        _export(cfg, edited, run_dir, device)
    _say(f"done: {run_dir} ({time.perf_counter() - t_start:.1f} s)")
    return 0
