"""Core benchmark: ``value_and_grad(cross_entropy)`` against torch's forward+backward.

Usage: ``python benchmarks/bench_core.py [--quick]``. Integer labels, float32 logits (N, V).
Times are medians of interleaved runs in one process (see ../shared/BENCHMARKING.md), beside
``F.cross_entropy``, a warmed ``torch.compile(F.cross_entropy)`` and the floor ``np.exp(x)``
into a fresh array; each shape quiet and with one and two CPU-bound processes running beside
it (started here, ended by pid), the 1-minute load in each row. Peak memory above the inputs is
measured in a fresh subprocess per implementation (quiet rows only) and counts the returned
gradient. Writes ``benchmarks/results/core.md``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    burners,
    interleaved_times,
    machine_line,
    markdown_table,
    median,
    peak_memory_above_inputs,
    write_result,
)

import crossentropy as ce

THREADS = 2
FULL = [(4096, 32768), (2048, 131072)]
QUICK = [(256, 4096), (64, 16384)]

_SETUP = """
import numpy as np
rng = np.random.default_rng(0)
x = rng.standard_normal(({n}, {v}), dtype=np.float32)
y = rng.integers(0, {v}, {n})
"""
_OURS_SETUP = """
import crossentropy as ce
vg = ce.value_and_grad(ce.cross_entropy)
vg(x[:2], y[:2])  # warm up imports on a small slice
"""
_TORCH_SETUP = """
import torch, torch.nn.functional as F
torch.set_num_threads({threads})
xt = torch.from_numpy(x).requires_grad_()
yt = torch.from_numpy(y)
F.cross_entropy(xt[:2], yt[:2]).backward()  # warm up on a small slice
xt.grad = None
"""
_OURS_RUN = "value, grad = vg(x, y)\n"
_TORCH_RUN = "loss = F.cross_entropy(xt, yt)\nloss.backward()\ngrad = xt.grad\n"


def _peaks(n: int, v: int) -> tuple[int, int]:
    setup = _SETUP.format(n=n, v=v)
    ours = peak_memory_above_inputs(setup + _OURS_SETUP, _OURS_RUN)
    theirs = peak_memory_above_inputs(setup + _TORCH_SETUP.format(threads=THREADS), _TORCH_RUN)
    return ours, theirs


def _times(n: int, v: int, repeats: int) -> tuple[dict[str, float], float, float]:
    """Median seconds by implementation and the loss / max gradient differences."""
    vg = ce.value_and_grad(ce.cross_entropy)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, v), dtype=np.float32)
    y = rng.integers(0, v, n)
    xt = torch.from_numpy(x).requires_grad_()  # shares x's memory
    yt = torch.from_numpy(y)

    def ours() -> object:
        return vg(x, y)

    def forward_only() -> object:
        return ce.cross_entropy(x, y)

    def theirs() -> object:
        xt.grad = None
        loss = F.cross_entropy(xt, yt)
        loss.backward()
        return loss

    compiled_ce = torch.compile(F.cross_entropy)

    def compiled() -> object:
        xt.grad = None
        loss = compiled_ce(xt, yt)
        loss.backward()
        return loss

    def floor() -> object:
        return np.exp(x)

    # Agreement first: same numbers, or the timing means nothing.
    value, grad = vg(x, y)
    loss = theirs()
    assert isinstance(loss, torch.Tensor) and xt.grad is not None
    err_v = abs(float(value) - loss.item())
    err_g = float(np.max(np.abs(grad - xt.grad.numpy())))
    del grad
    xt.grad = None
    fns = {
        "ours": ours,
        "forward": forward_only,
        "torch": theirs,
        "compiled": compiled,
        "floor": floor,
    }
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    xt.grad = None
    return {k: median(v_) for k, v_ in times.items()}, err_v, err_g


def _measure(n: int, v: int, repeats: int, load: int) -> list[str]:
    """One table row for logits (n, v) with ``load`` burners beside it; the timing arrays are
    freed before the memory probes (quiet rows only)."""
    with burners(load):
        t, err_v, err_g = _times(n, v, repeats)
        load_avg = os.getloadavg()[0]
    size = n * v * 4
    peaks = ("—", "—")
    if load == 0:
        peak_ours, peak_torch = _peaks(n, v)
        peaks = (f"{peak_ours / size:.2f}×", f"{peak_torch / size:.2f}×")
    row = [
        f"({n}, {v})",
        f"{load} ({load_avg:.2f})",
        f"{t['ours']:.3f}",
        f"{t['torch']:.3f}",
        f"**{t['torch'] / t['ours']:.2f}×**",
        f"{t['compiled']:.3f} ({t['ours'] / t['compiled']:.2f}×)",
        f"{t['ours'] / t['floor']:.2f}×",
        f"{t['forward']:.3f}",
        *peaks,
        f"{err_v:.1e} / {err_g:.1e}",
    ]
    print(" | ".join(row), flush=True)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small shapes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=7, help="timed runs per implementation")
    args = parser.parse_args()
    repeats = max(5, args.repeats)
    torch.set_num_threads(THREADS)
    print(f"torch threads: {torch.get_num_threads()} (NumPy ufuncs are single-threaded)")
    print(machine_line())

    shapes = QUICK if args.quick else FULL
    rows = [_measure(n, v, repeats, load) for load in (0, 1, 2) for n, v in shapes]

    headers = [
        "logits (N, V) fp32",
        "burners (1-min load)",
        "ours fwd+grad (s)",
        "F fwd+bwd (s)",
        "speed-up vs F",
        "compile(F) fwd+bwd (s) (ours ×)",
        "ours × np.exp floor",
        "ours value only (s)",
        "peak above input, ours",
        "peak above input, torch",
        "loss diff / max grad diff",
    ]
    command = "python benchmarks/bench_core.py" + (" --quick" if args.quick else "")
    md = "\n".join(
        [
            "## Core: `value_and_grad(cross_entropy)` vs `torch.nn.functional.cross_entropy`",
            "",
            f"Command: `{command}`. {machine_line()}; torch {torch.__version__} with "
            f"`torch.set_num_threads({THREADS})`, NumPy {np.__version__} (single-threaded). "
            f"Integer labels, medians of {repeats} interleaved runs after a warm-up, beside "
            "`F.cross_entropy`, a warmed `torch.compile(F.cross_entropy)` and the floor "
            "`np.exp(x)` into a fresh array, with 0, 1 and 2 CPU-bound processes running beside "
            "the measurement (the 1-minute load beside each row). Peak memory above the inputs "
            "in a fresh subprocess each (quiet rows), as a multiple of the logits' size, "
            "counting the returned gradient (1.00× is the gradient alone). The NumPy core runs "
            "on one core; torch on two.",
            "",
            markdown_table(headers, rows),
        ]
    )
    path = write_result("core", md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
