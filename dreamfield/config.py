"""Typed configuration: nested dataclasses, YAML files, ``--set a.b=value`` overrides.

Loading goes through OmegaConf structured configs, so an unknown key or a value of the wrong type
fails at load time. :func:`load_config` turns every such failure into a :class:`ConfigError` whose
message is one line naming the key and what is allowed.

Each section is a small dataclass; the field comments are the documentation of the setting.
"""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException


class ConfigError(ValueError):
    """A bad configuration file or override; the message is one line meant for the user."""


@dataclass
class FieldConfig:
    """The neural field: point in the scene box -> (density, albedo)."""

    kind: str = "grid"  # "grid" (dense voxel grid + tiny MLP; fast on CPU) or "hashgrid" (Instant-NGP)
    bound: float = 1.0  # the scene box is [-bound, bound]^3
    # dense grid
    grid_resolution: int = 48  # voxels per side (finer grids carry more voxel noise under SDS on the toy prior)
    grid_features: int = 8  # features per voxel (channel 0 is raw density); used by grid_decoder="mlp"
    grid_decoder: str = "direct"  # "direct" (3 sigmoid albedo channels; fastest) or "mlp" (features -> MLP)
    # hash grid (Instant-NGP, Mueller et al. 2022)
    hash_levels: int = 16
    hash_features_per_level: int = 2
    hash_log2_table_size: int = 19
    hash_base_resolution: int = 16
    hash_max_resolution: int = 2048
    hidden_dim: int = 64
    num_layers: int = 2
    # DreamFusion's density "blob": lambda * exp(-|x|^2 / (2 sigma^2)) added before the activation
    blob_density: float = 5.0
    blob_radius: float = 0.5  # toy shapes reach ~0.5 from the centre; a smaller blob let SDS shrink cubes to cones
    blob_p: float = 2.0  # the blob's norm: 2 a ball; > 2 an axis-aligned rounded box of the same volume (field.blob)
    # "exp" (trunc_exp, DreamFusion's) or "softplus". softplus(raw) ~ raw, so within a run's steps the density stays
    # low: a translucent shell whose inner normals point inward and cancel the outer ones (dark, speckled shading;
    # cubes come out round). exp makes the surface opaque. The bias sets the start: a high one starts from a dense
    # ball that cones keep and tori close over, a low one from a faint blob (docs/RESULTS.md, "Density activation").
    density_activation: str = "exp"
    density_bias: float = -4.0  # constant added to the raw density before the activation
    bounding_radius: float = 0.9  # density is zero outside this sphere; <= 0 disables
    normals: str = "finite_difference"  # "finite_difference" (smooths over fd_eps) or "autograd" (exact, written out)
    fd_eps: float = 0.01  # finite-difference step in world units


@dataclass
class CameraConfig:
    """Random training cameras (defaults from the toy domain) and the fixed preview orbit."""

    distance: tuple[float, float] = (1.6, 2.0)
    elevation: tuple[float, float] = (-10.0, 60.0)  # degrees, up from the xy-plane
    azimuth: tuple[float, float] = (-180.0, 180.0)  # degrees, 0 = looking from +x
    # progressive views: the azimuth span starts at azimuth_start_span degrees around the middle of `azimuth`
    # and widens linearly to the whole range over azimuth_widen_steps steps (0 = the whole range at once): the
    # front is shaped first, so the object does not average over yaws (docs/RESULTS.md, "Progressive views")
    azimuth_start_span: float = 60.0
    azimuth_widen_steps: int = 240
    fov: tuple[float, float] = (40.0, 50.0)  # vertical field of view, degrees
    overhead_prob: float = 0.1  # share of views drawn with elevation in [elevation[1], overhead_max]
    overhead_max: float = 85.0
    light_jitter: float = 0.5  # light position = camera position + N(0, jitter^2) (DreamFusion)
    preview_elevation: float = 20.0
    preview_distance: float = 1.8
    preview_fov: float = 45.0


