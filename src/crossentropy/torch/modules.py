"""``nn.Module`` wrappers: they store the options and call the functional (one code path)."""

from __future__ import annotations

import torch
from torch import Tensor

from ._checks import check_softcap, check_z_loss
from .functional import cross_entropy, linear_cross_entropy

__all__ = ["CrossEntropyLoss", "LinearCrossEntropyLoss"]


class CrossEntropyLoss(torch.nn.CrossEntropyLoss):
    """Module form of :func:`crossentropy.torch.cross_entropy`: an ``nn.CrossEntropyLoss``
    (same constructor, attributes and ``state_dict``) whose forward is the fused function.

    ``forward(input, target, sample_weight=None)``: the per-position weights of
    :func:`crossentropy.torch.cross_entropy` are a forward argument, since they change with
    every batch.

    Parameters
    ----------
    weight : Tensor, shape ``(C,)``, optional
        Class weights, stored as a buffer (moves with ``.to()``).
    ignore_index, reduction, label_smoothing, impl
        As in :func:`crossentropy.torch.cross_entropy` (``impl`` is keyword-only).
    z_loss, softcap
        As in :func:`crossentropy.torch.cross_entropy` (keyword-only, checked here).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import CrossEntropyLoss
    >>> CrossEntropyLoss(label_smoothing=0.1)(torch.tensor([[1.0, 2.0]]), torch.tensor([1]))
    tensor(0.3633)
    """

    def __init__(
        self,
        weight: Tensor | None = None,
        size_average: bool | None = None,
        ignore_index: int = -100,
        reduce: bool | None = None,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        z_loss: float = 0.0,
        softcap: float | None = None,
        impl: str = "auto",
    ) -> None:
        # nn.CrossEntropyLoss's own constructor: the same buffer, attributes and legacy
        # size_average/reduce handling, and isinstance(loss, nn.CrossEntropyLoss) holds.
        super().__init__(weight, size_average, ignore_index, reduce, reduction, label_smoothing)
        self.z_loss = check_z_loss("CrossEntropyLoss", z_loss)
        self.softcap = check_softcap("CrossEntropyLoss", softcap)
        self.impl = impl

    def forward(self, input: Tensor, target: Tensor, sample_weight: Tensor | None = None) -> Tensor:
        return cross_entropy(
            input,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            z_loss=self.z_loss,
            softcap=self.softcap,
            sample_weight=sample_weight,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        extra = f", z_loss={self.z_loss}" if self.z_loss else ""
        extra += f", softcap={self.softcap}" if self.softcap is not None else ""
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}{extra}, impl={self.impl!r}"
        )


class LinearCrossEntropyLoss(torch.nn.Module):
    """Module form of :func:`crossentropy.torch.linear_cross_entropy`.

    Stores the loss options; ``forward(hidden, weight, target, bias=None)`` takes the output
    projection as arguments (typically an ``nn.Linear``'s ``weight`` and ``bias``).

    Parameters
    ----------
    class_weight : Tensor, shape ``(C,)``, optional
        Class weights, stored as a buffer.
    ignore_index, reduction, label_smoothing, z_loss, softcap, chunk_size, impl
        As in :func:`crossentropy.torch.linear_cross_entropy`; ``forward`` takes the
        per-position ``sample_weight``.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import LinearCrossEntropyLoss
    >>> head = torch.nn.Linear(2, 3, bias=False)
    >>> with torch.no_grad():
    ...     _ = head.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]]))
    >>> loss = LinearCrossEntropyLoss(chunk_size=2)
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> round(loss(h, head.weight, torch.tensor([0, 1, 2])).item(), 4)
    1.0094
    """

    class_weight: Tensor | None

    def __init__(
        self,
        ignore_index: int = -100,
        reduction: str = "mean",
        label_smoothing: float = 0.0,
        *,
        class_weight: Tensor | None = None,
        z_loss: float = 0.0,
        softcap: float | None = None,
        chunk_size: int | None = None,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        self.register_buffer("class_weight", class_weight)
        self.ignore_index = ignore_index
        self.reduction = reduction
        self.label_smoothing = label_smoothing
        self.z_loss = check_z_loss("LinearCrossEntropyLoss", z_loss)
        self.softcap = check_softcap("LinearCrossEntropyLoss", softcap)
        self.chunk_size = chunk_size
        self.impl = impl

    def forward(
        self,
        hidden: Tensor,
        weight: Tensor,
        target: Tensor,
        bias: Tensor | None = None,
        sample_weight: Tensor | None = None,
    ) -> Tensor:
        return linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index=self.ignore_index,
            reduction=self.reduction,
            label_smoothing=self.label_smoothing,
            class_weight=self.class_weight,
            z_loss=self.z_loss,
            softcap=self.softcap,
            sample_weight=sample_weight,
            chunk_size=self.chunk_size,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        extra = f", z_loss={self.z_loss}" if self.z_loss else ""
        extra += f", softcap={self.softcap}" if self.softcap is not None else ""
        return (
            f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
            f"label_smoothing={self.label_smoothing}{extra}, chunk_size={self.chunk_size}, "
            f"impl={self.impl!r}"
        )
