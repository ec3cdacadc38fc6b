"""Mesh import: reading and frames, winding numbers against brute force and closed forms, silhouettes
against an analytic render, the fitted field exported back, the real bunny and teapot, one-line errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from dreamfield.config import load_config
from dreamfield.export.mesh import WORLD_TO_GLTF, extract_mesh
from dreamfield.scene.background import make_background
from dreamfield.scene.cameras import orbit_cameras
from dreamfield.scene.mesh_import import (
    DEFAULT_GREY,
    GLTF_TO_WORLD,
    MeshImportError,
    fit_field_to_mesh,
    import_mesh,
    load_mesh,
    mesh_silhouette,
    normalise,
    silhouette_agreement,
    to_world,
    winding_number,
    winding_number_exact,
)
from dreamfield.scene.render import render
from dreamfield.toy.measures import mesh_occupancy
from fields import SphereField

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
RED = (217, 38, 38, 255)


def _sphere(path: Path, subdivisions: int = 3, radius: float = 0.5, colour=RED) -> trimesh.Trimesh:
    mesh = trimesh.creation.icosphere(subdivisions=subdivisions, radius=radius)
    mesh.visual.vertex_colors = colour
    mesh.export(path)
    return mesh


# ------------------------------------------------------------------------------------ frames, reading


def test_gltf_to_world_inverts_the_exporters_map():
    np.testing.assert_array_equal(GLTF_TO_WORLD @ WORLD_TO_GLTF, np.eye(3))
    mesh = trimesh.Trimesh(vertices=[[1.0, 2.0, 3.0], [0, 0, 0], [0, 1, 0]], faces=[[0, 1, 2]], process=False)
    # file (x, y, z) = (1, 2, 3), Y up -> world x = file z, y = file x, z = file y
    np.testing.assert_array_equal(to_world(mesh).vertices[0], [3.0, 1.0, 2.0])


@pytest.mark.parametrize("fmt", ["glb", "obj", "ply"])
def test_load_mesh_keeps_vertex_colours_in_every_format(tmp_path, fmt):
    mesh = trimesh.creation.box(extents=(0.4, 0.6, 0.8))
    colours = np.tile(np.array([[10, 200, 30, 255]], np.uint8), (len(mesh.vertices), 1))
    colours[0] = (250, 5, 5, 255)
    mesh.visual.vertex_colors = colours
    path = tmp_path / f"box.{fmt}"
    if fmt == "obj":
        path.write_text(trimesh.exchange.obj.export_obj(mesh, include_normals=False, include_color=True))
    else:
        mesh.export(path)
    back = load_mesh(path)
    assert back.metadata["colour_source"] == "vertex"
    assert len(back.faces) == 12
    # vertex order may change on reading; compare the colour of each position
    got = {tuple(np.round(v, 5)): tuple(c) for v, c in zip(back.vertices, back.visual.vertex_colors)}
    for v, c in zip(mesh.vertices, colours):
        assert got[tuple(np.round(v, 5))] == tuple(c)


def test_load_mesh_without_colour_is_grey_and_face_colours_are_used(tmp_path):
    plain = trimesh.creation.box()
    plain.export(tmp_path / "plain.ply")
    grey = load_mesh(tmp_path / "plain.ply")
    assert grey.metadata["colour_source"] == "none"
    np.testing.assert_array_equal(grey.visual.vertex_colors[0, :3], [round(c * 255) for c in DEFAULT_GREY])

    faced = trimesh.creation.box()
    faced.visual.face_colors = (0, 0, 255, 255)
    faced.export(tmp_path / "faced.glb")
    back = load_mesh(tmp_path / "faced.glb")
    assert back.metadata["colour_source"] in ("face", "vertex")  # GLB stores face colours per vertex
    assert (back.visual.vertex_colors[:, :3] == [0, 0, 255]).all()


def test_normalise_places_the_bounding_sphere_and_keep_scale_keeps_the_file():
    mesh = trimesh.creation.box(extents=(2.0, 4.0, 6.0))
    mesh.apply_translation([10.0, -3.0, 1.0])
    placed, where = normalise(mesh, 0.7)
    assert np.linalg.norm(placed.vertices, axis=1).max() == pytest.approx(0.7)
    np.testing.assert_allclose(placed.bounds.mean(axis=0), 0.0, atol=1e-12)
    assert where.scale == pytest.approx(0.7 / math.sqrt(1 + 4 + 9))
    np.testing.assert_allclose(where.centre, [10.0, -3.0, 1.0])
    kept, where = normalise(mesh, 0.7, keep_scale=True)
    np.testing.assert_array_equal(kept.vertices, mesh.vertices)
    assert where.scale == 1.0


# ------------------------------------------------------------------------------------ winding numbers


def test_winding_number_of_a_closed_mesh_is_its_indicator():
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=0.5)
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.8, 0.8, (3000, 3))
    r = np.linalg.norm(pts, axis=1)
    pts = pts[np.abs(r - 0.5) > 0.02]  # the icosphere is within 0.005 of the sphere
    w = winding_number(sphere.vertices, sphere.faces, pts)
    inside = np.linalg.norm(pts, axis=1) < 0.5
    np.testing.assert_allclose(w[inside], 1.0, atol=0.02)
    np.testing.assert_allclose(w[~inside], 0.0, atol=0.02)
    # the exact sum is exact: 1 inside, 0 outside to rounding
    we = winding_number_exact(sphere.vertices, sphere.faces, pts[:300])
    np.testing.assert_allclose(we, inside[:300].astype(float), atol=1e-9)


def test_winding_number_of_an_open_hemisphere_is_one_half_at_the_centre():
    # Half a closed sphere, open at the equator: from the centre it spans a solid angle of 2 pi.
    sphere = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    keep = sphere.triangles_center[:, 2] > 0
    cap = trimesh.Trimesh(sphere.vertices, sphere.faces[keep], process=False)
    cap.remove_unreferenced_vertices()
    # the cap's rim is the polygon of the equator's edges, so the exact sum at the centre is 1/2 only
    # up to the rim's zig-zag; the fast sum must agree with the exact one everywhere.
    pts = np.concatenate([[[0.0, 0.0, 0.0]], np.random.default_rng(1).uniform(-1.2, 1.2, (400, 3))])
    we = winding_number_exact(cap.vertices, cap.faces, pts)
    assert we[0] == pytest.approx(0.5, abs=0.03)
    np.testing.assert_allclose(winding_number(cap.vertices, cap.faces, pts), we, atol=0.03)


@pytest.mark.skipif(not (DATA / "bunny.obj").is_file(), reason="../shared/data (real test meshes) is not on this machine")
def test_fast_winding_number_matches_brute_force_on_the_open_bunny():
    mesh, _ = import_mesh(DATA / "bunny.obj", load_config())
    rng = np.random.default_rng(0)
    surf = mesh.sample(300, return_index=False)
    pts = np.concatenate([rng.uniform(-0.75, 0.75, (300, 3)), surf + rng.normal(0, 0.02, surf.shape)])
    fast = winding_number(mesh.vertices, mesh.faces, pts)
    exact = winding_number_exact(mesh.vertices, mesh.faces, pts)
    # measured: max |fast - exact| 0.02, no point classified differently
    assert np.abs(fast - exact).max() < 0.05
    assert ((fast > 0.5) == (exact > 0.5)).mean() >= 0.995


# ------------------------------------------------------------------------------------ silhouettes


def test_mesh_silhouette_matches_a_rendered_analytic_sphere():
    cfg = load_config()
    cfg.render.n_samples = 128
    cams = orbit_cameras(3, 25.0, 1.8, 45.0)
    sphere = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    with torch.no_grad():  # a hard-edged sphere: a soft one looks bigger by its density tail
        out = render(SphereField(radius=0.5, width=0.0005, peak=200.0), cams, 48, 48, cfg.render,
                     make_background(cfg.render), "albedo", stratified=False)
    field_sil = out.opacity[:, 0] > 0.5
    mesh_sil = mesh_silhouette(sphere, cams, 48, 48)
    inter = (field_sil & mesh_sil).sum().item()
    union = (field_sil | mesh_sil).sum().item()
    assert mesh_sil.sum() > 0.2 * mesh_sil.numel()
    assert inter / union > 0.99  # measured 1.0: same pixel centres, same projection


# ------------------------------------------------------------------------------------ fitting


def test_sphere_imports_and_exports_back_with_its_shape_and_colour(tmp_path):
    from dreamfield.edit import edit_defaults

    original = _sphere(tmp_path / "sphere.glb")  # glTF Y up, radius 0.5 about the origin
    # `dreamfield edit`'s defaults: among them export without generate's density blur (a sharp solid)
    cfg = load_config([edit_defaults()], ["edit.keep_scale=true"])
    placed, info = import_mesh(tmp_path / "sphere.glb", cfg)
    assert info["watertight"] and info["colour_source"] == "vertex"
    scene, report = fit_field_to_mesh(placed, cfg, "cpu")
    assert report.adam_steps == 0 and report.inside_voxels > 0
    cfg.export.resolution = 96
    back = extract_mesh(scene.field, cfg.export, cfg.field.bound)  # glTF Y up, like the original
    a, b = mesh_occupancy(back, 64), mesh_occupancy(original, 64)  # both read as glTF Y up
    iou = (a & b).sum() / (a | b).sum()
    assert iou >= 0.9, iou  # measured 0.99 at a 64^3 grid field
    rgb = back.visual.vertex_colors[:, :3].astype(float)
    np.testing.assert_allclose(rgb.mean(axis=0), RED[:3], atol=1.0)
    assert np.abs(rgb - RED[:3]).max() <= 1.0
    agree = silhouette_agreement(scene, placed, cfg, views=4, resolution=48)
    assert agree["iou"] > 0.95, agree


def test_a_hash_grid_field_is_fitted_by_adam(tmp_path):
    _sphere(tmp_path / "sphere.ply", subdivisions=2)
    cfg = load_config([], [
        "field.kind=hashgrid", "field.hash_levels=4", "field.hash_log2_table_size=10", "field.hash_max_resolution=32",
        "field.hidden_dim=16", "field.grid_resolution=32",
    ])
    placed, _ = import_mesh(tmp_path / "sphere.ply", cfg)
    scene, report = fit_field_to_mesh(placed, cfg, "cpu", steps=100)
    assert report.adam_steps == 100 and report.final_loss < 0.15  # measured 0.07
    agree = silhouette_agreement(scene, placed, cfg, views=2, resolution=32)
    assert agree["iou"] > 0.85, agree  # measured 0.95


def test_a_grid_field_with_an_mlp_decoder_learns_the_colour(tmp_path):
    _sphere(tmp_path / "sphere.glb", subdivisions=2)
    cfg = load_config([], ["field.grid_decoder=mlp", "field.grid_resolution=24"])
    placed, _ = import_mesh(tmp_path / "sphere.glb", cfg)
    scene, report = fit_field_to_mesh(placed, cfg, "cpu", steps=80)
    assert report.adam_steps == 80
    surface = torch.as_tensor(placed.vertices[:50] * 0.97, dtype=torch.float32)
    with torch.no_grad():
        sigma, albedo = scene.field(surface)
    assert (sigma > 5).all()  # the density grid is set in closed form, as for the direct decoder
    np.testing.assert_allclose(albedo.mean(0).numpy(), np.array(RED[:3]) / 255, atol=0.05)


@pytest.mark.parametrize("name", ["bunny", "teapot"])
def test_real_open_meshes_import(name):
    path = DATA / f"{name}.obj"
    if not path.is_file():
        pytest.skip("../shared/data (real test meshes) is not on this machine")
    cfg = load_config([], ["field.grid_resolution=48"])
    placed, info = import_mesh(path, cfg)
    assert not info["watertight"] and info["colour_source"] == "none"
    assert np.linalg.norm(placed.vertices, axis=1).max() == pytest.approx(cfg.edit.import_radius)
    scene, report = fit_field_to_mesh(placed, cfg, "cpu")
    agree = silhouette_agreement(scene, placed, cfg, views=4, resolution=48)
    # measured at 64^3 / 8 views / 64 px: bunny 0.90, teapot 0.92 (thin ears, handle and spout lose most)
    assert agree["iou"] > 0.8, agree
    # the inside is filled (the winding number closes the open base / lid seams): the field is opaque
    # at the centre of the bunny's body and of the teapot's pot
    with torch.no_grad():
        centre = torch.tensor(placed.bounding_box.centroid, dtype=torch.float32)[None]
        assert scene.field.density(centre).item() > 20


# ------------------------------------------------------------------------------------ errors


def test_one_line_errors(tmp_path):
    with pytest.raises(MeshImportError, match="not found"):
        load_mesh(tmp_path / "missing.glb")
    (tmp_path / "garbage.glb").write_bytes(b"\x00\x01not a glb at all" * 10)
    with pytest.raises(MeshImportError, match="cannot read mesh") as info:
        load_mesh(tmp_path / "garbage.glb")
    assert "\n" not in str(info.value)
    (tmp_path / "points.obj").write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")  # vertices only
    with pytest.raises(MeshImportError, match="no faces"):
        load_mesh(tmp_path / "points.obj")
    (tmp_path / "empty.gltf").write_text('{"asset": {"version": "2.0"}, "scenes": [{"nodes": []}], "scene": 0}')
    with pytest.raises(MeshImportError, match="empty scene|no faces"):
        load_mesh(tmp_path / "empty.gltf")
    (tmp_path / "model.stl").write_text("solid x\nendsolid x\n")
    with pytest.raises(MeshImportError, match="unsupported mesh format"):
        load_mesh(tmp_path / "model.stl")
    cfg = load_config([], ["edit.import_radius=0.95"])
    _sphere(tmp_path / "s.glb", subdivisions=1)
    with pytest.raises(MeshImportError, match="import_radius"):
        import_mesh(tmp_path / "s.glb", cfg)


@pytest.mark.parametrize("activation", ["softplus", "exp"])
def test_the_level_5_surface_lies_on_the_mesh_for_either_activation(tmp_path, activation):
    # The closed-form grid puts density 5 on the mesh: above it just inside, below it just outside. Under exp the
    # raw slope is shallower (4 per voxel, not 15), else the clamped profile moved the surface by ~0.3 voxel
    # (measured before the fix: sigma 1.7 at 3 % inside a 24^3 sphere).
    _sphere(tmp_path / "sphere.glb", subdivisions=3)
    cfg = load_config([], ["field.grid_resolution=24", f"field.density_activation={activation}"])
    placed, _ = import_mesh(tmp_path / "sphere.glb", cfg)
    scene, _ = fit_field_to_mesh(placed, cfg, "cpu")
    v = torch.as_tensor(placed.vertices, dtype=torch.float32)
    with torch.no_grad():
        inside, outside = scene.field.density(v * 0.96), scene.field.density(v * 1.04)
    assert (inside > 5).all() and (outside < 5).all(), (float(inside.min()), float(outside.max()))


@pytest.mark.parametrize("colour", ["vertex", "texture"])
def test_our_own_glb_exports_import_with_their_colour(tmp_path, colour):
    # the exporter writes linear COLOR_0 (vertex) or an sRGB texture beside a material: both come back as the
    # field's sRGB albedo (trimesh's own scene flattening would drop COLOR_0 and give grey)
    from dreamfield.export.mesh import export_asset

    cfg = load_config([], [f"export.colour={colour}", "export.resolution=48", "export.threshold=5",
                           "export.density_blur=0", "export.texture_size=128"])
    export_asset(SphereField(radius=0.5, colour=(0.85, 0.15, 0.15)), cfg.export, 1.0, tmp_path / "mesh", ["glb"])
    mesh = load_mesh(tmp_path / "mesh.glb")
    assert mesh.metadata["colour_source"] == colour
    rgb = np.asarray(mesh.visual.vertex_colors)[:, :3].astype(float).mean(axis=0)
    assert np.abs(rgb - np.array([0.85, 0.15, 0.15]) * 255).max() < 3, rgb
