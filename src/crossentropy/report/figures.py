"""The report's figures, drawn with matplotlib's object API (no display, no global pyplot
state) as SVG panels: vector graphics that stay sharp at any zoom, with their text kept as
text (selectable, translatable, rendered by the browser's own fonts — CJK included).

One panel per file, so a narrow screen stacks them instead of shrinking a wide figure until
its labels are unreadable. Each function takes an experiment's result, a folder and a
language, writes its panels and returns their paths. :func:`draw_neuron_png` writes the
README's high-DPI PNG of the saturated neuron.

Colours: the Okabe–Ito colour-blind-safe palette; cross-entropy is always a solid blue line,
MSE a dashed orange one, so the two stay apart in grey scale too.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from ..experiments import (
    CanonicalLinks,
    CostOrigin,
    DerivationChecks,
    GradientAnatomy,
    HiddenLayer,
    Identity,
    NielsenNeuron,
    Race,
    SaturatedNeuron,
)
from .i18n import Texts

COLOR = {
    "cross_entropy": "#0072B2",
    "mse": "#D55E00",
    "sigma_prime": "#555555",
    "fd": "#56B4E9",
    "torch": "#CC79A7",
    "entropy": "#009E73",
    "kl": "#CC79A7",
}
DASH = {"cross_entropy": "-", "mse": "--"}
LOSS_ORDER = ("cross_entropy", "mse")
PNG_DPI = 200
# Panel size in inches: small enough that a 360 px screen shows the text at ~70 % of its size
# (a wide figure shrunk to a phone's width is unreadable), large enough for two side by side.
PANEL = (4.8, 3.3)
# Legend text in points, in a panel PANEL[0] wide (a wider panel scales it up, as the page
# shrinks it more): every panel is shown about 330 px wide on a 360 px screen, where this
# comes out about 10 px tall (its line box; 8.7 px type); 7-8 pt legends had 5 px capitals.
LEGEND_SIZE = 9
# Right margin in inches: half the widest last x tick label ("10⁻³", "500"; 0.17 in in DejaVu
# Sans) and room for a browser's wider fallback font. The label is centred on the axes' right
# end: with 0.15 in it was cut off at the figure's edge.
RIGHT = 0.3
# Room in inches kept between any text and the figure's edge: a browser's font may set a label
# a little wider than matplotlib measured it.
TEXT_PAD = 0.06
# Fonts a browser is likely to have for CJK text; the SVG names them after matplotlib's own.
CSS_FONTS = (
    "'DejaVu Sans', 'Helvetica Neue', Arial, 'Noto Sans CJK SC', 'Source Han Sans SC', "
    "'PingFang SC', 'Microsoft YaHei', 'WenQuanYi Micro Hei', sans-serif"
)
_CJK_NAMES = ("Noto Sans CJK", "Source Han Sans", "WenQuanYi", "Droid Sans Fallback", "SimHei")


def _cjk_family() -> str | None:
    """A CJK font matplotlib can measure text with, if the system has one."""
    from matplotlib import font_manager

    def known() -> str | None:
        for f in font_manager.fontManager.ttflist:
            if any(f.name.startswith(n) for n in _CJK_NAMES):
                return str(f.name)
        return None

    found = known()
    if found is None:
        for path in font_manager.findSystemFonts():
            if re.search(r"wqy|notosanscjk|sourcehansans|droidsansfallback", path.lower()):
                try:
                    font_manager.fontManager.addfont(path)
                except (OSError, RuntimeError):
                    continue
        found = known()
    return found


@contextmanager
def _style(t: Texts) -> Iterator[None]:
    import matplotlib

    family = ["DejaVu Sans"]
    if t.lang == "zh" and (cjk := _cjk_family()) is not None:
        family.append(cjk)
    rc: dict[str, Any] = {
        "svg.fonttype": "none",
        "svg.hashsalt": "crossentropy",  # identical runs write identical files
        "font.family": family,
        "font.size": 10,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "axes.grid": True,
        "grid.color": "#e4e7eb",
        "grid.linewidth": 0.6,
        "legend.frameon": False,
        "legend.fontsize": LEGEND_SIZE,
    }
    with matplotlib.rc_context(rc), warnings.catch_warnings():  # type: ignore[arg-type]
        # Without a CJK font matplotlib cannot measure Chinese glyphs; the browser draws them.
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")
        yield


def _legend_size(fig: Figure) -> float:
    """Legend text size of ``fig``: the same on screen in every panel, wide or not."""
    return round(LEGEND_SIZE * max(1.0, fig.get_figwidth() / PANEL[0]), 2)


def _figure(
    width: float = PANEL[0], height: float = PANEL[1], left: float = 0.6, bottom: float = 0.5
) -> Figure:
    """A figure with fixed margins (in inches): a layout engine would measure every label
    twice and double the drawing time, for panels whose layout never changes."""
    fig = Figure(figsize=(width, height))
    fig.subplots_adjust(
        left=left / width, bottom=bottom / height, right=1 - RIGHT / width, top=1 - 0.35 / height
    )
    return fig


def _keep_text_inside(fig: Figure) -> None:
    """Move the axes in from an edge where a label, tick or title would stick out of the
    figure (a y label left of wide tick labels such as "−0.75" or "10⁻⁶" was cut off at the
    left edge). Fixed margins stay where they fit: one text layout, no layout engine."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    renderer = FigureCanvasAgg(fig).get_renderer()  # type: ignore[no-untyped-call]
    box = fig.get_tightbbox(renderer)  # inches
    width, height = fig.get_figwidth(), fig.get_figheight()
    left = max(0.0, TEXT_PAD - box.x0) / width
    right = max(0.0, box.x1 - (width - TEXT_PAD)) / width
    bottom = max(0.0, TEXT_PAD - box.y0) / height
    top = max(0.0, box.y1 - (height - TEXT_PAD)) / height
    if left == right == bottom == top == 0.0:
        return
    for ax in fig.axes:
        x0, y0, x1, y1 = ax.get_position().extents
        ax.set_position((x0 + left, y0 + bottom, x1 - x0 - left - right, y1 - y0 - bottom - top))


