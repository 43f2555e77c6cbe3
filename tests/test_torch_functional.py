"""crossentropy.torch.cross_entropy against torch.nn.functional.cross_entropy (the reference)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import crossentropy  # noqa: E402
from conftest import tol  # noqa: E402
from crossentropy.torch import cross_entropy  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

C = 7
SHAPES = [(C,), (5, C), (3, C, 4), (2, C, 3, 2)]
REDUCTIONS = ["mean", "sum", "none"]


def _gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def _make(shape, kind, ignore, g, dtype=torch.float64):
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 3
    if kind == "index":
        rows = shape[:1] + shape[2:] if len(shape) > 1 else ()
        t = torch.randint(0, C, rows, generator=g)
        if ignore and t.dim() > 0:
            t.view(-1)[::3] = 2 if ignore == "in_range" else -100
    else:
        t = torch.softmax(
            torch.randn(shape, generator=g, dtype=torch.float64), dim=min(1, len(shape) - 1)
        )
    return x.to(dtype), (t if kind == "index" else t.to(dtype))


def _ignore_index(ignore):
    return 2 if ignore == "in_range" else -100


def _both(x, t, upstream, **kw):
    """(loss, grad) of ours and torch's for the same inputs and upstream gradient."""
    out = []
    for fn in (cross_entropy, F.cross_entropy):
        xx = x.detach().clone().requires_grad_()
        loss = fn(xx, t, **kw)
        loss.backward(upstream if upstream is not None else None)
        out.append((loss.detach(), xx.grad))
    return out


GRID = [
    case
    for case in itertools.product(
        SHAPES,
        REDUCTIONS,
        [False, True],
        [None, "present", "in_range"],
        [0.0, 0.3],
        ["index", "prob"],
    )
    if case[-1] == "index" or case[3] is None  # ignore_index does not apply to probabilities
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("shape", "reduction", "weighted", "ignore", "eps", "kind"), GRID)
def test_parity_with_torch(rng, dtype, shape, reduction, weighted, ignore, eps, kind):
    g = _gen(rng)
    x, t = _make(shape, kind, ignore, g, dtype)
    w = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    kw = dict(
        weight=w, ignore_index=_ignore_index(ignore), reduction=reduction, label_smoothing=eps
    )
    with torch.no_grad():
        ref_shape = F.cross_entropy(x, t, **kw).shape
    up = torch.randn(ref_shape, generator=g, dtype=torch.float64).to(dtype)
    (lo, go), (lr, gr) = _both(x, t, up, **kw)
    assert lo.dtype == lr.dtype == dtype and lo.shape == lr.shape
    assert go.dtype == dtype and go.shape == x.shape
    torch.testing.assert_close(lo, lr, **tol(dtype), equal_nan=True)
    torch.testing.assert_close(go, gr, **tol(dtype))
    # The no-grad (statistics-only) path gives the same value as the fused one.
    with torch.no_grad():
        torch.testing.assert_close(cross_entropy(x, t, **kw), lo, **tol(dtype), equal_nan=True)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_unit_upstream_takes_the_no_rescale_path(rng, reduction):
    g = _gen(rng)
    x, t = _make((6, C), "index", "present", g, torch.float32)
    (_, go), (_, gr) = _both(
        x,
        t,
        torch.ones(()) if reduction != "none" else torch.ones(6),
        reduction=reduction,
        label_smoothing=0.1,
    )
    torch.testing.assert_close(go, gr, **tol(torch.float32))


