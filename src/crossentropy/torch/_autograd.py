r"""The autograd Functions of every loss and statistic: one pipeline, over a whole vocabulary
(``shard=None``) or over a rank's :class:`._types.Shard` of it.

validate (the public functions) → one :class:`._types.Options` → the statistics pass (logits,
or ``hidden @ Wᵀ`` in row chunks) → combine the ranks' row statistics (:mod:`._shard`; nothing
to do in one process) → per-row losses and gradient coefficients (:mod:`._rows`) → the gradient
pass, fused into the forward when the whole vocabulary is local and the row scales are known
(``"mean"``/``"sum"`` with a gradient to take).

Backward modes of the class-index losses: the first eager backward after a fused forward hands
out the forward's gradient buffer (once); a compiled graph keeps it functional; a second
backward through a retained graph reruns the sweep; ``create_graph=True`` and ``torch.func``
differentiate the plain-torch reference (:mod:`._reference`); the passes' backward recomputes
the logits from the saved per-row numbers. On a shard, double backward and ``torch.func`` raise
our error (the passes run collectives on real tensors).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _kernels as K
from . import _ops, _rows
from . import _reference as R
from ._modes import (
    compiling,
    differentiable_backward,
    no_autocast,
)
from ._rows import softcapped, token_finish
from ._shard import combine_row_stats, combine_token_partials, reduce_sum, refuse_double_backward
from ._token_ops import _backward_op, _forward_op, _vjp_rows
from ._types import Options, Shard


def _is_one(g: Tensor) -> bool:
    """``g == 1``, read on the host only where that is free (a real CPU tensor)."""
    if compiling() or type(g) is not Tensor or g.device.type != "cpu" or g.numel() != 1:
        return False
    return bool(g == 1)


def _scaled(g: Tensor, factor: Tensor, *, inplace: bool) -> Tensor:
    """``g * factor`` in ``g``'s dtype (``factor`` 0-d or broadcastable), in place if allowed."""
    if _is_one(factor):
        return g
    f = factor.to(K.compute_dtype(g.dtype)) if factor.dtype != g.dtype else factor
    return g.mul_(f) if inplace else g * f


# --------------------------------------------------------------------------- autograd


def _out_dtype(opts: Options, x: Tensor) -> torch.dtype:
    return x.dtype if opts.out_dtype is None else opts.out_dtype


