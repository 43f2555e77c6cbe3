"""The report in a real browser (headless Chromium): no horizontal scroll at 360 and 1280 px,
MathML rendered with a real size, a slider that redraws the curve, every static figure shown
with JavaScript off, the Chinese page's terms on screen; screenshots for the record.

One harness page loads the report in four frames: 1280 px and 360 px wide, each with and
without scripts (a sandboxed frame runs none). A probe script in the harness inspects the
frames' laid-out documents and writes its findings into the DOM that ``--dump-dom`` returns.
Set ``CROSSENTROPY_SCREENSHOTS=DIR`` to keep the screenshots (desktop, 360 px, zh) in DIR.
"""

from __future__ import annotations

import html as html_lib
import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

# The demo's report draws with matplotlib ([demo] extra): skipped without it.
pytest.importorskip("matplotlib")

from conftest import CHROMIUM_FLAGS
from crossentropy.experiments import DemoResults, DemoSettings, run_demo
from crossentropy.report import ReportFiles, write_report

pytestmark = pytest.mark.slow

FLAGS = [
    *CHROMIUM_FLAGS,
    "--allow-file-access-from-files",  # the harness may read its frames' documents
    "--virtual-time-budget=20000",
]

FRAMES = {
    "wide": (1280, ""),
    "narrow": (360, ""),
    "wide_nojs": (1280, 'sandbox="allow-same-origin"'),
    "narrow_nojs": (360, 'sandbox="allow-same-origin"'),
}

PROBE = r"""
function measureFigures(doc, win) {
  // Each embedded SVG drawn inline at the size its <img> is shown, to measure its text as
  // the browser lays it out: the legends' height and the tick labels against the viewBox.
  return Array.prototype.map.call(doc.querySelectorAll("section img"), function (img) {
    var source = decodeURIComponent(escape(win.atob(img.getAttribute("src").split(",")[1])));
    var parsed = new win.DOMParser().parseFromString(source, "image/svg+xml").documentElement;
    var svg = doc.importNode(parsed, true);
    svg.setAttribute("width", img.clientWidth);
    svg.setAttribute("height", img.clientHeight);
    var holder = doc.createElement("div");
    holder.style.cssText = "position:absolute;left:0;top:0;visibility:hidden";
    holder.appendChild(svg);
    doc.body.appendChild(holder);
    var frame = svg.getBoundingClientRect();
    var heights = Array.prototype.map.call(
      svg.querySelectorAll("g[id^=legend] text"),
      function (t) { return t.getBoundingClientRect().height; });
    var ticks = Array.prototype.map.call(
      svg.querySelectorAll("g[id^=xtick] text, g[id^=ytick] text"), function (t) {
        var r = t.getBoundingClientRect();
        return {x: t.closest("g[id^=xtick]") !== null, text: t.textContent.trim(),
                left: r.left - frame.left, right: r.right - frame.left,
                top: r.top - frame.top, bottom: r.bottom - frame.top};
      });
    doc.body.removeChild(holder);
    return {file: img.getAttribute("data-file"), width: frame.width, height: frame.height,
            legend: heights, ticks: ticks};
  });
}
function inspect(frame) {
  var doc = frame.contentDocument, win = frame.contentWindow;
  var root = doc.documentElement, width = root.clientWidth;
  var wide = [];
  Array.prototype.forEach.call(doc.body.querySelectorAll("*"), function (e) {
    if (e.closest(".scroll, .eq, .play svg, noscript, script, style")) { return; }
    var r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > width + 1) {
      wide.push(e.tagName + "." + e.className + " " + Math.round(r.right));
    }
  });
  var maths = Array.prototype.map.call(doc.querySelectorAll("math"), function (m) {
    var r = m.getBoundingClientRect();
    return [r.width, r.height];
  });
  var figures = Array.prototype.map.call(doc.querySelectorAll("section img"), function (img) {
    var r = img.getBoundingClientRect(), style = win.getComputedStyle(img);
    return {file: img.getAttribute("data-file"), natural: img.naturalWidth, width: r.width,
            height: r.height, visible: style.visibility !== "hidden" && style.display !== "none",
            section: img.closest("section").id};
  });
  var play = doc.getElementById("play");
  var live = doc.getElementById("play-output");
  var out = {scrollWidth: root.scrollWidth, clientWidth: width, wide: wide.slice(0, 10),
             playWidth: live ? Math.round(live.getBoundingClientRect().width) : null,
             viewBoxWidth: live ? Number(live.getAttribute("viewBox").split(" ")[2]) : null,
             maths: maths, figures: figures, playShown: !!play && !play.hidden &&
             play.getBoundingClientRect().height > 0,
             noscriptShown: false, text: doc.body.innerText.slice(0, 200000),
             svgText: measureFigures(doc, win)};
  var ns = doc.querySelector("noscript");
  if (ns) {
    out.noscriptShown = doc.body.innerText.indexOf(ns.textContent.trim().slice(0, 20)) >= 0;
  }
  if (out.playShown) {
    var line = function () {
      var p = doc.querySelector("#play-output polyline[data-loss=mse]");
      return p ? p.getAttribute("points") : null;
    };
    var summary = function () { return doc.getElementById("play-summary").textContent; };
    out.before = line(); out.summaryBefore = summary();
    var z0 = doc.getElementById("play-z0");
    z0.value = "0";
    z0.dispatchEvent(new win.Event("input", {bubbles: true}));
    out.after = line(); out.summaryAfter = summary();
    var lr = doc.getElementById("play-lr");
    lr.value = String(Number(lr.max));
    lr.dispatchEvent(new win.Event("input", {bubbles: true}));
    out.afterRate = line();
  }
  return out;
}
window.addEventListener("load", function () {
  var result = {};
  Array.prototype.forEach.call(document.querySelectorAll("iframe"), function (f) {
    try { result[f.id] = inspect(f); } catch (e) { result[f.id] = {error: String(e)}; }
  });
  var pre = document.createElement("pre");
  pre.id = "probe";
  pre.textContent = JSON.stringify(result);
  document.body.appendChild(pre);
});
"""


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.fixture(scope="module")
def browser() -> str:
    path = find_browser()
    if path is None:
        pytest.skip("no headless browser installed (chromium not found on PATH); CI installs it")
    return path


