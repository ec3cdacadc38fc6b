"""Time one full SDS step against the prior's own cost, on a GPU (or a CPU dry run).

What is measured, all in one process on the same prior folder (e.g. scripts/make_random_sd.py's
random-weight SD 2.1-base):

1. prior cost: the work no SDS implementation can avoid, per step of batch B:
   VAE encoder forward on the render upsampled to the native size, UNet forward on the guidance
   batch 2B (classifier-free guidance), VAE encoder backward to the image. Timed together
   ("prior_ms") and each part alone ("unet_ms", "vae_fwd_bwd_ms").
2. the full step, through ``dreamfield.optimize.optimize`` itself (the loop that `generate` runs:
   cameras, render, encode, timesteps, text, sds_grad, loss, backward, Adam), timed between its
   ``on_step`` callbacks with a device synchronise in each: iterations/s, median step time, peak
   GPU memory (allocated and reserved, weights included).
3. ratio = full step / prior cost (1.0 would mean the scene, the loss and the loop cost nothing).
4. where the time goes: the same loop again with its render, encode and UNet calls wrapped by
   timers (``PhaseTimer``; the rest is backward, Adam and bookkeeping), and a torch.profiler table of
   the top ops over a few steps of the loop.

Each variant loads the prior fresh through ``dreamfield.prior.load_prior`` (as ``--model`` would):

- ``base``            the config as given (configs/sd21.yaml: fp16, occupancy grid on CUDA)
- ``no_occ``          render.use_occupancy_grid=false (dense samples)
- ``channels_last``   UNet and VAE weights in channels-last memory format
- ``cudnn_benchmark`` torch.backends.cudnn.benchmark = True (+ channels_last)
- ``compile``         torch.compile of the UNet (off unless named: compiling costs device minutes)

Usage (GPU):  python3 scripts/bench_sds.py --model /tmp/sd21_random --json out.json --profile prof.txt
CPU dry run:  python3 scripts/bench_sds.py --model /tmp/sd_tiny --device cpu --steps 2 --warmup 1
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
GOALS = {"it_s_min": 20.0, "peak_gb_max": 6.0, "ratio_max": 1.25}  # on an H100, SD 2.1-base, 64x64 renders
VARIANTS = ("base", "no_occ", "channels_last", "cudnn_benchmark", "compile")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, warmup: int, steps: int) -> list[float]:
    """Run fn warmup + steps times; seconds of each timed call (device synchronised around each)."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        out.append(time.perf_counter() - t0)
    return out


def ms(seconds: list[float]) -> float:
    return 1e3 * statistics.median(seconds)


def gb(n_bytes: int) -> float:
    return n_bytes / 2**30


def load_cfg(config: str | None, overrides: list[str]):
    from dreamfield.config import load_config

    return load_config([config] if config else [], overrides)


# ------------------------------------------------------------------------------------------- 1
def prior_cost(prior, text, batch: int, res: int, guidance: float, warmup: int, steps: int) -> dict:
    """Median ms of the prior's unavoidable work per SDS step of batch ``batch`` (module docstring)."""
    dev = prior.device
    g = torch.Generator(device="cpu").manual_seed(0)
    rgb = torch.rand(batch, 3, res, res, generator=g).to(dev).requires_grad_(True)
    with torch.no_grad():
        z0 = prior.encode(rgb)
    t = torch.full((batch,), 500, dtype=torch.long, device=dev)

    def unet_only():
        prior.eps(z0, t, text, guidance)

    def vae_only():
        prior.encode(rgb).backward(torch.ones_like(z0))
        rgb.grad = None

    def both():
        z = prior.encode(rgb)
        eps = prior.eps(z.detach(), t, text, guidance)
        z.backward(eps)
        rgb.grad = None

    unet_ms = ms(timed(unet_only, dev, warmup, steps))
    vae_ms = ms(timed(vae_only, dev, warmup, steps))
    return {"prior_ms": ms(timed(both, dev, warmup, steps)), "unet_ms": unet_ms, "vae_fwd_bwd_ms": vae_ms}


