"""Which marching-cubes level suits SDS fields? Score finished toy runs at many export levels at once.

For each run folder (``checkpoints/last.pt`` + ``config.yaml`` + ``prompt.json`` of a toy prompt) the field's
density is sampled at the cell centres of the toy measures' grid (``--res``, 64 as in ``score_mesh``),
blurred as ``export.density_blur`` does (``--blur``, world units), and thresholded by each rule:

* ``--levels L ...``: a fixed density level (``export.threshold=L``);
* ``--fractions a ...``: ``a`` times the blurred grid's maximum (``export.threshold=null`` is a = 0.5 of the
  mid-range, capped at 5: see dreamfield/export/mesh.py), a level that follows each field's own core density.

The occupancy is scored like an exported mesh (shape = the primitive of best IoU over z-rotations, IoU with the
prompted one), without building meshes, so dozens of rules cost seconds per run. The figures steer the export
default; the reported ones come from real exports (``scripts/eval_toy.py 3d``).

    python scripts/export_levels.py outputs/val_s1/a-*/ --levels 2 2.6 --fractions 0.5 0.6 --json levels.json

With ``--coarse`` a two-stage run is read at its density stage: each rule is then a hand-over start
(``surface.init_blur``, ``surface.init_level``), which the surface stage mostly keeps.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
for p in (str(REPO),):
    if p not in sys.path:
        sys.path.insert(0, p)

from dreamfield.run import load_run_scene  # noqa: E402
from dreamfield.export.mesh import blur_density  # noqa: E402
from dreamfield.toy.measures import classify_occupancy, grid_points  # noqa: E402
from dreamfield.toy.evaluate import run_prompt  # noqa: E402


LOG_FLOOR = 1e-4  # blurred(log=True): sigma below this counts as this (log sigma is -inf at 0)


@torch.no_grad()
def field_density(run: Path, res: int, final: bool = True) -> torch.Tensor:
    """The run's field density at the res^3 cell centres of [-1, 1]^3 (indexed [x, y, z]); ``final=False``: a
    two-stage run's density stage (what the surface stage's hand-over cuts at surface.init_level)."""
    cfg, scene, _ = load_run_scene(run, "cpu", final=final)
    if cfg.field.bound != 1.0:
        raise SystemExit(f"{run}: field.bound {cfg.field.bound}; the toy measures' grid spans [-1, 1]")
    pts = grid_points(res).float()
    return torch.cat([scene.field.density(chunk) for chunk in pts.split(65536)]).reshape(res, res, res)


def blurred(sigma: torch.Tensor, blur: float, log: bool) -> torch.Tensor:
    """export.density_blur's Gaussian of sigma, or with ``log`` of log sigma (floored at LOG_FLOOR) mapped back
    by exp: a geometric-mean blur, which leaves the level set of a field log-linear across a flat surface where
    it is while the linear blur moves it outward by an amount set by the inside's density."""
    if not log:
        return blur_density(sigma, blur, 1.0)
    return torch.exp(blur_density(sigma.clamp_min(LOG_FLOOR).log(), blur, 1.0))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--levels", type=float, nargs="*", default=[2.6])
    p.add_argument("--fractions", type=float, nargs="*", default=[])
    p.add_argument("--blur", type=float, nargs="+", default=[0.06], help="one or more blurs (world units)")
    p.add_argument("--log", action="store_true", help="blur log sigma instead of sigma (see blurred())")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--coarse", action="store_true",
                   help="a two-stage run's density stage, the surface stage's starting shape (surface.init_*)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    rules = [(f"b{b:g} level {v:g}", b, "level", v) for b in a.blur for v in a.levels] + [
        (f"b{b:g} {v:g} x max", b, "fraction", v) for b in a.blur for v in a.fractions]
    if not rules:
        raise SystemExit("give --levels and/or --fractions")
    rows = []
    for run in a.runs:
        prompt, pair = run_prompt(run)
        if pair is None or not (run / "checkpoints" / "last.pt").is_file():
            print(f"skipped {run}: no toy prompt or no checkpoints/last.pt", flush=True)
            continue
        sigma = field_density(run, a.res, final=not a.coarse)
        grids = {b: blurred(sigma, b, a.log).numpy() for b in a.blur}
        row = {"run": str(run), "prompt": prompt, "shape": pair[1], "max": float(sigma.max()), "rules": {}}
        for name, b, kind, v in rules:
            grid = grids[b]
            level = v if kind == "level" else v * float(grid.max())
            pred, ious, _ = classify_occupancy(grid > level)
            row["rules"][name] = {"level": level, "pred": pred, "iou": ious[pair[1]]}
        rows.append(row)
        print(f"{prompt:<20} max {row['max']:4.1f}  " + "  ".join(
            f"{n}: {r['pred'][:4]} {r['iou']:.2f}" for n, r in row["rules"].items()), flush=True)
    shapes = sorted({r["shape"] for r in rows})
    print(f"\n{'rule':<18} {'shape acc':>9} {'mean IoU':>8}  " + " ".join(f"{s[:5]:>5}" for s in shapes)
          + f"  misses   ({len(rows)} runs, {'log ' if a.log else ''}blur)")
    summary = {}
    for name, _, _, _ in rules:
        ok = [r["rules"][name]["pred"] == r["shape"] for r in rows]
        iou = float(np.mean([r["rules"][name]["iou"] for r in rows])) if rows else 0.0
        misses = [f"{r['shape']}->{r['rules'][name]['pred']}" for r, k in zip(rows, ok) if not k]
        per = {s: float(np.mean([r["rules"][name]["iou"] for r in rows if r["shape"] == s])) for s in shapes}
        summary[name] = {"shape_acc": float(np.mean(ok)) if rows else 0.0, "mean_iou": iou, "per_shape_iou": per,
                         "misses": misses}
        print(f"{name:<18} {summary[name]['shape_acc']:9.1%} {iou:8.3f}  " + " ".join(f"{per[s]:5.3f}" for s in shapes)
              + f"  {', '.join(misses)}")
    if a.json:
        a.json.write_text(json.dumps({"blur": a.blur, "log": a.log, "res": a.res, "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
