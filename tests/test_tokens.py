"""crossentropy.tokens: per-token statistics and their closed-form vector-Jacobian product."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import crossentropy as ce
from conftest import central_difference, tol
from crossentropy.tokens import TokenStats, token_stats, token_stats_vjp

C = 7


def _case(
    rng: np.random.Generator, lead: tuple[int, ...] = (5,), n_classes: int = C, scale: float = 2.0
) -> tuple[np.ndarray, np.ndarray]:
    z = rng.normal(scale=scale, size=(*lead, n_classes))
    y = rng.integers(0, n_classes, size=lead)
    return z, y


def _upstreams(rng: np.random.Generator, shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    return {name: rng.normal(size=shape) for name in ("d_logprob", "d_entropy", "d_lse")}


def _weighted_sum(z: np.ndarray, y: np.ndarray, ups: dict[str, np.ndarray], **kw: Any) -> float:
    out = token_stats(z, y, **kw)
    total = 0.0
    for name, field in (("d_logprob", "logprob"), ("d_entropy", "entropy"), ("d_lse", "lse")):
        if ups.get(name) is not None:
            total += float(np.sum(ups[name] * getattr(out, field)))
    return total


# ---------------------------------------------------------------------------------------------
# values
# ---------------------------------------------------------------------------------------------


def test_values_against_definitions(rng: np.random.Generator) -> None:
    z, y = _case(rng, (4, 3))
    out = token_stats(z, y)
    assert isinstance(out, TokenStats)
    p = ce.softmax(z, axis=-1)
    log_p = ce.log_softmax(z, axis=-1)
    np.testing.assert_allclose(out.lse, ce.logsumexp(z, axis=-1), **tol(np.float64))
    np.testing.assert_allclose(
        out.logprob, np.take_along_axis(log_p, y[..., None], -1)[..., 0], **tol(np.float64)
    )
    np.testing.assert_allclose(out.entropy, ce.entropy(p, axis=-1), **tol(np.float64))
    np.testing.assert_array_equal(out.argmax, z.argmax(-1))
    assert out.argmax.dtype == np.int64
    assert all(v.shape == (4, 3) for v in out)


def test_logprob_is_minus_cross_entropy(rng: np.random.Generator) -> None:
    z, y = _case(rng, (9,))
    y[::3] = -100
    out = token_stats(z, y)
    ref = ce.cross_entropy(z, y, reduction="none")
    np.testing.assert_allclose(out.logprob, -ref, **tol(np.float64))
    assert np.all(out.logprob[::3] == 0)


def test_matches_torch_composition_float64(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    z, y = _case(rng, (3, 5), scale=5.0)
    y[0, ::2] = -100
    ups = _upstreams(rng, y.shape)
    out = token_stats(z, y)
    grad = token_stats_vjp(z, y, **ups)
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)
    keep = yt != -100
    log_p = torch.log_softmax(zt, -1)
    logprob = torch.where(keep, log_p.gather(-1, yt.clamp(min=0)[..., None])[..., 0], 0.0)
    entropy = -(log_p.exp() * log_p).sum(-1)
    lse = torch.logsumexp(zt, -1)
    total = sum(
        (torch.tensor(ups[k]) * v).sum()
        for k, v in (("d_logprob", logprob), ("d_entropy", entropy), ("d_lse", lse))
    )
    total.backward()
    for mine, ref in ((out.logprob, logprob), (out.entropy, entropy), (out.lse, lse)):
        assert np.max(np.abs(mine - ref.detach().numpy())) < 1e-13
    assert np.max(np.abs(grad - zt.grad.numpy())) < 1e-13
    np.testing.assert_array_equal(out.argmax, zt.argmax(-1).numpy())


@pytest.mark.parametrize("axis", [0, 1, -1])
def test_axis(rng: np.random.Generator, axis: int) -> None:
    z, y = _case(rng, (4, 3))
    moved = np.moveaxis(z, -1, axis)
    out = token_stats(moved, y, axis=axis)
    ref = token_stats(z, y)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, **tol(np.float64))
    ups = _upstreams(rng, y.shape)
    np.testing.assert_allclose(
        token_stats_vjp(moved, y, **ups, axis=axis),
        np.moveaxis(token_stats_vjp(z, y, **ups), -1, axis),
        **tol(np.float64),
    )


def test_single_sample(rng: np.random.Generator) -> None:
    z = rng.normal(size=C)
    out = token_stats(z, np.array(2))
    assert all(v.shape == () for v in out)
    np.testing.assert_allclose(out.logprob, ce.log_softmax(z)[2], **tol(np.float64))
    assert token_stats_vjp(z, np.array(2), d_logprob=1.0).shape == (C,)


def test_empty_batch() -> None:
    out = token_stats(np.zeros((0, C)), np.zeros(0, dtype=np.int64))
    assert all(v.shape == (0,) for v in out)
    grad = token_stats_vjp(np.zeros((0, C)), np.zeros(0, dtype=np.int64), d_logprob=1.0)
    assert grad.shape == (0, C)


@pytest.mark.parametrize("dtype", [np.float64, np.float32, np.float16])
def test_dtypes(rng: np.random.Generator, dtype: Any) -> None:
    z, y = _case(rng)
    zd = z.astype(dtype)
    out = token_stats(zd, y)
    assert out.logprob.dtype == out.entropy.dtype == out.lse.dtype == dtype
    assert out.argmax.dtype == np.int64
    ref = token_stats(zd.astype(np.float64), y)
    for a, b in zip(out[:3], ref[:3], strict=True):
        np.testing.assert_allclose(a, b, **tol(np.dtype(dtype)))
    grad = token_stats_vjp(zd, y, d_logprob=1.0, d_entropy=1.0)
    assert grad.dtype == dtype


def test_inputs_not_written(rng: np.random.Generator) -> None:
    z, y = _case(rng)
    z32 = z.astype(np.float32)
    ups = _upstreams(rng, y.shape)
    copies = (z.copy(), z32.copy(), y.copy(), {k: v.copy() for k, v in ups.items()})
    token_stats(z, y)
    token_stats_vjp(z, y, **ups)
    token_stats_vjp(z32, y, **ups)
    np.testing.assert_array_equal(z, copies[0])
    np.testing.assert_array_equal(z32, copies[1])
    np.testing.assert_array_equal(y, copies[2])
    for k, v in ups.items():
        np.testing.assert_array_equal(v, copies[3][k])


def test_many_blocks_match_one(rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch) -> None:
    import crossentropy.tokens as tokens

    z, y = _case(rng, (40,))
    ups = _upstreams(rng, y.shape)
    whole = token_stats(z, y), token_stats_vjp(z, y, **ups)
    monkeypatch.setattr(tokens, "_BLOCK_BYTES", 3 * C * 8)  # 3 rows per block
    blocked = token_stats(z, y), token_stats_vjp(z, y, **ups)
    for a, b in zip(whole[0], blocked[0], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(whole[1], blocked[1])


# ---------------------------------------------------------------------------------------------
# gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "used",
    [
        ("d_logprob",),
        ("d_entropy",),
        ("d_lse",),
        ("d_logprob", "d_entropy"),
        ("d_entropy", "d_lse"),
        ("d_logprob", "d_entropy", "d_lse"),
    ],
)
def test_vjp_matches_central_differences(rng: np.random.Generator, used: tuple[str, ...]) -> None:
    z, y = _case(rng, (2, 3))
    y[1, 0] = -100
    ups = {k: v for k, v in _upstreams(rng, y.shape).items() if k in used}
    grad = token_stats_vjp(z, y, **ups)
    fd = central_difference(lambda x: _weighted_sum(x, y, ups), z)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_vjp_closed_forms(rng: np.random.Generator) -> None:
    z, y = _case(rng)
    out = token_stats(z, y)
    p = ce.softmax(z, axis=-1)
    onehot = np.eye(C)[y]
    t = tol(np.float64)
    np.testing.assert_allclose(token_stats_vjp(z, y, d_logprob=1.0), onehot - p, **t)
    np.testing.assert_allclose(
        token_stats_vjp(z, y, d_entropy=1.0), -p * (np.log(p) + out.entropy[:, None]), **t
    )
    np.testing.assert_allclose(token_stats_vjp(z, y, d_lse=1.0), p, **t)
    assert not token_stats_vjp(z, y).any()  # no upstream: zero gradient


def test_vjp_row_sums(rng: np.random.Generator) -> None:
    """Shift invariance: logprob and entropy gradients sum to 0 per row, lse's to its upstream."""
    z, y = _case(rng, (6,))
    ups = _upstreams(rng, y.shape)
    g = token_stats_vjp(z, y, d_logprob=ups["d_logprob"], d_entropy=ups["d_entropy"])
    np.testing.assert_allclose(g.sum(-1), 0.0, atol=1e-14)
    np.testing.assert_allclose(token_stats_vjp(z, y, d_lse=ups["d_lse"]).sum(-1), ups["d_lse"])


