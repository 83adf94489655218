"""`nlpops train --nproc 2`: the train stage on two torchrun ranks (gloo), as a user runs it. Rank 0 logs the MLflow
run and writes the summary and model; a failure on the ranks reaches the shell as the same one-line error as in one
process."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, make_sentiment_rows

pytestmark = [pytest.mark.integration, pytest.mark.slow]  # two `nlpops train --nproc 2` runs: about 40 s

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A project whose data stages have run (in this process: the test is about the train stage)."""
    from pipelines.config import load_params
    from pipelines.dag import run_stage

    root = tmp_path / "project"
    root.mkdir()
    with (root / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(160, seed=3))
    params = {
        "project": {"artifacts_dir": str(root / "artifacts"), "state_dir": str(root / ".nlpops"), "experiment": "ddp"},
        "data": {"path": str(root / "reviews.csv"), "labels": ["negative", "positive"]},
        "validate": {"min_rows": 50, "min_rows_per_class": 5, "expectations_dir": str(REPO / "expectations")},
        "model": {"path": str(tiny_model_dir), "dropout": 0.0},
        "train": {"epochs": 2, "batch_size": 8, "learning_rate": 5e-3, "warmup_ratio": 0.0, "num_threads": 1},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    loaded = load_params(root / "params.yaml")
    for stage in ("validate", "clean", "tokenise"):
        run_stage(loaded, stage)
    return root


def test_train_on_two_processes_logs_once_and_reports_errors_as_one_line(project: Path) -> None:
    env = clean_env()
    done = subprocess.run(
        [str(BIN / "nlpops"), "train", "--nproc", "2"], cwd=project, env=env, capture_output=True, text=True,
        timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((project / "artifacts" / "train" / "summary.json").read_text())
    assert summary["processes"] == 2 and summary["epochs_run"] == 2
    train_rows = json.loads((project / "artifacts" / "clean" / "summary.json").read_text())["splits"]["train"]
    assert summary["steps"] == 2 * -(-train_rows // 8)  # the global batch of 8: the steps of one process
    assert (project / "artifacts" / "model" / "model.safetensors").is_file()
    log = project / ".nlpops" / "experiments"
    assert list(log.glob("*/logs/train-torchrun.log")), "the ranks' log is kept under the state dir"

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{project / '.nlpops' / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("ddp")
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in runs] == [summary["run_id"]]  # one run: rank 0's
    assert [m.step for m in client.get_metric_history(summary["run_id"], "val_macro_f1")] == [1, 2]
    assert runs[0].data.params["train.processes"] == "2"

    bad = subprocess.run(
        [str(BIN / "nlpops"), "train", "--nproc", "2", "--set", "model.freeze_layers=5"], cwd=project, env=env,
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == ["error: model.freeze_layers=5 but the model has 2 layers"]
