"""nn.Module wrappers: they store options and give exactly the functional's results."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import (  # noqa: E402
    CrossEntropyLoss,
    LinearCrossEntropyLoss,
    cross_entropy,
    linear_cross_entropy,
)

pytestmark = pytest.mark.usefixtures("force_fused")


def _gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_loss_module(rng, reduction):
    g = _gen(rng)
    x = torch.randn(6, 5, generator=g)
    t = torch.randint(0, 5, (6,), generator=g)
    t[1] = 3
    w = torch.rand(5, generator=g) + 0.5
    opts = dict(weight=w, ignore_index=3, reduction=reduction, label_smoothing=0.1)
    ours = CrossEntropyLoss(**opts)
    assert torch.equal(ours(x, t), cross_entropy(x, t, **opts))
    torch.testing.assert_close(ours(x, t), torch.nn.CrossEntropyLoss(**opts)(x, t))
    assert "label_smoothing=0.1" in repr(ours)
    # The class weight is a buffer: it follows .to() and appears in the state dict.
    assert torch.equal(ours.to(torch.float64).weight, w.double())
    assert "weight" in ours.state_dict()


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_linear_cross_entropy_loss_module(rng, reduction):
    g = _gen(rng)
    h = torch.randn(7, 4, generator=g, dtype=torch.float64)
    head = torch.nn.Linear(4, 9, dtype=torch.float64)
    t = torch.randint(0, 9, (7,), generator=g)
    cw = torch.rand(9, generator=g, dtype=torch.float64) + 0.5
    loss = LinearCrossEntropyLoss(
        reduction=reduction, label_smoothing=0.2, class_weight=cw, chunk_size=3
    )
    value = loss(h, head.weight, t, head.bias)
    same = linear_cross_entropy(
        h,
        head.weight,
        t,
        head.bias,
        reduction=reduction,
        label_smoothing=0.2,
        class_weight=cw,
        chunk_size=3,
    )
    assert torch.equal(value, same)
    ref = F.cross_entropy(head(h), t, weight=cw, reduction=reduction, label_smoothing=0.2)
    torch.testing.assert_close(value, ref)
    value.sum().backward()
    dw = head.weight.grad.clone()
    head.zero_grad()
    ref.sum().backward()
    torch.testing.assert_close(dw, head.weight.grad)
    assert "chunk_size=3" in repr(loss)


def test_module_validates_through_the_functional():
    with pytest.raises(ValueError, match=r"^cross_entropy: reduction must be one of"):
        CrossEntropyLoss(reduction="avg")(torch.zeros(2, 3), torch.tensor([0, 1]))
