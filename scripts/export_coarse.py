"""The density stage of runs exported beside them, with any export settings: one-stage baselines and A/B
comparisons of export settings on the very same runs.

A two-stage ``generate`` run's coarse stage is exactly the one-stage run of the same config and seed
(same steps, same RNG stream; the surface stage only comes after it), and ``checkpoints/last.pt`` holds it;
in a one-stage run it is the run itself. This writes, for each run folder, ``<run>/<name>/`` (default
``coarse``) with that checkpoint's mesh.glb exported as a one-stage run exports (the run's config, plus
``--set`` overrides), its export.json, the run's prompt.json, and a timing.json whose optimise time is
the density stage's, so ``eval_toy.py 3d <run>/<name> ...`` scores it.

    python scripts/export_coarse.py outputs/eval3d_s1/*/
    python scripts/eval_toy.py 3d outputs/eval3d_s1/*/coarse --breakdown
    python scripts/export_coarse.py RUNS --name threshold --set export.level=threshold   # the old export level
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dreamfield.checkpoint import load_checkpoint  # noqa: E402
from dreamfield.config import load_config  # noqa: E402
from dreamfield.export.mesh import EmptyMeshError, export_asset  # noqa: E402
from dreamfield.files import write_text  # noqa: E402
from dreamfield.scene.scene import load_scene_state, make_scene  # noqa: E402


def export_coarse(run: Path, name: str = "coarse", overrides: tuple[str, ...] = ()) -> Path:
    out = run / name
    out.mkdir(exist_ok=True)
    # checkpoints/last.pt is the density stage (run.load_run_scene gives a two-stage run's surface scene instead)
    cfg, device = load_config([run / "config.yaml"], list(overrides)), "cpu"
    scene = make_scene(cfg, device)
    load_scene_state(scene, load_checkpoint(run / "checkpoints" / "last.pt")["scene"], run / "checkpoints" / "last.pt")
    t0 = time.perf_counter()
    try:
        info = export_asset(scene.field, cfg.export, cfg.field.bound, out / "mesh", ["glb"], device, cfg.render,
                            cfg.camera)  # the level rule and comparison of a one-stage run's own export
        write_text(out / "export.json", json.dumps(info) + "\n")
    except EmptyMeshError as exc:
        print(f"{run}: no mesh ({exc})")
    export_s = time.perf_counter() - t0
    shutil.copy(run / "prompt.json", out / "prompt.json")
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
    optimise = timing.get("coarse_optimize_seconds")
    if optimise is None and not cfg.surface.enabled:
        optimise = timing.get("optimize_seconds")  # a one-stage run: its whole optimisation
    if optimise is not None:  # runs of an older two-stage generate did not record their coarse time
        write_text(out / "timing.json", json.dumps({"optimize_seconds": optimise, "export_seconds": export_s}) + "\n")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders")
    p.add_argument("--name", default="coarse", help="sub-folder to write (default: coarse)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the export, e.g. export.level=threshold (repeatable)")
    a = p.parse_args(argv)
    for run in a.runs:
        if not (run / "checkpoints" / "last.pt").is_file():
            print(f"{run}: no checkpoint, skipped")
            continue
        print(export_coarse(run, a.name, tuple(a.overrides)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
