"""The diffusers prior on a tiny random Stable Diffusion folder: loading, encode/decode, text, eps, errors."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
import torch.nn.functional as F

from dreamfield.diffusion import NoiseSchedule
from dreamfield.prior import PriorLoadError, TextEmbedding, load_prior, resolve_dtype
from dreamfield.prior import diffusers_prior as dp


@pytest.fixture(scope="module")
def prior(tiny_sd_path):
    return load_prior(str(tiny_sd_path), "cpu")


@pytest.fixture(scope="module")
def prior_v(tiny_sd_v_path):
    return load_prior(tiny_sd_v_path, "cpu")


def _latents(seed=0, B=2):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, 8, 8, generator=g), torch.tensor([37, 811][:B])


# ------------------------------------------------------------------ loading
def test_loads_frozen_with_native_size_and_schedule(prior):
    assert prior.native_size == 16 and prior.latent_size == 8 and prior.latent_channels == 4
    assert prior.dtype == torch.float32 and prior.device == torch.device("cpu")
    assert isinstance(prior.schedule, NoiseSchedule) and prior.schedule.prediction_type == "epsilon"
    ref = NoiseSchedule("scaled_linear", 1000, 0.00085, 0.012)
    assert torch.equal(prior.schedule.alphas_cumprod, ref.alphas_cumprod)
    for module in (prior.unet, prior.vae, prior.text_encoder):
        assert not module.training
        assert not any(p.requires_grad for p in module.parameters())


def test_dtype_auto_is_fp32_on_cpu_fp16_on_cuda():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="float64"):
        resolve_dtype("float64", torch.device("cpu"))


# ------------------------------------------------------------------ images <-> latents
def test_encode_resizes_to_native_size_and_uses_the_posterior_mean(prior):
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    z = prior.encode(rgb)
    assert z.shape == (2, 4, 8, 8) and z.dtype == torch.float32
    up = F.interpolate(rgb, size=(16, 16), mode="bilinear", align_corners=False, antialias=False)
    with torch.no_grad():
        ref = prior.vae.encode(2 * up - 1).latent_dist.mean * prior.vae.config.scaling_factor
    torch.testing.assert_close(z.detach(), ref)
    assert torch.equal(prior.encode(up).detach(), z.detach())  # native input: no resize, same result
    assert prior.scaling_factor == pytest.approx(0.18215)


def test_encode_is_differentiable(prior):
    rgb = torch.rand(1, 3, 12, 12, generator=torch.Generator().manual_seed(2), requires_grad=True)
    z = prior.encode(rgb)
    assert z.requires_grad
    z.square().sum().backward()
    assert rgb.grad is not None and torch.isfinite(rgb.grad).all() and float(rgb.grad.abs().sum()) > 0


def test_encode_rejects_wrong_shape(prior):
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        prior.encode(torch.rand(1, 4, 8, 8))


def test_decode_inverts_the_scaling_and_maps_to_unit_range(prior):
    z, _ = _latents(3)
    img = prior.decode(z)
    assert img.shape == (2, 3, 16, 16) and img.dtype == torch.float32
    assert float(img.min()) >= 0.0 and float(img.max()) <= 1.0
    with torch.no_grad():
        ref = ((prior.vae.decode(z / prior.scaling_factor).sample + 1) / 2).clamp(0, 1)
    torch.testing.assert_close(img.detach(), ref)


# ------------------------------------------------------------------ text
def test_embed_shapes_and_padding_match_diffusers_pipeline(prior, tiny_sd_path):
    text = prior.embed(["a red cube, front view", "a blue cone"])
    assert isinstance(text, TextEmbedding) and text.prompts == ("a red cube, front view", "a blue cone")
    assert text.cond.shape == (2, 16, 32) and text.uncond.shape == (2, 16, 32)
    assert torch.equal(text.uncond[0], prior.embed([""]).cond[0])
    assert not torch.allclose(text.cond[0], text.cond[1])


def test_text_cache_returns_identical_tensors_without_recomputing(prior):
    calls = []
    hook = prior.text_encoder.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    try:
        first = prior.embed(["a green torus", "a yellow sphere, back view"], negative="a cube")
        assert calls == [3]  # two prompts and the negative, one batch
        again = prior.embed(["a yellow sphere, back view", "a green torus"], negative="a cube")
        assert calls == [3]  # nothing recomputed
        assert torch.equal(again.cond[0], first.cond[1]) and torch.equal(again.cond[1], first.cond[0])
        assert torch.equal(again.uncond, first.uncond)
        prior.embed(["a green torus", "a purple pyramid"], negative="a cube")
        assert calls == [3, 1]  # only the new prompt
    finally:
        hook.remove()
    with pytest.raises(ValueError, match="list"):
        prior.embed("a red cube")


# ------------------------------------------------------------------ eps and guidance
def _unet(prior, z_t, t, emb):
    with torch.no_grad():
        return prior.unet(z_t, t, encoder_hidden_states=emb).sample


def test_eps_scale_one_is_the_conditional_prediction(prior):
    z_t, t = _latents(4)
    text = prior.embed(["a red cube", "an orange cone"])
    eps = prior.eps(z_t, t, text, 1.0)
    assert eps.dtype == torch.float32 and not eps.requires_grad
    torch.testing.assert_close(eps, _unet(prior, z_t, t, text.cond), rtol=1e-5, atol=1e-6)


def test_eps_guidance_matches_two_separate_unet_calls(prior):
    z_t, t = _latents(5)
    text = prior.embed(["a red cube", "an orange cone"])
    eps_u, eps_c = _unet(prior, z_t, t, text.uncond), _unet(prior, z_t, t, text.cond)
    assert float((eps_c - eps_u).abs().max()) > 1e-3  # the prompt matters, so the check has teeth
    for s in (0.0, 7.5, 100.0):
        torch.testing.assert_close(prior.eps(z_t, t, text, s), eps_u + s * (eps_c - eps_u), rtol=1e-4, atol=1e-4)


def test_eps_broadcasts_one_prompt_and_scalar_t(prior):
    z_t, t = _latents(6)
    one = prior.embed(["a red cube"])
    both = prior.embed(["a red cube", "a red cube"])
    torch.testing.assert_close(prior.eps(z_t, torch.tensor(500), one, 7.5), prior.eps(z_t, torch.tensor([500, 500]), both, 7.5))


def test_v_prediction_is_converted_to_eps(prior_v):
    from diffusers import DDIMScheduler

    assert prior_v.schedule.prediction_type == "v_prediction"
    z_t, t = _latents(7)
    text = prior_v.embed(["a blue cylinder", "a red cube"])
    v_u, v_c = _unet(prior_v, z_t, t, text.uncond), _unet(prior_v, z_t, t, text.cond)
    # independent reference: abar from diffusers' own scheduler, eps = sqrt(abar) v + sqrt(1 - abar) x_t
    abar = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012).alphas_cumprod[t]
    abar = abar.reshape(-1, 1, 1, 1)
    to_eps = lambda v: abar.sqrt() * v + (1 - abar).sqrt() * z_t  # noqa: E731
    torch.testing.assert_close(prior_v.eps(z_t, t, text, 1.0), to_eps(v_c), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(prior_v.schedule.to_eps(z_t, t, v_c), to_eps(v_c), rtol=1e-5, atol=1e-5)
    s = 5.0
    expected = to_eps(v_u) + s * (to_eps(v_c) - to_eps(v_u))
    torch.testing.assert_close(prior_v.eps(z_t, t, text, s), expected, rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------ the folder is a real diffusers pipeline
def test_diffusers_pipeline_loads_the_folder_offline_and_agrees_on_text(tiny_sd_path, prior):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_sd_path, safety_checker=None, local_files_only=True, use_safetensors=True
    )
    assert pipe.unet.config.sample_size == 8
    prompt = "a purple pyramid, overhead view"
    cond, uncond = pipe.encode_prompt(prompt, "cpu", 1, True, negative_prompt="")
    text = prior.embed([prompt])
    torch.testing.assert_close(cond, text.cond)
    torch.testing.assert_close(uncond, text.uncond)


# ------------------------------------------------------------------ errors
def _one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def test_missing_folder(tmp_path):
    with pytest.raises(PriorLoadError, match="not found") as e:
        load_prior(str(tmp_path / "nope"), "cpu")
    _one_line(e)


def test_folder_without_unet_names_the_component(tiny_sd_path, tmp_path):
    broken = shutil.copytree(tiny_sd_path, tmp_path / "broken")
    shutil.rmtree(broken / "unet")
    with pytest.raises(PriorLoadError, match=r"missing component 'unet/'") as e:
        load_prior(broken, "cpu")
    _one_line(e)


def test_folder_without_safetensors_is_refused(tiny_sd_path, tmp_path):
    broken = shutil.copytree(tiny_sd_path, tmp_path / "bin_only")
    (broken / "vae" / "diffusion_pytorch_model.safetensors").rename(broken / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(PriorLoadError, match=r"vae: no \.safetensors") as e:
        load_prior(broken, "cpu")
    _one_line(e)


def test_unsupported_schedule_is_a_load_error(tiny_sd_path, tmp_path):
    broken = shutil.copytree(tiny_sd_path, tmp_path / "zero_snr")
    cfg_path = broken / "scheduler" / "scheduler_config.json"
    cfg_path.write_text(json.dumps({**json.loads(cfg_path.read_text()), "rescale_betas_zero_snr": True}))
    with pytest.raises(PriorLoadError, match="rescale_betas_zero_snr") as e:
        load_prior(broken, "cpu")
    _one_line(e)


def test_hub_id_offline_is_a_one_line_error():
    with pytest.raises(PriorLoadError, match="not found locally and this machine is offline; pass a local folder") as e:
        load_prior("dreamfield-tests/no-such-model", "cpu")
    _one_line(e)


def test_missing_toy_prior_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(dp, "TOY_PRIOR_DIR", tmp_path / "toy_prior")
    with pytest.raises(PriorLoadError, match="toy prior is not installed") as e:
        load_prior(None, "cpu")
    _one_line(e)


def test_bad_dtype_is_a_value_error(tiny_sd_path):
    with pytest.raises(ValueError, match="dtype"):
        load_prior(tiny_sd_path, "cpu", dtype="int8")


# ------------------------------------------------------------------ GPU (fp16), on the device machine only
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_fp16_on_cuda_agrees_with_fp32_on_cpu(tiny_sd_path, prior):
    gpu = load_prior(tiny_sd_path, "cuda")
    assert gpu.dtype == torch.float16
    z_t, t = _latents(8)
    text_g, text_c = gpu.embed(["a red cube"]), prior.embed(["a red cube"])
    eps_g = gpu.eps(z_t.cuda(), t.cuda(), text_g, 7.5)
    assert eps_g.dtype == torch.float32 and torch.isfinite(eps_g).all()
    torch.testing.assert_close(eps_g.cpu(), prior.eps(z_t, t, text_c, 7.5), rtol=0, atol=0.05)
    rgb = torch.rand(2, 3, 8, 8, device="cuda", requires_grad=True)
    z = gpu.encode(rgb)
    assert z.dtype == torch.float32
    z.square().sum().backward()
    assert torch.isfinite(rgb.grad).all() and float(rgb.grad.abs().sum()) > 0
    torch.testing.assert_close(z.detach().cpu(), prior.encode(rgb.detach().cpu()).detach(), rtol=0, atol=0.02)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_sds_step_on_cuda_fp16_reaches_the_image(tiny_sd_path):
    from dreamfield.config import GuidanceConfig
    from dreamfield.distill import grad_to_loss, sample_timesteps, sds_grad

    gpu = load_prior(tiny_sd_path, "cuda", channels_last=True)
    gen = torch.Generator().manual_seed(0)
    rgb = torch.rand(2, 3, 8, 8, device="cuda", requires_grad=True)
    z = gpu.encode(rgb)
    t = sample_timesteps(2, 0, 10, GuidanceConfig(), gpu.schedule.num_train_timesteps, gen, "cuda")
    noise = torch.randn(z.shape, generator=gen).cuda()
    g = sds_grad(gpu, z, gpu.embed(["a red cube, front view"]), t, noise, 7.5)
    assert g.device.type == "cuda" and g.dtype == torch.float32 and torch.isfinite(g).all()
    grad_to_loss(z, g).backward()
    assert torch.isfinite(rgb.grad).all() and float(rgb.grad.abs().sum()) > 0
