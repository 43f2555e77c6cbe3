r"""Part 5 — identities: why minimising cross-entropy *is* maximum likelihood.

Each identity is evaluated on a trained model's test predictions **against the true labels**:
the left side with the library's loss, the right side from its definition, in stable forms
(logarithms of probabilities from ``log_sigmoid``/``log_softmax``, never ``log`` of a
probability that may have rounded to 0 or 1; :math:`0 \cdot \log 0 = 0`; no clamping).

1. Mean binary cross-entropy is minus the Bernoulli log-likelihood of the labels per sample:
   :math:`\mathrm{BCE} = -\frac1n\sum_i [y_i\ln a_i + (1-y_i)\ln(1-a_i)]`, with
   :math:`\ln a = \log\sigma(z)` and :math:`\ln(1 - a) = \log\sigma(-z)`.
2. Mean categorical cross-entropy with one-hot labels is minus the categorical
   log-likelihood per sample: :math:`\mathrm{CE} = -\frac1n\sum_i \ln a_{i, y_i}`.
3. Cross-entropy splits into entropy and divergence: :math:`H(p, q) = H(p) + \mathrm{KL}(p\|q)`,
   with :math:`p` the (label-smoothed) target distribution of each sample and :math:`q` the
   model's. :math:`H(p)` does not depend on the model, so minimising :math:`H(p, q)` over the
   model minimises :math:`\mathrm{KL}(p\|q)`; with one-hot targets :math:`H(p) = 0`.
4. Two-class softmax cross-entropy is binary cross-entropy on the logit difference:
   :math:`\mathrm{CE}([z_0, z_1], y) = \mathrm{BCE}_\text{logits}(z_1 - z_0, y)`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

Array = NDArray[Any]

IDENTITY_NAMES = (
    "mean_bce_equals_negative_log_likelihood",
    "mean_ce_equals_negative_log_likelihood",
    "cross_entropy_equals_entropy_plus_kl",
    "two_class_softmax_ce_equals_bce_on_logit_difference",
)


@dataclass(frozen=True)
class Identity:
    """One identity evaluated on data: ``lhs`` and ``rhs`` should agree to rounding."""

    name: str
    statement: str
    data: str
    lhs: float
    rhs: float
    per_sample: dict[str, NDArray[np.float64]] = field(default_factory=dict)

    @property
    def abs_error(self) -> float:
        """``|lhs - rhs|``."""
        return abs(self.lhs - self.rhs)


def _xlogy(x: Array, log_y: Array) -> Array:
    """``x · log y`` given ``log y``, with ``0 · log 0 = 0`` (``log y`` may be ``-inf``)."""
    return np.where(x == 0, 0.0, x * np.where(x == 0, 0.0, log_y))


def bce_is_negative_log_likelihood(logits: Array, labels: Array, data: str = "") -> Identity:
    """Identity 1 for a binary classifier's ``logits`` (shape (n,)) and labels in {0, 1}."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    # ln a = log σ(z) and ln(1 − a) = log σ(−z): exact even where σ(z) rounds to 0 or 1.
    log_likelihood = np.sum(_xlogy(y, ce.log_sigmoid(z)) + _xlogy(1 - y, ce.log_sigmoid(-z)))
    return Identity(
        name=IDENTITY_NAMES[0],
        statement="mean BCE(a, y) = −(Σ y ln a + (1 − y) ln(1 − a)) / n",
        data=data,
        lhs=float(ce.binary_cross_entropy_with_logits(z, y)),
        rhs=float(-log_likelihood / y.size),
    )


