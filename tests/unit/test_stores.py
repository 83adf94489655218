"""Moving a project between MLflow stores: store identity without credentials, the cached training run adopted or
re-logged on the new store, `nlpops changes` saying so, and `nlpops migrate` copying a registry (SQLite to SQLite:
the same MLflow APIs a server answers)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from pipelines import registry, stores
from pipelines.config import ExportConfig, load_params
from pipelines.errors import RegistryError
from pipelines.registry_migrate import migrate

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("mlflow_uris_restored")


def test_redacted_uris_keep_no_credentials() -> None:
    assert stores.redact_uri("http://alice:s3cret@mlflow.example:5000/") == "http://mlflow.example:5000/"
    assert stores.redact_uri("postgresql://u:p@db:5432/mlflow?sslmode=require&password=x") == (
        "postgresql://db:5432/mlflow?sslmode=require&password=%2A%2A%2A"
    )
    assert stores.redact_uri("https://h/api?token=abc") == "https://h/api?token=%2A%2A%2A"
    assert stores.redact_uri("sqlite:////tmp/x/mlflow.db") == "sqlite:////tmp/x/mlflow.db"


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Params whose state dir is under tmp_path, and a train summary logged to the embedded store."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(REPO / "params.yaml", tmp_path / "params.yaml")
    params = load_params("params.yaml", ["project.experiment=stores-test"])
    return params


def _summary(params, run_id: str, store: str | None) -> Path:
    from pipelines.paths import StagePaths

    path = StagePaths.from_params(params).train_summary
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {"run_id": run_id, "best_epoch": 1, "history": []}
    if store is not None:
        data["tracking_store"] = store
    path.write_text(json.dumps(data))
    return path


def _embedded_run(params) -> tuple[str, str]:
    """A finished run on the embedded store of `params`; returns (store identity, run id)."""
    import mlflow

    from pipelines.tracking import configure_tracking

    configure_tracking(params)
    with mlflow.start_run() as run:
        mlflow.log_metric("x", 1.0)
    return stores.store_identity(params), run.info.run_id


def test_same_store_keeps_the_summary_untouched(project) -> None:
    store, run_id = _embedded_run(project)
    path = _summary(project, run_id, store)
    before = path.read_text()
    assert stores.training_summary_on_store(project)["run_id"] == run_id
    assert path.read_text() == before
    assert stores.store_change_note(project) is None


def test_another_store_relogs_then_adopts_a_copy(project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow

    store, run_id = _embedded_run(project)
    path = _summary(project, run_id, store)
    other = f"sqlite:///{tmp_path / 'server.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    note = stores.store_change_note(project)
    assert note == (
        f"tracking store changed: training run {run_id} was logged to {store}, MLflow now points at {other}; "
        "the next run re-logs it there (no retraining)"
    )

    def fake_relog(params, summary):  # the real one needs a trained workspace (covered by the integration test)
        with mlflow.start_run() as run:
            mlflow.set_tag(stores.COPIED_FROM_RUN, summary["run_id"])
        return run.info.run_id

    monkeypatch.setattr(stores, "relog_training_run", fake_relog)
    moved = stores.training_summary_on_store(project)
    assert moved["run_id"] != run_id and moved["tracking_store"] == other and moved["store_move"] == "relogged"
    assert moved["previous_runs"] == [{"tracking_store": store, "run_id": run_id}]
    assert json.loads(path.read_text())["run_id"] == moved["run_id"]

    # Back to the embedded store, and forward again: the run each store already holds is used, nothing re-logged.
    monkeypatch.setattr(stores, "relog_training_run", lambda *a: pytest.fail("re-logged a run the store has"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    back = stores.training_summary_on_store(project)
    assert back["run_id"] == run_id and back["tracking_store"] == store and back["store_move"] == "adopted"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert stores.training_summary_on_store(project)["run_id"] == moved["run_id"]


def test_a_migrated_copy_is_adopted_instead_of_relogged(
    project, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    store, run_id = _embedded_run(project)
    _summary(project, run_id, store)
    other = f"sqlite:///{tmp_path / 'server.db'}"
    client = MlflowClient(tracking_uri=other)
    experiment = client.create_experiment("elsewhere")
    copy = client.create_run(experiment, tags={stores.COPIED_FROM_RUN: run_id}).info.run_id
    client.set_terminated(copy)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", other)
    assert f"the next run uses run {copy} there" in (stores.store_change_note(project) or "")
    monkeypatch.setattr(stores, "relog_training_run", lambda *a: pytest.fail("relogged although a copy exists"))
    moved = stores.training_summary_on_store(project)
    assert moved["run_id"] == copy and moved["store_move"] == "adopted"


# ------------------------------------------------------------------------------------------------ migrate


@pytest.fixture(scope="module")
def onnx_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from pipelines.export_onnx import export_onnx

    root = tmp_path_factory.mktemp("migrate-export")
    texts = ["the film was good", "bad", "fun", "dull plot"]
    pd.DataFrame({"text": texts, "label": [1, 0, 1, 0]}).to_parquet(root / "test.parquet", index=False)
    from pipelines.config import Params
    from pipelines.tasks import get_task

    task = get_task(Params.model_validate({"data": {"path": "-"}, "tokenise": {"max_length": 32}}))
    export_onnx(tiny_model_dir, root / "test.parquet", root / "onnx", ExportConfig(opset=17, parity_rows=4), task)
    return root / "onnx"


def _source_registry(uri: str, export_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two versions from two runs, champion moved v1 -> v2 with history, lineage tags naming each run."""
    import mlflow

    from pipelines.serving import log_onnx_pyfunc

    monkeypatch.setenv("NLPOPS_ACTOR", "carol")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    experiment = mlflow.create_experiment("src-exp", artifact_location=(tmp_path / "src-artifacts").as_uri())
    for epoch_scores in ([0.5, 0.7], [0.6, 0.9]):
        with mlflow.start_run(experiment_id=experiment) as run:
            mlflow.log_params({"train.epochs": 2})
            mlflow.set_tags({"git.commit": "abc", "data.md5": "d41d8"})
            for step, value in enumerate(epoch_scores, 1):
                mlflow.log_metric("val_macro_f1", value, step=step)
            mlflow.log_dict({"success": True}, "data/report.json")
            uri_model = log_onnx_pyfunc(export_dir, name="model").model_uri
        version = mlflow.register_model(uri_model, "m", tags={"run_id": run.info.run_id, "metric.macro_f1": "0.9"})
        registry.move_alias("m", "challenger", str(version.version), "new challenger", "register")
        registry.move_alias("m", "champion", str(version.version), "gate passed", "promote")


