"""The three reductions of ``torch.nn.functional``, and their derivatives."""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import NDArray


def reduce(values: NDArray[Any], reduction: str, denominator: float | None = None) -> NDArray[Any]:
    """Reduce per-element losses.

    ``"mean"`` divides the sum by ``denominator`` (default: the number of elements), so a
    weighted mean passes the sum of its weights. An empty ``"mean"`` is NaN, as in PyTorch.
    Reduced losses are 0-d arrays of the values' dtype (like PyTorch's 0-d tensors).
    """
    if reduction == "none":
        return values
    total = np.asarray(values.sum(dtype=values.dtype))
    if reduction == "sum":
        return total
    count = values.size if denominator is None else denominator
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray(total / values.dtype.type(count), dtype=values.dtype)


def scale(reduction: str, count: float) -> float:
    """``d reduce(values) / d values_i`` for every i: 1 for ``"sum"``/``"none"``, 1/count for mean.

    For ``"none"`` the gradient is that of the *sum* of the values (the library's convention).
    An empty or fully-ignored ``"mean"`` has no finite derivative: NaN, like its value.
    """
    if reduction != "mean":
        return 1.0
    return float("nan") if count == 0 else 1.0 / float(count)
