"""DTensor inputs: logits sharded over the classes, the rows or both (1-D and 2 x 2 meshes), and
a ``ColwiseParallel``-style output-layer weight, against the single-process functions on the
whole tensors (float64), with every option; ``loss_parallel``'s known failures side by side.

Each group is spawned (``tests/_spawn.py``); this file is also the worker: ``python
tests/test_dtensor.py --worker RANK WORLD PORT OUT``.
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

N, C, D = 7, 13, 5  # rows (uneven over 2 ranks), classes (uneven), hidden size
TOL = 1e-12
OPTIONS = {
    "defaults": {},
    "weights-ignore": {"weighted": True, "ignore": True},
    "all": {
        "weighted": True,
        "ignore": True,
        "label_smoothing": 0.1,
        "z_loss": 1e-3,
        "softcap": 2.5,
        "sampled": True,
    },
}


def _problem(seed: int) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    t = torch.randint(0, C, (N,), generator=g)
    t[[1, 4]] = -100
    return {
        "x": torch.randn(N, C, generator=g, dtype=f64) * 3,
        "t": t,
        "w": torch.rand(C, generator=g, dtype=f64) + 0.5,
        "s": torch.rand(N, generator=g, dtype=f64) + 0.5,
        "h": torch.randn(N, D, generator=g, dtype=f64),
        "W": torch.randn(C, D, generator=g, dtype=f64),
        "b": torch.randn(C, generator=g, dtype=f64) * 0.1,
        "p": torch.softmax(torch.randn(N, C, generator=g, dtype=f64), -1),
        "up": torch.randn(N, generator=g, dtype=f64),
    }


def _kwargs(opts: dict[str, Any], p: dict[str, Any]) -> dict[str, Any]:
    kw: dict[str, Any] = {}
    if opts.get("weighted"):
        kw["weight"] = p["w"]
    for k in ("label_smoothing", "z_loss", "softcap"):
        if k in opts:
            kw[k] = opts[k]
    if opts.get("sampled"):
        kw["sample_weight"] = p["s"]
    return kw


def _target(opts: dict[str, Any], p: dict[str, Any]) -> Any:
    return p["t"] if opts.get("ignore") else p["t"].clamp(min=0)


def _err(a: Any, b: Any) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


def _loss_cases(mesh: Any, placements: list[Any], tag: str) -> dict[str, float]:
    """Loss and logits gradient of DTensor logits against the whole-tensor call."""
    from torch.distributed.tensor import distribute_tensor

    import crossentropy.torch as ct

    out: dict[str, float] = {}
    p = _problem(1)
    for name, opts in OPTIONS.items():
        for red in ("mean", "sum", "none"):
            kw = _kwargs(opts, p)
            t = _target(opts, p)
            x = p["x"].clone().requires_grad_()
            ref = ct.cross_entropy(x, t, reduction=red, **kw)
            (ref if red != "none" else ref * p["up"]).sum().backward()
            dx = distribute_tensor(p["x"], mesh, placements).requires_grad_()
            got = ct.cross_entropy(dx, t, reduction=red, **kw)
            up = p["up"] if red == "none" else None
            value = got.full_tensor()
            if up is not None:
                upd = distribute_tensor(up, mesh, list(got.placements))
                (got * upd).sum().backward()
            else:
                got.backward()
            out[f"{tag}/{name}/{red}/loss"] = _err(value, ref)
            out[f"{tag}/{name}/{red}/grad"] = _err(dx.grad.full_tensor(), x.grad)
    return out


def _stats_cases(mesh: Any, placements: list[Any], tag: str) -> dict[str, float]:
    from torch.distributed.tensor import distribute_tensor

    import crossentropy.torch as ct

    p = _problem(2)
    x = p["x"].clone().requires_grad_()
    ref = ct.token_stats(x, p["t"], softcap=3.0, temperature=0.7)
    (p["up"] * ref.logprob - 0.1 * ref.entropy).sum().backward()
    dx = distribute_tensor(p["x"], mesh, placements).requires_grad_()
    got = ct.token_stats(dx, p["t"], softcap=3.0, temperature=0.7)
    upd = distribute_tensor(p["up"], mesh, list(got.logprob.placements))
    (upd * got.logprob - 0.1 * got.entropy).sum().backward()
    out = {
        f"{tag}/stats/{k}": _err(getattr(got, k).full_tensor(), getattr(ref, k))
        for k in ("logprob", "entropy", "lse")
    }
    out[f"{tag}/stats/argmax"] = float(not torch.equal(got.argmax.full_tensor(), ref.argmax))
    out[f"{tag}/stats/grad"] = _err(dx.grad.full_tensor(), x.grad)
    return out


def _linear_cases(mesh: Any) -> dict[str, float]:
    """A ColwiseParallel output layer: weight and bias Shard(0), hidden replicated."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem(3)
    out: dict[str, float] = {}
    kw = {"class_weight": p["w"], "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 2.5}
    h, W, b = (p[k].clone().requires_grad_() for k in ("h", "W", "b"))
    ref = ct.linear_cross_entropy(h, W, p["t"], b, **kw)
    ref.backward()
    hd = p["h"].clone().requires_grad_()
    Wd = distribute_tensor(p["W"], mesh, [Shard(0)]).requires_grad_()
    bd = distribute_tensor(p["b"], mesh, [Shard(0)]).requires_grad_()
    got = ct.linear_cross_entropy(hd, Wd, p["t"], bd, **kw)
    got.backward()
    out["linear/loss"] = _err(got.full_tensor(), ref)
    out["linear/d_hidden"] = _err(hd.grad, h.grad)
    out["linear/d_weight"] = _err(Wd.grad.full_tensor(), W.grad)
    out["linear/d_bias"] = _err(bd.grad.full_tensor(), b.grad)
    h2, W2 = (p[k].clone().requires_grad_() for k in ("h", "W"))
    ref2 = ct.linear_token_stats(h2, W2, p["t"], temperature=0.8)
    (p["up"] * ref2.logprob + ref2.entropy).sum().backward()
    hd2 = p["h"].clone().requires_grad_()
    Wd2 = distribute_tensor(p["W"], mesh, [Shard(0)]).requires_grad_()
    got2 = ct.linear_token_stats(hd2, Wd2, p["t"], temperature=0.8)
    (p["up"] * got2.logprob.full_tensor() + got2.entropy.full_tensor()).sum().backward()
    out["linear/stats"] = _err(got2.logprob.full_tensor(), ref2.logprob)
    out["linear/stats_d_hidden"] = _err(hd2.grad, h2.grad)
    out["linear/stats_d_weight"] = _err(Wd2.grad.full_tensor(), W2.grad)
    return out


def _compile_cases(mesh: Any) -> dict[str, float]:
    """``torch.compile`` (default mode) of a loss over class-sharded and row-sharded logits:
    Dynamo breaks the graph around the handshake's host reads and runs the rest compiled; the
    loss and the gradient equal the eager call's."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem(5)
    out: dict[str, float] = {}
    for tag, pl in (("classes", [Shard(1)]), ("rows", [Shard(0)])):

        def loss_fn(x: Any, t: Any) -> Any:
            return ct.cross_entropy(x, t, weight=p["w"], label_smoothing=0.1, z_loss=1e-3)

        xe = distribute_tensor(p["x"], mesh, pl).requires_grad_()
        eager = loss_fn(xe, p["t"])
        eager.backward()
        xc = distribute_tensor(p["x"], mesh, pl).requires_grad_()
        got = torch.compile(loss_fn)(xc, p["t"])
        got.backward()
        out[f"compile/{tag}/loss"] = _err(got.full_tensor(), eager.full_tensor())
        out[f"compile/{tag}/grad"] = _err(xc.grad.full_tensor(), xe.grad.full_tensor())
    return out


def _fullgraph_message(mesh: Any) -> str:
    """``torch.compile(fullgraph=True)`` cannot trace the handshake: the error says so."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem(6)

    def loss_fn(x: Any, t: Any) -> Any:
        return ct.cross_entropy(x, t)

    try:
        torch.compile(loss_fn, fullgraph=True)(distribute_tensor(p["x"], mesh, [Shard(1)]), p["t"])
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _errors(mesh: Any) -> dict[str, str]:
    """The messages of calls that must fail, the same on every rank."""
    from torch.distributed.tensor import Shard, distribute_tensor

    import crossentropy.torch as ct

    p = _problem(4)
    got: dict[str, str] = {}
    cases = {
        "prob-target-over-sharded-classes": lambda: ct.cross_entropy(
            distribute_tensor(p["x"], mesh, [Shard(1)]), p["p"]
        ),
        "partial-logits": lambda: ct.cross_entropy(_partial(p["x"], mesh), p["t"]),
        "inplace-backward": lambda: ct.cross_entropy(
            distribute_tensor(p["x"], mesh, [Shard(1)]), p["t"], inplace_backward=True
        ),
        "target-wrong-shape": lambda: ct.cross_entropy(
            distribute_tensor(p["x"], mesh, [Shard(0)]), p["t"][:5]
        ),
        # one rank's own rows hold a class out of range: every rank raises, none waits
        "local-bad-on-rank-1": lambda: ct.cross_entropy(
            distribute_tensor(p["x"], mesh, [Shard(0)]),
            _local_rows(p["t"], mesh, bad=mesh.get_rank() == 1),
        ),
    }
    for name, call in cases.items():
        try:
            call()
            got[name] = "no error"
        except Exception as exc:
            got[name] = f"{type(exc).__name__}: {exc}"
    return got


def _local_rows(t: Any, mesh: Any, *, bad: bool) -> Any:
    """This rank's rows of ``t`` (Shard(0) over the mesh), one of them out of range if ``bad``."""
    from torch.distributed.tensor import Shard, distribute_tensor

    local = distribute_tensor(t, mesh, [Shard(0)]).to_local().clone()
    if bad:
        local[0] = C + 3
    return local


def _partial(x: Any, mesh: Any) -> Any:
    from torch.distributed.tensor import DTensor, Partial

    return DTensor.from_local(x / mesh.size(), mesh, [Partial()], run_check=False)


def _loss_parallel_cases(mesh: Any) -> dict[str, str]:
    """``loss_parallel`` on the case it breaks (class weights with an ignored target) and on a
    case it supports (plain mean), beside ours."""
    import torch.nn.functional as F
    from torch.distributed.tensor import Shard, distribute_tensor
    from torch.distributed.tensor.parallel import loss_parallel

    import crossentropy.torch as ct

    p = _problem(5)
    got: dict[str, str] = {}
    x = p["x"].clone().requires_grad_()
    ref = F.cross_entropy(x, p["t"], weight=p["w"])
    ref.backward()
    dx = distribute_tensor(p["x"], mesh, [Shard(1)]).requires_grad_()
    try:
        with loss_parallel():
            loss = F.cross_entropy(dx, p["t"], weight=p["w"])
            loss.backward()
        got["loss_parallel/weights-ignore"] = f"ok {_err(dx.grad.full_tensor(), x.grad):.3g}"
    except Exception as exc:
        got["loss_parallel/weights-ignore"] = f"{type(exc).__name__}: {str(exc)[:120]}"
    dy = distribute_tensor(p["x"], mesh, [Shard(1)]).requires_grad_()
    ours = ct.cross_entropy(dy, p["t"], weight=p["w"])
    ours.backward()
    got["ours/weights-ignore"] = (
        f"{_err(ours.full_tensor(), ref):.3g} {_err(dy.grad.full_tensor(), x.grad):.3g}"
    )
    t = p["t"].clamp(min=0)
    x2 = p["x"].clone().requires_grad_()
    ref2 = F.cross_entropy(x2, t)
    ref2.backward()
    d1 = distribute_tensor(p["x"], mesh, [Shard(1)]).requires_grad_()
    with loss_parallel():
        lp = F.cross_entropy(d1, t)
        lp.backward()
    d2 = distribute_tensor(p["x"], mesh, [Shard(1)]).requires_grad_()
    ours2 = ct.cross_entropy(d2, t)
    ours2.backward()
    got["both/plain-mean"] = (
        f"{_err(lp.full_tensor(), ours2.full_tensor()):.3g} "
        f"{_err(d1.grad.full_tensor(), d2.grad.full_tensor()):.3g} "
        f"{_err(ours2.full_tensor(), ref2):.3g}"
    )
    return got


def _run(rank: int, world: int) -> dict[str, Any]:
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard

    res: dict[str, Any] = {"rank": rank}
    try:
        if world == 2:
            mesh = init_device_mesh("cpu", (2,))
            errs: dict[str, float] = {}
            for tag, pl in (("classes", [Shard(1)]), ("rows", [Shard(0)]), ("rep", [Replicate()])):
                errs |= _loss_cases(mesh, pl, tag)
                errs |= _stats_cases(mesh, pl, tag)
            errs |= _linear_cases(mesh)
            errs |= _compile_cases(mesh)
            res["errors"] = errs
            res["messages"] = _errors(mesh)
            res["messages"]["fullgraph"] = _fullgraph_message(mesh)
            res["loss_parallel"] = _loss_parallel_cases(mesh)
        else:
            mesh = init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))
            errs = _loss_cases(mesh, [Shard(0), Shard(1)], "2d")
            errs |= _stats_cases(mesh, [Shard(0), Shard(1)], "2d")
            errs |= _loss_cases(mesh, [Shard(1), Replicate()], "2d-tp-first")
            res["errors"] = errs
    except Exception:
        res["crash"] = traceback.format_exc()
    return res


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    init_group(rank, world, port, 60.0)
    finish_worker(out, _run(rank, world))


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    return spawn_group(__file__, 2, tmp_path_factory.mktemp("dt2"), 240.0)


