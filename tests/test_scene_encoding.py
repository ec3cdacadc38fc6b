"""The hash encoding's custom autograd Functions against the plain-autograd lookup they replaced
(hash_encode_reference): values, gradients in x and in the table, gradcheck / gradgradcheck in
float64, and the hash field's written-out exact normals against double backward and finite differences.
"""

from __future__ import annotations

import pytest
import torch

from dreamfield.config import FieldConfig
from dreamfield.scene import encoding
from dreamfield.scene.encoding import HashEncoding, hash_encode_reference
from dreamfield.scene.field import DensityField, HashGridField, make_field


def tiny_encoding(dtype=torch.float64, seed=0) -> HashEncoding:
    """3 levels at resolutions 2, 4, 8 with a 64-row table: level 0 dense (27 vertices), levels 1-2 hashed."""
    enc = HashEncoding(bound=1.0, levels=3, features_per_level=2, log2_table_size=6, base_resolution=2, max_resolution=8)
    assert enc.hashed.tolist() == [False, True, True]
    with torch.no_grad():
        enc.table.copy_(torch.randn(enc.table.shape, generator=torch.Generator().manual_seed(seed)))
    return enc.to(dtype)


def edge_points(dtype=torch.float64) -> torch.Tensor:
    """Cell faces of every level (multiples of 1/4 in world units at resolution 8), box corners and
    faces, and points outside the box (their lookups clamp to the face)."""
    return torch.tensor(
        [
            [0.0, 0.0, 0.0],
            [0.25, -0.5, 0.75],
            [1.0, 1.0, 1.0],
            [-1.0, -1.0, -1.0],
            [1.0, 0.3, -1.0],
            [-0.999, 0.5, 0.999],
            [1.2, 0.1, -0.4],
            [-1.5, 2.0, 0.3],
        ],
        dtype=dtype,
    )


def interior_points(n: int, dtype=torch.float64, seed=1) -> torch.Tensor:
    return (torch.rand(n, 3, generator=torch.Generator().manual_seed(seed), dtype=dtype) * 2 - 1) * 0.97


def grads(fn, x: torch.Tensor, table: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """d (fn(x) . g) / d x and / d table."""
    xg = x.clone().requires_grad_(True)
    gx, gt = torch.autograd.grad((fn(xg) * g).sum(), (xg, table))
    return gx, gt


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_values_and_gradients_match_the_reference(dtype):
    enc = tiny_encoding(dtype)
    x = torch.cat([edge_points(dtype), interior_points(200, dtype)])
    new, ref = enc(x), hash_encode_reference(enc, x)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)
    assert torch.allclose(new, ref, **tol)
    g = torch.randn(new.shape, generator=torch.Generator().manual_seed(2)).to(dtype)
    gx_new, gt_new = grads(enc, x, enc.table, g)
    gx_ref, gt_ref = grads(lambda p: hash_encode_reference(enc, p), x, enc.table, g)
    assert torch.allclose(gx_new, gx_ref, **tol)
    assert torch.allclose(gt_new, gt_ref, **tol)
    assert gx_ref[6, 0] == 0 and gx_ref[7, 1] == 0  # outside the box the clamp stops the gradient
    assert gx_new[2].abs().sum() > 0  # on the box face it passes (clamp's backward includes the ends)


def test_chunked_passes_agree(monkeypatch):
    """Calls larger than a chunk run the levels chunk by chunk: force 7-point chunks (the last one short)."""
    enc = tiny_encoding()
    field = small_field()
    x = torch.cat([edge_points(), interior_points(45)])
    h = torch.randn(x.shape[0], enc.out_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def everything():
        xg = x.clone().requires_grad_(True)
        e = enc(xg)
        gx, gt = torch.autograd.grad((e * h).sum(), (xg, enc.table))
        field.zero_grad(set_to_none=True)
        n = field.raw_gradient(x)
        n.sum().backward()
        return [e, gx, gt, enc.grad_x(x, h), n, field.encoding.table.grad, field.mlp[0].weight.grad]

    whole = everything()
    monkeypatch.setattr(encoding, "_CHUNK", 7)
    for a, b in zip(whole, everything()):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12)


def test_no_points():
    field = small_field()
    x = torch.zeros(0, 3, dtype=torch.float64)
    sigma, albedo = field(x)
    n = field.normals(x)
    (sigma.sum() + albedo.sum() + n.sum()).backward()
    assert sigma.shape == (0,) and n.shape == (0, 3) and not field.encoding.table.grad.any()
    assert field.encoding.grad_x(x, torch.zeros(0, field.encoding.out_dim, dtype=torch.float64)).shape == (0, 3)


def test_recipe_sized_encoding_matches_the_reference():
    """sd21.yaml's 16 levels x 2 features, 2^19 rows: coarse levels dense, fine ones hashed."""
    enc = HashEncoding(
        bound=1.0, levels=16, features_per_level=2, log2_table_size=19, base_resolution=16, max_resolution=2048
    )
    assert enc.hashed.any() and not enc.hashed.all()
    with torch.no_grad():
        enc.table.normal_(generator=torch.Generator().manual_seed(0))
    x = torch.cat([interior_points(3000, torch.float32), edge_points(torch.float32)])
    assert torch.allclose(enc(x), hash_encode_reference(enc, x), rtol=1e-5, atol=1e-5)


