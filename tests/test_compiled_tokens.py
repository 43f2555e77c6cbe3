"""The compiled CPU kernels of the per-token statistics (``crossentropy.torch._compiled``:
``token_row_stats`` and ``token_vjp``).

Each case runs the same call through the compiled kernels (``impl="auto"`` with the size
threshold at 0) and through the torch-op kernels (``impl="torch"``), and compares both with a
float64 reference; besides, the kernels are shown to run (not silently declined), to keep the
accuracy of confident rows, to decline under a dispatch mode, and to cover vocabulary shards
(``shard_offset``) and the linear form's backward.
"""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")

from crossentropy.torch import (  # noqa: E402
    _compiled,
    _token_ops,
    cross_entropy,
    linear_token_stats,
    token_stats,
)

pytestmark = pytest.mark.usefixtures("force_fused")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
#: relative to the largest entry: a few ulps of the compute dtype (sums in another order);
#: bfloat16/float16 gradients are rounded to their dtype
TOL = {torch.float64: 1e-12, torch.float32: 5e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}

OPTIONS: list[dict[str, Any]] = [
    {},
    {"softcap": 20.0},
    {"temperature": 0.7},
    {"softcap": 10.0, "temperature": 1.3, "ignore_index": 5},
]
#: which statistics the loss uses: (logprob, entropy, lse) coefficients
UPSTREAMS = [(1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0), (1.0, -0.01, 1e-3)]


def _logits(n: int, c: int, dtype: Any, seed: int = 0) -> Any:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    x[0, :] = float("-inf")  # a row of only -inf logits (ignored below)
    x[1, :7] = float("-inf")  # some -inf logits
    x[2, 5] = x[2, 9] = x[2].max() + 1  # a tie for the argmax: the first index
    return x.to(dtype)


def _target(n: int, c: int, ignore_index: int = -100) -> Any:
    t = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(1))
    t[0] = ignore_index
    t[3::5] = ignore_index
    return t


def _loss(out: Any, ups: tuple[float, float, float], w: Any) -> Any:
    a, b, c = ups
    # the -inf row's entropy is NaN and its lse -inf: a zero upstream there (ignored row)
    live = torch.isfinite(out.lse)
    ent = torch.where(live, out.entropy, 0.0)
    lse = torch.where(live, out.lse, 0.0)
    return (w * (a * out.logprob + b * ent + c * lse)).sum()


def _call(impl: str, x: Any, t: Any, ups: tuple[float, float, float], kw: dict[str, Any]) -> Any:
    x = x.detach().clone().requires_grad_()
    out = token_stats(x, t, impl=impl, **kw)
    w = torch.linspace(-1, 2, x.shape[0], dtype=torch.float64).to(out.logprob.dtype)
    _loss(out, ups, w).backward()
    return out, x.grad


def _rel(a: Any, b: Any) -> float:
    a, b = a.double(), b.double()
    same = (a == b) | (torch.isnan(a) & torch.isnan(b))
    diff = torch.where(same, 0.0, (a - b).abs())
    scale = torch.where(torch.isfinite(b), b.abs(), 0.0).max().clamp_min(1e-300)
    return float(diff.max() / scale)


def _ran(kind: str) -> bool:
    return any(key[0] == kind for key in _compiled._working)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kw", OPTIONS, ids=lambda k: ",".join(k) or "plain")
@pytest.mark.parametrize("ups", UPSTREAMS, ids=["logprob", "entropy", "lse", "all"])
def test_token_stats_match_the_torch_op_kernels(
    dtype: Any, kw: dict[str, Any], ups: tuple[float, float, float]
) -> None:
    n, c = 23, 300
    ii = kw.get("ignore_index", -100)
    x, t = _logits(n, c, dtype), _target(n, c, ii)
    ours, g_ours = _call("auto", x, t, ups, kw)
    ref, g_ref = _call("torch", x, t, ups, kw)
    exact, g_exact = _call("torch", x.double(), t, ups, kw)
    assert _ran("tstats") and _ran("tvjp")
    assert torch.equal(ours.argmax, ref.argmax)
    assert int(ours.argmax[2]) == 5
    tol = TOL[dtype]
    for a, b, e in zip(ours[:3], ref[:3], exact[:3], strict=True):
        assert a.dtype == b.dtype
        assert torch.equal(torch.isnan(a), torch.isnan(b))
        assert _rel(a, e) <= 4 * tol + _rel(b, e), (_rel(a, e), _rel(b, e))
    assert g_ours.dtype == dtype and torch.isfinite(g_ours).all()
    assert torch.equal(g_ours[0], torch.zeros_like(g_ours[0]))  # the ignored -inf row
    assert _rel(g_ours, g_exact) <= 4 * tol + _rel(g_ref, g_exact)


