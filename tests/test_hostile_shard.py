r"""Hostile tests of the vocabulary-parallel functions, run as a shard of the vocabulary per rank.

Every vocabulary-parallel function (:func:`crossentropy.torch.vocab_parallel_cross_entropy`,
``..._linear_cross_entropy``, ``..._token_stats``, ``..._linear_token_stats``) is run on gloo
process groups of 1, 2 and 3 ranks (``tests/_spawn.py``) with uneven shards, including a shard of
width 0 on the first, middle and last rank. Each rank's replicated outputs (the loss, the
statistics, ``d hidden``, ``d sample_weight``) must be identical on every rank; the sharded
gradients are put back together in rank order. Both are compared with

- the single-process functions on the gathered logits / the full weight (the fused kernels
  forced, ``force_fused``), and
- a plain float64 torch composition of ``docs/guide/options.rst`` (``F.cross_entropy``,
  ``log_softmax``, ...) on the same rounded inputs, with autograd.

Then: bad input raises the same clear error on every rank (naming the argument), never a hang;
``create_graph=True`` and ``torch.func`` raise our error on every rank; a second backward through
a retained graph; inputs are not modified. The reproducers of the defects this found (float16
class weights, or hidden with no features, beside a shard of no class: one rank crashed in
backward while the others went on, once into an all-reduce it then waited in) are kept as
tests.

This file is also the worker: ``python tests/test_hostile_shard.py --worker RANK WORLD PORT OUT``
runs the scenario named in ``OUT/scenario.txt`` on one rank.
"""

from __future__ import annotations

import os
import sys
import zlib
from pathlib import Path
from typing import Any

os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np
import pytest

from _spawn import finish_worker, init_group, spawn_group

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

Tensor = torch.Tensor
F64 = torch.float64
N, V, D = 7, 9, 4  # rows, classes, hidden size
PG_TIMEOUT = 20.0  # seconds: a collective that waits longer than this is a hang
WORKER_TIMEOUT = 150.0
INF = float("inf")

#: Contiguous uneven shards of the 9 classes, a width-0 shard on every position.
LAYOUTS: dict[int, list[list[int]]] = {
    1: [[9]],
    2: [[0, 9], [9, 0], [2, 7]],
    3: [[0, 4, 5], [4, 0, 5], [4, 5, 0], [1, 6, 2]],
}
DTYPES = {
    "float64": torch.float64,
    "float32": torch.float32,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
}
#: max |ours - ref| <= RTOL * max(|ref|, 1) per dtype (a float64 reference on rounded inputs)
RTOL = {"float64": 1e-9, "float32": 2e-5, "float16": 4e-3, "bfloat16": 3e-2}
STATS = ("logprob", "entropy", "lse")


def _triton_ok() -> bool:
    from crossentropy.torch import _backend

    return _backend.triton_available() and _backend.triton_interpreted()


# =============================================================================================
# The cases: one spec per case, rebuilt identically in the workers and the parent
# =============================================================================================

ALL_LOSS = {
    "weighted": True,
    "ignore": "some",
    "eps": 0.1,
    "z_loss": 0.05,
    "softcap": 2.5,
    "sampled": True,
    "bias": True,
}


def _cases() -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = []
    impls = [("float64", "torch")] + ([("float32", "triton")] if _triton_ok() else [])

    def add(name: str, **spec: Any) -> None:
        cases.append({"name": name, **spec})

    loss_opts = {
        "all-mean": {**ALL_LOSS, "reduction": "mean"},
        "all-none-ignoreclass": {**ALL_LOSS, "ignore": "class", "reduction": "none"},
        "weighted-eps-sum": {"weighted": True, "eps": 0.2, "reduction": "sum"},
        "defaults": {},
        "all-ignored-mean": {"weighted": True, "ignore": "all", "z_loss": 0.1, "sampled": True},
        "all-ignored-sum": {"ignore": "all", "reduction": "sum", "eps": 0.1},
    }
    stats_opts = {
        "defaults": {},
        "softcap-ignore": {"softcap": 2.5, "ignore": "some", "bias": True},
        "ignoreclass": {"ignore": "class", "bias": True},
    }
    for dtype, impl in impls:
        for fn in ("ce", "lce"):
            for oname, opts in loss_opts.items():
                add(f"{fn}/{impl}/{dtype}/{oname}", fn=fn, dtype=dtype, impl=impl, **opts)
        for fn in ("ts", "lts"):
            for oname, opts in stats_opts.items():
                add(f"{fn}/{impl}/{dtype}/{oname}", fn=fn, dtype=dtype, impl=impl, **opts)
        # -inf / huge logits, also an entire shard's row of -inf, and an ignored all -inf row
        for special in ("ninf_part", "ninf_shard_row", "ninf_row_ignored", "huge"):
            add(
                f"ce/{impl}/{dtype}/{special}",
                fn="ce",
                dtype=dtype,
                impl=impl,
                special=special,
                reduction="none",
                weighted=special != "huge",
            )
            add(
                f"ce/{impl}/{dtype}/{special}-mean-z",
                fn="ce",
                dtype=dtype,
                impl=impl,
                special=special,
                z_loss=0.01,
                sampled=True,
            )
            add(f"ts/{impl}/{dtype}/{special}", fn="ts", dtype=dtype, impl=impl, special=special)
        # +inf / NaN logits: compared with the single-process functions only
        for special in ("pinf", "nan"):
            add(
                f"ce/{impl}/{dtype}/{special}",
                fn="ce",
                dtype=dtype,
                impl=impl,
                special=special,
                reduction="none",
                single_only=True,
            )
            add(
                f"ts/{impl}/{dtype}/{special}",
                fn="ts",
                dtype=dtype,
                impl=impl,
                special=special,
                single_only=True,
            )
    # half precision, both impls, GradScaler-like upstream scales (a power of two and not)
    halves = [("float16", "torch"), ("bfloat16", "torch")]
    if _triton_ok():
        halves += [("float16", "triton"), ("bfloat16", "triton")]
    for dtype, impl in halves:
        for up in (2.0**14, 3.0):
            add(
                f"ce/{impl}/{dtype}/scaled{up:g}",
                fn="ce",
                dtype=dtype,
                impl=impl,
                up=up,
                eps=0.1,
                z_loss=0.01,
            )
        add(f"lce/{impl}/{dtype}/bias", fn="lce", dtype=dtype, impl=impl, bias=True, chunk=3)
        add(f"ts/{impl}/{dtype}/defaults", fn="ts", dtype=dtype, impl=impl)
        add(f"lts/{impl}/{dtype}/softcap", fn="lts", dtype=dtype, impl=impl, softcap=2.5)
        add(
            f"ce/{impl}/{dtype}/huge",
            fn="ce",
            dtype=dtype,
            impl=impl,
            special="huge",
            reduction="none",
        )
    # autocast around the call (float32 inputs)
    for ac in ("bfloat16", "float16"):
        for fn in ("ce", "lce", "ts", "lts"):
            add(
                f"{fn}/autocast-{ac}",
                fn=fn,
                dtype="float32",
                impl="torch",
                autocast=ac,
                bias=fn in ("lce", "lts"),
            )
    # N = 0 and N = 1 rows, every reduction
    for rows in (0, 1):
        for red in ("mean", "sum", "none"):
            add(
                f"ce/rows{rows}/{red}",
                fn="ce",
                dtype="float64",
                impl="torch",
                rows=rows,
                reduction=red,
                eps=0.1,
            )
            add(
                f"lce/rows{rows}/{red}",
                fn="lce",
                dtype="float64",
                impl="torch",
                rows=rows,
                reduction=red,
                bias=True,
            )
        add(f"ts/rows{rows}", fn="ts", dtype="float64", impl="torch", rows=rows)
        add(f"lts/rows{rows}", fn="lts", dtype="float64", impl="torch", rows=rows, bias=True)
    # targets of every integer dtype
    for tdt in ("int8", "uint8", "int16", "int32"):
        ign = "none" if tdt == "uint8" else "some"
        add(
            f"ce/target-{tdt}",
            fn="ce",
            dtype="float64",
            impl="torch",
            tdtype=tdt,
            ignore=ign,
            reduction="none",
            weighted=True,
        )
        add(f"ts/target-{tdt}", fn="ts", dtype="float64", impl="torch", tdtype=tdt, ignore=ign)
        add(f"lce/target-{tdt}", fn="lce", dtype="float64", impl="torch", tdtype=tdt, ignore=ign)
    # non-contiguous inputs
    for fn in ("ce", "ts", "lce", "lts"):
        add(
            f"{fn}/noncontig",
            fn=fn,
            dtype="float64",
            impl="torch",
            noncontig=True,
            ignore="some",
            eps=0.1 if fn == "ce" else 0.0,
        )
    # chunk sizes 1 and larger than N; D = 0 (on a layout without an empty shard)
    for fn in ("lce", "lts"):
        for chunk in (1, 100):
            add(
                f"{fn}/chunk{chunk}",
                fn=fn,
                dtype="float64",
                impl="torch",
                chunk=chunk,
                bias=True,
                softcap=2.5,
                ignore="some",
            )
            if _triton_ok():
                add(
                    f"{fn}/triton/chunk{chunk}",
                    fn=fn,
                    dtype="float32",
                    impl="triton",
                    chunk=chunk,
                    bias=True,
                    ignore="some",
                )
        add(
            f"{fn}/D0",
            fn=fn,
            dtype="float64",
            impl="torch",
            hidden_dim=0,
            bias=True,
            layout="no-empty",
        )
    # a sample weight that requires grad
    for fn in ("ce", "lce"):
        for red in ("mean", "none"):
            add(
                f"{fn}/sample-grad/{red}",
                fn=fn,
                dtype="float64",
                impl="torch",
                sampled=True,
                sample_grad=True,
                reduction=red,
                z_loss=0.02,
                eps=0.1,
                ignore="some",
                weighted=True,
            )
    return cases


