r"""Combining the ranks' row statistics: the one step of the pipeline that knows about ranks.

Every pass of the pipeline works on the classes it holds: a whole vocabulary in one process, a
:class:`._types.Shard` of it on a rank of a vocabulary-parallel group. The passes return
*partial sums* relative to the shard's own row max; this module turns the ranks' partial sums
into those of the whole vocabulary with a few all-reduces of ``O(rows)`` numbers. In one
process (``shard`` is ``None``) there is nothing to combine, and the autograd Functions skip
this step: single process is the one-rank case of the same path.

Two kinds of partial sums, one per quantity:

- the cross-entropy's :class:`._types.RowStats` (:func:`combine_row_stats`): the row max, the
  sum of exponentials without the target column, the target logit, the sum of the logits
  (label smoothing) and the target's class weight;
- the token statistics' ``(m, s, spread, z_y, argmax)`` (:func:`combine_token_partials`).

Shifting a shard's sums from its max ``m_r`` to the global ``M``:
``Σ e^{x − M} = e^{m_r − M} s_r`` and
``Σ e^{x − M} (M − x) = e^{m_r − M} [spread_r + (M − m_r) s_r]`` (every term ``≥ 0``).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import fail
from ._rows import rowwise
from ._types import RowStats, Shard

__all__ = [
    "combine_row_stats",
    "combine_token_partials",
    "finite",
    "reduce_sum",
    "refuse_double_backward",
]


def finite(m: Tensor) -> Tensor:
    """The row max with ``±inf`` (an empty or fully masked row, or an infinite logit) replaced
    by 0, to shift by."""
    return torch.where(torch.isinf(m), torch.zeros_like(m), m)


def reduce_sum(x: Tensor, shard: Shard) -> Tensor:
    """``x`` summed over the shard's group, in place (a replicated input's gradient)."""
    dist.all_reduce(x, op=dist.ReduceOp.SUM, group=shard.group)
    return x


def refuse_double_backward(fn: str) -> None:
    """Raise our error, before any collective, for a backward with ``create_graph=True``.

    Autograd runs a backward with grad mode on exactly when it builds a graph of it. The
    sharded backward passes write into preallocated buffers and run collectives, which
    autograd cannot differentiate; raising first replaces torch's internal error with a clear
    one, on every rank that runs the backward, and no rank is left waiting in an all-reduce.
    """
    if torch.is_grad_enabled():
        fail(
            fn,
            "backward",
            "run with create_graph=False (double backward is not supported)",
            "create_graph=True",
            RuntimeError,
        )


def _global_max(m: Tensor, shard: Shard) -> Tensor:
    """The rows' max over every rank (NaN counted as -inf: such a row is NaN anyway)."""
    big = torch.where(torch.isnan(m), float("-inf"), m)
    dist.all_reduce(big, op=dist.ReduceOp.MAX, group=shard.group)
    return big


def combine_token_partials(
    parts: tuple[Tensor, Tensor, Tensor, Tensor, Tensor], shard: Shard
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The whole vocabulary's ``(m, s, spread, z_y, argmax)`` from every rank's (this rank's
    given, ``argmax`` a column of the shard).

    Three collectives: MAX of the row maxima, one SUM of ``s``, ``spread`` (both shifted to
    the global max) and ``z_y`` (which one shard holds), and one MIN of argmax candidates: the
    smallest index among the shards whose max is the global one (each gives its first largest
    column, and shards lie in rank order), a NaN's index first, as ``torch.argmax``.
    Candidates lie in ``[−V, V]``: a NaN's index − V, a max's index, else V.
    """
    m, s, spread, zy, argmax = parts
    vocab = shard.vocab
    big = _global_max(m, shard)
    shift, ref = finite(big), finite(m)
    present = s != 0  # a shard row of only -inf logits adds nothing (its ref may exceed M)
    scale = torch.where(present, rowwise(torch.exp, ref - shift), 0.0)
    packed = torch.stack(
        [
            scale * s,
            torch.where(present, scale * (spread + (shift - ref) * s), 0.0),
            zy,
        ]
    )
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=shard.group)
    index = argmax + shard.start
    candidate = torch.where(
        torch.isnan(s),
        index - vocab,
        torch.where(m == big, index, torch.full_like(index, vocab)),
    )
    dist.all_reduce(candidate, op=dist.ReduceOp.MIN, group=shard.group)
    winner = torch.where(candidate < 0, candidate + vocab, candidate.remainder(vocab))
    return big, packed[0], packed[1], packed[2], winner


def combine_row_stats(
    local: RowStats,
    target: Tensor,
    valid: Tensor,
    class_weight: Tensor | None,
    shard: Shard,
) -> tuple[RowStats, Tensor | None, Tensor | None]:
    """The whole vocabulary's :class:`._types.RowStats` from every rank's, with the target's
    class weight and the class weights' total when there are class weights (``class_weight``
    is this rank's slice).

    Two collectives: MAX of the row maxima, then one SUM of the rescaled sums of
    exponentials, target logits, sums of logits and target weights (packed together).
    """
    big = _global_max(local.max, shard)
    shift = finite(big)
    # exp(-inf - (-inf)) is NaN in the kernels: a row that is -inf on this shard adds nothing
    sumexp = torch.where(local.max == float("-inf"), 0.0, local.sumexp)
    columns = [sumexp * rowwise(torch.exp, local.max - shift), local.target_logit]
    if local.sum_logits is not None:
        columns.append(local.sum_logits)
    if class_weight is not None:
        width = shard.stop - shard.start
        index = (target - shard.start).clamp(0, max(width - 1, 0))
        picked = class_weight[index] if width else torch.zeros_like(shift)
        columns.append(torch.where(local.has_target & valid, picked, 0.0))
    packed = torch.stack(columns, dim=1).reshape(-1)
    if class_weight is not None:
        packed = torch.cat([packed, class_weight.sum().reshape(1)])
    dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=shard.group)
    rows = big.shape[0]
    per_row = packed[: rows * len(columns)].reshape(rows, len(columns))
    # Every target is in [0, V) or ignore_index (checked): which rows have a target column
    # somewhere is known without communicating.
    stats = RowStats(
        shift,
        per_row[:, 0],
        per_row[:, 1],
        (target >= 0) & (target < shard.vocab),
        per_row[:, 2] if local.sum_logits is not None else None,
    )
    if class_weight is None:
        return stats, None, None
    return stats, per_row[:, -1], packed[-1]
