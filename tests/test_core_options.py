"""The NumPy core's ``z_loss``, ``softcap`` and ``sample_weight`` (docs/guide/options.rst).

What is measured, all in float64 unless a test says otherwise:

- the closed-form gradient of :func:`crossentropy.cross_entropy` against central differences,
  for every combination of the options with class weights and label smoothing, ignored
  targets, each reduction, index and probability targets, shapes (C,), (N, C), (N, C, d);
- values and gradients against a composition of plain torch ops (``torch.tanh``,
  ``F.cross_entropy(..., reduction="none")``, ``torch.logsumexp``, a gather of the class
  weights) differentiated by autograd, with a random upstream gradient for ``"none"``;
- properties (Hypothesis): the options' neutral values give the call without them bit for bit,
  sample weights of ones give the unweighted loss bit for bit, the loss is linear in the
  sample weights, ``"mean"``'s denominator ignores them, ``softcap -> inf`` is the identity;
- two transcriptions of other libraries' definitions (Liger-Kernel's z-loss, Gemma 2's
  softcap), written out independently of the library;
- edge cases (infinite logits, ignored positions, blocks, memory, dtypes, inputs not written)
  and the error of every bad argument, message pinned.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce
from conftest import central_difference, tol
from crossentropy import categorical

C = 5
IGNORE = -100
SHAPES = {"C": (C,), "NC": (4, C), "NCd": (3, C, 2)}
REDUCTIONS = ("none", "sum", "mean")
KINDS = ("index", "prob")
vg = ce.value_and_grad(ce.cross_entropy)


def _class_axis(shape: tuple[int, ...]) -> int:
    return 0 if len(shape) == 1 else 1


def _positions(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The target positions' shape: ``shape`` without the class axis."""
    ax = _class_axis(shape)
    return shape[:ax] + shape[ax + 1 :]


