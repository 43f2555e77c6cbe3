r"""Parity grid: every torch entry point against one float64 reference, the docstring formulas.

The grid is

- **backend**: one process (:func:`crossentropy.torch.cross_entropy`,
  :func:`~crossentropy.torch.linear_cross_entropy`, :func:`~crossentropy.torch.token_stats`,
  :func:`~crossentropy.torch.linear_token_stats`, the fused kernels forced with the
  ``force_fused`` fixture), and the vocabulary-parallel functions of
  :mod:`crossentropy.torch.distributed` on a gloo process group of 1, 2 and 3 ranks (13
  classes sharded contiguously and unevenly, ``WIDTHS``);
- **impl**: ``"torch"`` (float64) and ``"triton"`` (Triton's interpreter on CPU tensors, float32:
  Triton refuses float64; ``Tuning.triton_block`` small so every row crosses chunk boundaries),
  for every function (a test below pins that each takes ``impl``);
- **form**: logits, or ``hidden @ weight.T + bias`` (``chunk_size=3``: a ragged last chunk of
  the 7 rows);
- **quantity**: the loss, or the per-token statistics;
- **options**: a representative set of combinations (``LOSS_OPTIONS``, ``STATS_OPTIONS``) in
  which every option (class weights, ``ignore_index`` on some rows or as a real class,
  ``label_smoothing``, each reduction, ``z_loss``, ``softcap``, ``sample_weight``, the bias) is
  on in several combinations, plus all defaults.

Every cell is compared, values and gradients (logits, or hidden/weight/bias) under a random
upstream gradient, against :func:`_reference_loss` / :func:`_reference_stats`: plain float64
torch compositions of ``docs/guide/options.rst`` with autograd. A float32 cell's reference is
computed in float64 on the same float32-rounded inputs. A vocabulary-parallel cell's gradient
is every rank's shard put back together in rank order; replicated outputs (the loss, the
statistics, ``d hidden``) are compared on every rank.

Sample weights are constants here: one that requires grad sends the single-process functions
to their composite path, not the fused kernels this grid is about (its gradient is covered by
``test_torch_distributed_options.py``). Left out on purpose (being fixed elsewhere): ignored
rows whose logits are all ``-inf``, and near-deterministic rows (the entropy gradient's
accuracy there).

Each world size is one spawned process group (``tests/_spawn.py``) that runs every cell; this
file is also the worker: ``python tests/test_parity_grid.py --worker RANK WORLD PORT OUT``.
The last test prints the grid's size and its worst absolute and relative error per dtype
(``pytest -s tests/test_parity_grid.py``).
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _spawn import finish_worker, init_group, spawn_group
from conftest import tol

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

Tensor = torch.Tensor
F64 = torch.float64
N, C, D = 7, 13, 5  # rows, classes, hidden size
CHUNK = 3  # rows per chunk of the linear forms: 3 does not divide 7
TRITON_BLOCK = 4  # classes per Triton chunk: 13 classes are 4 chunks, a shard of 7 is 2
WIDTHS = {1: [13], 2: [4, 9], 3: [2, 7, 4]}  # contiguous, uneven shards of the 13 classes
PG_TIMEOUT = 30.0  # seconds: every collective of the test groups gives up after this
WORKER_TIMEOUT = 240.0  # seconds: the parent kills the workers after this
BACKENDS = {"single": 0, "group1": 1, "group2": 2, "group3": 3}
FORMS = ("logits", "linear")
STATS = ("logprob", "entropy", "lse")
CAP, ZLOSS, EPS = 2.5, 0.05, 0.1  # softcap well inside the logits' range (3·randn)

_ALL = {
    "weighted": True,
    "ignore": "some",
    "eps": EPS,
    "z_loss": ZLOSS,
    "softcap": CAP,
    "sampled": True,
    "bias": True,
}

#: The loss cells' option combinations: all defaults, every option on in several, each
#: reduction several times (ignore "some": rows 1 and 4 ignored; "class": ignore_index is the
#: real class 3, rows 0 and 2 and any other row of class 3 dropped).
LOSS_OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "all-mean": {**_ALL, "reduction": "mean"},
    "all-sum": {**_ALL, "reduction": "sum"},
    "all-none": {**_ALL, "reduction": "none"},
    "all-ignore_class-mean": {**_ALL, "ignore": "class", "reduction": "mean"},
    "weighted-sum": {"weighted": True, "reduction": "sum", "bias": True},
    "ignore-eps-none": {"ignore": "some", "eps": EPS, "reduction": "none", "bias": True},
    "zloss-sampled-ignore_class-mean": {
        "z_loss": ZLOSS,
        "sampled": True,
        "ignore": "class",
        "reduction": "mean",
        "bias": True,
    },
    "softcap-weighted-none": {"softcap": CAP, "weighted": True, "reduction": "none"},
    "softcap-eps-ignore-sampled-sum": {
        "softcap": CAP,
        "eps": EPS,
        "ignore": "some",
        "sampled": True,
        "reduction": "sum",
        "bias": True,
    },
    "weighted-eps-zloss-mean": {
        "weighted": True,
        "eps": EPS,
        "z_loss": ZLOSS,
        "reduction": "mean",
        "bias": True,
    },
    "zloss-sampled-weighted-none": {
        "z_loss": ZLOSS,
        "sampled": True,
        "weighted": True,
        "reduction": "none",
    },
}

#: The statistics take ignore_index and softcap (and the bias, in the linear form).
STATS_OPTIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ignore": {"ignore": "some", "bias": True},
    "softcap": {"softcap": CAP, "bias": True},
    "ignore-softcap": {"ignore": "some", "softcap": CAP},
    "ignore_class-softcap": {"ignore": "class", "softcap": CAP, "bias": True},
}


def _triton_ok() -> bool:
    from crossentropy.torch import _backend

    return _backend.triton_available() and _backend.triton_interpreted()


def _loss_impls() -> tuple[str, ...]:
    return ("torch", "triton") if _triton_ok() else ("torch",)


def _cells(world: int) -> Iterator[tuple[str, str, str, str, dict[str, Any], int]]:
    """(impl, form, quantity, option name, options, seed) of one backend's cells."""
    for impl in _loss_impls():
        for form in FORMS:
            for i, (name, opts) in enumerate(LOSS_OPTIONS.items()):
                yield impl, form, "loss", name, opts, 100 + i
    for impl in _loss_impls():
        for form in FORMS:
            for i, (name, opts) in enumerate(STATS_OPTIONS.items()):
                yield impl, form, "stats", name, opts, 200 + i


