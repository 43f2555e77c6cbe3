"""The ``crossentropy`` command.

Each subcommand is a function that adds its parser (``_add_<name>``) and a function that runs
it and returns the exit status; to add one, write both and list the adder in ``SUBCOMMANDS``.

    crossentropy demo [--out DIR] [--quick] [--seed N]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

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


def _prepare_out_dir(out: Path) -> str | None:
    """Create ``out`` if needed; return an error message if it cannot be used."""
    if out.exists() and not out.is_dir():
        return f"--out {out}: exists and is not a directory"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"--out {out}: cannot create the directory ({exc.strerror or exc})"
    if not os.access(out, os.W_OK | os.X_OK):
        return f"--out {out}: the directory is not writable"
    return None


def _run_demo(args: argparse.Namespace) -> int:
    out = Path(args.out)
    error = _prepare_out_dir(out)
    if error is not None:
        print(f"{PROG} demo: error: {error}", file=sys.stderr)
        return 1
    missing = [m for m in ("matplotlib", "sklearn", "rich") if importlib.util.find_spec(m) is None]
    if missing:
        print(
            f"{PROG} demo: error: the demo needs the [demo] extra "
            f"(pip install 'crossentropy[demo]'); missing: {', '.join(missing)}",
            file=sys.stderr,
        )
        return 1
    # Heavy imports only once the arguments are known to be good.
    try:
        from rich.console import Console

        from .experiments import DemoSettings, run_demo
        from .report import write_report
        from .report.terminal import print_summary, progress_bar
    except ImportError as exc:
        print(
            f"{PROG} demo: error: the demo needs the [demo] extra "
            f"(pip install 'crossentropy[demo]'): {exc}",
            file=sys.stderr,
        )
        return 1

    console = Console()
    settings = DemoSettings(seed=args.seed, quick=args.quick)
    start = time.perf_counter()
    with progress_bar(Console(stderr=True)) as progress:
        task = progress.add_task("starting", total=settings.work_units + 1)

        def advance(description: str) -> None:
            progress.update(task, advance=1, description=description)

        results = run_demo(settings, on_progress=advance)
        progress.update(task, description="writing the report")
        try:
            files = write_report(results, out)
        except OSError as exc:
            progress.stop()
            print(f"{PROG} demo: error: cannot write the report into {out}: {exc}", file=sys.stderr)
            return 1
        advance("done")
    print_summary(console, list(files.sections), files.index.resolve(), time.perf_counter() - start)
    return 0


def _add_demo(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "demo",
        help="run the article's experiments and write an HTML report",
        description=(
            "Reproduce the article's claims (gradient anatomy, the saturated neuron, a fair "
            "MSE-vs-cross-entropy race on real data, derivation checks, identities) and write "
            "index.html, metrics.json and PNG figures into --out."
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``crossentropy`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    status: int = args.run(args)
    return status


if __name__ == "__main__":
    raise SystemExit(main())
