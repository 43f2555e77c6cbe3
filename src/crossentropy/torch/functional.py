r"""Fused softmax cross-entropy for PyTorch: ``cross_entropy`` and ``linear_cross_entropy``.

Layering: :mod:`._kernels` (blocked torch ops) → :mod:`._ops` (the kernels as custom ops, one
graph node each, with fake impls) → the ``autograd.Function`` classes here → the public
functions (validation once, at the boundary) → :mod:`.modules`.

How each mode is served, and why:

- **First backward** of ``"mean"``/``"sum"``: the forward already computed the gradient
  (``a − y``, block by block while the logits were in cache); backward hands that buffer out
  once, rescaled in place by the upstream gradient. No second logits-sized buffer.
- **A second backward through a retained graph** recomputes the gradient from the saved
  logits and per-row log-sum-exp instead of handing out the same buffer again, so what a
  caller did with an earlier gradient never changes a later one.
- **Backward with** ``create_graph=True`` (Hessians, gradient penalties, MAML) computes the
  closed-form gradient with differentiable torch ops (``softmax(x)·a − y``), so every higher
  derivative is autograd's own.
- **torch.func** transforms (``grad``, ``vmap``, ``jacrev``, ``jvp``, ...) and forward-mode
  AD, a probability ``target`` (or, with one, a class ``weight``) that requires grad, and small
  problems (at most ``2**20`` logits, ``Tuning.direct_max_elements``, where a fused kernel's
  fixed cost exceeds its saving) go to the composite reference ``torch.nn.functional.cross_entropy``
  itself: bit-for-bit the function we stand in for. A class ``weight`` that requires grad with
  index targets is refused, as ``F`` refuses it.
- **torch.compile / meta / FakeTensor**: the kernels are custom ops with fake impls, the
  public functions read nothing on the host, and the ``autograd.Function`` backward is
  functional under compilation, so ``fullgraph=True`` traces with no graph break.
- **Autocast**: ``F.cross_entropy`` is on autocast's float32 list; so are we — the loss comes
  back in float32 but the logits are *not* copied to float32 (the kernels accumulate in
  float32 block by block). ``linear_cross_entropy`` casts ``hidden``/``weight``/``bias`` to the
  autocast dtype first, as ``F.linear`` would, so its matmuls run there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .._validation import fail
from . import _dtensor, _rows
from . import _reference as R
from ._autograd import (
    _CrossEntropyIndex,
    _CrossEntropyInplace,
    _CrossEntropyProb,
    _LinearCrossEntropy,
)
from ._checks import (
    check_chunk_size,
    check_class_weight,
    check_impl,
    check_num_items,
    check_options,
    check_projection,
    check_sample_weight,
    check_softcap,
    check_tensor,
    check_z_loss,
    describe,
)
from ._modes import (
    autocast_dtype,
    autocast_on,
    autocast_projection,
    compiling,
    transforms_active,
)
from ._types import Options, compute_dtype, tuning

__all__ = ["cross_entropy", "linear_cross_entropy"]

_REDUCTIONS = ("mean", "sum", "none")


def _legacy_reduction(size_average: object, reduce: object, reduction: object) -> object:
    if size_average is None and reduce is None:
        return reduction
    from torch.nn import _reduction

    return _reduction.legacy_get_string(size_average, reduce)  # type: ignore[arg-type]


def _dense(x: Tensor) -> bool:
    """``x``'s elements fill a block of memory exactly once (some permutation of contiguous)."""
    expected = 1
    dims = sorted((st, sz) for sz, st in zip(x.shape, x.stride(), strict=True) if sz != 1)
    for stride, size in dims:
        if stride != expected:
            return False
        expected *= size
    return True


