"""Renderer benchmark: forward + backward time of one training render.

CPU (always): the default config (grid field, lambertian, dense path) at 64^2 and 128^2.
CUDA (when available): the same on the GPU, and the dense path against nerfacc's occupancy-grid
path at 128^2, 256 samples (speed ratio and max image difference).

Two field states: "blob" (a fresh field: DreamFusion's blob plus the faint fog of the density bias,
so every sample inside the bounding sphere counts) and "torus" (the density grid set to a solid
torus with empty space around it, like a field after some optimisation).

    .venv/bin/python scripts/bench_render.py [--threads N] [--repeats 5] [--no-cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch

from dreamfield.config import CameraConfig, FieldConfig, RenderConfig
from dreamfield.scene.background import make_background
from dreamfield.scene.cameras import sample_cameras
from dreamfield.scene.field import GridField, make_field
from dreamfield.scene.occupancy import OccupancyGrid
from dreamfield.scene.render import render


def make_state(state: str, device: str) -> GridField:
    field = make_field(FieldConfig())
    assert isinstance(field, GridField)
    if state == "torus":
        r = field.density_grid.shape[-1]
        lin = torch.linspace(-field.bound, field.bound, r)
        z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")
        sdf = torch.sqrt((torch.sqrt(x * x + y * y) - 0.35) ** 2 + z * z) - 0.15
        with torch.no_grad():
            field.density_grid.copy_((-60.0 * sdf).clamp(-12.0, 8.0)[None, None])
            field.color_grid.normal_(0.0, 1.0)
    return field.to(device)


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_step(field, cams, res, cfg, bg, occupancy, device, repeats, stratified=True):
    """Median wall seconds of render + backward, median process CPU seconds (all threads) and the
    RenderOut of the last call. CPU seconds are less disturbed by other programs on a busy machine."""
    times, cpu = [], []
    out = None
    for i in range(repeats + 1):  # first call warms up
        field.zero_grad(set_to_none=True)
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        out = render(field, cams, res, res, cfg, bg, "lambertian", occupancy, stratified=stratified)
        (out.rgb.mean() + out.orientation).backward()
        sync(device)
        if i > 0:
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)
    times.sort()
    cpu.sort()
    return times[len(times) // 2], cpu[len(cpu) // 2], out


def machine(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU rows")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    g = torch.Generator().manual_seed(0)
    cams_cpu = sample_cameras(CameraConfig(), 1, g, "cpu")
    cfg = RenderConfig()
    rows = []
    header = (
        f"{'device':<34} {'path':<6} {'state':<6} {'res':>4} {'S':>4} {'ms fwd+bwd':>11} {'cpu ms':>8} "
        f"{'Mray*samp/s':>12} {'evaluated':>10}"
    )

    devices = ([] if args.no_cpu else ["cpu"]) + (["cuda"] if torch.cuda.is_available() else [])
    for device in devices:
        cams = cams_cpu.to(device)
        bg = make_background(cfg).to(device)
        for state in ("blob", "torus"):
            field = make_state(state, device)
            for res in (64, 128):
                sec, cpu, out = time_step(field, cams, res, cfg, bg, None, device, args.repeats)
                nominal = res * res * cfg.n_samples  # rays x samples per ray
                rows.append(
                    f"{machine(device):<34} {'dense':<6} {state:<6} {res:>4} {cfg.n_samples:>4} {sec * 1e3:>11.1f} "
                    f"{cpu * 1e3:>8.1f} {nominal / sec / 1e6:>12.2f} {out.n_samples:>10d}"
                )
                print(rows[-1], flush=True)

    compare = []
    if torch.cuda.is_available():
        device = "cuda"
        cams = cams_cpu.to(device)
        bg = make_background(cfg).to(device)
        dense_cfg = dataclasses.replace(cfg, n_samples=256)
        occ_cfg = dataclasses.replace(cfg, render_step_size=2.0 * 1.0 / 256)  # same spacing as 256 samples across the box
        for state in ("blob", "torus"):
            field = make_state(state, device)
            occ = OccupancyGrid(occ_cfg, bound=1.0).to(device)
            for step in range(0, 256, occ_cfg.occ_update_every):  # nerfacc's warm-up refreshes
                occ.update(step, field)
            t_dense, _, out_dense = time_step(field, cams, 128, dense_cfg, bg, None, device, args.repeats, stratified=False)
            t_occ, _, out_occ = time_step(field, cams, 128, occ_cfg, bg, occ, device, args.repeats, stratified=False)
            diff = (out_dense.rgb - out_occ.rgb).abs()
            compare.append(
                f"{state:<6} dense {t_dense * 1e3:8.1f} ms ({int(out_dense.n_samples)} samples)  "
                f"occupancy {t_occ * 1e3:8.1f} ms ({int(out_occ.n_samples)} samples, {occ.occupied_fraction:.1%} cells)  "
                f"speed-up x{t_dense / t_occ:.2f}  max|rgb diff| {float(diff.max()):.4f}  mean {float(diff.mean()):.5f}"
            )
            print(compare[-1], flush=True)

    print()
    print(f"torch {torch.__version__}, {platform.platform()}")
    print(header + "   (evaluated: samples the field was run at; the rest lie outside its bounding sphere)")
    print("\n".join(rows))
    if compare:
        print(f"\nCUDA 128^2, dense 256 samples vs occupancy grid (step 2/256), lambertian, {torch.cuda.get_device_name()}:")
        print("\n".join(compare))


if __name__ == "__main__":
    main()
