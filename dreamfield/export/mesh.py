"""Field -> coloured triangle mesh: density grid, marching cubes, clean-up, glTF Y-up, GLB/OBJ/PLY.

Pipeline (data flows one way)::

    density_grid(field)            (R, R, R) density on the scene box [-bound, bound]^3
      -> marching cubes at `level`   world-space triangles (z up)
      -> drop floaters, smooth, decimate, outward normals
      -> colour at the vertices      albedo.py: composited along the normal, sRGB -> 8-bit RGBA
      -> world (z up) to glTF (Y up) x_out = y_w, y_out = z_w, z_out = x_w   (TOY_DOMAIN.md)
      -> texture_mesh (texture.py)   uv charts + the albedo baked into a PNG (export.colour = "texture")
      -> save_mesh                   GLB / OBJ + MTL + PNG / PLY (gltf.py writes the GLB and OBJ)
      -> mesh_vs_field (raster.py)   the mesh rasterised against the field's render: IoU, PSNR

Marching cubes is scikit-image's Lewiner variant (Lewiner et al. 2003, "Efficient implementation
of marching cubes' cases with topological guarantees"), not PyMCubes' classic Lorensen table: it
resolves the ambiguous cube faces consistently, so a closed level set gives a closed 2-manifold
(the watertight check and the volume in the tests depend on it), and `allow_degenerate=False`
drops zero-area triangles that would otherwise upset trimesh and the glTF validator.

The default level (`ExportConfig.threshold = None`) is ``min(DEFAULT_LEVEL, (min + max) / 2)`` over
the density grid:

* ``DEFAULT_LEVEL = 5`` density units: a layer 0.14 world units thick (about the thinnest toy
  feature, the torus tube) at this density is half opaque, 1 - exp(-5 * 0.14) = 0.50. Matter
  thinner than that barely shows in a render, so it is not surface.
* SDS fields are often soft and foggy, with a peak of only a few units; the level halfway between
  the grid's lowest and highest density then keeps their densest core instead of returning
  nothing. For a profile symmetric about its surface (e.g. a sigmoid of the signed distance, on
  an empty background) that mid level is exactly the surface. Measuring from the minimum, not
  from zero, means a uniform haze yields no surface (EmptyMeshError) rather than the whole box.

Colour. ``export.colour = "texture"`` (the default) unwraps the surface into uv charts (xatlas) and
bakes the field's albedo into an sRGB PNG (texture.py): GLB embeds it in a metallic-roughness
material (metallic 0, roughness 1), OBJ is written as OBJ + MTL + PNG side by side. ``"vertex"``
stores the albedo per vertex instead. PLY always carries sRGB 8-bit vertex colours. In a GLB,
COLOR_0 is linear floats (the glTF spec's colour space; gltf.py); OBJ and PLY vertex colours are
sRGB as is customary. In memory (:func:`extract_mesh`'s result) vertex colours are sRGB 8-bit.

Every export is checked against its field: :func:`export_asset` renders the mesh with the
project's rasteriser (raster.py) and the field with the volume renderer from the same orbit and
reports silhouette IoU and colour PSNR.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import trimesh
from skimage import measure

from dreamfield.config import EXPORT_FORMATS, CameraConfig, ExportConfig, RenderConfig
from dreamfield.export.albedo import surface_albedo
from dreamfield.export.gltf import WORLD_TO_GLTF, glb_bytes, obj_files, png_bytes
from dreamfield.export.raster import FieldViews, field_views, mesh_vs_field, render_mesh
from dreamfield.files import write_bytes, write_text

DEFAULT_LEVEL = 5.0  # density units; see the module docstring
LEVEL_ITERATIONS = 12  # bisection steps of the silhouette level fit: (max - min) / 4096 of the grid's range
# the threshold's level is kept unless the fitted one's silhouette IoU is higher by more than this: on a sharp
# field a pixel's ring of silhouette spans a wide range of levels, and among those the fit would pick one at random
LEVEL_TOLERANCE = 0.01
assert round(float(np.linalg.det(WORLD_TO_GLTF))) == 1


class EmptyMeshError(ValueError):
    """Nothing of the field lies above the marching-cubes level; the message says which level and
    what density range the grid had."""


def default_resolution(device: torch.device | str) -> int:
    """Grid size per side when ExportConfig.resolution == 0: 256 on CUDA, 128 on CPU."""
    return 256 if torch.device(device).type == "cuda" else 128


def grid_points(resolution: int, bound: float) -> torch.Tensor:
    """The 1-D sample positions of the grid, (R,): `resolution` points from -bound to +bound
    inclusive, so the spacing is 2 * bound / (R - 1)."""
    return torch.linspace(-bound, bound, resolution, dtype=torch.float32)


@torch.no_grad()
def density_grid(field, resolution: int, bound: float, chunk: int = 262144, device=None) -> torch.Tensor:
    """Density sampled on a regular grid over the scene box.

    Args:
        field: any object with ``density(x (N, 3)) -> (N,)``.
        resolution: R, samples per side (>= 2); any size, evaluated `chunk` points at a time, so
            the (R^3, 3) coordinate array is never built.
        bound: the box is [-bound, bound]^3.
        device: where the field is evaluated (default: CPU).
    Returns:
        (R, R, R) float32 CPU tensor, ``grid[i, j, k] = density(x_i, y_j, z_k)`` with positions
        from :func:`grid_points`.
    """
    if resolution < 2:
        raise ValueError(f"export resolution must be >= 2, got {resolution}")
    if chunk < 1:
        raise ValueError(f"export chunk must be >= 1, got {chunk}")
    device = torch.device(device) if device is not None else torch.device("cpu")
    axis = grid_points(resolution, bound).to(device)
    n = resolution**3
    out = torch.empty(n, dtype=torch.float32)
    for start in range(0, n, chunk):
        idx = torch.arange(start, min(start + chunk, n), device=device)
        i = idx // (resolution * resolution)
        j = (idx // resolution) % resolution
        k = idx % resolution
        x = torch.stack([axis[i], axis[j], axis[k]], dim=-1)  # (n_chunk, 3)
        out[start : start + idx.numel()] = field.density(x).reshape(-1).float().cpu()
    return out.reshape(resolution, resolution, resolution)


def choose_level(grid: torch.Tensor, threshold: float | None) -> float:
    """The marching-cubes level: `threshold` when given (must be > 0), else
    ``min(DEFAULT_LEVEL, (grid.min() + grid.max()) / 2)`` (rule and reasons in the module docstring)."""
    if threshold is not None:
        if not threshold > 0:
            raise ValueError(f"export.threshold must be > 0 (a density level), got {threshold}")
        return float(threshold)
    return min(DEFAULT_LEVEL, 0.5 * (float(grid.min()) + float(grid.max())))


def marching_cubes(grid: torch.Tensor, level: float, bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Triangles of the surface {density = level} in world coordinates (z up).

    The grid is padded with one layer of zero density (or of level - 1 for a level <= 0) first, so
    matter touching the box is closed off at the box face rather than left open.

    Args:
        grid: (R, R, R) density from :func:`density_grid`.
    Returns:
        vertices (V, 3) float64 world positions, faces (F, 3) int64.
    Raises:
        EmptyMeshError when no grid value exceeds `level`.
    """
    resolution = grid.shape[0]
    lo, hi = float(grid.min()), float(grid.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise ValueError("the density grid holds NaN or inf; the field is broken, nothing to export")
    if not hi > level:
        raise EmptyMeshError(
            f"empty mesh: no density above the threshold {level:.4g} "
            f"(density range {lo:.4g} to {hi:.4g} on a {resolution}^3 grid); lower export.threshold"
        )
    pad = min(0.0, level - 1.0)
    volume = np.pad(grid.numpy().astype(np.float32), 1, mode="constant", constant_values=pad)
    verts, faces, _, _ = measure.marching_cubes(volume, level=level, allow_degenerate=False)
    spacing = 2.0 * bound / (resolution - 1)
    verts = (verts.astype(np.float64) - 1.0) * spacing - bound  # undo the padding, index -> world
    return verts, faces.astype(np.int64)


def level_silhouette(grid: torch.Tensor, level: float, bound: float, min_component: float,
                     views: FieldViews) -> torch.Tensor:
    """(B, 1, H, W) bool: the pixel centres that the surface {grid = level} (floaters dropped as in the
    export) covers from views.cams; nothing where the level leaves no surface."""
    try:
        verts, faces = marching_cubes(grid, level, bound)
    except EmptyMeshError:
        return torch.zeros_like(views.silhouette)
    mesh = drop_floaters(trimesh.Trimesh(vertices=verts, faces=faces, process=True), min_component)
    return render_mesh(mesh, views.cams, views.resolution, views.resolution, gltf_frame=False).mask > 0.5


def silhouette_level(grid: torch.Tensor, bound: float, min_component: float, views: FieldViews,
                     iterations: int = LEVEL_ITERATIONS) -> tuple[float, float]:
    """The level whose surface covers what the field's render shows: (level, IoU of the two silhouettes).

    The target is the field's rendered silhouette, opacity > 0.5 (views.silhouette). Superlevel sets are
    nested, {grid >= b} inside {grid >= a} for b > a, so the surface's silhouette shrinks as the level rises:
    bisection over (grid min, grid max) for the level whose silhouette has the target's pixel count, and
    of the levels tried the one of highest IoU with the target is returned (the count alone could be met by
    a shape that covers other pixels). IoU 0 everywhere (nothing in view) returns (nan, 0).
    """
    want = int(views.silhouette.sum())
    lo, hi = float(grid.min()), float(grid.max())
    best = (math.nan, 0.0)
    for _ in range(iterations):
        level = 0.5 * (lo + hi)
        got = level_silhouette(grid, level, bound, min_component, views)
        iou = views.iou(got)
        if iou > best[1]:
            best = (level, iou)
        lo, hi = (level, hi) if int(got.sum()) > want else (lo, level)
    return best


def drop_floaters(mesh: trimesh.Trimesh, min_component: float) -> trimesh.Trimesh:
    """Keep the connected components with at least ``min_component * (faces of the largest)`` faces."""
    if min_component <= 0:
        return mesh
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh
    largest = max(len(p.faces) for p in parts)
    keep = [p for p in parts if len(p.faces) >= min_component * largest]
    return trimesh.util.concatenate(keep)


def vertex_albedo(field, vertices: np.ndarray, normals: np.ndarray, depth: float = 0.0, chunk: int = 262144,
                  device=None) -> np.ndarray:
    """The colour the field shows at world-space vertices (albedo.surface_albedo: composited along the
    inward normal over `depth`; 0 = the albedo at the vertex) as 8-bit RGBA.

    Args:
        field: ``field(x (N, 3)) -> (sigma (N,), albedo (N, 3) in [0, 1])`` (sRGB).
        vertices, normals: (V, 3) world positions (z up) and outward normals.
    Returns:
        (V, 4) uint8, alpha 255.
    """
    rgb = surface_albedo(field, vertices, normals, depth, chunk, device)
    rgb8 = torch.round(rgb * 255.0).to(torch.uint8).numpy()
    return np.concatenate([rgb8, np.full((len(rgb8), 1), 255, np.uint8)], axis=1)


def blur_density(grid: torch.Tensor, sigma: float, bound: float) -> torch.Tensor:
    """Gaussian low-pass of a density grid (R, R, R) with standard deviation ``sigma`` in world units.

    Separable: one 1-D kernel (radius 3 sigma) along each axis, zero beyond the box (the field's density
    is zero outside its bounding sphere). The kernel sums to 1, so a constant region keeps its value and
    the grid's total density is kept up to what leaves the box. sigma = 0 returns the grid unchanged.
    """
    if sigma < 0:
        raise ValueError(f"export.density_blur must be >= 0, got {sigma}")
    R = grid.shape[0]
    s = sigma * (R - 1) / (2.0 * bound)  # in grid cells
    if s == 0:
        return grid
    r = max(1, int(math.ceil(3.0 * s)))
    x = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (x / s) ** 2)
    k = (k / k.sum()).to(grid.dtype)
    out = grid[None, None]
    for dim in range(3):
        shape = [1, 1, 1, 1, 1]
        shape[2 + dim] = k.numel()
        pad = [0, 0, 0, 0, 0, 0]
        pad[2 * (2 - dim)] = pad[2 * (2 - dim) + 1] = r  # F.pad lists the last dimension first
        out = torch.nn.functional.conv3d(torch.nn.functional.pad(out, pad), k.view(shape))
    return out[0, 0]


