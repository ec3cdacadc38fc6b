"""Writing the small files of a diffusers Stable Diffusion folder: scheduler config and model_index.json.

Used by the embedded prior's training, the random full-size prior of the GPU check and the tiny
test pipeline; the weights themselves are written by each component's ``save_pretrained``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping


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