def _save_svg(fig: Figure, path: Path) -> Path:
    _keep_text_inside(fig)
    fig.savefig(path, format="svg", metadata={"Date": None, "Creator": None})
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"font-family: [^;\"]*", f"font-family: {CSS_FONTS}", text)
    path.write_text(text, encoding="utf-8")
    return path


def draw_anatomy(r: GradientAnatomy, out: Path, t: Texts) -> tuple[Path, ...]:
    """∂L/∂z against z for y = 1 on a linear axis, then |∂L/∂z| for both targets on a log
    axis."""
    t1 = r.targets.index(1.0)
    with _style(t):
        fig = _figure()
        ax = fig.subplots()
        ax.axvspan(r.z[0], 0, color="#f6e3da", lw=0, label=t("fig.wrong_side"))
        ax.plot(r.z, r.bce_grad[t1], color=COLOR["cross_entropy"], lw=2.2, label=t("fig.bce_dz"))
        ax.plot(r.z, r.mse_grad[t1], color=COLOR["mse"], ls="--", lw=2.2, label=t("fig.mse_dz"))
        ax.plot(r.z, r.sigmoid_prime, color=COLOR["sigma_prime"], ls=":", lw=1.6, label="σ'(z)")
        ax.axhline(0, color="black", lw=0.6)
        ax.set(xlabel=t("fig.z"), ylabel="∂L/∂z", title=t("fig.anatomy_linear"))
        # headroom above the curves (they stay below σ'(0) = ¼) for a legend no curve crosses
        ax.set_ylim(-1.08, 1.02)
        ax.set_yticks([-1.0, -0.75, -0.5, -0.25, 0.0, 0.25])
        ax.legend(loc="upper right", borderaxespad=0.3)
        first = _save_svg(fig, out / "gradient_anatomy_linear.svg")

        fig = _figure()
        ax = fig.subplots()
        for k, y in enumerate(r.targets):
            width = 2.2 if y == 1.0 else 1.2
            for loss, grad in (("cross_entropy", r.bce_grad), ("mse", r.mse_grad)):
                ax.semilogy(
                    r.z,
                    np.abs(grad[k]),
                    color=COLOR[loss],
                    ls=DASH[loss],
                    lw=width,
                    label=t("fig.loss_y", loss=t("loss." + loss), y=f"{y:g}"),
                )
        ax.set(xlabel=t("fig.z"), ylabel=t("fig.abs_dz_log"), title=t("fig.anatomy_log"))
        # headroom above the curves (at most 1) for a legend no curve crosses
        ax.set_ylim(1e-6, 1e3)
        ax.set_yticks([1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0])
        ax.legend(loc="upper center", ncol=2, borderaxespad=0.3)
        second = _save_svg(fig, out / "gradient_anatomy_log.svg")
    return first, second


