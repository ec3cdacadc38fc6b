"""Evaluate the toy prior in 2D (samples named by the classifier) and 3D results on their exported meshes.

2D: the project's DDIM sampler (``dreamfield.diffusion.sample``) through the prior interface
(``load_prior``, ``embed``, ``eps`` with classifier-free guidance, ``decode``), N samples for each of the
36 (colour, shape) pairs, view suffixes cycling front/side/back/overhead; each sample is named by the
toy classifier. Writes a PNG grid (rows: colours, columns: shapes, held-out cells framed in black)
and a JSON of the figures, overall and for held-out and trained pairs separately.

3D: scores exported meshes with ``toy.measures.score_mesh`` (shape by best volumetric IoU over
z-rotations, colour of the visible surface). Give run folders (each with a ``mesh.glb``), or
``--generate`` to run ``dreamfield generate PROMPT --out DIR`` for 12 prompts (the 6 held-out pairs
and 6 trained ones) first, through ``dreamfield batch`` (Ray tasks; a rerun skips finished runs).

Examples:
    python scripts/eval_toy.py 2d --n 4 --out outputs/eval_toy            # the embedded prior
    python scripts/eval_toy.py 2d --model outputs/toy_prior_smoke --n 1 --steps 5
    python scripts/eval_toy.py 3d outputs/a-red-cube-*/ outputs/a-blue-torus-*/
    python scripts/eval_toy.py 3d --generate --gen-root outputs/eval3d -- --set optim.steps=600
    python scripts/eval_toy.py 3d --generate --jobs 2 --gen-root outputs/eval3d_s1 -- --seed 1   # README's table
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from dreamfield.toy.evaluate import EVAL_3D, breakdown, score_runs  # noqa: E402
from dreamfield.toy.domain import (  # noqa: E402
    ALL_PAIRS,
    COLOUR_NAMES,
    COLOURS,
    HELD_OUT,
    SHAPES,
    VIEW_LABELS,
    caption,
)

VIEW_ANGLES = {"front": (0.0, 15.0), "side": (90.0, 15.0), "back": (180.0, 15.0), "overhead": (0.0, 75.0)}


# ---------------------------------------------------------------------------------------------- 2D
def sample_pairs(prior, n: int, guidance: float, steps: int, seed: int, batch: int):
    """N samples per pair. Returns images (36 * n, 3, 64, 64) float32 on CPU (pair-major) and prompts."""
    from dreamfield.diffusion import sample
    from dreamfield.prior import view_prompt

    prompts = [view_prompt(caption(c, s), *VIEW_ANGLES[VIEW_LABELS[i % 4]]) for c, s in ALL_PAIRS for i in range(n)]
    g = torch.Generator(device=prior.device).manual_seed(seed)
    shape = (prior.latent_channels, prior.latent_size, prior.latent_size)
    images = []
    for i in range(0, len(prompts), batch):
        chunk = prompts[i : i + batch]
        text = prior.embed(chunk)

        def eps_fn(x, t, text=text):
            return prior.eps(x, t, text, guidance)

        z = sample(eps_fn, (len(chunk), *shape), prior.schedule, method="ddim", steps=steps, generator=g,
                   device=prior.device)
        with torch.no_grad():
            images.append(prior.decode(z).cpu())
    return torch.cat(images), prompts


def grid_image(images: torch.Tensor, n: int) -> np.ndarray:
    """(36 * n, 3, H, W) pair-major -> uint8 (6 H, 6 n W, 3): rows colours, columns shapes; held-out framed."""
    H, W = images.shape[-2:]
    out = np.ones((6 * H, 6 * n * W, 3), dtype=np.float32)
    imgs = images.permute(0, 2, 3, 1).numpy()
    for k, (c, s) in enumerate(ALL_PAIRS):
        r, col = COLOUR_NAMES.index(c), SHAPES.index(s)
        for i in range(n):
            out[r * H : (r + 1) * H, (col * n + i) * W : (col * n + i + 1) * W] = imgs[k * n + i]
        if (c, s) in HELD_OUT:
            y0, y1, x0, x1 = r * H, (r + 1) * H - 1, col * n * W, (col + 1) * n * W - 1
            out[y0, x0:x1 + 1] = out[y1, x0:x1 + 1] = 0.0
            out[y0:y1 + 1, x0] = out[y0:y1 + 1, x1] = 0.0
    return (out.clip(0, 1) * 255).round().astype(np.uint8)


def eval_2d(a: argparse.Namespace) -> dict:
    from dreamfield.prior import load_prior
    from dreamfield.toy.classifier import load_classifier

    dev = torch.device(a.device)
    prior = load_prior(a.model, device=dev, dtype="float32")
    clf = load_classifier(a.classifier, device=dev)
    t0 = time.perf_counter()
    images, prompts = sample_pairs(prior, a.n, a.guidance, a.steps, a.seed, a.batch)
    seconds = time.perf_counter() - t0
    with torch.no_grad():
        pred_s, pred_c = clf.predict(images.to(dev))
    pred_s, pred_c = pred_s.cpu(), pred_c.cpu()
    true_c = torch.tensor([COLOUR_NAMES.index(c) for c, _ in ALL_PAIRS]).repeat_interleave(a.n)
    true_s = torch.tensor([SHAPES.index(s) for _, s in ALL_PAIRS]).repeat_interleave(a.n)
    held = torch.tensor([(p in HELD_OUT) for p in ALL_PAIRS]).repeat_interleave(a.n)
    ok_s, ok_c = pred_s == true_s, pred_c == true_c

    def figures(mask):
        return {"shape_acc": round(ok_s[mask].float().mean().item(), 4),
                "colour_acc": round(ok_c[mask].float().mean().item(), 4),
                "both_acc": round((ok_s & ok_c)[mask].float().mean().item(), 4),
                "samples": int(mask.sum())}

    per_pair = {}
    for k, (c, s) in enumerate(ALL_PAIRS):
        sl = slice(k * a.n, (k + 1) * a.n)
        per_pair[f"{c} {s}"] = {
            "held_out": (c, s) in HELD_OUT,
            "shapes": [SHAPES[i] for i in pred_s[sl].tolist()],
            "colours": [COLOUR_NAMES[i] for i in pred_c[sl].tolist()],
        }
    result = {
        "model": a.model or "embedded toy prior",
        "guidance": a.guidance, "steps": a.steps, "n_per_pair": a.n, "seed": a.seed,
        "overall": figures(torch.ones_like(held)),
        "held_out": figures(held),
        "trained": figures(~held),
        "sampling_seconds": round(seconds, 1),
        "device": str(dev),
        "per_pair": per_pair,
    }
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    import imageio.v3 as iio

    iio.imwrite(out / "samples_2d.png", grid_image(images, a.n))
    (out / "eval_2d.json").write_text(json.dumps(result, indent=1))
    print(f"2D  overall {result['overall']}\n    held-out {result['held_out']}\n    trained  {result['trained']}")
    print(f"    {len(images)} samples in {seconds:.1f} s; wrote {out / 'samples_2d.png'} and {out / 'eval_2d.json'}")
    return result


# ---------------------------------------------------------------------------------------------- 3D
def print_table(result: dict) -> None:
    print(f"{'prompt':<28} {'held':>4} {'shape->pred':<20} {'IoU':>5} {'colour->pred':<18} {'wall s':>7}")
    for r in result["rows"]:
        if "error" in r:
            print(f"{r['prompt'][:28]:<28} {'':>4} {r['error']}")
            continue
        sp = f"{r['shape']}->{r['shape_pred']}"
        cp = f"{r['colour']}->{r['colour_pred']}"
        wall = f"{r['wall_s']:.0f}" if r.get("wall_s") is not None else "-"
        print(f"{r['prompt'][:28]:<28} {'yes' if r['held_out'] else '':>4} {sp:<20} {r['iou']:5.2f} {cp:<18} {wall:>7}")
    for k in ("overall", "held_out", "trained"):
        print(f"{k:>9}: {result[k]}")
    print(f"mean wall time per object: {result['mean_wall_s']} s")


def print_breakdown(result: dict) -> None:
    cols = ("objects", "shape_acc", "colour_acc", "mean_iou", "colour_err", "area_ratio", "wall_s")
    print(f"{'':<10}" + "".join(f"{c:>11}" for c in cols))
    for part in ("by_shape", "by_colour"):
        for name, fig in result[part].items():
            print(f"{name:<10}" + "".join(f"{'-' if fig[c] is None else fig[c]:>11}" for c in cols))
    print(f"{'all':<10}" + "".join(f"{'-' if result['all'][c] is None else result['all'][c]:>11}" for c in cols))


def generate(a: argparse.Namespace, extra: list[str]) -> tuple[list[Path], dict]:
    """The evaluation prompts (12, or the 36 pairs with --all) generated through ``dreamfield batch``
    (:func:`dreamfield.batch.toy_batch`) into ``a.gen_root``; returns run folders and wall times."""
    from dreamfield.batch import toy_batch
    from dreamfield.toy.domain import ALL_PAIRS

    pairs = ALL_PAIRS if getattr(a, "all", False) else EVAL_3D
    return toy_batch(Path(a.gen_root), pairs, extra, a.jobs, (a.dreamfield,) if a.dreamfield else None)


def eval_3d(a: argparse.Namespace, extra: list[str]) -> dict:
    walls = None
    runs = [Path(r) for r in a.runs]
    if a.generate:
        gen_runs, walls = generate(a, extra)
        runs += gen_runs
    if not runs:
        raise SystemExit("3d: give run folders / meshes, or --generate")
    result = score_runs(runs, walls)
    print_table(result)
    if getattr(a, "breakdown", False):
        result.update(breakdown(result["rows"]))
        print_breakdown(result)
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:  # arguments after -- go to `dreamfield generate`
        k = argv.index("--")
        argv, extra = argv[:k], argv[k + 1 :]
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    p2 = sub.add_parser("2d", help="sample the prior, name samples with the classifier")
    p2.add_argument("--model", default=None, help="diffusers folder (default: the embedded toy prior)")
    p2.add_argument("--classifier", default=None, help="classifier weights (default: the shipped one)")
    p2.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p2.add_argument("--n", type=int, default=4, help="samples per pair")
    p2.add_argument("--guidance", type=float, default=7.5)
    p2.add_argument("--steps", type=int, default=50)
    p2.add_argument("--seed", type=int, default=0)
    p2.add_argument("--batch", type=int, default=72)
    p2.add_argument("--out", default="outputs/eval_toy")
    p3 = sub.add_parser("3d", help="score exported meshes (run folders or mesh files)")
    p3.add_argument("runs", nargs="*", help="run folders holding mesh.glb, or mesh files")
    p3.add_argument("--generate", action="store_true", help="first run `dreamfield generate` for the 12 prompts")
    p3.add_argument("--gen-root", default="outputs/eval3d")
    p3.add_argument("--dreamfield", default=None,
                    help="the dreamfield command to call (default: python -m dreamfield of this interpreter)")
    p3.add_argument("--jobs", type=int, default=1, help="with --generate: runs at once (> 1: one thread each)")
    p3.add_argument("--json", default=None, help="write the table as JSON here")
    p3.add_argument("--all", action="store_true", help="with --generate: all 36 pairs instead of the 12")
    p3.add_argument("--breakdown", action="store_true",
                    help="also per shape and per colour: accuracies, IoU, colour error, area ratio, time")
    a = p.parse_args(argv)
    if a.what == "2d":
        eval_2d(a)
    else:
        eval_3d(a, extra)
    return 0


if __name__ == "__main__":
    sys.exit(main())
