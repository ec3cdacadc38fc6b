"""Atomic checkpoints of an optimisation run: field, background, optimiser, RNG states and step.

Files are written with ``torch.save`` through :func:`dreamfield.files.atomic_path` (a temporary name
in the same folder, renamed over the target), so a crash mid-write never leaves a half checkpoint
behind. They are read back with ``torch.load(weights_only=True)``: only tensors and plain
containers are accepted, never arbitrary pickled objects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from dreamfield.files import atomic_path

CHECKPOINT_VERSION = 1


class CheckpointError(ValueError):
    """A missing, unreadable or incompatible checkpoint (one-line message)."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically to ``path`` (tmp file + rename). Returns the path."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(dict(state, version=CHECKPOINT_VERSION), tmp)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`; CheckpointError if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # truncated zip, garbage bytes, foreign pickle...
        reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"corrupt or unreadable checkpoint {path}: {reason}") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or "step" not in state:
        raise CheckpointError(f"{path} is not a dreamfield checkpoint (version {CHECKPOINT_VERSION})")
    return state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """Every random state the loop draws from: its own generator, torch's CPU and CUDA RNGs."""
    out: dict[str, Any] = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(state["generator"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