CASES = _cases()


def _widths(spec: dict[str, Any], world: int, index: int) -> list[int]:
    layouts = LAYOUTS[world]
    if spec.get("layout") == "no-empty":
        layouts = [w for w in layouts if 0 not in w]
    return layouts[index % len(layouts)]


def _problem(spec: dict[str, Any], widths: list[int]) -> dict[str, Any]:
    """Every input of a case in float64 (rounded to the case's dtype first)."""
    g = torch.Generator().manual_seed(zlib.crc32(spec["name"].encode()))
    rows = spec.get("rows", N)
    dim = spec.get("hidden_dim", D)
    target = torch.randint(0, V, (rows,), generator=g)
    ignore_index = -100
    ignore = spec.get("ignore")
    if ignore == "some" and rows > 3:
        target[[1, 4]] = -100
    elif ignore == "class":
        ignore_index = 3
        if rows > 2:
            target[[0, 2]] = 3
    elif ignore == "all":
        target[:] = -100
    cw = 0.2 + torch.rand(V, generator=g, dtype=F64)
    cw[0], cw[5] = 0.0, -0.5  # a zero and a negative class weight
    floats = {
        "logits": 3 * torch.randn(rows, V, generator=g, dtype=F64),
        "hidden": torch.randn(rows, dim, generator=g, dtype=F64),
        "weight": 0.9 * torch.randn(V, dim, generator=g, dtype=F64),
        "bias": 0.3 * torch.randn(V, generator=g, dtype=F64),
        "class_weight": cw,
        "sample": torch.randn(rows, generator=g, dtype=F64),
        "up": torch.randn(rows, generator=g, dtype=F64),
        **{f"up_{k}": torch.randn(rows, generator=g, dtype=F64) for k in STATS},
    }
    if rows > 3:
        floats["sample"][3] = 0.0
    x = floats["logits"]
    special = spec.get("special")
    first = next(i for i, w in enumerate(widths) if w)  # first non-empty shard
    a = sum(widths[:first])
    b = a + widths[first]
    if special == "ninf_part":
        x[0, 2] = -INF
        x[1, [0, 4, 8]] = -INF
        x[2, :] = torch.where(torch.arange(V) % 2 == 0, -INF, x[2, :])
        target[2] = 1
    elif special == "ninf_shard_row":
        x[1, a:b] = -INF  # an entire shard's row
        target[1] = (b % V) if b < V else 0
        if a <= target[1] < b:  # one shard holds everything: leave one class finite
            x[1, target[1]] = 0.5
    elif special == "ninf_row_ignored":
        x[2, :] = -INF
        target[2] = ignore_index
    elif special == "huge":
        x[0, 0], x[0, V - 1] = 1e4, -1e4
        x[1, :] = 1e4
        x[2, 3], x[2, 7] = 1e4, 1e4  # a tie of huge logits across shards
        x[3] = 1e4 * torch.randn(V, generator=g, dtype=F64)
    elif special == "pinf":
        x[0, 4] = INF
        x[1, target[1].clamp(min=0)] = INF
    elif special == "nan":
        x[1, 7] = float("nan")
    dtype = DTYPES[spec["dtype"]]
    problem: dict[str, Any] = {k: v.to(dtype).to(F64) for k, v in floats.items()}
    tdt = spec.get("tdtype")
    problem["target"] = target.to(getattr(torch, tdt)) if tdt else target
    problem["ignore_index"] = ignore_index
    return problem


# =============================================================================================
# One call: single-process on everything (world 0) or one rank's shard
# =============================================================================================


def _same(a: Tensor, b: Tensor) -> bool:
    """Bit for bit equal, NaN included."""
    return bool(((a == b) | (a.isnan() & b.isnan())).all()) and a.shape == b.shape


def _enc(t: Tensor) -> dict[str, Any]:
    """A tensor as JSON: its shape and its values (float64, or int64 for argmax)."""
    kind = torch.int64 if not t.is_floating_point() else F64
    return {"shape": list(t.shape), "values": t.to(kind).reshape(-1).tolist()}


def _dec(v: dict[str, Any]) -> np.ndarray:
    kind = float if v["values"] and isinstance(v["values"][0], float) else None
    return np.asarray(v["values"], dtype=kind).reshape(v["shape"])


