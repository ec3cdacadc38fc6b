"""Does a stage keep the right answer? Start it from the exact primitive and see where it takes it.

For each (colour, shape) asked for, one stage of ``generate`` starts from the true object instead of the
coarse field (``--stage surface``) or the blob (``--stage density``), runs its default steps under the
default config (plus ``--set``), and the toy measures (TOY_DOMAIN.md) score the exported mesh before and
after: IoU with the primitive, the predicted shape, the mesh's volume (the primitive's own on the same
grid in brackets) and the colour error. An objective whose fixed point is the prior's object keeps the
start; one that drifts shows its bias in a few minutes on one object, where the 36-pair evaluation needs
hours. The start's render is also compared with the toy data's renderer at the same random training
cameras (coverage: the share of pixels at least 0.15 from white): what the prior is shown against what
it was trained on.

Starts: surface, the SDF lattice of ``toy.shapes.sdf`` with the colour's albedo, at the stage's beta;
density, log sigma falling linearly across the surface through export.threshold at d = 0 (between 0.0025
and 50; the blob and bias subtracted from the grid), the same albedo. Surface meshes are the d = 0 level
set at surface.beta_end (what export draws), density meshes the export's blurred level.

    python scripts/fixed_point.py --pairs "purple cube" "red cube" --stage surface \
        --set surface.lr_sdf=0.002
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dreamfield.config import Config, load_config  # noqa: E402
from dreamfield.distill.objectives import make_objective  # noqa: E402
from dreamfield.export.mesh import extract_mesh  # noqa: E402
from dreamfield.export.sdf_mesh import extract_sdf_mesh  # noqa: E402
from dreamfield.optimize import optimize  # noqa: E402
from dreamfield.prior import load_prior  # noqa: E402
from dreamfield.run import RunFolder, slugify  # noqa: E402
from dreamfield.scene.cameras import sample_cameras  # noqa: E402
from dreamfield.scene.render import render  # noqa: E402
from dreamfield.scene.scene import Scene, make_scene  # noqa: E402
from dreamfield.surface import (EikonalObjective, beta_cap_at, make_surface_scene, stage_config,  # noqa: E402
                               stage_steps)
from dreamfield.toy import shapes  # noqa: E402
from dreamfield.toy.data import colourise, render_geometry  # noqa: E402
from dreamfield.toy.domain import COLOURS, caption  # noqa: E402
from dreamfield.toy.measures import primitive_occupancy, score_mesh  # noqa: E402

# the density start: log sigma falls linearly across the primitive's surface, through export.threshold at d = 0
# over DENSITY_WIDTH (world units), between OUTSIDE_SIGMA (clear) and INSIDE_SIGMA (opaque)
DENSITY_WIDTH, INSIDE_SIGMA, OUTSIDE_SIGMA = 0.02, 50.0, 0.0025


def _albedo_logits(colour: str, r: int) -> torch.Tensor:
    """The colour's albedo logits at every voxel: (3, R, R, R)."""
    rgb = torch.tensor(COLOURS[colour]).clamp(1e-3, 1 - 1e-3)
    return torch.logit(rgb).view(3, 1, 1, 1).expand(3, r, r, r).clone()


def exact_surface_scene(cfg: Config, shape: str, colour: str) -> Scene:
    """The surface stage's scene holding the primitive's SDF and the colour's albedo."""
    scene = make_surface_scene(cfg, "cpu")
    r = cfg.surface.resolution
    scene.field.set_grids(shapes.sdf_lattice(shape, r, cfg.field.bound), _albedo_logits(colour, r))
    scene.field.beta_cap = beta_cap_at(cfg, 0)
    return scene


def exact_density_scene(cfg: Config, shape: str, colour: str) -> Scene:
    """The density stage's scene (the direct grid field): log sigma = log(export.threshold) - d / DENSITY_WIDTH
    clamped to [OUTSIDE_SIGMA, INSIDE_SIGMA], d the primitive's signed distance, so sigma crosses the export's
    level on the primitive's surface (the grid holds the pre-activation, read trilinearly: a linear profile)."""
    if cfg.field.kind != "grid" or cfg.field.grid_decoder != "direct":
        raise SystemExit("fixed_point.py: --stage density needs field.kind=grid and field.grid_decoder=direct")
    scene = make_scene(cfg, "cpu")
    field, r, bound = scene.field, cfg.field.grid_resolution, cfg.field.bound
    axis = torch.linspace(-bound, bound, r)
    z, y, x = torch.meshgrid(axis, axis, axis, indexing="ij")
    pts = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    level = cfg.export.threshold if cfg.export.threshold is not None else 5.0
    d = shapes.sdf(shape, pts)
    sigma = (level * torch.exp(-d / DENSITY_WIDTH)).clamp(OUTSIDE_SIGMA, INSIDE_SIGMA)
    pre = sigma.log() if cfg.field.density_activation == "exp" else torch.log(torch.expm1(sigma))
    with torch.no_grad():  # the field's activation adds density_bias and the blob to the grid (GridField)
        field.density_grid.copy_((pre - cfg.field.density_bias - field._blob(pts)).reshape(1, 1, r, r, r))
        field.color_grid.copy_(_albedo_logits(colour, r)[None])
    return scene


