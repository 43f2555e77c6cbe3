r"""Part 4 — derivation checks: every step of the article's derivations against two references.

Each step is written out in NumPy exactly as the article states it and compared with

* central finite differences of the library's functions and loss values (float64), and
* PyTorch autograd (float64), when ``torch`` is importable.

The batch's samples are independent and the losses are summed over it, so every per-sample
formula is checked on every sample at once:

======================  =========================================================================
sigmoid                 :math:`\sigma'(z) = a(1 - a)`
MSE + sigmoid           :math:`\partial L/\partial a = a - y`,
                        :math:`\partial L/\partial z = (a - y)\,\sigma'(z)`,
                        :math:`\partial L/\partial w = (a - y)\,\sigma'(z)\,x`,
                        :math:`\partial L/\partial b = (a - y)\,\sigma'(z)`
BCE + sigmoid           :math:`\partial L/\partial a = -y/a + (1 - y)/(1 - a)`,
                        :math:`\partial L/\partial z = a - y`,
                        :math:`\partial L/\partial w = x\,(a - y)`,
                        :math:`\partial L/\partial b = a - y`
softmax Jacobian        :math:`\partial a_j/\partial z_j = a_j(1 - a_j)`,
                        :math:`\partial a_q/\partial z_j = -a_q a_j` (:math:`q \ne j`)
softmax + CE            :math:`\partial L/\partial a_q = -y_q/a_q`,
                        :math:`\partial L/\partial z_j = a_j\sum_q y_q - y_j`
                        (targets summing to 0.7), :math:`= a_j - y_j` (targets summing to 1)
======================  =========================================================================
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

Array = NDArray[Any]

FINITE_DIFFERENCES = "finite differences"
TORCH_AUTOGRAD = "torch autograd"


@dataclass(frozen=True)
class GradientCheck:
    """One formula against one reference.

    Attributes
    ----------
    name : str
        Short name, e.g. ``"mse_sigmoid_dw"``.
    formula : str
        The article's formula, as text.
    reference : {"finite differences", "torch autograd"}
    max_abs_error : float
        Largest absolute difference between the formula and the reference.
    max_abs_value : float
        Largest absolute entry of the gradient (the scale the error compares to).
    """

    name: str
    formula: str
    reference: str
    max_abs_error: float
    max_abs_value: float

    @property
    def relative_error(self) -> float:
        """``max_abs_error / max_abs_value``: the error on the gradient's own scale (a step
        such as :math:`-y_q/a_q` reaches hundreds where :math:`a_q` is small)."""
        return self.max_abs_error / self.max_abs_value if self.max_abs_value else math.inf


@dataclass(frozen=True)
class DerivationChecks:
    """All checks, and the torch version used (``None`` when torch was not used, for the
    reason in ``torch_skipped``)."""

    checks: tuple[GradientCheck, ...]
    torch_version: str | None
    finite_difference_step: float
    torch_skipped: str | None = None


@dataclass(frozen=True)
class _Problem:
    """A small batch: inputs ``x`` (n, d), binary targets ``y`` (n,), parameters ``w``, ``b``;
    softmax logits ``logits`` (n, C), probability targets ``soft`` (n, C) summing to 1 and
    ``partial`` summing to 0.7 (the general case of the softmax derivation)."""

    x: Array
    y: Array
    w: Array
    b: float
    logits: Array
    soft: Array
    partial: Array


def _problem(seed: int, n: int, d: int, c: int) -> _Problem:
    rng = np.random.default_rng([seed, 4])
    soft = rng.dirichlet(np.ones(c), size=n)  # targets that sum to 1, not only one-hot
    # Moderate logits keep every probability away from 0 and 1, where a finite difference of
    # 1/a or 1/(1 − a) (the BCE and CE steps ∂L/∂a) would measure its own error, not ours.
    return _Problem(
        x=rng.normal(size=(n, d)),
        y=rng.integers(0, 2, size=n).astype(np.float64),
        w=rng.normal(scale=0.4, size=d),
        b=float(rng.normal(scale=0.5)),
        logits=rng.normal(scale=1.5, size=(n, c)),
        soft=soft,
        partial=0.7 * rng.dirichlet(np.ones(c), size=n),
    )


# -- the article's formulas, written out ---------------------------------------------------


def _softmax_rows(logits: Array) -> Array:
    s = np.exp(logits - logits.max(axis=1, keepdims=True))
    return s / s.sum(axis=1, keepdims=True)


def article_gradients(p: _Problem) -> dict[str, Array]:
    """Every checked step, computed by the article's closed forms (NumPy, from scratch)."""
    z = p.x @ p.w + p.b
    a = 1.0 / (1.0 + np.exp(-z))
    y = p.y
    sigma_prime = a * (1 - a)
    s = _softmax_rows(p.logits)
    c = s.shape[1]
    off = 1.0 - np.eye(c)  # masks the off-diagonal entries q ≠ j
    return {
        "sigmoid_prime": sigma_prime,
        "mse_da": a - y,
        "mse_dz": (a - y) * sigma_prime,
        "mse_dw": p.x.T @ ((a - y) * sigma_prime),
        "mse_db": np.array(np.sum((a - y) * sigma_prime)),
        "bce_da": -y / a + (1 - y) / (1 - a),
        "bce_dz": a - y,
        "bce_dw": p.x.T @ (a - y),
        "bce_db": np.array(np.sum(a - y)),
        "softmax_diag": s * (1 - s),  # ∂a_j/∂z_j, one per (sample, j)
        "softmax_offdiag": -s[:, :, None] * s[:, None, :] * off,  # [i, q, j] = ∂a_q/∂z_j
        "ce_da": -p.soft / s,
        "softmax_ce_dz_general": s * p.partial.sum(axis=1, keepdims=True) - p.partial,
        "softmax_ce_dz": s - p.soft,
    }


