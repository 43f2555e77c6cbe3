"""Binary cross-entropy on probabilities and on logits: parity with torch, gradients, edges."""

from __future__ import annotations

import re
import warnings
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce
from conftest import central_difference, optional_import, tol
from crossentropy.binary import (
    binary_cross_entropy_value_and_grad,
    binary_cross_entropy_with_logits_value_and_grad,
)

torch = optional_import("torch", "torch")  # the parity tests skip without torch
F = optional_import("torch.nn.functional", "torch")

SHAPES = [(), (7,), (4, 3), (2, 3, 5)]
REDUCTIONS = ["mean", "sum", "none"]
WEIGHTS = [None, "full", "last"]  # no weight; input's shape; the last dimension only
DTYPES = [np.float64, np.float32]


def _weight_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
    return shape if kind == "full" else shape[-1:]


def _torch_value_grad(
    fn: Any, x: np.ndarray, upstream: np.ndarray | None = None, **kwargs: Any
) -> tuple[np.ndarray, np.ndarray]:
    """Torch's loss and the gradient of ``(loss * upstream).sum()`` (upstream = 1 if None)."""
    xt = torch.tensor(x, requires_grad=True)
    kw = {k: (torch.tensor(v) if isinstance(v, np.ndarray) else v) for k, v in kwargs.items()}
    out = fn(xt, **kw)
    u = torch.ones_like(out) if upstream is None else torch.tensor(upstream)
    (out * u).sum().backward()
    assert xt.grad is not None
    return out.detach().numpy(), xt.grad.numpy()


# ---------------------------------------------------------------------------------------------
# parity with torch.nn.functional over a grid
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bce_matches_torch(
    rng: np.random.Generator, shape: tuple[int, ...], reduction: str, weight: str | None, dtype: Any
) -> None:
    p = rng.uniform(0.02, 0.98, shape).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)  # soft targets
    y.flat[::2] = np.round(y.flat[::2])  # and some hard ones
    w = None if weight is None else rng.uniform(0.1, 2, _weight_shape(weight, shape)).astype(dtype)
    value, grad = ce.value_and_grad(ce.binary_cross_entropy)(p, y, w, reduction)
    ref, ref_grad = _torch_value_grad(
        F.binary_cross_entropy, p, target=y, weight=w, reduction=reduction
    )
    assert value.dtype == grad.dtype == dtype
    assert value.shape == ref.shape and grad.shape == p.shape
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(ce.binary_cross_entropy(p, y, w, reduction), value)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("pos_weight", WEIGHTS)
@pytest.mark.parametrize("weight", WEIGHTS)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_bce_with_logits_matches_torch(
    rng: np.random.Generator,
    shape: tuple[int, ...],
    reduction: str,
    weight: str | None,
    pos_weight: str | None,
    dtype: Any,
) -> None:
    z = (rng.standard_normal(shape) * 4).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    y.flat[::2] = np.round(y.flat[::2])
    w = None if weight is None else rng.uniform(0.1, 2, _weight_shape(weight, shape)).astype(dtype)
    pw = (
        None
        if pos_weight is None
        else rng.uniform(0.1, 3, _weight_shape(pos_weight, shape)).astype(dtype)
    )
    vg = ce.value_and_grad(ce.binary_cross_entropy_with_logits)
    value, grad = vg(z, y, w, reduction, pw)
    ref, ref_grad = _torch_value_grad(
        F.binary_cross_entropy_with_logits,
        z,
        target=y,
        weight=w,
        reduction=reduction,
        pos_weight=pw,
    )
    assert value.dtype == grad.dtype == dtype
    assert value.shape == ref.shape and grad.shape == z.shape
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(
        ce.binary_cross_entropy_with_logits(z, y, w, reduction, pw), value
    )


def test_keyword_names_and_defaults_are_torchs(rng: np.random.Generator) -> None:
    z, y = rng.standard_normal((3, 2)), rng.uniform(0, 1, (3, 2))
    w, pw = np.array([1.0, 2.0]), np.array([3.0, 0.5])
    ours = ce.binary_cross_entropy_with_logits(
        input=z, target=y, weight=w, reduction="sum", pos_weight=pw
    )
    ref = F.binary_cross_entropy_with_logits(
        input=torch.tensor(z),
        target=torch.tensor(y),
        weight=torch.tensor(w),
        reduction="sum",
        pos_weight=torch.tensor(pw),
    )
    np.testing.assert_allclose(ours, ref.numpy(), **tol(np.dtype(np.float64)))
    p = ce.sigmoid(z)
    np.testing.assert_allclose(
        ce.binary_cross_entropy(input=p, target=y),
        F.binary_cross_entropy(input=torch.tensor(p), target=torch.tensor(y)).numpy(),
        **tol(np.dtype(np.float64)),
    )


