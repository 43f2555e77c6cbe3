"""Hostile tests of the DTensor inputs of ``cross_entropy``, ``token_stats`` and the linear
forms (``docs/guide/distributed.rst``, "DTensor inputs"), on gloo groups of 2 and 4 ranks,
against the single-process functions and ``torch.nn.functional`` on the whole tensors (float64).

Every case runs on every rank, followed by a barrier bounded by the group's timeout (a rank
that hangs fails the case instead of the run). A case returns ``"ok"`` or the message of the
error it expects; the parent compares the ranks. This file is also the worker: ``python
tests/test_hostile_dtensor.py --worker RANK WORLD PORT OUT``.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from _spawn import finish_worker, init_group, spawn_group

torch = pytest.importorskip("torch")
pytest.importorskip("torch.distributed.tensor")

GROUP_TIMEOUT_S = 25.0
TOL64 = 1e-10

# spawn groups: "WORLD" or "WORLD-NAME" (a case that may kill its group runs in its own)
CASES: dict[str, dict[str, Callable[[Any], str]]] = {}


def case(*groups: str) -> Callable[[Callable[[Any], str]], Callable[[Any], str]]:
    def deco(fn: Callable[[Any], str]) -> Callable[[Any], str]:
        for grp in groups:
            CASES.setdefault(grp, {})[fn.__name__.removeprefix("c_")] = fn
        return fn

    return deco


# ---------------------------------------------------------------------------- helpers


def _ct() -> Any:
    import crossentropy.torch as ct

    return ct


def _dist(x: Any, mesh: Any, placements: Any) -> Any:
    from torch.distributed.tensor import distribute_tensor

    return distribute_tensor(x, mesh, list(placements))


def _S(d: int) -> Any:
    from torch.distributed.tensor import Shard

    return Shard(d)


def _R() -> Any:
    from torch.distributed.tensor import Replicate

    return Replicate()


def _problem(seed: int, n: int = 7, c: int = 13, extra: tuple[int, ...] = ()) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    t = torch.randint(0, c, (n, *extra), generator=g)
    t.view(-1)[1::3] = -100
    w = torch.rand(c, generator=g, dtype=f64) + 0.5
    w[1] = 0.0
    return {
        "x": torch.randn(n, c, *extra, generator=g, dtype=f64) * 3,
        "t": t,
        "w": w,
        "s": torch.rand(n, *extra, generator=g, dtype=f64) + 0.5,
        "p": torch.softmax(torch.randn(n, c, *extra, generator=g, dtype=f64), 1),
        "up": torch.randn(n, *extra, generator=g, dtype=f64),
    }


def _ref_ce(
    x: Any,
    t: Any,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Any = None,
) -> Any:
    """The documented loss composed from ``torch.nn.functional`` (index or probability
    targets; class dim 1)."""
    import torch.nn.functional as F

    xc = softcap * torch.tanh(x / softcap) if softcap else x
    prob = t.is_floating_point()
    kw = {"weight": weight, "label_smoothing": label_smoothing, "reduction": "none"}
    if not prob:
        kw["ignore_index"] = ignore_index
    per = F.cross_entropy(xc, t, **kw)
    if prob:
        wy = torch.ones_like(per)
        denom = torch.tensor(float(per.numel()), dtype=per.dtype)
    else:
        kept = t != ignore_index
        wsel = weight[t.clamp(min=0)] if weight is not None else torch.ones_like(per)
        wy = torch.where(kept, wsel, torch.zeros_like(wsel))
        denom = wy.sum()
    if z_loss:
        per = per + z_loss * wy * torch.logsumexp(xc, 1) ** 2
    if sample_weight is not None:
        per = per * sample_weight
    if reduction == "none":
        return per
    if reduction == "sum":
        return per.sum()
    return per.sum() / denom


def _err(a: Any, b: Any) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    a, b = a.detach().double(), b.detach().double()
    both_nan = a.isnan() & b.isnan()
    d = (a - b).abs().where(~both_nan, torch.zeros_like(a))
    return float(d.nan_to_num(float("inf")).max())


def _check(errs: dict[str, float], tol: float = TOL64) -> str:
    bad = {k: v for k, v in errs.items() if not v <= tol}
    assert not bad, f"errors above {tol}: {bad}"
    return "ok"


def _full(x: Any) -> Any:
    return x.full_tensor() if hasattr(x, "full_tensor") else x


def _msg(call: Callable[[], Any]) -> str:
    try:
        call()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return "no error"


def _ce_vs_ref(
    mesh: Any,
    placements: Any,
    p: dict[str, Any],
    reductions: tuple[str, ...] = ("mean", "sum", "none"),
    target: Callable[[Any], Any] | None = None,
    **kw: Any,
) -> dict[str, float]:
    """Loss and logits gradient of DTensor logits against the composed reference."""
    ct = _ct()
    out: dict[str, float] = {}
    t = p["t"]
    for red in reductions:
        x = p["x"].clone().requires_grad_()
        ref = _ref_ce(x, t, reduction=red, **kw)
        (ref if red != "none" else ref * p["up"]).sum().backward()
        x0 = p["x"].clone()
        dx = _dist(p["x"], mesh, placements).requires_grad_()
        dkw = dict(kw)
        got = ct.cross_entropy(dx, target(dx) if target else t, reduction=red, **dkw)
        assert type(got).__name__ == "DTensor", type(got)
        value = got.full_tensor()
        if red == "none":
            (got * _dist(p["up"], mesh, got.placements)).sum().backward()
        else:
            got.backward()
        out[f"{red}/loss"] = _err(value, ref)
        out[f"{red}/grad"] = _err(dx.grad.full_tensor(), x.grad)
        out[f"{red}/input-kept"] = _err(dx.full_tensor(), x0)
    return out


ALL_OPTS = {"label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 2.5}


# ------------------------------------------------------- reference self-check (fast test)


def test_reference_matches_single_process_functions() -> None:
    """The composed reference used below agrees with the single-process library."""
    ct = pytest.importorskip("crossentropy.torch")
    p = _problem(0)
    for red in ("mean", "sum", "none"):
        kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
        a = ct.cross_entropy(p["x"], p["t"], reduction=red, **kw)
        b = _ref_ce(p["x"], p["t"], reduction=red, **kw)
        assert _err(a, b) <= TOL64
        a = ct.cross_entropy(p["x"], p["p"], reduction=red, weight=p["w"], label_smoothing=0.2)
        b = _ref_ce(p["x"], p["p"], reduction=red, weight=p["w"], label_smoothing=0.2)
        assert _err(a, b) <= TOL64


# ------------------------------------------------------------------- numerical cases


def _options() -> dict[str, dict[str, Any]]:
    p = _problem(0)
    return {
        "plain": {},
        "weight-zero": {"weight": p["w"]},
        "ls": {"label_smoothing": 0.2},
        "zloss": {"z_loss": 1e-2},
        "softcap": {"softcap": 2.0},
        "sw": {"sample_weight": p["s"]},
        "all": {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS},
    }


@case("2")
def c_classes_every_option(mesh: Any) -> str:
    p = _problem(0)
    errs: dict[str, float] = {}
    for name, kw in _options().items():
        errs |= {f"{name}/{k}": v for k, v in _ce_vs_ref(mesh, [_S(1)], p, **kw).items()}
    return _check(errs)


@case("2")
def c_rows_every_option(mesh: Any) -> str:
    p = _problem(0)
    errs: dict[str, float] = {}
    for name, kw in _options().items():
        errs |= {f"{name}/{k}": v for k, v in _ce_vs_ref(mesh, [_S(0)], p, **kw).items()}
    return _check(errs)


@case("4")
def c_classes_uneven_4(mesh: Any) -> str:
    """C=13 over 4 ranks (4,4,4,1), N=7, every option."""
    p = _problem(1)
    kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
    return _check(_ce_vs_ref(mesh, [_S(1)], p, **kw))


@case("4-empty-classes")
def c_classes_empty_shard(mesh: Any) -> str:
    """C=3 < 4 ranks: one rank holds no class."""
    p = _problem(2, n=5, c=3)
    kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
    return _check(_ce_vs_ref(mesh, [_S(1)], p, **kw))


@case("4")
def c_rows_empty_shard(mesh: Any) -> str:
    """N=3 < 4 ranks: one rank holds no row."""
    p = _problem(3, n=3, c=6)
    kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
    return _check(_ce_vs_ref(mesh, [_S(0)], p, **kw))


@case("4-empty-classes-linear")
def c_linear_empty_class_shard(mesh: Any) -> str:
    """linear_cross_entropy with C=3 < 4 ranks: one rank's weight shard is empty."""
    ct = _ct()
    p = _lin_problem(57, c=3)
    ref = _ref_ce(p["h"] @ p["W"].T, p["t"])
    got = ct.linear_cross_entropy(p["h"], _dist(p["W"], mesh, [_S(0)]), p["t"])
    return _check({"loss": _err(_full(got), ref)})


