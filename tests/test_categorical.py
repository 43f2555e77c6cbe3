"""cross_entropy, nll_loss and categorical_cross_entropy: torch parity, gradients, edge cases."""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import crossentropy as ce
from conftest import central_difference, optional_import, tol
from crossentropy import categorical

torch = optional_import("torch", "torch")  # the parity tests skip without torch
F = optional_import("torch.nn.functional", "torch")

SHAPES = [(5,), (6, 5), (4, 5, 3), (3, 5, 2, 3)]
REDUCTIONS = ["mean", "sum", "none"]


def _class_axis(shape: tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def _sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    ax = _class_axis(shape)
    return shape[:ax] + shape[ax + 1 :]


def _make_case(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    dtype: Any,
    kind: str,
    ignored: bool,
    weighted: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    n_classes = shape[_class_axis(shape)]
    x = (3 * rng.standard_normal(shape)).astype(dtype)
    w = rng.uniform(0.2, 2.0, n_classes).astype(dtype) if weighted else None
    if kind == "index":
        t = np.asarray(rng.integers(0, n_classes, _sample_shape(shape)))
        if ignored:  # ignore about a third, but keep at least one target
            mask = rng.random(t.shape) < 0.35
            mask.flat[0] = False
            t = np.where(mask, -100, t)
    else:  # unnormalised probabilities: they need not sum to 1
        t = rng.random(shape).astype(dtype)
    return x, t, w


def _torch_value_grad(
    fn: Callable[..., torch.Tensor],
    x: np.ndarray,
    upstream: np.ndarray | float | None = None,
    **kwargs: Any,
) -> tuple[np.ndarray, np.ndarray]:
    xt = torch.tensor(x, requires_grad=True)
    kw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    out = fn(xt, **kw)
    up = torch.ones_like(out) if upstream is None else torch.as_tensor(upstream, dtype=out.dtype)
    out.backward(up.expand_as(out))
    assert xt.grad is not None
    return out.detach().numpy(), xt.grad.numpy()


def _grid() -> list[tuple[Any, ...]]:
    cases = []
    for dtype in (np.float64, np.float32):
        for shape in SHAPES:
            for reduction in REDUCTIONS:
                for weighted in (False, True):
                    for kind, ignored in (("index", False), ("index", True), ("prob", False)):
                        for smoothing in (0.0, 0.1):
                            cases.append(
                                (dtype, shape, reduction, weighted, kind, ignored, smoothing)
                            )
    return cases


@pytest.mark.parametrize(
    ("dtype", "shape", "reduction", "weighted", "kind", "ignored", "smoothing"), _grid()
)
def test_cross_entropy_matches_torch(
    rng: np.random.Generator,
    dtype: Any,
    shape: tuple[int, ...],
    reduction: str,
    weighted: bool,
    kind: str,
    ignored: bool,
    smoothing: float,
) -> None:
    x, t, w = _make_case(rng, shape, dtype, kind, ignored, weighted)
    x_before, t_before = x.copy(), t.copy()
    kwargs: dict[str, Any] = {"weight": w, "reduction": reduction, "label_smoothing": smoothing}
    value, grad = ce.value_and_grad(ce.cross_entropy)(x, t, **kwargs)
    plain = ce.cross_entropy(x, t, **kwargs)

    # A random upstream gradient: the loss is not the last layer.
    sample = _sample_shape(shape)
    upstream = rng.standard_normal(() if reduction != "none" else sample)
    ref, ref_grad = _torch_value_grad(F.cross_entropy, x, upstream, target=t, **kwargs)
    assert value.dtype == grad.dtype == plain.dtype == np.dtype(dtype)
    assert grad.shape == x.shape
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(plain, value)
    if reduction == "none":
        # Our gradient is that of the sum; sample i's loss depends on its own class slice only,
        # so scaling each slice by upstream_i must give torch's vector-Jacobian product.
        expanded = np.expand_dims(upstream, _class_axis(shape))
        np.testing.assert_allclose(grad * expanded, ref_grad, **tol(np.dtype(dtype)))
        _, ones_grad = _torch_value_grad(F.cross_entropy, x, None, target=t, **kwargs)
        np.testing.assert_allclose(grad, ones_grad, **tol(np.dtype(dtype)))
    else:
        np.testing.assert_allclose(grad * upstream, ref_grad, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(t, t_before)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("ignored", [False, True])
def test_nll_loss_matches_torch(
    rng: np.random.Generator,
    dtype: Any,
    shape: tuple[int, ...],
    reduction: str,
    weighted: bool,
    ignored: bool,
) -> None:
    z, t, w = _make_case(rng, shape, dtype, "index", ignored, weighted)
    logp = ce.log_softmax(z, axis=_class_axis(shape))
    value, grad = ce.value_and_grad(ce.nll_loss)(logp, t, weight=w, reduction=reduction)
    ref, ref_grad = _torch_value_grad(F.nll_loss, logp, target=t, weight=w, reduction=reduction)
    assert value.dtype == grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(ce.nll_loss(logp, t, weight=w, reduction=reduction), value)
    # nll_loss(log_softmax(z)) is cross_entropy(z)
    np.testing.assert_allclose(
        value, ce.cross_entropy(z, t, weight=w, reduction=reduction), **tol(np.dtype(dtype))
    )


@pytest.mark.parametrize(
    ("shape", "kind", "ignored", "weighted", "smoothing", "reduction"),
    [
        ((4, 5), "index", True, True, 0.2, "mean"),
        ((4, 5), "index", False, False, 0.0, "none"),
        ((3, 4, 2), "index", True, False, 0.3, "mean"),
        ((5,), "index", False, True, 0.1, "sum"),
        ((4, 5), "prob", False, True, 0.2, "mean"),
        ((2, 3, 2, 2), "prob", False, False, 0.0, "none"),
    ],
)
def test_cross_entropy_gradient_matches_finite_differences(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    kind: str,
    ignored: bool,
    weighted: bool,
    smoothing: float,
    reduction: str,
) -> None:
    x, t, w = _make_case(rng, shape, np.float64, kind, ignored, weighted)
    kwargs: dict[str, Any] = {"weight": w, "reduction": reduction, "label_smoothing": smoothing}
    _, grad = ce.value_and_grad(ce.cross_entropy)(x, t, **kwargs)
    fd = central_difference(lambda z: ce.cross_entropy(z, t, **kwargs), x)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_nll_and_categorical_gradients_match_finite_differences(rng: np.random.Generator) -> None:
    logp = np.log(rng.dirichlet(np.ones(4), size=5))
    t = np.array([0, 3, -100, 1, 2])
    w = rng.uniform(0.5, 2.0, 4)
    _, grad = ce.value_and_grad(ce.nll_loss)(logp, t, weight=w)
    fd = central_difference(lambda z: ce.nll_loss(z, t, weight=w), logp)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)

    a = rng.dirichlet(np.ones(4), size=5)
    y = rng.dirichlet(np.ones(4), size=5)
    for reduction in REDUCTIONS:
        _, grad = ce.value_and_grad(ce.categorical_cross_entropy)(a, y, reduction=reduction)
        fd = central_difference(
            lambda p, r=reduction: ce.categorical_cross_entropy(p, y, r), a, 1e-7
        )
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-7)


# ------------------------------------------------------------------------------------------
# The article's categorical form
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_categorical_cross_entropy_matches_torch_formula(
    rng: np.random.Generator, dtype: Any, reduction: str
) -> None:
    a = rng.dirichlet(np.ones(6), size=7).astype(dtype)
    y = rng.dirichlet(np.ones(6), size=7).astype(dtype)
    y[0] = np.eye(6, dtype=dtype)[2]  # a one-hot row

    def reference(at: torch.Tensor, yt: torch.Tensor, reduction: str) -> torch.Tensor:
        per = -(yt * torch.log(at).clamp(min=-100)).sum(dim=1)
        return {"mean": per.mean(), "sum": per.sum(), "none": per}[reduction]

    upstream = rng.standard_normal(() if reduction != "none" else (7,))
    ref, ref_grad = _torch_value_grad(reference, a, upstream, yt=y, reduction=reduction)
    value, grad = ce.value_and_grad(ce.categorical_cross_entropy)(a, y, reduction=reduction)
    assert value.dtype == grad.dtype == np.dtype(dtype)
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    scale = upstream[:, None] if reduction == "none" else upstream
    np.testing.assert_allclose(grad * scale, ref_grad, **tol(np.dtype(dtype)))


def test_categorical_cross_entropy_clamps_log_at_minus_100() -> None:
    a = np.array([[0.0, 1.0], [1.0, 0.0]])
    y = np.array([[1.0, 0.0], [1.0, 0.0]])
    value, grad = ce.value_and_grad(ce.categorical_cross_entropy)(a, y, reduction="none")
    np.testing.assert_array_equal(value, [100.0, 0.0])
    assert np.all(np.isfinite(grad))
    np.testing.assert_array_equal(grad, [[-1e12, 0.0], [-1.0, 0.0]])


def test_categorical_cross_entropy_is_the_articles_mean_over_samples() -> None:
    a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.25, 0.25, 0.5]])
    y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]])
    expected = -(np.log(0.7) + np.log(0.8) + 0.5 * np.log(0.25) + 0.5 * np.log(0.5)) / 3
    np.testing.assert_allclose(ce.categorical_cross_entropy(a, y), expected, rtol=1e-15)
    # 1-D input is one sample; N-d input has its classes on axis 1
    np.testing.assert_allclose(ce.categorical_cross_entropy(a[0], y[0]), -np.log(0.7))
    a3, y3 = a.T[None], y.T[None]  # (1, C, 3)
    np.testing.assert_allclose(ce.categorical_cross_entropy(a3, y3), expected, rtol=1e-15)


