# mypy: disable-error-code="no-untyped-def,untyped-decorator,no-any-return"
r"""Triton kernels of the per-token statistics (:mod:`.tokens`): the CUDA path of its passes.

Two passes over rows of logits ``(R, C)`` (any row stride, any class stride), the torch-op
path's :func:`.tokens._stats_columns` and :func:`.tokens._vjp_columns` in one launch each:

- :func:`token_row_stats`: the row's partial sums ``m``, ``s``, ``E``, the target's logit and
  the argmax, which :func:`._rows.token_finish` turns into the statistics (after
  :func:`._shard.combine_token_partials` has added up the ranks' shards, when the vocabulary
  is split);
- :func:`token_vjp`: ``G = a (e_y − p) − b p ⊙ (log p + H) + c p`` from the saved ``lse``,
  ``lse_lo`` and entropy ``H`` and the per-row upstream ``a, b, c`` of ``logprob``,
  ``entropy``, ``lse`` (each optional: a ``constexpr`` switch, the term is not compiled in).

One program per row, the row read in chunks of ``BLOCK`` classes (:func:`._triton._block`, so
``Tuning.triton_block`` sets it for these kernels too). The statistics are
*online*: a running max ``m`` (NaN left out), ``s = Σ e^{x−m}`` and ``E = Σ e^{x−m}(m − x)``
(both of non-negative terms), rescaled when the max grows to ``m'``: ``s ← α s`` and
``E ← α (E + (m' − m) s)`` with ``α = e^{m − m'}`` (``m`` taken as 0 where it is infinite).
``argmax`` is the first index of the max, or of the first NaN
in a row that has one (``torch.argmax``). Everything accumulates in float32; float64 is refused
(Triton kernels take float16, bfloat16 and float32; float64 stays on the torch path).

``softcap=s``: the logits are capped as they are loaded, ``z' = s·tanh(z / s)`` with
:func:`._triton._tanh` (masked lanes back to ``-inf``), and the VJP gains the chain factor
``1 − tanh²(z / s)``, the target column's too. Rows of only ``-inf`` logits: ``lse = -inf``,
entropy NaN, ``logprob`` NaN when kept (as the torch path); when ignored, their gradient is
exactly 0 for any upstream (``lse`` and ``H`` taken as 0 there, so every ``p`` is 0 and
``log p`` is clamped to a finite number, as on the torch path).

On CPU tensors these kernels run in Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton  # type: ignore[import-not-found,import-untyped]
import triton.language as tl  # type: ignore[import-not-found,import-untyped]
from torch import Tensor

from ._triton import _block, _softcap_args, _tanh, _warps

__all__ = ["token_row_stats", "token_vjp"]

#: ``log p`` is clamped to this before ``p = e^{log p}`` in the entropy's term (its ``exp`` is
#: exactly 0 in float32, as the torch path's :func:`._rows.exp_floor`): ``0 · log 0 = 0``.
_LOG_FLOOR = -256.0


# --------------------------------------------------------------------------- kernels


@triton.jit
def _stats_kernel(
    X,
    T,
    M_out,
    S_out,
    E_out,
    ZY_out,
    AM_out,
    stride_row,
    stride_col,
    V,
    offset,
    cap,
    inv_cap,
    temperature,
    SOFTCAP: tl.constexpr,
    TEMPER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The partial sums ``m, s, E, z_y, argmax`` of one row, online over chunks of classes."""
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + r * stride_row
    t = tl.load(T + r).to(tl.int64) - offset  # the target's column in this row, if any
    zero = tl.sum(tl.zeros([BLOCK], dtype=tl.float32), 0)
    m = zero - float("inf")  # running max of the non-NaN logits
    s = zero  # Σ e^{x − ref}
    eu = zero  # Σ e^{x − ref} (ref − x) ≥ 0
    zy = zero  # the target's logit
    best = tl.sum(tl.zeros([BLOCK], dtype=tl.int64), 0)  # first index of the max
    first_nan = best + V  # first index of a NaN (V: none)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < V
        x = tl.load(x_ptr + cols * stride_col, mask=mask, other=float("-inf")).to(tl.float32)
        if SOFTCAP:  # masked lanes back to -inf (the cap maps -inf to -c)
            x = tl.where(mask, cap * _tanh(x * inv_cap), float("-inf"))
        if TEMPER:
            x = x / temperature
        zy += tl.sum(tl.where((cols == t) & mask, x, 0.0), 0)
        nan = x != x
        first_nan = tl.minimum(first_nan, tl.min(tl.where(nan, cols, V), 0))
        xm = tl.where(nan, float("-inf"), x)
        bm = tl.max(xm, 0)
        top = tl.min(tl.where(mask & (xm == bm), cols, V), 0)
        best = tl.where(bm > m, top, best)  # strictly larger: the first max is kept
        m_new = tl.maximum(m, bm)
        # the reference point: the max, or 0 where it is infinite (no -inf - -inf)
        ref = tl.where((m_new == float("inf")) | (m_new == float("-inf")), 0.0, m_new)
        alpha = tl.exp(m - ref)  # 0 while the max was -inf (then s = E = 0)
        eu = alpha * (eu + tl.where(s > 0.0, (ref - m) * s, 0.0))
        s = alpha * s
        e = tl.where(mask, tl.exp(x - ref), 0.0)
        # 0 · log 0 = 0: a -inf logit adds nothing (e = 0, and 0 · inf would be NaN)
        eu += tl.sum(tl.where(e > 0.0, e * (ref - x), 0.0), 0)
        s += tl.sum(e, 0)
        m = m_new
    tl.store(M_out + r, m)
    tl.store(S_out + r, s)
    tl.store(E_out + r, eu)
    tl.store(ZY_out + r, zy)
    tl.store(AM_out + r, tl.where(first_nan < V, first_nan, best))