def _neuron_axes(
    r: SaturatedNeuron, t: Texts, fig: Figure, columns: int, only_gradient: bool = False
) -> tuple[Any, Any]:
    """Draw the output panel (``top``) and, with ``columns == 2``, the gradient panel
    (``bottom``); ``only_gradient`` draws the gradient panel alone, as ``bottom``."""
    if only_gradient:
        top, bottom = None, fig.subplots()
    elif columns == 2:
        top, bottom = fig.subplots(1, 2)
    else:
        top, bottom = fig.subplots(), None
    steps = np.arange(r.steps + 1)
    for start in r.starts:
        w0, b0 = r.starts[start]
        mild = start != "saturated"
        for loss in LOSS_ORDER:
            run = r.run(start, loss)
            n = run.steps_to_correct
            z0 = w0 * r.x + b0
            if n is None:
                outcome = t("fig.still_wrong", n=r.steps)
            else:  # a single panel has half the room: "7 steps" (its title says to what)
                outcome = t("fig.steps_n" if columns == 1 else "fig.right_after", n=n)
            label = t("fig.loss_z0_outcome", loss=t("loss." + loss), z0=f"{z0:g}", outcome=outcome)
            style = {
                "color": COLOR[loss],
                "ls": DASH[loss],
                "lw": 1.2 if mild else 2.4,
                "alpha": 0.55 if mild else 1.0,
            }
            if top is not None:
                top.plot(steps, run.output, label=label, **style)
                if n is not None:
                    top.plot([n], [run.output[n]], "o", color=COLOR[loss], ms=4 if mild else 6)
            if bottom is not None:
                # |∂L/∂z| along the run: a − y for cross-entropy, (a − y)σ'(z) for MSE
                a = run.output
                grad = np.abs(a - r.y) * (1.0 if loss == "cross_entropy" else a * (1 - a))
                short = t("fig.loss_z0", loss=t("loss." + loss), z0=f"{z0:g}")
                bottom.semilogy(steps, grad, label=short, **style)
    if top is not None:
        top.axhline(0.5, color="black", lw=0.7, ls=":")
        top.set(xlabel=t("fig.step"), ylabel=t("fig.output"), title=t("fig.neuron_output"))
        top.set_xlim(0, r.steps)
        # above the curves, in headroom of its own: no curve passes under the legend. A panel
        # of its own (the page's) has one column of legible entries; the README's wide PNG two.
        top.set_ylim(-0.02, 1.62 if columns == 1 else 1.34)
        top.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
        top.legend(
            loc="upper center",
            ncol=1 if columns == 1 else 2,
            fontsize=LEGEND_SIZE if columns == 1 else 7.5,
            columnspacing=0.8,
            handlelength=1.6,
            borderaxespad=0.3,
        )
    if bottom is not None:
        bottom.set(xlabel=t("fig.step"), ylabel="|∂L/∂z|", title=t("fig.neuron_grad"))
        bottom.set_xlim(0, r.steps)
    return top, bottom


def draw_neuron(r: SaturatedNeuron, out: Path, t: Texts) -> tuple[Path, ...]:
    """Output per step and |∂L/∂z| per step (log axis), both starts, both losses."""
    with _style(t):
        fig = _figure()
        _neuron_axes(r, t, fig, 1)
        first = _save_svg(fig, out / "saturated_neuron_output.svg")
        fig = _figure()
        _, grad_ax = _neuron_axes(r, t, fig, 2, only_gradient=True)
        # headroom above the curves (a third of the log axis) for a legend no curve crosses
        lo, hi = grad_ax.get_ylim()
        grad_ax.set_ylim(lo, hi * (hi / lo) ** 0.55)
        grad_ax.set_yticks([v for v in grad_ax.get_yticks() if lo <= v <= hi])
        grad_ax.legend(loc="upper right")
        second = _save_svg(fig, out / "saturated_neuron_gradient.svg")
    return first, second


