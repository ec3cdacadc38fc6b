"""Typed config: defaults, YAML + overrides, round trip, one-line errors naming the key."""

from pathlib import Path

import pytest

from dreamfield.config import Config, ConfigError, load_config, load_saved_config, save_config, to_yaml

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_defaults_are_typed():
    cfg = load_config()
    assert isinstance(cfg, Config)
    assert cfg.optim.steps == Config().optim.steps
    assert isinstance(cfg.camera.fov, tuple) and cfg.camera.fov == (40.0, 50.0)


def test_overrides_and_file_order(tmp_path):
    f1 = tmp_path / "a.yaml"
    f1.write_text("optim:\n  steps: 11\n  lr_density: 0.2\n")
    f2 = tmp_path / "b.yaml"
    f2.write_text("optim:\n  steps: 22\n")
    cfg = load_config([f1, f2], ["prior.guidance_scale=3.5", "camera.elevation=[0,30]", "prior.model=/some/folder"])
    assert cfg.optim.steps == 22  # later file wins
    assert cfg.optim.lr_density == 0.2  # earlier file's other keys kept
    assert cfg.prior.guidance_scale == 3.5
    assert cfg.camera.elevation == (0.0, 30.0)
    assert cfg.prior.model == "/some/folder"


def test_round_trip(tmp_path):
    cfg = load_config([], ["optim.steps=7", "export.formats=[glb,obj]", "guidance.t_max_end=0.5"])
    path = tmp_path / "config.yaml"
    save_config(cfg, path)
    again = load_config([path])
    assert again == cfg
    assert to_yaml(again) == to_yaml(cfg)


@pytest.mark.parametrize("name", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_shipped_configs_load(name):
    load_config([CONFIGS / name])


@pytest.mark.parametrize(
    "overrides, must_contain",
    [
        (["optim.stepz=3"], ["optim.stepz", "allowed here", "steps"]),
        (["nosuchsection.x=1"], ["nosuchsection", "allowed here", "optim"]),
        (["optim.steps=many"], ["optim.steps", "int"]),
        (["prior.guidance_scale=high"], ["prior.guidance_scale", "float"]),
        (["field.kind=octree"], ["field.kind", "grid", "hashgrid"]),
        (["guidance.t_min=0.9", "guidance.t_max=0.5"], ["t_min"]),
        (["guidance.denoise_steps=0"], ["guidance.denoise_steps", ">= 1"]),
        (["field.blob_p=0.5"], ["field.blob_p", ">= 1"]),
        (["guidance.t_min_start=0.99"], ["guidance.t_min_start", "t_max (0.98)"]),
        (["guidance.t_min_start=0.01"], ["guidance.t_min_start", "t_min (0.02)"]),
        (["guidance.t_min_start_steps=-1"], ["guidance.t_min_start_steps", ">= 0"]),
        (["optim.steps"], ["key=value"]),
        (["camera.azimuth_widen_steps=-5"], ["camera.azimuth_widen_steps", ">= 0"]),
        (["loss.tv=1", "field.kind=hashgrid"], ["loss.tv", "field.kind=grid"]),
        (["edit.source_weight=1.5"], ["edit.source_weight", "in [0, 1]"]),
        (["edit.source_weight_end=-0.1"], ["edit.source_weight_end", "in [0, 1] or null"]),
    ],
)
def test_bad_overrides_are_one_line_errors(overrides, must_contain):
    with pytest.raises(ConfigError) as info:
        load_config([], overrides)
    msg = str(info.value)
    assert "\n" not in msg
    for word in must_contain:
        assert word in msg


def test_bad_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("render:\n  resolutoin: 32\n")
    with pytest.raises(ConfigError) as info:
        load_config([bad])
    assert "render.resolutoin" in str(info.value) and "\n" not in str(info.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("optim: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config([broken])


def test_a_saved_run_with_rays_per_chunk_keeps_its_chunks(tmp_path):
    # render.chunk (rays) of earlier runs becomes render.chunk_samples with the same rays per chunk
    old = tmp_path / "config.yaml"
    old.write_text("render:\n  n_samples: 64\n  chunk: 65536\n")
    cfg = load_config([old])
    assert cfg.render.chunk_samples == 65536 * 64 and cfg.render.chunk_samples // cfg.render.n_samples == 65536
    with pytest.raises(ConfigError, match="render.chunk"):
        load_config([], ["render.chunk=100"])  # given now, the old key is unknown like any other


def test_a_saved_run_with_the_reverted_albedo_smooth_loads_only_when_it_was_off(tmp_path):
    # runs saved while surface.albedo_smooth existed (c9dd8dc-4f4c06e) wrote it into config.yaml, 0.0 by default
    off = tmp_path / "off.yaml"
    off.write_text("surface:\n  albedo_smooth: 0.0\n  lr_color: 0.03\n")
    assert load_saved_config(off).surface.lr_color == 0.03
    on = tmp_path / "on.yaml"
    on.write_text("surface:\n  albedo_smooth: 1.0\n")
    with pytest.raises(ConfigError) as info:  # it changed that run: refused, in one line
        load_saved_config(on)
    assert "surface.albedo_smooth was removed" in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(ConfigError, match="surface.albedo_smooth"):
        load_config([], ["surface.albedo_smooth=0"])  # given now, an unknown key like any other


def test_a_saved_run_without_a_later_key_keeps_the_old_behaviour(tmp_path):
    from dreamfield.config import BEFORE_THE_KEY, load_saved_config

    full = tmp_path / "full.yaml"
    save_config(load_config([], ["edit.source_weight=0.25"]), full)  # today's runs save every key
    assert load_saved_config(full).edit.source_weight == 0.25 and load_saved_config(full).surface.enabled is True
    old = tmp_path / "old.yaml"  # a run saved before edit.source_weight and the surface section existed
    old.write_text("optim:\n  steps: 7\nedit:\n  anchor_points: 100\n")
    cfg = load_saved_config(old)
    assert (cfg.optim.steps, cfg.edit.anchor_points) == (7, 100)
    assert cfg.edit.source_weight == float(BEFORE_THE_KEY["edit.source_weight"]) == 1.0  # DDS, as it ran
    assert cfg.surface.enabled is False  # one stage, as it ran
    assert cfg.loss.coverage == 0.0  # no size anchor, as it ran
    assert cfg.surface.init_colour_depth == 0.0  # the coarse albedo at each voxel, as it ran
    assert load_config([old]).surface.enabled is True  # a config file that is not a saved run takes the defaults
    assert load_config([old]).loss.coverage > 0 and load_config([old]).surface.init_colour_depth > 0
    assert load_saved_config(old, (), ["edit.source_weight=0"]).edit.source_weight == 0.0  # --set still wins
    with pytest.raises(ConfigError, match="config file not found"):
        load_saved_config(tmp_path / "missing.yaml")
