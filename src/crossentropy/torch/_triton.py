# mypy: disable-error-code="no-untyped-def,untyped-decorator,no-any-return"
r"""Triton kernels: the CUDA path of :mod:`._kernels`, same functions, same semantics.

Each public function here has the signature and the results of its namesake in
:mod:`._kernels` (statistics pass, gradient pass, fused sweep, probability targets), so every
caller — the fused ``cross_entropy``, the chunked ``linear_cross_entropy`` and the
vocabulary-parallel functions — runs on Triton by choosing this module instead of that one.

One program per row. A row is read in chunks of ``BLOCK`` classes (``Tuning.triton_block``) with an
*online* softmax (running max ``m`` and ``Σ exp(x − m)`` rescaled when the max grows), so any
vocabulary size works, powers of two or not, and the row never has to fit on chip. Everything
accumulates in float32 (float64 for float64 input). As in the torch-op kernels, the target column is
kept out of ``Σ exp``, so ``q = Σ_{c≠y} p_c`` keeps its relative precision for confident rows and
the true-class gradient is written as ``τ = (ε/C)(W − w_y) − a q`` instead of the cancelling ``p_y −
1``. The fused sweep reads the row twice (statistics, then gradient) and writes the gradient once,
in one launch; nothing is read on the host.

``softcap=c`` maps every logit to ``x' = c tanh(x / c)`` as it is loaded, in registers: every
statistic is of ``x'`` and every gradient is the one at ``x'`` times ``∂x'/∂x = 1 − t²`` with the
same ``t = tanh(x / c)`` (the formula of torch's tanh backward); no softcapped copy of the logits
exists in memory. ``tanh`` is :func:`_tanh`, built from ``exp``: Triton's ``libdevice.tanh`` is
an external CUDA function the interpreter cannot run, and one formula for both keeps what the
tests check the code that runs on the GPU. ``z_loss=z`` (fused sweep only) adds
``z w_y lse(x')²`` to each kept row's loss: ``2 z w_y lse`` joins the coefficient of ``p``.
Both are ``constexpr`` switches: without them the kernels compile exactly as before.

Rows may be strided (the classes of an ``(N, C, d…)`` input are not contiguous): a row index
``r`` addresses ``(r // D) * stride_outer + (r % D) * stride_inner`` and the classes
``stride_col`` apart, which covers every layout :mod:`.functional` produces; anything else is
made contiguous first.

On CPU tensors these kernels run in Triton's interpreter (``TRITON_INTERPRET=1``): that is how
the test suite checks them on machines without a GPU.
"""

from __future__ import annotations

import math
import os

import torch
import triton  # type: ignore[import-not-found,import-untyped]
import triton.language as tl  # type: ignore[import-not-found,import-untyped]
from torch import Tensor

from . import _types as K
from ._types import tuning

__all__ = [
    "logits_fused",
    "logits_grad",
    "logits_row_stats",
    "prob_grad",
    "prob_row_stats",
]

#: Whether Triton defined these kernels for its interpreter (it reads ``TRITON_INTERPRET`` at
#: definition, so setting the variable later changes nothing for this process).
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _block(num_classes: int) -> int:
    """Classes per chunk: :attr:`Tuning.triton_block <._types.Tuning.triton_block>`, or one
    from the vocabulary size."""
    block = tuning().triton_block
    if block is not None:
        return block
    cap = 256 if INTERPRETED else 4096
    return max(16, min(cap, triton.next_power_of_2(max(1, num_classes))))


def _warps(block: int) -> int:
    return 4 if block <= 1024 else (8 if block <= 4096 else 16)


# --------------------------------------------------------------------------- layout