def ce_is_negative_log_likelihood(logits: Array, labels: Array, data: str = "") -> Identity:
    """Identity 2 for a C-class classifier's ``logits`` (shape (n, C)) and class indices."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    log_a = ce.log_softmax(z, axis=1)
    return Identity(
        name=IDENTITY_NAMES[1],
        statement="mean CE(z, y) = −(Σ ln a_{i,y_i}) / n",
        data=data,
        lhs=float(ce.cross_entropy(z, y)),
        rhs=float(-np.mean(log_a[np.arange(y.size), y])),
    )


def smoothed_targets(labels: Array, n_classes: int, smoothing: float) -> NDArray[np.float64]:
    """One-hot rows of ``labels`` mixed with the uniform distribution: ``(1 − ε)·onehot + ε/C``."""
    onehot = np.eye(n_classes)[np.asarray(labels, dtype=np.int64)]
    return np.asarray((1 - smoothing) * onehot + smoothing / n_classes, dtype=np.float64)


def cross_entropy_is_entropy_plus_kl(
    logits: Array, labels: Array, smoothing: float = 0.1, data: str = ""
) -> Identity:
    """Identity 3: ``p`` the label-smoothed targets, ``q = softmax(logits)`` (shape (n, C)).

    ``per_sample`` keeps each row's ``cross_entropy`` (:math:`-\\sum p \\log q`, computed
    directly), ``entropy`` and ``kl``.
    """
    z = np.asarray(logits, dtype=np.float64)
    if not 0.0 <= smoothing <= 1.0:
        raise ValueError(
            f"cross_entropy_is_entropy_plus_kl: smoothing must be in [0, 1], got {smoothing}"
        )
    p = smoothed_targets(labels, z.shape[1], smoothing)
    log_q = ce.log_softmax(z, axis=1)
    per_sample = {
        "cross_entropy": np.asarray(-np.sum(_xlogy(p, log_q), axis=1), dtype=np.float64),
        "entropy": np.asarray(ce.entropy(p), dtype=np.float64),
        # kl_div takes log q, as torch's does: Σ p (log p − log q), never log of a rounded q.
        "kl": np.asarray(np.sum(ce.kl_div(log_q, p, reduction="none"), axis=1), np.float64),
    }
    return Identity(
        name=IDENTITY_NAMES[2],
        statement="H(p, q) = H(p) + KL(p ‖ q)",
        data=data,
        lhs=float(ce.cross_entropy(z, p)),  # the library's CE with probability targets
        rhs=float(np.mean(per_sample["entropy"]) + np.mean(per_sample["kl"])),
        per_sample=per_sample,
    )


def two_class_softmax_is_bce(logits: Array, labels: Array, data: str = "") -> Identity:
    """Identity 4 on two-class logits ``logits`` (shape (n, 2)) and labels in {0, 1}."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return Identity(
        name=IDENTITY_NAMES[3],
        statement="CE([z₀, z₁], y) = BCE_with_logits(z₁ − z₀, y)",
        data=data,
        lhs=float(ce.cross_entropy(z, y)),
        rhs=float(ce.binary_cross_entropy_with_logits(z[:, 1] - z[:, 0], y.astype(np.float64))),
    )


def identities(
    binary_logits: Array,
    binary_labels: Array,
    class_logits: Array,
    class_labels: Array,
    seed: int = 0,
    smoothing: float = 0.1,
    binary_data: str = "",
    class_data: str = "",
) -> tuple[Identity, ...]:
    """All four identities, against the labels.

    ``binary_logits``/``binary_labels`` (shape (n,)) feed identities 1 and 4 — for 4 the logit
    :math:`z` becomes the pair :math:`[c, c + z]` with a random offset :math:`c` per sample
    (softmax ignores it); ``class_logits`` (shape (m, C)) and ``class_labels`` feed 2 and 3.

    Examples
    --------
    >>> import numpy as np
    >>> z, y = np.array([2.0, -1.0, 0.5, 40.0]), np.array([1, 0, 0, 0])
    >>> zc, yc = np.array([[3.0, 0.0, -1.0], [0.0, 800.0, 0.0]]), np.array([0, 2])
    >>> all(i.abs_error < 1e-12 for i in identities(z, y, zc, yc))
    True
    """
    z = np.asarray(binary_logits, dtype=np.float64)
    offset = np.random.default_rng([seed, 5]).normal(scale=5.0, size=z.shape)
    pairs = np.stack([offset, offset + z], axis=1)
    return (
        bce_is_negative_log_likelihood(z, binary_labels, binary_data),
        ce_is_negative_log_likelihood(class_logits, class_labels, class_data),
        cross_entropy_is_entropy_plus_kl(class_logits, class_labels, smoothing, class_data),
        two_class_softmax_is_bce(pairs, binary_labels, binary_data),
    )