# ------------------------------------------------------------------------------------------
# Numerics and edge cases
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_all_targets_ignored(smoothing: float) -> None:
    x = np.arange(12.0).reshape(3, 4)
    t = np.full(3, -100)
    vg = ce.value_and_grad(ce.cross_entropy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning for the documented 0/0
        value, grad = vg(x, t, label_smoothing=smoothing)
        total, grad_sum = vg(x, t, reduction="sum", label_smoothing=smoothing)
        nll_value, nll_grad = ce.value_and_grad(ce.nll_loss)(x, t)
    ref, ref_grad = _torch_value_grad(F.cross_entropy, x, target=t, label_smoothing=smoothing)
    assert np.isnan(value) and np.isnan(ref) and np.isnan(nll_value)
    np.testing.assert_array_equal(grad, ref_grad)  # torch: zero gradient
    np.testing.assert_array_equal(grad, np.zeros_like(x))
    assert not np.signbit(grad).any()
    assert total == 0.0
    np.testing.assert_array_equal(grad_sum, 0.0)
    np.testing.assert_array_equal(nll_grad, 0.0)


@pytest.mark.parametrize("kind", ["index", "prob"])
def test_empty_batch(kind: str) -> None:
    x = np.zeros((0, 4), dtype=np.float32)
    t = np.zeros(0, dtype=np.int64) if kind == "index" else np.zeros((0, 4), dtype=np.float32)
    vg = ce.value_and_grad(ce.cross_entropy)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value, grad = vg(x, t)
        total, _ = vg(x, t, reduction="sum")
        none, _ = vg(x, t, reduction="none")
    ref = F.cross_entropy(torch.tensor(x), torch.tensor(t))
    assert np.isnan(value) and torch.isnan(ref)
    assert total == 0.0 and total.dtype == np.float32
    assert none.shape == (0,) and grad.shape == (0, 4) and grad.dtype == np.float32


def test_huge_logits_are_finite_in_float32() -> None:
    x = np.array([[1e4, -1e4, 0.0, 3.0], [-1e4, 1e4, 1e4, -1e4], [1e4, 1e4 - 1, 0.0, 0.0]])
    t = np.array([1, 0, 0])
    v64, g64 = ce.value_and_grad(ce.cross_entropy)(x, t, reduction="none")
    v32, g32 = ce.value_and_grad(ce.cross_entropy)(x.astype(np.float32), t, reduction="none")
    assert np.all(np.isfinite(v32)) and np.all(np.isfinite(g32))
    np.testing.assert_allclose(v32, v64, **tol(np.dtype(np.float32)))
    np.testing.assert_allclose(g32, g64, **tol(np.dtype(np.float32)))
    np.testing.assert_allclose(v64, [2e4, 2e4 + np.log(2), np.log1p(np.exp(-1.0))], rtol=1e-12)


def test_negative_infinite_logits_mask_classes(rng: np.random.Generator) -> None:
    x = rng.standard_normal((5, 6))
    masked = x.copy()
    masked[:, 4:] = -np.inf  # a masked vocabulary: classes 4 and 5 unavailable
    t = np.array([0, 1, 2, 3, 0])
    for dtype in (np.float64, np.float32):
        value, grad = ce.value_and_grad(ce.cross_entropy)(masked.astype(dtype), t)
        ref, ref_grad = ce.value_and_grad(ce.cross_entropy)(x[:, :4].astype(dtype), t)
        np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
        np.testing.assert_allclose(grad[:, :4], ref_grad, **tol(np.dtype(dtype)))
        np.testing.assert_array_equal(grad[:, 4:], 0.0)
    # probability targets: a zero target on a masked class contributes 0 (not 0 * inf)
    p = np.zeros((5, 6))
    p[np.arange(5), t] = 1.0
    np.testing.assert_allclose(ce.cross_entropy(masked, p), ce.cross_entropy(x[:, :4], t))


def test_confident_rows_keep_an_accurate_small_gradient() -> None:
    # p_y -> 1: p_y - 1 computed naively is 0 in float32; it must be -sum of the others.
    x = np.array([[30.0, 0.0, 0.0, 0.0], [20.0, 1.0, -5.0, 2.0]])
    t = np.array([0, 0])
    v64, g64 = ce.value_and_grad(ce.cross_entropy)(x, t, reduction="none")
    v32, g32 = ce.value_and_grad(ce.cross_entropy)(x.astype(np.float32), t, reduction="none")
    expected_v = np.log1p(3 * np.exp(-30.0))
    np.testing.assert_allclose(v64[0], expected_v, rtol=1e-14)
    np.testing.assert_allclose(g64[0, 0], -3 * np.exp(-30.0) / (1 + 3 * np.exp(-30.0)), rtol=1e-14)
    assert g32[0, 0] < 0 and v32[0] > 0
    np.testing.assert_allclose(v32, v64, rtol=1e-6)
    np.testing.assert_allclose(g32, g64, rtol=1e-6, atol=0)  # relative, even at 1e-13
    # with label smoothing too
    _, gs64 = ce.value_and_grad(ce.cross_entropy)(x, t, label_smoothing=0.1)
    _, gs32 = ce.value_and_grad(ce.cross_entropy)(x.astype(np.float32), t, label_smoothing=0.1)
    np.testing.assert_allclose(gs32, gs64, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("fn", ["cross_entropy", "nll_loss"])
def test_float16_is_computed_in_float32_and_returned_as_float16(
    rng: np.random.Generator, fn: str
) -> None:
    loss = getattr(ce, fn)
    x16 = rng.standard_normal((8, 5)).astype(np.float16)
    t = rng.integers(0, 5, 8)
    value, grad = ce.value_and_grad(loss)(x16, t)
    v32, g32 = ce.value_and_grad(loss)(x16.astype(np.float32), t)
    assert value.dtype == grad.dtype == np.float16
    assert value == v32.astype(np.float16)
    np.testing.assert_array_equal(grad, g32.astype(np.float16))
    p = rng.random((8, 5)).astype(np.float16)
    value, grad = ce.value_and_grad(ce.cross_entropy)(x16, p)
    assert value.dtype == grad.dtype == np.float16


@pytest.mark.parametrize("kind", ["index", "prob"])
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_blocks_give_the_same_result_as_one_block(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, kind: str, smoothing: float
) -> None:
    # Many rows in several blocks with a remainder, against one big block.
    x, t, w = _make_case(rng, (37, 11), np.float32, kind, kind == "index", True)
    kwargs: dict[str, Any] = {"weight": w, "label_smoothing": smoothing, "reduction": "none"}
    one_v, one_g = ce.value_and_grad(ce.cross_entropy)(x, t, **kwargs)
    monkeypatch.setattr(categorical, "_BLOCK_BYTES", 5 * 11 * 4)  # 5 rows per block
    v, g = ce.value_and_grad(ce.cross_entropy)(x, t, **kwargs)
    np.testing.assert_allclose(v, one_v, rtol=1e-6)
    np.testing.assert_allclose(g, one_g, rtol=1e-6, atol=1e-8)
    np.testing.assert_array_equal(ce.cross_entropy(x, t, **kwargs), v)
    # a NaN in a later block is still found
    x[33, 2] = np.nan
    with pytest.raises(ValueError, match=r"^cross_entropy: input must not contain NaN, got 1"):
        ce.value_and_grad(ce.cross_entropy)(x, t, **kwargs)


def test_non_contiguous_input(rng: np.random.Generator) -> None:
    x = rng.standard_normal((7, 9)).astype(np.float32)
    t = rng.integers(0, 7, 9)
    value, grad = ce.value_and_grad(ce.cross_entropy)(x.T, t)  # a transposed view
    ref, ref_grad = ce.value_and_grad(ce.cross_entropy)(np.ascontiguousarray(x.T), t)
    np.testing.assert_array_equal(value, ref)
    np.testing.assert_array_equal(grad, ref_grad)


def test_value_and_grad_registry() -> None:
    assert ce.value_and_grad(ce.cross_entropy) is categorical.cross_entropy_value_and_grad
    assert ce.value_and_grad(ce.nll_loss) is categorical.nll_loss_value_and_grad
    assert (
        ce.value_and_grad(ce.categorical_cross_entropy)
        is categorical.categorical_cross_entropy_value_and_grad
    )


def test_index_path_allocates_only_the_gradient(rng: np.random.Generator) -> None:
    # No temporary of the logits' size: the kernel writes straight into the returned array.
    import tracemalloc

    x = rng.standard_normal((256, 4096)).astype(np.float32)  # 4 MiB, several blocks
    t = rng.integers(0, 4096, 256)
    ce.value_and_grad(ce.cross_entropy)(x[:2], t[:2])  # warm up imports and caches
    tracemalloc.start()
    _, grad = ce.value_and_grad(ce.cross_entropy)(x, t)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= grad.nbytes + categorical._BLOCK_BYTES // 4 + 64 * 1024
    tracemalloc.start()
    ce.cross_entropy(x, t)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= categorical._BLOCK_BYTES + 64 * 1024  # one scratch block


# ------------------------------------------------------------------------------------------
# Validation: every message pinned
# ------------------------------------------------------------------------------------------

X = np.zeros((3, 4))
Y = np.array([0, 1, 2])

CROSS_ENTROPY_ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {"input": np.float64(1.0)},
        ValueError,
        "cross_entropy: input must have shape (C), (N, C) or (N, C, d1, ...), got a 0-d array",
    ),
    (
        {"input": np.zeros((3, 0))},
        ValueError,
        "cross_entropy: input must have at least one class (C >= 1), got shape (3, 0)",
    ),
    (
        {"input": np.zeros((3, 4), dtype=np.int64)},
        TypeError,
        "cross_entropy: input must have a floating-point dtype, got dtype int64",
    ),
    (
        {"input": np.zeros((3, 4), dtype=complex)},
        TypeError,
        "cross_entropy: input must have a floating-point dtype, got dtype complex128",
    ),
    (
        {"input": np.array([[0.0, np.nan, 1.0, 2.0]] * 3)},
        ValueError,
        "cross_entropy: input must not contain NaN, got 3 NaN value(s)",
    ),
    (
        {"target": np.array([0, 1])},
        ValueError,
        "cross_entropy: target must have shape (3,) (input's shape without the class axis) for "
        "class indices, got shape (2,)",
    ),
    (
        {"target": np.zeros((3, 1), dtype=int)},
        ValueError,
        "cross_entropy: target must have shape (3,) (input's shape without the class axis) for "
        "class indices, got shape (3, 1)",
    ),
    (
        {"target": np.array([0, 7, 2])},
        ValueError,
        "cross_entropy: target must contain class indices in [0, 4) or ignore_index (-100), got 7",
    ),
    (
        {"target": np.array([-5, 7, 2])},
        ValueError,
        "cross_entropy: target must contain class indices in [0, 4) or ignore_index (-100), "
        "got -5 (and 1 more)",
    ),
    (
        {"target": np.array([0, -100, 2]), "ignore_index": -1},
        ValueError,
        "cross_entropy: target must contain class indices in [0, 4) or ignore_index (-1), got -100",
    ),
    (
        {"target": np.array([0.0, 1.0, 2.0])},
        ValueError,
        "cross_entropy: target must be class indices (integer dtype) of shape (3,) or class "
        "probabilities (floating dtype) of input's shape (3, 4), got floating-point array of "
        "shape (3,)",
    ),
    (
        {"target": np.array([True, False, True])},
        TypeError,
        "cross_entropy: target must have an integer dtype (class indices) or a floating dtype "
        "(class probabilities), got dtype bool",
    ),
    (
        {"target": np.full((3, 4), np.nan)},
        ValueError,
        "cross_entropy: target must not contain NaN, got 12 NaN value(s)",
    ),
    (
        {"target": np.full((3, 4), 0.25), "ignore_index": 1},
        ValueError,
        "cross_entropy: ignore_index must be negative (ignore_index is not supported for "
        "probability targets), got 1",
    ),
    (
        {"ignore_index": 1.0},
        TypeError,
        "cross_entropy: ignore_index must be an integer, got float 1.0",
    ),
    (
        {"reduction": "avg"},
        ValueError,
        "cross_entropy: reduction must be one of 'none', 'mean', 'sum', got 'avg'",
    ),
    (
        {"label_smoothing": 1.5},
        ValueError,
        "cross_entropy: label_smoothing must be in [0, 1], got 1.5",
    ),
    (
        {"label_smoothing": -0.1},
        ValueError,
        "cross_entropy: label_smoothing must be in [0, 1], got -0.1",
    ),
    (
        {"label_smoothing": float("nan")},
        ValueError,
        "cross_entropy: label_smoothing must be in [0, 1], got nan",
    ),
    (
        {"label_smoothing": "0.1"},
        TypeError,
        "cross_entropy: label_smoothing must be a real number, got str '0.1'",
    ),
    (
        {"weight": np.ones(3)},
        ValueError,
        "cross_entropy: weight must be a 1-D array of length C = 4, got shape (3,)",
    ),
    (
        {"weight": np.ones((1, 4))},
        ValueError,
        "cross_entropy: weight must be a 1-D array of length C = 4, got shape (1, 4)",
    ),
    (
        {"weight": np.ones(4, dtype=int)},
        TypeError,
        "cross_entropy: weight must have a floating-point dtype, got dtype int64",
    ),
]


