"""Hostile probes: vocabulary-parallel functions under torch.autocast (CPU bf16/fp16),
float64 under autocast, torch.func refusals, and small-problem vs fused paths.

Passing tests are probes that held up; the tests under "Regression" comments pinned defects
found while probing (each failed then).
"""

import io
import tempfile

import pytest

torch = pytest.importorskip("torch")
dist = pytest.importorskip("torch.distributed")
import torch.nn.functional as F  # noqa: E402

import crossentropy.torch as cet  # noqa: E402
from crossentropy.torch._types import override_tuning  # noqa: E402

N, V, D = 6, 11, 8
HALF = [torch.bfloat16, torch.float16]


@pytest.fixture
def group():
    if dist.is_initialized():
        pytest.skip("a process group is already initialised")
    f = tempfile.NamedTemporaryFile(delete=False)
    f.close()
    dist.init_process_group("gloo", init_method=f"file://{f.name}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def _data(seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, V, generator=g) * 3
    t = torch.randint(0, V, (N,), generator=g)
    t[2] = -100
    h = torch.randn(N, D, generator=g)
    W = torch.randn(V, D, generator=g)
    b = torch.randn(V, generator=g)
    cw = torch.rand(V, generator=g) + 0.5
    sw = torch.randn(N, generator=g)
    return x, t, h, W, b, cw, sw


def _ref_ce(
    z,
    t,
    weight=None,
    z_loss=0.0,
    softcap=None,
    sample_weight=None,
    label_smoothing=0.0,
    reduction="mean",
):
    """The documented definition in plain F ops (z already in the compute dtype)."""
    if softcap:
        z = softcap * torch.tanh(z / softcap)
    loss = F.cross_entropy(z, t, weight=weight, label_smoothing=label_smoothing, reduction="none")
    keep = t != -100
    wy = weight[t.clamp(min=0)].to(loss.dtype) if weight is not None else torch.ones_like(loss)
    loss = loss + z_loss * wy * torch.logsumexp(z, -1) ** 2 * keep
    if sample_weight is not None:
        loss = loss * sample_weight
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (wy * keep).sum()


def _backward(loss):
    if loss.dim():
        (loss * torch.linspace(0.5, 1.5, loss.numel()).reshape(loss.shape)).sum().backward()
    else:
        loss.backward()


def _close(a, b, tol):
    return torch.allclose(a.double(), b.double(), rtol=tol, atol=tol)


ALL = dict(label_smoothing=0.2, z_loss=1e-2, softcap=2.0)


# --------------------------------------------------------------------- held up (passing)


@pytest.mark.parametrize("ac", HALF)
@pytest.mark.parametrize("xdt", ["f32", "half", "f64"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vp_autocast_matches_single_process_and_F(group, ac, xdt, reduction):
    x, t, _, _, _, cw, sw = _data()
    xd = {"f32": torch.float32, "half": ac, "f64": torch.float64}[xdt]
    wd = torch.float64 if xd == torch.float64 else torch.float32
    kw = dict(ALL, weight=cw.to(wd), sample_weight=sw.to(wd), reduction=reduction)
    res = {}
    for name in ["vp", "ce", "F"]:
        xx = x.to(xd).clone().requires_grad_()
        with torch.autocast("cpu", dtype=ac):
            if name == "vp":
                loss = cet.vocab_parallel_cross_entropy(xx, t, **kw)
            elif name == "ce":
                loss = cet.cross_entropy(xx, t, **kw)
            else:
                z = xx if xd == torch.float64 else xx.float()
                loss = _ref_ce(z, t, **kw)
        _backward(loss)
        res[name] = (loss.detach(), xx.grad)
    tol = 1e-6 if xd == torch.float64 else 2e-2
    for name in ["vp", "ce"]:
        loss, grad = res[name]
        assert (
            loss.dtype
            == res["F"][0].dtype
            == (torch.float64 if xd == torch.float64 else torch.float32)
        )
        assert grad.dtype == xd
        assert _close(loss, res["F"][0], tol)
        assert _close(grad, res["F"][1], tol)


@pytest.mark.parametrize("ac", HALF)
@pytest.mark.parametrize("dtypes", ["f32", "half", "mixed", "f64"])
def test_vp_linear_autocast_matches_F_linear_composition(group, ac, dtypes):
    _, t, h, W, b, cw, sw = _data(1)
    hd, wdt = {
        "f32": (torch.float32, torch.float32),
        "half": (ac, ac),
        "mixed": (torch.float32, ac),
        "f64": (torch.float64, torch.float64),
    }[dtypes]
    cd = torch.float64 if hd == torch.float64 else torch.float32
    kw = dict(ALL, sample_weight=sw.to(cd))
    res = {}
    for name in ["vpl", "lce", "F"]:
        ts = [
            h.to(hd).clone().requires_grad_(),
            W.to(wdt).clone().requires_grad_(),
            b.to(hd).clone().requires_grad_(),
        ]
        with torch.autocast("cpu", dtype=ac):
            if name == "vpl":
                loss = cet.vocab_parallel_linear_cross_entropy(
                    ts[0], ts[1], t, ts[2], class_weight=cw.to(cd), chunk_size=4, **kw
                )
            elif name == "lce":
                loss = cet.linear_cross_entropy(
                    ts[0], ts[1], t, ts[2], class_weight=cw.to(cd), chunk_size=4, **kw
                )
            else:
                z = F.linear(*ts)
                z = z if z.dtype == torch.float64 else z.float()
                loss = _ref_ce(z, t, weight=cw.to(cd), **kw)
        loss.backward()
        res[name] = (loss.detach(), [q.grad for q in ts])
    tol = 1e-6 if hd == torch.float64 else 3e-2
    for name in ["vpl", "lce"]:
        loss, grads = res[name]
        assert loss.dtype == res["F"][0].dtype == cd
        assert _close(loss, res["F"][0], tol)
        for g, gr in zip(grads, res["F"][1], strict=True):
            assert g.dtype == gr.dtype
            assert _close(g, gr, 2 * tol)


@pytest.mark.parametrize("ac", HALF)
def test_float64_stays_float64_under_autocast(group, ac):
    x, t, h, W, b, cw, sw = [q.double() if q.is_floating_point() else q for q in _data(2)]
    kw = dict(ALL, sample_weight=sw)
    for fn in [cet.cross_entropy, cet.vocab_parallel_cross_entropy]:
        xx = x.clone().requires_grad_()
        with torch.autocast("cpu", dtype=ac):
            loss = fn(xx, t, weight=cw, reduction="none", **kw)
        loss.sum().backward()
        ref = fn(x, t, weight=cw, reduction="none", **kw)
        assert loss.dtype == xx.grad.dtype == torch.float64
        assert torch.equal(loss.detach(), ref)
    for fn in [cet.linear_cross_entropy, cet.vocab_parallel_linear_cross_entropy]:
        ts = [q.clone().requires_grad_() for q in (h, W, b)]
        with torch.autocast("cpu", dtype=ac):
            loss = fn(*ts[:2], t, ts[2], class_weight=cw, **kw)
        loss.backward()
        assert loss.dtype == torch.float64
        assert all(q.grad.dtype == torch.float64 for q in ts)
        assert torch.equal(loss.detach(), fn(h, W, t, b, class_weight=cw, **kw))
    for fn in [cet.token_stats, cet.vocab_parallel_token_stats]:
        with torch.autocast("cpu", dtype=ac):
            out = fn(x, t, softcap=3.0)
        assert out.logprob.dtype == out.entropy.dtype == out.lse.dtype == torch.float64


@pytest.mark.parametrize("ac", HALF)
def test_vp_token_stats_autocast_match_single_process(group, ac):
    x, t, *_ = _data(3)
    xa, xb = x.to(ac).requires_grad_(), x.to(ac).requires_grad_()
    with torch.autocast("cpu", dtype=ac):
        a = cet.vocab_parallel_token_stats(xa, t, softcap=4.0)
        r = cet.token_stats(xb, t, softcap=4.0)
    (a.logprob.sum() + 0.3 * a.entropy.sum()).backward()
    (r.logprob.sum() + 0.3 * r.entropy.sum()).backward()
    assert a.logprob.dtype == r.logprob.dtype == torch.float32
    assert _close(a.logprob, r.logprob, 1e-5) and _close(a.entropy, r.entropy, 1e-5)
    assert torch.equal(a.argmax, r.argmax)
    assert _close(xa.grad, xb.grad, 1e-2)


VP_FUNCS = {
    "vocab_parallel_cross_entropy": lambda x, h, W, t: cet.vocab_parallel_cross_entropy(x, t),
    "vocab_parallel_token_stats": lambda x, h, W, t: cet.vocab_parallel_token_stats(
        x, t
    ).logprob.sum(),
    "vocab_parallel_linear_cross_entropy": lambda x, h, W, t: (
        cet.vocab_parallel_linear_cross_entropy(h, W, t)
    ),
    "vocab_parallel_linear_token_stats": lambda x, h, W, t: cet.vocab_parallel_linear_token_stats(
        h, W, t
    ).logprob.sum(),
}


@pytest.mark.parametrize("name", list(VP_FUNCS))
@pytest.mark.parametrize("transform", ["grad", "vmap", "jacfwd"])
def test_vp_under_torch_func_raises_library_error(group, name, transform):
    x, t, h, W, _, _, _ = _data(4)
    fn = VP_FUNCS[name]
    linear = "linear" in name
    arg = h if linear else x
    call = (lambda a: fn(x, a, W, t)) if linear else (lambda a: fn(a, h, W, t))
    tr = {
        "grad": lambda: torch.func.grad(call)(arg),
        "vmap": lambda: torch.func.vmap(call)(arg.unsqueeze(0)),
        "jacfwd": lambda: torch.func.jacfwd(call)(arg),
    }[transform]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(RuntimeError, match=name + ": .*torch.func"):
            tr()


@pytest.mark.parametrize("ac", [None, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("opts", ["plain", "all", "ignore3"])
def test_small_and_fused_paths_agree_with_F(ac, opts):
    x, t, _, _, _, cw, sw = _data(5)
    if opts == "ignore3":
        t = torch.where(t == -100, torch.tensor(3), t)
        kw = dict(ignore_index=3, label_smoothing=0.1)
    elif opts == "all":
        kw = dict(ALL, weight=cw, sample_weight=sw)
    else:
        kw = {}
    for red in ["mean", "sum", "none"]:
        res = {}
        for path in ["small", "fused", "F"]:
            xx = x.clone().requires_grad_()
            with torch.autocast("cpu", dtype=ac or torch.bfloat16, enabled=ac is not None):
                if path == "F":
                    loss = (
                        _ref_ce(
                            xx,
                            t,
                            reduction=red,
                            **{k: v for k, v in kw.items() if k != "ignore_index"},
                        )
                        if "ignore_index" not in kw
                        else F.cross_entropy(xx, t, reduction=red, **kw)
                    )
                elif path == "small":
                    loss = cet.cross_entropy(xx, t, reduction=red, **kw)
                else:
                    with override_tuning(direct_max_elements=-1, linear_direct_max_elements=-1):
                        loss = cet.cross_entropy(xx, t, reduction=red, **kw)
            _backward(loss)
            res[path] = (loss.detach(), xx.grad)
        tol = 1e-5 if ac is None else 2e-2
        for path in ["small", "fused"]:
            assert res[path][0].dtype == res["F"][0].dtype
            assert _close(res[path][0], res["F"][0], tol), (path, red)
            assert _close(res[path][1], res["F"][1], tol), (path, red)


def _two_rank_worker(rank, path, q):
    dist.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        x, t, h, W, b, cw, sw = _data(6)
        sl = [slice(0, 4), slice(4, V)][rank]
        out = {}
        for ac in HALF:
            xs = x.to(ac)[:, sl].clone().requires_grad_()
            with torch.autocast("cpu", dtype=ac):
                loss = cet.vocab_parallel_cross_entropy(
                    xs, t, weight=cw[sl], sample_weight=sw, **ALL
                )
            loss.backward()
            hs, Ws, bs = (
                h.clone().requires_grad_(),
                W[sl].clone().requires_grad_(),
                b[sl].clone().requires_grad_(),
            )
            with torch.autocast("cpu", dtype=ac):
                lin = cet.vocab_parallel_linear_cross_entropy(
                    hs, Ws, t, bs, class_weight=cw[sl], sample_weight=sw, chunk_size=4, **ALL
                )
            lin.backward()
            out[str(ac)] = (loss.detach(), xs.grad, lin.detach(), hs.grad, Ws.grad, bs.grad)
        buf = io.BytesIO()
        torch.save(out, buf)
        q.put((rank, buf.getvalue()))
    except Exception as e:  # pragma: no cover - reported by the parent
        q.put((rank, repr(e)))
    finally:
        dist.destroy_process_group()


def test_two_ranks_autocast_matches_single_process():
    mp = torch.multiprocessing.get_context("spawn")
    f = tempfile.NamedTemporaryFile(delete=False)
    f.close()
    q = mp.Queue()
    ps = [mp.Process(target=_two_rank_worker, args=(r, f.name, q)) for r in range(2)]
    for p in ps:
        p.start()
    try:
        got = dict(q.get(timeout=60) for _ in ps)
    finally:
        for p in ps:
            p.join(10)
            if p.is_alive():
                p.kill()
    for r in (0, 1):
        assert isinstance(got[r], bytes), got[r]
    r0, r1 = (torch.load(io.BytesIO(got[r])) for r in (0, 1))
    x, t, h, W, b, cw, sw = _data(6)
    for ac in HALF:
        a, c = r0[str(ac)], r1[str(ac)]
        xx = x.to(ac).requires_grad_()
        with torch.autocast("cpu", dtype=ac):
            ref = cet.cross_entropy(xx, t, weight=cw, sample_weight=sw, **ALL)
        ref.backward()
        assert torch.equal(a[0], c[0]) and a[0].dtype == ref.dtype == torch.float32
        assert _close(a[0], ref, 1e-5)
        assert _close(torch.cat([a[1], c[1]], 1), xx.grad, 1e-2)
        ts = [q_.clone().requires_grad_() for q_ in (h, W, b)]
        with torch.autocast("cpu", dtype=ac):
            lref = cet.linear_cross_entropy(
                *ts[:2], t, ts[2], class_weight=cw, sample_weight=sw, **ALL
            )
        lref.backward()
        assert torch.equal(a[2], c[2]) and _close(a[2], lref, 1e-2)
        assert torch.equal(a[3], c[3]) and _close(a[3], ts[0].grad, 3e-2)
        assert _close(torch.cat([a[4], c[4]]), ts[1].grad, 3e-2)
        assert _close(torch.cat([a[5], c[5]]), ts[2].grad, 3e-2)


# --------------------------------------------------------------------------- findings


# Regression (was wrong): torch.func refusal blames `hidden` although only weight_shard is traced;
# the message should name the traced argument
def test_torch_func_error_names_the_traced_weight_shard(group):
    _, t, h, W, _, _, _ = _data(7)
    with pytest.raises(RuntimeError) as info:
        torch.func.grad(lambda w: cet.vocab_parallel_linear_cross_entropy(h, w, t))(W)
    msg = str(info.value)
    assert "vocab_parallel_linear_cross_entropy" in msg
    assert "weight_shard" in msg and "hidden must not be traced" not in msg


# Regression (was wrong): vmap over target only: the refusal says `logits_shard must not be
# traced`, which is false (logits are a plain tensor)
def test_torch_func_error_does_not_blame_untraced_logits(group):
    x, t, _, _, _, _, _ = _data(7)
    T = torch.stack([t.clamp(min=0), t.clamp(min=0)])
    with pytest.raises(RuntimeError) as info:
        torch.func.vmap(lambda tt: cet.vocab_parallel_cross_entropy(x, tt))(T)
    msg = str(info.value)
    assert "vocab_parallel_cross_entropy" in msg
    assert "logits_shard must not be traced" not in msg


# Regression (was wrong): vocab_parallel_cross_entropy accepts a float64 class weight with float32
# logits outside autocast, where cross_entropy (and F) refuse it
def test_vp_weight_dtype_validated_like_cross_entropy(group):
    x, t, _, _, _, cw, _ = _data(8)
    with pytest.raises(TypeError, match="cross_entropy: weight"):
        cet.cross_entropy(x, t, weight=cw.double())
    with pytest.raises(TypeError, match=r"vocab_parallel_cross_entropy: .*weight"):
        cet.vocab_parallel_cross_entropy(x, t, weight=cw.double())


# Regression (was wrong): vocab_parallel_linear_cross_entropy accepts a float32 class_weight with
# bfloat16 hidden outside autocast; linear_cross_entropy refuses it
def test_vp_linear_class_weight_dtype_validated_like_linear(group):
    _, t, h, W, _, cw, _ = _data(8)
    hb, Wb = h.bfloat16(), W.bfloat16()
    with pytest.raises(TypeError, match="linear_cross_entropy: class_weight"):
        cet.linear_cross_entropy(hb, Wb, t, class_weight=cw)
    with pytest.raises(TypeError, match="vocab_parallel_linear_cross_entropy: class_weight"):
        cet.vocab_parallel_linear_cross_entropy(hb, Wb, t, class_weight=cw)


# Regression (was wrong): under autocast, the dtype error reports the autocast dtype (bfloat16)
# instead of the float32 weight the caller passed
@pytest.mark.parametrize("which", ["linear_cross_entropy", "vocab_parallel_linear_cross_entropy"])
def test_autocast_dtype_error_reports_callers_dtype(group, which):
    _, t, h, W, _, _, _ = _data(9)
    fn = getattr(cet, which)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.raises(TypeError) as info:
            fn(h.double(), W, t)  # W is float32
    assert "float32" in str(info.value) and "bfloat16" not in str(info.value)
