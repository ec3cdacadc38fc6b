"""The contract's measures (TOY_DOMAIN.md "Measures") on an exported mesh read back with trimesh.

- shape: the primitive with the highest volumetric IoU against the mesh, best over rotations about z;
- IoU: that volumetric IoU against the prompted primitive;
- colour: the area-weighted mean vertex colour of the visible surface, nearest table colour.

Volumes are compared on a grid of ``res``^3 cell centres in the box [-1, 1]^3 (world, z up). The mesh's
occupancy on that grid comes from ray parity: rays along each of the three axes through every column of
cells count surface crossings, a cell is inside when the count below it is odd, and the three axes vote
(inside when at least two say so). For a watertight mesh all three agree and this equals trimesh's
``contains``; for a mesh with small holes (marching cubes clipped by the box, a torn fog shell) a hole
spoils at most the columns through it along one axis, and the vote keeps the other two. It needs no
``rtree``/embree and runs in well under a second for 64^3 and ~100k faces.

"Visible surface": a face counts when a probe 1.5 cells out along its normal lies outside the mesh's
solid (the occupancy with its interior cavities filled); faces inside cavities or on inner shells of
fog don't. Colours are sRGB: the texture at each face's centroid for a textured mesh, else the vertex
colours (load_mesh turns a GLB's linear COLOR_0 back into sRGB).
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import trimesh
from scipy import ndimage

from dreamfield.toy import shapes as shp
from dreamfield.toy.domain import COLOURS, SHAPES, nearest_colour

# Shapes with 4-fold symmetry about z are compared over rotations 0..85 degrees in 5-degree steps;
# the others are solids of revolution about z, so one angle suffices.
ROTATION_STEP_DEG = 5.0
_FOURFOLD = ("cube", "pyramid")


def gltf_to_world(vertices: np.ndarray) -> np.ndarray:
    """glTF Y-up (x_out = y_w, y_out = z_w, z_out = x_w) -> world z-up. (V, 3) -> (V, 3)."""
    v = np.asarray(vertices, dtype=np.float64)
    return v[:, [2, 0, 1]]


def world_to_gltf(vertices: np.ndarray) -> np.ndarray:
    """World z-up -> glTF Y-up. (V, 3) -> (V, 3)."""
    v = np.asarray(vertices, dtype=np.float64)
    return v[:, [1, 2, 0]]


def load_mesh(path: str | Path) -> trimesh.Trimesh:
    """Read an exported mesh (GLB/OBJ/PLY) as one Trimesh, scene nodes' transforms applied.

    Colours come back as the exporter's sRGB: a texture is kept as it is (sRGB), and a glTF file's
    COLOR_0, linear by the glTF spec (what dreamfield writes), is converted to sRGB 8-bit; trimesh's
    own GLBs, which hold sRGB bytes, are left alone (gltf.glb_colour_is_linear)."""
    from dreamfield.export.gltf import load_gltf_mesh

    if Path(path).suffix.lower() in (".glb", ".gltf"):
        return load_gltf_mesh(path)
    loaded = trimesh.load(str(path), force="mesh", process=False)
    if not isinstance(loaded, trimesh.Trimesh):
        raise ValueError(f"{path}: could not read a triangle mesh (got {type(loaded).__name__})")
    return loaded


def grid_centres(res: int) -> np.ndarray:
    """Cell centres along one axis of the box [-1, 1]: (res,)."""
    return -1.0 + (np.arange(res) + 0.5) * (2.0 / res)


def _parity_along(tri: np.ndarray, axis: int, res: int) -> np.ndarray:
    """Inside-by-parity for rays along ``axis``. tri (F, 3, 3) world -> bool (res, res, res) indexed [x, y, z]."""
    u_ax, v_ax = [a for a in range(3) if a != axis]
    cell = 2.0 / res
    # Tiny irrational offsets keep the rays off mesh edges and vertices that sit on grid-aligned values.
    off_u, off_v = 1e-4 * math.sqrt(2.0) * cell, 1e-4 * math.sqrt(3.0) * cell
    pu, pv, pw = tri[:, :, u_ax], tri[:, :, v_ax], tri[:, :, axis]  # (F, 3)

    # Candidate columns per triangle from its bounding box, in continuous column coordinates.
    def col_range(p: np.ndarray, off: float) -> tuple[np.ndarray, np.ndarray]:
        lo = np.ceil((p.min(1) - off + 1.0) / cell - 0.5).astype(np.int64)
        hi = np.floor((p.max(1) - off + 1.0) / cell - 0.5).astype(np.int64)
        return np.clip(lo, 0, res), np.clip(hi, -1, res - 1)

    ilo, ihi = col_range(pu, off_u)
    jlo, jhi = col_range(pv, off_v)
    ni, nj = np.maximum(ihi - ilo + 1, 0), np.maximum(jhi - jlo + 1, 0)
    counts = ni * nj
    total = int(counts.sum())
    parity = np.zeros((res, res, res + 1), dtype=np.int32)  # [i, j, cell index along the axis]
    if total > 0:
        f = np.repeat(np.arange(len(tri)), counts)
        k = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)  # index within the triangle's box
        i = ilo[f] + k // nj[f]
        j = jlo[f] + k % nj[f]
        qu = -1.0 + (i + 0.5) * cell + off_u
        qv = -1.0 + (j + 0.5) * cell + off_v
        a_u, a_v = pu[f, 0], pv[f, 0]
        e1u, e1v = pu[f, 1] - a_u, pv[f, 1] - a_v
        e2u, e2v = pu[f, 2] - a_u, pv[f, 2] - a_v
        det = e1u * e2v - e1v * e2u
        du, dv = qu - a_u, qv - a_v
        with np.errstate(divide="ignore", invalid="ignore"):  # degenerate triangles (det 0) give nan: rejected
            b1 = (du * e2v - dv * e2u) / det
            b2 = (e1u * dv - e1v * du) / det
            inside = (det != 0) & (b1 >= 0) & (b2 >= 0) & (b1 + b2 <= 1)
        f, i, j, b1, b2 = f[inside], i[inside], j[inside], b1[inside], b2[inside]
        w = pw[f, 0] + b1 * (pw[f, 1] - pw[f, 0]) + b2 * (pw[f, 2] - pw[f, 0])  # crossing along the axis
        first_above = np.searchsorted(grid_centres(res), w, side="right")  # first cell whose centre is past it
        np.add.at(parity, (i, j, first_above), 1)
    inside_cells = (np.cumsum(parity, axis=2)[:, :, :res] % 2).astype(bool)  # [u, v, axis]
    # Back to [x, y, z] order.
    order = [u_ax, v_ax, axis]
    return np.transpose(inside_cells, np.argsort(order))


def mesh_occupancy(mesh: trimesh.Trimesh, res: int = 64, world: bool = False) -> np.ndarray:
    """Occupancy of a mesh on the res^3 grid of cell centres in [-1, 1]^3, indexed [x, y, z] (world z up).

    mesh: glTF Y-up as exported (``world=False``) or already in world coordinates (``world=True``).
    Majority vote of ray parity along x, y and z (see module doc). -> bool (res, res, res).
    """
    if len(mesh.faces) == 0:
        return np.zeros((res, res, res), dtype=bool)
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    verts = verts if world else gltf_to_world(verts)
    tri = verts[np.asarray(mesh.faces)]  # (F, 3, 3)
    votes = sum(_parity_along(tri, a, res).astype(np.int8) for a in range(3))
    return votes >= 2


def grid_points(res: int) -> torch.Tensor:
    """The res^3 cell centres of [-1, 1]^3 as points (res^3, 3), float64, in the grids' [x, y, z] order."""
    c = torch.from_numpy(grid_centres(res))
    return torch.stack(torch.meshgrid(c, c, c, indexing="ij"), dim=-1).reshape(-1, 3)  # (res^3, 3), [x, y, z]


