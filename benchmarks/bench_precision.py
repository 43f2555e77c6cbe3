"""Half-precision gradients of the linear cross-entropy across chunks, against float64.

Usage: ``python benchmarks/bench_precision.py [--quick] [--note TEXT]``; writes
``benchmarks/results/precision.md`` (``make bench`` runs it through ``run_all.py``).

A chunked linear cross-entropy sums ``d weight = Σ_chunks g_cᵀ h_c`` and ``d bias = Σ_chunks
Σ_rows g_c`` over its chunks of rows. Kept in bfloat16/float16 between chunks, that sum rounds
once per chunk and its error grows with the chunk count; kept in float32 it does not. This
measures it: the same inputs for every implementation, bfloat16 ``(N, D, C) = (4096, 256,
4096)`` and float16 ``(4096, 64, 1024)`` (smaller: CPU float16 matmuls are emulated, tens of
times slower), ``h ~ N(0, 1)``, ``W ~ N(0, 1/D)``, ``b ~ N(0, 0.1²)``, uniform targets, loss
``"mean"``, at ``k = 1, 2, 8, 32, 128, 512`` chunks of ``N / k`` rows, for

- ``crossentropy.torch.linear_cross_entropy(h, W, t, b, chunk_size=N // k, impl="torch")``
  (``"mean"``: one fused pass), and with ``reduction="none"`` then ``.mean()`` (the two-pass
  path: the forward keeps the per-row log-sum-exp, backward recomputes each chunk);
- ``crossentropy.torch.linear_token_stats(h, W, t, b, chunk_size=N // k)``, loss
  ``-out.logprob.mean()`` (the same gradient);
- PyTorch's ``F.linear_cross_entropy(h, W, t, linear_bias=b,
  options=LinearCrossEntropyOptions(batch_chunk_size=N // k, chunking_method=None))``, its
  accumulation policy left to ``"auto"`` (skipped, with a note, where this torch lacks it).

Reference: ``F.cross_entropy(F.linear(h64, W64, b64), t)`` in float64 on the same half-precision
values upcast. Error of a gradient ``G`` against the reference ``R``: ``max|G − R| / max|R|``
(the largest error in units of the largest entry) and ``‖G − R‖_F / ‖R‖_F`` (relative
Frobenius). Two rows frame them: the float64 gradient rounded once to the half dtype (the best
any result in that dtype can do) and the unchunked ``F.cross_entropy(F.linear(h, W, b), t)`` in
the half dtype. No timing: this is an accuracy benchmark.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import machine_line, markdown_table, write_result

import crossentropy.torch as cet

THREADS = 2
CHUNK_COUNTS = (1, 2, 8, 32, 128, 512)
DTYPES = (torch.bfloat16, torch.float16)
# (N, D, C) per dtype; float16 smaller because CPU float16 matmuls are emulated (slow).
SIZES = {torch.bfloat16: (4096, 256, 4096), torch.float16: (4096, 64, 1024)}
GRADS = ("weight", "bias", "hidden")

Loss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


# --------------------------------------------------------------------------- implementations
# Each takes (hidden, weight, bias, target, rows per chunk) and returns the 0-d "mean" loss.


def ours_mean(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor, rows: int
) -> torch.Tensor:
    return cet.linear_cross_entropy(h, w, t, b, chunk_size=rows, impl="torch")


def ours_none(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor, rows: int
) -> torch.Tensor:
    return cet.linear_cross_entropy(
        h, w, t, b, reduction="none", chunk_size=rows, impl="torch"
    ).mean()


def ours_tokens(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor, rows: int
) -> torch.Tensor:
    return -cet.linear_token_stats(h, w, t, b, chunk_size=rows).logprob.mean()


def torch_chunked(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor, rows: int
) -> torch.Tensor:
    options = torch.nn.LinearCrossEntropyOptions(  # type: ignore[attr-defined]
        batch_chunk_size=rows, chunking_method=None
    )
    return F.linear_cross_entropy(h, w, t, linear_bias=b, options=options)  # type: ignore[attr-defined]


def unchunked(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, t: torch.Tensor, rows: int
) -> torch.Tensor:
    return F.cross_entropy(F.linear(h, w, b), t)


OURS_MEAN = "**crossentropy.torch.linear_cross_entropy** (`mean`, one fused pass)"
OURS_NONE = "**crossentropy.torch.linear_cross_entropy** (`none`, two passes), `.mean()`"
OURS_TOKENS = "**crossentropy.torch.linear_token_stats**, `-logprob.mean()`"
TORCH_CHUNKED = "PyTorch `F.linear_cross_entropy`, `batch_chunk_size=N/k`"
IMPLS: dict[str, Loss] = {OURS_MEAN: ours_mean, OURS_NONE: ours_none, OURS_TOKENS: ours_tokens}
if hasattr(F, "linear_cross_entropy") and hasattr(torch.nn, "LinearCrossEntropyOptions"):
    IMPLS[TORCH_CHUNKED] = torch_chunked
FLOOR = "float64 gradient rounded once to the dtype (the floor)"
UNCHUNKED = "unchunked `F.cross_entropy(F.linear(h, W, b), t)` in the dtype"


# --------------------------------------------------------------------------- measuring


def make_inputs(
    sizes: Sequence[int], dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    n, d, c = sizes
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(c, d, generator=g, dtype=torch.float64) / d**0.5).to(dtype)
    b = (0.1 * torch.randn(c, generator=g, dtype=torch.float64)).to(dtype)
    return h, w, b, torch.randint(0, c, (n,), generator=g)


def gradients(
    fn: Loss, inputs: tuple[torch.Tensor, ...], rows: int, dtype: torch.dtype | None = None
) -> tuple[dict[str, torch.Tensor], list[str]]:
    """``{name: gradient}`` of ``fn`` at ``inputs`` (cast to ``dtype`` if given), and the
    messages of any warnings it raised (a silent fallback would measure something else)."""
    h, w, b, t = inputs
    leaves = [x.detach().to(dtype or x.dtype).requires_grad_() for x in (h, w, b)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn(*leaves, t, rows).backward()
    grads = {name: x.grad for name, x in zip(("hidden", "weight", "bias"), leaves, strict=True)}
    assert all(g is not None for g in grads.values())
    return grads, [str(c.message).splitlines()[0] for c in caught]


def errors(g: torch.Tensor, ref: torch.Tensor) -> tuple[float, float]:
    """(max|G − R| / max|R|, ‖G − R‖_F / ‖R‖_F), both in float64."""
    diff = g.double() - ref
    return float(diff.abs().max() / ref.abs().max()), float(diff.norm() / ref.norm())


def fmt(e: tuple[float, float]) -> str:
    return f"{e[0]:.1e} ({e[1]:.1e})"


def unit_roundoff_bits(dtype: torch.dtype) -> int:
    """``p`` with the unit roundoff ``u = 2**-p`` (half the spacing of ``dtype`` at 1)."""
    return round(-math.log2(torch.finfo(dtype).eps / 2))


Errors = dict[str, list[tuple[float, float]]]  # implementation -> one pair per chunk count


def bench_dtype(
    sizes: Sequence[int], dtype: torch.dtype, counts: Sequence[int]
) -> tuple[str, Errors]:
    """The section of one dtype, and the ``d weight`` errors for the summary."""
    n = sizes[0]
    inputs = make_inputs(sizes, dtype)
    ref, _ = gradients(unchunked, inputs, n, torch.float64)
    name = str(dtype).removeprefix("torch.")
    # rows[grad][impl] = one error pair per chunk count
    rows: dict[str, Errors] = {g: {} for g in GRADS}
    notes: list[str] = []
    for grad in GRADS:
        floor = errors(ref[grad].to(dtype), ref[grad])
        rows[grad][FLOOR] = [floor] * len(counts)
    plain, _ = gradients(unchunked, inputs, n)
    for grad in GRADS:
        rows[grad][UNCHUNKED] = [errors(plain[grad], ref[grad])] * len(counts)
    for label, fn in IMPLS.items():
        t0 = time.perf_counter()
        for k in counts:
            got, caught = gradients(fn, inputs, n // k)
            for message in caught:
                note = f"{label} at k = {k} warned: {message}"
                if note not in notes:
                    notes.append(note)
            for grad in GRADS:
                rows[grad].setdefault(label, []).append(errors(got[grad], ref[grad]))
        print(f"  {name} {label}: {time.perf_counter() - t0:.1f} s", flush=True)
    p = unit_roundoff_bits(dtype)
    parts = [f"### {name}: (N, D, C) = {tuple(sizes)}, unit roundoff u = 2^-{p} = {2.0**-p:.1e}\n"]
    headers = [
        "implementation",
        *(f"k = {k} ({n // k} row{'s' * (n // k > 1)})" for k in counts),
        "last / first",
    ]
    for grad in GRADS:
        what = {
            "weight": "`d weight` (summed over all rows: across chunks)",
            "bias": "`d bias` (summed over all rows: across chunks)",
            "hidden": "`d hidden` (row by row: within a chunk)",
        }[grad]
        table = [
            [label, *(fmt(e) for e in errs), f"{errs[-1][0] / errs[0][0]:.2f}×"]
            for label, errs in rows[grad].items()
        ]
        parts += [
            f"{what} against float64, by chunk count k: max-norm error (Frobenius error)\n",
            markdown_table(headers, table),
            "",
        ]
    if TORCH_CHUNKED not in IMPLS:
        notes.append(f"this torch ({torch.__version__}) has no chunked F.linear_cross_entropy")
    parts += [f"Note: {note}\n" for note in notes]
    return "\n".join(parts), rows["weight"]


def summary_table(weight_errors: dict[torch.dtype, Errors]) -> str:
    """``d weight``'s max-norm error at the fewest and most chunks, per dtype, also in units
    of the dtype's unit roundoff u."""
    first, last = CHUNK_COUNTS[0], CHUNK_COUNTS[-1]
    headers = ["implementation"]
    for dtype in weight_errors:
        name = str(dtype).removeprefix("torch.")
        headers += [f"{name}, k = {first}", f"{name}, k = {last}", f"{name}, last / first"]
    table = []
    for label in next(iter(weight_errors.values())):
        row = [label]
        for dtype, errs in weight_errors.items():
            u = 2.0 ** -unit_roundoff_bits(dtype)
            e0, e1 = errs[label][0][0], errs[label][-1][0]
            row += [f"{e0:.1e} ({e0 / u:.2f} u)", f"{e1:.1e} ({e1 / u:.2f} u)", f"{e1 / e0:.2f}×"]
        table.append(row)
    return markdown_table(headers, table)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--note", default="", help="a sentence on what was measured (commit)")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    sections, weight_errors = [], {}
    for dtype in DTYPES:
        sizes = (512, 16, 64) if args.quick else SIZES[dtype]
        print(f"{dtype} {sizes} ...", flush=True)
        text, weight_errors[dtype] = bench_dtype(sizes, dtype, CHUNK_COUNTS)
        print(text, flush=True)
        sections.append(text)
    summary = summary_table(weight_errors)
    print(summary)
    header = (
        "## Half-precision gradients across chunks (`crossentropy.torch`): error against "
        "float64\n\n"
        f"Command: `python benchmarks/bench_precision.py`. {machine_line()}; torch "
        f"{torch.__version__}, `torch.set_num_threads({THREADS})`"
        f"{' — **quick mode: small sizes**' if args.quick else ''}. "
        "Same inputs for every implementation: `h ~ N(0, 1)`, `W ~ N(0, 1/D)`, "
        "`b ~ N(0, 0.1²)` rounded to the dtype, uniform targets, loss `mean`; k chunks of N/k "
        'rows (`chunk_size=N // k`, `impl="torch"`; PyTorch: '
        "`LinearCrossEntropyOptions(batch_chunk_size=N // k, chunking_method=None)`, "
        "accumulation policy `auto`). Reference: float64 `F.linear` + `F.cross_entropy` on "
        "the same values upcast. Each cell: max|G − R| / max|R| (‖G − R‖_F / ‖R‖_F); "
        "*last / first*: the max-norm error at the most chunks over that at one chunk. "
        f"{args.note}\n"
    )
    summary_head = (
        "### Summary: `d weight`, max-norm error against float64 at 1 and 512 chunks "
        "(u: the dtype's unit roundoff)\n"
    )
    path = write_result("precision", "\n".join([header, summary_head, summary, "", *sections]))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