def test_large_block_count_matches(rng):
    """Many rows: the row-block loop (several blocks, a ragged last one) agrees with torch."""
    g = _gen(rng)
    x = torch.randn(3000, 1000, generator=g)
    t = torch.randint(0, 1000, (3000,), generator=g)
    (lo, go), (lr, gr) = _both(x, t, None, label_smoothing=0.1)
    torch.testing.assert_close(lo, lr, **tol(torch.float32))
    torch.testing.assert_close(go, gr, **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_low_precision_at_least_as_accurate_as_torch(rng, dtype, reduction, eps):
    """|ours − exact| ≤ |torch at the same dtype − exact| + tol, exact = float64 on the same
    (rounded) inputs, for the loss and the gradient."""
    g = _gen(rng)
    x = (torch.randn(64, 500, generator=g) * 4).to(dtype)
    t = torch.randint(0, 500, (64,), generator=g)
    t[::7] = -100
    w = (torch.rand(500, generator=g) + 0.5).to(dtype)
    kw = dict(weight=w, reduction=reduction, label_smoothing=eps)
    up = (
        torch.randn(64, generator=g).to(dtype)
        if reduction == "none"
        else torch.tensor(0.7).to(dtype)
    )
    (lo, go), (lr, gr) = _both(x, t, up, **kw)
    (le, ge), _ = _both(
        x.double(), t, up.double(), weight=w.double(), reduction=reduction, label_smoothing=eps
    )
    assert lo.dtype == go.dtype == dtype
    # tol: one unit of the dtype's precision. Our scalar-reduction gradient is rounded once in
    # the forward and once more when backward rescales it by an upstream other than 1.
    ulp = torch.finfo(dtype).eps
    assert ((lo.double() - le).abs() <= (lr.double() - le).abs() + ulp * le.abs()).all()
    assert ((go.double() - ge).abs() <= (gr.double() - ge).abs() + ulp * ge.abs() + 1e-7).all()


def test_bfloat16_loss_accumulates_in_float32(rng):
    """Torch's bf16 loss is off by ~1e-2 relative on a large vocabulary; ours only by the final
    rounding to bf16 (half an ulp, 2**-9 relative)."""
    g = _gen(rng)
    x = torch.randn(256, 8192, generator=g).to(torch.bfloat16)
    t = torch.randint(0, 8192, (256,), generator=g)
    exact = F.cross_entropy(x.double(), t)
    ours = cross_entropy(x, t)
    assert abs(float(ours) - float(exact)) <= 2**-9 * abs(float(exact))
    assert abs(float(ours) - float(exact)) <= abs(float(F.cross_entropy(x, t)) - float(exact))


# --------------------------------------------------------------------------- adversarial


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_huge_logits(rng, dtype):
    g = _gen(rng)
    x = (torch.randint(-1, 2, (8, 50), generator=g) * 1e4).to(dtype) + torch.randn(
        8, 50, generator=g
    ).to(dtype)
    t = torch.randint(0, 50, (8,), generator=g)
    (lo, go), (lr, gr) = _both(x, t, None, label_smoothing=0.1)
    assert torch.isfinite(lo) and torch.isfinite(go).all()
    torch.testing.assert_close(lo, lr, **tol(dtype))
    torch.testing.assert_close(go, gr, **tol(dtype))


def test_confident_rows_true_class_gradient_does_not_cancel():
    """p_y → 1 in float32: torch's p_y − 1 rounds to 0; ours keeps −Σ_{c≠y} p_c."""
    x = torch.zeros(3, 100)
    x[:, 0] = torch.tensor([18.0, 25.0, 30.0])
    t = torch.zeros(3, dtype=torch.long)
    xx = x.clone().requires_grad_()
    loss = cross_entropy(xx, t, reduction="sum")
    loss.backward()
    exact_q = 99 * torch.exp(-x[:, 0].double()) / (1 + 99 * torch.exp(-x[:, 0].double()))
    torch.testing.assert_close(xx.grad[:, 0].double(), -exact_q, rtol=1e-5, atol=0)
    exact_loss = torch.log1p(99 * torch.exp(-x[:, 0].double())).sum()
    torch.testing.assert_close(loss.double(), exact_loss, rtol=1e-5, atol=0)
    # Gradient rows sum to zero (the true-class entry balances the others).
    assert xx.grad.double().sum(dim=1).abs().max() < 1e-12


@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_masked_vocabulary_minus_inf(rng, eps):
    g = _gen(rng)
    x = torch.randn(6, 20, generator=g)
    x[:, 10:] = float("-inf")
    t = torch.randint(0, 10, (6,), generator=g)
    (lo, go), (lr, gr) = _both(x, t, None, label_smoothing=eps)
    torch.testing.assert_close(lo, lr, equal_nan=True)
    torch.testing.assert_close(go, gr, **tol(torch.float32), equal_nan=True)
    if eps == 0:
        assert torch.isfinite(lo) and (go[:, 10:] == 0).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_all_targets_ignored(reduction, eps):
    x = torch.randn(4, 5)
    t = torch.full((4,), -100)
    (lo, go), (lr, gr) = _both(
        x,
        t,
        torch.ones(4) if reduction == "none" else None,
        reduction=reduction,
        label_smoothing=eps,
    )
    torch.testing.assert_close(lo, lr, equal_nan=True)
    torch.testing.assert_close(go, gr, equal_nan=True)
    assert (go == 0).all()
    if reduction == "mean":
        assert torch.isnan(lo)


def test_empty_batch():
    x = torch.zeros(0, 5, requires_grad=True)
    t = torch.zeros(0, dtype=torch.long)
    assert torch.isnan(cross_entropy(x, t)) and torch.isnan(F.cross_entropy(x, t))
    cross_entropy(x, t, reduction="sum").backward()
    assert x.grad.shape == (0, 5)


# --------------------------------------------------------------------------- autograd


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("shape", [(4, C), (2, C, 3)])
def test_gradcheck(rng, reduction, kind, shape):
    g = _gen(rng)
    x, t = _make(shape, kind, "present" if kind == "index" else None, g)
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    x.requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z: cross_entropy(z, t, weight=w, reduction=reduction, label_smoothing=0.2), (x,)
    )


