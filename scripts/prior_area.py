"""How large the toy prior draws each object: the size anchor's area (loss.coverage) against the primitive's.

For each toy pair, ``dreamfield.distill.coverage.prior_area`` (the object's mean projected area, coverage x frame
area, over loss.coverage_samples DDIM samples at the training cameras' distribution) beside the same measure on the
toy data's renderer at the same cameras (the truth the prior was trained on). The ratio says whether the anchor's
target is the right size, per colour and shape, and how guidance changes it (``--guidance``).

    python scripts/prior_area.py --pairs "a red cube" "a green cube" --guidance 1 7.5 --seeds 0 1
    python scripts/prior_area.py --all --json areas.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dreamfield.config import load_config  # noqa: E402
from dreamfield.distill.coverage import frame_area, prior_area  # noqa: E402
from dreamfield.prior import load_prior  # noqa: E402
from dreamfield.scene.cameras import sample_cameras  # noqa: E402
from dreamfield.toy.data import render_geometry  # noqa: E402
from dreamfield.toy.domain import COLOUR_NAMES, SHAPES, parse_prompt, prompt as toy_prompt  # noqa: E402


def true_area(cfg, shape: str, seed: int) -> float:
    """The primitive's mean projected area (hit coverage x frame area) at the cameras prior_area draws for ``seed``
    (the same generator's first draws)."""
    cams = sample_cameras(cfg.camera, cfg.loss.coverage_samples, torch.Generator().manual_seed(seed), "cpu")
    hit = render_geometry(shape, cams, size=cfg.render.resolution)[:, 1].mean(dim=(1, 2))
    return float((hit * frame_area(cams)).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", nargs="+", default=[], help="toy prompts ('a <colour> <shape>')")
    p.add_argument("--all", action="store_true", help="all 36 pairs")
    p.add_argument("--guidance", type=float, nargs="+", default=[1.0], help="loss.coverage_guidance values")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--set", action="append", default=[], help="config overrides key=value")
    p.add_argument("--json", type=Path)
    a = p.parse_args(argv)
    prompts = [toy_prompt(c, s) for s in SHAPES for c in COLOUR_NAMES] if a.all else a.pairs
    if not prompts:
        p.error("give --pairs or --all")
    pairs = []
    for text in prompts:
        pair = parse_prompt(text)
        if pair is None:
            p.error(f"not a toy prompt: {text!r}")
        pairs.append((text, *pair))
    cfg0 = load_config([], ["run.device=cpu", *a.set])
    torch.set_num_threads(cfg0.run.threads or 1)
    prior = load_prior(cfg0.prior.model, "cpu", "float32")
    truth = {(shape, seed): true_area(cfg0, shape, seed) for _, _, shape in pairs for seed in a.seeds}
    print(f"{cfg0.loss.coverage_samples} samples per pair and seed; area = coverage x frame area; ratio to the "
          "primitive's at the same cameras")
    print(f"{'pair':<20} {'guidance':>8} " + " ".join(f"{'seed ' + str(s):>14}" for s in a.seeds) + "   mean ratio")
    rows = []
    for text, colour, shape in pairs:
        for w in a.guidance:
            cfg = load_config([], ["run.device=cpu", *a.set, f"loss.coverage_guidance={w}"])
            cells, ratios = [], []
            for seed in a.seeds:
                area = prior_area(prior, text, cfg, torch.Generator().manual_seed(seed))
                ratio = area / truth[(shape, seed)]
                cells.append(f"{area:.3f} ({ratio:.2f})")
                ratios.append(ratio)
                rows.append({"prompt": text, "colour": colour, "shape": shape, "guidance": w, "seed": seed,
                             "area": area, "true_area": truth[(shape, seed)], "ratio": ratio})
            print(f"{text:<20} {w:>8g} " + " ".join(f"{c:>14}" for c in cells) + f"   {sum(ratios) / len(ratios):.3f}",
                  flush=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