@pytest.mark.parametrize(("override", "kind", "message"), CROSS_ENTROPY_ERRORS)
def test_cross_entropy_errors(
    override: dict[str, Any], kind: type[Exception], message: str
) -> None:
    kwargs: dict[str, Any] = {"input": X, "target": Y, **override}
    with pytest.raises(kind, match="^" + re.escape(message) + "$"):
        ce.cross_entropy(**kwargs)
    with pytest.raises(kind, match="^" + re.escape(message) + "$"):
        ce.value_and_grad(ce.cross_entropy)(**kwargs)


NLL_ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {"target": np.zeros(3)},
        TypeError,
        "nll_loss: target must have an integer dtype (class indices), got dtype float64",
    ),
    (
        {"target": np.array([0, 4, 1])},
        ValueError,
        "nll_loss: target must contain class indices in [0, 4) or ignore_index (-100), got 4",
    ),
    (
        {"input": np.zeros((3, 4, 2))},
        ValueError,
        "nll_loss: target must have shape (3, 2) (input's shape without the class axis) for "
        "class indices, got shape (3,)",
    ),
    (
        {"input": np.full((3, 4), np.nan)},
        ValueError,
        "nll_loss: input must not contain NaN, got 12 NaN value(s)",
    ),
    (
        {"input": np.zeros((3, 4), dtype=np.int32)},
        TypeError,
        "nll_loss: input must have a floating-point dtype, got dtype int32",
    ),
    (
        {"reduction": "batchmean"},
        ValueError,
        "nll_loss: reduction must be one of 'none', 'mean', 'sum', got 'batchmean'",
    ),
    (
        {"weight": np.ones(5)},
        ValueError,
        "nll_loss: weight must be a 1-D array of length C = 4, got shape (5,)",
    ),
]