def _index_op(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    sw: Tensor | None,
    opts: Options,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`._ops.index_forward` with ``opts`` unpacked (autocast off around the kernels)."""
    with no_autocast(logits):
        return _ops.index_forward(
            logits,
            target,
            weight,
            opts.ignore_index,
            opts.reduction,
            opts.label_smoothing,
            opts.impl,
            sw,
            opts.z_loss,
            opts.softcap,
        )


# The passes' way through: statistics → combine across ranks (one process: nothing) → losses
# and, in backward, per-row coefficients → gradient. The saved per-row numbers travel as one
# stacked tensor (``_ROWS``) beside the mean's denominator, the class weights' total and the
# unweighted row losses (for ``d sample_weight``).
_ROWS = ("ref", "lse_rel", "lse", "q", "tw")


def _row_losses(
    parts: tuple[Tensor, ...],
    target: Tensor,
    w: Tensor | None,
    sw: Tensor | None,
    opts: Options,
    num_classes: int,
    shard: Shard | None,
) -> tuple[Tensor, list[Tensor]]:
    """The reduced loss from a statistics pass's outputs (this rank's, combined across the
    shard's ranks), and what backward keeps: ``[rows, denominator, total, unweighted]``
    (:data:`_ROWS` stacked; ``unweighted`` only with sample weights)."""
    m, sumexp, xt, has, sum_logits = parts
    stats = K.RowStats(m, sumexp, xt, has, sum_logits if opts.label_smoothing else None)
    valid = target != opts.ignore_index
    if shard is None:
        vocab = num_classes
        total: Tensor | float = float(vocab) if w is None else w.sum()
        _, tw, _ = _rows.row_scales(target, w, opts.ignore_index, "sum", m.dtype)
    else:
        vocab = shard.vocab
        stats, picked, wsum = combine_row_stats(stats, target, valid, w, shard)
        tw = valid.to(m.dtype) if picked is None else torch.where(valid, picked, 0.0)
        total = float(vocab) if wsum is None else wsum
    lse = _rows.row_lse(stats)
    eps = opts.label_smoothing
    per_row = _rows.index_losses(stats, lse, valid, tw, eps, vocab, total, opts.z_loss)
    loss = per_row if sw is None else torch.where(valid, per_row * sw, 0.0)
    denom = tw.sum()
    # lse − M is 0 on ignored rows: a row of only -inf logits has log 0 there, and its
    # gradient (row scale 0) must be 0 · e^{x − M} = 0, not 0 · e^{+inf}
    rows = torch.stack(
        [
            stats.max,
            torch.where(valid, _rows.row_lse_rel(stats), 0.0),
            lse,
            _rows.other_prob(stats),
            tw,
        ]
    )
    total_t = torch.as_tensor(total, dtype=m.dtype, device=m.device)
    keep = [rows, denom, total_t] + ([] if sw is None else [per_row])
    return _rows.reduce(loss, opts.reduction, denom), keep


def _row_coefficients(
    grad_out: Tensor,
    kept: list[Tensor],
    target: Tensor,
    w: Tensor | None,
    sw: Tensor | None,
    opts: Options,
    dtype: torch.dtype,
    bound: float,
    vocab: int,
) -> tuple[K.GradCoefficients, Tensor, Tensor, Tensor]:
    """The gradient pass's per-row coefficients for the upstream ``grad_out``, the float16
    ``pre`` they are multiplied by, ``ref`` and ``lse − ref``, and ``d sample_weight``'s
    rows (the row scale times the unweighted row loss; empty without sample weights)."""
    rows, denom, total, *unweighted = kept
    ref, lse_rel, lse, q, tw = rows.unbind(0)
    cdt = rows.dtype
    valid = target != opts.ignore_index
    g = grad_out.to(cdt)
    if opts.reduction == "mean":  # 1 / D, as F: D = 0 with kept rows gives inf/NaN there
        scale = torch.where(valid, 1.0 / denom, 0.0) * g
    elif opts.reduction == "sum":
        scale = valid.to(cdt) * g
    else:
        scale = torch.where(valid, g, 0.0)
    rw = _rows.RowWeights(w, total, valid, tw, scale)
    rg = _rows.sample_scale(scale, valid, sw)
    eps = opts.label_smoothing
    coef, pre = _rows.backward_coefficients(dtype, rw, q, rg, eps, vocab, bound, opts.z_loss, lse)
    d_sample = scale * unweighted[0] if unweighted else scale.new_empty((0,))
    return coef, pre, torch.stack([ref, lse_rel]), d_sample


class _CrossEntropyIndex(torch.autograd.Function):
    """Class-index targets (see the module docstring for the backward modes), over the whole
    vocabulary (``shard=None``) or over this rank's shard of a vocabulary split across the
    ranks of ``shard.group`` (the passes, with the statistics combined across ranks)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        sample_weight: Tensor | None,
        opts: Options,
        fused: bool,
        shard: Shard | None = None,
    ) -> Tensor:
        ctx.compiled = compiling()
        ctx.opts, ctx.fused, ctx.shard, ctx.grad, ctx.pre = opts, fused, shard, None, None
        saved = [logits, target, weight, sample_weight]
        if fused:
            loss, grad, pre = _index_op(logits, target, weight, sample_weight, opts)
            saved.append(pre)
            if ctx.compiled:
                saved.append(grad)
            else:
                ctx.grad, ctx.pre = grad, pre
        else:
            cdt = K.compute_dtype(logits.dtype)
            w, sw = _cast(weight, cdt), _cast(sample_weight, cdt, detach=True)
            with no_autocast(logits):
                parts = _ops.index_stats(
                    logits,
                    target,
                    w,
                    opts.ignore_index,
                    bool(opts.label_smoothing),
                    opts.impl,
                    opts.softcap,
                    None if shard is None else shard.start,
                )
            classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
            loss, kept = _row_losses(parts, target, w, sw, opts, classes, shard)
            saved += kept
            ctx.vocab = classes if shard is None else shard.vocab
        ctx.save_for_backward(*saved)
        return loss.to(_out_dtype(opts, logits))

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        none = (None,) * 3
        if ctx.shard is not None:
            refuse_double_backward("vocab_parallel_cross_entropy")
        if ctx.grad is not None and not differentiable_backward():
            # first eager backward: the forward's buffer, handed out once. It reads none of
            # the saved inputs, so (as with F) the logits may have changed in place since.
            grad, ctx.grad = ctx.grad, None
            return (_scaled(grad, grad_out / ctx.pre, inplace=True), None, None, None, *none)
        logits, target, weight, sample_weight, *kept = ctx.saved_tensors
        opts: Options = ctx.opts
        if differentiable_backward():  # create_graph=True or a torch.func transform
            g = R.index_grad(logits, target, weight, sample_weight, opts, grad_out)
            return (g, None, None, None, *none)
        if ctx.fused:
            pre, *grad = kept
            if grad:  # compiled: functional
                return (_scaled(grad[0], grad_out / pre, inplace=False), None, None, None, *none)
            # a second backward (retained graph): the same sweep again
            grad = _index_op(logits, target, weight, sample_weight, opts)[1]
            return (_scaled(grad, grad_out / pre, inplace=True), None, None, None, *none)
        cdt = K.compute_dtype(logits.dtype)
        w, sw = _cast(weight, cdt), _cast(sample_weight, cdt, detach=True)
        coef, pre, norm, d_sample = _row_coefficients(
            grad_out, kept, target, w, sw, opts, logits.dtype, _rows.FP16_TARGET, ctx.vocab
        )
        with no_autocast(logits):
            g = _ops.index_grad(
                logits,
                target,
                w,
                norm[0],
                norm[1],
                coef.p_scale,
                coef.smooth_scale,
                coef.target_grad,
                opts.impl,
                opts.softcap,
                0 if ctx.shard is None else ctx.shard.start,
            )
        if logits.dtype == torch.float16:
            g = (g.to(cdt) / pre).to(logits.dtype)
        ds = None
        if ctx.needs_input_grad[3] and sample_weight is not None:
            ds = d_sample.to(sample_weight.dtype)
        return (g, None, None, ds, *none)


