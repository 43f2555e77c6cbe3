"""The report page: one self-contained ``index.html``.

Inline CSS; figures embedded as SVG data URIs; the formulas as MathML; the slider data as
JSON with a small plain script that only looks values up and draws them. No network, no
CDN. Without JavaScript every section still shows its static figures and tables; the
sliders (``hidden`` until the script runs) are the only part that needs it.
"""

from __future__ import annotations

import base64
import json
from html import escape
from pathlib import Path

import numpy as np

from ..experiments import CodeLength, DemoResults, NeuronGrid
from . import mathml
from .i18n import ARTICLE, Texts
from .script import SCRIPT
from .sections import (
    CONFIRMED,
    FD_TOLERANCE,
    INTEGRAL_TOLERANCE,
    LINK_TOLERANCE,
    PART_OF,
    PARTS,
    PASSED,
    TORCH_TOLERANCE,
    Section,
    Table,
    sci,
)

CSS = """
*, *::before, *::after { box-sizing: border-box; }
html { -webkit-text-size-adjust: 100%; }
body { font: 16px/1.6 system-ui, -apple-system, "Segoe UI", "Noto Sans", "PingFang SC",
       "Microsoft YaHei", sans-serif; color: #1d232a; max-width: 1060px; margin: 0 auto;
       padding: 1.2rem; background: #fff; overflow-wrap: break-word; }
:lang(zh) body, body:lang(zh) { line-height: 1.75; }
h1 { font-size: 1.8rem; line-height: 1.25; margin: .6rem 0 .4rem; }
h2 { font-size: 1.35rem; line-height: 1.3; margin: 2.6rem 0 .5rem; border-bottom: 1px solid #dde2e8;
     padding-bottom: .3rem; }
h3 { font-size: 1.08rem; margin: 1.4rem 0 .4rem; }
a { color: #005a8d; }
.cite { background: #f4f8fb; border-left: 4px solid #0072B2; padding: .7rem .9rem;
        margin: .8rem 0; }
.cite a { overflow-wrap: anywhere; }
.sub { color: #4b5560; margin: .4rem 0; font-size: .95rem; }
/* the section titles carry their numbers ("1. …"): the list adds none of its own */
nav ul { list-style: none; padding-left: 0; margin: .3rem 0; }
.claim { color: #39424c; border-left: 4px solid #0072B2; padding: .2rem .8rem;
         margin: .6rem 0 1rem; background: #f4f8fb; }
.claim .who { font-weight: 600; font-style: normal; margin-right: .3rem; }
.claims li { margin: .5rem 0; }
.verdict { padding: .6rem .9rem; border-radius: 6px; background: #f6f7f9; margin: 1rem 0; }
.badge { display: inline-block; font-size: .78rem; font-weight: 600; letter-spacing: .03em;
         padding: .05rem .55rem; border-radius: 999px; margin-right: .5rem; color: #fff;
         background: #8a6d00; white-space: nowrap; }
.badge.good { background: #1b7f4a; }
.badge.bad { background: #b3261e; }
.figs { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 340px), 1fr));
        gap: .8rem; margin: 1rem 0; }
figure { margin: 0; min-width: 0; }
.figs > figure:only-child { max-width: 620px; width: 100%; justify-self: center; }
figure img, figure svg { display: block; width: 100%; height: auto; border: 1px solid #e6e9ee;
                         border-radius: 4px; background: #fff; }
figcaption { color: #4b5560; font-size: .85rem; margin-top: .25rem; }
figcaption.live { color: #1d232a; font-weight: 600; margin: 0 0 .25rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; max-width: 100%; margin: .6rem 0; }
table { border-collapse: collapse; font-size: .88rem; width: 100%; }
th, td { border-bottom: 1px solid #e6e9ee; padding: .3rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f6f7f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
/* Chinese has no spaces: keep each word whole (the table scrolls in its box instead) */
:lang(zh) table:not(.summary) th, :lang(zh) table:not(.summary) td { word-break: keep-all; }
.caption { color: #4b5560; font-size: .85rem; margin: 1.2rem 0 .2rem; }
.derivation { border: 1px solid #e6e9ee; border-radius: 6px; padding: .2rem .9rem .6rem;
              margin: 1rem 0; }
.line { display: grid; grid-template-columns: minmax(0, 1fr) 13rem; gap: .6rem;
        align-items: center; border-top: 1px dashed #e6e9ee; padding: .2rem 0; }
.line:first-of-type { border-top: 0; }
.eq { overflow-x: auto; overflow-y: hidden; min-width: 0; }
.eq math { font-size: 1.12rem; margin: .35rem 0; }
.check { font-size: .8rem; color: #1b5e3b; font-variant-numeric: tabular-nums; }
.check.bad { color: #b3261e; }
.check .n { white-space: nowrap; }
.check.def { color: #6b7480; }
.note { color: #4b5560; font-size: .92rem; }
.play { border: 1px solid #cfd8e3; border-radius: 8px; padding: .4rem 1rem 1rem; margin: 1.2rem 0;
        background: #fbfcfe; }
.controls { display: grid; grid-template-columns: repeat(auto-fit, minmax(min(100%, 260px), 1fr));
            gap: .6rem 1.2rem; margin: .6rem 0; }
.controls label { display: block; font-weight: 600; font-size: .92rem; }
.controls input[type=range] { width: 100%; }
.controls output { font-weight: 400; font-variant-numeric: tabular-nums; }
.controls fieldset { border: 0; padding: 0; margin: 0; font-size: .92rem; }
.controls legend { font-weight: 600; padding: 0; }
#play-summary { font-weight: 600; }
details.numbers { margin: .8rem 0; border: 1px solid #e6e9ee; border-radius: 6px;
                  padding: .3rem .8rem; }
details.numbers > summary { cursor: pointer; font-weight: 600; color: #005a8d; }
details.numbers[open] > summary { margin-bottom: .2rem; }
.intro { font-size: 1.05rem; }
.intro p:first-of-type { margin-top: .3rem; }
.hpq { max-width: 560px; margin: .6rem auto 0; }
.hpq svg { display: block; width: 100%; height: auto; user-select: none;
           -webkit-user-select: none; }
/* a finger on a bar drags it; elsewhere on the drawing it still scrolls the page */
.hpq .hit { fill: transparent; cursor: ns-resize; touch-action: none; }
.hpq .hit:focus { outline: none; stroke: #1d232a; stroke-width: 2; stroke-dasharray: 4 3; }
.hpq .hit:focus-visible { outline: none; }
.hpq-buttons[hidden] { display: none; }
.hpq-buttons { display: flex; flex-wrap: wrap; gap: .5rem; margin: .5rem 0; }
.hpq-buttons button { font: inherit; font-size: .9rem; padding: .2rem .7rem; border-radius: 4px;
                      border: 1px solid #9aa3ad; background: #fff; cursor: pointer; }
#hpq-readout { font-weight: 600; font-variant-numeric: tabular-nums; }
dl.glossary dt { font-weight: 600; margin-top: .5rem; }
dl.glossary dd { margin: 0 0 0 1rem; }
footer { margin: 3rem 0 1rem; color: #4b5560; font-size: .85rem; }
code { background: #f1f3f5; padding: 0 .25rem; border-radius: 3px; overflow-wrap: anywhere; }
@media (max-width: 600px) {
  body { padding: .8rem; font-size: 15px; }
  h1 { font-size: 1.45rem; }
  .line { grid-template-columns: minmax(0, 1fr); gap: 0; }
  .check { margin-bottom: .3rem; }
  .play { padding: .3rem .5rem .8rem; }
  .eq math { font-size: .98rem; }
  /* the summary as one card per part: three columns do not fit a phone */
  table.summary thead { display: none; }
  table.summary tr, table.summary td { display: block; border: 0; padding: .1rem 0; }
  table.summary tr { border-bottom: 1px solid #e6e9ee; padding: .5rem 0; }
}
"""

