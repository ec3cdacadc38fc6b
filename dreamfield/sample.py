"""``dreamfield sample``: 2D samples from the prior with the project's own samplers, one row per view
suffix: the quick check that a prior knows a prompt before a long 3D run."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from dreamfield.config import Config
from dreamfield.device import resolve_device, set_threads
from dreamfield.diffusion import sample
from dreamfield.export.video import image_grid
from dreamfield.prior import load_prior
from dreamfield.run import save_image, say, slugify

VIEWS = ("front", "side", "back", "overhead")


def run_sample(cfg: Config, prompt: str, views: Sequence[str], method: str, steps: int, n: int, guidance: float,
               eta: float, out: Path) -> Path:
    """``n`` samples of ``prompt`` for each view suffix (or the bare prompt when ``views`` is empty) as one PNG
    grid ``out/<prompt-slug>-<method>.png`` (written atomically); returns its path."""
    set_threads(cfg.run.threads)
    device = resolve_device(cfg.run.device)
    prior = load_prior(cfg.prior.model, device, cfg.prior.dtype, cfg.prior.local_files_only, cfg.prior.channels_last)
    texts = [f"{prompt}, {v} view" for v in views] or [prompt]
    generator = torch.Generator(device="cpu").manual_seed(cfg.run.seed)
    rows = []
    for text in texts:
        emb = prior.embed([text] * n, cfg.prior.negative_prompt)

        def eps_fn(x_t, t, emb=emb):
            return prior.eps(x_t, t, emb, guidance)

        shape = (n, prior.latent_channels, prior.latent_size, prior.latent_size)
        z = sample(eps_fn, shape, prior.schedule, method=method, steps=steps, eta=eta, generator=generator,
                   device=prior.device, progress=True)
        rows.append(prior.decode(z.to(device)).float().cpu())
    path = Path(out) / f"{slugify(prompt)}-{method}.png"
    save_image(image_grid(torch.cat(rows), nrow=n), path)
    say(f"{len(texts)} x {n} samples ({method}, {steps} steps, guidance {guidance}) -> {path}")
    return path