class _CrossEntropyInplace(torch.autograd.Function):
    """``inplace_backward=True``: the fused sweep writes the gradient into the logits' own
    buffer (no new gradient-sized allocation). ``mark_dirty`` bumps their version counter, so
    autograd refuses any backward that needed the old logits (a leaf, a node that saved them)
    instead of silently using the gradient in their place."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        sample_weight: Tensor | None,
        opts: Options,
        geometry: tuple[tuple[int, ...], tuple[int, ...], int] | None,
    ) -> tuple[Tensor, Tensor]:
        # ``logits`` is the storage's base tensor; ``geometry`` the caller's view of all of it.
        view = logits if geometry is None else logits.as_strided(*geometry)
        with no_autocast(logits):
            loss, pre = _ops.index_forward_inplace(view, target, weight, sample_weight, opts)
        ctx.mark_dirty(logits)
        ctx.grad, ctx.pre = logits, pre
        ctx.set_materialize_grads(False)
        return loss.to(opts.out_dtype), logits

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any, grad_out: Tensor | None, grad_overwritten: Tensor | None
    ) -> tuple[Tensor | None, ...]:
        none = (None,) * 5
        if grad_overwritten is not None:
            raise RuntimeError(
                "cross_entropy: input was overwritten by its gradient (inplace_backward=True) "
                "and must not be used after the loss"
            )
        if grad_out is None:
            return (None, *none)
        if torch.is_grad_enabled():
            raise RuntimeError(
                "cross_entropy: double backward (create_graph=True) is not supported with "
                "inplace_backward=True: the logits it would need were overwritten by the "
                "gradient; call without inplace_backward"
            )
        if ctx.grad is None:
            raise RuntimeError(
                "cross_entropy: with inplace_backward=True the gradient can be taken once; "
                "a second backward through a retained graph needs inplace_backward=False"
            )
        grad, ctx.grad = ctx.grad, None
        return (_scaled(grad, grad_out / ctx.pre, inplace=True), *none)


class _CrossEntropyProb(torch.autograd.Function):
    """Probability targets: per-row ``lse`` and ``A = Σ w y'`` saved; gradient in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        sample_weight: Tensor | None,
        opts: Options,
    ) -> Tensor:
        with no_autocast(logits):
            loss, lse, amass = _ops.prob_forward(
                logits,
                target,
                weight,
                opts.label_smoothing,
                opts.impl,
                opts.z_loss,
                opts.softcap,
            )
        rows = loss.numel()
        if sample_weight is not None:
            loss = loss * sample_weight.to(loss.dtype)
        if opts.reduction != "none":
            loss = loss.sum()
            if opts.reduction == "mean":
                loss = loss / rows
        ctx.save_for_backward(logits, target, weight, sample_weight, lse, amass)
        ctx.opts, ctx.rows = opts, rows
        return loss.to(opts.out_dtype)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, target, weight, sw, lse, amass = ctx.saved_tensors
        opts: Options = ctx.opts
        cdt = K.compute_dtype(logits.dtype)
        row_grad = grad_out.to(cdt)
        if opts.reduction == "mean":
            row_grad = row_grad / ctx.rows
        row_grad = row_grad.expand(amass.shape)
        if sw is not None:
            row_grad = row_grad * sw.to(cdt)
        row_grad = row_grad.contiguous()
        if differentiable_backward():
            g = R.prob_grad(logits, target, weight, opts, row_grad)
        else:
            g = _ops.prob_backward(
                logits,
                target,
                weight,
                lse,
                amass,
                row_grad,
                opts.label_smoothing,
                opts.impl,
                opts.z_loss,
                opts.softcap,
            )
        return (g, *(None,) * 4)


