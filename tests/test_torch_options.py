"""z_loss, softcap and sample_weight in ``crossentropy.torch`` (docs/guide/options.rst).

Every path is compared with a composition of plain torch ops differentiated by autograd:
``x' = c·tanh(x/c)``, ``F.cross_entropy(x', reduction="none")``, ``z·w_y·logsumexp(x')²``,
times the sample weights, reduced over PyTorch's denominator. ``impl="torch"`` forces the
fused/recomputing kernels (``"auto"`` sends problems this small to the composite path).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = pytest.importorskip("torch.nn.functional")

import crossentropy.torch as cet  # noqa: E402

F64 = torch.float64


def reference(x, y, w=None, reduction="mean", eps=0.0, z=0.0, cap=None, sw=None, ignore=-100):
    """The definition in docs/guide/options.rst, in plain torch ops."""
    xs = x if cap is None else cap * torch.tanh(x / cap)
    per = F.cross_entropy(xs, y, w, ignore_index=ignore, reduction="none", label_smoothing=eps)
    cls = 1 if x.dim() >= 2 else 0
    if y.is_floating_point():
        tw = torch.ones_like(per)
        denom = per.numel()
    else:
        valid = y != ignore
        safe = torch.where(valid, y, 0)
        tw = valid.to(per.dtype) if w is None else torch.where(valid, w[safe], 0.0)
        denom = tw.sum()
    per = per + z * tw * torch.logsumexp(xs, dim=cls) ** 2
    if sw is not None:
        per = per * sw
        if not y.is_floating_point():
            per = torch.where(y != ignore, per, 0.0)
    if reduction == "none":
        return per
    return per.sum() / denom if reduction == "mean" else per.sum()


def _case(shape, prob, seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, dtype=F64, generator=g) * scale
    num_classes = shape[1] if len(shape) >= 2 else shape[0]
    rows = (shape[0], *shape[2:]) if len(shape) >= 2 else ()
    if prob:
        y = torch.softmax(torch.randn(shape, dtype=F64, generator=g), dim=1 if rows else 0)
    else:
        y = torch.randint(0, num_classes, rows, generator=g)
        if y.numel() > 1:
            y.view(-1)[1] = -100
    sw = torch.randn(rows, dtype=F64, generator=g)
    w = torch.rand(num_classes, dtype=F64, generator=g) + 0.5
    return x, y, w, sw


def _upstream(out, seed=1):
    if out.dim() == 0:
        return torch.tensor(1.7, dtype=out.dtype)
    return torch.randn(out.shape, dtype=out.dtype, generator=torch.Generator().manual_seed(seed))


def _both(x, y, kwargs, impl="torch"):
    """(ours, reference) values and input gradients for a random upstream."""
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a = cet.cross_entropy(xa, y, impl=impl, **kwargs)
    ref_kw = {
        "w": kwargs.get("weight"),
        "reduction": kwargs.get("reduction", "mean"),
        "eps": kwargs.get("label_smoothing", 0.0),
        "z": kwargs.get("z_loss", 0.0),
        "cap": kwargs.get("softcap"),
        "sw": kwargs.get("sample_weight"),
    }
    b = reference(xb, y, **ref_kw)
    u = _upstream(b)
    (a * u).sum().backward()
    (b * u).sum().backward()
    return a, b, xa.grad, xb.grad


OPTION_GRID = list(
    itertools.product(
        [False, True],  # probability targets
        ["mean", "sum", "none"],
        [0.0, 0.1],  # label smoothing
        [0.0, 1e-2],  # z_loss
        [None, 2.5],  # softcap
        [False, True],  # class weights
        [False, True],  # sample weights
    )
)


@pytest.mark.parametrize("shape", [(7,), (5, 7), (4, 7, 3)])
def test_every_combination_matches_the_definition_float64(shape):
    worst = 0.0
    for prob, red, eps, z, cap, use_w, use_sw in OPTION_GRID:
        x, y, w, sw = _case(shape, prob)
        kwargs = {
            "reduction": red,
            "label_smoothing": eps,
            "z_loss": z,
            "softcap": cap,
            "weight": w if use_w else None,
            "sample_weight": sw if use_sw else None,
        }
        a, b, ga, gb = _both(x, y, kwargs)
        err = max(float((a - b).abs().max()), float((ga - gb).abs().max()))
        assert err < 1e-12, (prob, red, eps, z, cap, use_w, use_sw, err)
        worst = max(worst, err)
    assert worst > 0.0 or shape == (7,)  # the comparison saw real arithmetic


@pytest.mark.parametrize("block_rows", [1, 3])
def test_blocked_recompute_and_fused_sweeps_agree(tuned, block_rows):
    """Blocks smaller than the batch (every block boundary), fused ("mean") and recomputing
    ("none" with a random upstream) passes."""
    tuned(block_elements=block_rows * 11)
    x, y, w, sw = _case((9, 11), False, seed=3)
    for red in ("mean", "none"):
        kw = {"reduction": red, "weight": w, "z_loss": 0.05, "softcap": 3.0, "sample_weight": sw}
        a, b, ga, gb = _both(x, y, kw)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_linear_form_matches_the_definition_float64():
    g = torch.Generator().manual_seed(5)
    h = torch.randn(3, 4, 6, dtype=F64, generator=g)
    weight = torch.randn(9, 6, dtype=F64, generator=g) * 2
    bias = torch.randn(9, dtype=F64, generator=g)
    y = torch.randint(0, 9, (3, 4), generator=g)
    y[0, 1] = -100
    cw = torch.rand(9, dtype=F64, generator=g) + 0.5
    sw = torch.randn(3, 4, dtype=F64, generator=g)
    for red, eps, z, cap, use_b, use_sw in itertools.product(
        ["mean", "sum", "none"], [0.0, 0.2], [0.0, 0.03], [None, 2.0], [False, True], [False, True]
    ):
        params = [h, weight] + ([bias] if use_b else [])
        pa = [p.clone().requires_grad_() for p in params]
        pb = [p.clone().requires_grad_() for p in params]
        kw = {
            "reduction": red,
            "label_smoothing": eps,
            "class_weight": cw,
            "z_loss": z,
            "softcap": cap,
            "sample_weight": sw if use_sw else None,
        }
        a = cet.linear_cross_entropy(
            pa[0], pa[1], y, pa[2] if use_b else None, chunk_size=5, impl="torch", **kw
        )
        logits = pb[0] @ pb[1].T + (pb[2] if use_b else 0.0)
        b = reference(
            logits.reshape(-1, 9),
            y.reshape(-1),
            cw,
            red,
            eps,
            z,
            cap,
            None if not use_sw else sw.reshape(-1),
        )
        b = b.reshape(3, 4) if red == "none" else b
        u = _upstream(b)
        (a * u).sum().backward()
        (b * u).sum().backward()
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        for p, q in zip(pa, pb, strict=True):
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-12)


def test_defaults_reproduce_the_call_without_them_bit_for_bit():
    x = torch.randn(64, 300) * 3
    y = torch.randint(0, 300, (64,))
    y[3] = -100
    for red in ("mean", "sum", "none"):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = cet.cross_entropy(xa, y, reduction=red, label_smoothing=0.1, impl="torch")
        b = cet.cross_entropy(
            xb,
            y,
            reduction=red,
            label_smoothing=0.1,
            impl="torch",
            z_loss=np.float64(0.0),
            softcap=None,
            sample_weight=None,
        )
        u = _upstream(a.detach())
        (a * u).sum().backward()
        (b * u).sum().backward()
        assert torch.equal(a, b) and torch.equal(xa.grad, xb.grad)


def test_sample_weights_of_one_reproduce_the_unweighted_loss_bit_for_bit():
    x, y, w, _ = _case((33, 50), False, seed=7)
    x = x.float()
    for red in ("mean", "sum", "none"):
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        a = cet.cross_entropy(xa, y, w.float(), reduction=red, z_loss=1e-3, impl="torch")
        b = cet.cross_entropy(
            xb,
            y,
            w.float(),
            reduction=red,
            z_loss=1e-3,
            impl="torch",
            sample_weight=torch.ones(33),
        )
        u = _upstream(a.detach())
        (a * u).sum().backward()
        (b * u).sum().backward()
        assert torch.equal(a, b) and torch.equal(xa.grad, xb.grad)


def test_sample_weights_do_not_change_the_mean_denominator_and_act_linearly():
    x, y, _, sw = _case((20, 8), False, seed=9)
    kept = int((y != -100).sum())
    per = cet.cross_entropy(x, y, reduction="none", impl="torch")
    mean = cet.cross_entropy(x, y, sample_weight=sw, impl="torch")
    torch.testing.assert_close(mean, (per * sw).sum() / kept, rtol=1e-13, atol=0)
    twice = cet.cross_entropy(x, y, sample_weight=2 * sw, impl="torch")
    torch.testing.assert_close(twice, 2 * mean, rtol=1e-14, atol=0)


def test_ignored_positions_are_zero_whatever_their_sample_weight():
    x, y, _, sw = _case((6, 5), False, seed=11)
    sw = sw.clone()
    sw[1] = float("nan")  # position 1 is ignored (see _case)
    for red in ("mean", "none"):
        xa = x.clone().requires_grad_()
        out = cet.cross_entropy(xa, y, reduction=red, sample_weight=sw, impl="torch")
        out.sum().backward()
        assert torch.isfinite(out).all()
        assert torch.equal(xa.grad[1], torch.zeros(5, dtype=F64))


def test_softcap_tends_to_the_identity():
    x, y, w, sw = _case((10, 12), False, seed=13)
    kw = {"weight": w, "sample_weight": sw, "z_loss": 1e-3}
    a, _, ga, _ = _both(x, y, {**kw, "softcap": 1e8})
    b, _, gb, _ = _both(x, y, kw)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-12)


def test_liger_z_loss_definition_without_class_weights():
    """Liger-Kernel (src/liger_kernel/ops/cross_entropy.py): ``z_loss = lse_square_scale *
    lse * lse`` per non-ignored token, added to the token's loss, and ``"mean"`` divides both
    by ``n_non_ignore``; flash-attn's xentropy kernel has the same ``lse_square_scale``."""
    x, y, _, _ = _case((16, 40), False, seed=15)
    scale = 1e-4
    keep = y != -100
    lse = torch.logsumexp(x, dim=1)
    nll = lse - x.gather(1, torch.where(keep, y, 0)[:, None])[:, 0]
    liger = ((nll + scale * lse * lse) * keep).sum() / keep.sum()
    ours = cet.cross_entropy(x, y, z_loss=scale, impl="torch")
    torch.testing.assert_close(ours, liger, rtol=1e-14, atol=0)


