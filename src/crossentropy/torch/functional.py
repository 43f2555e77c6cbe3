r"""Fused softmax cross-entropy for PyTorch: ``cross_entropy`` and ``linear_cross_entropy``.

Layering: :mod:`._kernels` (blocked torch ops) → :mod:`._ops` (the kernels as custom ops, one
graph node each, with fake impls) → the ``autograd.Function`` classes here → the public
functions (validation once, at the boundary) → :mod:`.modules`.

How each mode is served, and why:

- **First backward** of ``"mean"``/``"sum"``: the forward already computed the gradient
  (``a − y``, block by block while the logits were in cache); backward hands that buffer out
  once, rescaled in place by the upstream gradient. No second logits-sized buffer.
- **A second backward through a retained graph** recomputes the gradient from the saved
  logits and per-row log-sum-exp instead of handing out the same buffer again, so what a
  caller did with an earlier gradient never changes a later one.
- **Backward with** ``create_graph=True`` (Hessians, gradient penalties, MAML) computes the
  closed-form gradient with differentiable torch ops (``softmax(x)·a − y``), so every higher
  derivative is autograd's own.
- **torch.func** transforms (``grad``, ``vmap``, ``jacrev``, ``jvp``, ...) and forward-mode
  AD, a probability ``target`` (or, with one, a class ``weight``) that requires grad, and small
  problems (at most ``2**20`` logits, ``Tuning.direct_max_elements``, where a fused kernel's
  fixed cost exceeds its saving) go to the composite reference ``torch.nn.functional.cross_entropy``
  itself: bit-for-bit the function we stand in for. A class ``weight`` that requires grad with
  index targets is refused, as ``F`` refuses it.
- **torch.compile / meta / FakeTensor**: the kernels are custom ops with fake impls, the
  public functions read nothing on the host, and the ``autograd.Function`` backward is
  functional under compilation, so ``fullgraph=True`` traces with no graph break.
- **Autocast**: ``F.cross_entropy`` is on autocast's float32 list; so are we — the loss comes
  back in float32 but the logits are *not* copied to float32 (the kernels accumulate in
  float32 block by block). ``linear_cross_entropy`` casts ``hidden``/``weight``/``bias`` to the
  autocast dtype first, as ``F.linear`` would, so its matmuls run there.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import fail
from . import _dtensor, _ops, _rows
from . import _kernels as K
from . import _reference as R
from ._checks import (
    check_chunk_size,
    check_class_weight,
    check_impl,
    check_options,
    check_projection,
    check_sample_weight,
    check_softcap,
    check_tensor,
    check_z_loss,
    describe,
)
from ._modes import (
    autocast_dtype,
    autocast_on,
    autocast_projection,
    compiling,
    differentiable_backward,
    no_autocast,
    transforms_active,
)
from ._shard import combine_row_stats, reduce_sum, refuse_double_backward
from ._types import Options, Shard, tuning

__all__ = ["cross_entropy", "linear_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


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


# --------------------------------------------------------------------------- arguments


def _cast(x: Tensor | None, dtype: torch.dtype, *, detach: bool = False) -> Tensor | None:
    if x is None:
        return None
    return (x.detach() if detach else x).to(dtype)


def _legacy_reduction(size_average: object, reduce: object, reduction: object) -> object:
    if size_average is None and reduce is None:
        return reduction
    from torch.nn import _reduction

    return _reduction.legacy_get_string(size_average, reduce)  # type: ignore[arg-type]


def _dense(x: Tensor) -> bool:
    """``x``'s elements fill a block of memory exactly once (some permutation of contiguous)."""
    expected = 1
    dims = sorted((st, sz) for sz, st in zip(x.shape, x.stride(), strict=True) if sz != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _whole_storage_view(
    fn: str, x: Tensor
) -> tuple[Tensor, tuple[tuple[int, ...], tuple[int, ...], int] | None]:
    """For ``inplace_backward``: the tensor autograd must see as overwritten, and ``x``'s view
    geometry on it. A view (``logits.view(-1, V)``, a transpose) is rewritten through its base,
    which the gradient then fills completely; a view of *part* of a tensor (a slice) is refused:
    the rest of the base would hold stale values autograd could not tell from a gradient."""
    base = x._base
    if base is None:
        return x, None
    covers = (
        x.numel() == base.numel()
        and base.is_contiguous()
        and x.storage_offset() == base.storage_offset()
        and _dense(x)
    )
    if not covers:
        fail(
            fn,
            "input",
            "be a whole tensor or a view of all of one (e.g. logits.view(-1, V)) with "
            "inplace_backward=True; a view of part of a tensor (a slice) cannot be overwritten "
            "safely: pass input.contiguous() or use inplace_backward=False",
            f"a view of {x.numel()} of its base's {base.numel()} elements",
            ValueError,
        )
    return base, (tuple(x.shape), tuple(x.stride()), int(x.storage_offset()))


# --------------------------------------------------------------------------- public


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Tensor | None = None,
    inplace_backward: bool = False,
    impl: str = "auto",
) -> Tensor:
    r"""Softmax cross-entropy of logits: a fused drop-in for ``torch.nn.functional.cross_entropy``.

    Same arguments (in the same positional order, including the deprecated ``size_average``
    and ``reduce``), results, dtypes and gradients as ``F.cross_entropy``, in every autograd
    mode: first and higher-order derivatives, ``torch.func``, ``torch.compile(fullgraph=True)``,
    meta tensors, autocast. For ``"mean"``/``"sum"`` the gradient is computed during the
    forward, block by block while the logits are in cache, so the only logits-sized buffer is
    the gradient itself (``F`` needs three).

    Parameters
    ----------
    input : Tensor, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``
        Unnormalised logits, any floating dtype (float16/bfloat16 accumulate in float32).
    target : Tensor
        Class indices (any integer dtype), shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, each
        in ``[0, C)`` or equal to ``ignore_index``; or class probabilities of the input's
        shape (floating dtype).
    weight : Tensor, shape ``(C,)``, optional
        A rescaling weight per class, of the input's dtype (any floating dtype under
        autocast).
    size_average, reduce : bool, optional
        Deprecated, as in ``F.cross_entropy``: when either is given they set ``reduction``
        (with PyTorch's deprecation warning).
    ignore_index : int
        Target value that contributes neither loss nor gradient (index targets only; must stay
        -100 with probability targets, as in ``F``).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the summed weights of the non-ignored targets (index targets)
        or by the number of rows (probability targets), as PyTorch does.
    label_smoothing : float in [0, 1]
        Mix ``ε`` of the uniform distribution into the targets (a float, NumPy scalar or 0-d
        tensor).
    z_loss : float >= 0
        Not in ``F``: adds ``z_loss · lse(x')²`` per kept position (the PaLM z-loss;
        Liger-Kernel's and flash-attn's ``lse_square_scale``), weighted by ``w_y`` like the
        position's share of ``"mean"``'s denominator (1 for probability targets).
    softcap : float in ``[2**-126, 2**127]``, optional
        Not in ``F``: the logits become ``x' = softcap · tanh(x / softcap)`` before anything
        else (Gemma 2's final-logit softcapping), computed block by block: the capped logits
        never exist in memory as a whole. The gradient carries ``1 − (x'/softcap)²``. Caps
        outside float32's normal range are refused (``x / softcap`` would overflow there).
    sample_weight : Tensor, optional
        Not in ``F``: one weight per target position (the target's shape for class indices,
        the input's without the class dimension for probabilities; any floating dtype, on
        the input's device), e.g. an RL advantage. It multiplies each position's loss and
        does **not** change ``"mean"``'s denominator: ones reproduce the unweighted loss; use
        ``ignore_index`` to drop positions, or ``reduction="sum"`` and divide by
        ``sample_weight.sum()`` for a mean weighted by them. Ignored positions give 0 whatever
        their sample weight; a non-finite sample weight gives a non-finite loss, as a
        non-finite logit does. A ``sample_weight`` that requires grad is differentiated
        (through the composite path). See :doc:`/guide/options` for how the three combine.
    inplace_backward : bool
        Opt-in (not in ``F.cross_entropy``): write the gradient into ``input``'s own buffer
        during the forward, saving the gradient-sized allocation. ``input`` then holds the
        gradient; autograd sees the write (version counter), so using ``input`` after the
        loss, or a graph that saved it, raises instead of computing wrong gradients; ``input``
        must not be a leaf. Only for class-index targets and ``"mean"``/``"sum"``, and only
        when a gradient is needed (otherwise ignored; also ignored under ``torch.compile`` and
        ``torch.func``, where the result is the same without the saving). A view of a whole
        tensor (``logits.view(-1, V)``, a transpose) is supported; a view of part of one (a
        slice) and double backward are refused with a clear error.

    Returns
    -------
    Tensor
        0-d (``"mean"``, ``"sum"``) or of the target's row shape (``"none"``). Dtype as
        ``F.cross_entropy``'s: the input's (index targets), the promotion of input and
        target dtypes (probability targets), float32 for half-precision input under autocast.

    Notes
    -----
    With ``p = softmax(x)``, per row and index target ``y`` (PyTorch's exact definition,
    including its weighting of the smoothing term):

    .. math::
        \ell = (1-\varepsilon)\, w_y (\mathrm{lse}(x) - x_y)
               + \frac{\varepsilon}{C} \sum_c w_c (\mathrm{lse}(x) - x_c),
        \qquad
        \frac{\partial \ell}{\partial x_c} = a\, p_c - (1-\varepsilon) w_y [c = y]
               - \frac{\varepsilon}{C} w_c,

    with ``a = (1 − ε) w_y + (ε/C) Σ_c w_c``: the article's ``a − y``. The true-class entry
    is computed as ``(ε/C)(Σw − w_y) − a Σ_{c≠y} p_c``, which does not cancel when
    ``p_y → 1``. ``"mean"`` divides by ``Σ_i w_{y_i}`` over non-ignored rows, smoothing term
    included (PyTorch's quirk); if every target is ignored (or the batch is empty) the mean is
    NaN (0/0) and the gradient is 0, as in PyTorch. For probability targets
    ``y'`` = ``(1 − ε) y + ε/C``, ``ℓ = −Σ_c w_c y'_c log p_c`` and
    ``∂ℓ/∂x_c = (Σ_k w_k y'_k) p_c − w_c y'_c``. With ``z_loss`` the coefficient of ``p_c``
    gains ``2 z w_y lse`` (``2 z lse`` for probability targets); with ``softcap`` every formula
    holds for ``x'`` and the gradient is multiplied by ``∂x'/∂x = 1 − (x'/c)²``; a sample
    weight multiplies its row's loss and gradient.

    What is checked, where and when: argument types, dtypes, shapes and option values at the
    call, from metadata only (no host read, so also under ``torch.compile`` and on meta
    tensors). The target *values* (class range) are checked inside the kernel: on CPU with a
    clear ``ValueError`` before anything is computed (eager and compiled alike); on other
    devices by a device-side assertion, as ``F.cross_entropy`` does — no host sync.

    Which path runs: small problems (at most ``2**20`` logits), ``torch.func``
    transforms and forward-mode AD, and a probability ``target`` (or, with one, a ``weight``)
    that requires grad go to ``F.cross_entropy`` itself (the fused kernel cannot win there,
    or the gradient it would need is not one it computes); everything else runs the fused
    kernels. The fused first
    backward hands out the forward's gradient once (rescaled in place); a second backward
    through a retained graph recomputes it; ``create_graph=True`` uses differentiable ops.
    Float16 gradients are stored pre-multiplied by a power of two so that a ``GradScaler``'s
    scale does not meet already-flushed zeros; the rescaling by the upstream gradient is exact
    when that is a power of two (a ``GradScaler`` scale) and adds one float16 rounding (at most
    1 ulp) otherwise.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import cross_entropy
    >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], requires_grad=True)
    >>> loss = cross_entropy(x, torch.tensor([0, 2]))
    >>> loss
    tensor(0.1681, grad_fn=<NllLossBackward0>)
    >>> loss.backward()
    >>> x.grad
    tensor([[-0.1072,  0.0876,  0.0196],
            [ 0.0226,  0.0226, -0.0453]])
    """
    if (
        type(input) is Tensor
        and type(target) is Tensor
        and weight is None
        and size_average is None
        and reduce is None
        and not inplace_backward
        and impl == "auto"
        and type(ignore_index) is int
        and type(label_smoothing) is float
        and 0.0 <= label_smoothing <= 1.0
        and reduction in _REDUCTIONS
        and input.numel() <= tuning().direct_max_elements
        and (target.dtype == torch.int64 or target.is_floating_point())
        and softcap is None
        and sample_weight is None
        and type(z_loss) in (float, int)
        and not z_loss
    ):
        # A small problem with plain arguments is F.cross_entropy itself (the ~µs of our checks
        # would be a fifth of its time); anything F refuses is re-checked below, for our error.
        try:
            return F.cross_entropy(
                input,
                target,
                None,
                ignore_index=ignore_index,
                reduction=reduction,
                label_smoothing=label_smoothing,
            )
        except (RuntimeError, IndexError, ValueError, TypeError):
            pass
    fn = "cross_entropy"
    if _dtensor.any_dtensor(input, target, weight, sample_weight):
        if inplace_backward:
            fail(fn, "inplace_backward", "be False with DTensor inputs", "True")
        return _dtensor.cross_entropy(  # type: ignore[no-any-return]
            fn,
            input,
            target,
            weight,
            ignore_index,
            _legacy_reduction(size_average, reduce, reduction),  # type: ignore[arg-type]
            label_smoothing,
            z_loss,
            softcap,
            sample_weight,
            impl,
            cross_entropy,
        )
    x = check_tensor(fn, "input", input, floating=True)
    if x.dim() == 0:
        fail(fn, "input", "have at least 1 dimension (classes)", "shape ()")
    t = check_tensor(fn, "target", target)
    reduction = _legacy_reduction(size_average, reduce, reduction)  # type: ignore[assignment]
    red, eps, ignore = check_options(fn, reduction, label_smoothing, ignore_index)
    if not isinstance(inplace_backward, bool):
        fail(fn, "inplace_backward", "be a bool", describe(inplace_backward), TypeError)
    impl = check_impl(fn, impl, x)
    z = check_z_loss(fn, z_loss)
    cap = check_softcap(fn, softcap)
    autocast = autocast_on(x)
    num_classes = x.shape[1] if x.dim() >= 2 else x.shape[0]
    w = check_class_weight(fn, "weight", weight, num_classes, device=x.device)
    if w is not None and not autocast and w.dtype != x.dtype:
        fail(fn, "weight", f"have the input's dtype {x.dtype}", f"dtype {w.dtype}", TypeError)
    prob = t.is_floating_point()
    if prob:
        if inplace_backward:
            fail(
                fn,
                "inplace_backward",
                "be False with reduction='none' or probability targets",
                f"True with reduction={red!r} and target dtype {t.dtype}",
            )
        if t.shape != x.shape:
            fail(
                fn,
                "target",
                f"have the input's shape {tuple(x.shape)} (probabilities)",
                f"shape {tuple(t.shape)}",
            )
        if ignore != -100:
            fail(fn, "ignore_index", "be -100 (unused) with probability targets", ignore)
        if t.device != x.device:
            fail(fn, "target", f"be on the input's device {x.device}", f"device {t.device}")
    else:
        if t.dtype == torch.bool or t.is_complex():
            fail(
                fn,
                "target",
                "have an integer (class indices) or floating dtype",
                f"dtype {t.dtype}",
                TypeError,
            )
        rows = tuple(x.shape[:1]) + tuple(x.shape[2:]) if x.dim() >= 2 else ()
        if tuple(t.shape) != rows:
            fail(
                fn,
                "target",
                f"have shape {rows} (the input's without the class dimension)",
                f"shape {tuple(t.shape)}",
            )
        if t.device != x.device:
            fail(fn, "target", f"be on the input's device {x.device}", f"device {t.device}")
        if inplace_backward and red == "none":
            fail(
                fn,
                "inplace_backward",
                "be False with reduction='none' or probability targets",
                f"True with reduction={red!r} and target dtype {t.dtype}",
            )
    positions = tuple(x.shape[:1]) + tuple(x.shape[2:]) if x.dim() >= 2 else ()
    sw = check_sample_weight(fn, sample_weight, positions, x.device)
    grad_on = torch.is_grad_enabled()
    if grad_on and not prob and w is not None and w.requires_grad:
        fail(
            fn,
            "weight",
            "not require grad with class-index targets (F.cross_entropy does not "
            "differentiate it either; pass weight.detach(), or probability targets)",
            "a weight that requires grad",
        )
    if prob:
        xd, td = x.dtype, t.dtype
        if autocast:
            xd, td = autocast_dtype(xd), autocast_dtype(td)
        out_dtype = torch.promote_types(xd, td)
    else:
        out_dtype = autocast_dtype(x.dtype) if autocast else x.dtype
        if t.dtype != torch.int64:  # F.cross_entropy (the composite path) takes int64 or uint8
            t = t.to(torch.int64)
    opts = Options(ignore, red, eps, z, cap, impl, 0, out_dtype)
    wants_inplace = inplace_backward and grad_on and x.requires_grad and not compiling()
    if (
        (impl == "auto" and not wants_inplace and x.numel() <= tuning().direct_max_elements)
        or transforms_active()
        or (grad_on and w is not None and w.requires_grad)
        or (grad_on and prob and t.requires_grad)
        or (grad_on and sw is not None and sw.requires_grad)
    ):
        return R.call(
            fn,
            # under autocast a class weight of any floating dtype (float64 too: autocast leaves
            # it alone, and F would refuse the mix) is taken in the loss's dtype, as the fused
            # kernels take it
            lambda: R.composite(
                x, t, w if w is None or not autocast else w.to(out_dtype), sw, opts
            ),
            t,
            num_classes,
            ignore,
        )
    if prob:
        out: Tensor = _CrossEntropyProb.apply(x, t, w, sw, opts)  # type: ignore[no-untyped-call]
        return out
    if wants_inplace:
        if (x if x._base is None else x._base).is_leaf:
            fail(
                fn,
                "input",
                "not be a leaf that requires grad with inplace_backward=True (it is "
                "overwritten by its gradient; pass the output of an operation)",
                describe(x),
                RuntimeError,
            )
        base, geometry = _whole_storage_view(fn, x)
        loss: Tensor
        loss, _ = _CrossEntropyInplace.apply(base, t, w, sw, opts, geometry)  # type: ignore[no-untyped-call]
        return loss
    fused = red != "none" and grad_on and x.requires_grad
    out = _CrossEntropyIndex.apply(x, t, w, sw, opts, fused)  # type: ignore[no-untyped-call]
    return out


