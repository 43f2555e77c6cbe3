"""Drop-in conformance: the same scenarios through ``torch.nn.functional`` and through
``crossentropy.torch``, side by side, in every mode a user of ``F.cross_entropy`` relies on.

Unless a test says otherwise it runs the fused kernels (``force_fused``), which is the path
that needs proving; the direct path for small problems *is* ``F.cross_entropy``.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
import warnings

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import crossentropy.torch as cet  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

C = 5
OPTIONS = [
    dict(reduction=r, weight=w, ignore=i, eps=e)
    for r, w, i, e in itertools.product(
        ["mean", "sum", "none"], [False, True], [False, True], [0.0, 0.3]
    )
]


def _options_id(o: dict[str, object]) -> str:
    return f"{o['reduction']}-w{int(bool(o['weight']))}-i{int(bool(o['ignore']))}-e{o['eps']}"


def _case(o, shape=(4, C), dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=dtype) * 2
    rows = shape[:1] + shape[2:]
    t = torch.randint(0, C, rows, generator=g)
    if o["ignore"]:
        t.view(-1)[::3] = -100
    kw = dict(reduction=o["reduction"], label_smoothing=o["eps"])
    if o["weight"]:
        kw["weight"] = (torch.rand(C, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return x, t, kw


def _prob_case(shape=(4, C), seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    y = torch.softmax(torch.randn(shape, generator=g, dtype=torch.float64), dim=1)
    return x, y


# --------------------------------------------------------------------------- higher order


@pytest.mark.parametrize("o", OPTIONS, ids=_options_id)
def test_hessian_matches_torch(o):
    x, t, kw = _case(o)
    hs = [
        torch.autograd.functional.hessian(lambda z, fn=fn: fn(z, t, **kw).sum(), x)
        for fn in (cet.cross_entropy, F.cross_entropy)
    ]
    torch.testing.assert_close(hs[0], hs[1])
    assert hs[0].abs().max() > 1e-3  # not the silent zero Hessian


@pytest.mark.parametrize("o", OPTIONS, ids=_options_id)
def test_gradgradcheck_option_grid(o):
    x, t, kw = _case(o, shape=(3, C, 2))
    x.requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: cet.cross_entropy(z, t, **kw), (x,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradgradcheck_probability_targets(reduction):
    x, y = _prob_case((3, C, 2))
    w = torch.rand(C, dtype=torch.float64) + 0.5
    x.requires_grad_()
    fn = lambda z: cet.cross_entropy(z, y, w, reduction=reduction, label_smoothing=0.2)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x,))
    assert torch.autograd.gradcheck(fn, (x,))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_linear_gradgradcheck(reduction):
    g = torch.Generator().manual_seed(1)
    h = torch.randn(6, 3, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(C, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(C, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0, 1, 2, 3, 4, -100])
    cw = torch.rand(C, generator=g, dtype=torch.float64) + 0.5

    def fn(h, w, b):
        return cet.linear_cross_entropy(
            h, w, t, b, reduction=reduction, label_smoothing=0.1, class_weight=cw
        )

    assert torch.autograd.gradcheck(fn, (h, w, b))
    assert torch.autograd.gradgradcheck(fn, (h, w, b))


def _penalty_grads(fn, linear_form=False):
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, C).double()
    h = torch.randn(8, 3, dtype=torch.float64)
    t = torch.randint(0, C, (8,))
    if linear_form:
        loss = fn(h, lin.weight, t, lin.bias)
    else:
        loss = fn(lin(h), t, label_smoothing=0.1)
    (gw,) = torch.autograd.grad(loss, lin.weight, create_graph=True)
    (loss + gw.square().sum()).backward()
    return lin.weight.grad, lin.bias.grad


def test_gradient_penalty_matches_torch():
    ours = _penalty_grads(cet.cross_entropy)
    ref = _penalty_grads(F.cross_entropy)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def test_linear_gradient_penalty_matches_torch():
    ours = _penalty_grads(cet.linear_cross_entropy, linear_form=True)
    ref = _penalty_grads(lambda h, w, t, b: F.cross_entropy(F.linear(h, w, b), t), linear_form=True)
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(a, b)


def _maml(fn):
    g = torch.Generator().manual_seed(3)
    w = torch.randn(C, 4, generator=g, dtype=torch.float64, requires_grad=True)
    xs, xq = (
        torch.randn(10, 4, generator=g, dtype=torch.float64),
        torch.randn(10, 4, generator=g, dtype=torch.float64),
    )
    ts, tq = torch.randint(0, C, (10,), generator=g), torch.randint(0, C, (10,), generator=g)
    (gi,) = torch.autograd.grad(fn(xs @ w.T, ts), w, create_graph=True)
    fast = w - 0.5 * gi
    (outer,) = torch.autograd.grad(fn(xq @ fast.T, tq), w)
    return outer


def test_maml_outer_gradient_matches_torch():
    torch.testing.assert_close(_maml(cet.cross_entropy), _maml(F.cross_entropy))


def test_inplace_backward_refuses_double_backward():
    z = torch.randn(4, C, dtype=torch.float64, requires_grad=True)
    loss = cet.cross_entropy(z * 1.0, torch.tensor([0, 1, 2, 3]), inplace_backward=True)
    with pytest.raises(RuntimeError, match=r"double backward .* not supported with inplace"):
        torch.autograd.grad(loss, z, create_graph=True)


# --------------------------------------------------------------------------- torch.func


def _func_case():
    g = torch.Generator().manual_seed(5)
    x = torch.randn(6, C, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 4, -100])
    w = torch.rand(C, generator=g, dtype=torch.float64) + 0.5
    return x, t, w


@pytest.mark.parametrize("fn_name", ["cross_entropy", "linear_cross_entropy"])
def test_torch_func_transforms_match_torch(fn_name):
    x, t, w = _func_case()
    hw = torch.randn(C, 3, dtype=torch.float64)
    h = torch.randn(6, 3, dtype=torch.float64)
    if fn_name == "cross_entropy":
        ours = lambda z: cet.cross_entropy(z, t, w, label_smoothing=0.1)  # noqa: E731
        ref = lambda z: F.cross_entropy(z, t, w, label_smoothing=0.1)  # noqa: E731
        arg = x
    else:
        ours = lambda W: cet.linear_cross_entropy(h, W, t, class_weight=w)  # noqa: E731
        ref = lambda W: F.cross_entropy(h @ W.T, t, w)  # noqa: E731
        arg = hw
    tf = torch.func
    torch.testing.assert_close(tf.grad(ours)(arg), tf.grad(ref)(arg))
    torch.testing.assert_close(tf.jacrev(ours)(arg), tf.jacrev(ref)(arg))
    torch.testing.assert_close(tf.hessian(ours)(arg), tf.hessian(ref)(arg))
    jac = torch.autograd.functional.jacobian
    torch.testing.assert_close(jac(ours, arg, vectorize=True), jac(ref, arg, vectorize=True))


def test_per_sample_gradients_with_vmap():
    x, t, _ = _func_case()
    lin = torch.nn.Linear(C, C).double()
    params = {k: v.detach() for k, v in lin.named_parameters()}

    def loss(fn, p, xi, ti):
        out = torch.func.functional_call(lin, p, (xi.unsqueeze(0),))
        return fn(out, ti.unsqueeze(0))

    keep = t != -100
    xs, ts = x[keep], t[keep]
    per = [
        torch.func.vmap(torch.func.grad(lambda p, a, b, fn=fn: loss(fn, p, a, b)), (None, 0, 0))(
            params, xs, ts
        )
        for fn in (cet.cross_entropy, F.cross_entropy)
    ]
    for k in params:
        torch.testing.assert_close(per[0][k], per[1][k])


# --------------------------------------------------------------------------- torch.compile


def _explain(fn, *args):
    torch._dynamo.reset()
    return torch._dynamo.explain(fn)(*args)


def test_zero_graph_breaks():
    x = torch.randn(16, 64, requires_grad=True)
    t = torch.randint(0, 64, (16,))
    h = torch.randn(16, 8, requires_grad=True)
    w = torch.randn(64, 8, requires_grad=True)
    cw = torch.rand(64) + 0.5
    y = torch.softmax(torch.randn(16, 64), dim=1)
    calls = [
        (lambda x, t: cet.cross_entropy(x, t), (x, t)),
        (lambda x, t: cet.cross_entropy(x, t, cw, label_smoothing=0.1), (x, t)),
        (lambda x, t: cet.cross_entropy(x, t, reduction="none"), (x, t)),
        (lambda x, y: cet.cross_entropy(x, y), (x, y)),
        (lambda h, w, t: cet.linear_cross_entropy(h, w, t), (h, w, t)),
        (lambda h, w, t: cet.LinearCrossEntropyLoss(class_weight=cw)(h, w, t), (h, w, t)),
        (lambda x, t: cet.CrossEntropyLoss(label_smoothing=0.2)(x, t), (x, t)),
    ]
    for fn, args in calls:
        e = _explain(fn, *args)
        assert e.graph_break_count == 0, e.break_reasons
        assert e.graph_count == 1


@pytest.mark.parametrize("o", [OPTIONS[0], OPTIONS[7], OPTIONS[11], OPTIONS[-1]], ids=_options_id)
def test_compiled_fullgraph_forward_backward_matches_eager(o):
    x, t, kw = _case(o, shape=(6, C, 3), dtype=torch.float32)
    compiled = torch.compile(
        lambda z: cet.cross_entropy(z, t, **kw), fullgraph=True, backend="aot_eager"
    )
    torch._dynamo.reset()
    results = []
    for fn in (compiled, lambda z: F.cross_entropy(z, t, **kw)):
        z = x.clone().requires_grad_()
        out = fn(z)
        out.backward(torch.ones_like(out) * 0.5)
        results.append((out.detach(), z.grad))
    torch.testing.assert_close(results[0][0], results[1][0])
    torch.testing.assert_close(results[0][1], results[1][1])


def test_compiled_probability_targets_and_linear():
    torch._dynamo.reset()
    x, y = _prob_case((6, C))
    xs = x.float().requires_grad_()
    out = torch.compile(lambda z: cet.cross_entropy(z, y.float()), fullgraph=True)(xs)
    out.backward()
    ref = x.float().requires_grad_()
    F.cross_entropy(ref, y.float()).backward()
    torch.testing.assert_close(xs.grad, ref.grad)


def test_compiled_linear_training_step_with_inductor():
    """The training step that crashed inductor (``KeyError: 'buf3'``) before the rebuild."""
    torch._dynamo.reset()
    torch.manual_seed(0)

    def make():
        torch.manual_seed(0)
        return torch.nn.Linear(16, 8), torch.nn.Linear(8, 50, bias=True)

    hidden = torch.randn(32, 16)
    t = torch.randint(0, 50, (32,))
    t[::5] = -100
    results = []
    for mode in ("compiled", "eager"):
        body, head = make()
        crit = cet.LinearCrossEntropyLoss(label_smoothing=0.1)
        opt = torch.optim.SGD([*body.parameters(), *head.parameters()], lr=0.1)

        def forward(hidden, t, body=body, head=head, crit=crit):
            return crit(torch.tanh(body(hidden)), head.weight, t, head.bias)

        fn = torch.compile(forward, fullgraph=True) if mode == "compiled" else forward
        losses = []
        for _ in range(3):
            opt.zero_grad()
            loss = fn(hidden, t)
            loss.backward()
            losses.append(loss.detach())
            opt.step()
        results.append((torch.stack(losses), head.weight.detach().clone()))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=1e-5, atol=1e-6)


def test_compiled_bad_target_still_raises_our_error():
    torch._dynamo.reset()
    x = torch.randn(4, C, requires_grad=True)
    fn = torch.compile(lambda z, t: cet.cross_entropy(z, t), fullgraph=True, backend="aot_eager")
    with pytest.raises(Exception, match=r"target must contain class indices in \[0, 5\)"):
        fn(x, torch.tensor([0, 1, 2, 9]))


# --------------------------------------------------------------------------- meta, autocast


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_meta_tensors(reduction):
    x = torch.empty(8, C, 3, device="meta", requires_grad=True)
    t = torch.empty(8, 3, dtype=torch.long, device="meta")
    ours = cet.cross_entropy(x, t, reduction=reduction)
    ref = F.cross_entropy(x, t, reduction=reduction)
    assert ours.shape == ref.shape and ours.dtype == ref.dtype and ours.device == ref.device
    ours.sum().backward()
    assert x.grad.shape == x.shape and x.grad.device.type == "meta"
    h = torch.empty(8, 4, device="meta", requires_grad=True)
    w = torch.empty(C, 4, device="meta", requires_grad=True)
    lo = cet.linear_cross_entropy(h, w, torch.empty(8, dtype=torch.long, device="meta"))
    lo.backward()
    assert h.grad.shape == h.shape and w.grad.shape == w.shape


def test_fake_tensor_mode():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(64, 1000, requires_grad=True)
        t = torch.zeros(64, dtype=torch.long)
        loss = cet.cross_entropy(x, t, label_smoothing=0.1)
        loss.backward()
        assert loss.shape == () and x.grad.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_dtypes_match_torch(dtype):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 300, generator=g).to(dtype).requires_grad_()
    t = torch.randint(0, 300, (64,), generator=g)
    h = torch.randn(64, 16, generator=g, requires_grad=True)
    w = torch.randn(300, 16, generator=g, requires_grad=True)
    y = torch.softmax(torch.randn(64, 300, generator=g), 1).to(dtype)
    with torch.autocast("cpu", dtype=dtype):
        pairs = [
            (cet.cross_entropy(x, t), F.cross_entropy(x, t)),
            (cet.cross_entropy(x, y), F.cross_entropy(x, y)),
            (cet.linear_cross_entropy(h, w, t), F.cross_entropy(F.linear(h, w), t)),
        ]
    for ours, ref in pairs:
        assert ours.dtype == ref.dtype == torch.float32
        torch.testing.assert_close(ours, ref, rtol=2e-2, atol=2e-2)
    ours_g = torch.autograd.grad(pairs[2][0], (h, w))
    ref_g = torch.autograd.grad(pairs[2][1], (h, w))
    for a, b in zip(ours_g, ref_g, strict=True):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-3)


def test_fp16_loss_scaling_keeps_the_gradient():
    """GradScaler-style scale 4096 at N=2048, V=8192 in float16: no more underflow and no
    larger error than F.cross_entropy's (before the rebuild: 74 % of entries were 0)."""
    g = torch.Generator().manual_seed(0)
    n, v, scale = 2048, 8192, 4096.0
    x = torch.randn(n, v, generator=g) * 2
    t = torch.randint(0, v, (n,), generator=g)
    xd = x.double().requires_grad_()
    (F.cross_entropy(xd, t) * scale).backward()
    exact = xd.grad
    stats = []
    for fn in (cet.cross_entropy, F.cross_entropy):
        xh = x.half().requires_grad_()
        (fn(xh, t) * scale).backward()
        gh = xh.grad.double()
        stats.append(
            ((gh == 0).double().mean().item(), ((gh - exact).norm() / exact.norm()).item())
        )
    (z_ours, e_ours), (z_ref, e_ref) = stats
    assert z_ours <= z_ref + 1e-4
    assert e_ours <= 1.2 * e_ref


