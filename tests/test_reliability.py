"""Nothing lost: a catalogue of bad inputs (each a one-line error, exit 2, no traceback, nothing written or
changed), runs interrupted by SIGINT and SIGKILL before their first periodic checkpoint and resumed to the
uninterrupted result, and an export killed while it writes that keeps the previous files."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from dreamfield.cli import main

# The one-stage config: these tests are about the command, the run folder and the loop, which both stages share
# (tests/test_surface.py covers interrupting and resuming the surface stage).
ONE_STAGE = str(Path(__file__).resolve().parent.parent / "configs" / "one_stage.yaml")
SMALL = ["--config", ONE_STAGE, "--set", "render.resolution=16", "--set", "render.n_samples=12", "--set", "field.grid_resolution=16",
         "--set", "run.preview_every=0", "--set", "run.log_every=1", "--set", "run.threads=1", "--quiet"]
EXPORT_SMALL = ["--set", "export.resolution=24", "--set", "export.video_frames=2", "--set", "export.video_resolution=16",
                "--set", "export.compare_views=1", "--set", "export.compare_resolution=16",
                "--set", "export.texture_size=64"]


def snapshot(root: Path) -> dict:
    """Every path under root with its bytes (None for folders)."""
    return {p: (p.read_bytes() if p.is_file() else None) for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_sd_path):
    """A folder with a user's own files, a finished run, an edit run, broken runs and bad inputs."""
    root = tmp_path_factory.mktemp("catalogue")
    model = str(tiny_sd_path)
    assert main(["generate", "a red cube", "--model", model, "--steps", "2", "--out", str(root / "run")] + SMALL
                + EXPORT_SMALL + ["--set", "export.threshold=1"]) == 0
    assert (root / "run" / "mesh.glb").is_file()
    user = root / "mine"
    user.mkdir()
    (user / "mesh.glb").write_bytes(b"the user's own mesh")
    (user / "notes.txt").write_text("keep me")
    (root / "a_file").write_text("a file, not a folder")
    (root / "list.yaml").write_text("- optim\n- render\n")
    (root / "garbage.yaml").write_text("optim: [unclosed\n")
    (root / "notes.txt").write_text("hello")
    (root / "broken.glb").write_bytes(b"glTF garbage" * 20)
    (root / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    no_unet = root / "no_unet"
    import shutil

    shutil.copytree(tiny_sd_path, no_unet)
    shutil.rmtree(no_unet / "unet")
    for name, files in {
        "corrupt": {"checkpoints/last.pt": b"not a checkpoint"},
        "no_prompt_key": {"prompt.json": b'{"command": "generate"}'},
        "bad_prompt_json": {"prompt.json": b"{not json"},
    }.items():
        broken = root / name
        shutil.copytree(root / "run", broken)
        for rel, data in files.items():
            (broken / rel).write_bytes(data)
    return root


def catalogue(root: Path, model: str) -> list[tuple[list[str], str]]:
    """(argv, a word the one-line message must contain)."""
    m = ["--model", model]
    run, user = str(root / "run"), str(root / "mine")
    new = ["--out", str(root / "new")]
    gen = lambda *a: ["generate", "a red cube", *m, *new, *a]  # noqa: E731
    src = ["--source-prompt", "a red cube", "--target-prompt", "a blue cube"]
    edit = lambda *a: ["edit", run, *src, *m, *new, *a]  # noqa: E731
    return [
        # generate: prompts and options
        (["generate", "   ", *m, *new], "empty prompt"),
        (["generate", "a red \udcff cube", *m, *new], "UTF-8"),
        (["generate", *m, *new], "empty prompt"),
        (gen("--steps", "0"), "optim.steps"),
        (gen("--steps", "-5"), "optim.steps"),
        (gen("--steps", "abc"), "--steps"),
        (gen("--seed", "-1"), "run.seed"),
        (gen("--frobnicate"), "unrecognized"),
        (gen("--device", "tpu"), "run.device"),
        (gen("--device", "cuda:0") if not torch.cuda.is_available() else gen("--device", "tpu"), "device"),
        # generate: config values
        (gen("--set", "optim.lr_densty=1"), "optim.lr_densty"),
        (gen("--set", "optim.steps=many"), "optim.steps"),
        (gen("--set", "noequals"), "key=value"),
        (gen("--set", "run.log_every=0"), "run.log_every"),
        (gen("--set", "render.p_albedo=nan"), "render.p_albedo"),
        (gen("--set", "render.p_albedo=0", "--set", "render.p_lambertian=0", "--set", "render.p_textureless=0"),
         "render.p_"),
        (gen("--set", "optim.lr_density=-1"), "optim.lr_density"),
        (gen("--set", "optim.lr_density=1e30"), "optim.lr_density"),
        (gen("--set", "optim.lr_color=inf"), "optim.lr_color"),
        (gen("--set", "camera.fov=[0,0]"), "camera.fov"),
        (gen("--set", "camera.fov=[40,200]"), "camera.fov"),
        (gen("--set", "camera.distance=[2,1]"), "camera.distance"),
        (gen("--set", "run.threads=-1"), "run.threads"),
        (gen("--set", "guidance.t_min=0.9", "--set", "guidance.t_max=0.5"), "t_min"),
        (gen("--set", "field.kind=octree"), "field.kind"),
        (gen("--set", "render.resolution=4"), "render.resolution"),
        (gen("--set", "export.threshold=-1"), "export.threshold"),
        (gen("--set", "prior.guidance_scale=-3"), "prior.guidance_scale"),
        (gen("--set", "loss.tv=1", "--set", "field.kind=hashgrid"), "loss.tv"),
        (gen("--set", "loss.opacity=-1"), "loss.opacity"),
        (gen("--set", "guidance.batch_size=0"), "guidance.batch_size"),
        (gen("--set", "optim.betas=[0.9,1.5]"), "optim.betas"),
        (gen("--set", "run.checkpoint_seconds=-1"), "run.checkpoint_seconds"),
        (gen("--set", "export.formats=[fbx]"), "export.formats"),
        (gen("--config", str(root / "missing.yaml")), "not found"),
        (gen("--config", str(root / "list.yaml")), "not a config"),
        (gen("--config", str(root / "garbage.yaml")), "YAML"),
        # generate: models and folders
        (["generate", "a red cube", "--model", str(root / "nope"), *new], "nope"),
        (["generate", "a red cube", "--model", str(root / "no_unet"), *new], "unet"),
        (["generate", "a red cube", *m, "--out", user], "did not write"),
        (["generate", "a red cube", *m, "--out", str(root / "a_file")], "a file"),
        (["generate", "a red cube", *m, "--out", run], "--resume"),
        (["generate", "--resume", str(root / "nothing"), *m], "no config.yaml"),
        (["generate", "--resume", user, *m], "no config.yaml"),
        (["generate", "--resume", str(root / "corrupt"), *m], "corrupt"),
        (["generate", "--resume", str(root / "no_prompt_key"), *m], "prompt"),
        (["generate", "--resume", str(root / "bad_prompt_json"), *m], "prompt.json"),
        (["generate", "--resume", run, *m, "--set", "field.grid_resolution=32"], "field.grid_resolution"),
        # edit
        (["edit", str(root / "nothing"), *src, *m, *new], "source not found"),
        (["edit", *src, *m, *new], "no SOURCE"),
        (["edit", str(root / "broken.glb"), *src, *m, *new], "cannot read mesh"),
        (["edit", str(root / "points.obj"), *src, *m, *new], "no faces"),
        (["edit", str(root / "notes.txt"), *src, *m, *new], "not a run folder"),
        (["edit", user, *src, *m, *new], "no config.yaml"),
        (["edit", run, "--target-prompt", "  ", *m, *new], "empty --target-prompt"),
        (["edit", str(root / "points.obj"), "--target-prompt", "a blue cube", *m, *new], "empty --source-prompt"),
        (edit("--set", "field.grid_resolution=32"), "field.grid_resolution"),
        (edit("--set", "edit.import_radius=0"), "edit.import_radius"),
        (edit("--set", "optim.lr_color=nan"), "optim.lr_color"),
        (["edit", run, *src, *m, "--out", user], "did not write"),
        (["edit", "--resume", run, *m], "not an edit run"),
        (["edit", "--resume", str(root / "nothing"), *m], "no config.yaml"),
        (edit("--method", "pds"), "unrecognized"),
        # export
        (["export", str(root / "nothing")], "not found"),
        (["export", user], "no config.yaml"),
        (["export", run, "--format", "fbx"], "--format"),
        (["export", run, "--threshold", "1e9"], "threshold"),
        (["export", run, "--threshold", "nan"], "export.threshold"),
        (["export", run, "--resolution", "1"], "export.resolution"),
        (["export", run, "--frames", "0"], "export.video_frames"),
        (["export", run, "--set", "export.level=contour"], "export.level"),
        (["export", run, "--set", "export.colour_depth=-1"], "export.colour_depth"),
        (["export", run, "--set", "export.nonsense=1"], "export.nonsense"),
        (["export", str(root / "corrupt")], "corrupt"),
        # sample
        (["sample", "a red cube", *m, "--n", "0"], "--n"),
        (["sample", "a red cube", *m, "--steps", "0"], "--steps"),
        (["sample", "a red cube", *m, "--guidance", "nan"], "--guidance"),
        (["sample", "a red cube", *m, "--eta", "-1"], "--eta"),
        (["sample", "a red cube", *m, "--out", str(root / "a_file")], "folder"),
        (["sample", "a red cube", *m, "--views", "left"], "--views"),
        (["sample", "a red cube", *m, "--method", "euler"], "--method"),
        (["sample", "  ", *m], "empty prompt"),
        (["sample", "a red cube", *m, "--set", "sample.n=-2"], "sample.n"),
        (["frobnicate"], "invalid choice"),
    ]


def test_catalogue_of_bad_inputs(work, tiny_sd_path, capsys, monkeypatch):
    monkeypatch.chdir(work)  # default output folders would land here: none may appear
    cases = catalogue(work, str(tiny_sd_path))
    assert len(cases) >= 60
    capsys.readouterr()
    for argv, word in cases:
        before = snapshot(work)
        code = main(argv)
        err = capsys.readouterr().err
        lines = [l for l in err.splitlines() if l.strip()]
        assert code == 2, (argv, code, err)
        assert len(lines) == 1 and lines[0].startswith("dreamfield: error: "), (argv, err)
        assert "Traceback" not in err and word in lines[0], (argv, word, lines[0])
        assert snapshot(work) == before, argv  # nothing written, nothing changed, no folder left


def test_export_with_an_empty_level_keeps_the_previous_files(work, capsys):
    # the catalogue checks the exit; here: the run's previous export is byte for byte what it was
    before = snapshot(work / "run")
    assert main(["export", str(work / "run"), "--threshold", "1e9"]) == 2
    assert snapshot(work / "run") == before


# ------------------------------------------------------------------------------------------------
# interruptions, in a real process


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "dreamfield", *args]


