"""The run folder: the one owner of what a run writes and reads back.

    <run>/config.yaml            the fully resolved config (what actually ran)
    <run>/prompt.json            the command and its prompts
    <run>/metrics.jsonl          one JSON line per logged step
    <run>/timing.json            optimisation seconds (summed over resumes) and export seconds
    <run>/previews/step_XXXXXX.png
    <run>/checkpoints/last.pt, step_XXXXXX.pt
    <run>/mesh.glb, turntable.mp4, views.png   (the export)

Every file goes through :mod:`dreamfield.files` (temporary name + rename) or
:mod:`dreamfield.checkpoint` (the same, for checkpoints).
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

import torch
from PIL import Image

from dreamfield.checkpoint import load_checkpoint, save_checkpoint
from dreamfield.config import Config, load_saved_config, to_yaml
from dreamfield.device import resolve_device
from dreamfield.errors import UsageError
from dreamfield.export.video import image_grid
from dreamfield.files import clean_tmp, read_jsonl, write_bytes, write_text
from dreamfield.scene.cameras import orbit_cameras
from dreamfield.scene.scene import Scene, load_scene_state, make_scene
from dreamfield.scene.sdf import SdfGridField
from dreamfield.surface import SURFACE_DIR, load_surface_scene


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def say(msg: str) -> None:
    print(f"dreamfield: {msg}", file=sys.stderr)


class RunFolder:
    """Paths and writers of one run folder."""

    def __init__(self, path: str | Path) -> None:
        self.dir = Path(path)
        self.ckpt_dir = self.dir / "checkpoints"
        self.metrics_path = self.dir / "metrics.jsonl"
        self.last = self.ckpt_dir / "last.pt"

    # -- creating and reading --------------------------------------------------------------------
    @staticmethod
    def new(out: Optional[str], prompt: str, parent: str) -> "RunFolder":
        """The folder of a new run: ``out``, or ``<parent>/<prompt-slug>-<time>``; refuses a folder that
        already holds a run (UsageError). Nothing is created yet (:meth:`create` does)."""
        if out is None:
            return RunFolder(Path(parent) / f"{slugify(prompt)}-{time.strftime('%Y%m%d-%H%M%S')}")
        run = RunFolder(out)
        if run.last.exists() or (run.dir / "config.yaml").exists():
            raise UsageError(f"run folder {run.dir} already holds a run; use --resume {run.dir} or another --out")
        if run.dir.exists() and (not run.dir.is_dir() or any(run.dir.iterdir())):
            what = "a file" if not run.dir.is_dir() else "a folder with files dreamfield did not write"
            raise UsageError(f"--out {run.dir} is {what}; give a new or empty folder")
        return run

    def create(self, cfg: Config, meta: dict) -> None:
        """Write config.yaml and prompt.json of a new run (the folder is made here)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        write_text(self.dir / "config.yaml", to_yaml(cfg))
        write_text(self.dir / "prompt.json", json.dumps(meta) + "\n")

    def record_overrides(self, cfg: Config) -> None:
        """On resume: settings given now apply from here on; config.yaml is rewritten to say so, and one
        line names what changed."""
        saved = _settings(load_saved_config(self.dir / "config.yaml"))
        changed = {k: v for k, v in _settings(cfg).items() if saved.get(k) != v}
        if changed:
            write_text(self.dir / "config.yaml", to_yaml(cfg))
            say(f"resume applies {', '.join(f'{k}={v}' for k, v in changed.items())} (config.yaml updated)")

    def write_json(self, name: str, obj: dict) -> Path:
        return write_text(self.dir / name, json.dumps(obj, indent=2) + "\n")

    def meta(self) -> dict:
        """prompt.json (what the run was made for); {} when missing."""
        path = self.dir / "prompt.json"
        if not path.is_file():
            return {}
        try:
            meta = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise UsageError(f"{path}: not valid JSON") from None
        if not isinstance(meta, dict):
            raise UsageError(f"{path}: not a JSON object")
        return meta

    # -- during a run ------------------------------------------------------------------------------
    def open_for_resume(self) -> None:
        """Remove leftovers of writes that a kill interrupted (checkpoints, previews, the folder itself)."""
        for folder in (self.dir, self.ckpt_dir, self.dir / "previews"):
            clean_tmp(folder)

    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop metric lines written after the checkpoint (they will be recomputed)."""
        if not self.metrics_path.is_file():
            return
        keep = [r for r in read_jsonl(self.metrics_path) if r.get("step", -1) < step]  # a cut last line goes too
        write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in keep))

    def checkpoint(self, state: dict, periodic: bool) -> None:
        """checkpoints/last.pt, and checkpoints/step_XXXXXX.pt too when ``periodic``."""
        save_checkpoint(self.last, state)
        if periodic:
            save_checkpoint(self.ckpt_dir / f"step_{state['step']:06d}.pt", state)

    def write_timing(self, seconds: float, key: str = "optimize_seconds", accumulate: bool = True) -> None:
        """Optimisation time adds up over resumes; export time is the last one's."""
        path = self.dir / "timing.json"
        timing = json.loads(path.read_text()) if path.is_file() else {}
        timing[key] = (timing.get(key, 0.0) if accumulate else 0.0) + seconds
        write_text(path, json.dumps(timing) + "\n")

    @torch.no_grad()
    def preview(self, cfg: Config, scene: Scene, step: int, occupancy=None, views: int = 4, resolution: int = 96) -> Path:
        """previews/step_XXXXXX.png: rgb (lambertian) over normals on the fixed preview orbit."""
        cams = orbit_cameras(views, cfg.camera.preview_elevation, cfg.camera.preview_distance, cfg.camera.preview_fov,
                             scene.device)
        out = scene.render(cams, resolution, resolution, cfg.render, "lambertian", occupancy)
        normals = (out.normal * 0.5 + 0.5) * out.opacity + (1 - out.opacity)
        path = save_image(image_grid(torch.cat([out.rgb, normals]), nrow=views), self.dir / "previews" / f"step_{step:06d}.png")
        self.write_report()
        return path

    def write_report(self) -> Path:
        """report.html (:func:`dreamfield.export.report.write_report`), rebuilt at every preview and export."""
        from dreamfield.export.report import write_report

        return write_report(self.dir)


