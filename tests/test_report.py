"""report.html of a run folder: its content offline (no browser), then the real page in headless Chromium.

The run is a real `dreamfield generate` with the embedded toy prior: a few steps and a small export.
"""

from __future__ import annotations

import json
import shutil
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote

import numpy as np
import pytest
from PIL import Image

from dreamfield.cli import main
from dreamfield.export import report
from dreamfield.export.report import NotARunError, svg_curve, write_report

STEPS = 4
SMALL_RUN = [
    "--steps", str(STEPS), "--quiet", "--set", "run.preview_every=2", "--set", "run.log_every=1",
    "--set", "run.threads=1", "--set", "export.resolution=32", "--set", "export.video_frames=8",
    "--set", "export.video_fps=8", "--set", "export.video_resolution=64",
    # a 4-step blob peaks near density 2.7: export its level-1 surface (the smoke generate's level)
    "--set", "export.threshold=1",
]


@pytest.fixture(scope="module")
def toy_run(tmp_path_factory) -> Path:
    """A finished generate run (embedded prior), exported; model-viewer found in the repository's .tools."""
    run = tmp_path_factory.mktemp("report") / "run"
    assert main(["generate", "a red cube", "--out", str(run)] + SMALL_RUN) == 0
    return run


def copy_run(run: Path, dest: Path, keep=None) -> Path:
    """A copy of a run folder, with only the names in ``keep`` when given."""
    if keep is None:
        shutil.copytree(run, dest)
        return dest
    dest.mkdir()
    for name in keep:
        src = run / name
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src, dest / name) if src.is_dir() else shutil.copy(src, dest / name)
    return dest


class Links(HTMLParser):
    """Every src/href of a page, and the tags seen."""

    def __init__(self):
        super().__init__()
        self.links, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.links += [v for k, v in attrs if k in ("src", "href") and v is not None]


def links_of(page: Path) -> Links:
    parser = Links()
    parser.feed(page.read_text())
    return parser


def need_model_viewer() -> None:
    if report.find_model_viewer() is None:
        import os

        message = "model-viewer is not installed (make installs it with npm under .tools/)"
        if os.environ.get("CI"):
            pytest.fail(message + "; in CI it must be there")
        pytest.skip(message)


# ----------------------------------------------------------------------------------------------
# content, no browser


def test_report_of_finished_run_is_offline_and_complete(toy_run):
    need_model_viewer()
    page = write_report(toy_run)
    assert page == toy_run / "report.html"
    text = page.read_text()
    # offline: no network URL anywhere in the page, every link a file inside the run folder or inline data
    assert "http://" not in text and "https://" not in text and "//cdn" not in text
    parsed = links_of(page)
    for link in parsed.links:
        if link.startswith("data:"):
            continue
        assert ":" not in link and not link.startswith("/"), link
        target = (toy_run / unquote(link)).resolve()
        assert target.is_file() and toy_run.resolve() in target.parents, link
    # the sections: prompt, previews of every preview step, curves, videos, the viewer with the inlined mesh
    assert "<h1>a red cube</h1>" in text and f"step {STEPS} of {STEPS}, finished" in text
    assert "refresh" not in text  # a finished run's page stays put
    for step in (2, 4):
        assert f"previews/step_{step:06d}.png" in parsed.links
    for title in ("loss", "timestep t", "gradient norm |g| (distill_norm)", "opacity regulariser"):
        assert f'aria-label="{title}"' in text, title
    assert text.count("<polyline") >= 4  # 4 logged steps: every curve is a line
    assert "turntable.mp4" in parsed.links and "turntable_normals.mp4" in parsed.links and "views.png" in parsed.links
    assert "model-viewer" in parsed.tags and "report_assets/model-viewer-umd.min.js" in parsed.links
    assert (toy_run / "report_assets" / "model-viewer-umd.min.js").read_bytes() == report.find_model_viewer().read_bytes()
    import base64

    inlined = text.split('src="data:model/gltf-binary;base64,', 1)[1].split('"', 1)[0]
    assert base64.b64decode(inlined) == (toy_run / "mesh.glb").read_bytes()
    timing = json.loads((toy_run / "timing.json").read_text())
    assert "<th>optimize_seconds</th>" in text and f"{timing['optimize_seconds']:.4g}" in text
    assert "optim:\n  steps: 4" in text  # the resolved config, verbatim
    # atomic: no temp file left behind; a second write gives the same page
    assert sorted(p.name for p in toy_run.glob(".*")) == [] and not list((toy_run / "report_assets").glob(".*"))
    assert write_report(toy_run).read_text() == text


