"""Vocabulary-parallel per-token statistics: multi-process tests with gloo on localhost.

``vocab_parallel_token_stats`` and ``vocab_parallel_linear_token_stats`` against two references
on the gathered logits: :func:`crossentropy.torch.token_stats` (``linear_token_stats``) and a
plain torch composition (``log_softmax``, ``gather``, ``logsumexp``, ``-Σ p log p``), both with
autograd and a random upstream gradient on every differentiable output that the case uses.

As in ``test_torch_distributed.py`` (whose process-spawning approach this file copies), each
world size (2 and 3 ranks, uneven shards) is one process group that runs every case: every
rank rebuilds the same full problem from a seed, computes the references, runs the
vocabulary-parallel function on its shard and writes everything to a JSON file that the tests
below compare with the tolerances of ``conftest.tol``.

This file is also the worker: ``python tests/test_torch_distributed_tokens.py --worker RANK
WORLD PORT OUT``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _spawn import finish_worker, init_group, spawn_group
from conftest import tol

torch = pytest.importorskip("torch")

PG_TIMEOUT = 20.0  # seconds: every collective of the test groups gives up after this
WORKER_TIMEOUT = 150.0  # seconds: the parent kills the workers after this
WIDTHS = {2: [4, 9], 3: [2, 7, 4]}  # uneven shards of a 13-class vocabulary
ZERO_WIDTHS = {2: [0, 13], 3: [6, 0, 7]}  # one rank holds no class at all
OUTPUTS = ("logprob", "entropy", "lse")
#: Which differentiable outputs the loss uses (the others get no upstream gradient: None).
USES = {"all": OUTPUTS, "logprob": ("logprob",), "entropy": ("entropy",), "lse+H": OUTPUTS[1:]}
Tensor = torch.Tensor


# =============================================================================================
# The worker (runs in each rank's process)
# =============================================================================================


def _bounds(widths: list[int], rank: int) -> tuple[int, int]:
    start = sum(widths[:rank])
    return start, start + widths[rank]


def _targets(g: torch.Generator, shape: tuple[int, ...], v: int, ignore: str) -> Any:
    target = torch.randint(0, v, shape, generator=g)
    flat = target.view(-1)
    ignore_index = -100
    if ignore == "some" and flat.numel() > 4:
        flat[[1, 4]] = -100
    elif ignore == "class" and flat.numel() > 2:  # ignore_index is a real class
        ignore_index = 3
        flat[[0, 2]] = 3
    elif ignore == "all":
        flat[:] = -100
    return target, ignore_index


def _softcapped(z: Tensor, softcap: float | None) -> Tensor:
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def _plain(z: Tensor, target: Tensor, ignore_index: int) -> list[Tensor]:
    """The statistics in plain torch ops: log_softmax, gather, logsumexp, -Σ p log p."""
    lse = torch.logsumexp(z, dim=-1)
    log_p = torch.log_softmax(z, dim=-1)
    p = log_p.exp()
    entropy = -(p * torch.where(p > 0, log_p, 0.0)).sum(dim=-1)  # 0 · log 0 = 0
    keep = target != ignore_index
    picked = log_p.gather(-1, torch.where(keep, target, 0).unsqueeze(-1)).squeeze(-1)
    return [torch.where(keep, picked, 0.0), entropy, lse, z.argmax(dim=-1)]


def _backward(
    outs: Any, ups: dict[str, Tensor], uses: tuple[str, ...], inputs: list[Tensor]
) -> Any:
    """Gradients of ``Σ up · out`` over the used outputs (the loss is not the last layer)."""
    loss = sum((outs[OUTPUTS.index(k)] * ups[k]).sum() for k in uses)
    return torch.autograd.grad(loss, inputs)


def _stats(outs: Any) -> dict[str, Any]:
    """The four statistics (a TokenStats or the plain composition's list) as lists."""
    stats = {k: outs[i].detach().reshape(-1).tolist() for i, k in enumerate(OUTPUTS)}
    return {**stats, "argmax": outs[3].reshape(-1).tolist()}


def _logits_case(rank: int, widths: list[int], name: str, seed: int, **kw: Any) -> dict[str, Any]:
    """One vocab_parallel_token_stats case against token_stats and the plain composition."""
    from crossentropy.torch import token_stats
    from crossentropy.torch.distributed import vocab_parallel_token_stats

    dtype = kw.pop("dtype", torch.float64)
    shape = kw.pop("shape", (7,))
    softcap = kw.pop("softcap", None)
    uses = USES[kw.pop("uses", "all")]
    v = sum(widths)
    g = torch.Generator().manual_seed(seed)
    logits = (3 * torch.randn(*shape, v, generator=g, dtype=torch.float64)).to(dtype)
    target, ignore_index = _targets(g, shape, v, kw.pop("ignore", "none"))
    scale = kw.pop("upstream_scale", 1.0)
    ups = {k: scale * torch.randn(shape, generator=g, dtype=torch.float64) for k in OUTPUTS}
    if "transform" in kw:
        logits = kw.pop("transform")(logits, widths, target)
    a, b = _bounds(widths, rank)
    # bfloat16 and float16: the references are float64 on the same (rounded) numbers.
    ref_dtype = torch.float64 if dtype in (torch.bfloat16, torch.float16) else dtype

    full = logits.to(ref_dtype, copy=True).requires_grad_()
    ref = token_stats(full, target, ignore_index=ignore_index, softcap=softcap)
    ref_ups = {k: u.to(ref.lse.dtype) for k, u in ups.items()}
    (ref_grad,) = _backward(ref, ref_ups, uses, [full])

    plain_in = logits.to(ref_dtype, copy=True).requires_grad_()
    plain = _plain(_softcapped(plain_in, softcap), target, ignore_index)
    (plain_grad,) = _backward(plain, ref_ups, uses, [plain_in])

    # A column slice of the full logits is a non-contiguous view: the usual way to get a shard.
    shard = logits[..., a:b].requires_grad_()
    out = vocab_parallel_token_stats(
        shard, target, ignore_index=ignore_index, vocab_size=v, softcap=softcap
    )
    our_ups = {k: u.to(out.lse.dtype) for k, u in ups.items()}
    (grad,) = _backward(out, our_ups, uses, [shard])
    assert not kw, kw
    return {
        "name": name,
        "dtype": str(dtype),
        "out_dtypes": [str(f.dtype) for f in out],
        "ref_dtypes": [str(f.dtype) for f in ref],
        "shapes": [list(f.shape) for f in out],
        "target_shape": list(target.shape),
        "ours": _stats(out),
        "ref": _stats(ref),
        "plain": _stats(plain),
        "grad": grad.reshape(-1).tolist(),
        "ref_grad": ref_grad[..., a:b].reshape(-1).tolist(),
        "plain_grad": plain_grad[..., a:b].reshape(-1).tolist(),
        "grad_dtype": str(grad.dtype),
    }


def _linear_case(rank: int, widths: list[int], name: str, seed: int, **kw: Any) -> dict[str, Any]:
    """One vocab_parallel_linear_token_stats case against linear_token_stats and the plain
    composition on ``hidden @ W.T + b``."""
    from crossentropy.torch import linear_token_stats
    from crossentropy.torch.distributed import vocab_parallel_linear_token_stats

    dtype = kw.pop("dtype", torch.float64)
    shape = kw.pop("shape", (7,))
    softcap = kw.pop("softcap", None)
    uses = USES[kw.pop("uses", "all")]
    with_bias = kw.pop("bias", True)
    d, v = 5, sum(widths)
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(*shape, d, generator=g, dtype=torch.float64).to(dtype)
    w = (0.9 * torch.randn(v, d, generator=g, dtype=torch.float64)).to(dtype)
    bias = (0.3 * torch.randn(v, generator=g, dtype=torch.float64)).to(dtype)
    target, ignore_index = _targets(g, shape, v, kw.pop("ignore", "none"))
    ups = {k: torch.randn(shape, generator=g, dtype=torch.float64) for k in OUTPUTS}
    a, b = _bounds(widths, rank)
    ref_dtype = torch.float64 if dtype in (torch.bfloat16, torch.float16) else dtype

    def leaves() -> list[Tensor]:
        return [t.to(ref_dtype, copy=True).requires_grad_() for t in (hidden, w, bias)]

    h_ref, w_ref, b_ref = leaves()
    ref = linear_token_stats(
        h_ref,
        w_ref,
        target,
        b_ref if with_bias else None,
        ignore_index=ignore_index,
        softcap=softcap,
        chunk_size=4,
    )
    ref_ups = {k: u.to(ref.lse.dtype) for k, u in ups.items()}
    ref_grads = _backward(ref, ref_ups, uses, [h_ref, w_ref] + ([b_ref] if with_bias else []))

    h_pl, w_pl, b_pl = leaves()
    z = h_pl @ w_pl.T + (b_pl if with_bias else 0)
    plain = _plain(_softcapped(z, softcap), target, ignore_index)
    plain_grads = _backward(plain, ref_ups, uses, [h_pl, w_pl] + ([b_pl] if with_bias else []))

    h = hidden.clone().requires_grad_()
    ws = w[a:b].clone().requires_grad_()
    bs = bias[a:b].clone().requires_grad_() if with_bias else None
    out = vocab_parallel_linear_token_stats(
        h,
        ws,
        target,
        bs,
        ignore_index=ignore_index,
        vocab_size=v,
        softcap=softcap,
        chunk_size=kw.pop("chunk_size", 3),  # 3 does not divide 7: a ragged last chunk
    )
    our_ups = {k: u.to(out.lse.dtype) for k, u in ups.items()}
    grads = _backward(out, our_ups, uses, [h, ws] + ([bs] if bs is not None else []))
    assert not kw, kw
    result = {
        "name": name,
        "dtype": str(dtype),
        "out_dtypes": [str(f.dtype) for f in out],
        "ref_dtypes": [str(f.dtype) for f in ref],
        "shapes": [list(f.shape) for f in out],
        "target_shape": list(target.shape),
        "ours": _stats(out),
        "ref": _stats(ref),
        "plain": _stats(plain),
        "grad_dtype": str(grads[0].dtype),
    }
    names = ["hidden", "weight", "bias"][: len(grads)]
    for key, ours, r, p in zip(names, grads, ref_grads, plain_grads, strict=True):
        part = slice(None) if key == "hidden" else slice(a, b)
        result[f"grad_{key}"] = ours.reshape(-1).tolist()
        result[f"ref_grad_{key}"] = r[part].reshape(-1).tolist()
        result[f"plain_grad_{key}"] = p[part].reshape(-1).tolist()
    return result


def _shards(widths: list[int]) -> list[tuple[int, int]]:
    """(start, width) of the non-empty shards."""
    return [(sum(widths[:r]), w) for r, w in enumerate(widths) if w]


def _ties(logits: Tensor, widths: list[int], target: Tensor) -> Tensor:
    """Integer logits; rows 0-3 repeat their max across shards (and within one): see
    :func:`_tied_argmax` for where each row's first max lies."""
    v, shards = sum(widths), _shards(widths)
    x = torch.round(logits.double() / 3).clamp(-3, 2).to(logits.dtype)
    x[0] = 0.0  # every column ties
    x[1:4] = -1.0
    x[1, [shards[-1][0], v - 1]] = 5.0  # the last shard's first column, and V - 1
    x[2, [start for start, _ in shards[1:]]] = 5.0  # the first column of every shard but one
    x[3, [shards[0][0] + shards[0][1] - 1, v - 1]] = 5.0  # the first shard's last column
    return x


def _tied_argmax(widths: list[int]) -> list[int]:
    """The first max of rows 0-3 of :func:`_ties`."""
    shards = _shards(widths)
    row2 = shards[1][0] if len(shards) > 1 else 0  # one shard only: every column is -1
    return [0, shards[-1][0], row2, shards[0][0] + shards[0][1] - 1]


def _mask_first_shard(logits: Tensor, widths: list[int], target: Tensor) -> Tensor:
    """Rows 0-2: every column of the first non-empty shard is -inf (a masked vocabulary); row 3
    keeps a single finite logit (in the last shard): entropy 0, lse = that logit."""
    x = logits.clone()
    first = next(r for r, w in enumerate(widths) if w)
    a, b = _bounds(widths, first)
    x[:3, a:b] = float("-inf")
    x[3, :] = float("-inf")
    x[3, -1] = 1.5
    target[:4] = sum(widths) - 1
    return x


def _logits_grid() -> Iterator[tuple[str, dict[str, Any]]]:
    """ignore_index x softcap x the outputs used, float64; then special cases."""
    for ignore in ("none", "some", "class"):
        for softcap in (None, 2.5):
            for uses in USES:
                yield (
                    f"{ignore}-softcap{softcap}-uses_{uses}",
                    {
                        "ignore": ignore,
                        "softcap": softcap,
                        "uses": uses,
                    },
                )
    yield "leading_dims", {"shape": (2, 3), "ignore": "some", "softcap": 4.0}
    yield "empty_batch", {"shape": (0,)}
    yield "all_ignored", {"ignore": "all", "softcap": 1.0}
    yield "argmax_ties", {"transform": _ties}
    # |upstream gradient| < 1 here: token_stats is exact (see masked_large_upstream)
    masked = {"transform": _mask_first_shard, "ignore": "some", "upstream_scale": 0.25}
    yield "masked_shard_rows", masked
    yield "masked_large_upstream", {"transform": _mask_first_shard, "upstream_scale": 5.0}
    yield "confident_rows_1e3", {"transform": lambda x, w, t: x * 300}
    yield "confident_softcap_30", {"transform": lambda x, w, t: x * 300, "softcap": 30.0}
    yield "float32", {"dtype": torch.float32, "ignore": "some", "softcap": 2.5}
    yield "bfloat16", {"dtype": torch.bfloat16, "ignore": "some"}
    yield "float16_softcap", {"dtype": torch.float16, "softcap": 5.0}


def _linear_grid() -> Iterator[tuple[str, dict[str, Any]]]:
    for i, ignore in enumerate(("none", "some", "class")):
        for softcap in (None, 2.5):
            for uses in ("all", "entropy", "lse+H"):
                yield (
                    f"{ignore}-softcap{softcap}-uses_{uses}",
                    {
                        "ignore": ignore,
                        "softcap": softcap,
                        "uses": uses,
                        "bias": (i + len(uses)) % 2 == 0,
                    },
                )
    yield "leading_dims", {"shape": (2, 4), "softcap": 3.0, "ignore": "some"}
    yield "empty_batch", {"shape": (0,)}
    yield "default_chunk", {"chunk_size": None, "softcap": 2.0}
    yield "float32", {"dtype": torch.float32, "softcap": 2.5, "ignore": "some"}
    yield "bfloat16", {"dtype": torch.bfloat16, "ignore": "some"}


def _run_cases(rank: int, world: int) -> dict[str, list[dict[str, Any]]]:
    widths, zero = WIDTHS[world], ZERO_WIDTHS[world]
    logits = [
        _logits_case(rank, widths, name, 100 + i, **kw)
        for i, (name, kw) in enumerate(_logits_grid())
    ]
    linear = [
        _linear_case(rank, widths, name, 200 + i, **kw)
        for i, (name, kw) in enumerate(_linear_grid())
    ]
    zero_kw = {"ignore": "some", "softcap": 2.5}
    logits.append(_logits_case(rank, zero, "zero_width_shard", 300, **zero_kw))
    logits.append(_logits_case(rank, zero, "zero_width_ties", 301, transform=_ties))
    linear.append(_linear_case(rank, zero, "zero_width_shard", 302, **zero_kw))
    return {"logits": logits, "linear": linear}


def _error_cases(rank: int, world: int) -> list[dict[str, Any]]:
    """Bad input (often on one rank only): every rank raises, the group stays in step."""
    from crossentropy.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_token_stats,
        vocab_parallel_token_stats,
    )

    widths = WIDTHS[world]
    v, last = sum(widths), world - 1
    a, b = _bounds(widths, rank)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(5, v, generator=g, dtype=torch.float64)
    target = torch.randint(0, v, (5,), generator=g)
    shard = logits[:, a:b]
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64)
    wshard = torch.randn(v, 4, generator=g, dtype=torch.float64)[a:b]

    def stats(x: Tensor = shard, t: Tensor = target, **kw: Any) -> Any:
        return vocab_parallel_token_stats(x, t, **kw)

    def bad_target() -> Any:
        t = target.clone()
        if rank == last:
            t[0], t[1] = 0, v  # one past the last class
        return stats(t=t)

    def target_differs() -> Any:
        t = target.clone()
        if rank == 1:
            t[2] = (t[2] + 1) % v
        return stats(t=t)

    def target_shape_on_rank1() -> Any:
        return stats(t=target[:4] if rank == 1 else target)

    def double_backward() -> Any:
        x = shard.clone().requires_grad_()
        (dx,) = torch.autograd.grad(stats(x).entropy.sum(), x, create_graph=True)
        return dx

    def linear_double_backward() -> Any:
        h = hidden.clone().requires_grad_()
        out = vocab_parallel_linear_token_stats(h, wshard, target)
        (dh,) = torch.autograd.grad(out.logprob.sum(), h, create_graph=True)
        return dh

    def linear_grad_differs() -> Any:
        h = hidden.clone().requires_grad_(rank == 0)
        return vocab_parallel_linear_token_stats(h, wshard, target)

    def other_function_on_rank1() -> Any:
        if rank == 1:
            return vocab_parallel_cross_entropy(shard, target)
        return stats()

    cases: dict[str, Callable[[], Any]] = {
        "softcap_differs": lambda: stats(softcap=None if rank == 0 else 30.0),
        "softcap_zero": lambda: stats(softcap=0.0),
        "softcap_negative_on_last_rank": lambda: stats(softcap=-1.0 if rank == last else 1.0),
        "softcap_inf": lambda: stats(softcap=float("inf")),
        "softcap_str": lambda: stats(softcap="30"),
        "bad_target_on_last_rank": bad_target,
        "target_differs": target_differs,
        "target_shape_on_rank1": target_shape_on_rank1,
        "zero_dim_logits": lambda: stats(torch.tensor(1.0, dtype=torch.float64), target[0]),
        "ignore_index_differs": lambda: stats(ignore_index=-100 - rank),
        "vocab_size": lambda: stats(vocab_size=v + 1),
        "double_backward": double_backward,
        "linear_double_backward": linear_double_backward,
        "linear_grad_differs": linear_grad_differs,
        "linear_bias_shape": lambda: vocab_parallel_linear_token_stats(
            hidden, wshard, target, torch.zeros(b - a + 1, dtype=torch.float64)
        ),
        "other_function_on_rank1": other_function_on_rank1,
    }

    def after() -> float:
        """A correct call of each form, forward and backward (the linear one all-reduces)."""
        x = shard.clone().requires_grad_()
        out = stats(x)
        out.entropy.sum().backward()
        h = hidden.clone().requires_grad_()
        lin = vocab_parallel_linear_token_stats(h, wshard, target)
        lin.logprob.sum().backward()
        return float(out.lse.sum()) + float(lin.entropy.sum())

    results = []
    for name, case in cases.items():
        try:
            case()
            error = None
        except Exception as exc:
            error = [type(exc).__name__, str(exc)]
        results.append({"name": name, "error": error, "after": after()})
    return results


