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

Kernels. ``impl`` chooses them as for :func:`crossentropy.torch.cross_entropy`: torch ops (the
tiled passes here), or on CUDA Triton kernels, one program per row, online over chunks of
classes (each chunk of :func:`linear_token_stats`'s logits computed by the same matmul and
passed to them).
"""

from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import fail
from . import _dtensor
from . import _kernels as K
from . import _reference as R
from ._backend import select
from ._checks import (
    check_chunk_size,
    check_ignore_index,
    check_impl,
    check_projection,
    check_softcap,
    check_temperature,
    check_tensor,
)
from ._modes import (
    autocast_on,
    autocast_projection,
    differentiable_backward,
    no_autocast,
    transforms_active,
)
from ._ops import check_targets
from ._rows import softcapped, token_finish
from ._shard import combine_token_partials, reduce_sum, refuse_double_backward
from ._types import OP_VERSION, Shard, tuning

__all__ = ["TokenStats", "linear_token_stats", "token_stats"]


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


def _dead_rows(z: Tensor, keep: Tensor) -> Tensor:
    """The ignored rows of ``z`` (R, C) whose logits are all ``-inf``, as an (R, 1) mask.

    Such a row has no distribution (``lse = -inf``, ``H`` NaN, every ``z − lse`` NaN), and
    being ignored it has no log-probability either: its gradient is 0 whatever the upstream
    (a NaN would reach the inputs through ``0 · NaN``, and a projection's ``d weight`` sums
    over every row)."""
    return (~keep & (z.detach().amax(dim=-1) == float("-inf"))).unsqueeze(-1)


def _reference_rows(z: Tensor, target: Tensor, ignore_index: int) -> TokenStats:
    """The statistics of rows ``z`` (R, C) in plain differentiable torch ops."""
    keep = target != ignore_index
    dead = _dead_rows(z, keep)
    # An ignored row of only -inf logits is computed on zeros (its gradient: 0, not NaN) and
    # its values put back below: lse = -inf, entropy NaN.
    zs = torch.where(dead, 0.0, z)
    lse = torch.logsumexp(zs, dim=-1)
    log_p = zs - lse.unsqueeze(-1)
    p = log_p.exp()
    # 0 · log 0 = 0: a -inf logit adds nothing (and its gradient is 0, not NaN).
    entropy = -(p * torch.where(p == 0, 0.0, log_p)).sum(-1)
    idx = torch.where(keep, target, 0).unsqueeze(-1)
    logprob = torch.where(keep, log_p.gather(-1, idx).squeeze(-1), 0.0)
    dead = dead.squeeze(-1)
    lse = torch.where(dead, float("-inf"), lse)
    entropy = torch.where(dead, float("nan"), entropy)
    return TokenStats(logprob, entropy, lse, z.argmax(dim=-1))


def _log_softmax_rel(z: Tensor) -> Tensor:
    """``log softmax(z)`` of rows (R, C) as ``(z − m) − log Σ e^{z − m}``, ``m`` the row max
    (0 where it is infinite) taken as a constant: the same function of ``z`` (and the same
    derivatives), but ``z − lse`` would subtract a rounded ``lse`` from ``z``, and for large
    logits or a confident row (``log Σ e^{z − m} ≪ |m|``) that rounding is most of ``log p``
    at the max (float32 at ``m = 20``: ~``1e-6`` against ``log p ≈ −2e-6``), where the
    entropy's gradient ``−p (log p + H)`` is that small difference."""
    m = z.detach().amax(dim=-1, keepdim=True)
    u = z - torch.where(torch.isinf(m), 0.0, m)
    return u - u.exp().sum(dim=-1, keepdim=True).log()


def _vjp_rows(
    z: Tensor,
    target: Tensor,
    ignore_index: int,
    d_logprob: Tensor | None,
    d_entropy: Tensor | None,
    d_lse: Tensor | None,
) -> Tensor:
    """``G = a'(e_y − p) − b p ⊙ (log p + H) + c p`` in differentiable torch ops (for double
    backward and vmapped backward): ``lse`` and ``H`` are recomputed from ``z``. An ignored
    row of only ``-inf`` logits gets ``G = 0``."""
    keep = target != ignore_index
    dead = _dead_rows(z, keep)
    z = torch.where(dead, 0.0, z)
    log_p = _log_softmax_rel(z)
    p = log_p.exp()
    coef = torch.zeros_like(log_p[..., :1])
    if d_lse is not None:
        coef = coef + d_lse.unsqueeze(-1)
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
    return torch.where(dead, 0.0, g)


def _exp_floor(dtype: torch.dtype) -> float:
    """A finite ``u`` whose ``exp`` is exactly 0 in ``dtype`` (below the smallest subnormal's
    log, -103.3 in float32 and -744.4 in float64): clamping ``u = z − lse`` to it changes no
    probability, and keeps ``0 · u`` = 0 where a logit is ``-inf``."""
    return -2048.0 if dtype == torch.float64 else -256.0


