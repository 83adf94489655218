"""benchmarks/training.py --smoke on a tiny random BERT and synthetic rows: it runs end to end, writes its JSON
and PNG, and the run_glue recipe padded to max_length trains to the same weights as padded per batch (the
ground for scoring its accuracy with dynamic padding). Ratios are not checked: timing has no place in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, make_sentiment_rows, readme_env


def _tsv(path: Path, rows: list[tuple[str, str]]) -> Path:
    lines = ["sentence\tlabel"] + [f"{text}\t{int(label == 'positive')}" for text, label in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_training_benchmark_smoke_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    train = _tsv(tmp_path / "train.tsv", make_sentiment_rows(120, seed=3))
    dev = _tsv(tmp_path / "dev.tsv", make_sentiment_rows(40, seed=4))
    out = tmp_path / "training.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/training.py", "--smoke", "--model", str(tiny_model_dir), "--train", str(train),
         "--dev", str(dev), "--out", str(out), "--threads", "1"],
        cwd=REPO, env=readme_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "samples/s" in done.stdout and "run_glue" in done.stdout
    result = json.loads(out.read_text())
    pipeline, glue = result["results"]
    assert pipeline["recipe"] == "pipeline" and glue["recipe"] == "run_glue"
    for row in (pipeline, glue):
        assert row["samples_per_second"] > 0 and row["gemm_peak_gflops"] > 0 and 0 <= row["dev_accuracy"] <= 1
    assert glue["padding_share"] > pipeline["padding_share"], "run_glue pads every row to max_length"
    assert result["padding_equivalence"]["equal"], result["padding_equivalence"]
    assert result["flop_count"]["counted_params"] == 2 * (4 * 32 * 32 + 2 * 32 * 48)  # the tiny BERT's layers
    assert out.with_suffix(".png").stat().st_size > 1000
