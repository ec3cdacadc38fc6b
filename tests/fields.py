"""Analytic fields for tests: objects with forward(x) -> (sigma, albedo), density(x) and normals(x),
the interface the renderer and the exporter call.
"""

from __future__ import annotations

import torch


class SphereField(torch.nn.Module):
    """A sphere of radius `radius` at the origin.

    density(x) = peak * sigmoid((radius - |x|) / width): symmetric about the sphere, so its
    half-peak level set is exactly the sphere, and smooth over `width` (a voxel or so) so that
    marching cubes interpolates it accurately. The albedo is `colour`, or `top_colour` above the
    centre (world z > centre z) when given.
    """

    def __init__(
        self, radius=0.5, colour=(0.85, 0.15, 0.15), top_colour=None, peak=10.0, width=0.02, centre=(0.0, 0.0, 0.0)
    ):
        super().__init__()
        self.radius, self.peak, self.width = radius, peak, width
        self.register_buffer("centre", torch.tensor(centre, dtype=torch.float32))
        self.register_buffer("colour", torch.tensor(colour, dtype=torch.float32))
        top = colour if top_colour is None else top_colour
        self.register_buffer("top_colour", torch.tensor(top, dtype=torch.float32))

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N,)"""
        return self.peak * torch.sigmoid((self.radius - (x - self.centre).norm(dim=-1)) / self.width)

    def albedo(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N, 3)"""
        top = (x[:, 2:3] > self.centre[2]).to(x.dtype)
        return top * self.top_colour + (1.0 - top) * self.colour

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.density(x), self.albedo(x)

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3) -> (N, 3) unit outward (the density gradient points inward)."""
        return torch.nn.functional.normalize(x - self.centre, dim=-1, eps=1e-8)


class UnionField(torch.nn.Module):
    """Two fields together: densities add, albedo from whichever is denser at the point."""

    def __init__(self, a: torch.nn.Module, b: torch.nn.Module):
        super().__init__()
        self.a, self.b = a, b

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self.a.density(x) + self.b.density(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        (sa, ca), (sb, cb) = self.a(x), self.b(x)
        return sa + sb, torch.where((sa >= sb)[:, None], ca, cb)

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        da, db = self.a.density(x), self.b.density(x)
        return torch.where((da >= db)[:, None], self.a.normals(x), self.b.normals(x))


class EmptyField(torch.nn.Module):
    """Everywhere the same faint density `value`, grey albedo: nothing to export at any sane level."""

    def __init__(self, value=0.0):
        super().__init__()
        self.value = value

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return torch.full(x.shape[:-1], self.value, dtype=x.dtype, device=x.device)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.density(x), torch.full_like(x, 0.5)

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.normalize(x, dim=-1, eps=1e-8)