def test_float64_agrees_to_rounding_with_the_torch_op_kernels() -> None:
    x, t = _logits(40, 513, torch.float64, seed=3), _target(40, 513)
    for kw in OPTIONS:
        ii = kw.get("ignore_index", -100)
        t = _target(40, 513, ii)
        ours, g_ours = _call("auto", x, t, (1.0, -0.3, 0.2), kw)
        ref, g_ref = _call("torch", x, t, (1.0, -0.3, 0.2), kw)
        for a, b in zip(ours[:3], ref[:3], strict=True):
            assert _rel(a, b) < 1e-13
        assert _rel(g_ours, g_ref) < 1e-13


def test_non_finite_rows_as_the_torch_op_kernels() -> None:
    """NaN and +inf logits: the same NaN pattern in every statistic and the same argmax (the
    first NaN counts as the largest)."""
    x, t = _logits(12, 64, torch.float32), _target(12, 64)
    x[4, 10] = float("nan")
    x[4, 20] = float("nan")
    x[5, 3] = float("inf")
    x[6, :] = float("nan")
    ours = token_stats(x, t)
    ref = token_stats(x, t, impl="torch")
    assert _ran("tstats")
    assert int(ours.argmax[4]) == 10 and torch.equal(ours.argmax, ref.argmax)
    for a, b in zip(ours[:3], ref[:3], strict=True):
        assert torch.equal(torch.isnan(a), torch.isnan(b)), (a, b)
        fin = torch.isfinite(b)
        assert torch.equal(torch.isfinite(a), fin)
        assert torch.allclose(a[fin], b[fin], rtol=1e-6, atol=1e-6)


def test_confident_rows_keep_their_accuracy() -> None:
    """A row whose max leads the rest by 20 over 32768 classes: each other ``e^{z−m}`` is below
    half an ulp of 1, so a vector lane that adds them to the max's 1 loses them. The entropy,
    ``lse`` and a probability target's loss stay within float32 rounding of float64."""
    g = torch.Generator().manual_seed(21)
    rows, classes = 8, 32768
    z = torch.randn(rows, classes, generator=g, dtype=torch.float64)
    top = torch.randint(0, classes, (rows,), generator=g)
    z[torch.arange(rows), top] += 20
    x = z.float()
    out = token_stats(x, top)
    exact = token_stats(x.double(), top, impl="torch")
    assert _ran("tstats")
    # log s, s = 1 + 3e-4 (one float32 ulp of s: 1.2e-7): a lost sixteenth of the rest was
    # 1.6e-5 of s, in the log-probability and the entropy alike
    for a, b in ((out.logprob, exact.logprob), (out.entropy, exact.entropy)):
        assert float((a.double() - b).abs().max()) < 3e-7
    assert float((out.lse.double() - exact.lse).abs().max()) < 5e-6  # lse ≈ 20: ulp 1.9e-6
    # a probability target one-hot at the max: the loss is log s ≈ 3e-4
    p = torch.nn.functional.one_hot(top, classes).float()
    loss = cross_entropy(x, p, reduction="none")
    ref = cross_entropy(x.double(), p.double(), reduction="none", impl="torch")
    assert _ran("pstats")
    assert float((loss.double() - ref).abs().max()) < 3e-7


