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

Two kinds of ops, as the pipeline has two ways through (:mod:`.functional`):

- the fused sweeps (:func:`index_forward`, :func:`linear_forward`): loss and gradient in one
  pass, when the whole vocabulary is local and the row scales are known (``"mean"``/``"sum"``
  with a gradient to take);
- the passes (:func:`index_stats` / :func:`linear_stats`, then :func:`index_grad` /
  :func:`linear_grad`): the rows' statistics, which the autograd glue combines across ranks
  (nothing to do in one process) and turns into losses and per-row gradient coefficients, and
  the gradient from those coefficients. They take ``shard_offset``, the global index of their
  first class, so the vocabulary-parallel functions run them on a shard.

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
    "index_forward",
    "index_grad",
    "index_stats",
    "linear_forward",
    "linear_grad",
    "linear_stats",
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
    impl: str,
    sample_weight: Tensor | None,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused sweep (``"mean"``/``"sum"``, the whole vocabulary local): the loss (0-d,
    compute dtype), the gradient ``∂ loss / ∂ logits · pre`` in the logits' dtype and ``pre``
    (0-d; a power of two for float16, else 1), in one pass over the logits.

    ``sample_weight`` (rows' shape, any floating dtype), ``z_loss`` and ``softcap`` as in
    :func:`crossentropy.torch.cross_entropy`.
    """
    return _index_forward(
        logits,
        target,
        weight,
        ignore_index,
        reduction,
        label_smoothing,
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
) -> tuple[Tensor, Tensor]:
    """:func:`index_forward` writing the gradient into ``logits`` itself (eager only, so it
    takes the :class:`._types.Options` whole): returns ``(loss, pre)``."""
    loss, _, pre = _index_forward(
        logits,
        target,
        weight,
        opts.ignore_index,
        opts.reduction,
        opts.label_smoothing,
        logits,
        sample_weight,
        opts.z_loss,
        opts.softcap,
        opts.impl,
    )
    return loss, pre


def _index_forward(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    eps: float,
    out: Tensor | None,
    sample_weight: Tensor | None,
    z: float,
    cap: float | None,
    impl: str,
) -> tuple[Tensor, Tensor, Tensor]:
    num_classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    check_targets(target, num_classes, ignore_index, "cross_entropy")
    cdt = K.compute_dtype(logits.dtype)
    w, total, valid, tw, scale = _rows.row_weights(
        target, weight, ignore_index, reduction, num_classes, cdt
    )
    # A copy when the sweep writes into ``logits``: sample weights read from the logits' own
    # buffer (a view of it) must not become the gradient before the loss is summed.
    sw = None
    if sample_weight is not None:
        sw = sample_weight.to(cdt, copy=out is not None)
    rs = _rows.sample_scale(scale, valid, sw)
    zb = _rows.zlse_bound(logits, z, cap, num_classes)
    pre = _rows.prescale(logits.dtype, rs, tw, w, eps, num_classes, total, _rows.FP16_TARGET, zb)
    grad = torch.empty_like(logits) if out is None else out
    stats, _ = K.logits_fused(
        classes_last(logits),
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
    lse = K.row_lse(stats)
    loss = _rows.index_losses(stats, lse, valid, tw, eps, num_classes, total, z, sw)
    return _rows.reduce(loss, reduction, tw.sum()), grad, pre


@index_forward.register_fake
def _(  # type: ignore[no-untyped-def]
    logits, target, weight, ignore_index, reduction, label_smoothing, impl, sample_weight, z, cap
):
    cdt = K.compute_dtype(logits.dtype)
    return (
        logits.new_empty((), dtype=cdt),
        torch.empty_like(logits),
        logits.new_empty((), dtype=cdt),
    )


def _stats_tuple(stats: K.RowStats) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """A :class:`._types.RowStats` as an op's outputs (``sum_logits`` empty when absent)."""
    s = stats.sum_logits
    return (
        stats.max,
        stats.sumexp,
        stats.target_logit,
        stats.has_target,
        stats.max.new_empty((0,)) if s is None else s,
    )


def _no_classes(x: Tensor, rows: tuple[int, ...], with_sum: bool) -> tuple[Tensor, ...]:
    """The statistics of a shard of no class (an uneven split): it adds nothing."""
    cdt = K.compute_dtype(x.dtype)
    zeros = x.new_zeros(rows, dtype=cdt)
    return (
        x.new_full(rows, float("-inf"), dtype=cdt),
        zeros,
        torch.zeros_like(zeros),
        x.new_zeros(rows, dtype=torch.bool),
        x.new_zeros(rows if with_sum else (0,), dtype=cdt),
    )


def _fake_stats(x: Tensor, rows: tuple[int, ...], with_sum: bool) -> tuple[Tensor, ...]:
    cdt = K.compute_dtype(x.dtype)
    f = x.new_empty(rows, dtype=cdt)
    return (
        f,
        torch.empty_like(f),
        torch.empty_like(f),
        x.new_empty(rows, dtype=torch.bool),
        x.new_empty(rows if with_sum else (0,), dtype=cdt),
    )


@torch.library.custom_op(f"crossentropy::index_stats_v{OP_VERSION}", mutates_args=())
def index_stats(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    with_sum: bool,
    impl: str,
    softcap: float | None,
    shard_offset: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The statistics pass: the rows' :class:`._types.RowStats` fields, compute dtype
    (``sum_logits`` empty without ``with_sum``).

    ``weight``: the classes' weights (compute dtype), or ``None``. ``shard_offset``: ``None``
    for the whole vocabulary (the targets are checked against it), or the global index of the
    first class of a vocabulary shard (the caller checked the targets against the whole
    vocabulary)."""
    num_classes = logits.shape[1] if logits.dim() >= 2 else logits.shape[0]
    if shard_offset is None:
        check_targets(target, num_classes, ignore_index, "cross_entropy")
    elif num_classes == 0:
        return _no_classes(logits, _rows_shape(logits), with_sum)  # type: ignore[return-value]
    stats = K.logits_row_stats(
        classes_last(logits),
        target,
        class_offset=shard_offset or 0,
        class_weight=weight,
        with_sum=with_sum,
        softcap=softcap,
        impl=impl,
    )
    return _stats_tuple(stats)


@index_stats.register_fake
def _(logits, target, weight, ignore_index, with_sum, impl, softcap, shard_offset):  # type: ignore[no-untyped-def]
    return _fake_stats(logits, _rows_shape(logits), with_sum)


@torch.library.custom_op(f"crossentropy::index_grad_v{OP_VERSION}", mutates_args=())
def index_grad(
    logits: Tensor,
    target: Tensor,
    weight: Tensor | None,
    ref: Tensor,
    lse_rel: Tensor,
    p_scale: Tensor,
    smooth_scale: Tensor | None,
    target_grad: Tensor,
    impl: str,
    softcap: float | None,
    shard_offset: int,
) -> Tensor:
    """The gradient pass: ``∂/∂ logits`` for the per-row coefficients
    (:class:`._types.GradCoefficients`) and ``p = e^{x − ref} e^{−lse_rel}``, in the logits'
    dtype; ``logits`` holds classes ``shard_offset …`` of the vocabulary."""
    if logits.numel() == 0:
        return torch.zeros_like(logits)
    grad = torch.empty_like(logits)
    K.logits_grad(
        classes_last(logits),
        target,
        lse_rel,
        K.GradCoefficients(p_scale, smooth_scale, target_grad),
        class_offset=shard_offset,
        class_weight=weight,
        out=classes_last(grad),
        ref=ref,
        softcap=softcap,
        impl=impl,
    )
    return grad


@index_grad.register_fake
def _(  # type: ignore[no-untyped-def]
    logits, target, weight, ref, lse_rel, p, smooth, tgrad, impl, softcap, shard_offset
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
    pre: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """The gradients as the ops return them: empty where not needed; float16's divided by
    ``pre``."""
    empty = _empty_like_grads(hidden, weight, bias, (False, False, False))
    out = []
    for k, (got, e) in enumerate(zip((g.hidden, g.weight, g.bias), empty, strict=True)):
        if got is None or not need[k]:
            out.append(e)
        else:
            out.append(got if pre is None or hidden.dtype != torch.float16 else got.div_(pre))
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
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """The fused sweep of ``hidden @ weight.T + bias`` (rows of ``hidden`` (R, D);
    ``"mean"``/``"sum"``, the whole vocabulary local): the loss (0-d, compute dtype) and the
    three gradients in compute dtype (empty where not needed), each chunk of logits computed
    once (three matmuls). ``chunk_size`` 0 means the default. ``sample_weight``, ``z_loss``
    and ``softcap`` as in :func:`index_forward`."""
    eps = label_smoothing
    num_classes = weight.shape[0]
    check_targets(target, num_classes, ignore_index, "linear_cross_entropy")
    cdt = K.compute_dtype(hidden.dtype)
    w, total, valid, tw, scale = _rows.row_weights(
        target, class_weight, ignore_index, reduction, num_classes, cdt
    )
    sw = None if sample_weight is None else sample_weight.to(cdt)
    need = (need_hidden, need_weight, need_bias and bias is not None)
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
        chunk_rows=chunk_size or None,
        need_hidden=need[0],
        need_weight=need[1],
        need_bias=need[2],
        z_loss=z_loss,
        softcap=softcap,
        impl=impl,
    )
    lse = K.row_lse(stats)
    loss = _rows.index_losses(stats, lse, valid, tw, eps, num_classes, total, z_loss, sw)
    return (
        _rows.reduce(loss, reduction, tw.sum()),
        *_grads_out(g, hidden, weight, bias, need, pre),
    )


@linear_forward.register_fake
def _(  # type: ignore[no-untyped-def]
    hidden,
    weight,
    bias,
    target,
    class_weight,
    ignore_index,
    reduction,
    label_smoothing,
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
    return (
        hidden.new_empty((), dtype=cdt),
        *_empty_like_grads(hidden, weight, bias, (need_hidden, need_weight, need_bias)),
    )


@torch.library.custom_op(f"crossentropy::linear_stats_v{OP_VERSION}", mutates_args=())
def linear_stats(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    with_sum: bool,
    chunk_size: int,
    impl: str,
    softcap: float | None,
    shard_offset: int | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`index_stats` of ``hidden @ weight.T + bias`` (rows of ``hidden`` (R, D)), chunk
    by chunk of rows (``chunk_size`` 0: ``Tuning.linear_stats_chunk_bytes`` of logits)."""
    if shard_offset is None:
        check_targets(target, weight.shape[0], ignore_index, "linear_cross_entropy")
    elif weight.shape[0] == 0:
        return _no_classes(hidden, (hidden.shape[0],), with_sum)  # type: ignore[return-value]
    stats = K.linear_row_stats(
        hidden,
        weight,
        target,
        bias=bias,
        class_offset=shard_offset or 0,
        class_weight=class_weight,
        with_sum=with_sum,
        chunk_rows=chunk_size or None,
        softcap=softcap,
        impl=impl,
    )
    return _stats_tuple(stats)


@linear_stats.register_fake
def _(  # type: ignore[no-untyped-def]
    hidden, weight, bias, target, cw, ignore_index, with_sum, chunk, impl, softcap, offset
):
    return _fake_stats(hidden, (hidden.shape[0],), with_sum)


@torch.library.custom_op(f"crossentropy::linear_grad_v{OP_VERSION}", mutates_args=())
def linear_grad(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    target: Tensor,
    class_weight: Tensor | None,
    ref: Tensor,
    lse_rel: Tensor,
    p_scale: Tensor,
    smooth_scale: Tensor | None,
    target_grad: Tensor,
    chunk_size: int,
    need_hidden: bool,
    need_weight: bool,
    need_bias: bool,
    impl: str,
    softcap: float | None,
    shard_offset: int,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`index_grad` of ``hidden @ weight.T + bias``, recomputing each chunk of logits
    (four matmuls): the gradients w.r.t. hidden, weight and bias in compute dtype (empty where
    not needed; on a shard, ``d hidden`` is this shard's part)."""
    need = (need_hidden, need_weight, need_bias and bias is not None)
    if weight.shape[0] == 0:  # a shard of no class: nothing to give
        cdt = K.compute_dtype(hidden.dtype)
        shapes = (hidden.shape, weight.shape, weight.shape[:1])
        zeros = (hidden.new_zeros(shape, dtype=cdt) for shape in shapes)
        return _grads_out(K.LinearGrads(*zeros), hidden, weight, bias, need)
    g = K.linear_grad(
        hidden,
        weight,
        target,
        lse_rel,
        K.GradCoefficients(p_scale, smooth_scale, target_grad),
        bias=bias,
        class_offset=shard_offset,
        class_weight=class_weight,
        chunk_rows=chunk_size or None,
        need_hidden=need[0],
        need_weight=need[1],
        need_bias=need[2],
        ref=ref,
        softcap=softcap,
        impl=impl,
    )
    return _grads_out(g, hidden, weight, bias, need)


@linear_grad.register_fake
def _(  # type: ignore[no-untyped-def]
    hidden,
    weight,
    bias,
    target,
    class_weight,
    ref,
    lse_rel,
    p_scale,
    smooth_scale,
    target_grad,
    chunk_size,
    need_hidden,
    need_weight,
    need_bias,
    impl,
    softcap,
    shard_offset,
):
    return _empty_like_grads(hidden, weight, bias, (need_hidden, need_weight, need_bias))
