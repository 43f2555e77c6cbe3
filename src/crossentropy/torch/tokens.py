r"""Per-token statistics with exact gradients, from logits or from ``(hidden, weight)``.

:func:`token_stats` and :func:`linear_token_stats` return, for every target position, the
log-probability of the target, the entropy, the log-sum-exp and the argmax of the softmax:
what RL fine-tuning of language models (PPO, GRPO) optimises and logs. A policy-gradient loss
with an entropy bonus is then

.. code-block:: python

    out = linear_token_stats(hidden, lm_head.weight, tokens, ignore_index=-100)
    loss = -(advantage * out.logprob).mean() - beta * out.entropy.mean()
    loss.backward()   # exact d hidden and d weight, one chunk of logits in memory

:func:`linear_token_stats` never materialises the (N, C) logits: the forward keeps four
numbers per row, and backward recomputes each chunk of logits and applies the closed-form
vector-Jacobian product of :func:`crossentropy.tokens.token_stats_vjp`,

.. math::

    G = a\,(e_y - p) - b\,p \odot (\log p + H) + c\,p, \qquad
    \frac{\partial L}{\partial h} = G W, \quad
    \frac{\partial L}{\partial W} = G^\top h, \quad
    \frac{\partial L}{\partial b} = \textstyle\sum_i G_i,

with :math:`a, b, c` the upstream gradients of ``logprob``, ``entropy`` and ``lse`` (an output
the loss does not use has none, and its term is skipped).

Softcap. With ``softcap=s`` every statistic is that of the capped logits
:math:`z' = s \tanh(z / s)` (Gemma 2's ``final_logit_softcapping``, Liger's and Apple CCE's
``softcap``), applied chunk by chunk like everything else, and the gradient gains the chain
factor of the cap, :math:`G \odot (1 - (z'/s)^2)`, before the projection.

Names. The fields are ``logprob``, ``entropy``, ``lse`` and ``argmax`` (see
:mod:`crossentropy.tokens` for the table): ``logprob`` is verl's ``log_probs``
(``logprobs_from_logits``) and TRL's ``per_token_logps`` (``selective_log_softmax``), in the
singular because each entry is one token's value; ``entropy`` is both libraries'
``entropy_from_logits``. ``target`` is the argument name of
:func:`crossentropy.torch.cross_entropy` (verl says ``labels``, TRL ``index``). The classes
are the last dimension.

Differentiability. ``logprob``, ``entropy`` and ``lse`` are differentiable (``lse`` is what
the PaLM z-loss squares); ``argmax`` is marked non-differentiable. ``argmax`` is int64; the
three differentiable outputs are float32 for float16/bfloat16/float32 inputs and float64 for
float64 (unlike the NumPy core, which returns the input's dtype: a bfloat16 log-probability
has 3 significant digits, too few for an importance ratio). Low-precision inputs run the
matmul in their dtype, as ``F.linear`` does, and every softmax statistic in float32; the
gradients come back in the inputs' dtypes.

Double backward (``create_graph=True``, ``gradgradcheck``) recomputes the logits with
differentiable torch ops and differentiates the closed form; under ``torch.func`` transforms
(``grad``, ``vmap``, ``jacrev``, forward-mode AD) both functions are the plain composition of
``F.linear``, ``logsumexp`` and ``gather``. Each kernel is a ``torch.library.custom_op`` with
a fake implementation, so ``torch.compile(fullgraph=True)`` sees no graph break.
"""

import numbers
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import fail
from . import _kernels as K
from ._checks import check_chunk_size, check_projection, check_softcap, check_tensor, describe
from ._ops import check_targets
from .functional import (
    _autocast_on,
    _autocast_projection,
    _differentiable_backward,
    _NoAutocast,
    _reference_call,
    _transforms_active,
)

__all__ = ["TokenStats", "linear_token_stats", "token_stats"]

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1

#: Part of the custom ops' names (this module's own; :data:`._ops.OP_VERSION` names the loss
#: ops). Compiled-graph caches key on op names: bump it whenever an op's arguments, outputs or
#: meaning change. 2: ``softcap``.
_OP_VERSION = 2


