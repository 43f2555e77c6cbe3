"""Which kernels run a call: one visible function of the tensor and ``impl``.

``impl`` is an argument of every public function (``"auto"``, ``"torch"`` or ``"triton"``) and
travels, as an argument, through the custom ops to each kernel, which asks :func:`select`
where to run. Nothing here imports a kernel module at import time, so the torch-op kernels
(:mod:`._kernels`) and the Triton kernels (:mod:`._triton`) both depend on this module and on
:mod:`._types`, never on each other.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from types import ModuleType

import torch
from torch import Tensor

__all__ = [
    "CPU_KERNELS_ENV",
    "IMPLS",
    "cpu_kernels_choice",
    "select",
    "select_cpu",
    "triton_available",
    "triton_interpreted",
]

IMPLS = ("auto", "torch", "triton")
#: ``auto`` (default) or ``compiled``: the compiled CPU kernels where they apply; ``torch``:
#: the torch-op kernels always
CPU_KERNELS_ENV = "CROSSENTROPY_CPU_KERNELS"

_TRITON = "crossentropy.torch._triton"
_COMPILED = "crossentropy.torch._compiled"
_TYPES = "crossentropy.torch._types"  # by name: this module imports none of the package


def triton_available() -> bool:
    """Triton is installed (it is imported only when a kernel is first launched)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpreted() -> bool:
    """Triton kernels run on CPU tensors in its interpreter: ``TRITON_INTERPRET=1`` when the
    kernels were defined (Triton reads it then), or now if they have not been defined yet."""
    tr = sys.modules.get(_TRITON)
    if tr is not None:
        return bool(tr.INTERPRETED)
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select(x: Tensor, impl: str) -> ModuleType | None:
    """The Triton kernel module if ``impl`` sends ``x`` there, else ``None`` (torch ops).

    ``"torch"``: never. ``"triton"``: always (the public functions have checked that it can
    run, :func:`._checks.check_impl`). ``"auto"``: CUDA tensors of float16, bfloat16 or
    float32 when Triton is installed.
    """
    if impl == "torch":
        return None
    if impl == "auto" and not (
        x.device.type == "cuda" and x.dtype != torch.float64 and triton_available()
    ):
        return None
    return importlib.import_module(_TRITON)


def cpu_kernels_choice() -> str:
    """:data:`CPU_KERNELS_ENV` from the environment, checked on every CPU call (whatever its
    size, so a typo shows at once): ``"auto"``, ``"compiled"`` or ``"torch"``."""
    choice = os.environ.get(CPU_KERNELS_ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "compiled", "torch"):
        raise ValueError(
            f"crossentropy: the environment variable {CPU_KERNELS_ENV} must be 'auto', "
            f"'compiled' or 'torch', got {choice!r}"
        )
    return choice


def select_cpu(x: Tensor, impl: str, tokens: bool = False) -> ModuleType | None:
    """The compiled CPU kernel module (:mod:`._compiled`) if ``impl`` is ``"auto"`` and ``x``
    is a CPU tensor of at least :attr:`Tuning.compiled_min_elements
    <._types.Tuning.compiled_min_elements>` elements (with ``tokens``, the per-token
    statistics': :attr:`Tuning.token_compiled_min_elements
    <._types.Tuning.token_compiled_min_elements>`), else ``None`` (torch ops; ``"torch"`` is
    the way to ask for them). The module may still decline a call (switched off, no compiler,
    strided layouts)."""
    if impl != "auto" or x.device.type != "cpu" or cpu_kernels_choice() == "torch":
        return None
    tuned = importlib.import_module(_TYPES).tuning()
    if x.numel() < (tuned.token_compiled_min_elements if tokens else tuned.compiled_min_elements):
        return None
    return importlib.import_module(_COMPILED)
