"""Hostile checks of ``cross_entropy`` with probability targets on CPU.

The compiled (inductor) statistics and gradient passes are forced on small tensors with
``override_tuning``; each result is compared in float64 with ``F.cross_entropy`` (or its
composition for the options ``F`` lacks) and with ``impl="torch"``.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import cross_entropy  # noqa: E402
from crossentropy.torch._types import override_tuning  # noqa: E402

D = torch.float64


def _compiled():
    return override_tuning(direct_max_elements=-1, compiled_min_elements=0)


def _fused_torch():
    return override_tuning(direct_max_elements=-1)


def _data(n=8, c=17, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c, dtype=D, generator=g)
    t = torch.softmax(torch.randn(n, c, dtype=D, generator=g), -1)
    return x, t


def _ours(x, t, mode, **kw):
    x = x.detach().clone().requires_grad_(True)
    ctx = _compiled() if mode == "compiled" else _fused_torch()
    with ctx:
        loss = cross_entropy(x, t, impl="auto" if mode == "compiled" else "torch", **kw)
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def _ref(
    x,
    t,
    weight=None,
    reduction="mean",
    label_smoothing=0.0,
    z_loss=0.0,
    softcap=None,
    sample_weight=None,
):
    x = x.detach().clone().requires_grad_(True)
    xc = x if softcap is None else softcap * torch.tanh(x / softcap)
    loss = F.cross_entropy(
        xc, t, weight=weight, reduction="none", label_smoothing=float(label_smoothing)
    )
    loss = loss + z_loss * torch.logsumexp(xc, 1) ** 2
    if sample_weight is not None:
        loss = loss * sample_weight
    loss = {"mean": loss.mean(), "sum": loss.sum(), "none": loss}[reduction]
    (g,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), g


def _close(a, b, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(a[0], b[0], rtol=rtol, atol=atol, equal_nan=True)
    torch.testing.assert_close(a[1], b[1], rtol=rtol, atol=atol, equal_nan=True)


MODES = ["compiled", "torch"]

_x, _t = _data()
_w = torch.rand(17, dtype=D, generator=torch.Generator().manual_seed(1))
_sw = torch.rand(8, dtype=D, generator=torch.Generator().manual_seed(2))
_t0 = _t.clone()
_t0[2] = 0.0

CASES = {
    "plain": (_x, _t, {}),
    "weight": (_x, _t, {"weight": _w}),
    "ls0.1": (_x, _t, {"label_smoothing": 0.1}),
    "ls1.0": (_x, _t, {"label_smoothing": 1.0}),
    "ls_0d_tensor": (_x, _t, {"label_smoothing": torch.tensor(0.1)}),
    "sum_weight_ls": (_x, _t, {"reduction": "sum", "weight": _w, "label_smoothing": 0.3}),
    "none": (_x, _t, {"reduction": "none"}),
    "unnormalised_targets": (_x, _t * 3.7, {"weight": _w}),
    "negative_targets": (_x, torch.randn(8, 17, dtype=D), {"reduction": "none"}),
    "zero_target_row": (_x, _t0, {"reduction": "none"}),
    "zero_target_row_ls": (_x, _t0, {"label_smoothing": 0.2}),
    "z_loss": (_x, _t, {"z_loss": 1e-2}),
    "softcap": (_x * 10, _t, {"softcap": 5.0}),
    "sample_weight_sum": (_x, _t, {"sample_weight": _sw, "reduction": "sum"}),
    "sample_weight_none_zloss": (
        _x,
        _t,
        {"sample_weight": _sw, "reduction": "none", "z_loss": 0.1},
    ),
    "everything": (
        _x * 10,
        _t * 2,
        {
            "sample_weight": _sw,
            "weight": _w,
            "label_smoothing": 0.1,
            "z_loss": 0.1,
            "softcap": 3.0,
        },
    ),
    "huge_logits": (
        _x.clone().index_put_(
            (torch.tensor([1, 2]), torch.tensor([2, 5])), torch.tensor([1e30, -1e30], dtype=D)
        ),
        _t,
        {"reduction": "none"},
    ),
    "noncontig_logits": (_x.t().contiguous().t(), _t, {}),
    "noncontig_target": (_x, torch.cat([_t, _t], 1)[:, ::2], {"label_smoothing": 0.1}),
    "one_row": (_x[:1], _t[:1], {"reduction": "none"}),
    "one_class": (_x[:, :1], _t[:, :1], {"reduction": "none"}),
}


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("case", list(CASES))
def test_float64_matches_reference(case, mode):
    x, t, kw = CASES[case]
    _close(_ours(x, t, mode, **kw), _ref(x, t, **kw))


def _special(kind):
    x, t = _data()
    if kind == "nan_logit":
        x[1, 3] = float("nan")
    elif kind == "inf_logit":
        x[1, 3] = float("inf")
    elif kind == "neginf_logit":
        x[1, 3] = float("-inf")
    elif kind == "neginf_logit_zero_target":
        x[1, 3] = float("-inf")
        t[1, 3] = 0.0
    elif kind == "row_all_neginf":
        x[4] = float("-inf")
    elif kind == "nan_target":
        t[1, 3] = float("nan")
    return x, t


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "kind",
    [
        "nan_logit",
        "inf_logit",
        "neginf_logit",
        "neginf_logit_zero_target",
        "row_all_neginf",
        "nan_target",
    ],
)
def test_non_finite_like_F(kind, mode):
    x, t = _special(kind)
    for red in ("none", "mean"):
        _close(_ours(x, t, mode, reduction=red), _ref(x, t, reduction=red))


@pytest.mark.parametrize("mode", MODES)
def test_empty_and_ncd(mode):
    x, t = _data()
    for red in ("mean", "sum", "none"):
        _close(_ours(x[:0], t[:0], mode, reduction=red), _ref(x[:0], t[:0], reduction=red))
    g = torch.Generator().manual_seed(3)
    x3 = torch.randn(4, 17, 5, dtype=D, generator=g)
    t3 = torch.softmax(torch.randn(4, 17, 5, dtype=D, generator=g), 1)
    for red in ("mean", "none"):
        a = _ours(x3, t3, mode, reduction=red, label_smoothing=0.1)
        x3r = x3.clone().requires_grad_(True)
        lr = F.cross_entropy(x3r, t3, reduction=red, label_smoothing=0.1)
        (gr,) = torch.autograd.grad(lr.sum(), x3r)
        _close(a, (lr.detach(), gr))


DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]


@pytest.mark.parametrize("tdt", DTYPES)
@pytest.mark.parametrize("xdt", DTYPES)
def test_mixed_dtypes(xdt, tdt):
    x, t = _data()
    x, t = x.to(xdt), t.to(tdt)
    ref = _ref(x, t, reduction="none")
    comp = _ours(x, t, "compiled", reduction="none")
    tor = _ours(x, t, "torch", reduction="none")
    for got in (comp, tor):
        assert got[0].dtype == ref[0].dtype
        assert got[1].dtype == ref[1].dtype == xdt
        # the reference rounds log_softmax to the logits' dtype; ours accumulates in float32
        torch.testing.assert_close(got[0].double(), ref[0].double(), rtol=1e-2, atol=1e-2)
        torch.testing.assert_close(got[1].double(), ref[1].double(), rtol=1e-2, atol=2e-3)
    # compiled vs torch-op kernels: a few ulps
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(xdt, 1e-2)
    torch.testing.assert_close(comp[0].double(), tor[0].double(), rtol=tol, atol=tol)
    torch.testing.assert_close(comp[1].double(), tor[1].double(), rtol=tol, atol=tol)


def test_target_requires_grad():
    x, t = _data()
    with _compiled():
        xx, tt = x.clone().requires_grad_(), t.clone().requires_grad_()
        loss = cross_entropy(xx, tt, label_smoothing=0.1)
        got = torch.autograd.grad(loss, (xx, tt))
    xr, tr = x.clone().requires_grad_(), t.clone().requires_grad_()
    lr = F.cross_entropy(xr, tr, label_smoothing=0.1)
    want = torch.autograd.grad(lr, (xr, tr))
    torch.testing.assert_close(loss, lr)
    torch.testing.assert_close(got, want)


def test_sample_weight_requires_grad():
    x, t = _data()
    sw = _sw.clone().requires_grad_()
    with _compiled():
        xx = x.clone().requires_grad_()
        loss = cross_entropy(xx, t, sample_weight=sw, label_smoothing=0.2)
        got = torch.autograd.grad(loss, (xx, sw))
    sw2 = _sw.clone().requires_grad_()
    xr = x.clone().requires_grad_()
    lr = (F.cross_entropy(xr, t, reduction="none", label_smoothing=0.2) * sw2).mean()
    want = torch.autograd.grad(lr, (xr, sw2))
    torch.testing.assert_close(loss, lr)
    torch.testing.assert_close(got, want)


def test_double_backward_and_retained_graph():
    x, t = _data()
    with _compiled():
        xx = x.clone().requires_grad_()
        loss = cross_entropy(xx, t, z_loss=0.1, label_smoothing=0.1)
        (g,) = torch.autograd.grad(loss, xx, create_graph=True)
        (h,) = torch.autograd.grad((g * g).sum(), xx)
        xs = x.clone().requires_grad_()
        ls = cross_entropy(xs, t, reduction="sum")
        ls.backward(retain_graph=True)
        g1 = xs.grad.clone()
        ls.backward()
    xr = x.clone().requires_grad_()
    lr = F.cross_entropy(xr, t, label_smoothing=0.1) + 0.1 * (torch.logsumexp(xr, 1) ** 2).mean()
    (gr,) = torch.autograd.grad(lr, xr, create_graph=True)
    (hr,) = torch.autograd.grad((gr * gr).sum(), xr)
    torch.testing.assert_close(g.detach(), gr.detach())
    torch.testing.assert_close(h, hr)
    torch.testing.assert_close(xs.grad, 2 * g1)


def test_func_grad_and_compile_fullgraph():
    x, t = _data()
    with _compiled():
        fg = torch.func.grad(lambda z: cross_entropy(z, t, label_smoothing=0.1))(x)
        cf = torch.compile(lambda z, y: cross_entropy(z, y, label_smoothing=0.1), fullgraph=True)
        xx = x.clone().requires_grad_()
        loss = cf(xx, t)
        loss.backward()
    xr = x.clone().requires_grad_()
    lr = F.cross_entropy(xr, t, label_smoothing=0.1)
    lr.backward()
    torch.testing.assert_close(fg, xr.grad)
    torch.testing.assert_close(loss, lr)
    torch.testing.assert_close(xx.grad, xr.grad)


def test_autocast_bf16():
    x, t = _data()
    x, t = x.float(), t.float()
    with _compiled(), torch.autocast("cpu", dtype=torch.bfloat16):
        xx = x.clone().requires_grad_()
        loss = cross_entropy(xx, t)
        lr = F.cross_entropy(x, t)
    assert loss.dtype == lr.dtype == torch.float32
    torch.testing.assert_close(loss, lr)
    loss.backward()
    assert xx.grad.dtype == torch.float32


def test_deterministic_and_inputs_untouched():
    x, t = _data()
    x0, t0 = x.clone(), t.clone()
    with _compiled():
        a = _ours(x, t, "compiled", reduction="none", label_smoothing=0.1)
        b = _ours(x, t, "compiled", reduction="none", label_smoothing=0.1)
        xx = x.clone().requires_grad_()
        cross_entropy(xx, t, label_smoothing=0.1).backward()
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert torch.equal(x, x0) and torch.equal(t, t0)
    assert torch.equal(xx.detach(), x0)


def test_natural_size_auto_vs_torch_vs_F():
    # above 2**22 logits the compiled passes run without any override
    g = torch.Generator().manual_seed(4)
    n, c = 257, 2**14 + 3
    x = torch.randn(n, c, generator=g)
    t = torch.softmax(torch.randn(n, c, generator=g), -1)
    assert x.numel() > 2**22
    out = {}
    for impl in ("auto", "torch"):
        xx = x.clone().requires_grad_()
        loss = cross_entropy(xx, t, label_smoothing=0.1, impl=impl)
        loss.backward()
        out[impl] = (loss.detach(), xx.grad)
    xr = x.double().requires_grad_()
    lr = F.cross_entropy(xr, t.double(), label_smoothing=0.1)
    lr.backward()
    for got in out.values():
        torch.testing.assert_close(got[0].double(), lr.detach(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(got[1].double(), xr.grad, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(out["auto"][0], out["torch"][0], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(out["auto"][1], out["torch"][1], rtol=1e-5, atol=1e-10)