class TokenStats(NamedTuple):
    """Per-token statistics, each of the target's shape.

    ``z`` is the logits, or the softcapped logits ``s·tanh(z / s)`` with ``softcap=s``.

    Attributes
    ----------
    logprob : Tensor
        ``log softmax(z)[target]`` (0 where the target is ``ignore_index``); differentiable.
    entropy : Tensor
        ``-Σ_c p_c log p_c`` in nats, in ``[0, log C]``; differentiable.
    lse : Tensor
        ``logsumexp(z)``; differentiable.
    argmax : Tensor, int64
        The index of the largest logit; not differentiable.
    """

    logprob: Tensor
    entropy: Tensor
    lse: Tensor
    argmax: Tensor


# --------------------------------------------------------------------------- row formulas


def _softcap_rows(z: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """``(z', t)`` in differentiable torch ops: ``z' = s·tanh(z / s)`` and ``t = tanh(z / s)``
    (so ``∂z'/∂z = 1 − t²``), or ``(z, None)`` without softcap."""
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t


def _reference_rows(z: Tensor, target: Tensor, ignore_index: int) -> TokenStats:
    """The statistics of rows ``z`` (R, C) in plain differentiable torch ops."""
    lse = torch.logsumexp(z, dim=-1)
    log_p = z - lse.unsqueeze(-1)
    p = log_p.exp()
    # 0 · log 0 = 0: a -inf logit adds nothing (and its gradient is 0, not NaN).
    entropy = -(p * torch.where(p == 0, 0.0, log_p)).sum(-1)
    keep = target != ignore_index
    idx = torch.where(keep, target, 0).unsqueeze(-1)
    logprob = torch.where(keep, log_p.gather(-1, idx).squeeze(-1), 0.0)
    return TokenStats(logprob, entropy, lse, z.argmax(dim=-1))


def _vjp_rows(
    z: Tensor,
    target: Tensor,
    ignore_index: int,
    d_logprob: Tensor | None,
    d_entropy: Tensor | None,
    d_lse: Tensor | None,
) -> Tensor:
    """``G = a'(e_y − p) − b p ⊙ (log p + H) + c p`` in differentiable torch ops (for double
    backward and vmapped backward): ``lse`` and ``H`` are recomputed from ``z``."""
    log_p = z - torch.logsumexp(z, dim=-1, keepdim=True)
    p = log_p.exp()
    coef = torch.zeros_like(log_p[..., :1])
    if d_lse is not None:
        coef = coef + d_lse.unsqueeze(-1)
    keep = target != ignore_index
    a = None
    if d_logprob is not None:
        a = torch.where(keep, d_logprob, 0.0).unsqueeze(-1)
        coef = coef - a
    if d_entropy is not None:
        safe = torch.where(p == 0, 0.0, log_p)
        h = -(p * safe).sum(-1, keepdim=True)
        coef = coef - d_entropy.unsqueeze(-1) * (safe + h)
    g = p * coef
    if a is not None:
        g = g.scatter_add(-1, torch.where(keep, target, 0).unsqueeze(-1), a)
    return g


def _stats_chunk(
    z: Tensor,
    target: Tensor,
    ignore_index: int,
    out: tuple[Tensor, Tensor, Tensor, Tensor],
    writable: bool,
    softcap: float | None,
) -> None:
    """Write the statistics of a chunk of rows ``z`` (R, C), compute dtype, into ``out``: of
    ``z' = s·tanh(z / s)`` with ``softcap=s``.

    ``log p`` is computed in ``z``'s own buffer when ``writable`` (a chunk of logits this
    function owns), so the temporaries are one chunk (``p``) besides ``z``; else two.
    """
    logprob, entropy, lse, argmax = out
    if softcap is not None:  # z' in z's buffer when it is ours, else in a new one (then ours)
        z = z.div_(softcap) if writable else z / softcap
        z = z.tanh_().mul_(softcap)
        writable = True
    torch.argmax(z, dim=-1, out=argmax)
    m = z.amax(dim=-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)  # a row of only -inf: no -inf - -inf here
    log_p = z.sub_(m) if writable else z - m  # max shift: exp never overflows
    p = log_p.exp()
    s = p.sum(dim=-1, keepdim=True)
    log_s = s.log()
    torch.add(m, log_s, out=lse.unsqueeze(-1))  # lse = m + log Σ e^{z − m}
    log_p.sub_(log_s)
    p.div_(s)
    keep = target != ignore_index
    picked = log_p.gather(-1, torch.where(keep, target, 0).unsqueeze(-1)).squeeze(-1)
    logprob.copy_(picked.masked_fill_(~keep, 0.0))
    # 0 · log 0 = 0: a -inf logit (log p = -inf) becomes the most negative finite number, and
    # 0 times it is 0; NaN (a row of only -inf logits) stays NaN.
    log_p.clamp_(min=torch.finfo(log_p.dtype).min)
    torch.sum(p.mul_(log_p), dim=-1, out=entropy)
    entropy.neg_()


def _vjp_chunk(
    z: Tensor,
    target: Tensor,
    ignore_index: int,
    lse: Tensor,
    entropy: Tensor,
    d_logprob: Tensor | None,
    d_entropy: Tensor | None,
    d_lse: Tensor | None,
    writable: bool,
    softcap: float | None,
) -> Tensor:
    """``G = ∂L/∂z`` of a chunk (R, C) from the saved ``lse`` and ``entropy``. ``log p`` goes
    into ``z``'s buffer when ``writable``, ``p`` and then ``G`` into one more chunk. The upstream
    gradients are rows (R,) or ``None``.

    With ``softcap=s`` the statistics are of ``z' = s·tanh(z / s)``: ``t = tanh(z / s)`` takes
    ``z``'s buffer (when ``writable``), ``z' = s·t`` a new one, and ``G`` (of ``z'``) is
    multiplied by ``∂z'/∂z = 1 − t²`` at the end (torch's tanh backward): one chunk more.
    """
    t = None
    if softcap is not None:
        t = z.div_(softcap) if writable else z / softcap
        t.tanh_()
        z, writable = t * softcap, True
    log_p = z.sub_(lse.unsqueeze(-1)) if writable else z - lse.unsqueeze(-1)
    p = log_p.exp()
    keep = target != ignore_index
    a = None if d_logprob is None else torch.where(keep, d_logprob, 0.0)
    row = torch.zeros_like(lse)  # the per-row part of the coefficient: c − a'
    if d_lse is not None:
        row += d_lse
    if a is not None:
        row -= a
    if d_entropy is None:
        g = p.mul_(row.unsqueeze(-1))
    else:
        # 0 · log 0 = 0: where p is 0 (a -inf logit) its log p is unused; 0 keeps b·(log p + H)
        # finite for any upstream b (a clamped -max times |b| > 1 would overflow to inf).
        coef = log_p.masked_fill_(p == 0, 0.0)
        coef.add_(entropy.unsqueeze(-1)).mul_(-d_entropy.unsqueeze(-1)).add_(row.unsqueeze(-1))
        g = p.mul_(coef)
    if a is not None:
        g.scatter_add_(-1, torch.where(keep, target, 0).unsqueeze(-1), a.unsqueeze(-1))
    if t is not None:
        g.mul_(t.square_().neg_().add_(1.0))  # ∂z'/∂z = 1 − t²
    return g


def _chunk_rows(num_classes: int, dtype: torch.dtype, chunk: int) -> int:
    return chunk or K.default_chunk_rows(num_classes, torch.empty((), dtype=dtype).element_size())


def _logits_chunk(
    x: Tensor, weight: Tensor | None, bias: Tensor | None, r0: int, r1: int
) -> tuple[Tensor, bool]:
    """Rows ``r0:r1`` of the logits in compute dtype: ``x`` itself, or ``x @ weight.T + bias``
    (the matmul in the inputs' dtype, as ``F.linear``); and whether the chunk is a new
    tensor (not the caller's logits), which the kernels may overwrite."""
    cdt = K.compute_dtype(x.dtype)
    if weight is None:
        return x[r0:r1].to(cdt), x.dtype != cdt
    return F.linear(x[r0:r1], weight, bias).to(cdt), True


# --------------------------------------------------------------------------- custom ops


@torch.library.custom_op(f"crossentropy::token_stats_forward_v{_OP_VERSION}", mutates_args=())
def _forward_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    target: Tensor,
    ignore_index: int,
    chunk_size: int,
    softcap: float | None,
    fn: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(logprob, entropy, lse, argmax)`` of the rows of the logits ``x`` (R, C), or of
    ``x @ weight.T + bias`` for hidden states ``x`` (R, D), softcapped if ``softcap``, chunk by
    chunk."""
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    check_targets(target, num_classes, ignore_index, fn)
    rows, cdt = x.shape[0], K.compute_dtype(x.dtype)
    out = (
        x.new_empty(rows, dtype=cdt),
        x.new_empty(rows, dtype=cdt),
        x.new_empty(rows, dtype=cdt),
        x.new_empty(rows, dtype=torch.int64),
    )
    step = _chunk_rows(num_classes, cdt, chunk_size)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        z, fresh = _logits_chunk(x, weight, bias, r0, r1)
        rows_out = tuple(o[r0:r1] for o in out)
        _stats_chunk(z, target[r0:r1], ignore_index, rows_out, fresh, softcap)  # type: ignore[arg-type]
    return out


@_forward_op.register_fake
def _(x, weight, bias, target, ignore_index, chunk_size, softcap, fn):  # type: ignore[no-untyped-def]
    rows, cdt = x.shape[0], K.compute_dtype(x.dtype)
    f = x.new_empty(rows, dtype=cdt)
    return f, torch.empty_like(f), torch.empty_like(f), x.new_empty(rows, dtype=torch.int64)


@torch.library.custom_op(f"crossentropy::token_stats_backward_v{_OP_VERSION}", mutates_args=())
def _backward_op(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    target: Tensor,
    lse: Tensor,
    entropy: Tensor,
    d_logprob: Tensor | None,
    d_entropy: Tensor | None,
    d_lse: Tensor | None,
    ignore_index: int,
    chunk_size: int,
    softcap: float | None,
    need_x: bool,
    need_weight: bool,
    need_bias: bool,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``x`` (logits or hidden states), ``weight`` and ``bias`` of
    ``Σ a·logprob + b·entropy + c·lse``, recomputing each chunk of logits. Returned in the
    inputs' dtypes; a gradient not needed is an empty tensor."""
    rows, cdt = x.shape[0], K.compute_dtype(x.dtype)
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    need_weight = need_weight and weight is not None
    need_bias = need_bias and bias is not None
    dx = x.new_empty(x.shape) if need_x else x.new_empty(0)  # every row is written below
    dw = weight.new_zeros(weight.shape, dtype=cdt) if need_weight and weight is not None else None
    db = bias.new_zeros(bias.shape, dtype=cdt) if need_bias and bias is not None else None
    ups = [None if d is None else d.to(cdt) for d in (d_logprob, d_entropy, d_lse)]
    step = _chunk_rows(num_classes, cdt, chunk_size)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        z, fresh = _logits_chunk(x, weight, bias, r0, r1)
        a, b, c = (None if d is None else d[r0:r1] for d in ups)
        g = _vjp_chunk(
            z, target[r0:r1], ignore_index, lse[r0:r1], entropy[r0:r1], a, b, c, fresh, softcap
        )
        del z
        if weight is None:
            if need_x:
                dx[r0:r1] = g
            continue
        if need_x:
            torch.matmul(g.to(weight.dtype), weight, out=dx[r0:r1])
        if dw is not None:
            dw.addmm_(g.t(), x[r0:r1].to(cdt))
        if db is not None:
            db += g.sum(dim=0)
    dw_out = x.new_empty(0) if dw is None or weight is None else dw.to(weight.dtype)
    db_out = x.new_empty(0) if db is None or bias is None else db.to(bias.dtype)
    return dx, dw_out, db_out


@_backward_op.register_fake
def _(  # type: ignore[no-untyped-def]
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
    need_x,
    need_weight,
    need_bias,
):
    dx = torch.empty_like(x) if need_x else x.new_empty(0)
    dw = torch.empty_like(weight) if need_weight and weight is not None else x.new_empty(0)
    db = torch.empty_like(bias) if need_bias and bias is not None else x.new_empty(0)
    return dx, dw, db


# --------------------------------------------------------------------------- autograd


class _TokenStats(torch.autograd.Function):
    """``token_stats`` of the logits ``x`` (R, C) (``weight is None``), or of
    ``x @ weight.T + bias`` for hidden states ``x`` (R, D). Saves the inputs and two numbers
    per row (``lse``, ``entropy``); backward recomputes the logits chunk by chunk."""

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
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        with _NoAutocast(x):
            logprob, entropy, lse, argmax = _forward_op(
                x, weight, bias, target, ignore_index, chunk_size, softcap, fn
            )
        ctx.save_for_backward(x, weight, bias, target, lse, entropy)
        ctx.options = (ignore_index, chunk_size, softcap)
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
        x, weight, bias, target, lse, entropy = ctx.saved_tensors
        ignore_index, chunk_size, softcap = ctx.options
        need = ctx.needs_input_grad[:3]
        none = (None,) * 5
        if (d_logprob is None and d_entropy is None and d_lse is None) or not any(need):
            return (None, None, None, *none)
        if _differentiable_backward():  # create_graph=True or a vmapped backward
            return (*_differentiable_grads(ctx, d_logprob, d_entropy, d_lse), *none)
        with _NoAutocast(x):
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
            )
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
    x, weight, bias, target, _, _ = ctx.saved_tensors
    ignore_index, _, softcap = ctx.options
    need = ctx.needs_input_grad[:3]
    cdt = K.compute_dtype(x.dtype)
    with _NoAutocast(x):
        z, t = _softcap_rows((x if weight is None else F.linear(x, weight, bias)).to(cdt), softcap)
        ups = [None if d is None else d.to(cdt) for d in (d_logprob, d_entropy, d_lse)]
        g = _vjp_rows(z, target, ignore_index, *ups)
        if t is not None:
            g = g * (1 - t * t)  # ∂z'/∂z of the softcap
        if weight is None:
            return (g.to(x.dtype) if need[0] else None), None, None
        gl = g.to(weight.dtype)
        dx = gl @ weight if need[0] else None
        dw = (g.t() @ x.to(cdt)).to(weight.dtype) if need[1] else None
        db = g.sum(dim=0).to(bias.dtype) if bias is not None and need[2] else None
    return dx, dw, db


