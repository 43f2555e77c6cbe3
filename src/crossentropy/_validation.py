"""Input checks shared by every public function.

Errors are raised once, at the public boundary, in one format::

    "<function>: <argument> must <requirement>, got <actual>"

``TypeError`` for types and dtypes, ``ValueError`` for values and shapes.
"""

from __future__ import annotations

import reprlib
import sys
from collections.abc import Iterable
from typing import Any, Literal, NoReturn, cast

import numpy as np
from numpy.typing import ArrayLike, NDArray

Float = np.floating[Any]
FloatArray = NDArray[Float]

Reduction = Literal["none", "mean", "sum"]
REDUCTIONS: tuple[Reduction, ...] = ("none", "mean", "sum")

# The most characters of any value an error message shows: a message names the problem, it
# does not echo a megabyte list back.
MAX_ACTUAL = 200

_REPR = reprlib.Repr()
_REPR.maxlist = _REPR.maxtuple = _REPR.maxset = _REPR.maxfrozenset = _REPR.maxdict = 8
_REPR.maxstring = _REPR.maxother = 80
_REPR.maxlevel = 3


def short_repr(x: object) -> str:
    """``repr(x)``, abbreviated (``[1, 2, ...]``) without building the full repr first."""
    return _REPR.repr(x)


def fail(
    fn: str, arg: str, requirement: str, actual: object, kind: type[Exception] = ValueError
) -> NoReturn:
    """Raise ``kind`` with the house message format, showing at most ``MAX_ACTUAL`` characters
    of ``actual``."""
    text = str(actual)
    if len(text) > MAX_ACTUAL:
        text = f"{text[: MAX_ACTUAL - 30]}... ({len(text)} characters)"
    raise kind(f"{fn}: {arg} must {requirement}, got {text}")


def describe(x: object) -> str:
    """A short description of ``x`` for an error message."""
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {short_repr(x)}"


def _torch_tensor(x: object) -> bool:
    """Whether ``x`` is a ``torch.Tensor`` (without importing torch: if the caller has a
    tensor, torch is already in ``sys.modules``)."""
    torch = sys.modules.get("torch")
    tensor = getattr(torch, "Tensor", None)
    return isinstance(tensor, type) and isinstance(x, tensor)


def as_array(x: ArrayLike, fn: str, arg: str) -> NDArray[Any]:
    """``np.asarray(x)``, refusing torch tensors with a pointer to the torch backend.

    Converting a tensor would detach it from autograd (or fail inside torch, for one that
    requires grad): the result could not train anything.
    """
    if _torch_tensor(x):
        t = cast(Any, x)
        fail(
            fn,
            arg,
            "be a NumPy array or array_like (for torch tensors use crossentropy.torch, "
            "e.g. crossentropy.torch.cross_entropy, which keeps autograd)",
            f"torch.Tensor of shape {tuple(t.shape)} and dtype {t.dtype}",
            TypeError,
        )
    return np.asarray(x)


def float_array(x: ArrayLike, fn: str, arg: str, *, allow_nan: bool = False) -> FloatArray:
    """Return ``x`` as a floating-point ndarray without copying or modifying it.

    Python floats and lists of floats become float64. Integer (including Python ``int``
    literals), boolean, complex and object input is a ``TypeError``, as in PyTorch: a loss of
    integer "logits" is almost always a bug.
    """
    if _torch_tensor(x):
        as_array(x, fn, arg)  # raises, pointing at crossentropy.torch
    if _torch_tensor(x):
        as_array(x, fn, arg)  # raises, pointing at crossentropy.torch
    try:
        arr = np.asarray(x)
    except (ValueError, TypeError) as exc:  # ragged nested sequences
        fail(fn, arg, "be a floating-point array", f"{type(x).__name__} ({exc})", TypeError)
    if arr.dtype.kind != "f":
        fail(fn, arg, "have a floating-point dtype", f"dtype {arr.dtype}", TypeError)
    if not allow_nan and arr.size and np.isnan(arr).any():
        fail(fn, arg, "not contain NaN", f"{int(np.isnan(arr).sum())} NaN value(s)")
    return arr


def input_and_target(input: ArrayLike, target: ArrayLike, fn: str) -> tuple[FloatArray, FloatArray]:
    """Validate a loss's ``input`` and ``target``: floating point, no NaN, same shape."""
    x = float_array(input, fn, "input")
    y = float_array(target, fn, "target")
    check_same_shape(x, y, fn)
    return x, y


def compute_dtype(*dtypes: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype to compute in: the inputs' result type, at least float32."""
    return np.dtype(np.result_type(np.float32, *dtypes))


def check_reduction(reduction: object, fn: str, allowed: Iterable[str] = REDUCTIONS) -> Reduction:
    """``reduction`` if it is one of ``allowed`` (``kl_div`` adds ``"batchmean"``)."""
    allowed = tuple(allowed)
    if not isinstance(reduction, str) or reduction not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        fail(fn, "reduction", f"be one of {options}", short_repr(reduction))
    return cast(Reduction, reduction)


def check_same_shape(
    a: NDArray[Any], b: NDArray[Any], fn: str, name_a: str = "input", name_b: str = "target"
) -> None:
    """Refuse to broadcast: ``a`` and ``b`` must have identical shapes."""
    if a.shape != b.shape:
        fail(fn, name_b, f"have the same shape as {name_a} {a.shape}", f"shape {b.shape}")


def check_broadcastable_to(x: NDArray[Any], shape: tuple[int, ...], fn: str, arg: str) -> None:
    """``x`` must broadcast to ``shape`` without changing ``shape``."""
    try:
        out = np.broadcast_shapes(x.shape, shape)
    except ValueError:
        out = None
    if out != shape:
        fail(fn, arg, f"be broadcastable to {shape}", f"shape {x.shape}")


def check_probabilities(p: FloatArray, fn: str, arg: str) -> None:
    """Every entry of ``p`` must lie in [0, 1]."""
    if p.size and (np.any(p < 0) or np.any(p > 1)):
        lo, hi = float(np.min(p)), float(np.max(p))
        fail(fn, arg, "contain values in [0, 1]", f"values in [{lo:.6g}, {hi:.6g}]")


def check_axis(axis: object, ndim: int, fn: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, (int, np.integer)):
        fail(fn, "axis", "be an integer", describe(axis), TypeError)
    if not -max(ndim, 1) <= int(axis) < max(ndim, 1):
        fail(fn, "axis", f"be in [-{max(ndim, 1)}, {max(ndim, 1)})", int(axis))
    return int(axis) % max(ndim, 1)