def test_gemma_softcap_definition():
    """Gemma 2 (``final_logit_softcapping=30.0``): ``logits = tanh(logits / cap) * cap``
    before the loss; Liger-Kernel and Cut Cross-Entropy apply the same map."""
    x, y, _, _ = _case((12, 30), False, seed=17, scale=40.0)
    capped = torch.tanh(x / 30.0) * 30.0
    expected = F.cross_entropy(capped, y)
    ours = cet.cross_entropy(x, y, softcap=30.0, impl="torch")
    torch.testing.assert_close(ours, expected, rtol=1e-14, atol=0)


def test_inplace_backward_matches_the_out_of_place_gradient():
    x, y, w, sw = _case((16, 20), False, seed=19)
    x = x.float()
    kw = {"weight": w.float(), "z_loss": 0.01, "softcap": 5.0, "sample_weight": sw.float()}
    leaf = x.clone().requires_grad_()
    loss = cet.cross_entropy(leaf * 1.0, y, inplace_backward=True, impl="torch", **kw)
    loss.backward()
    ref_leaf = x.clone().requires_grad_()
    ref = cet.cross_entropy(ref_leaf, y, impl="torch", **kw)
    ref.backward()
    torch.testing.assert_close(loss, ref)
    torch.testing.assert_close(leaf.grad, ref_leaf.grad)


