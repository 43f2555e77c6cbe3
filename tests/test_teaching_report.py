"""The teaching parts on the page (issue 18): the opening, the new parts in page order, their
verdicts following the measurements, the folded tables, the static H(p, q) bars, both
languages, and metrics.json."""

from __future__ import annotations

import dataclasses
import json
import re
from html import unescape

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from crossentropy.experiments import DemoResults, DemoSettings, run_demo
from crossentropy.report import ReportFiles, write_report
from crossentropy.report.html import hpq_svg
from crossentropy.report.i18n import LANGUAGES, Texts
from crossentropy.report.sections import (
    CONFIRMED,
    FAILED,
    MIXED,
    NOT_CONFIRMED,
    ORDER,
    PASSED,
    hidden_section,
    link_section,
    nielsen_section,
    origin_section,
)


@pytest.fixture(scope="module")
def results() -> DemoResults:
    return run_demo(DemoSettings(quick=True, seed=0))


@pytest.fixture(scope="module")
def reports(
    results: DemoResults, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, ReportFiles]:
    base = tmp_path_factory.mktemp("teaching")
    return {lang: write_report(results, base / lang, lang=lang) for lang in LANGUAGES}


def html_of(reports: dict[str, ReportFiles], lang: str) -> str:
    return reports[lang].index.read_text(encoding="utf-8")


def block(html: str, key: str) -> str:
    start = html.index(f'<section id="{key}">')
    return html[start : html.index("</section>", start)]


# -- the page opens with the intuition ----------------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_page_opens_with_the_intuition(reports: dict[str, ReportFiles], lang: str) -> None:
    html = html_of(reports, lang)
    t = Texts(lang)
    intro = html.index('<section id="intuition"')
    # before the contents, the claims and the audit table
    assert intro < html.index("<nav ") < html.index('<section id="claims">')
    assert intro < html.index('<section id="summary">')
    assert "</header>" in html[:intro]
    assert t("page.intro_title") in html[intro : html.index("<nav ")]
    # the first part is Nielsen's neuron; the parts come in the order the opening names them
    keys = re.findall(r'<section id="([a-z_]+)">', html)
    parts = [k for k in keys if k not in ("claims", "summary", "glossary")]
    assert parts == [key for key, _ in ORDER]
    text = re.sub(r"<[^>]+>", "", html[intro : html.index("<nav ")])
    for k, (key, _) in enumerate(ORDER, start=1):
        assert str(k) in text, key


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_claims_point_at_the_parts_that_test_them(
    reports: dict[str, ReportFiles], lang: str
) -> None:
    html = html_of(reports, lang)
    claims = block(html, "claims")
    number = {key: k for k, (key, _) in enumerate(ORDER, start=1)}
    sep = "、" if lang == "zh" else ", "
    found = re.findall(r'<span class="note">([^<]*)</span>', claims)
    assert len(found) == 4
    # claim 1 and 2: the likelihood part; claim 4 (softmax): the canonical link and the checks
    assert str(number["identities"]) in found[0] and str(number["identities"]) in found[1]
    expected = sep.join(
        str(n) for n in sorted((number["canonical_link"], number["derivation_checks"]))
    )
    assert expected in found[3]


# -- tables fold behind their figures ----------------------------------------------------------


def test_every_table_is_folded_behind_its_figures(reports: dict[str, ReportFiles]) -> None:
    html = html_of(reports, "en")
    for s in reports["en"].sections:
        b = block(html, s.key)
        assert b.count("<table") == len(s.tables)
        if not s.tables:
            continue
        details = b.index('<details class="numbers">')
        assert b.index("<table") > details  # every table is inside the folded part
        assert b.count("<details") == 1 and b.rindex("</table>") < b.index("</details>")
        first_figure = b.find("<img")
        assert 0 <= first_figure < details, s.key  # a figure comes first
        assert b.index('class="verdict"') > b.index("</details>")  # the verdict stays open


# -- Nielsen's neuron ---------------------------------------------------------------------------


