"""The demo's experiments on tiny settings: each asserts the property it is meant to show,
recomputed independently of the code under test."""

from __future__ import annotations

import numpy as np
import pytest

# The races load scikit-learn's bundled datasets ([demo] extra): skipped without it.
pytest.importorskip("sklearn")

import crossentropy as ce
from crossentropy.experiments import (
    DemoSettings,
    Race,
    SaturatedNeuron,
    derivation_checks,
    fair_race,
    gradient_anatomy,
    identities,
    neuron_grid,
    saturated_neuron,
)
from crossentropy.experiments._data import load_dataset, stratified_split
from crossentropy.experiments.checks import (
    FINITE_DIFFERENCES,
    FORMULAS,
    TORCH_AUTOGRAD,
    central_difference,
)
from crossentropy.experiments.identities import IDENTITY_NAMES
from crossentropy.experiments.race import (
    initial_parameters,
    loss_and_logit_grad,
    quality_key,
    selection_key,
)


def sigma(z: np.ndarray) -> np.ndarray:
    """Reference sigmoid, written independently of the library."""
    return 1.0 / (1.0 + np.exp(-z))


# -- 1. gradient anatomy ------------------------------------------------------------------


def test_anatomy_gradients_are_the_article_closed_forms() -> None:
    r = gradient_anatomy(z_max=8.0, num=33)
    a = sigma(r.z)
    for t, y in enumerate(r.targets):
        np.testing.assert_allclose(r.mse_grad[t], (a - y) * a * (1 - a), rtol=1e-12, atol=1e-15)
        np.testing.assert_allclose(r.bce_grad[t], a - y, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(r.sigmoid_prime, a * (1 - a), rtol=1e-12)


def test_anatomy_matches_finite_differences_and_shows_the_vanishing_factor() -> None:
    r = gradient_anatomy(z_max=10.0, num=41)
    assert r.fd_max_abs_error["mse"] < 1e-8
    assert r.fd_max_abs_error["bce"] < 1e-8
    mse, bce = r.at(-10.0, 1.0)  # confidently wrong
    assert mse < 1e-4 < 0.99 < bce
    # Where the neuron is right and saturated, both gradients are small: the asymmetry is
    # only on the wrong side.
    mse_right, bce_right = r.at(10.0, 1.0)
    assert mse_right < 1e-8 and bce_right < 1e-4


# -- 2. the saturated neuron ----------------------------------------------------------------


@pytest.fixture(scope="module")
def neuron() -> SaturatedNeuron:
    return saturated_neuron(steps=600, learning_rate=0.5)


def test_neuron_trajectory_is_gradient_descent_with_the_article_formulas(
    neuron: SaturatedNeuron,
) -> None:
    x, y, lr = neuron.x, neuron.y, neuron.learning_rate
    for run in neuron.runs:
        a = sigma(run.w[:-1] * x + run.b[:-1])
        np.testing.assert_allclose(run.output[:-1], a, rtol=1e-12)
        if run.loss == "mse":
            dz = (a - y) * a * (1 - a)  # ∂L/∂z = (a − y) σ'(z)
            loss = (a - y) ** 2 / 2
        else:
            dz = a - y  # ∂L/∂z = a − y
            loss = -(y * np.log(a) + (1 - y) * np.log(1 - a))
        np.testing.assert_allclose(run.w[1:], run.w[:-1] - lr * dz * x, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(run.b[1:], run.b[:-1] - lr * dz, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(run.loss_values[:-1], loss, rtol=1e-9)


def test_neuron_step_counts_are_those_of_the_recorded_trajectory(neuron: SaturatedNeuron) -> None:
    for run in neuron.runs:
        err = np.abs(run.output - neuron.y)
        right = np.flatnonzero(err < 0.5)
        close = np.flatnonzero(err < neuron.close_tolerance)
        assert run.steps_to_correct == (int(right[0]) if right.size else None)
        assert run.steps_to_close == (int(close[0]) if close.size else None)
        if run.steps_to_correct is not None:
            assert np.all(err[: run.steps_to_correct] >= 0.5)


def test_saturated_neuron_learns_faster_with_cross_entropy(neuron: SaturatedNeuron) -> None:
    mse = neuron.run("saturated", "mse")
    bce = neuron.run("saturated", "cross_entropy")
    assert bce.steps_to_correct is not None
    assert mse.steps_to_correct is None or bce.steps_to_correct < mse.steps_to_correct
    # The slowness is the saturation: the mildly wrong start closes most of the gap.
    mild_ratio = neuron.run("mildly wrong", "mse").steps_to_correct / max(
        1, neuron.run("mildly wrong", "cross_entropy").steps_to_correct
    )
    assert mse.steps_to_correct is not None
    assert mse.steps_to_correct / bce.steps_to_correct > 5 * mild_ratio


def test_neuron_rejects_an_unknown_loss() -> None:
    from crossentropy.experiments.neuron import neuron_value_and_grads

    with pytest.raises(ValueError, match="loss must be one of"):
        neuron_value_and_grads(1.0, 1.0, 1.0, 0.0, "hinge")


def test_neuron_grid_runs_are_the_single_neuron_runs(neuron: SaturatedNeuron) -> None:
    # The vectorised grid (all neurons in one array) must give exactly the trajectories of
    # the one-neuron loop: z₀ = 6 at η = 0.5 is the saturated start of the figure.
    g = neuron_grid(z0=(1.5, 6.0), learning_rates=(0.25, 0.5), steps=600)
    assert g.recorded[0] == 0 and g.recorded[-1] == 600
    assert np.all(np.diff(g.recorded) > 0)
    for start, iz in (("mildly wrong", 0), ("saturated", 1)):
        for loss in ("mse", "cross_entropy"):
            run = neuron.run(start, loss)
            np.testing.assert_allclose(g.output[loss][iz, 1], run.output[g.recorded], rtol=1e-12)
            a = run.output[g.recorded]
            np.testing.assert_allclose(g.sigmoid_prime[loss][iz, 1], a * (1 - a), rtol=1e-12)
            assert g.steps_to_correct[loss][iz, 1] == run.steps_to_correct


def test_neuron_grid_shows_the_saturation_everywhere() -> None:
    g = neuron_grid(steps=300)
    mse, bce = g.steps_to_correct["mse"], g.steps_to_correct["cross_entropy"]
    assert np.all(bce >= 0)  # cross-entropy gets every start right within 300 steps
    assert np.all((mse == -1) | (mse >= bce))  # and never later than MSE
    # MSE's delay grows with the saturation: per learning rate, steps rise with z₀
    for j in range(len(g.learning_rates)):
        col = np.where(mse[:, j] == -1, 10**9, mse[:, j])
        assert np.all(np.diff(col) >= 0)
    with pytest.raises(ValueError, match="steps must be at least 1, got 0"):
        neuron_grid(steps=0)


# -- 3. the race ----------------------------------------------------------------------------


def test_stratified_split_partitions_and_keeps_class_balance() -> None:
    y = np.repeat(np.arange(3), [50, 30, 20])
    train, val, test = stratified_split(y, (0.2, 0.2), np.random.default_rng(0))
    everything = np.concatenate([train, val, test])
    assert np.array_equal(np.sort(everything), np.arange(y.size))  # disjoint and complete
    for part in (val, test):
        assert np.array_equal(np.bincount(y[part]), [10, 6, 4])


def test_datasets_are_standardised_on_train_and_reproducible() -> None:
    d1 = load_dataset("breast_cancer", seed=3)
    d2 = load_dataset("breast_cancer", seed=3)
    d3 = load_dataset("breast_cancer", seed=4)
    assert np.array_equal(d1.x_val, d2.x_val)
    assert not np.array_equal(d1.y_val, d3.y_val) or not np.array_equal(d1.x_val, d3.x_val)
    np.testing.assert_allclose(d1.x_train.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(d1.x_train.std(axis=0), 1, rtol=1e-12)
    assert d1.x_train.shape[0] + d1.x_val.shape[0] + d1.x_test.shape[0] == 569
    with pytest.raises(ValueError, match="name must be one of"):
        load_dataset("iris", seed=0)


@pytest.mark.parametrize("n_classes", [2, 4])
@pytest.mark.parametrize("loss", ["mse", "cross_entropy"])
def test_race_logit_gradient_matches_finite_differences(
    n_classes: int, loss: str, rng: np.random.Generator
) -> None:
    n = 7
    z = rng.normal(scale=3.0, size=(n,) if n_classes == 2 else (n, n_classes))
    y = rng.integers(0, n_classes, size=n)
    value, grad = loss_and_logit_grad(z, y, loss, n_classes)
    fd = central_difference(
        lambda v: np.asarray(loss_and_logit_grad(v, y, loss, n_classes)[0]), z, 1e-6
    )
    np.testing.assert_allclose(grad, fd, atol=1e-8)
    if loss == "cross_entropy" and n_classes > 2:
        a = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        np.testing.assert_allclose(grad, (a - np.eye(n_classes)[y]) / n, atol=1e-14)
        np.testing.assert_allclose(value, np.mean(-np.log(a[np.arange(n), y])), rtol=1e-12)


def test_saturated_initialisation_has_the_requested_logit_spread() -> None:
    data = load_dataset("breast_cancer", seed=0)
    w, b = initial_parameters(data, "saturated", seed=0, saturation=8.0)
    assert np.std(data.x_train @ w + b) == pytest.approx(8.0)
    w, _ = initial_parameters(data, "standard", seed=0, saturation=8.0)
    assert np.std(data.x_train @ w) < 0.5
    with pytest.raises(ValueError, match="init must be one of"):
        initial_parameters(data, "xavier", seed=0, saturation=8.0)


@pytest.fixture(scope="module")
def race() -> Race:
    return fair_race(seed=1, steps=15, grid=(0.3, 3.0, 30.0), datasets=("breast_cancer",))


def test_race_reports_what_its_curves_and_test_logits_say(race: Race) -> None:
    assert {(r.init, r.loss) for r in race.runs} == {
        (i, loss) for i in ("standard", "saturated") for loss in ("mse", "cross_entropy")
    }
    for run in race.runs:
        assert run.val_accuracy.shape == (race.steps + 1,)
        hits = np.flatnonzero(run.val_accuracy >= run.target_accuracy)
        assert run.steps_to_target == (int(hits[0]) if hits.size else None)
        # the chosen learning rate is the best trial by the documented key
        best = min(run.trials, key=selection_key)
        assert run.selection == "speed"
        assert run.learning_rate == best.learning_rate
        assert run.steps_to_target == best.steps_to_target
        assert [t.learning_rate for t in run.trials] == list(race.grid)
        # test numbers recomputed from the stored logits
        z, y = run.test_logits, run.test_labels
        assert run.final_accuracy == pytest.approx(np.mean((z > 0) == y))
        # −log σ(z) = log(1 + e^{−z}), −log(1 − σ(z)) = log(1 + e^{z}), computed stably
        nll = np.where(y == 1, np.logaddexp(0, -z), np.logaddexp(0, z))
        assert run.final_log_loss == pytest.approx(np.mean(nll), rel=1e-9)


def test_race_quality_runs_pick_the_best_final_validation_accuracy(race: Race) -> None:
    assert len(race.quality_runs) == len(race.runs)
    for run in race.quality_runs:
        assert run.selection == "quality"
        best = min(run.trials, key=quality_key)
        assert run.learning_rate == best.learning_rate
        assert best.final_val_accuracy == max(t.final_val_accuracy for t in run.trials)
        assert run.val_accuracy[-1] == best.final_val_accuracy
        speed = race.get(run.dataset, run.init, run.loss)
        assert speed.trials == run.trials  # the same trials, another choice
        assert race.get(run.dataset, run.init, run.loss, "quality") is run


def test_race_is_reproducible(race: Race) -> None:
    again = fair_race(seed=1, steps=15, grid=(0.3, 3.0, 30.0), datasets=("breast_cancer",))
    for r1, r2 in zip(race.runs, again.runs, strict=True):
        assert r1.trials == r2.trials
        assert np.array_equal(r1.test_logits, r2.test_logits)


def test_race_calls_the_progress_callback_once_per_trial() -> None:
    seen: list[str] = []
    fair_race(steps=2, grid=(1.0,), datasets=("breast_cancer",), on_trial=seen.append)
    assert len(seen) == 2 * 2  # inits × losses × grid
    assert DemoSettings(quick=True).race_trials == 2 * 2 * 2 * 3


# -- 4. derivation checks ------------------------------------------------------------------


def test_central_difference_of_a_known_function() -> None:
    x = np.array([[1.0, -2.0], [0.5, 3.0]])
    g = central_difference(lambda v: np.sum(v**3), x, 1e-5)
    np.testing.assert_allclose(g, 3 * x**2, rtol=1e-8)
    jac = central_difference(lambda v: v**2, x[0], 1e-5)  # vector → vector: a Jacobian
    np.testing.assert_allclose(jac, np.diag(2 * x[0]), atol=1e-8)


def test_derivation_checks_agree_with_finite_differences() -> None:
    r = derivation_checks(seed=2, use_torch=False)
    assert r.torch_version is None
    assert {c.name for c in r.checks} == set(FORMULAS)
    assert all(c.reference == FINITE_DIFFERENCES for c in r.checks)
    for c in r.checks:
        assert c.max_abs_value > 1e-3  # a non-trivial gradient ...
        assert c.relative_error < 1e-7  # ... that the formula gets right


def test_derivation_checks_agree_with_torch_autograd() -> None:
    pytest.importorskip("torch")
    r = derivation_checks(seed=2)
    torch_checks = [c for c in r.checks if c.reference == TORCH_AUTOGRAD]
    assert {c.name for c in torch_checks} == set(FORMULAS)
    assert all(c.max_abs_error < 1e-12 for c in torch_checks)


def test_a_wrong_formula_would_be_caught() -> None:
    # The MSE gradient *without* σ'(z) (the mistake the article warns about) is far from the
    # finite difference: the check has teeth.
    from crossentropy.experiments.checks import _problem, finite_difference_gradients

    p = _problem(0, 16, 5, 4)
    a = sigma(p.x @ p.w + p.b)
    fd = finite_difference_gradients(p, 1e-6)["mse_dw"]
    assert np.max(np.abs(p.x.T @ (a - p.y) - fd)) > 1e-2
    # and the softmax result without Σ_q y_q is wrong when the targets do not sum to 1
    s = np.exp(p.logits) / np.exp(p.logits).sum(axis=1, keepdims=True)
    fd = finite_difference_gradients(p, 1e-6)["softmax_ce_dz_general"]
    assert np.max(np.abs((s - p.partial) - fd)) > 1e-2


def test_every_derivation_step_is_checked_in_the_article_order() -> None:
    r = derivation_checks(seed=0, use_torch=False)
    assert [c.name for c in r.checks] == list(FORMULAS)
    c = r.checks[0]
    assert c.relative_error == c.max_abs_error / c.max_abs_value


# -- 5. identities ---------------------------------------------------------------------------


def test_identities_hold_against_labels_and_their_sides_are_independent(
    rng: np.random.Generator,
) -> None:
    z = rng.normal(scale=3.0, size=50)
    y = rng.integers(0, 2, size=50)
    zc = rng.normal(scale=3.0, size=(20, 5))
    yc = rng.integers(0, 5, size=20)
    ids = identities(z, y, zc, yc, seed=0, smoothing=0.1)
    assert [i.name for i in ids] == list(IDENTITY_NAMES)
    for i in ids:
        assert i.abs_error < 1e-12
        assert i.abs_error == abs(i.lhs - i.rhs)
    a = sigma(z)
    assert ids[0].lhs == pytest.approx(-np.mean(y * np.log(a) + (1 - y) * np.log(1 - a)))
    q = np.exp(zc) / np.exp(zc).sum(axis=1, keepdims=True)
    assert ids[1].lhs == pytest.approx(-np.mean(np.log(q[np.arange(20), yc])), rel=1e-12)
    p = 0.9 * np.eye(5)[yc] + 0.02
    h_pq = -np.sum(p * np.log(q), axis=1)
    per = ids[2].per_sample
    np.testing.assert_allclose(per["cross_entropy"], h_pq, rtol=1e-12)
    np.testing.assert_allclose(per["entropy"] + per["kl"], h_pq, rtol=1e-12)
    # H(p) is the targets' own: the same for every sample, whatever the model
    np.testing.assert_allclose(per["entropy"], -np.sum(p[0] * np.log(p[0])), rtol=1e-12)
    assert ids[2].lhs > float(np.mean(per["entropy"]))  # KL > 0 for p ≠ q


def test_identities_with_one_hot_targets_are_pure_kl() -> None:
    zc = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]])
    yc = np.array([0, 2])
    kl = identities(np.zeros(2), np.array([0, 1]), zc, yc, smoothing=0.0)[2]
    np.testing.assert_array_equal(kl.per_sample["entropy"], 0.0)
    np.testing.assert_allclose(kl.per_sample["kl"], kl.per_sample["cross_entropy"], rtol=1e-15)


def test_identities_survive_saturated_predictions() -> None:
    # Regression test for the spurious failures of --seed 5, 6 and 22: logits so confident
    # that sigmoid/softmax round to exactly 0 or 1. A naive log(a) gives -inf (and 0·-inf =
    # NaN); a log clamped at -100 disagrees with an exact KL. Both sides must stay exact.
    z = np.array([40.0, -40.0, 800.0, -800.0, 36.5, 0.0])
    y = np.array([1, 0, 0, 1, 1, 0])
    zc = np.array([[900.0, 0.0, -5.0], [0.0, 0.0, 120.0], [1.0, 2.0, 3.0]])
    yc = np.array([1, 2, 0])
    with np.errstate(over="raise", divide="raise", invalid="raise"):  # no inf, no NaN
        ids = identities(z, y, zc, yc, seed=3)
    for i in ids:
        assert np.isfinite(i.lhs) and np.isfinite(i.rhs), i
        assert i.abs_error <= 1e-12 * max(1.0, abs(i.lhs)), i
    # −ln σ(z) and −ln(1 − σ(z)) written out by hand for these six samples
    tiny = 2 * np.log1p(np.exp(-40.0)) + np.log1p(np.exp(-36.5))
    assert ids[0].lhs == pytest.approx((800 + 800 + tiny + np.log(2)) / 6, rel=1e-14)
    lse_last = 3 + np.log(np.exp(-2.0) + np.exp(-1.0) + 1)
    assert ids[1].lhs == pytest.approx((900 + np.log1p(2 * np.exp(-120.0)) + lse_last - 1) / 3)


def test_identity_four_uses_shift_invariant_pairs() -> None:
    # The pair [c, c + z] with any c gives the same softmax CE as [0, z].
    z = np.array([1.5, -2.0, 0.25])
    y = np.array([1, 0, 0])
    ids = identities(z, y, np.zeros((1, 2)), np.array([0]), seed=7)
    ref = float(ce.cross_entropy(np.stack([np.zeros(3), z], axis=1), y))
    assert ids[3].lhs == pytest.approx(ref, rel=1e-12)


def test_identity_smoothing_is_validated() -> None:
    with pytest.raises(ValueError, match=r"smoothing must be in \[0, 1\], got 1.5"):
        identities(np.zeros(2), np.array([0, 1]), np.zeros((2, 3)), np.array([0, 1]), smoothing=1.5)