def _settings(cfg: Config) -> dict[str, object]:
    """{"section.key": value} of every setting (a list or tuple is one value)."""
    return {f"{section.name}.{f.name}": getattr(getattr(cfg, section.name), f.name)
            for section in dataclasses.fields(cfg) for f in dataclasses.fields(getattr(cfg, section.name))}


def save_image(image: Image.Image, path: Path) -> Path:
    """A PIL image written atomically as PNG."""
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return write_bytes(path, buf.getvalue())


def check_same_layout(saved: Config, cfg: Config, what: str) -> None:
    """A scene saved under ``saved`` is restored under ``cfg``: its field and background must be built alike
    (UsageError naming the keys that differ)."""
    if cfg.field != saved.field:
        diff = [k for k in vars(cfg.field) if getattr(cfg.field, k) != getattr(saved.field, k)]
        raise UsageError(f"field settings come from the saved run and cannot change in {what} "
                         f"(differ: {', '.join('field.' + k for k in diff)})")
    if cfg.render.background != saved.render.background:
        raise UsageError(f"render.background comes from the saved run ({saved.render.background!r}); "
                         f"it cannot change in {what}")


def find_run(path: str | Path) -> tuple[RunFolder, Path]:
    """A run folder or one of its checkpoint files -> (the run folder, the checkpoint to read)."""
    path = Path(path)
    if not path.exists():
        raise UsageError(f"run folder not found: {path}")
    if path.is_file():  # a checkpoint file inside a run folder
        run = RunFolder(path.parent.parent)
        ckpt = path
    else:
        run = RunFolder(path)
        ckpt = run.last
    if not (run.dir / "config.yaml").is_file():
        raise UsageError(f"{run.dir} is not a dreamfield run folder (no config.yaml)")
    return run, ckpt


def load_run_scene(path: str | Path, device_name: Optional[str] = None, overrides: Sequence[str] = (),
                   final: bool = True) -> tuple[Config, Scene, torch.device]:
    """(cfg, scene, device) of a finished or stopped run folder (or checkpoint file), from its checkpoint;
    ``overrides`` (``key=value``) are applied to its config and validated like any other. For a two-stage run
    ``final`` picks the surface stage's scene (what it exports), else the density stage's (what edit starts from)."""
    run, ckpt = find_run(path)
    device_override = [f"run.device={device_name}"] if device_name else []
    cfg = load_saved_config(run.dir / "config.yaml", (), [*device_override, *overrides])
    device = resolve_device(cfg.run.device)
    surface = run.dir / SURFACE_DIR / "checkpoints" / "last.pt"
    if final and ckpt == run.last and cfg.surface.enabled and surface.is_file():  # a two-stage run: its final scene
        return cfg, load_surface_scene(cfg, surface, device), device
    state = load_checkpoint(ckpt)
    scene = make_scene(cfg, device)
    load_scene_state(scene, state["scene"], ckpt)
    return cfg, scene, device


def export_run(cfg: Config, scene: Scene, run: RunFolder, formats: Optional[Sequence[str]] = None,
               video: bool = True, strict: bool = False) -> None:
    """The export of a run: mesh (cfg.export.formats or ``formats``), turntable videos and views.png.

    A field with nothing above the export level is a warning at the end of a run; with ``strict`` (the
    ``export`` command) it is an error before anything is written.
    """
    from dreamfield.export.mesh import EmptyMeshError, export_asset
    from dreamfield.export.sdf_mesh import extract_sdf_mesh
    from dreamfield.export.video import contact_sheet, turntable

    t0 = time.perf_counter()
    clean_tmp(run.dir)  # leftovers of an export that was killed mid-write
    try:
        # a surface scene's mesh is a level set of its SDF; a density field's, a level of its density
        extract = extract_sdf_mesh if isinstance(scene.field, SdfGridField) else None
        info = export_asset(scene.field, cfg.export, cfg.field.bound, run.dir / "mesh", formats, scene.device,
                            cfg.render, cfg.camera, extract=extract)
        run.write_json("export.json", info)
        fit = info["mesh_vs_field"] or {}
        texture = f", {info['texture_size']}^2 texture" if info["texture_size"] else ""
        say(f"mesh {', '.join(info['paths'])} ({info['faces']} faces{texture}); mesh vs field: silhouette IoU "
            f"{fit.get('silhouette_iou')}, PSNR {fit.get('psnr_db')} dB")
    except EmptyMeshError as exc:
        if strict:
            raise
        say(f"warning: no mesh exported: {exc}")
    if video:
        ex, cam = cfg.export, cfg.camera
        turntable(scene, cfg.render, run.dir / "turntable.mp4", ex.video_frames, ex.video_fps, ex.video_resolution,
                  ex.video_elevation, cam.preview_distance, cam.preview_fov, normals=ex.video_normals, gif=ex.gif)
        contact_sheet(scene, cfg.render, run.dir / "views.png", 4, ex.video_resolution, ex.video_elevation,
                      cam.preview_distance, cam.preview_fov)
    run.write_timing(time.perf_counter() - t0, "export_seconds", accumulate=False)
    run.write_report()