@case("4-empty-classes-c5")
def c_classes_empty_shard_c5(mesh: Any) -> str:
    """C=5 over 4 ranks: torch's chunking gives shards (2, 2, 1, 0)."""
    p = _problem(58, n=4, c=5)
    return _check(_ce_vs_ref(mesh, [_S(1)], p, reductions=("mean",)))


@case("4-empty-classes-stats")
def c_token_stats_empty_class_shard(mesh: Any) -> str:
    ct = _ct()
    p = _problem(4, n=5, c=3)
    ref = ct.token_stats(p["x"], p["t"], temperature=0.6)
    got = ct.token_stats(_dist(p["x"], mesh, [_S(1)]), p["t"], temperature=0.6)
    errs = {k: _err(getattr(got, k).full_tensor(), getattr(ref, k)) for k in ("logprob", "lse")}
    errs["entropy"] = _err(got.entropy.full_tensor(), ref.entropy)
    errs["argmax"] = float(not torch.equal(got.argmax.full_tensor(), ref.argmax))
    return _check(errs)


@case("2")
def c_spatial_classes_sharded(mesh: Any) -> str:
    """(N, C, d) logits with Shard(1), target (N, d), every option."""
    p = _problem(5, n=3, c=9, extra=(4,))
    kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
    return _check(_ce_vs_ref(mesh, [_S(1)], p, **kw))


@case("2")
def c_spatial_rows_sharded(mesh: Any) -> str:
    p = _problem(5, n=3, c=9, extra=(4,))
    kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
    return _check(_ce_vs_ref(mesh, [_S(0)], p, **kw))


@case("2")
def c_spatial_dim2_sharded(mesh: Any) -> str:
    """(N, C, d) logits with Shard(2) (the spatial dim): right answer or a clear refusal."""
    ct = _ct()
    p = _problem(6, n=3, c=5, extra=(4,))
    dx = _dist(p["x"], mesh, [_S(2)])
    try:
        got = ct.cross_entropy(dx, p["t"], weight=p["w"])
    except (ValueError, NotImplementedError, TypeError) as exc:
        assert "input" in str(exc), exc
        return "refused"
    return _check({"loss": _err(_full(got), _ref_ce(p["x"], p["t"], weight=p["w"]))})


@case("2")
def c_model_output_bsv_flattened(mesh: Any) -> str:
    """(B, S, V) Shard(-1) as a ColwiseParallel output, flattened to (B*S, V)."""
    ct = _ct()
    g = torch.Generator().manual_seed(7)
    B, S, V = 2, 3, 11
    x = torch.randn(B, S, V, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, (B, S), generator=g)
    t[0, 1] = -100
    dx = _dist(x, mesh, [_S(-1)]).requires_grad_()
    got = ct.cross_entropy(dx.flatten(0, 1), t.flatten(), ignore_index=-100)
    got.backward()
    xr = x.clone().requires_grad_()
    ref = _ref_ce(xr.flatten(0, 1), t.flatten())
    ref.backward()
    return _check(
        {"loss": _err(got.full_tensor(), ref), "grad": _err(dx.grad.full_tensor(), xr.grad)}
    )


@case("2")
def c_target_placements(mesh: Any) -> str:
    """Targets as Replicate / Shard(0) DTensors, plain global and plain local (rows)."""
    p = _problem(8)
    kw = {"weight": p["w"], "label_smoothing": 0.1}
    errs: dict[str, float] = {}
    t = p["t"]
    variants: dict[str, tuple[Any, Callable[[Any], Any]]] = {
        "classes/rep": ([_S(1)], lambda dx: _dist(t, mesh, [_R()])),
        "classes/shard0": ([_S(1)], lambda dx: _dist(t, mesh, [_S(0)])),
        "rows/rep": ([_S(0)], lambda dx: _dist(t, mesh, [_R()])),
        "rows/shard0": ([_S(0)], lambda dx: _dist(t, mesh, [_S(0)])),
        "rows/plain-local": ([_S(0)], lambda dx: _dist(t, mesh, [_S(0)]).to_local()),
        "rep/shard0": ([_R()], lambda dx: _dist(t, mesh, [_S(0)])),
    }
    for name, (pl, tf) in variants.items():
        r = _ce_vs_ref(mesh, pl, p, target=tf, **kw)
        errs |= {f"{name}/{k}": v for k, v in r.items()}
    return _check(errs)


@case("2")
def c_sample_weight_dtensor_requires_grad(mesh: Any) -> str:
    """A Shard(0) DTensor sample weight that requires grad: loss, d logits, d sample weight."""
    ct = _ct()
    p = _problem(9)
    errs: dict[str, float] = {}
    for pl_name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        for red in ("mean", "sum", "none"):
            x = p["x"].clone().requires_grad_()
            s = p["s"].clone().requires_grad_()
            ref = _ref_ce(x, p["t"], weight=p["w"], reduction=red, sample_weight=s)
            (ref * p["up"] if red == "none" else ref).sum().backward()
            dx = _dist(p["x"], mesh, pl).requires_grad_()
            ds = _dist(p["s"], mesh, [_S(0)]).requires_grad_()
            got = ct.cross_entropy(dx, p["t"], weight=p["w"], reduction=red, sample_weight=ds)
            if red == "none":
                (got * _dist(p["up"], mesh, got.placements)).sum().backward()
            else:
                got.backward()
            tag = f"{pl_name}/{red}"
            errs[f"{tag}/loss"] = _err(got.full_tensor(), ref)
            errs[f"{tag}/dx"] = _err(dx.grad.full_tensor(), x.grad)
            errs[f"{tag}/ds"] = _err(_full(ds.grad), s.grad) if ds.grad is not None else 9.0
    return _check(errs)


@case("2")
def c_sample_weight_plain_requires_grad(mesh: Any) -> str:
    """A plain (global) sample weight that requires grad with sharded classes."""
    ct = _ct()
    p = _problem(9)
    s = p["s"].clone().requires_grad_()
    ref = _ref_ce(p["x"], p["t"], sample_weight=s)
    ref.backward()
    s2 = p["s"].clone().requires_grad_()
    got = ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], sample_weight=s2)
    got.backward()
    ds = s2.grad if s2.grad is not None else torch.full_like(s, 9.0)
    return _check({"loss": _err(got.full_tensor(), ref), "ds": _err(ds, s.grad)})


@case("2")
def c_prob_targets_rows_and_rep(mesh: Any) -> str:
    p = _problem(10)
    kw = {"weight": p["w"], "label_smoothing": 0.1}
    pt = dict(p, t=p["p"])
    errs: dict[str, float] = {}
    for name, pl, tf in (
        ("rows/plain", [_S(0)], None),
        ("rows/dt-shard0", [_S(0)], lambda dx: _dist(p["p"], mesh, [_S(0)])),
        ("rows/dt-rep", [_S(0)], lambda dx: _dist(p["p"], mesh, [_R()])),
        ("rep/plain", [_R()], None),
    ):
        r = _ce_vs_ref(mesh, pl, pt, target=tf, **kw)
        errs |= {f"{name}/{k}": v for k, v in r.items()}
    return _check(errs)


@case("2")
def c_token_stats_temperature(mesh: Any) -> str:
    ct = _ct()
    p = _problem(11)
    errs: dict[str, float] = {}
    for name, pl in (("classes", [_S(1)]), ("rows", [_S(0)]), ("rep", [_R()])):
        x = p["x"].clone().requires_grad_()
        ref = ct.token_stats(x, p["t"], softcap=4.0, temperature=0.5)
        (p["up"] * ref.logprob + 0.3 * ref.entropy - 0.2 * ref.lse).sum().backward()
        # an independent reference from the documented composition
        z = 4.0 * torch.tanh(p["x"] / 4.0) / 0.5
        lp = z.log_softmax(-1).gather(-1, p["t"].clamp(min=0)[:, None])[:, 0]
        lp = lp.where(p["t"] != -100, torch.zeros_like(lp))
        dx = _dist(p["x"], mesh, pl).requires_grad_()
        got = ct.token_stats(dx, p["t"], softcap=4.0, temperature=0.5)
        up = _dist(p["up"], mesh, got.logprob.placements)
        (up * got.logprob + 0.3 * got.entropy - 0.2 * got.lse).sum().backward()
        errs[f"{name}/logprob"] = _err(got.logprob.full_tensor(), lp)
        errs[f"{name}/entropy"] = _err(got.entropy.full_tensor(), ref.entropy)
        errs[f"{name}/lse"] = _err(got.lse.full_tensor(), torch.logsumexp(z, -1))
        errs[f"{name}/argmax"] = float(not torch.equal(got.argmax.full_tensor(), z.argmax(-1)))
        errs[f"{name}/grad"] = _err(dx.grad.full_tensor(), x.grad)
    return _check(errs)


