"""The compiled CPU kernel of the fused cross-entropy pass (``crossentropy.torch._compiled``).

Each case runs the same call twice, through the compiled kernel (``impl="auto"``) and through
the torch-op kernels (``impl="torch"``, the fallback), and compares both with
``F.cross_entropy``; besides, the kernel is shown to run (not silently declined), never to
recompile for a new shape or option value, to fall back with one warning when it cannot be
built, and to work inside ``torch.compile(fullgraph=True)``.
"""

from __future__ import annotations

import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import _compiled, cross_entropy, linear_cross_entropy  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
#: relative to the gradient's largest entry: a few ulps of the dtype (sums in another order)
TOL = {torch.float64: 1e-13, torch.float32: 2e-6, torch.bfloat16: 1e-2, torch.float16: 2e-3}

OPTIONS: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"z_loss": 1e-3},
    {"softcap": 20.0},
    {"softcap": 15.0, "label_smoothing": 0.05, "z_loss": 1e-4},
    {"weight": "rand", "ignore_index": 3, "label_smoothing": 0.1},
    {"reduction": "sum", "weight": "rand"},
    {"sample_weight": "rand"},
]


def _args(kw: dict[str, Any], dtype: Any, n: int, c: int) -> dict[str, Any]:
    out = dict(kw)
    if out.get("weight") == "rand":
        out["weight"] = torch.rand(c, generator=torch.Generator().manual_seed(1)).to(dtype)
    if out.get("sample_weight") == "rand":
        out["sample_weight"] = torch.rand(n, generator=torch.Generator().manual_seed(2))
    return out


def _run(impl: str, x: Any, t: Any, **kw: Any) -> tuple[Any, Any]:
    x = x.detach().clone().requires_grad_()
    loss = cross_entropy(x, t, impl=impl, **kw)
    loss.backward()
    return loss.detach(), x.grad


