"""Fused PyTorch cross-entropy vs ``torch.nn.functional``: time and peak memory, fwd+bwd.

Usage: ``python benchmarks/bench_torch.py [--quick]``; writes ``benchmarks/results/torch.md``.

Times: medians of interleaved runs in one process after a warm-up, with
``torch.set_num_threads(2)``. Peak memory: one fwd+bwd in a fresh subprocess, above the inputs,
counting the returned gradients (``_harness.peak_memory_above_inputs``). Floors: one
``torch.exp`` pass over the logits (allocating its output, as any gradient must be), and for
the linear case the three matmuls ``H Wᵀ``, ``G W``, ``Gᵀ H`` alone.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    MiB,
    interleaved_times,
    machine_line,
    markdown_table,
    median,
    peak_memory_above_inputs,
    write_result,
)

import crossentropy.torch as cet

THREADS = 2
NOTES = (
    "Notes: the `exp` floor allocates its output like any fresh gradient does; the two "
    "'part of floor' rows split it into first touch of a fresh logits-sized buffer (page "
    "faults, 4 KiB pages) and `torch.exp` into an already-touched buffer. "
    "`inplace_backward=True` is the opt-in that writes the gradient into the logits' buffer; "
    "its timed region excludes creating the non-leaf logits (`x + zero_leaf`, untimed) and "
    "includes backward's sum into that 0-d leaf. The bfloat16 loss is returned in bfloat16 "
    "like `F.cross_entropy`'s, so its error is bounded below by the final rounding.\n"
)
INPLACE = "crossentropy.torch.cross_entropy(inplace_backward=True)"


def _fwd_bwd(fn: Callable[..., torch.Tensor], x: torch.Tensor, *args: object) -> Callable[[], None]:
    def run() -> None:
        leaf = x.detach().requires_grad_()
        fn(leaf, *args).backward()

    return run


def _mark(ok: bool) -> str:
    return "**met**" if ok else "not met"


# --------------------------------------------------------------------------- plain logits

_CE_SETUP = """
import torch, torch.nn.functional as F
import crossentropy.torch as cet
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
for _ in range(2):  # warm up lazily-initialised code paths on small inputs
    w = torch.randn(64, 512).to({dtype}).requires_grad_()
    {call}(w, torch.randint(0, 512, (64,))).backward()