@case("2")
def c_token_stats_3d_row_dim_sharded(mesh: Any) -> str:
    """token_stats of (B, S, V) logits with Shard(1) (a row dim that is not 0): right or
    refused clearly."""
    ct = _ct()
    g = torch.Generator().manual_seed(12)
    x = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    t = torch.randint(0, 7, (2, 5), generator=g)
    ref = ct.token_stats(x, t)
    try:
        got = ct.token_stats(_dist(x, mesh, [_S(1)]), t)
    except (ValueError, NotImplementedError) as exc:
        assert "logits" in str(exc), exc
        return "refused"
    return _check({"logprob": _err(got.logprob.full_tensor(), ref.logprob)})


@case("2")
def c_one_dim_logits_class_shard0(mesh: Any) -> str:
    """(C,) logits: dim 0 is the class dim, so Shard(0) shards the classes."""
    ct = _ct()
    g = torch.Generator().manual_seed(13)
    x = torch.randn(9, generator=g, dtype=torch.float64)
    t = torch.tensor(4)
    xr = x.clone().requires_grad_()
    ref = _ref_ce(xr[None], t[None])
    ref.backward()
    dx = _dist(x, mesh, [_S(0)]).requires_grad_()
    try:
        got = ct.cross_entropy(dx, t)
    except ValueError as exc:  # a clear refusal is acceptable (the DTensor docs say (N, C...))
        assert "input" in str(exc), exc
        return "refused"
    got.backward()
    errs = {"loss": _err(got.full_tensor(), ref), "grad": _err(dx.grad.full_tensor(), xr.grad)}
    return _check(errs)


@case("2")
def c_all_ignored(mesh: Any) -> str:
    """Every target ignored: 'mean' is NaN with a zero gradient (as F), 'sum' is 0."""
    import torch.nn.functional as F

    ct = _ct()
    p = _problem(14)
    t = torch.full((7,), -100)
    errs: dict[str, float] = {}
    for pl_name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        for red in ("mean", "sum"):
            x = p["x"].clone().requires_grad_()
            ref = F.cross_entropy(x, t, weight=p["w"], reduction=red)
            ref.backward()
            dx = _dist(p["x"], mesh, pl).requires_grad_()
            got = ct.cross_entropy(dx, t, weight=p["w"], reduction=red)
            got.backward()
            errs[f"{pl_name}/{red}/loss"] = _err(got.full_tensor(), ref)
            errs[f"{pl_name}/{red}/nan-as-F"] = float(
                bool(got.full_tensor().isnan()) != bool(ref.isnan())
            )
            errs[f"{pl_name}/{red}/grad"] = _err(dx.grad.full_tensor(), x.grad)
    return _check(errs)


@case("2")
def c_rows_one_rank_all_ignored(mesh: Any) -> str:
    """Rows sharded; rank 1's rows all ignored: global mean still right (no local NaN)."""
    p = _problem(15, n=6)
    p["t"] = p["t"].clamp(min=0)
    p["t"][3:] = -100
    return _check(_ce_vs_ref(mesh, [_S(0)], p, weight=p["w"], reductions=("mean",)))


@case("2")
def c_low_precision(mesh: Any) -> str:
    """float32/bfloat16/float16 DTensor logits against the single-process call in that dtype."""
    ct = _ct()
    p = _problem(16)
    errs: dict[str, float] = {}
    # relative: the reduced loss over split rows is a sum of per-rank partials in the
    # input's dtype (one more rounding than one process)
    for dt, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2), (torch.float16, 1e-3)):
        for pl_name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
            xl = p["x"].to(dt)
            x = xl.clone().requires_grad_()
            ref = ct.cross_entropy(x, p["t"], weight=p["w"].to(dt), label_smoothing=0.1)
            ref.backward()
            dx = _dist(xl, mesh, pl).requires_grad_()
            got = ct.cross_entropy(dx, p["t"], weight=p["w"].to(dt), label_smoothing=0.1)
            got.backward()
            tag = f"{dt}/{pl_name}"
            errs[f"{tag}/dtype"] = float(got.dtype != ref.dtype) * 9
            errs[f"{tag}/loss"] = _err(got.full_tensor(), ref) / float(ref.abs()) / tol * 1e-12
            errs[f"{tag}/grad-dtype"] = float(dx.grad.dtype != dt) * 9
            errs[f"{tag}/grad"] = _err(dx.grad.full_tensor(), x.grad) / tol * 1e-12
    return _check(errs, tol=1e-12)


@case("2")
def c_autocast_bf16(mesh: Any) -> str:
    """CPU autocast bfloat16: float32 loss like the single-process call."""
    ct = _ct()
    p = _problem(17)
    xl = p["x"].float()
    errs: dict[str, float] = {}
    for pl_name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        x = xl.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            ref = ct.cross_entropy(x.bfloat16(), p["t"])
        ref.backward()
        dx = _dist(xl, mesh, pl).requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = ct.cross_entropy(dx.bfloat16(), p["t"])
        got.backward()
        errs[f"{pl_name}/dtype"] = float(got.dtype != ref.dtype) * 9
        errs[f"{pl_name}/loss"] = _err(got.full_tensor(), ref)
        errs[f"{pl_name}/grad"] = _err(dx.grad.full_tensor(), x.grad)
    return _check(errs, tol=1e-6)


@case("2")
def c_retain_graph_second_backward(mesh: Any) -> str:
    ct = _ct()
    p = _problem(18)
    errs: dict[str, float] = {}
    for pl_name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        for red in ("mean", "none"):
            x = p["x"].clone().requires_grad_()
            ref = _ref_ce(x, p["t"], weight=p["w"], reduction=red, z_loss=1e-2)
            dx = _dist(p["x"], mesh, pl).requires_grad_()
            got = ct.cross_entropy(dx, p["t"], weight=p["w"], reduction=red, z_loss=1e-2)
            if red == "none":
                got = (got * _dist(p["up"], mesh, got.placements)).sum()
                ref = (ref * p["up"]).sum()
            ref.backward(retain_graph=True)
            ref.backward()
            got.backward(retain_graph=True)
            got.backward()
            errs[f"{pl_name}/{red}"] = _err(dx.grad.full_tensor(), x.grad)
    return _check(errs)


@case("2")
def c_partial_loss_arithmetic(mesh: Any) -> str:
    """Rows-sharded losses are Partial: sum of two, scaled, then backward."""
    ct = _ct()
    p = _problem(19)
    x = p["x"].clone().requires_grad_()
    ref = 0.5 * _ref_ce(x, p["t"], weight=p["w"]) + _ref_ce(x, p["t"], reduction="sum")
    ref.backward()
    dx = _dist(p["x"], mesh, [_S(0)]).requires_grad_()
    a = ct.cross_entropy(dx, p["t"], weight=p["w"])
    b = ct.cross_entropy(dx, p["t"], reduction="sum")
    tot = 0.5 * a + b
    tot.backward()
    return _check(
        {"loss": _err(tot.full_tensor(), ref), "grad": _err(dx.grad.full_tensor(), x.grad)}
    )


@case("2")
def c_result_placements(mesh: Any) -> str:
    """Documented result placements: Partial for a reduced loss over split rows, Shard(0) per
    row there, Replicate with split classes."""
    ct = _ct()
    p = _problem(20)
    got = {}
    for pl_name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        dx = _dist(p["x"], mesh, pl)
        for red in ("mean", "none"):
            got[f"{pl_name}/{red}"] = str(ct.cross_entropy(dx, p["t"], reduction=red).placements)
    want = {
        "classes/mean": "(Replicate(),)",
        "classes/none": "(Replicate(),)",
        "rows/mean": "(Partial(sum),)",
        "rows/none": "(Shard(dim=0),)",
    }
    assert got == want, got
    return "ok"