@dataclass
class RenderConfig:
    """Volume rendering and shading."""

    resolution: int = 64  # training render size (square)
    n_samples: int = 64  # samples per ray on the dense (CPU) path
    use_occupancy_grid: bool = True  # nerfacc OccGridEstimator on CUDA
    occ_resolution: int = 64
    occ_update_every: int = 16
    occ_threshold: float = 0.01
    render_step_size: float = 0.005  # CUDA path marching step (world units)
    early_stop_eps: float = 1e-4  # CUDA path: drop samples once transmittance falls below this
    normal_weight_threshold: float = 1e-4  # normals only at samples whose weight exceeds this (0 = all)
    # shading probabilities per step; normalised, must not all be zero
    p_albedo: float = 0.2
    p_lambertian: float = 0.6
    p_textureless: float = 0.2
    ambient: float = 0.35
    diffuse: float = 0.65
    background: str = "constant"  # "constant" or "mlp"
    background_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    chunk_samples: int = 4194304  # samples per field call in a render (rays per chunk = this // n_samples): bounds memory


@dataclass
class PriorConfig:
    """The frozen latent diffusion model."""

    model: Optional[str] = None  # folder or hub id; None = the embedded toy prior
    guidance_scale: float = 7.5
    dtype: str = "auto"  # "auto" (fp16 on CUDA, fp32 on CPU), "float16", "bfloat16", "float32"
    view_dependent: bool = True  # append DreamFusion's view suffix to the prompt
    negative_prompt: str = ""
    local_files_only: bool = True  # offline by default: no machine of the project reaches a hub
    channels_last: bool = False  # UNet/VAE weights in channels-last memory format (faster convs on recent GPUs)


@dataclass
class GuidanceConfig:
    """Score distillation: timesteps, weighting, clipping."""

    t_min: float = 0.02  # fraction of the training timesteps
    t_max: float = 0.98
    t_max_end: Optional[float] = 0.3  # anneal t_max linearly to this value; None = no annealing
    anneal_steps: int = 0  # steps over which t_max anneals (0 = the whole run)
    # a high-noise start: t_min is t_min_start for the first t_min_start_steps steps (only large t, which set the
    # coarse shape, before small t refine it); None = t_min from the first step
    t_min_start: Optional[float] = None
    t_min_start_steps: int = 0
    space: str = "image"  # "latent" (SDS through the VAE encoder, DreamFusion) or "image" (decoded x0 target, HiFA)
    # image space: DDIM steps from t to the target's x0 (1 = the one-step estimate, HiFA). The one-step mean
    # blurs towards neighbouring colours; a few steps give a sharper sample of the prior near the render.
    denoise_steps: int = 4
    weighting: str = "sds"  # w(t): "sds" (1 - abar_t, threestudio), "uniform" (1), "snr_sqrt" (sqrt(abar_t (1 - abar_t)))
    grad_clip: Optional[float] = None  # clip |g| elementwise to this value (> 0); None = off
    batch_size: int = 1


@dataclass
class LossConfig:
    """Weights of the regularisers, summed explicitly in the loop."""

    sds: float = 1.0
    opacity: float = 0.0  # sparsity: mean opacity
    entropy: float = 0.0  # binary entropy of the opacity (pushes to 0 or 1)
    orientation: float = 0.0  # DreamFusion's normal orientation penalty
    tv: float = 0.0  # total variation of the voxel grid's raw density (grid fields only): evens out SDS grain
    preserve: float = 0.0  # edit only: photometric loss to the source renders
    # generate's density stage only: coverage * (mean opacity - coverage_scale * A / frame area)^2, A the object's
    # projected area in coverage_samples of the prior's own samples (coverage_steps DDIM steps each) at guidance
    # scale coverage_guidance (dreamfield.distill.coverage); on by default since issue 17 (docs/RESULTS.md, "A size
    # anchor from the prior's samples"); 0 turns it off, as it must be with render.background=mlp
    coverage: float = 2000.0
    coverage_scale: float = 0.8
    coverage_samples: int = 64
    coverage_steps: int = 10
    coverage_guidance: float = 1.0


@dataclass
class OptimConfig:
    steps: int = 600
    lr_density: float = 0.05
    lr_color: float = 0.01
    lr_network: float = 0.001
    lr_background: float = 0.001
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-15


@dataclass
class RunConfig:
    seed: int = 0
    out: str = "outputs"  # parent folder of new run folders (and of `sample`'s images) when --out is not given
    device: str = "auto"  # "auto", "cpu", "cuda", "cuda:N"
    preview_every: int = 100
    checkpoint_every: int = 200
    log_every: int = 10
    checkpoint_seconds: float = 60.0  # also write checkpoints/last.pt when this much time passed since the last (0 = off)
    threads: int = 0  # torch CPU threads; 0 = leave torch's default
    export: bool = True  # export mesh and turntable at the end of generate/edit