def test_ignored_positions_get_only_entropy_and_lse_gradients(rng: np.random.Generator) -> None:
    z, y = _case(rng, (4,))
    y[1] = -100
    ups = _upstreams(rng, y.shape)
    g = token_stats_vjp(z, y, **ups)
    no_logprob = token_stats_vjp(z, y, d_entropy=ups["d_entropy"], d_lse=ups["d_lse"])
    np.testing.assert_allclose(g[1], no_logprob[1], **tol(np.float64))
    assert not token_stats_vjp(z, y, d_logprob=ups["d_logprob"])[1].any()


def test_scalar_upstream_broadcasts(rng: np.random.Generator) -> None:
    z, y = _case(rng, (2, 3))
    np.testing.assert_array_equal(
        token_stats_vjp(z, y, d_entropy=0.5), token_stats_vjp(z, y, d_entropy=np.full((2, 3), 0.5))
    )


# ---------------------------------------------------------------------------------------------
# stability
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shift", [1e4, -1e4])
def test_large_logits_are_shift_invariant(
    rng: np.random.Generator, dtype: Any, shift: float
) -> None:
    z, y = _case(rng)
    base = token_stats(z.astype(dtype), y)
    out = token_stats((z + shift).astype(dtype), y)
    assert all(np.all(np.isfinite(v)) for v in out)
    # float32 spacing at 1e4 is ~1e-3: the shifted logits themselves carry that error.
    t = {"rtol": 0, "atol": 4e-3} if dtype == np.float32 else {"rtol": 0, "atol": 1e-11}
    np.testing.assert_allclose(out.logprob, base.logprob, **t)
    np.testing.assert_allclose(out.entropy, base.entropy, **t)
    np.testing.assert_allclose(out.lse - shift, base.lse, **t)
    grad = token_stats_vjp((z + shift).astype(dtype), y, d_logprob=1.0, d_entropy=1.0, d_lse=1.0)
    assert np.all(np.isfinite(grad))


