"""sigmoid, log_sigmoid, softmax, log_softmax, logsumexp: torch parity, stability, derivatives."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce
from conftest import optional_import, tol

torch = optional_import("torch", "torch")  # the parity tests skip without torch
F = optional_import("torch.nn.functional", "torch")

ELEMENTWISE: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "sigmoid": (ce.sigmoid, torch.sigmoid),
    "log_sigmoid": (ce.log_sigmoid, F.logsigmoid),
}
ALONG_AXIS: dict[str, tuple[Callable[..., Any], Callable[..., Any]]] = {
    "softmax": (ce.softmax, lambda t, dim: torch.softmax(t, dim)),
    "log_softmax": (ce.log_softmax, lambda t, dim: torch.log_softmax(t, dim)),
    "logsumexp": (ce.logsumexp, lambda t, dim: torch.logsumexp(t, dim)),
}
ALL = {**ELEMENTWISE, **ALONG_AXIS}
DTYPES = [np.float64, np.float32]


def _tol(dtype: Any) -> dict[str, float]:
    return tol(np.dtype(dtype))


# ---------------------------------------------------------------------------------------------
# torch parity
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(), (9,), (4, 5), (2, 3, 4)])
@pytest.mark.parametrize("name", list(ELEMENTWISE))
def test_elementwise_match_torch(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], dtype: Any
) -> None:
    ours, theirs = ELEMENTWISE[name]
    z = (rng.standard_normal(shape) * 20).astype(dtype)
    out = ours(z)
    assert out.dtype == dtype and out.shape == shape
    np.testing.assert_allclose(out, theirs(torch.tensor(z)).numpy(), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("shape", "axis"), [((9,), -1), ((4, 5), 0), ((4, 5), 1), ((2, 3, 4), 1)])
@pytest.mark.parametrize("name", list(ALONG_AXIS))
def test_along_axis_match_torch(
    rng: np.random.Generator, name: str, shape: tuple[int, ...], axis: int, dtype: Any
) -> None:
    ours, theirs = ALONG_AXIS[name]
    z = (rng.standard_normal(shape) * 20).astype(dtype)
    out = ours(z, axis=axis)
    ref = theirs(torch.tensor(z), axis).numpy()
    assert out.dtype == dtype and out.shape == ref.shape
    np.testing.assert_allclose(out, ref, **_tol(dtype))


def test_minus_infinity_and_empty_slices_match_torch() -> None:
    x = np.array([[-np.inf, -np.inf], [0.0, -np.inf], [3.0, 3.0]])
    for name, (ours, theirs) in ALONG_AXIS.items():
        np.testing.assert_array_equal(ours(x), theirs(torch.tensor(x), -1).numpy(), err_msg=name)
    for shape in [(3, 0), (0,), (0, 3)]:
        for name, (ours, theirs) in ALONG_AXIS.items():
            out, ref = ours(np.zeros(shape)), theirs(torch.zeros(shape, dtype=torch.float64), -1)
            assert out.shape == tuple(ref.shape), (name, shape)
            np.testing.assert_array_equal(out, ref.numpy(), err_msg=name)


def test_empty_reduced_axis_regression() -> None:
    """Regression: an empty class axis raised numpy's 'zero-size array to reduction' error."""
    np.testing.assert_array_equal(ce.logsumexp(np.zeros((2, 0))), [-np.inf, -np.inf])
    assert ce.softmax(np.zeros((2, 0), np.float32)).shape == (2, 0)


# ---------------------------------------------------------------------------------------------
# stability
# ---------------------------------------------------------------------------------------------


TINY = float(np.finfo(np.float32).tiny)  # below it float32 is subnormal: absolute accuracy only


def test_stable_at_plus_minus_1e4_in_float32() -> None:
    z = np.array([-1e4, -100.0, -20.0, 0.0, 20.0, 100.0, 1e4], dtype=np.float32)
    ref = torch.tensor(z.astype(np.float64))
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # exp underflow is benign
        outs = {name: ours(z) for name, (ours, _) in ALL.items()}
    for name, out in outs.items():
        assert out.dtype == np.float32 and np.isfinite(out).all(), name
    np.testing.assert_allclose(outs["sigmoid"], torch.sigmoid(ref).numpy(), rtol=1e-6, atol=TINY)
    np.testing.assert_allclose(outs["log_sigmoid"], F.logsigmoid(ref).numpy(), rtol=1e-6, atol=TINY)
    assert outs["log_sigmoid"][0] == -1e4 and outs["log_sigmoid"][-1] == 0.0
    np.testing.assert_allclose(outs["logsumexp"], 1e4, rtol=1e-7)
    np.testing.assert_allclose(outs["log_softmax"], torch.log_softmax(ref, -1).numpy(), rtol=1e-6)
    np.testing.assert_allclose(outs["softmax"], torch.softmax(ref, -1).numpy(), rtol=1e-6)


