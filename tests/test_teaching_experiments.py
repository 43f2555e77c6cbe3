"""The teaching experiments of the report (issue 18): Nielsen's neuron, where cross-entropy
comes from, the canonical-link pairs, H(p, q) = H(p) + KL(p‖q), and the hidden layer that
cross-entropy does not fix. Each test asserts a property of the numbers the library computes."""

from __future__ import annotations

import math

import numpy as np
import pytest

import crossentropy as ce
from crossentropy.experiments.hidden import (
    Net,
    forward_backward,
    gradient_fd_error,
    hidden_layer,
    init_net,
    xor_data,
)
from crossentropy.experiments.teaching import (
    NIELSEN_CE_RATE,
    NIELSEN_RATE,
    _cumulative_trapezoid,
    bits,
    canonical_links,
    code_length,
    cost_origin,
    nielsen_neuron,
)

# -- Nielsen's neuron -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def nielsen() -> object:
    return nielsen_neuron()


def test_nielsens_badly_wrong_start_sits_on_a_plateau_under_the_quadratic_cost(
    nielsen: object,
) -> None:
    from crossentropy.experiments.teaching import NielsenNeuron

    assert isinstance(nielsen, NielsenNeuron)
    mse = nielsen.run("w2_b2", "mse")
    assert mse.w0 == mse.b0 == 2.0 and mse.learning_rate == 0.15
    assert mse.output[0] == pytest.approx(0.98, abs=0.005)  # badly wrong: target 0
    # the first 100 epochs: the cost keeps more than 90 % of its starting value
    assert np.all(mse.cost[:101] > 0.9 * mse.cost[0])
    assert mse.epochs_to_drop is not None and mse.epochs_to_drop > 100
    assert mse.steepest > 100  # it learns fastest only once it has slid off the plateau
    # cross-entropy, same start and same η: a tenth of the cost gone within a few epochs
    xent = nielsen.run("w2_b2", "cross_entropy")
    assert xent.cost[10] < 0.5 * xent.cost[0]
    assert xent.epochs_to_drop is not None and xent.epochs_to_drop <= 3
    # and at Nielsen's own cross-entropy rate the first epoch is still the fastest one
    slow = nielsen.run("w2_b2", "cross_entropy", NIELSEN_CE_RATE)
    assert xent.steepest == slow.steepest == 0
    assert np.all(np.diff(slow.cost) < 0)


def test_the_mildly_wrong_start_learns_at_once_under_both_costs(nielsen: object) -> None:
    from crossentropy.experiments.teaching import NielsenNeuron

    assert isinstance(nielsen, NielsenNeuron)
    mild, bad = nielsen.run("w0.6_b0.9", "mse"), nielsen.run("w2_b2", "mse")
    assert mild.output[0] == pytest.approx(0.82, abs=0.005)
    assert mild.epochs_to_drop is not None and bad.epochs_to_drop is not None
    assert 5 * mild.epochs_to_drop < bad.epochs_to_drop  # badly wrong learns slower: MSE


def test_nielsens_runs_match_a_plain_python_loop(nielsen: object) -> None:
    """Every epoch of every run against gradient descent written out with ``math`` alone: the
    setup (x = 1, y = 0, both starts, 300 epochs) is Nielsen's, every number the library's."""
    from crossentropy.experiments.teaching import NielsenNeuron

    assert isinstance(nielsen, NielsenNeuron)
    assert nielsen.epochs == 300 and len(nielsen.runs) == 6
    for run in nielsen.runs:
        w, b = run.w0, run.b0
        for epoch in range(nielsen.epochs + 1):
            a = 1 / (1 + math.exp(-(w + b)))
            cost = a * a / 2 if run.loss == "mse" else -math.log1p(-a)
            assert run.output[epoch] == pytest.approx(a, rel=1e-12, abs=1e-15)
            assert run.cost[epoch] == pytest.approx(cost, rel=1e-11)
            assert run.weight[epoch] == pytest.approx(w, abs=1e-12)
            assert run.bias[epoch] == pytest.approx(b, abs=1e-12)
            g = a * a * (1 - a) if run.loss == "mse" else a  # ∂C/∂z with y = 0
            w, b = w - run.learning_rate * g, b - run.learning_rate * g


