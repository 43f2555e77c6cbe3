"""Hostile review of the language-model training integrations (docs/guide/training.rst)."""

from __future__ import annotations

import copy
import io
import math
import sys
from pathlib import Path

import pytest

pytest.importorskip("transformers")

import torch
import torch.nn.functional as F
import transformers
from transformers.loss.loss_utils import ForCausalLMLoss

from crossentropy.torch import (
    cross_entropy,
    linear_cross_entropy,
    linear_token_stats,
    token_stats,
)
from crossentropy.transformers import (
    UnsupportedModelError,
    causal_lm_loss,
    is_patched,
    make_causal_lm_loss,
    patch,
    unpatch,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import rl_grpo

V = 97
SMALL = dict(
    vocab_size=V,
    hidden_size=16,
    intermediate_size=32,
    num_hidden_layers=1,
    num_attention_heads=2,
    num_key_value_heads=1,
)


def _make(family: str, **extra):
    torch.manual_seed(0)
    kw = dict(SMALL)
    if family == "llama":
        cfg, cls = transformers.LlamaConfig, transformers.LlamaForCausalLM
    elif family == "qwen2":
        cfg, cls = transformers.Qwen2Config, transformers.Qwen2ForCausalLM
    elif family == "mistral":
        cfg, cls = transformers.MistralConfig, transformers.MistralForCausalLM
    elif family == "qwen3_tied":
        cfg, cls = transformers.Qwen3Config, transformers.Qwen3ForCausalLM
        kw.update(head_dim=8, tie_word_embeddings=True)
    elif family == "gemma2":
        cfg, cls = transformers.Gemma2Config, transformers.Gemma2ForCausalLM
        kw.update(head_dim=8, final_logit_softcapping=2.0, initializer_range=0.5)
    elif family == "cohere":
        cfg, cls = transformers.CohereConfig, transformers.CohereForCausalLM
        kw.update(logit_scale=0.37, tie_word_embeddings=True)
    elif family == "granite":
        cfg, cls = transformers.GraniteConfig, transformers.GraniteForCausalLM
        kw.update(logits_scaling=3.0)
    elif family == "mixtral":
        cfg, cls = transformers.MixtralConfig, transformers.MixtralForCausalLM
        kw.update(
            num_local_experts=4,
            num_experts_per_tok=2,
            output_router_logits=True,
            router_aux_loss_coef=0.3,
        )
    elif family == "qwen2_moe":
        cfg, cls = transformers.Qwen2MoeConfig, transformers.Qwen2MoeForCausalLM
        kw.update(
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=16,
            output_router_logits=True,
            router_aux_loss_coef=0.3,
        )
    else:  # pragma: no cover
        raise AssertionError(family)
    kw.update(extra)
    config = cfg(**kw)
    config._attn_implementation = "eager"
    model = cls(config)
    with torch.no_grad():  # a random, untied-looking bias-free head with some spread
        model.get_output_embeddings().weight.mul_(3.0)
    return model.float().train()


def _batch(b=2, s=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (b, s), generator=g)
    labels = ids.clone()
    labels[0, :2] = -100
    return ids, labels


def _loss_and_grads(model, **kwargs):
    model.zero_grad(set_to_none=True)
    out = model(**kwargs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def _compare(model, tol=1e-5, **kwargs):
    ref, ref_g = _loss_and_grads(model, **kwargs)
    patch(model)
    try:
        got, got_g = _loss_and_grads(model, **kwargs)
    finally:
        unpatch(model)
    assert got.logits is None
    torch.testing.assert_close(got.loss, ref.loss, rtol=tol, atol=tol)
    assert set(got_g) == set(ref_g)
    for n in ref_g:
        torch.testing.assert_close(got_g[n], ref_g[n], rtol=tol, atol=tol, msg=n)
    return ref, got


FAMILIES = [
    "llama",
    "qwen2",
    "mistral",
    "qwen3_tied",
    "gemma2",
    "cohere",
    "granite",
    "mixtral",
    "qwen2_moe",
]


# ---------------------------------------------------------------------------------------------
# patch(): loss and every gradient against the stock forward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_patch_matches_stock_loss_and_grads(family):
    model = _make(family)
    ids, labels = _batch()
    ref, got = _compare(model, input_ids=ids, labels=labels)
    if family in ("mixtral", "qwen2_moe"):
        assert ref.aux_loss is not None
        torch.testing.assert_close(got.aux_loss, ref.aux_loss)


@pytest.mark.parametrize("family", ["llama", "gemma2", "cohere", "mixtral"])
@pytest.mark.parametrize("kind", ["int", "tensor"])
def test_patch_num_items_in_batch(family, kind):
    model = _make(family)
    ids, labels = _batch()
    n = 23 if kind == "int" else torch.tensor(23)
    _compare(model, input_ids=ids, labels=labels, num_items_in_batch=n)


def test_patch_shift_labels_with_labels():
    model = _make("llama")
    ids, labels = _batch()
    shift = torch.randint(0, V, labels.shape)
    shift[1, 3] = -100
    _compare(model, input_ids=ids, labels=labels, shift_labels=shift)


def test_patch_shift_labels_alone_matches_loss_of_those_labels():
    model = _make("llama")
    ids, labels = _batch()
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:]
    ref = model(input_ids=ids, labels=labels).loss
    patch(model)
    got = model(input_ids=ids, shift_labels=shift).loss
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)