GLOSSARY = (
    "g.sigmoid",
    "g.z",
    "g.saturated",
    "g.vanishing",
    "g.mse",
    "g.ce",
    "g.lr",
    "g.softmax",
    "g.split",
    "g.nats",
    "g.entropy",
    "g.kl",
    "g.likelihood",
    "g.fd",
    "g.autograd",
    "g.smoothing",
    "g.epoch",
    "g.canonical",
    "g.hidden",
    "g.code",
)


def _badge(status: str, t: Texts) -> str:
    cls = (
        "good"
        if status in (CONFIRMED, PASSED)
        else "bad"
        if status in ("not confirmed", "failed")
        else ""
    )
    word = escape(t("status." + status))
    return f'<span class="badge {cls}" data-status="{escape(status)}">{word}</span>'


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", "").rstrip("%"))
    except ValueError:
        return False
    return True


def _table(tbl: Table, css_class: str = "") -> str:
    numeric = [
        bool(tbl.rows) and all(_is_number(r[k]) or r[k] in ("never", "未达到") for r in tbl.rows)
        for k in range(len(tbl.headers))
    ]
    head = "".join(
        f'<th class="num">{escape(h)}</th>' if num else f"<th>{escape(h)}</th>"
        for h, num in zip(tbl.headers, numeric, strict=True)
    )
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if num else f"<td>{escape(c)}</td>"
            for c, num in zip(row, numeric, strict=True)
        )
        + "</tr>"
        for row in tbl.rows
    )
    cls = f' class="{css_class}"' if css_class else ""
    cap = f'<p class="caption">{escape(tbl.caption)}</p>' if tbl.caption else ""
    return (
        f'{cap}<div class="scroll" tabindex="0"><table{cls}><thead><tr>{head}</tr></thead>'
        f"<tbody>\n{body}\n</tbody></table></div>"
    )