@pytest.mark.parametrize("prob", [False, True])
def test_double_backward(prob):
    x, y, w, sw = _case((4, 6), prob, seed=21)
    kw = {"z_loss": 0.1, "softcap": 3.0, "sample_weight": sw, "label_smoothing": 0.1}

    def f(x):
        return cet.cross_entropy(x, y, w, impl="torch", **kw)

    xr = x.clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (xr,))
    assert torch.autograd.gradgradcheck(f, (xr,))
    hess = torch.autograd.functional.hessian(f, x)
    expected = torch.autograd.functional.hessian(
        lambda x: reference(x, y, w, "mean", 0.1, 0.1, 3.0, sw), x
    )
    torch.testing.assert_close(hess, expected, rtol=1e-10, atol=1e-12)


def test_linear_double_backward():
    g = torch.Generator().manual_seed(23)
    h = torch.randn(5, 3, dtype=F64, generator=g, requires_grad=True)
    weight = torch.randn(4, 3, dtype=F64, generator=g, requires_grad=True)
    y = torch.randint(0, 4, (5,), generator=g)
    sw = torch.rand(5, dtype=F64, generator=g)

    def f(h, weight):
        return cet.linear_cross_entropy(
            h, weight, y, z_loss=0.1, softcap=2.0, sample_weight=sw, impl="torch", chunk_size=2
        )

    assert torch.autograd.gradgradcheck(f, (h, weight))