# --------------------------------------------------------------------------- public


def _check_ignore_index(fn: str, ignore_index: object) -> int:
    value = ignore_index
    if isinstance(value, Tensor) and value.dim() == 0 and not value.is_floating_point():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        fail(fn, "ignore_index", "be an integer", describe(ignore_index), TypeError)
    if not _INT64_MIN <= int(value) <= _INT64_MAX:
        fail(fn, "ignore_index", "fit in int64", int(value))
    return int(value)


def _check_target(fn: str, target: object, x: Tensor, x_arg: str, what: str) -> Tensor:
    t = check_tensor(fn, "target", target, floating=False)
    if tuple(t.shape) != tuple(x.shape[:-1]):
        fail(fn, "target", f"have shape {tuple(x.shape[:-1])} ({what})", f"shape {tuple(t.shape)}")
    if t.device != x.device:
        fail(fn, "target", f"be on {x_arg}' device {x.device}", f"device {t.device}")
    return t


def _finish(out: tuple[Tensor, ...], shape: tuple[int, ...]) -> TokenStats:
    logprob, entropy, lse, argmax = (o.reshape(shape) for o in out)
    return TokenStats(logprob, entropy, lse, argmax)


def _reference(
    fn: str,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    t: Tensor,
    ignore: int,
    softcap: float | None,
) -> tuple[Tensor, ...]:
    """The plain composition (``torch.func`` transforms): every op has its batching and jvp
    rules."""
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    cdt = K.compute_dtype(x.dtype)

    def call() -> Tensor:
        z, _ = _softcap_rows((x if weight is None else F.linear(x, weight, bias)).to(cdt), softcap)
        return torch.stack(_reference_rows(z, t, ignore)[:3]), z.argmax(dim=-1)  # type: ignore[return-value]

    with _NoAutocast(x):
        stacked, argmax = _reference_call(fn, call, t, num_classes, ignore)
    return (*stacked.unbind(0), argmax)


