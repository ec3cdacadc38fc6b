"""Training the embedded toy prior: a tiny Stable-Diffusion-layout latent diffusion model of the toy world.

Stages, each resumable from its checkpoint in the work folder:

1. data        colour-free renders of the six shapes (``data.make_geometry_bank``), on the training device;
2. classifier  the evaluation CNN (``toy.classifier``), on all 36 pairs (optional);
3. vae         AutoencoderKL, 64x64 RGB -> 4x16x16, reconstruction (MSE + L1) + a small KL to N(0, I)
               (Kingma & Welling 2014; LDM, Rombach et al. 2022, Sec. 3), on the 30 training pairs only;
               then the latent scaling factor = 1 / std of the training latents (LDM, Sec. 4.3.2);
4. unet        UNet2DConditionModel with cross-attention to a small CLIP text encoder trained jointly,
               epsilon prediction under SD's scaled_linear schedule via the project's own
               ``NoiseSchedule.q_sample`` (DDPM, Ho et al. 2020, Eq. 14 loss), 10 % of captions dropped to
               the empty prompt for classifier-free guidance (Ho & Salimans 2022), EMA of the weights;
5. export      a diffusers Stable Diffusion folder (EMA weights; UNet in fp16 so each file stays < 16 MB).

Held-out pairs (``domain.HELD_OUT``) are never shown to the VAE, the text encoder or the UNet.
With a time budget the learning rate follows the elapsed share of the stage's time, so the cosine
decay ends when the time does; results then depend on the machine's speed (give only step counts for
a run that is reproducible bit for bit on one machine).
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from dreamfield.prior.folder import SD_DDIM_SCHEDULER, write_pipeline_index
from dreamfield.diffusion import NoiseSchedule
from dreamfield.toy import data as toy_data
from dreamfield.toy.domain import ALL_PAIRS, COLOUR_NAMES, HELD_OUT, SHAPES, TRAIN_PAIRS, VIEW_LABELS, caption

# The words of the prompt language; the tokenizer makes each one a single token.
WORDS = ("a", *COLOUR_NAMES, *SHAPES, *VIEW_LABELS, "view")
MAX_FILE_BYTES = 16 * 2**20  # the GPU machine returns files up to 16 MiB
MAX_TOTAL_BYTES = 30 * 2**20  # the package budget for the embedded prior


@dataclass
class TrainConfig:
    seed: int = 0
    device: str = "cpu"
    amp: str = "auto"  # "auto" (bf16 on CUDA, off on CPU), "bf16", "fp16", "none"
    time_budget: Optional[float] = None  # seconds for the whole run; None = step counts only
    checkpoint_every: float = 60.0  # seconds between checkpoints
    views_per_shape: int = 2000
    # classifier
    train_classifier: bool = True
    clf_steps: int = 1500
    clf_batch: int = 64
    # VAE
    vae_channels: tuple[int, ...] = (16, 32, 64)  # 3 blocks: 64 -> 16 (4x down)
    vae_steps: int = 4000
    vae_batch: int = 128
    vae_lr: float = 1e-3
    kl_weight: float = 1e-5  # per image, KL summed over latents vs reconstruction summed over pixels
    vae_share: float = 0.25  # share of the time budget for the VAE
    # text encoder
    text_hidden: int = 64
    text_layers: int = 3
    text_heads: int = 4
    max_length: int = 16  # padded prompt length ("a purple cylinder, overhead view" is 8 tokens)
    # UNet
    unet_channels: tuple[int, ...] = (64, 128, 128)
    unet_layers_per_block: int = 1
    unet_steps: int = 20000
    unet_batch: int = 256
    unet_lr: float = 8e-4
    warmup_steps: int = 200
    ema_decay: float = 0.999
    cond_drop: float = 0.1  # share of captions replaced by "" (classifier-free guidance)
    unet_share: float = 0.62  # share of the time budget for the UNet (the rest: data, classifier, export)
    stages: tuple[str, ...] = field(default_factory=lambda: ("classifier", "vae", "unet"))


def smoke_config(cfg: TrainConfig) -> TrainConfig:
    """The same architecture and code path on tiny data and a few steps (a CPU dry run)."""
    cfg.views_per_shape = 6
    cfg.clf_steps, cfg.clf_batch = 3, 8
    cfg.vae_steps, cfg.vae_batch = 3, 8
    cfg.unet_steps, cfg.unet_batch = 4, 8
    cfg.warmup_steps = 2
    cfg.checkpoint_every = 0.0
    return cfg


# ---------------------------------------------------------------------------------------------- models
def build_vae(cfg: TrainConfig):
    from diffusers import AutoencoderKL

    n = len(cfg.vae_channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=tuple(cfg.vae_channels),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=min(16, cfg.vae_channels[0]),
        sample_size=64,
    )


def build_text_encoder(cfg: TrainConfig, vocab_size: int, bos: int, eos: int):
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab_size,
            hidden_size=cfg.text_hidden,
            intermediate_size=4 * cfg.text_hidden,
            num_hidden_layers=cfg.text_layers,
            num_attention_heads=cfg.text_heads,
            max_position_embeddings=cfg.max_length,
            bos_token_id=bos,
            eos_token_id=eos,
            pad_token_id=eos,
        )
    )


def build_unet(cfg: TrainConfig):
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        # cross-attention at 16x16 and 8x8, plain resnets at 4x4
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=tuple(cfg.unet_channels),
        layers_per_block=cfg.unet_layers_per_block,
        cross_attention_dim=cfg.text_hidden,
        attention_head_dim=8,
        norm_num_groups=32,
    )


def write_tokenizer(folder: Path, cfg: TrainConfig):
    """Write the CLIP tokenizer files for the prompt language and load them back -> CLIPTokenizer."""
    from transformers import CLIPTokenizer

    from dreamfield.prior.tokenizer import write_clip_tokenizer

    write_clip_tokenizer(folder, WORDS, model_max_length=cfg.max_length)
    return CLIPTokenizer.from_pretrained(folder, local_files_only=True)


# ---------------------------------------------------------------------------------------------- helpers
class Clock:
    """Progress of a stage in [0, 1]: the larger of steps done / max steps and time used / time budget."""

    def __init__(self, max_steps: int, budget: Optional[float], elapsed: float = 0.0):
        self.max_steps, self.budget = max_steps, budget
        self.t0 = time.perf_counter() - elapsed

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    def progress(self, step: int) -> float:
        p = step / max(self.max_steps, 1)
        if self.budget is not None:
            p = max(p, self.elapsed / max(self.budget, 1e-9))
        return p


def cosine_lr(base: float, progress: float, step: int, warmup: int, floor: float = 0.05) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay from ``base`` to ``floor * base``."""
    warm = min(1.0, (step + 1) / max(warmup, 1))
    return base * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def autocast(cfg: TrainConfig, device: torch.device):
    kind = cfg.amp
    if kind == "auto":
        kind = "bf16" if device.type == "cuda" else "none"
    if kind == "none":
        return torch.autocast(device.type, enabled=False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[kind]
    return torch.autocast(device.type, dtype=dtype)


def save_checkpoint(path: Path, state: dict) -> None:
    """Atomic write (temporary file + rename), loadable with ``torch.load(weights_only=True)``."""
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, device: torch.device) -> Optional[dict]:
    if not path.is_file():
        return None
    return torch.load(path, map_location=device, weights_only=True)


