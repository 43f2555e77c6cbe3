r"""The fused kernels as ``torch.library`` custom ops: one graph node each, with a fake impl.

Why custom ops. The kernels in :mod:`._kernels` loop over row blocks in Python and read a few
values on the host (target range checks, a rare-row branch). Traced by ``torch.compile`` or run
on meta/fake tensors, that code would break the graph at every block or fail outright. Wrapped
as ``torch.library.custom_op`` with a ``register_fake`` shape function, each kernel is a single
opaque node: ``torch.compile(fullgraph=True)``, ``torch.export``, meta tensors and FakeTensor
tracing see its output shapes and dtypes and never enter the loops; eager mode runs the same
Python implementation it always did.

Why the autograd formulas live in ``functional`` and not in ``register_autograd``. The first
backward of ``"mean"``/``"sum"`` hands out a gradient that the forward already computed, with
no copy; a second backward through a retained graph must not hand out the same buffer again,
and a backward with ``create_graph=True`` must be differentiable. Those are decisions about
*who already consumed what*, which an ``autograd.Function`` (state on ``ctx``) can make and a
``register_autograd`` formula cannot. ``torch.func`` transforms go to the composite
reference instead (see :mod:`.functional`), so the ops need no batching rule.

Every op takes class-index targets and options as plain arguments, checks the target range on
the host on CPU (free there; a device-side ``torch._assert_async`` elsewhere, so no host sync),
and returns compute-dtype statistics: float32 for float16/bfloat16/float32, float64 for float64.

For float16 the fused gradient is stored multiplied by a power of two ``pre`` (returned as a
0-d tensor) chosen from the row scales so that its largest possible entry is about ``2**14``:
``(p − y) / N`` of a large batch would otherwise flush to zero in float16 before a loss scaler
ever multiplies it. Backward multiplies by ``upstream / pre``, exact when the upstream (a
``GradScaler`` scale) is a power of two.
"""

import torch
from torch import Tensor

from .._validation import fail
from . import _kernels as K
from . import _rows
from ._types import OP_VERSION, Options

__all__ = [
    "classes_last",
    "index_backward",
    "index_forward",
    "linear_backward",
    "linear_forward",
    "prob_backward",
    "prob_forward",
]


def check_targets(target: Tensor, num_classes: int, ignore_index: int, fn: str) -> None:
    """Class indices in ``[0, num_classes)`` or ``ignore_index``.

    On CPU the check reads two numbers on the host (no device to wait for) and raises a
    ``ValueError`` in the house format. On other devices it is a device-side assertion
    (``torch._assert_async``), as ``F.cross_entropy``'s own kernels do: no host sync.
    """
    if target.numel() == 0:
        return
    valid = target != ignore_index
    if target.device.type != "cpu":
        ok = ~valid | ((target >= 0) & (target < num_classes))
        torch._assert_async(ok.all(), f"{fn}: target must contain class indices in range")
        return
    if not bool(valid.any()):
        return
    kept = target[valid]
    lo, hi = int(kept.min()), int(kept.max())
    if lo < 0 or hi >= num_classes:
        fail(
            fn,
            "target",
            f"contain class indices in [0, {num_classes}) or ignore_index={ignore_index}",
            f"values in [{lo}, {hi}]",
        )


def _rows_shape(logits: Tensor) -> tuple[int, ...]:
    return tuple(logits.shape[:1]) + tuple(logits.shape[2:]) if logits.dim() >= 2 else ()


def classes_last(x: Tensor) -> Tensor:
    """The classes on the last dimension (a view): ``(N, C, d…)`` → ``(N, d…, C)``."""
    return x.movedim(1, -1) if x.dim() >= 3 else x


# --------------------------------------------------------------------------- index targets