@pytest.mark.parametrize(("override", "kind", "message"), NLL_ERRORS)
def test_nll_loss_errors(override: dict[str, Any], kind: type[Exception], message: str) -> None:
    kwargs: dict[str, Any] = {"input": X, "target": Y, **override}
    with pytest.raises(kind, match="^" + re.escape(message) + "$"):
        ce.nll_loss(**kwargs)


P = np.full((2, 3), 1 / 3)
CATEGORICAL_ERRORS: list[tuple[dict[str, Any], type[Exception], str]] = [
    (
        {"target": np.full((2, 2), 0.5)},
        ValueError,
        "categorical_cross_entropy: target must have the same shape as input (2, 3), "
        "got shape (2, 2)",
    ),
    (
        {"input": np.array([[-0.1, 0.6, 0.5]] * 2)},
        ValueError,
        "categorical_cross_entropy: input must contain probabilities in [0, 1], got values in "
        "[-0.1, 0.6]",
    ),
    (
        {"target": np.array([[0.0, 0.0, 2.0]] * 2)},
        ValueError,
        "categorical_cross_entropy: target must contain probabilities in [0, 1], got values in "
        "[0, 2]",
    ),
    (
        {"input": np.ones((2, 3), dtype=int)},
        TypeError,
        "categorical_cross_entropy: input must have a floating-point dtype, got dtype int64",
    ),
    (
        {"target": np.array([0, 1])},
        TypeError,
        "categorical_cross_entropy: target must have a floating-point dtype, got dtype int64",
    ),
    (
        {"input": np.full((2, 3), np.nan)},
        ValueError,
        "categorical_cross_entropy: input must not contain NaN, got 6 NaN value(s)",
    ),
    (
        {"reduction": None},
        ValueError,
        "categorical_cross_entropy: reduction must be one of 'none', 'mean', 'sum', got None",
    ),
]


