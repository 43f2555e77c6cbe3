"""kl_div (torch semantics), entropy and kl_divergence: H(p, q) = H(p) + KL(p || q)."""

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
from crossentropy.divergence import (
    entropy_value_and_grad,
    kl_div_value_and_grad,
    kl_divergence_value_and_grad,
)

torch = optional_import("torch", "torch")  # the parity tests skip without torch
F = optional_import("torch.nn.functional", "torch")

SHAPES = [(), (6,), (4, 3), (2, 3, 5)]
KL_REDUCTIONS = ["mean", "batchmean", "sum", "none"]


def _distributions(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    e = rng.exponential(size=shape)
    return e / e.sum(axis=-1, keepdims=True) if shape else np.asarray(0.3)


# ---------------------------------------------------------------------------------------------
# kl_div
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
def test_kl_div_matches_torch(
    rng: np.random.Generator, shape: tuple[int, ...], reduction: str, log_target: bool, dtype: Any
) -> None:
    log_q = np.log(_distributions(rng, shape)).astype(dtype)
    p = _distributions(rng, shape)
    if p.ndim:
        p.flat[::4] = 0.0  # some zero-probability targets: 0 log 0 = 0
    target = (np.log(np.maximum(p, 1e-30)) if log_target else p).astype(dtype)
    value, grad = ce.value_and_grad(ce.kl_div)(log_q, target, reduction, log_target)
    xt = torch.tensor(log_q, requires_grad=True)
    with warnings.catch_warnings():  # torch warns that its "mean" is not the KL divergence
        warnings.simplefilter("ignore", UserWarning)
        ref = F.kl_div(xt, torch.tensor(target), reduction=reduction, log_target=log_target)
    ref.sum().backward()
    assert xt.grad is not None
    assert value.dtype == grad.dtype == dtype
    assert value.shape == tuple(ref.shape) and grad.shape == log_q.shape
    np.testing.assert_allclose(value, ref.detach().numpy(), **tol(np.dtype(dtype)))
    np.testing.assert_allclose(grad, xt.grad.numpy(), **tol(np.dtype(dtype)))
    np.testing.assert_array_equal(
        ce.kl_div(input=log_q, target=target, reduction=reduction, log_target=log_target), value
    )


@pytest.mark.parametrize("log_target", [False, True])
@pytest.mark.parametrize("reduction", KL_REDUCTIONS)
def test_kl_div_gradient_matches_finite_differences(
    rng: np.random.Generator, reduction: str, log_target: bool
) -> None:
    log_q = np.log(_distributions(rng, (3, 4)))
    p = _distributions(rng, (3, 4))
    target = np.log(p) if log_target else p
    _, grad = kl_div_value_and_grad(log_q, target, reduction, log_target)
    fd = central_difference(lambda x: ce.kl_div(x, target, reduction, log_target), log_q)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)


def test_kl_div_random_upstream_gradient_matches_torch(rng: np.random.Generator) -> None:
    log_q, p = np.log(_distributions(rng, (5, 3))), _distributions(rng, (5, 3))
    u = rng.standard_normal((5, 3))
    _, grad = ce.value_and_grad(ce.kl_div)(log_q, p, reduction="none")
    xt = torch.tensor(log_q, requires_grad=True)
    (F.kl_div(xt, torch.tensor(p), reduction="none") * torch.tensor(u)).sum().backward()
    assert xt.grad is not None
    np.testing.assert_allclose(u * grad, xt.grad.numpy(), **tol(np.dtype(np.float64)))


def test_kl_div_batchmean_is_the_mean_kl_divergence(rng: np.random.Generator) -> None:
    p, q = _distributions(rng, (5, 4)), _distributions(rng, (5, 4))
    np.testing.assert_allclose(
        ce.kl_div(np.log(q), p, reduction="batchmean"), ce.kl_divergence(p, q).mean(), rtol=1e-12
    )


