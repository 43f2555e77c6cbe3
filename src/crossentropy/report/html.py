"""The self-contained HTML page: inline CSS, no script, no network; figures are PNG files
beside it, referenced by relative paths."""

from __future__ import annotations

from html import escape

from ..experiments import DemoResults
from .sections import CONFIRMED, PASSED, Section, Table

CSS = """
body { font: 16px/1.5 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1d232a;
       max-width: 1060px; margin: 2rem auto; padding: 0 1.2rem; background: #fff; }
h1 { font-size: 1.9rem; margin-bottom: .2rem; }
h2 { font-size: 1.35rem; margin: 2.6rem 0 .4rem; border-bottom: 1px solid #dde2e8;
     padding-bottom: .3rem; }
.sub { color: #5b6570; margin-top: 0; }
.claim { font-style: italic; color: #39424c; border-left: 4px solid #0072B2;
         padding: .2rem .8rem; margin: .6rem 0 1rem; background: #f4f8fb; }
.verdict { padding: .6rem .9rem; border-radius: 6px; background: #f6f7f9; margin: 1rem 0; }
.details { color: #39424c; font-size: .92rem; }
.badge { display: inline-block; font-size: .78rem; font-weight: 600; text-transform: uppercase;
         letter-spacing: .04em; padding: .1rem .5rem; border-radius: 999px; margin-right: .5rem;
         color: #fff; background: #8a6d00; }
.badge.good { background: #1b7f4a; }
.badge.bad { background: #b3261e; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e6e9ee; border-radius: 4px; }
table { border-collapse: collapse; margin: .6rem 0 .3rem; font-size: .88rem; width: 100%; }
th, td { border-bottom: 1px solid #e6e9ee; padding: .3rem .5rem; text-align: left;
         vertical-align: top; }
th { background: #f6f7f9; font-weight: 600; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
caption { caption-side: bottom; text-align: left; color: #5b6570; font-size: .82rem;
          padding-top: .3rem; }
.summary td:first-child { white-space: nowrap; }
footer { margin: 3rem 0 1rem; color: #5b6570; font-size: .85rem; }
code { background: #f1f3f5; padding: 0 .25rem; border-radius: 3px; }
"""


def _badge(status: str) -> str:
    cls = (
        "good"
        if status in (CONFIRMED, PASSED)
        else "bad"
        if status in ("not confirmed", "failed")
        else ""
    )
    return f'<span class="badge {cls}">{escape(status)}</span>'


def _is_number(cell: str) -> bool:
    try:
        float(cell.replace(",", "").rstrip("%"))
    except ValueError:
        return cell in ("never", "0")
    return True


def _table(t: Table, css_class: str = "") -> str:
    numeric = [
        bool(t.rows) and all(_is_number(r[k]) for r in t.rows) for k in range(len(t.headers))
    ]
    head = "".join(
        f'<th class="num">{escape(h)}</th>' if num else f"<th>{escape(h)}</th>"
        for h, num in zip(t.headers, numeric, strict=True)
    )
    body = "\n".join(
        "<tr>"
        + "".join(
            f'<td class="num">{escape(c)}</td>' if _is_number(c) else f"<td>{escape(c)}</td>"
            for c in row
        )
        + "</tr>"
        for row in t.rows
    )
    cap = f"<caption>{escape(t.caption)}</caption>" if t.caption else ""
    cls = f' class="{css_class}"' if css_class else ""
    return f"<table{cls}>{cap}<thead><tr>{head}</tr></thead><tbody>\n{body}\n</tbody></table>"


def _section(s: Section) -> str:
    tables = "\n".join(_table(t) for t in s.tables)
    details = f'<p class="details">{escape(s.details)}</p>' if s.details else ""
    return f"""
<section id="{escape(s.key)}">
<h2>{escape(s.title)}</h2>
<p class="claim">The article: {escape(s.claim)}</p>
<figure><img src="{escape(s.figure)}" alt="{escape(s.figure_alt)}"></figure>
{tables}
<p class="verdict">{_badge(s.status)}<strong>Measured in this run:</strong> {escape(s.verdict)}</p>
{details}
</section>"""


def render_html(results: DemoResults, sections: list[Section], versions: dict[str, str]) -> str:
    """The whole page as a string."""
    s = results.settings
    summary_rows = "\n".join(
        f'<tr><td><a href="#{escape(x.key)}">{escape(x.title)}</a></td>'
        f"<td>{_badge(x.status)}</td><td>{escape(x.verdict)}</td></tr>"
        for x in sections
    )
    summary_html = (
        '<table class="summary"><thead><tr><th>part</th><th>verdict</th><th>measured</th>'
        f"</tr></thead><tbody>\n{summary_rows}\n</tbody></table>"
    )
    total = sum(results.seconds.values())
    version_text = ", ".join(f"{k} {v}" for k, v in versions.items())
    body = "\n".join(_section(x) for x in sections)
    mode = "quick" if s.quick else "full"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>crossentropy demo — why cross-entropy beats MSE under a sigmoid</title>
<style>{CSS}</style>
</head>
<body>
<header>
<h1>Why cross-entropy beats MSE under a sigmoid</h1>
<p class="sub">The claims of the source article (“the cross-entropy loss function”, 2020), each
checked by running code. Produced by <code>crossentropy demo</code> ({mode} run, seed {s.seed},
{total:.1f} s of experiments).</p>
</header>
<section id="summary">
<h2>Summary</h2>
{summary_html}
</section>
{body}
<footer>Everything on this page was computed in this run with the library's closed-form
gradients (NumPy). Data: scikit-learn's bundled breast-cancer and digits sets. The numbers
are also in <a href="metrics.json">metrics.json</a>. Versions: {escape(version_text)}.</footer>
</body>
</html>
"""