def token_stats(
    logits: Tensor, target: Tensor, *, ignore_index: int = -100, softcap: float | None = None
) -> TokenStats:
    r"""Per-token log-probability of ``target``, entropy, log-sum-exp and argmax of ``logits``.

    Parameters
    ----------
    logits : Tensor, shape ``(*, C)``
        Unnormalised log-probabilities, the classes last; any floating dtype.
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    ignore_index : int, default -100
        A target with no log-probability: its ``logprob`` is 0 and contributes no gradient.
        ``entropy``, ``lse`` and ``argmax`` do not depend on the target and are computed at
        every position (mask them in your loss as you mask the log-probabilities).
    softcap : float, optional
        ``s > 0``: every statistic is that of the capped logits ``z' = s·tanh(z / s)``
        (Gemma 2's ``final_logit_softcapping``, 30.0 there). ``None`` (default): ``z' = z``.

    Returns
    -------
    TokenStats
        ``(logprob, entropy, lse, argmax)``, each of shape ``(*)``: float32 for float16,
        bfloat16 and float32 logits, float64 for float64; ``argmax`` int64 and not
        differentiable.

    Raises
    ------
    TypeError
        ``logits`` not a floating tensor, ``target`` not an integer tensor, ``ignore_index``
        not an integer, ``softcap`` not a real number.
    ValueError
        0-d ``logits`` or no classes; ``target`` of the wrong shape or device; on CPU, a target
        outside ``[0, C)`` that is not ``ignore_index`` (elsewhere a device-side assertion);
        ``softcap`` not finite or not ``> 0``.

    Notes
    -----
    Equal to the composition (``p = softmax(z)``, and with ``softcap=s`` first
    ``z = s * torch.tanh(z / s)``)::

        lse = z.logsumexp(-1)
        logprob = (z.log_softmax(-1).gather(-1, y[..., None])[..., 0]).where(y != ignore, 0)
        entropy = -(p * log p).sum(-1)            # with 0 · log 0 = 0
        argmax = z.argmax(-1)

    but backward does not keep ``softmax(z)``: it saves two numbers per row and recomputes
    ``p = exp(z − lse)`` chunk by chunk, giving ``G = a(e_y − p) − b p ⊙ (log p + H) + c p`` for
    upstream gradients ``a``, ``b``, ``c`` of ``logprob``, ``entropy``, ``lse`` (see
    :func:`crossentropy.tokens.token_stats_vjp`). Memory above the logits: the gradient and
    two chunks. ``-inf`` logits (masked vocabulary) add nothing to the entropy and get zero
    gradient; ``+inf`` logits give NaN, as ``F.log_softmax`` does.

    With ``softcap=s`` the gradient w.r.t. the raw logits chains through the cap:

    .. math::

        z' = s \tanh(z / s), \qquad
        \frac{\partial L}{\partial z} = G' \odot \Big(1 - \big(z'/s\big)^2\Big),

    with :math:`G'` the formula above at :math:`z'` (``p = softmax(z')``). The cap is bounded:
    a ``-inf`` logit becomes ``-s``, so it is no longer masked (its probability is
    :math:`\propto e^{-s}`; to mask classes, cap the logits yourself, set the masked ones to
    ``-inf`` and pass ``softcap=None``), and ``+inf`` becomes ``s``. Memory: one more chunk in
    backward (``tanh(z / s)``, for the chain factor).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch.tokens import token_stats
    >>> z = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> out = token_stats(z, torch.tensor([0, -100]))
    >>> out.logprob.detach(), out.entropy.detach(), out.argmax
    (tensor([-0.4170,  0.0000]), tensor([0.8467, 1.0986]), tensor([0, 0]))
    >>> out.logprob.sum().backward()
    >>> z.grad  # e_y − p, and 0 for the ignored row
    tensor([[ 0.3410, -0.2424, -0.0986],
            [ 0.0000,  0.0000,  0.0000]])
    """
    fn = "token_stats"
    x = check_tensor(fn, "logits", logits, floating=True)
    if x.dim() == 0:
        fail(fn, "logits", "have shape (*, C) with at least 1 dimension (classes)", "shape ()")
    if x.shape[-1] == 0:
        fail(fn, "logits", "have at least one class (C >= 1)", f"shape {tuple(x.shape)}")
    t = _check_target(fn, target, x, "logits", "logits' shape without the classes")
    ignore = _check_ignore_index(fn, ignore_index)
    cap = check_softcap(fn, softcap)
    lead = tuple(t.shape)
    x2 = x.reshape(-1, x.shape[-1])
    t1 = t.reshape(-1).to(torch.int64)
    if _transforms_active():
        return _finish(_reference(fn, x2, None, None, t1, ignore, cap), lead)
    out = _TokenStats.apply(x2, None, None, t1, ignore, 0, cap, fn)  # type: ignore[no-untyped-call]
    return _finish(out, lead)