def svg_data_uri(path: Path) -> str:
    """The SVG file as a ``data:`` URI, so the page carries its own figures."""
    return "data:image/svg+xml;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _figures(s: Section, figure_dir: Path) -> str:
    items = "\n".join(
        f'<figure><img src="{svg_data_uri(figure_dir / f.file)}" alt="{escape(f.alt)}" '
        f'data-file="{escape(f.file)}" width="560" height="360" loading="eager"></figure>'
        for f in s.figures
    )
    return f'<div class="figs">{items}</div>'


# -- the derivations ------------------------------------------------------------------------


def _check_cell(results: DemoResults, name: str | None, t: Texts) -> str:
    if name is None:
        return '<div class="check def"></div>'
    parts, ok = [], True
    for c in results.checks.checks:
        if c.name != name:
            continue
        tol = FD_TOLERANCE if c.reference == "finite differences" else TORCH_TOLERANCE
        ok = ok and c.relative_error < tol
        label = t("s4.check_fd") if c.reference == "finite differences" else t("s4.check_torch")
        value = "0" if c.relative_error == 0 else f"{c.relative_error:.1e}"
        parts.append(f"{escape(label)} {value}")
    mark = "✓" if ok else "✗"
    cls = "check" if ok else "check bad"
    return f'<div class="{cls}" data-check="{escape(name)}">{mark} ' + "<br>".join(parts) + "</div>"


def derivations_html(results: DemoResults, t: Texts) -> str:
    """The article's three derivations, line by line, each next to its check."""
    blocks = []
    for key, lines in mathml.DERIVATIONS.items():
        body = []
        for k, (name, formula) in enumerate(lines):
            if key == "softmax" and k == 1:
                body.append(f'<p class="note">{escape(t("s4.softmax_cases"))}</p>')
            body.append(
                f'<div class="line"><div class="eq">{formula}</div>'
                f"{_check_cell(results, name, t)}</div>"
            )
        note = f'<p class="note">{escape(t("s4.why_cancel"))}</p>' if key == "bce" else ""
        blocks.append(
            f'<div class="derivation" id="derivation-{key}"><h3>{escape(t("s4." + key))}</h3>'
            + "\n".join(body)
            + note
            + "</div>"
        )
    return "\n".join(blocks)