def _call(spec: dict[str, Any], widths: list[int], rank: int, single: bool) -> dict[str, Any]:
    import crossentropy.torch as ct

    p = _problem(spec, widths)
    dtype = DTYPES[spec["dtype"]]
    a, b = (0, V) if single else (sum(widths[:rank]), sum(widths[: rank + 1]))
    fn = spec["fn"]
    loss = fn in ("ce", "lce")
    linear = fn in ("lce", "lts")
    common: dict[str, Any] = {
        "ignore_index": p["ignore_index"],
        "softcap": spec.get("softcap"),
        "impl": spec["impl"],
    }
    if not single:
        common["vocab_size"] = V
    sample = None
    if loss:
        if spec.get("sampled"):
            sample = p["sample"].to(dtype).clone().requires_grad_(bool(spec.get("sample_grad")))
        common.update(
            reduction=spec.get("reduction", "mean"),
            label_smoothing=spec.get("eps", 0.0),
            z_loss=spec.get("z_loss", 0.0),
            sample_weight=sample,
        )
    cw = p["class_weight"][a:b].to(dtype) if spec.get("weighted") else None
    leaves: dict[str, Tensor] = {}
    grads_of: dict[str, Tensor] = {}
    target = p["target"]
    ac = spec.get("autocast")
    ctx = torch.autocast("cpu", dtype=DTYPES[ac]) if ac else torch.autocast("cpu", enabled=False)
    before: dict[str, Tensor] = {}
    if not linear:
        if spec.get("noncontig"):
            store = p["logits"][:, a:b].T.to(dtype).contiguous().requires_grad_()
            x = store.T
            leaves["logits"] = store
        else:
            x = leaves["logits"] = p["logits"][:, a:b].to(dtype).clone().requires_grad_()
        before["logits"] = x.detach().clone()
        with ctx:
            if loss:
                f = ct.cross_entropy if single else ct.vocab_parallel_cross_entropy
                out = f(x, target, weight=cw, **common)
            else:
                f = ct.token_stats if single else ct.vocab_parallel_token_stats
                out = f(x, target, **common)
    else:
        h = p["hidden"].to(dtype).clone()
        if spec.get("noncontig"):
            h = h.T.contiguous().T
        h.requires_grad_()
        w = p["weight"][a:b].to(dtype).clone().requires_grad_()
        leaves["hidden"], leaves["weight"] = h, w
        bias = None
        if spec.get("bias"):
            bias = leaves["bias"] = p["bias"][a:b].to(dtype).clone().requires_grad_()
        for k, v in leaves.items():
            before[k] = v.detach().clone()
        with ctx:
            if loss:
                f = ct.linear_cross_entropy if single else ct.vocab_parallel_linear_cross_entropy
                out = f(h, w, target, bias, class_weight=cw, chunk_size=spec.get("chunk"), **common)
            else:
                f = ct.linear_token_stats if single else ct.vocab_parallel_linear_token_stats
                out = f(h, w, target, bias, chunk_size=spec.get("chunk"), **common)
    if sample is not None and sample.requires_grad:
        grads_of["sample"] = sample
    # the scalar whose gradient is taken
    if loss:
        if out.ndim:
            total = (out * p["up"].to(out.dtype)).sum()
        else:
            total = out * spec.get("up", 1.0)
    else:
        total = sum((getattr(out, k) * p[f"up_{k}"].to(out.lse.dtype)).sum() for k in STATS)
    total.backward()
    values: dict[str, Any] = {}
    if loss:
        values["loss"] = _enc(out.detach().reshape(-1))
        values["dtype"] = str(out.dtype)
    else:
        for k in STATS:
            values[k] = _enc(getattr(out, k).detach())
        values["argmax"] = _enc(out.argmax)
        values["dtype"] = str(out.logprob.dtype)
    for k, leaf in {**leaves, **grads_of}.items():
        grad = leaf.grad
        assert grad is not None, (spec["name"], k)
        if k == "logits" and spec.get("noncontig"):
            grad = grad.T
            leaves[k] = leaves[k].T
        values[f"grad_{k}"] = _enc(grad)
    values["unmodified"] = all(_same(before[k], leaves[k].detach()) for k in before)
    return values


# =============================================================================================
# The float64 reference: docs/guide/options.rst written out in plain torch
# =============================================================================================


def _reference(spec: dict[str, Any], widths: list[int]) -> dict[str, np.ndarray]:
    p = _problem(spec, widths)
    fn = spec["fn"]
    leaves = {k: p[k].clone().requires_grad_() for k in ("logits", "hidden", "weight", "bias")}
    if fn in ("ce", "ts"):
        z = leaves["logits"]
    else:
        z = leaves["hidden"] @ leaves["weight"].T
        if spec.get("bias"):
            z = z + leaves["bias"]
    cap = spec.get("softcap")
    zc = z if cap is None else cap * torch.tanh(z / cap)
    target, ignore_index = p["target"].long(), p["ignore_index"]
    kept = target != ignore_index
    safe = torch.where(kept, target, 0)
    lse = torch.logsumexp(zc, dim=-1)
    values: dict[str, Tensor] = {}
    sample = p["sample"].clone().requires_grad_(bool(spec.get("sample_grad")))
    if fn in ("ce", "lce"):
        weight = p["class_weight"] if spec.get("weighted") else torch.ones(V, dtype=F64)
        eps = spec.get("eps", 0.0)
        finite = torch.where(zc.isinf() & (zc < 0), 0.0, zc)  # -inf: probability 0
        nll = lse - zc.gather(-1, safe[:, None])[:, 0]
        smooth = (weight * (lse[:, None] - finite)).sum(-1) if eps else torch.zeros_like(lse)
        wy = torch.where(kept, weight[safe], 0.0)
        row = (1 - eps) * wy * nll + eps / V * smooth + spec.get("z_loss", 0.0) * wy * lse**2
        if spec.get("sampled"):
            row = row * sample
        row = torch.where(kept, row, 0.0)
        red = spec.get("reduction", "mean")
        out = row if red == "none" else row.sum() if red == "sum" else row.sum() / wy.sum()
        values["loss"] = out.reshape(-1)
        total = (out * p["up"]).sum() if red == "none" else out * spec.get("up", 1.0)
    else:
        prob = torch.softmax(zc, -1)
        finite = torch.where(zc.isinf() & (zc < 0), 0.0, zc)
        entropy = lse - (prob * finite).sum(-1)
        logprob = torch.where(kept, zc.gather(-1, safe[:, None])[:, 0] - lse, 0.0)
        stats = {"logprob": logprob, "entropy": entropy, "lse": lse}
        values.update(stats)
        values["argmax"] = zc.argmax(-1) if zc.shape[0] else torch.zeros(0, dtype=torch.long)
        total = sum((stats[k] * p[f"up_{k}"]).sum() for k in STATS)
    total.backward()
    grads = ("logits",) if fn in ("ce", "ts") else ("hidden", "weight", "bias")
    for k in grads:
        if k == "bias" and not spec.get("bias"):
            continue
        g = leaves[k].grad
        values[f"grad_{k}"] = torch.zeros_like(leaves[k]) if g is None else g
    if spec.get("sample_grad"):
        values["grad_sample"] = sample.grad
    # -inf logits (no softcap) get gradient 0, autograd's 0 * inf is NaN there; except a kept
    # target on a -inf class, whose logprob gradient is 1 - p = 1
    if "grad_logits" in values and cap is None:
        masked = p["logits"].isinf() & (p["logits"] < 0)
        on_target = torch.zeros_like(masked)
        on_target[kept.nonzero()[:, 0], safe[kept]] = True
        values["grad_logits"] = torch.where(masked & ~on_target, 0.0, values["grad_logits"])
    return {k: v.detach().numpy() for k, v in values.items()}


