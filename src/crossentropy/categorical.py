"""Softmax cross-entropy, negative log-likelihood and the article's categorical cross-entropy.

Each loss sits beside its closed-form gradient (registered with :func:`~crossentropy.grad.
gradient_of`). Semantics, argument names and defaults are those of ``torch.nn.functional``.

The integer-label path of :func:`cross_entropy` is a row-blocked kernel: blocks of about
``_BLOCK_BYTES`` of logits are shifted, exponentiated, summed and scaled in place inside the
gradient (or a small scratch buffer when only the value is wanted), so a logit is read from
memory once and no temporary of the logits' size is ever allocated.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

from ._validation import (
    FloatArray,
    Reduction,
    as_array,
    check_reduction,
    check_same_shape,
    compute_dtype,
    describe,
    fail,
    float_array,
)
from .grad import gradient_of

IntArray = NDArray[np.intp]

# About 1 MiB of logits per block (a core's L2): the block is read from memory once and the
# passes over it (max, subtract, exp, sum, scale) run from cache. Measured on (4096, 32768)
# float32: 256 KiB blocks 0.24 s, 1 MiB 0.20 s, 4 MiB 0.20 s.
_BLOCK_BYTES = 1 << 20
# -log(a) is clamped at 100 (as torch's binary_cross_entropy does) and the gradient -y / a
# uses max(a, _PROB_EPS) (torch's binary_cross_entropy backward uses the same epsilon).
_LOG_CLAMP = -100.0
_PROB_EPS = 1e-12


# --------------------------------------------------------------------------------------------
# Layout and validation
# --------------------------------------------------------------------------------------------


def _class_axis(ndim: int) -> int:
    """Class axis of ``input``: 0 for a single sample of shape (C,), else 1."""
    return 0 if ndim == 1 else 1


def _to_rows(x: NDArray[Any]) -> NDArray[Any]:
    """View/copy ``x`` as (M, C) rows of classes: (C,) -> (1, C); (N, C, d...) -> (N*d..., C)."""
    if x.ndim == 1:
        return x.reshape(1, -1)
    if x.ndim == 2:
        return x
    return np.moveaxis(x, 1, -1).reshape(-1, x.shape[1])


def _from_rows(rows: NDArray[Any], shape: tuple[int, ...]) -> NDArray[Any]:
    """Inverse of :func:`_to_rows`: back to ``shape``, C-contiguous."""
    if len(shape) <= 2:
        return rows.reshape(shape)
    lead = (shape[0], *shape[2:], shape[1])
    return np.ascontiguousarray(np.moveaxis(rows.reshape(lead), -1, 1))


def _sample_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """``shape`` without the class axis."""
    ax = _class_axis(len(shape))
    return shape[:ax] + shape[ax + 1 :]


def _check_input(input: ArrayLike, fn: str, *, allow_nan: bool = False) -> FloatArray:
    x = float_array(input, fn, "input", allow_nan=allow_nan)
    if x.ndim == 0:
        fail(fn, "input", "have shape (C), (N, C) or (N, C, d1, ...)", "a 0-d array")
    if x.shape[_class_axis(x.ndim)] == 0:
        fail(fn, "input", "have at least one class (C >= 1)", f"shape {x.shape}")
    return x


def _check_weight(weight: ArrayLike | None, n_classes: int, fn: str) -> FloatArray | None:
    if weight is None:
        return None
    w = float_array(weight, fn, "weight")
    if w.shape != (n_classes,):
        fail(fn, "weight", f"be a 1-D array of length C = {n_classes}", f"shape {w.shape}")
    return w


def _check_ignore_index(ignore_index: object, fn: str) -> int:
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
        fail(fn, "ignore_index", "be an integer", describe(ignore_index), TypeError)
    return int(ignore_index)


def _check_smoothing(label_smoothing: object, fn: str) -> float:
    if isinstance(label_smoothing, bool) or not isinstance(
        label_smoothing, (int, float, np.integer, np.floating)
    ):
        fail(fn, "label_smoothing", "be a real number", describe(label_smoothing), TypeError)
    eps = float(label_smoothing)
    if not 0.0 <= eps <= 1.0:  # also rejects NaN
        fail(fn, "label_smoothing", "be in [0, 1]", eps)
    return eps


def _real_number(value: object, fn: str, arg: str, requirement: str) -> float:
    """``value`` as a float if it is a real number (``bool`` is not), else a ``TypeError``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        fail(fn, arg, requirement, describe(value), TypeError)
    try:
        return float(value)
    except OverflowError:  # an int beyond float's range
        return math.inf


# The same requirements, in the same words, as crossentropy.torch's checks.
_Z_LOSS = "be a finite float >= 0"
_SOFTCAP = "be None or a finite float > 0"


def _check_z_loss(z_loss: object, fn: str) -> float:
    z = _real_number(z_loss, fn, "z_loss", _Z_LOSS)
    if not (math.isfinite(z) and z >= 0.0):  # also rejects NaN
        fail(fn, "z_loss", _Z_LOSS, z)
    return z + 0.0  # -0.0 -> 0.0


def _check_softcap(softcap: object, fn: str) -> float | None:
    if softcap is None:
        return None
    c = _real_number(softcap, fn, "softcap", _SOFTCAP)
    if not (math.isfinite(c) and c > 0.0):  # also rejects NaN
        fail(fn, "softcap", _SOFTCAP, c)
    if not SOFTCAP_RANGE[0] <= c <= SOFTCAP_RANGE[1]:
        fail(fn, "softcap", _SOFTCAP_IN_RANGE, c)
    return c


#: Caps every backend can apply to float32 logits: ``x / c`` and the Triton kernels' ``1 / c``
#: stay finite and normal (a cap of 1e39 would make float32 logits NaN).
SOFTCAP_RANGE = (2.0**-126, 2.0**127)
_SOFTCAP_IN_RANGE = "be in [2**-126, 2**127] (float32's normal range, where the kernels compute)"


def _check_sample_weight(
    sample_weight: ArrayLike | None, shape: tuple[int, ...], fn: str
) -> FloatArray | None:
    """One floating weight per target position, of exactly ``shape`` (no broadcasting)."""
    if sample_weight is None:
        return None
    s = float_array(sample_weight, fn, "sample_weight")  # NaN refused, as in input
    if s.shape != shape:
        fail(
            fn,
            "sample_weight",
            f"have shape {shape} (one weight per target position)",
            f"shape {s.shape}",
        )
    return s


