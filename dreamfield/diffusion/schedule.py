"""The discrete-time Gaussian diffusion process: noise schedule, forward process, posterior, steps.

Notation (paper symbol -> name here), following DDPM (Ho et al. 2020) and DDIM (Song et al. 2021):

    T                          num_train_timesteps; timesteps are integers t in [0, T - 1]
    beta_t                     betas[t]
    alpha_t = 1 - beta_t       alphas[t]
    abar_t = prod_{s<=t} alpha_s   alphas_cumprod[t]   (DDIM writes this as alpha_t)
    abar_{-1} = 1              by convention: "t_prev < 0" means the clean data
    eps                        the unit Gaussian noise in x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0     the velocity target (Salimans & Ho 2022, Sec. 4)

Every schedule term is computed once in float64 (as improved-diffusion does, for accuracy) and kept on
the CPU; per-call coefficients are gathered, moved to the input's device and combined in float64,
and results are cast back to the input's dtype.

Timestep numbering matches diffusers: index 0 is the first (least noisy) step, so that a
diffusers UNet's ``timestep`` argument and ``alphas_cumprod[t]`` agree.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")
PREDICTION_TYPES = ("epsilon", "v_prediction")


def _cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Betas of the cosine schedule (Nichol & Dhariwal 2021, Eq. 17), float64 (T,).

    abar(u) = cos^2(((u + s) / (1 + s)) * pi / 2) with s = 0.008, and
    beta_t = min(1 - abar((t + 1) / T) / abar(t / T), max_beta); the cap 0.999 avoids the
    singularity at u = 1 (the paper's clipping).
    """

    def abar(u: float) -> float:
        return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = [min(1.0 - abar((i + 1) / num_timesteps) / abar(i / num_timesteps), max_beta) for i in range(num_timesteps)]
    return torch.tensor(betas, dtype=torch.float64)


def _coef(values: Tensor, t: Tensor | int, like: Tensor) -> Tensor:
    """Gather ``values[t]`` (float64) and shape it to broadcast against ``like`` (B, ...).

    ``t`` is a LongTensor (B,), a 0-d tensor or a Python int. Returns float64 on ``like``'s device
    with shape (B, 1, ..., 1) (or a 0-d tensor for a scalar t).
    """
    t = torch.as_tensor(t, dtype=torch.long)
    out = values[t.cpu()].to(like.device)
    if out.ndim == 1:
        out = out.reshape(out.shape[0], *([1] * (like.ndim - 1)))
    return out


def _compute_dtype(x: Tensor) -> torch.dtype:
    """float64 for the arithmetic, except on backends without it (MPS), where float32 is used."""
    return torch.float32 if x.device.type == "mps" else torch.float64


