"""``_rows.rowwise``: the per-row exp/log/log1p that avoid MKL's threads on CPU.

The values must be those of the float64 function rounded once to float32 (so at least as
accurate as ``torch.exp`` in float32), with torch's special values, the input untouched, and
the plain torch op wherever NumPy cannot stand in (autograd, tracing, transforms, other
dtypes and devices)."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from crossentropy.torch._rows import rowwise  # noqa: E402

OPS = [torch.exp, torch.log, torch.log1p]


def _ulps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ia = a.view(torch.int32).long()
    ib = b.view(torch.int32).long()
    return (ia - ib).abs()


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.__name__)
@pytest.mark.parametrize("n", [1, 7, 2048, 4099, 70000])
def test_the_float64_value_rounded_once(op, n):
    gen = torch.Generator().manual_seed(n)
    x = 20 * torch.randn(n, generator=gen)
    if op is not torch.exp:
        x = x.abs() + 1e-6
    before = x.clone()
    got = rowwise(op, x)
    want = op(x.double()).float()
    assert got.dtype == torch.float32 and got.shape == x.shape
    assert torch.equal(x, before)
    finite = torch.isfinite(want)
    assert torch.equal(torch.isfinite(got), finite)
    # a double rounding can move a value by one ulp; nothing more
    assert int(_ulps(got[finite], want[finite]).max()) <= 1
    assert float((got[finite] != want[finite]).float().mean()) < 1e-3
    # and never worse than torch's own float32 function against the float64 truth
    own = op(x)
    ours = int(_ulps(got[finite], want[finite]).sum())
    assert ours <= int(_ulps(own[finite], want[finite]).sum())


@pytest.mark.parametrize("op", OPS, ids=lambda o: o.__name__)
def test_special_values_are_torchs(op):
    x = torch.tensor([0.0, -0.0, 1.0, -1.0, -2.0, float("inf"), float("-inf"), float("nan")] * 300)
    got = rowwise(op, x)
    want = op(x)
    assert torch.equal(torch.isnan(got), torch.isnan(want))
    keep = ~torch.isnan(want)
    assert torch.equal(got[keep], want[keep])


@pytest.mark.parametrize("shape", [(), (3000,), (40, 75), (75, 40)])
def test_shapes_and_strided_views(shape):
    x = torch.randn(shape)
    view = x.t() if x.dim() == 2 else x
    got = rowwise(torch.exp, view)
    assert got.shape == view.shape
    assert (
        torch.equal(got, torch.exp(view.double()).float())
        or int(_ulps(got, torch.exp(view.double()).float()).max()) <= 1
    )


def test_falls_back_to_the_torch_op_where_numpy_cannot_stand_in():
    x = torch.randn(4000, requires_grad=True)
    y = rowwise(torch.exp, x)
    y.sum().backward()
    assert x.grad is not None and torch.equal(x.grad, torch.exp(x.detach()))
    for dtype in (torch.float64, torch.bfloat16, torch.float16):
        z = torch.randn(4000).to(dtype)
        assert torch.equal(rowwise(torch.log1p, z.abs()), torch.log1p(z.abs()))
    # torch.func transforms and compiled code see the torch op
    xs = torch.randn(3, 4000)
    assert torch.equal(torch.func.vmap(lambda r: rowwise(torch.exp, r))(xs), torch.exp(xs))
    g = torch.func.grad(lambda r: rowwise(torch.exp, r).sum())(xs[0])
    assert torch.equal(g, torch.exp(xs[0]))
    compiled = torch.compile(lambda r: rowwise(torch.exp, r), fullgraph=True)
    torch.testing.assert_close(compiled(xs[0]), torch.exp(xs[0]))
    # an op it has no NumPy twin for
    assert torch.equal(rowwise(torch.sigmoid, xs[0]), torch.sigmoid(xs[0]))


def test_a_dispatch_mode_sees_the_torch_op():
    from torch.utils._python_dispatch import TorchDispatchMode

    seen: list[str] = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            seen.append(str(func))
            return func(*args, **(kwargs or {}))

    x = torch.randn(4000)
    with Record():
        y = rowwise(torch.log1p, x.abs())
    assert any("log1p" in name for name in seen)
    assert torch.equal(y, torch.log1p(x.abs()))
