"""UV unwrap (xatlas) and texture baking: the field's albedo on the exported mesh as an sRGB image.

    unwrap(vertices, faces, size)    xatlas charts packed into a size x size atlas; vertices are split
                                     along chart seams (vmapping says which input vertex each came from)
      -> rasterise the uv triangles   per texel centre: the face it lies in and its barycentrics
      -> 3D point = sum_k b_k p_k     on the triangle (uv is affine per triangle, so the barycentrics
                                     of the texel in uv space are those of the 3D point)
      -> colour at the point          albedo.py: the field composited along the interpolated normal
                                     (export.colour_depth), sRGB in [0, 1] -> 8-bit
      -> fill the rest                every texel outside the charts takes its nearest chart texel's
                                     colour (Euclidean distance transform), so bilinear filtering and
                                     every mip level read chart colours only, never a background

xatlas (Young, https://github.com/jpcy/xatlas; Python binding "xatlas" on PyPI) segments the
mesh into charts of low distortion and packs them; `padding` texels are kept free around each
chart so that bilinear lookups near one chart's border do not reach into its neighbour.
threestudio ships its meshes the same way (xatlas + a baked diffuse map).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import trimesh
from PIL import Image
from scipy import ndimage

from dreamfield.export.albedo import surface_albedo
from dreamfield.export.raster import rasterize

CHART_PADDING = 4  # texels between charts in xatlas' own atlas size (which only approximates `size`)


@dataclass(frozen=True)
class Unwrapped:
    """vmapping: (V', ) index of the input vertex each output vertex copies; faces: (F, 3) into
    the output vertices (same face order as the input); uv: (V', 2) in [0, 1], v up."""

    vmapping: np.ndarray
    faces: np.ndarray
    uv: np.ndarray


def unwrap(vertices: np.ndarray, faces: np.ndarray, size: int) -> Unwrapped:
    """Charts and uv coordinates for a triangle mesh (V, 3), (F, 3), aimed at a size x size texture.

    xatlas estimates its texel density to fill roughly size x size; its uv are normalised to [0, 1]
    by its actual atlas size, so the charts fill the square texture whatever that size came out as."""
    try:
        import xatlas
    except ImportError:
        raise ValueError("export.colour='texture' needs the xatlas package (pip install xatlas), "
                         "or set export.colour=vertex") from None
    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, np.float32), np.ascontiguousarray(faces, np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = CHART_PADDING
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    vmapping, new_faces, uv = atlas[0]
    return Unwrapped(np.asarray(vmapping, np.int64), np.asarray(new_faces, np.int64), np.asarray(uv, np.float64))


@torch.no_grad()
def bake_albedo(field, points: np.ndarray, faces: np.ndarray, uv: np.ndarray, size: int,
                chunk: int = 262144, device=None, normals: Optional[np.ndarray] = None, depth: float = 0.0) -> np.ndarray:
    """The colour the field shows on the surface baked into a size x size sRGB texture.

    Args:
        field: ``field(x (N, 3)) -> (sigma (N,), albedo (N, 3) sRGB in [0, 1])`` on `device`.
        points: (V, 3) vertex positions in the field's frame (world, z up).
        faces: (F, 3); uv: (V, 2) in [0, 1] with v up (texel row r holds v = 1 - (r + 0.5) / size).
        normals: (V, 3) outward vertex normals in that frame, interpolated per texel; with depth > 0 the
            texel's colour is albedo.surface_albedo's (composited along the normal); else (or None) the
            albedo at the texel's point.
    Returns:
        (size, size, 3) uint8.
    """
    uv = torch.as_tensor(uv, dtype=torch.float64)
    xy = torch.stack([uv[:, 0] * size, (1.0 - uv[:, 1]) * size], dim=-1)
    faces_t = torch.as_tensor(np.asarray(faces), dtype=torch.int64)
    frag = rasterize(xy, faces_t, size, size)
    covered = frag.face >= 0  # (S, S)
    if not covered.any():
        raise ValueError("texture bake: no texel centre falls inside a chart; raise export.texture_size")
    corner_ids = faces_t[frag.face[covered]]  # (N, 3)
    bary = frag.bary[covered].double()[..., None]  # (N, 3, 1)
    x = (bary * torch.as_tensor(np.asarray(points), dtype=torch.float64)[corner_ids]).sum(1).float()  # (N, 3)
    if normals is None or depth <= 0:
        n, depth = torch.zeros_like(x), 0.0
    else:
        n = (bary * torch.as_tensor(np.asarray(normals), dtype=torch.float64)[corner_ids]).sum(1).float()
    rgb = surface_albedo(field, x, n, depth, chunk, device)
    image = np.zeros((size, size, 3), np.uint8)
    image[covered.numpy()] = torch.round(rgb.clamp(0.0, 1.0) * 255.0).to(torch.uint8).numpy()
    # nearest chart texel for every texel outside the charts
    idx = ndimage.distance_transform_edt(~covered.numpy(), return_distances=False, return_indices=True)
    return image[idx[0], idx[1]]


def texture_mesh(field, mesh: trimesh.Trimesh, world_vertices: np.ndarray, size: int,
                 chunk: int = 262144, device=None, world_normals: Optional[np.ndarray] = None,
                 depth: float = 0.0) -> trimesh.Trimesh:
    """A copy of `mesh` with uv charts and the field's colour baked into a base-colour texture.

    Args:
        mesh: the exported surface (any frame; glTF Y up for ours), F faces; its vertex normals are
            carried over, so shading stays smooth across chart seams.
        world_vertices: (V, 3) the same vertices in the field's frame, where the albedo is read.
        size: texture side in texels (>= 16).
        world_normals, depth: the vertices' outward normals in the field's frame and the depth of
            :func:`bake_albedo`'s composite (None / 0: the albedo at the surface point).
    Returns:
        trimesh.Trimesh with TextureVisuals (uv, PBRMaterial: baseColorTexture, metallic 0,
        roughness 1), vertices split along seams, the same F faces in the same order; metadata
        copied, plus ``metadata["texture_size"]``.
    """
    if size < 16:
        raise ValueError(f"export.texture_size must be >= 16, got {size}")
    normals = np.asarray(mesh.vertex_normals, dtype=np.float64)
    un = unwrap(np.asarray(world_vertices), np.asarray(mesh.faces), size)
    world_n = None if world_normals is None else np.asarray(world_normals)[un.vmapping]
    image = bake_albedo(field, np.asarray(world_vertices)[un.vmapping], un.faces, un.uv, size, chunk, device,
                        world_n, depth)
    material = trimesh.visual.material.PBRMaterial(
        name="albedo", baseColorTexture=Image.fromarray(image, "RGB"), metallicFactor=0.0, roughnessFactor=1.0
    )
    out = trimesh.Trimesh(
        vertices=np.asarray(mesh.vertices)[un.vmapping],
        faces=un.faces,
        vertex_normals=normals[un.vmapping],
        visual=trimesh.visual.TextureVisuals(uv=un.uv, material=material),
        process=False,
    )
    out.metadata.update(mesh.metadata)
    out.metadata["texture_size"] = size
    return out
