"""configs/sd21.yaml at its own render size on this machine: peak memory and seconds per step.

The recipe's scene (hash-grid field, MLP background, 64x64 renders, 128 dense samples per ray, finite-difference
normals, latent SDS; then its surface stage, 128^3 SDF, capped at the same number of steps) is what costs
memory on a CPU; the prior is a miniature of SD's architecture
(``make_random_sd.py --tiny``), so the figure is the scene's, not a full-size UNet's. Each case runs the real
command, ``python -m dreamfield generate ... --config configs/sd21.yaml``, in a fresh process, and its peak
resident memory is read from the kernel (``resource.getrusage(RUSAGE_CHILDREN)``).

    .venv/bin/python scripts/bench_sd_recipe.py [--steps 3] [--threads 2] [--resolution 64 --samples 128]

Goal (issue 15): peak <= 4 GB at 64^2 x 128 samples.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_case(model: Path, out: Path, steps: int, threads: int, resolution: int, samples: int) -> dict:
    cmd = [sys.executable, "-m", "dreamfield", "generate", "a red cube", "--config", str(REPO / "configs" / "sd21.yaml"),
           "--model", str(model), "--device", "cpu", "--steps", str(steps), "--out", str(out), "--no-export", "--quiet",
           "--set", f"render.resolution={resolution}", "--set", f"render.n_samples={samples}",
           "--set", f"run.threads={threads}", "--set", "run.log_every=1", "--set", "run.preview_every=0",
           "--set", "run.checkpoint_seconds=0", "--set", f"surface.steps={steps}"]
    # a fresh interpreter per case: RUSAGE_CHILDREN's maximum then belongs to this case alone
    probe = [sys.executable, "-c", "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)", *cmd]
    t0 = time.perf_counter()
    done = subprocess.run(probe, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(threads)))
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"}
    peak_kb = int(done.stdout.strip().splitlines()[-1])
    secs = [json.loads(l)["sec"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    return {"peak_gb": peak_kb / 2**20, "sec_per_step": sorted(secs[1:] or secs)[len(secs[1:] or secs) // 2],
            "first_step_s": secs[0], "wall_s": wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--resolution", type=int, default=64)
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny_sd"
        subprocess.run([sys.executable, str(REPO / "scripts" / "make_random_sd.py"), "--out", str(model), "--tiny",
                        "--device", "cpu", "--dtype", "float32"], check=True, capture_output=True)
        cases = {"recipe": (args.resolution, args.samples), "half-size": (args.resolution // 2, args.samples // 2)}
        rows = {name: run_case(model, Path(tmp) / name, args.steps, args.threads, *size) for name, size in cases.items()}
    machine = f"{platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, Python {platform.python_version()}"
    import torch

    print(f"configs/sd21.yaml on {machine}, torch {torch.__version__}, {args.threads} threads, {args.steps} steps")
    print(f"{'case':10} {'render':>10} {'peak GB':>8} {'s/step':>8}")
    for name, row in rows.items():
        res, n = cases[name]
        if "error" in row:
            print(f"{name:10} {res:>4}^2x{n:<4} error: {row['error']}")
        else:
            print(f"{name:10} {res:>4}^2x{n:<4} {row['peak_gb']:8.2f} {row['sec_per_step']:8.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": machine, "args": vars(args), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
