"""`nlpops tune` as users run it: two processes started together join one Optuna study on shared storage
(PostgreSQL when reachable at 127.0.0.1:5432, as several hosts would; SQLite otherwise), split its trials, log them
under one MLflow parent run and leave the best params as an experiment that `nlpops run -e` loads."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, make_sentiment_rows

# Two whole `nlpops tune` processes (Prefect, data stages, trials): about a minute. make test runs the same join
# through pipelines.tune in two plain processes (tests/unit/test_tune.py).
pytestmark = [pytest.mark.integration, pytest.mark.slow]

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
PG = "postgresql://postgres@127.0.0.1:5432"
TRIALS = 5


@pytest.fixture
def storage():
    """A throwaway PostgreSQL database (dropped afterwards), or None: the default SQLite file under the state dir."""
    try:
        import psycopg2

        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    except Exception:
        yield None
        return
    db = f"nlpops_tune_{uuid.uuid4().hex[:10]}"
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    try:
        yield f"{PG}/{db}"
    finally:
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    root = tmp_path / "project"
    root.mkdir()
    with (root / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(160, seed=3))
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["path"] = "reviews.csv"
    params["validate"].update(min_rows=50, min_rows_per_class=5, expectations_dir=str(REPO / "expectations"))
    params["model"].update(path=str(tiny_model_dir), dropout=0.0)
    params["train"].update(epochs=2, batch_size=8, warmup_ratio=0.0, num_threads=1, checkpoint_every_steps=0)
    params["tune"] = {
        "trials": TRIALS,
        "startup_trials": 2,
        "space": {
            "train.learning_rate": {"type": "loguniform", "low": 1e-3, "high": 2e-2},
            "train.batch_size": {"type": "categorical", "choices": [8, 16]},
        },
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def test_two_processes_started_together_share_one_study(project: Path, storage: str | None) -> None:
    env = clean_env(NLPOPS_TUNE_STORAGE=storage) if storage else clean_env()
    command = [str(BIN / "nlpops"), "tune", "--study", "joint"]
    procs = [
        subprocess.Popen(command, cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-3000:]
    ran = [int(re.search(r"this process ran (\d+)", out).group(1)) for out in outputs]  # type: ignore[union-attr]
    # Each asks for a trial only while the study has fewer than tune.trials: together they run them (one more at
    # most, when both ask at the same moment for the last one).
    assert TRIALS <= sum(ran) <= TRIALS + 1, outputs

    summary = json.loads((project / "artifacts" / "tune" / "joint" / "summary.json").read_text())
    assert summary["trials"] == sum(ran) and summary["complete"] + summary["pruned"] == sum(ran)
    assert summary["storage"].startswith("postgresql://" if storage else "sqlite:///")
    workers = {row["worker"] for row in summary["table"]}
    assert len(workers) == 2 or 0 in ran, workers  # two processes' trials (unless one found all taken)
    for plot in ("history", "importance"):
        assert (project / "artifacts" / "tune" / "joint" / f"{plot}.png").is_file()

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / '.nlpops' / 'mlflow.db'}")
    name = yaml.safe_load((project / "params.yaml").read_text())["project"]["experiment"]
    experiment = client.get_experiment_by_name(name)
    runs = client.search_runs([experiment.experiment_id], "tags.`nlpops.tune.study` = 'joint'")
    parents = [r for r in runs if r.data.tags["nlpops.tune.role"] == "study"]
    assert len(parents) == 1 and parents[0].data.metrics["trials"] == sum(ran)
    children = [r for r in runs if r.data.tags["nlpops.tune.role"] == "trial"]
    assert len(children) == sum(ran)
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}

    best = project / "experiments" / "joint-best.yaml"
    overlay = yaml.safe_load(best.read_text())
    assert set(overlay["train"]) >= {"learning_rate", "batch_size"} and "tune" not in overlay
    from pipelines.config import load_params

    loaded = load_params(project / "params.yaml", experiment="joint-best")
    assert loaded.train.learning_rate == overlay["train"]["learning_rate"]
