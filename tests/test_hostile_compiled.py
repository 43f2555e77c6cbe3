"""Hostile review of the compiled CPU kernel of the fused cross-entropy pass.

Every call here runs through the fused path (``force_fused``); ``impl="auto"`` is the
compiled kernel, ``impl="torch"`` the torch-op kernels, and ``F.cross_entropy`` (float64)
the reference where F has the option.
"""

from __future__ import annotations

import math
import threading
import warnings
from typing import Any

import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import _compiled, cross_entropy, linear_cross_entropy  # noqa: E402

pytestmark = pytest.mark.usefixtures("force_fused")

INF = float("inf")
NAN = float("nan")
DTYPES = [torch.float32, torch.float64, torch.bfloat16, torch.float16]
#: max |a - b| / max |b|: a few ulps (auto vs torch-op kernels)
ULPS = {torch.float64: 1e-13, torch.float32: 3e-6, torch.bfloat16: 1.6e-2, torch.float16: 2e-3}
#: against the float64 reference computed from the same (rounded) inputs
REF = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    took: list[bool] = []
    inner = _compiled.logits_fused

    def spy(*a: Any, **k: Any) -> Any:
        res = inner(*a, **k)
        took.append(res is not None)
        return res

    monkeypatch.setattr(_compiled, "logits_fused", spy)
    return took


def _run(impl: str, x: Any, t: Any, scale: float = 1.0, **kw: Any) -> tuple[Any, Any]:
    x = x.detach().clone().requires_grad_()
    loss = cross_entropy(x, t, impl=impl, **kw)
    (loss * scale).backward()
    return loss.detach(), x.grad


def _ref(
    x: Any,
    t: Any,
    *,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
    sample_weight: Any = None,
    scale: float = 1.0,
) -> tuple[Any, Any]:
    """float64 reference of the documented definition, loss and gradient."""
    xd = x.detach().double().requires_grad_()
    z = xd if softcap is None else softcap * torch.tanh(xd / softcap)
    w = None if weight is None else weight.double()
    per = F.cross_entropy(
        z, t, weight=w, ignore_index=ignore_index, reduction="none", label_smoothing=label_smoothing
    )
    keep = t != ignore_index
    wy = torch.ones_like(per) if w is None else w[t.clamp(0, z.shape[-1] - 1)]
    wy = torch.where(keep, wy, 0.0)
    if z_loss:
        lse = torch.logsumexp(z, dim=-1)
        per = per + torch.where(keep, z_loss * wy * lse**2, 0.0)
    if sample_weight is not None:
        per = per * sample_weight.double()
    total = per.sum()
    if reduction == "mean":
        total = total / wy.sum()
    (g,) = torch.autograd.grad(total * scale, xd)
    return total.detach(), g


def _rel(a: Any, b: Any) -> float:
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().clamp_min(1e-300)
    return float((a - b).abs().max() / scale)


def _data(n: int, c: int, dtype: Any, seed: int = 0, spread: float = 4.0) -> tuple[Any, Any]:
    gen = torch.Generator().manual_seed(seed)
    x = (spread * torch.randn(n, c, generator=gen)).to(dtype)
    t = torch.randint(0, c, (n,), generator=gen)
    return x, t


# ---------------------------------------------------------------------------------------------
# Every dtype with every option, against the torch-op kernels and the float64 definition.

OPTIONS: list[dict[str, Any]] = [
    {},
    {"reduction": "sum", "label_smoothing": 0.2, "weight": "rand", "ignore_index": 2},
    {"z_loss": 1e-2, "softcap": 5.0, "sample_weight": "rand"},
    {
        "weight": "rand",
        "ignore_index": 0,
        "label_smoothing": 0.3,
        "z_loss": 3e-3,
        "softcap": 7.0,
        "sample_weight": "rand",
        "reduction": "mean",
    },
]


def _opts(kw: dict[str, Any], dtype: Any, n: int, c: int) -> dict[str, Any]:
    out = dict(kw)
    gen = torch.Generator().manual_seed(5)
    if out.get("weight") == "rand":
        out["weight"] = (0.1 + torch.rand(c, generator=gen)).to(dtype)
    if out.get("sample_weight") == "rand":
        out["sample_weight"] = torch.rand(n, generator=gen) * 3 - 1  # also negative
    return out


