"""The shard kernels of crossentropy.torch._kernels (used by the vocabulary-parallel code)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
F = torch.nn.functional

from crossentropy.torch import _kernels as K  # noqa: E402


def _gen(rng: np.random.Generator) -> torch.Generator:
    return torch.Generator().manual_seed(int(rng.integers(2**31)))


def _setup(g, n=9, c=23, eps=0.2):
    x = torch.randn(n, c, generator=g, dtype=torch.float64) * 3
    t = torch.randint(0, c, (n,), generator=g)
    t[2] = -100
    w = torch.rand(c, generator=g, dtype=torch.float64) + 0.5
    valid = t != -100
    tw = torch.where(valid, w[t.clamp(min=0)], 0.0)
    scale = torch.where(valid, 1 / tw.sum(), 0.0)
    return x, t, w, tw, scale


def _reference_grad(x, t, w, eps):
    xx = x.clone().requires_grad_()
    F.cross_entropy(xx, t, weight=w, label_smoothing=eps).backward()
    return xx.grad


@pytest.mark.parametrize("bounds", [(0, 23), (0, 5, 11, 23), (0, 1, 22, 23)])
def test_sharded_statistics_and_gradient_match_the_whole(rng, bounds):
    """Per-shard statistics merged (what the all-reduce does) and per-shard gradient passes
    with the global lse equal torch on the whole vocabulary."""
    g = _gen(rng)
    eps = 0.2
    x, t, w, tw, scale = _setup(g)
    shards = list(itertools.pairwise(bounds))
    parts = [
        K.logits_row_stats(
            x[:, a:b], t, class_offset=a, class_weight=w[a:b], with_sum=True, block_rows=4
        )
        for a, b in shards
    ]
    stats = K.merge_row_stats(parts)
    lse = K.row_lse(stats)
    torch.testing.assert_close(lse, torch.logsumexp(x, dim=1))
    valid = t != -100
    nll = K.row_nll(stats)
    ref_nll = F.cross_entropy(x, t, reduction="none")
    torch.testing.assert_close(nll, ref_nll)
    torch.testing.assert_close(stats.sum_logits, x @ w)
    coef = K.index_target_coefficients(
        stats, scale, tw, label_smoothing=eps, num_classes=23, weight_total=w.sum()
    )
    grad = torch.cat(
        [
            K.logits_grad(
                x[:, a:b], t, lse, coef, class_offset=a, class_weight=w[a:b], block_rows=2
            )
            for a, b in shards
        ],
        dim=1,
    )
    torch.testing.assert_close(grad, _reference_grad(x, t, w, eps))
    assert bool((stats.has_target == valid).all())


def test_fused_equals_two_pass(rng):
    g = _gen(rng)
    x, t, w, tw, scale = _setup(g)
    stats, grad = K.logits_fused(
        x, t, scale, tw, label_smoothing=0.2, weight_total=w.sum(), class_weight=w, block_rows=4
    )
    torch.testing.assert_close(grad, _reference_grad(x, t, w, 0.2))
    torch.testing.assert_close(K.row_lse(stats), torch.logsumexp(x, dim=1))


def test_linear_shards_match_naive(rng):
    """Linear kernels on vocabulary shards: merged stats, global lse, per-shard gradients
    (d hidden summed over shards, as an all-reduce would)."""
    g = _gen(rng)
    h = torch.randn(10, 4, generator=g, dtype=torch.float64)
    wt = torch.randn(23, 4, generator=g, dtype=torch.float64)
    b = torch.randn(23, generator=g, dtype=torch.float64)
    x = h @ wt.T + b
    _, t, w, tw, scale = _setup(g, n=10)
    shards = [(0, 8), (8, 23)]
    parts = [
        K.linear_row_stats(
            h,
            wt[a:c],
            t,
            bias=b[a:c],
            class_offset=a,
            class_weight=w[a:c],
            with_sum=True,
            chunk_rows=3,
        )
        for a, c in shards
    ]
    stats = K.merge_row_stats(parts)
    lse = K.row_lse(stats)
    coef = K.index_target_coefficients(
        stats, scale, tw, label_smoothing=0.2, num_classes=23, weight_total=w.sum()
    )
    grads = [
        K.linear_grad(
            h,
            wt[a:c],
            t,
            lse,
            coef,
            bias=b[a:c],
            class_offset=a,
            class_weight=w[a:c],
            chunk_rows=4,
            need_bias=True,
        )
        for a, c in shards
    ]
    dx = _reference_grad(x, t, w, 0.2)
    torch.testing.assert_close(sum(gr.hidden for gr in grads), dx @ wt)
    torch.testing.assert_close(torch.cat([gr.weight for gr in grads]), dx.T @ h)
    torch.testing.assert_close(torch.cat([gr.bias for gr in grads]), dx.sum(0))


def test_row_nll_is_accurate_for_confident_rows():
    x = torch.zeros(2, 1000, dtype=torch.float32)
    x[:, 0] = torch.tensor([25.0, 40.0])
    t = torch.zeros(2, dtype=torch.long)
    nll = K.row_nll(K.logits_row_stats(x, t))
    exact = torch.log1p(999 * torch.exp(-x[:, 0].double()))
    torch.testing.assert_close(nll.double(), exact, rtol=1e-6, atol=0)
    assert (nll > 0).all()  # lse − x_y in float32 rounds both to 0


@pytest.mark.parametrize("huge", [False, True])
def test_empty_buffer_is_writable_and_right_type(tuned, huge):
    tuned(huge_pages=huge)
    for dtype in (torch.float32, torch.bfloat16, torch.float16, torch.float64):
        b = K.empty_buffer((1024, 1024 + 7), dtype, torch.device("cpu"))
        assert b.dtype == dtype and b.shape == (1024, 1031) and b.is_contiguous()
        b.fill_(1.5)
        assert float(b.double().mean()) == 1.5


def test_huge_page_buffers_give_the_same_gradient(tuned, rng):
    """The opt-in allocator changes where the gradient lives, not its values."""
    g = torch.Generator().manual_seed(int(rng.integers(2**31)))
    x = torch.randn(64, 20000, generator=g)
    t = torch.randint(0, 20000, (64,), generator=g)
    grads = []
    for huge in (False, True):
        tuned(huge_pages=huge)
        xx = x.clone().requires_grad_()
        F.cross_entropy(xx, t).backward()  # reference path is unaffected
        ref = xx.grad
        xx.grad = None
        from crossentropy.torch import cross_entropy

        cross_entropy(xx, t).backward()
        grads.append(xx.grad)
        torch.testing.assert_close(xx.grad, ref)
    assert torch.equal(grads[0], grads[1])
