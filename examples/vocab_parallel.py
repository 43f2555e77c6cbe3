"""Vocabulary-parallel cross-entropy on several processes (gloo, CPU).

Run with::

    torchrun --nproc-per-node 2 examples/vocab_parallel.py

Each rank owns a contiguous slice of the output layer's rows (the vocabulary), uneven when
the vocabulary does not divide evenly. The loss is computed without ever gathering the logits;
to show that nothing is lost, every rank also builds the full problem and compares with
``F.cross_entropy`` on the gathered logits (a real program would not have them).
"""

from __future__ import annotations

import datetime

import torch
import torch.distributed as dist
import torch.nn.functional as F

from crossentropy.torch import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy

N, D, V = 256, 64, 1001  # tokens, hidden size, vocabulary (1001: shards of unequal width)


def main() -> None:
    # A timeout on every collective: if a rank dies, the others fail instead of waiting forever.
    dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # the same replicated inputs on every rank
    hidden = torch.randn(N, D)
    weight = torch.randn(V, D) / D**0.5
    target = torch.randint(0, V, (N,))
    target[::10] = -100  # padding tokens

    # This rank's rows of the output layer: [start, stop).
    widths = [V // world + (r < V % world) for r in range(world)]
    start = sum(widths[:rank])
    stop = start + widths[rank]

    # 1. The fused linear form: hidden is replicated, the weight is sharded.
    h = hidden.clone().requires_grad_()
    w_shard = weight[start:stop].clone().requires_grad_()
    loss = vocab_parallel_linear_cross_entropy(h, w_shard, target, label_smoothing=0.1)
    loss.backward()  # h.grad is summed over the ranks; w_shard.grad is this rank's rows

    # 2. The logits form: each rank has already computed its columns of the logits.
    logits_shard = (hidden @ weight[start:stop].T).requires_grad_()
    loss2 = vocab_parallel_cross_entropy(logits_shard, target, label_smoothing=0.1)
    loss2.backward()

    # The single-process reference, on the gathered problem.
    h_ref = hidden.clone().requires_grad_()
    w_ref = weight.clone().requires_grad_()
    ref = F.cross_entropy(h_ref @ w_ref.T, target, label_smoothing=0.1)
    ref.backward()
    assert h.grad is not None and w_shard.grad is not None and logits_shard.grad is not None
    assert h_ref.grad is not None and w_ref.grad is not None
    errors = {
        "loss": abs(loss.item() - ref.item()),
        "logits-form loss": abs(loss2.item() - ref.item()),
        "d hidden": (h.grad - h_ref.grad).abs().max().item(),
        "d weight shard": (w_shard.grad - w_ref.grad[start:stop]).abs().max().item(),
    }
    worst = max(errors.values())
    verdict = "matches F.cross_entropy" if worst < 1e-5 else "DIFFERS from F.cross_entropy"
    print(
        f"rank {rank}/{world}: vocabulary [{start}, {stop}) loss {loss.item():.6f} {verdict} "
        f"(max abs error {worst:.1e})",
        flush=True,
    )
    dist.destroy_process_group()
    if worst >= 1e-5:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
