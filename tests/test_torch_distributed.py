"""Vocabulary-parallel cross-entropy: multi-process tests with gloo on localhost.

Each world size (2 and 3 ranks, uneven shards) is one process group that runs every case, so
the suite pays for process start-up only once per world size. Every rank rebuilds the same
full problem from a seed, computes the single-process reference with ``F.cross_entropy`` on
the gathered logits, runs the vocabulary-parallel function on its shard, and writes both to
a JSON file; the tests below compare them with the tolerances of ``conftest.tol``.

Timeouts bound every test: the process group's (``PG_TIMEOUT``), and the parent's wait for
the workers (``WORKER_TIMEOUT``), after which the workers are killed.

This file is also the worker: ``python tests/test_torch_distributed.py --worker RANK WORLD
PORT OUT``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _spawn import init_group, spawn_group
from conftest import tol

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PG_TIMEOUT = 20.0  # seconds: every collective of the test groups gives up after this
WORKER_TIMEOUT = 150.0  # seconds: the parent kills the workers after this
WIDTHS = {2: [4, 9], 3: [2, 7, 4]}  # uneven shards of a 13-class vocabulary
ZERO_WIDTHS = {2: [0, 13], 3: [6, 0, 7]}  # one rank holds no class at all
REDUCTIONS = ["none", "mean", "sum"]
Tensor = torch.Tensor


# =============================================================================================
# The worker (runs in each rank's process)
# =============================================================================================


def _problem(seed: int, n: int, v: int, dtype: torch.dtype, ignore: str, weighted: bool) -> Any:
    """The full problem, identical on every rank: logits, target, class weights, options."""
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(n, v, generator=g, dtype=torch.float64)).to(dtype)
    target = torch.randint(0, v, (n,), generator=g)
    ignore_index = -100
    if ignore == "some" and n > 4:
        target[[1, 4]] = -100
    elif ignore == "class" and n > 2:  # ignore_index is a real class: those rows are dropped
        ignore_index = 3
        target[[0, 2]] = 3
    elif ignore == "all":
        target[:] = -100
    weight = (0.2 + torch.rand(v, generator=g, dtype=torch.float64)).to(dtype) if weighted else None
    upstream = torch.randn(max(n, 1), generator=g, dtype=torch.float64).to(dtype)
    return logits, target, weight, ignore_index, upstream


def _upstream(out: Tensor, upstream: Tensor) -> Tensor:
    """A random upstream gradient: the loss is not the last layer."""
    return (out * upstream[: out.numel()]).sum() if out.ndim else out * upstream[0]


def _bounds(widths: list[int], rank: int) -> tuple[int, int]:
    start = sum(widths[:rank])
    return start, start + widths[rank]


def _logits_case(rank: int, widths: list[int], name: str, seed: int, **kw: Any) -> dict[str, Any]:
    """One vocab_parallel_cross_entropy case against F.cross_entropy on the gathered logits."""
    from crossentropy.torch.distributed import vocab_parallel_cross_entropy

    dtype = kw.pop("dtype", torch.float64)
    n = kw.pop("n", 7)
    logits, target, weight, ignore_index, up = _problem(
        seed, n, sum(widths), dtype, kw.pop("ignore", "none"), kw.pop("weighted", False)
    )
    if "transform" in kw:
        logits = kw.pop("transform")(logits, widths)
    if kw.pop("mask_first_shard", False):
        # Rows 0-2: every column of the first shard is -inf (a masked part of the vocabulary);
        # their targets lie in the last shard, so the loss stays finite.
        first = next(r for r, w in enumerate(widths) if w)
        a, b = _bounds(widths, first)
        logits = logits.clone()
        logits[:3, a:b] = float("-inf")
        target[:3] = sum(widths) - 1
    opts = {"reduction": kw.pop("reduction", "mean"), "label_smoothing": kw.pop("eps", 0.0)}
    # bfloat16: the reference is float64 on the same (rounded) numbers.
    ref_dtype = torch.float64 if dtype == torch.bfloat16 else dtype
    full = logits.to(ref_dtype, copy=True).requires_grad_()
    ref_weight = None if weight is None else weight.to(ref_dtype)
    ref = F.cross_entropy(full, target, ref_weight, ignore_index=ignore_index, **opts)
    _upstream(ref, up.to(ref_dtype)).backward()

    a, b = _bounds(widths, rank)
    # A column slice of the full logits is a non-contiguous view: the usual way to get a shard.
    shard = (logits[:, a:b] if kw.pop("view", True) else logits[:, a:b].clone()).requires_grad_()
    out = vocab_parallel_cross_entropy(
        shard,
        target,
        weight=None if weight is None else weight[a:b],
        ignore_index=ignore_index,
        vocab_size=sum(widths),
        impl=kw.pop("impl", "auto"),
        **opts,
    )
    _upstream(out, up).backward()
    assert not kw, kw
    assert shard.grad is not None and full.grad is not None
    return {
        "name": name,
        "dtype": str(dtype),
        "loss": out.detach().reshape(-1).tolist(),
        "ref_loss": ref.detach().reshape(-1).tolist(),
        "out_dtype": str(out.dtype),
        "grad": shard.grad.tolist(),
        "ref_grad": full.grad[:, a:b].tolist(),
    }


def _linear_case(rank: int, widths: list[int], name: str, seed: int, **kw: Any) -> dict[str, Any]:
    """One vocab_parallel_linear_cross_entropy case against the naive linear + F.cross_entropy."""
    from crossentropy.torch.distributed import vocab_parallel_linear_cross_entropy

    dtype = kw.pop("dtype", torch.float64)
    n, d, v = kw.pop("n", 7), 5, sum(widths)
    _, target, weight, ignore_index, up = _problem(
        seed, n, v, dtype, kw.pop("ignore", "none"), kw.pop("weighted", False)
    )
    g = torch.Generator().manual_seed(seed + 1)
    hidden = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (0.7 * torch.randn(v, d, generator=g, dtype=torch.float64)).to(dtype)
    bias = (0.3 * torch.randn(v, generator=g, dtype=torch.float64)).to(dtype)
    with_bias = kw.pop("bias", True)
    opts = {"reduction": kw.pop("reduction", "mean"), "label_smoothing": kw.pop("eps", 0.0)}

    ref_dtype = torch.float64 if dtype == torch.bfloat16 else dtype
    h_ref, w_ref, b_ref = (t.to(ref_dtype, copy=True).requires_grad_() for t in (hidden, w, bias))
    logits = h_ref @ w_ref.T + (b_ref if with_bias else 0)
    ref_weight = None if weight is None else weight.to(ref_dtype)
    ref = F.cross_entropy(logits, target, ref_weight, ignore_index=ignore_index, **opts)
    _upstream(ref, up.to(ref_dtype)).backward()

    a, b = _bounds(widths, rank)
    h = hidden.clone().requires_grad_()
    ws = w[a:b].clone().requires_grad_()
    bs = bias[a:b].clone().requires_grad_() if with_bias else None
    out = vocab_parallel_linear_cross_entropy(
        h,
        ws,
        target,
        bs,
        class_weight=None if weight is None else weight[a:b],
        ignore_index=ignore_index,
        chunk_size=kw.pop("chunk_size", 3),  # 3 does not divide 7: a ragged last chunk
        impl=kw.pop("impl", "auto"),
        **opts,
    )
    _upstream(out, up).backward()
    assert not kw, kw
    assert h.grad is not None and ws.grad is not None
    assert h_ref.grad is not None and w_ref.grad is not None
    result = {
        "name": name,
        "dtype": str(dtype),
        "loss": out.detach().reshape(-1).tolist(),
        "ref_loss": ref.detach().reshape(-1).tolist(),
        "out_dtype": str(out.dtype),
        "grad_hidden": h.grad.tolist(),
        "ref_grad_hidden": h_ref.grad.tolist(),
        "grad_weight": ws.grad.tolist(),
        "ref_grad_weight": w_ref.grad[a:b].tolist(),
    }
    if bs is not None:
        assert bs.grad is not None and b_ref.grad is not None
        result["grad_bias"] = bs.grad.tolist()
        result["ref_grad_bias"] = b_ref.grad[a:b].tolist()
    return result


def _grid() -> Iterator[tuple[str, dict[str, Any]]]:
    """dtype x reduction x ignore_index x label_smoothing x class weights."""
    for dtype in (torch.float64, torch.float32):
        for reduction in REDUCTIONS:
            for ignore in ("none", "some", "class"):
                for eps in (0.0, 0.1):
                    for weighted in (False, True):
                        name = (
                            f"{str(dtype)[6:]}-{reduction}-ignore_{ignore}-eps{eps}"
                            f"-{'weighted' if weighted else 'unweighted'}"
                        )
                        yield (
                            name,
                            {
                                "dtype": dtype,
                                "reduction": reduction,
                                "ignore": ignore,
                                "eps": eps,
                                "weighted": weighted,
                            },
                        )


def _special_logits_cases() -> Iterator[tuple[str, dict[str, Any]]]:
    for reduction in REDUCTIONS:
        yield (
            f"all_ignored-{reduction}",
            {
                "reduction": reduction,
                "ignore": "all",
                "eps": 0.1,
                "weighted": True,
            },
        )
        yield f"empty_batch-{reduction}", {"reduction": reduction, "n": 0}
    yield "confident_rows_1e4", {"transform": lambda x, w: x * 3e3, "eps": 0.1}
    yield (
        "confident_rows_1e4_float32",
        {
            "transform": lambda x, w: x * 3e3,
            "dtype": torch.float32,
        },
    )
    yield "masked_shard_rows", {"mask_first_shard": True, "reduction": "sum"}
    yield "bfloat16", {"dtype": torch.bfloat16, "eps": 0.1, "weighted": True, "ignore": "some"}
    yield "contiguous_shard", {"view": False, "eps": 0.2, "weighted": True}
    from crossentropy.torch import _backend

    if _backend.triton_available() and _backend.triton_interpreted():
        yield (
            "triton_shards",
            {
                "impl": "triton",
                "dtype": torch.float32,
                "eps": 0.1,
                "weighted": True,
                "ignore": "some",
            },
        )


def _run_cases(rank: int, world: int) -> dict[str, list[dict[str, Any]]]:
    widths = WIDTHS[world]
    logits, linear = [], []
    for i, (name, kw) in enumerate(_grid()):
        logits.append(_logits_case(rank, widths, name, 1000 + i, **kw))
        linear.append(_linear_case(rank, widths, name, 2000 + i, bias=i % 2 == 0, **kw))
    for i, (name, kw) in enumerate(_special_logits_cases()):
        logits.append(_logits_case(rank, widths, name, 3000 + i, **kw))
    zero = ZERO_WIDTHS[world]
    for i, reduction in enumerate(REDUCTIONS):
        kw = {"reduction": reduction, "eps": 0.1, "weighted": True, "ignore": "some"}
        logits.append(_logits_case(rank, zero, f"zero_width_shard-{reduction}", 4000 + i, **kw))
        linear.append(_linear_case(rank, zero, f"zero_width_shard-{reduction}", 4100 + i, **kw))
    bf16 = {"dtype": torch.bfloat16, "eps": 0.1, "weighted": True, "ignore": "some"}
    linear.append(_linear_case(rank, widths, "linear_bfloat16", 4400, **bf16))
    from crossentropy.torch import _backend

    if _backend.triton_available() and _backend.triton_interpreted():
        tri = {"impl": "triton", "dtype": torch.float32, "eps": 0.1, "weighted": True}
        linear.append(_linear_case(rank, widths, "linear_triton", 4500, ignore="some", **tri))
        logits.append(_logits_case(rank, zero, "zero_width_shard-triton", 4600, **tri))
    for i, reduction in enumerate(REDUCTIONS):
        linear.append(
            _linear_case(
                rank,
                widths,
                f"linear_all_ignored-{reduction}",
                4200 + i,
                reduction=reduction,
                ignore="all",
            )
        )
        linear.append(
            _linear_case(
                rank,
                widths,
                f"linear_default_chunk-{reduction}",
                4300 + i,
                reduction=reduction,
                chunk_size=None,
                eps=0.1,
            )
        )
    return {"logits": logits, "linear": linear}


def _error_cases(rank: int, world: int) -> list[dict[str, Any]]:
    """Bad input (often on one rank only): every rank must raise, with the same message."""
    from crossentropy.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    widths = WIDTHS[world]
    v = sum(widths)
    a, b = _bounds(widths, rank)
    logits, target, *_ = _problem(7, 5, v, torch.float64, "none", False)
    shard = logits[:, a:b]
    hidden = torch.randn(5, 4, dtype=torch.float64)
    wshard = torch.randn(b - a, 4, dtype=torch.float64)

    def bad_target() -> Any:
        t = target.clone()
        t[0], t[2] = 0, v  # one past the last class
        return vocab_parallel_cross_entropy(shard, t)

    def target_differs() -> Any:
        t = target.clone()
        if rank == 1:
            t[0] = (t[0] + 1) % v
        return vocab_parallel_cross_entropy(shard, t)

    def dtype_on_one_rank() -> Any:
        x = shard.long() if rank == world - 1 else shard
        return vocab_parallel_cross_entropy(x, target)

    def float_dtype_differs() -> Any:
        x = shard.float() if rank == 0 else shard
        return vocab_parallel_cross_entropy(x, target)

    def widths_vs_vocab_size() -> Any:
        return vocab_parallel_cross_entropy(shard, target, vocab_size=v + 1)

    def smoothing_differs() -> Any:
        return vocab_parallel_cross_entropy(shard, target, label_smoothing=0.1 * rank)

    def rows_differ() -> Any:
        n = 5 if rank == 0 else 4
        return vocab_parallel_cross_entropy(shard[:n], target[:n])

    def bad_reduction_on_rank0() -> Any:
        return vocab_parallel_cross_entropy(shard, target, reduction="avg" if rank == 0 else "mean")

    def weight_shape() -> Any:
        return vocab_parallel_cross_entropy(shard, target, weight=torch.ones(v, dtype=shard.dtype))

    def weight_on_rank0_only() -> Any:
        w = torch.ones(b - a, dtype=shard.dtype) if rank == 0 else None
        return vocab_parallel_cross_entropy(shard, target, weight=w)

    def hidden_width_differs() -> Any:
        h = hidden[:, :3] if rank == 1 else hidden
        w = wshard[:, :3] if rank == 1 else wshard
        return vocab_parallel_linear_cross_entropy(h, w, target)

    def hidden_grad_differs() -> Any:
        h = hidden.clone().requires_grad_(rank == 0)
        return vocab_parallel_linear_cross_entropy(h, wshard, target)

    cases: dict[str, Callable[[], Any]] = {
        "bad_target": bad_target,
        "target_differs": target_differs,
        "dtype_on_one_rank": dtype_on_one_rank,
        "float_dtype_differs": float_dtype_differs,
        "widths_vs_vocab_size": widths_vs_vocab_size,
        "smoothing_differs": smoothing_differs,
        "rows_differ": rows_differ,
        "bad_reduction_on_rank0": bad_reduction_on_rank0,
        "weight_shape": weight_shape,
        "weight_on_rank0_only": weight_on_rank0_only,
        "hidden_width_differs": hidden_width_differs,
        "hidden_grad_differs": hidden_grad_differs,
    }
    return _run_error_cases(cases, lambda: float(vocab_parallel_cross_entropy(shard, target)))


def _run_error_cases(
    cases: dict[str, Callable[[], Any]], after: Callable[[], float]
) -> list[dict[str, Any]]:
    """Run each case, record its error (or None), then a correct call: the group is in step."""
    results = []
    for name, case in cases.items():
        try:
            case()
            error = None
        except Exception as exc:
            error = [type(exc).__name__, str(exc)]
        # The group must still be in step: a correct call right after succeeds everywhere.
        results.append({"name": name, "error": error, "after": after()})
    return results


def _linear_checksum(target: Tensor) -> int:
    """The target checksum of the first handshake: linear in the row index (kept to test)."""
    prime = 2**31 - 1
    t = target.to(torch.int64)
    coeff = (torch.arange(t.numel(), dtype=torch.int64) * 48271 + 12345) % prime
    return int((((t % prime) * coeff) % prime).sum().item()) % prime


def _plus_minus(target: Tensor, row: int) -> tuple[Tensor, Tensor]:
    """Two targets that differ by +1, -2, +1 on rows row..row+2 (the same linear checksum)."""
    same = target.clone()
    same[row : row + 3] = torch.tensor([1, 5, 1])
    other = same.clone()
    other[row : row + 3] += torch.tensor([1, -2, 1])
    assert _linear_checksum(same) == _linear_checksum(other), "the old checksum must collide"
    return same, other


def _hole_cases(rank: int, world: int) -> list[dict[str, Any]]:
    """Issue 8's validation holes, and double backward: every rank raises the same error."""
    from crossentropy.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    widths = WIDTHS[world]
    v, last = sum(widths), world - 1
    a, b = _bounds(widths, rank)
    logits, target, *_ = _problem(11, 6, v, torch.float64, "none", False)
    shard = logits[:, a:b]
    g = torch.Generator().manual_seed(12)
    hidden = torch.randn(6, 4, generator=g, dtype=torch.float64)
    wshard = torch.randn(v, 4, generator=g, dtype=torch.float64)[a:b]

    def bad_on(ranks: list[int], lo: int, hi: int) -> Tensor:
        """The target, with values lo and hi (every other one is in between) on ``ranks``."""
        t = target.clone()
        if rank in ranks:
            t[0], t[3] = lo, hi
        return t

    def differs_on(bad_rank: int, row: int) -> Tensor:
        same, other = _plus_minus(target, row)
        return other if rank == bad_rank else same

    def hidden_by_the_checksum() -> Any:
        """Rank 1 is out of range by +1/-2/+1: the first handshake saw neither difference."""
        same = torch.full((6,), 5)
        same[:3] = torch.tensor([0, 5, v - 1])
        other = same + torch.tensor([1, -2, 1, 0, 0, 0])
        assert _linear_checksum(same) == _linear_checksum(other)
        return vocab_parallel_cross_entropy(shard, other if rank == 1 else same)

    def linear(t: Tensor, **kw: Any) -> Tensor:
        h = hidden.clone().requires_grad_()
        return vocab_parallel_linear_cross_entropy(h, wshard.clone().requires_grad_(), t, **kw)

    def gradient_penalty() -> Any:
        x = shard.clone().requires_grad_()
        (dx,) = torch.autograd.grad(vocab_parallel_cross_entropy(x, target), x, create_graph=True)
        (dx**2).sum().backward()

    def hessian() -> Any:
        return torch.autograd.functional.hessian(
            lambda x: vocab_parallel_cross_entropy(x, target, label_smoothing=0.1), shard.clone()
        )

    def linear_create_graph() -> Any:
        h = hidden.clone().requires_grad_()
        loss = vocab_parallel_linear_cross_entropy(h, wshard.clone().requires_grad_(), target)
        loss.backward(create_graph=True)

    def linear_grad_of_grad() -> Any:
        h = hidden.clone().requires_grad_()
        loss = vocab_parallel_linear_cross_entropy(h, wshard, target, reduction="sum")
        (dh,) = torch.autograd.grad(loss, h, create_graph=True)
        return torch.autograd.grad(dh.sum(), h)

    cases: dict[str, Callable[[], Any]] = {
        "range_on_rank1": lambda: vocab_parallel_cross_entropy(shard, bad_on([1], 0, v)),
        "range_on_last_rank": lambda: vocab_parallel_cross_entropy(
            shard, bad_on([last], -1, v - 1)
        ),
        "range_on_last_rank_linear": lambda: linear(bad_on([last], 0, v + 5)),
        "range_on_every_rank_but_0": lambda: vocab_parallel_cross_entropy(
            shard, bad_on(list(range(1, world)), -3, v - 1), reduction="sum"
        ),
        "range_on_rank1_same_checksum": hidden_by_the_checksum,
        "ignored_rows_are_in_range": lambda: vocab_parallel_cross_entropy(
            shard, bad_on(list(range(world)), 0, -100)
        ),
        "plus_minus_on_rank1": lambda: vocab_parallel_cross_entropy(shard, differs_on(1, 0)),
        "plus_minus_on_last_rank_linear": lambda: linear(differs_on(last, 2)),
        "target_dtype_differs_values_equal": lambda: vocab_parallel_cross_entropy(
            shard, target.to(torch.int32) if rank == 0 else target
        ),
        "double_backward_gradient_penalty": gradient_penalty,
        "double_backward_hessian": hessian,
        "double_backward_linear_create_graph": linear_create_graph,
        "double_backward_linear_grad_of_grad": linear_grad_of_grad,
    }

    def after() -> float:
        """A correct call of each form, forward and backward (the linear one all-reduces)."""
        x = shard.clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(x, target)
        loss.backward()
        linear_loss = linear(target)
        linear_loss.backward()
        return float(loss) + float(linear_loss)

    return _run_error_cases(cases, after)