def test_nielsens_neuron_steps_by_the_articles_gradients(nielsen: object) -> None:
    """One epoch by hand: z = w + b, ∂C/∂w = ∂C/∂b = (a − y)σ'(z) or a − y."""
    from crossentropy.experiments.teaching import NielsenNeuron

    assert isinstance(nielsen, NielsenNeuron)
    for loss in ("mse", "cross_entropy"):
        run = nielsen.run("w2_b2", loss)
        a = 1 / (1 + math.exp(-4.0))
        g = a * a * (1 - a) if loss == "mse" else a
        z1 = 4.0 - 2 * NIELSEN_RATE * g
        a1 = 1 / (1 + math.exp(-z1))
        assert run.output[1] == pytest.approx(a1, rel=1e-12)
        cost = a1**2 / 2 if loss == "mse" else -math.log(1 - a1)
        assert run.cost[1] == pytest.approx(cost, rel=1e-12)


# -- where cross-entropy comes from ---------------------------------------------------------


def test_integrating_a_minus_y_gives_the_librarys_bce_up_to_a_constant() -> None:
    o = cost_origin()
    assert o.grad_error < 1e-15  # value_and_grad's ∂L/∂z is a − y, to rounding
    assert o.fd_error < 1e-6
    assert o.constant_spread["cross_entropy"] < 1e-5
    assert o.constant_spread["mse"] < 1e-5
    # not a vacuous check: the constant is the loss's value at b = 0, for every target
    origin = int(np.argmin(np.abs(o.b)))
    for k in range(len(o.targets)):
        diff = o.integral[k] - o.bce[k]
        assert diff == pytest.approx(np.full_like(diff, -o.bce[k][origin]), abs=1e-5)
    # a finer grid gets closer (trapezoids: error ~ step²)
    fine = cost_origin(num=12801)
    assert fine.constant_spread["cross_entropy"] < o.constant_spread["cross_entropy"] / 8


def test_integrating_the_quadratic_costs_gradient_does_not_give_bce() -> None:
    """The check can fail: (a − y)σ'(z) integrates to (a − y)²/2, which is not BCE."""
    b = np.linspace(-8, 8, 3201)
    for y in (0.0, 1.0):
        a = ce.sigmoid(b)
        t = np.full_like(b, y)
        integral = _cumulative_trapezoid((a - t) * a * (1 - a), b, 1600)
        bce = ce.binary_cross_entropy_with_logits(b, t, reduction="none")
        assert np.ptp(integral - bce) > 5


# -- canonical links --------------------------------------------------------------------------


def test_the_canonical_pairs_give_a_minus_y_and_the_mixed_pair_does_not() -> None:
    links = canonical_links(seed=3)
    for name in ("sigmoid_bce", "softmax_ce", "identity_mse"):
        c = links.get(name)
        assert c.matched and c.max_gap < 1e-12, name
        assert c.fd_error < 1e-6, name
    mixed = links.get("sigmoid_mse")
    assert not mixed.matched and mixed.max_gap > 0.5
    assert mixed.fd_error < 1e-6  # its gradient is right; it is just not a − y
    # where the sigmoid saturates the mixed gradient vanishes while a − y does not
    wrong = np.abs(mixed.residual) > 0.9
    assert wrong.any() and np.all(np.abs(mixed.grad[wrong]) < 0.1)
    # softmax: each row's gradient sums to 0 (the targets sum to 1)
    np.testing.assert_allclose(links.get("softmax_ce").grad.sum(axis=1), 0, atol=1e-15)
    assert links.hessian_error < 1e-6
    with pytest.raises(KeyError):
        links.get("tanh_bce")


# -- H(p, q) = H(p) + KL(p ‖ q) ----------------------------------------------------------------


