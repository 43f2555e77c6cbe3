"""Hugging Face ``transformers`` integration (optional extra:
``pip install crossentropy[transformers]``).

- :func:`patch`: a causal LM computes its training loss with
  :func:`crossentropy.torch.linear_cross_entropy` on its final hidden states and its output
  embedding, and never materialises the logits; without labels it is the stock model
  (``generate()`` unchanged). :func:`unpatch` restores it.
- :func:`causal_lm_loss`, :func:`make_causal_lm_loss`: a logits-level loss with the signature of
  transformers' ``ForCausalLMLoss``, for ``model.loss_function`` or ``LOSS_MAPPING`` where the
  model cannot be patched (the logits are then materialised by the model, as stock).

The patch is generic: it reads the model's own forward (its source, once per class) to find
what happens between the output layer and the loss, accepts what it can reproduce exactly
(``final_logit_softcapping``, ``logit_scale``, ``logits_scaling``, a MoE auxiliary loss added
with a coefficient) and refuses anything else with :class:`UnsupportedModelError`. At run time
the stock forward runs unchanged, except that in a call with labels the output layer hands its
input (the final hidden states) to the loss instead of computing the logits: every
model-specific argument (caches, router logits, ``logits_to_keep``, attention variants) keeps
the meaning that version of transformers gives it. The decoder is found with
``get_decoder()`` or ``base_model_prefix`` only to check that there is one: the model's own
forward calls it.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

try:
    import torch
    import transformers
    from torch import nn
    from transformers.loss.loss_utils import LOSS_MAPPING
except ImportError as exc:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(
        "crossentropy.transformers needs PyTorch and Hugging Face transformers: "
        "pip install 'crossentropy[transformers]'"
    ) from exc

from .torch import cross_entropy, linear_cross_entropy

__all__ = [
    "UnsupportedModelError",
    "causal_lm_loss",
    "is_patched",
    "make_causal_lm_loss",
    "patch",
    "unpatch",
]

#: Options :func:`patch` and :func:`make_causal_lm_loss` pass on to the loss.
OPTIONS = frozenset({"label_smoothing", "z_loss", "softcap", "class_weight", "chunk_size", "impl"})

_STATE = "_crossentropy_patch"
_SINK = "_crossentropy_sink"


class UnsupportedModelError(ValueError):
    """:func:`patch` cannot make this model's loss exact; the message names the reason."""


@dataclass(frozen=True)
class _Plan:
    """What a class's forward does between its output layer and its loss."""

    head: str  # attribute name of the output layer on the model
    softcap_attr: str | None  # config attribute of a tanh cap c·tanh(x/c), if any
    scale_attr: str | None  # model attribute the logits are multiplied by (Cohere)
    inverse_scale_attr: str | None  # config attribute the logits are divided by (Granite)
    aux_coef_attr: str | None  # model attribute of the MoE auxiliary loss coefficient


@dataclass
class _State:
    """Kept on the model (so ``copy.deepcopy`` copies it with the model)."""

    original: Any  # the instance's own ``forward`` before patching (a wrapper), or None
    options: dict[str, Any]
    plan: _Plan
    wrapper: Any = None  # the _InstanceForward patch() set as the instance's ``forward``


class _InstanceForward:
    """A ``forward`` set on one module instance: ``function(owner, *args, **kwargs)``, with a
    bound method's ``__func__``, ``__self__`` and signature (Trainer and ``generate()`` read
    it).

    A ``types.MethodType`` would do but for pickling: a whole-model ``torch.save`` pickles a
    bound method as ``getattr(owner, function.__name__)``, which the loaded model does not
    have (``'Linear' object has no attribute '_head_forward'``). This pickles as its
    ``source`` (a function importable by name) and its owner; ``wrap`` rebuilds the patched
    forward of a model class from that class's forward (:func:`_forward_for`)."""

    def __init__(self, source: Callable[..., Any], owner: Any, *, wrap: bool) -> None:
        self.source, self.owner, self.wrap = source, owner, wrap
        self.function = _forward_for(source) if wrap else source

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.function(self.owner, *args, **kwargs)

    @property
    def __func__(self) -> Callable[..., Any]:
        return self.function

    @property
    def __self__(self) -> Any:
        return self.owner

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(types.MethodType(self.function, self.owner))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_forward, (self.source, self.owner, self.wrap))


