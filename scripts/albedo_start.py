"""What the grey albedo start costs a colour in 3D: one density stage with the albedo grid started at a colour.

``generate`` starts the grid field's albedo logits at 0 (grey 0.5) everywhere. This runs the same density stage
(``configs/one_stage.yaml`` plus ``--set``; the same seed draws the same cameras, shadings, t and noise) from
the same blob, with the albedo started at the toy colour table's value for the prompt's colour (``--colour
prompt``, an oracle) or at given ``R,G,B`` values, and keeps the run folder under ``--out``
(``metric_windows.py`` reads its opacity, ``export_levels.py`` or ``dreamfield export`` its field).
``--colour 0.5,0.5,0.5`` is ``generate``'s own start.

    python scripts/albedo_start.py "a red cube" --colour prompt --out DIR --set run.seed=5
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dreamfield.config import load_config  # noqa: E402
from dreamfield.distill.objectives import make_objective  # noqa: E402
from dreamfield.optimize import optimize  # noqa: E402
from dreamfield.prior import load_prior  # noqa: E402
from dreamfield.run import RunFolder, slugify  # noqa: E402
from dreamfield.scene.scene import make_scene  # noqa: E402
from dreamfield.toy.domain import COLOURS, parse_prompt  # noqa: E402


def start_colour(prompt: str, colour: str) -> tuple[float, float, float]:
    if colour == "prompt":
        pair = parse_prompt(prompt)
        if pair is None:
            raise SystemExit(f"albedo_start.py: --colour prompt needs a toy prompt ('a <colour> <shape>'), "
                             f"got {prompt!r}")
        return COLOURS[pair[0]]
    try:
        rgb = tuple(float(v) for v in colour.split(","))
    except ValueError:
        rgb = ()
    if len(rgb) != 3 or not all(0.0 < v < 1.0 for v in rgb):
        raise SystemExit(f"albedo_start.py: --colour wants 'prompt' or R,G,B in (0, 1), got {colour!r}")
    return rgb  # type: ignore[return-value]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("prompt")
    p.add_argument("--colour", default="prompt", help="'prompt' (the toy colour table's) or R,G,B")
    p.add_argument("--out", type=Path, required=True, help="the run folder is OUT/<the prompt's slug>")
    p.add_argument("--set", action="append", default=[], help="config overrides key=value")
    a = p.parse_args(argv)
    cfg = load_config([REPO / "configs" / "one_stage.yaml"], ["run.device=cpu", *a.set])
    if cfg.field.kind != "grid" or cfg.field.grid_decoder != "direct":
        raise SystemExit("albedo_start.py: needs field.kind=grid and field.grid_decoder=direct")
    rgb = start_colour(a.prompt, a.colour)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    prior = load_prior(cfg.prior.model, "cpu", "float32")
    scene = make_scene(cfg, "cpu")
    grid = scene.field.color_grid
    with torch.no_grad():
        grid.copy_(torch.logit(torch.tensor(rgb)).view(1, 3, 1, 1, 1).expand_as(grid))
    folder = RunFolder(a.out / slugify(a.prompt))
    folder.create(cfg, {"command": "generate", "prompt": a.prompt, "albedo_start": list(rgb)})
    optimize(cfg, folder, make_objective(cfg, prior, a.prompt), torch.device("cpu"), scene=scene, progress=False)
    print(f"{a.prompt}: albedo started at ({', '.join(f'{v:.2f}' for v in rgb)}) -> {folder.dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
