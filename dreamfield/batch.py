"""``dreamfield batch``: many prompts, one Ray task each, then a gallery and a summary of all runs.

Each prompt runs the real command, ``python -m dreamfield generate PROMPT --out DIR/<slug> ...``, in a
subprocess of one Ray task (Moritz et al. 2018, "Ray: a distributed framework for emerging AI
applications"), so a batch is exactly the runs a user would have made by hand, one folder each.
Ray starts in-process on this machine by default; ``--address`` joins a running cluster, whose nodes
write into DIR, so DIR must be on a filesystem that every node and the driver see at the same path.

A batch is idempotent: a run is finished when ``DIR/<slug>/done.json`` exists (written last, atomically,
holding the run's figures); a rerun skips finished runs, resumes interrupted ones from
``checkpoints/last.pt`` (``generate --resume``), and starts again those that stopped before their first
checkpoint, after removing only the files dreamfield writes before it. A failing prompt is recorded with
its one-line error and the others go on. Ctrl-C sends SIGINT to every running ``generate`` (which
checkpoints), waits for them and exits 130.

Outputs besides the run folders: ``DIR/<slug>.log`` (the subprocess's stdout and stderr, one section per
attempt), ``DIR/index.html`` (a gallery), ``DIR/summary.csv`` and ``DIR/summary.json``.
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator, Optional, Sequence
from urllib.parse import quote

from dreamfield.files import clean_tmp, read_json, write_text
from dreamfield.run import slugify  # generate's rule for run-folder names

DONE = "done.json"
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130

# The subprocess inherits the Ray worker's signal mask, in which SIGINT is blocked; a signal mask survives
# exec, so this one-line launcher clears it and execs the command, else `generate` could never see Ctrl-C.
_UNBLOCK_AND_EXEC = "import os, signal, sys; signal.pthread_sigmask(signal.SIG_SETMASK, []); os.execvp(sys.argv[1], sys.argv[1:])"


class BatchInputError(ValueError):
    """A bad prompts file, option or output folder (one line; the batch does not start)."""


class ClusterError(RuntimeError):
    """The Ray cluster of --address cannot be joined (one line)."""


class RunFolderError(RuntimeError):
    """A run folder that the batch must not touch (it holds another prompt's run)."""


# ---------------------------------------------------------------------------------------------- prompts


@dataclass(frozen=True)
class BatchEntry:
    """One prompt of a batch with its own overrides (applied after the batch-wide options)."""

    prompt: str
    seed: Optional[int] = None
    steps: Optional[int] = None
    overrides: tuple[str, ...] = ()  # "key=value", as for --set
    slug: str = ""  # the run folder's name under DIR; set by assign_slugs


def _yaml_entry(item, where: str) -> BatchEntry:
    if isinstance(item, str):
        item = {"prompt": item}
    if not isinstance(item, dict):
        raise BatchInputError(f"{where}: expected a prompt or a mapping with prompt, seed, steps, set")
    unknown = sorted(set(item) - {"prompt", "seed", "steps", "set"})
    if unknown:
        raise BatchInputError(f"{where}: unknown key {unknown[0]!r} (allowed: prompt, seed, steps, set)")
    prompt, seed, steps, sets = item.get("prompt"), item.get("seed"), item.get("steps"), item.get("set", [])
    if not isinstance(prompt, str) or not prompt.strip():
        raise BatchInputError(f"{where}: empty or missing prompt")
    for name, value in (("seed", seed), ("steps", steps)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise BatchInputError(f"{where}: {name} must be an integer, got {value!r}")
    if steps is not None and steps < 1:
        raise BatchInputError(f"{where}: steps must be at least 1, got {steps}")
    if isinstance(sets, str):
        sets = [sets]
    if not isinstance(sets, list) or not all(isinstance(s, str) and "=" in s for s in sets):
        raise BatchInputError(f"{where}: set must be a list of key=value strings, got {sets!r}")
    return BatchEntry(prompt.strip(), seed, steps, tuple(sets))


def read_prompts(path: str | Path) -> list[BatchEntry]:
    """Entries of a prompts file, slugs assigned.

    A ``.yaml``/``.yml`` file is a list whose items are prompts or mappings
    ``{prompt, seed, steps, set: [key=value, ...]}``; any other file is text, one prompt a line, blank lines
    and lines starting with ``#`` skipped. BatchInputError for a missing, empty or malformed file.
    """
    path = Path(path)
    if not path.is_file():
        raise BatchInputError(f"prompts file not found: {path}")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise BatchInputError(f"{path}: not valid YAML ({type(exc).__name__})") from None
        if data is None:
            data = []
        if not isinstance(data, list):
            raise BatchInputError(f"{path}: expected a YAML list of prompts")
        entries = [_yaml_entry(item, f"{path} item {i + 1}") for i, item in enumerate(data)]
    else:
        lines = (line.strip() for line in text.splitlines())
        entries = [BatchEntry(line) for line in lines if line and not line.startswith("#")]
    if not entries:
        raise BatchInputError(f"{path}: no prompts (one a line, or a YAML list)")
    return assign_slugs(entries)


def assign_slugs(entries: Sequence[BatchEntry]) -> list[BatchEntry]:
    """Give each entry a distinct folder name: the prompt's slug, ``-seedS`` when the slug repeats and the
    entry has a seed, then ``-2``, ``-3``... in file order. Entries that already have a slug keep it."""
    base = [e.slug or slugify(e.prompt) for e in entries]
    repeats = Counter(base)
    used: set[str] = set()
    out = []
    for e, b in zip(entries, base):
        stem = f"{b}-seed{e.seed}" if (not e.slug and repeats[b] > 1 and e.seed is not None) else b
        slug, k = stem, 2
        while slug in used:
            slug, k = f"{stem}-{k}", k + 1
        used.add(slug)
        out.append(replace(e, slug=slug))
    return out


# ---------------------------------------------------------------------------------------------- one run (a Ray task)


@dataclass(frozen=True)
class RunSpec:
    """Everything one task needs; paths absolute (a task may run on another node, in another folder)."""

    prompt: str
    slug: str
    run_dir: str
    log_path: str
    new_args: tuple[str, ...]  # generate options for a fresh run (after PROMPT --out RUN)
    resume_args: tuple[str, ...]  # generate options with --resume RUN
    threads: Optional[int]  # torch / OpenMP threads of the run; None = the driver's environment decides
    driver_omp: Optional[str]  # OMP_NUM_THREADS of the driver (Ray sets its own in workers)
    cwd: str  # the driver's folder, where relative paths in --set values resolve
    command: Optional[tuple[str, ...]] = None  # argv prefix of `dreamfield`; None: this node's python -m dreamfield
    grace_seconds: float = 120.0  # after SIGINT, how long a run may take to checkpoint before it is killed


def dreamfield_command() -> list[str]:
    """``python -m dreamfield`` of this interpreter (on a cluster: of the node's interpreter, inside the task)."""
    return [sys.executable, "-m", "dreamfield"]


def read_prompt_json(run_dir: Path) -> Optional[str]:
    try:
        return json.loads((run_dir / "prompt.json").read_text()).get("prompt")
    except (OSError, ValueError, AttributeError):
        return None


def same_prompt(a: str, b: str) -> bool:
    """Equal up to case, spacing and punctuation (generate saves the embedded prior's prompts normalised)."""
    words = lambda text: re.findall(r"[a-z0-9]+", text.lower())  # noqa: E731
    return words(a) == words(b)


def prepare_run(run_dir: Path, prompt: str) -> str:
    """How to (re)start a run folder that has no done marker: "new" or "resume".

    A folder with config.yaml resumes: ``generate --resume`` continues from ``checkpoints/last.pt``, or starts
    again from step 0 under the recorded config when the run stopped before its first checkpoint, so nothing
    is deleted. A folder without config.yaml holds nothing of a run: leftovers of interrupted atomic writes are
    removed and the run starts anew. RunFolderError if the folder holds another prompt's run or files
    dreamfield did not write (``generate --out`` takes only a new or empty folder).
    """
    if not run_dir.exists():
        return "new"
    owner = read_prompt_json(run_dir)
    if owner is not None and not same_prompt(owner, prompt):
        raise RunFolderError(f"{run_dir} holds a run of {owner!r}, not {prompt!r}; give another DIR or remove it")
    if (run_dir / "config.yaml").is_file():
        return "resume"
    clean_tmp(run_dir)
    left = sorted(p.name for p in run_dir.iterdir())
    if left:
        raise RunFolderError(f"{run_dir} holds files dreamfield did not write ({', '.join(left[:3])}); "
                             "remove them or give another DIR")
    return "new"


def _attempt_error(log_path: Path, offset: int, returncode: int) -> str:
    """The one-line error of a failed attempt: its last ``dreamfield: error:`` line, else its last line."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    lines = [l.strip() for l in re.split(r"[\r\n]+", text) if l.strip()]
    errors = [l for l in lines if l.startswith("dreamfield: error:")]
    if errors:
        return errors[-1]
    if returncode < 0:
        return f"killed by {signal.Signals(-returncode).name}"
    return f"exit status {returncode}" + (f": {lines[-1]}" if lines else "")


def _wait(proc: subprocess.Popen, grace: float) -> bool:
    """Wait for proc; on KeyboardInterrupt (Ray's cancel) send SIGINT to its process group, give it ``grace``
    seconds to checkpoint, then SIGKILL. Returns True when interrupted."""
    try:
        while True:
            try:
                proc.wait(timeout=1.0)  # returns as soon as the run ends; the timeout lets the interrupt in
                return False
            except subprocess.TimeoutExpired:
                pass
    except KeyboardInterrupt:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        return True


def _ray_node_id() -> Optional[str]:
    """The Ray node this task runs on (several nodes may share a host name), None outside Ray."""
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


def run_one(spec: RunSpec) -> dict:
    """Run (or resume) one prompt in a subprocess; write its done marker when it succeeded.

    Returns a summary row: prompt, slug, status ("ok", "failed", "interrupted"), error, wall_seconds, node,
    and on success the run's figures (see run_figures). Never raises for a failing run.
    """
    run_dir, log_path = Path(spec.run_dir), Path(spec.log_path)
    row = {"prompt": spec.prompt, "slug": spec.slug, "status": "failed", "error": "", "node": socket.gethostname(),
           "ray_node": _ray_node_id()}
    try:
        mode = prepare_run(run_dir, spec.prompt)
    except (RunFolderError, OSError) as exc:
        return dict(row, error=f"dreamfield: error: {exc}")
    if mode == "resume":
        argv = ["generate", "--resume", spec.run_dir, *spec.resume_args]
    else:
        argv = ["generate", spec.prompt, "--out", spec.run_dir, *spec.new_args]
    env = dict(os.environ)
    if spec.threads is not None:
        argv += ["--set", f"run.threads={spec.threads}"]
        env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(spec.threads)
    elif spec.driver_omp is not None:
        env["OMP_NUM_THREADS"] = spec.driver_omp
    else:
        env.pop("OMP_NUM_THREADS", None)
    cmd = list(spec.command) if spec.command else dreamfield_command()
    log_path.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with open(log_path, "ab") as log:
        log.write(f"# dreamfield batch {time.strftime('%Y-%m-%d %H:%M:%S')} on {row['node']}: {mode}\n".encode())
        log.flush()
        offset = log.tell()  # this attempt's output starts here
        proc = subprocess.Popen(
            [sys.executable, "-c", _UNBLOCK_AND_EXEC, *cmd, *argv], stdout=log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, env=env, cwd=spec.cwd if os.path.isdir(spec.cwd) else None,
            start_new_session=True,  # Ctrl-C in the driver's terminal reaches the runs only through the batch
        )
        interrupted = _wait(proc, spec.grace_seconds)
    row["wall_seconds"] = round(time.perf_counter() - t0, 2)
    if interrupted:
        return dict(row, status="interrupted", error="interrupted (checkpointed; a rerun resumes it)")
    if proc.returncode != 0:
        return dict(row, error=_attempt_error(log_path, offset, proc.returncode))
    row.update(status="ok", finished=time.strftime("%Y-%m-%dT%H:%M:%S"), **run_figures(run_dir, spec.prompt))
    run_dir.mkdir(parents=True, exist_ok=True)  # a stand-in command may not have made it
    write_text(run_dir / DONE, json.dumps(row, indent=1) + "\n")
    return row


# ---------------------------------------------------------------------------------------------- figures of a run


def _flatten(data: dict, prefix: str) -> dict:
    """Scalars of a JSON object as ``prefix.key`` columns (one level of nesting: ``prefix.a.b``)."""
    out = {}
    for k, v in data.items():
        if isinstance(v, dict):
            out.update({f"{prefix}.{k}.{k2}": v2 for k2, v2 in v.items() if isinstance(v2, (int, float, str, bool))})
        elif isinstance(v, (int, float, str, bool)) or v is None:
            out[f"{prefix}.{k}"] = v
    return out


def toy_scores(run_dir: Path, prompt: str) -> dict:
    """For a toy prompt ("a red cube") with a mesh: toy_shape, toy_colour and score_mesh's figures."""
    from dreamfield.toy.domain import parse_prompt

    pair = parse_prompt(prompt)
    mesh_path = run_dir / "mesh.glb"
    if pair is None or not mesh_path.is_file():
        return {}
    from dreamfield.toy.measures import load_mesh, score_mesh

    colour, shape = pair
    try:
        s = score_mesh(load_mesh(mesh_path), shape, colour)
    except (ValueError, OSError) as exc:
        return {"toy_shape": shape, "toy_colour": colour, "toy_error": " ".join(str(exc).split())}
    return {"toy_shape": shape, "toy_colour": colour, "toy_shape_pred": s["shape_pred"],
            "toy_colour_pred": s["colour_pred"], "toy_iou": round(float(s["iou"]), 4),
            "toy_shape_ok": bool(s["shape_ok"]), "toy_colour_ok": bool(s["colour_ok"])}


def run_figures(run_dir: Path, prompt: str) -> dict:
    """steps (optim.steps of config.yaml), seconds (optimisation + export, timing.json), export.json's scalars
    as ``export.*`` columns, and toy scores for toy prompts. Missing files give missing columns."""
    out: dict = {}
    try:
        import yaml

        out["steps"] = yaml.safe_load((run_dir / "config.yaml").read_text())["optim"]["steps"]
    except (OSError, ValueError, KeyError, TypeError, ImportError):
        pass
    timing = read_json(run_dir / "timing.json")
    if timing:
        opt, exp = float(timing.get("optimize_seconds", 0.0)), float(timing.get("export_seconds", 0.0))
        out.update(seconds=round(opt + exp, 2), optimize_seconds=round(opt, 2), export_seconds=round(exp, 2))
    export = read_json(run_dir / "export.json")
    if export:
        out.update(_flatten(export, "export"))
    out.update(toy_scores(run_dir, prompt))
    return out


# ---------------------------------------------------------------------------------------------- summary and gallery

SUMMARY_COLUMNS = ("prompt", "slug", "status", "error", "steps", "seconds", "optimize_seconds", "export_seconds",
                   "wall_seconds", "node", "ray_node", "finished", "toy_shape", "toy_colour", "toy_shape_pred", "toy_colour_pred",
                   "toy_iou", "toy_shape_ok", "toy_colour_ok", "toy_error")


def write_summary(out_dir: Path, rows: Sequence[dict]) -> None:
    """DIR/summary.csv (one row per prompt, SUMMARY_COLUMNS then export.* columns) and DIR/summary.json."""
    extra = sorted({k for r in rows for k in r if k not in SUMMARY_COLUMNS and k.startswith("export.")})
    columns = list(SUMMARY_COLUMNS) + extra
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in columns})
    write_text(out_dir / "summary.csv", buf.getvalue())
    counts = Counter(r["status"] for r in rows)
    summary = {"dir": str(out_dir), "total": len(rows), "counts": dict(sorted(counts.items())),
               "runs": [{k: r[k] for k in columns if k in r} for r in rows]}
    write_text(out_dir / "summary.json", json.dumps(summary, indent=1) + "\n")


def thumbnail(run_dir: Path) -> Optional[str]:
    """The run's picture, relative to the run folder: views.png, else the last preview, else turntable.mp4."""
    if (run_dir / "views.png").is_file():
        return "views.png"
    previews = sorted((run_dir / "previews").glob("step_*.png")) if (run_dir / "previews").is_dir() else []
    if previews:
        return f"previews/{previews[-1].name}"
    return "turntable.mp4" if (run_dir / "turntable.mp4").is_file() else None


_GALLERY_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:1.3em}.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(240px,1fr));gap:1em}
.card{background:#fff;border:1px solid #ddd;border-radius:6px;padding:.6em}
.card img,.card video{width:100%;image-rendering:pixelated;background:#eee}.none{height:120px;background:#eee}
.prompt{font-weight:600;margin:.4em 0 .2em}.ok{color:#17702a}.failed{color:#b3261e}.pending,.interrupted{color:#8a6d00}
.error{font-family:monospace;font-size:.8em;color:#b3261e;word-break:break-word}.meta{font-size:.85em;color:#555}"""


def _card(out_dir: Path, r: dict) -> str:
    slug = r["slug"]
    run_dir = out_dir / slug
    thumb = thumbnail(run_dir)
    if (run_dir / "report.html").is_file():
        href = f"{quote(slug)}/report.html"
    else:  # a run that failed before it made its folder: its log
        href = f"{quote(slug)}/" if run_dir.is_dir() else f"{quote(slug)}.log"
    if thumb is None:
        pic = '<div class="none"></div>'
    elif thumb.endswith(".mp4"):
        pic = f'<video src="{quote(slug)}/{thumb}" muted loop autoplay playsinline></video>'
    else:
        pic = f'<img src="{quote(slug)}/{thumb}" alt="{html.escape(r["prompt"])}">'
    seconds = r.get("seconds", r.get("wall_seconds"))
    meta = [f'<span class="status {html.escape(r["status"])}">{html.escape(r["status"])}</span>']
    if seconds is not None:
        meta.append(f"{float(seconds):.0f} s")
    if r.get("toy_iou") is not None:
        mark = lambda ok: "&#10003;" if ok else "&#10007;"  # noqa: E731  (check mark, cross)
        meta.append(f"toy: shape {html.escape(str(r.get('toy_shape_pred')))} {mark(r.get('toy_shape_ok'))}, colour "
                    f"{html.escape(str(r.get('toy_colour_pred')))} {mark(r.get('toy_colour_ok'))}, IoU {r['toy_iou']:.2f}")
    meta.append(f'<a href="{quote(slug)}.log">log</a>')
    error = f'<div class="error">{html.escape(r["error"])}</div>' if r.get("error") else ""
    return (f'<div class="card" data-slug="{html.escape(slug)}" data-status="{html.escape(r["status"])}">'
            f'<a href="{href}">{pic}</a><div class="prompt"><a href="{href}">{html.escape(r["prompt"])}</a></div>'
            f'<div class="meta">{" &middot; ".join(meta)}</div>{error}</div>')


def write_gallery(out_dir: Path, rows: Sequence[dict]) -> None:
    """DIR/index.html: one card per prompt (thumbnail, prompt, status, time, link to its report or folder)."""
    counts = Counter(r["status"] for r in rows)
    head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    cards = "\n".join(_card(out_dir, r) for r in rows)
    page = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>dreamfield batch: {len(rows)} runs'
            f"</title>\n<style>{_GALLERY_CSS}</style></head>\n<body><h1>dreamfield batch: {len(rows)} runs ({head})</h1>"
            f'\n<p class="meta"><a href="summary.csv">summary.csv</a> &middot; <a href="summary.json">summary.json</a>'
            f'</p>\n<div class="grid">\n{cards}\n</div></body></html>\n')
    write_text(out_dir / "index.html", page)


# ---------------------------------------------------------------------------------------------- the batch (driver)


@dataclass(frozen=True)
class BatchOptions:
    """Batch-wide settings. The generate options apply to every prompt, before each entry's own."""

    model: Optional[str] = None
    configs: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()
    steps: Optional[int] = None
    seed: Optional[int] = None
    device: Optional[str] = None
    extra_args: tuple[str, ...] = ()  # more `generate` options, passed as they are
    jobs: Optional[int] = None  # runs at once; None: the cluster's CPUs // threads (and GPUs // gpus_per_run)
    threads_per_run: Optional[int] = None  # None: leave threads to the environment (no run.threads)
    gpus_per_run: float = 0.0  # Ray resource num_gpus of each task
    address: Optional[str] = None  # None: Ray in-process on this machine; "auto" or "ray://HOST:PORT": a cluster
    command: Optional[tuple[str, ...]] = None  # argv prefix of `dreamfield` (tests: a stand-in)
    grace_seconds: float = 120.0
    progress: bool = True


@dataclass
class BatchResult:
    rows: list[dict]  # one per entry, in file order
    interrupted: bool = False

    @property
    def exit_status(self) -> int:
        """0 all finished, 1 some failed (or never ran), 130 stopped by Ctrl-C."""
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_OK if all(r["status"] == "ok" for r in self.rows) else EXIT_FAILED


def _absolute_if_exists(path: Optional[str]) -> Optional[str]:
    """A local path made absolute (tasks run in other folders); a hub id is left as it is."""
    return str(Path(path).resolve()) if path is not None and Path(path).exists() else path


def check_options(opts: BatchOptions) -> BatchOptions:
    """Validate the batch-wide settings once, before anything runs (BatchInputError); paths made absolute."""
    for name, value in (("--jobs", opts.jobs), ("--threads-per-run", opts.threads_per_run)):
        if value is not None and value < 1:
            raise BatchInputError(f"{name} must be at least 1, got {value}")
    if opts.gpus_per_run < 0:
        raise BatchInputError(f"--gpus-per-run must be >= 0, got {opts.gpus_per_run}")
    if opts.steps is not None and opts.steps < 1:
        raise BatchInputError(f"--steps must be at least 1, got {opts.steps}")
    opts = replace(opts, model=_absolute_if_exists(opts.model), configs=tuple(str(Path(c).resolve()) for c in opts.configs))
    from dreamfield.config import load_config

    overrides = list(opts.overrides)
    overrides += [f"optim.steps={opts.steps}"] if opts.steps is not None else []
    overrides += [f"run.seed={opts.seed}"] if opts.seed is not None else []
    overrides += [f"run.device={opts.device}"] if opts.device is not None else []
    overrides += [f"prior.model={json.dumps(opts.model)}"] if opts.model is not None else []
    try:
        load_config(opts.configs, overrides)
    except ValueError as exc:
        raise BatchInputError(" ".join(str(exc).split())) from None
    return opts


def make_spec(entry: BatchEntry, out_dir: Path, opts: BatchOptions) -> RunSpec:
    """The task of one entry: batch-wide generate options, then the entry's seed, steps and --set values."""
    args = ["--quiet"]
    args += ["--model", opts.model] if opts.model is not None else []
    for c in opts.configs:
        args += ["--config", c]
    for s in opts.overrides:
        args += ["--set", s]
    args += ["--steps", str(opts.steps)] if opts.steps is not None else []
    args += ["--seed", str(opts.seed)] if opts.seed is not None else []
    args += ["--device", opts.device] if opts.device is not None else []
    args += list(opts.extra_args)
    args += ["--seed", str(entry.seed)] if entry.seed is not None else []
    args += ["--steps", str(entry.steps)] if entry.steps is not None else []
    for s in entry.overrides:
        args += ["--set", s]
    resume = ["--quiet"] + (["--device", opts.device] if opts.device is not None else [])
    return RunSpec(
        prompt=entry.prompt, slug=entry.slug, run_dir=str(out_dir / entry.slug), log_path=str(out_dir / f"{entry.slug}.log"),
        new_args=tuple(args), resume_args=tuple(resume), threads=opts.threads_per_run,
        driver_omp=os.environ.get("OMP_NUM_THREADS"), cwd=os.getcwd(), command=opts.command,
        grace_seconds=opts.grace_seconds,
    )


@contextmanager
def ray_session(address: Optional[str], num_cpus: int) -> Iterator[None]:
    """Ray for the batch: a session already open in this process (tests share one), else a local Ray with
    ``num_cpus`` CPUs, else the cluster at ``address``; a session opened here is closed at the end."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no network calls from an offline machine
    import ray

    if ray.is_initialized():
        yield
        return
    if address is not None:
        try:
            ray.init(address=address, log_to_driver=False, logging_level="WARNING")
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, its own errors; the user gets one line
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            hint = "" if os.environ.get("RAY_AUTH_MODE") else (
                "; a cluster started by `ray start` checks a token: set RAY_AUTH_MODE=token"
                " (with ~/.ray/auth_token of the cluster on this machine)")
            raise ClusterError(f"--address {address}: cannot join the Ray cluster ({first}){hint}") from None
    else:
        # "local": a new Ray on this machine even where `ray start` left one running
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()


def _say(line: str, bar=None) -> None:
    if bar is not None:
        bar.write(line, file=sys.stderr)
    else:
        print(line, file=sys.stderr, flush=True)


def _finished_line(row: dict, out_dir: Path) -> str:
    secs = row.get("wall_seconds")
    took = f" ({secs:.0f} s)" if isinstance(secs, (int, float)) else ""
    if row["status"] == "ok":
        return f"ok           {row['prompt']}{took} -> {out_dir / row['slug']}"
    return f"{row['status']:<12} {row['prompt']}{took}: {row['error']}"


def _task_row(ref, spec: RunSpec) -> dict:
    """The row a task returned, or one for a task Ray cancelled before it started or lost (node failure)."""
    import ray
    from ray.exceptions import RayError, TaskCancelledError

    base = {"prompt": spec.prompt, "slug": spec.slug, "error": ""}
    try:
        return ray.get(ref)
    except TaskCancelledError:
        return dict(base, status="interrupted", error="interrupted before it started")
    except RayError as exc:
        lines = [l for l in str(exc).splitlines() if l.strip()]
        return dict(base, status="failed", error=f"ray: {type(exc).__name__}: {lines[-1] if lines else ''}".strip())


def _jobs(opts: BatchOptions) -> int:
    """Runs in flight: --jobs, else what the cluster's CPUs (and GPUs) allow at the requested size."""
    if opts.jobs is not None:
        return opts.jobs
    import ray

    res = ray.cluster_resources()
    jobs = int(res.get("CPU", 1) // (opts.threads_per_run or 1))
    if opts.gpus_per_run > 0:
        jobs = min(jobs, int(res.get("GPU", 0) // opts.gpus_per_run))
    return max(1, jobs)


def _stop(running: dict, rows: dict, grace: float, bar) -> None:
    """Ctrl-C: cancel every task (Ray raises KeyboardInterrupt in it, it sends SIGINT to its run) and collect
    what they return; a second Ctrl-C stops waiting."""
    import ray

    _say(f"dreamfield: interrupted: stopping {len(running)} run(s); they checkpoint, a rerun resumes them", bar)
    for ref in running:
        ray.cancel(ref)
    deadline = time.monotonic() + grace + 30.0
    try:
        while running and time.monotonic() < deadline:
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = running.pop(ref)
                rows[spec.slug] = _task_row(ref, spec)
    except KeyboardInterrupt:
        pass
    for spec in running.values():
        rows[spec.slug] = {"prompt": spec.prompt, "slug": spec.slug, "status": "interrupted", "error": "interrupted"}


def _schedule(todo: list[RunSpec], rows: dict, order: list[str], out_dir: Path, opts: BatchOptions) -> bool:
    """Run the specs as Ray tasks, ``_jobs`` at a time; rows, summary and gallery updated as each finishes.
    Returns True when stopped by Ctrl-C."""
    import ray
    from tqdm.auto import tqdm

    task = ray.remote(run_one).options(num_cpus=opts.threads_per_run or 1, num_gpus=opts.gpus_per_run)
    jobs = _jobs(opts)
    queue, running = list(todo), {}
    bar = tqdm(total=len(order), initial=len(order) - len(todo), desc="batch", unit="run", file=sys.stderr,
               disable=not opts.progress, dynamic_ncols=True)
    try:
        while queue or running:
            while queue and len(running) < jobs:
                spec = queue.pop(0)
                running[task.remote(spec)] = spec
            ready, _ = ray.wait(list(running), num_returns=1, timeout=1.0)
            for ref in ready:
                spec = running.pop(ref)
                rows[spec.slug] = row = _task_row(ref, spec)
                bar.update(1)
                _say(_finished_line(row, out_dir), bar if opts.progress else None)
                write_outputs(out_dir, [rows[s] for s in order])
        return False
    except KeyboardInterrupt:
        _stop(running, rows, opts.grace_seconds, bar if opts.progress else None)
        return True
    finally:
        bar.close()


def write_outputs(out_dir: Path, rows: Sequence[dict]) -> None:
    write_summary(out_dir, rows)
    write_gallery(out_dir, rows)


def run_batch(entries: Sequence[BatchEntry], out_dir: str | Path, opts: BatchOptions = BatchOptions()) -> BatchResult:
    """Run every entry into ``out_dir/<slug>/`` (finished ones skipped), then write the gallery and summary.

    Entries need slugs (read_prompts / assign_slugs). Ray is started only when something is left to run.
    """
    entries = assign_slugs(entries)
    opts = check_options(opts)
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    order = [e.slug for e in entries]
    rows, todo = {}, []
    for e in entries:
        done = read_json(out_dir / e.slug / DONE)
        if done is not None and done.get("prompt") == e.prompt:
            rows[e.slug] = done
        else:
            rows[e.slug] = {"prompt": e.prompt, "slug": e.slug, "status": "pending", "error": ""}
            todo.append(make_spec(e, out_dir, opts))
    if len(todo) < len(entries):
        _say(f"dreamfield: batch: {len(entries) - len(todo)} of {len(entries)} run(s) already done in {out_dir}")
    interrupted = False
    if todo:
        local_cpus = max(os.cpu_count() or 1, (opts.jobs or 1) * (opts.threads_per_run or 1))
        with ray_session(opts.address, local_cpus):
            interrupted = _schedule(todo, rows, order, out_dir, opts)
    result = BatchResult([rows[s] for s in order], interrupted)
    write_outputs(out_dir, result.rows)
    return result


# ---------------------------------------------------------------------------------------------- command line

_EPILOG = """PROMPTS is a text file (one prompt a line; blank lines and lines starting with # are skipped) or a YAML
list whose items are prompts or mappings {prompt, seed, steps, set: [key=value, ...]}. Each prompt runs
`dreamfield generate` into DIR/<slug>/ as one Ray task; DIR/index.html is a gallery, DIR/summary.csv and
summary.json the figures. Rerun the same command to skip finished runs and resume interrupted ones.
Exit status: 0 all runs finished, 1 some failed, 2 bad input, 130 interrupted (Ctrl-C; runs checkpoint).

With --address the runs execute on the cluster's nodes: each node needs dreamfield installed and the model
at the same path, and DIR must be on a filesystem shared by every node and this machine (the same path),
because the nodes write the run folders and this machine reads them."""


def add_batch_parser(sub) -> argparse.ArgumentParser:
    """The ``batch`` subcommand on the CLI's subparsers (``cmd_batch`` runs it)."""
    b = sub.add_parser("batch", help="many prompts, one run folder each, as Ray tasks (this machine or a cluster)",
                       description="Run `dreamfield generate` for every prompt of a file, as Ray tasks.",
                       epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    b.add_argument("prompts", help="prompts file: text, one prompt a line, or a YAML list (see below)")
    b.add_argument("--out", default=None, metavar="DIR", help="batch folder (default: outputs/batch-<file stem>)")
    b.add_argument("--config", action="append", default=[], metavar="FILE", help="YAML config for every run (repeatable)")
    b.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="override one setting of every run (repeatable); a prompt's own set: wins")
    b.add_argument("--model", default=None, help="diffusers Stable Diffusion folder or hub id (default: the embedded toy prior)")
    b.add_argument("--device", default=None, help="auto, cpu, cuda or cuda:N (default: auto)")
    b.add_argument("--seed", type=int, default=None, help="seed of every run (a prompt's own seed wins)")
    b.add_argument("--steps", type=int, default=None, help="optimisation steps of every run (a prompt's own wins)")
    b.add_argument("--jobs", type=int, default=None,
                   help="runs at once (default: CPU cores / --threads-per-run; with --gpus-per-run, also GPUs / it)")
    b.add_argument("--threads-per-run", type=int, default=None,
                   help="torch threads of each run, passed as --set run.threads=N (default: cores / --jobs, else 1)")
    b.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs reserved for each run (Ray num_gpus; e.g. 1 or 0.5)")
    b.add_argument("--address", default=None, metavar="auto|ray://HOST:PORT",
                   help="join a running Ray cluster (DIR on a shared filesystem, see below); default: Ray on this machine")
    b.add_argument("--grace", type=float, default=120.0, metavar="SECONDS",
                   help="after Ctrl-C, how long a run may take to checkpoint before it is killed")
    b.add_argument("--quiet", action="store_true", help="no overall progress bar (one line per finished run stays)")
    return b


def options_from_args(args) -> BatchOptions:
    """BatchOptions from parsed ``batch`` arguments; threads default to this machine's cores per job."""
    threads = args.threads_per_run
    if threads is None:
        threads = max(1, (os.cpu_count() or 1) // args.jobs) if (args.jobs and args.address is None) else 1
    return BatchOptions(
        model=args.model, configs=tuple(args.config), overrides=tuple(args.overrides), steps=args.steps,
        seed=args.seed, device=args.device, jobs=args.jobs, threads_per_run=threads, gpus_per_run=args.gpus_per_run,
        address=args.address, grace_seconds=args.grace, progress=not args.quiet,
    )


def cmd_batch(args) -> int:
    """``dreamfield batch``: 0 all ok, 1 some failed, 130 interrupted; BatchInputError (exit 2) for bad input."""
    entries = read_prompts(args.prompts)
    out = Path(args.out) if args.out else Path("outputs") / f"batch-{slugify(Path(args.prompts).stem)}"
    result = run_batch(entries, out, options_from_args(args))
    counts = Counter(r["status"] for r in result.rows)
    told = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    _say(f"dreamfield: batch: {told}; gallery {out / 'index.html'}")
    return result.exit_status


def toy_batch(root: Path, pairs: Sequence[tuple[str, str]], extra_args: Sequence[str] = (), jobs: int = 1,
              command: Optional[Sequence[str]] = None) -> tuple[list[Path], dict]:
    """``generate`` for toy (colour, shape) pairs into ``root/<prompt with dashes>/``, ``jobs`` at a time; with
    jobs > 1 every run gets one thread (on the 2-core CPU, runs side by side with a thread each is how the
    figures in docs/RESULTS.md were measured). Finished runs are kept (a rerun skips them, resumes the others);
    a failed run is recorded and the others go on. Returns the run folders and each run's own wall seconds."""
    from dreamfield.toy.domain import caption

    entries = [BatchEntry(p, slug=p.replace(" ", "-")) for p in (caption(c, s) for c, s in pairs)]
    opts = BatchOptions(extra_args=tuple(extra_args), jobs=max(1, jobs), threads_per_run=1 if jobs > 1 else None,
                        command=tuple(command) if command else None)
    result = run_batch(entries, root, opts)
    return [root / e.slug for e in entries], {str(root / r["slug"]): r.get("wall_seconds") for r in result.rows}