def test_nielsen_is_credited_and_his_numbers_are_compared(
    reports: dict[str, ReportFiles], results: DemoResults
) -> None:
    html = html_of(reports, "en")
    b = block(html, "nielsen")
    assert "Nielsen, chapter 3" in b and "Neural Networks and Deep Learning" in b
    assert "w = 0.6, b = 0.9" in b and "w = b = 2" in b and "η = 0.15" in b
    mse = results.nielsen.run("w2_b2", "mse")
    assert f"needed {mse.epochs_to_drop} epochs" in b
    assert f"{mse.output[-1]:.2f}" in b
    zh = block(html_of(reports, "zh"), "nielsen")
    assert "Nielsen，第 3 章" in zh and f"要 {mse.epochs_to_drop} 轮" in zh


def test_the_nielsen_verdict_follows_the_measurement(results: DemoResults) -> None:
    t = Texts("en")
    assert nielsen_section(results, t).status == CONFIRMED
    # the two costs' curves swapped: the plateau is now cross-entropy's, not MSE's
    swapped = tuple(
        dataclasses.replace(
            r,
            loss="mse"
            if r.loss == "cross_entropy" and r.learning_rate == 0.15
            else "cross_entropy"
            if r.loss == "mse"
            else r.loss,
        )
        for r in results.nielsen.runs
    )
    flipped = dataclasses.replace(
        results, nielsen=dataclasses.replace(results.nielsen, runs=swapped)
    )
    assert nielsen_section(flipped, t).status == NOT_CONFIRMED


# -- where cross-entropy comes from, canonical links ---------------------------------------------


def test_the_integration_is_typeset_next_to_its_checks(
    reports: dict[str, ReportFiles], results: DemoResults
) -> None:
    b = block(html_of(reports, "en"), "cost_origin")
    assert b.count("<math") >= 3 and "∫" in b and "<mfrac>" in b
    for name in ("want", "integral"):
        assert re.search(rf'<div class="check" data-check="{name}">✓', b), name
    spread = results.origin.constant_spread["cross_entropy"]
    assert f"{spread:.1e}" in b
    assert b.index('id="derivation-origin"') < b.index("<img")  # the steps, then the chart


def test_the_origin_and_link_verdicts_fail_on_a_real_disagreement(results: DemoResults) -> None:
    t = Texts("en")
    assert origin_section(results, t).status == PASSED
    spread = {"cross_entropy": 0.3, "mse": results.origin.constant_spread["mse"]}
    bad = dataclasses.replace(
        results, origin=dataclasses.replace(results.origin, constant_spread=spread)
    )
    s = origin_section(bad, t)
    assert s.status == FAILED and s.verdict.startswith(t("o.verdict_bad"))

    assert link_section(results, t).status == PASSED
    first = results.links.checks[0]
    broken = dataclasses.replace(first, max_gap=1e-3)
    links = dataclasses.replace(results.links, checks=(broken, *results.links.checks[1:]))
    assert link_section(dataclasses.replace(results, links=links), t).status == FAILED
    # the mixed pair giving a − y too would contradict the page: also a failure
    mixed = tuple(
        dataclasses.replace(c, max_gap=0.0) if not c.matched else c for c in results.links.checks
    )
    links = dataclasses.replace(results.links, checks=mixed)
    assert link_section(dataclasses.replace(results, links=links), t).status == FAILED


# -- H(p, q) bars -----------------------------------------------------------------------------


def test_the_bars_are_drawn_from_the_librarys_example(
    reports: dict[str, ReportFiles], results: DemoResults
) -> None:
    html = html_of(reports, "en")
    b = block(html, "identities")
    c = results.code
    svg = b[b.index('<svg id="hpq-svg"') : b.index("</svg>", b.index('<svg id="hpq-svg"'))]
    heights = [float(h) for h in re.findall(r'class="bar"[^>]*height="([0-9.]+)"', svg)]
    assert len(heights) == 2 * c.outcomes
    scale = heights[0] / c.p[0]
    np.testing.assert_allclose(heights, np.r_[c.p, c.q] * scale, rtol=1e-3)
    for value in (c.entropy, c.kl, c.cross_entropy):
        assert f"{value:.3f}" in b
    # each bar is named; it becomes a keyboard-reachable slider only once the script runs
    # (Chromium checks that): without JavaScript no dead control is announced
    assert len(re.findall(r'<rect class="hit"[^>]*aria-label="[^"]+"', svg)) == 2 * c.outcomes
    assert 'role="slider"' not in svg and "tabindex" not in svg
    assert '<p class="note" id="hpq-howto" hidden>' in b
    assert '<div class="hpq-buttons" id="hpq-buttons" hidden>' in b
    data = json.loads(re.search(r'id="hpq-data">(.*?)</script>', html, re.S).group(1))  # type: ignore[union-attr]
    assert data["p"] == list(c.p) and data["library"]["kl"] == c.kl
    # one script for the whole page, after everything it drives
    scripts = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(scripts) == 1 and html.index("<script>") > html.index('id="hpq-data"')
    assert "pointerdown" in scripts[0] and "keydown" in scripts[0]


