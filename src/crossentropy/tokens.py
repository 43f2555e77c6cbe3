r"""Per-token statistics of a softmax: the target's log-probability, entropy, log-sum-exp, argmax.

What reinforcement-learning fine-tuning (PPO, GRPO) and its diagnostics need from a language
model's logits, token by token, with the closed-form vector-Jacobian product beside it:

.. math::

    \log p_y = z_y - \operatorname{lse}(z), \qquad
    H = -\textstyle\sum_c p_c \log p_c, \qquad
    \operatorname{lse}(z) = \log \textstyle\sum_c e^{z_c},

with :math:`p = \operatorname{softmax}(z)`, and their gradients with respect to the logits

.. math::

    \frac{\partial \log p_y}{\partial z} = e_y - p, \qquad
    \frac{\partial H}{\partial z} = -p \odot (\log p + H), \qquad
    \frac{\partial \operatorname{lse}}{\partial z} = p .

The first is the article's :math:`a - y` with the sign flipped (:math:`\log p_y` is minus the
cross-entropy); the entropy's follows from :math:`\partial \log p_c / \partial z_j =
\delta_{cj} - p_j`: :math:`\partial H / \partial z_j = -\sum_c p_c(\delta_{cj} - p_j)(\log p_c +
1) = -p_j(\log p_j + 1) + p_j \sum_c p_c (\log p_c + 1) = -p_j(\log p_j + H)`.

Names. The fields follow the issue that asked for them and the RL libraries' vocabulary, in
the singular because each entry is one token's value:

============  ==============================================  =====================================
field         verl                                            TRL
============  ==============================================  =====================================
``logprob``   ``log_probs`` (``logprobs_from_logits``)        ``per_token_logps``
                                                              (``selective_log_softmax``)
``entropy``   ``entropy`` (``entropy_from_logits``)           ``entropy`` (``entropy_from_logits``)
``lse``       (internal to its fused kernels)                 —
``argmax``    —                                               — (token accuracy)
============  ==============================================  =====================================

``logprob`` is TRL's ``selective_log_softmax(logits, index)`` and verl's
``logprobs_from_logits(logits, labels)``; ``lse`` is what the PaLM z-loss squares (a position's
z-loss is ``z_loss * lse**2``). With ``softcap=c`` every statistic is of the softcapped logits
:math:`z' = c \tanh(z / c)` (Gemma 2's ``final_logit_softcapping``), and the gradients are
multiplied by :math:`\partial z' / \partial z = 1 - (z'/c)^2`. The class
axis is the last (``axis=-1``, as ``logits`` of shape (batch, sequence, vocabulary) come out of
a language model), unlike :func:`crossentropy.cross_entropy`, which follows
``torch.nn.functional`` and puts the classes on axis 1.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validation import (
    FloatArray,
    as_array,
    check_axis,
    check_broadcastable_to,
    compute_dtype,
    describe,
    fail,
    float_array,
)
from .categorical import (
    SOFTCAP_RANGE,
    _check_softcap,
    _real_number,
    _softcap_into,
    _softcap_slope_into,
)

__all__ = ["TokenStats", "token_stats", "token_stats_vjp"]

# About 1 MiB of logits per block of rows: the temporaries of one block stay in cache and the
# peak memory above the input is a few blocks, whatever the number of tokens.
_BLOCK_BYTES = 1 << 20


class TokenStats(NamedTuple):
    """Per-token statistics of ``softmax(logits)``, each of the target's shape.

    With a ``softcap`` :math:`c`, :math:`z` below is the softcapped :math:`c \\tanh(z / c)`.

    Attributes
    ----------
    logprob : ndarray of float
        :math:`\\log p_y = z_y - \\operatorname{lse}(z)`, the log-probability of the target
        (0 where the target is ``ignore_index``).
    entropy : ndarray of float
        :math:`H = -\\sum_c p_c \\log p_c` in nats, in :math:`[0, \\log C]`.
    lse : ndarray of float
        :math:`\\log \\sum_c e^{z_c}`.
    argmax : ndarray of int64
        The index of the largest logit (the first of equal ones): the model's greedy token.
    """

    logprob: NDArray[Any]
    entropy: NDArray[Any]
    lse: NDArray[Any]
    argmax: NDArray[np.int64]


class _Prepared(NamedTuple):
    rows: FloatArray  # (M, C) logits, classes last, in the compute dtype
    labels: NDArray[np.intp]  # (M,), ignored -> 0
    keep: NDArray[np.bool_]  # (M,)
    sample_shape: tuple[int, ...]
    axis: int
    dtype: np.dtype[Any]  # the logits' dtype (that of the results)


def _prepare(
    logits: ArrayLike, target: ArrayLike, ignore_index: object, axis: object, fn: str
) -> _Prepared:
    x = float_array(logits, fn, "logits")
    if x.ndim == 0:
        fail(fn, "logits", "have at least 1 dimension (classes)", "a 0-d array")
    ax = check_axis(axis, x.ndim, fn)
    if x.shape[ax] == 0:
        fail(fn, "logits", "have at least one class (C >= 1) along axis", f"shape {x.shape}")
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        fail(fn, "ignore_index", "be an integer", describe(ignore_index), TypeError)
    ignore = int(ignore_index)
    t = as_array(target, fn, "target")
    if t.dtype.kind not in "iu":
        fail(fn, "target", "have an integer dtype (class indices)", f"dtype {t.dtype}", TypeError)
    sample_shape = x.shape[:ax] + x.shape[ax + 1 :]
    if t.shape != sample_shape:
        fail(
            fn,
            "target",
            f"have shape {sample_shape} (logits' shape without the class axis)",
            f"shape {t.shape}",
        )
    n_classes = x.shape[ax]
    labels = t.reshape(-1)
    keep = labels != ignore
    bad = keep & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        fail(
            fn,
            "target",
            f"contain class indices in [0, {n_classes}) or ignore_index ({ignore})",
            f"{int(labels[np.argmax(bad)])} ({int(bad.sum())} such value(s))",
        )
    ct = compute_dtype(x.dtype)
    rows = np.moveaxis(x, ax, -1).reshape(-1, n_classes).astype(ct, copy=False)
    safe = np.where(keep, labels, 0).astype(np.intp, copy=False)
    return _Prepared(rows, safe, keep, sample_shape, ax, x.dtype)


def _log_softmax_block(xb: FloatArray) -> tuple[FloatArray, FloatArray]:
    """``(log p, lse)`` of a block of rows (R, C), stable for any input.

    The max is shifted out (``lse = m + log Σ e^{z − m}``, no overflow for large logits, no
    total underflow for very negative ones). A row with ``+inf`` logits gets the limit: its
    ``+inf`` entries share the probability equally and ``lse = +inf``. A row of only ``-inf``
    has no distribution: ``lse = -inf`` and ``log p`` is NaN.
    """
    m = np.max(xb, axis=1)
    pos_inf = np.isposinf(m)
    shift = np.where(np.isfinite(m), m, 0.0)
    s = xb - shift[:, None]
    if pos_inf.any():
        rows = np.flatnonzero(pos_inf)
        s[rows] = np.where(np.isposinf(xb[rows]), 0.0, -np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_sum = np.log(np.exp(s).sum(axis=1))
        log_p = s - log_sum[:, None]
        lse = np.where(pos_inf, np.inf, shift + log_sum)
    return log_p, lse


def _entropy(p: FloatArray, log_p: FloatArray) -> FloatArray:
    """``-Σ p log p`` per row, with ``0 · log 0 = 0`` (a ``-inf`` logit contributes nothing;
    a NaN row, all ``-inf``, stays NaN)."""
    return -np.sum(p * np.where(p == 0, 0.0, log_p), axis=1)


def _blocks(n_rows: int, n_cols: int, itemsize: int) -> list[tuple[int, int]]:
    """Row ranges ``[r0, r1)`` of about ``_BLOCK_BYTES`` of logits each (at least one row)."""
    step = max(1, _BLOCK_BYTES // max(1, n_cols * itemsize))
    return [(r0, min(n_rows, r0 + step)) for r0 in range(0, n_rows, step)]


def _scratch(
    blocks: list[tuple[int, int]], n_cols: int, dtype: np.dtype[Any], need: bool
) -> FloatArray:
    """One block of scratch for the softcapped or tempered logits (and then the slope of the
    softcap); empty when ``need`` is false."""
    n = 0 if not need or not blocks else blocks[0][1] - blocks[0][0]
    return np.empty((n, n_cols), dtype=dtype)


def _check_temperature(temperature: object, fn: str) -> float:
    """A finite real ``> 0`` in float32's normal range (``z / T`` stays finite there)."""
    what = "be a finite float > 0"
    t = _real_number(temperature, fn, "temperature", what)
    if not (math.isfinite(t) and t > 0.0):  # also rejects NaN
        fail(fn, "temperature", what, t)
    if not SOFTCAP_RANGE[0] <= t <= SOFTCAP_RANGE[1]:
        fail(fn, "temperature", "be in [2**-126, 2**127] (float32's normal range)", t)
    return t


