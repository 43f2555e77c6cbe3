"""The report: files, metrics.json, HTML structure, verdicts that follow the measurements, and
the page opened in a real headless browser."""

from __future__ import annotations

import dataclasses
import html as html_lib
import json
import math
import re
import shutil
import struct
import subprocess
from pathlib import Path

import pytest

from crossentropy.experiments import DemoResults, DemoSettings, run_demo
from crossentropy.report import ReportFiles, write_report
from crossentropy.report.metrics import _num
from crossentropy.report.sections import (
    CONFIRMED,
    MIXED,
    NOT_CONFIRMED,
    neuron_section,
    race_section,
)

FIGURES = {
    "gradient_anatomy.png",
    "saturated_neuron.png",
    "race_curves.png",
    "derivation_checks.png",
    "identities.png",
}


@pytest.fixture(scope="module")
def results() -> DemoResults:
    return run_demo(DemoSettings(quick=True, seed=0))


@pytest.fixture(scope="module")
def report(results: DemoResults, tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(results, tmp_path_factory.mktemp("report"))


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (and a check of its signature)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def referenced_files(html: str) -> list[str]:
    return re.findall(r'(?:src|href)="([^"#][^"]*)"', html)


def test_report_writes_every_figure_as_a_real_png(report: ReportFiles) -> None:
    assert {p.name for p in report.figures} == FIGURES
    for path in report.figures:
        width, height = png_size(path)
        assert width > 300 and height > 150


def test_html_references_every_figure_and_only_local_files(report: ReportFiles) -> None:
    html = report.index.read_text(encoding="utf-8")
    refs = referenced_files(html)
    assert FIGURES <= set(refs)
    for ref in refs:
        assert "://" not in ref, f"network reference {ref}"
        assert (report.index.parent / ref).is_file(), f"{ref} is referenced but missing"
    assert "<script" not in html
    assert re.search(r"<link[^>]+stylesheet", html) is None  # CSS is inline


def test_each_section_has_claim_figure_table_and_verdict(report: ReportFiles) -> None:
    html = report.index.read_text(encoding="utf-8")
    for s in report.sections:
        start = html.index(f'<section id="{s.key}">')
        block = html[start : html.index("</section>", start)]
        assert 'class="claim"' in block
        assert f'src="{s.figure}"' in block
        assert "<table" in block
        assert "Measured in this run:" in block


def test_metrics_json_has_the_required_keys_and_the_measured_values(
    report: ReportFiles, results: DemoResults
) -> None:
    m = json.loads(report.metrics.read_text(encoding="utf-8"))
    assert len(m["races"]) == len(results.race.runs) == 8
    for row, run in zip(m["races"], results.race.runs, strict=True):
        for key in (
            "experiment",
            "dataset",
            "init",
            "loss",
            "learning_rate",
            "steps_to_target",
            "final_accuracy",
            "final_log_loss",
        ):
            assert key in row
        assert row["loss"] in ("mse", "cross_entropy")
        assert row["steps_to_target"] == run.steps_to_target
        assert row["steps_to_target"] is None or isinstance(row["steps_to_target"], int)
        assert row["final_accuracy"] == run.final_accuracy
        assert row["learning_rate"] in results.settings.race_grid
    assert m["gradient_checks"] and all(
        {"name", "max_abs_error"} <= set(c) for c in m["gradient_checks"]
    )
    assert len({c["name"] for c in m["gradient_checks"]}) == len(m["gradient_checks"])
    assert len(m["identities"]) == 4
    for ident in m["identities"]:
        assert {"name", "lhs", "rhs", "abs_error"} <= set(ident)
        assert ident["abs_error"] == pytest.approx(abs(ident["lhs"] - ident["rhs"]), abs=1e-18)
    assert [v["section"] for v in m["verdicts"]] == [s.key for s in report.sections]


def test_json_has_no_nan() -> None:
    assert _num(math.nan) is None and _num(math.inf) is None and _num(1.5) == 1.5


def test_neuron_verdict_follows_the_measurement(results: DemoResults) -> None:
    s = neuron_section(results)
    mse = results.neuron.run("saturated", "mse").steps_to_correct
    bce = results.neuron.run("saturated", "cross_entropy").steps_to_correct
    assert f"cross-entropy needed {bce} steps and MSE {mse}" in s.verdict
    assert s.status == CONFIRMED
    # Swap the two losses' results: the same code must now say "not confirmed".
    swapped = tuple(
        dataclasses.replace(r, loss="mse" if r.loss == "cross_entropy" else "cross_entropy")
        for r in results.neuron.runs
    )
    flipped = dataclasses.replace(results, neuron=dataclasses.replace(results.neuron, runs=swapped))
    assert neuron_section(flipped).status == NOT_CONFIRMED


def test_race_verdict_follows_the_measurement(results: DemoResults) -> None:
    race = results.race

    def with_steps(sat_mse: int | None, sat_ce: int | None) -> DemoResults:
        runs = tuple(
            dataclasses.replace(r, steps_to_target=sat_ce if r.loss == "cross_entropy" else sat_mse)
            if r.init == "saturated"
            else r
            for r in race.runs
        )
        return dataclasses.replace(results, race=dataclasses.replace(race, runs=runs))

    assert race_section(with_steps(10, 3)).status == CONFIRMED
    assert race_section(with_steps(3, 10)).status == NOT_CONFIRMED
    assert race_section(with_steps(None, None)).status == NOT_CONFIRMED
    mixed = with_steps(3, 10)
    first = next(r for r in mixed.race.runs if r.init == "saturated" and r.loss == "mse")
    runs = tuple(
        dataclasses.replace(r, steps_to_target=None) if r is first else r for r in mixed.race.runs
    )
    mixed = dataclasses.replace(mixed, race=dataclasses.replace(mixed.race, runs=runs))
    assert race_section(mixed).status == MIXED
    s = race_section(results)
    assert "MSE" in s.verdict and str(len(race.runs) // 2) in s.verdict


# -- a real browser -------------------------------------------------------------------------

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || e.target.href))));
}, true);
window.addEventListener("load", function () {
  var images = Array.prototype.map.call(document.images, function (img) {
    return {src: img.getAttribute("src"), width: img.naturalWidth, complete: img.complete};
  });
  var out = document.createElement("pre");
  out.id = "probe";
  var sections = document.querySelectorAll("section").length;
  out.textContent = JSON.stringify({images: images, errors: window.__errors, sections: sections});
  document.body.appendChild(out);
});
</script>"""

BROWSER_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",
]


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.slow
def test_report_loads_in_a_headless_browser(report: ReportFiles, tmp_path: Path) -> None:
    browser = find_browser()
    if browser is None:
        pytest.skip("no headless browser installed (chromium not found on PATH); CI installs it")
    # A copy of the page beside the figures, with a probe that records every image's natural
    # width and any error once the page has loaded.
    html = report.index.read_text(encoding="utf-8")
    probe_page = report.index.parent / "probe.html"
    probe_page.write_text(html.replace("<head>", "<head>\n" + PROBE, 1), encoding="utf-8")
    try:
        proc = subprocess.run(
            [
                browser,
                *BROWSER_FLAGS,
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                probe_page.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=90,
            check=False,
        )
    finally:
        probe_page.unlink()
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"probe not found (exit {proc.returncode}): {proc.stderr[-2000:]}"
    probe = json.loads(html_lib.unescape(match.group(1)))
    assert probe["errors"] == []
    assert probe["sections"] == 1 + len(report.sections)  # summary + five parts
    assert {img["src"] for img in probe["images"]} == FIGURES
    for img in probe["images"]:
        assert img["complete"] and img["width"] > 0, img