def test_the_bars_drawing_changes_with_the_distributions(results: DemoResults) -> None:
    t = Texts("en")
    a = hpq_svg(results.code, t)
    other = dataclasses.replace(results.code, q=tuple(reversed(results.code.q)))
    assert hpq_svg(other, t) != a


# -- the hidden layer ---------------------------------------------------------------------------


def test_the_hidden_layer_verdict_follows_the_measurement(results: DemoResults) -> None:
    t = Texts("en")
    s = hidden_section(results, t)
    assert s.status == MIXED  # the article's claim holds at the output only
    assert "not the hidden layer's" in s.verdict
    # were the hidden gradient not to shrink under cross-entropy, the claim would stand
    h = results.hidden
    flat = {**h.hidden_grad, "cross_entropy": np.full_like(h.hidden_grad["cross_entropy"], 0.02)}
    held = dataclasses.replace(results, hidden=dataclasses.replace(h, hidden_grad=flat))
    s = hidden_section(held, t)
    assert s.status == CONFIRMED and "did not shrink" in s.verdict


@pytest.mark.parametrize("lang", LANGUAGES)
def test_every_new_part_speaks_the_pages_language(
    reports: dict[str, ReportFiles], lang: str
) -> None:
    html = html_of(reports, lang)
    body = unescape(
        re.sub(r"<script.*?</script>|<math.*?</math>|<svg.*?</svg>|<[^>]+>", " ", html, flags=re.S)
    )
    if lang == "zh":
        for term in ("Nielsen 的神经元", "交叉熵从哪里来", "典范连接", "编码长度", "饱和的隐藏层"):
            assert term in body, term
        for english in ("epochs to", "hidden layer", "Drag the top", "The numbers behind"):
            assert english not in body, english
    else:
        for term in (
            "Nielsen's neuron",
            "Where cross-entropy comes from",
            "canonical",
            "code length",
            "saturated hidden layer",
        ):
            assert term in body, term


def test_metrics_carry_the_teaching_numbers(
    reports: dict[str, ReportFiles], results: DemoResults
) -> None:
    m = json.loads(reports["en"].metrics.read_text(encoding="utf-8"))
    assert len(m["nielsen"]) == len(results.nielsen.runs) == 6
    row = next(r for r in m["nielsen"] if r["start"] == "w2_b2" and r["loss"] == "mse")
    assert row["epochs_to_drop_10_percent"] == results.nielsen.run("w2_b2", "mse").epochs_to_drop
    assert m["cost_origin"]["grad_minus_residual_max"] == results.origin.grad_error
    assert [p["name"] for p in m["canonical_link"]["pairs"]] == [
        c.name for c in results.links.checks
    ]
    assert m["code_length"]["entropy"] == results.code.entropy
    assert m["hidden_layer"]["offsets"] == list(results.hidden.offsets)
    assert [v["section"] for v in m["verdicts"]] == [key for key, _ in ORDER]


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_sources_are_credited(reports: dict[str, ReportFiles], lang: str) -> None:
    html = html_of(reports, lang)
    footer = unescape(html[html.index("<footer>") : html.index("</footer>")])
    for name in (
        "Michael Nielsen",
        "Neural Networks and Deep Learning",
        "Chris Olah",
        "Visual Information Theory",
        "Dive into Deep Learning",
    ):
        assert name in footer, name
    # every reference names the part that uses it, by its number on this page
    number = {key: k for k, (key, _) in enumerate(ORDER, start=1)}
    for key in ("nielsen", "cost_origin", "hidden_layer", "identities", "canonical_link"):
        assert re.search(rf"(?:part|第) {number[key]}(?!\d)", footer), key
