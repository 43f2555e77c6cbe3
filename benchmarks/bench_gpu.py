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
4. **Language-model cases**, checked and timed the same way: the RL loss
   ``-(adv * out.logprob).mean() - 0.01 * out.entropy.mean()`` over
   ``linear_token_stats`` against the naive composition (``h @ W.T``, ``log_softmax``,
   ``gather``, ``-(p * logp).sum(-1)``) and its ``torch.compile``; ``z_loss=1e-4,
   softcap=30.0`` for ``cross_entropy`` and ``linear_cross_entropy`` against the plain
   composition (``30 tanh(x/30)``, ``F.cross_entropy(reduction='none') + 1e-4
   logsumexp²``), its ``torch.compile`` and Liger-Kernel (``lse_square_scale``,
   ``softcap``). The option cases are skipped, with a note, while ``crossentropy.torch``
   lacks the keywords; an implementation that raises is a row saying so, not the end.

``--quick`` without a GPU is a dry run of the same code on tiny shapes: CPU tensors, Triton's
interpreter (``TRITON_INTERPRET=1``), wall-clock timing. Its numbers mean nothing; it keeps the
script working (``tests/test_benchmarks.py``). A full run without a GPU leaves an earlier
``gpu.md`` alone and says so.
"""

from __future__ import annotations

import argparse
import inspect
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
# Per-token statistics (RL loss) and the z-loss + softcap options: the shapes of the plain
# cases above where one exists, so the options' cost reads across tables.
TOKEN_CASES = [(8192, 4096, 128256, torch.bfloat16)]
OPTION_CE_CASES = [(8192, 131072, torch.bfloat16)]
OPTION_LINEAR_CASES = [(4096, 4096, 128256, torch.bfloat16)]
QUICK_TOKENS = [(8, 16, 100, torch.float32), (6, 16, 77, torch.bfloat16)]
QUICK_OPTION_CE = [(8, 100, torch.float32), (6, 77, torch.bfloat16)]
QUICK_OPTION_LINEAR = [(8, 16, 100, torch.float32)]
BETA = 0.01  # entropy bonus of the RL loss
Z_LOSS = 1e-4  # PaLM's z-loss (Liger's lse_square_scale)
SOFTCAP = 30.0  # Gemma 2's final_logit_softcapping
OPTIONS = ("z_loss", "softcap")


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


def _missing_options(fn: Callable[..., object]) -> list[str]:
    """The option keywords ``fn`` does not take (yet)."""
    params = inspect.signature(fn).parameters
    return [k for k in OPTIONS if k not in params]


def rl_loss(logprob: torch.Tensor, entropy: torch.Tensor, adv: torch.Tensor) -> torch.Tensor:
    return -(adv * logprob).mean() - BETA * entropy.mean()


def tokens_ours(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, adv: torch.Tensor
) -> torch.Tensor:
    out = cet.linear_token_stats(h, w, t)
    return rl_loss(out.logprob, out.entropy, adv)


def tokens_naive(
    h: torch.Tensor, w: torch.Tensor, t: torch.Tensor, adv: torch.Tensor
) -> torch.Tensor:
    """The composition a user writes, in the inputs' dtype."""
    logp = torch.log_softmax(h @ w.T, dim=-1)
    logprob = logp.gather(-1, t.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return rl_loss(logprob, entropy, adv)


def plain_options(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """z-loss + softcap cross-entropy in torch ops: x' = c tanh(x/c), CE + z lse(x')²."""
    xc = SOFTCAP * torch.tanh(x / SOFTCAP)
    per_row = F.cross_entropy(xc, t, reduction="none") + Z_LOSS * torch.logsumexp(xc, -1) ** 2
    return per_row.mean()


def linear_plain_options(h: torch.Tensor, w: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    return plain_options(h @ w.T, t)


def _option_peers(linear: bool) -> dict[str, Callable[..., torch.Tensor]]:
    """Liger-Kernel with ``lse_square_scale`` and ``softcap``, if importable."""
    peers: dict[str, Callable[..., torch.Tensor]] = {}
    try:
        from liger_kernel.transformers.functional import (
            liger_cross_entropy,
            liger_fused_linear_cross_entropy,
        )
    except Exception:
        return peers
    if linear:
        peers["Liger-Kernel fused_linear_cross_entropy"] = lambda h, w, t: (
            liger_fused_linear_cross_entropy(h, w, t, lse_square_scale=Z_LOSS, softcap=SOFTCAP)
        )
    else:
        peers["Liger-Kernel cross_entropy (in place)"] = lambda x, t: liger_cross_entropy(
            x, t, lse_square_scale=Z_LOSS, softcap=SOFTCAP
        )
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


def _check_row(name: str, err_loss: float, err_grad: float, dtype: torch.dtype) -> list[object]:
    # bf16: the matmul's (or the gradient's) rounding, as check_linear
    bound = 1e-4 if dtype == torch.float32 else 2.0**-6
    ok = err_loss <= bound and err_grad <= bound
    return [
        name,
        f"{err_loss:.1e}",
        f"{err_grad:.1e}",
        f"{bound:.0e}",
        "**ok**" if ok else "FAILED",
    ]


def _rel(a: torch.Tensor, ref: torch.Tensor) -> float:
    return float((a.double() - ref).abs().max() / ref.abs().max().clamp(min=1e-30))


def check_tokens(n: int, d: int, v: int, dtype: torch.dtype) -> list[object]:
    """RL loss over ``linear_token_stats`` vs the float64 composition (positive advantages, so
    the loss is away from 0 and its relative error means something)."""
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(4)
    h = (torch.randn(n, d, device=dev, generator=g) / d**0.5).to(dtype).requires_grad_()
    w = torch.randn(v, d, device=dev, generator=g).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    adv = torch.rand(n, device=dev, generator=g) + 0.5
    _poison(4 * n * v * 4)
    loss = tokens_ours(h, w, t, adv)
    gh, gw = torch.autograd.grad(loss, (h, w))
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = tokens_naive(h64, w64, t, adv.double())
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    err_grad = max(_rel(gh, rh), _rel(gw, rw))
    name = str(dtype).replace("torch.", "")
    return _check_row(
        f"linear_token_stats RL loss {name} ({n}, {d}, {v})",
        float((loss.double() - ref).abs() / ref.abs()),
        err_grad,
        dtype,
    )


def check_options_ce(n: int, v: int, dtype: torch.dtype) -> list[object]:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(5)
    x = (torch.randn(n, v, device=dev, generator=g) * 16).to(dtype)  # some logits past the cap
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    _poison(4 * x.numel() * x.element_size())
    xx = x.clone().requires_grad_()
    loss = cet.cross_entropy(xx, t, impl="triton", z_loss=Z_LOSS, softcap=SOFTCAP)  # type: ignore[call-arg]
    (gx,) = torch.autograd.grad(loss, (xx,))
    x64 = x.double().requires_grad_()
    ref = plain_options(x64, t)
    (rx,) = torch.autograd.grad(ref, (x64,))
    name = str(dtype).replace("torch.", "")
    return _check_row(
        f"cross_entropy z_loss+softcap {name} ({n}, {v})",
        float((loss.double() - ref).abs() / ref.abs()),
        _rel(gx, rx),
        dtype,
    )


def check_options_linear(n: int, d: int, v: int, dtype: torch.dtype) -> list[object]:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(6)
    h = (torch.randn(n, d, device=dev, generator=g) / d**0.5).to(dtype).requires_grad_()
    w = (torch.randn(v, d, device=dev, generator=g) * 16).to(dtype).requires_grad_()
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    _poison(4 * n * v * 4)
    loss = cet.linear_cross_entropy(  # type: ignore[call-arg]
        h, w, t, impl="triton", z_loss=Z_LOSS, softcap=SOFTCAP
    )
    gh, gw = torch.autograd.grad(loss, (h, w))
    h64, w64 = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = linear_plain_options(h64, w64, t)
    rh, rw = torch.autograd.grad(ref, (h64, w64))
    name = str(dtype).replace("torch.", "")
    return _check_row(
        f"linear_cross_entropy z_loss+softcap {name} ({n}, {d}, {v})",
        float((loss.double() - ref).abs() / ref.abs()),
        max(_rel(gh, rh), _rel(gw, rw)),
        dtype,
    )


def _unless_raises(check: Callable[..., list[object]], case: str, *args: object) -> list[object]:
    """``check(*args)``, or a row saying "error: <exception>" if the implementation raises (an
    option not yet on the Triton path): the run goes on, and the timing table shows the same
    implementation as failed. A wrong number is still FAILED."""
    try:
        return check(*args)
    except Exception as exc:
        print(f"{case}: {type(exc).__name__}: {exc}", flush=True)
        return [case, "—", "—", "—", f"error: {type(exc).__name__}"]


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
                f"{sec / ours:.2f}" if ours else "—",
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
                f"{sec / ours:.2f}" if ours else "—",
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


def _measure(
    fns: dict[str, Callable[[], object]], quick: bool
) -> list[tuple[str, float | None, int | None]]:
    """(name, median seconds, peak bytes) per implementation; a failing one gets seconds None
    and its exception's name in place of the peak (reported, not fatal)."""
    out: list[tuple[str, float | None, int | None]] = []
    for name, fn in fns.items():
        try:
            fn()  # compile / warm up outside the timed region
            sec = _time(fn, quick)
            peak = _peak(fn)
        except Exception as exc:
            print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
            out.append((f"{name} (failed: {type(exc).__name__})", None, None))
            continue
        out.append((name, sec, peak))
    return out


def _projection_table(
    measured: list[tuple[str, float | None, int | None]], n: int, d: int, v: int, flops: float
) -> str:
    floor = 6 * n * d * v / flops if flops else 0.0
    ours = measured[0][1]  # the first row is ours; if it failed, no ratios
    rows = []
    for name, sec, peak in measured:
        if sec is None:
            rows.append([name, "failed", "—", "—", "—"])
            continue
        rows.append(
            [
                name,
                f"{sec * 1e3:.2f}",
                f"{sec / ours:.2f}" if ours else "—",
                "—" if peak is None else f"{peak / GiB:.2f}",
                f"{sec / floor:.2f}" if floor else "—",
            ]
        )
    return markdown_table(
        ["implementation", "fwd+bwd ms", "× ours", "peak above inputs (GiB)", "× 3-matmul floor"],
        rows,
    )


def _projection_inputs(
    n: int, d: int, v: int, dtype: torch.dtype, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(seed)
    h = (torch.randn(n, d, device=dev, generator=g) / d**0.5).to(dtype)
    w = (torch.randn(v, d, device=dev, generator=g) / d**0.5).to(dtype)
    return h, w, torch.randint(0, v, (n,), device=dev, generator=g)


def bench_tokens(n: int, d: int, v: int, dtype: torch.dtype, quick: bool, flops: float) -> str:
    """RL loss over per-token statistics: ours, the naive composition, its torch.compile."""
    h, w, t = _projection_inputs(n, d, v, dtype, seed=7)
    adv = torch.randn(n, device=h.device, generator=torch.Generator(h.device).manual_seed(8))

    def make(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
            fn(hh, ww, t, adv).backward()
            return hh.grad, ww.grad

        return run

    fns = {
        "crossentropy.torch.linear_token_stats": make(tokens_ours),
        "naive: h @ W.T, log_softmax, gather, -(p * logp).sum(-1)": make(tokens_naive),
    }
    if torch.cuda.is_available():
        fns["torch.compile(naive)"] = make(torch.compile(tokens_naive))
    table = _projection_table(_measure(fns, quick), n, d, v, flops)
    name = str(dtype).replace("torch.", "")
    return (
        f"### per-token statistics, RL loss {name} (N, D, V) = ({n}, {d}, {v})\n\n"
        f"`-(adv * out.logprob).mean() - {BETA} * out.entropy.mean()` over "
        "`linear_token_stats(hidden, weight, target)`, fwd+bwd (hidden, weight). Liger-Kernel "
        "has no per-token entropy to compare.\n\n"
        f"{table}\n"
    )


def bench_options_ce(n: int, v: int, dtype: torch.dtype, quick: bool, bandwidth: float) -> str:
    dev = _device()
    g = torch.Generator(device=dev).manual_seed(9)
    x = (torch.randn(n, v, device=dev, generator=g) * 4).to(dtype)
    t = torch.randint(0, v, (n,), device=dev, generator=g)
    fns: dict[str, Callable[[], object]] = {
        "crossentropy.torch (triton), z_loss + softcap": _fwd_bwd(
            lambda a, b: cet.cross_entropy(  # type: ignore[call-arg]
                a, b, impl="triton", z_loss=Z_LOSS, softcap=SOFTCAP
            ),
            x,
            t,
        ),
        "plain: 30 tanh(x/30), F.cross_entropy(none) + 1e-4 logsumexp²": _fwd_bwd(
            plain_options, x, t
        ),
    }
    if torch.cuda.is_available():
        fns["torch.compile(plain)"] = _fwd_bwd(torch.compile(plain_options), x, t)
    # last: Liger writes the gradient into its input, so what it leaves in x is not logits
    for name, peer in _option_peers(linear=False).items():
        fns[name] = _fwd_bwd(peer, x, t)
    logit_bytes = x.numel() * x.element_size()
    measured = _measure(fns, quick)
    ours = measured[0][1]  # the first row is ours; if it failed, no ratios
    rows = []
    for name, sec, peak in measured:
        if sec is None:
            rows.append([name, "failed", "—", "—", "—"])
            continue
        rows.append(
            [
                name,
                f"{sec * 1e3:.3f}",
                f"{sec / ours:.2f}" if ours else "—",
                "—" if peak is None else f"{peak / logit_bytes:.2f}",
                f"{3 * logit_bytes / sec / bandwidth:.0%}" if bandwidth else "—",
            ]
        )
    table = markdown_table(
        ["implementation", "fwd+bwd ms", "× ours", "peak / logits", "of copy bandwidth (3 passes)"],
        rows,
    )
    name = str(dtype).replace("torch.", "")
    return (
        f"### cross-entropy z_loss={Z_LOSS:g}, softcap={SOFTCAP:g}, {name} ({n}, {v})\n\n{table}\n"
    )


def bench_options_linear(
    n: int, d: int, v: int, dtype: torch.dtype, quick: bool, flops: float
) -> str:
    h, w, t = _projection_inputs(n, d, v, dtype, seed=10)

    def make(fn: Callable[..., torch.Tensor]) -> Callable[[], object]:
        def run() -> object:
            hh, ww = h.detach().requires_grad_(), w.detach().requires_grad_()
            fn(hh, ww, t).backward()
            return hh.grad, ww.grad

        return run

    fns = {
        "crossentropy.torch (triton), z_loss + softcap": make(
            lambda a, b, c: cet.linear_cross_entropy(  # type: ignore[call-arg]
                a, b, c, impl="triton", z_loss=Z_LOSS, softcap=SOFTCAP
            )
        ),
        "materialised: h @ W.T, then the plain composition": make(linear_plain_options),
    }
    if torch.cuda.is_available():
        fns["torch.compile(materialised)"] = make(torch.compile(linear_plain_options))
    for name, peer in _option_peers(linear=True).items():
        fns[name] = make(peer)
    table = _projection_table(_measure(fns, quick), n, d, v, flops)
    name = str(dtype).replace("torch.", "")
    return (
        f"### linear cross-entropy z_loss={Z_LOSS:g}, softcap={SOFTCAP:g}, {name} "
        f"(N, D, V) = ({n}, {d}, {v})\n\n{table}\n"
    )


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
    token_cases = QUICK_TOKENS if args.quick else TOKEN_CASES
    checks += [check_tokens(min(n, 256), d, min(v, 32768), dt) for n, d, v, dt in token_cases]
    # The z-loss and softcap cases, once this version of crossentropy.torch has the keywords.
    notes = []
    missing_ce = _missing_options(cet.cross_entropy)
    missing_lin = _missing_options(cet.linear_cross_entropy)
    opt_ce = [] if missing_ce else (QUICK_OPTION_CE if args.quick else OPTION_CE_CASES)
    opt_lin = [] if missing_lin else (QUICK_OPTION_LINEAR if args.quick else OPTION_LINEAR_CASES)
    for fname, missing in (("cross_entropy", missing_ce), ("linear_cross_entropy", missing_lin)):
        if missing:
            notes.append(
                f"Skipped: `crossentropy.torch.{fname}` has no keyword {', '.join(missing)} "
                "(its z-loss + softcap cases)."
            )
            print(notes[-1], flush=True)
    for n, v, dt in opt_ce:
        case = f"cross_entropy z_loss+softcap {dt} ({n}, {v})"
        checks.append(_unless_raises(check_options_ce, case, min(n, 512), min(v, 32768), dt))
    for n, d, v, dt in opt_lin:
        case = f"linear_cross_entropy z_loss+softcap {dt} ({n}, {d}, {v})"
        checks.append(_unless_raises(check_options_linear, case, min(n, 256), d, min(v, 32768), dt))
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
    for n, d, v, dt in token_cases:
        print(f"per-token statistics {dt} ({n}, {d}, {v}) ...", flush=True)
        sections.append(bench_tokens(n, d, v, dt, args.quick, flops))
        print(sections[-1], flush=True)
    for n, v, dt in opt_ce:
        print(f"cross-entropy z_loss + softcap {dt} ({n}, {v}) ...", flush=True)
        sections.append(bench_options_ce(n, v, dt, args.quick, bandwidth))
        print(sections[-1], flush=True)
    for n, d, v, dt in opt_lin:
        print(f"linear cross-entropy z_loss + softcap {dt} ({n}, {d}, {v}) ...", flush=True)
        sections.append(bench_options_linear(n, d, v, dt, args.quick, flops))
        print(sections[-1], flush=True)
    header = (
        "## GPU (Triton path)\n\n"
        f"Device: {device}; torch {torch.__version__}"
        f"{' — **dry run: tiny shapes, numbers not meaningful**' if args.quick else ''}. "
        f"Ceilings measured in this run: copy {bandwidth / 1e12:.2f} TB/s (read + write), "
        f"bf16 matmul {flops / 1e12:.0f} TFLOP/s. Times: median of CUDA-event timings after "
        "warm-up; peak memory above the inputs, gradients included.\n\n"
        f"{check_table}\n" + "".join(f"\n{note}\n" for note in notes)
    )
    write_result("gpu", header + "\n".join(sections))
    failed = any(row[-1] == "FAILED" for row in checks)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
