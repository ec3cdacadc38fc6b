"""Device check of dreamfield.export on CUDA: mesh extraction at the CUDA default resolution (256),
CPU/CUDA agreement of the density grid, rendered turntable frames and a contact sheet.

Run from the repo root: PYTHONPATH=. python scripts/check_export_cuda.py (writes to $OUT or /tmp)."""
import os, sys, time
import numpy as np
import torch
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))  # tests/fields.py
from dreamfield.config import Config, ExportConfig
from dreamfield.scene.field import make_field
from dreamfield.scene.background import make_background
from dreamfield.scene.cameras import orbit_cameras
from dreamfield.export.mesh import extract_mesh, save_mesh, density_grid, default_resolution
from dreamfield.export.video import render_views, contact_sheet
from fields import SphereField

dev = "cuda" if torch.cuda.is_available() else "cpu"
out = os.environ.get("OUT", "/tmp")
print("device", dev, torch.__version__, torch.cuda.get_device_name() if dev == "cuda" else "")

def sync():
    if dev == "cuda":
        torch.cuda.synchronize()

f = SphereField(colour=(0.85, 0.15, 0.15), top_colour=(0.15, 0.3, 0.85)).to(dev)
extract_mesh(f, ExportConfig(resolution=32), 1.0, dev)  # warm-up
t = time.perf_counter(); m = extract_mesh(f, ExportConfig(), 1.0, dev); sync(); dt = time.perf_counter() - t
v = 4 / 3 * np.pi * 0.5**3
print(f"sphere: res {default_resolution(dev)} level {m.metadata['level']} faces {len(m.faces)} watertight {m.is_watertight} "
      f"volume rel err {(m.volume - v) / v:+.5f} time {dt:.2f}s")
save_mesh(m, os.path.join(out, "sphere"), ["glb"])

cfg = Config()
for kind in ("grid", "hashgrid"):
    cfg.field.kind = kind
    torch.manual_seed(0)
    fld = make_field(cfg.field).to(dev)
    with torch.no_grad():
        g_dev = density_grid(fld, 64, cfg.field.bound, 262144, dev)
        g_cpu = density_grid(fld.cpu(), 64, cfg.field.bound, 262144, "cpu")
    fld.to(dev)
    print(f"{kind}: grid cpu vs {dev} max |diff| {float((g_dev - g_cpu).abs().max()):.2e} (max {float(g_cpu.max()):.3f})")
    t = time.perf_counter(); m = extract_mesh(fld, cfg.export, cfg.field.bound, dev); sync(); dt = time.perf_counter() - t
    print(f"{kind}: extract_mesh res {default_resolution(dev)} level {m.metadata['level']:.3f} faces {len(m.faces)} "
          f"watertight {m.is_watertight} time {dt:.2f}s")

bg = make_background(cfg.render)
cams = orbit_cameras(16, 20.0, 1.8, 45.0, device=dev)
render_views(f, bg, cfg.render, cams[0], 32)  # warm-up
t = time.perf_counter(); rgb, nrm = render_views(f, bg, cfg.render, cams, 128); sync(); dt = time.perf_counter() - t
print(f"render_views: 16 frames at 128^2 (dense path) {dt:.2f}s; frame {rgb[0].shape} centre {rgb[0][64, 64]} corner {rgb[0][0, 0]}")
contact_sheet(f, bg, cfg.render, os.path.join(out, "views.png"), n_views=4, resolution=128)
print("ok")