def _tempered(
    xb: FloatArray, cap: float | None, temperature: float, scratch: FloatArray
) -> FloatArray:
    """The block's logits as the statistics see them: ``c tanh(z / c)`` with a softcap, then
    divided by the temperature (into ``scratch``; ``xb`` itself when there is nothing to do)."""
    if cap is not None:
        xb = _softcap_into(xb, cap, scratch)
    if temperature != 1.0:
        xb = np.divide(xb, temperature, out=scratch)
    return xb


def token_stats(
    logits: ArrayLike,
    target: ArrayLike,
    *,
    ignore_index: int = -100,
    axis: int = -1,
    softcap: float | None = None,
    temperature: float = 1.0,
) -> TokenStats:
    r"""Per-token log-probability of the target, entropy, log-sum-exp and argmax of the logits.

    Parameters
    ----------
    logits : array_like of float, shape (..., C, ...)
        Unnormalised log-probabilities, the classes along ``axis``; float32 or float64 (float16
        is computed in float32).
    target : array_like of int, shape: ``logits``' without ``axis``
        Class indices in ``[0, C)``, or ``ignore_index``.
    ignore_index : int, default -100
        A target value with no log-probability: its ``logprob`` is 0 (and contributes nothing
        to the gradient). ``entropy``, ``lse`` and ``argmax`` do not depend on the target and
        are computed at every position; mask them as your loss requires.
    axis : int, default -1
        The class axis.
    softcap : float, optional
        ``None`` or finite and ``> 0``: every statistic is then of :math:`z' = c \tanh(z / c)`
        (:math:`c` = ``softcap``), ``argmax`` included (logits that the softcap rounds to the
        same value tie, and the first wins). ``±inf`` logits become ``±c``.
    temperature : float, default 1.0
        Finite and ``> 0``: every statistic is of the logits divided by :math:`T` (after the
        softcap, if any), :math:`z'' = z' / T`, as a sampler with temperature :math:`T`
        draws from (the RL frameworks' ``logits / temperature``).

    Returns
    -------
    TokenStats
        A named tuple ``(logprob, entropy, lse, argmax)``, each of ``target``'s shape; the
        first three in ``logits``' dtype, ``argmax`` int64.

    Raises
    ------
    TypeError
        Non-floating ``logits``, non-integer ``target`` or ``ignore_index``, a ``softcap``
        that is not a real number.
    ValueError
        NaN in ``logits``; 0-d ``logits`` or no classes; ``target`` of the wrong shape or out
        of range; ``axis`` out of range; ``softcap`` not finite and ``> 0``.

    See Also
    --------
    token_stats_vjp : the gradient of any combination of ``logprob``, ``entropy`` and ``lse``.
    crossentropy.cross_entropy : ``cross_entropy(z, y, reduction="none") == -logprob``.

    Notes
    -----
    With :math:`m = \max_c z_c`, :math:`\operatorname{lse} = m + \log\sum_c e^{z_c - m}` (no
    overflow however large the logits), :math:`\log p = z - \operatorname{lse}`,

    .. math::

        \texttt{logprob} = \log p_y, \qquad
        \texttt{entropy} = -\sum_c p_c \log p_c
                         = \operatorname{lse} - \textstyle\sum_c p_c z_c ,

    computed in the first form (the second cancels when the logits are large), with
    :math:`0 \cdot \log 0 = 0`: a masked ``-inf`` logit adds nothing to the entropy. The
    entropy lies in :math:`[0, \log C]`: 0 for a one-hot distribution, :math:`\log C` for the
    uniform one. Gradients (:func:`token_stats_vjp`):

    .. math::

        \frac{\partial \log p_y}{\partial z} = e_y - p, \qquad
        \frac{\partial H}{\partial z} = -p \odot (\log p + H), \qquad
        \frac{\partial \operatorname{lse}}{\partial z} = p .

    Logits of ``+inf`` give the limit (the ``+inf`` classes share the probability). Computed
    in at least float32, block by block of about 1 MiB of rows; the inputs are not written to.

    With ``softcap`` the formulas hold for :math:`z' = c \tanh(z/c)`, and each gradient is
    multiplied by :math:`\partial z'/\partial z = 1 - (z'/c)^2` (computed as
    :math:`1/\cosh^2(z/c)`, which does not cancel where :math:`|z'| \to c`). The softcapped
    logits exist one block at a time, never for the whole input.

    Examples
    --------
    >>> import numpy as np
    >>> logits = np.array([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]])
    >>> out = token_stats(logits, np.array([0, -100]))
    >>> out.logprob  # log softmax at the target; 0 where ignored
    array([-0.41703002,  0.        ])
    >>> out.entropy  # the uniform row has the largest entropy, log 3
    array([0.84673818, 1.09861229])
    >>> out.lse, out.argmax
    (array([2.41703002, 1.09861229]), array([0, 0]))

    The naive formula overflows where the max shift does not:

    >>> big = np.array([[1000.0, 1.0]])
    >>> with np.errstate(over="ignore", divide="ignore"):
    ...     np.log(np.exp(big[0, 1]) / np.exp(big).sum())
    np.float64(-inf)
    >>> token_stats(big, np.array([1])).logprob
    array([-999.])

    With a softcap, the statistics of :math:`c \tanh(z / c)`:

    >>> capped = token_stats(logits, np.array([0, -100]), softcap=1.0)
    >>> capped.lse  # log(e^tanh(2) + e^tanh(1) + e^tanh(0.1)); log 3 for the uniform row
    array([1.76963796, 1.09861229])
    >>> np.allclose(capped.lse, np.log(np.exp(np.tanh(logits)).sum(axis=-1)))
    True
    >>> token_stats(np.array([[np.inf, 0.0]]), np.array([0]), softcap=30.0).lse  # +inf -> 30
    array([30.])
    """
    prep = _prepare(logits, target, ignore_index, axis, "token_stats")
    cap = _check_softcap(softcap, "token_stats")
    temp = _check_temperature(temperature, "token_stats")
    x = prep.rows
    n_rows, n_cols = x.shape
    logprob = np.zeros(n_rows, dtype=x.dtype)
    entropy = np.empty(n_rows, dtype=x.dtype)
    lse = np.empty(n_rows, dtype=x.dtype)
    argmax = np.empty(n_rows, dtype=np.int64)
    blocks = _blocks(n_rows, n_cols, x.dtype.itemsize)
    scratch = _scratch(blocks, n_cols, x.dtype, cap is not None or temp != 1.0)
    for r0, r1 in blocks:
        xb = _tempered(x[r0:r1], cap, temp, scratch[: r1 - r0])  # one block at a time
        log_p, lse[r0:r1] = _log_softmax_block(xb)
        p = np.exp(log_p)
        with np.errstate(invalid="ignore"):
            entropy[r0:r1] = _entropy(p, log_p)
        picked = log_p[np.arange(r1 - r0), prep.labels[r0:r1]]
        logprob[r0:r1] = np.where(prep.keep[r0:r1], picked, 0.0)
        argmax[r0:r1] = np.argmax(xb, axis=1)

    def out(v: NDArray[Any]) -> NDArray[Any]:
        return v.reshape(prep.sample_shape).astype(prep.dtype, copy=False)

    return TokenStats(out(logprob), out(entropy), out(lse), argmax.reshape(prep.sample_shape))


