"""crossentropy.torch.tokens against a composition of plain torch ops differentiated by autograd."""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

from conftest import tol  # noqa: E402
from crossentropy.tokens import token_stats as np_token_stats  # noqa: E402
from crossentropy.tokens import token_stats_vjp  # noqa: E402
from crossentropy.torch import _token_ops as token_ops  # noqa: E402
from crossentropy.torch._types import OP_VERSION  # noqa: E402
from crossentropy.torch.tokens import TokenStats, linear_token_stats, token_stats  # noqa: E402

N, D, V = 11, 6, 9
FIELDS = ("logprob", "entropy", "lse")
# every non-empty combination of the differentiable outputs
COMBOS = [c for r in (1, 2, 3) for c in itertools.combinations(FIELDS, r)]


def _gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def _reference(z: torch.Tensor, t: torch.Tensor, ignore_index: int = -100) -> dict[str, Any]:
    """The statistics as plain torch ops: log_softmax, gather, logsumexp."""
    keep = t != ignore_index
    log_p = torch.log_softmax(z, dim=-1)
    picked = log_p.gather(-1, torch.where(keep, t, 0).unsqueeze(-1)).squeeze(-1)
    p = log_p.exp()
    return {
        "logprob": torch.where(keep, picked, 0.0),
        "entropy": -(p * torch.where(p == 0, 0.0, log_p)).sum(-1),
        "lse": torch.logsumexp(z, dim=-1),
        "argmax": z.argmax(-1),
    }


def _inputs(g, dtype=torch.float64, lead=(N,), bias=True, ignore=True):
    h = torch.randn(*lead, D, generator=g, dtype=torch.float64).to(dtype)
    w = (torch.randn(V, D, generator=g, dtype=torch.float64) / 2).to(dtype)
    b = torch.randn(V, generator=g, dtype=torch.float64).to(dtype) if bias else None
    t = torch.randint(0, V, lead, generator=g)
    if ignore:
        t.view(-1)[::4] = -100
    return h, w, b, t


def _fields(out: Any) -> dict[str, torch.Tensor]:
    """A TokenStats or a reference dict, as a dict."""
    return out if isinstance(out, dict) else out._asdict()


def _loss(out: Any, ups: dict[str, torch.Tensor]) -> torch.Tensor:
    fields = _fields(out)
    return sum((ups[k] * fields[k]).sum() for k in ups)  # type: ignore[return-value]


def _linear_both(h, w, b, t, ups, **kw):
    """(outputs, grads) of ours and of the composition, for the same upstream gradients."""
    results = []
    for impl in ("ours", "ref"):
        leaves = [x.detach().clone().requires_grad_() for x in (h, w) if x is not None]
        bb = None if b is None else b.detach().clone().requires_grad_()
        if impl == "ours":
            out = linear_token_stats(leaves[0], leaves[1], t, bb, **kw)
        else:
            out = _reference(F.linear(leaves[0], leaves[1], bb), t)
        grads = torch.autograd.grad(_loss(out, ups), [*leaves, *([] if bb is None else [bb])])
        results.append(({k: v.detach() for k, v in _fields(out).items()}, grads))
    return results


def _max_error(ours, ref) -> float:
    (vo, go), (vr, gr) = ours, ref
    errs = [float((vo[k] - vr[k]).abs().max()) for k in FIELDS if vo[k].numel()]
    errs += [float((a - b).abs().max()) for a, b in zip(go, gr, strict=True) if a.numel()]
    return max(errs, default=0.0)


# ---------------------------------------------------------------------------------------------
# parity in float64
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("used", COMBOS, ids=lambda c: "+".join(c))
def test_logits_form_matches_composition(rng: np.random.Generator, used: tuple[str, ...]) -> None:
    g = _gen(rng)
    z = (3 * torch.randn(4, 5, V, generator=g, dtype=torch.float64)).requires_grad_()
    t = torch.randint(0, V, (4, 5), generator=g)
    t[0, ::2] = -100
    ups = {k: torch.randn(4, 5, generator=g, dtype=torch.float64) for k in used}
    out = token_stats(z, t)
    ref = _reference(z, t)
    (gz,) = torch.autograd.grad(_loss(out, ups), z)
    (gr,) = torch.autograd.grad(_loss(ref, ups), z)
    for k in FIELDS:
        assert float((getattr(out, k) - ref[k]).detach().abs().max()) < 1e-13, k
    assert float((gz - gr).abs().max()) < 1e-13
    torch.testing.assert_close(out.argmax, ref["argmax"])


@pytest.mark.parametrize("used", COMBOS, ids=lambda c: "+".join(c))
@pytest.mark.parametrize("chunk", [1, 3, None, 100], ids=lambda c: f"chunk{c}")
def test_linear_form_matches_materialised_logits(
    rng: np.random.Generator, used: tuple[str, ...], chunk: int | None
) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g)
    ups = {k: torch.randn(N, generator=g, dtype=torch.float64) for k in used}
    ours, ref = _linear_both(h, w, b, t, ups, chunk_size=chunk)
    assert _max_error(ours, ref) < 1e-13
    torch.testing.assert_close(ours[0]["argmax"], ref[0]["argmax"])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(2, 5), (3, 1, 4), ()], ids=str)
def test_linear_form_leading_shapes(rng: np.random.Generator, bias: bool, lead: tuple) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, lead=lead, bias=bias, ignore=bool(lead))
    ups = {k: torch.randn(lead, generator=g, dtype=torch.float64) for k in FIELDS}
    ours, ref = _linear_both(h, w, b, t, ups, chunk_size=3)
    assert all(ours[0][k].shape == lead for k in (*FIELDS, "argmax"))
    assert _max_error(ours, ref) < 1e-13


