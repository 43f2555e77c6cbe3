"""A causal-LM training step on CPU: stock Hugging Face, patched, and TRL's fused LM head.

Usage: ``python benchmarks/bench_causal_lm.py [--quick] [--repeats R]``; writes
``benchmarks/results/causal_lm.md`` (``make bench`` runs it through ``run_all.py``).

The model: a Llama-shaped ``LlamaForCausalLM`` built from a config with random weights (no
download): vocabulary V = 32768, hidden 256, 2 decoder layers, 4 attention heads of 64,
MLP 640, untied output layer, SDPA attention. Batch 4 × sequence 512; the first 64 labels of
each sequence are ``-100`` (a prompt), so 4 × (511 − 63) = 1792 tokens are trained. The
decoder is kept small so that the output layer's share of the step is that of a real model
whose hidden size is large but whose vocabulary is larger still, and the run fits in ~10
minutes on two cores.

One training step is ``model.zero_grad(set_to_none=True)``, the forward (under
``torch.autocast("cpu", dtype=torch.bfloat16)`` for the bf16 rows) and ``loss.backward()``:

- stock: ``model(input_ids=ids, labels=labels).loss``: the logits (4, 512, 32768), then
  transformers' ``ForCausalLMLoss``;
- patched: ``crossentropy.transformers.patch(model)``, the same call: ``linear_cross_entropy``
  on the final hidden states, no logits;
- TRL: ``trl.trainer.utils.add_fused_lm_head(model, outputs=("log_probs", "entropy",
  "is_top1"))`` and ``model(..., fused_lm_head=True).loss``, what TRL's ``SFTTrainer`` computes
  for ``loss_type="nll"`` (``"chunked_nll"`` is its deprecated alias), with the outputs it asks
  for (its entropy and token-accuracy metrics). Left out, with a note, where TRL is missing.

Correctness first: on batch 1 × sequence 64 of the same model, each implementation's loss and
every parameter's gradient against the stock model run in float64 (its float64 logits and
``F.cross_entropy`` of the shifted labels: transformers' own loss would cast them to float32).
Times: medians of interleaved steps in one process (``_harness.interleaved_times``) after one
warm-up step each, ``torch.set_num_threads(2)``; each row also gives the machine's 1-minute
load average read after each of its timed steps (median), and each table the cores other
processes kept busy.
Peak memory: one step in a fresh subprocess per implementation, after a warm-up step on a
small batch, above the model and the inputs, counting the parameters' gradients
(``_harness.peak_memory_above_inputs``).
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import (
    MiB,
    interleaved_times,
    machine_line,
    markdown_table,
    median,
    peak_memory_above_inputs,
    write_result,
)
from bench_torch import _cpu_ticks, _others_load

HERE = Path(__file__).resolve().parent
THREADS = 2

# (vocab, hidden, layers, heads, mlp), (batch, sequence), prompt length (labels -100)
FULL = {"model": (32768, 256, 2, 4, 640), "batch": (4, 512), "prompt": 64, "check": (1, 64)}
QUICK = {"model": (1024, 64, 1, 1, 128), "batch": (2, 32), "prompt": 4, "check": (1, 16)}
WARMUP_BATCH = (1, 32)  # the peak probe's warm-up step, before the high-water mark is reset

STOCK = "stock transformers (logits + ForCausalLMLoss)"
PATCHED = "crossentropy.transformers.patch(model)"
TRL = "TRL fused LM head (SFTTrainer's nll / chunked_nll)"
TRL_OUTPUTS = ("log_probs", "entropy", "is_top1")


# --------------------------------------------------------------------------- the model


def make_model(model: tuple[int, int, int, int, int], seed: int = 0) -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    vocab, hidden, layers, heads, mlp = model
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=mlp,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def trl_available() -> str | None:
    """None if TRL's fused head can be called, else why not."""
    try:
        from trl.trainer.utils import add_fused_lm_head  # noqa: F401
    except ImportError as exc:
        return f"TRL's `add_fused_lm_head` cannot be imported ({exc})"
    return None


Call = Callable[[Any, torch.Tensor, torch.Tensor], torch.Tensor]


def _stock_call(model: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=labels).loss


def _trl_call(model: Any, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids, labels=labels, fused_lm_head=True).loss


def build(name: str, base: Any) -> tuple[Any, Call]:
    """A copy of ``base`` set up as implementation ``name``, and the call that returns its loss."""
    model = copy.deepcopy(base)
    if name == STOCK:
        return model, _stock_call
    if name == PATCHED:
        from crossentropy.transformers import patch

        return patch(model), _stock_call
    if name == TRL:
        from trl.trainer.utils import add_fused_lm_head

        add_fused_lm_head(model, outputs=TRL_OUTPUTS)
        return model, _trl_call
    raise ValueError(f"unknown implementation {name!r}")


