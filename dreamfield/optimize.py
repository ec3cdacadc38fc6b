"""The optimisation loop shared by ``generate`` (SDS) and ``edit`` (DDS).

One step reads top to bottom (see ../shared/DESIGN.md):

    cameras, shading -> render -> objective (encode, t, eps, SDS/DDS) -> loss = sds * term + sum_k lambda_k R_k
    -> backward -> Adam step -> log, preview, checkpoint

The objective (:mod:`dreamfield.distill.objectives`) is chosen once by the caller. Every random draw
of the loop comes from one ``torch.Generator`` (plus torch's global RNG, which nerfacc's packed
sampling uses); both are checkpointed, so ``--resume`` continues the exact same trajectory.
"""

from __future__ import annotations

import signal
import threading
import time
from typing import Callable, Optional

import torch
from tqdm.auto import tqdm

from dreamfield.checkpoint import load_checkpoint, rng_state, set_rng_state
from dreamfield.config import Config
from dreamfield.distill.objectives import Term, View
from dreamfield.distill.score import NonFiniteError
from dreamfield.distill.regularizers import entropy_loss, opacity_loss
from dreamfield.run import RunFolder
from dreamfield.scene.cameras import azimuth_range_at, sample_cameras
from dreamfield.scene.occupancy import OccupancyGrid
from dreamfield.scene.render import choose_shading
from dreamfield.scene.scene import Scene, load_scene_state, make_scene

Objective = Callable[[int, object, View, torch.Generator], Term]


class NonFiniteLossError(NonFiniteError):
    """A step's loss, gradients or parameters were NaN or inf; the run stops without checkpointing that state."""


class Interrupted(Exception):
    """SIGINT or SIGTERM stopped the run after a checkpoint of the current step was written."""

    def __init__(self, signum: int, step: int, path) -> None:
        name = signal.Signals(signum).name
        super().__init__(f"{name}: stopped after step {step}; checkpoint written to {path}")
        self.signum, self.step = signum, step


class StopSignals:
    """While active, SIGINT/SIGTERM only set a flag: the loop finishes its step, checkpoints it and stops.
    A second signal stops at once (the default handlers are back after the first)."""

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._old: dict = {}

    def _handle(self, signum, frame) -> None:
        self.received = signum
        for sig, old in self._old.items():
            signal.signal(sig, old)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def make_optimizer(cfg: Config, scene: Scene) -> torch.optim.Optimizer:
    """Adam over the field's groups (density, colour, network learning rates) and the background."""
    groups = list(scene.field.param_groups(cfg.optim))
    bg_params = [p for p in scene.background.parameters() if p.requires_grad]
    if bg_params:
        groups.append({"params": bg_params, "lr": cfg.optim.lr_background})
    return torch.optim.Adam(groups, betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)


