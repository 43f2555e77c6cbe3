r"""What cross-entropy does not fix: a hidden sigmoid layer still saturates.

A network with one hidden layer of sigmoid units, :math:`h = \sigma(X W_1 + b_1)`, and one
sigmoid output, :math:`a = \sigma(h W_2 + b_2)`, on a seeded two-class problem that needs the
hidden layer (the XOR of two Gaussian clouds). Backpropagation written out in NumPy:

.. math::
    \delta_2 = \partial L/\partial z_2 \quad(\text{the library's closed form}),\qquad
    \partial L/\partial W_2 = h^\top \delta_2,\qquad
    \delta_1 = (\delta_2 W_2^\top) \odot h(1 - h),\qquad
    \partial L/\partial W_1 = X^\top \delta_1 .

Cross-entropy cancels the output's :math:`\sigma'(z_2)` in :math:`\delta_2`, but
:math:`\delta_1` still carries the hidden units' :math:`\sigma'(z_1) = h(1 - h)`: when the
hidden pre-activations are large, the hidden layer's gradient vanishes under *both* losses.
:func:`hidden_layer` measures it at initialisation over a range of hidden-bias offsets (an
offset :math:`c` puts every hidden unit's pre-activation near :math:`\pm c`, so its
:math:`\sigma'` near :math:`e^{-c}`), and along training from a standard and a saturated hidden
start.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

Array = NDArray[Any]
LOSSES = ("cross_entropy", "mse")
DEFAULT_OFFSETS = (0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0)
SATURATED_SIGMA_PRIME = 0.01  # σ'(z) below this: |z| > 4.6, the unit is saturated


@dataclass(frozen=True)
class Net:
    """Weights of the 2-layer network."""

    w1: Array
    b1: Array
    w2: Array
    b2: Array


@dataclass(frozen=True)
class Grads:
    """Loss, gradients and what the hidden layer looked like."""

    loss: float
    w1: Array
    b1: Array
    w2: Array
    b2: Array
    sigma_prime: Array  # h(1 − h), shape (n, hidden)
    accuracy: float


def xor_data(seed: int, n: int = 400) -> tuple[Array, NDArray[np.float64]]:
    """Two Gaussian clouds per class at the corners of a square, labels = XOR of the signs."""
    rng = np.random.default_rng(seed)
    corners = np.array([[1.0, 1.0], [-1.0, -1.0], [1.0, -1.0], [-1.0, 1.0]])
    which = rng.integers(0, 4, size=n)
    x = corners[which] + rng.normal(scale=0.45, size=(n, 2))
    y = (which >= 2).astype(np.float64)
    x = (x - x.mean(axis=0)) / x.std(axis=0)
    return x, y


def init_net(rng: np.random.Generator, hidden: int, offset: float) -> Net:
    """Standard hidden weights (N(0, 1), inputs standardised), hidden biases
    ``±offset`` (random signs) + N(0, 0.3²): each unit starts saturated on one side for most
    samples when ``offset`` is large; a small output layer."""
    return Net(
        w1=rng.normal(size=(2, hidden)),
        b1=offset * rng.choice([-1.0, 1.0], size=hidden) + rng.normal(scale=0.3, size=hidden),
        w2=rng.normal(scale=1 / np.sqrt(hidden), size=hidden),
        b2=np.zeros(()),
    )


def forward_backward(net: Net, x: Array, y: NDArray[np.float64], loss: str) -> Grads:
    """Mean loss over the batch and every gradient, by explicit backpropagation.

    MSE is the mean of :math:`(a - y)^2` (as in the race); cross-entropy the mean BCE.
    """
    z1 = x @ net.w1 + net.b1
    h = ce.sigmoid(z1)
    z2 = h @ net.w2 + net.b2
    if loss == "cross_entropy":
        value, d2 = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z2, y)  # (a − y)/n
    elif loss == "mse":
        a = ce.sigmoid(z2)
        value, da = ce.value_and_grad(ce.mse_loss)(a, y)  # 2(a − y)/n
        d2 = da * a * (1 - a)  # × σ'(z₂): the factor cross-entropy cancels
    else:
        raise ValueError(f"forward_backward: loss must be one of {LOSSES}, got {loss!r}")
    sp = h * (1 - h)  # σ'(z₁): no loss cancels this one
    d1 = np.outer(d2, net.w2) * sp
    return Grads(
        loss=float(value),
        w1=x.T @ d1,
        b1=d1.sum(axis=0),
        w2=h.T @ d2,
        b2=np.asarray(d2.sum()),
        sigma_prime=sp,
        accuracy=float(np.mean((z2 > 0) == (y > 0.5))),
    )


@dataclass(frozen=True)
class HiddenRun:
    """Training from one start with one loss.

    ``hidden_grad``/``output_grad``: ‖∂L/∂W₁‖ and ‖∂L/∂W₂‖ per step; ``accuracy`` per step
    (training set); ``saturated``: fraction of (sample, hidden unit) pairs with
    σ'(z₁) < 0.01 per step; ``w1_change``: ‖W₁ − W₁⁽⁰⁾‖ / ‖W₁⁽⁰⁾‖ at the end.
    """

    start: str
    loss: str
    offset: float
    hidden_grad: NDArray[np.float64]
    output_grad: NDArray[np.float64]
    accuracy: NDArray[np.float64]
    saturated: NDArray[np.float64]
    w1_change: float
    steps_to_target: int | None


@dataclass(frozen=True)
class HiddenLayer:
    """The sweep at initialisation and the training runs.

    Attributes
    ----------
    offsets : tuple of float
        Hidden-bias offsets at initialisation (larger: more saturated).
    hidden_grad, output_grad : dict of ndarray, shape (len(offsets),)
        Per loss, the median over ``inits`` random initialisations of the norm of the hidden
        layer's gradient (W₁, b₁) and of the output layer's (W₂, b₂).
    mean_sigma_prime, saturated : ndarray, shape (len(offsets),)
        Median mean σ'(z₁) and fraction of saturated hidden activations (loss-independent).
    runs : tuple of HiddenRun
        Training from the ``starts`` offsets ("standard", "saturated"), both losses, one rate.
    fd_error : float
        Largest relative error of the explicit gradients against central finite differences
        of the loss (both losses, both starts).
    """

    hidden: int
    samples: int
    inits: int
    offsets: tuple[float, ...]
    hidden_grad: dict[str, NDArray[np.float64]]
    output_grad: dict[str, NDArray[np.float64]]
    mean_sigma_prime: NDArray[np.float64]
    saturated: NDArray[np.float64]
    learning_rate: float
    steps: int
    target_accuracy: float
    starts: dict[str, float]
    runs: tuple[HiddenRun, ...]
    fd_error: float

    def run(self, start: str, loss: str) -> HiddenRun:
        for r in self.runs:
            if r.start == start and r.loss == loss:
                return r
        raise KeyError((start, loss))


def _norm(*arrays: Array) -> float:
    return float(np.sqrt(sum(float(np.sum(a * a)) for a in arrays)))


def gradient_fd_error(net: Net, x: Array, y: NDArray[np.float64], loss: str) -> float:
    """Largest |explicit − finite differences| over every parameter, relative to the largest
    gradient entry (central differences, h = 1e-6, float64)."""
    g = forward_backward(net, x, y, loss)
    h = 1e-6
    worst = scale = 0.0
    for name in ("w1", "b1", "w2", "b2"):
        param = getattr(net, name)
        analytic = np.asarray(getattr(g, name))
        flat = param.reshape(-1)
        for i in range(flat.size):
            values = []
            for sign in (1, -1):
                bumped = flat.copy()
                bumped[i] += sign * h
                other = Net(**{**net.__dict__, name: bumped.reshape(param.shape)})
                values.append(forward_backward(other, x, y, loss).loss)
            fd = (values[0] - values[1]) / (2 * h)
            worst = max(worst, abs(fd - float(analytic.reshape(-1)[i])))
        scale = max(scale, float(np.max(np.abs(analytic))))
    return worst / scale if scale else float("inf")


def hidden_layer(
    seed: int = 0,
    offsets: tuple[float, ...] = DEFAULT_OFFSETS,
    hidden: int = 16,
    samples: int = 400,
    inits: int = 8,
    starts: dict[str, float] | None = None,
    learning_rate: float = 0.5,
    steps: int = 800,
    target_accuracy: float = 0.9,
) -> HiddenLayer:
    """Measure the hidden layer's gradient against the saturation of its units.

    Examples
    --------
    >>> r = hidden_layer(steps=10, inits=2)
    >>> for loss in ("cross_entropy", "mse"):  # the hidden gradient shrinks under both losses
    ...     g = r.hidden_grad[loss]
    ...     print(loss, bool(g[-1] < 0.05 * g[0]))
    cross_entropy True
    mse True
    """
    starts = {"standard": 0.0, "saturated": 6.0} if starts is None else starts
    x, y = xor_data(seed, samples)
    rng = np.random.default_rng(seed + 1)
    hg: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    og: dict[str, list[float]] = {loss: [] for loss in LOSSES}
    msp, sat = [], []
    for s in offsets:
        per: dict[str, list[tuple[float, float]]] = {loss: [] for loss in LOSSES}
        sps, sats = [], []
        for _ in range(inits):
            net = init_net(rng, hidden, s)
            for loss in LOSSES:
                g = forward_backward(net, x, y, loss)
                per[loss].append((_norm(g.w1, g.b1), _norm(g.w2, g.b2)))
            sps.append(float(np.mean(g.sigma_prime)))
            sats.append(float(np.mean(g.sigma_prime < SATURATED_SIGMA_PRIME)))
        for loss in LOSSES:
            hg[loss].append(float(np.median([p[0] for p in per[loss]])))
            og[loss].append(float(np.median([p[1] for p in per[loss]])))
        msp.append(float(np.median(sps)))
        sat.append(float(np.median(sats)))

    runs = []
    fd_error = 0.0
    for start, s in starts.items():
        net0 = init_net(np.random.default_rng(seed + 2), hidden, s)  # same draw for both losses
        for loss in LOSSES:
            fd_error = max(fd_error, gradient_fd_error(net0, x[:40], y[:40], loss))
            net = net0
            rec = np.empty((4, steps + 1))
            for t in range(steps + 1):
                g = forward_backward(net, x, y, loss)
                rec[:, t] = (
                    _norm(g.w1, g.b1),
                    _norm(g.w2, g.b2),
                    g.accuracy,
                    float(np.mean(g.sigma_prime < SATURATED_SIGMA_PRIME)),
                )
                if t < steps:
                    lr = learning_rate
                    net = Net(
                        w1=net.w1 - lr * g.w1,
                        b1=net.b1 - lr * g.b1,
                        w2=net.w2 - lr * g.w2,
                        b2=net.b2 - lr * g.b2,
                    )
            hits = np.flatnonzero(rec[2] >= target_accuracy)
            runs.append(
                HiddenRun(
                    start=start,
                    loss=loss,
                    offset=s,
                    hidden_grad=rec[0],
                    output_grad=rec[1],
                    accuracy=rec[2],
                    saturated=rec[3],
                    w1_change=_norm(net.w1 - net0.w1) / _norm(net0.w1),
                    steps_to_target=int(hits[0]) if hits.size else None,
                )
            )
    return HiddenLayer(
        hidden=hidden,
        samples=samples,
        inits=inits,
        offsets=tuple(float(s) for s in offsets),
        hidden_grad={k: np.asarray(v) for k, v in hg.items()},
        output_grad={k: np.asarray(v) for k, v in og.items()},
        mean_sigma_prime=np.asarray(msp),
        saturated=np.asarray(sat),
        learning_rate=learning_rate,
        steps=steps,
        target_accuracy=target_accuracy,
        starts=dict(starts),
        runs=tuple(runs),
        fd_error=fd_error,
    )
