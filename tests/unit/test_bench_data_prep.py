"""benchmarks/data_prep.py on tiny settings: 200 rows built from an 80-row source (the rest perturbed copies),
validated, cleaned and tokenised in the size's own process; the JSON and the PNG are written. Timing is not checked:
it has no place in a test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO, make_sentiment_rows, readme_env


def test_data_prep_benchmark_smoke_run(tmp_path: Path, tiny_model_dir: Path) -> None:
    rows = make_sentiment_rows(80, seed=5)
    source = tmp_path / "train.tsv"
    source.write_text("sentence\tlabel\n" + "".join(f"{text}\t{int(label == 'positive')}\n" for text, label in rows))
    out = tmp_path / "data_prep.json"
    done = subprocess.run(
        [sys.executable, "benchmarks/data_prep.py", "--sizes", "200", "--source", str(source),
         "--tokenizer", str(tiny_model_dir), "--work-dir", str(tmp_path / "work"), "--json", str(out)],
        cwd=REPO, env=readme_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "peak RSS" in done.stdout and "1M" not in done.stdout  # no ratio line without the 1M size
    results = json.loads(out.read_text())
    assert [r["rows"] for r in results] == [200]
    r = results[0]
    assert r["total_s"] > 0 and r["peak_rss_gb"] > 0 and len(r["outputs"]) == 64
    assert 80 < r["rows_out"] <= 200  # the perturbed copies are distinct texts: cleaning keeps them
    assert out.with_suffix(".png").stat().st_size > 1000