def test_double_backward_matches_torch():
    """create_graph=True differentiates the closed form with torch ops: second derivatives are
    torch's, not zeros (the conformance module covers the whole option grid)."""
    x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2])
    for reduction in ("mean", "none"):
        out = []
        for fn in (cross_entropy, F.cross_entropy):
            loss = fn(x, t, reduction=reduction).sum()
            (gx,) = torch.autograd.grad(loss, x, create_graph=True)
            out.append(torch.autograd.grad(gx.square().sum(), x)[0])
        torch.testing.assert_close(out[0], out[1])
        assert out[0].abs().max() > 0


def test_retained_graph_second_backward_is_correct():
    """The first backward hands out the forward's buffer; the second recomputes it, so both
    give the same (correctly scaled) gradient."""
    x = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(x, torch.tensor([0, 1, 2])) * 3.0
    (g1,) = torch.autograd.grad(loss, x, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, x)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    ref = torch.autograd.grad(F.cross_entropy(x, torch.tensor([0, 1, 2])) * 3.0, x)[0]
    torch.testing.assert_close(g1, ref)


def test_retained_graph_with_unit_upstream_is_exact():
    x = torch.randn(3, 4, requires_grad=True)
    loss = cross_entropy(x, torch.tensor([0, 1, 2]))
    loss.backward(retain_graph=True)
    first = x.grad.clone()
    loss.backward()
    torch.testing.assert_close(x.grad, 2 * first)


def test_not_last_layer(rng):
    """The loss inside a bigger graph: gradients flow to the parameters below it."""
    g = _gen(rng)
    h = torch.randn(8, 6, generator=g)
    lin = torch.nn.Linear(6, 5)
    t = torch.randint(0, 5, (8,), generator=g)
    grads = []
    for fn in (cross_entropy, F.cross_entropy):
        lin.zero_grad()
        (fn(lin(h), t, label_smoothing=0.1) * 2 + lin.weight.square().sum()).backward()
        grads.append(lin.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1])


def test_inputs_are_not_modified(rng):
    g = _gen(rng)
    x = torch.randn(5, 6, generator=g, requires_grad=True)
    t = torch.randint(0, 6, (5,), generator=g)
    w = torch.rand(6, generator=g)
    before = (x.detach().clone(), t.clone(), w.clone())
    cross_entropy(x, t, weight=w, label_smoothing=0.1).backward()
    for a, b in zip(before, (x.detach(), t, w), strict=True):
        assert torch.equal(a, b)


def test_index_targets_equal_one_hot_targets(rng):
    g = _gen(rng)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (6,), generator=g)
    onehot = F.one_hot(t, 5).double()
    for eps in (0.0, 0.25):
        torch.testing.assert_close(
            cross_entropy(x, t, label_smoothing=eps), cross_entropy(x, onehot, label_smoothing=eps)
        )


def test_parity_with_numpy_core(rng):
    core = getattr(crossentropy, "cross_entropy", None)
    if core is None:
        pytest.skip("crossentropy.cross_entropy (NumPy core) not available yet")
    g = _gen(rng)
    x = torch.randn(6, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 5, (6,), generator=g)
    t[0] = -100
    w = torch.rand(5, generator=g, dtype=torch.float64) + 0.5
    for red in REDUCTIONS:
        ours = cross_entropy(x, t, weight=w, reduction=red, label_smoothing=0.1)
        ref = core(x.numpy(), t.numpy(), weight=w.numpy(), reduction=red, label_smoothing=0.1)
        np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-12, atol=1e-12)


def test_import_crossentropy_does_not_import_torch():
    code = "import sys, crossentropy; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# --------------------------------------------------------------------------- errors


