"""The packed/dense choice at start-up: nerfacc's CUDA path only after its probe passes, else one warning
line and the dense path (simulated here on the CPU: the probe's verdict is a stand-in)."""

from __future__ import annotations

import torch

from dreamfield.config import load_config
from dreamfield.generate import packed_or_dense


def test_a_failed_probe_falls_back_to_the_dense_path_with_one_warning(capsys):
    cfg = load_config([], [])
    assert cfg.render.use_occupancy_grid
    calls = []
    packed_or_dense(cfg, torch.device("cuda"), lambda dev: calls.append(dev) or "nvcc not found (CUDA_HOME=/nowhere)")
    err = capsys.readouterr().err.strip().splitlines()
    assert calls and not cfg.render.use_occupancy_grid  # the run (and its config.yaml) use the dense path
    assert len(err) == 1 and "nvcc not found" in err[0] and "dense path" in err[0]


def test_a_probe_that_raises_is_still_one_warning(capsys):
    cfg = load_config([], [])

    def broken(dev):
        raise AttributeError("'NoneType' object has no attribute 'sampling'")  # nerfacc's backend = None

    packed_or_dense(cfg, torch.device("cuda"), broken)
    err = capsys.readouterr().err.strip().splitlines()
    assert not cfg.render.use_occupancy_grid and len(err) == 1 and "NoneType" in err[0]


def test_a_passing_probe_keeps_the_packed_path_and_the_cpu_never_probes(capsys):
    cfg = load_config([], [])
    packed_or_dense(cfg, torch.device("cuda"), lambda dev: None)
    assert cfg.render.use_occupancy_grid and capsys.readouterr().err == ""
    packed_or_dense(cfg, torch.device("cpu"), lambda dev: (_ for _ in ()).throw(AssertionError("probed on CPU")))
    assert cfg.render.use_occupancy_grid


def test_the_text_encoder_leaves_the_gpu_once_every_step_text_is_embedded(tiny_sd_path):
    # On the CPU the encoder stays (nothing to free); what must hold everywhere: every text a step can ask for is
    # cached before the loop, so the loop never runs the text encoder.
    from dreamfield.distill.objectives import prompts_for, step_texts
    from dreamfield.generate import embed_once
    from dreamfield.prior import load_prior
    from dreamfield.scene.cameras import sample_cameras

    cfg = load_config([], [])
    prior = load_prior(str(tiny_sd_path), "cpu")
    embed_once(prior, cfg, "a red cube")
    assert set(step_texts("a red cube")) <= set(prior._text_cache)
    calls = []
    real = prior._encode_text
    prior._encode_text = lambda p: calls.append(p) or real(p)
    gen = torch.Generator().manual_seed(0)
    for _ in range(20):  # every view label the camera ranges reach, overhead included
        cams = sample_cameras(cfg.camera, 8, gen, "cpu")
        prior.embed(prompts_for("a red cube", cams, True), cfg.prior.negative_prompt)
    assert calls == []