def _count_bytes(rank: int, world: int) -> list[dict[str, Any]]:
    """Bytes this rank hands to each collective, for two batch sizes and two vocabularies."""
    import torch.distributed as dist

    from crossentropy.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    sent: dict[str, int] = {}
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def counting(name: str) -> Callable[..., Any]:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            tensor = args[0] if name == "all_reduce" else args[1]
            sent[name] = sent.get(name, 0) + tensor.numel() * tensor.element_size()
            return originals[name](*args, **kwargs)

        return wrapped

    rows = []
    try:
        for name in originals:
            setattr(dist, name, counting(name))
        for form in ("logits", "linear"):
            for n in (8, 64):
                for per_rank in (16, 512):
                    for smooth_weighted in (False, True):
                        v = per_rank * world
                        g = torch.Generator().manual_seed(n + v)
                        target = torch.randint(0, v, (n,), generator=g)
                        weight = (
                            torch.rand(per_rank, dtype=torch.float64) if smooth_weighted else None
                        )
                        eps = 0.1 if smooth_weighted else 0.0
                        phases = {}
                        sent.clear()
                        if form == "logits":
                            x = torch.randn(n, per_rank, dtype=torch.float64, requires_grad=True)
                            loss = vocab_parallel_cross_entropy(
                                x, target, weight=weight, label_smoothing=eps
                            )
                        else:
                            h = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
                            w = torch.randn(per_rank, 4, dtype=torch.float64)
                            loss = vocab_parallel_linear_cross_entropy(
                                h, w, target, class_weight=weight, label_smoothing=eps
                            )
                        phases["forward"] = dict(sent)
                        sent.clear()
                        loss.backward()
                        phases["backward"] = dict(sent)
                        rows.append(
                            {
                                "form": form,
                                "n": n,
                                "v": v,
                                "smooth_weighted": smooth_weighted,
                                **phases,
                            }
                        )
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return rows


