r"""Mean squared error: the loss the article warns against under a sigmoid.

Its gradient :math:`2(a - y)/n` is fine by itself; composed with :math:`a = \sigma(z)` it picks
up the factor :math:`\sigma'(z)`, which vanishes for a saturated neuron. Kept here so the
experiments can compare it with cross-entropy on equal terms.
"""

from __future__ import annotations

from typing import NamedTuple

from numpy.typing import ArrayLike

from ._reduction import reduce, scale
from ._validation import FloatArray, Reduction, check_reduction, compute_dtype, input_and_target
from .grad import gradient_of


class _Forward(NamedTuple):
    value: FloatArray
    diff: FloatArray  # input - target, in the compute dtype


def _mse(input: ArrayLike, target: ArrayLike, reduction: str) -> _Forward:
    fn = "mse_loss"
    check_reduction(reduction, fn)
    x, y = input_and_target(input, target, fn)
    ct = compute_dtype(x.dtype, y.dtype)
    diff = x.astype(ct, copy=False) - y.astype(ct, copy=False)
    value = reduce(diff * diff, reduction).astype(x.dtype, copy=False)
    return _Forward(value, diff)


def mse_loss(input: ArrayLike, target: ArrayLike, reduction: Reduction = "mean") -> FloatArray:
    r"""Mean squared error, element-wise :math:`(a_i - y_i)^2`, reduced.

    Parameters
    ----------
    input : array_like of float, shape (*)
        Predictions :math:`a`.
    target : array_like of float, shape (*), same as ``input``
        Targets :math:`y`. Shapes must match exactly: where PyTorch broadcasts with a warning
        (a classic bug: (N, 1) against (N,) gives an (N, N) loss), this raises.
    reduction : {"mean", "sum", "none"}, default "mean"

    Returns
    -------
    ndarray, ``input``'s dtype
        Shape () for ``"mean"``/``"sum"``, ``input``'s shape for ``"none"``.

    Raises
    ------
    TypeError
        ``input`` or ``target`` not floating point.
    ValueError
        Unknown ``reduction``; shapes differ; NaN in ``input`` or ``target``.

    Notes
    -----
    .. math:: L = \frac1n \sum_i (a_i - y_i)^2, \qquad
              \frac{\partial L}{\partial a_i} = \frac{2 (a_i - y_i)}{n}

    (no :math:`1/n` for ``"sum"``/``"none"``). The article writes :math:`(a - y)^2/2`, whose
    gradient is :math:`a - y`; PyTorch's and ours has no :math:`1/2`. Under a sigmoid,
    :math:`\partial L/\partial z_i = 2(a_i - y_i)\,\sigma'(z_i)/n`: the factor that stalls a
    saturated neuron.

    Examples
    --------
    >>> import numpy as np
    >>> mse_loss(np.array([0.5, 1.0, 3.0]), np.array([0.0, 1.0, 1.0]))
    array(1.41666667)
    >>> mse_loss(np.array([0.5, 1.0, 3.0]), np.array([0.0, 1.0, 1.0]), reduction="none")
    array([0.25, 0.  , 4.  ])
    """
    return _mse(input, target, reduction).value


@gradient_of(mse_loss)
def mse_loss_value_and_grad(
    input: ArrayLike, target: ArrayLike, reduction: Reduction = "mean"
) -> tuple[FloatArray, FloatArray]:
    r""":func:`mse_loss` and its gradient :math:`2(a - y)` (divided by :math:`n` for ``"mean"``).

    For ``reduction="none"`` the gradient is that of the sum of the values.

    Examples
    --------
    >>> import numpy as np
    >>> value, grad = mse_loss_value_and_grad(np.array([0.5, 1.0, 3.0]), np.array([0.0, 1.0, 1.0]))
    >>> grad  # 2 (a - y) / 3
    array([0.33333333, 0.        , 1.33333333])
    """
    f = _mse(input, target, reduction)
    d = f.diff
    grad = d * d.dtype.type(2.0 * scale(reduction, d.size))
    return f.value, grad.astype(f.value.dtype, copy=False)


__all__ = ["mse_loss", "mse_loss_value_and_grad"]
