"""The two real data sets of the race, split and standardised reproducibly.

Both ship inside scikit-learn (no download at run time): the Wisconsin breast-cancer set
(569 tumours, 30 features, benign/malignant) and the 8×8 handwritten digits (1797 images,
64 pixels, 10 classes).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

DATASETS = ("breast_cancer", "digits")


@dataclass(frozen=True)
class Dataset:
    """A classification data set split into train / validation / test.

    Features are standardised with the training split's mean and standard deviation; labels
    are integer class indices.
    """

    name: str
    n_classes: int
    x_train: NDArray[np.float64]
    y_train: NDArray[np.int64]
    x_val: NDArray[np.float64]
    y_val: NDArray[np.int64]
    x_test: NDArray[np.float64]
    y_test: NDArray[np.int64]


def _raw(name: str) -> tuple[NDArray[Any], NDArray[Any]]:
    # scikit-learn is only needed for its bundled files: import it here, not at module level.
    from sklearn.datasets import load_breast_cancer, load_digits

    if name == "breast_cancer":
        bunch = load_breast_cancer()
    elif name == "digits":
        bunch = load_digits()
    else:
        raise ValueError(f"load_dataset: name must be one of {DATASETS}, got {name!r}")
    return np.asarray(bunch.data, dtype=np.float64), np.asarray(bunch.target, dtype=np.int64)


def stratified_split(
    y: NDArray[np.int64], fractions: tuple[float, float], rng: np.random.Generator
) -> tuple[NDArray[np.intp], NDArray[np.intp], NDArray[np.intp]]:
    """Indices of a stratified train / validation / test split.

    ``fractions`` are the validation and test fractions; every class is split in the same
    proportions, so the three parts have the data set's class balance.
    """
    parts: list[list[NDArray[np.intp]]] = [[], [], []]
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_val = round(fractions[0] * idx.size)
        n_test = round(fractions[1] * idx.size)
        parts[0].append(idx[n_val + n_test :])
        parts[1].append(idx[:n_val])
        parts[2].append(idx[n_val : n_val + n_test])
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def load_dataset(name: str, seed: int, fractions: tuple[float, float] = (0.2, 0.2)) -> Dataset:
    """Load ``name`` ("breast_cancer" or "digits"), split it 60/20/20 and standardise it."""
    x, y = _raw(name)
    rng = np.random.default_rng([seed, DATASETS.index(name)])
    train, val, test = stratified_split(y, fractions, rng)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std = np.where(std > 0, std, 1.0)  # constant pixels (digits' borders) stay 0

    def norm(rows: NDArray[np.intp]) -> NDArray[np.float64]:
        return np.asarray((x[rows] - mean) / std, dtype=np.float64)

    return Dataset(
        name=name,
        n_classes=int(y.max()) + 1,
        x_train=norm(train),
        y_train=y[train],
        x_val=norm(val),
        y_val=y[val],
        x_test=norm(test),
        y_test=y[test],
    )
