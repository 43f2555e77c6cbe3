"""Render the demo's results: PNG figures, ``metrics.json``, a self-contained ``index.html``,
and the terminal summary.

The experiments (:mod:`crossentropy.experiments`) only compute; everything that draws, writes
or prints lives here.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import __version__
from ..experiments import DemoResults
from .figures import draw_anatomy, draw_checks, draw_identities, draw_neuron, draw_race
from .html import render_html
from .metrics import build_metrics
from .sections import Section, build_sections


@dataclass(frozen=True)
class ReportFiles:
    """Where the report was written."""

    index: Path
    metrics: Path
    figures: tuple[Path, ...]
    sections: tuple[Section, ...]


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


def write_report(results: DemoResults, out_dir: Path) -> ReportFiles:
    """Write figures, ``metrics.json`` and ``index.html`` into ``out_dir`` (which must exist).

    Returns the paths written and the sections (claims, tables, verdicts).
    """
    out_dir = Path(out_dir)
    sections = build_sections(results)
    figure_of = {s.key: out_dir / s.figure for s in sections}
    figures = (
        draw_anatomy(results.anatomy, figure_of["gradient_anatomy"]),
        draw_neuron(results.neuron, figure_of["saturated_neuron"]),
        draw_race(results.race, figure_of["fair_race"]),
        draw_checks(results.checks, figure_of["derivation_checks"]),
        draw_identities(results.identities, figure_of["identities"]),
    )
    v = versions(results)
    metrics = out_dir / "metrics.json"
    metrics.write_text(
        json.dumps(build_metrics(results, sections, v), indent=2, allow_nan=False) + "\n",
        encoding="utf-8",
    )
    index = out_dir / "index.html"
    index.write_text(render_html(results, sections, v), encoding="utf-8")
    return ReportFiles(index=index, metrics=metrics, figures=figures, sections=tuple(sections))


__all__ = ["ReportFiles", "build_sections", "write_report"]
