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

# Chromium copies every console message of the page (and every uncaught error) to stderr
CONSOLE = ["--enable-logging=stderr", "--v=0"]

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
    // every text of the figure: titles, axis labels, legends, ticks
    var texts = Array.prototype.map.call(svg.querySelectorAll("text"), function (t) {
      var r = t.getBoundingClientRect();
      return {text: t.textContent.trim(), left: r.left - frame.left, right: r.right - frame.left,
              top: r.top - frame.top, bottom: r.bottom - frame.top};
    });
    doc.body.removeChild(holder);
    return {file: img.getAttribute("data-file"), width: frame.width, height: frame.height,
            legend: heights, ticks: ticks, texts: texts};
  });
}
function probeBars(doc, win) {
  // The H(p, q) bars: what is drawn, then a pointer drag, arrow keys and the buttons.
  var svg = doc.getElementById("hpq-svg");
  if (!svg) { return null; }
  function bar(dist, i) {
    return svg.querySelector("rect.bar[data-dist=" + dist + "][data-i='" + i + "']");
  }
  function hit(dist, i) {
    return svg.querySelector("rect.hit[data-dist=" + dist + "][data-i='" + i + "']");
  }
  function heights(dist) {
    return Array.prototype.map.call(svg.querySelectorAll("rect.bar[data-dist=" + dist + "]"),
                                    function (r) { return Number(r.getAttribute("height")); });
  }
  function values(dist) {
    return Array.prototype.map.call(
      svg.querySelectorAll("rect.hit[data-dist=" + dist + "]"),
      function (r) { return Number(r.getAttribute("aria-valuenow")); });
  }
  var readout = function () { return doc.getElementById("hpq-readout").textContent; };
  var box = svg.getBoundingClientRect();
  var aria = Array.prototype.map.call(svg.querySelectorAll("rect.hit"), function (r) {
    return {role: r.getAttribute("role"), tabindex: r.getAttribute("tabindex"),
            label: r.getAttribute("aria-label"), min: r.getAttribute("aria-valuemin"),
            max: r.getAttribute("aria-valuemax"), now: r.getAttribute("aria-valuenow"),
            orientation: r.getAttribute("aria-orientation")};
  });
  var out = {bars: svg.querySelectorAll("rect.bar").length, width: box.width,
             height: box.height, heightsP: heights("p"), heightsQ: heights("q"),
             klWidth: Number(doc.getElementById("hpq-kl").getAttribute("width")),
             readout: readout(),
             library: JSON.parse(doc.getElementById("hpq-data").textContent).library,
             aria: aria, howtoShown: !doc.getElementById("hpq-howto").hidden,
             buttonsShown: doc.getElementById("hpq-buttons").getBoundingClientRect().height > 0};
  if (!out.howtoShown) { return out; }
  // drag q's first bar up to about 0.8, by pointer events at its screen position
  var target = hit("q", 0), r = target.getBoundingClientRect();
  var x = r.left + r.width / 2, from = bar("q", 0).getBoundingClientRect().top;
  var to = r.top + r.height * 0.25;
  function pointer(type, y) {
    target.dispatchEvent(new win.PointerEvent(type, {bubbles: true, cancelable: true,
      clientX: x, clientY: y, pointerId: 7, pointerType: "mouse", isPrimary: true}));
  }
  var live = function () { return doc.getElementById("hpq-readout").getAttribute("aria-live"); };
  out.liveBefore = live();
  pointer("pointerdown", from);
  pointer("pointermove", (from + to) / 2);
  pointer("pointermove", to);
  out.liveDragging = live();
  pointer("pointerup", to);
  out.liveAfter = live();
  out.dragged = {heightsQ: heights("q"), valuesQ: values("q"), readout: readout(),
                 klWidth: Number(doc.getElementById("hpq-kl").getAttribute("width"))};
  // keyboard: Tab reaches a bar (it is focusable), arrows move it, Home sends it to the floor
  var key = hit("p", 2);
  key.focus();
  out.focused = doc.activeElement === key;
  out.tabindex = key.getAttribute("tabindex");
  var before = values("p");
  function press(name) {
    key.dispatchEvent(new win.KeyboardEvent("keydown", {key: name, bubbles: true,
                                                        cancelable: true}));
  }
  press("ArrowUp"); press("ArrowUp"); press("ArrowUp");
  out.keys = {before: before, up: values("p"), readout: readout(), heightsP: heights("p")};
  press("Home");
  out.keys.home = values("p");
  press("End");
  out.keys.end = values("p");
  out.keys.endMax = Number(key.getAttribute("aria-valuemax"));
  out.keys.endNow = Number(key.getAttribute("aria-valuenow"));
  doc.getElementById("hpq-equal").click();
  out.equal = {readout: readout(), valuesQ: values("q"), valuesP: values("p"),
               klWidth: Number(doc.getElementById("hpq-kl").getAttribute("width"))};
  doc.getElementById("hpq-reset").click();
  out.reset = {readout: readout(), heightsQ: heights("q")};
  return out;
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
  out.hpq = probeBars(doc, win);
  // what the page fetched: nothing (it is one file; the figures are data URIs)
  out.resources = win.performance.getEntriesByType("resource").map(function (e) {
    return e.name;
  });
  // the folded tables: closed at first, then opened as a reader would
  var folds = doc.querySelectorAll("details.numbers");
  out.folds = {count: folds.length, closed: [], open: [], shownClosed: 0, shownOpen: 0};
  function shown(d) { return d.querySelector("table").checkVisibility() ? 1 : 0; }
  Array.prototype.forEach.call(folds, function (d) {
    out.folds.closed.push(d.getBoundingClientRect().height);
    out.folds.shownClosed += shown(d);
  });
  Array.prototype.forEach.call(folds, function (d) { d.open = true; });
  Array.prototype.forEach.call(folds, function (d) {
    out.folds.open.push(d.getBoundingClientRect().height);
    out.folds.shownOpen += shown(d);
  });
  out.folds.scrollWidth = root.scrollWidth;
  Array.prototype.forEach.call(folds, function (d) { d.open = false; });
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
    out.sliderText = {z0: z0.getAttribute("aria-valuetext"), z0Index: z0.value,
                      z0Shown: doc.getElementById("play-z0-value").textContent};
    var lr = doc.getElementById("play-lr");
    lr.value = String(Number(lr.max));
    lr.dispatchEvent(new win.Event("input", {bubbles: true}));
    out.afterRate = line();
    out.sliderText.lr = lr.getAttribute("aria-valuetext");
    out.sliderText.lrShown = doc.getElementById("play-lr-value").textContent;
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
                *CONSOLE,
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
    # what the pages wrote to the console: uncaught errors and console.* calls
    found["console"] = re.findall(r"INFO:CONSOLE[^\]]*\] (.*)", proc.stderr)
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
    assert len(figures) == 16
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


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", list(FRAMES))
def test_the_folded_tables_open_without_widening_the_page(
    probed: dict[str, dict[str, Any]], reports: dict[str, ReportFiles], lang: str, frame: str
) -> None:
    folds = probed[lang][frame]["folds"]
    assert folds["count"] == sum(1 for s in reports[lang].sections if s.tables)
    # folded: one line each, the tables not drawn; opened, every table is shown
    assert folds["shownClosed"] == 0 and all(h < 60 for h in folds["closed"])
    assert folds["shownOpen"] == folds["count"]
    assert all(o > c + 60 for o, c in zip(folds["open"], folds["closed"], strict=True))
    assert folds["scrollWidth"] <= FRAMES[frame][0]  # wide tables scroll in their own box


# -- the teaching parts (issue 18) ---------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_no_console_errors(probed: dict[str, dict[str, Any]], lang: str) -> None:
    """Nothing written to the console by any frame: no uncaught error, no console.error.
    (The sandboxed frames' "Blocked script execution" is the harness turning JavaScript off.)"""
    messages = probed[lang]["console"]
    blocked = [m for m in messages if m.startswith('"Blocked script execution')]
    assert len(blocked) == 2  # one per frame without scripts: the log is being read
    assert [m for m in messages if m not in blocked] == []


def _nats(x: float) -> str:
    return f"{x:.3f}"


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", ["wide", "narrow"])
def test_dragging_a_bar_changes_the_drawing(
    probed: dict[str, dict[str, Any]], lang: str, frame: str
) -> None:
    bars = probed[lang][frame]["hpq"]
    assert bars["bars"] == 8 and bars["howtoShown"] and bars["buttonsShown"]
    # the script starts from the library's numbers: its sums give the same three values
    lib = bars["library"]
    for value in (lib["h"], lib["kl"], lib["hpq"]):
        assert _nats(value) in bars["readout"], (value, bars["readout"])
    dragged = bars["dragged"]
    assert dragged["heightsQ"][0] > 2 * bars["heightsQ"][0]  # the bar followed the pointer
    assert 0.7 < dragged["valuesQ"][0] < 0.9
    assert sum(dragged["valuesQ"]) == pytest.approx(1, abs=2e-3)  # the others made room
    assert all(h < h0 for h, h0 in zip(dragged["heightsQ"][1:], bars["heightsQ"][1:], strict=True))
    assert dragged["readout"] != bars["readout"]
    assert dragged["klWidth"] != bars["klWidth"]  # the KL part of the bar below moved too


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_bars_work_from_the_keyboard(probed: dict[str, dict[str, Any]], lang: str) -> None:
    bars = probed[lang]["wide"]["hpq"]
    assert bars["focused"] and bars["tabindex"] == "0"  # reachable with Tab
    keys = bars["keys"]
    assert keys["up"][2] == pytest.approx(keys["before"][2] + 0.06, abs=1e-3)  # 3 × 0.02
    assert sum(keys["up"]) == pytest.approx(1, abs=2e-3)
    assert keys["readout"] != bars["dragged"]["readout"]
    assert keys["home"][2] == pytest.approx(0.01, abs=1e-3)  # Home: the smallest allowed
    # q = p: the code is the best one, KL(p‖q) = 0 and H(p, q) = H(p)
    equal = bars["equal"]
    assert equal["valuesQ"] == equal["valuesP"]
    assert equal["klWidth"] == 0
    kl = "KL(p‖q) = 0.000"
    assert kl in equal["readout"]
    # back to the example: the library's numbers again
    assert bars["reset"]["readout"] == bars["readout"]
    assert bars["reset"]["heightsQ"] == pytest.approx(bars["heightsQ"], abs=0.01)


@pytest.mark.parametrize("frame", ["wide_nojs", "narrow_nojs"])
def test_without_javascript_the_bars_show_the_librarys_example(
    probed: dict[str, dict[str, Any]], frame: str
) -> None:
    bars = probed["en"][frame]["hpq"]
    assert bars["bars"] == 8 and all(h > 10 for h in bars["heightsP"] + bars["heightsQ"])
    assert bars["width"] > 250 and bars["height"] > 150  # drawn, readable at 360 px
    assert not bars["howtoShown"] and not bars["buttonsShown"]  # no dead controls
    lib = bars["library"]
    for value in (lib["h"], lib["kl"], lib["hpq"]):
        assert _nats(value) in bars["readout"]
    assert bars["klWidth"] > 0


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
        "desktop.png": ("en", 1280, 2400, ""),
        "narrow-360.png": ("en", 360, 2600, ""),
        "zh.png": ("zh", 1280, 2400, ""),
    }
    # the teaching parts (issue 18), each from its heading: desktop, 360 px and Chinese
    for anchor in ("nielsen", "cost_origin", "canonical_link", "hpq-play", "hidden_layer"):
        shots[f"teaching-desktop-{anchor}.png"] = ("en", 1280, 1500, anchor)
    for anchor in ("nielsen", "hpq-play", "hidden_layer"):
        shots[f"teaching-360-{anchor}.png"] = ("en", 360, 2200, anchor)
        shots[f"teaching-zh-{anchor}.png"] = ("zh", 1280, 1500, anchor)
    for name, (lang, width, height, anchor) in shots.items():
        path = target / name
        # Headless Chromium lays a window out at least 500 px wide: a frame of exactly the
        # width wanted shows the page as a phone would.
        frame = reports[lang].index.parent / f"shot-{width}.html"
        src = f"index.html#{anchor}" if anchor else "index.html"
        frame.write_text(
            f"<!DOCTYPE html><body style='margin:0'><iframe src='{src}' "
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


# -- found by a hostile review of the teaching page --------------------------------------------


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", ["narrow", "wide"])
def test_no_text_of_a_figure_is_cut_off(
    probed: dict[str, dict[str, Any]], lang: str, frame: str
) -> None:
    """Every title, axis label, legend entry and tick inside its figure: the y labels of five
    figures ("∂L/∂z (library)", "|∂L/∂z| (log scale)", "gradient norm (log scale)", …) began a
    few pixels left of the figure's edge, where the browser cut them."""
    for fig in probed[lang][frame]["svgText"]:
        assert len(fig["texts"]) > 5, fig["file"]
        for text in fig["texts"]:
            assert text["left"] >= 0 and text["right"] <= fig["width"], (fig["file"], text)
            assert text["top"] >= 0 and text["bottom"] <= fig["height"], (fig["file"], text)


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", list(FRAMES))
def test_the_page_fetches_nothing(probed: dict[str, dict[str, Any]], lang: str, frame: str) -> None:
    """Offline by construction: no stylesheet, font, script or image is requested."""
    assert probed[lang][frame]["resources"] == []


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize("frame", ["wide", "narrow"])
def test_the_bars_are_announced_as_sliders_with_their_real_range(
    probed: dict[str, dict[str, Any]], lang: str, frame: str
) -> None:
    """Each bar is a named vertical slider whose aria-valuemax is the largest value it can
    take (the other three keep 0.01 each): it said 1 while End stopped at 0.97."""
    bars = probed[lang][frame]["hpq"]
    assert len(bars["aria"]) == 8
    labels = [a["label"] for a in bars["aria"]]
    assert len(set(labels)) == 8 and all(labels)  # each bar has a name of its own
    for a in bars["aria"]:
        assert a["role"] == "slider" and a["tabindex"] == "0"
        assert a["orientation"] == "vertical"
        assert float(a["min"]) == pytest.approx(0.01)
        assert float(a["max"]) == pytest.approx(1 - 3 * 0.01)
        assert float(a["min"]) <= float(a["now"]) <= float(a["max"])
    keys = bars["keys"]
    assert keys["end"][2] == pytest.approx(keys["endMax"], abs=1e-3)  # End: the largest allowed
    assert keys["endNow"] == pytest.approx(keys["endMax"], abs=1e-3)
    assert sum(keys["end"]) == pytest.approx(1, abs=1e-9)


@pytest.mark.parametrize("frame", ["wide_nojs", "narrow_nojs"])
def test_without_javascript_the_bars_are_not_announced_as_controls(
    probed: dict[str, dict[str, Any]], frame: str
) -> None:
    """Without the script a bar cannot move: it is named, but no slider and no tab stop."""
    bars = probed["en"][frame]["hpq"]
    assert len(bars["aria"]) == 8
    for a in bars["aria"]:
        assert a["label"] and a["role"] is None and a["tabindex"] is None


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_the_neuron_sliders_announce_their_values_not_their_indices(
    probed: dict[str, dict[str, Any]], lang: str
) -> None:
    """The range inputs step through grid indices (0, 1, …): a screen reader said "0" for the
    grid's first start. They carry the value shown beside them as aria-valuetext."""
    text = probed[lang]["wide"]["sliderText"]
    assert text["z0Index"] == "0"
    assert text["z0"] == text["z0Shown"] and "a₀ = " in text["z0"]
    assert text["lr"] == text["lrShown"] and float(text["lr"]) > 0


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_a_drag_is_announced_once_when_it_ends(
    probed: dict[str, dict[str, Any]], lang: str
) -> None:
    """The sums' live region spoke on every pointer move of a drag; now it is quiet while the
    bar moves and speaks the final sums when the pointer lets go."""
    bars = probed[lang]["wide"]["hpq"]
    assert bars["liveBefore"] == "polite"
    assert bars["liveDragging"] == "off"
    assert bars["liveAfter"] == "polite"