def test_gradcheck_and_gradgradcheck():
    enc = tiny_encoding()
    table = enc.table.detach().clone().requires_grad_(True)

    def with_table(p, t):
        return HashEncoding.forward(_swap_table(enc, t), p)

    # linear in the table: exact at every point, faces and box edge included
    x_all = torch.cat([edge_points(), interior_points(12)])
    assert torch.autograd.gradcheck(lambda t: with_table(x_all, t), (table,))
    # in x the lookup is only piecewise smooth: random points lie inside cells
    x = interior_points(12).requires_grad_(True)
    assert torch.autograd.gradcheck(with_table, (x, table))
    assert torch.autograd.gradgradcheck(with_table, (x, table))  # the "autograd" normals' double backward


def _swap_table(enc: HashEncoding, table: torch.Tensor) -> HashEncoding:
    """enc reading `table` instead of its parameter (for gradcheck over the table)."""
    clone = HashEncoding.__new__(HashEncoding)
    clone.__dict__.update(enc.__dict__)
    clone._parameters = {"table": table}
    return clone


def test_grad_x_is_the_jacobian_transpose_of_the_reference():
    enc = tiny_encoding()
    x = torch.cat([edge_points(), interior_points(50)])
    h = torch.randn(x.shape[0], enc.out_dim, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    xg = x.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((hash_encode_reference(enc, xg) * h).sum(), xg)
    assert torch.allclose(enc.grad_x(x, h), want, rtol=1e-12, atol=1e-12)
    # its backward (to the table and to h), faces included: it is linear in both
    table = enc.table.detach().clone().requires_grad_(True)
    hg = h[:12].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t, v: _swap_table(enc, t).grad_x(x[:12], v), (table, hg))
    with pytest.raises(ValueError, match="must not require grad"):
        enc.grad_x(xg, h)


def small_field(log2_table_size: int = 10, hidden_dim: int = 16) -> HashGridField:
    cfg = FieldConfig(
        kind="hashgrid", hash_levels=4, hash_log2_table_size=log2_table_size, hash_base_resolution=4,
        hash_max_resolution=32, hidden_dim=hidden_dim, num_layers=2, normals="autograd",
    )
    with torch.random.fork_rng():  # the MLP's init draws from the global generator: fix it, leave it as it was
        torch.manual_seed(12)
        field = make_field(cfg).double()
    assert isinstance(field, HashGridField)
    with torch.no_grad():  # a field with structure, not the near-zero init
        field.encoding.table.normal_(generator=torch.Generator().manual_seed(4))
    return field


def test_exact_normals_match_double_backward_through_the_reference():
    field = small_field()
    x = interior_points(80, seed=5) * 0.9
    light = torch.randn(80, 3, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def loss_and_grads(raw_gradient):
        field.zero_grad(set_to_none=True)
        g = raw_gradient(x)
        (g * light).sum().backward()
        return g.detach(), {n: p.grad for n, p in field.named_parameters()}

    g_new, p_new = loss_and_grads(field.raw_gradient)
    field.encoding.forward = lambda p: hash_encode_reference(field.encoding, p)  # the old path: autograd twice
    g_ref, p_ref = loss_and_grads(lambda p: DensityField.raw_gradient(field, p))
    assert torch.allclose(g_new, g_ref, rtol=1e-10, atol=1e-12) and g_ref.abs().max() > 0.1
    for name, ref in p_ref.items():
        new = p_new[name]
        if ref is None or not ref.any():  # the biases: d raw / d x does not depend on them
            assert new is None or not new.any(), name
        else:
            assert torch.allclose(new, ref, rtol=1e-10, atol=1e-12), name


def test_exact_normals_match_finite_differences():
    field = small_field().requires_grad_(False)
    x = interior_points(40, seed=7) * 0.9
    eps = 1e-6
    steps = eps * torch.eye(3, dtype=x.dtype)
    fd = torch.stack([(field._raw_density(x + e) - field._raw_density(x - e)) / (2 * eps) for e in steps], dim=-1)
    assert torch.allclose(field.raw_gradient(x), fd, rtol=1e-6, atol=1e-6)


def test_exact_normals_parameter_gradcheck():
    field = small_field(log2_table_size=6, hidden_dim=8)  # a few hundred parameters: gradcheck perturbs each
    x = interior_points(10, seed=8) * 0.9
    names = ["encoding.table", "mlp.0.weight", "mlp.2.weight", "mlp.4.weight"]

    def raw_gradient_with(*params):
        return torch.func.functional_call(field, dict(zip(names, params)), (x,), strict=False, tie_weights=False)

    field.forward = field.raw_gradient  # functional_call calls the module: make that d raw / d x
    params = [field.get_parameter(n).detach().clone().requires_grad_(True) for n in names]
    assert torch.autograd.gradcheck(raw_gradient_with, params)


def test_checkpointed_finite_differences_match_the_generic_stencil(monkeypatch):
    """HashGridField.raw_gradient_fd recomputes the stencil in its backward; values and parameter
    gradients are DensityField.raw_gradient_fd's (chunks of 10 stencil points, the last one short)."""
    field = small_field()
    monkeypatch.setattr(HashGridField, "FD_CHUNK", 10)
    x = interior_points(31, seed=10) * 0.9
    light = torch.randn(31, 3, generator=torch.Generator().manual_seed(11), dtype=torch.float64)

    def run(raw_gradient_fd):
        field.zero_grad(set_to_none=True)
        g = raw_gradient_fd(x)
        (g * light).sum().backward()
        return [g.detach()] + [p.grad for p in field.parameters()]

    lean = run(field.raw_gradient_fd)
    generic = run(lambda p: DensityField.raw_gradient_fd(field, p))
    assert lean[0].abs().max() > 0.1
    for a, b in zip(lean, generic):
        assert (a is None) == (b is None)
        assert a is None or torch.allclose(a, b, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        assert torch.allclose(field.raw_gradient_fd(x), lean[0], rtol=1e-12, atol=1e-12)
