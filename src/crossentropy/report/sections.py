"""What each part of the report says: the article's claim, an explanation, figures, tables and
the verdict measured in this run, in the report's language. Shared by the HTML page, the
terminal summary and ``metrics.json``.

Statuses (:data:`CONFIRMED` …) are language-neutral keys; :class:`~.i18n.Texts` words them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..experiments import DemoResults, Race
from .i18n import Texts

CONFIRMED = "confirmed"
MIXED = "mixed"
NOT_CONFIRMED = "not confirmed"
PASSED = "passed"
FAILED = "failed"

FD_TOLERANCE = 1e-6  # finite differences in float64 with h = 1e-6: relative errors ~1e-9
TORCH_TOLERANCE = 1e-10  # float64 autograd: rounding only
IDENTITY_TOLERANCE = 1e-9
SMOOTHING = 0.1  # identity 3's label smoothing (crossentropy.experiments.identities)


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class FigureRef:
    """A figure file of the section and its text alternative."""

    file: str
    alt: str


@dataclass(frozen=True)
class Section:
    """One part of the report (all text already in the report's language)."""

    key: str
    title: str
    short: str
    claim: str
    explain: str
    figures: tuple[FigureRef, ...]
    tables: tuple[Table, ...]
    verdict: str
    status: str
    details: tuple[str, ...] = ()
    details_title: str = ""


def sci(x: float) -> str:
    """``2.2e-10``; exact zero as ``0``."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.1e}"


def steps(n: int | None, t: Texts | None = None) -> str:
    return (t("never") if t is not None else "never") if n is None else str(n)


def _lt(a: int | None, b: int | None) -> bool:
    """``a`` strictly fewer steps than ``b`` (``None`` = never)."""
    return a is not None and (b is None or a < b)


def _join(t: Texts, parts: list[str]) -> str:
    return ("；" if t.lang == "zh" else "; ").join(parts)


def _list(t: Texts, parts: list[str]) -> str:
    return ("、" if t.lang == "zh" else ", ").join(parts)


def anatomy_section(r: DemoResults, t: Texts) -> Section:
    a = r.anatomy
    zmin = float(a.z[0])
    mse, bce = a.at(zmin, 1.0)
    grid = [v for v in (-10.0, -5.0, -2.0, 0.0, 2.0, 5.0, 10.0) if a.z[0] <= v <= a.z[-1]]
    rows = []
    for z in grid:
        m0, b0 = a.at(z, 0.0)
        m1, b1 = a.at(z, 1.0)
        sp = a.sigmoid_prime[int(abs(a.z - z).argmin())]
        rows.append((f"{z:g}", sci(float(sp)), sci(m0), sci(b0), sci(m1), sci(b1)))
    fd = a.fd_max_abs_error
    ok = bce / mse > 100 and max(fd.values()) < FD_TOLERANCE
    sp_min = float(a.sigmoid_prime[0])
    ce_name, mse_name = t("loss.cross_entropy"), t("loss.mse")
    return Section(
        key="gradient_anatomy",
        title=t("s1.title"),
        short=t("s1.short"),
        claim=t("s1.claim"),
        explain=t("s1.explain", sp=sci(sp_min), z=f"{zmin:g}"),
        figures=(
            FigureRef("gradient_anatomy_linear.svg", t("s1.alt1")),
            FigureRef("gradient_anatomy_log.svg", t("s1.alt2")),
        ),
        tables=(
            Table(
                (
                    "z",
                    "σ'(z)",
                    f"|∂L/∂z| {mse_name}, y=0",
                    f"|∂L/∂z| {ce_name}, y=0",
                    f"|∂L/∂z| {mse_name}, y=1",
                    f"|∂L/∂z| {ce_name}, y=1",
                ),
                tuple(rows),
                t("s1.table_caption"),
            ),
        ),
        verdict=t(
            "s1.verdict",
            z=f"{zmin:g}",
            mse=sci(mse),
            bce=f"{bce:.3f}",
            ratio=f"{bce / mse:,.0f}",
            fd_mse=sci(fd["mse"]),
            fd_bce=sci(fd["bce"]),
        ),
        status=CONFIRMED if ok else NOT_CONFIRMED,
    )


def neuron_section(r: DemoResults, t: Texts) -> Section:
    n = r.neuron
    rows = []
    for start, (w0, b0) in n.starts.items():
        for loss in ("cross_entropy", "mse"):
            run = n.run(start, loss)
            rows.append(
                (
                    t("start." + start),
                    f"w = {w0:g}, b = {b0:g}, z₀ = {w0 * n.x + b0:g}",
                    t("loss." + loss),
                    steps(run.steps_to_correct, t),
                    steps(run.steps_to_close, t),
                    f"{run.output[-1]:.4f}",
                )
            )
    sat = [s for s in n.starts if s == "saturated"] or list(n.starts)[-1:]
    parts = []
    ok = True
    for start in list(n.starts)[::-1]:
        m, c = n.run(start, "mse").steps_to_correct, n.run(start, "cross_entropy").steps_to_correct
        ratio = t("s2.more", ratio=f"{m / c:.0f}") if m is not None and c else ""
        parts.append(
            t("s2.verdict_part", start=t("start." + start), ce=steps(c, t), mse=steps(m, t)) + ratio
        )
        if start in sat:
            ok = _lt(c, m)
    w0, b0 = n.starts[sat[0]]
    z0 = w0 * n.x + b0
    a0 = float(n.run(sat[0], "mse").output[0])
    return Section(
        key="saturated_neuron",
        title=t("s2.title"),
        short=t("s2.short"),
        claim=t("s2.claim"),
        explain=t(
            "s2.explain",
            x=f"{n.x:g}",
            y=f"{n.y:g}",
            z0=f"{z0:g}",
            a0=f"{a0:.4f}",
            lr=f"{n.learning_rate:g}",
            mse_step=f"{2 * n.learning_rate * abs(a0 - n.y) * a0 * (1 - a0):.4f}",
            ce_step=f"{2 * n.learning_rate * abs(a0 - n.y):.2f}",
        ),
        figures=(
            FigureRef("saturated_neuron_output.svg", t("s2.alt1")),
            FigureRef("saturated_neuron_gradient.svg", t("s2.alt2")),
        ),
        tables=(
            Table(
                (
                    t("s2.h.start"),
                    t("s2.h.params"),
                    t("s2.h.loss"),
                    t("s2.h.right"),
                    t("s2.h.close", tol=f"{n.close_tolerance:g}"),
                    t("s2.h.output", n=n.steps),
                ),
                tuple(rows),
                t("s2.table_caption", x=f"{n.x:g}", y=f"{n.y:g}", lr=f"{n.learning_rate:g}"),
            ),
        ),
        verdict=t("s2.verdict", lr=f"{n.learning_rate:g}", parts=_join(t, parts)),
        status=CONFIRMED if ok else NOT_CONFIRMED,
    )


def _setting(t: Texts, dataset: str, init: str) -> str:
    return f"{t('data.' + dataset)}/{t('init.' + init)}"


def race_meaning(race: Race, t: Texts) -> tuple[str, ...]:
    """Plain-words paragraphs on what the race shows, every number from ``race``."""
    settings = list(dict.fromkeys((run.dataset, run.init) for run in race.runs))
    vs = " : "
    margins, rates = [], []
    largest = larger = 0
    pairs = {"cross_entropy": 0, "mse": 0, "tie": 0}
    reached = {"cross_entropy": 0, "mse": 0}
    gap, gap_samples = 0.0, 0
    q_mse = q_ce = ll_ce = 0
    for d, i in settings:
        m, c = race.get(d, i, "mse"), race.get(d, i, "cross_entropy")
        where = _setting(t, d, i)
        margins.append(f"{where} {steps(c.steps_to_target, t)}{vs}{steps(m.steps_to_target, t)}")
        rates.append(f"{where} η = {c.learning_rate:g}{vs}{m.learning_rate:g}")
        larger += m.learning_rate > c.learning_rate
        ms = race.steps if m.steps_to_target is None else m.steps_to_target
        cs = race.steps if c.steps_to_target is None else c.steps_to_target
        largest = max(largest, ms - cs)
        for tm, tc in zip(m.trials, c.trials, strict=True):
            if _lt(tc.steps_to_target, tm.steps_to_target):
                pairs["cross_entropy"] += 1
            elif _lt(tm.steps_to_target, tc.steps_to_target):
                pairs["mse"] += 1
            else:
                pairs["tie"] += 1
            reached["mse"] += tm.steps_to_target is not None
            reached["cross_entropy"] += tc.steps_to_target is not None
        diff = abs(m.final_accuracy - c.final_accuracy)
        if diff >= gap:
            gap, gap_samples = diff, round(diff * c.test_labels.size)
        qm, qc = race.get(d, i, "mse", "quality"), race.get(d, i, "cross_entropy", "quality")
        q_mse += qm.final_accuracy > qc.final_accuracy
        q_ce += qc.final_accuracy > qm.final_accuracy
        ll_ce += qc.final_log_loss < qm.final_log_loss
    n = len(settings)
    paragraphs = [
        t("s3.m.margins", margins=_list(t, margins), largest=largest, steps=race.steps),
        t("s3.m.rates", rates=_list(t, rates), larger=larger, n=n),
    ]
    # "hides" only when the measurements say so: MSE mostly needed (and got) larger steps,
    # and at equal learning rates it was not the faster one.
    # ("MSE only catches up when its learning rate is tuned": only if it never led at equal ones)
    if 2 * larger >= n and pairs["cross_entropy"] > pairs["mse"] and pairs["mse"] == 0:
        paragraphs.append(t("s3.m.hides"))
    paragraphs += [
        t(
            "s3.m.equal",
            ce=pairs["cross_entropy"],
            mse=pairs["mse"],
            total=sum(pairs.values()),
            reached_ce=reached["cross_entropy"],
            reached_mse=reached["mse"],
        ),
        t(
            "s3.m.accuracy",
            gap=f"{100 * gap:.1f}",
            samples=gap_samples,
            q_mse=q_mse,
            q_ce=q_ce,
            n=n,
        ),
        t("s3.m.ll_better" if 2 * ll_ce > n else "s3.m.ll_not", ll_ce=ll_ce, n=n),
    ]
    return tuple(paragraphs)


def _race_verdict(race: Race, t: Texts) -> tuple[str, str]:
    settings = list(dict.fromkeys((run.dataset, run.init) for run in race.runs))
    faster = slower = tied = acc_mse = 0
    sat_wins = sat_total = 0
    pairs = {"cross_entropy": 0, "mse": 0}
    total = 0
    for d, i in settings:
        m, c = race.get(d, i, "mse"), race.get(d, i, "cross_entropy")
        if _lt(c.steps_to_target, m.steps_to_target):
            faster += 1
        elif _lt(m.steps_to_target, c.steps_to_target):
            slower += 1
        else:
            tied += 1
        if i == "saturated":
            sat_total += 1
            sat_wins += _lt(c.steps_to_target, m.steps_to_target)
        acc_mse += m.final_accuracy > c.final_accuracy
        for tm, tc in zip(m.trials, c.trials, strict=True):
            total += 1
            pairs["cross_entropy"] += _lt(tc.steps_to_target, tm.steps_to_target)
            pairs["mse"] += _lt(tm.steps_to_target, tc.steps_to_target)
    verdict = t(
        "s3.verdict",
        faster=faster,
        slower=slower,
        tied=tied,
        n=len(settings),
        pairs=total,
        pairs_ce=pairs["cross_entropy"],
        pairs_mse=pairs["mse"],
        acc_mse=acc_mse,
    )
    if sat_total and sat_wins == sat_total:
        status = CONFIRMED
    elif sat_wins:
        status = MIXED
    else:
        status = NOT_CONFIRMED
    return verdict, status


def _race_rows(race: Race, t: Texts, selection: str) -> tuple[tuple[str, ...], ...]:
    runs = race.runs if selection == "speed" else race.quality_runs
    return tuple(
        (
            t("model." + run.experiment),
            t("data." + run.dataset),
            t("init." + run.init),
            t("loss." + run.loss),
            f"{run.learning_rate:g}",
            f"{run.target_accuracy:.0%}",
            steps(run.steps_to_target, t),
            f"{run.final_accuracy:.3f}",
            f"{run.final_log_loss:.3f}",
        )
        for run in runs
    )


def race_section(r: DemoResults, t: Texts) -> Section:
    race = r.race
    headers = tuple(
        t("s3.h." + k)
        for k in ("model", "data", "init", "loss", "lr", "target", "steps", "acc", "ll")
    )
    grid_rows = tuple(
        (
            f"{_setting(t, run.dataset, run.init)}, {t('loss.' + run.loss)}",
            *(steps(x.steps_to_target, t) for x in run.trials),
        )
        for run in race.runs
    )
    verdict, status = _race_verdict(race, t)
    figures = tuple(
        FigureRef(f"race_{d}_{i}.svg", t("s3.alt", data=t("data." + d), init=t("init." + i)))
        for d, i in dict.fromkeys((run.dataset, run.init) for run in race.runs)
    )
    tables = [Table(headers, _race_rows(race, t, "speed"), t("s3.table_caption"))]
    if race.quality_runs:
        tables.append(Table(headers, _race_rows(race, t, "quality"), t("s3.quality_caption")))
    tables.append(
        Table((t("s3.h.run"), *(f"η={lr:g}" for lr in race.grid)), grid_rows, t("s3.grid_caption"))
    )
    return Section(
        key="fair_race",
        title=t("s3.title"),
        short=t("s3.short"),
        claim=t("s3.claim"),
        explain=t(
            "s3.explain",
            sat=f"{race.saturation:g}",
            grid=", ".join(f"{v:g}" for v in race.grid),
            steps=race.steps,
        ),
        figures=figures,
        tables=tuple(tables),
        verdict=verdict,
        status=status,
        details=race_meaning(race, t) if race.quality_runs else (),
        details_title=t("s3.meaning_title"),
    )


def torch_reason(r: DemoResults, t: Texts) -> str:
    return t(
        "s4.reason_quick" if r.checks.torch_skipped == "not requested" else "s4.reason_missing"
    )


def checks_ok(r: DemoResults) -> tuple[bool, float, list[float]]:
    """Whether every step passed; the worst finite-difference and torch relative errors."""
    c = r.checks
    fd = max(x.relative_error for x in c.checks if x.reference == "finite differences")
    tt = [x.relative_error for x in c.checks if x.reference == "torch autograd"]
    return fd < FD_TOLERANCE and all(e < TORCH_TOLERANCE for e in tt), fd, tt


def checks_section(r: DemoResults, t: Texts) -> Section:
    c = r.checks
    names = list(dict.fromkeys(x.name for x in c.checks))
    refs = list(dict.fromkeys(x.reference for x in c.checks))
    rows = []
    for name in names:
        found = {x.reference: x for x in c.checks if x.name == name}
        first = found[refs[0]]
        rows.append(
            (
                t("step." + name),
                sci(first.max_abs_value),
                *(sci(found[ref].relative_error) for ref in refs),
            )
        )
    ok, fd, tt = checks_ok(r)
    torch_part = (
        t("s4.verdict_torch", version=c.torch_version, err=sci(max(tt)))
        if tt
        else t("s4.verdict_skipped", reason=torch_reason(r, t))
    )
    verdict = t("s4.verdict", n=len(names), fd=sci(fd), torch=torch_part)
    if not ok:
        verdict = t("s4.verdict_bad") + verdict
    n_samples = 16
    return Section(
        key="derivation_checks",
        title=t("s4.title"),
        short=t("s4.short"),
        claim=t("s4.claim"),
        explain=t(
            "s4.explain",
            n=n_samples,
            torch=t("s4.torch", version=c.torch_version)
            if tt
            else t("s4.no_torch", reason=torch_reason(r, t)),
            tol=f"{FD_TOLERANCE:g}",
        ),
        figures=(FigureRef("derivation_checks.svg", t("s4.alt" if tt else "s4.alt_fd")),),
        tables=(
            Table(
                (
                    t("s4.h.step"),
                    t("s4.h.scale"),
                    *(t("s4.h.err", ref=t("ref." + ref)) for ref in refs),
                ),
                tuple(rows),
                t("s4.table_caption", n=n_samples, h=f"{c.finite_difference_step:g}"),
            ),
        ),
        verdict=verdict,
        status=PASSED if ok else FAILED,
    )


def identities_section(r: DemoResults, t: Texts) -> Section:
    rows = tuple(
        (
            t("s5.id." + i.name),
            t("s5.data." + i.data) if i.data in ("breast_cancer", "digits") else i.data,
            f"{i.lhs:.12g}",
            f"{i.rhs:.12g}",
            sci(i.abs_error),
        )
        for i in r.identities
    )
    worst = max(i.abs_error for i in r.identities)
    ok = bool(np.isfinite(worst)) and worst < IDENTITY_TOLERANCE
    return Section(
        key="identities",
        title=t("s5.title"),
        short=t("s5.short"),
        claim=t("s5.claim"),
        explain=t("s5.explain"),
        figures=(FigureRef("identities.svg", t("s5.alt")),),
        tables=(
            Table(
                tuple(t("s5.h." + k) for k in ("identity", "data", "lhs", "rhs", "diff")),
                rows,
                t("s5.table_caption", eps=f"{SMOOTHING:g}"),
            ),
        ),
        verdict=(
            t("s5.verdict_bad", err=sci(worst))
            if not ok
            else t("s5.verdict_exact", n=len(rows))
            if worst == 0
            else t("s5.verdict", n=len(rows), err=sci(worst))
        ),
        status=PASSED if ok else FAILED,
    )


def build_sections(r: DemoResults, t: Texts | None = None) -> list[Section]:
    """The five sections, in the article's order."""
    t = t or Texts("en")
    return [
        anatomy_section(r, t),
        neuron_section(r, t),
        race_section(r, t),
        checks_section(r, t),
        identities_section(r, t),
    ]