def test_migrate_copies_versions_runs_aliases_and_history(
    onnx_export: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from pipelines.registry_migrate import MIGRATED_FROM_VERSION

    source, dest = f"sqlite:///{tmp_path / 'src.db'}", f"sqlite:///{tmp_path / 'dst.db'}"
    _source_registry(source, onnx_export, tmp_path, monkeypatch)
    [result] = migrate(source, dest)
    assert result["versions"] == {"1": "1", "2": "2"} and result["aliases"] == {"challenger": "2", "champion": "2"}
    assert result["runs"] == 2 and result["history_events"] == 4

    src, dst = MlflowClient(source, source), MlflowClient(dest, dest)
    for number in ("1", "2"):
        old, new = src.get_model_version("m", number), dst.get_model_version("m", number)
        assert new.tags["metric.macro_f1"] == "0.9" and new.tags[MIGRATED_FROM_VERSION] == number
        assert new.tags["run_id"] == new.run_id != old.run_id  # lineage's run check holds on the copy
        run = dst.get_run(new.run_id)
        assert run.data.tags[stores.COPIED_FROM_RUN] == old.run_id and run.data.tags["git.commit"] == "abc"
        assert run.data.params == {"train.epochs": "2"} and run.info.status == "FINISHED"
        old_points = [(m.step, m.value) for m in src.get_metric_history(old.run_id, "val_macro_f1")]
        assert [(m.step, m.value) for m in dst.get_metric_history(new.run_id, "val_macro_f1")] == old_points
        assert [a.path for a in dst.list_artifacts(new.run_id, "data")] == ["data/report.json"]
    import mlflow

    mlflow.set_tracking_uri(dest)
    mlflow.set_registry_uri(dest)
    assert str(dst.get_model_version_by_alias("m", "champion").version) == "2"
    history = registry.alias_history("m", "champion")
    assert [(e["from"], e["to"], e["by"]) for e in history] == [(None, "1", "carol"), ("1", "2", "carol")]
    assert registry.champion_stack(history, "champion", "2") == ["1", "2"]  # rollback works on the copy
    model = mlflow.pyfunc.load_model("models:/m@champion")
    assert list(model.predict(pd.DataFrame({"text": ["good fun"]})).columns) == ["label", "score"]

    assert migrate(source, dest) == [{"name": "m", "skipped": "already migrated (2 versions)"}]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    MlflowClient(other, other).create_registered_model("m")
    MlflowClient(other, other).create_model_version("m", source=str(tmp_path))
    with pytest.raises(RegistryError, match="already has 1 versions of 'm'"):
        migrate(source, other)


def test_migrate_refuses_a_missing_or_identical_store(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="no such store file"):
        migrate(f"sqlite:///{tmp_path / 'nope.db'}", "http://127.0.0.1:1")
    with pytest.raises(RegistryError, match="same store"):
        migrate("http://u:p@h:5000", "http://h:5000")


def test_a_run_missing_from_the_store_is_one_line_saying_what_to_run() -> None:
    import mlflow
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    mlflow.set_tracking_uri("http://bob:pw@127.0.0.1:5999")
    run_id = "e33c35b1cc644ed1bf3d8f99f4bc72cd"
    exc = MlflowException(f"Run with id={run_id} not found", error_code=RESOURCE_DOES_NOT_EXIST)
    line = stores.explain_store_error(exc)
    assert line is not None and "\n" not in line and "pw" not in line
    assert line.startswith(f"MLflow store http://127.0.0.1:5999 has no run {run_id}")
    assert "Run `nlpops run`" in line
    assert stores.explain_store_error(MlflowException("Registered Model with name=x not found")) is None
    assert stores.explain_store_error(ValueError(f"Run with id={run_id} not found")) is None
