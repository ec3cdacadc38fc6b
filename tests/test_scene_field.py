"""Fields: blob initialisation, bounding sphere, normals (finite differences vs autograd), Adam groups,
hash encoding."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from dreamfield.config import FieldConfig, OptimConfig
from dreamfield.scene.encoding import HashEncoding
from dreamfield.scene.field import blob, make_field, superball_scale

SMALL_HASH = dict(
    kind="hashgrid", hash_levels=4, hash_log2_table_size=10, hash_base_resolution=4, hash_max_resolution=32, hidden_dim=16
)


def softplus(v: float) -> float:
    return math.log1p(math.exp(v))


@pytest.mark.parametrize("activation", ["exp", "softplus"])
@pytest.mark.parametrize("kind", ["grid", "hashgrid"])
def test_blob_init_density(kind, activation):
    cfg = FieldConfig(**SMALL_HASH) if kind == "hashgrid" else FieldConfig(grid_resolution=16)
    cfg.density_activation = activation
    field = make_field(cfg)
    centre = field.density(torch.zeros(1, 3)).detach()
    # raw ~ 0 at init: sigma(0) = act(0 + bias + lambda) = act(1) with the defaults: exp(1) ~ 2.72, softplus(1) ~ 1.31
    act = math.exp if activation == "exp" else softplus
    assert float(centre) == pytest.approx(act(cfg.density_bias + cfg.blob_density), rel=0.02)
    dirs = F.normalize(torch.randn(64, 3, generator=torch.Generator().manual_seed(0)), dim=-1)
    outside = field.density(dirs * 0.905)  # just outside the bounding radius 0.9
    assert torch.equal(outside, torch.zeros(64))
    inside = field.density(dirs * 0.3)
    assert (inside > 0).all() and (inside < centre).all()  # the blob decays from the centre
    sigma, albedo = field(dirs * 0.3)
    assert torch.allclose(sigma, inside)
    assert albedo.shape == (64, 3) and (albedo >= 0).all() and (albedo <= 1).all()


def test_exp_activation_and_no_bounding_sphere():
    field = make_field(
        FieldConfig(grid_resolution=8, density_activation="exp", bounding_radius=0.0, density_bias=-1.0, blob_radius=0.2)
    ).requires_grad_(False)
    assert float(field.density(torch.zeros(1, 3))) == pytest.approx(math.exp(4.0), rel=1e-5)
    far = field.density(torch.tensor([[0.95, 0.0, 0.0]]))
    assert float(far) == pytest.approx(math.exp(-1.0 + 5.0 * math.exp(-0.95**2 / 0.08)), rel=1e-4)


@pytest.mark.parametrize("p", [2.0, 4.0, 1.5])
def test_blob_gradient_is_exact(p):
    """blob()'s written-out gradient against autograd and gradcheck (float64), off the axes' kinks."""
    cfg = FieldConfig(blob_p=p, blob_radius=0.45, blob_density=3.0)
    x = (torch.rand(40, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64) - 0.5) * 1.6
    x = x[x.abs().min(dim=-1).values > 0.02].requires_grad_(True)  # |x_i|^(p-1) is not smooth at 0 for p < 2
    value, grad = blob(cfg, x)
    (auto,) = torch.autograd.grad(value.sum(), x)
    assert torch.allclose(grad, auto, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda y: blob(cfg, y)[0], (x,))
    assert torch.equal(blob(cfg, torch.zeros(1, 3, dtype=torch.float64))[1], torch.zeros(1, 3, dtype=torch.float64))


def test_superball_blob_keeps_the_balls_volume_and_is_a_rounded_box():
    """Each level set of the p = 4 blob is {||x||_4 <= r / c_4}, of the ball's volume 4/3 pi r^3 (a midpoint grid
    count), and reaches further along a diagonal than along an axis relative to the ball's |x| = r."""
    assert superball_scale(2.0) == pytest.approx(1.0, abs=1e-12)
    assert superball_scale(1.0) ** 3 == pytest.approx((4.0 / 3.0) / (4.0 * math.pi / 3.0))  # octahedron 4/3 r^3
    r, n = 0.4, 160
    axis = (torch.arange(n, dtype=torch.float64) + 0.5) / n * 2.0 - 1.0
    pts = torch.stack(torch.meshgrid(axis, axis, axis, indexing="ij"), dim=-1).reshape(-1, 3)
    for p in (2.0, 4.0):
        cfg = FieldConfig(blob_p=p, blob_radius=r, blob_density=1.0)
        inside = blob(cfg, pts)[0] > math.exp(-0.5)  # rho < blob_radius
        volume = float(inside.sum()) * (2.0 / n) ** 3
        assert volume == pytest.approx(4.0 / 3.0 * math.pi * r**3, rel=0.01)
    cfg = FieldConfig(blob_p=4.0, blob_radius=r, blob_density=1.0)
    c = superball_scale(4.0)
    on_axis = torch.tensor([[r / c, 0.0, 0.0]], dtype=torch.float64)
    diagonal = torch.full((1, 3), r / c / 3 ** 0.25, dtype=torch.float64)  # ||.||_4 = r / c
    for q in (on_axis, diagonal):
        assert float(blob(cfg, q)[0]) == pytest.approx(math.exp(-0.5), rel=1e-9)
    assert float(diagonal.norm()) > r > float(on_axis.norm())  # corners out, faces in


