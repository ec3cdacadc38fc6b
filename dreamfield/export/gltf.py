"""Mesh files: GLB (glTF 2.0 binary) and OBJ + MTL + PNG contents, sRGB <-> linear, reading our GLBs back.

Colour spaces. In memory a mesh carries sRGB colours (8-bit vertex colours, an 8-bit sRGB texture),
as trimesh, PLY and OBJ use them. glTF differs: its COLOR_0 is *linear* (glTF 2.0 spec, 3.7.2.1,
"Meshes: vertex colour"), while a base-colour texture is sRGB-encoded (5.19.1). So the GLB writer
converts vertex colours to linear floats and leaves the PNG alone; readers of our GLBs convert
COLOR_0 back with :func:`linear_to_srgb` (:func:`glb_colour_is_linear` says when).

Why our own GLB writer rather than trimesh's: trimesh stores vertex colours as unsigned bytes, and
8-bit *linear* values lose the darks (sRGB 0..12 / 255 all fall on linear 0 or 1 / 255); glTF
allows float COLOR_0, which keeps the full precision. The writer emits exactly what the file needs
(positions, normals, one of COLOR_0 / TEXCOORD_0, indices, one metallic-roughness material, an
embedded PNG), so the Khronos validator has nothing to warn about.

Layout of a GLB (spec 4.4): a 12-byte header (magic ``glTF``, version 2, total length), a JSON
chunk padded with spaces to 4 bytes, a BIN chunk padded with zeros to 4 bytes.
"""

from __future__ import annotations

import io
import json
import struct
from pathlib import Path
from typing import Optional

import numpy as np
from PIL import Image