def _rebuild_forward(source: Callable[..., Any], owner: Any, wrap: bool) -> _InstanceForward:
    return _InstanceForward(source, owner, wrap=wrap)


# ---------------------------------------------------------------------------------------------
# Reading the forward
# ---------------------------------------------------------------------------------------------


def _self_attr(node: ast.AST) -> str | None:
    """``self.NAME`` -> ``NAME``; ``self.config.NAME`` -> ``config.NAME``."""
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "self":
            return node.attr
        inner = _self_attr(node.value)
        if inner is not None:
            return f"{inner}.{node.attr}"
    return None


def _reads(node: ast.AST, name: str) -> bool:
    return any(isinstance(n, ast.Name) and n.id == name for n in ast.walk(node))


def _assigns(node: ast.AST, name: str) -> bool:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
        targets = [node.target]
    return any(_reads(t, name) for t in targets)


def _statements(body: list[ast.stmt]) -> list[ast.AST]:
    """Simple statements in source order; an ``if``/``with`` contributes its test (as an
    expression) and its bodies. Loops and ``try`` stay whole (anything they do to the logits
    is then refused as unknown)."""
    out: list[ast.AST] = []
    for stmt in body:
        if isinstance(stmt, ast.If):
            out.append(stmt.test)
            out.extend(_statements(stmt.body))
            out.extend(_statements(stmt.orelse))
        elif isinstance(stmt, ast.With):
            out.extend(item.context_expr for item in stmt.items)
            out.extend(_statements(stmt.body))
        else:
            out.append(stmt)
    return out


def _is_call_to(node: ast.AST, attr: str) -> bool:
    return any(isinstance(n, ast.Call) and _self_attr(n.func) == attr for n in ast.walk(node))


def _logits_transform(stmt: ast.AST) -> tuple[str, str] | None:
    """A statement that changes the logits the way a known family does: (kind, attribute)."""
    if not (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1):
        return None
    target = stmt.targets[0]
    if not (isinstance(target, ast.Name) and target.id == "logits"):
        return None
    value = stmt.value
    # logits = torch.tanh(logits)
    if (
        isinstance(value, ast.Call)
        and ast.unparse(value.func) in ("torch.tanh", "nn.functional.tanh", "F.tanh")
        and len(value.args) == 1
        and ast.unparse(value.args[0]) == "logits"
    ):
        return ("tanh", "")
    if not isinstance(value, ast.BinOp) or not isinstance(value.op, (ast.Mult, ast.Div)):
        return None
    left = ast.unparse(value.left)
    if left not in ("logits", "logits.float()"):
        return None
    attr = _self_attr(value.right)
    if attr is None:
        return None
    op = "mul" if isinstance(value.op, ast.Mult) else "div"
    return (op, attr)


