"""The ``crossentropy`` command.

Each subcommand is a function that adds its parser (``_add_<name>``) and a function that runs
it and returns the exit status; to add one, write both and list the adder in ``SUBCOMMANDS``.

    crossentropy demo [--out DIR] [--quick] [--seed N] [--lang en|zh]

Errors in a subcommand's arguments print that subcommand's usage; Ctrl-C stops with one line
and exit status 130.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__

PROG = "crossentropy"


def _seed(text: str) -> int:
    """argparse type: a non-negative integer."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {value}")
    return value


def _check_out_dir(out: Path) -> str | None:
    """Why ``out`` cannot receive the report, or ``None``. Nothing is created here: the
    report is built beside ``out`` and renamed into place at the end."""
    from .report import replaceable

    reason = replaceable(out)
    if reason is not None:
        return f"--out {out}: {reason}"
    parent = out.absolute().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir():
        return f"--out {out}: cannot create the directory (a parent is not a directory)"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"--out {out}: cannot create the directory ({existing} is not writable)"
    return None


def _mute(stream: Any) -> None:
    """Send the rest of ``stream``'s output to the null device (its reader went away)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def _say(text: str) -> None:
    """One progress line on stderr; a closed pipe (``| head``) ends the output, not the run."""
    try:
        print(text, file=sys.stderr, flush=True)
    except BrokenPipeError:
        _mute(sys.stderr)


class _Progress:
    """Progress of the demo: a bar on a terminal, one line per part otherwise (logs, CI)."""

    def __init__(self, total: int, interactive: bool) -> None:
        self.total = total
        self.done = 0
        self.interactive = interactive
        self._bar: Any = None
        self._task: Any = None
        self._last_part = ""

    def __enter__(self) -> _Progress:
        if self.interactive:
            from rich.console import Console

            from .report.terminal import progress_bar

            self._bar = progress_bar(Console(stderr=True))
            self._bar.__enter__()
            self._task = self._bar.add_task("starting", total=self.total)
        else:
            _say(f"{PROG} demo: running ({self.total} units of work)")
        return self

    def advance(self, description: str) -> None:
        self.done += 1
        if self._bar is not None:
            self._bar.update(self._task, advance=1, description=description)
            return
        part = description.split(":")[0]
        if part != self._last_part:
            self._last_part = part
            _say(f"{PROG} demo: [{self.done}/{self.total}] {part}")

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(None, None, None)


def _run_demo(args: argparse.Namespace) -> int:
    start = time.perf_counter()  # the run time quoted counts the imports too
    out = Path(args.out)
    if out.is_symlink():  # write where the link points; renaming would replace the link itself
        out = out.resolve()
    # The extra first: checking the output folder already imports the report (matplotlib).
    missing = [m for m in ("matplotlib", "sklearn", "rich") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"{PROG} demo: error: the demo needs the [demo] extra "
            f"(pip install 'crossentropy[demo]'); missing: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    error = _check_out_dir(out)
    if error is not None:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    # Heavy imports only once the arguments are known to be good.
    try:
        from rich.console import Console

        from .experiments import DemoSettings, run_demo
        from .report import write_report
        from .report.terminal import print_summary
    except ImportError as exc:
        print(
            f"{PROG} demo: error: the demo needs the [demo] extra "
            f"(pip install 'crossentropy[demo]'): {exc}",
            file=sys.stderr,
        )
        return 1

    class _Console(Console):  # type: ignore[misc]
        def on_broken_pipe(self) -> None:
            # rich's default exits with status 1; the report is written, so stop printing only
            self.quiet = True
            _mute(sys.stdout)

    console = _Console()
    settings = DemoSettings(seed=args.seed, quick=args.quick)
    with _Progress(settings.work_units + 1, sys.stderr.isatty()) as progress:
        results = run_demo(settings, on_progress=progress.advance)
        try:
            # one run time, read as the page is written: the page and the terminal agree
            files = write_report(
                results, out, lang=args.lang, clock=lambda: time.perf_counter() - start
            )
        except OSError as exc:
            print(f"{PROG} demo: error: cannot write the report into {out}: {exc}", file=sys.stderr)
            return 1
        progress.advance("report written")
    try:
        print_summary(
            console, list(files.sections), files.index.absolute(), files.seconds, args.lang
        )
        sys.stdout.flush()
    except BrokenPipeError:  # the report is written; a reader that left early is no error
        _mute(sys.stdout)
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the article's experiments and write an HTML report",
        description=(
            "Reproduce the article's claims (gradient anatomy, the saturated neuron, a fair "
            "MSE-vs-cross-entropy race on real data, derivation checks, identities) and write "
            "a self-contained index.html, metrics.json and the figures into --out. An earlier "
            "report in --out is replaced only once the new one is complete."
        ),
    )
    p.add_argument(
        "--out",
        metavar="DIR",
        default="crossentropy-report",
        help="output directory, created if needed (default: %(default)s)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help="shrink every experiment to run in a few seconds (for tests)",
    )
    p.add_argument(
        "--lang",
        choices=("en", "zh"),
        default="en",
        help="language of the report: en (English) or zh (中文) (default: %(default)s)",
    )
    p.add_argument(
        "--seed",
        metavar="N",
        type=_seed,
        default=0,
        help="seed of the data splits and initialisations (default: %(default)s)",
    )
    p.set_defaults(run=_run_demo)


SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _add_demo,
)


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Cross-entropy losses with closed-form gradients, and the experiments "
        "behind them.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def _subparser(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            found: argparse.ArgumentParser = action.choices[name]
            return found
    raise KeyError(name)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crossentropy`` console script; returns the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra:
            # Report unknown arguments with the usage of the subcommand they were given to.
            target = parser if args.command is None else _subparser(parser, args.command)
            target.error(f"unrecognized arguments: {' '.join(extra)}")
        if args.command is None:
            parser.print_help(sys.stderr)
            return 2
        status: int = args.run(args)
    except KeyboardInterrupt:
        # One line, the conventional status of a SIGINT (128 + 2); write_report has already
        # removed its temporary folder, and any earlier report is untouched.
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    return status


if __name__ == "__main__":
    raise SystemExit(main())
