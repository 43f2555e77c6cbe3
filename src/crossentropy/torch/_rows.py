"""Per-row algebra shared by every torch path (single-process, vocab-parallel, token
statistics; torch-op kernels and the differentiable reference alike)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from ._types import GradCoefficients, RowStats

__all__ = [
    "FP16_TARGET",
    "RowWeights",
    "backward_coefficients",
    "coefficients",
    "exp_floor",
    "ignored_rows",
    "index_losses",
    "index_target_coefficients",
    "linear_zlse_bound",
    "local_index",
    "merge_row_stats",
    "other_prob",
    "prescale",
    "reduce",
    "row_lse",
    "row_lse_rel",
    "row_nll",
    "row_scales",
    "row_weights",
    "rowwise",
    "sample_scale",
    "softcapped",
    "target_exp",
    "token_finish",
    "zlse_bound",
]

#: Largest float16 gradient entry the prescale aims for (float16's largest normal is ~2**16).
FP16_TARGET = 2.0**14


def exp_floor(dtype: torch.dtype) -> float:
    """A finite ``u`` whose ``exp`` is exactly 0 in ``dtype`` (below the smallest subnormal's
    log, -103.3 in float32 and -744.4 in float64): clamping ``u = z − lse`` to it changes no
    probability, and keeps ``0 · u`` = 0 where a logit is ``-inf``."""
    return -2048.0 if dtype == torch.float64 else -256.0


def local_index(target: Tensor, class_offset: int, num_local: int) -> tuple[Tensor, Tensor]:
    """(the target's column in a shard of ``num_local`` classes starting at ``class_offset``,
    clamped to a valid column, as ``(*rows, 1)``; whether the target is in the shard)."""
    local = target.to(torch.int64) - class_offset
    inside = (local >= 0) & (local < num_local)
    return torch.where(inside, local, 0).unsqueeze(-1), inside


def softcapped(z: Tensor, softcap: float | Tensor | None) -> tuple[Tensor, Tensor | None]:
    """``(z', t)`` with ``z' = c·tanh(z / c)`` and ``t = tanh(z / c)``, kept for the chain
    factor ``∂z'/∂z = 1 − t²`` (the formula of torch's tanh backward), or ``(z, None)`` without
    a softcap. Differentiable torch ops, in ``z``'s dtype: callers cast to the compute dtype
    first (a bfloat16 ``c·tanh(z / c)`` would round ``z'`` to 3 digits)."""
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


# --------------------------------------------------------------------------- statistics


def merge_row_stats(parts: list[RowStats]) -> RowStats:
    """Combine the statistics of disjoint vocabulary shards (what an all-reduce computes).

    ``M = max_k m_k``, ``sumexp = Σ_k sumexp_k · exp(m_k − M)``, and sums of ``target_logit``,
    ``has_target`` and ``sum_logits``.
    """
    big = torch.stack([p.max for p in parts]).amax(dim=0)
    sumexp = sum(
        (p.sumexp * rowwise(torch.exp, p.max - big).nan_to_num(nan=0.0) for p in parts),
        torch.zeros_like(big),
    )
    xt = sum((p.target_logit for p in parts), torch.zeros_like(big))
    has = torch.stack([p.has_target for p in parts]).any(dim=0)
    sums = [p.sum_logits for p in parts]
    total = None
    if all(s is not None for s in sums):
        total = sum((s for s in sums if s is not None), torch.zeros_like(big))
    return RowStats(big, sumexp, xt, has, total)


#: above this many rows the per-row work is worth the threads
_ROWWISE_MAX = 1 << 17


def rowwise(op: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """``op(x)`` for ``op`` one of ``torch.exp``, ``torch.log``, ``torch.log1p`` on a per-row
    float32 tensor on CPU, computed by NumPy in float64 and rounded once to float32 (at least
    as accurate as ``op``: correctly rounded but for rare double roundings).

    Why not ``op``: on CPU ATen computes these with MKL's vector math, which runs its own
    threads even for a thousand elements, and while another process holds a core every call
    waits for a descheduled thread. Measured on the 2-core machine with two CPU-bound
    processes beside a 2-thread run: ``torch.exp`` of 1024 float32 took 7.1 ms (median;
    26 µs idle), NumPy 45 µs; the seven such calls between and after the two kernels of a
    bfloat16 (4096, 32768) cross-entropy took up to 70 of its 330 ms. Unchanged (``op``):
    other dtypes and devices, tensors that require grad, tensor subclasses, tracing, a dispatch
    mode, and more than 2**17 rows."""
    fn = _NUMPY_OPS.get(op)
    if (
        fn is None
        or x.dtype != torch.float32
        or x.device.type != "cpu"
        or x.numel() > _ROWWISE_MAX
        or x.requires_grad
        or type(x) is not torch.Tensor
        or torch.compiler.is_compiling()
        or torch._C._functorch.is_functorch_wrapped_tensor(x)
        or torch._C._len_torch_dispatch_stack() > 0  # a mode sees (or fakes) every op
    ):
        return op(x)
    with np.errstate(all="ignore"):  # log(0) = -inf, log(-1) = NaN, as torch gives them
        out = fn(x.detach().numpy().astype(np.float64))
    return torch.from_numpy(np.asarray(out, dtype=np.float32))


_NUMPY_OPS: dict[Callable[..., Tensor], Callable[..., Any]] = {
    torch.exp: np.exp,
    torch.log: np.log,
    torch.log1p: np.log1p,
}


def target_exp(stats: RowStats) -> Tensor:
    """``exp(x_y − m)`` for rows whose target is present, else 0."""
    return torch.where(stats.has_target, rowwise(torch.exp, stats.target_logit - stats.max), 0.0)


def row_lse(stats: RowStats) -> Tensor:
    """``lse_i = m_i + log(Σ_{c≠y} exp(x_ic − m_i) + exp(x_{iy} − m_i))`` from global stats."""
    return stats.max + rowwise(torch.log, stats.sumexp + target_exp(stats))


def row_lse_rel(stats: RowStats) -> Tensor:
    """``lse_i − m_i = log(Σ_{c≠y} e^{x_c − m_i} + e^{x_y − m_i})``: the log-sum-exp relative to
    the reference point, a small number known to full precision. Gradient passes take it with
    ``ref=stats.max``: ``exp(x − lse)`` with a rounded ``lse`` of large logits (``|x| ~ 1e4``
    in float32) would be off by ``ulp(lse)`` relative; ``exp(x − m) · e^{−(lse − m)}`` is not."""
    return rowwise(torch.log, stats.sumexp + target_exp(stats))


def row_nll(stats: RowStats) -> Tensor:
    """``lse_i − x_{iy_i}`` from global stats, accurate for confident rows.

    When the target is (near) the max, ``lse − x_y = log1p(Σ_{c≠y} e^{x_c − x_y})`` keeps the
    tiny loss that ``lse − x_y`` would round to 0; elsewhere ``(m − x_y) + log Σ_c e^{x_c − m}``.
    Rows without a target get 0.
    """
    et = target_exp(stats)
    near = et > 2.0**-20
    ratio = stats.sumexp / torch.where(near, et, 1.0)
    # far from the max: (m − x_y) + log Σ e^{x − m}; both terms exact or small, where
    # lse − x_y would subtract two rounded large numbers (|x| ~ 1e4 in float32)
    far = (stats.max - stats.target_logit) + rowwise(torch.log, stats.sumexp + et)
    nll = torch.where(near, rowwise(torch.log1p, ratio), far)
    return torch.where(stats.has_target, nll, 0.0)


def other_prob(stats: RowStats) -> Tensor:
    """``q_i = Σ_{c≠y_i} p_ic`` from global stats, to full relative precision."""
    et = target_exp(stats)
    return stats.sumexp / (stats.sumexp + et)


def index_target_coefficients(
    stats: RowStats,
    row_scale: Tensor,
    target_weight: Tensor,
    *,
    label_smoothing: float,
    num_classes: int,
    weight_total: float | Tensor,
    z_loss: float = 0.0,
) -> GradCoefficients:
    """Gradient coefficients for index targets (see the module docstring).

    Parameters
    ----------
    stats : RowStats
        *Global* statistics (after merging the shards).
    row_scale : Tensor, shape ``rows``
        ``s_i = ∂(reduced loss)/∂ℓ_i`` times the upstream gradient; 0 for ignored rows.
    target_weight : Tensor, shape ``rows``
        ``w_{y_i}`` (1 without class weights; any value for ignored rows).
    label_smoothing : float
        ``ε``.
    num_classes : int
        Global vocabulary size ``C``.
    weight_total : float or Tensor
        ``W = Σ_c w_c`` over the global vocabulary (``C`` without class weights).
    z_loss : float
        ``z``: the row loss gains ``z w_y lse²``, so ``α`` and ``τ`` gain ``s · 2 z w_y lse``
        (``lse`` from the global ``stats``).
    """
    zlse = (2.0 * z_loss) * row_lse(stats) if z_loss else 0.0
    return coefficients(
        other_prob(stats),
        row_scale,
        target_weight,
        float(label_smoothing),
        num_classes,
        weight_total,
        zlse,
    )


# --------------------------------------------------------------------------- losses and scales


def ignored_rows(p_scale: Tensor, smooth_scale: Tensor | None, target_grad: Tensor) -> Tensor:
    """The rows whose gradient coefficients (:class:`._types.GradCoefficients`) are all 0:
    their gradient is exact zeros whatever their logits (``0 · NaN`` would be NaN)."""
    dead = (p_scale == 0) & (target_grad == 0)
    if smooth_scale is not None:
        dead = dead & (smooth_scale == 0)
    return dead


def row_scales(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    cdt: torch.dtype,
) -> tuple[Tensor, Tensor, Tensor]:
    """``(valid, w_{y_i}, s_i)``: kept rows, their class weight (0 if ignored), and
    ``s_i = ∂ reduced / ∂ℓ_i`` (``1 / Σ w_y`` for ``"mean"``, 1 otherwise, 0 if ignored).

    Plain torch ops, no host reads: usable in eager, compiled and double-backward code."""
    valid = target != ignore_index
    if weight is None:
        tw = valid.to(cdt)
    else:
        safe = torch.where(valid, target, 0).to(torch.int64)
        tw = torch.where(valid, weight.to(cdt)[safe], 0.0)
    if reduction == "mean":
        scale = torch.where(valid, 1.0 / tw.sum(), 0.0)
    else:
        scale = valid.to(cdt)
    return valid, tw, scale


class RowWeights(NamedTuple):
    """The class weights of a call as every pass needs them (compute dtype)."""

    w: Tensor | None  # per-class weights, or None
    total: Tensor | float  # W = Σ_c w_c (C without weights)
    valid: Tensor  # target != ignore_index
    tw: Tensor  # w_{y_i}, 0 for ignored rows
    scale: Tensor  # s_i = ∂ reduced / ∂ℓ_i


def row_weights(
    target: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    num_classes: int,
    cdt: torch.dtype,
) -> RowWeights:
    """:func:`row_scales` with the weights cast once and their total ``W``."""
    w = None if weight is None else weight.to(cdt)
    total: Tensor | float = float(num_classes) if w is None else w.sum()
    return RowWeights(w, total, *row_scales(target, w, ignore_index, reduction, cdt))


def backward_coefficients(
    dtype: torch.dtype,
    rw: RowWeights,
    q: Tensor,
    row_grad: Tensor,
    eps: float,
    num_classes: int,
    target: float,
    z_loss: float = 0.0,
    lse: Tensor | None = None,
) -> tuple[GradCoefficients, Tensor]:
    """Coefficients of a recomputing gradient pass for ``row_grad``, and the float16 ``pre``
    they are multiplied by (see :func:`prescale`). ``lse`` (the rows' log-sum-exp) is needed
    with ``z_loss``."""
    rg = row_grad.to(rw.tw.dtype)
    zlse = 0.0 if not z_loss or lse is None else 2.0 * z_loss * lse
    bound = zlse if isinstance(zlse, float) else zlse.abs()
    pre = prescale(dtype, rg, rw.tw, rw.w, eps, num_classes, rw.total, target, bound)
    return coefficients(q, rg * pre, rw.tw, eps, num_classes, rw.total, zlse), pre


def coefficients(
    q: Tensor,
    row_grad: Tensor,
    tw: Tensor,
    eps: float,
    num_classes: int,
    total: Tensor | float,
    zlse: Tensor | float = 0.0,
) -> GradCoefficients:
    """The coefficients of :func:`index_target_coefficients` from ``q = Σ_{c≠y} p_c`` (the
    statistics' own, or saved by a forward) and ``zlse = 2 z lse`` per row with a z-loss.
    Ignored rows (row scale 0) get an exact 0 even if their statistics are not finite."""
    a = (1.0 - eps) * tw
    if eps:
        a = a + (eps / num_classes) * total
    zgrad = None
    if not isinstance(zlse, float) or zlse:
        zgrad = tw * zlse
        a = a + zgrad
    p_scale = row_grad * a
    tgrad = -p_scale * q
    if zgrad is not None:
        tgrad = tgrad + row_grad * zgrad
    smooth = None
    if eps:
        smooth = row_grad * (eps / num_classes)
        tgrad = tgrad + smooth * (total - tw)
    zero = row_grad == 0
    return GradCoefficients(
        torch.where(zero, 0.0, p_scale),
        None if smooth is None else torch.where(zero, 0.0, smooth),
        torch.where(zero, 0.0, tgrad),
    )


def prescale(
    dtype: torch.dtype,
    row_grad: Tensor,
    tw: Tensor,
    weight: Tensor | None,
    eps: float,
    num_classes: int,
    total: Tensor | float,
    target: float,
    zlse: Tensor | float = 0.0,
) -> Tensor:
    """The power of two ``pre`` for a float16 gradient (1 for every other dtype). ``zlse``
    bounds ``|2 z lse|`` per row (or for all rows) with a z-loss."""
    one = torch.ones((), dtype=row_grad.dtype, device=row_grad.device)
    if dtype != torch.float16 or row_grad.numel() == 0:
        return one
    # |g_ic| ≤ |s_i| (a_i + (ε/C) max_c w_c), with a_i = (1 − ε) w_y + (ε/C) W + 2 z w_y lse.
    # a vocabulary shard of no class has no weights (and no gradient entries)
    none = weight is None or weight.numel() == 0
    wmax = one if none else weight.abs().amax().to(row_grad.dtype)  # type: ignore[union-attr]
    a = (1.0 - eps) * tw.abs() + (eps / num_classes) * (abs(total) + wmax)  # type: ignore[operator]
    if not isinstance(zlse, float) or zlse:
        a = a + tw.abs() * zlse
    bound = (row_grad.abs() * a).amax()
    exponent = torch.floor(torch.log2(target / bound)).clamp(-60.0, 60.0)
    return torch.where(bound > 0, torch.exp2(exponent), one)


def reduce(loss: Tensor, reduction: str, denom: Tensor) -> Tensor:
    if reduction == "none":
        return loss
    total = loss.sum()
    return total / denom if reduction == "mean" else total


def index_losses(
    stats: RowStats,
    lse: Tensor,
    valid: Tensor,
    tw: Tensor,
    eps: float,
    num_classes: int,
    total: Tensor | float,
    z_loss: float = 0.0,
    sample_weight: Tensor | None = None,
) -> Tensor:
    """ℓ_i = s_i [(1−ε) w_y (lse − x_y) + (ε/C) (W lse − Σ_c w_c x_c) + z w_y lse²], 0 for
    ignored rows (whatever their sample weight ``s_i``)."""
    loss = tw * row_nll(stats)
    if eps:
        loss = (1.0 - eps) * loss
        assert stats.sum_logits is not None  # requested whenever eps > 0
        loss = loss + (eps / num_classes) * (total * lse - stats.sum_logits)
    if z_loss:
        loss = loss + z_loss * tw * lse * lse
    if sample_weight is not None:
        loss = loss * sample_weight
    return torch.where(valid, loss, 0.0)


def sample_scale(scale: Tensor, valid: Tensor, sample_weight: Tensor | None) -> Tensor:
    """``∂ reduced / ∂(unweighted ℓ_i)``: the row scale times the sample weight, exactly 0 for
    ignored rows whatever the scale (a NaN upstream gradient there) or the sample weight."""
    if sample_weight is not None:
        scale = scale * sample_weight
    return torch.where(valid, scale, 0.0)


def zlse_bound(x: Tensor, z_loss: float, softcap: float | None, num_classes: int) -> Tensor | float:
    """A bound on ``|2 z lse|`` for the float16 prescale of a fused sweep, before the sweep:
    ``|lse| ≤ max |x'| + log C`` (``max |x'| ≤ softcap``)."""
    if not z_loss or x.dtype != torch.float16 or x.numel() == 0:
        return 0.0
    if softcap is not None:
        top: Tensor | float = float(softcap)
    else:
        # |lse| ≤ |row max| + log C: the row maxima, not max |x| (a −inf logit, a masked
        # vocabulary entry, would make that bound inf and the prescale flush every gradient
        # entry to 0). Rows whose max is not finite have a non-finite loss or are ignored.
        m = x.amax(dim=1 if x.dim() >= 2 else 0).float()
        top = torch.where(torch.isfinite(m), m.abs(), 0.0).amax()
    return 2.0 * z_loss * (top + math.log(max(num_classes, 1)))


def linear_zlse_bound(
    hidden: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    z_loss: float,
    softcap: float | None,
) -> Tensor | float:
    """:func:`zlse_bound` for ``hidden @ weight.T + bias`` before any logit exists:
    ``|x_ic| ≤ ‖h_i‖ ‖w_c‖ + |b_c|`` (Cauchy–Schwarz)."""
    if not z_loss or hidden.dtype != torch.float16 or hidden.numel() == 0:
        return 0.0
    if softcap is not None:
        top: Tensor | float = float(softcap)
    else:
        top = hidden.float().norm(dim=-1).amax() * weight.float().norm(dim=-1).amax()
        if bias is not None and bias.numel():
            top = top + bias.float().abs().amax()
    return 2.0 * z_loss * (top + math.log(max(weight.shape[0], 1)))


# --------------------------------------------------------------------------- token statistics


def rounding_error(m: Tensor, log_s: Tensor, lse: Tensor) -> Tensor:
    """``(m + log s) − lse`` exactly, for ``lse = m + log s`` rounded (Knuth's TwoSum); 0
    where ``lse`` is not finite.

    Backward's ``log p = (z − lse) − lse_lo`` is then ``(z − m) − log s`` as accurately as if
    ``m`` and ``log s`` had been kept (``z − lse`` is exact near the max). With ``lse`` alone the
    rounding (half an ulp of ``lse``: ~1e-6 at 20, 3e-5 at 1000 in float32) is a relative error
    of every ``p``, and near the max of a confident row most of ``log p``: the entropy's
    gradient there, ``−p (log p + H)``, is a difference of that size."""
    b = lse - m
    err = (m - (lse - b)) + (log_s - b)
    return torch.where(torch.isfinite(err), err, 0.0)


def token_finish(
    m: Tensor, s: Tensor, spread: Tensor, zy: Tensor, keep: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(logprob, entropy, lse, lse_lo)`` of rows from their partial sums over the whole
    vocabulary (one process's, or the ranks' added up by :func:`._shard.combine_token_partials`).

    ``m`` is the row max (NaN left out, or not: either way the row is NaN), ``s = Σ e^{z − r}``
    and ``spread = Σ e^{z − r} (r − z) ≥ 0`` relative to ``r = m`` (0 where ``m`` is not
    finite), ``zy`` the target's logit. Then ``lse = r + log s``, ``logprob = (z_y − r) −
    log s`` (0 where ``keep`` is false) and ``H = log s + spread / s``: two non-negative terms,
    no cancellation. A row of only ``-inf`` logits (``s = 0``) has ``lse = -inf`` and a NaN
    entropy; ``lse_lo`` is :func:`rounding_error`, for backward."""
    r = torch.where(torch.isfinite(m), m, 0.0)
    log_s = rowwise(torch.log, s)
    lse = r + log_s
    logprob = torch.where(keep, (zy - r) - log_s, 0.0)
    return logprob, log_s + spread / s, lse, rounding_error(r, log_s, lse)


def over_items(loss: Tensor, num_items: float | Tensor) -> Tensor:
    """The summed ``loss`` divided by ``num_items`` (a count from the caller: HF's
    ``num_items_in_batch``, torchtitan's ``global_valid_tokens``), in float32 (float64 for
    float64) and returned in the loss's dtype: a half-precision count above 256 is not rounded
    before the division."""
    cdt = torch.float64 if loss.dtype == torch.float64 else torch.float32
    n = num_items.to(device=loss.device, dtype=cdt) if isinstance(num_items, Tensor) else num_items
    return (loss.to(cdt) / n).to(loss.dtype)