GENERATOR = "dreamfield"
# world (z up) -> glTF (Y up): x_out = y_w, y_out = z_w, z_out = x_w. A cyclic permutation of the
# axes, hence a proper rotation (det = +1): triangle winding, and so outward normals, survive it.
# Row vectors: gltf = world @ WORLD_TO_GLTF.T, world = gltf @ WORLD_TO_GLTF.
WORLD_TO_GLTF = np.array([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
_MAGIC, _JSON, _BIN = 0x46546C67, 0x4E4F534A, 0x004E4942
_FLOAT, _UINT32 = 5126, 5125
_ARRAY_BUFFER, _ELEMENT_ARRAY_BUFFER = 34962, 34963
_LINEAR, _LINEAR_MIPMAP_LINEAR, _CLAMP_TO_EDGE = 9729, 9987, 33071


def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    """sRGB-encoded values in [0, 1] -> linear light, IEC 61966-2-1:
    c / 12.92 for c <= 0.04045, else ((c + 0.055) / 1.055) ** 2.4. Any shape, float64."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    """Linear light in [0, 1] -> sRGB encoding, the inverse of :func:`srgb_to_linear`:
    12.92 c for c <= 0.0031308, else 1.055 c ** (1 / 2.4) - 0.055. Any shape, float64."""
    c = np.clip(np.asarray(c, dtype=np.float64), 0.0, 1.0)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * c ** (1.0 / 2.4) - 0.055)


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W, 3) uint8 -> PNG file bytes."""
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _pad4(data: bytes, fill: bytes) -> bytes:
    return data + fill * (-len(data) % 4)


def glb_bytes(
    positions: np.ndarray,
    normals: np.ndarray,
    faces: np.ndarray,
    colours: Optional[np.ndarray] = None,
    uv: Optional[np.ndarray] = None,
    texture_png: Optional[bytes] = None,
) -> bytes:
    """One mesh, one node, one metallic-roughness material (metallic 0, roughness 1) as GLB bytes.

    Args:
        positions: (V, 3) glTF frame (Y up).
        normals: (V, 3) unit vertex normals.
        faces: (F, 3) vertex indices, counter-clockwise seen from outside.
        colours: (V, 3) or (V, 4) uint8 sRGB vertex colours -> COLOR_0 as linear float VEC3.
        uv: (V, 2) texture coordinates with v up (OBJ / trimesh convention) -> TEXCOORD_0 with
            t = 1 - v (glTF's origin is the image's top-left corner, spec 3.7.2.1).
        texture_png: the sRGB base-colour image; needs `uv`.
    Exactly one of `colours` and (`uv`, `texture_png`) is given.
    """
    if (colours is None) == (uv is None or texture_png is None):
        raise ValueError("glb_bytes needs either vertex colours or a uv map and a texture")
    blobs: list[bytes] = []
    views: list[dict] = []
    accessors: list[dict] = []

    def add_view(data: bytes, target: Optional[int]) -> int:
        offset = sum(len(b) for b in blobs)
        blobs.append(_pad4(data, b"\0"))
        views.append({"buffer": 0, "byteOffset": offset, "byteLength": len(data)})
        if target is not None:
            views[-1]["target"] = target
        return len(views) - 1

    def add_accessor(array: np.ndarray, kind: str, component: int, bounds: bool = False) -> int:
        dtype = np.float32 if component == _FLOAT else np.uint32
        array = np.ascontiguousarray(array, dtype=dtype)
        target = _ELEMENT_ARRAY_BUFFER if kind == "SCALAR" else _ARRAY_BUFFER
        acc = {"bufferView": add_view(array.tobytes(), target), "componentType": component,
               "count": int(array.shape[0]), "type": kind}
        if bounds:  # POSITION must carry min and max (spec 3.7.2.1)
            acc["min"] = [float(v) for v in array.min(axis=0)]
            acc["max"] = [float(v) for v in array.max(axis=0)]
        accessors.append(acc)
        return len(accessors) - 1

    attributes = {
        "POSITION": add_accessor(positions, "VEC3", _FLOAT, bounds=True),
        "NORMAL": add_accessor(normals, "VEC3", _FLOAT),
    }
    pbr: dict = {"metallicFactor": 0.0, "roughnessFactor": 1.0}
    tree: dict = {}
    if colours is not None:
        linear = srgb_to_linear(np.asarray(colours)[:, :3] / 255.0)
        attributes["COLOR_0"] = add_accessor(linear, "VEC3", _FLOAT)
    else:
        uv = np.asarray(uv, dtype=np.float64)
        attributes["TEXCOORD_0"] = add_accessor(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1), "VEC2", _FLOAT)
        pbr["baseColorTexture"] = {"index": 0, "texCoord": 0}
        tree["images"] = [{"bufferView": add_view(texture_png, None), "mimeType": "image/png"}]
        tree["samplers"] = [{"magFilter": _LINEAR, "minFilter": _LINEAR_MIPMAP_LINEAR,
                             "wrapS": _CLAMP_TO_EDGE, "wrapT": _CLAMP_TO_EDGE}]
        tree["textures"] = [{"sampler": 0, "source": 0}]
    indices = add_accessor(np.asarray(faces).reshape(-1), "SCALAR", _UINT32)
    binary = b"".join(blobs)
    tree.update(
        asset={"version": "2.0", "generator": GENERATOR},
        scene=0,
        scenes=[{"nodes": [0]}],
        nodes=[{"mesh": 0, "name": "mesh"}],
        meshes=[{"primitives": [{"attributes": attributes, "indices": indices, "material": 0, "mode": 4}]}],
        materials=[{"name": "albedo", "pbrMetallicRoughness": pbr}],
        accessors=accessors,
        bufferViews=views,
        buffers=[{"byteLength": len(binary)}],
    )
    js = _pad4(json.dumps(tree, separators=(",", ":")).encode(), b" ")
    total = 12 + 8 + len(js) + 8 + len(binary)
    return b"".join([
        struct.pack("<III", _MAGIC, 2, total),
        struct.pack("<II", len(js), _JSON), js,
        struct.pack("<II", len(binary), _BIN), binary,
    ])


def obj_files(
    positions: np.ndarray, normals: np.ndarray, faces: np.ndarray, uv: np.ndarray, texture_name: str, mtl_name: str
) -> tuple[str, str]:
    """A textured OBJ and its MTL as text: ``v``, ``vt`` (v up), ``vn``, ``f a/a/a ...`` (1-based), one
    material whose diffuse map is `texture_name`. Returns (obj text, mtl text).

    The MTL carries Kd 1 (the map is the colour), no specular, and the PBR extension's Pm 0 / Pr 1
    (metallic 0, roughness 1) that Blender and threestudio's exports use."""
    lines = ["# dreamfield", f"mtllib {mtl_name}", "o mesh"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in positions]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uv]
    lines += [f"vn {x:.6f} {y:.6f} {z:.6f}" for x, y, z in normals]
    lines.append("usemtl albedo")
    lines += [f"f {a}/{a}/{a} {b}/{b}/{b} {c}/{c}/{c}" for a, b, c in np.asarray(faces) + 1]
    mtl = [
        "# dreamfield", "newmtl albedo", "Ka 0.000 0.000 0.000", "Kd 1.000 1.000 1.000", "Ks 0.000 0.000 0.000",
        "d 1.0", "illum 1", "Pm 0.0", "Pr 1.0", f"map_Kd {texture_name}",
    ]
    return "\n".join(lines) + "\n", "\n".join(mtl) + "\n"