def test_kl_div_zero_target_is_zero_even_for_minus_inf_input() -> None:
    """Torch gives NaN for 0 * (log 0 - (-inf)); the limit, and our value, is 0."""
    x, p = np.array([-np.inf, np.log(0.5)]), np.array([0.0, 1.0])
    value, grad = ce.value_and_grad(ce.kl_div)(x, p, reduction="none")
    np.testing.assert_allclose(value, [0.0, np.log(2)], rtol=1e-15)
    np.testing.assert_array_equal(grad, [-0.0, -1.0])
    assert np.isnan(F.kl_div(torch.tensor(x), torch.tensor(p), reduction="none")[0].item())
    value = ce.kl_div(x, np.array([-np.inf, 0.0]), reduction="none", log_target=True)
    np.testing.assert_allclose(value, [0.0, np.log(2)], rtol=1e-15)


def test_kl_div_empty_batchmean_is_nan_like_torch() -> None:
    with np.errstate(invalid="ignore"):
        assert np.isnan(ce.kl_div(np.zeros((0, 3)), np.zeros((0, 3)), reduction="batchmean"))
    assert np.isnan(F.kl_div(torch.zeros(0, 3), torch.zeros(0, 3), reduction="batchmean").item())


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_dtype_is_preserved_and_inputs_untouched(rng: np.random.Generator, dtype: Any) -> None:
    p, q = _distributions(rng, (4, 3)).astype(dtype), _distributions(rng, (4, 3)).astype(dtype)
    p[0, 0] = 0.0
    log_q = np.log(q)
    saved = [a.copy() for a in (p, q, log_q)]
    for reduction in KL_REDUCTIONS:
        value, grad = ce.value_and_grad(ce.kl_div)(log_q, p, reduction)
        assert value.dtype == grad.dtype == dtype
    for value, grad in (kl_divergence_value_and_grad(p, q), entropy_value_and_grad(p)):
        assert value.dtype == grad.dtype == dtype
    value = ce.kl_divergence(p, q)
    ref = ce.kl_divergence(p.astype(np.float64), q.astype(np.float64))
    np.testing.assert_allclose(value, ref, **tol(np.dtype(dtype)))
    np.testing.assert_allclose(
        ce.entropy(p), ce.entropy(p.astype(np.float64)), **tol(np.dtype(dtype))
    )
    for before, after in zip(saved, (p, q, log_q), strict=True):
        np.testing.assert_array_equal(before, after)


# ---------------------------------------------------------------------------------------------
# entropy and kl_divergence
# ---------------------------------------------------------------------------------------------


