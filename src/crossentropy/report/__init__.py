"""Render the demo's results: SVG figures, ``metrics.json``, a self-contained ``index.html``,
and the terminal summary.

The experiments (:mod:`crossentropy.experiments`) only compute; everything that draws, writes
or prints lives here. :func:`write_report` builds the whole report in a temporary folder
beside the target and renames it into place, so an error or a Ctrl-C never leaves a mix of
old and new files: the previous report stays intact until the new one is complete.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..experiments import DemoResults
from .figures import (
    draw_anatomy,
    draw_checks,
    draw_hidden,
    draw_identities,
    draw_links,
    draw_neuron,
    draw_neuron_png,
    draw_nielsen,
    draw_origin,
    draw_race,
)
from .html import render_html
from .i18n import LANGUAGES, Texts
from .metrics import build_metrics
from .sections import FD_TOLERANCE, TORCH_TOLERANCE, Section, build_sections

MARKER = ".crossentropy-report"
"""An empty file in every report folder: the sign that the folder may be replaced."""
FIGURES = "figures"


@dataclass(frozen=True)
class ReportFiles:
    """Where the report was written."""

    index: Path
    metrics: Path
    figures: tuple[Path, ...]
    sections: tuple[Section, ...]
    seconds: float


def versions(results: DemoResults) -> dict[str, str]:
    """Versions worth quoting next to the numbers."""
    import matplotlib

    out = {
        "crossentropy": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "matplotlib": matplotlib.__version__,
    }
    if results.checks.torch_version is not None:
        out["torch"] = results.checks.torch_version
    return out


def replaceable(out_dir: Path) -> str | None:
    """``None`` if ``out_dir`` may receive a report (absent, empty, or an earlier report);
    otherwise why not. A folder of other files is never replaced."""
    if not out_dir.exists():
        return None
    if not out_dir.is_dir():
        return "exists and is not a directory"
    here = Path.cwd().resolve()
    if out_dir.resolve() in (here, *here.parents):
        # it would be renamed away from under the shell (and everything else) working in it
        return "is the current directory or contains it (choose a folder for the report)"
    try:
        entries = {p.name for p in out_dir.iterdir()}
        figures = out_dir / FIGURES
        extra_figures = (
            [p.name for p in figures.iterdir() if not p.name.endswith((".svg", ".png"))]
            if figures.is_dir()
            else []
        )
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if not entries:
        return None
    if not (MARKER in entries or {"index.html", "metrics.json"} <= entries):
        return "exists and is not a crossentropy report (choose a new or empty directory)"
    # An earlier report is replaced whole: anything else in it would be deleted with it.
    ours = {MARKER, "index.html", "metrics.json", FIGURES}
    foreign = sorted((entries - ours) | set(extra_figures))
    if foreign or (FIGURES in entries and not figures.is_dir()):
        shown = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
        return (
            f"holds files the report did not write ({shown or FIGURES}); they would be deleted "
            "with the old report: move them, or choose another directory"
        )
    return None


def _build(
    results: DemoResults, folder: Path, t: Texts, clock: Callable[[], float] | None
) -> ReportFiles:
    figure_dir = folder / FIGURES
    figure_dir.mkdir()
    sections = build_sections(results, t)
    figures = (
        *draw_nielsen(results.nielsen, figure_dir, t),
        *draw_anatomy(results.anatomy, figure_dir, t),
        *draw_neuron(results.neuron, figure_dir, t),
        draw_neuron_png(results.neuron, figure_dir / "saturated_neuron.png", t),
        *draw_race(results.race, figure_dir, t),
        *draw_checks(results.checks, figure_dir, t, FD_TOLERANCE, TORCH_TOLERANCE),
        *draw_origin(results.origin, figure_dir, t),
        *draw_links(results.links, figure_dir, t),
        *draw_identities(results.identities, figure_dir, t),
        *draw_hidden(results.hidden, figure_dir, t),
    )
    v = versions(results)
    metrics = folder / "metrics.json"
    metrics.write_text(
        json.dumps(build_metrics(results, sections, v, t.lang), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    index = folder / "index.html"
    # The run time the page quotes, read once everything it reports on is done.
    seconds = clock() if clock is not None else sum(results.seconds.values())
    index.write_text(
        render_html(results, sections, v, figure_dir, t, seconds=seconds), encoding="utf-8"
    )
    (folder / MARKER).write_text("", encoding="utf-8")
    return ReportFiles(
        index=index, metrics=metrics, figures=figures, sections=tuple(sections), seconds=seconds
    )


def write_report(
    results: DemoResults,
    out_dir: Path,
    lang: str = "en",
    clock: Callable[[], float] | None = None,
) -> ReportFiles:
    """Write ``index.html``, ``metrics.json`` and ``figures/`` as the folder ``out_dir``.

    The report is built in a temporary folder beside ``out_dir`` and renamed into place;
    an earlier report in ``out_dir`` is replaced only once the new one is complete.
    ``clock()`` gives the run time the page quotes, read when the figures are drawn (default:
    the experiments' own time); it is returned as ``seconds``, for the terminal to quote too.
    Returns the paths written and the sections (claims, tables, verdicts).
    """
    if lang not in LANGUAGES:
        raise ValueError(f"write_report: lang must be one of {LANGUAGES}, got {lang!r}")
    out_dir = Path(out_dir).absolute()
    reason = replaceable(out_dir)
    if reason is not None:
        raise FileExistsError(
            f"write_report: out_dir must be new, empty or a report, got "
            f"{str(out_dir)!r}, which {reason}"
        )
    parent = out_dir.absolute().parent
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=parent))
    old: Path | None = None
    try:
        built = _build(results, tmp, Texts(lang), clock)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; a report folder is not
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=parent))
            os.rename(out_dir, old / out_dir.name)
        try:
            os.rename(tmp, out_dir)
        except BaseException:
            if old is not None:  # put the previous report back
                os.rename(old / out_dir.name, out_dir)
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not (old / out_dir.name).exists():
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    final = out_dir
    return ReportFiles(
        index=final / "index.html",
        metrics=final / "metrics.json",
        figures=tuple(final / FIGURES / p.name for p in built.figures),
        sections=built.sections,
        seconds=built.seconds,
    )


__all__ = ["MARKER", "ReportFiles", "build_sections", "replaceable", "write_report"]