def test_naive_formulas_fail_where_these_do_not() -> None:
    z = np.array([-200.0], dtype=np.float32)
    with np.errstate(all="ignore"):
        naive = np.log(1 / (1 + np.exp(-z)))
    assert np.isinf(naive[0])
    assert ce.log_sigmoid(z)[0] == np.float32(-200.0)
    # logsumexp keeps the small term that a plain log(sum(exp)) rounds away: log1p.
    assert ce.logsumexp(np.array([0.0, -40.0])) == pytest.approx(np.exp(-40.0), rel=1e-12)


def test_sigmoid_tails_keep_relative_accuracy() -> None:
    z = np.array([-700.0, -50.0, -30.0])
    np.testing.assert_allclose(ce.sigmoid(z), np.exp(z) / (1 + np.exp(z)), rtol=1e-14)
    e = np.exp([-30.0, -50.0])  # log σ(z) = -log1p(e^-z) = -(e^-z - e^-2z/2 + ...)
    np.testing.assert_allclose(ce.log_sigmoid(np.array([30.0, 50.0])), -(e - e**2 / 2), rtol=1e-15)


# ---------------------------------------------------------------------------------------------
# derivatives (central differences, float64)
# ---------------------------------------------------------------------------------------------


def _jacobian_fd(
    f: Callable[[np.ndarray], np.ndarray], x: np.ndarray, h: float = 1e-6
) -> np.ndarray:
    cols = []
    for i in range(x.size):
        e = np.zeros_like(x)
        e.flat[i] = h
        cols.append(((f(x + e) - f(x - e)) / (2 * h)).ravel())
    return np.stack(cols, axis=1)  # J[out, in]


def test_sigmoid_and_log_sigmoid_derivatives(rng: np.random.Generator) -> None:
    z = rng.standard_normal(6) * 4
    s = ce.sigmoid(z)
    np.testing.assert_allclose(np.diag(_jacobian_fd(ce.sigmoid, z)), s * (1 - s), rtol=1e-7)
    np.testing.assert_allclose(np.diag(_jacobian_fd(ce.log_sigmoid, z)), 1 - s, rtol=1e-7)
    np.testing.assert_allclose(1 - s, ce.sigmoid(-z), rtol=1e-14)  # log(1 - σ(z)) = log σ(-z)


def test_softmax_family_derivatives(rng: np.random.Generator) -> None:
    z = rng.standard_normal(5) * 3
    a = ce.softmax(z)
    jac = np.diag(a) - np.outer(a, a)  # ∂a_q/∂z_j = a_q (δ_qj - a_j)
    np.testing.assert_allclose(_jacobian_fd(ce.softmax, z), jac, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(
        _jacobian_fd(ce.log_softmax, z), np.eye(5) - a[None, :], rtol=1e-6, atol=1e-10
    )
    np.testing.assert_allclose(_jacobian_fd(ce.logsumexp, z)[0], a, rtol=1e-7, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# dtypes, inputs untouched, errors
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("name", list(ALL))
def test_dtype_is_preserved_and_input_untouched(
    rng: np.random.Generator, name: str, dtype: Any
) -> None:
    ours, _ = ALL[name]
    z = (rng.standard_normal((3, 4)) * 5).astype(dtype)
    saved = z.copy()
    out = ours(z)
    assert out.dtype == dtype
    assert not np.shares_memory(out, z)
    np.testing.assert_array_equal(z, saved)
    np.testing.assert_allclose(out, ours(z.astype(np.float64)), **_tol(dtype))


def test_python_scalars_and_zero_d() -> None:
    assert ce.sigmoid(0.0) == 0.5 and ce.sigmoid(0.0).dtype == np.float64
    assert ce.softmax(np.float32(3.0)) == 1.0 and ce.log_softmax(np.float32(3.0)) == 0.0
    assert (
        ce.logsumexp(np.float32(2.0)) == 2.0 and ce.logsumexp(np.float32(2.0)).dtype == np.float32
    )


def test_nan_propagates() -> None:
    for name, (ours, _) in ALL.items():
        with np.errstate(invalid="ignore"):
            out = ours(np.array([np.nan, 1.0]))
        assert np.isnan(out).any(), name


@pytest.mark.parametrize("name", list(ALL))
def test_errors_are_pinned(name: str) -> None:
    ours, _ = ALL[name]
    with pytest.raises(
        TypeError, match=f"^{name}: z must have a floating-point dtype, got dtype int64$"
    ):
        ours(np.array([1, 2]))
    with pytest.raises(
        TypeError, match=f"^{name}: z must have a floating-point dtype, got dtype complex128$"
    ):
        ours(np.array([1j]))
    if name in ALONG_AXIS:
        with pytest.raises(ValueError, match=re.escape(f"{name}: axis must be in [-2, 2), got 2")):
            ours(np.zeros((2, 2)), axis=2)
        with pytest.raises(
            TypeError, match=f"^{name}: axis must be an integer, got NoneType None$"
        ):
            ours(np.zeros((2, 2)), axis=None)


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

_logits = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=1, max_dims=3, max_side=6),
    elements=st.floats(-1e3, 1e3, allow_nan=False, width=64),
)


