"""scripts/albedo_start.py: its grey start is generate's own run, and a colour start starts the albedo there."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from dreamfield.files import read_jsonl
from dreamfield.run import load_run_scene
from scripts_dir import SCRIPTS

REPO = SCRIPTS.parent
SCRIPT = SCRIPTS / "albedo_start.py"
SETS = ["run.seed=3", "optim.steps=11", "run.threads=1", "run.export=false"]


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO)


def test_the_grey_start_is_generates_run_and_a_colour_start_starts_there(tmp_path):
    sets = [x for s in SETS for x in ("--set", s)]
    done = _run(str(SCRIPT), "a red cube", "--colour", "0.5,0.5,0.5", "--out", str(tmp_path / "grey"), *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    done = _run("-m", "dreamfield", "generate", "a red cube", "--out", str(tmp_path / "gen"), "--quiet",
                "--config", str(REPO / "configs" / "one_stage.yaml"), "--no-export", *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    ours = read_jsonl(tmp_path / "grey" / "a-red-cube" / "metrics.jsonl")
    theirs = read_jsonl(tmp_path / "gen" / "metrics.jsonl")
    keys = ("step", "loss", "opacity")
    assert [[r[k] for k in keys] for r in ours] == [[r[k] for k in keys] for r in theirs] and len(ours) == 2

    done = _run(str(SCRIPT), "a red cube", "--colour", "prompt", "--out", str(tmp_path / "red"), *sets)
    assert done.returncode == 0, done.stderr[-2000:]
    _, scene, _ = load_run_scene(tmp_path / "red" / "a-red-cube", "cpu")
    _, albedo = scene.field(torch.zeros(1, 3))
    assert albedo[0].tolist() == pytest.approx([0.85, 0.15, 0.15], abs=0.05)  # 11 small colour steps from there
    assert ours[-1]["opacity"] != read_jsonl(tmp_path / "red" / "a-red-cube" / "metrics.jsonl")[-1]["opacity"]


@pytest.mark.parametrize("colour", ["1.2,0.1,0.1", "red", "0.1,0.2"])
def test_a_bad_colour_is_a_one_line_error(tmp_path, colour):
    done = _run(str(SCRIPT), "a red cube", "--colour", colour, "--out", str(tmp_path))
    assert done.returncode != 0 and "--colour wants" in done.stderr and "Traceback" not in done.stderr
