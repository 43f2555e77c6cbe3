"""Per-row algebra shared by every torch path (single-process, vocab-parallel, token
statistics; torch-op kernels and the differentiable reference alike)."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["softcapped"]


def softcapped(z: Tensor, softcap: float | None) -> tuple[Tensor, Tensor | None]:
    """``(z', t)`` with ``z' = c·tanh(z / c)`` and ``t = tanh(z / c)``, kept for the chain
    factor ``∂z'/∂z = 1 − t²`` (the formula of torch's tanh backward), or ``(z, None)`` without
    a softcap. Differentiable torch ops, in ``z``'s dtype: callers cast to the compute dtype
    first (a bfloat16 ``c·tanh(z / c)`` would round ``z'`` to 3 digits)."""
    if softcap is None:
        return z, None
    t = torch.tanh(z / softcap)
    return t * softcap, t
