r"""Entropy and Kullback–Leibler divergence: cross-entropy split into its two parts.

.. math:: H(p, q) = -\sum_x p(x)\log q(x) = H(p) + \mathrm{KL}(p\,\|\,q)

:math:`H(p)` does not depend on the model :math:`q`, so minimising the cross-entropy over
:math:`q` is minimising the KL divergence, and (with :math:`p` the data's empirical
distribution) maximising the likelihood: the article's link between the two views.

:func:`kl_div` is ``torch.nn.functional.kl_div`` (log-probability input, element-wise, with
reductions); :func:`entropy` and :func:`kl_divergence` take distributions and reduce along an
axis, in nats.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import numpy as np
from numpy.typing import ArrayLike

from ._reduction import reduce
from ._validation import (
    REDUCTIONS,
    FloatArray,
    check_axis,
    check_probabilities,
    check_reduction,
    check_same_shape,
    compute_dtype,
    fail,
    float_array,
    input_and_target,
    short_repr,
)
from .grad import gradient_of

KLDivReduction = Literal["none", "mean", "sum", "batchmean"]
KL_DIV_REDUCTIONS: tuple[KLDivReduction, ...] = (*REDUCTIONS, "batchmean")

# ---------------------------------------------------------------------------------------------
# kl_div (torch.nn.functional semantics)
# ---------------------------------------------------------------------------------------------


class _KLDivForward(NamedTuple):
    value: FloatArray
    target_prob: FloatArray  # the target as probabilities, in the compute dtype
    denominator: float  # what "mean"/"batchmean" divide by (1 for "sum"/"none")


def _kl_div(input: ArrayLike, target: ArrayLike, reduction: str, log_target: bool) -> _KLDivForward:
    fn = "kl_div"
    check_reduction(reduction, fn, KL_DIV_REDUCTIONS)
    if not isinstance(log_target, (bool, np.bool_)):
        fail(fn, "log_target", "be a bool", short_repr(log_target), TypeError)
    x, y = input_and_target(input, target, fn)
    if not log_target and y.size and np.any(y < 0):
        fail(fn, "target", "be non-negative (probabilities)", f"minimum {float(np.min(y)):.6g}")
    ct = compute_dtype(x.dtype, y.dtype)
    a, t = x.astype(ct, copy=False), y.astype(ct, copy=False)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        if log_target:
            prob = np.exp(t)
            pointwise = prob * (t - a)
        else:
            prob = t
            pointwise = t * (np.log(t) - a)
        # 0 where the target probability is 0, whatever the input (PyTorch: NaN for -inf input).
        pointwise = np.where(prob > 0, pointwise, 0.0).astype(ct, copy=False)
    if reduction == "batchmean":
        # PyTorch: sum / input.shape[0], and the plain sum for a 0-d input.
        denominator = float(x.shape[0]) if x.ndim else 1.0
        value = reduce(pointwise, "mean", denominator)
    else:
        denominator = float(x.size) if reduction == "mean" else 1.0
        value = reduce(pointwise, reduction)
    return _KLDivForward(value.astype(x.dtype, copy=False), prob, denominator)


def kl_div(
    input: ArrayLike,
    target: ArrayLike,
    reduction: KLDivReduction = "mean",
    log_target: bool = False,
) -> FloatArray:
    r"""Element-wise KL divergence terms of ``target`` from ``exp(input)``, as in PyTorch.

    Parameters
    ----------
    input : array_like of float, shape (*)
        Log-probabilities :math:`\log q` (e.g. from :func:`crossentropy.log_softmax`).
    target : array_like of float, shape (*), same as ``input``
        Probabilities :math:`p \ge 0`, or log-probabilities when ``log_target=True``.
    reduction : {"mean", "batchmean", "sum", "none"}, default "mean"
        ``"batchmean"`` divides the sum by ``input.shape[0]``: the mathematical KL divergence
        per sample when rows are distributions. ``"mean"`` divides by the number of
        *elements* (PyTorch's default, kept for parity; PyTorch warns about it).
    log_target : bool, default False
        Whether ``target`` is given as log-probabilities.

    Returns
    -------
    ndarray, ``input``'s dtype
        Shape () unless ``reduction="none"`` (then ``input``'s shape).

    Raises
    ------
    TypeError
        Non-floating ``input``/``target``; ``log_target`` not a bool.
    ValueError
        Unknown ``reduction``; shapes differ (PyTorch broadcasts); NaN; a negative
        probability ``target`` (``log_target=False``).

    Notes
    -----
    .. math:: \ell_i = p_i\,(\log p_i - \log q_i), \quad 0 \text{ where } p_i = 0

    (with ``log_target``, :math:`p_i = e^{t_i}` and :math:`\ell_i = e^{t_i}(t_i - \log q_i)`).
    Where :math:`p_i = 0` the term is 0 even if :math:`\log q_i = -\infty` (PyTorch gives NaN
    there). The input is not checked to be normalised, as in PyTorch. The gradient with
    respect to the input is

    .. math:: \frac{\partial \ell_i}{\partial \log q_i} = -p_i

    divided by the number of elements (``"mean"``) or of rows (``"batchmean"``).

    Examples
    --------
    >>> import numpy as np
    >>> log_q = np.log(np.array([[0.5, 0.5], [0.9, 0.1]]))
    >>> p = np.array([[1.0, 0.0], [0.5, 0.5]])
    >>> kl_div(log_q, p, reduction="none")
    array([[ 0.69314718,  0.        ],
           [-0.29389333,  0.80471896]])
    >>> kl_div(log_q, p, reduction="batchmean")
    array(0.6019864)
    """
    return _kl_div(input, target, reduction, log_target).value


@gradient_of(kl_div)
def kl_div_value_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    reduction: KLDivReduction = "mean",
    log_target: bool = False,
) -> tuple[FloatArray, FloatArray]:
    r""":func:`kl_div` and its gradient w.r.t. ``input``: :math:`-p` (scaled by the reduction).

    For ``reduction="none"`` the gradient is that of the sum of the values.

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = kl_div_value_and_grad(np.log([[0.5, 0.5]]), np.array([[0.2, 0.8]]),
    ...                                     reduction="batchmean")
    >>> grad
    array([[-0.2, -0.8]])
    """
    f = _kl_div(input, target, reduction, log_target)
    ct = f.target_prob.dtype
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = ct.type(-1.0 / f.denominator) if f.denominator else ct.type(np.nan)
    grad = f.target_prob * factor
    return f.value, grad.astype(f.value.dtype, copy=False)


# ---------------------------------------------------------------------------------------------
# entropy and kl_divergence (distributions along an axis)
# ---------------------------------------------------------------------------------------------


def _distribution(p: ArrayLike, fn: str, arg: str) -> FloatArray:
    arr = float_array(p, fn, arg)
    check_probabilities(arr, fn, arg)
    return arr


def _sum_along(terms: FloatArray, axis: int) -> FloatArray:
    return terms if terms.ndim == 0 else np.asarray(np.sum(terms, axis=axis))  # 0-d, not scalar


def _entropy_terms(p: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, -p * np.log(p), 0.0).astype(p.dtype, copy=False)  # 0·log 0 = 0


def entropy(p: ArrayLike, axis: int = -1) -> FloatArray:
    r"""Shannon entropy :math:`H(p) = -\sum_x p(x)\log p(x)` along ``axis``, in nats.

    Parameters
    ----------
    p : array_like of float, shape (..., K, ...)
        Probabilities in [0, 1]; each slice along ``axis`` is one distribution. Sums are not
        checked (the identities below hold term by term).
    axis : int, default -1
        The axis holding the outcomes.

    Returns
    -------
    ndarray, ``p``'s shape without ``axis``, ``p``'s dtype
        (a 0-d ``p`` is one term: :math:`-p\log p`).

    Raises
    ------
    TypeError
        Non-floating ``p``; non-integer ``axis``.
    ValueError
        NaN; entries outside [0, 1]; ``axis`` out of range.

    Notes
    -----
    :math:`0\log 0 = 0`. Its gradient (``value_and_grad(entropy)``) treats the entries as free
    variables, not constrained to the simplex:

    .. math:: \frac{\partial H}{\partial p_x} = -(\log p_x + 1)

    which is :math:`+\infty` where :math:`p_x = 0` (the one-sided derivative). Subtract its
    mean along ``axis`` for the gradient within the simplex.

    Examples
    --------
    >>> import numpy as np
    >>> entropy(np.array([[0.5, 0.5], [1.0, 0.0]]))  # log 2, and 0 for a certain outcome
    array([0.69314718, 0.        ])
    """
    fn = "entropy"
    arr = _distribution(p, fn, "p")
    ax = check_axis(axis, arr.ndim, fn)
    x = arr.astype(compute_dtype(arr.dtype), copy=False)
    return _sum_along(_entropy_terms(x), ax).astype(arr.dtype, copy=False)


@gradient_of(entropy)
def entropy_value_and_grad(p: ArrayLike, axis: int = -1) -> tuple[FloatArray, FloatArray]:
    r""":func:`entropy` and :math:`\partial H/\partial p = -(\log p + 1)` (:math:`+\infty` at 0).

    The value is one entropy per slice; the gradient is that of their sum, ``p``'s shape.

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = entropy_value_and_grad(np.array([0.5, 0.5]))
    >>> grad  # -(log 0.5 + 1)
    array([-0.30685282, -0.30685282])
    """
    value = entropy(p, axis)
    arr = np.asarray(p)
    x = arr.astype(compute_dtype(arr.dtype), copy=False)
    with np.errstate(divide="ignore"):
        grad = -(np.log(x) + 1.0)
    return value, grad.astype(arr.dtype, copy=False)


class _KLForward(NamedTuple):
    value: FloatArray
    p: FloatArray  # in the compute dtype
    q: FloatArray
    dtype: np.dtype[Any]


def _kl_divergence(p: ArrayLike, q: ArrayLike, axis: int) -> _KLForward:
    fn = "kl_divergence"
    pa = _distribution(p, fn, "p")
    qa = _distribution(q, fn, "q")
    check_same_shape(pa, qa, fn, "p", "q")
    ax = check_axis(axis, pa.ndim, fn)
    ct = compute_dtype(pa.dtype, qa.dtype)
    x, y = pa.astype(ct, copy=False), qa.astype(ct, copy=False)
    with np.errstate(divide="ignore", invalid="ignore"):
        # p log(p/q): 0 where p = 0; +inf where p > 0 = q (log 0 = -inf).
        terms = np.where(x > 0, x * (np.log(x) - np.log(y)), 0.0).astype(ct, copy=False)
    return _KLForward(_sum_along(terms, ax).astype(pa.dtype, copy=False), x, y, pa.dtype)


def kl_divergence(p: ArrayLike, q: ArrayLike, axis: int = -1) -> FloatArray:
    r"""Kullback–Leibler divergence :math:`\mathrm{KL}(p\|q) = \sum_x p(x)\log(p(x)/q(x))`.

    Parameters
    ----------
    p : array_like of float, shape (..., K, ...)
        The reference distribution (the data), entries in [0, 1].
    q : array_like of float, same shape as ``p``
        The model's distribution, entries in [0, 1]. No broadcasting.
    axis : int, default -1
        The axis holding the outcomes.

    Returns
    -------
    ndarray, ``p``'s shape without ``axis``, ``p``'s dtype
        In nats; :math:`\ge 0` when both slices sum to 1.

    Raises
    ------
    TypeError
        Non-floating ``p`` or ``q``; non-integer ``axis``.
    ValueError
        NaN; entries outside [0, 1]; shapes differ; ``axis`` out of range.

    Notes
    -----
    Terms with :math:`p(x) = 0` are 0; a term with :math:`p(x) > 0 = q(x)` is :math:`+\infty`.
    With :func:`entropy`, :math:`H(p, q) = -\sum_x p(x)\log q(x) = H(p) + \mathrm{KL}(p\|q)`.
    The gradient with respect to the first argument (``value_and_grad(kl_divergence)``),
    entries treated as free variables:

    .. math:: \frac{\partial\,\mathrm{KL}}{\partial p_x} = \log p_x - \log q_x + 1

    :math:`-\infty` where :math:`p_x = 0 < q_x`, :math:`+\infty` where :math:`q_x = 0`.

    Examples
    --------
    >>> import numpy as np
    >>> p, q = np.array([0.5, 0.5, 0.0]), np.array([0.25, 0.25, 0.5])
    >>> kl_divergence(p, q)  # log 2
    array(0.69314718)
    >>> float(entropy(p) + kl_divergence(p, q)) == float(-np.sum(p[:2] * np.log(q[:2])))
    True
    """
    return _kl_divergence(p, q, axis).value


@gradient_of(kl_divergence)
def kl_divergence_value_and_grad(
    p: ArrayLike, q: ArrayLike, axis: int = -1
) -> tuple[FloatArray, FloatArray]:
    r""":func:`kl_divergence` and :math:`\partial\,\mathrm{KL}/\partial p = \log p - \log q + 1`.

    The gradient is that of the sum of the values, ``p``'s shape.

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = kl_divergence_value_and_grad(np.array([0.5, 0.5]), np.array([0.5, 0.5]))
    >>> grad
    array([1., 1.])
    """
    f = _kl_divergence(p, q, axis)
    with np.errstate(divide="ignore", invalid="ignore"):
        grad = np.log(f.p) - np.log(f.q) + 1.0
    grad = np.where(f.q == 0, np.inf, grad)  # q = 0: any mass on x costs +inf
    return f.value, grad.astype(f.dtype, copy=False)


__all__ = [
    "entropy",
    "entropy_value_and_grad",
    "kl_div",
    "kl_div_value_and_grad",
    "kl_divergence",
    "kl_divergence_value_and_grad",
]