def optimize(
    cfg: Config,
    run: RunFolder,
    objective: Objective,
    device: torch.device,
    scene: Optional[Scene] = None,
    resume: bool = False,
    on_step: Optional[Callable[[int], None]] = None,
    progress: bool = True,
) -> Scene:
    """Optimise ``scene`` (a fresh blob when None) with ``objective`` for cfg.optim.steps steps.

    With ``resume`` the state in ``run/checkpoints/last.pt`` is restored first (a run without one starts
    again from step 0). ``on_step(done)`` is
    called after every step (benchmarks time the loop through it; tests interrupt it).
    """
    generator = torch.Generator(device="cpu").manual_seed(cfg.run.seed)
    torch.manual_seed(cfg.run.seed)
    scene = scene if scene is not None else make_scene(cfg, device)
    optimizer = make_optimizer(cfg, scene)
    # CUDA: nerfacc's occupancy grid skips empty space (packed rendering); the CPU path renders dense samples.
    occupancy = None
    if device.type == "cuda" and cfg.render.use_occupancy_grid:
        occupancy = OccupancyGrid(cfg.render, cfg.field.bound).to(device)
    start = 0
    if resume and run.last.exists():
        start = _restore(run, scene, optimizer, occupancy, generator)
    elif resume:  # a run stopped before its first checkpoint starts again from its recorded config
        run.truncate_metrics(0)
    total, res = cfg.optim.steps, cfg.render.resolution

    guard = FiniteGuard(optimizer, run, defer=device.type != "cpu")
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, desc="dreamfield", unit="it")
    t_last = t_ckpt = time.perf_counter()
    with StopSignals() as stop:
        for step in bar:
            # 1. cameras and shading for this step (views widen from the front over the first steps)
            azimuth = azimuth_range_at(cfg.camera, step)
            host = sample_cameras(cfg.camera, cfg.guidance.batch_size, generator, "cpu", azimuth)
            cams = host.to(device)
            view = View(cams, choose_shading(cfg.render, generator), res, host)

            # 2. render the scene
            if occupancy is not None:
                occupancy.update(step, scene.field)
            out = scene.render(cams, res, res, cfg.render, view.shading, occupancy, generator=generator)

            # 3. the distillation term: encode, t and eps, prior's score (SDS, image-space SDS or DDS)
            try:
                term = objective(step, out, view, generator)
            except NonFiniteError as exc:
                raise NonFiniteLossError(f"{exc}; {_last_good(run)}") from None

            # 4. the loss: distillation plus regularisers, summed explicitly with their weights
            reg = {"opacity": opacity_loss(out.opacity), "entropy": entropy_loss(out.opacity), "orientation": out.orientation}
            loss = (
                cfg.loss.sds * term.loss
                + cfg.loss.opacity * reg["opacity"]
                + cfg.loss.entropy * reg["entropy"]
                + cfg.loss.orientation * reg["orientation"]
            )
            if cfg.loss.tv > 0:
                reg["tv"] = scene.field.density_tv()
                loss = loss + cfg.loss.tv * reg["tv"]
            for _, extra in term.extra:  # the objective's own terms (DDS preservation), already weighted
                loss = loss + extra

            # 5. optimiser step, accepted only when the loss, the gradients and the new parameters are finite
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            guard.before_step(step, loss, term, reg)
            optimizer.step()
            guard.after_step(step)
            done = step + 1

            # 6. log (host syncs only on logged steps), preview, checkpoint (every K steps, every few seconds, on a signal)
            now = time.perf_counter()
            step_seconds, t_last = now - t_last, now
            periodic = cfg.run.checkpoint_every > 0 and done % cfg.run.checkpoint_every == 0
            timely = cfg.run.checkpoint_seconds > 0 and now - t_ckpt >= cfg.run.checkpoint_seconds
            saving = periodic or timely or done == total or stop.received
            logging = step % cfg.run.log_every == 0 or done == total
            if saving or logging:
                guard.confirm(step)  # on CUDA the finiteness flags are read here, not at every step
            if logging:
                rec = _record(step, loss, term, reg, view, step_seconds)
                run.log(rec)
                bar.set_postfix(loss=f"{rec['loss']:.4g}", t=rec["t"], opac=f"{rec['opacity']:.3f}")
            if cfg.run.preview_every > 0 and (done % cfg.run.preview_every == 0 or done == total):
                run.preview(cfg, scene, done, occupancy)
            if saving:
                run.checkpoint(_state(done, scene, optimizer, occupancy, generator), periodic)
                t_ckpt = time.perf_counter()
            if stop.received:
                bar.close()
                raise Interrupted(stop.received, done, run.last)
            if on_step is not None:
                on_step(done)
    bar.close()
    return scene


