"""The compute device and CPU threads of a command."""

from __future__ import annotations

import torch


def resolve_device(name: str) -> torch.device:
    """"auto" -> CUDA when available, else CPU; "cpu", "cuda", "cuda:N" as given (ValueError without CUDA)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: CUDA is not available on this machine (use cpu or auto)")
    return dev


def set_threads(threads: int) -> None:
    """torch's intra-op CPU threads (run.threads); 0 leaves torch's default."""
    if threads > 0:
        torch.set_num_threads(threads)
