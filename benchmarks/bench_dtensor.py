"""DTensor logits sharded over the vocabulary: ``crossentropy.torch.cross_entropy`` against
PyTorch's ``loss_parallel()`` + ``F.cross_entropy``, on 1, 2 and 4 gloo ranks of this machine.

Usage: ``python benchmarks/bench_dtensor.py [--quick]``; writes
``benchmarks/results/dtensor.md`` (``make bench`` runs it through ``run_all.py``).

Each rank (a fresh process, one torch thread) holds a ``Shard(1)`` DTensor of fp32 logits
``(N, V)`` on a 1-D device mesh and a replicated target, and runs one forward+backward of the
mean loss (the case ``loss_parallel`` supports), measuring:

- **peak memory above the inputs**: after a warm-up on a small slice the high-water mark is
  reset (``/proc/self/clear_refs``), one forward+backward runs, ``VmHWM`` minus the resident
  size at the reset is the peak (the returned gradient included); the largest over the ranks;
- **bytes per rank**: the tensors handed to every collective (``c10d`` and functional
  collectives alike, counted by a dispatch mode), forward and backward together.

Memory, not time, is the point: the ranks share 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import MiB, machine_line, markdown_table, proc_status, run_ranks, write_result

WORLDS = (1, 2, 4)
FULL = (4096, 32768)
QUICK = (512, 4096)
RANK_TIMEOUT = 600.0
#: The functional collectives DTensor (and ``loss_parallel``) call, counted by wrapping them;
#: the ``torch.distributed`` ones (``c10d`` ops) by a dispatch mode.
FUNCOL = ("all_reduce", "all_gather_tensor", "all_gather_tensor_autograd", "reduce_scatter_tensor")


def _rank_main(rank: int, world: int, port: int, impl: str, n: int, v: int) -> None:
    import gc

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor, Shard
    from torch.distributed.tensor.parallel import loss_parallel
    from torch.utils._python_dispatch import TorchDispatchMode

    import crossentropy.torch as cet

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=300),
    )
    mesh = init_device_mesh("cpu", (world,))
    width = v // world + (rank < v % world)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, v, (n,), generator=g)
    torch.manual_seed(1 + rank)
    local = torch.randn(n, width)
    x = DTensor.from_local(local, mesh, [Shard(1)], run_check=False).requires_grad_()

    def step(logits: Any, t: Any) -> Any:
        if impl == "ours":
            loss = cet.cross_entropy(logits, t)
            loss.backward()
        else:
            with loss_parallel():
                loss = F.cross_entropy(logits, t)
                loss.backward()
        return loss

    small = DTensor.from_local(local[:8].clone(), mesh, [Shard(1)], run_check=False)
    from crossentropy.torch._types import override_tuning

    with override_tuning(compiled_min_elements=0):  # the compiled CPU kernels' first use too
        step(small.requires_grad_(), target[:8])  # warm-up: the code paths, on 8 rows

    import torch.distributed._functional_collectives as funcol

    sent = [0]

    def first_tensor(args: Any) -> Any:
        for a in args:
            for t in a if isinstance(a, (list, tuple)) else [a]:
                if isinstance(t, torch.Tensor):
                    return t
        return None

    class Counting(TorchDispatchMode):
        def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None):
            if func.namespace == "c10d":
                t = first_tensor(args)
                sent[0] += 0 if t is None else t.numel() * t.element_size()
            return func(*args, **(kwargs or {}))

    def counting(fn: Any) -> Any:
        def wrapped(*args: Any, **kwargs: Any) -> Any:
            t = first_tensor(args)
            sent[0] += 0 if t is None else t.numel() * t.element_size()
            return fn(*args, **kwargs)

        return wrapped

    for name in FUNCOL:
        if hasattr(funcol, name):
            setattr(funcol, name, counting(getattr(funcol, name)))

    dist.barrier()
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    base = proc_status("VmRSS")
    with Counting():
        loss = step(x, target)
    peak = proc_status("VmHWM") - base
    value = float(loss.full_tensor())
    print(
        "RANK_JSON "
        + json.dumps(
            {
                "rank": rank,
                "width": width,
                "inputs": local.numel() * 4,
                "peak": peak,
                "sent": sent[0],
                "loss": value,
            }
        ),
        flush=True,
    )
    dist.destroy_process_group()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    args = parser.parse_args()
    n, v = QUICK if args.quick else FULL
    rows = []
    firsts: dict[str, int] = {}
    for world in WORLDS:
        for impl in ("ours", "loss_parallel"):
            print(f"{impl}: {world} rank(s), N={n} V={v}", flush=True)
            res = run_ranks(__file__, world, (impl, n, v), RANK_TIMEOUT)
            peak = max(r["peak"] for r in res)
            firsts.setdefault(impl, peak)
            losses = {round(r["loss"], 6) for r in res}
            rows.append(
                [
                    world,
                    "`crossentropy.torch.cross_entropy`"
                    if impl == "ours"
                    else "`loss_parallel()` + `F.cross_entropy`",
                    f"{max(r['inputs'] for r in res) / MiB:.1f}",
                    f"{peak / MiB:.1f}",
                    f"{peak / firsts[impl]:.2f}",
                    "/".join(f"{b:,}" for b in sorted({r["sent"] for r in res})),
                    "/".join(f"{x:.6f}" for x in sorted(losses)),
                    f"{os.getloadavg()[0]:.2f}",
                ]
            )
            print(rows[-1], flush=True)
    table = markdown_table(
        [
            "ranks",
            "implementation",
            "logits / rank (MiB)",
            "peak above inputs / rank (MiB)",
            "vs 1 rank",
            "bytes / rank (fwd+bwd)",
            "loss",
            "load (1 min)",
        ],
        rows,
    )
    text = "\n".join(
        [
            f"## DTensor logits sharded over the vocabulary (gloo, fp32 (N, V) = ({n}, {v}))",
            "",
            f"Machine: {machine_line()}; one torch thread per rank. Command: "
            "`python benchmarks/bench_dtensor.py" + (" --quick`." if args.quick else "`."),
            "A `Shard(1)` DTensor of logits per rank on a 1-D mesh, a replicated target, the "
            "mean loss, one forward+backward. Peak: above the rank's logits, the returned "
            "gradient included, the largest over the ranks. Bytes: every tensor handed to a "
            "collective (ours: the handshake, row maxima and sums; `loss_parallel`: its "
            "functional collectives), forward and backward together.",
            "",
            table,
            "",
        ]
    )
    path = write_result("dtensor", text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--rank":
        r, w, p = (int(a) for a in sys.argv[2:5])
        _rank_main(r, w, p, sys.argv[5], int(sys.argv[6]), int(sys.argv[7]))
    else:
        raise SystemExit(main())
