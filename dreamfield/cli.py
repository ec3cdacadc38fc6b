"""The ``dreamfield`` command: generate, edit, export, sample, demo.

Every user-facing failure (bad config key, missing model folder, empty prompt, corrupt checkpoint,
NaN in the loss...) ends as one line on stderr and exit status 2; set ``DREAMFIELD_DEBUG=1`` to see
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

from dreamfield import __version__


class UsageError(ValueError):
    """Bad command-line input (one line)."""


# ----------------------------------------------------------------------------------------------
# argument parsing


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config (repeatable; later wins)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting, e.g. --set optim.steps=300 (repeatable)")
    p.add_argument("--model", default=None, help="diffusers Stable Diffusion folder or hub id (default: the embedded toy prior)")
    p.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    p.add_argument("--seed", type=int, default=None)


def _optimise_args(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--steps", type=int, default=None, help="optimisation steps (optim.steps)")
    p.add_argument("--out", default=None, help="run folder (default: outputs/<prompt-slug>-<time>)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--no-export", action="store_true", help="skip mesh and video export at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dreamfield",
        description="Text to 3D (SDS) and 3D editing (DDS) through a frozen latent diffusion prior.",
    )
    parser.add_argument("--version", action="version", version=f"dreamfield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    g = sub.add_parser("generate", help="text to 3D by score distillation")
    g.add_argument("prompt", nargs="?", default=None, help='e.g. "a red cube" (not needed with --resume)')
    _optimise_args(g)

    e = sub.add_parser("edit", help="edit a saved scene or a mesh by Delta Denoising Score")
    e.add_argument("source", nargs="?", default=None,
                   help="run folder, checkpoint file, or mesh (GLB/OBJ/PLY); not needed with --resume")
    e.add_argument("--source-prompt", default=None,
                   help="what the source shows, e.g. 'a red cube' (default for a run folder: its prompt)")
    e.add_argument("--target-prompt", default=None, help="what it should become, e.g. 'a blue cube'")
    e.add_argument("--method", default=None, choices=["dds", "pds"], help="edit objective (default dds)")
    _optimise_args(e)

    x = sub.add_parser("export", help="mesh (GLB/OBJ/PLY) and turntable video of a run")
    x.add_argument("run_dir", help="a run folder made by generate or edit")
    x.add_argument("--format", action="append", default=None, choices=["glb", "obj", "ply"], help="repeatable; default glb")
    x.add_argument("--threshold", type=float, default=None, help="density level for marching cubes")
    x.add_argument("--resolution", type=int, default=None, help="marching-cubes grid per side")
    x.add_argument("--no-video", action="store_true")
    x.add_argument("--frames", type=int, default=None, help="turntable frames")
    x.add_argument("--device", default=None)

    s = sub.add_parser("sample", help="2D samples from the prior (DDPM / DDIM / Langevin): a check before a 3D run")
    s.add_argument("prompt")
    _common(s)
    s.add_argument("--method", default=None, choices=["ddim", "ddpm", "langevin"])
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--n", type=int, default=None, help="samples per view")
    s.add_argument("--guidance", type=float, default=None)
    s.add_argument("--eta", type=float, default=None)
    s.add_argument("--views", default="front,side,back,overhead",
                   help="comma-separated view suffixes to sample, or 'none' for the bare prompt")
    s.add_argument("--out", default=None, help="PNG path (default outputs/samples/<slug>-<method>.png)")

    d = sub.add_parser("demo", help="the README's first command: a red cube from the embedded prior, exported")
    d.add_argument("--out", default="outputs/demo-red-cube")
    d.add_argument("--device", default=None)
    return parser


# ----------------------------------------------------------------------------------------------
# helpers


def slugify(text: str, max_len: int = 40) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:max_len].strip("-") or "run"


def check_prompt(prompt: Optional[str], what: str = "prompt") -> str:
    if prompt is None or not prompt.strip():
        raise UsageError(f"empty {what}: give a text such as \"a red cube\"")
    return prompt.strip()


def load_cfg(args, base_files: Sequence[str] = ()):
    from dreamfield.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "steps", None) is not None:
        overrides.append(f"optim.steps={args.steps}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"run.seed={args.seed}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"run.device={args.device}")
    if getattr(args, "model", None) is not None:
        overrides.append(f"prior.model={json.dumps(args.model)}")
    return load_config(list(base_files) + list(args.config), overrides)


def new_run_dir(out: Optional[str], prompt: str) -> Path:
    if out is not None:
        run_dir = Path(out)
        if (run_dir / "checkpoints" / "last.pt").exists() or (run_dir / "config.yaml").exists():
            raise UsageError(f"run folder {run_dir} already holds a run; use --resume {run_dir} or another --out")
        return run_dir
    return Path("outputs") / f"{slugify(prompt)}-{time.strftime('%Y%m%d-%H%M%S')}"


def _set_threads(cfg) -> None:
    import torch

    if cfg.run.threads > 0:
        torch.set_num_threads(cfg.run.threads)


# ----------------------------------------------------------------------------------------------
# commands


def cmd_generate(args) -> int:
    from dreamfield.optimize import optimize, resolve_device
    from dreamfield.prior import load_prior

    if args.resume:
        run_dir = Path(args.resume)
        if not (run_dir / "config.yaml").is_file():
            raise UsageError(f"--resume {run_dir}: not a run folder (no config.yaml)")
        cfg = load_cfg(args, [str(run_dir / "config.yaml")])
        meta = json.loads((run_dir / "prompt.json").read_text())
        prompt = meta["prompt"]
        if not (run_dir / "checkpoints" / "last.pt").exists():
            raise UsageError(f"--resume {run_dir}: no checkpoints/last.pt to resume from")
    else:
        prompt = check_prompt(args.prompt)
        cfg = load_cfg(args)
        run_dir = new_run_dir(args.out, prompt)
    _set_threads(cfg)
    device = resolve_device(cfg.run.device)
    prior = load_prior(cfg.prior.model, device, cfg.prior.dtype, cfg.prior.local_files_only, cfg.prior.channels_last)
    if not args.resume:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "prompt.json").write_text(json.dumps({"command": "generate", "prompt": prompt}) + "\n")
    print(f"dreamfield: generating {prompt!r} in {run_dir} on {device}", file=sys.stderr)
    t0 = time.perf_counter()
    scene = optimize(cfg, prompt, run_dir, prior, device, resume=bool(args.resume), progress=not args.quiet)
    _write_timing(run_dir, time.perf_counter() - t0)
    if cfg.run.export and not args.no_export:
        _export(cfg, scene, run_dir, device)
    print(f"dreamfield: done: {run_dir}", file=sys.stderr)
    return 0


def _write_timing(run_dir: Path, seconds: float, key: str = "optimize_seconds", accumulate: bool = True) -> None:
    """Record seconds in run_dir/timing.json: optimisation time adds up over resumes, export time is the last."""
    path = run_dir / "timing.json"
    timing = json.loads(path.read_text()) if path.is_file() else {}
    timing[key] = (timing.get(key, 0.0) if accumulate else 0.0) + seconds
    path.write_text(json.dumps(timing) + "\n")


def _export(cfg, scene, run_dir: Path, device, formats=None, video: bool = True) -> None:
    from dreamfield.export.mesh import EmptyMeshError, extract_mesh, save_mesh
    from dreamfield.export.video import contact_sheet, turntable

    t0 = time.perf_counter()
    try:
        mesh = extract_mesh(scene.field, cfg.export, cfg.field.bound, device)
        paths = save_mesh(mesh, run_dir / "mesh", formats or cfg.export.formats)
        print(f"dreamfield: mesh {', '.join(str(p) for p in paths)} ({len(mesh.faces)} faces)", file=sys.stderr)
    except EmptyMeshError as exc:
        print(f"dreamfield: warning: no mesh exported: {exc}", file=sys.stderr)
    if video:
        ex, cam = cfg.export, cfg.camera
        turntable(
            scene.field, scene.background, cfg.render, run_dir / "turntable.mp4", ex.video_frames, ex.video_fps,
            ex.video_resolution, ex.video_elevation, cam.preview_distance, cam.preview_fov,
            normals=ex.video_normals, gif=ex.gif,
        )
        contact_sheet(
            scene.field, scene.background, cfg.render, run_dir / "views.png", 4, ex.video_resolution,
            ex.video_elevation, cam.preview_distance, cam.preview_fov,
        )
    _write_timing(run_dir, time.perf_counter() - t0, "export_seconds", accumulate=False)


def load_run_scene(run_dir: Path, device_name: Optional[str] = None):
    """(cfg, scene, device) of a finished or stopped run folder, from its last checkpoint."""
    from dreamfield.checkpoint import load_checkpoint
    from dreamfield.config import load_config
    from dreamfield.optimize import make_scene, resolve_device

    run_dir = Path(run_dir)
    if not run_dir.exists():
        raise UsageError(f"run folder not found: {run_dir}")
    if run_dir.is_file():  # a checkpoint file inside a run folder
        ckpt, run_dir = run_dir, run_dir.parent.parent
    else:
        ckpt = run_dir / "checkpoints" / "last.pt"
    if not (run_dir / "config.yaml").is_file():
        raise UsageError(f"{run_dir} is not a dreamfield run folder (no config.yaml)")
    cfg = load_config([run_dir / "config.yaml"], [f"run.device={device_name}"] if device_name else [])
    device = resolve_device(cfg.run.device)
    state = load_checkpoint(ckpt)
    scene = make_scene(cfg, device)
    scene.load_state_dict(state["scene"])
    return cfg, scene, device


def cmd_export(args) -> int:
    cfg, scene, device = load_run_scene(Path(args.run_dir), args.device)
    if args.threshold is not None:
        cfg.export.threshold = args.threshold
    if args.resolution is not None:
        cfg.export.resolution = args.resolution
    if args.frames is not None:
        cfg.export.video_frames = args.frames
    _export(cfg, scene, Path(args.run_dir), device, formats=args.format, video=not args.no_video)
    return 0


def cmd_edit(args) -> int:
    from dreamfield.edit import run_edit

    return run_edit(args)


def cmd_sample(args) -> int:
    import torch

    from dreamfield.diffusion import sample
    from dreamfield.optimize import image_grid, resolve_device
    from dreamfield.prior import load_prior

    prompt = check_prompt(args.prompt)
    cfg = load_cfg(args)
    sc = cfg.sample
    method = args.method or sc.method
    steps = args.steps or sc.steps
    n = args.n or sc.n
    guidance = args.guidance if args.guidance is not None else sc.guidance_scale
    eta = args.eta if args.eta is not None else sc.eta
    _set_threads(cfg)
    device = resolve_device(cfg.run.device)
    prior = load_prior(cfg.prior.model, device, cfg.prior.dtype, cfg.prior.local_files_only, cfg.prior.channels_last)
    views = [] if args.views.strip().lower() == "none" else [v.strip() for v in args.views.split(",") if v.strip()]
    for v in views:
        if v not in ("front", "side", "back", "overhead"):
            raise UsageError(f"--views: {v!r} is not one of front, side, back, overhead, none")
    texts = [f"{prompt}, {v} view" for v in views] or [prompt]
    generator = torch.Generator(device="cpu").manual_seed(cfg.run.seed)
    rows = []
    for text in texts:
        emb = prior.embed([text] * n, cfg.prior.negative_prompt)

        def eps_fn(x_t, t, emb=emb):
            return prior.eps(x_t, t, emb, guidance)

        shape = (n, prior.latent_channels, prior.latent_size, prior.latent_size)
        z = sample(eps_fn, shape, prior.schedule, method=method, steps=steps, eta=eta, generator=generator,
                   device=prior.device, progress=True)
        rows.append(prior.decode(z.to(device)).float().cpu())
    out = Path(args.out) if args.out else Path("outputs") / "samples" / f"{slugify(prompt)}-{method}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    image_grid(torch.cat(rows), nrow=n).save(out)
    print(f"dreamfield: {len(texts)} x {n} samples ({method}, {steps} steps, guidance {guidance}) -> {out}", file=sys.stderr)
    return 0


def cmd_demo(args) -> int:
    argv = ["generate", "a red cube", "--out", args.out]
    if args.device:
        argv += ["--device", args.device]
    out = Path(args.out)
    if (out / "checkpoints" / "last.pt").exists():
        print(f"dreamfield: {out} exists; re-exporting it (delete it to generate again)", file=sys.stderr)
        return main(["export", str(out)] + (["--device", args.device] if args.device else []))
    return main(argv)


COMMANDS = {"generate": cmd_generate, "edit": cmd_edit, "export": cmd_export, "sample": cmd_sample, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        return COMMANDS[args.command](args)
    except KeyboardInterrupt:
        print("dreamfield: interrupted; the last checkpoint is kept (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130
    except (ValueError, ArithmeticError, RuntimeError, OSError) as exc:
        if os.environ.get("DREAMFIELD_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"dreamfield: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
