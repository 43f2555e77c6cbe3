"""crossentropy.transformers.patch on tiny randomly initialised Hugging Face causal LMs (built
from configs, no download): loss and every parameter's gradient equal the stock model's, with
padding labels, num_items_in_batch and shift_labels; logits None with labels; generate()
unchanged; unpatch restores the stock forward; gradient accumulation equals one big batch; the
refusals name their reason. The logits-level loss equals transformers' ForCausalLMLoss.

Models are float64. The stock loss casts the logits to float32
(``logits.float()`` in ForCausalLMLoss), so the stock side carries float32 rounding and the
comparison uses float32-level tolerances (``STOCK``); the patched side is float64 throughout.
"""

from __future__ import annotations

import copy
import functools
import inspect
import re
import subprocess
import sys
from typing import Any

import pytest

from conftest import tol

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
cx = pytest.importorskip("crossentropy.transformers")

import torch.nn.functional as F  # noqa: E402
from transformers.loss.loss_utils import ForCausalLMLoss  # noqa: E402

# Stock's logits are float32 (see the module docstring); losses here are O(1), gradients O(1e-2).
STOCK = {"rtol": 2e-5, "atol": 2e-7}
VOCAB, SEQ = 257, 12

COMMON = {
    "vocab_size": VOCAB,
    "hidden_size": 32,
    "intermediate_size": 48,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 64,
    "pad_token_id": 0,
    "bos_token_id": 1,
    "eos_token_id": 2,
}

#: family -> (config class, its settings beyond COMMON). Each stands for what it exercises:
#: Gemma 2 caps its logits (final_logit_softcapping) and ties its embeddings, Qwen3 is tied
#: here too, Qwen2 has attention biases, Mixtral is a MoE that returns router logits and adds
#: its load-balancing loss, Cohere multiplies its logits (logit_scale), Granite divides them
#: (logits_scaling).
FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "llama": ("LlamaConfig", {}),
    "mistral": ("MistralConfig", {"sliding_window": None}),
    "qwen2": ("Qwen2Config", {}),
    "qwen3-tied": ("Qwen3Config", {"tie_word_embeddings": True, "head_dim": 8}),
    "gemma2-softcap": (
        "Gemma2Config",
        {"head_dim": 8, "final_logit_softcapping": 3.0, "query_pre_attn_scalar": 8},
    ),
    "mixtral-moe": (
        "MixtralConfig",
        {
            "num_local_experts": 4,
            "num_experts_per_tok": 2,
            "output_router_logits": True,
            "router_aux_loss_coef": 0.05,
            "sliding_window": None,
        },
    ),
    "cohere-scale": ("CohereConfig", {"logit_scale": 0.5, "tie_word_embeddings": False}),
    "granite-scaling": ("GraniteConfig", {"logits_scaling": 4.0, "tie_word_embeddings": False}),
}


def build(family: str, seed: int = 0) -> Any:
    name, extra = FAMILIES[family]
    config = getattr(transformers, name)(**COMMON, **extra)
    config._attn_implementation = "eager"
    if hasattr(config, "_experts_implementation"):
        config._experts_implementation = "eager"  # grouped_mm takes no float64
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config).double()
    if family == "gemma2-softcap":
        assert model.config.final_logit_softcapping == 3.0
    if family in ("qwen3-tied", "gemma2-softcap"):
        assert model.lm_head.weight is model.get_input_embeddings().weight
    return model


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def stock(family: str) -> Any:
    return build(family)


@pytest.fixture
def patched(stock: Any) -> Any:
    model = copy.deepcopy(stock)
    return cx.patch(model)