def test_report_of_run_in_progress(toy_run, tmp_path):
    """Mid-run: config, prompt, two metric lines and a half-written third, one preview; no export yet."""
    run = copy_run(toy_run, tmp_path / "run", keep=["config.yaml", "prompt.json", "previews/step_000002.png"])
    lines = (toy_run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][: len(lines[2]) // 2])
    text = write_report(run).read_text()
    assert f"step 2 of {STEPS}, unfinished" in text and 'http-equiv="refresh"' in text
    assert "no mesh.glb yet" in text and "no turntable yet" in text and "no timing.json yet" in text
    assert "<script" not in text and not (run / "report_assets").exists()  # no viewer without a mesh
    assert text.count("<polyline") >= 4 and "previews/step_000002.png" in text
    # only the config: every section says what is missing
    bare = copy_run(toy_run, tmp_path / "bare", keep=["config.yaml"])
    text = write_report(bare).read_text()
    assert "no previews yet" in text and "no metrics yet" in text and "no mesh.glb yet" in text
    assert "step 0 of 4, unfinished" in text


def test_report_says_when_model_viewer_is_missing(toy_run, tmp_path, monkeypatch):
    run = copy_run(toy_run, tmp_path / "run", keep=["config.yaml", "prompt.json", "mesh.glb"])
    monkeypatch.setenv(report.MODEL_VIEWER_ENV, str(tmp_path / "nowhere" / "model-viewer-umd.min.js"))
    text = write_report(run).read_text()
    assert "3D viewer not available" in text and "<model-viewer" not in text and "<script" not in text
    assert not (run / "report_assets").exists()
    assert '<a href="mesh.glb">mesh.glb</a>' in text


def test_report_of_edit_run_and_export_json(toy_run, tmp_path):
    run = copy_run(toy_run, tmp_path / "edit")
    meta = {"command": "edit", "prompt": "a blue cube", "source_prompt": "a red cube", "method": "dds"}
    (run / "prompt.json").write_text(json.dumps(meta))
    (run / "source.json").write_text(json.dumps({"kind": "mesh", "path": "teapot.obj", "scale": 0.25}))
    shutil.copy(run / "views.png", run / "before_after.png")
    (run / "export.json").write_text(json.dumps({"mesh": {"faces": 1234, "iou_vs_field": 0.9312}, "level": 2.6}))
    text = write_report(run).read_text()
    assert "<q>a red cube</q> &rarr; <q>a blue cube</q>" in text and "edit (dds)" in text
    assert 'src="before_after.png"' in text
    for row in ("<th>kind</th><td>mesh</td>", "<th>scale</th><td>0.25</td>", "<th>mesh.faces</th><td>1234</td>",
                "<th>mesh.iou_vs_field</th><td>0.9312</td>", "<th>level</th><td>2.6</td>"):
        assert row in text, row


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path):
    with pytest.raises(NotARunError, match="no config.yaml") as info:
        write_report(tmp_path)
    assert isinstance(info.value, ValueError) and "\n" not in str(info.value)
    with pytest.raises(NotARunError, match="not found"):
        write_report(tmp_path / "missing")
    assert not (tmp_path / "report.html").exists()


def test_svg_curve_maps_the_data_range_onto_the_frame():
    """Frame: x from 58 to 360-12=348, y from 24 to 180-30=150; the first point (min step, min value) sits
    in the lower left corner, the last (max step, max value) in the upper right; non-finite values are left out."""
    svg = svg_curve([0, 5, 10, 15], [1.0, float("nan"), 2.0, 3.0], "loss")
    points = svg.split('points="')[1].split('"')[0].split()
    assert points == ["58.0,150.0", "251.3,87.0", "348.0,24.0"]
    assert ">3<" in svg and ">1<" in svg  # the value range's ends are labelled
    assert "<circle" in svg_curve([7], [0.5], "t") and "no data yet" in svg_curve([], [], "t")


# ----------------------------------------------------------------------------------------------
# in headless Chromium


