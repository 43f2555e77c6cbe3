"""Vocabulary-parallel cross-entropy with ``z_loss``, ``softcap`` and ``sample_weight``.

Four-way parity in float64, on 2 and 3 gloo ranks with uneven shards: the vocabulary-parallel
functions against

- ``crossentropy.torch.cross_entropy`` / ``linear_cross_entropy`` with the same options (the
  fused kernels: the direct ``F.cross_entropy`` path for small problems is switched off),
- the NumPy core ``crossentropy.cross_entropy`` and its closed-form gradient
  (``crossentropy.value_and_grad``), and
- a plain torch composition of the definition in ``docs/guide/options.rst`` (``tanh``,
  ``F.cross_entropy(reduction="none")``, ``logsumexp``, the weights) with autograd,

for every combination of the three options with class weights, label smoothing,
``ignore_index`` and each reduction, with a random upstream gradient; plus errors for bad
values and for options or sample weights that differ between ranks.

As in ``test_torch_distributed.py`` (whose process-spawning approach this file copies), each
world size is one process group that runs every case and writes its results to a JSON file.
This file is also the worker: ``python tests/test_torch_distributed_options.py --worker RANK
WORLD PORT OUT``.
"""

from __future__ import annotations

import itertools
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
F = pytest.importorskip("torch.nn.functional")

PG_TIMEOUT = 20.0  # seconds: every collective of the test groups gives up after this
WORKER_TIMEOUT = 240.0  # seconds: the parent kills the workers after this
WIDTHS = {2: [4, 9], 3: [2, 7, 4]}  # uneven shards of a 13-class vocabulary
ZERO_WIDTHS = {2: [0, 13], 3: [6, 0, 7]}  # one rank holds no class at all
REDUCTIONS = ["none", "mean", "sum"]
REFERENCES = ("torch", "numpy", "plain")
Tensor = torch.Tensor


# =============================================================================================
# The worker (runs in each rank's process)
# =============================================================================================


def _bounds(widths: list[int], rank: int) -> tuple[int, int]:
    start = sum(widths[:rank])
    return start, start + widths[rank]


def _problem(seed: int, n: int, v: int, ignore: str, weighted: bool, sampled: bool) -> Any:
    """Target, class weights, sample weights, ignore_index and upstream gradient (float64)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, v, (n,), generator=g)
    ignore_index = -100
    if ignore == "some" and n > 4:
        target[[1, 4]] = -100
    elif ignore == "class" and n > 2:  # ignore_index is a real class: those rows are dropped
        ignore_index = 3
        target[[0, 2]] = 3
    elif ignore == "all":
        target[:] = -100
    weight = (0.2 + torch.rand(v, generator=g, dtype=torch.float64)) if weighted else None
    # RL-advantage-like sample weights: either sign, one exactly 0 (it still counts in "mean")
    sample = torch.randn(n, generator=g, dtype=torch.float64) if sampled else None
    if sample is not None and n > 3:
        sample[3] = 0.0
    upstream = torch.randn(max(n, 1), generator=g, dtype=torch.float64)
    return target, weight, sample, ignore_index, upstream, g


def _rounded(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` rounded to ``dtype``, as float64."""
    return x.to(dtype).to(torch.float64)


def _upstream(out: Tensor, upstream: Tensor) -> Tensor:
    """A random upstream gradient: the loss is not the last layer."""
    return (out * upstream[: out.numel()]).sum() if out.ndim else out * upstream[0]


