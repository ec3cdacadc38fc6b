"""The path every real user takes: configs/sd21.yaml (latent SDS through the VAE encoder, hash-grid field, MLP
background, view-dependent prompts, guidance 100), here on a tiny random SD folder at a small render size, for
generate, resume and edit. The recipe at its own size (64^2, 128 samples) is measured by scripts/bench_sd_recipe.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dreamfield.cli import main
from dreamfield.config import load_config

REPO = Path(__file__).resolve().parent.parent
SD21 = str(REPO / "configs" / "sd21.yaml")
SMALL = ["--device", "cpu", "--quiet", "--set", "render.resolution=16", "--set", "render.n_samples=16",
         "--set", "field.hash_log2_table_size=14", "--set", "run.log_every=1", "--set", "run.threads=1",
         "--set", "run.preview_every=0", "--set", "surface.steps=2", "--set", "surface.resolution=16"]
EXPORT_SMALL = ["--set", "export.resolution=24", "--set", "export.video_frames=2", "--set", "export.video_resolution=16",
                "--set", "export.compare_views=1", "--set", "export.compare_resolution=16", "--set", "export.texture_size=64"]


@pytest.fixture(scope="module")
def recipe_run(tiny_sd_path, tmp_path_factory):
    run = tmp_path_factory.mktemp("sd21") / "run"
    assert main(["generate", "a DSLR photo of a hamburger", "--config", SD21, "--model", str(tiny_sd_path),
                 "--steps", "3", "--out", str(run), "--no-export"] + SMALL) == 0
    return run


def test_the_recipe_runs_as_configured(recipe_run):
    cfg = load_config([recipe_run / "config.yaml"])
    assert cfg.guidance.space == "latent" and cfg.field.kind == "hashgrid" and cfg.render.background == "mlp"
    assert cfg.prior.view_dependent and cfg.prior.guidance_scale == 100.0
    records = [json.loads(l) for l in (recipe_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor([r["loss"], r["distill_norm"], r["orientation"]])).all() for r in records)
    # the recipe's orientation penalty reaches the field: its weight is in the saved config
    assert cfg.loss.orientation == pytest.approx(0.01)
    state = torch.load(recipe_run / "checkpoints" / "last.pt", weights_only=True)
    assert state["step"] == 3 and "encoding.table" in state["scene"]["field"]
    assert any(k.startswith("net") or "." in k for k in state["scene"]["background"])  # the MLP background learned


def test_the_recipe_resumes_exactly(recipe_run, tiny_sd_path, tmp_path, interrupt_after):
    common = ["--config", SD21, "--model", str(tiny_sd_path), "--steps", "3", "--no-export",
              "--set", "run.checkpoint_every=1"] + SMALL
    stopped = tmp_path / "stopped"
    patch = pytest.MonkeyPatch()
    patch.setattr("dreamfield.generate.optimize", interrupt_after(1))
    try:
        assert main(["generate", "a DSLR photo of a hamburger", "--out", str(stopped)] + common) == 130
    finally:
        patch.undo()
    assert main(["generate", "--resume", str(stopped), "--model", str(tiny_sd_path), "--quiet", "--no-export"]) == 0
    a = torch.load(recipe_run / "checkpoints" / "last.pt", weights_only=True)["scene"]
    b = torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["scene"]
    for part in ("field", "background"):
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)


def test_editing_a_recipe_run(recipe_run, tiny_sd_path, tmp_path):
    out = tmp_path / "edit"
    assert main(["edit", str(recipe_run), "--target-prompt", "a DSLR photo of a cheeseburger", "--model",
                 str(tiny_sd_path), "--steps", "2", "--out", str(out), "--set", "optim.lr_color=0.01"]
                + SMALL + EXPORT_SMALL) == 0
    cfg = load_config([out / "config.yaml"])
    assert cfg.field.kind == "hashgrid" and cfg.guidance.space == "latent" and cfg.optim.lr_color == 0.01
    for name in ("mesh.glb", "before_after.png", "source.pt", "report.html", "turntable.mp4"):
        assert (out / name).is_file(), name
    before = torch.load(recipe_run / "checkpoints" / "last.pt", weights_only=True)["scene"]["field"]
    after = torch.load(out / "checkpoints" / "last.pt", weights_only=True)["scene"]["field"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