@triton.jit
def _vjp_kernel(
    X,
    G,
    T,
    LSE,
    ENT,
    LO,
    A,
    B,
    C,
    stride_row,
    stride_col,
    g_stride_row,
    g_stride_col,
    V,
    ignore_index,
    offset,
    cap,
    inv_cap,
    temperature,
    log_floor,
    HAS_LO: tl.constexpr,
    HAS_A: tl.constexpr,
    HAS_B: tl.constexpr,
    HAS_C: tl.constexpr,
    SOFTCAP: tl.constexpr,
    TEMPER: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """``G = p ⊙ (c − a − b (log p + H))`` plus ``a`` at the target, for one row (times
    ``1 − t²`` with ``SOFTCAP``), ``log p = (z − lse) − lse_lo``."""
    r = tl.program_id(0).to(tl.int64)
    x_ptr = X + r * stride_row
    g_ptr = G + r * g_stride_row
    t = tl.load(T + r).to(tl.int64)
    keep = t != ignore_index
    lse = tl.load(LSE + r).to(tl.float32)
    # an ignored row of only -inf logits: lse and H taken as 0, so every p is 0 and G = 0
    dead = (t == ignore_index) & (lse == float("-inf"))
    lse = tl.where(dead, 0.0, lse)
    lo = 0.0
    if HAS_LO:
        lo = tl.load(LO + r).to(tl.float32)
    row = 0.0  # the per-row part of the coefficient: c − a
    if HAS_C:
        row += tl.load(C + r).to(tl.float32)
    a = 0.0
    if HAS_A:
        a = tl.where(keep, tl.load(A + r).to(tl.float32), 0.0)
        row -= a
    nb = 0.0
    k = row
    if HAS_B:
        nb = -tl.load(B + r).to(tl.float32)
        k = row + nb * tl.where(dead, 0.0, tl.load(ENT + r).to(tl.float32))
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK).to(tl.int64)
        mask = cols < V
        x = tl.load(x_ptr + cols * stride_col, mask=mask, other=0.0).to(tl.float32)
        if SOFTCAP:
            th = _tanh(x * inv_cap)
            x = cap * th
        if TEMPER:
            x = x / temperature
        u = x - lse
        if HAS_LO:
            u = u - lo  # log p
        if HAS_B:
            # 0 · log 0 = 0: log p clamped to a finite number whose exp is still 0 (NaN kept)
            u = tl.where(u < log_floor, log_floor, u)
            g = (k + u * nb) * tl.exp(u)
        else:
            g = tl.exp(u) * row
        if HAS_A:
            g = tl.where((cols + offset == t) & keep, g + a, g)
        if SOFTCAP:  # the chain factor of every column, the target's too
            g = g * (1.0 - th * th)
        if TEMPER:
            g = g / temperature
        tl.store(g_ptr + cols * g_stride_col, g.to(g_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------- host functions


def _check_logits(logits: Tensor) -> None:
    if logits.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise TypeError(
            "crossentropy Triton kernels: logits must be float16, bfloat16 or float32 "
            f"(float64 runs on the torch path), got dtype {logits.dtype}"
        )
    if logits.dim() != 2 or logits.shape[1] == 0:
        raise ValueError(
            "crossentropy Triton kernels: logits must be rows (R, C) with C >= 1, got shape "
            f"{tuple(logits.shape)}"
        )


def _rows(a: Tensor) -> Tensor:
    """A per-row tensor as a contiguous float32 vector (an expanded upstream is copied)."""
    return a.reshape(-1).to(torch.float32).contiguous()


def token_row_stats(
    logits: Tensor,
    target: Tensor,
    *,
    class_offset: int = 0,
    softcap: float | None = None,
    out: tuple[Tensor, Tensor, Tensor, Tensor, Tensor] | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The partial sums ``(m, s, E, z_y, argmax)`` of the rows of ``logits`` (R, C) (of
    ``s·tanh(z / s)`` with ``softcap=s``; then divided by ``temperature``) in one launch, as
    :func:`.tokens._stats_columns`:
    float32, argmax int64 (a column of ``logits``).

    ``target`` (R,) holds global class indices; the row's class ``target − class_offset`` is
    its target column if it lies in ``[0, C)`` (``z_y`` is 0 otherwise). ``out``: five
    contiguous (R,) tensors to write (float32 ×4, int64, in the order returned), e.g. slices
    of the whole batch's outputs."""
    _check_logits(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    n, v = logits.shape
    dev = logits.device
    dtypes = (torch.float32,) * 4 + (torch.int64,)
    if out is None:
        out = tuple(torch.empty(n, dtype=dt, device=dev) for dt in dtypes)  # type: ignore[assignment]
    assert out is not None
    for o, dt in zip(out, dtypes, strict=True):
        if o.dtype != dt or o.shape != (n,) or not o.is_contiguous():
            raise ValueError(
                "crossentropy Triton kernels: out must be five contiguous (R,) tensors "
                f"(float32 ×4, int64), got {o.dtype} of shape {tuple(o.shape)}"
            )
    t = target.reshape(-1).contiguous()
    if n:
        blk = _block(v)
        _stats_kernel[(n,)](
            logits,
            t,
            *out,
            logits.stride(0),
            logits.stride(1),
            v,
            int(class_offset),
            cap,
            inv_cap,
            float(temperature),
            SOFTCAP=on,
            TEMPER=temperature != 1.0,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    return out


def token_vjp(
    logits: Tensor,
    target: Tensor,
    ignore_index: int,
    lse: Tensor,
    entropy: Tensor,
    d_logprob: Tensor | None,
    d_entropy: Tensor | None,
    d_lse: Tensor | None,
    *,
    softcap: float | None = None,
    lse_lo: Tensor | None = None,
    out: Tensor | None = None,
    class_offset: int = 0,
    temperature: float = 1.0,
) -> Tensor:
    """``G = ∂L/∂z`` of the rows of ``logits`` (R, C) for ``L = Σ a·logprob + b·entropy +
    c·lse`` (``a, b, c`` = ``d_logprob, d_entropy, d_lse``, each (R,) or ``None``: no term),
    from the forward's ``lse``, ``entropy`` and ``lse_lo`` (``None``: ``log p = z − lse``).
    With ``softcap=s`` the statistics are those of ``z' = s·tanh(z / s)`` (then divided by
    ``temperature``) and ``G`` is w.r.t. ``z``. ``target`` holds global class indices, column
    ``j`` being class ``class_offset + j``. Written into ``out`` (R, C) (any strides, any
    floating dtype but float64; may be ``logits`` itself) or a new tensor like ``logits``."""
    _check_logits(logits)
    cap, inv_cap, on = _softcap_args(softcap)
    n, v = logits.shape
    if out is None:
        out = torch.empty_like(logits)
    if out.shape != logits.shape or out.dtype == torch.float64:
        raise ValueError(
            "crossentropy Triton kernels: out must have the logits' shape "
            f"{tuple(logits.shape)} and a float16/bfloat16/float32 dtype, got "
            f"{out.dtype} of shape {tuple(out.shape)}"
        )
    t = target.reshape(-1).contiguous()
    ls, ent = _rows(lse), _rows(entropy)
    lo = _rows(lse_lo) if lse_lo is not None else ls
    a = _rows(d_logprob) if d_logprob is not None else ls
    b = _rows(d_entropy) if d_entropy is not None else ls
    c = _rows(d_lse) if d_lse is not None else ls
    if n:
        blk = _block(v)
        _vjp_kernel[(n,)](
            logits,
            out,
            t,
            ls,
            ent,
            lo,
            a,
            b,
            c,
            logits.stride(0),
            logits.stride(1),
            out.stride(0),
            out.stride(1),
            v,
            int(ignore_index),
            int(class_offset),
            cap,
            inv_cap,
            float(temperature),
            _LOG_FLOOR,
            HAS_LO=lse_lo is not None,
            HAS_A=d_logprob is not None,
            HAS_B=d_entropy is not None,
            HAS_C=d_lse is not None,
            SOFTCAP=on,
            TEMPER=temperature != 1.0,
            BLOCK=blk,
            num_warps=_warps(blk),
        )
    return out