def _like(buf: Tensor, t: Tensor) -> Tensor:
    """The first ``t.numel()`` elements of the flat buffer ``buf`` as a tensor of ``t``'s shape
    and memory order (a column view ``(C, R)`` of row-major rows, or a contiguous tile), so
    elementwise ops between the two walk memory in step."""
    n, r = t.shape
    if t.stride(0) == 1 and r > 1:
        return buf[: n * r].view(r, n).t()
    return buf[: n * r].view(n, r)


def _tiles(classes: int, rows: int) -> int:
    """Classes per tile of a column view ``(C, R)``: about ``Tuning.token_block_elements``
    elements."""
    return max(1, tuning().token_block_elements // max(1, rows))


def _tile_elements(classes: int, rows: int) -> int:
    """Elements of the largest tile of a column view ``(C, R')``, ``R' ≤ rows``: the size of
    the scratch buffers."""
    return min(classes * rows, max(tuning().token_block_elements, rows))


def _row_blocks(classes: int) -> int:
    """Rows per block of caller-owned row-major logits ``(R, C)``."""
    return max(1, tuning().token_block_elements // max(1, classes))


def _scratch(numel: int, dtype: torch.dtype, device: torch.device, need: bool = True) -> Tensor:
    """A flat scratch buffer (empty when ``need`` is false)."""
    return torch.empty(numel if need else 0, dtype=dtype, device=device)


def _reversed_classes(classes: int, dtype: torch.dtype, device: torch.device) -> Tensor | None:
    """``[L, L − 1, …, 1]`` as an ``(L, 1)`` column in ``dtype`` for :func:`_first_max`, or
    ``None`` where that path is not taken (not CPU, or more classes than ``dtype`` counts
    exactly)."""
    exact = 2**53 if dtype == torch.float64 else 2**24
    if device.type != "cpu" or classes > exact:
        return None
    return torch.arange(classes, 0, -1, dtype=dtype, device=device).unsqueeze(-1)


def _first_max(t: Tensor, m: Tensor, tmp: Tensor, rev: Tensor | None) -> Tensor:
    """``t.argmax(0)`` of a tile ``t`` (L, R) with column maxima ``m`` (R,): the first index of
    the max, or of the first NaN in a column with one; ``tmp`` is a scratch tile like ``t``.

    On CPU ``argmax`` (and ``max`` with indices) take a slow unvectorised path: measured ~10×
    ``amax`` on a float32 block of 2**19 elements, as slow as ``exp``. There ``rev`` is given
    and the index comes from three vectorised passes: ``(t ≥ m)`` as 0/1 in ``tmp``, times
    ``L − j``, whose column max is ``L − (first j with t_j = m)``. Columns whose max is NaN
    (nothing is ``≥ NaN``) fall back to ``argmax``.
    """
    size = t.shape[0]
    if rev is None:
        return t.argmax(dim=0)
    score = torch.ge(t, m, out=tmp).mul_(rev[rev.shape[0] - size :]).amax(dim=0)
    first = torch.sub(size, score).to(torch.int64)
    nan = torch.isnan(m)
    if bool(nan.any()):
        first = torch.where(nan, t.argmax(dim=0), first)
    return first


def _in_tile(idx: Tensor, c0: int, c1: int) -> tuple[Tensor, Tensor]:
    """(``idx − c0`` clamped into the tile ``[c0, c1)`` as a (1, R) index; whether it lies
    there)."""
    local = idx - c0
    inside = (local >= 0) & (local < c1 - c0)
    return local.clamp(0, c1 - c0 - 1).unsqueeze(0), inside


def _stats_columns(
    zt: Tensor,
    target: Tensor,
    out: tuple[Tensor, ...],
    softcap: float | None,
    work: Tensor | None,
    tmp: Tensor,
    class_offset: int = 0,
    temperature: float = 1.0,
) -> None:
    """The partial sums of the rows of the logits, given as a column view ``zt`` (C, R) with
    ``C ≥ 1``, into ``out``; of ``z' = s·tanh(z / s)`` with ``softcap=s``, divided by
    ``temperature``.

    Two sweeps over tiles of classes, as a two-pass log-sum-exp: the first finds each row's
    max ``m`` (and argmax, and the target's logit ``z_y``: the column ``target −
    class_offset``, 0 where that is not a column), the second sums ``e = exp(u)``, ``u = z − r``
    (``r = m``, or 0 where ``m`` is not finite): ``s = Σ e`` and ``spread = −Σ e u ≥ 0``.
    :func:`._rows.token_finish` turns ``(m, s, spread, z_y, argmax)`` into the statistics. A
    tile is processed in place when ``work`` is ``None`` (``zt`` is a compute-dtype buffer of
    ours; it is overwritten), else copied into ``work`` (flat, compute dtype) in each sweep
    (once if there is one tile).
    """
    m_out, s_out, spread_out, zy_out, argmax = out
    classes, rows = zt.shape
    step = _tiles(classes, rows)
    cdt, dev = tmp.dtype, tmp.device
    idx = target - class_offset
    rev = _reversed_classes(min(step, classes), cdt, dev)

    scaled = softcap is not None or temperature != 1.0

    def load(c0: int, c1: int) -> Tensor:
        t = zt[c0:c1]
        if work is not None:
            t = _like(work, t).copy_(t)
        if scaled and (work is not None or first_sweep):
            if softcap is not None:
                t.div_(softcap).tanh_().mul_(softcap)
            if temperature != 1.0:
                t.div_(temperature)
        return t

    first_sweep = True
    zy = torch.zeros(rows, dtype=cdt, device=dev)
    for c0 in range(0, classes, step):
        c1 = min(classes, c0 + step)
        t = load(c0, c1)
        local, inside = _in_tile(idx, c0, c1)
        zy = torch.where(inside, t.gather(0, local).squeeze(0), zy)
        tm = t.amax(dim=0)
        top = _first_max(t, tm, _like(tmp, t), rev) + c0
        if c0 == 0:
            mx, best = tm, top
        else:
            # the first max, NaN counting as the largest (as torch.argmax)
            take = (tm > mx) | (torch.isnan(tm) & ~torch.isnan(mx))
            best = torch.where(take, top, best)
            mx = torch.maximum(mx, tm)
    first_sweep = False
    m = torch.where(torch.isfinite(mx), mx, 0.0)  # a row of only -inf: no -inf - -inf here
    s = eu = None
    for c0 in range(0, classes, step):
        c1 = min(classes, c0 + step)
        if c0 or c1 < classes:  # else the one tile is still in t
            t = load(c0, c1)
        u = t.sub_(m)
        e = torch.exp(u, out=_like(tmp, t))
        s_t = e.sum(dim=0)
        # 0 · log 0 = 0: a -inf logit gives e·u = 0·(-inf) = NaN, which nansum skips. (A NaN
        # or +inf logit makes s NaN or inf, so the row's entropy is NaN either way.)
        eu_t = e.mul_(u).nansum(dim=0)
        s, eu = (s_t, eu_t) if s is None or eu is None else (s + s_t, eu + eu_t)
    assert s is not None and eu is not None
    m_out.copy_(mx)
    s_out.copy_(s)
    torch.neg(eu, out=spread_out)
    zy_out.copy_(zy)
    argmax.copy_(best)


def _vjp_columns(
    src: Tensor,
    dst: Tensor,
    target: Tensor,
    ignore_index: int,
    lse: Tensor,
    entropy: Tensor,
    ups: list[Tensor | None],
    softcap: float | None,
    work: Tensor | None,
    tmp: Tensor,
    tmp2: Tensor,
    lse_lo: Tensor | None = None,
    class_offset: int = 0,
    temperature: float = 1.0,
) -> None:
    """``G = ∂L/∂z`` of the logits ``src`` into ``dst``, both column views (C, R) (``dst`` may
    be ``src``; column ``j`` is class ``class_offset + j``), from the saved ``lse`` (with its
    rounding error ``lse_lo``: ``log p = (z − lse) − lse_lo``) and ``entropy``, tile by tile of
    classes:
    ``G = p ⊙ (c − a − b (log p + H))`` plus ``a`` at the target, for the upstream ``a, b, c``
    of ``logprob``, ``entropy``, ``lse`` (``None``: no term).

    A tile is computed in place in ``dst`` when ``dst`` is of compute dtype, else in ``work``
    and then copied (rounded) into ``dst``: ``work`` is a flat tile-sized buffer, or a column
    view like ``dst`` in compute dtype (that keeps ``G`` unrounded). ``tmp`` and ``tmp2`` are
    flat tile-sized scratch (``p``; with ``softcap`` the capped logits' ``G`` and ``p``).

    With ``softcap=s`` the statistics are of ``z' = s·t``, ``t = tanh(z / s)``: the tile keeps
    ``∂z'/∂z = 1 − t²`` (torch's tanh backward) while ``G`` of ``z'`` is formed in ``tmp``,
    and their product is written back.
    """
    classes, rows = src.shape
    step = _tiles(classes, rows)
    keep = target != ignore_index
    idx = target - class_offset
    # An ignored row of only -inf logits (lse = -inf, entropy NaN: no distribution) gets G = 0
    # for any upstream: with lse and H taken as 0 its every p = exp(-inf) is 0 (z − lse would
    # be NaN, and 0 · NaN reaches d hidden and d weight).
    dead = ~keep & (lse == float("-inf"))
    lse = torch.where(dead, 0.0, lse)
    entropy = torch.where(dead, 0.0, entropy)
    d_logprob, d_entropy, d_lse = ups
    a = None if d_logprob is None else torch.where(keep, d_logprob, 0.0)
    row = torch.zeros_like(lse)  # the per-row part of the coefficient: c − a
    if d_lse is not None:
        row += d_lse
    if a is not None:
        row -= a
    nb = None if d_entropy is None else -d_entropy
    k = row if nb is None else row + nb * entropy  # the per-row part with the entropy's
    direct = dst.dtype == lse.dtype
    floor = _exp_floor(lse.dtype)
    for c0 in range(0, classes, step):
        c1 = min(classes, c0 + step)
        if direct:
            w = dst[c0:c1]
        elif work is not None and work.dim() == 2:
            w = work[c0:c1]
        else:
            w = _like(work, src[c0:c1])  # type: ignore[arg-type]
        if not (direct and src is dst):
            w.copy_(src[c0:c1])
        if softcap is None:
            u = (w if temperature == 1.0 else w.div_(temperature)).sub_(lse)
            p_buf = tmp
        else:
            t = w.div_(softcap).tanh_()
            u = torch.mul(t, softcap, out=_like(tmp, t))
            if temperature != 1.0:
                u.div_(temperature)
            u.sub_(lse)
            t.square_().neg_().add_(1.0)  # w: ∂z'/∂z = 1 − t²
            p_buf = tmp2
        if lse_lo is not None:
            u.sub_(lse_lo)  # log p
        if nb is None:
            g = u.exp_().mul_(row)
        else:
            # 0 · log 0 = 0: where p is 0 (a -inf logit) log p is clamped to a finite number
            # whose exp is still 0, so b·(log p + H) stays finite for any upstream b: G is 0.
            u.clamp_(min=floor)
            p = torch.exp(u, out=_like(p_buf, u))
            g = torch.addcmul(k, u, nb, out=u).mul_(p)  # (c − a − b H) − b log p, times p
        if a is not None:
            local, inside = _in_tile(idx, c0, c1)
            g.scatter_add_(0, local, torch.where(inside, a, 0.0).unsqueeze(0))
        if softcap is not None:
            w.mul_(g)
        if temperature != 1.0:
            w.div_(temperature)  # ∂(z' / T)/∂z'
        if not direct:
            dst[c0:c1].copy_(w)


def _chunk_rows(num_classes: int, dtype: torch.dtype, chunk: int) -> int:
    return chunk or K.default_chunk_rows(num_classes, torch.empty((), dtype=dtype).element_size())


def _linear_logits_t(h: Tensor, weight: Tensor, bias: Tensor | None, buf: Tensor) -> Tensor:
    """The logits ``h @ weight.T + bias`` of a chunk, transposed: ``weight @ h.T (+ bias)``, a
    contiguous (C, R) tensor in the front of the flat reused buffer ``buf`` (the matmul in the
    inputs' dtype, as ``F.linear``).

    Transposed because that matmul is the faster one: measured at (N, D, V) = (4096, 1024,
    32768) fp32 in 384-row chunks on the 2-core machine, 182-194 GFLOP/s for ``W hᵀ`` against
    153-169 for ``h Wᵀ``; ``d hidden = Gᵀᵀ W`` runs at the same speed either way and
    ``d weight = Gᵀ h`` a little faster."""
    zt = buf[: weight.shape[0] * h.shape[0]].view(weight.shape[0], h.shape[0])
    if bias is None:
        return torch.mm(weight, h.t(), out=zt)
    return torch.addmm(bias.unsqueeze(-1), weight, h.t(), out=zt)


# --------------------------------------------------------------------------- custom ops


def _forward_impl(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    target: Tensor,
    ignore_index: int,
    chunk_size: int,
    softcap: float | None,
    fn: str,
    impl: str = "torch",
    shard_offset: int | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The partial sums ``(m, s, spread, z_y, argmax)`` (:func:`_stats_columns`) of the rows of
    the logits ``x`` (R, C), or of ``x @ weight.T + bias`` for hidden states ``x`` (R, D),
    softcapped if ``softcap``, divided by ``temperature``: chunk by chunk of logits (one reused
    buffer), each chunk tile by tile, or on the Triton kernels where :func:`._backend.select`
    sends ``x`` (:func:`_triton_forward`).

    ``shard_offset``: ``None`` for a whole vocabulary (the targets are checked against it), or
    the global index of the first class of a vocabulary shard (the caller checked the targets
    against the whole vocabulary; ``argmax`` is a column of the shard, and a shard of no class
    gives ``m = -inf``, ``s = spread = z_y = 0``)."""
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    if shard_offset is None:
        check_targets(target, num_classes, ignore_index, fn)
    offset = shard_offset or 0
    rows, cdt, dev = x.shape[0], K.compute_dtype(x.dtype), x.device
    out = (
        x.new_full((rows,), float("-inf"), dtype=cdt),
        x.new_zeros(rows, dtype=cdt),
        x.new_zeros(rows, dtype=cdt),
        x.new_zeros(rows, dtype=cdt),
        x.new_zeros(rows, dtype=torch.int64),
    )
    if num_classes == 0:
        return out
    if select(x, impl) is not None:
        return _triton_forward(
            x, weight, bias, target, offset, chunk_size, softcap, temperature, out
        )
    if weight is None:  # the caller's logits: never written, each block copied into ``work``
        step = _row_blocks(num_classes)
        size = min(rows, step) * num_classes
        block, tmp = _scratch(size, cdt, dev), _scratch(size, cdt, dev)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            w = block[: (r1 - r0) * num_classes].view(r1 - r0, num_classes).copy_(x[r0:r1])
            rows_out = tuple(o[r0:r1] for o in out)
            _stats_columns(w.t(), target[r0:r1], rows_out, softcap, None, tmp, offset, temperature)
        return out
    step = max(1, min(rows, _chunk_rows(num_classes, cdt, chunk_size)))
    buf = x.new_empty(num_classes * step)  # the one chunk of logits, reused
    tile = _tile_elements(num_classes, step)
    work = None if x.dtype == cdt else _scratch(tile, cdt, dev)
    tmp = _scratch(tile, cdt, dev)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        zt = _linear_logits_t(x[r0:r1], weight, bias, buf)
        rows_out = tuple(o[r0:r1] for o in out)
        _stats_columns(zt, target[r0:r1], rows_out, softcap, work, tmp, offset, temperature)
    return out


def _linear_logits(h: Tensor, weight: Tensor, bias: Tensor | None, buf: Tensor) -> Tensor:
    """The logits ``h @ weight.T + bias`` of a chunk as a contiguous (R, C) tensor in the front
    of the flat reused buffer ``buf``: the layout of the Triton kernels, one row per program
    reading contiguous classes (:func:`_linear_logits_t` is the CPU one)."""
    rows, classes = h.shape[0], weight.shape[0]
    return K.linear_logits(h, weight, bias, buf[: rows * classes].view(rows, classes))


def _triton_forward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    target: Tensor,
    offset: int,
    chunk_size: int,
    softcap: float | None,
    temperature: float,
    out: tuple[Tensor, Tensor, Tensor, Tensor, Tensor],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """:func:`_forward_impl` on the Triton kernels (:mod:`._triton_tokens`): the caller's logits
    in one launch, read in place (any strides), or each chunk of ``x @ weight.T + bias`` (one
    reused buffer, the matmul in the inputs' dtype) in one launch per chunk."""
    from . import _triton_tokens as TT

    if weight is None:
        return TT.token_row_stats(
            x, target, class_offset=offset, softcap=softcap, out=out, temperature=temperature
        )
    rows, num_classes = x.shape[0], weight.shape[0]
    step = max(1, min(rows, _chunk_rows(num_classes, out[1].dtype, chunk_size)))
    buf = x.new_empty(num_classes * step)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        z = _linear_logits(x[r0:r1], weight, bias, buf)
        rows_out = tuple(o[r0:r1] for o in out)
        TT.token_row_stats(
            z,
            target[r0:r1],
            class_offset=offset,
            softcap=softcap,
            out=rows_out,  # type: ignore[arg-type]
            temperature=temperature,
        )
    return out


#: The op around :func:`_forward_impl` (kept a plain function too, for the tests' allocation
#: counting: a custom op is opaque to a dispatch mode).
_forward_op = torch.library.custom_op(
    f"crossentropy::token_stats_forward_v{OP_VERSION}", mutates_args=()
)(_forward_impl)


@_forward_op.register_fake
def _(  # type: ignore[no-untyped-def]
    x,
    weight,
    bias,
    target,
    ignore_index,
    chunk_size,
    softcap,
    fn,
    impl="torch",
    shard_offset=None,
    temperature=1.0,
):
    rows, cdt = x.shape[0], K.compute_dtype(x.dtype)
    f = x.new_empty(rows, dtype=cdt)
    i = x.new_empty(rows, dtype=torch.int64)
    return f, torch.empty_like(f), torch.empty_like(f), torch.empty_like(f), i


def _backward_impl(
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
    lse_lo: Tensor | None = None,
    impl: str = "torch",
    shard_offset: int | None = None,
    temperature: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """Gradients w.r.t. ``x`` (logits or hidden states), ``weight`` and ``bias`` of
    ``Σ a·logprob + b·entropy + c·lse``, recomputing each chunk of logits into one reused
    buffer and turning it into ``G`` in place, tile by tile. Returned in the inputs' dtypes; a
    gradient not needed is an empty tensor. ``lse_lo``: the forward's rounding error of
    ``lse`` (``None``: ``lse`` alone, without the correction). ``impl``:
    the Triton kernels where :func:`._backend.select` sends ``x`` (:func:`_triton_backward`).
    ``shard_offset`` as in :func:`_forward_impl`: ``lse``, ``entropy`` and ``lse_lo`` are then
    the whole vocabulary's, and ``x`` (``weight``) holds the shard's classes."""
    rows, cdt, dev = x.shape[0], K.compute_dtype(x.dtype), x.device
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    offset = shard_offset or 0
    ups = [None if d is None else d.to(cdt) for d in (d_logprob, d_entropy, d_lse)]
    if num_classes == 0:  # a shard of no class: its logits have no gradient to give
        return (
            torch.zeros_like(x) if need_x else x.new_empty(0),
            torch.zeros_like(weight) if need_weight and weight is not None else x.new_empty(0),
            torch.zeros_like(bias) if need_bias and bias is not None else x.new_empty(0),
        )
    if select(x, impl) is not None:
        return _triton_backward(
            x,
            weight,
            bias,
            target,
            lse,
            entropy,
            ups,
            ignore_index,
            chunk_size,
            softcap,
            (need_x, need_weight, need_bias),
            lse_lo,
            offset,
            temperature,
        )
    direct = x.dtype == cdt
    if weight is None:
        step = _row_blocks(num_classes)
        tile = min(rows, step) * num_classes
    else:
        step = max(1, min(rows, _chunk_rows(num_classes, cdt, chunk_size)))
        tile = _tile_elements(num_classes, step)
    # Scratch tiles: p for the entropy term; with softcap, G of the capped logits too.
    capped = softcap is not None
    tmp = _scratch(tile, cdt, dev, capped or ups[1] is not None)
    tmp2 = _scratch(tile, cdt, dev, capped and ups[1] is not None)
    if weight is None:
        if not need_x:
            return x.new_empty(0), x.new_empty(0), x.new_empty(0)
        dx = x.new_empty(x.shape)  # every row is written below
        work = _scratch(tile, cdt, dev, not direct)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            _vjp_columns(
                x[r0:r1].t(),
                dx[r0:r1].t(),
                target[r0:r1],
                ignore_index,
                lse[r0:r1],
                entropy[r0:r1],
                [None if d is None else d[r0:r1] for d in ups],
                softcap,
                work,
                tmp,
                tmp2,
                None if lse_lo is None else lse_lo[r0:r1],
                offset,
                temperature,
            )
        return dx, x.new_empty(0), x.new_empty(0)
    need_bias = need_bias and bias is not None
    dx = x.new_empty(x.shape) if need_x else x.new_empty(0)  # every row is written below
    # The first chunk writes d weight (and d bias) with out=: zeroed only if there is none.
    alloc = torch.empty if rows else torch.zeros
    dw = alloc(weight.shape, dtype=cdt, device=dev) if need_weight else None
    db = alloc(num_classes, dtype=cdt, device=dev) if need_bias else None
    buf = x.new_empty(num_classes * step)  # the one chunk: logits, then G (matmul dtype)
    # Low precision: G kept in float32 too, for d weight and d bias (they sum over all rows).
    g32 = buf if direct else buf.new_empty(buf.shape, dtype=cdt)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        zt = _linear_logits_t(x[r0:r1], weight, bias, buf)  # (C, R)
        gt = g32[: zt.numel()].view(zt.shape)
        _vjp_columns(
            zt,
            zt,
            target[r0:r1],
            ignore_index,
            lse[r0:r1],
            entropy[r0:r1],
            [None if d is None else d[r0:r1] for d in ups],
            softcap,
            gt,
            tmp,
            tmp2,
            None if lse_lo is None else lse_lo[r0:r1],
            offset,
            temperature,
        )
        if need_x:
            torch.mm(zt.t(), weight, out=dx[r0:r1])
        if dw is not None:
            h = x[r0:r1].to(cdt)
            if r0 == 0:
                torch.mm(gt, h, out=dw)
            else:
                dw.addmm_(gt, h)
        if db is not None:
            if r0 == 0:
                torch.sum(gt, dim=1, out=db)
            else:
                db.add_(gt.sum(dim=1))
        del zt, gt
    dw_out = x.new_empty(0) if dw is None else dw.to(weight.dtype)
    db_out = x.new_empty(0) if db is None or bias is None else db.to(bias.dtype)
    return dx, dw_out, db_out


def _triton_backward(
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    target: Tensor,
    lse: Tensor,
    entropy: Tensor,
    ups: list[Tensor | None],
    ignore_index: int,
    chunk_size: int,
    softcap: float | None,
    need: tuple[bool, bool, bool],
    lse_lo: Tensor | None,
    offset: int,
    temperature: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`_backward_impl` on the Triton kernels (:mod:`._triton_tokens`): ``G`` of the
    caller's logits in one launch into ``d x``; or, chunk by chunk, the logits recomputed
    (:func:`_linear_logits`) and turned into ``G`` in place (float32 input) or into a float32
    copy then rounded into the chunk (bfloat16/float16: ``d weight`` and ``d bias`` sum the
    float32 ``G`` over every row, ``d hidden`` is the matmul of the rounded one, as on the
    torch path)."""
    from . import _triton_tokens as TT

    need_x, need_weight, need_bias = need
    rows, cdt, dev = x.shape[0], K.compute_dtype(x.dtype), x.device

    def vjp(z: Tensor, r0: int, r1: int, out: Tensor) -> Tensor:
        return TT.token_vjp(
            z,
            target[r0:r1],
            ignore_index,
            lse[r0:r1],
            entropy[r0:r1],
            *(None if d is None else d[r0:r1] for d in ups),
            softcap=softcap,
            lse_lo=None if lse_lo is None else lse_lo[r0:r1],
            out=out,
            class_offset=offset,
            temperature=temperature,
        )

    if weight is None:
        dx = vjp(x, 0, rows, x.new_empty(x.shape)) if need_x else x.new_empty(0)
        return dx, x.new_empty(0), x.new_empty(0)
    num_classes = weight.shape[0]
    need_bias = need_bias and bias is not None
    dx = x.new_empty(x.shape) if need_x else x.new_empty(0)
    alloc = torch.empty if rows else torch.zeros
    dw = alloc(weight.shape, dtype=cdt, device=dev) if need_weight else None
    db = alloc(num_classes, dtype=cdt, device=dev) if need_bias else None
    step = max(1, min(rows, _chunk_rows(num_classes, cdt, chunk_size)))
    buf = x.new_empty(num_classes * step)  # the one chunk: logits, then G (matmul dtype)
    direct = x.dtype == cdt
    g32 = buf if direct else buf.new_empty(buf.shape, dtype=cdt)
    for r0 in range(0, rows, step):
        r1 = min(rows, r0 + step)
        z = _linear_logits(x[r0:r1], weight, bias, buf)  # (R, C)
        g = vjp(z, r0, r1, g32[: z.numel()].view(z.shape))
        if need_x:
            if not direct:
                z.copy_(g)
            torch.mm(z, weight, out=dx[r0:r1])
        if dw is not None:
            h = x[r0:r1].to(cdt)
            if r0 == 0:
                torch.mm(g.t(), h, out=dw)
            else:
                dw.addmm_(g.t(), h)
        if db is not None:
            if r0 == 0:
                torch.sum(g, dim=0, out=db)
            else:
                db.add_(g.sum(dim=0))
    dw_out = x.new_empty(0) if dw is None else dw.to(weight.dtype)
    db_out = x.new_empty(0) if db is None or bias is None else db.to(bias.dtype)
    return dx, dw_out, db_out


_backward_op = torch.library.custom_op(
    f"crossentropy::token_stats_backward_v{OP_VERSION}", mutates_args=()
)(_backward_impl)


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
    lse_lo=None,
    impl="torch",
    shard_offset=None,
    temperature=1.0,
):
    dx = torch.empty_like(x) if need_x else x.new_empty(0)
    dw = torch.empty_like(weight) if need_weight and weight is not None else x.new_empty(0)
    db = torch.empty_like(bias) if need_bias and bias is not None else x.new_empty(0)
    return dx, dw, db


# --------------------------------------------------------------------------- autograd


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


# --------------------------------------------------------------------------- public


def _check_target(fn: str, target: object, x: Tensor, x_arg: str, what: str) -> Tensor:
    """An integer target of ``x``'s shape without its last dimension, on ``x``'s device (also
    used by the vocabulary-parallel token statistics)."""
    t = check_tensor(fn, "target", target, floating=False)
    if tuple(t.shape) != tuple(x.shape[:-1]):
        fail(fn, "target", f"have shape {tuple(x.shape[:-1])} ({what})", f"shape {tuple(t.shape)}")
    if t.device != x.device:
        owner = f"{x_arg}'" if x_arg.endswith("s") else f"{x_arg}'s"
        fail(fn, "target", f"be on {owner} device {x.device}", f"device {t.device}")
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
    temperature: float = 1.0,
) -> tuple[Tensor, ...]:
    """The plain composition (``torch.func`` transforms): every op has its batching and jvp
    rules."""
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    cdt = K.compute_dtype(x.dtype)

    def call() -> Tensor:
        z, _ = softcapped((x if weight is None else F.linear(x, weight, bias)).to(cdt), softcap)
        z = z / temperature
        return torch.stack(_reference_rows(z, t, ignore)[:3]), z.argmax(dim=-1)  # type: ignore[return-value]

    with no_autocast(x):
        stacked, argmax = R.call(fn, call, t, num_classes, ignore)
    return (*stacked.unbind(0), argmax)


def token_stats(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    impl: str = "auto",
    temperature: float = 1.0,
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
    impl : {"auto", "torch", "triton"}, default "auto"
        The kernels, as in :func:`crossentropy.torch.cross_entropy`: ``"auto"`` runs Triton
        kernels on CUDA tensors of float16, bfloat16 or float32 when Triton is installed (one
        program per row, online over chunks of classes) and torch ops otherwise; ``"torch"``
        always torch ops; ``"triton"`` always Triton (CUDA tensors, or CPU tensors in Triton's
        interpreter with ``TRITON_INTERPRET=1``). Double backward and ``torch.func``
        transforms use torch ops whatever ``impl``.
    temperature : float, default 1.0
        ``T > 0``: every statistic is that of ``z' / T`` (after the softcap), the distribution
        a sampler with temperature ``T`` draws from (RL frameworks' ``logits / temperature``),
        with exact gradients (the chain rule's ``1 / T``); the logits are not copied.

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
        ``softcap`` not finite or not ``> 0``; ``impl`` not one of the three, or ``"triton"``
        where Triton cannot run (not installed, float64, a CPU tensor without the
        interpreter).

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
    a few tile-sized buffers (4 MiB each in float32; ``Tuning.token_block_elements``), the logits
    being read in row blocks of that size. ``-inf`` logits (masked vocabulary) add nothing to the
    entropy and get zero gradient; ``+inf`` logits give NaN, as ``F.log_softmax`` does.

    With ``softcap=s`` the gradient w.r.t. the raw logits chains through the cap:

    .. math::

        z' = s \tanh(z / s), \qquad
        \frac{\partial L}{\partial z} = G' \odot \Big(1 - \big(z'/s\big)^2\Big),

    with :math:`G'` the formula above at :math:`z'` (``p = softmax(z')``). The cap is bounded:
    a ``-inf`` logit becomes ``-s``, so it is no longer masked (its probability is
    :math:`\propto e^{-s}`; to mask classes, cap the logits yourself, set the masked ones to
    ``-inf`` and pass ``softcap=None``), and ``+inf`` becomes ``s``. Memory: one more tile in
    backward (the capped logits' gradient beside the chain factor).

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
    if _dtensor.any_dtensor(logits, target):
        return TokenStats(
            *_dtensor.token_stats(
                fn, logits, target, ignore_index, softcap, impl, temperature, token_stats
            )
        )
    x = check_tensor(fn, "logits", logits, floating=True)
    if x.dim() == 0:
        fail(fn, "logits", "have shape (*, C) with at least 1 dimension (classes)", "shape ()")
    if x.shape[-1] == 0:
        fail(fn, "logits", "have at least one class (C >= 1)", f"shape {tuple(x.shape)}")
    t = _check_target(fn, target, x, "logits", "logits' shape without the classes")
    ignore = check_ignore_index(fn, ignore_index)
    impl = check_impl(fn, impl, x)
    cap = check_softcap(fn, softcap)
    temp = check_temperature(fn, temperature)
    lead = tuple(t.shape)
    x2 = x.reshape(-1, x.shape[-1])
    t1 = t.reshape(-1).to(torch.int64)
    if transforms_active():
        return _finish(_reference(fn, x2, None, None, t1, ignore, cap, temp), lead)
    out = _TokenStats.apply(x2, None, None, t1, ignore, 0, cap, fn, impl, None, temp)  # type: ignore[no-untyped-call]
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
    impl: str = "auto",
    temperature: float = 1.0,
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
    impl : {"auto", "torch", "triton"}, default "auto"
        As in :func:`token_stats`: on Triton, each chunk of logits (computed row-major,
        ``h Wᵀ``, by the same matmul in the inputs' dtype) goes through the Triton kernels.
    temperature : float, default 1.0
        As in :func:`token_stats`: the statistics of ``z' / T``, chunk by chunk.

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
        not finite or not ``> 0``; on CPU, a target out of range; ``impl`` as in
        :func:`token_stats`.

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
    (recompute the chunk, ``d hidden``, ``d weight``): four matmuls against the materialised
    composition's three, the price of not keeping the logits (the ``d weight`` matmul needs
    ``G``, hence the chunk's logits, with the upstream gradients known only in backward). Each
    chunk is computed transposed, ``W hᵀ`` (C, R), the faster matmul on CPU. Memory held
    between forward and backward: the inputs and four (N,) statistics. During each pass: one
    chunk of logits, reused from chunk to chunk and turned into ``G`` in place, plus one or
    two tile-sized scratch buffers (4 MiB each in float32: the elementwise work goes tile by
    tile of about ``Tuning.token_block_elements`` elements, which stays in cache); backward adds the
    gradients, ``d weight`` and ``d bias`` written by the first chunk's matmul (no zeroing).
    bfloat16/float16 inputs: the chunk is in their dtype and backward adds a float32 copy of
    ``G`` (for ``d weight`` and ``d bias``, accumulated in float32). Under autocast,
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
    if _dtensor.any_dtensor(hidden, weight, bias):
        out = _dtensor.linear_token_stats(
            fn,
            hidden,
            weight,
            target,
            bias,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
            softcap=softcap,
            impl=impl,
            temperature=temperature,
        )
        return TokenStats(*out)
    h = check_tensor(fn, "hidden", hidden, floating=True)
    if h.dim() == 0:
        fail(fn, "hidden", "have at least 1 dimension (features)", "shape ()")
    if autocast_on(h):
        h, weight, bias = autocast_projection(h, weight, bias)
    w, b = check_projection(fn, h, weight, bias)
    if b is not None and b.device != h.device:
        fail(fn, "bias", f"be on hidden's device {h.device}", f"device {b.device}")
    if w.shape[0] == 0:
        fail(fn, "weight", "have at least one class (C >= 1)", f"shape {tuple(w.shape)}")
    t = _check_target(fn, target, h, "hidden", "hidden's shape without the features")
    ignore = check_ignore_index(fn, ignore_index)
    chunk = check_chunk_size(fn, chunk_size) or 0
    impl = check_impl(fn, impl, h)
    cap = check_softcap(fn, softcap)
    temp = check_temperature(fn, temperature)
    lead = tuple(t.shape)
    # rows given, not -1: with no features (D = 0) the row count cannot be inferred
    h2 = h.reshape(t.numel(), h.shape[-1])
    t1 = t.reshape(-1).to(torch.int64)
    if transforms_active():
        return _finish(_reference(fn, h2, w, b, t1, ignore, cap, temp), lead)
    out = _TokenStats.apply(h2, w, b, t1, ignore, chunk, cap, fn, impl, None, temp)  # type: ignore[no-untyped-call]
    return _finish(out, lead)
