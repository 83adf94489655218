"""The temporary local Prefect server of a run without PREFECT_API_URL, started early and in parallel.

Prefect's own ephemeral mode starts the same server (uvicorn on `prefect.server.api.server:create_app`, UI off) from
inside its client on the first API call: the calling process first imports the whole server application (FastAPI,
its models, ~40% of a cached rerun) only to launch a subprocess, then sleeps until the server answers. Here the
subprocess is launched before this process imports Prefect, and PREFECT_API_URL points the client at it, so the
server boots on one core while this process imports Prefect, MLflow and the stages' libraries on the other. The
server dies with this process (at exit, and by the parent-death signal when this process is killed) and writes its
output to `<PREFECT_HOME>/server.log`.

A new PREFECT_HOME's database is not built migration by migration on the run's critical path (about 5 s of the
first run of every new project): the server's bootstrap copies in the template of pipelines/db_templates.py.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from pipelines import db_templates
from pipelines.errors import ServiceError

_SERVER = (
    "import runpy, sys; from pipelines.distributed import die_with_parent; die_with_parent(); "
    "from pipelines.prefect_server import seed_database; seed_database(); "
    "sys.argv[0] = 'uvicorn'; runpy.run_module('uvicorn', run_name='__main__', alter_sys=True)"
)
# Migrates an empty database to Prefect's head and registers its block types (what the server's start does).
_BUILD_TEMPLATE = """
import asyncio
from prefect.server.database import provide_database_interface
from prefect.server.models.block_registration import run_block_auto_registration
async def main():
    db = provide_database_interface()
    await db.create_db()
    session = await db.session()
    async with session:
        await run_block_auto_registration(session=session)
        await session.commit()
asyncio.run(main())
"""
_SEED_ENV = "NLPOPS_PREFECT_SEED_DB"
_server: TemporaryServer | None = None


class TemporaryServer:
    """One uvicorn process serving Prefect's API on a free local port."""

    def __init__(self, home: Path) -> None:
        self.port = _free_port()
        self.api_url = f"http://127.0.0.1:{self.port}/api"
        self.log_path = home / "server.log"
        home.mkdir(parents=True, exist_ok=True)
        spec = importlib.util.find_spec("prefect")
        if spec is None or not spec.submodule_search_locations:
            raise ServiceError("prefect is not installed: run `make install`")
        app_dir = str(Path(next(iter(spec.submodule_search_locations))).parent)
        command = [sys.executable, "-c", _SERVER, "--app-dir", app_dir, "--factory"]
        command += ["prefect.server.api.server:create_app", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--log-level", "error", "--lifespan", "on"]
        env = {**os.environ, "PREFECT_UI_ENABLED": "0", "PREFECT__SERVER_EPHEMERAL": "1", "PREFECT__SERVER_FINAL": "1"}
        database = default_database(home)
        if database is not None and not database.exists():
            env[_SEED_ENV] = str(database)
        repo = str(Path(__file__).resolve().parents[1])  # the bootstrap imports this checkout's pipelines package
        env["PYTHONPATH"] = os.pathsep.join(p for p in (repo, env.get("PYTHONPATH", "")) if p)
        with self.log_path.open("w") as log:
            self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.ready = False
        atexit.register(self.stop)

    def answers(self, timeout_s: float = 0.2) -> bool:
        """One /health call of at most `timeout_s` (no waiting): True once the API answers."""
        if not self.ready and self.process.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.api_url}/health", timeout=timeout_s) as response:
                    self.ready = response.status == 200
            except (urllib.error.URLError, OSError):
                pass
        return self.ready

    def wait_ready(self, timeout_s: float) -> None:
        """Block until the API answers /health; ServiceError naming the log if it exits or does not answer."""
        deadline = time.monotonic() + timeout_s
        while not self.answers(timeout_s=2):
            if self.process.poll() is not None:
                raise ServiceError(
                    f"the temporary Prefect server exited with code {self.process.returncode} before answering "
                    f"(its output: {self.log_path}{_tail(self.log_path)})"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServiceError(
                    f"the temporary Prefect server did not answer within {timeout_s:.0f} s "
                    f"(PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS; its output: {self.log_path})"
                )
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def default_database(home: Path) -> Path | None:
    """The SQLite file the server will use when nothing configures another database, else None."""
    if any(os.environ.get(f"PREFECT_{part}_DATABASE_CONNECTION_URL") for part in ("API", "SERVER")):
        return None
    profiles = home / "profiles.toml"
    try:
        if profiles.is_file() and "DATABASE" in profiles.read_text(errors="replace"):
            return None
    except OSError:
        return None
    return home / "prefect.db"


def build_template(template: Path) -> None:
    """An empty database at Prefect's head with its block types (another process: Prefect reads its settings at
    import)."""
    work = template.with_name(f"{template.name}.home")
    work.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(PREFECT_HOME=str(work), PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{template}")
    try:
        subprocess.run([sys.executable, "-c", _BUILD_TEMPLATE], env=env, check=True, capture_output=True, timeout=300)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def seed_database() -> None:
    """In the server's bootstrap: the template where the new home's database will be."""
    target = os.environ.pop(_SEED_ENV, "")
    if target:
        db_templates.seed(Path(target), "prefect", build_template)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _tail(path: Path, chars: int = 600) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return ""
    return f": ...{text[-chars:]}" if text else ""


def flow_settings() -> contextlib.AbstractContextManager[object]:
    """Prefect settings for a flow run on the temporary server: no flow-run heartbeats. They let a long-lived
    server mark a crashed run; this server ends with the run, and a sync flow's exit waits for the heartbeat
    thread's next 1 s tick (0.5-1 s of every run). With a real server (PREFECT_API_URL) nothing changes."""
    if _server is None:
        return contextlib.nullcontext()
    import prefect.settings as settings

    return settings.temporary_settings(updates={settings.PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None})


def start_early() -> TemporaryServer | None:
    """Launch the temporary server when this process will need one (no PREFECT_API_URL; Prefect not yet imported,
    else its settings already hold no URL and its own ephemeral mode takes over); returns it, or None."""
    global _server
    if _server is not None:
        return _server
    if os.environ.get("PREFECT_API_URL") or "prefect" in sys.modules:
        return None
    home = Path(os.environ.get("PREFECT_HOME") or Path.home() / ".prefect")
    _server = TemporaryServer(home)
    os.environ["PREFECT_API_URL"] = _server.api_url
    return _server


def wait_ready(warm: Sequence[Callable[[], object]] = ()) -> None:
    """Wait for the server start_early launched (nothing when none was). Meanwhile `warm` runs step by step
    (imports the run's first stages will need) while the server does not answer yet: the wait does their work."""
    if _server is not None:
        for step in warm:
            if _server.answers():
                break
            with contextlib.suppress(Exception):  # the stage that needs it imports it again and says what is wrong
                step()
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 180)
        _server.wait_ready(timeout)
