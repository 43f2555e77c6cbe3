r"""DTensor inputs (``torch.distributed.tensor``): the public functions take logits, or an
output layer's weight, that are DTensors, and run the path their placements call for.

A DTensor's placement on each dimension of its device mesh says how that mesh dimension splits
it. For logits ``(N, C, d…)`` (or ``(*, C)`` for the token statistics):

- ``Shard(class dim)``: the classes are split across that mesh dimension's ranks (tensor
  parallelism, the output of a ``ColwiseParallel`` layer with ``Shard(-1)`` output). The call
  runs the vocabulary-parallel path over that mesh dimension's process group: the same
  autograd Functions and kernels as one process, the ranks' row statistics combined by a few
  all-reduces of ``O(rows)`` numbers, the logits never gathered;
- ``Shard(0)``: the rows are split (data parallelism). Each rank computes its rows; a
  ``"mean"`` divides by the all-reduced global denominator (the summed weights of the kept
  targets), so the result is the mean over the global batch, not a mean of means;
- ``Replicate()``: nothing to do on that mesh dimension.

Any combination over a 2-D (data x tensor) mesh works. ``Partial`` logits are refused.

Results are DTensors on the logits' mesh: a per-row result (``reduction="none"``, the token
statistics) is ``Shard(0)`` on the row-sharding mesh dimensions and ``Replicate()`` elsewhere;
a reduced loss is ``Partial()`` (a sum still to be taken) on the row-sharding dimensions and
``Replicate()`` elsewhere: ``loss.full_tensor()`` is the global value, and ``loss.backward()``
gives every rank its logits' gradient.

Row-aligned arguments (``target``, ``sample_weight``) may be DTensors on the same mesh (any
placement: they are redistributed to the logits' rows) or plain tensors holding every row
(the global tensor, replicated, as ``loss_parallel`` takes it) or only this rank's rows. Class
weights may be plain (all ``C`` of them) or DTensors.

For the linear forms, the ``weight`` (and ``bias``) is a DTensor ``Shard(0)`` or replicated on
each mesh dimension, and ``hidden`` a plain tensor (the same rows on every rank) or a DTensor
``Shard(0)`` or replicated on each: a dimension where the weight is sharded and ``hidden``
replicated splits the classes (``ColwiseParallel``; the vocabulary-parallel linear path, the
weight never gathered), one where ``hidden`` is sharded splits the rows (FSDP2's storage
sharding or data parallelism: the weight gathered there for this use, its gradient summed
back). See :func:`linear`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import fail
from . import distributed
from ._modes import transforms_active
from .distributed import (
    vocab_parallel_linear_cross_entropy,
    vocab_parallel_linear_token_stats,
)

_F = TypeVar("_F", bound=Callable[..., Any])

__all__ = ["Linear", "any_dtensor", "class_slice", "cross_entropy", "linear", "token_stats"]


def _dtensor_type() -> type | None:
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # a torch built without distributed support
        return None
    return DTensor


def _unwrapped(x: object) -> object:
    """``x`` inside any ``torch.func`` wrappers (a DTensor under ``grad`` is wrapped). Wrappers
    exist only while a transform is active; the check first keeps ``torch.compile`` from
    tracing the functorch query, which Dynamo cannot."""
    if not transforms_active():
        return x
    functorch = torch._C._functorch
    while isinstance(x, Tensor) and functorch.is_functorch_wrapped_tensor(x):
        x = functorch.get_unwrapped(x)
    return x


def any_dtensor(*xs: object) -> bool:
    """Whether any argument is a DTensor (also inside a ``torch.func`` transform)."""
    kind = _dtensor_type()
    return kind is not None and any(isinstance(_unwrapped(x), kind) for x in xs)


def _is_dtensor(x: Any) -> bool:
    return any_dtensor(x)


@dataclass(frozen=True)
class _Layout:
    """How a DTensor's mesh splits it: the mesh dimension splitting the classes (or None), the
    mesh dimensions splitting the rows, and this rank's classes ``[start, stop)``."""

    mesh: Any
    placements: tuple[Any, ...]
    class_dim: int | None
    batch_dims: tuple[int, ...]
    start: int
    stop: int

    def rows(self) -> list[Any]:
        """Placements of a per-row tensor: ``Shard(0)`` where the rows are split."""
        from torch.distributed.tensor import Replicate, Shard

        return [Shard(0) if i in self.batch_dims else Replicate() for i in range(self.mesh.ndim)]

    def reduced(self) -> list[Any]:
        """Placements of a reduced loss: a pending sum where the rows are split."""
        from torch.distributed.tensor import Partial, Replicate

        return [Partial() if i in self.batch_dims else Replicate() for i in range(self.mesh.ndim)]


