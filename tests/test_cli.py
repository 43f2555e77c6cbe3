"""``crossentropy demo`` end to end through the console script, and its argument errors."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from crossentropy import __version__
from crossentropy.cli import build_parser, main

FIGURES = {
    "gradient_anatomy.png",
    "saturated_neuron.png",
    "race_curves.png",
    "derivation_checks.png",
    "identities.png",
}


def console_script() -> list[str]:
    """The installed ``crossentropy`` entry point (beside this Python), else ``-m``."""
    script = shutil.which("crossentropy", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "crossentropy.cli"]


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("cli") / "nested" / "report"  # parents are created
    proc = subprocess.run(
        [*console_script(), "demo", "--quick", "--seed", "3", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
        env={**os.environ, "COLUMNS": "120"},
    )
    return proc, out


def test_demo_quick_succeeds_and_says_where_the_report_is(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr
    assert str((out / "index.html").resolve()) in proc.stdout.replace("\n", "")
    for part in ("Gradient anatomy", "saturated neuron", "fair race", "Derivation", "Identities"):
        assert part in proc.stdout


def test_demo_quick_writes_the_report_files(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    _, out = quick_run
    assert {p.name for p in out.glob("*.png")} == FIGURES
    html = (out / "index.html").read_text(encoding="utf-8")
    refs = re.findall(r'(?:src|href)="([^"#][^"]*)"', html)
    assert FIGURES <= set(refs)
    for ref in refs:
        assert (out / ref).is_file(), f"index.html references {ref}, which does not exist"


def test_demo_quick_metrics_json(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    _, out = quick_run
    m = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
    assert m["settings"]["seed"] == 3 and m["settings"]["quick"] is True
    race_keys = {
        "experiment",
        "dataset",
        "init",
        "loss",
        "learning_rate",
        "steps_to_target",
        "final_accuracy",
        "final_log_loss",
    }
    assert len(m["races"]) == 8
    assert all(race_keys <= set(r) for r in m["races"])
    assert {r["loss"] for r in m["races"]} == {"mse", "cross_entropy"}
    assert {r["experiment"] for r in m["races"]} == {"logistic_regression", "softmax_regression"}
    assert all({"name", "max_abs_error"} <= set(c) for c in m["gradient_checks"])
    assert all({"name", "lhs", "rhs", "abs_error"} <= set(i) for i in m["identities"])


# -- arguments ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["demo", "--seed", "-1"], "--seed: must be a non-negative integer, got -1"),
        (["demo", "--seed", "abc"], "--seed: must be a non-negative integer, got 'abc'"),
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_no_command_prints_help_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_out_that_cannot_be_created_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    assert main(["demo", "--quick", "--out", str(blocker / "report")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("crossentropy demo: error: --out")
    assert "cannot create the directory" in err
    assert "Traceback" not in err

    assert main(["demo", "--quick", "--out", str(blocker)]) == 1
    assert "exists and is not a directory" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.png"))  # nothing ran


def test_the_parser_has_room_for_more_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo"])
    assert args.command == "demo" and args.out == "crossentropy-report"
    assert args.seed == 0 and args.quick is False
    assert callable(args.run)


def test_missing_demo_extra_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "sklearn" else real(name, *a)
    )
    assert main(["demo", "--quick", "--out", str(tmp_path / "r")]) == 1
    err = capsys.readouterr().err
    assert "pip install 'crossentropy[demo]'" in err and "missing: sklearn" in err
