r"""Part 1 — gradient anatomy: what reaches :math:`z` under MSE and under cross-entropy.

For one sigmoid neuron, :math:`a = \sigma(z)`, the article compares

.. math::
    L_\text{MSE} = \tfrac12 (a - y)^2 \;\Rightarrow\;
        \frac{\partial L}{\partial z} = (a - y)\,\sigma'(z), \qquad
    L_\text{BCE} = -[y \ln a + (1 - y)\ln(1 - a)] \;\Rightarrow\;
        \frac{\partial L}{\partial z} = a - y .

Here both gradients come from the library's closed forms (``value_and_grad``) and the chain
rule, and are checked against central finite differences of the library's loss values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce


@dataclass(frozen=True)
class GradientAnatomy:
    """:math:`\\partial L/\\partial z` of MSE and BCE on a grid of pre-activations.

    Attributes
    ----------
    z : ndarray, shape (m,)
        The pre-activations.
    targets : tuple of float, length t
        The targets :math:`y` (0 and 1).
    mse_grad, bce_grad : ndarray, shape (t, m)
        :math:`\\partial L/\\partial z` for each target (rows) and each ``z``.
    sigmoid_prime : ndarray, shape (m,)
        :math:`\\sigma'(z) = a(1 - a)`.
    fd_max_abs_error : dict
        ``{"mse": ..., "bce": ...}``: the largest absolute difference between the closed-form
        gradient and a central finite difference, over all targets and ``z``.
    """

    z: NDArray[np.float64]
    targets: tuple[float, ...]
    mse_grad: NDArray[np.float64]
    bce_grad: NDArray[np.float64]
    sigmoid_prime: NDArray[np.float64]
    fd_max_abs_error: dict[str, float]

    def at(self, z: float, y: float) -> tuple[float, float]:
        """``(|dL/dz| for MSE, |dL/dz| for BCE)`` at the grid point nearest ``z``."""
        i = int(np.argmin(np.abs(self.z - z)))
        t = self.targets.index(y)
        return abs(float(self.mse_grad[t, i])), abs(float(self.bce_grad[t, i]))


def mse_loss_z(z: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """The article's per-sample MSE as a function of :math:`z`: ``(sigmoid(z) - y)² / 2``."""
    return np.asarray(ce.mse_loss(ce.sigmoid(z), y, reduction="none") / 2, dtype=np.float64)


def mse_grad_z(z: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """:math:`\\partial L/\\partial z = (a - y)\\sigma'(z)` via the library's MSE gradient."""
    a = ce.sigmoid(z)
    _, dl_da = ce.value_and_grad(ce.mse_loss)(a, y, reduction="none")  # d/da (a - y)² = 2(a - y)
    return np.asarray(dl_da / 2 * (a * (1 - a)), dtype=np.float64)  # chain rule: × σ'(z)


def bce_loss_z(z: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per-sample binary cross-entropy of ``sigmoid(z)`` against ``y``."""
    return np.asarray(ce.binary_cross_entropy_with_logits(z, y, reduction="none"), np.float64)


def bce_grad_z(z: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    """:math:`\\partial L/\\partial z = a - y`: σ'(z) has cancelled against 1/(a(1 - a))."""
    _, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(z, y, reduction="none")
    return np.asarray(grad, dtype=np.float64)


def gradient_anatomy(
    z_max: float = 10.0, num: int = 401, targets: tuple[float, ...] = (0.0, 1.0), h: float = 1e-5
) -> GradientAnatomy:
    """Compute both gradients on ``num`` points of :math:`[-z_{max}, z_{max}]` (float64).

    ``h`` is the step of the central finite differences used as the check.

    Examples
    --------
    >>> r = gradient_anatomy(z_max=10.0, num=5)
    >>> mse, bce = r.at(-10.0, 1.0)  # confidently wrong: z = -10 but y = 1
    >>> print(f"{mse:.1e} {bce:.3f}")
    4.5e-05 1.000
    """
    z = np.linspace(-z_max, z_max, num)
    mse_rows: list[NDArray[np.float64]] = []
    bce_rows: list[NDArray[np.float64]] = []
    err = {"mse": 0.0, "bce": 0.0}
    for y in targets:
        yv = np.full_like(z, y)
        for name, loss, grad, rows in (
            ("mse", mse_loss_z, mse_grad_z, mse_rows),
            ("bce", bce_loss_z, bce_grad_z, bce_rows),
        ):
            g = grad(z, yv)
            fd = (loss(z + h, yv) - loss(z - h, yv)) / (2 * h)
            err[name] = max(err[name], float(np.max(np.abs(g - fd))))
            rows.append(g)
    a = ce.sigmoid(z)
    return GradientAnatomy(
        z=z,
        targets=tuple(float(t) for t in targets),
        mse_grad=np.stack(mse_rows),
        bce_grad=np.stack(bce_rows),
        sigmoid_prime=np.asarray(a * (1 - a), dtype=np.float64),
        fd_max_abs_error=err,
    )