def test_matches_numpy_core(rng: np.random.Generator) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g)
    z = F.linear(h, w, b)
    ups = {k: torch.randn(N, generator=g, dtype=torch.float64) for k in FIELDS}
    mine = np_token_stats(z.numpy(), t.numpy())
    grad_np = token_stats_vjp(z.numpy(), t.numpy(), *(ups[k].numpy() for k in FIELDS))
    for form in ("logits", "linear"):
        leaf = (z if form == "logits" else h).clone().requires_grad_()
        out = token_stats(leaf, t) if form == "logits" else linear_token_stats(leaf, w, t, b)
        for k in FIELDS:
            np.testing.assert_allclose(getattr(out, k).detach().numpy(), getattr(mine, k), 0, 1e-13)
        np.testing.assert_array_equal(out.argmax.numpy(), mine.argmax)
        (gx,) = torch.autograd.grad(_loss(out, ups), leaf)
        expected = grad_np if form == "logits" else grad_np @ w.numpy()
        np.testing.assert_allclose(gx.numpy(), expected, rtol=0, atol=1e-13)


def test_rl_example(rng: np.random.Generator) -> None:
    """The issue's example: policy gradient with an entropy bonus, gradients w.r.t. h and W."""
    g = _gen(rng)
    h, w, _, t = _inputs(g, lead=(2, 6), bias=False)
    advantage = torch.randn(2, 6, generator=g, dtype=torch.float64)
    beta = 0.01
    grads = []
    for impl in ("ours", "ref"):
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        out: Any = linear_token_stats(hh, ww, t, chunk_size=5) if impl == "ours" else None
        if out is None:
            ref = _reference(F.linear(hh, ww), t)
            loss = -(advantage * ref["logprob"]).mean() - beta * ref["entropy"].mean()
        else:
            loss = -(advantage * out.logprob).mean() - beta * out.entropy.mean()
        loss.backward()
        grads.append((hh.grad, ww.grad))
    for a, b in zip(*grads, strict=True):
        assert float((a - b).abs().max()) < 1e-14


# ---------------------------------------------------------------------------------------------
# autograd behaviour
# ---------------------------------------------------------------------------------------------


def test_named_tuple_and_differentiability(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng))
    h.requires_grad_()
    out = linear_token_stats(h, w, t, b)
    assert isinstance(out, TokenStats) and out._fields == ("logprob", "entropy", "lse", "argmax")
    assert out.logprob.requires_grad and out.entropy.requires_grad and out.lse.requires_grad
    assert not out.argmax.requires_grad and out.argmax.dtype == torch.int64
    assert all(v.dtype == torch.float64 for v in out[:3])


def test_gradcheck_and_gradgradcheck(rng: np.random.Generator) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, lead=(5,))
    h, w, b = (x.requires_grad_() for x in (h, w, b))

    def linear(h, w, b):
        return linear_token_stats(h, w, t, b, chunk_size=2)[:3]

    assert torch.autograd.gradcheck(linear, (h, w, b))
    assert torch.autograd.gradgradcheck(linear, (h, w, b))
    z = torch.randn(5, V, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda z: token_stats(z, t)[:3], (z,))
    assert torch.autograd.gradgradcheck(lambda z: token_stats(z, t)[:3], (z,))


def test_hessian_matches_composition(rng: np.random.Generator) -> None:
    g = _gen(rng)
    z = torch.randn(3, 5, generator=g, dtype=torch.float64)
    t = torch.tensor([1, -100, 4])

    def ours(x):
        out = token_stats(x, t)
        return (out.logprob + 0.3 * out.entropy + 0.1 * out.lse**2).sum()

    def ref(x):
        r = _reference(x, t)
        return (r["logprob"] + 0.3 * r["entropy"] + 0.1 * r["lse"] ** 2).sum()

    h1 = torch.autograd.functional.hessian(ours, z)
    h2 = torch.autograd.functional.hessian(ref, z)
    assert float((h1 - h2).abs().max()) < 1e-13


def test_torch_func_transforms(rng: np.random.Generator) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, lead=(4,))
    z = F.linear(h, w, b)

    def ent(x):
        return token_stats(x, t).entropy.sum()

    def ref_ent(x):
        return _reference(x, t)["entropy"].sum()

    torch.testing.assert_close(torch.func.grad(ent)(z), torch.func.grad(ref_ent)(z))
    jac = torch.func.jacrev(lambda x: token_stats(x, t).logprob)(z)
    torch.testing.assert_close(jac, torch.func.jacrev(lambda x: _reference(x, t)["logprob"])(z))
    # vmap over a batch of hidden states, and forward-mode AD
    per = torch.func.vmap(torch.func.grad(lambda x: linear_token_stats(x, w, t, b).lse.sum()))
    hs = torch.stack([h, 2 * h])
    expected = torch.stack(
        [torch.func.grad(lambda x: _reference(F.linear(x, w, b), t)["lse"].sum())(x) for x in hs]
    )
    torch.testing.assert_close(per(hs), expected)
    tangent = torch.randn_like(z)
    _, jvp = torch.func.jvp(lambda x: token_stats(x, t).entropy, (z,), (tangent,))
    _, jvp_ref = torch.func.jvp(lambda x: _reference(x, t)["entropy"], (z,), (tangent,))
    torch.testing.assert_close(jvp, jvp_ref)


