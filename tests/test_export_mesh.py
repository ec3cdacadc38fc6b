"""Mesh export: marching cubes of analytic fields, clean-up, glTF Y-up, GLB/OBJ/PLY round trips (vertex
colours and textures) and the Khronos glTF validator."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamfield.config import CameraConfig, ExportConfig, RenderConfig
from dreamfield.export.gltf import read_glb_json, srgb_to_linear
from dreamfield.export.mesh import (
    DEFAULT_LEVEL,
    WORLD_TO_GLTF,
    EmptyMeshError,
    choose_level,
    density_grid,
    export_asset,
    extract_mesh,
    save_mesh,
)
from dreamfield.toy.measures import load_mesh
from fields import EmptyField, SphereField, UnionField

ROOT = Path(__file__).resolve().parents[1]
RED = (0.85, 0.15, 0.15)
BLUE = (0.15, 0.30, 0.85)
R = 0.5
SPHERE_VOLUME = 4.0 / 3.0 * math.pi * R**3


def rgb8(colour) -> np.ndarray:
    return np.round(np.asarray(colour) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def sphere_mesh() -> trimesh.Trimesh:
    # peak 10 = 2 x DEFAULT_LEVEL: the default level lands on the profile's half height, the sphere
    return extract_mesh(SphereField(radius=R, colour=RED, peak=2 * DEFAULT_LEVEL), ExportConfig(density_blur=0.0, threshold=None), bound=1.0)


@pytest.fixture(scope="module")
def sphere_files(sphere_mesh, out_dir) -> list[Path]:
    return save_mesh(sphere_mesh, out_dir / "sphere", ["glb", "obj", "ply"])


@pytest.fixture(scope="module")
def textured_asset(out_dir) -> dict:
    """The default export (textured GLB + OBJ/MTL/PNG + PLY) of a two-colour sphere, with its
    mesh-vs-field figures."""
    field = SphereField(radius=0.4, colour=RED, top_colour=BLUE, centre=CENTRE, peak=50.0, width=0.01)
    cfg = ExportConfig(density_blur=0.0, threshold=25.0, resolution=96, texture_size=512, compare_views=4,
                       compare_resolution=64, formats=["glb", "obj", "ply"])
    render_cfg = RenderConfig(n_samples=256)
    return export_asset(field, cfg, 1.0, out_dir / "textured", None, "cpu", render_cfg, CameraConfig())


# world centre of the two-colour sphere; every axis different so a wrong axis map shows
CENTRE = (0.2, -0.1, 0.05)


@pytest.fixture(scope="module")
def two_colour_glb(out_dir) -> Path:
    field = SphereField(radius=0.3, colour=RED, top_colour=BLUE, centre=CENTRE)
    mesh = extract_mesh(field, ExportConfig(density_blur=0.0, threshold=None, resolution=64), bound=1.0)
    return save_mesh(mesh, out_dir / "two_colour", ["glb"])[0]


@pytest.fixture(scope="module")
def cleaned_glb(out_dir) -> Path:
    cfg = ExportConfig(density_blur=0.0, threshold=None, resolution=64, smooth_iterations=5, target_faces=1500)
    mesh = extract_mesh(SphereField(radius=R, colour=RED), cfg, bound=1.0)
    return save_mesh(mesh, out_dir / "cleaned", ["glb"])[0]


def test_density_grid_matches_field_on_the_grid():
    field = SphereField(radius=R)
    grid = density_grid(field, 7, bound=1.0, chunk=10)  # chunks that split rows
    axis = torch.linspace(-1.0, 1.0, 7)
    x = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    assert grid.shape == (7, 7, 7)
    torch.testing.assert_close(grid.reshape(-1), field.density(x))
    assert grid[3, 3, 3] == grid.max()  # the centre sample is the densest


def test_sphere_is_watertight_with_the_right_volume_and_colour(sphere_mesh):
    assert sphere_mesh.metadata["level"] == pytest.approx(DEFAULT_LEVEL)
    assert sphere_mesh.is_watertight and sphere_mesh.is_winding_consistent
    assert sphere_mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)
    assert (sphere_mesh.visual.vertex_colors[:, :3] == rgb8(RED)).all()


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_formats_read_back_with_volume_and_colour(sphere_files, sphere_mesh, fmt):
    (path,) = [p for p in sphere_files if p.suffix == f".{fmt}"]
    back = trimesh.load(path, force="mesh")
    assert len(back.vertices) == len(sphere_mesh.vertices)
    assert back.is_watertight
    assert back.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)
    if fmt == "glb":  # COLOR_0 is linear (glTF spec); trimesh keeps it beside the material, as stored
        (geometry,) = trimesh.load(path).geometry.values()
        stored = np.asarray(geometry.visual.vertex_attributes["color"])
        np.testing.assert_allclose(stored, np.tile(srgb_to_linear(rgb8(RED) / 255), (len(stored), 1)), atol=1e-6)
    colours = np.asarray(load_mesh(path).visual.vertex_colors)[:, :3]  # sRGB again
    assert (colours == rgb8(RED)).all(), np.unique(colours, axis=0)


def test_glb_vertex_colours_are_linear_floats(sphere_files):
    (path,) = [p for p in sphere_files if p.suffix == ".glb"]
    tree = read_glb_json(path)
    (prim,) = tree["meshes"][0]["primitives"]
    colour = tree["accessors"][prim["attributes"]["COLOR_0"]]
    assert (colour["componentType"], colour["type"]) == (5126, "VEC3")  # float, no 8-bit loss in the darks
    assert tree["asset"]["generator"] == "dreamfield"
    assert tree["materials"][0]["pbrMetallicRoughness"] == {"metallicFactor": 0.0, "roughnessFactor": 1.0}


def test_foggy_field_uses_the_mid_level():
    # a soft field whose peak (3) is below 2 x DEFAULT_LEVEL: the level is (min + max) / 2 = 1.5, the
    # half height of the profile, so the surface is still the sphere
    mesh = extract_mesh(SphereField(radius=R, peak=3.0), ExportConfig(density_blur=0.0, threshold=None, resolution=64), bound=1.0)
    assert mesh.metadata["level"] == pytest.approx(1.5, rel=1e-3)
    assert mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)


def test_threshold_override_and_its_check():
    field = SphereField(radius=R, peak=1000.0)
    mesh = extract_mesh(field, ExportConfig(density_blur=0.0, resolution=64, threshold=500.0), bound=1.0)
    assert mesh.metadata["level"] == 500.0
    assert mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.02)
    # the default level (5) sits out in the sigmoid's tail: r + w ln(1000/5 - 1), a bigger sphere
    grid = density_grid(field, 16, bound=1.0)
    assert choose_level(grid, None) == DEFAULT_LEVEL
    with pytest.raises(ValueError, match="export.threshold must be > 0"):
        choose_level(grid, 0.0)


def test_y_up_axis_map_and_top_colour(two_colour_glb):
    assert np.linalg.det(WORLD_TO_GLTF) == pytest.approx(1.0)
    mesh = load_mesh(two_colour_glb)
    cx, cy, cz = CENTRE
    expected_centre = np.array([cy, cz, cx])  # x_out = y_w, y_out = z_w, z_out = x_w
    np.testing.assert_allclose(mesh.bounds.mean(axis=0), expected_centre, atol=0.01)
    np.testing.assert_allclose(mesh.extents, [0.6, 0.6, 0.6], atol=0.02)
    # world +z (the top colour) is +Y
    colours = np.asarray(mesh.visual.vertex_colors)[:, :3]
    y = mesh.vertices[:, 1] - cz
    # (one 8-bit step: the colour is a weighted mean along the normal, and 0.30 * 255 = 76.5 rounds either way)
    assert np.abs(colours[y > 0.02].astype(int) - rgb8(BLUE)).max() <= 1
    assert np.abs(colours[y < -0.02].astype(int) - rgb8(RED)).max() <= 1
    # outward winding survived the rotation: positive volume, normals point away from the centre
    assert mesh.is_watertight and mesh.volume > 0
    radial = mesh.vertices - expected_centre
    assert (np.einsum("ij,ij->i", mesh.vertex_normals, radial) > 0).all()


def test_floaters_are_dropped():
    body = SphereField(radius=R, colour=RED)
    speck = SphereField(radius=0.08, colour=BLUE, centre=(0.0, 0.0, 0.8))
    field = UnionField(body, speck)
    kept = extract_mesh(field, ExportConfig(density_blur=0.0, threshold=None, resolution=64, min_component=0.0), bound=1.0)
    cleaned = extract_mesh(field, ExportConfig(density_blur=0.0, threshold=None, resolution=64), bound=1.0)  # min_component 0.05
    assert len(kept.split(only_watertight=False)) == 2
    assert len(cleaned.split(only_watertight=False)) == 1
    assert (np.asarray(cleaned.visual.vertex_colors)[:, :3] == rgb8(RED)).all()


def test_smoothing_and_decimation(cleaned_glb):
    mesh = load_mesh(cleaned_glb)
    assert 0 < len(mesh.faces) <= 1500
    assert mesh.volume == pytest.approx(SPHERE_VOLUME, rel=0.03)
    assert (np.asarray(mesh.visual.vertex_colors)[:, :3] == rgb8(RED)).all()


def test_empty_field_raises_with_threshold_and_range():
    with pytest.raises(EmptyMeshError, match=r"threshold 0\.3 \(density range 0\.3 to 0\.3"):
        extract_mesh(EmptyField(0.3), ExportConfig(density_blur=0.0, threshold=None, resolution=16), bound=1.0)  # uniform haze
    with pytest.raises(EmptyMeshError, match=r"threshold 2 \(density range \S+ to 1\.2 on a 16\^3 grid\)"):
        extract_mesh(SphereField(peak=1.2), ExportConfig(density_blur=0.0, resolution=16, threshold=2.0), bound=1.0)
    assert issubclass(EmptyMeshError, ValueError)


def test_save_mesh_rejects_unknown_format(sphere_mesh, tmp_path):
    with pytest.raises(ValueError, match="'stl' is not one of glb, obj, ply"):
        save_mesh(sphere_mesh, tmp_path / "m", ["stl"])


# --- Khronos glTF validator (npm gltf-validator, installed under .tools/ by `make test`) ---


def validate_gltf(path: Path) -> dict:
    module = ROOT / ".tools" / "node_modules" / "gltf-validator"
    in_ci = bool(os.environ.get("CI"))
    if not module.is_dir():
        message = (
            "the glTF validator is not installed under .tools/ "
            "(make test installs it: npm install --prefix .tools gltf-validator)"
        )
        if in_ci:
            pytest.fail(f"{message}; in CI it must be there: check that node 20 and npm are on PATH")
        pytest.skip(message)
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH; the glTF validator test needs node (20 or newer)")
    run = subprocess.run(
        [node, str(ROOT / "tests" / "validate_gltf.mjs"), str(path)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_every_glb_passes_the_gltf_validator(sphere_files, two_colour_glb, cleaned_glb, textured_asset, out_dir):
    glbs = sorted(out_dir.glob("*.glb"))
    assert len(glbs) == 4
    for path in glbs:
        report = validate_gltf(path)
        issues = report["issues"]
        messages = [m for m in issues["messages"] if m["severity"] <= 1]  # errors and warnings
        assert issues["numErrors"] == 0 and issues["numWarnings"] == 0, (path.name, messages)
        assert report["info"]["totalVertexCount"] > 0
    info = validate_gltf(out_dir / "textured.glb")["info"]
    assert info["materialCount"] == 1 and info["hasTextures"] and info["maxUVs"] == 1
    assert info["totalTriangleCount"] == textured_asset["faces"]
    (image,) = [r["image"] for r in info["resources"] if r["pointer"] == "/images/0"]
    assert (image["width"], image["height"], image["transfer"]) == (512, 512, "srgb")


def test_density_blur_matches_scipy_and_keeps_constants():
    from scipy.ndimage import gaussian_filter

    from dreamfield.export.mesh import blur_density

    g = torch.rand(33, 33, 33, generator=torch.Generator().manual_seed(0))
    g[:4] = g[-4:] = 0.0  # nothing near two faces, so no mass leaves the box there
    sigma_world, bound = 0.1, 1.0
    sigma_cells = sigma_world * 32 / (2 * bound)  # 1.6 cells
    got = blur_density(g, sigma_world, bound)
    # scipy: same Gaussian, zero outside, truncated at the same radius (ceil(3 sigma) = 5 cells)
    want = gaussian_filter(g.double().numpy(), sigma_cells, mode="constant", cval=0.0, truncate=5 / sigma_cells)
    assert np.abs(got.double().numpy() - want).max() < 1e-5
    flat = torch.full((33, 33, 33), 3.0)
    assert torch.allclose(blur_density(flat, 0.1, 1.0)[16, 16, 16], torch.tensor(3.0))
    assert blur_density(g, 0.0, 1.0) is g
    with pytest.raises(ValueError, match="density_blur"):
        blur_density(g, -0.1, 1.0)
