"""The shared input checks and reductions, and package-level guarantees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import crossentropy as ce
from crossentropy import _reduction, _validation


def test_fail_uses_the_house_format() -> None:
    with pytest.raises(TypeError, match=r"^f: x must be nice, got 3$"):
        _validation.fail("f", "x", "be nice", 3, TypeError)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (np.array([1, 2]), r"f: z must have a floating-point dtype, got dtype int64"),
        ([1, 2], r"f: z must have a floating-point dtype, got dtype int64"),
        (np.array([True]), r"f: z must have a floating-point dtype, got dtype bool"),
        (np.array([1j]), r"f: z must have a floating-point dtype, got dtype complex128"),
        (np.array(["a"], dtype=object), r"f: z must have a floating-point dtype, got dtype object"),
        ([[1.0], [1.0, 2.0]], r"f: z must be a floating-point array, got list"),
    ],
)
def test_float_array_rejects_non_float(value: object, message: str) -> None:
    with pytest.raises(TypeError, match=message):
        _validation.float_array(value, "f", "z")  # type: ignore[arg-type]


def test_float_array_rejects_nan_unless_allowed() -> None:
    x = np.array([0.0, np.nan, np.nan])
    with pytest.raises(ValueError, match=r"^f: z must not contain NaN, got 2 NaN value\(s\)$"):
        _validation.float_array(x, "f", "z")
    assert _validation.float_array(x, "f", "z", allow_nan=True) is x


def test_float_array_does_not_copy_arrays() -> None:
    x = np.zeros(3, dtype=np.float32)
    assert _validation.float_array(x, "f", "z") is x


@pytest.mark.parametrize("reduction", ["avg", None, "MEAN", 1])
def test_check_reduction(reduction: object) -> None:
    expected = r"^f: reduction must be one of 'none', 'mean', 'sum', got "
    with pytest.raises(ValueError, match=expected):
        _validation.check_reduction(reduction, "f")


def test_check_same_shape_refuses_broadcast() -> None:
    with pytest.raises(ValueError, match=r"f: target must have the same shape as input \(3,\)"):
        _validation.check_same_shape(np.zeros(3), np.zeros((1, 3)), "f")


def test_check_broadcastable_to_refuses_growing_the_shape() -> None:
    _validation.check_broadcastable_to(np.zeros(3), (2, 3), "f", "weight")
    with pytest.raises(ValueError, match=r"f: weight must be broadcastable to \(3,\), got shape"):
        _validation.check_broadcastable_to(np.zeros((2, 3)), (3,), "f", "weight")


def test_check_probabilities() -> None:
    _validation.check_probabilities(np.array([0.0, 1.0]), "f", "input")
    with pytest.raises(ValueError, match=r"f: input must contain values in \[0, 1\]"):
        _validation.check_probabilities(np.array([0.5, 1.5]), "f", "input")


def test_compute_dtype_is_at_least_float32() -> None:
    assert _validation.compute_dtype(np.dtype(np.float16)) == np.float32
    assert _validation.compute_dtype(np.dtype(np.float64)) == np.float64


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_reduce_and_scale_agree_with_finite_sum(reduction: str) -> None:
    values = np.array([1.0, 2.0, 4.0])
    reduced = _reduction.reduce(values, reduction)
    step = 1e-6
    bumped = _reduction.reduce(values + np.array([step, 0.0, 0.0]), reduction)
    slope = (np.sum(bumped) - np.sum(reduced)) / step
    assert slope == pytest.approx(_reduction.scale(reduction, values.size), rel=1e-6)


def test_reduce_mean_of_nothing_is_nan_without_warning() -> None:
    with np.errstate(all="raise"):
        assert np.isnan(_reduction.reduce(np.zeros(0), "mean"))
    assert np.isnan(_reduction.scale("mean", 0))


def test_reduced_value_keeps_dtype_and_is_0d() -> None:
    out = _reduction.reduce(np.ones(4, dtype=np.float32), "mean")
    assert isinstance(out, np.ndarray) and out.shape == () and out.dtype == np.float32


def test_value_and_grad_rejects_unknown_functions() -> None:
    with pytest.raises(TypeError, match=r"^value_and_grad: loss must be one of the library's"):
        ce.value_and_grad(np.sum)


def test_every_public_name_exists() -> None:
    for name in ce.__all__:
        assert hasattr(ce, name), name


def test_import_does_not_pull_torch_or_plotting() -> None:
    code = (
        "import sys, crossentropy; "
        "bad = [m for m in ('torch', 'matplotlib', 'sklearn', 'rich') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_package_ships_py_typed() -> None:
    assert (Path(ce.__file__).parent / "py.typed").is_file()


# --- regression: a torch tensor failed inside torch ("Can't call numpy() on Tensor ...") ------

TORCH_POINTER = (
    r"must be a NumPy array or array_like \(for torch tensors use crossentropy\.torch, e\.g\. "
    r"crossentropy\.torch\.cross_entropy, which keeps autograd\), got torch\.Tensor of shape "
)


def test_torch_tensor_passed_to_the_numpy_core_points_at_crossentropy_torch() -> None:
    torch = pytest.importorskip("torch")
    logits = torch.zeros(2, 3, requires_grad=True)  # np.asarray would fail inside torch
    labels = torch.tensor([0, 1])
    probs = torch.full((2, 3), 1 / 3)
    cases = [
        (lambda: ce.cross_entropy(logits, np.array([0, 1])), "cross_entropy: input"),
        (lambda: ce.cross_entropy(np.zeros((2, 3)), labels), "cross_entropy: target"),
        (
            lambda: ce.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), weight=torch.ones(3)),
            "cross_entropy: weight",
        ),
        (lambda: ce.nll_loss(np.zeros((2, 3)), labels), "nll_loss: target"),
        (lambda: ce.softmax(logits), "softmax: z"),
        (
            lambda: ce.binary_cross_entropy(probs, np.full((2, 3), 0.5)),
            "binary_cross_entropy: input",
        ),
        (lambda: ce.value_and_grad(ce.mse_loss)(logits, np.zeros((2, 3))), "mse_loss: input"),
        (lambda: ce.entropy(probs), "entropy: p"),
    ]
    for call, where in cases:
        with pytest.raises(
            TypeError,
            match="^" + where + " " + TORCH_POINTER + r"\(\d+,( \d+)?\) and dtype torch\.",
        ):
            call()
    # a tensor that does not require grad is refused too: the result would not be a tensor
    with pytest.raises(TypeError, match=r"dtype torch\.float32$"):
        ce.softmax(torch.zeros(3))


def test_numpy_core_still_takes_lists_scalars_and_arrays_without_torch_loaded() -> None:
    code = (
        "import sys, numpy as np, crossentropy as ce; "
        "print(float(ce.cross_entropy([[1.0, 2.0]], np.array([1]))), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    value, torch_loaded = out.stdout.split()
    assert abs(float(value) - np.log1p(np.exp(-1.0))) < 1e-12 and torch_loaded == "False"


# --- regression: messages embedded the whole repr of a list (megabytes for long lists) --------

HUGE = list(range(1_000_000))


@pytest.mark.parametrize(
    ("call", "prefix"),
    [
        (lambda: ce.value_and_grad(HUGE), "value_and_grad: loss must be one of the"),  # type: ignore[arg-type]
        (lambda: ce.mse_loss([1.0], [1.0], reduction=HUGE), "mse_loss: reduction must be one of"),  # type: ignore[arg-type]
        (lambda: ce.mse_loss([1.0], [1.0], reduction="x" * 10**6), "mse_loss: reduction must"),  # type: ignore[arg-type]
        (
            lambda: ce.cross_entropy([[1.0]], np.array([0]), ignore_index=HUGE),  # type: ignore[arg-type]
            "cross_entropy: ignore_index must be an integer",
        ),
        (
            lambda: ce.cross_entropy([[1.0]], np.array([0]), label_smoothing=HUGE),  # type: ignore[arg-type]
            "cross_entropy: label_smoothing must be a real number",
        ),
        (lambda: ce.softmax([1.0], axis=HUGE), "softmax: axis must be an integer"),  # type: ignore[arg-type]
        (lambda: ce.kl_div([0.0], [1.0], log_target=HUGE), "kl_div: log_target must be a bool"),  # type: ignore[arg-type]
        (lambda: ce.softmax([HUGE, [1.0]]), "softmax: z must be a floating-point array"),
    ],
)
def test_error_messages_show_at_most_200_characters_of_any_value(call: Any, prefix: str) -> None:
    with pytest.raises((TypeError, ValueError)) as info:
        call()
    message = str(info.value)
    assert message.startswith(prefix)
    actual = message.split(", got ", 1)[1]
    assert len(actual) <= _validation.MAX_ACTUAL, actual
    assert "999999" not in message  # the end of the list is not echoed


def test_fail_truncates_a_long_actual_and_says_how_long_it_was() -> None:
    with pytest.raises(ValueError) as info:
        _validation.fail("f", "x", "be short", "y" * 1000)
    actual = str(info.value).split(", got ", 1)[1]
    assert actual == "y" * (_validation.MAX_ACTUAL - 30) + "... (1000 characters)"
    assert len(actual) <= _validation.MAX_ACTUAL
    assert _validation.short_repr(list(range(100))) == "[0, 1, 2, 3, 4, 5, 6, 7, ...]"
