"""The logits-level loss: transformers' ForCausalLMLoss computed by ``crossentropy``.

Run with::

    python examples/train_logits_loss.py

For a model that :func:`crossentropy.transformers.patch` refuses (its forward changes the
logits in a way the patch cannot reproduce, an adapted output layer), the model still builds
its logits, but the loss on them can be the library's fused cross-entropy, with its options:
set ``model.loss_function``, or register it for every model in transformers' ``LOSS_MAPPING``.
"""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.loss.loss_utils import LOSS_MAPPING

from crossentropy.transformers import causal_lm_loss, make_causal_lm_loss


def main() -> None:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 512, (2, 16))
    stock = model(input_ids=ids, labels=ids).loss

    model.loss_function = causal_lm_loss  # this model only
    ours = model(input_ids=ids, labels=ids).loss
    print(f"stock {stock.item():.5f}, causal_lm_loss {ours.item():.5f}")

    model.loss_function = make_causal_lm_loss(label_smoothing=0.1, z_loss=1e-4)
    print(f"with label smoothing and z-loss {model(input_ids=ids, labels=ids).loss.item():.5f}")

    previous = LOSS_MAPPING["ForCausalLM"]
    LOSS_MAPPING["ForCausalLM"] = causal_lm_loss  # every causal LM built from here on
    try:
        fresh = LlamaForCausalLM(config)
        print("registered:", fresh.loss_function is causal_lm_loss)
    finally:
        LOSS_MAPPING["ForCausalLM"] = previous


if __name__ == "__main__":
    main()