def test_entropy_reference_values() -> None:
    p = np.array([[0.5, 0.5, 0.0, 0.0], [0.25, 0.25, 0.25, 0.25], [1.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(ce.entropy(p), [np.log(2), np.log(4), 0.0], rtol=1e-15)
    np.testing.assert_allclose(ce.entropy(p.T, axis=0), ce.entropy(p), rtol=1e-15)
    # torch.special.entr is the element-wise -x log x with entr(0) = 0.
    ref = torch.special.entr(torch.tensor(p)).sum(-1).numpy()
    np.testing.assert_allclose(ce.entropy(p), ref, rtol=1e-15)
    assert ce.entropy(np.array(0.5)).shape == ()


def test_kl_divergence_reference_values_and_infinities() -> None:
    p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    np.testing.assert_allclose(ce.kl_divergence(p, q), np.log(2), rtol=1e-15)
    assert ce.kl_divergence(q, p) == np.inf  # q puts mass where p has none
    assert ce.kl_divergence(p, p) == 0.0
    torch_ref = F.kl_div(torch.tensor(np.log(q)), torch.tensor(p), reduction="sum").item()
    np.testing.assert_allclose(ce.kl_divergence(p, q), torch_ref, rtol=1e-15)
    rows = ce.kl_divergence(np.stack([p, q]), np.stack([q, q]), axis=1)
    np.testing.assert_allclose(rows, [np.log(2), 0.0], rtol=1e-15)


def test_entropy_gradient_matches_finite_differences(rng: np.random.Generator) -> None:
    p = rng.uniform(0.05, 0.95, (3, 4))
    value, grad = entropy_value_and_grad(p)
    np.testing.assert_array_equal(value, ce.entropy(p))
    np.testing.assert_allclose(grad, central_difference(ce.entropy, p), rtol=1e-7, atol=1e-9)
    _, grad0 = entropy_value_and_grad(np.array([0.0, 1.0]))
    np.testing.assert_array_equal(grad0, [np.inf, -1.0])


@pytest.mark.parametrize("axis", [0, -1])
def test_kl_divergence_gradient_matches_finite_differences(
    rng: np.random.Generator, axis: int
) -> None:
    p, q = rng.uniform(0.05, 0.95, (3, 4)), rng.uniform(0.05, 0.95, (3, 4))
    value, grad = kl_divergence_value_and_grad(p, q, axis)
    np.testing.assert_array_equal(value, ce.kl_divergence(p, q, axis))
    fd = central_difference(lambda x: ce.kl_divergence(x, q, axis), p)
    np.testing.assert_allclose(grad, fd, rtol=1e-7, atol=1e-9)
    _, edge = kl_divergence_value_and_grad(
        np.array([0.0, 0.5, 0.0, 0.5]), np.array([0.5, 0.0, 0.0, 0.5])
    )
    np.testing.assert_array_equal(edge, [-np.inf, np.inf, np.inf, 1.0])


def test_kl_divergence_gradient_matches_torch_autograd(rng: np.random.Generator) -> None:
    p, q = _distributions(rng, (4, 5)), _distributions(rng, (4, 5))
    _, grad = ce.value_and_grad(ce.kl_divergence)(p, q)
    pt = torch.tensor(p, requires_grad=True)
    (pt * (pt.log() - torch.tensor(q).log())).sum().backward()
    assert pt.grad is not None
    np.testing.assert_allclose(grad, pt.grad.numpy(), **tol(np.dtype(np.float64)))


# ---------------------------------------------------------------------------------------------
# validation
# ---------------------------------------------------------------------------------------------

ERRORS = [
    (ce.kl_div, {"input": np.zeros(3), "target": np.zeros((3, 1))}, ValueError,
     "kl_div: target must have the same shape as input (3,), got shape (3, 1)"),
    (ce.kl_div, {"input": np.array([np.nan]), "target": np.zeros(1)}, ValueError,
     "kl_div: input must not contain NaN, got 1 NaN value(s)"),
    (ce.kl_div, {"input": np.array([0, 1]), "target": np.zeros(2)}, TypeError,
     "kl_div: input must have a floating-point dtype, got dtype int64"),
    (ce.kl_div, {"input": np.zeros(1, np.complex64), "target": np.zeros(1)}, TypeError,
     "kl_div: input must have a floating-point dtype, got dtype complex64"),
    (ce.kl_div, {"input": np.zeros(2), "target": np.zeros(2), "reduction": "batch"}, ValueError,
     "kl_div: reduction must be one of 'none', 'mean', 'sum', 'batchmean', got 'batch'"),
    (ce.kl_div, {"input": np.zeros(2), "target": np.array([-0.5, 1.0])}, ValueError,
     "kl_div: target must be non-negative (probabilities), got minimum -0.5"),
    (ce.kl_div, {"input": np.zeros(2), "target": np.zeros(2), "log_target": "yes"}, TypeError,
     "kl_div: log_target must be a bool, got 'yes'"),
    (ce.entropy, {"p": np.array([0.5, 1.5])}, ValueError,
     "entropy: p must contain values in [0, 1], got values in [0.5, 1.5]"),
    (ce.entropy, {"p": np.array([0.5, np.nan])}, ValueError,
     "entropy: p must not contain NaN, got 1 NaN value(s)"),
    (ce.entropy, {"p": np.array([1, 0])}, TypeError,
     "entropy: p must have a floating-point dtype, got dtype int64"),
    (ce.entropy, {"p": np.ones((2, 2)) / 2, "axis": 2}, ValueError,
     "entropy: axis must be in [-2, 2), got 2"),
    (ce.entropy, {"p": np.ones(2) / 2, "axis": 0.0}, TypeError,
     "entropy: axis must be an integer, got float 0.0"),
    (ce.kl_divergence, {"p": np.ones(2) / 2, "q": np.ones(3) / 3}, ValueError,
     "kl_divergence: q must have the same shape as p (2,), got shape (3,)"),
    (ce.kl_divergence, {"p": np.ones(2) / 2, "q": np.array([-0.5, 1.5])}, ValueError,
     "kl_divergence: q must contain values in [0, 1], got values in [-0.5, 1.5]"),
    (ce.kl_divergence, {"p": np.ones(2) / 2, "q": np.array([1j, 0])}, TypeError,
     "kl_divergence: q must have a floating-point dtype, got dtype complex128"),
    (ce.kl_divergence, {"p": np.ones(2) / 2, "q": np.ones(2) / 2, "axis": -3}, ValueError,
     "kl_divergence: axis must be in [-1, 1), got -3"),
]  # fmt: skip


@pytest.mark.parametrize(("loss", "kwargs", "exc", "message"), ERRORS)
def test_errors_are_pinned(loss: Any, kwargs: dict[str, Any], exc: type, message: str) -> None:
    for f in (loss, ce.value_and_grad(loss)):
        with pytest.raises(exc, match=f"^{re.escape(message)}$"):
            f(**kwargs)


# ---------------------------------------------------------------------------------------------
# properties (hypothesis)
# ---------------------------------------------------------------------------------------------


@st.composite
def _two_distributions(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, max_side=5))
    weights = st.floats(0.0, 1.0, allow_nan=False, width=64)
    raw_p = draw(hnp.arrays(np.float64, shape, elements=weights))
    raw_q = draw(hnp.arrays(np.float64, shape, elements=st.floats(1e-3, 1.0, width=64)))
    raw_p[..., 0] += 1e-3  # every slice has some mass
    return raw_p / raw_p.sum(-1, keepdims=True), raw_q / raw_q.sum(-1, keepdims=True)


@settings(max_examples=80, deadline=None)
@given(_two_distributions())
def test_cross_entropy_is_entropy_plus_kl(data: tuple[np.ndarray, np.ndarray]) -> None:
    """H(p, q) = H(p) + KL(p || q), with H(p, q) = -sum p log q written out independently."""
    p, q = data
    with np.errstate(divide="ignore"):
        cross = -np.sum(np.where(p > 0, p * np.log(q), 0.0), axis=-1)
    np.testing.assert_allclose(
        ce.entropy(p) + ce.kl_divergence(p, q), cross, rtol=1e-10, atol=1e-12
    )
    # kl_div (torch's element-wise form, on log q) summed over the classes is the same KL:
    np.testing.assert_allclose(
        ce.kl_div(np.log(q), p, reduction="none").sum(-1),
        ce.kl_divergence(p, q),
        rtol=1e-10,
        atol=1e-12,
    )


@settings(max_examples=80, deadline=None)
@given(_two_distributions())
def test_kl_is_non_negative_and_zero_on_the_diagonal(data: tuple[np.ndarray, np.ndarray]) -> None:
    p, q = data
    assert (ce.kl_divergence(p, q) >= -1e-12).all()  # Gibbs' inequality, up to rounding
    assert (ce.kl_divergence(p, p) == 0).all()  # p (log p - log p) is exactly 0
    entropy = ce.entropy(p)
    assert (entropy >= 0).all() and (entropy <= np.log(p.shape[-1]) + 1e-12).all()


@settings(max_examples=60, deadline=None)
@given(_two_distributions(), st.sampled_from(["sum", "none", "batchmean"]))
def test_kl_div_sum_is_none_then_sum_and_non_negative(
    data: tuple[np.ndarray, np.ndarray], reduction: str
) -> None:
    p, q = data
    none = ce.kl_div(np.log(q), p, reduction="none")
    value = ce.kl_div(np.log(q), p, reduction=reduction)
    expected = {"sum": none.sum(), "none": none, "batchmean": none.sum() / p.shape[0]}[reduction]
    np.testing.assert_allclose(value, expected, rtol=1e-12, atol=1e-15)
    assert np.sum(value) >= -1e-12
