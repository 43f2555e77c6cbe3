r"""The Triton kernels of the per-token statistics (:mod:`crossentropy.torch._triton_tokens`).

Run in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``, set in ``conftest.py``),
with ``Tuning.triton_block`` small so that every row crosses chunk boundaries
(vocabularies of one chunk less three, exactly one, one more, three and a bit). Each kernel is
checked against a float64 composition of plain torch ops (``logsumexp``, ``log_softmax``,
``gather``, the entropy, ``argmax``; autograd for the vector-Jacobian product), on rows that are
ignored, tied for the max, partly ``-inf``, entirely ``-inf``, softcapped and strided.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("triton")

import crossentropy.torch as cet  # noqa: E402
from conftest import tol  # noqa: E402
from crossentropy.torch import _triton as TR  # noqa: E402
from crossentropy.torch import _triton_tokens as TT  # noqa: E402
from crossentropy.torch._rows import token_finish  # noqa: E402
from crossentropy.torch._types import OP_VERSION  # noqa: E402

pytestmark = pytest.mark.skipif(
    not TR.INTERPRETED, reason="Triton on CPU tensors needs TRITON_INTERPRET=1"
)

BLOCK = 16
IGNORE = -100
CAP = 4.0
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
SHAPES = [(7, BLOCK - 3), (7, BLOCK), (8, BLOCK + 1), (9, 3 * BLOCK + 5)]
#: The statistics accumulate in float32 whatever the input: their error against float64
#: (relative to max(1, |value|)).
STATS_TOL = 1e-6
#: G's error against float64, relative to the largest |G| of the case, in float32; a
#: bfloat16/float16 G is also rounded once (the interpreter rounds to bfloat16 toward zero: a
#: whole ulp).
G_TOL = 1e-6
ULP = {torch.float32: 0.0, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}


@pytest.fixture(autouse=True)
def small_chunks(tuned):
    tuned(triton_block=BLOCK)


def _finish(parts, t, ignore):
    """The kernel's partial sums finished as the autograd Function does:
    ``(logprob, entropy, lse, argmax, lse_lo)``."""
    m, s, spread, zy, argmax = parts
    logprob, entropy, lse, lse_lo = token_finish(m, s, spread, zy, t != ignore)
    return logprob, entropy, lse, argmax, lse_lo


def _row_stats(x, t, ignore, **kw):
    return _finish(TT.token_row_stats(x, t, **kw), t, ignore)


def _case(shape, dtype, seed, *, scale=3.0, special=True):
    """Logits ``(R, C)`` and targets: every third row ignored; with ``special`` (R ≥ 4,
    C ≥ 4) row 1 has its max twice (first and last chunk), row 2 some ``-inf`` logits (not at
    its target) and row 3 (ignored) only ``-inf``."""
    rows, classes = shape
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, classes, generator=g) * scale
    t = torch.randint(0, classes, (rows,), generator=g)
    t[::3] = IGNORE
    if special:
        top = x[1].max() + 1.0
        x[1, 1] = top
        x[1, classes - 2] = top
        t[2] = 0
        x[2, 1::3] = float("-inf")
        x[3] = float("-inf")
    return x.to(dtype), t


def _capped(z, cap):
    return z if cap is None else cap * torch.tanh(z / cap)


def _reference(x, t, cap):
    """``(logprob, entropy, lse)`` of float64 ``x`` (differentiable) and the argmax."""
    z = _capped(x, cap)
    keep = t != IGNORE
    lse = torch.logsumexp(z, dim=-1)
    log_p = z - lse.unsqueeze(-1)
    p = log_p.exp()
    entropy = -(p * torch.where(p == 0, 0.0, log_p)).sum(-1)
    idx = torch.where(keep, t, 0).unsqueeze(-1)
    logprob = torch.where(keep, log_p.gather(-1, idx).squeeze(-1), 0.0)
    return logprob, entropy, lse, z.argmax(dim=-1)


def _close(got, exact, tol):
    """``got`` (float32) within ``tol · max(1, |exact|)`` of ``exact`` (float64), NaN and
    ±inf in the same places; returns the worst error so measured."""
    got = got.double()
    same = torch.isnan(got) == torch.isnan(exact)
    assert bool(same.all()), (got, exact)
    finite = torch.isfinite(exact)
    assert bool((got[~finite & ~torch.isnan(exact)] == exact[~finite & ~torch.isnan(exact)]).all())
    err = ((got - exact).abs() / exact.abs().clamp(min=1.0))[finite]
    worst = err.max().item() if err.numel() else 0.0
    assert worst <= tol, worst
    return worst


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize("cap", [None, CAP])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_stats_match_float64(shape, dtype, cap):
    x, t = _case(shape, dtype, seed=shape[1] + 3)
    logprob, entropy, lse, argmax, lse_lo = _row_stats(x, t, IGNORE, softcap=cap)
    assert [o.dtype for o in (logprob, entropy, lse, argmax, lse_lo)] == [torch.float32] * 3 + [
        torch.int64,
        torch.float32,
    ]
    ref = _reference(x.double(), t, cap)
    for got, exact in zip((logprob, entropy, lse), ref[:3], strict=True):
        _close(got, exact, STATS_TOL)
    assert torch.equal(argmax, ref[3])
    assert bool((logprob[t == IGNORE] == 0).all())
    if cap is None:  # the ignored row of only -inf logits
        assert lse[3].item() == float("-inf") and torch.isnan(entropy[3]) and logprob[3] == 0
        assert lse_lo[3].item() == 0.0 and argmax[3].item() == 0
    assert argmax[1].item() == 1  # the first of two equal maxima, chunks apart
    # lse_lo is the exact rounding error of lse = m + log s: at most half an ulp of lse
    finite = torch.isfinite(lse)
    ulp = torch.nextafter(lse[finite].abs(), torch.tensor(float("inf"))) - lse[finite].abs()
    assert bool((lse_lo[finite].abs() <= ulp / 2).all())


def test_stats_ties_and_nan_follow_torch_argmax():
    """``argmax`` is the first index of the max within a chunk and across chunks, of the first
    NaN in a row with one (``torch.argmax``), and 0 for a row of only ``-inf``."""
    v = 3 * BLOCK + 5
    x = torch.zeros(6, v)
    x[0, [5, 9]] = 2.0  # a tie within a chunk
    x[1, [BLOCK + 2, 2 * BLOCK + 1]] = 2.0  # across chunks, the first not in the first chunk
    x[2, [0, v - 1]] = 7.0  # first and last column
    x[3, 7] = float("nan")
    x[3, BLOCK + 4] = 9.0
    x[3, 2 * BLOCK] = float("nan")
    x[4] = float("-inf")
    x[5, v - 1] = float("inf")
    t = torch.full((6,), IGNORE)
    got = _row_stats(x, t, IGNORE)
    assert got[3].tolist() == x.argmax(dim=-1).tolist() == [5, BLOCK + 2, 0, 7, 0, v - 1]
    for bf in (torch.bfloat16, torch.float16):
        assert torch.equal(_row_stats(x.to(bf), t, IGNORE)[3], x.argmax(dim=-1))
    assert torch.isnan(got[2][3]) and got[2][5].item() == float("inf")  # as logsumexp


@pytest.mark.parametrize("dtype", DTYPES)
def test_stats_strided_rows_and_out(dtype):
    """Rows of any stride and classes of any stride (a column view ``(C, R).t()``, every other
    column of a wider buffer), written into slices of given outputs."""
    rows, classes = 9, 2 * BLOCK + 3
    x, t = _case((rows, classes), dtype, seed=21)
    ref = _reference(x.double(), t, CAP)
    views = [
        x.t().contiguous().t(),  # row stride 1, class stride R
        torch.zeros(rows, 2 * classes + 1, dtype=dtype)[:, 1 : 2 * classes : 2].copy_(x),
    ]
    for view in views:
        assert not view.is_contiguous()
        outs = (*(torch.zeros(rows) for _ in range(4)), torch.zeros(rows, dtype=torch.int64))
        parts = TT.token_row_stats(view[2:], t[2:], softcap=CAP, out=tuple(o[2:] for o in outs))
        assert all(a.data_ptr() == o[2:].data_ptr() for a, o in zip(parts, outs, strict=True))
        assert all(bool((o[:2] == 0).all()) for o in outs)
        got = _finish(parts, t[2:], IGNORE)
        for a, exact in zip(got[:3], ref[:3], strict=True):
            _close(a, exact[2:], STATS_TOL)
        assert torch.equal(got[3], ref[3][2:])


@pytest.mark.parametrize("offset", [20.0, 1e3, 1e4])
def test_stats_large_and_confident_logits(offset):
    """Logits far from 0 and rows with one dominant class keep float32 accuracy: the max is
    the reference point, exact; ``H = log s + E/s`` has no cancellation."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, 2 * BLOCK + 3, generator=g) * 3 + offset
    x[::2, 4] += 25.0  # confident rows: p ≈ 1 at column 4
    t = torch.randint(0, x.shape[1], (6,), generator=g)
    lp, ent, lse, _, lo = _row_stats(x, t, IGNORE)
    ref = _reference(x.double(), t, None)
    _close(lp, ref[0], STATS_TOL)
    _close(lse, ref[2], STATS_TOL)
    # lse + lse_lo is m + log s unrounded: accurate beyond lse's own ulp (6e-5 at 1e3)
    assert (lse.double() + lo.double() - ref[2]).abs().max() <= 2e-6 * max(1.0, offset / 1e3)
    # the entropy of a confident row is tiny: relative to itself, not to 1
    assert ((ent.double() - ref[1]).abs() <= 1e-5 * ref[1] + 1e-7).all()


