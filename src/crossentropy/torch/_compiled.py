r"""The CPU passes of the cross-entropy as C++ kernels that inductor generates (OpenMP).

The torch-op kernels of :mod:`._kernels` run the fused pass as about 44 aten ops and 5 OpenMP
parallel regions per 8 MiB row block: 663 regions at (8192, 32768). On a machine whose cores
are shared, a preempted worker thread stalls every region's end while the other threads spin,
so each region costs several times its work. Here each pass is written once in torch ops, over
the whole tensor, and compiled by ``torch.compile`` on first use into *one* parallel region
over rows:

- the statistics pass (:func:`logits_row_stats`): per row, the max, the target logit and
  ``Σ_{c≠y} exp(x − m)``, the row kept in cache between its loops (one read of the logits;
  with a softcap inductor first writes the capped logits to a float32 logits-sized buffer,
  its rule for a ``tanh`` that several reductions read on CPU, as in :func:`_token_stats`);
- the gradient pass (:func:`logits_grad`): one more read, the gradient written once, no
  logits-sized temporary in any dtype;
- the fused pass (:func:`logits_fused`): the two, with the per-row coefficients between them
  in plain torch ops on row-sized tensors;
- the two passes of probability targets (:func:`prob_row_stats`, :func:`prob_grad`);
- the per-token statistics' passes (:func:`token_row_stats` over the caller's logits, and
  :func:`token_vjp` over them or over each column-view chunk of the linear form; the linear
  form's forward keeps the torch-op tiles, faster on a column view).

The arithmetic contract of :mod:`._kernels` is kept: the statistics are the exact row max
``m``, ``Σ_{c≠y} exp(x_c − m)`` with the target column excluded and ``x_y`` (see
:class:`._types.RowStats`); the gradient is ``exp(x − m) · e^{−(lse − m)}`` times the
coefficients of :func:`._rows.index_target_coefficients` off the target column and ``τ`` on
it; float16 arrives prescaled by the caller. Only the order of the float32 (float64) sums
differs from the torch-op kernels (inductor sums in vector lanes with a cascade), which moves
results by a few ulps; the result is deterministic for a given thread count.

Where it is not used, and the torch-op kernels run instead:

- ``CROSSENTROPY_CPU_KERNELS=torch`` in the environment, or ``impl="torch"``;
- the first compile failed (no C++ compiler, an inductor error): a ``RuntimeWarning`` says so
  once and the process keeps the torch-op kernels;
- non-contiguous logits or gradient buffers, an empty tensor, one row or one class;
- under a Python dispatch mode (a tensor subclass's or a profiler's ``TorchDispatchMode``),
  where Dynamo does not compile.

Each pass and option set (dtype; class weights; label smoothing; softcap; gradient written
over the logits) is its own compiled function with sizes and option values symbolic, so a new
shape or a new value of ``label_smoothing`` never recompiles, and the variants never share
Dynamo's per-function recompile limit (falling back to eager there would allocate several
logits-sized temporaries). The first call of a variant compiles it: a few seconds, or well
under one when inductor's on-disk cache holds it from an earlier process."""

from __future__ import annotations

import types
import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch._dynamo.exc import FailOnRecompileLimitHit

from ._backend import CPU_KERNELS_ENV, cpu_kernels_choice
from ._rows import (
    exp_floor,
    ignored_rows,
    index_target_coefficients,
    local_index,
    row_lse_rel,
    rowwise,
    softcapped,
)
from ._types import GradCoefficients, RowStats, compute_dtype

__all__ = [
    "disabled_reason",
    "enabled",
    "logits_fused",
    "logits_grad",
    "logits_row_stats",
    "prob_grad",
    "prob_row_stats",
    "token_row_stats",
    "token_vjp",
]

ENV = CPU_KERNELS_ENV

_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

_broken: str | None = None  # the first compile failed: no variant is tried again
_variants: dict[tuple[Any, ...], Callable[..., Any]] = {}
_working: set[tuple[Any, ...]] = set()  # variants that have run
_failed: dict[tuple[Any, ...], str] = {}  # variants that raised: the torch ops run them
_generation: dict[tuple[Any, ...], int] = {}  # fresh copies made after the recompile limit
#: the fused pass computes each exp once where it can (see :func:`logits_fused`); tests turn
#: it off to compare with the two-exp gradient kernel bit for bit
_ONE_EXP = True


def enabled() -> bool:
    """The compiled CPU kernels may run: not switched off by :data:`ENV`, no earlier compile
    failed, and this torch has inductor."""
    return disabled_reason() is None


def disabled_reason() -> str | None:
    """Why the compiled CPU kernels do not run, or ``None`` when they may."""
    if cpu_kernels_choice() == "torch":
        return f"{ENV}=torch"
    return _broken


