"""The project run lock: one run at a time per artifacts dir, so a registered version is one run, whole.

Two runs of one project (`nlpops run` twice, a scheduled flow run and a manual one, `dvc repro` beside `nlpops run`)
write the same artifacts/, stamps and dvc.lock; interleaved, one run's gate would judge the other's metrics and a
version would carry one run's model with another's lineage. Every entry point takes this lock first: `nlpops run`
(before Prefect starts), the Prefect flow (deployments run it without the CLI), and each stage verb that dvc.yaml calls.

Backends (`run.lock`):
- file (auto, always unless `none`): a lease file `<state_dir>/locks/run-<dir>-<hash>.lock`, keyed by the resolved
  artifacts dir, so experiments with their own `project.artifacts_dir` run side by side. The file names its holder
  (pid, host, process start time, command, since); it is read and written under a short flock, so taking it is atomic.
  A holder on this host whose process is gone (or whose pid now belongs to another process) is stale and is taken
  over: a run killed with -9 never blocks the next. A holder on another host (a shared disk) cannot be checked from
  here; the message names the file to delete if that run is gone (use the PostgreSQL lock across hosts).
- postgres (auto when `register.lock_url` / NLPOPS_LOCK_URL is set, or `run.lock: postgres`): in addition, a session
  advisory lock keyed by the registered model and the artifacts dir as configured, held across hosts. The server drops
  it when the holder's connection ends; server-side TCP keepalives find a holder whose host vanished. The holder is
  named through its connection's application_name.
- none: no run lock (only to reproduce the race).

Owner: normally the process itself; the lease ends when it exits. A stage verb run by `dvc repro` / `dvc exp run`
(DVC sets DVC_STAGE) takes the lease for the DVC process instead, so it lasts from the first stage to the last and no
other run slips in between two stages; it is never released explicitly and becomes stale when DVC exits.

Re-entrant: an owner that already holds the lease passes straight through (the CLI takes it before Prefect starts and
the flow takes it again in the same process; DVC's later stages find DVC's lease).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.errors import ConfigError, RunInProgressError, ServiceError
from pipelines.registry_lock import LOCK_URL_ENV, connect_advisory, lock_key
from pipelines.statedir import describe_os_error

POLL_S = 0.5
REMIND_S = 60.0
_PG_HELD: dict[int, int] = {}  # advisory key -> nesting depth in this process


def _echo_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ processes


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (state is [0], start time [19]); None without /proc."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot: with the pid it names one process, even after pid reuse."""
    fields = _proc_stat(pid)
    return int(fields[19]) if fields and len(fields) > 19 else None


def process_alive(pid: int, start: int | None = None) -> bool:
    """Is `pid` a live (not zombie) process on this host, and the same one that started at `start` (when given)?"""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, as another user
    fields = _proc_stat(pid)
    if fields is None:
        return True  # no /proc (macOS): the pid exists, that is all we can tell
    if fields[0] in ("Z", "X"):
        return False  # killed, waiting to be reaped
    return start is None or len(fields) <= 19 or int(fields[19]) == start


def _environ_has(pid: int, name: str) -> bool | None:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return None
    return any(item.startswith(name.encode() + b"=") for item in raw.split(b"\0"))


def _parent(pid: int) -> int:
    fields = _proc_stat(pid)
    return int(fields[1]) if fields and len(fields) > 1 else 0


def dvc_owner_pid() -> int | None:
    """Under `dvc repro` (DVC_STAGE set): the DVC process that runs the stages, i.e. the nearest ancestor whose own
    environment lacks DVC_STAGE (DVC sets it for the stage command only). None elsewhere or without /proc."""
    if "DVC_STAGE" not in os.environ:
        return None
    pid = os.getppid()
    for _ in range(10):
        if pid <= 1:
            return None
        has = _environ_has(pid, "DVC_STAGE")
        if has is None:
            return None
        if not has:
            return pid
        pid = _parent(pid)
    return None


# ------------------------------------------------------------------------------------------------ the lease


@dataclass(frozen=True)
class Holder:
    """Who holds (or asks for) the run lock."""

    pid: int
    host: str
    command: str
    since: str
    proc_start: int | None = None
    artifacts_dir: str = ""

    @classmethod
    def current(cls, command: str, artifacts_dir: str) -> Holder:
        pid = dvc_owner_pid()
        if pid is not None:
            command = f"dvc repro ({command})"
        else:
            pid = os.getpid()
        since = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return cls(pid, socket.gethostname(), command, since, process_start(pid), artifacts_dir)

    @classmethod
    def parse(cls, raw: str) -> Holder | None:
        try:
            data = json.loads(raw)
            return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
        except (ValueError, TypeError, KeyError):
            return None  # empty (released) or unreadable: nobody holds it

    def same_owner(self, other: Holder) -> bool:
        return (self.host, self.pid, self.proc_start) == (other.host, other.pid, other.proc_start)

    def on_this_host(self) -> bool:
        return self.host == socket.gethostname()

    def is_stale(self) -> bool:
        """Gone for sure: on this host and its process is dead (or its pid now names another process)."""
        return self.on_this_host() and not process_alive(self.pid, self.proc_start)

    def describe(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {self.since})"


