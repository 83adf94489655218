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


class FailedAttempts:
    """Records every failed HTTP attempt the MLflow client makes (urllib3's Retry.increment is called once per
    failed attempt, before the backoff sleep or the final error) and signals the first one."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        from urllib3.util.retry import Retry

        self.times: list[float] = []
        self.errors: list[str] = []
        self.first = threading.Event()
        original = Retry.increment

        def increment(retry: Any, *args: Any, **kwargs: Any) -> Any:
            self.times.append(time.monotonic())
            self.errors.append(type(kwargs.get("error")).__name__)
            self.first.set()
            return original(retry, *args, **kwargs)

        monkeypatch.setattr(Retry, "increment", increment)


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

    # The server goes down; it is started again only once the registration has hit it and failed (so the call is
    # in flight during the outage, whatever the machine's speed). Starting takes 15-25 s here: the client's
    # retries (backoff 0, 2, 4, 8, 16, 32, 64 s: two minutes) must carry the registration through.
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    server.stop()
    failed = FailedAttempts(monkeypatch)
    launched_at: list[float] = []  # the server cannot answer before it is launched again
    up_at: list[float] = []
    restart_errors: list[BaseException] = []

    def restart_after_first_failure() -> None:
        try:
            failed.first.wait(timeout=120)  # deadline: never leave the module's server down
            launched_at.append(time.monotonic())
            server.start()
            up_at.append(time.monotonic())
        except BaseException as exc:
            restart_errors.append(exc)

    restart = threading.Thread(target=restart_after_first_failure, daemon=True)
    restart.start()
    started = time.monotonic()
    try:
        result = _register(run.info.run_id, tmp_path / "state")
    except Exception as exc:
        pytest.fail(f"the registration did not ride out the outage: {type(exc).__name__}: {str(exc)[:300]}")
    finally:
        returned_at = time.monotonic()
        failed.first.set()  # a registration that never reached the server still lets the restart go ahead
        restart.join(timeout=180)
    assert not restart_errors, restart_errors
    assert launched_at and up_at, "the server did not come back"
    # The property: the call was made while the server was down, failed there, and finished only after it was back.
    assert failed.times, "no failed attempt: the registration never met the outage"
    assert started <= failed.times[0] < launched_at[0], "the first failed attempt was not during the outage"
    assert returned_at > launched_at[0], "the registration returned before the server was back"
    assert result["version"] == "1" and result["promoted"] and not result["reused_existing_version"]

    again = _register(run.info.run_id, tmp_path / "state")  # e.g. the Prefect task retried after a timeout
    assert again["version"] == "1" and again["reused_existing_version"] and not again["promoted"]
    client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
    assert len(client.search_model_versions(f"name = '{NAME}'")) == 1
    assert client.get_model_version_by_alias(NAME, "champion").version == "1"
    print(
        f"\nregistration through a server restart: {len(failed.times)} failed attempts "
        f"({', '.join(sorted(set(failed.errors)))}), the first {failed.times[0] - started:.1f} s in; server "
        f"relaunched after {launched_at[0] - started:.1f} s, up after {up_at[0] - started:.1f} s; registration "
        f"returned after {returned_at - started:.1f} s; 1 version, champion v1"
    )


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