# --------------------------------------------------------------------------- aliasing, views


@pytest.mark.parametrize("fn_name", ["cross_entropy", "linear_cross_entropy"])
def test_retain_graph_results_are_independent(fn_name):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, C, generator=g, requires_grad=True)
    w = torch.randn(C, 3, generator=g, requires_grad=True)
    h = torch.randn(6, 3, generator=g)
    t = torch.tensor([0, 1, 2, 3, 4, 0])
    if fn_name == "cross_entropy":
        loss, wrt = cet.cross_entropy(x, t) * 2.0, x
    else:
        loss, wrt = cet.linear_cross_entropy(h, w, t) * 2.0, w
    (g1,) = torch.autograd.grad(loss, wrt, retain_graph=True)
    first = g1.clone()
    g1.data.mul_(100)
    (g2,) = torch.autograd.grad(loss, wrt, retain_graph=True)
    torch.testing.assert_close(g2, first, rtol=0, atol=0)
    g2.zero_()
    loss.backward()
    torch.testing.assert_close(wrt.grad, first, rtol=0, atol=0)


@pytest.mark.parametrize("layout", ["view", "transpose"])
def test_inplace_backward_on_views(layout):
    g = torch.Generator().manual_seed(0)
    b, s, v = 3, 4, 7
    base = torch.randn(b, s, v, generator=g)
    grads = []
    for inplace in (True, False):
        leaf = base.clone().requires_grad_()
        z = leaf * 1.5
        if layout == "view":
            logits, t = z.view(-1, v), torch.randint(0, v, (b * s,), generator=torch.Generator())
        else:
            logits, t = z.transpose(1, 2), torch.randint(0, v, (b, s), generator=torch.Generator())
        fn = cet.cross_entropy if inplace else F.cross_entropy
        kw = dict(inplace_backward=True) if inplace else {}
        (fn(logits, t, label_smoothing=0.1, **kw) * 0.5).backward()
        grads.append(leaf.grad)
    torch.testing.assert_close(grads[0], grads[1])