@pytest.fixture(scope="module")
def results() -> DemoResults:
    return run_demo(DemoSettings(quick=True, seed=0))


@pytest.fixture(scope="module")
def reports(
    results: DemoResults, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ReportFiles]:
    base = tmp_path_factory.mktemp("browser")
    return {lang: write_report(results, base / lang, lang=lang) for lang in ("en", "zh")}


def probe(browser: str, report: ReportFiles, profile: Path) -> dict[str, Any]:
    frames = "\n".join(
        f'<iframe id="{name}" src="index.html" {attrs} '
        f'style="width:{width}px;height:900px;border:0;display:block"></iframe>'
        for name, (width, attrs) in FRAMES.items()
    )
    harness = report.index.parent / "harness.html"
    harness.write_text(
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><script>{PROBE}</script></head>"
        f"<body style='margin:0;width:1400px'>{frames}</body></html>",
        encoding="utf-8",
    )
    try:
        proc = subprocess.run(
            [
                browser,
                *FLAGS,
                "--window-size=1400,1000",
                f"--user-data-dir={profile}",
                "--dump-dom",
                harness.as_uri(),
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        harness.unlink()
    match = re.search(r'<pre id="probe">(.*?)</pre>', proc.stdout, re.S)
    assert match, f"probe not found (exit {proc.returncode}): {proc.stderr[-2000:]}"
    found: dict[str, Any] = json.loads(html_lib.unescape(match.group(1)))
    for name, frame in found.items():
        assert "error" not in frame, (name, frame)
    return found


@pytest.fixture(scope="module")
def probed(
    browser: str, reports: dict[str, ReportFiles], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    profile = tmp_path_factory.mktemp("profile")
    return {lang: probe(browser, files, profile) for lang, files in reports.items()}


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", list(FRAMES))
def test_no_horizontal_scroll(probed: dict[str, dict[str, Any]], lang: str, frame: str) -> None:
    f = probed[lang][frame]
    assert f["clientWidth"] == FRAMES[frame][0]
    assert f["scrollWidth"] <= f["clientWidth"], f["wide"]
    assert f["wide"] == []


@pytest.mark.parametrize("frame", ["wide", "narrow"])
def test_mathml_is_rendered_with_a_real_size(probed: dict[str, dict[str, Any]], frame: str) -> None:
    maths = probed["en"][frame]["maths"]
    assert len(maths) >= 20
    for width, height in maths:
        assert width > 10 and height > 8  # laid out as formulas, not collapsed or hidden
    # a fraction is taller than a line of text: MathML is rendered, not shown as raw text
    assert max(h for _, h in maths) > 30


def test_moving_a_slider_redraws_the_curve(probed: dict[str, dict[str, Any]]) -> None:
    for lang in ("en", "zh"):
        f = probed[lang]["wide"]
        assert f["playShown"]
        assert f["before"] and f["after"] and f["afterRate"]
        assert f["before"] != f["after"] != f["afterRate"]
        assert f["summaryBefore"] != f["summaryAfter"]
    assert "MSE: right after 426 steps" in probed["en"]["wide"]["summaryBefore"]
    # drawn at the size shown, so its text is as large on a phone as on a desktop
    narrow, wide = probed["en"]["narrow"]["playWidth"], probed["en"]["wide"]["playWidth"]
    assert narrow < 360 < wide
    assert probed["en"]["narrow"]["viewBoxWidth"] == narrow


@pytest.mark.parametrize("frame", list(FRAMES))
def test_every_section_shows_its_static_figures(
    probed: dict[str, dict[str, Any]], reports: dict[str, ReportFiles], frame: str
) -> None:
    f = probed["en"][frame]
    expected = {(s.key, fig.file) for s in reports["en"].sections for fig in s.figures}
    assert {(img["section"], img["file"]) for img in f["figures"]} == expected
    for img in f["figures"]:
        assert img["visible"] and img["natural"] > 0, img
        assert img["width"] > 250 and img["height"] > 120, img  # readable even at 360 px


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", ["narrow", "wide"])
def test_legends_are_legible_at_360_px(
    probed: dict[str, dict[str, Any]], lang: str, frame: str
) -> None:
    """They were about 5 px tall on a phone: 7-8 pt in a panel shown ~330 px wide."""
    figures = probed[lang][frame]["svgText"]
    assert len(figures) == 10
    for fig in figures:
        assert fig["legend"], fig["file"]  # every figure has a legend
        assert min(fig["legend"]) >= 9, (fig["file"], min(fig["legend"]))


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", ["narrow", "wide"])
def test_the_last_x_tick_label_is_inside_the_figure(
    probed: dict[str, dict[str, Any]], lang: str, frame: str
) -> None:
    """It was cut off by the viewBox: the derivation chart's 10⁻³ ended past the edge."""
    for fig in probed[lang][frame]["svgText"]:
        xs = [tick for tick in fig["ticks"] if tick["x"]]
        last = max(xs, key=lambda tick: tick["right"])
        assert last["right"] <= fig["width"], (fig["file"], last)
        for tick in fig["ticks"]:
            assert tick["left"] >= 0 and tick["right"] <= fig["width"], (fig["file"], tick)
            assert tick["top"] >= 0 and tick["bottom"] <= fig["height"], (fig["file"], tick)


def test_without_javascript_the_sliders_give_way_to_a_note(
    probed: dict[str, dict[str, Any]],
) -> None:
    for frame in ("wide_nojs", "narrow_nojs"):
        f = probed["en"][frame]
        assert not f["playShown"]  # no dead controls
        assert f["noscriptShown"]
        assert "Measured in this run" in f["text"]
    assert not probed["en"]["wide"]["noscriptShown"]


def test_the_chinese_page_shows_the_articles_terms(probed: dict[str, dict[str, Any]]) -> None:
    text = probed["zh"]["narrow"]["text"]
    for term in ("交叉熵", "均方误差", "似然函数", "梯度消失", "《交叉熵损失函数》"):
        assert term in text, term


def test_screenshots(
    browser: str, reports: dict[str, ReportFiles], tmp_path_factory: pytest.TempPathFactory
) -> None:
    target = Path(os.environ.get("CROSSENTROPY_SCREENSHOTS") or tmp_path_factory.mktemp("shots"))
    target.mkdir(parents=True, exist_ok=True)
    profile = tmp_path_factory.mktemp("profile-shots")
    shots = {
        "desktop.png": ("en", 1280, 2400),
        "narrow-360.png": ("en", 360, 2600),
        "zh.png": ("zh", 1280, 2400),
    }
    for name, (lang, width, height) in shots.items():
        path = target / name
        # Headless Chromium lays a window out at least 500 px wide: a frame of exactly the
        # width wanted shows the page as a phone would.
        frame = reports[lang].index.parent / f"shot-{width}.html"
        frame.write_text(
            f"<!DOCTYPE html><body style='margin:0'><iframe src='index.html' "
            f"style='width:{width}px;height:{height}px;border:0;display:block'></iframe>",
            encoding="utf-8",
        )
        proc = subprocess.run(
            [
                browser,
                *FLAGS,
                f"--window-size={width},{height}",
                f"--user-data-dir={profile}",
                f"--screenshot={path}",
                frame.as_uri(),
            ],
            capture_output=True,
            timeout=120,
            check=False,
        )
        frame.unlink()
        assert path.is_file(), proc.stderr[-2000:]
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(data[16:20], "big") == width
