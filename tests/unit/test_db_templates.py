"""A new project's MLflow store is a copy of the machine's migrated template: the default experiment and the
project's experiment still name this project's paths, and a store that exists is never replaced."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest

from pipelines import db_templates
from pipelines.config import load_params

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("mlflow_uris_restored")


def test_a_new_store_is_the_template_with_this_projects_experiments(tmp_path: Path, monkeypatch) -> None:
    import mlflow

    from pipelines.tracking import configure_tracking, tracking_uri

    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = load_params("params.yaml", ["project.experiment=seeded"])
    store = Path(tracking_uri(params).removeprefix("sqlite:///"))
    assert not store.exists()
    experiment_id = configure_tracking(params)
    template = db_templates.template_path("mlflow")
    assert template.is_file() and store.is_file()
    head = "select version_num from alembic_version"
    with sqlite3.connect(template) as a, sqlite3.connect(store) as b:
        assert a.execute(head).fetchall() == b.execute(head).fetchall() != []
        assert a.execute("select count(*) from experiments").fetchone() == (0,)  # nothing path-bound in it
    client = mlflow.MlflowClient()
    default = client.get_experiment("0")
    assert str(tmp_path) in default.artifact_location or str(store.parent) in default.artifact_location
    assert str(tmp_path) in client.get_experiment(experiment_id).artifact_location
    with mlflow.start_run(experiment_id=experiment_id) as run:
        mlflow.log_metric("x", 1.0)
    assert client.get_run(run.info.run_id).data.metrics == {"x": 1.0}


def test_an_existing_store_is_kept_and_a_failing_build_leaves_creation_to_the_tool(tmp_path: Path, monkeypatch):
    kept = tmp_path / "kept.db"
    kept.write_bytes(b"mine")
    assert db_templates.seed(kept, "mlflow", db_templates.build_mlflow) is False
    assert kept.read_bytes() == b"mine"

    def broken(path: Path) -> None:
        raise RuntimeError("no space left")

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    new = tmp_path / "new.db"
    assert db_templates.seed(new, "mlflow", broken) is False
    assert not new.exists() and not list((tmp_path / "cache" / "nlpops").glob("*"))