def read_glb_json(path: str | Path) -> dict:
    """The JSON chunk of a GLB file (for .gltf: the file itself)."""
    path = Path(path)
    if path.suffix.lower() == ".gltf":
        return json.loads(path.read_text())
    with open(path, "rb") as f:
        magic, _, _ = struct.unpack("<III", f.read(12))
        length, kind = struct.unpack("<II", f.read(8))
        if magic != _MAGIC or kind != _JSON:
            raise ValueError(f"{path}: not a GLB file")
        return json.loads(f.read(length))


def glb_colour_is_linear(path: str | Path) -> bool:
    """Whether a glTF/GLB file's COLOR_0 holds linear values, as the spec says it must.

    True for every writer but trimesh, which stores sRGB bytes as they are (and wrote dreamfield's GLBs
    before this module did), so those files read back as they were written."""
    generator = str(read_glb_json(path).get("asset", {}).get("generator", ""))
    return "trimesh" not in generator


def load_gltf_mesh(path: str | Path, scene=None):
    """A glTF/GLB file as one trimesh.Trimesh in the file's frame (node transforms applied), with COLOR_0
    as sRGB 8-bit vertex colours (:func:`gltf_vertex_colours`) or the texture kept.

    trimesh's ``force="mesh"`` and ``Scene.dump`` drop the COLOR_0 that trimesh files beside a material,
    so the geometries are walked here. Several geometries are concatenated. `scene`: what
    ``trimesh.load(path, process=False)`` returned, if the caller has it already."""
    import trimesh

    if scene is None:
        scene = trimesh.load(str(path), process=False)
    if isinstance(scene, trimesh.Trimesh):
        parts = [scene]
    elif isinstance(scene, trimesh.Scene):
        parts = []
        for node in scene.graph.nodes_geometry:
            transform, name = scene.graph[node]
            geometry = scene.geometry[name]
            if not isinstance(geometry, trimesh.Trimesh):
                continue
            colours = gltf_vertex_colours(geometry, path)
            part = geometry.copy()
            if colours is not None:
                part.visual = trimesh.visual.ColorVisuals(part, vertex_colors=colours)
            part.apply_transform(transform)
            parts.append(part)
    else:
        parts = []
    if not parts:
        raise ValueError(f"{path}: no triangle mesh in the file")
    return parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)


def gltf_vertex_colours(mesh, path: str | Path) -> Optional[np.ndarray]:
    """The sRGB 8-bit vertex colours (V, 4) of a mesh trimesh read from the glTF/GLB file `path`, or None
    when it has none (or is not a glTF file).

    trimesh puts COLOR_0 in ``visual.vertex_colors`` (8-bit) when the primitive has no material, and
    in ``visual.vertex_attributes["color"]`` (as stored: floats for ours) when it has one, as ours
    do. Linear values (:func:`glb_colour_is_linear`) are converted to sRGB."""
    if Path(path).suffix.lower() not in (".glb", ".gltf"):
        return None
    visual = mesh.visual
    stored = getattr(visual, "vertex_attributes", {}).get("color") if visual.kind == "texture" else None
    if stored is not None and len(stored) == len(mesh.vertices):
        c = np.asarray(stored)
        rgba = c.astype(np.float64) / (255.0 if c.dtype == np.uint8 else 1.0)
    elif visual.kind == "vertex":
        rgba = np.asarray(visual.vertex_colors, dtype=np.float64) / 255.0
    else:
        return None
    if rgba.shape[1] == 3:
        rgba = np.concatenate([rgba, np.ones((len(rgba), 1))], axis=1)
    if glb_colour_is_linear(path):
        rgba[:, :3] = linear_to_srgb(rgba[:, :3])
    return np.round(np.clip(rgba, 0.0, 1.0) * 255.0).astype(np.uint8)
