from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import use_mlflow_store

from pipelines import registry
from pipelines.config import GateConfig
from pipelines.errors import RegistryError
from pipelines.evaluate import decide_gate
from pipelines.registry_lock import LockSettings, file_lock, lock_key, resolve_lock


@pytest.fixture(scope="session")
def empty_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLflow SQLite store with its tables created once (migrations take seconds); tests copy it."""
    import mlflow

    db = tmp_path_factory.mktemp("store") / "mlflow.db"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{db}", registry_uri=f"sqlite:///{db}").search_registered_models()
    return db


@pytest.fixture
def store(tmp_path: Path, empty_store: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    db = tmp_path / "mlflow.db"
    shutil.copy(empty_store, db)
    uri = f"sqlite:///{db}"
    monkeypatch.delenv("NLPOPS_LOCK_URL", raising=False)
    use_mlflow_store(uri, tmp_path, monkeypatch, actor="alice")
    yield mlflow.MlflowClient()
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


@pytest.fixture
def mlflow_store(store, tmp_path: Path):
    store.create_registered_model("m")
    for _ in range(3):
        store.create_model_version("m", source=str(tmp_path))
    return store


def test_alias_moves_are_recorded_with_who_when_why(mlflow_store) -> None:
    registry.move_alias("m", "champion", "1", "first")
    registry.move_alias("m", "champion", "2", "better")
    again = registry.move_alias("m", "champion", "2", "same again")
    assert again.get("unchanged") is True
    history = registry.alias_history("m")
    assert [(e["from"], e["to"], e["reason"]) for e in history] == [(None, "1", "first"), ("1", "2", "better")]
    assert [e["seq"] for e in history] == [1, 2]
    assert all(e["by"] == "alice" and e["at"] for e in history)
    assert str(registry.alias_version("m", "champion").version) == "2"


def test_missing_alias_or_model_is_none(mlflow_store) -> None:
    assert registry.alias_version("m", "champion") is None
    assert registry.alias_version("no-such-model", "champion") is None
    assert registry.list_versions("no-such-model") == []


def test_list_versions_shows_aliases_newest_first(mlflow_store) -> None:
    registry.move_alias("m", "champion", "1", "x")
    registry.move_alias("m", "challenger", "3", "y")
    rows = registry.list_versions("m")
    assert [r["version"] for r in rows] == ["3", "2", "1"]
    assert rows[0]["aliases"] == ["challenger"] and rows[2]["aliases"] == ["champion"]
    assert rows[2]["promoted_by"] == "alice" and rows[2]["promoted"]


def test_an_alias_move_whose_history_record_fails_is_undone(mlflow_store, monkeypatch) -> None:
    registry.move_alias("m", "champion", "1", "first")

    def server_gone(*args, **kwargs):
        raise ConnectionError("server went away")

    monkeypatch.setattr(registry, "record_alias_event", server_gone)
    with pytest.raises(RegistryError, match="put back on v1"):
        registry.move_alias("m", "champion", "2", "better")
    assert str(registry.alias_version("m", "champion").version) == "1"
    assert len(registry.alias_history("m")) == 1


# ------------------------------------------------------------------------------------------------ register


def _new_run(value: float) -> str:
    import mlflow

    with mlflow.start_run() as run:
        mlflow.log_metric("test_macro_f1", value)
    return run.info.run_id


def _log_model(run_id: str):
    def log() -> str:
        import mlflow

        model = mlflow.initialize_logged_model(name="model", source_run_id=run_id)
        mlflow.finalize_logged_model(model.model_id, "READY")
        return model.model_uri

    return log


def _register(run_id: str, value: float, tmp_path: Path, decide=None, **options) -> dict:
    cfg = GateConfig(metric="macro_f1", min_score=0.0)

    def by_metric(champion):
        reference = None if champion is None else {"macro_f1": float(champion.tags["metric.macro_f1"])}
        version = None if champion is None else str(champion.version)
        return decide_gate({"macro_f1": value}, cfg, reference, version)

    return registry.register_challenger(
        "m",
        run_id,
        _log_model(run_id),
        {"metric.macro_f1": str(value), "run_id": run_id},
        decide or by_metric,
        "challenger",
        "champion",
        LockSettings(state_dir=str(tmp_path / "state")),
        **options,
    )


def test_register_promotes_only_a_better_challenger_and_rerunning_is_idempotent(store, tmp_path: Path) -> None:
    first = _register(_new_run(0.8), 0.8, tmp_path)
    assert first["promoted"] and first["champion"] == "1" and first["lock"] == "file"
    worse_run = _new_run(0.7)
    worse = _register(worse_run, 0.7, tmp_path)
    assert not worse["promoted"] and worse["champion"] == "1"
    assert store.get_model_version("m", "2").tags["gate.passed"] == "false"
    events = len(registry.alias_history("m"))
    again = _register(worse_run, 0.7, tmp_path)
    assert again["reused_existing_version"] and again["version"] == "2" and not again["promoted"]
    assert len(store.search_model_versions("name = 'm'")) == 2
    assert len(registry.alias_history("m")) == events
    better = _register(_new_run(0.9), 0.9, tmp_path)
    assert better["promoted"] and better["previous_champion"] == "1" and better["champion"] == "3"


def test_a_held_promotion_registers_a_passing_challenger_and_keeps_the_champion(store, tmp_path: Path) -> None:
    _register(_new_run(0.8), 0.8, tmp_path)
    why = "DVC experiment 'ep2' with register.promote=auto"
    held = _register(_new_run(0.9), 0.9, tmp_path, allow_promotion=False, hold_reason=why)
    assert not held["promoted"] and held["champion"] == "1" and held["promotion_held"] == why
    assert held["gate"]["passed"] is True  # it did beat the champion: promotable by hand
    tags = store.get_model_version("m", "2").tags
    assert tags["gate.passed"] == "true" and tags["promotion.held"] == why
    assert str(registry.alias_version("m", "challenger").version) == "2"
    assert [e["to"] for e in registry.alias_history("m", "champion")] == ["1"]
    event = registry.promote("m", "2", "tried it with dvc exp", "champion", LockSettings(str(tmp_path / "state")))
    assert event["action"] == "promote" and event["to"] == "2"


def test_a_register_that_fails_halfway_leaves_aliases_and_reruns_cleanly(store, tmp_path: Path) -> None:
    _register(_new_run(0.8), 0.8, tmp_path)
    run_id = _new_run(0.9)

    def crash(champion):
        raise RegistryError("champion could not be scored")

    with pytest.raises(RegistryError):
        _register(run_id, 0.9, tmp_path, decide=crash)
    assert str(registry.alias_version("m", "champion").version) == "1"
    assert str(registry.alias_version("m", "challenger").version) == "1"
    result = _register(run_id, 0.9, tmp_path)  # the half-registered version is reused and now decided
    assert result["reused_existing_version"] and result["version"] == "2" and result["promoted"]
    assert len(store.search_model_versions("name = 'm'")) == 2


def test_promote_refuses_a_failed_gate_unless_forced_with_a_reason(store, tmp_path: Path) -> None:
    lock = LockSettings(state_dir=str(tmp_path / "state"))
    _register(_new_run(0.8), 0.8, tmp_path)
    _register(_new_run(0.7), 0.7, tmp_path)
    with pytest.raises(RegistryError, match="failed the gate"):
        registry.promote("m", "2", "looks fine", "champion", lock)
    with pytest.raises(RegistryError, match="--reason is required"):
        registry.promote("m", "2", "  ", "champion", lock, force=True)
    with pytest.raises(RegistryError, match="no version '9'"):
        registry.promote("m", "9", "x", "champion", lock)
    event = registry.promote("m", "2", "customer hotfix", "champion", lock, force=True)
    assert event["forced"] is True and event["action"] == "force-promote" and event["from"] == "1"
    assert registry.alias_history("m", "champion")[-1]["reason"] == "customer hotfix"
    assert str(registry.alias_version("m", "champion").version) == "2"


def test_rollback_walks_back_through_previous_champions(mlflow_store, tmp_path: Path) -> None:
    lock = LockSettings(state_dir=str(tmp_path / "state"))
    with pytest.raises(RegistryError, match="no 'champion'"):
        registry.rollback("m", "nothing yet", "champion", lock)
    for version in ("1", "2", "3"):
        registry.move_alias("m", "champion", version, f"promote {version}", "promote")
    assert registry.rollback("m", "v3 is broken", "champion", lock)["to"] == "2"
    assert registry.rollback("m", "v2 too", "champion", lock)["to"] == "1"
    with pytest.raises(RegistryError, match="nothing to go back to"):
        registry.rollback("m", "again", "champion", lock)
    actions = [(e["action"], e["from"], e["to"]) for e in registry.alias_history("m", "champion")]
    assert actions[-2:] == [("rollback", "3", "2"), ("rollback", "2", "1")]


def test_champion_stack_replays_promotions_and_rollbacks() -> None:
    def ev(action: str, old: str | None, new: str) -> dict:
        return {"alias": "champion", "action": action, "from": old, "to": new}

    events = [ev("promote", None, "1"), ev("promote", "1", "2"), ev("rollback", "2", "1"), ev("promote", "1", "4")]
    assert registry.champion_stack(events, "champion", "4") == ["1", "4"]
    # A move made outside nlpops (alias now on 7) still rolls back to the last recorded champion.
    assert registry.champion_stack(events, "champion", "7") == ["1", "4", "7"]
    assert registry.champion_stack([], "champion", None) == []


# ------------------------------------------------------------------------------------------------ the lock


def test_the_file_lock_times_out_clearly_and_is_released_when_its_holder_is_killed(tmp_path: Path) -> None:
    path = tmp_path / "registry.lock"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import threading\nfrom pathlib import Path\nfrom pipelines.registry_lock import file_lock\n"
            f"with file_lock(Path({str(path)!r}), 5):\n    print('held', flush=True)\n    threading.Event().wait()\n",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RegistryError, match="held the registry lock"), file_lock(path, 0.3):
            pass
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        # Free the moment its holder is gone: a zero timeout means one non-blocking attempt, no waiting.
        with file_lock(path, 0):
            pass
    finally:
        holder.kill()
        holder.wait(10)


def test_lock_backend_selection(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NLPOPS_LOCK_URL", raising=False)
    assert resolve_lock("auto", None) == ("file", None)
    assert resolve_lock("auto", "postgresql://x/db") == ("postgres", "postgresql://x/db")
    monkeypatch.setenv("NLPOPS_LOCK_URL", "postgresql://env/db")
    assert resolve_lock("auto", "postgresql://x/db") == ("postgres", "postgresql://env/db")
    monkeypatch.delenv("NLPOPS_LOCK_URL")
    with pytest.raises(RegistryError, match=r"needs register\.lock_url"):
        resolve_lock("postgres", None)
    assert lock_key("a") == lock_key("a") != lock_key("b")
    assert -(2**63) <= lock_key("a") < 2**63
