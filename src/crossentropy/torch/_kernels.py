r"""Blocked softmax cross-entropy kernels built from torch ops (the layer under ``functional``).

Everything here works on *rows*: ``logits`` has shape ``(*rows, C)`` with the classes on the
last dimension (any strides), ``target`` has shape ``rows`` and holds **global** class indices.
A kernel may see only a *shard* of the vocabulary: columns ``[class_offset, class_offset + C)``
of a global vocabulary of ``num_classes`` classes. The single-process functional passes
``class_offset=0`` and the whole vocabulary; the vocabulary-parallel code
(``crossentropy.torch.distributed``) passes its shard and combines the per-row statistics
across ranks.

Two passes, kept separate so a caller can reduce statistics between them:

1. **statistics** (:func:`logits_row_stats`, :func:`linear_row_stats`) -> :class:`RowStats`:
   per row, over the shard, the max ``m``, ``Σ_{c ≠ y} exp(x_c − m)`` (the *target column
   excluded*, so a confident row keeps ``Σ_{c ≠ y} p_c`` to full relative precision), the
   target logit ``x_y`` when ``y`` lies in the shard, and optionally ``Σ_c w_c x_c`` (needed by
   label smoothing). Combine shards with :func:`merge_row_stats` (or the same formula with
   ``all_reduce``: max of ``m``; sum of ``sumexp · exp(m − M)``; sum of ``target_logit`` and
   ``has_target``; sum of ``sum_logits``), then :func:`row_lse` / :func:`row_nll`.
2. **gradient** (:func:`logits_grad`, :func:`linear_grad`) given the *global* per-row ``lse``
   and a :class:`GradCoefficients` from :func:`index_target_coefficients`:

   .. math::
       g_{ic} = \alpha_i \, e^{x_{ic} - \mathrm{lse}_i} - \beta_i w_c \quad (c \ne y_i),
       \qquad g_{i y_i} = \tau_i,

   with ``α`` = ``p_scale``, ``β`` = ``smooth_scale``, ``τ`` = ``target_grad``. For the loss
   ``ℓ_i = (1−ε) w_{y_i} (lse_i − x_{iy_i}) + (ε/C) Σ_c w_c (lse_i − x_{ic})`` scaled by the
   upstream ``s_i``: ``α = s ((1−ε) w_y + (ε/C) W)``, ``β = s ε / C`` and
   ``τ = s ((ε/C)(W − w_y)) − α q`` where ``W = Σ_c w_c`` and ``q = Σ_{c≠y} p_c``: the true-class
   gradient written without the cancelling ``p_y − 1``.

:func:`logits_fused` and :func:`linear_fused` do both passes in one sweep when the whole
vocabulary is local and the row scales are known in the forward (``"mean"``/``"sum"``): the
gradient is the forward's by-product, as in the article (``∂L/∂z = a − y``). Each of their
blocks goes through one ``softmax`` kernel (max, exp, sum and scale per row while the row is in
cache), and their statistics are recovered from it (``max_c p_c = 1 / Σ_c e^{x_c − m}``).

Work is done in row blocks of about ``Tuning.block_elements`` elements so a block stays in cache
between the max, exp, sum and scale steps: each logit is read from memory once per pass and
each gradient element written once. Low-precision logits (float16/bfloat16) are upcast block by
block into a float32 work buffer: every accumulation is float32 (float64 for float64).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor

from ._backend import select, select_cpu
from ._rows import (
    ignored_rows,
    index_target_coefficients,
    local_index,
    merge_row_stats,
    other_prob,
    row_lse,
    row_lse_rel,
    row_nll,
    rowwise,
    softcapped,
    target_exp,
)
from ._types import GradCoefficients, LinearGrads, RowStats, compute_dtype, tuning


def default_block_rows(row_elements: int, block_elements: int | None = None) -> int:
    """Rows per block so that a block holds about ``block_elements`` elements (at least 1;
    default :attr:`Tuning.block_elements <._types.Tuning.block_elements>`)."""
    if block_elements is None:
        block_elements = tuning().block_elements
    return max(1, block_elements // max(1, row_elements))


def default_chunk_rows(num_classes: int, itemsize: int, chunk_bytes: int | None = None) -> int:
    """Rows per chunk of the linear kernels: a chunk of logits takes about ``chunk_bytes``
    (default :attr:`Tuning.linear_chunk_bytes <._types.Tuning.linear_chunk_bytes>`)."""
    if chunk_bytes is None:
        chunk_bytes = tuning().linear_chunk_bytes
    return max(16, chunk_bytes // max(1, num_classes * itemsize))


def empty_buffer(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """A new uninitialised tensor for a gradient (``torch.empty`` unless
    :attr:`Tuning.huge_pages <._types.Tuning.huge_pages>`).

    Much of the cost of a fresh gradient-sized buffer is the kernel handing out (and zeroing)
    its pages on first touch: ~0.22-0.27 s per GiB on the project machine with 4 KiB pages.
    With ``huge_pages`` set, large CPU buffers come from NumPy's allocator, which asks for
    2 MiB pages (``madvise``); torch's allocator does not unless ``THP_MEM_ALLOC_ENABLE`` is
    set. Measured: 0.06 s/GiB when free huge pages exist, but 1.2 s/GiB on first use and, after
    other allocations fragmented memory, a (2048, 131072) fp32 cross-entropy took 4.9 s instead
    of 0.55 s (direct compaction). Hence off by default. The tensor shares the NumPy array's
    memory and keeps it alive; autograd treats it as any other tensor.
    """
    numel = math.prod(shape)
    size = numel * torch.empty((), dtype=dtype).element_size()
    if not tuning().huge_pages or device.type != "cpu" or size < 1 << 22:
        return torch.empty(shape, dtype=dtype, device=device)
    import numpy as np

    np_dtype = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}
    if dtype in np_dtype:
        return torch.from_numpy(np.empty(shape, dtype=np_dtype[dtype]))
    if dtype == torch.bfloat16:
        return torch.from_numpy(np.empty(shape, dtype=np.uint16)).view(torch.bfloat16)
    return torch.empty(shape, dtype=dtype, device=device)


def _softcap_kw(softcap: float | None) -> dict[str, float]:
    """The Triton functions' ``softcap`` keyword, passed only when set."""
    return {} if softcap is None else {"softcap": softcap}


