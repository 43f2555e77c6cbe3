r"""Per-token statistics with exact gradients, from logits or from ``(hidden, weight)``.

:func:`token_stats` and :func:`linear_token_stats` return, for every target position, the
log-probability of the target, the entropy, the log-sum-exp and the argmax of the softmax:
what RL fine-tuning of language models (PPO, GRPO) optimises and logs. A policy-gradient loss
with an entropy bonus is then

.. code-block:: python

    out = linear_token_stats(hidden, lm_head.weight, tokens, ignore_index=-100)
    loss = -(advantage * out.logprob).mean() - beta * out.entropy.mean()
    loss.backward()   # exact d hidden and d weight, one chunk of logits in memory

:func:`linear_token_stats` never materialises the (N, C) logits: the forward keeps four
numbers per row, and backward recomputes each chunk of logits and applies the closed-form
vector-Jacobian product of :func:`crossentropy.tokens.token_stats_vjp`,

.. math::

    G = a\,(e_y - p) - b\,p \odot (\log p + H) + c\,p, \qquad
    \frac{\partial L}{\partial h} = G W, \quad
    \frac{\partial L}{\partial W} = G^\top h, \quad
    \frac{\partial L}{\partial b} = \textstyle\sum_i G_i,

with :math:`a, b, c` the upstream gradients of ``logprob``, ``entropy`` and ``lse`` (an output
the loss does not use has none, and its term is skipped).

Softcap. With ``softcap=s`` every statistic is that of the capped logits
:math:`z' = s \tanh(z / s)` (Gemma 2's ``final_logit_softcapping``, Liger's and Apple CCE's
``softcap``), applied chunk by chunk like everything else, and the gradient gains the chain
factor of the cap, :math:`G \odot (1 - (z'/s)^2)`, before the projection.

Names. The fields are ``logprob``, ``entropy``, ``lse`` and ``argmax`` (see
:mod:`crossentropy.tokens` for the table): ``logprob`` is verl's ``log_probs``
(``logprobs_from_logits``) and TRL's ``per_token_logps`` (``selective_log_softmax``), in the
singular because each entry is one token's value; ``entropy`` is both libraries'
``entropy_from_logits``. ``target`` is the argument name of
:func:`crossentropy.torch.cross_entropy` (verl says ``labels``, TRL ``index``). The classes
are the last dimension.

Differentiability. ``logprob``, ``entropy`` and ``lse`` are differentiable (``lse`` is what
the PaLM z-loss squares); ``argmax`` is marked non-differentiable. ``argmax`` is int64; the
three differentiable outputs are float32 for float16/bfloat16/float32 inputs and float64 for
float64 (unlike the NumPy core, which returns the input's dtype: a bfloat16 log-probability
has 3 significant digits, too few for an importance ratio). Low-precision inputs run the
matmul in their dtype, as ``F.linear`` does, and every softmax statistic in float32; the
gradients come back in the inputs' dtypes.

Double backward (``create_graph=True``, ``gradgradcheck``) recomputes the logits with
differentiable torch ops and differentiates the closed form; under ``torch.func`` transforms
(``grad``, ``vmap``, ``jacrev``, forward-mode AD) both functions are the plain composition of
``F.linear``, ``logsumexp`` and ``gather``. Each kernel is a ``torch.library.custom_op`` with
a fake implementation, so ``torch.compile(fullgraph=True)`` sees no graph break.

Kernels. ``impl`` chooses them as for :func:`crossentropy.torch.cross_entropy`: torch ops (the
tiled passes here), or on CUDA Triton kernels, one program per row, online over chunks of
classes (each chunk of :func:`linear_token_stats`'s logits computed by the same matmul and
passed to them).
"""

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import fail
from . import _dtensor
from . import _kernels as K
from . import _reference as R
from ._autograd import _TokenStats
from ._checks import (
    check_chunk_size,
    check_ignore_index,
    check_impl,
    check_projection,
    check_softcap,
    check_temperature,
    check_tensor,
)
from ._modes import (
    autocast_on,
    autocast_projection,
    no_autocast,
    transforms_active,
)
from ._rows import softcapped
from ._token_ops import TokenStats, _check_target, _finish, _reference_rows

__all__ = ["TokenStats", "linear_token_stats", "token_stats"]