def _failures(rank: int, world: int) -> dict[str, Any]:
    """Rank 0 calls alone: the others are silent (the group's timeout applies), then die."""
    import torch.distributed as dist

    from crossentropy.torch.distributed import vocab_parallel_cross_entropy

    x = torch.randn(4, 3, dtype=torch.float64)
    target = torch.tensor([0, 1, 2, 3])
    short = dist.new_group(list(range(world)), timeout=datetime.timedelta(seconds=2))
    report: dict[str, Any] = {}
    if rank == 0:
        t0 = time.monotonic()
        try:
            vocab_parallel_cross_entropy(x, target, group=short)
            report["silent"] = None
        except Exception as exc:
            report["silent"] = [type(exc).__name__, isinstance(exc, RuntimeError)]
        report["silent_seconds"] = time.monotonic() - t0
        t0 = time.monotonic()
        try:
            vocab_parallel_cross_entropy(x, target)
            report["dead"] = None
        except Exception as exc:
            report["dead"] = [type(exc).__name__, isinstance(exc, RuntimeError)]
        report["dead_seconds"] = time.monotonic() - t0
    else:
        time.sleep(3.0)  # alive but silent for longer than the short group's timeout
    return report


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    torch.set_num_threads(1)
    init_group(rank, world, port, PG_TIMEOUT)
    results: dict[str, Any] = {"rank": rank, **_run_cases(rank, world)}
    results["errors"] = _error_cases(rank, world)
    results["holes"] = _hole_cases(rank, world)
    results["comm"] = _count_bytes(rank, world)
    results["failures"] = _failures(rank, world)
    out.write_text(json.dumps(results))
    # Ranks > 0 die without cleaning up, so rank 0's last collective fails (see _failures).
    os._exit(0)