# =============================================================================================
# Workers
# =============================================================================================


def _run_cases(world: int, rank: int) -> dict[str, Any]:
    results = {}
    for i, spec in enumerate(CASES):
        widths = _widths(spec, world, i)
        try:
            results[spec["name"]] = _call(spec, widths, rank, single=False)
        except Exception as exc:  # reported per case, compared in the parent
            results[spec["name"]] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def _worker(rank: int, world: int, port: int, out: Path) -> None:

    torch.set_num_threads(1)
    scenario = (out.parent / "scenario.txt").read_text().strip()
    # a defect reproducer that leaves the other ranks in a collective gives up after 5 s
    init_group(rank, world, port, 5.0 if scenario.startswith("defect") else PG_TIMEOUT)
    results = SCENARIOS[scenario](world, rank)
    # a group left out of step by a defect reproducer: no teardown handshake
    finish_worker(out, {"rank": rank, "results": results}, not scenario.startswith("defect"))


def _spawn(scenario: str, world: int, tmp: Path) -> list[dict[str, Any]]:
    (tmp / "scenario.txt").write_text(scenario)
    ranks = spawn_group(__file__, world, tmp, WORKER_TIMEOUT)
    assert [r["rank"] for r in ranks] == list(range(world))
    return [r["results"] for r in ranks]


# =============================================================================================
# The parent: the parity battery
# =============================================================================================

_SHARDED = {"grad_logits": 1, "grad_weight": 0, "grad_bias": 0}


def _close(ours: np.ndarray, ref: np.ndarray, dtype: str, where: str) -> str | None:
    if ours.shape != ref.shape:
        return f"{where}: shape {ours.shape} != {ref.shape}"
    if ref.size == 0:
        return None
    same_nan = np.array_equal(np.isnan(ours), np.isnan(ref))
    same_inf = np.array_equal(np.isposinf(ours), np.isposinf(ref)) and np.array_equal(
        np.isneginf(ours), np.isneginf(ref)
    )
    if not (same_nan and same_inf):
        return f"{where}: non-finite pattern differs\nours {ours}\nref  {ref}"
    fin = np.isfinite(ref)
    if not fin.any():
        return None
    scale = max(1.0, float(np.abs(ref[fin]).max()))
    err = float(np.abs(ours[fin] - ref[fin]).max())
    if err > RTOL[dtype] * scale:
        return (
            f"{where}: max error {err:.3g} > {RTOL[dtype]:g} x {scale:.3g}\nours {ours}\nref  {ref}"
        )
    return None


def _assemble(per_rank: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    full = {}
    for k, v in per_rank[0].items():
        if k in _SHARDED:
            full[k] = np.concatenate([_dec(r[k]).astype(float) for r in per_rank], _SHARDED[k])
        elif k not in ("dtype", "unmodified"):
            full[k] = _dec(v).astype(np.int64 if k == "argmax" else float)
    return full


def _expected_dtype(spec: dict[str, Any]) -> str:
    if spec["fn"] in ("ts", "lts"):
        return "torch.float64" if spec["dtype"] == "float64" else "torch.float32"
    if spec.get("autocast"):
        return "torch.float32"
    return f"torch.{spec['dtype']}"


def _check_world(world: int, ranks: list[dict[str, Any]]) -> list[str]:
    failures = []
    for i, spec in enumerate(CASES):
        name = spec["name"]
        widths = _widths(spec, world, i)
        where = f"world {world} {widths} {name}"
        per_rank = [r[name] for r in ranks]
        errors = [r.get("error") for r in per_rank]
        if any(errors):
            failures.append(f"{where}: raised {errors}")
            continue
        # replicated outputs identical on every rank, bit for bit
        for k in per_rank[0]:
            if k in _SHARDED or k == "unmodified":
                continue
            for r in per_rank[1:]:
                if k == "dtype":
                    same = r[k] == per_rank[0][k]
                else:
                    first, other = _dec(per_rank[0][k]), _dec(r[k])
                    same = first.shape == other.shape and np.array_equal(
                        first, other, equal_nan=True
                    )
                if not same:
                    failures.append(f"{where}: {k} differs between ranks")
        if not all(r["unmodified"] for r in per_rank):
            failures.append(f"{where}: an input was modified")
        if per_rank[0]["dtype"] != _expected_dtype(spec):
            failures.append(f"{where}: dtype {per_rank[0]['dtype']}")
        ours = _assemble(per_rank)
        single = _call(spec, widths, 0, single=True)
        single_full = _assemble([single])
        dtype = (
            "bfloat16"
            if spec.get("autocast") == "bfloat16"
            else ("float16" if spec.get("autocast") else spec["dtype"])
        )
        for k, expected in single_full.items():
            if k == "argmax":
                if not np.array_equal(ours[k], expected):
                    failures.append(f"{where}: argmax {ours[k]} != single {expected}")
                continue
            msg = _close(ours[k], expected, dtype, f"{where} {k} vs single-process")
            if msg:
                failures.append(msg)
        if spec.get("single_only"):
            continue
        ref = _reference(spec, widths)
        for k, expected in ref.items():
            if k == "argmax":
                if spec.get("special") != "huge" and not np.array_equal(ours[k], expected):
                    failures.append(f"{where}: argmax {ours[k]} != reference {expected}")
                continue
            msg = _close(ours[k].reshape(expected.shape), expected, dtype, f"{where} {k} vs f64")
            if msg:
                failures.append(msg)
    return failures


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 2, 3])
def test_shard_parity_battery(world: int, force_fused: None, tmp_path: Path) -> None:
    """Every case (all four functions; every option, reduction, dtype, impl; -inf/+inf/NaN/1e4
    logits; 0 and 1 rows; int8..int32 targets; non-contiguous inputs; chunk 1 and > N; D = 0;
    autocast; GradScaler-like upstream scales; a sample weight that requires grad) on uneven
    shards with an empty shard first, in the middle and last: replicated outputs identical on
    every rank, inputs unmodified, the output dtype documented, and values and gradients (the
    shards put back together) equal to the single-process functions and to float64 torch."""
    ranks = _spawn("cases", world, tmp_path)
    failures = _check_world(world, ranks)
    assert not failures, f"{len(failures)} failures:\n" + "\n".join(failures[:40])


# =============================================================================================
# Autograd modes on every rank
# =============================================================================================