def _rel(a: Any, b: Any) -> float:
    scale = b.double().abs().max().clamp_min(1e-300)
    return float((a.double() - b.double()).abs().max() / scale)


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Record whether each call of the compiled kernel took the call (True) or declined."""
    took: list[bool] = []
    inner = _compiled.logits_fused

    def spy(*a: Any, **k: Any) -> Any:
        res = inner(*a, **k)
        took.append(res is not None)
        return res

    monkeypatch.setattr(_compiled, "logits_fused", spy)
    return took


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kw", OPTIONS, ids=lambda k: ",".join(k) or "plain")
def test_matches_the_torch_op_kernels_and_F(
    dtype: Any, kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    gen = torch.Generator().manual_seed(0)
    n, c = 48, 700
    x = (4 * torch.randn(n, c, generator=gen)).to(dtype)
    t = torch.randint(0, c, (n,), generator=gen)
    t[::5] = 3  # ignored where ignore_index=3
    args = _args(kw, dtype, n, c)
    took = _spy(monkeypatch)
    loss, grad = _run("auto", x, t, **args)
    assert took == [True]
    loss_t, grad_t = _run("torch", x, t, **args)
    assert grad.dtype == dtype and grad.shape == x.shape
    assert _rel(grad, grad_t) <= TOL[dtype]
    assert _rel(loss, loss_t) <= TOL[dtype]
    if "z_loss" in kw or "softcap" in kw or "sample_weight" in kw:
        return  # options F has not: the torch-op kernels are the reference (tested elsewhere)
    ref_x = x.double().requires_grad_()
    w = args.get("weight")
    ref = F.cross_entropy(
        ref_x,
        t,
        weight=None if w is None else w.double(),
        ignore_index=args.get("ignore_index", -100),
        reduction=args.get("reduction", "mean"),
        label_smoothing=args.get("label_smoothing", 0.0),
    )
    ref.backward()
    assert ref_x.grad is not None
    assert _rel(grad, ref_x.grad) <= 4 * TOL[dtype]
    assert _rel(loss, ref.detach()) <= 4 * TOL[dtype]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize(
    "kw",
    [{}, {"label_smoothing": 0.1, "weight": "rand"}, {"softcap": 10.0, "z_loss": 1e-3}],
    ids=lambda k: ",".join(k) or "plain",
)
def test_statistics_and_gradient_passes(dtype: Any, kw: dict[str, Any], spy_compiled: Any) -> None:
    """``reduction="none"`` runs the statistics pass forward and the gradient pass backward; a
    loss under ``no_grad`` runs the statistics alone. Both compiled, both as the torch ops."""
    calls = spy_compiled("logits_row_stats", "logits_grad")
    gen = torch.Generator().manual_seed(8)
    n, c = 40, 600
    x = (4 * torch.randn(n, c, generator=gen)).to(dtype)
    t = torch.randint(0, c, (n,), generator=gen)
    t[::4] = -100
    args = _args(kw, dtype, n, c)
    upstream = torch.linspace(-1.0, 2.0, n)
    res = {}
    for impl in ("auto", "torch"):
        xx = x.clone().requires_grad_()
        losses = cross_entropy(xx, t, reduction="none", impl=impl, **args)
        (losses * upstream.to(losses.dtype)).sum().backward()
        with torch.no_grad():
            mean = cross_entropy(x, t, impl=impl, **args)
        res[impl] = (losses.detach(), xx.grad, mean)
    assert calls == ["logits_row_stats", "logits_grad", "logits_row_stats"]
    for got, want in zip(res["auto"], res["torch"], strict=True):
        assert got.dtype == want.dtype
        assert _rel(got, want) <= TOL[dtype]


def test_no_recompile_for_new_shapes_or_option_values(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch._dynamo.utils import counters

    took = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(3)
    shapes = [(37, 501), (64, 300), (129, 1000)]
    before = None
    for i, (eps, (n, c)) in enumerate(zip([0.05, 0.1, 0.3], shapes, strict=True)):
        x = torch.randn(n, c, generator=gen)
        t = torch.randint(0, c, (n,), generator=gen)
        cross_entropy(x.requires_grad_(), t, label_smoothing=eps, z_loss=1e-4 * (i + 1)).backward()
        if before is None:  # the first call may compile this option set
            before = counters["stats"]["unique_graphs"]
    assert took == [True] * 3
    assert counters["stats"]["unique_graphs"] == before


def test_dead_and_ignored_rows_get_exact_zero_gradients() -> None:
    x = torch.randn(6, 400)
    x[1] = float("-inf")  # an ignored row with every logit masked
    t = torch.tensor([0, -100, 5, -100, 7, 9])
    sw = torch.tensor([1.0, float("nan"), 1.0, float("inf"), 2.0, 1.0])
    loss, grad = _run("auto", x, t, z_loss=1e-3, sample_weight=sw, label_smoothing=0.1)
    _, grad_t = _run("torch", x, t, z_loss=1e-3, sample_weight=sw, label_smoothing=0.1)
    assert torch.isfinite(grad).all() and torch.isfinite(loss)
    assert (grad[1] == 0).all() and (grad[3] == 0).all()
    assert _rel(grad, grad_t) <= TOL[torch.float32]


def test_declines_strided_logits_and_the_result_is_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gen = torch.Generator().manual_seed(4)
    base = torch.randn(500, 64, generator=gen)
    x = base.T  # (64, 500), classes not contiguous
    t = torch.randint(0, 500, (64,), generator=gen)
    took = _spy(monkeypatch)
    _, grad = _run("auto", x, t)
    assert took == [False]
    ref_x = x.detach().clone().requires_grad_()
    F.cross_entropy(ref_x, t).backward()
    assert _rel(grad, ref_x.grad) <= TOL[torch.float32]


def test_switched_off_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_compiled.ENV, "torch")
    took = _spy(monkeypatch)
    x, t = torch.randn(8, 300), torch.randint(0, 300, (8,))
    _run("auto", x, t)
    assert took == []  # the compiled kernels are not asked
    assert _compiled.disabled_reason() == f"{_compiled.ENV}=torch"
    monkeypatch.setenv(_compiled.ENV, "fast")
    with pytest.raises(ValueError, match=_compiled.ENV):
        _run("auto", x, t)


def test_a_failed_build_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """No C++ compiler (or any inductor error) on the first compile: one RuntimeWarning, the
    torch-op kernels' result, and no further attempt."""
    monkeypatch.setattr(_compiled, "_broken", None)
    monkeypatch.setattr(_compiled, "_working", set())
    monkeypatch.setattr(_compiled, "_failed", {})
    attempts: list[int] = []

    def broken(key: Any, fresh: bool = False) -> Any:
        def fail(*args: Any) -> Any:
            attempts.append(1)
            raise RuntimeError("C++ compile error: cannot find a compiler")

        return fail

    monkeypatch.setattr(_compiled, "_variant", broken)
    x, t = torch.randn(16, 300), torch.randint(0, 300, (16,))
    with pytest.warns(RuntimeWarning, match="could not be built.*cannot find a compiler"):
        loss, grad = _run("auto", x, t)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss2, grad2 = _run("auto", x, t, label_smoothing=0.1)  # another option set
    assert attempts == [1]
    assert not _compiled.enabled()
    loss_t, grad_t = _run("torch", x, t)
    assert torch.equal(grad, grad_t) and torch.equal(loss, loss_t)
    loss_t, grad_t = _run("torch", x, t, label_smoothing=0.1)
    assert torch.equal(grad2, grad_t) and torch.equal(loss2, loss_t)