@dataclass
class SurfaceConfig:
    """The surface stage after the coarse density stage (dreamfield.surface): a signed-distance voxel grid
    started from the coarse field's level set and refined with the same distillation (VolSDF density)."""

    # on by default since the 12-prompt tuning seed (docs/RESULTS.md, "Surface stage"): the same shapes as one
    # stage, a third less colour error; configs/one_stage.yaml turns it off
    enabled: bool = True
    # Adam steps of the surface stage, after optim.steps of the coarse stage; None = optim.steps // 4 (so --steps
    # scales both stages)
    steps: Optional[int] = None
    resolution: int = 64  # SDF and albedo voxels per side
    # hand-over: the coarse density grid, blurred (world units) and cut at this level, is the starting surface
    # (the one-stage export cuts at the same level, export.threshold 2.6). A lower level takes in the coarse
    # field's soft rim, and the stage keeps that inflated start (0.5: cones, tori and pyramids 1.5-1.7x the
    # primitive's area). The blur grows a sharp solid's level set by about 1.6 blur at this level (the blurred
    # indicator's closed form, tests/test_surface.py): the one-stage export's 0.06 made up for undersized coarse
    # fields, but the size anchor's are full-sized, and 0.06 started the stage that much too large (docs/RESULTS.md,
    # "A sharper hand-over")
    init_level: float = 2.6
    init_blur: float = 0.03
    # a Gaussian blur (sigma, world units) of the starting signed distance: the level set of a grainy coarse
    # field is bumpy at its voxel scale. Blurring an SDF moves a surface of mean curvature H by about sigma^2 H
    # (the heat equation's first term). Off: SDS regrows the bumps within the stage, and it cost IoU
    init_smooth: float = 0.0
    # the starting albedo of the voxels within 3 voxels of the starting surface: the coarse field's colour
    # composited along the surface's inward normal from +depth to -depth (world units; export.colour_depth's
    # measure, dreamfield.export.albedo), instead of the coarse albedo at the voxel (0): the coarse field's soft
    # halo, whose albedo tends to the white background, sits at the hand-over surface and pales its colour
    # (docs/RESULTS.md, "Where the colour error sits: the underside"; held out: "`surface.init_colour_depth` 0.06
    # on the held-out seeds")
    init_colour_depth: float = 0.06
    # world units per Adam step, roughly (a voxel is 2 bound / (resolution - 1)). Adam moves every voxel by about
    # the rate each step whatever the gradient's size, so SDS's noise roughens and inflates the surface at
    # faster rates; at this one the stage keeps the coarse shape and mostly sharpens it and fixes its colour
    lr_sdf: float = 0.0005
    lr_color: float = 0.02  # albedo logits
    lr_beta: float = 0.01  # log of (beta - beta_min)
    beta_init: float = 0.02  # VolSDF's beta: the surface's transition thickness, world units
    beta_min: float = 0.005  # the learned beta never falls below this (the renderer samples every ~0.03 units)
    # a ceiling on beta falling geometrically from beta_init to beta_end over the stage's last beta_anneal share of
    # steps, so the field after the last step renders at beta_end (None = the learned beta only; beta_anneal 0 =
    # the stage runs at the learned beta and only its final field is set to beta_end). A render's silhouette lies
    # about 2.4 beta outside {d = 0} (a grazing ray gathers ln 2 of optical depth in the shell): at the learned
    # beta (0.012-0.015) the exported zero level set is a pixel ring smaller than the field's render; at 0.001 the
    # two agree (docs/RESULTS.md, "Mesh vs field at d = 0"). Below beta_min on purpose: no gradient needs it
    beta_end: Optional[float] = 0.001
    beta_anneal: float = 0.0
    eikonal: float = 0.1  # weight of the eikonal term mean (|grad d| - 1)^2 over the lattice
    # the stage's timesteps: t_max anneals from t_max to t_max_end over its steps (low t refines, high t reshapes)
    t_max: float = 0.5
    t_max_end: float = 0.2
    # the stage's shading probabilities (render.p_* of the coarse stage are not used here). No albedo-only
    # renders: the toy prior saw Lambertian-shaded images, so an unshaded render is pulled toward the shaded
    # colour, i.e. a darker albedo (scripts/diagnose_colour.py measures each shading's fixed point)
    p_albedo: float = 0.0
    p_lambertian: float = 0.8
    p_textureless: float = 0.2


EXPORT_FORMATS = ("glb", "obj", "ply")  # what export.formats may name (dreamfield.export.mesh writes each)


