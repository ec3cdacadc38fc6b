"""Writing the small files of a diffusers Stable Diffusion folder: scheduler config and model_index.json.

Used by the embedded prior's training, the random full-size prior of the GPU check and the tiny
test pipeline; the weights themselves are written by each component's ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

# Stable Diffusion's training schedule (scaled_linear betas 0.00085..0.012, 1000 steps, epsilon) as a
# DDIMScheduler config: the scheduler of the embedded toy prior and of the tiny test pipeline.
SD_DDIM_SCHEDULER: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


def write_pipeline_index(folder: str | Path, scheduler_config: Mapping[str, Any]) -> Path:
    """Write ``scheduler/scheduler_config.json`` and ``model_index.json`` (StableDiffusionPipeline with
    unet, vae, text_encoder, tokenizer, the scheduler named by ``scheduler_config["_class_name"]``, and no
    safety checker) into ``folder``. Returns the model_index.json path."""
    import diffusers

    folder = Path(folder)
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    scheduler = {**scheduler_config, "_diffusers_version": diffusers.__version__}
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=1))
    index = {
        "_class_name": "StableDiffusionPipeline",
        "_diffusers_version": diffusers.__version__,
        "feature_extractor": [None, None],
        "image_encoder": [None, None],
        "requires_safety_checker": False,
        "safety_checker": [None, None],
        "scheduler": ["diffusers", scheduler["_class_name"]],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
    }
    path = folder / "model_index.json"
    path.write_text(json.dumps(index, indent=1))
    return path
