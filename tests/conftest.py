"""Shared fixtures and the one table of tolerances per dtype."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

# rtol/atol per dtype. float64 is near machine precision; float32 follows scipy's
# 4*sqrt(eps) rule of thumb; float16 is only used for dtype-preservation checks.
TOL: dict[Any, dict[str, float]] = {
    np.dtype(np.float64): {"rtol": 1e-10, "atol": 1e-12},
    np.dtype(np.float32): {"rtol": 4 * float(np.sqrt(np.finfo(np.float32).eps)), "atol": 1e-5},
    np.dtype(np.float16): {"rtol": 1e-2, "atol": 1e-3},
}


def tol(dtype: Any) -> dict[str, float]:
    """Tolerances for results of ``dtype`` (numpy or torch dtype, or its name)."""
    name = str(dtype)
    if name.startswith("torch."):
        name = name.removeprefix("torch.")
        if name == "bfloat16":
            return {"rtol": 2e-2, "atol": 1e-2}
        return TOL[np.dtype(name)]
    return TOL[np.dtype(dtype)]


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every random test is reproducible."""
    return np.random.default_rng(20201207)
