"""Turntable videos and the contact sheet, rendered from an analytic two-colour sphere."""

from __future__ import annotations

import imageio.v2 as imageio
import numpy as np
import pytest

from dreamfield.config import RenderConfig
from dreamfield.export.video import contact_sheet, turntable, video_size
from dreamfield.scene.background import make_background
from dreamfield.scene.scene import Scene
from fields import SphereField

RED = (0.85, 0.15, 0.15)
BLUE = (0.15, 0.30, 0.85)
FRAMES, RES = 8, 64


@pytest.fixture(scope="module")
def scene():
    cfg = RenderConfig(n_samples=48, background="constant", background_color=(1.0, 1.0, 1.0))
    return Scene(SphereField(radius=0.5, colour=RED, top_colour=BLUE), make_background(cfg)), cfg


@pytest.fixture(scope="module")
def written(scene, tmp_path_factory):
    sc, cfg = scene
    out = tmp_path_factory.mktemp("video") / "turntable.mp4"
    paths = turntable(sc, cfg, out, FRAMES, 10, RES, 20.0, 1.8, 45.0, normals=True, gif=True)
    return out, paths


def read_frames(path) -> np.ndarray:
    reader = imageio.get_reader(path)
    try:
        return np.stack([np.asarray(f) for f in reader])
    finally:
        reader.close()


def test_video_size_is_a_multiple_of_16():
    assert [video_size(r) for r in (16, 50, 64, 100, 128)] == [16, 64, 64, 112, 128]
    with pytest.raises(ValueError):
        video_size(0)


def test_turntable_mp4_frames_and_size(written):
    out, paths = written
    assert [p.name for p in paths] == ["turntable.mp4", "turntable_normals.mp4", "turntable.gif"]
    frames = read_frames(out)
    assert frames.shape == (FRAMES, RES, RES, 3)
    # the sphere fills the middle, the white background the corners (the codec is lossy: loose bounds)
    mid = frames[:, RES // 2, RES // 2].astype(int)
    assert (frames[:, 1, 1].astype(int) > 235).all()
    assert (mid.max(axis=1) - mid.min(axis=1) > 60).all()  # saturated, not white or grey


def test_turntable_is_upright(written):
    frames = read_frames(written[0]).astype(int)
    upper, lower = frames[:, RES // 4, RES // 2], frames[:, 3 * RES // 4, RES // 2]
    assert (upper[:, 2] > upper[:, 0] + 40).all()  # world +z half is blue, at the top of every frame
    assert (lower[:, 0] > lower[:, 2] + 40).all()  # the lower half is red


def test_side_by_side_normals_and_gif(written):
    out, paths = written
    side = read_frames(paths[1])
    assert side.shape == (FRAMES, RES, 2 * RES, 3)
    centre_normal = side[:, RES // 2, RES + RES // 2].astype(int)  # faces the camera: (0, 0, 1) -> (128, 128, 255)
    assert (np.abs(centre_normal - [128, 128, 255]) < 30).all(), centre_normal
    gif = imageio.mimread(paths[2])
    assert len(gif) == FRAMES and np.asarray(gif[0]).shape[:2] == (RES, RES)


def test_contact_sheet(scene, tmp_path):
    sc, cfg = scene
    path = contact_sheet(sc, cfg, tmp_path / "views.png", n_views=3, resolution=32)
    sheet = imageio.imread(path)
    assert sheet.shape[:2] == (64, 96)
    for k in range(3):  # every view: white corner, blue above red, normal row bluish at the centre
        view, normal = sheet[:32, 32 * k : 32 * (k + 1)].astype(int), sheet[32:, 32 * k : 32 * (k + 1)].astype(int)
        assert (view[0, 0, :3] == 255).all()
        assert view[8, 16, 2] > view[8, 16, 0] and view[24, 16, 0] > view[24, 16, 2]
        assert np.abs(normal[16, 16, :3] - [128, 128, 255]).max() < 30
