"""Hostile review of how the compiled CPU kernels single out the target's column (14e98f8).

The kernels of ``crossentropy.torch._compiled`` compare a tensor of column indices with each
row's target column (``cols == loc``: float32 up to 2**24 classes, int64 beyond) and gather
the target logit with one load per row (``z.gather(-1, idx)``) instead of a masked sum. Every
case here runs through the compiled kernels (``force_fused``), checks that they really took the
call (``spy_compiled``: a silent decline fails), and compares with a float64 reference (plain
torch ops on the same rounded inputs) or with the library's own ``impl="torch"`` path.
Defects are kept as ``xfail(strict=True)`` with the defect in the reason.
"""

from __future__ import annotations

import math
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import (  # noqa: E402
    _kernels,
    _rows,
    _token_ops,
    cross_entropy,
    linear_cross_entropy,
    linear_token_stats,
    token_stats,
)

pytestmark = pytest.mark.usefixtures("force_fused")

INF = float("inf")
NAN = float("nan")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
#: max |a − b| / max |b| against the float64 reference on the same (rounded) inputs
REF = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}
#: the class counts: around the vector widths (8/16 float32 lanes, 32 bfloat16) and tails
CLASSES = (2, 3, 17, 31, 33, 513, 1025)


# --------------------------------------------------------------------------- helpers


def _rel(a: Any, b: Any) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().clamp_min(1e-300)
    return float((a - b).abs().max() / scale)


def _ce(x: Any, t: Any, impl: str = "auto", scale: Any = None, **kw: Any) -> tuple[Any, Any]:
    """Loss and gradient of ``cross_entropy`` (``scale``: the upstream of a "none" loss)."""
    xx = x.detach().clone().requires_grad_()
    loss = cross_entropy(xx, t, impl=impl, **kw)
    (loss if scale is None else loss * scale.to(loss.dtype)).sum().backward()
    return loss.detach(), xx.grad