x = torch.randn({n}, {v}, generator=g).to({dtype}).requires_grad_()
t = torch.randint(0, {v}, ({n},), generator=g)
"""
_CE_RUN = """
loss = {call}(x, t)
loss.backward()
"""


def _ce_peak(call: str, n: int, v: int, dtype: str) -> int:
    setup = _CE_SETUP.format(threads=THREADS, dtype=dtype, call=call, n=n, v=v)
    return peak_memory_above_inputs(setup, _CE_RUN.format(call=call))


def bench_cross_entropy(
    n: int, v: int, dtype: torch.dtype, repeats: int, check_memory: bool
) -> tuple[str, list[list[object]]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, v, generator=g).to(dtype)
    t = torch.randint(0, v, (n,), generator=g)
    inplace_times: list[float] = []

    def inplace_run() -> None:
        # Untimed: a fresh non-leaf copy of the logits (as a model's output would be); timed:
        # fwd+bwd writing the gradient into it, plus AddBackward's sum into the 0-d leaf.
        bias = torch.zeros((), dtype=dtype, requires_grad=True)
        z = x + bias
        t0 = time.perf_counter()
        cet.cross_entropy(z, t, inplace_backward=True).backward()
        inplace_times.append(time.perf_counter() - t0)

    touched = torch.empty_like(x).fill_(0)
    fns = {
        "crossentropy.torch.cross_entropy": _fwd_bwd(cet.cross_entropy, x, t),
        "F.cross_entropy": _fwd_bwd(F.cross_entropy, x, t),
        "floor: torch.exp(logits)": lambda: torch.exp(x),
        INPLACE: inplace_run,
        "part of floor: first touch of a fresh logits-sized buffer": lambda: torch.empty_like(
            x
        ).fill_(0),
        "part of floor: torch.exp(logits, out=pre-touched buffer)": lambda: torch.exp(
            x, out=touched
        ),
    }
    times = {k: median(v_) for k, v_ in interleaved_times(fns, repeats=repeats).items()}
    times[INPLACE] = median(inplace_times[-repeats:])
    logits_bytes = x.numel() * x.element_size()
    dname = str(dtype).replace("torch.", "")
    peaks: dict[str, int | None] = dict.fromkeys(fns)
    if check_memory:
        peaks["crossentropy.torch.cross_entropy"] = _ce_peak(
            "cet.cross_entropy", n, v, f"torch.{dname}"
        )
        peaks["F.cross_entropy"] = _ce_peak("F.cross_entropy", n, v, f"torch.{dname}")
        peaks[INPLACE] = peak_memory_above_inputs(
            _CE_SETUP.format(
                threads=THREADS, dtype=f"torch.{dname}", call="cet.cross_entropy", n=n, v=v
            )
            + f"b = torch.zeros((), dtype=torch.{dname}, requires_grad=True)\n"
            "z = x.detach() + b\ndel x\n",
            "loss = cet.cross_entropy(z, t, inplace_backward=True)\nloss.backward()\n",
        )
    ours = times["crossentropy.torch.cross_entropy"]
    rows = []
    for name, sec in times.items():
        peak = peaks[name]
        rows.append(
            [
                name,
                f"{sec:.3f}",
                f"{sec / ours:.2f}",
                "—" if peak is None else f"{peak / MiB:.0f}",
                "—" if peak is None else f"{peak / logits_bytes:.2f}",
            ]
        )
    table = markdown_table(
        ["implementation", "median s", "× ours", "peak above input (MiB)", "× logits"], rows
    )
    title = f"### `cross_entropy`, {dname} logits ({n}, {v}), integer targets, fwd+bwd"
    targets: list[list[object]] = []
    speedup = times["F.cross_entropy"] / ours
    floor_ratio = ours / times["floor: torch.exp(logits)"]
    case = f"{dname} ({n}, {v})"
    if dtype == torch.float32:
        targets.append(
            [case, "≥ 4× faster than F.cross_entropy", f"{speedup:.2f}×", _mark(speedup >= 4)]
        )
        targets.append(
            [case, "≤ 2.5× the exp floor", f"{floor_ratio:.2f}×", _mark(floor_ratio <= 2.5)]
        )
        peak = peaks["crossentropy.torch.cross_entropy"]
        if peak is not None:
            ratio = peak / logits_bytes
            targets.append([case, "peak ≤ 1.1× logits", f"{ratio:.2f}×", _mark(ratio <= 1.1)])
        sp_in = times["F.cross_entropy"] / times[INPLACE]
        targets.append(
            [case, "(opt-in inplace_backward) ≥ 4× faster", f"{sp_in:.2f}×", _mark(sp_in >= 4)]
        )
    else:
        targets.append(
            [case, "≥ 2× faster than F.cross_entropy", f"{speedup:.2f}×", _mark(speedup >= 2)]
        )
        exact = float(F.cross_entropy(x.double(), t))
        ours_err = abs(float(cet.cross_entropy(x, t)) - exact) / abs(exact)
        torch_err = abs(float(F.cross_entropy(x, t)) - exact) / abs(exact)
        # Our float32 accumulation before the final rounding of the 0-d loss to bfloat16.
        internal = abs(float(cet.cross_entropy(x.float(), t)) - exact) / abs(exact)
        half_ulp = 2.0 ** (math.floor(math.log2(abs(exact))) - 8) / abs(exact)
        targets.append(
            [
                case,
                "loss within 1e-3 relative of float64",
                f"{ours_err:.2e} (F.cross_entropy: {torch_err:.2e}; ours before rounding "
                f"to bf16: {internal:.1e}; bf16 half-ulp at this value: {half_ulp:.1e})",
                _mark(ours_err <= 1e-3),
            ]
        )
    return f"{title}\n\n{table}\n", targets


# --------------------------------------------------------------------------- linear

_LIN_SETUP = """
import torch, torch.nn.functional as F
import crossentropy.torch as cet
torch.set_num_threads({threads})
g = torch.Generator().manual_seed(0)
def naive(h, w, t):
    return F.cross_entropy(F.linear(h, w), t)
def torch_ref(h, w, t):
    return F.linear_cross_entropy(h, w, t)
def torch_chunked(h, w, t):
    return F.linear_cross_entropy(h, w, t, options=torch.nn.LinearCrossEntropyOptions())
for _ in range(2):
    hs = torch.randn(256, 64).requires_grad_(); ws = torch.randn(512, 64).requires_grad_()
    {call}(hs, ws, torch.randint(0, 512, (256,))).backward()