def batch(seed: int = 1, rows: int = 3) -> dict[str, torch.Tensor]:
    """Right-padded rows of different lengths: labels -100 and attention 0 on the padding."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (rows, SEQ), generator=g)
    mask = torch.ones(rows, SEQ, dtype=torch.long)
    for r in range(rows):
        pad = (2 * r) % (SEQ - 3)
        if pad:
            ids[r, SEQ - pad :] = 0
            mask[r, SEQ - pad :] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, :3] = -100  # a prompt that is not trained on
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def loss_and_grads(model: Any, **inputs: Any) -> tuple[Any, torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, out.loss.detach(), grads


def assert_same_grads(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(
            got[name], want[name], **STOCK, msg=lambda m, n=name: f"{n}: {m}"
        )


def shifted(labels: torch.Tensor) -> torch.Tensor:
    return F.pad(labels, (0, 1), value=-100)[:, 1:]


CASES = [
    "padding",
    "num_items_in_batch",
    "shift_labels",
    "num_items_and_shift_labels",
    "ignore_index",
]


@pytest.mark.parametrize("case", CASES)
def test_loss_and_every_gradient_equal_stock(stock: Any, patched: Any, case: str) -> None:
    inputs: dict[str, Any] = batch()
    if case == "ignore_index":
        inputs["labels"] = inputs["labels"].masked_fill(inputs["labels"] == -100, -1)
        inputs["ignore_index"] = -1
    if case.startswith("num_items"):
        inputs["num_items_in_batch"] = torch.tensor(37)  # e.g. the tokens of a larger batch
    if "shift_labels" in case:
        inputs["shift_labels"] = shifted(inputs["labels"]).contiguous()
        # shift_labels take precedence: labels of another shape would break a shift
        inputs["labels"] = inputs["labels"].roll(3, dims=1)
    want_out, want, want_grads = loss_and_grads(stock, **inputs)
    got_out, got, got_grads = loss_and_grads(patched, **inputs)
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, want.double(), **STOCK)
    assert_same_grads(got_grads, want_grads)
    assert got_out.logits is None
    assert want_out.logits is not None
    if "mixtral" in type(stock).__name__.lower():
        # the router aux loss is part of both, and reported alike
        assert got_out.aux_loss is not None
        torch.testing.assert_close(got_out.aux_loss, want_out.aux_loss)


def test_loss_includes_the_moe_aux_loss_as_stock_does() -> None:
    model = cx.patch(build("mixtral-moe"))
    inputs = batch()
    with_aux = model(**inputs)
    without = model(**inputs, output_router_logits=False)
    assert without.aux_loss is None
    coef = model.router_aux_loss_coef
    assert coef == 0.05
    torch.testing.assert_close(with_aux.loss, without.loss + coef * with_aux.aux_loss)


def test_positional_labels_and_return_dict_false(stock: Any, patched: Any) -> None:
    inputs = batch()
    want = stock(**inputs, return_dict=False)
    got = patched(**inputs, return_dict=False)
    assert isinstance(got, tuple)
    torch.testing.assert_close(got[0], want[0].double(), **STOCK)
    # the stock tuple's positions, with None where the logits were
    assert len(got) == len(want) and got[1] is None
    assert [type(v) for v in got[2:]] == [type(v) for v in want[2:]]
    # labels passed by position, wherever this version's forward has them
    names = list(inspect.signature(stock.forward).parameters)
    args = [inputs.get(name) for name in names[: names.index("labels") + 1]]
    torch.testing.assert_close(patched(*args).loss, stock(*args).loss.double(), **STOCK)


def test_without_labels_the_forward_and_generate_are_stock(stock: Any, patched: Any) -> None:
    inputs = batch()
    del inputs["labels"]
    want, got = stock(**inputs), patched(**inputs)
    assert got.loss is None
    torch.testing.assert_close(got.logits, want.logits, rtol=0, atol=0)
    prompt = inputs["input_ids"][:2, :5]
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0}
    try:
        want_tokens = stock.generate(prompt, **kwargs)
    except Exception as exc:  # e.g. Mixtral's router loss under generate in transformers 4.57
        with pytest.raises(type(exc), match=re.escape(str(exc))):
            patched.generate(prompt, **kwargs)
    else:
        torch.testing.assert_close(patched.generate(prompt, **kwargs), want_tokens)


def test_unpatch_restores_the_stock_forward(stock: Any, patched: Any) -> None:
    assert cx.is_patched(patched)
    assert "forward" in vars(patched)
    assert cx.unpatch(patched) is patched
    assert not cx.is_patched(patched)
    assert "forward" not in vars(patched)
    assert "forward" not in vars(patched.lm_head)
    inputs = batch()
    out = patched(**inputs)
    assert out.logits is not None
    torch.testing.assert_close(out.loss, stock(**inputs).loss, rtol=0, atol=0)
    assert cx.unpatch(patched) is patched  # unpatching an unpatched model changes nothing


def test_a_deep_copy_of_a_patched_model_computes_with_its_own_weights(patched: Any) -> None:
    # (TRL's reference models, EMA copies: the copy's forward must not run the original)
    inputs = batch()
    twin = copy.deepcopy(patched)
    assert cx.is_patched(twin)
    with torch.no_grad():
        twin.lm_head.weight.mul_(2.0)
    twin_loss = twin(**inputs).loss
    assert not torch.allclose(twin_loss, patched(**inputs).loss)
    twin_loss.backward()
    assert twin.lm_head.weight.grad is not None and patched.lm_head.weight.grad is None
    cx.unpatch(twin)
    torch.testing.assert_close(twin(**inputs).loss.double(), twin_loss, **STOCK)


def test_gradient_accumulation_equals_one_big_batch(stock: Any, patched: Any) -> None:
    whole = batch(seed=2, rows=4)
    count = (shifted(whole["labels"]) != -100).sum()
    halves = [{k: v[i : i + 2] for k, v in whole.items()} for i in (0, 2)]

    def accumulated(model: Any) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        for half in halves:
            model(**half, num_items_in_batch=count).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    got = accumulated(patched)
    assert_same_grads(got, accumulated(stock))
    if "Mixtral" not in type(stock).__name__:
        # (a MoE's aux loss is a mean per micro-batch, in the stock model too). Cohere's layer
        # norm computes in float32, so the batch's shape moves its rounding: 1e-9, not 1e-15.
        _, _, one_batch = loss_and_grads(patched, **whole)
        for name, grad in one_batch.items():
            torch.testing.assert_close(got[name], grad, rtol=1e-6, atol=1e-9)


def test_logits_to_keep_scores_the_kept_positions(stock: Any, patched: Any) -> None:
    inputs = batch()
    keep = 5
    inputs["labels"] = inputs["labels"][:, -keep:]
    want_out, want, want_grads = loss_and_grads(stock, **inputs, logits_to_keep=keep)
    got_out, got, got_grads = loss_and_grads(patched, **inputs, logits_to_keep=keep)
    assert want_out.logits.shape[1] == keep
    assert got_out.logits is None
    torch.testing.assert_close(got, want.double(), **STOCK)
    assert_same_grads(got_grads, want_grads)
    with pytest.raises(ValueError, match="one position per kept hidden state"):
        patched(**batch(), logits_to_keep=keep)


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def stock_logits_and_targets(model: Any, inputs: dict[str, Any]) -> tuple[Any, Any]:
    out = model(**{k: v for k, v in inputs.items() if k != "labels"})
    return out.logits.reshape(-1, VOCAB), shifted(inputs["labels"]).reshape(-1)


def test_compiled_under_bf16_autocast() -> None:
    stock = build("llama").float()
    model = cx.patch(copy.deepcopy(stock))
    compiled = torch.compile(model, backend="aot_eager")
    inputs = batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = compiled(**inputs)
        want = stock(**inputs)
    assert got.logits is None and got.loss.dtype == torch.float32
    torch.testing.assert_close(got.loss, want.loss, **tol(torch.bfloat16))
    got.loss.backward()
    want.loss.backward()
    for (name, p), q in zip(model.named_parameters(), stock.parameters(), strict=True):
        # bf16 matmuls: compare each gradient as a whole, relative to its size
        err = (p.grad - q.grad).norm() / q.grad.norm()
        assert err < 2e-2, (name, err.item())


def test_label_smoothing_and_z_loss_pass_through() -> None:
    model = build("llama")
    inputs = batch()
    logits, target = stock_logits_and_targets(model, inputs)
    kept = target != -100
    lse = torch.logsumexp(logits[kept], dim=-1)
    ce = F.cross_entropy(logits, target, label_smoothing=0.1)
    want = ce + 1e-2 * (lse**2).mean()
    patched = cx.patch(copy.deepcopy(model), label_smoothing=0.1, z_loss=1e-2)
    torch.testing.assert_close(patched(**inputs).loss, want, rtol=1e-10, atol=1e-12)


def test_patching_twice_replaces_the_options_and_wraps_once() -> None:
    model = build("llama")
    inputs = batch()
    plain = cx.patch(copy.deepcopy(model))(**inputs).loss
    cx.patch(model, label_smoothing=0.2)
    wrapper = vars(model)["forward"]
    assert cx.patch(model) is model
    assert vars(model)["forward"] is wrapper  # not a wrapper of a wrapper
    torch.testing.assert_close(model(**inputs).loss, plain, rtol=0, atol=0)
    cx.unpatch(model)
    assert "forward" not in vars(model)


def test_softcap_option_is_the_tanh_cap_of_the_config() -> None:
    # Gemma 2's c·tanh(x/c) is the library's softcap: the same loss as stock (above), and
    # an explicit softcap on top would cap twice, so it is refused.
    model = build("gemma2-softcap")
    logits, target = stock_logits_and_targets(model, batch())
    model.config.final_logit_softcapping = None
    raw, _ = stock_logits_and_targets(model, batch())
    torch.testing.assert_close(logits, 3.0 * torch.tanh(raw / 3.0))
    model.config.final_logit_softcapping = 3.0
    with pytest.raises(cx.UnsupportedModelError, match="cap them twice"):
        cx.patch(model, softcap=3.0)
    # without a config cap the option applies as on a plain Llama
    llama = build("llama")
    inputs = batch()
    logits, target = stock_logits_and_targets(llama, inputs)
    want = F.cross_entropy(2.0 * torch.tanh(logits / 2.0), target)
    got = cx.patch(llama, softcap=2.0)(**inputs).loss
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_unknown_option_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"patch: options must be among .*got \['reduction'\]"):
        cx.patch(build("llama"), reduction="sum")


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


def test_refuses_a_model_without_a_text_lm_head() -> None:
    config = transformers.LlamaConfig(**COMMON)
    with pytest.raises(cx.UnsupportedModelError, match="has no text LM head"):
        cx.patch(transformers.LlamaModel(config))


class LoraLinear(torch.nn.Module):
    """The shape of a PEFT LoRA layer: base_layer plus low-rank A, B."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base_layer = base
        self.lora_A = torch.nn.Linear(base.in_features, 2, bias=False, dtype=base.weight.dtype)
        self.lora_B = torch.nn.Linear(2, base.out_features, bias=False, dtype=base.weight.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base_layer(x) + self.lora_B(self.lora_A(x))


def test_refuses_a_lora_wrapped_output_layer() -> None:
    model = build("llama")
    model.lm_head = LoraLinear(model.lm_head)
    with pytest.raises(cx.UnsupportedModelError, match="wrapped by PEFT"):
        cx.patch(model)


def test_refuses_an_output_layer_that_is_not_a_plain_linear() -> None:
    model = build("llama")
    model.lm_head.forward = lambda x: torch.nn.functional.linear(x, 2 * model.lm_head.weight)
    with pytest.raises(cx.UnsupportedModelError, match="with a replaced forward"):
        cx.patch(model)


class DoubledLlama(transformers.LlamaForCausalLM):
    """An architecture the patch does not know: it changes the logits after the head."""

    def forward(self, input_ids=None, labels=None, **kwargs):  # type: ignore[no-untyped-def]
        hidden = self.model(input_ids=input_ids, **kwargs).last_hidden_state
        logits = self.lm_head(hidden)
        logits = logits.clamp(-5, 5)
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, self.vocab_size)
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


