"""A patched model trains in Hugging Face's Trainer and TRL's SFTTrainer with the losses and the
weights of the stock model, step for step (tiny random Llama, in-memory data, no download).

Trainer runs with gradient accumulation, so it passes ``num_items_in_batch`` to the forward;
SFTTrainer's own loss is TRL's fused log-probabilities, and the patched run replaces it with
the model's loss (:func:`crossentropy.transformers.patch`) through ``Trainer.compute_loss``.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
cx = pytest.importorskip("crossentropy.transformers")

pytestmark = pytest.mark.slow

VOCAB = 64
WORDS = [f"w{i}" for i in range(VOCAB - 4)]


def tiny_llama(seed: int = 0) -> Any:
    config = transformers.LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(config).double()


def rows(count: int = 8, seed: int = 0) -> list[dict[str, list[int]]]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(count):
        n = 6 + (3 * i) % 7
        ids = torch.randint(4, VOCAB, (n,), generator=g).tolist()
        labels = [-100, -100, *ids[2:]]  # a two-token prompt that is not trained on
        out.append({"input_ids": ids, "attention_mask": [1] * n, "labels": labels})
    return out


def collate(batch: list[dict[str, list[int]]]) -> dict[str, Any]:
    width = max(len(r["input_ids"]) for r in batch)

    def pad(key: str, value: int) -> Any:
        return torch.tensor([r[key] + [value] * (width - len(r[key])) for r in batch])

    return {"input_ids": pad("input_ids", 0), "attention_mask": pad("attention_mask", 0),
            "labels": pad("labels", -100)}  # fmt: skip


def losses(history: list[dict[str, Any]]) -> list[float]:
    return [entry["loss"] for entry in history if "loss" in entry]


def assert_same_weights(a: Any, b: Any, atol: float = 1e-7) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=atol, msg=lambda m, n=name: f"{n}: {m}")


def test_hf_trainer_with_gradient_accumulation_matches_stock(tmp_path: Path) -> None:
    stock = tiny_llama()
    patched = cx.patch(copy.deepcopy(stock))
    seen: list[Any] = []
    forward = patched.forward

    @functools.wraps(forward)  # Trainer reads the forward's signature (columns, loss kwargs)
    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("num_items_in_batch"))
        out = forward(*args, **kwargs)
        assert out.logits is None
        return out

    patched.forward = spy

    def train(model: Any, name: str) -> list[float]:
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=3,
            learning_rate=0.5,
            # SGD: AdamW's update of a near-zero gradient is about its sign, which rounding
            # can flip; SGD's follows the gradient, so the weights compare tightly
            optim="sgd",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            data_seed=0,
            disable_tqdm=True,
            dataloader_num_workers=0,
        )
        trainer = transformers.Trainer(
            model=model, args=args, train_dataset=rows(), data_collator=collate
        )
        trainer.train()
        return losses(trainer.state.log_history)

    want = train(stock, "stock")
    got = train(patched, "patched")
    assert len(want) == 3 and want[-1] < want[0]  # it trained
    assert got == pytest.approx(want, rel=1e-5)
    assert_same_weights(patched, stock, atol=1e-6)
    # the Trainer passed the accumulated token count, as it does to the stock forward
    assert seen and all(n is not None for n in seen)


def tokenizer() -> Any:
    tokenizers = pytest.importorskip("tokenizers")
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, **{w: i + 4 for i, w in enumerate(WORDS)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
        unk_token="<unk>",
    )  # fmt: skip


def test_trl_sft_trainer_matches_stock(tmp_path: Path) -> None:
    trl = pytest.importorskip("trl")
    datasets = pytest.importorskip("datasets")
    g = torch.Generator().manual_seed(1)
    texts = [
        " ".join(WORDS[int(j)] for j in torch.randint(0, len(WORDS), (5 + i % 6,), generator=g))
        for i in range(8)
    ]
    data = datasets.Dataset.from_dict({"text": texts})

    class PatchedSFTTrainer(trl.SFTTrainer):  # type: ignore[misc]
        """SFTTrainer whose loss is the model's own (the patched forward's)."""

        def compute_loss(
            self,
            model: Any,
            inputs: Any,
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            return transformers.Trainer.compute_loss(
                self, model, inputs, return_outputs, num_items_in_batch
            )

    def train(cls: type, model: Any, name: str) -> list[float]:
        args = trl.SFTConfig(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=2,
            gradient_accumulation_steps=2,
            max_steps=3,
            learning_rate=0.5,
            # SGD: AdamW's update of a near-zero gradient is about its sign, which rounding
            # can flip; SGD's follows the gradient, so the weights compare tightly
            optim="sgd",
            logging_steps=1,
            save_strategy="no",
            report_to=[],
            use_cpu=True,
            seed=0,
            data_seed=0,
            disable_tqdm=True,
            max_length=32,
            bf16=False,  # SFTConfig's default autocasts to bfloat16: compare exact arithmetic
        )
        trainer = cls(model=model, args=args, train_dataset=data, processing_class=tokenizer())
        trainer.train()
        return losses(trainer.state.log_history)

    # float32: TRL's fused head (its default loss) rounds a float64 model's logits to float32
    stock = tiny_llama().float()
    patched = cx.patch(copy.deepcopy(stock))
    want = train(trl.SFTTrainer, stock, "stock")
    got = train(PatchedSFTTrainer, patched, "patched")
    assert len(want) == 3 and want[-1] < want[0]  # it trained
    assert got == pytest.approx(want, rel=1e-5)
    assert_same_weights(patched, stock, atol=1e-6)
