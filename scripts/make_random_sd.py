"""Write a random-weight latent diffusion model with Stable Diffusion 2.1-base's architecture.

A stand-in for a real checkpoint when timing the GPU path: same layers, same shapes, same cost per
step, weights drawn by the modules' own initialisers (no download, nothing to license). The folder
is in diffusers layout and loads through ``dreamfield.prior.load_prior(DIR)`` exactly as a user's
``--model`` folder would:

    DIR/model_index.json
    DIR/unet/{config.json, diffusion_pytorch_model.safetensors}      UNet2DConditionModel
    DIR/vae/{config.json, diffusion_pytorch_model.safetensors}       AutoencoderKL
    DIR/text_encoder/{config.json, model.safetensors}                transformers.CLIPTextModel
    DIR/tokenizer/{vocab.json, merges.txt, tokenizer_config.json}    transformers.CLIPTokenizer
    DIR/scheduler/scheduler_config.json                              SD's scaled_linear schedule

Architecture: the published configs of stabilityai/stable-diffusion-2-1-base (unet/, vae/,
text_encoder/, scheduler/), written out below as plain dicts. The text encoder is OpenCLIP ViT-H/14's
text tower as SD 2.x ships it (the penultimate layer's output, hence 23 of its 24 layers).
Differences from the real model, none of which changes the cost of an SDS step:

- the tokenizer's vocabulary is a few dozen words (dreamfield.prior.tokenizer), not CLIP's 49408
  BPE tokens, so the text encoder's token-embedding table is smaller (the text encoder runs once per
  prompt and its output is cached: it does not take part in the timed step);
- ``--text-encoder small`` keeps the output width (1024, the UNet's cross_attention_dim) but only
  2 layers: the UNet and VAE, which alone run in every step, are unchanged; it saves ~0.5 GB of
  GPU memory and a few seconds of start-up. ``full`` (the default) keeps all 23 layers, so the
  peak memory measured with it is that of the real model (up to the embedding table);
- ``--tiny``: a miniature of the same block structure (4 UNet levels, 4 VAE levels, 64x64 images)
  for a CPU dry run of the code path; its timings mean nothing.

Usage:
    python3 scripts/make_random_sd.py --out /tmp/sd21_random            # on a GPU machine: ~2.6 GB
    python3 scripts/make_random_sd.py --out /tmp/sd_tiny --tiny         # CPU dry run: ~1 MB
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from dreamfield.prior.folder import write_pipeline_index

# ---------------------------------------------------------------------------------------------
# Published architecture of stabilityai/stable-diffusion-2-1-base (diffusers layout).

SD21_BASE_UNET = {
    "sample_size": 64,  # latent side: 512 / 8
    "in_channels": 4,
    "out_channels": 4,
    "center_input_sample": False,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    "block_out_channels": [320, 640, 1280, 1280],
    "layers_per_block": 2,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "cross_attention_dim": 1024,
    # diffusers' historical name: this is the number of heads per level (5, 10, 20, 20 heads of 64 channels)
    "attention_head_dim": [5, 10, 20, 20],
    "use_linear_projection": True,
    "dual_cross_attention": False,
    "upcast_attention": False,
}

SD21_BASE_VAE = {
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [128, 256, 512, 512],
    "layers_per_block": 2,
    "act_fn": "silu",
    "latent_channels": 4,
    "norm_num_groups": 32,
    "sample_size": 512,
    "scaling_factor": 0.18215,
}

# OpenCLIP ViT-H/14 text tower as SD 2.x's text_encoder/config.json gives it (vocab set from the tokenizer).
SD21_TEXT_ENCODER = {
    "hidden_size": 1024,
    "intermediate_size": 4096,
    "num_hidden_layers": 23,
    "num_attention_heads": 16,
    "max_position_embeddings": 77,
    "projection_dim": 512,
    "hidden_act": "gelu",
    "layer_norm_eps": 1e-5,
    "initializer_range": 0.02,
    "initializer_factor": 1.0,
}

# scheduler/scheduler_config.json of 2.1-base: PNDM over SD's scaled_linear betas, epsilon prediction
# (the 768 px model "stable-diffusion-2-1" is the v-prediction one).
SD21_BASE_SCHEDULER = {
    "_class_name": "PNDMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "prediction_type": "epsilon",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

# ---------------------------------------------------------------------------------------------
# The same block structure, miniature (CPU dry run).

TINY_UNET = {
    **SD21_BASE_UNET,
    "sample_size": 8,
    "block_out_channels": [32, 32, 64, 64],
    "attention_head_dim": [1, 1, 2, 2],
    "layers_per_block": 1,
    "norm_num_groups": 16,
    "cross_attention_dim": 32,
}
TINY_VAE = {
    **SD21_BASE_VAE,
    "block_out_channels": [16, 16, 32, 32],
    "layers_per_block": 1,
    "norm_num_groups": 8,
    "sample_size": 64,
}
TINY_TEXT_ENCODER = {
    **SD21_TEXT_ENCODER,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "projection_dim": 32,
}

# The words the tokenizer knows as single tokens (any other text still tokenizes, byte by byte).
WORDS = (
    "a an the red green blue yellow purple orange white black grey cube sphere cylinder cone torus pyramid "
    "front side back overhead view of photo dslr"
).split()


def architecture(tiny: bool, text_encoder: str) -> tuple[dict, dict, dict]:
    """(unet, vae, text encoder) config dicts for the chosen size; see the module docstring."""
    if text_encoder not in ("full", "small"):
        raise ValueError(f"--text-encoder {text_encoder!r} is not one of full, small")
    unet, vae, text = (TINY_UNET, TINY_VAE, TINY_TEXT_ENCODER) if tiny else (SD21_BASE_UNET, SD21_BASE_VAE, SD21_TEXT_ENCODER)
    text = dict(text)
    if text_encoder == "small":
        text["num_hidden_layers"] = min(2, text["num_hidden_layers"])
    if text["hidden_size"] != unet["cross_attention_dim"]:
        raise ValueError("text encoder width must equal the UNet's cross_attention_dim")
    return dict(unet), dict(vae), text


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def make_random_sd(out: Path, tiny: bool, text_encoder: str, device: str, dtype: torch.dtype, seed: int) -> dict:
    """Build the three networks with random weights on ``device``, save them to ``out`` in ``dtype``.

    Returns a summary: parameter counts, bytes on disk, seconds to build and to save.
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from dreamfield.prior.tokenizer import build_bpe_vocab, special_token_ids, write_clip_tokenizer

    unet_cfg, vae_cfg, text_cfg = architecture(tiny, text_encoder)
    out.mkdir(parents=True, exist_ok=True)
    max_len = text_cfg["max_position_embeddings"]
    write_clip_tokenizer(out / "tokenizer", WORDS, model_max_length=max_len)
    vocab, _ = build_bpe_vocab(WORDS)
    bos, eos = special_token_ids(vocab)

    t0 = time.perf_counter()
    torch.manual_seed(seed)
    # Building on the GPU makes the initialisers of ~1.3 G parameters run there (seconds, not a minute).
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_cfg)
        vae = AutoencoderKL(**vae_cfg)
        text_model = CLIPTextModel(
            CLIPTextConfig(vocab_size=len(vocab), bos_token_id=bos, eos_token_id=eos, pad_token_id=eos, **text_cfg)
        )
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    t_build = time.perf_counter() - t0

    t0 = time.perf_counter()
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text_model)):
        model.to("cpu", dtype)  # safetensors files are written from host memory
        model.save_pretrained(out / name, safe_serialization=True)
    write_pipeline_index(out, SD21_BASE_SCHEDULER)
    t_save = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    return {
        "out": str(out),
        "size": "tiny" if tiny else "sd21-base",
        "text_encoder": text_encoder,
        "dtype": str(dtype).replace("torch.", ""),
        "params_unet": count(unet),
        "params_vae": count(vae),
        "params_text_encoder": count(text_model),
        "bytes": size,
        "build_s": round(t_build, 2),
        "save_s": round(t_save, 2),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, type=Path, help="folder to write (created)")
    p.add_argument("--text-encoder", default="full", choices=["full", "small"], help="23 layers (full) or 2 (small)")
    p.add_argument("--tiny", action="store_true", help="miniature of the same structure, for a CPU dry run")
    p.add_argument("--device", default="auto", help="where the random weights are drawn: auto, cpu, cuda")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="dtype of the saved weights")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.float16 if args.dtype == "float16" else torch.float32
    summary = make_random_sd(args.out, args.tiny, args.text_encoder, device, dtype, args.seed)
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