@pytest.mark.parametrize(("override", "kind", "message"), CATEGORICAL_ERRORS)
def test_categorical_cross_entropy_errors(
    override: dict[str, Any], kind: type[Exception], message: str
) -> None:
    kwargs: dict[str, Any] = {"input": P, "target": P, **override}
    with pytest.raises(kind, match="^" + re.escape(message) + "$"):
        ce.categorical_cross_entropy(**kwargs)


# --- regression: +inf logits gave NaN value and gradient instead of the limit -----------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cross_entropy_plus_inf_logits_give_the_limit_not_nan(dtype: Any) -> None:
    inf = np.inf
    vg = ce.value_and_grad(ce.cross_entropy)
    z = np.array([inf, 0.0, -inf], dtype)
    # index target on a finite logit: value inf, gradient p - e_y with p = (1, 0, 0)
    value, grad = vg(z, np.array(1))
    assert value == inf and value.dtype == dtype
    np.testing.assert_array_equal(grad, [1.0, -1.0, 0.0])
    # index target on the +inf logit: value 0, gradient 0
    value, grad = vg(z, np.array(0))
    assert value == 0.0
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])
    # probability targets: e_0 has limit 0 and gradient 0; e_1 costs inf
    value, grad = vg(z, np.array([1.0, 0.0, 0.0], dtype))
    assert value == 0.0
    np.testing.assert_array_equal(grad, [0.0, 0.0, 0.0])
    value, grad = vg(z, np.array([0.0, 1.0, 0.0], dtype))
    assert value == inf
    np.testing.assert_array_equal(grad, [1.0, -1.0, 0.0])
    # k = 2 +inf logits share the mass: a target on one of them costs log 2
    batch = np.array([[inf, 0.0, inf], [1.0, 2.0, 3.0]], dtype)
    values, grads = vg(batch, np.array([0, 2]), reduction="none")
    np.testing.assert_allclose(values, [np.log(2), ce.cross_entropy(batch[1], np.array(2))])
    np.testing.assert_allclose(grads[0], [-0.5, 0.0, 0.5], **tol(dtype))
    np.testing.assert_allclose(grads[1], ce.softmax(batch[1]) - [0, 0, 1], **tol(dtype))
    assert not np.isnan(grads).any()
    # (N, C, d) layout, and the plain loss agrees with value_and_grad
    spatial = np.moveaxis(batch[None], 2, 1)  # (1, 3, 2)
    np.testing.assert_allclose(
        ce.cross_entropy(spatial, np.array([[0, 2]]), reduction="none")[0], values
    )