# -- the sliders ----------------------------------------------------------------------------


def _numbers(values: np.ndarray) -> str:
    """A flat JSON array with 4 significant digits (enough for a 560-pixel plot)."""
    return "[" + ",".join(f"{v:.4g}" for v in np.asarray(values, dtype=np.float64).ravel()) + "]"


def grid_json(g: NeuronGrid, t: Texts) -> str:
    """The slider runs as compact JSON: flat arrays indexed ``((iz · nl) + il) · k + step``."""
    labels = {
        key: t(key)
        for key in (
            "loss.cross_entropy",
            "loss.mse",
            "s2.live_output",
            "s2.live_factor",
            "fig.step",
        )
    }
    labels["right_after"] = t("s2.right_after", n="{n}")
    labels["still_wrong"] = t("s2.still_wrong", n="{n}")
    labels["summary"] = t("s2.live_summary", ce="{ce}", mse="{mse}")
    parts = [
        f'"z0":{json.dumps(list(g.z0))}',
        f'"lr":{json.dumps(list(g.learning_rates))}',
        f'"y":{g.y}',
        f'"steps":{g.steps}',
        f'"recorded":{json.dumps(g.recorded.tolist())}',
        '"output":{' + ",".join(f'"{loss}":{_numbers(v)}' for loss, v in g.output.items()) + "}",
        '"sigma_prime":{'
        + ",".join(f'"{loss}":{_numbers(v)}' for loss, v in g.sigmoid_prime.items())
        + "}",
        '"correct":{'
        + ",".join(
            f'"{loss}":{json.dumps(v.ravel().tolist())}' for loss, v in g.steps_to_correct.items()
        )
        + "}",
        f'"text":{json.dumps(labels, ensure_ascii=False)}',
    ]
    return ("{" + ",".join(parts) + "}").replace("</", "<\\/")


def play_html(results: DemoResults, t: Texts) -> str:
    g = results.grid
    n = results.neuron
    z0_default = sum(n.starts.get("saturated", (3.0, 3.0))) if n.x == 1 else g.z0[-1]
    iz = int(np.argmin(np.abs(np.asarray(g.z0) - z0_default)))
    il = int(np.argmin(np.abs(np.asarray(g.learning_rates) - n.learning_rate)))
    runs = len(g.z0) * len(g.learning_rates) * len(g.output)
    return f"""
<div class="play" id="play" hidden>
<h3>{escape(t("s2.play"))}</h3>
<p class="note">{escape(t("s2.play_intro", runs=runs, steps=g.steps))}</p>
<div class="controls">
<label for="play-z0">{escape(t("s2.z0"))}: <output id="play-z0-value" for="play-z0"></output>
<input type="range" id="play-z0" min="0" max="{len(g.z0) - 1}" step="1" value="{iz}"></label>
<label for="play-lr">{escape(t("s2.lr"))}: <output id="play-lr-value" for="play-lr"></output>
<input type="range" id="play-lr" min="0" max="{len(g.learning_rates) - 1}" step="1"
value="{il}"></label>
<fieldset><legend>{escape(t("s2.range"))}</legend>
<label style="display:inline;font-weight:400"><input type="radio" name="play-range" value="50">
{escape(t("s2.range_short"))}</label>
<label style="display:inline;font-weight:400;margin-left:1rem"><input type="radio"
name="play-range" value="{g.steps}" checked> {escape(t("s2.range_all", n=g.steps))}</label>
</fieldset>
</div>
<p id="play-summary" aria-live="polite"></p>
<div class="figs">
<figure><figcaption class="live">{escape(t("s2.live_output"))}</figcaption>
<svg id="play-output" viewBox="0 0 560 340" role="img"
aria-label="{escape(t("s2.live_output"))}"></svg></figure>
<figure><figcaption class="live">{escape(t("s2.live_factor"))}</figcaption>
<svg id="play-factor" viewBox="0 0 560 340" role="img"
aria-label="{escape(t("s2.live_factor"))}"></svg></figure>
</div>
</div>
<noscript><p class="note">{escape(t("page.noscript", lr=f"{n.learning_rate:g}"))}</p></noscript>
<script type="application/json" id="neuron-grid">{grid_json(g, t)}</script>"""