@functools.cache
def _plan(forward: Callable[..., Any], head: str) -> _Plan:
    """Read ``forward`` (a class's function) and say what its loss needs, or refuse."""
    name = getattr(forward, "__qualname__", repr(forward))
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(forward)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError) as exc:
        raise UnsupportedModelError(
            f"patch: unknown architecture: the source of {name} cannot be read ({exc}), so "
            "what it does to the logits cannot be checked"
        ) from exc
    func = tree.body[0]
    if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
        raise UnsupportedModelError(f"patch: unknown architecture: {name} is not a function")
    params = {a.arg for a in func.args.args + func.args.kwonlyargs}
    if "labels" not in params:
        raise UnsupportedModelError(
            f"patch: unknown architecture: {name} takes no `labels`, so it is not a causal LM "
            "forward with a training loss"
        )
    stmts = _statements(func.body)
    start = next(
        (
            i
            for i, s in enumerate(stmts)
            if isinstance(s, ast.Assign)
            and len(s.targets) == 1
            and isinstance(s.targets[0], ast.Name)
            and s.targets[0].id == "logits"
            and isinstance(s.value, ast.Call)
            and _self_attr(s.value.func) == head
        ),
        None,
    )
    if start is None:
        raise UnsupportedModelError(
            f"patch: unknown architecture: {name} does not compute `logits = self.{head}(...)` "
            "(its output embedding), so its loss cannot be computed from the hidden states"
        )
    ops: list[tuple[str, str]] = []
    loss_seen = False
    aux_coef: str | None = None
    for stmt in stmts[start + 1 :]:
        text = ast.unparse(stmt).splitlines()[0]
        if isinstance(stmt, ast.Return):
            continue
        if _is_call_to(stmt, "loss_function"):
            if not (isinstance(stmt, ast.Assign) and _assigns(stmt, "loss")) or loss_seen:
                raise UnsupportedModelError(
                    f"patch: unknown architecture: {name} calls its loss function in an unknown "
                    f"way ({text!r})"
                )
            loss_seen = True
            continue
        if _assigns(stmt, "loss") and not loss_seen and "loss = None" not in text:
            raise UnsupportedModelError(
                f"patch: unknown architecture: {name} computes its loss with its own function "
                f"({text!r}), not transformers' causal-LM loss"
            )
        if _reads(stmt, "logits"):
            transform = _logits_transform(stmt)
            if transform is None or loss_seen:
                raise UnsupportedModelError(
                    f"patch: unknown architecture: {name} does something to the logits that "
                    f"the patch cannot reproduce exactly: {text!r}"
                )
            ops.append(transform)
            continue
        if _assigns(stmt, "loss") and loss_seen:
            # loss += self.router_aux_loss_coef * aux_loss.to(loss.device)
            value = stmt.value if isinstance(stmt, ast.AugAssign) else None
            if (
                isinstance(stmt, ast.AugAssign)
                and isinstance(stmt.op, ast.Add)
                and isinstance(value, ast.BinOp)
                and isinstance(value.op, ast.Mult)
                and _self_attr(value.left) is not None
                and _reads(value.right, "aux_loss")
                and aux_coef is None
            ):
                aux_coef = _self_attr(value.left)
                continue
            raise UnsupportedModelError(
                f"patch: unknown architecture: {name} adds to its loss in a way the patch "
                f"cannot reproduce: {text!r}"
            )
    if not loss_seen:
        raise UnsupportedModelError(
            f"patch: unknown architecture: {name} does not compute its loss with "
            "`self.loss_function` (transformers' causal-LM loss)"
        )
    softcap_attr = scale_attr = inverse_scale_attr = None
    kinds = [kind for kind, _ in ops]
    if kinds == ["div", "tanh", "mul"] and ops[0][1] == ops[2][1]:
        softcap_attr = ops[0][1]
    elif kinds == ["mul"]:
        scale_attr = ops[0][1]
    elif kinds == ["div"]:
        inverse_scale_attr = ops[0][1]
    elif kinds:
        raise UnsupportedModelError(
            f"patch: unknown architecture: {name} transforms the logits in a sequence the patch "
            f"does not know ({kinds})"
        )
    return _Plan(head, softcap_attr, scale_attr, inverse_scale_attr, aux_coef)


def _get(model: nn.Module, attr: str) -> Any:
    """``config.NAME`` or ``NAME`` read on the model, as its forward reads ``self.<attr>``."""
    obj: Any = model
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


# ---------------------------------------------------------------------------------------------
# The checks on the model
# ---------------------------------------------------------------------------------------------


def _target(model: nn.Module) -> nn.Module:
    """The transformers model to patch: PEFT's wrapper hands its base model over."""
    getter = getattr(model, "get_base_model", None)
    if not isinstance(model, transformers.PreTrainedModel) and callable(getter):
        base = getter()
        if isinstance(base, nn.Module):
            return base
    return model


