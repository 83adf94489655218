"""The promotion lock: "does this challenger beat the current champion?" and the alias move happen as one step.

MLflow has no compare-and-set on aliases, so two retraining runs finishing together could both read champion v1,
both decide they beat it, and both move the alias (the worse one last). Every alias move in nlpops runs inside
`promotion_lock`:

- file: an fcntl lock on `<state_dir>/locks/registry-<model>.lock`; correct for every process on one host (the
  SQLite default, or a server used from one machine). The OS drops it when the holder dies.
- postgres: a PostgreSQL session advisory lock keyed by the model name, on `register.lock_url` / NLPOPS_LOCK_URL
  (e.g. the database behind the MLflow server); correct across hosts. Dropped when the holder's connection ends.
- none: no lock (tests that show the race; never in production).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import RegistryError
from pipelines.redact import redact_text, redact_url

LOCK_URL_ENV = "NLPOPS_LOCK_URL"
_POLL_S = 0.05


def lock_key(name: str, namespace: str = "nlpops-registry") -> int:
    """Signed 64-bit advisory-lock key for a name (stable across hosts and Python versions); the namespace keeps the
    promotion lock and the run lock (pipelines/run_lock.py) of one model apart."""
    digest = hashlib.sha256(f"{namespace}:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def resolve_lock(kind: str, lock_url: str | None) -> tuple[str, str | None]:
    """(backend, url): NLPOPS_LOCK_URL wins over register.lock_url; auto = postgres when a URL is set, else file."""
    url = os.environ.get(LOCK_URL_ENV) or lock_url
    if kind == "auto":
        kind = "postgres" if url else "file"
    if kind == "postgres" and not url:
        raise RegistryError(f"register.lock=postgres needs register.lock_url or {LOCK_URL_ENV} (postgresql://...)")
    return kind, url


@contextlib.contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    with open(path, "a+") as fh:
        while True:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"{path}: another promotion has held the registry lock for over {timeout_s:g} s; "
                        "try again, or raise register.lock_timeout_s"
                    ) from None
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def connect_advisory(
    url: str, what: str = "promotion lock", error: type[Exception] = RegistryError, application_name: str | None = None
) -> Any:
    """An autocommit psycopg2 connection for session advisory locks; `error` naming `what` and the (redacted) URL
    when the server cannot be reached."""
    try:
        import psycopg2
    except ImportError:  # pragma: no cover - psycopg2-binary is in requirements.txt
        raise error(f"{what} on PostgreSQL needs psycopg2 (pip install psycopg2-binary)") from None
    dsn = re.sub(r"^postgres(?:ql)?\+\w+://", "postgresql://", url)  # SQLAlchemy-style driver suffixes
    extra = {"application_name": application_name[:63]} if application_name else {}
    try:
        conn = psycopg2.connect(dsn, connect_timeout=10, **extra)
    except psycopg2.Error as exc:
        raise error(redact_text(f"{what}: cannot connect to {url}: {str(exc).strip()}")) from None
    conn.autocommit = True
    return conn


@contextlib.contextmanager
def postgres_lock(url: str, key: int, timeout_s: float) -> Iterator[None]:
    import psycopg2

    conn = connect_advisory(url)
    deadline = time.monotonic() + timeout_s
    try:
        with conn.cursor() as cur:
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                if time.monotonic() > deadline:
                    raise RegistryError(
                        f"promotion lock on {redact_url(url)}: held by another promotion for over {timeout_s:g} s"
                    )
                time.sleep(_POLL_S)
        try:
            yield
        finally:
            with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


@contextlib.contextmanager
def promotion_lock(
    name: str, state_dir: str | Path, kind: str = "auto", lock_url: str | None = None, timeout_s: float = 300.0
) -> Iterator[str]:
    """Hold the registry lock for model `name`; yields the backend used ('file', 'postgres' or 'none')."""
    backend, url = resolve_lock(kind, lock_url)
    if backend == "none":
        yield backend
    elif backend == "postgres":
        assert url is not None
        with postgres_lock(url, lock_key(name), timeout_s):
            yield backend
    else:
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
        with file_lock(Path(state_dir).resolve() / "locks" / f"registry-{safe}.lock", timeout_s):
            yield backend


@dataclass(frozen=True)
class LockSettings:
    """Which promotion lock to take (register.lock, register.lock_url, register.lock_timeout_s, state_dir)."""

    state_dir: str = ".nlpops"
    kind: str = "auto"
    url: str | None = None
    timeout_s: float = 300.0

    @classmethod
    def from_params(cls, params: Any) -> LockSettings:
        reg = params.register_
        return cls(params.project.state_dir, reg.lock, reg.lock_url, reg.lock_timeout_s)

    def hold(self, name: str) -> contextlib.AbstractContextManager[str]:
        return promotion_lock(name, self.state_dir, self.kind, self.url, self.timeout_s)