def test_torch_func_and_compile():
    x, y, w, sw = _case((6, 9), False, seed=25)
    kw = {"weight": w, "z_loss": 0.02, "softcap": 4.0, "sample_weight": sw}
    expected = torch.func.grad(lambda x: reference(x, y, w, "mean", 0.0, 0.02, 4.0, sw))(x)
    got = torch.func.grad(lambda x: cet.cross_entropy(x, y, impl="torch", **kw))(x)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)

    def step(x):
        return cet.cross_entropy(x, y, impl="torch", **kw)

    explained = torch._dynamo.explain(step)(x.clone().requires_grad_())
    assert explained.graph_break_count == 0
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    xc = x.clone().requires_grad_()
    compiled(xc).backward()
    torch.testing.assert_close(xc.grad, expected, rtol=1e-12, atol=1e-12)


def test_meta_tensors_give_shapes():
    x = torch.empty(8, 5, 3, device="meta")
    y = torch.empty(8, 3, dtype=torch.int64, device="meta")
    sw = torch.empty(8, 3, device="meta")
    out = cet.cross_entropy(x, y, reduction="none", z_loss=0.1, softcap=2.0, sample_weight=sw)
    assert out.shape == (8, 3) and out.device.type == "meta"


def test_autocast_bfloat16_with_softcap_and_z_loss():
    x, y, _, sw = _case((32, 64), False, seed=27, scale=20.0)
    xb = x.to(torch.bfloat16).requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = cet.cross_entropy(xb, y, z_loss=1e-3, softcap=15.0, sample_weight=sw, impl="torch")
    assert loss.dtype == torch.float32
    loss.backward()
    x64 = xb.detach().to(F64).requires_grad_()
    ref = reference(x64, y, None, "mean", 0.0, 1e-3, 15.0, sw)
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xb.grad.double(), x64.grad, rtol=2e-2, atol=1e-4)


def test_float16_z_loss_keeps_the_scaled_gradient_finite_and_accurate():
    """The fused float16 gradient is prescaled by a power of two chosen before the sweep;
    with a z-loss its bound includes ``2 z lse`` (from ``max |x|``), so nothing overflows."""
    g = torch.Generator().manual_seed(29)
    x = (torch.randn(2048, 512, generator=g) * 30).half()
    y = torch.randint(0, 512, (2048,), generator=g)
    xa = x.clone().requires_grad_()
    loss = cet.cross_entropy(xa, y, z_loss=0.5, impl="torch")
    (loss * 4096.0).backward()
    x64 = x.double().requires_grad_()
    (reference(x64, y, z=0.5) * 4096.0).backward()
    got = xa.grad.double()
    assert torch.isfinite(got).all()
    err = (got - x64.grad).abs().max() / x64.grad.abs().max()
    assert err < 2e-3


def test_sample_weight_that_requires_grad_is_differentiated():
    x, y, _, sw = _case((7, 5), False, seed=31)
    swa = sw.clone().requires_grad_()
    loss = cet.cross_entropy(x, y, sample_weight=swa, z_loss=0.1, impl="torch")
    loss.backward()
    per = reference(x, y, reduction="none", z=0.1)
    kept = int((y != -100).sum())
    torch.testing.assert_close(swa.grad, per / kept, rtol=1e-13, atol=1e-15)


def test_large_logits_stay_accurate_with_softcap():
    x = torch.randn(8, 1000, dtype=torch.float32) + 1e4
    y = torch.randint(0, 1000, (8,))
    xa = x.clone().requires_grad_()
    out = cet.cross_entropy(xa, y, softcap=50.0, z_loss=1e-4, impl="torch")
    out.backward()
    x64 = x.double().requires_grad_()
    ref = reference(x64, y, z=1e-4, cap=50.0)
    ref.backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(xa.grad.double(), x64.grad, rtol=1e-5, atol=1e-9)


