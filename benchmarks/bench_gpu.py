"""Triton path on one GPU: correctness first, then fwd+bwd time and peak memory, side by side.

Usage: ``python benchmarks/bench_gpu.py [--quick]`` (``make bench-gpu``); writes
``benchmarks/results/gpu.md``. Meant for one CUDA device (the project's lent H200): the whole
run stays under 5 minutes.

1. **Correctness**, before any timing: for each case on a smaller problem of the same dtype,
   loss and gradients of ``crossentropy.torch`` (``impl="triton"``) against ``F.cross_entropy``
   in float64, after poisoning the allocator (freed NaN-filled blocks), so an output element
   the kernel forgets to write shows up as NaN.
2. **Ceilings** measured in the same run: a large device-to-device copy (bytes read + written
   per second) and a bf16 matmul rate.
3. **Time**: median of ``triton.testing.do_bench`` (CUDA events, after warm-up, L2 flushed
   between runs) for fwd+bwd of every implementation present: ours, ``F.cross_entropy``,
   ``torch.compile(F.cross_entropy)``, ``F.linear_cross_entropy`` (if this torch has it),
   Liger-Kernel and Apple's ``cut-cross-entropy`` (if importable). **Peak memory** above the
   inputs from ``torch.cuda.max_memory_allocated``, counting the returned gradients.

``--quick`` without a GPU is a dry run of the same code on tiny shapes: CPU tensors, Triton's
interpreter (``TRITON_INTERPRET=1``), wall-clock timing. Its numbers mean nothing; it keeps the
script working (``tests/test_benchmarks.py``). A full run without a GPU leaves an earlier
``gpu.md`` alone and says so.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

if "--quick" in sys.argv and not torch.cuda.is_available():
    # the dry run: Triton's interpreter, set before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import RESULTS_DIR, markdown_table, write_result

import crossentropy.torch as cet

GiB = 1024**3
CE_CASES = [
    (8192, 32768, torch.bfloat16),
    (8192, 131072, torch.bfloat16),
    (16384, 256000, torch.bfloat16),
    (8192, 32768, torch.float32),
    (8192, 131072, torch.float32),
    (16384, 256000, torch.float32),
]
LINEAR_CASES = [(4096, 4096, 128256, torch.bfloat16), (8192, 4096, 131072, torch.bfloat16)]
QUICK_CE = [(8, 100, torch.float32), (6, 77, torch.bfloat16)]
QUICK_LINEAR = [(8, 16, 100, torch.float32)]


def _device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], quick: bool) -> float:
    """Median seconds of ``fn``: CUDA events via ``triton.testing.do_bench`` on a GPU."""
    if torch.cuda.is_available():
        import triton

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")) / 1e3
    times = []
    for _ in range(2 if quick else 5):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _peak(fn: Callable[[], object]) -> int | None:
    """Peak device bytes above what was allocated before ``fn`` (its results included)."""
    if not torch.cuda.is_available():
        return None
    _sync()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    out = fn()
    _sync()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return peak


def _poison(nbytes: int) -> None:
    """Leave NaN-filled freed blocks in the caching allocator (a no-op on the CPU)."""
    if torch.cuda.is_available():
        junk = torch.full((nbytes // 4,), float("nan"), device="cuda")
        del junk


def _optional_peers() -> dict[str, Callable[..., torch.Tensor]]:
    peers: dict[str, Callable[..., torch.Tensor]] = {}
    try:
        from liger_kernel.transformers.functional import liger_cross_entropy

        peers["Liger-Kernel cross_entropy"] = lambda x, t: liger_cross_entropy(x, t)
    except Exception:
        pass
    return peers


def _linear_peers() -> dict[str, Callable[..., torch.Tensor]]:
    peers: dict[str, Callable[..., torch.Tensor]] = {}
    if hasattr(F, "linear_cross_entropy"):
        peers["F.linear_cross_entropy"] = lambda h, w, t: F.linear_cross_entropy(h, w, t)
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

        peers["Liger-Kernel fused_linear_cross_entropy"] = lambda h, w, t: (
            liger_fused_linear_cross_entropy(h, w, t)
        )
    except Exception:
        pass
    try:
        from cut_cross_entropy import linear_cross_entropy as cce

        peers["Apple cut-cross-entropy"] = lambda h, w, t: cce(h, w, t)
    except Exception:
        pass
    return peers


# --------------------------------------------------------------------------- correctness


def check_cross_entropy(n: int, v: int, dtype: torch.dtype) -> list[object]:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(0)
    x = (torch.randn(n, v, device=dev, generator=g) * 4).to(dtype)
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    t[::7] = -100
    w = torch.rand(v, device=dev, generator=g).to(dtype) + 0.5
    worst_loss = worst_grad = 0.0
    for kw in (
        {},
        {"label_smoothing": 0.1},
        {"weight": w, "reduction": "sum"},
        {"reduction": "none"},
    ):
        _poison(4 * x.numel() * x.element_size())
        xx = x.clone().requires_grad_()
        loss = cet.cross_entropy(xx, t, impl="triton", **kw)
        up = torch.rand(loss.shape, device=dev, generator=g)
        loss.backward(up.to(loss.dtype))
        ref_x = x.double().requires_grad_()
        kw64 = {
            k: (val.double() if isinstance(val, torch.Tensor) else val) for k, val in kw.items()
        }
        ref = F.cross_entropy(ref_x, t, **kw64)
        ref.backward(up.double())
        assert xx.grad is not None and ref_x.grad is not None
        scale = ref.abs().max().clamp(min=1e-30)
        worst_loss = max(worst_loss, float((loss.double() - ref).abs().max() / scale))
        gscale = ref_x.grad.abs().max().clamp(min=1e-30)
        worst_grad = max(worst_grad, float((xx.grad.double() - ref_x.grad).abs().max() / gscale))
    # bf16: one rounding of each output (half an ulp, 2^-9 of a value; the interpreter of the
    # dry run rounds toward zero instead, a whole ulp)
    bound = 1e-5 if dtype == torch.float32 else 2.0 ** (-7 if torch.cuda.is_available() else -6)
    ok = worst_loss <= bound and worst_grad <= bound
    name = str(dtype).replace("torch.", "")
    return [
        f"cross_entropy {name} ({n}, {v})",
        f"{worst_loss:.1e}",
        f"{worst_grad:.1e}",
        f"{bound:.0e}",
        "**ok**" if ok else "FAILED",
    ]


def check_linear(n: int, d: int, v: int, dtype: torch.dtype) -> list[object]:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(1)
    h = (torch.randn(n, d, device=dev, generator=g) / d**0.5).to(dtype).requires_grad_()
    w = torch.randn(v, d, device=dev, generator=g).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    _poison(4 * n * v * 4)
    loss = cet.linear_cross_entropy(h, w, t, impl="triton", label_smoothing=0.1)
    gh, gw = torch.autograd.grad(loss, (h, w))
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(h64 @ w64.T, t, label_smoothing=0.1)
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    err_loss = float((loss.double() - ref).abs() / ref.abs())
    err_grad = max(
        float((gh.double() - rh).abs().max() / rh.abs().max()),
        float((gw.double() - rw).abs().max() / rw.abs().max()),
    )
    bound = 1e-4 if dtype == torch.float32 else 2.0**-6
    ok = err_loss <= bound and err_grad <= bound
    name = str(dtype).replace("torch.", "")
    return [
        f"linear_cross_entropy {name} ({n}, {d}, {v})",
        f"{err_loss:.1e}",
        f"{err_grad:.1e}",
        f"{bound:.0e}",
        "**ok**" if ok else "FAILED",
    ]


# --------------------------------------------------------------------------- ceilings


def ceilings(quick: bool) -> tuple[float, float]:
    """(copy bandwidth in bytes/s counting read + write, bf16 matmul FLOP/s)."""
    dev = _device()
    n = (1 << 16) if quick else (1 << 30)  # 2 GiB of bf16 on a GPU
    a = torch.empty(n, dtype=torch.bfloat16, device=dev).fill_(1)
    b = torch.empty_like(a)
    sec = _time(lambda: b.copy_(a), quick)
    bandwidth = 2 * a.numel() * a.element_size() / sec
    m = 64 if quick else 8192
    p = torch.randn(m, m, device=dev).to(torch.bfloat16)
    q = torch.randn(m, m, device=dev).to(torch.bfloat16)
    sec = _time(lambda: p @ q, quick)
    return bandwidth, 2 * m**3 / sec


# --------------------------------------------------------------------------- timing


def _fwd_bwd(
    fn: Callable[..., torch.Tensor], x: torch.Tensor, t: torch.Tensor
) -> Callable[[], object]:
    def run() -> object:
        xx = x.detach().requires_grad_()
        fn(xx, t).backward()
        return xx.grad

    return run


def bench_ce(n: int, v: int, dtype: torch.dtype, quick: bool, bandwidth: float) -> str:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(2)
    x = torch.randn(n, v, device=dev, generator=g).to(dtype)
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    fns: dict[str, Callable[[], object]] = {
        "crossentropy.torch (triton)": _fwd_bwd(
            lambda a, b: cet.cross_entropy(a, b, impl="triton"), x, t
        ),
        "F.cross_entropy": _fwd_bwd(F.cross_entropy, x, t),
    }
    if torch.cuda.is_available():
        fns["torch.compile(F.cross_entropy)"] = _fwd_bwd(torch.compile(F.cross_entropy), x, t)
    for name, peer in _optional_peers().items():
        fns[name] = _fwd_bwd(peer, x, t)

    def inplace() -> object:
        z = x.detach().clone().requires_grad_()
        logits = z * 1  # a non-leaf the gradient may overwrite
        cet.cross_entropy(logits, t, impl="triton", inplace_backward=True).backward()
        return z.grad

    rows = []
    ours = None
    logit_bytes = x.numel() * x.element_size()
    for name, fn in fns.items():
        try:
            fn()  # compile / warm up outside the timed region
            sec = _time(fn, quick)
            peak = _peak(fn)
        except Exception as exc:  # a peer that fails here is reported, not fatal
            rows.append([name, "failed", type(exc).__name__, "—", "—"])
            continue
        ours = sec if ours is None else ours
        moved = 3 * logit_bytes  # two reads of the logits, one write of the gradient
        rows.append(
            [
                name,
                f"{sec * 1e3:.3f}",
                f"{sec / ours:.2f}",
                "—" if peak is None else f"{peak / logit_bytes:.2f}",
                f"{moved / sec / bandwidth:.0%}" if bandwidth else "—",
            ]
        )
    sec = _time(inplace, quick)
    rows.append(
        [
            "… with inplace_backward=True (incl. one clone)",
            f"{sec * 1e3:.3f}",
            f"{sec / ours:.2f}" if ours else "—",
            "—",
            "—",
        ]
    )
    name = str(dtype).replace("torch.", "")
    table = markdown_table(
        ["implementation", "fwd+bwd ms", "× ours", "peak / logits", "of copy bandwidth (3 passes)"],
        rows,
    )
    return f"### cross-entropy {name} ({n}, {v})\n\n{table}\n"


def bench_linear(n: int, d: int, v: int, dtype: torch.dtype, quick: bool, flops: float) -> str:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(3)
    h = (torch.randn(n, d, device=dev, generator=g) / d**0.5).to(dtype)
    w = (torch.randn(v, d, device=dev, generator=g) / d**0.5).to(dtype)
    t = torch.randint(0, v, (n,), device=dev, generator=g)

    def make(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
            fn(hh, ww, t).backward()
            return hh.grad, ww.grad

        return run

    fns = {
        "crossentropy.torch (triton)": make(
            lambda a, b, c: cet.linear_cross_entropy(a, b, c, impl="triton")
        ),
        "naive F.linear + F.cross_entropy": make(lambda a, b, c: F.cross_entropy(a @ b.T, c)),
    }
    for name, peer in _linear_peers().items():
        fns[name] = make(peer)
    floor = 6 * n * d * v / flops if flops else 0.0
    rows = []
    ours = None
    for name, fn in fns.items():
        try:
            fn()
            sec = _time(fn, quick)
            peak = _peak(fn)
        except Exception as exc:
            rows.append([name, "failed", type(exc).__name__, "—", "—"])
            continue
        ours = sec if ours is None else ours
        rows.append(
            [
                name,
                f"{sec * 1e3:.2f}",
                f"{sec / ours:.2f}",
                "—" if peak is None else f"{peak / GiB:.2f}",
                f"{sec / floor:.2f}" if floor else "—",
            ]
        )
    name = str(dtype).replace("torch.", "")
    table = markdown_table(
        ["implementation", "fwd+bwd ms", "× ours", "peak above inputs (GiB)", "× 3-matmul floor"],
        rows,
    )
    return f"### linear cross-entropy {name} (N, D, V) = ({n}, {d}, {v})\n\n{table}\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny shapes (a dry run on CPU)")
    args = parser.parse_args()
    gpu = torch.cuda.is_available()
    if not gpu and not args.quick:
        target = RESULTS_DIR / "gpu.md"
        print("bench_gpu: no CUDA device here; run `make bench-gpu` on a GPU machine.")
        if not target.exists():
            write_result(
                "gpu",
                "## GPU (Triton path)\n\nNot yet measured: no CUDA device was available to the "
                "run that wrote this file. `make bench-gpu` on one GPU writes it.\n",
            )
        return 0
    device = torch.cuda.get_device_name() if gpu else "CPU (Triton interpreter dry run)"
    print(f"torch {torch.__version__}, device: {device}", flush=True)
    ce_cases = QUICK_CE if args.quick else CE_CASES
    lin_cases = QUICK_LINEAR if args.quick else LINEAR_CASES
    checks = [check_cross_entropy(min(n, 512), min(v, 32768), dt) for n, v, dt in ce_cases]
    checks += [check_linear(min(n, 256), d, min(v, 32768), dt) for n, d, v, dt in lin_cases]
    check_table = markdown_table(
        [
            "case (checked on a smaller problem)",
            "max rel. loss error",
            "max rel. grad error",
            "bound",
            "status",
        ],
        checks,
    )
    print(check_table, flush=True)
    bandwidth, flops = ceilings(args.quick)
    sections = []
    for n, v, dt in ce_cases:
        print(f"cross-entropy {dt} ({n}, {v}) ...", flush=True)
        sections.append(bench_ce(n, v, dt, args.quick, bandwidth))
        print(sections[-1], flush=True)
    for n, d, v, dt in lin_cases:
        print(f"linear cross-entropy {dt} ({n}, {d}, {v}) ...", flush=True)
        sections.append(bench_linear(n, d, v, dt, args.quick, flops))
        print(sections[-1], flush=True)
    header = (
        "## GPU (Triton path)\n\n"
        f"Device: {device}; torch {torch.__version__}"
        f"{' — **dry run: tiny shapes, numbers not meaningful**' if args.quick else ''}. "
        f"Ceilings measured in this run: copy {bandwidth / 1e12:.2f} TB/s (read + write), "
        f"bf16 matmul {flops / 1e12:.0f} TFLOP/s. Times: median of CUDA-event timings after "
        "warm-up; peak memory above the inputs, gradients included.\n\n"
        f"{check_table}\n"
    )
    write_result("gpu", header + "\n".join(sections))
    failed = any(row[-1] == "FAILED" for row in checks)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