def linear_token_stats(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    softcap: float | None = None,
) -> TokenStats:
    r""":func:`token_stats` of ``hidden @ weight.T + bias`` without materialising the logits.

    Parameters
    ----------
    hidden : Tensor, shape ``(*, D)``
        Last hidden states, floating dtype.
    weight : Tensor, shape ``(C, D)``
        Output projection (the LM head), ``hidden``'s dtype and device.
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    bias : Tensor, shape ``(C,)``, optional
        Output bias, ``hidden``'s dtype and device.
    ignore_index : int, default -100
        As in :func:`token_stats`.
    chunk_size : int, optional
        Rows of logits alive at a time. Default: about 48 MiB of compute-dtype logits.
    softcap : float, optional
        ``s > 0``: the statistics of ``s·tanh(z / s)``, ``z = hidden @ weight.T + bias``,
        applied chunk by chunk (the capped logits are never materialised either).

    Returns
    -------
    TokenStats
        As :func:`token_stats`, each of shape ``(*)``: float32 for float16, bfloat16 and
        float32 inputs (float64 for float64); ``argmax`` int64, not differentiable.

    Raises
    ------
    TypeError
        Non-tensor arguments; ``hidden`` not floating, ``weight``/``bias`` of another dtype,
        ``target`` not integer; ``chunk_size`` not an integer; ``softcap`` not a real number.
    ValueError
        Shapes that do not match; tensors on different devices; ``chunk_size < 1``; ``softcap``
        not finite or not ``> 0``; on CPU, a target out of range.

    Notes
    -----
    With ``z = h Wᵀ + b`` and ``G = ∂L/∂z`` the closed form of :func:`token_stats` (computed
    chunk by chunk from the chunk's logits and the saved per-row ``lse`` and entropy; with
    ``softcap=s``, the statistics' closed form at ``z' = s·tanh(z / s)`` times
    ``1 − (z'/s)²``):

    .. math::
        \frac{\partial L}{\partial h} = G W, \qquad
        \frac{\partial L}{\partial W} = G^\top h, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_i G_i .

    The forward is one matmul per chunk and keeps four numbers per row; backward is three
    (recompute the chunk, ``d hidden``, ``d weight``). Memory held between forward and
    backward: the inputs and four (N,) statistics. During each pass: one chunk of logits
    (``log p`` is written over it) and one more chunk-sized buffer (``p``, then ``G``), plus a
    low-precision copy of ``G`` for bfloat16/float16; backward adds the gradients (``d weight``
    and ``d bias`` accumulated in float32 for low-precision inputs); ``softcap`` adds one
    chunk-sized buffer to backward (``tanh(z / s)``, for the chain factor). Under autocast,
    ``hidden``, ``weight`` and ``bias`` are first cast to the autocast dtype, as ``F.linear``
    would. Double backward materialises the logits once and
    differentiates the closed form; ``torch.func`` transforms use the plain composition.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch.tokens import linear_token_stats
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    >>> out = linear_token_stats(h, W, torch.tensor([0, 1, 2]), chunk_size=2)
    >>> out.logprob.detach(), out.argmax
    (tensor([-0.4076, -0.7586, -1.8620]), tensor([0, 1, 0]))
    >>> advantage, beta = torch.tensor([1.0, -0.5, 2.0]), 0.01
    >>> loss = -(advantage * out.logprob).mean() - beta * out.entropy.mean()
    >>> loss.backward()
    >>> W.grad.shape, h.grad.shape
    (torch.Size([3, 2]), torch.Size([3, 2]))
    """
    fn = "linear_token_stats"
    h = check_tensor(fn, "hidden", hidden, floating=True)
    if h.dim() == 0:
        fail(fn, "hidden", "have at least 1 dimension (features)", "shape ()")
    if _autocast_on(h):
        h, weight, bias = _autocast_projection(h, weight, bias)
    w, b = check_projection(fn, h, weight, bias)
    if b is not None and b.device != h.device:
        fail(fn, "bias", f"be on hidden's device {h.device}", f"device {b.device}")
    if w.shape[0] == 0:
        fail(fn, "weight", "have at least one class (C >= 1)", f"shape {tuple(w.shape)}")
    t = _check_target(fn, target, h, "hidden", "hidden's shape without the features")
    ignore = _check_ignore_index(fn, ignore_index)
    chunk = check_chunk_size(fn, chunk_size) or 0
    cap = check_softcap(fn, softcap)
    lead = tuple(t.shape)
    h2 = h.reshape(-1, h.shape[-1])
    t1 = t.reshape(-1).to(torch.int64)
    if _transforms_active():
        return _finish(_reference(fn, h2, w, b, t1, ignore, cap), lead)
    out = _TokenStats.apply(h2, w, b, t1, ignore, chunk, cap, fn)  # type: ignore[no-untyped-call]
    return _finish(out, lead)