def _modes(world: int, rank: int) -> dict[str, Any]:
    import crossentropy.torch as ct

    widths = LAYOUTS[world][min(1, len(LAYOUTS[world]) - 1)]  # an empty shard where possible
    a, b = sum(widths[:rank]), sum(widths[: rank + 1])
    g = torch.Generator().manual_seed(7)
    x = 2 * torch.randn(N, V, generator=g, dtype=F64)
    t = torch.randint(0, V, (N,), generator=g)
    h = torch.randn(N, D, generator=g, dtype=F64)
    w = torch.randn(V, D, generator=g, dtype=F64)
    s = torch.randn(N, generator=g, dtype=F64)
    out: dict[str, Any] = {}

    def attempt(key: str, f: Any) -> None:
        try:
            out[key] = {"ok": f()}
        except Exception as exc:
            out[key] = {"error": f"{type(exc).__name__}: {exc}"}

    def ce(z: Tensor) -> Tensor:
        return ct.vocab_parallel_cross_entropy(z, t, label_smoothing=0.1, z_loss=0.01)

    def ts(z: Tensor) -> Tensor:
        o = ct.vocab_parallel_token_stats(z, t)
        return o.entropy.sum() + o.logprob.sum()

    def lce(hh: Tensor, ww: Tensor) -> Tensor:
        return ct.vocab_parallel_linear_cross_entropy(hh, ww, t, chunk_size=3)

    def lts(hh: Tensor, ww: Tensor) -> Tensor:
        o = ct.vocab_parallel_linear_token_stats(hh, ww, t, chunk_size=3)
        return o.entropy.sum() + o.lse.sum()

    for key, f in (("ce", ce), ("ts", ts)):
        xs = x[:, a:b].clone().requires_grad_()
        attempt(
            f"create_graph/{key}",
            lambda f=f, xs=xs: torch.autograd.grad(f(xs), xs, create_graph=True)[0].sum().item(),
        )
        attempt(f"func.grad/{key}", lambda f=f: torch.func.grad(f)(x[:, a:b].clone()).sum().item())
        attempt(
            f"func.vmap/{key}", lambda f=f: torch.func.vmap(f)(x[None, :, a:b].clone()).sum().item()
        )
    for key, f in (("lce", lce), ("lts", lts)):
        hh, ww = h.clone().requires_grad_(), w[a:b].clone().requires_grad_()
        attempt(
            f"create_graph/{key}",
            lambda f=f, hh=hh, ww=ww: (
                torch.autograd.grad(f(hh, ww), (hh, ww), create_graph=True)[0].sum().item()
            ),
        )
        attempt(
            f"func.grad/{key}",
            lambda f=f: torch.func.grad(f)(h.clone(), w[a:b].clone()).sum().item(),
        )
    # a second backward through a retained graph, after mangling the first gradient in place
    for red in ("mean", "sum", "none"):
        for impl in ("torch", "triton") if _triton_ok() else ("torch",):

            def twice(red: str = red, impl: str = impl) -> list[float]:
                xs = x[:, a:b].float().clone().requires_grad_()
                loss = ct.vocab_parallel_cross_entropy(
                    xs,
                    t,
                    reduction=red,
                    label_smoothing=0.2,
                    z_loss=0.05,
                    sample_weight=s,
                    impl=impl,
                )
                up = torch.ones_like(loss) if red == "none" else None
                loss.backward(up, retain_graph=True)
                first = xs.grad.clone()
                xs.grad.mul_(100.0).add_(7.0)  # the caller writes into the handed-out buffer
                xs.grad = None
                loss.backward(up)
                return [float((xs.grad - first).abs().amax()) if first.numel() else 0.0]

            attempt(f"retain/{red}/{impl}", twice)

    def twice_linear() -> list[float]:
        hh, ww = h.clone().requires_grad_(), w[a:b].clone().requires_grad_()
        loss = lce(hh, ww)
        loss.backward(retain_graph=True)
        first = (hh.grad.clone(), ww.grad.clone())
        hh.grad.mul_(3.0)
        hh.grad = ww.grad = None
        loss.backward()
        return [
            float((hh.grad - first[0]).abs().amax()),
            float((ww.grad - first[1]).abs().amax()) if first[1].numel() else 0.0,
        ]

    attempt("retain/linear", twice_linear)

    def twice_stats() -> list[float]:
        xs = x[:, a:b].clone().requires_grad_()
        o = ct.vocab_parallel_token_stats(xs, t)
        (o.entropy.sum() + o.logprob.sum()).backward(retain_graph=True)
        first = xs.grad.clone()
        xs.grad = None
        (o.entropy.sum() + o.logprob.sum()).backward()
        return [float((xs.grad - first).abs().amax()) if first.numel() else 0.0]

    attempt("retain/stats", twice_stats)

    def no_grad_matches() -> list[float]:
        with torch.no_grad():
            l1 = ct.vocab_parallel_cross_entropy(
                x[:, a:b], t, reduction="none", label_smoothing=0.1
            )
            o = ct.vocab_parallel_linear_token_stats(h, w[a:b], t, chunk_size=2)
        ref = F.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
        z = h @ w.T
        return [
            float((l1 - ref).abs().max()),
            float((o.lse - z.logsumexp(-1)).abs().max()),
            float((o.logprob - z.log_softmax(-1).gather(1, t[:, None])[:, 0]).abs().max()),
        ]

    attempt("no_grad", no_grad_matches)

    def multi_use() -> list[float]:
        # several losses and statistics of the same shard, one backward interleaved
        xs = x[:, a:b].clone().requires_grad_()
        t2 = t.flip(0)
        l1 = ct.vocab_parallel_cross_entropy(xs, t)
        l2 = ct.vocab_parallel_cross_entropy(xs, t2, label_smoothing=0.1, reduction="sum")
        o = ct.vocab_parallel_token_stats(xs, t)
        l3 = ct.vocab_parallel_cross_entropy(xs, t2, reduction="none")
        up = torch.arange(N, dtype=F64)
        l2.backward(retain_graph=True)
        (l1 * 3 + l1 * 2 + o.entropy.sum() / 2 + o.logprob.sum() + (l3 * up).sum()).backward()
        xr = x.clone().requires_grad_()
        lp = xr.log_softmax(-1)
        ref = (
            F.cross_entropy(xr, t) * 5
            + F.cross_entropy(xr, t2, label_smoothing=0.1, reduction="sum")
            - (lp.exp() * lp).sum() / 2
            + lp.gather(1, t[:, None]).sum()
            + (F.cross_entropy(xr, t2, reduction="none") * up).sum()
        )
        ref.backward()
        return [float((xs.grad - xr.grad[:, a:b]).abs().amax()) if b > a else 0.0]

    attempt("multi_use", multi_use)

    def frozen_parts() -> list[float]:
        # d weight and d bias only, d hidden only, d bias only: each against float64 autograd
        errs = []
        bias = 0.3 * torch.randn(V, generator=torch.Generator().manual_seed(3), dtype=F64)
        for need in ((False, True, False), (True, False, False), (False, False, True)):
            for fn in ("lce", "lts"):
                hh = h.clone().requires_grad_(need[0])
                ww = w[a:b].clone().requires_grad_(need[1])
                bb = bias[a:b].clone().requires_grad_(need[2])
                hr, wr, br = (v.clone().requires_grad_() for v in (h, w, bias))
                z = hr @ wr.T + br
                if fn == "lce":
                    loss = ct.vocab_parallel_linear_cross_entropy(
                        hh, ww, t, bb, chunk_size=4, reduction="sum", label_smoothing=0.1
                    )
                    ref = F.cross_entropy(z, t, reduction="sum", label_smoothing=0.1)
                else:
                    o = ct.vocab_parallel_linear_token_stats(hh, ww, t, bb, chunk_size=4)
                    loss = o.entropy.sum() + o.logprob.sum()
                    lp = z.log_softmax(-1)
                    ref = -(lp.exp() * lp).sum() + lp.gather(1, t[:, None]).sum()
                loss.backward()
                ref.backward()
                pairs = [(hh, hr.grad), (ww, wr.grad[a:b]), (bb, br.grad[a:b])]
                for (mine, full), needed in zip(pairs, need, strict=True):
                    if needed and mine.numel():
                        errs.append(float((mine.grad - full).abs().amax()))
                    elif not needed:
                        errs.append(0.0 if mine.grad is None else 1.0)
        return errs

    attempt("frozen_parts", frozen_parts)
    return out