def _case(
    rng: np.random.Generator, shape: tuple[int, ...], kind: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Logits, a target (one ignored position for index targets, when there are two or more)
    and sample weights of both signs."""
    x = rng.normal(scale=2.0, size=shape)
    pos = _positions(shape)
    n_classes = shape[_class_axis(shape)]
    if kind == "index":
        t = np.asarray(rng.integers(0, n_classes, size=pos))
        if t.size > 1:
            t.reshape(-1)[1] = IGNORE
    else:
        p = np.asarray(rng.dirichlet(np.ones(n_classes), size=pos))  # classes last
        t = np.moveaxis(p, -1, _class_axis(shape))
    s = np.asarray(rng.normal(scale=1.5, size=pos))
    return x, t, s


# Every combination of the three options with class weights and label smoothing.
GRID = [
    dict(
        zip(("weight", "label_smoothing", "z_loss", "softcap", "sample_weight"), combo, strict=True)
    )
    for combo in itertools.product(
        (False, True), (0.0, 0.15), (0.0, 0.05), (None, 1.5), (False, True)
    )
]


def _grid_id(opts: dict[str, Any]) -> str:
    parts = [
        "w" if opts["weight"] else "",
        "ls" if opts["label_smoothing"] else "",
        "z" if opts["z_loss"] else "",
        "cap" if opts["softcap"] else "",
        "sw" if opts["sample_weight"] else "",
    ]
    return "-".join(p for p in parts if p) or "plain"


def _kwargs(
    rng: np.random.Generator, opts: dict[str, Any], s: np.ndarray, reduction: str
) -> dict[str, Any]:
    return {
        "weight": rng.uniform(0.3, 2.0, size=C) if opts["weight"] else None,
        "ignore_index": IGNORE,
        "reduction": reduction,
        "label_smoothing": opts["label_smoothing"],
        "z_loss": opts["z_loss"],
        "softcap": opts["softcap"],
        "sample_weight": s if opts["sample_weight"] else None,
    }


# ---------------------------------------------------------------------------------------------
# closed form vs central differences
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("opts", GRID, ids=_grid_id)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_gradient_matches_central_differences(
    rng: np.random.Generator,
    kind: str,
    shape: tuple[int, ...],
    reduction: str,
    opts: dict[str, Any],
) -> None:
    x, t, s = _case(rng, shape, kind)
    kw = _kwargs(rng, opts, s, reduction)
    value, grad = vg(x, t, **kw)
    np.testing.assert_array_equal(value, ce.cross_entropy(x, t, **kw))
    assert grad.shape == x.shape and grad.dtype == x.dtype
    fd = central_difference(lambda a: ce.cross_entropy(a, t, **kw), x, relative=True)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


# ---------------------------------------------------------------------------------------------
# parity with a composition of plain torch ops, differentiated by autograd
# ---------------------------------------------------------------------------------------------


def _torch_reference(torch: Any, x: Any, t: Any, kw: dict[str, Any]) -> Any:
    """Per-position (``"none"``) or reduced loss, from the definition in options.rst, in plain
    torch ops: softcap with ``torch.tanh``, the cross-entropy of ``F.cross_entropy`` with
    ``reduction="none"``, the z-loss from ``torch.logsumexp`` and a gather of the class
    weights, the reductions by hand."""
    import torch.nn.functional as F

    ax = 0 if x.dim() == 1 else 1
    cap = kw["softcap"]
    xs = x if cap is None else cap * torch.tanh(x / cap)
    w = None if kw["weight"] is None else torch.tensor(kw["weight"])
    per = F.cross_entropy(
        xs,
        t,
        weight=w,
        ignore_index=kw["ignore_index"],
        reduction="none",
        label_smoothing=kw["label_smoothing"],
    )
    lse = torch.logsumexp(xs, dim=ax)
    if t.dtype == torch.int64:
        keep = t != kw["ignore_index"]
        safe = torch.where(keep, t, 0)
        w_y = keep.double() if w is None else torch.where(keep, w[safe], 0.0)
        denom = w_y.sum()
    else:
        keep = torch.ones_like(lse, dtype=torch.bool)
        w_y = torch.ones_like(lse)
        denom = torch.tensor(float(lse.numel()), dtype=torch.float64)
    per = per + kw["z_loss"] * w_y * lse**2
    if kw["sample_weight"] is not None:
        per = per * torch.tensor(kw["sample_weight"])
    per = torch.where(keep, per, 0.0)
    if kw["reduction"] == "none":
        return per
    return per.sum() if kw["reduction"] == "sum" else per.sum() / denom


@pytest.mark.parametrize("opts", GRID, ids=_grid_id)
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", list(SHAPES.values()), ids=list(SHAPES))
@pytest.mark.parametrize("kind", KINDS)
def test_matches_torch_composition_float64(
    rng: np.random.Generator,
    kind: str,
    shape: tuple[int, ...],
    reduction: str,
    opts: dict[str, Any],
) -> None:
    torch = pytest.importorskip("torch")
    x, t, s = _case(rng, shape, kind)
    kw = _kwargs(rng, opts, s, reduction)
    xt = torch.tensor(x, requires_grad=True)
    ref = _torch_reference(torch, xt, torch.tensor(t), kw)
    if reduction == "none":
        # "not the last layer": a random upstream gradient u. Ours is the gradient of the sum,
        # and sum_i u_i s_i l_i is the loss with sample weights u * s.
        u = rng.normal(size=ref.shape)
        ref.backward(torch.tensor(u))
        ours_kw = {**kw, "sample_weight": u * (s if opts["sample_weight"] else 1.0)}
        _, grad = vg(x, t, **ours_kw)
    else:
        ref.backward()
        _, grad = vg(x, t, **kw)
    value = ce.cross_entropy(x, t, **kw)
    np.testing.assert_allclose(value, ref.detach().numpy(), **tol(np.float64))
    assert xt.grad is not None
    np.testing.assert_allclose(grad, xt.grad.numpy(), **tol(np.float64))


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------


@st.composite
def _problems(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Logits of any layout (empty batches included), a target of either kind and the
    options that already exist (weights, smoothing, reduction)."""
    n_classes = draw(st.integers(1, 6))
    layout = draw(st.sampled_from(("C", "NC", "NCd")))
    if layout == "C":
        shape: tuple[int, ...] = (n_classes,)
    elif layout == "NC":
        shape = (draw(st.integers(0, 5)), n_classes)
    else:
        shape = (draw(st.integers(1, 3)), n_classes, draw(st.integers(1, 3)))
    x = draw(hnp.arrays(np.float64, shape, elements=st.floats(-50, 50)))
    pos = _positions(shape)
    if draw(st.booleans()):
        labels = st.sampled_from([*range(n_classes), IGNORE])
        t = draw(hnp.arrays(np.int64, pos, elements=labels))
    else:
        t = draw(hnp.arrays(np.float64, shape, elements=st.floats(0, 1)))
    weight = draw(st.none() | hnp.arrays(np.float64, (n_classes,), elements=st.floats(0.1, 3)))
    kw = {
        "weight": weight,
        "label_smoothing": draw(st.sampled_from((0.0, 0.1))),
        "reduction": draw(st.sampled_from(REDUCTIONS)),
    }
    return x, t, kw


def _bitwise_equal(a: np.ndarray, b: np.ndarray) -> None:
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes(), (a, b)  # NaN included, and the sign of zero


@settings(max_examples=200, deadline=None)
@given(_problems(), st.sampled_from([0.0, 0, -0.0, np.float32(0.0), np.int64(0)]))
def test_neutral_values_give_the_call_without_the_options_bit_for_bit(
    problem: tuple[np.ndarray, np.ndarray, dict[str, Any]], zero: Any
) -> None:
    """The signature's defaults are the options' neutral values, whichever way a zero z-loss
    is spelled. (Bit-for-bit equality with the implementation before the options was checked
    out of tree, on 900 cases of every dtype, shape, reduction and target kind.)"""
    x, t, kw = problem
    plain_v, plain_g = vg(x, t, **kw)
    value, grad = vg(x, t, **kw, z_loss=zero, softcap=None, sample_weight=None)
    _bitwise_equal(value, plain_v)
    _bitwise_equal(grad, plain_g)
    _bitwise_equal(ce.cross_entropy(x, t, **kw, z_loss=zero), ce.cross_entropy(x, t, **kw))


@settings(max_examples=200, deadline=None)
@given(_problems(), st.sampled_from([0.0, 1e-3]), st.sampled_from([None, 5.0]))
def test_sample_weights_of_one_give_the_unweighted_loss_bit_for_bit(
    problem: tuple[np.ndarray, np.ndarray, dict[str, Any]], z: float, cap: float | None
) -> None:
    x, t, kw = problem
    kw = {**kw, "z_loss": z, "softcap": cap}
    ones = np.ones(_positions(x.shape))
    plain_v, plain_g = vg(x, t, **kw)
    value, grad = vg(x, t, **kw, sample_weight=ones)
    _bitwise_equal(value, plain_v)
    _bitwise_equal(grad, plain_g)


@settings(max_examples=150, deadline=None)
@given(_problems(), st.floats(-4, 4), st.integers(0, 2**32 - 1))
def test_loss_and_gradient_are_linear_in_the_sample_weights(
    problem: tuple[np.ndarray, np.ndarray, dict[str, Any]], k: float, seed: int
) -> None:
    x, t, kw = problem
    kw = {**kw, "z_loss": 1e-2, "softcap": 20.0}
    rng = np.random.default_rng(seed)
    s1, s2 = (rng.normal(size=_positions(x.shape)) for _ in range(2))
    v1, g1 = vg(x, t, **kw, sample_weight=s1)
    v2, g2 = vg(x, t, **kw, sample_weight=s2)
    vk, gk = vg(x, t, **kw, sample_weight=k * s1)
    v12, g12 = vg(x, t, **kw, sample_weight=s1 + s2)
    unweighted, unweighted_g = vg(x, t, **{**kw, "reduction": "none"})
    atol = 1e-12 * (1 + float(np.sum(np.abs(unweighted[np.isfinite(unweighted)]))))
    gtol = 1e-12 * (1 + float(np.abs(unweighted_g).sum()))
    np.testing.assert_allclose(vk, k * v1, rtol=1e-12, atol=atol)
    np.testing.assert_allclose(v12, v1 + v2, rtol=1e-12, atol=atol)
    np.testing.assert_allclose(gk, k * g1, rtol=1e-12, atol=gtol)
    np.testing.assert_allclose(g12, g1 + g2, rtol=1e-12, atol=gtol)


@settings(max_examples=150, deadline=None)
@given(_problems(), st.integers(0, 2**32 - 1))
def test_mean_divides_by_the_same_denominator_with_sample_weights(
    problem: tuple[np.ndarray, np.ndarray, dict[str, Any]], seed: int
) -> None:
    """``"mean"`` is ``"sum"`` over the denominator of the call without sample weights: the
    kept targets' class-weight sum (index targets) or the number of positions."""
    x, t, kw = problem
    kw = {**kw, "z_loss": 1e-2}
    s = np.random.default_rng(seed).normal(size=_positions(x.shape))
    if t.dtype.kind == "i":
        kept = t[t != IGNORE]
        denom = float(len(kept) if kw["weight"] is None else np.sum(kw["weight"][kept]))
    else:
        denom = float(np.prod(_positions(x.shape)))
    mean = ce.cross_entropy(x, t, **{**kw, "reduction": "mean"}, sample_weight=s)
    total = ce.cross_entropy(x, t, **{**kw, "reduction": "sum"}, sample_weight=s)
    if denom == 0:
        assert np.isnan(mean)
    else:
        np.testing.assert_allclose(mean, total / denom, rtol=1e-12, atol=1e-300)


def test_a_position_of_sample_weight_zero_still_counts_in_the_mean(
    rng: np.random.Generator,
) -> None:
    x, t, _ = _case(rng, (4, C), "index")
    t[:] = [0, 1, 2, 3]
    per = ce.cross_entropy(x, t, reduction="none")
    mean = ce.cross_entropy(x, t, sample_weight=np.array([1.0, 0.0, 0.0, 0.0]))
    np.testing.assert_allclose(mean, per[0] / 4, **tol(np.float64))
    # dropping a position from the mean is ignore_index's job
    dropped = ce.cross_entropy(x, np.array([0, IGNORE, IGNORE, IGNORE]))
    np.testing.assert_allclose(dropped, per[0], **tol(np.float64))


@settings(max_examples=150, deadline=None)
@given(_problems())
def test_softcap_tends_to_the_identity(
    problem: tuple[np.ndarray, np.ndarray, dict[str, Any]],
) -> None:
    """``c tanh(x / c) = x (1 - x^2 / 3c^2 + ...)``: with ``|x| <= 50`` and ``c = 1e8`` the
    relative change is below 1e-13."""
    x, t, kw = problem
    kw = {**kw, "z_loss": 1e-3}
    value, grad = vg(x, t, **kw)
    capped, capped_g = vg(x, t, **kw, softcap=1e8)
    np.testing.assert_allclose(capped, value, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(capped_g, grad, rtol=1e-10, atol=1e-12)
    # and a small cap does change the result (the option is not ignored) where a kept row's
    # logits spread (class and sample weights, which may be 0, left out)
    if x.size and t.dtype.kind == "i":
        spread = np.ptp(x, axis=1 if x.ndim >= 2 else 0)
        if np.any((t != IGNORE) & (spread > 1.0)):
            plain = {k: v for k, v in kw.items() if k not in ("weight", "sample_weight")}
            small = vg(x, t, **plain, softcap=0.1)[1]
            assert not np.allclose(small, vg(x, t, **plain)[1])


# ---------------------------------------------------------------------------------------------
# other libraries' definitions, written out
# ---------------------------------------------------------------------------------------------


def _liger_cross_entropy(
    x: np.ndarray,
    y: np.ndarray,
    *,
    lse_square_scale: float,
    label_smoothing: float,
    softcap: float | None,
    reduction: str,
    ignore_index: int = IGNORE,
) -> tuple[float, np.ndarray]:
    """Liger-Kernel's ``liger_cross_entropy_kernel`` (no class weights), one row at a time,
    transcribed from linkedin/Liger-Kernel ``src/liger_kernel/ops/cross_entropy.py``:

    - ``X = softcap * tanh(X / softcap)``; ``lse = m + log d`` (online max and sum);
    - ``loss = lse - X_y``; with smoothing ``eps = label_smoothing / V``,
      ``smooth_loss = sum(-eps * X) + label_smoothing * lse`` and
      ``loss = loss * (1 - label_smoothing) + smooth_loss``;
    - ``z_loss = lse_square_scale * lse * lse``; ``"mean"`` divides ``loss`` and ``z_loss`` by
      ``n_non_ignore``; ``loss += z_loss``; an ignored row has loss 0 and gradient 0;
    - ``dx_i = ((1 + 2 * lse_square_scale * lse) * softmax(x_i) - eps) / N`` and
      ``dx_y = dx_i - (1 - label_smoothing) / N``, then times ``1 - tanh^2(x / softcap)``.
    """
    n_rows, n_cols = x.shape
    n_non_ignore = int(np.sum(y != ignore_index))
    total = 0.0
    dx = np.zeros_like(x)
    for i in range(n_rows):
        if y[i] == ignore_index:
            continue
        row = x[i]
        if softcap is not None:
            intermediate = np.tanh(row / softcap)
            row = softcap * intermediate
        m = row.max()
        d = np.sum(np.exp(row - m))
        lse = m + np.log(d)
        eps = label_smoothing / n_cols
        loss = lse - row[y[i]]
        if label_smoothing > 0:
            smooth_loss = np.sum(-eps * row) + label_smoothing * lse
            loss = loss * (1 - label_smoothing) + smooth_loss
        z_loss = lse_square_scale * lse * lse
        n = n_non_ignore if reduction == "mean" else 1
        total += loss / n + z_loss / n
        softmax = np.exp(row - m) / d
        g = (1 + 2 * lse_square_scale * lse) * softmax - eps
        g[y[i]] -= 1 - label_smoothing
        g /= n
        if softcap is not None:
            g *= 1 - intermediate * intermediate
        dx[i] = g
    return total, dx


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("softcap", [None, 4.0])
def test_z_loss_is_liger_kernels(
    rng: np.random.Generator, reduction: str, label_smoothing: float, softcap: float | None
) -> None:
    """Without class weights our z-loss is Liger-Kernel's ``lse_square_scale`` (and the PaLM
    z-loss, 1e-4 there): ``lse_square_scale * lse**2`` per non-ignored token, the mean over the
    non-ignored tokens. Source: linkedin/Liger-Kernel, ``src/liger_kernel/ops/cross_entropy.py``
    (``liger_cross_entropy_kernel``, "An auxiliary loss, z_loss")."""
    x = rng.normal(scale=3.0, size=(9, 11))
    y = rng.integers(0, 11, size=9)
    y[[2, 5]] = IGNORE
    z = 0.05  # large enough that the z-loss moves the loss and the gradient measurably
    ref, ref_grad = _liger_cross_entropy(
        x,
        y,
        lse_square_scale=z,
        label_smoothing=label_smoothing,
        softcap=softcap,
        reduction=reduction,
    )
    kw = {"reduction": reduction, "label_smoothing": label_smoothing, "softcap": softcap}
    value, grad = vg(x, y, **kw, z_loss=z)
    np.testing.assert_allclose(value, ref, **tol(np.float64))
    np.testing.assert_allclose(grad, ref_grad, **tol(np.float64))
    assert abs(value - ce.cross_entropy(x, y, **kw)) > 1e-2  # the z-loss is really there


def test_softcap_is_gemma2s_final_logit_softcapping(rng: np.random.Generator) -> None:
    """Gemma 2 caps its output logits with ``logits = logits / cap; logits = tanh(logits);
    logits = logits * cap`` (cap = ``final_logit_softcapping`` = 30.0), then takes the usual
    cross-entropy. Source: huggingface/transformers,
    ``src/transformers/models/gemma2/modeling_gemma2.py`` (``Gemma2ForCausalLM.forward``) and
    ``configuration_gemma2.py`` (``final_logit_softcapping=30.0``)."""
    cap = 30.0
    logits = rng.normal(scale=40.0, size=(6, 50))  # beyond the cap: it bends them
    labels = rng.integers(0, 50, size=6)
    capped = logits / cap
    capped = np.tanh(capped)
    capped = capped * cap
    m = capped.max(axis=1, keepdims=True)
    log_softmax = capped - m - np.log(np.exp(capped - m).sum(axis=1, keepdims=True))
    reference = -np.mean(log_softmax[np.arange(6), labels])
    np.testing.assert_allclose(ce.cross_entropy(logits, labels, softcap=cap), reference, rtol=1e-12)
    assert abs(ce.cross_entropy(logits, labels) - reference) > 1.0  # the cap matters here


def test_the_guides_example_runs() -> None:
    """The code block of docs/guide/options.rst runs and its assertion holds."""
    text = (Path(__file__).resolve().parents[1] / "docs" / "guide" / "options.rst").read_text()
    match = re.search(r"\.\. code-block:: python\n\n((?:   .*\n|\n)+)", text)
    assert match is not None
    code = "\n".join(line[3:] for line in match.group(1).splitlines())
    namespace: dict[str, Any] = {}
    exec(compile(code, "options.rst", "exec"), namespace)
    assert namespace["grad"].shape == (2, 3)


# ---------------------------------------------------------------------------------------------
# edge cases
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _no_warnings() -> Iterator[None]:
    """Any warning (a NumPy overflow or invalid-value one included) fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


@pytest.mark.parametrize("kind", KINDS)
def test_softcap_makes_infinite_logits_finite(kind: str) -> None:
    """+inf becomes c and -inf becomes -c: a finite loss, and no gradient through the
    infinite logits (the slope 1 - tanh^2 is 0 there)."""
    x = np.array([[np.inf, 0.0, -np.inf]])
    t = np.array([1]) if kind == "index" else np.array([[0.2, 0.5, 0.3]])
    cap = 2.0
    with _no_warnings():
        value, grad = vg(x, t, softcap=cap, reduction="sum")
    capped = np.array([[cap, 0.0, -cap]])
    np.testing.assert_allclose(value, ce.cross_entropy(capped, t, reduction="sum"), rtol=1e-15)
    assert np.isfinite(value)
    np.testing.assert_array_equal(grad[:, [0, 2]], 0.0)
    _, capped_grad = vg(capped, t, reduction="sum")
    np.testing.assert_allclose(grad[:, 1], capped_grad[:, 1], rtol=1e-15)


def test_with_softcap_a_minus_inf_logit_no_longer_masks_its_class() -> None:
    x = np.array([0.0, -np.inf])
    assert ce.cross_entropy(x, np.array(1)) == np.inf
    np.testing.assert_allclose(
        ce.cross_entropy(x, np.array(1), softcap=3.0), np.log(1 + np.exp(-3.0)) + 3.0
    )


@pytest.mark.parametrize("sign", [1.0, -1.0])
@pytest.mark.parametrize("kind", KINDS)
def test_z_loss_with_a_plus_inf_logit_is_the_limit_not_nan(kind: str, sign: float) -> None:
    """Without a softcap, a +inf logit makes lse = +inf: the z-loss is inf, and its gradient
    2 z lse p is (the sign of the sample weight times) inf on the +inf logit and 0 where
    p = 0 (the limit of t e^-t), not inf * 0 = NaN."""
    x = np.array([[np.inf, 0.0, -np.inf], [0.0, 1.0, 2.0]])
    t = np.array([0, 2]) if kind == "index" else np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    s = np.array([sign, 1.0])
    with _no_warnings():
        value, grad = vg(x, t, z_loss=1e-3, sample_weight=s, reduction="none")
    assert value[0] == sign * np.inf
    assert grad[0, 0] == sign * np.inf
    np.testing.assert_array_equal(grad[0, 1:], 0.0)
    # the finite row is unaffected by its neighbour
    row_v, row_g = vg(x[1:], t[1:], z_loss=1e-3, reduction="none")
    np.testing.assert_array_equal(value[1:], row_v)
    np.testing.assert_array_equal(grad[1:], row_g)


def test_ignored_positions_contribute_zero_whatever_their_sample_weight(
    rng: np.random.Generator,
) -> None:
    x = rng.normal(size=(3, C))
    x[1, 0] = np.inf  # an ignored row with an infinite lse, too
    y = np.array([0, IGNORE, 3])
    s = np.array([0.5, np.inf, 2.0])
    kw: dict[str, Any] = {"z_loss": 0.1, "label_smoothing": 0.1}
    with _no_warnings():
        none, grad = vg(x, y, **kw, sample_weight=s, reduction="none")
    assert none[1] == 0.0
    np.testing.assert_array_equal(grad[1], 0.0)
    finite = np.array([0.5, 0.0, 2.0])
    for reduction in ("sum", "mean"):
        with _no_warnings():
            value, g = vg(x, y, **kw, sample_weight=s, reduction=reduction)
        np.testing.assert_array_equal(
            value, ce.cross_entropy(x, y, **kw, sample_weight=finite, reduction=reduction)
        )
        assert np.all(np.isfinite(g)) and np.all(g[1] == 0.0)


def test_every_target_ignored_with_the_options() -> None:
    x = np.zeros((2, 3))
    y = np.full(2, IGNORE)
    kw: dict[str, Any] = {"z_loss": 0.1, "softcap": 2.0, "sample_weight": np.array([1.0, -2.0])}
    with _no_warnings():
        mean, grad = vg(x, y, **kw)
        total = ce.cross_entropy(x, y, **kw, reduction="sum")
    assert np.isnan(mean)  # 0/0, as in PyTorch
    np.testing.assert_array_equal(grad, 0.0)
    assert total == 0.0


def test_nan_logits_are_refused_with_softcap() -> None:
    x = np.array([[0.0, np.nan], [1.0, 2.0]])
    with pytest.raises(ValueError, match=r"^cross_entropy: input must not contain NaN, got 1"):
        ce.cross_entropy(x, np.array([0, 1]), softcap=5.0)
    with pytest.raises(ValueError, match=r"^cross_entropy: input must not contain NaN, got 1"):
        vg(x, np.array([[0.5, 0.5], [1.0, 0.0]]), softcap=5.0, z_loss=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_inputs_are_not_written(rng: np.random.Generator, kind: str) -> None:
    x, t, s = _case(rng, (3, C, 2), kind)
    w = rng.uniform(0.5, 2.0, size=C)
    x32 = x.astype(np.float32)  # the direct path writes into the gradient, never the input
    arrays = (x, x32, t, s, w)
    before = [a.copy() for a in arrays]
    for logits in (x, x32):
        for reduction in REDUCTIONS:
            vg(logits, t, w, z_loss=0.1, softcap=2.0, sample_weight=s, reduction=reduction)
            ce.cross_entropy(logits, t, w, z_loss=0.1, softcap=2.0, sample_weight=s)
    for a, b in zip(arrays, before, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("kind", KINDS)
def test_dtypes(rng: np.random.Generator, dtype: Any, kind: str) -> None:
    x, t, s = _case(rng, (6, C), kind)
    x = x.astype(dtype).astype(np.float64)  # exactly representable in dtype
    kw: dict[str, Any] = {"z_loss": 0.05, "softcap": 3.0, "sample_weight": s}
    ref_v, ref_g = vg(x, t, **kw)
    low_t = t.astype(dtype) if kind == "prob" else t
    value, grad = vg(x.astype(dtype), low_t, **kw)
    assert value.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(value, ref_v, **tol(dtype))
    np.testing.assert_allclose(grad, ref_g, **tol(dtype))


@pytest.mark.parametrize("kind", KINDS)
def test_blocks_give_the_same_result_as_one_block(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    x, t, _ = _case(rng, (37, 11), kind)
    x = x.astype(np.float32)
    t = t.astype(np.float32) if kind == "prob" else np.asarray(rng.integers(0, 11, size=37))
    s = rng.normal(size=37)
    kw: dict[str, Any] = {"z_loss": 0.05, "softcap": 2.0, "sample_weight": s, "reduction": "none"}
    one_v, one_g = vg(x, t, **kw)
    monkeypatch.setattr(categorical, "_BLOCK_BYTES", 5 * 11 * 4)  # 5 rows per block
    v, g = vg(x, t, **kw)
    np.testing.assert_array_equal(v, one_v)  # rows are independent: blocking changes no bit
    np.testing.assert_array_equal(g, one_g)
    x[33, 2] = np.nan  # a NaN in a later block is still found through the softcap
    with pytest.raises(ValueError, match=r"^cross_entropy: input must not contain NaN, got 1"):
        vg(x, t, **kw)


def test_softcap_allocates_one_block_not_the_logits(rng: np.random.Generator) -> None:
    """The softcapped logits exist one block at a time: memory above the gradient is one more
    block than without the softcap."""
    import tracemalloc

    x = rng.standard_normal((256, 4096)).astype(np.float32)  # 4 MiB, several blocks
    t = rng.integers(0, 4096, 256)
    s = rng.normal(size=256).astype(np.float32)
    kw: dict[str, Any] = {"softcap": 30.0, "z_loss": 1e-4, "sample_weight": s}
    vg(x[:2], t[:2], **{**kw, "sample_weight": s[:2]})  # warm up
    tracemalloc.start()
    _, grad = vg(x, t, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    block = categorical._BLOCK_BYTES
    assert peak <= grad.nbytes + block + block // 4 + 64 * 1024
    tracemalloc.start()
    ce.cross_entropy(x, t, **kw)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak <= 2 * block + 64 * 1024  # the scratch block and the softcap's block


def test_value_and_grad_of_a_partial_binding_the_options(rng: np.random.Generator) -> None:
    x, t, s = _case(rng, (4, C), "index")
    bound = functools.partial(ce.cross_entropy, z_loss=1e-2, softcap=4.0)
    value, grad = ce.value_and_grad(bound)(x, t, sample_weight=s)
    ref_v, ref_g = vg(x, t, z_loss=1e-2, softcap=4.0, sample_weight=s)
    np.testing.assert_array_equal(value, ref_v)
    np.testing.assert_array_equal(grad, ref_g)


def test_the_options_are_keyword_only() -> None:
    with pytest.raises(TypeError):
        ce.cross_entropy(np.zeros((1, 2)), np.array([0]), None, -100, "mean", 0.0, 0.1)  # type: ignore[misc]


# ---------------------------------------------------------------------------------------------
# validation (messages pinned)
# ---------------------------------------------------------------------------------------------

_X = np.zeros((2, 3))
_Y = np.array([0, 1])
_P = np.full((2, 3), 1 / 3)

ERRORS = [
    ({"z_loss": True}, TypeError, "z_loss must be a finite float >= 0, got bool True"),
    ({"z_loss": "0.1"}, TypeError, "z_loss must be a finite float >= 0, got str '0.1'"),
    ({"z_loss": None}, TypeError, "z_loss must be a finite float >= 0, got NoneType None"),
    ({"z_loss": np.array([0.1])}, TypeError, "z_loss must be a finite float >= 0, got array"),
    ({"z_loss": -1e-4}, ValueError, "z_loss must be a finite float >= 0, got -0.0001"),
    ({"z_loss": float("nan")}, ValueError, "z_loss must be a finite float >= 0, got nan"),
    ({"z_loss": float("inf")}, ValueError, "z_loss must be a finite float >= 0, got inf"),
    ({"softcap": False}, TypeError, "softcap must be None or a finite float > 0, got bool False"),
    ({"softcap": "30"}, TypeError, "softcap must be None or a finite float > 0, got str '30'"),
    ({"softcap": 0.0}, ValueError, "softcap must be None or a finite float > 0, got 0.0"),
    ({"softcap": -30}, ValueError, "softcap must be None or a finite float > 0, got -30.0"),
    ({"softcap": float("inf")}, ValueError, "softcap must be None or a finite float > 0, got inf"),
    ({"softcap": float("nan")}, ValueError, "softcap must be None or a finite float > 0, got nan"),
    (
        {"sample_weight": np.array([1, 2])},
        TypeError,
        "sample_weight must have a floating-point dtype, got dtype int64",
    ),
    (
        {"sample_weight": np.array([True, False])},
        TypeError,
        "sample_weight must have a floating-point dtype, got dtype bool",
    ),
    (
        {"sample_weight": np.array([1j, 2j])},
        TypeError,
        "sample_weight must have a floating-point dtype, got dtype complex128",
    ),
    (
        {"sample_weight": np.array([1.0, np.nan])},
        ValueError,
        "sample_weight must not contain NaN, got 1 NaN value(s)",
    ),
    (
        {"sample_weight": np.ones(3)},
        ValueError,
        "sample_weight must have shape (2,) (one weight per target position), got shape (3,)",
    ),
    (
        {"sample_weight": 1.0},  # no broadcasting, not even of a scalar
        ValueError,
        "sample_weight must have shape (2,) (one weight per target position), got shape ()",
    ),
    (
        {"sample_weight": np.ones((2, 1))},
        ValueError,
        "sample_weight must have shape (2,) (one weight per target position), got shape (2, 1)",
    ),
]


@pytest.mark.parametrize("target", [_Y, _P], ids=KINDS)
@pytest.mark.parametrize("fn", [ce.cross_entropy, vg], ids=["cross_entropy", "value_and_grad"])
@pytest.mark.parametrize(("kwargs", "kind", "message"), ERRORS)
def test_errors(
    fn: Any, target: np.ndarray, kwargs: dict[str, Any], kind: type[Exception], message: str
) -> None:
    with pytest.raises(kind, match="^" + re.escape(f"cross_entropy: {message}")):
        fn(_X, target, **kwargs)


def test_sample_weight_shape_of_a_probability_target_is_without_the_class_axis() -> None:
    x = np.zeros((2, 3, 4))
    p = np.full((2, 3, 4), 1 / 3)
    ce.cross_entropy(x, p, sample_weight=np.ones((2, 4)))  # accepted
    with pytest.raises(ValueError, match=re.escape("must have shape (2, 4) (one weight per")):
        ce.cross_entropy(x, p, sample_weight=np.ones((2, 3, 4)))


def test_sample_weight_torch_tensor_points_at_the_torch_backend() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^cross_entropy: sample_weight must be a NumPy array"):
        ce.cross_entropy(_X, _Y, sample_weight=torch.ones(2))
