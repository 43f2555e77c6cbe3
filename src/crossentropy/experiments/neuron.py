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


def neuron_logit_grad(z: NDArray[np.float64], y: float, loss: str) -> NDArray[np.float64]:
    """:math:`\\partial L/\\partial z` for every neuron of ``z`` (any shape), target ``y``.

    From the library's closed forms, one call for all neurons (``reduction="sum"`` of
    independent neurons gives each one's own gradient): MSE through the chain rule
    :math:`(a - y)\\,\\sigma'(z)`, cross-entropy directly :math:`a - y`.
    """
    t = np.full_like(z, y)
    if loss == "mse":
        a = ce.sigmoid(z)
        _, dl_da = ce.value_and_grad(ce.mse_loss)(a, t, reduction="sum")  # 2(a - y)
        # the article's L = (a - y)²/2, then × σ'(z): the factor that vanishes when saturated
        return np.asarray(dl_da / 2 * (a * (1 - a)), np.float64)
    if loss == "cross_entropy":
        _, dl_dz = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, t, reduction="sum")
        return np.asarray(dl_dz, np.float64)  # = a - y: σ'(z) cancelled
    raise ValueError(f"neuron_logit_grad: loss must be one of {LOSSES}, got {loss!r}")


def neuron_value_and_grads(
    w: float, b: float, x: float, y: float, loss: str
) -> tuple[float, float, float, float]:
    """``(a, L, dL/dw, dL/db)`` for one sample, by the article's chain rule.

    ``dL/dz`` comes from the library's closed forms; then :math:`\\partial z/\\partial w = x`,
    :math:`\\partial z/\\partial b = 1`.
    """
    if loss not in LOSSES:
        raise ValueError(f"neuron_value_and_grads: loss must be one of {LOSSES}, got {loss!r}")
    z = np.array([w * x + b])
    t = np.array([y])
    a = ce.sigmoid(z)
    if loss == "mse":
        value = float(ce.mse_loss(a, t, reduction="sum")) / 2  # the article's (a - y)²/2
    else:
        value = float(ce.binary_cross_entropy_with_logits(z, t, reduction="sum"))
    g = float(neuron_logit_grad(z, y, loss)[0])
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


@dataclass(frozen=True)
class NeuronGrid:
    """The neuron trained from every starting pre-activation :math:`z_0` of a grid, at every
    learning rate of a grid, with both losses: the data behind the report's sliders.

    With :math:`x = 1`, :math:`z = w + b` and one step changes :math:`z` by
    :math:`-2\\eta\\,\\partial L/\\partial z`, so :math:`z_0` (not ``w0`` and ``b0`` apart)
    and :math:`\\eta` determine the whole run; each run starts at ``w0 = b0 = z0 / 2``.

    Attributes
    ----------
    z0, learning_rates : tuple of float, lengths nz and nl
    y : float
        The target (0: every :math:`z_0 > 0` starts on the wrong side).
    steps : int
        Gradient steps of each run.
    recorded : ndarray of int, shape (k,)
        The steps at which ``output`` and ``sigmoid_prime`` are kept (every step at first,
        sparser later: enough to draw the curves exactly at their pixel resolution).
    output, sigmoid_prime : dict of ndarray, shape (nz, nl, k)
        Per loss, the output :math:`a` and the factor :math:`\\sigma'(z) = a(1 - a)` at each
        recorded step.
    steps_to_correct : dict of ndarray of int, shape (nz, nl)
        Per loss, the first step with :math:`|a - y| < 1/2` (over *all* steps), −1 if never.
    """

    z0: tuple[float, ...]
    learning_rates: tuple[float, ...]
    y: float
    steps: int
    recorded: NDArray[np.int64]
    output: dict[str, NDArray[np.float64]]
    sigmoid_prime: dict[str, NDArray[np.float64]]
    steps_to_correct: dict[str, NDArray[np.int64]]


DEFAULT_Z0 = (1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0)
DEFAULT_RATES = (0.05, 0.15, 0.3, 0.5, 1.0, 2.0, 4.0)


def recorded_steps(steps: int, dense: int = 40, stride: int = 4) -> NDArray[np.int64]:
    """Every step up to ``dense``, then every ``stride``-th, and always the last one."""
    idx = np.unique(np.r_[np.arange(min(dense, steps) + 1), np.arange(dense, steps + 1, stride)])
    return np.unique(np.r_[idx, steps]).astype(np.int64)


def neuron_grid(
    z0: tuple[float, ...] = DEFAULT_Z0,
    learning_rates: tuple[float, ...] = DEFAULT_RATES,
    steps: int = 500,
    y: float = 0.0,
) -> NeuronGrid:
    """Train ``len(z0) * len(learning_rates)`` neurons per loss, all at once.

    Every neuron is an element of one array, so each gradient step is one call of the
    library's closed-form gradient for all of them (:func:`neuron_logit_grad`).

    Examples
    --------
    >>> g = neuron_grid(z0=(6.0,), learning_rates=(0.5,), steps=20)
    >>> int(g.steps_to_correct["cross_entropy"][0, 0]), int(g.steps_to_correct["mse"][0, 0])
    (7, -1)
    """
    if steps < 1:
        raise ValueError(f"neuron_grid: steps must be at least 1, got {steps}")
    zs = np.asarray(z0, dtype=np.float64)[:, None]
    lrs = np.asarray(learning_rates, dtype=np.float64)[None, :]
    rec = recorded_steps(steps)
    output, sigma_prime, correct = {}, {}, {}
    x = 1.0
    for loss in LOSSES:
        w = np.broadcast_to(zs / 2, (zs.size, lrs.size)).copy()
        b = w.copy()
        outs = np.empty((steps + 1, *w.shape))
        for t in range(steps + 1):
            z = w * x + b
            outs[t] = ce.sigmoid(z)
            if t < steps:
                g = neuron_logit_grad(z, y, loss)
                w, b = w - lrs * g * x, b - lrs * g  # ∂z/∂w = x, ∂z/∂b = 1
        wrong = np.abs(outs - y) >= 0.5
        ever = ~wrong.all(axis=0)
        correct[loss] = np.where(ever, wrong.argmin(axis=0), -1).astype(np.int64)
        kept = np.moveaxis(outs[rec], 0, -1)
        output[loss] = np.ascontiguousarray(kept)
        sigma_prime[loss] = np.ascontiguousarray(kept * (1 - kept))
    return NeuronGrid(
        z0=tuple(float(v) for v in z0),
        learning_rates=tuple(float(v) for v in learning_rates),
        y=y,
        steps=steps,
        recorded=rec,
        output=output,
        sigmoid_prime=sigma_prime,
        steps_to_correct=correct,
    )


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
