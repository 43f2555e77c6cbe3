"""The data the kernels pass between their steps, shared by the torch-op kernels
(:mod:`._kernels`) and the Triton kernels (:mod:`._triton`) so neither imports the other."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["GradCoefficients", "LinearGrads", "RowStats", "compute_dtype"]


@dataclass(frozen=True)
class RowStats:
    """Per-row statistics of a (shard of the) logits, all of shape ``rows`` in compute dtype.

    Attributes
    ----------
    max : Tensor
        ``m_i = max_c x_ic`` over the shard's columns: the reference point of ``sumexp``
        (:func:`row_lse`, :func:`row_nll` and :func:`merge_row_stats` accept any finite
        reference point; the exact max keeps ``x − m`` exact, hence large logits accurate).
    sumexp : Tensor
        ``Σ_{c ≠ y_i} exp(x_ic − m_i)`` over the shard: the target column is excluded.
    target_logit : Tensor
        ``x_{i y_i}`` if ``y_i`` lies in the shard, else 0.
    has_target : Tensor
        Boolean: ``y_i`` lies in the shard (false for ignored rows).
    sum_logits : Tensor or None
        ``Σ_c w_c x_ic`` over the shard (``w ≡ 1`` without class weights), if requested.
    """

    max: Tensor
    sumexp: Tensor
    target_logit: Tensor
    has_target: Tensor
    sum_logits: Tensor | None = None


@dataclass(frozen=True)
class GradCoefficients:
    """Per-row coefficients of the gradient pass (see the module docstring), shape ``rows``.

    ``g_ic = p_scale_i · exp(x_ic − lse_i) − smooth_scale_i · w_c`` for ``c ≠ y_i`` and
    ``g_{i y_i} = target_grad_i`` (when ``y_i`` is in the shard). ``smooth_scale`` is ``None``
    without label smoothing.
    """

    p_scale: Tensor
    smooth_scale: Tensor | None
    target_grad: Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float64 stays float64; every other floating dtype computes in float32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@dataclass(frozen=True)
class LinearGrads:
    """Gradients of the linear kernels in compute dtype (``None`` when not requested).

    ``hidden``: ``(R, D)``; ``weight``: ``(C, D)`` (the shard's rows); ``bias``: ``(C,)``.
    For a vocabulary shard, ``hidden`` is this shard's *partial* gradient: sum it over ranks.
    """

    hidden: Tensor | None
    weight: Tensor | None
    bias: Tensor | None
