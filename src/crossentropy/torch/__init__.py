"""Fused PyTorch backend of ``crossentropy`` (optional extra: ``pip install crossentropy[torch]``).

- :func:`cross_entropy`: drop-in for ``torch.nn.functional.cross_entropy``, blocked and
  fused: one gradient-sized buffer, the gradient computed while each block is in cache.
- :func:`linear_cross_entropy`: ``cross_entropy(hidden @ weight.T + bias, target)`` without
  materialising the logits.
- :class:`CrossEntropyLoss`, :class:`LinearCrossEntropyLoss`: ``nn.Module`` wrappers.
- :func:`token_stats`, :func:`linear_token_stats`: per-token log-probability of the target,
  entropy, log-sum-exp and argmax with exact gradients (RL fine-tuning), the linear form
  without materialising the logits.
- ``vocab_parallel_cross_entropy``, ``vocab_parallel_linear_cross_entropy``,
  ``vocab_parallel_token_stats``, ``vocab_parallel_linear_token_stats`` (from
  :mod:`crossentropy.torch.distributed`, loaded on first use): the vocabulary sharded across
  the ranks of a process group.

The building blocks (per-row statistics and gradient passes over a vocabulary shard) are in
:mod:`crossentropy.torch._kernels`.
"""

from __future__ import annotations

from typing import Any

try:
    import torch as _torch  # noqa: F401
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "crossentropy.torch needs PyTorch, which is not installed: "
        "pip install 'crossentropy[torch]' (or install the torch build for your platform)"
    ) from exc

from .functional import cross_entropy, linear_cross_entropy
from .modules import CrossEntropyLoss, LinearCrossEntropyLoss
from .tokens import TokenStats, linear_token_stats, token_stats

__all__ = [
    "CrossEntropyLoss",
    "LinearCrossEntropyLoss",
    "TokenStats",
    "cross_entropy",
    "linear_cross_entropy",
    "linear_token_stats",
    "token_stats",
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_token_stats",
    "vocab_parallel_token_stats",
]

_DISTRIBUTED = (
    "vocab_parallel_cross_entropy",
    "vocab_parallel_linear_cross_entropy",
    "vocab_parallel_linear_token_stats",
    "vocab_parallel_token_stats",
)


def __getattr__(name: str) -> Any:
    # torch.distributed is imported only when its functions are first asked for.
    if name in _DISTRIBUTED:
        from . import distributed

        return getattr(distributed, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