class NoiseSchedule:
    """A DDPM noise schedule with every derived term precomputed in float64.

    Args:
        beta_schedule: "linear" (DDPM, Sec. 4), "scaled_linear" (latent diffusion: betas are the
            squares of a linspace of sqrt(beta)), or "squaredcos_cap_v2" (cosine, Nichol & Dhariwal
            2021, Eq. 17, capped at 0.999). Definitions as diffusers' schedulers use them.
        num_train_timesteps: T.
        beta_start, beta_end: endpoints of the linear / scaled_linear schedules (unused by cosine).
        prediction_type: what a model trained on this schedule outputs: "epsilon" or "v_prediction".
        trained_betas: explicit betas (T,) overriding the schedule.

    Attributes (float64, CPU, shape (T,)): betas, alphas, alphas_cumprod, alphas_cumprod_prev,
    posterior_variance, posterior_mean_coef1, posterior_mean_coef2.
    """

    def __init__(
        self,
        beta_schedule: str = "scaled_linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.00085,
        beta_end: float = 0.012,
        prediction_type: str = "epsilon",
        trained_betas: Tensor | list[float] | None = None,
    ) -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={prediction_type!r} is not supported; use one of {PREDICTION_TYPES}")
        T = int(num_train_timesteps)
        if trained_betas is not None:
            betas = torch.as_tensor(trained_betas, dtype=torch.float64).flatten().cpu()
            T = betas.shape[0]
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, T, dtype=torch.float64)
        elif beta_schedule == "scaled_linear":
            betas = torch.linspace(beta_start**0.5, beta_end**0.5, T, dtype=torch.float64) ** 2
        elif beta_schedule == "squaredcos_cap_v2":
            betas = _cosine_betas(T)
        else:
            raise ValueError(f"beta_schedule={beta_schedule!r} is not supported; use one of {BETA_SCHEDULES}")
        if T < 1 or not bool(((betas > 0) & (betas < 1)).all()):
            raise ValueError(f"betas must lie in (0, 1) and T >= 1; got T={T}, betas in [{betas.min()}, {betas.max()}]")

        self.beta_schedule = beta_schedule if trained_betas is None else "trained"
        self.num_train_timesteps = T
        self.prediction_type = prediction_type

        self.betas = betas  # (T,)
        self.alphas = 1.0 - betas  # alpha_t = 1 - beta_t
        self.alphas_cumprod = torch.cumprod(self.alphas, dim=0)  # abar_t
        self.alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), self.alphas_cumprod[:-1]])
        abar, abar_prev = self.alphas_cumprod, self.alphas_cumprod_prev
        # Equation 7 (DDPM): q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I) with
        #   mu~_t = sqrt(abar_{t-1}) beta_t / (1 - abar_t) x_0 + sqrt(alpha_t) (1 - abar_{t-1}) / (1 - abar_t) x_t
        #   beta~_t = (1 - abar_{t-1}) / (1 - abar_t) beta_t
        self.posterior_variance = (1.0 - abar_prev) / (1.0 - abar) * betas
        self.posterior_mean_coef1 = abar_prev.sqrt() * betas / (1.0 - abar)
        self.posterior_mean_coef2 = self.alphas.sqrt() * (1.0 - abar_prev) / (1.0 - abar)

    @classmethod
    def from_diffusers(cls, config: Mapping[str, Any]) -> NoiseSchedule:
        """Build from a diffusers scheduler config (e.g. ``scheduler/scheduler_config.json`` loaded as a dict).

        Honours beta_schedule, num_train_timesteps, beta_start, beta_end, prediction_type and
        trained_betas; diffusers' own defaults (linear, 1000, 1e-4, 0.02, epsilon) fill missing keys.
        Sampling-only keys (timestep_spacing, steps_offset, clip_sample, ...) are ignored. A config
        asking for zero-terminal-SNR rescaling is refused, since it changes the schedule itself.
        """
        if config.get("rescale_betas_zero_snr", False):
            raise ValueError("rescale_betas_zero_snr=True is not supported; use a scheduler config with it false")
        return cls(
            beta_schedule=config.get("beta_schedule", "linear"),
            num_train_timesteps=config.get("num_train_timesteps", 1000),
            beta_start=config.get("beta_start", 0.0001),
            beta_end=config.get("beta_end", 0.02),
            prediction_type=config.get("prediction_type", "epsilon"),
            trained_betas=config.get("trained_betas"),
        )

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule({self.beta_schedule!r}, T={self.num_train_timesteps}, "
            f"prediction_type={self.prediction_type!r})"
        )

    # ------------------------------------------------------------------ forward process
    def q_sample(self, x0: Tensor, t: Tensor, noise: Tensor) -> Tensor:
        """Sample q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I) (DDPM Eq. 4).

        x0, noise: (B, ...); t: LongTensor (B,). Returns x_t (B, ...) in x0's dtype and device.
        Differentiable in x0 and noise.
        """
        dt = _compute_dtype(x0)
        abar = _coef(self.alphas_cumprod, t, x0).to(dt)
        x_t = abar.sqrt() * x0.to(dt) + (1.0 - abar).sqrt() * noise.to(dt)  # Eq. 4
        return x_t.to(x0.dtype)

    def velocity(self, x0: Tensor, noise: Tensor, t: Tensor) -> Tensor:
        """The v-prediction target v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0 (Salimans & Ho 2022, Sec. 4).

        x0, noise: (B, ...); t: LongTensor (B,). Returns (B, ...) in x0's dtype.
        """
        dt = _compute_dtype(x0)
        abar = _coef(self.alphas_cumprod, t, x0).to(dt)
        v = abar.sqrt() * noise.to(dt) - (1.0 - abar).sqrt() * x0.to(dt)
        return v.to(x0.dtype)

    # ------------------------------------------------------------------ posterior
    def posterior(self, x0: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
        """The forward-process posterior q(x_{t-1} | x_t, x_0) = N(mean, variance I) (DDPM Eqs. 6-7).

        x0, x_t: (B, ...); t: LongTensor (B,). Returns (mean (B, ...), variance (B, ...)) in x_t's
        dtype; at t = 0 the variance is 0 and the mean is x0 (abar_{-1} = 1).
        """
        dt = _compute_dtype(x_t)
        c1 = _coef(self.posterior_mean_coef1, t, x_t).to(dt)
        c2 = _coef(self.posterior_mean_coef2, t, x_t).to(dt)
        var = _coef(self.posterior_variance, t, x_t).to(dt)
        mean = c1 * x0.to(dt) + c2 * x_t.to(dt)  # Eq. 7, mu~_t
        return mean.to(x_t.dtype), var.expand_as(mean).to(x_t.dtype)  # Eq. 7, beta~_t

    # ------------------------------------------------------------------ model-output conversions
    def _check_prediction_type(self, prediction_type: str | None) -> str:
        kind = self.prediction_type if prediction_type is None else prediction_type
        if kind not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type={kind!r} is not supported; use one of {PREDICTION_TYPES}")
        return kind

    def predict_x0(self, x_t: Tensor, t: Tensor, model_output: Tensor, prediction_type: str | None = None) -> Tensor:
        """x_0 predicted from a model output (B, ...) at x_t (B, ...), t LongTensor (B,).

        epsilon:      x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)   (DDIM Eq. 9 / 12, "predicted x_0")
        v_prediction: x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v        (Salimans & Ho 2022, Sec. 4)
        ``prediction_type`` overrides the schedule's (e.g. "epsilon" for an eps_fn). Output in x_t's dtype.
        """
        kind = self._check_prediction_type(prediction_type)
        dt = _compute_dtype(x_t)
        abar = _coef(self.alphas_cumprod, t, x_t).to(dt)
        x, out = x_t.to(dt), model_output.to(dt)
        if kind == "epsilon":
            x0 = (x - (1.0 - abar).sqrt() * out) / abar.sqrt()
        else:
            x0 = abar.sqrt() * x - (1.0 - abar).sqrt() * out
        return x0.to(x_t.dtype)

    def to_eps(self, x_t: Tensor, t: Tensor, model_output: Tensor, prediction_type: str | None = None) -> Tensor:
        """eps from a model output (B, ...) at x_t (B, ...), t LongTensor (B,).

        epsilon:      returned as is (cast to x_t's dtype)
        v_prediction: eps = sqrt(abar_t) v + sqrt(1 - abar_t) x_t   (Salimans & Ho 2022, Sec. 4;
                      from x_t = sqrt(abar) x_0 + sqrt(1 - abar) eps and the definition of v)
        """
        kind = self._check_prediction_type(prediction_type)
        if kind == "epsilon":
            return model_output.to(x_t.dtype)
        dt = _compute_dtype(x_t)
        abar = _coef(self.alphas_cumprod, t, x_t).to(dt)
        eps = abar.sqrt() * model_output.to(dt) + (1.0 - abar).sqrt() * x_t.to(dt)
        return eps.to(x_t.dtype)

    def abar_at(self, t: Tensor | int, like: Tensor) -> Tensor:
        """abar_t for t (B,) shaped (B, 1, ..., 1) to broadcast against ``like``; abar = 1 where t < 0.

        Float64 (float32 on MPS) on ``like``'s device.
        """
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        abar = torch.where(t < 0, torch.ones((), dtype=torch.float64), self.alphas_cumprod[t.clamp(min=0)])
        if abar.ndim == 1:
            abar = abar.reshape(abar.shape[0], *([1] * (like.ndim - 1)))
        return abar.to(device=like.device, dtype=_compute_dtype(like))


def randn(
    shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device | str, dtype: torch.dtype
) -> Tensor:
    """N(0, I) of ``shape`` on ``device``, drawn on the generator's own device (as diffusers'
    randn_tensor does), so a CPU generator gives the same numbers whatever the target device."""
    draw_device = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw_device, dtype=dtype).to(device)


