"""Hypothesis properties of the categorical losses (cross_entropy, nll_loss, categorical CE)."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce

PROFILE = settings(max_examples=60, deadline=None)

LOGIT = st.floats(-30.0, 30.0, allow_nan=False, width=64)


@st.composite
def logits_and_labels(draw: st.DrawFn, min_classes: int = 1) -> tuple[np.ndarray, np.ndarray]:
    n = draw(st.integers(1, 6))
    c = draw(st.integers(min_classes, 6))
    z = draw(hnp.arrays(np.float64, (n, c), elements=LOGIT))
    y = draw(hnp.arrays(np.int64, (n,), elements=st.integers(0, c - 1)))
    return z, y


@st.composite
def distributions(draw: st.DrawFn, shape: tuple[int, ...]) -> np.ndarray:
    """Rows on the simplex (some entries exactly 0)."""
    raw = draw(hnp.arrays(np.float64, shape, elements=st.floats(0.0, 1.0)))
    raw[..., 0] += 1e-3  # never an all-zero row
    return raw / raw.sum(axis=-1, keepdims=True)


OPTIONS = st.fixed_dictionaries(
    {
        "reduction": st.sampled_from(["mean", "sum", "none"]),
        "label_smoothing": st.sampled_from([0.0, 0.1, 0.5]),
    }
)


def _one_hot(y: np.ndarray, c: int) -> np.ndarray:
    return np.eye(c)[y]


@PROFILE
@given(logits_and_labels(), OPTIONS, st.booleans())
def test_loss_is_non_negative(
    case: tuple[np.ndarray, np.ndarray], options: dict[str, Any], soft: bool
) -> None:
    z, y = case
    target = _one_hot(y, z.shape[1]) * 0.7 if soft else y  # soft targets need not sum to 1
    value = ce.cross_entropy(z, target, **options)
    assert np.all(value >= 0)
    assert np.all(ce.categorical_cross_entropy(ce.softmax(z), _one_hot(y, z.shape[1])) >= 0)


@PROFILE
@given(logits_and_labels(), OPTIONS, st.floats(-1e3, 1e3))
def test_softmax_cross_entropy_is_shift_invariant(
    case: tuple[np.ndarray, np.ndarray], options: dict[str, Any], shift: float
) -> None:
    z, y = case
    shifted = z + shift + np.arange(z.shape[0])[:, None]  # a different shift per row too
    v, g = ce.value_and_grad(ce.cross_entropy)(z, y, **options)
    vs, gs = ce.value_and_grad(ce.cross_entropy)(shifted, y, **options)
    # |shift| up to 1e3 costs its rounding: eps * 1e3 relative to the logits
    np.testing.assert_allclose(vs, v, rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(gs, g, rtol=1e-9, atol=1e-9)


@PROFILE
@given(st.data(), OPTIONS)
def test_gradient_rows_sum_to_zero_and_equal_a_minus_y(
    data: st.DataObject, options: dict[str, Any]
) -> None:
    z, y = data.draw(logits_and_labels())
    n, c = z.shape
    soft = data.draw(distributions((n, c)))
    reduction = options["reduction"]
    for target in (y, soft):
        _, g = ce.value_and_grad(ce.cross_entropy)(z, target, reduction=reduction)
        np.testing.assert_allclose(g.sum(axis=1), 0.0, atol=1e-12)
        # the article's result: dL/dz = a - y (per sample, before the mean's 1/n)
        y_dense = target if target.ndim == 2 else _one_hot(target, c)
        scale = n if reduction == "mean" else 1
        np.testing.assert_allclose(g * scale, ce.softmax(z) - y_dense, atol=1e-12)


@PROFILE
@given(
    hnp.arrays(np.float64, st.integers(1, 8), elements=LOGIT),
    st.data(),
    st.sampled_from(["mean", "sum", "none"]),
)
def test_binary_is_two_class_categorical(
    z: np.ndarray, data: st.DataObject, reduction: str
) -> None:
    bce = ce.binary_cross_entropy_with_logits
    t = data.draw(hnp.arrays(np.float64, z.shape, elements=st.floats(0.0, 1.0)))
    two = np.stack([np.zeros_like(z), z], axis=1)  # logits [0, z]: softmax = [1 - σ(z), σ(z)]
    target = np.stack([1 - t, t], axis=1)
    v2, g2 = ce.value_and_grad(ce.cross_entropy)(two, target, reduction=reduction)
    vb, gb = ce.value_and_grad(bce)(z, t, reduction=reduction)
    np.testing.assert_allclose(v2, vb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(g2[:, 1], gb, rtol=1e-10, atol=1e-12)
    # and with hard labels given as class indices
    labels = (t > 0.5).astype(np.int64)
    vi = ce.cross_entropy(two, labels, reduction=reduction)
    np.testing.assert_allclose(
        vi, bce(z, labels.astype(np.float64), reduction=reduction), rtol=1e-12, atol=1e-12
    )


@PROFILE
@given(
    logits_and_labels(),
    OPTIONS,
    st.booleans(),
    st.sampled_from([np.float64, np.float32]),
)
def test_index_targets_equal_one_hot_targets(
    case: tuple[np.ndarray, np.ndarray], options: dict[str, Any], weighted: bool, dtype: Any
) -> None:
    z, y = case
    z = z.astype(dtype)
    c = z.shape[1]
    onehot = _one_hot(y, c).astype(dtype)
    weight = np.linspace(0.5, 2.0, c).astype(dtype) if weighted else None
    if weighted and options["reduction"] == "mean":
        # PyTorch's weighted mean differs by kind: index targets divide by sum w[y], probability
        # targets by N. Compare the sums instead, the definition both share.
        options = {**options, "reduction": "sum"}
    vi, gi = ce.value_and_grad(ce.cross_entropy)(z, y, weight=weight, **options)
    vo, go = ce.value_and_grad(ce.cross_entropy)(z, onehot, weight=weight, **options)
    rtol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(vi, vo, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(gi, go, rtol=rtol, atol=rtol)


@PROFILE
@given(logits_and_labels(), st.sampled_from([0.0, 0.2]), st.booleans(), st.booleans())
def test_sum_is_none_then_sum(
    case: tuple[np.ndarray, np.ndarray], smoothing: float, weighted: bool, ignore: bool
) -> None:
    z, y = case
    c = z.shape[1]
    weight = np.linspace(0.5, 2.0, c) if weighted else None
    if ignore:
        y = y.copy()
        y[0] = -100
    kwargs: dict[str, Any] = {"weight": weight, "label_smoothing": smoothing}
    vs, gs = ce.value_and_grad(ce.cross_entropy)(z, y, reduction="sum", **kwargs)
    vn, gn = ce.value_and_grad(ce.cross_entropy)(z, y, reduction="none", **kwargs)
    np.testing.assert_allclose(vs, vn.sum(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gs, gn, rtol=1e-12, atol=1e-12)
    logp = ce.log_softmax(z)
    np.testing.assert_allclose(
        ce.nll_loss(logp, y, weight=weight, reduction="sum"),
        ce.nll_loss(logp, y, weight=weight, reduction="none").sum(),
        rtol=1e-12,
        atol=1e-12,
    )
    p = ce.softmax(z)
    np.testing.assert_allclose(
        ce.categorical_cross_entropy(p, _one_hot(y.clip(0), c), reduction="sum"),
        ce.categorical_cross_entropy(p, _one_hot(y.clip(0), c), reduction="none").sum(),
        rtol=1e-12,
    )


@PROFILE
@given(logits_and_labels(), st.sampled_from(["mean", "sum", "none"]))
def test_categorical_of_softmax_is_cross_entropy_of_logits(
    case: tuple[np.ndarray, np.ndarray], reduction: str
) -> None:
    z, y = case
    z = np.clip(z, -10, 10)  # keep p above the 1e-12 floor of the gradient (and the clamp)
    p = ce.softmax(z)
    onehot = _one_hot(y, z.shape[1])
    v_cat, g_cat = ce.value_and_grad(ce.categorical_cross_entropy)(p, onehot, reduction=reduction)
    v_ce, g_ce = ce.value_and_grad(ce.cross_entropy)(z, y, reduction=reduction)
    np.testing.assert_allclose(v_cat, v_ce, rtol=1e-9, atol=1e-12)
    # chain rule through the softmax Jacobian gives back the article's a - y
    jac_vec = p * (g_cat - np.sum(g_cat * p, axis=1, keepdims=True))
    np.testing.assert_allclose(jac_vec, g_ce, rtol=1e-8, atol=1e-12)
