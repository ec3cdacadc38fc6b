"""The contract's measures on meshes written as the exporter writes them (glTF Y-up, vertex colours)."""

import math

import numpy as np
import pytest
import trimesh

from dreamfield.toy import domain, measures


@pytest.fixture(scope="module")
def reference_meshes():
    return {s: measures.reference_mesh(s, domain.COLOURS["orange"], res=64) for s in domain.SHAPES}


@pytest.mark.parametrize("shape", domain.SHAPES)
def test_reference_mesh_scores_its_own_shape(shape, reference_meshes):
    r = measures.score_mesh(reference_meshes[shape], shape, "orange")
    assert r["iou"] >= 0.95
    assert r["shape_pred"] == shape and r["shape_ok"]
    others = [v for s, v in r["ious"].items() if s != shape]
    assert max(others) < r["iou"] - 0.1  # the wrong shapes score clearly lower
    assert r["colour_pred"] == "orange" and r["colour_ok"]
    assert np.allclose(r["mean_rgb"], domain.COLOURS["orange"], atol=3 / 255)


def test_wrong_prompt_scores_low(reference_meshes):
    r = measures.score_mesh(reference_meshes["torus"], "cube", "blue")
    assert r["iou"] < 0.3 and not r["shape_ok"] and not r["colour_ok"]
    assert r["shape_pred"] == "torus"


def test_axis_convention_matters(reference_meshes):
    """The same cone left z-up (not converted to Y-up) points along world x and no longer matches."""
    m = reference_meshes["cone"]
    z_up = trimesh.Trimesh(measures.gltf_to_world(m.vertices), m.faces, process=False)
    assert measures.score_mesh(z_up, "cone", "orange")["iou"] < 0.4


def test_best_over_rotations_about_z():
    m = measures.reference_mesh("cube", None, res=64)
    R = trimesh.transformations.rotation_matrix(math.radians(30.0), [0, 1, 0])  # world z is glTF y
    m.apply_transform(R)
    r = measures.score_mesh(m, "cube", "red")
    assert r["shape_pred"] == "cube" and r["iou"] >= 0.95
    assert r["angle_deg"] == pytest.approx(30.0, abs=5.0)
    assert r["colour_pred"] is None and not r["colour_ok"]  # no vertex colours


def _winding_number(mesh: trimesh.Trimesh, pts: np.ndarray) -> np.ndarray:
    """Generalised winding number (sum of signed solid angles / 4 pi, Van Oosterom & Strackee 1983)."""
    tri = mesh.vertices[mesh.faces]  # (F, 3, 3)
    out = np.zeros(len(pts))
    for k in range(0, len(pts), 500):
        a, b, c = (tri[None, :, i] - pts[k : k + 500, None] for i in range(3))  # (P, F, 3)
        la, lb, lc = (np.linalg.norm(v, axis=-1) for v in (a, b, c))
        num = np.einsum("pfi,pfi->pf", a, np.cross(b, c))
        den = la * lb * lc + (a * b).sum(-1) * lc + (b * c).sum(-1) * la + (c * a).sum(-1) * lb
        out[k : k + 500] = 2 * np.arctan2(num, den).sum(1) / (4 * np.pi)
    return out


def test_parity_occupancy_equals_winding_number():
    m = trimesh.creation.torus(major_radius=0.4, minor_radius=0.18, major_sections=48, minor_sections=24)
    m.apply_translation([0.05, -0.1, 0.07])
    occ = measures.mesh_occupancy(m, res=32, world=True)
    c = measures.grid_centres(32)
    pts = np.stack(np.meshgrid(c, c, c, indexing="ij"), -1).reshape(-1, 3)
    rng = np.random.default_rng(0)
    idx = rng.choice(len(pts), 3000, replace=False)
    assert m.is_watertight
    inside = _winding_number(m, pts[idx]) > 0.5
    assert inside.sum() > 100
    assert np.array_equal(occ.reshape(-1)[idx], inside)
    assert occ.sum() * (2 / 32) ** 3 == pytest.approx(m.volume, rel=0.05)


def test_holes_do_not_break_occupancy():
    m = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    rng = np.random.default_rng(1)
    keep = np.ones(len(m.faces), dtype=bool)
    keep[rng.choice(len(m.faces), 20, replace=False)] = False
    holey = trimesh.Trimesh(m.vertices, m.faces[keep], process=False)
    assert not holey.is_watertight
    r = measures.score_mesh(holey, "sphere", "red")
    assert r["shape_pred"] == "sphere" and r["iou"] >= 0.95


def test_colour_counts_only_the_visible_surface():
    """A red ball with a green-walled cavity inside: the cavity's faces are hidden and don't count."""
    outer = trimesh.creation.icosphere(subdivisions=4, radius=0.5)
    inner = trimesh.creation.icosphere(subdivisions=4, radius=0.3)
    inner.invert()  # the cavity's walls face inward, into the hole
    m = trimesh.util.concatenate([outer, inner])
    colours = np.zeros((len(m.vertices), 4), dtype=np.uint8)
    colours[: len(outer.vertices)] = [217, 38, 38, 255]
    colours[len(outer.vertices):] = [38, 178, 51, 255]
    m.visual.vertex_colors = colours
    r = measures.score_mesh(m, "sphere", "red")
    assert np.allclose(r["mean_rgb"], [217 / 255, 38 / 255, 38 / 255], atol=1e-6)
    assert r["colour_pred"] == "red"
    # Counting every face instead would have pulled the mean a third of the way to green.
    assert r["volume"] == pytest.approx(4 / 3 * math.pi * (0.5**3 - 0.3**3), rel=0.08)


def test_glb_round_trip(tmp_path, reference_meshes):
    path = tmp_path / "mesh.glb"
    reference_meshes["pyramid"].export(path)
    back = measures.load_mesh(path)
    r = measures.score_mesh(back, "pyramid", "orange")
    assert r["shape_ok"] and r["colour_ok"] and r["iou"] >= 0.95


def test_empty_mesh_and_bad_names():
    empty = trimesh.Trimesh(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))
    r = measures.score_mesh(empty, "cube", "red")
    assert r["iou"] == 0.0 and r["shape_pred"] is None and not r["shape_ok"] and r["colour_pred"] is None
    with pytest.raises(ValueError, match="unknown shape"):
        measures.score_mesh(empty, "blob", "red")
    with pytest.raises(ValueError, match="unknown colour"):
        measures.score_mesh(empty, "cube", "pink")