def _env() -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("DREAMFIELD_DEBUG", None)
    return env


def _field(run: Path) -> dict:
    return torch.load(run / "checkpoints" / "last.pt", weights_only=True)["scene"]["field"]


def _logged_steps(run: Path) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.is_file() else 0


STEPS = 24
RUN_ARGS = ["--steps", str(STEPS), "--no-export", "--set", "run.checkpoint_every=0"] + SMALL


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, tiny_sd_path):
    run = tmp_path_factory.mktemp("full") / "run"
    subprocess.run(_cmd("generate", "a red cube", "--model", str(tiny_sd_path), "--out", str(run), *RUN_ARGS),
                   check=True, env=_env(), capture_output=True)
    return run


def _interrupt(run: Path, model: str, sig: int, at: int, extra=()) -> subprocess.CompletedProcess:
    """Start a run, send ``sig`` once it has logged ``at`` steps, wait for it."""
    proc = subprocess.Popen(_cmd("generate", "a red cube", "--model", model, "--out", str(run), *RUN_ARGS, *extra),
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while _logged_steps(run) < at and proc.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _resume_and_compare(run: Path, model: str, reference: Path) -> None:
    done = subprocess.run(_cmd("generate", "--resume", str(run), "--model", model, "--quiet", "--no-export"),
                          env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = _field(reference), _field(run)
    for k in a:
        assert torch.equal(a[k], b[k]), k
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(STEPS))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_checkpoints_the_current_step_and_resume_is_exact(tmp_path, tiny_sd_path, uninterrupted, sig):
    at = random.Random(sig).randint(2, STEPS - 6)  # before any periodic checkpoint (there are none)
    run = tmp_path / "run"
    stopped = _interrupt(run, str(tiny_sd_path), sig, at)
    assert stopped.returncode == 128 + sig, stopped.stderr
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert at <= step < STEPS  # work lost: nothing (the step in progress finishes and is kept)
    assert f"stopped after step {step}" in stopped.stderr and "Traceback" not in stopped.stderr
    _resume_and_compare(run, str(tiny_sd_path), uninterrupted)


def test_kill_9_before_any_checkpoint_restarts_and_resume_is_exact(tmp_path, tiny_sd_path, uninterrupted):
    run = tmp_path / "run"
    stopped = _interrupt(run, str(tiny_sd_path), signal.SIGKILL, random.Random(9).randint(2, STEPS - 6))
    assert stopped.returncode == -signal.SIGKILL
    assert not (run / "checkpoints" / "last.pt").exists()  # checkpoint_seconds=60: none yet
    _resume_and_compare(run, str(tiny_sd_path), uninterrupted)  # starts again from the recorded config


def test_kill_9_after_a_timed_checkpoint_resumes_from_it(tmp_path, tiny_sd_path, uninterrupted):
    run = tmp_path / "run"
    stopped = _interrupt(run, str(tiny_sd_path), signal.SIGKILL, STEPS - 6, ["--set", "run.checkpoint_seconds=0.05"])
    assert stopped.returncode == -signal.SIGKILL
    step = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["step"]
    assert 0 < step < STEPS
    _resume_and_compare(run, str(tiny_sd_path), uninterrupted)


def test_a_metrics_line_cut_by_a_kill_does_not_block_the_resume(tmp_path, tiny_sd_path, uninterrupted):
    run = tmp_path / "run"
    stopped = _interrupt(run, str(tiny_sd_path), signal.SIGKILL, STEPS - 6, ["--set", "run.checkpoint_seconds=0.05"])
    assert stopped.returncode == -signal.SIGKILL
    with open(run / "metrics.jsonl", "a") as f:  # a kill in the middle of the loop's append leaves half a line
        f.write('{"step": %d, "loss": 1.2' % (STEPS - 1))
    _resume_and_compare(run, str(tiny_sd_path), uninterrupted)  # the half line is dropped with the others after it


def test_an_export_killed_mid_write_keeps_the_previous_files(work, tiny_sd_path, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(work / "run", run)
    before = snapshot(run)
    proc = subprocess.Popen(_cmd("export", str(run), "--frames", "120"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    deadline, killed = time.time() + 120, False
    while proc.poll() is None and time.time() < deadline:
        if any(".tmp-" in p.name for p in run.iterdir()):  # a write may be under way: freeze the writer and look again
            os.kill(proc.pid, signal.SIGSTOP)
            _, status = os.waitpid(proc.pid, os.WUNTRACED)  # returns once it is stopped: no rename can slip in
            if not os.WIFSTOPPED(status):  # it finished before the stop landed (and is reaped now)
                break
            if any(".tmp-" in p.name for p in run.iterdir()):
                proc.kill()
                killed = True
                break
            os.kill(proc.pid, signal.SIGCONT)  # the file was renamed before the stop landed: wait for the next write
        time.sleep(0.001)
    proc.communicate(timeout=60)
    assert killed
    after = snapshot(run)
    for path, data in before.items():  # every file there before is either untouched or completely rewritten
        if path.name in ("turntable.mp4", "turntable_normals.mp4", "views.png", "mesh.glb", "export.json"):
            assert after[path] is not None and len(after[path]) > 0
            if after[path] != data:  # a rename happened: a complete new file, read it back
                assert path.suffix != ".mp4" or after[path][4:8] == b"ftyp"
        else:
            assert after.get(path) == data, path
    leftovers = [p for p in run.iterdir() if ".tmp-" in p.name]
    assert leftovers  # the killed write left its temporary file, never the real name...
    assert main(["export", str(run), "--no-video"]) == 0  # ...which the next export removes
    assert not [p for p in run.iterdir() if ".tmp-" in p.name]