def test_vectorized_jacobian(rng: np.random.Generator) -> None:
    g = _gen(rng)
    z = torch.randn(3, V, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 5, -100])
    jac = torch.autograd.functional.jacobian(lambda x: token_stats(x, t).entropy, z, vectorize=True)
    ref = torch.autograd.functional.jacobian(lambda x: _reference(x, t)["entropy"], z)
    torch.testing.assert_close(jac, ref)


def test_second_backward_through_retained_graph(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng))
    h.requires_grad_()
    out = linear_token_stats(h, w, t, b, chunk_size=4)
    loss = (out.logprob + out.entropy).sum()
    (g1,) = torch.autograd.grad(loss, h, retain_graph=True)
    (g2,) = torch.autograd.grad(loss, h)
    torch.testing.assert_close(g1, g2, rtol=0, atol=0)


def test_only_needed_gradients(rng: np.random.Generator) -> None:
    """A frozen LM head: only d hidden is computed; a frozen trunk: only d weight."""
    h, w, b, t = _inputs(_gen(rng))
    w.requires_grad_()
    out = linear_token_stats(h, w, t, b)
    out.entropy.sum().backward()
    assert w.grad is not None and h.grad is None and b.grad is None
    h.requires_grad_()
    w.requires_grad_(False)
    (gh,) = torch.autograd.grad(linear_token_stats(h, w, t, b).lse.sum(), h)
    (gr,) = torch.autograd.grad(_reference(F.linear(h, w, b), t)["lse"].sum(), h)
    torch.testing.assert_close(gh, gr)


def test_backward_saves_no_logits(rng: np.random.Generator) -> None:
    """The linear form saves its inputs and two numbers per row, never an (N, C) tensor."""
    g = _gen(rng)
    n, d, v = 64, 4, 50  # N·V = 3200 is larger than any input
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    sizes: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = linear_token_stats(h, w, t, chunk_size=8)
    assert max(sizes) <= max(n * d, v * d)
    assert n * v not in sizes
    (out.logprob.sum() + out.entropy.sum()).backward()


# ---------------------------------------------------------------------------------------------
# precision, edge cases
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_computes_in_float32(rng: np.random.Generator, dtype: torch.dtype) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, dtype=dtype)
    ups = {k: torch.randn(N, generator=g) for k in FIELDS}
    hh, ww, bb = (x.clone().requires_grad_() for x in (h, w, b))
    out = linear_token_stats(hh, ww, t, bb, chunk_size=4)
    assert all(v.dtype == torch.float32 for v in out[:3])
    _loss(out, ups).backward()
    assert hh.grad.dtype == ww.grad.dtype == bb.grad.dtype == dtype
    # reference: the same low-precision logits, statistics in float32
    hr, wr, br = (x.clone().requires_grad_() for x in (h, w, b))
    ref = _reference(F.linear(hr, wr, br).float(), t)
    _loss(ref, ups).backward()
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), ref[k], **tol(torch.float32))
    torch.testing.assert_close(out.argmax, ref["argmax"])
    for a, r in ((hh, hr), (ww, wr), (bb, br)):
        torch.testing.assert_close(a.grad.float(), r.grad.float(), **tol(dtype))
    z = F.linear(h, w, b).requires_grad_()
    out_z = token_stats(z, t)
    assert out_z.logprob.dtype == torch.float32
    out_z.entropy.sum().backward()
    assert z.grad.dtype == dtype


def test_autocast_casts_like_f_linear(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_token_stats(h, w, t, b)
        z = F.linear(h, w, b)
    ref = _reference(z.float(), t)
    assert out.logprob.dtype == torch.float32
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), ref[k], **tol(torch.float32))


def test_empty_batch() -> None:
    h = torch.zeros(0, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    out = linear_token_stats(h, w, torch.zeros(0, dtype=torch.int64))
    assert all(v.shape == (0,) for v in out)
    (out.logprob.sum() + out.entropy.sum()).backward()
    assert h.grad.shape == (0, D) and not w.grad.any()
    z = torch.zeros(2, 0, V, requires_grad=True)
    out = token_stats(z, torch.zeros(2, 0, dtype=torch.int64))
    assert all(v.shape == (2, 0) for v in out)
    out.lse.sum().backward()
    assert z.grad.shape == (2, 0, V)


def test_all_ignored_and_integer_target_dtypes(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng))
    w.requires_grad_()
    out = linear_token_stats(h, w, torch.full((N,), -100, dtype=torch.int32), b)
    assert not out.logprob.any()
    out.logprob.sum().backward()
    assert not w.grad.any()
    out2 = linear_token_stats(h, w, t.to(torch.int16), b)
    ref = _reference(F.linear(h, w, b), t)
    torch.testing.assert_close(out2.logprob, ref["logprob"])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_inputs_not_written(rng: np.random.Generator, dtype: torch.dtype) -> None:
    h, w, b, t = _inputs(_gen(rng), dtype=dtype)
    z = F.linear(h, w, b)
    copies = [x.clone() for x in (h, w, b, z, t)]
    h, w, b, z = (x.requires_grad_() for x in (h, w, b, z))
    for out in (token_stats(z, t, ignore_index=-100), linear_token_stats(h, w, t, b, chunk_size=3)):
        (out.logprob + out.entropy + out.lse).sum().backward()
    for x, c in zip((h, w, b, z, t), copies, strict=True):
        torch.testing.assert_close(x.detach(), c, rtol=0, atol=0)


