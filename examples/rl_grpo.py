"""A GRPO/PPO policy loss from per-token statistics, without the logits.

Run with::

    python examples/rl_grpo.py

The policy's final hidden states and its output layer go to
:func:`crossentropy.torch.linear_token_stats`, which returns, per sampled token, the
log-probability, the entropy and the argmax of ``softmax(logits / T)`` (the sampling
temperature ``T``) with exact gradients, one chunk of logits at a time. From these:

- the clipped surrogate of PPO/GRPO, ``-min(ρ A, clip(ρ, 1 − ε, 1 + ε) A)`` with
  ``ρ = exp(logprob − old_logprob)``, on the kept tokens;
- entropy-quantile masking: of the completion tokens, only the ``top_q`` fraction with the
  highest entropy take the policy gradient (the "high-entropy minority tokens" of Wang et al.,
  2025, *Beyond the 80/20 Rule*, who keep the top 20 %);
- an entropy bonus ``−β · mean entropy`` over all completion tokens;
- token accuracy, ``argmax == token`` over the kept tokens, from the argmax the statistics
  return: no logits needed.

The run below uses random hidden states and a random output layer (no model, no download): a
group of completions per prompt with a reward each, GRPO's group-normalised advantages, and a
behaviour policy a little off the current one, so that some ratios are clipped. It checks the
loss's gradients against the same loss composed in float64 from the materialised logits.
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import NamedTuple

import torch

from crossentropy.torch import linear_token_stats


class PolicyLoss(NamedTuple):
    loss: torch.Tensor  # 0-d, differentiable
    keep: torch.Tensor  # bool, the tokens that took the policy gradient
    token_accuracy: torch.Tensor  # 0-d, argmax == token over the kept tokens
    clip_fraction: torch.Tensor  # 0-d, kept tokens whose ratio was clipped
    entropy: torch.Tensor  # 0-d, mean entropy over the completion tokens (detached)


def entropy_quantile_mask(entropy: torch.Tensor, mask: torch.Tensor, top_q: float) -> torch.Tensor:
    """The ``ceil(top_q · n)`` tokens of highest entropy among the ``n`` where ``mask`` is
    true (ties broken by position); a selection, so no gradient flows through it."""
    if not 0.0 < top_q <= 1.0:
        raise ValueError(f"entropy_quantile_mask: top_q must be in (0, 1], got {top_q}")
    flat_mask = mask.reshape(-1)
    n = int(flat_mask.sum())
    # ceil of the decimal product: top_q = 0.07 is 0.0700...0007 in binary, and its float
    # product with 100 would round up to 8
    k = math.ceil(Fraction(repr(float(top_q))) * n)
    scores = entropy.detach().reshape(-1).masked_fill(~flat_mask, float("-inf"))
    keep = torch.zeros_like(flat_mask)
    # a stable sort keeps equal entropies in position order (topk's order among ties is not
    # specified)
    keep[torch.sort(scores, descending=True, stable=True).indices[:k]] = True
    return keep.reshape(mask.shape)


def grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    tokens: torch.Tensor,
    old_logprob: torch.Tensor,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    top_q: float = 0.2,
    clip_eps: float = 0.2,
    beta: float = 0.01,
) -> PolicyLoss:
    """Clipped policy loss on the highest-entropy ``top_q`` of the completion tokens, minus
    ``beta`` times their mean entropy.

    ``hidden`` (batch, sequence, D) are the policy's final hidden states at the positions that
    predict ``tokens`` (batch, sequence); ``weight`` (V, D) and ``bias`` its output layer;
    ``old_logprob`` the behaviour policy's log-probabilities of ``tokens`` (at the same
    temperature); ``advantage`` broadcasts to ``tokens`` ((batch, 1) for GRPO's one advantage
    per completion); ``mask`` is true on completion tokens (false on prompt and padding).
    The policy-gradient term is the mean over kept tokens (token-level, as DAPO).
    """
    out = linear_token_stats(hidden, weight, tokens, bias, temperature=temperature)
    keep = entropy_quantile_mask(out.entropy, mask, top_q)
    ratio = torch.exp(out.logprob - old_logprob)
    clipped = ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps)
    surrogate = torch.minimum(ratio * advantage, clipped * advantage)
    n_keep = keep.sum().clamp(min=1)
    policy = -(surrogate * keep).sum() / n_keep
    entropy = (out.entropy * mask).sum() / mask.sum().clamp(min=1)
    with torch.no_grad():
        accuracy = ((out.argmax == tokens) & keep).sum() / n_keep
        clip_fraction = ((ratio != clipped) & keep).sum() / n_keep
    return PolicyLoss(policy - beta * entropy, keep, accuracy, clip_fraction, entropy.detach())


def group_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO: each completion's reward normalised within its prompt's group, (prompts, group)."""
    return (rewards - rewards.mean(-1, keepdim=True)) / (rewards.std(-1, keepdim=True) + eps)


