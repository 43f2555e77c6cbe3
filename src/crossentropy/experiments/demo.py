"""Run the five experiments of ``crossentropy demo`` in order, with one progress callback."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import crossentropy as ce

from .anatomy import GradientAnatomy, gradient_anatomy
from .checks import DerivationChecks, derivation_checks
from .identities import Identity, identities
from .neuron import SaturatedNeuron, saturated_neuron
from .race import DEFAULT_GRID, LOSSES, Race, fair_race

DATASETS = ("breast_cancer", "digits")
INITS = ("standard", "saturated")


@dataclass(frozen=True)
class DemoSettings:
    """What to run. ``quick`` shrinks every experiment so the whole demo takes seconds."""

    seed: int = 0
    quick: bool = False

    @property
    def use_torch(self) -> bool:
        """Compare with torch autograd too (if importable); skipped by ``quick`` (importing
        torch alone takes seconds)."""
        return not self.quick

    @property
    def anatomy_points(self) -> int:
        return 201 if self.quick else 401

    @property
    def neuron_steps(self) -> int:
        return 600 if self.quick else 1000

    @property
    def race_steps(self) -> int:
        return 40 if self.quick else 200

    @property
    def race_grid(self) -> tuple[float, ...]:
        return (0.3, 3.0, 30.0) if self.quick else DEFAULT_GRID

    @property
    def race_trials(self) -> int:
        """Training runs in the race: data sets × initialisations × losses × grid."""
        return len(DATASETS) * len(INITS) * len(LOSSES) * len(self.race_grid)

    @property
    def work_units(self) -> int:
        """Progress units: one per race trial plus one per other experiment."""
        return self.race_trials + 4


@dataclass(frozen=True)
class DemoResults:
    """Everything the demo measured; the report renders it, nothing here draws."""

    settings: DemoSettings
    anatomy: GradientAnatomy
    neuron: SaturatedNeuron
    race: Race
    checks: DerivationChecks
    identities: tuple[Identity, ...]
    seconds: dict[str, float] = field(default_factory=dict)


def run_demo(
    settings: DemoSettings | None = None, on_progress: Callable[[str], None] | None = None
) -> DemoResults:
    """Run all five experiments; ``on_progress(description)`` is called after each unit of
    work (``settings.work_units`` calls in all).

    Examples
    --------
    >>> DemoSettings(quick=True).work_units  # 2 data sets × 2 inits × 2 losses × 3 rates + 4
    28
    """
    s = settings or DemoSettings()
    tick = on_progress or (lambda _description: None)
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[name] = now - start
        start = now
        tick(name)

    anatomy = gradient_anatomy(num=s.anatomy_points)
    lap("gradient anatomy")
    neuron = saturated_neuron(steps=s.neuron_steps)
    lap("saturated neuron")
    race = fair_race(
        seed=s.seed,
        steps=s.race_steps,
        grid=s.race_grid,
        datasets=DATASETS,
        inits=INITS,
        on_trial=tick,
    )
    seconds["fair race"] = time.perf_counter() - start
    start = time.perf_counter()
    checks = derivation_checks(seed=s.seed, use_torch=s.use_torch)
    lap("derivation checks")
    bc = race.get("breast_cancer", "standard", "cross_entropy")
    digits_mse = race.get("digits", "standard", "mse")
    digits_ce = race.get("digits", "standard", "cross_entropy")
    ids = identities(
        bc.test_logits,
        bc.test_labels,
        ce.softmax(digits_mse.test_logits, axis=1),
        ce.softmax(digits_ce.test_logits, axis=1),
        seed=s.seed,
        binary_data="breast-cancer test split, logistic regression trained with cross-entropy",
        distribution_data=(
            "digits test split: p = softmax regression trained with MSE, "
            "q = trained with cross-entropy"
        ),
    )
    lap("identities")
    return DemoResults(
        settings=s,
        anatomy=anatomy,
        neuron=neuron,
        race=race,
        checks=checks,
        identities=ids,
        seconds=seconds,
    )
