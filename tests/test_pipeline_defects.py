"""Regression tests for defects of ``cross_entropy`` / ``linear_cross_entropy`` found by a
hostile pass over the options: each test is named after the defect it pins.

Every case runs on the fused kernels (``force_fused``), and where it applies on the recomputing
pass, the double-backward path and the Triton kernels (in the interpreter on CPU).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import crossentropy.torch as cet  # noqa: E402
from crossentropy.torch import _backend as B  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

IMPLS = ["torch"] + (["triton"] if B.triton_available() and B.triton_interpreted() else [])


def _masked_case(dtype=torch.float32, n=12, c=37, seed=0):
    """Logits with a masked vocabulary entry (−inf in every row), an ignored row whose logits
    are all −inf, and a few more ignored rows."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    x[:, 5] = float("-inf")
    x[0] = float("-inf")
    t = torch.randint(0, c, (n,), generator=g)
    t[t == 5] = 6
    t[0] = -100
    t[7] = -100
    return x.to(dtype), t


def _reference_grad(x, t, upstream=None, **kw):
    """The gradient of the definition in float64, with the ignored rows' logits replaced by
    zeros (they contribute nothing, so their gradient is 0 by definition)."""
    valid = (t != -100).unsqueeze(-1)
    xr = torch.where(valid, x.double(), 0.0).requires_grad_()
    z, cap, sw = kw.get("z_loss", 0.0), kw.get("softcap"), kw.get("sample_weight")
    xs = xr if cap is None else cap * torch.tanh(xr / cap)
    w = kw.get("weight")
    w = None if w is None else w.double()
    per = F.cross_entropy(
        xs, t, w, reduction="none", label_smoothing=kw.get("label_smoothing", 0.0)
    )
    tw = (t != -100).double() if w is None else torch.where(t != -100, w[t.clamp(min=0)], 0.0)
    lse = torch.where(t != -100, torch.logsumexp(xs, -1), 0.0)
    per = per + z * tw * lse * lse
    if sw is not None:
        per = per * torch.where(t != -100, sw.double(), 0.0)
    red = kw.get("reduction", "mean")
    loss = per.sum() / tw.sum() if red == "mean" else per.sum() if red == "sum" else per
    loss.backward(torch.ones_like(loss) if upstream is None else upstream.double())
    return loss.detach(), xr.grad


