"""crossentropy.torch.linear_cross_entropy against F.linear + F.cross_entropy."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from conftest import tol  # noqa: E402
from crossentropy.torch import linear_cross_entropy  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

N, D, V = 11, 6, 9


def _gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def _inputs(g, dtype, lead=(N,), bias=True, ignore=True):
    h = torch.randn(*lead, D, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(V, D, generator=g, dtype=torch.float64) / 2).to(dtype)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype) if bias else None
    t = torch.randint(0, V, lead, generator=g)
    if ignore:
        t.view(-1)[::4] = -100
    return h, w, b, t


def _both(h, w, b, t, upstream, *, class_weight=None, chunk_size=None, **kw):
    """((loss, dh, dw, db) ours, (... naive)) for the same inputs and upstream gradient."""
    results = []
    for impl in ("ours", "naive"):
        hh, ww = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
        bb = None if b is None else b.detach().clone().requires_grad_()
        if impl == "ours":
            loss = linear_cross_entropy(
                hh, ww, t, bb, class_weight=class_weight, chunk_size=chunk_size, **kw
            )
        else:
            logits = F.linear(hh, ww, bb)
            loss = F.cross_entropy(
                logits.reshape(-1, w.shape[0]), t.reshape(-1), weight=class_weight, **kw
            )
            if kw.get("reduction") == "none":
                loss = loss.reshape(t.shape)
        loss.backward(upstream)
        results.append((loss.detach(), hh.grad, ww.grad, None if bb is None else bb.grad))
    return results


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("reduction", "weighted", "eps", "bias", "chunk"),
    list(
        itertools.product(
            ["mean", "sum", "none"], [False, True], [0.0, 0.2], [False, True], [None, 4]
        )
    ),
)
def test_parity_with_naive(rng, dtype, reduction, weighted, eps, bias, chunk):
    """chunk 4 does not divide N = 11: a ragged last chunk."""
    g = _gen(rng)
    h, w, b, t = _inputs(g, dtype, bias=bias)
    cw = (torch.rand(V, generator=g, dtype=torch.float64) + 0.5).to(dtype) if weighted else None
    up = torch.randn(N if reduction == "none" else (), generator=g, dtype=torch.float64).to(dtype)
    ours, ref = _both(
        h, w, b, t, up, class_weight=cw, chunk_size=chunk, reduction=reduction, label_smoothing=eps
    )
    for a, r in zip(ours, ref, strict=True):
        if r is None:
            assert a is None
            continue
        assert a.dtype == r.dtype == dtype and a.shape == r.shape
        torch.testing.assert_close(a, r, **tol(dtype))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_leading_dimensions(rng, reduction):
    g = _gen(rng)
    h, w, b, t = _inputs(g, torch.float64, lead=(3, 4))
    up = torch.randn(t.shape if reduction == "none" else (), generator=g, dtype=torch.float64)
    ours, ref = _both(h, w, b, t, up, reduction=reduction, chunk_size=5)
    for a, r in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, r)


def test_only_some_gradients_requested(rng):
    g = _gen(rng)
    h, w, b, t = _inputs(g, torch.float64)
    ww = w.clone().requires_grad_()
    linear_cross_entropy(h, ww, t, b, chunk_size=3).backward()
    ref = w.clone().requires_grad_()
    F.cross_entropy(F.linear(h, ref, b), t).backward()
    torch.testing.assert_close(ww.grad, ref.grad)
    # No gradient at all: the statistics-only path gives the same value.
    with torch.no_grad():
        torch.testing.assert_close(
            linear_cross_entropy(h, w, t, b), F.cross_entropy(F.linear(h, w, b), t)
        )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_low_precision_at_least_as_accurate_as_naive(rng, dtype, reduction):
    """|ours − exact| ≤ |naive at the same dtype − exact| + tol (exact: float64 on the same
    rounded inputs); tol is one unit of the dtype's precision of each value."""
    g = _gen(rng)
    h = torch.randn(40, 32, generator=g).to(dtype)
    w = (torch.randn(300, 32, generator=g) / 4).to(dtype)
    t = torch.randint(0, 300, (40,), generator=g)
    up = torch.randn(40 if reduction == "none" else (), generator=g).to(dtype)
    ours, naive = _both(h, w, None, t, up, reduction=reduction, label_smoothing=0.1, chunk_size=16)
    exact, _ = _both(
        h.double(), w.double(), None, t, up.double(), reduction=reduction, label_smoothing=0.1
    )
    ulp = torch.finfo(dtype).eps
    for a, n, e in zip(ours[:3], naive[:3], exact[:3], strict=True):
        assert a.dtype == dtype
        # Matmul outputs round differently element by element: compare whole tensors.
        err, err_naive = (a.double() - e).norm(), (n.double() - e).norm()
        assert err <= err_naive + ulp * e.norm() / 8