@case("2")
def c_loss_parallel_side_by_side(mesh: Any) -> str:
    """Beside torch's loss_parallel: where it runs the call (plain mean and sum always; label
    smoothing and class weights only if it does), the same loss and gradient."""
    import torch.nn.functional as F
    from torch.distributed.tensor.parallel import loss_parallel

    ct = _ct()
    p = _problem(21)
    t = p["t"].clamp(min=0)
    errs: dict[str, float] = {}
    unsupported: list[str] = []
    for name, kw in (
        ("mean", {}),
        ("sum", {"reduction": "sum"}),
        ("ls", {"label_smoothing": 0.1}),
        ("weight", {"weight": p["w"]}),
    ):
        d1 = _dist(p["x"], mesh, [_S(1)]).requires_grad_()
        try:
            with loss_parallel():
                lp = F.cross_entropy(d1, t, **kw)
                lp.backward()
        except RuntimeError as exc:  # torch's loss_parallel does not support this call
            assert "DTensor" in str(exc) or "out of bounds" in str(exc), exc
            unsupported.append(name)
            continue
        d2 = _dist(p["x"], mesh, [_S(1)]).requires_grad_()
        ours = ct.cross_entropy(d2, t, **kw)
        ours.backward()
        errs[f"{name}/loss"] = _err(lp.full_tensor(), ours.full_tensor())
        errs[f"{name}/grad"] = _err(d1.grad.full_tensor(), d2.grad.full_tensor())
    _check(errs)
    assert "mean" not in unsupported and "sum" not in unsupported, unsupported
    return "ok"


# --------------------------------------------------------------------------- linear forms


def _lin_problem(seed: int, n: int = 6, c: int = 11, d: int = 4) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    t = torch.randint(0, c, (n,), generator=g)
    t[2] = -100
    w = torch.rand(c, generator=g, dtype=f64) + 0.5
    w[0] = 0.0
    return {
        "h": torch.randn(n, d, generator=g, dtype=f64),
        "W": torch.randn(c, d, generator=g, dtype=f64),
        "b": torch.randn(c, generator=g, dtype=f64),
        "t": t,
        "w": w,
        "s": torch.rand(n, generator=g, dtype=f64) + 0.5,
        "up": torch.randn(n, generator=g, dtype=f64),
    }