@dataclass
class ExportConfig:
    resolution: int = 0  # marching-cubes grid per side; 0 = 256 on CUDA, 128 on CPU
    # density level and a Gaussian blur (sigma, world units) of the density grid before marching cubes.
    # SDS fields are grainy with a soft halo around a denser core: the halo inflates shapes at low levels, the
    # core breaks up at high ones (docs/RESULTS.md, "Export level"). None = min(5, mid-range). Imported meshes put
    # their surface at 5 with a steep profile (the edit defaults: no blur).
    threshold: Optional[float] = 2.6
    density_blur: float = 0.06
    # "threshold": the level above (an SDF: d = 0). "silhouette": the level (of the blurred density, or of an SDF)
    # whose mesh covers the pixels the field's render shows (opacity > 0.5 in the compare views), unless the
    # threshold's mesh already covers them as well (silhouette IoU within 0.01); with compare_views 0, or nothing
    # opaque in them, the threshold. Not the default: on 36 toy pairs it matched the render better but cost shape
    # accuracy (docs/RESULTS.md, "Export level fitted to the render"). export.json's level_rule says which was used.
    level: str = "threshold"
    formats: list[str] = field(default_factory=lambda: ["glb"])
    min_component: float = 0.05  # drop components with fewer faces than this share of the largest
    smooth_iterations: int = 0
    target_faces: int = 20000  # decimate to this many faces (quadric, fast_simplification); 0 = keep
    # "texture": xatlas uv charts + the albedo baked into an sRGB PNG (GLB embeds it; OBJ + MTL + PNG);
    # "vertex": per-vertex colours (linear COLOR_0 in GLB). PLY always has sRGB vertex colours.
    colour: str = "texture"
    texture_size: int = 1024  # texture side in texels
    # vertex colours and texels: the field's albedo composited along the inward normal from +depth to -depth (world
    # units), the colour a render looking at the surface shows (export/albedo.py); 0 = the albedo at the surface point
    colour_depth: float = 0.06
    # mesh vs field at every export: views on the video orbit rendered both ways (0 = skip), and their size;
    # the field's volume render is most of the cost
    compare_views: int = 6
    compare_resolution: int = 96
    video_frames: int = 60
    video_fps: int = 20
    video_resolution: int = 128
    video_elevation: float = 20.0
    video_normals: bool = True  # also write <stem>_normals.mp4: rgb | normals side by side
    gif: bool = False
    chunk: int = 262144  # points per field call when sampling the density grid and vertex colours


@dataclass
class EditConfig:
    mesh_fit_steps: int = 300  # Adam steps to fit a field to an imported mesh (the direct grid field needs none)
    import_radius: float = 0.7  # an imported mesh is centred and scaled so its bounding sphere has this radius
    keep_scale: bool = False  # true: keep the mesh file's own placement and units (read as glTF Y up)
    anchor_density: float = 0.0  # weight of mean |log1p(sigma_edit) - log1p(sigma_source)|^2 at random points (0 = off; ~1e4 holds a shape)
    anchor_points: int = 4096  # random points in the box per step for anchor_density
    # weight lambda of DDS's source branch (dreamfield.distill.score.dds_grad): 1 = DDS, 0 = SDS on the target
    # from the source scene (the source branch is then skipped). It goes linearly from source_weight at the first
    # step to source_weight_end at the last (None = constant). DDS subtracts the source's own pull towards its
    # prompt, so a source its prompt does not describe (a grey torus called "a green torus") drives the edit
    # past the target; on the toy prior SDS's fixed point was nearer the target's colour (docs/RESULTS.md,
    # "Edit colour"). configs/sd21.yaml keeps DDS (1): not measured on Stable Diffusion, where SDS at 7.5 blurs
    source_weight: float = 0.0
    source_weight_end: Optional[float] = None
    before_after_views: int = 6  # views on the preview orbit in before_after.png


@dataclass
class SampleConfig:
    method: str = "ddim"  # "ddim", "ddpm", "langevin"
    steps: int = 50
    eta: float = 0.0
    n: int = 4


@dataclass
class Config:
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    render: RenderConfig = dataclasses.field(default_factory=RenderConfig)
    prior: PriorConfig = dataclasses.field(default_factory=PriorConfig)
    guidance: GuidanceConfig = dataclasses.field(default_factory=GuidanceConfig)
    loss: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)
    surface: SurfaceConfig = dataclasses.field(default_factory=SurfaceConfig)
    edit: EditConfig = dataclasses.field(default_factory=EditConfig)
    sample: SampleConfig = dataclasses.field(default_factory=SampleConfig)


