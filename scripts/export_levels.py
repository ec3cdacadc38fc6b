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


@torch.no_grad()
def blurred_density(run: Path, res: int, blur: float) -> torch.Tensor:
    """The run's field density at the res^3 cell centres of [-1, 1]^3 (indexed [x, y, z]), blurred."""
    cfg, scene, _ = load_run_scene(run, "cpu")
    if cfg.field.bound != 1.0:
        raise SystemExit(f"{run}: field.bound {cfg.field.bound}; the toy measures' grid spans [-1, 1]")
    pts = grid_points(res).float()
    sigma = torch.cat([scene.field.density(chunk) for chunk in pts.split(65536)]).reshape(res, res, res)
    return blur_density(sigma, blur, cfg.field.bound)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--levels", type=float, nargs="*", default=[2.6])
    p.add_argument("--fractions", type=float, nargs="*", default=[])
    p.add_argument("--blur", type=float, default=0.06)
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    rules = [(f"level {v:g}", "level", v) for v in a.levels] + [(f"{v:g} x max", "fraction", v) for v in a.fractions]
    if not rules:
        raise SystemExit("give --levels and/or --fractions")
    rows = []
    for run in a.runs:
        prompt, pair = run_prompt(run)
        if pair is None or not (run / "checkpoints" / "last.pt").is_file():
            print(f"skipped {run}: no toy prompt or no checkpoints/last.pt", flush=True)
            continue
        grid = blurred_density(run, a.res, a.blur).numpy()
        row = {"run": str(run), "prompt": prompt, "shape": pair[1], "max": float(grid.max()), "rules": {}}
        for name, kind, v in rules:
            level = v if kind == "level" else v * float(grid.max())
            pred, ious, _ = classify_occupancy(grid > level)
            row["rules"][name] = {"level": level, "pred": pred, "iou": ious[pair[1]]}
        rows.append(row)
        print(f"{prompt:<20} max {row['max']:4.1f}  " + "  ".join(
            f"{n}: {r['pred'][:4]} {r['iou']:.2f}" for n, r in row["rules"].items()), flush=True)
    print(f"\n{'rule':<14} {'shape acc':>9} {'mean IoU':>8}  misses   ({len(rows)} runs, blur {a.blur})")
    summary = {}
    for name, _, _ in rules:
        ok = [r["rules"][name]["pred"] == r["shape"] for r in rows]
        iou = float(np.mean([r["rules"][name]["iou"] for r in rows])) if rows else 0.0
        misses = [f"{r['shape']}->{r['rules'][name]['pred']}" for r, k in zip(rows, ok) if not k]
        summary[name] = {"shape_acc": float(np.mean(ok)) if rows else 0.0, "mean_iou": iou, "misses": misses}
        print(f"{name:<14} {summary[name]['shape_acc']:9.1%} {iou:8.3f}  {', '.join(misses)}")
    if a.json:
        a.json.write_text(json.dumps({"blur": a.blur, "res": a.res, "rows": rows, "summary": summary}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
