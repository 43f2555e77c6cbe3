"""Input checks shared by every public function.

Errors are raised once, at the public boundary, in one format::

    "<function>: <argument> must <requirement>, got <actual>"

``TypeError`` for types and dtypes, ``ValueError`` for values and shapes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, NoReturn

import numpy as np
from numpy.typing import ArrayLike, NDArray

Float = np.floating[Any]
FloatArray = NDArray[Float]

REDUCTIONS = ("none", "mean", "sum")


def fail(
    fn: str, arg: str, requirement: str, actual: object, kind: type[Exception] = ValueError
) -> NoReturn:
    """Raise ``kind`` with the house message format."""
    raise kind(f"{fn}: {arg} must {requirement}, got {actual}")


def describe(x: object) -> str:
    """A short description of ``x`` for an error message."""
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape} and dtype {x.dtype}"
    return f"{type(x).__name__} {x!r}"


def float_array(x: ArrayLike, fn: str, arg: str, *, allow_nan: bool = False) -> FloatArray:
    """Return ``x`` as a floating-point ndarray without copying or modifying it.

    Python floats and lists of floats become float64. Integer (including Python ``int``
    literals), boolean, complex and object input is a ``TypeError``, as in PyTorch: a loss of
    integer "logits" is almost always a bug.
    """
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


def check_reduction(reduction: object, fn: str, allowed: Iterable[str] = REDUCTIONS) -> str:
    allowed = tuple(allowed)
    if not isinstance(reduction, str) or reduction not in allowed:
        options = ", ".join(repr(a) for a in allowed)
        fail(fn, "reduction", f"be one of {options}", repr(reduction))
    return reduction


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