class FiniteGuard:
    """A step is accepted only with a finite loss, finite gradients and finite new parameters; otherwise the run
    stops with one line naming the step, what broke and the last good checkpoint.

    On the CPU every step is checked before and after the Adam step (a check is free there). On a GPU
    (``defer``) reading a flag would stall the device every step, so the flags stay on the device: a step whose
    loss or gradients are not finite has its gradients zeroed before the Adam step (the parameters stay
    finite), and :meth:`confirm`, called before every log line and checkpoint, reads the flags and stops the
    run naming the range of steps. No checkpoint ever holds a non-finite field.
    """

    def __init__(self, optimizer, run: RunFolder, defer: bool) -> None:
        self.optimizer, self.run, self.defer = optimizer, run, defer
        self.bad: Optional[torch.Tensor] = None  # deferred: steps since the last confirm with a bad loss/gradient
        self.first = 0  # deferred: the first step since the last confirm

    def _params(self) -> list[tuple[str, torch.Tensor]]:
        return [(g.get("name", f"group {k}"), p) for k, g in enumerate(self.optimizer.param_groups) for p in g["params"]]

    def before_step(self, step: int, loss, term: Term, reg: dict) -> None:
        grads = [(name, p.grad) for name, p in self._params() if p.grad is not None]
        if self.defer:
            ok = torch.stack([torch.isfinite(loss)] + [torch.isfinite(g).all() for _, g in grads]).all()
            for _, g in grads:
                g.copy_(torch.where(ok, g, torch.zeros_like(g)))
            self.bad = (~ok).long() if self.bad is None else self.bad + (~ok).long()
            return
        if not bool(torch.isfinite(loss)):
            parts = [("distillation term", term.loss)] + list(reg.items()) + list(term.extra)
            name = next((n for n, v in parts if not bool(torch.isfinite(v).all())), "sum")
            self._stop(f"non-finite {name} of the loss at step {step}")
        for name, g in grads:
            if not bool(torch.isfinite(g).all()):
                self._stop(f"non-finite gradient of the {name} parameters at step {step}")

    def after_step(self, step: int) -> None:
        if not self.defer:
            self._check_params(f"at step {step}")

    def confirm(self, step: int) -> None:
        if not self.defer:
            return
        if self.bad is not None and int(self.bad) > 0:
            self._stop(f"{int(self.bad)} step(s) with a non-finite loss or gradient between steps {self.first} and "
                       f"{step} (their updates were skipped)")
        self._check_params(f"between steps {self.first} and {step}")
        self.bad, self.first = None, step + 1

    def _check_params(self, when: str) -> None:
        for name, p in self._params():
            if not bool(torch.isfinite(p).all()):
                self._stop(f"non-finite {name} parameters after the Adam step {when} (lower the learning rates)")

    def _stop(self, what: str) -> None:
        raise NonFiniteLossError(f"{what}; {_last_good(self.run)}")


def _last_good(run: RunFolder) -> str:
    if run.last.is_file():
        return f"stopped; last good checkpoint {run.last} (resume with --resume {run.dir})"
    return f"stopped; no checkpoint was written yet (--resume {run.dir} starts it again)"


def _record(step: int, loss, term: Term, reg: dict, view: View, seconds: float) -> dict:
    """One metrics.jsonl line."""
    rec = {"step": step, "loss": float(loss.detach()), "distill_norm": float(term.pull.norm())}
    rec.update({k: float(v.detach()) for k, v in reg.items()})
    rec.update({k: float(v.detach()) for k, v in term.extra})
    rec.update({"t": int(term.t[0]), "shading": view.shading, "resolution": view.resolution, "sec": seconds})
    return rec


def _state(step: int, scene: Scene, optimizer, occupancy, generator: torch.Generator) -> dict:
    state = {"step": step, "scene": scene.state_dict(), "optimizer": optimizer.state_dict(), "rng": rng_state(generator)}
    if occupancy is not None:
        state["occupancy"] = occupancy.state_dict()
    return state


def _restore(run: RunFolder, scene: Scene, optimizer, occupancy, generator: torch.Generator) -> int:
    """Load checkpoints/last.pt into the scene, optimiser, occupancy grid and RNGs; returns its step."""
    state = load_checkpoint(run.last)
    load_scene_state(scene, state["scene"], run.last)
    settings = [{k: g[k] for k in ("lr", "betas", "eps")} for g in optimizer.param_groups]
    optimizer.load_state_dict(state["optimizer"])
    for group, fresh in zip(optimizer.param_groups, settings):  # the config's values win (a --set on resume)
        group.update(fresh)
    if occupancy is not None and "occupancy" in state:
        occupancy.load_state_dict(state["occupancy"])
    set_rng_state(state["rng"], generator)
    step = int(state["step"])
    run.truncate_metrics(step)
    return step
