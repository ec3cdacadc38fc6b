"""scripts/sds_2d.py: the billboard's start is the disc it says, composited over white, and a short run logs rows."""

from __future__ import annotations

import json
import math

import pytest
import torch
from scripts_dir import load_script


def _module():
    return load_script("sds_2d")


def test_the_start_is_a_grey_or_coloured_disc_over_white():
    mod = _module()
    a, c = mod.start(256, 0.6, None)
    rgb = mod.composite(a, c)
    assert rgb.shape == (1, 3, 256, 256)
    coverage = float((torch.sigmoid(a) > 0.5).float().mean())
    assert coverage == pytest.approx(math.pi * 0.6**2 / 4, rel=0.01)  # the disc's share of the [-1, 1]^2 square
    assert torch.allclose(rgb[0, :, 128, 128], torch.full((3,), 0.5), atol=1e-3)  # grey inside
    assert torch.allclose(rgb[0, :, 0, 0], torch.ones(3), atol=1e-4)  # white outside
    _, c = mod.start(8, 0.6, (0.85, 0.15, 0.15))
    assert torch.allclose(torch.sigmoid(c[:, 3, 4]), torch.tensor([0.85, 0.15, 0.15]))


def test_a_short_run_logs_coverage_and_albedo(tmp_path):
    out = tmp_path / "rows.jsonl"
    assert _module().main(["--prompts", "a red cube", "--steps", "11", "--start-colour", "prompt", "--json", str(out),
                           "--set", "run.threads=1"]) == 0
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["step"] for r in rec["rows"]] == [0, 10]
    first = rec["rows"][0]
    assert first["coverage"] == pytest.approx(math.pi * 0.6**2 / 4, abs=0.01)
    assert first["albedo"] == pytest.approx([0.85, 0.15, 0.15], abs=1e-3)  # the oracle start
    assert rec["rows"][1]["albedo"] != first["albedo"]  # the objective moved it


def test_the_sampled_start_colour_is_the_prompts(tmp_path):
    """--start-colour sample: the foreground mean of the prior's own samples of "a blue cube" is blue-dominant."""
    out = tmp_path / "rows.jsonl"
    assert _module().main(["--prompts", "a blue cube", "--steps", "1", "--start-colour", "sample", "--json", str(out),
                           "--set", "run.threads=1"]) == 0
    (rec,) = [json.loads(line) for line in out.read_text().splitlines()]
    r, g, b = rec["start_rgb"]
    assert b > r + 0.2 and b > g + 0.2, rec["start_rgb"]
    assert rec["rows"][0]["albedo"] == pytest.approx(rec["start_rgb"], abs=2e-3)