def _whole_storage_view(
    fn: str, x: Tensor
) -> tuple[Tensor, tuple[tuple[int, ...], tuple[int, ...], int] | None]:
    """For ``inplace_backward``: the tensor autograd must see as overwritten, and ``x``'s view
    geometry on it. A view (``logits.view(-1, V)``, a transpose) is rewritten through its base,
    which the gradient then fills completely; a view of *part* of a tensor (a slice) is refused:
    the rest of the base would hold stale values autograd could not tell from a gradient."""
    base = x._base
    if base is None:
        return x, None
    covers = (
        x.numel() == base.numel()
        and _dense(base)  # contiguous or a permutation of it (a transposed result)
        and x.storage_offset() == base.storage_offset()
        and _dense(x)
    )
    if not covers:
        fail(
            fn,
            "input",
            "be a whole tensor or a view of all of one (e.g. logits.view(-1, V)) with "
            "inplace_backward=True; a view of part of a tensor (a slice) cannot be overwritten "
            "safely: pass input.contiguous() or use inplace_backward=False",
            f"a view of {x.numel()} of its base's {base.numel()} elements",
            ValueError,
        )
    return base, (tuple(x.shape), tuple(x.stride()), int(x.storage_offset()))


# --------------------------------------------------------------------------- public


def cross_entropy(
    input: Tensor,
    target: Tensor,
    weight: Tensor | None = None,
    size_average: bool | None = None,
    ignore_index: int = -100,
    reduce: bool | None = None,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Tensor | None = None,
    inplace_backward: bool = False,
    num_items: float | Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    r"""Softmax cross-entropy of logits: a fused drop-in for ``torch.nn.functional.cross_entropy``.

    Same arguments (in the same positional order, including the deprecated ``size_average``
    and ``reduce``), results, dtypes and gradients as ``F.cross_entropy``, in every autograd
    mode: first and higher-order derivatives, ``torch.func``, ``torch.compile(fullgraph=True)``,
    meta tensors, autocast. For ``"mean"``/``"sum"`` the gradient is computed during the
    forward, block by block while the logits are in cache, so the only logits-sized buffer is
    the gradient itself (``F`` needs three).

    Parameters
    ----------
    input : Tensor, shape ``(C,)``, ``(N, C)`` or ``(N, C, d1, ..., dK)``
        Unnormalised logits, any floating dtype (float16/bfloat16 accumulate in float32).
    target : Tensor
        Class indices (any integer dtype), shape ``()``, ``(N,)`` or ``(N, d1, ..., dK)``, each
        in ``[0, C)`` or equal to ``ignore_index``; or class probabilities of the input's
        shape (floating dtype).
    weight : Tensor, shape ``(C,)``, optional
        A rescaling weight per class, of the input's dtype (any floating dtype under
        autocast).
    size_average, reduce : bool, optional
        Deprecated, as in ``F.cross_entropy``: when either is given they set ``reduction``
        (with PyTorch's deprecation warning).
    ignore_index : int
        Target value that contributes neither loss nor gradient (index targets only; must stay
        -100 with probability targets, as in ``F``).
    reduction : {"mean", "sum", "none"}
        ``"mean"`` divides by the summed weights of the non-ignored targets (index targets)
        or by the number of rows (probability targets), as PyTorch does.
    label_smoothing : float in [0, 1]
        Mix ``ε`` of the uniform distribution into the targets (a float, NumPy scalar or 0-d
        tensor).
    z_loss : float >= 0
        Not in ``F``: adds ``z_loss · lse(x')²`` per kept position (the PaLM z-loss;
        Liger-Kernel's and flash-attn's ``lse_square_scale``), weighted by ``w_y`` like the
        position's share of ``"mean"``'s denominator (1 for probability targets).
    softcap : float in ``[2**-126, 2**127]``, optional
        Not in ``F``: the logits become ``x' = softcap · tanh(x / softcap)`` before anything
        else (Gemma 2's final-logit softcapping), computed block by block: the capped logits
        never exist in memory as a whole. The gradient carries ``1 − (x'/softcap)²``. Caps
        outside float32's normal range are refused (``x / softcap`` would overflow there).
    sample_weight : Tensor, optional
        Not in ``F``: one weight per target position (the target's shape for class indices,
        the input's without the class dimension for probabilities; any floating dtype, on
        the input's device), e.g. an RL advantage. It multiplies each position's loss and
        does **not** change ``"mean"``'s denominator: ones reproduce the unweighted loss; use
        ``ignore_index`` to drop positions, or ``reduction="sum"`` and divide by
        ``sample_weight.sum()`` for a mean weighted by them. Ignored positions give 0 whatever
        their sample weight; a non-finite sample weight gives a non-finite loss, as a
        non-finite logit does. A ``sample_weight`` that requires grad is differentiated
        (through the composite path). See :doc:`/guide/options` for how the three combine.
    inplace_backward : bool
        Opt-in (not in ``F.cross_entropy``): write the gradient into ``input``'s own buffer
        during the forward, saving the gradient-sized allocation. ``input`` then holds the
        gradient; autograd sees the write (version counter), so using ``input`` after the
        loss, or a graph that saved it, raises instead of computing wrong gradients; ``input``
        must not be a leaf. Only for class-index targets and ``"mean"``/``"sum"``, and only
        when a gradient is needed (otherwise ignored; also ignored under ``torch.compile`` and
        ``torch.func``, where the result is the same without the saving). A view of a whole
        tensor (``logits.view(-1, V)``, a transpose) is supported; a view of part of one (a
        slice) and double backward are refused with a clear error.
    num_items : float or 0-d Tensor, optional
        Not in ``F``: the loss becomes the *sum* over the kept positions divided by
        ``num_items`` (with the default ``reduction="mean"`` only), the normaliser of gradient
        accumulation and data parallelism: Hugging Face's ``num_items_in_batch``, torchtitan's
        ``global_valid_tokens``, counted over every micro-batch or rank. Equal to
        ``cross_entropy(..., reduction="sum") / num_items`` (divided in float32, then cast to
        the loss's dtype); a tensor's value is not read (no host sync) and a zero count gives
        inf or NaN, as the division would. Class and sample weights weight the sum.
    impl : {"auto", "torch", "triton"}
        The fused path's kernels. ``"auto"``: Triton on CUDA tensors of float16, bfloat16 or
        float32 when Triton is installed; on CPU one C++ kernel that ``torch.compile``
        generates on first use (index targets; see :doc:`/guide/torch`, "CPU kernels"),
        falling back to torch ops where it cannot be built; torch ops otherwise. ``"torch"``:
        always the torch-op kernels. ``"triton"``: always Triton (CUDA tensors, or CPU tensors
        with ``TRITON_INTERPRET=1``).

    Returns
    -------
    Tensor
        0-d (``"mean"``, ``"sum"``) or of the target's row shape (``"none"``). Dtype as
        ``F.cross_entropy``'s: the input's (index targets), the promotion of input and
        target dtypes (probability targets), float32 for half-precision input under autocast.

    Notes
    -----
    With ``p = softmax(x)``, per row and index target ``y`` (PyTorch's exact definition,
    including its weighting of the smoothing term):

    .. math::
        \ell = (1-\varepsilon)\, w_y (\mathrm{lse}(x) - x_y)
               + \frac{\varepsilon}{C} \sum_c w_c (\mathrm{lse}(x) - x_c),
        \qquad
        \frac{\partial \ell}{\partial x_c} = a\, p_c - (1-\varepsilon) w_y [c = y]
               - \frac{\varepsilon}{C} w_c,

    with ``a = (1 − ε) w_y + (ε/C) Σ_c w_c``: the article's ``a − y``. The true-class entry
    is computed as ``(ε/C)(Σw − w_y) − a Σ_{c≠y} p_c``, which does not cancel when
    ``p_y → 1``. ``"mean"`` divides by ``Σ_i w_{y_i}`` over non-ignored rows, smoothing term
    included (PyTorch's quirk); if every target is ignored (or the batch is empty) the mean is
    NaN (0/0) and the gradient is 0, as in PyTorch. For probability targets
    ``y'`` = ``(1 − ε) y + ε/C``, ``ℓ = −Σ_c w_c y'_c log p_c`` and
    ``∂ℓ/∂x_c = (Σ_k w_k y'_k) p_c − w_c y'_c``. With ``z_loss`` the coefficient of ``p_c``
    gains ``2 z w_y lse`` (``2 z lse`` for probability targets); with ``softcap`` every formula
    holds for ``x'`` and the gradient is multiplied by ``∂x'/∂x = 1 − (x'/c)²``; a sample
    weight multiplies its row's loss and gradient.

    What is checked, where and when: argument types, dtypes, shapes and option values at the
    call, from metadata only (no host read, so also under ``torch.compile`` and on meta
    tensors). The target *values* (class range) are checked inside the kernel: on CPU with a
    clear ``ValueError`` before anything is computed (eager and compiled alike); on other
    devices by a device-side assertion, as ``F.cross_entropy`` does — no host sync.

    Which path runs: small problems (at most ``2**20`` logits), ``torch.func``
    transforms and forward-mode AD, and a probability ``target`` (or, with one, a ``weight``)
    that requires grad go to ``F.cross_entropy`` itself (the fused kernel cannot win there,
    or the gradient it would need is not one it computes); everything else runs the fused
    kernels. The fused first
    backward hands out the forward's gradient once (rescaled in place); a second backward
    through a retained graph recomputes it; ``create_graph=True`` uses differentiable ops.
    Float16 gradients are stored pre-multiplied by a power of two so that a ``GradScaler``'s
    scale does not meet already-flushed zeros; the rescaling by the upstream gradient is exact
    when that is a power of two (a ``GradScaler`` scale) and adds one float16 rounding (at most
    1 ulp) otherwise.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import cross_entropy
    >>> x = torch.tensor([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], requires_grad=True)
    >>> loss = cross_entropy(x, torch.tensor([0, 2]))
    >>> loss
    tensor(0.1681, grad_fn=<NllLossBackward0>)
    >>> loss.backward()
    >>> x.grad
    tensor([[-0.1072,  0.0876,  0.0196],
            [ 0.0226,  0.0226, -0.0453]])
    """
    if num_items is not None:
        n = check_num_items(
            "cross_entropy", num_items, _legacy_reduction(size_average, reduce, reduction)
        )
        total = cross_entropy(
            input,
            target,
            weight,
            None,
            ignore_index,
            None,
            "sum",
            label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            sample_weight=sample_weight,
            inplace_backward=inplace_backward,
            impl=impl,
        )
        return _rows.over_items(total, n)
    if (
        type(input) is Tensor
        and type(target) is Tensor
        and weight is None
        and size_average is None
        and reduce is None
        and not inplace_backward
        and impl == "auto"
        and type(ignore_index) is int
        and type(label_smoothing) is float
        and 0.0 <= label_smoothing <= 1.0
        and reduction in _REDUCTIONS
        and input.numel() <= tuning().direct_max_elements
        and (target.dtype == torch.int64 or target.is_floating_point())
        and softcap is None
        and sample_weight is None
        and type(z_loss) in (float, int)
        and not z_loss
    ):
        # A small problem with plain arguments is F.cross_entropy itself (the ~µs of our checks
        # would be a fifth of its time); anything F refuses is re-checked below, for our error.
        try:
            return F.cross_entropy(
                input,
                target,
                None,
                ignore_index=ignore_index,
                reduction=reduction,
                label_smoothing=label_smoothing,
            )
        except (RuntimeError, IndexError, ValueError, TypeError):
            pass
    fn = "cross_entropy"
    if _dtensor.any_dtensor(input, target, weight, sample_weight):
        return _dtensor.cross_entropy(  # type: ignore[no-any-return]
            fn,
            input,
            target,
            weight,
            ignore_index,
            _legacy_reduction(size_average, reduce, reduction),  # type: ignore[arg-type]
            label_smoothing,
            z_loss,
            softcap,
            sample_weight,
            impl,
            cross_entropy,
            bool(inplace_backward),
        )
    x = check_tensor(fn, "input", input, floating=True)
    if x.dim() == 0:
        fail(fn, "input", "have at least 1 dimension (classes)", "shape ()")
    t = check_tensor(fn, "target", target)
    reduction = _legacy_reduction(size_average, reduce, reduction)  # type: ignore[assignment]
    red, eps, ignore = check_options(fn, reduction, label_smoothing, ignore_index)
    if not isinstance(inplace_backward, bool):
        fail(fn, "inplace_backward", "be a bool", describe(inplace_backward), TypeError)
    impl = check_impl(fn, impl, x)
    z = check_z_loss(fn, z_loss)
    cap = check_softcap(fn, softcap)
    autocast = autocast_on(x)
    num_classes = x.shape[1] if x.dim() >= 2 else x.shape[0]
    w = check_class_weight(fn, "weight", weight, num_classes, device=x.device)
    if w is not None and not autocast and w.dtype != x.dtype:
        fail(fn, "weight", f"have the input's dtype {x.dtype}", f"dtype {w.dtype}", TypeError)
    prob = t.is_floating_point()
    if prob:
        if inplace_backward:
            fail(
                fn,
                "inplace_backward",
                "be False with reduction='none' or probability targets",
                f"True with reduction={red!r} and target dtype {t.dtype}",
            )
        if t.shape != x.shape:
            fail(
                fn,
                "target",
                f"have the input's shape {tuple(x.shape)} (probabilities)",
                f"shape {tuple(t.shape)}",
            )
        if ignore != -100:
            fail(fn, "ignore_index", "be -100 (unused) with probability targets", ignore)
        if t.device != x.device:
            fail(fn, "target", f"be on the input's device {x.device}", f"device {t.device}")
    else:
        if t.dtype == torch.bool or t.is_complex():
            fail(
                fn,
                "target",
                "have an integer (class indices) or floating dtype",
                f"dtype {t.dtype}",
                TypeError,
            )
        rows = tuple(x.shape[:1]) + tuple(x.shape[2:]) if x.dim() >= 2 else ()
        if tuple(t.shape) != rows:
            fail(
                fn,
                "target",
                f"have shape {rows} (the input's without the class dimension)",
                f"shape {tuple(t.shape)}",
            )
        if t.device != x.device:
            fail(fn, "target", f"be on the input's device {x.device}", f"device {t.device}")
        if inplace_backward and red == "none":
            fail(
                fn,
                "inplace_backward",
                "be False with reduction='none' or probability targets",
                f"True with reduction={red!r} and target dtype {t.dtype}",
            )
    positions = tuple(x.shape[:1]) + tuple(x.shape[2:]) if x.dim() >= 2 else ()
    sw = check_sample_weight(fn, sample_weight, positions, x.device)
    grad_on = torch.is_grad_enabled()
    if grad_on and not prob and w is not None and w.requires_grad:
        fail(
            fn,
            "weight",
            "not require grad with class-index targets (F.cross_entropy does not "
            "differentiate it either; pass weight.detach(), or probability targets)",
            "a weight that requires grad",
        )
    if prob:
        xd, td = x.dtype, t.dtype
        if autocast:
            xd, td = autocast_dtype(xd), autocast_dtype(td)
        out_dtype = torch.promote_types(xd, td)
    else:
        out_dtype = autocast_dtype(x.dtype) if autocast else x.dtype
        if t.dtype != torch.int64:  # F.cross_entropy (the composite path) takes int64 or uint8
            t = t.to(torch.int64)
    opts = Options(ignore, red, eps, z, cap, impl, 0, out_dtype)
    wants_inplace = inplace_backward and grad_on and x.requires_grad and not compiling()
    if (
        (impl == "auto" and not wants_inplace and x.numel() <= tuning().direct_max_elements)
        or transforms_active()
        or (grad_on and w is not None and w.requires_grad)
        or (grad_on and prob and t.requires_grad)
        or (grad_on and sw is not None and sw.requires_grad)
    ):
        return R.call(
            fn,
            # under autocast a class weight of any floating dtype (float64 too: autocast leaves
            # it alone, and F would refuse the mix) is taken in the loss's dtype, as the fused
            # kernels take it
            lambda: R.composite(
                x, t, w if w is None or not autocast else w.to(out_dtype), sw, opts
            ),
            t,
            num_classes,
            ignore,
        )
    if prob:
        out: Tensor = _CrossEntropyProb.apply(x, t, w, sw, opts)  # type: ignore[no-untyped-call]
        return out
    if wants_inplace:
        if (x if x._base is None else x._base).is_leaf:
            fail(
                fn,
                "input",
                "not be a leaf that requires grad with inplace_backward=True (it is "
                "overwritten by its gradient; pass the output of an operation)",
                describe(x),
                RuntimeError,
            )
        base, geometry = _whole_storage_view(fn, x)
        loss: Tensor
        loss, _ = _CrossEntropyInplace.apply(base, t, w, sw, opts, geometry)  # type: ignore[no-untyped-call]
        return loss
    fused = red != "none" and grad_on and x.requires_grad
    out = _CrossEntropyIndex.apply(x, t, w, sw, opts, fused)  # type: ignore[no-untyped-call]
    return out


def linear_cross_entropy(
    hidden: Tensor,
    weight: Tensor,
    target: Tensor,
    bias: Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    *,
    class_weight: Tensor | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Tensor | None = None,
    chunk_size: int | None = None,
    num_items: float | Tensor | None = None,
    impl: str = "auto",
) -> Tensor:
    r"""``F.cross_entropy(hidden @ weight.T + bias, target, ...)`` without the full logits.

    Parameters
    ----------
    hidden : Tensor, shape ``(*, D)``
        Last hidden states, floating dtype.
    weight : Tensor, shape ``(C, D)``
        Output projection (same dtype as ``hidden``, any floating dtype under autocast).
    target : Tensor, shape ``(*)``, integer
        Class indices in ``[0, C)`` or ``ignore_index``.
    bias : Tensor, shape ``(C,)``, optional
        Output bias.
    ignore_index, reduction, label_smoothing
        As in :func:`cross_entropy`.
    class_weight : Tensor, shape ``(C,)``, optional
        Per-class rescaling weight (``F.cross_entropy``'s ``weight``).
    z_loss, softcap : float, optional
        As in :func:`cross_entropy`: ``z_loss · lse²`` per kept row, and logits
        ``softcap · tanh(z / softcap)``, applied chunk by chunk.
    sample_weight : Tensor, shape ``(*)``, optional
        One weight per target position, as in :func:`cross_entropy` (``"mean"``'s denominator
        unchanged).
    chunk_size : int, optional
        Rows of logits alive at a time. Default: about 48 MiB of logits when gradients are
        computed, 128 MiB for a forward that needs none (no gradient buffer beside it).
    num_items : float or 0-d Tensor, optional
        The sum over the kept positions divided by ``num_items``, as in
        :func:`cross_entropy` (``reduction="mean"`` only).

    Returns
    -------
    Tensor
        0-d, or shape ``(*)`` for ``"none"``; dtype of ``hidden`` (float32 under autocast).

    Notes
    -----
    With ``z = h Wᵀ + b`` and ``g = ∂L/∂z`` from :func:`cross_entropy` (computed chunk by chunk
    from the chunk's logits and its per-row log-sum-exp):

    .. math::
        \frac{\partial L}{\partial h} = g W, \qquad
        \frac{\partial L}{\partial W} = g^\top h, \qquad
        \frac{\partial L}{\partial b} = \textstyle\sum_i g_i .

    For ``"mean"``/``"sum"`` all three are accumulated during the forward (one matmul per
    chunk for the logits, two for the gradients: the three-matmul floor), and backward only
    rescales them; for ``"none"`` the forward keeps the per-row log-sum-exp and backward
    recomputes each chunk with the per-row upstream gradient. Low-precision inputs run their
    matmuls in their dtype (as ``F.linear`` does) and accumulate ``d weight``/``d bias`` and all
    softmax statistics in float32. Under autocast, ``hidden``, ``weight`` and ``bias`` are
    first cast to the autocast dtype, exactly as ``F.linear`` would (so the matmuls use it),
    and the loss is float32. Peak memory: the gradients plus one chunk of logits (a forward
    without gradients: one chunk).

    Double backward (``create_graph=True``) materialises the logits once and differentiates
    the closed form. ``torch.func`` transforms and tiny problems go to the composite
    ``F.cross_entropy(F.linear(hidden, weight, bias), ...)``.

    Examples
    --------
    >>> import torch
    >>> from crossentropy.torch import linear_cross_entropy
    >>> h = torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    >>> W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 1.0]], requires_grad=True)
    >>> linear_cross_entropy(h, W, torch.tensor([0, 1, 2]), chunk_size=2)
    tensor(1.0094, grad_fn=<NllLossBackward0>)
    """
    fn = "linear_cross_entropy"
    if num_items is not None:
        n = check_num_items(fn, num_items, reduction)
        total = linear_cross_entropy(
            hidden,
            weight,
            target,
            bias,
            ignore_index,
            "sum",
            label_smoothing,
            class_weight=class_weight,
            z_loss=z_loss,
            softcap=softcap,
            sample_weight=sample_weight,
            chunk_size=chunk_size,
            impl=impl,
        )
        return _rows.over_items(total, n)
    if _dtensor.any_dtensor(hidden, weight, bias):
        return _dtensor.linear_cross_entropy(  # type: ignore[no-any-return]
            fn,
            hidden,
            weight,
            target,
            bias,
            class_weight=class_weight,
            ignore_index=ignore_index,
            reduction=reduction,
            label_smoothing=label_smoothing,
            z_loss=z_loss,
            softcap=softcap,
            sample_weight=sample_weight,
            chunk_size=chunk_size,
            impl=impl,
            local=linear_cross_entropy,
        )
    h = check_tensor(fn, "hidden", hidden, floating=True)
    if h.dim() == 0:
        fail(fn, "hidden", "have at least 1 dimension (features)", "shape ()")
    autocast = autocast_on(h)
    if autocast:
        h, weight, bias = autocast_projection(h, weight, bias)
    wt, b = check_projection(fn, h, weight, bias)
    num_classes = wt.shape[0]
    t = check_tensor(fn, "target", target, floating=False)
    if t.dtype != torch.int64:  # any integer dtype; F.cross_entropy takes int64 or uint8
        t = t.to(torch.int64)
    if tuple(t.shape) != tuple(h.shape[:-1]):
        fail(
            fn,
            "target",
            f"have shape {tuple(h.shape[:-1])} (hidden's without features)",
            f"shape {tuple(t.shape)}",
        )
    if t.device != h.device:
        fail(fn, "target", f"be on hidden's device {h.device}", f"device {t.device}")
    red, eps, ignore = check_options(fn, reduction, label_smoothing, ignore_index)
    cw = check_class_weight(fn, "class_weight", class_weight, num_classes, device=h.device)
    chunk_size = check_chunk_size(fn, chunk_size)
    sw = check_sample_weight(fn, sample_weight, tuple(t.shape), h.device, device_of="hidden's")
    z, cap = check_z_loss(fn, z_loss), check_softcap(fn, softcap)
    if cw is not None and not autocast and cw.dtype != h.dtype:
        fail(fn, "class_weight", f"have hidden's dtype {h.dtype}", f"dtype {cw.dtype}", TypeError)
    impl = check_impl(fn, impl, h)
    grad_on = torch.is_grad_enabled()
    if grad_on and cw is not None and cw.requires_grad:
        fail(
            fn,
            "class_weight",
            "not require grad (F.cross_entropy does not differentiate class weights of "
            "class-index targets either; pass class_weight.detach())",
            "a class_weight that requires grad",
        )
    rows = math.prod(h.shape[:-1])
    small = impl == "auto" and rows * num_classes <= tuning().linear_direct_max_elements
    out_dtype = autocast_dtype(h.dtype) if autocast else h.dtype
    opts = Options(ignore, red, eps, z, cap, impl, chunk_size or 0, out_dtype)
    sw1 = None if sw is None else sw.reshape(-1)
    if small or transforms_active() or (grad_on and sw is not None and sw.requires_grad):
        w_ref = cw if cw is None else cw.to(out_dtype if autocast else h.dtype)
        # Half-precision logits go to F.cross_entropy in float32, as the fused path
        # accumulates: F's CPU mean of float16 losses overflows once their sum passes 65504.
        cdt = compute_dtype(out_dtype)
        ref = R.call(
            fn,
            lambda: R.composite(
                F.linear(h, wt, b).reshape(rows, num_classes).to(cdt),
                t.reshape(-1),
                w_ref if w_ref is None else w_ref.to(cdt),
                sw1,
                opts,
            ),
            t,
            num_classes,
            ignore,
        )
        return ref.reshape(t.shape) if red == "none" else ref
    lead = tuple(h.shape[:-1])
    h2 = h.reshape(rows, h.shape[-1])  # (not -1: with 0 features the row count is ambiguous)
    t1 = t.reshape(-1)
    needs = (
        grad_on and h.requires_grad,
        grad_on and wt.requires_grad,
        grad_on and b is not None and b.requires_grad,
    )
    out: Tensor = _LinearCrossEntropy.apply(h2, wt, b, t1, cw, sw1, opts, needs)  # type: ignore[no-untyped-call]
    return out.reshape(lead) if red == "none" else out