def _layout(fn: str, arg: str, x: Any, class_dim: int) -> _Layout:
    """The layout of DTensor logits whose classes lie on ``class_dim``; our error for any
    other placement."""
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    expected = (
        f"be a DTensor sharded over its rows (Shard(0)) or its classes (Shard({class_dim})), "
        "or replicated, on each mesh dimension"
    )
    if x.ndim < 2:
        fail(fn, arg, "have rows and classes (at least 2 dimensions) as a DTensor", x.ndim)
    class_mesh, batch = None, []
    for i, p in enumerate(x.placements):
        if p.is_replicate():
            continue
        if not p.is_shard():
            fail(fn, arg, expected, f"placements {tuple(x.placements)}")
        dim = p.dim % x.ndim
        if dim == class_dim and class_mesh is None:
            class_mesh = i
        elif dim == 0 and dim != class_dim:
            batch.append(i)
        else:
            fail(fn, arg, expected, f"placements {tuple(x.placements)}")
    start, stop = 0, x.shape[class_dim]
    if class_mesh is not None:
        local, offset = compute_local_shape_and_global_offset(x.shape, x.device_mesh, x.placements)
        start, stop = offset[class_dim], offset[class_dim] + local[class_dim]
    return _Layout(x.device_mesh, tuple(x.placements), class_mesh, tuple(batch), start, stop)


def _rows_local(
    fn: str, arg: str, a: Any, lay: _Layout, global_rows: Sequence[int], local_rows: Sequence[int]
) -> Any:
    """This rank's rows of a row-aligned plain tensor (holding every row, or only this rank's);
    a DTensor is checked (its global shape: the same check on every rank) and returned as it
    is, for :func:`_redistribute` once every rank has passed its checks."""
    if a is None:
        return None
    if not isinstance(a, Tensor):
        fail(fn, arg, "be a Tensor (or a DTensor)", type(a).__name__, TypeError)
    if _is_dtensor(a):
        mesh = getattr(a, "device_mesh", None)
        if mesh != lay.mesh:
            fail(fn, arg, "be on the logits' device mesh", f"mesh {mesh}")
        if tuple(a.shape) != tuple(global_rows):
            fail(fn, arg, f"have shape {tuple(global_rows)}", f"shape {tuple(a.shape)}")
        return a
    from torch.distributed.tensor import DTensor, Replicate

    if tuple(a.shape) == tuple(local_rows):
        return a
    if tuple(a.shape) != tuple(global_rows):
        fail(
            fn,
            arg,
            f"have shape {tuple(global_rows)} (every row) or the shape of this rank's rows",
            f"shape {tuple(a.shape)}",
        )
    whole = DTensor.from_local(a, lay.mesh, [Replicate()] * lay.mesh.ndim, run_check=False)
    return whole.redistribute(lay.mesh, lay.rows()).to_local()  # a slice: no communication


#: a value :func:`_agree` does not compare on this rank: a plain target that is this rank's
#: rows, or that cannot be told apart from them (a rank holding every row, or none of them
#: when there is one), is compared only where other ranks gave every row
_SKIP = object()


def _plain_global(a: Any, global_rows: Sequence[int], local_rows: Sequence[int]) -> bool:
    """A plain tensor holding every row (the same on every rank: compared), not only this
    rank's rows."""
    return (
        isinstance(a, Tensor)
        and not _is_dtensor(a)
        and tuple(a.shape) == tuple(global_rows)
        and tuple(global_rows) != tuple(local_rows)
    )


def _refuse_transforms(fn: str) -> None:
    if transforms_active():
        fail(
            fn,
            "the call",
            "not be traced by a torch.func transform with DTensor inputs (their sharded paths "
            "run collectives); differentiate with torch.autograd",
            "a call under a torch.func transform",
            RuntimeError,
        )


def _redistribute(a: Any, lay: _Layout) -> Any:
    """A DTensor argument as this rank's rows (a collective when its placements differ)."""
    return a.redistribute(lay.mesh, lay.rows()).to_local() if _is_dtensor(a) else a