# -- where cross-entropy comes from ----------------------------------------------------------


def origin_html(results: DemoResults, t: Texts) -> str:
    """The integration of ∂C/∂b = a − y, line by line, each checked line next to its number."""
    o = results.origin
    cells = {
        "want": (
            o.grad_error < LINK_TOLERANCE,
            f'{escape(t("o.check_grad"))} <span class="n">{sci(o.grad_error)}</span><br>'
            f'{escape(t("o.check_fd"))} <span class="n">{sci(o.fd_error)}</span>',
        ),
        "integral": (
            o.constant_spread["cross_entropy"] < INTEGRAL_TOLERANCE,
            f"{escape(t('o.check_integral'))} "
            f'<span class="n">{sci(o.constant_spread["cross_entropy"])}</span>',
        ),
    }
    body = []
    for name, formula in mathml.ORIGIN:
        if name is None:
            cell = '<div class="check def"></div>'
        else:
            ok, text = cells[name]
            cls = "check" if ok else "check bad"
            cell = f'<div class="{cls}" data-check="{name}">{"✓" if ok else "✗"} {text}</div>'
        body.append(f'<div class="line"><div class="eq">{formula}</div>{cell}</div>')
    return (
        f'<div class="derivation" id="derivation-origin"><h3>{escape(t("o.steps"))}</h3>'
        + "\n".join(body)
        + "</div>"
    )


# -- H(p, q) = H(p) + KL(p ‖ q) with draggable bars ------------------------------------------

HPQ = {
    "width": 340,
    "height": 280,
    "left": 34,
    "top": 40,
    "bottom": 184,  # the bars' base line; a probability of 1 is (bottom - top) tall
    "group": 76,
    "bar": 26,
    "stack_y": 236,
    "stack_h": 22,
    "max_nats": 5,
    "min": 0.01,
}
"""The drawing's geometry, shared with the script (which reads it from the page's JSON)."""
HPQ_COLORS = {"p": "#009E73", "q": "#0072B2", "h": "#009E73", "kl": "#CC79A7"}


def _hpq_bar_x(i: int, which: str) -> float:
    g = HPQ
    return g["left"] + i * g["group"] + (8 if which == "p" else 8 + g["bar"] + 4)


