"""The early-started temporary Prefect server: used only when no API URL is set, and a dead one is one clear error
(the real server is exercised by every `nlpops run` in the integration tests)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines import prefect_server
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
