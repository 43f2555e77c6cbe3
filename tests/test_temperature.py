"""``temperature=`` on the per-token statistics: every statistic is that of ``z' / T`` (``z'``
the softcapped logits), with exact gradients, on every path (NumPy core, torch ops, Triton in
its interpreter, double backward, ``torch.func``, ``torch.compile``, the vocabulary-parallel
functions on 1 and 2 gloo ranks), against plain float64 compositions; bad temperatures are
refused naming the argument (on every rank, for the vocabulary-parallel functions).

This file is also the worker of its 2-rank group: ``python tests/test_temperature.py --worker
RANK WORLD PORT OUT``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crossentropy as ce
from _spawn import finish_worker, init_group, spawn_group

TEMPS = [0.35, 1.0, 1.7]
CAPS = [None, 3.0]
BAD = [0.0, -1.0, math.nan, math.inf, 1e-40, True, "0.7"]


def _np_reference(z, t, cap, temp, ignore=-100):
    """float64 statistics of ``(cap · tanh(z / cap)) / temp`` in plain NumPy."""
    zc = z if cap is None else cap * np.tanh(z / cap)
    zz = zc / temp
    m = zz.max(axis=-1, keepdims=True)
    lse = (m + np.log(np.exp(zz - m).sum(-1, keepdims=True)))[..., 0]
    logp = zz - lse[..., None]
    p = np.exp(logp)
    keep = t != ignore
    picked = np.take_along_axis(logp, np.where(keep, t, 0)[..., None], -1)[..., 0]
    return np.where(keep, picked, 0.0), -(p * logp).sum(-1), lse, zz.argmax(-1)


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("temp", TEMPS)
def test_numpy_statistics_are_those_of_the_tempered_logits(cap, temp):
    rng = np.random.default_rng(3)
    z = rng.normal(size=(6, 11)) * 3
    t = rng.integers(0, 11, 6)
    t[::3] = -100
    got = ce.token_stats(z, t, softcap=cap, temperature=temp)
    for a, b in zip(got[:3], _np_reference(z, t, cap, temp)[:3], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(got.argmax, _np_reference(z, t, cap, temp)[3])


@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("temp", [0.35, 1.7])
def test_numpy_vjp_matches_finite_differences(cap, temp):
    rng = np.random.default_rng(4)
    z = rng.normal(size=(4, 7)) * 2
    t = np.array([1, -100, 6, 0])
    a, b, c = rng.normal(size=(3, 4))

    def f(zv):
        o = ce.token_stats(zv, t, softcap=cap, temperature=temp)
        return float((a * o.logprob + b * o.entropy + c * o.lse).sum())

    g = ce.token_stats_vjp(z, t, a, b, c, softcap=cap, temperature=temp)
    fd = np.zeros_like(z)
    eps = 1e-6
    for i in range(z.shape[0]):
        for j in range(z.shape[1]):
            zp, zm = z.copy(), z.copy()
            zp[i, j] += eps
            zm[i, j] -= eps
            fd[i, j] = (f(zp) - f(zm)) / (2 * eps)
    np.testing.assert_allclose(g, fd, atol=1e-8)


def test_temperature_one_changes_nothing():
    rng = np.random.default_rng(5)
    z, t = rng.normal(size=(3, 5)), np.array([0, 4, 2])
    for a, b in zip(ce.token_stats(z, t), ce.token_stats(z, t, temperature=1.0), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("bad", BAD)
def test_numpy_refuses_bad_temperatures(bad):
    z, t = np.zeros((2, 3)), np.array([0, 1])
    with pytest.raises((TypeError, ValueError), match="temperature"):
        ce.token_stats(z, t, temperature=bad)
    with pytest.raises((TypeError, ValueError), match="temperature"):
        ce.token_stats_vjp(z, t, d_logprob=1.0, temperature=bad)


# --------------------------------------------------------------------------------------- torch

torch = pytest.importorskip("torch")


def _torch_reference(z, t, cap, temp):
    zc = z if cap is None else cap * torch.tanh(z / cap)
    zz = zc / temp
    logp = zz.log_softmax(-1)
    keep = t != -100
    picked = logp.gather(-1, torch.where(keep, t, 0).unsqueeze(-1)).squeeze(-1)
    return (
        torch.where(keep, picked, 0.0),
        -(logp.exp() * logp).sum(-1),
        torch.logsumexp(zz, -1),
    )


def _impls():
    from crossentropy.torch import _backend

    ok = _backend.triton_available() and _backend.triton_interpreted()
    return ["torch", "triton"] if ok else ["torch"]


def _case(seed, dtype):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(9, 37, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, 37, (9,), generator=g)
    t[::4] = -100
    ups = torch.randn(3, 9, generator=g, dtype=torch.float64)
    return z.to(dtype), t, ups.to(dtype)


@pytest.mark.parametrize("impl", _impls())
@pytest.mark.parametrize("cap", CAPS)
@pytest.mark.parametrize("temp", TEMPS)
def test_torch_logits_and_linear_match_the_float64_composition(impl, cap, temp):
    import crossentropy.torch as ct

    dtype = torch.float64 if impl == "torch" else torch.float32
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    z, t, (a, b, c) = _case(7, dtype)
    x = z.clone().requires_grad_()
    before = x.detach().clone()
    out = ct.token_stats(x, t, softcap=cap, temperature=temp, impl=impl)
    assert torch.equal(x.detach(), before), "the logits are not modified"
    (g,) = torch.autograd.grad((a * out.logprob + b * out.entropy + c * out.lse).sum(), x)
    zr = z.double().requires_grad_()
    ref = _torch_reference(zr, t, cap, temp)
    (gr,) = torch.autograd.grad(
        (a.double() * ref[0] + b.double() * ref[1] + c.double() * ref[2]).sum(), zr
    )
    for got, want in zip((out.logprob, out.entropy, out.lse), ref, strict=True):
        torch.testing.assert_close(got.double(), want.detach(), rtol=tol, atol=tol)
    torch.testing.assert_close(g.double(), gr, rtol=tol, atol=tol)
    zc = z if cap is None else cap * torch.tanh(z / cap)
    assert torch.equal(out.argmax, (zc / temp).argmax(-1))

    gen = torch.Generator().manual_seed(8)
    h = torch.randn(9, 5, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    w = torch.randn(37, 5, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    o2 = ct.linear_token_stats(h, w, t, softcap=cap, temperature=temp, impl=impl, chunk_size=4)
    got = torch.autograd.grad((a * o2.logprob + b * o2.entropy + c * o2.lse).sum(), (h, w))
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    r2 = _torch_reference(hr @ wr.T, t, cap, temp)
    want = torch.autograd.grad(
        (a.double() * r2[0] + b.double() * r2[1] + c.double() * r2[2]).sum(), (hr, wr)
    )
    for gg, ww in zip(got, want, strict=True):
        torch.testing.assert_close(gg.double(), ww, rtol=10 * tol, atol=10 * tol)


@pytest.mark.parametrize("cap", CAPS)
def test_torch_double_backward_and_torch_func(cap):
    import crossentropy.torch as ct

    z, t, (a, b, c) = _case(9, torch.float64)
    z = z[:4, :6].clone().requires_grad_()
    t = torch.tensor([1, -100, 5, 0])
    a, b, c = a[:4], b[:4], c[:4]

    def loss(x):
        out = ct.token_stats(x, t, softcap=cap, temperature=0.6)
        return (a * out.logprob + b * out.entropy + c * out.lse).sum()

    assert torch.autograd.gradcheck(loss, (z,))
    assert torch.autograd.gradgradcheck(loss, (z,))
    (g,) = torch.autograd.grad(loss(z), z)
    torch.testing.assert_close(torch.func.grad(loss)(z.detach()), g, rtol=1e-12, atol=1e-12)


def test_torch_compile_fullgraph():
    import crossentropy.torch as ct

    z, t, _ = _case(10, torch.float32)

    def f(x):
        out = ct.token_stats(x, t, temperature=0.7, softcap=30.0)
        return out.logprob.sum() + 0.1 * out.entropy.sum()

    x1 = z.clone().requires_grad_()
    x2 = z.clone().requires_grad_()
    torch._dynamo.reset()
    got = torch.compile(f, fullgraph=True, backend="aot_eager")(x1)
    want = f(x2)
    torch.testing.assert_close(got, want)
    got.backward()
    want.backward()
    torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("bad", BAD)
def test_torch_refuses_bad_temperatures(bad):
    import crossentropy.torch as ct

    z, t = torch.zeros(2, 3), torch.tensor([0, 1])
    with pytest.raises((TypeError, ValueError), match="temperature"):
        ct.token_stats(z, t, temperature=bad)
    with pytest.raises((TypeError, ValueError), match="temperature"):
        ct.linear_token_stats(torch.zeros(2, 4), torch.zeros(3, 4), t, temperature=bad)


def test_vocab_parallel_one_rank_group_in_process():
    """A group of one rank: the vocabulary-parallel functions equal the single-process ones
    with the same temperature."""
    import torch.distributed as dist

    import crossentropy.torch as ct

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        z, t, (a, b, _) = _case(11, torch.float64)
        x1, x2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        o1 = ct.vocab_parallel_token_stats(x1, t, temperature=0.5, softcap=3.0)
        o2 = ct.token_stats(x2, t, temperature=0.5, softcap=3.0)
        for u, v in zip(o1, o2, strict=True):
            torch.testing.assert_close(u, v, rtol=1e-13, atol=1e-13)
        (a * o1.logprob + b * o1.entropy).sum().backward()
        (a * o2.logprob + b * o2.entropy).sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-13, atol=1e-13)
        with pytest.raises(ValueError, match="temperature"):
            ct.vocab_parallel_token_stats(z, t, temperature=0.0)
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------- 2 gloo ranks

WIDTHS = [4, 9]  # 13 classes, uneven


def _worker_cases(rank: int) -> dict[str, Any]:
    import crossentropy.torch as ct

    g = torch.Generator().manual_seed(12)
    h = torch.randn(7, 5, generator=g, dtype=torch.float64)
    w = torch.randn(13, 5, generator=g, dtype=torch.float64)
    t = torch.randint(0, 13, (7,), generator=g)
    t[2] = -100
    a = torch.randn(7, generator=g, dtype=torch.float64)
    lo, hi = sum(WIDTHS[:rank]), sum(WIDTHS[: rank + 1])
    hs, ws = h.clone().requires_grad_(), w[lo:hi].clone().requires_grad_()
    out = ct.vocab_parallel_linear_token_stats(hs, ws, t, temperature=0.6, softcap=2.5)
    (a * out.logprob - 0.1 * out.entropy).sum().backward()
    hf, wf = h.clone().requires_grad_(), w.clone().requires_grad_()
    ref = ct.linear_token_stats(hf, wf, t, temperature=0.6, softcap=2.5)
    (a * ref.logprob - 0.1 * ref.entropy).sum().backward()
    assert wf.grad is not None and hs.grad is not None and ws.grad is not None
    errors = {
        "stats": max(float((u - v).abs().max()) for u, v in zip(out[:3], ref[:3], strict=True)),
        "argmax": bool(torch.equal(out.argmax, ref.argmax)),
        "d_hidden": float((hs.grad - hf.grad).abs().max()),
        "d_weight": float((ws.grad - wf.grad[lo:hi]).abs().max()),
    }
    try:  # a different temperature on one rank: the same error on every rank
        ct.vocab_parallel_linear_token_stats(h, w[lo:hi], t, temperature=0.6 if rank == 0 else 0.7)
        errors["mismatch"] = "no error"
    except ValueError as exc:
        errors["mismatch"] = str(exc)
    return errors


def _worker(rank: int, world: int, port: int, out: Path) -> None:
    init_group(rank, world, port, 30.0)
    finish_worker(out, {"rank": rank, **_worker_cases(rank)})


@pytest.mark.slow
def test_vocab_parallel_two_ranks(tmp_path):
    results = spawn_group(__file__, 2, tmp_path, 120.0)
    for res in results:
        assert res["stats"] < 1e-12 and res["argmax"], res
        assert res["d_hidden"] < 1e-12 and res["d_weight"] < 1e-12, res
        assert "temperature" in res["mismatch"], res
    assert results[0]["mismatch"] == results[1]["mismatch"]


if __name__ == "__main__" and len(sys.argv) == 6 and sys.argv[1] == "--worker":
    _rank, _world, _port = (int(v) for v in sys.argv[2:5])
    _worker(_rank, _world, _port, Path(sys.argv[5]) / f"rank{_rank}.json")
