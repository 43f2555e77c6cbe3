"""Hostile-user regressions for z_loss, softcap and sample_weight (docs/guide/options.rst).

Each test pins a defect a user hit on a path the documentation promises: a NaN gradient where
the guide says 0, a ``RuntimeError`` from ``F.cross_entropy`` where the README says "any
integer target dtype", a float32 gradient 1e-4 off on the small (composite) path where the fused
path is exact, and argument errors that did not name the argument. References are the guide's
definition in float64 torch ops.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

import crossentropy.torch as cet  # noqa: E402

F64 = torch.float64
#: "auto" on a problem this small is the composite path (plain torch ops); "torch" the fused
#: kernels. Both must agree with the definition.
IMPLS = ["auto", "torch"]


def reference(x, y, w=None, reduction="mean", eps=0.0, z=0.0, cap=None, sw=None, ignore=-100):
    """The definition of docs/guide/options.rst in float64 torch ops (index targets)."""
    x = x.to(F64)
    xs = x if cap is None else cap * torch.tanh(x / cap)
    xl = xs.movedim(1, -1) if x.dim() >= 2 else xs
    num_classes = xl.shape[-1]
    w = torch.ones(num_classes, dtype=F64) if w is None else w.to(F64)
    lse = torch.logsumexp(xl, dim=-1)
    keep = y != ignore
    safe = torch.where(keep, y, 0).long()
    wy = torch.where(keep, w[safe], 0.0)
    xy = xl.gather(-1, safe.unsqueeze(-1)).squeeze(-1)
    smooth = (w * (lse.unsqueeze(-1) - xl)).sum(-1)
    per = (1 - eps) * wy * (lse - xy) + eps / num_classes * smooth + z * wy * lse**2
    if sw is not None:
        per = sw.to(F64) * per
    per = torch.where(keep, per, 0.0)
    if reduction == "none":
        return per
    return per.sum() / wy.sum() if reduction == "mean" else per.sum()


# --------------------------------------------------------------------------- all ignored


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("shape", [(6,), (3, 6), (2, 6, 2)])
@pytest.mark.parametrize(
    "options",
    [{"z_loss": 0.3}, {"z_loss": 0.3, "softcap": 2.0}, {"z_loss": 0.3, "label_smoothing": 0.1}],
)
def test_all_ignored_mean_has_zero_gradient_with_z_loss(impl, shape, options):
    # The guide: all ignored -> "mean" is NaN (0/0) and the gradient is 0, as in PyTorch. The
    # composite path gave a NaN gradient: 1/0 from the denominator met the z-loss's w_y = 0.
    x = torch.randn(shape, requires_grad=True)
    rows = (shape[0], *shape[2:]) if len(shape) >= 2 else ()
    y = torch.full(rows, -100)
    loss = cet.cross_entropy(x, y, impl=impl, **options)
    (g,) = torch.autograd.grad(loss, x)
    assert torch.isnan(loss)
    assert torch.equal(g, torch.zeros_like(x))


@pytest.mark.parametrize("impl", IMPLS)
def test_all_ignored_mean_has_zero_gradient_linear_and_func(impl):
    h = torch.randn(3, 4, requires_grad=True)
    weight = torch.randn(6, 4, requires_grad=True)
    y = torch.full((3,), -100)
    loss = cet.linear_cross_entropy(h, weight, y, impl=impl, z_loss=0.2, softcap=2.0)
    gh, gw = torch.autograd.grad(loss, (h, weight))
    assert torch.isnan(loss)
    assert torch.equal(gh, torch.zeros_like(h)) and torch.equal(gw, torch.zeros_like(weight))
    # torch.func goes to the composite path whatever the size
    x = torch.randn(3, 6)
    g = torch.func.grad(lambda v: cet.cross_entropy(v, y, impl=impl, z_loss=0.2))(x)
    assert torch.equal(g, torch.zeros_like(x))


def test_all_ignored_hessian_is_zero_with_z_loss():
    x = torch.randn(3, 5, dtype=F64, requires_grad=True)
    y = torch.full((3,), -100)
    loss = cet.cross_entropy(x, y, impl="torch", z_loss=0.2, softcap=2.0)
    (g,) = torch.autograd.grad(loss, x, create_graph=True)
    (hv,) = torch.autograd.grad((g * torch.randn_like(x)).sum(), x, allow_unused=True)
    assert torch.equal(g, torch.zeros_like(x))
    assert hv is None or torch.equal(hv, torch.zeros_like(x))


# --------------------------------------------------------------------------- target dtypes


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8])
@pytest.mark.parametrize(
    "options", [{}, {"z_loss": 0.1}, {"softcap": 2.0}, {"sample_weight": "ones"}]
)
def test_any_integer_target_dtype_on_the_small_path(dtype, options):
    # README: "any integer target dtype". The small (direct / composite) path handed int32,
    # int16 and int8 targets to F.cross_entropy, which raises "expected target dtype to be
    # Long or Byte".
    x = torch.randn(4, 5)
    y = torch.tensor([0, 1, 4, 3])
    kw = dict(options)
    if kw.get("sample_weight") == "ones":
        kw["sample_weight"] = torch.full((4,), 2.0)
    want = cet.cross_entropy(x, y, **kw)
    torch.testing.assert_close(cet.cross_entropy(x, y.to(dtype), **kw), want)
    torch.testing.assert_close(cet.CrossEntropyLoss()(x, y.to(dtype)), cet.CrossEntropyLoss()(x, y))
    h, weight = torch.randn(4, 3), torch.randn(5, 3)
    torch.testing.assert_close(
        cet.linear_cross_entropy(h, weight, y.to(dtype), **kw),
        cet.linear_cross_entropy(h, weight, y, **kw),
    )
    g = torch.func.grad(lambda v: cet.cross_entropy(v, y.to(dtype), **kw))(x)
    torch.testing.assert_close(g, torch.func.grad(lambda v: cet.cross_entropy(v, y, **kw))(x))


def test_out_of_range_int32_target_still_raises_our_error():
    with pytest.raises(ValueError, match=r"cross_entropy: target must contain class indices"):
        cet.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 2, 7], dtype=torch.int32))


# --------------------------------------------------------------------------- large logits


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("prob", [False, True])
def test_z_loss_gradient_keeps_float32_accuracy_at_1e4(impl, prob):
    # The fused kernels refer p to the exact row max; the composite path used
    # torch.logsumexp, whose gradient exp(x - lse) with lse rounded to ulp(1e4) was 1.6e-4
    # off (relative) in float32.
    x = torch.tensor([[1e4, -1e4, 0.0], [1e4, 1e4 - 1, -1e4], [3e3, 3e3 + 0.5, 2.9e3]])
    if prob:
        y = torch.softmax(torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 0.0], [0.5, 0.5, 3.0]]), 1)
    else:
        y = torch.tensor([0, 1, 2])
    xv = x.clone().requires_grad_()
    loss = cet.cross_entropy(xv, y, impl=impl, z_loss=0.1)
    (g,) = torch.autograd.grad(loss, xv)
    xr = x.to(F64).requires_grad_()
    cls = 1
    if prob:
        lse = torch.logsumexp(xr, cls)
        ref = (-(y.to(F64) * torch.log_softmax(xr, cls)).sum(1) + 0.1 * lse**2).mean()
    else:
        ref = reference(xr, y, z=0.1)
    (gr,) = torch.autograd.grad(ref, xr)
    err = ((g.to(F64) - gr).abs().max() / gr.abs().max()).item()
    assert err < 1e-6
    torch.testing.assert_close(loss.to(F64), ref.detach(), rtol=1e-6, atol=0)


def test_composite_z_loss_keeps_infinite_logits_and_empty_rows():
    # The max-shifted log-sum-exp must not turn +inf into NaN nor fail on no classes.
    x = torch.tensor([[0.0, float("inf")], [1.0, 2.0]], requires_grad=True)
    loss = cet.cross_entropy(x, torch.tensor([1, 0]), z_loss=0.1, reduction="none")
    ref = F.cross_entropy(x.detach(), torch.tensor([1, 0]), reduction="none")
    assert torch.isnan(loss[0]) == torch.isnan(ref[0])
    assert torch.isfinite(loss[1])
    empty = cet.cross_entropy(torch.randn(0, 4), torch.zeros(0, dtype=torch.long), z_loss=0.1)
    assert torch.isnan(empty)


# --------------------------------------------------------------------------- argument errors


@pytest.mark.parametrize(
    ("call", "arg"),
    [
        (lambda x, y: cet.cross_entropy(x, y, z_loss=10**400), "z_loss"),
        (lambda x, y: cet.cross_entropy(x, y, softcap=10**400), "softcap"),
        (lambda x, y: cet.token_stats(x, y, softcap=10**400), "softcap"),
        (lambda x, y: cet.CrossEntropyLoss(z_loss=10**400), "z_loss"),
    ],
)
def test_huge_integer_options_raise_naming_the_argument(call, arg):
    # was a bare OverflowError ("int too large to convert to float"); the NumPy core says inf
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(ValueError, match=rf"{arg} must be (None or )?a finite float"):
        call(x, y)


@pytest.mark.parametrize("arg", ["z_loss", "softcap"])
def test_meta_scalar_options_raise_naming_the_argument(arg):
    # was "RuntimeError: Tensor.item() cannot be called on meta tensors"
    x, y = torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    with pytest.raises(TypeError, match=rf"cross_entropy: {arg} must be a number"):
        cet.cross_entropy(x, y, **{arg: torch.tensor(1.0, device="meta")})
    # a readable 0-d tensor is still accepted, like label_smoothing
    torch.testing.assert_close(
        cet.cross_entropy(x, y, **{arg: torch.tensor(0.5)}), cet.cross_entropy(x, y, **{arg: 0.5})
    )


# --------------------------------------------------------------------------- invariances


@pytest.mark.parametrize("impl", IMPLS)
def test_small_and_fused_paths_agree_with_the_definition(impl):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 7, 3, dtype=F64, generator=g) * 4
    y = torch.randint(0, 7, (5, 3), generator=g).to(torch.int32)
    y[1, 2] = -100
    w = torch.rand(7, dtype=F64, generator=g) + 0.5
    sw = torch.randn(5, 3, dtype=F64, generator=g)
    opts = {"z_loss": 0.2, "softcap": 3.0, "label_smoothing": 0.1}
    for red in ("mean", "sum", "none"):
        xv = x.clone().requires_grad_()
        loss = cet.cross_entropy(xv, y, w, reduction=red, impl=impl, sample_weight=sw, **opts)
        up = torch.randn(loss.shape, dtype=F64, generator=g)
        (gx,) = torch.autograd.grad(loss, xv, up)
        xr = x.clone().requires_grad_()
        ref = reference(xr, y, w, red, 0.1, 0.2, 3.0, sw)
        (gr,) = torch.autograd.grad(ref, xr, up)
        torch.testing.assert_close(loss, ref, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(gx, gr, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- inplace_backward


@pytest.mark.parametrize("impl", ["auto", "torch"])
def test_inplace_backward_with_sample_weight_read_from_the_logits_buffer(impl):
    # inplace_backward=True overwrites the logits with their gradient during the forward; the
    # loss was summed afterwards with the sample weights, so weights that were a view of the
    # same buffer gave a silently wrong loss (-0.0125 instead of 0.0638 here).
    g = torch.Generator().manual_seed(0)
    leaf = torch.randn(6, 5, generator=g, requires_grad=True)
    y = torch.randint(0, 5, (6,), generator=g)
    logits = leaf * 1.0
    sw = logits.detach()[:, 0]
    sw_copy = sw.clone()
    plain = logits.detach().clone().requires_grad_()
    want = cet.cross_entropy(plain, y, sample_weight=sw_copy, z_loss=0.1, impl="torch")
    (want_g,) = torch.autograd.grad(want, plain)
    loss = cet.cross_entropy(
        logits, y, sample_weight=sw, z_loss=0.1, impl=impl, inplace_backward=True
    )
    loss.backward()
    torch.testing.assert_close(loss, want)
    torch.testing.assert_close(leaf.grad, want_g)


def test_linear_sample_weight_device_error_names_hidden():
    # linear_cross_entropy has no "input": the message pointed at an argument that is not there
    with pytest.raises(ValueError, match=r"sample_weight must be on hidden's device cpu"):
        cet.linear_cross_entropy(
            torch.randn(4, 3),
            torch.randn(5, 3),
            torch.tensor([0, 1, 2, 3]),
            sample_weight=torch.ones(4, device="meta"),
        )