@pytest.mark.slow
def test_one_d_mesh_matches_the_whole_tensor_call(two: list[dict[str, Any]]) -> None:
    for res in two:
        assert "crash" not in res, res.get("crash")
        bad = {k: v for k, v in res["errors"].items() if not v <= TOL}
        assert not bad, (res["rank"], bad)
        assert len(res["errors"]) >= 3 * (2 * 3 * 3 + 5) + 7 + 4
        assert any(k.startswith("compile/classes") for k in res["errors"])


@pytest.mark.slow
def test_refusals_are_clear_and_the_same_on_every_rank(two: list[dict[str, Any]]) -> None:
    msgs = [res["messages"] for res in two]
    for res in two:  # Dynamo's message names objects by address: checked on each rank
        full = res["messages"].pop("fullgraph")
        assert "crossentropy" in full and "fullgraph=True" in full, full
    assert msgs[0] == msgs[1]
    m = msgs[0]
    assert m["prob-target-over-sharded-classes"].startswith("NotImplementedError"), m
    assert "target" in m["prob-target-over-sharded-classes"]
    assert "input" in m["partial-logits"] and "Partial" in m["partial-logits"], m
    assert "inplace_backward" in m["inplace-backward"], m
    assert "target" in m["target-wrong-shape"], m
    assert m["local-bad-on-rank-1"].endswith("on rank 1"), m


@pytest.mark.slow
def test_beside_loss_parallel(two: list[dict[str, Any]]) -> None:
    """Where ``loss_parallel`` supports the call, the same numbers; where it breaks (class
    weights meeting an ignored target), ours is right."""
    for res in two:
        lp = res["loss_parallel"]
        loss_err, grad_err = (float(v) for v in lp["ours/weights-ignore"].split())
        assert loss_err <= TOL and grad_err <= TOL, lp
        a, b, c = (float(v) for v in lp["both/plain-mean"].split())
        assert a <= TOL and b <= TOL and c <= TOL, lp


@pytest.mark.slow
def test_two_by_two_mesh(tmp_path: Path) -> None:
    for res in spawn_group(__file__, 4, tmp_path, 300.0):
        assert "crash" not in res, res.get("crash")
        bad = {k: v for k, v in res["errors"].items() if not v <= TOL}
        assert not bad, (res["rank"], bad)


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(v) for v in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
