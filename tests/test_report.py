"""The report: files, metrics.json, the self-contained HTML (embedded figures, MathML, slider
data that is the library's numbers), both languages, verdicts that follow the measurements,
and the atomic write that never leaves a half-written report."""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
from html import escape as escape_html
from pathlib import Path

import numpy as np
import pytest

# The demo's report draws with matplotlib ([demo] extra): skipped without it.
pytest.importorskip("matplotlib")

from conftest import DEMO_SVGS
from crossentropy.experiments import DemoResults, DemoSettings, run_demo
from crossentropy.report import MARKER, ReportFiles, replaceable, write_report
from crossentropy.report import figures as figures_module
from crossentropy.report.html import grid_json
from crossentropy.report.i18n import EN, LANGUAGES, STRINGS, ZH, Texts
from crossentropy.report.mathml import DERIVATIONS
from crossentropy.report.metrics import _num
from crossentropy.report.sections import (
    CONFIRMED,
    FAILED,
    MIXED,
    NOT_CONFIRMED,
    PARTS,
    identities_section,
    neuron_section,
    race_section,
)

# the teaching parts' figures (issue 18) beside the five original parts'
TEACHING_SVGS = frozenset(
    {
        "nielsen_quadratic.svg",
        "nielsen_cross_entropy.svg",
        "cost_origin.svg",
        "canonical_link.svg",
        "hidden_gradients.svg",
        "hidden_training.svg",
    }
)
SVGS = DEMO_SVGS | TEACHING_SVGS


@pytest.fixture(scope="module")
def results() -> DemoResults:
    return run_demo(DemoSettings(quick=True, seed=0))