@case("2", "4")
def c_linear_cross_entropy(mesh: Any) -> str:
    """Weight Shard(0); hidden plain or Replicate DTensor; bias DTensor or None; class weights
    plain; every reduction; against the composed reference."""
    ct = _ct()
    p = _lin_problem(22)
    errs: dict[str, float] = {}
    kw = {"label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 3.0}
    for hid_kind in ("plain", "rep"):
        for with_bias in (True, False):
            for red in ("mean", "sum", "none"):
                h, W, b = (p[k].clone().requires_grad_() for k in ("h", "W", "b"))
                logits = h @ W.T + (b if with_bias else 0)
                ref = _ref_ce(logits, p["t"], weight=p["w"], reduction=red, **kw)
                (ref * p["up"] if red == "none" else ref).sum().backward()
                hp = p["h"].clone()
                hd = (_dist(hp, mesh, [_R()]) if hid_kind == "rep" else hp).requires_grad_()
                Wd = _dist(p["W"], mesh, [_S(0)]).requires_grad_()
                bd = _dist(p["b"], mesh, [_S(0)]).requires_grad_() if with_bias else None
                got = ct.linear_cross_entropy(
                    hd, Wd, p["t"], bd, reduction=red, class_weight=p["w"], **kw
                )
                if red == "none":
                    (got * _dist(p["up"], mesh, got.placements)).sum().backward()
                else:
                    got.backward()
                tag = f"{hid_kind}/bias={with_bias}/{red}"
                errs[f"{tag}/loss"] = _err(_full(got), ref)
                errs[f"{tag}/dh"] = _err(_full(hd.grad), h.grad)
                errs[f"{tag}/dW"] = _err(Wd.grad.full_tensor(), W.grad)
                if with_bias:
                    errs[f"{tag}/db"] = _err(bd.grad.full_tensor(), b.grad)
    return _check(errs)


@case("2")
def c_linear_sample_weight_dtensor(mesh: Any) -> str:
    """Linear form with a sample weight that is a Shard(0) DTensor requiring grad."""
    ct = _ct()
    p = _lin_problem(23)
    h, W = p["h"].clone().requires_grad_(), p["W"].clone().requires_grad_()
    s = p["s"].clone().requires_grad_()
    ref = _ref_ce(h @ W.T, p["t"], sample_weight=s)
    ref.backward()
    hp = p["h"].clone().requires_grad_()
    Wd = _dist(p["W"], mesh, [_S(0)]).requires_grad_()
    ds = _dist(p["s"], mesh, [_S(0)]).requires_grad_()
    got = ct.linear_cross_entropy(hp, Wd, p["t"], sample_weight=ds)
    got.backward()
    errs = {
        "loss": _err(_full(got), ref),
        "dh": _err(hp.grad, h.grad),
        "dW": _err(Wd.grad.full_tensor(), W.grad),
        "ds": _err(_full(ds.grad), s.grad) if ds.grad is not None else 9.0,
    }
    return _check(errs)


@case("2", "4")
def c_linear_token_stats(mesh: Any) -> str:
    ct = _ct()
    p = _lin_problem(24, c=3 if mesh.size() == 4 else 11)
    h, W, b = (p[k].clone().requires_grad_() for k in ("h", "W", "b"))
    ref = ct.token_stats(h @ W.T + b, p["t"], softcap=3.0, temperature=0.7)
    (p["up"] * ref.logprob + ref.entropy).sum().backward()
    hp = p["h"].clone().requires_grad_()
    Wd = _dist(p["W"], mesh, [_S(0)]).requires_grad_()
    bd = _dist(p["b"], mesh, [_S(0)]).requires_grad_()
    got = ct.linear_token_stats(hp, Wd, p["t"], bd, softcap=3.0, temperature=0.7)
    lp, en = _full(got.logprob), _full(got.entropy)
    (p["up"] * lp + en).sum().backward()
    errs = {
        "logprob": _err(lp, ref.logprob),
        "entropy": _err(en, ref.entropy),
        "lse": _err(_full(got.lse), ref.lse),
        "argmax": float(not torch.equal(_full(got.argmax), ref.argmax)),
        "dh": _err(hp.grad, h.grad),
        "dW": _err(Wd.grad.full_tensor(), W.grad),
        "db": _err(bd.grad.full_tensor(), b.grad),
    }
    return _check(errs)


@case("2")
def c_linear_target_dtensor(mesh: Any) -> str:
    """Linear forms with the target as a Replicate or Shard(0) DTensor (the docs: row-aligned
    arguments may be DTensors, any placement)."""
    ct = _ct()
    p = _lin_problem(26)
    ref = _ref_ce(p["h"] @ p["W"].T, p["t"])
    Wd = _dist(p["W"], mesh, [_S(0)])
    errs: dict[str, float] = {}
    for name, pl in (("rep", [_R()]), ("shard0", [_S(0)])):
        got = ct.linear_cross_entropy(p["h"], Wd, _dist(p["t"], mesh, pl))
        errs[name] = _err(_full(got), ref)
    return _check(errs)


@case("2")
def c_class_weight_dtensor(mesh: Any) -> str:
    """Class weights as Shard(0) / Replicate DTensors (logits classes or rows sharded)."""
    p = _problem(27)
    errs: dict[str, float] = {}
    for wname, wpl in (("w-shard0", [_S(0)]), ("w-rep", [_R()])):
        for name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
            ct = _ct()
            dw = _dist(p["w"], mesh, wpl)
            dx = _dist(p["x"], mesh, pl)
            got = ct.cross_entropy(dx, p["t"], weight=dw, label_smoothing=0.1)
            ref = _ref_ce(p["x"], p["t"], weight=p["w"], label_smoothing=0.1)
            errs[f"{wname}/{name}"] = _err(got.full_tensor(), ref)
    return _check(errs)


@case("2")
def c_sample_weight_plain_local_rows(mesh: Any) -> str:
    """Rows sharded; sample weight and target as plain tensors of this rank's rows."""
    p = _problem(28)
    ct = _ct()
    s_local = _dist(p["s"], mesh, [_S(0)]).to_local()
    t_local = _dist(p["t"], mesh, [_S(0)]).to_local()
    errs = {}
    for red in ("mean", "sum"):
        got = ct.cross_entropy(
            _dist(p["x"], mesh, [_S(0)]),
            t_local,
            weight=p["w"],
            reduction=red,
            sample_weight=s_local,
        )
        ref = _ref_ce(p["x"], p["t"], weight=p["w"], reduction=red, sample_weight=p["s"])
        errs[red] = _err(got.full_tensor(), ref)
    return _check(errs)


@case("2")
def c_create_graph_rows_sharded(mesh: Any) -> str:
    """Rows sharded or replicated (no vocabulary-parallel path): double backward works."""
    ct = _ct()
    p = _problem(29)
    errs: dict[str, float] = {}
    v = torch.randn(p["x"].shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x = p["x"].clone().requires_grad_()
    (g,) = torch.autograd.grad(_ref_ce(x, p["t"], weight=p["w"]), x, create_graph=True)
    (hv,) = torch.autograd.grad((g * v).sum(), x)
    for name, pl in (("rows", [_S(0)]), ("rep", [_R()])):
        dx = _dist(p["x"], mesh, pl).requires_grad_()
        (dg,) = torch.autograd.grad(
            ct.cross_entropy(dx, p["t"], weight=p["w"]), dx, create_graph=True
        )
        (dhv,) = torch.autograd.grad((dg * _dist(v, mesh, pl)).sum(), dx)
        errs[f"{name}/grad"] = _err(dg.full_tensor(), g)
        errs[f"{name}/hvp"] = _err(dhv.full_tensor(), hv)
    return _check(errs)


@case("2")
def c_token_stats_target_dtensor(mesh: Any) -> str:
    ct = _ct()
    p = _problem(32)
    ref = ct.token_stats(p["x"], p["t"])
    errs: dict[str, float] = {}
    for name, pl, tpl in (
        ("classes/t-shard0", [_S(1)], [_S(0)]),
        ("rows/t-rep", [_S(0)], [_R()]),
    ):
        got = ct.token_stats(_dist(p["x"], mesh, pl), _dist(p["t"], mesh, tpl))
        errs[name] = _err(got.logprob.full_tensor(), ref.logprob)
    return _check(errs)


@case("2")
def c_ignore_index_is_a_valid_class(mesh: Any) -> str:
    """ignore_index=3 (a real class) with label smoothing, classes or rows sharded."""
    import torch.nn.functional as F

    ct = _ct()
    p = _problem(33, n=6, c=10)
    t = torch.tensor([3, 0, 9, 3, 5, 1])
    errs: dict[str, float] = {}
    for name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        for red in ("mean", "sum", "none"):
            x = p["x"].clone().requires_grad_()
            ref = F.cross_entropy(x, t, ignore_index=3, reduction=red, label_smoothing=0.1)
            ref.sum().backward()
            dx = _dist(p["x"], mesh, pl).requires_grad_()
            got = ct.cross_entropy(dx, t, ignore_index=3, reduction=red, label_smoothing=0.1)
            got.sum().backward()
            errs[f"{name}/{red}/loss"] = _err(got.full_tensor(), ref)
            errs[f"{name}/{red}/grad"] = _err(dx.grad.full_tensor(), x.grad)
    return _check(errs)


@case("2")
def c_masked_vocab_whole_shard_minus_inf(mesh: Any) -> str:
    """-inf logits covering one rank's whole shard of a row: finite loss, entropy as F."""
    import torch.nn.functional as F

    ct = _ct()
    x = _problem(34, n=6, c=10)["x"]
    x[0, 5:] = float("-inf")
    x[1, :5] = float("-inf")
    t = torch.tensor([0, 6, 1, 7, 2, 8])
    xr = x.clone().requires_grad_()
    ref = F.cross_entropy(xr, t)
    ref.backward()
    dx = _dist(x, mesh, [_S(1)]).requires_grad_()
    got = ct.cross_entropy(dx, t)
    got.backward()
    ts = ct.token_stats(_dist(x, mesh, [_S(1)]), t)
    rs = ct.token_stats(x, t)
    errs = {
        "loss": _err(got.full_tensor(), ref),
        "grad": _err(dx.grad.full_tensor(), xr.grad),
        "entropy": _err(ts.entropy.full_tensor(), rs.entropy),
        "logprob": _err(ts.logprob.full_tensor(), rs.logprob),
    }
    return _check(errs)


@case("2")
def c_argmax_ties_across_shards(mesh: Any) -> str:
    ct = _ct()
    x = torch.zeros(3, 10, dtype=torch.float64)
    x[1, [2, 7]] = 1.0
    x[2, [8, 6]] = 2.0
    got = ct.token_stats(_dist(x, mesh, [_S(1)]), torch.tensor([0, 1, 2])).argmax.full_tensor()
    assert got.tolist() == x.argmax(-1).tolist(), got
    return "ok"


@case("2")
def c_odd_arguments(mesh: Any) -> str:
    """Non-contiguous local shards, int32 targets, the deprecated reduce/size_average,
    float32 probability targets with float64 logits, probability targets requiring grad."""
    import warnings

    import torch.nn.functional as F

    ct = _ct()
    p = _problem(35, n=6, c=10)
    x, t = p["x"], p["t"].clamp(min=0)
    errs: dict[str, float] = {}
    dxt = _dist(x.T.contiguous(), mesh, [_S(0)]).T  # (N, C) Shard(1), non-contiguous
    errs["noncontig"] = _err(
        ct.cross_entropy(dxt, t, reduction="none").full_tensor(),
        F.cross_entropy(x, t, reduction="none"),
    )
    errs["int32"] = _err(
        ct.cross_entropy(_dist(x, mesh, [_S(1)]), t.int()).full_tensor(), F.cross_entropy(x, t)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        a = ct.cross_entropy(_dist(x, mesh, [_S(0)]), t, reduce=False).full_tensor()
        b = ct.cross_entropy(_dist(x, mesh, [_S(1)]), t, size_average=False).full_tensor()
    errs["reduce=False"] = _err(a, F.cross_entropy(x, t, reduction="none"))
    errs["size_average=False"] = _err(b, F.cross_entropy(x, t, reduction="sum"))
    pt = p["p"].float()
    got = ct.cross_entropy(_dist(x, mesh, [_S(0)]), pt)
    errs["prob-f32/dtype"] = float(got.dtype != torch.float64) * 9
    errs["prob-f32"] = _err(got.full_tensor(), F.cross_entropy(x, pt))
    ptr = p["p"].clone().requires_grad_()
    F.cross_entropy(x, ptr).backward()
    ptd = _dist(p["p"], mesh, [_S(0)]).requires_grad_()
    ct.cross_entropy(_dist(x, mesh, [_S(0)]), ptd).backward()
    errs["prob-target-grad"] = _err(ptd.grad.full_tensor(), ptr.grad)
    s = p["s"].clone().requires_grad_()
    (F.cross_entropy(x, t, reduction="none") * s).sum().backward()
    s2 = p["s"].clone().requires_grad_()
    ct.cross_entropy(_dist(x, mesh, [_S(0)]), t, reduction="sum", sample_weight=s2).backward()
    errs["sw-plain-global-rows-grad"] = _err(s2.grad, s.grad) if s2.grad is not None else 9.0
    return _check(errs)


@case("2")
def c_linear_inputs_not_modified(mesh: Any) -> str:
    ct = _ct()
    p = _lin_problem(25)
    hp = p["h"].clone().requires_grad_()
    Wd = _dist(p["W"], mesh, [_S(0)]).requires_grad_()
    t = p["t"].clone()
    w = p["w"].clone()
    ct.linear_cross_entropy(hp, Wd, t, class_weight=w, label_smoothing=0.1).backward()
    errs = {
        "h": _err(hp.detach(), p["h"]),
        "W": _err(Wd.full_tensor().detach(), p["W"]),
        "t": float(not torch.equal(t, p["t"])),
        "w": _err(w, p["w"]),
    }
    return _check(errs, tol=0.0)


# ------------------------------------------------------------------------ 2-D mesh (4 ranks)


def _mesh2d() -> Any:
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh("cpu", (2, 2), mesh_dim_names=("dp", "tp"))


def _two_d(placements: Callable[[], list[Any]]) -> Callable[[Any], str]:
    def run(mesh: Any) -> str:
        m2 = _mesh2d()
        p = _problem(30, n=7, c=13)
        kw = {"weight": p["w"], "sample_weight": p["s"], **ALL_OPTS}
        errs = _ce_vs_ref(m2, placements(), p, **kw)
        # token stats too
        ct = _ct()
        x = p["x"].clone().requires_grad_()
        ref = ct.token_stats(x, p["t"], temperature=0.9)
        (p["up"] * ref.logprob).sum().backward()
        dx = _dist(p["x"], m2, placements()).requires_grad_()
        got = ct.token_stats(dx, p["t"], temperature=0.9)
        (_dist(p["up"], m2, got.logprob.placements) * got.logprob).sum().backward()
        errs["stats/logprob"] = _err(got.logprob.full_tensor(), ref.logprob)
        errs["stats/grad"] = _err(dx.grad.full_tensor(), x.grad)
        return _check(errs)

    return run


CASES["4"]["mesh2d_dp_tp"] = _two_d(lambda: [_S(0), _S(1)])
CASES["4"]["mesh2d_tp_dp"] = _two_d(lambda: [_S(1), _S(0)])
CASES["4"]["mesh2d_rep_tp"] = _two_d(lambda: [_R(), _S(1)])
CASES["4"]["mesh2d_dp_rep"] = _two_d(lambda: [_S(0), _R()])
CASES["4"]["mesh2d_rows_rows"] = _two_d(lambda: [_S(0), _S(0)])


@case("4")
def c_mesh2d_classes_over_both_dims(mesh: Any) -> str:
    """(Shard(1), Shard(1)): the classes split over both mesh dimensions; right, or refused
    naming the input on every rank."""
    ct = _ct()
    p = _problem(67)
    dx = _dist(p["x"], _mesh2d(), [_S(1), _S(1)])
    try:
        got = ct.cross_entropy(dx, p["t"], weight=p["w"])
    except ValueError as exc:
        assert "input" in str(exc), exc
        return f"refused: {exc}"
    return _check({"loss": _err(got.full_tensor(), _ref_ce(p["x"], p["t"], weight=p["w"]))})


@case("4")
def c_dp_tp_linear_on_tp_submesh(mesh: Any) -> str:
    """DP x TP as trained: the weight Shard(0) on the 2-D mesh's "tp" submesh, hidden and
    targets plain, this dp rank's rows (identical within its tp group)."""
    ct = _ct()
    m2 = _mesh2d()
    p = _lin_problem(65, n=8, c=11)
    dp = m2.get_local_rank("dp")
    rows = slice(4 * dp, 4 * dp + 4)
    h, t, s = p["h"][rows], p["t"][rows], p["s"][rows]
    Wd = _dist(p["W"], m2["tp"], [_S(0)]).requires_grad_()
    hd = h.clone().requires_grad_()
    got = ct.linear_cross_entropy(hd, Wd, t, class_weight=p["w"], sample_weight=s)
    got.backward()
    hr, Wr = h.clone().requires_grad_(), p["W"].clone().requires_grad_()
    ref = _ref_ce(hr @ Wr.T, t, weight=p["w"], sample_weight=s)
    ref.backward()
    errs = {
        "loss": _err(_full(got), ref),
        "dh": _err(hd.grad, hr.grad),
        "dW": _err(Wd.grad.full_tensor(), Wr.grad),
    }
    return _check(errs)


@case("2")
def c_no_grad_forward(mesh: Any) -> str:
    """Forward under torch.no_grad and on logits that do not require grad."""
    ct = _ct()
    p = _problem(66)
    errs: dict[str, float] = {}
    for name, pl in (("classes", [_S(1)]), ("rows", [_S(0)])):
        with torch.no_grad():
            dx = _dist(p["x"], mesh, pl).requires_grad_()
            got = ct.cross_entropy(dx, p["t"], weight=p["w"], z_loss=1e-2)
        errs[name] = _err(got.full_tensor(), _ref_ce(p["x"], p["t"], weight=p["w"], z_loss=1e-2))
        errs[f"{name}/requires_grad"] = float(got.requires_grad) * 9
    return _check(errs)


@case("4")
def c_mesh2d_local_targets(mesh: Any) -> str:
    """(Shard(0), Shard(1)) with plain local targets and a Shard(0)-on-dp DTensor target."""
    m2 = _mesh2d()
    p = _problem(31)
    errs: dict[str, float] = {}
    for name, tf in (
        ("plain-local", lambda dx: _dist(p["t"], m2, [_S(0), _R()]).to_local()),
        ("dt-shard-tp", lambda dx: _dist(p["t"], m2, [_R(), _S(0)])),
    ):
        r = _ce_vs_ref(m2, [_S(0), _S(1)], p, target=tf, weight=p["w"])
        errs |= {f"{name}/{k}": v for k, v in r.items()}
    return _check(errs)


# -------------------------------------------------------------------------- refusals


def _same_error(mesh: Any, call: Callable[[], Any], *words: str, kind: str = "") -> str:
    """The call must raise on this rank; the parent checks every rank's message is the same."""
    m = _msg(call)
    assert m != "no error", "no error raised"
    for w in words:
        assert w in m, f"{w!r} not in {m!r}"
    if kind:
        assert m.startswith(kind), m
    return m


@case("2")
def c_err_prob_target_classes_sharded(mesh: Any) -> str:
    p = _problem(40)
    ct = _ct()
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["p"]),
        "target",
        kind="NotImplementedError",
    )


@case("2")
def c_err_create_graph_classes_sharded(mesh: Any) -> str:
    p = _problem(41)
    ct = _ct()

    def call() -> None:
        dx = _dist(p["x"], mesh, [_S(1)]).requires_grad_()
        loss = ct.cross_entropy(dx, p["t"])
        (g,) = torch.autograd.grad(loss, dx, create_graph=True)
        g.full_tensor().sum().backward()

    return _same_error(mesh, call, "create_graph")


@case("2")
def c_err_torch_func_classes_sharded(mesh: Any) -> str:
    p = _problem(42)
    ct = _ct()

    def call() -> None:
        dx = _dist(p["x"], mesh, [_S(1)])
        torch.func.grad(lambda z: ct.cross_entropy(z, p["t"]))(dx)

    m = _msg(call)
    assert m != "no error"
    assert "torch.func" in m or "functorch" in m.lower(), m
    return m


@case("2")
def c_err_partial_logits(mesh: Any) -> str:
    from torch.distributed.tensor import DTensor, Partial

    p = _problem(43)
    ct = _ct()
    dx = DTensor.from_local(p["x"] / 2, mesh, [Partial()], run_check=False)
    return _same_error(mesh, lambda: ct.cross_entropy(dx, p["t"]), "input", "Partial")


@case("2")
def c_err_partial_logits_token_stats(mesh: Any) -> str:
    from torch.distributed.tensor import DTensor, Partial

    p = _problem(43)
    ct = _ct()
    dx = DTensor.from_local(p["x"] / 2, mesh, [Partial()], run_check=False)
    return _same_error(mesh, lambda: ct.token_stats(dx, p["t"]), "logits", "Partial")


@case("2")
def c_err_target_out_of_range_one_rank(mesh: Any) -> str:
    """Classes sharded, plain global target; rank 1 alone holds an out-of-range class."""
    p = _problem(44)
    ct = _ct()
    t = p["t"].clone()
    if mesh.get_rank() == 1:
        t[0] = 99
    return _same_error(mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), t), "target")


