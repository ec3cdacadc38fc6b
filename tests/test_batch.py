"""dreamfield batch: prompts files, run folders as Ray tasks on a tiny random SD, reruns, failures, a killed
run resumed, Ctrl-C, a two-node cluster on 127.0.0.1, and the gallery in headless Chromium."""

from __future__ import annotations

import csv
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from dreamfield import batch as B
from dreamfield.cli import main

# Tiny runs: 16^2 renders, 8 samples per ray, a 16^3 grid; exported at level 1 (a 2-step blob peaks near 2.5).
FAST = ["--steps", "2", "--set", "render.resolution=16", "--set", "render.n_samples=8",
        "--set", "field.grid_resolution=16", "--set", "export.resolution=24", "--set", "export.threshold=1",
        "--set", "export.video_frames=2", "--set", "export.video_resolution=16", "--set", "run.preview_every=1"]
# for `ray start` clusters and drivers in subprocesses: the token that `ray start` makes is checked by clients
# only in token mode (read when ray is imported)
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "token"}


@pytest.fixture(scope="module")
def ray_local():
    """One in-process Ray for the module's in-process batches (run_batch reuses an open session)."""
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    import ray

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def rows_of(out: Path) -> dict:
    with open(out / "summary.csv", newline="") as f:
        return {r["slug"]: r for r in csv.DictReader(f)}


# ---------------------------------------------------------------------------------------------- prompts files


def test_text_and_yaml_prompts_files(tmp_path):
    text = tmp_path / "p.txt"
    text.write_text("# toy prompts\na red cube\n\n   \n  a blue sphere  \n#a green cone\na red cube\n")
    assert [(e.prompt, e.slug) for e in B.read_prompts(text)] == [
        ("a red cube", "a-red-cube"), ("a blue sphere", "a-blue-sphere"), ("a red cube", "a-red-cube-2")]
    y = tmp_path / "p.yaml"
    y.write_text('- a red cube\n- {prompt: "a red cube", seed: 3, steps: 5, set: [render.n_samples=6]}\n'
                 '- {prompt: "A red cube!", seed: 3}\n')
    e = B.read_prompts(y)
    assert [x.slug for x in e] == ["a-red-cube", "a-red-cube-seed3", "a-red-cube-seed3-2"]
    assert (e[1].seed, e[1].steps, e[1].overrides) == (3, 5, ("render.n_samples=6",))
    for bad, what in [("- {prompt: a red cube, sed: 3}\n", "unknown key 'sed'"), ("- {seed: 3}\n", "missing prompt"),
                      ("- {prompt: x, steps: two}\n", "steps must be an integer"), ("prompt: x\n", "YAML list"),
                      ("- {prompt: x, set: [render.n_samples]}\n", "key=value"), ("[\n", "not valid YAML")]:
        y.write_text(bad)
        with pytest.raises(B.BatchInputError, match=what):
            B.read_prompts(y)
    (tmp_path / "empty.txt").write_text("# nothing\n\n")
    with pytest.raises(B.BatchInputError, match="no prompts"):
        B.read_prompts(tmp_path / "empty.txt")