def test_patch_ignore_index_kwarg():
    model = _make("llama")
    ids, labels = _batch()
    labels[labels == -100] = 5
    _compare(model, input_ids=ids, labels=labels, ignore_index=5)


def test_patch_labels_all_ignored_matches_stock():
    model = _make("llama")
    ids, _ = _batch()
    labels = torch.full_like(ids, -100)
    ref = model(input_ids=ids, labels=labels).loss
    patch(model)
    got = model(input_ids=ids, labels=labels).loss
    # stock: mean over zero tokens is NaN; the patch must not invent a different number
    assert torch.isnan(ref)
    assert torch.isnan(got) or torch.equal(got, ref)


def test_patch_labels_all_ignored_num_items_is_zero_with_zero_grads():
    model = _make("llama")
    ids, _ = _batch()
    labels = torch.full_like(ids, -100)
    _compare(model, input_ids=ids, labels=labels, num_items_in_batch=4)


def test_patch_batch_of_one_and_length_one():
    model = _make("qwen2")
    ids, labels = _batch(b=1, s=5)
    _compare(model, input_ids=ids, labels=labels)
    ids1 = ids[:, :1]
    # sequence length 1: no target after the shift, stock mean is NaN; with a count it is 0
    _compare(model, input_ids=ids1, labels=ids1.clone(), num_items_in_batch=3)


def test_patch_padding_attention_mask():
    model = _make("mistral")
    ids, labels = _batch(s=8)
    mask = torch.ones_like(ids)
    mask[1, :3] = 0  # left padding
    labels[1, :3] = -100
    _compare(model, input_ids=ids, labels=labels, attention_mask=mask)


def test_patch_positional_labels():
    model = _make("llama")
    ids, labels = _batch()
    ref = model(ids, None, None, None, None, labels).loss
    patch(model)
    out = model(ids, None, None, None, None, labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref, rtol=1e-5, atol=1e-6)


def test_patch_logits_only_none_with_labels_and_generate_unchanged():
    model = _make("llama").eval()
    ids, labels = _batch()
    stock_logits = model(input_ids=ids).logits
    gen_ref = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    patch(model)
    out = model(input_ids=ids)
    assert out.logits is not None and out.loss is None
    torch.testing.assert_close(out.logits, stock_logits)
    gen = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(gen, gen_ref)
    assert model(input_ids=ids, labels=labels).logits is None


def test_patch_return_dict_false_tuple_layout_matches_stock():
    model = _make("llama")
    ids, labels = _batch()
    stock = model(input_ids=ids, labels=labels, return_dict=False, use_cache=True)
    patch(model)
    got = model(input_ids=ids, labels=labels, return_dict=False, use_cache=True)
    # stock is (loss, logits, past_key_values); index 1 must not silently become the cache
    assert len(got) == len(stock)
    assert type(got[1]) is type(stock[1]) or got[1] is None


def test_patch_twice_unpatch_twice():
    model = _make("llama")
    ids, labels = _batch()
    ref = model(input_ids=ids, labels=labels).loss
    stock_forward = model.forward
    patch(model, label_smoothing=0.3)
    patch(model)  # replaces the options
    assert is_patched(model)
    torch.testing.assert_close(model(input_ids=ids, labels=labels).loss, ref)
    unpatch(model)
    unpatch(model)
    assert not is_patched(model)
    assert "forward" not in vars(model)
    assert "forward" not in vars(model.lm_head)
    assert model.forward == stock_forward
    out = model(input_ids=ids, labels=labels)
    assert out.logits is not None
    torch.testing.assert_close(out.loss, ref)


