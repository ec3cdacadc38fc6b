"""The mesh of a signed-distance field: marching cubes at d = 0 or at the d = c the render shows.

:func:`dreamfield.export.mesh.extract_mesh` cuts a density grid at a level. An SDF field's surface is
{d = 0}, intersected with the bounding sphere outside which the renderer sees no density:
d_b(x) = max(d(x), |x| - bounding_radius). This module hands extract_mesh the shifted view
OFFSET - d_b(x) as its "density", with level OFFSET (d = 0) or the silhouette fit's, and no blur.
Marching cubes places a vertex on a cell edge by linear interpolation, which a constant shift does
not change, so the triangles are exactly those of d_b = OFFSET - level; every later step (floaters,
smoothing, decimation, albedo at the vertices, Y up) is extract_mesh's.
"""

from __future__ import annotations

import dataclasses

import torch
import trimesh

from dreamfield.config import ExportConfig


class _ShiftedSdf:
    """An SDF field seen as a density: density(x) = offset - d_b(x) (> 0 in the box), forward = the field's."""

    def __init__(self, field, offset: float) -> None:
        self.field, self.offset = field, offset

    def density(self, x: torch.Tensor) -> torch.Tensor:
        d = self.field.sdf(x)
        if self.field.bounding_radius > 0:
            d = torch.maximum(d, x.norm(dim=-1) - self.field.bounding_radius)
        return self.offset - d

    def __call__(self, x: torch.Tensor):
        return self.field(x)


def extract_sdf_mesh(field, cfg: ExportConfig, bound: float, device=None, views=None) -> trimesh.Trimesh:
    """A level set of ``field.sdf`` as a coloured mesh in glTF's Y-up frame: d = 0, or with
    cfg.level "silhouette" and `views` the d = c whose silhouette is the render's.

    The volume render's opacity-0.5 edge is not exactly d = 0: a grazing ray gathers density from the
    shell d < c over a long path (VolSDF's sigma = alpha Psi_beta(-d) is alpha / 2 at d = 0), so a render
    looks a little larger than the zero level set, by about beta or two.

    Args:
        field: an SDF field: ``sdf(x (N, 3)) -> (N,)`` (negative inside), ``field(x) -> (sigma, albedo)``,
            ``bounding_radius`` (0 = none); e.g. :class:`dreamfield.scene.sdf.SdfGridField`.
        cfg: the export settings; ``threshold`` and ``density_blur`` are not used.
        views: raster.field_views of the field, for the "silhouette" level (None: d = 0).
    Returns:
        as :func:`dreamfield.export.mesh.extract_mesh`, with ``metadata["level"]`` the SDF value c.
    Raises:
        EmptyMeshError when d > 0 everywhere on the grid.
    """
    from dreamfield.export.mesh import extract_mesh

    offset = 4.0 * bound  # above any distance inside the box (its diagonal is 2 sqrt(3) bound)
    mesh = extract_mesh(_ShiftedSdf(field, offset), dataclasses.replace(cfg, threshold=offset, density_blur=0.0),
                        bound, device, views)
    mesh.metadata["level"] = offset - float(mesh.metadata["level"])
    return mesh
