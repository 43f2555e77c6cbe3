"""The RL recipe (examples/rl_grpo.py, docs/guide/training.rst): a GRPO/PPO clipped loss with
an entropy bonus and entropy-quantile masking on ``linear_token_stats``. Its gradients equal a
float64 composition from the materialised logits, its mask keeps the top fraction it names,
and its token accuracy is the logits' argmax's."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

torch = pytest.importorskip("torch")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def recipe() -> ModuleType:
    spec = importlib.util.spec_from_file_location("rl_grpo", ROOT / "examples" / "rl_grpo.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["rl_grpo"] = module
    spec.loader.exec_module(module)
    return module


def problem(
    seed: int, bias: bool, vocab: int = 300, temperature: float = 1.0
) -> dict[str, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    batch, seq, dim = 3, 20, 16
    hidden = torch.randn(batch, seq, dim, generator=g)
    weight = torch.randn(vocab, dim, generator=g) * 3 / dim**0.5
    b = torch.randn(vocab, generator=g) if bias else None
    tokens = torch.randint(0, vocab, (batch, seq), generator=g)
    mask = torch.rand(batch, seq, generator=g) > 0.3
    # behaviour log-probabilities near the current ones, so some ratios clip and some do not
    logits = hidden @ weight.T + (0 if b is None else b)
    logprob = torch.log_softmax(logits / temperature, -1).gather(-1, tokens[..., None])[..., 0]
    old = logprob + 0.3 * torch.randn(batch, seq, generator=g)
    advantage = torch.randn(batch, 1, generator=g)
    return dict(
        hidden=hidden, weight=weight, bias=b, tokens=tokens, mask=mask, old=old, adv=advantage
    )


def plain_float64_loss(
    p: dict[str, torch.Tensor | None],
    leaves: list[torch.Tensor],
    keep: torch.Tensor,
    temperature: float,
    clip_eps: float,
    beta: float,
) -> torch.Tensor:
    hidden, weight = leaves[0], leaves[1]
    bias = leaves[2] if len(leaves) == 3 else None
    logits = hidden @ weight.T
    if bias is not None:
        logits = logits + bias
    logp = torch.log_softmax(logits / temperature, dim=-1)
    tokens, mask = p["tokens"], p["mask"]
    assert tokens is not None and mask is not None and p["old"] is not None
    logprob = logp.gather(-1, tokens[..., None])[..., 0]
    entropy = -(logp.exp() * logp).sum(-1)
    adv = p["adv"].double()  # type: ignore[union-attr]
    ratio = torch.exp(logprob - p["old"].double())
    lo, hi = 1 - clip_eps, 1 + clip_eps
    per_token = -torch.where(
        adv >= 0, torch.minimum(ratio, torch.full_like(ratio, hi)) * adv,
        torch.maximum(ratio, torch.full_like(ratio, lo)) * adv,
    )  # fmt: skip
    return per_token[keep].sum() / keep.sum() - beta * entropy[mask].sum() / mask.sum()


@pytest.mark.parametrize("temperature", [1.0, 0.6, 1.7])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("top_q", [0.2, 1.0])
def test_masked_loss_gradient_equals_float64_composition(
    recipe: ModuleType, temperature: float, bias: bool, top_q: float
) -> None:
    p = problem(seed=int(temperature * 10) + 2 * bias, bias=bias, temperature=temperature)
    names = ["hidden", "weight"] + (["bias"] if bias else [])
    ours = [p[k].clone().requires_grad_() for k in names]  # type: ignore[union-attr]
    out = recipe.grpo_loss(
        ours[0], ours[1], p["tokens"], p["old"], p["adv"], p["mask"],
        bias=ours[2] if bias else None, temperature=temperature, top_q=top_q,
        clip_eps=0.2, beta=0.05,
    )  # fmt: skip
    out.loss.backward()
    ref_leaves = [p[k].double().requires_grad_() for k in names]  # type: ignore[union-attr]
    ref = plain_float64_loss(p, ref_leaves, out.keep, temperature, 0.2, 0.05)
    ref.backward()
    assert float(out.loss.detach()) == pytest.approx(ref.item(), rel=1e-5, abs=1e-6)
    for mine, theirs in zip(ours, ref_leaves, strict=True):
        scale = float(theirs.grad.abs().max())
        assert scale > 0
        assert float((mine.grad.double() - theirs.grad).abs().max()) <= 1e-5 * scale
    # some ratios were clipped and some not: both branches of the surrogate were exercised
    assert 0 < float(out.clip_fraction) < 1


@pytest.mark.parametrize("top_q", [0.01, 0.2, 0.5, 0.999, 1.0])
def test_mask_keeps_the_highest_entropy_fraction(recipe: ModuleType, top_q: float) -> None:
    g = torch.Generator().manual_seed(5)
    entropy = torch.rand(7, 33, generator=g) * 5
    mask = torch.rand(7, 33, generator=g) > 0.25
    keep = recipe.entropy_quantile_mask(entropy, mask, top_q)
    n = int(mask.sum())
    assert int(keep.sum()) == math.ceil(top_q * n)
    assert not bool((keep & ~mask).any())  # never a prompt or padding token
    dropped = mask & ~keep
    if dropped.any():
        assert float(entropy[keep].min()) >= float(entropy[dropped].max())


def test_mask_refuses_a_fraction_outside_0_1(recipe: ModuleType) -> None:
    entropy, mask = torch.rand(4), torch.ones(4, dtype=torch.bool)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match=r"entropy_quantile_mask: top_q must be in \(0, 1\]"):
            recipe.entropy_quantile_mask(entropy, mask, bad)


def test_mask_has_no_gradient_path_and_keeps_the_statistics_differentiable(
    recipe: ModuleType,
) -> None:
    entropy = torch.rand(10, requires_grad=True)
    keep = recipe.entropy_quantile_mask(entropy * 2, torch.ones(10, dtype=torch.bool), 0.3)
    assert keep.dtype == torch.bool and not keep.requires_grad


def test_token_accuracy_is_the_logits_argmax_over_kept_tokens(recipe: ModuleType) -> None:
    p = problem(seed=11, bias=True, vocab=50, temperature=0.8)
    # make some sampled tokens the argmax, so the accuracy is neither 0 nor 1
    logits = p["hidden"] @ p["weight"].T + p["bias"]  # type: ignore[operator]
    tokens = p["tokens"].clone()  # type: ignore[union-attr]
    tokens[:, ::2] = logits.argmax(-1)[:, ::2]
    out = recipe.grpo_loss(
        p["hidden"], p["weight"], tokens, p["old"], p["adv"], p["mask"], bias=p["bias"],
        temperature=0.8, top_q=0.5,
    )  # fmt: skip
    expected = (logits.argmax(-1) == tokens)[out.keep].float().mean()
    assert 0 < float(expected) < 1
    assert float(out.token_accuracy) == pytest.approx(float(expected))


def test_group_advantages_are_normalised_per_prompt(recipe: ModuleType) -> None:
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [3.0, 1.0, 2.0, 2.0]])
    adv = recipe.group_advantages(rewards)
    assert torch.allclose(adv.mean(-1), torch.zeros(2), atol=1e-6)
    assert torch.allclose(adv.std(-1), torch.ones(2), atol=1e-5)


def test_example_runs_and_prints_what_the_guide_says(recipe: ModuleType) -> None:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recipe.main()
    text = out.getvalue()
    kept, n, expected = map(int, re.search(r"kept (\d+) of (\d+) .*= (\d+)\)", text).groups())
    assert kept == expected == math.ceil(0.2 * n)
    loss = float(re.search(r"^loss ([-\d.]+)", text, re.M).group(1))
    ref = float(re.search(r"float64 reference loss ([-\d.]+)", text).group(1))
    assert loss == pytest.approx(ref, abs=2e-6)
    accuracy = float(re.search(r"token accuracy ([\d.]+)", text).group(1))
    assert 0 < accuracy < 1
    assert "close: True" in text


def test_the_training_guide_shows_what_the_example_prints(recipe: ModuleType) -> None:
    page = (ROOT / "docs" / "guide" / "training.rst").read_text()
    block = re.search(
        r":pyobject: main\n\n\.\. code-block:: text\n\n((?:   .*\n)+)",
        page[page.index("examples/rl_grpo.py") :],
    )
    assert block is not None, "the guide lost the RL example's output"
    shown = [line.strip() for line in block.group(1).splitlines()]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        recipe.main()
    printed = out.getvalue().splitlines()

    # the last digits of the float32 gradients' error depend on the BLAS; the rest must match
    def steady(line: str) -> str:
        return re.sub(r"max relative error \S+,", "max relative error …,", line)

    assert [steady(x) for x in printed] == [steady(x) for x in shown]
