"""Many retraining runs finishing at once: exactly one champion (the best), no lost alias, every move recorded.

10 worker processes register a challenger each and promote it when it beats the champion they read, all released
at the same instant: once on the SQLite default (file lock), once against a real `mlflow server` process on a
throwaway PostgreSQL database (PostgreSQL advisory lock).

The control runs the same workers with `register.lock: none` and shows the race the lock prevents. So that it
breaks every time (not only when the scheduler happens to interleave the workers badly), its workers meet at a
barrier between reading the champion and moving the alias: without a lock every worker gets there, all decide
against the same stale champion, and the invariants below fail. Under a lock that meeting cannot happen (one
worker at a time is inside), which is what the lock is for.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from conftest import MlflowServer

pytestmark = pytest.mark.integration

WORKERS = 10
MEET_TIMEOUT_S = 30.0
PG = "postgresql://postgres@127.0.0.1:5432"


PARITY = {"passed": True, "max_abs_diff": 0.0, "atol": 1e-4, "rows": 1, "label_mismatches": 0}


def _worker(
    uri: str, name: str, score: float, state_dir: str, lock: str, ready: Any, go: Any, out: Any, meet: Any
) -> None:
    """One retraining run finishing: register a challenger, promote it if it beats the champion it reads.

    `meet` (the control only): a barrier every worker waits at after reading the champion, before deciding."""
    try:
        import mlflow

        from pipelines.config import GateConfig
        from pipelines.evaluate import decide_gate
        from pipelines.registry import register_challenger
        from pipelines.registry_lock import LockSettings

        os.environ["NLPOPS_ACTOR"] = f"worker-{os.getpid()}"
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        mlflow.set_experiment("concurrency")
        ready.put(os.getpid())
        if not go.wait(120):
            raise TimeoutError("never released by the test")
        with mlflow.start_run() as run:
            mlflow.log_metric("test_macro_f1", score)
        run_id = run.info.run_id

        def log_model() -> str:
            model = mlflow.initialize_logged_model(name="model", source_run_id=run_id)
            mlflow.finalize_logged_model(model.model_id, "READY")
            return model.model_uri

        def decide(champion: Any) -> Any:
            reference = None if champion is None else {"macro_f1": float(champion.tags["metric.macro_f1"])}
            version = None if champion is None else str(champion.version)
            if meet is None:
                time.sleep(0.05)  # widen the read-decide-move window (not a barrier): without a lock it is lost
            else:  # the control: every worker has read the champion before any moves it (impossible under a lock)
                meet.wait(MEET_TIMEOUT_S)
            return decide_gate(
                {"macro_f1": score}, GateConfig(metric="macro_f1", min_score=0.0), reference, version, PARITY, 1.0
            )

        result = register_challenger(
            name,
            run_id,
            log_model,
            {"metric.macro_f1": repr(score), "run_id": run_id},
            decide,
            "challenger",
            "champion",
            LockSettings(state_dir=state_dir, kind=lock, timeout_s=240),
        )
        out.put({"score": score, **{k: result[k] for k in ("version", "promoted", "champion", "lock")}})
    except BaseException as exc:
        out.put({"score": score, "error": f"{type(exc).__name__}: {exc}"})
        raise


def run_concurrent_promotions(uri: str, tmp: Path, lock: str, name: str, meet: bool = False) -> list[dict]:
    """WORKERS forked processes (mlflow already imported: no 12x import cost) with distinct scores in random
    order, released together by one event once every one is waiting for it; their results. `meet`: the control's
    barrier between reading the champion and moving it; there a worker may also fail on the store's own
    constraint (two unlocked alias writes colliding), which is the race too: its result carries the error."""
    import multiprocessing

    import mlflow  # noqa: F401  (imported before forking, so the children start warm)

    import pipelines.evaluate
    import pipelines.registry  # noqa: F401

    scores = [round(0.60 + 0.02 * i, 2) for i in range(WORKERS)]
    random.Random(7).shuffle(scores)
    ctx = multiprocessing.get_context("fork")
    ready, go, out = ctx.Queue(), ctx.Event(), ctx.Queue()
    barrier = ctx.Barrier(WORKERS) if meet else None
    state = str(tmp / "state")
    procs = [
        ctx.Process(target=_worker, args=(uri, name, s, state, lock, ready, go, out, barrier), daemon=True)
        for s in scores
    ]
    for proc in procs:
        proc.start()
    for _ in procs:  # every child is at go.wait() (deadline: a child that died shows up here, not as a hang)
        ready.get(timeout=120)
    go.set()
    results = [out.get(timeout=300) for _ in procs]
    for proc in procs:
        proc.join(60)
    if meet:
        return results
    errors = [r["error"] for r in results if "error" in r]
    assert not errors, errors
    assert all(proc.exitcode == 0 for proc in procs)
    return results


def check_outcome(client, name: str, results: list[dict]) -> dict[str, int]:
    """The invariants, and the counts they were checked on."""
    from pipelines.registry import alias_history

    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == WORKERS, "a registration was lost or duplicated"
    by_version = {str(v.version): float(v.tags["metric.macro_f1"]) for v in versions}
    best = max(by_version, key=by_version.get)
    model = client.get_registered_model(name)
    assert set(model.aliases) == {"champion", "challenger"}, "an alias was lost"
    assert str(model.aliases["champion"]) == best, "the champion is not the best challenger"
    champions = [v for v in versions if "champion" in client.get_model_version(name, v.version).aliases]
    assert len(champions) == 1

    history = alias_history(name)
    assert [e["seq"] for e in history] == list(range(1, len(history) + 1)), "a history record is missing"
    for alias in ("champion", "challenger"):
        moves = [e for e in history if e["alias"] == alias]
        assert moves[0]["from"] is None
        for before, after in itertools.pairwise(moves):
            assert after["from"] == before["to"], f"{alias} moved without a record: {before} then {after}"
        assert moves[-1]["to"] == str(model.aliases[alias])
    champion_moves = [e for e in history if e["alias"] == "champion"]
    promoted = [r for r in results if r["promoted"]]
    assert sorted(e["to"] for e in champion_moves) == sorted(r["version"] for r in promoted)
    # Under the lock every promotion beat the champion it replaced: scores only ever go up.
    path = [by_version[e["to"]] for e in champion_moves]
    assert path == sorted(path) and len(set(path)) == len(path)
    challenger_moves = [e for e in history if e["alias"] == "challenger"]
    assert len(challenger_moves) == WORKERS
    counts = {
        "workers": WORKERS,
        "versions": len(versions),
        "champions_at_end": len(champions),
        "promotions": len(promoted),
        "champion_moves_recorded": len(champion_moves),
        "challenger_moves_recorded": len(challenger_moves),
        "history_records": len(history),
    }
    print(f"\n{name}: {json.dumps(counts)}; champion v{best} (score {by_version[best]})")
    return counts


def sqlite_store(tmp_path: Path) -> str:
    """A fresh SQLite store, its tables created once in a process of its own (not in 10 at the same time, and no
    connection to fork)."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    subprocess.run(
        [sys.executable, "-c", f"import mlflow; mlflow.MlflowClient({uri!r}).search_experiments()"],
        check=True,
        capture_output=True,
    )
    return uri