@torch.library.custom_op(f"crossentropy::index_forward_v{OP_VERSION}", mutates_args=())
def index_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    with_grad: bool,
    impl: str,
    sample_weight: Tensor | None,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Loss, per-row normaliser ``norm`` and ``q = Σ_{c≠y} p_c``, and (``with_grad``,
    ``"mean"``/``"sum"``) the gradient ``∂ loss / ∂ logits · pre`` in the logits' dtype and
    ``pre`` (0-d).

    ``loss`` is 0-d or of the rows' shape, in compute dtype. ``norm`` stacks the row's reference
    point ``m`` and ``lse − m`` (shape ``(2, *rows)``): a later gradient pass computes
    ``p = exp(x − m) e^{−(lse − m)}``, accurate for large logits, where ``exp(x − lse)`` with a
    rounded ``lse`` would not be. Without ``with_grad`` the gradient output is an empty tensor
    and ``pre`` is 1. (After a fused sweep, backward never needs ``norm``: a second backward
    runs the sweep again.)

    ``sample_weight`` (rows' shape, any floating dtype), ``z_loss`` and ``softcap`` as in
    :func:`crossentropy.torch.cross_entropy`; ``norm`` and ``q`` are then those of the
    softcapped logits.
    """
    return _index_forward(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
        with_grad,
        None,
        sample_weight,
        z_loss,
        softcap,
        impl,
    )


def index_forward_inplace(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    sample_weight: Tensor | None,
    opts: Options,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`index_forward` writing the gradient into ``logits`` itself (eager only, so it
    takes the :class:`._types.Options` whole): returns ``(loss, lse, q, pre)``."""
    loss, lse, q, _, pre = _index_forward(
        logits,
        target,
        weight,
        opts.ignore_index,
        opts.reduction,
        opts.label_smoothing,
        True,
        logits,
        sample_weight,
        opts.z_loss,
        opts.softcap,
        opts.impl,
    )
    return loss, lse, q, pre


def _index_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    eps: float,
    with_grad: bool,
    out: Tensor | None,
    sample_weight: Tensor | None,
    z: float,
    cap: float | None,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    num_classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    check_targets(target, num_classes, ignore_index, "cross_entropy")
    cdt = K.compute_dtype(logits.dtype)
    x = classes_last(logits)
    w, total, valid, tw, scale = _rows.row_weights(
        target, weight, ignore_index, reduction, num_classes, cdt
    )
    # A copy when the sweep writes into ``logits``: sample weights read from the logits' own
    # buffer (a view of it) must not become the gradient before the loss is summed.
    sw = None
    if sample_weight is not None:
        sw = sample_weight.to(cdt, copy=out is not None)
    fused = with_grad and reduction != "none"
    pre = torch.ones((), dtype=cdt, device=logits.device)
    if fused:
        rs = _rows.sample_scale(scale, valid, sw)
        zb = _rows.zlse_bound(logits, z, cap, num_classes)
        pre = _rows.prescale(
            logits.dtype, rs, tw, w, eps, num_classes, total, _rows.FP16_TARGET, zb
        )
        grad = torch.empty_like(logits) if out is None else out
        stats, _ = K.logits_fused(
            x,
            target,
            rs * pre,
            tw,
            label_smoothing=eps,
            weight_total=total,
            class_weight=w,
            out=classes_last(grad),
            z_loss=z,
            softcap=cap,
            impl=impl,
        )
    else:
        grad = logits.new_empty((0,))
        stats = K.logits_row_stats(
            x, target, class_weight=w, with_sum=bool(eps), softcap=cap, impl=impl
        )
    lse = K.row_lse(stats)
    loss = _rows.index_losses(stats, lse, valid, tw, eps, num_classes, total, z, sw)
    norm = torch.stack([stats.max, K.row_lse_rel(stats)])
    return _rows.reduce(loss, reduction, tw.sum()), norm, K.other_prob(stats), grad, pre


@index_forward.register_fake
def _(  # type: ignore[no-untyped-def]
    logits,
    target,
    weight,
    ignore_index,
    reduction,
    label_smoothing,
    with_grad,
    impl,
    sample_weight,
    z_loss,
    softcap,
):
    cdt = K.compute_dtype(logits.dtype)
    rows = _rows_shape(logits)
    loss = logits.new_empty(rows if reduction == "none" else (), dtype=cdt)
    fused = with_grad and reduction != "none"
    grad = torch.empty_like(logits) if fused else logits.new_empty((0,))
    return (
        loss,
        logits.new_empty((2, *rows), dtype=cdt),
        logits.new_empty(rows, dtype=cdt),
        grad,
        logits.new_empty((), dtype=cdt),
    )


@torch.library.custom_op(f"crossentropy::index_backward_v{OP_VERSION}", mutates_args=())
def index_backward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    norm: Tensor,
    q: Tensor,
    row_grad: Tensor,
    ignore_index: int,
    label_smoothing: float,
    impl: str,
    z_loss: float,
    softcap: float | None,
) -> Tensor:
    """``∂/∂ logits`` of ``Σ_i row_grad_i ℓ_i`` (one pass, from the saved ``norm`` and ``q``;
    ``row_grad`` includes any sample weights)."""
    num_classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    cdt = K.compute_dtype(logits.dtype)
    rw = _rows.row_weights(target, weight, ignore_index, "sum", num_classes, cdt)
    coef, pre = _rows.backward_coefficients(
        logits.dtype,
        rw,
        q,
        row_grad,
        label_smoothing,
        num_classes,
        _rows.FP16_TARGET,
        z_loss,
        norm[0] + norm[1],
    )
    grad = torch.empty_like(logits)
    K.logits_grad(
        classes_last(logits),
        target,
        norm[1],
        coef,
        class_weight=rw.w,
        out=classes_last(grad),
        ref=norm[0],
        softcap=softcap,
        impl=impl,
    )
    if logits.dtype == torch.float16:
        grad = (grad.to(cdt) / pre).to(logits.dtype)
    return grad