@functools.lru_cache(maxsize=64)
def primitive_occupancy(shape: str, res: int = 64, angle_deg: float = 0.0) -> np.ndarray:
    """The primitive rotated by ``angle_deg`` about z, on the same grid. -> bool (res, res, res).

    Cached (the evaluation scores many meshes against the same 46 grids); treat the result as read-only.
    """
    p = grid_points(res)
    a = math.radians(angle_deg)
    ca, sa = math.cos(a), math.sin(a)
    # Rotating the shape by +a is testing the points rotated by -a.
    x, y = ca * p[:, 0] + sa * p[:, 1], -sa * p[:, 0] + ca * p[:, 1]
    q = torch.stack([x, y, p[:, 2]], dim=-1)
    occ = shp.occupancy(shape, q).numpy().reshape(res, res, res)
    occ.flags.writeable = False
    return occ


def best_iou(occ: np.ndarray, shape: str) -> tuple[float, float]:
    """Volumetric IoU of a grid occupancy with ``shape``, best over rotations about z -> (iou, angle_deg)."""
    res = occ.shape[0]
    angles = np.arange(0.0, 90.0, ROTATION_STEP_DEG) if shape in _FOURFOLD else np.array([0.0])
    best = (0.0, 0.0)
    for ang in angles:
        prim = primitive_occupancy(shape, res, float(ang))
        union = np.logical_or(occ, prim).sum()
        iou = float(np.logical_and(occ, prim).sum() / union) if union > 0 else 0.0
        if iou > best[0]:
            best = (iou, float(ang))
    return best