def test_the_code_length_example() -> None:
    c = code_length()
    assert c.gap < 1e-15
    assert bits(c.entropy) == pytest.approx(1.75)  # Olah's example: 1.75 bits
    assert c.kl > 0 and c.cross_entropy > c.entropy
    same = code_length(p=(0.1, 0.2, 0.3, 0.4), q=(0.1, 0.2, 0.3, 0.4))
    assert same.kl == pytest.approx(0, abs=1e-15)
    assert same.cross_entropy == pytest.approx(same.entropy, rel=1e-15)


# -- the hidden layer -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hidden() -> object:
    return hidden_layer(seed=0)


def test_the_hidden_layers_gradient_is_backpropagation(rng: np.random.Generator) -> None:
    x, y = xor_data(5, n=30)
    for offset in (0.0, 4.0):
        net = init_net(rng, 5, offset)
        for loss in ("cross_entropy", "mse"):
            assert gradient_fd_error(net, x, y, loss) < 1e-6
    with pytest.raises(ValueError, match="forward_backward: loss must be one of"):
        forward_backward(init_net(rng, 2, 0.0), x, y, "hinge")


def test_a_saturated_hidden_layer_starves_under_both_losses(hidden: object) -> None:
    from crossentropy.experiments.hidden import HiddenLayer

    assert isinstance(hidden, HiddenLayer)
    assert hidden.offsets[0] == 0 and hidden.offsets[-1] >= 8
    assert hidden.saturated[-1] > 0.9 and hidden.saturated[0] < 0.05  # saturation measured
    for loss in ("cross_entropy", "mse"):
        g = hidden.hidden_grad[loss]
        assert g[0] / g[-1] > 10, loss  # the hidden layer's gradient vanishes
    # ... while cross-entropy keeps the output layer's gradient: it cancels σ'(z₂) only
    out = hidden.output_grad["cross_entropy"]
    assert out[-1] > 0.5 * out[0]
    # the hidden gradient follows the units' own slope σ'(z₁), whatever the loss
    sp = hidden.mean_sigma_prime
    assert sp[0] / sp[-1] > 10
    assert hidden.fd_error < 1e-6


def test_a_saturated_hidden_layer_slows_training_under_both_losses(hidden: object) -> None:
    from crossentropy.experiments.hidden import HiddenLayer

    assert isinstance(hidden, HiddenLayer)
    for loss in ("cross_entropy", "mse"):
        std, sat = hidden.run("standard", loss), hidden.run("saturated", loss)
        assert std.steps_to_target is not None
        assert sat.steps_to_target is None or sat.steps_to_target > 1.5 * std.steps_to_target
        # at the start the saturated network's hidden layer gets a fraction of the gradient
        assert sat.hidden_grad[0] < 0.5 * std.hidden_grad[0]
        assert sat.saturated[0] > 0.5 > std.saturated[0]
    with pytest.raises(KeyError):
        hidden.run("standard", "hinge")


@pytest.mark.parametrize("seed", [1, 2])
def test_the_hidden_layer_finding_holds_for_other_seeds(seed: int) -> None:
    r = hidden_layer(seed=seed, inits=4)
    for loss in ("cross_entropy", "mse"):
        assert r.hidden_grad[loss][0] / r.hidden_grad[loss][-1] > 10
        std, sat = r.run("standard", loss), r.run("saturated", loss)
        assert std.steps_to_target is not None
        assert sat.steps_to_target is None or sat.steps_to_target > std.steps_to_target


def test_the_hidden_layer_is_deterministic() -> None:
    a, b = hidden_layer(seed=4, steps=20, inits=2), hidden_layer(seed=4, steps=20, inits=2)
    for loss in ("cross_entropy", "mse"):
        np.testing.assert_array_equal(a.hidden_grad[loss], b.hidden_grad[loss])
    np.testing.assert_array_equal(a.runs[0].accuracy, b.runs[0].accuracy)
    net = init_net(np.random.default_rng(0), 3, 0.0)
    assert isinstance(net, Net)
