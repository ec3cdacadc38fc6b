"""Textured export: sRGB <-> linear (IEC 61966-2-1), xatlas unwrap, the albedo bake read back from GLB
and OBJ + MTL + PNG with trimesh against the field's albedo, the fill outside the charts, the toy
scorer's colour from the texture, and export_asset's vertex-colour option."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamfield.config import ExportConfig
from dreamfield.export.gltf import WORLD_TO_GLTF, linear_to_srgb, srgb_to_linear
from dreamfield.export.mesh import export_asset, extract_mesh
from dreamfield.export.raster import sample_texture, texture_of
from dreamfield.export.texture import bake_albedo, texture_mesh, unwrap
from dreamfield.toy.measures import load_mesh, mesh_occupancy, visible_surface_colour
from fields import SphereField

RED, BLUE = (0.85, 0.15, 0.15), (0.15, 0.30, 0.85)


class GradientSphere(SphereField):
    """A sphere whose albedo varies smoothly: (0.5 + 0.4 x, 0.5 + 0.4 y, 0.5 + 0.4 z) (world, sRGB)."""

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        return (0.5 + 0.4 * x).clamp(0.0, 1.0)


def test_srgb_transfer_function_known_values_and_inverse():
    # IEC 61966-2-1: 0.5 sRGB is 0.21404 linear; the linear segment below 0.04045 has slope 1 / 12.92
    assert float(srgb_to_linear(0.5)) == pytest.approx(0.214041, abs=1e-6)
    assert float(srgb_to_linear(0.04)) == pytest.approx(0.04 / 12.92)
    assert float(srgb_to_linear(1.0)) == 1.0 and float(srgb_to_linear(0.0)) == 0.0
    c = np.linspace(0.0, 1.0, 1001)
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(c)), c, atol=1e-12)
    # the two pieces meet: continuous at the threshold to 1e-7
    assert float(srgb_to_linear(0.04045 + 1e-9) - srgb_to_linear(0.04045)) < 1e-7


@pytest.fixture(scope="module")
def gradient_mesh():
    field = GradientSphere(radius=0.5, peak=10.0)
    mesh = extract_mesh(field, ExportConfig(density_blur=0.0, threshold=None, resolution=64), bound=1.0)
    return field, mesh


@pytest.fixture(scope="module")
def gradient_files(gradient_mesh, tmp_path_factory) -> dict:
    field, _ = gradient_mesh
    out = tmp_path_factory.mktemp("texture")
    # colour_depth 0: texels hold the albedo at their own point (test_surface_albedo_* check the composite)
    cfg = ExportConfig(density_blur=0.0, threshold=None, resolution=64, texture_size=512, formats=["glb", "obj", "ply"],
                       colour_depth=0.0)
    info = export_asset(field, cfg, 1.0, out / "mesh", None, "cpu")
    return {"info": info, "dir": out}


def test_unwrap_keeps_the_geometry_and_stays_in_the_unit_square(gradient_mesh):
    _, mesh = gradient_mesh
    un = unwrap(np.asarray(mesh.vertices), np.asarray(mesh.faces), 256)
    assert len(un.faces) == len(mesh.faces)
    np.testing.assert_array_equal(np.asarray(mesh.vertices)[un.vmapping][un.faces], np.asarray(mesh.vertices)[mesh.faces])
    assert un.uv.min() >= 0.0 and un.uv.max() <= 1.0
    assert len(un.vmapping) > len(mesh.vertices)  # split along seams


def test_texture_at_face_centroids_is_the_fields_albedo_there(gradient_files, gradient_mesh):
    field, _ = gradient_mesh
    out = gradient_files["dir"]
    for path in (out / "mesh.glb", out / "mesh.obj"):
        back = trimesh.load(path, force="mesh", process=False)
        uv, image = texture_of(back)
        assert image.shape == (512, 512, 3)
        tri_uv = uv[np.asarray(back.faces)].mean(axis=1)
        got = sample_texture(image, tri_uv).double().numpy()  # (F, 3) sRGB
        world = np.asarray(back.vertices)[np.asarray(back.faces)].mean(axis=1) @ WORLD_TO_GLTF
        want = field.albedo(torch.as_tensor(world, dtype=torch.float32)).double().numpy()
        err = np.abs(got - want) * 255
        # 8-bit rounding plus the albedo's change across a texel: within 2/255 at every face
        assert err.max() < 2.0 and err.mean() < 0.5, (path.suffix, err.mean(), err.max())


def test_obj_is_written_beside_its_material_and_texture(gradient_files):
    info, out = gradient_files["info"], gradient_files["dir"]
    names = [Path(p).name for p in info["paths"]]
    assert names == ["mesh.glb", "mesh.obj", "mesh.mtl", "mesh_albedo.png", "mesh.ply"]
    mtl = (out / "mesh.mtl").read_text()
    assert "map_Kd mesh_albedo.png" in mtl and "Pm 0.0" in mtl and "Pr 1.0" in mtl
    assert (out / "mesh.obj").read_text().splitlines()[1] == "mtllib mesh.mtl"
    assert not list(out.glob(".*"))  # no temporary files left behind
    ply = trimesh.load(out / "mesh.ply", force="mesh")  # PLY: the unsplit surface with vertex colours
    assert ply.visual.kind == "vertex" and ply.is_watertight


def test_texture_fill_and_seam_normals():
    field = SphereField(radius=0.4, colour=RED, top_colour=BLUE)
    mesh = extract_mesh(field, ExportConfig(density_blur=0.0, threshold=None, resolution=48), bound=1.0)
    textured = texture_mesh(field, mesh, np.asarray(mesh.vertices) @ WORLD_TO_GLTF, 128)
    _, image = texture_of(textured)
    # every texel, inside a chart or not, holds one of the field's two colours: the fill copies chart texels
    colours = {tuple(np.round(np.array(c) * 255).astype(int)) for c in (RED, BLUE)}
    assert {tuple(c) for c in image.reshape(-1, 3)} <= colours
    # copies of one vertex along a seam keep the unsplit mesh's normal, so shading has no seam
    normals = np.asarray(textured.vertex_normals)
    key = {tuple(np.round(v, 9)): n for v, n in zip(mesh.vertices, np.asarray(mesh.vertex_normals))}
    want = np.array([key[tuple(np.round(v, 9))] for v in textured.vertices])
    np.testing.assert_allclose(normals, want, atol=1e-9)


def test_bake_reads_the_field_at_the_barycentric_point():
    # one triangle covering the lower-left half of a 16 x 16 texture; the field's albedo is the point itself
    class Where(torch.nn.Module):
        def forward(self, x):
            return torch.zeros(len(x)), x

    points = np.array([[0.0, 0.0, 0.5], [1.0, 0.0, 0.5], [0.0, 1.0, 0.5]])
    uv = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    image = bake_albedo(Where(), points, np.array([[0, 1, 2]]), uv, 16)
    # texel (row r, column c) has its centre at u = (c + 0.5) / 16, v = 1 - (r + 0.5) / 16; inside the
    # triangle (u + v <= 1) the point is (u, v, 0.5)
    r, c = 12, 3
    u, v = (c + 0.5) / 16, 1 - (r + 0.5) / 16
    np.testing.assert_array_equal(image[r, c], np.round(np.array([u, v, 0.5]) * 255).astype(np.uint8))
    # outside (the top-right corner) the colour of one of the nearest texels inside
    rows, cols = np.meshgrid(np.arange(16), np.arange(16), indexing="ij")
    inside = (cols + 0.5) / 16 + 1 - (rows + 0.5) / 16 <= 1
    d2 = np.where(inside, (rows - 0) ** 2 + (cols - 15) ** 2, 10**9)
    nearest = {tuple(image[i, j]) for i, j in zip(*np.nonzero(d2 == d2.min()))}
    assert not inside[0, 15] and tuple(image[0, 15]) in nearest


def test_toy_scorer_reads_the_texture_colour(tmp_path):
    field = SphereField(radius=0.5, colour=RED)
    cfg = ExportConfig(density_blur=0.0, threshold=None, resolution=64, texture_size=256)
    textured = export_asset(field, cfg, 1.0, tmp_path / "t", ["glb"], "cpu")
    vertex = export_asset(field, ExportConfig(**{**cfg.__dict__, "colour": "vertex"}), 1.0, tmp_path / "v", ["glb"], "cpu")
    assert (textured["colour"], textured["texture_size"], vertex["colour"], vertex["texture_size"]) == (
        "texture", 256, "vertex", None)
    for path in (textured["paths"][0], vertex["paths"][0]):
        mesh = load_mesh(path)
        rgb = visible_surface_colour(mesh, mesh_occupancy(mesh, 32))
        np.testing.assert_allclose(rgb * 255, np.array(RED) * 255, atol=2.0)
    assert texture_of(load_mesh(textured["paths"][0])) is not None
    assert load_mesh(vertex["paths"][0]).visual.kind == "vertex"


def test_export_asset_rejects_a_bad_colour_option(tmp_path):
    # the settings are validated once, when the config loads
    from dreamfield.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="export.colour: 'uv' is not one of texture, vertex"):
        load_config([], ["export.colour=uv"])
    with pytest.raises(ConfigError, match="export.texture_size: must be >= 16"):
        load_config([], ["export.texture_size=8"])
