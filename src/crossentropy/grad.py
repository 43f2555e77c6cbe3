"""``value_and_grad``: a loss's value together with its closed-form gradient.

Each loss module writes its gradient beside the loss, as the article derives it, and registers
it here with :func:`gradient_of`. ``value_and_grad`` only looks it up: no autodiff, no tape.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NoReturn, ParamSpec, TypeVar, cast

from numpy.typing import NDArray

from ._validation import FloatArray, describe, fail

P = ParamSpec("P")
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


def _refuse(loss: object) -> NoReturn:
    known = ", ".join(sorted(getattr(f, "__name__", repr(f)) for f in _REGISTRY))
    fail(
        "value_and_grad",
        "loss",
        f"be one of the library's losses ({known}) or a functools.partial of one",
        describe(loss),
        TypeError,
    )


def _lookup(loss: object) -> ValueAndGrad | None:
    try:
        return _REGISTRY.get(loss)  # type: ignore[call-overload]
    except TypeError:  # unhashable
        return None


def _partial(loss: functools.partial[Any]) -> ValueAndGrad:
    """The value-and-gradient of a ``functools.partial`` of a registered loss."""
    vg = _lookup(loss.func)
    if vg is None:
        _refuse(loss)
    first = next(iter(inspect.signature(loss.func).parameters))
    if loss.args or first in loss.keywords:
        # The gradient is with respect to the first argument: it cannot be bound.
        fail(
            "value_and_grad",
            "loss",
            f"be a functools.partial that binds keyword options only, not {first!r} (the "
            "argument the gradient is taken with respect to)",
            f"partial({loss.func.__name__}, {len(loss.args)} positional argument(s), "
            f"keywords {sorted(loss.keywords)})",
        )
    return functools.partial(vg, **loss.keywords)


def value_and_grad(loss: Callable[P, FloatArray]) -> Callable[P, tuple[FloatArray, FloatArray]]:
    r"""Return a function computing ``(loss(input, ...), d loss / d input)`` in closed form.

    Parameters
    ----------
    loss : callable
        One of the library's losses, e.g. :func:`crossentropy.cross_entropy`, or a
        ``functools.partial`` of one that binds keyword options
        (``partial(ce.cross_entropy, label_smoothing=0.1)``); binding the first argument,
        the one differentiated, is a ``ValueError``.

    Returns
    -------
    callable
        Takes the same arguments as ``loss`` and returns ``(value, gradient)``, the gradient
        with respect to the first argument, with its shape and dtype. Its type keeps
        ``loss``'s signature (a ``ParamSpec``), so a type checker checks the arguments.

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
    >>> from functools import partial
    >>> smoothed = ce.value_and_grad(partial(ce.cross_entropy, label_smoothing=0.1))
    >>> smoothed(np.array([[2.0, 0.0]]), np.array([0]))[1]  # softmax(z) - (0.95, 0.05)
    array([[-0.06920292,  0.06920292]])
    """
    vg = _lookup(loss)
    if vg is None and isinstance(loss, functools.partial):
        vg = _partial(loss)
    if vg is None:
        _refuse(loss)
    return cast(Callable[P, tuple[FloatArray, FloatArray]], vg)


def registered() -> dict[Callable[..., Any], ValueAndGrad]:
    """A copy of the registry (for tests and documentation)."""
    return dict(_REGISTRY)


__all__ = ["gradient_of", "registered", "value_and_grad"]