# =============================================================================================
# The parent: spawn the group once per world size, then check what the ranks wrote
# =============================================================================================


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every rank's results for one world size (the group is spawned once per module)."""
    world = int(request.param)
    tmp = tmp_path_factory.mktemp(f"world{world}")
    return world, spawn_group(__file__, world, tmp, WORKER_TIMEOUT)


def _triton_cases() -> int:
    from crossentropy.torch import _backend

    return int(_backend.triton_available() and _backend.triton_interpreted())


#: 1 when the workers also run the Triton kernels (interpreter), adding their cases.
_TRITON = _triton_cases()


def _close(ours: Any, ref: Any, dtype: str, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(ours, dtype=np.float64),
        np.asarray(ref, dtype=np.float64),
        **tol(dtype),
        err_msg=what,
    )


def test_logits_form_equals_single_process_cross_entropy(ranks: Any) -> None:
    world, results = ranks
    for res in results:
        assert len(res["logits"]) == 72 + 11 + 3 + 2 * _TRITON
        for case in res["logits"]:
            what = f"rank {res['rank']}/{world}: {case['name']}"
            assert case["out_dtype"] == case["dtype"], what
            _close(case["loss"], case["ref_loss"], case["dtype"], what + " loss")
            _close(case["grad"], case["ref_grad"], case["dtype"], what + " grad")