# --------------------------------------------------------------------------- linear


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


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    class_weight: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Tensor | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
) -> Tensor:
    r"""``F.cross_entropy(hidden @ weight.T + bias, target, ...)`` without the full logits.

    Parameters
    ----------
    hidden : Tensor, shape ``(*, D)``
        Last hidden states, floating dtype.
    weight : Tensor, shape ``(C, D)``
        Output projection (same dtype as ``hidden``, any floating dtype under autocast).
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    bias : Tensor, shape ``(C,)``, optional
        Output bias.
    ignore_index, reduction, label_smoothing
        As in :func:`cross_entropy`.
    class_weight : Tensor, shape ``(C,)``, optional
        Per-class rescaling weight (``F.cross_entropy``'s ``weight``).
    z_loss, softcap : float, optional
        As in :func:`cross_entropy`: ``z_loss · lse²`` per kept row, and logits
        ``softcap · tanh(z / softcap)``, applied chunk by chunk.
    sample_weight : Tensor, shape ``(*)``, optional
        One weight per target position, as in :func:`cross_entropy` (``"mean"``'s denominator
        unchanged).
    chunk_size : int, optional
        Rows of logits alive at a time. Default: about 48 MiB of logits when gradients are
        computed, 128 MiB for a forward that needs none (no gradient buffer beside it).

    Returns
    -------
    Tensor
        0-d, or shape ``(*)`` for ``"none"``; dtype of ``hidden`` (float32 under autocast).

    Notes
    -----
    With ``z = h Wᵀ + b`` and ``g = ∂L/∂z`` from :func:`cross_entropy` (computed chunk by chunk
    from the chunk's logits and its per-row log-sum-exp):

    .. math::
        \frac{\partial L}{\partial h} = g W, \qquad
        \frac{\partial L}{\partial W} = g^\top h, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_i g_i .

    For ``"mean"``/``"sum"`` all three are accumulated during the forward (one matmul per
    chunk for the logits, two for the gradients: the three-matmul floor), and backward only
    rescales them; for ``"none"`` the forward keeps the per-row log-sum-exp and backward
    recomputes each chunk with the per-row upstream gradient. Low-precision inputs run their
    matmuls in their dtype (as ``F.linear`` does) and accumulate ``d weight``/``d bias`` and all
    softmax statistics in float32. Under autocast, ``hidden``, ``weight`` and ``bias`` are
    first cast to the autocast dtype, exactly as ``F.linear`` would (so the matmuls use it),
    and the loss is float32. Peak memory: the gradients plus one chunk of logits (a forward
    without gradients: one chunk).

    Double backward (``create_graph=True``) materialises the logits once and differentiates
    the closed form. ``torch.func`` transforms and tiny problems go to the composite
    ``F.cross_entropy(F.linear(hidden, weight, bias), ...)``.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import linear_cross_entropy
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    >>> linear_cross_entropy(h, W, torch.tensor([0, 1, 2]), chunk_size=2)
    tensor(1.0094, grad_fn=<NllLossBackward0>)
    """
    fn = "linear_cross_entropy"
    if _dtensor.any_dtensor(hidden, weight, bias):
        return _dtensor.linear_cross_entropy(  # type: ignore[no-any-return]
            fn,
            hidden,
            weight,
            target,
            bias,
            class_weight=class_weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            sample_weight=sample_weight,
            chunk_size=chunk_size,
            impl=impl,
        )
    h = check_tensor(fn, "hidden", hidden, floating=True)
    if h.dim() == 0:
        fail(fn, "hidden", "have at least 1 dimension (features)", "shape ()")
    autocast = autocast_on(h)
    if autocast:
        h, weight, bias = autocast_projection(h, weight, bias)
    wt, b = check_projection(fn, h, weight, bias)
    num_classes = wt.shape[0]
    t = check_tensor(fn, "target", target, floating=False)
    if t.dtype != torch.int64:  # any integer dtype; F.cross_entropy takes int64 or uint8
        t = t.to(torch.int64)
    if tuple(t.shape) != tuple(h.shape[:-1]):
        fail(
            fn,
            "target",
            f"have shape {tuple(h.shape[:-1])} (hidden's without features)",
            f"shape {tuple(t.shape)}",
        )
    if t.device != h.device:
        fail(fn, "target", f"be on hidden's device {h.device}", f"device {t.device}")
    red, eps, ignore = check_options(fn, reduction, label_smoothing, ignore_index)
    cw = check_class_weight(fn, "class_weight", class_weight, num_classes, device=h.device)
    chunk_size = check_chunk_size(fn, chunk_size)
    sw = check_sample_weight(fn, sample_weight, tuple(t.shape), h.device, device_of="hidden's")
    z, cap = check_z_loss(fn, z_loss), check_softcap(fn, softcap)
    if cw is not None and not autocast and cw.dtype != h.dtype:
        fail(fn, "class_weight", f"have hidden's dtype {h.dtype}", f"dtype {cw.dtype}", TypeError)
    impl = check_impl(fn, impl, h)
    grad_on = torch.is_grad_enabled()
    if grad_on and cw is not None and cw.requires_grad:
        fail(
            fn,
            "class_weight",
            "not require grad (F.cross_entropy does not differentiate class weights of "
            "class-index targets either; pass class_weight.detach())",
            "a class_weight that requires grad",
        )
    rows = math.prod(h.shape[:-1])
    small = impl == "auto" and rows * num_classes <= tuning().linear_direct_max_elements
    out_dtype = autocast_dtype(h.dtype) if autocast else h.dtype
    opts = Options(ignore, red, eps, z, cap, impl, chunk_size or 0, out_dtype)
    sw1 = None if sw is None else sw.reshape(-1)
    if small or transforms_active() or (grad_on and sw is not None and sw.requires_grad):
        w_ref = cw if cw is None else cw.to(out_dtype if autocast else h.dtype)
        ref = R.call(
            fn,
            lambda: R.composite(
                F.linear(h, wt, b).reshape(rows, num_classes), t.reshape(-1), w_ref, sw1, opts
            ),
            t,
            num_classes,
            ignore,
        )
        return ref.reshape(t.shape) if red == "none" else ref
    lead = tuple(h.shape[:-1])
    h2 = h.reshape(rows, h.shape[-1])  # (not -1: with 0 features the row count is ambiguous)
    t1 = t.reshape(-1)
    needs = (
        grad_on and h.requires_grad,
        grad_on and wt.requires_grad,
        grad_on and b is not None and b.requires_grad,
    )
    out: Tensor = _LinearCrossEntropy.apply(h2, wt, b, t1, cw, sw1, opts, needs)  # type: ignore[no-untyped-call]
    return out.reshape(lead) if red == "none" else out
