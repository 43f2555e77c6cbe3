"""Numerically stable sigmoid, softmax and their logarithms.

Every function accepts a floating-point array of any shape, computes in at least float32 and
returns the input's dtype. None of them writes into its argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from ._validation import FloatArray, check_axis, compute_dtype, float_array


def _as_input(z: ArrayLike, fn: str) -> tuple[FloatArray, np.dtype[Any]]:
    arr = float_array(z, fn, "z", allow_nan=True)
    return arr.astype(compute_dtype(arr.dtype), copy=False), arr.dtype


def sigmoid(z: ArrayLike) -> FloatArray:
    r"""Logistic sigmoid :math:`\sigma(z) = 1 / (1 + e^{-z})`, element-wise.

    Parameters
    ----------
    z : array_like of float, any shape
        Logits.

    Returns
    -------
    ndarray, same shape and dtype as ``z``
        Probabilities in [0, 1].

    Notes
    -----
    Computed as :math:`1/(1+e^{-|z|})` for :math:`z \ge 0` and :math:`e^{-|z|}/(1+e^{-|z|})`
    otherwise, so ``exp`` never overflows. Its derivative is
    :math:`\sigma'(z) = \sigma(z)(1 - \sigma(z))`: the factor that vanishes for large
    :math:`|z|` and slows mean-squared-error training of a saturated neuron.

    Examples
    --------
    >>> import numpy as np
    >>> sigmoid(np.array([-1000.0, 0.0, 2.0]))
    array([0.        , 0.5       , 0.88079708])
    """
    x, dtype = _as_input(z, "sigmoid")
    e = np.exp(-np.abs(x))  # in (0, 1]: never overflows
    out = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))
    return out.astype(dtype, copy=False)


def log_sigmoid(z: ArrayLike) -> FloatArray:
    r"""Logarithm of the sigmoid, :math:`\log \sigma(z)`, element-wise and stable.

    Parameters
    ----------
    z : array_like of float, any shape
        Logits.

    Returns
    -------
    ndarray, same shape and dtype as ``z``
        Values in :math:`(-\infty, 0]`.

    Notes
    -----
    :math:`\log\sigma(z) = \min(z, 0) - \log(1 + e^{-|z|})`. Never ``log(sigmoid(z))``: that
    underflows to ``log(0) = -inf`` for :math:`z < -104` in float32. Also
    :math:`\log(1 - \sigma(z)) = \log\sigma(-z)`. The derivative is :math:`1 - \sigma(z)`.

    Examples
    --------
    >>> import numpy as np
    >>> log_sigmoid(np.array([-1000.0, 0.0, 1000.0]))
    array([-1.00000000e+03, -6.93147181e-01,  0.00000000e+00])
    """
    x, dtype = _as_input(z, "log_sigmoid")
    out = np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))
    return out.astype(dtype, copy=False)


def _shifted(x: FloatArray, axis: int) -> tuple[FloatArray, FloatArray]:
    """``x - max(x)`` along ``axis`` and the max (0 for an all -inf slice), keepdims.

    A slice containing ``+inf`` is shifted to its limit: 0 at the ``+inf`` entries, ``-inf``
    elsewhere (the limit of ``z + t·[z = +inf] - max`` as ``t -> inf``), and its max is
    ``+inf``. So softmax shares the mass equally among the ``+inf`` entries instead of
    computing ``inf - inf = NaN``.
    """
    # initial=-inf: an empty slice has max -inf instead of raising (PyTorch returns empty/-inf).
    m = np.max(x, axis=axis, keepdims=True, initial=-np.inf)
    pos_inf = np.isposinf(m)
    # An all -inf (or empty) slice has max -inf; shifting by it would give -inf - -inf = NaN.
    m = np.where(np.isfinite(m), m, 0.0).astype(x.dtype, copy=False)
    shifted = x - m
    if pos_inf.any():
        limit = np.where(np.isposinf(x), 0.0, -np.inf).astype(x.dtype, copy=False)
        shifted = np.where(pos_inf, limit, shifted)
        m = np.where(pos_inf, np.inf, m).astype(x.dtype, copy=False)
    return shifted, m


def logsumexp(z: ArrayLike, axis: int = -1) -> FloatArray:
    r"""Log of the sum of exponentials along ``axis``, without overflow.

    Parameters
    ----------
    z : array_like of float, shape (..., C, ...)
        Values; ``-inf`` entries contribute nothing.
    axis : int, default -1
        The axis to reduce.

    Returns
    -------
    ndarray, ``z``'s shape without ``axis``, ``z``'s dtype

    Notes
    -----
    .. math:: \operatorname{LSE}(z) = m + \log\Big(1 + \sum_{j \ne j^*} e^{z_j - m}\Big),
              \quad m = z_{j^*} = \max_j z_j

    The max term is kept out of the sum and ``log1p`` is used, so a sum dominated by one term
    keeps its small contributions. The gradient is :math:`\operatorname{softmax}(z)`.

    References
    ----------
    .. [1] P. Blanchard, D. J. Higham, N. J. Higham, "Accurately computing the log-sum-exp and
       softmax functions", IMA J. Numer. Anal. 41 (2021).

    Examples
    --------
    The naive formula overflows; this does not:

    >>> import numpy as np
    >>> with np.errstate(over="ignore"):
    ...     print(np.log(np.sum(np.exp(np.array([1000.0, 1.0])))))
    inf
    >>> logsumexp(np.array([1000.0, 1.0]))
    array(1000.)
    >>> logsumexp(np.array([0.0, -40.0]))  # e^-40 survives thanks to log1p
    array(4.24835426e-18)
    """
    x, dtype = _as_input(z, "logsumexp")
    ax = check_axis(axis, x.ndim, "logsumexp")
    if x.ndim == 0:
        return x.astype(dtype)
    if x.shape[ax] == 0:  # the log of an empty sum: -inf, as PyTorch (no argmax to take)
        return np.full(np.delete(x.shape, ax), -np.inf, dtype=dtype)
    shifted, m = _shifted(x, ax)
    e = np.exp(shifted)
    # Keep the max term (exactly 1) out of the sum: zero one argmax entry per slice.
    idx = np.expand_dims(np.argmax(x, axis=ax), ax)
    np.put_along_axis(e, idx, 0.0, axis=ax)
    with np.errstate(divide="ignore"):
        others = np.sum(e, axis=ax, keepdims=True)
        lead = np.take_along_axis(shifted, idx, axis=ax)  # 0, or -inf for an all -inf slice
        out = m + np.log1p(others) + lead
    return np.squeeze(out, axis=ax).astype(dtype, copy=False)


def log_softmax(z: ArrayLike, axis: int = -1) -> FloatArray:
    r"""Logarithm of the softmax along ``axis``: :math:`z_j - \operatorname{LSE}(z)`.

    Parameters
    ----------
    z : array_like of float, shape (..., C, ...)
        Logits.
    axis : int, default -1
        The class axis.

    Returns
    -------
    ndarray, same shape and dtype as ``z``

    Notes
    -----
    .. math:: \log a_j = z_j - \max_k z_k - \log\sum_k e^{z_k - \max_k z_k}

    Never ``log(softmax(z))``, which gives ``-inf`` as soon as a probability underflows.
    ``+inf`` logits give the limit: :math:`-\log k` at each of a slice's :math:`k` ``+inf``
    entries, ``-inf`` elsewhere (not ``inf - inf = NaN``).

    Examples
    --------
    >>> import numpy as np
    >>> log_softmax(np.array([1000.0, 1.0]))
    array([   0., -999.])
    >>> log_softmax(np.array([np.inf, 0.0, -np.inf]))
    array([  0., -inf, -inf])
    """
    x, dtype = _as_input(z, "log_softmax")
    ax = check_axis(axis, x.ndim, "log_softmax")
    if x.ndim == 0:
        return np.zeros_like(x, dtype=dtype)
    shifted, _ = _shifted(x, ax)
    with np.errstate(divide="ignore", invalid="ignore"):  # an all -inf slice is NaN, as PyTorch
        lse = np.log(np.sum(np.exp(shifted), axis=ax, keepdims=True))
        out = shifted - lse
    return out.astype(dtype, copy=False)


def softmax(z: ArrayLike, axis: int = -1) -> FloatArray:
    r"""Softmax along ``axis``: :math:`a_j = e^{z_j} / \sum_k e^{z_k}`.

    Parameters
    ----------
    z : array_like of float, shape (..., C, ...)
        Logits.
    axis : int, default -1
        The class axis.

    Returns
    -------
    ndarray, same shape and dtype as ``z``
        Non-negative, summing to 1 along ``axis``.

    Notes
    -----
    Shift-invariant, so it is computed on :math:`z - \max z` and ``exp`` never overflows. Its
    Jacobian is :math:`\partial a_q/\partial z_j = a_q(\delta_{qj} - a_j)`; composed with
    cross-entropy it collapses to :math:`a_j - y_j`. ``+inf`` logits give the limit: a slice's
    ``+inf`` entries share the probability equally and every other entry gets 0.

    Examples
    --------
    >>> import numpy as np
    >>> softmax(np.array([1000.0, 1000.0, -np.inf]))
    array([0.5, 0.5, 0. ])
    >>> softmax(np.array([np.inf, 0.0, -np.inf]))
    array([1., 0., 0.])
    """
    x, dtype = _as_input(z, "softmax")
    ax = check_axis(axis, x.ndim, "softmax")
    if x.ndim == 0:
        return np.ones_like(x, dtype=dtype)
    shifted, _ = _shifted(x, ax)
    e = np.exp(shifted)
    with np.errstate(invalid="ignore"):
        out = e / np.sum(e, axis=ax, keepdims=True)
    return out.astype(dtype, copy=False)