def test_linear_form_equals_single_process_linear_cross_entropy(ranks: Any) -> None:
    world, results = ranks
    for res in results:
        assert len(res["linear"]) == 72 + 3 + 1 + 6 + _TRITON
        for case in res["linear"]:
            what = f"rank {res['rank']}/{world}: {case['name']}"
            assert case["out_dtype"] == case["dtype"], what
            _close(case["loss"], case["ref_loss"], case["dtype"], what + " loss")
            for key in ("grad_hidden", "grad_weight", "grad_bias"):
                if key in case:
                    _close(case[key], case["ref_" + key], case["dtype"], f"{what} {key}")


def test_same_loss_bits_on_every_rank(ranks: Any) -> None:
    _, results = ranks
    for form in ("logits", "linear"):
        for i, case in enumerate(results[0][form]):
            for other in results[1:]:
                # NaN == NaN for this purpose: compare the repr of the floats
                assert repr(other[form][i]["loss"]) == repr(case["loss"]), case["name"]


def test_edge_cases_follow_torch(ranks: Any) -> None:
    """All ignored: mean is NaN as in torch, sum 0, gradient 0; empty batch; masked shard."""
    _, results = ranks
    by_name = {c["name"]: c for c in results[0]["logits"]}
    assert math.isnan(by_name["all_ignored-mean"]["loss"][0])
    assert by_name["all_ignored-sum"]["loss"] == [0.0]
    for reduction in REDUCTIONS:
        grad = np.asarray(by_name[f"all_ignored-{reduction}"]["grad"])
        assert grad.size and not grad.any()
    assert math.isnan(by_name["empty_batch-mean"]["loss"][0])
    assert by_name["empty_batch-none"]["loss"] == []
    assert math.isfinite(by_name["masked_shard_rows"]["loss"][0])


