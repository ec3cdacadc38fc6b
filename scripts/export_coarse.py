"""The one-stage result of a two-stage run, side by side: its coarse stage's checkpoint exported as before.

A two-stage ``generate`` run's coarse stage is exactly the one-stage run of the same config and seed
(same steps, same RNG stream; the surface stage only comes after it). This writes, for each run folder,
``<run>/coarse/`` with the coarse checkpoint's mesh (density level export.threshold after
export.density_blur: the one-stage export), the run's prompt.json, and a timing.json whose optimise time
is the coarse stage's (``coarse_optimize_seconds``), so ``eval_toy.py 3d <run>/coarse ...`` scores the
one-stage baseline of the very same runs.

    python scripts/export_coarse.py outputs/eval3d_s1/*/
    python scripts/eval_toy.py 3d outputs/eval3d_s1/*/coarse --breakdown
"""

from __future__ import annotations

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


def export_coarse(run: Path) -> Path:
    out = run / "coarse"
    out.mkdir(exist_ok=True)
    # checkpoints/last.pt is the coarse stage (run.load_run_scene gives a two-stage run's surface scene instead)
    cfg, device = load_config([run / "config.yaml"]), "cpu"
    scene = make_scene(cfg, device)
    load_scene_state(scene, load_checkpoint(run / "checkpoints" / "last.pt")["scene"], run / "checkpoints" / "last.pt")
    t0 = time.perf_counter()
    try:
        info = export_asset(scene.field, cfg.export, cfg.field.bound, out / "mesh", ["glb"], device, cfg.render,
                            cfg.camera)  # the level rule and comparison of a one-stage run's own export
        write_text(out / "export.json", json.dumps(info) + "
")
    except EmptyMeshError as exc:
        print(f"{run}: no coarse mesh ({exc})")
    export_s = time.perf_counter() - t0
    shutil.copy(run / "prompt.json", out / "prompt.json")
    timing = json.loads((run / "timing.json").read_text()) if (run / "timing.json").is_file() else {}
    if timing.get("coarse_optimize_seconds") is not None:  # runs of an older generate did not record it
        coarse = {"optimize_seconds": timing["coarse_optimize_seconds"], "export_seconds": export_s}
        write_text(out / "timing.json", json.dumps(coarse) + "\n")
    return out


def main(argv=None) -> int:
    runs = [Path(p) for p in (sys.argv[1:] if argv is None else argv)]
    for run in runs:
        if not (run / "checkpoints" / "last.pt").is_file():
            print(f"{run}: no checkpoint, skipped")
            continue
        print(export_coarse(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