def reference_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor,
    tokens: torch.Tensor,
    old_logprob: torch.Tensor,
    advantage: torch.Tensor,
    mask: torch.Tensor,
    keep: torch.Tensor,
    *,
    temperature: float,
    clip_eps: float,
    beta: float,
) -> torch.Tensor:
    """The same loss from the materialised logits in plain torch ops, given the kept tokens."""
    logp = torch.log_softmax((hidden @ weight.T + bias) / temperature, dim=-1)
    logprob = logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    ratio = torch.exp(logprob - old_logprob)
    surrogate = torch.minimum(
        ratio * advantage, ratio.clamp(1.0 - clip_eps, 1.0 + clip_eps) * advantage
    )
    policy = -surrogate[keep].mean()
    return policy - beta * entropy[mask].mean()


def main() -> None:
    torch.manual_seed(0)
    prompts, group, seq, dim, vocab = 2, 4, 48, 64, 4096
    temperature, top_q, clip_eps, beta = 0.7, 0.2, 0.2, 0.01
    batch = prompts * group
    hidden = torch.randn(batch, seq, dim, requires_grad=True)
    weight = (torch.randn(vocab, dim) * 4 / dim**0.5).requires_grad_()
    bias = torch.zeros(vocab, requires_grad=True)
    mask = torch.ones(batch, seq, dtype=torch.bool)
    mask[:, :16] = False  # the prompt
    mask[1, 40:] = False  # a completion that ended early (padding)
    # The sampled completions, and the behaviour policy's log-probabilities of them: a
    # slightly different output layer, so the ratios are not all 1.
    with torch.no_grad():
        probs = torch.softmax((hidden @ weight.T) / temperature, dim=-1)
        tokens = torch.multinomial(probs.reshape(-1, vocab), 1).reshape(batch, seq)
        behaviour = weight + 0.02 * torch.randn_like(weight)
        old = linear_token_stats(hidden, behaviour, tokens, bias, temperature=temperature)
        old_logprob = old.logprob
    rewards = torch.randn(prompts, group)
    advantage = group_advantages(rewards).reshape(batch, 1)

    out = grpo_loss(
        hidden, weight, tokens, old_logprob, advantage, mask, bias=bias,
        temperature=temperature, top_q=top_q, clip_eps=clip_eps, beta=beta,
    )  # fmt: skip
    out.loss.backward()
    n = int(mask.sum())
    print(
        f"kept {int(out.keep.sum())} of {n} completion tokens "
        f"(ceil({top_q} * {n}) = {math.ceil(top_q * n)})"
    )
    print(f"loss {out.loss.item():.6f}, mean entropy {out.entropy.item():.4f} nats")
    print(f"token accuracy {out.token_accuracy.item():.4f}, clipped {out.clip_fraction.item():.4f}")

    # The same loss in float64 from the materialised logits, on the same kept tokens.
    leaves = [t.detach().double().requires_grad_() for t in (hidden, weight, bias)]
    ref = reference_loss(
        *leaves, tokens, old_logprob.double(), advantage.double(), mask, out.keep,
        temperature=temperature, clip_eps=clip_eps, beta=beta,
    )  # fmt: skip
    ref.backward()
    grad_error = max(
        float((t.grad.double() - r.grad).abs().max() / r.grad.abs().max())  # type: ignore[union-attr]
        for t, r in zip((hidden, weight, bias), leaves, strict=True)
    )
    print(f"float64 reference loss {ref.item():.6f}")
    print(f"gradients vs float64: max relative error {grad_error:.1e}, close: {grad_error < 1e-4}")


if __name__ == "__main__":
    main()