def test_cross_entropy_plus_inf_limit_is_approached_by_large_logits() -> None:
    inf, big = np.inf, 1e4
    z = np.array([[inf, 0.0, -inf], [inf, 0.0, inf]])
    zb = np.array([[big, 0.0, -big], [big, 0.0, big]])
    y = np.array([0, 2])
    v_inf, g_inf = ce.value_and_grad(ce.cross_entropy)(z, y, reduction="sum")
    v_big, g_big = ce.value_and_grad(ce.cross_entropy)(zb, y, reduction="sum")
    np.testing.assert_allclose(v_inf, v_big, atol=1e-12)
    np.testing.assert_allclose(g_inf, g_big, atol=1e-12)


# --- regression: all-zero class weights with "mean" gave a zero gradient (torch: NaN) ---------


def test_all_zero_class_weights_mean_gives_nan_gradient_as_torch() -> None:
    z = np.random.default_rng(0).normal(size=(3, 4))
    y = np.array([0, 1, -100])  # two kept rows, one ignored
    w = np.zeros(4)
    for smoothing in (0.0, 0.1):
        value, grad = ce.value_and_grad(ce.cross_entropy)(z, y, weight=w, label_smoothing=smoothing)
        assert np.isnan(value)
        assert np.isnan(grad[:2]).all()  # kept rows: 0/0
        np.testing.assert_array_equal(grad[2], 0.0)  # the ignored row stays 0
        zt = torch.tensor(z, requires_grad=True)
        loss = F.cross_entropy(
            zt, torch.tensor(y), weight=torch.tensor(w), label_smoothing=smoothing
        )
        loss.backward()
        assert zt.grad is not None
        np.testing.assert_array_equal(grad, zt.grad.numpy())  # NaN positions included
    # "sum" and "none" stay finite (nothing is divided)
    value, grad = ce.value_and_grad(ce.cross_entropy)(z, y, weight=w, reduction="sum")
    assert value == 0.0 and np.all(grad == 0.0)
    # every target ignored: still zero gradient, as torch
    value, grad = ce.value_and_grad(ce.cross_entropy)(z, np.full(3, -100), weight=w)
    assert np.isnan(value) and np.all(grad == 0.0)


