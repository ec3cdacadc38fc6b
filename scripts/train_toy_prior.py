"""Train the embedded toy prior (and the evaluation classifier) from a seed, data generation included.

Writes a diffusers Stable Diffusion folder (default: dreamfield/prior/toy_prior) that
``dreamfield.prior.load_prior(None)`` and ``diffusers.StableDiffusionPipeline.from_pretrained`` load
offline. Stages and the model are described in dreamfield/toy/training.py.

Examples:
    # CPU dry run of the whole code path on tiny data (< 2 minutes; writes outputs/toy_prior_smoke)
    python scripts/train_toy_prior.py --smoke
    # the classifier only, on this CPU (a few minutes)
    python scripts/train_toy_prior.py --stages classifier --views-per-shape 300 --clf-steps 1500
    # the prior on a GPU, five minutes in all
    python scripts/train_toy_prior.py --device cuda --time-budget 270 --stages vae,unet
    # continue an interrupted run from its checkpoints (work folder)
    python scripts/train_toy_prior.py --device cuda --time-budget 270 --stages vae,unet --resume
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

from dreamfield.toy import training  # noqa: E402
from dreamfield.toy.training import TrainConfig  # noqa: E402

STAGES = ("classifier", "vae", "unet")
CPU_VAE_BATCH, CPU_UNET_BATCH = 32, 64


def parse_args(argv=None) -> argparse.Namespace:
    d = TrainConfig()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=None, help="pipeline folder (default dreamfield/prior/toy_prior; smoke: outputs/toy_prior_smoke)")
    p.add_argument("--work", default=None, help="checkpoints and logs (default outputs/toy_prior_work[_smoke])")
    p.add_argument("--classifier-out", default=None, help="classifier weights (default dreamfield/toy/classifier.safetensors; smoke: in --work)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--smoke", action="store_true", help="a few steps on tiny data: checks the code path on a CPU")
    p.add_argument("--resume", action="store_true", help="continue from the checkpoints in --work")
    p.add_argument("--time-budget", type=float, default=None, help="seconds for the whole run (stages share it)")
    p.add_argument("--stages", default=",".join(STAGES), help=f"comma list of {', '.join(STAGES)}")
    p.add_argument("--amp", default=d.amp, choices=("auto", "bf16", "fp16", "none"))
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--views-per-shape", type=int, default=None, help=f"renders per shape (default {d.views_per_shape}; CPU 300)")
    p.add_argument("--clf-steps", type=int, default=d.clf_steps)
    p.add_argument("--vae-steps", type=int, default=d.vae_steps)
    p.add_argument("--vae-batch", type=int, default=None, help=f"default {d.vae_batch} (CPU {CPU_VAE_BATCH})")
    p.add_argument("--unet-steps", type=int, default=d.unet_steps)
    p.add_argument("--unet-batch", type=int, default=None, help=f"default {d.unet_batch} (CPU {CPU_UNET_BATCH})")
    p.add_argument("--vae-share", type=float, default=d.vae_share, help="share of --time-budget for the VAE")
    p.add_argument("--checkpoint-every", type=float, default=d.checkpoint_every, help="seconds")
    return p.parse_args(argv)


def make_config(a: argparse.Namespace) -> TrainConfig:
    stages = tuple(s.strip() for s in a.stages.split(",") if s.strip())
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"--stages: {', '.join(bad)} not among {', '.join(STAGES)}")
    if a.device not in ("cpu", "cuda") and not a.device.startswith("cuda:"):
        raise SystemExit(f"--device: {a.device!r} is not cpu or cuda")
    if a.device.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible; use --device cpu")
    cfg = TrainConfig(
        seed=a.seed, device=a.device, amp=a.amp, time_budget=a.time_budget, checkpoint_every=a.checkpoint_every,
        clf_steps=a.clf_steps, vae_steps=a.vae_steps, unet_steps=a.unet_steps, stages=stages, vae_share=a.vae_share,
    )
    cpu = not a.device.startswith("cuda")
    # Smaller batches and fewer renders on a CPU (the prototype's settings: VAE 32, UNet 64, 300 views).
    cfg.views_per_shape = a.views_per_shape or (300 if cpu else cfg.views_per_shape)
    cfg.vae_batch = a.vae_batch or (CPU_VAE_BATCH if cpu else cfg.vae_batch)
    cfg.unet_batch = a.unet_batch or (CPU_UNET_BATCH if cpu else cfg.unet_batch)
    if cpu:
        cfg.unet_lr = 5e-4
    if a.smoke:
        training.smoke_config(cfg)
    return cfg


def main(argv=None) -> int:
    a = parse_args(argv)
    cfg = make_config(a)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(cfg.device)
    if dev.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    suffix = "_smoke" if a.smoke else ""
    out = Path(a.out) if a.out else (REPO / "outputs" / "toy_prior_smoke" if a.smoke else REPO / "dreamfield/prior/toy_prior")
    work = Path(a.work) if a.work else REPO / "outputs" / f"toy_prior_work{suffix}"
    clf_out = Path(a.classifier_out) if a.classifier_out else (
        work / "classifier.safetensors" if a.smoke else REPO / "dreamfield/toy/classifier.safetensors")
    work.mkdir(parents=True, exist_ok=True)
    (work / "config.json").write_text(json.dumps(training.config_summary(cfg), indent=1))
    start = time.perf_counter()
    budget = cfg.time_budget
    info: dict = {"config": training.config_summary(cfg), "device": str(dev), "torch": torch.__version__}
    if dev.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(dev)

    # 1. data: colour-free renders of every shape; each image is coloured on the fly.
    from dreamfield.toy import data as toy_data

    t = time.perf_counter()
    bank = toy_data.make_geometry_bank(cfg.views_per_shape, seed=cfg.seed, device=dev, progress=True)
    if dev.type == "cuda":
        bank = toy_data.GeometryBank(bank.maps.half(), bank.azimuth, bank.elevation)  # halves memory; values in [0, 1]
        torch.cuda.synchronize()
    info["data"] = {"views_per_shape": cfg.views_per_shape, "seconds": round(time.perf_counter() - t, 1)}
    print(f"data: {6 * cfg.views_per_shape} renders in {info['data']['seconds']} s", flush=True)

    # 2. classifier (all 36 pairs), checked on fresh renders of another seed.
    if "classifier" in cfg.stages:
        from dreamfield.toy import classifier
        from dreamfield.toy.domain import ALL_PAIRS

        if a.resume and clf_out.is_file():
            print(f"classifier: kept {clf_out}")
        else:
            t = time.perf_counter()
            clf_budget = None if budget is None else 0.05 * budget
            model = classifier.train_classifier(bank, cfg.clf_steps, cfg.clf_batch, seed=cfg.seed,
                                                time_budget=clf_budget, progress=True)
            test = toy_data.render_pairs(ALL_PAIRS, 1 if a.smoke else 10, seed=cfg.seed + 1000, device=dev)
            acc_s, acc_c = classifier.accuracy(model, test["images"], test["shape"], test["colour"])
            classifier.save_classifier(model, clf_out)
            info["classifier"] = {"shape_acc": round(acc_s, 4), "colour_acc": round(acc_c, 4),
                                  "test_images": len(test["images"]), "seconds": round(time.perf_counter() - t, 1)}
            (work / "classifier.json").write_text(json.dumps(info["classifier"], indent=1))
            print(f"classifier: {info['classifier']} -> {clf_out}", flush=True)

    # 3. VAE, 4. text encoder + UNet, 5. export.
    if "vae" in cfg.stages or "unet" in cfg.stages:
        vae_budget = None if budget is None else cfg.vae_share * budget
        unet_budget = None if budget is None else cfg.unet_share * budget
        vae, info["vae"] = training.train_vae(cfg, bank, work, a.resume, vae_budget)
        if "unet" in cfg.stages:
            tokenizer = training.write_tokenizer(work / "tokenizer", cfg)
            if budget is not None:  # give the UNet what the earlier stages left, less 15 s for the export
                unet_budget = max(unet_budget, budget - (time.perf_counter() - start) - 15.0)
            unet, text, scale, info["unet"] = training.train_unet(cfg, vae, bank, tokenizer, work, a.resume, unet_budget)
            info["seconds_total"] = round(time.perf_counter() - start, 1)
            sizes = training.export_pipeline(out, unet, vae, text, work / "tokenizer", scale, info)
            print(f"export: {out} ({sum(sizes.values()) / 2**20:.2f} MiB in {len(sizes)} files; "
                  f"largest {max(sizes.values()) / 2**20:.2f} MiB)", flush=True)
            check_pipeline(out)
    print(f"done in {time.perf_counter() - start:.1f} s", flush=True)
    return 0


def check_pipeline(out: Path) -> None:
    """Load the folder as diffusers and as the project's prior, and run one guided UNet call."""
    from diffusers import StableDiffusionPipeline

    from dreamfield.prior import load_prior

    pipe = StableDiffusionPipeline.from_pretrained(out, safety_checker=None, dtype=torch.float32, local_files_only=True)
    assert pipe.unet.dtype == torch.float32
    prior = load_prior(out, device="cpu", dtype="float32")
    text = prior.embed(["a red cube, front view"])
    z = torch.randn(1, prior.latent_channels, prior.latent_size, prior.latent_size)
    eps = prior.eps(z, torch.tensor([500]), text, guidance_scale=5.0)
    assert torch.isfinite(eps).all() and prior.native_size == 64
    print(f"check: StableDiffusionPipeline and load_prior load {out}; eps std {eps.std():.3f}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