def test_patch_deepcopy_and_state_dict_roundtrip():
    model = _make("llama")
    ids, labels = _batch()
    ref = model(input_ids=ids, labels=labels).loss
    patch(model)
    twin = copy.deepcopy(model)
    assert is_patched(twin)
    with torch.no_grad():
        model.lm_head.weight.zero_()  # the copy must not read the original's weight
    out = twin(input_ids=ids, labels=labels)
    assert out.logits is None
    torch.testing.assert_close(out.loss, ref)
    buf = io.BytesIO()
    torch.save(twin.state_dict(), buf)
    buf.seek(0)
    fresh = _make("llama")
    with torch.no_grad():
        fresh.lm_head.weight.zero_()
    patch(fresh)
    fresh.load_state_dict(torch.load(buf))
    torch.testing.assert_close(fresh(input_ids=ids, labels=labels).loss, ref)


def test_patch_whole_model_torch_save_roundtrip():
    model = _make("llama")
    ids, labels = _batch()
    patch(model)
    ref = model(input_ids=ids, labels=labels).loss
    buf = io.BytesIO()
    torch.save(model, buf)
    buf.seek(0)
    back = torch.load(buf, weights_only=False)
    torch.testing.assert_close(back(input_ids=ids, labels=labels).loss, ref)


@pytest.mark.parametrize("family", ["llama", "gemma2", "cohere"])
def test_patch_options_match_manual(family):
    model = _make(family)
    ids, labels = _batch()
    ls, zl = 0.1, 1e-3
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    z = logits.reshape(-1, V)
    keep = shift != -100
    ce = F.cross_entropy(z, shift, label_smoothing=ls, reduction="none")[keep]
    lse = z.logsumexp(-1)[keep]
    manual = (ce + zl * lse**2).mean()
    patch(model, label_smoothing=ls, z_loss=zl)
    got = model(input_ids=ids, labels=labels).loss
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-5)


def test_patch_gemma2_softcap_option_refused():
    model = _make("gemma2")
    with pytest.raises(UnsupportedModelError, match="softcap"):
        patch(model, softcap=5.0)


def test_patch_unknown_option_refused():
    with pytest.raises(TypeError, match="reduction"):
        patch(_make("llama"), reduction="sum")


def test_patch_lora_on_lm_head_refused():
    peft = pytest.importorskip("peft")
    model = _make("llama")
    cfg = peft.LoraConfig(r=2, target_modules=["lm_head", "q_proj"])
    wrapped = peft.get_peft_model(model, cfg)
    with pytest.raises(UnsupportedModelError, match="PEFT"):
        patch(wrapped)


def test_patch_modules_to_save_lm_head_refused():
    peft = pytest.importorskip("peft")
    model = _make("llama")
    cfg = peft.LoraConfig(r=2, target_modules=["q_proj"], modules_to_save=["lm_head"])
    wrapped = peft.get_peft_model(model, cfg)
    with pytest.raises(UnsupportedModelError, match=r"PEFT|modules_to_save"):
        patch(wrapped)


def test_patch_lora_elsewhere_matches_stock_grads():
    peft = pytest.importorskip("peft")
    model = _make("llama")
    cfg = peft.LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    wrapped = peft.get_peft_model(model, cfg)
    ids, labels = _batch()
    _compare(wrapped, input_ids=ids, labels=labels)


def test_patch_base_model_refused():
    torch.manual_seed(0)
    base = transformers.LlamaModel(transformers.LlamaConfig(**SMALL))
    with pytest.raises(UnsupportedModelError, match=r"LM head|get_output_embeddings"):
        patch(base)


def test_patch_custom_loss_function_refused():
    model = _make("llama")
    model.loss_function = lambda *a, **k: torch.tensor(0.0)
    with pytest.raises(UnsupportedModelError, match="loss_function"):
        patch(model)


def test_patch_bf16_model_close_to_stock():
    model = _make("llama").to(torch.bfloat16)
    ids, labels = _batch()
    ref = model(input_ids=ids, labels=labels).loss
    patch(model)
    got = model(input_ids=ids, labels=labels).loss
    assert got.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)


def test_patch_autocast_close_to_stock():
    model = _make("llama")
    ids, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = model(input_ids=ids, labels=labels).loss
    patch(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = model(input_ids=ids, labels=labels).loss
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=2e-2, atol=2e-2)