def hpq_svg(c: CodeLength, t: Texts) -> str:
    """The example as an inline SVG, drawn here so the page shows it without JavaScript; the
    script moves the same elements when the reader drags a bar."""
    g = HPQ
    scale = g["bottom"] - g["top"]
    nat = (g["width"] - g["left"] - 6) / g["max_nats"]
    parts = [
        f'<svg id="hpq-svg" viewBox="0 0 {g["width"]} {g["height"]}" role="group" '
        f'aria-label="{escape(t("k.title"))}" font-family="system-ui, sans-serif">'
    ]
    for k, which in enumerate(("p", "q")):
        x = g["left"] + k * 150
        parts.append(
            f'<rect x="{x}" y="6" width="12" height="12" fill="{HPQ_COLORS[which]}"/>'
            f'<text x="{x + 17}" y="16" font-size="12" fill="#1d232a">'
            f"{escape(t('k.' + which))}</text>"
        )
    for v in (0, 0.5, 1):
        y = g["bottom"] - v * scale
        parts.append(
            f'<line x1="{g["left"]}" x2="{g["width"] - 4}" y1="{y:g}" y2="{y:g}" stroke="#e4e7eb"/>'
            f'<text x="{g["left"] - 5}" y="{y + 4:g}" font-size="11" text-anchor="end" '
            f'fill="#39424c">{v:g}</text>'
        )
    for which, values in (("p", c.p), ("q", c.q)):
        for i, v in enumerate(values):
            x = _hpq_bar_x(i, which)
            h = v * scale
            label = t("k.bar", dist=t("k." + which), i=i + 1)
            parts.append(
                f'<rect class="bar" data-dist="{which}" data-i="{i}" x="{x:g}" '
                f'y="{g["bottom"] - h:.2f}" width="{g["bar"]}" height="{h:.2f}" '
                f'fill="{HPQ_COLORS[which]}"/>'
                f'<text class="value" data-dist="{which}" data-i="{i}" x="{x + g["bar"] / 2:g}" '
                f'y="{g["bottom"] - h - 4:.2f}" font-size="10" text-anchor="middle" '
                f'fill="#1d232a">{v:.3f}</text>'
                # a slider only once the script runs (it adds the role, the values and the
                # tab stop): without JavaScript nothing announces a control that does nothing
                f'<rect class="hit" data-dist="{which}" data-i="{i}" x="{x - 2:g}" '
                f'y="{g["top"] - 14}" width="{g["bar"] + 4}" height="{scale + 14}" '
                f'aria-label="{escape(label)}"/>'
            )
    for i in range(c.outcomes):
        x = g["left"] + i * g["group"] + (8 + g["bar"] + 2)
        parts.append(
            f'<text x="{x:g}" y="{g["bottom"] + 16}" font-size="11" text-anchor="middle" '
            f'fill="#39424c">{escape(t("k.outcome", i=i + 1))}</text>'
        )
    y0 = g["stack_y"]
    parts.append(
        f'<rect id="hpq-h" x="{g["left"]}" y="{y0}" width="{c.entropy * nat:.2f}" '
        f'height="{g["stack_h"]}" fill="{HPQ_COLORS["h"]}"/>'
        f'<rect id="hpq-kl" x="{g["left"] + c.entropy * nat:.2f}" y="{y0}" '
        f'width="{c.kl * nat:.2f}" height="{g["stack_h"]}" fill="{HPQ_COLORS["kl"]}"/>'
        f'<text id="hpq-h-label" x="{g["left"] + 4}" y="{y0 + 15}" font-size="11" '
        f'fill="#fff">H(p)</text>'
        f'<text id="hpq-kl-label" x="{g["left"] + c.entropy * nat + 4:.2f}" y="{y0 + 15}" '
        f'font-size="11" fill="#1d232a">KL</text>'
    )
    for v in range(int(g["max_nats"]) + 1):
        x = g["left"] + v * nat
        parts.append(
            f'<line x1="{x:.2f}" x2="{x:.2f}" y1="{y0 + g["stack_h"]}" '
            f'y2="{y0 + g["stack_h"] + 4}" stroke="#39424c"/>'
            f'<text x="{x:.2f}" y="{y0 + g["stack_h"] + 16}" font-size="10" '
            f'text-anchor="middle" fill="#39424c">{v}</text>'
        )
    parts.append(
        f'<text x="{g["left"]}" y="{y0 - 6}" font-size="11" fill="#39424c">'
        f"H(p, q) = H(p) + KL(p‖q), {escape(t('fig.nats'))}</text></svg>"
    )
    return "".join(parts)


def _nats(x: float) -> str:
    return f"{x:.3f}"


def hpq_json(c: CodeLength, t: Texts) -> str:
    data = {
        "p": list(c.p),
        "q": list(c.q),
        "library": {"h": c.entropy, "kl": c.kl, "hpq": c.cross_entropy},
        "geometry": HPQ,
        "text": {"readout": t("k.readout", h="{h}", kl="{kl}", hpq="{hpq}")},
    }
    return json.dumps(data, ensure_ascii=False).replace("</", "<\\/")


