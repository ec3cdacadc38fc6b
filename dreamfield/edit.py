"""``dreamfield edit``: change an existing scene by score distillation from it, Delta Denoising Score
(Hertz et al. 2023) or SDS (``edit.source_weight``).

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
z_src + (mu_target - mu_source): tests/test_distill.py checks both. That is also its flaw: the
source's own distance from what its prompt describes (z_src - mu_source) is carried into the edit,
so a source its prompt does not describe is pushed past the target. ``edit.source_weight`` (lambda)
weights the source branch, g = w(t) (eps_hat(z_t; y_target) - eps - lambda (eps_hat(z_src_t; y_source)
- eps)), and may anneal (``edit.source_weight_end``); lambda = 0, the toy prior's default, is SDS
from the source scene with ``guidance.space``'s objective (a toy run's: the image-space target), whose
fixed point is the target's (docs/RESULTS.md, "Edit colour"). DDS steps are always on latents.

Preservation terms (``loss.preserve``, ``edit.anchor_density``; both off by default) belong to the
objective: :class:`dreamfield.distill.objectives.DDS`. The edit defaults ship in the package
(``dreamfield/defaults/edit.yaml``), read after a run-folder source's own config.yaml.

Outputs, as for ``generate``: ``config.yaml``, ``prompt.json``, ``metrics.jsonl``, ``previews/``,
``checkpoints/``, ``timing.json``, the export (``mesh.glb``, ``turntable.mp4``, ``views.png``), and
in addition ``source.json`` (what the source was, and for a mesh how well the field fits it),
``source.pt`` (the frozen source scene, so ``--resume`` needs neither the source run nor the mesh
again) and ``before_after.png`` (source views over edited views on the same orbit).
"""

from __future__ import annotations

import copy
import time
from importlib.resources import files
from pathlib import Path
from typing import Optional, Sequence

import torch

from dreamfield.checkpoint import load_checkpoint, save_checkpoint
from dreamfield.config import Config, load_config, load_saved_config
from dreamfield.device import resolve_device
from dreamfield.distill.objectives import DDS
from dreamfield.errors import UsageError, check_prompt
from dreamfield.generate import embed_once, open_prior, toy_prompt
from dreamfield.export.video import image_grid
from dreamfield.optimize import optimize
from dreamfield.run import RunFolder, check_same_layout, export_run, find_run, load_run_scene, save_image, say
from dreamfield.scene.cameras import orbit_cameras
from dreamfield.scene.mesh_import import MESH_SUFFIXES, fit_field_to_mesh, import_mesh, silhouette_agreement
from dreamfield.scene.scene import Scene, load_scene_state, make_scene

SOURCE_SCENE = "source.pt"


def edit_defaults() -> Path:
    """The package's edit defaults (dreamfield/defaults/edit.yaml)."""
    return Path(str(files("dreamfield") / "defaults" / "edit.yaml"))


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
        say(f"warning: source and target prompts are both {tgt!r}: the DDS gradient is then zero up to "
            "render noise and the scene will barely change")
    return src, tgt


def load_source(kind: str, path: Path, files_: Sequence[str], overrides: Sequence[str]) -> tuple[Config, Scene, dict]:
    """The edit's config, the frozen source scene on its device, and the description for source.json."""
    if kind == "run":
        run, ckpt = find_run(path)
        cfg = load_config([str(run.dir / "config.yaml"), str(edit_defaults()), *files_], overrides)
        source_cfg, scene, _ = load_run_scene(path, cfg.run.device, final=False)  # edits work on density fields
        check_same_layout(source_cfg, cfg, "an edit")
        meta = run.meta()
        info = {
            "kind": "run",
            "path": str(run.dir.resolve()),
            "checkpoint": str(ckpt.resolve()),
            "step": int(load_checkpoint(ckpt)["step"]),
            "command": meta.get("command"),
            "prompt": meta.get("prompt"),
        }
        return cfg, scene, info

    cfg = load_config([str(edit_defaults()), *files_], overrides)
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
    say(
        f"imported {path.name} ({info['faces']} faces, {'closed' if info['watertight'] else 'open'}, colour from "
        f"{info['colour_source']}) into a {cfg.field.kind} field in {report.seconds:.1f} s; silhouette IoU "
        f"{agreement['iou']:.3f} over {agreement['views']} views"
    )
    if "warning" in info:
        say(f"warning: {info['warning']}")
    return cfg, scene, info


