"""Forward without backward on CPU: the cost of a loss or of token statistics nobody differentiates.

Usage: ``python benchmarks/bench_forward.py [--quick] [--repeats R]``; writes
``benchmarks/results/forward.md`` (``make bench`` runs it through ``run_all.py``).

A validation loss, an evaluation pass or a frozen head: no input requires grad (or grad mode is
off). ``crossentropy.torch`` then runs statistics-only passes (no gradient is computed or
stored); the target is the naive forward's time or less, and far less memory. Cases, float32,
each under ``torch.no_grad()`` against what a user would write instead, eager and
``torch.compile``\\d:

- ``cross_entropy(x, y)`` at (N, V) = (8192, 32768) vs ``F.cross_entropy``;
- ``linear_cross_entropy(h, W, y)`` at (N, D, V) = (4096, 1024, 32768) vs
  ``F.cross_entropy(h @ W.T, y)``;
- ``token_stats(x, y)`` vs ``log_softmax``, ``gather`` and ``-(p * logp).sum(-1)``;
- ``linear_token_stats(h, W, y)`` vs the same on ``h @ W.T``.

Times: medians of interleaved runs in one process (``_harness.interleaved_times``), with
``torch.set_num_threads(2)``, the load other processes put on the machine beside each table.
Peak memory: one call in a fresh subprocess per implementation, above the inputs.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    interleaved_times,
    machine_line,
    markdown_table,
    median,
    peak_memory_above_inputs,
    write_result,
)
from bench_torch import _cpu_ticks, _others_load

import crossentropy.torch as cet

HERE = Path(__file__).resolve().parent
THREADS = 2
Inputs = tuple[torch.Tensor, ...]


def _stats(z: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    logp = torch.log_softmax(z, dim=-1)
    logprob = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprob.sum() + entropy.sum()


def ce_ours(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return cet.cross_entropy(x, t)


def ce_naive(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(x, t)


def linear_ours(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return cet.linear_cross_entropy(h, w, t)


def linear_naive(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(h @ w.T, t)


def tokens_ours(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = cet.token_stats(x, t)
    return s.logprob.sum() + s.entropy.sum()


def linear_tokens_ours(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    s = cet.linear_token_stats(h, w, t)
    return s.logprob.sum() + s.entropy.sum()


def linear_tokens_naive(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return _stats(h @ w.T, t)


CASES: dict[str, dict[str, Callable[..., torch.Tensor]]] = {
    "ce": {"crossentropy.torch.cross_entropy": ce_ours, "F.cross_entropy": ce_naive},
    "linear": {
        "crossentropy.torch.linear_cross_entropy": linear_ours,
        "F.cross_entropy(h @ W.T, y)": linear_naive,
    },
    "tokens": {
        "crossentropy.torch.token_stats": tokens_ours,
        "log_softmax, gather, -(p * logp).sum(-1)": _stats,
    },
    "linear_tokens": {
        "crossentropy.torch.linear_token_stats": linear_tokens_ours,
        "the same on h @ W.T": linear_tokens_naive,
    },
}
LINEAR = ("linear", "linear_tokens")


def make_inputs(case: str, sizes: Sequence[int], seed: int = 0) -> Inputs:
    g = torch.Generator().manual_seed(seed)
    if case in LINEAR:
        n, d, v = sizes
        h = torch.randn(n, d, generator=g)
        w = torch.randn(v, d, generator=g) / d**0.5
        return h, w, torch.randint(0, v, (n,), generator=g)
    n, v = sizes
    return torch.randn(n, v, generator=g) * 4, torch.randint(0, v, (n,), generator=g)


def implementations(case: str) -> dict[str, Callable[..., torch.Tensor]]:
    """Ours, the eager composition, and that composition under ``torch.compile``."""
    impls = dict(CASES[case])
    name, naive = list(impls.items())[1]
    impls[f"torch.compile({name})"] = torch.compile(naive)
    return impls


def check(case: str, sizes: Sequence[int]) -> dict[str, float]:
    """Relative error of each implementation against float64 (also the warm-up)."""
    inputs = make_inputs(case, sizes, seed=1)
    naive = list(CASES[case].values())[1]
    ref = float(naive(*(a.double() if a.is_floating_point() else a for a in inputs)))
    errors = {}
    with torch.no_grad():
        for name, fn in implementations(case).items():
            for _ in range(2):
                got = float(fn(*inputs))
            errors[name] = abs(got - ref) / max(abs(ref), 1e-30)
    return errors


_SETUP = """
import sys
sys.path.insert(0, {here!r})
import torch
import bench_forward as B
torch.set_num_threads(B.THREADS)
fn = B.CASES[{case!r}][{name!r}]
with torch.no_grad():
    for _ in range(2):
        fn(*B.make_inputs({case!r}, {small!r}))
