"""The project run lock (pipelines/run_lock.py): one run per artifacts dir, wait or fail, stale holders taken over,
re-entrant, held for DVC across stages, and the PostgreSQL advisory lock across hosts."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from pipelines.config import Params
from pipelines.errors import ConfigError, RunInProgressError
from pipelines.run_lock import (
    Holder,
    RunLockSettings,
    hold_run_lock,
    lease_path,
    process_start,
    read_holder,
    run_lock,
)

REPO = Path(__file__).resolve().parents[2]
PG = "postgresql://postgres@127.0.0.1:5432/postgres"

HOLDER = textwrap.dedent(
    """
    import pathlib, sys, time
    from pipelines.run_lock import RunLockSettings, run_lock
    state, artifacts, ready, release = sys.argv[1:5]
    with run_lock(RunLockSettings(state_dir=state, artifacts_dir=artifacts, on_conflict="fail"), "holder test"):
        pathlib.Path(ready).write_text("held")
        deadline = time.monotonic() + 120
        while not pathlib.Path(release).exists() and time.monotonic() < deadline:
            time.sleep(0.02)
    """
)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"helper exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.02)


def _python(script: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    environ = {**os.environ, "PYTHONPATH": str(REPO)}
    environ.pop("DVC_STAGE", None)
    environ.update(env or {})
    return subprocess.Popen(
        [sys.executable, "-c", script, *args], env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.fixture
def lines() -> list[str]:
    """What the lock printed (its progress and take-over lines)."""
    return []


@pytest.fixture
def settings(tmp_path: Path, lines: list[str]) -> RunLockSettings:
    return RunLockSettings(
        state_dir=str(tmp_path / "state"), artifacts_dir=str(tmp_path / "artifacts"), poll_s=0.02, echo=lines.append
    )


def _with(settings: RunLockSettings, **changes) -> RunLockSettings:
    from dataclasses import replace

    return replace(settings, **changes)


@pytest.fixture
def holder(settings: RunLockSettings, tmp_path: Path):
    """Another process holding the run lock of `settings` until the test creates the release file."""
    ready, release = tmp_path / "ready", tmp_path / "release"
    proc = _python(HOLDER, settings.state_dir, settings.artifacts_dir, str(ready), str(release))
    _wait_for(ready, proc)
    yield proc, release
    release.touch()
    proc.wait(timeout=30)


def test_free_lock_is_taken_names_its_holder_and_is_released(settings: RunLockSettings, lines: list[str]) -> None:
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    with run_lock(settings, "nlpops run") as me:
        held = read_holder(path)
        assert held is not None and held.pid == os.getpid() and held.host == socket.gethostname()
        assert held.command == "nlpops run" and held.proc_start == process_start(os.getpid()) == me.proc_start
    assert read_holder(path) is None  # released: the next run finds it free
    assert lines == []


def test_fail_refuses_with_one_line_naming_the_holder(settings: RunLockSettings, holder) -> None:
    proc, _ = holder
    with pytest.raises(RunInProgressError) as err, run_lock(_with(settings, on_conflict="fail"), "nlpops run"):
        pytest.fail("took a lock another process holds")
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 75
    assert f"pid {proc.pid} on {socket.gethostname()}" in message and "`holder test`" in message
    assert "run.on_conflict=fail" in message and settings.artifacts_dir in message


def test_wait_prints_the_holder_then_runs_once_it_is_released(settings: RunLockSettings, holder) -> None:
    proc, release = holder
    lines: list[str] = []

    def echo(line: str) -> None:  # the waiting line is the cue for the holder to finish
        lines.append(line)
        release.touch()

    with run_lock(_with(settings, echo=echo), "nlpops run") as me:
        assert read_holder(lease_path(settings.state_dir, settings.artifacts_dir)).pid == me.pid == os.getpid()
    assert len(lines) == 1
    assert lines[0].startswith(f"waiting for the run lock on {settings.artifacts_dir}: held by `holder test`")
    assert f"pid {proc.pid} on {socket.gethostname()}, since 20" in lines[0]


def test_wait_gives_up_after_wait_timeout(settings: RunLockSettings, holder) -> None:
    started = time.monotonic()
    timeout = pytest.raises(RunInProgressError, match=r"still held after run.wait_timeout_s=0.3 s by `holder test`")
    with timeout, run_lock(_with(settings, wait_timeout_s=0.3), "nlpops run"):
        pass
    assert 0.3 <= time.monotonic() - started < 10


def test_a_holder_killed_with_sigkill_does_not_block_the_next_run(
    settings: RunLockSettings, tmp_path: Path, lines: list[str]
) -> None:
    ready = tmp_path / "ready"
    proc = _python(HOLDER, settings.state_dir, settings.artifacts_dir, str(ready), str(tmp_path / "never"))
    _wait_for(ready, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    assert read_holder(path).pid == proc.pid  # the dead run's record is still there...
    with run_lock(_with(settings, on_conflict="fail"), "nlpops run"):  # ...and taken over, not waited on
        assert read_holder(path).pid == os.getpid()
    assert any(f"taking over from `holder test` (pid {proc.pid}" in line for line in lines), lines


def test_a_reused_pid_is_not_mistaken_for_the_holder(settings: RunLockSettings) -> None:
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    path.parent.mkdir(parents=True)
    start = process_start(os.getppid())
    if start is None:
        pytest.skip("no /proc: process start times are not available")
    # Our parent's pid, but another start time: the process that wrote this is gone and its pid was reused.
    gone = Holder(os.getppid(), socket.gethostname(), "nlpops run", "2026-01-01 00:00:00 UTC", start + 1)
    path.write_text(json.dumps(gone.__dict__))
    with run_lock(_with(settings, on_conflict="fail"), "nlpops run"):
        pass


def test_a_holder_on_another_host_is_named_with_the_file_to_delete(settings: RunLockSettings) -> None:
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(Holder(1, "other-host.invalid", "nlpops run", "2026-01-01 00:00:00 UTC", 5).__dict__))
    refused = pytest.raises(RunInProgressError, match=f"another host: if it is gone, delete {re.escape(str(path))}")
    with refused, run_lock(_with(settings, on_conflict="fail"), "nlpops run"):
        pass


def test_reentrant_in_one_process_and_separate_per_artifacts_dir(settings: RunLockSettings, tmp_path: Path) -> None:
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    other = _with(settings, artifacts_dir=str(tmp_path / "runs" / "sst2"), on_conflict="fail")
    assert lease_path(other.state_dir, other.artifacts_dir) != path
    with run_lock(settings, "nlpops run"):
        with run_lock(_with(settings, on_conflict="fail"), "Prefect flow nlpops-retrain"):
            assert read_holder(path).command == "nlpops run"
        assert read_holder(path) is not None  # the inner exit leaves the outer's lock alone
        ready = tmp_path / "ready"
        proc = _python(HOLDER, other.state_dir, other.artifacts_dir, str(ready), str(tmp_path / "release"))
        _wait_for(ready, proc)  # another experiment's artifacts dir: not blocked by ours
        (tmp_path / "release").touch()
        assert proc.wait(timeout=30) == 0
    assert read_holder(path) is None


DVC_STAGE_CHILD = textwrap.dedent(
    """
    import os
    from pipelines.run_lock import RunLockSettings, run_lock
    import sys
    settings = RunLockSettings(state_dir=sys.argv[1], artifacts_dir=sys.argv[2], on_conflict="fail")
    with run_lock(settings, "nlpops x") as h:
        print(h.pid, h.command)
    """
)

FAKE_DVC = textwrap.dedent(
    """
    import os, pathlib, subprocess, sys, time
    state, artifacts, ready, release, child = sys.argv[1:6]
    for stage in ("validate", "clean"):
        env = {**os.environ, "DVC_STAGE": stage}
        out = subprocess.run([sys.executable, "-c", child, state, artifacts], env=env, capture_output=True, text=True)
        print(out.returncode, out.stdout.strip(), out.stderr.strip()[-300:], flush=True)
    pathlib.Path(ready).write_text("between stages")
    deadline = time.monotonic() + 120
    while not pathlib.Path(release).exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    """
)


def test_under_dvc_the_lock_is_held_for_the_dvc_process_from_stage_to_stage(
    settings: RunLockSettings, tmp_path: Path
) -> None:
    ready, release = tmp_path / "ready", tmp_path / "release"
    dvc = _python(FAKE_DVC, settings.state_dir, settings.artifacts_dir, str(ready), str(release), DVC_STAGE_CHILD)
    _wait_for(ready, dvc)
    path = lease_path(settings.state_dir, settings.artifacts_dir)
    held = read_holder(path)
    assert held is not None and held.pid == dvc.pid and held.command == "dvc repro (nlpops x)"
    # Between two stages another run is refused: the lease is DVC's, not the finished stage's.
    with pytest.raises(RunInProgressError, match=f"pid {dvc.pid}"), run_lock(_with(settings, on_conflict="fail"), "r"):
        pass
    release.touch()
    out, _ = dvc.communicate(timeout=30)
    lines = out.splitlines()
    assert [line.split()[:2] for line in lines] == [["0", str(dvc.pid)], ["0", str(dvc.pid)]], out  # 2nd re-entered
    with run_lock(_with(settings, on_conflict="fail"), "nlpops run"):  # DVC exited: its lease is stale
        pass


def test_hold_run_lock_reads_params_and_can_skip_when_busy(settings: RunLockSettings, holder) -> None:
    params = Params.model_validate(
        {
            "data": {"path": "x.csv"},
            "project": {"state_dir": settings.state_dir, "artifacts_dir": settings.artifacts_dir},
            "run": {"on_conflict": "fail"},
        }
    )
    with hold_run_lock(params, "Prefect flow", skip_if_busy=True) as busy:
        assert busy is not None and busy.startswith("a run is in progress: `holder test` (pid ")
    with pytest.raises(RunInProgressError), hold_run_lock(params, "nlpops run"):
        pass
    with hold_run_lock(params.model_copy(update={"run": params.run.model_copy(update={"lock": "none"})}), "x") as b:
        assert b is None  # run.lock=none: no lock at all


def test_an_unwritable_state_dir_is_one_line_naming_it(settings: RunLockSettings, tmp_path: Path) -> None:
    from pipelines.errors import StateDirError

    (tmp_path / "state").write_text("a file where the state dir should be")
    with (
        pytest.raises(
            StateDirError, match=r"state/locks/run-artifacts-\w+\.lock: cannot write the run lock \(Not a directory\)"
        ),
        run_lock(settings, "nlpops run"),
    ):
        pass


def test_postgres_lock_needs_a_url(settings: RunLockSettings, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NLPOPS_LOCK_URL", raising=False)
    assert _with(settings, kind="auto").postgres_url() is None
    with pytest.raises(ConfigError, match=r"run\.lock=postgres needs register\.lock_url"):
        _with(settings, kind="postgres").postgres_url()
    monkeypatch.setenv("NLPOPS_LOCK_URL", "postgresql://env/db")
    assert _with(settings, kind="auto", url="postgresql://x/db").postgres_url() == "postgresql://env/db"
    assert _with(settings, kind="file").postgres_url() is None


def _pg_session(app_name: str):
    psycopg2 = pytest.importorskip("psycopg2")
    try:
        conn = psycopg2.connect(PG, connect_timeout=5, application_name=app_name)
    except psycopg2.Error:
        pytest.skip("PostgreSQL is not reachable at 127.0.0.1:5432")
    conn.autocommit = True
    return conn


def test_postgres_lock_is_held_across_hosts_and_names_the_holder(settings: RunLockSettings, lines: list[str]) -> None:
    pg = _with(settings, kind="postgres", url=PG, registered_model=f"run-lock-test-{os.getpid()}")
    other_host = _pg_session("nlpops 4242@build-7 2026-11-24 10:00:00")  # a run on another host holds it
    try:
        with other_host.cursor() as cur:
            cur.execute("SELECT pg_advisory_lock(%s)", (pg.postgres_key(),))
        refused = pytest.raises(RunInProgressError, match=r"`nlpops` \(pid 4242 on build-7, since 2026-11-24 10:00:00")
        with refused, run_lock(_with(pg, on_conflict="fail"), "nlpops run"):
            pass
        # The refusal left nothing behind: the local lease was given back.
        assert read_holder(lease_path(pg.state_dir, pg.artifacts_dir)) is None

        def release(line: str) -> None:
            lines.append(line)
            with other_host.cursor() as cur:
                cur.execute("SELECT pg_advisory_unlock(%s)", (pg.postgres_key(),))

        with run_lock(_with(pg, echo=release), "nlpops run"), other_host.cursor() as cur:
            cur.execute("SELECT pg_try_advisory_lock(%s)", (pg.postgres_key(),))  # now ours: the other cannot take it
            assert cur.fetchone()[0] is False
        assert any("held by `nlpops` (pid 4242 on build-7" in line for line in lines), lines
        with other_host.cursor() as cur:  # released at the end of the run
            cur.execute("SELECT pg_try_advisory_lock(%s)", (pg.postgres_key(),))
            assert cur.fetchone()[0] is True
    finally:
        other_host.close()


def test_real_dvc_repro_holds_one_lease_for_its_stages(tmp_path: Path, settings: RunLockSettings) -> None:
    """The same with DVC itself: each stage command (run through DVC's shell) takes the lock for the dvc process,
    and the second stage re-enters it even with run.on_conflict=fail."""
    take = (
        "from pipelines.run_lock import RunLockSettings, run_lock; "
        f"s = RunLockSettings(state_dir={settings.state_dir!r}, artifacts_dir={settings.artifacts_dir!r}, "
        "on_conflict='fail'); "
        "cm = run_lock(s, 'nlpops stage'); h = cm.__enter__(); print(h.pid, h.command)"
    )
    project = tmp_path / "dvc-project"
    project.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
    }
    env.pop("DVC_STAGE", None)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True, env=env)
    stages = {
        "a": {"cmd": f'python -c "{take}" > a.txt', "outs": ["a.txt"]},
        "b": {"cmd": f'python -c "{take}" > b.txt', "deps": ["a.txt"], "outs": ["b.txt"]},
    }
    (project / "dvc.yaml").write_text(json.dumps({"stages": stages}))
    dvc = subprocess.Popen([sys.executable, "-m", "dvc", "repro", "-q"], cwd=project, env=env, stderr=subprocess.PIPE)
    _, err = dvc.communicate(timeout=300)
    assert dvc.returncode == 0, err
    for out in ("a.txt", "b.txt"):
        assert (project / out).read_text().split() == [str(dvc.pid), "dvc", "repro", "(nlpops", "stage)"]
    with run_lock(_with(settings, on_conflict="fail"), "nlpops run"):  # DVC has exited: its lease is stale
        pass