def test_patch_torch_compile_forward_eager_backend():
    model = _make("llama")
    ids, labels = _batch()
    ref = model(input_ids=ids, labels=labels).loss
    patch(model)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="aot_eager")
    got = compiled(input_ids=ids, labels=labels)
    assert got.logits is None
    torch.testing.assert_close(got.loss, ref, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------
# The logits-level loss against transformers' ForCausalLMLoss
# ---------------------------------------------------------------------------------------------


def _logits_case(seed=0, b=3, s=6):
    g = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, s, V, generator=g) * 3).requires_grad_()
    labels = torch.randint(0, V, (b, s), generator=g)
    labels[0, :3] = -100
    return logits, labels


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"num_items_in_batch": 11},
        {"num_items_in_batch": torch.tensor(11)},
        {"ignore_index": 7},
        {"shift_labels": "random"},
        {"shift_labels": "random", "num_items_in_batch": torch.tensor(5.0)},
    ],
    ids=["mean", "n-int", "n-tensor", "ignore7", "shift", "shift-n"],
)
def test_causal_lm_loss_matches_ForCausalLMLoss(kwargs):
    logits, labels = _logits_case()
    kwargs = dict(kwargs)
    if kwargs.get("shift_labels") == "random":
        shift = torch.randint(0, V, labels.shape, generator=torch.Generator().manual_seed(3))
        shift[2, 1] = -100
        kwargs["shift_labels"] = shift
    if kwargs.get("ignore_index") == 7:
        labels[labels == -100] = 7
    ref = ForCausalLMLoss(logits, labels, V, **kwargs)
    (g_ref,) = torch.autograd.grad(ref, logits)
    got = causal_lm_loss(logits, labels, V, **kwargs)
    (g_got,) = torch.autograd.grad(got, logits)
    assert got.dtype == ref.dtype
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-6, atol=1e-7)


def test_causal_lm_loss_bf16_logits_upcast_like_stock():
    logits, labels = _logits_case()
    lb = logits.detach().bfloat16().requires_grad_()
    ref = ForCausalLMLoss(lb, labels, V)
    got = causal_lm_loss(lb, labels, V)
    assert got.dtype == ref.dtype == torch.float32
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_make_causal_lm_loss_label_smoothing_matches_torch():
    logits, labels = _logits_case()
    shift = F.pad(labels, (0, 1), value=-100)[..., 1:].reshape(-1)
    ref = F.cross_entropy(logits.reshape(-1, V), shift, label_smoothing=0.2)
    got = make_causal_lm_loss(label_smoothing=0.2)(logits, labels, V)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


def test_causal_lm_loss_as_model_loss_function_matches_stock():
    model = _make("qwen2")
    ids, labels = _batch()
    ref, ref_g = _loss_and_grads(model, input_ids=ids, labels=labels, num_items_in_batch=9)
    model.loss_function = causal_lm_loss
    got, got_g = _loss_and_grads(model, input_ids=ids, labels=labels, num_items_in_batch=9)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-6, atol=1e-6)
    for n in ref_g:
        torch.testing.assert_close(got_g[n], ref_g[n], rtol=1e-5, atol=1e-6)


def test_make_causal_lm_loss_rejects_chunk_size_and_unknown():
    with pytest.raises(TypeError, match="chunk_size"):
        make_causal_lm_loss(chunk_size=128)
    with pytest.raises(TypeError, match="reduction"):
        make_causal_lm_loss(reduction="sum")


# ---------------------------------------------------------------------------------------------
# num_items=
# ---------------------------------------------------------------------------------------------


def _ce_case(n=13, c=11, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, c, generator=g) * 2).to(dtype)
    y = torch.randint(0, c, (n,), generator=g)
    y[2] = -100
    return x, y


CE_OPTIONS = [
    {},
    {"weight": "w"},
    {"label_smoothing": 0.15},
    {"z_loss": 1e-2},
    {"softcap": 2.5},
    {"sample_weight": "s"},
    {"weight": "w", "label_smoothing": 0.1, "z_loss": 1e-3, "softcap": 4.0, "sample_weight": "s"},
]


def _resolve(opts, n, c):
    g = torch.Generator().manual_seed(9)
    out = dict(opts)
    if out.get("weight") == "w":
        out["weight"] = torch.rand(c, generator=g) + 0.5
    if out.get("sample_weight") == "s":
        out["sample_weight"] = torch.rand(n, generator=g) + 0.5
    return out