def test_minus_inf_logits_are_masked_classes(rng: np.random.Generator) -> None:
    z, y = _case(rng, (4,))
    y[:] = 0
    masked = z.copy()
    masked[:, 3:] = -np.inf
    out = token_stats(masked, y)
    ref = token_stats(z[:, :3], y)
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, **tol(np.float64))
    ups = _upstreams(rng, y.shape)
    g = token_stats_vjp(masked, y, **ups)
    assert np.all(np.isfinite(g))
    assert not g[:, 3:].any()  # 0 · log 0 = 0: no gradient to a masked class
    np.testing.assert_allclose(g[:, :3], token_stats_vjp(z[:, :3], y, **ups), **tol(np.float64))


def test_minus_inf_target_logit() -> None:
    out = token_stats(np.array([[0.0, -np.inf]]), np.array([1]))
    assert out.logprob[0] == -np.inf
    assert out.entropy[0] == 0.0
    np.testing.assert_array_equal(
        token_stats_vjp(np.array([[0.0, -np.inf]]), np.array([1]), d_logprob=1.0), [[-1.0, 1.0]]
    )


def test_plus_inf_logits_give_the_limit() -> None:
    out = token_stats(np.array([[np.inf, np.inf, 0.0]]), np.array([0]))
    np.testing.assert_allclose(out.logprob, [np.log(0.5)])
    np.testing.assert_allclose(out.entropy, [np.log(2.0)])
    assert out.lse[0] == np.inf


# ---------------------------------------------------------------------------------------------
# properties
# ---------------------------------------------------------------------------------------------

_LOGITS = hnp.arrays(
    np.float64,
    hnp.array_shapes(min_dims=2, max_dims=2, min_side=1, max_side=12),
    elements=st.floats(-1e4, 1e4, allow_nan=False),
)


@settings(max_examples=200, deadline=None)
@given(_LOGITS)
def test_entropy_between_zero_and_log_c(z: np.ndarray) -> None:
    y = np.zeros(z.shape[0], dtype=np.int64)
    out = token_stats(z, y)
    slack = 1e-12 * max(1.0, np.log(z.shape[1]))
    assert np.all(out.entropy >= -slack)
    assert np.all(out.entropy <= np.log(z.shape[1]) + slack)
    assert np.all(out.logprob <= 0)
    assert np.all(out.lse >= z.max(axis=1))


