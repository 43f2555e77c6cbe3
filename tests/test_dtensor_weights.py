"""DTensor output-layer weights on the linear forms: an FSDP2-sharded weight (each rank its own
rows), the 2-D FSDP2 x tensor-parallel weight, and the refusal of an FSDP2-sharded weight met
by a plain ``hidden`` whose rows differ across ranks (it would otherwise mix different rows'
statistics). Each against the single-process call on the whole tensors (float64).

Each group is spawned (``tests/_spawn.py``); this file is also the worker: ``python
tests/test_dtensor_weights.py --worker RANK WORLD PORT OUT``.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Any

import pytest

from _spawn import finish_worker, init_group, spawn_group

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.tensor")

N, C, D = 9, 13, 5  # rows (uneven over 2 and 4 ranks), classes (uneven), hidden size
TOL = 1e-12
OPTIONS: dict[str, dict[str, Any]] = {
    "mean": {},
    "all-mean": {
        "class_weight": "w",
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 2.5,
        "sample_weight": "s",
    },
    "weighted-sum": {"class_weight": "w", "reduction": "sum"},
    "none": {"reduction": "none", "label_smoothing": 0.05},
    "num_items": {"num_items": 5.0},
}


def _problem() -> dict[str, Any]:
    g = torch.Generator().manual_seed(11)
    f64 = torch.float64
    t = torch.randint(0, C, (N,), generator=g)
    t[[1, 6]] = -100
    return {
        "t": t,
        "w": torch.rand(C, generator=g, dtype=f64) + 0.5,
        "s": torch.rand(N, generator=g, dtype=f64) + 0.5,
        "h": torch.randn(N, D, generator=g, dtype=f64),
        "W": torch.randn(C, D, generator=g, dtype=f64),
        "b": torch.randn(C, generator=g, dtype=f64) * 0.1,
        "up": torch.randn(N, generator=g, dtype=f64),
    }


def _kw(opts: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    return {k: p[v] if isinstance(v, str) and v in p else v for k, v in opts.items()}


def _err(a: Any, b: Any) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _full(x: Any) -> Any:
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def _compare(
    out: dict[str, float], tag: str, got: Any, ref: Any, grads: list[tuple[str, Any, Any]]
) -> None:
    out[f"{tag}/loss"] = _err(_full(got), ref)
    for name, a, b in grads:
        out[f"{tag}/d_{name}"] = _err(_full(a), b)


def _reference(p: dict[str, Any], kw: dict[str, Any]) -> tuple[Any, ...]:
    import crossentropy.torch as ct

    h, W, b = (p[k].clone().requires_grad_() for k in ("h", "W", "b"))
    ref = ct.linear_cross_entropy(h, W, p["t"], b, **kw)
    (ref * p["up"]).sum().backward() if ref.dim() else ref.backward()
    return ref.detach(), h.grad, W.grad, b.grad


def _loss_of(got: Any, p: dict[str, Any], mesh: Any, rows: list[Any]) -> Any:
    """The scalar to differentiate: the loss, or ``Σ up · loss`` for ``reduction="none"``."""
    from torch.distributed.tensor import distribute_tensor

    if got.dim() == 0:
        return got
    return (got * distribute_tensor(p["up"], mesh, rows)).sum()


def _fsdp_cases(mesh: Any) -> dict[str, float]:
    """1-D mesh: weight and bias Shard(0) as FSDP2 stores them, hidden Shard(0) (each rank its
    own rows); the target given whole, as this rank's rows, or as a DTensor."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem()
    out: dict[str, float] = {}
    for tag, opts in OPTIONS.items():
        kw = _kw(opts, p)
        ref, gh, gw, gb = _reference(p, kw)
        for form in ("whole", "local", "dtensor"):
            hd = distribute_tensor(p["h"], mesh, [Shard(0)]).requires_grad_()
            Wd = distribute_tensor(p["W"], mesh, [Shard(0)]).requires_grad_()
            bd = distribute_tensor(p["b"], mesh, [Shard(0)]).requires_grad_()
            t = {
                "whole": p["t"],
                "local": distribute_tensor(p["t"], mesh, [Shard(0)]).to_local(),
                "dtensor": distribute_tensor(p["t"], mesh, [Shard(0)]),
            }[form]
            got = ct.linear_cross_entropy(hd, Wd, t, bd, **kw)
            _loss_of(got, p, mesh, [Shard(0)]).backward()
            grads = [("hidden", hd.grad, gh), ("weight", Wd.grad, gw), ("bias", bd.grad, gb)]
            _compare(out, f"fsdp/{tag}/{form}", got, ref, grads)
    # linear_token_stats over the same layout
    h2, W2 = (p[k].clone().requires_grad_() for k in ("h", "W"))
    ref2 = ct.linear_token_stats(h2, W2, p["t"], temperature=0.8)
    (p["up"] * ref2.logprob + ref2.entropy).sum().backward()
    hd2 = distribute_tensor(p["h"], mesh, [Shard(0)]).requires_grad_()
    Wd2 = distribute_tensor(p["W"], mesh, [Shard(0)]).requires_grad_()
    got2 = ct.linear_token_stats(hd2, Wd2, p["t"], temperature=0.8)
    up = distribute_tensor(p["up"], mesh, [Shard(0)])
    (up * got2.logprob + got2.entropy).sum().backward()
    out["fsdp/stats/logprob"] = _err(got2.logprob.full_tensor(), ref2.logprob)
    out["fsdp/stats/entropy"] = _err(got2.entropy.full_tensor(), ref2.entropy)
    out["fsdp/stats/d_hidden"] = _err(hd2.grad.full_tensor(), h2.grad)
    out["fsdp/stats/d_weight"] = _err(Wd2.grad.full_tensor(), W2.grad)
    return out


