"""What each part of the report says: the article's claim, an explanation, figures, tables and
the verdict measured in this run, in the report's language. Shared by the HTML page, the
terminal summary and ``metrics.json``.

Statuses (:data:`CONFIRMED` …) are language-neutral keys; :class:`~.i18n.Texts` words them.
"""

from __future__ import annotations

import dataclasses
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
INTEGRAL_TOLERANCE = 1e-5  # trapezoids with step 0.005 on a smooth integrand: ~5e-7
LINK_TOLERANCE = 1e-12  # a − y against the library's closed forms: rounding only
HESSIAN_TOLERANCE = 1e-6  # central differences of the gradient, h = 1e-5

ORDER = (
    ("nielsen", "p_nielsen"),
    ("gradient_anatomy", "p_anatomy"),
    ("saturated_neuron", "p_neuron"),
    ("cost_origin", "p_origin"),
    ("canonical_link", "p_link"),
    ("fair_race", "p_race"),
    ("derivation_checks", "p_checks"),
    ("identities", "p_identities"),
    ("hidden_layer", "p_hidden"),
)
"""The parts in page order; each text refers to a part by its field (``{p_checks}``)."""
PARTS = {field: k for k, (_, field) in enumerate(ORDER, start=1)}
PART_OF = {key: k for k, (key, _) in enumerate(ORDER, start=1)}
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
    who: str = ""
    """Whose claim ``claim`` is, when not the article's."""


def sci(x: float) -> str:
    """``2.2e-10``; exact zero as ``0``."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.1e}"


def num(x: float) -> str:
    """``f"{x:g}"`` with a minus sign, as the formulas write it: "−10", not "-10"."""
    return f"{x:g}".replace("-", "−")


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
        rows.append((num(z), sci(float(sp)), sci(m0), sci(b0), sci(m1), sci(b1)))
    fd = a.fd_max_abs_error
    ok = bce / mse > 100 and max(fd.values()) < FD_TOLERANCE
    sp_min = float(a.sigmoid_prime[0])
    ce_name, mse_name = t("loss.cross_entropy"), t("loss.mse")
    return Section(
        key="gradient_anatomy",
        title=t("s1.title"),
        short=t("s1.short"),
        claim=t("s1.claim"),
        explain=t("s1.explain", sp=sci(sp_min), z=num(zmin), **PARTS),
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
            z=num(zmin),
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


def _ratio(x: float) -> str:
    """A ratio as "2.3", "15", "1,200"."""
    return f"{x:,.0f}" if x >= 10 else f"{x:.1f}"


def nielsen_section(r: DemoResults, t: Texts) -> Section:
    """Nielsen's setup (chapter 3), rerun by the library. Only the setup is his: the page
    quotes no number from his figures, every number here is this run's."""
    n = r.nielsen
    from ..experiments.teaching import NIELSEN_CE_RATE, NIELSEN_RATE

    mild, bad = "w0.6_b0.9", "w2_b2"
    mse_bad, mse_mild = n.run(bad, "mse"), n.run(mild, "mse")
    ce_bad, ce_mild = n.run(bad, "cross_entropy"), n.run(mild, "cross_entropy")
    ce_bad_slow = n.run(bad, "cross_entropy", NIELSEN_CE_RATE)
    rows = tuple(
        (
            t("n.start." + run.start),
            t("loss." + run.loss),
            f"{run.learning_rate:g}",
            f"{run.output[0]:.2f}",
            f"{run.cost[0]:.3f}",
            f"{run.output[-1]:.2f}",
            steps(run.epochs_to_drop, t),
            str(run.steepest),
        )
        for run in n.runs
    )
    plateau = mse_bad.epochs_to_drop
    # how far the badly wrong start's weight moves in the first third of the epochs, and in
    # the second: little, then much (with x = 1 the bias moves by the same amount)
    span = n.epochs // 3
    moved_first = abs(float(mse_bad.weight[span] - mse_bad.weight[0]))
    moved_next = abs(float(mse_bad.weight[2 * span] - mse_bad.weight[span]))
    ok = (
        _lt(ce_bad.epochs_to_drop, plateau)
        and _lt(mse_mild.epochs_to_drop, plateau)
        and mse_bad.steepest > ce_bad.steepest
        and moved_first < moved_next
    )
    first = ce_bad.steepest == 0 and ce_mild.steepest == 0
    ce_fastest = (
        t("n.ce_first") if first else t("n.ce_later", mild=ce_mild.steepest, bad=ce_bad.steepest)
    )
    return Section(
        key="nielsen",
        title=t("n.title"),
        short=t("n.short"),
        claim=t("n.claim"),
        who=t("who.nielsen"),
        explain=t(
            "n.explain",
            epochs=n.epochs,
            lr=f"{NIELSEN_RATE:g}",
            ce_lr=f"{NIELSEN_CE_RATE:g}",
            slower=f"{NIELSEN_RATE / NIELSEN_CE_RATE:g}",
            a_mild=f"{mse_mild.output[0]:.2f}",
            a_bad=f"{mse_bad.output[0]:.2f}",
            plateau=steps(plateau, t),
            span=span,
            moved_first=f"{moved_first:.2f}",
            moved_next=f"{moved_next:.2f}",
            steepest=mse_bad.steepest,
            ce_fastest=ce_fastest,
        ),
        figures=(
            FigureRef("nielsen_quadratic.svg", t("n.alt1", plateau=steps(plateau, t))),
            FigureRef("nielsen_cross_entropy.svg", t("n.alt2")),
        ),
        tables=(
            Table(
                (
                    t("n.h.start"),
                    t("n.h.cost"),
                    t("n.h.lr"),
                    t("n.h.a0"),
                    t("n.h.c0"),
                    t("n.h.final", n=n.epochs),
                    t("n.h.drop"),
                    t("n.h.steepest"),
                ),
                rows,
                t("n.table_caption"),
            ),
        ),
        verdict=t(
            "n.verdict",
            plateau=steps(plateau, t),
            ce_drop=steps(ce_bad.epochs_to_drop, t),
            ce_drop_slow=steps(ce_bad_slow.epochs_to_drop, t),
            lr=f"{NIELSEN_RATE:g}",
            ce_lr=f"{NIELSEN_CE_RATE:g}",
            mild_drop=steps(mse_mild.epochs_to_drop, t),
            epochs=n.epochs,
            out_mild=f"{mse_mild.output[-1]:.2f}",
            out_bad=f"{mse_bad.output[-1]:.2f}",
        ),
        status=CONFIRMED if ok else NOT_CONFIRMED,
    )


