"""Vocabulary-parallel cross-entropy on 1, 2 and 4 gloo ranks of this machine.

Usage: ``python benchmarks/bench_distributed.py [--quick]``. For a fixed problem, each rank
holds ``1/P`` of the vocabulary. Measured inside every rank (each a fresh process):

- **peak memory above the inputs**: after the inputs are allocated and a warm-up call on a
  small slice, the high-water mark is reset (``/proc/self/clear_refs``); one forward+backward
  runs; ``VmHWM`` minus the resident size at the reset is the peak. The returned gradients
  are part of it. The largest value over the ranks is reported.
- **bytes communicated per rank**: every ``all_reduce``/``all_gather`` that the loss calls is
  wrapped and the size of the tensor it is handed is added up (the payload; the wire traffic
  of a ring all-reduce is about ``2 (P - 1) / P`` times that).
- the wall time of that measured forward+backward. Ranks share the machine's 2 cores (one
  torch thread each), so with 4 ranks the time says little: memory and bytes are the point.

Writes ``benchmarks/results/distributed.md``.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    MiB,
    machine_line,
    markdown_table,
    peak_memory_above_inputs,
    proc_status,
    run_ranks,
    write_result,
)

WORLDS = (1, 2, 4)
CORES = 2
FULL = {"logits": (4096, 0, 32768), "linear": (4096, 1024, 32768)}
QUICK = {"logits": (1024, 0, 8192), "linear": (512, 256, 8192)}
RANK_TIMEOUT = 900.0


# --------------------------------------------------------------------------------- one rank


def _rank_main(rank: int, world: int, port: int, form: str, n: int, d: int, v: int) -> None:
    import gc

    import torch
    import torch.distributed as dist

    from crossentropy.torch import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

    threads = 1  # ranks share the 2 cores: one thread each, never oversubscribed by torch
    torch.set_num_threads(threads)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    widths = [v // world + (r < v % world) for r in range(world)]
    width = widths[rank]
    g = torch.Generator().manual_seed(0)  # the same target on every rank
    target = torch.randint(0, v, (n,), generator=g)
    torch.manual_seed(1 + rank)
    if form == "logits":
        x = torch.randn(n, width).requires_grad_()
        inputs = x.numel() * 4

        def reset() -> None:
            x.grad = None

    else:
        h = (torch.randn(n, d) / d**0.5).requires_grad_()
        w = torch.randn(width, d).requires_grad_()
        inputs = (h.numel() + w.numel()) * 4

        def reset() -> None:
            h.grad = None
            w.grad = None

    # Warm up on the real shapes' code paths with a small batch.
    if form == "logits":
        vocab_parallel_cross_entropy(x[:8], target[:8]).backward()
    else:
        vocab_parallel_linear_cross_entropy(h[:8], w, target[:8]).backward()
    reset()

    sent = {"forward": 0, "backward": 0}
    phase = ["forward"]
    originals = {name: getattr(dist, name) for name in ("all_reduce", "all_gather")}

    def counting(name: str) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            tensor = args[0] if name == "all_reduce" else args[1]
            sent[phase[0]] += tensor.numel() * tensor.element_size()
            return originals[name](*args, **kwargs)

        return wrapped

    for name in originals:
        setattr(dist, name, counting(name))

    class _Phase(torch.autograd.Function):  # marks where backward starts
        @staticmethod
        def forward(ctx: Any, t: Any) -> Any:
            return t.view_as(t)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> Any:
            phase[0] = "backward"
            return grad

    dist.barrier()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = proc_status("VmRSS")
    t0 = time.perf_counter()
    if form == "logits":
        loss = vocab_parallel_cross_entropy(x, target)
    else:
        loss = vocab_parallel_linear_cross_entropy(h, w, target)
    _Phase.apply(loss).backward()
    first = time.perf_counter() - t0
    peak = proc_status("VmHWM") - base
    for name, fn in originals.items():
        setattr(dist, name, fn)
    reset()
    print(
        "RANK_JSON "
        + json.dumps(
            {
                "rank": rank,
                "width": width,
                "threads": threads,
                "inputs": inputs,
                "peak": peak,
                "sent": sent,
                "seconds": first,
            }
        ),
        flush=True,
    )
    dist.destroy_process_group()


# --------------------------------------------------------------------------------- the parent


def _reference_peak(form: str, n: int, d: int, v: int) -> int:
    """``F.cross_entropy`` (naive linear + CE for the linear form), one process, all classes."""
    if form == "logits":
        setup = f"""
import torch, torch.nn.functional as F
torch.set_num_threads({CORES})
x = torch.randn({n}, {v}).requires_grad_()
t = torch.randint(0, {v}, ({n},))
F.cross_entropy(x[:8], t[:8]).backward(); x.grad = None
"""
        run = "loss = F.cross_entropy(x, t)\nloss.backward()\n"
    else:
        setup = f"""