def test_inplace_backward_view_misuse_and_slices():
    leaf = torch.randn(2, 3, C, requires_grad=True)
    z = leaf * 2
    logits = z.view(-1, C)
    loss = cet.cross_entropy(logits, torch.zeros(6, dtype=torch.long), inplace_backward=True)
    with pytest.raises(RuntimeError, match="overwritten by its gradient"):
        (loss + logits.sum()).backward()
    part = (leaf * 2).view(-1, C)[:, :3]
    with pytest.raises(ValueError, match="a view of part of a tensor"):
        cet.cross_entropy(part, torch.zeros(6, dtype=torch.long), inplace_backward=True)
    with pytest.raises(RuntimeError, match="must not be a leaf"):
        cet.cross_entropy(leaf.view(-1, C), torch.zeros(6, dtype=torch.long), inplace_backward=True)


# --------------------------------------------------------------------------- gradients, dtypes


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_weight_and_probability_target_gradients(reduction):
    x, y = _prob_case((4, C))
    w = torch.rand(C, dtype=torch.float64) + 0.5
    t = torch.tensor([0, 1, -100, 3])
    with pytest.raises(ValueError, match="weight must not require grad with class-index"):
        cet.cross_entropy(x, t, w.clone().requires_grad_())
    with pytest.raises(RuntimeError, match=r"not differentiable with respect to argument 'weight'"):
        F.cross_entropy(x, t, w.clone().requires_grad_())
    for target in (y,):
        out = []
        for fn in (cet.cross_entropy, F.cross_entropy):
            xx, ww = x.clone().requires_grad_(), w.clone().requires_grad_()
            tt = target.clone().requires_grad_() if target.is_floating_point() else target
            fn(xx, tt, ww, reduction=reduction, label_smoothing=0.1).sum().backward()
            out.append((xx.grad, ww.grad, tt.grad if target.is_floating_point() else None))
        for a, b in zip(out[0], out[1], strict=True):
            if b is None:
                assert a is None
            else:
                torch.testing.assert_close(a, b)


