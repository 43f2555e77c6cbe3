"""Vocabulary-parallel cross-entropy and per-token statistics over ``torch.distributed``.

When the output layer is split over the vocabulary across the ranks of a process group
(tensor parallelism), rank ``r`` holds the contiguous columns ``[start_r, stop_r)`` of the
``(N, V)`` logits. The loss (:func:`vocab_parallel_cross_entropy`,
:func:`vocab_parallel_linear_cross_entropy`) and the per-token statistics
(:func:`vocab_parallel_token_stats`, :func:`vocab_parallel_linear_token_stats`) are computed
without gathering the logits anywhere: each rank reduces its shard to a few numbers per row,
and only those cross the network.

Per call of the cross-entropy, each rank sends

- one all-gather of a 15-integer handshake (shard width, rows, the function, dtype and
  reduction, a 64-bit BLAKE2b digest of the target's bytes and the target's range on this
  rank, the options), which fixes the shard offsets and validates the input on every rank
  before any collective that could hang on bad input;
- one all-reduce (MAX) of the ``N`` row maxima;
- one all-reduce (SUM) of at most ``4 N + 1`` scalars: the sum of exponentials, the target
  logit (its owner contributes it), the label-smoothing term and the target's class weight;
- for the linear form only, in backward, one all-reduce (SUM) of ``d hidden`` (``N x D``).

The per-token statistics send the same handshake and ``N`` maxima, then ``3 N`` sums (the
sum of exponentials, the target logit, the entropy's sum) and ``N`` argmax candidates (MIN).

Nothing of size ``N x V`` ever crosses the network.

The computation is the single-process one (``functional.py``, ``tokens.py``): the same
autograd Functions and kernels, given this rank's ``Shard`` (where its classes lie), run the
statistics pass on the shard's columns; ``_shard.py`` adds up the ranks' partial sums with the
all-reduces above; the per-row losses, gradient coefficients and gradient pass
follow as in one process, where the combining step is skipped.

Validation happens in that one handshake, on every call. Each rank first runs its local
checks (types, dtypes, shapes, devices, options) and summarises its own target:
its minimum and maximum over the rows that are not ``ignore_index``, and a BLAKE2b digest of
its values as little-endian int64 bytes (a copy to the CPU on an accelerator). A local error
is not raised at once: the rank sends a failing row, and every rank then raises it with the
same type and message (``"... on rank r"``). Otherwise every rank runs the same checks on the
same gathered table, so all of them raise the same error or none does: the options, dtypes,
rows and widths agree, **every rank's** target lies in ``[0, V)`` or is ``ignore_index``
(``V`` the sum of the widths), and every rank's digest equals rank 0's (any difference in
the targets is detected, up to a 2**-64 chance of collision). Sample weights are compared
the same way (a digest of their values as float64). Only then does any other collective run.

Double backward is not supported: a backward with ``create_graph=True`` (for example
``torch.autograd.grad(loss, x, create_graph=True)``, or a Hessian) raises a ``RuntimeError``
at the start of the backward, before any collective, so it raises on every rank that runs it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from .._validation import fail
from . import _token_ops as _tokens
from ._autograd import _CrossEntropyIndex, _LinearCrossEntropy, _TokenStats
from ._checks import (
    check_chunk_size,
    check_class_weight,
    check_impl,
    check_options,
    check_projection,
    check_sample_weight,
    check_softcap,
    check_temperature,
    check_tensor,
    check_z_loss,
    python_scalar,
)
from ._modes import (
    autocast_dtype,
    autocast_on,
    autocast_projection,
    no_autocast,
    transforms_active,
)
from ._token_ops import TokenStats
from ._types import Options, Shard

__all__ = [
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_token_stats",
    "vocab_parallel_token_stats",
]

_REDUCTIONS = ("none", "mean", "sum")
_SLICE = "this rank's slice of the class weights"
_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
#: The public functions, by their index in the handshake's ``flags``.
_FUNCTIONS = (
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_token_stats",
    "vocab_parallel_linear_token_stats",
)
# Handshake columns, one int64 each, all-gathered once per call.
_COLUMNS = (
    "ok",
    "width",
    "rows",
    "flags",  # function, dtype, reduction and three booleans, packed (see _FLAGS)
    "digest",
    "tmin",
    "tmax",
    "ignore_index",
    "label_smoothing",
    "vocab_size",
    "hidden_dim",
    "z_loss",
    "softcap",  # 0 for None (a softcap is > 0)
    "sample_digest",  # 0 without sample weights
    "temperature",
)
#: The fields packed into the ``flags`` column: (name, bit offset, bit width).
_FLAGS = (
    ("function", 0, 4),
    ("dtype", 4, 4),
    ("reduction", 8, 4),
    ("weight", 12, 1),
    ("hidden_grad", 13, 1),
    ("sample_weight", 14, 1),
)
_INT64_MAX = 2**63 - 1
_INT64_MIN = -(2**63)


# ---------------------------------------------------------------------------------------------
# Validation: local checks, one all-gather, the same global checks on every rank
# ---------------------------------------------------------------------------------------------


def _float_bits(x: float) -> int:
    return int(struct.unpack("<q", struct.pack("<d", float(x)))[0])


def _bits_float(bits: int) -> float:
    return float(struct.unpack("<d", struct.pack("<q", int(bits)))[0])


def _check_group(fn: str, group: Any) -> tuple[int, int]:
    """This process's rank in ``group`` and the group's size; raised locally (no collective)."""
    if not dist.is_available() or not dist.is_initialized():
        fail(
            fn,
            "group",
            "belong to an initialised process group (call torch.distributed.init_process_group)",
            "no default process group",
        )
    rank = dist.get_rank(group)
    if rank < 0:
        fail(fn, "group", "contain the calling process", "a group without this rank")
    return rank, dist.get_world_size(group)


def _check_float_dtype(fn: str, arg: str, x: Tensor) -> None:
    if x.dtype not in _DTYPES:
        names = ", ".join(str(d).removeprefix("torch.") for d in _DTYPES)
        fail(fn, arg, f"have one of the dtypes {names}", f"dtype {x.dtype}", TypeError)


def _check_options(
    fn: str,
    reduction: object,
    ignore_index: object,
    label_smoothing: object,
    vocab_size: object,
    z_loss: object,
    softcap: object,
) -> tuple[float, float | None]:
    """Validated ``(z_loss, softcap)``: Python floats (``-0.0`` as ``0.0``), or None."""
    check_options(fn, reduction, label_smoothing, ignore_index)
    z = check_z_loss(fn, z_loss) + 0.0
    cap = check_softcap(fn, softcap)
    if vocab_size is not None:
        if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
            fail(fn, "vocab_size", "be an int or None", type(vocab_size).__name__, TypeError)
        if not 1 <= vocab_size <= _INT64_MAX:
            fail(fn, "vocab_size", "be positive (and fit in int64)", vocab_size)
    return z, cap


def _check_target(fn: str, target: object, rows: int, device: torch.device) -> Tensor:
    target = check_tensor(fn, "target", target, floating=False)
    if target.shape != (rows,):
        fail(fn, "target", f"have shape ({rows},) (one class index per row)", tuple(target.shape))
    if target.device != device:
        fail(fn, "target", f"be on the logits' device {device}", f"device {target.device}")
    return target


def _target_digest(target: Tensor) -> int:
    """A 64-bit BLAKE2b digest of the target's values as little-endian int64, as an int64.

    Any difference in the values (not only in a linear combination of them) changes it, up
    to a 2**-64 chance of collision; the integer dtype the target came in does not. A target
    of other than one dimension (the token statistics') adds its shape: ``(2, 3)`` and
    ``(3, 2)`` targets with the same values in memory differ (their outputs' shapes would).
    """
    values = target.detach().to(device="cpu", dtype=torch.int64).contiguous().numpy()
    digest = hashlib.blake2b(values.astype("<i8", copy=False).tobytes(), digest_size=8)
    if target.dim() != 1:
        digest.update(struct.pack(f"<{target.dim() + 1}q", target.dim(), *target.shape))
    return int.from_bytes(digest.digest(), "little", signed=True)


def _sample_digest(sample_weight: Tensor | None) -> int:
    """A 64-bit BLAKE2b digest of the sample weights as little-endian float64 (0 if None)."""
    if sample_weight is None:
        return 0
    values = sample_weight.detach().to(device="cpu", dtype=torch.float64).contiguous().numpy()
    values = values + 0.0  # -0.0 and 0.0 are the same weight: one digest
    digest = hashlib.blake2b(values.astype("<f8", copy=False).tobytes(), digest_size=8)
    return int.from_bytes(digest.digest(), "little", signed=True)


def _pack_flags(**fields: int) -> int:
    """The ``flags`` column: each field of :data:`_FLAGS` in its bits."""
    flags = 0
    for name, offset, bits in _FLAGS:
        value = fields[name]
        if not 0 <= value < 1 << bits:  # pragma: no cover - our own indices
            raise AssertionError(f"{name}={value} does not fit in {bits} bits")
        flags |= value << offset
    return flags


def _unpack_flags(flags: int) -> dict[str, int]:
    return {name: (flags >> offset) & ((1 << bits) - 1) for name, offset, bits in _FLAGS}


def _target_summary(target: Tensor, ignore_index: int) -> tuple[int, int, int]:
    """(digest, min, max) of this rank's target; min/max over the rows that are not ignored."""
    t = target.to(torch.int64)
    kept = t[t != ignore_index]
    if kept.numel() == 0:
        return _target_digest(t), _INT64_MAX, _INT64_MIN
    return _target_digest(t), int(kept.min().item()), int(kept.max().item())


def _handshake(fn: str, group: Any, row: Sequence[int], error: Exception | None) -> list[list[int]]:
    """All-gather every rank's handshake row; raise the first rank's local error everywhere.

    The error is raised with the same type (TypeError, ValueError, else RuntimeError) and
    message on every rank, the message ending with the failing rank.
    """
    world = dist.get_world_size(group)
    device = (
        torch.device("cuda", torch.cuda.current_device())
        if dist.get_backend(group) == "nccl"
        else torch.device("cpu")
    )
    mine = torch.tensor(list(row), dtype=torch.int64, device=device)
    parts = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(parts, mine, group=group)
    table = [[int(v) for v in p.tolist()] for p in parts]
    if all(r[0] == 1 for r in table):
        return table
    # Only on the error path: exchange the messages so that every rank raises the same one.
    messages: list[Any] = [None] * world
    local = None if error is None else (type(error).__name__, str(error))
    dist.all_gather_object(messages, local, group=group)
    for rank, message in enumerate(messages):
        if message is not None:
            kind, text = message
            kinds = {"TypeError": TypeError, "ValueError": ValueError}
            raise kinds.get(kind, RuntimeError)(f"{text} on rank {rank}")
    raise RuntimeError(f"{fn}: handshake failed without a message")  # pragma: no cover


def _check_table(
    fn: str, table: list[list[int]], group: Any, rank: int, *, logits_arg: str, weight_arg: str
) -> Shard:
    """The checks every rank runs on the same gathered table: same result on every rank.

    The target is checked on every rank: each rank's own range (before the digests, so that
    a bad class index on one rank is reported as such), then each rank's digest against
    rank 0's.
    """
    col = {name: [r[i] for r in table] for i, name in enumerate(_COLUMNS)}
    for row in table:
        for name, value in _unpack_flags(row[_COLUMNS.index("flags")]).items():
            col.setdefault(name, []).append(value)

    def same(name: str, arg: str, shown: Sequence[object], what: str = "be the same") -> None:
        if len(set(col[name])) > 1:
            fail(fn, arg, f"{what} on every rank", f"{list(shown)} (by rank)")

    def given(name: str) -> list[str | None]:
        return ["given" if g else None for g in col[name]]

    functions = [_FUNCTIONS[f] for f in col["function"]]
    same("function", "the function called", functions)
    same("dtype", logits_arg, [_DTYPES[d] for d in col["dtype"]], "have the same dtype")
    same("reduction", "reduction", [_REDUCTIONS[r] for r in col["reduction"]])
    same("ignore_index", "ignore_index", list(col["ignore_index"]))
    same("label_smoothing", "label_smoothing", [_bits_float(b) for b in col["label_smoothing"]])
    same("weight", weight_arg, given("weight"), "be given (or None)")
    same("vocab_size", "vocab_size", [None if v < 0 else v for v in col["vocab_size"]])
    same("hidden_dim", "hidden", list(col["hidden_dim"]), "have the same number of columns")
    grads = [bool(g) for g in col["hidden_grad"]]
    same("hidden_grad", "hidden", grads, "have the same requires_grad")
    same("z_loss", "z_loss", [_bits_float(b) for b in col["z_loss"]])
    same("softcap", "softcap", [_bits_float(b) if b else None for b in col["softcap"]])
    same("temperature", "temperature", [_bits_float(b) for b in col["temperature"]])
    same("sample_weight", "sample_weight", given("sample_weight"), "be given (or None)")
    same("rows", logits_arg, list(col["rows"]), "have the same number of rows")
    widths = tuple(col["width"])
    vocab = sum(widths)
    vocab_size = col["vocab_size"][0]
    if vocab_size >= 0 and vocab != vocab_size:
        fail(
            fn,
            "the shard widths",
            f"add up to vocab_size={vocab_size}",
            f"widths {list(widths)} (sum {vocab})",
        )
    if vocab == 0:
        fail(fn, "the shard widths", "add up to at least one class", f"widths {list(widths)}")
    ranges = list(zip(col["tmin"], col["tmax"], strict=True))
    bad = [r for r, (lo, hi) in enumerate(ranges) if lo <= hi and (lo < 0 or hi >= vocab)]
    if bad:
        lo, hi = ranges[bad[0]]
        shown = f"values in [{lo}, {hi}]"
        if len(bad) < len(ranges) or len(set(ranges)) > 1:
            # not the same bad target everywhere: say where (the first such rank, and how many)
            shown += f" on rank {bad[0]}"
            if len(bad) > 1:
                shown += f" (and on {len(bad) - 1} other rank{'s' if len(bad) > 2 else ''})"
        ignore_index = col["ignore_index"][0]
        fail(
            fn,
            "target",
            f"contain class indices in [0, {vocab}) or ignore_index={ignore_index}",
            shown,
        )
    digests = col["digest"]
    if len(set(digests)) > 1:
        differ = [r for r, c in enumerate(digests) if c != digests[0]]
        fail(fn, "target", "be identical on every rank", f"a different target on ranks {differ}")
    digests = col["sample_digest"]
    if len(set(digests)) > 1:
        differ = [r for r, c in enumerate(digests) if c != digests[0]]
        shown = f"different sample weights on ranks {differ}"
        fail(fn, "sample_weight", "be identical on every rank", shown)
    start = sum(widths[:rank])
    return Shard(group, rank, widths, start, start + widths[rank], vocab)


@dataclass(frozen=True)
class _Local:
    """What a rank's local checks found: the handshake row is built from it."""

    width: int
    rows: int
    dtype: torch.dtype
    target: Tensor
    hidden_dim: int = 0
    hidden_grad: bool = False
    sample_weight: Tensor | None = None


def _validate(
    fn: str,
    group: Any,
    local_checks: Callable[[], _Local],
    *,
    reduction: Any = "none",
    ignore_index: Any,
    label_smoothing: Any = 0.0,
    vocab_size: Any,
    has_weight: bool = False,
    z_loss: Any = 0.0,
    softcap: Any = None,
    temperature: Any = 1.0,
    logits_arg: str,
    weight_arg: str = "weight",
) -> Shard:
    """Local checks, one all-gather of the handshake rows, then the same global checks."""
    rank, _ = _check_group(fn, group)
    row = [0] * len(_COLUMNS)
    error: Exception | None = None
    try:
        z, cap = _check_options(
            fn, reduction, ignore_index, label_smoothing, vocab_size, z_loss, softcap
        )
        temp = check_temperature(fn, temperature)
        local = local_checks()
        digest, tmin, tmax = _target_summary(local.target, ignore_index)
        flags = _pack_flags(
            function=_FUNCTIONS.index(fn),
            dtype=_DTYPES.index(local.dtype),
            reduction=_REDUCTIONS.index(reduction),
            weight=int(has_weight),
            hidden_grad=int(local.hidden_grad),
            sample_weight=int(local.sample_weight is not None),
        )
        row = [
            1,
            local.width,
            local.rows,
            flags,
            digest,
            tmin,
            tmax,
            ignore_index,
            _float_bits(float(label_smoothing) + 0.0),  # -0.0 as 0.0
            -1 if vocab_size is None else vocab_size,
            local.hidden_dim,
            _float_bits(z),
            0 if cap is None else _float_bits(cap),
            _sample_digest(local.sample_weight),
            _float_bits(temp),
        ]
    except Exception as exc:  # carried to every rank: none may be left waiting
        error = exc
        row = [0] * len(_COLUMNS)
    table = _handshake(fn, group, row, error)
    return _check_table(fn, table, group, rank, logits_arg=logits_arg, weight_arg=weight_arg)


# ---------------------------------------------------------------------------------------------
# The computation: the single-process autograd Functions, given this rank's Shard
# ---------------------------------------------------------------------------------------------


def _refuse_transforms(fn: str, **arguments: object) -> None:
    """Raise our error for a call traced by a ``torch.func`` transform (every rank is, so no
    rank is left waiting): the Functions here run collectives on real tensors and define no
    batching or jvp rule. The error names the first argument the transform wraps (or "the
    call", when it wraps none of them)."""
    if transforms_active():
        wrapped = torch._C._functorch.is_functorch_wrapped_tensor
        traced = [k for k, v in arguments.items() if isinstance(v, Tensor) and wrapped(v)]
        fail(
            fn,
            traced[0] if traced else "the call",
            "not be traced by a torch.func transform (grad, vmap, jacrev, jvp, ...) or "
            "forward-mode AD: the vocabulary-parallel functions run collectives on real "
            "tensors; differentiate with torch.autograd (loss.backward(), torch.autograd.grad)",
            "a call under a torch.func transform",
            RuntimeError,
        )


def _autocast_options(opts: Options, x: Tensor, autocast: bool) -> Options:
    """Under autocast the loss is float32 for half-precision inputs, as ``F.cross_entropy``'s
    (computed in float32, never rounded to the input's dtype on the way)."""
    return dataclasses.replace(opts, out_dtype=autocast_dtype(x.dtype)) if autocast else opts


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def _options(
    fn: str,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    impl: str,
    z_loss: object,
    softcap: object,
) -> Options:
    """The validated options (checked on every rank in the handshake already)."""
    z = check_z_loss(fn, z_loss) + 0.0
    cap = check_softcap(fn, softcap)
    return Options(
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=float(label_smoothing),
        z_loss=z,
        softcap=cap,
        impl=impl,
    )


def vocab_parallel_cross_entropy(
    logits_shard: Tensor,
    target: Tensor,
    *,
    group: Any = None,
    weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Tensor | None = None,
    vocab_size: int | None = None,
    impl: str = "auto",
) -> Tensor:
    r"""Cross-entropy of logits split over the vocabulary across the ranks of ``group``.

    Equal to ``F.cross_entropy(logits, target, weight, ignore_index=ignore_index,
    reduction=reduction, label_smoothing=label_smoothing)`` on the gathered ``(N, V)``
    logits, which are never gathered: rank ``r`` holds the columns ``[start_r, stop_r)``,
    and only per-row scalars cross the network. With ``z_loss``, ``softcap`` and
    ``sample_weight``, equal to :func:`crossentropy.torch.cross_entropy` with the same options
    (:doc:`/guide/options`).

    Parameters
    ----------
    logits_shard : Tensor, shape (N, V_r)
        This rank's contiguous columns of the logits, float16/bfloat16/float32/float64.
        Shards may have different widths (even 0); they are laid out in rank order, so
        ``start_r`` is the sum of the widths of the ranks before ``r``.
    target : Tensor, shape (N,)
        Global class indices in ``[0, V)`` (or ``ignore_index``), any integer dtype,
        **identical on every rank**. Each rank checks the range of its own target, and the
        ranks compare 64-bit BLAKE2b digests of their targets' values, in the handshake.
    group : ProcessGroup, optional
        The ranks that share the vocabulary; the default process group if None.
    weight : Tensor, shape (V_r,), optional
        **This rank's slice** of the class weights, sharded like the logits:
        ``weight_full[start_r:stop_r]`` (so, like every per-class quantity here, its memory
        falls as 1/P, and no rank needs the whole vector). Treated as a constant (no
        gradient). Given on every rank or on none.
    ignore_index : int, default -100
        Rows whose target equals it contribute nothing (and are left out of the mean).
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"mean"`` divides by the number of kept rows, or by their total class weight.
    label_smoothing : float in [0, 1], default 0.0
        Mixes the target with the uniform distribution over the **global** vocabulary ``V``.
    z_loss : float >= 0, default 0.0
        Adds ``z_loss * lse**2`` per kept row (the PaLM z-loss), weighted by the target's
        class weight ``w_y`` like the row's share of the mean's denominator; ``lse`` is the
        global log-sum-exp (no extra communication).
    softcap : float > 0, optional
        The logits become ``x' = softcap * tanh(x / softcap)`` before everything else (each
        shard elementwise); the gradient carries ``1 - (x'/softcap)**2``.
    sample_weight : Tensor, shape (N,), optional
        One weight per row (an RL advantage, say), any floating dtype, **identical on every
        rank** (compared by a 64-bit BLAKE2b digest of its values in the handshake, like the
        target). It multiplies each row's loss (cross-entropy and z-loss) and its gradient;
        ``"mean"``'s denominator does not change; ignored rows give 0 whatever their weight.
        If it requires grad, its gradient ``∂L/∂s_i`` (the row's unweighted loss times the
        reduction's scale) is returned on every rank.
    vocab_size : int, optional
        If given, the shard widths must add up to it.
    impl : {"auto", "torch", "triton"}
        Kernels for the per-shard passes: ``"auto"`` runs Triton on CUDA tensors when it is
        installed and torch ops otherwise; ``"triton"`` also runs on CPU tensors under
        ``TRITON_INTERPRET=1`` (tests).

    Returns
    -------
    Tensor
        The loss, identical on every rank, in the logits' dtype: a scalar, or shape (N,) for
        ``reduction="none"`` (0 on ignored rows). Its gradient with respect to
        ``logits_shard`` is this rank's columns of the full gradient; backward does not
        communicate. The defaults ``z_loss=0.0``, ``softcap=None``, ``sample_weight=None``
        give the result of a call without them, bit for bit.

    Raises
    ------
    TypeError, ValueError
        On every rank, with the same message, if any rank's input is bad: the ranks first
        exchange one small handshake (shard width, rows, dtype, the digest and range of the
        rank's target, the options), so a bad input on one rank cannot leave the others
        waiting in a collective. A rank's own bad input is reported as ``"... on rank r"``;
        a target out of range on some ranks only as ``"... values in [lo, hi] on rank r"``
        (the first such rank); targets that differ as ``"target must be identical on every
        rank, got a different target on ranks [...]"``.
    ValueError
        Locally, without any collective, if there is no process group (every rank is then
        in the same situation).
    RuntimeError
        From ``torch.distributed`` if a rank dies or the group's timeout expires. Ours, in
        backward and before it computes anything, if the backward builds a graph
        (``create_graph=True``): double backward is not supported.

    Notes
    -----
    With :math:`\ell_i = \log \sum_{j<V} e^{x_{ij}}`, kept rows :math:`K`, class weights
    :math:`w` (1 if None), :math:`W = \sum_j w_j` and smoothing :math:`\varepsilon`:

    .. math::

        L_i = (1 - \varepsilon)\, w_{t_i} (\ell_i - x_{i t_i})
              + \frac{\varepsilon}{V} \sum_j w_j (\ell_i - x_{ij}),
        \qquad
        L = \frac{\sum_{i \in K} L_i}{\sum_{i \in K} w_{t_i}} \text{ (mean)}

    .. math::

        \frac{\partial L_i}{\partial x_{ij}}
        = \Big((1 - \varepsilon) w_{t_i} + \frac{\varepsilon W}{V}\Big)
          \operatorname{softmax}(x_i)_j
          - (1 - \varepsilon) w_{t_i} [j = t_i] - \frac{\varepsilon}{V} w_j

    With the options, :math:`x` is the softcapped :math:`x' = c \tanh(x / c)`, :math:`L_i`
    becomes :math:`s_i (L_i + z\, w_{t_i} \ell_i^2)` (the mean's denominator unchanged), the
    coefficient of the softmax gains :math:`2 z\, w_{t_i} \ell_i`, the gradient is multiplied
    by :math:`s_i` and by :math:`1 - (x'_{ij}/c)^2`. Every factor is per row (known on every
    rank from the global :math:`\ell_i`) or per column (elementwise on the shard): the
    communication is the same.

    Each rank computes its shard's row max :math:`m_r`, :math:`\sum_{j \in r} e^{x_{ij} -
    m_r}`, its part of :math:`\sum_j w_j x_{ij}` and, on the rank owning the target column,
    :math:`x_{i t_i}` and :math:`w_{t_i}`. One all-reduce (MAX) of the maxima and one
    all-reduce (SUM) of the rescaled sums give :math:`\ell_i` on every rank: per call each
    rank sends one 15-integer handshake, ``N`` maxima and at most ``4 N + 1`` sums —
    O(N), never O(N V). Label smoothing uses the global ``V`` and ``W`` (Megatron-LM uses
    the local shard's size, so its loss differs per rank). All rows ignored: ``"mean"``
    is NaN as in PyTorch, ``"sum"`` is 0, the gradient is 0 (no 0/0 anywhere else).
    Label smoothing with class weights follows PyTorch: the smoothing term is weighted
    too, and the mean divides by the target weights only. The per-shard passes are the
    single-process kernels of :mod:`crossentropy.torch._kernels` (given the shard's class
    offset): the sums of exponentials leave the target column out, so a confident row's
    loss (``log1p``) and true-class gradient (``-(1 - p_t) = -Σ_{j≠t} p_j``) keep their
    relative precision instead of cancelling.

    Every rank of ``group`` must make the call, in the same order as its other
    collectives. If a rank dies or never calls, the others fail inside a collective: gloo
    raises a ``RuntimeError`` as soon as it notices the closed connection, and otherwise
    the process group's ``timeout`` (``init_process_group(timeout=...)``) applies; no
    call waits forever on a bad input.

    Examples
    --------
    A one-process group (``world_size=1``) holds the whole vocabulary; the result is that
    of ``F.cross_entropy``. ``examples/vocab_parallel.py`` runs the same on 2 ranks.

    >>> import torch
    >>> import torch.distributed as dist
    >>> import torch.nn.functional as F
    >>> from crossentropy.torch import vocab_parallel_cross_entropy
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> target = torch.tensor([0, 1])
    >>> loss = vocab_parallel_cross_entropy(logits, target, label_smoothing=0.1)
    >>> reference = F.cross_entropy(logits, target, label_smoothing=0.1)
    >>> print(f"{loss.item():.6f} {reference.item():.6f}")
    0.436873 0.436873
    >>> dist.destroy_process_group()
    """
    fn = "vocab_parallel_cross_entropy"
    _refuse_transforms(
        fn,
        logits_shard=logits_shard,
        target=target,
        weight=weight,
        sample_weight=sample_weight,
    )
    label_smoothing = python_scalar(label_smoothing, integral=False)
    ignore_index = python_scalar(ignore_index, integral=True)

    def local() -> _Local:
        x = check_tensor(fn, "logits_shard", logits_shard, floating=True)
        _check_float_dtype(fn, "logits_shard", x)
        if x.ndim != 2:
            fail(fn, "logits_shard", "be 2-D, shape (N, V_shard)", f"shape {tuple(x.shape)}")
        t = _check_target(fn, target, x.shape[0], x.device)
        w = check_class_weight(fn, "weight", weight, x.shape[1], what=_SLICE, device=x.device)
        if w is not None and not autocast_on(x) and w.dtype != x.dtype:  # as cross_entropy
            fail(fn, "weight", f"have the input's dtype {x.dtype}", f"dtype {w.dtype}", TypeError)
        s = check_sample_weight(fn, sample_weight, (x.shape[0],), x.device)
        check_impl(fn, impl, x)
        return _Local(x.shape[1], x.shape[0], x.dtype, t, sample_weight=s)

    shard = _validate(
        fn,
        group,
        local,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        vocab_size=vocab_size,
        has_weight=weight is not None,
        z_loss=z_loss,
        softcap=softcap,
        logits_arg="logits_shard",
        weight_arg="weight",
    )
    opts = _options(fn, ignore_index, reduction, label_smoothing, impl, z_loss, softcap)
    autocast = autocast_on(logits_shard)
    opts = _autocast_options(opts, logits_shard, autocast)
    with no_autocast(logits_shard):  # the kernels accumulate in float32 themselves
        out: Tensor = _CrossEntropyIndex.apply(  # type: ignore[no-untyped-call]
            logits_shard, target.to(torch.int64), weight, sample_weight, opts, False, shard
        )
    return out


def vocab_parallel_linear_cross_entropy(
    hidden: Tensor,
    weight_shard: Tensor,
    target: Tensor,
    bias_shard: Tensor | None = None,
    *,
    group: Any = None,
    class_weight: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Tensor | None = None,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    impl: str = "auto",
) -> Tensor:
    r"""Cross-entropy of ``hidden @ W.T + b`` with ``W`` split over the vocabulary across ranks.

    Equal to ``F.cross_entropy(hidden @ W.T + b, target, class_weight, ...)`` (with
    ``z_loss``, ``softcap``, ``sample_weight``: to
    :func:`crossentropy.torch.linear_cross_entropy`) where ``W`` (V, D) and ``b`` (V,) are
    the row-wise concatenation of every rank's ``weight_shard`` and ``bias_shard`` in rank
    order. Each rank projects ``hidden`` onto its shard ``chunk_size``
    rows at a time, so neither the (N, V) logits nor this rank's (N, V_r) part of them ever
    exists at once; only per-row statistics cross the network in forward.

    Parameters
    ----------
    hidden : Tensor, shape (N, D)
        The inputs of the output layer, **identical on every rank** (replicated, as in
        tensor parallelism; its shape and ``requires_grad`` are checked, its values are
        not). Its gradient comes back already summed over the ranks: do not all-reduce it
        again.
    weight_shard : Tensor, shape (V_r, D)
        This rank's rows of the output layer's weight, same dtype as ``hidden``. Shards may
        have different numbers of rows (even 0).
    target : Tensor, shape (N,)
        Global class indices, identical on every rank.
    bias_shard : Tensor, shape (V_r,), optional
        This rank's part of the output layer's bias.
    group : ProcessGroup, optional
        The default process group if None.
    class_weight : Tensor, shape (V_r,), optional
        This rank's slice of the class weights (``weight`` of ``F.cross_entropy``), sharded
        like ``weight_shard``; named as in :func:`crossentropy.torch.linear_cross_entropy`.
    ignore_index, reduction, label_smoothing, z_loss, softcap, sample_weight, vocab_size
        As in :func:`vocab_parallel_cross_entropy`.
    chunk_size : int, optional
        Rows of ``hidden`` projected at a time. Default: the single-process kernel's
        (``crossentropy.torch._kernels.default_chunk_rows``: about 48 MiB of logits).
    impl : {"auto", "torch", "triton"}
        Kernels for the per-shard passes: ``"auto"`` runs Triton on CUDA tensors when it is
        installed and torch ops otherwise; ``"triton"`` also runs on CPU tensors under
        ``TRITON_INTERPRET=1`` (tests).

    Returns
    -------
    Tensor
        The loss, identical on every rank, in ``hidden``'s dtype. Backward gives ``d hidden``
        summed over the ranks (one all-reduce of N x D numbers), and this rank's
        ``d weight_shard`` and ``d bias_shard``.

    Raises
    ------
    TypeError, ValueError
        As :func:`vocab_parallel_cross_entropy`, on every rank with the same message; also
        if ``hidden`` has a different width on some rank, or requires grad on some ranks
        only (backward's all-reduce would otherwise wait for ranks that never come).
    RuntimeError
        As :func:`vocab_parallel_cross_entropy`: if a rank dies or times out, and ours for
        a backward with ``create_graph=True``, raised before backward's all-reduce (if only
        some ranks use ``create_graph=True``, the others wait in that all-reduce until the
        group's timeout).

    Notes
    -----
    The value and :math:`\partial L / \partial x` are those of
    :func:`vocab_parallel_cross_entropy` with :math:`x = h W_r^\top + b_r`; then
    :math:`\partial L / \partial h = \sum_r (\partial L / \partial x_r) W_r` (all-reduced),
    :math:`\partial L / \partial W_r = (\partial L / \partial x_r)^\top h` and
    :math:`\partial L / \partial b_r = \sum_i (\partial L / \partial x_r)_i`. The
    chunks are those of the single-process :func:`crossentropy.torch.linear_cross_entropy`
    (``_kernels.linear_row_stats`` and ``_kernels.linear_grad`` with the shard's class
    offset): backward recomputes each chunk's logits (one extra matmul) instead of keeping
    them, so a rank holds at most one chunk of logits, ``d hidden`` (N x D) and its
    ``d weight_shard``. float16/bfloat16 matmuls run in their dtype; statistics and
    gradient accumulators are float32. If a rank dies, the others fail in a collective, as
    for :func:`vocab_parallel_cross_entropy`; backward must run on every rank when
    ``hidden`` requires grad (it all-reduces ``d hidden``).

    Examples
    --------
    >>> import torch
    >>> import torch.distributed as dist
    >>> import torch.nn.functional as F
    >>> from crossentropy.torch import vocab_parallel_linear_cross_entropy
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> hidden = torch.tensor([[1.0, -1.0], [0.5, 2.0]])
    >>> w = torch.tensor([[0.3, 0.1], [-0.2, 0.4], [0.7, -0.5]])
    >>> target = torch.tensor([2, 1])
    >>> loss = vocab_parallel_linear_cross_entropy(hidden, w, target)
    >>> print(f"{loss.item():.6f} {F.cross_entropy(hidden @ w.T, target).item():.6f}")
    0.551145 0.551145
    >>> dist.destroy_process_group()
    """
    fn = "vocab_parallel_linear_cross_entropy"
    _refuse_transforms(
        fn,
        hidden=hidden,
        weight_shard=weight_shard,
        bias_shard=bias_shard,
        target=target,
        class_weight=class_weight,
        sample_weight=sample_weight,
    )
    # under autocast: hidden, weight and bias in the autocast dtype, as F.linear takes them
    autocast = isinstance(hidden, Tensor) and autocast_on(hidden)
    if autocast:
        hidden, weight_shard, bias_shard = autocast_projection(hidden, weight_shard, bias_shard)
    label_smoothing = python_scalar(label_smoothing, integral=False)
    ignore_index = python_scalar(ignore_index, integral=True)

    def local() -> _Local:
        h = check_tensor(fn, "hidden", hidden, floating=True)
        _check_float_dtype(fn, "hidden", h)
        if h.ndim != 2:
            fail(fn, "hidden", "be 2-D, shape (N, D)", f"shape {tuple(h.shape)}")
        w, _ = check_projection(
            fn, h, weight_shard, bias_shard, weight_arg="weight_shard", bias_arg="bias_shard"
        )
        check_chunk_size(fn, chunk_size)
        t = _check_target(fn, target, h.shape[0], h.device)
        cw = check_class_weight(
            fn, "class_weight", class_weight, w.shape[0], what=_SLICE, device=h.device
        )
        if cw is not None and not autocast and cw.dtype != h.dtype:  # as linear_cross_entropy
            need = f"have hidden's dtype {h.dtype}"
            fail(fn, "class_weight", need, f"dtype {cw.dtype}", TypeError)
        s = check_sample_weight(fn, sample_weight, (h.shape[0],), h.device)
        check_impl(fn, impl, h)
        grad = torch.is_grad_enabled() and h.requires_grad
        return _Local(w.shape[0], h.shape[0], h.dtype, t, h.shape[1], grad, s)

    shard = _validate(
        fn,
        group,
        local,
        reduction=reduction,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        vocab_size=vocab_size,
        has_weight=class_weight is not None,
        z_loss=z_loss,
        softcap=softcap,
        logits_arg="hidden",
        weight_arg="class_weight",
    )
    opts = _options(fn, ignore_index, reduction, label_smoothing, impl, z_loss, softcap)
    opts = _autocast_options(opts, hidden, autocast)
    with no_autocast(hidden):  # the inputs were cast above, as F.linear casts them
        out: Tensor = _LinearCrossEntropy.apply(  # type: ignore[no-untyped-call]
            hidden,
            weight_shard,
            bias_shard,
            target.to(torch.int64),
            class_weight,
            sample_weight,
            dataclasses.replace(opts, chunk_size=chunk_size or 0),
            (False, False, False),
            shard,
        )
    return out


def vocab_parallel_token_stats(
    logits_shard: Tensor,
    target: Tensor,
    *,
    group: Any = None,
    ignore_index: int = -100,
    vocab_size: int | None = None,
    softcap: float | None = None,
    impl: str = "auto",
    temperature: float = 1.0,
) -> TokenStats:
    r"""Per-token statistics of logits split over the vocabulary across the ranks of ``group``.

    Equal to :func:`crossentropy.torch.token_stats` of the gathered ``(*, V)`` logits (the
    log-probability of the target, the entropy, the log-sum-exp and the argmax of each
    position), which are never gathered: rank ``r`` holds the columns ``[start_r, stop_r)``,
    and only per-row scalars cross the network.

    Parameters
    ----------
    logits_shard : Tensor, shape ``(*, V_r)``
        This rank's contiguous columns of the logits, float16/bfloat16/float32/float64.
        Shards may have different widths (even 0), laid out in rank order.
    target : Tensor, shape ``(*)``
        Global class indices in ``[0, V)`` (or ``ignore_index``), any integer dtype,
        **identical on every rank** (checked as in :func:`vocab_parallel_cross_entropy`).
    group : ProcessGroup, optional
        The ranks that share the vocabulary; the default process group if None.
    ignore_index : int, default -100
        A target with no log-probability: its ``logprob`` is 0 and gets no gradient.
        ``entropy``, ``lse`` and ``argmax`` do not depend on the target and are computed at
        every position.
    vocab_size : int, optional
        If given, the shard widths must add up to it.
    softcap : float, optional
        ``c > 0``: the statistics are those of ``x' = c tanh(x / c)`` (Gemma 2's final logit
        softcapping), applied to each shard elementwise; see :doc:`/guide/options`.
    impl : {"auto", "torch", "triton"}
        Kernels for the per-shard passes, those of :func:`crossentropy.torch.token_stats`:
        ``"auto"`` runs Triton on CUDA tensors when it is installed and torch ops otherwise;
        ``"triton"`` also runs on CPU tensors under ``TRITON_INTERPRET=1`` (tests).
    temperature : float, default 1.0
        ``T > 0``: the statistics of ``x' / T`` (after the softcap), as in
        :func:`crossentropy.torch.token_stats`; the same on every rank (checked).

    Returns
    -------
    TokenStats
        ``(logprob, entropy, lse, argmax)``, each of ``target``'s shape and identical on
        every rank: float32 for float16, bfloat16 and float32 logits, float64 for float64;
        ``argmax`` is the **global** class index (int64, the smallest one on ties, as
        ``torch.argmax``) and not differentiable. The gradient of ``logprob``, ``entropy`` and
        ``lse`` with respect to ``logits_shard`` is this rank's columns of the full gradient;
        backward does not communicate.

    Raises
    ------
    TypeError, ValueError
        On every rank, with the same message, if any rank's input is bad (one handshake, as
        in :func:`vocab_parallel_cross_entropy`): types, dtypes, shapes, devices, options
        that differ between ranks, a target out of range or different on some rank.
    ValueError
        Locally, without any collective, if there is no process group.
    RuntimeError
        From ``torch.distributed`` if a rank dies or the group's timeout expires; ours, in
        backward, if the backward builds a graph (``create_graph=True``).

    Notes
    -----
    With the global row max :math:`M`, :math:`S = \sum_{j<V} e^{x_j - M}`,
    :math:`\mathrm{lse} = M + \log S`, :math:`p = \mathrm{softmax}(x)`:

    .. math::

        \log p_y = x_y - \mathrm{lse}, \qquad
        H = \mathrm{lse} - \sum_j p_j x_j = \log S + \frac{1}{S} \sum_j e^{x_j - M} (M - x_j).

    Rank :math:`r` runs the passes of :func:`crossentropy.torch.token_stats` on its columns
    (the same autograd Function and kernels, given this rank's shard), which give, relative to
    its own row max :math:`m_r`, :math:`s_r = \sum_{j \in r} e^{x_j - m_r}` and
    :math:`u_r = \sum_{j \in r} e^{x_j - m_r} (m_r - x_j)`; after one all-reduce (MAX) of
    the :math:`m_r`, one all-reduce (SUM) of :math:`e^{m_r - M} s_r`, the target logit and

    .. math::

        \sum_{j \in r} e^{x_j - M} (M - x_j) = e^{m_r - M} \big[u_r + (M - m_r)\, s_r\big]

    (every term :math:`\ge 0`: no cancellation) gives :math:`S`, :math:`\log p_y` and
    :math:`H` on every rank, exactly as one process finishes its own sums, and one all-reduce
    (MIN) of each shard's candidate index gives the argmax. Per call each rank sends the
    15-integer handshake, ``N`` maxima, ``3 N`` sums and ``N`` indices. Backward, for upstream
    gradients :math:`a, b, c` of ``logprob``, ``entropy``, ``lse``:

    .. math::

        \frac{\partial L}{\partial x_j} = a\,([j = y] - p_j) - b\, p_j (\log p_j + H)
            + c\, p_j,

    which each rank evaluates on its own columns from the global :math:`\mathrm{lse}` (with
    its rounding error) and :math:`H`, times :math:`1 - (x'_j / c)^2` with ``softcap``.
    Without softcap, ``-inf`` logits (a masked vocabulary, even a whole shard's row) add
    nothing and get zero gradient; with it, a ``-inf`` logit becomes :math:`-c`, as in the
    single-process functions. The per-shard passes run in torch ops (tiles of about 2M
    elements), or on the Triton kernels (``impl``).

    Every rank of ``group`` must make the call, in the same order as its other collectives.

    Examples
    --------
    >>> import torch
    >>> import torch.distributed as dist
    >>> from crossentropy.torch import token_stats, vocab_parallel_token_stats
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> logits = torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, 0.3]])
    >>> out = vocab_parallel_token_stats(logits, torch.tensor([0, -100]))
    >>> out.logprob, out.entropy, out.argmax
    (tensor([-0.4170,  0.0000]), tensor([0.8467, 0.6329]), tensor([0, 1]))
    >>> torch.allclose(out.entropy, token_stats(logits, torch.tensor([0, -100])).entropy)
    True
    >>> dist.destroy_process_group()
    """
    fn = "vocab_parallel_token_stats"
    _refuse_transforms(fn, logits_shard=logits_shard, target=target)
    ignore_index = python_scalar(ignore_index, integral=True)

    def local() -> _Local:
        x = check_tensor(fn, "logits_shard", logits_shard, floating=True)
        _check_float_dtype(fn, "logits_shard", x)
        if x.ndim == 0:
            fail(fn, "logits_shard", "have shape (*, V_shard), at least 1-D", "shape ()")
        check_impl(fn, impl, x)
        what = "logits_shard's shape without the classes"
        t = _tokens._check_target(fn, target, x, "logits_shard", what)
        return _Local(x.shape[-1], t.numel(), x.dtype, t)  # t's shape is in its digest

    shard = _validate(
        fn,
        group,
        local,
        ignore_index=ignore_index,
        vocab_size=vocab_size,
        softcap=softcap,
        temperature=temperature,
        logits_arg="logits_shard",
    )
    shape = tuple(target.shape)
    rows = target.numel()
    with no_autocast(logits_shard):  # statistics in float32 whatever autocast says
        out = _TokenStats.apply(  # type: ignore[no-untyped-call]
            logits_shard.reshape(rows, logits_shard.shape[-1]),
            None,
            None,
            target.reshape(rows).to(torch.int64),
            ignore_index,
            0,
            check_softcap(fn, softcap),
            fn,
            impl,
            shard,
            check_temperature(fn, temperature),
        )
    return _tokens._finish(out, shape)


def vocab_parallel_linear_token_stats(
    hidden: Tensor,
    weight_shard: Tensor,
    target: Tensor,
    bias_shard: Tensor | None = None,
    *,
    group: Any = None,
    ignore_index: int = -100,
    vocab_size: int | None = None,
    chunk_size: int | None = None,
    softcap: float | None = None,
    impl: str = "auto",
    temperature: float = 1.0,
) -> TokenStats:
    r""":func:`vocab_parallel_token_stats` of ``hidden @ W.T + b`` with ``W`` split over the
    vocabulary across ranks, without materialising the logits.

    Equal to :func:`crossentropy.torch.linear_token_stats` ``(hidden, W, target, b)`` where
    ``W`` (V, D) and ``b`` (V,) are the row-wise concatenation of every rank's
    ``weight_shard`` and ``bias_shard`` in rank order. Each rank projects ``hidden`` onto its
    shard ``chunk_size`` rows at a time, in forward and again in backward.

    Parameters
    ----------
    hidden : Tensor, shape ``(*, D)``
        The inputs of the output layer, **identical on every rank** (its shape and
        ``requires_grad`` are checked, its values are not). Its gradient comes back already
        summed over the ranks: do not all-reduce it again.
    weight_shard : Tensor, shape (V_r, D)
        This rank's rows of the output layer's weight, ``hidden``'s dtype and device.
    target : Tensor, shape ``(*)``
        Global class indices, identical on every rank.
    bias_shard : Tensor, shape (V_r,), optional
        This rank's part of the output layer's bias.
    group, ignore_index, vocab_size, softcap, impl, temperature
        As in :func:`vocab_parallel_token_stats`.
    chunk_size : int, optional
        Rows of ``hidden`` projected at a time. Default: about 48 MiB of logits
        (``crossentropy.torch._kernels.default_chunk_rows``).

    Returns
    -------
    TokenStats
        As :func:`vocab_parallel_token_stats`. Backward gives ``d hidden`` summed over the
        ranks (one all-reduce of N x D numbers in compute dtype), and this rank's
        ``d weight_shard`` and ``d bias_shard``.

    Raises
    ------
    TypeError, ValueError
        As :func:`vocab_parallel_token_stats`, on every rank with the same message; also if
        ``hidden`` has another width on some rank, or requires grad on some ranks only.
    RuntimeError
        As :func:`vocab_parallel_token_stats`, raised before backward's all-reduce.

    Notes
    -----
    With :math:`x = h W_r^\top + b_r` and :math:`G = \partial L / \partial x` the closed form
    of :func:`vocab_parallel_token_stats` on each chunk:
    :math:`\partial L / \partial h = \sum_r G_r W_r` (all-reduced),
    :math:`\partial L / \partial W_r = G_r^\top h`, :math:`\partial L / \partial b_r =
    \sum_i G_{r,i}`. float16/bfloat16 matmuls run in their dtype, the statistics and the
    ``d weight``/``d bias`` sums in float32. Backward must run on every rank when ``hidden``
    requires grad (it all-reduces ``d hidden``): use the outputs in the loss on every rank.

    Examples
    --------
    >>> import torch
    >>> import torch.distributed as dist
    >>> from crossentropy.torch import linear_token_stats, vocab_parallel_linear_token_stats
    >>> dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]])
    >>> out = vocab_parallel_linear_token_stats(h, w, torch.tensor([0, 1, 2]), chunk_size=2)
    >>> out.logprob, out.argmax
    (tensor([-0.4076, -0.7586, -1.8620]), tensor([0, 1, 0]))
    >>> dist.destroy_process_group()
    """
    fn = "vocab_parallel_linear_token_stats"
    _refuse_transforms(
        fn, hidden=hidden, weight_shard=weight_shard, bias_shard=bias_shard, target=target
    )
    # under autocast: hidden, weight and bias in the autocast dtype, as F.linear takes them
    autocast = isinstance(hidden, Tensor) and autocast_on(hidden)
    if autocast:
        hidden, weight_shard, bias_shard = autocast_projection(hidden, weight_shard, bias_shard)
    ignore_index = python_scalar(ignore_index, integral=True)

    def local() -> _Local:
        h = check_tensor(fn, "hidden", hidden, floating=True)
        _check_float_dtype(fn, "hidden", h)
        if h.ndim == 0:
            fail(fn, "hidden", "have shape (*, D), at least 1-D", "shape ()")
        w, _ = check_projection(
            fn, h, weight_shard, bias_shard, weight_arg="weight_shard", bias_arg="bias_shard"
        )
        check_chunk_size(fn, chunk_size)
        check_impl(fn, impl, h)
        t = _tokens._check_target(fn, target, h, "hidden", "hidden's shape without the features")
        grad = torch.is_grad_enabled() and h.requires_grad
        return _Local(w.shape[0], t.numel(), h.dtype, t, h.shape[-1], grad)

    shard = _validate(
        fn,
        group,
        local,
        ignore_index=ignore_index,
        vocab_size=vocab_size,
        softcap=softcap,
        temperature=temperature,
        logits_arg="hidden",
    )
    shape = tuple(target.shape)
    rows = target.numel()
    with no_autocast(hidden):  # the inputs were cast above, as F.linear casts them
        out = _TokenStats.apply(  # type: ignore[no-untyped-call]
            hidden.reshape(rows, hidden.shape[-1]),
            weight_shard,
            bias_shard,
            target.reshape(rows).to(torch.int64),
            ignore_index,
            check_chunk_size(fn, chunk_size) or 0,
            check_softcap(fn, softcap),
            fn,
            impl,
            shard,
            check_temperature(fn, temperature),
        )
    return _tokens._finish(out, shape)
