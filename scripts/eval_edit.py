"""Measure a DDS edit in the toy domain: a red cube edited to "a blue cube" should end blue and keep its shape.

    .venv/bin/python scripts/eval_edit.py                       # imported red cube, embedded toy prior
    .venv/bin/python scripts/eval_edit.py --source generate     # a red cube generated first (SDS), then edited
    .venv/bin/python scripts/eval_edit.py --set optim.steps=100 --set edit.anchor_density=1.0
    .venv/bin/python scripts/eval_edit.py --shape torus --from-colour green --from-rgb 0.5,0.5,0.5 --to-colour purple

The source is either the toy domain's red cube as a mesh (``dreamfield.toy.measures.reference_mesh``,
written as a GLB and imported with edit.keep_scale=true, so it is exactly the contract's cube) or a run
of ``dreamfield generate "a red cube"``. The edit runs through the real command (``dreamfield edit``).

Measured on the exported meshes with dreamfield.toy.measures (TOY_DOMAIN.md "Measures"):
  - source and edited: predicted shape, IoU with the prompted cube, mean visible albedo and its nearest
    table colour;
  - shape kept: volumetric IoU of the edited mesh with the source mesh (64^3 cells, no rotation);
  - wall time of the import / generation, the edit and the whole script.
Pass: edited colour == the target colour, IoU(edited, source) >= 0.8. Results go to OUT/eval_edit.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch


def _rgb(text: str) -> tuple[float, float, float]:
    try:
        rgb = tuple(float(v) for v in text.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0 <= v <= 1 for v in rgb):
        raise argparse.ArgumentTypeError(f"want r,g,b in [0, 1], got {text!r}")
    return rgb  # type: ignore[return-value]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--source", choices=["mesh", "generate"], default="mesh")
    p.add_argument("--shape", default="cube")
    p.add_argument("--from-colour", default="red")
    p.add_argument("--to-colour", default="blue")
    p.add_argument("--from-rgb", default=None, type=_rgb,
                   help="the mesh source's colour as r,g,b in [0, 1] (default: --from-colour's); a colour its prompt "
                        "does not describe, e.g. 0.5,0.5,0.5 with --from-colour green, is a mislabelled source")
    p.add_argument("--model", default=None, help="diffusers folder (default: the embedded toy prior)")
    p.add_argument("--steps", type=int, default=None, help="edit steps (default: configs/edit.yaml)")
    p.add_argument("--generate-steps", type=int, default=None, help="steps of the generated source (--source generate)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", action="append", default=[], dest="overrides", help="passed to dreamfield edit")
    p.add_argument("--out", default="outputs/eval_edit")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = p.parse_args(argv)

    from dreamfield.cli import main as dreamfield
    from dreamfield.config import load_config
    from dreamfield.export.mesh import extract_mesh
    from dreamfield.files import read_jsonl
    from dreamfield.scene.scene import make_scene
    from dreamfield.toy.domain import COLOURS, prompt
    from dreamfield.toy.measures import mesh_occupancy, reference_mesh, score_mesh

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    src_prompt, tgt_prompt = prompt(args.from_colour, args.shape), prompt(args.to_colour, args.shape)
    common = ["--seed", str(args.seed), "--quiet"] + (["--model", args.model] if args.model else [])
    t_all = time.perf_counter()

    # 1. the source: the contract's primitive as a mesh, or a generated run
    t0 = time.perf_counter()
    if args.source == "mesh":
        source = out / f"{args.from_colour}_{args.shape}.glb"
        rgb = COLOURS[args.from_colour] if args.from_rgb is None else args.from_rgb
        reference_mesh(args.shape, rgb).export(source)
        edit_extra = ["--set", "edit.keep_scale=true"]
    else:
        source = out / "source_run"
        if not (source / "checkpoints" / "last.pt").is_file():
            gen = ["generate", src_prompt, "--out", str(source)] + common
            if args.generate_steps is not None:
                gen += ["--steps", str(args.generate_steps)]
            if dreamfield(gen) != 0:
                return 1
        edit_extra = []
    t_source = time.perf_counter() - t0

    # 2. the edit, through the command
    run = out / f"edit-{args.source}-{int(time.time())}"
    cmd = ["edit", str(source), "--source-prompt", src_prompt, "--target-prompt", tgt_prompt, "--out", str(run)]
    cmd += common + edit_extra + [a for o in args.overrides for a in ("--set", o)]
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    t0 = time.perf_counter()
    if dreamfield(cmd) != 0:
        return 1
    t_edit = time.perf_counter() - t0

    # 3. measures on exported meshes: the frozen source (from source.pt) and the edit (mesh.glb)
    cfg = load_config([run / "config.yaml"])
    scene = make_scene(cfg, torch.device("cpu"))
    scene.load_state_dict(torch.load(run / "source.pt", weights_only=True)["scene"])
    src_mesh = extract_mesh(scene.field, cfg.export, cfg.field.bound)
    src_mesh.export(run / "source_mesh.glb")
    import trimesh

    edited = trimesh.load(run / "mesh.glb", force="mesh", process=False)
    s_src = score_mesh(src_mesh, args.shape, args.from_colour)
    s_edit = score_mesh(edited, args.shape, args.to_colour)
    a, b = mesh_occupancy(src_mesh, 64), mesh_occupancy(edited, 64)
    iou_kept = float((a & b).sum() / max(1, (a | b).sum()))
    metrics = read_jsonl(run / "metrics.jsonl")
    result = {
        "source": args.source,
        "prompts": [src_prompt, tgt_prompt],
        "model": args.model or "embedded toy prior",
        "steps": cfg.optim.steps,
        "overrides": args.overrides,
        "source_score": {k: s_src[k] for k in ("shape_pred", "colour_pred", "iou", "mean_rgb")},
        "edited_score": {k: s_edit[k] for k in ("shape_pred", "colour_pred", "iou", "mean_rgb")},
        "colour_error": float(np.linalg.norm(np.asarray(s_edit["mean_rgb"]) - np.asarray(COLOURS[args.to_colour]))),
        "iou_edited_vs_source": iou_kept,
        "colour_ok": s_edit["colour_pred"] == args.to_colour,
        "shape_kept": iou_kept >= 0.8,
        "seconds": {"source": round(t_source, 1), "edit": round(t_edit, 1),
                    "per_step": round(float(np.mean([m["sec"] for m in metrics[1:]] or [0.0])), 3),
                    "total": round(time.perf_counter() - t_all, 1)},
        "run": str(run),
        "device": str(cfg.run.device),
        "threads": torch.get_num_threads(),
    }
    (out / "eval_edit.json").write_text(json.dumps(result, indent=2) + "\n")
    (run / "eval_edit.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["colour_ok"] and result["shape_kept"] else 3


if __name__ == "__main__":
    sys.exit(main())