def _check_labels(
    target: NDArray[Any], x: FloatArray, ignore_index: int, fn: str
) -> tuple[IntArray, NDArray[np.bool_]]:
    """Validate integer class indices; return them flattened (ignored -> 0) and the keep mask."""
    expected = _sample_shape(x.shape)
    if target.shape != expected:
        fail(
            fn,
            "target",
            f"have shape {expected} (input's shape without the class axis) for class indices",
            f"shape {target.shape}",
        )
    n_classes = x.shape[_class_axis(x.ndim)]
    labels = target.reshape(-1)
    keep = labels != ignore_index
    bad = keep & ((labels < 0) | (labels >= n_classes))
    if bad.any():
        value = labels[np.argmax(bad)]
        fail(
            fn,
            "target",
            f"contain class indices in [0, {n_classes}) or ignore_index ({ignore_index})",
            f"{int(value)} (and {int(bad.sum()) - 1} more)" if bad.sum() > 1 else int(value),
        )
    return np.where(keep, labels, 0).astype(np.intp, copy=False), keep


def _target_kind(target: ArrayLike, x: FloatArray, fn: str) -> NDArray[Any]:
    """Return ``target`` as an array, checking that it is class indices or probabilities."""
    t = as_array(target, fn, "target")
    if t.dtype.kind in "iu":
        return t
    if t.dtype.kind == "f":
        if t.shape != x.shape:
            fail(
                fn,
                "target",
                f"be class indices (integer dtype) of shape {_sample_shape(x.shape)} or class "
                f"probabilities (floating dtype) of input's shape {x.shape}",
                f"floating-point array of shape {t.shape}",
            )
        if t.size and np.isnan(t).any():
            fail(fn, "target", "not contain NaN", f"{int(np.isnan(t).sum())} NaN value(s)")
        return t
    fail(
        fn,
        "target",
        "have an integer dtype (class indices) or a floating dtype (class probabilities)",
        f"dtype {t.dtype}",
        TypeError,
    )


def _raise_nan(x: FloatArray, fn: str) -> None:
    fail(fn, "input", "not contain NaN", f"{int(np.isnan(x).sum())} NaN value(s)")


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------


def _softcap_into(x: NDArray[Any], cap: float, out: FloatArray) -> FloatArray:
    r"""``out = cap * tanh(x / cap)``, the softcapped logits :math:`x'` in ``out``'s dtype.

    :math:`\pm\infty` maps to :math:`\pm` ``cap``: every softcapped logit is finite. NaN
    stays NaN (the kernels' row max then refuses it).
    """
    with np.errstate(over="ignore"):  # x / cap overflows to ±inf only where tanh is ±1 anyway
        np.divide(x, cap, out=out, dtype=out.dtype)
    np.tanh(out, out=out)
    out *= cap
    return out


def _softcap_slope_into(x: NDArray[Any], cap: float, out: FloatArray) -> FloatArray:
    r"""``out =`` :math:`\partial x'/\partial x = 1 - (x'/c)^2`, computed as
    :math:`1/\cosh^2(x/c)`.

    The two are equal; the second keeps full relative accuracy where :math:`|x'| \to c`, where
    :math:`1 - \tanh^2` cancels (and rounds to 0 once :math:`\tanh` rounds to 1). It is 0 at
    :math:`x = \pm\infty`.
    """
    with np.errstate(over="ignore"):  # cosh^2 = inf far out: the slope is 1/inf = 0 there
        np.divide(x, cap, out=out, dtype=out.dtype)
        np.cosh(out, out=out)
        np.square(out, out=out)
    np.reciprocal(out, out=out)
    return out


