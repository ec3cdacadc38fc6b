"""The ``dreamfield`` command: parse the arguments and dispatch to a flow (generate, edit, export,
sample, report, batch, demo). Nothing imports this module.

Every user-facing failure (bad config key, missing model folder, empty prompt, corrupt checkpoint,
NaN in the loss...) ends as one line on stderr and exit status 2; set ``DREAMFIELD_DEBUG=1`` to see
the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Optional, Sequence

from dreamfield import __version__
from dreamfield.batch import add_batch_parser, cmd_batch
from dreamfield.errors import UsageError, check_prompt


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
    p.add_argument("--out", default=None, help="run folder (default: <run.out>/<prompt-slug>-<time>, run.out = outputs)")
    p.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue a stopped run from its last checkpoint")
    p.add_argument("--no-export", action="store_true", help="skip mesh and video export at the end")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (exit status 2) that point at --help."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"dreamfield: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="dreamfield",
        description="Text to 3D (SDS) and 3D editing (SDS or DDS from a source scene) through a frozen latent diffusion prior.",
    )
    parser.add_argument("--version", action="version", version=f"dreamfield {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)

    g = sub.add_parser("generate", help="text to 3D by score distillation")
    g.add_argument("prompt", nargs="?", default=None, help='e.g. "a red cube" (not needed with --resume)')
    _optimise_args(g)

    e = sub.add_parser("edit", help="edit a saved scene or a mesh towards a new prompt "
                                    "(SDS from it; DDS with --set edit.source_weight=1)")
    e.add_argument("source", nargs="?", default=None,
                   help="run folder, checkpoint file, or mesh (GLB/OBJ/PLY); not needed with --resume")
    e.add_argument("--source-prompt", default=None,
                   help="what the source shows, e.g. 'a red cube' (default for a run folder: its prompt)")
    e.add_argument("--target-prompt", default=None, help="what it should become, e.g. 'a blue cube'")
    _optimise_args(e)

    x = sub.add_parser("export", help="mesh (GLB/OBJ/PLY) and turntable video of a run")
    x.add_argument("run_dir", help="a run folder made by generate or edit")
    x.add_argument("--format", action="extend", nargs="+", default=None, choices=["glb", "obj", "ply"],
                   help="one or more of glb obj ply (repeatable); default export.formats")
    x.add_argument("--threshold", type=float, default=None,
                   help="density level for marching cubes (and export.level=threshold)")
    x.add_argument("--resolution", type=int, default=None, help="marching-cubes grid per side")
    x.add_argument("--no-video", action="store_true")
    x.add_argument("--frames", type=int, default=None, help="turntable frames")
    x.add_argument("--device", default=None)
    x.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting of the run's config for this export, e.g. --set export.colour=vertex")

    s = sub.add_parser("sample", help="2D samples from the prior (DDPM / DDIM / Langevin): a check before a 3D run")
    s.add_argument("prompt")
    _common(s)
    s.add_argument("--method", default=None, choices=["ddim", "ddpm", "langevin"])
    s.add_argument("--steps", type=int, default=None)
    s.add_argument("--n", type=int, default=None, help="samples per view")
    s.add_argument("--guidance", type=float, default=None, help="classifier-free guidance (default prior.guidance_scale)")
    s.add_argument("--eta", type=float, default=None)
    s.add_argument("--views", default="front,side,back,overhead",
                   help="comma-separated view suffixes to sample, or 'none' for the bare prompt")
    s.add_argument("--out", default=None, help="folder for the PNG (default <run.out>/samples), named <slug>-<method>.png")

    r = sub.add_parser("report", help="(re)build report.html of run folders: previews, curves, turntable, 3D view; offline")
    r.add_argument("run_dirs", nargs="+", metavar="RUN")

    add_batch_parser(sub)

    d = sub.add_parser("demo", help="the README's first command: a red cube from the embedded prior, exported")
    d.add_argument("--out", default="outputs/demo-red-cube")
    d.add_argument("--device", default=None)
    return parser


# ----------------------------------------------------------------------------------------------
# commands: each turns its arguments into a config and calls one flow


def cli_overrides(args, steps_key: Optional[str] = "optim.steps") -> list[str]:
    """--set overrides plus the options that stand for config keys (--steps, --seed, --device, --model)."""
    overrides = list(args.overrides)
    if steps_key and getattr(args, "steps", None) is not None:
        overrides.append(f"{steps_key}={args.steps}")
    if getattr(args, "seed", None) is not None:
        overrides.append(f"run.seed={args.seed}")
    if getattr(args, "device", None) is not None:
        overrides.append(f"run.device={args.device}")
    if getattr(args, "model", None) is not None:
        overrides.append(f"prior.model={json.dumps(args.model)}")
    return overrides


def cmd_generate(args) -> int:
    from dreamfield.config import load_config
    from dreamfield.generate import resume_config, run_generate
    from dreamfield.run import RunFolder

    if args.resume:
        run, cfg, prompt = resume_config(args.resume, args.config, cli_overrides(args))
    else:
        prompt = check_prompt(args.prompt)
        cfg = load_config(args.config, cli_overrides(args))
        run = RunFolder.new(args.out, prompt, cfg.run.out)
    run_generate(cfg, prompt, run, resume=bool(args.resume), export=not args.no_export, progress=not args.quiet)
    return 0


def cmd_export(args) -> int:
    from dreamfield.run import export_run, find_run, load_run_scene

    run, _ = find_run(args.run_dir)
    overrides = [f"export.{key}={value}" for key, value in
                 (("threshold", args.threshold), ("resolution", args.resolution), ("video_frames", args.frames))
                 if value is not None] + (["export.level=threshold"] if args.threshold is not None else [])
    overrides += args.overrides
    cfg, scene, _ = load_run_scene(args.run_dir, args.device, overrides)
    export_run(cfg, scene, run, formats=args.format, video=not args.no_video, strict=True)
    return 0


def cmd_edit(args) -> int:
    from dreamfield.edit import run_edit

    run_edit(args.source, args.source_prompt, args.target_prompt, args.out, args.resume, args.config,
             cli_overrides(args), export=not args.no_export, progress=not args.quiet)
    return 0


def cmd_sample(args) -> int:
    from dreamfield.config import load_config
    from dreamfield.sample import VIEWS, run_sample

    prompt = check_prompt(args.prompt)
    cfg = load_config(args.config, cli_overrides(args, steps_key=None))
    views = [] if args.views.strip().lower() == "none" else [v.strip() for v in args.views.split(",") if v.strip()]
    for v in views:
        if v not in VIEWS:
            raise UsageError(f"--views: {v!r} is not one of {', '.join(VIEWS)}, none")
    sc = cfg.sample
    steps = sc.steps if args.steps is None else args.steps
    n = sc.n if args.n is None else args.n
    guidance = cfg.prior.guidance_scale if args.guidance is None else args.guidance
    eta = sc.eta if args.eta is None else args.eta
    if steps < 1 or n < 1:
        raise UsageError(f"--steps and --n must be >= 1, got {steps}, {n}")
    if not (math.isfinite(guidance) and guidance >= 0 and math.isfinite(eta) and eta >= 0):
        raise UsageError(f"--guidance and --eta must be finite and >= 0, got {guidance}, {eta}")
    out = Path(args.out) if args.out else Path(cfg.run.out) / "samples"
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: a file; sample's --out is a folder (the PNG is named <prompt>-<method>.png)")
    run_sample(cfg, prompt, views, method=args.method or sc.method, steps=steps, n=n, guidance=guidance, eta=eta,
               out=out)
    return 0


def cmd_report(args) -> int:
    from dreamfield.export.report import write_report

    for run_dir in args.run_dirs:
        print(write_report(run_dir))
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


COMMANDS = {"generate": cmd_generate, "edit": cmd_edit, "export": cmd_export, "sample": cmd_sample, "report": cmd_report,
            "batch": cmd_batch, "demo": cmd_demo}


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line argparse error
        return int(exc.code or 0)
    if args.command is None:
        parser.print_help()
        return 0
    from dreamfield.optimize import Interrupted

    try:
        for name in ("prompt", "source_prompt", "target_prompt"):
            check_text(getattr(args, name, None), name)
        return COMMANDS[args.command](args)
    except Interrupted as exc:
        print(f"dreamfield: interrupted ({exc}); resume with --resume RUN_DIR", file=sys.stderr)
        return 128 + exc.signum
    except KeyboardInterrupt:
        print("dreamfield: interrupted; runs keep their last checkpoint (resume with --resume RUN_DIR)", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure is one line; DREAMFIELD_DEBUG=1 shows the traceback
        if os.environ.get("DREAMFIELD_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, (ValueError, ArithmeticError, RuntimeError, OSError)):
            msg = f"{type(exc).__name__}: {msg}"
        print(f"dreamfield: error: {msg}", file=sys.stderr)
        return 2


def check_text(value: Optional[str], name: str) -> None:
    """A prompt that is not valid UTF-8 (bytes the shell passed through) is a usage error, not a crash later."""
    if value is None:
        return
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{name.replace('_', '-')}: not valid UTF-8 text") from None


if __name__ == "__main__":
    sys.exit(main())
