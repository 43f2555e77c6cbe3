"""Run the experiments of ``crossentropy demo`` in order, with one progress callback."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from .anatomy import GradientAnatomy, gradient_anatomy
from .checks import DerivationChecks, derivation_checks
from .hidden import HiddenLayer, hidden_layer
from .identities import Identity, identities
from .neuron import NeuronGrid, SaturatedNeuron, neuron_grid, saturated_neuron
from .race import DEFAULT_GRID, LOSSES, Race, fair_race
from .teaching import (
    CanonicalLinks,
    CodeLength,
    CostOrigin,
    NielsenNeuron,
    canonical_links,
    code_length,
    cost_origin,
    nielsen_neuron,
)

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
    def grid_steps(self) -> int:
        """Steps of each run behind the sliders (every z₀ × learning rate of the grid)."""
        return 500

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
    def hidden_steps(self) -> int:
        """Training steps of the one-hidden-layer network (part 9)."""
        return 800

    @property
    def work_units(self) -> int:
        """Progress units: one per race trial plus one per other experiment."""
        return self.race_trials + 10


@dataclass(frozen=True)
class DemoResults:
    """Everything the demo measured; the report renders it, nothing here draws."""

    settings: DemoSettings
    anatomy: GradientAnatomy
    neuron: SaturatedNeuron
    grid: NeuronGrid
    race: Race
    checks: DerivationChecks
    identities: tuple[Identity, ...]
    nielsen: NielsenNeuron
    origin: CostOrigin
    links: CanonicalLinks
    code: CodeLength
    hidden: HiddenLayer
    seconds: dict[str, float] = field(default_factory=dict)


@contextlib.contextmanager
def one_blas_thread() -> Iterator[None]:
    """Run NumPy's matrix products on one thread.

    The demo's matrices are small (at most 1078 × 64): several BLAS threads spend more time
    waking each other than multiplying — on two busy cores the race ran 10× slower with them.
    ``threadpoolctl`` comes with scikit-learn (the ``[demo]`` extra); without it, nothing
    changes.
    """
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def identities_of(race: Race, seed: int) -> tuple[Identity, ...]:
    """The identities on the test predictions of the race's cross-entropy models (standard
    initialisation), against the test labels."""
    bc = race.get("breast_cancer", "standard", "cross_entropy")
    digits = race.get("digits", "standard", "cross_entropy")
    return identities(
        bc.test_logits,
        bc.test_labels,
        digits.test_logits,
        digits.test_labels,
        seed=seed,
        binary_data="breast_cancer",
        class_data="digits",
    )


def run_demo(
    settings: DemoSettings | None = None, on_progress: Callable[[str], None] | None = None
) -> DemoResults:
    """Run every experiment; ``on_progress(description)`` is called after each unit of
    work (``settings.work_units`` calls in all).

    Examples
    --------
    >>> DemoSettings(quick=True).work_units  # 2 data sets × 2 inits × 2 losses × 3 rates + 10
    34
    """
    with one_blas_thread():
        return _run(settings or DemoSettings(), on_progress or (lambda _description: None))


def _run(s: DemoSettings, tick: Callable[[str], None]) -> DemoResults:
    seconds: dict[str, float] = {}
    start = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal start
        now = time.perf_counter()
        seconds[name] = now - start
        start = now
        tick(name)

    nielsen = nielsen_neuron()
    lap("Nielsen's neuron")
    anatomy = gradient_anatomy(num=s.anatomy_points)
    lap("gradient anatomy")
    neuron = saturated_neuron(steps=s.neuron_steps)
    lap("saturated neuron")
    grid = neuron_grid(steps=s.grid_steps)
    lap("neuron grid")
    origin = cost_origin()
    lap("where cross-entropy comes from")
    links = canonical_links(seed=s.seed)
    lap("canonical links")
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
    ids = identities_of(race, s.seed)
    lap("identities")
    code = code_length()
    lap("code length")
    hidden = hidden_layer(seed=s.seed, steps=s.hidden_steps)
    lap("hidden layer")
    return DemoResults(
        settings=s,
        anatomy=anatomy,
        neuron=neuron,
        grid=grid,
        race=race,
        checks=checks,
        identities=ids,
        nielsen=nielsen,
        origin=origin,
        links=links,
        code=code,
        hidden=hidden,
        seconds=seconds,
    )
