"""A frozen Stable-Diffusion-style latent diffusion model behind the prior interface.

The only module of dreamfield that imports diffusers and transformers. Components are loaded one by
one from a diffusers folder (``unet/``, ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``),
weights from safetensors only; the scheduler config is read as JSON into the project's own
:class:`~dreamfield.diffusion.NoiseSchedule`, so SDS/DDS never touch a diffusers scheduler.

Prior interface (shared with :class:`~dreamfield.prior.gaussian.GaussianPrior`):
    schedule, device, dtype, native_size, latent_channels,
    encode(rgb) -> z, decode(z) -> rgb, embed(prompts, negative) -> TextEmbedding,
    eps(z_t, t, text, guidance_scale) -> eps_hat
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from dreamfield.diffusion import NoiseSchedule
from dreamfield.prior.text import TextEmbedding

COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
TOY_PRIOR_DIR = Path(__file__).resolve().parent / "toy_prior"
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class PriorLoadError(ValueError):
    """The prior cannot be loaded; the message is one line saying what is missing and what to pass."""


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" -> float16 on CUDA, float32 elsewhere; "float16"/"float32" or a torch dtype as given."""
    if isinstance(dtype, torch.dtype):
        if dtype not in (torch.float16, torch.bfloat16, torch.float32):
            raise ValueError(f"prior dtype {dtype} is not supported; use float16, bfloat16 or float32")
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
    if dtype not in table:
        raise ValueError(f"prior dtype {dtype!r} is not one of auto, float16, bfloat16, float32")
    return table[dtype]


def _find_folder(model: str | Path | None, local_files_only: bool) -> Path:
    """The local diffusers folder for ``model``: the toy prior, an existing folder, or a hub snapshot."""
    if model is None:
        if not (TOY_PRIOR_DIR / "model_index.json").is_file() and not (TOY_PRIOR_DIR / "unet").is_dir():
            raise PriorLoadError(
                f"the embedded toy prior is not installed ({TOY_PRIOR_DIR} is missing); "
                "build it with the scripts/ training script or pass prior.model=<folder>"
            )
        return TOY_PRIOR_DIR
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise PriorLoadError(f"prior model {str(model)!r} is a file; pass a diffusers folder (with unet/, vae/, ...)")
    if not _HUB_ID.match(str(model)):
        raise PriorLoadError(f"prior folder not found: {str(model)!r}")
    # "owner/name": a Hugging Face hub id. Resolve it to the local cache (or download when allowed).
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                str(model),
                local_files_only=local_files_only,
                allow_patterns=["model_index.json", *(f"{c}/*" for c in COMPONENTS)],
                ignore_patterns=["*.bin", "*.ckpt", "*.pt", "*.pth", "*.msgpack", "*.onnx", "*.h5", "*non_ema*"],
            )
        )
    except Exception as exc:  # LocalEntryNotFoundError, connection errors, RepositoryNotFoundError, ...
        if local_files_only:
            raise PriorLoadError(
                f"hub id {str(model)!r} not found locally and this machine is offline; pass a local folder "
                "(or set prior.local_files_only=false where a hub is reachable)"
            ) from None
        raise PriorLoadError(f"hub id {str(model)!r} could not be downloaded ({type(exc).__name__}); pass a local folder") from None


def _check_folder(folder: Path) -> dict[str, str | None]:
    """Check every component is there with safetensors weights; returns the weight variant per model part."""
    for name in COMPONENTS:
        if not (folder / name).is_dir():
            raise PriorLoadError(
                f"{folder}: missing component '{name}/' (a diffusers Stable Diffusion folder needs "
                f"{', '.join(c + '/' for c in COMPONENTS)})"
            )
    variants: dict[str, str | None] = {}
    for name in ("unet", "vae", "text_encoder"):
        files = sorted(p.name for p in (folder / name).glob("*.safetensors"))
        plain = [f for f in files if f.count(".") == 1]  # no variant tag, sharded or not
        if plain:
            variants[name] = None
        elif any(".fp16." in f for f in files):
            variants[name] = "fp16"  # only the half-precision variant was shipped
        else:
            raise PriorLoadError(
                f"{folder / name}: no .safetensors weights (only safetensors are loaded; convert .bin/.ckpt first)"
            )
    if not (folder / "scheduler" / "scheduler_config.json").is_file():
        raise PriorLoadError(f"{folder}: missing scheduler/scheduler_config.json")
    return variants