def origin_ok(r: DemoResults) -> bool:
    o = r.origin
    return (
        o.grad_error < LINK_TOLERANCE
        and o.fd_error < FD_TOLERANCE
        and max(o.constant_spread.values()) < INTEGRAL_TOLERANCE
    )


def origin_section(r: DemoResults, t: Texts) -> Section:
    o = r.origin
    ok = origin_ok(r)
    verdict = t(
        "o.verdict",
        grad=sci(o.grad_error),
        fd=sci(o.fd_error),
        spread=sci(o.constant_spread["cross_entropy"]),
        mse_spread=sci(o.constant_spread["mse"]),
    )
    if not ok:
        verdict = t("o.verdict_bad") + verdict
    rows = (
        ("a − y", "−[y ln a + (1 − y) ln(1 − a)]", sci(o.constant_spread["cross_entropy"])),
        ("(a − y)σ'(z)", "(a − y)²/2", sci(o.constant_spread["mse"])),
    )
    return Section(
        key="cost_origin",
        title=t("o.title"),
        short=t("o.short"),
        claim=t("o.claim"),
        who=t("who.nielsen"),
        explain=t("o.explain", lo=num(float(o.b[0])), hi=num(float(o.b[-1])), num=o.b.size),
        figures=(FigureRef("cost_origin.svg", t("o.alt")),),
        tables=(
            Table(
                (t("o.h.loss"), t("o.h.gives"), t("o.h.spread")),
                rows,
                t("o.table_caption", targets=", ".join(f"{y:g}" for y in o.targets)),
            ),
        ),
        verdict=verdict,
        status=PASSED if ok else FAILED,
    )


def links_ok(r: DemoResults) -> tuple[bool, float, float, float]:
    """Whether the canonical pairs give a − y and the mixed one does not; the worst gap of
    the matched pairs, their worst finite-difference error and the mixed pair's gap."""
    links = r.links
    matched = [c for c in links.checks if c.matched]
    mixed = [c for c in links.checks if not c.matched]
    gap = max(c.max_gap for c in matched)
    fd = max(c.fd_error for c in links.checks)
    off = min(c.max_gap for c in mixed) if mixed else math.inf
    ok = (
        gap < LINK_TOLERANCE
        and fd < FD_TOLERANCE
        and off > 0.1
        and links.hessian_error < HESSIAN_TOLERANCE
    )
    return ok, gap, fd, off


def link_section(r: DemoResults, t: Texts) -> Section:
    links = r.links
    ok, gap, fd, off = links_ok(r)
    rows = (
        *((t("l.pair." + c.name), sci(c.max_gap), sci(c.fd_error)) for c in links.checks),
        (t("l.pair.hessian"), "—", sci(links.hessian_error)),
    )
    verdict = t(
        "l.verdict", gap=sci(gap), fd=sci(fd), mixed=f"{off:.2f}", hess=sci(links.hessian_error)
    )
    if not ok:
        verdict = t("l.verdict_bad") + verdict
    return Section(
        key="canonical_link",
        title=t("l.title"),
        short=t("l.short"),
        claim=t("l.claim"),
        explain=t("l.explain"),
        figures=(FigureRef("canonical_link.svg", t("l.alt")),),
        tables=(
            Table(
                (t("l.h.pair"), t("l.h.gap"), t("l.h.fd")),
                rows,
                t("l.table_caption", seed=r.settings.seed),
            ),
        ),
        verdict=verdict,
        status=PASSED if ok else FAILED,
    )


