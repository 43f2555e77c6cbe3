r"""Part 3 — real data, fair race: MSE against cross-entropy on two classic data sets.

Logistic regression on breast cancer (:math:`a = \sigma(Xw + b)`) and softmax regression on
the digits (:math:`A = \operatorname{softmax}(XW + b)`), trained by full-batch gradient descent
from a *standard* (small random weights) and a *saturated* initialisation (random weights scaled
so the training logits have standard deviation ``saturation``: most outputs start near 0 or 1,
many of them wrong). Each loss gets its own best learning rate from the same grid, chosen on the
validation split; the test split is only used for the final numbers.

The gradients are the closed forms, written out:

* cross-entropy: :math:`\partial L/\partial z = (a - y)/n` (binary) and
  :math:`(\operatorname{softmax}(z) - y)/n` (categorical), straight from ``value_and_grad``;
* MSE: ``value_and_grad(mse_loss)`` gives :math:`\partial L/\partial a`, then the chain rule
  through :math:`\sigma'(z) = a(1 - a)` (binary) or the softmax Jacobian
  :math:`\partial a_q/\partial z_j = a_q(\delta_{qj} - a_j)` (categorical);
* then :math:`\partial L/\partial W = X^\top \partial L/\partial z` and
  :math:`\partial L/\partial b = \sum_i \partial L/\partial z_i`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

from ._data import Dataset, load_dataset
from .neuron import first_step

LOSSES = ("mse", "cross_entropy")
INITS = ("standard", "saturated")
EXPERIMENT = {"breast_cancer": "logistic_regression", "digits": "softmax_regression"}
DEFAULT_TARGETS = {"breast_cancer": 0.95, "digits": 0.90}
DEFAULT_GRID = (0.03, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0)

Array = NDArray[Any]


@dataclass(frozen=True)
class Trial:
    """One learning rate of the grid, judged on the validation split."""

    learning_rate: float
    steps_to_target: int | None
    final_val_accuracy: float
    final_val_log_loss: float


@dataclass(frozen=True)
class RaceRun:
    """One (data set, initialisation, loss) at its chosen learning rate.

    Attributes
    ----------
    experiment : {"logistic_regression", "softmax_regression"}
    dataset : {"breast_cancer", "digits"}
    init : {"standard", "saturated"}
    loss : {"mse", "cross_entropy"}
    selection : {"speed", "quality"}
        How ``learning_rate`` was chosen from the grid on the validation split: ``"speed"``,
        the fewest steps to the target accuracy (:func:`selection_key`); ``"quality"``, the
        best final accuracy (:func:`quality_key`).
    learning_rate : float
        The grid value chosen.
    target_accuracy : float
    steps_to_target : int or None
        Gradient steps before the validation accuracy first reaches ``target_accuracy``.
    final_accuracy, final_log_loss : float
        Test accuracy and test log-loss (cross-entropy of the predicted probabilities, nats)
        after the whole budget of steps.
    val_accuracy, train_loss : ndarray, shape (steps + 1,)
        Validation accuracy and training loss (of the loss being minimised) before each step.
    trials : tuple of Trial
        Every learning rate tried, for transparency.
    test_logits : ndarray, shape (n_test,) or (n_test, C)
        Final logits on the test split (of class 1 for the binary task).
    test_labels : ndarray of int, shape (n_test,)
    """

    experiment: str
    dataset: str
    init: str
    loss: str
    selection: str
    learning_rate: float
    target_accuracy: float
    steps_to_target: int | None
    final_accuracy: float
    final_log_loss: float
    val_accuracy: NDArray[np.float64]
    train_loss: NDArray[np.float64]
    trials: tuple[Trial, ...]
    test_logits: NDArray[np.float64]
    test_labels: NDArray[np.int64]


@dataclass(frozen=True)
class Race:
    """All runs of the race and its settings.

    ``runs`` holds each loss at its *fastest* learning rate, ``quality_runs`` the same
    settings at the learning rate of the best final validation accuracy.
    """

    steps: int
    grid: tuple[float, ...]
    saturation: float
    runs: tuple[RaceRun, ...]
    quality_runs: tuple[RaceRun, ...] = ()

    def get(self, dataset: str, init: str, loss: str, selection: str = "speed") -> RaceRun:
        """The run of ``loss`` on ``dataset`` from ``init``, learning rate chosen for
        ``selection`` ("speed" or "quality")."""
        for r in self.runs if selection == "speed" else self.quality_runs:
            if (r.dataset, r.init, r.loss) == (dataset, init, loss):
                return r
        raise KeyError((dataset, init, loss, selection))


def loss_and_logit_grad(
    z: Array, y: NDArray[np.int64], loss: str, n_classes: int
) -> tuple[float, Array]:
    """Mean training loss and :math:`\\partial L/\\partial z` for logits ``z``.

    ``z`` has shape (n,) for the binary task (logit of class 1) and (n, C) otherwise.
    """
    if n_classes == 2:
        t = y.astype(np.float64)
        if loss == "cross_entropy":
            value, dz = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, t)  # (a - y)/n
            return float(value), dz
        a = ce.sigmoid(z)
        value, da = ce.value_and_grad(ce.mse_loss)(a, t)  # 2(a - y)/n
        return float(value), da * a * (1 - a)  # × σ'(z)
    if loss == "cross_entropy":
        value, dz = ce.value_and_grad(ce.cross_entropy)(z, y)  # (softmax(z) - onehot(y))/n
        return float(value), dz
    a = ce.softmax(z, axis=1)
    onehot = np.eye(n_classes)[y]
    n = z.shape[0]
    # Squared error of the probability vector, per sample: (1/n) Σ_i ‖a_i - y_i‖² (the Brier
    # score), so its scale matches cross-entropy's per-sample mean.
    value, da = ce.value_and_grad(ce.mse_loss)(a, onehot, reduction="sum")  # 2(a - y)
    value, da = value / n, da / n
    # Softmax Jacobian: dL/dz_j = Σ_q dL/da_q · a_q(δ_qj - a_j) = a_j (dL/da_j - Σ_q dL/da_q a_q)
    return float(value), a * (da - np.sum(da * a, axis=1, keepdims=True))


def accuracy(z: Array, y: NDArray[np.int64]) -> float:
    """Fraction of labels ``y`` predicted by logits ``z`` ((n,) binary or (n, C))."""
    pred = (z > 0).astype(np.int64) if z.ndim == 1 else np.argmax(z, axis=1)
    return float(np.mean(pred == y))


def log_loss(z: Array, y: NDArray[np.int64]) -> float:
    """Cross-entropy (nats per sample) of the probabilities given by logits ``z``."""
    if z.ndim == 1:
        return float(ce.binary_cross_entropy_with_logits(z, y.astype(np.float64)))
    return float(ce.cross_entropy(z, y))


def initial_parameters(
    data: Dataset, init: str, seed: int, saturation: float
) -> tuple[Array, Array]:
    """Initial ``(W, b)``: shapes (d,) and () for the binary task, (d, C) and (C,) otherwise.

    ``"standard"``: :math:`W \\sim \\mathcal N(0, 0.01^2)`, :math:`b = 0`. ``"saturated"``:
    Gaussian :math:`W` scaled so the training logits have standard deviation ``saturation``.
    """
    if init not in INITS:
        raise ValueError(f"initial_parameters: init must be one of {INITS}, got {init!r}")
    d = data.x_train.shape[1]
    shape = (d,) if data.n_classes == 2 else (d, data.n_classes)
    rng = np.random.default_rng([seed, INITS.index(init), data.n_classes])
    w = rng.normal(size=shape)
    if init == "standard":
        w *= 0.01
    else:
        w *= saturation / float(np.std(data.x_train @ w))
    return w, np.zeros(shape[1:])


def train(
    data: Dataset, w0: Array, b0: Array, loss: str, learning_rate: float, steps: int
) -> tuple[Array, Array, NDArray[np.float64], NDArray[np.float64]]:
    """Full-batch gradient descent; returns final ``(W, b)``, validation accuracy and
    training loss before each step (length ``steps + 1``)."""
    x, y, k = data.x_train, data.y_train, data.n_classes
    w, b = w0.copy(), b0.copy()
    val_acc = np.empty(steps + 1)
    train_loss = np.empty(steps + 1)
    for t in range(steps + 1):
        val_acc[t] = accuracy(data.x_val @ w + b, data.y_val)
        # Very large learning rates push some logits to ±1e3 and beyond; the losses handle
        # that, but intermediate exp() may overflow harmlessly: keep the terminal quiet.
        with np.errstate(over="ignore"):
            value, dz = loss_and_logit_grad(x @ w + b, y, loss, k)
        train_loss[t] = value
        if t < steps:
            w = w - learning_rate * (x.T @ dz)  # dL/dW = Xᵀ dL/dz
            b = b - learning_rate * dz.sum(axis=0)  # dL/db = Σ_i dL/dz_i
    return w, b, val_acc, train_loss


def selection_key(trial: Trial) -> tuple[float, float, float]:
    """Sort key of the learning-rate choice: fewest steps to the target validation accuracy,
    then lower final validation log-loss, then higher final validation accuracy."""
    steps = math.inf if trial.steps_to_target is None else trial.steps_to_target
    loss = trial.final_val_log_loss if math.isfinite(trial.final_val_log_loss) else math.inf
    return steps, loss, -trial.final_val_accuracy


def quality_key(trial: Trial) -> tuple[float, float, float]:
    """Sort key of the other choice: higher final validation accuracy, then lower final
    validation log-loss, then fewer steps to the target."""
    steps = math.inf if trial.steps_to_target is None else trial.steps_to_target
    loss = trial.final_val_log_loss if math.isfinite(trial.final_val_log_loss) else math.inf
    return -trial.final_val_accuracy, loss, steps


# A trial with what it trained: (trial, W, b, validation accuracy, training loss).
_Trained = tuple[Trial, Array, Array, NDArray[np.float64], NDArray[np.float64]]

SELECTIONS: dict[str, Callable[[Trial], tuple[float, float, float]]] = {
    "speed": selection_key,
    "quality": quality_key,
}


def fair_race(
    seed: int = 0,
    steps: int = 200,
    grid: tuple[float, ...] = DEFAULT_GRID,
    datasets: tuple[str, ...] = ("breast_cancer", "digits"),
    inits: tuple[str, ...] = INITS,
    targets: dict[str, float] | None = None,
    saturation: float = 8.0,
    on_trial: Callable[[str], None] | None = None,
) -> Race:
    """Run the race: every data set × initialisation × loss × learning rate of ``grid``.

    ``on_trial(description)`` is called after each training run (for a progress bar); there
    are ``len(datasets) * len(inits) * 2 * len(grid)`` of them.
    """
    targets = {**DEFAULT_TARGETS, **(targets or {})}
    chosen: dict[str, list[RaceRun]] = {name: [] for name in SELECTIONS}
    for name in datasets:
        data = load_dataset(name, seed)
        for init in inits:
            w0, b0 = initial_parameters(data, init, seed, saturation)
            for loss in LOSSES:
                best: dict[str, _Trained] = {}
                trials = []
                for lr in grid:
                    w, b, val_acc, train_loss = train(data, w0, b0, loss, lr, steps)
                    trial = Trial(
                        learning_rate=lr,
                        steps_to_target=first_step(val_acc >= targets[name]),
                        final_val_accuracy=float(val_acc[-1]),
                        final_val_log_loss=log_loss(data.x_val @ w + b, data.y_val),
                    )
                    trials.append(trial)
                    for selection, key in SELECTIONS.items():
                        if selection not in best or key(trial) < key(best[selection][0]):
                            best[selection] = (trial, w, b, val_acc, train_loss)
                    if on_trial is not None:
                        on_trial(f"race: {name}, {init} init, {loss}, lr={lr:g}")
                for selection, (trial, w, b, val_acc, train_loss) in best.items():
                    test_logits = data.x_test @ w + b
                    chosen[selection].append(
                        RaceRun(
                            experiment=EXPERIMENT[name],
                            dataset=name,
                            init=init,
                            loss=loss,
                            selection=selection,
                            learning_rate=trial.learning_rate,
                            target_accuracy=targets[name],
                            steps_to_target=trial.steps_to_target,
                            final_accuracy=accuracy(test_logits, data.y_test),
                            final_log_loss=log_loss(test_logits, data.y_test),
                            val_accuracy=val_acc,
                            train_loss=train_loss,
                            trials=tuple(trials),
                            test_logits=test_logits,
                            test_labels=data.y_test,
                        )
                    )
    return Race(
        steps=steps,
        grid=tuple(grid),
        saturation=saturation,
        runs=tuple(chosen["speed"]),
        quality_runs=tuple(chosen["quality"]),
    )