@dataclass
class _Outcome:
    taken: bool
    holder: Holder | None
    created: bool = False
    stale: Holder | None = None


def lease_path(state_dir: str | Path, artifacts_dir: str | Path) -> Path:
    """The lease file of one artifacts dir: readable name, hash of the resolved path for uniqueness."""
    resolved = Path(artifacts_dir).resolve()
    tag = hashlib.sha256(str(resolved).encode()).hexdigest()[:12]
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", resolved.name)[:40] or "root"
    return Path(state_dir).resolve() / "locks" / f"run-{slug}-{tag}.lock"


@contextlib.contextmanager
def _locked_file(path: Path) -> Iterator[Any]:
    """The lease file, opened and flocked for one short read-modify-write."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+", encoding="utf-8")  # noqa: SIM115  (closed below, after the flock is given back)
    except OSError as exc:
        raise describe_os_error(path, exc, "cannot write the run lock") from None
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            fh.seek(0)
            yield fh
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _write(fh: Any, holder: Holder | None) -> None:
    fh.seek(0)
    fh.truncate()
    if holder is not None:
        fh.write(json.dumps(asdict(holder)))
    fh.flush()
    os.fsync(fh.fileno())


def try_take(path: Path, me: Holder) -> _Outcome:
    """Take the lease if it is free, stale or already ours; otherwise report who holds it."""
    with _locked_file(path) as fh:
        holder = Holder.parse(fh.read())
        if holder is not None and holder.same_owner(me):
            return _Outcome(True, holder)
        if holder is None or holder.is_stale():
            _write(fh, me)
            return _Outcome(True, me, created=True, stale=holder)
        return _Outcome(False, holder)


def read_holder(path: Path) -> Holder | None:
    """Who holds the lease now (None: free); a stale holder is still returned (see Holder.is_stale)."""
    if not path.is_file():
        return None
    with _locked_file(path) as fh:
        return Holder.parse(fh.read())


def release(path: Path, me: Holder) -> None:
    with _locked_file(path) as fh:
        holder = Holder.parse(fh.read())
        if holder is not None and holder.same_owner(me):
            _write(fh, None)


# ------------------------------------------------------------------------------------------------ settings


@dataclass(frozen=True)
class RunLockSettings:
    """Everything the run lock needs from params (project.*, run.*, register.lock_url)."""

    state_dir: str = ".nlpops"
    artifacts_dir: str = "artifacts"
    registered_model: str = "nlpops"
    kind: str = "auto"
    url: str | None = None
    on_conflict: str = "wait"
    wait_timeout_s: float | None = None
    poll_s: float = POLL_S
    echo: Callable[[str], None] = field(default=_echo_stderr, compare=False)

    @classmethod
    def from_params(cls, params: Any, **overrides: Any) -> RunLockSettings:
        run, project = params.run, params.project
        values = dict(
            state_dir=project.state_dir,
            artifacts_dir=project.artifacts_dir,
            registered_model=project.registered_model,
            kind=run.lock,
            url=params.register_.lock_url,
            on_conflict=run.on_conflict,
            wait_timeout_s=run.wait_timeout_s,
        )
        return cls(**{**values, **overrides})

    def postgres_url(self) -> str | None:
        """The URL of the advisory lock to take as well, or None (file lease only)."""
        if self.kind in ("file", "none"):
            return None
        url = os.environ.get(LOCK_URL_ENV) or self.url
        if self.kind == "postgres" and not url:
            raise ConfigError(f"run.lock=postgres needs register.lock_url or {LOCK_URL_ENV} (postgresql://...)")
        return url

    def postgres_key(self) -> int:
        # Hosts share the registered model and the configured (relative) artifacts dir, not an absolute path.
        return lock_key(f"{self.registered_model}\0{self.artifacts_dir}", namespace="nlpops-run")


# ------------------------------------------------------------------------------------------------ taking it


class _Waiter:
    """The progress lines while waiting: one when the holder changes, a reminder every REMIND_S."""

    def __init__(self, settings: RunLockSettings, what: str) -> None:
        self.settings, self.what = settings, what
        self.started = time.monotonic()
        self.deadline = None if settings.wait_timeout_s is None else self.started + settings.wait_timeout_s
        self.announced: str | None = None
        self.last = 0.0

    def busy(self, holder: str, hint: str = "") -> None:
        """Called each time the lock is found taken: fail, give up, announce, or just wait another poll."""
        s, now = self.settings, time.monotonic()
        if s.on_conflict == "fail":
            raise RunInProgressError(
                f"{self.what}: another run is in progress: {holder}; run.on_conflict=fail, so this run stops "
                "(set run.on_conflict=wait to queue behind it)" + hint,
                holder,
            )
        if self.deadline is not None and now > self.deadline:
            raise RunInProgressError(
                f"{self.what}: still held after run.wait_timeout_s={s.wait_timeout_s:g} s by {holder}; giving up"
                + hint,
                holder,
            )
        if holder != self.announced:
            s.echo(f"waiting for the run lock on {self.what}: held by {holder} (run.on_conflict=wait){hint}")
            self.announced, self.last = holder, now
        elif now - self.last >= REMIND_S:
            s.echo(f"still waiting ({now - self.started:.0f} s) for {holder} to finish with {self.what}")
            self.last = now
        time.sleep(s.poll_s)


def _take_lease(settings: RunLockSettings, me: Holder) -> _Outcome:
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    waiter = _Waiter(settings, settings.artifacts_dir)
    while True:
        outcome = try_take(path, me)
        if outcome.taken:
            if outcome.stale is not None:
                settings.echo(
                    f"run lock on {settings.artifacts_dir}: taking over from {outcome.stale.describe()}, "
                    "which is no longer running"
                )
            return outcome
        holder = outcome.holder
        assert holder is not None
        hint = "" if holder.on_this_host() else f"; it runs on another host: if it is gone, delete {path}"
        waiter.busy(holder.describe(), hint)


def _holder_app_name(me: Holder) -> str:
    return f"nlpops {me.pid}@{me.host[:24]} {me.since[:19]}"


def _describe_pg_holder(cur: Any, key: int) -> str:
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    cur.execute(
        "SELECT a.application_name, a.client_addr, a.backend_start FROM pg_locks l "
        "JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory' AND l.granted "
        "AND l.classid = %s AND l.objid = %s AND l.objsubid = 1",
        (unsigned >> 32, unsigned & 0xFFFFFFFF),
    )
    row = cur.fetchone()
    if row is None:
        return "another session (it just ended)"
    app, addr, started = row
    match = re.match(r"nlpops (\d+)@(\S+) (.+)$", app or "")
    if match:
        return f"`nlpops` (pid {match[1]} on {match[2]}, since {match[3]} UTC)"
    return f"session {app or '?'} from {addr or 'local socket'} (connected {started})"


@contextlib.contextmanager
def _advisory_lock(settings: RunLockSettings, url: str, me: Holder) -> Iterator[None]:
    key = settings.postgres_key()
    if _PG_HELD.get(key):
        _PG_HELD[key] += 1
        try:
            yield
        finally:
            _PG_HELD[key] -= 1
        return
    import psycopg2

    conn = connect_advisory(url, "run lock", ServiceError, _holder_app_name(me))
    waiter = _Waiter(settings, f"{settings.artifacts_dir} ({settings.registered_model}, PostgreSQL)")
    try:
        with conn.cursor() as cur:
            with contextlib.suppress(psycopg2.Error):  # let the server notice a holder whose host vanished
                cur.execute(
                    "SET tcp_keepalives_idle = 30; SET tcp_keepalives_interval = 10; SET tcp_keepalives_count = 3"
                )
            while True:
                cur.execute("SELECT pg_try_advisory_lock(%s)", (key,))
                if cur.fetchone()[0]:
                    break
                waiter.busy(_describe_pg_holder(cur, key))
        _PG_HELD[key] = 1
        try:
            yield
        finally:
            _PG_HELD.pop(key, None)
            with contextlib.suppress(psycopg2.Error), conn.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (key,))
    finally:
        conn.close()


@contextlib.contextmanager
def run_lock(settings: RunLockSettings, command: str) -> Iterator[Holder | None]:
    """Hold the run lock of settings.artifacts_dir for `command`; yields the holder record (None with lock=none).

    Waits or raises RunInProgressError according to settings.on_conflict; re-entrant for the same owner."""
    if settings.kind == "none":
        yield None
        return
    url = settings.postgres_url()
    me = Holder.current(command, str(Path(settings.artifacts_dir).resolve()))
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    outcome = _take_lease(settings, me)
    # Released only by the process that created it: DVC's lease outlives each stage; a re-entry leaves it alone.
    mine = outcome.created and me.pid == os.getpid()
    try:
        if url:
            with _advisory_lock(settings, url, me):
                yield me
        else:
            yield me
    finally:
        if mine:
            release(path, me)


@contextlib.contextmanager
def hold_run_lock(params: Any, command: str, skip_if_busy: bool = False, **overrides: Any) -> Iterator[str | None]:
    """The run lock for a Params object. Yields None once held; with skip_if_busy and run.on_conflict=fail, a busy
    lock yields the reason to skip (`a run is in progress: ...`) instead of raising, and nothing is held."""
    settings = RunLockSettings.from_params(params, **overrides)
    with contextlib.ExitStack() as stack:
        busy = None
        try:
            stack.enter_context(run_lock(settings, command))
        except RunInProgressError as exc:
            if not skip_if_busy:
                raise
            busy = f"a run is in progress: {exc.holder}"
        yield busy
