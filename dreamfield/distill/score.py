"""Score distillation gradients on latents: SDS (DreamFusion) and DDS (Delta Denoising Score).

Both are pure functions of a prior (anything with the prior interface: ``schedule`` and
``eps(z_t, t, text, guidance_scale)``), latents, timesteps and noise; they return a gradient on the
latents, never a loss, and never backpropagate through the denoiser. :func:`grad_to_loss` turns that
gradient into a scalar whose backward pass delivers it exactly to the latents and on to the scene.

Gradients are float32 and detached. A gradient that is not finite raises :class:`NonFiniteError`
(decision: stop rather than zero it and carry on; a NaN step is a bug or an fp16 overflow to fix,
and raising before ``optimizer.step()`` guarantees no NaN reaches the parameters or a checkpoint).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from dreamfield.diffusion.schedule import ddim_step
from dreamfield.distill.timesteps import weight
from dreamfield.prior.interface import Prior
from dreamfield.prior.text import TextEmbedding


class NonFiniteError(FloatingPointError):
    """A distillation gradient (or its inputs) contains NaN or inf; the message names the step and t."""


def _check(z: Tensor, t: Tensor, noise: Tensor, guidance_scale: float, grad_clip: float | None, T: int) -> None:
    if z.shape != noise.shape:
        raise ValueError(f"latents {tuple(z.shape)} and noise {tuple(noise.shape)} must have the same shape")
    if t.ndim != 1 or t.shape[0] != z.shape[0] or t.dtype != torch.long:
        raise ValueError(f"t must be a LongTensor of shape ({z.shape[0]},), got {t.dtype} {tuple(t.shape)}")
    # reading a GPU tensor's values waits for the GPU: the range is checked where t lives on the host (the loop's
    # sample_timesteps draws t in range by construction)
    if t.device.type == "cpu" and (bool((t < 0).any()) or bool((t >= T).any())):
        raise ValueError(f"timesteps must lie in [0, {T - 1}], got {t.tolist()}")
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0, got {guidance_scale}")
    if grad_clip is not None and not grad_clip > 0:
        raise ValueError(f"grad_clip must be > 0 or None (off), got {grad_clip}")


def _finish(
    g: Tensor, grad_clip: float | None, what: str, t: Tensor, step: int | None, inputs: dict[str, Tensor]
) -> Tensor:
    """Clip elementwise to [-grad_clip, grad_clip] (when set) and refuse a non-finite gradient (on the host; on a
    GPU the loop's FiniteGuard reads the finiteness flags on its own schedule instead of stalling every step)."""
    if g.device.type == "cpu" and not bool(torch.isfinite(g).all()):
        bad = int((~torch.isfinite(g)).sum())
        sources = ", ".join(f"{k} finite: {bool(torch.isfinite(v).all())}" for k, v in inputs.items())
        at = f"step {step}, " if step is not None else ""
        raise NonFiniteError(
            f"{what} gradient has {bad} non-finite values at {at}t={t.tolist()} ({sources}); "
            "try prior.dtype=float32 or lower learning rates"
        )
    if grad_clip is not None:
        g = g.clamp(-grad_clip, grad_clip)
    return g


def sds_grad(
    prior: Prior,
    z: Tensor,
    text: TextEmbedding,
    t: Tensor,
    noise: Tensor,
    guidance_scale: float,
    weighting: str = "sds",
    grad_clip: float | None = None,
    step: int | None = None,
) -> Tensor:
    """The Score Distillation Sampling gradient on latents (Poole et al. 2022, Eq. 3).

        z_t = sqrt(abar_t) z + sqrt(1 - abar_t) eps          (the project's q_sample, DDPM Eq. 4)
        g   = w(t) (eps_hat(z_t; y, t) - eps)                  (eps_hat guided by ``guidance_scale``)

    Args:
        prior: the prior interface.
        z: latents (B, C, h, w) from ``prior.encode`` (gradient is not taken through z here).
        text: the prompts' embedding, batch B or 1.
        t: LongTensor (B,) timesteps in [0, T - 1] (see :func:`sample_timesteps`).
        noise: eps (B, C, h, w), unit Gaussian.
        guidance_scale: classifier-free guidance scale s >= 0.
        weighting: "sds", "uniform" or "snr_sqrt" (see :func:`weight`).
        grad_clip: clip every element of g to [-grad_clip, grad_clip]; None = off.
        step: the optimisation step, only for the error message.
    Returns:
        g (B, C, h, w) float32, detached. Pass it to :func:`grad_to_loss` with the same z.
    Raises:
        NonFiniteError when g is not finite; ValueError for bad arguments.
    """
    schedule = prior.schedule
    _check(z, t, noise, guidance_scale, grad_clip, schedule.num_train_timesteps)
    w = weight(schedule, t, weighting).to(z.device)  # checks the weighting name first
    with torch.no_grad():
        z0 = z.detach().float()
        z_t = schedule.q_sample(z0, t, noise.to(z0))
        eps_hat = prior.eps(z_t, t, text, guidance_scale).to(z0)
        g = w.reshape(-1, *([1] * (z.ndim - 1))) * (eps_hat - noise.to(z0))
    return _finish(g, grad_clip, "SDS", t, step, {"latents": z0, "eps_hat": eps_hat})


def dds_grad(
    prior: Prior,
    z: Tensor,
    z_src: Tensor,
    text_target: TextEmbedding,
    text_source: TextEmbedding,
    t: Tensor,
    noise: Tensor,
    guidance_scale: float,
    weighting: str = "sds",
    grad_clip: float | None = None,
    step: int | None = None,
    source_weight: float = 1.0,
) -> Tensor:
    """The Delta Denoising Score gradient on latents (Hertz et al. 2023, Sec. 3), its source branch
    weighted by lambda = ``source_weight``:

        z_t     = q_sample(z, t, eps),  z_src_t = q_sample(z_src, t, eps)      (same t, same eps)
        g       = w(t) (eps_hat(z_t; y_tgt, t) - eps - lambda (eps_hat(z_src_t; y_src, t) - eps))

    lambda = 1 is DDS, w(t) (eps_hat(z_t; y_tgt) - eps_hat(z_src_t; y_src)); lambda = 0 is SDS
    (:func:`sds_grad`). The source branch (the frozen source scene rendered from the same camera, with
    its prompt) is the source's own SDS gradient: it shares the noise-driven part of the target's and
    removes it. It does not depend on the edited scene, so DDS's expected gradient is SDS's minus the
    source's mean pull b = E[w (eps_hat(z_src_t; y_src) - eps)], which is zero only where the source
    sits at its prompt's fixed point: with b != 0 DDS has no fixed point at the target's and keeps
    pushing away from what the source prompt describes (docs/RESULTS.md, "Edit colour"). A lambda
    annealed to 0 ends the edit at SDS's fixed point. Both branches run in one call of ``prior.eps``
    with batch 2B (so the negative prompts of the two embeddings must agree).

    Args:
        z, z_src: latents (B, C, h, w) of the edited and the source renders.
        text_target, text_source: embeddings of the target and source prompts (batch B or 1).
        t, noise, guidance_scale, weighting, grad_clip, step: as in :func:`sds_grad`.
        source_weight: lambda in [0, 1].
    Returns:
        g (B, C, h, w) float32, detached.
    """
    schedule = prior.schedule
    _check(z, t, noise, guidance_scale, grad_clip, schedule.num_train_timesteps)
    if not 0 <= source_weight <= 1:
        raise ValueError(f"source_weight must be in [0, 1], got {source_weight}")
    if z_src.shape != z.shape:
        raise ValueError(f"source latents {tuple(z_src.shape)} and latents {tuple(z.shape)} must have the same shape")
    w = weight(schedule, t, weighting).to(z.device)
    B = z.shape[0]
    with torch.no_grad():
        z0, zs0 = z.detach().float(), z_src.detach().float()
        eps = noise.to(z0)
        z_t = schedule.q_sample(z0, t, eps)
        zs_t = schedule.q_sample(zs0, t, eps)
        text = TextEmbedding.concat(text_target.repeat(B), text_source.repeat(B))
        eps_both = prior.eps(torch.cat([z_t, zs_t]), torch.cat([t, t]), text, guidance_scale).to(z0)
        eps_tgt, eps_src = eps_both[:B], eps_both[B:]
        delta = eps_tgt - eps_src if source_weight == 1 else (eps_tgt - eps) - source_weight * (eps_src - eps)
        g = w.reshape(-1, *([1] * (z.ndim - 1))) * delta
    return _finish(g, grad_clip, "DDS", t, step, {"latents": z0, "source latents": zs0, "eps_hat": eps_both})


def grad_to_loss(z: Tensor, g: Tensor) -> Tensor:
    """A scalar whose backward pass gives exactly ``g`` as the gradient of ``z``.

    loss = sum(z * stopgrad(g)): d loss / d z = g, bit for bit (autograd multiplies g by the ones of
    the sum's backward). The value itself means nothing (it is not a distance); log |g| instead.
    Summed, not averaged, over the batch: divide the loss by B for a batch mean.

    z: (B, ...) latents that carry the graph back to the scene; g: same shape (cast to z's dtype).
    """
    if z.shape != g.shape:
        raise ValueError(f"grad_to_loss: z {tuple(z.shape)} and g {tuple(g.shape)} must have the same shape")
    return (z * g.detach().to(z.dtype)).sum()


@torch.no_grad()
def sds_image_target(
    prior: Prior,
    z: Tensor,
    text: TextEmbedding,
    t: Tensor,
    noise: Tensor,
    guidance_scale: float,
    step: int | None = None,
    denoise_steps: int = 1,
) -> Tensor:
    """Image-space SDS target: the decoded denoised estimate (HiFA, Zhu et al. 2023, Sec. 3.2).

    z_t = q_sample(z, t, eps); with ``denoise_steps`` = 1, x0_hat = (z_t - sqrt(1 - abar_t) eps_hat) / sqrt(abar_t)
    (DDIM Eq. 9, one step); with k > 1, x0_hat is k deterministic DDIM steps (Eq. 12, eta 0) from t through
    t (k-1)/k, ..., t/k to 0 (SDEdit, Meng et al. 2022: a sample of the prior near the render, sharper than
    the one-step mean). Returns decode(x0_hat) (B, 3, S, S) at the prior's native size S, in [0, 1], detached.

    Why: latent SDS pulls z towards x0_hat with strength w(t) sqrt(abar_t / (1 - abar_t)); doing the same
    in pixels, loss = |rgb - decode(x0_hat)|^2, avoids back-propagating through the VAE encoder, whose
    Jacobian is poorly conditioned for a small VAE (on the embedded toy prior, latent SDS through the
    encoder left a grey fog after 300 steps while the image-space target gave a coloured object).
    """
    s = prior.schedule
    _check(z, t, noise, guidance_scale, None, s.num_train_timesteps)
    if denoise_steps < 1:
        raise ValueError(f"denoise_steps must be >= 1, got {denoise_steps}")
    x = s.q_sample(z.detach(), t, noise)
    t_i = t
    for i in range(1, denoise_steps + 1):
        eps_hat = prior.eps(x, t_i, text, guidance_scale)
        # next timestep t (k - i) / k, and abar = 1 (t_prev = -1) after the last step, where the DDIM step
        # is x0_hat itself: with k = 1 this is the one-step estimate
        t_next = (t * (denoise_steps - i)) // denoise_steps if i < denoise_steps else torch.full_like(t, -1)
        x = ddim_step(s, eps_hat, t_i, t_next, x, eta=0.0, prediction_type="epsilon")
        t_i = t_next
    target = prior.decode(x)
    return _finish(target, None, "SDS image target", t, step, {"latents": z, "eps_hat": eps_hat})


def sds_image_loss(rgb: Tensor, target: Tensor, schedule, t: Tensor, weighting: str = "sds") -> Tensor:
    """Scalar loss 0.5 sum_b v(t_b) |rgb_b - target_b|^2 for rgb (B, 3, H, W) and a target of the same
    shape (:func:`sds_image_target`, resized to the render by the caller).

    v(t) = w(t) sqrt(abar_t / (1 - abar_t)): latent SDS is w(t)(eps_hat - eps) = w(t) sqrt(abar/(1-abar)) (z - x0_hat),
    so this gives each timestep the same strength as latent SDS with weighting ``weighting``.
    """
    if target.shape != rgb.shape:
        raise ValueError(f"sds_image_loss: rgb {tuple(rgb.shape)} and target {tuple(target.shape)} must have the same shape")
    abar = schedule.alphas_cumprod.to(t.device)[t]
    v = weight(schedule, t, weighting).double() * (abar / (1 - abar)).sqrt()
    return 0.5 * (v.to(rgb).view(-1, 1, 1, 1) * (rgb - target.detach()) ** 2).sum()
