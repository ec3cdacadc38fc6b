"""scripts/metric_windows.py: window means of a logged metric, and a line cut by a stop skipped."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from scripts_dir import SCRIPTS, load_script

SCRIPT = SCRIPTS / "metric_windows.py"


def _module():
    return load_script("metric_windows")


def test_window_means_follow_the_logged_steps():
    rows = [{"step": s, "opacity": s / 10} for s in range(0, 100, 10)] + [{"step": 100, "loss": 1.0}]
    got = _module().windows(rows, "opacity", 50, 150)
    assert got[:2] == [2.0, 7.0]  # (0 + 1 + 2 + 3 + 4) / 5, (5 + ... + 9) / 5
    assert math.isnan(got[2])  # step 100 logged no opacity


def test_the_command_reads_runs_and_skips_a_cut_line(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    lines = [json.dumps({"step": s, "opacity": 0.25 if s < 20 else 0.75}) for s in range(0, 40, 10)]
    (run / "metrics.jsonl").write_text("\n".join(lines) + '\n{"step": 40, "opac')
    done = subprocess.run([sys.executable, str(SCRIPT), str(run), "--window", "20", "--until", "40"],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[1:] == ["0.250", "0.750"]
    missing = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "nothing")], capture_output=True, text=True)
    assert missing.returncode != 0 and "no metrics.jsonl" in missing.stderr
