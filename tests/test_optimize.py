"""The optimisation loop on an exact Gaussian prior (identity encoder): it moves renders toward the
prior's mean, and a NaN stops it with a clear error and an intact last checkpoint."""

import pytest
import torch

from dreamfield.checkpoint import load_checkpoint
from dreamfield.config import load_config
from dreamfield.distill import NonFiniteError
from dreamfield.distill.objectives import make_objective
from dreamfield.optimize import optimize
from dreamfield.prior import GaussianPrior
from dreamfield.scene.cameras import orbit_cameras
from dreamfield.run import RunFolder
from dreamfield.scene.render import render
from dreamfield.scene.scene import make_scene

RED = torch.tensor([0.85, 0.15, 0.15])


def small_cfg(steps, *extra):
    return load_config([], [
        f"optim.steps={steps}", "render.resolution=16", "render.n_samples=16", "field.grid_resolution=16",
        "render.p_albedo=1", "render.p_lambertian=0", "render.p_textureless=0", "prior.view_dependent=false",
        "run.preview_every=0", "run.log_every=1", *extra,
    ])


def run_loop(cfg, prior, path, prompt="anything"):
    """The loop as ``generate`` runs it: a new run folder, the SDS objective of guidance.space."""
    run = RunFolder(path)
    run.create(cfg, {"command": "generate", "prompt": prompt})
    return optimize(cfg, run, make_objective(cfg, prior, prompt), torch.device("cpu"), progress=False)


@torch.no_grad()
def mean_render(cfg, scene):
    cams = orbit_cameras(4, 20.0, 1.8, 45.0, "cpu")
    out = render(scene.field, cams, 16, 16, cfg.render, scene.background, "albedo")
    return out.rgb.mean(dim=(0, 2, 3))


def test_loop_moves_renders_to_the_prior_mean(tmp_path):
    # Data N(mu, 0.05^2 I) with mu a uniform red image: SDS's fixed point is the render == mu.
    prior = GaussianPrior(RED[:, None, None].expand(3, 16, 16).clone(), sigma=0.05)
    cfg = small_cfg(80, "optim.lr_color=0.05", "optim.lr_density=0.05", "guidance.weighting=uniform")
    torch.manual_seed(0)
    before = mean_render(cfg, make_scene(cfg, torch.device("cpu")))
    scene = run_loop(cfg, prior, tmp_path / "run")
    after = mean_render(cfg, scene)
    # white background + grey blob at the start; red after
    assert torch.dist(after, RED) < 0.5 * torch.dist(before, RED), (before, after)
    assert after[0] > after[1] + 0.2 and after[0] > after[2] + 0.2


def test_image_space_loop_at_a_render_size_other_than_the_priors(tmp_path):
    # The prior is native at 16 px, the renders are 8 px: the image-space target is resized to the render
    # (this crashed before); with 2 DDIM steps per target the renders still turn red.
    prior = GaussianPrior(RED[:, None, None].expand(3, 16, 16).clone(), sigma=0.05)
    cfg = small_cfg(80, "optim.lr_color=0.05", "optim.lr_density=0.05", "guidance.weighting=uniform",
                    "render.resolution=8", "guidance.denoise_steps=2")
    torch.manual_seed(0)
    before = mean_render(cfg, make_scene(cfg, torch.device("cpu")))
    scene = run_loop(cfg, prior, tmp_path / "run")
    after = mean_render(cfg, scene)
    assert torch.dist(after, RED) < 0.5 * torch.dist(before, RED), (before, after)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    prior = GaussianPrior(torch.full((3, 16, 16), 0.5), sigma=0.1)
    calls = {"n": 0}
    real_eps = prior.eps

    def eps(z_t, t, text, guidance_scale):
        calls["n"] += 1
        out = real_eps(z_t, t, text, guidance_scale)
        return out * float("nan") if calls["n"] > 3 else out

    monkeypatch.setattr(prior, "eps", eps)
    cfg = small_cfg(10, "run.checkpoint_every=1", "guidance.denoise_steps=1")  # one eps call per step
    with pytest.raises(NonFiniteError) as info:
        run_loop(cfg, prior, tmp_path / "run")
    assert "step 3" in str(info.value) and "last good checkpoint" in str(info.value)
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert state["step"] == 3
    assert all(torch.isfinite(v).all() for v in state["scene"]["field"].values())


