r"""The teaching pieces of the report: intuition first, then why ``a − y``, each checked.

* :func:`nielsen_neuron` — the single sigmoid neuron of Michael Nielsen's *Neural Networks and
  Deep Learning*, chapter 3: input 1, target 0, started at :math:`w = 0.6, b = 0.9` and at
  :math:`w = b = 2`, 300 epochs of gradient descent at :math:`\eta = 0.15`, under the quadratic
  cost and under cross-entropy (and under cross-entropy at a 30 times smaller
  :math:`\eta = 0.005`: the shape of its cost curve, not its speed, is the point). Only the
  setup is Nielsen's; every number is this library's run.
* :func:`cost_origin` — where cross-entropy comes from: ask for :math:`\partial C/\partial b =
  a - y` and integrate. The library's gradient is compared with :math:`a - y`, and the integral,
  computed numerically, with the library's loss up to a constant.
* :func:`canonical_links` — sigmoid + BCE, softmax + CE and identity + MSE all give
  :math:`\partial L/\partial z = a - y`; sigmoid + MSE does not. Checked with ``value_and_grad``
  and with finite differences of the library's losses; the softmax-CE Hessian is the softmax's
  covariance :math:`\operatorname{diag}(a) - a a^\top`.
* :func:`code_length` — one worked example of :math:`H(p, q) = H(p) + \mathrm{KL}(p \| q)`,
  computed by the library, for the page's draggable bars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

from .neuron import first_step, train_neuron

Array = NDArray[Any]

NIELSEN_STARTS = {"w0.6_b0.9": (0.6, 0.9), "w2_b2": (2.0, 2.0)}
NIELSEN_RATE = 0.15
NIELSEN_CE_RATE = 0.005
NIELSEN_EPOCHS = 300
PLATEAU_DROP = 0.1


# -- Nielsen's neuron -----------------------------------------------------------------------


@dataclass(frozen=True)
class NielsenRun:
    """One run from one of Nielsen's starts: ``cost[t]``, ``output[t]``, ``weight[t]`` and
    ``bias[t]`` before epoch ``t`` (0 = the start).

    ``epochs_to_drop`` is the first epoch at which the cost is below
    ``(1 - PLATEAU_DROP)`` times its start (``None`` if never): how long the neuron sits on a
    plateau before it learns. ``steepest`` is the epoch with the largest drop of the cost
    relative to the cost at the start.
    """

    start: str
    loss: str
    learning_rate: float
    w0: float
    b0: float
    cost: NDArray[np.float64]
    output: NDArray[np.float64]
    epochs_to_drop: int | None
    steepest: int
    weight: NDArray[np.float64]
    bias: NDArray[np.float64]


@dataclass(frozen=True)
class NielsenNeuron:
    """Nielsen's two starts, both costs; one input ``x = 1``, target ``y = 0``."""

    epochs: int
    runs: tuple[NielsenRun, ...]

    def run(self, start: str, loss: str, learning_rate: float = NIELSEN_RATE) -> NielsenRun:
        for r in self.runs:
            if r.start == start and r.loss == loss and r.learning_rate == learning_rate:
                return r
        raise KeyError((start, loss, learning_rate))


def nielsen_neuron(epochs: int = NIELSEN_EPOCHS) -> NielsenNeuron:
    """Train Nielsen's neuron from both of his starts.

    The quadratic cost is Nielsen's :math:`C = (y - a)^2/2` (the article's), cross-entropy
    :math:`C = -[y \\ln a + (1 - y) \\ln(1 - a)]`; the gradients are the library's closed forms
    (:func:`crossentropy.experiments.neuron.train_neuron`). One training input, so one epoch is
    one gradient step.

    Examples
    --------
    >>> r = nielsen_neuron()
    >>> slow = r.run("w2_b2", "mse")  # badly wrong: a plateau before it learns
    >>> slow.epochs_to_drop > 100 and r.run("w2_b2", "cross_entropy").epochs_to_drop < 5
    True
    """
    runs = []
    plans = [(loss, NIELSEN_RATE) for loss in ("mse", "cross_entropy")]
    plans.append(("cross_entropy", NIELSEN_CE_RATE))
    for start, (w0, b0) in NIELSEN_STARTS.items():
        for loss, rate in plans:
            w, b, a, cost = train_neuron(w0, b0, 1.0, 0.0, loss, rate, epochs)
            drop = -np.diff(cost) / cost[0]
            runs.append(
                NielsenRun(
                    start=start,
                    loss=loss,
                    learning_rate=rate,
                    w0=w0,
                    b0=b0,
                    cost=cost,
                    output=a,
                    epochs_to_drop=first_step(cost < (1 - PLATEAU_DROP) * cost[0]),
                    steepest=int(np.argmax(drop)),
                    weight=w,
                    bias=b,
                )
            )
    return NielsenNeuron(epochs=epochs, runs=tuple(runs))


