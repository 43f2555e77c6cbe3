"""The README's example prints what the README says it prints."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_output_is_current() -> None:
    text = README.read_text()
    match = re.search(r"## Example\n\n```python\n(.*?)```\n```text\n(.*?)```", text, re.S)
    assert match is not None, "README.md lost its Example section"
    code, expected = match.groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue() == expected


def test_readme_quick_start_is_the_two_commands() -> None:
    text = README.read_text()
    block = re.search(r"## Quick start\n\n```sh\n(.*?)```", text, re.S)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines()]
    assert commands == ["make demo", "make test"]


def test_readme_token_stats_example_output_is_current() -> None:
    import pytest

    pytest.importorskip("torch")
    text = README.read_text()
    match = re.search(
        r"### Per-token statistics \(RL fine-tuning\)\n.*?```python\n(.*?)```\n```text\n(.*?)```",
        text,
        re.S,
    )
    assert match is not None, "README.md lost its per-token statistics example"
    code, expected = match.groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue() == expected


def test_readme_options_example_output_is_current() -> None:
    import pytest

    pytest.importorskip("torch")
    text = README.read_text()
    match = re.search(
        r"### Z-loss, softcap and sample weights\n.*?```python\n(.*?)```\n```text\n(.*?)```",
        text,
        re.S,
    )
    assert match is not None, "README.md lost its options example"
    code, expected = match.groups()
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue() == expected
