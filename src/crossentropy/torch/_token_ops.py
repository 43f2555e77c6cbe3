r"""The per-token statistics' passes: torch-op kernels tile by tile, the compiled CPU kernels
of :mod:`._compiled` where :func:`._backend.select_cpu` sends the logits (or a chunk of the
linear form's, in backward), the Triton path (CUDA) through :mod:`._triton_tokens`, and the
custom ops around them (:mod:`.tokens` holds the
public functions, :mod:`._autograd` the autograd Function).

Forward returns each row's partial sums over the classes it is given (a whole vocabulary, or a
shard starting at ``shard_offset``): the max ``m``, ``s = Σ e^{z − r}``, ``spread = Σ e^{z − r}
(r − z)``, the target's logit and the argmax; :func:`._rows.token_finish` turns them into the
statistics once :mod:`._shard` has combined the ranks' (one process: nothing to combine).
Backward evaluates ``G = a (e_y − p) − b p ⊙ (log p + H) + c p`` from the saved per-row
``lse`` (with its rounding error) and entropy, recomputing the logits chunk by chunk.
"""

from typing import NamedTuple

import torch
from torch import Tensor

from .._validation import fail
from . import _kernels as K
from ._backend import select, select_cpu
from ._checks import (
    check_tensor,
)
from ._ops import check_targets
from ._rows import exp_floor
from ._types import OP_VERSION, tuning


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
        The index of the largest ``z``, the first of equal ones (NaN counts as the largest);
        not differentiable. With ``softcap=s`` it is the argmax of the capped logits as
        computed (float32 for half-precision input): logits beyond about ``8.7 s`` all cap to
        ``s`` and tie, and the first of them is returned, not the largest raw logit.
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


#: The per-row coefficients of the gradient, ``(lse, lse_lo, row, nb, k, a)``
#: (:func:`vjp_coefficients`).
Coefficients = tuple[Tensor, Tensor | None, Tensor, Tensor | None, Tensor, Tensor | None]


def vjp_coefficients(
    target: Tensor,
    ignore_index: int,
    lse: Tensor,
    entropy: Tensor,
    ups: list[Tensor | None],
    lse_lo: Tensor | None,
) -> Coefficients:
    """The per-row parts of ``G = p ⊙ (c − a − b (log p + H))`` plus ``a`` at the target, for
    the upstream ``ups = [a, b, c]`` of ``logprob``, ``entropy``, ``lse`` (``None``: no term):
    ``(lse, lse_lo, row = c − a, nb = −b, k = row + nb·H, a)``, with ``a`` 0 on ignored rows.

    An ignored row of only -inf logits (``lse = -inf``, entropy NaN: no distribution) gets
    ``G = 0`` for any upstream: with ``lse`` and ``H`` taken as 0 its every ``p = exp(-inf)`` is
    0 (``z − lse`` would be NaN, and ``0 · NaN`` reaches ``d hidden`` and ``d weight``)."""
    keep = target != ignore_index
    dead = ~keep & (lse == float("-inf"))
    lse = torch.where(dead, 0.0, lse)
    entropy = torch.where(dead, 0.0, entropy)
    d_logprob, d_entropy, d_lse = ups
    a = None if d_logprob is None else torch.where(keep, d_logprob, 0.0)
    row = torch.zeros_like(lse)
    if d_lse is not None:
        row += d_lse
    if a is not None:
        row -= a
    nb = None if d_entropy is None else -d_entropy
    k = row if nb is None else row + nb * entropy
    return lse, lse_lo, row, nb, k, a


def _vjp_columns(
    src: Tensor,
    dst: Tensor,
    target: Tensor,
    coefficients: Coefficients,
    softcap: float | None,
    work: Tensor | None,
    tmp: Tensor,
    tmp2: Tensor,
    class_offset: int = 0,
    temperature: float = 1.0,
) -> None:
    """``G = ∂L/∂z`` of the logits ``src`` into ``dst``, both column views (C, R) (``dst`` may
    be ``src``; column ``j`` is class ``class_offset + j``), tile by tile of classes:
    ``G = p ⊙ (c − a − b (log p + H))`` plus ``a`` at the target, from the per-row
    ``coefficients`` ``(lse, lse_lo, row, nb, k, a)`` of :func:`vjp_coefficients` (``log p =
    (z − lse) − lse_lo``).

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
    idx = target - class_offset
    lse, lse_lo, row, nb, k, a = coefficients
    direct = dst.dtype == lse.dtype
    floor = exp_floor(lse.dtype)
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
        cc = select_cpu(x, impl, tokens=True)
        kw = {"class_offset": offset, "softcap": softcap, "temperature": temperature}
        if cc is not None and cc.token_row_stats(x, target, out, **kw):
            return out
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
        # the torch-op kernels here, tile by tile in cache (see _compiled.token_row_stats)
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
    coefs = vjp_coefficients(target, ignore_index, lse, entropy, ups, lse_lo)
    kw = {"class_offset": offset, "softcap": softcap, "temperature": temperature}
    if weight is None and not need_x:
        return x.new_empty(0), x.new_empty(0), x.new_empty(0)
    if weight is None:
        dx = x.new_empty(x.shape)  # every row is written below
        cc = select_cpu(x, impl, tokens=True)
        if cc is not None and cc.token_vjp(x, dx, target, coefs, over_src=False, **kw):
            return dx, x.new_empty(0), x.new_empty(0)
        step = _row_blocks(num_classes)
        tile = min(rows, step) * num_classes
    else:
        step = max(1, min(rows, _chunk_rows(num_classes, cdt, chunk_size)))
        tile = _tile_elements(num_classes, step)
    # Scratch tiles: p for the entropy term; with softcap, G of the capped logits too.
    capped = softcap is not None
    tmp = _scratch(tile, cdt, dev, capped or ups[1] is not None)
    tmp2 = _scratch(tile, cdt, dev, capped and ups[1] is not None)

    def part(r0: int, r1: int) -> Coefficients:
        lse, lse_lo, row, nb, k, a = (None if c is None else c[r0:r1] for c in coefs)
        assert lse is not None and row is not None and k is not None
        return lse, lse_lo, row, nb, k, a

    def rows_vjp(src: Tensor, dst: Tensor, work: Tensor | None, r0: int, r1: int) -> None:
        """:func:`_vjp_columns` of rows ``r0:r1`` given as column views."""
        coefficients = part(r0, r1)
        args = (softcap, work, tmp, tmp2, offset, temperature)
        _vjp_columns(src, dst, target[r0:r1], coefficients, *args)

    if weight is None:
        work = _scratch(tile, cdt, dev, not direct)
        for r0 in range(0, rows, step):
            r1 = min(rows, r0 + step)
            rows_vjp(x[r0:r1].t(), dx[r0:r1].t(), work, r0, r1)
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
        cc = select_cpu(zt, impl, tokens=True)
        out = None if direct else gt.t()
        rows_of = part(r0, r1)
        if cc is None or not cc.token_vjp(zt.t(), out, target[r0:r1], rows_of, over_src=True, **kw):
            rows_vjp(zt, zt, gt, r0, r1)
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