def test_minus_inf_logits(rng: np.random.Generator) -> None:
    g = _gen(rng)
    z = torch.randn(4, V, generator=g, dtype=torch.float64)
    z[:, 5:] = -torch.inf
    z.requires_grad_()
    t = torch.tensor([0, 1, 2, -100])
    out = token_stats(z, t)
    ref = _reference(z.detach()[:, :5], t)
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), ref[k])
    (out.logprob + out.entropy + out.lse).sum().backward()
    assert torch.isfinite(z.grad).all() and not z.grad[:, 5:].any()


@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_large_logits_float32(rng: np.random.Generator, shift: float) -> None:
    g = _gen(rng)
    z = torch.randn(6, V, generator=g)
    t = torch.randint(0, V, (6,), generator=g)
    base = token_stats(z, t)
    zs = (z + shift).requires_grad_()
    out = token_stats(zs, t)
    torch.testing.assert_close(out.logprob, base.logprob, rtol=0, atol=4e-3)
    torch.testing.assert_close(out.entropy, base.entropy, rtol=0, atol=4e-3)
    (out.logprob + out.entropy).sum().backward()
    assert torch.isfinite(zs.grad).all()


def test_compile_without_graph_breaks(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng), dtype=torch.float32)
    h.requires_grad_()
    z = F.linear(h, w, b).detach().requires_grad_()
    for fn, args in (
        (lambda h, w: linear_token_stats(h, w, t).logprob.sum(), (h, w)),
        (lambda z: token_stats(z, t).entropy.sum(), (z,)),
    ):
        e = torch._dynamo.explain(fn)(*args)
        assert e.graph_break_count == 0, e.break_reasons
    torch._dynamo.reset()
    compiled = torch.compile(
        lambda h: (linear_token_stats(h, w, t, b).entropy * 2).sum(),
        fullgraph=True,
        backend="aot_eager",
    )
    (gc,) = torch.autograd.grad(compiled(h), h)
    (ge,) = torch.autograd.grad((linear_token_stats(h, w, t, b).entropy * 2).sum(), h)
    torch.testing.assert_close(gc, ge)


# ---------------------------------------------------------------------------------------------
# validation (messages pinned)
# ---------------------------------------------------------------------------------------------

_H, _W, _T = torch.zeros(3, 4), torch.zeros(5, 4), torch.zeros(3, dtype=torch.int64)


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (
            lambda: token_stats([[1.0]], _T),
            TypeError,
            "token_stats: logits must be a torch.Tensor, got list [[1.0]]",
        ),
        (
            lambda: token_stats(torch.zeros(3, 5, dtype=torch.int64), _T),
            TypeError,
            "token_stats: logits must have a floating-point dtype, got dtype torch.int64",
        ),
        (
            lambda: token_stats(torch.tensor(1.0), _T),
            ValueError,
            "token_stats: logits must have shape (*, C) with at least 1 dimension (classes), "
            "got shape ()",
        ),
        (
            lambda: token_stats(torch.zeros(3, 0), _T),
            ValueError,
            "token_stats: logits must have at least one class (C >= 1), got shape (3, 0)",
        ),
        (
            lambda: token_stats(torch.zeros(3, 5), _T.float()),
            TypeError,
            "token_stats: target must have an integer dtype (class indices), got dtype "
            "torch.float32",
        ),
        (
            lambda: token_stats(torch.zeros(3, 5), torch.zeros(4, dtype=torch.int64)),
            ValueError,
            "token_stats: target must have shape (3,) (logits' shape without the classes), "
            "got shape (4,)",
        ),
        (
            lambda: token_stats(torch.zeros(3, 5), torch.tensor([0, 5, -100])),
            ValueError,
            "token_stats: target must contain class indices in [0, 5) or ignore_index=-100, "
            "got values in [0, 5]",
        ),
        (
            lambda: token_stats(torch.zeros(3, 5), _T, ignore_index=True),
            TypeError,
            "token_stats: ignore_index must be an integer, got bool True",
        ),
        (
            lambda: token_stats(torch.zeros(3, 5), _T, ignore_index=2**70),
            ValueError,
            "token_stats: ignore_index must fit in int64, got 1180591620717411303424",
        ),
        (
            lambda: linear_token_stats(_H, _W.double(), _T),
            TypeError,
            "linear_token_stats: weight must have the dtype of hidden (torch.float32), got "
            "dtype torch.float64",
        ),
        (
            lambda: linear_token_stats(_H, torch.zeros(5, 3), _T),
            ValueError,
            "linear_token_stats: weight must have shape (C, 4), got shape (5, 3)",
        ),
        (
            lambda: linear_token_stats(_H, torch.zeros(0, 4), _T),
            ValueError,
            "linear_token_stats: weight must have at least one class (C >= 1), got shape (0, 4)",
        ),
        (
            lambda: linear_token_stats(_H, _W, _T, torch.zeros(4)),
            ValueError,
            "linear_token_stats: bias must have shape (5,), got shape (4,)",
        ),
        (
            lambda: linear_token_stats(_H, _W, torch.zeros(2, dtype=torch.int64)),
            ValueError,
            "linear_token_stats: target must have shape (3,) (hidden's shape without the "
            "features), got shape (2,)",
        ),
        (
            lambda: linear_token_stats(torch.tensor(1.0), _W, _T),
            ValueError,
            "linear_token_stats: hidden must have at least 1 dimension (features), got shape ()",
        ),
        (
            lambda: linear_token_stats(_H, _W, _T, chunk_size=0),
            ValueError,
            "linear_token_stats: chunk_size must be a positive integer or None, got 0",
        ),
        (
            lambda: linear_token_stats(_H, _W, _T, chunk_size=2.0),
            TypeError,
            "linear_token_stats: chunk_size must be a positive integer or None, got float 2.0",
        ),
        (
            lambda: linear_token_stats(_H, _W, torch.tensor([0, 1, 7])),
            ValueError,
            "linear_token_stats: target must contain class indices in [0, 5) or "
            "ignore_index=-100, got values in [0, 7]",
        ),
    ],
)
def test_errors(call: Any, kind: type[Exception], message: str) -> None:
    with pytest.raises(kind, match=re.escape(message)):
        call()


