"""Sphinx math renderer that writes MathML, converted from LaTeX at build time.

Browsers render MathML natively (Chromium since 109, Firefox, Safari), so the site shows its
math with no JavaScript, no CDN and no network. ``latex2mathml`` does the conversion; a formula
it cannot convert is a build warning (an error under ``-W``), never silently dropped.
"""

from __future__ import annotations

import html
from typing import Any

import latex2mathml.converter
from docutils import nodes
from sphinx.application import Sphinx
from sphinx.util import logging
from sphinx.writers.html5 import HTML5Translator

logger = logging.getLogger(__name__)


def to_mathml(latex: str, *, display: bool, node: nodes.Node | None = None) -> str:
    """``latex`` as a ``<math>`` element (or the escaped source, with a warning)."""
    try:
        return latex2mathml.converter.convert(latex, display="block" if display else "inline")
    except Exception as exc:  # latex2mathml raises many types; each is a build warning
        logger.warning(
            "cannot convert math to MathML (%s): %s", type(exc).__name__, latex, location=node
        )
        return f'<code class="math-source">{html.escape(latex)}</code>'


def visit_math(self: HTML5Translator, node: nodes.math) -> None:
    self.body.append(
        f'<span class="math notranslate">{to_mathml(node.astext(), display=False, node=node)}'
        "</span>"
    )
    raise nodes.SkipNode


def visit_displaymath(self: HTML5Translator, node: nodes.math_block) -> None:
    # As Sphinx's other renderers: blank lines separate equations (unless :nowrap:).
    latex = node.astext()
    parts = [latex] if node.get("nowrap") else [p for p in latex.split("\n\n") if p.strip()]
    self.body.append(self.starttag(node, "div", CLASS="math notranslate"))
    if node.get("number"):
        self.body.append(f'<span class="eqno">({node["number"]})</span>')
    for part in parts:
        self.body.append(to_mathml(part.strip(), display=True, node=node))
    self.body.append("</div>\n")
    raise nodes.SkipNode


def setup(app: Sphinx) -> dict[str, Any]:
    app.add_html_math_renderer("mathml", (visit_math, None), (visit_displaymath, None))
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