def implementations() -> list[str]:
    return [STOCK, PATCHED] + ([TRL] if trl_available() is None else [])


def make_batch(vocab: int, batch: tuple[int, int], prompt: int, seed: int = 0) -> tuple[Any, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab, batch, generator=g)
    labels = ids.clone()
    labels[:, :prompt] = -100
    return ids, labels


def step(model: Any, call: Call, ids: torch.Tensor, labels: torch.Tensor, bf16: bool) -> Any:
    """One training step (forward and backward); returns the loss."""
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = call(model, ids, labels)
    loss.backward()
    return loss


# --------------------------------------------------------------------------- correctness


def check(sizes: dict[str, Any], bf16: bool) -> dict[str, tuple[float, float]]:
    """Per implementation: (relative loss error, max relative gradient error over the
    parameters, each relative to that parameter's largest gradient) vs stock in float64."""
    base = make_model(sizes["model"])
    ids, labels = make_batch(sizes["model"][0], sizes["check"], min(sizes["prompt"], 8), seed=1)
    ref_model = copy.deepcopy(base).double()
    # transformers' loss casts the logits to float32: the reference takes its float64 logits
    # and shifts the labels itself, as ForCausalLMLoss does.
    logits = ref_model(input_ids=ids).logits
    vocab = logits.shape[-1]
    ref = F.cross_entropy(logits[:, :-1].reshape(-1, vocab), labels[:, 1:].reshape(-1))
    ref.backward()
    ref_loss = float(ref.detach())
    ref_grads = {n: p.grad for n, p in ref_model.named_parameters()}
    errors = {}
    for name in implementations():
        model, call = build(name, base)
        loss = float(step(model, call, ids, labels, bf16).detach())
        grad_err = 0.0
        for n, p in model.named_parameters():
            r = ref_grads[n]
            g = torch.zeros_like(r) if p.grad is None else p.grad.double()
            grad_err = max(grad_err, float((g - r).abs().max() / r.abs().max().clamp(min=1e-30)))
        errors[name] = (abs(loss - ref_loss) / abs(ref_loss), grad_err)
    return errors


# --------------------------------------------------------------------------- measuring

_SETUP = """
import sys
sys.path.insert(0, {here!r})
import torch
import bench_causal_lm as B
torch.set_num_threads(B.THREADS)
sizes = {sizes!r}
model, call = B.build({name!r}, B.make_model(sizes["model"]))
small = B.make_batch(sizes["model"][0], B.WARMUP_BATCH, 4)
from crossentropy.torch._types import override_tuning
with override_tuning(compiled_min_elements=0):  # the compiled CPU kernels' first use too
    B.step(model, call, *small, {bf16!r})  # the lazy first-call work, on a small batch
model.zero_grad(set_to_none=True)
ids, labels = B.make_batch(sizes["model"][0], sizes["batch"], sizes["prompt"])
"""
_RUN = """
loss = B.step(model, call, ids, labels, {bf16!r})
"""


def peak(name: str, sizes: dict[str, Any], bf16: bool) -> int:
    setup = _SETUP.format(here=str(HERE), sizes=sizes, name=name, bf16=bf16)
    return peak_memory_above_inputs(setup, _RUN.format(bf16=bf16))


def measure(
    sizes: dict[str, Any], bf16: bool, repeats: int
) -> tuple[dict[str, float], dict[str, float], str, dict[str, int]]:
    """(median step seconds, median 1-minute load, other processes' cores, peak bytes)."""
    base = make_model(sizes["model"])
    ids, labels = make_batch(sizes["model"][0], sizes["batch"], sizes["prompt"])
    loads: dict[str, list[float]] = {}

    def timed(name: str) -> Callable[[], None]:
        model, call = build(name, base)
        loads[name] = []

        def run() -> None:
            step(model, call, ids, labels, bf16)
            loads[name].append(os.getloadavg()[0])

        return run

    fns = {name: timed(name) for name in implementations()}
    start, ticks = time.perf_counter(), _cpu_ticks()
    times = interleaved_times(fns, repeats=repeats, warmup=1)
    others = _others_load(ticks, time.perf_counter() - start)
    meds = {name: median(ts) for name, ts in times.items()}
    load = {name: median(ls[-repeats:]) for name, ls in loads.items()}
    peaks = {name: peak(name, sizes, bf16) for name in implementations()}
    return meds, load, others, peaks


def _mib(nbytes: float) -> str:
    mib = nbytes / MiB
    return f"{mib:.0f}" if mib >= 10 else f"{mib:.2f}"


def _mark(ok: bool) -> str:
    return "**met**" if ok else "not met"


