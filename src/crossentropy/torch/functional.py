r"""Fused softmax cross-entropy for PyTorch: ``cross_entropy`` and ``linear_cross_entropy``.

Layering: :mod:`._kernels` (blocked torch ops) → the ``autograd.Function`` classes here →
the two public functions (validation once, at the boundary) → :mod:`.modules`.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .._validation import fail
from . import _kernels as K
from ._checks import (
    check_chunk_size,
    check_class_weight,
    check_options,
    check_projection,
    check_tensor,
    describe,
)

__all__ = ["cross_entropy", "linear_cross_entropy"]


def _check_indices(target: Tensor, num_classes: int, ignore_index: int, fn: str) -> None:
    if target.numel() == 0:
        return
    valid = target != ignore_index
    if not bool(valid.any()):
        return
    lo, hi = int(target[valid].min()), int(target[valid].max())
    if lo < 0 or hi >= num_classes:
        fail(
            fn,
            "target",
            f"contain class indices in [0, {num_classes}) or ignore_index={ignore_index}",
            f"values in [{lo}, {hi}]",
        )


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _is_one(g: Tensor) -> bool:
    return g.numel() == 1 and bool(g == 1)


def _index_setup(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    num_classes: int,
    cdt: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor, Tensor | float]:
    """(valid rows, w_{y_i} (0 if ignored), ∂reduced/∂ℓ_i, W = Σ_c w_c)."""
    valid = target != ignore_index
    safe = torch.where(valid, target, 0).to(torch.int64)
    if weight is None:
        tw = valid.to(cdt)
        total: Tensor | float = float(num_classes)
    else:
        tw = torch.where(valid, weight[safe], 0.0)
        total = weight.sum()
    if reduction == "mean":
        scale = torch.where(valid, 1.0 / tw.sum(), 0.0)
    else:
        scale = valid.to(cdt)
    return valid, tw, scale, total


def _index_losses(
    stats: K.RowStats,
    lse: Tensor,
    valid: Tensor,
    tw: Tensor,
    eps: float,
    num_classes: int,
    total: Tensor | float,
) -> Tensor:
    """ℓ_i = (1−ε) w_y (lse − x_y) + (ε/C) (W lse − Σ_c w_c x_c), 0 for ignored rows."""
    loss = tw * K.row_nll(stats, lse) if eps == 0 else (1.0 - eps) * tw * K.row_nll(stats, lse)
    if eps:
        assert stats.sum_logits is not None  # requested whenever eps > 0
        loss = loss + (eps / num_classes) * (total * lse - stats.sum_logits)
    return torch.where(valid, loss, 0.0)


def _reduce(loss: Tensor, reduction: str, denom: Tensor | float, dtype: torch.dtype) -> Tensor:
    if reduction == "none":
        return loss.to(dtype)
    total = loss.sum()
    if reduction == "mean":
        total = total / denom
    return total.to(dtype)


class _CrossEntropyIndex(torch.autograd.Function):
    """Class-index targets. Scalar reductions with a gradient needed: one fused sweep in forward
    computes the loss *and* its gradient (the article's ``a − y``); backward only rescales it.
    ``"none"``: forward keeps per-row statistics; backward recomputes ``exp(x − lse)``."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        ignore_index: int,
        reduction: str,
        eps: float,
        fused: bool,
    ) -> Tensor:
        cdt = K.compute_dtype(logits.dtype)
        x = logits.movedim(1, -1) if logits.dim() >= 3 else logits
        num_classes = x.shape[-1]
        w = None if weight is None else weight.to(cdt)
        valid, tw, scale, total = _index_setup(target, w, ignore_index, reduction, num_classes, cdt)
        if fused:
            grad = K.empty_buffer(tuple(logits.shape), logits.dtype, logits.device)
            g = grad.movedim(1, -1) if logits.dim() >= 3 else grad
            stats, _ = K.logits_fused(
                x,
                target,
                scale,
                tw,
                label_smoothing=eps,
                weight_total=total,
                class_weight=w,
                out=g,
            )
            ctx.save_for_backward(grad)
        else:
            stats = K.logits_row_stats(x, target, class_weight=w, with_sum=bool(eps))
        lse = K.row_lse(stats)
        loss = _index_losses(stats, lse, valid, tw, eps, num_classes, total)
        if not fused:
            ctx.save_for_backward(
                logits, target, lse, stats.max, stats.sumexp, stats.target_logit, scale, tw, w
            )
            ctx.total, ctx.has_target = total, stats.has_target
        ctx.fused, ctx.eps, ctx.num_classes = fused, eps, num_classes
        return _reduce(loss, reduction, tw.sum(), logits.dtype)

    @staticmethod
    @once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        none = (None,) * 6
        if ctx.fused:
            (grad,) = ctx.saved_tensors
            if not _is_one(grad_out):
                # In place on the saved buffer: it bumps the version counter, so a second
                # backward through a retained graph fails loudly instead of rescaling twice.
                grad.mul_(grad_out.to(grad.dtype))
            return (grad, *none)
        logits, target, lse, m, se, xt, scale, tw, w = ctx.saved_tensors
        stats = K.RowStats(m, se, xt, ctx.has_target)
        row_scale = scale * grad_out.to(scale.dtype)
        coef = K.index_target_coefficients(
            stats,
            row_scale,
            tw,
            label_smoothing=ctx.eps,
            num_classes=ctx.num_classes,
            weight_total=ctx.total,
        )
        grad = K.empty_buffer(tuple(logits.shape), logits.dtype, logits.device)
        moved = logits.dim() >= 3
        K.logits_grad(
            logits.movedim(1, -1) if moved else logits,
            target,
            lse,
            coef,
            class_weight=w,
            out=grad.movedim(1, -1) if moved else grad,
        )
        return (grad, *none)


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
        ignore_index: int,
        reduction: str,
        eps: float,
    ) -> tuple[Tensor, Tensor]:
        cdt = K.compute_dtype(logits.dtype)
        x = logits.movedim(1, -1) if logits.dim() >= 3 else logits
        num_classes = x.shape[-1]
        w = None if weight is None else weight.to(cdt)
        valid, tw, scale, total = _index_setup(target, w, ignore_index, reduction, num_classes, cdt)
        stats, _ = K.logits_fused(
            x, target, scale, tw, label_smoothing=eps, weight_total=total, class_weight=w, out=x
        )
        lse = K.row_lse(stats)
        loss = _index_losses(stats, lse, valid, tw, eps, num_classes, total)
        ctx.mark_dirty(logits)
        ctx.save_for_backward(logits)
        ctx.set_materialize_grads(False)
        return _reduce(loss, reduction, tw.sum(), logits.dtype), logits

    @staticmethod
    @once_differentiable  # type: ignore[untyped-decorator]
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
        (grad,) = ctx.saved_tensors
        if not _is_one(grad_out):
            grad.mul_(grad_out.to(grad.dtype))
        return (grad, *none)


