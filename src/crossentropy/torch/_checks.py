"""Argument checks shared by the single-process and the vocabulary-parallel functions.

Same message format as the NumPy core (:func:`crossentropy._validation.fail`):
``"<function>: <argument> must <requirement>, got <actual>"``.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import torch
from torch import Tensor

from .._validation import check_reduction, fail
from ..categorical import _SOFTCAP_IN_RANGE, SOFTCAP_RANGE
from . import _backend as B

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
#: Characters of a value's repr shown in an error message.
_MAX_REPR = 160


def describe(x: object) -> str:
    """A short description of ``x`` for an error message."""
    if isinstance(x, Tensor):
        return f"tensor of shape {tuple(x.shape)} and dtype {x.dtype}"
    text = repr(x)
    if len(text) > _MAX_REPR:  # a list of a million labels must not become the message
        size = f" of length {len(x)}" if hasattr(x, "__len__") else ""
        text = f"{text[: _MAX_REPR - 20]}... ({type(x).__name__}{size})"
    return f"{type(x).__name__} {text}"


def check_tensor(fn: str, arg: str, x: object, *, floating: bool | None = None) -> Tensor:
    """``x`` must be a tensor; floating point if ``floating``, class indices if ``False``."""
    if not isinstance(x, Tensor):
        fail(fn, arg, "be a torch.Tensor", describe(x), TypeError)
    if floating and not x.is_floating_point():
        fail(fn, arg, "have a floating-point dtype", f"dtype {x.dtype}", TypeError)
    if floating is False and (x.is_floating_point() or x.is_complex() or x.dtype == torch.bool):
        fail(fn, arg, "have an integer dtype (class indices)", f"dtype {x.dtype}", TypeError)
    return x


def python_scalar(value: Any, integral: bool) -> Any:
    """NumPy scalars and 0-d real tensors as Python numbers, as ``F`` accepts them for
    ``label_smoothing`` (``integral=False``) and ``ignore_index`` (``integral=True``); anything
    else unchanged, for the checks to report. Never raises on a value it cannot convert (the
    vocab-parallel functions call it before their handshake)."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        if value.device.type == "meta":
            return value
        if integral and not value.is_floating_point() and not value.is_complex():
            return int(value)
        if not integral and not value.is_complex():
            return float(value)
    elif integral and isinstance(value, numbers.Integral) and not isinstance(value, (bool, int)):
        return operator.index(value)
    elif not integral and isinstance(value, numbers.Real):
        if not isinstance(value, (bool, int, float)):
            return float(value)
    return value


def _refuse_meta_scalar(fn: str, arg: str, value: object) -> None:
    """A 0-d tensor on the meta device has no value to read: say so."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.device.type == "meta":
        fail(
            fn,
            arg,
            "be a number (a 0-d tensor must hold a value: not on the meta device)",
            "a 0-d tensor on the meta device",
            TypeError,
        )


def check_ignore_index(fn: str, ignore_index: object) -> int:
    """An integer (NumPy integers and 0-d integer tensors included) that fits in int64."""
    _refuse_meta_scalar(fn, "ignore_index", ignore_index)
    value = python_scalar(ignore_index, integral=True)
    if isinstance(value, bool) or not isinstance(value, int):
        fail(fn, "ignore_index", "be an integer", describe(ignore_index), TypeError)
    if not _INT64_MIN <= value <= _INT64_MAX:
        fail(fn, "ignore_index", "fit in int64", value)
    return value


def check_options(
    fn: str, reduction: object, label_smoothing: object, ignore_index: object
) -> tuple[str, float, int]:
    """Validated ``(reduction, label_smoothing, ignore_index)``."""
    red = check_reduction(reduction, fn)
    _refuse_meta_scalar(fn, "label_smoothing", label_smoothing)
    ls = python_scalar(label_smoothing, integral=False)
    if isinstance(ls, bool) or not isinstance(ls, (int, float)):
        fail(fn, "label_smoothing", "be a float", describe(label_smoothing), TypeError)
    eps = float(ls)
    if not 0.0 <= eps <= 1.0:
        fail(fn, "label_smoothing", "be in [0, 1]", eps)
    return red, eps, check_ignore_index(fn, ignore_index)


def check_class_weight(
    fn: str,
    arg: str,
    weight: object,
    num_classes: int,
    *,
    what: str = "one weight per class",
    device: torch.device | None = None,
) -> Tensor | None:
    """``None``, or a floating tensor of shape ``(num_classes,)`` (on ``device`` if given)."""
    if weight is None:
        return None
    w = check_tensor(fn, arg, weight, floating=True)
    if tuple(w.shape) != (num_classes,):
        fail(fn, arg, f"have shape ({num_classes},) ({what})", f"shape {tuple(w.shape)}")
    if device is not None and w.device != device:
        fail(fn, arg, f"be on the logits' device {device}", f"device {w.device}")
    return w


def check_chunk_size(fn: str, chunk_size: object) -> int | None:
    """``None`` or a positive integer (NumPy integers accepted); returns it as an ``int``."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, numbers.Integral):
        fail(fn, "chunk_size", "be a positive integer or None", describe(chunk_size), TypeError)
    size = operator.index(chunk_size)
    if size < 1:
        fail(fn, "chunk_size", "be a positive integer or None", size)
    return size


