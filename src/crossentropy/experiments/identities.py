r"""Part 5 — identities: the article's links between cross-entropy, likelihood and KL.

1. Mean binary cross-entropy is minus the Bernoulli log-likelihood per sample:
   :math:`\frac1n\sum_i \mathrm{BCE}(a_i, y_i) = -\frac1n \sum_i [y_i\ln a_i + (1-y_i)\ln(1-a_i)]`.
2. Cross-entropy splits into entropy and divergence: :math:`H(p, q) = H(p) + \mathrm{KL}(p\|q)`.
3. Two-class softmax cross-entropy is binary cross-entropy on the logit difference:
   :math:`\mathrm{CE}([z_0, z_1], y) = \mathrm{BCE}_\text{logits}(z_1 - z_0, y)`.

Each is evaluated on real predictions from the race's trained models: the left side with the
library's loss, the right side from its definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

import crossentropy as ce

Array = NDArray[Any]


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


def bce_is_negative_log_likelihood(logits: Array, labels: Array, data: str = "") -> Identity:
    """Identity 1 on the probabilities ``sigmoid(logits)`` of a binary classifier."""
    a = ce.sigmoid(np.asarray(logits, dtype=np.float64))
    y = np.asarray(labels, dtype=np.float64)
    log_likelihood = np.sum(y * np.log(a) + (1 - y) * np.log(1 - a))
    return Identity(
        name="mean_bce_equals_negative_log_likelihood",
        statement="mean BCE(a, y) = −(Σ y ln a + (1 − y) ln(1 − a)) / n",
        data=data,
        lhs=float(ce.binary_cross_entropy(a, y)),
        rhs=float(-log_likelihood / y.size),
    )


def cross_entropy_is_entropy_plus_kl(p: Array, q: Array, data: str = "") -> Identity:
    """Identity 2, averaged over the rows of distributions ``p`` and ``q`` (shape (n, C)).

    ``per_sample`` keeps each row's ``cross_entropy``, ``entropy`` and ``kl``.
    """
    per_sample = {
        "cross_entropy": np.asarray(
            ce.categorical_cross_entropy(q, p, reduction="none"), dtype=np.float64
        ),
        "entropy": np.asarray(ce.entropy(p), dtype=np.float64),
        "kl": np.asarray(ce.kl_divergence(p, q), dtype=np.float64),
    }
    return Identity(
        name="cross_entropy_equals_entropy_plus_kl",
        statement="H(p, q) = H(p) + KL(p ‖ q)",
        data=data,
        lhs=float(ce.categorical_cross_entropy(q, p)),  # mean over rows of −Σ p log q
        rhs=float(np.mean(per_sample["entropy"]) + np.mean(per_sample["kl"])),
        per_sample=per_sample,
    )


def two_class_softmax_is_bce(logits: Array, labels: Array, data: str = "") -> Identity:
    """Identity 3 on two-class logits ``logits`` (shape (n, 2)) and labels in {0, 1}."""
    z = np.asarray(logits, dtype=np.float64)
    y = np.asarray(labels, dtype=np.int64)
    return Identity(
        name="two_class_softmax_ce_equals_bce_on_logit_difference",
        statement="CE([z₀, z₁], y) = BCE_with_logits(z₁ − z₀, y)",
        data=data,
        lhs=float(ce.cross_entropy(z, y)),
        rhs=float(ce.binary_cross_entropy_with_logits(z[:, 1] - z[:, 0], y.astype(np.float64))),
    )


def identities(
    binary_logits: Array,
    binary_labels: Array,
    p: Array,
    q: Array,
    seed: int = 0,
    binary_data: str = "",
    distribution_data: str = "",
) -> tuple[Identity, ...]:
    """All three identities.

    ``binary_logits``/``binary_labels`` (shape (n,)) feed identities 1 and 3 — for 3 the logit
    :math:`z` becomes the pair :math:`[c, c + z]` with a random offset :math:`c` per sample
    (softmax ignores it); ``p`` and ``q`` (shape (m, C), rows summing to 1) feed identity 2.

    Examples
    --------
    >>> import numpy as np
    >>> z, y = np.array([2.0, -1.0, 0.5]), np.array([1, 0, 0])
    >>> p = np.array([[0.7, 0.2, 0.1]]); q = np.array([[0.5, 0.25, 0.25]])
    >>> all(i.abs_error < 1e-12 for i in identities(z, y, p, q))
    True
    """
    z = np.asarray(binary_logits, dtype=np.float64)
    offset = np.random.default_rng([seed, 5]).normal(scale=5.0, size=z.shape)
    pairs = np.stack([offset, offset + z], axis=1)
    return (
        bce_is_negative_log_likelihood(z, binary_labels, binary_data),
        cross_entropy_is_entropy_plus_kl(p, q, distribution_data),
        two_class_softmax_is_bce(pairs, binary_labels, binary_data),
    )