def _one_line(exc: OmegaConfBaseException) -> str:
    """OmegaConf messages span several lines (full_key, object_type...); keep what a user needs."""
    key = getattr(exc, "full_key", None)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{key}: {first}" if key and key not in first else first


def _allowed_keys(dotted: str) -> str:
    """The keys allowed at the parent of a dotted key, for the error message."""
    node: Any = Config()
    parts = dotted.split(".")
    for p in parts[:-1]:
        if not dataclasses.is_dataclass(node) or not hasattr(node, p):
            break
        node = getattr(node, p)
    if dataclasses.is_dataclass(node):
        return ", ".join(f.name for f in dataclasses.fields(node))
    return ""


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """Defaults <- each YAML file in order <- each ``a.b=value`` override; returns a typed Config.

    Raises ConfigError (one line) for a missing file, bad YAML, an unknown key or a wrong type.
    """
    base = OmegaConf.structured(Config)
    OmegaConf.set_struct(base, True)
    for f in files:
        p = Path(f)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        try:
            loaded = OmegaConf.load(p)
        except Exception as exc:  # yaml.YAMLError and friends
            raise ConfigError(f"{p}: not valid YAML ({type(exc).__name__})") from None
        if not isinstance(loaded, DictConfig):
            raise ConfigError(f"{p}: not a config (a YAML mapping of sections such as optim:, render:)")
        _drop_retired(loaded, p)
        try:
            base = OmegaConf.merge(base, loaded)
        except OmegaConfBaseException as exc:
            raise ConfigError(f"{p}: {_explain(exc)}") from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"--set expects key=value, got {ov!r}")
        key = ov.split("=", 1)[0].strip()
        try:
            base = OmegaConf.merge(base, OmegaConf.from_dotlist([ov]))
        except OmegaConfBaseException as exc:
            raise ConfigError(f"--set {ov}: {_explain(exc, key)}") from None
    cfg = OmegaConf.to_object(base)
    assert isinstance(cfg, Config)
    validate(cfg)
    return cfg


# Settings whose default changed after runs were saved without them: a run's config.yaml holds its whole config,
# so a key it lacks did not exist when the run was made, and the run ran as the value here, not as today's
# default. load_saved_config fills them in (an old edit was DDS throughout; an old run had one stage, no size
# anchor, and a surface stage started from the coarse albedo at each voxel).
BEFORE_THE_KEY = {
    "edit.source_weight": "1.0",
    "loss.coverage": "0",
    "surface.enabled": "false",
    "surface.init_colour_depth": "0",
}


def load_saved_config(saved: str | Path, files: Sequence[str | Path] = (), overrides: Sequence[str] = ()) -> Config:
    """A saved run's config.yaml <- ``files`` <- ``overrides``, with BEFORE_THE_KEY's value for each key the
    saved file lacks (under the files and overrides, which still set it). Errors as :func:`load_config`."""
    try:
        loaded = OmegaConf.load(saved) if Path(saved).is_file() else None
    except Exception:  # bad YAML: load_config below says so in one line
        loaded = None
    if not isinstance(loaded, DictConfig):
        return load_config([saved, *files], overrides)
    present = set(_mapping_keys(OmegaConf.to_container(loaded)))
    legacy = [f"{k}={v}" for k, v in BEFORE_THE_KEY.items() if k not in present]
    return load_config([saved, *files], [*legacy, *overrides])


def _mapping_keys(node: dict, prefix: str = ""):
    """The dotted keys of every leaf of a nested mapping (a loaded YAML file)."""
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _mapping_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


# Keys that earlier versions wrote into every run's config.yaml and that never changed a run: a saved run
# (to export, resume or edit) still loads. Given anywhere else, they are unknown keys like any other.
RETIRED_KEYS = {
    "coarse_to_fine": ("enabled", "milestones", "resolutions"),
    "edit": ("source_prompt", "target_prompt", "method"),
    "sample": ("guidance_scale",),
}