def _row_layout(x: Tensor) -> tuple[Tensor, int, int, int, int, int]:
    """``(x', R, D, stride_outer, stride_inner, stride_col)`` for ``x'`` = ``x`` or a
    contiguous copy, with rows ``r`` at ``(r // D) * so + (r % D) * si``."""
    rows = tuple(x.shape[:-1])
    col = x.stride(-1) if x.dim() else 1
    if not rows:
        return x, 1, 1, 0, 0, col
    if len(rows) == 1:
        return x, rows[0], 1, x.stride(0), 0, col
    inner = rows[1:]
    strides = x.stride()[1:-1]
    ok = all(strides[i] == strides[i + 1] * inner[i + 1] for i in range(len(inner) - 1))
    if not ok:
        x = x.contiguous()
        strides = x.stride()[1:-1]
    d = math.prod(inner)
    return x, math.prod(rows), d, x.stride(0), strides[-1] if inner else 0, x.stride(-1)


def _scalar(value: float | Tensor, device: torch.device, dtype: torch.dtype) -> Tensor:
    if isinstance(value, Tensor):
        return value.reshape(1).to(device=device, dtype=dtype)
    return torch.full((1,), float(value), device=device, dtype=dtype)


# --------------------------------------------------------------------------- kernels


@triton.jit
def _tanh(u):
    """``tanh(u)`` in float32 from ``exp``; NaN stays NaN, ``±inf`` gives ``±1``.

    Measured in the interpreter (NumPy's float32 ``exp``) over 1e7 arguments in
    ``±[1e-30, 32]``: at most 1.73 ulp from the exact value, 0.18 ulp on average (torch's
    ``tanh``: 0.51 ulp). Compiled, ``exp`` is ``ex2.approx.f32`` and ``/`` is ``div.full.f32``
    (each within about 2 ulp), so expect a little more there.

    Cephes' ``tanhf``: ``|u| > 0.625``: ``1 − 2 / (e^{2|u|} + 1)``, no cancellation (``t > 0.55``;
    ``|u|`` is capped at 15, where it is 1 in float32, so ``exp`` never overflows); below, an odd
    polynomial, since ``1 − e^{−2|u|}`` would cancel near 0.
    """
    a = tl.abs(u)
    big = tl.where(a < 15.0, a, 15.0)  # NaN goes to the polynomial, which keeps it
    big = 1.0 - 2.0 / (tl.exp(2.0 * big) + 1.0)
    small = tl.where(a > 0.625, 0.625, a)
    s = small * small
    poly = -5.70498872745e-3 * s + 2.06390887954e-2
    poly = poly * s - 5.37397155531e-2
    poly = poly * s + 1.33314422036e-1
    poly = poly * s - 3.33332819422e-1
    small = small + small * s * poly
    t = tl.where(a > 0.625, big, small)
    return tl.where(u < 0.0, -t, t)


