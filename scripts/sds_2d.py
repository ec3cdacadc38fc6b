"""The density stage's size dynamics without the third dimension: SDS on a flat billboard.

The scene is one image: a per-pixel opacity a = sigmoid(A) and albedo c = sigmoid(C) composited over the white
background, rgb = a c + (1 - a) (no shading, no cameras; view suffixes are still drawn from the training cameras).
It starts as a grey disc (a smooth-edged one of radius ``--radius`` in [-1, 1] image units) and is optimised
by the loop's own objective (``make_objective``: the default image-space SDS, t schedule, guidance scale and
view prompts of the config) with Adam at optim.lr_density on A and optim.lr_color on C, one view per step.
Every 10 steps it logs the coverage (share of pixels with a > 0.5) and the mean albedo inside it. Runs with
the same --seed draw the same t, noise and view prompts, so prompts compare step by step, as the 3D runs of
``metric_windows.py`` do, at a fraction of the cost (a 160-step window in under a minute, one thread).

``--start-colour prompt`` starts the albedo at the toy colour table's value for the prompt's colour instead of
grey (an oracle: what the grey start costs each colour); ``sample`` at the mean colour of the object's core
(pixels at least CORE from white, past the anti-aliased rim) in SAMPLES DDIM samples of the prompt's front
view: what the prior alone says, with no colour table.

    python scripts/sds_2d.py --prompts "a red cube" "a green cube" --steps 160 --window 100 150 --json out.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dreamfield.config import Config, load_config  # noqa: E402
from dreamfield.diffusion.sampling import sample  # noqa: E402
from dreamfield.distill.objectives import View, make_objective  # noqa: E402
from dreamfield.prior import load_prior  # noqa: E402
from dreamfield.scene.cameras import sample_cameras  # noqa: E402
from dreamfield.toy.domain import COLOURS, parse_prompt  # noqa: E402

EDGE = 12.0  # the start's opacity logit falls by EDGE per image unit across the disc's rim
SAMPLES, SAMPLE_STEPS = 4, 30  # --start-colour sample: DDIM samples of the front view and their steps
CORE = 0.3  # ... and the mean |1 - rgb| a pixel of the object's core has at least


@torch.no_grad()
def sampled_colour(cfg: Config, prior, prompt: str) -> tuple[float, float, float]:
    """The mean rgb of the object's core (pixels >= CORE from white, channel mean) in SAMPLES DDIM samples."""
    emb = prior.embed([f"{prompt}, front view"] * SAMPLES, cfg.prior.negative_prompt)
    shape = (SAMPLES, prior.latent_channels, prior.latent_size, prior.latent_size)
    z = sample(lambda x, t: prior.eps(x, t, emb, cfg.prior.guidance_scale), shape, prior.schedule, steps=SAMPLE_STEPS,
               generator=torch.Generator().manual_seed(cfg.run.seed))
    img = prior.decode(z).float()  # (B, 3, S, S)
    fg = (1.0 - img).abs().mean(dim=1) > CORE  # (B, S, S)
    if not fg.any():
        raise SystemExit(f"sds_2d.py: the samples of {prompt!r} are blank")
    rgb = img.permute(1, 0, 2, 3)[:, fg].mean(dim=1).clamp(0.02, 0.98)
    return tuple(float(v) for v in rgb)


