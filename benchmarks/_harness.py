"""Shared measuring tools for the benchmarks (see ../shared/BENCHMARKING.md).

- Time: implementations run interleaved in one process (A B C, B C A, ...) after a warm-up;
  medians and ratios are reported, never absolute times alone.
- Peak memory: each implementation in a fresh subprocess. After the inputs are allocated the
  high-water mark is reset (``/proc/self/clear_refs``), the code runs once, and ``VmHWM`` minus
  the resident size at the reset is the peak above the inputs. The returned gradient is part
  of the peak. ``ru_maxrss`` is not used: in a child it carries the parent's peak.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

# Where each benchmark writes its section; the smoke test points it elsewhere.
RESULTS_DIR = Path(
    os.environ.get("CROSSENTROPY_BENCH_RESULTS", Path(__file__).resolve().parent / "results")
)
MiB = 1024**2

_PEAK_PROBE = """
import gc, json, sys
def _status(key):
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith(key + ':'):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)
{setup}
gc.collect()
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
_base = _status('VmRSS')
{run}
_peak = _status('VmHWM')
print('PEAK_JSON ' + json.dumps({{'base': _base, 'peak': _peak}}))
"""


def interleaved_times(
    fns: dict[str, Callable[[], object]], repeats: int = 7, warmup: int = 1
) -> dict[str, list[float]]:
    """Seconds per call for each function, run interleaved with a rotating order."""
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    return times


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs))


def peak_memory_above_inputs(setup: str, run: str, env: dict[str, str] | None = None) -> int:
    """Bytes of peak resident memory above the inputs, measured in a fresh interpreter.

    ``setup`` allocates the inputs (and may warm up on small ones); ``run`` executes the
    measured code once and must keep its outputs alive until the end of ``run``.
    """
    code = _PEAK_PROBE.format(setup=textwrap.dedent(setup), run=textwrap.dedent(run))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("PEAK_JSON "):
            data = json.loads(line[len("PEAK_JSON ") :])
            return int(data["peak"]) - int(data["base"])
    raise RuntimeError(f"peak-memory probe failed:\n{proc.stdout}\n{proc.stderr}")


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_result(name: str, markdown: str) -> Path:
    """Write one benchmark's markdown section to ``benchmarks/results/<name>.md``."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.md"
    path.write_text(markdown.rstrip() + "\n")
    return path


def machine_line() -> str:
    import platform

    cpu = platform.processor() or platform.machine()
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}"


# --------------------------------------------------------------------------- process groups


def proc_status(key: str) -> int:
    """A ``/proc/self/status`` size (``VmRSS``, ``VmHWM``, ...) in bytes."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(key)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(script: str, world: int, args: Sequence[object], timeout: float) -> list[dict]:
    """Run ``script --rank RANK WORLD PORT *args`` as ``world`` processes of one gloo group
    (one thread each) and return what each printed on its ``RANK_JSON`` line, in rank order;
    kill them all if one fails or the timeout passes."""
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, script, "--rank", *map(str, (r, world, port, *args))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        for r in range(world)
    ]
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            lines = [ln for ln in out.splitlines() if ln.startswith("RANK_JSON ")]
            if p.returncode or not lines:
                raise RuntimeError(f"rank failed ({p.returncode}):\n{out}\n{err[-3000:]}")
            results.append(json.loads(lines[0][len("RANK_JSON ") :]))
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return results


# --------------------------------------------------------------------------- contention


@contextlib.contextmanager
def burners(count: int) -> Iterator[list[int]]:
    """``count`` CPU-bound processes (a Python busy loop each) running beside the ``with``
    block, as DataLoader workers or another job would; ended by pid when the block exits, also
    on an exception. Yields their pids."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5 if count else 0.0)  # let them reach the scheduler's steady state
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