def test_field_normals_use_the_superball_blob():
    """With the network at zero the grid field's normals are the blob's: along the p-norm's gradient."""
    cfg = FieldConfig(grid_resolution=16, blob_p=4.0, normals="autograd")
    x = torch.tensor([[0.3, 0.1, 0.05], [-0.2, 0.25, -0.1]])
    expect = F.normalize(torch.sign(x) * x.abs() ** 3, dim=-1)
    assert torch.allclose(make_field(cfg).normals(x), expect, atol=1e-5)


def _sphere_grid_field(normals: str) -> torch.nn.Module:
    """A grid field whose raw density is 20 (0.5 - |x|) at every voxel (blob off): a soft sphere."""
    cfg = FieldConfig(grid_resolution=48, blob_density=0.0, normals=normals, bounding_radius=0.0)
    field = make_field(cfg)
    r = cfg.grid_resolution
    lin = torch.linspace(-1.0, 1.0, r)
    z, y, x = torch.meshgrid(lin, lin, lin, indexing="ij")  # voxel layout (z, y, x)
    with torch.no_grad():
        field.density_grid.copy_((20.0 * (0.5 - torch.sqrt(x * x + y * y + z * z)))[None, None])
    return field


def test_normals_point_outward_and_fd_matches_autograd():
    gen = torch.Generator().manual_seed(1)
    dirs = F.normalize(torch.randn(200, 3, generator=gen), dim=-1)
    pts = dirs * (0.3 + 0.4 * torch.rand(200, 1, generator=gen))  # radii 0.3 .. 0.7, around the surface
    n_fd = _sphere_grid_field("finite_difference").normals(pts)
    n_ad = _sphere_grid_field("autograd").normals(pts)
    assert torch.allclose(n_fd.norm(dim=-1), torch.ones(200), atol=1e-5)
    cos_out = (n_fd * dirs).sum(-1)
    assert cos_out.min() > 0.97, cos_out.min()  # outward (the trilinear grid bends them a little)
    agree = (n_fd * n_ad).sum(-1)
    assert agree.min() > 0.98, agree.min()


def test_blob_normals_outward_for_both_kinds():
    gen = torch.Generator().manual_seed(2)
    dirs = F.normalize(torch.randn(50, 3, generator=gen), dim=-1)
    for cfg in (FieldConfig(grid_resolution=16), FieldConfig(**SMALL_HASH)):
        n = make_field(cfg).normals(dirs * 0.4)
        assert ((n * dirs).sum(-1) > 0.99).all()


def test_normals_carry_gradients_to_the_grid():
    for mode in ("finite_difference", "autograd"):
        field = _sphere_grid_field(mode)
        x = torch.tensor([[0.31, 0.12, -0.2], [0.0, -0.45, 0.05]])
        light = torch.tensor([[1.0, 0.0, 0.0]])
        loss = (field.normals(x) * light).sum()
        loss.backward()
        g = field.density_grid.grad
        assert g is not None and torch.isfinite(g).all() and g.abs().sum() > 0


def test_hashgrid_autograd_normals_double_backward():
    field = make_field(FieldConfig(normals="autograd", **SMALL_HASH))
    x = torch.rand(32, 3) - 0.5
    field.normals(x)[:, 0].sum().backward()
    assert field.encoding.table.grad is not None and field.encoding.table.grad.abs().sum() > 0