def _cast(x: Tensor | None, dtype: torch.dtype, *, detach: bool = False) -> Tensor | None:
    if x is None:
        return None
    return (x.detach() if detach else x).to(dtype)


def _linear_op(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_weight: Tensor | None,
    sw: Tensor | None,
    opts: Options,
    needs: tuple[bool, bool, bool],
) -> tuple[Tensor, ...]:
    """:func:`._ops.linear_forward` with ``opts`` unpacked (autocast off around the kernels)."""
    with no_autocast(hidden):
        return tuple(
            _ops.linear_forward(
                hidden,
                weight,
                bias,
                target,
                class_weight,
                opts.ignore_index,
                opts.reduction,
                opts.label_smoothing,
                opts.chunk_size,
                *needs,
                opts.impl,
                sw,
                opts.z_loss,
                opts.softcap,
            )
        )


class _LinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(hidden @ weight.T + bias, target)`` in row chunks, over the whole
    vocabulary (``shard=None``) or over this rank's shard of it (``weight``, ``bias`` hold
    the shard's classes; ``hidden`` is replicated and its gradient all-reduced).

    ``"mean"``/``"sum"`` with a gradient needed, whole vocabulary: each chunk of logits is
    computed once, turned into its gradient in place and folded into ``d hidden``,
    ``d weight``, ``d bias`` during the forward (three matmuls in all); the first backward
    rescales them. A second backward through a retained graph reruns that sweep. Otherwise
    (``"none"``, no gradient, a shard) the statistics pass runs alone in forward (one matmul)
    and backward recomputes each chunk (four matmuls in all); ``create_graph=True``
    materialises the logits and differentiates the closed form with torch ops.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        class_weight: Tensor | None,
        sample_weight: Tensor | None,
        opts: Options,
        needs: tuple[bool, bool, bool],
        shard: Shard | None = None,
    ) -> Tensor:
        fused = shard is None and opts.reduction != "none" and any(needs)
        ctx.compiled = compiling()
        ctx.opts, ctx.fused, ctx.needs, ctx.shard, ctx.grads = opts, fused, needs, shard, None
        saved = [hidden, weight, bias, target, class_weight, sample_weight]
        if fused:
            loss, dh, dw, db = _linear_op(
                hidden, weight, bias, target, class_weight, sample_weight, opts, needs
            )
            if ctx.compiled:
                saved += [dh, dw, db]
            else:
                ctx.grads = (dh, dw, db)
        else:
            cdt = K.compute_dtype(hidden.dtype)
            cw, sw = _cast(class_weight, cdt), _cast(sample_weight, cdt, detach=True)
            with no_autocast(hidden):
                parts = _ops.linear_stats(
                    hidden,
                    weight,
                    bias,
                    target,
                    cw,
                    opts.ignore_index,
                    bool(opts.label_smoothing),
                    opts.chunk_size,
                    opts.impl,
                    opts.softcap,
                    None if shard is None else shard.start,
                )
            loss, kept = _row_losses(parts, target, cw, sw, opts, weight.shape[0], shard)
            saved += kept
            ctx.vocab = weight.shape[0] if shard is None else shard.vocab
        ctx.save_for_backward(*saved)
        return loss.to(_out_dtype(opts, hidden))

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        shard: Shard | None = ctx.shard
        if shard is not None:
            refuse_double_backward("vocab_parallel_linear_cross_entropy")
        hidden, weight, bias, target, cw, sw, *kept = ctx.saved_tensors
        opts: Options = ctx.opts
        need = ctx.needs_input_grad[:3]
        ds = None
        dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        if differentiable_backward():  # create_graph=True or a torch.func transform
            cdt = K.compute_dtype(hidden.dtype)
            z = F.linear(hidden.to(cdt), weight.to(cdt), None if bias is None else bias.to(cdt))
            gz = R.index_grad(z, target, cw, sw, opts, grad_out)
            grads = (
                (gz @ weight.to(cdt)) if need[0] else None,
                (gz.t() @ hidden.to(cdt)) if need[1] else None,
                gz.sum(dim=0) if bias is not None and need[2] else None,
            )
        elif ctx.fused:
            if ctx.compiled:
                raw, inplace = tuple(kept), False
            else:
                raw, inplace, ctx.grads = ctx.grads, True, None
                if raw is None:  # a second backward (retained graph): the same sweep again
                    raw = _linear_op(hidden, weight, bias, target, cw, sw, opts, ctx.needs)[1:]
            grads = tuple(  # type: ignore[assignment]
                _scaled(g, grad_out, inplace=inplace) if n and have else None
                for g, n, have in zip(raw, need, ctx.needs, strict=True)
            )
        else:
            cdt = K.compute_dtype(hidden.dtype)
            w, s = _cast(cw, cdt), _cast(sw, cdt, detach=True)
            coef, pre, norm, d_sample = _row_coefficients(
                grad_out, kept, target, w, s, opts, hidden.dtype, 1.0, ctx.vocab
            )
            with no_autocast(hidden):
                dh, dw, db = _ops.linear_grad(
                    hidden,
                    weight,
                    bias,
                    target,
                    w,
                    norm[0],
                    norm[1],
                    coef.p_scale,
                    coef.smooth_scale,
                    coef.target_grad,
                    opts.chunk_size,
                    need[0],
                    need[1],
                    bias is not None and need[2],
                    opts.impl,
                    opts.softcap,
                    0 if shard is None else shard.start,
                )
            if hidden.dtype == torch.float16:
                dh, dw, db = (t.div_(pre) for t in (dh, dw, db))
            if shard is not None and need[0]:  # hidden is replicated: every shard's part
                dh = reduce_sum(dh, shard)
            grads = (
                dh if need[0] else None,
                dw if need[1] else None,
                db if bias is not None and need[2] else None,
            )
            if ctx.needs_input_grad[5] and sw is not None:
                ds = d_sample.to(sw.dtype)
        out = tuple(
            None if g is None or d is None else g.reshape(shape).to(d)
            for g, d, shape in zip(
                grads,
                dtypes,
                (hidden.shape, weight.shape, None if bias is None else bias.shape),
                strict=True,
            )
        )
        return (*out, None, None, ds, None, None, None)