@pytest.mark.slow
@pytest.mark.parametrize("world", [1, 3])
def test_autograd_modes_on_every_rank(world: int, tmp_path: Path) -> None:
    """create_graph=True and torch.func (grad, vmap) raise our error, the same on every rank,
    with nothing hanging; a second backward through a retained graph gives the first gradient
    even after the caller wrote into the first one; forward-only calls equal F's; several
    losses and statistics of one shard with interleaved backwards; the linear forms with only
    hidden, only the weight shard or only the bias shard requiring grad."""
    ranks = _spawn("modes", world, tmp_path)
    for key in ranks[0]:
        got = [r[key] for r in ranks]
        where = f"world {world} {key}"
        if key.startswith(("create_graph", "func")):
            msgs = [g.get("error") for g in got]
            assert all(msgs), (where, got)
            assert len(set(msgs)) == 1, (where, msgs)
            assert msgs[0].startswith("RuntimeError: vocab_parallel_"), (where, msgs[0])
            word = "create_graph" if key.startswith("create_graph") else "torch.func"
            assert word in msgs[0], (where, msgs[0])
        else:
            assert all("ok" in g for g in got), (where, got)
            for g in got:
                assert max(g["ok"]) <= 1e-6, (where, g)


# =============================================================================================
# Bad input: the same clear error on every rank, never a hang
# =============================================================================================

#: (case, a word the message must contain). Each mutates one rank's (or every rank's) input.
BAD = [
    ("reduction_differs", "reduction"),
    ("label_smoothing_differs", "label_smoothing"),
    ("ignore_index_differs", "ignore_index"),
    ("z_loss_differs", "z_loss"),
    ("softcap_differs", "softcap"),
    ("weight_on_some", "weight"),
    ("weight_wrong_length", "weight"),
    ("target_differs", "target"),
    ("target_out_of_range_one_rank", "target"),
    ("target_negative", "target"),
    ("target_float", "target"),
    ("sample_weight_differs", "sample_weight"),
    ("sample_weight_on_some", "sample_weight"),
    ("sample_weight_shape", "sample_weight"),
    ("sample_weight_int", "sample_weight"),
    ("vocab_size_wrong", "vocab_size"),
    ("vocab_size_differs", "vocab_size"),
    ("dtype_differs", "dtype"),
    ("rows_differ", "rows"),
    ("label_smoothing_out_of_range", "label_smoothing"),
    ("reduction_unknown", "reduction"),
    ("z_loss_negative", "z_loss"),
    ("z_loss_nan", "z_loss"),
    ("softcap_zero", "softcap"),
    ("softcap_inf", "softcap"),
    ("softcap_huge", "softcap"),
    ("logits_int", "logits_shard"),
    ("logits_3d", "logits_shard"),
    ("impl_unknown", "impl"),
    ("impl_triton_float64", "impl"),
    ("ts_target_differs", "target"),
    ("ts_vocab_size_differs", "vocab_size"),
    ("ts_softcap_differs", "softcap"),
    ("ts_target_out_of_range_one_rank", "target"),
    ("ts_ignore_index_differs", "ignore_index"),
    ("lce_hidden_requires_grad_some", "hidden"),
    ("lce_chunk_zero", "chunk_size"),
    ("lce_weight_dtype", "weight_shard"),
    ("lce_hidden_width_differs", "weight_shard"),
    ("lts_hidden_requires_grad_some", "hidden"),
    ("lts_chunk_zero", "chunk_size"),
]


def _bad_call(name: str, world: int, rank: int) -> None:
    import crossentropy.torch as ct

    widths = [4, 0, 5]
    a, b = sum(widths[:rank]), sum(widths[: rank + 1])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(N, V, generator=g)
    t = torch.randint(0, V, (N,), generator=g)
    s = torch.randn(N, generator=g)
    h = torch.randn(N, D, generator=g)
    w = torch.randn(V, D, generator=g)
    last, mid = rank == world - 1, rank == 1
    xs = x[:, a:b].clone()
    kw: dict[str, Any] = {}
    base = name.removeprefix("ts_").removeprefix("lce_").removeprefix("lts_")
    if base == "reduction_differs":
        kw["reduction"] = "sum" if last else "mean"
    elif base == "label_smoothing_differs":
        kw["label_smoothing"] = 0.1 if mid else 0.0
    elif base == "ignore_index_differs":
        kw["ignore_index"] = 3 if last else -100
    elif base == "z_loss_differs":
        kw["z_loss"] = 0.1 if last else 0.0
    elif base == "softcap_differs":
        kw["softcap"] = 5.0 if mid else None
    elif base == "weight_on_some":
        kw["weight"] = torch.ones(b - a) if rank == 0 else None
    elif base == "weight_wrong_length":
        kw["weight"] = torch.ones(b - a + (1 if mid else 0))
    elif base == "target_differs":
        t = t.clone()
        if last:
            t[0] = (t[0] + 1) % V
    elif base == "target_out_of_range_one_rank":
        t = t.clone()
        if mid:
            t[1] = V
    elif base == "target_negative":
        t = t.clone()
        t[1] = -5
    elif base == "target_float":
        t = t.float()
    elif base == "sample_weight_differs":
        kw["sample_weight"] = s + (1e-6 if last else 0.0)
    elif base == "sample_weight_on_some":
        kw["sample_weight"] = s if last else None
    elif base == "sample_weight_shape":
        kw["sample_weight"] = s[:3]
    elif base == "sample_weight_int":
        kw["sample_weight"] = torch.ones(N, dtype=torch.int64)
    elif base == "vocab_size_wrong":
        kw["vocab_size"] = V + 1
    elif base == "vocab_size_differs":
        kw["vocab_size"] = V + 1 if mid else V
    elif base == "dtype_differs":
        xs = xs.double() if last else xs
    elif base == "rows_differ":
        if mid:
            xs, t = xs[:3], t[:3]
    elif base == "label_smoothing_out_of_range":
        kw["label_smoothing"] = 1.5
    elif base == "reduction_unknown":
        kw["reduction"] = "avg"
    elif base == "z_loss_negative":
        kw["z_loss"] = -1.0
    elif base == "z_loss_nan":
        kw["z_loss"] = float("nan")
    elif base == "softcap_zero":
        kw["softcap"] = 0.0
    elif base == "softcap_inf":
        kw["softcap"] = INF
    elif base == "softcap_huge":
        kw["softcap"] = 1e39
    elif base == "logits_int":
        xs = (xs * 10).long()
    elif base == "logits_3d":
        xs, t = xs[None], t[None]
    elif base == "impl_unknown":
        kw["impl"] = "cuda"
    elif base == "impl_triton_float64":
        kw["impl"], xs = "triton", xs.double()
    elif base == "chunk_zero":
        kw["chunk_size"] = 0
    if name.startswith("ts_"):
        ct.vocab_parallel_token_stats(xs, t, **kw)
    elif name.startswith(("lce_", "lts_")):
        hh, ws = h.clone(), w[a:b].clone()
        if base == "hidden_requires_grad_some":
            hh.requires_grad_(rank == 0)
            ws.requires_grad_()
        elif base == "weight_dtype":
            ws = ws.double()
        elif base == "hidden_width_differs" and mid:
            hh = torch.randn(N, D - 1)
        f = (
            ct.vocab_parallel_linear_cross_entropy
            if name.startswith("lce_")
            else ct.vocab_parallel_linear_token_stats
        )
        out = f(hh, ws, t, **kw)
        if hh.requires_grad:  # pragma: no cover - only reached if the check is missing
            (out if isinstance(out, Tensor) else out.lse).sum().backward()
    else:
        ct.vocab_parallel_cross_entropy(xs, t, **kw)