@case("2")
def c_err_targets_differ_between_ranks(mesh: Any) -> str:
    """Classes sharded, plain global targets that differ between ranks (all in range): the
    vocabulary-parallel rules say they are compared by digest."""
    p = _problem(45)
    ct = _ct()
    t = p["t"].clamp(min=0)
    if mesh.get_rank() == 1:
        t = (t + 1) % 13
    return _same_error(mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), t), "target")


@case("2")
def c_err_sample_weight_differ_between_ranks(mesh: Any) -> str:
    p = _problem(45)
    ct = _ct()
    s = p["s"] * (1 + mesh.get_rank())
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], sample_weight=s),
        "sample_weight",
    )


@case("2")
def c_err_class_weight_wrong_length(mesh: Any) -> str:
    p = _problem(46)
    ct = _ct()
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], weight=p["w"][:7]),
        "weight",
    )


@case("2")
def c_err_target_wrong_dtype(mesh: Any) -> str:
    p = _problem(47)
    ct = _ct()
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"].to(torch.int8).bool()),
        "target",
    )


@case("2")
def c_err_sample_weight_wrong_shape(mesh: Any) -> str:
    p = _problem(48)
    ct = _ct()
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(0)]), p["t"], sample_weight=p["s"][:2]),
        "sample_weight",
    )


