"""A tiny random Stable Diffusion pipeline in diffusers layout, built from configs for tests.

Same architecture family as SD 1.x (UNet2DConditionModel with cross-attention, AutoencoderKL, CLIP
text encoder and BPE tokenizer, SD's scaled_linear schedule), a few hundred kilobytes in all:
native image 16x16, latent 4x8x8, text embeddings 16 tokens x 32.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from dreamfield.prior.folder import SD_DDIM_SCHEDULER, write_pipeline_index
from dreamfield.prior.tokenizer import build_bpe_vocab, special_token_ids, write_clip_tokenizer

WORDS = (
    "a red green blue yellow purple orange sphere cube cylinder cone torus pyramid "
    "front side back overhead view"
).split()
MAX_LENGTH = 16  # padded prompt length (77 in SD); keeps the text encoder tiny


def build_tiny_sd(folder: str | Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write a tiny random SD pipeline to ``folder`` (created) and return it.

    Each model is saved with its own ``save_pretrained`` (safetensors), the tokenizer with
    :func:`dreamfield.prior.tokenizer.write_clip_tokenizer`, the scheduler config and
    ``model_index.json`` as JSON, so ``StableDiffusionPipeline.from_pretrained`` loads the folder.
    The global RNG is left untouched (weights come from a forked RNG seeded with ``seed``).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_clip_tokenizer(folder / "tokenizer", WORDS, model_max_length=MAX_LENGTH)
    vocab, _ = build_bpe_vocab(WORDS)
    bos, eos = special_token_ids(vocab)

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=8,
            in_channels=4,
            out_channels=4,
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            block_out_channels=(32, 64),
            layers_per_block=1,
            norm_num_groups=8,
            cross_attention_dim=32,
            attention_head_dim=8,
        )
        vae = AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
            up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
            block_out_channels=(16, 32),
            layers_per_block=1,
            norm_num_groups=8,
            latent_channels=4,
            sample_size=16,
        )
        text_encoder = CLIPTextModel(
            CLIPTextConfig(
                vocab_size=len(vocab),
                hidden_size=32,
                intermediate_size=64,
                num_hidden_layers=2,
                num_attention_heads=2,
                max_position_embeddings=MAX_LENGTH,
                bos_token_id=bos,
                eos_token_id=eos,
                pad_token_id=eos,
            )
        )
    unet.save_pretrained(folder / "unet", safe_serialization=True)
    vae.save_pretrained(folder / "vae", safe_serialization=True)
    text_encoder.save_pretrained(folder / "text_encoder", safe_serialization=True)
    write_pipeline_index(folder, {**SD_DDIM_SCHEDULER, "prediction_type": prediction_type})
    return folder


def with_prediction_type(src: str | Path, dst: str | Path, prediction_type: str) -> Path:
    """Copy a pipeline folder and change its scheduler's prediction type (same weights)."""
    dst = Path(dst)
    shutil.copytree(src, dst)
    cfg_path = dst / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["prediction_type"] = prediction_type
    cfg_path.write_text(json.dumps(cfg, indent=1))
    return dst
