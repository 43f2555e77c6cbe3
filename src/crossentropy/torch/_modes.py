"""Which mode a call runs in: compiling, a ``torch.func`` transform, a differentiable backward,
autocast. One place for the questions every autograd glue asks."""

from __future__ import annotations

import contextlib
from typing import Any, TypeGuard

import torch
import torch.autograd.forward_ad as _forward_ad
from torch import Tensor

__all__ = [
    "autocast_dtype",
    "autocast_on",
    "autocast_projection",
    "compiling",
    "differentiable_backward",
    "no_autocast",
    "transforms_active",
]


def compiling() -> bool:
    """``torch.compile`` (Dynamo) is tracing this call."""
    return torch.compiler.is_compiling()


def transforms_active() -> bool:
    """A ``torch.func`` transform (grad, vmap, jacrev, jvp, ...) is tracing this call, or a
    ``torch.autograd.forward_ad`` dual level is open (forward-mode AD needs a jvp rule, which
    the composite reference has)."""
    return torch._C._are_functorch_transforms_active() or _forward_ad._current_level >= 0


def differentiable_backward() -> bool:
    """Backward must be built from differentiable, batchable torch ops: it runs with
    ``create_graph=True`` or under a ``torch.func`` transform (``jacobian(vectorize=True)``
    vmaps the backward of a graph recorded outside any transform)."""
    if torch.is_grad_enabled() or transforms_active():
        return True
    # the legacy vmap that jacobian(vectorize=True) uses shows only as a thread-local key
    return not compiling() and "VmapMode" in str(torch._C._dispatch_tls_local_include_set())


def autocast_on(x: Tensor) -> bool:
    """Autocast is enabled for ``x``'s device type."""
    dev = x.device.type
    return dev in ("cpu", "cuda", "xpu", "mps") and torch.is_autocast_enabled(dev)


def autocast_dtype(dtype: torch.dtype) -> torch.dtype:
    """What autocast's float32 list makes of a floating dtype."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def _eligible(x: object) -> TypeGuard[Tensor]:
    """What autocast casts: floating tensors other than float64 (which it leaves alone)."""
    return isinstance(x, Tensor) and x.is_floating_point() and x.dtype != torch.float64


def autocast_projection(h: Tensor, weight: object, bias: object) -> tuple[Tensor, Any, Any]:
    """What ``F.linear`` does under autocast: ``hidden``, ``weight`` and ``bias`` cast to the
    autocast dtype (differentiably), float64 left as it is; anything not a floating tensor is
    left for the checks."""
    if not _eligible(h):  # float64 hidden: nothing is cast (the checks then see the
        return h, weight, bias  # caller's dtypes, not ones autocast would have made)
    low = torch.get_autocast_dtype(h.device.type)
    weight = weight.to(low) if _eligible(weight) else weight
    bias = bias.to(low) if _eligible(bias) else bias
    return h.to(low), weight, bias


def no_autocast(x: Tensor) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast(enabled=False)`` only when autocast is on (the common case costs 0).
    A plain ``with`` on what this returns is what ``torch.compile`` traces (a stored
    context whose ``__enter__`` is called by hand is a graph break)."""
    if autocast_on(x):
        return torch.autocast(x.device.type, enabled=False)
    return contextlib.nullcontext()
