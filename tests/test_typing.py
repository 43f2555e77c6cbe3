"""The public signatures as a type checker sees them: mypy --strict on a snippet of user code.

Each line marked ``# E: <text>`` must be a mypy error containing ``<text>``; every other line
must type-check. ``reveal_type`` pins ``value_and_grad``'s ParamSpec: the wrapped loss's
parameter names, defaults and ``Literal`` reductions survive.
"""

from __future__ import annotations

import re
import subprocess
import sys
import typing
from pathlib import Path

import pytest

import crossentropy as ce

pytest.importorskip("mypy")

SNIPPET = """\
import functools
from typing import Any, Literal, assert_type

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

Arr = NDArray[np.floating[Any]]
z = np.zeros((2, 3))
y = np.array([0, 1])

vg = ce.value_and_grad(ce.cross_entropy)
reveal_type(vg)
value, grad = vg(z, y, label_smoothing=0.1, reduction="sum")
assert_type(value, Arr)
assert_type(grad, Arr)
assert_type(ce.cross_entropy(z, y), Arr)
assert_type(ce.value_and_grad(ce.kl_div)(z, z, reduction="batchmean"), tuple[Arr, Arr])
mean: Literal["mean"] = "mean"
ce.mse_loss(z, z, reduction=mean)
smoothed = ce.value_and_grad(functools.partial(ce.cross_entropy, label_smoothing=0.1))
assert_type(smoothed(z, y), tuple[Arr, Arr])
ce.cross_entropy(z, y, reduction="avg")  # E: "cross_entropy" has incompatible type "Literal['avg']"
vg(z, y, reduction="avg")  # E: "Literal['avg']"; expected "Literal['none', 'mean', 'sum']"
vg(z, y, smoothing=0.1)  # E: Unexpected keyword argument "smoothing"
ce.value_and_grad(ce.mse_loss)(z)  # E: Too few arguments
ce.mse_loss(z, z, reduction="batchmean")  # E: expected "Literal['none', 'mean', 'sum']"
ce.kl_div(z, z, reduction="batch")  # E: expected "Literal['none', 'mean', 'sum', 'batchmean']"
some_string: str = "mean"
ce.nll_loss(z, y, reduction=some_string)  # E: incompatible type "str"
ce.value_and_grad(len)  # E: Argument 1 to "value_and_grad" has incompatible type
ce.softmax(z, axis=1.0)  # E: Argument "axis" to "softmax" has incompatible type "float"
"""


def _mypy(tmp_path: Path) -> tuple[dict[int, list[str]], str]:
    path = tmp_path / "snippet.py"
    path.write_text(SNIPPET)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "mypy",
            "--strict",
            "--no-error-summary",
            "--hide-error-context",
            "--cache-dir",
            str(tmp_path / "cache"),
            "--config-file",
            "",  # the project's settings target src/; this is user code
            str(path),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    errors: dict[int, list[str]] = {}
    reveal = ""
    for line in proc.stdout.splitlines():
        match = re.match(r"snippet\.py:(\d+): (error|note): (.*)$", line)
        assert match, f"unexpected mypy output: {line!r}\n{proc.stderr}"
        number, kind, message = int(match.group(1)), match.group(2), match.group(3)
        if kind == "error":
            errors.setdefault(number, []).append(message)
        elif message.startswith("Revealed type is"):
            reveal = message
    return errors, reveal


def test_public_signatures_under_mypy_strict(tmp_path: Path) -> None:
    errors, reveal = _mypy(tmp_path)
    expected = {
        number: line.split("# E: ", 1)[1]
        for number, line in enumerate(SNIPPET.splitlines(), start=1)
        if "# E: " in line
    }
    assert set(errors) == set(expected), errors
    for number, text in expected.items():
        assert any(text in message for message in errors[number]), (number, errors[number])
    # value_and_grad keeps the loss's parameters (a ParamSpec), Literal reduction included
    for parameter in (
        "input: ",
        "target: ",
        "ignore_index: int =",
        "reduction: Literal['none'] | Literal['mean'] | Literal['sum'] =",
        "label_smoothing: float =",
    ):
        assert parameter in reveal, reveal
    assert re.search(r"\) -> tuple\[numpy\.ndarray\[.*floating.*\]\]\"$", reveal), reveal


def test_reductions_are_literal_types_at_run_time() -> None:
    three = typing.Literal["none", "mean", "sum"]
    for loss in (
        ce.cross_entropy,
        ce.nll_loss,
        ce.binary_cross_entropy,
        ce.binary_cross_entropy_with_logits,
        ce.categorical_cross_entropy,
        ce.mse_loss,
    ):
        assert typing.get_type_hints(loss)["reduction"] == three, loss.__name__
    kl = typing.get_type_hints(ce.kl_div)["reduction"]
    assert typing.get_args(kl) == ("none", "mean", "sum", "batchmean")