ERRORS = [
    (
        dict(input=[[1.0]]),
        TypeError,
        "cross_entropy: input must be a torch.Tensor, got list [[1.0]]",
    ),
    (
        dict(input=torch.ones(2, 3, dtype=torch.long)),
        TypeError,
        "cross_entropy: input must have a floating-point dtype, got dtype torch.int64",
    ),
    (
        dict(input=torch.tensor(1.0)),
        ValueError,
        "cross_entropy: input must have at least 1 dimension (classes), got shape ()",
    ),
    (
        dict(target=torch.tensor([0, 3])),
        ValueError,
        "cross_entropy: target must contain class indices in [0, 3) or ignore_index=-100, "
        "got values in [0, 3]",
    ),
    (
        dict(target=torch.tensor([0, 1, 2])),
        ValueError,
        "cross_entropy: target must have shape (2,) (the input's without the class dimension), "
        "got shape (3,)",
    ),
    (
        dict(target=torch.ones(2, 4)),
        ValueError,
        "cross_entropy: target must have the input's shape (2, 3) (probabilities), "
        "got shape (2, 4)",
    ),
    (
        dict(target=torch.tensor([True, False])),
        TypeError,
        "cross_entropy: target must have an integer (class indices) or floating dtype, "
        "got dtype torch.bool",
    ),
    (
        dict(reduction="avg"),
        ValueError,
        "cross_entropy: reduction must be one of 'none', 'mean', 'sum', got 'avg'",
    ),
    (
        dict(label_smoothing=1.5),
        ValueError,
        "cross_entropy: label_smoothing must be in [0, 1], got 1.5",
    ),
    (
        dict(label_smoothing="0.1"),
        TypeError,
        "cross_entropy: label_smoothing must be a float, got str '0.1'",
    ),
    (
        dict(weight=torch.ones(4)),
        ValueError,
        "cross_entropy: weight must have shape (3,) (one weight per class), got shape (4,)",
    ),
    (
        dict(weight=torch.ones(3, dtype=torch.long)),
        TypeError,
        "cross_entropy: weight must have a floating-point dtype, got dtype torch.int64",
    ),
    (
        dict(ignore_index=1.0),
        TypeError,
        "cross_entropy: ignore_index must be an integer, got float 1.0",
    ),
]


@pytest.mark.parametrize(("override", "kind", "message"), ERRORS)
def test_bad_input_messages(override, kind, message):
    args = dict(input=torch.zeros(2, 3), target=torch.tensor([0, 2]))
    args.update(override)
    with pytest.raises(kind) as info:
        cross_entropy(**args)
    assert str(info.value) == message


# --------------------------------------------------------------------------- inplace_backward


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("shape", [(6, C), (3, C, 4)])
def test_inplace_backward_matches_torch(rng, reduction, shape):
    g = _gen(rng)
    x, t = _make(shape, "index", "present", g, torch.float64)
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    kw = dict(weight=w, reduction=reduction, label_smoothing=0.2)
    leaf = x.clone().requires_grad_()
    logits = leaf * 1.5  # a non-leaf whose producer does not save it
    loss = cross_entropy(logits, t, inplace_backward=True, **kw)
    (loss * 0.7).backward()
    ref = x.clone().requires_grad_()
    ref_loss = F.cross_entropy(ref * 1.5, t, **kw)
    (ref_loss * 0.7).backward()
    torch.testing.assert_close(loss.detach(), ref_loss.detach())
    torch.testing.assert_close(leaf.grad, ref.grad)


def test_inplace_backward_misuse_is_detected():
    t = torch.tensor([0, 1, 2])
    leaf = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(RuntimeError, match="input must not be a leaf that requires grad"):
        cross_entropy(leaf, t, inplace_backward=True)
    z = torch.randn(3, 4, requires_grad=True)
    saved = torch.exp(z)  # exp's backward needs its output: overwriting it must be refused
    loss = cross_entropy(saved, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()
    used = z * 2
    loss = cross_entropy(used, t, inplace_backward=True)
    with pytest.raises(RuntimeError, match="overwritten by its gradient"):
        (loss + used.sum()).backward()


def test_inplace_backward_without_grad_leaves_input_alone():
    x = torch.randn(3, 4)
    before = x.clone()
    cross_entropy(x, torch.tensor([0, 1, 2]), inplace_backward=True)
    assert torch.equal(x, before)


def test_inplace_backward_bad_options():
    x = torch.randn(3, 4, requires_grad=True) * 1
    with pytest.raises(ValueError) as info:
        cross_entropy(x, torch.tensor([0, 1, 2]), reduction="none", inplace_backward=True)
    assert str(info.value) == (
        "cross_entropy: inplace_backward must be False with reduction='none' or probability "
        "targets, got True with reduction='none' and target dtype torch.int64"
    )
    with pytest.raises(TypeError, match="inplace_backward must be a bool"):
        cross_entropy(x, torch.tensor([0, 1, 2]), inplace_backward=1)
