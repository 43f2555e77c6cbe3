"""Packaging as distributors see it: the sdist carries its tests and passes a fast subset of
them when unpacked with the ``[test]`` extra alone (no torch, no plotting: their tests skip, the
NumPy core's run); the wheel and the sdist carry the LICENSE; the metadata is complete and its
version is ``crossentropy.__version__``.

Both archives are built with the installed setuptools through the PEP 517 hooks (no build
isolation, so no network), from the working tree.
"""

from __future__ import annotations

import email.parser
import importlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import crossentropy as ce

ROOT = Path(__file__).resolve().parents[1]

if not (ROOT / "pyproject.toml").is_file():  # running from an installed copy of the tests
    pytest.skip("needs the source tree", allow_module_level=True)
pytest.importorskip("setuptools")

# Fast tests that need nothing but numpy, pytest and hypothesis (no torch, no plotting) and the
# files the sdist must carry (tests/conftest.py, README.md), plus the doctests of four modules;
# test_special.py's torch parity tests skip there, its other tests run.
FAST_SUBSET = [
    "tests/test_validation.py",
    "tests/test_special.py",
    "tests/test_grad.py",
    "tests/test_readme.py",
    "tests/test_where.py",  # written into the unpacked copy by the test below
    "src/crossentropy/special.py",
    "src/crossentropy/binary.py",
    "src/crossentropy/categorical.py",
    "src/crossentropy/grad.py",
]
WHERE = """
from pathlib import Path

import crossentropy


def test_the_package_under_test_is_the_sdists() -> None:
    assert Path(crossentropy.__file__).is_relative_to(Path(__file__).parents[1] / "src")
"""


# Where the extras other than [test] are hidden: a finder in front of every other one, so that
# their modules are not found (``import`` raises, ``importlib.util.find_spec`` returns None), as
# after ``pip install .[test]`` alone. sitecustomize runs in every Python process started here.
HIDE = """
import sys

HIDDEN = frozenset({hidden!r})


class Hidden:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in HIDDEN:
            return None
        return self.finder.find_spec(name, path, target)

    def __getattr__(self, name):
        return getattr(self.finder, name)


sys.meta_path[:] = [Hidden(f) if hasattr(f, "find_spec") else f for f in sys.meta_path]
"""


