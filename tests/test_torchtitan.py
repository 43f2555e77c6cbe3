"""crossentropy.torchtitan: the loss adapter against torchtitan's own losses on CPU.

torchtitan is not in .venv (0.3.0 requires datasets < 4.8, which the pinned TRL stack's
datasets 5.2.0 excludes): the tests that take the ``tt`` fixture run where
``pip install 'crossentropy[torchtitan]'`` was done and are skipped elsewhere; the import test
runs everywhere. Its Llama 3 cannot be trained on CPU (FlexAttention has
no CPU backward, its varlen attention is flash-only, SDPA is refused for language models):
gradients are checked on a small stand-in decoder through torchtitan's ``_skip_lm_head``
protocol, and the real debug model's loss in a forward pass (slow: compiles FlexAttention).
"""

from __future__ import annotations

import copy
import subprocess
import sys
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
nn = torch.nn


def test_import_without_torchtitan_names_the_extra() -> None:
    """The module imports without torchtitan; its class raises ImportError naming the extra.
    Runs everywhere (a subprocess hides torchtitan where it is installed)."""
    code = (
        "import sys; sys.modules['torchtitan'] = None\n"
        "import crossentropy.torchtitan as m\n"
        "print(m.__all__)\n"
        "try:\n    from crossentropy.torchtitan import LinearCrossEntropyLoss\n"
        "except ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "['LinearCrossEntropyLoss']" in out.stdout
    assert (
        "LinearCrossEntropyLoss needs PyTorch and torchtitan: "
        "pip install 'crossentropy[torchtitan]'" in out.stdout
    )


@pytest.fixture(scope="module")
def tt() -> SimpleNamespace:
    """torchtitan's losses and ours; the tests that take it are skipped without torchtitan."""
    loss = pytest.importorskip("torchtitan.components.loss")
    from crossentropy.torchtitan import LinearCrossEntropyLoss

    return SimpleNamespace(
        ChunkedLossWrapper=loss.ChunkedLossWrapper,
        CrossEntropyLoss=loss.CrossEntropyLoss,
        Fused=LinearCrossEntropyLoss,
    )


VOCAB, DIM = 500, 24


class StandIn(nn.Module):
    """A decoder with torchtitan's output protocol: ``_skip_lm_head`` returns the hidden
    states, else the logits (``Decoder.forward``)."""

    def __init__(self, bias: bool = False) -> None:
        super().__init__()
        self.tok_embeddings = nn.Embedding(VOCAB, DIM)
        self.mix = nn.Linear(DIM, DIM)
        self.norm = nn.RMSNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=bias)
        self._skip_lm_head = False

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.norm(torch.tanh(self.mix(self.tok_embeddings(tokens))))
        return h if self._skip_lm_head else self.lm_head(h)


def batch(seed: int = 0, b: int = 3, length: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (b, length), generator=g)
    labels = torch.randint(0, VOCAB, (b, length), generator=g)
    labels[:, :4] = -100  # a prompt
    labels[0, -3:] = -100  # padding
    return tokens, labels


def run(model: nn.Module, loss_fn: object, tokens: torch.Tensor, labels: torch.Tensor) -> float:
    """One training step as torchtitan's Trainer runs it; returns the loss."""
    gvt = (labels != -100).sum()
    loss, metrics = loss_fn(model(tokens), labels, gvt)  # type: ignore[operator]
    assert metrics == {}
    loss.backward()
    return float(loss.detach())


@pytest.mark.parametrize("bias", [False, True])
def test_loss_and_every_gradient_equal_torchtitan_losses(tt: SimpleNamespace, bias: bool) -> None:
    torch.manual_seed(0)
    base = StandIn(bias)
    tokens, labels = batch()

    plain = copy.deepcopy(base)  # torchtitan's CrossEntropyLoss on the full logits
    plain_loss = run(plain, tt.CrossEntropyLoss.Config().build(), tokens, labels)

    chunked = copy.deepcopy(base)  # its ChunkedLossWrapper, wired as the trainer wires it
    chunked._skip_lm_head = True
    wrapper = tt.ChunkedLossWrapper.Config(num_chunks=4).build()
    wrapper.set_lm_head(chunked.lm_head)
    chunked_loss = run(chunked, wrapper, tokens, labels)

    ours = copy.deepcopy(base)
    ours._skip_lm_head = True
    fused = tt.Fused.Config().build()
    assert isinstance(fused, tt.Fused)
    assert isinstance(fused, tt.ChunkedLossWrapper)  # so the trainer calls set_lm_head
    fused.set_lm_head(ours.lm_head)
    fused_loss = run(ours, fused, tokens, labels)

    assert fused_loss == pytest.approx(plain_loss, rel=1e-6)
    assert fused_loss == pytest.approx(chunked_loss, rel=1e-6)
    for (name, p), q, r in zip(
        ours.named_parameters(), plain.parameters(), chunked.parameters(), strict=True
    ):
        assert p.grad is not None, name
        scale = float(q.grad.abs().max())
        assert float((p.grad - q.grad).abs().max()) <= 1e-5 * scale, name
        assert float((p.grad - r.grad).abs().max()) <= 1e-5 * scale, name