def _host_only(fn: _F) -> _F:
    """Run ``fn`` eagerly under ``torch.compile``: the handshake reads values on the host (a
    graph break; Dynamo would otherwise trace into hashing and ``tolist`` piecewise)."""
    reason = (
        "crossentropy: the DTensor paths' handshake compares arguments across ranks on the host "
        "and cannot be traced; compile without fullgraph=True (the call then runs with a graph "
        "break here)"
    )
    return cast(_F, torch.compiler.disable(fn, reason=reason))  # type: ignore[no-untyped-call]


@_host_only
def _digest(value: object) -> int:
    """A 63-bit digest of an argument's value (a plain tensor by its bytes, dtype and shape)."""
    h = hashlib.blake2b(digest_size=8)
    if _is_dtensor(value):  # one global tensor by construction: its layout, not its values
        d: Any = value
        h.update(f"DTensor {d.dtype} {tuple(d.shape)} {tuple(d.placements)}".encode())
    elif isinstance(value, Tensor):
        t = value.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    else:
        h.update(repr(value).encode())
    return (int.from_bytes(h.digest(), "little") >> 1) | 1  # never 0: that is _SKIP's


def _groups(mesh: Any) -> list[Any]:
    """Process groups that together span the mesh: the default group when the mesh holds
    every rank, else one per mesh dimension (in turn)."""
    if mesh.size() == dist.get_world_size():
        return [None]
    return [mesh.get_group(i) for i in range(mesh.ndim)]


_KINDS = {
    "TypeError": TypeError,
    "ValueError": ValueError,
    "NotImplementedError": NotImplementedError,
}


@_host_only
def _agree(
    fn: str, mesh: Any, error: Exception | None, same: Sequence[tuple[str, object]] = ()
) -> None:
    """Raise on every rank of the mesh if any rank failed, with the same type and message,
    before the next collective: no rank is left waiting in it. Also checks that each
    ``(argument, value)`` of ``same`` is the same on every rank. One all-gather of a few
    integers; the messages are exchanged only on failure."""
    row = [0 if error is not None else 1, *(0 if v is _SKIP else _digest(v) for _, v in same)]
    for group in _groups(mesh):
        mine = torch.tensor(row, dtype=torch.int64)
        parts = [torch.empty_like(mine) for _ in range(dist.get_world_size(group))]
        dist.all_gather(parts, mine, group=group)
        table = [p.tolist() for p in parts]
        if any(r[0] == 0 for r in table):
            local = None
            if error is not None:
                text = str(error).replace(f"vocab_parallel_{fn}:", f"{fn}:")
                if not re.search(r" on rank \d+$", text):  # a group's error names its rank
                    text = f"{text} on rank {dist.get_rank()}"
                local = (type(error).__name__, text)
            messages: list[Any] = [None] * len(table)
            dist.all_gather_object(messages, local, group=group)
            kind, text = next(m for m in messages if m is not None)
            error = _KINDS.get(kind, RuntimeError)(text)
            row[0] = 0
            continue
        for k, (name, _) in enumerate(same, start=1):
            values = [r[k] for r in table]
            given = [v for v in values if v != 0]  # ranks that passed _SKIP compare nothing
            if len(set(given)) > 1:
                differ = [i for i, v in enumerate(values) if v not in (0, given[0])]
                error = ValueError(
                    f"{fn}: {name} must be the same on every rank, got a different value on "
                    f"ranks {differ} of the group"
                )
                row[0] = 0
                break
    if error is not None:
        raise error


def _whole(a: Any) -> Any:
    """A class-weight argument as a plain tensor of every class."""
    return a.full_tensor() if _is_dtensor(a) else a


def _global_sum(x: Tensor, lay: _Layout) -> Tensor:
    """``x`` summed over the row-sharding mesh dimensions (a copy; no gradient)."""
    total = x.detach().clone()
    for i in lay.batch_dims:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=lay.mesh.get_group(i))
    return total


def _global_kept_weight(
    target: Tensor, ignore_index: int, weight: Tensor | None, dtype: torch.dtype, lay: _Layout
) -> Tensor:
    """The denominator of a ``"mean"`` over rows split across ranks: the class weights of the
    kept targets (their count without weights), summed over the row-splitting dimensions."""
    kept = target != ignore_index
    if weight is None:
        local = kept.sum().to(dtype)
    else:
        picked = weight.to(dtype)[torch.where(kept, target, 0).to(torch.int64)]
        local = torch.where(kept, picked, 0.0).sum()
    return _global_sum(local, lay)