def visible_surface_colour(mesh: trimesh.Trimesh, occ: np.ndarray, world: bool = False) -> Optional[np.ndarray]:
    """Area-weighted mean surface colour (sRGB, (3,) in [0, 1]) over the faces of the visible surface,
    or None when the mesh carries no colours. occ: the mesh's grid occupancy (res, res, res) [x, y, z].

    A face's colour: a textured mesh's texture sampled (bilinear) at the uv of the face's centroid;
    otherwise the mean of its vertex colours, or its face colour."""
    from dreamfield.export.raster import sample_texture, texture_of

    if len(mesh.faces) == 0:
        return None
    visual = mesh.visual
    textured = texture_of(mesh)
    if textured is not None:
        uv, image = textured
        face_rgb = sample_texture(image, uv[np.asarray(mesh.faces)].mean(axis=1)).double().numpy()  # (F, 3)
    else:
        if visual.kind == "texture":
            visual = visual.to_color()
        if visual.kind == "face":
            face_rgb = np.asarray(visual.face_colors, dtype=np.float64)[:, :3] / 255.0
        elif visual.kind == "vertex":
            vc = np.asarray(visual.vertex_colors, dtype=np.float64)[:, :3] / 255.0
            face_rgb = vc[np.asarray(mesh.faces)].mean(axis=1)  # (F, 3)
        else:
            return None
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    verts = verts if world else gltf_to_world(verts)
    tri = verts[np.asarray(mesh.faces)]
    cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    area2 = np.linalg.norm(cross, axis=1)  # twice the area
    normal = cross / np.maximum(area2, 1e-20)[:, None]
    res = occ.shape[0]
    cell = 2.0 / res
    solid = ndimage.binary_fill_holes(occ)
    probe = tri.mean(axis=1) + 1.5 * cell * normal
    idx = np.floor((probe + 1.0) / cell).astype(np.int64)
    in_box = np.all((idx >= 0) & (idx < res), axis=1)
    idx = np.clip(idx, 0, res - 1)
    outside = ~in_box | ~solid[idx[:, 0], idx[:, 1], idx[:, 2]]
    weights = area2 * outside
    if weights.sum() <= 0:  # nothing classified visible (degenerate mesh): fall back to every face
        weights = area2
    if weights.sum() <= 0:
        return None
    return (face_rgb * weights[:, None]).sum(0) / weights.sum()


def classify_occupancy(occ: np.ndarray) -> tuple[Optional[str], dict, dict]:
    """The shape measure on an occupancy grid: (predicted shape, {shape: best IoU}, {shape: best angle}).

    The prediction is the primitive of highest IoU (best over z-rotations); None for an empty grid.
    """
    ious, angles = {}, {}
    for s in SHAPES:
        ious[s], angles[s] = best_iou(occ, s)
    return (max(ious, key=ious.get) if occ.any() else None), ious, angles


def score_mesh(mesh: trimesh.Trimesh | trimesh.Scene, shape: str, colour: str, res: int = 64) -> dict:
    """Score an exported mesh (glTF Y-up, vertex colours) against the prompted (shape, colour).

    Returns dict(shape_pred, colour_pred, iou, shape_ok, colour_ok, mean_rgb, ious {shape: best IoU},
    angle_deg (best rotation for the prompted shape), volume (world units^3), faces).
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; allowed: {', '.join(COLOURS)}")
    if isinstance(mesh, trimesh.Scene):
        mesh = mesh.to_geometry() if hasattr(mesh, "to_geometry") else mesh.dump(concatenate=True)
    occ = mesh_occupancy(mesh, res)
    shape_pred, ious, angles = classify_occupancy(occ)
    rgb = visible_surface_colour(mesh, occ)
    colour_pred = nearest_colour(rgb) if rgb is not None else None
    return dict(
        shape_pred=shape_pred,
        colour_pred=colour_pred,
        iou=ious[shape],
        shape_ok=shape_pred == shape,
        colour_ok=colour_pred == colour,
        mean_rgb=None if rgb is None else [float(v) for v in rgb],
        ious=ious,
        angle_deg=angles[shape],
        volume=float(occ.sum() * (2.0 / res) ** 3),
        faces=int(len(mesh.faces)),
    )


def reference_mesh(shape: str, rgb: Optional[tuple[float, float, float]] = None, res: int = 96) -> trimesh.Trimesh:
    """Ground-truth mesh of a primitive as the exporter would write it: marching cubes of the sdf on a
    res^3 grid over [-1, 1]^3, glTF Y-up, outward winding, optional uniform vertex colour (sRGB in [0, 1])."""
    from skimage import measure

    c = np.linspace(-1.0, 1.0, res)
    pts = torch.from_numpy(np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3))
    d = shp.sdf(shape, pts).numpy().reshape(res, res, res)
    verts, faces, _, _ = measure.marching_cubes(d, 0.0, spacing=(2.0 / (res - 1),) * 3)
    # With the field growing outward (sdf), skimage's default winding is outward (positive volume).
    mesh = trimesh.Trimesh(world_to_gltf(verts - 1.0), faces, process=False)
    if rgb is not None:
        rgba = np.array([*rgb, 1.0]) * 255.0
        mesh.visual.vertex_colors = np.tile(np.round(rgba).astype(np.uint8), (len(mesh.vertices), 1))
    return mesh