FORMULAS = {
    "sigmoid_prime": "sigmoid: σ'(z) = a(1 − a)",
    "mse_da": "MSE: ∂L/∂a = a − y",
    "mse_dz": "MSE: ∂L/∂z = (a − y) σ'(z)",
    "mse_dw": "MSE: ∂L/∂w = (a − y) σ'(z) x",
    "mse_db": "MSE: ∂L/∂b = (a − y) σ'(z)",
    "bce_da": "BCE: ∂L/∂a = −y/a + (1 − y)/(1 − a)",
    "bce_dz": "BCE: ∂L/∂z = a − y",
    "bce_dw": "BCE: ∂L/∂w = x (a − y)",
    "bce_db": "BCE: ∂L/∂b = a − y",
    "softmax_diag": "softmax: ∂a_j/∂z_j = a_j(1 − a_j)",
    "softmax_offdiag": "softmax: ∂a_q/∂z_j = −a_q a_j (q ≠ j)",
    "ce_da": "CE: ∂L/∂a_q = −y_q / a_q",
    "softmax_ce_dz_general": "softmax + CE: ∂L/∂z_j = a_j Σ_q y_q − y_j",
    "softmax_ce_dz": "softmax + CE: ∂L/∂z_j = a_j − y_j (Σ y = 1)",
}
"""Every step, in the order of the article's derivations."""


# -- reference 1: finite differences of the library's losses --------------------------------


def central_difference(f: Callable[[Array], Array], x: Array, h: float) -> Array:
    """``d f / d x`` by central differences; ``f`` maps ``x``'s shape to any shape ``s``, the
    result has shape ``s + x.shape``."""
    x = np.asarray(x, dtype=np.float64)
    out_shape = np.shape(f(x))
    grad = np.empty((*out_shape, x.size))
    for k in range(x.size):
        step = np.zeros(x.size)
        step[k] = h
        e = step.reshape(x.shape)
        grad[..., k] = (np.asarray(f(x + e)) - np.asarray(f(x - e))) / (2 * h)
    return grad.reshape((*out_shape, *x.shape))


