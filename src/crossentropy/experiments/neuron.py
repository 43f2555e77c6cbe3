r"""Part 2 — the saturated neuron: one sigmoid unit that starts confidently wrong.

A single input :math:`x`, weight :math:`w`, bias :math:`b`, :math:`z = wx + b`,
:math:`a = \sigma(z)`, trained by plain gradient descent with the same learning rate under

.. math::
    \text{MSE: } \frac{\partial L}{\partial w} = (a - y)\,\sigma'(z)\,x,\quad
    \frac{\partial L}{\partial b} = (a - y)\,\sigma'(z); \qquad
    \text{BCE: } \frac{\partial L}{\partial w} = x\,(a - y),\quad
    \frac{\partial L}{\partial b} = a - y .

Started at :math:`z_0 = 6` with :math:`y = 0` (:math:`a_0 \approx 0.9975`), MSE's gradient
carries :math:`\sigma'(6) \approx 0.0025` and the neuron barely moves; cross-entropy's does not.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

LOSSES = ("mse", "cross_entropy")


@dataclass(frozen=True)
class NeuronRun:
    """One training run of the neuron.

    Attributes
    ----------
    start : str
        Name of the starting point (``"mildly wrong"`` or ``"saturated"``).
    loss : {"mse", "cross_entropy"}
    w, b, output, loss_values : ndarray, shape (steps + 1,)
        Weight, bias, output :math:`a` and loss *before* each step (index 0 is the start).
    steps_to_correct : int or None
        Gradient steps taken before the output is on the right side of 1/2
        (:math:`|a - y| < 1/2`); ``None`` if it never gets there within the budget.
    steps_to_close : int or None
        Steps before :math:`|a - y| <` ``close_tolerance``.
    """

    start: str
    loss: str
    w: NDArray[np.float64]
    b: NDArray[np.float64]
    output: NDArray[np.float64]
    loss_values: NDArray[np.float64]
    steps_to_correct: int | None
    steps_to_close: int | None


@dataclass(frozen=True)
class SaturatedNeuron:
    """Both losses from each starting point, with the shared settings."""

    x: float
    y: float
    learning_rate: float
    steps: int
    close_tolerance: float
    starts: dict[str, tuple[float, float]]
    runs: tuple[NeuronRun, ...]

    def run(self, start: str, loss: str) -> NeuronRun:
        """The run from ``start`` with ``loss``."""
        for r in self.runs:
            if r.start == start and r.loss == loss:
                return r
        raise KeyError((start, loss))


def first_step(condition: NDArray[np.bool_]) -> int | None:
    """Index of the first ``True`` in ``condition``, or ``None``."""
    hits = np.flatnonzero(condition)
    return int(hits[0]) if hits.size else None


def neuron_value_and_grads(
    w: float, b: float, x: float, y: float, loss: str
) -> tuple[float, float, float, float]:
    """``(a, L, dL/dw, dL/db)`` for one sample, by the article's chain rule.

    ``dL/dz`` comes from the library's closed forms; then :math:`\\partial z/\\partial w = x`,
    :math:`\\partial z/\\partial b = 1`.
    """
    z = np.array([w * x + b])
    t = np.array([y])
    a = ce.sigmoid(z)
    if loss == "mse":
        value, dl_da = ce.value_and_grad(ce.mse_loss)(a, t, reduction="sum")
        value, dl_da = value / 2, dl_da / 2  # the article's L = (a - y)² / 2
        dl_dz = dl_da * a * (1 - a)  # × σ'(z): the factor that vanishes when saturated
    elif loss == "cross_entropy":
        value, dl_dz = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, t, reduction="sum")
        # = a - y: σ'(z) cancelled
    else:
        raise ValueError(f"neuron_value_and_grads: loss must be one of {LOSSES}, got {loss!r}")
    g = float(dl_dz[0])
    return float(a[0]), float(value), g * x, g


def train_neuron(
    w0: float, b0: float, x: float, y: float, loss: str, learning_rate: float, steps: int
) -> tuple[NDArray[np.float64], ...]:
    """Gradient descent; returns ``(w, b, output, loss)`` arrays of length ``steps + 1``."""
    w, b = w0, b0
    rec = np.empty((4, steps + 1))
    for t in range(steps + 1):
        a, value, dw, db = neuron_value_and_grads(w, b, x, y, loss)
        rec[:, t] = (w, b, a, value)
        w, b = w - learning_rate * dw, b - learning_rate * db
    return rec[0], rec[1], rec[2], rec[3]


def saturated_neuron(
    steps: int = 1000,
    learning_rate: float = 0.5,
    x: float = 1.0,
    y: float = 0.0,
    starts: dict[str, tuple[float, float]] | None = None,
    close_tolerance: float = 0.1,
) -> SaturatedNeuron:
    """Train the neuron from each start with MSE and with BCE at the same learning rate.

    ``starts`` maps a name to ``(w0, b0)``; by default a mildly wrong start
    (:math:`z_0 = 1.5`, :math:`a_0 \\approx 0.82`) and a saturated one
    (:math:`z_0 = 6`, :math:`a_0 \\approx 0.9975`), both with target :math:`y = 0`.

    Examples
    --------
    >>> r = saturated_neuron(steps=20)
    >>> r.run("saturated", "cross_entropy").steps_to_correct
    7
    >>> r.run("saturated", "mse").steps_to_correct is None  # still wrong after 20 steps
    True
    """
    if starts is None:
        starts = {"mildly wrong": (0.6, 0.9), "saturated": (3.0, 3.0)}
    runs = []
    for name, (w0, b0) in starts.items():
        for loss in LOSSES:
            w, b, a, values = train_neuron(w0, b0, x, y, loss, learning_rate, steps)
            err = np.abs(a - y)
            runs.append(
                NeuronRun(
                    start=name,
                    loss=loss,
                    w=w,
                    b=b,
                    output=a,
                    loss_values=values,
                    steps_to_correct=first_step(err < 0.5),
                    steps_to_close=first_step(err < close_tolerance),
                )
            )
    return SaturatedNeuron(
        x=x,
        y=y,
        learning_rate=learning_rate,
        steps=steps,
        close_tolerance=close_tolerance,
        starts=dict(starts),
        runs=tuple(runs),
    )