@pytest.mark.parametrize("kind", ["grid", "grid-mlp", "hashgrid"])
def test_param_groups_cover_every_parameter_once(kind):
    if kind == "hashgrid":
        cfg = FieldConfig(**SMALL_HASH)
    else:
        cfg = FieldConfig(grid_resolution=8, grid_decoder="mlp" if kind == "grid-mlp" else "direct")
    field = make_field(cfg)
    optim = OptimConfig(lr_density=0.5, lr_color=0.25, lr_network=0.125)
    groups = field.param_groups(optim)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in field.parameters())
    lrs = {g["name"]: g["lr"] for g in groups}
    if kind == "hashgrid":
        assert lrs == {"color": 0.25, "network": 0.125}  # hash tables at lr_color (see HashGridField)
    else:
        assert lrs["density"] == 0.5 and lrs["color"] == 0.25
        assert [p is field.density_grid for p in groups[0]["params"]] == [True]
        assert ("network" in lrs) == (kind == "grid-mlp")
    torch.optim.Adam(groups)  # accepted as is


def test_bad_choices_raise():
    # choices are validated once, when the config loads; make_field's dispatch still refuses an unknown kind
    from dreamfield.config import ConfigError, load_config

    with pytest.raises(ValueError, match="field.kind"):
        make_field(FieldConfig(kind="voxels"))
    with pytest.raises(ConfigError, match="grid_decoder"):
        load_config([], ["field.grid_decoder=rgb"])


def test_hash_encoding_vertices_and_smoothness():
    enc = HashEncoding(bound=1.0, levels=3, features_per_level=2, log2_table_size=6, base_resolution=2, max_resolution=8)
    # level 0: resolution 2, 27 vertices < 64 entries, so indexed densely: vertex (i, j, k) -> i + 3 j + 9 k
    assert enc.resolution.tolist() == [2.0, 4.0, 8.0] and enc.hashed.tolist() == [False, True, True]
    with torch.no_grad():
        enc.table.copy_(torch.randn_like(enc.table))
    vertex = torch.tensor([[0.0, -1.0, 1.0]])  # vertex (1, 0, 2) of level 0
    out = enc(vertex)
    assert torch.allclose(out[0, :2], enc.table[1 + 0 + 9 * 2])
    # trilinear: continuous across cell faces, and d/dx checks out in float64
    a, b = torch.tensor([[0.5 - 1e-6, 0.1, 0.2]]), torch.tensor([[0.5 + 1e-6, 0.1, 0.2]])
    assert torch.allclose(enc(a), enc(b), atol=1e-4)
    enc64 = enc.double()
    x = torch.tensor([[0.13, -0.27, 0.61]], dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(enc64, (x,))


def test_grid_exact_gradient_matches_autograd_through_grid_sample():
    """GridField.raw_gradient writes out the trilinear gradient (no double backward needed);
    it must equal autograd's d/dx of the grid_sample lookup."""
    from dreamfield.scene.field import DensityField

    torch.manual_seed(0)
    field = make_field(FieldConfig(grid_resolution=16, normals="autograd"))
    with torch.no_grad():
        field.density_grid.normal_()
        x = (torch.rand(300, 3) * 2 - 1) * 0.95
        exact = field.raw_gradient(x)
        via_autograd = DensityField.raw_gradient(field, x)
    assert torch.allclose(exact, via_autograd, atol=1e-4 * float(via_autograd.abs().max()))


def test_density_tv_closed_form_and_gradient():
    f = make_field(FieldConfig(kind="grid", grid_resolution=6))
    with torch.no_grad():
        f.density_grid.zero_()
        assert float(f.density_tv().detach()) == 0.0  # a constant grid has no variation
        # a ramp of slope a along one axis: every difference along it is a, none along the others -> a^2
        f.density_grid.copy_(0.7 * torch.arange(6.0).view(1, 1, 1, 1, 6).expand(1, 1, 6, 6, 6))
    assert float(f.density_tv().detach()) == pytest.approx(0.49, rel=1e-6)
    # a checkerboard +-1: every neighbour differs by 2 along every axis -> 3 * 4
    i = torch.arange(6)
    board = ((i.view(6, 1, 1) + i.view(1, 6, 1) + i.view(1, 1, 6)) % 2 * 2 - 1).double()
    g = board.clone().requires_grad_(True)
    f64 = make_field(FieldConfig(kind="grid", grid_resolution=6)).double()
    f64.density_grid = torch.nn.Parameter(g.view(1, 1, 6, 6, 6))
    assert float(f64.density_tv().detach()) == pytest.approx(12.0)
    f64.density_tv().backward()
    assert (f64.density_grid.grad * board.view_as(f64.density_grid.grad) > 0).all()  # descent flattens the board