def colour_pixels(png: Path) -> dict[str, int]:
    """Counts of clearly red, green, blue and yellow pixels of a screenshot (hue dominance, any shade)."""
    rgb = np.asarray(Image.open(png).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return {
        "red": int(((r > 1.6 * g + 20) & (r > 1.6 * b + 20)).sum()),
        "green": int(((g > 1.6 * r + 20) & (g > 1.6 * b + 20)).sum()),
        "blue": int(((b > 1.6 * r + 20) & (b > 1.6 * g + 20)).sum()),
        "yellow": int(((r > 1.6 * b + 40) & (g > 1.6 * b + 40) & (abs(r - g) < 60)).sum()),
    }


@pytest.mark.slow
def test_report_in_chromium(toy_run, tmp_path):
    """Opened from disk as a user would: the viewer loads the mesh, the video plays, nothing fails."""
    from browser import open_page

    need_model_viewer()
    page_path = write_report(toy_run)
    with open_page(page_path) as page:
        duration = page.wait_for("() => document.getElementById('turntable').duration")
        assert duration == pytest.approx(8 / 8, abs=0.15)  # 8 frames at 8 fps
        page.wait_for("() => { const v = document.getElementById('turntable'); return !v.paused && v.currentTime > 0; }")
        page.evaluate("document.getElementById('mesh-viewer').scrollIntoView()")
        page.wait_for("() => document.getElementById('mesh-viewer').loaded === true", timeout_s=60)
        page.wait_for("() => document.getElementById('mesh-viewer').modelIsVisible === true")
        page.screenshot(tmp_path / "report.png", full_page=False)
        assert page.problems() == []
        # offline: the page's own files, inlined data and the viewer's in-memory blobs (the GLB's texture)
        assert all(u.startswith(("file://", "data:", "blob:")) for u in page.requests), \
            [u for u in page.requests if not u.startswith(("file://", "data:", "blob:"))]
        assert page_path.as_uri() in page.requests
    assert Image.open(tmp_path / "report.png").size == (1280, 900)


def textured_box_glb(path: Path) -> Path:
    """A unit box whose six faces show a texture of four coloured quadrants (red, green, blue, yellow)."""
    import trimesh

    box = trimesh.creation.box()
    box.unmerge_vertices()  # one vertex per triangle corner, so each face gets its own UVs
    corners = box.vertices[box.faces]  # (F, 3, 3)
    normals = np.abs(box.face_normals)  # (F, 3): drop the axis a face looks along, keep the other two as u, v
    uv = np.zeros((len(box.faces), 3, 2))
    for f in range(len(box.faces)):
        keep = [a for a in range(3) if a != int(np.argmax(normals[f]))]
        uv[f] = corners[f][:, keep] + 0.5
    texture = np.zeros((64, 64, 3), np.uint8)
    texture[:32, :32], texture[:32, 32:] = (230, 30, 30), (30, 200, 30)
    texture[32:, :32], texture[32:, 32:] = (30, 30, 230), (230, 220, 30)
    box.visual = trimesh.visual.TextureVisuals(uv=uv.reshape(-1, 2), image=Image.fromarray(texture))
    box.export(path)
    return path


@pytest.mark.slow
def test_textured_glb_alone_in_model_viewer(tmp_path):
    """A trimesh-made textured GLB in a minimal page, served over http (the page fetches box.glb)."""
    from browser import open_page

    need_model_viewer()
    textured_box_glb(tmp_path / "box.glb")
    script = report.copy_asset(report.find_model_viewer(), tmp_path)
    (tmp_path / "viewer.html").write_text(
        f'<!doctype html><html><head><meta charset="utf-8"><link rel="icon" href="data:,">'
        f'<script src="{script}"></script></head><body style="margin:0">'
        '<model-viewer id="mv" src="box.glb" camera-orbit="35deg 65deg auto" interaction-prompt="none" '
        'auto-rotate auto-rotate-delay="0" rotation-per-second="60deg" '
        'style="width:480px;height:480px;background:#fff"></model-viewer></body></html>'
    )
    with open_page(tmp_path / "viewer.html", serve=True, viewport=(480, 480)) as page:
        page.wait_for("() => document.getElementById('mv').loaded === true", timeout_s=60)
        assert page.evaluate(
            "() => document.getElementById('mv').model.materials[0].pbrMetallicRoughness.baseColorTexture.texture !== null"
        )
        page.wait_for("() => document.getElementById('mv').modelIsVisible === true")
        shot = page.screenshot(tmp_path / "box.png", full_page=False)
        # it turns: the turntable angle grows and the picture changes
        angle = page.evaluate("document.getElementById('mv').turntableRotation")
        page.wait_for(f"() => document.getElementById('mv').turntableRotation > {angle} + 0.3")
        turned = page.screenshot(tmp_path / "box_turned.png", full_page=False)
        assert page.problems() == []
        assert any(u.endswith("/box.glb") and u.startswith("http://127.0.0.1:") for u in page.requests)
    for png in (shot, turned):
        seen = colour_pixels(png)  # two or three faces in view, each showing all four quadrants
        assert all(n > 500 for n in seen.values()), (png.name, seen)
    a, b = (np.asarray(Image.open(p).convert("L"), dtype=float) for p in (shot, turned))
    assert np.mean(np.abs(a - b) > 30) > 0.02  # a turn of 0.3 rad moves the quadrants' edges


def test_browser_helper_skips_without_chromium_and_fails_in_ci(tmp_path, monkeypatch):
    import browser

    monkeypatch.setenv(browser.CHROMIUM_ENV, str(tmp_path / "no-chromium"))
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="Chromium not found|playwright is not installed"):
        browser.require_browser()
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="in CI it must be there"):
        browser.require_browser()