def test_device_mismatch_is_reported() -> None:
    meta = torch.zeros(3, dtype=torch.int64, device="meta")
    with pytest.raises(
        ValueError,
        match=re.escape("token_stats: target must be on logits' device cpu, got device meta"),
    ):
        token_stats(torch.zeros(3, 5), meta)
    with pytest.raises(
        ValueError,
        match=re.escape("linear_token_stats: bias must be on hidden's device cpu, got device meta"),
    ):
        linear_token_stats(_H, _W, _T, torch.zeros(5, device="meta"))


# ---------------------------------------------------------------------------------------------
# softcap: the statistics of z' = c·tanh(z / c), gradients through ∂z'/∂z = 1 − (z'/c)²
# ---------------------------------------------------------------------------------------------

CAP = 2.0  # well inside the range of the test logits (|z| up to ~10): tanh saturates


def _capped(z: torch.Tensor, softcap: float) -> torch.Tensor:
    """The softcap as the plain torch composition, differentiated by autograd."""
    return softcap * torch.tanh(z / softcap)


def _capped_both(x, w, b, t, ups, softcap, ignore_index=-100, **kw):
    """(outputs, grads) of ours (logits form if ``w is None``) and of the composition."""
    results = []
    for impl in ("ours", "ref"):
        leaves = [v.detach().clone().requires_grad_() for v in (x, w, b) if v is not None]
        xx = leaves[0]
        ww = leaves[1] if w is not None else None
        bb = leaves[-1] if b is not None else None
        if impl == "ours" and w is None:
            out = token_stats(xx, t, ignore_index=ignore_index, softcap=softcap)
        elif impl == "ours":
            out = linear_token_stats(
                xx, ww, t, bb, ignore_index=ignore_index, softcap=softcap, **kw
            )
        else:
            z = xx if w is None else F.linear(xx, ww, bb)
            out = _reference(_capped(z, softcap), t, ignore_index)
        grads = torch.autograd.grad(_loss(out, ups), leaves)
        results.append(({k: v.detach() for k, v in _fields(out).items()}, grads))
    return results


@pytest.mark.parametrize("used", COMBOS, ids=lambda c: "+".join(c))
@pytest.mark.parametrize("lead", [(N,), (3, 4)], ids=str)
def test_softcap_logits_form_matches_composition(
    rng: np.random.Generator, used: tuple[str, ...], lead: tuple[int, ...]
) -> None:
    g = _gen(rng)
    z = 4 * torch.randn(*lead, V, generator=g, dtype=torch.float64)
    t = torch.randint(0, V, lead, generator=g)
    t.view(-1)[::3] = -100
    ups = {k: torch.randn(lead, generator=g, dtype=torch.float64) for k in used}
    ours, ref = _capped_both(z, None, None, t, ups, CAP)
    assert all(ours[0][k].shape == lead for k in (*FIELDS, "argmax"))
    assert _max_error(ours, ref) < 1e-13
    torch.testing.assert_close(ours[0]["argmax"], ref[0]["argmax"])
    # the cap is applied: the statistics differ from the uncapped ones
    assert float((ours[0]["lse"] - torch.logsumexp(z, -1)).abs().max()) > 0.1


@pytest.mark.parametrize("used", COMBOS, ids=lambda c: "+".join(c))
@pytest.mark.parametrize("chunk", [1, 3, None], ids=lambda c: f"chunk{c}")
def test_softcap_linear_form_matches_composition(
    rng: np.random.Generator, used: tuple[str, ...], chunk: int | None
) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g)
    h = 3 * h
    ups = {k: torch.randn(N, generator=g, dtype=torch.float64) for k in used}
    ours, ref = _capped_both(h, w, b, t, ups, CAP, chunk_size=chunk)
    assert _max_error(ours, ref) < 1e-13
    torch.testing.assert_close(ours[0]["argmax"], ref[0]["argmax"])


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("lead", [(2, 5), ()], ids=str)
def test_softcap_linear_form_shapes_and_ignore_index(
    rng: np.random.Generator, bias: bool, lead: tuple[int, ...]
) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, lead=lead, bias=bias, ignore=False)
    t.view(-1)[::3] = 4  # a class index as ignore_index
    ups = {k: torch.randn(lead, generator=g, dtype=torch.float64) for k in FIELDS}
    ours, ref = _capped_both(3 * h, w, b, t, ups, 1.5, ignore_index=4, chunk_size=3)
    assert all(ours[0][k].shape == lead for k in (*FIELDS, "argmax"))
    assert _max_error(ours, ref) < 1e-13


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16, torch.float16])
def test_softcap_none_is_bit_for_bit(rng: np.random.Generator, dtype: torch.dtype) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, dtype=dtype)
    ups = {k: torch.randn(N, generator=g) for k in FIELDS}
    for call in (
        lambda x, kw: linear_token_stats(x, w, t, b, chunk_size=4, **kw),
        lambda x, kw: token_stats(F.linear(x, w, b), t, **kw),
    ):
        results = []
        for kw in ({}, {"softcap": None}):
            x = h.clone().requires_grad_()
            out = call(x, kw)
            (gx,) = torch.autograd.grad(_loss(out, ups), x)
            results.append((*out, gx))
        for a, r in zip(*results, strict=True):
            torch.testing.assert_close(a, r, rtol=0, atol=0, equal_nan=True)


