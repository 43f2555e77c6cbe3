"""TRL's SFTTrainer with a patched model: the model's own loss instead of TRL's fused head.

Run with::

    python examples/train_trl_sft.py

TRL's SFTTrainer computes its loss with a fused LM head of its own. To train with
``crossentropy`` instead (its options: label smoothing, z-loss, ...), patch the model and let
``compute_loss`` be transformers' (the model's loss); TRL's own entropy and token-accuracy
metrics are then not logged. The tokenizer is a word-level one built here, so nothing is
downloaded.
"""

from __future__ import annotations

import copy
import tempfile

import torch
from datasets import Dataset
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Trainer
from trl import SFTConfig, SFTTrainer

from crossentropy.transformers import patch

WORDS = [f"w{i}" for i in range(60)]


class CrossEntropySFTTrainer(SFTTrainer):
    """SFTTrainer whose loss is the (patched) model's own."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # type: ignore[no-untyped-def]
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


def tokenizer() -> PreTrainedTokenizerFast:
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )  # fmt: skip


def tiny_llama() -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, pad_token_id=0, bos_token_id=1,
        eos_token_id=2,
    )  # fmt: skip
    return LlamaForCausalLM(config)


def train(cls: type[SFTTrainer], model: LlamaForCausalLM, output_dir: str) -> list[float]:
    g = torch.Generator().manual_seed(1)
    texts = [
        " ".join(WORDS[int(j)] for j in torch.randint(0, 60, (8 + i % 5,), generator=g))
        for i in range(16)
    ]
    args = SFTConfig(
        output_dir=output_dir, per_device_train_batch_size=4, max_steps=4, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to=[], use_cpu=True, bf16=False, seed=0,
        max_length=32, disable_tqdm=True,
    )  # fmt: skip
    trainer = cls(
        model=model, args=args, train_dataset=Dataset.from_dict({"text": texts}),
        processing_class=tokenizer(),
    )  # fmt: skip
    trainer.train()
    return [round(log["loss"], 4) for log in trainer.state.log_history if "loss" in log]


def main() -> None:
    stock = tiny_llama()
    model = patch(copy.deepcopy(stock))
    with tempfile.TemporaryDirectory() as tmp:
        print("TRL's loss ", train(SFTTrainer, stock, f"{tmp}/stock"))
        print("patched    ", train(CrossEntropySFTTrainer, model, f"{tmp}/patched"))


if __name__ == "__main__":
    main()
