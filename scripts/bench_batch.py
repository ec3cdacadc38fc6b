"""``dreamfield batch`` against the same runs one after another, and Ray's own cost.

Three measurements on this machine, in one run:

1. sequential: six toy prompts (embedded prior, ``--steps N``, default config otherwise, export included),
   ``python -m dreamfield generate`` one after another with ``--set run.threads=T`` (T = the cores, the same
   threads in total as the batch);
2. batch: the same six prompts through ``run_batch`` with ``--jobs J --threads-per-run T/J``, Ray started
   in-process and shut down inside the timed span (what a user's ``dreamfield batch`` pays);
3. Ray's overhead: ``ray.init`` + ``ray.shutdown`` of a local session, and per task the wall of a batch of
   no-op runs (a stand-in command ``true``, one at a time) minus the same subprocess launched directly.

Prints the walls, their ratio and the overhead figures, names the machine, and writes them as JSON.
Wall times on a shared machine move with its load; the load average is printed beside them.

Usage: nice python scripts/bench_batch.py [--steps 60] [--jobs 2] [--out outputs/bench_batch]
       [--parts overhead,batch,sequential] [--seq-threads T] [--seq-prompts N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from dreamfield.batch import (  # noqa: E402
    _UNBLOCK_AND_EXEC,
    BatchEntry,
    BatchOptions,
    dreamfield_command,
    ray_session,
    run_batch,
    slugify,
)

PROMPTS = ("a red cube", "a green sphere", "a blue cylinder", "a orange cone", "a yellow torus", "a purple pyramid")


def sequential(out: Path, steps: int, threads: int, n: int) -> tuple[float, list[float]]:
    """The first n prompts one after another, ``threads`` torch threads each. Returns (total wall, run walls)."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    walls = []
    t0 = time.perf_counter()
    for prompt in PROMPTS[:n]:
        cmd = [*dreamfield_command(), "generate", prompt, "--out", str(out / slugify(prompt)), "--steps", str(steps),
               "--quiet", "--set", f"run.threads={threads}"]
        t1 = time.perf_counter()
        with open(out / f"{slugify(prompt)}.log", "w") as log:
            subprocess.run(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
        walls.append(time.perf_counter() - t1)
    return time.perf_counter() - t0, walls


def batched(out: Path, steps: int, jobs: int, threads: int) -> tuple[float, list[dict]]:
    """The six prompts through run_batch (Ray start-up and shut-down included). Returns (wall, rows)."""
    t0 = time.perf_counter()
    result = run_batch([BatchEntry(p) for p in PROMPTS], out,
                       BatchOptions(steps=steps, jobs=jobs, threads_per_run=threads, progress=False))
    wall = time.perf_counter() - t0
    bad = [r for r in result.rows if r["status"] != "ok"]
    if bad:
        raise SystemExit(f"batch run failed: {bad[0]['prompt']}: {bad[0]['error']}")
    return wall, result.rows


def ray_overhead(out: Path, n: int, cpus: int) -> dict:
    """Seconds of a local Ray's start + stop, and per task of a one-at-a-time batch of no-op runs beyond the
    same subprocess launched directly."""
    import ray

    t0 = time.perf_counter()
    with ray_session(None, cpus):
        t_init = time.perf_counter() - t0
        ray.get(ray.remote(lambda: 0).remote())  # a warm worker, as a real batch has after its first task
        t1 = time.perf_counter()
        result = run_batch([BatchEntry(f"noop {i}") for i in range(n)], out,
                           BatchOptions(jobs=1, command=("true",), progress=False))
        t_tasks = time.perf_counter() - t1
        assert all(r["status"] == "ok" for r in result.rows)
        t_exit = time.perf_counter()
    t_stop = time.perf_counter() - t_exit
    t3 = time.perf_counter()
    for _ in range(n):
        subprocess.run([sys.executable, "-c", _UNBLOCK_AND_EXEC, "true"], check=True)
    t_direct = time.perf_counter() - t3
    return {"ray_start_s": round(t_init, 2), "ray_stop_s": round(t_stop, 2), "noop_tasks": n,
            "batch_noop_s": round(t_tasks, 2), "direct_noop_s": round(t_direct, 2),
            "per_task_overhead_s": round((t_tasks - t_direct) / n, 3)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="optimisation steps per run (the default config's 600 is long)")
    p.add_argument("--jobs", type=int, default=2, help="runs at once in the batch")
    p.add_argument("--out", default="outputs/bench_batch")
    p.add_argument("--noop", type=int, default=20, help="no-op tasks for the per-task overhead")
    p.add_argument("--parts", default="overhead,batch,sequential", help="which measurements, comma-separated")
    p.add_argument("--seq-threads", type=int, default=None, help="threads of each sequential run (default: the cores)")
    p.add_argument("--seq-prompts", type=int, default=len(PROMPTS), help="prompts run one after another (<= 6)")
    a = p.parse_args(argv)
    parts = set(a.parts.split(","))
    cores = os.cpu_count() or 1
    threads = max(1, cores // a.jobs)
    seq_threads = a.seq_threads or cores
    out = Path(a.out)
    machine = f"{platform.node()}: {cores} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"
    print(f"machine {machine}; load average {os.getloadavg()}")
    print(f"toy prompts, embedded prior, --steps {a.steps}, export included")
    result = {"machine": machine, "steps": a.steps}
    for part in ("overhead", "batch", "sequential"):
        if part in parts:
            shutil.rmtree(out / part, ignore_errors=True)
            (out / part).mkdir(parents=True)
    if "overhead" in parts:
        over = ray_overhead(out / "overhead", a.noop, cores)
        print(f"ray: start {over['ray_start_s']} s, stop {over['ray_stop_s']} s; per task {over['per_task_overhead_s']} s "
              f"({a.noop} no-op tasks {over['batch_noop_s']} s vs the same subprocesses directly {over['direct_noop_s']} s)")
        result.update(over, ray_overhead_6_tasks_s=round(over["ray_start_s"] + over["ray_stop_s"]
                                                         + len(PROMPTS) * over["per_task_overhead_s"], 2))
    if "batch" in parts:
        t_batch, rows = batched(out / "batch", a.steps, a.jobs, threads)
        run_walls = ", ".join(f"{r['wall_seconds']:.0f}" for r in rows)
        print(f"batch      6 prompts, --jobs {a.jobs} --threads-per-run {threads}: {t_batch:.1f} s, {t_batch / 6:.1f} s per "
              f"prompt (runs {run_walls} s); load {os.getloadavg()}")
        result.update(jobs=a.jobs, threads_per_run=threads, batch_s=round(t_batch, 1),
                      batch_run_s=[r["wall_seconds"] for r in rows])
    if "sequential" in parts:
        t_seq, walls = sequential(out / "sequential", a.steps, seq_threads, a.seq_prompts)
        seq_walls = ", ".join(f"{w:.0f}" for w in walls)
        print(f"sequential {a.seq_prompts} prompts, run.threads={seq_threads}: {t_seq:.1f} s, {t_seq / a.seq_prompts:.1f} s "
              f"per prompt (runs {seq_walls} s); load {os.getloadavg()}")
        result.update(seq_threads=seq_threads, sequential_s=round(t_seq, 1), sequential_run_s=[round(w, 1) for w in walls])
    if "batch_s" in result and "sequential_s" in result:
        ratio = (result["sequential_s"] / a.seq_prompts) / (result["batch_s"] / 6)
        print(f"per prompt: sequential / batch = {ratio:.2f}")
        result["speedup_per_prompt"] = round(ratio, 3)
    (out / "bench_batch.json").write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out / 'bench_batch.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