MESSAGES = {
    "bad_target": (
        "ValueError",
        "vocab_parallel_cross_entropy: target must contain class indices in [0, 13) or "
        "ignore_index=-100, got values in [{lo}, 13]",
    ),
    "target_differs": (
        "ValueError",
        "vocab_parallel_cross_entropy: target must be identical on every rank, got a "
        "different target on ranks [1]",
    ),
    "dtype_on_one_rank": (
        "TypeError",
        "vocab_parallel_cross_entropy: logits_shard must have a floating-point dtype, got "
        "dtype torch.int64 on rank {last}",
    ),
    "float_dtype_differs": (
        "ValueError",
        "vocab_parallel_cross_entropy: logits_shard must have the same dtype on every rank, "
        "got [torch.float32, {float64s}] (by rank)",
    ),
    "widths_vs_vocab_size": (
        "ValueError",
        "vocab_parallel_cross_entropy: the shard widths must add up to vocab_size=14, got "
        "widths {widths} (sum 13)",
    ),
    "smoothing_differs": (
        "ValueError",
        "vocab_parallel_cross_entropy: label_smoothing must be the same on every rank, got "
        "{smoothing} (by rank)",
    ),
    "rows_differ": (
        "ValueError",
        "vocab_parallel_cross_entropy: logits_shard must have the same number of rows on "
        "every rank, got {rows} (by rank)",
    ),
    "bad_reduction_on_rank0": (
        "ValueError",
        "vocab_parallel_cross_entropy: reduction must be one of 'none', 'mean', 'sum', got "
        "'avg' on rank 0",
    ),
    "weight_shape": (
        "ValueError",
        "vocab_parallel_cross_entropy: weight must have shape ({w0},) (this rank's slice of the "
        "class weights), got shape (13,) on rank 0",
    ),
    "weight_on_rank0_only": (
        "ValueError",
        "vocab_parallel_cross_entropy: weight must be given (or None) on every rank, got "
        "{given} (by rank)",
    ),
    "hidden_width_differs": (
        "ValueError",
        "vocab_parallel_linear_cross_entropy: hidden must have the same number of columns on "
        "every rank, got {cols} (by rank)",
    ),
    "hidden_grad_differs": (
        "ValueError",
        "vocab_parallel_linear_cross_entropy: hidden must have the same requires_grad on every "
        "rank, got {grads} (by rank)",
    ),
}


