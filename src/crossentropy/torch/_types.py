"""The data the kernels pass between their steps, shared by the torch-op kernels
(:mod:`._kernels`) and the Triton kernels (:mod:`._triton`) so neither imports the other, and
the one object that holds every tuning value (:class:`Tuning`)."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "OP_VERSION",
    "GradCoefficients",
    "LinearGrads",
    "Options",
    "RowStats",
    "Shard",
    "Tuning",
    "compute_dtype",
    "override_tuning",
    "tuning",
]


#: Part of the name of every custom op of the package (the loss ops in :mod:`._ops`, the
#: token-statistics ops in :mod:`.tokens`). Compiled-graph caches (inductor's, on disk) key on
#: op names, not on what an op returns: bump this whenever any op's arguments, outputs or
#: meaning change, or a cache written by the previous version would be replayed against the
#: new one. 4: one version for every op; the token ops' ``lse_lo`` output and ``impl``. 5: the
#: token ops return a shard's partial sums and take its class offset.
OP_VERSION = 5


@dataclass(frozen=True)
class Shard:
    """Where one rank's slice of the vocabulary sits: classes ``[start, stop)`` of ``vocab``,
    in a ``torch.distributed`` process ``group`` (``None``: the default group).

    The autograd Functions take ``shard=None`` in one process: the whole vocabulary is local
    and combining the row statistics across ranks (:mod:`._shard`) is nothing to do.
    """

    group: Any
    rank: int
    widths: tuple[int, ...]
    start: int
    stop: int
    vocab: int


@dataclass(frozen=True)
class Options:
    """The options of one call, validated once at the public function and then passed whole
    through the autograd glue and the reference compositions (the custom ops take them
    unpacked: their schemas hold plain values).

    Attributes
    ----------
    ignore_index, reduction, label_smoothing
        As in ``F.cross_entropy``.
    z_loss : float
        ``z``: ``z · w_y · lse²`` per kept position.
    softcap : float or None
        ``c``: the logits become ``c · tanh(x / c)``.
    impl : str
        ``"auto"``, ``"torch"`` or ``"triton"`` (:func:`._backend.select`).
    chunk_size : int
        Rows of logits per chunk of the linear forms; 0 for the default.
    out_dtype : torch.dtype or None
        The result's dtype (the input's, or float32 under autocast).
    """

    ignore_index: int = -100
    reduction: str = "mean"
    label_smoothing: float = 0.0
    z_loss: float = 0.0
    softcap: float | None = None
    impl: str = "auto"
    chunk_size: int = 0
    out_dtype: torch.dtype | None = None

    def plain(self) -> bool:
        """Neither a z-loss nor a softcap: ``F.cross_entropy``'s own options."""
        return not self.z_loss and self.softcap is None