# ---------------------------------------------------------------------------------------------
# gradients: central differences (float64) and torch autograd with a random upstream gradient
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_gradient_matches_finite_differences(
    rng: np.random.Generator, reduction: str, weighted: bool
) -> None:
    p, y = rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.5, 2, (4,)) if weighted else None
    _, grad = binary_cross_entropy_value_and_grad(p, y, w, reduction)
    fd = central_difference(lambda a: ce.binary_cross_entropy(a, y, w, reduction), p)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("weighted", [False, True])
def test_bce_with_logits_gradient_matches_finite_differences(
    rng: np.random.Generator, reduction: str, weighted: bool
) -> None:
    z, y = rng.standard_normal((3, 4)) * 3, rng.uniform(0, 1, (3, 4))
    w = rng.uniform(0.5, 2, (3, 4)) if weighted else None
    pw = rng.uniform(0.5, 3, (4,)) if weighted else None
    _, grad = binary_cross_entropy_with_logits_value_and_grad(z, y, w, reduction, pw)
    fd = central_difference(
        lambda a: ce.binary_cross_entropy_with_logits(a, y, w, reduction, pw), z
    )
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_gradient_is_sigmoid_minus_target_without_weights(rng: np.random.Generator) -> None:
    z, y = rng.standard_normal(10) * 5, rng.uniform(0, 1, 10)
    _, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y, reduction="sum")
    np.testing.assert_allclose(grad, ce.sigmoid(z) - y, **tol(np.dtype(np.float64)))


@pytest.mark.parametrize("dtype", DTYPES)
def test_elementwise_gradients_match_torch_with_random_upstream(
    rng: np.random.Generator, dtype: Any
) -> None:
    """Not the last layer: torch's backward of (loss * u).sum() equals u * our gradient."""
    shape = (5, 3)
    u = rng.standard_normal(shape).astype(dtype)
    z = (rng.standard_normal(shape) * 3).astype(dtype)
    y = rng.uniform(0, 1, shape).astype(dtype)
    w, pw = rng.uniform(0.5, 2, (3,)).astype(dtype), rng.uniform(0.5, 2, (3,)).astype(dtype)
    _, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y, w, "none", pw)
    _, ref = _torch_value_grad(
        F.binary_cross_entropy_with_logits,
        z,
        u,
        target=y,
        weight=w,
        reduction="none",
        pos_weight=pw,
    )
    np.testing.assert_allclose(u * grad, ref, **tol(np.dtype(dtype)))
    p = ce.sigmoid(z)
    _, grad = ce.value_and_grad(ce.binary_cross_entropy)(p, y, w, "none")
    _, ref = _torch_value_grad(F.binary_cross_entropy, p, u, target=y, weight=w, reduction="none")
    np.testing.assert_allclose(u * grad, ref, **tol(np.dtype(dtype)))


# ---------------------------------------------------------------------------------------------
# extremes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_probabilities_of_exactly_zero_and_one_are_finite_and_match_torch(dtype: Any) -> None:
    p = np.array([0.0, 1.0, 0.0, 1.0, 1e-30, 1 - 1e-7], dtype=dtype)
    y = np.array([1.0, 0.0, 0.0, 1.0, 1.0, 0.5], dtype=dtype)
    value, grad = ce.value_and_grad(ce.binary_cross_entropy)(p, y, reduction="none")
    ref, ref_grad = _torch_value_grad(F.binary_cross_entropy, p, target=y, reduction="none")
    assert np.isfinite(value).all() and np.isfinite(grad).all()
    np.testing.assert_array_equal(value[:4], [100.0, 100.0, 0.0, 0.0])  # the clamp at -100
    assert not np.signbit(value[:4]).any()  # a perfect prediction costs +0, not -0
    # PyTorch's gradient (p - y) / max(p (1 - p), 1e-12): ±1e12 where the log is clamped.
    np.testing.assert_allclose(grad[:4], [-1e12, 1e12, 0.0, 0.0], rtol=1e-6)
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(dtype)))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_logits_of_1e4_in_float32_are_finite_and_match_torch(reduction: str) -> None:
    z = np.array([1e4, -1e4, 1e4, -1e4, 88.0, -88.0, 0.0], dtype=np.float32)
    y = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 1.0, 0.5], dtype=np.float32)
    pw = np.float32(2.5) * np.ones(7, np.float32)
    for kwargs in ({}, {"pos_weight": pw}):
        value, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(
            z, y, reduction=reduction, **kwargs
        )
        ref, ref_grad = _torch_value_grad(
            F.binary_cross_entropy_with_logits, z, target=y, reduction=reduction, **kwargs
        )
        assert np.isfinite(value).all() and np.isfinite(grad).all()
        np.testing.assert_allclose(value, ref, **tol(np.dtype(np.float32)))
        np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(np.float32)))
    none = ce.binary_cross_entropy_with_logits(z[:4], y[:4], reduction="none")
    np.testing.assert_array_equal(none, np.array([0.0, 0.0, 1e4, 1e4], np.float32))