# -- where cross-entropy comes from ---------------------------------------------------------


@dataclass(frozen=True)
class CostOrigin:
    r"""Integrating the gradient one asks for, :math:`\partial C/\partial b = a - y`.

    With one input :math:`x = 1` and :math:`w = 0`, :math:`z = b`. For each target ``y`` the
    integral :math:`\int_{b_0}^{b} (\sigma(b') - y)\,db'` is computed numerically (trapezoids on
    ``b``) and compared with the library's binary cross-entropy: their difference is a
    constant. The same is done for the MSE gradient :math:`(a - y)\sigma'(z)`, whose integral is
    :math:`(a - y)^2/2`.

    Attributes
    ----------
    b : ndarray, shape (n,)
    targets : tuple of float
    integral : ndarray, shape (len(targets), n)
        :math:`\int_{b_0}^{b}(a - y)\,db'` with :math:`b_0 = 0`.
    bce : ndarray, shape (len(targets), n)
        The library's ``binary_cross_entropy_with_logits(b, y, reduction="none")``.
    constant_spread : dict of float
        Per loss (``"cross_entropy"``, ``"mse"``), the largest of (max − min) over ``b`` of
        (integral − library loss): 0 for a constant.
    grad_error : float
        Largest :math:`|` library :math:`\partial L/\partial z - (\sigma(z) - y)|`.
    fd_error : float
        Largest difference between the library's gradient and central finite differences of
        the library's loss.
    """

    b: NDArray[np.float64]
    targets: tuple[float, ...]
    integral: NDArray[np.float64]
    bce: NDArray[np.float64]
    constant_spread: dict[str, float]
    grad_error: float
    fd_error: float


def _cumulative_trapezoid(f: Array, x: Array, origin: int) -> Array:
    """:math:`\\int_{x_{origin}}^{x} f` at every grid point."""
    steps = np.diff(x) * (f[1:] + f[:-1]) / 2
    total = np.concatenate(([0.0], np.cumsum(steps)))
    return np.asarray(total - total[origin], np.float64)


def cost_origin(
    targets: tuple[float, ...] = (0.0, 0.3, 1.0), lo: float = -8.0, hi: float = 8.0, num: int = 3201
) -> CostOrigin:
    """Integrate :math:`a - y` over the bias and compare with the library's BCE.

    Examples
    --------
    >>> o = cost_origin()
    >>> o.grad_error < 1e-15 and o.constant_spread["cross_entropy"] < 1e-4
    True
    """
    b = np.linspace(lo, hi, num)
    origin = int(np.argmin(np.abs(b)))
    vg = ce.value_and_grad(ce.binary_cross_entropy_with_logits)
    integral, bce = [], []
    spread = {"cross_entropy": 0.0, "mse": 0.0}
    grad_error = fd_error = 0.0
    h = 1e-6
    for y in targets:
        t = np.full_like(b, y)
        a = ce.sigmoid(b)
        values = ce.binary_cross_entropy_with_logits(b, t, reduction="none")
        _, grad = vg(b, t, reduction="sum")  # each entry: that sample's own ∂L/∂z
        grad_error = max(grad_error, float(np.max(np.abs(grad - (a - t)))))
        fd = (
            ce.binary_cross_entropy_with_logits(b + h, t, reduction="none")
            - ce.binary_cross_entropy_with_logits(b - h, t, reduction="none")
        ) / (2 * h)
        fd_error = max(fd_error, float(np.max(np.abs(fd - grad))))
        wanted = a - t  # the gradient asked for: ∂C/∂b = a − y
        c = _cumulative_trapezoid(wanted, b, origin)
        diff = c - values
        spread["cross_entropy"] = max(spread["cross_entropy"], float(np.ptp(diff)))
        # the MSE gradient (a − y)σ'(z) integrates to (a − y)²/2 (the library's mse_loss / 2)
        mse_wanted = (a - t) * a * (1 - a)
        mse_values = ce.mse_loss(a, t, reduction="none") / 2
        mse_diff = _cumulative_trapezoid(mse_wanted, b, origin) - mse_values
        spread["mse"] = max(spread["mse"], float(np.ptp(mse_diff)))
        integral.append(c)
        bce.append(values)
    return CostOrigin(
        b=b,
        targets=tuple(float(y) for y in targets),
        integral=np.asarray(integral),
        bce=np.asarray(bce),
        constant_spread=spread,
        grad_error=grad_error,
        fd_error=fd_error,
    )