class EMA:
    """Exponential moving average of a module's floating-point state, ``ema <- decay ema + (1 - decay) w``.

    The state tensors are looked up once (they alias the parameters the optimiser updates in place) and
    updated with one fused ``_foreach_lerp_``: a per-tensor loop costs ~1000 kernel launches per step.
    """

    def __init__(self, model: torch.nn.Module, state: Optional[dict[str, torch.Tensor]] = None):
        live = model.state_dict(keep_vars=False)
        self.state = state if state is not None else {k: v.detach().clone() for k, v in live.items()}
        keys = [k for k, v in live.items() if v.dtype.is_floating_point]
        self._ema = [self.state[k] for k in keys]
        self._live = [live[k] for k in keys]

    @torch.no_grad()
    def update(self, decay: float) -> None:
        torch._foreach_lerp_(self._ema, self._live, 1.0 - decay)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]."""
    mse = F.mse_loss(a.float().clamp(0, 1), b.float()).item()
    return 10 * math.log10(1.0 / max(mse, 1e-12))


def _log(msg: str) -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------------------------------- stages
def train_vae(cfg: TrainConfig, bank: toy_data.GeometryBank, work: Path, resume: bool, budget: Optional[float]):
    """Returns (vae in eval mode, report dict)."""
    from tqdm.auto import tqdm

    dev = bank.maps.device
    torch.manual_seed(cfg.seed + 5)  # module initialisers use the global RNG
    vae = build_vae(cfg).to(dev)
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0, fused=dev.type == "cuda")
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 1)
    step, elapsed, report = 0, 0.0, {}
    ck_path = work / "vae.ckpt"
    ck = load_checkpoint(ck_path, dev) if resume else None
    if ck is not None:
        vae.load_state_dict(ck["model"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"].cpu())
        step, elapsed, report = int(ck["step"]), float(ck["elapsed"]), json.loads(ck["report"])
        _log(f"vae: resumed at step {step} ({'done' if ck['done'] else 'running'})")
        if ck["done"]:
            return vae.eval(), report
    train_pairs = toy_data.pairs_tensor(TRAIN_PAIRS, dev)
    held_pairs = toy_data.pairs_tensor(HELD_OUT, dev)
    val_gen = torch.Generator(device=dev).manual_seed(cfg.seed + 2)
    val_train = toy_data.draw_batch(bank, train_pairs, 64, val_gen)[0]
    val_held = toy_data.draw_batch(bank, held_pairs, 64, val_gen)[0]
    clock = Clock(cfg.vae_steps, budget, elapsed)
    last_ck = time.perf_counter()
    bar = tqdm(total=cfg.vae_steps, initial=step, desc="vae", unit="step", mininterval=2.0)
    vae.train()
    while clock.progress(step) < 1.0:
        lr = cosine_lr(cfg.vae_lr, clock.progress(step), step, cfg.warmup_steps)
        for g in opt.param_groups:
            g["lr"] = lr
        x = toy_data.draw_batch(bank, train_pairs, cfg.vae_batch, gen)[0] * 2 - 1  # (B, 3, 64, 64) in [-1, 1]
        with autocast(cfg, dev):
            post = vae.encode(x).latent_dist
            # Reparameterisation z = mu + sigma * e (Kingma & Welling 2014, Eq. 10), noise from our generator.
            z = post.mean + post.std * torch.randn(post.mean.shape, generator=gen, device=dev)
            rec = vae.decode(z).sample
        rec = rec.float()
        rec_loss = F.mse_loss(rec, x) + F.l1_loss(rec, x)
        # KL(q(z|x) || N(0, I)) summed over the latent, against the reconstruction summed over pixels.
        kl = 0.5 * (post.mean.float() ** 2 + post.var.float() - 1.0 - post.logvar.float()).sum((1, 2, 3)).mean()
        loss = rec_loss + cfg.kl_weight * kl / x[0].numel()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        step += 1
        bar.update(1)
        if step % 50 == 0 or step == 1:
            bar.set_postfix(loss=f"{rec_loss.item():.4f}", kl=f"{kl.item():.0f}", lr=f"{lr:.1e}")
        if cfg.checkpoint_every and time.perf_counter() - last_ck > cfg.checkpoint_every:
            _vae_ckpt(ck_path, vae, opt, gen, step, clock.elapsed, report, done=False)
            last_ck = time.perf_counter()
    bar.close()
    vae.eval()
    with torch.no_grad():
        report = {
            "steps": step,
            "seconds": round(clock.elapsed, 1),
            "psnr_train_pairs": round(psnr(_reconstruct(vae, val_train), val_train), 2),
            "psnr_held_out_pairs": round(psnr(_reconstruct(vae, val_held), val_held), 2),
            "params": sum(p.numel() for p in vae.parameters()),
        }
    _log(f"vae: {report}")
    _vae_ckpt(ck_path, vae, opt, gen, step, clock.elapsed, report, done=True)
    return vae, report


def _vae_ckpt(path, vae, opt, gen, step, elapsed, report, done):
    save_checkpoint(
        path,
        dict(model=vae.state_dict(), opt=opt.state_dict(), gen=gen.get_state(), step=step, elapsed=elapsed,
             report=json.dumps(report), done=done),
    )


@torch.no_grad()
def _reconstruct(vae, rgb: torch.Tensor) -> torch.Tensor:
    """rgb (B, 3, H, W) in [0, 1] -> reconstruction through the posterior mean, in [0, 1]."""
    z = vae.encode(rgb * 2 - 1).latent_dist.mean
    return ((vae.decode(z).sample + 1) / 2).clamp(0, 1)


@torch.no_grad()
def encode_dataset(vae, bank: toy_data.GeometryBank, pairs: torch.Tensor, chunk: int = 512):
    """Posterior means of every (pair, view) image -> latents (P * V, 4, 16, 16) float32, and for each
    latent its pair index (into ``pairs``) and view label index (into VIEW_LABELS)."""
    from dreamfield.prior.text import view_label

    dev = bank.maps.device
    table = toy_data.colour_table(dev)
    P, V = pairs.shape[0], bank.maps.shape[1]
    latents = []
    for p in range(P):
        c, s = pairs[p].tolist()
        for i in range(0, V, chunk):
            geo = bank.maps[s, i : i + chunk].float()
            rgb = toy_data.colourise(geo, table[c].expand(geo.shape[0], 3))
            latents.append(vae.encode(rgb * 2 - 1).latent_dist.mean.float())
    labels = torch.tensor(
        [[VIEW_LABELS.index(view_label(a, e)) for a, e in zip(az.tolist(), el.tolist())]
         for az, el in zip(bank.azimuth.cpu(), bank.elevation.cpu())],
        device=dev,
    )  # (S, V)
    pair_idx = torch.arange(P, device=dev).repeat_interleave(V)
    view_idx = torch.arange(V, device=dev).repeat(P)
    view_label_idx = labels[pairs[pair_idx, 1], view_idx]
    return torch.cat(latents), pair_idx, view_label_idx


def caption_table(tokenizer, pairs, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (P, 4, L) of every pair's caption with each view suffix, and of the empty prompt (L,)."""
    from dreamfield.prior.text import view_prompt

    angles = {"front": (0.0, 0.0), "side": (90.0, 0.0), "back": (180.0, 0.0), "overhead": (0.0, 75.0)}
    texts = [[view_prompt(caption(c, s), *angles[v]) for v in VIEW_LABELS] for c, s in pairs]
    flat = [t for row in texts for t in row]

    def tok(prompts):
        return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                         return_tensors="pt").input_ids

    ids = tok(flat).reshape(len(pairs), len(VIEW_LABELS), -1).to(device)
    empty = tok([""])[0].to(device)
    return ids, empty