@case("2")
def c_err_bad_option_one_rank(mesh: Any) -> str:
    """label_smoothing out of range on rank 0 only."""
    p = _problem(49)
    ct = _ct()
    ls = 1.5 if mesh.get_rank() == 0 else 0.1
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], label_smoothing=ls),
        "label_smoothing",
    )


@case("2")
def c_err_options_differ_between_ranks(mesh: Any) -> str:
    """Valid but different z_loss per rank with sharded classes: silently mixing them would be
    wrong."""
    p = _problem(49)
    ct = _ct()
    z = 1e-2 * (1 + mesh.get_rank())
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], z_loss=z),
        "z_loss",
    )


@case("2")
def c_err_mismatched_meshes(mesh: Any) -> str:
    """Target DTensor on another mesh than the logits."""
    from torch.distributed.device_mesh import DeviceMesh

    p = _problem(50)
    ct = _ct()
    other = DeviceMesh("cpu", [1, 0])
    dt = _dist(p["t"], other, [_S(0)])
    return _same_error(
        mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), dt), "target", "mesh"
    )


@case("2")
def c_err_mismatched_meshes_weight_hidden(mesh: Any) -> str:
    from torch.distributed.device_mesh import DeviceMesh

    p = _lin_problem(51)
    ct = _ct()
    other = DeviceMesh("cpu", [1, 0])
    hd = _dist(p["h"], other, [_R()])
    Wd = _dist(p["W"], mesh, [_S(0)])
    return _same_error(mesh, lambda: ct.linear_cross_entropy(hd, Wd, p["t"]), "hidden", "mesh")


@case("2")
def c_err_inplace_backward(mesh: Any) -> str:
    p = _problem(52)
    ct = _ct()

    def call() -> None:
        dx = _dist(p["x"], mesh, [_S(1)]).requires_grad_() * 1.0
        ct.cross_entropy(dx, p["t"], inplace_backward=True)

    return _same_error(mesh, call, "inplace_backward")


@case("2")
def c_err_weight_shard1(mesh: Any) -> str:
    """A RowwiseParallel-style weight, Shard(1) over the hidden dim: refused or right."""
    p = _lin_problem(53)
    ct = _ct()
    Wd = _dist(p["W"], mesh, [_S(1)])
    return _same_error(mesh, lambda: ct.linear_cross_entropy(p["h"], Wd, p["t"]), "weight")


@case("2")
def c_hidden_sharded_rows_with_shard0_weight(mesh: Any) -> str:
    """hidden Shard(0) with a Shard(0) weight is FSDP2's layout (each rank its own rows): the
    weight gathered for the call, the loss that of the whole batch, the weight's gradient
    summed back into its shards."""
    p = _lin_problem(54)
    ct = _ct()
    hd = _dist(p["h"], mesh, [_S(0)]).requires_grad_()
    Wd = _dist(p["W"], mesh, [_S(0)]).requires_grad_()
    got = ct.linear_cross_entropy(hd, Wd, p["t"], class_weight=p["w"])
    got.backward()
    h, W = p["h"].clone().requires_grad_(), p["W"].clone().requires_grad_()
    ref = ct.linear_cross_entropy(h, W, p["t"], class_weight=p["w"])
    ref.backward()
    errs = {"loss": _err(_full(got), ref), "d_hidden": _err(_full(hd.grad), h.grad)}
    errs["d_weight"] = _err(_full(Wd.grad), W.grad)
    return _check(errs)


@case("2")
def c_msg_class_weight_length_is_the_callers(mesh: Any) -> str:
    """A plain class weight of the wrong length: the DTensor API takes all C weights, so the
    message must ask for shape (13,), not an internal per-rank slice."""
    p = _problem(46)
    ct = _ct()
    m = _msg(lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], weight=p["w"][:7]))
    assert "(13,)" in m and "slice" not in m, m
    return m


@case("2")
def c_msg_names_the_called_function(mesh: Any) -> str:
    """Bad input to cross_entropy: the message starts with cross_entropy (the function called),
    not an internal one."""
    p = _problem(47)
    ct = _ct()
    t = p["t"].clone()
    t[0] = 99
    m = _msg(lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), t))
    assert m.startswith("ValueError: cross_entropy: target"), m
    return m


@case("2")
def c_msg_names_the_faulty_rank_once(mesh: Any) -> str:
    """Rank 1 alone holds an out-of-range class: every rank's message says rank 1, once."""
    p = _problem(44)
    ct = _ct()
    t = p["t"].clone()
    if mesh.get_rank() == 1:
        t[0] = 99
    m = _msg(lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), t))
    assert m.count("on rank") == 1 and m.endswith("on rank 1"), m
    return m


@case("2")
def c_msg_hidden_on_another_mesh(mesh: Any) -> str:
    """hidden replicated on another mesh than the weight: the message must show the mesh, not
    claim a Replicate() hidden is not replicated."""
    from torch.distributed.device_mesh import DeviceMesh

    p = _lin_problem(51)
    ct = _ct()
    hd = _dist(p["h"], DeviceMesh("cpu", [1, 0]), [_R()])
    Wd = _dist(p["W"], mesh, [_S(0)])
    m = _msg(lambda: ct.linear_cross_entropy(hd, Wd, p["t"]))
    assert "mesh" in m.split("got", 1)[-1].lower(), m
    return m


@case("2")
def c_token_stats_3d_dtensor(mesh: Any) -> str:
    """token_stats takes (*, C) logits (the module docs: "(or (*, C) for the token
    statistics)"): (B, S, V) DTensors with Shard(2) (vocabulary) and Shard(0) (batch)."""
    ct = _ct()
    g = torch.Generator().manual_seed(36)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    t = torch.randint(0, 9, (2, 3), generator=g)
    ref = ct.token_stats(x, t, temperature=0.8)
    errs: dict[str, float] = {}
    for name, pl in (("vocab", [_S(2)]), ("batch", [_S(0)])):
        got = ct.token_stats(_dist(x, mesh, pl), t, temperature=0.8)
        for k in ("logprob", "entropy", "lse"):
            errs[f"{name}/{k}"] = _err(getattr(got, k).full_tensor(), getattr(ref, k))
    return _check(errs)


@case("2")
def c_err_hidden_differs_between_ranks(mesh: Any) -> str:
    """A plain hidden that is not the same on every rank (the docs: hidden replicated) with a
    Shard(0) weight: compared by checksum, refused on every rank; otherwise the loss is
    silently that of no hidden at all."""
    p = _lin_problem(60)
    ct = _ct()
    h = p["h"] + mesh.get_rank()
    Wd = _dist(p["W"], mesh, [_S(0)])
    return _same_error(mesh, lambda: ct.linear_cross_entropy(h, Wd, p["t"]), "hidden")


@case("2")
def c_err_class_weight_differs_between_ranks(mesh: Any) -> str:
    """Classes sharded, a plain class weight that differs between ranks: the 'Replicate' loss
    must not silently differ from rank to rank."""
    p = _problem(61)
    ct = _ct()
    w = p["w"] + mesh.get_rank()
    return _same_error(
        mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], weight=w), "weight"
    )


@case("2")
def c_err_rows_global_target_differs_between_ranks(mesh: Any) -> str:
    """Rows sharded, a plain target of every row that differs between ranks (the classes-
    sharded path refuses this; the rows path silently mixes the ranks' copies)."""
    p = _problem(62)
    ct = _ct()
    t = (p["t"].clamp(min=0) + mesh.get_rank()) % 13
    return _same_error(mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(0)]), t), "target")


@case("2")
def c_err_rows_option_differs_between_ranks(mesh: Any) -> str:
    """Rows sharded, label_smoothing different on each rank (the classes-sharded path refuses
    a z_loss that differs)."""
    p = _problem(63)
    ct = _ct()
    ls = 0.1 * mesh.get_rank()
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(0)]), p["t"], label_smoothing=ls),
        "label_smoothing",
    )


@case("2-reduction-differs-rows")
def c_err_rows_reduction_differs_between_ranks(mesh: Any) -> str:
    """Rows sharded, reduction 'mean' on rank 0 and 'sum' on rank 1: the same error on every
    rank, not a collective mismatch."""
    p = _problem(64)
    ct = _ct()
    red = "mean" if mesh.get_rank() == 0 else "sum"

    def call() -> None:
        ct.cross_entropy(_dist(p["x"], mesh, [_S(0)]), p["t"], reduction=red).full_tensor()

    return _same_error(mesh, call, "reduction")