@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: "-".join(o) or "plain")
@pytest.mark.parametrize("count", [7, 7.5, "tensor-int", "tensor-float"])
def test_cross_entropy_num_items_is_sum_over_count(opts, count):
    x, y = _ce_case()
    opts = _resolve(opts, *x.shape)
    n = {"tensor-int": torch.tensor(7), "tensor-float": torch.tensor(7.5)}.get(count, count)
    nval = float(n)
    xr = x.clone().requires_grad_()
    ref = cross_entropy(xr, y, reduction="sum", **opts) / nval
    (g_ref,) = torch.autograd.grad(ref, xr)
    xg = x.clone().requires_grad_()
    got = cross_entropy(xg, y, num_items=n, **opts)
    (g_got,) = torch.autograd.grad(got, xg)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(g_got, g_ref, rtol=1e-6, atol=1e-7)


def test_cross_entropy_num_items_plain_matches_torch_sum():
    x, y = _ce_case()
    w = torch.rand(11) + 0.5
    ref = F.cross_entropy(x, y, weight=w, label_smoothing=0.1, reduction="sum") / 5
    got = cross_entropy(x, y, weight=w, label_smoothing=0.1, num_items=5)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: "-".join(o) or "plain")
def test_linear_cross_entropy_num_items_3d_hidden(opts):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 5, 8, generator=g)
    w = torch.randn(11, 8, generator=g)
    b = torch.randn(11, generator=g)
    t = torch.randint(0, 11, (2, 5), generator=g)
    t[0, 0] = -100
    opts = _resolve(opts, 10, 11)
    if "weight" in opts:
        opts["class_weight"] = opts.pop("weight")
    if "sample_weight" in opts:
        opts["sample_weight"] = opts["sample_weight"].reshape(2, 5)
    leaves = [p.clone().requires_grad_() for p in (h, w, b)]
    ref = linear_cross_entropy(*leaves[:2], t, leaves[2], reduction="sum", **opts) / 6
    ref_g = torch.autograd.grad(ref, leaves)
    leaves2 = [p.clone().requires_grad_() for p in (h, w, b)]
    got = linear_cross_entropy(*leaves2[:2], t, leaves2[2], num_items=torch.tensor(6), **opts)
    got_g = torch.autograd.grad(got, leaves2)
    torch.testing.assert_close(got, ref, rtol=1e-6, atol=1e-6)
    for a, r in zip(got_g, ref_g, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_cross_entropy_num_items_half(dtype):
    x, y = _ce_case(dtype=dtype)
    got = cross_entropy(x, y, num_items=300)
    assert got.dtype == dtype
    ref = F.cross_entropy(x.float(), y, reduction="sum") / 300
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-3)


