"""``num_items``: the sum over kept positions divided by a caller's count (gradient
accumulation and data parallelism: HF's ``num_items_in_batch``, torchtitan's
``global_valid_tokens``), on ``cross_entropy`` and ``linear_cross_entropy``."""

from __future__ import annotations

from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import cross_entropy, linear_cross_entropy  # noqa: E402


def _data(n: int = 24, c: int = 50, seed: int = 0) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = 3 * torch.randn(n, c, generator=gen)
    t = torch.randint(0, c, (n,), generator=gen)
    t[::5] = -100
    return x, t


@pytest.mark.parametrize("fused", [False, True], ids=["direct", "fused"])
@pytest.mark.parametrize("count", [7, 7.5, "int-tensor", "float-tensor"])
def test_equals_the_sum_over_the_count_with_gradients(
    fused: bool, count: Any, request: pytest.FixtureRequest
) -> None:
    if fused:
        request.getfixturevalue("force_fused")
    x, t = _data()
    n = {"int-tensor": torch.tensor(7), "float-tensor": torch.tensor(7.5)}.get(count, count)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    got = cross_entropy(xa, t, label_smoothing=0.1, num_items=n)
    got.backward()
    # Hugging Face's ForCausalLMLoss: F's sum over the kept positions / num_items_in_batch
    want = F.cross_entropy(xb, t, reduction="sum", label_smoothing=0.1) / float(n)
    want.backward()
    assert got.dtype == x.dtype and got.shape == ()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-9)


def test_micro_batches_add_up_to_the_full_batch_mean() -> None:
    """Gradient accumulation: each micro-batch divided by the whole batch's kept count gives,
    summed, the full batch's mean and its gradient (a per-micro-batch mean would not)."""
    x, t = _data(40, 30, seed=1)
    kept = int((t != -100).sum())
    xa = x.clone().requires_grad_()
    parts = [cross_entropy(xa[a : a + 10], t[a : a + 10], num_items=kept) for a in (0, 10, 20, 30)]
    total = sum(parts)
    total.backward()
    xb = x.clone().requires_grad_()
    full = F.cross_entropy(xb, t)
    full.backward()
    torch.testing.assert_close(total, full, rtol=1e-6, atol=0)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-6, atol=1e-9)


@pytest.mark.usefixtures("force_fused")
def test_linear_cross_entropy(request: pytest.FixtureRequest) -> None:
    gen = torch.Generator().manual_seed(2)
    h = torch.randn(3, 8, 16, generator=gen, requires_grad=True)
    w = torch.randn(40, 16, generator=gen, requires_grad=True)
    t = torch.randint(0, 40, (3, 8), generator=gen)
    t[0, :3] = -100
    n = torch.tensor(100)
    got = linear_cross_entropy(h, w, t, z_loss=1e-3, num_items=n)
    got.backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    want = linear_cross_entropy(h2, w2, t, z_loss=1e-3, reduction="sum") / 100
    want.backward()
    torch.testing.assert_close(got, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(h.grad, h2.grad, rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(w.grad, w2.grad, rtol=1e-6, atol=1e-9)


def test_half_precision_count_is_not_rounded() -> None:
    """The division happens in float32: a count of 4097 is not first rounded to bfloat16's
    4096."""
    x, t = _data(64, 20, seed=3)
    got = cross_entropy(x.to(torch.bfloat16), t, num_items=torch.tensor(4097))
    total = cross_entropy(x.to(torch.bfloat16), t, reduction="sum")
    assert got.dtype == torch.bfloat16
    assert got == (total.float() / 4097).to(torch.bfloat16)


def test_compiles_without_graph_breaks() -> None:
    x, t = _data(seed=4)

    def step(x: Any, t: Any, n: Any) -> Any:
        return cross_entropy(x, t, num_items=n)

    got = torch.compile(step, fullgraph=True)(x, t, torch.tensor(11))
    torch.testing.assert_close(got, F.cross_entropy(x, t, reduction="sum") / 11)


@pytest.mark.parametrize(
    ("kw", "kind", "words"),
    [
        ({"num_items": 0}, ValueError, "num_items must be a finite number > 0"),
        ({"num_items": -3.0}, ValueError, "num_items must be a finite number > 0"),
        ({"num_items": float("inf")}, ValueError, "num_items must be a finite number > 0"),
        ({"num_items": float("nan")}, ValueError, "num_items must be a finite number > 0"),
        ({"num_items": "12"}, TypeError, "num_items must be a number or a 0-d tensor"),
        ({"num_items": True}, TypeError, "num_items must be a number or a 0-d tensor"),
        (
            {"num_items": torch.tensor([3, 4])},
            ValueError,
            "num_items must be a number or a 0-d tensor, got shape (2,)",
        ),
        ({"num_items": torch.tensor(True)}, TypeError, "num_items must be a real number"),
        (
            {"num_items": torch.tensor(3.0, requires_grad=True)},
            ValueError,
            "num_items must not require grad",
        ),
        ({"num_items": 5, "reduction": "sum"}, ValueError, "reduction must be 'mean'"),
        ({"num_items": 5, "reduction": "none"}, ValueError, "reduction must be 'mean'"),
    ],
)
def test_bad_num_items_are_refused_clearly(kw: dict[str, Any], kind: type, words: str) -> None:
    x, t = _data()
    with pytest.raises(
        kind, match=f"cross_entropy: {words}".replace("(", r"\(").replace(")", r"\)")
    ):
        cross_entropy(x, t, **kw)
    h, w = torch.randn(24, 4), torch.randn(50, 4)
    with pytest.raises(kind, match="linear_cross_entropy: " + words.split(" must")[0]):
        linear_cross_entropy(h, w, t, **kw)
