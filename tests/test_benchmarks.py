"""Smoke test of the benchmark scripts: each runs in --quick mode and writes its table.

No timing is asserted (that is the benchmarks' job, not the tests'); this only keeps the
scripts working as the code they measure changes. Output goes to a temporary folder, never
to ``benchmarks/results``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

# Every benchmark measures against torch ([torch] extra): skipped without it.
pytest.importorskip("torch")

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


# Sections each quick run must write (its newer cases: the dry run must reach their code).
SECTIONS = {
    "gpu": ["per-token statistics, RL loss", "z_loss"],
    "lm": ["`linear_token_stats`", "`cross_entropy(z_loss=1e-4, softcap=30.0)`"],
    "forward": ["`cross_entropy` forward only", "`linear_token_stats` forward only"],
    "causal_lm": ["### fp32", "### bf16 autocast", "crossentropy.transformers.patch(model)"],
    "torch": ["probability targets, label_smoothing=0.1", "token_stats, RL loss"],
    "dtensor": ["`crossentropy.torch.cross_entropy`", "`loss_parallel()` + `F.cross_entropy`"],
}
# Benchmarks of an optional integration: skipped without it.
NEEDS = {"causal_lm": "transformers"}


@pytest.mark.parametrize(
    "name",
    ["core", "torch", "distributed", "dtensor", "gpu", "lm", "forward", "precision", "causal_lm"],
)
def test_benchmark_quick_run_writes_a_table(name: str, tmp_path: Path) -> None:
    if name in NEEDS:
        pytest.importorskip(NEEDS[name])
    env = {**os.environ, "CROSSENTROPY_BENCH_RESULTS": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(BENCHMARKS / f"bench_{name}.py"), "--quick"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    table = (tmp_path / f"{name}.md").read_text()
    assert table.startswith("## ")
    assert "|---" in table
    for section in SECTIONS.get(name, []):
        assert section in table