def _ref_ce(
    x: Any,
    t: Any,
    *,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    scale: Any = None,
) -> tuple[Any, Any]:
    """float64 reference of the documented definition: loss and gradient."""
    xd = x.detach().double().requires_grad_()
    z = xd if softcap is None else softcap * torch.tanh(xd / softcap)
    t = t.long()
    w = None if weight is None else weight.double()
    per = F.cross_entropy(
        z, t, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    keep = t != ignore_index
    wy = torch.ones_like(per) if w is None else w[t.clamp(0, z.shape[-1] - 1)]
    wy = torch.where(keep, wy, 0.0)
    if z_loss:
        per = per + torch.where(keep, z_loss * wy * torch.logsumexp(z, -1) ** 2, 0.0)
    if reduction == "none":
        out = per
    else:
        out = per.sum()
        if reduction == "mean":
            out = out / wy.sum()
    (g,) = torch.autograd.grad((out if scale is None else out * scale.double()).sum(), xd)
    return out.detach(), g


def _edge_rows(c: int, dtype: Any, seed: int = 0) -> tuple[Any, Any]:
    """Rows with the target on every edge column: 0, 1, and each of the last 40 columns (the
    vector tails of every width), as the strict max, tied with another column for the max,
    and as the minimum; plus random rows."""
    g = torch.Generator().manual_seed(seed)
    cols = sorted({0, 1 % c} | {c - 1 - k for k in range(min(c, 40))})
    rows = []
    targets = []
    for j in cols:
        base = 3 * torch.randn(3, c, generator=g, dtype=torch.float64)
        base[0, j] = base[0].max() + 4.0  # the target is the strict max
        other = (j + c // 2 + 1) % c if c > 1 else j
        top = base[1].max() + 1.0
        base[1, j] = top  # tied for the max with another column
        base[1, other] = top
        base[2, j] = base[2].min() - 2.0  # the target is the minimum
        rows.append(base)
        targets += [j, j, j]
    rows.append(3 * torch.randn(6, c, generator=g, dtype=torch.float64))
    targets += torch.randint(0, c, (6,), generator=g).tolist()
    return torch.cat(rows).to(dtype), torch.tensor(targets)


def _took(calls: list[str], *names: str) -> None:
    assert "declined" not in calls, calls
    for name in names:
        assert name in calls, calls


def _ref_tokens(z: Any, t: Any, ignore: int = -100, softcap: Any = None) -> tuple[Any, ...]:
    """float64 token statistics: (logprob, entropy, lse, argmax)."""
    z = z.double()
    if softcap is not None:
        z = softcap * torch.tanh(z / softcap)
    m = z.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(m), m, 0.0)
    zs = z - m
    lsm = zs.log_softmax(-1)
    p = lsm.exp()
    ent = -(p * torch.where(p > 0, lsm, 0.0)).sum(-1)
    t = t.long()
    keep = t != ignore
    lp = lsm.gather(-1, torch.where(keep, t, 0)[..., None])[..., 0]
    return torch.where(keep, lp, 0.0), ent, zs.logsumexp(-1) + m[..., 0], z.argmax(-1)


UPS = (1.0, 0.3, 0.7)  # upstream coefficients of (logprob, entropy, lse)


def _tok_loss(out: Any, w: Any) -> Any:
    return sum(u * (o * w.to(o.dtype)).sum() for u, o in zip(UPS, out[:3], strict=False))


# --------------------------------------------------------------------------- cross-entropy


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_target_on_every_edge_column(dtype: Any, spy_compiled: Any) -> None:
    """The target in the first, second and every tail column, as the max, tied and the min:
    loss and gradient of the fused pass ("mean") against float64, for class counts around
    and between the vector widths; the gradient at the target column is ``p_y − 1`` (< 0)
    and each row's gradient sums to 0."""
    calls = spy_compiled("logits_fused")
    for c in CLASSES:
        x, t = _edge_rows(c, dtype, seed=c)
        loss, grad = _ce(x, t)
        ref_loss, ref_grad = _ref_ce(x, t)
        assert loss.dtype == grad.dtype == dtype
        assert _rel(loss, ref_loss) <= REF[dtype], c
        assert _rel(grad, ref_grad) <= REF[dtype], c
        rows = torch.arange(len(t))
        gy = grad.double()[rows, t] * len(t)
        ry = ref_grad[rows, t] * len(t)
        assert (gy <= 0).all(), c
        assert (gy - ry).abs().max() <= 4 * REF[dtype], c
        if dtype in (torch.float32, torch.float64):
            assert grad.double().sum(-1).abs().max() <= 1e3 * REF[dtype] / len(t), c
    _took(calls, "logits_fused")


def test_reduction_none_edge_columns_with_an_upstream(spy_compiled: Any) -> None:
    """``reduction="none"`` runs the statistics pass, then the gradient pass in backward (no
    one-exp scale pass): per-row losses and the gradient for a per-row upstream, the target
    on the edge columns."""
    calls = spy_compiled("logits_row_stats", "logits_grad")
    for c in (3, 17, 33, 1025):
        x, t = _edge_rows(c, torch.float32, seed=100 + c)
        up = torch.linspace(-2.0, 3.0, len(t), dtype=torch.float64)
        loss, grad = _ce(x, t, reduction="none", scale=up)
        ref_loss, ref_grad = _ref_ce(x, t, reduction="none", scale=up)
        assert _rel(loss, ref_loss) <= REF[torch.float32], c
        assert _rel(grad, ref_grad) <= REF[torch.float32], c
    _took(calls, "logits_row_stats", "logits_grad")


OPTION_GRID = [
    ("mean", torch.float32),
    ("sum", torch.float32),
    ("none", torch.float32),
    ("mean", torch.bfloat16),
    ("none", torch.float16),
    ("sum", torch.float64),
]


@pytest.mark.parametrize(("reduction", "dtype"), OPTION_GRID, ids=lambda v: str(v))
def test_every_option_with_edge_targets(reduction: str, dtype: Any, spy_compiled: Any) -> None:
    """label smoothing, class weights, z-loss and softcap together, the target on the edge
    columns and ``ignore_index`` a valid class that some edge rows carry."""
    names = ("logits_fused",) if reduction != "none" else ("logits_row_stats", "logits_grad")
    calls = spy_compiled(*names)
    for c in (17, 33):
        x, t = _edge_rows(c, dtype, seed=200 + c)
        t[::5] = c - 1  # ignored rows, the ignored class being the last column
        w = (0.2 + torch.rand(c, generator=torch.Generator().manual_seed(c))).to(dtype)
        kw = {
            "weight": w,
            "ignore_index": c - 1,
            "label_smoothing": 0.15,
            "z_loss": 1e-3,
            "softcap": 7.5,
            "reduction": reduction,
        }
        up = torch.linspace(0.5, 1.5, len(t), dtype=torch.float64)
        scale = up if reduction == "none" else None
        loss, grad = _ce(x, t, scale=scale, **kw)
        ref_loss, ref_grad = _ref_ce(x, t, scale=scale, **kw)
        assert loss.dtype == grad.dtype == dtype
        assert _rel(loss, ref_loss) <= REF[dtype], c
        assert _rel(grad, ref_grad) <= REF[dtype], c
        assert torch.equal(grad[t == c - 1], torch.zeros_like(grad[t == c - 1]))
    _took(calls, *names)


@pytest.mark.parametrize("ignore_index", [-1, 0, 16])
def test_ignore_index_on_a_column_the_kernel_singles_out(
    ignore_index: int, spy_compiled: Any
) -> None:
    """``ignore_index`` equal to -1 (one below the first column: must never match ``cols``),
    0 (the column an out-of-shard row's clamped index points at) or the last class: the
    ignored rows, with NaN/±inf logits in the very column the kernel would load, give no loss
    and exact zero gradients; the kept rows match float64."""
    calls = spy_compiled("logits_fused")
    c = 17
    x, t = _edge_rows(c, torch.float32, seed=7)
    ign = torch.zeros(len(t), dtype=torch.bool)
    ign[::3] = True
    t[ign] = ignore_index
    ign = t == ignore_index  # edge rows already on that class are ignored too
    rows = ign.nonzero().flatten()
    col = 0 if ignore_index < 0 else ignore_index
    x[rows[0::3], col] = NAN
    x[rows[1::3], col] = INF
    x[rows[2::3], col] = -INF
    x[rows[0], :] = NAN
    for red in ("mean", "sum"):
        loss, grad = _ce(x, t, ignore_index=ignore_index, reduction=red, label_smoothing=0.1)
        keep = ~ign
        ref_loss, ref_grad = _ref_ce(
            x[keep], t[keep], reduction="sum", label_smoothing=0.1, ignore_index=ignore_index
        )
        if red == "mean":
            ref_loss, ref_grad = ref_loss / keep.sum(), ref_grad / keep.sum()
        assert math.isfinite(float(loss)), (red, float(loss))
        assert _rel(loss, ref_loss) <= REF[torch.float32]
        assert torch.equal(grad[ign], torch.zeros_like(grad[ign]))
        assert _rel(grad[keep], ref_grad) <= REF[torch.float32]
    _took(calls, "logits_fused")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_every_row_ignored(dtype: Any, spy_compiled: Any) -> None:
    calls = spy_compiled("logits_fused")
    x, t = _edge_rows(33, dtype, seed=3)
    t[:] = 0
    loss, grad = _ce(x, t, ignore_index=0)
    assert math.isnan(float(loss)) and math.isnan(float(F.cross_entropy(x, t, ignore_index=0)))
    assert torch.equal(grad, torch.zeros_like(grad))
    loss, grad = _ce(x, t, ignore_index=0, reduction="sum", label_smoothing=0.3)
    assert float(loss) == 0.0 and torch.equal(grad, torch.zeros_like(grad))
    _took(calls, "logits_fused")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_non_finite_live_rows_as_F_and_the_torch_op_kernels(dtype: Any, spy_compiled: Any) -> None:
    """Live rows with a NaN or ±inf logit in the target column, beside it, or in the first and
    last column: the NaN pattern of the per-row loss is F's, and the values are those of the
    torch-op kernels (``reduction="none"``, whose gradient pass runs in backward)."""
    calls = spy_compiled("logits_row_stats", "logits_grad")
    c = 33
    g = torch.Generator().manual_seed(5)
    x = (3 * torch.randn(12, c, generator=g)).to(dtype)
    t = torch.tensor([0, 32, 31, 16, 0, 32, 5, 5, 5, 32, 0, 17])
    x[0, 0] = NAN  # NaN target
    x[1, 32] = INF  # +inf target: inf − inf
    x[2, 31] = -INF  # -inf target: infinite loss
    x[3, 17] = NAN  # NaN beside the target
    x[4, 32] = INF  # +inf elsewhere: infinite loss
    x[5, 0] = -INF  # -inf elsewhere: harmless
    x[6, :] = -INF  # every class masked but the target
    x[6, 5] = 1.0
    x[7, :5] = -INF
    x[7, 6:] = -INF
    x[7, 5] = -3.0
    x[8, 5] = 1e4  # confident and right
    x[9, 0] = 1e4  # confident and wrong, target the last column
    x[10, 1] = x[10, 32] = 50.0  # tie away from the target
    up = torch.linspace(0.5, 1.5, 12, dtype=torch.float64)
    loss, grad = _ce(x, t, reduction="none", scale=up)
    loss_t, grad_t = _ce(x, t, reduction="none", scale=up, impl="torch")
    ref = F.cross_entropy(x.double(), t, reduction="none")
    assert torch.equal(loss.isnan(), ref.isnan()), (loss, ref)
    assert torch.equal(loss.isinf(), ref.isinf()), (loss, ref)
    torch.testing.assert_close(loss, loss_t, equal_nan=True, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad, grad_t, equal_nan=True, rtol=1e-6, atol=1e-6)
    fin = torch.isfinite(ref)
    torch.testing.assert_close(loss[fin].double(), ref[fin], rtol=1e-6, atol=1e-6)
    _took(calls, "logits_row_stats", "logits_grad")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_inplace_backward_loss_and_gradient(dtype: Any, spy_compiled: Any) -> None:
    """``inplace_backward=True`` without softcap takes the one-exp pass that overwrites the
    logits with ``e^{x − m}`` in the same kernel that loads the target logit (one load per
    row): the loss must still be of the logits, not of the exponentials."""
    calls = spy_compiled("logits_fused")
    for c in (17, 33, 1025):
        x, t = _edge_rows(c, dtype, seed=300 + c)
        t[1] = -100
        w = (0.1 + torch.rand(c, generator=torch.Generator().manual_seed(c))).to(dtype)
        for kw in ({}, {"label_smoothing": 0.2, "weight": w}):
            leaf = x.clone().requires_grad_()
            inner = leaf * 1.0
            loss = cross_entropy(inner, t, inplace_backward=True, **kw)
            loss.backward()
            ref_loss, ref_grad = _ref_ce(x, t, **kw)
            assert _rel(loss.detach(), ref_loss) <= REF[dtype], (c, kw.keys())
            assert _rel(leaf.grad, ref_grad) <= REF[dtype], (c, kw.keys())
    _took(calls, "logits_fused")


def test_layouts_and_target_dtypes(spy_compiled: Any) -> None:
    """Targets of int32, uint8 and expanded (stride 0) int64; 3-D ``(N, d, C)`` logits viewed
    as rows; a non-contiguous slice of the classes and a 1-D row (the compiled kernels may
    decline those two: correctness only)."""
    calls = spy_compiled("logits_fused")
    c = 31
    x, t = _edge_rows(c, torch.float32, seed=11)
    ref_loss, ref_grad = _ref_ce(x, t)
    for tt in (t.to(torch.int32), t.to(torch.uint8), t.clone()):
        loss, grad = _ce(x, tt)
        assert _rel(loss, ref_loss) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5
    xe = x[:1].expand(8, c).contiguous()
    te = torch.tensor([c - 1]).expand(8)
    loss, grad = _ce(xe, te)
    rl, rg = _ref_ce(xe, te.contiguous())
    assert _rel(loss, rl) <= 1e-5 and _rel(grad, rg) <= 1e-5
    _took(calls, "logits_fused")
    # (N, C, d): classes in dim 1, targets (N, d)
    x3 = x[:30].reshape(5, 6, c).transpose(1, 2).contiguous()
    t3 = t[:30].reshape(5, 6)
    loss, grad = _ce(x3, t3, label_smoothing=0.1)
    rl, rg = _ref_ce(x[:30], t[:30], label_smoothing=0.1)
    assert _rel(loss, rl) <= 1e-5
    assert _rel(grad.transpose(1, 2).reshape(30, c), rg) <= 1e-5
    wide = torch.cat([x, torch.randn(len(t), 5)], dim=1)[:, :c]
    loss, grad = _ce(wide, t)
    assert _rel(loss, ref_loss) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5
    loss, grad = _ce(x[2], t[2])
    rl, rg = _ref_ce(x[2:3], t[2:3])
    assert _rel(loss, rl) <= 1e-5 and _rel(grad, rg[0]) <= 1e-5
    # a contiguous slice of rows of a bigger tensor (the kernel's base pointer moves)
    big = torch.cat([torch.randn(5, c), x, torch.randn(3, c)])
    loss, grad = _ce(big[5 : 5 + len(t)], t)
    assert _rel(loss, ref_loss) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5
    # a strided (every other) target of int32, beside contiguous logits
    t2 = torch.stack([t, torch.zeros_like(t)], dim=1).to(torch.int32).flatten()[::2]
    assert t2.stride() == (2,)
    loss, grad = _ce(x, t2)
    assert _rel(loss, ref_loss) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5


def test_token_stats_batched_logits_with_a_transposed_target(spy_compiled: Any) -> None:
    """(B, T, C) logits and a (B, T) target that is the transpose of a (T, B) tensor: each
    row's target column must follow the row through the reshape."""
    calls = spy_compiled("token_row_stats", "token_vjp")
    c, b, n = 17, 4, 9
    g = torch.Generator().manual_seed(13)
    x = 3 * torch.randn(b, n, c, generator=g)
    tt = torch.randint(0, c, (n, b), generator=g)
    tt[0, :] = c - 1
    tt[1, :] = 0
    t = tt.t()
    assert not t.is_contiguous()
    w = torch.linspace(-1.0, 1.0, b * n, dtype=torch.float64).reshape(b, n)
    xx = x.clone().requires_grad_()
    out = token_stats(xx, t)
    _tok_loss(out, w).backward()
    xr = x.detach().double().requires_grad_()
    ref = _ref_tokens(xr, t.contiguous())
    _tok_loss(ref, w).backward()
    for i in range(3):
        torch.testing.assert_close(out[i].double(), ref[i].detach(), rtol=4e-6, atol=4e-6)
    assert _rel(xx.grad, xr.grad) <= 1e-5
    _took(calls, "token_row_stats", "token_vjp")


def test_softcap_uniform_and_confident_rows_loss(spy_compiled: Any) -> None:
    """With a softcap the target logit is one load per row while the others go through the
    vector code: a row of equal logits must still give exactly ``log C`` (the target's capped
    logit equal to the max's), and a confident row a loss >= 0."""
    calls = spy_compiled("logits_row_stats", "logits_grad")
    c = 33
    vals = torch.linspace(-900.0, 900.0, 97)
    x = vals[:, None].expand(97, c).contiguous()
    t = torch.arange(97) % c
    loss, grad = _ce(x, t, softcap=1000.0, reduction="none")
    assert (loss.double() - math.log(c)).abs().max() <= 2e-6, loss
    onehot = F.one_hot(t, c).double()
    # d/dx of the capped logits: 1 - tanh², the same for every column of a row
    chain = 1 - torch.tanh(vals.double() / 1000.0) ** 2
    want = (1.0 / c - onehot) * chain[:, None]
    assert (grad.double() - want).abs().max() <= 1e-6
    x2 = torch.full((97, c), -1e4)
    x2[torch.arange(97), t] = vals + 1000.0
    loss2, _ = _ce(x2, t, softcap=1000.0, reduction="none")
    assert (loss2 >= 0).all(), loss2
    _took(calls, "logits_row_stats", "logits_grad")


# --------------------------------------------------------------------------- vocabulary shards


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_vocabulary_shards_with_class_offsets(dtype: Any, spy_compiled: Any) -> None:
    """The per-shard passes (``class_offset``, as the vocabulary-parallel functions call
    them): targets outside a shard (``loc = −1``) give no target logit even when the shard's
    first column, where the clamped index points, is NaN or inf; the merged statistics and the
    gradient of each shard equal the whole vocabulary's (float64) and the torch-op kernels'."""
    calls = spy_compiled("logits_row_stats", "logits_grad")
    c = 45
    x, t = _edge_rows(c, dtype, seed=21)
    t[4] = -100
    bounds = [(0, 17), (17, 19), (19, 45)]
    parts = {}
    for impl in ("auto", "torch"):
        parts[impl] = [
            _kernels.logits_row_stats(x[:, a:b].contiguous(), t, class_offset=a, impl=impl)
            for a, b in bounds
        ]
    for pa, pt in zip(parts["auto"], parts["torch"], strict=True):
        assert torch.equal(pa.has_target, pt.has_target)
        torch.testing.assert_close(pa.target_logit, pt.target_logit, rtol=0, atol=0)
        torch.testing.assert_close(pa.max, pt.max, rtol=0, atol=0)
        torch.testing.assert_close(pa.sumexp, pt.sumexp, rtol=2e-6, atol=1e-7)
    merged = _rows.merge_row_stats(parts["auto"])
    lse = _rows.row_lse(merged)
    nll = _rows.row_nll(merged)
    xd = x.double()
    keep = t != -100
    ref_lse = torch.logsumexp(xd, -1)
    torch.testing.assert_close(lse.double(), ref_lse, rtol=1e-6, atol=1e-6)
    ref_nll = F.cross_entropy(xd, t, reduction="none")
    torch.testing.assert_close(nll.double()[keep], ref_nll[keep], rtol=1e-5, atol=1e-6)
    ones = torch.ones(len(t))
    coef = _rows.index_target_coefficients(
        merged,
        keep.float(),
        ones,
        label_smoothing=0.0,
        num_classes=c,
        weight_total=float(c),
    )
    grads = [
        _kernels.logits_grad(x[:, a:b].contiguous(), t, lse, coef, class_offset=a)
        for a, b in bounds
    ]
    grad = torch.cat(grads, dim=-1)
    xr = xd.clone().requires_grad_()
    F.cross_entropy(xr, t, reduction="sum").backward()
    assert _rel(grad, xr.grad) <= REF[dtype]
    _took(calls, "logits_row_stats", "logits_grad")


def test_shard_whose_first_column_is_nan_for_rows_targeted_elsewhere(spy_compiled: Any) -> None:
    """A shard's column 0 is where an out-of-shard row's clamped index points: a NaN or inf
    there must not become the row's target logit (``has_target`` false, ``target_logit`` 0)."""
    calls = spy_compiled("logits_row_stats")
    x = torch.randn(6, 20)
    t = torch.tensor([0, 3, 25, 39, -100, 21])  # the shard holds classes 20..39
    x[:, 0] = torch.tensor([NAN, INF, 1.0, 2.0, NAN, -INF])
    st = _kernels.logits_row_stats(x, t, class_offset=20)
    st_t = _kernels.logits_row_stats(x, t, class_offset=20, impl="torch")
    assert st.has_target.tolist() == [False, False, True, True, False, True]
    assert st.target_logit[[0, 1, 4]].tolist() == [0.0, 0.0, 0.0]
    assert st.target_logit[2] == x[2, 5] and st.target_logit[3] == x[3, 19]
    assert st.target_logit[5] == x[5, 1]
    torch.testing.assert_close(st.target_logit, st_t.target_logit, rtol=0, atol=0)
    # a shard far past 2**24 (its own columns few): the local column, not the global index,
    # is what the kernel compares
    far = 2**25 + 7
    st = _kernels.logits_row_stats(x, torch.where(t >= 0, t - 20 + far, t), class_offset=far)
    assert st.has_target.tolist() == [False, False, True, True, False, True]
    torch.testing.assert_close(st.target_logit, st_t.target_logit, rtol=0, atol=0)
    _took(calls, "logits_row_stats")


def test_token_shard_partials_with_offsets(spy_compiled: Any) -> None:
    """The per-token partial sums of a vocabulary shard (``shard_offset``): ``z_y`` is 0 for
    rows targeted elsewhere, the shard's own target logit otherwise, as the torch-op tiles."""
    calls = spy_compiled("token_row_stats")
    x, t = _edge_rows(40, torch.float32, seed=5)
    x[:, 0] = NAN
    x[:, 1] = INF
    for off in (0, 40, 80):
        tt = (t + off).clamp(0, 119) if off else t
        tt = torch.where(torch.arange(len(t)) % 3 == 0, tt, (tt + 40) % 120)
        got = _token_ops._forward_impl(x, None, None, tt, -100, 0, None, "f", "auto", off)
        want = _token_ops._forward_impl(x, None, None, tt, -100, 0, None, "f", "torch", off)
        inside = (tt >= off) & (tt < off + 40)
        assert torch.equal(got[3][~inside], torch.zeros_like(got[3][~inside]))
        torch.testing.assert_close(got[3], want[3], rtol=0, atol=0, equal_nan=True)
        torch.testing.assert_close(got[4], want[4])
    _took(calls, "token_row_stats")


# --------------------------------------------------------------------------- token statistics


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_token_stats_edge_columns_and_gradient(dtype: Any, spy_compiled: Any) -> None:
    """logprob, entropy, lse and argmax with the target on every edge column, and the
    gradient of all three, against float64; ``ignore_index`` a valid class (0)."""
    calls = spy_compiled("token_row_stats", "token_vjp")
    tol = {"rtol": 1e-11, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 4e-6, "atol": 4e-6}
    gtol = {torch.float64: 1e-11, torch.float32: 1e-5, torch.bfloat16: 1e-2}[dtype]
    for c in (3, 17, 33, 1025):
        x, t = _edge_rows(c, dtype, seed=400 + c)
        for ign in (-100, 0):
            w = torch.linspace(-1.0, 2.0, len(t), dtype=torch.float64)
            xx = x.clone().requires_grad_()
            out = token_stats(xx, t, ignore_index=ign)
            _tok_loss(out, w).backward()
            xr = x.detach().double().requires_grad_()
            ref = _ref_tokens(xr, t, ignore=ign)
            _tok_loss(ref, w).backward()
            for i in range(3):
                torch.testing.assert_close(out[i].double(), ref[i].detach(), **tol)
            assert (out.logprob <= 0).all()
            assert torch.equal(out.argmax, ref[3])
            assert _rel(xx.grad, xr.grad) <= gtol, (c, ign)
    _took(calls, "token_row_stats", "token_vjp")


def test_token_stats_softcap_target_at_the_max_gives_logprob_at_most_zero(
    spy_compiled: Any,
) -> None:
    """A log-probability is never positive: with ``softcap`` and the target the (confident)
    max of its row, ``logprob = z_y − m − log s`` needs the target's capped logit (one load
    per row) to be bit for bit the max's (the vector code's tanh): a scalar ``std::tanh`` of
    the gathered logit would differ by an ulp and give ``logprob > 0``; equal logits give
    ``−log C`` as the torch-op kernels do. (Holds today because inductor materialises the
    capped logits and gathers from them.)"""
    calls = spy_compiled("token_row_stats")
    c = 33
    n = 4096
    vals = torch.linspace(-990.0, 990.0, n)
    x = torch.full((n, c), -1e5)
    t = torch.arange(n) % c
    x[torch.arange(n), t] = vals
    out = token_stats(x, t, softcap=1000.0)
    out_t = token_stats(x, t, softcap=1000.0, impl="torch")
    assert (out_t.logprob <= 0).all()
    bad_conf = int((out.logprob > 0).sum())
    u = vals[:, None].expand(n, c).contiguous()
    out_u = token_stats(u, t, softcap=1000.0)
    out_ut = token_stats(u, t, softcap=1000.0, impl="torch")
    err_u = float((out_u.logprob.double() + math.log(c)).abs().max())
    err_ut = float((out_ut.logprob.double() + math.log(c)).abs().max())
    _took(calls, "token_row_stats")
    assert bad_conf == 0 and err_u <= max(err_ut, 1e-6), (bad_conf, err_u, err_ut)


def test_token_stats_temperature_and_softcap_edge_columns(spy_compiled: Any) -> None:
    """softcap and temperature: the statistics of the target in the tail columns against
    float64 (scaled by the temperature), the gradient too."""
    calls = spy_compiled("token_row_stats", "token_vjp")
    c = 33
    x, t = _edge_rows(c, torch.float32, seed=77)
    w = torch.linspace(-1.0, 2.0, len(t), dtype=torch.float64)
    xx = x.clone().requires_grad_()
    out = token_stats(xx, t, softcap=12.0, temperature=0.8)
    _tok_loss(out, w).backward()
    xr = x.detach().double().requires_grad_()
    zr = 12.0 * torch.tanh(xr / 12.0) / 0.8
    ref = _ref_tokens(zr, t)
    _tok_loss(ref, w).backward()
    for i in range(3):
        torch.testing.assert_close(out[i].double(), ref[i].detach(), rtol=1e-5, atol=1e-5)
    assert _rel(xx.grad, xr.grad) <= 1e-5
    _took(calls, "token_row_stats", "token_vjp")


# --------------------------------------------------------------------------- linear forms


def test_linear_forms_with_tail_targets(spy_compiled: Any) -> None:
    """``linear_cross_entropy`` (fused pass per chunk) and ``linear_token_stats`` (compiled
    gradient over column views), the targets on the last columns of a 33-class head."""
    calls = spy_compiled("logits_fused", "token_vjp")
    g = torch.Generator().manual_seed(8)
    c, d, n = 33, 16, 43  # chunks of 8 rows: the last one short
    h = torch.randn(n, d, generator=g)
    w = torch.randn(c, d, generator=g) * 0.5
    t = torch.tensor([c - 1 - (i % 18) for i in range(n)])
    t[0], t[1] = 0, -100
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(hh, ww, t, label_smoothing=0.1)
    loss.backward()
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    ref = F.cross_entropy(hr @ wr.T, t, label_smoothing=0.1)
    ref.backward()
    assert _rel(loss, ref) <= 1e-5
    assert _rel(hh.grad, hr.grad) <= 1e-5 and _rel(ww.grad, wr.grad) <= 1e-5
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    sw = torch.linspace(-1.0, 1.0, n, dtype=torch.float64)
    out = linear_token_stats(hh, ww, t, chunk_size=8)
    _tok_loss(out, sw).backward()
    hr, wr = h.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    _tok_loss(_ref_tokens(hr @ wr.T, t), sw).backward()
    assert _rel(hh.grad, hr.grad) <= 1e-5 and _rel(ww.grad, wr.grad) <= 1e-5
    _took(calls, "logits_fused", "token_vjp")


# --------------------------------------------------------------------------- compile, autocast


def test_inside_torch_compile_and_autocast_with_the_target_last(spy_compiled: Any) -> None:
    calls = spy_compiled("logits_fused")
    c = 31
    x, t = _edge_rows(c, torch.float32, seed=9)

    def f(xx: Any, tt: Any) -> Any:
        return cross_entropy(xx, tt, label_smoothing=0.05)

    comp = torch.compile(f, fullgraph=True)
    ref_loss, ref_grad = _ref_ce(x, t, label_smoothing=0.05)
    xc = x.clone().requires_grad_()
    loss = comp(xc, t)
    loss.backward()
    assert _rel(loss.detach(), ref_loss) <= 1e-5 and _rel(xc.grad, ref_grad) <= 1e-5
    xa = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        la = f(xa, t)
    la.backward()
    assert la.dtype == torch.float32
    assert _rel(la.detach(), ref_loss) <= 2e-2 and _rel(xa.grad, ref_grad) <= 2e-2
    _took(calls, "logits_fused")


# --------------------------------------------------------------------------- 2**24 classes


def _wide_keys(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The variant keys the compiled kernels ran (their last entry: int64 columns)."""
    from crossentropy.torch import _compiled

    keys: list[Any] = []
    run = _compiled._run

    def spy(key: Any, a: Any) -> Any:
        keys.append(key)
        return run(key, a)

    monkeypatch.setattr(_compiled, "_run", spy)
    return keys


def _huge_ce_check(c: int, dtype: Any, calls: list[str]) -> None:
    g = torch.Generator().manual_seed(c % 1000)
    x = torch.randn(2, c, generator=g).to(dtype)
    t = torch.tensor([c - 1, c - 3])
    x[0, c - 1] += 6.0  # the target the max
    x[1, c - 2] = x[1, c - 3] = 7.0  # tied with its neighbour, which the float32 column
    #                                   index of the target would collide with past 2**24
    xx = x.clone().requires_grad_()
    loss = cross_entropy(xx, t)
    loss.backward()
    assert "declined" not in calls and calls, calls
    xd = x.double()
    lse = torch.logsumexp(xd, -1)
    ref = (lse - xd[torch.arange(2), t]).mean()
    loss = loss.detach()
    assert abs(float(loss) - float(ref)) <= REF[dtype] * abs(float(ref)), (float(loss), ref)
    grad = xx.grad.double()
    for r, y in enumerate(t.tolist()):
        for col in (y - 1, y, min(y + 1, c - 1), 0):
            p = math.exp(float(xd[r, col]) - float(lse[r]))
            want = (p - (1.0 if col == y else 0.0)) / 2
            got = float(grad[r, col])
            assert abs(got - want) <= REF[dtype] * 0.5 + 1e-9, (c, r, col, got, want)
    del xx, grad


@pytest.mark.parametrize(
    ("c", "dtype"),
    [(2**24, torch.float32), (2**24 + 5, torch.float32), (2**24 + 5, torch.bfloat16)],
    ids=["2**24-float32", "2**24+5-float32", "2**24+5-bfloat16"],
)
def test_more_than_two_to_the_24_classes(
    c: int, dtype: Any, spy_compiled: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real vocabulary at and past float32's exact integers: the target in the last
    columns, tied with its neighbour; loss and gradient at and around the target column
    against float64 (int64 column indices past 2**24, float32 at it)."""
    keys = _wide_keys(monkeypatch)
    calls = spy_compiled("logits_fused")
    _huge_ce_check(c, dtype, calls)
    wide = {k[0] for k in keys if k[-1] is True}
    assert wide == (
        set() if c <= 2**24 else {"stats", "scale" if dtype == torch.float32 else "grad"}
    )


def test_token_stats_more_than_two_to_the_24_classes(
    spy_compiled: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    keys = _wide_keys(monkeypatch)
    calls = spy_compiled("token_row_stats", "token_vjp")
    c = 2**24 + 5
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, c, generator=g)
    t = torch.tensor([c - 1, c - 2])
    x[1, c - 2] = x[1, c - 1] = 6.0
    xx = x.clone().requires_grad_()
    out = token_stats(xx, t)
    out.logprob.sum().backward()
    xd = x.double()
    lse = torch.logsumexp(xd, -1)
    lp = xd[torch.arange(2), t] - lse
    torch.testing.assert_close(out.logprob.double(), lp, rtol=1e-5, atol=1e-5)
    grad = xx.grad.double()
    for r, y in enumerate(t.tolist()):
        for col in (y - 1, y, min(y + 1, c - 1)):
            p = math.exp(float(xd[r, col]) - float(lse[r]))
            want = (1.0 if col == y else 0.0) - p
            assert abs(float(grad[r, col]) - want) <= 1e-5, (r, col, float(grad[r, col]), want)
    _took(calls, "token_row_stats", "token_vjp")
    assert any(k[0] == "tvjp" and k[-1] is True for k in keys), keys


# --------------------------------------------------------------------------- public shards, threads


def test_vocab_parallel_cross_entropy_single_process(spy_compiled: Any, tmp_path: Any) -> None:
    """The public vocabulary-parallel function in a one-rank group (the whole vocabulary is
    the shard): edge targets, softcap, smoothing and weights against float64."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available() or dist.is_initialized():
        pytest.skip("no fresh process group here")
    import crossentropy.torch.distributed as ced

    calls = spy_compiled("logits_row_stats", "logits_grad")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'pg'}", rank=0, world_size=1)
    try:
        c = 33
        x, t = _edge_rows(c, torch.float32, seed=31)
        t[::7] = -100
        w = 0.3 + torch.rand(c, generator=torch.Generator().manual_seed(2))
        kw = {"weight": w, "label_smoothing": 0.1, "softcap": 9.0, "z_loss": 1e-3}
        xx = x.clone().requires_grad_()
        loss = ced.vocab_parallel_cross_entropy(xx, t, **kw)
        loss.backward()
        ref_loss, ref_grad = _ref_ce(x, t, **kw)
        assert _rel(loss.detach(), ref_loss) <= 1e-5
        assert _rel(xx.grad, ref_grad) <= 1e-5
        xx = x.clone().requires_grad_()
        out = ced.vocab_parallel_token_stats(xx, t)
        sw = torch.linspace(-1.0, 1.0, len(t), dtype=torch.float64)
        _tok_loss(out, sw).backward()
        xr = x.detach().double().requires_grad_()
        _tok_loss(_ref_tokens(xr, t), sw).backward()
        assert _rel(xx.grad, xr.grad) <= 1e-5
    finally:
        dist.destroy_process_group()
    _took(calls, "logits_row_stats", "logits_grad")


def test_one_thread_gives_the_same_edge_column_results(spy_compiled: Any) -> None:
    """A change of thread count compiles the kernels again (another loop split over rows):
    the target on every edge column still gives float64's loss and gradient."""
    calls = spy_compiled("logits_fused", "token_row_stats", "token_vjp")
    before = torch.get_num_threads()
    x, t = _edge_rows(33, torch.float32, seed=41)
    ref_loss, ref_grad = _ref_ce(x, t)
    w = torch.linspace(-1.0, 1.0, len(t), dtype=torch.float64)
    xr = x.detach().double().requires_grad_()
    _tok_loss(_ref_tokens(xr, t), w).backward()
    try:
        torch.set_num_threads(1)
        loss, grad = _ce(x, t)
        xx = x.clone().requires_grad_()
        _tok_loss(token_stats(xx, t), w).backward()
    finally:
        torch.set_num_threads(before)
    assert _rel(loss, ref_loss) <= 1e-5 and _rel(grad, ref_grad) <= 1e-5
    assert _rel(xx.grad, xr.grad) <= 1e-5
    _took(calls, "logits_fused", "token_row_stats", "token_vjp")
