"""A logged metric of runs, averaged over windows of steps, one row per run: when on the path runs part.

Reads each run's ``metrics.jsonl`` (the loop logs a row every ``run.log_every`` steps) and prints the mean of
``--key`` over the steps [0, w), [w, 2w), ... up to ``--until``. Runs made with the same seed see the same
cameras, shadings and noise, so their rows differ only by what differs between them (the prompt, a setting):
the mean training-view opacity of the density stage, for instance, shows within 100 steps which cubes will
end small, where the whole run and its export take four minutes.

    python scripts/metric_windows.py RUN [RUN ...] --key opacity --window 50 --until 200
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dreamfield.files import read_jsonl  # noqa: E402


def windows(rows: list[dict], key: str, window: int, until: int) -> list[float]:
    """Mean of row[key] over the rows with step in [k window, (k + 1) window), for k window < until;
    NaN where a window has no row carrying the key."""
    out = []
    for lo in range(0, until, window):
        vals = [float(r[key]) for r in rows if lo <= r.get("step", -1) < lo + window and key in r]
        out.append(sum(vals) / len(vals) if vals else math.nan)
    return out


def read_rows(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"metric_windows.py: {run} has no metrics.jsonl")
    return read_jsonl(path)  # a line cut by a stop mid-write is skipped


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("runs", nargs="+", type=Path)
    p.add_argument("--key", default="opacity")
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--until", type=int, default=200)
    a = p.parse_args(argv)
    if a.window < 1 or a.until < a.window:
        raise SystemExit("metric_windows.py: --window must be >= 1 and --until >= --window")
    print(f"{'run':<40} " + " ".join(f"{lo:>4}-{lo + a.window:<4}" for lo in range(0, a.until, a.window)))
    for run in a.runs:
        vals = windows(read_rows(run), a.key, a.window, a.until)
        print(f"{str(run):<40} " + " ".join(f"{v:9.3f}" for v in vals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
