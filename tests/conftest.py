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


@pytest.fixture
def interrupt_after():
    """interrupt_after(n) -> a stand-in for dreamfield.optimize.optimize that stops with KeyboardInterrupt
    (as Ctrl-C would) once n steps are done and checkpointed; patch it in where a flow imported it
    (dreamfield.generate.optimize, dreamfield.edit.optimize) to test resume."""
    from dreamfield import optimize as opt

    real = opt.optimize

    def make(n: int):
        def stopped_optimize(*args, **kwargs):
            def on_step(done):
                if done == n:
                    raise KeyboardInterrupt

            return real(*args, **kwargs, on_step=on_step)

        return stopped_optimize

    return make


@pytest.fixture
def nerfacc_cuda():
    """nerfacc's packed CUDA path, built (the patched, cached build) and probed; a failed probe fails the test
    with its one-line reason (on a GPU machine the packed path must work)."""
    from dreamfield.scene.nerfacc_cuda import probe_packed

    reason = probe_packed(torch.device("cuda"))
    if reason:
        pytest.fail(f"nerfacc's CUDA path: {reason}")