def start(size: int, radius: float, colour: tuple[float, float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Opacity logits (S, S): EDGE (radius - r), r the distance from the centre in [-1, 1] units; albedo logits
    (3, S, S): 0 (grey 0.5) or logit(colour)."""
    axis = torch.linspace(-1.0, 1.0, size)
    yy, xx = torch.meshgrid(axis, axis, indexing="ij")
    a = EDGE * (radius - (xx * xx + yy * yy).sqrt())
    c = torch.zeros(3, size, size) if colour is None else torch.logit(torch.tensor(colour)).view(3, 1, 1).expand(
        3, size, size).clone()
    return a, c


def composite(a: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """(S, S) opacity logits, (3, S, S) albedo logits -> (1, 3, S, S) rgb over white."""
    alpha = torch.sigmoid(a)
    return (alpha * torch.sigmoid(c) + (1.0 - alpha))[None]


def run(cfg: Config, prior, prompt: str, steps: int, radius: float, colour=None) -> list[dict]:
    """Optimise the billboard for ``steps`` of cfg.optim.steps (the schedule is the full run's); rows every 10."""
    objective = make_objective(cfg, prior, prompt)
    size = cfg.render.resolution
    a, c = start(size, radius, colour)
    a.requires_grad_(True)
    c.requires_grad_(True)
    o = cfg.optim
    opt = torch.optim.Adam([{"params": [a], "lr": o.lr_density}, {"params": [c], "lr": o.lr_color}], betas=o.betas,
                           eps=o.eps)
    gen = torch.Generator().manual_seed(cfg.run.seed)
    rows = []
    for step in range(steps):
        if step % 10 == 0:
            with torch.no_grad():
                inside = torch.sigmoid(a) > 0.5
                rgb = [round(float(torch.sigmoid(c[k])[inside].mean()), 4) if inside.any() else None for k in range(3)]
            rows.append({"step": step, "coverage": round(float(inside.float().mean()), 4), "albedo": rgb})
        cams = sample_cameras(cfg.camera, 1, gen, "cpu")
        view = View(cams=cams, shading="albedo", resolution=size, host_cams=cams)
        term = objective(step, SimpleNamespace(rgb=composite(a, c)), view, gen)
        opt.zero_grad()
        term.loss.backward()
        opt.step()
    return rows


def window_mean(rows: list[dict], lo: int, hi: int) -> float:
    vals = [r["coverage"] for r in rows if lo <= r["step"] < hi]
    return sum(vals) / len(vals) if vals else float("nan")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prompts", nargs="+", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (default optim.steps)")
    p.add_argument("--radius", type=float, default=0.6, help="the start disc's radius (image units; 0.6: ~0.28 "
                   "coverage, about the 3D blob's first renders)")
    p.add_argument("--start-colour", choices=("grey", "prompt", "sample"), default="grey")
    p.add_argument("--window", type=int, nargs=2, default=(100, 150), metavar=("FROM", "TO"))
    p.add_argument("--set", action="append", default=[], help="config overrides key=value")
    p.add_argument("--json", type=Path, help="write each prompt's rows here (JSON lines)")
    a = p.parse_args(argv)
    cfg = load_config([], ["run.device=cpu", f"run.seed={a.seed}", *a.set])
    torch.set_num_threads(cfg.run.threads or 1)
    steps = min(a.steps or cfg.optim.steps, cfg.optim.steps)
    prior = load_prior(cfg.prior.model, "cpu", "float32")
    lo, hi = a.window
    print(f"seed {a.seed}, {steps} of {cfg.optim.steps} steps, start {a.start_colour}, overrides {a.set or 'none'}; "
          f"coverage over steps [{lo}, {hi}), then at the last logged step with the mean albedo inside")
    out = []
    for prompt in a.prompts:
        colour = None
        if a.start_colour == "prompt":
            pair = parse_prompt(prompt)
            if pair is None:
                raise SystemExit(f"sds_2d.py: --start-colour prompt needs a toy prompt ('a <colour> <shape>'), "
                                 f"got {prompt!r}")
            colour = COLOURS[pair[0]]
        elif a.start_colour == "sample":
            colour = sampled_colour(cfg, prior, prompt)
        rows = run(cfg, prior, prompt, steps, a.radius, colour)
        last = rows[-1]
        rgb = " ".join("-" if v is None else f"{v:.2f}" for v in last["albedo"])
        began = "" if colour is None else " from (" + " ".join(f"{v:.2f}" for v in colour) + ")"
        print(f"{prompt:<20} {window_mean(rows, lo, hi):.3f}   step {last['step']}: {last['coverage']:.3f} ({rgb}){began}",
              flush=True)
        out.append({"prompt": prompt, "seed": a.seed, "start": a.start_colour, "start_rgb": colour, "overrides": a.set,
                    "rows": rows})
    if a.json:
        a.json.write_text("".join(json.dumps(r) + "\n" for r in out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
