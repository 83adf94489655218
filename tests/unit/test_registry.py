from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import registry


@pytest.fixture
def mlflow_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mlflow

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NLPOPS_ACTOR", "alice")
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    client = mlflow.MlflowClient()
    client.create_registered_model("m")
    for _ in range(3):
        client.create_model_version("m", source=str(tmp_path))
    yield client
    mlflow.set_tracking_uri(None)


def test_alias_moves_are_recorded_with_who_when_why(mlflow_store) -> None:
    registry.move_alias("m", "champion", "1", "first")
    registry.move_alias("m", "champion", "2", "better")
    again = registry.move_alias("m", "champion", "2", "same again")
    assert again.get("unchanged") is True
    history = registry.alias_history("m")
    assert [(e["from"], e["to"], e["reason"]) for e in history] == [(None, "1", "first"), ("1", "2", "better")]
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