def test_result_dtype_promotion():
    x = torch.randn(4, C, requires_grad=True)
    y = torch.softmax(torch.randn(4, C, dtype=torch.float64), 1)
    ours, ref = cet.cross_entropy(x, y), F.cross_entropy(x, y)
    assert ours.dtype == ref.dtype == torch.float64
    ours.backward()
    assert x.grad.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-7)
    with pytest.raises(TypeError, match=r"weight must have the input's dtype torch\.float32"):
        cet.cross_entropy(x, torch.tensor([0, 1, 2, 3]), torch.ones(C, dtype=torch.float64))


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("kind", ["index", "prob", "linear"])
def test_empty_batches(tuned, fused, reduction, kind):
    if not fused:
        tuned(direct_max_elements=1 << 20, linear_direct_max_elements=1 << 19)
    out = []
    for ours in (True, False):
        x = torch.randn(0, C, requires_grad=True)
        if kind == "linear":
            h = torch.randn(0, 3, requires_grad=True)
            w = torch.randn(C, 3, requires_grad=True)
            t = torch.zeros(0, dtype=torch.long)
            loss = (
                cet.linear_cross_entropy(h, w, t, reduction=reduction)
                if ours
                else F.cross_entropy(F.linear(h, w), t, reduction=reduction)
            )
            loss.sum().backward()
            out.append((loss.detach(), h.grad, w.grad))
            continue
        t = torch.zeros(0, C) if kind == "prob" else torch.zeros(0, dtype=torch.long)
        fn = cet.cross_entropy if ours else F.cross_entropy
        loss = fn(x, t, reduction=reduction)
        loss.sum().backward()
        out.append((loss.detach(), x.grad))
    for a, b in zip(out[0], out[1], strict=True):
        torch.testing.assert_close(a, b, equal_nan=True)


