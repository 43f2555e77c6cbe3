"""The training examples that docs/guide/training.rst shows (examples/train_*.py) run and print
what the page says they print: the same losses patched as stock."""

from __future__ import annotations

import contextlib
import io
import re
import runpy
from pathlib import Path

import pytest

pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run(name: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(EXAMPLES / name), run_name="__main__")
    return out.getvalue()


def test_every_training_example_is_on_the_training_page() -> None:
    page = (ROOT / "docs" / "guide" / "training.rst").read_text()
    shown = set(re.findall(r"literalinclude:: \.\./\.\./examples/(train_\w+\.py)", page))
    assert shown == {p.name for p in EXAMPLES.glob("train_*.py")}


def test_plain_loop_trains_and_accumulates_exactly() -> None:
    out = run("train_plain_loop.py")
    first, last = map(float, re.search(r"loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert last < first
    assert "two accumulated halves give the full batch's gradient: True" in out


def test_hf_patch_example() -> None:
    pytest.importorskip("transformers")
    out = run("train_hf_patch.py")
    loss, stock = re.search(r"loss ([\d.]+), stock ([\d.]+), logits None", out).groups()
    assert loss == stock
    assert "generate() unchanged: True" in out
    assert "logits again after unpatch: (2, 16, 512)" in out


def test_logits_loss_example() -> None:
    pytest.importorskip("transformers")
    out = run("train_logits_loss.py")
    stock, ours = re.search(r"stock ([\d.]+), causal_lm_loss ([\d.]+)", out).groups()
    assert stock == ours
    assert "registered: True" in out


@pytest.mark.slow
def test_hf_trainer_example() -> None:
    pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    out = run("train_hf_trainer.py")
    stock = re.search(r"^stock +(\[.*\])$", out, re.M).group(1)
    patched = re.search(r"^patched +(\[.*\])$", out, re.M).group(1)
    assert stock == patched and len(stock.split(",")) == 4


@pytest.mark.slow
def test_trl_sft_example() -> None:
    pytest.importorskip("trl")
    out = run("train_trl_sft.py")
    stock = re.search(r"^TRL's loss +(\[.*\])$", out, re.M).group(1)
    patched = re.search(r"^patched +(\[.*\])$", out, re.M).group(1)
    assert stock == patched and len(stock.split(",")) == 4
