"""The shipped toy prior: a complete diffusers folder within budget, loaded by plain diffusers and by
`generate` without --model, and it draws what it is asked for."""

import json

import torch

from dreamfield.cli import main
from dreamfield.diffusion import sample
from dreamfield.prior import load_prior
from dreamfield.prior.diffusers_prior import TOY_PRIOR_DIR
from dreamfield.toy.classifier import load_classifier
from dreamfield.toy.domain import COLOUR_NAMES, SHAPES


def test_folder_is_complete_safetensors_and_small():
    index = json.loads((TOY_PRIOR_DIR / "model_index.json").read_text())
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert part in index and (TOY_PRIOR_DIR / part).is_dir(), part
    files = [p for p in TOY_PRIOR_DIR.rglob("*") if p.is_file()]
    weights = [p for p in files if p.suffix in (".safetensors", ".bin", ".pt", ".ckpt")]
    assert weights and all(p.suffix == ".safetensors" for p in weights)
    assert sum(p.stat().st_size for p in files) <= 30 * 2**20


def test_plain_diffusers_loads_it_offline():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(TOY_PRIOR_DIR, safety_checker=None, local_files_only=True)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert pipe.vae.config.scaling_factor != 0.18215  # measured for this VAE, not SD's


def test_ddim_samples_show_the_prompt():
    prior = load_prior(None, "cpu")
    clf = load_classifier()
    emb = prior.embed(["a red cube, front view"] * 4)
    z = sample(lambda x, t: prior.eps(x, t, emb, 7.5), (4, 4, prior.latent_size, prior.latent_size), prior.schedule,
               method="ddim", steps=25, generator=torch.Generator().manual_seed(0))
    shape, colour = clf.predict(prior.decode(z))
    # 3 of 4 is the bar: a sample may miss; the prior's 2D accuracy over all pairs is in docs/RESULTS.md
    assert sum(SHAPES[i] == "cube" for i in shape.tolist()) >= 3
    assert sum(COLOUR_NAMES[i] == "red" for i in colour.tolist()) >= 3


def test_generate_runs_with_the_embedded_prior(tmp_path):
    run = tmp_path / "run"
    # 3 steps leave the starting blob, whose density peaks at e^(5 - 4) = 2.7 under the default exp activation,
    # below the default export level 2.6 once blurred (generate then warns "no mesh exported"): export at 1
    assert main(["generate", "a green sphere", "--steps", "3", "--out", str(run), "--quiet",
                 "--set", "export.resolution=32", "--set", "export.video_frames=2",
                 "--set", "export.video_resolution=32", "--set", "export.threshold=1.0"]) == 0
    assert (run / "mesh.glb").is_file() and (run / "turntable.mp4").is_file()