class _CrossEntropyProb(torch.autograd.Function):
    """Probability targets: per-row ``lse`` and ``A = Σ w y'`` saved; gradient in backward."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        logits: Tensor,
        target: Tensor,
        weight: Tensor | None,
        reduction: str,
        eps: float,
    ) -> Tensor:
        cdt = K.compute_dtype(logits.dtype)
        moved = logits.dim() >= 3
        x = logits.movedim(1, -1) if moved else logits
        y = target.movedim(1, -1) if moved else target
        w = None if weight is None else weight.to(cdt)
        lse, loss, amass = K.prob_row_stats(x, y, class_weight=w, label_smoothing=eps)
        rows = loss.numel()
        ctx.save_for_backward(logits, target, lse, amass, w)
        ctx.eps, ctx.reduction, ctx.rows = eps, reduction, rows
        return _reduce(loss, reduction, float(rows), logits.dtype)

    @staticmethod
    @once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        logits, target, lse, amass, w = ctx.saved_tensors
        factor = 1.0 / ctx.rows if ctx.reduction == "mean" else 1.0
        row_scale = (grad_out.to(lse.dtype) * factor).expand(lse.shape)
        grad = K.empty_buffer(tuple(logits.shape), logits.dtype, logits.device)
        moved = logits.dim() >= 3
        K.prob_grad(
            logits.movedim(1, -1) if moved else logits,
            target.movedim(1, -1) if moved else target,
            lse,
            row_scale,
            amass,
            class_weight=w,
            label_smoothing=ctx.eps,
            out=grad.movedim(1, -1) if moved else grad,
        )
        return (grad, None, None, None, None)


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    inplace_backward: bool = False,
) -> Tensor:
    r"""Softmax cross-entropy of logits: a fused drop-in for ``torch.nn.functional.cross_entropy``.

    Same arguments, results, dtypes and gradients as ``F.cross_entropy``, computed in row
    blocks with one gradient-sized buffer: the forward keeps per-row statistics (or, for
    ``"mean"``/``"sum"`` when a gradient is needed, computes the gradient itself while each
    block of logits is in cache), never a log-softmax copy.

    Parameters
    ----------
    input : Tensor, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``
        Unnormalised logits, any floating dtype (float16/bfloat16 accumulate in float32).
    target : Tensor
        Class indices (integer dtype), shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, each in
        ``[0, C)`` or equal to ``ignore_index``; or class probabilities of the input's shape.
    weight : Tensor, shape ``(C,)``, optional
        A rescaling weight per class.
    ignore_index : int
        Target value that contributes neither loss nor gradient (index targets only).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the summed weights of the non-ignored targets (index targets)
        or by the number of rows (probability targets), as PyTorch does.
    label_smoothing : float in [0, 1]
        Mix ``ε`` of the uniform distribution into the targets.
    inplace_backward : bool
        Opt-in (not in ``F.cross_entropy``): write the gradient into ``input``'s own buffer
        during the forward, saving the gradient-sized allocation. ``input`` then holds the
        gradient; autograd sees the write (version counter), so using ``input`` after the
        loss, or a graph that saved it, raises instead of computing wrong gradients; ``input``
        must not be a leaf. Only for class-index targets and ``"mean"``/``"sum"``, and only
        when a gradient is needed (otherwise ignored).

    Returns
    -------
    Tensor
        0-d (``"mean"``, ``"sum"``) or of the target's row shape (``"none"``), input's dtype.

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
    included (PyTorch's quirk); if every target is ignored the mean is NaN (0/0) and the
    gradient is 0, as in PyTorch. For probability targets ``y'`` = ``(1 − ε) y + ε/C``,
    ``ℓ = −Σ_c w_c y'_c log p_c`` and ``∂ℓ/∂x_c = (Σ_k w_k y'_k) p_c − w_c y'_c``.

    For ``"mean"``/``"sum"`` the gradient is computed in the forward and saved (the only
    gradient-sized buffer); ``backward`` rescales it in place by the upstream gradient (a no-op
    when it is 1), so backpropagating twice through a retained graph with an upstream other
    than 1 raises autograd's "modified by an inplace operation" error rather than giving a
    wrong result. Double backward is not supported: differentiating the gradient raises.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import cross_entropy
    >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], requires_grad=True)
    >>> loss = cross_entropy(x, torch.tensor([0, 2]))
    >>> loss
    tensor(0.1681, grad_fn=<_CrossEntropyIndexBackward>)
    >>> loss.backward()
    >>> x.grad
    tensor([[-0.1072,  0.0876,  0.0196],
            [ 0.0226,  0.0226, -0.0453]])
    """
    fn = "cross_entropy"
    x = check_tensor(fn, "input", input, floating=True)
    if x.dim() == 0:
        fail(fn, "input", "have at least 1 dimension (classes)", "shape ()")
    t = check_tensor(fn, "target", target)
    red, eps, ignore = check_options(fn, reduction, label_smoothing, ignore_index)
    if not isinstance(inplace_backward, bool):
        fail(fn, "inplace_backward", "be a bool", describe(inplace_backward), TypeError)
    if inplace_backward and (red == "none" or t.is_floating_point()):
        fail(
            fn,
            "inplace_backward",
            "be False with reduction='none' or probability targets",
            f"True with reduction={red!r} and target dtype {t.dtype}",
        )
    num_classes = x.shape[1] if x.dim() >= 2 else x.shape[0]
    w = check_class_weight(fn, "weight", weight, num_classes)
    if t.is_floating_point():
        if t.shape != x.shape:
            fail(
                fn,
                "target",
                f"have the input's shape {tuple(x.shape)} (probabilities)",
                f"shape {tuple(t.shape)}",
            )
        out: Tensor = _CrossEntropyProb.apply(x, t, w, red, eps)  # type: ignore[no-untyped-call]
        return out
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
    _check_indices(t, num_classes, ignore, fn)
    fused = red != "none" and _needs_grad(x)
    if inplace_backward and fused:
        loss: Tensor
        loss, _ = _CrossEntropyInplace.apply(x, t, w, ignore, red, eps)  # type: ignore[no-untyped-call]
        return loss
    out = _CrossEntropyIndex.apply(x, t, w, ignore, red, eps, fused)  # type: ignore[no-untyped-call]
    return out


# --------------------------------------------------------------------------- linear


class _LinearCrossEntropy(torch.autograd.Function):
    """``cross_entropy(hidden @ weight.T + bias, target)`` in row chunks.

    ``"mean"``/``"sum"`` with a gradient needed: each chunk of logits is computed once, turned
    into its gradient in place and folded into ``d hidden``, ``d weight``, ``d bias`` during the
    forward (three matmuls in all); backward rescales them. ``"none"``: forward saves per-row
    statistics and backward recomputes each chunk with the upstream gradient (four matmuls).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: Any,
        hidden: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        target: Tensor,
        class_weight: Tensor | None,
        ignore_index: int,
        reduction: str,
        eps: float,
        chunk: int | None,
        needs: tuple[bool, bool, bool],
    ) -> Tensor:
        fused = reduction != "none" and any(needs)
        cdt = K.compute_dtype(hidden.dtype)
        num_classes = weight.shape[0]
        w = None if class_weight is None else class_weight.to(cdt)
        valid, tw, scale, total = _index_setup(target, w, ignore_index, reduction, num_classes, cdt)
        common = dict(bias=bias, class_weight=w, chunk_rows=chunk)
        if fused:
            stats, grads = K.linear_fused(
                hidden,
                weight,
                target,
                scale,
                tw,
                label_smoothing=eps,
                weight_total=total,
                need_hidden=needs[0],
                need_weight=needs[1],
                need_bias=needs[2],
                **common,  # type: ignore[arg-type]
            )
            # Kept in compute dtype: backward rescales, then rounds once to the input dtype.
            ctx.save_for_backward(grads.hidden, grads.weight, grads.bias)
            ctx.dtypes = (hidden.dtype, weight.dtype, None if bias is None else bias.dtype)
        else:
            stats = K.linear_row_stats(
                hidden,
                weight,
                target,
                with_sum=bool(eps),
                **common,  # type: ignore[arg-type]
            )
        lse = K.row_lse(stats)
        loss = _index_losses(stats, lse, valid, tw, eps, num_classes, total)
        if not fused:
            ctx.save_for_backward(
                hidden,
                weight,
                bias,
                target,
                lse,
                stats.max,
                stats.sumexp,
                stats.target_logit,
                scale,
                tw,
                w,
            )
            ctx.total, ctx.has_target = total, stats.has_target
        ctx.fused, ctx.eps, ctx.chunk = fused, eps, chunk
        return _reduce(loss, reduction, tw.sum(), hidden.dtype)

    @staticmethod
    @once_differentiable  # type: ignore[untyped-decorator]
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        none = (None,) * 7
        if ctx.fused:
            out = []
            for g, dtype in zip(ctx.saved_tensors, ctx.dtypes, strict=True):
                if g is not None and not _is_one(grad_out):
                    g.mul_(grad_out.to(g.dtype))  # version bump: see _CrossEntropyIndex
                out.append(None if g is None else g.to(dtype))
            return (*out, *none)
        hidden, weight, bias, target, lse, m, se, xt, scale, tw, w = ctx.saved_tensors
        stats = K.RowStats(m, se, xt, ctx.has_target)
        coef = K.index_target_coefficients(
            stats,
            scale * grad_out.to(scale.dtype),
            tw,
            label_smoothing=ctx.eps,
            num_classes=weight.shape[0],
            weight_total=ctx.total,
        )
        need = ctx.needs_input_grad
        g = K.linear_grad(
            hidden,
            weight,
            target,
            lse,
            coef,
            bias=bias,
            class_weight=w,
            chunk_rows=ctx.chunk,
            need_hidden=need[0],
            need_weight=need[1],
            need_bias=bias is not None and need[2],
        )
        return (
            None if g.hidden is None else g.hidden.to(hidden.dtype),
            None if g.weight is None else g.weight.to(weight.dtype),
            None if g.bias is None or bias is None else g.bias.to(bias.dtype),
            *none,
        )


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
    chunk_size: int | None = None,
) -> Tensor:
    r"""``F.cross_entropy(hidden @ weight.T + bias, target, ...)`` without the full logits.

    Parameters
    ----------
    hidden : Tensor, shape ``(*, D)``
        Last hidden states, floating dtype.
    weight : Tensor, shape ``(C, D)``
        Output projection (same dtype as ``hidden``).
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    bias : Tensor, shape ``(C,)``, optional
        Output bias.
    ignore_index, reduction, label_smoothing
        As in :func:`cross_entropy`.
    class_weight : Tensor, shape ``(C,)``, optional
        Per-class rescaling weight (``F.cross_entropy``'s ``weight``).
    chunk_size : int, optional
        Rows of logits alive at a time. Default: about 32 MiB of logits.

    Returns
    -------
    Tensor
        0-d, or shape ``(*)`` for ``"none"``; dtype of ``hidden``.

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
    softmax statistics in float32. Peak memory: the gradients plus one chunk of logits.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import linear_cross_entropy
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    >>> linear_cross_entropy(h, W, torch.tensor([0, 1, 2]), chunk_size=2)
    tensor(1.0094, grad_fn=<_LinearCrossEntropyBackward>)
    """
    fn = "linear_cross_entropy"
    h = check_tensor(fn, "hidden", hidden, floating=True)
    if h.dim() == 0:
        fail(fn, "hidden", "have at least 1 dimension (features)", "shape ()")
    wt, b = check_projection(fn, h, weight, bias)
    num_classes = wt.shape[0]
    t = check_tensor(fn, "target", target, floating=False)
    if tuple(t.shape) != tuple(h.shape[:-1]):
        fail(
            fn,
            "target",
            f"have shape {tuple(h.shape[:-1])} (hidden's without features)",
            f"shape {tuple(t.shape)}",
        )
    red, eps, ignore = check_options(fn, reduction, label_smoothing, ignore_index)
    cw = check_class_weight(fn, "class_weight", class_weight, num_classes)
    check_chunk_size(fn, chunk_size)
    _check_indices(t, num_classes, ignore, fn)
    lead = tuple(h.shape[:-1])
    h2 = h.reshape(-1, h.shape[-1])
    t1 = t.reshape(-1)
    grad_on = torch.is_grad_enabled()
    needs = (
        grad_on and h.requires_grad,
        grad_on and wt.requires_grad,
        grad_on and b is not None and b.requires_grad,
    )
    out: Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
        h2, wt, b, t1, cw, ignore, red, eps, chunk_size, needs
    )
    return out.reshape(lead) if red == "none" else out
