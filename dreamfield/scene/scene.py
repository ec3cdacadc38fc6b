"""What a run optimises and renders: a field and a background in the scene box.

A :class:`Scene` bundles the two modules with the box they live in, so every renderer call passes
the same bounds (:func:`dreamfield.scene.render.render` takes them as arguments).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dreamfield.checkpoint import CheckpointError
from dreamfield.config import Config, RenderConfig
from dreamfield.scene.background import make_background
from dreamfield.scene.cameras import Cameras
from dreamfield.scene.field import make_field
from dreamfield.scene.occupancy import OccupancyGrid
from dreamfield.scene.render import RenderOut, render


@dataclass
class Scene:
    """The field and the background (both nn.Modules) in the box [-bound, bound]^3.

    ``radius`` is the field's bounding sphere (density is zero outside it; 0 = none): the dense
    renderer skips samples outside it.
    """

    field: nn.Module
    background: nn.Module
    bound: float = 1.0
    radius: float = 0.0

    def state_dict(self) -> dict:
        return {"field": self.field.state_dict(), "background": self.background.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])

    @property
    def device(self) -> torch.device:
        for t in (*self.field.parameters(), *self.field.buffers()):
            return t.device
        return torch.device("cpu")

    def render(
        self,
        cams: Cameras,
        H: int,
        W: int,
        cfg: RenderConfig,
        shading: str = "lambertian",
        occupancy: OccupancyGrid | None = None,
        *,
        stratified: bool | None = None,
        generator: torch.Generator | None = None,
    ) -> RenderOut:
        """:func:`dreamfield.scene.render.render` of this scene (its bounds, its background)."""
        return render(
            self.field, cams, H, W, cfg, self.background, shading, occupancy,
            bound=self.bound, radius=self.radius, stratified=stratified, generator=generator,
        )


def make_scene(cfg: Config, device: torch.device | str) -> Scene:
    """A fresh scene from the config: the field of cfg.field (the blob start) and cfg.render's background."""
    return Scene(
        make_field(cfg.field).to(device), make_background(cfg.render).to(device), cfg.field.bound, cfg.field.bounding_radius
    )


def load_scene_state(scene: Scene, state: dict, source) -> None:
    """``scene.load_state_dict(state)``, with a one-line error naming the first tensor whose shape differs
    (a checkpoint made under another field layout) instead of torch's multi-line message."""
    for part, module in (("field", scene.field), ("background", scene.background)):
        mine = module.state_dict()
        theirs = state.get(part, {})
        for key in sorted(set(mine) | set(theirs)):
            if key not in theirs or key not in mine:
                raise CheckpointError(f"{source}: made with another {part} layout ({part}.{key} missing on one side)")
            if tuple(mine[key].shape) != tuple(theirs[key].shape):
                raise CheckpointError(
                    f"{source}: made with another {part} layout ({part}.{key} is {tuple(theirs[key].shape)} there, "
                    f"{tuple(mine[key].shape)} with this config)"
                )
    scene.load_state_dict(state)
