"""The GPU check's helpers, on the CPU: the random SD 2.1-base maker and the report table.

scripts/gpu_check.sh itself runs on a lent GPU machine; what can be checked here is that the
architecture it times is the published one, that the folder it writes loads through load_prior as
a user's --model would, and that the report flags missed goals.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest
import torch

from scripts_dir import SCRIPTS, load_script as _load


def test_sd21_base_architecture_has_the_published_parameter_counts():
    # Built on the meta device: shapes only, no memory. Published sizes of stabilityai/stable-diffusion-2-1-base:
    # UNet 865,910,724; VAE 83,653,863; OpenCLIP-H text encoder (23 layers, CLIP's 49408-token vocabulary) 340,387,840.
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    m = _load("make_random_sd")
    unet_cfg, vae_cfg, text_cfg = m.architecture(tiny=False, text_encoder="full")
    with torch.device("meta"):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text = CLIPTextModel(CLIPTextConfig(vocab_size=49408, **text_cfg))
    assert m.count(unet) == 865_910_724
    assert m.count(vae) == 83_653_863
    assert m.count(text) == 340_387_840


def test_architecture_rejects_unknown_text_encoder_size():
    m = _load("make_random_sd")
    with pytest.raises(ValueError, match="full, small"):
        m.architecture(tiny=False, text_encoder="huge")
    _, _, small = m.architecture(tiny=False, text_encoder="small")
    assert small["num_hidden_layers"] == 2 and small["hidden_size"] == 1024  # same width as the UNet's cross-attention


def test_tiny_random_sd_loads_through_load_prior(tmp_path):
    from dreamfield.prior import load_prior

    m = _load("make_random_sd")
    summary = m.make_random_sd(tmp_path / "sd", tiny=True, text_encoder="full", device="cpu", dtype=torch.float16, seed=0)
    assert summary["bytes"] > 0
    prior = load_prior(tmp_path / "sd", "cpu")  # as `--model DIR` loads it; fp16 files upcast to fp32 on a CPU
    assert prior.native_size == 64 and prior.latent_size == 8 and prior.latent_channels == 4
    assert len(prior.unet.config.block_out_channels) == 4 and prior.schedule.prediction_type == "epsilon"
    assert prior.scaling_factor == pytest.approx(0.18215)
    rgb = torch.rand(1, 3, 32, 32, requires_grad=True)
    z = prior.encode(rgb)  # 32^2 upsampled to the native 64^2, as 64^2 renders are to 512^2 with SD
    assert z.shape == (1, 4, 8, 8)
    eps = prior.eps(z.detach(), torch.tensor([500]), prior.embed(["a red cube, front view"]), 7.5)
    assert eps.shape == z.shape and bool(torch.isfinite(eps).all())
    z.backward(eps)
    assert rgb.grad is not None and float(rgb.grad.abs().sum()) > 0


def test_report_flags_missed_goals(tmp_path):
    r = _load("gpu_report")
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    goals = {"it_s_min": 20.0, "peak_gb_max": 6.0, "ratio_max": 1.25}
    fast = {"variant": "base", "it_s": 25.0, "step_ms": 40.0, "prior_ms": 35.0, "unet_ms": 20.0, "vae_fwd_bwd_ms": 15.0,
            "ratio": 40.0 / 35.0, "peak_alloc_gb": 4.2, "peak_reserved_gb": 5.0}
    slow = dict(fast, variant="no_occ", it_s=10.0, step_ms=100.0, ratio=100.0 / 35.0, peak_alloc_gb=7.5)
    (work / "sds.json").write_text(json.dumps({"device": "NVIDIA H100", "goals": goals, "variants": [fast, slow], "notes": []}))
    (work / "steps.tsv").write_text("build\tok\t95.0\nsds\tTIMED OUT after 200s\t200.0\n")
    (work / "pytest.log").write_text("....\n=== 300 passed, 9 skipped in 61.2s ===\n")
    assert r.main([str(work), str(out)]) == 0
    table = (out / "gpu_report.md").read_text()
    base_row = next(l for l in table.splitlines() if l.startswith("| SDS step, base"))
    slow_row = next(l for l in table.splitlines() if l.startswith("| SDS step, no_occ"))
    assert "MISSED" not in base_row
    assert "it/s MISSED" in slow_row and "memory MISSED" in slow_row and "ratio MISSED" in slow_row
    assert "| step sds | TIMED OUT after 200s |" in table
    assert "300 passed, 9 skipped in 61.2s" in table
    assert json.loads((out / "results.json").read_text())["sds"]["variants"][1]["variant"] == "no_occ"


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_gpu_check_scripts_parse():
    for name in ("gpu_check.sh", "fetch_gpu_wheels.sh"):
        subprocess.run(["bash", "-n", str(SCRIPTS / name)], check=True)
