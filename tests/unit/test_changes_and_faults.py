"""The scheduled run's change check, and the faults a user must get one clear line for."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from pipelines.changes import current_lineage, detect_changes
from pipelines.config import Params
from pipelines.errors import ServiceError, StateDirError
from pipelines.statedir import atomic_write, ensure_writable_dir

NAME = "changes-test"


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")  # one registry per test
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\nfine,positive\nbad,negative\n")
    return Params.model_validate(
        {
            "project": {"state_dir": str(tmp_path / "state"), "registered_model": NAME, "experiment": "chg"},
            "data": {"path": str(data)},
        }
    )


def _register(params: Params, tags: dict, aliases: tuple[str, ...]) -> str:
    from mlflow import MlflowClient

    from pipelines.tracking import configure_tracking

    configure_tracking(params)
    client = MlflowClient()
    if not client.search_registered_models(f"name = '{NAME}'"):
        client.create_registered_model(NAME)
    version = client.create_model_version(NAME, source="file:///nowhere", tags={k: str(v) for k, v in tags.items()})
    for alias in aliases:
        client.set_registered_model_alias(NAME, alias, version.version)
    return str(version.version)


def test_no_champion_means_retrain(params: Params) -> None:
    report = detect_changes(params)
    assert report.changed and "no champion" in report.summary


def test_unchanged_inputs_skip_and_new_data_or_params_retrain(params: Params) -> None:
    _register(params, current_lineage(params), ("champion", "challenger"))
    report = detect_changes(params)
    assert not report.changed
    assert report.summary.startswith("unchanged: nothing changed since champion v1")

    Path(params.data.path).write_text("text,label\nfine,positive\nbad,negative\nnew,positive\n")
    report = detect_changes(params)
    assert report.changed and "data changed" in report.summary and "relative to champion v1" in report.summary

    Path(params.data.path).write_text("text,label\nfine,positive\nbad,negative\n")
    other = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 9})})
    report = detect_changes(other)
    assert report.changed and "params changed" in report.summary and "data changed" not in report.summary


def test_code_change_retrains_but_a_docs_only_commit_does_not(params: Params) -> None:
    tags = current_lineage(params)
    _register(params, {**tags, "git.commit": "0" * 40}, ("champion",))
    assert not detect_changes(params).changed  # same code hash: another commit alone is no reason
    _register(params, {**tags, "code.sha256": "f" * 64}, ("champion",))
    report = detect_changes(params)
    assert report.changed and "pipeline code changed" in report.summary


def test_same_inputs_as_a_challenger_that_failed_the_gate_are_not_retried(params: Params) -> None:
    tags = current_lineage(params)
    _register(params, {**tags, "data.md5": "old"}, ("champion",))
    _register(params, {**tags, "gate.passed": "false"}, ("challenger",))
    report = detect_changes(params)
    assert not report.changed and "challenger v2, which failed the gate" in report.summary


def test_unwritable_state_dir_is_one_line_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StateDirError, match=rf"{blocker}/state: state dir is not writable \(.+\)"):
        ensure_writable_dir(blocker / "state")


def test_disk_full_during_an_atomic_write_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"previous checkpoint")

    def full_disk(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(StateDirError, match=rf"{target}: cannot write \(disk full\)"):
        atomic_write(target, full_disk)
    assert target.read_bytes() == b"previous checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]  # no temp file left behind


def test_cli_reports_an_unwritable_state_dir_without_a_traceback(tmp_path: Path) -> None:
    import subprocess
    import sys

    blocker = tmp_path / "blocker"
    blocker.write_text("")
    params = tmp_path / "params.yaml"
    params.write_text(f"project:\n  state_dir: {blocker}/state\ndata:\n  path: x.csv\n")
    nlpops = Path(sys.executable).parent / "nlpops"
    done = subprocess.run([str(nlpops), "validate", "-p", str(params)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {blocker}/state: state dir is not writable (Not a directory)"
    ], done.stderr


def test_a_dead_tracking_server_fails_fast_with_the_url(params: Params, monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    from pipelines.tracking import configure_tracking

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "0")
    with pytest.raises(
        ServiceError, match=rf"MLflow tracking server http://127.0.0.1:{port} unreachable after 1 retries"
    ):
        configure_tracking(params)


def test_services_config_builds_driver_urls_from_one_postgres_url(tmp_path: Path, monkeypatch) -> None:
    from pipelines.services import ServicesConfig

    monkeypatch.setenv("NLPOPS_POSTGRES_URL", "postgresql://u:p@db.internal:6543?sslmode=require")
    monkeypatch.setenv("NLPOPS_PREFECT_PORT", "4300")
    cfg = ServicesConfig.from_env(tmp_path, mlflow_port=5100)
    assert (
        cfg.database_url("mlflow_db", "psycopg2")
        == "postgresql+psycopg2://u:p@db.internal:6543/mlflow_db?sslmode=require"
    )
    assert cfg.database_url("p", "asyncpg").startswith("postgresql+asyncpg://u:p@db.internal:6543/p")
    assert cfg.mlflow_url == "http://127.0.0.1:5100" and cfg.prefect_api_url == "http://127.0.0.1:4300/api"