def _reference(
    fn: str,
    x: Tensor,
    weight: Tensor | None,
    bias: Tensor | None,
    t: Tensor,
    ignore: int,
    softcap: float | None,
    temperature: float = 1.0,
) -> tuple[Tensor, ...]:
    """The plain composition (``torch.func`` transforms): every op has its batching and jvp
    rules."""
    num_classes = x.shape[-1] if weight is None else weight.shape[0]
    cdt = K.compute_dtype(x.dtype)

    def call() -> Tensor:
        z, _ = softcapped((x if weight is None else F.linear(x, weight, bias)).to(cdt), softcap)
        z = z / temperature
        return torch.stack(_reference_rows(z, t, ignore)[:3]), z.argmax(dim=-1)  # type: ignore[return-value]

    with no_autocast(x):
        stacked, argmax = R.call(fn, call, t, num_classes, ignore)
    return (*stacked.unbind(0), argmax)


def token_stats(
    logits: Tensor,
    target: Tensor,
    *,
    ignore_index: int = -100,
    softcap: float | None = None,
    impl: str = "auto",
    temperature: float = 1.0,
) -> TokenStats:
    r"""Per-token log-probability of ``target``, entropy, log-sum-exp and argmax of ``logits``.

    Parameters
    ----------
    logits : Tensor, shape ``(*, C)``
        Unnormalised log-probabilities, the classes last; any floating dtype.
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    ignore_index : int, default -100
        A target with no log-probability: its ``logprob`` is 0 and contributes no gradient.
        ``entropy``, ``lse`` and ``argmax`` do not depend on the target and are computed at
        every position (mask them in your loss as you mask the log-probabilities).
    softcap : float, optional
        ``s > 0``: every statistic is that of the capped logits ``z' = s·tanh(z / s)``
        (Gemma 2's ``final_logit_softcapping``, 30.0 there). ``None`` (default): ``z' = z``.
    impl : {"auto", "torch", "triton"}, default "auto"
        The kernels, as in :func:`crossentropy.torch.cross_entropy`: ``"auto"`` runs Triton
        kernels on CUDA tensors of float16, bfloat16 or float32 when Triton is installed (one
        program per row, online over chunks of classes) and torch ops otherwise; ``"torch"``
        always torch ops; ``"triton"`` always Triton (CUDA tensors, or CPU tensors in Triton's
        interpreter with ``TRITON_INTERPRET=1``). Double backward and ``torch.func``
        transforms use torch ops whatever ``impl``.
    temperature : float, default 1.0
        ``T > 0``: every statistic is that of ``z' / T`` (after the softcap), the distribution
        a sampler with temperature ``T`` draws from (RL frameworks' ``logits / temperature``),
        with exact gradients (the chain rule's ``1 / T``); the logits are not copied.

    Returns
    -------
    TokenStats
        ``(logprob, entropy, lse, argmax)``, each of shape ``(*)``: float32 for float16,
        bfloat16 and float32 logits, float64 for float64; ``argmax`` int64 and not
        differentiable.

    Raises
    ------
    TypeError
        ``logits`` not a floating tensor, ``target`` not an integer tensor, ``ignore_index``
        not an integer, ``softcap`` not a real number.
    ValueError
        0-d ``logits`` or no classes; ``target`` of the wrong shape or device; on CPU, a target
        outside ``[0, C)`` that is not ``ignore_index`` (elsewhere a device-side assertion);
        ``softcap`` not finite or not ``> 0``; ``impl`` not one of the three, or ``"triton"``
        where Triton cannot run (not installed, float64, a CPU tensor without the
        interpreter).

    Notes
    -----
    Equal to the composition (``p = softmax(z)``, and with ``softcap=s`` first
    ``z = s * torch.tanh(z / s)``)::

        lse = z.logsumexp(-1)
        logprob = (z.log_softmax(-1).gather(-1, y[..., None])[..., 0]).where(y != ignore, 0)
        entropy = -(p * log p).sum(-1)            # with 0 · log 0 = 0
        argmax = z.argmax(-1)

    but backward does not keep ``softmax(z)``: it saves two numbers per row and recomputes
    ``p = exp(z − lse)`` chunk by chunk, giving ``G = a(e_y − p) − b p ⊙ (log p + H) + c p`` for
    upstream gradients ``a``, ``b``, ``c`` of ``logprob``, ``entropy``, ``lse`` (see
    :func:`crossentropy.tokens.token_stats_vjp`). Memory above the logits: the gradient and
    a few tile-sized buffers (4 MiB each in float32; ``Tuning.token_block_elements``), the logits
    being read in row blocks of that size. ``-inf`` logits (masked vocabulary) add nothing to the
    entropy and get zero gradient; ``+inf`` logits give NaN, as ``F.log_softmax`` does.

    With ``softcap=s`` the gradient w.r.t. the raw logits chains through the cap:

    .. math::

        z' = s \tanh(z / s), \qquad
        \frac{\partial L}{\partial z} = G' \odot \Big(1 - \big(z'/s\big)^2\Big),

    with :math:`G'` the formula above at :math:`z'` (``p = softmax(z')``). The cap is bounded:
    a ``-inf`` logit becomes ``-s``, so it is no longer masked (its probability is
    :math:`\propto e^{-s}`; to mask classes, cap the logits yourself, set the masked ones to
    ``-inf`` and pass ``softcap=None``), and ``+inf`` becomes ``s``. Memory: one more tile in
    backward (the capped logits' gradient beside the chain factor).

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch.tokens import token_stats
    >>> z = torch.tensor([[2.0, 1.0, 0.1], [0.0, 0.0, 0.0]], requires_grad=True)
    >>> out = token_stats(z, torch.tensor([0, -100]))
    >>> out.logprob.detach(), out.entropy.detach(), out.argmax
    (tensor([-0.4170,  0.0000]), tensor([0.8467, 1.0986]), tensor([0, 0]))
    >>> out.logprob.sum().backward()
    >>> z.grad  # e_y − p, and 0 for the ignored row
    tensor([[ 0.3410, -0.2424, -0.0986],
            [ 0.0000,  0.0000,  0.0000]])
    """
    fn = "token_stats"
    if _dtensor.any_dtensor(logits, target):
        return TokenStats(
            *_dtensor.token_stats(
                fn, logits, target, ignore_index, softcap, impl, temperature, token_stats
            )
        )
    x = check_tensor(fn, "logits", logits, floating=True)
    if x.dim() == 0:
        fail(fn, "logits", "have shape (*, C) with at least 1 dimension (classes)", "shape ()")
    if x.shape[-1] == 0:
        fail(fn, "logits", "have at least one class (C >= 1)", f"shape {tuple(x.shape)}")
    t = _check_target(fn, target, x, "logits", "logits' shape without the classes")
    ignore = check_ignore_index(fn, ignore_index)
    impl = check_impl(fn, impl, x)
    cap = check_softcap(fn, softcap)
    temp = check_temperature(fn, temperature)
    lead = tuple(t.shape)
    x2 = x.reshape(-1, x.shape[-1])
    t1 = t.reshape(-1).to(torch.int64)
    if transforms_active():
        return _finish(_reference(fn, x2, None, None, t1, ignore, cap, temp), lead)
    out = _TokenStats.apply(x2, None, None, t1, ignore, 0, cap, fn, impl, None, temp)  # type: ignore[no-untyped-call]
    return _finish(out, lead)


