"""Collect what scripts/gpu_check.sh measured into one table (markdown) and one results.json.

Inputs, all optional (a missing one becomes a "not run" row), from the work folder WORK:
    steps.tsv      name, status, seconds per step of gpu_check.sh
    info.json      device, versions
    build.json     nerfacc CUDA extension build: seconds, ok
    sds.json       scripts/bench_sds.py --json
    render.json    scripts/bench_render_paths.py --json
    generate.json  dreamfield generate / export wall times
    pytest.log     the last summary line of pytest

Usage: python3 scripts/gpu_report.py WORK OUT   (writes OUT/gpu_report.md and OUT/results.json, prints the table)
No dreamfield import, no torch: it must run even when everything else failed.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def load(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def fmt(v, spec: str = ".1f", unit: str = "") -> str:
    if v is None:
        return "-"
    try:
        return f"{v:{spec}}{unit}"
    except (TypeError, ValueError):
        return str(v)


def pytest_summary(log: Path) -> str:
    try:
        lines = [l.strip() for l in log.read_text(errors="replace").splitlines() if l.strip()]
    except OSError:
        return "not run"
    pat = re.compile(r"\b(passed|failed|error|errors|skipped|no tests ran|tests? collected)\b")
    for line in reversed(lines):
        if pat.search(line) and ("=" in line or " in " in line or "collected" in line):
            return line.strip("= ")
    return lines[-1] if lines else "empty log"


def sds_rows(sds: dict) -> list[str]:
    goals = sds.get("goals", {})
    rows = []
    for r in sds.get("variants", []):
        name = f"SDS step, {r['variant']}"
        if "error" in r:
            rows.append(f"| {name} | error: {r['error']} | | |")
            continue
        ok = []
        if goals and sds.get("device", "cpu") != "cpu":
            ok.append("it/s " + ("ok" if r["it_s"] >= goals["it_s_min"] else f"MISSED (< {goals['it_s_min']:g})"))
            if "peak_alloc_gb" in r:
                ok.append("memory " + ("ok" if r["peak_alloc_gb"] <= goals["peak_gb_max"] else f"MISSED (> {goals['peak_gb_max']:g} GB)"))
            ok.append("ratio " + ("ok" if r["ratio"] <= goals["ratio_max"] else f"MISSED (> {goals['ratio_max']:g})"))
        value = (
            f"{fmt(r['it_s'])} it/s ({fmt(r['step_ms'])} ms/step, p10-p90 {fmt(r.get('step_ms_p10'))}-{fmt(r.get('step_ms_p90'))}); "
            f"prior {fmt(r['prior_ms'])} ms (UNet x2 {fmt(r['unet_ms'])}, VAE enc fwd+bwd {fmt(r['vae_fwd_bwd_ms'])}); "
            f"ratio {fmt(r['ratio'], '.2f')}; peak {fmt(r.get('peak_alloc_gb'), '.2f')} GB alloc / "
            f"{fmt(r.get('peak_reserved_gb'), '.2f')} GB reserved"
        )
        ph = r.get("phases")
        if ph:
            value += (
                f"; phases ms: render {fmt(ph.get('render_ms'))}, encode {fmt(ph.get('encode_ms'))}, "
                f"sds_grad {fmt(ph.get('sds_grad_ms'))}, backward {fmt(ph.get('backward_ms'))}, adam {fmt(ph.get('adam_ms'))} "
                f"({ph.get('samples_per_step')} samples, occupancy grid {ph.get('occupancy')})"
            )
        elif r.get("phases_error"):
            value += f"; phase breakdown failed: {r['phases_error']}"
        rows.append(f"| {name} | {value} | {'; '.join(ok) or '-'} | {fmt(r.get('wall_s'))} s |")
    return rows


def render_rows(rd: dict) -> list[str]:
    rows = []
    for name, r in rd.get("paths", {}).items():
        label = f"render {rd.get('views')}x{rd.get('res')}^2, {name}"
        if "error" in r:
            rows.append(f"| {label} | error: {r['error']} | | |")
            continue
        diff = ""
        if "max_abs_diff" in r:
            diff = f"; vs dense max {r['max_abs_diff']:.4f}, mean {r['mean_abs_diff']:.5f}"
        rows.append(
            f"| {label} | eval {fmt(r['eval_ms'], '.2f')} ms, train {fmt(r['train_ms'], '.2f')} ms, "
            f"{r.get('samples')} samples{diff} | | |"
        )
    if "speedup_train" in rd:
        rows.append(
            f"| render: packed vs dense | {rd['speedup_train']:.2f}x train, {rd['speedup_eval']:.2f}x eval "
            f"(packed step {rd.get('packed_step', 0):.4f}, occupied {100 * rd.get('occupied_fraction', 0):.1f}%) | | |"
        )
    return rows


def main(argv: list[str]) -> int:
    work, out = Path(argv[0]), Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    info, build = load(work / "info.json"), load(work / "build.json")
    sds, rd, gen = load(work / "sds.json"), load(work / "render.json"), load(work / "generate.json")
    steps = []
    if (work / "steps.tsv").is_file():
        for line in (work / "steps.tsv").read_text().splitlines():
            parts = line.split("\t")
            if len(parts) == 3:
                steps.append({"step": parts[0], "status": parts[1], "seconds": float(parts[2] or 0)})
    pyt = pytest_summary(work / "pytest.log")

    lines = [
        f"# dreamfield GPU check: {info.get('device', sds.get('device', '?'))}",
        "",
        f"torch {info.get('torch', '?')} (CUDA {info.get('cuda', '?')}), diffusers {info.get('diffusers', '?')}, "
        f"transformers {info.get('transformers', '?')}, huggingface_hub {info.get('huggingface_hub', '?')}, "
        f"nerfacc {info.get('nerfacc', '?')}",
        "",
        "| what | result | goal | time |",
        "| --- | --- | --- | --- |",
    ]
    for s in steps:
        lines.append(f"| step {s['step']} | {s['status']} | | {s['seconds']:.0f} s |")
    if build:
        lines.append(
            f"| nerfacc CUDA extension | {'built and loaded' if build.get('ok') else 'FAILED'}"
            f"{', smoke op ' + build['smoke'] if build.get('smoke') else ''} | | {fmt(build.get('seconds'))} s |"
        )
    if sds.get("prior"):
        lines.append(
            f"| prior | {sds['prior']}; UNet {fmt(sds.get('params_unet_m'))} M, VAE {fmt(sds.get('params_vae_m'))} M, "
            f"text {fmt(sds.get('params_text_m'))} M params; attention {', '.join(sds.get('attn_processor', []))} | | |"
        )
    lines += sds_rows(sds)
    for n in sds.get("notes", []):
        lines.append(f"| SDS note | {n} | | |")
    lines += render_rows(rd)
    for n in rd.get("notes", []):
        lines.append(f"| render note | {n} | | |")
    if gen:
        if gen.get("skipped"):
            lines.append(f"| toy generate | skipped: {gen['skipped']} | | |")
        else:
            lines.append(
                f"| toy generate \"a red cube\" | {gen.get('steps', '?')} steps: optimise {fmt(gen.get('optimize_s'))} s "
                f"({fmt(gen.get('it_s'))} it/s), command wall {fmt(gen.get('generate_wall_s'))} s; "
                f"export {gen.get('export', '?')} {fmt(gen.get('export_wall_s'))} s | | |"
            )
    lines.append(f"| pytest | {pyt} | | |")
    text = "\n".join(lines) + "\n"
    (out / "gpu_report.md").write_text(text)
    merged = {"info": info, "build": build, "steps": steps, "sds": sds, "render": rd, "generate": gen, "pytest": pyt}
    (out / "results.json").write_text(json.dumps(merged, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