@torch.no_grad()
def before_after(cfg: Config, source: Scene, edited: Scene, path: Path, views: int, resolution: int) -> Path:
    """Source views (top row) over edited views (bottom row), Lambertian, on the preview orbit."""
    cams = orbit_cameras(views, cfg.camera.preview_elevation, cfg.camera.preview_distance, cfg.camera.preview_fov,
                         edited.device)
    rows = [s.render(cams, resolution, resolution, cfg.render, "lambertian", stratified=False).rgb for s in (source, edited)]
    return save_image(image_grid(torch.cat(rows), nrow=views), path)


def _resume(run: RunFolder, files_: Sequence[str], overrides: Sequence[str]) -> tuple[Config, Scene, Scene, str, str]:
    """An interrupted edit: its config, frozen source (source.pt), the scene to restore, and its prompts."""
    for need in ("config.yaml", "prompt.json", SOURCE_SCENE):
        if not (run.dir / need).is_file():
            raise UsageError(f"--resume {run.dir}: not an edit run folder to resume (no {need})")
    meta = run.meta()
    if meta.get("command") != "edit":
        raise UsageError(f"--resume {run.dir}: a {meta.get('command')!r} run; resume it with that command")
    # an edit saved before edit.source_weight existed was DDS throughout: resumed as that (config.BEFORE_THE_KEY)
    cfg = load_saved_config(run.dir / "config.yaml", files_, overrides)
    check_same_layout(load_saved_config(run.dir / "config.yaml"), cfg, "--resume")
    device = resolve_device(cfg.run.device)
    source = make_scene(cfg, device)
    load_scene_state(source, load_checkpoint(run.dir / SOURCE_SCENE)["scene"], run.dir / SOURCE_SCENE)
    return cfg, source, make_scene(cfg, device), meta["source_prompt"], meta["prompt"]


def edit_method(cfg: Config) -> str:
    """What the edit follows: "dds", "sds" (source weight 0 throughout) or "dds -> sds" (annealed to 0)."""
    e = cfg.edit
    end = e.source_weight if e.source_weight_end is None else e.source_weight_end
    if e.source_weight == 0 and end == 0:
        return "sds"
    return "dds" if end > 0 else "dds -> sds"


def run_edit(
    source: Optional[str],
    source_prompt: Optional[str],
    target_prompt: Optional[str],
    out: Optional[str],
    resume: Optional[str],
    files_: Sequence[str] = (),
    overrides: Sequence[str] = (),
    export: bool = True,
    progress: bool = True,
) -> RunFolder:
    """The ``edit`` command (see the module docstring); returns the run folder."""
    if resume:
        run = RunFolder(resume)
        if source or source_prompt or target_prompt:
            say("note: --resume continues the recorded edit; SOURCE and the prompts given are ignored")
        cfg, src, edited, source_prompt, target_prompt = _resume(run, files_, overrides)
    else:
        kind, path = source_kind(source)
        if source_prompt is None and kind == "run":  # default: what the source run was made for
            source_prompt = find_run(path)[0].meta().get("prompt")
        source_prompt, target_prompt = check_prompts(source_prompt, target_prompt)
        cfg, src, info = load_source(kind, path, files_, overrides)
        run = RunFolder.new(out, target_prompt, cfg.run.out)
        edited = copy.deepcopy(src)  # the edit starts at the source; the source itself stays frozen
    device, prior = open_prior(cfg)
    if cfg.prior.model is None:
        source_prompt, target_prompt = toy_prompt(source_prompt), toy_prompt(target_prompt)
    if not resume:
        run.create(cfg, {"command": "edit", "prompt": target_prompt, "source_prompt": source_prompt,
                         "method": edit_method(cfg)})
        run.write_json("source.json", info)
        save_checkpoint(run.dir / SOURCE_SCENE, {"step": 0, "scene": src.state_dict()})
    else:
        run.open_for_resume()
        run.record_overrides(cfg)
    say(f"editing {source_prompt!r} -> {target_prompt!r} ({edit_method(cfg)}) in {run.dir} on {device}")
    t0 = time.perf_counter()
    embed_once(prior, cfg, target_prompt, source_prompt)
    objective = DDS(cfg, prior, target_prompt, src, source_prompt, edited)
    edited = optimize(cfg, run, objective, device, scene=edited, resume=bool(resume), progress=progress)
    run.write_timing(time.perf_counter() - t0)
    before_after(cfg, src, edited, run.dir / "before_after.png", cfg.edit.before_after_views, cfg.export.video_resolution)
    if cfg.run.export and export:
        export_run(cfg, edited, run)
    say(f"done: {run.dir} ({time.perf_counter() - t0:.1f} s; report: {run.write_report()})")
    return run
