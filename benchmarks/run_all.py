"""Run every benchmark and gather their tables into ``benchmarks/RESULTS.md``.

Usage: ``python benchmarks/run_all.py [--quick]`` (``make bench``). Each ``bench_*.py`` script
writes its own section to ``benchmarks/results/``; this script runs them one after another
(never in parallel: they would time each other) and concatenates the sections.
"""

from __future__ import annotations

import argparse
import datetime as dt
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    parser.add_argument("only", nargs="*", help="names of benchmarks to run (default: all)")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        cmd = [sys.executable, str(script)] + (["--quick"] if args.quick else [])
        if subprocess.run(cmd, check=False).returncode != 0:
            failed.append(script.name)
    sections = sorted((HERE / "results").glob("*.md"))
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    body = [
        "# Benchmark results",
        "",
        f"Written by `make bench` on {stamp}. Times are medians of interleaved runs in one "
        "process; peak memory is measured in a fresh subprocess per implementation, above the "
        "inputs, counting the returned gradients.",
        "",
    ]
    for section in sections:
        body += [section.read_text().rstrip(), ""]
    (HERE / "RESULTS.md").write_text("\n".join(body))
    print(f"wrote {HERE / 'RESULTS.md'}")
    if failed:
        print("failed: " + ", ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