def hidden_numbers(r: DemoResults) -> dict[str, float]:
    """The ratios the hidden-layer verdict quotes: how far each gradient fell from the first
    offset to the last, and the steps to the target from each start."""
    h = r.hidden
    return {
        "ce_fall": float(h.hidden_grad["cross_entropy"][0] / h.hidden_grad["cross_entropy"][-1]),
        "mse_fall": float(h.hidden_grad["mse"][0] / h.hidden_grad["mse"][-1]),
        "sp_fall": float(h.mean_sigma_prime[0] / h.mean_sigma_prime[-1]),
        "out_ratio": float(h.output_grad["cross_entropy"][-1] / h.output_grad["cross_entropy"][0]),
    }


def hidden_section(r: DemoResults, t: Texts) -> Section:
    h = r.hidden
    nums = hidden_numbers(r)
    std, sat = list(h.starts)
    loss_names = {loss: t("loss." + loss) for loss in ("cross_entropy", "mse")}
    sweep = tuple(
        (
            f"{c:g}",
            f"{h.mean_sigma_prime[k]:.4f}",
            f"{h.saturated[k]:.0%}",
            *(sci(float(h.hidden_grad[loss][k])) for loss in loss_names),
            *(sci(float(h.output_grad[loss][k])) for loss in loss_names),
        )
        for k, c in enumerate(h.offsets)
    )
    training = tuple(
        (
            t("h.start." + run.start, c=f"{run.offset:g}"),
            t("loss." + run.loss),
            steps(run.steps_to_target, t),
            f"{run.accuracy[-1]:.3f}",
            f"{run.w1_change:.2f}",
        )
        for run in h.runs
    )
    slower = all(
        _lt(h.run(std, loss).steps_to_target, h.run(sat, loss).steps_to_target)
        for loss in loss_names
    )
    shrinks = nums["ce_fall"] > 10 and nums["mse_fall"] > 10
    if shrinks and slower and nums["out_ratio"] > 0.5:
        status = MIXED  # the article's claim holds at the output only
    elif nums["ce_fall"] < 2:
        status = CONFIRMED
    else:
        status = MIXED if shrinks else NOT_CONFIRMED
    fields = {
        "cmax": f"{h.offsets[-1]:g}",
        "ce_fall": _ratio(nums["ce_fall"]),
        "mse_fall": _ratio(nums["mse_fall"]),
    }
    if status == CONFIRMED:
        verdict = t("h.verdict_holds", **fields)
    else:
        verdict = t(
            "h.verdict",
            **fields,
            sp_fall=_ratio(nums["sp_fall"]),
            out_ratio=f"{nums['out_ratio']:.1f}",
            p=f"{h.target_accuracy:.0%}",
            ce_sat=steps(h.run(sat, "cross_entropy").steps_to_target, t),
            ce_std=steps(h.run(std, "cross_entropy").steps_to_target, t),
            mse_sat=steps(h.run(sat, "mse").steps_to_target, t),
            mse_std=steps(h.run(std, "mse").steps_to_target, t),
        )
    return Section(
        key="hidden_layer",
        title=t("h.title"),
        short=t("h.short"),
        claim=t("s2.claim"),
        explain=t(
            "h.explain",
            hidden=h.hidden,
            n=h.samples,
            inits=h.inits,
            c0=f"{h.starts[std]:g}",
            c1=f"{h.starts[sat]:g}",
            lr=f"{h.learning_rate:g}",
            steps=h.steps,
            fd=sci(h.fd_error),
        ),
        figures=(
            FigureRef("hidden_gradients.svg", t("h.alt1")),
            FigureRef("hidden_training.svg", t("h.alt2")),
        ),
        tables=(
            Table(
                (
                    t("h.h.offset"),
                    t("h.h.sp"),
                    t("h.h.sat"),
                    *(t("h.h.hidden", loss=name) for name in loss_names.values()),
                    *(t("h.h.output", loss=name) for name in loss_names.values()),
                ),
                sweep,
                t("h.table_caption", inits=h.inits),
            ),
            Table(
                (
                    t("h.h.start"),
                    t("h.h.loss"),
                    t("h.h.steps", p=f"{h.target_accuracy:.0%}"),
                    t("h.h.final", n=h.steps),
                    t("h.h.change"),
                ),
                training,
                t("h.train_caption", lr=f"{h.learning_rate:g}"),
            ),
        ),
        verdict=verdict,
        status=status,
    )


BUILDERS = {
    "nielsen": nielsen_section,
    "gradient_anatomy": anatomy_section,
    "saturated_neuron": neuron_section,
    "cost_origin": origin_section,
    "canonical_link": link_section,
    "fair_race": race_section,
    "derivation_checks": checks_section,
    "identities": identities_section,
    "hidden_layer": hidden_section,
}


def build_sections(r: DemoResults, t: Texts | None = None) -> list[Section]:
    """The parts in page order (:data:`ORDER`), each title numbered ("1. …")."""
    t = t or Texts("en")
    out = []
    for k, (key, _) in enumerate(ORDER, start=1):
        s = BUILDERS[key](r, t)
        out.append(dataclasses.replace(s, title=f"{k}. {s.title}", short=f"{k}. {s.short}"))
    return out