def _wrap(local: Tensor, lay: _Layout, placements: list[Any], shape: Sequence[int]) -> Any:
    """``local`` as this rank's part of a DTensor of the global ``shape`` (uneven row shards
    included)."""
    from torch.distributed.tensor import DTensor

    size = torch.Size(shape)
    stride = torch.empty(size, device="meta").stride()
    return DTensor.from_local(
        local, lay.mesh, placements, run_check=False, shape=size, stride=stride
    )


def cross_entropy(
    fn: str,
    input: Any,
    target: Any,
    weight: Any,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
    sample_weight: Any,
    impl: str,
    local: Callable[..., Tensor],
    inplace_backward: bool = False,
) -> Any:
    """:func:`crossentropy.torch.cross_entropy` of DTensor logits (see the module docstring);
    ``local`` is the single-process function, for the rows of one rank."""
    _refuse_transforms(fn)
    if not _is_dtensor(input):
        fail(fn, "input", "be a DTensor when target or weight is one", type(input).__name__)
    lay = _layout(fn, "input", input, 1)
    xl = input.to_local()
    rows_global = (input.shape[0], *input.shape[2:])
    rows_local = (xl.shape[0], *xl.shape[2:])
    error: Exception | None = None
    try:  # checks of this rank's own arguments: no collective until every rank has passed
        if inplace_backward:
            fail(fn, "inplace_backward", "be False with DTensor inputs", "True")
        if reduction not in ("mean", "sum", "none"):
            fail(fn, "reduction", "be 'mean', 'sum' or 'none'", repr(reduction))
        prob = isinstance(target, Tensor) and target.is_floating_point()
        if prob and lay.class_dim is not None:
            fail(
                fn,
                "target",
                "hold class indices when the classes are sharded (probability targets over a "
                "sharded vocabulary are not supported)",
                f"dtype {target.dtype}",
                NotImplementedError,
            )
        if prob:
            tl = _rows_local(fn, "target", target, lay, input.shape, xl.shape)
        else:
            tl = _rows_local(fn, "target", target, lay, rows_global, rows_local)
        sw = _rows_local(fn, "sample_weight", sample_weight, lay, rows_global, rows_local)
        if weight is not None and tuple(weight.shape) != (input.shape[1],):
            fail(fn, "weight", f"have shape ({input.shape[1]},)", f"shape {tuple(weight.shape)}")
    except Exception as exc:
        error = exc
    same = [
        ("reduction", reduction),
        ("ignore_index", ignore_index),
        ("label_smoothing", label_smoothing),
        ("z_loss", z_loss),
        ("softcap", softcap),
        ("weight", weight),
        ("target", target if _plain_global(target, rows_global, rows_local) else _SKIP),
    ]
    _agree(fn, lay.mesh, error, same)
    tl, sw, w = _redistribute(tl, lay), _redistribute(sw, lay), _whole(weight)
    local_red = "none" if reduction == "none" else "sum"
    options: dict[str, Any] = dict(
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
        impl=impl,
    )
    try:
        if lay.class_dim is not None:
            rows = torch.Size(rows_local).numel()
            x2 = (xl.movedim(1, -1) if xl.dim() > 2 else xl).reshape(rows, xl.shape[1])
            per = distributed.vocab_parallel_cross_entropy(
                x2,
                tl.reshape(-1),
                group=lay.mesh.get_group(lay.class_dim),
                weight=None if w is None else w[lay.start : lay.stop],
                reduction=local_red,
                vocab_size=input.shape[1],
                sample_weight=None if sw is None else sw.reshape(-1),
                **options,
            )
            if reduction == "none":
                per = per.reshape(rows_local)
        else:
            per = local(xl, tl, w, reduction=local_red, sample_weight=sw, **options)
    except Exception as exc:
        error = exc
    _agree(fn, lay.mesh, error)
    if reduction == "none":
        return _wrap(per, lay, lay.rows(), rows_global)
    if reduction == "mean":
        if prob:
            count = per.new_tensor(float(torch.Size(rows_global).numel()))
        else:
            count = _global_kept_weight(tl, ignore_index, w, per.dtype, lay)
        per = per / count
    return _wrap(per, lay, lay.reduced(), ())