h = torch.randn({n}, {d}, generator=g).requires_grad_()
w = (torch.randn({v}, {d}, generator=g) / {d} ** 0.5).requires_grad_()
t = torch.randint(0, {v}, ({n},), generator=g)
"""
_LIN_RUN = """
loss = {call}(h, w, t)
loss.backward()
"""

_LIN_IMPLS = {
    "crossentropy.torch.linear_cross_entropy": "cet.linear_cross_entropy",
    "naive F.linear + F.cross_entropy": "naive",
    "F.linear_cross_entropy (options=None)": "torch_ref",
    "F.linear_cross_entropy (LinearCrossEntropyOptions())": "torch_chunked",
}


def bench_linear(
    n: int, d: int, v: int, repeats: int, check_memory: bool
) -> tuple[str, list[list[object]]]:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(n, d, generator=g)
    w = torch.randn(v, d, generator=g) / d**0.5
    t = torch.randint(0, v, (n,), generator=g)
    opts = torch.nn.LinearCrossEntropyOptions()

    def both(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def run() -> None:
            hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
            fn(hh, ww).backward()

        return run

    def three_matmuls() -> None:
        z = h @ w.T
        z @ w
        z.T @ h

    fns = {
        "crossentropy.torch.linear_cross_entropy": both(
            lambda a, b: cet.linear_cross_entropy(a, b, t)
        ),
        "naive F.linear + F.cross_entropy": both(lambda a, b: F.cross_entropy(F.linear(a, b), t)),
        "F.linear_cross_entropy (options=None)": both(lambda a, b: F.linear_cross_entropy(a, b, t)),
        "F.linear_cross_entropy (LinearCrossEntropyOptions())": both(
            lambda a, b: F.linear_cross_entropy(a, b, t, options=opts)
        ),
        "floor: three matmuls": three_matmuls,
    }
    times = {k: median(v_) for k, v_ in interleaved_times(fns, repeats=repeats).items()}
    peaks: dict[str, int | None] = dict.fromkeys(fns)
    if check_memory:
        for name, call in _LIN_IMPLS.items():
            setup = _LIN_SETUP.format(threads=THREADS, call=call, n=n, d=d, v=v)
            peaks[name] = peak_memory_above_inputs(setup, _LIN_RUN.format(call=call))
    ours = times["crossentropy.torch.linear_cross_entropy"]
    logits_bytes = n * v * 4
    grads_bytes = (n * d + v * d) * 4
    rows = []
    for name, sec in times.items():
        peak = peaks[name]
        rows.append(
            [name, f"{sec:.3f}", f"{sec / ours:.2f}", "—" if peak is None else f"{peak / MiB:.0f}"]
        )
    table = markdown_table(
        ["implementation", "median s", "× ours", "peak above inputs (MiB)"], rows
    )
    title = (
        f"### `linear_cross_entropy`, float32 (N, D, V) = ({n}, {d}, {v}), fwd+bwd (hidden, weight)"
    )
    case = f"linear ({n}, {d}, {v})"
    r_naive = ours / times["naive F.linear + F.cross_entropy"]
    r_chunk = ours / times["F.linear_cross_entropy (LinearCrossEntropyOptions())"]
    r_floor = ours / times["floor: three matmuls"]
    targets: list[list[object]] = [
        [case, "≤ 1.0× naive", f"{r_naive:.2f}×", _mark(r_naive <= 1.0)],
        [case, "≤ 1.0× torch chunked", f"{r_chunk:.2f}×", _mark(r_chunk <= 1.0)],
        [case, "≤ 1.15× three-matmul floor", f"{r_floor:.2f}×", _mark(r_floor <= 1.15)],
    ]
    peak = peaks["crossentropy.torch.linear_cross_entropy"]
    if peak is not None:
        budget = grads_bytes + logits_bytes / 8
        targets.append(
            [
                case,
                f"peak ≤ grads + logits/8 = {budget / MiB:.0f} MiB",
                f"{peak / MiB:.0f} MiB",
                _mark(peak <= budget),
            ]
        )
    return f"{title}\n\n{table}\n", targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    if args.quick:
        ce_cases = [
            (512, 4096, torch.float32),
            (128, 16384, torch.float32),
            (256, 4096, torch.bfloat16),
        ]
        lin_case = (256, 128, 4096)
        repeats = 5
    else:
        ce_cases = [
            (8192, 32768, torch.float32),
            (2048, 131072, torch.float32),
            (4096, 32768, torch.bfloat16),
        ]
        lin_case = (4096, 1024, 32768)
        repeats = 5
    sections, targets = [], []
    for n, v, dtype in ce_cases:
        print(f"cross_entropy {dtype} ({n}, {v}) ...", flush=True)
        text, tg = bench_cross_entropy(n, v, dtype, repeats, check_memory=True)
        print(text, flush=True)
        sections.append(text)
        targets += tg
    print(f"linear_cross_entropy {lin_case} ...", flush=True)
    text, tg = bench_linear(*lin_case, repeats=repeats, check_memory=True)
    print(text, flush=True)
    sections.append(text)
    targets += tg
    summary = markdown_table(["case", "target", "measured", "status"], targets)
    header = (
        "## PyTorch backend (`crossentropy.torch`)\n\n"
        f"{machine_line()}; torch {torch.__version__}, `torch.set_num_threads({THREADS})`"
        f"{' — **quick mode: small sizes, targets not meaningful**' if args.quick else ''}. "
        f"Median of {repeats} interleaved runs after a warm-up; peak memory in a fresh "
        "subprocess, above the inputs, counting the returned gradients. The machine is shared: "
        "ratios measured side by side are the numbers to trust.\n\n" + NOTES
    )
    body = "\n".join([header, "### Targets\n", summary, "", *sections])
    path = write_result("torch", body)
    print(summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
