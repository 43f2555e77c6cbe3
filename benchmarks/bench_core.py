"""Core benchmark: ``value_and_grad(cross_entropy)`` against torch's forward+backward.

Usage: ``python benchmarks/bench_core.py [--quick]``. Integer labels, float32 logits (N, V).
Times are medians of interleaved runs in one process (see ../shared/BENCHMARKING.md); peak
memory above the inputs is measured in a fresh subprocess per implementation and counts the
returned gradient. Writes ``benchmarks/results/core.md``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
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


def _times(n: int, v: int, repeats: int) -> tuple[float, float, float, float, float]:
    """Median seconds (ours, ours value only, torch) and the loss / max gradient differences."""
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

    # Agreement first: same numbers, or the timing means nothing.
    value, grad = vg(x, y)
    loss = theirs()
    assert isinstance(loss, torch.Tensor) and xt.grad is not None
    err_v = abs(float(value) - loss.item())
    err_g = float(np.max(np.abs(grad - xt.grad.numpy())))
    del grad
    xt.grad = None
    times = interleaved_times(
        {"ours": ours, "forward": forward_only, "torch": theirs}, repeats=repeats, warmup=1
    )
    xt.grad = None
    t_ours, t_fwd, t_torch = (median(times[k]) for k in ("ours", "forward", "torch"))
    return t_ours, t_fwd, t_torch, err_v, err_g


def _measure(n: int, v: int, repeats: int) -> list[str]:
    """One table row for logits (n, v); the timing arrays are freed before the memory probes."""
    t_ours, t_fwd, t_torch, err_v, err_g = _times(n, v, repeats)
    peak_ours, peak_torch = _peaks(n, v)
    size = n * v * 4
    row = [
        f"({n}, {v})",
        f"{t_ours:.3f}",
        f"{t_torch:.3f}",
        f"**{t_torch / t_ours:.2f}×**",
        f"{t_fwd:.3f}",
        f"{peak_ours / size:.2f}×",
        f"{peak_torch / size:.2f}×",
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

    rows = [_measure(n, v, repeats) for n, v in (QUICK if args.quick else FULL)]

    headers = [
        "logits (N, V) fp32",
        "ours fwd+grad (s)",
        "torch fwd+bwd (s)",
        "speed-up",
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
            f"Integer labels, medians of {repeats} interleaved runs after a warm-up. Peak "
            "memory above the inputs in a fresh subprocess each, as a multiple of the logits' "
            "size, counting the returned gradient (1.00× is the gradient alone).",
            "",
            markdown_table(headers, rows),
        ]
    )
    path = write_result("core", md)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