def _drop_retired(loaded: Any, path: Path) -> None:
    """Remove RETIRED_KEYS from a loaded YAML mapping (in place); a coarse_to_fine section that was
    enabled, or a surface.albedo_smooth above 0 (a reverted term, commit 4f4c06e), did change its run, so it
    is refused rather than dropped. render.chunk (rays per chunk) becomes render.chunk_samples with the same
    rays per chunk."""
    if not isinstance(loaded, DictConfig):
        return
    c2f = loaded.get("coarse_to_fine")
    if isinstance(c2f, DictConfig) and c2f.get("enabled", False):
        raise ConfigError(f"{path}: coarse_to_fine was removed; set render.resolution instead")
    surface = loaded.get("surface")
    if isinstance(surface, DictConfig) and "albedo_smooth" in surface:
        if float(surface.pop("albedo_smooth") or 0) > 0:
            raise ConfigError(f"{path}: surface.albedo_smooth was removed; a run made with it cannot be resumed "
                              "or exported the same way")
    render = loaded.get("render")
    if isinstance(render, DictConfig) and "chunk" in render:  # rays per chunk, before chunk_samples
        render["chunk_samples"] = int(render.pop("chunk")) * int(render.get("n_samples", RenderConfig.n_samples))
    for section, keys in RETIRED_KEYS.items():
        node = loaded.get(section)
        if section == "coarse_to_fine":
            loaded.pop(section, None)
        elif isinstance(node, DictConfig):
            for k in keys:
                node.pop(k, None)


def _explain(exc: OmegaConfBaseException, key: str | None = None) -> str:
    key = key or getattr(exc, "full_key", None) or ""
    msg = str(exc).strip().splitlines()[0]
    if "not in struct" in msg or ("Key '" in msg and "not" in msg):
        allowed = _allowed_keys(key) if key else ""
        return f"unknown key '{key}'" + (f" (allowed here: {allowed})" if allowed else "")
    if ("could not be converted" in msg) or ("Invalid type" in msg) or ("Unsupported value type" in msg):
        expected = _expected_type(key)
        return f"wrong type for '{key}': {msg}" + (f" (expected {expected})" if expected else "")
    return _one_line(exc) if not key else f"'{key}': {msg}"


def _expected_type(dotted: str) -> str:
    """The declared type of a dotted key, e.g. 'float' for optim.lr_density; '' if unknown."""
    node: Any = Config()
    parts = dotted.split(".")
    for p in parts[:-1]:
        node = getattr(node, p, None)
    if not dataclasses.is_dataclass(node):
        return ""
    types = {f.name: f.type for f in dataclasses.fields(node)}
    return str(types.get(parts[-1], ""))