def _as_time(t: Tensor | int, x: Tensor) -> Tensor:
    """t as a LongTensor (B,) on x's device (an int or a 0-d tensor is broadcast over the batch)."""
    t = torch.as_tensor(t, dtype=torch.long, device=x.device)
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    return t


def ddpm_step(
    s: NoiseSchedule,
    model_output: Tensor,
    t: Tensor | int,
    x_t: Tensor,
    noise: Tensor | None,
    t_prev: Tensor | int | None = None,
    prediction_type: str | None = None,
) -> Tensor:
    """One ancestral DDPM step x_t -> x_{t_prev} with the "fixed_small" variance (DDPM Algorithm 2).

    x_{t_prev} = mu~(x0_hat, x_t) + sqrt(beta~) z, with x0_hat from the model output and the
    posterior mean / variance of Eq. 7. ``t_prev`` defaults to t - 1; a larger gap uses the
    respaced schedule of improved-diffusion (Nichol & Dhariwal 2021, Sec. 4):
    beta'_t = 1 - abar_t / abar_{t_prev}, alpha'_t = abar_t / abar_{t_prev}, abar_{t_prev < 0} = 1.
    No noise is added where t_prev < 0 (the last step returns the posterior mean, i.e. x0_hat).

    model_output, x_t, noise: (B, ...); t, t_prev: LongTensor (B,) or int. ``noise`` may be None
    only when every t_prev < 0. Returns x_{t_prev} (B, ...) in x_t's dtype.
    """
    t = _as_time(t, x_t)
    t_prev = t - 1 if t_prev is None else _as_time(t_prev, x_t)
    dt = _compute_dtype(x_t)
    x = x_t.to(dt)
    x0_hat = s.predict_x0(x, t, model_output.to(dt), prediction_type)  # Eq. 15 (DDPM)
    abar_t = s.abar_at(t, x)
    abar_prev = s.abar_at(t_prev, x)
    alpha_t = abar_t / abar_prev  # alpha'_t of the (possibly respaced) chain
    beta_t = 1.0 - alpha_t
    coef1 = abar_prev.sqrt() * beta_t / (1.0 - abar_t)  # Eq. 7, coefficient of x_0
    coef2 = alpha_t.sqrt() * (1.0 - abar_prev) / (1.0 - abar_t)  # Eq. 7, coefficient of x_t
    mean = coef1 * x0_hat + coef2 * x
    var = (1.0 - abar_prev) / (1.0 - abar_t) * beta_t  # Eq. 7, beta~_t ("fixed_small", Sec. 3.2)
    if noise is None:
        if bool((t_prev >= 0).any()):
            raise ValueError("ddpm_step needs noise unless every t_prev < 0 (the final step)")
        return mean.to(x_t.dtype)
    keep = (t_prev >= 0).to(dt).reshape(var.shape)  # no noise on the final step
    return (mean + keep * var.sqrt() * noise.to(dt)).to(x_t.dtype)  # Algorithm 2, line 4


