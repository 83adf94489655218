"""Sharded data preparation (pipelines/sharded.py) on a real local Dask cluster (2 worker processes, 1 thread each,
through Prefect's DaskTaskRunner) gives byte-identical outputs to the single-process path."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import clean_env, make_sentiment_rows

from pipelines.sharded import shard_bounds

REPO = Path(__file__).resolve().parents[2]

# One interpreter runs validate + clean + tokenise twice (one process, then on shards), as `nlpops` would: Prefect's
# home in the test's folder, set before Prefect is imported.
WORKER = """
import json, os, sys, time
from pathlib import Path
work, data, model = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
os.environ["PREFECT_HOME"] = str(work / "prefect")
os.environ["PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL"] = "CRITICAL"
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
from pipelines.config import Params
from pipelines.dag import run_stage
from pipelines.hashing import file_digest

def prepare(name, shard_rows):
    params = Params.model_validate({
        "data": {"path": data, "labels": ["negative", "positive"]},
        "project": {"artifacts_dir": str(work / name), "state_dir": str(work / "state" / name)},
        "validate": {"min_rows": 20, "min_rows_per_class": 5, "max_null_share": 0.01},
        "model": {"path": model},
        "orchestration": {"shard_rows": shard_rows, "dask_workers": 2, "dask_threads_per_worker": 1},
    })
    for stage in ("validate", "clean", "tokenise"):
        t = time.perf_counter()
        run_stage(params, stage)
        print(name, stage, round(time.perf_counter() - t, 1), file=sys.stderr)
    root = work / name
    files = sorted(p for d in ("clean", "tokenised") for p in (root / d).iterdir() if p.name != "summary.json")
    report = json.loads((root / "validate" / "report.json").read_text())
    report.pop("data_docs")  # where it was written
    summary = json.loads((root / "clean" / "summary.json").read_text())
    summary.pop("quarantine_file")
    files = {f"{p.parent.name}/{p.name}": file_digest(p) for p in files}
    return {"files": files, "report": report, "clean_summary": summary}

single = prepare("single", None)
import pipelines.cluster as cluster
sharded = prepare("sharded", 150)
workers = [dict(c.scheduler_info["workers"]) for c in cluster._clusters.values()]
info = [{"n": len(w), "threads": sorted(v["nthreads"] for v in w.values())} for w in workers]
print(json.dumps({"single": single, "sharded": sharded, "clusters": info}))
"""


def test_shard_bounds_cover_every_row_once() -> None:
    assert shard_bounds(10, 4) == [(0, 4), (4, 8), (8, 10)]
    assert shard_bounds(8, 4) == [(0, 4), (4, 8)]
    assert shard_bounds(0, 4) == [(0, 0)]


@pytest.mark.integration
def test_sharded_validate_clean_tokenise_equal_the_single_process_outputs(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = tmp_path / "reviews.csv"
    rows = make_sentiment_rows(600, seed=7)
    rows[5] = ("<b>Great</b> &amp; fun film 5", "positive")  # rows that clean really changes ...
    rows[401] = (rows[400][0].upper(), rows[400][1])  # ... a near duplicate across shards, an empty text
    rows[333] = ("   ", "negative")
    with data.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    env = clean_env(PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path), str(data), str(tiny_model_dir)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["clusters"] == [{"n": 2, "threads": [1, 1]}]  # the local cluster: 2 processes x 1 thread
    single, sharded = out["single"], out["sharded"]
    assert set(single["files"]) >= {"clean/train.parquet", "clean/quarantine.parquet", "tokenised/train.parquet"}
    assert sharded["files"] == single["files"]  # same bytes: clean splits, quarantine, label map, features
    assert sharded["report"] == single["report"]  # the validation report (Great Expectations on all rows)
    assert sharded["clean_summary"] == single["clean_summary"]
