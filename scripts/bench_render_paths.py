"""The renderer's two sampling paths on the same scene: occupancy-grid marching vs dense samples.

Scene: the default field (``FieldConfig()``, the voxel grid) with a red cube of half-side 0.45
written into its density and colour voxels, so that the image has a hard surface and empty space
around it, as a field has after some optimisation. The occupancy grid is rebuilt from that field
(``OccupancyGrid.refresh``).

Paths, at H = W = 128 (``--res``), 4 orbit views (``--views``):

- dense:  ``render(..., occupancy=None)`` with render.n_samples = 256 (``--samples``)
- packed: ``render(..., occupancy=grid)``, nerfacc marching with render_step_size = box diagonal / 256,
          i.e. at most 256 steps along any ray (the same budget as dense), and once more with the
          config's default step (``packed_default_step``)

Reported per path: median ms for a no-grad render (deterministic midpoints) and for a training
render (stratified samples, forward + backward of the image mean), field samples evaluated, and
the image difference to the dense render: max and mean |rgb_dense - rgb_packed| over all pixels.

Usage: python3 scripts/bench_render_paths.py [--json out.json]   (CUDA; on a CPU it runs the dense
path and the CPU use of the grid, at a small size, to check the code path)
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_ms(fn, device: torch.device, warmup: int, reps: int) -> float:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(out)


def cube_field(device: torch.device, half: float = 0.45):
    """The default field with a red cube written into its voxels (falls back to the blob start)."""
    from dreamfield.config import FieldConfig
    from dreamfield.scene.field import make_field

    field = make_field(FieldConfig()).to(device)
    note = "default field (blob start)"
    if hasattr(field, "density_grid") and hasattr(field, "color_grid"):
        r = field.density_grid.shape[-1]
        c = torch.linspace(-field.bound, field.bound, r, device=device)  # voxel corners at +-bound
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")  # voxel layout (z, y, x)
        inside = torch.maximum(torch.maximum(xx.abs(), yy.abs()), zz.abs()) < half
        with torch.no_grad():
            field.density_grid.copy_(torch.where(inside, 8.0, -8.0).reshape(field.density_grid.shape))
            if getattr(field, "decoder", None) is None and field.color_grid.shape[1] == 3:
                field.color_grid.copy_(torch.tensor([3.0, -3.0, -3.0], device=device).reshape(1, 3, 1, 1, 1))
        note = f"default grid field ({r}^3 voxels) holding a cube of half-side {half}"
    return field, note


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--res", type=int, default=128)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--views", type=int, default=4)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--reps", type=int, default=10)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    from dreamfield.config import RenderConfig
    from dreamfield.scene.background import make_background
    from dreamfield.scene.cameras import orbit_cameras
    from dreamfield.scene.occupancy import OccupancyGrid
    from dreamfield.scene.render import render

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    field, note = cube_field(device)
    base = RenderConfig()
    background = make_background(base).to(device)
    cams = orbit_cameras(args.views, 20.0, 1.8, 45.0, device)
    diag_step = 2.0 * field.bound * math.sqrt(3.0) / args.samples

    occ = OccupancyGrid(base, field.bound).to(device)
    t0 = time.perf_counter()
    occ.refresh(field)
    sync(device)
    refresh_ms = 1e3 * (time.perf_counter() - t0)

    paths = {
        "dense": (replace(base, n_samples=args.samples), None),
        "packed": (replace(base, render_step_size=diag_step), occ),
        "packed_default_step": (base, occ),
    }
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "scene": note,
        "res": args.res,
        "views": args.views,
        "dense_samples": args.samples,
        "packed_step": diag_step,
        "default_step": base.render_step_size,
        "occupied_fraction": occ.occupied_fraction,
        "occ_refresh_ms": refresh_ms,
        "paths": {},
        "notes": [],
    }
    if device.type != "cuda":
        report["notes"].append("CPU: both 'packed' rows are the dense path skipping empty cells; timings mean nothing")

    images = {}
    for name, (cfg, grid) in paths.items():
        row: dict = {}
        try:
            with torch.no_grad():
                out = render(field, cams, args.res, args.res, cfg, background, "lambertian", grid, stratified=False)
            images[name] = out.rgb.float()
            row["samples"] = int(out.n_samples)

            def eval_render(cfg=cfg, grid=grid):
                with torch.no_grad():
                    render(field, cams, args.res, args.res, cfg, background, "lambertian", grid, stratified=False)

            def train_render(cfg=cfg, grid=grid):
                o = render(field, cams, args.res, args.res, cfg, background, "lambertian", grid, stratified=True)
                (o.rgb.mean() + o.orientation).backward()
                field.zero_grad(set_to_none=True)

            row["eval_ms"] = median_ms(eval_render, device, args.warmup, args.reps)
            row["train_ms"] = median_ms(train_render, device, args.warmup, args.reps)
            if "dense" in images and name != "dense":
                d = (images["dense"] - images[name]).abs()
                row["max_abs_diff"] = float(d.max())
                row["mean_abs_diff"] = float(d.mean())
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        report["paths"][name] = row
        print(json.dumps({name: row}), flush=True)

    dense, packed = report["paths"].get("dense", {}), report["paths"].get("packed", {})
    if "train_ms" in dense and "train_ms" in packed:
        report["speedup_train"] = dense["train_ms"] / packed["train_ms"]
        report["speedup_eval"] = dense["eval_ms"] / packed["eval_ms"]
    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def summary(r: dict) -> str:
    lines = [
        f"render paths on {r['device']}: {r['views']} views at {r['res']}^2, {r['scene']}, "
        f"occupied {100 * r['occupied_fraction']:.1f}% of the grid",
        f"{'path':22} {'eval ms':>8} {'train ms':>9} {'samples':>9} {'max|d|':>7} {'mean|d|':>8}",
    ]
    for name, row in r["paths"].items():
        if "error" in row:
            lines.append(f"{name:22} error: {row['error']}")
            continue
        lines.append(
            f"{name:22} {row['eval_ms']:8.2f} {row['train_ms']:9.2f} {row['samples']:9d} "
            f"{row.get('max_abs_diff', 0.0):7.4f} {row.get('mean_abs_diff', 0.0):8.5f}"
        )
    if "speedup_train" in r:
        lines.append(f"packed vs dense: {r['speedup_train']:.2f}x (train), {r['speedup_eval']:.2f}x (eval)")
    lines += [f"note: {n}" for n in r["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