def ddim_step(
    s: NoiseSchedule,
    model_output: Tensor,
    t: Tensor | int,
    t_prev: Tensor | int,
    x_t: Tensor,
    eta: float = 0.0,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    prediction_type: str | None = None,
) -> Tensor:
    """One DDIM step x_t -> x_{t_prev} (Song et al. 2021, Eq. 12 with sigma_t of Eq. 16).

    x_{t_prev} = sqrt(abar_prev) x0_hat + sqrt(1 - abar_prev - sigma^2) eps_hat + sigma z,
    sigma = eta sqrt((1 - abar_prev) / (1 - abar_t)) sqrt(1 - abar_t / abar_prev).
    eta = 0 is the deterministic DDIM sampler, eta = 1 the DDPM ancestral step. t_prev < 0 means
    abar_prev = 1 (diffusers' ``set_alpha_to_one=True``), where sigma = 0.

    model_output, x_t, noise: (B, ...); t, t_prev: LongTensor (B,) or int. When eta > 0 and
    ``noise`` is None, z is drawn with ``generator``. Returns (B, ...) in x_t's dtype.
    """
    t = _as_time(t, x_t)
    t_prev = _as_time(t_prev, x_t)
    dt = _compute_dtype(x_t)
    x, out = x_t.to(dt), model_output.to(dt)
    x0_hat = s.predict_x0(x, t, out, prediction_type)  # Eq. 12, "predicted x_0"
    eps_hat = s.to_eps(x, t, out, prediction_type)
    abar_t = s.abar_at(t, x)
    abar_prev = s.abar_at(t_prev, x)
    sigma = eta * ((1.0 - abar_prev) / (1.0 - abar_t) * (1.0 - abar_t / abar_prev)).sqrt()  # Eq. 16
    direction = (1.0 - abar_prev - sigma**2).clamp(min=0.0).sqrt() * eps_hat  # Eq. 12, "direction pointing to x_t"
    x_prev = abar_prev.sqrt() * x0_hat + direction
    if eta > 0:
        if noise is None:
            noise = randn(x_t.shape, generator, x_t.device, x_t.dtype)
        x_prev = x_prev + sigma * noise.to(dt)  # Eq. 12, "random noise"
    return x_prev.to(x_t.dtype)


def kl_gaussian(mean1: Tensor | float, logvar1: Tensor | float, mean2: Tensor | float, logvar2: Tensor | float) -> Tensor:
    """Elementwise KL( N(mean1, exp(logvar1)) || N(mean2, exp(logvar2)) ), broadcast over inputs.

    KL = 0.5 (logvar2 - logvar1 + exp(logvar1 - logvar2) + (mean1 - mean2)^2 exp(-logvar2) - 1)
    (the closed form for univariate Gaussians; sum over dimensions for a diagonal Gaussian, as in
    DDPM's L_{t-1} of Eq. 5 and the VAE's KL term). Returns a tensor of the broadcast shape.
    """
    tensors = [x for x in (mean1, logvar1, mean2, logvar2) if isinstance(x, Tensor)]
    dtype = tensors[0].dtype if tensors else torch.float64
    device = tensors[0].device if tensors else None
    mean1, logvar1, mean2, logvar2 = (
        torch.as_tensor(x, dtype=dtype, device=device) for x in (mean1, logvar1, mean2, logvar2)
    )
    return 0.5 * (logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2) - 1.0)