def test_softcap_large_is_identity(rng: np.random.Generator) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g)
    ups = {k: torch.randn(N, generator=g, dtype=torch.float64) for k in FIELDS}
    for form in ("logits", "linear"):
        results = []
        for cap in (None, 1e8):
            x = (F.linear(h, w, b) if form == "logits" else h).clone().requires_grad_()
            if form == "logits":
                out = token_stats(x, t, softcap=cap)
            else:
                out = linear_token_stats(x, w, t, b, softcap=cap)
            (gx,) = torch.autograd.grad(_loss(out, ups), x)
            results.append((*out, gx))
        for a, r in zip(*results, strict=True):
            torch.testing.assert_close(a, r, rtol=0, atol=1e-14)


def test_softcap_gradgradcheck_and_hessian(rng: np.random.Generator) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, lead=(4,))
    h, w, b = (x.requires_grad_() for x in (2 * h, w, b))

    def linear(h, w, b):
        return linear_token_stats(h, w, t, b, chunk_size=2, softcap=1.5)[:3]

    assert torch.autograd.gradcheck(linear, (h, w, b))
    assert torch.autograd.gradgradcheck(linear, (h, w, b))
    z = (2 * torch.randn(4, V, generator=g, dtype=torch.float64)).requires_grad_()
    assert torch.autograd.gradgradcheck(lambda z: token_stats(z, t, softcap=1.5)[:3], (z,))

    def ours(x):
        out = token_stats(x, t, softcap=1.5)
        return (out.logprob + 0.3 * out.entropy + 0.1 * out.lse**2).sum()

    def ref(x):
        r = _reference(_capped(x, 1.5), t)
        return (r["logprob"] + 0.3 * r["entropy"] + 0.1 * r["lse"] ** 2).sum()

    z = z.detach()
    h1 = torch.autograd.functional.hessian(ours, z)
    h2 = torch.autograd.functional.hessian(ref, z)
    assert float((h1 - h2).abs().max()) < 1e-13


def test_softcap_torch_func_transforms(rng: np.random.Generator) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, lead=(4,))
    z = 3 * F.linear(h, w, b)

    def ref(x):
        return _reference(_capped(x, CAP), t)

    gr = torch.func.grad(lambda x: token_stats(x, t, softcap=CAP).entropy.sum())(z)
    torch.testing.assert_close(gr, torch.func.grad(lambda x: ref(x)["entropy"].sum())(z))
    tangent = torch.randn_like(z)
    _, jvp = torch.func.jvp(lambda x: token_stats(x, t, softcap=CAP).logprob, (z,), (tangent,))
    _, jvp_ref = torch.func.jvp(lambda x: ref(x)["logprob"], (z,), (tangent,))
    torch.testing.assert_close(jvp, jvp_ref)
    per = torch.func.vmap(
        torch.func.grad(lambda x: linear_token_stats(x, w, t, b, softcap=CAP).lse.sum())
    )
    hs = torch.stack([h, 3 * h])
    expected = torch.stack(
        [torch.func.grad(lambda x: ref(F.linear(x, w, b))["lse"].sum())(x) for x in hs]
    )
    torch.testing.assert_close(per(hs), expected)


def test_softcap_backward_saves_no_logits(rng: np.random.Generator) -> None:
    g = _gen(rng)
    n, d, v = 64, 4, 50
    h = torch.randn(n, d, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randint(0, v, (n,), generator=g)
    sizes: list[int] = []

    def pack(x: torch.Tensor) -> torch.Tensor:
        sizes.append(x.numel())
        return x

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
        out = linear_token_stats(h, w, t, chunk_size=8, softcap=CAP)
    assert max(sizes) <= max(n * d, v * d)
    (out.logprob.sum() + out.entropy.sum()).backward()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_softcap_low_precision(rng: np.random.Generator, dtype: torch.dtype) -> None:
    g = _gen(rng)
    h, w, b, t = _inputs(g, dtype=dtype)
    h = 3 * h
    ups = {k: torch.randn(N, generator=g) for k in FIELDS}
    hh, ww, bb = (x.clone().requires_grad_() for x in (h, w, b))
    out = linear_token_stats(hh, ww, t, bb, chunk_size=4, softcap=CAP)
    assert all(v.dtype == torch.float32 for v in out[:3])
    _loss(out, ups).backward()
    assert hh.grad.dtype == ww.grad.dtype == bb.grad.dtype == dtype
    hr, wr, br = (x.clone().requires_grad_() for x in (h, w, b))
    ref = _reference(_capped(F.linear(hr, wr, br).float(), CAP), t)
    _loss(ref, ups).backward()
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), ref[k], **tol(torch.float32))
    for a, r in ((hh, hr), (ww, wr), (bb, br)):
        torch.testing.assert_close(a.grad.float(), r.grad.float(), **tol(dtype))
    z = F.linear(h, w, b).requires_grad_()
    out_z = token_stats(z, t, softcap=CAP)
    (gz,) = torch.autograd.grad(_loss(out_z, ups), z)
    zr = z.detach().clone().requires_grad_()
    (gr,) = torch.autograd.grad(_loss(_reference(_capped(zr.float(), CAP), t), ups), zr)
    assert gz.dtype == dtype
    torch.testing.assert_close(gz.float(), gr.float(), **tol(dtype))


