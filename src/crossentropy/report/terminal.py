"""The terminal side of the demo: a progress bar while it runs, a table of verdicts after."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

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


def print_summary(console: Console, sections: list[Section], index: Path, seconds: float) -> None:
    """The verdicts as a table, then where the report is."""
    table = Table(title="What this run measured", show_lines=True, expand=False)
    table.add_column("part", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("measured")
    for s in sections:
        table.add_row(s.title, f"[{_style(s.status)}]{s.status}[/]", s.verdict)
    console.print(table)
    console.print(f"Report: [bold]{index}[/bold]  (metrics: {index.parent / 'metrics.json'})")
    console.print(f"Finished in {seconds:.1f} s.")
