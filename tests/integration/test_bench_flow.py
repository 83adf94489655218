"""benchmarks/flow.py on tiny settings: a fresh demo project, `nlpops run`, then the unchanged rerun."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import readme_env

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(900)
def test_flow_benchmark_smoke(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(REPO / "benchmarks" / "flow.py"), "--smoke", "--out", str(tmp_path)],
        env=readme_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "flow_smoke.json").read_text())
    assert result["rerun"]["cached"] == [
        "validate",
        "clean",
        "tokenise",
        "train",
        "evaluate",
        "export",
        "register",
        "report",
    ]
    assert set(result["first"]["stages_s"]) >= {"validate", "train", "export", "register"}
    assert 0 < result["first"]["training_s"] < result["first"]["total_s"]
    assert (tmp_path / "flow_smoke.png").stat().st_size > 0
    assert "unchanged rerun" in done.stdout