def token_stats(
    fn: str,
    logits: Any,
    target: Any,
    ignore_index: int,
    softcap: float | None,
    impl: str,
    temperature: float,
    local: Callable[..., Any],
) -> tuple[Any, Any, Any, Any]:
    """:func:`crossentropy.torch.token_stats` of DTensor logits ``(*, C)``: the four
    statistics as DTensors of the rows; ``local`` is the single-process function."""
    _refuse_transforms(fn)
    if not _is_dtensor(logits):
        fail(fn, "logits", "be a DTensor when target is one", type(logits).__name__)
    lay = _layout(fn, "logits", logits, logits.ndim - 1)
    xl = logits.to_local()
    rows_global, rows_local = tuple(logits.shape[:-1]), tuple(xl.shape[:-1])
    error: Exception | None = None
    try:
        tl = _rows_local(fn, "target", target, lay, rows_global, rows_local)
    except Exception as exc:
        error = exc
    same = [
        ("ignore_index", ignore_index),
        ("softcap", softcap),
        ("temperature", temperature),
        ("target", target if _plain_global(target, rows_global, rows_local) else _SKIP),
    ]
    _agree(fn, lay.mesh, error, same)
    tl = _redistribute(tl, lay)
    kw: dict[str, Any] = dict(
        ignore_index=ignore_index, softcap=softcap, impl=impl, temperature=temperature
    )
    try:
        if lay.class_dim is not None:
            group = lay.mesh.get_group(lay.class_dim)
            out = distributed.vocab_parallel_token_stats(
                xl, tl, group=group, vocab_size=logits.shape[-1], **kw
            )
        else:
            out = local(xl, tl, **kw)
    except Exception as exc:
        error = exc
    _agree(fn, lay.mesh, error)
    rows = lay.rows()
    return tuple(_wrap(o, lay, rows, rows_global) for o in out)  # type: ignore[return-value]


@dataclass(frozen=True)
class Linear:
    """The local pieces of a linear form whose weight is a DTensor: this rank's rows of
    ``hidden``, its classes ``[start, stop)`` of the weight (whole over the data-parallel mesh
    dimensions), the tensor-parallel group (``None``: the classes are whole here) and how the
    rows are split (``rows.batch_dims``)."""

    hidden: Tensor
    weight: Tensor
    bias: Tensor | None
    group: Any
    start: int
    stop: int
    vocab: int
    mesh: Any
    rows: _Layout
    global_rows: tuple[int, ...]

    def wrap(self, local: Tensor, shape: Sequence[int], reduced: bool) -> Any:
        """A result as a DTensor on the weight's mesh: per row (``Shard(0)`` where the rows
        are split) or reduced (a pending sum there), replicated elsewhere."""
        placements = self.rows.reduced() if reduced else self.rows.rows()
        return _wrap(local, self.rows, placements, shape)


_LINEAR_WEIGHT = (
    "be a DTensor sharded over its rows (Shard(0): the classes, as ColwiseParallel and FSDP2 "
    "shard an output layer) or replicated, on each mesh dimension"
)
_LINEAR_HIDDEN = (
    "be sharded over its rows (Shard(0): data parallel, FSDP2) or replicated (tensor "
    "parallel) on each dimension of the weight's mesh"
)


def _dims(x: Any) -> list[str]:
    """Each mesh dimension of a DTensor as ``"rep"``, ``"shard0"`` (``Shard(0)``, or FSDP2's
    ``_StridedShard(0)`` of a weight that tensor parallelism also shards) or ``"other"``."""
    kinds = []
    for p in x.placements:
        strided = type(p).__name__ == "_StridedShard"
        if p.is_replicate():
            kinds.append("rep")
        elif (p.is_shard() or strided) and p.dim % x.ndim == 0:
            kinds.append("shard0")
        else:
            kinds.append("other")
    return kinds


