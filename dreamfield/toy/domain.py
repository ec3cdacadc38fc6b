"""The toy world's vocabulary: shapes, colours, held-out pairs, prompts and the view-suffix rule.

Everything here follows the contract in TOY_DOMAIN.md; the numbers are the contract's, not tunables.
The view-suffix rule itself lives with the prior (``dreamfield.prior.text.view_label``), so the
captions the toy prior is trained on and the prompts SDS sends to it are built by the same code.
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from dreamfield.prior.text import view_label

SHAPES: tuple[str, ...] = ("sphere", "cube", "cylinder", "cone", "torus", "pyramid")

# Albedo in sRGB [0, 1], exactly the contract's table.
COLOURS: dict[str, tuple[float, float, float]] = {
    "red": (0.85, 0.15, 0.15),
    "green": (0.15, 0.70, 0.20),
    "blue": (0.15, 0.30, 0.85),
    "yellow": (0.90, 0.80, 0.15),
    "purple": (0.55, 0.20, 0.75),
    "orange": (0.95, 0.50, 0.10),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Six (colour, shape) pairs never shown to the prior: a permutation, so every colour and every shape is
# held out exactly once and every held-out pair is a new combination of a seen colour and a seen shape.
HELD_OUT: tuple[tuple[str, str], ...] = (
    ("red", "torus"),
    ("green", "cone"),
    ("blue", "cube"),
    ("yellow", "pyramid"),
    ("purple", "sphere"),
    ("orange", "cylinder"),
)

ALL_PAIRS: tuple[tuple[str, str], ...] = tuple((c, s) for c in COLOUR_NAMES for s in SHAPES)
TRAIN_PAIRS: tuple[tuple[str, str], ...] = tuple(p for p in ALL_PAIRS if p not in HELD_OUT)

VIEW_LABELS: tuple[str, ...] = ("front", "side", "back", "overhead")


def prompt(colour: str, shape: str) -> str:
    """``prompt("red", "cube") == "a red cube"``; unknown names raise ValueError."""
    if colour not in COLOURS:
        raise ValueError(f"unknown colour {colour!r}; allowed: {', '.join(COLOUR_NAMES)}")
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; allowed: {', '.join(SHAPES)}")
    return f"a {colour} {shape}"


def view_suffix(azimuth_deg: float, elevation_deg: float) -> str:
    """The suffix appended to a prompt, e.g. ``", front view"`` (rule: ``view_label``, TOY_DOMAIN.md)."""
    return f", {view_label(azimuth_deg, elevation_deg)} view"


def caption(colour: str, shape: str, azimuth_deg: Optional[float] = None, elevation_deg: Optional[float] = None) -> str:
    """Prompt with the view suffix when a view is given: ``"a red cube, side view"``."""
    text = prompt(colour, shape)
    if azimuth_deg is None or elevation_deg is None:
        return text
    return text + view_suffix(azimuth_deg, elevation_deg)


def nearest_colour(rgb: Sequence[float]) -> str:
    """Name of the table colour nearest (Euclidean, sRGB) to ``rgb`` (3 floats in [0, 1])."""
    if len(rgb) != 3:
        raise ValueError(f"nearest_colour expects 3 values (r, g, b), got {len(rgb)}")
    r, g, b = (float(v) for v in rgb)
    return min(COLOURS, key=lambda n: (COLOURS[n][0] - r) ** 2 + (COLOURS[n][1] - g) ** 2 + (COLOURS[n][2] - b) ** 2)


_PROMPT_RE = re.compile(r"^\s*(?:an?\s+)?(\w+)\s+(\w+)\s*(?:,.*)?$", re.IGNORECASE)


def parse_prompt(text: str) -> Optional[tuple[str, str]]:
    """``"a red cube, side view"`` -> ``("red", "cube")``; None if the text is not a toy prompt."""
    m = _PROMPT_RE.match(text)
    if m is None:
        return None
    colour, shape = m.group(1).lower(), m.group(2).lower()
    if colour in COLOURS and shape in SHAPES:
        return colour, shape
    return None


VOCABULARY: frozenset[str] = frozenset({"a", "an", "view", *COLOUR_NAMES, *SHAPES, *VIEW_LABELS})


def normalise_prompt(text: str) -> str:
    """What the embedded prior reads: lower case, single spaces, no trailing full stop."""
    return " ".join(text.lower().split()).rstrip(". ").strip()


def unknown_words(text: str) -> list[str]:
    """Words of ``text`` (normalised) outside the toy world's vocabulary, in order, without repeats."""
    words = re.findall(r"[a-z0-9']+", normalise_prompt(text))
    return list(dict.fromkeys(w for w in words if w not in VOCABULARY))
