"""Production path, as processes: `nlpops services up` (MLflow + Prefect servers on two throwaway PostgreSQL
databases), `nlpops schedule` serving the cron deployment, a run triggered through the Prefect API that
registers a champion with lineage in the server's registry, then a second run with nothing changed that is
skipped. Servers are always stopped and the databases dropped."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import build_tiny_model, clean_env, copy_repo, free_port, git, make_sentiment_rows

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "sched-sentiment"
DEPLOYMENT = "nightly-test"


def _postgres_up() -> bool:
    try:
        import psycopg2

        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=5).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory):
    if not _postgres_up():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    root = copy_repo(
        tmp_path_factory.mktemp("sched") / "project", skip=("tests/", "demo/", "data/", "infra/", "benchmarks/")
    )
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    with (root / "incoming" / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(120, seed=4))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"].update(registered_model=MODEL_NAME, experiment="sched-test")
    params["data"]["path"] = "data/raw/reviews.csv"
    params["validate"].update(min_rows=50, min_rows_per_class=5)
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(epochs=2, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0)
    params["gate"]["min_score"] = 0.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    suffix = uuid.uuid4().hex[:8]
    mlflow_port, prefect_port = free_port(), free_port()
    env = clean_env(
        NLPOPS_ACTOR="schedule-test",
        NLPOPS_MLFLOW_DB=f"nlpops_t{suffix}_mlflow",
        NLPOPS_PREFECT_DB=f"nlpops_t{suffix}_prefect",
        NLPOPS_MLFLOW_PORT=str(mlflow_port),
        NLPOPS_PREFECT_PORT=str(prefect_port),
        # A deployment run that finds its concurrency slot taken retries after this (Prefect's default: 30 s).
        PREFECT_SERVER_DEPLOYMENTS_CONCURRENCY_SLOT_WAIT_SECONDS="2",
    )

    def nlpops(*args: str, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "nlpops"), *args],
            cwd=root,
            env={**env, **(extra or {})},
            capture_output=True,
            text=True,
            timeout=600,
        )

    git(root, "init", "-q")
    done = nlpops("data", "add", "incoming/reviews.csv")
    assert done.returncode == 0, done.stderr
    git(root, "add", "-A")
    git(root, "commit", "-qm", "schedule test project")

    server = None
    try:
        up = nlpops("services", "up", "--no-ui")
        assert up.returncode == 0, up.stdout + up.stderr
        client_env = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}
        client_env["PREFECT_API_URL"] = f"http://127.0.0.1:{prefect_port}/api"
        server = subprocess.Popen(
            [str(BIN / "nlpops"), "schedule", "--cron", "0 3 * * *", "--name", DEPLOYMENT],
            cwd=root,
            env={**env, **client_env, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        yield {"root": root, "up": up.stdout, "server": server, "nlpops": nlpops, **client_env}
    finally:
        if server is not None and server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait(timeout=10)
        down = nlpops("services", "down")
        from pipelines.services import ServicesConfig, drop_database

        cfg = ServicesConfig(run_dir=root / ".nlpops" / "services")
        for db in (env["NLPOPS_MLFLOW_DB"], env["NLPOPS_PREFECT_DB"]):
            drop_database(cfg, db)
        assert down.returncode == 0, down.stderr


def _wait_for_deployment(stack: dict, timeout: float = 120.0):
    from prefect import get_client

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name(f"nlpops-retrain/{DEPLOYMENT}")

    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(read())
        except Exception:
            if stack["server"].poll() is not None:
                pytest.fail("nlpops schedule exited:\n" + stack["server"].stdout.read())
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def _task_names(flow_run_id: Any) -> list[str]:
    """The tasks a flow run ran, by task name (Prefect names a task run `<task name>-<suffix>`)."""
    import asyncio

    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import TaskRunSort

    async def read():
        async with get_client() as client:
            return await client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                sort=TaskRunSort.EXPECTED_START_TIME_ASC,
                limit=200,
            )

    return sorted(run.name.rsplit("-", 1)[0] for run in asyncio.run(read()))


def test_scheduled_runs_register_a_champion_then_skip_when_nothing_changed(stack: dict) -> None:
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    assert (
        stack["MLFLOW_TRACKING_URI"] in stack["up"]
        and f"export PREFECT_API_URL={stack['PREFECT_API_URL']}" in (stack["up"])
    )
    root: Path = stack["root"]
    with temporary_settings(updates={PREFECT_API_URL: stack["PREFECT_API_URL"]}):
        deployment = _wait_for_deployment(stack)
        assert deployment.schedules and deployment.schedules[0].schedule.cron == "0 3 * * *"
        assert deployment.parameters["skip_if_unchanged"] is True

        first = run_deployment(f"nlpops-retrain/{DEPLOYMENT}", timeout=400, poll_interval=2)
        assert first.state is not None and first.state.is_completed(), first.state
        assert first.state.name == "Completed"

        client = MlflowClient(tracking_uri=stack["MLFLOW_TRACKING_URI"], registry_uri=stack["MLFLOW_TRACKING_URI"])
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        assert str(champion.version) == "1"
        tags = champion.tags
        dvc_md5 = yaml.safe_load((root / "data/raw/reviews.csv.dvc").read_text())["outs"][0]["md5"]
        assert tags["data.md5"] == dvc_md5 and tags["data.dvc_tracked"] == "true"
        assert tags["git.commit"] == git(root, "rev-parse", "HEAD")
        assert tags["params.hash"] and tags["code.sha256"] and tags["run_id"] == champion.run_id
        assert client.get_run(champion.run_id).info.status == "FINISHED"

        first_tasks = _task_names(first.id)
        assert {"check-changes", "validate", "train", "register"} <= set(first_tasks), first_tasks
        experiment = client.get_experiment_by_name("sched-test")
        assert experiment is not None
        runs_before = len(client.search_runs([experiment.experiment_id]))

        started = time.perf_counter()
        second = run_deployment(f"nlpops-retrain/{DEPLOYMENT}", timeout=300, poll_interval=1)
        wall = time.perf_counter() - started
        assert second.state is not None and second.state.is_completed(), second.state
        assert second.state.name == "Skipped"
        assert "nothing changed since champion v1" in (second.state.message or "")
        assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == 1
        # Ended at once: the change check was its only task, and it started no tracking run.
        assert _task_names(second.id) == ["check-changes"]
        assert len(client.search_runs([experiment.experiment_id])) == runs_before
        run_seconds = (second.end_time - second.start_time).total_seconds()
        print(f"\nskipped scheduled run: {run_seconds:.1f} s in the flow run, {wall:.1f} s from trigger to done")

    # The CLI sees the same verdict against the same servers.
    changes = stack["nlpops"]("changes", extra={"MLFLOW_TRACKING_URI": stack["MLFLOW_TRACKING_URI"]})
    assert changes.returncode == 0, changes.stderr
    assert changes.stdout.startswith("unchanged: nothing changed since champion v1")
    status = stack["nlpops"]("services", "status")
    assert status.returncode == 0 and status.stdout.count("healthy") == 2, status.stdout


def _flow_run(run_id):
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(run_id)


def _logged(run_id, text: str) -> str | None:
    """The first log line of a flow run that contains `text`."""
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])), limit=200, offset=0)
    return next((log.message for log in logs if text in log.message), None)


def _until(predicate, what: str, stack: dict, timeout: float = 300.0):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if stack["server"].poll() is not None:
            pytest.fail("nlpops schedule exited:\n" + stack["server"].stdout.read())
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)


def test_scheduled_triggers_during_a_running_run_wait_or_skip(stack: dict) -> None:
    """Issue 18: while another run of the project holds the run lock, a scheduled run waits for it (a second trigger
    of the deployment waits for the first: concurrency limit 1), and with run.on_conflict=fail it ends as
    "Skipped: a run is in progress"."""
    from mlflow import MlflowClient
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines.run_lock import RunLockSettings, run_lock

    root: Path = stack["root"]
    client = MlflowClient(tracking_uri=stack["MLFLOW_TRACKING_URI"], registry_uri=stack["MLFLOW_TRACKING_URI"])
    versions = len(client.search_model_versions(f"name = '{MODEL_NAME}'"))
    lock = RunLockSettings(state_dir=str(root / ".nlpops"), artifacts_dir=str(root / "artifacts"))
    name = f"nlpops-retrain/{DEPLOYMENT}"
    with temporary_settings(updates={PREFECT_API_URL: stack["PREFECT_API_URL"]}):
        _wait_for_deployment(stack)
        with run_lock(lock, "test: a manual run in progress"):
            triggered = [run_deployment(name, timeout=0), run_deployment(name, timeout=0)]
            running = _until(
                lambda: [r for r in triggered if _flow_run(r.id).state.is_running()], "a triggered run to start", stack
            )[0]
            # It runs, but waits on the lock, and its log says for whom.
            waiting = _until(lambda: _logged(running.id, "waiting for the run lock on"), "the waiting line", stack)
            assert "held by `test: a manual run in progress` (pid " in waiting and "run.on_conflict=wait" in waiting
            assert _flow_run(running.id).state.is_running()
        other = next(r for r in triggered if r.id != running.id)
        done = [
            _until(lambda r=r: (f := _flow_run(r.id)).state.is_final() and f, "a run to end", stack)
            for r in (running, other)
        ]
        for run in done:
            assert run.state.is_completed() and run.state.name == "Skipped", run.state
            assert "nothing changed since champion v1" in (run.state.message or "")
        # The deployment's concurrency limit held the second trigger back until the first had finished.
        assert done[1].start_time >= done[0].end_time, "the two triggered runs overlapped"

        with run_lock(lock, "test: a manual run in progress"):
            refused = run_deployment(name, parameters={"overrides": ["run.on_conflict=fail"]}, timeout=300)
        assert refused.state is not None and refused.state.is_completed() and refused.state.name == "Skipped"
        message = refused.state.message or ""
        assert message.startswith("a run is in progress: `test: a manual run in progress` (pid "), message
    assert len(client.search_model_versions(f"name = '{MODEL_NAME}'")) == versions
