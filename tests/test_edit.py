"""`dreamfield edit` end to end on a tiny random SD pipeline: from a run folder, from a mesh file,
exact resume, the frozen source, before/after pictures, and one-line errors for bad input.

The DDS gradient itself is checked in closed form in tests/test_distill.py (Gaussian priors:
zero variance over the noise, an edit converging to z_src + mu_tgt - mu_src); not repeated here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import trimesh
from PIL import Image

from dreamfield.cli import main

FAST = [
    "--set", "render.resolution=16", "--set", "render.n_samples=12", "--set", "field.grid_resolution=16",
    "--set", "run.preview_every=2", "--set", "run.log_every=1", "--set", "export.video_resolution=16", "--quiet",
]
EXPORT_FAST = ["--set", "export.resolution=24", "--set", "export.video_frames=2"]


def one_line(capsys, prefix="dreamfield: error: ") -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "Traceback" not in "\n".join(err)
    hits = [l for l in err if l.startswith(prefix)]
    assert hits, err
    return hits[-1]


def _field(path: Path) -> dict:
    state = torch.load(path, weights_only=True)
    return state["scene"]["field"]


@pytest.fixture(scope="module")
def source_run(tiny_sd_path, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("src") / "red-cube"
    assert main(["generate", "a red cube", "--model", str(tiny_sd_path), "--steps", "2", "--out", str(run),
                 "--no-export"] + FAST) == 0
    return run


@pytest.fixture(scope="module")
def sphere_glb(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("mesh") / "red_sphere.glb"
    mesh = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    mesh.visual.vertex_colors = (217, 38, 38, 255)
    mesh.export(path)
    return path


def test_edit_a_run_folder_end_to_end(tiny_sd_path, source_run, tmp_path):
    out = tmp_path / "blue"
    before = _field(source_run / "checkpoints" / "last.pt")
    assert main(["edit", str(source_run), "--target-prompt", "a blue cube", "--model", str(tiny_sd_path),
                 "--steps", "3", "--out", str(out)] + FAST + EXPORT_FAST) == 0
    for name in ["config.yaml", "prompt.json", "source.json", "source.pt", "metrics.jsonl", "before_after.png",
                 "checkpoints/last.pt", "mesh.glb", "turntable.mp4", "views.png", "timing.json"]:
        assert (out / name).is_file(), name
    meta = json.loads((out / "prompt.json").read_text())
    # the source prompt defaults to the source run's prompt
    # the toy prior's default source weight 0: SDS from the source scene (docs/RESULTS.md, "Edit colour")
    assert meta == {"command": "edit", "prompt": "a blue cube", "source_prompt": "a red cube", "method": "sds"}
    source = json.loads((out / "source.json").read_text())
    assert source["kind"] == "run" and source["prompt"] == "a red cube" and source["step"] == 2
    cfg_text = (out / "config.yaml").read_text()
    assert "steps: 3" in cfg_text and "space: image" in cfg_text  # the source run's: SDS steps take the image target
    assert "lr_density: 0.01" in cfg_text  # the package's edit defaults over the source run's 0.05
    assert [json.loads(l)["step"] for l in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2]

    # the source is frozen (its run and the saved copy are the source's last checkpoint, bit for bit);
    # the edit moved away from it
    saved = _field(out / "source.pt")
    after = _field(out / "checkpoints" / "last.pt")
    for k in before:
        assert torch.equal(before[k], _field(source_run / "checkpoints" / "last.pt")[k])
        assert torch.equal(before[k], saved[k])
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # before/after: 6 views of 16 px, source row over edited row
    assert Image.open(out / "before_after.png").size == (6 * 16, 2 * 16)


def _stopped_after_two_steps(source, out, args, interrupt_after):
    """``dreamfield edit SOURCE --out OUT ARGS`` stopped after its second step, as Ctrl-C would: OUT."""
    patch = pytest.MonkeyPatch()
    patch.setattr("dreamfield.edit.optimize", interrupt_after(2))
    try:
        assert main(["edit", str(source), "--out", str(out)] + args) == 130
    finally:
        patch.undo()
    return out


def test_edit_a_mesh_file_and_resume_exactly(tiny_sd_path, sphere_glb, tmp_path, interrupt_after):
    common = ["--model", str(tiny_sd_path), "--source-prompt", "a red sphere", "--target-prompt", "a blue sphere",
              "--steps", "4", "--no-export", "--set", "run.checkpoint_every=1",
              "--set", "edit.source_weight=1", "--set", "edit.source_weight_end=0"] + FAST  # DDS annealed to SDS
    full = tmp_path / "full"
    assert main(["edit", str(sphere_glb), "--out", str(full)] + common) == 0
    assert json.loads((full / "prompt.json").read_text())["method"] == "dds -> sds"
    source = json.loads((full / "source.json").read_text())
    assert source["kind"] == "mesh" and source["colour_source"] == "vertex" and source["watertight"]
    assert source["silhouette"]["iou"] > 0.9  # measured 0.96 with a 16^3 grid
    assert source["placement"]["radius"] == pytest.approx(0.7)
    # the imported source is red where the sphere's surface is
    from dreamfield.config import load_config
    from dreamfield.scene.scene import make_scene

    cfg = load_config([full / "config.yaml"])
    scene = make_scene(cfg, torch.device("cpu"))
    scene.load_state_dict(torch.load(full / "source.pt", weights_only=True)["scene"])
    with torch.no_grad():
        sigma, albedo = scene.field(torch.tensor([[0.62, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    assert sigma[1] > 20 and torch.allclose(albedo[0], torch.tensor([0.85, 0.15, 0.15]), atol=0.03)

    # the same edit stopped after step 2 (as Ctrl-C would), then resumed: identical result
    stopped = _stopped_after_two_steps(sphere_glb, tmp_path / "stopped", common, interrupt_after)
    assert torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    sphere_glb.rename(sphere_glb.with_suffix(".moved"))  # resume needs neither the mesh nor the source run
    try:
        assert main(["edit", "--resume", str(stopped), "--quiet", "--no-export"]) == 0
    finally:
        sphere_glb.with_suffix(".moved").rename(sphere_glb)
    a, b = _field(full / "checkpoints" / "last.pt"), _field(stopped / "checkpoints" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [json.loads(l)["step"] for l in (stopped / "metrics.jsonl").read_text().splitlines()] == [0, 1, 2, 3]


def test_an_edit_saved_before_source_weight_existed_resumes_as_dds(tiny_sd_path, sphere_glb, tmp_path, interrupt_after):
    common = ["--model", str(tiny_sd_path), "--source-prompt", "a red sphere", "--target-prompt", "a blue sphere",
              "--steps", "4", "--no-export", "--set", "run.checkpoint_every=1", "--set", "guidance.space=latent",
              "--set", "edit.source_weight=1"] + FAST  # what every edit was before: DDS on latents
    full = tmp_path / "full"
    assert main(["edit", str(sphere_glb), "--out", str(full)] + common) == 0
    stopped = _stopped_after_two_steps(sphere_glb, tmp_path / "stopped", common, interrupt_after)
    cfg_file = stopped / "config.yaml"  # as an older version wrote it: no source_weight keys
    lines = cfg_file.read_text().splitlines(keepends=True)
    cfg_file.write_text("".join(l for l in lines if "source_weight" not in l))
    assert main(["edit", "--resume", str(stopped), "--quiet", "--no-export"]) == 0
    a, b = _field(full / "checkpoints" / "last.pt"), _field(stopped / "checkpoints" / "last.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_preservation_terms_run_and_are_logged_in_the_config(tiny_sd_path, source_run, tmp_path):
    out = tmp_path / "kept"
    assert main(["edit", str(source_run), "--target-prompt", "a blue cube", "--model", str(tiny_sd_path), "--steps", "2",
                 "--out", str(out), "--no-export", "--set", "loss.preserve=1.0", "--set", "edit.anchor_density=10.0",
                 "--set", "edit.anchor_points=256", "--set", "edit.source_weight=0.5"] + FAST) == 0
    text = (out / "config.yaml").read_text()
    assert "preserve: 1.0" in text and "anchor_density: 10.0" in text and "source_weight: 0.5" in text
    assert json.loads((out / "prompt.json").read_text())["method"] == "dds"


def test_an_edit_does_not_take_the_source_runs_high_noise_start(tiny_sd_path, tmp_path):
    src = tmp_path / "src"
    assert main(["generate", "a red cube", "--model", str(tiny_sd_path), "--steps", "2", "--out", str(src),
                 "--no-export", "--set", "guidance.t_min_start=0.6", "--set", "guidance.t_min_start_steps=50"] + FAST) == 0
    assert "t_min_start: 0.6" in (src / "config.yaml").read_text()
    out = tmp_path / "blue"
    assert main(["edit", str(src), "--target-prompt", "a blue cube", "--model", str(tiny_sd_path), "--steps", "1",
                 "--out", str(out), "--no-export"] + FAST) == 0
    text = (out / "config.yaml").read_text()
    assert "t_min_start: null" in text and "t_min_start_steps: 50" in text  # the steps are kept but unused


def test_an_sds_edit_may_use_the_image_space_target(tiny_sd_path, source_run, tmp_path):
    from dreamfield.distill.objectives import ImageSDS

    out = tmp_path / "image"
    calls = []
    patch = pytest.MonkeyPatch()
    original = ImageSDS.__call__

    def counted(self, *args, **kwargs):
        calls.append(1)
        return original(self, *args, **kwargs)

    patch.setattr(ImageSDS, "__call__", counted)
    try:
        assert main(["edit", str(source_run), "--target-prompt", "a blue cube", "--model", str(tiny_sd_path),
                     "--steps", "2", "--out", str(out), "--no-export", "--set", "guidance.space=image"] + FAST) == 0
    finally:
        patch.undo()
    assert len(calls) == 2  # every step took generate's image-space target
    assert "space: image" in (out / "config.yaml").read_text()
    assert json.loads((out / "prompt.json").read_text())["method"] == "sds"
    # DDS steps stay on the latents under guidance.space=image; the step at lambda 0 takes the image target
    calls.clear()
    patch.setattr(ImageSDS, "__call__", counted)
    try:
        assert main(["edit", str(source_run), "--target-prompt", "a blue cube", "--model", str(tiny_sd_path),
                     "--steps", "3", "--out", str(tmp_path / "annealed"), "--no-export", "--set", "guidance.space=image",
                     "--set", "edit.source_weight=1", "--set", "edit.source_weight_end=0"] + FAST) == 0
    finally:
        patch.undo()
    assert len(calls) == 1


def test_bad_input_is_one_line(tiny_sd_path, source_run, sphere_glb, tmp_path, capsys):
    model = ["--model", str(tiny_sd_path)]
    prompts = ["--source-prompt", "a red cube", "--target-prompt", "a blue cube"]

    assert main(["edit", str(tmp_path / "nothing"), *prompts, *model]) == 2
    assert "source not found" in one_line(capsys)

    assert main(["edit", *prompts, *model]) == 2
    assert "no SOURCE" in one_line(capsys)

    (tmp_path / "broken.glb").write_bytes(b"glTF garbage" * 20)
    assert main(["edit", str(tmp_path / "broken.glb"), *prompts, *model, "--out", str(tmp_path / "e1")]) == 2
    assert "cannot read mesh" in one_line(capsys)
    assert not (tmp_path / "e1").exists()  # nothing written for a failed import

    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    assert main(["edit", str(tmp_path / "points.obj"), *prompts, *model, "--out", str(tmp_path / "e2")]) == 2
    assert "no faces" in one_line(capsys)

    (tmp_path / "notes.txt").write_text("hello")
    assert main(["edit", str(tmp_path / "notes.txt"), *prompts, *model]) == 2
    assert "not a run folder" in one_line(capsys)

    assert main(["edit", str(tmp_path), *prompts, *model]) == 2  # a folder that is no run
    assert "no config.yaml" in one_line(capsys)

    assert main(["edit", str(sphere_glb), "--source-prompt", "a red sphere", "--target-prompt", "  ", *model]) == 2
    assert "empty --target-prompt" in one_line(capsys)
    assert main(["edit", str(sphere_glb), "--target-prompt", "a blue sphere", *model]) == 2  # a mesh has no prompt
    assert "empty --source-prompt" in one_line(capsys)

    assert main(["edit", str(source_run), *prompts, *model, "--set", "field.grid_resolution=32",
                 "--out", str(tmp_path / "e3")]) == 2
    assert "field.grid_resolution" in one_line(capsys)

    assert main(["edit", "--resume", str(source_run), *model]) == 2  # a generate run
    assert "not an edit run" in one_line(capsys)

    # identical prompts: a warning, and the edit still runs
    out = tmp_path / "same"
    assert main(["edit", str(source_run), "--source-prompt", "a red cube", "--target-prompt", "a red cube", *model,
                 "--steps", "1", "--no-export", "--out", str(out)] + FAST) == 0
    assert "prompts are both 'a red cube'" in one_line(capsys, "dreamfield: warning: ")
    assert (out / "checkpoints" / "last.pt").is_file()