def test_progressive_views_in_the_loop(tmp_path, monkeypatch):
    # camera.azimuth_start_span=60 widening over 8 steps: the loop's first views lie within +-30 degrees of the
    # front (so every prompt gets the front or overhead suffix), then the range widens to the whole circle.
    import dreamfield.optimize as loop

    drawn = []
    real = loop.sample_cameras

    def recording(cfg, batch, generator, device, azimuth=None):
        cams = real(cfg, batch, generator, device, azimuth)
        drawn.append(cams.azimuth_deg.abs().max().item())
        return cams

    monkeypatch.setattr(loop, "sample_cameras", recording)
    prompts = []
    prior = GaussianPrior(torch.full((3, 16, 16), 0.5), sigma=0.1)
    real_embed = prior.embed
    monkeypatch.setattr(prior, "embed", lambda p, n="": prompts.append(p) or real_embed(p, n))
    cfg = small_cfg(40, "prior.view_dependent=true", "guidance.batch_size=16", "render.resolution=8",
                    "camera.azimuth_start_span=60", "camera.azimuth_widen_steps=8")
    run_loop(cfg, prior, tmp_path / "run", "a cube")
    assert len(drawn) == 40
    assert drawn[0] <= 30.0 and all(d <= 30.0 + 150.0 * s / 8 + 1e-4 for s, d in enumerate(drawn[:8]))
    assert max(drawn[8:]) > 150.0  # the whole circle after widening (16 x 32 draws)
    assert {p.rsplit(", ", 1)[1] for p in prompts[0]} <= {"front view", "overhead view"}
    assert any(p.endswith("back view") for batch in prompts[8:] for p in batch)


def test_deferred_finiteness_checks_skip_bad_updates_and_stop_at_the_next_confirm(tmp_path):
    # the GPU policy, exercised on the CPU: no flag is read per step; a NaN gradient's update is skipped (the
    # parameters stay finite), and the next confirm (before a log line or checkpoint) stops the run
    from dreamfield.distill.objectives import Term
    from dreamfield.distill.score import NonFiniteError
    from dreamfield.optimize import FiniteGuard

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([{"params": [w], "lr": 0.1, "name": "density"}])
    guard = FiniteGuard(opt, RunFolder(tmp_path), defer=True)
    for step, scale in enumerate([1.0, float("nan"), 1.0]):
        opt.zero_grad()
        loss = (w * scale).sum()
        loss.backward()
        guard.before_step(step, loss, Term(loss, w.detach(), torch.zeros(1, dtype=torch.long)), {})
        opt.step()
        guard.after_step(step)
        assert torch.isfinite(w).all()
    with pytest.raises(NonFiniteError, match="1 step.*between steps 0 and 2"):
        guard.confirm(2)
    guard.bad = None
    guard.confirm(3)  # nothing bad since: no error


def test_immediate_finiteness_checks_name_the_term(tmp_path):
    from dreamfield.distill.objectives import Term
    from dreamfield.distill.score import NonFiniteError
    from dreamfield.optimize import FiniteGuard

    w = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.Adam([{"params": [w], "lr": 0.1, "name": "density"}])
    guard = FiniteGuard(opt, RunFolder(tmp_path), defer=False)
    good = (w * 2).sum()
    bad = torch.tensor(float("inf"))
    with pytest.raises(NonFiniteError, match="non-finite opacity of the loss at step 7.*no checkpoint"):
        guard.before_step(7, good + bad, Term(good, w.detach(), torch.zeros(1, dtype=torch.long)), {"opacity": bad})