def test_softcap_autocast(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng), dtype=torch.float32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = linear_token_stats(h, w, t, b, softcap=CAP)
        z = F.linear(h, w, b)
    ref = _reference(_capped(z.float(), CAP), t)
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), ref[k], **tol(torch.float32))


def test_softcap_empty_and_minus_inf(rng: np.random.Generator) -> None:
    h = torch.zeros(0, D, requires_grad=True)
    w = torch.randn(V, D, requires_grad=True)
    out = linear_token_stats(h, w, torch.zeros(0, dtype=torch.int64), softcap=CAP)
    assert all(v.shape == (0,) for v in out)
    (out.logprob.sum() + out.entropy.sum()).backward()
    assert h.grad.shape == (0, D) and not w.grad.any()
    # -inf is capped to -c (not masked), +inf to c: as the composition does
    z = torch.randn(3, V, generator=_gen(rng), dtype=torch.float64)
    z[:, 5:] = -torch.inf
    z[2, 0] = torch.inf
    t = torch.tensor([0, 6, -100])
    ups = {k: torch.ones(3, dtype=torch.float64) for k in FIELDS}
    ours, ref = _capped_both(z, None, None, t, ups, CAP)
    assert _max_error(ours, ref) < 1e-13
    assert torch.isfinite(ours[1][0]).all() and not ours[1][0][:, 5:].any()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
def test_softcap_inputs_not_written(rng: np.random.Generator, dtype: torch.dtype) -> None:
    h, w, b, t = _inputs(_gen(rng), dtype=dtype)
    z = F.linear(h, w, b)
    copies = [x.clone() for x in (h, w, b, z)]
    h, w, b, z = (x.requires_grad_() for x in (h, w, b, z))
    for out in (
        token_stats(z, t, softcap=CAP),
        linear_token_stats(h, w, t, b, chunk_size=3, softcap=CAP),
    ):
        (out.logprob + out.entropy + out.lse).sum().backward()
    for x, c in zip((h, w, b, z), copies, strict=True):
        torch.testing.assert_close(x.detach(), c, rtol=0, atol=0)


def test_softcap_compile_without_graph_breaks(rng: np.random.Generator) -> None:
    h, w, b, t = _inputs(_gen(rng), dtype=torch.float32)
    h.requires_grad_()
    z = F.linear(h, w, b).detach().requires_grad_()
    for fn, args in (
        (lambda h, w: linear_token_stats(h, w, t, softcap=CAP).logprob.sum(), (h, w)),
        (lambda z: token_stats(z, t, softcap=CAP).entropy.sum(), (z,)),
    ):
        e = torch._dynamo.explain(fn)(*args)
        assert e.graph_break_count == 0, e.break_reasons
    torch._dynamo.reset()

    def loss(h):
        out = linear_token_stats(h, w, t, b, softcap=CAP)
        return (out.entropy * 2 - out.logprob).sum()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    (gc,) = torch.autograd.grad(compiled(h), h)
    (ge,) = torch.autograd.grad(loss(h), h)
    torch.testing.assert_close(gc, ge)


@pytest.mark.parametrize(
    "cap", [np.float32(2.0), np.int64(2), 2, torch.tensor(2.0), torch.tensor(2)], ids=repr
)
def test_softcap_accepts_reals(rng: np.random.Generator, cap: object) -> None:
    z = torch.randn(3, V, generator=_gen(rng))
    t = torch.tensor([0, 1, -100])
    expected = token_stats(z, t, softcap=2.0)
    for a, r in zip(token_stats(z, t, softcap=cap), expected, strict=True):
        torch.testing.assert_close(a, r, rtol=0, atol=0)


@pytest.mark.parametrize(
    ("cap", "kind", "got"),
    [
        (0.0, ValueError, "0.0"),
        (-1.0, ValueError, "-1.0"),
        (float("inf"), ValueError, "inf"),
        (float("nan"), ValueError, "nan"),
        (np.float64(-3), ValueError, "-3.0"),
        (torch.tensor(0.0), ValueError, "0.0"),
        (True, TypeError, "bool True"),
        ("30", TypeError, "str '30'"),
        (torch.tensor([2.0]), TypeError, "tensor of shape (1,) and dtype torch.float32"),
    ],
    ids=repr,
)
def test_softcap_errors(cap: object, kind: type[Exception], got: str) -> None:
    for fn, call in (
        ("token_stats", lambda: token_stats(torch.zeros(3, 5), _T, softcap=cap)),
        ("linear_token_stats", lambda: linear_token_stats(_H, _W, _T, softcap=cap)),
    ):
        message = f"{fn}: softcap must be None or a finite float > 0, got {got}"
        with pytest.raises(kind, match=re.escape(message) + "$"):
            call()


def test_entropy_gradient_at_a_masked_logit_is_zero_for_any_upstream() -> None:
    """A -inf logit (p = 0) gets a zero gradient, also when the entropy's upstream exceeds 1
    (0 · log 0 once overflowed: a clamped log p times the upstream became inf, then 0·inf)."""
    x = torch.tensor([[0.5, float("-inf"), 1.0]], dtype=torch.float64, requires_grad=True)
    out = token_stats(x, torch.tensor([0]))
    (3.0 * out.entropy).sum().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all() and x.grad[0, 1] == 0.0
    ref = x.detach()[:, [0, 2]].requires_grad_()
    logp = torch.log_softmax(ref, dim=-1)
    (3.0 * -(logp.exp() * logp).sum()).backward()
    torch.testing.assert_close(x.grad[:, [0, 2]], ref.grad)


# ---------------------------------------------------------------------------------------------
# memory: one chunk of logits per pass, tile-sized temporaries; tiles smaller than a chunk
# ---------------------------------------------------------------------------------------------