def train_unet(cfg: TrainConfig, vae, bank, tokenizer, work: Path, resume: bool, budget: Optional[float]):
    """Returns (ema unet, ema text encoder, scaling factor, report)."""
    from tqdm.auto import tqdm

    from dreamfield.prior.tokenizer import special_token_ids

    dev = bank.maps.device
    vocab = tokenizer.get_vocab()
    bos, eos = special_token_ids(vocab)
    torch.manual_seed(cfg.seed + 3)  # module initialisers use the global RNG
    unet = build_unet(cfg).to(dev)
    text = build_text_encoder(cfg, len(vocab), bos, eos).to(dev)
    params = list(unet.parameters()) + list(text.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01, fused=dev.type == "cuda")
    gen = torch.Generator(device=dev).manual_seed(cfg.seed + 4)
    schedule = NoiseSchedule.from_diffusers(SD_DDIM_SCHEDULER)

    train_pairs = toy_data.pairs_tensor(TRAIN_PAIRS, dev)
    latents, pair_idx, view_idx = encode_dataset(vae, bank, train_pairs)
    step, elapsed, scale = 0, 0.0, 1.0 / latents.std().item()  # LDM Sec. 4.3.2: unit-variance latents
    ck_path = work / "unet.ckpt"
    ck = load_checkpoint(ck_path, dev) if resume else None
    if ck is not None:
        unet.load_state_dict(ck["unet"])
        text.load_state_dict(ck["text"])
        opt.load_state_dict(ck["opt"])
        gen.set_state(ck["gen"].cpu())
        step, elapsed, scale = int(ck["step"]), float(ck["elapsed"]), float(ck["scale"])
        _log(f"unet: resumed at step {step} ({'done' if ck['done'] else 'running'})")
    ema_unet = EMA(unet, ck["ema_unet"] if ck is not None else None)
    ema_text = EMA(text, ck["ema_text"] if ck is not None else None)
    report: dict = json.loads(ck["report"]) if ck is not None else {}
    if ck is None or not ck["done"]:
        ids, empty = caption_table(tokenizer, TRAIN_PAIRS, dev)
        x_all = latents * scale
        clock = Clock(cfg.unet_steps, budget, elapsed)
        last_ck = time.perf_counter()
        bar = tqdm(total=cfg.unet_steps, initial=step, desc="unet", unit="step", mininterval=2.0)
        unet.train()
        text.train()
        loss_avg = None
        while clock.progress(step) < 1.0:
            lr = cosine_lr(cfg.unet_lr, clock.progress(step), step, cfg.warmup_steps)
            for g in opt.param_groups:
                g["lr"] = lr
            idx = torch.randint(0, x_all.shape[0], (cfg.unet_batch,), generator=gen, device=dev)
            x0 = x_all[idx]
            tok = ids[pair_idx[idx], view_idx[idx]]  # (B, L)
            drop = torch.rand(cfg.unet_batch, generator=gen, device=dev) < cfg.cond_drop
            tok = torch.where(drop[:, None], empty[None], tok)
            t = torch.randint(0, schedule.num_train_timesteps, (cfg.unet_batch,), generator=gen, device=dev)
            noise = torch.randn(x0.shape, generator=gen, device=dev)
            x_t = schedule.q_sample(x0, t, noise)  # DDPM Eq. 4
            with autocast(cfg, dev):
                cond = text(tok)[0]  # (B, L, D), last hidden state, as the prior reads it
                eps_hat = unet(x_t, t, encoder_hidden_states=cond).sample
            loss = F.mse_loss(eps_hat.float(), noise)  # DDPM Eq. 14 (L_simple)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            decay = min(cfg.ema_decay, (1 + step) / (10 + step))  # EMA warm-up
            ema_unet.update(decay)
            ema_text.update(decay)
            step += 1
            bar.update(1)
            if loss_avg is None:
                loss_avg = loss.item()
            elif step % 10 == 0:  # .item() synchronises the GPU: read the loss every 10 steps only
                loss_avg = 0.9 * loss_avg + 0.1 * loss.item()
            if step % 50 == 0 or step == 1:
                bar.set_postfix(loss=f"{loss_avg:.4f}", lr=f"{lr:.1e}")
            if cfg.checkpoint_every and time.perf_counter() - last_ck > cfg.checkpoint_every:
                _unet_ckpt(ck_path, unet, text, ema_unet, ema_text, opt, gen, step, clock.elapsed, scale, report, False)
                last_ck = time.perf_counter()
        bar.close()
        report = {
            "steps": step,
            "seconds": round(clock.elapsed, 1),
            "loss_ema": round(float(loss_avg), 5) if loss_avg is not None else None,
            "batch": cfg.unet_batch,
            "unet_params": sum(p.numel() for p in unet.parameters()),
            "text_params": sum(p.numel() for p in text.parameters()),
            "latents": int(x_all.shape[0]),
        }
        _log(f"unet: {report}")
        _unet_ckpt(ck_path, unet, text, ema_unet, ema_text, opt, gen, step, clock.elapsed, scale, report, True)
    unet.load_state_dict(ema_unet.state)
    text.load_state_dict(ema_text.state)
    report["scaling_factor"] = scale
    return unet.eval(), text.eval(), scale, report