@settings(max_examples=100, deadline=None)
@given(_LOGITS, st.floats(-1e3, 1e3))
def test_property_shift_invariance(z: np.ndarray, t: float) -> None:
    y = np.zeros(z.shape[0], dtype=np.int64)
    a, b = token_stats(z, y), token_stats(z + t, y)
    atol = 1e-9 * (1 + np.abs(z).max() + abs(t))
    np.testing.assert_allclose(a.logprob, b.logprob, rtol=0, atol=atol)
    np.testing.assert_allclose(a.entropy, b.entropy, rtol=0, atol=atol)


# ---------------------------------------------------------------------------------------------
# validation (messages pinned)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("call", "kind", "message"),
    [
        (
            lambda: token_stats(np.array([[1, 2]]), np.array([0])),
            TypeError,
            "token_stats: logits must have a floating-point dtype, got dtype int64",
        ),
        (
            lambda: token_stats(np.array([[1.0, np.nan]]), np.array([0])),
            ValueError,
            "token_stats: logits must not contain NaN, got 1 NaN value(s)",
        ),
        (
            lambda: token_stats(np.array(1.0), np.array(0)),
            ValueError,
            "token_stats: logits must have at least 1 dimension (classes), got a 0-d array",
        ),
        (
            lambda: token_stats(np.zeros((2, 0)), np.array([0, 0])),
            ValueError,
            "token_stats: logits must have at least one class (C >= 1) along axis, "
            "got shape (2, 0)",
        ),
        (
            lambda: token_stats(np.zeros((2, 3)), np.array([0.0, 1.0])),
            TypeError,
            "token_stats: target must have an integer dtype (class indices), got dtype float64",
        ),
        (
            lambda: token_stats(np.zeros((2, 3)), np.array([0, 1, 2])),
            ValueError,
            "token_stats: target must have shape (2,) (logits' shape without the class axis), "
            "got shape (3,)",
        ),
        (
            lambda: token_stats(np.zeros((2, 3)), np.array([0, 3])),
            ValueError,
            "token_stats: target must contain class indices in [0, 3) or ignore_index (-100), "
            "got 3 (1 such value(s))",
        ),
        (
            lambda: token_stats(np.zeros((2, 3)), np.array([0, 1]), ignore_index=1.5),
            TypeError,
            "token_stats: ignore_index must be an integer, got float 1.5",
        ),
        (
            lambda: token_stats(np.zeros((2, 3)), np.array([0, 1]), axis=2),
            ValueError,
            "token_stats: axis must be in [-2, 2), got 2",
        ),
        (
            lambda: token_stats_vjp(np.zeros((2, 3)), np.array([0, 1]), d_entropy=np.ones(3)),
            ValueError,
            "token_stats_vjp: d_entropy must be broadcastable to (2,), got shape (3,)",
        ),
        (
            lambda: token_stats_vjp(np.zeros((2, 3)), np.array([0, 1]), d_lse=np.array([1, 2])),
            TypeError,
            "token_stats_vjp: d_lse must have a floating-point dtype, got dtype int64",
        ),
    ],
)
def test_errors(call: Any, kind: type[Exception], message: str) -> None:
    with pytest.raises(kind, match=re.escape(message)):
        call()


def test_torch_tensor_points_at_torch_backend() -> None:
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"token_stats: logits must be a NumPy array"):
        token_stats(torch.zeros(2, 3), np.array([0, 1]))


def test_vjp_with_an_infinite_upstream_is_the_limit_not_nan():
    """Found by the hostile pass: d_logprob = inf gave NaN at the target (inf − inf)."""
    import warnings

    from crossentropy.tokens import token_stats_vjp

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        g = token_stats_vjp(np.zeros((3, 4)), np.zeros(3, dtype=int), d_logprob=np.inf)
    np.testing.assert_array_equal(g[:, 0], np.inf)
    np.testing.assert_array_equal(g[:, 1:], -np.inf)


# ---------------------------------------------------------------------------------------------
# softcap: the statistics of c·tanh(z / c), the VJP through 1 − (z'/c)²
# ---------------------------------------------------------------------------------------------

CAP = 3.0