def _row_stats(
    z: Tensor,
    idx: Tensor,
    cols: Tensor,
    loc: Tensor,
    class_weight: Tensor | None,
    with_sum: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(m, Σ_{c≠y} e^{z−m}, z_y, Σ_c w_c z_c)`` of compute-dtype logits ``z`` (``m`` keeps
    the class dimension); traced into each compiled pass. ``z_y`` is one load per row (0 where
    the target is not in this shard); ``cols`` and ``loc`` as :func:`_target_columns` gives
    them."""
    m = z.amax(dim=-1, keepdim=True)
    sumexp = torch.where(cols == loc, 0.0, torch.exp(z - m)).sum(dim=-1)
    xt = torch.where(loc.squeeze(-1) >= 0, z.gather(-1, idx).squeeze(-1), 0.0)
    s = None
    if with_sum:
        s = z.sum(dim=-1) if class_weight is None else (z * class_weight).sum(dim=-1)
    return m, sumexp, xt, s


#: float32 holds every integer up to 2**24 exactly: the column indices up to this many classes
_FLOAT_COLUMNS = 1 << 24


def _target_columns(idx: Tensor, inside: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """``(cols, loc)``: the column indices ``0 … C−1`` and, per row, the target's column in
    this shard (``idx``) or −1 where it lies elsewhere (``(R, 1)``), in float32 up to
    :data:`_FLOAT_COLUMNS` classes (int64 beyond). The kernels single out the target's column
    as ``cols == loc``: one compare per vector of logits in their own lane width.

    Not ``torch.arange`` and the ``inside`` mask inside the kernel: inductor builds each
    vector of an in-kernel ``arange`` from scalars, in int64 (four vectors per 32 bfloat16
    logits), and that made the statistics pass at (4096, 32768) bfloat16 take 34 ms against
    24 ms without the target exclusion; these arguments take it to 27 ms (2 threads; 1
    thread: 62 → 52 ms). A per-row select of the int64 ``idx`` in the kernel would leave the
    row's tail (``C`` not a multiple of the vector width) to scalar code, whose ``exp``
    differs from the vector one by an ulp."""
    dtype = torch.float32 if num_classes <= _FLOAT_COLUMNS else torch.int64
    loc = torch.where(inside.reshape(-1, 1), idx.reshape(-1, 1), -1).to(dtype)
    return torch.arange(num_classes, dtype=dtype, device=idx.device), loc


def _stats(
    x: Tensor,
    idx: Tensor,
    cols: Tensor,
    loc: Tensor,
    class_weight: Tensor | None,
    one: Tensor,
    with_sum: bool,
    softcap: Tensor | None,
    exp_out: Tensor | None,
    exp_over_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The statistics pass (pass 1 of :mod:`._kernels`) over ``x`` of shape ``(N, C)``; with
    ``exp_out`` (of the compute dtype), or over ``x`` itself with ``exp_over_x``, it also writes
    ``e^{z − m}``, in the same loop as its sum (see :func:`_scale`)."""
    z, _ = softcapped(x.to(one.dtype), softcap)
    m, sumexp, xt, s = _row_stats(z, idx, cols, loc, class_weight, with_sum)
    if exp_over_x:
        x.copy_(torch.exp(z - m))
    elif exp_out is not None:
        exp_out.copy_(torch.exp(z - m))
    return m.squeeze(-1), sumexp, xt, s


def _scale(
    g: Tensor,
    cols: Tensor,
    loc: Tensor,
    p_scale: Tensor,
    smooth_scale: Tensor | None,
    target_grad: Tensor,
    class_weight: Tensor | None,
) -> None:
    """The gradient pass over ``g = e^{z − m}`` as :func:`_stats` wrote it, in place:
    ``p_scale · g − smooth_scale · w`` off the target column, ``target_grad`` on it; a row whose
    ``p_scale`` is 0 contributes no ``p`` term whatever ``g`` holds (an ignored row of NaN or
    ±inf logits: 0 · NaN would be NaN), and a row whose coefficients are all 0 is exact zeros.
    The same products as :func:`_grad` with the row max as reference point, without a second
    ``exp``: bit for bit the same gradient."""
    p = p_scale.unsqueeze(-1)
    out = torch.where(p == 0, 0.0, g * p)
    g.copy_(_smooth_and_target(out, cols, loc, smooth_scale, target_grad, class_weight))


def _smooth_and_target(
    g: Tensor,
    cols: Tensor,
    loc: Tensor,
    smooth_scale: Tensor | None,
    target_grad: Tensor,
    class_weight: Tensor | None,
) -> Tensor:
    """``g − smooth_scale · w`` off the target column and ``target_grad`` on it (where the
    target lies in this shard): the part of the gradient after the ``p`` term, shared by
    :func:`_scale` and :func:`_grad` (traced into each)."""
    if smooth_scale is not None:
        smooth = smooth_scale.unsqueeze(-1)
        g = g - (smooth if class_weight is None else smooth * class_weight)
    return torch.where(cols == loc, target_grad.unsqueeze(-1), g)


def _grad(
    x: Tensor,
    cols: Tensor,
    loc: Tensor,
    shift: Tensor,
    p_scale: Tensor,
    smooth_scale: Tensor | None,
    target_grad: Tensor,
    class_weight: Tensor | None,
    out: Tensor | None,
    one: Tensor,
    softcap: Tensor | None,
) -> None:
    """The gradient pass (pass 2 of :mod:`._kernels`, :func:`._kernels.logits_grad` after it
    folded the reference point): ``p_scale · e^{z − shift} − smooth_scale · w`` off the target
    column, ``target_grad`` on it (when the target lies in this shard), times the softcap's
    ``1 − t²``; written into ``out`` (``x`` itself when ``None``)."""
    z, t = softcapped(x.to(one.dtype), softcap)
    g = torch.exp(z - shift.unsqueeze(-1)) * p_scale.unsqueeze(-1)
    g = _smooth_and_target(g, cols, loc, smooth_scale, target_grad, class_weight)
    if t is not None:
        g = g * (1.0 - t * t)
    # a row whose coefficients are all 0 (ignored) is exact zeros, whatever its logits (NaN,
    # ±inf: 0 · NaN would be NaN)
    dead = ignored_rows(p_scale, smooth_scale, target_grad)
    g = torch.where(dead.unsqueeze(-1), 0.0, g)
    (x if out is None else out).copy_(g)


def _smoothed(y: Tensor, one: Tensor, keep: Tensor | None, share: Tensor | None) -> Tensor:
    """``y' = (1 − ε) y + ε / C`` in the compute dtype (``keep = 1 − ε``, ``share = ε / C``,
    each rounded to it once, as the torch-op kernels' Python scalars are), or ``y``."""
    wy = y.to(one.dtype)
    if keep is not None and share is not None:
        wy = wy * keep + share
    return wy


def _prob_stats(
    x: Tensor,
    y: Tensor,
    class_weight: Tensor | None,
    one: Tensor,
    keep: Tensor | None,
    share: Tensor | None,
    softcap: Tensor | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Pass 1 for probability targets (:func:`._kernels.prob_row_stats`), its sums only: per
    row the max, ``Σ e^{z − m}`` without and the count of the entries at the max (``m`` is 0
    for a row of −inf), ``A = Σ w y'`` and ``Σ w y' (z − m)``; :func:`prob_row_stats`
    combines them on rows (see :func:`_token_stats` for the count and for why)."""
    z, _ = softcapped(x.to(one.dtype), softcap)
    mx = z.amax(dim=-1, keepdim=True)
    shifted = z - torch.where(mx == float("-inf"), 0.0, mx)
    top = shifted == 0
    rest = torch.where(top, 0.0, torch.exp(shifted)).sum(dim=-1)
    wy = _smoothed(y, one, keep, share)
    if class_weight is not None:
        wy = wy * class_weight
    moved = (wy * shifted).sum(dim=-1)
    return mx.squeeze(-1), rest, top.to(rest.dtype).sum(dim=-1), wy.sum(dim=-1), moved


def _prob_grad(
    x: Tensor,
    y: Tensor,
    lse: Tensor,
    p_scale: Tensor,
    row_scale: Tensor,
    class_weight: Tensor | None,
    out: Tensor,
    one: Tensor,
    keep: Tensor | None,
    share: Tensor | None,
    softcap: Tensor | None,
) -> None:
    """Pass 2 for probability targets (:func:`._kernels.prob_grad`): ``s A e^{z − lse} − s w y'``
    times the softcap's ``1 − t²``, written into ``out`` (``p_scale = s A``)."""
    z, t = softcapped(x.to(one.dtype), softcap)
    g = torch.exp(z - lse.unsqueeze(-1)) * p_scale.unsqueeze(-1)
    wy = _smoothed(y, one, keep, share)
    if class_weight is not None:
        wy = wy * class_weight
    g = g - wy * row_scale.unsqueeze(-1)
    if t is not None:
        g = g * (1.0 - t * t)
    out.copy_(g)


def _token_logits(
    x: Tensor, one: Tensor, softcap: Tensor | None, temperature: Tensor | None
) -> tuple[Tensor, Tensor | None]:
    """The per-token statistics' logits ``s·tanh(z / s) / T`` in the compute dtype (the
    operations of :func:`._token_ops._stats_columns`), and ``tanh(z / s)`` for the chain."""
    z, t = softcapped(x.to(one.dtype), softcap)
    if temperature is not None:
        z = z / temperature
    return z, t


def _token_stats(
    x: Tensor,
    idx: Tensor,
    one: Tensor,
    softcap: Tensor | None,
    temperature: Tensor | None,
    floor: Tensor,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The per-token statistics' sums over rows ``x`` (R, C) (the pass of
    :func:`._token_ops._stats_columns`): the max ``m``, ``Σ e^u`` without and the count of
    the entries where ``u = 0``, ``Σ e^u u`` with ``u = z − r`` (``r = m``, or 0
    where ``m`` is not finite), the logit in column ``idx`` and the argmax, NaN
    counting as the largest.

    The entries at the reference point (``e^0 = 1``) are counted apart and added last (by the
    caller): inductor sums each vector lane on its own, and the lane that holds the max would
    add its other entries to 1, losing those below half an ulp of 1. For a confident row (the
    rest ``e^{−20}`` each, 32768 classes) that dropped a sixteenth of the rest, an error of
    ``1.6e-5`` in ``Σ e^u`` (the torch-op kernels' sum: ``6e-7``).

    Only reductions are returned (the caller combines them on rows): a pointwise result on
    rows here would split inductor's one loop over rows, whose sweeps of a row run while it is
    in cache, into two passes over the whole tensor."""
    z, _ = _token_logits(x, one, softcap, temperature)
    mx = z.amax(dim=-1, keepdim=True)
    u = z - torch.where(torch.isfinite(mx), mx, 0.0)
    e = torch.exp(u)
    top = u == 0
    rest = torch.where(top, 0.0, e).sum(dim=-1)
    # 0 · log 0 = 0: a -inf logit's u clamped to a finite number whose exp is still 0 (the
    # torch-op kernels leave out its 0 · (-inf) = NaN with nansum; an isnan is not vectorised
    # here). A NaN or +inf logit makes s NaN or inf: the row's entropy is NaN either way.
    eu = (e * torch.clamp(u, min=floor)).sum(dim=-1)
    zy = z.gather(-1, idx).squeeze(-1)
    return mx.squeeze(-1), rest, top.to(e.dtype).sum(dim=-1), eu, zy, z.argmax(dim=-1)


def _token_vjp(
    x: Tensor,
    cols: Tensor,
    loc: Tensor,
    lse: Tensor,
    lse_lo: Tensor | None,
    row: Tensor,
    nb: Tensor | None,
    k: Tensor,
    a: Tensor | None,
    out: Tensor | None,
    over_x: bool,
    one: Tensor,
    softcap: Tensor | None,
    temperature: Tensor | None,
    floor: Tensor,
) -> None:
    """``G = p ⊙ (k − b log p)`` (``p ⊙ row`` without the entropy's upstream) plus ``a`` at the
    target, times the softcap's and the temperature's chain factors, as
    :func:`._token_ops._vjp_columns` computes it from the per-row coefficients of
    :func:`._token_ops.vjp_coefficients`; written into ``out`` and, with ``over_x``, over ``x``
    (rounded to its dtype)."""
    z, t = _token_logits(x, one, softcap, temperature)
    u = z - lse.unsqueeze(-1)
    if lse_lo is not None:
        u = u - lse_lo.unsqueeze(-1)
    if nb is None:
        g = torch.exp(u) * row.unsqueeze(-1)
    else:
        # 0 · log 0 = 0: log p clamped to a finite number whose exp is still 0
        u = torch.clamp(u, min=floor)
        g = (k.unsqueeze(-1) + u * nb.unsqueeze(-1)) * torch.exp(u)
    if a is not None:
        g = g + torch.where(cols == loc, a.unsqueeze(-1), 0.0)
    if t is not None:
        g = (1.0 - t * t) * g
    if temperature is not None:
        g = g / temperature
    if out is not None:
        out.copy_(g)
    if over_x:
        x.copy_(g)


_PASSES: dict[str, Callable[..., Any]] = {
    "stats": _stats,
    "grad": _grad,
    "scale": _scale,
    "pstats": _prob_stats,
    "pgrad": _prob_grad,
    "tstats": _token_stats,
    "tvjp": _token_vjp,
}


def _variant(key: tuple[Any, ...], fresh: bool = False) -> Callable[..., Any]:
    """The compiled function of one pass and option set (``key[0]`` names the pass): a copy of
    the pass under its own code object, so that Dynamo keeps a separate cache (and recompile
    count) for it. ``fresh``: a new copy with an empty cache (see :func:`_run`)."""
    fn = _variants.get(key)
    if fn is None or fresh:
        base = _PASSES[key[0]]
        _generation[key] = _generation.get(key, -1) + 1
        name = "_" + "_".join(str(k).replace("torch.", "") for k in key)
        name += f"_{_generation[key]}"
        code = base.__code__.replace(co_name=name)
        copy = types.FunctionType(code, base.__globals__, name)
        fn = torch.compile(copy, dynamic=True, fullgraph=True)
        _variants[key] = fn
    return fn


def _run(key: tuple[Any, ...], args: tuple[Any, ...]) -> tuple[bool, Any]:
    """``(True, result)`` of the compiled variant ``key`` on ``args``, or ``(False, None)``
    when it is not available (it failed to build, now or before).

    Sizes are symbolic, but Dynamo still specialises a size of 1 (a one-row batch) and keys a
    graph on the thread count. Two measures keep such recompiles few and harmless: sizes are
    never assumed equal because they happen to be (``use_duck_shape`` off during the call, so
    a first call with ``N == C`` does not tie the two), and a variant that reaches Dynamo's
    recompile limit is replaced by a fresh copy instead of being given up."""
    if key in _failed:
        return False, None
    for attempt in range(2):
        try:
            with _no_duck_shapes():
                res = _variant(key, fresh=attempt > 0)(*args)
        except FailOnRecompileLimitHit:
            if attempt == 0:
                continue
            raise
        except Exception as exc:  # no compiler, an inductor limitation: keep the torch ops
            _give_up(key, exc)
            return False, None
        _working.add(key)
        return True, res
    raise AssertionError("unreachable")


def _no_duck_shapes() -> Any:
    """A context in which Dynamo gives equal sizes separate symbols."""
    from torch.fx.experimental import _config

    return _config.patch(use_duck_shape=False)  # type: ignore[attr-defined]


def _eligible(logits: Tensor, out: Tensor | None = None) -> bool:
    """A call this module takes: switched on, a CPU tensor of a floating dtype it compiles,
    not empty, contiguous (as is ``out``), and ``out`` either ``logits`` itself or apart."""
    if not enabled() or logits.device.type != "cpu" or logits.dtype not in _DTYPES:
        return False
    if logits.numel() == 0 or not logits.is_contiguous():
        return False
    if torch._C._len_torch_dispatch_stack():
        return False  # under a dispatch mode Dynamo compiles nothing: the torch ops run
    if logits.shape[-1] == 1 or logits.numel() == logits.shape[-1]:
        return False  # one class or one row: Dynamo would specialise a size of 1 (a recompile)
    if out is None:
        return True
    if not out.is_contiguous() or out.device.type != "cpu":
        return False
    return out.data_ptr() == logits.data_ptr() or not _overlap(logits, out)


def logits_fused(
    logits: Tensor,
    idx: Tensor,
    inside: Tensor,
    row_scale: Tensor,
    target_weight: Tensor,
    *,
    label_smoothing: float,
    weight_total: float | Tensor,
    class_weight: Tensor | None,
    out: Tensor,
    z_loss: float,
    softcap: float | None,
) -> RowStats | None:
    """The statistics of :func:`._kernels.logits_fused` with the gradient written into
    ``out``, or ``None`` when this kernel does not take the call (the caller runs the torch-op
    kernels; nothing has been written). ``logits`` is ``(*rows, C)``; ``idx`` ``(*rows, 1)``
    and ``inside`` ``rows`` as :func:`._rows.local_index` gives them.

    Two compiled passes with the per-row coefficients between them in plain torch ops on
    row-sized tensors (a few microseconds): the statistics kernel keeps each row in cache
    between its max and its sums, and the gradient kernel reads the row once more. One kernel
    for both (tried first) had inductor stream the whole tensor three times, with no row fusion
    across the per-row coefficients: 1.6× the time at (2048, 4096), no faster at the large
    shapes, and no more robust under load."""
    if not _eligible(logits, out):
        return None
    # one exp per logit: the statistics kernel leaves e^{x − m} in the gradient buffer and the
    # gradient kernel scales it in place. Not with softcap (the gradient needs tanh of the
    # logits, which an in-place call has overwritten) nor a half-precision gradient (e rounded
    # to it, then scaled, would round twice).
    one_exp = (
        _ONE_EXP and softcap is None and out.dtype == logits.dtype == compute_dtype(logits.dtype)
    )
    stats = logits_row_stats(
        logits,
        idx,
        inside,
        class_weight=class_weight,
        with_sum=bool(label_smoothing),
        softcap=softcap,
        exp_out=out if one_exp else None,
    )
    if stats is None:
        return None
    coef = index_target_coefficients(
        stats,
        row_scale,
        target_weight,
        label_smoothing=label_smoothing,
        num_classes=logits.shape[-1],
        weight_total=weight_total,
        z_loss=z_loss,
    )
    # reference point the row max, as in _kernels.logits_grad(ref=...): exp(x − m) · e^{−(lse −
    # m)}; an ignored row of all −inf logits gets exact zeros (shift 0, p_scale 0)
    zero = coef.p_scale == 0
    scaled = GradCoefficients(
        torch.where(zero, 0.0, coef.p_scale * rowwise(torch.exp, -row_lse_rel(stats))),
        coef.smooth_scale,
        coef.target_grad,
    )
    if one_exp:
        cdt = out.dtype
        smooth = scaled.smooth_scale
        cols, loc = _target_columns(idx, inside, logits.shape[-1])
        args = (
            out.view(-1, logits.shape[-1]),
            cols,
            loc,
            scaled.p_scale.to(cdt).reshape(-1),
            None if smooth is None else smooth.to(cdt).reshape(-1),
            scaled.target_grad.to(cdt).reshape(-1),
            None if class_weight is None or smooth is None else class_weight.to(cdt),
        )
        key = (
            "scale",
            cdt,
            class_weight is not None and smooth is not None,
            smooth is not None,
            cols.dtype != torch.float32,
        )
        ok, _ = _run(key, args)
        if ok:
            return stats
        # the scale kernel failed to build after the statistics kernel ran: the gradient
        # kernel from the logits, or, where they were overwritten (in place), the same
        # products in eager torch ops
        if out.data_ptr() == logits.data_ptr():
            _scale(*args)
            return stats
    shift = torch.where(zero & ~torch.isfinite(stats.max), 0.0, stats.max)
    done = logits_grad(
        logits, idx, inside, shift, scaled, class_weight=class_weight, out=out, softcap=softcap
    )
    return stats if done else None


def logits_row_stats(
    logits: Tensor,
    idx: Tensor,
    inside: Tensor,
    *,
    class_weight: Tensor | None,
    with_sum: bool,
    softcap: float | None,
    exp_out: Tensor | None = None,
) -> RowStats | None:
    """:func:`._kernels.logits_row_stats` (any shard: ``idx``/``inside`` from the shard's
    offset), or ``None`` when this kernel does not take the call. ``exp_out``: a contiguous
    buffer of the compute dtype (``logits`` itself allowed) that receives ``e^{z − m}``."""
    if not _eligible(logits, exp_out):
        return None
    rows, num_classes = tuple(logits.shape[:-1]), logits.shape[-1]
    cdt = compute_dtype(logits.dtype)
    over_x = exp_out is not None and exp_out.data_ptr() == logits.data_ptr()
    cols, loc = _target_columns(idx, inside, num_classes)
    key = (
        "stats",
        logits.dtype,
        class_weight is not None and with_sum,
        with_sum,
        softcap is not None,
        exp_out is not None,
        over_x,
        cols.dtype != torch.float32,
    )
    ok, res = _run(
        key,
        (
            logits.view(-1, num_classes),
            idx.reshape(-1, 1),
            cols,
            loc,
            None if class_weight is None or not with_sum else class_weight.to(cdt),
            torch.ones((), dtype=cdt, device="cpu"),
            with_sum,
            _cap(softcap, cdt),
            None if exp_out is None or over_x else exp_out.view(-1, num_classes),
            over_x,
        ),
    )
    return _stats_of(res, rows, inside) if ok else None


def logits_grad(
    logits: Tensor,
    idx: Tensor,
    inside: Tensor,
    shift: Tensor,
    coef: GradCoefficients,
    *,
    class_weight: Tensor | None,
    out: Tensor,
    softcap: float | None,
) -> bool:
    """:func:`._kernels.logits_grad` after it folded the reference point into ``shift`` and
    ``coef.p_scale``: writes ``out`` and returns ``True``, or returns ``False`` (nothing
    written) when this kernel does not take the call."""
    if not _eligible(logits, out):
        return False
    num_classes = logits.shape[-1]
    cdt = compute_dtype(logits.dtype)
    inplace = out.data_ptr() == logits.data_ptr()
    smooth = coef.smooth_scale
    cols, loc = _target_columns(idx, inside, num_classes)
    key = (
        "grad",
        logits.dtype,
        out.dtype,
        class_weight is not None and smooth is not None,
        smooth is not None,
        softcap is not None,
        inplace,
        cols.dtype != torch.float32,
    )
    ok, _ = _run(
        key,
        (
            logits.view(-1, num_classes),
            cols,
            loc,
            shift.to(cdt).reshape(-1),
            coef.p_scale.to(cdt).reshape(-1),
            None if smooth is None else smooth.to(cdt).reshape(-1),
            coef.target_grad.to(cdt).reshape(-1),
            None if class_weight is None or smooth is None else class_weight.to(cdt),
            None if inplace else out.view(-1, num_classes),
            torch.ones((), dtype=cdt, device="cpu"),
            _cap(softcap, cdt),
        ),
    )
    return ok


def _prob_eligible(logits: Tensor, target: Tensor, out: Tensor | None = None) -> bool:
    """A probability-target call this module takes: the logits as :func:`_eligible` wants
    them, the target a contiguous CPU tensor of a floating dtype and the same shape."""
    return (
        _eligible(logits, out)
        and target.device.type == "cpu"
        and target.dtype in _DTYPES
        and target.shape == logits.shape
        and target.is_contiguous()
    )


def _smoothing_args(
    label_smoothing: float, num_classes: int, dtype: torch.dtype
) -> tuple[Tensor | None, Tensor | None]:
    if not label_smoothing:
        return None, None
    keep = torch.tensor(1.0 - label_smoothing, dtype=dtype, device="cpu")
    return keep, torch.tensor(label_smoothing / num_classes, dtype=dtype, device="cpu")


def prob_row_stats(
    logits: Tensor,
    target: Tensor,
    *,
    class_weight: Tensor | None,
    label_smoothing: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """:func:`._kernels.prob_row_stats`, or ``None`` when this kernel does not take the
    call."""
    if not _prob_eligible(logits, target):
        return None
    rows, num_classes = tuple(logits.shape[:-1]), logits.shape[-1]
    cdt = compute_dtype(logits.dtype)
    keep, share = _smoothing_args(label_smoothing, num_classes, cdt)
    key = (
        "pstats",
        logits.dtype,
        target.dtype,
        class_weight is not None,
        keep is not None,
        softcap is not None,
    )
    ok, res = _run(
        key,
        (
            logits.view(-1, num_classes),
            target.view(-1, num_classes),
            None if class_weight is None else class_weight.to(cdt),
            torch.ones((), dtype=cdt, device="cpu"),
            keep,
            share,
            _cap(softcap, cdt),
        ),
    )
    if not ok:
        return None
    mx, rest, top, amass, moved = (r.view(rows) for r in res)
    ref = torch.where(mx == float("-inf"), 0.0, mx)
    rel = rowwise(torch.log, rest + top)  # the small terms first, the max's 1 (or ties) last
    return ref, rel, amass * rel - moved, amass


def prob_grad(
    logits: Tensor,
    target: Tensor,
    lse: Tensor,
    row_scale: Tensor,
    amass: Tensor,
    *,
    class_weight: Tensor | None,
    label_smoothing: float,
    out: Tensor,
    softcap: float | None,
) -> bool:
    """:func:`._kernels.prob_grad` after it folded the reference point into ``lse`` and
    ``amass``: writes ``out`` and returns ``True``, or returns ``False`` (nothing written)."""
    if not _prob_eligible(logits, target, out) or out.data_ptr() == logits.data_ptr():
        return False
    num_classes = logits.shape[-1]
    cdt = compute_dtype(logits.dtype)
    keep, share = _smoothing_args(label_smoothing, num_classes, cdt)
    key = (
        "pgrad",
        logits.dtype,
        target.dtype,
        out.dtype,
        class_weight is not None,
        keep is not None,
        softcap is not None,
    )
    ok, _ = _run(
        key,
        (
            logits.view(-1, num_classes),
            target.view(-1, num_classes),
            lse.to(cdt).reshape(-1),
            (row_scale * amass).to(cdt).reshape(-1),
            row_scale.to(cdt).reshape(-1),
            None if class_weight is None else class_weight.to(cdt),
            out.view(-1, num_classes),
            torch.ones((), dtype=cdt, device="cpu"),
            keep,
            share,
            _cap(softcap, cdt),
        ),
    )
    return ok


def _token_layout(z: Tensor, out: Tensor | None = None) -> bool | None:
    """Whether rows ``z`` (R, C) are a column view (``z.t()`` contiguous: the linear path's
    transposed chunks), ``False`` for contiguous rows, ``None`` when this module does not
    take them (as :func:`_eligible` says for the rows, with ``out`` laid out like ``z``)."""
    if z.dim() != 2:
        return None
    columns = not z.is_contiguous()
    view = z.t() if columns else z
    if not _eligible(view, None if out is None else (out.t() if columns else out)):
        return None
    return columns


def _token_scalars(
    dtype: torch.dtype, softcap: float | None, temperature: float
) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
    """The last four arguments of both per-token kernels: ``one`` (the compute dtype),
    ``softcap``, ``temperature`` (``None`` for 1) and :func:`._rows.exp_floor`, as tensors."""
    return (
        torch.ones((), dtype=dtype, device="cpu"),
        _cap(softcap, dtype),
        None if temperature == 1.0 else torch.tensor(temperature, dtype=dtype, device="cpu"),
        torch.tensor(exp_floor(dtype), dtype=dtype, device="cpu"),
    )


def token_row_stats(
    z: Tensor,
    target: Tensor,
    out: tuple[Tensor, ...],
    *,
    class_offset: int,
    softcap: float | None,
    temperature: float,
) -> bool:
    """The partial sums ``(m, s, spread, z_y, argmax)`` of :func:`._token_ops._stats_columns`
    of contiguous rows ``z`` (R, C) written into ``out``: ``True``, or ``False`` (nothing
    written) when this kernel does not take the call. Not a column view: the torch-op tiles
    read one from cache, and this kernel would stream it from memory twice (measured 27
    against 12.5 ms for a (32768, 384) float32 chunk)."""
    if _token_layout(z) is not False:
        return False
    cdt = compute_dtype(z.dtype)
    idx, inside = local_index(target, class_offset, z.shape[-1])
    key = ("tstats", z.dtype, softcap is not None, temperature != 1.0)
    ok, res = _run(key, (z, idx, *_token_scalars(cdt, softcap, temperature)))
    if not ok:
        return False
    mx, rest, top, eu, zy, best = res
    m_out, s_out, spread_out, zy_out, argmax = out
    m_out.copy_(mx)
    torch.add(rest, top, out=s_out)  # the small terms first, the max's 1 (or ties) last
    torch.neg(eu, out=spread_out)
    zy_out.copy_(torch.where(inside, zy, 0.0))
    argmax.copy_(best)
    return True


def token_vjp(
    src: Tensor,
    out: Tensor | None,
    target: Tensor,
    coefficients: tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor | None],
    *,
    class_offset: int,
    softcap: float | None,
    temperature: float,
    over_src: bool,
) -> bool:
    """``G`` of :func:`._token_ops._vjp_columns` for rows ``src`` (R, C) (contiguous, or a
    column view) from the per-row ``coefficients`` ``(lse, lse_lo, row, nb, k, a)`` of
    :func:`._token_ops.vjp_coefficients`, written into ``out`` (laid out as ``src``, of any
    floating dtype) and, with ``over_src``, over ``src``: ``True``, or ``False`` (nothing
    written) when this kernel does not take the call."""
    columns = _token_layout(src, out)
    if columns is None or (out is not None and out.data_ptr() == src.data_ptr()):
        return False
    cdt = compute_dtype(src.dtype)
    idx, inside = local_index(target, class_offset, src.shape[-1])
    lse, lse_lo, row, nb, k, a = (None if c is None else c.to(cdt) for c in coefficients)
    cols, loc = _target_columns(idx, inside, src.shape[-1])
    key = (
        "tvjp",
        src.dtype,
        None if out is None else out.dtype,
        columns,
        over_src,
        lse_lo is not None,
        nb is not None,
        a is not None,
        softcap is not None,
        temperature != 1.0,
        cols.dtype != torch.float32,
    )
    scalars = _token_scalars(cdt, softcap, temperature)
    args = (src, cols, loc, lse, lse_lo, row, nb, k, a, out, over_src, *scalars)
    ok, _ = _run(key, args)
    return ok


def _stats_of(res: Any, rows: tuple[int, ...], inside: Tensor) -> RowStats:
    m, sumexp, xt, s = res
    return RowStats(
        m.view(rows), sumexp.view(rows), xt.view(rows), inside, None if s is None else s.view(rows)
    )


def _cap(softcap: float | None, dtype: torch.dtype) -> Tensor | None:
    return None if softcap is None else torch.tensor(softcap, dtype=dtype, device="cpu")


def _give_up(key: tuple[Any, ...], exc: Exception) -> None:
    """Record a failed variant and warn once. Before any variant has run, a failure means the
    platform cannot compile (no C++ compiler, say): every variant is given up. After one has
    run, only this one is (an inductor limitation for this option set)."""
    global _broken
    text = str(exc).strip().splitlines()
    reason = f"{type(exc).__name__}: {text[0] if text else ''}"
    _failed[key] = reason
    if not _working:
        _broken = reason
    warnings.warn(
        f"crossentropy: the compiled CPU kernel for {_describe(key)} could not be built "
        f"({reason}); the torch-op kernels run "
        + ("every call from now on" if _broken else "this option set")
        + f" (set {ENV}=torch to skip the attempt)",
        RuntimeWarning,
        stacklevel=4,
    )


def _describe(key: tuple[Any, ...]) -> str:
    """``the fused pass on float32 logits with ...`` for a variant key."""
    kind, dtype, *flags = key
    names = {
        "stats": [
            "class weights",
            "the logits' sum",
            "softcap",
            "exponentials",
            "in place",
            "more than 2**24 classes",
        ],
        "grad": [
            "class weights",
            "label smoothing",
            "softcap",
            "in place",
            "more than 2**24 classes",
        ],
        "scale": ["class weights", "label smoothing", "more than 2**24 classes"],
        "pstats": ["class weights", "label smoothing", "softcap"],
        "pgrad": ["class weights", "label smoothing", "softcap"],
        "tstats": ["softcap", "temperature"],
        "tvjp": [
            "a column view",
            "the gradient over the logits",
            "the rounding error of lse",
            "the entropy's upstream",
            "the log-probability's upstream",
            "softcap",
            "temperature",
            "more than 2**24 classes",
        ],
    }[kind]
    if kind in ("grad", "pstats"):
        flags = flags[1:]  # the gradient's or the target's dtype
    elif kind == "pgrad":
        flags = flags[2:]  # the target's and the gradient's dtypes
    elif kind == "tvjp":
        flags = flags[1:]  # the gradient's dtype
    on = [n for n, flag in zip(names, flags, strict=True) if flag]
    what = {
        "pstats": "probability-target statistics",
        "pgrad": "probability-target gradient",
        "tstats": "per-token statistics",
        "tvjp": "per-token statistics' gradient",
    }
    text = f"the {what.get(kind, kind)} pass on {str(dtype).replace('torch.', '')} logits"
    return text + (f" with {', '.join(on)}" if on else "")


def _overlap(a: Tensor, b: Tensor) -> bool:
    """Whether two contiguous tensors share memory without being the same buffer."""
    a0, b0 = a.data_ptr(), b.data_ptr()
    a1, b1 = a0 + a.numel() * a.element_size(), b0 + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1
