"""A hostile user's pass over ``crossentropy.torch``: compile + autocast, ``-inf`` ignored rows,
the token statistics, forward-only calls, the linear forms' edges, higher-order autograd and bad
arguments, each checked side by side with ``torch.nn.functional`` or a float64 composition of
the documented formulas.

The tests under "Regression" comments pinned defects found by this pass (each failed then, and
asserts the behaviour the documentation or ``F`` promises); the one ``xfail(strict=True)`` test
pins a documented limitation (float16 gradients rescaled by a non-power-of-two upstream). The
other tests are the strongest probes that held up.
"""

from __future__ import annotations

import tempfile

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import crossentropy.torch as cet  # noqa: E402
from crossentropy.torch import _backend as B  # noqa: E402

INF = float("inf")
NAN = float("nan")
IMPLS = ["torch"] + (["triton"] if B.triton_available() and B.triton_interpreted() else [])


def _neg_inf_ignored_row() -> tuple[torch.Tensor, torch.Tensor]:
    """Row 0 is an ordinary row, row 1 an ignored padding row whose logits are all -inf."""
    x = torch.tensor([[1.0, 2.0, 3.0], [-INF, -INF, -INF]], requires_grad=True)
    return x, torch.tensor([0, -100])


@pytest.fixture
def one_rank_group():
    """A single-process gloo group (world size 1) for the vocabulary-parallel functions."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("needs torch.distributed and no process group already in this process")
    with tempfile.NamedTemporaryFile(delete=False) as f:
        path = f.name
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


# --------------------------------------------------------------------------------------------
# Silent wrong answers
# --------------------------------------------------------------------------------------------


# Regression (was wrong): vocab_parallel_linear_token_stats under torch.autocast returns the
# statistics of the bf16 logits but a backward that matches neither the bf16 nor the float32
# logits (17-22% relative error in d weight / d hidden; linear_token_stats: 0.3%)
def test_vocab_parallel_linear_token_stats_autocast_gradient(one_rank_group: None) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 8, generator=g)
    w = torch.randn(40, 8, generator=g) * 3
    t = torch.randint(0, 40, (32,), generator=g)

    def grads(fn):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(hh, ww, t)
        loss = out.entropy.sum() + out.logprob.sum() + 0.3 * out.lse.sum()
        return loss.detach(), torch.autograd.grad(loss, (hh, ww))

    # the function the forward computes: statistics of the bf16 logits, as F.linear gives them
    hr = h.bfloat16().double().requires_grad_()
    wr = w.bfloat16().double().requires_grad_()
    z = (hr @ wr.T).bfloat16().double()
    zz = z.detach().requires_grad_()
    lp = zz.log_softmax(-1)
    ref = -(lp.exp() * lp).sum() + lp.gather(1, t[:, None]).sum() + 0.3 * zz.logsumexp(-1).sum()
    (gz,) = torch.autograd.grad(ref, zz)
    ref_dh, ref_dw = gz @ w.bfloat16().double(), gz.T @ h.bfloat16().double()

    _, (dh_lts, dw_lts) = grads(cet.linear_token_stats)
    loss_vp, (dh_vp, dw_vp) = grads(cet.vocab_parallel_linear_token_stats)
    assert torch.allclose(loss_vp.double(), ref.detach(), rtol=1e-5)  # the forward is right
    for got, want in ((dh_lts, ref_dh), (dw_lts, ref_dw)):  # the single-device form is right
        assert (got.double() - want).abs().max() <= 1e-2 * want.abs().max()
    for got, want in ((dh_vp, ref_dh), (dw_vp, ref_dw)):
        assert (got.double() - want).abs().max() <= 1e-2 * want.abs().max()


# Regression (was wrong): under CPU autocast linear_cross_entropy casts float64 hidden/weight to
# the autocast dtype and returns float32; F.linear (and so the composition) keeps float64
# untouched
def test_linear_cross_entropy_float64_under_autocast_stays_float64() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, dtype=torch.float64, generator=g)
    w = torch.randn(5, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 1, 4, -100])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(h, w), t)
        got = cet.linear_cross_entropy(h, w, t)
    assert ref.dtype == torch.float64
    assert got.dtype == torch.float64
    assert torch.allclose(got, ref, rtol=1e-12, atol=0)


# Regression (was wrong): under CPU autocast linear_token_stats casts float64 hidden/weight to
# bf16 and returns float32 statistics (documented: float64 for float64; F.linear keeps float64)
def test_linear_token_stats_float64_under_autocast_stays_float64() -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, dtype=torch.float64, generator=g)
    w = torch.randn(5, 3, dtype=torch.float64, generator=g)
    t = torch.tensor([0, 1, 4, -100])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = cet.linear_token_stats(h, w, t)
    assert out.lse.dtype == torch.float64
    assert torch.allclose(out.lse, F.linear(h, w).logsumexp(-1), rtol=1e-12, atol=0)


# --------------------------------------------------------------------------------------------
# NaN where the documentation promises a number
# --------------------------------------------------------------------------------------------


# Regression (was wrong): small-problem path with z_loss/sample_weight (our composition, not F
# itself): the ignored all -inf row gets a NaN gradient; docs: 0 on every path of ours
@pytest.mark.parametrize(
    "options",
    [{"z_loss": 1e-3}, {"sample_weight": torch.ones(2)}],
    ids=["z_loss", "sample_weight"],
)
def test_ignored_neg_inf_row_zero_grad_small_path_with_options(options: dict) -> None:
    x, t = _neg_inf_ignored_row()
    (grad,) = torch.autograd.grad(cet.cross_entropy(x, t, **options), x)
    assert torch.equal(grad[1], torch.zeros(3))


# Regression (was wrong): a sample_weight that requires grad goes through the composite path,
# which gives the ignored all -inf row a NaN logits gradient at any size and impl (detached: 0)
@pytest.mark.parametrize("impl", IMPLS)
def test_ignored_neg_inf_row_zero_grad_sample_weight_requires_grad(
    force_fused: None, impl: str
) -> None:
    x, t = _neg_inf_ignored_row()
    sw = torch.ones(2, requires_grad=True)
    gx, gs = torch.autograd.grad(cet.cross_entropy(x, t, sample_weight=sw, impl=impl), (x, sw))
    assert gs[1] == 0
    assert torch.equal(gx[1], torch.zeros(3))


# Regression (was wrong): torch.func.grad with z_loss (our composition) gives the ignored all -inf
# row a NaN gradient; create_graph=True on the same call gives 0
def test_ignored_neg_inf_row_zero_grad_torch_func_with_z_loss(force_fused: None) -> None:
    x, t = _neg_inf_ignored_row()
    grad = torch.func.grad(lambda z: cet.cross_entropy(z, t, z_loss=1e-3))(x.detach())
    assert torch.equal(grad[1], torch.zeros(3))


# --------------------------------------------------------------------------------------------
# Inconsistencies with F / between paths
# --------------------------------------------------------------------------------------------


# Regression (was wrong): fused reduction='none' backward multiplies the upstream gradient into
# ignored rows: a NaN upstream entry at an ignored position gives a NaN row (F, token_stats: 0)
@pytest.mark.parametrize("impl", IMPLS)
def test_none_reduction_nonfinite_upstream_at_ignored_position(
    force_fused: None, impl: str
) -> None:
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    t = torch.tensor([0, -100, 2])
    v = torch.tensor([1.0, NAN, 1.0])
    (ref,) = torch.autograd.grad(F.cross_entropy(x, t, reduction="none"), x, v)
    (got,) = torch.autograd.grad(cet.cross_entropy(x, t, reduction="none", impl=impl), x, v)
    assert torch.equal(ref[1], torch.zeros(4))
    assert torch.allclose(got, ref)


# Regression (was wrong): under autocast a float64 class weight (docs: any floating dtype under
# autocast) works on the fused path but crashes the small-problem path with torch's 'expected
# scalar type Float but found Double'
@pytest.mark.parametrize("fn", ["cross_entropy", "linear_cross_entropy"])
def test_autocast_float64_class_weight_small_path(fn: str) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, generator=g)
    w = torch.randn(5, 3, generator=g)
    t = torch.tensor([0, 1, 4, -100])
    cw = torch.rand(5, dtype=torch.float64, generator=g) + 0.5
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(h, w)
        ref = F.cross_entropy(logits.float(), t, cw.float())
        if fn == "cross_entropy":
            got = cet.cross_entropy(logits, t, cw)
        else:
            got = cet.linear_cross_entropy(h, w, t, class_weight=cw)
    assert got.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=1e-5)


def test_autocast_float64_class_weight_fused_path_works(force_fused: None) -> None:
    """The fused path accepts it (the reference for the test above)."""
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0)).half()
    t = torch.tensor([0, 1, 4, -100])
    cw = torch.tensor([0.5, 1.0, 1.5, 2.0, 2.5], dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = cet.cross_entropy(x, t, cw)
    assert torch.allclose(got, F.cross_entropy(x.float(), t, cw.float()), rtol=1e-5)


# Regression (was wrong): the fused path saves the logits for a possible second backward, so an
# in-place change to the logits after the loss makes the FIRST backward raise torch's version-
# counter error; F.cross_entropy (saves only its log-softmax) backpropagates fine
@pytest.mark.parametrize("impl", IMPLS)
def test_inplace_update_of_logits_after_loss_like_F(force_fused: None, impl: str) -> None:
    x0 = torch.randn(6, 7, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, 2, -100, 4, 6])
    grads = []
    for fn in (F.cross_entropy, lambda z, y: cet.cross_entropy(z, y, impl=impl)):
        x = x0.clone().requires_grad_()
        z = x * 1
        loss = fn(z, t)
        with torch.no_grad():
            z.add_(1.0)  # e.g. a logits buffer reused by the next step
        loss.backward()
        grads.append(x.grad)
    assert torch.allclose(grads[1], grads[0])


# Regression (was wrong): linear_cross_entropy with 0 rows and 0 classes: the small-problem path
# crashes in reshape(-1, 0) (torch RuntimeError); the fused path and F's composition give NaN
def test_linear_cross_entropy_zero_rows_zero_classes() -> None:
    h, w, t = torch.randn(0, 3), torch.randn(0, 3), torch.zeros(0, dtype=torch.long)
    assert F.cross_entropy(F.linear(h, w), t).isnan()
    assert cet.linear_cross_entropy(h, w, t).isnan()


@pytest.mark.xfail(
    strict=True,
    reason="documented limitation: float16 under autocast with a loss weight that is not a power "
    "of two (GradScaler scale x 0.3): the stored float16 gradient is rescaled in float16, a "
    "second rounding (at most 1 ulp); ~25% of entries differ from the correctly rounded "
    "gradient (F: ~0). Exact for power-of-two upstreams (a GradScaler scale alone)",
)
def test_fp16_autocast_weighted_loss_gradient_rounding_like_F(force_fused: None) -> None:
    g = torch.Generator().manual_seed(0)
    x16 = (torch.randn(64, 50, generator=g) * 3).half()
    t = torch.randint(0, 50, (64,), generator=g)
    scale = 0.3 * 65536.0
    xr = x16.double().requires_grad_()
    (exact,) = torch.autograd.grad(F.cross_entropy(xr, t) * scale, xr)
    wrong = {}
    for name, fn in (("F", F.cross_entropy), ("ours", cet.cross_entropy)):
        x = x16.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.float16):
            loss = fn(x, t)
        (grad,) = torch.autograd.grad(loss * scale, x)
        wrong[name] = int((grad != exact.half()).sum())
    assert wrong["F"] <= 16
    assert wrong["ours"] <= wrong["F"] + 16


# Regression (was wrong): a 0-d ignore_index / label_smoothing tensor on the meta device is
# refused as 'must be an integer, got tensor of shape () and dtype torch.int64' (it is an
# integer); z_loss/softcap say what is wrong (no value on the meta device)
@pytest.mark.parametrize(
    "options",
    [
        {"ignore_index": torch.tensor(-100, device="meta")},
        {"label_smoothing": torch.tensor(0.1, device="meta")},
    ],
    ids=["ignore_index", "label_smoothing"],
)
def test_meta_0d_option_error_says_meta(options: dict) -> None:
    with pytest.raises(TypeError, match="meta"):
        cet.cross_entropy(torch.randn(4, 5), torch.tensor([0, 1, 4, -100]), **options)


# Regression (was wrong): vocab_parallel_linear_cross_entropy ignores torch.autocast (projects in
# float32) while linear_cross_entropy and F.cross_entropy(hidden @ W.T, ...) project in the
# autocast dtype: the 'equal to' of its docstring fails by 1e-3..3e-2 on the same call
def test_vocab_parallel_linear_cross_entropy_autocast_equals_single_process(
    one_rank_group: None,
) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(32, 8, generator=g)
    w = torch.randn(40, 8, generator=g) * 10
    t = torch.randint(0, 40, (32,), generator=g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(h @ w.T, t)
        single = cet.linear_cross_entropy(h, w, t)
        parallel = cet.vocab_parallel_linear_cross_entropy(h, w, t)
    assert torch.allclose(single, ref, rtol=1e-5)
    assert torch.allclose(parallel, ref, rtol=1e-5)


# Regression (was wrong): torch.func.grad through the vocabulary-parallel functions dies in torch
# internals ('Cannot access data pointer of Tensor that doesn't have storage'); not claimed to
# work, but the error should say so in the library's format, as double backward's does
def test_vocab_parallel_torch_func_works_or_says_why(one_rank_group: None) -> None:
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0, 1, -100, 3])
    try:
        grad = torch.func.grad(lambda z: cet.vocab_parallel_cross_entropy(z, t))(x)
    except Exception as exc:  # a refusal must name the function, as the library's errors do
        assert str(exc).startswith("vocab_parallel_cross_entropy:"), str(exc)
    else:
        assert torch.allclose(grad, torch.func.grad(lambda z: F.cross_entropy(z, t))(x))


# --------------------------------------------------------------------------------------------
# Probes that held up
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["inside", "around"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_compile_autocast_3d_weights_smoothing_matches_F(
    force_fused: None, where: str, dtype: torch.dtype
) -> None:
    import torch._dynamo

    g = torch.Generator().manual_seed(0)
    h = torch.randn(6, 4, generator=g)
    k = torch.arange(1.0, 4.0)
    t = torch.randint(0, 5, (6, 3), generator=g)
    t[0, 1] = -100
    cw = torch.rand(5, generator=g) + 0.5

    def make(loss_fn):
        def f(w):
            z = torch.einsum("nd,cd,k->nck", h, w, k)  # (N, C, d) from a matmul
            return loss_fn(z, t, cw, label_smoothing=0.1)

        return f

    def run(f, compiled):
        w = torch.randn(5, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
        if where == "inside":

            def body(w):
                with torch.autocast("cpu", dtype=dtype):
                    return f(w)

            c = torch.compile(body, backend="aot_eager", fullgraph=True) if compiled else body
            out = c(w)
        else:
            c = torch.compile(f, backend="aot_eager", fullgraph=True) if compiled else f
            with torch.autocast("cpu", dtype=dtype):
                out = c(w)
        return out, torch.autograd.grad(out, w)[0]

    torch._dynamo.reset()
    got, dgot = run(make(cet.cross_entropy), compiled=True)
    ref, dref = run(make(F.cross_entropy), compiled=False)
    assert got.dtype == ref.dtype == torch.float32
    assert torch.allclose(got, ref, rtol=2e-3, atol=2e-3)
    assert torch.allclose(dgot, dref, rtol=2e-2, atol=2e-3)


def test_compile_inductor_autocast_linear_token_stats(force_fused: None) -> None:
    import torch._dynamo

    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 4, generator=g)
    t = torch.tensor([0, 1, -100, 3, 5])

    def f(w):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cet.linear_token_stats(h, w, t, softcap=3.0)
        return out.logprob.sum() + out.entropy.sum()

    def ref(w):
        z = (h.bfloat16() @ w.bfloat16().T).float()
        z = 3.0 * torch.tanh(z / 3.0)
        lp = z.log_softmax(-1)
        keep = t != -100
        logprob = lp.gather(1, t.clamp(min=0)[:, None])[:, 0].where(keep, 0.0)
        return logprob.sum() + (-(lp.exp() * lp).sum(-1)).sum()

    w = torch.randn(6, 4, generator=g, requires_grad=True)
    got = torch.compile(f, backend="inductor", fullgraph=True)(w)
    want = ref(w)
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-4)
    # d weight goes through bf16 matmuls on both sides: a bfloat16 unit in the last place
    (dgot,), (dwant,) = torch.autograd.grad(got, w), torch.autograd.grad(want, w)
    assert torch.allclose(dgot, dwant, rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize(
    "options",
    [{}, {"z_loss": 1e-2}, {"softcap": 5.0}, {"sample_weight": torch.tensor([1.0, NAN, 2.0])}],
    ids=["plain", "z_loss", "softcap", "nan_sample_weight"],
)
def test_fused_ignored_neg_inf_row_and_masked_vocab(
    force_fused: None, impl: str, dtype: torch.dtype, options: dict
) -> None:
    """Row 1: ignored, all -inf (NaN sample weight there too); row 2: a masked vocabulary. The
    ignored row's gradient is exactly 0 and the rest is the float64 definition's."""
    x64 = torch.tensor(
        [[0.5, -1.0, 2.0, 0.1], [-INF] * 4, [1.5, -INF, 0.3, -INF]], dtype=torch.float64
    )
    t = torch.tensor([2, -100, 0])
    x = x64.to(dtype).requires_grad_()
    for red in ("mean", "none"):
        loss = cet.cross_entropy(x, t, reduction=red, impl=impl, **options)
        (grad,) = torch.autograd.grad(loss.float().sum(), x)
        assert torch.equal(grad[1].float(), torch.zeros(4))
        xr = x.detach().double().clamp(min=-1e300).requires_grad_()
        z = xr if "softcap" not in options else 5.0 * torch.tanh(xr / 5.0)
        per = F.cross_entropy(z, t, reduction="none")
        per = per + options.get("z_loss", 0.0) * torch.where(t != -100, z.logsumexp(1), 0.0) ** 2
        sw = options.get("sample_weight")
        if sw is not None:
            per = torch.where(t != -100, per * sw.double(), 0.0)
        ref = per.sum() / 2 if red == "mean" else per
        (gref,) = torch.autograd.grad(ref.sum(), xr)
        tol = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 3e-2}[dtype]
        assert torch.allclose(loss.double(), ref.detach(), rtol=tol, atol=tol)
        assert torch.allclose(grad.double(), gref, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_stats_ties_strides_softcap_vs_float64(impl: str, dtype: torch.dtype) -> None:
    # argmax ties (also across the softcap), an ignored row, a transposed (non-contiguous) input
    base = torch.zeros(9, 4, dtype=dtype)
    base[[2, 5], 0] = 1.0
    base[:, 1] = 3.0
    base[[8, 0], 2] = 2.0
    base[[1, 6], 3] = 0.5
    base.requires_grad_()
    logits = base.T  # (4, 9), stride (1, 4)
    t = torch.tensor([2, 0, 8, -100])
    for cap in (None, 1.0):
        out = cet.token_stats(logits, t, softcap=cap, impl=impl)
        loss = out.logprob.sum() + 0.7 * out.entropy.sum() - 0.3 * out.lse.sum()
        (grad,) = torch.autograd.grad(loss, base)
        xr = base.detach().double().T.requires_grad_()
        z = xr if cap is None else cap * torch.tanh(xr / cap)
        lp = z.log_softmax(-1)
        keep = t != -100
        logprob = lp.gather(1, t.clamp(min=0)[:, None])[:, 0].where(keep, 0.0)
        entropy = -(lp.exp() * lp).sum(-1)
        lse = z.logsumexp(-1)
        (gref,) = torch.autograd.grad(logprob.sum() + 0.7 * entropy.sum() - 0.3 * lse.sum(), xr)
        assert torch.equal(out.argmax, z.argmax(-1))
        assert out.logprob.dtype == torch.float32
        for got, want in ((out.logprob, logprob), (out.entropy, entropy), (out.lse, lse)):
            assert torch.allclose(got.double(), want.detach(), rtol=1e-5, atol=1e-5)
        tol = 1e-5 if dtype == torch.float32 else 1e-2
        assert torch.allclose(grad.double(), gref.T, rtol=tol, atol=tol)


@pytest.mark.parametrize("impl", IMPLS)
def test_uint8_target_156_is_not_the_ignore_index(force_fused: None, impl: str) -> None:
    """156 is -100 modulo 256: a uint8 target of 156 is a class, not ignored."""
    x = torch.randn(3, 200, generator=torch.Generator().manual_seed(0))
    t8 = torch.tensor([156, 3, 44], dtype=torch.uint8)
    ref = F.cross_entropy(x, t8.long(), reduction="none")
    assert torch.allclose(cet.cross_entropy(x, t8, reduction="none", impl=impl), ref)
    lp = cet.token_stats(x, t8, impl=impl).logprob
    assert torch.allclose(lp, x.log_softmax(-1)[torch.arange(3), t8.long()])


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("chunk_size", [1, 3, 100])
def test_linear_forms_forward_only_and_frozen_weight(
    force_fused: None, impl: str, chunk_size: int
) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(7, 5, generator=g)
    w = torch.randn(13, 5, generator=g)
    b = torch.randn(13, generator=g)
    cw = torch.rand(13, generator=g) + 0.5
    t = torch.randint(0, 13, (7,), generator=g)
    t[2] = -100
    z = F.linear(h.double(), w.double(), b.double())
    kw = {"chunk_size": chunk_size, "impl": impl}
    with torch.no_grad():
        loss = cet.linear_cross_entropy(h, w, t, b, class_weight=cw, label_smoothing=0.1, **kw)
        stats = cet.linear_token_stats(h, w, t, b, **kw)
    assert torch.allclose(loss.double(), F.cross_entropy(z, t, cw.double(), label_smoothing=0.1))
    assert torch.allclose(stats.lse.double(), z.logsumexp(-1), atol=1e-5)
    assert torch.equal(stats.argmax, z.argmax(-1))
    # only hidden requires grad (a frozen output layer)
    hh = h.clone().requires_grad_()
    (dh,) = torch.autograd.grad(cet.linear_cross_entropy(hh, w, t, b, reduction="sum", **kw), hh)
    hr = h.double().requires_grad_()
    (dref,) = torch.autograd.grad(
        F.cross_entropy(F.linear(hr, w.double(), b.double()), t, reduction="sum"), hr
    )
    assert torch.allclose(dh.double(), dref, atol=1e-5)


@pytest.mark.parametrize("impl", IMPLS)
def test_linear_cross_entropy_degenerate_shapes(force_fused: None, impl: str) -> None:
    g = torch.Generator().manual_seed(0)
    h = torch.randn(4, 3, generator=g)
    w = torch.randn(5, 3, generator=g, requires_grad=True)
    t = torch.tensor([0, 1, 4, 2])
    # 0 features: every logit is the bias (here 0): loss log C, gradient of w is (5, 0)
    w0 = torch.zeros(5, 0, requires_grad=True)
    loss = cet.linear_cross_entropy(h[:, :0], w0, t, impl=impl)
    assert torch.allclose(loss, torch.tensor(5.0).log())
    assert torch.autograd.grad(loss, w0)[0].shape == (5, 0)
    # 0 rows: mean is NaN (0/0) with a zero gradient, sum is 0
    empty = cet.linear_cross_entropy(h[:0], w, t[:0], impl=impl)
    assert empty.isnan() and torch.equal(torch.autograd.grad(empty, w)[0], torch.zeros(5, 3))
    assert cet.linear_cross_entropy(h[:0], w, t[:0], reduction="sum", impl=impl) == 0
    # 1 class: loss 0 and gradient 0
    w1 = w[:1].detach().requires_grad_()
    one = cet.linear_cross_entropy(h, w1, torch.zeros(4, dtype=torch.long), impl=impl)
    assert one == 0 and torch.equal(torch.autograd.grad(one, w1)[0], torch.zeros(1, 3))


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_gradgradcheck_and_hessian_through_every_option(force_fused: None, reduction: str) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, dtype=torch.float64, generator=g, requires_grad=True)
    t = torch.tensor([0, 3, -100, 4])
    cw = torch.rand(5, dtype=torch.float64, generator=g) + 0.5
    sw = torch.randn(4, dtype=torch.float64, generator=g)
    kw = dict(label_smoothing=0.2, z_loss=0.05, softcap=2.0, sample_weight=sw, reduction=reduction)

    def ours(z):
        return cet.cross_entropy(z, t, cw, **kw)

    def ref(z):
        zc = 2.0 * torch.tanh(z / 2.0)
        per = F.cross_entropy(zc, t, cw, reduction="none", label_smoothing=0.2)
        wy = torch.where(t != -100, cw[t.clamp(min=0)], 0.0)
        per = (per + 0.05 * wy * zc.logsumexp(1) ** 2) * sw
        return per.sum() / wy.sum() if reduction == "mean" else per

    assert torch.autograd.gradcheck(ours, (x,))
    assert torch.autograd.gradgradcheck(ours, (x,))
    if reduction == "mean":
        hess = torch.func.hessian(ours)(x.detach())
        assert torch.allclose(hess, torch.func.hessian(ref)(x.detach()))
    else:
        assert torch.allclose(
            torch.func.jacfwd(ours)(x.detach()), torch.func.jacrev(ref)(x.detach())
        )


def test_bad_arguments_name_the_argument() -> None:
    h, w, t = torch.randn(4, 3), torch.randn(5, 3), torch.tensor([0, 1, 4, -100])
    meta = torch.zeros(5, device="meta")
    cases = [
        (lambda: cet.linear_cross_entropy(h, w, t, meta), ValueError, "bias must be on"),
        (lambda: cet.linear_token_stats(h, w, t, meta), ValueError, "bias must be on"),
        (lambda: cet.linear_cross_entropy(h, w.to("meta"), t), ValueError, "weight must be on"),
        (lambda: cet.linear_cross_entropy(h, w, t, class_weight=meta), ValueError, "class_weight"),
        (lambda: cet.cross_entropy(h @ w.T, t.to("meta")), ValueError, "target must be on"),
        (
            lambda: cet.cross_entropy(h @ w.T, t, sample_weight=meta[:4]),
            ValueError,
            "sample_weight",
        ),
        (lambda: cet.linear_cross_entropy(h, w, t, chunk_size=0), ValueError, "chunk_size"),
        (lambda: cet.linear_token_stats(h, w, t, chunk_size=True), TypeError, "chunk_size"),
        (lambda: cet.cross_entropy(h @ w.T, t, softcap=1e39), ValueError, "softcap"),
        (lambda: cet.token_stats(h @ w.T, t, softcap=1e-300), ValueError, "softcap"),
        (lambda: cet.cross_entropy(h @ w.T, t, z_loss=float("nan")), ValueError, "z_loss"),
        (lambda: cet.cross_entropy(h @ w.T, t, ignore_index=2**70), ValueError, "ignore_index"),
        (lambda: cet.token_stats((h @ w.T).double(), t, impl="triton"), ValueError, "impl"),
        (lambda: cet.CrossEntropyLoss(reduction="avg")(h @ w.T, t), ValueError, "reduction"),
        (
            lambda: cet.cross_entropy(h @ w.T, torch.tensor([0, 1, 5, -100])),
            ValueError,
            r"\[0, 5\)",
        ),
    ]
    for call, kind, match in cases:
        with pytest.raises(kind, match=match):
            call()