def extract_mesh(field, cfg: ExportConfig, bound: float, device=None,
                 views: Optional[FieldViews] = None) -> trimesh.Trimesh:
    """The field's surface as a coloured triangle mesh in glTF's Y-up frame.

    Steps: density grid (cfg.resolution, or 256 on CUDA / 128 on CPU when 0) -> optional Gaussian blur
    (cfg.density_blur, world units: evens out the grain of SDS densities) -> marching cubes at the level
    of cfg.level: "threshold" (or no views, or nothing opaque in them) is :func:`choose_level`'s;
    "silhouette" is the level fitted to the field's render (:func:`silhouette_level`, needs `views`) when
    its silhouette IoU beats the threshold's by more than LEVEL_TOLERANCE -> components with fewer than
    cfg.min_component x the largest one's faces dropped -> cfg.smooth_iterations of Taubin
    smoothing (shrinks far less than plain Laplacian) -> quadric decimation to cfg.target_faces
    (needs the fast_simplification package) -> consistent outward winding -> vertex colours from
    the field's albedo -> world (z up) to Y up.

    Args:
        field: forward(x (N, 3)) -> (sigma (N,), albedo (N, 3)) and density(x) -> (N,), on `device`.
        bound: the scene box is [-bound, bound]^3 (FieldConfig.bound).
        device: where the field lives (default CPU).
        views: the field's render (raster.field_views) that the "silhouette" level is fitted to.
    Returns:
        trimesh.Trimesh with vertex colours (V, 4) uint8; ``mesh.metadata`` holds ``level`` (the level
        used), ``level_rule`` ("silhouette" or "threshold") and ``level_iou`` (that level's silhouette IoU
        with the render, before decimation; None without views).
    Raises:
        EmptyMeshError when nothing exceeds the level; ValueError for bad settings.
    """
    device = torch.device(device) if device is not None else torch.device("cpu")  # cfg: validated by config.validate
    resolution = cfg.resolution or default_resolution(device)

    grid = blur_density(density_grid(field, resolution, bound, cfg.chunk, device), cfg.density_blur, bound)
    level, rule, level_iou = choose_level(grid, cfg.threshold), "threshold", None
    if cfg.level == "silhouette" and views is not None and bool(views.silhouette.any()):
        fitted, fitted_iou = silhouette_level(grid, bound, cfg.min_component, views)
        level_iou = views.iou(level_silhouette(grid, level, bound, cfg.min_component, views))
        if fitted_iou > level_iou + LEVEL_TOLERANCE:
            level, rule, level_iou = fitted, "silhouette", fitted_iou
        level_iou = round(level_iou, 4)
    verts, faces = marching_cubes(grid, level, bound)

    mesh = trimesh.Trimesh(vertices=verts, faces=faces, process=True)
    mesh = drop_floaters(mesh, cfg.min_component)
    if cfg.smooth_iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, iterations=cfg.smooth_iterations)  # in place
    if cfg.target_faces > 0 and len(mesh.faces) > cfg.target_faces:
        try:
            mesh = mesh.simplify_quadric_decimation(face_count=cfg.target_faces)
        except ImportError as exc:
            raise ValueError(
                f"export.target_faces={cfg.target_faces} needs the fast_simplification package "
                f"(pip install fast_simplification), or set export.target_faces=0 ({exc})"
            ) from None
    trimesh.repair.fix_normals(mesh, multibody=True)

    colours = vertex_albedo(field, mesh.vertices, mesh.vertex_normals, cfg.colour_depth, cfg.chunk, device)
    out = trimesh.Trimesh(
        vertices=mesh.vertices @ WORLD_TO_GLTF.T,
        faces=mesh.faces,
        vertex_colors=colours,
        process=False,
    )
    out.metadata.update(level=level, level_rule=rule, level_iou=level_iou)
    return out