class OwnLossLlama(transformers.LlamaForCausalLM):
    def forward(self, input_ids=None, labels=None, **kwargs):  # type: ignore[no-untyped-def]
        logits = self.lm_head(self.model(input_ids=input_ids).last_hidden_state)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))
        return transformers.modeling_outputs.CausalLMOutputWithPast(loss=loss, logits=logits)


@pytest.mark.parametrize(
    ("cls", "reason"),
    [
        (DoubledLlama, r"cannot reproduce exactly: 'logits = logits.clamp\(-5, 5\)'"),
        (OwnLossLlama, "computes its loss with its own function"),
    ],
)
def test_refuses_an_unknown_architecture(cls: type, reason: str) -> None:
    model = cls(transformers.LlamaConfig(**COMMON))
    with pytest.raises(cx.UnsupportedModelError, match=reason):
        cx.patch(model)


def test_unpatch_refuses_when_the_forward_was_wrapped_again() -> None:
    model = cx.patch(build("llama"))
    inner = model.forward
    model.forward = functools.wraps(inner)(lambda *a, **k: inner(*a, **k))  # a trainer's wrapper
    with pytest.raises(cx.UnsupportedModelError, match="was replaced after patch"):
        cx.unpatch(model)
    model.forward = inner
    cx.unpatch(model)
    assert not cx.is_patched(model)


