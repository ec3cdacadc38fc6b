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
4. where the time goes: a copy of the loop's step written out phase by phase (render, encode,
   sds_grad, backward, Adam), timed with CUDA events, and a torch.profiler table of the top ops.

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


# ------------------------------------------------------------------------------------------- 2
def full_loop(cfg, prior, prompt: str, warmup: int, steps: int) -> dict:
    """Run dreamfield.optimize.optimize for warmup + steps (+1) steps; median step time and peak memory."""
    from dreamfield.optimize import optimize

    dev = prior.device
    stamps: list[float] = []

    def on_step(done: int) -> None:
        sync(dev)
        stamps.append(time.perf_counter())

    if dev.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(dev)
    with tempfile.TemporaryDirectory() as tmp:
        sync(dev)
        stamps.append(time.perf_counter())
        optimize(cfg, prompt, Path(tmp) / "run", prior, dev, on_step=on_step, progress=False)
    # interval k = step k; the last one also wrote the final checkpoint: dropped
    dts = [b - a for a, b in zip(stamps[:-1], stamps[1:])][:-1]
    timed_dts = dts[warmup:] or dts
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


# ------------------------------------------------------------------------------------------- 4
def phase_breakdown(
    cfg, prior, prompt: str, warmup: int, steps: int, profile_path: Path | None, profile_steps: int = 3
) -> dict:
    """The loop's step written out phase by phase (as in dreamfield/optimize.py), CUDA-event timed.

    The occupancy-grid update (every cfg.render.occ_update_every steps) is counted in "render".

    Returns median ms per phase; writes a torch.profiler table of ``profile_steps`` steps to ``profile_path``.
    """
    from dreamfield.distill import entropy_loss, grad_to_loss, opacity_loss, sample_timesteps, sds_grad
    from dreamfield.optimize import make_optimizer, make_scene, prompts_for
    from dreamfield.scene.cameras import sample_cameras
    from dreamfield.scene.render import choose_shading, render

    dev = prior.device
    scene = make_scene(cfg, dev)
    optimizer = make_optimizer(cfg, scene)
    occupancy = None
    if cfg.render.use_occupancy_grid and dev.type == "cuda":
        from dreamfield.scene.occupancy import OccupancyGrid

        occupancy = OccupancyGrid(cfg.render, cfg.field.bound).to(dev)
    gen = torch.Generator(device="cpu").manual_seed(0)
    total = warmup + steps + profile_steps + 1
    res = cfg.render.resolution
    names = ("render", "encode", "sds_grad", "backward", "adam")
    samples: dict[str, list[float]] = {k: [] for k in names}
    n_samples: list[int] = []

    def step(i: int, record: bool) -> None:
        cuda = dev.type == "cuda"
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(len(names) + 1)] if cuda else []
        wall: list[float] = []

        def mark(k: int) -> None:  # end of phase k (0 = start of the step)
            if cuda:
                ev[k].record()
            else:
                wall.append(time.perf_counter())

        mark(0)
        cams = sample_cameras(cfg.camera, cfg.guidance.batch_size, gen, dev)
        shading = choose_shading(cfg.render, gen)
        if occupancy is not None:
            occupancy.update(i, scene.field)
        out = render(scene.field, cams, res, res, cfg.render, scene.background, shading, occupancy, generator=gen)
        mark(1)
        z = prior.encode(out.rgb)
        mark(2)
        t = sample_timesteps(z.shape[0], i, total, cfg.guidance, prior.schedule.num_train_timesteps, gen, z.device)
        noise = torch.randn(z.shape, generator=gen).to(z.device, z.dtype)
        text = prior.embed(prompts_for(prompt, cams, cfg.prior.view_dependent), cfg.prior.negative_prompt)
        g = sds_grad(prior, z, text, t, noise, cfg.prior.guidance_scale, cfg.guidance.weighting, cfg.guidance.grad_clip, step=i)
        mark(3)
        loss = (
            cfg.loss.sds * grad_to_loss(z, g)
            + cfg.loss.opacity * opacity_loss(out.opacity)
            + cfg.loss.entropy * entropy_loss(out.opacity)
            + cfg.loss.orientation * out.orientation
        )
        if not torch.isfinite(loss):  # the loop checks too (a device sync, as there)
            raise FloatingPointError(f"loss is {loss.item()} at step {i}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        mark(4)
        optimizer.step()
        mark(5)
        if record:
            n_samples.append(out.n_samples)
            if cuda:
                torch.cuda.synchronize(dev)
                for k, name in enumerate(names):
                    samples[name].append(ev[k].elapsed_time(ev[k + 1]))
            else:
                for k, name in enumerate(names):
                    samples[name].append(1e3 * (wall[k + 1] - wall[k]))

    for i in range(warmup):
        step(i, False)
    for i in range(warmup, warmup + steps):
        step(i, True)
    result = {f"{k}_ms": statistics.median(v) for k, v in samples.items()}
    result["samples_per_step"] = int(statistics.median(n_samples))
    result["occupancy"] = occupancy is not None
    if profile_path is not None:
        from torch.profiler import ProfilerActivity, profile

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if dev.type == "cuda" else [])
        with profile(activities=acts) as prof:
            for i in range(warmup + steps, warmup + steps + profile_steps):
                step(i, False)
            sync(dev)
        key = "cuda_time_total" if dev.type == "cuda" else "cpu_time_total"
        try:
            table = prof.key_averages().table(sort_by=key, row_limit=30)
        except Exception:  # newer torch names it device_time_total
            table = prof.key_averages().table(sort_by="device_time_total" if dev.type == "cuda" else key, row_limit=30)
        profile_path.write_text(f"torch.profiler, {profile_steps} SDS steps, sorted by {key}\n{table}\n")
    return result


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
    row.update(full_loop(cfg, prior, args.prompt, args.warmup, args.steps))
    row["ratio"] = row["step_ms"] / row["prior_ms"]
    if name in ("base", "no_occ") or args.profile_all:
        try:
            prof = Path(args.profile) if (args.profile and name == "base") else None
            row["phases"] = phase_breakdown(cfg, prior, args.prompt, args.warmup, args.phase_steps or max(5, args.steps // 3),
                                            prof, args.profile_steps)
        except Exception as exc:  # the breakdown is a copy of the loop: report, don't lose the variant
            row["phases_error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
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