def _plain(
    z: Tensor,
    target: Tensor,
    weight: Tensor | None,
    sample: Tensor | None,
    *,
    ignore_index: int,
    reduction: str,
    label_smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> Tensor:
    """The definition of docs/guide/options.rst in plain torch ops."""
    zc = z if softcap is None else softcap * torch.tanh(z / softcap)
    ce = F.cross_entropy(
        zc,
        target,
        weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=label_smoothing,
    )
    valid = target != ignore_index
    picked = torch.where(valid, target, 0)
    tw = torch.ones_like(ce) if weight is None else weight[picked]
    tw = torch.where(valid, tw, 0.0)
    row = ce + z_loss * tw * torch.logsumexp(zc, dim=-1) ** 2
    if sample is not None:
        row = row * sample
    row = torch.where(valid, row, 0.0)
    if reduction == "none":
        return row
    if reduction == "sum":
        return row.sum()
    return row.sum() / tw.sum()


def _numpy(
    logits: np.ndarray,
    target: Tensor,
    weight: Tensor | None,
    sample: Tensor | None,
    up: Tensor,
    **opts: Any,
) -> tuple[list[float], np.ndarray]:
    """The NumPy core's loss and its closed-form gradient of ``Σ up · loss``."""
    import crossentropy as ce

    loss, grad = ce.value_and_grad(ce.cross_entropy)(
        logits,
        target.numpy(),
        None if weight is None else weight.numpy(),
        sample_weight=None if sample is None else sample.numpy(),
        **opts,
    )
    loss = np.asarray(loss)
    scale = up.numpy()[: loss.size].reshape(loss.shape) if loss.ndim else up.numpy()[0]
    g = np.asarray(grad) * (scale[:, None] if loss.ndim else scale)
    return loss.reshape(-1).tolist(), g


def _options(kw: dict[str, Any]) -> dict[str, Any]:
    return {
        "reduction": kw.pop("reduction", "mean"),
        "label_smoothing": kw.pop("eps", 0.0),
        "z_loss": kw.pop("z_loss", 0.0),
        "softcap": kw.pop("softcap", None),
    }


def _logits_case(rank: int, widths: list[int], name: str, seed: int, **kw: Any) -> dict[str, Any]:
    """vocab_parallel_cross_entropy against the three references on the gathered logits."""
    from crossentropy.torch import cross_entropy
    from crossentropy.torch.distributed import vocab_parallel_cross_entropy

    dtype = kw.pop("dtype", torch.float64)
    n, v = kw.pop("n", 7), sum(widths)
    target, weight, sample, ignore_index, up, g = _problem(
        seed, n, v, kw.pop("ignore", "none"), kw.pop("weighted", False), kw.pop("sampled", False)
    )
    # bfloat16/float32: the references are float64 on the same (rounded) numbers
    logits = _rounded(3 * torch.randn(n, v, generator=g, dtype=torch.float64), dtype)
    weight = None if weight is None else _rounded(weight, dtype)
    opts = _options(kw)
    a, b = _bounds(widths, rank)
    result: dict[str, Any] = {"name": name, "dtype": str(dtype)}

    def leaves() -> tuple[Tensor, Tensor | None]:
        x = logits.clone().requires_grad_()
        s = None if sample is None else sample.clone().requires_grad_()
        return x, s

    for ref in ("torch", "plain"):
        x, s = leaves()
        if ref == "torch":
            out = cross_entropy(
                x, target, weight, ignore_index=ignore_index, sample_weight=s, **opts
            )
        else:
            out = _plain(x, target, weight, s, ignore_index=ignore_index, **opts)
        _upstream(out, up).backward()
        assert x.grad is not None
        result[f"{ref}_loss"] = out.detach().reshape(-1).tolist()
        result[f"{ref}_grad"] = x.grad[:, a:b].tolist()
        if s is not None:
            assert s.grad is not None
            result[f"{ref}_grad_sample"] = s.grad.tolist()
    loss, grad = _numpy(
        logits.numpy(), target, weight, sample, up, ignore_index=ignore_index, **opts
    )
    result["numpy_loss"], result["numpy_grad"] = loss, grad[:, a:b].tolist()

    shard = logits[:, a:b].to(dtype).requires_grad_()  # a column view of the full logits
    s = None if sample is None else sample.clone().requires_grad_()
    out = vocab_parallel_cross_entropy(
        shard,
        target,
        weight=None if weight is None else weight[a:b].to(dtype),
        ignore_index=ignore_index,
        sample_weight=s,
        vocab_size=v,
        impl=kw.pop("impl", "auto"),
        **opts,
    )
    _upstream(out, up.to(dtype)).backward()
    assert not kw, kw
    assert shard.grad is not None
    result["loss"] = out.detach().reshape(-1).tolist()
    result["out_dtype"] = str(out.dtype)
    result["grad"] = shard.grad.tolist()
    if s is not None:
        assert s.grad is not None
        result["grad_sample"] = s.grad.tolist()
    return result


def _linear_case(rank: int, widths: list[int], name: str, seed: int, **kw: Any) -> dict[str, Any]:
    """vocab_parallel_linear_cross_entropy against the three references on hidden @ W.T + b."""
    from crossentropy.torch import linear_cross_entropy
    from crossentropy.torch.distributed import vocab_parallel_linear_cross_entropy

    dtype = kw.pop("dtype", torch.float64)
    n, d, v = kw.pop("n", 7), 5, sum(widths)
    target, weight, sample, ignore_index, up, g = _problem(
        seed, n, v, kw.pop("ignore", "none"), kw.pop("weighted", False), kw.pop("sampled", False)
    )
    hidden = _rounded(torch.randn(n, d, generator=g, dtype=torch.float64), dtype)
    w = _rounded(0.9 * torch.randn(v, d, generator=g, dtype=torch.float64), dtype)
    bias = _rounded(0.3 * torch.randn(v, generator=g, dtype=torch.float64), dtype)
    weight = None if weight is None else _rounded(weight, dtype)
    with_bias = kw.pop("bias", True)
    opts = _options(kw)
    a, b = _bounds(widths, rank)
    result: dict[str, Any] = {"name": name, "dtype": str(dtype)}
    names = ["hidden", "weight"] + (["bias"] if with_bias else [])

    def record(prefix: str, grads: list[Tensor | np.ndarray]) -> None:
        for key, grad in zip(names, grads, strict=True):
            part = grad if key == "hidden" else grad[a:b]
            result[f"{prefix}grad_{key}"] = np.asarray(part).tolist()

    for ref in ("torch", "plain"):
        h, wt, bs = (t.clone().requires_grad_() for t in (hidden, w, bias))
        s = None if sample is None else sample.clone().requires_grad_()
        bias_arg = bs if with_bias else None
        if ref == "torch":
            out = linear_cross_entropy(
                h,
                wt,
                target,
                bias_arg,
                ignore_index,
                class_weight=weight,
                sample_weight=s,
                chunk_size=4,
                **opts,
            )
        else:
            z = h @ wt.T + (bs if with_bias else 0)
            out = _plain(z, target, weight, s, ignore_index=ignore_index, **opts)
        _upstream(out, up).backward()
        result[f"{ref}_loss"] = out.detach().reshape(-1).tolist()
        record(f"{ref}_", [t.grad for t in (h, wt, bs)[: len(names)]])  # type: ignore[misc]
        if s is not None:
            assert s.grad is not None
            result[f"{ref}_grad_sample"] = s.grad.tolist()
    logits = (hidden @ w.T + (bias if with_bias else 0)).numpy()
    loss, gz = _numpy(logits, target, weight, sample, up, ignore_index=ignore_index, **opts)
    result["numpy_loss"] = loss
    hn, wn = hidden.numpy(), w.numpy()
    record("numpy_", [gz @ wn, gz.T @ hn, gz.sum(axis=0)][: len(names)])

    h = hidden.to(dtype).requires_grad_()
    ws = w[a:b].to(dtype).requires_grad_()
    bs = bias[a:b].to(dtype).requires_grad_() if with_bias else None
    s = None if sample is None else sample.clone().requires_grad_()
    out = vocab_parallel_linear_cross_entropy(
        h,
        ws,
        target,
        bs,
        class_weight=None if weight is None else weight[a:b].to(dtype),
        ignore_index=ignore_index,
        sample_weight=s,
        vocab_size=v,
        chunk_size=kw.pop("chunk_size", 3),  # 3 does not divide 7: a ragged last chunk
        impl=kw.pop("impl", "auto"),
        **opts,
    )
    _upstream(out, up.to(dtype)).backward()
    assert not kw, kw
    result["loss"] = out.detach().reshape(-1).tolist()
    result["out_dtype"] = str(out.dtype)
    result["grad_hidden"] = h.grad.tolist()  # type: ignore[union-attr]
    result["grad_weight"] = ws.grad.tolist()  # type: ignore[union-attr]
    if bs is not None:
        result["grad_bias"] = bs.grad.tolist()  # type: ignore[union-attr]
    if s is not None:
        assert s.grad is not None
        result["grad_sample"] = s.grad.tolist()
    return result


def _grid() -> Iterator[tuple[str, dict[str, Any]]]:
    """z_loss x softcap x sample_weight x class weights x smoothing x ignore_index x reduction."""
    axes = itertools.product(
        (0.0, 0.05),  # z_loss
        (None, 2.5),  # softcap
        (False, True),  # sample_weight
        (False, True),  # class weights
        (0.0, 0.1),  # label smoothing
        ("none", "some", "class"),  # ignore_index: none, some rows, a real class
        REDUCTIONS,
    )
    for z, cap, sampled, weighted, eps, ignore, reduction in axes:
        name = (
            f"z{z}-cap{cap}-{'sampled' if sampled else 'unsampled'}-"
            f"{'weighted' if weighted else 'unweighted'}-eps{eps}-ignore_{ignore}-{reduction}"
        )
        yield (
            name,
            {
                "z_loss": z,
                "softcap": cap,
                "sampled": sampled,
                "weighted": weighted,
                "eps": eps,
                "ignore": ignore,
                "reduction": reduction,
            },
        )


#: Every option at once, for the cases beyond the float64 grid.
_ALL = {"z_loss": 0.05, "softcap": 2.5, "sampled": True, "weighted": True, "eps": 0.1}


def _special_cases() -> Iterator[tuple[str, dict[str, Any]]]:
    for reduction in REDUCTIONS:
        yield f"all_ignored-{reduction}", {**_ALL, "ignore": "all", "reduction": reduction}
        yield f"empty_batch-{reduction}", {**_ALL, "n": 0, "reduction": reduction}
    yield "float32", {**_ALL, "dtype": torch.float32, "ignore": "some", "reduction": "sum"}
    yield "bfloat16", {**_ALL, "dtype": torch.bfloat16, "ignore": "some"}
    from crossentropy.torch import _backend

    if _backend.triton_available() and _backend.triton_interpreted():
        tri = {**_ALL, "dtype": torch.float32, "impl": "triton", "ignore": "some"}
        yield "triton", tri


def _run_cases(rank: int, world: int) -> dict[str, list[dict[str, Any]]]:
    from crossentropy.torch import _types

    # The torch reference runs the fused kernels, not F.cross_entropy (the plain reference).
    _types.override_tuning(direct_max_elements=-1, linear_direct_max_elements=-1).__enter__()
    widths, zero = WIDTHS[world], ZERO_WIDTHS[world]
    logits, linear = [], []
    for i, (name, kw) in enumerate(_grid()):
        logits.append(_logits_case(rank, widths, name, 1000 + i, **kw))
        linear.append(_linear_case(rank, widths, name, 2000 + i, bias=i % 2 == 0, **kw))
    for i, (name, kw) in enumerate(_special_cases()):
        logits.append(_logits_case(rank, widths, name, 3000 + i, **kw))
        linear.append(_linear_case(rank, widths, name, 3100 + i, **kw))
    for i, reduction in enumerate(REDUCTIONS):
        kw = {**_ALL, "ignore": "some", "reduction": reduction}
        logits.append(_logits_case(rank, zero, f"zero_width_shard-{reduction}", 4000 + i, **kw))
        linear.append(_linear_case(rank, zero, f"zero_width_shard-{reduction}", 4100 + i, **kw))
    return {"logits": logits, "linear": linear}


def _defaults_are_bitwise(rank: int, world: int) -> list[bool]:
    """z_loss=0.0, softcap=None, sample_weight=None given explicitly: the same bits (loss and
    gradients) as a call without them, for both forms."""
    from crossentropy.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    widths = WIDTHS[world]
    a, b = _bounds(widths, rank)
    g = torch.Generator().manual_seed(77)
    v = sum(widths)
    logits = 3 * torch.randn(9, v, generator=g)
    target = torch.randint(0, v, (9,), generator=g)
    hidden, w = torch.randn(9, 4, generator=g), torch.randn(v, 4, generator=g)[a:b]
    same = []
    for reduction in REDUCTIONS:
        runs = []
        for explicit in (False, True):
            extra = {"z_loss": 0.0, "softcap": None, "sample_weight": None} if explicit else {}
            x = logits[:, a:b].clone().requires_grad_()
            h = hidden.clone().requires_grad_()
            kw = {"reduction": reduction, "label_smoothing": 0.1}
            loss = vocab_parallel_cross_entropy(x, target, **kw, **extra)
            lin = vocab_parallel_linear_cross_entropy(h, w, target, **kw, **extra)
            (loss.sum() + lin.sum()).backward()
            runs.append([loss, lin, x.grad, h.grad])
        same.append(all(torch.equal(p, q) for p, q in zip(*runs, strict=True)))  # type: ignore[arg-type]
    return same


def _error_cases(rank: int, world: int) -> list[dict[str, Any]]:
    """Bad options or sample weights (often on one rank only): every rank raises the same."""
    from crossentropy.torch.distributed import (
        vocab_parallel_cross_entropy,
        vocab_parallel_linear_cross_entropy,
    )

    widths = WIDTHS[world]
    v, last = sum(widths), world - 1
    a, b = _bounds(widths, rank)
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(5, v, generator=g, dtype=torch.float64)
    target = torch.randint(0, v, (5,), generator=g)
    sample = torch.randn(5, generator=g, dtype=torch.float64)
    shard = logits[:, a:b]
    hidden = torch.randn(5, 4, generator=g, dtype=torch.float64)
    wshard = torch.randn(v, 4, generator=g, dtype=torch.float64)[a:b]

    def ce(**kw: Any) -> Any:
        return vocab_parallel_cross_entropy(shard, target, **kw)

    def linear(**kw: Any) -> Any:
        return vocab_parallel_linear_cross_entropy(hidden, wshard, target, **kw)

    def sample_differs() -> Any:
        s = sample.clone()
        if rank == 1:
            s[2] += 1e-12  # any difference in the values
        return ce(sample_weight=s)

    def sample_differs_linear() -> Any:
        return linear(sample_weight=sample * (2.0 if rank == last else 1.0))

    cases: dict[str, Callable[[], Any]] = {
        "z_loss_negative": lambda: ce(z_loss=-0.1),
        "z_loss_inf_on_last_rank": lambda: ce(z_loss=math.inf if rank == last else 0.0),
        "z_loss_nan": lambda: ce(z_loss=math.nan),
        "z_loss_str": lambda: ce(z_loss="0.1"),
        "z_loss_differs": lambda: ce(z_loss=0.01 * rank),
        "softcap_zero": lambda: ce(softcap=0.0),
        "softcap_differs_linear": lambda: linear(softcap=30.0 if rank == 0 else 20.0),
        "sample_on_rank0_only": lambda: ce(sample_weight=sample if rank == 0 else None),
        "sample_differs": sample_differs,
        "sample_differs_linear": sample_differs_linear,
        "sample_shape": lambda: ce(sample_weight=sample[:4]),
        "sample_2d": lambda: linear(sample_weight=sample[:, None]),
        "sample_int": lambda: ce(sample_weight=torch.ones(5, dtype=torch.int64)),
        "sample_list": lambda: ce(sample_weight=[1.0] * 5),
        "sample_dtype_differs_values_equal": lambda: ce(
            sample_weight=sample.float().double() if rank == 0 else sample.float()
        ),
    }

    def after() -> float:
        """A correct call of each form, forward and backward (the linear one all-reduces)."""
        x = shard.clone().requires_grad_()
        loss = vocab_parallel_cross_entropy(x, target, z_loss=0.1, sample_weight=sample)
        loss.backward()
        h = hidden.clone().requires_grad_()
        lin = vocab_parallel_linear_cross_entropy(h, wshard, target, softcap=3.0)
        lin.backward()
        return float(loss.detach()) + float(lin.detach())

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
    """The options add nothing to the communication: bytes per collective, all options on."""
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
    opts = {"z_loss": 1e-3, "softcap": 30.0}
    try:
        for name in originals:
            setattr(dist, name, counting(name))
        for form in ("logits", "linear"):
            for n in (8, 64):
                g = torch.Generator().manual_seed(n)
                target = torch.randint(0, 16 * world, (n,), generator=g)
                s = torch.randn(n, generator=g, dtype=torch.float64)
                sent.clear()
                if form == "logits":
                    x = torch.randn(n, 16, dtype=torch.float64, requires_grad=True)
                    loss = vocab_parallel_cross_entropy(x, target, sample_weight=s, **opts)
                else:
                    h = torch.randn(n, 4, dtype=torch.float64, requires_grad=True)
                    w = torch.randn(16, 4, dtype=torch.float64)
                    loss = vocab_parallel_linear_cross_entropy(
                        h, w, target, sample_weight=s, **opts
                    )
                forward = dict(sent)
                sent.clear()
                loss.backward()
                rows.append({"form": form, "n": n, "forward": forward, "backward": dict(sent)})
    finally:
        for name, fn in originals.items():
            setattr(dist, name, fn)
    return rows


def _worker(rank: int, world: int, port: int, out: Path) -> None:

    torch.set_num_threads(1)
    init_group(rank, world, port, PG_TIMEOUT)
    results: dict[str, Any] = {"rank": rank, **_run_cases(rank, world)}
    results["defaults"] = _defaults_are_bitwise(rank, world)
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


def _close(ours: Any, ref: Any, dtype: str, what: str) -> None:
    np.testing.assert_allclose(
        np.asarray(ours, dtype=np.float64),
        np.asarray(ref, dtype=np.float64),
        **tol(dtype),
        err_msg=what,
    )


def _compared(case: dict[str, Any]) -> list[str]:
    """The keys of a case that have references: the loss and every gradient."""
    return [k for k in case if f"plain_{k}" in case]


@pytest.mark.parametrize("form", ["logits", "linear"])
@pytest.mark.parametrize("reference", REFERENCES)
def test_equals_the_single_process_options(ranks: Any, form: str, reference: str) -> None:
    """Loss and every gradient (logits or hidden/weight/bias, and the sample weights) against
    crossentropy.torch, the NumPy core and the plain composition."""
    world, results = ranks
    grid = len(list(_grid()))
    assert grid == 288
    for res in results:
        assert len(res[form]) == grid + len(list(_special_cases())) + 3
        for case in res[form]:
            what = f"rank {res['rank']}/{world} {form} vs {reference}: {case['name']}"
            assert case["out_dtype"] == case["dtype"], what
            keys = _compared(case)
            assert "loss" in keys and any(k.startswith("grad") for k in keys), what
            for key in keys:
                ref = case.get(f"{reference}_{key}")
                if ref is None:  # the NumPy core has no gradient for the sample weights
                    assert reference == "numpy" and key == "grad_sample", what
                    continue
                _close(case[key], ref, case["dtype"], f"{what} {key}")


def test_edge_cases_follow_the_definition(ranks: Any) -> None:
    """All ignored: mean NaN (0/0), sum 0, gradient 0 whatever the sample weights; an empty
    batch; a sample weight of 0 still counts in the mean (checked by the grid's parity)."""
    _, results = ranks
    for res in results:
        for form in ("logits", "linear"):
            by_name = {c["name"]: c for c in res[form]}
            assert math.isnan(by_name["all_ignored-mean"]["loss"][0])
            assert by_name["all_ignored-sum"]["loss"] == [0.0]
            assert by_name["all_ignored-none"]["loss"] == [0.0] * 7
            for reduction in REDUCTIONS:
                case = by_name[f"all_ignored-{reduction}"]
                for key in ("grad", "grad_hidden", "grad_sample"):
                    if key in case:
                        assert not np.asarray(case[key]).any(), (form, reduction, key)
            assert by_name["empty_batch-none"]["loss"] == []
            assert math.isnan(by_name["empty_batch-mean"]["loss"][0])


def test_same_loss_bits_on_every_rank(ranks: Any) -> None:
    _, results = ranks
    for form in ("logits", "linear"):
        for i, case in enumerate(results[0][form]):
            for other in results[1:]:
                assert repr(other[form][i]["loss"]) == repr(case["loss"]), case["name"]
                if "grad_sample" in case:  # replicated: the same full gradient everywhere
                    assert other[form][i]["grad_sample"] == case["grad_sample"], case["name"]


def test_default_options_are_bit_for_bit_a_call_without_them(ranks: Any) -> None:
    _, results = ranks
    for res in results:
        assert res["defaults"] == [True] * len(REDUCTIONS)


_VPCE, _VPLCE = "vocab_parallel_cross_entropy", "vocab_parallel_linear_cross_entropy"
_Z = "z_loss must be a finite float >= 0, got"


def _expected_errors(world: int) -> dict[str, list[str] | None]:
    last = world - 1
    return {
        "z_loss_negative": ["ValueError", f"{_VPCE}: {_Z} -0.1 on rank 0"],
        "z_loss_inf_on_last_rank": ["ValueError", f"{_VPCE}: {_Z} inf on rank {last}"],
        "z_loss_nan": ["ValueError", f"{_VPCE}: {_Z} nan on rank 0"],
        "z_loss_str": ["TypeError", f"{_VPCE}: {_Z} str '0.1' on rank 0"],
        "z_loss_differs": [
            "ValueError",
            f"{_VPCE}: z_loss must be the same on every rank, got "
            f"{[0.01 * r for r in range(world)]} (by rank)",
        ],
        "softcap_zero": [
            "ValueError",
            f"{_VPCE}: softcap must be None or a finite float > 0, got 0.0 on rank 0",
        ],
        "softcap_differs_linear": [
            "ValueError",
            f"{_VPLCE}: softcap must be the same on every rank, got "
            f"{[30.0] + [20.0] * (world - 1)} (by rank)",
        ],
        "sample_on_rank0_only": [
            "ValueError",
            f"{_VPCE}: sample_weight must be given (or None) on every rank, got "
            f"{['given'] + [None] * (world - 1)} (by rank)",
        ],
        "sample_differs": [
            "ValueError",
            f"{_VPCE}: sample_weight must be identical on every rank, got different sample "
            "weights on ranks [1]",
        ],
        "sample_differs_linear": [
            "ValueError",
            f"{_VPLCE}: sample_weight must be identical on every rank, got different sample "
            f"weights on ranks [{last}]",
        ],
        "sample_shape": [
            "ValueError",
            f"{_VPCE}: sample_weight must have shape (5,) (one weight per target position), "
            "got shape (4,) on rank 0",
        ],
        "sample_2d": [
            "ValueError",
            f"{_VPLCE}: sample_weight must have shape (5,) (one weight per target position), "
            "got shape (5, 1) on rank 0",
        ],
        "sample_int": [
            "TypeError",
            f"{_VPCE}: sample_weight must have a floating-point dtype, got dtype torch.int64 "
            "on rank 0",
        ],
        "sample_list": [
            "TypeError",
            f"{_VPCE}: sample_weight must be a torch.Tensor, got list "
            "[1.0, 1.0, 1.0, 1.0, 1.0] on rank 0",
        ],
        "sample_dtype_differs_values_equal": None,
    }


def test_bad_options_raise_the_same_error_on_every_rank(ranks: Any) -> None:
    world, results = ranks
    expected = _expected_errors(world)
    for res in results:
        assert [c["name"] for c in res["errors"]] == list(expected)
        for case in res["errors"]:
            assert case["error"] == expected[case["name"]], f"rank {res['rank']}: {case['name']}"
            assert math.isfinite(case["after"]), "the group is still usable after the error"


def test_the_options_add_no_communication(ranks: Any) -> None:
    """With z_loss, softcap and sample weights: the 15-int handshake, N maxima and 2N sums
    in forward; nothing in the logits form's backward, d hidden (N x D) in the linear one's."""
    _, results = ranks
    for res in results:
        for row in res["comm"]:
            n, f64 = row["n"], 8
            assert row["forward"] == {"all_gather": 15 * f64, "all_reduce": 3 * n * f64}, row
            backward = {"all_reduce": n * 4 * f64} if row["form"] == "linear" else {}
            assert row["backward"] == backward, row


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(a) for a in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
