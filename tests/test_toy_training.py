"""The toy prior's training code on a miniature configuration: data split, captions, export layout, resume."""

import json

import pytest
import torch

from dreamfield.toy import data as toy_data
from dreamfield.toy import training
from dreamfield.toy.domain import HELD_OUT, TRAIN_PAIRS, VIEW_LABELS


def tiny_config() -> training.TrainConfig:
    cfg = training.smoke_config(training.TrainConfig(seed=0, device="cpu"))
    cfg.views_per_shape = 2
    cfg.vae_channels = (8, 8, 8)
    cfg.unet_channels = (32, 32, 32)
    cfg.text_hidden, cfg.text_heads, cfg.text_layers = 32, 2, 1
    cfg.vae_steps = cfg.unet_steps = 2
    cfg.vae_batch = cfg.unet_batch = 4
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    cfg = tiny_config()
    work = tmp_path_factory.mktemp("work")
    bank = toy_data.make_geometry_bank(cfg.views_per_shape, seed=0, size=64)
    vae, vae_report = training.train_vae(cfg, bank, work, resume=False, budget=None)
    tok = training.write_tokenizer(work / "tokenizer", cfg)
    unet, text, scale, unet_report = training.train_unet(cfg, vae, bank, tok, work, resume=False, budget=None)
    out = work / "pipe"
    sizes = training.export_pipeline(out, unet, vae, text, work / "tokenizer", scale, {"test": True})
    return dict(cfg=cfg, work=work, bank=bank, vae=vae, tok=tok, out=out, sizes=sizes, scale=scale,
                vae_report=vae_report, unet_report=unet_report)


def test_dataset_holds_only_training_pairs(trained):
    pairs = toy_data.pairs_tensor(TRAIN_PAIRS)
    latents, pair_idx, view_idx = training.encode_dataset(trained["vae"], trained["bank"], pairs)
    V = trained["cfg"].views_per_shape
    assert latents.shape == (len(TRAIN_PAIRS) * V, 4, 16, 16)
    seen = {TRAIN_PAIRS[i] for i in pair_idx.tolist()}
    assert seen == set(TRAIN_PAIRS) and not seen & set(HELD_OUT)
    # The view label of each latent is the rule applied to its camera.
    from dreamfield.prior.text import view_label

    bank = trained["bank"]
    for k in range(len(latents)):
        s = pairs[pair_idx[k], 1]
        v = k % V
        assert VIEW_LABELS[view_idx[k]] == view_label(bank.azimuth[s, v].item(), bank.elevation[s, v].item())


def test_captions_tokenize_to_whole_words(trained):
    tok = trained["tok"]
    ids, empty = training.caption_table(tok, TRAIN_PAIRS[:2], "cpu")
    assert ids.shape == (2, 4, trained["cfg"].max_length)
    words = tok.convert_ids_to_tokens(ids[0, 1].tolist())
    c, s = TRAIN_PAIRS[0]
    # <bos> a colour shape , side view <eos> <pad>...
    assert words[:8] == ["<|startoftext|>", "a</w>", f"{c}</w>", f"{s}</w>", ",</w>", "side</w>", "view</w>", "<|endoftext|>"]
    assert tok.convert_ids_to_tokens(empty[:2].tolist()) == ["<|startoftext|>", "<|endoftext|>"]


def test_exported_folder_loads_offline(trained):
    from diffusers import StableDiffusionPipeline
    from safetensors import safe_open

    from dreamfield.prior import load_prior

    out = trained["out"]
    assert json.loads((out / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    assert json.loads((out / "vae" / "config.json").read_text())["scaling_factor"] == pytest.approx(trained["scale"])
    with safe_open(str(out / "unet" / "diffusion_pytorch_model.safetensors"), framework="pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    assert max(trained["sizes"].values()) <= training.MAX_FILE_BYTES
    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, dtype=torch.float32, local_files_only=True)
    assert pipe.unet.dtype == torch.float32 and pipe.vae.config.scaling_factor == pytest.approx(trained["scale"])
    prior = load_prior(out, device="cpu", dtype="float32")
    assert prior.native_size == 64 and prior.latent_channels == 4 and prior.schedule.num_train_timesteps == 1000
    emb = prior.embed(["a red cube, front view"])
    z = prior.encode(torch.rand(1, 3, 64, 64))
    assert z.shape == (1, 4, 16, 16)
    eps = prior.eps(z, torch.tensor([10]), emb, 3.0)
    assert eps.shape == z.shape and torch.isfinite(eps).all()


def test_resume_skips_finished_stages(trained, capsys):
    cfg = trained["cfg"]
    ck = torch.load(trained["work"] / "vae.ckpt", weights_only=True)
    assert ck["done"] and ck["step"] == cfg.vae_steps
    vae, report = training.train_vae(cfg, trained["bank"], trained["work"], resume=True, budget=None)
    assert "resumed at step 2 (done)" in capsys.readouterr().out
    assert report == trained["vae_report"]
    for k, v in vae.state_dict().items():
        assert torch.equal(v, trained["vae"].state_dict()[k])


def test_schedule_and_clock():
    assert training.cosine_lr(1.0, 0.0, 0, warmup=10) == pytest.approx(0.1)
    assert training.cosine_lr(1.0, 0.0, 100, warmup=10) == pytest.approx(1.0)
    assert training.cosine_lr(1.0, 1.0, 100, warmup=10) == pytest.approx(0.05)
    clock = training.Clock(max_steps=10, budget=100.0, elapsed=50.0)
    assert clock.progress(0) == pytest.approx(0.5, abs=0.01)
    assert clock.progress(8) == pytest.approx(0.8)


def test_ema_follows_the_formula():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))
    ema = training.EMA(model)
    before = {k: v.clone() for k, v in ema.state.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(0.9)
    for k, v in model.state_dict().items():
        if v.dtype.is_floating_point:
            assert torch.allclose(ema.state[k], 0.9 * before[k] + 0.1 * v)
        else:  # integer buffers (num_batches_tracked) are left as they were
            assert torch.equal(ema.state[k], before[k])


def test_interrupted_unet_stage_continues(trained, capsys):
    """A checkpoint left by an interrupted run (done=False) is continued up to the step count."""
    work = trained["work"]
    ck = torch.load(work / "unet.ckpt", weights_only=True)
    ck["done"] = False
    torch.save(ck, work / "unet.ckpt")
    cfg = tiny_config()
    cfg.unet_steps = 3
    unet, text, scale, report = training.train_unet(cfg, trained["vae"], trained["bank"], trained["tok"], work,
                                                    resume=True, budget=None)
    assert "unet: resumed at step 2 (running)" in capsys.readouterr().out
    assert report["steps"] == 3 and scale == pytest.approx(trained["scale"])
    assert torch.load(work / "unet.ckpt", weights_only=True)["done"]


def test_same_seed_same_vae(trained, tmp_path):
    """The run is reproducible from its seed (CPU): a second VAE stage gives identical weights."""
    vae, report = training.train_vae(tiny_config(), trained["bank"], tmp_path, resume=False, budget=None)
    assert report["psnr_train_pairs"] == trained["vae_report"]["psnr_train_pairs"]
    for k, v in vae.state_dict().items():
        assert torch.equal(v, trained["vae"].state_dict()[k])