def test_in_place_gradient_and_linear_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    took = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(5)
    x, t = torch.randn(32, 600, generator=gen), torch.randint(0, 600, (32,), generator=gen)
    leaf = x.clone().requires_grad_()
    loss = cross_entropy(leaf * 1.0, t, inplace_backward=True)
    loss.backward()
    ref_x = x.clone().requires_grad_()
    F.cross_entropy(ref_x, t).backward()
    assert _rel(leaf.grad, ref_x.grad) <= TOL[torch.float32]
    h = torch.randn(32, 16, generator=gen, requires_grad=True)
    w = torch.randn(600, 16, generator=gen, requires_grad=True)
    linear_cross_entropy(h, w, t, label_smoothing=0.1).backward()
    h2, w2 = h.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.cross_entropy(h2 @ w2.T, t, label_smoothing=0.1).backward()
    assert _rel(h.grad, h2.grad) <= TOL[torch.float32]
    assert _rel(w.grad, w2.grad) <= TOL[torch.float32]
    assert took and all(took)


def test_inside_torch_compile_fullgraph_and_autocast(monkeypatch: pytest.MonkeyPatch) -> None:
    took = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(6)
    x, t = torch.randn(40, 800, generator=gen), torch.randint(0, 800, (40,), generator=gen)

    def step(x: Any, t: Any) -> Any:
        return cross_entropy(x, t, label_smoothing=0.1)

    compiled = torch.compile(step, fullgraph=True)
    ref_x = x.clone().requires_grad_()
    F.cross_entropy(ref_x, t, label_smoothing=0.1).backward()
    for autocast in (False, True):
        xa = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = compiled(xa, t)
        loss.backward()
        assert _rel(xa.grad, ref_x.grad) <= TOL[torch.float32]
    assert took and all(took)