def _unit_normals(mesh: trimesh.Trimesh) -> np.ndarray:
    """(V, 3) float64 unit vertex normals; a vertex without a usable normal gets +Y (glTF requires
    unit NORMAL vectors)."""
    n = np.asarray(mesh.vertex_normals, dtype=np.float64)
    length = np.linalg.norm(n, axis=1, keepdims=True)
    bad = ~np.isfinite(length[:, 0]) | (length[:, 0] < 1e-12)
    n = n / np.where(bad[:, None], 1.0, length)
    n[bad] = (0.0, 1.0, 0.0)
    return n


def save_mesh(mesh: trimesh.Trimesh, out_stem: str | Path, formats: Sequence[str] = ("glb",),
              textured: Optional[trimesh.Trimesh] = None) -> list[Path]:
    """Write ``<out_stem>.<fmt>`` for each format in glb / obj / ply, each file atomically.

    Args:
        mesh: the vertex-coloured surface from :func:`extract_mesh` (sRGB 8-bit vertex colours).
        textured: its textured copy from :func:`dreamfield.export.texture.texture_mesh`, or None.
            When given, GLB embeds the texture and OBJ is written as ``<stem>.obj`` + ``<stem>.mtl``
            + ``<stem>_albedo.png``; PLY always takes the vertex colours of `mesh`.
    Without `textured`: GLB has COLOR_0 as linear floats, OBJ ``v x y z r g b`` (sRGB), PLY
    red/green/blue/alpha uchar (sRGB).

    Returns the paths written, in the order of `formats` (an OBJ's MTL and PNG after it).
    """
    for fmt in formats:
        if fmt not in EXPORT_FORMATS:
            raise ValueError(f"export format {fmt!r} is not one of {', '.join(EXPORT_FORMATS)}")
    stem = Path(out_stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = stem.with_name(f"{stem.name}.{fmt}")
        if fmt == "ply":
            paths.append(write_bytes(path, mesh.export(file_type="ply")))
        elif textured is not None:
            uv = np.asarray(textured.visual.uv, dtype=np.float64)
            png = png_bytes(np.asarray(textured.visual.material.baseColorTexture.convert("RGB")))
            verts, normals, faces = np.asarray(textured.vertices), _unit_normals(textured), np.asarray(textured.faces)
            if fmt == "glb":
                paths.append(write_bytes(path, glb_bytes(verts, normals, faces, uv=uv, texture_png=png)))
            else:
                png_path, mtl_path = stem.with_name(f"{stem.name}_albedo.png"), stem.with_name(f"{stem.name}.mtl")
                obj, mtl = obj_files(verts, normals, faces, uv, png_path.name, mtl_path.name)
                # texture and material first, so a complete OBJ never points at missing files
                write_bytes(png_path, png)
                write_text(mtl_path, mtl)
                paths += [write_text(path, obj), mtl_path, png_path]
        elif fmt == "glb":
            colours = np.asarray(mesh.visual.vertex_colors)
            paths.append(write_bytes(path, glb_bytes(np.asarray(mesh.vertices), _unit_normals(mesh),
                                                     np.asarray(mesh.faces), colours=colours)))
        else:
            paths.append(write_text(path, trimesh.exchange.obj.export_obj(mesh, include_normals=False,
                                                                            include_color=True)))
    return paths


def export_asset(field, cfg: ExportConfig, bound: float, out_stem: str | Path, formats: Optional[Sequence[str]] = None,
                 device=None, render_cfg: Optional[RenderConfig] = None,
                 camera_cfg: Optional[CameraConfig] = None, extract: Optional[Callable[..., trimesh.Trimesh]] = None) -> dict:
    """The whole mesh export of a field: render it, extract, texture (cfg.colour), write, compare with the field.

    extract: ``extract(field, cfg, bound, device, views) -> mesh`` in glTF's frame, as :func:`extract_mesh`
    (the default) is; e.g. sdf_mesh.extract_sdf_mesh for an SDF field.

    The field is rendered once (raster.field_views: cfg.compare_views views on an orbit at
    cfg.video_elevation, camera_cfg.preview_distance and camera_cfg.preview_fov, at cfg.compare_resolution);
    the "silhouette" level is fitted to that render and the mesh compared with it (raster.mesh_vs_field).
    Both are skipped (the level is export.threshold's) when render_cfg or camera_cfg is None or
    cfg.compare_views == 0.

    Returns dict (JSON-serialisable): paths, faces, vertices, level, level_rule, level_iou, colour,
    texture_size (None for vertex colours), mesh_vs_field (raster.mesh_vs_field's dict or None),
    seconds {views, mesh, texture, write, compare, total}.
    Raises:
        EmptyMeshError when nothing exceeds the level; ValueError for bad settings.
    """
    from dreamfield.export.texture import texture_mesh
    from dreamfield.scene.cameras import orbit_cameras

    formats = list(formats if formats is not None else cfg.formats)
    extract = extract or extract_mesh
    seconds = {}
    t0 = t = time.perf_counter()
    views = None
    if render_cfg is not None and camera_cfg is not None and cfg.compare_views > 0:
        cams = orbit_cameras(cfg.compare_views, cfg.video_elevation, camera_cfg.preview_distance, camera_cfg.preview_fov)
        views = field_views(field, render_cfg, cams, cfg.compare_resolution, bound)
    seconds["views"], t = time.perf_counter() - t, time.perf_counter()
    mesh = extract(field, cfg, bound, device, views)
    seconds["mesh"], t = time.perf_counter() - t, time.perf_counter()
    textured = None
    if cfg.colour == "texture" and ("glb" in formats or "obj" in formats):  # PLY carries vertex colours only
        textured = texture_mesh(field, mesh, np.asarray(mesh.vertices) @ WORLD_TO_GLTF, cfg.texture_size, cfg.chunk,
                                device, np.asarray(mesh.vertex_normals) @ WORLD_TO_GLTF, cfg.colour_depth)
    seconds["texture"], t = time.perf_counter() - t, time.perf_counter()
    paths = save_mesh(mesh, out_stem, formats, textured)
    seconds["write"], t = time.perf_counter() - t, time.perf_counter()
    figures = None
    if views is not None:
        figures = mesh_vs_field(field, textured if textured is not None else mesh, render_cfg, views.cams,
                                cfg.compare_resolution, views=views)
    seconds["compare"] = time.perf_counter() - t
    seconds["total"] = time.perf_counter() - t0
    return {
        "paths": [str(p) for p in paths],
        "faces": int(len(mesh.faces)),
        "vertices": int(len((textured if textured is not None else mesh).vertices)),
        "level": None if mesh.metadata.get("level") is None else float(mesh.metadata["level"]),
        "level_rule": mesh.metadata.get("level_rule"),
        "level_iou": mesh.metadata.get("level_iou"),
        "colour": "texture" if textured is not None else "vertex",
        "texture_size": cfg.texture_size if textured is not None else None,
        "mesh_vs_field": figures,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }
