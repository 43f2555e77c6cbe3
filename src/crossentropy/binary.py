r"""Binary cross-entropy, on probabilities and on logits, with closed-form gradients.

The article's first form, :math:`L = -\frac1n\sum_i [y_i\log a_i + (1-y_i)\log(1-a_i)]`, and
its stable twin on logits :math:`z` with :math:`a = \sigma(z)`, whose gradient
:math:`\sigma(z) - y` no longer carries the vanishing factor :math:`\sigma'(z)`.

Both follow ``torch.nn.functional`` (names, arguments, defaults, values and gradients), with
two deliberate differences: shapes never broadcast silently (``weight``/``pos_weight`` must
broadcast *to* ``input``'s shape, ``target`` must have it), and targets must lie in [0, 1]
for the logits version too (PyTorch checks this only for the probability version).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ._reduction import reduce, scale
from ._validation import (
    FloatArray,
    Reduction,
    check_broadcastable_to,
    check_probabilities,
    check_reduction,
    compute_dtype,
    float_array,
    input_and_target,
)
from .grad import gradient_of

# PyTorch's clamp of log(p) and log(1 - p) in binary_cross_entropy: p = 0 or 1 costs 100 nats.
LOG_CLAMP = -100.0
# PyTorch's floor for the gradient's denominator p(1 - p): EPSILON in its BCE backward kernel,
# a C float, so 1e-12 rounded to float32 (9.99999996e-13) in every dtype.
GRAD_EPS = float(np.float32(1e-12))


def _optional(w: ArrayLike | None, shape: tuple[int, ...], fn: str, arg: str) -> FloatArray | None:
    """Validate an optional weight that must broadcast to ``shape`` (never beyond it)."""
    if w is None:
        return None
    arr = float_array(w, fn, arg)
    check_broadcastable_to(arr, shape, fn, arg)
    return arr


def _dtypes(*arrays: FloatArray | None) -> np.dtype[Any]:
    return compute_dtype(*(a.dtype for a in arrays if a is not None))


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy (input: probabilities)
# ---------------------------------------------------------------------------------------------


class _Forward(NamedTuple):
    """What a loss's gradient reuses from its forward pass."""

    value: FloatArray  # reduced, in the input's dtype
    dtype: np.dtype[Any]  # the input's dtype
    size: int  # number of elements of the input
    a: FloatArray  # input (probabilities or logits) in the compute dtype
    t: FloatArray  # target in the compute dtype
    w: FloatArray | None  # weight in the compute dtype
    pos: FloatArray  # BCE with logits: p_w·y; BCE: unused (y)
    e: FloatArray  # BCE with logits: exp(-|z|); BCE: unused (empty)


def _weighted_reduce(
    values: FloatArray, w: FloatArray | None, reduction: str, dtype: np.dtype[Any]
) -> FloatArray:
    """Per-element losses times the optional weight, reduced, in the input's dtype."""
    if w is not None:
        values = values * w
    return reduce(values, reduction).astype(dtype, copy=False)


def _weighted_scale(grad: FloatArray, f: _Forward, reduction: str) -> FloatArray:
    """The per-element derivative times the weight and the reduction's factor, in ``f.dtype``."""
    if f.w is not None:
        grad = grad * f.w
    grad = grad * grad.dtype.type(scale(reduction, f.size))
    with np.errstate(over="ignore"):  # float16: BCE's ±1e12 slope at 0 and 1 is ±inf, as torch
        return grad.astype(f.dtype, copy=False)


def _bce(input: ArrayLike, target: ArrayLike, weight: ArrayLike | None, reduction: str) -> _Forward:
    fn = "binary_cross_entropy"
    check_reduction(reduction, fn)
    x, y = input_and_target(input, target, fn)
    check_probabilities(x, fn, "input")
    check_probabilities(y, fn, "target")
    w = _optional(weight, x.shape, fn, "weight")
    ct = _dtypes(x, y, w)
    p, t = x.astype(ct, copy=False), y.astype(ct, copy=False)
    with np.errstate(divide="ignore"):
        log_p = np.maximum(np.log(p), LOG_CLAMP)  # log 0 = -inf -> -100, as PyTorch
        log_q = np.maximum(np.log1p(-p), LOG_CLAMP)  # log(1 - p), exact near p = 0
    values = 0.0 - (t * log_p + (1.0 - t) * log_q)  # 0.0 - x: a perfect guess is +0, not -0
    wc = None if w is None else w.astype(ct, copy=False)
    value = _weighted_reduce(values, wc, reduction, x.dtype)
    return _Forward(value, x.dtype, x.size, p, t, wc, t, np.empty(0, ct))


def _bce_grad(f: _Forward, reduction: str) -> FloatArray:
    p, t, ct = f.a, f.t, f.a.dtype
    # d/dp of -(y log p + (1-y) log(1-p)) = (p - y) / (p (1 - p)); PyTorch floors the
    # denominator at 1e-12, so p = 0 or 1 gives a large finite slope, not the clamp's 0.
    grad = (p - t) / np.maximum(p * (1.0 - p), ct.type(GRAD_EPS))
    return _weighted_scale(grad, f, reduction)


def binary_cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> FloatArray:
    r"""Binary cross-entropy between predicted probabilities and targets.

    Parameters
    ----------
    input : array_like of float, shape (*)
        Predicted probabilities :math:`a`, every entry in [0, 1] (exact 0 and 1 allowed).
    target : array_like of float, shape (*), same as ``input``
        Targets :math:`y` in [0, 1]: hard labels 0/1 or soft targets.
    weight : array_like of float, optional
        Per-element rescaling, broadcastable to ``input``'s shape (e.g. shape (C,) against
        (N, C)). ``"mean"`` still divides by the number of elements, as in PyTorch.
    reduction : {"mean", "sum", "none"}, default "mean"

    Returns
    -------
    ndarray, ``input``'s dtype
        Shape () for ``"mean"``/``"sum"``, ``input``'s shape for ``"none"``.

    Raises
    ------
    TypeError
        ``input``, ``target`` or ``weight`` not floating point.
    ValueError
        Unknown ``reduction``; shapes differ; NaN; ``input`` or ``target`` outside [0, 1]
        (PyTorch raises for both as well); ``weight`` not broadcastable to ``input``.

    Notes
    -----
    .. math:: \ell_i = -w_i\,[\,y_i \max(\log a_i, -100) + (1-y_i)\max(\log(1-a_i), -100)\,]

    The clamp at −100 is PyTorch's: a probability of exactly 0 or 1 costs at most 100 nats.
    The gradient, as PyTorch computes it (floor :math:`\epsilon = 10^{-12}` rounded to float32,
    as in PyTorch's kernel, whatever the dtype):

    .. math:: \frac{\partial \ell_i}{\partial a_i}
              = w_i\,\frac{a_i - y_i}{\max(a_i(1-a_i),\ \epsilon)}

    divided by :math:`n` for ``"mean"``. Where the log is clamped the loss is flat, yet this
    slope is :math:`\pm 10^{12}` (e.g. :math:`a = 0, y = 1`), exactly PyTorch's autograd
    value: it pushes a confidently wrong prediction the right way. With :math:`a = \sigma(z)`
    the chain rule gives :math:`(a - y)`: see :func:`binary_cross_entropy_with_logits`, which is
    the stable way to train.

    Finite values and gradients at probabilities of exactly 0 and 1 are promised for float32
    and wider. In float16 (largest finite value 65504) that slope of :math:`\pm 10^{12}`
    rounds to :math:`\pm\infty` when the gradient is returned, as PyTorch's float16
    gradient does; the value stays finite (at most 100 per element).

    Examples
    --------
    >>> import numpy as np
    >>> a, y = np.array([0.9, 0.2, 0.0]), np.array([1.0, 0.0, 1.0])
    >>> binary_cross_entropy(a, y, reduction="none")  # a = 0 for y = 1 costs the clamp, 100
    array([  0.10536052,   0.22314355, 100.        ])
    >>> binary_cross_entropy(a[:2], y[:2])
    array(0.16425203)
    """
    return _bce(input, target, weight, reduction).value


@gradient_of(binary_cross_entropy)
def binary_cross_entropy_value_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
) -> tuple[FloatArray, FloatArray]:
    r""":func:`binary_cross_entropy` and its gradient w.r.t. ``input`` (PyTorch's, see Notes there).

    For ``reduction="none"`` the gradient is that of the sum of the values.

    Examples
    --------
    >>> import numpy as np
    >>> a, y = np.array([0.8, 0.5]), np.array([1.0, 0.0])
    >>> value, grad = binary_cross_entropy_value_and_grad(a, y)
    >>> grad  # (a - y) / (a (1 - a)) / n
    array([-0.625,  1.   ])
    """
    f = _bce(input, target, weight, reduction)
    return f.value, _bce_grad(f, reduction)


# ---------------------------------------------------------------------------------------------
# binary_cross_entropy_with_logits (input: logits)
# ---------------------------------------------------------------------------------------------


def _times(coef: FloatArray, log_term: FloatArray) -> FloatArray:
    """``coef * log_term`` with ``0 * -inf = 0`` (the limit), for infinite logits."""
    with np.errstate(invalid="ignore"):
        return np.where(coef == 0, 0.0, coef * log_term).astype(coef.dtype, copy=False)


def _bce_logits(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    reduction: str,
    pos_weight: ArrayLike | None,
) -> _Forward:
    fn = "binary_cross_entropy_with_logits"
    check_reduction(reduction, fn)
    x, y = input_and_target(input, target, fn)
    check_probabilities(y, fn, "target")
    w = _optional(weight, x.shape, fn, "weight")
    pw = _optional(pos_weight, x.shape, fn, "pos_weight")
    ct = _dtypes(x, y, w, pw)
    z, t = x.astype(ct, copy=False), y.astype(ct, copy=False)
    e = np.exp(-np.abs(z))  # in (0, 1]: never overflows
    softplus = np.log1p(e)  # log(1 + e^{-|z|})
    log_sig = np.minimum(z, 0.0) - softplus  # log σ(z)
    log_sig_neg = np.minimum(-z, 0.0) - softplus  # log(1 - σ(z)) = log σ(-z)
    pos = t if pw is None else pw.astype(ct, copy=False) * t  # p_w·y: coefficient of log σ(z)
    neg = 1.0 - t  # coefficient of log σ(-z)
    if np.isfinite(z).all():
        values = 0.0 - (pos * log_sig + neg * log_sig_neg)  # +0, not -0, when exact
    else:  # ±inf logits: a right prediction costs 0 (not 0·inf = NaN), a wrong one +inf
        values = 0.0 - (_times(pos, log_sig) + _times(neg, log_sig_neg))
    wc = None if w is None else w.astype(ct, copy=False)
    value = _weighted_reduce(values, wc, reduction, x.dtype)
    return _Forward(value, x.dtype, x.size, z, t, wc, pos, e)


def _bce_logits_grad(f: _Forward, reduction: str) -> FloatArray:
    z, t, e, pos = f.a, f.t, f.e, f.pos
    sig = np.where(z >= 0, 1.0, e) / (1.0 + e)  # σ(z)
    sig_neg = np.where(z >= 0, e, 1.0) / (1.0 + e)  # σ(-z) = 1 - σ(z), without cancellation
    # d/dz of -(p_w y log σ(z) + (1-y) log σ(-z)) = (1-y) σ(z) - p_w y σ(-z)  (= σ(z) - y if p_w=1)
    grad = (1.0 - t) * sig - pos * sig_neg
    return _weighted_scale(grad, f, reduction)


def binary_cross_entropy_with_logits(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    pos_weight: ArrayLike | None = None,
) -> FloatArray:
    r"""Binary cross-entropy on logits: :func:`binary_cross_entropy` of ``sigmoid(input)``, stably.

    Parameters
    ----------
    input : array_like of float, shape (*)
        Logits :math:`z`; any finite value (±1e4 in float32 is fine). ±inf is accepted too: a
        right prediction costs 0, a wrong one +inf.
    target : array_like of float, shape (*), same as ``input``
        Targets :math:`y` in [0, 1] (soft targets allowed).
    weight : array_like of float, optional
        Per-element rescaling, broadcastable to ``input``'s shape.
    reduction : {"mean", "sum", "none"}, default "mean"
    pos_weight : array_like of float, optional
        Weight :math:`p_w` of the positive term, broadcastable to ``input``'s shape: shape (C,)
        weights each of C classes along the last dimension, as in PyTorch.

    Returns
    -------
    ndarray, ``input``'s dtype
        Shape () for ``"mean"``/``"sum"``, ``input``'s shape for ``"none"``.

    Raises
    ------
    TypeError
        ``input``, ``target``, ``weight`` or ``pos_weight`` not floating point.
    ValueError
        Unknown ``reduction``; shapes differ; NaN; ``target`` outside [0, 1] (PyTorch accepts
        it here and returns a meaningless, possibly negative loss); ``weight`` or
        ``pos_weight`` not broadcastable to ``input``'s shape (PyTorch would silently grow
        the result's shape).

    Notes
    -----
    .. math:: \ell_i = -w_i\,[\,p_w\, y_i \log\sigma(z_i) + (1-y_i)\log\sigma(-z_i)\,]

    computed with :math:`\log\sigma(z) = \min(z, 0) - \log(1 + e^{-|z|})` and
    :math:`\log(1-\sigma(z)) = \log\sigma(-z)`, so neither term overflows nor cancels. This
    equals PyTorch's :math:`(1-y)z - (1 + (p_w-1)y)\log\sigma(z)`. The gradient is

    .. math:: \frac{\partial \ell_i}{\partial z_i} = w_i\,[\,(1-y_i)\,\sigma(z_i)
              - p_w\, y_i\, \sigma(-z_i)\,] = w_i\,[\,(1 + (p_w - 1) y_i)\,\sigma(z_i) - p_w y_i\,]

    which is the article's :math:`\sigma(z) - y` when :math:`p_w = w = 1`; divided by
    :math:`n` for ``"mean"``. No :math:`\sigma'(z)` factor: a saturated wrong neuron still
    gets a gradient of size ~1.

    Examples
    --------
    >>> import numpy as np
    >>> z, y = np.array([0.0, 2.0, -1e4]), np.array([1.0, 0.0, 0.0])
    >>> binary_cross_entropy_with_logits(z, y, reduction="none")
    array([0.69314718, 2.12692801, 0.        ])
    >>> binary_cross_entropy_with_logits(np.array([1e4]), np.array([0.0]))  # no overflow
    array(10000.)
    """
    return _bce_logits(input, target, weight, reduction, pos_weight).value


@gradient_of(binary_cross_entropy_with_logits)
def binary_cross_entropy_with_logits_value_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    reduction: Reduction = "mean",
    pos_weight: ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    r""":func:`binary_cross_entropy_with_logits` and its gradient :math:`\sigma(z) - y` (scaled).

    For ``reduction="none"`` the gradient is that of the sum of the values.

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = binary_cross_entropy_with_logits_value_and_grad(
    ...     np.array([0.0, 2.0]), np.array([1.0, 0.0]), reduction="sum")
    >>> grad  # sigmoid(z) - y
    array([-0.5       ,  0.88079708])
    """
    f = _bce_logits(input, target, weight, reduction, pos_weight)
    return f.value, _bce_logits_grad(f, reduction)


__all__ = [
    "binary_cross_entropy",
    "binary_cross_entropy_value_and_grad",
    "binary_cross_entropy_with_logits",
    "binary_cross_entropy_with_logits_value_and_grad",
]