def _upstream(d: ArrayLike | None, shape: tuple[int, ...], name: str, fn: str) -> FloatArray | None:
    """``None``, or ``d`` as float rows of ``shape``'s size (broadcast from a scalar etc.)."""
    if d is None:
        return None
    arr = float_array(d, fn, name)
    check_broadcastable_to(arr, shape, fn, name)
    return np.broadcast_to(arr, shape).reshape(-1)


def token_stats_vjp(
    logits: ArrayLike,
    target: ArrayLike,
    d_logprob: ArrayLike | None = None,
    d_entropy: ArrayLike | None = None,
    d_lse: ArrayLike | None = None,
    *,
    ignore_index: int = -100,
    axis: int = -1,
    softcap: float | None = None,
    temperature: float = 1.0,
) -> FloatArray:
    r"""Vector-Jacobian product of :func:`token_stats`: d logits from upstream gradients.

    Returns the gradient with respect to ``logits`` of
    :math:`\sum_i (a_i \log p_{i y_i} + b_i H_i + c_i \operatorname{lse}_i)` for upstream
    gradients :math:`a` = ``d_logprob``, :math:`b` = ``d_entropy``, :math:`c` = ``d_lse``.

    Parameters
    ----------
    logits, target, ignore_index, axis, softcap, temperature
        As in :func:`token_stats`.
    d_logprob, d_entropy, d_lse : array_like of float, broadcastable to ``target``'s shape, optional
        Upstream gradients of the three differentiable outputs; ``None`` (an output the loss
        does not use) counts as zero and costs nothing. ``argmax`` has no gradient.

    Returns
    -------
    ndarray, ``logits``' shape and dtype
        The gradient with respect to ``logits``. Ignored positions receive the entropy and
        log-sum-exp terms only (none at an ignored row of only ``-inf`` logits, which has no
        distribution: its gradient is 0).

    Raises
    ------
    TypeError, ValueError
        As :func:`token_stats`; also an upstream gradient that is not floating point, holds
        NaN or does not broadcast to ``target``'s shape.

    Notes
    -----
    For one token, with :math:`p = \operatorname{softmax}(z)` and :math:`[\cdot]` the indicator
    of a kept target,

    .. math::

        \frac{\partial}{\partial z} = a\,[y \ne \text{ignore}]\,(e_y - p)
            \;-\; b\, p \odot (\log p + H) \;+\; c\, p
        = p \odot \bigl(c - a' - b(\log p + H)\bigr) + a' e_y ,

    :math:`a' = a\,[y \ne \text{ignore}]`, computed in the second form (one pass over the
    row). Where :math:`p_c = 0` (a ``-inf`` logit) every term is 0: :math:`p \log p \to 0`.
    Each term sums to zero over the classes except the log-sum-exp's, which sums to
    :math:`c` (shifting every logit by :math:`t` moves :math:`\operatorname{lse}` by
    :math:`t` and leaves :math:`\log p` and :math:`H` unchanged).

    With ``softcap`` the row above is of :math:`z' = c \tanh(z/c)` and is then multiplied by
    :math:`\partial z'/\partial z = 1 - (z'/c)^2`, entry by entry (the chain rule through the
    elementwise softcap).
    With ``temperature`` :math:`T` the row is of :math:`z' / T` and is then divided by
    :math:`T`.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[2.0, 1.0, 0.1]])
    >>> y = np.array([0])
    >>> p = np.exp(z - token_stats(z, y).lse[:, None])
    >>> token_stats_vjp(z, y, d_logprob=1.0)  # e_y - p
    array([[ 0.34099886, -0.24243297, -0.09856589]])
    >>> np.allclose(token_stats_vjp(z, y, d_logprob=1.0), np.eye(3)[y] - p)
    True
    >>> H = token_stats(z, y).entropy[:, None]
    >>> np.allclose(token_stats_vjp(z, y, d_entropy=1.0), -p * (np.log(p) + H))
    True
    >>> np.allclose(token_stats_vjp(z, y, d_lse=1.0), p)
    True

    With a softcap: the same closed form on :math:`z'`, times the softcap's slope:

    >>> zc = 2.0 * np.tanh(z / 2.0)
    >>> pc = np.exp(zc - token_stats(z, y, softcap=2.0).lse[:, None])
    >>> token_stats_vjp(z, y, d_logprob=1.0, softcap=2.0)
    array([[ 0.1853925 , -0.24133432, -0.13423549]])
    >>> np.allclose(token_stats_vjp(z, y, d_logprob=1.0, softcap=2.0),
    ...             (np.eye(3)[y] - pc) * (1 - (zc / 2.0) ** 2))
    True
    """
    fn = "token_stats_vjp"
    prep = _prepare(logits, target, ignore_index, axis, fn)
    cap = _check_softcap(softcap, fn)
    temp = _check_temperature(temperature, fn)
    a = _upstream(d_logprob, prep.sample_shape, "d_logprob", fn)
    b = _upstream(d_entropy, prep.sample_shape, "d_entropy", fn)
    c = _upstream(d_lse, prep.sample_shape, "d_lse", fn)
    x = prep.rows
    n_rows, n_cols = x.shape
    grad = np.zeros_like(x)
    if a is not None:
        a = np.where(prep.keep, a, 0.0).astype(x.dtype, copy=False)
    if a is b is c is None:
        return _back(grad, prep)
    blocks = _blocks(n_rows, n_cols, x.dtype.itemsize)
    scratch = _scratch(blocks, n_cols, x.dtype, cap is not None or temp != 1.0)
    for r0, r1 in blocks:
        xb = _tempered(x[r0:r1], cap, temp, scratch[: r1 - r0])
        log_p, lse_b = _log_softmax_block(xb)
        # an ignored row of only -inf logits has no distribution (log p NaN): taking its log p
        # as -inf (every p = 0) gives it a zero gradient, for any upstream, instead of NaN
        log_p[~prep.keep[r0:r1] & (lse_b == -np.inf)] = -np.inf
        p = np.exp(log_p)
        rest = np.zeros_like(log_p)  # c - b (log p + H), per entry
        if c is not None:
            rest += c[r0:r1, None]
        if b is not None:
            safe_log_p = np.where(p == 0, 0.0, log_p)  # 0 · log 0 = 0
            h = -np.sum(p * safe_log_p, axis=1)
            rest -= b[r0:r1, None] * (safe_log_p + h[:, None])
        gb = grad[r0:r1]
        np.multiply(p, rest if a is None else rest - a[r0:r1, None], out=gb)
        if a is not None:
            # the target entry as a'(1 − p_y) + p_y·rest_y: finite for an infinite a', where
            # p_y(rest_y − a') + a' would be inf − inf
            rows, cols = np.arange(r1 - r0), prep.labels[r0:r1]
            p_y = p[rows, cols]
            gb[rows, cols] = a[r0:r1] * (1 - p_y) + p_y * rest[rows, cols]
        if temp != 1.0:
            gb /= temp  # d (z' / T) / d z'
        if cap is not None:
            gb *= _softcap_slope_into(x[r0:r1], cap, scratch[: r1 - r0])  # d z' / d z
    return _back(grad, prep)


def _back(grad: FloatArray, prep: _Prepared) -> FloatArray:
    """(M, C) rows back to the logits' layout and dtype."""
    n_classes = grad.shape[1]
    shaped = grad.reshape((*prep.sample_shape, n_classes))
    return np.ascontiguousarray(np.moveaxis(shaped, -1, prep.axis)).astype(prep.dtype, copy=False)