# --------------------------------------------------------------------------- VJP

UPSTREAMS = [("a",), ("b",), ("c",), ("a", "b"), ("a", "b", "c")]


def _upstreams(rows, which, seed):
    g = torch.Generator().manual_seed(seed)
    ups = [torch.randn(rows, generator=g) for _ in range(3)]
    return [u if name in which else None for u, name in zip(ups, "abc", strict=True)]


def _reference_vjp(x, t, ups, cap):
    """``∂/∂x Σ a·logprob + b·entropy + c·lse`` by float64 autograd (rows of only ``-inf``
    logits left out: the kernel gives them 0, autograd NaN)."""
    xd = x.double()
    live = ~torch.isneginf(xd).all(dim=-1) if cap is None else torch.ones(len(t), dtype=torch.bool)
    z = xd[live].clone().requires_grad_()
    stats = _reference(z, t[live], cap)[:3]
    loss = sum(
        (u.double()[live] * s).sum() for u, s in zip(ups, stats, strict=True) if u is not None
    )
    (grad,) = torch.autograd.grad(loss, z)
    out = torch.zeros_like(xd)
    out[live] = grad
    return out


def _check_g(g, exact, dtype):
    """``g`` within one rounding to ``dtype`` plus ``G_TOL`` of the largest entry of
    ``exact``; returns the worst error relative to that entry."""
    assert bool(torch.isfinite(g).all())
    scale = exact.abs().max().item()
    err = (g.double() - exact).abs()
    assert bool((err <= ULP[dtype] * exact.abs() + G_TOL * scale).all()), err.max().item() / scale
    return err.max().item() / scale