# --------------------------------------------------------------------------- arguments


def test_argument_forms_are_accepted_as_torch_accepts_them():
    x = torch.randn(4, C)
    t = torch.tensor([0, 1, 2, 3])
    ref = F.cross_entropy(x, t, ignore_index=1, label_smoothing=0.1)
    for eps in (np.float32(0.1), np.float64(0.1), torch.tensor(0.1)):
        for ii in (np.int64(1), np.int32(1), torch.tensor(1)):
            torch.testing.assert_close(
                cet.cross_entropy(x, t, ignore_index=ii, label_smoothing=eps), ref
            )
    # F's positional order, with the deprecated size_average/reduce handled as torch does
    torch.testing.assert_close(
        cet.cross_entropy(x, t, None, None, 1, None, "sum", 0.1),
        F.cross_entropy(x, t, None, None, 1, None, "sum", 0.1),
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = cet.cross_entropy(x, t, None, False)
        ref_legacy = F.cross_entropy(x, t, None, False)
    torch.testing.assert_close(ours, ref_legacy)
    assert any("deprecated" in str(w.message) for w in caught)
    torch.testing.assert_close(
        cet.cross_entropy(x, t, reduce=False), F.cross_entropy(x, t, reduce=False)
    )
    for dtype in (torch.uint8, torch.int32, torch.int16, torch.int64):
        torch.testing.assert_close(cet.cross_entropy(x, t.to(dtype)), F.cross_entropy(x, t))
    m = cet.CrossEntropyLoss(None, None, -100, False)
    torch.testing.assert_close(m(x, t), torch.nn.CrossEntropyLoss(None, None, -100, False)(x, t))


def test_argument_errors_in_our_format():
    x = torch.randn(4, C)
    y = torch.softmax(torch.randn(4, C), 1)
    with pytest.raises(ValueError, match=r"ignore_index must be -100 .* with probability targets"):
        cet.cross_entropy(x, y, ignore_index=0)
    with pytest.raises(ValueError, match=r"target must contain class indices in \[0, 5\)"):
        cet.cross_entropy(x, torch.tensor([0, 1, 2, 7]))
    with pytest.raises(ValueError, match=r"target must contain class indices in \[0, 5\)"):
        cet.cross_entropy(x.requires_grad_(), torch.tensor([0, 1, 2, -3]))
    with pytest.raises(TypeError) as info:
        cet.cross_entropy(x, list(range(10**6)))
    assert len(str(info.value)) < 300
    with pytest.raises(TypeError) as info:
        cet.cross_entropy(x, torch.tensor([0, 1, 2, 3]), label_smoothing=[0.1] * 10**5)
    assert len(str(info.value)) < 300


def test_direct_path_errors_are_ours(tuned):
    tuned(direct_max_elements=1 << 20)
    x = torch.randn(4, C, requires_grad=True)
    with pytest.raises(ValueError, match=r"target must contain class indices in \[0, 5\)"):
        cet.cross_entropy(x, torch.tensor([0, 1, 2, 7]))
    h, w = torch.randn(4, 3), torch.randn(C, 3)
    with pytest.raises(ValueError, match=r"target must contain class indices in \[0, 5\)"):
        cet.linear_cross_entropy(h, w, torch.tensor([0, 1, 2, 7]))


def test_import_error_names_the_extra():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "try:\n    import crossentropy.torch\nexcept ImportError as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "crossentropy[torch]" in out.stdout


def test_forward_mode_ad_matches_torch():
    import torch.autograd.forward_ad as fwAD

    x, t, w = _func_case()
    tangent = torch.randn_like(x)
    out = []
    for fn in (cet.cross_entropy, F.cross_entropy):
        with fwAD.dual_level():
            dual = fwAD.make_dual(x, tangent)
            res = fwAD.unpack_dual(fn(dual, t, w, label_smoothing=0.1, reduction="none"))
            out.append((res.primal, res.tangent))
    torch.testing.assert_close(out[0][0], out[1][0])
    torch.testing.assert_close(out[0][1], out[1][1])
    ours = torch.func.jvp(lambda z: cet.cross_entropy(z, t), (x,), (tangent,))
    ref = torch.func.jvp(lambda z: F.cross_entropy(z, t), (x,), (tangent,))
    torch.testing.assert_close(ours, ref)
    torch.testing.assert_close(
        torch.func.jacfwd(lambda z: cet.cross_entropy(z, t))(x),
        torch.func.jacfwd(lambda z: F.cross_entropy(z, t))(x),
    )


def test_torch_export_keeps_one_custom_op_node():
    class Head(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(8, 30)

        def forward(self, h, t):
            return cet.cross_entropy(self.lin(h), t, label_smoothing=0.1)

    torch.manual_seed(0)
    m, h, t = Head(), torch.randn(12, 8), torch.randint(0, 30, (12,))
    ep = torch.export.export(m, (h, t))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert sum("crossentropy.index_forward" in s for s in targets) == 1
    torch.testing.assert_close(ep.module()(h, t), F.cross_entropy(m.lin(h), t, label_smoothing=0.1))


# --------------------------------------------------------------------------- hostile-user cases


def _compiled_transform_case():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(12, C, generator=g)
    t = torch.randint(0, C, (12,), generator=g)
    v = torch.randn(12, C, generator=g)
    return x, t, v


def test_compiled_jvp_and_jacfwd_are_not_zero():
    """Found by the hostile pass: compiled jvp/jacfwd gave a silent zero tangent."""
    x, t, v = _compiled_transform_case()
    outs = []
    for fn in (cet.cross_entropy, F.cross_entropy):
        torch._dynamo.reset()
        jv = torch.compile(
            lambda x, v, fn=fn: torch.func.jvp(lambda z: fn(z, t), (x,), (v,)), backend="aot_eager"
        )(x, v)[1]
        torch._dynamo.reset()
        jf = torch.compile(lambda x, fn=fn: torch.func.jacfwd(lambda z: fn(z, t))(x))(x)
        outs.append((jv, jf))
    torch.testing.assert_close(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1])
    assert outs[0][1].abs().sum() > 0


def test_compiled_forward_ad_keeps_the_tangent():
    import torch.autograd.forward_ad as fwAD

    x, t, v = _compiled_transform_case()
    h, w = torch.randn(12, 4), torch.randn(C, 4)
    tangents = []
    for ce, lin in (
        (cet.cross_entropy, cet.linear_cross_entropy),
        (F.cross_entropy, lambda h, w, t: F.cross_entropy(F.linear(h, w), t)),
    ):
        torch._dynamo.reset()
        f = torch.compile(lambda d, ce=ce: ce(d, t), backend="aot_eager")
        g = torch.compile(lambda d, lin=lin: lin(d, w, t), backend="aot_eager")
        with fwAD.dual_level():
            a = fwAD.unpack_dual(f(fwAD.make_dual(x, v))).tangent
            b = fwAD.unpack_dual(g(fwAD.make_dual(h, torch.ones_like(h)))).tangent
        tangents.append((a, b))
    assert tangents[0][0] is not None and tangents[0][1] is not None
    torch.testing.assert_close(tangents[0][0], tangents[1][0])
    torch.testing.assert_close(tangents[0][1], tangents[1][1])


def test_compiled_torch_func_grad():
    x, t, _ = _compiled_transform_case()
    h, w = torch.randn(12, 4), torch.randn(C, 4)
    res = []
    for ce, lin in (
        (cet.cross_entropy, cet.linear_cross_entropy),
        (F.cross_entropy, lambda h, w, t: F.cross_entropy(F.linear(h, w), t)),
    ):
        torch._dynamo.reset()
        gx = torch.compile(torch.func.grad(lambda z, ce=ce: ce(z, t)), backend="aot_eager")(x)
        torch._dynamo.reset()
        gw = torch.compile(torch.func.grad(lambda W, lin=lin: lin(h, W, t)), backend="aot_eager")(w)
        res.append((gx, gw))
    torch.testing.assert_close(res[0][0], res[1][0])
    torch.testing.assert_close(res[0][1], res[1][1])


def test_inplace_backward_without_grad_and_under_compile():
    """Found by the hostile pass (regressions while the impl switch was added)."""
    x, t, _ = _compiled_transform_case()
    with torch.no_grad():
        torch.testing.assert_close(
            cet.cross_entropy(x.clone(), t, inplace_backward=True), F.cross_entropy(x, t)
        )
    torch.testing.assert_close(
        cet.cross_entropy(x.clone(), t, inplace_backward=True), F.cross_entropy(x, t)
    )
    torch._dynamo.reset()
    leaf = x.clone().requires_grad_()
    fn = torch.compile(
        lambda z: cet.cross_entropy(z * 1.0, t, inplace_backward=True),
        fullgraph=True,
        backend="aot_eager",
    )
    fn(leaf).backward()
    ref = x.clone().requires_grad_()
    F.cross_entropy(ref, t).backward()
    torch.testing.assert_close(leaf.grad, ref.grad)


def test_hostile_argument_cases():
    x, t, _ = _compiled_transform_case()
    h, w = torch.randn(12, 4), torch.randn(C, 4)
    # an integer 0-d tensor for label_smoothing is read as F reads it
    torch.testing.assert_close(
        cet.cross_entropy(x, t, label_smoothing=torch.tensor(1)),
        F.cross_entropy(x, t, label_smoothing=1.0),
    )
    # where F silently ignores a negative or NaN smoothing, we refuse it
    for bad in (-0.1, float("nan")):
        with pytest.raises(ValueError, match=r"label_smoothing must be in \[0, 1\]"):
            cet.cross_entropy(x, t, label_smoothing=bad)
    torch.testing.assert_close(
        cet.linear_cross_entropy(h, w, t, chunk_size=np.int64(3)),
        F.cross_entropy(F.linear(h, w), t),
    )
    for bad in (2.5, True, "3"):
        with pytest.raises(TypeError, match="chunk_size must be a positive integer or None"):
            cet.linear_cross_entropy(h, w, t, chunk_size=bad)
    with pytest.raises(ValueError, match="chunk_size must be a positive integer or None, got 0"):
        cet.linear_cross_entropy(h, w, t, chunk_size=0)
    with pytest.raises(TypeError, match=r"class_weight must have hidden's dtype torch\.float32"):
        cet.linear_cross_entropy(h, w, t, class_weight=torch.ones(C, dtype=torch.float64))
    m = cet.CrossEntropyLoss(label_smoothing=0.1)
    assert isinstance(m, torch.nn.CrossEntropyLoss)
    torch.testing.assert_close(m(x, t), torch.nn.CrossEntropyLoss(label_smoothing=0.1)(x, t))


@pytest.mark.parametrize("offset", [1e4, 1e6])
def test_large_logits_keep_float32_accuracy(offset):
    """Found by the hostile pass: with logits near 1e4, exp(x − lse) of a rounded lse (and
    lse − x_y) lost ~1e-3 relative; every path now shifts by the exact row max."""
    g = torch.Generator().manual_seed(12)
    x = torch.randn(64, 1000, generator=g) * 3 + offset
    t = torch.randint(0, 1000, (64,), generator=g)
    y = torch.softmax(torch.randn(x.shape, generator=g), dim=1)
    up = torch.rand(64, generator=g)
    h = torch.randn(64, 16, generator=g)
    w = torch.randn(1000, 16, generator=g)
    b = torch.randn(1000, generator=g) + offset
    for target, reduction in ((t, "none"), (t, "mean"), (y, "none"), (y, "mean")):
        xx = x.clone().requires_grad_()
        loss = cet.cross_entropy(xx, target, reduction=reduction)
        loss.backward(up if reduction == "none" else None)
        ref = x.double().requires_grad_()
        exact = F.cross_entropy(
            ref, target.double() if target.is_floating_point() else target, reduction=reduction
        )
        exact.backward(up.double() if reduction == "none" else None)
        assert (xx.grad.double() - ref.grad).abs().max() <= 2e-6 * ref.grad.abs().max()
        torch.testing.assert_close(loss.double(), exact, rtol=2e-6, atol=2e-6)
    for reduction in ("none", "mean"):
        ww = w.clone().requires_grad_()
        loss = cet.linear_cross_entropy(h, ww, t, b, reduction=reduction, chunk_size=16)
        loss.backward(up if reduction == "none" else None)
        w64 = w.double().requires_grad_()
        exact = F.cross_entropy(F.linear(h.double(), w64, b.double()), t, reduction=reduction)
        exact.backward(up.double() if reduction == "none" else None)
        # the float32 logits themselves carry ulp(1e4) of rounding: no worse than F in float32
        w32 = w.clone().requires_grad_()
        naive = F.cross_entropy(F.linear(h, w32, b), t, reduction=reduction)
        naive.backward(up if reduction == "none" else None)
        ours_err = (ww.grad.double() - w64.grad).abs().max()
        assert ours_err <= 1.5 * (w32.grad.double() - w64.grad).abs().max() + 1e-6