def _head_name(model: nn.Module) -> str:
    getter = getattr(model, "get_output_embeddings", None)
    head = getter() if callable(getter) else None
    if head is None:
        raise UnsupportedModelError(
            f"patch: {type(model).__name__} has no text LM head (get_output_embeddings() "
            "returns nothing): a base model, an encoder or a vision-language wrapper without one"
        )
    if hasattr(head, "base_layer") or type(head).__module__.startswith("peft"):
        raise UnsupportedModelError(
            f"patch: the output layer of {type(model).__name__} is wrapped by PEFT "
            f"({type(head).__name__}: LoRA or modules_to_save): its logits are not "
            "hidden @ weight.T + bias of one weight, so the fused loss would be wrong; leave "
            "the output layer out of the adapter's target_modules"
        )
    replaced = "forward" in vars(head) and not _ours(vars(head)["forward"])
    if type(head) is not nn.Linear or replaced:
        raise UnsupportedModelError(
            f"patch: the output layer of {type(model).__name__} is a {type(head).__name__}"
            f"{' with a replaced forward' if replaced else ''}, not a plain "
            "torch.nn.Linear (quantised, offloaded or adapted): its logits cannot be computed "
            "from its weight alone"
        )
    for name, child in model.named_children():
        if child is head:
            return name
    raise UnsupportedModelError(
        f"patch: unknown architecture: the output embedding of {type(model).__name__} is not "
        "one of its own attributes"
    )


def _check_decoder(model: nn.Module) -> None:
    getter = getattr(model, "get_decoder", None)
    decoder = None
    if callable(getter):
        try:
            decoder = getter()
        except (AttributeError, NotImplementedError):
            decoder = None
    if decoder is None:
        prefix = getattr(model, "base_model_prefix", "")
        decoder = getattr(model, prefix, None) if prefix else None
    if not isinstance(decoder, nn.Module) or decoder is model:
        raise UnsupportedModelError(
            f"patch: unknown architecture: {type(model).__name__} has no decoder "
            "(get_decoder() or its base_model_prefix attribute)"
        )


def _check_loss_function(model: nn.Module) -> None:
    stock = LOSS_MAPPING.get("ForCausalLM")
    current = getattr(model, "loss_function", None)
    if current is not stock and getattr(current, "__module__", None) != __name__:
        raise UnsupportedModelError(
            f"patch: {type(model).__name__}.loss_function is {current!r}, not transformers' "
            "ForCausalLMLoss: the patch computes that loss and would silently replace yours"
        )


def _check_options(fn: str, options: dict[str, Any]) -> None:
    unknown = sorted(set(options) - OPTIONS)
    if unknown:
        raise TypeError(
            f"{fn}: options must be among {sorted(OPTIONS)}, got {unknown} (the reduction is "
            "transformers': a mean, or the sum over num_items_in_batch)"
        )


# ---------------------------------------------------------------------------------------------
# The patched forward
# ---------------------------------------------------------------------------------------------


def _shifted(labels: torch.Tensor, ignore_index: int) -> torch.Tensor:
    # As ForCausalLMLoss: position t predicts token t + 1; the last position has no target.
    padded = nn.functional.pad(labels, (0, 1), value=ignore_index)
    return padded[..., 1:]


def _reduce(loss_sum_or_mean: torch.Tensor, num_items_in_batch: Any) -> torch.Tensor:
    if num_items_in_batch is None:
        return loss_sum_or_mean
    if torch.is_tensor(num_items_in_batch):
        num_items_in_batch = num_items_in_batch.to(loss_sum_or_mean.device)
    return loss_sum_or_mean / num_items_in_batch


def _as_float(loss: torch.Tensor) -> torch.Tensor:
    # Stock upcasts the logits to float32 before its loss; a half-precision loss would not match.
    return loss if loss.dtype in (torch.float32, torch.float64) else loss.float()


