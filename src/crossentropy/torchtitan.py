"""torchtitan loss adapter (optional extra: ``pip install 'crossentropy[torchtitan]'``).

:class:`LinearCrossEntropyLoss` is a loss for torchtitan's trainer (``Trainer.Config(loss=
LinearCrossEntropyLoss.Config())``) that computes the language-model loss with
:func:`crossentropy.torch.linear_cross_entropy` on the decoder's final hidden states and the
output layer's weight, and never builds the (batch, sequence, vocabulary) logits.

It plugs in where torchtitan's ``ChunkedLossWrapper`` does, and is one: the trainer hands any
``ChunkedLossWrapper`` the model's ``lm_head`` (``set_lm_head``) and has the model skip it
(``_skip_lm_head``), so the loss receives the hidden states. Where the wrapper splits the
sequence into ``num_chunks`` pieces, materialises each piece's logits and runs a backward per
piece, this class makes one call: ``linear_cross_entropy`` chunks over rows internally and
computes the gradients of the hidden states and of the weight in its forward, so the loss
returned backpropagates into the decoder like any other. The result is torchtitan's:
the sum of the per-token losses over labels that are not ``-100``, divided by
``global_valid_tokens`` when the trainer gives it.

The output layer must be an ``nn.Linear`` whose weight and bias are plain tensors on one
device: a weight sharded by FSDP or tensor parallelism (a ``DTensor``) is refused, as are
``DTensor`` hidden states.
"""

from __future__ import annotations

import functools
from typing import Any

__all__ = ["LinearCrossEntropyLoss"]

LinearCrossEntropyLoss: type[Any]  # made by _loss_class() on first access (__getattr__)

_MISSING = (
    "crossentropy.torchtitan.LinearCrossEntropyLoss needs PyTorch and torchtitan: "
    "pip install 'crossentropy[torchtitan]'"
)


def __getattr__(name: str) -> Any:
    # The class subclasses torchtitan's, so it is made on first use: the module itself imports
    # without torchtitan, and using the class without it raises ImportError naming the extra.
    if name == "LinearCrossEntropyLoss":
        return _loss_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@functools.cache
def _loss_class() -> type[Any]:
    try:
        import torch
        from torch import nn
        from torch.distributed.tensor import DTensor
        from torchtitan.components.loss import IGNORE_INDEX, ChunkedLossWrapper
    except ImportError as exc:
        raise ImportError(_MISSING) from exc
    from dataclasses import dataclass

    from .torch import linear_cross_entropy

    class LinearCrossEntropyLoss(ChunkedLossWrapper):  # type: ignore[misc]
        """torchtitan's language-model loss with the output layer fused into it.

        ``loss, metrics = loss_fn(hidden, labels, global_valid_tokens)`` equals torchtitan's
        ``CrossEntropyLoss`` on ``lm_head(hidden)``: ``F.cross_entropy(logits.flatten(0, 1).float(),
        labels.flatten(0, 1), reduction="sum", ignore_index=-100) / global_valid_tokens``, with
        ``metrics`` empty, computed by :func:`crossentropy.torch.linear_cross_entropy` without the
        logits (memory above the inputs: the gradients and one chunk of rows of logits).

        Parameters
        ----------
        config : LinearCrossEntropyLoss.Config
            ``label_smoothing``, ``z_loss``, ``softcap`` and ``chunk_size`` are passed to
            :func:`~crossentropy.torch.linear_cross_entropy` (defaults: the plain loss). The fields
            inherited from ``ChunkedLossWrapper.Config`` (``num_chunks``, ``loss_fn``) are not
            used: the rows are chunked inside the fused loss.
        compile_config : torchtitan.config.CompileConfig, optional
            Accepted for the trainer's signature; the fused loss is not recompiled.

        Notes
        -----
        ``hidden`` (B, L, D) comes from the model run with ``_skip_lm_head = True``, which the
        trainer sets for every ``ChunkedLossWrapper``; outside the trainer call
        :meth:`set_lm_head` first and set the attribute yourself. Under autocast the hidden states,
        weight and bias are cast to the autocast dtype first, as ``nn.Linear`` would, and the loss
        is accumulated in float32, as torchtitan's ``.float()`` logits give.
        """

        @dataclass(kw_only=True, slots=True)
        class Config(ChunkedLossWrapper.Config):  # type: ignore[misc]
            label_smoothing: float = 0.0
            """Label smoothing over the vocabulary, as ``F.cross_entropy``'s."""

            z_loss: float = 0.0
            """Coefficient of the z-loss ``z_loss · logsumexp(logits)²`` per token (PaLM)."""

            softcap: float | None = None
            """Cap the logits to ``softcap · tanh(logits / softcap)`` first (Gemma 2)."""

            chunk_size: int | None = None
            """Rows of logits alive at a time (default: about 48 MiB of them)."""

        def __init__(self, config: Config, *, compile_config: Any = None) -> None:
            del compile_config
            self.num_chunks = config.num_chunks
            self.lm_head: nn.Linear | None = None
            self.options: dict[str, Any] = {
                "label_smoothing": config.label_smoothing,
                "z_loss": config.z_loss,
                "softcap": config.softcap,
                "chunk_size": config.chunk_size,
            }

        def set_lm_head(self, lm_head: nn.Module) -> None:
            """The output layer whose weight (and bias) the loss uses; the trainer calls this."""
            if not isinstance(lm_head, nn.Linear):
                raise TypeError(
                    "LinearCrossEntropyLoss.set_lm_head: lm_head must be an nn.Linear, "
                    f"got {type(lm_head).__name__}"
                )
            self.lm_head = lm_head

        def __call__(
            self,
            pred: torch.Tensor,
            labels: torch.Tensor,
            global_valid_tokens: torch.Tensor | None = None,
            **loss_inputs: Any,
        ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
            """``(sum of the token losses / global_valid_tokens, {})`` of ``lm_head(pred)``."""
            del loss_inputs  # per-token inputs (positions) do not change this loss
            head = self.lm_head
            if head is None:
                raise ValueError(
                    "LinearCrossEntropyLoss: lm_head must be set with set_lm_head() before the "
                    "first call, got None"
                )
            weight: torch.Tensor = head.weight
            bias: torch.Tensor | None = head.bias
            checked = (("hidden states", pred), ("lm_head.weight", weight), ("lm_head.bias", bias))
            for name, t in checked:
                if isinstance(t, DTensor):
                    raise TypeError(
                        f"LinearCrossEntropyLoss: {name} must be a plain tensor, got a DTensor "
                        f"with placements {t.placements} (a sharded output layer is not supported; "
                        "use torchtitan's ChunkedLossWrapper there)"
                    )
            hidden = pred.reshape(-1, pred.shape[-1])
            # A float32 sum, as torchtitan's float32 logits give: half-precision inputs outside
            # autocast return a half-precision loss, so their per-token losses are summed here.
            low = hidden.dtype in (torch.float16, torch.bfloat16) and not torch.is_autocast_enabled(
                hidden.device.type
            )
            loss = linear_cross_entropy(
                hidden,
                weight,
                labels.reshape(-1),
                bias,
                ignore_index=IGNORE_INDEX,
                reduction="none" if low else "sum",
                **self.options,
            )
            loss = loss.float().sum() if low else loss.float()
            if global_valid_tokens is not None:
                loss = loss / global_valid_tokens
            return loss, {}

    LinearCrossEntropyLoss.__module__ = __name__
    LinearCrossEntropyLoss.__qualname__ = "LinearCrossEntropyLoss"
    return LinearCrossEntropyLoss