# -- the canonical link ---------------------------------------------------------------------


@dataclass(frozen=True)
class LinkCheck:
    r"""One output + loss pair: its :math:`\partial L/\partial z` against :math:`a - y`.

    Attributes
    ----------
    name : {"sigmoid_bce", "softmax_ce", "identity_mse", "sigmoid_mse"}
    matched : bool
        Whether the pair is a canonical one (its gradient is :math:`a - y`).
    residual : ndarray
        :math:`a - y` for every entry.
    grad : ndarray
        The library's :math:`\partial L/\partial z`, same shape.
    max_gap : float
        Largest :math:`|\partial L/\partial z - (a - y)|`.
    fd_error : float
        Largest :math:`|` ``grad`` − central finite differences of the library's loss :math:`|`.
    """

    name: str
    matched: bool
    residual: NDArray[np.float64]
    grad: NDArray[np.float64]
    max_gap: float
    fd_error: float


@dataclass(frozen=True)
class CanonicalLinks:
    """The four pairs and the softmax-CE Hessian check (largest entry of
    FD Hessian − (diag(a) − a aᵀ))."""

    checks: tuple[LinkCheck, ...]
    hessian_error: float

    def get(self, name: str) -> LinkCheck:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


def _fd_grad(f: Any, z: Array, h: float = 1e-6) -> Array:
    """Central differences of the scalar ``f`` at ``z``, entry by entry."""
    out = np.empty_like(z)
    flat, g = z.reshape(-1), out.reshape(-1)
    for i in range(flat.size):
        zp, zm = flat.copy(), flat.copy()
        zp[i] += h
        zm[i] -= h
        g[i] = (float(f(zp.reshape(z.shape))) - float(f(zm.reshape(z.shape)))) / (2 * h)
    return out


