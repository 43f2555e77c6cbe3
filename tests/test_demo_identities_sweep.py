"""The identities of ``crossentropy demo --quick`` for every seed from 0 to 30.

They once failed for seeds 5, 6 and 22 (a naive ``log`` of a sigmoid that rounded to 0 or 1,
and a −100-clamped cross-entropy compared with an exact KL). The sweep runs exactly what the
demo runs for them — the quick race's cross-entropy models, standard initialisation (the only
runs the identities read; the saturated ones are left out to keep the sweep short) — and holds
each identity to the report's tolerance.
"""

from __future__ import annotations

import numpy as np
import pytest

# The demo's report draws with matplotlib ([demo] extra): skipped without it.
pytest.importorskip("matplotlib")

from crossentropy.experiments import DemoSettings, fair_race, identities_of
from crossentropy.experiments.demo import DATASETS, one_blas_thread
from crossentropy.report.sections import IDENTITY_TOLERANCE

SEEDS = range(31)


@pytest.fixture(scope="module")
def worst_per_seed() -> dict[int, float]:
    s = DemoSettings(quick=True)
    worst = {}
    with one_blas_thread():
        for seed in SEEDS:
            race = fair_race(
                seed=seed,
                steps=s.race_steps,
                grid=s.race_grid,
                datasets=DATASETS,
                inits=("standard",),
            )
            ids = identities_of(race, seed)
            assert len(ids) == 4
            for i in ids:
                assert np.isfinite(i.lhs) and np.isfinite(i.rhs), (seed, i)
            worst[seed] = max(i.abs_error for i in ids)
    return worst


def test_identities_hold_for_seeds_0_to_30(worst_per_seed: dict[int, float]) -> None:
    failing = {seed: err for seed, err in worst_per_seed.items() if not err < IDENTITY_TOLERANCE}
    assert failing == {}
    assert max(worst_per_seed.values()) < 1e-12  # in fact: rounding only


def test_the_sweep_uses_the_demos_models(worst_per_seed: dict[int, float]) -> None:
    # The standard-init runs do not depend on whether the saturated ones ran too.
    s = DemoSettings(quick=True)
    kw = {"seed": 5, "steps": s.race_steps, "grid": s.race_grid, "datasets": DATASETS}
    with one_blas_thread():
        full = fair_race(**kw)
        short = fair_race(**kw, inits=("standard",))
    for dataset in DATASETS:
        a = full.get(dataset, "standard", "cross_entropy")
        b = short.get(dataset, "standard", "cross_entropy")
        assert np.array_equal(a.test_logits, b.test_logits)
    assert [i.abs_error for i in identities_of(full, 5)] == [
        i.abs_error for i in identities_of(short, 5)
    ]
