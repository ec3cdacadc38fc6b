"""Export before/after on toy-like fields: the old vertex-colour export (no decimation, the threshold
level, the albedo at the vertex) against the default textured export (export_asset: the level fitted to
the render, the colour composited along the normal), on CPU, measured in one run.

Each field is a toy reference primitive fitted into the default grid field (48^3, exp density) by
``mesh_import.fit_field_to_mesh``, as ``dreamfield edit MESH`` does; the export grid is 128^3 (the
CPU default). Prints, per shape: faces, texture size, seconds (before / after, split into mesh,
texture, write, compare), the mesh-vs-field figures, and the toy scorer's colour read back from each
file against the field's albedo.

    .venv/bin/python scripts/bench_export_mesh.py [--shapes cube torus cone] [--threads 1]
        [--threshold 5 --blur 0]   (the level and blur of an imported mesh's field, edit.yaml's)
        [--level threshold]        (the default export at the threshold too; default: the config's level rule)
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from dreamfield.config import Config
from dreamfield.export.mesh import export_asset, extract_mesh, save_mesh
from dreamfield.scene.mesh_import import fit_field_to_mesh
from dreamfield.toy.domain import COLOURS
from dreamfield.toy.measures import gltf_to_world, load_mesh, reference_mesh, score_mesh

SHAPE_COLOUR = {"cube": "red", "torus": "blue", "cone": "green", "sphere": "yellow", "pyramid": "orange"}


def toy_field(shape: str, cfg: Config):
    rgb = tuple(float(c) for c in COLOURS[SHAPE_COLOUR[shape]])
    ref = reference_mesh(shape, rgb)
    world = ref.copy()
    world.vertices = gltf_to_world(ref.vertices)
    scene, _ = fit_field_to_mesh(world, cfg, "cpu")
    return scene.field, rgb


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", nargs="+", default=["cube", "torus", "cone"])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--threshold", type=float, default=None, help="export.threshold (default: the config's)")
    ap.add_argument("--blur", type=float, default=None, help="export.density_blur (default: the config's)")
    ap.add_argument("--level", choices=("silhouette", "threshold"), default=None,
                    help="export.level of the default export (default: the config's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = Config()
    if args.threshold is not None:
        cfg.export.threshold = args.threshold
    if args.blur is not None:
        cfg.export.density_blur = args.blur
    if args.level is not None:
        cfg.export.level = args.level
    print(f"machine: {platform.node()} {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, "
          f"export.threshold {cfg.export.threshold}, density_blur {cfg.export.density_blur}, level {cfg.export.level}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for shape in args.shapes:
            field, rgb = toy_field(shape, cfg)
            old_cfg = replace(cfg.export, target_faces=0, colour="vertex", level="threshold", colour_depth=0.0)
            t = time.perf_counter()
            mesh = extract_mesh(field, old_cfg, cfg.field.bound, "cpu")
            before_path = save_mesh(mesh, Path(tmp) / f"{shape}_before", ["glb"])[0]
            before_s = time.perf_counter() - t
            info = export_asset(field, cfg.export, cfg.field.bound, Path(tmp) / f"{shape}_after", ["glb"], "cpu",
                                cfg.render, cfg.camera)
            vertex_info = export_asset(field, replace(cfg.export, colour="vertex"), cfg.field.bound,
                                       Path(tmp) / f"{shape}_vertex", ["glb"], "cpu", cfg.render, cfg.camera)
            colour = SHAPE_COLOUR[shape]
            read = {}
            for name, path in (("before", before_path), ("texture", info["paths"][0]), ("vertex", vertex_info["paths"][0])):
                s = score_mesh(load_mesh(path), shape, colour)
                read[name] = {"mean_rgb_255": [round(255 * c, 2) for c in s["mean_rgb"]], "colour_ok": s["colour_ok"],
                              "shape_ok": s["shape_ok"], "iou": round(s["iou"], 4)}
            row = {
                "shape": shape, "albedo_255": [round(255 * c, 2) for c in rgb],
                "before": {"faces": len(mesh.faces), "seconds": round(before_s, 2)},
                "after": {k: info[k] for k in ("faces", "texture_size", "level", "level_rule", "seconds", "mesh_vs_field")},
                "vertex": {k: vertex_info[k] for k in ("faces", "seconds", "mesh_vs_field")},
                "toy_scorer": read,
            }
            rows.append(row)
            print(json.dumps(row))
    after = np.mean([r["after"]["seconds"]["total"] for r in rows])
    before = np.mean([r["before"]["seconds"] for r in rows])
    print(f"mean export seconds: before {before:.2f}, after {after:.2f} (ratio {after / before:.2f})")


if __name__ == "__main__":
    main()