GRID = [(d, OPTIONS[0]) for d in DTYPES] + [(d, OPTIONS[3]) for d in DTYPES]
GRID += [(torch.float32, OPTIONS[1]), (torch.bfloat16, OPTIONS[2])]


@pytest.mark.parametrize(
    ("dtype", "kw"), GRID, ids=[f"{d}-{','.join(k) or 'plain'}" for d, k in GRID]
)
def test_every_dtype_and_option(dtype: Any, kw: dict[str, Any], monkeypatch: Any) -> None:
    n, c = 33, 257
    x, t = _data(n, c, dtype)
    t[::4] = kw.get("ignore_index", -100)
    args = _opts(kw, dtype, n, c)
    took = _spy(monkeypatch)
    loss, grad = _run("auto", x, t, **args)
    assert took == [True]
    loss_t, grad_t = _run("torch", x, t, **args)
    assert loss.dtype == dtype and grad.dtype == dtype
    assert _rel(grad, grad_t) <= ULPS[dtype]
    assert _rel(loss, loss_t) <= ULPS[dtype]
    ref_loss, ref_grad = _ref(x, t, **args)
    assert _rel(grad, ref_grad) <= REF[dtype]
    assert _rel(loss, ref_loss) <= REF[dtype]


# ---------------------------------------------------------------------------------------------
# Extreme values.


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_extreme_logits_match_the_torch_op_kernels_and_F(dtype: Any) -> None:
    big = 6e4 if dtype == torch.float16 else 1e4
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(17)).to(dtype)
    t = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
    x[0, 0] = big  # confident and right
    x[1, 1] = -big  # confident and wrong
    x[2, 0] = -INF  # a masked non-target class
    x[3] = -INF  # every class masked but the target
    x[3, 3] = 0.0
    x[4, 4] = INF  # target +inf: NaN, as F
    x[5, 2] = NAN  # NaN in a kept row: NaN, as F
    x[6] = -big
    x[7] = big
    for i in range(8):
        xi, ti = x[i : i + 1].contiguous(), t[i : i + 1]
        loss, grad = _run("auto", xi, ti, reduction="sum")
        loss_t, grad_t = _run("torch", xi, ti, reduction="sum")
        ref_loss, ref_grad = _ref(xi, ti, reduction="sum")
        torch.testing.assert_close(loss, loss_t, equal_nan=True, rtol=ULPS[dtype], atol=0)
        torch.testing.assert_close(grad, grad_t, equal_nan=True, rtol=ULPS[dtype], atol=1e-6)
        torch.testing.assert_close(
            loss.double(), ref_loss, equal_nan=True, rtol=REF[dtype], atol=1e-6
        )
        torch.testing.assert_close(
            grad.double(), ref_grad, equal_nan=True, rtol=REF[dtype], atol=REF[dtype]
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_non_finite_ignored_rows_do_not_leak(dtype: Any) -> None:
    x, t = _data(6, 11, dtype, seed=3)
    x[1] = NAN
    x[2] = -INF
    x[3] = INF
    t[1:4] = -100
    loss, grad = _run("auto", x, t)
    ref_loss, _ = _ref(x[[0, 4, 5]], t[[0, 4, 5]])
    assert torch.isfinite(loss)
    assert abs(float(loss) - float(ref_loss)) <= REF[dtype] * abs(float(ref_loss))
    assert torch.equal(grad[1:4], torch.zeros_like(grad[1:4]))
    _, kept_grad = _ref(x[[0, 4, 5]], t[[0, 4, 5]], reduction="sum")
    assert _rel(grad[[0, 4, 5]], kept_grad / 3) <= REF[dtype]


def test_every_row_ignored_gives_nan_mean_and_zero_gradient() -> None:
    x, t = _data(5, 9, torch.float32)
    t[:] = 4
    loss, grad = _run("auto", x, t, ignore_index=4, label_smoothing=0.1)
    ref = F.cross_entropy(x, t, ignore_index=4, label_smoothing=0.1)
    assert math.isnan(float(loss)) and math.isnan(float(ref))
    assert torch.equal(grad, torch.zeros_like(grad))
    loss_s, grad_s = _run("auto", x, t, ignore_index=4, reduction="sum")
    assert float(loss_s) == 0.0 and torch.equal(grad_s, torch.zeros_like(grad_s))


def test_zero_sample_weight_row_with_nan_logits_matches_torch_op_kernels() -> None:
    x, t = _data(4, 9, torch.float32)
    x[2] = NAN
    sw = torch.tensor([1.0, 2.0, 0.0, 0.5])
    loss, grad = _run("auto", x, t, sample_weight=sw)
    loss_t, grad_t = _run("torch", x, t, sample_weight=sw)
    torch.testing.assert_close(loss, loss_t, equal_nan=True)
    torch.testing.assert_close(grad, grad_t, equal_nan=True)


def test_float16_large_logits_and_confident_rows() -> None:
    gen = torch.Generator().manual_seed(9)
    x = (3e4 * torch.rand(16, 300, generator=gen) - 1.5e4).half()
    t = torch.randint(0, 300, (16,), generator=gen)
    x[:8, 0] = 6e4
    t[:8] = 0  # p_y -> 1: the true-class gradient must not cancel to 0
    x[8:, 1] = 6e4
    t[8:] = 0
    loss, grad = _run("auto", x, t)
    loss_t, grad_t = _run("torch", x, t)
    ref_loss, ref_grad = _ref(x, t)
    assert _rel(grad, grad_t) <= ULPS[torch.float16]
    assert _rel(loss, loss_t) <= ULPS[torch.float16]
    assert _rel(grad, ref_grad) <= REF[torch.float16]
    assert _rel(loss, ref_loss) <= REF[torch.float16]


# ---------------------------------------------------------------------------------------------
# Shapes, layouts, aliasing.


@pytest.mark.parametrize(("n", "c"), [(1, 13), (7, 1), (1, 1), (2, 200_003)])
def test_degenerate_and_huge_class_shapes(n: int, c: int) -> None:
    x, t = _data(n, c, torch.float32, seed=n + c)
    loss, grad = _run("auto", x, t, label_smoothing=0.1)
    ref_loss, ref_grad = _ref(x, t, label_smoothing=0.1)
    assert _rel(grad, ref_grad) <= REF[torch.float32] or float(ref_grad.abs().max()) == 0
    assert abs(float(loss) - float(ref_loss)) <= 1e-5 * max(1.0, abs(float(ref_loss)))
    if c == 1:
        assert float(loss) == 0.0 and torch.equal(grad, torch.zeros_like(grad))


def test_classes_not_last_n_c_d() -> None:
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 17, 5, generator=gen)
    t = torch.randint(0, 17, (3, 5), generator=gen)
    t[0, 1] = -100
    w = torch.rand(17, generator=gen)
    sw = torch.rand(3, 5, generator=gen)
    loss, grad = _run("auto", x, t, weight=w, label_smoothing=0.2, sample_weight=sw)
    loss_t, grad_t = _run("torch", x, t, weight=w, label_smoothing=0.2, sample_weight=sw)
    xd = x.double().requires_grad_()
    per = F.cross_entropy(xd, t, weight=w.double(), label_smoothing=0.2, reduction="none")
    keep = t != -100
    ref = (per * sw.double()).sum() / torch.where(keep, w.double()[t.clamp(0)], 0.0).sum()
    ref.backward()
    assert xd.grad is not None
    assert _rel(grad, xd.grad) <= 1e-5 and _rel(loss, ref.detach()) <= 1e-6
    assert _rel(grad, grad_t) <= ULPS[torch.float32]
    assert _rel(loss, loss_t) <= ULPS[torch.float32]


