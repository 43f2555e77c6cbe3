"""Shared fixtures and the one table of tolerances per dtype."""

from __future__ import annotations

import atexit
import importlib
import os
import shutil
import tempfile

# Triton kernels run on CPU tensors in Triton's interpreter (read when a kernel is defined, so
# before anything imports crossentropy.torch._triton): how the CUDA path is tested here.
os.environ.setdefault("TRITON_INTERPRET", "1")
# A fresh inductor cache per run: a cache left by an earlier build of the custom ops could be
# replayed against this one (the cache keys on op names, not on what the ops return). Made
# once, by the process that starts the run (the processes it spawns inherit the variable), and
# removed when that process exits.
if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
    _INDUCTOR_CACHE = tempfile.mkdtemp(prefix="crossentropy-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
    atexit.register(shutil.rmtree, _INDUCTOR_CACHE, ignore_errors=True)

from collections.abc import Callable
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


def central_difference(
    f: Callable[[np.ndarray], Any], x: np.ndarray, h: float = 1e-6, *, relative: bool = False
) -> np.ndarray:
    """``d sum(f(x)) / dx`` by central differences, element by element (use float64 ``x``).

    The step is ``h``, or ``h * max(1, |x_i|)`` with ``relative=True``; the quotient divides
    by the step actually taken, ``xp_i - xm_i``.
    """
    step = h * np.maximum(1.0, np.abs(x)) if relative else np.full_like(x, h)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += step[i]
        xm[i] -= step[i]
        grad[i] = (np.sum(f(xp)) - np.sum(f(xm))) / (xp[i] - xm[i])
    return grad


class MissingModule:
    """Stands in for an optional module that is not installed, as ``pytest.importorskip`` would
    but test by test: its attributes (``torch.float64``, ``F.cross_entropy``) are stand-ins too,
    so module-level tables of them still import, and calling one skips the test that does."""

    def __init__(self, name: str, extra: str) -> None:
        self._name, self._extra = name, extra

    def __getattr__(self, attr: str) -> MissingModule:
        if attr.startswith("_"):  # introspection (doctest's finder, inspect.unwrap) finds nothing
            raise AttributeError(attr)
        return MissingModule(f"{self._name}.{attr}", self._extra)

    def _skip(self, *args: Any, **kwargs: Any) -> Any:
        top = self._name.split(".")[0]
        pytest.skip(
            f"{top} is not installed (pip install 'crossentropy[{self._extra}]')",
            allow_module_level=True,
        )

    __call__ = __bool__ = __iter__ = __len__ = __getitem__ = _skip


def optional_import(name: str, extra: str) -> Any:
    """``import name``, or a :class:`MissingModule` where it is not installed: the NumPy core's
    test modules compare against torch, and their other tests still run without it (an unpacked
    sdist with ``pip install .[test]`` alone)."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError:
        return MissingModule(name, extra)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` (``make test-fast`` leaves it out) every test of a module that starts
    process groups (it imports ``_spawn.spawn_group``) and the benchmarks' dry runs, besides the
    tests marked so where they are written (the browser tests, the docs build)."""
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and (
            "spawn_group" in vars(module) or module.__name__ == "test_benchmarks"
        ):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def rng() -> np.random.Generator:
    """A seeded generator: every random test is reproducible."""
    return np.random.default_rng(20201207)


@pytest.fixture
def tuned(request: pytest.FixtureRequest) -> Callable[..., None]:
    """``tuned(block_elements=33, ...)``: the torch backend's tuning values replaced for the rest
    of the test (``crossentropy.torch._types.override_tuning``), restored after it."""
    types = pytest.importorskip("crossentropy.torch._types")

    def apply(**changes: Any) -> None:
        ctx = types.override_tuning(**changes)
        ctx.__enter__()
        request.addfinalizer(lambda: ctx.__exit__(None, None, None))

    return apply


@pytest.fixture
def force_fused(tuned: Callable[..., None]) -> None:
    """Send every ``crossentropy.torch`` call, however small, through the fused kernels (not
    the direct ``F.cross_entropy`` path that small problems take), on CPU through the compiled
    kernels whatever the size (``impl="torch"`` asks for the torch-op kernels)."""
    tuned(
        direct_max_elements=-1,
        linear_direct_max_elements=-1,
        compiled_min_elements=0,
        token_compiled_min_elements=0,
    )


@pytest.fixture
def spy_compiled(monkeypatch: pytest.MonkeyPatch) -> Callable[..., list[str]]:
    """``spy_compiled("a", "b")`` wraps those entry points of ``crossentropy.torch._compiled``
    and returns the list each of their calls appends to: the name when the kernel took the
    call, ``"declined"`` when it returned ``None`` or ``False`` (the torch-op kernels ran)."""

    def install(*names: str) -> list[str]:
        from crossentropy.torch import _compiled

        calls: list[str] = []
        for name in names:
            inner = getattr(_compiled, name)

            def spy(*a: Any, _inner: Any = inner, _name: str = name, **k: Any) -> Any:
                res = _inner(*a, **k)
                calls.append(_name if res is not None and res is not False else "declined")
                return res

            monkeypatch.setattr(_compiled, name, spy)
        return calls

    return install


#: The figures the demo report writes (``figures/*.svg``), for the report and CLI tests.
DEMO_SVGS = frozenset(
    {
        "gradient_anatomy_linear.svg",
        "gradient_anatomy_log.svg",
        "saturated_neuron_output.svg",
        "saturated_neuron_gradient.svg",
        "race_breast_cancer_standard.svg",
        "race_breast_cancer_saturated.svg",
        "race_digits_standard.svg",
        "race_digits_saturated.svg",
        "derivation_checks.svg",
        "identities.svg",
    }
)

#: Headless Chromium with nothing that reaches the network, for the browser tests.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