# ------------------------------------------------------------------------------------------- 2 and 4
class PhaseTimer:
    """Times the real loop's phases by wrapping the calls it makes: Scene.render (render), prior.encode
    (VAE encoder forward), prior.eps (UNet with the guidance batch); each wrapped call synchronises the
    device before and after. "rest" = step - the three (backward, Adam, timesteps, text, logging)."""

    def __init__(self, prior, dev: torch.device) -> None:
        from dreamfield.scene.scene import Scene

        self.dev, self.prior, self.scene_cls = dev, prior, Scene
        self.current = {"render": 0.0, "encode": 0.0, "unet": 0.0}
        self.steps: list[dict] = []
        self._orig = (Scene.render, prior.encode, prior.eps)

    def _wrap(self, name: str, fn):
        def timed_call(*a, **k):
            sync(self.dev)
            t0 = time.perf_counter()
            out = fn(*a, **k)
            sync(self.dev)
            self.current[name] += time.perf_counter() - t0
            return out

        return timed_call

    def __enter__(self) -> "PhaseTimer":
        render, encode, eps = self._orig
        self.scene_cls.render = self._wrap("render", render)
        self.prior.encode, self.prior.eps = self._wrap("encode", encode), self._wrap("unet", eps)
        return self

    def __exit__(self, *exc) -> None:
        self.scene_cls.render = self._orig[0]
        del self.prior.encode, self.prior.eps  # back to the bound methods of the class

    def step_done(self, seconds: float) -> None:
        self.steps.append(dict(self.current, step=seconds))
        self.current = {k: 0.0 for k in self.current}


