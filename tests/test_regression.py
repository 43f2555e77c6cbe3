"""Mean squared error: torch parity, its gradient, and no silent broadcasting."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce
from conftest import optional_import, tol
from crossentropy.regression import mse_loss_value_and_grad

torch = optional_import("torch", "torch")  # the parity tests skip without torch
F = optional_import("torch.nn.functional", "torch")

SHAPES = [(), (7,), (4, 3), (2, 3, 5)]
REDUCTIONS = ["mean", "sum", "none"]


def _torch(
    a: np.ndarray, y: np.ndarray, reduction: str, upstream: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Torch's loss and the gradient of ``(loss * upstream).sum()`` (upstream = 1 if None)."""
    at = torch.tensor(a, requires_grad=True)
    out = F.mse_loss(at, torch.tensor(y), reduction=reduction)
    u = torch.ones_like(out) if upstream is None else torch.tensor(upstream)
    (out * u).sum().backward()
    assert at.grad is not None
    return out.detach().numpy(), at.grad.numpy()


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_torch(
    rng: np.random.Generator, shape: tuple[int, ...], reduction: str, dtype: Any
) -> None:
    a = rng.standard_normal(shape).astype(dtype)
    y = rng.standard_normal(shape).astype(dtype)
    value, grad = ce.value_and_grad(ce.mse_loss)(a, y, reduction)
    ref, ref_grad = _torch(a, y, reduction)
    assert value.dtype == grad.dtype == dtype
    assert value.shape == ref.shape and grad.shape == a.shape
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_allclose(grad, ref_grad, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(ce.mse_loss(input=a, target=y, reduction=reduction), value)


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_gradient_matches_finite_differences(rng: np.random.Generator, reduction: str) -> None:
    a, y = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    _, grad = mse_loss_value_and_grad(a, y, reduction)
    h = 1e-6
    fd = np.zeros_like(a)
    for i in np.ndindex(a.shape):
        ap, am = a.copy(), a.copy()
        ap[i] += h
        am[i] -= h
        fd[i] = (np.sum(ce.mse_loss(ap, y, reduction)) - np.sum(ce.mse_loss(am, y, reduction))) / (
            2 * h
        )
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)


def test_gradient_is_two_residuals_over_n(rng: np.random.Generator) -> None:
    a, y = rng.standard_normal(10), rng.standard_normal(10)
    _, grad = ce.value_and_grad(ce.mse_loss)(a, y)
    np.testing.assert_allclose(grad, 2 * (a - y) / 10, **tol(np.dtype(np.float64)))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_random_upstream_gradient_matches_torch(rng: np.random.Generator, dtype: Any) -> None:
    a, y = rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal((5, 3)).astype(dtype)
    u = rng.standard_normal((5, 3)).astype(dtype)
    _, grad = ce.value_and_grad(ce.mse_loss)(a, y, reduction="none")
    _, ref = _torch(a, y, "none", u)
    np.testing.assert_allclose(u * grad, ref, **tol(np.dtype(dtype)))


def test_sigmoid_composition_carries_the_vanishing_factor() -> None:
    """The article: d MSE(sigma(z))/dz = 2 (a - y) sigma'(z) -> 0 for a saturated wrong neuron."""
    z, y = np.array([-10.0]), np.array([1.0])
    a = ce.sigmoid(z)
    _, grad_a = ce.value_and_grad(ce.mse_loss)(a, y)
    grad_z = grad_a * a * (1 - a)
    _, grad_z_bce = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y)
    assert abs(grad_z[0]) < 1e-4 < 0.99 < abs(grad_z_bce[0])


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_preserved_and_inputs_untouched(rng: np.random.Generator, dtype: Any) -> None:
    a, y = rng.standard_normal((4, 3)).astype(dtype), rng.standard_normal((4, 3)).astype(dtype)
    a0, y0 = a.copy(), y.copy()
    for reduction in REDUCTIONS:
        value, grad = ce.value_and_grad(ce.mse_loss)(a, y, reduction)
        assert value.dtype == grad.dtype == dtype
        ref = ce.mse_loss(a.astype(np.float64), y.astype(np.float64), reduction)
        np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(y, y0)


def test_empty_mean_is_nan_like_torch() -> None:
    with np.errstate(invalid="ignore"):
        assert np.isnan(ce.mse_loss(np.zeros(0), np.zeros(0)))
    assert np.isnan(F.mse_loss(torch.zeros(0), torch.zeros(0)).item())


def test_no_silent_broadcast_where_torch_warns() -> None:
    """(N, 1) against (N,): torch broadcasts to (N, N) with a warning; we refuse."""
    with pytest.warns(UserWarning, match="different to the input size"):
        assert F.mse_loss(torch.zeros(3, 1), torch.zeros(3), reduction="none").shape == (3, 3)
    with pytest.raises(ValueError, match="same shape"):
        ce.mse_loss(np.zeros((3, 1)), np.zeros(3))


ERRORS = [
    ({"input": np.zeros((3, 1)), "target": np.zeros(3)}, ValueError,
     "mse_loss: target must have the same shape as input (3, 1), got shape (3,)"),
    ({"input": np.array([0.0, np.nan]), "target": np.zeros(2)}, ValueError,
     "mse_loss: input must not contain NaN, got 1 NaN value(s)"),
    ({"input": np.zeros(2), "target": np.array([np.nan, np.nan])}, ValueError,
     "mse_loss: target must not contain NaN, got 2 NaN value(s)"),
    ({"input": np.array([1, 2]), "target": np.zeros(2)}, TypeError,
     "mse_loss: input must have a floating-point dtype, got dtype int64"),
    ({"input": np.array([1j]), "target": np.zeros(1)}, TypeError,
     "mse_loss: input must have a floating-point dtype, got dtype complex128"),
    ({"input": np.array([None]), "target": np.zeros(1)}, TypeError,
     "mse_loss: input must have a floating-point dtype, got dtype object"),
    ({"input": np.zeros(2), "target": np.array([True, False])}, TypeError,
     "mse_loss: target must have a floating-point dtype, got dtype bool"),
    ({"input": np.zeros(2), "target": np.zeros(2), "reduction": "elementwise_mean"}, ValueError,
     "mse_loss: reduction must be one of 'none', 'mean', 'sum', got 'elementwise_mean'"),
]  # fmt: skip


@pytest.mark.parametrize(("kwargs", "exc", "message"), ERRORS)
def test_errors_are_pinned(kwargs: dict[str, Any], exc: type, message: str) -> None:
    for f in (ce.mse_loss, ce.value_and_grad(ce.mse_loss)):
        with pytest.raises(exc, match=f"^{re.escape(message)}$"):
            f(**kwargs)


_finite = st.floats(-1e3, 1e3, allow_nan=False, width=64)


@st.composite
def _pairs(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    return (
        draw(hnp.arrays(np.float64, shape, elements=_finite)),
        draw(hnp.arrays(np.float64, shape, elements=_finite)),
    )


@settings(max_examples=60, deadline=None)
@given(_pairs())
def test_properties(data: tuple[np.ndarray, np.ndarray]) -> None:
    a, y = data
    none = ce.mse_loss(a, y, reduction="none")
    assert (none >= 0).all()
    np.testing.assert_allclose(ce.mse_loss(a, y, reduction="sum"), none.sum(), rtol=1e-12)
    np.testing.assert_allclose(ce.mse_loss(a, y), none.mean(), rtol=1e-12)
    np.testing.assert_allclose(ce.mse_loss(a, y), ce.mse_loss(y, a), rtol=1e-12)  # symmetric
    assert ce.mse_loss(a, a.copy(), reduction="sum") == 0.0
