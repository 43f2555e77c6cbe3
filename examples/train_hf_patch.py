"""Patch a Hugging Face causal LM: one line, and its training loss never builds the logits.

Run with::

    python examples/train_hf_patch.py

A tiny Llama is built from a config (random weights, nothing downloaded). With labels the
patched forward returns transformers' own loss, computed by ``linear_cross_entropy`` on the
final hidden states, and ``logits=None``; without labels it is the stock forward, so
``generate()`` is unchanged. ``unpatch`` restores the model.
"""

from __future__ import annotations

import copy

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from crossentropy.transformers import patch, unpatch


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def main() -> None:
    stock = tiny_llama()
    model = patch(copy.deepcopy(stock))  # patch(model, label_smoothing=..., z_loss=...) too

    ids = torch.randint(3, 512, (2, 16))
    labels = ids.clone()
    labels[:, :4] = -100  # the prompt is not trained on
    out = model(input_ids=ids, labels=labels)
    out.loss.backward()
    want = stock(input_ids=ids, labels=labels).loss
    print(f"loss {out.loss.item():.5f}, stock {want.item():.5f}, logits {out.logits}")

    # Gradient accumulation as the Trainer does it: the summed loss over a global token count.
    count = torch.tensor(40)
    accumulated = model(input_ids=ids, labels=labels, num_items_in_batch=count).loss
    print(f"with num_items_in_batch=40: {accumulated.item():.5f}")

    prompt = {"input_ids": ids[:1, :5], "attention_mask": torch.ones(1, 5, dtype=torch.long)}
    same = torch.equal(
        model.generate(**prompt, max_new_tokens=8, do_sample=False),
        stock.generate(**prompt, max_new_tokens=8, do_sample=False),
    )
    print("generate() unchanged:", same)
    unpatch(model)
    print("logits again after unpatch:", tuple(model(input_ids=ids, labels=labels).logits.shape))


if __name__ == "__main__":
    main()
