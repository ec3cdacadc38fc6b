"""Pictures of a field: turntable videos (MP4, optional GIF) and a PNG contact sheet.

Every frame is rendered by the one renderer, :func:`dreamfield.scene.render.render`, from cameras on
an orbit (:func:`dreamfield.scene.cameras.orbit_cameras`: azimuth 0..360 exclusive, starting at the
front, +x) with Lambertian shading and a headlight.

Normal pictures show camera-space normals (x right, y up, z toward the viewer) mapped from [-1, 1]
to [0, 1], so a surface facing the camera is light blue in every frame, composited over white by
the rendered opacity.
"""

from __future__ import annotations

from pathlib import Path

import imageio.v2 as imageio
import numpy as np
import torch

from PIL import Image

from dreamfield.config import RenderConfig
from dreamfield.files import atomic_path
from dreamfield.scene.cameras import Cameras, orbit_cameras
from dreamfield.scene.scene import Scene

MACRO_BLOCK = 16  # H.264 codes 16 x 16 macroblocks; players expect frame sides that are multiples


def video_size(resolution: int) -> int:
    """The square frame side used for `resolution`: rounded up to a multiple of 16, so that
    libx264 + yuv420p never has to rescale (imageio would otherwise resize with a warning)."""
    if resolution < 1:
        raise ValueError(f"video resolution must be >= 1, got {resolution}")
    return -(-resolution // MACRO_BLOCK) * MACRO_BLOCK


def to_uint8(img: torch.Tensor) -> np.ndarray:
    """(3, H, W) float in [0, 1] -> (H, W, 3) uint8."""
    return (img.clamp(0.0, 1.0) * 255.0 + 0.5).to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def normal_image(normal: torch.Tensor, opacity: torch.Tensor, c2w: torch.Tensor) -> torch.Tensor:
    """Normals as a picture.

    Args:
        normal: (B, 3, H, W) world-space normals as rendered (unit or opacity-weighted: only the
            direction is used).
        opacity: (B, 1, H, W) accumulated opacity.
        c2w: (B, 4, 4) camera-to-world.
    Returns:
        (B, 3, H, W) in [0, 1]: opacity * (n_cam + 1) / 2 + (1 - opacity) * white.
    """
    rot = c2w[:, :3, :3]  # (B, 3, 3), columns = camera axes in world
    n_cam = torch.einsum("bji,bjhw->bihw", rot, normal)  # R^T n
    n_cam = torch.nn.functional.normalize(n_cam, dim=1, eps=1e-8)
    a = opacity.clamp(0.0, 1.0)
    return a * (n_cam + 1.0) * 0.5 + (1.0 - a)


@torch.no_grad()
def image_grid(images: torch.Tensor, nrow: int) -> Image.Image:
    """(N, 3, H, W) in [0, 1] -> one PIL image, ``nrow`` images per row (white where a row is short)."""
    n, _, h, w = images.shape
    rows = -(-n // nrow)
    canvas = torch.ones(3, rows * h, nrow * w)
    for i in range(n):
        r, c = divmod(i, nrow)
        canvas[:, r * h : (r + 1) * h, c * w : (c + 1) * w] = images[i].detach().float().cpu()
    arr = (canvas.clamp(0, 1).permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
    return Image.fromarray(arr)


def render_views(
    scene: Scene, render_cfg: RenderConfig, cams: Cameras, size: int, occupancy=None
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Render each camera in turn (B = 1, Lambertian).

    Returns rgb frames and normal frames, each a list of (size, size, 3) uint8.
    """
    rgb, normals = [], []
    for k in range(len(cams)):
        cam = cams[k]
        out = scene.render(cam, size, size, render_cfg, "lambertian", occupancy)
        rgb.append(to_uint8(out.rgb[0]))
        normals.append(to_uint8(normal_image(out.normal, out.opacity, cam.c2w)[0]))
    return rgb, normals


def write_mp4(path: str | Path, frames: list[np.ndarray], fps: int) -> Path:
    """H.264 (libx264, yuv420p) MP4 of (H, W, 3) uint8 frames whose sides are multiples of 16,
    written atomically (an interrupted write keeps the previous file)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        _encode_mp4(tmp, frames, fps)
    return path


def _encode_mp4(path: Path, frames: list[np.ndarray], fps: int) -> None:
    writer = imageio.get_writer(
        path,
        format="FFMPEG",
        mode="I",
        fps=fps,
        codec="libx264",
        pixelformat="yuv420p",
        macro_block_size=MACRO_BLOCK,
        ffmpeg_log_level="error",
    )
    try:
        for frame in frames:
            writer.append_data(frame)
    finally:
        writer.close()


def turntable(
    scene: Scene,
    render_cfg: RenderConfig,
    path: str | Path,
    frames: int,
    fps: int,
    resolution: int,
    elevation: float,
    distance: float,
    fov: float,
    normals: bool = True,
    gif: bool = False,
    occupancy=None,
) -> list[Path]:
    """A turntable of the field: `frames` views on an orbit at `elevation` degrees, `distance`
    from the origin, vertical field of view `fov` degrees.

    Writes `path` (MP4, frames of video_size(resolution)^2); with `normals`, also
    ``<stem>_normals.mp4`` with rgb | normals side by side (2 x wider); with `gif`, ``<stem>.gif``
    (rgb, looping). The scene is rendered on the device of its field.
    Returns the paths written.
    """
    if frames < 1 or fps < 1:
        raise ValueError(f"turntable needs frames >= 1 and fps >= 1, got frames={frames}, fps={fps}")
    path = Path(path)
    size = video_size(resolution)
    cams = orbit_cameras(frames, elevation, distance, fov, device=scene.device)
    rgb, nrm = render_views(scene, render_cfg, cams, size, occupancy)

    written = [write_mp4(path, rgb, fps)]
    if normals:
        side = [np.concatenate([c, n], axis=1) for c, n in zip(rgb, nrm)]
        written.append(write_mp4(path.with_name(f"{path.stem}_normals.mp4"), side, fps))
    if gif:
        gif_path = path.with_suffix(".gif")
        with atomic_path(gif_path) as tmp:
            imageio.mimsave(tmp, rgb, format="GIF", duration=1000.0 / fps, loop=0)
        written.append(gif_path)
    return written


def contact_sheet(
    scene: Scene,
    render_cfg: RenderConfig,
    path: str | Path,
    n_views: int = 4,
    resolution: int = 128,
    elevation: float = 20.0,
    distance: float = 1.8,
    fov: float = 45.0,
    occupancy=None,
) -> Path:
    """A PNG of `n_views` views evenly spaced in azimuth (starting at the front): rgb in the top
    row, normals in the bottom row; the image is (2 R, n_views R, 3) for R = resolution."""
    if n_views < 1:
        raise ValueError(f"contact sheet needs n_views >= 1, got {n_views}")
    if resolution < 1:
        raise ValueError(f"contact sheet resolution must be >= 1, got {resolution}")
    cams = orbit_cameras(n_views, elevation, distance, fov, device=scene.device)
    rgb, nrm = render_views(scene, render_cfg, cams, resolution, occupancy)
    sheet = np.concatenate([np.concatenate(rgb, axis=1), np.concatenate(nrm, axis=1)], axis=0)
    path = Path(path)
    with atomic_path(path) as tmp:
        imageio.imwrite(tmp, sheet, format="PNG")
    return path