def hpq_html(results: DemoResults, t: Texts) -> str:
    """The draggable bars: drawn here with the library's example (seen without JavaScript),
    made interactive by the script."""
    c = results.code
    readout = t("k.readout", h=_nats(c.entropy), kl=_nats(c.kl), hpq=_nats(c.cross_entropy))
    static = t(
        "k.static",
        h=_nats(c.entropy),
        kl=_nats(c.kl),
        hpq=_nats(c.cross_entropy),
        gap=sci(c.gap),
    )
    return f"""
<div class="play" id="hpq-play">
<h3>{escape(t("k.title"))}</h3>
<p class="note">{escape(t("k.intro"))}</p>
<p class="note" id="hpq-howto" hidden>{escape(t("k.howto"))}</p>
<figure class="hpq">{hpq_svg(c, t)}
<figcaption><span id="hpq-readout" aria-live="polite">{escape(readout)}</span><br>
<span id="hpq-static">{escape(static)}</span></figcaption></figure>
<div class="hpq-buttons" id="hpq-buttons" hidden>
<button type="button" id="hpq-reset">{escape(t("k.reset"))}</button>
<button type="button" id="hpq-equal">{escape(t("k.equal"))}</button>
</div>
<noscript><p class="note">{escape(t("k.noscript"))}</p></noscript>
</div>
<script type="application/json" id="hpq-data">{hpq_json(c, t)}</script>"""


# -- the page -------------------------------------------------------------------------------


def _claims(t: Texts) -> str:
    formulas = {
        1: mathml.BCE_FORM + mathml.CE_FORM,
        2: mathml.LIKELIHOOD_FORM,
        3: mathml.GRADIENTS_FORM,
        4: mathml.SOFTMAX_FORM,
    }
    keys = {
        1: ("identities",),
        2: ("identities",),
        3: (
            "nielsen",
            "gradient_anatomy",
            "saturated_neuron",
            "cost_origin",
            "fair_race",
            "derivation_checks",
            "hidden_layer",
        ),
        4: ("canonical_link", "derivation_checks"),
    }
    sep = "、" if t.lang == "zh" else ", "
    where = {
        k: sep.join(str(n) for n in sorted(PART_OF[key] for key in v)) for k, v in keys.items()
    }
    items = "\n".join(
        f'<li><p>{escape(t(f"claim.{k}"))} <span class="note">'
        f"{escape(t('claim.where_many' if len(keys[k]) > 1 else 'claim.where', parts=where[k]))}"
        "</span></p>"
        f'<div class="eq">{formulas[k]}</div></li>'
        for k in formulas
    )
    return f'<ol class="claims">{items}</ol>'


def _section(s: Section, results: DemoResults, t: Texts, figure_dir: Path) -> str:
    extra = ""
    if s.key == "saturated_neuron":
        extra = play_html(results, t)
    elif s.key == "derivation_checks":
        extra = derivations_html(results, t)
    elif s.key == "cost_origin":
        extra = origin_html(results, t)
    elif s.key == "identities":
        extra = hpq_html(results, t)
    details = ""
    if s.details:
        paragraphs = "\n".join(f"<p>{escape(p)}</p>" for p in s.details)
        details = f'<h3>{escape(s.details_title)}</h3><div class="meaning">{paragraphs}</div>'
    figures = _figures(s, figure_dir)
    if s.key in ("derivation_checks", "cost_origin"):  # the derivation first, its chart after it
        body = extra + figures
    else:
        body = figures + extra
    # the tables fold away behind the figures: the numbers stay one click from the picture
    tables = ""
    if s.tables:
        inner = "\n".join(_table(tbl) for tbl in s.tables)
        tables = (
            f'<details class="numbers"><summary>{escape(t("page.numbers"))}</summary>'
            f"{inner}</details>"
        )
    who = escape(s.who or t("page.article_says"))
    return f"""
<section id="{escape(s.key)}">
<h2>{escape(s.title)}</h2>
<blockquote class="claim"><span class="who">{who}:</span>
{escape(s.claim)}</blockquote>
<p>{escape(s.explain)}</p>
{body}
{tables}
<p class="verdict">{_badge(s.status, t)}<strong>{escape(t("page.measured_label"))}</strong>
{escape(s.verdict)}</p>
{details}
</section>"""