def _walk(node: Any, prefix: str = ""):
    """(dotted key, value) of every leaf of the config tree; list/tuple items get [i]."""
    for f in dataclasses.fields(node):
        value, key = getattr(node, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            yield from _walk(value, key + ".")
        elif isinstance(value, (list, tuple)):
            for k, v in enumerate(value):
                yield f"{key}[{k}]", v
        else:
            yield key, value


def _need(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise ConfigError(f"{key}: must be {rule}, got {value}")


def _check_choices(cfg: Config) -> None:
    """Every setting that names one of a few options."""

    def choice(key: str, value: str, allowed: Sequence[str]) -> None:
        if value not in allowed:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(allowed)}")

    choice("field.kind", cfg.field.kind, ("grid", "hashgrid"))
    choice("field.density_activation", cfg.field.density_activation, ("softplus", "exp"))
    choice("field.normals", cfg.field.normals, ("finite_difference", "autograd"))
    choice("field.grid_decoder", cfg.field.grid_decoder, ("direct", "mlp"))
    choice("render.background", cfg.render.background, ("constant", "mlp"))
    choice("guidance.space", cfg.guidance.space, ("latent", "image"))
    choice("guidance.weighting", cfg.guidance.weighting, ("sds", "uniform", "snr_sqrt"))
    choice("sample.method", cfg.sample.method, ("ddim", "ddpm", "langevin"))
    choice("prior.dtype", cfg.prior.dtype, ("auto", "float16", "bfloat16", "float32"))
    if not (cfg.run.device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", cfg.run.device)):
        raise ConfigError(f"run.device: {cfg.run.device!r} is not one of auto, cpu, cuda, cuda:N")
    for fmt in cfg.export.formats:
        choice("export.formats", fmt, EXPORT_FORMATS)
    choice("export.colour", cfg.export.colour, ("texture", "vertex"))
    choice("export.level", cfg.export.level, ("silhouette", "threshold"))
    _need(bool(cfg.export.formats), "export.formats", "a non-empty list", cfg.export.formats)


def validate(cfg: Config) -> None:
    """Every check OmegaConf's types cannot express, in one place, before anything is written: every number
    finite, then choices, ranges and cross-field rules. One-line ConfigError on the first failure."""
    for key, value in _walk(cfg):
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{key}: must be a finite number, got {value}")
    _check_choices(cfg)
    need = _need
    f, cam, r, g, o, run, ex = cfg.field, cfg.camera, cfg.render, cfg.guidance, cfg.optim, cfg.run, cfg.export

    def at_least(lo: float, *keys: str, strict: bool = False) -> None:
        for key in keys:
            value = _get(cfg, key)
            need(value > lo if strict else value >= lo, key, f"{'>' if strict else '>='} {lo}", value)

    # the field
    at_least(0, "field.bound", "field.blob_radius", "field.fd_eps", strict=True)
    at_least(1, "field.blob_p")
    at_least(2, "field.grid_resolution")
    at_least(4, "field.grid_features")
    at_least(1, "field.hash_levels", "field.hash_features_per_level", "field.hash_base_resolution", "field.hidden_dim",
             "field.num_layers")
    need(f.hash_log2_table_size <= 30, "field.hash_log2_table_size", "<= 30", f.hash_log2_table_size)
    at_least(1, "field.hash_log2_table_size")
    need(f.hash_base_resolution <= f.hash_max_resolution, "field.hash_max_resolution", ">= field.hash_base_resolution",
         f.hash_max_resolution)
    # cameras
    for key, (lo, hi) in (("camera.distance", cam.distance), ("camera.fov", cam.fov)):
        need(0 < lo <= hi, key, "0 < low <= high", (lo, hi))
    need(cam.fov[1] < 180, "camera.fov", "below 180 degrees", cam.fov)
    need(0 < cam.preview_fov < 180, "camera.preview_fov", "in (0, 180) degrees", cam.preview_fov)
    need(-90 <= cam.elevation[0] <= cam.elevation[1] <= 90, "camera.elevation", "-90 <= low <= high <= 90", cam.elevation)
    need(cam.overhead_max <= 90, "camera.overhead_max", "<= 90 degrees", cam.overhead_max)
    need(cam.azimuth[0] <= cam.azimuth[1], "camera.azimuth", "low <= high", cam.azimuth)
    need(0 <= cam.overhead_prob <= 1, "camera.overhead_prob", "in [0, 1]", cam.overhead_prob)
    at_least(0, "camera.preview_distance", strict=True)
    at_least(0, "camera.light_jitter", "camera.azimuth_start_span", "camera.azimuth_widen_steps")
    # rendering
    at_least(8, "render.resolution")
    at_least(2, "render.n_samples")
    at_least(0, "render.p_albedo", "render.p_lambertian", "render.p_textureless", "render.ambient", "render.diffuse",
             "render.occ_threshold", "render.normal_weight_threshold")
    need(r.p_albedo + r.p_lambertian + r.p_textureless > 0, "render.p_*", "not all zero",
         (r.p_albedo, r.p_lambertian, r.p_textureless))
    need(all(0 <= c <= 1 for c in r.background_color), "render.background_color", "three values in [0, 1]",
         r.background_color)
    at_least(1, "render.occ_resolution", "render.occ_update_every", "render.chunk_samples")
    at_least(0, "render.render_step_size", strict=True)
    need(0 <= r.early_stop_eps < 1, "render.early_stop_eps", "in [0, 1)", r.early_stop_eps)
    # the prior and the distillation
    at_least(0, "prior.guidance_scale")
    need(0.0 <= g.t_min < g.t_max <= 1.0, "guidance.t_min/t_max", "0 <= t_min < t_max <= 1", (g.t_min, g.t_max))
    need(g.t_max_end is None or g.t_min <= g.t_max_end <= 1.0, "guidance.t_max_end", "in [t_min, 1] or null", g.t_max_end)
    need(g.grad_clip is None or g.grad_clip > 0, "guidance.grad_clip", "> 0 or null (off)", g.grad_clip)
    at_least(0, "guidance.anneal_steps", "guidance.t_min_start_steps")
    need(g.t_min_start is None or g.t_min <= g.t_min_start < g.t_max, "guidance.t_min_start",
         f"in [t_min ({g.t_min}), t_max ({g.t_max})) or null (off)", g.t_min_start)
    at_least(1, "guidance.batch_size", "guidance.denoise_steps")
    at_least(0, *(key for key, _ in _walk(cfg.loss, "loss.")))
    at_least(0, "loss.coverage_scale", strict=True)
    at_least(1, "loss.coverage_samples", "loss.coverage_steps")
    need(cfg.loss.coverage == 0 or r.background == "constant", "loss.coverage",
         "0 unless render.background=constant (the prior's samples are measured against render.background_color)",
         cfg.loss.coverage)
    need(cfg.loss.tv == 0 or f.kind == "grid", "loss.tv", "0 unless field.kind=grid (the term needs a voxel grid)",
         cfg.loss.tv)
    # optimisation and the run
    at_least(1, "optim.steps")
    for key in ("optim.lr_density", "optim.lr_color", "optim.lr_network", "optim.lr_background"):
        need(0 < _get(cfg, key) <= 10, key, "in (0, 10]", _get(cfg, key))
    need(all(0 <= b < 1 for b in o.betas), "optim.betas", "two values in [0, 1)", o.betas)
    at_least(0, "optim.eps", strict=True)
    at_least(0, "run.seed", "run.threads", "run.preview_every", "run.checkpoint_every", "run.checkpoint_seconds")
    at_least(1, "run.log_every")
    need(bool(run.out.strip()), "run.out", "a folder name", repr(run.out))
    # export, edit, sample
    need(ex.resolution == 0 or ex.resolution >= 2, "export.resolution", "0 (auto) or >= 2", ex.resolution)
    need(ex.threshold is None or ex.threshold > 0, "export.threshold", "> 0 or null (auto)", ex.threshold)
    at_least(0, "export.density_blur", "export.colour_depth", "export.smooth_iterations", "export.target_faces",
             "edit.mesh_fit_steps", "sample.eta")
    need(0 <= ex.min_component <= 1, "export.min_component", "in [0, 1]", ex.min_component)
    at_least(1, "export.video_frames", "export.video_fps", "export.video_resolution", "export.chunk",
             "edit.anchor_points", "edit.before_after_views", "sample.steps", "sample.n")
    at_least(0, "edit.import_radius", strict=True)
    for key in ("edit.source_weight", "edit.source_weight_end"):
        need(_get(cfg, key) is None or 0 <= _get(cfg, key) <= 1, key, "in [0, 1]" + (" or null" if "end" in key else ""),
             _get(cfg, key))
    at_least(0, "export.compare_views")
    at_least(1, "export.compare_resolution")
    at_least(16, "export.texture_size")
    _validate_surface(cfg)


def _validate_surface(cfg: Config) -> None:
    """validate()'s checks of the surface section."""
    sf, g = cfg.surface, cfg.guidance

    need = _need
    need(sf.steps is None or sf.steps >= 1, "surface.steps", ">= 1 or null (optim.steps // 4)", sf.steps)
    need(sf.resolution >= 4, "surface.resolution", ">= 4", sf.resolution)
    for key in ("surface.init_level", "surface.beta_min"):
        need(_get(cfg, key) > 0, key, "> 0", _get(cfg, key))
    for key in ("surface.init_blur", "surface.init_smooth", "surface.init_colour_depth", "surface.eikonal",
                "surface.p_albedo", "surface.p_lambertian", "surface.p_textureless"):
        need(_get(cfg, key) >= 0, key, ">= 0", _get(cfg, key))
    for key in ("surface.lr_sdf", "surface.lr_color", "surface.lr_beta"):
        need(0 < _get(cfg, key) <= 10, key, "in (0, 10]", _get(cfg, key))
    need(sf.beta_init > sf.beta_min, "surface.beta_init", f"> surface.beta_min ({sf.beta_min})", sf.beta_init)
    need(sf.beta_end is None or 0 < sf.beta_end <= sf.beta_init, "surface.beta_end",
         f"in (0, surface.beta_init ({sf.beta_init})] or null", sf.beta_end)
    need(0 <= sf.beta_anneal <= 1, "surface.beta_anneal", "in [0, 1]", sf.beta_anneal)
    need(g.t_min <= sf.t_max_end <= sf.t_max <= 1.0, "surface.t_max/t_max_end",
         f"guidance.t_min ({g.t_min}) <= t_max_end <= t_max <= 1", (sf.t_max, sf.t_max_end))
    need(sf.p_albedo + sf.p_lambertian + sf.p_textureless > 0, "surface.p_*", "not all zero",
         (sf.p_albedo, sf.p_lambertian, sf.p_textureless))

def _get(cfg: Config, dotted: str) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        node = getattr(node, part)
    return node

def to_yaml(cfg: Config) -> str:
    """The fully resolved config as YAML (saved with every run)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def save_config(cfg: Config, path: str | Path) -> None:
    Path(path).write_text(to_yaml(cfg))
