"""An MLflow server that restarts in the middle of a registration: the client rides it out with backoff, and
re-running the registration for the same run creates no second version (idempotent). A server that stays down
fails with one line naming it, and the registry is as it was."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import MlflowServer

pytestmark = pytest.mark.integration

NAME = "outage-model"
DEAD_NAME = "outage-dead-model"
PARITY = {"passed": True, "max_abs_diff": 0.0, "atol": 1e-4, "rows": 1, "label_mismatches": 0}


@pytest.fixture(scope="module")
def running_server(tmp_path_factory: pytest.TempPathFactory):
    """One server for the module (starting one takes 15-25 s here); each test uses its own model name."""
    root = tmp_path_factory.mktemp("mlflow-server")
    srv = MlflowServer(root, f"sqlite:///{root / 'mlflow.db'}")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def server(running_server: MlflowServer, monkeypatch: pytest.MonkeyPatch) -> MlflowServer:
    if running_server.proc is None:
        running_server.start()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", running_server.url)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return running_server


def _register(run_id: str, state_dir: Path) -> dict[str, Any]:
    import mlflow

    from pipelines.config import GateConfig
    from pipelines.evaluate import decide_gate
    from pipelines.registry import register_challenger
    from pipelines.registry_lock import LockSettings

    def log_model() -> str:
        model = mlflow.initialize_logged_model(name="model", source_run_id=run_id)
        mlflow.finalize_logged_model(model.model_id, "READY")
        return model.model_uri

    def decide(champion: Any) -> Any:
        return decide_gate({"macro_f1": 0.9}, GateConfig(metric="macro_f1", min_score=0.0), None, None, PARITY, 1.0)

    return register_challenger(
        NAME,
        run_id,
        log_model,
        {"metric.macro_f1": "0.9", "run_id": run_id},
        decide,
        "challenger",
        "champion",
        LockSettings(state_dir=str(state_dir), kind="file", timeout_s=60),
    )


def test_registration_rides_out_a_server_restart_and_is_idempotent(
    server: MlflowServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(server.url)
    mlflow.set_registry_uri(server.url)
    mlflow.set_experiment("outage")
    with mlflow.start_run() as run:
        mlflow.log_metric("test_macro_f1", 0.9)

    # Down now, back in 4 s: the client's retries (backoff 1, 2, 4, 8 s) must carry the registration through.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "6")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    server.stop()
    restart = threading.Timer(4.0, server.start)
    restart.start()
    started = time.monotonic()
    try:
        result = _register(run.info.run_id, tmp_path / "state")
    finally:
        restart.join()
    waited = time.monotonic() - started
    assert waited >= 4.0, "the registration cannot have finished while the server was down"
    assert result["version"] == "1" and result["promoted"] and not result["reused_existing_version"]

    again = _register(run.info.run_id, tmp_path / "state")  # e.g. the Prefect task retried after a timeout
    assert again["version"] == "1" and again["reused_existing_version"] and not again["promoted"]
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    print(f"\nregistration through a server restart: {waited:.1f} s, 1 version, champion v1")


def test_a_server_that_stays_down_is_one_line_and_changes_nothing(server: MlflowServer, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    params = tmp_path / "params.yaml"
    params.write_text(
        f"project:\n  state_dir: {tmp_path / 'state'}\n  registered_model: {DEAD_NAME}\ndata:\n  path: x.csv\n"
    )
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    client.create_registered_model(DEAD_NAME)
    server.stop()
    env = {
        **os.environ,
        "MLFLOW_TRACKING_URI": server.url,
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
        "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    }
    nlpops = Path(sys.executable).parent / "nlpops"
    for command in (["changes"], ["models", "list"], ["promote", "1", "--reason", "outage test"]):
        done = subprocess.run(
            [str(nlpops), *command, "-p", str(params)], capture_output=True, text=True, env=env, timeout=180
        )
        assert done.returncode != 0, (command, done.stdout)
        lines = done.stderr.strip().splitlines()
        assert len(lines) == 1 and server.url in lines[0] and "Traceback" not in done.stderr, (command, done.stderr)
    server.start()
    assert client.search_model_versions(f"name = '{DEAD_NAME}'") == []