import torch, torch.nn.functional as F
torch.set_num_threads({CORES})
h = (torch.randn({n}, {d}) / {d} ** 0.5).requires_grad_()
w = torch.randn({v}, {d}).requires_grad_()
t = torch.randint(0, {v}, ({n},))
F.cross_entropy(h[:8] @ w.T, t[:8]).backward(); h.grad = None; w.grad = None
"""
        run = "loss = F.cross_entropy(h @ w.T, t)\nloss.backward()\n"
    return peak_memory_above_inputs(setup, run)


def _mib(b: float) -> str:
    return f"{b / MiB:.1f}"


def _bytes(b: int) -> str:
    return f"{b:,}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    sections = [
        "## Vocabulary-parallel cross-entropy (gloo, 1/2/4 ranks on one machine)",
        "",
        f"Machine: {machine_line()}; one torch thread per rank. "
        "Command: `python benchmarks/bench_distributed.py" + (" --quick`." if args.quick else "`."),
        "Peak memory: per rank, above its inputs (its shard of logits, or `hidden` and its "
        "`weight_shard`), counting the returned gradients; the largest over the ranks. "
        "Bytes: the payload this rank hands to `all_gather`/`all_reduce` per forward and per "
        "backward (fp32; the 120-byte handshake is int64). "
        "Time: wall time of that one measured fwd+bwd (slowest rank; fresh gradient pages "
        "included), with the ranks sharing 2 cores: not a scaling measurement.",
        "",
    ]
    for form in ("logits", "linear"):
        n, d, v = sizes[form]
        ref = _reference_peak(form, n, d, v)
        rows = []
        base_peak = None
        for world in WORLDS:
            print(f"{form}: {world} rank(s), N={n} D={d} V={v}", flush=True)
            res = run_ranks(__file__, world, (form, n, d, v), RANK_TIMEOUT)
            peak = max(r["peak"] for r in res)
            base_peak = base_peak or peak
            fwd = {r["sent"]["forward"] for r in res}
            bwd = {r["sent"]["backward"] for r in res}
            rows.append(
                [
                    world,
                    "/".join(str(r["width"]) for r in res),
                    _mib(max(r["inputs"] for r in res)),
                    _mib(peak),
                    f"{peak / base_peak:.2f}",
                    "/".join(_bytes(b) for b in sorted(fwd)),
                    "/".join(_bytes(b) for b in sorted(bwd)),
                    f"{max(r['seconds'] for r in res):.2f}",
                ]
            )
            print(rows[-1], flush=True)
        title = (
            f"### `vocab_parallel_cross_entropy`, fp32 logits (N, V) = ({n}, {v})"
            if form == "logits"
            else f"### `vocab_parallel_linear_cross_entropy`, fp32 (N, D, V) = ({n}, {d}, {v})"
        )
        logits_mib = n * v * 4 / MiB
        note = (
            f"Single process, `F.cross_entropy` on all {v} classes: {_mib(ref)} MiB above the "
            f"input (the logits are {logits_mib:.0f} MiB)."
            if form == "logits"
            else f"Single process, naive `F.cross_entropy(h @ w.T, t)`: {_mib(ref)} MiB above "
            f"the inputs (the logits alone are {logits_mib:.0f} MiB). Per rank the peak is "
            f"`d weight_shard` ({_mib(v * d * 4)} MiB / P, the part that scales with V) plus "
            f"two terms that do not shrink with P: `d hidden` ({_mib(n * d * 4)} MiB, "
            "replicated) and one chunk of recomputed logits (the kernel's default chunk, "
            "about 32 MiB)."
        )
        table = markdown_table(
            [
                "ranks",
                "shard widths",
                "inputs / rank (MiB)",
                "peak above inputs / rank (MiB)",
                "vs 1 rank",
                "bytes sent / rank, forward",
                "bytes sent / rank, backward",
                "time (s)",
            ],
            rows,
        )
        sections += [title, "", table, "", note, ""]
    expected = (
        "Forward bytes per rank are `8·15` (handshake) `+ 4·N` (row max) `+ 4·2N` (sum of "
        "exponentials, target logit) = `120 + 12 N` without label smoothing or class weights, "
        "whatever V and P; the linear form's backward adds `4·N·D` for `d hidden`."
    )
    sections += [expected, ""]
    path = write_result("distributed", "\n".join(sections))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        r, w, p = (int(a) for a in sys.argv[2:5])
        f, nn, dd, vv = sys.argv[5], int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
        _rank_main(r, w, p, f, nn, dd, vv)
    else:
        raise SystemExit(main())