def _chain_softcap(work: Tensor, t: Tensor | None) -> None:
    """``work *= 1 − t²``: ``∂x'/∂x`` of the softcap (the formula of torch's tanh backward)."""
    if t is not None:
        work.mul_(t.mul_(t).neg_().add_(1.0))


def _block_stats(
    xb: Tensor,
    idx: Tensor,
    inside: Tensor,
    work: Tensor,
    class_weight: Tensor | None,
    with_sum: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Statistics of one block; leaves ``exp(x − m)`` (target column zeroed) in ``work``.

    Low-precision ``xb`` is first copied into ``work`` (float32): measured on CPU, mixed-dtype
    ``out=`` ops take a slow unvectorised path, so one explicit upcast is cheaper.
    """
    cdt = work.dtype
    if xb.dtype != cdt:
        work.copy_(xb)
        xb = work
    # Read everything needed from xb first: ``work`` may alias it (in-place gradient).
    m = torch.amax(xb, dim=-1, keepdim=True)
    xt = torch.where(inside, xb.gather(-1, idx).squeeze(-1), 0.0)
    s = None
    if with_sum:
        s = xb.sum(dim=-1) if class_weight is None else torch.matmul(xb, class_weight)
    torch.sub(xb, m, out=work)
    work.exp_()
    # Exclude the target column from the sum: Σ_{c≠y} p_c keeps its relative precision.
    kept = torch.where(inside.unsqueeze(-1), 0.0, work.gather(-1, idx))
    work.scatter_(-1, idx, kept)
    sumexp = work.sum(dim=-1)
    return m.squeeze(-1), sumexp, xt, s


def _softmax_block(
    xb: Tensor,
    idx: Tensor,
    inside: Tensor,
    work: Tensor,
    class_weight: Tensor | None,
    with_sum: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Statistics of one block of the fused sweep; leaves ``p = softmax(x)`` (target column
    zeroed) in ``work``.

    One ``softmax`` kernel (max, exp, sum and scale per row while the row is in cache) replaces
    the separate subtract, exp and sum passes of :func:`_block_stats`: measured ~2x faster for
    this step. The statistics are those of :func:`_block_stats` (reference point: the row max
    ``m``), recovered from the probabilities: ``max_c p_c = 1 / Σ_c e^{x_c − m}``, so
    ``Σ_{c≠y} e^{x_c − m} = q / max_c p_c`` with ``q = Σ_{c≠y} p_c`` summed from the softmax.
    Referring to the exact max rather than to a rounded log-sum-exp keeps ``lse − x_y`` and
    ``exp(x_y − m)`` accurate for large logits (``|x| ~ 1e4`` in float32).
    """
    cdt = work.dtype
    if xb.dtype != cdt:
        work.copy_(xb)
        xb = work
    # Read everything needed from xb first: ``work`` may alias it (in-place gradient).
    xt = xb.gather(-1, idx).squeeze(-1)
    s = None
    if with_sum:
        s = xb.sum(dim=-1) if class_weight is None else torch.matmul(xb, class_weight)
    m = torch.amax(xb, dim=-1)
    if xb.is_contiguous() and work.is_contiguous():
        torch._softmax(xb, -1, False, out=work)
    else:  # the out= form assumes contiguous tensors; strided layouts take a temporary
        work.copy_(torch.softmax(xb, dim=-1))
    top = torch.amax(work, dim=-1)
    # Exclude the target column from the sum: Σ_{c≠y} p_c keeps its relative precision.
    py = work.gather(-1, idx)
    work.scatter_(-1, idx, torch.where(inside.unsqueeze(-1), 0.0, py))
    q = work.sum(dim=-1)
    return m, q / top, torch.where(inside, xt, 0.0), s


def logits_row_stats(
    logits: Tensor,
    target: Tensor,
    *,
    class_offset: int = 0,
    class_weight: Tensor | None = None,
    with_sum: bool = False,
    block_rows: int | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> RowStats:
    """Per-row statistics of a shard of logits (pass 1).

    Parameters
    ----------
    logits : Tensor, shape ``(*rows, C)``
        The shard's logits, classes last (any strides, any floating dtype).
    target : Tensor, shape ``rows``, integer
        Global class indices. Rows whose target is outside ``[class_offset, class_offset + C)``
        (including ignored rows) get ``has_target = False``.
    class_offset : int
        Global index of the shard's first column.
    class_weight : Tensor, shape ``(C,)``, optional
        The shard's class weights (compute dtype), used only for ``sum_logits``.
    with_sum : bool
        Also compute ``sum_logits`` (label smoothing needs it).
    block_rows : int, optional
        Rows (along the first dimension) per block; default from ``Tuning.block_elements``.
    softcap : float, optional
        ``c``: the statistics are those of ``x' = c tanh(x / c)``, computed block by block.

    Returns
    -------
    RowStats
        Shape ``rows``, dtype :func:`compute_dtype` of the logits.
    """
    if (tr := select(logits, impl)) is not None:
        return tr.logits_row_stats(
            logits,
            target,
            class_offset=class_offset,
            class_weight=class_weight,
            with_sum=with_sum,
            **_softcap_kw(softcap),
        )
    cdt = compute_dtype(logits.dtype)
    rows, num_local = tuple(logits.shape[:-1]), logits.shape[-1]
    idx, inside = local_index(target, class_offset, num_local)
    if (cc := select_cpu(logits, impl)) is not None and block_rows is None:
        st = cc.logits_row_stats(
            logits, idx, inside, class_weight=class_weight, with_sum=with_sum, softcap=softcap
        )
        if st is not None:
            return st
    out = [torch.empty(rows, dtype=cdt, device=logits.device) for _ in range(3)]
    total = torch.empty(rows, dtype=cdt, device=logits.device) if with_sum else None
    n0 = rows[0] if rows else 1
    x = logits if rows else logits.unsqueeze(0)
    per_row = x[0].numel() if n0 else 1
    step = block_rows or default_block_rows(per_row)
    work = torch.empty(min(step, max(n0, 1)) * per_row, dtype=cdt, device=logits.device)
    idx_, inside_ = (idx, inside) if rows else (idx.unsqueeze(0), inside.unsqueeze(0))
    outs = [o if rows else o.unsqueeze(0) for o in out]
    total_ = total if (rows or total is None) else total.unsqueeze(0)
    for a in range(0, n0, step):
        b = min(n0, a + step)
        xb = x[a:b]
        w = work[: xb.numel()].view(xb.shape)
        xb, _ = softcapped(xb if softcap is None else xb.to(cdt), softcap)
        m, se, xt, s = _softmax_block(xb, idx_[a:b], inside_[a:b], w, class_weight, with_sum)
        outs[0][a:b] = m
        outs[1][a:b] = se
        outs[2][a:b] = xt
        if total_ is not None and s is not None:
            total_[a:b] = s
    return RowStats(out[0], out[1], out[2], inside, total)


def _write_grad_block(
    work: Tensor,
    idx: Tensor,
    inside: Tensor,
    p_scale: Tensor,
    smooth_scale: Tensor | None,
    target_grad: Tensor,
    class_weight: Tensor | None,
) -> None:
    """``work`` holds probabilities (times any per-row factor folded into ``p_scale``)."""
    work.mul_(p_scale.unsqueeze(-1))
    if smooth_scale is not None:
        if class_weight is None:
            work.sub_(smooth_scale.unsqueeze(-1))
        else:
            work.addcmul_(smooth_scale.unsqueeze(-1), class_weight, value=-1.0)
    keep = torch.where(inside, target_grad, work.gather(-1, idx).squeeze(-1))
    work.scatter_(-1, idx, keep.unsqueeze(-1))


def logits_grad(
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    coef: GradCoefficients,
    *,
    class_offset: int = 0,
    class_weight: Tensor | None = None,
    out: Tensor | None = None,
    block_rows: int | None = None,
    ref: Tensor | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """The gradient pass: ``d loss / d logits`` for a shard, given the *global* ``lse``.

    Parameters
    ----------
    logits : Tensor, shape ``(*rows, C)``
        The shard's logits (classes last).
    target : Tensor, shape ``rows``
        Global class indices.
    lse : Tensor, shape ``rows``
        Global log-sum-exp per row (compute dtype).
    coef : GradCoefficients
        From :func:`index_target_coefficients` (shape ``rows``).
    class_offset : int
        Global index of the shard's first column.
    class_weight : Tensor, shape ``(C,)``, optional
        The shard's class weights (only used with label smoothing).
    out : Tensor, shape ``(*rows, C)``, optional
        Where to write the gradient (any floating dtype, may be ``logits`` itself). Default: a
        new tensor of the logits' dtype.
    ref : Tensor, shape ``rows``, optional
        A per-row reference point (the row max): ``lse`` is then ``lse − ref``
        (:func:`row_lse_rel`), and the probabilities are computed as
        ``exp(x − ref) · e^{−(lse − ref)}``, accurate for large logits.
    softcap : float, optional
        ``c``: ``lse``, ``ref`` and ``coef`` are those of ``x' = c tanh(x / c)``; the result is
        the gradient at ``x'`` times ``∂x'/∂x = 1 − (x'/c)²``.

    Returns
    -------
    Tensor
        ``out``.
    """
    if ref is not None:  # fold e^{-(lse - ref)} into the per-row probability scale
        zero = coef.p_scale == 0
        # A row that contributes nothing (ignored) gets exact zeros even when its logits are
        # all −inf: reference point 0 (so e^{x − 0} = 0, not e^{−inf + inf} = NaN) and no
        # e^{−(lse − ref)} factor (NaN there).
        coef = GradCoefficients(
            torch.where(zero, 0.0, coef.p_scale * rowwise(torch.exp, -lse)),
            coef.smooth_scale,
            coef.target_grad,
        )
        lse = torch.where(zero & ~torch.isfinite(ref), 0.0, ref)
    if (tr := select(logits, impl)) is not None:
        return tr.logits_grad(
            logits,
            target,
            lse,
            coef,
            class_offset=class_offset,
            class_weight=class_weight,
            out=out,
            **_softcap_kw(softcap),
        )
    cdt = compute_dtype(logits.dtype)
    if out is None:
        out = empty_buffer(tuple(logits.shape), logits.dtype, logits.device)
    rows, num_local = tuple(logits.shape[:-1]), logits.shape[-1]
    idx, inside = local_index(target, class_offset, num_local)
    if (cc := select_cpu(logits, impl)) is not None and block_rows is None:
        done = cc.logits_grad(
            logits, idx, inside, lse, coef, class_weight=class_weight, out=out, softcap=softcap
        )
        if done:
            return out
    x, g = (logits, out) if rows else (logits.unsqueeze(0), out.unsqueeze(0))
    if not rows:
        idx, inside = idx.unsqueeze(0), inside.unsqueeze(0)
        lse = lse.unsqueeze(0)
        coef = GradCoefficients(
            coef.p_scale.unsqueeze(0),
            None if coef.smooth_scale is None else coef.smooth_scale.unsqueeze(0),
            coef.target_grad.unsqueeze(0),
        )
    n0 = x.shape[0]
    per_row = x[0].numel() if n0 else 1
    step = block_rows or default_block_rows(per_row)
    direct = out.dtype == cdt
    work_buf = None if direct else torch.empty(min(step, n0) * per_row, dtype=cdt, device=x.device)
    for a in range(0, n0, step):
        b = min(n0, a + step)
        xb, gb = x[a:b], g[a:b]
        work = gb if direct else work_buf[: xb.numel()].view(xb.shape)  # type: ignore[index]
        lb = lse[a:b].unsqueeze(-1)
        # read before ``work`` (may alias xb) is written
        xs, t = softcapped(xb if softcap is None else xb.to(cdt), softcap)
        torch.sub(xs, lb, out=work)
        work.exp_()
        ss = None if coef.smooth_scale is None else coef.smooth_scale[a:b]
        _write_grad_block(
            work, idx[a:b], inside[a:b], coef.p_scale[a:b], ss, coef.target_grad[a:b], class_weight
        )
        _chain_softcap(work, t)
        _zero_ignored_rows(work, coef.p_scale[a:b], ss, coef.target_grad[a:b])
        if not direct:
            gb.copy_(work)
    return out


def _zero_ignored_rows(
    work: Tensor, p_scale: Tensor, smooth_scale: Tensor | None, target_grad: Tensor
) -> None:
    """Exact zeros in the gradient of rows whose coefficients are all 0 (ignored), whatever
    their logits: ``0 · NaN`` (a NaN or +inf logit) would otherwise reach the gradient, as the
    compiled gradient kernel and the fused pass already prevent. On CPU only the ignored rows
    are written (a boolean-mask assignment), none when there are none."""
    dead = ignored_rows(p_scale, smooth_scale, target_grad)
    if work.device.type != "cpu":
        work.masked_fill_(dead.unsqueeze(-1), 0.0)
    elif bool(dead.any()):
        work[dead] = 0.0


def _zero_dead_rows(work: Tensor, m: Tensor, row_scale: Tensor) -> None:
    """Zero the softmax of rows that contribute nothing (row scale 0: ignored) and whose max is
    not finite (all logits −inf): their softmax is NaN, and ``0 · NaN`` would reach the
    gradient. On CPU a host check skips the pass over the block when no row is dead."""
    dead = (row_scale == 0) & ~torch.isfinite(m)
    if work.device.type == "cpu" and not bool(dead.any()):
        return
    work.masked_fill_(dead.unsqueeze(-1), 0.0)


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
    impl: str = "auto",
) -> tuple[RowStats, Tensor]:
    """Both passes in one sweep over the whole (unsharded) vocabulary.

    Returns the statistics and the gradient ``out`` (new tensor of the logits' dtype unless
    given) for the row scales ``row_scale`` (see :func:`index_target_coefficients`): each
    block's ``softmax`` becomes its gradient while still in cache. The statistics are those of
    :func:`logits_row_stats` (reference point: the row max; see :func:`_softmax_block`).
    ``z_loss`` and ``softcap`` as in :func:`index_target_coefficients` and :func:`logits_grad`
    (the statistics are then those of the softcapped logits).
    """
    if (tr := select(logits, impl)) is not None:
        return tr.logits_fused(
            logits,
            target,
            row_scale,
            target_weight,
            label_smoothing=label_smoothing,
            weight_total=weight_total,
            class_weight=class_weight,
            out=out,
            **_softcap_kw(softcap),
            **({"z_loss": z_loss} if z_loss else {}),
        )
    cdt = compute_dtype(logits.dtype)
    if out is None:
        out = empty_buffer(tuple(logits.shape), logits.dtype, logits.device)
    rows, num_classes = tuple(logits.shape[:-1]), logits.shape[-1]
    idx, inside = local_index(target, 0, num_classes)
    if (cc := select_cpu(logits, impl)) is not None and block_rows is None:
        st = cc.logits_fused(
            logits,
            idx,
            inside,
            row_scale,
            target_weight,
            label_smoothing=label_smoothing,
            weight_total=weight_total,
            class_weight=class_weight,
            out=out,
            z_loss=z_loss,
            softcap=softcap,
        )
        if st is not None:
            return st, out
    eps = float(label_smoothing)
    x, g = (logits, out) if rows else (logits.unsqueeze(0), out.unsqueeze(0))
    if not rows:
        idx, inside = idx.unsqueeze(0), inside.unsqueeze(0)
        row_scale, target_weight = row_scale.unsqueeze(0), target_weight.unsqueeze(0)
    n0 = x.shape[0]
    shape0 = tuple(x.shape[:-1])
    m_all, se_all, xt_all = (torch.empty(shape0, dtype=cdt, device=x.device) for _ in range(3))
    s_all = torch.empty(shape0, dtype=cdt, device=x.device) if eps else None
    per_row = x[0].numel() if n0 else 1
    step = block_rows or default_block_rows(per_row)
    direct = out.dtype == cdt
    work_buf = None
    if not direct:
        work_buf = torch.empty(min(step, n0) * per_row, dtype=cdt, device=x.device)
    for a in range(0, n0, step):
        b = min(n0, a + step)
        xb, gb = x[a:b], g[a:b]
        work = gb if direct else work_buf[: xb.numel()].view(xb.shape)  # type: ignore[index]
        # read before ``work`` (may alias xb) is written
        xb, t = softcapped(xb if softcap is None else xb.to(cdt), softcap)
        m, se, xt, s = _softmax_block(xb, idx[a:b], inside[a:b], work, class_weight, bool(eps))
        _zero_dead_rows(work, m, row_scale[a:b])
        st = RowStats(m, se, xt, inside[a:b], s)
        coef = index_target_coefficients(
            st,
            row_scale[a:b],
            target_weight[a:b],
            label_smoothing=eps,
            num_classes=num_classes,
            weight_total=weight_total,
            z_loss=z_loss,
        )
        # work holds p = softmax(x) with the target column zeroed.
        work.mul_(coef.p_scale.unsqueeze(-1))
        if coef.smooth_scale is not None:
            if class_weight is None:
                work.sub_(coef.smooth_scale.unsqueeze(-1))
            else:
                work.addcmul_(coef.smooth_scale.unsqueeze(-1), class_weight, value=-1.0)
        # Every row's target is in the (whole) vocabulary; ignored rows are all zeros and
        # get target_grad = 0 written at column 0. Scattered into the float32 work block
        # before the downcast: measured, scatter_ into a bfloat16 tensor is ~30x slower.
        work.scatter_(-1, idx[a:b], coef.target_grad.unsqueeze(-1).to(work.dtype))
        _chain_softcap(work, t)
        if not direct:
            gb.copy_(work)
        m_all[a:b], se_all[a:b], xt_all[a:b] = m, se, xt
        if s_all is not None and s is not None:
            s_all[a:b] = s
    if not rows:
        m_all, se_all, xt_all = m_all[0], se_all[0], xt_all[0]
        s_all = None if s_all is None else s_all[0]
        inside = inside[0]
    return RowStats(m_all, se_all, xt_all, inside, s_all), out


# --------------------------------------------------------------------------- soft targets


def _smoothed_block(yb: Tensor, cdt: torch.dtype, eps: float, num_classes: int) -> Tensor:
    y = yb.to(cdt)
    if eps:
        y = y * (1.0 - eps) + eps / num_classes
    return y


def prob_row_stats(
    logits: Tensor,
    target: Tensor,
    *,
    class_weight: Tensor | None = None,
    label_smoothing: float = 0.0,
    block_rows: int | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Pass 1 for probability targets ``y`` (same shape as ``logits``, classes last).

    With ``y' = (1 − ε) y + ε / C``, returns per row ``(m, lse − m, loss, A)`` where ``m`` is
    the row max, ``loss_i = Σ_c w_c y'_ic (lse_i − x_ic)`` and ``A_i = Σ_c w_c y'_ic``
    (compute dtype). The loss is summed as ``A (lse − m) − Σ w y' (x − m)``: no cancellation
    between two large terms when the logits are large. With ``softcap`` everything is of
    ``x' = c tanh(x / c)``.
    """
    if (tr := select(logits, impl)) is not None:
        return tr.prob_row_stats(
            logits,
            target,
            class_weight=class_weight,
            label_smoothing=label_smoothing,
            **_softcap_kw(softcap),
        )
    if (cc := select_cpu(logits, impl)) is not None and block_rows is None:
        res = cc.prob_row_stats(
            logits,
            target,
            class_weight=class_weight,
            label_smoothing=label_smoothing,
            softcap=softcap,
        )
        if res is not None:
            return res  # type: ignore[no-any-return]
    cdt = compute_dtype(logits.dtype)
    rows, num_classes = tuple(logits.shape[:-1]), logits.shape[-1]
    x = logits if rows else logits.unsqueeze(0)
    y = target if rows else target.unsqueeze(0)
    shape0 = tuple(x.shape[:-1])
    ref, rel, loss, amass = (torch.empty(shape0, dtype=cdt, device=x.device) for _ in range(4))
    n0 = x.shape[0]
    per_row = x[0].numel() if n0 else 1
    step = block_rows or default_block_rows(per_row)
    for a in range(0, n0, step):
        b = min(n0, a + step)
        xf, _ = softcapped(x[a:b].to(cdt), softcap)
        m = torch.amax(xf, dim=-1, keepdim=True)
        m = torch.where(m == float("-inf"), 0.0, m)  # a row of -inf: no shift (its lse is -inf)
        shifted = xf - m
        r_b = torch.log(torch.exp(shifted).sum(dim=-1))
        wy = _smoothed_block(y[a:b], cdt, label_smoothing, num_classes)
        if class_weight is not None:
            wy = wy * class_weight
        am = wy.sum(dim=-1)
        ref[a:b], rel[a:b], amass[a:b] = m.squeeze(-1), r_b, am
        loss[a:b] = am * r_b - (wy * shifted).sum(dim=-1)
    if not rows:
        return ref[0], rel[0], loss[0], amass[0]
    return ref, rel, loss, amass


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
    ref: Tensor | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> Tensor:
    """Pass 2 for probability targets: ``g_ic = s_i (A_i p_ic − w_c y'_ic)`` into ``out``.

    With ``ref`` (the row max), ``lse`` is ``lse − ref`` and ``p = exp(x − ref) e^{−(lse − ref)}``
    (see :func:`logits_grad`). With ``softcap``, ``lse``/``ref`` are of ``x'`` and the result is
    multiplied by ``1 − (x'/c)²``."""
    if ref is not None:  # fold e^{-(lse - ref)} into A
        amass = amass * rowwise(torch.exp, -lse)
        lse = ref
    if (tr := select(logits, impl)) is not None:
        return tr.prob_grad(
            logits,
            target,
            lse,
            row_scale,
            amass,
            class_weight=class_weight,
            label_smoothing=label_smoothing,
            out=out,
            **_softcap_kw(softcap),
        )
    cdt = compute_dtype(logits.dtype)
    if out is None:
        out = empty_buffer(tuple(logits.shape), logits.dtype, logits.device)
    if (cc := select_cpu(logits, impl)) is not None and block_rows is None:
        done = cc.prob_grad(
            logits,
            target,
            lse,
            row_scale,
            amass,
            class_weight=class_weight,
            label_smoothing=label_smoothing,
            out=out,
            softcap=softcap,
        )
        if done:
            return out
    rows, num_classes = tuple(logits.shape[:-1]), logits.shape[-1]
    x, y, g = (logits, target, out) if rows else (t.unsqueeze(0) for t in (logits, target, out))
    if not rows:
        lse, row_scale, amass = lse.unsqueeze(0), row_scale.unsqueeze(0), amass.unsqueeze(0)
    n0 = x.shape[0]
    per_row = x[0].numel() if n0 else 1
    step = block_rows or default_block_rows(per_row)
    for a in range(0, n0, step):
        b = min(n0, a + step)
        xs, t = softcapped(x[a:b].to(cdt), softcap)
        p = torch.exp(xs - lse[a:b].unsqueeze(-1))
        p.mul_((row_scale[a:b] * amass[a:b]).unsqueeze(-1))
        wy = _smoothed_block(y[a:b], cdt, label_smoothing, num_classes)
        if class_weight is not None:
            wy = wy * class_weight
        p.sub_(wy * row_scale[a:b].unsqueeze(-1))
        _chain_softcap(p, t)
        g[a:b] = p
    return out


# --------------------------------------------------------------------------- linear


def linear_logits(h: Tensor, weight: Tensor, bias: Tensor | None, buf: Tensor) -> Tensor:
    """``h @ weight.T + bias`` written into the first rows of the reused chunk buffer ``buf``
    (a fresh buffer per chunk would pay its page faults again every time)."""
    z = buf[: h.shape[0]]
    if bias is None:
        return torch.mm(h, weight.t(), out=z)
    return torch.addmm(bias, h, weight.t(), out=z)


def _chunk_buffer(hidden: Tensor, weight: Tensor, step: int) -> Tensor:
    rows = min(step, hidden.shape[0])
    return torch.empty((rows, weight.shape[0]), dtype=hidden.dtype, device=hidden.device)


def linear_chunks(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, chunk_rows: int | None
) -> Iterator[tuple[slice, Tensor]]:
    """The one chunk driver of the linear forms: ``(rows, z)`` for consecutive row chunks,
    ``z = hidden[rows] @ weight.T + bias`` written into one reused buffer (a fresh buffer per
    chunk would pay its page faults again every time). ``z`` is valid until the next chunk
    and may be overwritten in place (by its gradient). ``chunk_rows``: rows per chunk, default
    :func:`default_chunk_rows`."""
    n = hidden.shape[0]
    step = chunk_rows or default_chunk_rows(weight.shape[0], hidden.element_size())
    buf = _chunk_buffer(hidden, weight, step)
    for a in range(0, n, step):
        rows = slice(a, min(n, a + step))
        yield rows, linear_logits(hidden[rows], weight, bias, buf)


def _cat_stats(parts: list[RowStats], with_sum: bool) -> RowStats:
    """The statistics of consecutive row chunks as one."""
    sums = [p.sum_logits for p in parts]
    return RowStats(
        torch.cat([p.max for p in parts]),
        torch.cat([p.sumexp for p in parts]),
        torch.cat([p.target_logit for p in parts]),
        torch.cat([p.has_target for p in parts]),
        torch.cat([s for s in sums if s is not None]) if with_sum else None,
    )


def linear_row_stats(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    *,
    bias: Tensor | None = None,
    class_offset: int = 0,
    class_weight: Tensor | None = None,
    with_sum: bool = False,
    chunk_rows: int | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> RowStats:
    """Pass 1 for ``logits = hidden @ weight.T + bias`` without materialising them.

    Parameters
    ----------
    hidden : Tensor, shape ``(R, D)``
    weight : Tensor, shape ``(C, D)``
        The shard's rows of the output projection (global classes
        ``class_offset … class_offset + C − 1``).
    target : Tensor, shape ``(R,)``
        Global class indices.
    bias : Tensor, shape ``(C,)``, optional
        The shard's bias.
    class_weight, with_sum, class_offset, softcap
        As in :func:`logits_row_stats`.
    chunk_rows : int, optional
        Rows of logits alive at a time (default: about ``Tuning.linear_stats_chunk_bytes`` of
        logits; this pass holds no gradient buffer beside its chunk).
    """
    parts = [
        logits_row_stats(
            z,
            target[rows],
            class_offset=class_offset,
            class_weight=class_weight,
            with_sum=with_sum,
            softcap=softcap,
            impl=impl,
        )
        for rows, z in linear_chunks(
            hidden,
            weight,
            bias,
            chunk_rows
            or default_chunk_rows(
                weight.shape[0], hidden.element_size(), tuning().linear_stats_chunk_bytes
            ),
        )
    ]
    if not parts:
        return logits_row_stats(
            torch.empty((0, weight.shape[0]), dtype=hidden.dtype, device=hidden.device),
            target,
            class_offset=class_offset,
            with_sum=with_sum,
        )
    return _cat_stats(parts, with_sum)


def _accumulate(
    grads: LinearGrads,
    gz: Tensor,
    h: Tensor,
    weight: Tensor,
    rows: slice,
) -> None:
    """Add one chunk's ``d logits`` (in the matmul dtype) to the three gradients."""
    if grads.hidden is not None:
        if grads.hidden.dtype == gz.dtype:
            torch.mm(gz, weight, out=grads.hidden[rows])
        else:
            grads.hidden[rows] = torch.mm(gz, weight)
    if grads.weight is not None:
        if grads.weight.dtype == gz.dtype and rows.start == 0:
            torch.mm(gz.t(), h, out=grads.weight)  # first chunk: no read of a zeroed buffer
        elif grads.weight.dtype == gz.dtype:
            grads.weight.addmm_(gz.t(), h)
        else:
            # Low precision: this sum runs over all rows, so it accumulates in float32.
            grads.weight.addmm_(gz.t().to(grads.weight.dtype), h.to(grads.weight.dtype))
    if grads.bias is not None:
        grads.bias.add_(gz.sum(dim=0, dtype=grads.bias.dtype))


def _empty_grads(
    hidden: Tensor, weight: Tensor, need_hidden: bool, need_weight: bool, need_bias: bool
) -> LinearGrads:
    cdt = compute_dtype(hidden.dtype)
    dev = hidden.device
    fill_free = hidden.shape[0] > 0 and cdt == hidden.dtype
    return LinearGrads(
        torch.empty(hidden.shape, dtype=cdt, device=dev) if need_hidden else None,
        # The first chunk overwrites it (same dtype); zeroed only when it accumulates.
        (torch.empty if fill_free else torch.zeros)(weight.shape, dtype=cdt, device=dev)
        if need_weight
        else None,
        torch.zeros(weight.shape[0], dtype=cdt, device=dev) if need_bias else None,
    )


def linear_grad(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    lse: Tensor,
    coef: GradCoefficients,
    *,
    bias: Tensor | None = None,
    class_offset: int = 0,
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
    need_hidden: bool = True,
    need_weight: bool = True,
    need_bias: bool = False,
    ref: Tensor | None = None,
    softcap: float | None = None,
    impl: str = "auto",
) -> LinearGrads:
    """Pass 2 for ``logits = hidden @ weight.T + bias``: recompute each chunk of logits, turn it
    into ``d logits`` in place (:func:`logits_grad`), and accumulate
    ``d hidden = g @ weight``, ``d weight += g.T @ hidden``, ``d bias += Σ_rows g``.

    Arguments as in :func:`linear_row_stats` and :func:`logits_grad`; ``lse``, ``coef`` and
    ``ref`` are global per-row values of shape ``(R,)``. Returns :class:`LinearGrads` in compute
    dtype.
    """
    grads = _empty_grads(hidden, weight, need_hidden, need_weight, need_bias)
    for sl, z in linear_chunks(hidden, weight, bias, chunk_rows):
        c = GradCoefficients(
            coef.p_scale[sl],
            None if coef.smooth_scale is None else coef.smooth_scale[sl],
            coef.target_grad[sl],
        )
        logits_grad(
            z,
            target[sl],
            lse[sl],
            c,
            class_offset=class_offset,
            class_weight=class_weight,
            out=z,
            ref=None if ref is None else ref[sl],
            softcap=softcap,
            impl=impl,
        )
        _accumulate(grads, z, hidden[sl], weight, sl)
    return grads


def linear_fused(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    row_scale: Tensor,
    target_weight: Tensor,
    *,
    bias: Tensor | None = None,
    label_smoothing: float,
    weight_total: float | Tensor,
    class_weight: Tensor | None = None,
    chunk_rows: int | None = None,
    need_hidden: bool = True,
    need_weight: bool = True,
    need_bias: bool = False,
    z_loss: float = 0.0,
    softcap: float | None = None,
    impl: str = "auto",
) -> tuple[RowStats, LinearGrads]:
    """Statistics and gradients in one sweep (whole vocabulary local, row scales known): three
    matmuls in all — each chunk of logits is computed once and turned into its gradient."""
    grads = _empty_grads(hidden, weight, need_hidden, need_weight, need_bias)
    parts = []
    for sl, z in linear_chunks(hidden, weight, bias, chunk_rows):
        st, _ = logits_fused(
            z,
            target[sl],
            row_scale[sl],
            target_weight[sl],
            label_smoothing=label_smoothing,
            weight_total=weight_total,
            class_weight=class_weight,
            out=z,
            z_loss=z_loss,
            softcap=softcap,
            impl=impl,
        )
        parts.append(st)
        _accumulate(grads, z, hidden[sl], weight, sl)
    if not parts:
        st = logits_row_stats(
            torch.empty((0, weight.shape[0]), dtype=hidden.dtype, device=hidden.device),
            target,
            with_sum=bool(label_smoothing),
        )
        return st, grads
    return _cat_stats(parts, bool(label_smoothing)), grads


__all__ = [
    "GradCoefficients",
    "LinearGrads",
    "RowStats",
    "compute_dtype",
    "default_block_rows",
    "default_chunk_rows",
    "empty_buffer",
    "index_target_coefficients",
    "linear_chunks",
    "linear_fused",
    "linear_grad",
    "linear_logits",
    "linear_row_stats",
    "logits_fused",
    "logits_grad",
    "logits_row_stats",
    "merge_row_stats",
    "other_prob",
    "prob_grad",
    "prob_row_stats",
    "row_lse",
    "row_lse_rel",
    "row_nll",
    "target_exp",
]
