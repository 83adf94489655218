"""The early-started temporary Prefect server: used only when no API URL is set, and a dead one is one clear error
(the real server is exercised by every `nlpops run` in the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import db_templates, prefect_server
from pipelines.errors import ServiceError


def test_a_server_that_exits_is_one_error_naming_its_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(prefect_server, "_SERVER", "import sys; print('no database'); sys.exit(3)")
    server = prefect_server.TemporaryServer(tmp_path / "home")
    with pytest.raises(ServiceError) as caught:
        server.wait_ready(60)
    message = str(caught.value)
    assert "exited with code 3" in message and str(tmp_path / "home" / "server.log") in message
    assert "no database" in message


def test_nothing_is_started_when_an_api_url_is_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:4200/api")
    monkeypatch.setattr(prefect_server, "_server", None)
    assert prefect_server.start_early() is None
    prefect_server.wait_ready()  # nothing to wait for


def test_a_new_home_gets_the_migrated_template_and_the_server_answers(tmp_path: Path) -> None:
    import sqlite3

    home = tmp_path / "home"
    server = prefect_server.TemporaryServer(home)
    try:
        server.wait_ready(120)
    finally:
        server.stop()
    template = db_templates.template_path("prefect")
    assert template.is_file(), (home / "server.log").read_text()
    head = "select version_num from alembic_version"
    with sqlite3.connect(template) as a, sqlite3.connect(home / "prefect.db") as b:
        assert a.execute(head).fetchall() == b.execute(head).fetchall() != []
        assert b.execute("select count(*) from block_type").fetchone()[0] > 0
    assert "database template" not in (home / "server.log").read_text()


def test_a_configured_or_existing_database_is_never_seeded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert prefect_server.default_database(home) == home / "prefect.db"
    monkeypatch.setenv("PREFECT_API_DATABASE_CONNECTION_URL", "postgresql+asyncpg://postgres@127.0.0.1/x")
    assert prefect_server.default_database(home) is None
    monkeypatch.delenv("PREFECT_API_DATABASE_CONNECTION_URL")
    (home / "profiles.toml").write_text(
        '[profiles.x]\nPREFECT_SERVER_DATABASE_CONNECTION_URL = "sqlite+aiosqlite:///y"\n'
    )
    assert prefect_server.default_database(home) is None
    (home / "profiles.toml").unlink()
    (home / "prefect.db").write_bytes(b"kept")
    monkeypatch.setenv(prefect_server._SEED_ENV, str(home / "prefect.db"))
    prefect_server.seed_database()
    assert (home / "prefect.db").read_bytes() == b"kept"


class _FakeServer:
    """Answers /health from the `after`-th look on."""

    def __init__(self, after: int) -> None:
        self.looks, self.after, self.waited = 0, after, False

    def answers(self) -> bool:
        self.looks += 1
        return self.looks > self.after

    def wait_ready(self, timeout_s: float) -> None:
        self.waited = True


def test_the_wait_does_the_warm_steps_until_the_server_answers(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stages' imports run while the server boots, one per look, and stop once it answers; a failing step is
    left to the stage that needs it."""
    server = _FakeServer(after=2)
    monkeypatch.setattr(prefect_server, "_server", server)
    done: list[str] = []
    steps = [lambda: done.append("a"), lambda: 1 / 0, lambda: done.append("c"), lambda: done.append("d")]
    prefect_server.wait_ready(warm=steps)
    assert done == ["a"] and server.looks == 3 and server.waited  # 'a', the failing step, then it answered


def test_flows_on_the_temporary_server_send_no_heartbeats(monkeypatch: pytest.MonkeyPatch) -> None:
    """Heartbeats mark crashed runs on a server that outlives them; the temporary one does not, and a sync flow's
    exit would wait for the heartbeat thread's next tick. With a real server the settings stay as they are."""
    from prefect.settings import get_current_settings

    monkeypatch.setattr(prefect_server, "_server", None)
    with prefect_server.flow_settings():
        default = get_current_settings().flows.heartbeat_frequency
    monkeypatch.setattr(prefect_server, "_server", _FakeServer(after=0))
    with prefect_server.flow_settings():
        assert get_current_settings().flows.heartbeat_frequency is None
    assert default is not None and get_current_settings().flows.heartbeat_frequency == default
