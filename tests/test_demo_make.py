"""``make demo`` on a fresh clone installs only the ``[demo]`` extra — no torch (a multi-GB
CUDA download outside this project's machines), no test tools — and a ``.venv`` that
``make test`` built is reused as it is.

The dry runs (``make -n``) are fast and always run. The real fresh clone (a new venv, packages
from the index, the whole demo) takes minutes and needs the network: set
``CROSSENTROPY_TEST_FRESH_CLONE=1`` to run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MAKE = shutil.which("make")
pytestmark = pytest.mark.skipif(
    MAKE is None or not (ROOT / "Makefile").is_file(), reason="needs make and the source tree"
)


def dry_run(tmp_path: Path, *stamps: str) -> str:
    for name in ("Makefile", "pyproject.toml", "constraints.txt"):
        shutil.copy(ROOT / name, tmp_path / name)
    for stamp in stamps:
        path = tmp_path / ".venv" / stamp
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
    assert MAKE is not None
    # Under `make test` this runs in a sub-make: without MAKEFLAGS/MAKELEVEL and with
    # --no-print-directory the plan is the same as from a shell.
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}
    proc = subprocess.run(
        [MAKE, "--no-print-directory", "-n", "demo"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    return proc.stdout


def test_make_demo_on_a_fresh_clone_installs_only_the_demo_extra(tmp_path: Path) -> None:
    plan = dry_run(tmp_path)
    installs = [line for line in plan.splitlines() if " install " in line]
    assert installs and all("'.[demo]'" in line for line in installs), plan
    assert "torch" not in plan and "test" not in plan.replace("test -x", "")
    assert plan.strip().splitlines()[-1] == ".venv/bin/crossentropy demo"


def test_make_demo_reuses_a_full_venv(tmp_path: Path) -> None:
    plan = dry_run(tmp_path, ".installed")
    assert "install" not in plan
    assert plan.strip() == ".venv/bin/crossentropy demo"


@pytest.mark.slow
@pytest.mark.skipif(
    os.environ.get("CROSSENTROPY_TEST_FRESH_CLONE") != "1",
    reason="set CROSSENTROPY_TEST_FRESH_CLONE=1 (needs the network, takes minutes)",
)
def test_make_demo_from_a_fresh_clone(tmp_path: Path) -> None:
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIRTUAL_ENV", "PYTHON"))}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(
        [MAKE or "make", "demo"], cwd=clone, capture_output=True, text=True, env=env, timeout=1800
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (clone / "crossentropy-report" / "index.html").is_file()
    python = clone / ".venv" / "bin" / "python"
    probe = subprocess.run(
        [str(python), "-c", "import importlib.util as u; print(u.find_spec('torch') is None)"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert probe.stdout.strip() == "True"  # torch was not installed