def run_loop(cfg, prior, prompt: str, warmup: int, steps: int, phases: bool) -> dict:
    """Run dreamfield.optimize.optimize (the loop `generate` runs) for warmup + steps (+1) steps, timed between
    its ``on_step`` callbacks (device synchronised in each): median step time, it/s, peak memory; with
    ``phases``, the same through PhaseTimer (its synchronisations make those steps slower: reported apart)."""
    from dreamfield.distill.objectives import make_objective
    from dreamfield.optimize import optimize
    from dreamfield.run import RunFolder

    dev = prior.device
    cfg = copy.deepcopy(cfg)
    cfg.optim.steps = warmup + steps + 1
    stamps: list[float] = []
    timer = PhaseTimer(prior, dev) if phases else None

    def on_step(done: int) -> None:
        sync(dev)
        stamps.append(time.perf_counter())
        if timer is not None:
            timer.step_done(stamps[-1] - stamps[-2])

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunFolder(Path(tmp) / "run")
        run.create(cfg, {"command": "generate", "prompt": prompt})
        sync(dev)
        stamps.append(time.perf_counter())
        if timer is not None:
            with timer:
                optimize(cfg, run, make_objective(cfg, prior, prompt), dev, on_step=on_step, progress=False)
        else:
            optimize(cfg, run, make_objective(cfg, prior, prompt), dev, on_step=on_step, progress=False)
    # interval k = step k; the last one also wrote the final checkpoint: dropped
    dts = [b - a for a, b in zip(stamps[:-1], stamps[1:])][:-1]
    timed_dts = dts[warmup:] or dts
    if timer is not None:
        rows = timer.steps[warmup:-1] or timer.steps
        out = {f"{k}_ms": 1e3 * statistics.median(r[k] for r in rows) for k in ("render", "encode", "unet", "step")}
        out["rest_ms"] = 1e3 * statistics.median(r["step"] - r["render"] - r["encode"] - r["unet"] for r in rows)
        return out
    out = {
        "step_ms": ms(timed_dts),
        "step_ms_p10": 1e3 * sorted(timed_dts)[len(timed_dts) // 10],
        "step_ms_p90": 1e3 * sorted(timed_dts)[(9 * len(timed_dts)) // 10],
        "first_step_ms": 1e3 * dts[0] if dts else float("nan"),
        "timed_steps": len(timed_dts),
    }
    out["it_s"] = 1e3 / out["step_ms"]
    if dev.type == "cuda":
        out["peak_alloc_gb"] = gb(torch.cuda.max_memory_allocated(dev))
        out["peak_reserved_gb"] = gb(torch.cuda.max_memory_reserved(dev))
    return out


def profile_loop(cfg, prior, prompt: str, steps: int, path: Path) -> None:
    """A torch.profiler table of ``steps`` steps of the real loop."""
    from torch.profiler import ProfilerActivity, profile

    dev = prior.device
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
    with profile(activities=acts) as prof:
        run_loop(cfg, prior, prompt, 0, steps, phases=False)
        sync(dev)
    key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
    try:
        table = prof.key_averages().table(sort_by=key, row_limit=30)
    except Exception:  # newer torch names it device_time_total
        table = prof.key_averages().table(sort_by="device_time_total" if dev.type == "cuda" else key, row_limit=30)
    path.write_text(f"torch.profiler, {steps} steps of dreamfield.optimize.optimize, sorted by {key}\n{table}\n")


# ------------------------------------------------------------------------------------------- driver
def check_finite(prior, text, guidance: float) -> bool:
    """One guided UNet call and one encode on random input: are the random weights finite in this dtype?"""
    with torch.no_grad():
        rgb = torch.rand(1, 3, 64, 64, device=prior.device)
        z = prior.encode(rgb)
        eps = prior.eps(z, torch.tensor([500], device=prior.device), text, guidance)
    return bool(torch.isfinite(z).all()) and bool(torch.isfinite(eps).all())


def run_variant(name: str, args, device: torch.device, dtype: str) -> dict:
    from dreamfield.prior import load_prior

    overrides = [
        f"optim.steps={args.warmup + args.steps + 1}",
        "run.preview_every=0",
        "run.checkpoint_every=0",
        "run.export=false",
    ]  # the prior's dtype is load_prior's argument below (optimize takes the loaded prior)
    if name == "no_occ":
        overrides.append("render.use_occupancy_grid=false")
    overrides += args.overrides
    cfg = load_cfg(args.config, overrides)
    torch.backends.cudnn.benchmark = name == "cudnn_benchmark"
    t0 = time.perf_counter()
    prior = load_prior(args.model, device, dtype, local_files_only=True,
                       channels_last=name in ("channels_last", "cudnn_benchmark"))
    sync(device)
    row: dict = {"variant": name, "load_s": round(time.perf_counter() - t0, 2)}
    if device.type == "cuda":
        row["weights_gb"] = gb(torch.cuda.memory_allocated(device))
    if name == "compile":
        t0 = time.perf_counter()
        prior.unet = torch.compile(prior.unet)
        row["compile_note"] = "torch.compile(unet), default mode"
    text = prior.embed([args.prompt], cfg.prior.negative_prompt)
    if name == "compile":
        check_finite(prior, text, cfg.prior.guidance_scale)
        row["compile_s"] = round(time.perf_counter() - t0, 1)
    row.update(prior_cost(prior, text, cfg.guidance.batch_size, cfg.render.resolution, cfg.prior.guidance_scale,
                          args.warmup, args.steps))
    row.update(run_loop(cfg, prior, args.prompt, args.warmup, args.steps, phases=False))
    row["ratio"] = row["step_ms"] / row["prior_ms"]
    if name in ("base", "no_occ") or args.profile_all:
        phase_steps = args.phase_steps or max(5, args.steps // 3)
        row["phases"] = run_loop(cfg, prior, args.prompt, args.warmup, phase_steps, phases=True)
        if args.profile and name == "base":
            profile_loop(cfg, prior, args.prompt, args.profile_steps, Path(args.profile))
    del prior
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    torch.backends.cudnn.benchmark = False
    return row


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="SDS step vs prior cost (see the module docstring)")
    p.add_argument("--model", required=True, help="diffusers SD folder (scripts/make_random_sd.py)")
    default_cfg = REPO / "configs" / "sd21.yaml"
    p.add_argument("--config", default=str(default_cfg) if default_cfg.is_file() else None,
                   help="run config (default configs/sd21.yaml, the full-size-prior settings)")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", help="prior dtype: auto (fp16 on CUDA), float16, float32")
    p.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE",
                   help="config override, e.g. render.n_samples=16 (repeatable; a CPU dry run uses small ones)")
    p.add_argument("--prompt", default="a red cube")
    p.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--variants", default="base,no_occ,channels_last,cudnn_benchmark",
                   help=f"comma-separated, from {', '.join(VARIANTS)}")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--profile", default=None, help="write the profiler table of the base variant here")
    p.add_argument("--profile-all", action="store_true", help="phase breakdown for every variant")
    p.add_argument("--phase-steps", type=int, default=0, help="timed steps of the phase breakdown (0: steps/3, at least 5)")
    p.add_argument("--profile-steps", type=int, default=3, help="steps under the profiler")
    args = p.parse_args(argv)

    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    for v in variants:
        if v not in VARIANTS:
            raise SystemExit(f"--variants: {v!r} is not one of {', '.join(VARIANTS)}")
    report: dict = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "model": args.model,
        "config": args.config,
        "goals": GOALS,
        "variants": [],
        "notes": [],
    }
    if device.type != "cuda":
        report["notes"].append("CPU dry run: the code path is checked, the timings mean nothing")
    try:
        import diffusers
        import transformers

        report["diffusers"], report["transformers"] = diffusers.__version__, transformers.__version__
    except Exception:
        pass

    dtype = args.dtype
    # Random fp16 weights may overflow where trained ones don't; bf16 (fp32 range) costs the same on Hopper.
    try:
        from dreamfield.prior import load_prior

        probe = load_prior(args.model, device, dtype)
        report["prior"] = repr(probe)
        report["attn_processor"] = sorted({type(v).__name__ for v in probe.unet.attn_processors.values()})
        report["params_unet_m"] = sum(q.numel() for q in probe.unet.parameters()) / 1e6
        report["params_vae_m"] = sum(q.numel() for q in probe.vae.parameters()) / 1e6
        report["params_text_m"] = sum(q.numel() for q in probe.text_encoder.parameters()) / 1e6
        ok = check_finite(probe, probe.embed([args.prompt]), 7.5)
        report["finite_" + str(probe.dtype).replace("torch.", "")] = ok
        if not ok and probe.dtype == torch.float16:
            dtype = "bfloat16"
            report["notes"].append("random weights overflow in float16: variants run in bfloat16")
        del probe
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    except Exception as exc:
        traceback.print_exc()
        report["notes"].append(f"probe failed: {type(exc).__name__}: {exc}")

    for name in variants:
        t0 = time.perf_counter()
        try:
            row = run_variant(name, args, device, dtype)
        except Exception as exc:
            traceback.print_exc()
            row = {"variant": name, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"}
            if device.type == "cuda":
                torch.cuda.empty_cache()
        row["wall_s"] = round(time.perf_counter() - t0, 1)
        report["variants"].append(row)
        print(json.dumps(row), flush=True)
        if args.json:  # after every variant, so a time-out keeps what was measured
            Path(args.json).write_text(json.dumps(report, indent=1))

    print(summary(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    return 0


def summary(report: dict) -> str:
    """A small text table of the variants (gpu_report.py makes the combined one)."""
    lines = [f"SDS step on {report['device']} ({report.get('prior', '?')})",
             f"{'variant':16} {'it/s':>7} {'step ms':>8} {'prior ms':>9} {'ratio':>6} {'peak GB':>8}  note"]
    for r in report["variants"]:
        if "error" in r:
            lines.append(f"{r['variant']:16} error: {r['error']}")
            continue
        lines.append(
            f"{r['variant']:16} {r['it_s']:7.1f} {r['step_ms']:8.1f} {r['prior_ms']:9.1f} {r['ratio']:6.2f} "
            f"{r.get('peak_alloc_gb', float('nan')):8.2f}  unet {r['unet_ms']:.1f} ms, vae fwd+bwd {r['vae_fwd_bwd_ms']:.1f} ms"
        )
    lines += [f"note: {n}" for n in report["notes"]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
