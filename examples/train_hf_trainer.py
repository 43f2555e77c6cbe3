"""Hugging Face Trainer with a patched model: the same losses as stock, without the logits.

Run with::

    python examples/train_hf_trainer.py

Patch the model before handing it to the Trainer; nothing else changes. With gradient
accumulation the Trainer passes ``num_items_in_batch`` to the forward, and the patched loss
divides by it exactly as transformers' own loss does. (Label smoothing: pass
``patch(model, label_smoothing=0.1)`` instead of ``label_smoothing_factor``, which needs the
logits.)
"""

from __future__ import annotations

import copy
import tempfile

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments

from crossentropy.transformers import patch


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def dataset() -> list[dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    rows = []
    for _ in range(16):
        ids = torch.randint(3, 512, (24,), generator=g)
        labels = ids.clone()
        labels[:6] = -100  # the prompt is not trained on
        rows.append({"input_ids": ids, "labels": labels})
    return rows


def train(model: LlamaForCausalLM, output_dir: str) -> list[float]:
    args = TrainingArguments(
        output_dir=output_dir, per_device_train_batch_size=4, gradient_accumulation_steps=2,
        max_steps=4, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[],
        use_cpu=True, seed=0, disable_tqdm=True,
    )  # fmt: skip
    trainer = Trainer(model=model, args=args, train_dataset=dataset())
    trainer.train()
    return [round(log["loss"], 4) for log in trainer.state.log_history if "loss" in log]


def main() -> None:
    stock = tiny_llama()
    model = patch(copy.deepcopy(stock))
    with tempfile.TemporaryDirectory() as tmp:
        print("stock  ", train(stock, f"{tmp}/stock"))
        print("patched", train(model, f"{tmp}/patched"))


if __name__ == "__main__":
    main()
