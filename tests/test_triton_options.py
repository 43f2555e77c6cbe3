r"""``softcap`` and ``z_loss`` in the Triton kernels (:mod:`crossentropy.torch._triton`).

Each kernel is called directly, in Triton's interpreter on CPU tensors (``TRITON_INTERPRET=1``,
set in ``conftest.py``), and checked against an independent float64 torch composition:
``x' = c tanh(x / c)``, ``logsumexp``, ``gather`` and autograd for the gradient, with the row
loss of ``docs/guide/options.rst``,

.. math::
    \ell = (1-\varepsilon) w_y (\mathrm{lse} - x'_y)
        + \frac{\varepsilon}{C} \sum_c w_c (\mathrm{lse} - x'_c) + z\, w_y\, \mathrm{lse}^2 .

The kernels compute in float32 whatever the logits' dtype, so statistics of float16/bfloat16
logits are checked at float32 tolerances; only a gradient written in a half dtype is rounded
(toward zero in the interpreter: one ulp allowed).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
triton = pytest.importorskip("triton")
tl = pytest.importorskip("triton.language")

from crossentropy.torch import _backend as B  # noqa: E402
from crossentropy.torch import _kernels as K  # noqa: E402
from crossentropy.torch import _triton as TR  # noqa: E402

pytestmark = pytest.mark.skipif(
    not B.triton_interpreted(), reason="Triton on CPU tensors needs TRITON_INTERPRET=1"
)

F64 = torch.float64
BLOCK = 16
CAP = 30.0  # Gemma 2's final_logit_softcapping
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
#: Relative size of one ulp of the gradient's dtype (round toward zero: a whole ulp).
ULP = {torch.float32: 2.0**-23, torch.bfloat16: 2.0**-7, torch.float16: 2.0**-10}
#: Float32 error of the statistics and gradients, relative to the row's scale: ``x'`` is known
#: to a few ulp of ``c`` (tanh within 2 ulp, times ``c``), which is an absolute error on every
#: exponent, so a relative one on every probability.
RTOL32 = 3e-6
VOCABS = [BLOCK - 3, BLOCK, BLOCK + 1, 3 * BLOCK + 5]


@pytest.fixture(autouse=True)
def small_chunks(tuned):
    tuned(triton_block=BLOCK)


@pytest.fixture
def gen(rng):
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


# --------------------------------------------------------------------------- references


def _capped(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    return x if cap is None else cap * torch.tanh(x / cap)


def _case(gen, rows, v, dtype, *, scale=3.0, ignore=True, weighted=True):
    x = (torch.randn(rows, v, generator=gen) * scale).to(dtype)
    t = torch.randint(0, v, (rows,), generator=gen)
    if ignore:
        t[1::3] = -100
    w = torch.rand(v, generator=gen) + 0.5 if weighted else None
    return x, t, w


def _ref_stats(x, t, w, cap, offset=0):
    """(max, Σ_{c≠y} e^{x'−m}, x'_y, has, Σ w x') of a shard, in float64."""
    xc = _capped(x.to(F64), cap)
    v = x.shape[-1]
    local = t - offset
    inside = (local >= 0) & (local < v)
    at_t = torch.nn.functional.one_hot(torch.where(inside, local, 0), v).bool()
    at_t &= inside[:, None]
    m = xc.amax(-1)
    sumexp = torch.where(at_t, 0.0, torch.exp(xc - m[:, None])).sum(-1)
    xt = torch.where(at_t, xc, 0.0).sum(-1)
    w64 = torch.ones(v, dtype=F64) if w is None else w.to(F64)
    return m, sumexp, xt, inside, (xc * w64).sum(-1)


def _ref_index(x, t, w, eps, z, cap, scale):
    """Row losses, ``d Σ_i s_i ℓ_i / dx`` (autograd) and lse, in float64."""
    xd = x.to(F64).requires_grad_()
    xc = _capped(xd, cap)
    v = x.shape[-1]
    w64 = torch.ones(v, dtype=F64) if w is None else w.to(F64)
    kept = (t >= 0) & (t < v)
    tc = torch.where(kept, t, 0)
    lse = torch.logsumexp(xc, -1)
    logp = xc - lse[:, None]
    wy = w64[tc]
    loss = (1 - eps) * wy * -logp.gather(-1, tc[:, None]).squeeze(-1)
    loss = loss + (eps / v) * -(logp * w64).sum(-1) + z * wy * lse**2
    loss = torch.where(kept, loss, 0.0)
    (loss * scale.to(F64)).sum().backward()
    return loss.detach(), xd.grad, lse.detach()


def _ref_prob(x, y, w, eps, z, cap, scale):
    """Row losses ``Σ w y' (lse − x') + z lse²`` and their autograd gradient, in float64."""
    xd = x.to(F64).requires_grad_()
    xc = _capped(xd, cap)
    v = x.shape[-1]
    yy = y.to(F64) * (1 - eps) + eps / v
    if w is not None:
        yy = yy * w.to(F64)
    lse = torch.logsumexp(xc, -1)
    loss = (yy * (lse[:, None] - xc)).sum(-1) + z * lse**2
    (loss * scale.to(F64)).sum().backward()
    return loss.detach(), xd.grad, lse.detach(), yy.sum(-1)


def _close(got, exact, *, rtol, scale=None):
    """``|got − exact| ≤ rtol · (|exact| + scale)`` elementwise, ``scale`` the row's (or the
    whole tensor's) largest ``|exact|`` unless given."""
    got, exact = got.to(F64), exact.to(F64)
    if scale is None:
        scale = exact.abs().amax(-1, keepdim=True) if exact.dim() > 1 else exact.abs().max()
    bound = rtol * (exact.abs() + scale)
    assert torch.isfinite(got).all()
    err = ((got - exact).abs() / bound.clamp_min(1e-300)).max().item()
    assert err <= 1.0, f"error {err:.3g} x the tolerance (rtol {rtol:g})"


def _grad_rtol(dtype):
    return RTOL32 if dtype == torch.float32 else ULP[dtype] + RTOL32


def _index_setup(gen, x, t, w):
    """Row scales (an upstream gradient, 0 on ignored rows), ``w_y`` and ``W``."""
    v = x.shape[-1]
    kept = (t >= 0) & (t < v)
    w32 = torch.ones(v) if w is None else w
    scale = torch.where(kept, torch.rand(t.shape, generator=gen) + 0.25, 0.0)
    tw = torch.where(kept, w32[torch.where(kept, t, 0)], 0.0)
    return scale, tw, float(w32.sum())


# --------------------------------------------------------------------------- tanh


@triton.jit
def _tanh_kernel(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(Y + cols, TR._tanh(tl.load(X + cols, mask=cols < N)), mask=cols < N)


def _tanh(u):
    out = torch.empty_like(u)
    block = 1 << 16
    _tanh_kernel[(triton.cdiv(u.numel(), block),)](u, out, u.numel(), BLOCK=block)
    return out


def test_tanh_within_two_ulp():
    """The exp-based tanh (both branches and the switch at 0.625) against float64."""
    u = torch.cat(
        [
            torch.logspace(-30, 1.5, 200_000, dtype=F64).float(),
            torch.linspace(0.55, 0.7, 100_000, dtype=F64).float(),
        ]
    )
    u = torch.cat([u, -u])
    exact = torch.tanh(u.to(F64))
    ulp = torch.from_numpy(np.spacing(exact.float().abs().numpy())).to(F64)
    err = (_tanh(u).to(F64) - exact).abs() / ulp
    assert err.max() <= 2.0
    # the chain factor 1 − t² from this t: float32 accuracy in absolute terms
    t = _tanh(u).to(F64)
    assert ((1 - t * t) - (1 - exact * exact)).abs().max() <= 2.0**-22


def test_tanh_special_values():
    u = torch.tensor([float("inf"), -float("inf"), 0.0, -0.0, 1e-45, 15.0, 3e38, -3e38])
    torch.testing.assert_close(_tanh(u), torch.tanh(u), rtol=0, atol=0)
    assert torch.isnan(_tanh(torch.tensor([float("nan")]))).all()


# --------------------------------------------------------------------------- statistics


@pytest.mark.parametrize(
    ("v", "dtype", "weighted"),
    [
        *itertools.product(VOCABS, [torch.float32], [False, True]),
        (BLOCK + 1, torch.bfloat16, True),
        (BLOCK + 1, torch.float16, True),
    ],
)
def test_row_stats_are_those_of_the_softcapped_logits(gen, v, dtype, weighted):
    x, t, w = _case(gen, 7, v, dtype, scale=20.0, weighted=weighted)
    t[0] = int(x[0].float().argmax())  # a target at the max
    st = TR.logits_row_stats(x, t, class_weight=w, with_sum=True, softcap=CAP)
    m, sumexp, xt, has, s = _ref_stats(x, t, w, CAP)
    _close(st.max, m, rtol=RTOL32, scale=CAP)
    _close(st.sumexp, sumexp, rtol=RTOL32 * CAP)
    _close(st.target_logit, xt, rtol=RTOL32, scale=CAP)
    assert torch.equal(st.has_target, has)
    _close(st.sum_logits, s, rtol=RTOL32, scale=CAP * v)
    assert st.max.abs().max() <= CAP


def test_row_stats_of_shards_merge_to_the_whole_row(gen):
    v = 3 * BLOCK + 2
    x, t, w = _case(gen, 7, v, torch.float32, scale=40.0)
    cut = [0, BLOCK + 1, 2 * BLOCK - 3, v]
    parts = []
    for a, b in itertools.pairwise(cut):
        st = TR.logits_row_stats(
            x[:, a:b], t, class_offset=a, class_weight=w[a:b], with_sum=True, softcap=CAP
        )
        _, sumexp, xt, has, _ = _ref_stats(x[:, a:b], t, w[a:b], CAP, offset=a)
        _close(st.sumexp, sumexp, rtol=RTOL32 * CAP)
        _close(st.target_logit, xt, rtol=RTOL32, scale=CAP)
        assert torch.equal(st.has_target, has)
        parts.append(st)
    merged = K.merge_row_stats(parts)
    *_, lse = _ref_index(x, t, w, 0.0, 0.0, CAP, torch.ones(7))
    _close(K.row_lse(merged), lse, rtol=RTOL32, scale=CAP)


# --------------------------------------------------------------------------- gradient pass


@pytest.mark.parametrize(
    ("v", "eps", "z", "dtype", "reference"),
    [
        (BLOCK - 3, 0.0, 0.0, torch.float32, "lse"),
        (BLOCK, 0.1, 0.0, torch.float32, "max"),
        (BLOCK + 1, 0.0, 1e-2, torch.float32, "lse"),
        (3 * BLOCK + 5, 0.2, 1e-2, torch.float32, "max"),
        (2 * BLOCK + 3, 0.1, 1e-2, torch.bfloat16, "max"),
        (2 * BLOCK + 3, 0.1, 1e-2, torch.float16, "lse"),
    ],
)
def test_grad_pass_over_shards(gen, v, eps, z, dtype, reference):
    """The vocabulary-parallel protocol with a softcap: shard statistics, merged, global
    coefficients (with the z-loss), then each shard's gradient with respect to x."""
    x, t, w = _case(gen, 6, v, dtype, scale=25.0)
    scale, tw, wtot = _index_setup(gen, x, t, w)
    cut = [0, v // 3, v // 2 + 1, v]
    shards = list(itertools.pairwise(cut))
    merged = K.merge_row_stats(
        [
            TR.logits_row_stats(
                x[:, a:b], t, class_offset=a, class_weight=w[a:b], with_sum=True, softcap=CAP
            )
            for a, b in shards
        ]
    )
    coef = K.index_target_coefficients(
        merged, scale, tw, label_smoothing=eps, num_classes=v, weight_total=wtot, z_loss=z
    )
    if reference == "max":  # the callers' form: lse relative to the exact max, folded into α
        lse = merged.max
        coef = K.GradCoefficients(
            coef.p_scale * torch.exp(-K.row_lse_rel(merged)), coef.smooth_scale, coef.target_grad
        )
    else:
        lse = K.row_lse(merged)
    got = torch.cat(
        [
            TR.logits_grad(
                x[:, a:b], t, lse, coef, class_offset=a, class_weight=w[a:b], softcap=CAP
            )
            for a, b in shards
        ],
        dim=1,
    )
    assert got.dtype == dtype
    _, exact, _ = _ref_index(x, t, w, eps, z, CAP, scale)
    _close(got, exact, rtol=_grad_rtol(dtype))


# --------------------------------------------------------------------------- fused sweep


FUSED = [
    (v, eps, z, weighted)
    for v, (eps, z, weighted) in zip(
        VOCABS * 2,
        itertools.product([0.0, 0.25], [0.0, 1e-2], [False, True]),
        strict=True,
    )
]


@pytest.mark.parametrize("cap", [None, CAP])
@pytest.mark.parametrize(("v", "eps", "z", "weighted"), FUSED)
def test_fused_sweep(gen, v, eps, z, weighted, cap):
    x, t, w = _case(gen, 7, v, torch.float32, scale=12.0, weighted=weighted)
    scale, tw, wtot = _index_setup(gen, x, t, w)
    st, g = TR.logits_fused(
        x,
        t,
        scale,
        tw,
        label_smoothing=eps,
        weight_total=wtot,
        class_weight=w,
        z_loss=z,
        softcap=cap,
    )
    m, sumexp, _, has, s = _ref_stats(x, t, w, cap)
    loss, exact, lse = _ref_index(x, t, w, eps, z, cap, scale)
    bound = CAP if cap is not None else x.abs().max().item()
    _close(st.max, m, rtol=RTOL32, scale=bound)
    _close(st.sumexp, sumexp, rtol=RTOL32 * bound)
    _close(K.row_lse(st), lse, rtol=RTOL32, scale=bound)
    assert torch.equal(st.has_target, has)
    if eps:
        _close(st.sum_logits, s, rtol=RTOL32, scale=bound * v)
    _close(g, exact, rtol=RTOL32 * max(1.0, bound / CAP))
    # the caller's loss from these statistics (the z-loss on the kept rows)
    lse32 = K.row_lse(st)
    got = (1 - eps) * tw * K.row_nll(st) + z * tw * lse32**2
    if eps:
        got = got + eps / v * (wtot * lse32 - st.sum_logits)
    _close(torch.where(has, got, 0.0), loss, rtol=RTOL32 * 4, scale=loss.abs().max())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_fused_sweep_half_precision(gen, dtype):
    x, t, w = _case(gen, 6, 2 * BLOCK + 3, dtype, scale=25.0)
    scale, tw, wtot = _index_setup(gen, x, t, w)
    out = torch.empty_like(x)
    st, g = TR.logits_fused(
        x,
        t,
        scale,
        tw,
        label_smoothing=0.1,
        weight_total=wtot,
        class_weight=w,
        out=out,
        z_loss=1e-2,
        softcap=CAP,
    )
    assert g is out and g.dtype == dtype
    _, exact, lse = _ref_index(x, t, w, 0.1, 1e-2, CAP, scale)
    _close(K.row_lse(st), lse, rtol=RTOL32, scale=CAP)  # statistics in float32
    _close(g, exact, rtol=_grad_rtol(dtype))


def test_z_loss_term_is_two_z_w_lse_p(gen):
    """The z-loss's own gradient: fused(z) − fused(0) = s · 2 z w_y lse (p − [c = y])."""
    x, t, w = _case(gen, 5, BLOCK + 3, torch.float32, scale=4.0, ignore=True)
    scale, tw, wtot = _index_setup(gen, x, t, w)
    kw = dict(label_smoothing=0.0, weight_total=wtot, class_weight=w, softcap=CAP)
    _, g0 = TR.logits_fused(x, t, scale, tw, **kw)
    _, gz = TR.logits_fused(x, t, scale, tw, z_loss=0.5, **kw)
    xd = x.to(F64).requires_grad_()
    xc = _capped(xd, CAP)
    lse = torch.logsumexp(xc, -1)
    kept = t >= 0
    zl = torch.where(kept, 0.5 * tw.to(F64) * lse**2, 0.0)
    (zl * scale.to(F64)).sum().backward()
    _close(gz - g0, xd.grad, rtol=RTOL32 * 4, scale=xd.grad.abs().max())


def test_confident_rows_keep_the_true_class_gradient():
    """Softcapped target logits 18, 25, 29 (of c = 30): the true-class gradient is
    −q (1 − t_y²) with q = Σ_{c≠y} p_c ~ 1e-7..1e-11 to full relative precision, not the
    p_y − 1 that would cancel."""
    v = 2 * BLOCK + 1
    target = torch.tensor([18.0, 25.0, 29.0], dtype=F64)
    x = torch.zeros(3, v)
    x[:, 0] = (CAP * torch.atanh(target / CAP)).float()
    t = torch.zeros(3, dtype=torch.long)
    ones = torch.ones(3)
    st, g = TR.logits_fused(x, t, ones, ones, label_smoothing=0.0, weight_total=v, softcap=CAP)
    ty = torch.tanh(x[:, 0].to(F64) / CAP)
    xy = CAP * ty
    q = (v - 1) * torch.exp(-xy) / (1 + (v - 1) * torch.exp(-xy))
    torch.testing.assert_close(g[:, 0].to(F64), -q * (1 - ty**2), rtol=5e-5, atol=0)
    torch.testing.assert_close(K.other_prob(st).to(F64), q, rtol=2e-5, atol=0)
    # the loss, ~q: row_nll keeps it too
    torch.testing.assert_close(K.row_nll(st).to(F64), torch.log1p(q / (1 - q)), rtol=2e-5, atol=0)


def test_softcap_bounds_large_and_infinite_logits(gen):
    """Logits of 1e4, 3e38 and ±inf are finite after the cap: finite statistics, the true max
    as reference point, and a gradient of 0 where tanh has saturated."""
    v = 2 * BLOCK + 3
    x = torch.randn(6, v, generator=gen) * 20
    x[:, 1] = 1e4
    x[1, 2:5] = torch.tensor([3e38, -3e38, float("inf")])
    x[2, :] = -float("inf")
    x[3, 5] = float("inf")
    t = torch.randint(0, v, (6,), generator=gen)
    t[4] = -100
    ones = torch.ones(6)
    scale = torch.where(t >= 0, ones, 0.0)
    st, g = TR.logits_fused(x, t, scale, ones, label_smoothing=0.1, weight_total=v, softcap=CAP)
    m, sumexp, _, _, s = _ref_stats(x, t, None, CAP)
    assert torch.equal(st.max, m.float())  # c tanh(∞) = c exactly
    _close(st.sumexp, sumexp, rtol=RTOL32 * CAP)
    _close(st.sum_logits, s, rtol=RTOL32, scale=CAP * v)
    _, exact, lse = _ref_index(x, t, None, 0.1, 0.0, CAP, scale)
    _close(K.row_lse(st), lse, rtol=RTOL32, scale=CAP)
    _close(g, exact, rtol=RTOL32 * 3)
    assert (g[:, 1] == 0).all()  # tanh(1e4 / 30) = 1: 1 − t² = 0


# --------------------------------------------------------------------------- probability targets


@pytest.mark.parametrize(
    ("v", "eps", "z", "weighted", "dtype"),
    [
        (BLOCK - 3, 0.0, 0.0, False, torch.float32),
        (BLOCK, 0.2, 1e-2, True, torch.float32),
        (BLOCK + 1, 0.0, 1e-2, True, torch.float32),
        (3 * BLOCK + 5, 0.1, 0.0, True, torch.float32),
        (2 * BLOCK + 3, 0.1, 1e-2, True, torch.bfloat16),
        (2 * BLOCK + 3, 0.1, 1e-2, True, torch.float16),
    ],
)
def test_probability_targets(gen, v, eps, z, weighted, dtype):
    x = (torch.randn(5, v, generator=gen) * 25).to(dtype)
    y = torch.softmax(torch.randn(5, v, generator=gen) * 2, dim=1)
    w = torch.rand(v, generator=gen) + 0.5 if weighted else None
    scale = torch.rand(5, generator=gen) + 0.25
    ref, rel, loss, amass = TR.prob_row_stats(
        x, y, class_weight=w, label_smoothing=eps, softcap=CAP
    )
    exact_loss, exact, lse, a = _ref_prob(x, y, w, eps, 0.0, CAP, torch.ones(5))
    m = _capped(x.to(F64), CAP).amax(-1)
    _close(ref, m, rtol=RTOL32, scale=CAP)
    _close(ref + rel, lse, rtol=RTOL32, scale=CAP)
    _close(loss, exact_loss, rtol=RTOL32 * 4, scale=exact_loss.abs().max())
    _close(amass, a, rtol=RTOL32)
    # the z-loss, the caller's: ℓ + z lse², its gradient (A + 2 z lse) p − w y'
    lse32 = ref + rel
    am = amass + 2 * z * lse32
    # the callers' form: lse relative to the exact max, e^{−rel} folded into A
    g = TR.prob_grad(
        x, y, ref, scale, am * torch.exp(-rel), class_weight=w, label_smoothing=eps, softcap=CAP
    )
    assert g.dtype == dtype
    _, exact, _, _ = _ref_prob(x, y, w, eps, z, CAP, scale)
    _close(g, exact, rtol=_grad_rtol(dtype))


# --------------------------------------------------------------------------- defaults


def test_defaults_are_bit_identical(gen):
    """softcap=None and z_loss=0.0 give the results of calls without them, bit for bit."""
    v = 2 * BLOCK + 3
    x, t, w = _case(gen, 5, v, torch.float32)
    scale, tw, wtot = _index_setup(gen, x, t, w)
    y = torch.softmax(torch.randn(5, v, generator=gen), dim=1)

    def same(a, b):
        for p, q in zip(a, b, strict=True):
            assert (p is None and q is None) or torch.equal(p, q)

    kw = dict(class_weight=w, with_sum=True)
    same(
        _fields(TR.logits_row_stats(x, t, **kw)),
        _fields(TR.logits_row_stats(x, t, softcap=None, **kw)),
    )
    st = TR.logits_row_stats(x, t, **kw)
    coef = K.index_target_coefficients(
        st, scale, tw, label_smoothing=0.1, num_classes=v, weight_total=wtot
    )
    lse = K.row_lse(st)
    assert torch.equal(
        TR.logits_grad(x, t, lse, coef, class_weight=w),
        TR.logits_grad(x, t, lse, coef, class_weight=w, softcap=None),
    )
    fkw = dict(label_smoothing=0.1, weight_total=wtot, class_weight=w)
    a_st, a_g = TR.logits_fused(x, t, scale, tw, **fkw)
    b_st, b_g = TR.logits_fused(x, t, scale, tw, z_loss=0.0, softcap=None, **fkw)
    same(_fields(a_st), _fields(b_st))
    assert torch.equal(a_g, b_g)
    pkw = dict(class_weight=w, label_smoothing=0.1)
    pa = TR.prob_row_stats(x, y, **pkw)
    same(pa, TR.prob_row_stats(x, y, softcap=None, **pkw))
    assert torch.equal(
        TR.prob_grad(x, y, pa[0] + pa[1], scale, pa[3], **pkw),
        TR.prob_grad(x, y, pa[0] + pa[1], scale, pa[3], softcap=None, **pkw),
    )


def _fields(st):
    return (st.max, st.sumexp, st.target_logit, st.has_target, st.sum_logits)


# --------------------------------------------------------------------------- through _kernels


@pytest.mark.parametrize(
    ("eps", "z", "cap"), [(0.0, 1e-2, CAP), (0.1, 0.0, CAP), (0.1, 1e-2, None)]
)
def test_kernels_dispatch_matches_torch_ops(gen, eps, z, cap):
    """``_kernels`` passes ``softcap``/``z_loss`` to Triton: the same numbers as its torch ops."""
    v = 2 * BLOCK + 3
    x, t, w = _case(gen, 6, v, torch.float32, scale=20.0)
    scale, tw, wtot = _index_setup(gen, x, t, w)
    kw = dict(label_smoothing=eps, weight_total=wtot, class_weight=w, z_loss=z, softcap=cap)
    res = {}
    for impl in ("triton", "torch"):
        st, g = K.logits_fused(x, t, scale, tw, **kw, impl=impl)
        st2 = K.logits_row_stats(x, t, class_weight=w, with_sum=True, softcap=cap, impl=impl)
        coef = K.index_target_coefficients(
            st2, scale, tw, label_smoothing=eps, num_classes=v, weight_total=wtot, z_loss=z
        )
        rel = K.row_lse_rel(st2)
        g2 = K.logits_grad(x, t, rel, coef, class_weight=w, ref=st2.max, softcap=cap, impl=impl)
        res[impl] = (K.row_lse(st), K.row_nll(st), g, K.row_lse(st2), g2)
    for a, b in zip(res["triton"], res["torch"], strict=True):
        torch.testing.assert_close(a, b, rtol=RTOL32 * 4, atol=RTOL32 * 4 * b.abs().max().item())


# --------------------------------------------------------------------------- compiled for CUDA

_COMPILE_FOR_SM90 = r"""
import inspect
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from crossentropy.torch import _triton as TR

FLAGS = {"HAS_WEIGHT", "WITH_SUM", "SMOOTH", "Z_LOSS", "SOFTCAP", "BLOCK"}
for name in ("_stats_kernel", "_grad_kernel", "_fused_kernel", "_prob_stats_kernel",
             "_prob_grad_kernel"):
    kernel = getattr(TR, name)
    params = list(inspect.signature(kernel.fn).parameters)
    sig = {}
    for p in params:
        if p in FLAGS:
            sig[p] = "constexpr"
        elif p in ("X", "G"):
            sig[p] = "*bf16"
        elif p in ("T", "HAS_out"):
            sig[p] = "*i64" if p == "T" else "*i8"
        elif p[0].isupper() and p not in ("D", "V"):
            sig[p] = "*fp32"
        else:
            sig[p] = "fp32" if p in ("eps", "zl", "cap", "inv_cap") else "i64"
    const = {(params.index(p),): 1024 if p == "BLOCK" else True for p in FLAGS if p in params}
    src = ASTSource(fn=kernel, signature=sig, constexprs=const)
    triton.compile(src, target=GPUTarget("cuda", 90, 32))
"""


def test_kernels_compile_for_cuda():
    """The interpreter runs the kernels as Python; this compiles them, every option on, for
    an H100 (sm_90) with Triton's own ptxas, no GPU needed: what the interpreter cannot see
    (types, constexpr branches, the exp-based tanh) lowers to a cubin."""
    import importlib.util
    import os
    import subprocess
    import sys

    if importlib.util.find_spec("triton.backends.nvidia") is None:
        pytest.skip("Triton without its NVIDIA backend")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    src = os.path.dirname(os.path.dirname(os.path.dirname(TR.__file__)))
    env["PYTHONPATH"] = os.pathsep.join([src, env.get("PYTHONPATH", "")])
    run = subprocess.run(
        [sys.executable, "-c", _COMPILE_FOR_SM90], env=env, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-4000:]
