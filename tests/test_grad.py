"""The value_and_grad registry: lookup errors, signatures, every gradient vs finite differences."""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

import crossentropy as ce
from conftest import central_difference
from crossentropy.grad import registered

# One float64 example per registered loss, away from kinks and clamps:
# name -> builder(rng) -> (first argument, other positional arguments, {option: values to try}).
Case = Callable[[np.random.Generator], tuple[np.ndarray, tuple[Any, ...], dict[str, list[Any]]]]
REDUCTIONS = ["mean", "sum", "none"]


def _simplex(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    e = rng.uniform(0.2, 1.0, shape)
    return e / e.sum(-1, keepdims=True)


CASES: dict[str, Case] = {
    "binary_cross_entropy": lambda rng: (
        rng.uniform(0.05, 0.95, (3, 4)),
        (rng.uniform(0, 1, (3, 4)),),
        {"reduction": REDUCTIONS, "weight": [None, rng.uniform(0.5, 2, (4,))]},
    ),
    "binary_cross_entropy_with_logits": lambda rng: (
        rng.standard_normal((3, 4)) * 3,
        (rng.uniform(0, 1, (3, 4)),),
        {
            "reduction": REDUCTIONS,
            "weight": [None, rng.uniform(0.5, 2, (3, 4))],
            "pos_weight": [None, rng.uniform(0.5, 3, (4,))],
        },
    ),
    "mse_loss": lambda rng: (
        rng.standard_normal((3, 4)),
        (rng.standard_normal((3, 4)),),
        {"reduction": REDUCTIONS},
    ),
    "kl_div": lambda rng: (
        np.log(_simplex(rng, (3, 4))),
        (_simplex(rng, (3, 4)),),
        {"reduction": [*REDUCTIONS, "batchmean"]},
    ),
    "entropy": lambda rng: (_simplex(rng, (3, 4)), (), {"axis": [-1, 0]}),
    "kl_divergence": lambda rng: (
        _simplex(rng, (3, 4)),
        (_simplex(rng, (3, 4)),),
        {"axis": [-1, 0]},
    ),
    # categorical.py (another developer): exercised once it registers its losses.
    "cross_entropy": lambda rng: (
        rng.standard_normal((4, 5)) * 2,
        (np.array([0, 3, -100, 4]),),  # one ignored sample
        {
            "reduction": REDUCTIONS,
            "label_smoothing": [0.0, 0.1],
            "weight": [None, rng.uniform(0.5, 2, (5,))],
        },
    ),
    "nll_loss": lambda rng: (
        np.log(_simplex(rng, (4, 5))),
        (np.array([1, -100, 0, 4]),),
        {"reduction": REDUCTIONS, "weight": [None, rng.uniform(0.5, 2, (5,))]},
    ),
    "categorical_cross_entropy": lambda rng: (
        _simplex(rng, (4, 5)),
        (_simplex(rng, (4, 5)),),
        {"reduction": REDUCTIONS},
    ),
}


def _loss(name: str) -> Callable[..., Any]:
    loss = getattr(ce, name, None)
    if loss is None or loss not in registered():
        pytest.skip(f"{name} is not (yet) part of the library")
    return loss  # type: ignore[no-any-return]


def _option_grid(options: dict[str, list[Any]]) -> list[dict[str, Any]]:
    grid: list[dict[str, Any]] = [{}]
    for key, values in options.items():
        grid = [{**g, key: v} for g in grid for v in values]
    return grid


def test_every_registered_loss_has_a_case() -> None:
    names = {getattr(f, "__name__", repr(f)) for f in registered()}
    assert names - set(CASES) == set(), "add a finite-difference case for the new loss"
    # and this module's own losses are registered
    for name in [
        "binary_cross_entropy",
        "binary_cross_entropy_with_logits",
        "mse_loss",
        "kl_div",
        "entropy",
        "kl_divergence",
    ]:
        assert getattr(ce, name) in registered(), name


@pytest.mark.parametrize("name", list(CASES))
def test_gradient_matches_central_differences_in_float64(
    rng: np.random.Generator, name: str
) -> None:
    loss = _loss(name)
    x, args, options = CASES[name](rng)
    vg = ce.value_and_grad(loss)
    for kwargs in _option_grid(options):
        x_before = x.copy()
        value, grad = vg(x, *args, **kwargs)
        np.testing.assert_array_equal(x, x_before)
        np.testing.assert_array_equal(value, loss(x, *args, **kwargs), err_msg=str(kwargs))
        assert grad.shape == x.shape and grad.dtype == x.dtype
        fd = central_difference(lambda a: loss(a, *args, **kwargs), x, relative=True)  # noqa: B023
        np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8, err_msg=f"{name} {kwargs}")


