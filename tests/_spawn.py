"""Spawn a gloo process group for the vocabulary-parallel tests.

Each distributed test module is also its own worker: ``python <module> --worker RANK WORLD
PORT OUT`` runs the cases on one rank and writes ``OUT/rank{RANK}.json``. The parent starts
``world`` such processes on a free port (retrying once if another process took the port), kills
them after a timeout, and returns what every rank wrote.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest


class PortTaken(Exception):
    """The free port was taken by another process before the group bound it."""


def init_group(rank: int, world: int, port: int, timeout_s: float) -> None:
    """Join the gloo process group of a spawned worker (rank ``rank`` of ``world``, on
    127.0.0.1:``port``); a collective waits at most ``timeout_s`` seconds."""
    import datetime

    import torch.distributed as dist

    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )


def finish_worker(out: Path, results: Any, barrier: bool = True) -> None:
    """Write a worker's results to ``out`` and end the process without the interpreter's
    teardown.

    Every spawned worker ends here: after the results are written, the ranks meet at a barrier
    (so no rank tears the group down while another still uses it), destroy the group and leave
    with ``os._exit(0)``. The interpreter's own teardown is skipped because gloo's threads
    occasionally abort there ("terminate called without an active exception", exit code -6,
    about one spawn in ten on a loaded machine) after every result is written, which would fail
    a passing run. ``barrier=False`` is for a group a test has left out of step on purpose.
    """
    import torch.distributed as dist

    out.write_text(json.dumps(results))
    if barrier and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def logs(tmp: Path, world: int) -> str:
    """The last lines every rank printed (for a failure message)."""
    return "\n".join(
        f"--- rank {r}\n{(tmp / f'rank{r}.log').read_text()[-3000:]}" for r in range(world)
    )


def spawn_group(
    script: str, world: int, tmp: Path, timeout: float, attempts: int = 2
) -> list[dict[str, Any]]:
    """Run ``script`` as ``world`` workers; every rank's JSON results."""
    for attempt in range(attempts):
        try:
            return _spawn_once(script, world, tmp, timeout)
        except PortTaken:
            if attempt + 1 == attempts:
                raise
    raise AssertionError("unreachable")


def _spawn_once(script: str, world: int, tmp: Path, timeout: float) -> list[dict[str, Any]]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    procs = []
    for rank in range(world):
        log = open(tmp / f"rank{rank}.log", "w")
        cmd = [sys.executable, script, "--worker", str(rank), str(world), str(port), str(tmp)]
        procs.append((subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log))
    deadline = time.monotonic() + timeout
    try:
        for proc, _ in procs:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        pytest.fail(f"{world} ranks did not finish within {timeout} s: {logs(tmp, world)}")
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()
    codes = [proc.returncode for proc, _ in procs]
    if any(codes) and "Address already in use" in logs(tmp, world):
        raise PortTaken
    if any(codes):
        pytest.fail(f"worker exit codes {codes}: {logs(tmp, world)}")
    return [json.loads((tmp / f"rank{r}.json").read_text()) for r in range(world)]