def load_prior(
    model: str | Path | None,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "auto",
    local_files_only: bool = True,
    channels_last: bool = False,
) -> DiffusersPrior:
    """Load a frozen latent diffusion prior.

    Args:
        model: a local diffusers Stable Diffusion folder, a hub id ("owner/name", looked up in the local
            Hugging Face cache unless ``local_files_only`` is False), or None for the embedded toy prior.
        device: where the networks live.
        dtype: "auto" (float16 on CUDA, float32 elsewhere), "float16", "bfloat16", "float32".
        local_files_only: never reach the network (the default: the project's machines are offline).
        channels_last: store the UNet and VAE weights in channels-last memory format (faster convolutions
            on recent GPUs; no effect on results beyond rounding).
    Raises:
        PriorLoadError (a ValueError) with one line naming what is missing.
    """
    device = torch.device(device)
    torch_dtype = resolve_dtype(dtype, device)
    folder = _find_folder(model, local_files_only)
    variants = _check_folder(folder)
    try:  # the scheduler config is read as JSON into the project's own schedule (no diffusers scheduler)
        schedule = NoiseSchedule.from_diffusers(json.loads((folder / "scheduler" / "scheduler_config.json").read_text()))
    except ValueError as exc:  # bad JSON or an unsupported schedule
        raise PriorLoadError(f"{folder / 'scheduler'}: {str(exc).splitlines()[0]}") from None

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    # Without accelerate, diffusers can't build the model on the "meta" device; ask for the plain path
    # explicitly rather than have it warn.
    low_mem = importlib.util.find_spec("accelerate") is not None
    try:  # the folder is local by now: never reach the network from here
        unet = UNet2DConditionModel.from_pretrained(
            folder,
            subfolder="unet",
            torch_dtype=torch_dtype,
            variant=variants["unet"],
            use_safetensors=True,
            local_files_only=True,
            low_cpu_mem_usage=low_mem,
        )
        vae = AutoencoderKL.from_pretrained(
            folder,
            subfolder="vae",
            torch_dtype=torch_dtype,
            variant=variants["vae"],
            use_safetensors=True,
            local_files_only=True,
            low_cpu_mem_usage=low_mem,
        )
        text_encoder = CLIPTextModel.from_pretrained(
            folder / "text_encoder",
            dtype=torch_dtype,
            variant=variants["text_encoder"],
            use_safetensors=True,
            local_files_only=True,
        )
        tokenizer = CLIPTokenizer.from_pretrained(folder / "tokenizer", local_files_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PriorLoadError(f"{folder}: could not load the components ({type(exc).__name__}: {first})") from None
    if unet.config.addition_embed_type is not None or unet.config.class_embed_type is not None:
        raise PriorLoadError(
            f"{folder}: the UNet needs extra conditioning ({unet.config.addition_embed_type or unet.config.class_embed_type}); "
            "only Stable Diffusion 1.x/2.x style text-conditioned UNets are supported"
        )
    return DiffusersPrior(unet, vae, text_encoder, tokenizer, schedule, device, channels_last=channels_last)


class DiffusersPrior:
    """Frozen VAE + text encoder + UNet of a latent diffusion model (Rombach et al. 2022).

    Attributes:
        schedule: NoiseSchedule read from the folder's scheduler config (prediction type included).
        device, dtype: where and in which precision the networks run; every method returns float32.
        native_size: image side the model was trained on (unet.sample_size * VAE downsampling, e.g. 512).
        latent_size: unet.sample_size (e.g. 64); latent_channels: e.g. 4.
        scaling_factor: the VAE's latent scale (0.18215 in SD 1.x/2.x).
    """

    def __init__(self, unet, vae, text_encoder, tokenizer, schedule: NoiseSchedule, device, channels_last=False):
        self.unet, self.vae, self.text_encoder, self.tokenizer = unet, vae, text_encoder, tokenizer
        self.schedule = schedule
        self.device = torch.device(device)
        self.dtype = unet.dtype
        for module in (unet, vae, text_encoder):
            module.requires_grad_(False)
            module.eval()
            module.to(self.device)
        if channels_last:
            unet.to(memory_format=torch.channels_last)
            vae.to(memory_format=torch.channels_last)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        sample_size = unet.config.sample_size
        self.latent_size = int(sample_size if isinstance(sample_size, int) else sample_size[0])
        self.native_size = self.latent_size * self.vae_scale_factor
        self.latent_channels = int(unet.config.in_channels)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)
        self._text_cache: dict[str, Tensor] = {}  # prompt -> (L, D) embedding, model dtype, on device

    def __repr__(self) -> str:
        return (
            f"DiffusersPrior(native_size={self.native_size}, latent={self.latent_channels}x{self.latent_size}^2, "
            f"dtype={self.dtype}, device={self.device}, {self.schedule})"
        )

    # ------------------------------------------------------------------ images <-> latents
    def encode(self, rgb: Tensor) -> Tensor:
        """Images (B, 3, H, W) in [0, 1] -> latents z (B, C, h, w) float32, differentiable in ``rgb``.

        The image is resized to the native size (bilinear, no antialiasing: DreamFusion-style 64^2
        renders are upsampled to 512^2, as stable-dreamfusion and threestudio do), mapped to [-1, 1]
        and encoded; z is the mean of the VAE posterior (not a sample, as in threestudio: a sample
        would add noise the SDS gradient cannot remove), times ``scaling_factor`` (LDM, Sec. 3.1).
        """
        if rgb.ndim != 4 or rgb.shape[1] != 3:
            raise ValueError(f"encode expects rgb of shape (B, 3, H, W), got {tuple(rgb.shape)}")
        n = self.native_size
        x = rgb.to(self.device, torch.float32)
        if x.shape[-2:] != (n, n):
            x = F.interpolate(x, size=(n, n), mode="bilinear", align_corners=False, antialias=False)
        x = (2.0 * x - 1.0).to(self.dtype)
        posterior = self.vae.encode(x).latent_dist
        z = (posterior.mean - self.shift_factor) * self.scaling_factor
        return z.float()

    def decode(self, z: Tensor) -> Tensor:
        """Latents z (B, C, h, w) -> images (B, 3, native, native) float32 in [0, 1] (differentiable)."""
        x = (z.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor).to(self.dtype)
        img = self.vae.decode(x).sample
        return ((img.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    # ------------------------------------------------------------------ text
    @torch.no_grad()
    def _encode_text(self, prompts: list[str]) -> Tensor:
        """Prompts -> last hidden state of the text encoder (B, L, D), padded to the tokenizer's length."""
        tokens = self.tokenizer(
            prompts,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        encoder_device = next(self.text_encoder.parameters()).device
        return self.text_encoder(tokens.input_ids.to(encoder_device))[0].to(self.device, self.dtype)

    def offload_text_encoder(self) -> None:
        """Move the text encoder to the CPU once the run's prompts are embedded (they stay cached on the
        device): on a GPU it frees its memory for the scene; a prompt not cached yet is still encoded, on the CPU."""
        if self.device.type != "cpu":
            self.text_encoder.to("cpu", torch.float32)
            torch.cuda.empty_cache()

    def embed(self, prompts: list[str], negative: str = "") -> TextEmbedding:
        """Text embeddings for ``prompts`` (B of them) and the ``negative`` prompt, cached by prompt text.

        Only prompts not yet cached go through the text encoder (in one batch). Returns
        TextEmbedding(cond (B, L, D), uncond (B, L, D)) in the model dtype on the model device.
        """
        if isinstance(prompts, str):
            raise ValueError("embed expects a list of prompts, got a single string; wrap it in a list")
        prompts = list(prompts)
        missing = list(dict.fromkeys(p for p in [*prompts, negative] if p not in self._text_cache))
        if missing:
            for p, e in zip(missing, self._encode_text(missing)):
                self._text_cache[p] = e
        cond = torch.stack([self._text_cache[p] for p in prompts])
        uncond = self._text_cache[negative].unsqueeze(0).expand_as(cond)
        return TextEmbedding(cond, uncond, tuple(prompts), negative)

    # ------------------------------------------------------------------ denoiser
    @torch.no_grad()
    def eps(self, z_t: Tensor, t: Tensor, text: TextEmbedding, guidance_scale: float) -> Tensor:
        """Guided noise prediction eps_hat (B, C, h, w), float32, without gradient.

        Classifier-free guidance (Ho & Salimans 2022, Eq. 6): eps_u + s (eps_c - eps_u), the
        unconditional and conditional halves computed in one UNet call of batch 2B. With s = 1 only the
        conditional batch is run. A v-predicting UNet's output is turned into eps with
        ``schedule.to_eps`` before guidance (the guidance combination commutes with that affine map).

        z_t: (B, C, h, w) noisy latents; t: LongTensor (B,) (a scalar is broadcast);
        text: from :meth:`embed`, batch B or 1.
        """
        B = z_t.shape[0]
        t = torch.as_tensor(t, dtype=torch.long, device=self.device).reshape(-1).expand(B)
        text = text.repeat(B)
        x = z_t.to(self.device, self.dtype)
        if guidance_scale == 1.0:
            out = self.unet(x, t, encoder_hidden_states=text.cond.to(self.dtype)).sample
            return self._to_eps(z_t, t, out)
        both = torch.cat([text.uncond, text.cond]).to(self.dtype)
        out = self.unet(torch.cat([x, x]), torch.cat([t, t]), encoder_hidden_states=both).sample
        out_u, out_c = out.chunk(2)
        eps_u, eps_c = self._to_eps(z_t, t, out_u), self._to_eps(z_t, t, out_c)
        return eps_u + guidance_scale * (eps_c - eps_u)

    def _to_eps(self, z_t: Tensor, t: Tensor, out: Tensor) -> Tensor:
        """UNet output (model dtype) -> eps in float32."""
        out = out.float()
        if self.schedule.prediction_type == "epsilon":
            return out
        return self.schedule.to_eps(z_t.to(self.device, torch.float32), t, out)
