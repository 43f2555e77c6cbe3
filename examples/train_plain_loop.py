"""A plain PyTorch training loop with the fused linear + cross-entropy loss.

Run with::

    python examples/train_plain_loop.py

The model hands back its final hidden states (batch, sequence, hidden) and keeps its output
layer to itself; the loss takes the hidden states and the output layer's weight, so the
(batch, sequence, vocabulary) logits never exist. Gradient accumulation divides each
micro-batch's summed loss by the token count of the whole batch, so two half batches give
the update of one full batch.
"""

from __future__ import annotations

import torch
from torch import nn

from crossentropy.torch import linear_cross_entropy

VOCAB, HIDDEN, IGNORE = 1000, 64, -100


class TinyLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.body = nn.GRU(HIDDEN, HIDDEN, batch_first=True)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        return self.body(self.embed(ids))[0]  # (batch, sequence, hidden)


def next_token_loss(
    model: TinyLM, ids: torch.Tensor, labels: torch.Tensor, num_tokens: torch.Tensor | None = None
) -> torch.Tensor:
    """Position t predicts token t + 1: the mean over trained tokens, or their sum divided by
    ``num_tokens`` (the count of a whole accumulated batch)."""
    hidden = model.hidden(ids)[:, :-1]
    target = labels[:, 1:]
    reduction = "mean" if num_tokens is None else "sum"
    loss = linear_cross_entropy(
        hidden.reshape(-1, HIDDEN), model.lm_head.weight, target.reshape(-1),
        ignore_index=IGNORE, reduction=reduction,
    )  # fmt: skip
    return loss if num_tokens is None else loss / num_tokens


def main() -> None:
    torch.manual_seed(0)
    model = TinyLM()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.randint(0, VOCAB, (8, 33))
    labels = ids.clone()
    labels[:, :5] = IGNORE  # a prompt that is not trained on
    losses = []
    for _ in range(20):
        optimizer.zero_grad()
        loss = next_token_loss(model, ids, labels)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    print(f"loss {losses[0]:.3f} -> {losses[-1]:.3f}")

    # Gradient accumulation: two halves, each summed and divided by the whole batch's count.
    num_tokens = (labels[:, 1:] != IGNORE).sum()
    model.zero_grad()
    for half in (slice(0, 4), slice(4, 8)):
        next_token_loss(model, ids[half], labels[half], num_tokens).backward()
    accumulated = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    next_token_loss(model, ids, labels).backward()
    same = all(
        torch.allclose(a, p.grad, rtol=1e-4, atol=1e-7)
        for a, p in zip(accumulated, model.parameters(), strict=True)
    )
    print("two accumulated halves give the full batch's gradient:", same)


if __name__ == "__main__":
    main()