def test_linear_cross_entropy_fp16_mean_does_not_overflow():
    torch.manual_seed(0)
    h = torch.randn(4000, 16).half()
    w = (torch.randn(64, 16) * 3).half()
    t = torch.randint(0, 64, (4000,))
    ref = F.cross_entropy(h.float() @ w.float().T, t)
    assert torch.isfinite(linear_cross_entropy(h, w, t, impl="torch"))
    got = linear_cross_entropy(h, w, t)
    torch.testing.assert_close(got.float(), ref, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize(
    "bad, exc, match",
    [
        (0, ValueError, "num_items"),
        (-3, ValueError, "num_items"),
        (float("nan"), ValueError, "num_items"),
        (float("inf"), ValueError, "num_items"),
        (True, TypeError, "num_items"),
        ("4", TypeError, "num_items"),
        (torch.ones(2), ValueError, "num_items"),
        (torch.tensor(True), TypeError, "num_items"),
        (torch.tensor(3.0, requires_grad=True), ValueError, "num_items.*grad"),
        (torch.tensor(3 + 0j), TypeError, "num_items"),
    ],
)
def test_num_items_bad_values(bad, exc, match):
    x, y = _ce_case()
    with pytest.raises(exc, match=match):
        cross_entropy(x, y, num_items=bad)
    with pytest.raises(exc, match=match):
        linear_cross_entropy(
            torch.randn(4, 3), torch.randn(5, 3), torch.zeros(4).long(), num_items=bad
        )


@pytest.mark.parametrize("reduction", ["sum", "none"])
def test_num_items_with_other_reduction_refused(reduction):
    x, y = _ce_case()
    with pytest.raises(ValueError, match="reduction"):
        cross_entropy(x, y, reduction=reduction, num_items=3)
    with pytest.raises(ValueError, match="reduction"):
        linear_cross_entropy(
            torch.randn(4, 3),
            torch.randn(5, 3),
            torch.zeros(4).long(),
            reduction=reduction,
            num_items=3,
        )


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_num_items_with_legacy_arguments():
    x, y = _ce_case()
    torch.testing.assert_close(
        cross_entropy(x, y, size_average=True, reduce=True, num_items=4),
        cross_entropy(x, y, reduction="sum") / 4,
    )
    with pytest.raises(ValueError, match=r"reduction|size_average"):
        cross_entropy(x, y, size_average=False, num_items=4)
    with pytest.raises(ValueError, match=r"reduction|reduce"):
        cross_entropy(x, y, reduce=False, num_items=4)


def test_num_items_zero_tensor_gives_inf_as_documented():
    x, y = _ce_case()
    assert torch.isinf(cross_entropy(x, y, num_items=torch.tensor(0)))


def test_num_items_under_compile_fullgraph():
    x, y = _ce_case()
    torch._dynamo.reset()

    def f(x, y, n):
        return cross_entropy(x, y, num_items=n, label_smoothing=0.1)

    cf = torch.compile(f, fullgraph=True, backend="aot_eager")
    n = torch.tensor(6)
    torch.testing.assert_close(cf(x, y, n), f(x, y, n), rtol=1e-6, atol=1e-6)


def test_num_items_under_autocast():
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(12, 8, generator=g), torch.randn(11, 8, generator=g)
    t = torch.randint(0, 11, (12,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(h, w, t, num_items=5)
        mean = linear_cross_entropy(h, w, t)
    torch.testing.assert_close(got.float(), mean.float() * 12 / 5, rtol=1e-2, atol=1e-2)
    ref = F.cross_entropy(h @ w.T, t, reduction="sum") / 5
    torch.testing.assert_close(got.float(), ref, rtol=3e-2, atol=3e-2)


# ---------------------------------------------------------------------------------------------
# temperature= on token statistics
# ---------------------------------------------------------------------------------------------


def _ref_stats(z, y, T):
    z = z / T
    lse = z.logsumexp(-1)
    logp = z.log_softmax(-1)
    keep = y != -100
    lp = logp.gather(-1, y.clamp(min=0)[..., None])[..., 0].where(keep, 0.0)
    ent = -(logp.exp() * logp).nan_to_num().sum(-1)
    return lp, ent, lse


@pytest.mark.parametrize("T", [0.3, 1.0, 1.7])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_token_stats_temperature_values_and_grads(T, softcap):
    g = torch.Generator().manual_seed(1)
    z = (torch.randn(9, 13, generator=g, dtype=torch.float64) * 3).requires_grad_()
    y = torch.randint(0, 13, (9,), generator=g)
    y[4] = -100
    a, b, c = (torch.randn(9, generator=g, dtype=torch.float64) for _ in range(3))
    out = token_stats(z, y, temperature=T, softcap=softcap)
    zc = z if softcap is None else softcap * torch.tanh(z / softcap)
    ref = _ref_stats(zc, y, T)
    for got, r in zip(out[:3], ref, strict=True):
        torch.testing.assert_close(got, r, rtol=1e-10, atol=1e-10)
    assert torch.equal(out.argmax, (zc / T).argmax(-1))
    gz = torch.autograd.grad((a * out.logprob + b * out.entropy + c * out.lse).sum(), z)[0]
    gr = torch.autograd.grad((a * ref[0] + b * ref[1] + c * ref[2]).sum(), z)[0]
    torch.testing.assert_close(gz, gr, rtol=1e-9, atol=1e-10)


def test_token_stats_temperature_under_torch_func():
    g = torch.Generator().manual_seed(2)
    z = torch.randn(5, 7, generator=g, dtype=torch.float64)
    y = torch.randint(0, 7, (5,), generator=g)

    def f(z):
        o = token_stats(z, y, temperature=0.45)
        return (o.logprob + 0.3 * o.entropy - 0.2 * o.lse).sum()

    def fr(z):
        lp, ent, lse = _ref_stats(z, y, 0.45)
        return (lp + 0.3 * ent - 0.2 * lse).sum()

    torch.testing.assert_close(torch.func.grad(f)(z), torch.func.grad(fr)(z))
    jac = torch.func.jacrev(lambda z: token_stats(z, y, temperature=2.0).entropy)(z)
    jref = torch.func.jacrev(lambda z: _ref_stats(z, y, 2.0)[1])(z)
    torch.testing.assert_close(jac, jref)


@pytest.mark.parametrize("T", [0.6, 1.9])
def test_linear_token_stats_temperature_grads(T):
    g = torch.Generator().manual_seed(3)
    h = torch.randn(2, 6, 8, generator=g, dtype=torch.float64)
    w = torch.randn(17, 8, generator=g, dtype=torch.float64)
    b = torch.randn(17, generator=g, dtype=torch.float64)
    y = torch.randint(0, 17, (2, 6), generator=g)
    y[1, 2] = -100
    up = [torch.randn(2, 6, generator=g, dtype=torch.float64) for _ in range(3)]
    leaves = [p.clone().requires_grad_() for p in (h, w, b)]
    out = linear_token_stats(leaves[0], leaves[1], y, leaves[2], temperature=T, chunk_size=5)
    grads = torch.autograd.grad(
        sum((u * s).sum() for u, s in zip(up, out[:3], strict=True)), leaves
    )
    refl = [p.clone().requires_grad_() for p in (h, w, b)]
    ref = _ref_stats(refl[0] @ refl[1].T + refl[2], y, T)
    rgrads = torch.autograd.grad(sum((u * s).sum() for u, s in zip(up, ref, strict=True)), refl)
    for a, r in zip(out[:3], ref, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-10, atol=1e-10)
    for a, r in zip(grads, rgrads, strict=True):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)
    assert torch.equal(out.argmax, (h @ w.T + b).argmax(-1))


def test_token_stats_extreme_temperatures():
    g = torch.Generator().manual_seed(4)
    z = torch.randn(6, 50, generator=g, dtype=torch.float64)
    y = torch.randint(0, 50, (6,), generator=g)
    hot = token_stats(z, y, temperature=1e30)
    torch.testing.assert_close(hot.entropy, torch.full((6,), math.log(50), dtype=z.dtype))
    torch.testing.assert_close(hot.logprob, torch.full((6,), -math.log(50), dtype=z.dtype))
    cold = token_stats(z, y, temperature=1e-6)
    ref = _ref_stats(z, y, 1e-6)
    assert torch.isfinite(cold.entropy).all()
    torch.testing.assert_close(cold.logprob, ref[0], rtol=1e-9, atol=1e-6)
    torch.testing.assert_close(cold.entropy, ref[1], rtol=1e-6, atol=1e-9)
    # float32 logits at a small T: finite, as the fp32 reference
    zf = z.float()
    c32 = token_stats(zf, y, temperature=1e-3)
    torch.testing.assert_close(c32.lse, (zf / 1e-3).logsumexp(-1), rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize(
    "bad, exc",
    [
        (0.0, ValueError),
        (-1.0, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (1e-39, ValueError),
        (True, TypeError),
        ("2", TypeError),
    ],
)
def test_token_stats_bad_temperature(bad, exc):
    z = torch.randn(3, 5)
    y = torch.zeros(3, dtype=torch.long)
    with pytest.raises(exc, match="temperature"):
        token_stats(z, y, temperature=bad)
    with pytest.raises(exc, match="temperature"):
        linear_token_stats(torch.randn(3, 4), torch.randn(5, 4), y, temperature=bad)


def test_token_stats_temperature_tensor_refused_or_exact():
    z = torch.randn(3, 5, dtype=torch.float64)
    y = torch.zeros(3, dtype=torch.long)
    try:
        out = token_stats(z, y, temperature=torch.tensor(2.0))
    except (TypeError, ValueError) as e:
        assert "temperature" in str(e)
    else:
        torch.testing.assert_close(out.lse, (z / 2).logsumexp(-1))


def test_token_accuracy_argmax_ties_first_index_like_torch():
    z = torch.tensor([[1.0, 3.0, 3.0, 0.0], [2.0, 2.0, 2.0, 2.0], [0.0, -1.0, 5.0, 5.0]])
    y = torch.tensor([1, 0, 3])
    out = token_stats(z, y, temperature=0.5)
    assert torch.equal(out.argmax, z.argmax(-1))
    acc = (out.argmax == y).float().mean()
    assert acc.item() == pytest.approx(2 / 3)


# ---------------------------------------------------------------------------------------------
# The RL recipe (examples/rl_grpo.py)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("q, n", [(0.2, 10), (0.5, 7), (1.0, 9), (0.01, 30)])
def test_entropy_quantile_mask_keeps_ceil_q_n_highest(q, n):
    g = torch.Generator().manual_seed(n)
    ent = torch.rand(3, 12, generator=g)
    mask = torch.zeros(3, 12, dtype=torch.bool)
    mask.view(-1)[torch.randperm(36, generator=g)[:n]] = True
    keep = rl_grpo.entropy_quantile_mask(ent, mask, q)
    k = math.ceil(q * n)
    assert int(keep.sum()) == k
    assert not (keep & ~mask).any()
    if k < n:
        assert ent[keep].min() >= ent[mask & ~keep].max()


def test_entropy_quantile_mask_no_float_rounding_up():
    ent = torch.arange(100.0)
    mask = torch.ones(100, dtype=torch.bool)
    assert int(rl_grpo.entropy_quantile_mask(ent, mask, 0.07).sum()) == 7


def test_entropy_quantile_mask_ties_broken_by_position():
    ent = torch.ones(40)
    mask = torch.ones(40, dtype=torch.bool)
    keep = rl_grpo.entropy_quantile_mask(ent, mask, 0.25)
    assert torch.equal(keep.nonzero().flatten(), torch.arange(10))


def test_entropy_quantile_mask_bad_q_and_no_gradient():
    ent = torch.rand(8, requires_grad=True)
    mask = torch.ones(8, dtype=torch.bool)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="top_q"):
            rl_grpo.entropy_quantile_mask(ent, mask, bad)
    keep = rl_grpo.entropy_quantile_mask(ent, mask, 0.5)
    assert not keep.requires_grad and keep.dtype == torch.bool


def test_entropy_quantile_mask_empty_mask():
    keep = rl_grpo.entropy_quantile_mask(torch.rand(2, 5), torch.zeros(2, 5, dtype=torch.bool), 0.2)
    assert not keep.any()


@pytest.mark.parametrize("T", [0.7, 1.3])
def test_grpo_loss_matches_float64_reference(T):
    g = torch.Generator().manual_seed(5)
    b, s, d, v = 4, 9, 8, 31
    h = torch.randn(b, s, d, generator=g)
    w = torch.randn(v, d, generator=g) * 0.8
    bias = torch.randn(v, generator=g) * 0.1
    tokens = torch.randint(0, v, (b, s), generator=g)
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[:, :3] = False
    mask[2, 7:] = False
    with torch.no_grad():
        old = linear_token_stats(
            h, w + 0.3 * torch.randn(v, d, generator=g), tokens, bias, temperature=T
        ).logprob
    adv = torch.randn(b, 1, generator=g)
    leaves = [p.clone().requires_grad_() for p in (h, w, bias)]
    out = rl_grpo.grpo_loss(
        leaves[0],
        leaves[1],
        tokens,
        old,
        adv,
        mask,
        bias=leaves[2],
        temperature=T,
        top_q=0.4,
        clip_eps=0.1,
        beta=0.05,
    )
    grads = torch.autograd.grad(out.loss, leaves)
    assert 0 < out.clip_fraction < 1
    refl = [p.detach().double().requires_grad_() for p in (h, w, bias)]
    ref = rl_grpo.reference_loss(
        *refl,
        tokens,
        old.double(),
        adv.double(),
        mask,
        out.keep,
        temperature=T,
        clip_eps=0.1,
        beta=0.05,
    )
    rgrads = torch.autograd.grad(ref, refl)
    torch.testing.assert_close(out.loss.double(), ref, rtol=1e-5, atol=1e-6)
    for a, r in zip(grads, rgrads, strict=True):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-6)
    with torch.no_grad():
        logits = (h @ w.T + bias) / T
        acc = ((logits.argmax(-1) == tokens) & out.keep).sum() / out.keep.sum()
        ent = -(logits.log_softmax(-1).exp() * logits.log_softmax(-1)).sum(-1)
    torch.testing.assert_close(out.token_accuracy, acc)
    torch.testing.assert_close(out.entropy, ent[mask].mean(), rtol=1e-5, atol=1e-6)
    assert int(out.keep.sum()) == math.ceil(0.4 * int(mask.sum()))


def test_group_advantages_zero_mean_unit_std():
    r = torch.tensor([[1.0, 2.0, 3.0, 6.0], [0.0, 0.0, 1.0, 1.0]])
    a = rl_grpo.group_advantages(r)
    torch.testing.assert_close(a.mean(-1), torch.zeros(2), atol=1e-6, rtol=0)
    torch.testing.assert_close(a.std(-1), torch.ones(2), atol=1e-5, rtol=0)