def test_bad_input_raises_the_same_error_on_every_rank(ranks: Any) -> None:
    world, results = ranks
    widths = WIDTHS[world]
    fill = {
        "lo": 0,
        "last": world - 1,
        "float64s": ", ".join(["torch.float64"] * (world - 1)),
        "widths": widths,
        "smoothing": [0.1 * r for r in range(world)],
        "rows": [5] + [4] * (world - 1),
        "w0": widths[0],
        "cols": [4, 3] + [4] * (world - 2),
        "grads": [True] + [False] * (world - 1),
        "given": ["given"] + [None] * (world - 1),
    }
    for i, (name, (kind, template)) in enumerate(MESSAGES.items()):
        expected = [kind, template.format(**fill)]
        for res in results:
            case = res["errors"][i]
            assert case["name"] == name
            assert case["error"] == expected, f"rank {res['rank']}: {name}"
            assert math.isfinite(case["after"]), "the group is still usable after the error"


_RANGE = "target must contain class indices in [0, 13) or ignore_index=-100, got values in"
_DIFFERS = "target must be identical on every rank, got a different target on ranks"
_DOUBLE = (
    "backward must run with create_graph=False (double backward is not supported), "
    "got create_graph=True"
)
_VPCE, _VPLCE = "vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"


def _hole_messages(world: int) -> dict[str, list[str] | None]:
    """The expected error of each of ``_hole_cases`` (None: the call succeeds)."""
    last = world - 1
    others = "" if world == 2 else " (and on 1 other rank)"
    return {
        "range_on_rank1": ["ValueError", f"{_VPCE}: {_RANGE} [0, 13] on rank 1"],
        "range_on_last_rank": ["ValueError", f"{_VPCE}: {_RANGE} [-1, 12] on rank {last}"],
        "range_on_last_rank_linear": [
            "ValueError",
            f"{_VPLCE}: {_RANGE} [0, 18] on rank {last}",
        ],
        "range_on_every_rank_but_0": [
            "ValueError",
            f"{_VPCE}: {_RANGE} [-3, 12] on rank 1{others}",
        ],
        "range_on_rank1_same_checksum": ["ValueError", f"{_VPCE}: {_RANGE} [1, 13] on rank 1"],
        "ignored_rows_are_in_range": None,
        "plus_minus_on_rank1": ["ValueError", f"{_VPCE}: {_DIFFERS} [1]"],
        "plus_minus_on_last_rank_linear": ["ValueError", f"{_VPLCE}: {_DIFFERS} [{last}]"],
        "target_dtype_differs_values_equal": None,
        "double_backward_gradient_penalty": ["RuntimeError", f"{_VPCE}: {_DOUBLE}"],
        "double_backward_hessian": ["RuntimeError", f"{_VPCE}: {_DOUBLE}"],
        "double_backward_linear_create_graph": ["RuntimeError", f"{_VPLCE}: {_DOUBLE}"],
        "double_backward_linear_grad_of_grad": ["RuntimeError", f"{_VPLCE}: {_DOUBLE}"],
    }


