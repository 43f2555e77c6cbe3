r"""Part 4 — derivation checks: the article's gradient formulas against two references.

Each formula is written out in NumPy exactly as the article states it and compared with

* central finite differences of the library's loss values (float64), and
* PyTorch autograd (float64), when ``torch`` is importable.

The losses are summed over a small batch, so the per-sample formulas are summed too:

=============================  ======================================================
MSE + sigmoid                  :math:`\partial L/\partial w = (a - y)\,\sigma'(z)\,x`,
                               :math:`\partial L/\partial b = (a - y)\,\sigma'(z)`
BCE + sigmoid                  :math:`\partial L/\partial w = x\,(a - y)`,
                               :math:`\partial L/\partial b = a - y`
softmax Jacobian               :math:`\partial a_j/\partial z_j = a_j(1 - a_j)`,
                               :math:`\partial a_q/\partial z_j = -a_q a_j`
softmax + cross-entropy        :math:`\partial L/\partial z_j = a_j - y_j`
=============================  ======================================================
"""

from __future__ import annotations

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
    softmax logits ``logits`` (n, C) and probability targets ``soft`` (n, C)."""

    x: Array
    y: Array
    w: Array
    b: float
    logits: Array
    soft: Array


def _problem(seed: int, n: int, d: int, c: int) -> _Problem:
    rng = np.random.default_rng([seed, 4])
    soft = rng.dirichlet(np.ones(c), size=n)  # targets that sum to 1, not only one-hot
    return _Problem(
        x=rng.normal(size=(n, d)),
        y=rng.integers(0, 2, size=n).astype(np.float64),
        w=rng.normal(size=d),
        b=float(rng.normal()),
        logits=rng.normal(scale=3.0, size=(n, c)),
        soft=soft,
    )


# -- the article's formulas, written out ---------------------------------------------------


def article_gradients(p: _Problem) -> dict[str, Array]:
    """Every checked gradient, computed by the article's closed forms."""
    z = p.x @ p.w + p.b
    a = 1.0 / (1.0 + np.exp(-z))
    sigma_prime = a * (1 - a)
    s = np.exp(p.logits - p.logits.max(axis=1, keepdims=True))
    s /= s.sum(axis=1, keepdims=True)
    eye = np.eye(s.shape[1])
    return {
        "mse_sigmoid_dw": p.x.T @ ((a - p.y) * sigma_prime),
        "mse_sigmoid_db": np.array(np.sum((a - p.y) * sigma_prime)),
        "bce_sigmoid_dw": p.x.T @ (a - p.y),
        "bce_sigmoid_db": np.array(np.sum(a - p.y)),
        # jac[i, q, j] = ∂a_iq/∂z_ij = a_iq (δ_qj - a_ij)
        "softmax_jacobian": s[:, :, None] * (eye[None] - s[:, None, :]),
        "softmax_ce_dz": s - p.soft,
    }


FORMULAS = {
    "mse_sigmoid_dw": "MSE + sigmoid: ∂L/∂w = (a − y) σ'(z) x",
    "mse_sigmoid_db": "MSE + sigmoid: ∂L/∂b = (a − y) σ'(z)",
    "bce_sigmoid_dw": "BCE + sigmoid: ∂L/∂w = x (a − y)",
    "bce_sigmoid_db": "BCE + sigmoid: ∂L/∂b = a − y",
    "softmax_jacobian": "softmax: ∂a_j/∂z_j = a_j(1 − a_j), ∂a_q/∂z_j = −a_q a_j",
    "softmax_ce_dz": "softmax + CE: ∂L/∂z_j = a_j − y_j",
}


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


def finite_difference_gradients(p: _Problem, h: float) -> dict[str, Array]:
    """The same gradients from central differences of the library's loss values."""

    def mse(w: Array, b: Array) -> Array:  # the article's Σ (a - y)² / 2
        return ce.mse_loss(ce.sigmoid(p.x @ w + b), p.y, reduction="sum") / 2

    def bce(w: Array, b: Array) -> Array:
        return ce.binary_cross_entropy(ce.sigmoid(p.x @ w + b), p.y, reduction="sum")

    b0 = np.array(p.b)
    n = p.logits.shape[0]
    jac = np.stack([central_difference(lambda z: ce.softmax(z), p.logits[i], h) for i in range(n)])
    return {
        "mse_sigmoid_dw": central_difference(lambda w: mse(w, b0), p.w, h),
        "mse_sigmoid_db": central_difference(lambda b: mse(p.w, b), b0, h),
        "bce_sigmoid_dw": central_difference(lambda w: bce(w, b0), p.w, h),
        "bce_sigmoid_db": central_difference(lambda b: bce(p.w, b), b0, h),
        "softmax_jacobian": jac,
        "softmax_ce_dz": central_difference(
            lambda z: ce.cross_entropy(z, p.soft, reduction="sum"), p.logits, h
        ),
    }


# -- reference 2: PyTorch autograd ----------------------------------------------------------


def torch_gradients(p: _Problem) -> tuple[dict[str, Array], str] | None:
    """The same gradients from PyTorch autograd in float64, or ``None`` without torch.

    The demo's only use of torch: an independent reference, imported lazily so that the
    experiments run without it.
    """
    try:
        import torch
    except ImportError:
        return None
    t = torch.float64
    x = torch.tensor(p.x, dtype=t)
    y = torch.tensor(p.y, dtype=t)
    out: dict[str, Array] = {}
    losses: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
        "mse": lambda a: ((a - y) ** 2).sum() / 2,
        "bce": lambda a: torch.nn.functional.binary_cross_entropy(a, y, reduction="sum"),
    }
    for name, loss_of in losses.items():
        w = torch.tensor(p.w, dtype=t, requires_grad=True)
        b = torch.tensor(p.b, dtype=t, requires_grad=True)
        gw, gb = torch.autograd.grad(loss_of(torch.sigmoid(x @ w + b)), (w, b))
        out[f"{name}_sigmoid_dw"] = gw.numpy()
        out[f"{name}_sigmoid_db"] = gb.numpy()
    z = torch.tensor(p.logits, dtype=t, requires_grad=True)
    a = torch.softmax(z, dim=-1)
    # Samples are independent, so the gradient of Σ_i a_iq holds row i's ∂a_iq/∂z_ij.
    rows = [
        torch.autograd.grad(a[:, q].sum(), (z,), retain_graph=True)[0] for q in range(a.shape[1])
    ]
    out["softmax_jacobian"] = torch.stack(rows, dim=1).numpy()
    ce_loss = torch.nn.functional.cross_entropy(z, torch.tensor(p.soft, dtype=t), reduction="sum")
    (gz,) = torch.autograd.grad(ce_loss, (z,))
    out["softmax_ce_dz"] = gz.numpy()
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
    >>> max(c.max_abs_error for c in r.checks) < 1e-7
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