OPTION_SETS = [
    {},
    {"z_loss": 1e-3},
    {"label_smoothing": 0.1, "z_loss": 1e-3},
    {"softcap": 20.0, "reduction": "sum"},
    {"reduction": "none"},
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kw", OPTION_SETS, ids=lambda kw: "-".join(kw) or "plain")
def test_ignored_row_of_all_neg_inf_logits_has_zero_gradient(impl, kw):
    x, t = _masked_case()
    sw = torch.rand(t.shape, generator=torch.Generator().manual_seed(3)) + 0.5
    kw = {**kw, "sample_weight": sw}
    xx = x.clone().requires_grad_()
    loss = cet.cross_entropy(xx, t, impl=impl, **kw)
    upstream = torch.rand(loss.shape, generator=torch.Generator().manual_seed(4))
    loss.backward(upstream)
    ref_loss, ref_grad = _reference_grad(x, t, upstream, **kw)
    assert torch.isfinite(xx.grad).all()
    assert (xx.grad[0] == 0).all() and (xx.grad[7] == 0).all()
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(xx.grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


def test_ignored_row_of_all_neg_inf_logits_second_and_double_backward():
    x, t = _masked_case(dtype=torch.float64)
    xx = x.clone().requires_grad_()
    loss = cet.cross_entropy(xx, t, z_loss=1e-3, label_smoothing=0.2)
    (g1,) = torch.autograd.grad(loss, xx, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, xx, retain_graph=True)  # recomputed from saved stats
    (g3,) = torch.autograd.grad(loss, xx, create_graph=True)  # differentiable ops
    _, ref = _reference_grad(x, t, z_loss=1e-3, label_smoothing=0.2)
    for g in (g1, g2, g3):
        assert torch.isfinite(g).all() and (g[0] == 0).all()
        torch.testing.assert_close(g.detach(), ref)
    (h,) = torch.autograd.grad(g3.sum(), xx)
    assert torch.isfinite(h).all() and (h[0] == 0).all()


@pytest.mark.parametrize("impl", IMPLS)
def test_fp16_z_loss_with_a_masked_vocabulary_keeps_the_gradient(impl):
    """float16 logits with ``z_loss > 0`` and a −inf logit: the float16 prescale bound was
    ``max|x|`` = inf, so the gradient was stored times 2**-60 and every entry flushed to 0."""
    x, t = _masked_case(dtype=torch.float64, n=64, c=300)
    t[0] = 3  # no ignored all-(−inf) row here: only the masked column
    x[0] = torch.randn(300, dtype=torch.float64)
    x[0, 5] = float("-inf")
    xx = x.half().requires_grad_()
    loss = cet.cross_entropy(xx, t, z_loss=1e-3, impl=impl)
    loss.backward()
    _, ref = _reference_grad(x.half().double(), t, z_loss=1e-3)
    err = (xx.grad.double() - ref).norm() / ref.norm()
    assert err < 2e-3, err  # was 1.0: every entry 0
    torch.testing.assert_close(xx.grad.double(), ref, rtol=2e-2, atol=2e-5)


@pytest.mark.parametrize("fused", [True, False])
def test_nan_sample_weight_at_an_ignored_position_with_z_loss_gives_zero(fused, tuned):
    """The small-problem (composite) path multiplied the ignored positions' losses, 0, by
    their NaN sample weight: the value was masked but the gradient was NaN (the whole
    ``weight.grad`` for ``linear_cross_entropy``)."""
    if not fused:
        tuned(direct_max_elements=1 << 20, linear_direct_max_elements=1 << 19)
    g = torch.Generator().manual_seed(0)
    t = torch.randint(0, 10, (8,), generator=g)
    t[0] = t[5] = -100
    sw = torch.rand(8, generator=g)
    sw[0], sw[5] = float("nan"), float("inf")
    x = torch.randn(8, 10, generator=g, dtype=torch.float64, requires_grad=True)
    loss = cet.cross_entropy(x, t, z_loss=1e-3, sample_weight=sw)
    loss.backward()
    sw_ref = torch.where(t != -100, sw, 0.0)
    x_ref = x.detach().clone().requires_grad_()
    ref = cet.cross_entropy(x_ref, t, z_loss=1e-3, sample_weight=sw_ref)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(x.grad, x_ref.grad)
    assert (x.grad[0] == 0).all() and (x.grad[5] == 0).all()

    h = torch.randn(8, 4, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, 4, generator=g, dtype=torch.float64, requires_grad=True)
    loss = cet.linear_cross_entropy(h, w, t, z_loss=1e-3, sample_weight=sw)
    loss.backward()
    hr, wr = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = cet.linear_cross_entropy(hr, wr, t, z_loss=1e-3, sample_weight=sw_ref)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    assert torch.isfinite(w.grad).all() and torch.isfinite(h.grad).all()
    torch.testing.assert_close(w.grad, wr.grad)
    torch.testing.assert_close(h.grad, hr.grad)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_with_zero_features(reduction, bias):
    """``hidden`` of shape (N, 0): the logits are the bias (or 0), as ``F.linear`` gives; the
    fused path crashed reshaping (N, 0) with -1."""
    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 0, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 0, dtype=torch.float64, requires_grad=True)
    b = torch.randn(9, generator=g, dtype=torch.float64, requires_grad=True) if bias else None
    t = torch.randint(0, 9, (6,), generator=g)
    t[2] = -100
    ours = cet.linear_cross_entropy(h, w, t, b, reduction=reduction, impl="torch")
    ref = F.cross_entropy(F.linear(h, w, b), t, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    up = torch.rand(ours.shape, generator=g, dtype=torch.float64)
    inputs = [h, w] + ([b] if bias else [])
    got = torch.autograd.grad(ours, inputs, up)
    want = torch.autograd.grad(ref, inputs, up)
    for a, e in zip(got, want, strict=True):
        assert a.shape == e.shape
        torch.testing.assert_close(a, e)


def test_linear_cross_entropy_checks_the_bias_device():
    """``linear_cross_entropy`` had no bias-device check (``linear_token_stats`` and the
    vocab-parallel functions had their own copies): a bias elsewhere failed in torch's words
    inside the kernel. The check now lives in the one projection check they all call."""
    h, w, t = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 2, 3])
    bias = torch.randn(5, device="meta")
    for fn in (cet.linear_cross_entropy, cet.linear_token_stats):
        with pytest.raises(ValueError, match=r"bias must be on hidden's device cpu, got device"):
            fn(h, w, t, bias=bias)