def test_saturated_wrong_neuron_keeps_a_unit_gradient() -> None:
    """The article's point: no sigma'(z) factor, so a confidently wrong logit still learns."""
    _, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(
        np.array([-30.0, 30.0]), np.array([1.0, 0.0]), reduction="none"
    )
    np.testing.assert_allclose(grad, [-1.0, 1.0], rtol=1e-12)
    _, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(
        np.array([-30.0, 30.0], np.float32), np.array([0.0, 1.0], np.float32), reduction="none"
    )
    # A right, confident prediction: sigma(-30) ~ 9.4e-14, kept (not cancelled to 0) in float32.
    np.testing.assert_allclose(grad, [9.357623e-14, -9.357623e-14], rtol=1e-5)


def test_infinite_logits_cost_zero_when_right_and_inf_when_wrong() -> None:
    z = np.array([np.inf, -np.inf, np.inf, -np.inf])
    y = np.array([1.0, 0.0, 0.0, 1.0])
    value, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y, reduction="none")
    np.testing.assert_array_equal(value, [0.0, 0.0, np.inf, np.inf])  # torch: nan, nan, ...
    np.testing.assert_array_equal(grad, [0.0, 0.0, 1.0, -1.0])


# ---------------------------------------------------------------------------------------------
# dtypes, inputs untouched, Python input
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_dtype_is_preserved(rng: np.random.Generator, dtype: Any, reduction: str) -> None:
    p = rng.uniform(0.1, 0.9, (4, 3)).astype(dtype)
    y = rng.uniform(0, 1, (4, 3)).astype(dtype)
    for loss, x in ((ce.binary_cross_entropy, p), (ce.binary_cross_entropy_with_logits, p * 4 - 2)):
        value, grad = ce.value_and_grad(loss)(x, y, reduction=reduction)
        assert value.dtype == dtype and grad.dtype == dtype
        assert loss(x, y, reduction=reduction).dtype == dtype
        ref, ref_grad = ce.value_and_grad(loss)(
            x.astype(np.float64), y.astype(np.float64), reduction=reduction
        )
        np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
        np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(dtype)))


def test_float16_is_computed_in_float32() -> None:
    """The sum of 1e5 terms of log 2 (69315) overflows float16 (max 65504); the mean must not."""
    z = np.zeros(100_000, np.float16)
    y = np.full(100_000, 0.5, np.float16)
    with np.errstate(over="ignore"):
        assert np.isinf(np.full(100_000, np.log(2), np.float16).sum(dtype=np.float16))
    for loss, x in ((ce.binary_cross_entropy_with_logits, z), (ce.binary_cross_entropy, z + 0.5)):
        value, grad = ce.value_and_grad(loss)(x, y)
        assert value.dtype == grad.dtype == np.float16
        np.testing.assert_allclose(float(value), np.log(2), rtol=1e-3)
        np.testing.assert_array_equal(grad, 0.0)


def test_inputs_are_not_modified(rng: np.random.Generator) -> None:
    p, y = rng.uniform(0, 1, (3, 4)), rng.uniform(0, 1, (3, 4))
    p[0, 0], p[0, 1] = 0.0, 1.0
    w, pw = rng.uniform(0, 1, (4,)), rng.uniform(0, 1, (4,))
    args = [a.copy() for a in (p, y, w, pw)]
    for reduction in REDUCTIONS:
        ce.value_and_grad(ce.binary_cross_entropy)(p, y, w, reduction)
        ce.value_and_grad(ce.binary_cross_entropy_with_logits)(p, y, w, reduction, pw)
        ce.binary_cross_entropy(p, y, w, reduction)
        ce.binary_cross_entropy_with_logits(p, y, w, reduction, pw)
    for before, after in zip(args, (p, y, w, pw), strict=True):
        np.testing.assert_array_equal(before, after)