def _views() -> dict[str, Any]:
    gen = torch.Generator().manual_seed(8)
    base = torch.randn(20, 40, generator=gen)
    return {
        "transpose": torch.randn(31, 12, generator=gen).t(),
        "column_slice": base[:12, 3:34],
        "row_slice_offset": base[5:17],  # contiguous, storage offset 200
        "expanded": torch.randn(1, 31, generator=gen).expand(12, 31),
        "step": base[::2, :31][:10],
    }


@pytest.mark.parametrize("name", list(_views()))
def test_views_as_input(name: str) -> None:
    x = _views()[name]
    n, c = x.shape
    t = torch.randint(0, c, (n,), generator=torch.Generator().manual_seed(1))
    before = x.clone()
    xl = x.detach().requires_grad_()
    loss = cross_entropy(xl, t, label_smoothing=0.05)
    loss.backward()
    ref_loss, ref_grad = _ref(x, t, label_smoothing=0.05)
    assert xl.grad is not None
    assert _rel(xl.grad, ref_grad) <= REF[torch.float32]
    assert _rel(loss.detach(), ref_loss) <= 1e-6
    assert torch.equal(x, before)


def test_inputs_not_modified() -> None:
    x, t = _data(9, 23, torch.float32)
    t[2] = -100
    w = torch.rand(23)
    sw = torch.rand(9)
    copies = [a.clone() for a in (x, t, w, sw)]
    xr = x.requires_grad_()
    cross_entropy(xr, t, weight=w, sample_weight=sw, label_smoothing=0.1, z_loss=1e-3).backward()
    for a, b in zip((x, t, w, sw), copies, strict=True):
        assert torch.equal(a.detach(), b)