def test_nll_loss_all_zero_class_weights_mean_gives_nan_gradient_as_torch() -> None:
    x = np.log(np.full((3, 4), 0.25))
    y = np.array([0, 1, -100])
    value, grad = ce.value_and_grad(ce.nll_loss)(x, y, weight=np.zeros(4))
    xt = torch.tensor(x, requires_grad=True)
    F.nll_loss(xt, torch.tensor(y), weight=torch.zeros(4, dtype=torch.float64)).backward()
    assert xt.grad is not None and np.isnan(value)
    np.testing.assert_array_equal(grad, xt.grad.numpy())
    assert np.isnan(grad[0, 0]) and np.isnan(grad[1, 1]) and np.isnan(grad).sum() == 2
    # zero weight on the targets' classes only is the same 0/0
    w = np.array([0.0, 0.0, 1.0, 1.0])
    _, grad = ce.value_and_grad(ce.nll_loss)(x, y, weight=w)
    assert np.isnan(grad).sum() == 2


# --- float16: the finiteness promise is "float32 and wider" (documented) ----------------------


def test_float16_categorical_cross_entropy_gradient_at_zero_is_inf_as_documented() -> None:
    a = np.array([[0.0, 1.0], [0.5, 0.5]])
    y = np.array([[1.0, 0.0], [1.0, 0.0]])
    for dtype in (np.float64, np.float32):
        value, grad = ce.value_and_grad(ce.categorical_cross_entropy)(
            a.astype(dtype), y.astype(dtype)
        )
        assert np.isfinite(value) and np.isfinite(grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning from the documented overflow
        value, grad = ce.value_and_grad(ce.categorical_cross_entropy)(
            a.astype(np.float16), y.astype(np.float16)
        )
    assert value.dtype == np.float16 and np.isfinite(value)  # (100 + log 2) / 2
    assert grad[0, 0] == -np.inf and grad[1, 0] == -1.0
    doc = ce.categorical_cross_entropy.__doc__ or ""
    assert "float32 and wider" in doc and "float16" in doc


# --- categorical_cross_entropy does not check that rows are distributions (documented) --------


def test_categorical_cross_entropy_rows_not_distributions_are_computed_as_documented() -> None:
    a = np.array([[0.5, 0.9]])  # sums to 1.4: accepted, the formula computed as written
    y = np.array([[1.0, 0.0]])
    value, grad = ce.value_and_grad(ce.categorical_cross_entropy)(a, y)
    np.testing.assert_allclose(value, -np.log(0.5))
    np.testing.assert_allclose(grad, [[-2.0, 0.0]])
    # the gradient is the partial derivative with every a_ij free (what finite differences see)
    numeric = central_difference(lambda p: ce.categorical_cross_entropy(p, y), a)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6)
    doc = " ".join((ce.categorical_cross_entropy.__doc__ or "").split())
    assert "not** checked to be distributions" in doc
    # entries outside [0, 1] are still refused
    with pytest.raises(ValueError, match=r"^categorical_cross_entropy: input must contain"):
        ce.categorical_cross_entropy(np.array([[1.5, -0.5]]), y)