def test_softcap_statistics_are_those_of_the_capped_logits(rng: np.random.Generator) -> None:
    z, y = _case(rng, (4, 3), scale=6.0)  # beyond the cap: it bends them
    y[0, 1] = -100
    out = token_stats(z, y, softcap=CAP)
    zc = CAP * np.tanh(z / CAP)
    log_p = ce.log_softmax(zc, axis=-1)
    t = tol(np.float64)
    np.testing.assert_allclose(out.lse, ce.logsumexp(zc, axis=-1), **t)
    picked = np.take_along_axis(log_p, np.where(y == -100, 0, y)[..., None], -1)[..., 0]
    np.testing.assert_allclose(out.logprob, np.where(y == -100, 0.0, picked), **t)
    np.testing.assert_allclose(out.entropy, ce.entropy(ce.softmax(zc, axis=-1), axis=-1), **t)
    np.testing.assert_array_equal(out.argmax, zc.argmax(-1))
    assert np.max(np.abs(out.lse - token_stats(z, y).lse)) > 0.1  # the cap is not ignored


def test_softcap_argmax_is_of_the_capped_logits() -> None:
    """Logits the softcap rounds to the same value tie, and the first wins."""
    z = np.array([[100.0, 200.0, 0.0]])
    assert token_stats(z, np.array([0])).argmax[0] == 1
    assert token_stats(z, np.array([0]), softcap=1.0).argmax[0] == 0  # tanh(100) == tanh(200)


def test_softcap_logprob_is_minus_cross_entropy_with_softcap(rng: np.random.Generator) -> None:
    z, y = _case(rng, (9,), scale=5.0)
    y[::4] = -100
    out = token_stats(z, y, softcap=CAP)
    ref = ce.cross_entropy(z, y, reduction="none", softcap=CAP)
    np.testing.assert_allclose(out.logprob, -ref, **tol(np.float64))
    # a position's z-loss is z_loss * lse**2
    zl = ce.cross_entropy(z, y, reduction="none", softcap=CAP, z_loss=0.1)
    kept = y != -100
    np.testing.assert_allclose((zl - ref)[kept], 0.1 * out.lse[kept] ** 2, **tol(np.float64))


@pytest.mark.parametrize(
    "used",
    [("d_logprob",), ("d_entropy",), ("d_lse",), ("d_logprob", "d_entropy", "d_lse")],
)
def test_softcap_vjp_matches_central_differences(
    rng: np.random.Generator, used: tuple[str, ...]
) -> None:
    z, y = _case(rng, (2, 3), scale=4.0)
    y[1, 0] = -100
    ups = {k: v for k, v in _upstreams(rng, y.shape).items() if k in used}
    grad = token_stats_vjp(z, y, **ups, softcap=CAP)
    fd = central_difference(lambda x: _weighted_sum(x, y, ups, softcap=CAP), z)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-8)


def test_softcap_matches_torch_composition_float64(rng: np.random.Generator) -> None:
    torch = pytest.importorskip("torch")
    z, y = _case(rng, (3, 5), scale=6.0)
    y[0, ::2] = -100
    ups = _upstreams(rng, y.shape)
    out = token_stats(z, y, softcap=CAP)
    grad = token_stats_vjp(z, y, **ups, softcap=CAP)
    zt = torch.tensor(z, requires_grad=True)
    yt = torch.tensor(y)
    zc = CAP * torch.tanh(zt / CAP)
    keep = yt != -100
    log_p = torch.log_softmax(zc, -1)
    logprob = torch.where(keep, log_p.gather(-1, yt.clamp(min=0)[..., None])[..., 0], 0.0)
    entropy = -(log_p.exp() * log_p).sum(-1)
    lse = torch.logsumexp(zc, -1)
    total = sum(
        (torch.tensor(ups[k]) * v).sum()
        for k, v in (("d_logprob", logprob), ("d_entropy", entropy), ("d_lse", lse))
    )
    total.backward()
    for mine, ref in ((out.logprob, logprob), (out.entropy, entropy), (out.lse, lse)):
        assert np.max(np.abs(mine - ref.detach().numpy())) < 1e-13
    assert zt.grad is not None
    assert np.max(np.abs(grad - zt.grad.numpy())) < 1e-13