def test_none_returns_a_fresh_array_even_when_no_cast_is_needed() -> None:
    z, y = np.zeros(3), np.zeros(3)
    out = ce.binary_cross_entropy_with_logits(z, y, reduction="none")
    assert not np.shares_memory(out, z) and not np.shares_memory(out, y)


def test_python_lists_and_scalars() -> None:
    np.testing.assert_allclose(
        ce.binary_cross_entropy([0.5, 0.25], [1.0, 0.0]), -(np.log(0.5) + np.log(0.75)) / 2
    )
    np.testing.assert_allclose(ce.binary_cross_entropy_with_logits(0.0, 1.0), np.log(2))


def test_empty_mean_is_nan_like_torch() -> None:
    e = np.zeros(0)
    with np.errstate(invalid="ignore"):
        assert np.isnan(ce.binary_cross_entropy(e, e))
        value, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(e, e)
    assert np.isnan(value) and grad.shape == (0,)
    assert np.isnan(F.binary_cross_entropy(torch.zeros(0), torch.zeros(0)).item())
    assert ce.binary_cross_entropy(e, e, reduction="sum") == 0.0


# ---------------------------------------------------------------------------------------------
# validation: every message pinned
# ---------------------------------------------------------------------------------------------

BCE = "binary_cross_entropy"
BCEL = "binary_cross_entropy_with_logits"
ERRORS = [
    # (loss name, kwargs, exception, message)
    (BCE, {"input": np.array([0.5]), "target": np.array([1.0, 0.0])}, ValueError,
     "binary_cross_entropy: target must have the same shape as input (1,), got shape (2,)"),
    (BCEL, {"input": np.zeros((2, 1)), "target": np.zeros(2)}, ValueError,
     "binary_cross_entropy_with_logits: target must have the same shape as input (2, 1), "
     "got shape (2,)"),
    (BCE, {"input": np.array([0.5, np.nan]), "target": np.zeros(2)}, ValueError,
     "binary_cross_entropy: input must not contain NaN, got 1 NaN value(s)"),
    (BCEL, {"input": np.zeros(2), "target": np.array([np.nan, 0.0])}, ValueError,
     "binary_cross_entropy_with_logits: target must not contain NaN, got 1 NaN value(s)"),
    (BCE, {"input": np.array([1, 0]), "target": np.zeros(2)}, TypeError,
     "binary_cross_entropy: input must have a floating-point dtype, got dtype int64"),
    (BCEL, {"input": np.array([1j]), "target": np.zeros(1)}, TypeError,
     "binary_cross_entropy_with_logits: input must have a floating-point dtype, got dtype "
     "complex128"),
    (BCEL, {"input": np.array(["a"], dtype=object), "target": np.zeros(1)}, TypeError,
     "binary_cross_entropy_with_logits: input must have a floating-point dtype, got dtype object"),
    (BCE, {"input": np.full(2, 0.5), "target": np.array([1, 0])}, TypeError,
     "binary_cross_entropy: target must have a floating-point dtype, got dtype int64"),
    (BCE, {"input": np.full(2, 0.5), "target": np.zeros(2), "reduction": "avg"}, ValueError,
     "binary_cross_entropy: reduction must be one of 'none', 'mean', 'sum', got 'avg'"),
    (BCEL, {"input": np.zeros(2), "target": np.zeros(2), "reduction": None}, ValueError,
     "binary_cross_entropy_with_logits: reduction must be one of 'none', 'mean', 'sum', "
     "got None"),
    (BCE, {"input": np.array([-0.5, 1.5]), "target": np.zeros(2)}, ValueError,
     "binary_cross_entropy: input must contain values in [0, 1], got values in [-0.5, 1.5]"),
    (BCE, {"input": np.full(2, 0.5), "target": np.array([0.0, 2.0])}, ValueError,
     "binary_cross_entropy: target must contain values in [0, 1], got values in [0, 2]"),
    (BCEL, {"input": np.zeros(2), "target": np.array([-1.0, 1.0])}, ValueError,
     "binary_cross_entropy_with_logits: target must contain values in [0, 1], got values in "
     "[-1, 1]"),
    (BCE, {"input": np.full((2, 3), 0.5), "target": np.zeros((2, 3)), "weight": np.ones(2)},
     ValueError, "binary_cross_entropy: weight must be broadcastable to (2, 3), got shape (2,)"),
    (BCEL, {"input": np.zeros(3), "target": np.zeros(3), "weight": np.ones((2, 3))}, ValueError,
     "binary_cross_entropy_with_logits: weight must be broadcastable to (3,), got shape (2, 3)"),
    (BCEL, {"input": np.zeros((2, 3)), "target": np.zeros((2, 3)), "pos_weight": np.ones(2)},
     ValueError,
     "binary_cross_entropy_with_logits: pos_weight must be broadcastable to (2, 3), got shape "
     "(2,)"),
    (BCEL, {"input": np.zeros(3), "target": np.zeros(3), "pos_weight": np.ones((1, 3))},
     ValueError,
     "binary_cross_entropy_with_logits: pos_weight must be broadcastable to (3,), got shape "
     "(1, 3)"),
    (BCEL, {"input": np.zeros(3), "target": np.zeros(3), "pos_weight": np.array([1, 2, 3])},
     TypeError,
     "binary_cross_entropy_with_logits: pos_weight must have a floating-point dtype, got dtype "
     "int64"),
    (BCE, {"input": np.full(3, 0.5), "target": np.zeros(3), "weight": np.array([1.0, np.nan, 1])},
     ValueError, "binary_cross_entropy: weight must not contain NaN, got 1 NaN value(s)"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "kwargs", "exc", "message"), ERRORS)