def _count_bytes(rank: int, world: int) -> list[dict[str, Any]]:
    """Bytes this rank hands to each collective, for two batch sizes and two vocabularies."""
    import torch.distributed as dist

    from crossentropy.torch.distributed import (
        vocab_parallel_linear_token_stats,
        vocab_parallel_token_stats,
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
                    v = per_rank * world
                    g = torch.Generator().manual_seed(n + v)
                    target = torch.randint(0, v, (n,), generator=g)
                    sent.clear()
                    if form == "logits":
                        x = torch.randn(n, per_rank, dtype=torch.float64, requires_grad=True)
                        out = vocab_parallel_token_stats(x, target, softcap=20.0)
                    else:
                        h = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
                        w = torch.randn(per_rank, 4, dtype=torch.float64)
                        out = vocab_parallel_linear_token_stats(h, w, target, softcap=20.0)
                    forward = dict(sent)
                    sent.clear()
                    (out.logprob + out.entropy - out.lse).sum().backward()
                    rows.append({"form": form, "n": n, "forward": forward, "backward": dict(sent)})
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return rows


def _worker(rank: int, world: int, port: int, out: Path) -> None:

    torch.set_num_threads(1)
    init_group(rank, world, port, PG_TIMEOUT)
    results: dict[str, Any] = {"rank": rank, **_run_cases(rank, world)}
    results["errors"] = _error_cases(rank, world)
    results["comm"] = _count_bytes(rank, world)
    finish_worker(out, results)


# =============================================================================================
# The parent: spawn the group once per world size, then check what the ranks wrote
# =============================================================================================


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def ranks(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Every rank's results for one world size (the group is spawned once per module)."""
    world = int(request.param)
    tmp = tmp_path_factory.mktemp(f"world{world}")
    return world, spawn_group(__file__, world, tmp, WORKER_TIMEOUT)


def _tol(dtype: str) -> dict[str, float]:
    # float16/bfloat16 inputs: the statistics are float32 of rounded inputs, the references
    # float64 of the same rounded numbers; the gradients come back in the input's dtype.
    return tol("float64") if dtype == "torch.float64" else tol(dtype)


def _close(ours: Any, ref: Any, dtype: str, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(ours, dtype=np.float64),
        np.asarray(ref, dtype=np.float64),
        **_tol(dtype),
        err_msg=what,
    )


def _grad_keys(case: dict[str, Any]) -> list[str]:
    return [k for k in case if k.startswith("grad") and k != "grad_dtype"]


def _check_case(case: dict[str, Any], what: str, reference: str) -> None:
    for key in OUTPUTS:
        _close(case["ours"][key], case[reference][key], case["dtype"], f"{what} {key}")
    assert case["ours"]["argmax"] == case[reference]["argmax"], f"{what} argmax"
    prefix = "ref_" if reference == "ref" else "plain_"
    for key in _grad_keys(case):
        ours, ref = np.asarray(case[key]), np.asarray(case[prefix + key])
        if case["name"] == "masked_large_upstream" and reference == "ref":
            # token_stats' backward gives NaN at a -inf logit when |d entropy| > 1 (its
            # clamp of log 0 to the most negative float overflows once multiplied): compare
            # where it is finite; the plain composition checks every entry.
            assert np.isfinite(ours).all(), what
            ours, ref = ours[np.isfinite(ref)], ref[np.isfinite(ref)]
        _close(ours, ref, case["dtype"], f"{what} {key}")


@pytest.mark.parametrize("form", ["logits", "linear"])
@pytest.mark.parametrize("reference", ["ref", "plain"])
def test_equals_the_single_process_statistics(ranks: Any, form: str, reference: str) -> None:
    """Every statistic and every gradient, against token_stats on the gathered logits (ref)
    and against the plain composition (plain), with autograd and random upstream gradients."""
    world, results = ranks
    for res in results:
        grid = _logits_grid() if form == "logits" else _linear_grid()
        assert len(res[form]) == len(list(grid)) + (2 if form == "logits" else 1)
        for case in res[form]:
            _check_case(case, f"rank {res['rank']}/{world} {form}: {case['name']}", reference)


def test_dtypes_and_shapes_follow_token_stats(ranks: Any) -> None:
    """float32 statistics for float32/bfloat16/float16 inputs (float64 for float64), int64
    argmax, each of the target's shape; gradients in the input's dtype."""
    _, results = ranks
    for res in results:
        for form in ("logits", "linear"):
            for case in res[form]:
                stat = "torch.float64" if case["dtype"] == "torch.float64" else "torch.float32"
                assert case["out_dtypes"] == [stat] * 3 + ["torch.int64"], case["name"]
                assert case["grad_dtype"] == case["dtype"], case["name"]
                assert all(s == case["target_shape"] for s in case["shapes"]), case["name"]


def test_argmax_is_global_and_ties_go_to_the_smallest_index(ranks: Any) -> None:
    """Maxima repeated in several shards: the smallest global index, as torch.argmax."""
    world, results = ranks
    for res in results:
        by_name = {c["name"]: c for c in res["logits"]}
        for name, widths in (("argmax_ties", WIDTHS), ("zero_width_ties", ZERO_WIDTHS)):
            got = by_name[name]["ours"]["argmax"]
            assert got[:4] == _tied_argmax(widths[world]), name
            assert got == by_name[name]["ref"]["argmax"], name


def test_masked_vocabulary_and_edge_cases(ranks: Any) -> None:
    """A shard row of -inf adds nothing; one finite logit: entropy 0, lse that logit; an
    empty batch gives empty statistics; all rows ignored: logprob 0 and no logprob gradient."""
    _, results = ranks
    for res in results:
        by_name = {c["name"]: c for c in res["logits"]}
        masked = by_name["masked_shard_rows"]["ours"]
        assert all(math.isfinite(x) for key in OUTPUTS for x in masked[key])
        assert masked["entropy"][3] == 0.0 and masked["lse"][3] == 1.5
        assert masked["logprob"][3] == 0.0
        assert all(math.isfinite(g) for g in by_name["masked_shard_rows"]["grad"])
        empty = by_name["empty_batch"]
        assert empty["ours"]["lse"] == [] and empty["grad"] == []
        assert by_name["all_ignored"]["ours"]["logprob"] == [0.0] * 7
        lin = {c["name"]: c for c in res["linear"]}
        assert lin["empty_batch"]["ours"]["entropy"] == []


def test_same_bits_on_every_rank(ranks: Any) -> None:
    _, results = ranks
    for form in ("logits", "linear"):
        for i, case in enumerate(results[0][form]):
            for other in results[1:]:
                assert repr(other[form][i]["ours"]) == repr(case["ours"]), case["name"]


_FN, _LFN = "vocab_parallel_token_stats", "vocab_parallel_linear_token_stats"
_SOFTCAP = "softcap must be None or a finite float > 0, got"
_DOUBLE = (
    "backward must run with create_graph=False (double backward is not supported), "
    "got create_graph=True"
)


def _expected_errors(world: int, rank: int) -> dict[str, list[str] | None]:
    last, widths = world - 1, WIDTHS[world]
    others = [None] + [30.0] * (world - 1)
    functions = [_FN, "vocab_parallel_cross_entropy"] + [_FN] * (world - 2)
    this_fn = functions[rank]
    return {
        "softcap_differs": [
            "ValueError",
            f"{_FN}: softcap must be the same on every rank, got {others} (by rank)",
        ],
        "softcap_zero": ["ValueError", f"{_FN}: {_SOFTCAP} 0.0 on rank 0"],
        "softcap_negative_on_last_rank": ["ValueError", f"{_FN}: {_SOFTCAP} -1.0 on rank {last}"],
        "softcap_inf": ["ValueError", f"{_FN}: {_SOFTCAP} inf on rank 0"],
        "softcap_str": ["TypeError", f"{_FN}: {_SOFTCAP} str '30' on rank 0"],
        "bad_target_on_last_rank": [
            "ValueError",
            f"{_FN}: target must contain class indices in [0, 13) or ignore_index=-100, got "
            f"values in [0, 13] on rank {last}",
        ],
        "target_differs": [
            "ValueError",
            f"{_FN}: target must be identical on every rank, got a different target on ranks [1]",
        ],
        "target_shape_on_rank1": [
            "ValueError",
            f"{_FN}: target must have shape (5,) (logits_shard's shape without the classes), "
            "got shape (4,) on rank 1",
        ],
        "zero_dim_logits": [
            "ValueError",
            f"{_FN}: logits_shard must have shape (*, V_shard), at least 1-D, got shape () on "
            "rank 0",
        ],
        "ignore_index_differs": [
            "ValueError",
            f"{_FN}: ignore_index must be the same on every rank, got "
            f"{[-100 - r for r in range(world)]} (by rank)",
        ],
        "vocab_size": [
            "ValueError",
            f"{_FN}: the shard widths must add up to vocab_size=14, got widths {widths} (sum 13)",
        ],
        "double_backward": ["RuntimeError", f"{_FN}: {_DOUBLE}"],
        "linear_double_backward": ["RuntimeError", f"{_LFN}: {_DOUBLE}"],
        "linear_grad_differs": [
            "ValueError",
            f"{_LFN}: hidden must have the same requires_grad on every rank, got "
            f"{[True] + [False] * (world - 1)} (by rank)",
        ],
        "linear_bias_shape": [
            "ValueError",
            f"{_LFN}: bias_shard must have shape ({widths[0]},), got shape ({widths[0] + 1},) on "
            "rank 0",
        ],
        "other_function_on_rank1": [
            "ValueError",
            f"{this_fn}: the function called must be the same on every rank, got {functions} "
            "(by rank)",
        ],
    }


def test_bad_input_raises_the_same_error_on_every_rank(ranks: Any) -> None:
    world, results = ranks
    for res in results:
        expected = _expected_errors(world, res["rank"])
        assert [c["name"] for c in res["errors"]] == list(expected)
        for case in res["errors"]:
            assert case["error"] == expected[case["name"]], f"rank {res['rank']}: {case['name']}"
            assert math.isfinite(case["after"]), "the group is still usable after the error"


def test_communication_is_o_n_and_independent_of_the_vocabulary(ranks: Any) -> None:
    """Per rank: the 15-int handshake, N maxima, 3N sums and N argmax candidates in forward;
    nothing in the logits form's backward, d hidden (N x D) in the linear form's."""
    _, results = ranks
    for res in results:
        for row in res["comm"]:
            n, f64 = row["n"], 8
            assert row["forward"] == {"all_gather": 15 * f64, "all_reduce": 5 * n * f64}, row
            backward = {"all_reduce": n * 4 * f64} if row["form"] == "linear" else {}
            assert row["backward"] == backward, row


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(a) for a in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
