"""The terminal side of the demo: a progress bar while it runs, a table of verdicts after."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from .i18n import Texts
from .sections import CONFIRMED, PASSED, Section


def progress_bar(console: Console) -> Progress:
    """A progress bar for the demo's units of work (use as a context manager)."""
    return Progress(
        TextColumn("[bold]crossentropy demo[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.description}", style="dim"),
        console=console,
    )


def _style(status: str) -> str:
    return "green" if status in (CONFIRMED, PASSED) else "yellow" if status == "mixed" else "red"


def print_summary(
    console: Console, sections: list[Section], index: Path, seconds: float, lang: str = "en"
) -> None:
    """The verdicts as a table, then where the report is: a clickable ``file://`` link on a
    terminal, the plain path on one unbroken line otherwise (so it can be copied or piped)."""
    t = Texts(lang)
    table = Table(title=t("page.summary"), show_lines=True, expand=False)
    # Chinese has no spaces: a whole clause is one "word" to rich, which cut it short with an
    # ellipsis where it overflowed. "fold" breaks a too-long word at the column's edge instead
    # (counting a wide CJK character as two columns), so no character is dropped.
    table.add_column(t("page.part"), no_wrap=True, overflow="fold")
    table.add_column(t("page.verdict"), no_wrap=True, overflow="fold")
    table.add_column(t("page.measured"), overflow="fold")
    for s in sections:
        table.add_row(
            escape(s.short),
            f"[{_style(s.status)}]{escape(t('status.' + s.status))}[/]",
            escape(s.verdict),
        )
    console.print(table)
    if console.is_terminal:
        uri = index.as_uri()
        console.print(f"Report: [link={uri}]{escape(uri)}[/link]", soft_wrap=True)
    else:
        console.print(f"Report: {escape(str(index))}", soft_wrap=True, highlight=False)
    console.print(f"Finished in {seconds:.1f} s.", highlight=False)