def elementwise_difference(f: Callable[[Array], Array], x: Array, h: float) -> Array:
    """``d f_k / d x_k`` for an elementwise ``f`` (independent samples), by central differences
    of all elements at once."""
    x = np.asarray(x, dtype=np.float64)
    return (np.asarray(f(x + h)) - np.asarray(f(x - h))) / (2 * h)


def _relative_difference(f: Callable[[Array], Array], a: Array, h: float) -> Array:
    """``∂f_i/∂a_iq`` for per-row ``f`` (rows independent), by central differences with the
    step ``h · a_iq``: ``-y/a`` has a third derivative ``∝ 1/a³``, so a fixed step would
    measure its own truncation error wherever ``a`` is small."""
    grad = np.empty_like(a)
    for q in range(a.shape[1]):
        e = np.zeros_like(a)
        e[:, q] = h * a[:, q]
        grad[:, q] = (np.asarray(f(a + e)) - np.asarray(f(a - e))) / (2 * e[:, q])
    return grad


def finite_difference_gradients(p: _Problem, h: float) -> dict[str, Array]:
    """The same steps from central differences of the library's functions and losses."""
    y = p.y
    z = p.x @ p.w + p.b
    a = ce.sigmoid(z)

    def mse(w: Array, b: Array) -> Array:  # the article's Σ (a - y)² / 2
        return ce.mse_loss(ce.sigmoid(p.x @ w + b), y, reduction="sum") / 2

    def bce(w: Array, b: Array) -> Array:
        return ce.binary_cross_entropy(ce.sigmoid(p.x @ w + b), y, reduction="sum")

    b0 = np.array(p.b)
    n, c = p.logits.shape
    jac = np.stack(
        [central_difference(lambda v: ce.softmax(v), p.logits[i], h) for i in range(n)]
    )  # [i, q, j] = ∂a_q/∂z_j of sample i
    s = ce.softmax(p.logits, axis=1)
    return {
        "sigmoid_prime": elementwise_difference(ce.sigmoid, z, h),
        "mse_da": elementwise_difference(lambda v: ce.mse_loss(v, y, reduction="none") / 2, a, h),
        "mse_dz": elementwise_difference(
            lambda v: ce.mse_loss(ce.sigmoid(v), y, reduction="none") / 2, z, h
        ),
        "mse_dw": central_difference(lambda w: mse(w, b0), p.w, h),
        "mse_db": central_difference(lambda b: mse(p.w, b), b0, h),
        "bce_da": elementwise_difference(
            lambda v: ce.binary_cross_entropy(v, y, reduction="none"), a, h
        ),
        "bce_dz": elementwise_difference(
            lambda v: ce.binary_cross_entropy(ce.sigmoid(v), y, reduction="none"), z, h
        ),
        "bce_dw": central_difference(lambda w: bce(w, b0), p.w, h),
        "bce_db": central_difference(lambda b: bce(p.w, b), b0, h),
        "softmax_diag": np.diagonal(jac, axis1=1, axis2=2),
        "softmax_offdiag": jac * (1.0 - np.eye(c)),
        "ce_da": _relative_difference(
            lambda v: ce.categorical_cross_entropy(v, p.soft, reduction="none"), s, h
        ),
        "softmax_ce_dz_general": central_difference(
            lambda v: ce.cross_entropy(v, p.partial, reduction="sum"), p.logits, h
        ),
        "softmax_ce_dz": central_difference(
            lambda v: ce.cross_entropy(v, p.soft, reduction="sum"), p.logits, h
        ),
    }


# -- reference 2: PyTorch autograd ----------------------------------------------------------