def test_bad_input_is_a_one_line_error_with_status_2(tmp_path, capsys):
    assert main(["batch", str(tmp_path / "missing.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"dreamfield: error: prompts file not found: {tmp_path / 'missing.txt'}"
    p = tmp_path / "p.txt"
    p.write_text("a red cube\n")
    # a bad batch-wide --set fails before anything runs (no folder is made); a prompt's own fails that prompt only
    assert main(["batch", str(p), "--out", str(tmp_path / "o"), "--set", "optim.lr_densty=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "optim.lr_densty" in err[0] and not (tmp_path / "o").exists()
    assert main(["batch", str(p), "--out", str(tmp_path / "o"), "--jobs", "0"]) == 2
    capsys.readouterr()


def test_how_a_stopped_run_folder_restarts(tmp_path):
    run = tmp_path / "a-red-cube"
    assert B.prepare_run(run, "a red cube") == "new"
    # stopped before its first checkpoint: generate --resume starts it again from its config; nothing deleted
    (run / "previews").mkdir(parents=True)
    (run / "config.yaml").write_text("optim:\n  steps: 3\n")
    (run / "prompt.json").write_text(json.dumps({"command": "generate", "prompt": "a red cube"}))
    (run / "previews" / "step_000100.png").write_text("x")
    assert B.prepare_run(run, "A red cube!") == "resume"  # generate saves the toy prompt normalised
    assert sorted(p.name for p in run.iterdir()) == ["config.yaml", "previews", "prompt.json"]
    with pytest.raises(B.RunFolderError, match="holds a run of 'a red cube'"):
        B.prepare_run(run, "a blue cube")
    # no config.yaml: only leftovers of interrupted writes are removed, never anything else
    other = tmp_path / "a-blue-cube"
    other.mkdir()
    (other / ".config.tmp-12.yaml").write_text("x")
    assert B.prepare_run(other, "a blue cube") == "new" and not any(other.iterdir())
    (other / "notes.txt").write_text("mine")
    with pytest.raises(B.RunFolderError, match=r"files dreamfield did not write \(notes.txt\)"):
        B.prepare_run(other, "a blue cube")
    assert (other / "notes.txt").read_text() == "mine"


# ---------------------------------------------------------------------------------------------- batches on this machine


@pytest.fixture(scope="module")
def three(ray_local, tiny_sd_path, tmp_path_factory):
    """A 3-prompt batch: a repeated prompt told apart by its seed, a prompt with its own steps and --set."""
    root = tmp_path_factory.mktemp("batch")
    prompts = root / "prompts.yaml"
    prompts.write_text('- a red cube\n- {prompt: a red cube, seed: 3}\n'
                       '- {prompt: a blue sphere, steps: 3, set: [render.n_samples=6]}\n')
    out = root / "out"
    argv = [str(prompts), "--out", str(out), "--model", str(tiny_sd_path), "--jobs", "2", "--threads-per-run", "1", "--quiet"] + FAST
    code = main(["batch", *argv])
    return out, argv, code


def test_three_prompts_make_three_runs_and_a_summary(three, tiny_sd_path):
    out, _, code = three
    assert code == 0
    slugs = ["a-red-cube", "a-red-cube-seed3", "a-blue-sphere"]
    rows = rows_of(out)
    assert list(rows) == slugs and {r["status"] for r in rows.values()} == {"ok"}
    for slug in slugs:
        run = out / slug
        for name in ["config.yaml", "prompt.json", "metrics.jsonl", "timing.json", "checkpoints/last.pt",
                     "views.png", "turntable.mp4", "done.json", f"../{slug}.log"]:
            assert (run / name).is_file(), (slug, name)
        timing = json.loads((run / "timing.json").read_text())
        assert float(rows[slug]["seconds"]) == pytest.approx(timing["optimize_seconds"] + timing["export_seconds"], abs=0.01)
        assert "run:\n  seed: " in (run / "config.yaml").read_text()
    cfg = {s: (out / s / "config.yaml").read_text() for s in slugs}
    assert "seed: 0\n" in cfg["a-red-cube"] and "seed: 3\n" in cfg["a-red-cube-seed3"]
    assert "n_samples: 6\n" in cfg["a-blue-sphere"] and "n_samples: 8\n" in cfg["a-red-cube"]
    assert [rows[s]["steps"] for s in slugs] == ["2", "2", "3"]
    assert all("threads: 1\n" in c for c in cfg.values())  # --threads-per-run 1
    assert f"model: {tiny_sd_path}" in cfg["a-red-cube"]
    # toy prompts are scored on their exported mesh, as score_mesh scores it
    from dreamfield.toy.measures import load_mesh, score_mesh

    ref = score_mesh(load_mesh(out / "a-blue-sphere" / "mesh.glb"), "sphere", "blue")
    r = rows["a-blue-sphere"]
    assert (r["toy_shape"], r["toy_colour"], r["toy_shape_pred"]) == ("sphere", "blue", ref["shape_pred"])
    assert float(r["toy_iou"]) == pytest.approx(ref["iou"], abs=1e-4)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["counts"] == {"ok": 3} and [x["slug"] for x in summary["runs"]] == slugs


def test_a_rerun_does_no_work(three, capsys):
    out, argv, _ = three
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/done.json")}
    logs = {p.name: p.read_bytes() for p in out.glob("*.log")}
    t0 = time.perf_counter()
    assert main(["batch", *argv]) == 0
    assert "3 of 3 run(s) already done" in capsys.readouterr().err
    assert {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in out.glob("*/done.json")} == before
    assert {p.name: p.read_bytes() for p in out.glob("*.log")} == logs  # no subprocess ran
    assert time.perf_counter() - t0 < 30


def test_a_failing_prompt_is_recorded_and_the_others_run(three, tiny_sd_path, tmp_path):
    out, argv, _ = three
    prompts = tmp_path / "more.yaml"
    prompts.write_text(Path(argv[0]).read_text() + '- {prompt: a green torus, set: [optim.lr_densty=1]}\n- a yellow cone\n')
    assert main(["batch", str(prompts)] + argv[1:]) == 1
    rows = rows_of(out)
    assert [rows[s]["status"] for s in rows] == ["ok", "ok", "ok", "failed", "ok"]
    err = rows["a-green-torus"]["error"]
    assert err.startswith("dreamfield: error: ") and "optim.lr_densty" in err and "\n" not in err
    assert not (out / "a-green-torus" / "done.json").exists() and (out / "a-yellow-cone" / "done.json").is_file()
    assert json.loads((out / "summary.json").read_text())["counts"] == {"failed": 1, "ok": 4}


def test_the_gallery_in_headless_chromium(three):
    from browser import open_page

    out, _, _ = three
    with open_page(out / "index.html") as view:
        page = view.page
        cards = page.eval_on_selector_all(".card", "els => els.map(e => [e.dataset.slug, e.dataset.status])")
        images = page.eval_on_selector_all(".card img", "els => els.map(e => e.complete && e.naturalWidth)")
        links = page.eval_on_selector_all(".prompt a", "els => els.map(e => e.getAttribute('href'))")
        title = page.title()
        assert view.problems() == []  # every thumbnail loaded, no script error
    summary = json.loads((out / "summary.json").read_text())
    assert cards == [[r["slug"], r["status"]] for r in summary["runs"]] and len(cards) >= 3
    shown = [c for c in cards if (out / c[0] / "views.png").is_file()]
    assert len(images) == len(shown) and all(w == 4 * 16 for w in images)  # the 4-view contact sheet, 16 px each
    for href in links:
        assert (out / href).exists(), href  # report.html where a run has one, else its folder or its log
    assert title.startswith(f"dreamfield batch: {len(cards)} runs")


# ---------------------------------------------------------------------------------------------- a killed run, Ctrl-C


def generate_pids(run: Path) -> list[int]:
    """The pids of the `generate` processes writing ``run`` now."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"generate" in argv and str(run).encode() in argv:
            pids.append(int(proc.name))
    return pids


def generate_pid(run: Path, timeout: float = 240.0) -> int:
    """The pid of the `generate` process writing ``run``, once its first checkpoint exists."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "checkpoints" / "last.pt").is_file() and (pids := generate_pids(run)):
            return pids[0]
        time.sleep(0.2)
    raise AssertionError(f"no generate process with a checkpoint in {run}")


@pytest.mark.slow
def test_a_killed_run_resumes_on_rerun(ray_local, tiny_sd_path, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a purple pyramid\n")
    out, run = tmp_path / "out", tmp_path / "out" / "a-purple-pyramid"
    argv = [str(prompts), "--out", str(out), "--model", str(tiny_sd_path), "--quiet", "--threads-per-run", "1"] + FAST + [
        "--steps", "120", "--set", "run.checkpoint_every=1", "--set", "run.preview_every=0", "--set", "run.log_every=1"]
    result = []
    # a daemon: a batch that hangs fails the test below instead of keeping pytest from exiting
    driver = threading.Thread(target=lambda: result.append(main(["batch", *argv])), daemon=True)
    driver.start()
    os.kill(generate_pid(run), signal.SIGKILL)
    driver.join(300)
    assert not driver.is_alive(), "the batch did not return within 300 s of its run's SIGKILL"
    assert result == [1]
    assert rows_of(out)["a-purple-pyramid"]["error"] == "killed by SIGKILL"
    stopped_at = int(__import__("torch").load(run / "checkpoints" / "last.pt", weights_only=True)["step"])
    assert 1 <= stopped_at < 120
    assert main(["batch", *argv]) == 0
    log = (out / "a-purple-pyramid.log").read_text()
    assert log.count("# dreamfield batch") == 2 and ": resume\n" in log.split("# dreamfield batch")[-1]
    steps = [json.loads(l)["step"] for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(120))  # resumed from the checkpoint, lines after it rewritten once
    assert json.loads((run / "done.json").read_text())["status"] == "ok"


def _subprocess_env() -> dict:
    return dict(os.environ, **RAY_ENV, PYTHONUNBUFFERED="1")


@pytest.mark.slow
def test_ctrl_c_checkpoints_the_runs_and_exits_130(tiny_sd_path, tmp_path):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red torus\n")
    out, run = tmp_path / "out", tmp_path / "out" / "a-red-torus"
    cmd = [sys.executable, "-m", "dreamfield", "batch", str(prompts), "--out", str(out), "--model", str(tiny_sd_path),
           "--quiet", "--jobs", "1"] + FAST + ["--steps", "2000", "--set", "run.checkpoint_every=1",
                                              "--set", "run.preview_every=0"]
    # its own session: a failed wait below kills the batch's whole group
    driver = subprocess.Popen(cmd, env=_subprocess_env(), stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        pid = generate_pid(run)
        driver.send_signal(signal.SIGINT)
        _, err = driver.communicate(timeout=300)  # the run's grace (120 s) plus Ray's shutdown, on a loaded machine
        assert driver.returncode == 130, err
        assert not Path(f"/proc/{pid}").exists()  # checked before the clean-up below could kill it
    finally:  # a failed wait leaves nothing running: the batch's group, and each run's (its own session)
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        for left in generate_pids(run):
            try:
                os.killpg(left, signal.SIGKILL)
            except ProcessLookupError:  # gone meanwhile, or not its group's leader
                os.kill(left, signal.SIGKILL)
    # generate got SIGINT and stopped on its own after checkpointing the step it was at, not a kill
    log = (out / "a-red-torus.log").read_text()
    m = re.search(r"dreamfield: interrupted \(SIGINT: stopped after step (\d+)", log)
    assert m, log[-2000:]
    assert int(__import__("torch").load(run / "checkpoints" / "last.pt", weights_only=True)["step"]) == int(m.group(1))
    assert rows_of(out)["a-red-torus"]["status"] == "interrupted"


# ---------------------------------------------------------------------------------------------- a two-node cluster


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_node(args: list[str], log: Path) -> subprocess.Popen:
    """`ray start --block ...`: stopped by terminating this process (its own Ray processes only)."""
    ray = Path(sys.executable).with_name("ray")
    proc = subprocess.Popen([str(ray), "start", "--block", "--node-ip-address=127.0.0.1", "--disable-usage-stats",
                             *args], env=_subprocess_env(), stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while "block forever" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
        time.sleep(0.5)
    return proc


@pytest.mark.slow
def test_address_joins_a_two_node_cluster(tiny_sd_path, tmp_path):
    port = _free_port()
    nodes = [_ray_node(["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false"], tmp_path / "head.log")]
    try:
        nodes.append(_ray_node([f"--address=127.0.0.1:{port}", "--num-cpus=1", '--resources={"node2": 1}'],
                               tmp_path / "node2.log"))
        prompts = tmp_path / "p.txt"
        prompts.write_text("a green cone\na orange cylinder\n")
        out = tmp_path / "shared" / "out"  # one filesystem for both nodes and the driver
        cmd = [sys.executable, "-m", "dreamfield", "batch", str(prompts), "--out", str(out), "--model", str(tiny_sd_path),
               "--quiet", "--address", f"127.0.0.1:{port}"] + FAST
        done = subprocess.run(cmd, env=_subprocess_env(), capture_output=True, text=True, timeout=400)
        assert done.returncode == 0, done.stderr[-3000:]
    finally:
        for proc in reversed(nodes):
            proc.terminate()
            proc.wait(60)
    rows = rows_of(out)
    assert [r["status"] for r in rows.values()] == ["ok", "ok"]
    # one CPU per node and two runs at once (--jobs defaults to the cluster's 2 CPUs): one run on each node
    assert len({r["ray_node"] for r in rows.values()}) == 2
    assert all((out / s / "views.png").is_file() for s in rows)