def test_deterministic() -> None:
    gen = torch.Generator().manual_seed(7)
    x, t = torch.randn(300, 900, generator=gen), torch.randint(0, 900, (300,), generator=gen)
    a = _run("auto", x, t, label_smoothing=0.1)
    b = _run("auto", x, t, label_smoothing=0.1)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"weight": "rand", "ignore_index": 3, "label_smoothing": 0.1},
        {"label_smoothing": 0.2, "z_loss": 1e-3, "sample_weight": "rand"},
        {"inplace_backward": True},
        {"inplace_backward": True, "weight": "rand", "label_smoothing": 0.1},
    ],
    ids=lambda k: ",".join(k) or "plain",
)
def test_one_exp_pass_is_bitwise_the_two_exp_pass(
    dtype: Any, kw: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The fused pass that leaves ``e^{x − m}`` in the gradient buffer and scales it in place
    gives the gradient of the kernel that computes ``exp`` again from the logits, bit for bit,
    NaN and infinite logits on ignored rows included."""
    gen = torch.Generator().manual_seed(7)
    n, c = 40, 513
    x = (5 * torch.randn(n, c, generator=gen)).to(dtype)
    t = torch.randint(0, c, (n,), generator=gen)
    t[::7] = 3
    ign = kw.get("ignore_index", -100)
    t[1] = ign
    x[1, 4] = float("nan")
    t[2] = ign
    x[2] = float("-inf")
    if kw.get("ignore_index") == 3:
        x[0, 9] = float("inf")  # t[0] == 3: ignored
    args = _args(kw, dtype, n, c)
    keys: list[str] = []
    run = _compiled._run

    def spy(key: Any, a: Any) -> Any:
        keys.append(key[0])
        return run(key, a)

    monkeypatch.setattr(_compiled, "_run", spy)

    def fused() -> tuple[Any, Any]:
        leaf = x.detach().clone().requires_grad_()
        loss = cross_entropy(leaf * 1.0 if kw.get("inplace_backward") else leaf, t, **args)
        loss.backward()
        return loss.detach(), leaf.grad

    loss1, grad1 = fused()
    assert keys == ["stats", "scale"]
    monkeypatch.setattr(_compiled, "_ONE_EXP", False)
    keys.clear()
    loss2, grad2 = fused()
    assert keys == ["stats", "grad"]
    assert torch.equal(loss1, loss2)
    assert torch.equal(grad1, grad2)
    assert grad1 is not None and torch.isfinite(grad1).all()
    assert (grad1[1] == 0).all() and (grad1[2] == 0).all()


@pytest.mark.parametrize("inplace", [False, True])
def test_scale_kernel_unavailable_after_the_statistics_kernel_ran(
    inplace: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The statistics kernel has written the exponentials, then the scale kernel cannot run:
    the gradient is still right (from the logits, or, in place, from the exponentials)."""
    gen = torch.Generator().manual_seed(8)
    x = 3 * torch.randn(24, 300, generator=gen)
    t = torch.randint(0, 300, (24,), generator=gen)
    run = _compiled._run

    def no_scale(key: Any, a: Any) -> Any:
        return (False, None) if key[0] == "scale" else run(key, a)

    monkeypatch.setattr(_compiled, "_run", no_scale)
    leaf = x.clone().requires_grad_()
    loss = cross_entropy(leaf * 1.0 if inplace else leaf, t, inplace_backward=inplace)
    loss.backward()
    ref_x = x.clone().requires_grad_()
    ref = F.cross_entropy(ref_x, t)
    ref.backward()
    assert _rel(leaf.grad, ref_x.grad) <= TOL[torch.float32]
    assert _rel(loss.detach(), ref.detach()) <= TOL[torch.float32]


def test_size_threshold_picks_the_kernels(tuned: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``Tuning.compiled_min_elements`` logits the torch-op kernels run, from it on the
    compiled ones; both give the same loss and gradient to a few ulps."""
    tuned(compiled_min_elements=1000)
    took = _spy(monkeypatch)
    gen = torch.Generator().manual_seed(9)
    results = []
    for n in (9, 10):  # 9 × 100 < 1000 <= 10 × 100
        x, t = torch.randn(n, 100, generator=gen), torch.randint(0, 100, (n,), generator=gen)
        loss, grad = _run("auto", x, t)
        loss_t, grad_t = _run("torch", x, t)
        results.append((_rel(loss, loss_t), _rel(grad, grad_t)))
    assert took == [True]  # the 9-row call never reached the compiled module
    assert max(max(r) for r in results) <= TOL[torch.float32]
    with pytest.raises(ValueError, match="compiled_min_elements"):
        tuned(compiled_min_elements=-1)


PROB_OPTIONS: list[dict[str, Any]] = [
    {},
    {"label_smoothing": 0.1},
    {"weight": "rand", "label_smoothing": 0.2},
    {"reduction": "none", "weight": "rand"},
    {"softcap": 12.0, "z_loss": 1e-3},
    {"sample_weight": "rand", "reduction": "sum"},
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kw", PROB_OPTIONS, ids=lambda k: ",".join(k) or "plain")
def test_probability_targets_match_the_torch_op_kernels_and_F(
    dtype: Any, kw: dict[str, Any], spy_compiled: Any
) -> None:
    """Probability targets run the compiled statistics and gradient kernels: the same loss
    and gradient as the torch-op kernels to a few ulps, and as ``F.cross_entropy`` in
    float64 where it has the options."""
    gen = torch.Generator().manual_seed(10)
    n, c = 40, 333
    x = (4 * torch.randn(n, c, generator=gen)).to(dtype)
    y = torch.softmax(torch.randn(n, c, generator=gen), -1).to(dtype)
    args = _args(kw, dtype, n, c)
    calls = spy_compiled("prob_row_stats", "prob_grad")
    xa = x.clone().requires_grad_()
    loss = cross_entropy(xa, y, impl="auto", **args)
    loss.sum().backward() if loss.dim() else loss.backward()
    assert calls == ["prob_row_stats", "prob_grad"], calls
    xt = x.clone().requires_grad_()
    loss_t = cross_entropy(xt, y, impl="torch", **args)
    loss_t.sum().backward() if loss_t.dim() else loss_t.backward()
    assert xa.grad is not None and xt.grad is not None
    assert _rel(loss.detach(), loss_t.detach()) <= TOL[dtype]
    assert _rel(xa.grad, xt.grad) <= TOL[dtype]
    if "softcap" in kw or "sample_weight" in kw:
        return
    ref_x = x.double().requires_grad_()
    w = args.get("weight")
    ref = F.cross_entropy(
        ref_x,
        y.double(),
        weight=None if w is None else w.double(),
        reduction=args.get("reduction", "mean"),
        label_smoothing=args.get("label_smoothing", 0.0),
    )
    ref.sum().backward() if ref.dim() else ref.backward()
    assert ref_x.grad is not None
    assert _rel(loss.detach(), ref.detach()) <= 4 * TOL[dtype]
    assert _rel(xa.grad, ref_x.grad) <= 4 * TOL[dtype]


def test_probability_targets_no_recompile_and_strided_targets_decline(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A new shape or smoothing value reuses the compiled kernels; a strided target takes the
    torch-op kernels with the same result."""
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(11)
    x, y = torch.randn(20, 300, generator=gen), torch.softmax(torch.randn(20, 300), -1)
    _run("auto", x, y, label_smoothing=0.1)  # compiled (or cached) once
    before = counters["stats"]["unique_graphs"]
    for n, c, eps in ((7, 301, 0.2), (33, 64, 0.05)):
        xs, ys = torch.randn(n, c, generator=gen), torch.softmax(torch.randn(n, c), -1)
        _run("auto", xs, ys, label_smoothing=eps)
    assert counters["stats"]["unique_graphs"] == before
    yt = torch.softmax(torch.randn(300, 20, generator=gen), 0).T  # (20, 300), strided
    loss_s, grad_s = _run("auto", x, yt)
    loss_c, grad_c = _run("auto", x, yt.contiguous())
    assert _rel(loss_s, loss_c) <= TOL[torch.float32]
    assert _rel(grad_s, grad_c) <= TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_int64_columns_beyond_the_float32_range_give_the_same_results(
    dtype: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past 2**24 classes the kernels compare int64 column indices (float32 would round them):
    with the limit lowered to 16 classes, every pass that singles out the target's column
    (statistics, scale, gradient, token statistics' gradient) gives the float32-columns
    result bit for bit, as its own variant (not a recompile of the float32 one)."""
    from crossentropy.torch import token_stats

    gen = torch.Generator().manual_seed(11)
    n, c = 24, 37
    x = (4 * torch.randn(n, c, generator=gen)).to(dtype)
    t = torch.randint(0, c, (n,), generator=gen)
    t[::5] = 3
    t[1] = c - 1
    t[2] = -100
    adv = torch.linspace(-1.0, 1.0, n)

    def passes() -> list[Any]:
        out = []
        for kw in ({}, {"label_smoothing": 0.1, "ignore_index": 3}):
            tt = t if not kw else t.clamp_min(3)
            out += _run("auto", x, tt, **kw)
            xx = x.clone().requires_grad_()
            losses = cross_entropy(xx, tt, reduction="none", softcap=8.0, **kw)
            (losses * adv.to(losses.dtype)).sum().backward()
            out += [losses.detach(), xx.grad]
        xx = x.clone().requires_grad_()
        st = token_stats(xx, t.clamp_min(0))
        (st.logprob * adv.to(st.logprob.dtype)).sum().backward()
        return [*out, st.logprob.detach(), xx.grad]

    narrow = passes()
    keys: list[Any] = []
    run = _compiled._run

    def spy(key: Any, a: Any) -> Any:
        keys.append(key)
        return run(key, a)

    monkeypatch.setattr(_compiled, "_run", spy)
    monkeypatch.setattr(_compiled, "_FLOAT_COLUMNS", 16)
    wide = passes()
    kinds = {k[0] for k in keys if k[-1] is True}
    # bfloat16 gradients are computed apart from its statistics (no one-exp scale pass)
    assert {"stats", "grad", "tvjp"} | ({"scale"} if dtype == torch.float32 else set()) <= kinds
    for got, want in zip(wide, narrow, strict=True):
        assert torch.equal(got, want)


def test_float32_columns_are_exact_up_to_the_limit() -> None:
    """The last columns below 2**24 stay distinct in float32, so ``cols == loc`` never
    mistakes a neighbour for the target."""
    idx = torch.tensor([[2**24 - 1], [2**24 - 2], [5]])
    inside = torch.tensor([True, True, False])
    cols, loc = _compiled._target_columns(idx, inside, 2**24)
    assert cols.dtype == torch.float32 and loc.tolist() == [[2**24 - 1], [2**24 - 2], [-1]]
    assert (cols == loc[0]).nonzero().flatten().tolist() == [2**24 - 1]
    assert (cols == loc[1]).nonzero().flatten().tolist() == [2**24 - 2]
    assert not (cols == loc[2]).any()
    cols, loc = _compiled._target_columns(idx, inside, 2**24 + 1)
    assert cols.dtype == loc.dtype == torch.int64


def test_a_default_device_elsewhere_leaves_the_cpu_call_compiled(spy_compiled: Any) -> None:
    """Under ``torch.set_default_device`` another device, CPU logits still take the compiled
    kernels (their scalar and column-index arguments are made on the CPU), with the results of
    the torch-op kernels."""
    from crossentropy.torch import token_stats

    calls = spy_compiled("logits_fused", "token_row_stats")
    gen = torch.Generator().manual_seed(5)
    x = 3 * torch.randn(48, 300, generator=gen)
    t = torch.randint(0, 300, (48,), generator=gen)
    want = _run("torch", x, t, label_smoothing=0.1, softcap=20.0)
    want_tok = token_stats(x, t, softcap=20.0, temperature=0.7, impl="torch")
    torch.set_default_device("meta")
    try:
        got = _run("auto", x, t, label_smoothing=0.1, softcap=20.0)
        got_tok = token_stats(x, t, softcap=20.0, temperature=0.7)
    finally:
        torch.set_default_device(None)
    assert calls == ["logits_fused", "token_row_stats"]
    for a, b in zip(got, want, strict=True):
        assert a.device.type == "cpu" and _rel(a, b) <= TOL[torch.float32]
    assert _rel(got_tok.logprob, want_tok.logprob) <= TOL[torch.float32]
    assert _rel(got_tok.entropy, want_tok.entropy) <= TOL[torch.float32]