def test_modules_take_the_options():
    x, y, w, sw = _case((6, 9), False, seed=33)
    loss = cet.CrossEntropyLoss(w, z_loss=0.01, softcap=3.0, impl="torch")
    assert isinstance(loss, torch.nn.CrossEntropyLoss)
    assert "z_loss=0.01" in repr(loss) and "softcap=3.0" in repr(loss)
    torch.testing.assert_close(
        loss(x, y, sample_weight=sw), reference(x, y, w, z=0.01, cap=3.0, sw=sw)
    )
    g = torch.Generator().manual_seed(35)
    h = torch.randn(6, 4, dtype=F64, generator=g)
    head = torch.randn(9, 4, dtype=F64, generator=g)
    lin = cet.LinearCrossEntropyLoss(z_loss=0.01, softcap=3.0, impl="torch")
    torch.testing.assert_close(
        lin(h, head, y, sample_weight=sw),
        reference(h @ head.T, y, z=0.01, cap=3.0, sw=sw),
    )
    with pytest.raises(ValueError, match="CrossEntropyLoss: z_loss must be"):
        cet.CrossEntropyLoss(z_loss=-1.0)
    with pytest.raises(ValueError, match="LinearCrossEntropyLoss: softcap must be"):
        cet.LinearCrossEntropyLoss(softcap=0.0)


BAD_Z = [
    (-0.1, ValueError),
    (math.nan, ValueError),
    (math.inf, ValueError),
    (True, TypeError),
    ("0.1", TypeError),
    (torch.tensor([0.1]), TypeError),
]
BAD_CAP = [
    (0.0, ValueError),
    (-2.0, ValueError),
    (math.inf, ValueError),
    (math.nan, ValueError),
    (False, TypeError),
    ("30", TypeError),
]


@pytest.mark.parametrize(("value", "error"), BAD_Z)
def test_bad_z_loss_is_refused(value, error):
    x, y, _, _ = _case((4, 5), False)
    with pytest.raises(error, match="cross_entropy: z_loss must be a finite float >= 0"):
        cet.cross_entropy(x, y, z_loss=value)
    h = torch.randn(4, 3, dtype=F64)
    with pytest.raises(error, match="linear_cross_entropy: z_loss must be"):
        cet.linear_cross_entropy(h, torch.randn(5, 3, dtype=F64), y, z_loss=value)


@pytest.mark.parametrize(("value", "error"), BAD_CAP)
def test_bad_softcap_is_refused(value, error):
    x, y, _, _ = _case((4, 5), False)
    with pytest.raises(error, match="cross_entropy: softcap must be None or a finite float > 0"):
        cet.cross_entropy(x, y, softcap=value)


def test_options_accept_numpy_scalars_and_0d_tensors():
    x, y, _, _ = _case((4, 5), False)
    a = cet.cross_entropy(x, y, z_loss=np.float32(0.5), softcap=torch.tensor(2.0))
    b = cet.cross_entropy(x, y, z_loss=0.5, softcap=2.0)
    torch.testing.assert_close(a, b, rtol=1e-7, atol=0)