@triton.jit
def _row_stats(
    x_ptr,
    t_local,
    inside,
    w_ptr,
    V,
    stride_col,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    WITH_SUM: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Online statistics of one row: max, Σ_{c≠y} e^{x−m}, x_y, Σ w x (of ``x'`` with
    ``SOFTCAP``)."""
    zero = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), 0)
    m = zero - float("inf")
    d = zero
    xt = zero
    s = zero
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(x_ptr + cols * stride_col, mask=mask, other=float("-inf")).to(tl.float32)
        if SOFTCAP:  # masked lanes back to -inf (the cap maps -inf to -c)
            x = tl.where(mask, cap * _tanh(x * inv_cap), float("-inf"))
        is_t = (cols == t_local) & inside
        xt += tl.sum(tl.where(is_t, x, 0.0), 0)
        if WITH_SUM:
            x0 = tl.where(mask, x, 0.0)  # masked lanes hold -inf
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                s += tl.sum(w * x0, 0)
            else:
                s += tl.sum(x0, 0)
        m_new = tl.maximum(m, tl.max(x, 0))
        # guard the all-(-inf) prefix: exp(-inf - -inf) would be nan
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        e = tl.where(mask & ~is_t, tl.exp(x - m_ref), 0.0)
        d = d * tl.exp(m - m_ref) + tl.sum(e, 0)
        m = m_new
    return m, d, xt, s


@triton.jit
def _write_grad(
    x_ptr,
    g_ptr,
    t_local,
    inside,
    w_ptr,
    lse,
    p_scale,
    smooth,
    tgrad,
    V,
    stride_col,
    g_stride_col,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``g_c = p_scale e^{x_c − lse} − smooth w_c`` (``c ≠ y``), ``g_y = tgrad``; with
    ``SOFTCAP`` at ``x' = c t``, ``t = tanh(x / c)``, then times ``∂x'/∂x = 1 − t²``."""
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(x_ptr + cols * stride_col, mask=mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            t = _tanh(x * inv_cap)
            x = cap * t
        g = p_scale * tl.exp(x - lse)
        if SMOOTH:
            if HAS_WEIGHT:
                w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
                g -= smooth * w
            else:
                g -= smooth
        g = tl.where((cols == t_local) & inside, tgrad, g)
        if SOFTCAP:  # the chain factor of every column, the target's too
            g = g * (1.0 - t * t)
        tl.store(g_ptr + cols * g_stride_col, g.to(g_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _stats_kernel(
    X,
    T,
    W,
    M_out,
    SE_out,
    XT_out,
    HAS_out,
    S_out,
    D,
    so,
    si,
    sc,
    V,
    class_offset,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    WITH_SUM: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + (r // D) * so + (r % D) * si
    t_local = tl.load(T + r).to(tl.int64) - class_offset
    inside = (t_local >= 0) & (t_local < V)
    m, d, xt, s = _row_stats(
        x_ptr, t_local, inside, W, V, sc, cap, inv_cap, HAS_WEIGHT, WITH_SUM, SOFTCAP, BLOCK
    )
    tl.store(M_out + r, m)
    tl.store(SE_out + r, d)
    tl.store(XT_out + r, xt)
    tl.store(HAS_out + r, inside.to(tl.int8))
    if WITH_SUM:
        tl.store(S_out + r, s)


@triton.jit
def _grad_kernel(
    X,
    G,
    T,
    W,
    LSE,
    PS,
    SS,
    TG,
    D,
    so,
    si,
    sc,
    gso,
    gsi,
    gsc,
    V,
    class_offset,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + (r // D) * so + (r % D) * si
    g_ptr = G + (r // D) * gso + (r % D) * gsi
    t_local = tl.load(T + r).to(tl.int64) - class_offset
    inside = (t_local >= 0) & (t_local < V)
    lse = tl.load(LSE + r).to(tl.float32)
    p_scale = tl.load(PS + r).to(tl.float32)
    smooth = 0.0
    if SMOOTH:
        smooth = tl.load(SS + r).to(tl.float32)
    tgrad = tl.load(TG + r).to(tl.float32)
    _write_grad(
        x_ptr,
        g_ptr,
        t_local,
        inside,
        W,
        lse,
        p_scale,
        smooth,
        tgrad,
        V,
        sc,
        gsc,
        cap,
        inv_cap,
        HAS_WEIGHT,
        SMOOTH,
        SOFTCAP,
        BLOCK,
    )


@triton.jit
def _fused_kernel(
    X,
    G,
    T,
    W,
    RS,
    TW,
    WTOT,
    M_out,
    SE_out,
    XT_out,
    S_out,
    D,
    so,
    si,
    sc,
    gso,
    gsi,
    gsc,
    V,
    eps,
    zl,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    SMOOTH: tl.constexpr,
    Z_LOSS: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """Statistics, coefficients and gradient of one row over the whole vocabulary."""
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + (r // D) * so + (r % D) * si
    g_ptr = G + (r // D) * gso + (r % D) * gsi
    t_local = tl.load(T + r).to(tl.int64)
    inside = (t_local >= 0) & (t_local < V)
    m, d, xt, s = _row_stats(
        x_ptr, t_local, inside, W, V, sc, cap, inv_cap, HAS_WEIGHT, SMOOTH, SOFTCAP, BLOCK
    )
    m_ref = tl.where(m == float("-inf"), 0.0, m)
    et = tl.where(inside, tl.exp(xt - m_ref), 0.0)
    total = d + et
    q = d / total
    rs = tl.load(RS + r).to(tl.float32)
    tw = tl.load(TW + r).to(tl.float32)
    wtot = tl.load(WTOT).to(tl.float32)
    a = (1.0 - eps) * tw + (eps / V) * wtot
    if Z_LOSS:  # ∂(z w_y lse²)/∂x_c = 2 z w_y lse p_c: on p's coefficient, and on τ's 1 − q
        zg = 2.0 * zl * tw * (m_ref + tl.log(total))
        a += zg
    p_scale = rs * a
    smooth = rs * (eps / V)
    tgrad = smooth * (wtot - tw) - p_scale * q
    if Z_LOSS:
        tgrad += rs * zg
    zero_row = rs == 0.0
    p_scale = tl.where(zero_row, 0.0, p_scale)
    smooth = tl.where(zero_row, 0.0, smooth)
    tgrad = tl.where(zero_row, 0.0, tgrad)
    tl.store(M_out + r, m)
    tl.store(SE_out + r, d)
    tl.store(XT_out + r, xt)
    if SMOOTH:
        tl.store(S_out + r, s)
    # p_c = e^{x_c − m} / total: shifting by the (exact) max, not by a rounded lse, keeps p
    # accurate for large logits; 1/total goes into the row's scale
    _write_grad(
        x_ptr,
        g_ptr,
        t_local,
        inside,
        W,
        m_ref,
        tl.where(zero_row, 0.0, p_scale / total),  # 0/0 for an ignored row of all -inf
        smooth,
        tgrad,
        V,
        sc,
        gsc,
        cap,
        inv_cap,
        HAS_WEIGHT,
        SMOOTH,
        SOFTCAP,
        BLOCK,
    )


@triton.jit
def _prob_stats_kernel(
    X,
    Y,
    W,
    REF_out,
    REL_out,
    LOSS_out,
    A_out,
    D,
    so,
    si,
    sc,
    yso,
    ysi,
    ysc,
    V,
    eps,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + (r // D) * so + (r % D) * si
    y_ptr = Y + (r // D) * yso + (r % D) * ysi
    zero = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), 0)
    m = zero - float("inf")
    d = zero
    a = zero
    b = zero  # Σ w y' (x − m) for the running max m: no cancellation for large logits
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(x_ptr + cols * sc, mask=mask, other=float("-inf")).to(tl.float32)
        if SOFTCAP:  # masked lanes back to -inf (the cap maps -inf to -c)
            x = tl.where(mask, cap * _tanh(x * inv_cap), float("-inf"))
        y = tl.load(y_ptr + cols * ysc, mask=mask, other=0.0).to(tl.float32)
        y = y * (1.0 - eps) + eps / V
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        y = tl.where(mask, y, 0.0)
        m_new = tl.maximum(m, tl.max(x, 0))
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        m_old = tl.where(m == float("-inf"), m_ref, m)
        b = b - a * (m_ref - m_old) + tl.sum(y * tl.where(mask, x - m_ref, 0.0), 0)
        a += tl.sum(y, 0)
        d = d * tl.exp(m - m_ref) + tl.sum(tl.where(mask, tl.exp(x - m_ref), 0.0), 0)
        m = m_new
    rel = tl.log(d)
    tl.store(REF_out + r, tl.where(m == float("-inf"), 0.0, m))
    tl.store(REL_out + r, rel)
    tl.store(LOSS_out + r, a * rel - b)
    tl.store(A_out + r, a)


@triton.jit
def _prob_grad_kernel(
    X,
    Y,
    G,
    W,
    LSE,
    RG,
    AM,
    D,
    so,
    si,
    sc,
    yso,
    ysi,
    ysc,
    gso,
    gsi,
    gsc,
    V,
    eps,
    cap,
    inv_cap,
    HAS_WEIGHT: tl.constexpr,
    SOFTCAP: tl.constexpr,
    BLOCK: tl.constexpr,
):
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + (r // D) * so + (r % D) * si
    y_ptr = Y + (r // D) * yso + (r % D) * ysi
    g_ptr = G + (r // D) * gso + (r % D) * gsi
    lse = tl.load(LSE + r).to(tl.float32)
    rg = tl.load(RG + r).to(tl.float32)
    am = tl.load(AM + r).to(tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        mask = cols < V
        x = tl.load(x_ptr + cols * sc, mask=mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            t = _tanh(x * inv_cap)
            x = cap * t
        y = tl.load(y_ptr + cols * ysc, mask=mask, other=0.0).to(tl.float32)
        y = y * (1.0 - eps) + eps / V
        if HAS_WEIGHT:
            y = y * tl.load(W + cols, mask=mask, other=0.0).to(tl.float32)
        g = rg * (am * tl.exp(x - lse) - y)
        if SOFTCAP:
            g = g * (1.0 - t * t)
        tl.store(g_ptr + cols * gsc, g.to(g_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- host functions


def _flat_target(target: Tensor) -> Tensor:
    return target.reshape(-1).contiguous()


def _stats_out(n: int, v: int, device: torch.device) -> list[Tensor]:
    """Row max, Σ exp, target logit, Σ w x: written by the kernel, or an empty shard's
    values (``−inf, 0, 0, 0``) when there are no classes."""
    if v:
        return [torch.empty(n, dtype=torch.float32, device=device) for _ in range(4)]
    m = torch.full((n,), float("-inf"), dtype=torch.float32, device=device)
    return [m, *(torch.zeros(n, dtype=torch.float32, device=device) for _ in range(3))]


def _softcap_args(softcap: float | None) -> tuple[float, float, bool]:
    """``(c, 1 / c, SOFTCAP)`` for the kernels (placeholders 1.0 without a softcap): they
    take ``x / c`` as ``x · (1 / c)``, one multiply, within an ulp of the quotient."""
    if softcap is None:
        return 1.0, 1.0, False
    c = float(softcap)
    return c, 1.0 / c, True


def _check_float64(x: Tensor) -> None:
    if x.dtype == torch.float64:
        raise TypeError(
            "crossentropy Triton kernels: logits must be float16, bfloat16 or float32 "
            f"(float64 runs on the torch path), got dtype {x.dtype}"
        )


def logits_row_stats(
    logits: Tensor,
    target: Tensor,
    *,
    class_offset: int = 0,
    class_weight: Tensor | None = None,
    with_sum: bool = False,
    block_rows: int | None = None,
    softcap: float | None = None,
) -> K.RowStats:
    """:func:`._kernels.logits_row_stats` as one Triton launch (statistics of
    ``x' = c tanh(x / c)`` with ``softcap=c``)."""
    _check_float64(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    rows, v = tuple(logits.shape[:-1]), logits.shape[-1]
    x, n, d, so, si, sc = _row_layout(logits)
    t = _flat_target(target)
    dev = logits.device
    m, se, xt, s = _stats_out(n, v, dev)
    has = torch.zeros(n, dtype=torch.int8, device=dev)
    w = class_weight.to(torch.float32).contiguous() if class_weight is not None else m
    if n and v:
        blk = _block(v)
        _stats_kernel[(n,)](
            x,
            t,
            w,
            m,
            se,
            xt,
            has,
            s,
            d,
            so,
            si,
            sc,
            v,
            class_offset,
            cap,
            inv_cap,
            HAS_WEIGHT=class_weight is not None,
            WITH_SUM=with_sum,
            SOFTCAP=on,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    return K.RowStats(
        m.reshape(rows),
        se.reshape(rows),
        xt.reshape(rows),
        has.reshape(rows).bool(),
        s.reshape(rows) if with_sum else None,
    )


def _out_layout(out: Tensor, like: Tensor) -> tuple[Tensor, int, int, int, bool]:
    """``(out', gso, gsi, gsc, copy_back)``: ``out`` if its rows share ``like``'s
    decomposition, else a contiguous buffer to copy back from."""
    o, _, d, so, si, sc = _row_layout(out)
    _, _, d_like, _, _, _ = _row_layout(like)
    if o is out and d == d_like:
        return out, so, si, sc, False
    tmp = torch.empty(like.shape, dtype=out.dtype, device=out.device)
    _, _, _, so, si, sc = _row_layout(tmp)
    return tmp, so, si, sc, True


def logits_grad(
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    coef: K.GradCoefficients,
    *,
    class_offset: int = 0,
    class_weight: Tensor | None = None,
    out: Tensor | None = None,
    block_rows: int | None = None,
    softcap: float | None = None,
) -> Tensor:
    """:func:`._kernels.logits_grad` as one Triton launch. With ``softcap=c``, ``lse`` and
    ``coef`` are those of ``x' = c tanh(x / c)`` and the result is ``∂/∂x``: the gradient at
    ``x'`` times ``1 − tanh²(x / c)``, the target column's too."""
    _check_float64(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    if out is None:
        out = torch.empty_like(logits)
    v = logits.shape[-1]
    x, n, d, so, si, sc = _row_layout(logits)
    g, gso, gsi, gsc, copy_back = _out_layout(out, x)
    t = _flat_target(target)
    f32 = torch.float32

    def flat(a: Tensor) -> Tensor:
        return a.reshape(-1).to(f32).contiguous()

    ps, tg, ls = flat(coef.p_scale), flat(coef.target_grad), flat(lse)
    ss = flat(coef.smooth_scale) if coef.smooth_scale is not None else ps
    w = class_weight.to(f32).contiguous() if class_weight is not None else ps
    if n and v:
        blk = _block(v)
        _grad_kernel[(n,)](
            x,
            g,
            t,
            w,
            ls,
            ps,
            ss,
            tg,
            d,
            so,
            si,
            sc,
            gso,
            gsi,
            gsc,
            v,
            class_offset,
            cap,
            inv_cap,
            HAS_WEIGHT=class_weight is not None,
            SMOOTH=coef.smooth_scale is not None,
            SOFTCAP=on,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    if copy_back:
        out.copy_(g)
    return out


def logits_fused(
    logits: Tensor,
    target: Tensor,
    row_scale: Tensor,
    target_weight: Tensor,
    *,
    label_smoothing: float,
    weight_total: float | Tensor,
    class_weight: Tensor | None = None,
    out: Tensor | None = None,
    block_rows: int | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> tuple[K.RowStats, Tensor]:
    """:func:`._kernels.logits_fused` as one Triton launch: statistics (with the row max as
    reference point) and the gradient for the row scales ``row_scale``.

    ``z_loss=z`` adds ``z w_y lse²`` to each kept row's loss: ``α`` and ``τ`` gain
    ``s · 2 z w_y lse`` (the loss itself is assembled by the caller from the statistics).
    ``softcap=c``: statistics of ``x' = c tanh(x / c)``, gradient with respect to ``x``."""
    _check_float64(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    zl = float(z_loss)
    if out is None:
        out = torch.empty_like(logits)
    rows, v = tuple(logits.shape[:-1]), logits.shape[-1]
    x, n, d, so, si, sc = _row_layout(logits)
    g, gso, gsi, gsc, copy_back = _out_layout(out, x)
    t = _flat_target(target)
    dev = logits.device
    m, se, xt, s = _stats_out(n, v, dev)
    f32 = torch.float32
    rs = row_scale.reshape(-1).to(f32).contiguous()
    tw = target_weight.reshape(-1).to(f32).contiguous()
    wtot = _scalar(weight_total, dev, f32)
    w = class_weight.to(f32).contiguous() if class_weight is not None else rs
    eps = float(label_smoothing)
    if n and v:
        blk = _block(v)
        _fused_kernel[(n,)](
            x,
            g,
            t,
            w,
            rs,
            tw,
            wtot,
            m,
            se,
            xt,
            s,
            d,
            so,
            si,
            sc,
            gso,
            gsi,
            gsc,
            v,
            eps,
            zl,
            cap,
            inv_cap,
            HAS_WEIGHT=class_weight is not None,
            SMOOTH=bool(eps),
            Z_LOSS=bool(zl),
            SOFTCAP=on,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    if copy_back:
        out.copy_(g)
    inside = (target >= 0) & (target < v)
    stats = K.RowStats(
        m.reshape(rows),
        se.reshape(rows),
        xt.reshape(rows),
        inside,
        s.reshape(rows) if eps else None,
    )
    return stats, out


def prob_row_stats(
    logits: Tensor,
    target: Tensor,
    *,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    block_rows: int | None = None,
    softcap: float | None = None,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`._kernels.prob_row_stats` as one Triton launch (of ``x' = c tanh(x / c)`` with
    ``softcap=c``)."""
    _check_float64(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    rows, v = tuple(logits.shape[:-1]), logits.shape[-1]
    x, n, d, so, si, sc = _row_layout(logits)
    y, _, dy, yso, ysi, ysc = _row_layout(target)
    if dy != d:
        y, _, _, yso, ysi, ysc = _row_layout(target.contiguous())
    dev = logits.device
    ref, rel, loss, amass = (torch.empty(n, dtype=torch.float32, device=dev) for _ in range(4))
    w = class_weight.to(torch.float32).contiguous() if class_weight is not None else ref
    if n and v:
        blk = _block(v)
        _prob_stats_kernel[(n,)](
            x,
            y,
            w,
            ref,
            rel,
            loss,
            amass,
            d,
            so,
            si,
            sc,
            yso,
            ysi,
            ysc,
            v,
            float(label_smoothing),
            cap,
            inv_cap,
            HAS_WEIGHT=class_weight is not None,
            SOFTCAP=on,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    return ref.reshape(rows), rel.reshape(rows), loss.reshape(rows), amass.reshape(rows)


def prob_grad(
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    row_scale: Tensor,
    amass: Tensor,
    *,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    out: Tensor | None = None,
    block_rows: int | None = None,
    softcap: float | None = None,
) -> Tensor:
    """:func:`._kernels.prob_grad` as one Triton launch (``lse`` of ``x'`` and the result
    times ``1 − tanh²(x / c)`` with ``softcap=c``; a z-loss is the caller's, in ``amass``)."""
    _check_float64(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    if out is None:
        out = torch.empty_like(logits)
    v = logits.shape[-1]
    x, n, d, so, si, sc = _row_layout(logits)
    y, _, dy, yso, ysi, ysc = _row_layout(target)
    if dy != d:
        y, _, _, yso, ysi, ysc = _row_layout(target.contiguous())
    g, gso, gsi, gsc, copy_back = _out_layout(out, x)
    f32 = torch.float32
    ls = lse.reshape(-1).to(f32).contiguous()
    rg = row_scale.reshape(-1).to(f32).contiguous()
    am = amass.reshape(-1).to(f32).contiguous()
    w = class_weight.to(f32).contiguous() if class_weight is not None else ls
    if n and v:
        blk = _block(v)
        _prob_grad_kernel[(n,)](
            x,
            y,
            g,
            w,
            ls,
            rg,
            am,
            d,
            so,
            si,
            sc,
            yso,
            ysi,
            ysc,
            gso,
            gsi,
            gsc,
            v,
            float(label_smoothing),
            cap,
            inv_cap,
            HAS_WEIGHT=class_weight is not None,
            SOFTCAP=on,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    if copy_back:
        out.copy_(g)
    return out
