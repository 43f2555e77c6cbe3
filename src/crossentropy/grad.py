"""``value_and_grad``: a loss's value together with its closed-form gradient.

Each loss module writes its gradient beside the loss, as the article derives it, and registers
it here with :func:`gradient_of`. ``value_and_grad`` only looks it up: no autodiff, no tape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

from numpy.typing import NDArray

from ._validation import describe, fail

ValueAndGrad = Callable[..., tuple[NDArray[Any], NDArray[Any]]]
F = TypeVar("F", bound=ValueAndGrad)

_REGISTRY: dict[Callable[..., Any], ValueAndGrad] = {}


def gradient_of(loss: Callable[..., Any]) -> Callable[[F], F]:
    """Register the decorated function as ``loss``'s value-and-gradient.

    The decorated function takes exactly ``loss``'s arguments and returns
    ``(loss(...), d loss(...) / d first_argument)``.
    """

    def register(vg: F) -> F:
        _REGISTRY[loss] = vg
        return vg

    return register


def value_and_grad(loss: Callable[..., Any]) -> ValueAndGrad:
    r"""Return a function computing ``(loss(input, ...), d loss / d input)`` in closed form.

    Parameters
    ----------
    loss : callable
        One of the library's losses, e.g. :func:`crossentropy.cross_entropy`.

    Returns
    -------
    callable
        Takes the same arguments as ``loss`` and returns ``(value, gradient)``, the gradient
        with respect to the first argument, with its shape and dtype.

    Notes
    -----
    With ``reduction="none"`` the value is an array and the gradient returned is that of the
    **sum** of its elements (an upstream gradient of ones). The gradients are the article's
    closed forms: :math:`\sigma(z) - y` for binary cross-entropy with logits,
    :math:`\operatorname{softmax}(z)\sum_j y_j - y` for softmax cross-entropy, :math:`a - y`
    (times 2) for the mean squared error, each scaled by weights and the reduction.

    Examples
    --------
    >>> import numpy as np
    >>> import crossentropy as ce
    >>> loss, grad = ce.value_and_grad(ce.binary_cross_entropy_with_logits)(
    ...     np.array([0.0, 2.0]), np.array([1.0, 0.0]))
    >>> grad  # (sigmoid(z) - y) / n
    array([-0.25      ,  0.44039854])
    """
    try:
        return _REGISTRY[loss]
    except (KeyError, TypeError):
        known = ", ".join(sorted(getattr(f, "__name__", repr(f)) for f in _REGISTRY))
        fail(
            "value_and_grad",
            "loss",
            f"be one of the library's losses ({known})",
            describe(loss),
            TypeError,
        )


def registered() -> dict[Callable[..., Any], ValueAndGrad]:
    """A copy of the registry (for tests and documentation)."""
    return dict(_REGISTRY)


__all__ = ["gradient_of", "registered", "value_and_grad"]