def intro_html(t: Texts) -> str:
    """The page's opening: the intuition before any table."""
    return f"""<section id="intuition" class="intro">
<h2>{escape(t("page.intro_title"))}</h2>
<p>{escape(t("page.intro_1"))}</p>
<p>{escape(t("page.intro_2", **PARTS))}</p>
</section>"""


def render_html(
    results: DemoResults,
    sections: list[Section],
    versions: dict[str, str],
    figure_dir: Path,
    t: Texts | None = None,
    seconds: float | None = None,
) -> str:
    """The whole page as a string; figures are read from ``figure_dir`` and embedded."""
    t = t or Texts("en")
    s = results.settings
    total = sum(results.seconds.values()) if seconds is None else seconds
    summary_rows = "\n".join(
        f'<tr><td><a href="#{escape(x.key)}">{escape(x.title)}</a></td>'
        f"<td>{_badge(x.status, t)}</td><td>{escape(x.verdict)}</td></tr>"
        for x in sections
    )
    summary = (
        f'<div class="scroll" tabindex="0"><table class="summary"><thead><tr>'
        f"<th>{escape(t('page.part'))}</th><th>{escape(t('page.verdict'))}</th>"
        f"<th>{escape(t('page.measured'))}</th></tr></thead><tbody>\n{summary_rows}\n"
        "</tbody></table></div>"
    )
    contents = "".join(
        f'<li><a href="#{escape(x.key)}">{escape(x.title)}</a></li>' for x in sections
    )
    glossary = "\n".join(
        "<dt>{}</dt><dd>{}</dd>".format(
            *(escape(p.strip()) for p in t(k, **PARTS).split("：" if t.lang == "zh" else ":", 1))
        )
        for k in GLOSSARY
    )
    version_text = ", ".join(f"{k} {v}" for k, v in versions.items())
    body = "\n".join(_section(x, results, t, figure_dir) for x in sections)
    cite = t("page.cite", **{k: escape(str(v)) for k, v in ARTICLE.items()})
    run = t(
        "page.run",
        mode=t("page.mode.quick" if s.quick else "page.mode.full"),
        seed=s.seed,
        seconds=f"{total:.1f}",
        version=escape(versions.get("crossentropy", "")),
    )
    return f"""<!DOCTYPE html>
<html lang="{t("html.lang")}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(t("page.title"))}</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>{escape(t("page.h1"))}</h1>
<p class="cite">{cite}</p>
<p class="sub">{escape(run)}</p>
<p class="sub">{escape(t("page.other_lang"))}: <code>{escape(t("page.other_lang_hint"))}</code></p>
</header>
{intro_html(t)}
<nav aria-label="{escape(t("page.contents"))}"><h2>{escape(t("page.contents"))}</h2>
<ul>{contents}<li><a href="#glossary">{escape(t("page.glossary"))}</a></li></ul></nav>
<section id="claims">
<h2>{escape(t("page.claims"))}</h2>
<p>{escape(t("page.claims_intro"))}</p>
{_claims(t)}
</section>
<section id="summary">
<h2>{escape(t("page.summary"))}</h2>
{summary}
</section>
{body}
<section id="glossary">
<h2>{escape(t("page.glossary"))}</h2>
<dl class="glossary">{glossary}</dl>
</section>
<footer><p>{escape(t("page.credits", **PARTS))}</p>
<p>{escape(t("page.footer", versions=version_text))}</p></footer>
<script>{SCRIPT}</script>
</body>
</html>
"""