@pytest.mark.parametrize("offset", [0, 100, 250])
def test_vocabulary_shard_offsets(offset: int) -> None:
    """A shard's partial sums (``shard_offset``): the target's logit only where it lies in the
    shard, the argmax a column of the shard; forward and backward as the torch-op kernels."""
    n, c = 30, 128
    x = torch.randn(n, c, generator=torch.Generator().manual_seed(4))
    t = torch.randint(0, 400, (n,), generator=torch.Generator().manual_seed(5))
    t[::4] = -100
    args = (None, None, t, -100, 0, None, "token_stats")
    ours = _token_ops._forward_impl(x, *args, impl="auto", shard_offset=offset)
    ref = _token_ops._forward_impl(x, *args, impl="torch", shard_offset=offset)
    assert _ran("tstats")
    for a, b in zip(ours, ref, strict=True):
        assert torch.allclose(a.double(), b.double(), rtol=1e-6, atol=1e-6)
    lse = torch.logsumexp(x, -1) + 0.5  # as if other shards held more classes
    ent = torch.rand(n, generator=torch.Generator().manual_seed(6))
    ups = [torch.randn(n), torch.randn(n), torch.randn(n)]
    bwd = (t, lse, ent, *ups, -100, 0, None, True, False, False)
    d_ours = _token_ops._backward_impl(x, None, None, *bwd, impl="auto", shard_offset=offset)[0]
    d_ref = _token_ops._backward_impl(x, None, None, *bwd, impl="torch", shard_offset=offset)[0]
    assert _ran("tvjp")
    assert torch.allclose(d_ours, d_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("kw", [{}, {"softcap": 15.0, "temperature": 0.8}], ids=["plain", "opts"])
def test_linear_backward_column_chunks(dtype: Any, kw: dict[str, Any]) -> None:
    """``linear_token_stats``: each chunk's gradient from the compiled kernel over the chunk's
    column view (in place in float32; a float32 copy plus the rounded chunk in bfloat16), the
    gradients of hidden, weight and bias as the torch-op kernels'."""
    n, d, v = 50, 16, 96
    g = torch.Generator().manual_seed(7)
    h0 = torch.randn(n, d, generator=g).to(dtype)
    w0 = (torch.randn(v, d, generator=g) * 0.5).to(dtype)
    b0 = torch.randn(v, generator=g).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    t[::6] = -100
    adv = torch.randn(n, generator=g, dtype=torch.float64)
    grads = {}
    for impl in ("auto", "torch"):
        h, w, b = (p.clone().requires_grad_() for p in (h0, w0, b0))
        out = linear_token_stats(h, w, t, bias=b, chunk_size=16, impl=impl, **kw)
        loss = (adv.to(out.logprob.dtype) * (out.logprob - 0.1 * out.entropy)).sum()
        loss.backward()
        grads[impl] = (h.grad, w.grad, b.grad)
    assert _ran("tvjp")
    tol = TOL[dtype]
    for a, b in zip(grads["auto"], grads["torch"], strict=True):
        assert a.dtype == dtype
        assert _rel(a, b) <= 8 * tol, _rel(a, b)


def test_declined_under_a_dispatch_mode() -> None:
    """Dynamo compiles nothing under a Python dispatch mode: the torch-op kernels run the call
    and no variant is recorded as failed."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Passthrough(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            return func(*args, **(kwargs or {}))

    x, t = _logits(9, 70, torch.float32), _target(9, 70)
    failed = dict(_compiled._failed)
    with Passthrough():
        out = _token_ops._forward_impl(x, None, None, t, -100, 0, None, "token_stats", "auto")
    assert _compiled._failed == failed
    ref = _token_ops._forward_impl(x, None, None, t, -100, 0, None, "token_stats", "torch")
    for a, b in zip(out, ref, strict=True):
        assert torch.equal(a, b)


def test_no_recompile_for_new_shapes_or_upstreams() -> None:
    """Sizes are symbolic: new shapes and new upstream values reuse the compiled variants."""
    from torch._dynamo.utils import counters

    before = counters["stats"]["unique_graphs"]
    for n, c in ((17, 100), (33, 257), (64, 1000)):
        x, t = _logits(n, c, torch.float32, seed=n), _target(n, c)
        for ups in ((1.0, 0.5, 0.0), (2.0, -1.0, 0.0)):
            _call("auto", x, t, ups, {})
    first = counters["stats"]["unique_graphs"]
    x, t = _logits(91, 321, torch.float32, seed=9), _target(91, 321)
    _call("auto", x, t, (0.3, 0.7, 0.0), {})
    assert counters["stats"]["unique_graphs"] == first
    assert first - before <= 2  # at most the two variants' first compile in this process


def test_size_threshold_of_the_token_kernels(tuned: Any, spy_compiled: Any) -> None:
    """``Tuning.token_compiled_min_elements``: below it the torch-op kernels run (the compiled
    kernels are not asked), from it the compiled ones; the cross-entropy threshold
    (``compiled_min_elements``) does not apply to them."""
    calls = spy_compiled("token_row_stats", "token_vjp")
    x, t = _logits(16, 64, torch.float32), _target(16, 64)
    tuned(token_compiled_min_elements=16 * 64 + 1, compiled_min_elements=1 << 40)
    below, g_below = _call("auto", x, t, (1.0, -0.5, 0.0), {})
    assert calls == []
    tuned(token_compiled_min_elements=16 * 64, compiled_min_elements=1 << 40)
    above, g_above = _call("auto", x, t, (1.0, -0.5, 0.0), {})
    assert calls == ["token_row_stats", "token_vjp"]
    for a, b in zip(above[:3], below[:3], strict=True):
        assert _rel(a, b) < 1e-5
    assert _rel(g_above, g_below) < 1e-5