class _TokenStats(torch.autograd.Function):
    """``token_stats`` of the logits ``x`` (R, C) (``weight is None``), or of
    ``x @ weight.T + bias`` for hidden states ``x`` (R, D), over the whole vocabulary
    (``shard=None``) or over a vocabulary split across the ranks of ``shard.group``, ``x``
    (``weight``, ``bias``) holding this rank's classes: the same passes, with the ranks'
    partial sums combined in between (:mod:`._shard`). Saves the inputs and three numbers per
    row (``lse``, its rounding error, ``entropy``); backward recomputes the logits chunk by
    chunk, and on a shard all-reduces ``d hidden`` (``hidden`` is replicated)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        target: Tensor,
        ignore_index: int,
        chunk_size: int,
        softcap: float | None,
        fn: str,
        impl: str,
        shard: Shard | None = None,
        temperature: float = 1.0,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        offset = None if shard is None else shard.start
        with no_autocast(x):
            parts = _forward_op(
                x,
                weight,
                bias,
                target,
                ignore_index,
                chunk_size,
                softcap,
                fn,
                impl,
                offset,
                temperature,
            )
        if shard is not None:
            parts = combine_token_partials(parts, shard)
        m, s, spread, zy, argmax = parts
        logprob, entropy, lse, lse_lo = token_finish(m, s, spread, zy, target != ignore_index)
        ctx.save_for_backward(x, weight, bias, target, lse, entropy, lse_lo)
        ctx.options = (ignore_index, chunk_size, softcap, impl, fn, shard, temperature)
        ctx.mark_non_differentiable(argmax)
        ctx.set_materialize_grads(False)  # an unused output's gradient stays None
        return logprob, entropy, lse, argmax

    @staticmethod
    def backward(  # type: ignore[override]
        ctx: Any,
        d_logprob: Tensor | None,
        d_entropy: Tensor | None,
        d_lse: Tensor | None,
        _d_argmax: Tensor | None,
    ) -> tuple[Tensor | None, ...]:
        x, weight, bias, target, lse, entropy, lse_lo = ctx.saved_tensors
        ignore_index, chunk_size, softcap, impl, fn, shard, temperature = ctx.options
        need = ctx.needs_input_grad[:3]
        none = (None,) * 8
        # On a shard, d hidden is all-reduced: every rank that runs this backward takes part.
        gather = shard is not None and weight is not None and need[0]
        if shard is not None:
            refuse_double_backward(fn)
        elif (d_logprob is None and d_entropy is None and d_lse is None) or not any(need):
            return (None, None, None, *none)
        elif differentiable_backward():  # create_graph=True or a vmapped backward
            return (*_differentiable_grads(ctx, d_logprob, d_entropy, d_lse), *none)
        with no_autocast(x):
            dx, dw, db = _backward_op(
                x,
                weight,
                bias,
                target,
                lse,
                entropy,
                d_logprob,
                d_entropy,
                d_lse,
                ignore_index,
                chunk_size,
                softcap,
                need[0],
                need[1],
                need[2],
                lse_lo,
                impl,
                None if shard is None else shard.start,
                temperature,
            )
        if gather:  # the ranks' parts summed in compute dtype, then rounded once
            dx = reduce_sum(dx.to(lse.dtype), shard).to(x.dtype)
        return (
            dx if need[0] else None,
            dw if need[1] and weight is not None else None,
            db if need[2] and bias is not None else None,
            *none,
        )


def _differentiable_grads(
    ctx: Any, d_logprob: Tensor | None, d_entropy: Tensor | None, d_lse: Tensor | None
) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The closed-form VJP in differentiable torch ops on the materialised logits (double
    backward: every higher derivative is autograd's)."""
    x, weight, bias, target, *_ = ctx.saved_tensors
    ignore_index, _, softcap, *_, temperature = ctx.options
    need = ctx.needs_input_grad[:3]
    cdt = K.compute_dtype(x.dtype)
    with no_autocast(x):
        z, t = softcapped((x if weight is None else F.linear(x, weight, bias)).to(cdt), softcap)
        ups = [None if d is None else d.to(cdt) for d in (d_logprob, d_entropy, d_lse)]
        g = _vjp_rows(z / temperature, target, ignore_index, *ups) / temperature
        if t is not None:
            g = g * (1 - t * t)  # ∂z'/∂z of the softcap
        if weight is None:
            return (g.to(x.dtype) if need[0] else None), None, None
        gl = g.to(weight.dtype)
        dx = gl @ weight if need[0] else None
        dw = (g.t() @ x.to(cdt)).to(weight.dtype) if need[1] else None
        db = g.sum(dim=0).to(bias.dtype) if bias is not None and need[2] else None
    return dx, dw, db