def canonical_links(seed: int = 0, n: int = 24, classes: int = 4) -> CanonicalLinks:
    """Check that the three canonical pairs give :math:`a - y` and that sigmoid + MSE does not.

    ``reduction="sum"`` over independent samples gives each sample its own gradient; the
    article's ½ makes the MSE :math:`\\tfrac12\\|a - y\\|^2`.

    Examples
    --------
    >>> links = canonical_links()
    >>> [c.name for c in links.checks if c.max_gap < 1e-12]
    ['sigmoid_bce', 'softmax_ce', 'identity_mse']
    """
    rng = np.random.default_rng(seed)
    checks = []

    z = rng.normal(size=n) * 3
    y = rng.integers(0, 2, size=n).astype(np.float64)

    def bce(v: Array) -> Any:
        return ce.binary_cross_entropy_with_logits(v, y, reduction="sum")

    _, g = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y, reduction="sum")
    checks.append(_link("sigmoid_bce", True, ce.sigmoid(z) - y, g, _fd_grad(bce, z)))

    zs = rng.normal(size=(n // 4, classes)) * 2
    p = ce.softmax(rng.normal(size=(n // 4, classes)) * 1.5, axis=1)  # soft targets, rows sum 1

    def cat(v: Array) -> Any:
        return ce.cross_entropy(v, p, reduction="sum")

    _, g = ce.value_and_grad(ce.cross_entropy)(zs, p, reduction="sum")
    checks.append(_link("softmax_ce", True, ce.softmax(zs, axis=1) - p, g, _fd_grad(cat, zs)))

    zl = rng.normal(size=n) * 1.5
    yl = zl - rng.uniform(-0.95, 0.95, size=n)  # residuals on the same scale as the others

    def half_mse(v: Array) -> Any:
        return ce.mse_loss(v, yl, reduction="sum") / 2

    _, g = ce.value_and_grad(ce.mse_loss)(zl, yl, reduction="sum")
    checks.append(_link("identity_mse", True, zl - yl, g / 2, _fd_grad(half_mse, zl)))

    def sig_mse(v: Array) -> Any:
        return ce.mse_loss(ce.sigmoid(v), y, reduction="sum") / 2

    a = ce.sigmoid(z)
    _, da = ce.value_and_grad(ce.mse_loss)(a, y, reduction="sum")
    checks.append(_link("sigmoid_mse", False, a - y, da / 2 * a * (1 - a), _fd_grad(sig_mse, z)))

    # The Hessian of softmax CE in z: the finite differences of the library's gradient are the
    # softmax's covariance diag(a) − a aᵀ (it does not depend on the targets).
    hess_err = 0.0
    h = 1e-5
    vg = ce.value_and_grad(ce.cross_entropy)
    for row, target in zip(zs, p, strict=True):
        a_row = ce.softmax(row)
        cols = []
        for j in range(classes):
            e = np.zeros(classes)
            e[j] = h
            gp = vg(row + e, target, reduction="sum")[1]
            gm = vg(row - e, target, reduction="sum")[1]
            cols.append((gp - gm) / (2 * h))
        fd_h = np.stack(cols, axis=1)
        hess_err = max(
            hess_err, float(np.max(np.abs(fd_h - (np.diag(a_row) - np.outer(a_row, a_row)))))
        )
    return CanonicalLinks(checks=tuple(checks), hessian_error=hess_err)


def _link(name: str, matched: bool, residual: Array, grad: Array, fd: Array) -> LinkCheck:
    residual = np.asarray(residual, np.float64)
    grad = np.asarray(grad, np.float64)
    return LinkCheck(
        name=name,
        matched=matched,
        residual=residual,
        grad=grad,
        max_gap=float(np.max(np.abs(grad - residual))),
        fd_error=float(np.max(np.abs(grad - fd))),
    )


# -- H(p, q) = H(p) + KL(p ‖ q), one example ------------------------------------------------


@dataclass(frozen=True)
class CodeLength:
    """One pair of distributions and the library's three numbers for it (nats).

    ``cross_entropy`` is ``cross_entropy(log q, p)`` (softmax of log q is q), ``entropy`` is
    ``entropy(p)`` and ``kl`` is ``kl_divergence(p, q)``; ``gap`` = |H(p, q) − H(p) − KL|.
    """

    outcomes: int
    p: tuple[float, ...]
    q: tuple[float, ...]
    entropy: float
    kl: float
    cross_entropy: float
    gap: float


def code_length(
    p: tuple[float, ...] = (0.5, 0.25, 0.125, 0.125),
    q: tuple[float, ...] = (0.125, 0.125, 0.25, 0.5),
) -> CodeLength:
    """The library's H(p), KL(p‖q) and H(p, q) for one example.

    Examples
    --------
    >>> c = code_length()
    >>> round(bits(c.entropy), 3), round(bits(c.cross_entropy), 3)
    (1.75, 2.625)
    """
    pa, qa = np.asarray(p, np.float64), np.asarray(q, np.float64)
    h = float(ce.entropy(pa))
    kl = float(ce.kl_divergence(pa, qa))
    hpq = float(ce.cross_entropy(np.log(qa)[None, :], pa[None, :], reduction="sum"))
    return CodeLength(
        outcomes=pa.size,
        p=tuple(float(v) for v in pa),
        q=tuple(float(v) for v in qa),
        entropy=h,
        kl=kl,
        cross_entropy=hpq,
        gap=abs(hpq - h - kl),
    )


def bits(nats: float) -> float:
    """Nats to bits (1 nat = 1/ln 2 ≈ 1.44 bits)."""
    return nats / math.log(2)


__all__ = [
    "CanonicalLinks",
    "CodeLength",
    "CostOrigin",
    "LinkCheck",
    "NielsenNeuron",
    "NielsenRun",
    "canonical_links",
    "code_length",
    "cost_origin",
    "nielsen_neuron",
]