def check_projection(
    fn: str,
    hidden: Tensor,
    weight: object,
    bias: object,
    *,
    weight_arg: str = "weight",
    bias_arg: str = "bias",
) -> tuple[Tensor, Tensor | None]:
    """The output layer ``weight`` (C, D) and optional ``bias`` (C,) that project ``hidden``."""
    w = check_tensor(fn, weight_arg, weight)
    if w.dtype != hidden.dtype:
        need = f"have the dtype of hidden ({hidden.dtype})"
        fail(fn, weight_arg, need, f"dtype {w.dtype}", TypeError)
    if w.dim() != 2 or w.shape[1] != hidden.shape[-1]:
        fail(fn, weight_arg, f"have shape (C, {hidden.shape[-1]})", f"shape {tuple(w.shape)}")
    if w.device != hidden.device:
        fail(fn, weight_arg, f"be on hidden's device {hidden.device}", f"device {w.device}")
    if bias is None:
        return w, None
    b = check_tensor(fn, bias_arg, bias)
    if b.dtype != hidden.dtype:
        need = f"have the dtype of hidden ({hidden.dtype})"
        fail(fn, bias_arg, need, f"dtype {b.dtype}", TypeError)
    if tuple(b.shape) != (w.shape[0],):
        fail(fn, bias_arg, f"have shape ({w.shape[0]},)", f"shape {tuple(b.shape)}")
    if b.device != hidden.device:  # else F.linear fails inside the kernel, in torch's words
        fail(fn, bias_arg, f"be on hidden's device {hidden.device}", f"device {b.device}")
    return w, b


def check_impl(fn: str, impl: object, x: Tensor) -> str:
    """``impl`` is ``"auto"``, ``"torch"`` or ``"triton"``, and Triton can run on ``x``."""
    if impl == "auto":
        return impl
    if not isinstance(impl, str) or impl not in B.IMPLS:
        fail(fn, "impl", "be one of 'auto', 'torch', 'triton'", describe(impl))
    if impl != "triton":
        return impl
    if not B.triton_available():
        fail(fn, "impl", "be 'auto' or 'torch' when Triton is not installed", "'triton'")
    if x.dtype == torch.float64:
        fail(
            fn,
            "impl",
            "be 'auto' or 'torch' for float64 input (the Triton kernels take float16, "
            "bfloat16 and float32)",
            "'triton'",
        )
    if x.device.type not in ("cuda", "meta") and not B.triton_interpreted():
        fail(
            fn,
            "impl",
            f"be 'auto' or 'torch' for tensors on {x.device} (Triton runs on CUDA tensors, "
            "or on CPU tensors with TRITON_INTERPRET=1)",
            "'triton'",
        )
    return impl


def _real(fn: str, arg: str, value: object) -> object:
    """NumPy scalars and 0-d real tensors become Python numbers (as ``F`` accepts them);
    :func:`python_scalar`, after refusing a 0-d real tensor with no value (on the meta
    device)."""
    if isinstance(value, Tensor) and value.dim() == 0 and value.dtype != torch.bool:
        if not value.is_complex():
            _refuse_meta_scalar(fn, arg, value)
    return python_scalar(value, integral=False)


