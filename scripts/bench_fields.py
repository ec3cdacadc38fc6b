"""Field benchmark: memory per sample point and points per second of one training evaluation,
forward + normals + backward, for the grid field and the hash-grid field, the hash grid's old
plain-autograd lookup (hash_encode_reference) against the current one, in one run.

Cases (each in a fresh subprocess, so one case's peak does not hide another's):
  grid                 the CPU default (FieldConfig()), unchanged code
  hash-old fd / ad     configs/sd21.yaml's hash settings (16 levels x 2 features, 2^19 rows, hidden 64,
                       2 layers) through hash_encode_reference; normals by finite differences (fd, the
                       default) or by double backward (ad, field.normals=autograd)
  hash-new fd / ad     the same through the current HashEncoding; ad is HashGridField's written-out
                       exact gradient
  render new fd / ad   one sd21-sized training render with the hash grid (64 x 64 rays x 128 samples,
                       lambertian, dense path on CPU, occupancy grid on CUDA), rgb.mean() + orientation
                       backward: its peak and the whole process's peak

Memory: bytes per point is the slope of a step's peak (above the memory before it, after a warm-up
step so that gradients exist) from a 256-point step to an N-point one; the 256-point peak is the fixed
part (mostly table-sized gradient transients). CPU: peak resident set (VmHWM, reset through
/proc/self/clear_refs) with glibc's mmap threshold fixed at 128 KiB so that freed tensors leave the
resident set at once; CUDA: torch.cuda.max_memory_allocated. Speed: the fastest of --repeats steps in
another fresh process with the default allocator, as points per wall second and per process CPU second
(all threads; less disturbed by other programs on a shared machine). The old lookup gets fewer points
(--old-points): it needs some 80 KB per point.

    .venv/bin/python scripts/bench_fields.py [--device cpu|cuda] [--points 131072] [--old-points 16384]
        [--repeats 3] [--cases grid,hash-old-fd,...] [--render-res 64] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from dreamfield.config import FieldConfig, load_config
from dreamfield.scene.encoding import hash_encode_reference
from dreamfield.scene.field import DensityField, HashGridField, make_field

ROOT = Path(__file__).resolve().parents[1]
SD21 = ROOT / "configs" / "sd21.yaml"
CASES = ("grid", "hash-old-fd", "hash-new-fd", "hash-old-ad", "hash-new-ad", "render-new-fd", "render-new-ad")
MMAP_THRESHOLD = 131072


# -- memory probes -----------------------------------------------------------------------------------
def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak(device: str) -> int:
    """Start a peak measurement; returns the current usage."""
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        return torch.cuda.memory_allocated()
    with open("/proc/self/clear_refs", "w") as f:  # "5" resets VmHWM to the current RSS (Linux >= 4.0)
        f.write("5")
    return rss_bytes()


def peak(device: str) -> int:
    if device == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


# -- one case, in the child process -----------------------------------------------------------------
def hash_field(normals: str, old: bool, device: str) -> DensityField:
    cfg = load_config([SD21], [f"field.normals={normals}"]).field
    field = make_field(cfg).to(device)
    assert isinstance(field, HashGridField)
    if old:  # the plain-autograd lookup and DensityField's generic normals (six kept lookups, or double backward)
        enc = field.encoding
        enc.forward = lambda x: hash_encode_reference(enc, x)
        field.raw_gradient = lambda x: DensityField.raw_gradient(field, x)
        field.raw_gradient_fd = lambda x: DensityField.raw_gradient_fd(field, x)
    return field


def points(n: int, device: str, seed: int) -> torch.Tensor:
    """n points uniform in the ball of radius 0.9 (inside every field's bounding sphere)."""
    g = torch.Generator().manual_seed(seed)
    d = torch.nn.functional.normalize(torch.randn(n, 3, generator=g), dim=-1)
    return (d * 0.9 * torch.rand(n, 1, generator=g) ** (1 / 3)).to(device)


def field_step(field: DensityField, x: torch.Tensor) -> None:
    """Forward (density, albedo), normals, one backward through all three."""
    field.zero_grad(set_to_none=False)
    sigma, albedo = field(x)
    n = field.normals(x)
    (sigma.mean() + albedo.mean() + n[:, 0].mean()).backward()


def measure(step, device: str) -> tuple[int, float]:
    """Peak bytes above the start of step(), and its seconds."""
    base = reset_peak(device)
    t0 = time.perf_counter()
    step()
    if device == "cuda":
        torch.cuda.synchronize()
    return peak(device) - base, time.perf_counter() - t0


def run_field_case(case: str, n: int, phase: str, repeats: int, device: str) -> dict:
    """phase "mem": peak bytes of a step at 256 points and at n (fresh process, MALLOC_MMAP_THRESHOLD_
    set by the parent); phase "time": the fastest of `repeats` steps at n, wall and process CPU seconds."""
    if case == "grid":
        field: DensityField = make_field(FieldConfig()).to(device)
    else:
        _, which, normals = case.split("-")
        field = hash_field("autograd" if normals == "ad" else "finite_difference", which == "old", device)
    tiny, big = points(256, device, 1), points(n, device, 2)
    field_step(field, points(256, device, 0))  # warm-up: gradients allocated, lazy inits done
    if phase == "mem":
        mem_tiny, _ = measure(lambda: field_step(field, tiny), device)
        mem_big, _ = measure(lambda: field_step(field, big), device)
        return {"mem_tiny": mem_tiny, "mem_big": mem_big}
    wall, cpu = [], []
    for _ in range(repeats):
        c0 = time.process_time()
        wall.append(measure(lambda: field_step(field, big), device)[1])
        cpu.append(time.process_time() - c0)
    return {"wall": min(wall), "cpu": min(cpu)}


def run_render_case(case: str, res: int, device: str) -> dict:
    from dreamfield.scene.background import make_background
    from dreamfield.scene.cameras import sample_cameras
    from dreamfield.scene.occupancy import OccupancyGrid
    from dreamfield.scene.render import render

    normals = "autograd" if case.endswith("ad") else "finite_difference"
    cfg = load_config([SD21], [f"field.normals={normals}"])
    field = make_field(cfg.field).to(device)
    bg = make_background(cfg.render).to(device)
    cams = sample_cameras(cfg.camera, 1, torch.Generator().manual_seed(0), device)
    occ = None
    if device == "cuda" and cfg.render.use_occupancy_grid:
        occ = OccupancyGrid(cfg.render, cfg.field.bound).to(device)
        occ.update(0, field)
    box: dict = {}

    def step() -> None:
        out = render(field, cams, res, res, cfg.render, bg, "lambertian", occ, generator=torch.Generator().manual_seed(1))
        (out.rgb.mean() + out.orientation).backward()
        box["samples"] = int(out.n_samples)

    c0 = time.process_time()
    mem, sec = measure(step, device)
    cpu = time.process_time() - c0
    return {"peak_mb": mem / 2**20, "process_peak_mb": peak(device) / 2**20, "seconds": sec, "cpu_seconds": cpu,
            "samples": box["samples"]}


# -- the parent -------------------------------------------------------------------------------------
def run_child(case: str, phase: str, n: int, args: argparse.Namespace) -> dict:
    """One phase of one case in a fresh interpreter; memory phases run with glibc's mmap threshold
    fixed, so that a freed tensor leaves the resident set at once (the timing runs use the default)."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    if phase == "mem":
        env["MALLOC_MMAP_THRESHOLD_"] = str(MMAP_THRESHOLD)
    cmd = [sys.executable, __file__, "--child", case, "--phase", phase, "--device", args.device, "--points", str(n)]
    cmd += ["--repeats", str(args.repeats), "--render-res", str(args.render_res), "--threads", str(args.threads)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def run_case(case: str, args: argparse.Namespace) -> dict:
    if case.startswith("render"):
        return run_child(case, "mem", 0, args)
    n = args.old_points if "old" in case else args.points
    r = {"n": n, **run_child(case, "mem", n, args)}
    if "error" not in r:
        r.update(run_child(case, "time", n, args))
    if "error" not in r:  # bytes per point: the slope from the 256-point step to the n-point one
        r["bytes_per_point"] = (r["mem_big"] - r["mem_tiny"]) / (n - 256)
        r["points_per_s"], r["points_per_cpu_s"] = n / r["wall"], n / r["cpu"]
    return r


def machine(device: str) -> str:
    cpu = f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, {torch.get_num_threads()} torch threads"
    gpu = f", {torch.cuda.get_device_name()}" if device == "cuda" else ""
    return f"{platform.platform()}, {cpu}{gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def report(case: str, r: dict, args: argparse.Namespace) -> str:
    if "error" in r:
        return f"{case:<15} failed: {r['error']}"
    if case.startswith("render"):
        return (
            f"{case:<15} {args.render_res}x{args.render_res} rays x 128 samples ({r['samples']} evaluated): "
            f"step peak {r['peak_mb']:.0f} MiB, process peak {r['process_peak_mb']:.0f} MiB, "
            f"{r['seconds']:.1f} s ({r['cpu_seconds']:.1f} CPU s)"
        )
    return (
        f"{case:<15} {r['n']:>8d} {r['bytes_per_point']:>12.0f} {r['mem_tiny'] / 2**20:>10.1f} {r['mem_big'] / 2**20:>9.1f} "
        f"{r['points_per_s']:>10.0f} {r['points_per_cpu_s']:>10.0f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--points", type=int, default=131072, help="points per field step, grid and hash-new cases")
    ap.add_argument("--old-points", type=int, default=16384, help="points per field step, hash-old cases")
    ap.add_argument("--repeats", type=int, default=3, help="timed steps per case (the fastest counts)")
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    ap.add_argument("--render-res", type=int, default=64, help="render cases: rays per side (the recipe: 64)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--phase", default="mem", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: CUDA is not available")
    if args.child:
        if args.child.startswith("render"):
            result = run_render_case(args.child, args.render_res, args.device)
        else:
            result = run_field_case(args.child, args.points, args.phase, args.repeats, args.device)
        print(json.dumps(result))
        return

    cases = [c for c in args.cases.split(",") if c]
    bad = [c for c in cases if c not in CASES]
    if bad:
        raise SystemExit(f"--cases: {','.join(bad)} not among {','.join(CASES)}")
    print(machine(args.device))
    print(f"device {args.device}, float32; peak MiB of one step above the memory before it, at 256 and at N points")
    print(f"{'case':<15} {'N':>8} {'bytes/point':>12} {'MiB @256':>10} {'MiB @N':>9} {'points/s':>10} {'pts/cpu-s':>10}")
    results = {}
    for case in cases:
        results[case] = run_case(case, args)
        print(report(case, results[case], args), flush=True)
    for old_case, new_case in (("hash-old-fd", "hash-new-fd"), ("hash-old-ad", "hash-new-ad"), ("hash-old-fd", "hash-new-ad")):
        old, new = results.get(old_case), results.get(new_case)
        if old and new and "error" not in old and "error" not in new:
            print(
                f"{new_case} vs {old_case}: memory per point x{new['bytes_per_point'] / old['bytes_per_point']:.3f}, "
                f"points per second x{new['points_per_s'] / old['points_per_s']:.2f} (wall), "
                f"x{new['points_per_cpu_s'] / old['points_per_cpu_s']:.2f} (CPU)"
            )


if __name__ == "__main__":
    main()
