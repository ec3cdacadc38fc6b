"""A small CNN that names the shape and the colour in a 64x64 toy image (for 2D evaluation of the prior).

Trained on ground-truth renders of all 36 (colour, shape) pairs (held-out pairs included: it is a
measuring instrument, not part of the prior). Shipped as ``classifier.safetensors`` beside this file.
Judge 3D results on the exported mesh (``measures.score_mesh``), not with this: the prototype found a
classifier like this lenient on foggy renders.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dreamfield.toy.data import GeometryBank, colour_table
from dreamfield.toy.domain import COLOUR_NAMES, SHAPES

DEFAULT_PATH = Path(__file__).resolve().parent / "classifier.safetensors"


class ToyClassifier(nn.Module):
    """rgb (B, 3, 64, 64) in [0, 1] -> (shape logits (B, 6), colour logits (B, 6)).

    Four stride-2 conv blocks (64 -> 4 pixels), then a shared linear layer and two heads.
    """

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 2 * width, 4 * width]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:]):
            layers += [nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.GroupNorm(8, cout), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.hidden = nn.Linear(chans[-1] * 4 * 4, 128)
        self.shape_head = nn.Linear(128, len(SHAPES))
        self.colour_head = nn.Linear(128, len(COLOUR_NAMES))

    def forward(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if rgb.shape[-2:] != (64, 64):
            rgb = F.interpolate(rgb, size=(64, 64), mode="bilinear", align_corners=False, antialias=True)
        h = self.features(rgb * 2.0 - 1.0).flatten(1)  # (B, 4 * width * 16)
        h = F.silu(self.hidden(h))
        return self.shape_head(h), self.colour_head(h)

    @torch.no_grad()
    def predict(self, rgb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """rgb (B, 3, H, W) -> (shape idx (B,), colour idx (B,)) as indices into SHAPES / COLOUR_NAMES."""
        s, c = self(rgb)
        return s.argmax(-1), c.argmax(-1)


def augment(rgb: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Small shifts (up to 3 px, white fill) and pixel noise, so samples of a prior that are a little
    off-centre or grainy are still named by their content. rgb (B, 3, H, W) -> (B, 3, H, W)."""
    B, _, H, W = rgb.shape
    pad = 3
    padded = F.pad(rgb, (pad, pad, pad, pad), value=1.0)
    dx = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=rgb.device)
    dy = torch.randint(0, 2 * pad + 1, (B,), generator=generator, device=rgb.device)
    rows = (dy[:, None] + torch.arange(H, device=rgb.device)[None])  # (B, H)
    cols = (dx[:, None] + torch.arange(W, device=rgb.device)[None])  # (B, W)
    out = padded[torch.arange(B, device=rgb.device)[:, None, None, None], torch.arange(3, device=rgb.device)[None, :, None, None],
                 rows[:, None, :, None], cols[:, None, None, :]]
    noise = torch.randn(out.shape, generator=generator, device=rgb.device) * 0.02
    return (out + noise).clamp(0.0, 1.0)


def train_classifier(
    bank: GeometryBank,
    steps: int,
    batch: int = 64,
    lr: float = 2e-3,
    seed: int = 0,
    time_budget: Optional[float] = None,
    progress: bool = False,
) -> ToyClassifier:
    """Train on random (all 36 pairs x bank views) images; on the bank's device. Returns the model in eval mode."""
    dev = bank.maps.device
    g = torch.Generator(device=dev).manual_seed(seed)
    torch.manual_seed(seed)
    model = ToyClassifier().to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    table = colour_table(dev)
    S, V = bank.maps.shape[:2]
    it = range(steps)
    if progress:
        from tqdm import tqdm

        it = tqdm(it, desc="classifier", unit="step")
    start = time.perf_counter()
    for step in it:
        frac = step / max(steps, 1)
        if time_budget:
            frac = max(frac, (time.perf_counter() - start) / time_budget)
            if frac >= 1.0:
                break
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1.0 + torch.cos(torch.tensor(frac * torch.pi)).item())
        shape = torch.randint(0, S, (batch,), generator=g, device=dev)
        colour = torch.randint(0, len(COLOUR_NAMES), (batch,), generator=g, device=dev)
        view = torch.randint(0, V, (batch,), generator=g, device=dev)
        geo = bank.maps[shape, view].float()
        rgb = augment((table[colour][:, :, None, None] * geo[:, :1] + (1.0 - geo[:, 1:])).clamp(0, 1), g)
        s_logit, c_logit = model(rgb)
        loss = F.cross_entropy(s_logit, shape) + F.cross_entropy(c_logit, colour)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if progress and step % 20 == 0:
            it.set_postfix(loss=f"{loss.item():.3f}")
    return model.eval()


@torch.no_grad()
def accuracy(model: ToyClassifier, images: torch.Tensor, shape: torch.Tensor, colour: torch.Tensor) -> tuple[float, float]:
    """(shape accuracy, colour accuracy) on images (N, 3, H, W) with labels (N,)."""
    dev = next(model.parameters()).device
    preds_s, preds_c = [], []
    for i in range(0, len(images), 256):
        s, c = model.predict(images[i : i + 256].to(dev))
        preds_s.append(s.cpu())
        preds_c.append(c.cpu())
    ps, pc = torch.cat(preds_s), torch.cat(preds_c)
    return (ps == shape.cpu()).float().mean().item(), (pc == colour.cpu()).float().mean().item()


def save_classifier(model: ToyClassifier, path: str | Path = DEFAULT_PATH) -> Path:
    """Weights as fp16 safetensors (about 0.4 MB)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().cpu().contiguous() for k, v in model.state_dict().items()}, str(path))
    return path


def load_classifier(path: str | Path | None = None, device: torch.device | str = "cpu") -> ToyClassifier:
    """The shipped classifier (or one at ``path``), float32, eval mode."""
    path = Path(path) if path is not None else DEFAULT_PATH
    if not path.is_file():
        raise FileNotFoundError(f"toy classifier weights not found at {path}; train them with scripts/train_toy_prior.py")
    model = ToyClassifier()
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    model.load_state_dict(state)
    return model.to(device).eval()