# ---------------------------------------------------------------------------------------------
# Autograd modes.


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=str)
def test_inplace_backward_matches_out_of_place(dtype: Any) -> None:
    x, t = _data(10, 37, dtype, seed=2)
    t[3] = -100
    w = torch.rand(37).to(dtype)
    kw = {"weight": w, "label_smoothing": 0.1, "softcap": 9.0}
    loss, grad = _run("auto", x, t, **kw)
    leaf = x.detach().clone().requires_grad_()
    inner = leaf * 1.0
    loss_ip = cross_entropy(inner, t, inplace_backward=True, **kw)
    loss_ip.backward()
    assert leaf.grad is not None
    assert _rel(leaf.grad, grad) <= ULPS[dtype]
    assert _rel(loss_ip.detach(), loss) <= ULPS[dtype]


def test_inplace_backward_refuses_use_of_the_overwritten_logits() -> None:
    x, t = _data(6, 19, torch.float32)
    leaf = x.clone().requires_grad_()
    inner = leaf * 2.0
    loss = cross_entropy(inner, t, inplace_backward=True)
    other = (inner.exp()).sum()  # uses the (overwritten) logits through autograd afterwards
    with pytest.raises(RuntimeError):
        (loss + other).backward()


@pytest.mark.parametrize("scale", [1024.0, 0.3, 2.0**-8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
def test_upstream_gradient_scale(dtype: Any, scale: float) -> None:
    x, t = _data(12, 64, dtype, seed=11, spread=6.0)
    _, grad = _run("auto", x, t, scale=scale)
    _, grad_t = _run("torch", x, t, scale=scale)
    _, ref_grad = _ref(x, t, scale=scale)
    assert _rel(grad, grad_t) <= ULPS[dtype]
    assert _rel(grad, ref_grad) <= REF[dtype]


def test_second_backward_with_retain_graph_and_double_backward() -> None:
    x, t = _data(7, 29, torch.float64)
    kw = {"label_smoothing": 0.1, "z_loss": 1e-2, "softcap": 6.0}
    xr = x.clone().requires_grad_()
    loss = cross_entropy(xr, t, **kw)
    (g1,) = torch.autograd.grad(loss, xr, retain_graph=True)
    (g2,) = torch.autograd.grad(loss * 3.0, xr, retain_graph=True)
    (g3,) = torch.autograd.grad(loss, xr, create_graph=True)
    _, ref_grad = _ref(x, t, **kw)
    assert _rel(g1, ref_grad) <= 1e-12
    assert _rel(g2, 3 * ref_grad) <= 1e-12
    assert _rel(g3, ref_grad) <= 1e-12
    v = torch.randn(7, 29, dtype=torch.float64)
    (hv,) = torch.autograd.grad((g3 * v).sum(), xr)

    def f(xx: Any) -> Any:
        z = 6.0 * torch.tanh(xx / 6.0)
        per = F.cross_entropy(z, t, reduction="none", label_smoothing=0.1)
        return (per + 1e-2 * torch.logsumexp(z, -1) ** 2).mean()

    _, ref_hv = torch.autograd.functional.hvp(f, x, v)
    assert _rel(hv, ref_hv) <= 1e-10


def test_torch_func_grad() -> None:
    x, t = _data(5, 21, torch.float64)
    g = torch.func.grad(lambda xx: cross_entropy(xx, t, z_loss=1e-2, softcap=4.0))(x)
    _, ref = _ref(x, t, z_loss=1e-2, softcap=4.0)
    assert _rel(g, ref) <= 1e-12


@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_no_grad_modes_give_the_loss(mode: str) -> None:
    x, t = _data(9, 33, torch.float32)
    t[0] = -100
    ctx = torch.no_grad() if mode == "no_grad" else torch.inference_mode()
    with ctx:
        loss = cross_entropy(x, t, label_smoothing=0.1, z_loss=1e-3)
    ref_loss, _ = _ref(x, t, label_smoothing=0.1, z_loss=1e-3)
    assert _rel(loss, ref_loss) <= 1e-6


@pytest.mark.parametrize("autocast", [False, True])
def test_inside_torch_compile_fullgraph(autocast: bool) -> None:
    torch._dynamo.reset()
    x, t = _data(16, 45, torch.float32, seed=21)
    w = torch.rand(45)

    def f(xx: Any) -> Any:
        return cross_entropy(xx, t, weight=w, label_smoothing=0.1)

    compiled = torch.compile(f, fullgraph=True)
    xe = x.clone().requires_grad_()
    xc = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        loss_e = f(xe)
        loss_c = compiled(xc)
    loss_e.backward()
    loss_c.backward()
    assert loss_c.dtype == loss_e.dtype == torch.float32
    assert xe.grad is not None and xc.grad is not None
    tol_ = 1e-2 if autocast else 1e-6
    assert _rel(loss_c.detach(), loss_e.detach()) <= tol_
    assert _rel(xc.grad, xe.grad) <= tol_
    ref_loss, ref_grad = _ref(x, t, weight=w, label_smoothing=0.1)
    assert _rel(loss_e.detach(), ref_loss) <= (2e-2 if autocast else 1e-6)
    assert _rel(xe.grad, ref_grad) <= (2e-2 if autocast else 1e-5)


# ---------------------------------------------------------------------------------------------
# Threads, environment, determinism, recompiles.


def test_concurrent_first_calls_from_python_threads() -> None:
    # an option set compiled nowhere else in this file: the threads race on its first build
    x, t = _data(24, 77, torch.float64, seed=31)
    kw = {"z_loss": 2e-3, "reduction": "sum"}
    expected = _run("torch", x, t, **kw)
    results: list[Any] = [None] * 4
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            results[i] = _run("auto", x, t, **kw)
        except BaseException as exc:
            errors.append(exc)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    assert not errors
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert not _compiled._failed
    for loss, grad in results:
        assert _rel(loss, expected[0]) <= 1e-13 and _rel(grad, expected[1]) <= 1e-13


def test_thread_count_changes_and_determinism() -> None:
    x, t = _data(40, 513, torch.float32, seed=5)
    first = _run("auto", x, t, label_smoothing=0.1)
    again = _run("auto", x, t, label_smoothing=0.1)
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = _run("auto", x, t, label_smoothing=0.1)
        one_again = _run("auto", x, t, label_smoothing=0.1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one[0], one_again[0]) and torch.equal(one[1], one_again[1])
    assert _rel(one[1], first[1]) <= ULPS[torch.float32]
    assert _rel(one[0], first[0]) <= ULPS[torch.float32]


def test_environment_switch_between_calls(monkeypatch: pytest.MonkeyPatch) -> None:
    x, t = _data(8, 30, torch.float32)
    auto = _run("auto", x, t)
    took = _spy(monkeypatch)
    monkeypatch.setenv("CROSSENTROPY_CPU_KERNELS", "torch")
    off = _run("auto", x, t)
    monkeypatch.setenv("CROSSENTROPY_CPU_KERNELS", " Compiled ")
    on = _run("auto", x, t)
    assert took == [True]  # "torch": the compiled kernels are not asked
    assert _rel(off[1], auto[1]) <= ULPS[torch.float32]
    assert torch.equal(on[1], auto[1])


def test_bad_environment_value_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    x, t = _data(8, 30, torch.float32)
    monkeypatch.setenv("CROSSENTROPY_CPU_KERNELS", "triton")
    with pytest.raises(ValueError, match="CROSSENTROPY_CPU_KERNELS"):
        _run("auto", x, t)


def test_bad_environment_value_does_not_break_impl_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    x, t = _data(8, 30, torch.float32)
    expected = _run("torch", x, t)
    monkeypatch.setenv("CROSSENTROPY_CPU_KERNELS", "bogus")
    loss, grad = _run("torch", x, t)
    assert torch.equal(loss, expected[0]) and torch.equal(grad, expected[1])


def test_no_recompile_storm_over_shapes_and_option_values() -> None:
    from torch._dynamo.utils import counters

    gen = torch.Generator().manual_seed(2)
    _run("auto", *_data(13, 50, torch.float32), label_smoothing=0.1, z_loss=1e-3)
    before = counters["stats"]["unique_graphs"]
    for i in range(12):
        n, c = 2 + 3 * i, 3 + 7 * i
        x = torch.randn(n, c, generator=gen)
        t = torch.randint(0, c, (n,), generator=gen)
        eps, z = 0.01 * (i + 1), 1e-4 * (i + 1)
        loss, grad = _run("auto", x, t, label_smoothing=eps, z_loss=z)
        ref_loss, ref_grad = _ref(x, t, label_smoothing=eps, z_loss=z)
        assert _rel(grad, ref_grad) <= REF[torch.float32]
        assert _rel(loss, ref_loss) <= REF[torch.float32]
    assert counters["stats"]["unique_graphs"] == before


def test_batch_of_one_and_square_first_call_do_not_recompile() -> None:
    from torch._dynamo.utils import counters

    _run("auto", *_data(6, 6, torch.float32), softcap=3.0)  # a fresh option set, N == C
    before = counters["stats"]["unique_graphs"]
    _run("auto", *_data(6, 9, torch.float32), softcap=3.0)
    _run("auto", *_data(1, 9, torch.float32), softcap=3.0)
    assert counters["stats"]["unique_graphs"] == before


def test_thread_count_changes_do_not_exhaust_the_recompile_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    threads = torch.get_num_threads()
    took = _spy(monkeypatch)
    shapes = [(10, 7)]
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for th in range(1, 10):
                torch.set_num_threads(th)
                for n, c in shapes:  # z-loss + softcap: an option set of this test only
                    x, t = _data(n, c, torch.float32)
                    _run("auto", x, t, z_loss=1e-3, softcap=4.0, reduction="sum")
    finally:
        torch.set_num_threads(threads)
    assert not [w for w in caught if issubclass(w.category, RuntimeWarning)]
    assert all(took)


# ---------------------------------------------------------------------------------------------
# linear_cross_entropy chunks.


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_linear_cross_entropy_chunks(dtype: Any) -> None:
    gen = torch.Generator().manual_seed(12)
    n, d, v = 37, 16, 301
    h = torch.randn(n, d, generator=gen).to(dtype)
    w = (0.3 * torch.randn(v, d, generator=gen)).to(dtype)
    b = torch.randn(v, generator=gen).to(dtype)
    t = torch.randint(0, v, (n,), generator=gen)
    t[5] = -100
    kw = {"label_smoothing": 0.1, "chunk_size": 8}
    out = []
    for impl in ("auto", "torch"):
        hh, ww, bb = (a.clone().requires_grad_() for a in (h, w, b))
        loss = linear_cross_entropy(hh, ww, t, bb, impl=impl, **kw)
        loss.backward()
        out.append((loss.detach(), hh.grad, ww.grad, bb.grad))
    hd, wd, bd = (a.double().requires_grad_() for a in (h, w, b))
    ref = F.cross_entropy(F.linear(hd, wd, bd), t, label_smoothing=0.1)
    ref.backward()
    for got in out:
        assert _rel(got[0], ref.detach()) <= REF[dtype]
        for g, r in zip(got[1:], (hd.grad, wd.grad, bd.grad), strict=True):
            assert _rel(g, r) <= 3 * REF[dtype]
    for a, b_ in zip(out[0], out[1], strict=True):
        assert _rel(a, b_) <= 2 * ULPS[dtype]
