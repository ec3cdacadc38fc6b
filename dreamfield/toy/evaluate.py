"""The toy world's 3D evaluation: which run folders to make, and how their exported meshes score.

Scores follow TOY_DOMAIN.md's measures (:func:`dreamfield.toy.measures.score_mesh`: shape by best volumetric
IoU over z-rotations, colour of the visible surface), per run and summed up overall, for the held-out and
trained pairs, per shape and per colour (with the mean colour error, the RGB distance of the mean visible
albedo to the spec colour, and the surface-area ratio to the primitive). ``scripts/eval_toy.py 3d`` prints
them; ``dreamfield batch`` makes the runs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import trimesh

from dreamfield.toy.domain import ALL_PAIRS, COLOUR_NAMES, COLOURS, HELD_OUT, SHAPES

# 12 prompts for the 3D table: every held-out pair, and one trained pair per shape (a colour each).
TRAINED_3D = (("green", "sphere"), ("red", "cube"), ("blue", "cylinder"), ("orange", "cone"),
              ("yellow", "torus"), ("purple", "pyramid"))
EVAL_3D = tuple(HELD_OUT) + TRAINED_3D
ALL_3D = ALL_PAIRS


_WORD = re.compile(r"[a-z]+")


def find_pair(text: str):
    """The (colour, shape) named in a prompt or a folder slug ("a-red-cube-20260101"), or None."""
    words = _WORD.findall(text.lower())
    colours = [w for w in words if w in COLOURS]
    shapes = [w for w in words if w in SHAPES]
    return (colours[0], shapes[0]) if colours and shapes else None


def run_prompt(run: Path):
    """The prompt of a run folder (prompt.json written by ``dreamfield generate``/``edit``; for an edit,
    the target prompt), else the folder name. Returns (prompt text, (colour, shape) or None)."""
    candidates = []
    meta = run / "prompt.json"
    if meta.is_file():
        data = json.loads(meta.read_text())
        candidates += [data[k] for k in ("target_prompt", "prompt") if isinstance(data.get(k), str)]
    candidates.append(run.name)
    for c in candidates:
        pair = find_pair(c)
        if pair:
            return c, pair
    return candidates[0], None


def run_wall_time(run: Path):
    """Seconds of optimisation plus export, from timing.json written by the CLI, or None."""
    timing = run / "timing.json"
    if not timing.is_file():
        return None
    data = json.loads(timing.read_text())
    return float(data.get("optimize_seconds", 0.0)) + float(data.get("export_seconds", 0.0))


def score_runs(runs: list[Path], wall_times: dict | None = None) -> dict:
    from dreamfield.toy.measures import load_mesh, score_mesh

    rows = []
    for run in runs:
        mesh_path = run if run.suffix in (".glb", ".obj", ".ply") else run / "mesh.glb"
        if not mesh_path.is_file() and run.is_dir():
            found = sorted(run.glob("*.glb")) + sorted(run.glob("*.obj")) + sorted(run.glob("*.ply"))
            mesh_path = found[0] if found else mesh_path
        folder = run if run.is_dir() else run.parent
        prompt, pair = run_prompt(folder)
        row = {"run": str(run), "prompt": prompt}
        if pair is None:
            row["error"] = "no toy prompt found (expected a colour and a shape word)"
        elif not mesh_path.is_file():
            row["error"] = f"no mesh at {mesh_path}"
        else:
            r = score_mesh(load_mesh(mesh_path), pair[1], pair[0])
            row.update(colour=pair[0], shape=pair[1], held_out=pair in HELD_OUT, **r)
        wall = (wall_times or {}).get(str(run), run_wall_time(folder))
        row["wall_s"] = wall
        rows.append(row)
    scored = [r for r in rows if "error" not in r]

    def figures(sel):
        if not sel:
            return None
        return {"shape_acc": round(float(np.mean([r["shape_ok"] for r in sel])), 4),
                "colour_acc": round(float(np.mean([r["colour_ok"] for r in sel])), 4),
                "mean_iou": round(float(np.mean([r["iou"] for r in sel])), 4),
                "objects": len(sel)}

    walls = [r["wall_s"] for r in rows if r.get("wall_s") is not None]
    return {"rows": rows, "overall": figures(scored), "held_out": figures([r for r in scored if r["held_out"]]),
            "trained": figures([r for r in scored if not r["held_out"]]),
            "mean_wall_s": round(float(np.mean(walls)), 1) if walls else None}


_REF_AREA: dict = {}


def surface_area_ratio(run: Path, shape: str) -> float | None:
    """Surface area of a run's mesh over that of the prompted primitive (toy.measures.reference_mesh)."""
    from dreamfield.toy.measures import load_mesh, reference_mesh

    path = run if run.suffix in (".glb", ".obj", ".ply") else run / "mesh.glb"
    if not path.is_file():
        return None
    if shape not in _REF_AREA:
        _REF_AREA[shape] = float(reference_mesh(shape, res=128).area)
    mesh = load_mesh(path)
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry()
    return float(mesh.area) / _REF_AREA[shape]


def breakdown(rows: list[dict]) -> dict:
    """Per shape and per colour (and overall): shape/colour accuracy, mean IoU, mean colour error (RGB distance
    of the mean visible albedo to the spec colour), mean surface-area ratio to the primitive, mean wall time."""
    scored = [r for r in rows if "error" not in r]
    for r in scored:
        rgb = r.get("mean_rgb")
        r["colour_err"] = None if rgb is None else float(np.linalg.norm(np.subtract(rgb, COLOURS[r["colour"]])))
        r["area_ratio"] = surface_area_ratio(Path(r["run"]), r["shape"])

    def figures(sel):
        def mean(key):
            vals = [float(r[key]) for r in sel if r.get(key) is not None]
            return round(float(np.mean(vals)), 4) if vals else None

        return {"objects": len(sel), "shape_acc": mean("shape_ok"), "colour_acc": mean("colour_ok"),
                "mean_iou": mean("iou"), "colour_err": mean("colour_err"), "area_ratio": mean("area_ratio"),
                "wall_s": mean("wall_s")}

    return {"by_shape": {s: figures([r for r in scored if r["shape"] == s]) for s in SHAPES},
            "by_colour": {c: figures([r for r in scored if r["colour"] == c]) for c in COLOUR_NAMES},
            "all": figures(scored)}