def _normal(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def _name(requirement: str) -> str:
    """The distribution a requirement string names (``torch>=2.4; extra == "torch"``: torch)."""
    return re.split(r"[\s;<>=!~\[(]", requirement, maxsplit=1)[0]


def _closure(dists: set[str]) -> set[str]:
    """``dists`` and everything they require (extras' requirements left out)."""
    seen: set[str] = set()
    todo = list(dists)
    while todo:
        name = _normal(todo.pop())
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def _modules_of_other_extras() -> set[str]:
    """The top-level modules that only the extras other than [test] install (torch, matplotlib,
    sklearn, sphinx, ...) and what they alone bring along."""
    by_extra: dict[str, set[str]] = {}
    for req in importlib.metadata.requires("crossentropy") or []:
        name = _name(req)
        extra = re.search(r"extra == \"(\w+)\"", req)
        if _normal(name) != "crossentropy":
            by_extra.setdefault(extra.group(1) if extra else "", set()).add(name)
    kept = _closure(by_extra.pop("", set()) | by_extra.pop("test", set()))
    hidden = _closure(set().union(*by_extra.values())) - kept
    modules = {
        module
        for module, dists in importlib.metadata.packages_distributions().items()
        if {_normal(d) for d in dists} <= hidden
    }
    return modules | {_normal(d).replace("-", "_") for d in hidden}


@pytest.fixture(scope="module")
def test_extra_only(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment for a subprocess in which only the core and [test] are installed."""
    site = tmp_path_factory.mktemp("test-extra-only")
    (site / "sitecustomize.py").write_text(HIDE.format(hidden=sorted(_modules_of_other_extras())))
    # not CI's environment either: CI=true makes the docs tests insist on the docs tools,
    # which a distributor's `pip install .[test]` rightly lacks
    drop = ("PYTHONPATH", "PYTEST_ADDOPTS", "CI")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    return {**env, "PYTHONPATH": str(site)}


def _build(kind: str, out: Path) -> Path:
    code = f"import sys; from setuptools import build_meta as b; print(b.build_{kind}(sys.argv[1]))"
    proc = subprocess.run(
        [sys.executable, "-c", code, str(out)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out / proc.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _build("sdist", tmp_path_factory.mktemp("sdist"))


@pytest.fixture(scope="module")
def unpacked(sdist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("unpacked")
    with tarfile.open(sdist) as tar:
        tar.extractall(dest, filter="data")
    (top,) = dest.iterdir()
    return top


def _metadata(text: str) -> email.message.Message:
    return email.parser.Parser().parsestr(text)


def test_version_is_written_once_and_matches_the_metadata() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+)?(\.dev\d+)?", ce.__version__)
    assert importlib.metadata.version("crossentropy") == ce.__version__
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"] and "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "crossentropy.__version__"}
    changelog = (ROOT / "CHANGELOG.md").read_text()
    assert re.search(rf"^## {re.escape(ce.__version__)}\b", changelog, re.M)


def test_sdist_carries_tests_conftest_docs_and_license(unpacked: Path) -> None:
    for path in (
        "LICENSE",
        "CHANGELOG.md",
        "README.md",
        "README.pypi.md",
        "pyproject.toml",
        "constraints.txt",
        "tests/conftest.py",
        "tests/test_categorical.py",
        "docs/conf.py",
        "docs/index.rst",
        "docs/_ext/mathml.py",
        "benchmarks/RESULTS.md",
        "src/crossentropy/py.typed",
    ):
        assert (unpacked / path).is_file(), path
    tests_here = {p.name for p in (ROOT / "tests").glob("test_*.py")}
    tests_there = {p.name for p in (unpacked / "tests").glob("test_*.py")}
    assert tests_here <= tests_there
    names = [str(p.relative_to(unpacked)) for p in unpacked.rglob("*")]
    for junk in ("__pycache__", ".venv", "docs/_build", "docs/api/generated", ".pyc"):
        assert not [n for n in names if junk in n], junk
    assert "Permission is hereby granted" in (unpacked / "LICENSE").read_text()


def test_sdist_metadata_is_complete(unpacked: Path) -> None:
    meta = _metadata((unpacked / "PKG-INFO").read_text())
    assert meta["Name"] == "crossentropy" and meta["Version"] == ce.__version__
    assert meta["License-Expression"] == "MIT" and meta["License-File"] == "LICENSE"
    assert meta["Author"] or meta["Author-email"]
    assert "cross-entropy" in (meta["Keywords"] or "")
    classifiers = meta.get_all("Classifier") or []
    assert "Typing :: Typed" in classifiers
    assert any(c.startswith("Programming Language :: Python :: 3.1") for c in classifiers)
    extras = set(meta.get_all("Provides-Extra") or [])
    assert {"torch", "demo", "test", "dev", "docs"} <= extras
    requires = meta.get_all("Requires-Dist") or []
    test_deps = [r for r in requires if 'extra == "test"' in r]
    assert test_deps and not [r for r in test_deps if re.match(r"(ruff|mypy|sphinx)", r)]
    assert [r for r in requires if r.startswith("ruff") and 'extra == "dev"' in r]
    torch = [r.split(";")[0] for r in requires if r.startswith("torch")]
    assert torch and not [r for r in torch if "==" in r]  # a range, not a pin
    urls = meta.get_all("Project-URL") or []
    assert urls and all(re.fullmatch(r"[^,]+, https://\S+", u) for u in urls), urls


def test_index_readme_has_no_relative_links_or_images(unpacked: Path) -> None:
    meta = _metadata((unpacked / "PKG-INFO").read_text())
    body = meta.get_payload()
    assert isinstance(body, str) and "value_and_grad" in body
    assert meta["Description-Content-Type"] == "text/markdown"
    targets = re.findall(r"\]\(([^)]+)\)", body) + re.findall(r'(?:src|href)="([^"]+)"', body)
    relative = [t for t in targets if not re.match(r"https?://", t)]
    assert relative == []
    # its example is the README's, so test_readme.py keeps it honest
    example = re.compile(r"## Example\n\n```python\n(.*?)```\n```text\n(.*?)```", re.S)
    ours, theirs = example.search(body), example.search((ROOT / "README.md").read_text())
    assert ours and theirs and ours.groups() == theirs.groups()


def test_hidden_extras_are_not_importable(test_extra_only: dict[str, str]) -> None:
    code = (
        "import importlib.util as u\n"
        "for m in ('torch', 'matplotlib', 'sklearn', 'rich', 'sphinx'):\n"
        "    assert u.find_spec(m) is None, m\n"
        "import numpy, pytest, hypothesis, crossentropy\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=test_extra_only
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_collecting_the_whole_suite_without_the_other_extras_skips_instead_of_failing(
    unpacked: Path, test_extra_only: dict[str, str]
) -> None:
    # `pip install .[test]` alone: the torch and demo test modules, and the doctests of the
    # modules that need them, are skipped at collection; nothing fails to import.
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        check=False,
        cwd=unpacked,
        env=test_extra_only,
        timeout=300,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert not re.search(r"^ERROR|errors? during collection", out, re.M), out[-4000:]
    skipped = "\n".join(line for line in out.splitlines() if line.startswith("SKIPPED"))
    for module in ("test_torch_functional.py", "test_torch_distributed.py", "test_report.py"):
        assert f"tests/{module}" in skipped, skipped
    assert "src/crossentropy/torch/functional.py" in skipped, skipped
    # the NumPy core's tests are collected (their torch parity tests skip when they run)
    for module in ("test_binary", "test_categorical", "test_special", "test_validation"):
        assert f"tests/{module}.py::test_" in out, module


def test_pytest_passes_in_the_unpacked_sdist(
    unpacked: Path, test_extra_only: dict[str, str]
) -> None:
    # As a distributor runs it: no PYTHONPATH of its own, only [test] installed; pyproject's
    # pythonpath = ["src"] makes the tests and the doctests import the sdist's own copy
    # (tests/test_where.py checks which).
    (unpacked / "tests" / "test_where.py").write_text(WHERE)
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FAST_SUBSET],
        capture_output=True,
        text=True,
        check=False,
        cwd=unpacked,
        env=test_extra_only,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert re.search(r"\d+ passed", proc.stdout) and " failed" not in proc.stdout
    assert re.search(r"SKIPPED .*torch is not installed", proc.stdout), proc.stdout[-2000:]


def test_every_module_imports_where_its_extras_are_installed() -> None:
    # pytest's --doctest-ignore-import-errors (pyproject.toml) skips the doctests of a module
    # that does not import; with every extra installed (make test, CI) each one must.
    optional = ("torch", "triton", "matplotlib", "sklearn", "rich")
    absent = [name for name in optional if importlib.util.find_spec(name) is None]
    if absent:
        pytest.skip(f"needs every extra installed; missing: {', '.join(absent)}")
    package = ROOT / "src" / "crossentropy"
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        if parts[-1] != "__main__":  # running it would run the command
            importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))


def test_wheel_carries_the_license_and_py_typed(tmp_path: Path) -> None:
    wheel = _build("wheel", tmp_path)
    with zipfile.ZipFile(wheel) as zf:
        names = zf.namelist()
        licenses = [n for n in names if re.search(r"\.dist-info/licenses/LICENSE$", n)]
        assert licenses, names
        assert "Permission is hereby granted" in zf.read(licenses[0]).decode()
        assert "crossentropy/py.typed" in names
        assert not [n for n in names if n.startswith(("tests/", "docs/", "benchmarks/"))]
        meta = _metadata(zf.read(next(n for n in names if n.endswith("METADATA"))).decode())
    assert meta["Version"] == ce.__version__
