"""The `dreamfield` command end to end on a tiny random SD pipeline: generate, resume, sample, export, errors."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from dreamfield import __version__
from dreamfield.cli import main

# Small and fast: 16^2 renders, 12 samples per ray, a 16^3 grid field.
FAST = [
    "--set", "render.resolution=16", "--set", "render.n_samples=12", "--set", "field.grid_resolution=16",
    "--set", "run.preview_every=2", "--set", "run.log_every=1", "--quiet",
]
EXPORT_FAST = ["--set", "export.resolution=24", "--set", "export.video_frames=2", "--set", "export.video_resolution=16"]


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert err, "expected an error message"
    last = err[-1]
    assert last.startswith("dreamfield: error: ")
    assert "Traceback" not in "\n".join(err)
    return last


def test_version_and_help(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out
    assert main([]) == 0
    assert "generate" in capsys.readouterr().out


def test_generate_end_to_end(tiny_sd_path, tmp_path):
    run = tmp_path / "run"
    code = main(["generate", "a red cube", "--model", str(tiny_sd_path), "--steps", "3", "--out", str(run),
                 "--set", "run.checkpoint_every=2"] + FAST + EXPORT_FAST)
    assert code == 0
    for name in ["config.yaml", "prompt.json", "metrics.jsonl", "mesh.glb", "turntable.mp4", "views.png",
                 "checkpoints/last.pt", "checkpoints/step_000002.pt", "previews/step_000002.png", "previews/step_000003.png"]:
        assert (run / name).is_file(), name
    records = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1, 2]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in records)
    assert "optim:\n  steps: 3" in (run / "config.yaml").read_text()
    # re-export with other settings
    assert main(["export", str(run), "--format", "obj", "--format", "ply", "--no-video",
                 "--resolution", "20"]) == 0
    assert (run / "mesh.obj").is_file() and (run / "mesh.ply").is_file()
    assert main(["export", str(run), "--format", "glb", "ply", "--no-video", "--resolution", "20"]) == 0  # space-separated
    # every run folder gets its report at the end; `dreamfield report` rebuilds it
    report = run / "report.html"
    assert report.is_file() and "a red cube" in report.read_text()
    report.unlink()
    assert main(["report", str(run)]) == 0 and report.is_file()
    assert main(["report", str(tmp_path / "not-a-run")]) == 2


def _scene_tensors(run: Path) -> dict:
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    return {k: v for k, v in state["scene"]["field"].items()}


def test_resume_is_exact(tiny_sd_path, tmp_path, interrupt_after):
    common = ["--model", str(tiny_sd_path), "--steps", "4", "--no-export", "--set", "run.checkpoint_every=1"] + FAST
    full = tmp_path / "full"
    assert main(["generate", "a blue sphere", "--out", str(full)] + common) == 0

    # The same run, stopped after step 2 (as Ctrl-C would), then resumed.
    stopped = tmp_path / "stopped"
    opt_patch = pytest.MonkeyPatch()
    opt_patch.setattr("dreamfield.generate.optimize", interrupt_after(2))
    try:
        assert main(["generate", "a blue sphere", "--out", str(stopped)] + common) == 130
    finally:
        opt_patch.undo()
    assert torch.load(stopped / "checkpoints" / "last.pt", weights_only=True)["step"] == 2
    assert main(["generate", "--resume", str(stopped), "--quiet", "--no-export"]) == 0

    a, b = _scene_tensors(full), _scene_tensors(stopped)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(l)["step"] for l in (stopped / "metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3]


def test_sample_writes_a_grid(tiny_sd_path, tmp_path):
    assert main(["sample", "a red cube", "--model", str(tiny_sd_path), "--steps", "3", "--n", "2",
                 "--views", "front,back", "--out", str(tmp_path / "samples")]) == 0
    from PIL import Image

    img = Image.open(tmp_path / "samples" / "a-red-cube-ddim.png")  # --out is a folder, as for every command
    assert img.size == (2 * 16, 2 * 16)  # 2 samples per row, one row per view, 16^2 native size


def test_bad_inputs_are_one_line_errors(tiny_sd_path, tmp_path, capsys):
    assert main(["generate", "   ", "--model", str(tiny_sd_path)]) == 2
    assert "empty prompt" in one_line_error(capsys)

    assert main(["generate", "a red cube", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r0")]) == 2
    assert "nope" in one_line_error(capsys)

    no_unet = tmp_path / "no_unet"
    shutil.copytree(tiny_sd_path, no_unet)
    shutil.rmtree(no_unet / "unet")
    assert main(["generate", "a red cube", "--model", str(no_unet), "--out", str(tmp_path / "r1")]) == 2
    assert "unet" in one_line_error(capsys)

    assert main(["generate", "a red cube", "--model", str(tiny_sd_path), "--set", "optim.lr_densty=1"]) == 2
    assert "optim.lr_densty" in one_line_error(capsys)

    # a corrupt checkpoint: resume refuses, and nothing in the run folder is touched
    run = tmp_path / "corrupt"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("optim:\n  steps: 3\n")
    (run / "prompt.json").write_text(json.dumps({"prompt": "a red cube"}))
    (run / "checkpoints" / "last.pt").write_bytes(b"not a checkpoint")
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert main(["generate", "--resume", str(run), "--model", str(tiny_sd_path)]) == 2
    assert "corrupt" in one_line_error(capsys)
    assert {p: p.read_bytes() for p in run.rglob("*") if p.is_file()} == before

    # an existing run folder is never overwritten by a new run
    assert main(["generate", "a red cube", "--model", str(tiny_sd_path), "--out", str(run)]) == 2
    assert "--resume" in one_line_error(capsys)

    assert main(["export", str(tmp_path / "missing_run")]) == 2
    assert "not found" in one_line_error(capsys)
