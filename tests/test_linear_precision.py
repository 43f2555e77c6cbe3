"""Half-precision gradients of the chunked linear losses do not drift with the chunk count.

``d weight = Σ_chunks g_cᵀ h_c`` and ``d bias = Σ_chunks Σ_rows g_c`` sum over every chunk of
rows. Kept in bfloat16/float16 between chunks (PyTorch's chunked ``F.linear_cross_entropy``
does that), the sum is rounded once per chunk and its error grows with the chunk count k;
``crossentropy.torch`` keeps it in float32 and rounds once at the end. Each case runs the same
half-precision inputs at k = 1 … 512 chunks and measures every gradient against float64
autograd of ``F.cross_entropy(F.linear(h, W, b), t)`` on the same values upcast:

- max-norm error ``max|G − R| / max|R|`` and Frobenius error ``‖G − R‖_F / ‖R‖_F``;
- no growth: at every k both stay within ``GROWTH`` (1.5×) of their value at k = 1;
- absolute bound, in units of the dtype's unit roundoff u (2⁻⁸ for bfloat16, 2⁻¹¹ for
  float16): max-norm ≤ 2u, Frobenius ≤ u. Rounding the float32 sum once to the dtype costs
  at most u per entry (max-norm ≤ u; Frobenius about u/√3 for uniformly spread rounding
  errors); the logits come from a matmul in the dtype (as ``F.linear``) and ``G`` may be
  rounded to it before the ``d weight`` matmul, each entry off by at most a few u but with
  random signs that average over the rows summed; the float32 accumulator itself adds at most
  k · 2⁻²⁴ relative (512 chunks: 3·10⁻⁵, under u/16 of float16). Measured here: 0.5–0.9u
  max-norm. A half-precision accumulator adds up to one rounding per chunk, about √k · u:
  ``test_metric_catches_a_half_precision_accumulator`` checks that these bounds catch it.

The benchmark ``benchmarks/bench_precision.py`` measures the same at (4096, 256, 4096) against
PyTorch's chunked function (docs/guide/numerics.rst).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import linear_cross_entropy, linear_token_stats  # noqa: E402

N, D, C = 512, 16, 64
CHUNK_COUNTS = (1, 2, 8, 32, 128, 512)
GROWTH = 1.5  # largest error at any k over the error at k = 1
MAX_NORM_BOUND = 2.0  # in units of u
FROBENIUS_BOUND = 1.0  # in units of u
HALF = [torch.bfloat16, torch.float16]

Loss = Callable[..., torch.Tensor]


def _lce_mean(h, w, b, t, rows):
    return linear_cross_entropy(h, w, t, b, chunk_size=rows, impl="torch")


def _lce_none(h, w, b, t, rows):
    # The two-pass path: per-row lse saved, each chunk recomputed in backward.
    return linear_cross_entropy(h, w, t, b, reduction="none", chunk_size=rows, impl="torch").mean()


def _token_stats(h, w, b, t, rows):
    return -linear_token_stats(h, w, t, b, chunk_size=rows).logprob.mean()


def _reference(h, w, b, t, rows):
    return F.cross_entropy(F.linear(h, w, b), t)


LOSSES: dict[str, Loss] = {
    "linear_cross_entropy": _lce_mean,
    "linear_cross_entropy_none": _lce_none,
    "linear_token_stats": _token_stats,
}


def unit_roundoff(dtype: torch.dtype) -> float:
    return torch.finfo(dtype).eps / 2


def _inputs(dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(1234)
    h = torch.randn(N, D, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(C, D, generator=g, dtype=torch.float64) / D**0.5).to(dtype)
    b = (0.1 * torch.randn(C, generator=g, dtype=torch.float64)).to(dtype)
    return h, w, b, torch.randint(0, C, (N,), generator=g)


def _grads(fn: Loss, inputs: tuple[torch.Tensor, ...], rows: int, dtype=None):
    """{"hidden", "weight", "bias"} -> gradient of ``fn`` (inputs cast to ``dtype`` if given)."""
    h, w, b, t = inputs
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_() for x in (h, w, b)]
    fn(*leaves, t, rows).backward()
    return dict(zip(("hidden", "weight", "bias"), (x.grad for x in leaves), strict=True))


def _errors(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max|G − R| / max|R|, ‖G − R‖_F / ‖R‖_F)."""
    diff = g.double() - ref
    return float(diff.abs().max() / ref.abs().max()), float(diff.norm() / ref.norm())


def _check(errs: list[tuple[float, float]], u: float, what: str) -> None:
    """No growth with k, and under the absolute bounds."""
    for i, (metric, bound) in enumerate(
        [("max-norm", MAX_NORM_BOUND), ("Frobenius", FROBENIUS_BOUND)]
    ):
        by_k = {k: e[i] for k, e in zip(CHUNK_COUNTS, errs, strict=True)}
        shown = ", ".join(f"k={k}: {e / u:.2f}u" for k, e in by_k.items())
        assert max(by_k.values()) <= GROWTH * by_k[1], f"{what} {metric} grows: {shown}"
        assert max(by_k.values()) <= bound * u, f"{what} {metric} over {bound}u: {shown}"


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matmuls, up to 512 chunks: one thread skips a barrier per op (the machine is shared)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=HALF, ids=lambda d: str(d).removeprefix("torch."))
def problem(request: pytest.FixtureRequest):
    """(dtype, inputs, float64 reference gradients) shared by the cases of one dtype."""
    dtype = request.param
    inputs = _inputs(dtype)
    return dtype, inputs, _grads(_reference, inputs, N, torch.float64)


@pytest.mark.parametrize("loss", list(LOSSES))
def test_half_precision_weight_and_bias_grads_do_not_grow_with_chunk_count(problem, loss):
    dtype, inputs, ref = problem
    u = unit_roundoff(dtype)
    got = [_grads(LOSSES[loss], inputs, N // k) for k in CHUNK_COUNTS]
    for grad in ("weight", "bias"):  # summed over all rows, hence across chunks
        assert all(g[grad].dtype == dtype for g in got)
        _check([_errors(g[grad], ref[grad]) for g in got], u, f"{loss} d {grad}")
    # d hidden is row by row (no sum across chunks): it must not depend on k either.
    hidden = [_errors(g["hidden"], ref["hidden"]) for g in got]
    _check(hidden, u, f"{loss} d hidden")


@pytest.mark.parametrize("dtype", HALF, ids=lambda d: str(d).removeprefix("torch."))
def test_metric_catches_a_half_precision_accumulator(dtype: torch.dtype) -> None:
    """The bug class: the exact per-chunk ``d weight`` added into a bfloat16/float16 sum. The
    checks above must fail on it (else they would pass a kernel that has it)."""
    h, w, b, t = (x.double() if x.is_floating_point() else x for x in _inputs(dtype))
    logits = F.linear(h, w, b)
    g = (torch.softmax(logits, -1) - F.one_hot(t, C).double()) / N  # exact d logits, "mean"
    ref = g.t() @ h
    errs = []
    for k in CHUNK_COUNTS:
        acc = torch.zeros(C, D, dtype=dtype)
        for r in range(0, N, N // k):
            acc = (acc.double() + g[r : r + N // k].t() @ h[r : r + N // k]).to(dtype)
        errs.append(_errors(acc, ref))
    with pytest.raises(AssertionError, match="grows"):
        _check(errs, unit_roundoff(dtype), "half-precision accumulator d weight")
    assert errs[-1][0] > MAX_NORM_BOUND * unit_roundoff(dtype)