@index_backward.register_fake
def _(  # type: ignore[no-untyped-def]
    logits, target, weight, norm, q, row_grad, ignore_index, label_smoothing, impl, z_loss, softcap
):
    return torch.empty_like(logits)


# --------------------------------------------------------------------------- probability targets


@torch.library.custom_op(f"crossentropy::prob_forward_v{OP_VERSION}", mutates_args=())
def prob_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    label_smoothing: float,
    impl: str,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per-row ``(loss, norm, A = Σ_c w_c y'_c)`` for probability targets, compute dtype
    (``norm`` as in :func:`index_forward`; the loss includes ``z lse²``, unweighted by any
    sample weight)."""
    cdt = K.compute_dtype(logits.dtype)
    w = None if weight is None else weight.to(cdt)
    ref, rel, loss, amass = K.prob_row_stats(
        classes_last(logits),
        classes_last(target),
        class_weight=w,
        label_smoothing=label_smoothing,
        softcap=softcap,
        impl=impl,
    )
    if z_loss:
        lse = ref + rel
        loss = loss + z_loss * lse * lse
    return loss, torch.stack([ref, rel]), amass


@prob_forward.register_fake
def _(logits, target, weight, label_smoothing, impl, z_loss, softcap):  # type: ignore[no-untyped-def]
    rows = _rows_shape(logits)
    cdt = K.compute_dtype(logits.dtype)
    return (
        logits.new_empty(rows, dtype=cdt),
        logits.new_empty((2, *rows), dtype=cdt),
        logits.new_empty(rows, dtype=cdt),
    )


@torch.library.custom_op(f"crossentropy::prob_backward_v{OP_VERSION}", mutates_args=())
def prob_backward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    norm: Tensor,
    amass: Tensor,
    row_grad: Tensor,
    label_smoothing: float,
    impl: str,
    z_loss: float,
    softcap: float | None,
) -> Tensor:
    """``∂/∂ logits`` of ``Σ_i row_grad_i ℓ_i`` for probability targets (the z-loss adds
    ``2 z lse`` to the coefficient ``A`` of ``p``)."""
    cdt = K.compute_dtype(logits.dtype)
    w = None if weight is None else weight.to(cdt)
    grad = torch.empty_like(logits)
    if z_loss:
        amass = amass + 2.0 * z_loss * (norm[0] + norm[1])
    K.prob_grad(
        classes_last(logits),
        classes_last(target),
        norm[1],
        row_grad.to(cdt),
        amass,
        class_weight=w,
        label_smoothing=label_smoothing,
        out=classes_last(grad),
        ref=norm[0],
        softcap=softcap,
        impl=impl,
    )
    return grad


@prob_backward.register_fake
def _(  # type: ignore[no-untyped-def]
    logits, target, weight, norm, amass, row_grad, label_smoothing, impl, z_loss, softcap
):
    return torch.empty_like(logits)


# --------------------------------------------------------------------------- linear


def _empty_like_grads(
    hidden: Tensor, weight: Tensor, bias: Tensor | None, need: tuple[bool, bool, bool]
) -> tuple[Tensor, Tensor, Tensor]:
    cdt = K.compute_dtype(hidden.dtype)
    return (
        hidden.new_empty(hidden.shape if need[0] else (0,), dtype=cdt),
        weight.new_empty(weight.shape if need[1] else (0,), dtype=cdt),
        weight.new_empty((weight.shape[0],) if need[2] and bias is not None else (0,), dtype=cdt),
    )


def _grads_out(
    g: K.LinearGrads,
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    need: tuple[bool, bool, bool],
    pre: Tensor,
) -> tuple[Tensor, Tensor, Tensor]:
    empty = _empty_like_grads(hidden, weight, bias, (False, False, False))
    out = []
    for k, (got, e) in enumerate(zip((g.hidden, g.weight, g.bias), empty, strict=True)):
        if got is None or not need[k]:
            out.append(e)
        else:
            out.append(got if hidden.dtype != torch.float16 else got.div_(pre))
    return out[0], out[1], out[2]


@torch.library.custom_op(f"crossentropy::linear_forward_v{OP_VERSION}", mutates_args=())
def linear_forward(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    chunk_size: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    impl: str,
    sample_weight: Tensor | None,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Loss of ``hidden @ weight.T + bias`` (rows of ``hidden`` (R, D)), per-row ``norm`` and
    ``q``, and for ``"mean"``/``"sum"`` with any ``need_*`` the three gradients in compute
    dtype (empty where not needed). ``chunk_size`` 0 means the default. ``sample_weight``,
    ``z_loss`` and ``softcap`` as in :func:`index_forward`."""
    eps = label_smoothing
    num_classes = weight.shape[0]
    check_targets(target, num_classes, ignore_index, "linear_cross_entropy")
    cdt = K.compute_dtype(hidden.dtype)
    w, total, valid, tw, scale = _rows.row_weights(
        target, class_weight, ignore_index, reduction, num_classes, cdt
    )
    sw = None if sample_weight is None else sample_weight.to(cdt)
    need = (need_hidden, need_weight, need_bias and bias is not None)
    chunk = chunk_size or None
    if reduction != "none" and any(need):
        rs = _rows.sample_scale(scale, valid, sw)
        zb = _rows.linear_zlse_bound(hidden, weight, bias, z_loss, softcap)
        pre = _rows.prescale(hidden.dtype, rs, tw, w, eps, num_classes, total, 1.0, zb)
        stats, g = K.linear_fused(
            hidden,
            weight,
            target,
            rs * pre,
            tw,
            bias=bias,
            label_smoothing=eps,
            weight_total=total,
            class_weight=w,
            chunk_rows=chunk,
            need_hidden=need[0],
            need_weight=need[1],
            need_bias=need[2],
            z_loss=z_loss,
            softcap=softcap,
            impl=impl,
        )
        grads = _grads_out(g, hidden, weight, bias, need, pre)
    else:
        stats = K.linear_row_stats(
            hidden,
            weight,
            target,
            bias=bias,
            class_weight=w,
            with_sum=bool(eps),
            chunk_rows=chunk,
            softcap=softcap,
            impl=impl,
        )
        grads = _empty_like_grads(hidden, weight, bias, (False, False, False))
    lse = K.row_lse(stats)
    loss = _rows.index_losses(stats, lse, valid, tw, eps, num_classes, total, z_loss, sw)
    norm = torch.stack([stats.max, K.row_lse_rel(stats)])
    return (_rows.reduce(loss, reduction, tw.sum()), norm, K.other_prob(stats), *grads)


@linear_forward.register_fake
def _(  # type: ignore[no-untyped-def]
    hidden,
    weight,
    bias,
    target,
    class_weight,
    ignore_index,
    reduction,
    label_smoothing,  # type: ignore[no-untyped-def]
    chunk_size,
    need_hidden,
    need_weight,
    need_bias,
    impl,
    sample_weight,
    z_loss,
    softcap,
):
    cdt = K.compute_dtype(hidden.dtype)
    rows = (hidden.shape[0],)
    fused = reduction != "none" and (need_hidden or need_weight or (need_bias and bias is not None))
    need = (need_hidden, need_weight, need_bias) if fused else (False, False, False)
    return (
        hidden.new_empty(rows if reduction == "none" else (), dtype=cdt),
        hidden.new_empty((2, *rows), dtype=cdt),
        hidden.new_empty(rows, dtype=cdt),
        *_empty_like_grads(hidden, weight, bias, need),
    )


@torch.library.custom_op(f"crossentropy::linear_backward_v{OP_VERSION}", mutates_args=())
def linear_backward(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_weight: Tensor | None,
    norm: Tensor,
    q: Tensor,
    row_grad: Tensor,
    ignore_index: int,
    label_smoothing: float,
    chunk_size: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    impl: str,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients of ``Σ_i row_grad_i ℓ_i`` w.r.t. hidden, weight and bias (compute dtype),
    recomputing each chunk of logits (four matmuls); ``row_grad`` includes any sample
    weights."""
    eps = label_smoothing
    num_classes = weight.shape[0]
    cdt = K.compute_dtype(hidden.dtype)
    rw = _rows.row_weights(target, class_weight, ignore_index, "sum", num_classes, cdt)
    coef, pre = _rows.backward_coefficients(
        hidden.dtype, rw, q, row_grad, eps, num_classes, 1.0, z_loss, norm[0] + norm[1]
    )
    need = (need_hidden, need_weight, need_bias and bias is not None)
    g = K.linear_grad(
        hidden,
        weight,
        target,
        norm[1],
        coef,
        bias=bias,
        class_weight=rw.w,
        chunk_rows=chunk_size or None,
        need_hidden=need[0],
        need_weight=need[1],
        need_bias=need[2],
        ref=norm[0],
        softcap=softcap,
        impl=impl,
    )
    return _grads_out(g, hidden, weight, bias, need, pre)


@linear_backward.register_fake
def _(  # type: ignore[no-untyped-def]
    hidden,
    weight,
    bias,
    target,
    class_weight,
    norm,
    q,
    row_grad,
    ignore_index,
    label_smoothing,
    chunk_size,
    need_hidden,
    need_weight,
    need_bias,
    impl,
    z_loss,
    softcap,
):
    return _empty_like_grads(hidden, weight, bias, (need_hidden, need_weight, need_bias))
