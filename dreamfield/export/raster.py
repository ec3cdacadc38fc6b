"""A small triangle rasteriser (z-buffer, perspective cameras) and the mesh-vs-field comparison.

Used two ways: to bake textures (triangles drawn in uv space, no depth) and to render an exported
mesh from the same cameras as the field, so every export can say how well the mesh matches the
field it came from (silhouette IoU, colour PSNR).

Pixel convention: the renderer's (dreamfield.scene.cameras.get_rays). Pixel (i, j), row i from the
top and column j from the left, is sampled at its centre, continuous image coordinates
(x, y) = (j + 0.5, i + 0.5). A camera-frame point (X, Y, Z), Z < 0 in front (OpenGL), lands at

    x = (X / -Z / (tan(fov_y / 2) W / H) + 1) W / 2,     y = (1 - Y / -Z / tan(fov_y / 2)) H / 2

which is the inverse of get_rays' pixel -> direction map. Coverage: a pixel belongs to a triangle
when its centre lies inside or on an edge (edge functions, Pineda 1988, "A parallel algorithm for
polygon rasterization"); sharing edges inclusively leaves no cracks, and the z-buffer settles the
pixels two triangles both claim. Depth: 1 / -Z is affine in screen space, so it is interpolated
with the screen-space barycentrics and the largest wins; attributes are interpolated
perspective-correctly, b_k' = (b_k / Z_k) / sum_l (b_l / Z_l) (Heckbert & Moreton 1991,
"Interpolation for polygon texture mapping and shading").
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import trimesh

from dreamfield.config import RenderConfig
from dreamfield.export.gltf import WORLD_TO_GLTF, linear_to_srgb, srgb_to_linear
from dreamfield.scene.background import ConstantBackground
from dreamfield.scene.cameras import Cameras
from dreamfield.scene.render import render

Tensor = torch.Tensor
NEAR = 1e-3  # triangles with a vertex closer than this to the camera plane are dropped (none in an orbit)
_SRGB8_TO_LINEAR = srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)  # lookup table for 8-bit images


@dataclass(frozen=True)
class Fragments:
    """The visible triangle per pixel.

    face: (H, W) int64 face index, -1 where no triangle covers the pixel centre.
    bary: (H, W, 3) barycentrics of the pixel centre in that face (screen space; zero where empty).
    inv_depth: (H, W) 1 / distance along the view axis; 0 where empty.
    """

    face: Tensor
    bary: Tensor
    inv_depth: Tensor


def rasterize(xy: Tensor, faces: Tensor, H: int, W: int, inv_depth: Optional[Tensor] = None,
              budget: int = 1 << 21) -> Fragments:
    """Draw triangles given in continuous image coordinates.

    Args:
        xy: (V, 2) vertex positions (x to the right, y down, pixel centres at k + 0.5).
        faces: (F, 3) int64.
        inv_depth: (V,) 1 / view depth per vertex for the z-buffer (larger = nearer); None draws
            without depth (for non-overlapping uv charts) and reports inv_depth 1 where covered.
        budget: candidate (pixel, face) pairs tested at once; bounds the memory, not the result.
    Returns:
        :class:`Fragments`.
    """
    device = xy.device
    xy = xy.double()
    iz = torch.ones(xy.shape[0], dtype=torch.float64, device=device) if inv_depth is None else inv_depth.double()
    faces = faces.long()
    tri = xy[faces]  # (F, 3, 2)
    # pixel-centre range of each triangle's bounding box: columns j with j + 0.5 in [min x, max x]
    lo = torch.ceil(tri.amin(dim=1) - 0.5).clamp(min=0)
    hi = torch.floor(tri.amax(dim=1) - 0.5)
    hi = torch.minimum(hi, torch.tensor([W - 1, H - 1], dtype=hi.dtype, device=device))
    size = (hi - lo + 1).clamp(min=0).long()  # (F, 2)
    count = size[:, 0] * size[:, 1]
    # barycentric k is affine in the pixel centre p: b_k = A_k p_x + B_k p_y + C_k, the edge function of
    # the edge opposite vertex k divided by twice the signed area (so either winding gives b >= 0 inside)
    a, b, c = tri[:, 0], tri[:, 1], tri[:, 2]
    area = (b[:, 0] - a[:, 0]) * (c[:, 1] - a[:, 1]) - (b[:, 1] - a[:, 1]) * (c[:, 0] - a[:, 0])
    keep = ((count > 0) & (area.abs() > 1e-12)).nonzero().squeeze(1)
    coef = []
    for p, q in ((b, c), (c, a), (a, b)):  # edge (p, q) opposite the third vertex
        coef.append(torch.stack([p[:, 1] - q[:, 1], q[:, 0] - p[:, 0], p[:, 0] * q[:, 1] - p[:, 1] * q[:, 0]], -1))
    coef = (torch.stack(coef, 1) / torch.where(area.abs() > 1e-12, area, torch.ones_like(area))[:, None, None])
    coef = torch.cat([coef, iz[faces][:, :, None]], -1).float()  # (F, 3, 4): A, B, C, 1/depth per vertex
    lo = lo.long()

    best = torch.full((H * W,), -torch.inf, device=device)
    face_out = torch.full((H * W,), -1, dtype=torch.int64, device=device)
    bary_out = torch.zeros(H * W, 3, device=device)
    csum = torch.cumsum(count[keep], 0)
    start = 0
    while start < keep.numel():
        base = int(csum[start - 1]) if start > 0 else 0
        stop = max(start + 1, int(torch.searchsorted(csum, base + budget, right=True)))
        f = keep[start:stop]
        n = count[f]
        rep = torch.repeat_interleave(f, n)  # (N,) face of each candidate
        local = torch.arange(int(n.sum()), device=device) - torch.repeat_interleave(torch.cumsum(n, 0) - n, n)
        nx = size[rep, 0]
        px = lo[rep, 0] + local % nx
        py = lo[rep, 1] + local // nx
        k = coef[rep]  # (N, 3, 4)
        bc = k[..., 0] * (px[:, None] + 0.5) + k[..., 1] * (py[:, None] + 0.5) + k[..., 2]  # (N, 3)
        inside = (bc >= -1e-6).all(dim=-1).nonzero().squeeze(1)
        rep, bc, k = rep[inside], bc[inside], k[inside]
        key = py[inside] * W + px[inside]
        depth = (bc * k[..., 3]).sum(-1)
        chunk_best = torch.full_like(best, -torch.inf).scatter_reduce(0, key, depth, "amax")
        win = ((depth == chunk_best[key]) & (depth > best[key])).nonzero().squeeze(1)
        kw = key[win]
        best[kw] = depth[win]
        face_out[kw] = rep[win]
        bary_out[kw] = bc[win]
        start = stop
    covered = face_out >= 0
    inv = torch.where(covered, best, torch.zeros_like(best))
    return Fragments(face_out.view(H, W), bary_out.view(H, W, 3), inv.view(H, W))


def project(cams: Cameras, vertices: Tensor, H: int, W: int) -> tuple[Tensor, Tensor]:
    """World points (V, 3) -> image coordinates (B, V, 2) and inverse view depth 1 / -Z (B, V)
    (the module docstring's map; <= 0 behind the camera)."""
    w2c = torch.linalg.inv(cams.c2w.double())  # (B, 4, 4)
    v = torch.cat([vertices.double(), torch.ones_like(vertices[:, :1], dtype=torch.float64)], -1)
    cam = torch.einsum("bij,vj->bvi", w2c, v)[..., :3]  # (B, V, 3)
    tan_half = torch.tan(torch.deg2rad(cams.fov_y_deg.double()) / 2.0)[:, None]
    depth = -cam[..., 2]
    safe = torch.where(depth > NEAR, depth, torch.ones_like(depth))
    x = (cam[..., 0] / safe / (tan_half * W / H) + 1.0) * (W / 2.0)
    y = (1.0 - cam[..., 1] / safe / tan_half) * (H / 2.0)
    return torch.stack([x, y], -1), torch.where(depth > NEAR, 1.0 / safe, torch.zeros_like(depth))


def texture_of(mesh: trimesh.Trimesh) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """(uv (V, 2) with v up, image (H, W, 3) uint8 sRGB) of a textured trimesh, or None.

    Reads a PBR material's baseColorTexture or a simple material's image; trimesh's 2 x 2 stand-in
    image (what it invents when an OBJ's material file is missing) does not count."""
    visual = mesh.visual
    if getattr(visual, "kind", None) != "texture" or getattr(visual, "uv", None) is None:
        return None
    material = visual.material
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None or min(image.size) <= 2:
        return None
    return np.asarray(visual.uv, dtype=np.float64), np.asarray(image.convert("RGB"))


def sample_texture(image: np.ndarray, uv: np.ndarray | Tensor) -> Tensor:
    """Bilinear lookup of an sRGB texture at uv (N, 2) (v up: v = 1 is the image's top row),
    filtered in linear light as a GPU does with an sRGB texture, edges clamped -> (N, 3) sRGB in [0, 1].

    Texel (r, c) has its centre at u = (c + 0.5) / W, v = 1 - (r + 0.5) / H."""
    uv = torch.as_tensor(uv, dtype=torch.float32)
    tex = torch.from_numpy(_SRGB8_TO_LINEAR[np.asarray(image, dtype=np.uint8)[..., :3]])
    tex = tex.permute(2, 0, 1)[None]  # (1, 3, H, W)
    grid = torch.stack([2.0 * uv[:, 0] - 1.0, 1.0 - 2.0 * uv[:, 1]], -1)[None, :, None]  # (1, N, 1, 2)
    out = torch.nn.functional.grid_sample(tex, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.from_numpy(linear_to_srgb(out[0, :, :, 0].T.numpy())).float()


def surface_colour(mesh: trimesh.Trimesh, face: Tensor, bary: Tensor) -> Tensor:
    """The mesh's sRGB colour at points given by face (N,) and barycentrics (N, 3) -> (N, 3) in [0, 1].

    Texture: uv interpolated, then :func:`sample_texture`. Vertex colours: interpolated in linear
    light (what a glTF viewer does with COLOR_0) and re-encoded. Face colours: the face's. No colour:
    mid grey."""
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)[face]  # (N, 3)
    textured = texture_of(mesh)
    if textured is not None:
        uv = torch.from_numpy(textured[0]).float()
        return sample_texture(textured[1], (bary[..., None] * uv[faces]).sum(1))
    kind = getattr(mesh.visual, "kind", None)
    if kind == "face":
        rgb = np.asarray(mesh.visual.face_colors)[face.numpy(), :3] / 255.0
        return torch.from_numpy(rgb).float()
    if kind not in ("vertex", "texture"):
        return torch.full((face.shape[0], 3), 0.5)
    vc = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0  # a texture without an image: to_color's grey
    lin = torch.from_numpy(srgb_to_linear(vc)).float()[faces]  # (N, 3, 3)
    return torch.from_numpy(linear_to_srgb((bary[..., None] * lin).sum(1).numpy())).float()


@dataclass(frozen=True)
class MeshImage:
    """rgb: (B, 3, H, W) sRGB colour over the background; mask: (B, 1, H, W) 1 where the mesh covers
    the pixel centre."""

    rgb: Tensor
    mask: Tensor


@torch.no_grad()
def render_mesh(mesh: trimesh.Trimesh, cams: Cameras, H: int, W: int, gltf_frame: bool = True,
                background: tuple[float, float, float] = (1.0, 1.0, 1.0), supersample: int = 1) -> MeshImage:
    """Render a mesh (any colour kind, see :func:`surface_colour`) from B cameras, unlit (albedo).

    gltf_frame: mesh.vertices are in glTF's Y-up frame, as our files are (mapped back to the world's
        z up, x_w = z, y_w = x, z_w = y, before projecting); False: already world coordinates.
    supersample: s > 1 renders s x s samples per pixel and averages them (box filter), so edge pixels
        get fractional coverage (mask in [0, 1]) and colour blended with the background."""
    if supersample > 1:
        big = render_mesh(mesh, cams, H * supersample, W * supersample, gltf_frame, background)
        pool = torch.nn.functional.avg_pool2d
        return MeshImage(pool(big.rgb, supersample), pool(big.mask, supersample))
    cams = cams.to("cpu")
    verts = np.asarray(mesh.vertices, dtype=np.float64)
    verts = torch.from_numpy(verts @ WORLD_TO_GLTF if gltf_frame else verts)
    faces = torch.as_tensor(np.asarray(mesh.faces), dtype=torch.int64)
    xy, iz = project(cams, verts, H, W)
    rgb = torch.empty(len(cams), 3, H, W)
    mask = torch.zeros(len(cams), 1, H, W)
    bg = torch.tensor(background, dtype=torch.float32)
    for k in range(len(cams)):
        front = (iz[k][faces] > 0).all(dim=1)
        frag = rasterize(xy[k], faces[front], H, W, iz[k])
        covered = frag.face >= 0
        img = bg[:, None, None].expand(3, H, W).clone()
        if covered.any():
            f = faces[front][frag.face[covered]]  # (N, 3) vertex ids
            b = frag.bary[covered].double() * iz[k][f]  # perspective-correct barycentrics
            b = (b / b.sum(-1, keepdim=True)).float()
            face_ids = front.nonzero().squeeze(1)[frag.face[covered]]
            img[:, covered] = surface_colour(mesh, face_ids, b).T
        rgb[k], mask[k, 0] = img, covered.float()
    return MeshImage(rgb, mask)


def psnr(a: Tensor, b: Tensor, mask: Tensor) -> float:
    """Peak signal-to-noise ratio in dB, 10 log10(1 / MSE), of images a, b (B, 3, H, W) in [0, 1] over
    the pixels where mask (B, 1, H, W) is set (the mean is over those pixels and the 3 channels);
    inf when they agree exactly, nan over an empty mask."""
    m = mask.bool().expand_as(a)
    if not m.any():
        return float("nan")
    mse = float(((a - b) ** 2)[m].double().mean())
    return float("inf") if mse == 0 else 10.0 * float(np.log10(1.0 / mse))


@dataclass(frozen=True)
class FieldViews:
    """The field as the comparison sees it: volume-rendered with shading "albedo" over white
    (midpoint samples) from `cams` at resolution x resolution.

    rgb: (B, 3, H, W) in [0, 1]; opacity: (B, 1, H, W); colour: (B, 3, H, W) the composited albedo
    divided by the opacity (the mean colour along each ray).
    """

    cams: Cameras
    resolution: int
    rgb: Tensor
    opacity: Tensor
    colour: Tensor

    @property
    def silhouette(self) -> Tensor:
        """(B, 1, H, W) bool: opacity > 0.5, where the render is more object than background."""
        return self.opacity > 0.5

    def iou(self, mask: Tensor) -> float:
        """|mask & silhouette| / |mask | silhouette| summed over all views, mask (B, 1, H, W) bool (0 when
        both are empty)."""
        return float((mask & self.silhouette).sum()) / max(float((mask | self.silhouette).sum()), 1.0)


@torch.no_grad()
def field_views(field, render_cfg: RenderConfig, cams: Cameras, resolution: int, bound: float = 1.0) -> FieldViews:
    """Render `field` in the box [-bound, bound]^3 for the mesh comparison and the silhouette level fit
    (see :class:`FieldViews`)."""
    device = next((t.device for t in list(field.parameters()) + list(field.buffers())), torch.device("cpu"))
    white = ConstantBackground((1.0, 1.0, 1.0)).to(device)
    out = render(field, cams.to(device), resolution, resolution, render_cfg, white, "albedo", stratified=False,
                 bound=bound)
    opacity = out.opacity.float().cpu()
    colour = (out.albedo.float().cpu() / opacity.clamp(min=1e-6)).clamp(0, 1)
    return FieldViews(cams.to("cpu"), resolution, out.rgb.float().cpu().clamp(0, 1), opacity, colour)


@torch.no_grad()
def mesh_vs_field(field, mesh: trimesh.Trimesh, render_cfg: RenderConfig, cams: Cameras, resolution: int,
                  gltf_frame: bool = True, supersample: int = 3, views: Optional[FieldViews] = None,
                  bound: float = 1.0) -> dict:
    """How well an exported mesh reproduces the field it came from, seen from `cams`.

    views: the field's render from the same cams and resolution when the caller has it already
    (:func:`field_views`); None renders it here, in the box [-bound, bound]^3. The field is
    volume-rendered with shading "albedo" over a white background (midpoint samples);
    the mesh is rasterised unlit over white (:func:`render_mesh`), both at resolution x resolution,
    the mesh with supersample x supersample samples per pixel (a field's edge is soft over a pixel or
    so, its density profile; a hard-edged mesh would make every edge pixel a colour error).
    F = field opacity > 0.5, M = mesh coverage > 0.5.

    Returns dict:
        silhouette_iou: |F & M| / |F | M| summed over all views;
        silhouette_iou_min: the worst single view's IoU;
        psnr_db: PSNR of the two images over white, over the whole image (the headline figure);
        psnr_union_db: the same over F | M only (stricter: no background pixels that agree trivially);
        psnr_colour_db: the surface colour alone, over F & pixels the mesh covers fully: the field's
            composited albedo divided by its opacity (its mean colour along the ray) against the
            mesh's colour; edges and silhouette do not enter;
        views, resolution.
    Figures are rounded to 4 decimals; a PSNR is None where it is infinite (identical pixels) or
    undefined (no pixel to compare), so the dict is plain JSON.
    """
    if views is None:
        views = field_views(field, render_cfg, cams, resolution, bound)
    elif views.resolution != resolution or not torch.equal(views.cams.c2w, cams.to("cpu").c2w):
        raise ValueError("mesh_vs_field: `views` were rendered from other cameras or at another resolution")
    field_rgb, field_colour = views.rgb, views.colour
    got = render_mesh(mesh, cams, resolution, resolution, gltf_frame, supersample=supersample)
    field_mask, mesh_mask = views.silhouette, got.mask > 0.5
    inter, union = (field_mask & mesh_mask), (field_mask | mesh_mask)
    per_view = inter.flatten(1).sum(1).double() / union.flatten(1).sum(1).clamp(min=1).double()
    def figure(x: float):
        return round(x, 4) if np.isfinite(x) else None

    return {
        "silhouette_iou": figure(views.iou(mesh_mask)),
        "silhouette_iou_min": figure(float(per_view.min())),
        "psnr_db": figure(psnr(field_rgb, got.rgb, torch.ones_like(got.mask))),
        "psnr_union_db": figure(psnr(field_rgb, got.rgb, union)),
        "psnr_colour_db": figure(psnr(field_colour, got.rgb, field_mask & (got.mask > 1.0 - 1e-6))),
        "views": len(cams),
        "resolution": resolution,
    }
