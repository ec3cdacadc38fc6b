"""The toy evaluation's runs (dreamfield.batch.toy_batch, what scripts/eval_toy.py 3d --generate calls): the 12 prompts, passed arguments, and --jobs running runs side by side
(through dreamfield batch, with a stand-in dreamfield)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import pytest

from dreamfield.batch import toy_batch
from dreamfield.toy.domain import caption
from dreamfield.toy.evaluate import EVAL_3D


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    """One in-process Ray for the module (dreamfield.batch reuses an open session)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


FAKE = """#!{python}
# stands in for `dreamfield`: records its arguments, its thread setting and when it ran
import json, os, sys, time
t0 = time.time(); time.sleep(1.0)  # long enough that two overlap on a loaded machine
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
json.dump({{"argv": sys.argv[1:], "omp": os.environ.get("OMP_NUM_THREADS"), "t0": t0, "t1": time.time()}},
          open(os.path.join(out, "fake.json"), "w"))
sys.exit(3 if "torus" in sys.argv[2] else 0)
"""


def test_generate_runs_every_prompt_jobs_at_a_time_with_one_thread_each(tmp_path):
    fake = tmp_path / "fake_dreamfield"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    runs, walls = toy_batch(tmp_path / "runs", EVAL_3D, ["--seed", "7"], jobs=2, command=(str(fake),))
    assert [r.name for r in runs] == [caption(c, s).replace(" ", "-") for c, s in EVAL_3D]
    assert len(runs) == 12 and set(walls) == {str(r) for r in runs} and min(walls.values()) >= 1.0
    recs = [json.loads((r / "fake.json").read_text()) for r in runs]
    for r, rec in zip(runs, recs):
        assert rec["argv"][:2] == ["generate", r.name.replace("-", " ")]
        assert rec["argv"][-4:] == ["--seed", "7", "--set", "run.threads=1"] and rec["omp"] == "1"
    # two runs at once, never more
    events = sorted([(r["t0"], 1) for r in recs] + [(r["t1"], -1) for r in recs])
    running, peak = 0, 0
    for _, d in events:
        running += d
        peak = max(peak, running)
    assert peak == 2
    # a failed run (the fake fails the tori) is reported, and the others still ran
    assert (tmp_path / "runs" / "a-red-torus.log").is_file() and all((r / "fake.json").is_file() for r in runs)
    assert [(r / "done.json").is_file() for r in runs] == ["torus" not in r.name for r in runs]
    summary = {x["slug"]: x for x in json.loads((tmp_path / "runs" / "summary.json").read_text())["runs"]}
    assert summary["a-red-torus"]["status"] == "failed" and summary["a-red-torus"]["error"] == "exit status 3"


def test_generate_one_job_keeps_the_callers_threads(tmp_path):
    fake = tmp_path / "fake_dreamfield"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    runs, _ = toy_batch(tmp_path / "r", EVAL_3D[:2], [], jobs=1, command=(str(fake),))
    rec = json.loads((runs[0] / "fake.json").read_text())
    assert "run.threads=1" not in rec["argv"] and len(runs) == 2


def test_score_runs_reads_a_reference_mesh_run(tmp_path):
    # a run folder holding the red cube's own reference mesh scores as a red cube with IoU ~1
    import json as _json

    from dreamfield.export.mesh import save_mesh
    from dreamfield.toy.evaluate import breakdown, find_pair, score_runs
    from dreamfield.toy.measures import reference_mesh, world_to_gltf

    run = tmp_path / "a-red-cube-20260101"
    run.mkdir()
    (run / "prompt.json").write_text(_json.dumps({"command": "generate", "prompt": "a red cube"}))
    mesh = reference_mesh("cube", (0.85, 0.15, 0.15), res=64)
    mesh.vertices = world_to_gltf(mesh.vertices)
    save_mesh(mesh, run / "mesh", ["glb"])
    result = score_runs([run])
    row = result["rows"][0]
    assert (row["shape_pred"], row["colour_pred"], row["held_out"]) == ("cube", "red", False)
    assert row["iou"] > 0.95 and result["overall"]["shape_acc"] == 1.0
    assert find_pair("a-blue-torus-2026") == ("blue", "torus") and find_pair("nothing here") is None
    table = breakdown(result["rows"])
    assert table["by_shape"]["cube"]["objects"] == 1 and table["by_shape"]["cube"]["colour_err"] < 0.02
    assert 0.9 < table["by_shape"]["cube"]["area_ratio"] < 1.1
