"""The export's triangle rasteriser against closed forms: a sphere's silhouette is the analytic disc,
a known triangle covers exactly the pixel centres inside it, the z-buffer keeps the nearest surface,
perspective-correct interpolation lands on the pixel's ray, flat colours come out as they went in;
and mesh_vs_field scores a mesh against its field (a shifted or recoloured mesh lower)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from dreamfield.config import RenderConfig
from dreamfield.export.raster import mesh_vs_field, psnr, project, rasterize, render_mesh, sample_texture
from dreamfield.scene.cameras import get_rays, look_at
from fields import SphereField

H = W = 96


def test_sphere_silhouette_is_the_analytic_disc():
    # a sphere of radius r seen from distance d subtends the half-angle asin(r / d); centred on the optical
    # axis its silhouette is a disc of radius f tan(asin(r / d)) pixels, f = (H / 2) / tan(fov / 2)
    r, d, fov = 0.5, 2.0, 40.0
    sphere = trimesh.creation.icosphere(subdivisions=5, radius=r)
    cams = look_at(35.0, 25.0, d, fov)
    img = render_mesh(sphere, cams, H, W, gltf_frame=False)
    f = (H / 2) / math.tan(math.radians(fov) / 2)
    rho = f * math.tan(math.asin(r / d))
    i, j = np.meshgrid(np.arange(H) + 0.5, np.arange(W) + 0.5, indexing="ij")
    dist = np.hypot(i - H / 2, j - W / 2)
    mask = img.mask[0, 0].numpy() > 0.5
    assert mask[dist < rho - 0.05].all()  # the inscribed polyhedron's silhouette is within 0.02 px of the disc
    assert not mask[dist > rho + 0.05].any()
    assert mask.sum() == pytest.approx(math.pi * rho**2, rel=0.01)


def test_known_triangle_covers_the_pixel_centres_inside_it():
    xy = torch.tensor([[2.3, 1.1], [17.8, 5.2], [6.1, 14.9]])
    faces = torch.tensor([[0, 1, 2]])
    frag = rasterize(xy, faces, 16, 20)
    # independent test: solve p = a + s (b - a) + t (c - a) for every pixel centre
    a, b, c = xy.double().numpy()
    m = np.stack([b - a, c - a], axis=1)
    rows, cols = np.meshgrid(np.arange(16) + 0.5, np.arange(20) + 0.5, indexing="ij")
    p = np.stack([cols, rows], -1).reshape(-1, 2) - a
    s, t = np.linalg.solve(m, p.T)
    inside = ((s >= 0) & (t >= 0) & (s + t <= 1)).reshape(16, 20)
    np.testing.assert_array_equal(frag.face.numpy() == 0, inside)
    # barycentrics reproduce the pixel centre: sum_k b_k v_k = p
    bary = frag.bary[frag.face == 0].double()
    got = bary @ xy.double()
    want = torch.from_numpy(np.stack([cols, rows], -1)[inside])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=0)
    torch.testing.assert_close(bary.sum(-1), torch.ones(len(bary), dtype=torch.float64), atol=1e-5, rtol=0)


def test_shared_edges_leave_no_cracks_and_the_z_buffer_keeps_the_nearest():
    # a square split into two triangles along its diagonal covers every pixel centre in it exactly
    xy = torch.tensor([[0.0, 0.0], [12.0, 0.0], [12.0, 12.0], [0.0, 12.0]])
    frag = rasterize(xy, torch.tensor([[0, 1, 2], [0, 2, 3]]), 12, 12)
    assert (frag.face >= 0).all()
    # two overlapping squares at depths 2 (near) and 4 (far), drawn in both orders: the near one wins
    v = torch.cat([xy, xy])
    inv = torch.tensor([0.25] * 4 + [0.5] * 4)
    quads = torch.tensor([[0, 1, 2], [0, 2, 3], [4, 5, 6], [4, 6, 7]])
    for order in (quads, quads.flip(0)):
        frag = rasterize(v, order, 12, 12, inv)
        near = order[frag.face.reshape(-1)].min(dim=1).values >= 4
        assert near.all()
        torch.testing.assert_close(frag.inv_depth, torch.full((12, 12), 0.5))


def test_perspective_correct_points_lie_on_the_pixel_rays():
    # a slanted triangle; the perspective-corrected barycentrics applied to its 3D corners must give a point
    # on the ray get_rays shoots through that pixel (the renderer's own convention)
    cams = look_at(20.0, 10.0, 2.5, 45.0)
    corners = torch.tensor([[0.6, -0.5, -0.4], [-0.5, 0.4, -0.3], [0.2, 0.1, 0.7]], dtype=torch.float64)
    xy, iz = project(cams, corners, H, W)
    frag = rasterize(xy[0], torch.tensor([[0, 1, 2]]), H, W, iz[0])
    covered = frag.face >= 0
    assert covered.sum() > 200
    b = frag.bary[covered].double() * iz[0]
    b = b / b.sum(-1, keepdim=True)
    points = b @ corners  # (N, 3)
    origins, dirs = get_rays(cams, H, W)
    to_point = torch.nn.functional.normalize(points - origins[0][covered].double(), dim=-1)
    torch.testing.assert_close(to_point, dirs[0][covered].double(), atol=1e-5, rtol=0)
    # and the z-buffer's depth is that point's distance along the view axis
    view_axis = -cams.c2w[0, :3, 2].double()
    depth = ((points - cams.position[0].double()) * view_axis).sum(-1)
    torch.testing.assert_close(1.0 / frag.inv_depth[covered].double(), depth, rtol=1e-5, atol=0)


def test_flat_vertex_and_texture_colours_come_out_unchanged():
    cams = look_at(0.0, 30.0, 2.0, 45.0)
    box = trimesh.creation.box(extents=(0.6, 0.6, 0.6))
    box.visual.vertex_colors = np.tile(np.array([[200, 30, 90, 255]], np.uint8), (len(box.vertices), 1))
    img = render_mesh(box, cams, H, W, gltf_frame=False)
    mask = img.mask[0, 0] > 0
    assert mask.sum() > 500
    torch.testing.assert_close(img.rgb[0][:, mask].T, torch.tensor([[200, 30, 90]]).expand(int(mask.sum()), 3) / 255.0,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(img.rgb[0][:, ~mask], torch.ones(3, int((~mask).sum())))  # white background
    # a one-colour texture
    textured = trimesh.Trimesh(box.vertices, box.faces, process=False)
    image = np.full((8, 8, 3), (10, 140, 250), np.uint8)
    from PIL import Image

    textured.visual = trimesh.visual.TextureVisuals(
        uv=np.random.default_rng(0).random((len(box.vertices), 2)),
        material=trimesh.visual.material.PBRMaterial(baseColorTexture=Image.fromarray(image)),
    )
    img = render_mesh(textured, cams, H, W, gltf_frame=False)
    torch.testing.assert_close(img.rgb[0][:, mask].T, torch.tensor([[10, 140, 250]]).expand(int(mask.sum()), 3) / 255.0,
                               atol=1e-5, rtol=0)


def test_sample_texture_hits_texel_centres_and_blends_in_linear_light():
    from dreamfield.export.gltf import linear_to_srgb, srgb_to_linear

    image = np.zeros((2, 2, 3), np.uint8)
    image[0, 0] = (255, 0, 0)  # top-left texel: u = 0.25, v = 0.75
    image[0, 1] = (0, 0, 255)  # top-right: u = 0.75, v = 0.75
    got = sample_texture(image, np.array([[0.25, 0.75], [0.75, 0.75], [0.5, 0.75]]))
    torch.testing.assert_close(got[0], torch.tensor([1.0, 0.0, 0.0]))
    torch.testing.assert_close(got[1], torch.tensor([0.0, 0.0, 1.0]))
    half = float(linear_to_srgb(0.5 * srgb_to_linear(1.0)))  # the mean of 1 and 0 in linear light, re-encoded
    torch.testing.assert_close(got[2], torch.tensor([half, 0.0, half]), atol=1e-5, rtol=0)


def test_psnr_closed_form():
    a = torch.zeros(1, 3, 4, 4)
    b = a + 0.1
    mask = torch.zeros(1, 1, 4, 4)
    mask[..., :2, :] = 1
    assert psnr(a, b, mask) == pytest.approx(20.0)  # 10 log10(1 / 0.01)
    assert psnr(a, a, mask) == math.inf


def test_mesh_vs_field_scores_the_true_mesh_high_and_a_shifted_one_lower():
    # a sharp sphere field (a grazing ray turns opaque within ~0.005 of the surface: the IoU bound allows
    # for that halo) and the exact sphere mesh, glTF frame
    red, r = (0.8, 0.2, 0.1), 0.5
    field = SphereField(radius=r, colour=red, peak=2000.0, width=0.001)
    world = trimesh.creation.icosphere(subdivisions=4, radius=r)
    mesh = trimesh.Trimesh(world.vertices[:, [1, 2, 0]], world.faces, process=False)  # world -> glTF Y up
    mesh.visual.vertex_colors = np.tile(np.array([[204, 51, 26, 255]], np.uint8), (len(mesh.vertices), 1))
    cams = look_at(torch.tensor([0.0, 120.0, 240.0]), 20.0, 1.8, 45.0)
    cfg = RenderConfig(n_samples=256)
    good = mesh_vs_field(field, mesh, cfg, cams, 64)
    assert good["silhouette_iou"] > 0.97 and good["silhouette_iou_min"] > 0.97
    assert good["psnr_colour_db"] > 40 and good["psnr_db"] > 25 and good["psnr_union_db"] > 20
    shifted = mesh.copy()
    shifted.apply_translation([0.15, 0.0, 0.0])  # glTF x = world y
    bad = mesh_vs_field(field, shifted, cfg, cams, 64)
    assert bad["silhouette_iou"] < 0.8 and bad["psnr_db"] < good["psnr_db"] - 5
    assert bad["psnr_union_db"] < good["psnr_union_db"] - 5
    assert bad["psnr_colour_db"] > 40  # the colour where both cover is still right
    recoloured = mesh.copy()
    recoloured.visual.vertex_colors = np.tile(np.array([[26, 51, 204, 255]], np.uint8), (len(mesh.vertices), 1))
    wrong = mesh_vs_field(field, recoloured, cfg, cams, 64)
    assert wrong["silhouette_iou"] == good["silhouette_iou"] and wrong["psnr_colour_db"] < 10