def _fused_loss(
    model: nn.Module,
    plan: _Plan,
    options: dict[str, Any],
    hidden: torch.Tensor,
    labels: torch.Tensor | None,
    shift_labels: torch.Tensor | None,
    num_items_in_batch: Any,
    ignore_index: int,
) -> torch.Tensor:
    head = getattr(model, plan.head)
    weight, bias = head.weight, head.bias
    if shift_labels is None:
        assert labels is not None  # the caller passes one of them
        shift_labels = _shifted(labels, ignore_index)
    if shift_labels.numel() != hidden.shape[:-1].numel():
        raise ValueError(
            "patch: labels must have one position per kept hidden state, got labels of shape "
            f"{tuple(shift_labels.shape)} for hidden states of shape {tuple(hidden.shape)} "
            "(with logits_to_keep, pass labels for the kept positions only, as the stock loss "
            "needs)"
        )
    scale = None
    if plan.scale_attr is not None:
        scale = _get(model, plan.scale_attr)
    elif plan.inverse_scale_attr is not None:
        scale = 1.0 / _get(model, plan.inverse_scale_attr)
    if scale is not None:
        # (h Wᵀ + b)·s = (s h) Wᵀ + s b
        hidden = hidden * scale
        bias = None if bias is None else bias * scale
    call_options = dict(options)
    if plan.softcap_attr is not None:
        cap = _get(model, plan.softcap_attr)
        if cap is not None:
            call_options["softcap"] = float(cap)
    target = shift_labels.reshape(-1).to(hidden.device)
    loss = linear_cross_entropy(
        hidden.reshape(-1, hidden.shape[-1]),
        weight,
        target,
        bias,
        ignore_index=ignore_index,
        reduction="mean" if num_items_in_batch is None else "sum",
        **call_options,
    )
    return _reduce(_as_float(loss), num_items_in_batch)


def _head_forward(self: nn.Linear, input: torch.Tensor) -> torch.Tensor:
    """The output layer's forward while the model is patched: ``nn.Linear``'s, except inside
    the patched forward with labels, where it hands its input (the final hidden states) to the
    loss and returns an empty ``(..., 0)`` tensor, so whatever the model's forward does to the
    logits it does to nothing. (Set once at patch time, not swapped per call: a compiled
    forward sees one module.)"""
    sink = getattr(self, _SINK, None)
    if sink is None:
        return nn.functional.linear(input, self.weight, self.bias)
    sink.append(input)
    return input.new_zeros((*input.shape[:-1], 0))


def _ours(forward: Any) -> bool:
    return getattr(forward, "__func__", None) is _head_forward


def _stock(model: nn.Module, state: _State) -> Callable[..., Any]:
    """The forward the patch wraps: the instance's own wrapper, or the class's forward."""
    if state.original is not None:
        return state.original  # type: ignore[no-any-return]
    return types.MethodType(type(model).forward, model)