def test_options_reach_the_loss(tt: SimpleNamespace) -> None:
    torch.manual_seed(1)
    model = StandIn()
    model._skip_lm_head = True
    tokens, labels = batch(seed=2)
    fused = tt.Fused.Config(z_loss=1e-3, label_smoothing=0.1, chunk_size=7).build()
    fused.set_lm_head(model.lm_head)
    gvt = torch.tensor(40)
    loss, _ = fused(model(tokens), labels, gvt)
    logits = model.lm_head(model(tokens)).flatten(0, 1)
    y = labels.flatten()
    keep = y != -100
    per_token = nn.functional.cross_entropy(logits, y, reduction="none", label_smoothing=0.1)
    per_token = per_token + 1e-3 * torch.logsumexp(logits, -1) ** 2 * keep
    assert loss.item() == pytest.approx(per_token.sum().item() / 40, rel=1e-5)


def test_no_global_count_gives_the_sum(tt: SimpleNamespace) -> None:
    model = StandIn()
    model._skip_lm_head = True
    tokens, labels = batch(seed=3)
    fused = tt.Fused.Config().build()
    fused.set_lm_head(model.lm_head)
    plain = tt.CrossEntropyLoss.Config().build()
    with torch.no_grad():
        hidden = model(tokens)
        ours, _ = fused(hidden, labels)
        theirs, _ = plain(model.lm_head(hidden), labels)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)


def test_bfloat16_hidden_outside_autocast_gives_a_float32_sum(tt: SimpleNamespace) -> None:
    torch.manual_seed(4)
    model = StandIn().to(torch.bfloat16)
    model._skip_lm_head = True
    tokens, labels = batch(seed=4, b=8, length=64)
    fused = tt.Fused.Config().build()
    fused.set_lm_head(model.lm_head)
    with torch.no_grad():
        hidden = model(tokens)
        ours, _ = fused(hidden, labels)
        theirs, _ = tt.CrossEntropyLoss.Config().build()(model.lm_head(hidden), labels)
    assert ours.dtype == torch.float32
    # torchtitan's float32 logits are rounded to bfloat16 by the bf16 matmul, ours are not:
    # the sums agree to that rounding, far closer than a bfloat16 sum (ulp 2**-7 relative)
    assert float(ours) == pytest.approx(float(theirs), rel=2e-3)


def test_refusals_name_the_problem(tt: SimpleNamespace) -> None:
    fused = tt.Fused.Config().build()
    with pytest.raises(ValueError, match="lm_head must be set with set_lm_head"):
        fused(torch.zeros(1, 2, DIM), torch.zeros(1, 2, dtype=torch.long))
    with pytest.raises(TypeError, match=r"lm_head must be an nn\.Linear, got Embedding"):
        fused.set_lm_head(nn.Embedding(3, 4))


@pytest.mark.slow
def test_llama3_debug_model_loss_equals_chunked_wrapper(tt: SimpleNamespace) -> None:
    """torchtitan's own Llama 3 debug model, forward only (no CPU backward for FlexAttention)."""
    from torchtitan.models.llama3 import model_registry

    torch.manual_seed(0)
    model = model_registry("debugmodel", attn_backend="flex").model.build()
    model.init_weights(buffer_device=None)
    model._skip_lm_head = True
    tokens = torch.randint(0, 2000, (2, 64))
    labels = torch.randint(0, 2000, (2, 64))
    labels[:, :5] = -100
    positions = torch.arange(64).repeat(2, 1)
    wrapper = tt.ChunkedLossWrapper.Config(num_chunks=4).build()
    wrapper.set_lm_head(model.lm_head)
    fused = tt.Fused.Config().build()
    fused.set_lm_head(model.lm_head)
    gvt = (labels != -100).sum()
    with torch.no_grad():
        hidden = model(tokens, positions, model.get_attention_masks(positions))
        theirs, _ = wrapper(hidden, labels, gvt)
        ours, _ = fused(hidden, labels, gvt)
    assert float(ours) == pytest.approx(float(theirs), rel=1e-6)
