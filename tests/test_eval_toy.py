"""scripts/eval_toy.py 3d --generate: the 12 prompts, passed arguments, and --jobs running runs side by side
(through dreamfield batch, with a stand-in dreamfield)."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import stat
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "eval_toy.py"


def _load():
    spec = importlib.util.spec_from_file_location("eval_toy", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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
t0 = time.time(); time.sleep(0.3)
out = sys.argv[sys.argv.index("--out") + 1]
os.makedirs(out, exist_ok=True)
json.dump({{"argv": sys.argv[1:], "omp": os.environ.get("OMP_NUM_THREADS"), "t0": t0, "t1": time.time()}},
          open(os.path.join(out, "fake.json"), "w"))
sys.exit(3 if "torus" in sys.argv[2] else 0)
"""


def test_generate_runs_every_prompt_jobs_at_a_time_with_one_thread_each(tmp_path):
    m = _load()
    fake = tmp_path / "fake_dreamfield"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    a = argparse.Namespace(gen_root=str(tmp_path / "runs"), dreamfield=str(fake), jobs=2)
    runs, walls = m.generate(a, ["--seed", "7"])
    assert [r.name for r in runs] == [m.caption(c, s).replace(" ", "-") for c, s in m.EVAL_3D]
    assert len(runs) == 12 and set(walls) == {str(r) for r in runs} and min(walls.values()) >= 0.3
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
    m = _load()
    fake = tmp_path / "fake_dreamfield"
    fake.write_text(FAKE.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    m.EVAL_3D = m.EVAL_3D[:2]
    runs, _ = m.generate(argparse.Namespace(gen_root=str(tmp_path / "r"), dreamfield=str(fake), jobs=1), [])
    rec = json.loads((runs[0] / "fake.json").read_text())
    assert "run.threads=1" not in rec["argv"] and len(runs) == 2
