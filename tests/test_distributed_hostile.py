"""Vocabulary-parallel functions: regression tests for problems a hostile review found.

- ``"mean"`` with class weights whose kept total ``D`` is not positive (negative class
  weights are allowed, as in ``F.cross_entropy``): the backward replaced ``D <= 0`` by 1, so the
  loss was right and the gradient silently wrong (``D < 0``) or finite where PyTorch's is not
  (``D = 0`` with kept rows);
- ``vocab_parallel_linear_cross_entropy`` did not check ``bias_shard``'s device: a bias on
  another device on one rank failed there *after* the handshake and left the others waiting
  in the all-reduce until the process group's timeout;
- token-statistics targets of the same values but other shapes (``(2, 3)`` and ``(3, 2)``)
  passed the digest and gave outputs of different shapes on different ranks;
- ``-0.0`` and ``0.0`` (sample weights, ``label_smoothing``) were reported as different on
  different ranks; NumPy scalars and 0-d tensors for ``label_smoothing`` and ``ignore_index``
  were refused although the single-process functions accept them.

The process group is spawned as in ``test_torch_distributed.py`` (one group per world size,
every case run by every rank, results compared in the parent). The case that used to hang
runs last, and a short process-group timeout bounds it.

This file is also the worker: ``python tests/test_distributed_hostile.py --worker RANK WORLD
PORT OUT``.
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _spawn import init_group, spawn_group
from test_torch_distributed import _bounds

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

PG_TIMEOUT = 10.0  # seconds: a rank left waiting gives up after this (the case then fails)
WORKER_TIMEOUT = 120.0  # seconds: the parent kills the workers after this
WIDTHS = {2: [5, 8], 3: [2, 7, 4]}  # uneven shards of a 13-class vocabulary
D64 = torch.float64
Tensor = torch.Tensor


# =============================================================================================
# The worker (runs in each rank's process)
# =============================================================================================


def _data(world: int, seed: int = 0) -> tuple[list[int], Tensor, Tensor, Tensor, Tensor]:
    widths = WIDTHS[world]
    g = torch.Generator().manual_seed(seed)
    v = sum(widths)
    logits = 2 * torch.randn(6, v, generator=g, dtype=D64)
    target = torch.randint(0, v, (6,), generator=g)
    hidden = torch.randn(6, 4, generator=g, dtype=D64)
    weight = 0.7 * torch.randn(v, 4, generator=g, dtype=D64)
    return widths, logits, target, hidden, weight


def _as_list(t: Tensor) -> list[Any]:
    return [x if math.isfinite(x) else repr(x) for x in t.detach().reshape(-1).tolist()]


def _denominator_cases(rank: int, world: int) -> dict[str, Any]:
    """Loss and gradients for class weights with a negative or zero kept total, vs PyTorch."""
    from crossentropy.torch import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

    widths, logits, target, hidden, weight = _data(world)
    v = sum(widths)
    a, b = _bounds(widths, rank)
    g = torch.Generator().manual_seed(1)
    negative = -(0.5 + torch.rand(v, generator=g, dtype=D64))  # D < 0
    mixed = 0.5 + torch.rand(v, generator=g, dtype=D64)
    mixed[target] = 0.0  # D = 0 with every row kept
    out: dict[str, Any] = {}
    for name, cw, eps in (("negative", negative, 0.0), ("negative_eps", negative, 0.1)):
        full = logits.clone().requires_grad_()
        ref = F.cross_entropy(full, target, cw, label_smoothing=eps)
        (3.0 * ref).backward()
        shard = logits[:, a:b].clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(shard, target, weight=cw[a:b], label_smoothing=eps)
        (3.0 * loss).backward()
        h_ref, w_ref = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
        lin_ref = F.cross_entropy(h_ref @ w_ref.T, target, cw, label_smoothing=eps)
        lin_ref.backward()
        h, ws = hidden.clone().requires_grad_(), weight[a:b].clone().requires_grad_()
        lin = vocab_parallel_linear_cross_entropy(
            h, ws, target, class_weight=cw[a:b], label_smoothing=eps, chunk_size=4
        )
        lin.backward()
        assert shard.grad is not None and full.grad is not None
        assert h.grad is not None and ws.grad is not None
        assert h_ref.grad is not None and w_ref.grad is not None
        out[name] = {
            "loss": [loss.item(), ref.item()],
            "grad": [_as_list(shard.grad), _as_list(full.grad[:, a:b])],
            "lin_loss": [lin.item(), lin_ref.item()],
            "grad_hidden": [_as_list(h.grad), _as_list(h_ref.grad)],
            "grad_weight": [_as_list(ws.grad), _as_list(w_ref.grad[a:b])],
        }
    # D = 0 with kept rows: PyTorch's loss and gradient are NaN; ours must not be finite
    shard = logits[:, a:b].clone().requires_grad_()
    vocab_parallel_cross_entropy(shard, target, weight=mixed[a:b]).backward()
    h = hidden.clone().requires_grad_()
    lin = vocab_parallel_linear_cross_entropy(h, weight[a:b], target, class_weight=mixed[a:b])
    lin.backward()
    assert shard.grad is not None and h.grad is not None
    out["zero_finite"] = [bool(shard.grad.isfinite().any()), bool(h.grad.isfinite().any())]
    # every row ignored: NaN loss, gradient 0 (as before)
    shard = logits[:, a:b].clone().requires_grad_()
    ignored = torch.full_like(target, -100)
    loss = vocab_parallel_cross_entropy(shard, ignored, weight=negative[a:b], label_smoothing=0.1)
    loss.backward()
    assert shard.grad is not None
    out["all_ignored"] = [repr(loss.item()), float(shard.grad.abs().max()) if b > a else 0.0]
    return out


def _scalar_cases(rank: int, world: int) -> dict[str, Any]:
    """-0.0 on some ranks, NumPy scalars and 0-d tensors: accepted, as single-process."""
    import crossentropy.torch as cet

    widths, logits, target, *_ = _data(world)
    a, b = _bounds(widths, rank)
    shard = logits[:, a:b]
    last = rank == world - 1
    target = target.clone()
    target[1] = 3
    sign = -1.0 if last else 1.0
    zeros = sign * torch.zeros(6, dtype=D64)
    s = torch.tensor([1.0, sign * 0.0, 2.0, sign * 0.0, -1.0, 0.5], dtype=D64)
    eps = -0.0 if last else 0.0
    return {
        "signed_zero_sample_weight": [
            cet.vocab_parallel_cross_entropy(shard, target, sample_weight=zeros).item(),
            cet.vocab_parallel_cross_entropy(shard, target, sample_weight=s).item(),
            cet.cross_entropy(logits, target, sample_weight=s).item(),
        ],
        "signed_zero_smoothing": [
            cet.vocab_parallel_cross_entropy(shard, target, label_smoothing=eps).item(),
            F.cross_entropy(logits, target).item(),
        ],
        "numpy_scalars": [
            cet.vocab_parallel_cross_entropy(
                shard, target, label_smoothing=np.float32(0.25), ignore_index=np.int64(3)
            ).item(),
            cet.vocab_parallel_linear_cross_entropy(
                torch.eye(6, dtype=D64)[:, :6],
                logits.T[a:b, :6].contiguous(),
                target,
                label_smoothing=torch.tensor(0.25),
                ignore_index=torch.tensor(3),
            ).item(),
            F.cross_entropy(logits, target, label_smoothing=0.25, ignore_index=3).item(),
        ],
        "tensor_ignore_index": [
            _as_list(
                cet.vocab_parallel_token_stats(shard, target, ignore_index=torch.tensor(3))[0]
            ),
            _as_list(cet.token_stats(logits, target, ignore_index=3).logprob),
        ],
    }


def _raised(f: Callable[[], Any]) -> list[str] | None:
    try:
        f()
    except Exception as exc:  # every rank must raise the same error
        return [type(exc).__name__, str(exc)]
    return None


def _error_cases(rank: int, world: int) -> dict[str, Any]:
    """Bad input on the last rank only: every rank raises, with the same message, no hang."""
    import crossentropy.torch as cet

    widths, logits, target, hidden, weight = _data(world)
    v = sum(widths)
    a, b = _bounds(widths, rank)
    last = rank == world - 1
    shard = logits[:, a:b]
    cases: dict[str, Any] = {}
    # the same values in memory, other shapes: the outputs' shapes would differ
    x3 = shard.reshape(2, 3, b - a) if last else shard.reshape(3, 2, b - a)
    t3 = target.reshape(2, 3) if last else target.reshape(3, 2)
    h3 = hidden.reshape(2, 3, 4) if last else hidden.reshape(3, 2, 4)
    cases["token_stats_shape"] = _raised(lambda: cet.vocab_parallel_token_stats(x3, t3))
    cases["linear_token_stats_shape"] = _raised(
        lambda: cet.vocab_parallel_linear_token_stats(h3, weight[a:b], t3)
    )
    # last, as it used to leave the other ranks waiting until the timeout (then the group
    # is broken): a bias on another device on one rank
    bias = torch.zeros(b - a, dtype=D64, device="meta" if last else "cpu")
    cases["linear_bias_device"] = _raised(
        lambda: cet.vocab_parallel_linear_cross_entropy(hidden, weight[a:b], target, bias)
    )
    assert v == sum(widths)
    return cases


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    init_group(rank, world, port, PG_TIMEOUT)
    results: dict[str, Any] = {"rank": rank}
    sections = (
        ("denominator", _denominator_cases),
        ("scalars", _scalar_cases),
        ("errors", _error_cases),  # last: may break the group on a regression
    )
    for name, section in sections:
        try:
            results[name] = section(rank, world)
        except Exception as exc:  # reported by the tests of this section only
            results[name] = {"exception": f"{type(exc).__name__}: {exc}"}
    out.write_text(json.dumps(results))
    dist.barrier()  # no rank tears the group down while another still uses it
    dist.destroy_process_group()
    # The results are written: skip the interpreter's teardown, where gloo's threads
    # occasionally abort ("terminate called without an active exception", about 1 spawn in
    # 10 here, after destroy_process_group has returned) and fail an otherwise passing run.
    sys.stdout.flush()
    os._exit(0)


# =============================================================================================
# The parent
# =============================================================================================


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    world = int(request.param)
    tmp = tmp_path_factory.mktemp(f"hostile{world}")
    return world, spawn_group(__file__, world, tmp, WORKER_TIMEOUT)


def _section(r: dict[str, Any], name: str) -> dict[str, Any]:
    section: dict[str, Any] = r[name]
    assert "exception" not in section, f"rank {r['rank']}: {section['exception']}"
    return section


def _close(pair: list[Any], what: str) -> None:
    ours, ref = (np.asarray(p, dtype=np.float64) for p in pair)
    np.testing.assert_allclose(ours, ref, rtol=1e-10, atol=1e-12, err_msg=what)


@pytest.mark.parametrize("case", ["negative", "negative_eps"])
def test_mean_with_negative_class_weights_has_pytorchs_gradient(ranks: Any, case: str) -> None:
    _, results = ranks
    for r in results:
        for key, pair in _section(r, "denominator")[case].items():
            _close(pair, f"rank {r['rank']} {case} {key}")


def test_mean_with_zero_total_class_weight_is_not_finite(ranks: Any) -> None:
    _, results = ranks
    for r in results:  # PyTorch: NaN loss and NaN gradient; a finite gradient is a wrong one
        assert _section(r, "denominator")["zero_finite"] == [False, False], r["rank"]
        loss, grad = _section(r, "denominator")["all_ignored"]
        assert loss == "nan" and grad == 0.0  # no kept row at all: gradient 0, unchanged


def test_signed_zeros_and_numpy_scalars_are_accepted(ranks: Any) -> None:
    _, results = ranks
    for r in results:
        s = _section(r, "scalars")
        assert s["signed_zero_sample_weight"][0] == 0.0
        _close(s["signed_zero_sample_weight"][1:], "sample weights with -0.0")
        _close(s["signed_zero_smoothing"], "label_smoothing=-0.0 on one rank")
        _close([s["numpy_scalars"][0], s["numpy_scalars"][2]], "numpy scalars")
        _close([s["numpy_scalars"][1], s["numpy_scalars"][2]], "0-d tensors (linear)")
        _close(s["tensor_ignore_index"], "token stats, ignore_index a 0-d tensor")
    first = results[0]["scalars"]["signed_zero_sample_weight"]
    assert all(r["scalars"]["signed_zero_sample_weight"] == first for r in results)


@pytest.mark.parametrize(
    ("case", "kind", "message"),
    [
        ("token_stats_shape", "ValueError", "target must be identical on every rank"),
        ("linear_token_stats_shape", "ValueError", "target must be identical on every rank"),
        ("linear_bias_device", "ValueError", "bias_shard must be on hidden's device cpu"),
    ],
)
def test_bad_input_on_one_rank_raises_everywhere(
    ranks: Any, case: str, kind: str, message: str
) -> None:
    world, results = ranks
    errors = [_section(r, "errors")[case] for r in results]
    assert all(e is not None for e in errors), errors
    assert len({tuple(e) for e in errors}) == 1, errors  # the same type and message everywhere
    assert errors[0][0] == kind and message in errors[0][1], errors[0]
    if case == "linear_bias_device":
        assert errors[0][1].endswith(f"on rank {world - 1}"), errors[0]


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(a) for a in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