def _check_holes(results: list[dict[str, Any]], world: int, prefix: str) -> None:
    expected = _hole_messages(world)
    checked = 0
    for res in results:
        by_name = {case["name"]: case for case in res["holes"]}
        assert list(by_name) == list(expected)
        for name, error in expected.items():
            if not name.startswith(prefix):
                continue
            checked += 1
            case = by_name[name]
            assert case["error"] == error, f"rank {res['rank']}/{world}: {name}"
            assert math.isfinite(case["after"]), "the group is still usable after the error"
    assert checked


def test_every_ranks_target_range_is_checked(ranks: Any) -> None:
    """An out-of-range target on rank 1, or on the last rank only: every rank raises."""
    world, results = ranks
    _check_holes(results, world, "range_")
    _check_holes(results, world, "ignored_rows")


def test_targets_are_compared_with_a_digest(ranks: Any) -> None:
    """Targets differing by +1/-2/+1 on three rows (the same linear checksum): every rank raises.

    The digest is of the values as int64: the same values in another integer dtype pass.
    """
    world, results = ranks
    _check_holes(results, world, "plus_minus_")
    _check_holes(results, world, "target_dtype_differs")


def test_double_backward_raises_a_clear_error_on_every_rank(ranks: Any) -> None:
    """create_graph=True: our RuntimeError on every rank, before backward's all-reduce."""
    world, results = ranks
    _check_holes(results, world, "double_backward_")


def test_the_old_checksum_collides_and_the_digest_does_not() -> None:
    """Without a process group: the +1/-2/+1 targets differ only to the digest."""
    from crossentropy.torch.distributed import _target_digest

    same, other = _plus_minus(torch.arange(6) % 5, 1)
    assert _linear_checksum(same) == _linear_checksum(other)
    assert _target_digest(same) != _target_digest(other)
    assert _target_digest(same) == _target_digest(same.to(torch.int16).clone())
    assert _target_digest(same[::2]) == _target_digest(same[::2].contiguous())


def test_communication_is_o_n_and_independent_of_the_vocabulary(ranks: Any) -> None:
    """Exact bytes per rank: a 15-int handshake, N maxima, <= 4N+1 sums; d hidden if linear."""
    _, results = ranks
    for res in results:
        for row in res["comm"]:
            n, f64 = row["n"], 8
            sums = 4 * n + 1 if row["smooth_weighted"] else 2 * n
            assert row["forward"] == {
                "all_gather": 15 * f64,
                "all_reduce": (n + sums) * f64,
            }, row
            backward = {"all_reduce": n * 4 * f64} if row["form"] == "linear" else {}
            assert row["backward"] == backward, row


def test_failures_end_in_an_error_not_a_hang(ranks: Any) -> None:
    """A silent rank: the group's timeout (2 s) applies. A dead rank: gloo fails at once."""
    _, results = ranks
    report = results[0]["failures"]
    assert report["silent"] is not None and report["silent"][1], report
    assert 1.5 <= report["silent_seconds"] < PG_TIMEOUT, report
    assert report["dead"] is not None and report["dead"][1], report
    assert report["dead_seconds"] < PG_TIMEOUT, report


def test_without_a_process_group_fails_at_once() -> None:
    """No collective is attempted (nothing could answer): a plain error in this process."""
    from crossentropy.torch import vocab_parallel_cross_entropy

    x, target = torch.zeros(2, 3), torch.tensor([0, 1])
    message = (
        "vocab_parallel_cross_entropy: group must belong to an initialised process group (call "
        "torch.distributed.init_process_group), got no default process group"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        vocab_parallel_cross_entropy(x, target)


def _torchrun() -> list[str]:
    exe = Path(sys.executable).with_name("torchrun")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "torch.distributed.run"]


def test_example_script_runs_under_torchrun() -> None:
    cmd = [
        *_torchrun(),
        "--standalone",  # rendezvous on a free local port
        "--nproc-per-node",
        "2",
        str(ROOT / "examples" / "vocab_parallel.py"),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=WORKER_TIMEOUT, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("matches F.cross_entropy") == 2, proc.stdout


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(a) for a in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