def _make_forward(cls_forward: Callable[..., Any]) -> Callable[..., Any]:
    """The patched forward, a function to bind to the model (a bound method, so a deep copy of
    the model is bound to the copy). It carries the class forward's signature: Trainer and
    generate() read it."""
    signature = inspect.signature(cls_forward)
    positional = [
        p.name
        for p in signature.parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ][1:]  # without self
    labels_at = positional.index("labels") if "labels" in positional else len(positional)

    @functools.wraps(cls_forward)
    def forward(self: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state: _State = getattr(self, _STATE)
        original = _stock(self, state)
        has_labels = kwargs.get("labels") is not None or (
            len(args) > labels_at and args[labels_at] is not None
        )
        if not has_labels and kwargs.get("shift_labels") is None:
            return original(*args, **kwargs)  # the stock forward, as it was
        bound = signature.bind(self, *args, **kwargs)
        call: dict[str, Any] = {}
        for name, value in list(bound.arguments.items())[1:]:
            if signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                call.update(value)
            else:
                call[name] = value
        labels = call.pop("labels", None)
        shift_labels = call.pop("shift_labels", None)
        num_items_in_batch = call.pop("num_items_in_batch", None)
        ignore_index = call.pop("ignore_index", -100)
        return_dict = call.pop("return_dict", None)
        if return_dict is None:
            return_dict = getattr(self.config, "return_dict", True)
        head = getattr(self, state.plan.head)
        captured: list[torch.Tensor] = []
        setattr(head, _SINK, captured)  # the output layer hands its input over (_head_forward)
        try:
            out = original(**call, return_dict=True)
        finally:
            setattr(head, _SINK, None)
        if len(captured) != 1:
            raise UnsupportedModelError(
                f"patch: unknown architecture: {type(self).__name__}'s forward called its "
                f"output layer {len(captured)} times (once expected)"
            )
        loss = _fused_loss(
            self,
            state.plan,
            state.options,
            captured[0],
            labels,
            shift_labels,
            num_items_in_batch,
            ignore_index,
        )
        aux_loss = getattr(out, "aux_loss", None)
        if state.plan.aux_coef_attr is not None and aux_loss is not None:
            # As the stock forward: loss += coef · aux_loss, when it returns router logits.
            loss = loss + _get(self, state.plan.aux_coef_attr) * aux_loss.to(loss.device)
        fields = {key: value for key, value in out.items() if key not in ("loss", "logits")}
        result = type(out)(loss=loss, **fields)
        if return_dict:
            return result
        # the stock tuple's positions: (loss, logits, ...) with logits None (to_tuple() would
        # drop it and shift the cache into its place)
        return (loss, None, *(value for key, value in result.items() if key != "loss"))

    return forward


#: One patched forward per class forward (its signature is read once).
_forward_for = functools.cache(_make_forward)


# ---------------------------------------------------------------------------------------------
# Public functions
# ---------------------------------------------------------------------------------------------


def patch(model: Any, **options: Any) -> Any:
    """Make a Hugging Face causal LM compute its training loss without the logits.

    With ``labels`` (or ``shift_labels``) the patched forward returns the loss of
    :func:`crossentropy.torch.linear_cross_entropy` on the final hidden states and the output
    embedding's weight (and bias), as transformers' ``ForCausalLMLoss`` defines it: labels
    shifted by one, ``ignore_index`` (default ``-100``) left out, the mean over the kept
    tokens, or their sum divided by ``num_items_in_batch`` when it is given (gradient
    accumulation). The config's ``final_logit_softcapping`` (Gemma 2/3) becomes the loss's
    ``softcap``; ``logit_scale`` (Cohere) and ``logits_scaling`` (Granite) scale the hidden
    states; tied embeddings share one weight as in the stock model; a MoE model that returns
    router logits gets its auxiliary loss added with its coefficient, as its forward does.
    The output's ``logits`` is ``None`` (with ``return_dict=False``, the stock tuple's
    positions with ``None`` in the logits' place). Without labels the stock forward runs as it
    was (``generate()`` unchanged). The patched model deep-copies and pickles whole
    (``torch.save(model)``) as a patched model.

    Parameters
    ----------
    model : transformers.PreTrainedModel
        A causal LM (``...ForCausalLM``); a PEFT model is patched through its base model, as
        long as the output layer is not adapted.
    **options
        Passed on to :func:`~crossentropy.torch.linear_cross_entropy`: ``label_smoothing``,
        ``z_loss``, ``softcap`` (a model whose config has ``final_logit_softcapping`` takes it
        from there), ``class_weight``, ``chunk_size``, ``impl``.

    Returns
    -------
    The same ``model``, patched in place. Patching again replaces the options;
    :func:`unpatch` restores the stock forward.

    Raises
    ------
    UnsupportedModelError
        When the loss cannot be made exact: no text LM head, an output layer wrapped by PEFT
        (LoRA) or quantised, a forward that changes the logits or the loss in a way not listed
        above, a custom ``model.loss_function``.
    """
    _check_options("patch", options)
    target = _target(model)
    head = _head_name(target)
    _check_decoder(target)
    _check_loss_function(target)
    plan = _plan(type(target).forward, head)
    if plan.softcap_attr is not None and "softcap" in options:
        raise UnsupportedModelError(
            f"patch: {type(target).__name__} caps its logits with config."
            f"{plan.softcap_attr.removeprefix('config.')}; a softcap option would cap them twice"
        )
    state = getattr(target, _STATE, None)
    if state is not None:  # patched before: keep the stock forward, take the new options
        state.options, state.plan = dict(options), plan
        return model
    state = _State(vars(target).get("forward"), dict(options), plan)
    state.wrapper = _InstanceForward(type(target).forward, target, wrap=True)
    setattr(target, _STATE, state)
    target.forward = state.wrapper
    head_module = getattr(target, head)
    head_module.forward = _InstanceForward(_head_forward, head_module, wrap=False)
    setattr(head_module, _SINK, None)
    return model


def unpatch(model: Any) -> Any:
    """Restore the forward :func:`patch` replaced; a model that is not patched is returned
    unchanged. Refused (:class:`UnsupportedModelError`) when something wrapped the forward
    again after :func:`patch` (a trainer's own head, say): removing the patch would remove that
    too."""
    target = _target(model)
    state = getattr(target, _STATE, None)
    if state is None:
        return model
    current = vars(target).get("forward")
    if current != state.wrapper:
        raise UnsupportedModelError(
            f"unpatch: {type(target).__name__}.forward was replaced after patch() (now "
            f"{getattr(current, '__qualname__', current)!r}); undo that first"
        )
    if state.original is None:
        del target.forward
    else:
        target.forward = state.original
    head = getattr(target, state.plan.head)
    if _ours(vars(head).get("forward")):
        del head.forward
    vars(head).pop(_SINK, None)
    delattr(target, _STATE)
    return model


def is_patched(model: Any) -> bool:
    """Whether :func:`patch` is in force on ``model``."""
    return getattr(_target(model), _STATE, None) is not None


def causal_lm_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: Any = None,
    ignore_index: int = -100,
    shift_labels: torch.Tensor | None = None,
    **kwargs: Any,
) -> torch.Tensor:
    """transformers' ``ForCausalLMLoss`` computed by :func:`crossentropy.torch.cross_entropy`.

    Same signature and result: labels shifted by one (unless ``shift_labels`` is given), the
    mean over kept tokens, or the sum divided by ``num_items_in_batch``; other keyword arguments
    (the forward's) are ignored, as there. Register it where the model cannot be patched::

        model.loss_function = causal_lm_loss
        # or, for every model: transformers.loss.loss_utils.LOSS_MAPPING["ForCausalLM"] = ...

    :func:`make_causal_lm_loss` binds options (``label_smoothing``, ``z_loss``, ...).
    """
    return _logits_loss(
        {}, logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels
    )