def draw_neuron_png(r: SaturatedNeuron, path: Path, t: Texts) -> Path:
    """Both neuron panels side by side as one high-DPI PNG (the README's figure)."""
    with _style(t):
        fig = _figure(11, 4.2)
        fig.subplots_adjust(top=0.86, wspace=0.22)
        _neuron_axes(r, t, fig, 2)
        fig.suptitle(t("fig.neuron_suptitle", lr=r.learning_rate), fontsize=11)
        fig.savefig(path, format="png", dpi=PNG_DPI, metadata={"Software": None})
    return path


def draw_race(r: Race, out: Path, t: Texts) -> tuple[Path, ...]:
    """Validation accuracy per step at each loss's fastest learning rate, one panel per
    (data set, initialisation)."""
    paths = []
    steps = np.arange(r.steps + 1)
    settings = list(dict.fromkeys((run.dataset, run.init) for run in r.runs))
    with _style(t):
        for dataset, init in settings:
            fig = _figure(PANEL[0], 3.1)
            ax = fig.subplots()
            target = r.get(dataset, init, "cross_entropy").target_accuracy
            # Zoom to where the race is decided (a few steps on these data sets): on the whole
            # run's axis both curves sit on top of each other at the left edge.
            reach = [r.get(dataset, init, loss).steps_to_target for loss in LOSS_ORDER]
            shown = r.steps
            if all(n is not None for n in reach):
                shown = int(min(r.steps, max(10, 4 * max(n for n in reach if n is not None))))
            for loss in LOSS_ORDER:
                run = r.get(dataset, init, loss)
                n = run.steps_to_target
                if n is None:
                    reached = t("fig.not_reached")
                else:
                    reached = t("fig.steps_1") if n == 1 else t("fig.steps_n", n=n)
                ax.plot(
                    steps,
                    run.val_accuracy,
                    color=COLOR[loss],
                    ls=DASH[loss],
                    lw=2,
                    label=t(
                        "fig.race_run",
                        loss=t("loss." + loss),
                        lr=f"{run.learning_rate:g}",
                        reached=reached,
                    ),
                )
                if n is not None:
                    ax.plot([n], [run.val_accuracy[n]], "o", color=COLOR[loss], ms=6)
            ax.axhline(target, color="black", lw=0.7, ls=":")
            ax.annotate(
                t("fig.target", p=f"{target:.0%}"),
                (shown, target),
                xytext=(0, -11),
                textcoords="offset points",
                ha="right",
                fontsize=8,
            )
            ax.set_xlim(0, shown)
            ax.set_ylim(0, 1.01)
            xlabel = t("fig.step") if shown == r.steps else t("fig.zoomed", n=shown, total=r.steps)
            ax.set(
                title=t("fig.race_title", data=t("data." + dataset), init=t("init." + init)),
                xlabel=xlabel,
                ylabel=t("fig.val_accuracy"),
            )
            ax.legend(loc="lower right")
            paths.append(_save_svg(fig, out / f"race_{dataset}_{init}.svg"))
    return tuple(paths)