def _unet_ckpt(path, unet, text, ema_unet, ema_text, opt, gen, step, elapsed, scale, report, done):
    save_checkpoint(
        path,
        dict(unet=unet.state_dict(), text=text.state_dict(), ema_unet=ema_unet.state, ema_text=ema_text.state,
             opt=opt.state_dict(), gen=gen.get_state(), step=step, elapsed=elapsed, scale=scale,
             report=json.dumps(report), done=done),
    )


# ---------------------------------------------------------------------------------------------- export
def export_pipeline(out: Path, unet, vae, text_encoder, tokenizer_dir: Path, scale: float, info: dict) -> dict:
    """Write the diffusers Stable Diffusion folder; returns {relative path: bytes}.

    UNet weights in fp16 (loaded back into fp32 by ``torch_dtype=torch.float32``), VAE and text encoder
    in fp32. Raises ValueError if a file exceeds 16 MiB or the folder 30 MiB.
    """
    import shutil


    out.mkdir(parents=True, exist_ok=True)
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        if (out / sub).exists():
            shutil.rmtree(out / sub)
    vae.register_to_config(scaling_factor=float(scale))
    unet.to("cpu", torch.float32).save_pretrained(out / "unet", safe_serialization=True)
    _to_fp16(out / "unet" / "diffusion_pytorch_model.safetensors")
    vae.to("cpu", torch.float32).save_pretrained(out / "vae", safe_serialization=True)
    text_encoder.to("cpu", torch.float32).save_pretrained(out / "text_encoder", safe_serialization=True)
    shutil.copytree(tokenizer_dir, out / "tokenizer")
    write_pipeline_index(out, SD_DDIM_SCHEDULER)
    (out / "training.json").write_text(json.dumps(info, indent=1))
    sizes = {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*")) if p.is_file()}
    big = {k: v for k, v in sizes.items() if v > MAX_FILE_BYTES}
    if big:
        raise ValueError(f"files over 16 MiB in {out}: {big}")
    if sum(sizes.values()) > MAX_TOTAL_BYTES:
        raise ValueError(f"{out} holds {sum(sizes.values()) / 2**20:.1f} MiB, over the 30 MiB budget")
    return sizes


def _to_fp16(path: Path) -> None:
    """Rewrite a safetensors file with its float tensors in float16 (same names, same metadata)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    half = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in tensors.items()}
    save_file(half, str(path), metadata=meta or {"format": "pt"})


def config_summary(cfg: TrainConfig) -> dict:
    d = asdict(cfg)
    d["held_out"] = [list(p) for p in HELD_OUT]
    d["all_pairs"] = len(ALL_PAIRS)
    return d
