"""What each section of the report says: the article's claim, a table and the verdict
measured in this run. Shared by the HTML page, the terminal summary and ``metrics.json``."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..experiments import DemoResults, Race

CONFIRMED = "confirmed"
MIXED = "mixed"
NOT_CONFIRMED = "not confirmed"
PASSED = "passed"
FAILED = "failed"

FD_TOLERANCE = 1e-6  # finite differences in float64 with h = 1e-6: errors ~1e-9
TORCH_TOLERANCE = 1e-10  # float64 autograd: rounding only
IDENTITY_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Table:
    """A table of already formatted cells."""

    headers: tuple[str, ...]
    rows: tuple[tuple[str, ...], ...]
    caption: str = ""


@dataclass(frozen=True)
class Section:
    """One part of the report."""

    key: str
    title: str
    claim: str
    figure: str
    figure_alt: str
    tables: tuple[Table, ...]
    verdict: str
    status: str
    details: str = ""


def sci(x: float) -> str:
    """``2.2e-10``; exact zero as ``0``."""
    if x == 0:
        return "0"
    if not math.isfinite(x):
        return str(x)
    return f"{x:.1e}"


def steps(n: int | None) -> str:
    return "never" if n is None else str(n)


def _lt(a: int | None, b: int | None) -> bool:
    """``a`` strictly fewer steps than ``b`` (``None`` = never)."""
    return a is not None and (b is None or a < b)


def anatomy_section(r: DemoResults) -> Section:
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
    return Section(
        key="gradient_anatomy",
        title="1. Gradient anatomy",
        claim=(
            "under a sigmoid, the MSE gradient (a − y)σ'(z) carries σ'(z), which vanishes for "
            "large |z|; the cross-entropy gradient is simply a − y."
        ),
        figure="gradient_anatomy.png",
        figure_alt="dL/dz of MSE and BCE against z",
        tables=(
            Table(
                (
                    "z",
                    "σ'(z)",
                    "|∂L/∂z| MSE, y=0",
                    "|∂L/∂z| BCE, y=0",
                    "|∂L/∂z| MSE, y=1",
                    "|∂L/∂z| BCE, y=1",
                ),
                tuple(rows),
                "Closed-form gradients from value_and_grad and the chain rule.",
            ),
        ),
        verdict=(
            f"At z = {zmin:g} with y = 1 (confidently wrong) |∂L/∂z| is {sci(mse)} under MSE "
            f"and {bce:.3f} under BCE, {bce / mse:,.0f}× larger; the closed forms match finite "
            f"differences to {sci(fd['mse'])} (MSE) and {sci(fd['bce'])} (BCE)."
        ),
        status=CONFIRMED if ok else NOT_CONFIRMED,
    )


def neuron_section(r: DemoResults) -> Section:
    n = r.neuron
    rows = []
    for start, (w0, b0) in n.starts.items():
        for loss in ("mse", "cross_entropy"):
            run = n.run(start, loss)
            rows.append(
                (
                    start,
                    f"w={w0:g}, b={b0:g}, z₀={w0 * n.x + b0:g}",
                    loss,
                    steps(run.steps_to_correct),
                    steps(run.steps_to_close),
                    f"{run.output[-1]:.4f}",
                    sci(float(run.loss_values[-1])),
                )
            )
    sat = [s for s in n.starts if s == "saturated"] or list(n.starts)[-1:]
    parts = []
    ok = True
    for start in list(n.starts)[::-1]:
        m, c = n.run(start, "mse").steps_to_correct, n.run(start, "cross_entropy").steps_to_correct
        ratio = f" ({m / c:.0f}× more)" if m is not None and c else ""
        parts.append(
            f"from the {start} start, cross-entropy needed {steps(c)} steps and MSE "
            f"{steps(m)}{ratio}"
        )
        if start in sat:
            ok = _lt(c, m)
    return Section(
        key="saturated_neuron",
        title="2. The saturated neuron",
        claim=(
            "a sigmoid neuron that is confidently wrong learns very slowly under MSE, because "
            "its gradient is scaled by σ'(z) ≈ 0; cross-entropy cancels σ'(z) and learns fast."
        ),
        figure="saturated_neuron.png",
        figure_alt="output and loss per step of one sigmoid neuron under MSE and cross-entropy",
        tables=(
            Table(
                (
                    "start",
                    "initial parameters",
                    "loss",
                    "steps to get right (|a−y|<½)",
                    f"steps to |a−y|<{n.close_tolerance:g}",
                    f"output after {n.steps}",
                    f"loss after {n.steps}",
                ),
                tuple(rows),
                f"x = {n.x:g}, y = {n.y:g}, learning rate {n.learning_rate:g} for both losses; "
                "MSE is the article's (a − y)²/2.",
            ),
        ),
        verdict=f"At learning rate {n.learning_rate:g}, " + "; ".join(parts) + ".",
        status=CONFIRMED if ok else NOT_CONFIRMED,
    )


def _race_verdict(race: Race) -> tuple[str, str, str]:
    settings = list(dict.fromkeys((run.dataset, run.init) for run in race.runs))
    faster: list[str] = []
    slower: list[str] = []
    tied: list[str] = []
    sat_wins, sat_total = 0, 0
    acc_mse, ll_mse = [], []
    for d, i in settings:
        m, c = race.get(d, i, "mse"), race.get(d, i, "cross_entropy")
        where = f"{d.replace('_', ' ')}/{i} ({steps(c.steps_to_target)} vs "
        where += f"{steps(m.steps_to_target)})"
        if _lt(c.steps_to_target, m.steps_to_target):
            faster.append(where)
        elif _lt(m.steps_to_target, c.steps_to_target):
            slower.append(where)
        else:
            tied.append(where)
        if i == "saturated":
            sat_total += 1
            sat_wins += _lt(c.steps_to_target, m.steps_to_target)
        if m.final_accuracy > c.final_accuracy:
            acc_mse.append(
                f"{d.replace('_', ' ')}/{i} ({m.final_accuracy:.3f} vs {c.final_accuracy:.3f})"
            )
        if m.final_log_loss < c.final_log_loss:
            ll_mse.append(
                f"{d.replace('_', ' ')}/{i} ({m.final_log_loss:.3f} vs {c.final_log_loss:.3f})"
            )
    pairs = {"cross_entropy": 0, "mse": 0, "tie": 0}
    reached = {"cross_entropy": 0, "mse": 0}
    for d, i in settings:
        m, c = race.get(d, i, "mse"), race.get(d, i, "cross_entropy")
        for tm, tc in zip(m.trials, c.trials, strict=True):
            if _lt(tc.steps_to_target, tm.steps_to_target):
                pairs["cross_entropy"] += 1
            elif _lt(tm.steps_to_target, tc.steps_to_target):
                pairs["mse"] += 1
            else:
                pairs["tie"] += 1
            reached["mse"] += tm.steps_to_target is not None
            reached["cross_entropy"] += tc.steps_to_target is not None
    total = sum(pairs.values())
    n = len(settings)
    short = (
        f"Cross-entropy reached the target validation accuracy in fewer steps in {len(faster)} "
        f"of {n} settings, MSE in {len(slower)}, tied {len(tied)} (each loss at its best "
        f"learning rate); at equal learning rates cross-entropy got "
        f"there first in {pairs['cross_entropy']} of {total} cases, MSE in {pairs['mse']}. "
        f"MSE had the higher test accuracy in {len(acc_mse)} of {n} settings and the lower "
        f"test log-loss in {len(ll_mse)} of {n}."
    )
    text = "Steps to target, cross-entropy vs MSE: " + ", ".join(faster + tied + slower) + "."
    if tied:
        text += " Tied: " + ", ".join(tied) + "."
    if slower:
        text += " MSE was faster in: " + ", ".join(slower) + "."
    text += (
        f" Over the whole grid, the target was reached with {reached['cross_entropy']} of "
        f"{total} learning rates under cross-entropy and {reached['mse']} under MSE; at "
        f"equal learning rates cross-entropy was first {pairs['cross_entropy']} times, MSE "
        f"{pairs['mse']} times, ties (including neither reaching it) {pairs['tie']}."
    )
    text += (
        " MSE had the higher test accuracy in: " + ", ".join(acc_mse) + "."
        if acc_mse
        else " MSE never had the higher test accuracy."
    )
    overconfident = [
        f"{run.loss} on {run.dataset.replace('_', ' ')}/{run.init} "
        f"(η = {run.learning_rate:g}: {run.final_log_loss:.3f})"
        for run in race.runs
        if run.final_log_loss > 1.0
    ]
    if overconfident:
        text += (
            " The race picks each learning rate for speed, not calibration; a test log-loss "
            "above 1 nat was measured for: " + ", ".join(overconfident) + "."
        )
    text += (
        " MSE had the lower test log-loss in: " + ", ".join(ll_mse) + "."
        if ll_mse
        else " MSE never had the lower test log-loss."
    )
    if sat_total and sat_wins == sat_total:
        status = CONFIRMED
    elif sat_wins:
        status = MIXED
    else:
        status = NOT_CONFIRMED
    return short, text, status


def race_section(r: DemoResults) -> Section:
    race = r.race
    rows = tuple(
        (
            run.experiment.replace("_", " "),
            run.dataset.replace("_", " "),
            run.init,
            run.loss,
            f"{run.learning_rate:g}",
            f"{run.target_accuracy:.0%}",
            steps(run.steps_to_target),
            f"{run.final_accuracy:.3f}",
            f"{run.final_log_loss:.3f}",
        )
        for run in race.runs
    )
    grid_rows = tuple(
        (
            f"{run.dataset.replace('_', ' ')}, {run.init}, {run.loss}",
            *(steps(t.steps_to_target) for t in run.trials),
        )
        for run in race.runs
    )
    verdict, details, status = _race_verdict(race)
    return Section(
        key="fair_race",
        title="3. Real data, fair race",
        claim=(
            "with a sigmoid (or softmax) output, use cross-entropy: it keeps learning where MSE "
            "stalls, on real data too — here with each loss at its own best learning rate."
        ),
        figure="race_curves.png",
        figure_alt="validation accuracy per step, MSE vs cross-entropy, four settings",
        tables=(
            Table(
                (
                    "model",
                    "data set",
                    "init",
                    "loss",
                    "learning rate",
                    "target (val)",
                    "steps to target",
                    "test accuracy",
                    "test log-loss",
                ),
                rows,
                f"Full-batch gradient descent, {race.steps} steps; 60/20/20 stratified split; "
                "learning rate = the grid value reaching the target validation accuracy in the "
                "fewest steps (ties: lower validation log-loss). Saturated init: random weights "
                f"scaled so the training logits have standard deviation {race.saturation:g}.",
            ),
            Table(
                ("run", *(f"η={lr:g}" for lr in race.grid)),
                grid_rows,
                "Steps to the target validation accuracy for every learning rate of the grid.",
            ),
        ),
        verdict=verdict,
        status=status,
        details=details,
    )


def checks_section(r: DemoResults) -> Section:
    c = r.checks
    names = list(dict.fromkeys(x.name for x in c.checks))
    refs = list(dict.fromkeys(x.reference for x in c.checks))
    rows = []
    for name in names:
        found = {x.reference: x for x in c.checks if x.name == name}
        first = found[refs[0]]
        rows.append(
            (
                first.formula,
                sci(first.max_abs_value),
                *(sci(found[ref].max_abs_error) for ref in refs),
            )
        )
    fd = max(x.max_abs_error for x in c.checks if x.reference == "finite differences")
    tt = [x.max_abs_error for x in c.checks if x.reference == "torch autograd"]
    ok = fd < FD_TOLERANCE and all(e < TORCH_TOLERANCE for e in tt)
    verdict = f"All {len(names)} formulas agree with finite differences to ≤ {sci(fd)}"
    if tt:
        verdict += f" and with torch {c.torch_version} autograd to ≤ {sci(max(tt))}."
    else:
        reason = "--quick" if c.torch_skipped == "not requested" else c.torch_skipped
        verdict += f"; the torch autograd comparison was skipped ({reason})."
    if not ok:
        verdict = "Not all formulas agree with their references: " + verdict
    return Section(
        key="derivation_checks",
        title="4. Derivation checks",
        claim=(
            "under a sigmoid, ∂L/∂w = (a − y)σ'(z)x for MSE and ∂L/∂w = x(a − y) for BCE; "
            "for softmax with cross-entropy, ∂L/∂z_j = a_j − y_j."
        ),
        figure="derivation_checks.png",
        figure_alt="max absolute error of each formula against finite differences and torch",
        tables=(
            Table(
                ("formula", "max |gradient|", *(f"max abs error vs {ref}" for ref in refs)),
                tuple(rows),
                f"Float64, a batch of 16 samples; central differences with h = "
                f"{c.finite_difference_step:g}.",
            ),
        ),
        verdict=verdict,
        status=PASSED if ok else FAILED,
    )


def identities_section(r: DemoResults) -> Section:
    rows = tuple(
        (i.statement, i.data, f"{i.lhs:.12g}", f"{i.rhs:.12g}", sci(i.abs_error))
        for i in r.identities
    )
    worst = max(i.abs_error for i in r.identities)
    ok = worst < IDENTITY_TOLERANCE
    return Section(
        key="identities",
        title="5. Identities",
        claim=(
            "minimising cross-entropy is maximum likelihood: mean BCE is minus the Bernoulli "
            "log-likelihood per sample, and H(p, q) = H(p) + KL(p‖q); a two-class softmax "
            "with cross-entropy is a sigmoid with BCE on the logit difference."
        ),
        figure="identities.png",
        figure_alt="entropy plus KL divergence equals cross-entropy for test samples",
        tables=(
            Table(("identity", "evaluated on", "left side", "right side", "|difference|"), rows),
        ),
        verdict=(
            f"All {len(rows)} identities hold on real predictions to ≤ {sci(worst)}."
            if ok
            else f"An identity is off by {sci(worst)}."
        ),
        status=PASSED if ok else FAILED,
    )


def build_sections(r: DemoResults) -> list[Section]:
    """The five sections, in the article's order."""
    return [
        anatomy_section(r),
        neuron_section(r),
        race_section(r),
        checks_section(r),
        identities_section(r),
    ]