def _fsdp_module_case(mesh: Any) -> dict[str, float]:
    """A real ``fully_shard`` output layer, its sharded weight used outside the forward."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem()
    layer = torch.nn.Linear(D, C, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(p["W"])
        layer.bias.copy_(p["b"])
    fully_shard(layer, mesh=mesh)
    ref, gh, gw, gb = _reference(p, {"label_smoothing": 0.1})
    hd = distribute_tensor(p["h"], mesh, [Shard(0)]).requires_grad_()
    got = ct.linear_cross_entropy(hd, layer.weight, p["t"], layer.bias, label_smoothing=0.1)
    got.backward()
    out: dict[str, float] = {}
    grads = [("hidden", hd.grad, gh), ("weight", layer.weight.grad, gw)]
    grads.append(("bias", layer.bias.grad, gb))
    _compare(out, "fully_shard", got, ref, grads)
    return out


def _messages(mesh: Any) -> dict[str, str]:
    """Calls that must fail with the same message on every rank."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem()
    rank = mesh.get_rank()
    own = distribute_tensor(p["h"], mesh, [Shard(0)]).to_local()
    own_t = distribute_tensor(p["t"], mesh, [Shard(0)]).to_local()
    cases = {
        # an FSDP2-sharded weight with each rank's own rows as a plain tensor (same shape on
        # both ranks here, so nothing but the values tells them apart)
        "plain-own-rows": lambda: ct.linear_cross_entropy(
            own[:4] + rank, distribute_tensor(p["W"], mesh, [Shard(0)]), own_t[:4]
        ),
        "plain-own-rows-stats": lambda: ct.linear_token_stats(
            own[:4] + rank, distribute_tensor(p["W"], mesh, [Shard(0)]), own_t[:4]
        ),
        "hidden-sharded-over-features": lambda: ct.linear_cross_entropy(
            distribute_tensor(p["h"], mesh, [Shard(1)]),
            distribute_tensor(p["W"], mesh, [Shard(0)]),
            p["t"],
        ),
        "weight-sharded-over-features": lambda: ct.linear_cross_entropy(
            p["h"], distribute_tensor(p["W"], mesh, [Shard(1)]), p["t"]
        ),
        "bias-placed-unlike-weight": lambda: ct.linear_cross_entropy(
            p["h"],
            distribute_tensor(p["W"], mesh, [Shard(0)]),
            p["t"],
            distribute_tensor(p["b"], mesh, [Shard(0)]).full_tensor(),
        ),
    }
    got: dict[str, str] = {}
    for name, call in cases.items():
        try:
            call()
            got[name] = "no error"
        except Exception as exc:
            got[name] = f"{type(exc).__name__}: {exc}"
    return got