def _cell_name(impl: str, form: str, quantity: str, name: str) -> str:
    return f"{impl}/{form}/{quantity}/{name}"


def _dtype(impl: str) -> torch.dtype:
    return torch.float32 if impl == "triton" else F64


# =============================================================================================
# The problem (rebuilt from its seed in every process) and the float64 reference
# =============================================================================================


def _problem(seed: int, opts: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """Every input of one cell, rounded to ``dtype`` and held in float64 (the reference's
    inputs: the same numbers the function under test gets)."""
    g = torch.Generator().manual_seed(seed)
    target = torch.randint(0, C, (N,), generator=g)
    ignore_index = -100
    if opts.get("ignore") == "some":
        target[[1, 4]] = -100
    elif opts.get("ignore") == "class":
        ignore_index = 3
        target[[0, 2]] = 3
    floats = {
        "logits": 3 * torch.randn(N, C, generator=g, dtype=F64),
        "hidden": torch.randn(N, D, generator=g, dtype=F64),
        "weight": 0.9 * torch.randn(C, D, generator=g, dtype=F64),
        "bias": 0.3 * torch.randn(C, generator=g, dtype=F64),
        "class_weight": 0.2 + torch.rand(C, generator=g, dtype=F64),
        # RL-advantage-like: either sign, one exactly 0 (it still counts in "mean")
        "sample": torch.randn(N, generator=g, dtype=F64).index_fill(0, torch.tensor([3]), 0.0),
        "up": torch.randn(N, generator=g, dtype=F64),
        "up_logprob": torch.randn(N, generator=g, dtype=F64),
        "up_entropy": torch.randn(N, generator=g, dtype=F64),
        "up_lse": torch.randn(N, generator=g, dtype=F64),
    }
    problem: dict[str, Any] = {k: v.to(dtype).to(F64) for k, v in floats.items()}
    problem["target"], problem["ignore_index"] = target, ignore_index
    return problem


def _softcap(z: Tensor, softcap: float | None) -> Tensor:
    return z if softcap is None else softcap * torch.tanh(z / softcap)


def _reference_loss(z: Tensor, p: dict[str, Any], opts: dict[str, Any]) -> Tensor:
    """docs/guide/options.rst: F.cross_entropy(x', reduction="none", label_smoothing, weight)
    + z·w_y·lse², times the sample weights, reduced over the kept class-weight total."""
    target, ignore_index = p["target"], p["ignore_index"]
    weight = p["class_weight"] if opts.get("weighted") else None
    zc = _softcap(z, opts.get("softcap"))
    ce = F.cross_entropy(
        zc,
        target,
        weight,
        ignore_index=ignore_index,
        reduction="none",
        label_smoothing=opts.get("eps", 0.0),
    )
    kept = target != ignore_index
    wy = torch.ones(N, dtype=F64) if weight is None else weight[torch.where(kept, target, 0)]
    wy = torch.where(kept, wy, 0.0)
    row = ce + opts.get("z_loss", 0.0) * wy * torch.logsumexp(zc, dim=-1) ** 2
    if opts.get("sampled"):
        row = row * p["sample"]
    row = torch.where(kept, row, 0.0)
    reduction = opts.get("reduction", "mean")
    if reduction == "none":
        return row
    return row.sum() if reduction == "sum" else row.sum() / wy.sum()


def _reference_stats(z: Tensor, p: dict[str, Any], opts: dict[str, Any]) -> list[Tensor]:
    """log_softmax(x') at the target (0 where ignored), −Σ p log p, logsumexp, argmax."""
    target, ignore_index = p["target"], p["ignore_index"]
    zc = _softcap(z, opts.get("softcap"))
    lse = torch.logsumexp(zc, dim=-1)
    log_p = zc - lse.unsqueeze(-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    kept = target != ignore_index
    picked = log_p.gather(-1, torch.where(kept, target, 0).unsqueeze(-1)).squeeze(-1)
    logprob = torch.where(kept, picked, 0.0)
    return [logprob, entropy, lse, zc.argmax(dim=-1)]


def _upstream(quantity: str, out: Any, p: dict[str, Any], dtype: torch.dtype) -> Tensor:
    """The scalar whose gradient is taken: a random upstream gradient on every output."""
    if quantity == "stats":
        # out: TokenStats or the reference's list, both (logprob, entropy, lse, argmax)
        terms = [(out[i] * p[f"up_{k}"].to(out[i].dtype)).sum() for i, k in enumerate(STATS)]
        return terms[0] + terms[1] + terms[2]
    up = p["up"].to(dtype)
    return (out * up).sum() if out.ndim else out * up[0]


def _reference(form: str, quantity: str, opts: dict[str, Any], seed: int, dtype: Any) -> Any:
    """The float64 reference's values and gradients of one cell (numpy arrays)."""
    p = _problem(seed, opts, dtype)
    leaves = {k: p[k].clone().requires_grad_() for k in ("logits", "hidden", "weight", "bias")}
    if form == "logits":
        z = leaves["logits"]
    else:
        z = leaves["hidden"] @ leaves["weight"].T
        if opts.get("bias"):
            z = z + leaves["bias"]
    if quantity == "loss":
        loss = _reference_loss(z, p, opts)
        values = {"loss": loss.detach().reshape(-1)}
        _upstream("loss", loss, p, F64).backward()
    else:
        stats = _reference_stats(z, p, opts)
        values = dict(zip((*STATS, "argmax"), (s.detach() for s in stats), strict=True))
        _upstream("stats", stats, p, F64).backward()
    grads = ("logits",) if form == "logits" else ("hidden", "weight", "bias")
    if form == "linear" and not opts.get("bias"):
        grads = grads[:2]
    values.update({f"grad_{k}": leaves[k].grad for k in grads})
    return {k: v.numpy() for k, v in values.items()}


# =============================================================================================
# The functions under test (in this process, or on one rank of a group)
# =============================================================================================


def _call(
    impl: str, form: str, quantity: str, opts: dict[str, Any], seed: int, world: int, rank: int
) -> dict[str, Any]:
    """One cell's outputs and gradients: a single-process call (``world`` 0) or this rank's
    vocabulary-parallel call on its shard of the classes."""
    import crossentropy.torch as ct

    dtype = _dtype(impl)
    p = _problem(seed, opts, dtype)
    a, b = (0, C) if world == 0 else (sum(WIDTHS[world][:rank]), sum(WIDTHS[world][: rank + 1]))
    target, ignore_index = p["target"], p["ignore_index"]
    cap = opts.get("softcap")
    common: dict[str, Any] = {"ignore_index": ignore_index, "softcap": cap}
    if world:
        common["vocab_size"] = C
    common["impl"] = impl
    if quantity == "loss":
        common.update(
            reduction=opts.get("reduction", "mean"),
            label_smoothing=opts.get("eps", 0.0),
            z_loss=opts.get("z_loss", 0.0),
            sample_weight=p["sample"].to(dtype) if opts.get("sampled") else None,
        )
    class_weight = p["class_weight"][a:b].to(dtype) if opts.get("weighted") else None
    leaves: dict[str, Tensor] = {}
    if form == "logits":
        # a column view of the full logits in float64 (a copy in float32)
        x = leaves["logits"] = p["logits"][:, a:b].to(dtype).requires_grad_()
        if quantity == "loss":
            fn = ct.vocab_parallel_cross_entropy if world else ct.cross_entropy
            out = fn(x, target, weight=class_weight, **common)
        else:
            fn = ct.vocab_parallel_token_stats if world else ct.token_stats
            out = fn(x, target, **common)
    else:
        h = leaves["hidden"] = p["hidden"].to(dtype).clone().requires_grad_()
        w = leaves["weight"] = p["weight"][a:b].to(dtype).clone().requires_grad_()
        bias = None
        if opts.get("bias"):
            bias = leaves["bias"] = p["bias"][a:b].to(dtype).clone().requires_grad_()
        if quantity == "loss":
            fn = ct.vocab_parallel_linear_cross_entropy if world else ct.linear_cross_entropy
            out = fn(h, w, target, bias, class_weight=class_weight, chunk_size=CHUNK, **common)
        else:
            fn = ct.vocab_parallel_linear_token_stats if world else ct.linear_token_stats
            out = fn(h, w, target, bias, chunk_size=CHUNK, **common)
    _upstream(quantity, out, p, dtype).backward()
    if quantity == "loss":
        values = {"loss": out.detach().reshape(-1).tolist(), "dtype": str(out.dtype)}
    else:
        values = {k: getattr(out, k).detach().tolist() for k in (*STATS, "argmax")}
        values["dtype"] = str(out.logprob.dtype)
    for k, leaf in leaves.items():
        assert leaf.grad is not None, (k, impl, form, quantity, opts)
        values[f"grad_{k}"] = leaf.grad.tolist()
    return values


def _run_all(world: int, rank: int) -> dict[str, dict[str, Any]]:
    """Every cell of one backend, by name."""
    return {
        _cell_name(impl, form, quantity, name): _call(impl, form, quantity, opts, seed, world, rank)
        for impl, form, quantity, name, opts, seed in _cells(world)
    }


def _worker(rank: int, world: int, port: int, out: Path) -> None:

    from crossentropy.torch import _types

    torch.set_num_threads(1)
    # no single-process call runs here, but the fused kernels all the same
    _types.override_tuning(direct_max_elements=-1, linear_direct_max_elements=-1).__enter__()
    if _triton_ok():
        _types.override_tuning(triton_block=TRITON_BLOCK).__enter__()
    init_group(rank, world, port, PG_TIMEOUT)
    results = _run_all(world, rank)
    finish_worker(out, {"rank": rank, "cells": results})


# =============================================================================================
# The parent: run or spawn each backend, compare every cell with the reference
# =============================================================================================

#: Worst error per dtype over every compared cell: {dtype: {"abs": (err, where), "rel": ...}}.
WORST: dict[str, dict[str, tuple[float, str]]] = {}
#: The cells compared, by backend.
COMPARED: dict[str, int] = {}

_SHARDED = {"grad_logits": 1, "grad_weight": 0, "grad_bias": 0}  # the class axis of each


def _assemble(ranks: list[dict[str, Any]], cell: str) -> list[dict[str, Any]]:
    """One cell's outputs per rank, each with the full gradients (the ranks' shards
    concatenated in rank order); replicated outputs stay each rank's own."""
    full = {
        k: np.concatenate([np.asarray(r["cells"][cell][k]) for r in ranks], axis)
        for k, axis in _SHARDED.items()
        if k in ranks[0]["cells"][cell]
    }
    return [{**r["cells"][cell], **full} for r in ranks]


def _record(dtype: str, ours: np.ndarray, ref: np.ndarray, where: str) -> None:
    diff = np.abs(ours - ref)
    floor = tol(dtype)["atol"]
    errs = {"abs": float(diff.max()), "rel": float((diff / np.maximum(np.abs(ref), floor)).max())}
    worst = WORST.setdefault(dtype, {"abs": (0.0, ""), "rel": (0.0, "")})
    for kind, err in errs.items():
        if not err <= worst[kind][0]:  # a NaN is the worst of all
            worst[kind] = (err, where)


def _compare(backend: str, per_rank: dict[str, list[dict[str, Any]]]) -> list[str]:
    """Every cell of a backend against the reference; the mismatches, described."""
    failures = []
    for impl, form, quantity, name, opts, seed in _cells(BACKENDS[backend]):
        cell = _cell_name(impl, form, quantity, name)
        dtype = str(_dtype(impl)).removeprefix("torch.")
        ref = _reference(form, quantity, opts, seed, _dtype(impl))
        for rank, got in enumerate(per_rank[cell]):
            where = f"{backend}/{cell} (rank {rank})"
            if got["dtype"] != f"torch.{dtype}":
                failures.append(f"{where}: dtype {got['dtype']}")
            assert set(got) == {*ref, "dtype"}, (where, sorted(got), sorted(ref))
            for key, expected in ref.items():
                ours = np.asarray(got[key]).reshape(expected.shape)
                if key == "argmax":
                    if not np.array_equal(ours, expected):
                        failures.append(f"{where} argmax: {ours} != {expected}")
                    continue
                _record(dtype, ours, expected, f"{where} {key}")
                try:
                    np.testing.assert_allclose(ours, expected, **tol(dtype), err_msg=where)
                except AssertionError as exc:
                    failures.append(f"{where} {key}: {exc}")
        COMPARED[backend] = COMPARED.get(backend, 0) + 1
    return failures


@pytest.mark.parametrize("backend", list(BACKENDS))
def test_parity_with_the_float64_reference(
    backend: str, force_fused: None, tuned, tmp_path: Path
) -> None:
    """Every cell of one backend: values and gradients within the dtype's tolerance of the
    reference, argmax exactly, the output dtype as documented."""
    world = BACKENDS[backend]
    if world == 0:
        if _triton_ok():
            tuned(triton_block=TRITON_BLOCK)
        cells = _run_all(0, 0)
        per_rank = {cell: [out] for cell, out in cells.items()}
    else:
        ranks = spawn_group(__file__, world, tmp_path, WORKER_TIMEOUT)
        assert [r["rank"] for r in ranks] == list(range(world))
        per_rank = {cell: _assemble(ranks, cell) for cell in ranks[0]["cells"]}
    COMPARED.pop(backend, None)
    failures = _compare(backend, per_rank)
    assert not failures, "\n".join(failures)


def test_every_function_takes_impl() -> None:
    """Every function of the grid takes ``impl``, so the grid has a Triton cell for each: the
    vocabulary-parallel ones run the same kernels as the single-process ones."""
    import crossentropy.torch as ct

    for fn in (
        ct.cross_entropy,
        ct.linear_cross_entropy,
        ct.token_stats,
        ct.linear_token_stats,
        ct.vocab_parallel_cross_entropy,
        ct.vocab_parallel_linear_cross_entropy,
        ct.vocab_parallel_token_stats,
        ct.vocab_parallel_linear_token_stats,
    ):
        assert "impl" in inspect.signature(fn).parameters, fn.__name__


def test_grid_summary() -> None:
    """The grid's size and its worst errors (``pytest -s`` shows them); runs last."""
    if set(COMPARED) != set(BACKENDS):
        pytest.skip("the summary needs every backend's parity test in the same run")
    loss = len(_loss_impls()) * len(FORMS) * len(LOSS_OPTIONS)
    for backend, world in BACKENDS.items():
        stats = len(_loss_impls()) * len(FORMS) * len(STATS_OPTIONS)
        assert len(list(_cells(world))) == loss + stats == COMPARED[backend], backend
    total = sum(COMPARED.values())
    print(
        f"\nparity grid: {total} cells = {len(BACKENDS)} backends x "
        f"{len(_loss_impls())} impls x {len(FORMS)} forms x ({len(LOSS_OPTIONS)} loss + "
        f"{len(STATS_OPTIONS)} token-stats option sets)"
    )
    for dtype, worst in sorted(WORST.items()):
        (a, a_at), (r, r_at) = worst["abs"], worst["rel"]
        print(f"  {dtype}: worst abs error {a:.3g} at {a_at}")
        print(f"  {dtype}: worst rel error {r:.3g} (|d| / max(|ref|, atol)) at {r_at}")
    assert set(WORST) == ({"float32", "float64"} if _triton_ok() else {"float64"})


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(a) for a in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