def make_causal_lm_loss(**options: Any) -> Callable[..., torch.Tensor]:
    """:func:`causal_lm_loss` with ``options`` for :func:`crossentropy.torch.cross_entropy`
    (``label_smoothing``, ``z_loss``, ``softcap``, ``class_weight``, ``impl``)."""
    _check_options("make_causal_lm_loss", options)
    if "chunk_size" in options:
        raise TypeError("make_causal_lm_loss: chunk_size is an option of the patched (linear) loss")
    bound = dict(options)

    def loss(
        logits: torch.Tensor,
        labels: torch.Tensor,
        vocab_size: int,
        num_items_in_batch: Any = None,
        ignore_index: int = -100,
        shift_labels: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> torch.Tensor:
        return _logits_loss(
            bound, logits, labels, vocab_size, num_items_in_batch, ignore_index, shift_labels
        )

    loss.__doc__ = causal_lm_loss.__doc__
    return loss


def _logits_loss(
    options: dict[str, Any],
    logits: torch.Tensor,
    labels: torch.Tensor,
    vocab_size: int,
    num_items_in_batch: Any,
    ignore_index: int,
    shift_labels: torch.Tensor | None,
) -> torch.Tensor:
    logits = logits.float()  # as ForCausalLMLoss
    if shift_labels is None:
        shift_labels = _shifted(labels, ignore_index)
    options = dict(options)
    if "class_weight" in options:
        options["weight"] = options.pop("class_weight")
    loss = cross_entropy(
        logits.reshape(-1, vocab_size),
        shift_labels.reshape(-1).to(logits.device),
        ignore_index=ignore_index,
        reduction="mean" if num_items_in_batch is None else "sum",
        **options,
    )
    return _reduce(loss, num_items_in_batch)