def _blocks(n_rows: int, n_cols: int, itemsize: int) -> Iterator[tuple[int, int]]:
    """Row ranges [r0, r1) of about ``_BLOCK_BYTES`` each (at least one row)."""
    step = max(1, _BLOCK_BYTES // max(1, n_cols * itemsize))
    for r0 in range(0, n_rows, step):
        yield r0, min(n_rows, r0 + step)


def _shift_block(
    xb: NDArray[Any], gb: FloatArray, m: FloatArray, x: NDArray[Any], fn: str
) -> NDArray[np.bool_]:
    """``gb = xb - max(xb, axis=1)`` (in gb's dtype); a NaN row max means NaN input.

    ``m`` receives the shift (the row max, 0 where it is not finite); returns the rows whose
    max is ``+inf``.
    """
    np.max(xb, axis=1, out=m)
    if np.isnan(m).any():  # max propagates NaN: the NaN check costs nothing extra
        _raise_nan(x, fn)
    pos_inf = np.isposinf(m)
    # An all -inf row has max -inf; shifting by it would give -inf - -inf = NaN.
    np.copyto(m, 0.0, where=~np.isfinite(m))
    np.subtract(xb, m[:, None], out=gb)
    if pos_inf.any():
        # A row with +inf logits: the limit of z + t·[z = +inf] as t -> inf. The +inf entries
        # share the probability equally (shifted value 0), every other entry gets -inf.
        rows = np.flatnonzero(pos_inf)
        gb[rows] = np.where(np.isposinf(xb[rows]), 0.0, -np.inf)
    return pos_inf


def _safe_divide(num: FloatArray, den: FloatArray) -> FloatArray:
    """``num / den`` with 0 wherever ``num`` is 0 (a zero coefficient stays exactly zero)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        out = num / den
    return np.where(num == 0, 0.0, out).astype(num.dtype, copy=False)


@dataclass(frozen=True)
class _IndexTerms:
    """Per-row pieces of the integer-label loss, each of shape (M,)."""

    nll: FloatArray  # lse_i - z_{i, y_i}
    smooth: FloatArray | None  # sum_j w_j (lse_i - z_ij), only with label smoothing


def _index_kernel(
    x: NDArray[Any],
    labels: IntArray,
    a: FloatArray,
    b: FloatArray | None,
    w: FloatArray | None,
    grad: FloatArray | None,
    dtype: np.dtype[Any],
    fn: str,
    *,
    softcap: float | None = None,
    zq: FloatArray | None = None,
    lse: FloatArray | None = None,
) -> _IndexTerms:
    r"""Row-blocked softmax cross-entropy with integer labels, value and (optionally) gradient.

    ``x`` (M, C) logits of any float dtype; ``labels`` (M,) in [0, C); ``a`` (M,) and ``b``
    (M,) are the coefficients of the two gradient terms; ``w`` (C,) the class weights of the
    smoothing term (None: ones). When ``grad`` (M, C) is given it receives

    .. math:: g_i = a_i (p_i - e_{y_i}) + b_i (p_i W - w) + q_i \operatorname{lse}_i\, p_i,
              \quad W = \textstyle\sum_j w_j,

    with :math:`q` = ``zq`` (the z-loss's :math:`2 z w_{y_i}` times the row's scale; no such
    term when None). The true-class entry :math:`p_y - 1` is written as
    :math:`-\sum_{j \ne y} p_j`, so a confident row keeps an accurate small gradient.

    With ``softcap`` every statistic is of :math:`x' = c \tanh(x / c)`, computed block by
    block in a scratch block (never for the whole input), and the gradient is multiplied by
    :math:`\partial x' / \partial x`. ``lse`` (M,), when given, receives
    :math:`\operatorname{lse}(x')` (required with ``zq``). Everything is computed in ``dtype``.
    """
    n_rows, n_cols = x.shape
    nll = np.empty(n_rows, dtype=dtype)
    smooth = None if b is None else np.empty(n_rows, dtype=dtype)
    big_w = float(n_cols) if w is None else float(w.sum(dtype=np.float64))
    direct = grad is not None and grad.dtype == dtype and grad.flags.c_contiguous
    step = max(1, _BLOCK_BYTES // max(1, n_cols * dtype.itemsize))
    # Work directly in the gradient when it has the compute dtype, else in one scratch block.
    if direct and grad is not None:
        buf = grad
    else:
        buf = np.empty((min(step, n_rows), n_cols), dtype=dtype)
    # The softcapped block x', then (once shifted into gb) the softcap's slope.
    capped = None if softcap is None else np.empty((min(step, n_rows), n_cols), dtype=dtype)
    m = np.empty(step, dtype=dtype)
    others = np.empty(step, dtype=dtype)
    rows = np.arange(step)
    for r0, r1 in _blocks(n_rows, n_cols, dtype.itemsize):
        n = r1 - r0
        r, y = rows[:n], labels[r0:r1]
        gb = buf[r0:r1] if direct else buf[:n]
        xb = x[r0:r1]
        if softcap is not None and capped is not None:
            xb = _softcap_into(xb, softcap, capped[:n])  # x', one block at a time
        pos_inf = _shift_block(xb, gb, m[:n], x, fn)
        sy = gb[r, y]  # z_y - max (a copy)
        if smooth is not None:
            # sum_j w_j (z_j - max), before exp overwrites the shifted logits
            wz = gb.sum(axis=1) if w is None else gb @ w
        np.exp(gb, out=gb)
        ey = np.exp(sy)
        gb[r, y] = 0.0
        np.sum(gb, axis=1, out=others[:n])  # sum of the *other* classes' e^{z - max}
        oth = others[:n]
        s = oth + ey
        with np.errstate(divide="ignore", invalid="ignore"):
            log_s = np.log(s)
            # lse - z_y = log(1 + others / e_y): exact for confident rows (log1p), and
            # log(s) - (z_y - max) once e_y is small enough that nothing cancels.
            nll[r0:r1] = np.where(sy > -20.0, np.log1p(oth / ey), log_s - sy)
            if smooth is not None:
                smooth[r0:r1] = big_w * log_s - wz
            if lse is not None:
                lse[r0:r1] = np.where(pos_inf, np.inf, m[:n] + log_s)
        if grad is None:
            continue
        ab = a[r0:r1]
        bb = None if b is None else b[r0:r1]
        alpha = ab if bb is None else ab + bb * big_w
        qb = None
        if zq is not None and lse is not None:
            with np.errstate(invalid="ignore"):
                # q lse, exactly 0 where q is 0 (an ignored row, even one whose lse is ±inf)
                qb = np.where(zq[r0:r1] == 0, 0.0, zq[r0:r1] * lse[r0:r1])
            alpha = alpha + qb
            # A +inf logit makes lse = +inf: the z-loss gradient q lse p is then ±inf on the
            # +inf logits and 0 elsewhere (the limit of t e^-t), not inf * 0 = NaN.
            limit = np.flatnonzero(np.isinf(qb))
            zero_p = gb[limit] == 0
        with np.errstate(invalid="ignore"):  # inf * 0 on the limit rows, replaced below
            np.multiply(gb, _safe_divide(alpha, s)[:, None], out=gb)
        if qb is not None and limit.size:
            gb[limit] = np.where(zero_p, 0.0, gb[limit])
        # true class: a (p_y - 1) + b (p_y W - w_y), with p_y - 1 = -others / s
        gy = 0.0 - _safe_divide(ab * oth, s)  # 0.0 - x: an ignored row gets +0, not -0
        if bb is not None:
            wy = 1.0 if w is None else w[y]
            gy = gy + bb * (_safe_divide(big_w * ey, s) - wy)
            gb -= bb[:, None] * (1.0 if w is None else w[None, :])
        if qb is not None:
            with np.errstate(invalid="ignore"):
                gy = gy + _safe_divide(np.where(ey == 0, 0.0, qb * ey), s)  # + q lse p_y
        gb[r, y] = gy
        if softcap is not None and capped is not None:
            gb *= _softcap_slope_into(x[r0:r1], softcap, capped[:n])
        if not direct:
            grad[r0:r1] = gb
    return _IndexTerms(nll=nll, smooth=smooth)


def _soft_kernel(
    x: FloatArray,
    c: FloatArray,
    scale: float | FloatArray,
    grad: FloatArray | None,
    fn: str,
    *,
    softcap: float | None = None,
    zq: FloatArray | None = None,
    lse: FloatArray | None = None,
) -> FloatArray:
    r"""Row-blocked softmax cross-entropy with dense target coefficients ``c`` (M, C).

    Returns :math:`\ell_i = -\sum_j c_{ij} \log p_{ij}` (M,), with :math:`0 \cdot \log 0 = 0`
    for masked (``-inf``) logits whose coefficient is 0; writes
    ``grad = scale * (p * sum_j c_ij - c) + zq * lse * p`` when ``grad`` is given (``scale`` a
    number or one per row; the ``zq`` term, the z-loss's, only when ``zq`` is given). ``x``
    and ``c`` are in the compute dtype. ``softcap`` and ``lse`` as in :func:`_index_kernel`.
    """
    n_rows, n_cols = x.shape
    loss = np.empty(n_rows, dtype=x.dtype)
    step = max(1, _BLOCK_BYTES // max(1, n_cols * x.dtype.itemsize))
    block = (min(step, n_rows), n_cols)
    work = np.empty(block if grad is None else (0, n_cols), dtype=x.dtype)  # value-only scratch
    prod = np.empty(block, dtype=x.dtype)  # c * (z - max), block by block
    capped = None if softcap is None else np.empty(block, dtype=x.dtype)  # x', then its slope
    m = np.empty(step, dtype=x.dtype)
    for r0, r1 in _blocks(n_rows, n_cols, x.dtype.itemsize):
        n = r1 - r0
        gb = grad[r0:r1] if grad is not None else work[:n]
        cb, pb = c[r0:r1], prod[:n]
        xb = x[r0:r1]
        if softcap is not None and capped is not None:
            xb = _softcap_into(xb, softcap, capped[:n])  # x', one block at a time
        pos_inf = _shift_block(xb, gb, m[:n], x, fn)
        pb.fill(0.0)
        np.multiply(cb, gb, out=pb, where=cb != 0)  # 0 * (-inf) counts as 0
        c_sum = cb.sum(axis=1)
        np.exp(gb, out=gb)
        s = gb.sum(axis=1)
        with np.errstate(divide="ignore"):
            loss[r0:r1] = c_sum * np.log(s) - pb.sum(axis=1)
            if lse is not None:
                lse[r0:r1] = np.where(pos_inf, np.inf, m[:n] + np.log(s))
        if grad is None:
            continue
        if isinstance(scale, float) and zq is None:
            np.multiply(gb, _safe_divide(scale * c_sum, s)[:, None], out=gb)
            np.multiply(cb, scale, out=pb)
        else:
            sb = np.full(n, scale, dtype=x.dtype) if isinstance(scale, float) else scale[r0:r1]
            coef = sb * c_sum
            limit: IntArray = np.empty(0, dtype=np.intp)
            if zq is not None and lse is not None:
                with np.errstate(invalid="ignore"):
                    # q lse, exactly 0 where q is 0 (even where lse is ±inf)
                    qb = np.where(zq[r0:r1] == 0, 0.0, zq[r0:r1] * lse[r0:r1])
                coef = coef + qb
                limit = np.flatnonzero(np.isinf(qb))  # lse = +inf: see _index_kernel
            zero_p = gb[limit] == 0
            with np.errstate(invalid="ignore"):  # inf * 0 on the limit rows, replaced below
                np.multiply(gb, _safe_divide(coef, s)[:, None], out=gb)
            if limit.size:
                gb[limit] = np.where(zero_p, 0.0, gb[limit])
            np.multiply(cb, sb[:, None], out=pb)
        gb -= pb
        if softcap is not None and capped is not None:
            gb *= _softcap_slope_into(x[r0:r1], softcap, capped[:n])
    return loss


# --------------------------------------------------------------------------------------------
# cross_entropy
# --------------------------------------------------------------------------------------------


def _mean_factor(reduction: str, denominator: float, keep: NDArray[np.bool_]) -> float:
    """``d reduce / d per-sample loss`` of the index-target losses, as PyTorch computes it.

    ``"mean"`` divides by the kept targets' weight sum. When every target is ignored the
    gradient is 0 (nothing was kept); when targets are kept but their weights sum to 0 it is
    0/0 = NaN, like the value (PyTorch gives exactly these two).
    """
    if reduction != "mean":
        return 1.0
    if denominator == 0:
        return math.nan if keep.any() else 0.0
    return 1.0 / denominator


def _cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: object,
    reduction: object,
    label_smoothing: object,
    want_grad: bool,
    *,
    z_loss: object = 0.0,
    softcap: object = None,
    sample_weight: ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray | None]:
    fn = "cross_entropy"
    x = _check_input(input, fn, allow_nan=True)  # NaN is detected by the kernels' row max
    t = _target_kind(target, x, fn)
    n_classes = x.shape[_class_axis(x.ndim)]
    w_in = _check_weight(weight, n_classes, fn)
    ii = _check_ignore_index(ignore_index, fn)
    red = check_reduction(reduction, fn)
    eps = _check_smoothing(label_smoothing, fn)
    z = _check_z_loss(z_loss, fn)
    cap = _check_softcap(softcap, fn)
    sample_shape = _sample_shape(x.shape)
    sw_in = _check_sample_weight(sample_weight, sample_shape, fn)
    dtype = compute_dtype(x.dtype)
    w = None if w_in is None else w_in.astype(dtype, copy=False)
    sw = None if sw_in is None else sw_in.reshape(-1).astype(dtype, copy=False)
    out_dtype = x.dtype
    rows = _to_rows(x)
    n_rows = rows.shape[0]
    # Each option left at its default adds no operation: the default results are bit for bit
    # those without the options.
    lse = np.empty(n_rows, dtype=dtype) if z > 0 else None

    def weighted(v: FloatArray) -> FloatArray:
        """``v`` times the sample weights (``v`` itself without them)."""
        return v if sw is None else v * sw

    if t.dtype.kind == "f":
        if ii >= 0:
            fail(
                fn,
                "ignore_index",
                "be negative (ignore_index is not supported for probability targets)",
                ii,
            )
        c = _to_rows(t).astype(dtype)  # a copy: never touch the caller's target
        if eps > 0:
            c *= 1.0 - eps
            c += eps / n_classes
        if w is not None:
            c *= w
        scale = 1.0 / n_rows if (red == "mean" and n_rows) else 1.0
        row_scale: float | FloatArray = scale if sw is None else scale * sw
        # z lse^2 has gradient 2 z lse p, weighted like the row (1 for probability targets)
        zq = None if lse is None else weighted(np.full(n_rows, 2.0 * z * scale, dtype=dtype))
        g_rows = np.empty((n_rows, n_classes), dtype=dtype) if want_grad else None
        loss = _soft_kernel(
            rows.astype(dtype, copy=False), c, row_scale, g_rows, fn, softcap=cap, zq=zq, lse=lse
        )
        if lse is not None:
            with np.errstate(over="ignore"):
                loss = loss + z * np.square(lse)
        loss = weighted(loss)
        if red == "none":
            value = loss.reshape(sample_shape)
        elif red == "sum":
            value = np.asarray(loss.sum(dtype=np.float64))
        else:
            with np.errstate(invalid="ignore"):
                value = np.asarray(loss.sum(dtype=np.float64) / n_rows)
        grad = None if g_rows is None else _from_rows(g_rows, x.shape).astype(out_dtype)
        return np.asarray(value, dtype=out_dtype), grad

    labels, keep = _check_labels(t, x, ii, fn)
    w_y = keep.astype(dtype) if w is None else np.where(keep, w[labels], 0.0).astype(dtype)
    # PyTorch's "mean" divides both the nll and the smoothing term by the sum of the kept
    # targets' weights (their count without weights; measured on torch 2.13). The z-loss
    # (weighted by w_y) and the sample weights leave this denominator as it is.
    denom = float(w_y.sum(dtype=np.float64))
    r = _mean_factor(red, denom, keep)
    # Ignored rows get a zero gradient whatever r is (also when r is NaN), and whatever their
    # sample weight (also when it is infinite).
    with np.errstate(invalid="ignore"):
        a = np.where(keep, weighted((1.0 - eps) * r * w_y), 0.0).astype(dtype)
        b = None
        if eps > 0:
            b = np.where(keep, weighted(np.full(n_rows, eps / n_classes * r)), 0.0).astype(dtype)
        zq = None
        if lse is not None:
            zq = np.where(keep, weighted(2.0 * z * r * w_y), 0.0).astype(dtype)
    grad_rows = None
    if want_grad:
        grad_rows = np.empty(rows.shape, dtype=dtype if x.ndim > 2 else out_dtype)
    terms = _index_kernel(rows, labels, a, b, w, grad_rows, dtype, fn, softcap=cap, zq=zq, lse=lse)
    with np.errstate(invalid="ignore", over="ignore"):
        per = np.where(keep, weighted((1.0 - eps) * w_y * terms.nll), 0.0)
        if terms.smooth is not None:
            per_smooth = np.where(keep, weighted(eps / n_classes * terms.smooth), 0.0)
        if lse is not None:
            per_z = np.where(keep, weighted(z * w_y * np.square(lse)), 0.0)
    if red == "none":
        total = per if terms.smooth is None else per + per_smooth
        if lse is not None:
            total = total + per_z
        value = total.reshape(sample_shape)
    else:
        s_nll = per.sum(dtype=np.float64)
        s_smooth = 0.0 if terms.smooth is None else per_smooth.sum(dtype=np.float64)
        s_total = s_nll + s_smooth
        if lse is not None:
            s_total = s_total + per_z.sum(dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            if red == "mean":
                value = np.asarray(s_total / denom)
            else:
                value = np.asarray(s_total)
    grad = None
    if grad_rows is not None:
        grad = _from_rows(grad_rows, x.shape).astype(out_dtype, copy=False)
    return np.asarray(value, dtype=out_dtype), grad


def cross_entropy(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: ArrayLike | None = None,
) -> FloatArray:
    r"""Softmax cross-entropy between logits and class indices or class probabilities.

    The NumPy twin of ``torch.nn.functional.cross_entropy``: same arguments, defaults and
    numbers.

    Parameters
    ----------
    input : array_like of float, shape (C,), (N, C) or (N, C, d1, ..., dK)
        Unnormalised logits; the class axis is 1 (0 for a single sample of shape (C,)).
        ``-inf`` entries (a masked vocabulary) are allowed as long as no target needs them;
        ``+inf`` entries give the mathematical limit (the row's probability shared equally
        among its ``+inf`` logits: a target on one of :math:`k` of them costs
        :math:`\log k`, a target elsewhere costs ``inf`` with gradient :math:`p - e_y`,
        e.g. ``[1, -1, 0]`` for target 1 on ``[inf, 0, -inf]``); NaN is refused.
    target : array_like
        Either class indices, integer dtype, of ``input``'s shape without the class axis
        ((), (N,) or (N, d1, ..., dK)), values in [0, C) or ``ignore_index``; or class
        probabilities, floating dtype, of ``input``'s shape (they need not sum to 1).
    weight : array_like of float, shape (C,), optional
        A weight per class.
    ignore_index : int, default -100
        Index targets equal to it contribute neither to the loss nor to the mean's
        denominator. Must be negative with probability targets (as in PyTorch).
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides by the sum of the kept targets' weights (index targets; their
        count without ``weight``), or by the number of samples (probability targets).
    label_smoothing : float in [0, 1], default 0.0
        Mixes the target with the uniform distribution over the C classes.
    z_loss : float, default 0.0
        Keyword only; finite and ``>= 0``. Adds :math:`\lambda \operatorname{LSE}(z_i)^2`
        (:math:`\lambda` = ``z_loss``) per kept position: the PaLM z-loss, Liger-Kernel's and
        flash-attn's ``lse_square_scale``. Weighted by :math:`w_{y_i}` for index targets (1 for
        probability targets), like the position's share of the mean's denominator; never
        smoothed.
    softcap : float, optional
        Keyword only; ``None`` or finite and ``> 0``. Replaces the logits by
        :math:`z' = c \tanh(z / c)` (:math:`c` = ``softcap``) before everything else (the
        softmax, the loss and the z-loss see :math:`z'`): Gemma 2's ``final_logit_softcapping``.
        Every :math:`z'` is finite: a ``+inf`` logit becomes :math:`c` (a finite loss, and a
        zero gradient, :math:`\partial z'/\partial z = 0` there), a ``-inf`` logit becomes
        :math:`-c`, so it no longer masks its class (mask after the softcap, if at all).
    sample_weight : array_like of float, optional
        Keyword only; one weight per target position, of exactly the target positions' shape
        (``input``'s shape without the class axis; no broadcasting). It multiplies each
        position's whole loss (cross-entropy and z-loss). Any real value (negative too, e.g.
        RL advantages); NaN is refused. It does **not** change ``"mean"``'s denominator (a
        position of weight 0 still counts; drop positions with ``ignore_index``); ignored
        positions contribute exactly 0 whatever their weight. For a mean weighted by the
        sample weights, divide ``reduction="sum"`` by ``sample_weight.sum()``.

    Returns
    -------
    ndarray of ``input``'s dtype
        0-d for ``"mean"`` and ``"sum"``; the target's sample shape for ``"none"``.

    Notes
    -----
    With :math:`p_i = \operatorname{softmax}(z_i)` and index target :math:`y_i`,

    .. math:: \ell_i = w_{y_i}\,\big(\operatorname{LSE}(z_i) - z_{i y_i}\big),
              \qquad \frac{\partial \ell_i}{\partial z_i} = w_{y_i}\,(p_i - e_{y_i}).

    With probability targets :math:`t_i`: :math:`\ell_i = -\sum_j w_j t_{ij} \log p_{ij}`
    and :math:`\partial\ell_i/\partial z_i = p_i \sum_j w_j t_{ij} - w \odot t_i`, which is
    the article's :math:`a - y` when the targets sum to 1 and there are no weights.

    Label smoothing :math:`\varepsilon` follows PyTorch exactly, quirks included:

    - index targets: :math:`(1-\varepsilon)\,\ell_i + \frac{\varepsilon}{C}\sum_j w_j
      (\operatorname{LSE}(z_i) - z_{ij})` for each kept target (0 for ignored ones); with
      ``"mean"`` both terms are divided by the kept targets' weight sum (their count without
      ``weight``) even though the smoothing term weights *every* class;
    - probability targets: the target becomes :math:`t(1-\varepsilon) + \varepsilon/C`.

    If every target is ignored, ``"mean"`` is 0/0 = NaN, as in PyTorch (``"sum"`` is 0); the
    gradient is then zero, also as in PyTorch. If targets are kept but their class weights sum
    to 0 (e.g. all-zero ``weight``), ``"mean"`` is NaN and so is the gradient of every kept
    row (ignored rows stay 0): PyTorch's 0/0, reproduced. No warning is emitted for either.

    Computation is in at least float32 (float16 input is computed in float32 and the result
    returned as float16). Integer labels use :math:`\operatorname{LSE}(z) - z_y` with the row
    max shifted out, never :math:`\log(\operatorname{softmax})`, so logits of :math:`\pm 10^4`
    in float32 give finite results. With probability targets, a zero target on a ``-inf``
    logit contributes 0 (PyTorch gives NaN there).

    **Options** (:doc:`/guide/options`). With :math:`z' = c \tanh(z / c)` (``softcap``;
    :math:`z' = z` without), :math:`p_i = \operatorname{softmax}(z'_i)`,
    :math:`\operatorname{lse}_i = \operatorname{LSE}(z'_i)`, :math:`\lambda` = ``z_loss`` and
    :math:`s_i` = ``sample_weight`` (1 without), position :math:`i`'s loss and gradient are

    .. math::

        \ell_i = s_i \big[\ell^{\mathrm{CE}}_i(z'_i) + \lambda\, w_{y_i}
                  \operatorname{lse}_i^2\big], \qquad
        \frac{\partial \ell_i}{\partial z_i} = s_i \big[g^{\mathrm{CE}}_i
            + 2 \lambda\, w_{y_i} \operatorname{lse}_i\, p_i\big]
            \odot \big(1 - (z'_i / c)^2\big),

    :math:`\ell^{\mathrm{CE}}_i` and its gradient :math:`g^{\mathrm{CE}}_i` as above (label
    smoothing included) but of :math:`z'`, and :math:`w_{y_i} = 1` for probability targets. The
    z-loss's gradient is :math:`\partial \operatorname{lse}^2 / \partial z' = 2
    \operatorname{lse}\, p`; the softcap's slope :math:`\partial z'/\partial z = 1 -
    \tanh^2(z/c) = 1 - (z'/c)^2` is computed as :math:`1/\cosh^2(z/c)`, which does not cancel
    where :math:`|z'| \to c`. ``"mean"`` divides by the same denominator as without the options.
    Without a softcap, a ``+inf`` logit makes the z-loss ``inf``; its gradient is then ``inf``
    (times the sign of :math:`s_i`) on the ``+inf`` logits and 0 elsewhere (the limit). Each
    option at its default adds no operation: ``z_loss=0.0``, ``softcap=None`` and
    ``sample_weight=None`` give the results of a call without them, bit for bit.

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> cross_entropy(z, np.array([0, 1]))
    array(0.31853977)
    >>> cross_entropy(z, np.array([0, 1]), reduction="none")
    array([0.41703002, 0.22004952])
    >>> cross_entropy(np.array([1000.0, 0.0]), np.array(1))  # no overflow
    array(1000.)

    The z-loss adds :math:`\lambda \operatorname{lse}^2` per position:

    >>> y = np.array([0, 1])
    >>> lse = np.log(np.exp(z).sum(axis=1))
    >>> lse
    array([2.41703002, 2.72004952])
    >>> cross_entropy(z, y, z_loss=1e-4)  # 0.31853977 + 1e-4 * mean(lse**2)
    array(0.3192018)

    The softcap maps the logits to :math:`c \tanh(z / c)` first; a ``+inf`` logit becomes
    :math:`c`:

    >>> cross_entropy(z, y, softcap=1.0, reduction="none")
    array([0.80561038, 0.73753568])
    >>> np.allclose(cross_entropy(z, y, softcap=1.0), cross_entropy(np.tanh(z), y))
    True
    >>> cross_entropy(np.array([np.inf, 0.0]), np.array(1), softcap=30.0)  # log(e^30 + 1)
    array(30.)

    Sample weights multiply each position's loss; the mean still divides by the number of
    positions:

    >>> cross_entropy(z, y, sample_weight=np.array([2.0, 0.0]))  # (2 * 0.41703002 + 0) / 2
    array(0.41703002)
    """
    value, _ = _cross_entropy(
        input,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        want_grad=False,
        z_loss=z_loss,
        softcap=softcap,
        sample_weight=sample_weight,
    )
    return value


@gradient_of(cross_entropy)
def cross_entropy_value_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: ArrayLike | None = None,
) -> tuple[FloatArray, FloatArray]:
    r""":func:`cross_entropy` and its gradient with respect to ``input``, in closed form.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction, label_smoothing
        As for :func:`cross_entropy`.
    z_loss, softcap, sample_weight
        As for :func:`cross_entropy` (keyword only).

    Returns
    -------
    value : ndarray
        ``cross_entropy(input, target, ...)``.
    gradient : ndarray, ``input``'s shape and dtype
        :math:`\partial\,\mathrm{value}/\partial\,\mathrm{input}`; for ``reduction="none"``
        the gradient of the sum of the values. Rows of ignored targets are zero.

    Notes
    -----
    Per sample :math:`g_i = c_i\,(p_i \sum_j t_{ij} - t_i)` (the article's
    :math:`a - y` when the targets sum to 1), with :math:`c_i` the target's weight over the
    mean's denominator; label smoothing adds :math:`\frac{\varepsilon}{C} (p_i W - w)`,
    :math:`W = \sum_j w_j`. The true-class entry :math:`p_y - 1` is computed as
    :math:`-\sum_{j \ne y} p_j`, which stays accurate when :math:`p_y \to 1`.

    With the options (:math:`z' = c \tanh(z/c)`, :math:`p = \operatorname{softmax}(z')`,
    :math:`\lambda` = ``z_loss``, :math:`s_i` = ``sample_weight``) the gradient is

    .. math::

        g_i = s_i\, c_i \big[(a_i + 2 \lambda\, w_{y_i} \operatorname{lse}_i)\, p_i
              - t'_i\big] \odot \big(1 - (z'_i / c)^2\big),

    :math:`a_i = \sum_j t'_{ij}` and :math:`t'_i` the (smoothed, class-weighted) target
    coefficients: the z-loss puts one more multiple of :math:`p_i` in the article's
    :math:`a - y`, and the softcap multiplies by its slope, :math:`1/\cosh^2(z/c)`.

    The integer-label path allocates the gradient once and fills it block of rows by block
    of rows (max, subtract, exp, sum, scale, in place): memory above the input is the
    gradient alone (and one block for the softcapped logits, with ``softcap``).

    Examples
    --------
    >>> import numpy as np
    >>> z = np.array([[2.0, 1.0, 0.1]])
    >>> value, grad = cross_entropy_value_and_grad(z, np.array([0]))
    >>> grad  # softmax(z) - one_hot(0)
    array([[-0.34099886,  0.24243297,  0.09856589]])

    The z-loss and the softcap in the gradient, written out:

    >>> c, lam = 3.0, 0.5
    >>> zc = c * np.tanh(z / c)
    >>> lse = np.log(np.exp(zc).sum())
    >>> p = np.exp(zc - lse)
    >>> value, grad = cross_entropy_value_and_grad(z, np.array([0]), z_loss=lam, softcap=c)
    >>> grad
    array([[0.64053588, 0.80661983, 0.37852375]])
    >>> np.allclose(grad, ((1 + 2 * lam * lse) * p - [1, 0, 0]) * (1 - (zc / c) ** 2))
    True
    """
    value, grad = _cross_entropy(
        input,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        want_grad=True,
        z_loss=z_loss,
        softcap=softcap,
        sample_weight=sample_weight,
    )
    return value, cast(FloatArray, grad)  # want_grad=True always returns a gradient


# --------------------------------------------------------------------------------------------
# nll_loss
# --------------------------------------------------------------------------------------------


def _nll_loss(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None,
    ignore_index: object,
    reduction: object,
    want_grad: bool,
) -> tuple[FloatArray, FloatArray | None]:
    fn = "nll_loss"
    x = _check_input(input, fn)
    t = as_array(target, fn, "target")
    if t.dtype.kind not in "iu":
        fail(fn, "target", "have an integer dtype (class indices)", f"dtype {t.dtype}", TypeError)
    n_classes = x.shape[_class_axis(x.ndim)]
    w_in = _check_weight(weight, n_classes, fn)
    ii = _check_ignore_index(ignore_index, fn)
    red = check_reduction(reduction, fn)
    labels, keep = _check_labels(t, x, ii, fn)
    dtype = compute_dtype(x.dtype)
    rows = _to_rows(x)
    r = np.arange(rows.shape[0])
    w_y = keep.astype(dtype) if w_in is None else np.where(keep, w_in[labels], 0.0).astype(dtype)
    picked = rows[r, labels].astype(dtype)
    with np.errstate(invalid="ignore"):
        per = np.where(keep, -w_y * picked, 0.0).astype(dtype)
    denom = float(w_y.sum(dtype=np.float64))
    if red == "none":
        value = per.reshape(_sample_shape(x.shape))
    elif red == "sum":
        value = np.asarray(per.sum(dtype=np.float64))
    else:
        with np.errstate(invalid="ignore", divide="ignore"):
            value = np.asarray(per.sum(dtype=np.float64) / denom)
    grad = None
    if want_grad:
        scale = _mean_factor(red, denom, keep)
        g_rows = np.zeros(rows.shape, dtype=dtype)
        with np.errstate(invalid="ignore"):  # 0/0: kept targets of zero total weight
            g_rows[r[keep], labels[keep]] = -scale * w_y[keep]
        grad = _from_rows(g_rows, x.shape).astype(x.dtype, copy=False)
    return np.asarray(value, dtype=x.dtype), grad


def nll_loss(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> FloatArray:
    r"""Negative log-likelihood of class indices under log-probabilities.

    The NumPy twin of ``torch.nn.functional.nll_loss``;
    ``nll_loss(log_softmax(z, axis=1), y) == cross_entropy(z, y)``.

    Parameters
    ----------
    input : array_like of float, shape (C,), (N, C) or (N, C, d1, ..., dK)
        Log-probabilities (class axis 1, or 0 for shape (C,)). NaN is refused.
    target : array_like of int, ``input``'s shape without the class axis
        Class indices in [0, C), or ``ignore_index``.
    weight : array_like of float, shape (C,), optional
        A weight per class.
    ignore_index : int, default -100
        Targets equal to it contribute neither to the loss nor to the mean's denominator.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides by the sum of the kept targets' weights (their count without
        ``weight``); all targets ignored gives NaN, as in PyTorch.

    Returns
    -------
    ndarray of ``input``'s dtype
        0-d for ``"mean"`` and ``"sum"``; the target's shape for ``"none"``.

    Notes
    -----
    .. math:: \ell_i = -w_{y_i}\, x_{i y_i}, \qquad
              \frac{\partial \ell_i}{\partial x_{ij}} = -w_{y_i}\,[j = y_i].

    Examples
    --------
    >>> import numpy as np
    >>> logp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]]))
    >>> nll_loss(logp, np.array([0, 1]))  # -(log 0.7 + log 0.8) / 2
    array(0.28990925)
    """
    value, _ = _nll_loss(input, target, weight, ignore_index, reduction, want_grad=False)
    return value


@gradient_of(nll_loss)
def nll_loss_value_and_grad(
    input: ArrayLike,
    target: ArrayLike,
    weight: ArrayLike | None = None,
    ignore_index: int = -100,
    reduction: Reduction = "mean",
) -> tuple[FloatArray, FloatArray]:
    r""":func:`nll_loss` and its gradient with respect to ``input``, in closed form.

    Parameters
    ----------
    input, target, weight, ignore_index, reduction
        As for :func:`nll_loss`.

    Returns
    -------
    value : ndarray
        ``nll_loss(input, target, ...)``.
    gradient : ndarray, ``input``'s shape and dtype
        :math:`-w_{y_i}/D` at each kept target (D the mean's denominator, 1 for ``"sum"`` and
        ``"none"``), zero elsewhere; zero everywhere if every target is ignored, NaN at the
        kept targets if their weights sum to 0 with ``"mean"`` (PyTorch's 0/0).

    Notes
    -----
    .. math:: \frac{\partial}{\partial x_{ij}} \sum_i \ell_i = -w_{y_i}\,[j = y_i]

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = nll_loss_value_and_grad(np.log(np.array([[0.5, 0.5]])), np.array([1]))
    >>> grad
    array([[ 0., -1.]])
    """
    value, grad = _nll_loss(input, target, weight, ignore_index, reduction, want_grad=True)
    return value, cast(FloatArray, grad)


# --------------------------------------------------------------------------------------------
# categorical_cross_entropy (the article's form, on probabilities)
# --------------------------------------------------------------------------------------------


def _categorical(
    input: ArrayLike, target: ArrayLike, reduction: object, want_grad: bool
) -> tuple[FloatArray, FloatArray | None]:
    fn = "categorical_cross_entropy"
    a_in = _check_input(input, fn)
    y_in = float_array(target, fn, "target")
    check_same_shape(a_in, y_in, fn)
    red = check_reduction(reduction, fn)
    for arr, name in ((a_in, "input"), (y_in, "target")):
        if arr.size and (np.any(arr < 0) or np.any(arr > 1)):
            lo, hi = float(np.min(arr)), float(np.max(arr))
            fail(fn, name, "contain probabilities in [0, 1]", f"values in [{lo:.6g}, {hi:.6g}]")
    dtype = compute_dtype(a_in.dtype)
    a = a_in.astype(dtype, copy=False)
    y = y_in.astype(dtype, copy=False)
    ax = _class_axis(a.ndim)
    with np.errstate(divide="ignore"):
        log_a = np.maximum(np.log(a), _LOG_CLAMP)  # torch's clamp: -log(0) counts as 100
    per = -(y * log_a).sum(axis=ax)
    n_samples = per.size
    if red == "none":
        value = per
    elif red == "sum":
        value = np.asarray(per.sum(dtype=np.float64))
    else:
        with np.errstate(invalid="ignore"):
            value = np.asarray(per.sum(dtype=np.float64) / n_samples)
    grad = None
    if want_grad:
        scale = (math.nan if n_samples == 0 else 1.0 / n_samples) if red == "mean" else 1.0
        g = -scale * y / np.maximum(a, _PROB_EPS) + 0.0  # + 0.0: no -0.0
        with np.errstate(over="ignore"):  # float16: -1e12 at a = 0 is -inf (documented)
            grad = g.astype(a_in.dtype, copy=False)
    return np.asarray(value, dtype=a_in.dtype), grad


def categorical_cross_entropy(
    input: ArrayLike, target: ArrayLike, reduction: Reduction = "mean"
) -> FloatArray:
    r"""The article's categorical cross-entropy :math:`-\sum_j y_j \log a_j` on probabilities.

    Parameters
    ----------
    input : array_like of float, shape (C,), (N, C) or (N, C, d1, ..., dK)
        Predicted probabilities :math:`a` in [0, 1] (class axis 1, or 0 for shape (C,)),
        e.g. ``softmax(z, axis=1)``.
    target : array_like of float, ``input``'s shape
        One-hot or soft targets :math:`y` in [0, 1].
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides by the number of samples (:math:`n` in the article).

    Returns
    -------
    ndarray of ``input``'s dtype
        0-d for ``"mean"`` and ``"sum"``; ``input``'s shape without the class axis for
        ``"none"``.

    Notes
    -----
    .. math:: L = -\frac{1}{n}\sum_{i=1}^{n}\sum_{j=1}^{m} y_{ij}\log a_{ij},
              \qquad \frac{\partial L}{\partial a_{ij}} = -\frac{y_{ij}}{n\,a_{ij}}

    As in ``torch.nn.functional.binary_cross_entropy``, :math:`\log a` is clamped at -100
    (so a zero probability on a true class costs 100, not infinity) and the gradient divides
    by :math:`\max(a, 10^{-12})`. Composed with a softmax the gradient with respect to the
    logits is the article's :math:`a - y`; :func:`cross_entropy` on the logits computes the
    same value more accurately.

    The rows of ``input`` and ``target`` are **not** checked to be distributions (to sum to 1
    along the class axis): only that every entry lies in [0, 1]. The formula is computed as
    written for any such rows (``[[0.5, 0.9]]`` against ``[[1, 0]]`` gives
    :math:`-\log 0.5`), and its gradient treats every :math:`a_{ij}` as a free variable,
    which is what a finite-difference check perturbs. The value is a cross-entropy between
    distributions only when the rows are distributions; :func:`cross_entropy` on logits
    cannot be given anything else.

    The gradient at :math:`a = 0` is :math:`-10^{12}\,y/n`: finite in float32 and wider; in
    float16 it rounds to :math:`-\infty` (the value stays at most 100 per sample and class).

    Examples
    --------
    >>> import numpy as np
    >>> a = np.array([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1]])
    >>> y = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    >>> categorical_cross_entropy(a, y)  # -(log 0.7 + log 0.8) / 2
    array(0.28990925)
    >>> categorical_cross_entropy(np.array([0.0, 1.0]), np.array([1.0, 0.0]))  # clamped
    array(100.)
    """
    value, _ = _categorical(input, target, reduction, want_grad=False)
    return value


@gradient_of(categorical_cross_entropy)
def categorical_cross_entropy_value_and_grad(
    input: ArrayLike, target: ArrayLike, reduction: Reduction = "mean"
) -> tuple[FloatArray, FloatArray]:
    r""":func:`categorical_cross_entropy` and its gradient with respect to the probabilities.

    Parameters
    ----------
    input, target, reduction
        As for :func:`categorical_cross_entropy`.

    Returns
    -------
    value : ndarray
        ``categorical_cross_entropy(input, target, reduction)``.
    gradient : ndarray, ``input``'s shape and dtype
        :math:`-y / (n \max(a, 10^{-12}))` for ``"mean"`` (without the :math:`1/n` for
        ``"sum"``; for ``"none"`` the gradient of the sum).

    Notes
    -----
    .. math:: \frac{\partial L}{\partial a_{ij}} = -\frac{y_{ij}}{n\,a_{ij}}

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = categorical_cross_entropy_value_and_grad(
    ...     np.array([[0.5, 0.25, 0.25]]), np.array([[1.0, 0.0, 0.0]]))
    >>> grad
    array([[-2., -0., -0.]])
    """
    value, grad = _categorical(input, target, reduction, want_grad=True)
    return value, cast(FloatArray, grad)


__all__ = [
    "categorical_cross_entropy",
    "categorical_cross_entropy_value_and_grad",
    "cross_entropy",
    "cross_entropy_value_and_grad",
    "nll_loss",
    "nll_loss_value_and_grad",
]