def _two_d_cases(mesh: Any) -> dict[str, float]:
    """2 x 2 (dp, tp) mesh: a ColwiseParallel output layer under ``fully_shard`` over dp, its
    weight used outside the forward, hidden (Shard(0), Replicate()); and the same layout built
    with ``distribute_tensor``."""
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    import crossentropy.torch as ct

    p = _problem()
    out: dict[str, float] = {}
    layer = torch.nn.Linear(D, C, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(p["W"])
        layer.bias.copy_(p["b"])
    parallelize_module(layer, mesh["tp"], ColwiseParallel())
    fully_shard(layer, mesh=mesh["dp"])
    out["2d/placements-2d"] = float(len(layer.weight.placements) != 2)
    for tag, opts in (("all-mean", OPTIONS["all-mean"]), ("none", OPTIONS["none"])):
        kw = _kw(opts, p)
        ref, gh, gw, gb = _reference(p, kw)
        for w in layer.parameters():
            w.grad = None
        hd = distribute_tensor(p["h"], mesh, [Shard(0), Replicate()]).requires_grad_()
        got = ct.linear_cross_entropy(hd, layer.weight, p["t"], layer.bias, **kw)
        _loss_of(got, p, mesh, [Shard(0), Replicate()]).backward()
        grads = [("hidden", hd.grad, gh), ("weight", layer.weight.grad, gw)]
        grads.append(("bias", layer.bias.grad, gb))
        _compare(out, f"2d/fully_shard/{tag}", got, ref, grads)
        Wd = distribute_tensor(p["W"], mesh, [Shard(0), Shard(0)]).requires_grad_()
        hd = distribute_tensor(p["h"], mesh, [Shard(0), Replicate()]).requires_grad_()
        got = ct.linear_cross_entropy(hd, Wd, p["t"], **{**kw})
        ref2 = ct.linear_cross_entropy(p["h"], p["W"], p["t"], **kw)
        out[f"2d/distribute/{tag}/loss"] = _err(_full(got), ref2)
    h2, W2 = (p[k].clone().requires_grad_() for k in ("h", "W"))
    ref3 = ct.linear_token_stats(h2, W2, p["t"])
    (p["up"] * ref3.logprob + ref3.entropy).sum().backward()
    Wd3 = distribute_tensor(p["W"], mesh, [Shard(0), Shard(0)]).requires_grad_()
    hd3 = distribute_tensor(p["h"], mesh, [Shard(0), Replicate()]).requires_grad_()
    got3 = ct.linear_token_stats(hd3, Wd3, p["t"])
    up = distribute_tensor(p["up"], mesh, [Shard(0), Replicate()])
    (up * got3.logprob + got3.entropy).sum().backward()
    out["2d/stats/logprob"] = _err(got3.logprob.full_tensor(), ref3.logprob)
    out["2d/stats/d_hidden"] = _err(hd3.grad.full_tensor(), h2.grad)
    out["2d/stats/d_weight"] = _err(Wd3.grad.full_tensor(), W2.grad)
    return out


def _run(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh

    res: dict[str, Any] = {"rank": rank}
    try:
        if world == 2:
            mesh = init_device_mesh("cpu", (2,))
            res["errors"] = _fsdp_cases(mesh) | _fsdp_module_case(mesh)
            res["messages"] = _messages(mesh)
        else:
            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            res["errors"] = _two_d_cases(mesh)
    except Exception:
        res["crash"] = traceback.format_exc()
    return res


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    init_group(rank, world, port, 60.0)
    finish_worker(out, _run(rank, world))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_group(__file__, 2, tmp_path_factory.mktemp("dtw2"), 240.0)


@pytest.mark.slow
def test_fsdp_sharded_weight_matches_the_whole_call(two: list[dict[str, Any]]) -> None:
    for res in two:
        assert "crash" not in res, res.get("crash")
        bad = {k: v for k, v in res["errors"].items() if not v <= TOL}
        assert not bad, (res["rank"], bad)
        assert len(res["errors"]) == len(OPTIONS) * 3 * 4 + 4 + 4


@pytest.mark.slow
def test_refusals_are_clear_and_the_same_on_every_rank(two: list[dict[str, Any]]) -> None:
    msgs = [res["messages"] for res in two]
    assert all("crash" not in res for res in two), [res.get("crash") for res in two]
    assert msgs[0] == msgs[1]
    m = msgs[0]
    for key in ("plain-own-rows", "plain-own-rows-stats"):
        assert m[key].startswith("ValueError"), m[key]
        assert "hidden" in m[key] and "Shard(0)" in m[key] and "FSDP2" in m[key], m[key]
    assert "hidden" in m["hidden-sharded-over-features"], m
    assert "weight" in m["weight-sharded-over-features"], m
    assert "bias" in m["bias-placed-unlike-weight"], m


@pytest.mark.slow
def test_two_by_two_fsdp_times_tensor_parallel(tmp_path: Path) -> None:
    for res in spawn_group(__file__, 4, tmp_path, 300.0):
        assert "crash" not in res, res.get("crash")
        bad = {k: v for k, v in res["errors"].items() if not v <= TOL}
        assert not bad, (res["rank"], bad)
        assert len(res["errors"]) == 1 + 2 * 5 + 3


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(v) for v in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
