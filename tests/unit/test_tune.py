"""`nlpops tune` pieces (pipelines/tune.py): the search space in params, real trials that complete, get pruned or
fail (each a nested MLflow run under the study's parent run), the study summary, plots and the best overlay."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from subprocess import PIPE

import pandas as pd
import pytest
import yaml
from conftest import clean_env, make_sentiment_rows

from pipelines.config import load_params
from pipelines.errors import ConfigError

SPACE = {
    "train.learning_rate": {"type": "loguniform", "low": 1e-9, "high": 0.5},
    "train.batch_size": {"type": "categorical", "choices": [8, 16]},
    "model.freeze_layers": {"type": "int", "low": 0, "high": 5},
}


def _params_file(tmp_path: Path, model_dir: Path, **tune: object) -> Path:
    params = {
        "project": {"artifacts_dir": str(tmp_path / "artifacts"), "state_dir": str(tmp_path / "state")},
        "data": {"path": str(tmp_path / "reviews.csv")},
        "model": {"path": str(model_dir), "dropout": 0.0},
        "train": {"epochs": 3, "batch_size": 8, "learning_rate": 5e-3, "warmup_ratio": 0.0, "num_threads": 1},
        "tune": {"space": SPACE, **tune},
    }
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize(
    ("dim", "message"),
    [
        ({"train.lr": {"type": "uniform", "low": 0, "high": 1}}, "unknown key 'train.lr'"),
        ({"data.path": {"type": "categorical", "choices": ["a"]}}, "'data.path' is not a train.* or model.* key"),
        ({"model.path": {"type": "categorical", "choices": ["a"]}}, "model.path cannot be searched"),
        ({"train.learning_rate": {"type": "loguniform", "low": 0, "high": 1e-3}}, "needs low > 0"),
        ({"train.learning_rate": {"type": "uniform", "low": 1e-5, "high": 2}}, "train.learning_rate=2.0 is not"),
        ({"train.epochs": {"type": "int", "low": 1.5, "high": 3}}, "whole-number"),
        ({"train.batch_size": {"type": "categorical", "choices": []}}, "non-empty 'choices'"),
        ({"train.epochs": {"type": "normal", "low": 1, "high": 3}}, "tune.space.train.epochs.type"),
    ],
)
def test_a_bad_search_space_is_one_line_naming_the_key(tmp_path: Path, dim: dict, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": {"path": "x.csv"}, "tune": {"space": dim}}))
    with pytest.raises(ConfigError, match=message.replace("*", r"\*").replace("(", r"\(")):
        load_params(path)


def test_tune_settings_do_not_change_the_params_hash(tmp_path: Path, tiny_model_dir: Path) -> None:
    path = _params_file(tmp_path, tiny_model_dir)
    base = load_params(path)
    changed = load_params(path, ["tune.trials=3", "orchestration.shard_rows=10", "tune.pruner=hyperband"])
    assert changed.params_hash() == base.params_hash()
    assert load_params(path, ["train.processes=2"]).params_hash() != base.params_hash()


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """Params + clean and tokenised splits where the stages put them (the data stages themselves are not run)."""
    from pipelines.config import TokeniseConfig
    from pipelines.paths import StagePaths
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits

    path = _params_file(tmp_path, tiny_model_dir)
    paths = StagePaths.from_params(load_params(path))
    frame = pd.DataFrame(make_sentiment_rows(200, seed=2), columns=["text", "label"])
    frame["label"] = (frame["label"] == "positive").astype("int64")
    paths.clean_dir.mkdir(parents=True)
    for split, part in (("train", frame[:140]), ("validation", frame[140:170]), ("test", frame[170:])):
        part.reset_index(drop=True).to_parquet(paths.clean_split(split))
    paths.label_map.write_text(json.dumps({"id2label": {"0": "negative", "1": "positive"}}))
    tokenise_splits(
        paths.clean_dir, tiny_model_dir, paths.tokenised_dir, paths.tokenise_cache, TokeniseConfig(),
        get_task("text_classification"),
    )  # fmt: skip
    return path


def test_trials_complete_get_pruned_or_fail_each_a_nested_mlflow_run(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import optuna
    from mlflow import MlflowClient

    from pipelines import tune
    from pipelines.tracking import configure_tracking, tracking_uri

    # the embedded store under the state dir (set here so that teardown removes what mlflow exports)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.parent / 'state' / 'mlflow.db'}")
    # validation loss: a trial at lr 1e-9 keeps the initial loss; one at lr 0.5 is far worse after its first epoch
    # than the first trial's median there, and is pruned (warm-up 0)
    params = load_params(project, ["tune.metric=loss", "tune.startup_trials=1", "tune.warmup_epochs=0"])
    storage_url = tune.storage_url(params)
    assert storage_url.startswith("sqlite:///") and storage_url.endswith("state/optuna.db")
    tracking = {"uri": tracking_uri(params), "experiment_id": configure_tracking(params)}
    study, created = tune.create_or_join(params, "unit", tune.open_storage(storage_url))
    assert created and study.direction.name == "MINIMIZE"
    parent = tune.parent_run(params, study, created, tracking)
    again, created_again = tune.create_or_join(params, "unit", tune.open_storage(storage_url))
    assert not created_again and tune.parent_run(params, again, False, tracking) == parent  # a joiner's parent
    for values in (
        {"train.learning_rate": 1e-9, "train.batch_size": 8, "model.freeze_layers": 0},
        {"train.learning_rate": 0.5, "train.batch_size": 8, "model.freeze_layers": 0},
        {"train.learning_rate": 5e-3, "train.batch_size": 16, "model.freeze_layers": 5},  # the model has 2 layers
    ):
        study.enqueue_trial(values)
    ctx = tune.trial_context(params, "unit", storage_url, tracking, parent, None)

    done = tune.run_trial(ctx, 0)
    assert done["state"] == "COMPLETE" and done["epochs_run"] == 3
    pruned = tune.run_trial(ctx, 1)
    assert pruned["state"] == "PRUNED" and pruned["epochs_run"] == 1, (done, pruned)
    with pytest.raises(Exception, match="freeze_layers=5 but the model has 2 layers"):
        tune.run_trial(ctx, 2)
    assert tune.run_trial({**ctx, "trials": 3}, 3) == {"slot": 3, "skipped": "the study has its 3 trials"}

    summary = tune.study_summary(tune._reload(study), "loss", "minimize")
    assert summary["states"] == {"COMPLETE": 1, "FAIL": 1, "PRUNED": 1} and summary["best"]["number"] == 0
    client = MlflowClient(tracking_uri=tracking["uri"])
    children = client.search_runs([tracking["experiment_id"]], f"tags.mlflow.parentRunId = '{parent}'")
    by_trial = {r.data.tags["optuna.trial"]: r for r in children}
    assert {k: r.info.status for k, r in by_trial.items()} == {"0": "FINISHED", "1": "KILLED", "2": "FAILED"}
    assert by_trial["2"].data.tags["nlpops.error"].startswith("model.freeze_layers=5")
    assert [m.step for m in client.get_metric_history(by_trial["0"].info.run_id, "val_loss")] == [1, 2, 3]
    assert study.trials[0].user_attrs["mlflow_run_id"] == by_trial["0"].info.run_id
    assert optuna.load_study(study_name="unit", storage=storage_url).trials[2].state.name == "FAIL"

    plots = tune.write_plots(tune._reload(study), project.parent / "plots")
    assert Path(plots["history"]).stat().st_size > 1000 and Path(plots["importance"]).stat().st_size > 1000


def test_best_overlay_is_an_experiment_that_loads(tmp_path: Path, tiny_model_dir: Path) -> None:
    from pipelines import tune

    path = _params_file(tmp_path, tiny_model_dir)
    best = {"train.learning_rate": 5e-3, "train.batch_size": 16, "model.freeze_layers": 1}
    overlay = tune.best_overlay(path, None, ["train.epochs=2"], best, list(SPACE))
    # searched keys always (learning_rate equals params.yaml's), the rest only where they differ; no tune section
    assert overlay == {
        "model": {"freeze_layers": 1},
        "train": {"learning_rate": 5e-3, "epochs": 2, "batch_size": 16},
    }
    summary = {"study": "s", "metric": "macro_f1", "complete": 3, "pruned": 1, "failed": 0, "trials": 4}
    written = tune.write_best_experiment(path, "s", overlay, {**summary, "best": {"number": 2, "value": 0.9}})
    assert written == tmp_path / "experiments" / "s-best.yaml"
    loaded = load_params(path, experiment="s-best")
    assert (loaded.train.batch_size, loaded.train.epochs, loaded.model.freeze_layers) == (16, 2, 1)
    assert "learning_rate" in loaded.train.model_fields_set  # a recipe will not override it


JOIN = """
import json, sys
from pipelines import tune
from pipelines.config import load_params
from pipelines.tracking import configure_tracking, tracking_uri
space = {"train.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}}
params = load_params(sys.argv[1], ["tune.trials=4", "train.epochs=1", "tune.space=" + json.dumps(space)])
tracking = {"uri": tracking_uri(params), "experiment_id": configure_tracking(params)}
storage = tune.storage_url(params)
study, created = tune.create_or_join(params, "pair", tune.open_storage(storage))
parent = tune.parent_run(params, study, created, tracking)
ctx = tune.trial_context(params, "pair", storage, tracking, parent, None)
outcomes = [tune.run_trial(ctx, slot) for slot in range(4)]
print(json.dumps({"created": created, "parent": parent, "ran": [o["number"] for o in outcomes if "state" in o]}))
"""


@pytest.mark.slow  # two tuning processes (14 s); the single-process trials stay in make test
def test_two_processes_join_one_study_on_sqlite(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two processes started together on the default storage (SQLite under the state dir): one creates the study
    and its parent run, the other joins both; together they run the study's 4 trials, each trial once."""
    from pipelines.tracking import configure_tracking

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{project.parent / 'state' / 'mlflow.db'}")
    configure_tracking(load_params(project))  # the MLflow store exists (`nlpops tune` makes it under the run lock)
    repo = str(Path(__file__).resolve().parents[2])
    env = clean_env(PYTHONPATH=os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")]))
    procs = [
        subprocess.Popen([sys.executable, "-c", JOIN, str(project)], env=env, stdout=PIPE, stderr=PIPE, text=True)
        for _ in range(2)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-3000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["created"] for r in results) == [False, True]
    assert results[0]["parent"] == results[1]["parent"]
    numbers = results[0]["ran"] + results[1]["ran"]
    assert len(numbers) == len(set(numbers)) and 4 <= len(numbers) <= 5  # 5: both asked for the last at once
