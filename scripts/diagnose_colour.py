"""Where generated albedo loses its colour: the toy prior's image-space SDS target on the true object.

For each (colour, shape) asked for, the true primitive (toy.shapes.sdf on an SdfGridField lattice, beta small)
with its true albedo is rendered from random training cameras in each shading, and the SDS target of the
default config (``sds_image_target``: k DDIM steps from z_t, guidance prior.guidance_scale) is computed at
several t. Over the object's interior pixels (opacity > 0.99, target also mostly object), each shading's
fixed point of the albedo is what the squared error pulls the albedo to:

    albedo shading:      a* = mean(target)                         (the render is the albedo itself)
    lambertian shading:  a* = sum(L target) / sum(L^2)             (render = a L, L = ambient + diffuse n.l)

Also printed: the training renders' mean shade mean(L) (what "the albedo the shaded colours imply" is when
a shaded colour is read as albedo: a mean(L)), and the share of white in the target, w = the least-squares
mix target ~ (1 - w) a* + w white, per object.

    python scripts/diagnose_colour.py --pairs "red sphere" "blue cube" --views 8 --seeds 2
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
from dreamfield.distill.objectives import prompts_for  # noqa: E402
from dreamfield.distill.score import sds_image_target  # noqa: E402
from dreamfield.prior import load_prior  # noqa: E402
from dreamfield.scene.background import make_background  # noqa: E402
from dreamfield.scene.cameras import sample_cameras  # noqa: E402
from dreamfield.scene.render import render  # noqa: E402
from dreamfield.scene.sdf import SdfGridField  # noqa: E402
from dreamfield.toy import shapes  # noqa: E402
from dreamfield.toy.domain import COLOURS, caption  # noqa: E402


def true_field(cfg, shape: str, rgb) -> SdfGridField:
    sc = cfg.surface
    field = SdfGridField(type(sc)(**{**vars(sc), "beta_min": 0.004, "beta_init": 0.005}), cfg.field.bound)
    r = sc.resolution
    logit = torch.logit(torch.tensor(rgb)).view(3, 1, 1, 1).expand(3, r, r, r)
    field.set_grids(shapes.sdf_lattice(shape, r, cfg.field.bound), logit.float())
    return field


@torch.no_grad()
def measure(cfg, prior, colour: str, shape: str, views: int, seed: int, ts) -> dict:
    rgb = COLOURS[colour]
    field = true_field(cfg, shape, rgb)
    bg = make_background(cfg.render)
    g = torch.Generator().manual_seed(seed)
    cams = sample_cameras(cfg.camera, views, g, "cpu")
    res = cfg.render.resolution
    outs = {s: render(field, cams, res, res, cfg.render, bg, s, bound=cfg.field.bound, stratified=False)
            for s in ("albedo", "lambertian", "textureless")}
    L = outs["textureless"].rgb[:, :1]  # (B, 1, H, W) the shade (white albedo) on object pixels
    mask = (outs["albedo"].opacity > 0.99).float()  # (B, 1, H, W)
    text = prior.embed(prompts_for(caption(colour, shape), cams, cfg.prior.view_dependent), cfg.prior.negative_prompt)
    row = {"pair": f"{colour} {shape}", "spec": rgb,
           "mean_shade": float((L * mask).sum() / mask.sum())}
    for shading in ("albedo", "lambertian"):
        z = prior.encode(outs[shading].rgb)
        for tf in ts:
            t = torch.full((views,), int(tf * prior.schedule.num_train_timesteps), dtype=torch.long)
            noise = torch.randn(z.shape, generator=g)
            tgt = sds_image_target(prior, z, text, t, noise, cfg.prior.guidance_scale,
                                   denoise_steps=cfg.guidance.denoise_steps)
            m = mask.expand_as(tgt)
            if shading == "albedo":
                a = (tgt * m).sum((0, 2, 3)) / m.sum((0, 2, 3))
            else:
                a = (L * tgt * m).sum((0, 2, 3)) / (L * L * m).sum((0, 2, 3))
            # white share: target - a = w (1 - a) least squares over the object pixels, all channels
            spec = torch.tensor(rgb)
            w = float(((a - spec) * (1 - spec)).sum() / ((1 - spec) ** 2).sum())
            row[f"{shading}@{tf}"] = ([round(float(v), 3) for v in a], round(w, 3))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=["red sphere", "green cube", "blue cylinder"])
    p.add_argument("--views", type=int, default=8)
    p.add_argument("--seeds", type=int, default=1)
    p.add_argument("--t", type=float, nargs="+", default=[0.1, 0.3, 0.5, 0.8])
    p.add_argument("--set", action="append", default=[], help="config overrides key=value")
    a = p.parse_args(argv)
    cfg = load_config([], a.set)
    prior = load_prior(cfg.prior.model, "cpu", "float32")
    print(f"config: guidance_scale {cfg.prior.guidance_scale}, denoise_steps {cfg.guidance.denoise_steps}; "
          f"each cell: fixed-point albedo of that shading at t, and (w) the least-squares white share vs the spec")
    for pair in a.pairs:
        colour, shape = pair.split()
        for seed in range(a.seeds):
            row = measure(cfg, prior, colour, shape, a.views, seed, a.t)
            print(f"{row['pair']:<16} seed {seed} spec {row['spec']} mean shade {row['mean_shade']:.3f} "
                  f"(shaded colour read as albedo: {[round(c * row['mean_shade'], 3) for c in row['spec']]})")
            for k, v in row.items():
                if "@" in k:
                    print(f"    {k:<16} {v[0]}  white share {v[1]:+.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