def draw_checks(
    r: DerivationChecks,
    out: Path,
    t: Texts,
    tolerance: float,
    torch_tolerance: float | None = None,
) -> tuple[Path, ...]:
    """Each step's error relative to the gradient's scale, per reference, with each
    reference's tolerance; an exact 0 is an open marker on the left edge, labelled."""
    names = list(dict.fromkeys(c.name for c in r.checks))
    refs = list(dict.fromkeys(c.reference for c in r.checks))
    floor = 1e-19
    with _style(t):
        # the legend's entries: each reference, and its exact zeros if any; two fit on a row
        exact = [any(c.relative_error == 0 for c in r.checks if c.reference == f) for f in refs]
        entries = len(refs) + sum(exact)
        columns = entries if entries <= 2 else 1
        rows = -(-entries // columns)
        height = 0.26 * len(names) + 1.9 + 0.2 * (rows - 1)
        fig = _figure(5.2, height, left=2.35)
        # room for the title and the legend
        fig.subplots_adjust(top=1 - (0.8 + 0.2 * rows) / height)
        ax = fig.subplots()
        ypos = np.arange(len(names))
        for k, ref in enumerate(refs):
            key = "fd" if k == 0 else "torch"
            errs = np.array(
                [
                    next(c.relative_error for c in r.checks if c.name == n and c.reference == ref)
                    for n in names
                ]
            )
            exact = errs == 0
            offset = (k - (len(refs) - 1) / 2) * 0.22
            ax.plot(
                errs[~exact],
                ypos[~exact] + offset,
                "o",
                color=COLOR[key],
                ms=6,
                label=t("fig.vs_" + key),
            )
            if exact.any():
                ax.plot(
                    np.full(exact.sum(), floor * 3),
                    ypos[exact] + offset,
                    "o",
                    mfc="white",
                    mec=COLOR[key],
                    ms=6,
                    label=t("fig.exact_zero", ref=t("fig.vs_" + key)),
                )
        marks = [(tolerance, COLOR["fd"])]
        if torch_tolerance is not None and len(refs) > 1:
            marks.append((torch_tolerance, COLOR["torch"]))
        for tol, color in marks:
            ax.axvline(tol, color=color, lw=1.2, ls="--")
            ax.annotate(  # along its line, so two tolerances never collide
                t("fig.tolerance", tol=f"{tol:g}"),
                (tol, len(names) - 0.45),
                xytext=(-3, 0),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="bottom",
                color="#39424c",
                fontsize=7.5,
            )
        ax.set_xscale("log")
        ax.set_xlim(floor, 1e-3)
        ax.set_yticks(ypos, [t("step." + n) for n in names], fontsize=7.5)
        ax.set_ylim(len(names) - 0.4, -0.6)
        ax.grid(axis="y", visible=False)
        ax.set(xlabel=t("fig.relative_error"))
        # centred on the figure, not on the axes: the step labels take the left half
        # one reference when the torch cross-check did not run: say so, promise no second
        title = t("fig.checks_title" if len(refs) > 1 else "fig.checks_title_fd")
        fig.suptitle(title, y=1 - 0.1 / height, fontsize=10)
        fig.legend(
            loc="upper center",
            bbox_to_anchor=(0.5, 1 - 0.38 / height),
            ncol=columns,
            fontsize=_legend_size(fig),
            columnspacing=1.0,
            handletextpad=0.4,
        )
        path = _save_svg(fig, out / "derivation_checks.svg")
    return (path,)


def draw_identities(
    identities: tuple[Identity, ...], out: Path, t: Texts, rows: int = 12
) -> tuple[Path, ...]:
    """H(p, q) = H(p) + KL(p‖q) as stacked bars, on the ``rows`` test samples with the largest
    H(p, q), beside the ``rows`` with the smallest."""
    ident = next(i for i in identities if i.per_sample)
    per = ident.per_sample
    order = np.argsort(per["cross_entropy"], kind="stable")
    picked = np.r_[order[::-1][:rows], order[: rows // 2]]
    h, kl, hpq = per["entropy"][picked], per["kl"][picked], per["cross_entropy"][picked]
    x = np.r_[np.arange(rows), rows + 1 + np.arange(picked.size - rows)]
    with _style(t):
        fig = _figure(5.2, 3.6, bottom=0.85)
        ax = fig.subplots()
        ax.bar(x, h, color=COLOR["entropy"], label=t("fig.entropy"))
        ax.bar(x, kl, bottom=h, color=COLOR["kl"], label=t("fig.kl"))
        ax.plot(x, hpq, "k_", ms=12, mew=2, label=t("fig.hpq"))
        ax.set_xticks(x, [str(i) for i in picked], fontsize=7, rotation=90)
        ax.set(xlabel=t("fig.identity_samples", n=rows, m=picked.size - rows), ylabel=t("fig.nats"))
        ax.set_title(t("fig.identity_title"))
        ax.legend(loc="upper right", fontsize=_legend_size(fig))
        path = _save_svg(fig, out / "identities.svg")
    return (path,)


def draw_nielsen(r: NielsenNeuron, out: Path, t: Texts) -> tuple[Path, ...]:
    """Cost per epoch of Nielsen's neuron: the quadratic cost from both starts, then
    cross-entropy from both starts (at η = 0.15, and dotted at a 30 times smaller 0.005)."""
    from ..experiments.teaching import NIELSEN_CE_RATE, NIELSEN_RATE

    epochs = np.arange(r.epochs + 1)
    starts = list(dict.fromkeys(run.start for run in r.runs))
    widths = {starts[0]: 1.4, starts[-1]: 2.4}
    paths = []
    with _style(t):
        for loss, name in (
            ("mse", "nielsen_quadratic.svg"),
            ("cross_entropy", "nielsen_cross_entropy.svg"),
        ):
            fig = _figure()
            ax = fig.subplots()
            for start in starts:
                label = t("fig.nielsen_start", start=t("n.start." + start))
                run = r.run(start, loss)
                ax.plot(
                    epochs,
                    run.cost,
                    color=COLOR[loss],
                    ls=DASH[loss],
                    lw=widths[start],
                    alpha=1.0 if start == starts[-1] else 0.6,
                    label=label
                    if loss == "mse"
                    else t(
                        "fig.nielsen_ce_rate",
                        start=t("n.start." + start),
                        lr=f"{NIELSEN_RATE:g}",
                    ),
                )
                if loss == "cross_entropy":
                    slow = r.run(start, loss, NIELSEN_CE_RATE)
                    ax.plot(
                        epochs,
                        slow.cost,
                        color=COLOR[loss],
                        ls=":",
                        lw=widths[start],
                        alpha=1.0 if start == starts[-1] else 0.6,
                        label=t(
                            "fig.nielsen_ce_rate",
                            start=t("n.start." + start),
                            lr=f"{NIELSEN_CE_RATE:g}",
                        ),
                    )
            title = (
                t("fig.nielsen_quadratic", lr=f"{NIELSEN_RATE:g}")
                if loss == "mse"
                else t("fig.nielsen_ce")
            )
            ax.set(xlabel=t("fig.epoch"), ylabel=t("fig.cost"), title=title)
            ax.set_xlim(0, r.epochs)
            top = max(float(run.cost[0]) for run in r.runs if run.loss == loss)
            # headroom above the curves for a legend no curve crosses
            ax.set_ylim(0, top * (1.45 if loss == "mse" else 1.75))
            ax.legend(loc="upper right", ncol=1)
            paths.append(_save_svg(fig, out / name))
    return tuple(paths)


def draw_origin(r: CostOrigin, out: Path, t: Texts) -> tuple[Path, ...]:
    """The library's BCE against b for each target (lines) and the numerical integral of
    a − y, shifted by the loss at b = 0 (markers)."""
    origin = int(np.argmin(np.abs(r.b)))
    colors = ("#0072B2", "#009E73", "#D55E00")
    every = max(1, r.b.size // 24)
    with _style(t):
        fig = _figure()
        ax = fig.subplots()
        for k, y in enumerate(r.targets):
            ax.plot(r.b, r.bce[k], color=colors[k % 3], lw=2, label=t("fig.origin_lib", y=f"{y:g}"))
            shifted = r.integral[k] + r.bce[k][origin]
            ax.plot(
                r.b[::every],
                shifted[::every],
                "o",
                mfc="white",
                mec="#1d232a",
                ms=4,
                label=t("fig.origin_int") if k == 0 else None,
            )
        ax.set(xlabel=t("fig.bias"), ylabel=t("fig.cost"), title=t("fig.origin_title"))
        ax.set_xlim(r.b[0], r.b[-1])
        ax.set_ylim(0, float(r.bce.max()) * 1.5)
        ax.legend(loc="upper center", ncol=2, columnspacing=0.8, handlelength=1.4)
        path = _save_svg(fig, out / "cost_origin.svg")
    return (path,)


LINK_STYLE = {
    "sigmoid_bce": ("#0072B2", "o"),
    "softmax_ce": ("#009E73", "s"),
    "identity_mse": ("#CC79A7", "^"),
    "sigmoid_mse": ("#D55E00", "x"),
}


def draw_links(r: CanonicalLinks, out: Path, t: Texts) -> tuple[Path, ...]:
    """The library's ∂L/∂z against a − y for every entry of each pair's batch."""
    with _style(t):
        fig = _figure(PANEL[0], 3.6)
        ax = fig.subplots()
        lim = max(float(np.max(np.abs(c.residual))) for c in r.checks) * 1.05
        ax.plot([-lim, lim], [-lim, lim], color="#9aa3ad", lw=0.8, zorder=0)
        for c in r.checks:
            color, marker = LINK_STYLE[c.name]
            ax.plot(
                c.residual.ravel(),
                c.grad.ravel(),
                marker,
                ls="none",
                color=color,
                mfc="none" if marker != "x" else color,
                ms=5,
                label=t("l.pair." + c.name),
            )
        ax.set(xlabel=t("fig.link_x"), ylabel=t("fig.link_y"), title=t("fig.link_title"))
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim * 2.2)  # headroom for the legend
        ax.legend(loc="upper left", ncol=1, handletextpad=0.3, borderaxespad=0.3)
        path = _save_svg(fig, out / "canonical_link.svg")
    return (path,)


def draw_hidden(r: HiddenLayer, out: Path, t: Texts) -> tuple[Path, ...]:
    """Gradient norms at the start against the hidden-bias offset; training accuracy per step
    from the standard and the saturated start."""
    offsets = np.asarray(r.offsets)
    with _style(t):
        fig = _figure(PANEL[0], 3.6)
        ax = fig.subplots()
        for loss in LOSS_ORDER:
            name = t("loss." + loss)
            ax.semilogy(
                offsets,
                r.hidden_grad[loss],
                color=COLOR[loss],
                ls=DASH[loss],
                lw=2.4,
                marker="o",
                ms=4,
                label=t("fig.hidden_layer", loss=name),
            )
            ax.semilogy(
                offsets,
                r.output_grad[loss],
                color=COLOR[loss],
                ls=DASH[loss],
                lw=1.2,
                marker="s",
                mfc="white",
                ms=4,
                label=t("fig.output_layer", loss=name),
            )
        ax.semilogy(
            offsets,
            r.mean_sigma_prime,
            color=COLOR["sigma_prime"],
            ls=":",
            lw=1.6,
            label=t("fig.mean_sp"),
        )
        lo, hi = ax.get_ylim()
        ax.set_ylim(lo, hi * (hi / lo) ** 0.6)  # headroom for the legend
        ax.set_yticks([v for v in ax.get_yticks() if lo <= v <= hi])
        ax.set(xlabel=t("fig.offset"), ylabel=t("fig.grad_norm"), title=t("fig.hidden_grad_title"))
        ax.set_xlim(offsets[0], offsets[-1])
        ax.legend(loc="upper right", ncol=1, borderaxespad=0.3)
        first = _save_svg(fig, out / "hidden_gradients.svg")

        fig = _figure(PANEL[0], 3.6)
        ax = fig.subplots()
        steps = np.arange(r.steps + 1)
        std, sat = list(r.starts)
        for start in (std, sat):
            for loss in LOSS_ORDER:
                run = r.run(start, loss)
                ax.plot(
                    steps,
                    run.accuracy,
                    color=COLOR[loss],
                    ls=DASH[loss],
                    lw=2.4 if start == sat else 1.2,
                    alpha=1.0 if start == sat else 0.6,
                    label=t(
                        "fig.hidden_run",
                        loss=t("loss." + loss),
                        start=t("fig.start." + start, c=f"{r.starts[start]:g}"),
                    ),
                )
        ax.axhline(r.target_accuracy, color="black", lw=0.7, ls=":")
        ax.set(xlabel=t("fig.step"), ylabel=t("fig.train_acc"), title=t("fig.hidden_train_title"))
        ax.set_xlim(0, r.steps)
        ax.set_ylim(0.3, 1.32)
        ax.set_yticks([0.4, 0.6, 0.8, 1.0])
        ax.legend(loc="upper center", ncol=1, borderaxespad=0.3)
        second = _save_svg(fig, out / "hidden_training.svg")
    return first, second