def linear(fn: str, hidden: Any, weight: Any, bias: Any) -> Linear:
    """The local pieces of a linear form whose ``weight`` (and ``bias``) is a DTensor.

    Per mesh dimension, from the weight's and hidden's placements:

    - weight ``Shard(0)``, hidden replicated (a plain tensor is replicated): tensor parallel,
      the classes split over that dimension's group (one such dimension at most);
    - weight ``Shard(0)``, hidden ``Shard(0)``: FSDP2's storage sharding with each rank its
      own rows. The weight is gathered over that dimension for this one use, as FSDP2 does
      before a forward, and its gradient reduce-scattered back (a sum: the gradient of the
      global loss, whose parts are divided by the global denominator);
    - weight replicated, hidden ``Shard(0)``: data parallel (the gradient summed likewise);
    - both replicated: nothing to do.
    """
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not isinstance(weight, DTensor):
        fail(fn, "weight", "be a DTensor when hidden or bias is one", type(weight).__name__)
    mesh = weight.device_mesh
    w_kinds = _dims(weight)
    if "other" in w_kinds or weight.ndim != 2:
        fail(fn, "weight", _LINEAR_WEIGHT, f"placements {tuple(weight.placements)}")
    if isinstance(hidden, DTensor):
        if hidden.device_mesh != mesh:
            fail(fn, "hidden", f"be on the weight's mesh {mesh}", f"mesh {hidden.device_mesh}")
        h_kinds = _dims(hidden)
        if "other" in h_kinds or hidden.ndim < 2:
            fail(fn, "hidden", _LINEAR_HIDDEN, f"placements {tuple(hidden.placements)}")
        global_rows = tuple(hidden.shape[:-1])
    else:
        if sum(k == "shard0" for k in w_kinds) > 1:
            fail(
                fn,
                "hidden",
                "be a DTensor on the weight's mesh when the weight is sharded over more than "
                "one mesh dimension (FSDP2 x tensor parallel): its placements say which "
                "dimension splits the rows (Shard(0)) and which holds the same rows "
                "(Replicate())",
                "a plain tensor",
                TypeError,
            )
        h_kinds = ["rep"] * mesh.ndim
        global_rows = tuple(hidden.shape[:-1]) if isinstance(hidden, Tensor) else ()
    tp = [i for i in range(mesh.ndim) if w_kinds[i] == "shard0" and h_kinds[i] == "rep"]
    if len(tp) > 1:
        fail(
            fn,
            "weight",
            "split its classes over one mesh dimension at most (Shard(0) with hidden replicated)",
            f"placements {tuple(weight.placements)} with hidden replicated on dimensions {tp}",
        )
    batch = tuple(i for i in range(mesh.ndim) if h_kinds[i] == "shard0")
    if bias is not None:
        if not isinstance(bias, DTensor) or bias.device_mesh != mesh or _dims(bias) != w_kinds:
            shown = (
                f"placements {tuple(bias.placements)}"
                if isinstance(bias, DTensor)
                else type(bias).__name__
            )
            fail(fn, "bias", f"be a DTensor placed like weight {tuple(weight.placements)}", shown)
    # gather the weight over the row-splitting dimensions; its gradient there is a sum
    whole = [Replicate() if i in batch else weight.placements[i] for i in range(mesh.ndim)]
    grads = [Partial() if i in batch else whole[i] for i in range(mesh.ndim)]

    def local(t: Any) -> Any:
        return t.redistribute(mesh, whole).to_local(grad_placements=grads)

    w_local = local(weight)
    b_local = None if bias is None else local(bias)
    h_local = hidden.to_local() if isinstance(hidden, DTensor) else hidden
    start, stop, group = 0, weight.shape[0], None
    if tp:
        placed = [Shard(0) if i == tp[0] else Replicate() for i in range(mesh.ndim)]
        shape, offset = compute_local_shape_and_global_offset(weight.shape, mesh, placed)
        start, stop, group = offset[0], offset[0] + shape[0], mesh.get_group(tp[0])
    rows = _Layout(mesh, tuple(weight.placements), None, batch, 0, weight.shape[0])
    return Linear(
        h_local, w_local, b_local, group, start, stop, weight.shape[0], mesh, rows, global_rows
    )


