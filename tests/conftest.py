"""Shared pytest fixtures."""

from __future__ import annotations

import pytest
import torch

# One intra-op thread: the tests' tensors are small, and two threads on a 2-core machine that runs
# anything else as well slowed some tests ten-fold (spinning OpenMP workers); one thread never did.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_sd_path(tmp_path_factory):
    """A tiny random Stable Diffusion folder (epsilon prediction), built once per test session."""
    from tiny_sd import build_tiny_sd

    return build_tiny_sd(tmp_path_factory.mktemp("tiny_sd") / "pipe", prediction_type="epsilon")


@pytest.fixture(scope="session")
def tiny_sd_v_path(tiny_sd_path, tmp_path_factory):
    """The same weights as ``tiny_sd_path`` with a v_prediction scheduler config."""
    from tiny_sd import with_prediction_type

    return with_prediction_type(tiny_sd_path, tmp_path_factory.mktemp("tiny_sd_v") / "pipe", "v_prediction")