@dataclass(frozen=True)
class Tuning:
    """Every tuning value of the torch backend in one place (none changes a result, only the
    path or the blocking). :func:`tuning` returns the one in force; :func:`override_tuning`
    replaces fields for a ``with`` block (tests and benchmarks), restoring them after.

    Attributes
    ----------
    block_elements : int
        Elements per row block of the torch-op kernels (float32: 8 MiB): a block stays in the
        shared L3 between its steps. Measured on the 2-core project machine: blocks of 1 MiB
        or less lose to per-op overhead.
    huge_pages : bool
        Back large CPU gradient buffers by transparent huge pages (see
        :func:`._kernels.empty_buffer`). Off: measured faster when the kernel has free huge
        pages, but with the usual ``defrag=madvise`` setting a fault can stall in direct
        compaction for seconds.
    linear_chunk_bytes : int
        Bytes of logits per chunk of the linear kernels. Measured for (N, D, V) =
        (4096, 1024, 32768) fp32: 256-row chunks (32 MiB) lose ~10 % to the small inner
        dimension of the ``d weight`` matmul; 384 rows (48 MiB) match one big matmul.
    compiled_min_elements : int
        Logits from which the fused CPU pass runs the compiled kernels of
        :mod:`._compiled` (below, the torch-op kernels, one row block or two). Measured on the
        idle 2-core project machine, fp32 fwd+bwd against ``F.cross_entropy``: at 2**20 and
        2**21 logits the torch-op kernels took 0.84-0.85× its time and the compiled kernels
        1.13-1.36× (their fixed cost: two Dynamo guard checks and launches, ~0.3 ms); from
        2**22 up the compiled kernels are as fast or faster, and they alone hold up when other
        processes share the cores (one parallel region per pass instead of ~5 per 8 MiB
        block). ``0``: always.
    token_compiled_min_elements : int
        Logits from which the per-token statistics (``token_stats``; the backward of each
        ``linear_token_stats`` chunk) run the compiled kernels. Their torch-op kernels cost
        more per call than the fused pass's, so the crossover is lower: measured fp32 fwd+bwd
        of an RL loss on the 2-core machine (min of 21 interleaved calls), the compiled
        kernels took 0.96× the torch-op kernels' time at 2**16 logits, 0.85× at 2**18 and
        0.56-0.87× from 2**20 to 2**23. ``0``: always.
    direct_max_elements : int
        Logits up to which ``cross_entropy`` calls ``F.cross_entropy`` directly: below it the
        fused path's fixed cost (Python blocks, custom-op dispatch) exceeds what it saves
        (``benchmarks/bench_torch.py``, the "small inputs" table). ``-1``: never.
    linear_stats_chunk_bytes : int
        Bytes of logits per chunk of the linear forms' statistics-only pass (a forward that
        no gradient follows, or the first pass of ``reduction="none"``), which holds no
        gradient buffer beside its chunk. Measured at (4096, 1024, 32768) fp32, no_grad, 2
        threads: 48 MiB chunks (384 rows) 1.84 s, 128 MiB (1024 rows) 1.59 s, against 1.65 s
        for ``F.cross_entropy(h @ W.T, y)`` (which holds all 1 GiB of logits).
    linear_direct_max_elements : int
        Rows × classes up to which ``linear_cross_entropy`` composes ``F.linear`` and
        ``F.cross_entropy`` directly. Measured on the project machine: the chunked kernel is
        2× slower at 131k logits, even at 524k, faster above. ``-1``: never.
    token_block_elements : int
        Elements per tile of the per-token statistics' elementwise work (float32: 4 MiB).
        Each chunk of logits is processed tile by tile, so the temporaries (``exp``, and with
        ``softcap`` the capped logits' gradient) are tile-sized and stay in cache between the
        steps. Measured at (4096, 1024, 32768) fp32 on the idle 2-core machine, 2**19 to 2**21
        are within noise (the matmuls take ~95 % of the time). Not smaller: each tile-sized op
        is an OpenMP parallel region, and while another process holds a core every region can
        wait for its descheduled thread (2**19 ran at 4-6× its idle time on a loaded machine).
    triton_block : int or None
        Classes per chunk of the Triton kernels (a power of two); ``None`` picks one from the
        vocabulary size. Tests set it small to cross chunk boundaries in the interpreter.
    """

    block_elements: int = 1 << 21
    huge_pages: bool = False
    linear_chunk_bytes: int = 48 << 20
    linear_stats_chunk_bytes: int = 128 << 20
    compiled_min_elements: int = 1 << 22
    token_compiled_min_elements: int = 1 << 16
    direct_max_elements: int = 1 << 20
    linear_direct_max_elements: int = 1 << 19
    token_block_elements: int = 1 << 20
    triton_block: int | None = None

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "triton_block":
                power = isinstance(value, int) and not isinstance(value, bool) and value >= 1
                ok = value is None or (power and not value & (value - 1))
                if not ok:
                    raise ValueError(
                        f"Tuning.triton_block must be None or a power of two (classes per "
                        f"chunk), got {value!r}"
                    )
                continue
            if f.type in (bool, "bool"):
                ok = isinstance(value, bool)
            else:
                ok = isinstance(value, int) and not isinstance(value, bool)
                least = {"max_elements": -1, "min_elements": 0}.get(f.name[-12:], 1)
                ok = ok and value >= least
            if not ok:
                raise ValueError(f"Tuning.{f.name}: invalid value {value!r}")


_TUNING = [Tuning()]


def tuning() -> Tuning:
    """The tuning values in force."""
    return _TUNING[0]


@contextlib.contextmanager
def override_tuning(**changes: object) -> Iterator[Tuning]:
    """``with override_tuning(direct_max_elements=-1): ...`` runs the block with those fields
    replaced (checked as :class:`Tuning` checks them) and restores the previous values, also
    on an exception."""
    previous = _TUNING[0]
    _TUNING[0] = dataclasses.replace(previous, **changes)  # type: ignore[arg-type]
    try:
        yield _TUNING[0]
    finally:
        _TUNING[0] = previous


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of a (shard of the) logits, all of shape ``rows`` in compute dtype.

    Attributes
    ----------
    max : Tensor
        ``m_i = max_c x_ic`` over the shard's columns: the reference point of ``sumexp``
        (:func:`row_lse`, :func:`row_nll` and :func:`merge_row_stats` accept any finite
        reference point; the exact max keeps ``x − m`` exact, hence large logits accurate).
    sumexp : Tensor
        ``Σ_{c ≠ y_i} exp(x_ic − m_i)`` over the shard: the target column is excluded.
    target_logit : Tensor
        ``x_{i y_i}`` if ``y_i`` lies in the shard, else 0.
    has_target : Tensor
        Boolean: ``y_i`` lies in the shard (false for ignored rows).
    sum_logits : Tensor or None
        ``Σ_c w_c x_ic`` over the shard (``w ≡ 1`` without class weights), if requested.
    """

    max: Tensor
    sumexp: Tensor
    target_logit: Tensor
    has_target: Tensor
    sum_logits: Tensor | None = None


@dataclass(frozen=True)
class GradCoefficients:
    """Per-row coefficients of the gradient pass (see the module docstring), shape ``rows``.

    ``g_ic = p_scale_i · exp(x_ic − lse_i) − smooth_scale_i · w_c`` for ``c ≠ y_i`` and
    ``g_{i y_i} = target_grad_i`` (when ``y_i`` is in the shard). ``smooth_scale`` is ``None``
    without label smoothing.
    """

    p_scale: Tensor
    smooth_scale: Tensor | None
    target_grad: Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class LinearGrads:
    """Gradients of the linear kernels in compute dtype (``None`` when not requested).

    ``hidden``: ``(R, D)``; ``weight``: ``(C, D)`` (the shard's rows); ``bias``: ``(C,)``.
    For a vocabulary shard, ``hidden`` is this shard's *partial* gradient: sum it over ranks.
    """

    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None