def score(cfg: Config, scene: Scene, stage: str, shape: str, colour: str) -> dict:
    """The toy measures of the stage's exported mesh (vertex colours, no decimation; glTF frame, as exported)."""
    ex = dataclasses.replace(cfg.export, target_faces=0, colour="vertex", compare_views=0)
    if stage == "surface":  # drawn as export draws the finished stage: at the ceiling after its last step
        cap, scene.field.beta_cap = scene.field.beta_cap, beta_cap_at(cfg, stage_steps(cfg))
        mesh = extract_sdf_mesh(scene.field, ex, cfg.field.bound, "cpu")
        scene.field.beta_cap = cap
    else:
        mesh = extract_mesh(scene.field, ex, cfg.field.bound, "cpu")
    s = score_mesh(mesh, shape, colour)
    err = math.dist(s["mean_rgb"], COLOURS[colour]) if s["mean_rgb"] else None
    return {"iou": round(s["iou"], 3), "shape": s["shape_pred"], "volume": round(s["volume"], 3),
            "colour_error": None if err is None else round(err, 3)}


@torch.no_grad()
def coverage(cfg: Config, scene: Scene, shape: str, colour: str, views: int = 16, seed: int = 0) -> tuple[float, float]:
    """(this renderer's, the toy data's) coverage of the start at the same training cameras, Lambertian."""
    cams = sample_cameras(cfg.camera, views, torch.Generator().manual_seed(seed), "cpu")
    res = cfg.render.resolution
    ours = render(scene.field, cams, res, res, cfg.render, scene.background, "lambertian", bound=cfg.field.bound,
                  stratified=False).rgb.float()
    truth = colourise(render_geometry(shape, cams, size=res), torch.tensor(COLOURS[colour]).expand(views, 3))

    def cov(img):
        return float(((1 - img).abs().mean(1) > 0.15).float().mean())

    return round(cov(ours), 4), round(cov(truth), 4)


def run_pair(cfg: Config, prior, stage: str, shape: str, colour: str, keep: Path | None = None) -> dict:
    scene = (exact_surface_scene if stage == "surface" else exact_density_scene)(cfg, shape, colour)
    before = score(cfg, scene, stage, shape, colour)
    ours, truth = coverage(cfg, scene, shape, colour)
    prompt = caption(colour, shape)
    run_cfg = stage_config(cfg) if stage == "surface" else cfg
    with tempfile.TemporaryDirectory() as tmp:
        folder = RunFolder((keep or Path(tmp)) / slugify(prompt))
        folder.create(run_cfg, {"command": "generate", "prompt": prompt, "stage": stage})
        objective = make_objective(run_cfg, prior, prompt)
        if stage == "surface":
            objective = EikonalObjective(objective, scene.field, cfg)
        scene = optimize(run_cfg, folder, objective, torch.device("cpu"), scene=scene, progress=False)
    after = score(cfg, scene, stage, shape, colour)
    true_volume = float(primitive_occupancy(shape).sum() * (2.0 / 64) ** 3)
    return {"pair": f"{colour} {shape}", "stage": stage, "steps": run_cfg.optim.steps, "before": before,
            "after": after, "true_volume": round(true_volume, 3), "coverage_start": ours, "coverage_truth": truth}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["purple cube", "red cube", "red torus"])
    p.add_argument("--stage", choices=("surface", "density"), default="surface")
    p.add_argument("--set", action="append", default=[], help="config overrides key=value")
    p.add_argument("--json", type=Path, help="also write the rows here (JSON lines)")
    p.add_argument("--keep", type=Path, help="keep each finished stage's run folder under this folder "
                   "(rescore it with export_levels.py or export it)")
    a = p.parse_args(argv)
    cfg = load_config([], ["run.device=cpu", *a.set])
    torch.manual_seed(cfg.run.seed)
    if cfg.run.threads:
        torch.set_num_threads(cfg.run.threads)
    prior = load_prior(cfg.prior.model, "cpu", "float32")
    print(f"stage {a.stage}, overrides {a.set or 'none'}; IoU / shape / volume (the primitive's) / colour error, "
          "start -> end; coverage of the start's render vs the toy renderer's")
    rows = []
    for pair in a.pairs:
        colour, shape = pair.split()
        row = run_pair(cfg, prior, a.stage, shape, colour, a.keep)
        rows.append(row)
        b, e = row["before"], row["after"]
        print(f"{row['pair']:<16} {b['iou']:.3f} {b['shape']} {b['volume']:.3f} ({row['true_volume']:.3f}) "
              f"{b['colour_error']} -> {e['iou']:.3f} {e['shape']} {e['volume']:.3f} {e['colour_error']}; "
              f"coverage {row['coverage_start']:.3f} vs {row['coverage_truth']:.3f}", flush=True)
    if a.json:
        a.json.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