def test_softcap_makes_infinite_logits_finite() -> None:
    z = np.array([[np.inf, 0.0, -np.inf]])
    out = token_stats(z, np.array([1]), softcap=CAP)
    ref = token_stats(np.array([[CAP, 0.0, -CAP]]), np.array([1]))
    for a, b in zip(out, ref, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-15)
    g = token_stats_vjp(z, np.array([1]), d_logprob=1.0, d_entropy=1.0, d_lse=1.0, softcap=CAP)
    assert np.all(np.isfinite(g))
    np.testing.assert_array_equal(g[:, [0, 2]], 0.0)  # the slope is 0 at ±inf


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_softcap_dtypes(rng: np.random.Generator, dtype: Any) -> None:
    z, y = _case(rng, (6,), scale=5.0)
    z = z.astype(dtype).astype(np.float64)  # exactly representable in dtype
    ref, ref_g = token_stats(z, y, softcap=CAP), token_stats_vjp(z, y, d_lse=1.0, softcap=CAP)
    out = token_stats(z.astype(dtype), y, softcap=CAP)
    g = token_stats_vjp(z.astype(dtype), y, d_lse=1.0, softcap=CAP)
    assert out.lse.dtype == dtype and g.dtype == dtype
    np.testing.assert_allclose(out.lse, ref.lse, **tol(dtype))
    np.testing.assert_allclose(out.entropy, ref.entropy, **tol(dtype))
    np.testing.assert_allclose(g, ref_g, **tol(dtype))


def test_softcap_many_blocks_match_one(
    rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    import crossentropy.tokens as tokens

    z, y = _case(rng, (37,), scale=5.0)
    ups = _upstreams(rng, y.shape)
    one, one_g = token_stats(z, y, softcap=CAP), token_stats_vjp(z, y, **ups, softcap=CAP)
    monkeypatch.setattr(tokens, "_BLOCK_BYTES", 5 * C * 8)  # 5 rows per block
    many, many_g = token_stats(z, y, softcap=CAP), token_stats_vjp(z, y, **ups, softcap=CAP)
    for a, b in zip(one, many, strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(one_g, many_g)


def test_softcap_inputs_not_written(rng: np.random.Generator) -> None:
    z, y = _case(rng, (3,))
    z32 = z.astype(np.float32)  # the compute dtype: rows are a view of the caller's array
    before = (z.copy(), z32.copy(), y.copy())
    for logits in (z, z32):
        token_stats(logits, y, softcap=CAP)
        token_stats_vjp(logits, y, d_logprob=1.0, d_entropy=1.0, softcap=CAP)
    for a, b in zip((z, z32, y), before, strict=True):
        np.testing.assert_array_equal(a, b)


@settings(max_examples=200, deadline=None)
@given(_LOGITS, st.floats(1e-2, 1e3))
def test_softcap_entropy_between_zero_and_log_c(z: np.ndarray, cap: float) -> None:
    y = np.zeros(z.shape[0], dtype=np.int64)
    out = token_stats(z, y, softcap=cap)
    slack = 1e-12 * max(1.0, np.log(z.shape[1]))
    assert np.all(out.entropy >= -slack)
    assert np.all(out.entropy <= np.log(z.shape[1]) + slack)
    assert np.all(out.logprob <= 0)
    assert np.all(np.abs(out.lse) <= cap + np.log(z.shape[1]) + 1e-9 * cap)  # |z'| <= c


@settings(max_examples=100, deadline=None)
@given(hnp.arrays(np.float64, (3, 6), elements=st.floats(-50, 50)))
def test_softcap_tends_to_the_identity(z: np.ndarray) -> None:
    y = np.array([0, 5, -100])
    ups = {"d_logprob": np.ones(3), "d_entropy": np.full(3, 0.5), "d_lse": np.full(3, -1.0)}
    for a, b in zip(token_stats(z, y), token_stats(z, y, softcap=1e8), strict=True):
        np.testing.assert_allclose(b, a, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(
        token_stats_vjp(z, y, **ups, softcap=1e8),
        token_stats_vjp(z, y, **ups),
        rtol=1e-10,
        atol=1e-12,
    )


@pytest.mark.parametrize("fn", [token_stats, token_stats_vjp])
@pytest.mark.parametrize(
    ("softcap", "kind", "actual"),
    [
        (True, TypeError, "bool True"),
        ("30", TypeError, "str '30'"),
        (0.0, ValueError, "0.0"),
        (-1, ValueError, "-1.0"),
        (float("inf"), ValueError, "inf"),
        (float("nan"), ValueError, "nan"),
    ],
)
def test_softcap_errors(fn: Any, softcap: Any, kind: type[Exception], actual: str) -> None:
    message = f"{fn.__name__}: softcap must be None or a finite float > 0, got {actual}"
    with pytest.raises(kind, match="^" + re.escape(message) + "$"):
        fn(np.zeros((2, 3)), np.array([0, 1]), softcap=softcap)