xs = B.make_inputs({case!r}, {sizes!r})
"""
_RUN = """
with torch.no_grad():
    out = fn(*xs)
"""


def bench(case: str, sizes: Sequence[int], small: Sequence[int], repeats: int) -> tuple[str, float]:
    errors = check(case, small)
    inputs = make_inputs(case, sizes)
    impls = implementations(case)

    def timed(fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            with torch.no_grad():
                fn(*inputs)

        return run

    start, ticks = time.perf_counter(), _cpu_ticks()
    times = interleaved_times({k: timed(f) for k, f in impls.items()}, repeats=repeats, warmup=1)
    load = _others_load(ticks, time.perf_counter() - start)
    meds = {k: median(v) for k, v in times.items()}
    peaks = {}
    for name in CASES[case]:
        setup = _SETUP.format(
            here=str(HERE), case=case, name=name, sizes=tuple(sizes), small=tuple(small)
        )
        peaks[name] = peak_memory_above_inputs(setup, _RUN)
    ours, naive = list(CASES[case])
    rows = []
    for name, sec in meds.items():
        peak = peaks.get(name)
        rows.append(
            [
                f"**{name}**" if name == ours else name,
                f"{sec:.3f}",
                f"{sec / meds[ours]:.2f}",
                "—" if peak is None else f"{peak / 2**20:.0f}",
                f"{errors[name]:.1e}",
            ]
        )
    headers = ["implementation", "median s", "× ours", "peak above inputs (MiB)", "rel. error"]
    shape = ", ".join(str(s) for s in sizes)
    text = (
        f"### `{ours.split('.')[-1]}` forward only, float32 ({shape})\n\n"
        f"Other processes kept {load} busy on average while it was timed.\n\n"
        + markdown_table(headers, rows)
        + "\n"
    )
    return text, meds[ours] / meds[naive]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.quick:
        sizes = {"ce": (128, 2048), "tokens": (128, 2048)}
        lin = (128, 32, 2048)
        small_ce, small_lin = (64, 512), (64, 16, 512)
        repeats = 2
    else:
        sizes = {"ce": (8192, 32768), "tokens": (8192, 32768)}
        lin = (4096, 1024, 32768)
        small_ce, small_lin = (256, 4096), (256, 64, 4096)
        repeats = args.repeats
    sizes.update({"linear": lin, "linear_tokens": lin})
    parts, targets = [], []
    for case in CASES:
        print(f"  {case} {sizes[case]} ...", flush=True)
        small = small_lin if case in LINEAR else small_ce
        text, ratio = bench(case, sizes[case], small, repeats)
        parts.append(text)
        ok = "**met**" if ratio <= 1.0 else "not met"
        targets.append([f"{case} {sizes[case]}", "≤ 1.0× eager naive (time)", f"{ratio:.2f}×", ok])
    summary = markdown_table(["case", "target", "measured", ""], targets)
    md = (
        "## Forward only (no gradient): statistics-only passes\n\n"
        f"{machine_line()}; torch {torch.__version__}, {THREADS} threads; "
        f"`python benchmarks/bench_forward.py{' --quick' if args.quick else ''}`.\n\n"
        f"{summary}\n\n" + "\n".join(parts)
    )
    path = write_result("forward", md)
    print(md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