def test_errors_are_pinned(name: str, kwargs: dict[str, Any], exc: type, message: str) -> None:
    loss = getattr(ce, name)
    for f in (loss, ce.value_and_grad(loss)):
        with pytest.raises(exc, match=f"^{re.escape(message)}$"):
            f(**kwargs)


def test_torch_refuses_the_same_out_of_range_values() -> None:
    """Our ValueErrors for BCE's input/target range mirror torch's RuntimeErrors."""
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(torch.tensor([1.5]), torch.tensor([1.0]))
    with pytest.raises(RuntimeError, match="between 0 and 1"):
        F.binary_cross_entropy(torch.tensor([0.5]), torch.tensor([2.0]))


# ---------------------------------------------------------------------------------------------
# properties (hypothesis)
# ---------------------------------------------------------------------------------------------

_shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=5)
_unit = st.floats(0.0, 1.0, allow_nan=False, width=64)
_logit = st.floats(-60.0, 60.0, allow_nan=False, width=64)


@st.composite
def _probabilities_and_targets(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(_shapes)
    return draw(hnp.arrays(np.float64, shape, elements=_unit)), draw(
        hnp.arrays(np.float64, shape, elements=_unit)
    )


@st.composite
def _logits_and_targets(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(_shapes)
    return draw(hnp.arrays(np.float64, shape, elements=_logit)), draw(
        hnp.arrays(np.float64, shape, elements=_unit)
    )


@settings(max_examples=60, deadline=None)
@given(_probabilities_and_targets())
def test_bce_is_non_negative_and_sum_is_none_then_sum(data: tuple[np.ndarray, np.ndarray]) -> None:
    p, y = data
    none = ce.binary_cross_entropy(p, y, reduction="none")
    assert (none >= 0).all()
    np.testing.assert_allclose(ce.binary_cross_entropy(p, y, reduction="sum"), none.sum())
    np.testing.assert_allclose(ce.binary_cross_entropy(p, y), none.sum() / none.size)


@settings(max_examples=60, deadline=None)
@given(_logits_and_targets())
def test_bce_with_logits_is_non_negative_and_sum_is_none_then_sum(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    z, y = data
    none = ce.binary_cross_entropy_with_logits(z, y, reduction="none")
    assert (none >= 0).all()
    np.testing.assert_allclose(
        ce.binary_cross_entropy_with_logits(z, y, reduction="sum"), none.sum(), rtol=1e-12
    )


@settings(max_examples=60, deadline=None)
@given(_probabilities_and_targets())
def test_bce_mean_is_minus_bernoulli_log_likelihood_over_n(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    """The article: minimising BCE is maximising the Bernoulli likelihood of hard labels."""
    p, y = data
    y = np.round(y)
    p = np.clip(p, 1e-6, 1 - 1e-6)  # away from the clamp
    likelihood = np.prod(np.where(y == 1, p, 1 - p))  # prod_i p^y_i (1-p)^(1-y_i)
    log_likelihood = np.sum(np.log(np.where(y == 1, p, 1 - p)))
    np.testing.assert_allclose(ce.binary_cross_entropy(p, y), -log_likelihood / p.size, rtol=1e-9)
    if likelihood > 1e-300:
        np.testing.assert_allclose(
            ce.binary_cross_entropy(p, y, reduction="sum"), -np.log(likelihood), rtol=1e-9
        )


@settings(max_examples=60, deadline=None)
@given(_logits_and_targets())
def test_bce_with_logits_is_bce_of_sigmoid_where_not_clamped(
    data: tuple[np.ndarray, np.ndarray],
) -> None:
    z, y = data
    # |z| <= 15: sigma(z) is inside (0, 1) with 1 - sigma(z) >= 3e-7, so BCE on probabilities
    # is neither clamped nor ill-conditioned (it loses ~eps/(1 - p) to the rounding of p).
    z = np.clip(z, -15, 15)
    p = ce.sigmoid(z)
    np.testing.assert_allclose(
        ce.binary_cross_entropy_with_logits(z, y, reduction="none"),
        ce.binary_cross_entropy(p, y, reduction="none"),
        rtol=1e-8,
        atol=1e-12,
    )
    # and the chain rule: dBCE/dp * sigma'(z) = sigma(z) - y
    _, grad_p = ce.value_and_grad(ce.binary_cross_entropy)(p, y, reduction="sum")
    _, grad_z = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y, reduction="sum")
    np.testing.assert_allclose(grad_p * p * (1 - p), grad_z, rtol=1e-7, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(_logits_and_targets(), st.floats(0.1, 10.0))
def test_pos_weight_one_changes_nothing_and_scales_positive_term(
    data: tuple[np.ndarray, np.ndarray], c: float
) -> None:
    z, y = data
    ones = np.ones(z.shape[-1])
    plain = ce.binary_cross_entropy_with_logits(z, y, reduction="none")
    np.testing.assert_array_equal(
        ce.binary_cross_entropy_with_logits(z, y, reduction="none", pos_weight=ones), plain
    )
    # For hard positive targets, pos_weight c is the same as weight c.
    yp = np.ones_like(y)
    np.testing.assert_allclose(
        ce.binary_cross_entropy_with_logits(z, yp, reduction="none", pos_weight=c * ones),
        ce.binary_cross_entropy_with_logits(z, yp, reduction="none", weight=c * ones),
        rtol=1e-12,
    )


def test_logits_form_keeps_digits_that_probabilities_lose() -> None:
    """At z = 24, y = 0: sigma(z) rounds in float64, so BCE(sigma(z)) is off in the 8th digit."""
    exact = 24.0 + np.log1p(np.exp(-24.0))  # -log(1 - sigma(24)) = z + log(1 + e^-z)
    via_logits = ce.binary_cross_entropy_with_logits(np.array([24.0]), np.array([0.0]))
    via_probability = ce.binary_cross_entropy(ce.sigmoid(np.array([24.0])), np.array([0.0]))
    assert abs(via_logits - exact) <= 1e-15 * exact
    assert abs(via_probability - exact) > 1e-9 * exact


# --- float16: the finiteness promise is "float32 and wider" (documented, as torch) ------------


def test_float16_bce_gradient_at_0_and_1_is_inf_as_torch_and_documented() -> None:
    a = np.array([0.0, 1.0, 0.5])
    y = np.array([1.0, 0.0, 1.0])
    for dtype in (np.float64, np.float32):
        value, grad = ce.value_and_grad(ce.binary_cross_entropy)(a.astype(dtype), y.astype(dtype))
        assert np.isfinite(value) and np.isfinite(grad).all()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the documented overflow raises no RuntimeWarning
        value, grad = ce.value_and_grad(ce.binary_cross_entropy)(
            a.astype(np.float16), y.astype(np.float16)
        )
    at = torch.tensor(a, dtype=torch.float16, requires_grad=True)
    loss = F.binary_cross_entropy(at, torch.tensor(y, dtype=torch.float16))
    loss.backward()
    assert at.grad is not None
    assert value.dtype == np.float16 and np.isfinite(value)
    np.testing.assert_allclose(value, loss.item(), rtol=1e-3)
    np.testing.assert_array_equal(grad[:2], [-np.inf, np.inf])  # torch's float16 gradient too
    np.testing.assert_array_equal(grad[:2], at.grad.numpy()[:2])
    np.testing.assert_allclose(grad[2], at.grad.numpy()[2], rtol=1e-3)
    doc = ce.binary_cross_entropy.__doc__ or ""
    assert "float32" in doc and "float16" in doc and "and wider" in doc