class _Allocations(TorchDispatchMode):
    """Records the size (elements) of every fresh tensor an op returns: one whose storage is not
    an input's (views, in-place and ``out=`` results are not allocations). The token-stats
    custom ops are opaque to a dispatch mode, so they run their implementation inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.sizes: list[int] = []
        self._impls = {
            getattr(
                torch.ops.crossentropy, f"token_stats_forward_v{OP_VERSION}"
            ).default: token_ops._forward_impl,
            getattr(
                torch.ops.crossentropy, f"token_stats_backward_v{OP_VERSION}"
            ).default: token_ops._backward_impl,
        }

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if func in self._impls:
            with self:
                return self._impls[func](*args, **kwargs)
        out = func(*args, **kwargs)
        seen = {
            t.untyped_storage().data_ptr()
            for t in tree_flatten((args, kwargs))[0]
            if isinstance(t, torch.Tensor)
        }
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                self.sizes.append(t.untyped_storage().nbytes() // t.element_size())
        return out


@pytest.mark.parametrize("softcap", [None, CAP], ids=["plain", "softcap"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("bias", [False, True], ids=["nobias", "bias"])
def test_one_chunk_of_logits_per_pass(
    rng: np.random.Generator,
    tuned,
    softcap: float | None,
    dtype: torch.dtype,
    bias: bool,
) -> None:
    """Counting every allocation of a forward and of a backward: each pass allocates one
    chunk-sized buffer (the logits, then ``G`` in the same buffer), the backward also exactly
    ``d hidden`` and ``d weight``, and everything else is at most one tile (at most two
    tile-sized scratch buffers per pass) or a vector; nothing is (N, C)."""
    n, d, v, chunk, tile = 64, 3, 50, 16, 100
    tuned(token_block_elements=tile)
    g = _gen(rng)
    h = torch.randn(n, d, generator=g, dtype=dtype, requires_grad=True)
    w = torch.randn(v, d, generator=g, dtype=dtype, requires_grad=True)
    b = torch.randn(v, generator=g, dtype=dtype, requires_grad=True) if bias else None
    t = torch.randint(0, v, (n,), generator=g)
    t[::5] = -100
    small = max(n, v)  # per-row and per-class vectors
    with _Allocations() as fwd:
        out = linear_token_stats(h, w, t, b, chunk_size=chunk, softcap=softcap)
    loss = (out.logprob * torch.randn(n, generator=g, dtype=dtype)).sum() - 0.5 * out.entropy.sum()
    with _Allocations() as bwd:
        loss.backward()
    for sizes, big in ((fwd.sizes, [chunk * v]), (bwd.sizes, sorted([chunk * v, n * d, v * d]))):
        assert sorted(s for s in sizes if s > tile) == big, sizes
        assert len([s for s in sizes if small < s <= tile]) <= 2, sizes
    # and the values are those of the composition
    hr, wr = h.detach().requires_grad_(), w.detach().requires_grad_()
    z = F.linear(hr, wr, None if b is None else b.detach())
    ref = _reference(z if softcap is None else _capped(z, softcap), t)
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k), ref[k], **tol(dtype))


@pytest.mark.parametrize("tile", [1, 5, 64], ids=lambda e: f"tile{e}")
@pytest.mark.parametrize("softcap", [None, CAP], ids=["plain", "softcap"])
def test_tiles_smaller_than_a_chunk(
    rng: np.random.Generator, tuned, tile: int, softcap: float | None
) -> None:
    """Tiles of a few classes (the two sweeps of the statistics, the argmax combined across
    tiles, the target found in its tile), in both forms, with ties, -inf and ignored rows."""
    tuned(token_block_elements=tile)
    g = _gen(rng)
    h, w, b, t = _inputs(g)
    ups = {k: torch.randn(N, generator=g, dtype=torch.float64) for k in FIELDS}
    for chunk in (1, 3, None):
        if softcap is None:
            ours, ref = _linear_both(3 * h, w, b, t, ups, chunk_size=chunk)
        else:
            ours, ref = _capped_both(3 * h, w, b, t, ups, softcap, chunk_size=chunk)
        assert _max_error(ours, ref) < 1e-13
        torch.testing.assert_close(ours[0]["argmax"], ref[0]["argmax"])
    # logits form: integer logits (ties: the first max wins), a masked tail, a row of -inf
    z = torch.randint(-2, 3, (N, V), generator=g).double()
    z[2, 5:] = -torch.inf
    z[3] = -torch.inf
    t = t.clone()
    t[2] = 1
    kept = [i for i in range(N) if i != 3]
    out = token_stats(z, t, softcap=softcap)
    ref_z = z if softcap is None else _capped(z, softcap)
    ref = _reference(ref_z, t)
    torch.testing.assert_close(out.argmax, ref["argmax"])
    for k in FIELDS:
        torch.testing.assert_close(getattr(out, k)[kept], ref[k][kept], rtol=0, atol=1e-13)
    if softcap is None:
        assert out.lse[3] == -torch.inf and torch.isnan(out.entropy[3])
    zz = z.requires_grad_()
    (gz,) = torch.autograd.grad(_loss(token_stats(zz, t, softcap=softcap), ups), zz)
    zr = z.detach()[kept].requires_grad_()
    rr = _reference(zr if softcap is None else _capped(zr, softcap), t[kept])
    (gr,) = torch.autograd.grad(_loss(rr, {k: u[kept] for k, u in ups.items()}), zr)
    torch.testing.assert_close(gz[kept], gr, rtol=0, atol=1e-13)