def _to_float(value: int | float) -> float:
    """``float(value)``, with an integer beyond float's range as ``inf`` (then refused)."""
    try:
        return float(value)
    except OverflowError:
        return float("inf")


def check_z_loss(fn: str, z_loss: object) -> float:
    """A finite real ``≥ 0`` (the weight of ``lse²``)."""
    value = _real(fn, "z_loss", z_loss)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        fail(fn, "z_loss", "be a finite float >= 0", describe(z_loss), TypeError)
    z = _to_float(value)
    if not (z >= 0.0 and z != float("inf")):
        fail(fn, "z_loss", "be a finite float >= 0", z)
    return z


def _positive_float32(fn: str, arg: str, value: object, what: str, in_range: str) -> float:
    """A finite real ``> 0`` in float32's normal range, where the kernels divide by it;
    ``what`` is the requirement the error states."""
    real = _real(fn, arg, value)
    if isinstance(real, bool) or not isinstance(real, (int, float)):
        fail(fn, arg, what, describe(value), TypeError)
    c = _to_float(real)
    if not (c > 0.0 and c != float("inf")):
        fail(fn, arg, what, c)
    if not SOFTCAP_RANGE[0] <= c <= SOFTCAP_RANGE[1]:
        fail(fn, arg, in_range, c)
    return c


def check_softcap(fn: str, softcap: object) -> float | None:
    """``None`` or a finite real ``> 0`` (the cap ``c`` of ``c tanh(x / c)``)."""
    if softcap is None:
        return None
    what = "be None or a finite float > 0"
    return _positive_float32(fn, "softcap", softcap, what, _SOFTCAP_IN_RANGE)


def check_temperature(fn: str, temperature: object) -> float:
    """A finite real ``> 0`` in float32's normal range (``z / T`` of the token statistics)."""
    in_range = "be in [2**-126, 2**127] (float32's normal range)"
    return _positive_float32(fn, "temperature", temperature, "be a finite float > 0", in_range)


def check_sample_weight(
    fn: str,
    sample_weight: object,
    positions: tuple[int, ...],
    device: torch.device,
    *,
    what: str = "one weight per target position",
    device_of: str = "the input's",
) -> Tensor | None:
    """``None``, or a floating tensor of the target positions' shape on ``device`` (no
    broadcasting: a weight per position); ``device_of`` names whose device that is."""
    if sample_weight is None:
        return None
    s = check_tensor(fn, "sample_weight", sample_weight, floating=True)
    if tuple(s.shape) != tuple(positions):
        fail(
            fn,
            "sample_weight",
            f"have shape {tuple(positions)} ({what})",
            f"shape {tuple(s.shape)}",
        )
    if s.device != device:
        fail(fn, "sample_weight", f"be on {device_of} device {device}", f"device {s.device}")
    return s


def check_num_items(fn: str, num_items: object, reduction: object) -> float | Tensor:
    """``num_items``: a finite number > 0 or a 0-d real tensor (its value is not read: no host
    sync), given with the default ``reduction="mean"`` only."""
    if reduction != "mean":
        fail(
            fn,
            "reduction",
            "be 'mean' (the default) when num_items is given: the loss is then the sum over "
            "the kept positions divided by num_items",
            repr(reduction),
        )
    if isinstance(num_items, Tensor):
        if num_items.dim() != 0:
            fail(fn, "num_items", "be a number or a 0-d tensor", f"shape {tuple(num_items.shape)}")
        if num_items.is_complex() or num_items.dtype == torch.bool:
            fail(fn, "num_items", "be a real number", f"dtype {num_items.dtype}", TypeError)
        if num_items.requires_grad:
            fail(fn, "num_items", "not require grad (it is a count)", "a tensor that does")
        return num_items
    if isinstance(num_items, bool) or not isinstance(num_items, numbers.Real):
        fail(fn, "num_items", "be a number or a 0-d tensor", describe(num_items), TypeError)
    value = float(num_items)  # type: ignore[arg-type]
    if not (value > 0 and value != float("inf")):
        fail(fn, "num_items", "be a finite number > 0", repr(num_items))
    return value
