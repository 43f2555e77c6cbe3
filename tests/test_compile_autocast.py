"""``torch.compile(fullgraph=True)`` × autocast × dtype for every single-process public function.

Compile plus bfloat16 autocast is the standard recipe for training language models. Autocast
is entered either around the compiled function or inside it; both must trace with no graph
break and give what the eager ``torch.nn.functional`` composition gives under the same autocast
(values, dtypes and gradients). Regression: Dynamo could not trace the hand-called
``autocast.__enter__`` the functions used to switch autocast off around their kernels.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

import crossentropy.torch as cet  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

DTYPES = [torch.bfloat16, torch.float16]
N, C, D = 24, 40, 8


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, C, generator=g) * 2
    t = torch.randint(0, C, (N,), generator=g)
    t[::5] = -100
    y = torch.softmax(torch.randn(N, C, generator=g), dim=1)
    h = torch.randn(N, D, generator=g)
    w = torch.randn(C, D, generator=g) * 0.5
    b = torch.randn(C, generator=g) * 0.1
    return x, t, y, h, w, b


def _token_ref(z, t, cdt=torch.float32):
    z = z.to(cdt)
    lp = torch.log_softmax(z, -1)
    valid = t != -100
    logprob = torch.where(valid, lp.gather(-1, t.clamp(min=0).unsqueeze(-1)).squeeze(-1), 0.0)
    entropy = -(lp.exp() * lp).sum(-1)
    return logprob, entropy, torch.logsumexp(z, -1)


def _cases():
    """(name, ours, reference): each takes (x, t, y, h, w, b) and returns a scalar loss."""
    return [
        ("cross_entropy", lambda x, t, y, h, w, b: cet.cross_entropy(x, t), None),
        (
            "cross_entropy_options",
            lambda x, t, y, h, w, b: cet.cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3),
            None,
        ),
        ("cross_entropy_prob", lambda x, t, y, h, w, b: cet.cross_entropy(x, y), None),
        (
            "CrossEntropyLoss",
            lambda x, t, y, h, w, b: cet.CrossEntropyLoss(label_smoothing=0.2)(x, t),
            None,
        ),
        (
            "linear_cross_entropy",
            lambda x, t, y, h, w, b: cet.linear_cross_entropy(h, w, t, b),
            None,
        ),
        (
            "LinearCrossEntropyLoss",
            lambda x, t, y, h, w, b: cet.LinearCrossEntropyLoss()(h, w, t),
            None,
        ),
        (
            "token_stats",
            lambda x, t, y, h, w, b: _stats_loss(cet.token_stats(x, t)),
            None,
        ),
        (
            "linear_token_stats",
            lambda x, t, y, h, w, b: _stats_loss(cet.linear_token_stats(h, w, t, bias=b)),
            None,
        ),
    ]


def _stats_loss(s):
    return -s.logprob.mean() - 0.1 * s.entropy.mean() + 0.01 * s.lse.square().mean()


def _reference(name, x, t, y, h, w, b):
    """The eager composition of plain torch ops a user would write, under the same autocast."""
    if name == "cross_entropy":
        return F.cross_entropy(x, t)
    if name == "cross_entropy_options":
        per = F.cross_entropy(x, t, reduction="none", label_smoothing=0.1)
        lse = torch.logsumexp(x.float(), -1)
        valid = t != -100
        return (per + 1e-3 * torch.where(valid, lse * lse, 0.0)).sum() / valid.sum()
    if name == "cross_entropy_prob":
        return F.cross_entropy(x, y)
    if name == "CrossEntropyLoss":
        return F.cross_entropy(x, t, label_smoothing=0.2)
    if name == "linear_cross_entropy":
        return F.cross_entropy(F.linear(h, w, b), t)
    if name == "LinearCrossEntropyLoss":
        return F.cross_entropy(F.linear(h, w), t)
    if name == "token_stats":
        return _stats_loss(cet.TokenStats(*_token_ref(x, t), None))
    if name == "linear_token_stats":
        return _stats_loss(cet.TokenStats(*_token_ref(F.linear(h, w, b), t), None))
    raise AssertionError(name)


def _run(fn, dtype, where, args):
    """Loss and gradients of ``fn`` with autocast ``where`` = "around" or "inside"."""
    leaves = [a.clone().requires_grad_() if a.is_floating_point() else a for a in args]
    if where == "inside":

        def body(*a):
            with torch.autocast("cpu", dtype=dtype):
                return fn(*a)

        loss = body(*leaves)
    else:
        with torch.autocast("cpu", dtype=dtype):
            loss = fn(*leaves)
    grads = torch.autograd.grad(loss, [a for a in leaves if a.requires_grad], allow_unused=True)
    return loss, grads


@pytest.mark.parametrize("where", ["around", "inside"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_compile_fullgraph_under_autocast_matches_eager_composition(name, dtype, where):
    ours = dict((c[0], c[1]) for c in _cases())[name]
    args = _inputs()
    torch._dynamo.reset()
    compiled = torch.compile(ours, fullgraph=True, backend="aot_eager")
    if where == "inside":

        def inside(*a):
            with torch.autocast("cpu", dtype=dtype):
                return ours(*a)

        compiled = torch.compile(inside, fullgraph=True, backend="aot_eager")
        loss, grads = _run(compiled, dtype, "none", args)
    else:
        loss, grads = _run(compiled, dtype, "around", args)
    ref_loss, ref_grads = _run(lambda *a: _reference(name, *a), dtype, "around", args)
    assert loss.dtype == ref_loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=2e-2, atol=2e-2)
    for a, e in zip(grads, ref_grads, strict=True):
        if e is None:
            assert a is None or not a.abs().sum()
            continue
        assert a.dtype == e.dtype and a.shape == e.shape
        scale = e.abs().max().clamp(min=1e-3)
        assert (a - e).abs().max() / scale < 4e-2, name


@pytest.mark.parametrize("name", [c[0] for c in _cases()])
def test_no_graph_break_under_autocast(name):
    ours = dict((c[0], c[1]) for c in _cases())[name]
    args = [a.requires_grad_() if a.is_floating_point() else a for a in _inputs()]

    def body(*a):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return ours(*a)

    torch._dynamo.reset()
    e = torch._dynamo.explain(body)(*args)
    assert e.graph_break_count == 0, e.break_reasons
    assert e.graph_count == 1


def test_compiled_bf16_autocast_training_step_with_inductor():
    """The standard recipe end to end: inductor, bfloat16 autocast, fused linear loss."""
    _, t, _, h, w, _ = _inputs(1)
    lin = torch.nn.Linear(D, D)
    head = torch.nn.Parameter(w.clone())

    def step(hh):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return cet.linear_cross_entropy(torch.tanh(lin(hh)), head, t)

    torch._dynamo.reset()
    loss = torch.compile(step, fullgraph=True)(h)
    loss.backward()
    got = (loss.detach(), head.grad.clone(), lin.weight.grad.clone())
    head.grad = None
    lin.weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = F.cross_entropy(F.linear(torch.tanh(lin(h)), head), t)
    ref.backward()
    torch.testing.assert_close(got[0], ref.detach(), rtol=2e-2, atol=2e-2)
    for a, e in ((got[1], head.grad), (got[2], lin.weight.grad)):
        assert a.dtype == e.dtype
        assert (a - e).abs().max() / e.abs().max() < 4e-2