def torch_gradients(p: _Problem) -> tuple[dict[str, Array], str] | None:
    """The same steps from PyTorch autograd in float64, or ``None`` without torch.

    The demo's only use of torch: an independent reference, imported lazily so that the
    experiments run without it.
    """
    try:
        import torch
    except ImportError:
        return None
    F = torch.nn.functional
    t = torch.float64

    def leaf(v: Array) -> torch.Tensor:
        return torch.tensor(np.asarray(v), dtype=t, requires_grad=True)

    def grad(out: torch.Tensor, *inputs: torch.Tensor) -> list[Array]:
        return [g.numpy() for g in torch.autograd.grad(out, inputs, retain_graph=True)]

    x = torch.tensor(p.x, dtype=t)
    y = torch.tensor(p.y, dtype=t)
    zv = p.x @ p.w + p.b
    out: dict[str, Array] = {}
    z = leaf(zv)
    (out["sigmoid_prime"],) = grad(torch.sigmoid(z).sum(), z)
    a = leaf(1.0 / (1.0 + np.exp(-zv)))
    (out["mse_da"],) = grad(((a - y) ** 2).sum() / 2, a)
    (out["bce_da"],) = grad(F.binary_cross_entropy(a, y, reduction="sum"), a)
    losses: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "mse": lambda act: ((act - y) ** 2).sum() / 2,
        "bce": lambda act: F.binary_cross_entropy(act, y, reduction="sum"),
    }
    for name, loss_of in losses.items():
        (out[f"{name}_dz"],) = grad(loss_of(torch.sigmoid(z)), z)
        w, b = leaf(p.w), leaf(np.array(p.b))
        out[f"{name}_dw"], out[f"{name}_db"] = grad(loss_of(torch.sigmoid(x @ w + b)), w, b)
    logits = leaf(p.logits)
    s = torch.softmax(logits, dim=-1)
    # Samples are independent, so the gradient of Σ_i a_iq holds row i's ∂a_iq/∂z_ij.
    jac = np.stack([grad(s[:, q].sum(), logits)[0] for q in range(s.shape[1])], axis=1)
    c = s.shape[1]
    out["softmax_diag"] = np.diagonal(jac, axis1=1, axis2=2)
    out["softmax_offdiag"] = jac * (1.0 - np.eye(c))
    probs = leaf(s.detach().numpy())
    soft = torch.tensor(p.soft, dtype=t)
    (out["ce_da"],) = grad(-(soft * torch.log(probs)).sum(), probs)
    partial = torch.tensor(p.partial, dtype=t)
    general = F.cross_entropy(logits, partial, reduction="sum")
    (out["softmax_ce_dz_general"],) = grad(general, logits)
    (out["softmax_ce_dz"],) = grad(F.cross_entropy(logits, soft, reduction="sum"), logits)
    return out, str(torch.__version__)


def derivation_checks(
    seed: int = 0,
    n: int = 16,
    d: int = 5,
    classes: int = 4,
    h: float = 1e-6,
    use_torch: bool = True,
) -> DerivationChecks:
    """Compare every formula with finite differences and (if available) torch autograd.

    Examples
    --------
    >>> r = derivation_checks(use_torch=False)
    >>> max(c.relative_error for c in r.checks) < 1e-7
    True
    """
    p = _problem(seed, n, d, classes)
    article = article_gradients(p)
    references = [(FINITE_DIFFERENCES, finite_difference_gradients(p, h))]
    torch_result = torch_gradients(p) if use_torch else None
    if torch_result is not None:
        references.append((TORCH_AUTOGRAD, torch_result[0]))
    checks = []
    for name, formula in FORMULAS.items():
        g = article[name]
        for reference, grads in references:
            checks.append(
                GradientCheck(
                    name=name,
                    formula=formula,
                    reference=reference,
                    max_abs_error=float(np.max(np.abs(g - grads[name]))),
                    max_abs_value=float(np.max(np.abs(g))),
                )
            )
    skipped = None
    if torch_result is None:
        skipped = "not requested" if not use_torch else "torch is not importable"
    return DerivationChecks(
        checks=tuple(checks),
        torch_version=None if torch_result is None else torch_result[1],
        finite_difference_step=h,
        torch_skipped=skipped,
    )