def _bad(world: int, rank: int) -> dict[str, Any]:
    import torch.distributed as dist

    out = {}
    for name, _ in BAD:
        try:
            _bad_call(name, world, rank)
            out[name] = "no error"
        except Exception as exc:
            out[name] = f"{type(exc).__name__}: {exc}"
        dist.barrier()  # the ranks are still in step after the error
    return out


@pytest.mark.slow
def test_bad_input_same_error_on_every_rank(tmp_path: Path) -> None:
    """Bad input on one rank (or every rank) of a 3-rank group, [4, 0, 5] shards: every rank
    raises, the same TypeError/ValueError, naming the argument; a barrier after each case
    shows that no rank was left waiting in a collective."""
    ranks = _spawn("bad", 3, tmp_path)
    failures = []
    for name, word in BAD:
        msgs = [r[name] for r in ranks]
        if len(set(msgs)) != 1:
            failures.append(f"{name}: messages differ {msgs}")
        elif msgs[0] == "no error" or not msgs[0].startswith(("TypeError", "ValueError")):
            failures.append(f"{name}: {msgs[0]}")
        elif word not in msgs[0]:
            failures.append(f"{name}: message does not name {word!r}: {msgs[0]}")
    assert not failures, "\n".join(failures)


# =============================================================================================
# Found defects (fixed): minimal reproducers, a shard of no class on one rank
# =============================================================================================


@pytest.fixture(scope="module")
def defect_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """Every rank's results of the defect reproducers (two 2-rank groups: a reproducer that
    leaves its group out of step runs last in it)."""
    first = _spawn("defects_a", 2, tmp_path_factory.mktemp("defects_a"))
    second = _spawn("defects_b", 2, tmp_path_factory.mktemp("defects_b"))
    return [{**a, **b} for a, b in zip(first, second, strict=True)]


def _defect_fp16_weight_empty_shard(world: int, rank: int) -> dict[str, Any]:
    """float16 logits, class weights, shards [0, 5]: backward on the empty rank."""
    import crossentropy.torch as ct

    widths = [0, 5]
    a, b = sum(widths[:rank]), sum(widths[: rank + 1])
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).half()
    xs = x[:, a:b].clone().requires_grad_()
    weight = torch.linspace(0.5, 1.5, 5).half()[a:b]
    try:
        loss = ct.vocab_parallel_cross_entropy(xs, torch.tensor([1, 2, 3]), weight=weight)
        loss.backward()
        return {"loss": loss.item(), "grad": xs.grad.tolist()}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _defect_linear_d0_empty_shard(world: int, rank: int) -> dict[str, Any]:
    """hidden with D = 0 features, shards [0, 5]: backward on the empty rank."""
    import crossentropy.torch as ct

    widths = [0, 5]
    a, b = sum(widths[:rank]), sum(widths[: rank + 1])
    h = torch.zeros(3, 0, dtype=F64, requires_grad=True)
    w = torch.zeros(5, 0, dtype=F64)[a:b].clone().requires_grad_()
    bias = torch.arange(5, dtype=F64)[a:b].clone().requires_grad_()
    try:
        loss = ct.vocab_parallel_linear_cross_entropy(h, w, torch.tensor([1, 2, 3]), bias)
        loss.backward()
        return {"loss": loss.item(), "grad": bias.grad.tolist()}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


@pytest.mark.slow
def test_fp16_class_weight_with_empty_shard(defect_ranks: list[dict[str, Any]]) -> None:
    ranks = [r["fp16_weight"] for r in defect_ranks]
    assert all("error" not in r for r in ranks), [r for r in ranks]
    x = torch.randn(3, 5, generator=torch.Generator().manual_seed(0)).half().double()
    x.requires_grad_()
    w = torch.linspace(0.5, 1.5, 5).half().double()
    F.cross_entropy(x, torch.tensor([1, 2, 3]), w).backward()
    grad = np.concatenate([np.asarray(r["grad"]).reshape(3, -1) for r in ranks], 1)
    np.testing.assert_allclose(grad, x.grad.numpy(), atol=2e-3)


@pytest.mark.slow
def test_linear_zero_features_with_empty_shard(defect_ranks: list[dict[str, Any]]) -> None:
    ranks = [r["linear_d0"] for r in defect_ranks]
    assert all("error" not in r for r in ranks), [r for r in ranks]
    bias = torch.arange(5, dtype=F64).requires_grad_()
    ref = F.cross_entropy(bias.expand(3, 5), torch.tensor([1, 2, 3]))
    ref.backward()
    assert all(abs(r["loss"] - ref.item()) < 1e-12 for r in ranks)
    grad = np.concatenate([np.asarray(r["grad"]) for r in ranks])
    np.testing.assert_allclose(grad, bias.grad.numpy(), atol=1e-12)