def test_refuses_a_custom_loss_function() -> None:
    model = build("llama")
    model.loss_function = lambda logits, labels, vocab_size, **kw: logits.sum()
    with pytest.raises(cx.UnsupportedModelError, match="not transformers' ForCausalLMLoss"):
        cx.patch(model)
    model.loss_function = cx.causal_lm_loss  # ours computes the same loss: accepted
    assert cx.is_patched(cx.patch(model))


def test_refuses_an_encoder_masked_lm() -> None:
    config = transformers.BertConfig(
        vocab_size=VOCAB, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    )  # fmt: skip
    with pytest.raises(cx.UnsupportedModelError):
        cx.patch(transformers.BertForMaskedLM(config))


def test_import_without_transformers_names_the_extra() -> None:
    code = (
        "import sys; sys.modules['transformers'] = None\n"
        "try:\n    import crossentropy.transformers\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert "pip install 'crossentropy[transformers]'" in out


# ---------------------------------------------------------------------------------------------
# The logits-level loss
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_causal_lm_loss_equals_for_causal_lm_loss(case: str) -> None:
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(3, SEQ, VOCAB, generator=g, dtype=torch.float32, requires_grad=True)
    labels = batch()["labels"]
    kwargs: dict[str, Any] = {}
    if case == "ignore_index":
        labels = labels.masked_fill(labels == -100, -1)
        kwargs["ignore_index"] = -1
    if case.startswith("num_items"):
        kwargs["num_items_in_batch"] = torch.tensor(41)
    if "shift_labels" in case:
        kwargs["shift_labels"] = shifted(labels).contiguous()
    want = ForCausalLMLoss(logits, labels, VOCAB, **kwargs, output_attentions=False)
    (want_grad,) = torch.autograd.grad(want, logits)
    got = cx.causal_lm_loss(logits, labels, VOCAB, **kwargs, output_attentions=False)
    (got_grad,) = torch.autograd.grad(got, logits)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(got_grad, want_grad)


def test_causal_lm_loss_as_the_model_loss_function(monkeypatch: pytest.MonkeyPatch) -> None:
    stock = build("qwen2")
    inputs = batch()
    want = stock(**inputs).loss
    model = copy.deepcopy(stock)
    model.loss_function = cx.make_causal_lm_loss(label_smoothing=0.0)
    torch.testing.assert_close(model(**inputs).loss, want, rtol=1e-6, atol=1e-7)
    smoothed = cx.make_causal_lm_loss(label_smoothing=0.1)
    model.loss_function = smoothed
    logits, target = stock_logits_and_targets(stock, inputs)
    expected = F.cross_entropy(logits.float(), target, label_smoothing=0.1)
    torch.testing.assert_close(model(**inputs).loss, expected)
    # registered for every model, through transformers' own table
    mapping = transformers.loss.loss_utils.LOSS_MAPPING
    monkeypatch.setitem(mapping, "ForCausalLM", smoothed)
    fresh = copy.deepcopy(stock)
    torch.testing.assert_close(fresh(**inputs).loss, expected)
    with pytest.raises(TypeError, match="make_causal_lm_loss: options must be among"):
        cx.make_causal_lm_loss(temperature=2.0)


# ---------------------------------------------------------------------------------------------
# PEFT
# ---------------------------------------------------------------------------------------------


def test_a_peft_model_is_patched_through_its_base_model() -> None:
    peft = pytest.importorskip("peft")
    config = peft.LoraConfig(
        r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0, init_lora_weights=False
    )
    stock = peft.get_peft_model(build("llama"), config)
    model = copy.deepcopy(stock)
    assert cx.patch(model) is model
    assert cx.is_patched(model) and cx.is_patched(model.get_base_model())
    inputs = batch()
    want_out, want, want_grads = loss_and_grads(stock, **inputs)
    got_out, got, got_grads = loss_and_grads(model, **inputs)
    assert got_out.logits is None and want_out.logits is not None
    assert (
        {n for n in got_grads if "lora_" in n} == {n for n in want_grads if "lora_" in n} != set()
    )
    torch.testing.assert_close(got, want.double(), **STOCK)
    assert_same_grads(got_grads, want_grads)
    cx.unpatch(model)
    assert not cx.is_patched(model)


@pytest.mark.parametrize(
    "settings",
    [
        {"target_modules": ["q_proj", "lm_head"]},
        {"target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
    ],
    ids=["lora-on-lm_head", "modules_to_save"],
)
def test_refuses_a_peft_adapted_output_layer(settings: dict[str, Any]) -> None:
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(build("llama"), peft.LoraConfig(r=4, **settings))
    with pytest.raises(cx.UnsupportedModelError, match="wrapped by PEFT"):
        cx.patch(model)
    assert not cx.is_patched(model)
