"""The toy domain's vocabulary against TOY_DOMAIN.md."""

import pytest

from dreamfield.toy import domain


def test_colour_table_is_the_contract():
    assert domain.COLOURS == {
        "red": (0.85, 0.15, 0.15),
        "green": (0.15, 0.70, 0.20),
        "blue": (0.15, 0.30, 0.85),
        "yellow": (0.90, 0.80, 0.15),
        "purple": (0.55, 0.20, 0.75),
        "orange": (0.95, 0.50, 0.10),
    }
    assert domain.SHAPES == ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")


def test_held_out_covers_every_colour_and_shape_once():
    colours = [c for c, _ in domain.HELD_OUT]
    shapes = [s for _, s in domain.HELD_OUT]
    assert sorted(colours) == sorted(domain.COLOURS)
    assert sorted(shapes) == sorted(domain.SHAPES)
    assert len(domain.TRAIN_PAIRS) == 30
    assert not set(domain.TRAIN_PAIRS) & set(domain.HELD_OUT)
    assert set(domain.TRAIN_PAIRS) | set(domain.HELD_OUT) == set(domain.ALL_PAIRS)


@pytest.mark.parametrize(
    "azimuth, elevation, label",
    [
        (0, 0, "front"),
        (45, 30, "front"),
        (-45, 30, "front"),
        (45.01, 0, "side"),
        (90, 60, "side"),  # 60 exactly is not overhead
        (-90, 0, "side"),
        (134.99, 0, "side"),
        (135, 0, "back"),
        (-135, 0, "back"),
        (180, -10, "back"),
        (-180, 0, "back"),
        (0, 60.01, "overhead"),
        (180, 85, "overhead"),
        (370, 0, "front"),  # wraps to 10
        (225, 0, "back"),  # wraps to -135
        (-300, 0, "side"),  # wraps to 60
    ],
)
def test_view_label_rule(azimuth, elevation, label):
    assert domain.view_label(azimuth, elevation) == label
    assert domain.view_suffix(azimuth, elevation) == f", {label} view"


def test_prompts_and_parsing():
    assert domain.prompt("red", "cube") == "a red cube"
    assert domain.caption("purple", "torus", 100.0, 10.0) == "a purple torus, side view"
    for c, s in domain.ALL_PAIRS:
        assert domain.parse_prompt(domain.caption(c, s, 0.0, 0.0)) == (c, s)
    assert domain.parse_prompt("A Blue Cone") == ("blue", "cone")
    assert domain.parse_prompt("a hamburger") is None
    assert domain.parse_prompt("a pink cube") is None
    with pytest.raises(ValueError, match="unknown colour"):
        domain.prompt("pink", "cube")
    with pytest.raises(ValueError, match="unknown shape"):
        domain.prompt("red", "dodecahedron")


def test_nearest_colour():
    for name, rgb in domain.COLOURS.items():
        assert domain.nearest_colour(rgb) == name
    assert domain.nearest_colour((0.9, 0.55, 0.12)) == "orange"
    assert domain.nearest_colour((0.5, 0.25, 0.8)) == "purple"
    assert domain.nearest_colour((0.2, 0.3, 0.9)) == "blue"