def test_all_targets_ignored_and_confident_rows():
    h = torch.eye(4, 3, dtype=torch.float32) * 30
    w = torch.eye(5, 3, dtype=torch.float32)
    t_ign = torch.full((4,), -100)
    ours, ref = _both(h, w, None, t_ign, None)
    assert torch.isnan(ours[0]) and torch.isnan(ref[0])
    assert (ours[1] == 0).all() and (ours[2] == 0).all()
    t = torch.tensor([0, 1, 2, 0])
    ours, ref = _both(h, w, None, t, None, reduction="sum")
    for a, r in zip(ours[:3], ref[:3], strict=True):
        torch.testing.assert_close(a, r, **tol(torch.float32))


def test_gradcheck(rng):
    g = _gen(rng)
    h, w, b, t = _inputs(g, torch.float64, lead=(5,))
    cw = torch.rand(V, generator=g, dtype=torch.float64) + 0.5
    for reduction in ("mean", "sum", "none"):
        args = [x.clone().requires_grad_() for x in (h, w, b)]
        assert torch.autograd.gradcheck(
            lambda hh, ww, bb, r=reduction: linear_cross_entropy(
                hh, ww, t, bb, reduction=r, label_smoothing=0.2, class_weight=cw, chunk_size=2
            ),
            args,
        )


ERRORS = [
    (
        dict(hidden=torch.ones(2, 3, dtype=torch.long)),
        TypeError,
        "linear_cross_entropy: hidden must have a floating-point dtype, got dtype torch.int64",
    ),
    (
        dict(weight=torch.ones(4, 3, dtype=torch.float64)),
        TypeError,
        "linear_cross_entropy: weight must have the dtype of hidden (torch.float32), "
        "got dtype torch.float64",
    ),
    (
        dict(weight=torch.ones(4, 2)),
        ValueError,
        "linear_cross_entropy: weight must have shape (C, 3), got shape (4, 2)",
    ),
    (
        dict(bias=torch.ones(5)),
        ValueError,
        "linear_cross_entropy: bias must have shape (4,), got shape (5,)",
    ),
    (
        dict(target=torch.tensor([0.0, 1.0])),
        TypeError,
        "linear_cross_entropy: target must have an integer dtype (class indices), "
        "got dtype torch.float32",
    ),
    (
        dict(target=torch.tensor([0, 4])),
        ValueError,
        "linear_cross_entropy: target must contain class indices in [0, 4) or ignore_index=-100, "
        "got values in [0, 4]",
    ),
    (
        dict(target=torch.tensor([0])),
        ValueError,
        "linear_cross_entropy: target must have shape (2,) (hidden's without features), "
        "got shape (1,)",
    ),
    (
        dict(chunk_size=0),
        ValueError,
        "linear_cross_entropy: chunk_size must be a positive integer or None, got 0",
    ),
    (
        dict(reduction="max"),
        ValueError,
        "linear_cross_entropy: reduction must be one of 'none', 'mean', 'sum', got 'max'",
    ),
]


@pytest.mark.parametrize(("override", "kind", "message"), ERRORS)
def test_bad_input_messages(override, kind, message):
    args = dict(hidden=torch.zeros(2, 3), weight=torch.zeros(4, 3), target=torch.tensor([0, 3]))
    args.update(override)
    with pytest.raises(kind) as info:
        linear_cross_entropy(**args)
    assert str(info.value) == message