@_host_only
def _same_rows(fn: str, lin: Linear) -> Exception | None:
    """Where the classes are split over a group, its ranks must multiply the same rows: an
    FSDP2-sharded weight (each rank its own rows) passed with a plain ``hidden`` would
    otherwise combine different rows' statistics. A checksum of ``hidden`` (its shape, and two
    sums of its values weighted by fixed pseudo-random factors per feature and per row, in
    float64) is compared over the group by one all-reduce of twelve numbers, a collective every
    rank of the group runs whatever its own checks found: ``N x D`` multiply-adds against the
    projection's ``N x D x V / P``."""
    if lin.group is None or lin.hidden.dim() < 1:
        return None
    h = lin.hidden.detach()
    rows_n, feats = math.prod(h.shape[:-1]), h.shape[-1]
    flat = h.reshape(rows_n, feats)
    # fixed pseudo-random weights (the same on every rank) for features and rows: swapped
    # features, permuted rows or one-hot rows with equal sums all change the checksum
    gen = torch.Generator().manual_seed(0x5EED)
    v = torch.rand(feats, 1, generator=gen, dtype=torch.float64).add_(0.5).to(h.device)
    u = torch.rand(rows_n, generator=gen, dtype=torch.float64).add_(0.5).to(h.device)
    proj = torch.empty(rows_n, dtype=torch.float64, device=h.device)
    step = max(1, (1 << 20) // max(1, feats))  # float64 copies of at most 2**20 elements
    for i in range(0, rows_n, step):
        proj[i : i + step] = (flat[i : i + step].to(torch.float64) * v.T).sum(-1)
    size = torch.tensor([h.numel(), feats, h.dim()], dtype=torch.float64).to(h.device)
    sums = torch.stack([proj.sum(), (proj * u).sum(), (proj.abs() * u).sum()])
    mine = torch.cat([size, sums])
    both = torch.cat([mine, -mine])  # one MIN all-reduce gives the min and the max
    dist.all_reduce(both, op=dist.ReduceOp.MIN, group=lin.group)
    low, high = both[: mine.numel()].tolist(), (-both[mine.numel() :]).tolist()
    if not all(math.isfinite(x) for x in low + high):
        return None  # NaN or infinite values: not compared (the loss will show them)
    # the sizes exactly; the sums to 1e-9 of their magnitude (ranks that sum in another
    # order, e.g. with other thread counts, differ by rounding alone)
    slack = 1e-9 * max(abs(low[-1]), abs(high[-1]), 1e-300)
    if low[:3] == high[:3] and all(
        b - a <= slack for a, b in zip(low[3:5], high[3:5], strict=True)
    ):
        return None
    return ValueError(
        f"{fn}: hidden must hold the same rows on every rank of the group that splits the "
        "classes (each rank multiplies them by its own classes), got different rows on this "
        "group's ranks; for an FSDP2-sharded weight with each rank's own rows, pass hidden as a "
        "DTensor sharded over its rows: DTensor.from_local(hidden, mesh, [Shard(0)])"
    )


def class_slice(w: Any, lin: Linear) -> Any:
    """This rank's slice of class weights given whole (plain, or a DTensor)."""
    w = _whole(w)
    return None if w is None else w[lin.start : lin.stop]


def _replicated(a: Any) -> Any:
    """A row-aligned argument of the linear forms (hidden is replicated) as a plain tensor of
    every row."""
    return a.full_tensor() if _is_dtensor(a) else a


def _call(fn: str, call: Callable[[], Any]) -> Any:
    """``call()`` (a vocabulary-parallel function: its errors are the same on every rank of
    its group already) with our function's name in its errors."""
    try:
        return call()
    except (TypeError, ValueError, NotImplementedError, RuntimeError) as exc:
        text = str(exc).replace(f"vocab_parallel_{fn}:", f"{fn}:")
        if text == str(exc):
            raise
        raise type(exc)(text) from exc


def _rows_target(fn: str, lin: Linear, a: Any, arg: str) -> Any:
    """A row-aligned argument of the linear forms as this rank's rows: a DTensor is
    redistributed to the rows' layout, a plain tensor may hold every row or this rank's."""
    if a is None or not isinstance(a, Tensor):
        return a
    if not lin.rows.batch_dims:
        return _replicated(a)
    local_rows = tuple(lin.hidden.shape[:-1])
    return _rows_local(fn, arg, a, lin.rows, lin.global_rows, local_rows)


def _agree_after_call(fn: str, lin: Linear, error: Exception | None) -> None:
    """After a linear form's computation: where a rank could have failed alone (its own rows
    checked by the single-process function, or a tensor-parallel group's error that the
    other row-splitting ranks did not see) every rank raises, none waits in a collective;
    elsewhere (one tensor-parallel group spanning the mesh) its error is already everyone's."""
    if lin.rows.batch_dims or lin.group is None:
        _agree(fn, lin.mesh, error)
    elif error is not None:
        raise error


def _plain_global_rows(lin: Linear, a: Any) -> bool:
    """A plain row-aligned argument of the linear forms holding every row (not only this
    rank's): the same on every rank, compared."""
    if not lin.rows.batch_dims:
        return False
    return _plain_global(a, lin.global_rows, tuple(lin.hidden.shape[:-1]))


def linear_cross_entropy(
    fn: str,
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any,
    local: Callable[..., Tensor],
    **options: Any,
) -> Any:
    """:func:`crossentropy.torch.linear_cross_entropy` with a DTensor weight (see
    :func:`linear`): the vocabulary-parallel linear path over the tensor-parallel group, or
    ``local`` (the single-process function) when the classes are whole here; a reduced loss is
    ``Partial`` over the row-splitting mesh dimensions (a ``"mean"`` divided by the global
    denominator), replicated elsewhere."""
    _refuse_transforms(fn)
    lin = linear(fn, hidden, weight, bias)
    reduction = options.pop("reduction", "mean")
    class_weight = _whole(options.pop("class_weight", None))
    error: Exception | None = None
    t = sw = None
    try:
        if not isinstance(target, Tensor):
            fail(fn, "target", "be a Tensor (or a DTensor)", type(target).__name__, TypeError)
        if reduction not in ("mean", "sum", "none"):
            fail(fn, "reduction", "be 'mean', 'sum' or 'none'", repr(reduction))
        t = _rows_target(fn, lin, target, "target")
        sw = _rows_target(fn, lin, options.pop("sample_weight", None), "sample_weight")
        if class_weight is not None and tuple(class_weight.shape) != (lin.vocab,):
            shown = f"shape {tuple(class_weight.shape)}"
            fail(fn, "class_weight", f"have shape ({lin.vocab},)", shown)
    except Exception as exc:
        error = exc
    error = _same_rows(fn, lin) or error
    # the options, the class weights (each rank gets its slice: compared whole) and a plain
    # target of every row: the same on every rank of the mesh
    same = [(k, options.get(k)) for k in ("ignore_index", "label_smoothing", "z_loss", "softcap")]
    same += [("reduction", reduction), ("class_weight", class_weight)]
    same.append(("target", target if _plain_global_rows(lin, target) else _SKIP))
    _agree(fn, lin.mesh, error, same)
    t, sw = _redistribute(t, lin.rows), _redistribute(sw, lin.rows)
    split_rows = bool(lin.rows.batch_dims)
    red = "sum" if split_rows and reduction == "mean" else reduction
    loss = None
    try:  # this rank's own checks of its rows (class range, ...) happen in here
        if lin.group is None:
            loss = local(
                lin.hidden,
                lin.weight,
                t,
                lin.bias,
                class_weight=class_weight,
                sample_weight=sw,
                reduction=red,
                **options,
            )
        else:
            loss = _call(
                fn,
                lambda: vocab_parallel_linear_cross_entropy(
                    lin.hidden.reshape(-1, lin.hidden.shape[-1]),
                    lin.weight,
                    t.reshape(-1),
                    lin.bias,
                    group=lin.group,
                    class_weight=None
                    if class_weight is None
                    else class_weight[lin.start : lin.stop],
                    sample_weight=None if sw is None else sw.reshape(-1),
                    vocab_size=lin.vocab,
                    reduction=red,
                    **options,
                ),
            )
    except Exception as exc:
        error = exc
    _agree_after_call(fn, lin, error)
    assert loss is not None
    if reduction == "none":
        return lin.wrap(loss.reshape(t.shape), lin.global_rows, reduced=False)
    if split_rows and reduction == "mean":
        ignore = options.get("ignore_index", -100)
        loss = loss / _global_kept_weight(t, ignore, class_weight, loss.dtype, lin.rows)
    return lin.wrap(loss.reshape(()), (), reduced=split_rows)


def linear_token_stats(
    fn: str,
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any,
    local: Callable[..., Any],
    **options: Any,
) -> tuple[Any, ...]:
    """:func:`crossentropy.torch.linear_token_stats` with a DTensor weight (see
    :func:`linear`): the four statistics as DTensors, ``Shard(0)`` over the row-splitting mesh
    dimensions and replicated elsewhere."""
    _refuse_transforms(fn)
    lin = linear(fn, hidden, weight, bias)
    error: Exception | None = None
    t = None
    try:
        if not isinstance(target, Tensor):
            fail(fn, "target", "be a Tensor (or a DTensor)", type(target).__name__, TypeError)
        t = _rows_target(fn, lin, target, "target")
    except Exception as exc:
        error = exc
    error = _same_rows(fn, lin) or error
    same = [(k, options.get(k)) for k in ("ignore_index", "softcap", "temperature")]
    same.append(("target", target if _plain_global_rows(lin, target) else _SKIP))
    _agree(fn, lin.mesh, error, same)
    t = _redistribute(t, lin.rows)
    out: tuple[Any, ...] = ()
    try:
        if lin.group is None:
            out = tuple(local(lin.hidden, lin.weight, t, lin.bias, **options))
        else:
            out = _call(
                fn,
                lambda: vocab_parallel_linear_token_stats(
                    lin.hidden,
                    lin.weight,
                    t,
                    lin.bias,
                    group=lin.group,
                    vocab_size=lin.vocab,
                    **options,
                ),
            )
    except Exception as exc:
        error = exc
    _agree_after_call(fn, lin, error)
    return tuple(lin.wrap(o, lin.global_rows or tuple(t.shape), reduced=False) for o in out)