def bench(sizes: dict[str, Any], bf16: bool, repeats: int) -> tuple[str, list[list[object]]]:
    label = "bf16 autocast" if bf16 else "fp32"
    print(f"  {label}: correctness ...", flush=True)
    errors = check(sizes, bf16)
    print(f"  {label}: timing ...", flush=True)
    meds, load, others, peaks = measure(sizes, bf16, repeats)
    vocab = sizes["model"][0]
    batch, seq = sizes["batch"]
    logits = batch * seq * vocab * 4  # the stock loss's float32 logits
    rows = []
    for name in meds:
        loss_err, grad_err = errors[name]
        rows.append(
            [
                name if name != PATCHED else f"**{name}**",
                f"{meds[name]:.3f}",
                f"{meds[name] / meds[STOCK]:.2f}",
                _mib(peaks[name]),
                f"{peaks[name] / logits:.2f}",
                f"{loss_err:.1e} / {grad_err:.1e}",
                f"{load[name]:.2f}",
            ]
        )
    headers = [
        "implementation",
        "median step s",
        "× stock",
        "peak above model + inputs (MiB)",
        "peak / fp32 logits",
        "rel. error loss / grads vs float64 stock (batch 1 × 64)",
        "1-min load",
    ]
    text = (
        f"### {label}\n\n"
        f"Median of {repeats} interleaved steps. Other processes kept {others} busy on average "
        f"while they were timed. The float32 logits of one batch would be {_mib(logits)} MiB.\n\n"
        f"{markdown_table(headers, rows)}\n"
    )
    lowest = min(peaks, key=lambda n: peaks[n])
    ratio = meds[PATCHED] / meds[STOCK]
    targets: list[list[object]] = [
        [
            label,
            "patched has the lowest peak",
            f"{_mib(peaks[PATCHED])} MiB (lowest: {lowest})",
            _mark(lowest == PATCHED),
        ],
        [label, "patched step ≤ 1.0× stock", f"{ratio:.2f}×", _mark(ratio <= 1.0)],
    ]
    return text, targets


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timed steps")
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    print(f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()}")
    sizes = QUICK if args.quick else FULL
    repeats = 2 if args.quick else args.repeats
    title = "## A causal-LM training step (Hugging Face Llama-shaped model), CPU\n\n"
    try:
        import transformers
    except ImportError:
        note = "Skipped: Hugging Face transformers is not installed (extra `[transformers]`)."
        print(note)
        write_result("causal_lm", title + note)
        return 0
    vocab, hidden, layers, heads, mlp = sizes["model"]
    batch, seq = sizes["batch"]
    sections, targets = [], []
    for bf16 in (False, True):
        text, tg = bench(sizes, bf16, repeats)
        print(text, flush=True)
        sections.append(text)
        targets += tg
    trl_note = trl_available()
    if trl_note is None:
        import trl

        trl_line = (
            f"TRL {trl.__version__}: `add_fused_lm_head(model, outputs={TRL_OUTPUTS})` and "
            "`model(..., fused_lm_head=True).loss`, the loss `SFTTrainer` computes for "
            '`loss_type="nll"` (`"chunked_nll"` is its deprecated alias) with the outputs it '
            "asks for; on CPU it scores every position in chunks of 32768 tokens"
        )
    else:
        trl_line = f"TRL left out: {trl_note}"
    header = (
        title + f"Command: `python benchmarks/bench_causal_lm.py"
        f"{' --quick' if args.quick else ''}`. {machine_line()}; torch {torch.__version__}, "
        f"transformers {transformers.__version__}, `torch.set_num_threads({THREADS})`"
        f"{' — **quick mode: small sizes, targets not meaningful**' if args.quick else ''}.\n\n"
        f"Model: `LlamaForCausalLM` from a config, random weights: V = {vocab}, hidden "
        f"{hidden}, {layers} decoder layer(s), {heads} head(s), MLP {mlp}, untied output "
        f"layer; batch {batch} × sequence {seq}, the first {sizes['prompt']} labels of each "
        "sequence -100. A step: `zero_grad(set_to_none=True)`, forward (bf16: under "
        '`torch.autocast("cpu", dtype=torch.bfloat16)`), `loss.backward()`. '
        f"{trl_line}. Peak memory: one step in a fresh subprocess after a warm-up step on "
        "a small batch, above the model and the inputs, counting the parameters' gradients. "
        "The machine is shared: the ratios measured side by side are the numbers to trust, and "
        "the 1-minute load average beside each row (this benchmark's two threads included) "
        "says how busy it was.\n"
    )
    summary = markdown_table(["case", "target", "measured", "status"], targets)
    body = "\n".join([header, "### Targets\n", summary, "", *sections])
    path = write_result("causal_lm", body)
    print(summary)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