@case("2-reduction-differs-classes")
def c_err_classes_reduction_differs_between_ranks(mesh: Any) -> str:
    p = _problem(64)
    ct = _ct()
    red = "mean" if mesh.get_rank() == 0 else "sum"

    def call() -> None:
        ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], reduction=red).full_tensor()

    return _same_error(mesh, call, "reduction")


@case("2-one-rank-bad")
def c_err_rows_sample_weight_bad_on_rank_1(mesh: Any) -> str:
    """Rows sharded; rank 1 alone passes a sample weight of a wrong shape."""
    p = _problem(68)
    ct = _ct()
    s = p["s"] if mesh.get_rank() == 0 else p["s"][:2]
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(0)]), p["t"], sample_weight=s),
        "sample_weight",
    )


@case("2-one-rank-bad-dtype")
def c_err_classes_target_dtype_bad_on_rank_0(mesh: Any) -> str:
    """Classes sharded; rank 0 alone passes a floating (probability) target."""
    p = _problem(69)
    ct = _ct()
    t = p["t"].float() if mesh.get_rank() == 0 else p["t"]
    return _same_error(mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), t), "target")


@case("2-one-rank-bad")
def c_err_rows_class_weight_bad_on_rank_1(mesh: Any) -> str:
    p = _problem(70)
    ct = _ct()
    w = p["w"] if mesh.get_rank() == 0 else p["w"][:5]
    return _same_error(
        mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(0)]), p["t"], weight=w), "weight"
    )


@case("2-one-rank-bad")
def c_err_linear_target_bad_on_rank_1(mesh: Any) -> str:
    p = _lin_problem(71)
    ct = _ct()
    t = p["t"].clone()
    if mesh.get_rank() == 1:
        t[0] = 11
    Wd = _dist(p["W"], mesh, [_S(0)])
    return _same_error(mesh, lambda: ct.linear_cross_entropy(p["h"], Wd, t), "target")


@case("2-one-rank-bad")
def c_err_token_stats_softcap_bad_on_rank_0(mesh: Any) -> str:
    p = _problem(72)
    ct = _ct()
    cap = -1.0 if mesh.get_rank() == 0 else 2.0
    return _same_error(
        mesh,
        lambda: ct.token_stats(_dist(p["x"], mesh, [_S(0)]), p["t"], softcap=cap),
        "softcap",
    )


@case("2-one-rank-bad-reduction")
def c_err_classes_reduction_bogus_on_rank_0(mesh: Any) -> str:
    """Classes sharded; rank 0 alone passes reduction='bogus'."""
    p = _problem(73)
    ct = _ct()
    red = "bogus" if mesh.get_rank() == 0 else "mean"
    return _same_error(
        mesh,
        lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), p["t"], reduction=red),
        "reduction",
    )


@case("2-one-rank-bad-inplace")
def c_err_classes_inplace_backward_on_rank_0(mesh: Any) -> str:
    """Classes sharded; rank 0 alone passes inplace_backward=True."""
    p = _problem(74)
    ct = _ct()

    def call() -> None:
        dx = _dist(p["x"], mesh, [_S(1)]).requires_grad_() * 1.0
        ct.cross_entropy(dx, p["t"], inplace_backward=mesh.get_rank() == 0)

    return _same_error(mesh, call, "inplace_backward")


@case("2-one-rank-bad-list")
def c_err_classes_target_list_on_rank_0(mesh: Any) -> str:
    """Classes sharded; rank 0 alone passes the target as a Python list."""
    p = _problem(75)
    ct = _ct()
    t = p["t"].tolist() if mesh.get_rank() == 0 else p["t"]
    return _same_error(mesh, lambda: ct.cross_entropy(_dist(p["x"], mesh, [_S(1)]), t), "target")


@case("4")
def c_weight_tensor_parallel_on_2d_mesh(mesh: Any) -> str:
    """A weight replicated over dp and Shard(0) over tp, with a plain hidden (the same rows on
    every rank): the vocabulary-parallel path over tp."""
    p = _lin_problem(55)
    ct = _ct()
    m2 = _mesh2d()
    Wd = _dist(p["W"], m2, [_R(), _S(0)]).requires_grad_()
    h = p["h"].clone().requires_grad_()
    got = ct.linear_cross_entropy(h, Wd, p["t"], label_smoothing=0.1)
    got.backward()
    h2, W2 = p["h"].clone().requires_grad_(), p["W"].clone().requires_grad_()
    ref = ct.linear_cross_entropy(h2, W2, p["t"], label_smoothing=0.1)
    ref.backward()
    errs = {"loss": _err(_full(got), ref), "d_hidden": _err(h.grad, h2.grad)}
    errs["d_weight"] = _err(_full(Wd.grad), W2.grad)
    return _check(errs)


@case("4")
def c_err_weight_on_2d_mesh_token_stats(mesh: Any) -> str:
    p = _lin_problem(55)
    ct = _ct()
    m2 = _mesh2d()
    Wd = _dist(p["W"], m2, [_S(0), _S(0)])
    return _same_error(mesh, lambda: ct.linear_token_stats(p["h"], Wd, p["t"]), "weight")


@case("4")
def c_err_local_target_bad_on_rank_3_2d(mesh: Any) -> str:
    """2-D mesh, plain local targets; rank 3 alone holds an out-of-range class."""
    p = _problem(56)
    ct = _ct()
    m2 = _mesh2d()
    t = _dist(p["t"], m2, [_S(0), _R()]).to_local().clone()
    if mesh.get_rank() == 3:
        t[0] = 13
    return _same_error(
        mesh, lambda: ct.cross_entropy(_dist(p["x"], m2, [_S(0), _S(1)]), t), "target"
    )


# ---------------------------------------------------------------------------- worker


def _run(group: str, world: int) -> dict[str, Any]:
    import datetime

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    res: dict[str, Any] = {}
    for name, fn in CASES[group].items():
        t0 = time.monotonic()
        try:
            res[name] = fn(mesh)
        except Exception as exc:
            res[name] = f"FAIL {type(exc).__name__}: {exc}\n{traceback.format_exc()[-1500:]}"
        try:  # every rank must get here: a rank left in a collective fails the case
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=_timeout(group)))
        except Exception as exc:
            res[name] = f"HANG (barrier after the case: {type(exc).__name__}: {exc})"
            break
        res[name + "#s"] = round(time.monotonic() - t0, 2)
    return res


def _timeout(group: str) -> float:
    """The collectives' timeout: short for a group whose case is expected to hang."""
    return 6.0 if "-" in group else GROUP_TIMEOUT_S


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    group = (out.parent / "group.txt").read_text()
    init_group(rank, world, port, _timeout(group))
    finish_worker(out, _run(group, world))


# ---------------------------------------------------------------------------- parent tests

XFAIL: dict[str, str] = {}


def _world(group: str) -> int:
    return int(group.split("-")[0])


@pytest.fixture(scope="module")
def groups(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    """Every spawn group's results by rank; a group whose workers died gives each case the
    failure text."""
    out: dict[str, list[dict[str, Any]]] = {}
    for group in CASES:
        tmp = tmp_path_factory.mktemp(f"hostile{group}")
        (tmp / "group.txt").write_text(group)
        try:
            out[group] = spawn_group(__file__, _world(group), tmp, 120.0)
        except BaseException as exc:  # pytest.fail's Failed: the group crashed or hung
            if isinstance(exc, KeyboardInterrupt):
                raise
            text = f"GROUP DIED: {str(exc)[-2500:]}"
            out[group] = [dict.fromkeys(CASES[group], text)] * _world(group)
    return out


def _params() -> list[Any]:
    out = []
    for group, cases in CASES.items():
        for name in cases:
            key = f"{group}/{name}"
            marks = [pytest.mark.slow]
            if key in XFAIL:
                marks.append(pytest.mark.xfail(strict=True, reason=XFAIL[key]))
            out.append(pytest.param(group, name, id=key, marks=marks))
    return out


@pytest.mark.parametrize(("group", "name"), _params())
def test_case(groups: dict[str, list[dict[str, Any]]], group: str, name: str) -> None:
    """The case passed on every rank (``"ok"``) or raised the same error on every rank."""
    results = [r.get(name, "NOT RUN (an earlier case hung)") for r in groups[group]]
    for rank, r in enumerate(results):
        assert not r.startswith(("FAIL", "HANG", "NOT RUN", "GROUP DIED")), f"rank {rank}: {r}"
    assert all(r == results[0] for r in results), results


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world_size, _port = (int(v) for v in sys.argv[2:5])
    _worker(_rank, _world_size, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
