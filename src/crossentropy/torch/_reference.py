r"""The docstring formulas as plain, differentiable torch compositions.

One module for what every torch path falls back on or is checked against: the small-problem
and ``torch.func`` path of :func:`~crossentropy.torch.cross_entropy` and
:func:`~crossentropy.torch.linear_cross_entropy` (:func:`composite`, ``F.cross_entropy`` itself
without the extra options), and the closed-form gradients that a double backward
(``create_graph=True``) differentiates (:func:`index_grad`, :func:`prob_grad`). Every
function here is made of torch ops with autograd, batching and jvp rules, so every higher
derivative and every transform is autograd's own.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from . import _ops, _rows
from ._rows import softcapped
from ._types import Options, compute_dtype

__all__ = ["call", "composite", "index_grad", "lse", "prob_grad"]


def _classes_back(g: Tensor, like: Tensor) -> Tensor:
    return g.movedim(-1, 1) if like.dim() >= 3 else g


def lse(x: Tensor, dim: int, keepdim: bool = False) -> Tensor:
    """``logsumexp(x, dim)`` as ``m + logsumexp(x − m)`` with ``m`` the detached row max (0
    where it is not finite). The same function at every order (it does not depend on ``m``),
    but its gradient ``exp((x − m) − (lse − m))`` subtracts a small, accurately rounded
    number: ``torch.logsumexp``'s ``exp(x − lse)`` with ``lse`` rounded to ``ulp(lse)`` is off
    by ~1e-4 relative for logits of 1e4 in float32 (the fused kernels' own reference point)."""
    if x.shape[dim] == 0:
        return torch.logsumexp(x, dim=dim, keepdim=keepdim)
    m = x.detach().amax(dim=dim, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)
    out = m + torch.logsumexp(x - m, dim=dim, keepdim=True)
    return out if keepdim else out.squeeze(dim)


def _softcapped_rows(
    x: Tensor, softcap: float | None, cdt: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    """Classes-last logits in compute dtype after the softcap, and ``∂x'/∂x = 1 − t²``."""
    xl, t = softcapped(_ops.classes_last(x).to(cdt), softcap)
    return xl, None if t is None else 1.0 - t * t


def index_grad(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    sample_weight: Tensor | None,
    opts: Options,
    upstream: Tensor,
) -> Tensor:
    """``∂L/∂x`` for index targets in differentiable torch ops (the double-backward path):
    ``s_i u_i ((a_i + 2 z w_y lse_i) softmax(x'_i) − (1−ε) w_y e_y − (ε/C) w) ∂x'/∂x``, with
    ``a_i`` as in :func:`~crossentropy.torch.cross_entropy`'s Notes and ``s_i`` the sample
    weight."""
    eps = opts.label_smoothing
    cdt = compute_dtype(x.dtype)
    xl, chain = _softcapped_rows(x, opts.softcap, cdt)
    num_classes = xl.shape[-1]
    w, total, valid, tw, scale = _rows.row_weights(
        target, weight, opts.ignore_index, opts.reduction, num_classes, cdt
    )
    # an ignored row of all −inf logits has a NaN softmax: zero logits there instead
    xl = torch.where(valid.unsqueeze(-1), xl, 0.0)
    p = torch.softmax(xl, dim=-1)
    a = (1.0 - eps) * tw + (eps / num_classes) * total
    if opts.z_loss:
        a = a + (2.0 * opts.z_loss) * tw * torch.where(valid, lse(xl, -1), 0.0)
    safe = torch.where(valid, target, 0).to(torch.int64)
    onehot = F.one_hot(safe, num_classes).to(cdt)
    g = a.unsqueeze(-1) * p - ((1.0 - eps) * tw).unsqueeze(-1) * onehot
    if eps:
        g = g - (eps / num_classes) * (1.0 if w is None else w)
    if chain is not None:
        g = g * chain
    row = upstream.to(cdt) * scale
    if sample_weight is not None:
        row = row * torch.where(valid, sample_weight.to(cdt), 0.0)
    g = g * row.unsqueeze(-1)
    g = torch.where(valid.unsqueeze(-1), g, 0.0)
    return _classes_back(g, x).to(x.dtype)


def prob_grad(
    x: Tensor, target: Tensor, weight: Tensor | None, opts: Options, row_grad: Tensor
) -> Tensor:
    """``u_i ((A_i + 2 z lse_i) softmax(x'_i) − w ⊙ y'_i) ∂x'/∂x`` in differentiable torch
    ops (``row_grad`` includes any sample weights)."""
    eps = opts.label_smoothing
    cdt = compute_dtype(x.dtype)
    xl, chain = _softcapped_rows(x, opts.softcap, cdt)
    num_classes = xl.shape[-1]
    y = _ops.classes_last(target).to(cdt)
    if eps:
        y = y * (1.0 - eps) + eps / num_classes
    if weight is not None:
        y = y * weight.to(cdt)
    a = y.sum(dim=-1, keepdim=True)
    if opts.z_loss:
        a = a + (2.0 * opts.z_loss) * lse(xl, -1, keepdim=True)
    g = a * torch.softmax(xl, dim=-1) - y
    if chain is not None:
        g = g * chain
    g = g * row_grad.to(cdt).unsqueeze(-1)
    return _classes_back(g, x).to(x.dtype)


def composite(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    sample_weight: Tensor | None,
    opts: Options,
) -> Tensor:
    """The reference of :func:`~crossentropy.torch.cross_entropy` in differentiable torch
    ops: ``F.cross_entropy`` itself without the extra options, else
    ``F.cross_entropy(softcap(x), reduction="none")`` plus ``z w_y lse²``, times the sample
    weights, reduced over the same denominator. The softcap runs in the compute dtype, as in
    the kernels (a bfloat16 ``c tanh(x / c)`` would round ``x'`` to 3 digits). The result has
    ``opts.out_dtype`` (the loss's own dtype when it is None)."""
    eps, red = opts.label_smoothing, opts.reduction
    if opts.plain() and sample_weight is None:
        out = F.cross_entropy(
            x, target, weight, ignore_index=opts.ignore_index, reduction=red, label_smoothing=eps
        )
        return out if opts.out_dtype is None else out.to(opts.out_dtype)
    cdt = compute_dtype(x.dtype)
    if target.is_floating_point():
        cdt = torch.promote_types(cdt, target.dtype)
        target = target.to(cdt)
    if weight is not None:
        weight = weight.to(cdt)
    xs, _ = softcapped(x.to(cdt), opts.softcap)
    cls = 1 if x.dim() >= 2 else 0
    valid: Tensor | None = None
    if not target.is_floating_point():
        valid = target != opts.ignore_index
        # an ignored row of all −inf logits: its log-softmax is NaN, and so would be its
        # gradient (0 · NaN); the row contributes nothing, so its logits can be anything
        xs = torch.where(valid.unsqueeze(cls), xs, 0.0)
    per = F.cross_entropy(
        xs, target, weight, ignore_index=opts.ignore_index, reduction="none", label_smoothing=eps
    )
    if valid is None:
        tw: Tensor | float = 1.0
        denom: Tensor | float = float(per.numel())
    else:
        if weight is None:
            tw = valid.to(per.dtype)
        else:
            tw = torch.where(valid, weight.to(per.dtype)[torch.where(valid, target, 0)], 0.0)
        denom = tw.sum()
    if opts.z_loss:
        row_lse = lse(xs, cls).to(per.dtype)
        if valid is not None:  # an ignored row of all −inf: 0 · inf would be NaN
            row_lse = torch.where(valid, row_lse, 0.0)
        per = per + opts.z_loss * tw * row_lse * row_lse
    if sample_weight is not None:
        sw = sample_weight.to(per.dtype)
        if valid is not None:  # a NaN/inf weight at an ignored position: 0, not 0 · NaN
            sw = torch.where(valid, sw, 0.0)
        per = per * sw
    if valid is not None:
        # 0 at ignored positions whatever their sample weight, and a zero gradient there even
        # when "mean"'s denominator is 0 (all ignored: the 1/0 would meet the z-loss's w_y = 0)
        per = torch.where(valid, per, 0.0)
    if red != "none":
        per = per.sum()
        if red == "mean":
            per = per / denom
    return per if opts.out_dtype is None else per.to(opts.out_dtype)


def call(
    fn: str,
    compose: Callable[[], Tensor],
    target: Tensor,
    num_classes: int,
    ignore_index: int,
) -> Tensor:
    """Run ``compose()`` (a composite ``torch.nn.functional`` form); a bad target raises our
    error, not torch's."""
    try:
        out = compose()
    except (IndexError, RuntimeError):
        if not target.is_floating_point() and type(target) is Tensor:
            if target.device.type == "cpu":
                _ops.check_targets(target, num_classes, ignore_index, fn)
        raise
    return out