@pytest.fixture(scope="module")
def report(results: DemoResults, tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(results, tmp_path_factory.mktemp("report") / "en")


@pytest.fixture(scope="module")
def report_zh(results: DemoResults, tmp_path_factory: pytest.TempPathFactory) -> ReportFiles:
    return write_report(results, tmp_path_factory.mktemp("report") / "zh", lang="zh")


def embedded_svgs(html: str) -> dict[str, bytes]:
    """``data-file`` name → decoded bytes of every figure embedded in the page."""
    found = re.findall(
        r'<img src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"[^>]*data-file="([^"]+)"', html
    )
    return {name: base64.b64decode(data) for data, name in found}


# -- files ----------------------------------------------------------------------------------


def test_report_writes_every_figure_as_svg_and_the_readme_png(report: ReportFiles) -> None:
    names = {p.name for p in report.figures}
    assert names == SVGS | {"saturated_neuron.png"}
    for path in report.figures:
        data = path.read_bytes()
        if path.suffix == ".png":
            assert data[:8] == b"\x89PNG\r\n\x1a\n"
            width = int.from_bytes(data[16:20], "big")
            assert width >= 2000  # high-DPI: 11 in × 200 dpi
        else:
            assert b"<svg" in data[:400]
            assert b"<text" in data  # labels stay text (fonttype none): sharp, selectable


def test_index_is_self_contained(report: ReportFiles) -> None:
    html = report.index.read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    for ref in refs:
        assert ref.startswith(("data:image/svg+xml;base64,", "https://www.cnblogs.com/")), ref
    # the only network address is the cited article's link; nothing is loaded from anywhere
    assert re.search(r'<(?:script|link|img|iframe)[^>]+(?:src|href)="https?:', html) is None
    assert re.search(r"<link[^>]+stylesheet", html) is None
    embedded = embedded_svgs(html)
    assert set(embedded) == SVGS
    for name, data in embedded.items():  # the page carries exactly the files beside it
        assert data == (report.index.parent / "figures" / name).read_bytes()


def test_the_page_cites_the_article(report: ReportFiles, report_zh: ReportFiles) -> None:
    for files in (report, report_zh):
        html = files.index.read_text(encoding="utf-8")
        head = html[: html.index("</header>")]
        assert "《交叉熵损失函数》" in head
        assert '<a href="https://www.cnblogs.com/tecwang/p/13256509.html">' in head
        assert "2020" in head and "tecwang" in head
    assert "in Chinese" in report.index.read_text(encoding="utf-8")


def test_each_section_has_claim_figures_tables_and_verdict(report: ReportFiles) -> None:
    html = report.index.read_text(encoding="utf-8")
    for s in report.sections:
        start = html.index(f'<section id="{s.key}">')
        block = html[start : html.index("</section>", start)]
        assert 'class="claim"' in block
        for f in s.figures:
            assert f'data-file="{f.file}"' in block
        assert "<table" in block and 'class="scroll"' in block  # tables scroll in their box
        assert "Measured in this run:" in block


def test_every_derivation_step_is_typeset_next_to_its_check(
    report: ReportFiles, results: DemoResults
) -> None:
    html = report.index.read_text(encoding="utf-8")
    block = html[html.index('<section id="derivation_checks">') :]
    block = block[: block.index("</section>")]
    checked = [name for lines in DERIVATIONS.values() for name, _ in lines if name is not None]
    assert sorted(checked) == sorted({c.name for c in results.checks.checks})
    for name in checked:
        cell = re.search(rf'<div class="check" data-check="{name}">✓ ([^<]*)', block)
        assert cell, f"no passing check shown beside {name}"
        worst = max(c.relative_error for c in results.checks.checks if c.name == name)
        shown = float(cell.group(1).split()[-1])
        assert shown == pytest.approx(worst, rel=0.05) or (shown == 0 and worst == 0)
    assert block.count('<math xmlns="http://www.w3.org/1998/Math/MathML"') >= len(checked)
    assert "<mfrac>" in block and "<msub>" in block


def test_the_slider_data_is_the_librarys_runs(results: DemoResults, report: ReportFiles) -> None:
    html = report.index.read_text(encoding="utf-8")
    raw = re.search(r'<script type="application/json" id="neuron-grid">(.*?)</script>', html, re.S)
    assert raw
    data = json.loads(raw.group(1))
    g = results.grid
    assert data["z0"] == list(g.z0) and data["lr"] == list(g.learning_rates)
    assert data["recorded"] == g.recorded.tolist()
    for loss in ("mse", "cross_entropy"):
        np.testing.assert_allclose(data["output"][loss], g.output[loss].ravel(), rtol=1e-3)
        np.testing.assert_allclose(
            data["sigma_prime"][loss], g.sigmoid_prime[loss].ravel(), rtol=1e-3, atol=1e-12
        )
        assert data["correct"][loss] == g.steps_to_correct[loss].ravel().tolist()
    # the saturated start of the static figure is one of the slider's runs, same numbers
    iz, il = g.z0.index(6.0), g.learning_rates.index(results.neuron.learning_rate)
    cell = iz * len(g.learning_rates) + il
    assert data["correct"]["mse"][cell] == results.neuron.run("saturated", "mse").steps_to_correct
    assert "</" not in grid_json(g, Texts("zh"))  # cannot close its <script> early


def test_the_interactive_part_is_hidden_until_the_script_runs(report: ReportFiles) -> None:
    html = report.index.read_text(encoding="utf-8")
    assert '<div class="play" id="play" hidden>' in html  # no dead controls without JS
    assert "<noscript>" in html
    script = re.findall(r"<script>(.*?)</script>", html, re.S)
    assert len(script) == 1
    assert "fetch(" not in script[0] and "XMLHttpRequest" not in script[0]
    assert "Math.exp" in script[0]  # only to print a₀ = σ(z₀) next to the slider
    assert "root.hidden = false" in script[0]


def test_metrics_json_has_the_required_keys_and_the_measured_values(
    report: ReportFiles, results: DemoResults
) -> None:
    m = json.loads(report.metrics.read_text(encoding="utf-8"))
    assert m["language"] == "en"
    speed = [r for r in m["races"] if r["selection"] == "speed"]
    quality = [r for r in m["races"] if r["selection"] == "quality"]
    assert len(speed) == len(quality) == len(results.race.runs) == 8
    for row, run in zip(speed, results.race.runs, strict=True):
        for key in ("experiment", "dataset", "init", "loss", "learning_rate", "final_log_loss"):
            assert key in row
        assert row["steps_to_target"] == run.steps_to_target
        assert row["final_accuracy"] == run.final_accuracy
        assert row["learning_rate"] in results.settings.race_grid
    assert all("relative_error" in c for c in m["gradient_checks"])
    assert len({c["name"] for c in m["gradient_checks"]}) == len(m["gradient_checks"])
    assert len(m["identities"]) == 4
    for ident in m["identities"]:
        assert ident["abs_error"] == pytest.approx(abs(ident["lhs"] - ident["rhs"]), abs=1e-18)
    assert [v["section"] for v in m["verdicts"]] == [s.key for s in report.sections]
    grid = m["neuron_grid"]
    assert grid["z0"] == list(results.grid.z0)
    assert grid["steps_to_correct"]["cross_entropy"][0][0] == int(
        results.grid.steps_to_correct["cross_entropy"][0, 0]
    )


def test_json_has_no_nan() -> None:
    assert _num(math.nan) is None and _num(math.inf) is None and _num(1.5) == 1.5


# -- languages -------------------------------------------------------------------------------


def test_both_languages_have_the_same_keys_and_fields() -> None:
    assert set(EN) == set(ZH)
    for key in EN:
        fields_en = set(re.findall(r"{(\w+)", EN[key]))
        fields_zh = set(re.findall(r"{(\w+)", ZH[key]))
        # the same numbers in both; only the Chinese citation omits the English title
        assert fields_en - fields_zh <= {"title_en"} and fields_zh <= fields_en, key
    assert set(STRINGS) == set(LANGUAGES)
    with pytest.raises(ValueError, match=r"Texts: lang must be one of \('en', 'zh'\), got 'fr'"):
        Texts("fr")


def test_the_chinese_page_uses_the_articles_terms(report_zh: ReportFiles) -> None:
    html = report_zh.index.read_text(encoding="utf-8")
    assert '<html lang="zh-CN">' in html
    for term in ("交叉熵", "均方误差", "似然函数", "梯度消失"):
        assert term in html, term
    # the article's own sentences are quoted in the original
    assert "殊途同归" in html and "sigmoid 梯度消失的问题" in html
    body = re.sub(r"<script.*?</script>|<math.*?</math>|<[^>]+>", " ", html, flags=re.S)
    assert "Measured in this run" not in body and "steps" not in body
    m = json.loads(report_zh.metrics.read_text(encoding="utf-8"))
    assert m["language"] == "zh"


def test_chinese_figures_carry_chinese_labels(report_zh: ReportFiles) -> None:
    svg = (report_zh.index.parent / "figures" / "race_digits_standard.svg").read_text("utf-8")
    assert "验证集准确率" in svg and "交叉熵" in svg
    assert "sans-serif" in svg  # the browser falls back to a CJK font it has


def test_write_report_rejects_an_unknown_language(results: DemoResults, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"write_report: lang must be one of"):
        write_report(results, tmp_path / "r", lang="fr")


# -- verdicts follow the measurements ---------------------------------------------------------


def test_neuron_verdict_follows_the_measurement(results: DemoResults) -> None:
    t = Texts("en")
    s = neuron_section(results, t)
    mse = results.neuron.run("saturated", "mse").steps_to_correct
    bce = results.neuron.run("saturated", "cross_entropy").steps_to_correct
    assert f"cross-entropy needed {bce} steps and MSE {mse}" in s.verdict
    assert s.status == CONFIRMED
    swapped = tuple(
        dataclasses.replace(r, loss="mse" if r.loss == "cross_entropy" else "cross_entropy")
        for r in results.neuron.runs
    )
    flipped = dataclasses.replace(results, neuron=dataclasses.replace(results.neuron, runs=swapped))
    assert neuron_section(flipped, t).status == NOT_CONFIRMED


def test_race_verdict_follows_the_measurement(results: DemoResults) -> None:
    race = results.race
    t = Texts("en")

    def with_steps(sat_mse: int | None, sat_ce: int | None) -> DemoResults:
        runs = tuple(
            dataclasses.replace(r, steps_to_target=sat_ce if r.loss == "cross_entropy" else sat_mse)
            if r.init == "saturated"
            else r
            for r in race.runs
        )
        return dataclasses.replace(results, race=dataclasses.replace(race, runs=runs))

    assert race_section(with_steps(10, 3), t).status == CONFIRMED
    assert race_section(with_steps(3, 10), t).status == NOT_CONFIRMED
    assert race_section(with_steps(None, None), t).status == NOT_CONFIRMED
    mixed = with_steps(3, 10)
    first = next(r for r in mixed.race.runs if r.init == "saturated" and r.loss == "mse")
    runs = tuple(
        dataclasses.replace(r, steps_to_target=None) if r is first else r for r in mixed.race.runs
    )
    mixed = dataclasses.replace(mixed, race=dataclasses.replace(mixed.race, runs=runs))
    assert race_section(mixed, t).status == MIXED


def test_race_meaning_is_computed_from_the_runs(results: DemoResults) -> None:
    s = race_section(results, Texts("en"))
    assert s.details and s.details_title == "What this means"
    text = " ".join(s.details)
    for run in results.race.runs:
        assert f"η = {run.learning_rate:g}" in text or f" : {run.learning_rate:g}" in text
    c = results.race.get("digits", "saturated", "cross_entropy")
    m = results.race.get("digits", "saturated", "mse")
    assert f"{c.steps_to_target} : {m.steps_to_target}" in text
    larger = sum(
        results.race.get(d, i, "mse").learning_rate
        > results.race.get(d, i, "cross_entropy").learning_rate
        for d in ("breast_cancer", "digits")
        for i in ("standard", "saturated")
    )
    assert f"MSE's was the larger in {larger} of 4 settings" in text
    # "largely hides" is said only when the numbers support it
    lowered = tuple(
        dataclasses.replace(r, learning_rate=0.01) if r.loss == "mse" else r
        for r in results.race.runs
    )
    low = dataclasses.replace(results, race=dataclasses.replace(results.race, runs=lowered))
    low_text = " ".join(race_section(low, Texts("en")).details)
    assert "MSE's was the larger in 0 of 4 settings" in low_text
    assert "largely hides" not in low_text


def test_identities_verdict_fails_on_a_real_disagreement(results: DemoResults) -> None:
    t = Texts("en")
    assert identities_section(results, t).status == "passed"
    broken = dataclasses.replace(results.identities[0], rhs=results.identities[0].rhs + 1e-6)
    bad = dataclasses.replace(results, identities=(broken, *results.identities[1:]))
    s = identities_section(bad, t)
    assert s.status == FAILED and "1.0e-06" in s.verdict


# -- atomic writes ------------------------------------------------------------------------------


def test_a_failed_rewrite_leaves_the_previous_report_intact(
    results: DemoResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "report"
    first = write_report(results, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert (out / MARKER).is_file()

    def broken(*args: object, **kwargs: object) -> tuple[Path, ...]:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("crossentropy.report.draw_identities", broken)
    with pytest.raises(OSError, match="No space left"):
        write_report(results, out, lang="zh")
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert after == before  # not one file of the new run mixed in
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]  # no temporary left
    assert first.index.is_file()


def test_an_interrupt_while_writing_leaves_no_trace(
    results: DemoResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: object, **kwargs: object) -> tuple[Path, ...]:
        raise KeyboardInterrupt

    monkeypatch.setattr(figures_module, "draw_checks", interrupted)
    monkeypatch.setattr("crossentropy.report.draw_checks", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_report(results, tmp_path / "new")
    assert list(tmp_path.iterdir()) == []


def test_a_rewrite_replaces_the_previous_report_whole(results: DemoResults, tmp_path: Path) -> None:
    out = tmp_path / "report"
    write_report(results, out)
    (out / "figures" / "stale.svg").write_text("<svg/>")
    write_report(results, out, lang="zh")
    assert not (out / "figures" / "stale.svg").exists()
    assert '<html lang="zh-CN">' in (out / "index.html").read_text(encoding="utf-8")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_a_folder_of_other_files_is_never_replaced(results: DemoResults, tmp_path: Path) -> None:
    precious = tmp_path / "home"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    assert replaceable(precious) is not None
    with pytest.raises(FileExistsError, match="is not a crossentropy report"):
        write_report(results, precious)
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert replaceable(tmp_path / "absent") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    assert replaceable(empty) is None


# -- hostile-pass cases --------------------------------------------------------------------------


def test_a_report_folder_with_the_users_files_is_not_replaced(
    results: DemoResults, tmp_path: Path
) -> None:
    """Found by the hostile pass: re-running into a report folder that also held the user's
    files deleted them silently."""
    out = tmp_path / "r"
    write_report(results, out)
    (out / "notes.txt").write_text("mine")
    reason = replaceable(out)
    assert reason is not None and "notes.txt" in reason and "deleted" in reason
    with pytest.raises(FileExistsError):
        write_report(results, out)
    assert (out / "notes.txt").read_text() == "mine"
    (out / "notes.txt").unlink()
    (out / "figures" / "data.csv").write_text("mine")
    assert replaceable(out) is not None
    (out / "figures" / "data.csv").unlink()
    assert replaceable(out) is None


def test_race_meaning_claims_better_probabilities_only_when_measured(
    results: DemoResults,
) -> None:
    from crossentropy.report.sections import race_meaning

    race = results.race
    settings = list(dict.fromkeys((run.dataset, run.init) for run in race.runs))
    lower = sum(
        race.get(d, i, "cross_entropy", "quality").final_log_loss
        < race.get(d, i, "mse", "quality").final_log_loss
        for d, i in settings
    )
    text = " ".join(race_meaning(race, Texts("en")))
    if 2 * lower > len(settings):
        assert "better probabilities" in text
    else:
        assert "not clearly better" in text and "better probabilities" not in text


# -- small defects of the page (issue 18) ----------------------------------------------------


@pytest.mark.parametrize("lang", LANGUAGES)
def test_the_contents_number_each_part_once(
    lang: str, report: ReportFiles, report_zh: ReportFiles
) -> None:
    html = (report if lang == "en" else report_zh).index.read_text(encoding="utf-8")
    nav = re.search(r"<nav [^>]*>(.*?)</nav>", html, re.S)
    assert nav is not None
    # the titles carry their numbers ("1. …"), so the list must not add its own ("1. 1. …")
    assert "<ol" not in nav.group(1)
    assert re.search(r"nav ul \{[^}]*list-style: none", html)
    items = re.findall(r"<li><a href=\"#([^\"]+)\">([^<]*)</a></li>", nav.group(1))
    sections = (report if lang == "en" else report_zh).sections
    assert [key for key, _ in items] == [s.key for s in sections] + ["glossary"]
    for k, (_, title) in enumerate(items[:-1], start=1):
        assert re.findall(r"\d+\. ", title) == [f"{k}. "], title


def _figure_text(svg: bytes) -> str:
    return " ".join(re.findall(r"<text[^>]*>([^<]*)</text>", svg.decode("utf-8")))


@pytest.mark.parametrize("lang", LANGUAGES)
def test_without_torch_the_derivation_figure_promises_one_reference(
    results: DemoResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, lang: str
) -> None:
    import sys

    from crossentropy.experiments import derivation_checks

    # the check asked for torch, as a full run does, but torch cannot be imported
    monkeypatch.setitem(sys.modules, "torch", None)
    checks = derivation_checks(use_torch=True)
    assert checks.torch_skipped == "torch is not importable"
    assert {c.reference for c in checks.checks} == {"finite differences"}
    no_torch = dataclasses.replace(results, checks=checks)
    files = write_report(no_torch, tmp_path / "report", lang=lang)
    html = files.index.read_text(encoding="utf-8")
    text = _figure_text(embedded_svgs(html)["derivation_checks.svg"])
    t = Texts(lang)
    assert t("fig.checks_title_fd") in text
    for promise in ("two references", "两种参考", "PyTorch", t("fig.vs_torch")):
        assert promise not in text
    section = next(s for s in files.sections if s.key == "derivation_checks")
    assert [f.alt for f in section.figures] == [t("s4.alt_fd")]
    assert "PyTorch" not in section.figures[0].alt

    # with both references drawn, the figure says two (torch's numbers stood in by a copy)
    both = dataclasses.replace(
        checks,
        checks=checks.checks
        + tuple(dataclasses.replace(c, reference="torch autograd") for c in checks.checks),
        torch_version="0.0-test",
        torch_skipped=None,
    )
    files = write_report(dataclasses.replace(results, checks=both), tmp_path / "both", lang=lang)
    text = _figure_text(
        embedded_svgs(files.index.read_text(encoding="utf-8"))["derivation_checks.svg"]
    )
    assert t("fig.checks_title") in text and t("fig.vs_torch") in text


def test_the_glossarys_mse_is_the_one_each_part_computes(
    report: ReportFiles, report_zh: ReportFiles
) -> None:
    from crossentropy.experiments.anatomy import mse_loss_z
    from crossentropy.experiments.neuron import neuron_value_and_grads
    from crossentropy.experiments.race import loss_and_logit_grad

    rng = np.random.default_rng(18)

    def sigmoid(z: np.ndarray) -> np.ndarray:
        return np.asarray(1 / (1 + np.exp(-z)))

    # parts 1 and 2: one sample, the article's (a − y)²/2
    for w, b, x, y in ((2.0, 2.0, 1.0, 0.0), (0.6, 0.9, 1.0, 0.0), (-1.5, 0.3, 2.0, 1.0)):
        a, value, _, _ = neuron_value_and_grads(w, b, x, y, "mse")
        assert value == pytest.approx((a - y) ** 2 / 2, rel=1e-12)
    z, y = rng.normal(size=7) * 4, rng.integers(0, 2, size=7).astype(np.float64)
    np.testing.assert_allclose(mse_loss_z(z, y), (sigmoid(z) - y) ** 2 / 2, rtol=1e-12)
    # part 3: the mean over samples of (a − y)² (binary) and of ‖a − y‖² (10 digit classes)
    z, labels = rng.normal(size=9) * 3, rng.integers(0, 2, size=9)
    value, _ = loss_and_logit_grad(z, labels, "mse", 2)
    assert value == pytest.approx(np.mean((sigmoid(z) - labels) ** 2), rel=1e-12)
    labels = rng.integers(0, 10, size=9)
    logits = rng.normal(size=(9, 10)) * 3
    value, _ = loss_and_logit_grad(logits, labels, "mse", 10)
    a = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    brier = np.sum((a - np.eye(10)[labels]) ** 2, axis=1)
    assert value == pytest.approx(np.mean(brier), rel=1e-12)
    # the hidden-layer network (part 9) is binary like breast cancer: the mean of (a − y)²
    from crossentropy.experiments.hidden import forward_backward, init_net, xor_data

    x, t = xor_data(18, n=12)
    net = init_net(rng, 4, 1.0)
    out = sigmoid(sigmoid(x @ net.w1 + net.b1) @ net.w2 + net.b2)
    assert forward_backward(net, x, t, "mse").loss == pytest.approx(np.mean((out - t) ** 2))

    # the glossary states exactly these, in both languages, on the page
    stated = {
        "en": ("(a − y)²/2", "the mean of (a − y)²", "‖a − y‖², summed over the 10 classes"),
        "zh": ("(a − y)²/2", "(a − y)² 的平均", "‖a − y‖²（对 10 个类别求和）的平均"),
    }
    for lang, files in (("en", report), ("zh", report_zh)):
        entry = Texts(lang)("g.mse", **PARTS)
        for formula in stated[lang]:
            assert formula in entry, (lang, formula)
        glossary = files.index.read_text(encoding="utf-8").split('<section id="glossary">')[1]
        assert escape_html(entry.split("：" if lang == "zh" else ":", 1)[1].strip()) in glossary


def test_no_tick_label_is_cut_off_at_the_figures_edge(
    results: DemoResults, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The last x tick label is centred on the axes' right end: with too small a margin it
    was cut off by the SVG's viewBox ("10⁻³" of the derivation chart)."""
    from matplotlib.figure import Figure
    from matplotlib.text import Text

    drawn: dict[str, Figure] = {}
    save = figures_module._save_svg

    def keep(fig: Figure, path: Path) -> Path:
        drawn[path.name] = fig
        return save(fig, path)

    def shown(labels: list[Text], lo: float, hi: float, axis: int) -> list[Text]:
        return [
            label
            for label in labels
            if label.get_visible()
            and label.get_text()
            and min(lo, hi) <= label.get_position()[axis] <= max(lo, hi)
        ]

    monkeypatch.setattr(figures_module, "_save_svg", keep)
    write_report(results, tmp_path / "report")
    assert set(drawn) == SVGS
    for name, fig in drawn.items():
        fig.draw_without_rendering()
        box = fig.bbox  # the SVG's viewBox, in the same display units as the labels
        for ax in fig.axes:
            xs = shown(ax.get_xticklabels(), *ax.get_xlim(), axis=0)
            ys = shown(ax.get_yticklabels(), *ax.get_ylim(), axis=1)
            assert xs and ys, name
            last = max(xs, key=lambda label: label.get_position()[0])
            assert last.get_window_extent().x1 <= box.x1 - 1, (name, last.get_text())
            for label in xs + ys:
                extent = label.get_window_extent()
                assert box.x0 <= extent.x0 and extent.x1 <= box.x1, (name, label.get_text())
                assert box.y0 <= extent.y0 and extent.y1 <= box.y1, (name, label.get_text())