@pytest.mark.parametrize("name", list(CASES))
def test_value_and_grad_takes_the_losss_exact_arguments(name: str) -> None:
    loss = _loss(name)
    ours = inspect.signature(ce.value_and_grad(loss)).parameters
    theirs = inspect.signature(loss).parameters
    assert [(p.name, p.default, p.kind) for p in ours.values()] == [
        (p.name, p.default, p.kind) for p in theirs.values()
    ]


def test_unknown_loss_is_a_type_error_with_the_list_of_losses() -> None:
    def not_a_loss(x: Any) -> Any:
        return x

    known = ", ".join(sorted(f.__name__ for f in registered()))
    pattern = (
        rf"^value_and_grad: loss must be one of the library's losses \({re.escape(known)}\) "
        r"or a functools.partial of one, "
        rf"got function <function .*not_a_loss at 0x[0-9a-f]+>$"
    )
    with pytest.raises(TypeError, match=pattern):
        ce.value_and_grad(not_a_loss)
    with pytest.raises(TypeError, match=r"got list \[1\]$"):  # unhashable: same error
        ce.value_and_grad([1])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"got function <function value_and_grad at"):
        ce.value_and_grad(ce.value_and_grad)
    assert "binary_cross_entropy_with_logits" in known and "kl_divergence" in known


def test_registry_copy_cannot_be_used_to_unregister() -> None:
    copy = registered()
    copy.clear()
    assert ce.mse_loss in registered()


# --- functools.partial of a registered loss -------------------------------------------------


def test_value_and_grad_accepts_a_partial_of_a_registered_loss(rng: np.random.Generator) -> None:
    z = rng.normal(size=(4, 5))
    y = np.array([0, 3, 1, 4])
    vg = ce.value_and_grad(functools.partial(ce.cross_entropy, label_smoothing=0.1))
    value, grad = vg(z, y)
    want_value, want_grad = ce.value_and_grad(ce.cross_entropy)(z, y, label_smoothing=0.1)
    np.testing.assert_array_equal(value, want_value)
    np.testing.assert_array_equal(grad, want_grad)
    # nested partials flatten; a call's keyword overrides the bound one, as with the loss
    nested = functools.partial(functools.partial(ce.cross_entropy, reduction="sum"), weight=None)
    value, _ = ce.value_and_grad(nested)(z, y, reduction="mean")
    np.testing.assert_allclose(value, ce.cross_entropy(z, y))
    # the closed form still matches finite differences
    bce = functools.partial(ce.binary_cross_entropy_with_logits, pos_weight=np.array(3.0))
    x, t = rng.normal(size=6), rng.uniform(size=6)
    _, g = ce.value_and_grad(bce)(x, t)
    np.testing.assert_allclose(g, central_difference(lambda v: bce(v, t), x), rtol=1e-6)


def test_value_and_grad_refuses_a_partial_that_binds_the_differentiated_argument() -> None:
    z = np.zeros((2, 3))
    message = (
        r"^value_and_grad: loss must be a functools\.partial that binds keyword options only, "
        r"not 'input' \(the argument the gradient is taken with respect to\), got "
    )
    with pytest.raises(ValueError, match=message + r"partial\(cross_entropy, 1 positional"):
        ce.value_and_grad(functools.partial(ce.cross_entropy, z))
    with pytest.raises(ValueError, match=message + r".*keywords \['input'\]\)$"):
        ce.value_and_grad(functools.partial(ce.mse_loss, input=z))
    with pytest.raises(ValueError, match=r"not 'p' \(the argument"):
        ce.value_and_grad(functools.partial(ce.entropy, p=np.ones(2) / 2))
    with pytest.raises(TypeError, match=r"^value_and_grad: loss must be one of the library's"):
        ce.value_and_grad(functools.partial(np.sum, axis=0))