def _vjp(x, t, ups, cap, **kw):
    stats = _row_stats(x, t, IGNORE, softcap=cap)
    return TT.token_vjp(x, t, IGNORE, stats[2], stats[1], *ups, softcap=cap, lse_lo=stats[4], **kw)


@pytest.mark.parametrize("cap", [None, CAP])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_vjp_matches_float64_autograd(shape, dtype, cap):
    x, t = _case(shape, dtype, seed=shape[1] + 11)
    ups = _upstreams(shape[0], "abc", seed=shape[1])
    g = _vjp(x, t, ups, cap)
    assert g.dtype == dtype and g.shape == x.shape
    _check_g(g, _reference_vjp(x, t, ups, cap), dtype)
    if cap is None:
        assert bool((g[3] == 0).all())  # the ignored row of only -inf logits: 0, not NaN
        assert bool((g[2, 1::3] == 0).all())  # a -inf logit of a kept row


@pytest.mark.parametrize("cap", [None, CAP])
@pytest.mark.parametrize("which", UPSTREAMS)
def test_vjp_each_upstream(which, cap):
    """Each of ``a, b, c`` absent is its term left out (a ``constexpr`` switch), the rest
    exact; with the forward's ``lse_lo`` or without it (a graph compiled before it)."""
    x, t = _case((8, 2 * BLOCK + 3), torch.float32, seed=7)
    ups = _upstreams(8, which, seed=8)
    exact = _reference_vjp(x, t, ups, cap)
    _check_g(_vjp(x, t, ups, cap), exact, torch.float32)
    stats = _row_stats(x, t, IGNORE, softcap=cap)
    g = TT.token_vjp(x, t, IGNORE, stats[2], stats[1], *ups, softcap=cap)
    scale = exact.abs().max()
    assert (g.double() - exact).abs().max() <= 2e-5 * scale
    if cap is None:
        assert bool((g[3] == 0).all())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_vjp_low_precision_into_a_float32_buffer(dtype):
    """``out`` a float32 buffer: ``G`` of bfloat16/float16 logits unrounded (the linear path
    keeps it for ``d weight`` and ``d bias``)."""
    x, t = _case((9, 3 * BLOCK + 5), dtype, seed=13)
    ups = _upstreams(9, "abc", seed=14)
    out = torch.full(x.shape, float("nan"))
    g = _vjp(x, t, ups, CAP, out=out)
    assert g is out
    _check_g(g, _reference_vjp(x, t, ups, CAP), torch.float32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_vjp_strided_and_in_place(dtype):
    """Strided logits into a strided ``out``, and ``out`` the logits themselves (each chunk
    is read before it is overwritten): the same ``G``."""
    rows, classes = 8, 2 * BLOCK + 3
    x, t = _case((rows, classes), dtype, seed=17)
    ups = _upstreams(rows, "abc", seed=18)
    ref = _vjp(x, t, ups, CAP)
    _check_g(ref, _reference_vjp(x, t, ups, CAP), dtype)
    col_view = x.t().contiguous().t()
    wide = torch.zeros(rows, 2 * classes + 1, dtype=dtype)[:, 1 : 2 * classes : 2].copy_(x)
    for view in (col_view, wide):
        out = torch.empty(classes, rows, dtype=dtype).t()
        assert torch.equal(_vjp(view, t, ups, CAP, out=out), ref)
        inplace = view.clone() if view is col_view else view
        got = _vjp(inplace, t, ups, CAP, out=inplace)
        assert got is inplace and torch.equal(got, ref)


@pytest.mark.parametrize("offset", [20.0, 1e3, 1e4])
def test_vjp_entropy_gradient_of_large_and_confident_logits(offset):
    """The entropy's gradient ``−p (log p + H)`` is a small difference at the max of a
    confident row: ``log p = (z − lse) − lse_lo`` keeps it to float32 accuracy."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 2 * BLOCK + 3, generator=g) * 3 + offset
    x[::2, 4] += 20.0
    t = torch.randint(0, x.shape[1], (6,), generator=g)
    ups = _upstreams(6, "b", seed=10)
    got = _vjp(x, t, ups, None)
    exact = _reference_vjp(x, t, ups, None)
    err = (got.double() - exact).abs().max(dim=-1).values
    assert bool((err <= 2e-6 * exact.abs().max(dim=-1).values).all()), err


def test_dead_row_is_zero_for_any_upstream():
    """An ignored row of only ``-inf`` logits: ``G = 0`` exactly for large upstreams too."""
    x, t = _case((7, BLOCK + 1), torch.float32, seed=3)
    for which in ("a", "b", "c", "abc"):
        ups = [None if u is None else u * 1e30 for u in _upstreams(7, which, seed=4)]
        g = _vjp(x, t, ups, None)
        assert bool((g[3] == 0).all()) and bool(torch.isfinite(g).all())


def test_refusals():
    x = torch.randn(3, 5, dtype=torch.float64)
    t = torch.tensor([0, 1, 2])
    with pytest.raises(TypeError, match="float64 runs on the torch path"):
        TT.token_row_stats(x, t)
    with pytest.raises(TypeError, match="float64 runs on the torch path"):
        TT.token_vjp(x, t, IGNORE, t.double(), t.double(), None, None, t.double())
    with pytest.raises(ValueError, match="rows"):
        TT.token_row_stats(torch.randn(3, 0), t)
    with pytest.raises(ValueError, match="out must"):
        TT.token_row_stats(x.float(), t, out=(torch.empty(3),) * 5)
    with pytest.raises(ValueError, match="out must"):
        TT.token_vjp(x.float(), t, IGNORE, t.float(), t.float(), None, None, t.float(), out=x)


def test_no_rows():
    x = torch.randn(0, 5)
    t = torch.zeros(0, dtype=torch.int64)
    assert all(o.shape == (0,) for o in TT.token_row_stats(x, t))
    assert TT.token_vjp(x, t, IGNORE, x[:, 0], x[:, 0], x[:, 0], None, None).shape == (0, 5)


# --------------------------------------------------------------------------- compiled for CUDA

_COMPILE_FOR_SM90 = r"""
import inspect
import itertools
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from crossentropy.torch import _triton_tokens as TT

FLAGS = {"HAS_LO", "HAS_A", "HAS_B", "HAS_C", "SOFTCAP", "BLOCK"}
for name, on in itertools.product(("_stats_kernel", "_vjp_kernel"), (True, False)):
    kernel = getattr(TT, name)
    params = list(inspect.signature(kernel.fn).parameters)
    sig = {}
    for p in params:
        if p in FLAGS:
            sig[p] = "constexpr"
        elif p in ("X", "G"):
            sig[p] = "*bf16"
        elif p in ("T", "AM_out"):
            sig[p] = "*i64"
        elif p[0].isupper() and p != "V":
            sig[p] = "*fp32"
        elif p in ("cap", "inv_cap", "log_floor"):
            sig[p] = "fp32"
        else:
            sig[p] = "i32" if p == "V" else "i64"
    flags = sorted(p for p in FLAGS if p in params)
    const = {(params.index(p),): 1024 if p == "BLOCK" else on for p in flags}
    triton.compile(ASTSource(fn=kernel, signature=sig, constexprs=const),
                   target=GPUTarget("cuda", 90, 32))
    print(name, on, *flags)
"""


def test_kernels_compile_for_cuda():
    """Both kernels compile for an H100 (sm_90) with Triton's own ptxas, no GPU needed, every
    switch on and every switch off: what the interpreter cannot check (types across the
    ``constexpr`` branches, loop-carried scalars, the int64 index reductions) lowers."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    src = os.path.dirname(os.path.dirname(os.path.dirname(TT.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-4000:]
    compiled = run.stdout.split("\n")
    assert sum(line.startswith("_stats_kernel") for line in compiled) == 2
    assert sum(line.startswith("_vjp_kernel") for line in compiled) == 2
    assert "HAS_B" in run.stdout and "SOFTCAP" in run.stdout


def test_same_block_knob(tuned):
    """``Tuning.triton_block`` sets these kernels' chunk too: a whole-row chunk gives the same
    statistics as chunks of 16 classes, to float32 rounding."""
    x, t = _case((7, 3 * BLOCK + 5), torch.float32, seed=30)
    small = _row_stats(x, t, IGNORE)
    tuned(triton_block=64)
    whole = _row_stats(x, t, IGNORE)
    for a, b in zip(small[:3], whole[:3], strict=True):
        torch.testing.assert_close(a, b, rtol=2e-6, atol=2e-6, equal_nan=True)
    assert torch.equal(small[3], whole[3])


# --------------------------------------------------------------------------- end to end

F = torch.nn.functional


def _end_to_end(fn, inputs, impl, ups, **kw):
    """Values of ``fn(*inputs, impl=impl)`` and the gradients of every floating input for the
    upstream ``ups`` of ``logprob, entropy, lse``."""
    leaves = [a.clone().requires_grad_() if a.is_floating_point() else a for a in inputs]
    out = fn(*leaves, impl=impl, **kw)
    loss = sum((u * o).sum() for u, o in zip(ups, out[:3], strict=True))
    loss.backward()
    grads = [a.grad for a in leaves if a.is_floating_point()]
    return [o.detach() for o in out], grads


def _agree(got, ref, dtype, tol=2e-6):
    """Triton against torch ops: within ``tol`` of the largest entry, plus one ulp of a
    bfloat16/float16 result (the interpreter rounds to bfloat16 toward zero)."""
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if not got.is_floating_point():
        assert torch.equal(got, ref)
        return
    g, r = got.double(), ref.double()
    assert bool((torch.isnan(g) == torch.isnan(r)).all())
    inf = torch.isinf(r)
    assert bool((g[inf] == r[inf]).all())
    ok = torch.isfinite(r)
    scale = r[ok].abs().max().clamp(min=1.0)
    ulp = ULP[dtype] if got.dtype == dtype else 0.0
    assert bool(((g - r).abs()[ok] <= ulp * r.abs()[ok] + tol * scale).all())


@pytest.mark.parametrize("cap", [None, CAP])
@pytest.mark.parametrize("dtype", DTYPES)
def test_token_stats_impl_triton_matches_torch(dtype, cap):
    """``token_stats(impl="triton")``: the values and the gradient of ``impl="torch"``, on a
    3-d batch with ignored, tied, partly and entirely ``-inf`` rows, and on rows of a column
    view (strided logits read in place)."""
    x, t = _case((9, 3 * BLOCK + 5), dtype, seed=41)
    g = torch.Generator().manual_seed(42)
    ups = [torch.randn(9, generator=g) for _ in range(3)]
    cases = [
        (x.reshape(3, 3, -1), t.reshape(3, 3), [u.reshape(3, 3) for u in ups]),
        (x.t().contiguous().t(), t, ups),
    ]
    for logits, target, up in cases:
        tri = _end_to_end(cet.token_stats, (logits, target), "triton", up, softcap=cap)
        ref = _end_to_end(cet.token_stats, (logits, target), "torch", up, softcap=cap)
        for a, b in zip(tri[0] + tri[1], ref[0] + ref[1], strict=True):
            _agree(a, b, dtype)
    # and the gradient against float64 autograd
    _check_g(tri[1][0], _reference_vjp(x, t, ups, cap), dtype)


@pytest.mark.parametrize("cap", [None, CAP])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_linear_token_stats_impl_triton_matches_torch(dtype, bias, cap):
    """``linear_token_stats(impl="triton")`` in chunks of 4 rows (the last one short): values,
    ``d hidden``, ``d weight`` and ``d bias`` of ``impl="torch"``; the chunk's logits are the
    same matmul, row-major instead of transposed (a bfloat16/float16 logit may round the
    other way: those compare at the dtype's tolerance)."""
    rows, classes, feats = 11, 2 * BLOCK + 3, 6
    g = torch.Generator().manual_seed(43)
    h = torch.randn(rows, feats, generator=g).to(dtype)
    w = torch.randn(classes, feats, generator=g).to(dtype)
    b = torch.randn(classes, generator=g).to(dtype) if bias else None
    t = torch.randint(0, classes, (rows,), generator=g)
    t[::4] = IGNORE
    ups = [torch.randn(rows, generator=g) for _ in range(3)]

    def fn(h, w, t, b=None, **kw):
        return cet.linear_token_stats(h, w, t, b, chunk_size=4, softcap=cap, **kw)

    args = (h, w, t) if b is None else (h, w, t, b)
    tri = _end_to_end(fn, args, "triton", ups)
    ref = _end_to_end(fn, args, "torch", ups)
    assert len(tri[1]) == (3 if bias else 2)
    for a, r in zip(tri[0] + tri[1], ref[0] + ref[1], strict=True):
        if dtype == torch.float32:
            _agree(a, r, dtype, tol=1e-5)
        elif a.is_floating_point():
            torch.testing.assert_close(a.float(), r.float(), **tol(dtype))
        else:  # argmax: a logit rounded the other way can only move it between near-ties
            assert (a != r).float().mean() <= 0.2


def test_linear_token_stats_no_features():
    """Hidden states with no features: the logits are the bias, on the Triton path too."""
    h = torch.zeros(5, 0, requires_grad=True)
    w = torch.zeros(BLOCK + 1, 0, requires_grad=True)
    b = torch.linspace(-1.0, 1.0, BLOCK + 1, requires_grad=True)
    t = torch.tensor([0, 3, IGNORE, BLOCK, 1])
    out = cet.linear_token_stats(h, w, t, b, impl="triton")
    (out.logprob.sum() + out.entropy.sum()).backward()
    ref = cet.token_stats(b.detach().expand(5, -1), t)
    for a, r in zip(out, ref, strict=True):
        torch.testing.assert_close(a, r)
    assert h.grad.shape == (5, 0) and w.grad.shape == (BLOCK + 1, 0)
    assert b.grad is not None and torch.isfinite(b.grad).all()


@pytest.mark.parametrize("linear", [False, True], ids=["logits", "linear"])
def test_double_backward_with_impl_triton(linear):
    """``create_graph=True`` runs the differentiable torch closed form whatever ``impl``: the
    second derivatives of ``impl="triton"`` and ``impl="torch"`` agree."""
    g = torch.Generator().manual_seed(44)
    classes = 2 * BLOCK + 3
    t = torch.randint(0, classes, (6,), generator=g)
    t[1] = IGNORE
    h = torch.randn(6, 5, generator=g)
    w = torch.randn(classes, 5, generator=g)
    x = torch.randn(6, classes, generator=g)
    v = torch.randn(6, 5 if linear else classes, generator=g)
    res = []
    for impl in ("triton", "torch"):
        leaf = (h if linear else x).clone().requires_grad_()
        if linear:
            out = cet.linear_token_stats(leaf, w, t, softcap=CAP, chunk_size=4, impl=impl)
        else:
            out = cet.token_stats(leaf, t, softcap=CAP, impl=impl)
        (d,) = torch.autograd.grad(
            out.logprob.sum() + 0.5 * out.entropy.sum(), leaf, create_graph=True
        )
        (d * v).sum().backward()
        res.append((d.detach(), leaf.grad))
    for a, b in zip(res[0], res[1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compiled_impl_triton():
    """``torch.compile(fullgraph=True)`` of functions calling both with ``impl="triton"``:
    the custom ops pass ``impl`` on (no graph break), same values and gradients as eager
    torch ops."""
    torch._dynamo.reset()
    x, t = _case((7, 2 * BLOCK + 3), torch.float32, seed=45)
    g = torch.Generator().manual_seed(46)
    h = torch.randn(7, 5, generator=g)
    w = torch.randn(2 * BLOCK + 3, 5, generator=g)

    def loss_logits(z, impl):
        out = cet.token_stats(z, t, softcap=CAP, impl=impl)
        return (out.logprob - 0.1 * out.entropy + 0.01 * out.lse).sum(), out.argmax

    def loss_linear(hh, ww, impl):
        out = cet.linear_token_stats(hh, ww, t, chunk_size=3, impl=impl)
        return (out.logprob - 0.1 * out.entropy).sum(), out.argmax

    for fn, inputs in ((loss_logits, (x,)), (loss_linear, (h, w))):
        compiled = torch.compile(
            lambda *a, fn=fn: fn(*a, "triton"), fullgraph=True, backend="aot_eager"
        )
        got_in = [a.clone().requires_grad_() for a in inputs]
        ref_in = [a.clone().requires_grad_() for a in inputs]
        got, got_arg = compiled(*got_in)
        ref, ref_arg = fn(*ref_in, "torch")
        got.backward()
        ref.backward()
        torch.testing.assert_close(got, ref)
        assert torch.equal(got_arg, ref_arg)
        for a, b in zip(got_in, ref_in, strict=True):
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6)


def test_impl_dispatch(monkeypatch):
    """``impl="auto"`` keeps CPU tensors on torch ops; ``"triton"`` runs both kernels (the
    forward's and backward's), for logits and for the linear form."""
    calls = []
    for name in ("token_row_stats", "token_vjp"):
        real = getattr(TT, name)

        def spy(*a, _real=real, _name=name, **k):
            calls.append(_name)
            return _real(*a, **k)

        monkeypatch.setattr(TT, name, spy)
    x, t = _case((5, BLOCK + 1), torch.float32, seed=47)
    w = torch.randn(BLOCK + 1, 3)
    for impl, expect in (("auto", []), ("torch", []), ("triton", ["token_row_stats", "token_vjp"])):
        calls.clear()
        leaf = x.clone().requires_grad_()
        cet.token_stats(leaf, t, impl=impl).logprob.sum().backward()
        assert calls == expect, impl
        calls.clear()
        hid = torch.randn(5, 3, requires_grad=True)
        cet.linear_token_stats(hid, w, t, impl=impl, chunk_size=2).entropy.sum().backward()
        assert calls == [c for c in expect for _ in range(3)], impl  # one launch per chunk


def test_impl_argument_errors():
    x = torch.randn(3, 4)
    t = torch.tensor([0, 1, 2])
    w = torch.randn(4, 2)
    for call in (
        lambda **k: cet.token_stats(x, t, **k),
        lambda **k: cet.linear_token_stats(x[:, :2], w, t, **k),
    ):
        with pytest.raises(ValueError, match="impl must be one of 'auto', 'torch', 'triton'"):
            call(impl="cuda")
        with pytest.raises(ValueError, match="impl must be one of"):
            call(impl=None)
    with pytest.raises(
        ValueError, match=r"token_stats: impl must be 'auto' or 'torch' for float64"
    ):
        cet.token_stats(x.double(), t, impl="triton")
    with pytest.raises(ValueError, match=r"linear_token_stats: impl must be 'auto' or 'torch' for"):
        cet.linear_token_stats(x[:, :2].double(), w.double(), t, impl="triton")
    # float64 keeps working on the default and torch paths
    assert cet.token_stats(x.double(), t).lse.dtype == torch.float64


def test_ops_without_impl_keep_their_meaning(monkeypatch):
    """A graph compiled before ``impl`` calls the ops without it: the torch-op kernels, as
    then (the Triton kernels only when ``impl`` asks)."""
    calls = []
    real = TT.token_row_stats
    monkeypatch.setattr(TT, "token_row_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    x, t = _case((5, BLOCK + 1), torch.float32, seed=48)
    op = getattr(torch.ops.crossentropy, f"token_stats_forward_v{OP_VERSION}")
    old = op(x, None, None, t, IGNORE, 0, None, "f")
    assert calls == []
    new = op(x, None, None, t, IGNORE, 0, None, "f", "triton")
    assert calls == [1]
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(a, b, equal_nan=True, rtol=2e-6, atol=2e-6)