def test_bad_sample_weight_is_refused():
    x, y, _, _ = _case((4, 5, 2), False)
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4, 2\)"):
        cet.cross_entropy(x, y, sample_weight=torch.ones(4))
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(4, 2\)"):
        cet.cross_entropy(x, y, sample_weight=torch.ones(1, 2))  # no broadcasting
    with pytest.raises(TypeError, match="sample_weight must have a floating-point dtype"):
        cet.cross_entropy(x, y, sample_weight=torch.ones(4, 2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"sample_weight must be a torch\.Tensor"):
        cet.cross_entropy(x, y, sample_weight=[[1.0, 1.0]] * 4)
    with pytest.raises(ValueError, match="sample_weight must be on the input's device"):
        cet.cross_entropy(x, y, sample_weight=torch.ones(4, 2, device="meta"))
    h = torch.randn(3, 2, 4, dtype=F64)
    with pytest.raises(ValueError, match=r"linear_cross_entropy: sample_weight must have shape"):
        cet.linear_cross_entropy(
            h,
            torch.randn(5, 4, dtype=F64),
            torch.zeros(3, 2, dtype=torch.int64),
            sample_weight=torch.ones(6),
        )


def test_inputs_are_not_modified():
    x, y, w, sw = _case((5, 6), False, seed=37)
    copies = [t.clone() for t in (x, y, w, sw)]
    xa = x.requires_grad_()
    cet.cross_entropy(xa, y, w, z_loss=0.1, softcap=2.0, sample_weight=sw, impl="torch").backward()
    for t, c in zip((x.detach(), y, w, sw), copies, strict=True):
        assert torch.equal(t, c)


TRITON_GRID = list(
    itertools.product(
        [False, True],  # probability targets
        ["mean", "none"],
        [0.0, 0.1],
        [0.0, 1e-2],
        [None, 2.5],
        [False, True],  # class and sample weights
    )
)


def test_triton_path_end_to_end_matches_the_definition():
    """``impl="triton"`` (interpreted on CPU here) through the public function: fused and
    recomputing sweeps, index and probability targets, every option."""
    pytest.importorskip("triton")
    from crossentropy.torch import _backend as B

    if not B.triton_interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest) or a GPU")
    for prob, red, eps, z, cap, weighted in TRITON_GRID:
        x, y, w, sw = _case((6, 40), prob, seed=41)
        x32 = x.float()
        kw = {
            "reduction": red,
            "label_smoothing": eps,
            "z_loss": z,
            "softcap": cap,
            "weight": w.float() if weighted else None,
            "sample_weight": sw.float() if weighted else None,
        }
        xa = x32.clone().requires_grad_()
        a = cet.cross_entropy(xa, y.float() if prob else y, impl="triton", **kw)
        x64 = x32.double().requires_grad_()
        b = reference(
            x64,
            y,
            w if weighted else None,
            red,
            eps,
            z,
            cap,
            sw.float().double() if weighted else None,
        )
        u = _upstream(b)
        (a.double() * u).sum().backward()
        (b * u).sum().backward()
        torch.testing.assert_close(a.double(), b, rtol=2e-6, atol=2e-6)
        torch.testing.assert_close(xa.grad.double(), x64.grad, rtol=1e-5, atol=2e-7)


def test_triton_linear_and_inplace_with_the_options():
    pytest.importorskip("triton")
    from crossentropy.torch import _backend as B

    if not B.triton_interpreted():
        pytest.skip("needs TRITON_INTERPRET=1 (set by conftest) or a GPU")
    g = torch.Generator().manual_seed(43)
    h = torch.randn(10, 8, generator=g)
    weight = torch.randn(33, 8, generator=g)
    y = torch.randint(0, 33, (10,), generator=g)
    y[4] = -100
    sw = torch.randn(10, generator=g)
    kw = {"z_loss": 0.01, "softcap": 3.0, "sample_weight": sw, "label_smoothing": 0.1}
    ha, wa = h.clone().requires_grad_(), weight.clone().requires_grad_()
    cet.linear_cross_entropy(ha, wa, y, chunk_size=4, impl="triton", **kw).backward()
    hb, wb = h.double().requires_grad_(), weight.double().requires_grad_()
    reference(hb @ wb.T, y, None, "mean", 0.1, 0.01, 3.0, sw.double()).backward()
    torch.testing.assert_close(ha.grad.double(), hb.grad, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(wa.grad.double(), wb.grad, rtol=1e-5, atol=1e-6)
    logits = (h @ weight.T).detach()
    leaf = logits.clone().requires_grad_()
    cet.cross_entropy(leaf * 1.0, y, inplace_backward=True, impl="triton", **kw).backward()
    ref_leaf = logits.double().requires_grad_()
    reference(ref_leaf, y, None, "mean", 0.1, 0.01, 3.0, sw.double()).backward()
    torch.testing.assert_close(leaf.grad.double(), ref_leaf.grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("value", [1e39, 1e-39, 2.0**128])
def test_softcap_outside_float32_range_is_refused_not_nan(value):
    """A cap whose ``x / c`` or ``1 / c`` overflows float32 made float32 logits NaN silently."""
    x, y, _, _ = _case((4, 5), False)
    with pytest.raises(ValueError, match=r"softcap must be in \[2\*\*-126, 2\*\*127\]"):
        cet.cross_entropy(x.float(), y, softcap=value)
    with pytest.raises(ValueError, match=r"softcap must be in \[2\*\*-126, 2\*\*127\]"):
        cet.token_stats(x.float(), y.clamp(min=0), softcap=value)
    import crossentropy as ce

    with pytest.raises(ValueError, match=r"softcap must be in \[2\*\*-126, 2\*\*127\]"):
        ce.cross_entropy(x.numpy().astype(np.float32), y.numpy(), softcap=value)
    edge = cet.cross_entropy(x.float(), y, softcap=2.0**127)
    assert torch.isfinite(edge)
