"""The README's order on one project, as a user who ran `make run` first: `nlpops run` on the embedded store, then
`nlpops services up` (MLflow + Prefect on throwaway PostgreSQL databases) and the two exports, `nlpops changes`
(says the store changed), `nlpops schedule`, a run triggered through the Prefect API that completes on the server
(the cached training is re-logged there, not retrained, and registered as v1), Prefect's own CLI and UI pages,
`nlpops lineage champion --verify` on the server; then `nlpops migrate` to a third store (the champion, its history
and runs move; a rerun there adopts the copy and registers nothing new). Servers stopped and databases dropped."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, clean_env, copy_repo, free_port, git, make_sentiment_rows

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "move-sentiment"
DEPLOYMENT = "nightly"


def _postgres_up() -> bool:
    try:
        import psycopg2

        psycopg2.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=5).close()
        return True
    except Exception:
        return False


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory):
    if not _postgres_up():
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    root = copy_repo(
        tmp_path_factory.mktemp("move") / "project", skip=("tests/", "demo/", "data/", "infra/", "benchmarks/")
    )
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    with (root / "incoming" / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(120, seed=5))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"].update(registered_model=MODEL_NAME, experiment="move-test")
    params["data"]["path"] = "data/raw/reviews.csv"
    params["validate"].update(min_rows=50, min_rows_per_class=5)
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(epochs=2, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0)
    params["gate"]["min_score"] = 0.0
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    suffix = uuid.uuid4().hex[:8]
    mlflow_port, prefect_port = free_port(), free_port()
    env = clean_env(
        NLPOPS_ACTOR="move-test",
        NLPOPS_MLFLOW_DB=f"nlpops_m{suffix}_mlflow",
        NLPOPS_PREFECT_DB=f"nlpops_m{suffix}_prefect",
        NLPOPS_MLFLOW_PORT=str(mlflow_port),
        NLPOPS_PREFECT_PORT=str(prefect_port),
    )
    servers = {"MLFLOW_TRACKING_URI": f"http://127.0.0.1:{mlflow_port}"}
    servers["PREFECT_API_URL"] = f"http://127.0.0.1:{prefect_port}/api"

    def run(*args: str, extra: dict[str, str] | None = None, exe: str = "nlpops") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / exe), *args], cwd=root, env={**env, **(extra or {})}, capture_output=True, text=True, timeout=600
        )

    git(root, "init", "-q")
    assert run("data", "add", "incoming/reviews.csv").returncode == 0
    git(root, "add", "-A")
    git(root, "commit", "-qm", "store move test project")
    state: dict = {"root": root, "run": run, "servers": servers, "serve": None}
    try:
        yield state
    finally:
        serve = state["serve"]
        if serve is not None and serve.poll() is None:
            os.killpg(serve.pid, signal.SIGINT)
            try:
                serve.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(serve.pid, signal.SIGKILL)
                serve.wait(timeout=10)
        down = run("services", "down")
        from pipelines.services import ServicesConfig, drop_database

        cfg = ServicesConfig(run_dir=root / ".nlpops" / "services")
        for db in (env["NLPOPS_MLFLOW_DB"], env["NLPOPS_PREFECT_DB"]):
            drop_database(cfg, db)
        assert down.returncode == 0, down.stderr


def _no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stdout + done.stderr and "unexpected" not in done.stderr, done.stderr


def _client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _wait_for_deployment(api_url: str, serve: subprocess.Popen, timeout: float = 180.0):
    import asyncio

    from prefect import get_client

    async def read():
        async with get_client() as client:
            return await client.read_deployment_by_name(f"nlpops-retrain/{DEPLOYMENT}")

    deadline = time.monotonic() + timeout
    while True:
        try:
            return asyncio.run(read())
        except Exception:
            if serve.poll() is not None:
                pytest.fail("nlpops schedule exited:\n" + (serve.stdout.read() if serve.stdout else ""))
            if time.monotonic() > deadline:
                raise
            time.sleep(1)


def test_embedded_run_then_servers_schedule_lineage_and_migrate(project: dict) -> None:
    started = time.perf_counter()
    root: Path = project["root"]
    run, servers = project["run"], project["servers"]
    timings: dict[str, float] = {}

    # 1. `make run`: the embedded store.
    t = time.perf_counter()
    first = run("run")
    timings["embedded run"] = time.perf_counter() - t
    assert first.returncode == 0, first.stderr
    _no_traceback(first)
    embedded = f"sqlite:///{root / '.nlpops' / 'mlflow.db'}"
    embedded_champion = _client(embedded).get_model_version_by_alias(MODEL_NAME, "champion")
    summary_path = root / "artifacts" / "train" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["tracking_store"] == embedded and summary["run_id"] == embedded_champion.run_id
    weights = next((root / "artifacts" / "model").glob("*.safetensors"))
    trained_at = weights.stat().st_mtime_ns

    # 2. Servers up, then the exports (each command below gets them).
    t = time.perf_counter()
    up = run("services", "up")
    timings["services up"] = time.perf_counter() - t
    assert up.returncode == 0, up.stdout + up.stderr
    assert "warning" not in up.stderr, up.stderr  # the Prefect server accepts Prefect's own CLI

    # 3. `nlpops changes` says what the next run will do, and that the store changed.
    changes = run("changes", extra=servers)
    assert changes.returncode == 0, changes.stderr
    assert changes.stdout.startswith("changed: no champion for move-sentiment yet"), changes.stdout
    assert f"tracking store changed: training run {summary['run_id']} was logged to {embedded}" in changes.stdout
    assert "re-logs it there (no retraining)" in changes.stdout

    # 4. `nlpops schedule` and a triggered run: completes, registering v1 on the server without retraining.
    project["serve"] = subprocess.Popen(
        [str(BIN / "nlpops"), "schedule", "--cron", "0 3 * * *"],
        cwd=root,
        env={**clean_env(NLPOPS_ACTOR="move-test"), **servers, "PREFECT_RUNNER_POLL_FREQUENCY": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t = time.perf_counter()
    with temporary_settings(updates={PREFECT_API_URL: servers["PREFECT_API_URL"]}):
        _wait_for_deployment(servers["PREFECT_API_URL"], project["serve"])
        flow_run = run_deployment(f"nlpops-retrain/{DEPLOYMENT}", timeout=500, poll_interval=2)
    timings["triggered run"] = time.perf_counter() - t
    assert flow_run.state is not None and flow_run.state.is_completed(), flow_run.state
    assert flow_run.state.name == "Completed"
    server = _client(servers["MLFLOW_TRACKING_URI"])
    champion = server.get_model_version_by_alias(MODEL_NAME, "champion")
    assert str(champion.version) == "1"
    relogged = json.loads(summary_path.read_text())
    assert relogged["tracking_store"] == servers["MLFLOW_TRACKING_URI"] and relogged["store_move"] == "relogged"
    assert relogged["previous_runs"][-1] == {"tracking_store": embedded, "run_id": summary["run_id"]}
    assert champion.run_id == relogged["run_id"] != summary["run_id"]
    assert weights.stat().st_mtime_ns == trained_at  # re-logged, not retrained
    run_tags = server.get_run(champion.run_id).data.tags
    assert run_tags["nlpops.copied_from_run"] == summary["run_id"] and run_tags["nlpops.copy_kind"] == "relogged"
    assert run_tags["git.commit"] == git(root, "rev-parse", "HEAD")
    assert len(server.get_metric_history(champion.run_id, "val_macro_f1")) == 2  # one point per epoch

    # 5. Prefect's own CLI and the UI's pages answer.
    listed = {args: run(*args, extra=servers, exe="prefect") for args in (("deployment", "ls"), ("flow-run", "ls"))}
    for done in listed.values():
        assert done.returncode == 0 and "422" not in done.stdout + done.stderr, done.stdout[-2000:] + done.stderr
    assert "nightly" in listed[("deployment", "ls")].stdout
    ui = servers["PREFECT_API_URL"].removesuffix("/api")
    for page in ("/", "/deployments", "/runs"):
        with urllib.request.urlopen(
            urllib.request.Request(ui + page, headers={"Accept": "text/html"}), timeout=30
        ) as r:
            assert r.status == 200 and "text/html" in r.headers.get("content-type", "")

    # 6. The lineage on the server verifies, link by link.
    lineage = run("lineage", "champion", "--verify", extra=servers)
    assert lineage.returncode == 0, lineage.stdout + lineage.stderr
    assert "verify: 8 verified, 0 changed, 0 missing" in lineage.stdout, lineage.stdout

    # 7. `nlpops migrate` to a third store (the unit tests cover a registry that already has the model): everything.
    third = f"sqlite:///{root.parent / 'third.db'}"
    moved = run("migrate", "--from", servers["MLFLOW_TRACKING_URI"], "--to", third, extra=servers)
    assert moved.returncode == 0, moved.stderr
    assert "move-sentiment: copied v1 (1 runs, 2 alias-history events)" in moved.stdout, moved.stdout
    lineage = run("lineage", "champion", "--verify", extra={"MLFLOW_TRACKING_URI": third})
    assert "verify: 8 verified, 0 changed, 0 missing" in lineage.stdout, lineage.stdout + lineage.stderr
    history = run("models", "history", extra={"MLFLOW_TRACKING_URI": third})
    assert history.stdout.count("move-test") == 2, history.stdout  # challenger and champion moves, who made them
    rerun = run("run", extra={"MLFLOW_TRACKING_URI": third})
    assert rerun.returncode == 0, rerun.stderr
    _no_traceback(rerun)
    assert len(_client(third).search_model_versions(f"name = '{MODEL_NAME}'")) == 1  # the copy was adopted
    assert json.loads(summary_path.read_text())["store_move"] == "adopted"
    print(
        f"\nstore move test: {time.perf_counter() - started:.0f} s; "
        + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
    )
