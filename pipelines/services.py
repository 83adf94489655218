"""Start, check and stop the two servers a production run talks to, as local processes on PostgreSQL.

- MLflow tracking + registry server: backend store in PostgreSQL, artifacts served by the server itself from a
  local folder (clients upload over HTTP, so a worker on another machine needs no shared disk).
- Prefect server (API + UI + scheduler): `PREFECT_API_DATABASE_CONNECTION_URL` on PostgreSQL (asyncpg).

`nlpops services up` creates the two databases when missing, starts both servers detached (own process group,
logs and pids under <state_dir>/services/), waits for their health endpoints and prints the URLs and the two
variables that point nlpops at them. `down` stops them; `status` asks their health endpoints. The same pieces
are what infra/docker-compose.yml runs as containers.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from pipelines.errors import ServiceError, first_line
from pipelines.redact import redact_settings, redact_text

DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432"
STATE_FILE = "services.json"


@dataclass
class ServicesConfig:
    run_dir: Path
    postgres_url: str = DEFAULT_POSTGRES_URL
    mlflow_db: str = "nlpops_mlflow"
    prefect_db: str = "nlpops_prefect"
    host: str = "127.0.0.1"
    mlflow_port: int = 5000
    prefect_port: int = 4200
    prefect_ui: bool = True

    @classmethod
    def from_env(cls, state_dir: str | Path, **overrides: Any) -> ServicesConfig:
        """Defaults, then env NLPOPS_POSTGRES_URL, NLPOPS_{MLFLOW,PREFECT}_{PORT,DB}, then arguments."""
        values: dict[str, Any] = {"run_dir": Path(state_dir).resolve() / "services"}
        if os.environ.get("NLPOPS_POSTGRES_URL"):
            values["postgres_url"] = os.environ["NLPOPS_POSTGRES_URL"]
        for key, env in (("mlflow_port", "NLPOPS_MLFLOW_PORT"), ("prefect_port", "NLPOPS_PREFECT_PORT")):
            if os.environ.get(env):
                values[key] = int(os.environ[env])
        for key, env in (("mlflow_db", "NLPOPS_MLFLOW_DB"), ("prefect_db", "NLPOPS_PREFECT_DB")):
            if os.environ.get(env):
                values[key] = os.environ[env]
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    @property
    def mlflow_url(self) -> str:
        return f"http://{self.host}:{self.mlflow_port}"

    @property
    def prefect_api_url(self) -> str:
        return f"http://{self.host}:{self.prefect_port}/api"

    def database_url(self, database: str, driver: str = "") -> str:
        parts = urlsplit(self.postgres_url)
        scheme = "postgresql" + (f"+{driver}" if driver else "")
        return urlunsplit((scheme, parts.netloc, f"/{database}", parts.query, ""))


def _postgres_error(cfg: ServicesConfig, exc: Exception) -> ServiceError:
    return ServiceError(
        redact_text(f"PostgreSQL at {cfg.postgres_url} refused: {first_line(exc)} (set NLPOPS_POSTGRES_URL)")
    )


@contextlib.contextmanager
def _admin_cursor(cfg: ServicesConfig) -> Iterator[Any]:
    """An autocommit cursor on the `postgres` database (CREATE/DROP DATABASE); errors name the server."""
    import psycopg2

    try:
        conn = psycopg2.connect(cfg.database_url("postgres"), connect_timeout=10)
    except psycopg2.Error as exc:
        raise _postgres_error(cfg, exc) from None
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            yield cur
    except psycopg2.Error as exc:
        raise _postgres_error(cfg, exc) from None
    finally:
        conn.close()


def ensure_database(cfg: ServicesConfig, name: str) -> bool:
    """Create the database when it does not exist; True when it was created."""
    with _admin_cursor(cfg) as cur:
        cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
        if cur.fetchone():
            return False
        cur.execute(f'CREATE DATABASE "{name}"')
        return True


def drop_database(cfg: ServicesConfig, name: str) -> None:
    with _admin_cursor(cfg) as cur:
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def prefect_cli_problem(api_url: str, timeout: float = 10.0) -> str | None:
    """None when the Prefect server accepts what Prefect's own CLI sends (`prefect deployment ls` posts
    `"limit": null, "sort": null`); otherwise one line saying why not and what to pin."""
    body = json.dumps({"limit": None, "sort": None, "offset": 0}).encode()
    request = urllib.request.Request(
        f"{api_url}/deployments/filter", data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return None
    except urllib.error.HTTPError as exc:
        if exc.code != 422:
            return None  # not the known incompatibility; the health check speaks for the rest
        try:
            from importlib.metadata import version

            fastapi = version("fastapi")
        except Exception:
            fastapi = "?"
        return (
            f"the Prefect server rejects Prefect's own CLI (`prefect deployment ls` gets 422: explicit nulls refused "
            f"by fastapi {fastapi}); install the pinned fastapi==0.150.0 from requirements.txt and restart it"
        )
    except (urllib.error.URLError, OSError, ValueError):
        return None


def health_urls(cfg: ServicesConfig) -> dict[str, str]:
    return {"mlflow": f"{cfg.mlflow_url}/health", "prefect": f"{cfg.prefect_api_url}/health"}


def _commands(cfg: ServicesConfig) -> dict[str, tuple[list[str], dict[str, str]]]:
    artifacts = cfg.run_dir / "mlartifacts"
    mlflow_cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--artifacts-destination", artifacts.as_uri(),
        "--serve-artifacts",
        "--host", cfg.host, "--port", str(cfg.mlflow_port),
        "--workers", "1",
    ]  # fmt: skip
    prefect_cmd = [
        sys.executable, "-m", "prefect", "server", "start",
        "--host", cfg.host, "--port", str(cfg.prefect_port),
        "--ui" if cfg.prefect_ui else "--no-ui",
    ]  # fmt: skip
    prefect_env = {
        "PREFECT_API_DATABASE_CONNECTION_URL": cfg.database_url(cfg.prefect_db, "asyncpg"),
        "PREFECT_HOME": str(cfg.run_dir / "prefect-home"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_LOGGING_SERVER_LEVEL": "WARNING",
    }
    # MLflow 3 starts a job runner and seven Huey consumers (GenAI scorer jobs nlpops never submits): eight
    # more Python processes, about 1.3 GB, each importing MLflow at start-up. Off unless the user says so.
    mlflow_env = {
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": os.environ.get("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false"),
        "MLFLOW_DISABLE_TELEMETRY": os.environ.get("MLFLOW_DISABLE_TELEMETRY", "true"),  # as the CLI's own
        # --backend-store-uri by environment: a password in it stays out of `ps` and the process list.
        "MLFLOW_BACKEND_STORE_URI": cfg.database_url(cfg.mlflow_db, "psycopg2"),
    }
    return {"mlflow": (mlflow_cmd, mlflow_env), "prefect": (prefect_cmd, prefect_env)}


def _log_tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child of ours counts as gone
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except (OSError, IndexError):
        return True


def read_state(cfg: ServicesConfig) -> dict[str, Any]:
    path = cfg.run_dir / STATE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def services_up(cfg: ServicesConfig, timeout: float = 180.0) -> dict[str, Any]:
    """Create the databases, start whichever server is not already healthy, wait for both; returns the state."""
    from pipelines.statedir import ensure_writable_dir

    ensure_writable_dir(cfg.run_dir, "services dir")
    created = {db: ensure_database(cfg, db) for db in (cfg.mlflow_db, cfg.prefect_db)}
    state = read_state(cfg)
    config = redact_settings({k: str(v) for k, v in asdict(cfg).items()})
    state.update({"config": config, "databases_created": created})
    procs: dict[str, subprocess.Popen] = {}
    urls = health_urls(cfg)
    for name, (cmd, extra_env) in _commands(cfg).items():
        if _healthy(urls[name]):
            state.setdefault(name, {})["reused"] = True
            continue
        log = cfg.run_dir / f"{name}.log"
        env = {**os.environ, **extra_env}
        with open(log, "ab") as fh:
            procs[name] = subprocess.Popen(
                cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True
            )
        state[name] = {"pid": procs[name].pid, "log": str(log), "reused": False}
    (cfg.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    deadline = time.monotonic() + timeout
    for name, proc in procs.items():
        while not _healthy(urls[name]):
            if proc.poll() is not None or time.monotonic() > deadline:
                services_down(cfg)
                why = f"exited with code {proc.returncode}" if proc.poll() is not None else f"not healthy in {timeout}s"
                raise ServiceError(
                    f"{name} server {why}; log {state[name]['log']}:\n"
                    + redact_text(_log_tail(Path(state[name]["log"])))
                )
            time.sleep(0.5)
    state["mlflow_url"], state["prefect_api_url"] = cfg.mlflow_url, cfg.prefect_api_url
    state["warnings"] = [w for w in (prefect_cli_problem(cfg.prefect_api_url),) if w]
    (cfg.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    return state


def services_down(cfg: ServicesConfig, grace: float = 20.0) -> list[str]:
    """Stop the servers this state dir started (SIGTERM to their process groups, SIGKILL after grace)."""
    state = read_state(cfg)
    stopped = []
    for name in ("prefect", "mlflow"):
        pid = (state.get(name) or {}).get("pid")
        if not pid or not _alive(pid):
            continue
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        if name not in cmdline:  # the pid was reused by something else: not ours to stop
            continue
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if not _alive(pid):
                break
        stopped.append(name)
        state[name]["pid"] = None
    if state:
        (cfg.run_dir / STATE_FILE).write_text(json.dumps(state, indent=2))
    return stopped


def services_status(cfg: ServicesConfig) -> dict[str, dict[str, Any]]:
    state = read_state(cfg)
    out = {}
    for name, url in health_urls(cfg).items():
        pid = (state.get(name) or {}).get("pid")
        out[name] = {
            "healthy": _healthy(url),
            "url": cfg.mlflow_url if name == "mlflow" else cfg.prefect_api_url,
            "pid": pid if pid and _alive(pid) else None,
        }
    return out


def client_env(cfg: ServicesConfig) -> dict[str, str]:
    """The variables that point nlpops (MLflow client, Prefect client) at these servers."""
    return {"MLFLOW_TRACKING_URI": cfg.mlflow_url, "PREFECT_API_URL": cfg.prefect_api_url}