def _defect_linear_fp16_weight_empty_shard(world: int, rank: int) -> dict[str, Any]:
    """float16 linear cross-entropy with class weights, shards [0, 5] (also float32 inputs
    with class weights under fp16 autocast): backward on the empty rank, before the all-reduce
    of d hidden that the other rank is waiting in."""
    import crossentropy.torch as ct

    widths = [0, 5]
    a, b = sum(widths[:rank]), sum(widths[: rank + 1])
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 2, generator=g).half().requires_grad_()
    w = torch.randn(5, 2, generator=g).half()[a:b].clone().requires_grad_()
    cw = torch.linspace(0.5, 1.5, 5).half()[a:b]
    try:
        loss = ct.vocab_parallel_linear_cross_entropy(
            h, w, torch.tensor([1, 2, 3]), class_weight=cw
        )
        loss.backward()
        return {"loss": loss.item(), "grad": h.grad.tolist()}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"[:300]}


@pytest.mark.slow
def test_linear_fp16_class_weight_with_empty_shard(
    defect_ranks: list[dict[str, Any]],
) -> None:
    ranks = [r["linear_fp16_weight"] for r in defect_ranks]
    assert all("error" not in r for r in ranks), [r for r in ranks]
    g = torch.Generator().manual_seed(0)
    h = torch.randn(3, 2, generator=g).half().double().requires_grad_()
    w = torch.randn(5, 2, generator=g).half().double()
    cw = torch.linspace(0.5, 1.5, 5).half().double()
    ref = F.cross_entropy(h @ w.T, torch.tensor([1, 2, 3]), cw)
    ref.backward()
    for r in ranks:
        assert abs(r["loss"] - ref.item()) < 2e-3
        np.testing.assert_allclose(np.asarray(r["grad"]), h.grad.numpy(), atol=2e-3)


def _defects_a(world: int, rank: int) -> dict[str, Any]:
    """Two reproducers in one group, the one that leaves it out of step last."""
    return {
        "fp16_weight": _defect_fp16_weight_empty_shard(world, rank),
        "linear_fp16_weight": _defect_linear_fp16_weight_empty_shard(world, rank),
    }


SCENARIOS = {
    "cases": _run_cases,
    "modes": _modes,
    "bad": _bad,
    "defects_a": _defects_a,
    "defects_b": lambda w, r: {"linear_d0": _defect_linear_d0_empty_shard(w, r)},
}


# =============================================================================================
# Single process: reduction="none" and forward-only paths through the same passes, against F
# =============================================================================================


def _impls() -> list[str]:
    return ["torch", "triton"] if _triton_ok() else ["torch"]


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("dtype", ["float64", "float32", "float16", "bfloat16"])
def test_single_process_none_and_no_grad_match_F(impl: str, dtype: str, force_fused: None) -> None:
    """cross_entropy(reduction="none") with and without grad, linear_cross_entropy and the token
    statistics under no_grad, on the fused passes: equal to F.cross_entropy / log_softmax in
    float64 on the same rounded inputs (an ignored row, weights with a zero and a negative,
    label smoothing)."""
    import crossentropy.torch as ct

    if impl == "triton" and dtype == "float64":
        pytest.skip("Triton takes float16, bfloat16 and float32")
    dt = DTYPES[dtype]
    g = torch.Generator().manual_seed(3)
    x = (3 * torch.randn(N, V, generator=g, dtype=F64)).to(dt)
    t = torch.randint(0, V, (N,), generator=g)
    t[2] = -100
    w = (0.2 + torch.rand(V, generator=g, dtype=F64)).to(dt)
    w[0], w[5] = 0.0, -0.5
    h = torch.randn(N, D, generator=g, dtype=F64).to(dt)
    W = torch.randn(V, D, generator=g, dtype=F64).to(dt)
    ref = F.cross_entropy(x.double(), t, w.double(), reduction="none", label_smoothing=0.1)
    up = torch.randn(N, generator=g, dtype=F64)
    tol = RTOL[dtype] * max(1.0, float(ref.abs().max()))
    with torch.no_grad():
        ours = ct.cross_entropy(x, t, w, reduction="none", label_smoothing=0.1, impl=impl)
        lin = ct.linear_cross_entropy(h, W, t, reduction="none", impl=impl, chunk_size=2)
        stats = ct.token_stats(x, t, impl=impl)
    assert ours.dtype == dt
    torch.testing.assert_close(ours.double(), ref, atol=tol, rtol=0)
    z = h.double() @ W.double().T
    lin_ref = F.cross_entropy(z, t, reduction="none")
    torch.testing.assert_close(
        lin.double(), lin_ref, atol=RTOL[dtype] * max(1.0, float(lin_ref.abs().max())), rtol=0
    )
    logp = x.double().log_softmax(-1)
    kept = t != -100
    lp = torch.where(kept, logp.gather(1, t.clamp(min=0)[:, None])[:, 0], 0.0)
    torch.testing.assert_close(stats.logprob.double(), lp, atol=tol, rtol=0)
    torch.testing.assert_close(stats.lse.double(), x.double().logsumexp(-1), atol=tol, rtol=0)
    # with grad: reduction="none" backward under an upstream gradient
    xg = x.clone().requires_grad_()
    xr = x.double().requires_grad_()
    ct.cross_entropy(xg, t, w, reduction="none", label_smoothing=0.1, impl=impl).backward(up.to(dt))
    F.cross_entropy(xr, t, w.double(), reduction="none", label_smoothing=0.1).backward(up)
    gtol = RTOL[dtype] * max(1.0, float(xr.grad.abs().max()))
    torch.testing.assert_close(xg.grad.double(), xr.grad, atol=gtol, rtol=0)


def test_single_rank_hashstore_group_matches_single_process(force_fused: None) -> None:
    """A one-rank group made in this process (HashStore): the vocabulary-parallel loss and
    token statistics are bit for bit the single-process ones (the same Function and kernels),
    the loss gradient within one float32 ulp of its largest entry."""
    import torch.distributed as dist

    import crossentropy.torch as ct

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        g = torch.Generator().manual_seed(11)
        x = 3 * torch.randn(N, V, generator=g)
        t = torch.randint(0, V, (N,), generator=g)
        t[1] = -100
        s = torch.randn(N, generator=g)
        kw = {"label_smoothing": 0.1, "z_loss": 0.01, "softcap": 4.0, "sample_weight": s}
        for red in ("mean", "sum", "none"):
            a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
            la = ct.vocab_parallel_cross_entropy(a, t, reduction=red, **kw)
            lb = ct.cross_entropy(b, t, reduction=red, **kw)
            assert torch.equal(la, lb), red
            up = torch.linspace(0.5, 2, la.numel()).reshape(la.shape)
            (la * up).sum().backward()
            (lb * up).sum().backward()
            # the single-process mean/sum gradient is made during the forward, ours in backward:
            # within a float32 ulp, not bit for bit
            torch.testing.assert_close(
                a.grad, b.grad, rtol=0, atol=2e-7 * float(b.grad.abs().max())
            )
        oa = ct.vocab_parallel_token_stats(x, t, softcap=4.0)
        ob = ct.token_stats(x, t, softcap=4.0)
        for k in (*STATS, "argmax"):
            assert torch.equal(getattr(oa, k), getattr(ob, k)), k
    finally:
        dist.destroy_process_group()


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(arg) for arg in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
