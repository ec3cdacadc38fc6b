"""``report.html`` of a run folder: one page that shows what a run did, readable offline.

The page holds the prompt and the resolved config, the preview strip over steps, the logged metrics
as curves (inline SVG drawn here: no JavaScript library), the turntable videos, an interactive 3D
view of ``mesh.glb`` with ``<model-viewer>`` (npm ``@google/model-viewer``), ``export.json``'s
mesh-vs-field figures, the timings, and for edit runs the before/after image and ``source.json``.

Self-contained and offline: nothing is fetched from the network. Images and videos are referred
to by their relative paths inside the run folder; model-viewer's script is copied into
``report_assets/``; the GLB is inlined as a ``data:`` URI. Why both of the latter: a page opened
from disk (``file://``) has an opaque origin, and Chromium then refuses ES-module scripts and
``fetch()`` of other ``file://`` URLs (CORS), while classic scripts, ``<img>``, ``<video>`` and
``data:`` URIs load. So the report copies the UMD build (``dist/model-viewer-umd.min.js``, a
classic script) rather than the ES-module ``dist/model-viewer.min.js``, and model-viewer reads the
mesh from a ``data:`` URI rather than from ``mesh.glb``. Served over http, the same page works too.

The report is rebuilt at every preview of a running optimisation, so any file may be missing (no
mesh yet, no metrics yet, a half-written last metrics line); each section then says what is absent.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
import re
import shutil
from pathlib import Path
from typing import Optional

import yaml

from dreamfield.errors import UsageError
from dreamfield.files import atomic_path, read_json, read_jsonl, write_bytes

REPORT_NAME = "report.html"
ASSETS_DIR = "report_assets"
MODEL_VIEWER_ENV = "DREAMFIELD_MODEL_VIEWER"  # path of model-viewer-umd.min.js, overrides the repo's .tools
MODEL_VIEWER_FILE = "model-viewer-umd.min.js"
# where `make` installs it: npm install --prefix .tools @google/model-viewer
MODEL_VIEWER_TOOLS = Path(".tools") / "node_modules" / "@google" / "model-viewer" / "dist" / MODEL_VIEWER_FILE
INLINE_GLB_MAX_BYTES = 64 * 2**20  # larger meshes are linked instead (they then load only over http)
REFRESH_SECONDS = 30  # reload interval of the page of a run in progress
MAX_PREVIEWS = 24  # previews shown in the strip, evenly spaced over the run, the last one always

# metric key -> curve title; the first four are always drawn (an empty chart says "no data yet")
CURVES = {
    "loss": "loss",
    "t": "timestep t",
    "distill_norm": "gradient norm |g| (distill_norm)",
    "opacity": "opacity regulariser",
    "entropy": "entropy regulariser",
    "orientation": "orientation penalty",
    "resolution": "render resolution",
    "sec": "seconds per step",
}
ALWAYS_DRAWN = ("loss", "t", "distill_norm", "opacity")


class NotARunError(UsageError):
    """The folder given is not a dreamfield run folder (one line; a ValueError)."""


# ----------------------------------------------------------------------------------------------
# reading the run folder (every reader tolerates a missing or half-written file)




def read_metrics(path: Path) -> list[dict]:
    """The records of ``metrics.jsonl`` that carry a step, in order; unreadable lines (a line being written) are
    skipped."""
    return [r for r in read_jsonl(path) if isinstance(r.get("step"), (int, float))]


def preview_steps(run_dir: Path) -> list[tuple[int, str]]:
    """(step, relative path) of ``previews/step_XXXXXX.png``, by step."""
    found = []
    for p in (run_dir / "previews").glob("step_*.png"):
        m = re.fullmatch(r"step_(\d+)\.png", p.name)
        if m:
            found.append((int(m.group(1)), f"previews/{p.name}"))
    return sorted(found)


def total_steps(config_text: str) -> Optional[int]:
    """``optim.steps`` of a resolved config.yaml, or None if it cannot be read."""
    try:
        steps = (yaml.safe_load(config_text) or {}).get("optim", {}).get("steps")
    except (yaml.YAMLError, AttributeError):
        return None
    return steps if isinstance(steps, int) else None


def find_model_viewer() -> Optional[Path]:
    """model-viewer's UMD script: ``$DREAMFIELD_MODEL_VIEWER`` if set, else the repository's ``.tools``."""
    env = os.environ.get(MODEL_VIEWER_ENV)
    candidate = Path(env) if env else Path(__file__).resolve().parents[2] / MODEL_VIEWER_TOOLS
    return candidate if candidate.is_file() else None


def copy_asset(src: Path, run_dir: Path) -> str:
    """Copy ``src`` into ``run_dir/report_assets/`` (atomically, only when it differs); its relative path."""
    dest = run_dir / ASSETS_DIR / src.name
    if not (dest.is_file() and dest.stat().st_size == src.stat().st_size and dest.read_bytes() == src.read_bytes()):
        with atomic_path(dest) as tmp:
            shutil.copyfile(src, tmp)
    return f"{ASSETS_DIR}/{src.name}"


# ----------------------------------------------------------------------------------------------
# pieces of the page


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value)


def _nice_range(lo: float, hi: float) -> tuple[float, float]:
    if hi - lo <= 1e-12 * max(1.0, abs(hi)):  # a constant curve: centre it in a small band
        pad = max(abs(hi) * 0.05, 1e-6)
        return lo - pad, hi + pad
    return lo, hi


def svg_curve(steps: list[float], values: list[float], title: str, width: int = 360, height: int = 180) -> str:
    """A line chart of values over steps as an inline ``<svg>`` (non-finite values are left out)."""
    pts = [(float(s), float(v)) for s, v in zip(steps, values) if math.isfinite(s) and math.isfinite(v)]
    left, right, top, bottom = 58, 12, 24, 30
    pw, ph = width - left - right, height - top - bottom
    parts = [
        f'<svg class="curve" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{_e(title)}">',
        f'<text x="{left}" y="15" class="title">{_e(title)}</text>',
        f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>',
    ]
    if not pts:
        parts.append(f'<text x="{left + pw / 2}" y="{top + ph / 2}" text-anchor="middle">no data yet</text></svg>')
        return "".join(parts)
    x0, x1 = _nice_range(min(p[0] for p in pts), max(p[0] for p in pts))
    y0, y1 = _nice_range(min(p[1] for p in pts), max(p[1] for p in pts))

    def xy(s: float, v: float) -> str:
        return f"{left + (s - x0) / (x1 - x0) * pw:.1f},{top + (1 - (v - y0) / (y1 - y0)) * ph:.1f}"

    if len(pts) == 1:
        cx, cy = xy(*pts[0]).split(",")
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="3" class="line"/>')
    else:
        parts.append(f'<polyline class="line" points="{" ".join(xy(s, v) for s, v in pts)}"/>')
    for v, y in ((y1, top), (y0, top + ph)):
        parts.append(f'<text x="{left - 4}" y="{y + 4}" text-anchor="end">{_e(f"{v:.4g}")}</text>')
    for s, anchor, x in ((x0, "start", left), (x1, "end", left + pw)):
        parts.append(f'<text x="{x}" y="{height - 10}" text-anchor="{anchor}">{_e(f"{s:.6g}")}</text>')
    parts.append(f'<text x="{left + pw / 2}" y="{height - 10}" text-anchor="middle">step</text></svg>')
    return "".join(parts)


def metric_curves(records: list[dict]) -> str:
    """One chart per numeric metric: the four of ALWAYS_DRAWN, then the other known and unknown keys."""
    numeric = {k for r in records for k, v in r.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    numeric.discard("step")
    keys = list(ALWAYS_DRAWN) + [k for k in CURVES if k in numeric and k not in ALWAYS_DRAWN]
    keys += sorted(numeric - set(keys))
    charts = []
    for key in keys:
        rows = [r for r in records if isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool)]
        charts.append(svg_curve([r["step"] for r in rows], [r[key] for r in rows], CURVES.get(key, key)))
    return f'<div class="curves">{"".join(charts)}</div>'


def key_value_table(data: dict, prefix: str = "") -> str:
    """A two-column table of a JSON object; nested objects become dotted keys."""

    def flat(d: dict, pre: str):
        for k, v in d.items():
            if isinstance(v, dict) and v:
                yield from flat(v, f"{pre}{k}.")
            else:
                yield f"{pre}{k}", v

    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_e(_fmt(v))}</td></tr>" for k, v in flat(data, prefix))
    return f'<table class="kv">{rows}</table>'


def preview_strip(previews: list[tuple[int, str]]) -> str:
    if not previews:
        return '<p class="missing">no previews yet</p>'
    if len(previews) > MAX_PREVIEWS:  # evenly spaced, always the first and the last
        n = len(previews) - 1
        previews = [previews[round(i * n / (MAX_PREVIEWS - 1))] for i in range(MAX_PREVIEWS)]
    cells = "".join(
        f'<figure><img src="{_e(path)}" alt="preview at step {step}" loading="lazy">'
        f"<figcaption>step {step}</figcaption></figure>"
        for step, path in previews
    )
    return f'<div class="strip">{cells}</div>'


def mesh_viewer(run_dir: Path, viewer_src: Optional[str]) -> str:
    """The ``<model-viewer>`` of mesh.glb, or a line saying why there is none."""
    glb = run_dir / "mesh.glb"
    if not glb.is_file():
        return '<p class="missing">no mesh.glb yet (it is exported at the end of the run)</p>'
    if viewer_src is None:
        return (
            '<p class="missing">3D viewer not available: model-viewer is not installed (run <code>make</code>, '
            f"or set {MODEL_VIEWER_ENV} to model-viewer-umd.min.js); "
            '<a href="mesh.glb">mesh.glb</a> opens in any glTF viewer.</p>'
        )
    size = glb.stat().st_size
    if size <= INLINE_GLB_MAX_BYTES:
        src = "data:model/gltf-binary;base64," + base64.b64encode(glb.read_bytes()).decode("ascii")
        note = ""
    else:
        src = "mesh.glb"
        note = (
            f'<p class="missing">mesh.glb ({size / 2**20:.0f} MiB) is linked, not inlined: '
            "serve this folder over http to view it.</p>"
        )
    return (
        f'<model-viewer id="mesh-viewer" src="{src}" alt="the exported mesh" camera-controls auto-rotate '
        'interaction-prompt="none" shadow-intensity="1"></model-viewer>'
        f'{note}<p><a href="mesh.glb">mesh.glb</a> ({size / 1024:.0f} KiB)</p>'
    )


def videos(run_dir: Path) -> str:
    parts = []
    for name, caption in (("turntable.mp4", "turntable"), ("turntable_normals.mp4", "rgb | normals")):
        if (run_dir / name).is_file():
            parts.append(
                f'<figure><video id="{name.split(".")[0]}" src="{name}" controls autoplay loop muted playsinline>'
                f'</video><figcaption>{caption}</figcaption></figure>'
            )
    if (run_dir / "views.png").is_file():
        parts.append('<figure><img src="views.png" alt="contact sheet"><figcaption>views</figcaption></figure>')
    if not parts:
        return '<p class="missing">no turntable yet (it is rendered at the end of the run)</p>'
    return f'<div class="media">{"".join(parts)}</div>'


def edit_section(run_dir: Path) -> str:
    parts = []
    if (run_dir / "before_after.png").is_file():
        parts.append(
            '<figure><img src="before_after.png" alt="source views over edited views">'
            "<figcaption>source (top) / edited (bottom)</figcaption></figure>"
        )
    else:
        parts.append('<p class="missing">no before_after.png yet (it is rendered at the end of the edit)</p>')
    source = read_json(run_dir / "source.json")
    parts.append("<h3>source.json</h3>" + (key_value_table(source) if source else '<p class="missing">no source.json</p>'))
    return "".join(parts)


def progress(records: list[dict], previews: list[tuple[int, str]], total: Optional[int]) -> tuple[int, bool]:
    """(steps done, finished): the last logged step + 1 or the last preview's step, whichever is later
    (the loop logs and previews the final step)."""
    done = max([int(r["step"]) + 1 for r in records[-1:]] + [s for s, _ in previews[-1:]] + [0])
    return done, total is not None and done >= total


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; max-width: 1400px; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
.status { color: #555; } .missing { color: #888; font-style: italic; }
.strip { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 6px; }
.strip img { height: 160px; image-rendering: pixelated; } figure { margin: 0; } figcaption { color: #555; font-size: 12px; }
.media { display: flex; gap: 12px; flex-wrap: wrap; align-items: flex-start; }
video, .media img { height: 256px; image-rendering: pixelated; background: #eee; }
model-viewer { width: 480px; height: 480px; background: #f4f4f4; display: block; }
.curves { display: flex; flex-wrap: wrap; gap: 12px; }
svg.curve { background: #fafafa; } svg.curve text { font-size: 11px; fill: #444; }
svg.curve text.title { font-size: 12px; font-weight: 600; }
svg.curve .frame { fill: none; stroke: #ccc; } svg.curve .line { fill: none; stroke: #1f77b4; stroke-width: 1.5; }
svg.curve circle.line { fill: #1f77b4; }
table.kv { border-collapse: collapse; } table.kv th, table.kv td { text-align: left; padding: 2px 12px 2px 0; }
table.kv th { font-weight: 500; color: #555; }
pre { background: #f6f6f6; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


def _header(run_dir: Path, meta: dict, done: int, total: Optional[int], finished: bool) -> str:
    prompt = meta.get("prompt", "")
    lines = [f"<h1>{_e(prompt) if prompt else 'dreamfield run'}</h1>"]
    if meta.get("command") == "edit":
        lines.append(
            f'<p>edit ({_e(meta.get("method", "dds"))}): <q>{_e(meta.get("source_prompt", ""))}</q> &rarr; '
            f"<q>{_e(prompt)}</q></p>"
        )
    state = "finished" if finished else "unfinished"  # running, or stopped and not resumed
    of = f" of {total}" if total is not None else ""
    lines.append(f'<p class="status">{_e(run_dir.name)}: {_e(meta.get("command", "run"))}, step {done}{of}, {state}</p>')
    return "".join(lines)


def render_report(run_dir: Path, viewer_src: Optional[str]) -> str:
    """The page's HTML for ``run_dir``; ``viewer_src`` is model-viewer's script path relative to it (None: absent)."""
    meta = read_json(run_dir / "prompt.json") or {}
    try:
        config_text = (run_dir / "config.yaml").read_text()
    except OSError:
        config_text = ""
    records = read_metrics(run_dir / "metrics.jsonl")
    previews = preview_steps(run_dir)
    total = total_steps(config_text)
    done, finished = progress(records, previews, total)
    timing = read_json(run_dir / "timing.json")
    export = read_json(run_dir / "export.json")
    head = f'<script src="{_e(viewer_src)}"></script>' if viewer_src and (run_dir / "mesh.glb").is_file() else ""
    sections = [
        _header(run_dir, meta, done, total, finished),
        "<h2>Previews</h2>" + preview_strip(previews),
        "<h2>Metrics</h2>" + (metric_curves(records) if records else '<p class="missing">no metrics yet</p>'),
        "<h2>Turntable</h2>" + videos(run_dir),
        "<h2>Mesh</h2>" + mesh_viewer(run_dir, viewer_src),
    ]
    if export is not None:
        sections.append("<h2>Export (export.json)</h2>" + key_value_table(export))
    if meta.get("command") == "edit" or (run_dir / "source.json").is_file():
        sections.append("<h2>Edit</h2>" + edit_section(run_dir))
    timings = key_value_table(timing) if timing else '<p class="missing">no timing.json yet</p>'
    config = f"<details><summary>config.yaml</summary><pre>{_e(config_text)}</pre></details>"
    sections += ["<h2>Timings</h2>" + timings, "<h2>Config</h2>" + (config if config_text else '<p class="missing">no config.yaml</p>')]
    title = f"dreamfield: {meta.get('prompt') or run_dir.name}"
    if not finished:  # rewritten at every preview while it runs: a browser showing the page follows the run
        head += f'<meta http-equiv="refresh" content="{REFRESH_SECONDS}">'
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<link rel="icon" href="data:,"><style>{CSS}</style>{head}</head>\n'
        f"<body>{''.join(sections)}</body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir/report.html`` (atomically) and copy model-viewer into ``run_dir/report_assets/``;
    returns the report's path. Raises NotARunError (a ValueError) for a folder that is not a run."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise NotARunError(f"run folder not found: {run_dir}")
    if not (run_dir / "config.yaml").is_file():
        raise NotARunError(f"{run_dir} is not a dreamfield run folder (no config.yaml)")
    viewer = find_model_viewer()
    viewer_src = copy_asset(viewer, run_dir) if viewer is not None and (run_dir / "mesh.glb").is_file() else None
    path = run_dir / REPORT_NAME
    return write_bytes(path, render_report(run_dir, viewer_src).encode("utf-8"))