@settings(max_examples=80, deadline=None)
@given(_logits, st.floats(-1e3, 1e3))
def test_softmax_properties(z: np.ndarray, shift: float) -> None:
    a = ce.softmax(z)
    np.testing.assert_allclose(a.sum(-1), 1.0, rtol=1e-12)
    assert (a >= 0).all()
    np.testing.assert_allclose(ce.softmax(z + shift), a, rtol=1e-9, atol=1e-300)  # shift-invariant
    np.testing.assert_allclose(
        ce.log_softmax(z), z - ce.logsumexp(z)[..., None], rtol=1e-12, atol=1e-9
    )
    np.testing.assert_allclose(
        ce.logsumexp(z + shift), ce.logsumexp(z) + shift, rtol=1e-12, atol=1e-9
    )


@settings(max_examples=80, deadline=None)
@given(hnp.arrays(np.float64, 8, elements=st.floats(-700, 700, allow_nan=False)))
def test_sigmoid_symmetry(z: np.ndarray) -> None:
    np.testing.assert_allclose(ce.sigmoid(z) + ce.sigmoid(-z), 1.0, rtol=1e-15)
    np.testing.assert_allclose(
        ce.log_sigmoid(z) - ce.log_sigmoid(-z), z, rtol=1e-12, atol=1e-12
    )  # log(σ(z)/σ(-z)) = z


# --- regression: +inf logits gave NaN (inf - inf) instead of the mathematical limit ----------


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_softmax_of_plus_inf_logits_is_the_limit_not_nan(dtype: Any) -> None:
    inf = np.inf
    z = np.array([[inf, 0.0, -inf], [inf, 5.0, inf], [1.0, 2.0, 3.0], [-inf, -inf, -inf]], dtype)
    out = ce.softmax(z, axis=1)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out[0], [1.0, 0.0, 0.0])
    np.testing.assert_array_equal(out[1], [0.5, 0.0, 0.5])  # k = 2 +inf entries share the mass
    np.testing.assert_allclose(out[2], ce.softmax(z[2]), **tol(dtype))  # other rows unchanged
    assert np.isnan(out[3]).all()  # all -inf stays NaN, as in torch
    # along axis 0 too, and the limit is approached by large finite logits
    np.testing.assert_array_equal(ce.softmax(z[:2].T, axis=0), out[:2].T)
    big = np.where(np.isposinf(z[:2]), 1e4, np.where(np.isneginf(z[:2]), -1e4, z[:2]))
    np.testing.assert_allclose(ce.softmax(big.astype(np.float64)), out[:2], atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_log_softmax_of_plus_inf_logits_is_the_limit_not_nan(dtype: Any) -> None:
    inf = np.inf
    z = np.array([[inf, 0.0, -inf], [inf, 5.0, inf]], dtype)
    out = ce.log_softmax(z)
    assert out.dtype == dtype
    np.testing.assert_array_equal(out[0], [0.0, -inf, -inf])
    np.testing.assert_allclose(out[1], [-np.log(2), -inf, -np.log(2)], **tol(dtype))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(np.exp(out), ce.softmax(z))


def test_logsumexp_of_plus_inf_logits_is_inf() -> None:
    inf = np.inf
    z = np.array([[inf, 0.0, -inf], [inf, inf, 1.0], [0.0, 0.0, -inf]])
    out = ce.logsumexp(z)
    np.testing.assert_array_equal(out[:2], [inf, inf])
    np.testing.assert_allclose(out[2], np.log(2))