def test_concurrent_promotions_on_sqlite_with_the_file_lock(tmp_path: Path) -> None:
    from mlflow import MlflowClient

    uri = sqlite_store(tmp_path)
    results = run_concurrent_promotions(uri, tmp_path, "file", "race-sqlite")
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert {r["lock"] for r in results} == {"file"}
    _with_uri(uri, lambda: check_outcome(client, "race-sqlite", results))


def test_control_without_a_lock_the_race_is_lost(tmp_path: Path) -> None:
    """`register.lock: none`, workers meeting between read and move: the invariants the lock keeps must fail."""
    from mlflow import MlflowClient

    uri = sqlite_store(tmp_path)
    results = run_concurrent_promotions(uri, tmp_path, "none", "race-unlocked", meet=True)
    collided = [r["error"] for r in results if "error" in r]
    # Only the store's own uniqueness check may stop an unlocked worker: any other error is a bug.
    assert all("UNIQUE constraint" in e or "IntegrityError" in e for e in collided), collided
    finished = [r for r in results if "error" not in r]
    assert {r["lock"] for r in finished} == {"none"}
    promoted = sum(r["promoted"] for r in finished)
    # Every worker read the champion before any moved it: each one that finished saw a stale champion and promoted.
    assert promoted == len(finished), f"only {promoted} of {len(finished)} promoted: not all decided on a stale read"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    with pytest.raises(AssertionError) as broken:
        _with_uri(uri, lambda: check_outcome(client, "race-unlocked", finished))
    print(
        f"\ncontrol without a lock: {promoted} of {WORKERS} workers promoted, {len(collided)} collided in the store;"
        f" broken: {broken.value}"
    )


def _with_uri(uri: str, fn):
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return fn()
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


@pytest.fixture
def postgres_mlflow_server(tmp_path: Path):
    """A throwaway database and a real `mlflow server` on it; both removed afterwards."""
    psycopg2 = pytest.importorskip("psycopg2")
    db = f"nlpops_test_{uuid.uuid4().hex[:10]}"
    try:
        admin = psycopg2.connect(f"{PG}/postgres", connect_timeout=5)
    except psycopg2.OperationalError as exc:
        pytest.skip(f"PostgreSQL not reachable at 127.0.0.1:5432 ({exc})")
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{db}"')
    # SQLAlchemy 2.1 defaults to psycopg 3: name the driver that is installed.
    server = MlflowServer(tmp_path, f"{PG.replace('postgresql://', 'postgresql+psycopg2://')}/{db}", workers=2)
    try:
        server.start()
        yield server.url, f"{PG}/{db}"
    finally:
        server.stop()
        with admin.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        admin.close()


@pytest.mark.slow  # an MLflow server on PostgreSQL (17 s); the same race on SQLite with the file lock, and its
# lock-less control, stay in make test; test_services_schedule runs the servers on PostgreSQL
def test_concurrent_promotions_behind_an_mlflow_server_on_postgresql(postgres_mlflow_server, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    url, db_url = postgres_mlflow_server
    os.environ["NLPOPS_LOCK_URL"] = db_url  # inherited by the forked workers: advisory lock in that database
    try:
        results = run_concurrent_promotions(url, tmp_path, "auto", "race-postgres")
    finally:
        del os.environ["NLPOPS_LOCK_URL"]
    assert {r["lock"] for r in results} == {"postgres"}
    client = MlflowClient(tracking_uri=url, registry_uri=url)
    _with_uri(url, lambda: check_outcome(client, "race-postgres", results))