def linear_token_stats(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    *,
    ignore_index: int = -100,
    chunk_size: int | None = None,
    softcap: float | None = None,
    impl: str = "auto",
    temperature: float = 1.0,
) -> TokenStats:
    r""":func:`token_stats` of ``hidden @ weight.T + bias`` without materialising the logits.

    Parameters
    ----------
    hidden : Tensor, shape ``(*, D)``
        Last hidden states, floating dtype.
    weight : Tensor, shape ``(C, D)``
        Output projection (the LM head), ``hidden``'s dtype and device.
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    bias : Tensor, shape ``(C,)``, optional
        Output bias, ``hidden``'s dtype and device.
    ignore_index : int, default -100
        As in :func:`token_stats`.
    chunk_size : int, optional
        Rows of logits alive at a time. Default: about 48 MiB of compute-dtype logits.
    softcap : float, optional
        ``s > 0``: the statistics of ``s·tanh(z / s)``, ``z = hidden @ weight.T + bias``,
        applied chunk by chunk (the capped logits are never materialised either).
    impl : {"auto", "torch", "triton"}, default "auto"
        As in :func:`token_stats`: on Triton, each chunk of logits (computed row-major,
        ``h Wᵀ``, by the same matmul in the inputs' dtype) goes through the Triton kernels.
    temperature : float, default 1.0
        As in :func:`token_stats`: the statistics of ``z' / T``, chunk by chunk.

    Returns
    -------
    TokenStats
        As :func:`token_stats`, each of shape ``(*)``: float32 for float16, bfloat16 and
        float32 inputs (float64 for float64); ``argmax`` int64, not differentiable.

    Raises
    ------
    TypeError
        Non-tensor arguments; ``hidden`` not floating, ``weight``/``bias`` of another dtype,
        ``target`` not integer; ``chunk_size`` not an integer; ``softcap`` not a real number.
    ValueError
        Shapes that do not match; tensors on different devices; ``chunk_size < 1``; ``softcap``
        not finite or not ``> 0``; on CPU, a target out of range; ``impl`` as in
        :func:`token_stats`.

    Notes
    -----
    With ``z = h Wᵀ + b`` and ``G = ∂L/∂z`` the closed form of :func:`token_stats` (computed
    chunk by chunk from the chunk's logits and the saved per-row ``lse`` and entropy; with
    ``softcap=s``, the statistics' closed form at ``z' = s·tanh(z / s)`` times
    ``1 − (z'/s)²``):

    .. math::
        \frac{\partial L}{\partial h} = G W, \qquad
        \frac{\partial L}{\partial W} = G^\top h, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_i G_i .

    The forward is one matmul per chunk and keeps four numbers per row; backward is three
    (recompute the chunk, ``d hidden``, ``d weight``): four matmuls against the materialised
    composition's three, the price of not keeping the logits (the ``d weight`` matmul needs
    ``G``, hence the chunk's logits, with the upstream gradients known only in backward). Each
    chunk is computed transposed, ``W hᵀ`` (C, R), the faster matmul on CPU. Memory held
    between forward and backward: the inputs and four (N,) statistics. During each pass: one
    chunk of logits, reused from chunk to chunk and turned into ``G`` in place, plus one or
    two tile-sized scratch buffers (4 MiB each in float32: the elementwise work goes tile by
    tile of about ``Tuning.token_block_elements`` elements, which stays in cache); backward adds the
    gradients, ``d weight`` and ``d bias`` written by the first chunk's matmul (no zeroing).
    bfloat16/float16 inputs: the chunk is in their dtype and backward adds a float32 copy of
    ``G`` (for ``d weight`` and ``d bias``, accumulated in float32). Under autocast,
    ``hidden``, ``weight`` and ``bias`` are first cast to the autocast dtype, as ``F.linear``
    would. Double backward materialises the logits once and
    differentiates the closed form; ``torch.func`` transforms use the plain composition.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch.tokens import linear_token_stats
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]], requires_grad=True)
    >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    >>> out = linear_token_stats(h, W, torch.tensor([0, 1, 2]), chunk_size=2)
    >>> out.logprob.detach(), out.argmax
    (tensor([-0.4076, -0.7586, -1.8620]), tensor([0, 1, 0]))
    >>> advantage, beta = torch.tensor([1.0, -0.5, 2.0]), 0.01
    >>> loss = -(advantage * out.logprob).mean() - beta * out.entropy.mean()
    >>> loss.backward()
    >>> W.grad.shape, h.grad.shape
    (torch.Size([3, 2]), torch.Size([3, 2]))
    """
    fn = "linear_token_stats"
    if _dtensor.any_dtensor(hidden, weight, bias):
        out = _dtensor.linear_token_stats(
            fn,
            hidden,
            weight,
            target,
            bias,
            ignore_index=ignore_index,
            chunk_size=chunk_size,
            softcap=softcap,
            impl=impl,
            temperature=temperature,
            local=linear_token_stats,
        )
        return TokenStats(*out)
    h = check_tensor(fn, "hidden", hidden, floating=True)
    if h.dim() == 0:
        fail(fn, "hidden", "have at least 1 dimension (features)", "shape ()")
    if autocast_on(h):
        h, weight, bias = autocast_projection(h, weight, bias)
    w, b = check_projection(fn, h, weight, bias)
    if b is not None and b.device != h.device:
        fail(fn, "bias", f"be on hidden's device {h.device}", f"device {b.device}")
    if w.shape[0] == 0:
        fail(fn, "weight", "have at least one class (C >= 1)", f"shape {tuple(w.shape)}")
    t = _check_target(fn, target, h, "hidden", "hidden's shape without the features")
    ignore = check_ignore_index(fn, ignore_index)
    chunk = check_chunk_size(fn, chunk_size) or 0
    impl = check_impl(fn, impl, h)
    cap = check_softcap(fn, softcap)
    temp = check_temperature(fn, temperature)
    lead = tuple(t.shape)
    # rows given, not -1: with no features (D = 0) the row count cannot be inferred
    h2 = h.reshape(t.numel(), h.shape[-1])
    t1 = t.reshape(-1).to(torch.int64)
    if transforms_active():
        return _finish(_reference(fn, h2, w, b, t1, ignore, cap, temp), lead)
    out = _TokenStats.apply(h2, w, b, t1, ignore, chunk, cap, fn, impl, None, temp)  # type: ignore[no-untyped-call]
    return _finish(out, lead)
