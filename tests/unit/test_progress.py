"""Progress events (pipelines/progress.py): the plain, json and quiet renderers, throttling, the training events,
the stage events of `run_stage`, and the CLI's json error line."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator

import pytest

from pipelines import progress


@pytest.fixture(autouse=True)
def _fresh(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in (progress.FORMAT_ENV, progress.QUIET_ENV, progress.INTERVAL_ENV, "RANK"):
        monkeypatch.delenv(name, raising=False)
    progress.reset()
    yield
    progress.reset()


def _run_events() -> None:
    """What a short run reports: stages, a counted task with many updates, two training epochs."""
    progress.stage_started("tokenise")
    with progress.track("tokenised", total=1000, unit="rows", stage="tokenise") as task:
        for _ in range(100):
            task.advance(10)
    progress.stage_finished("tokenise", 0.5)
    progress.stage_cached("clean", "params (data, task, clean), inputs and code unchanged since its last run")
    for epoch in (1, 2):
        for step in range(1, 51):
            progress.training_step(epoch, 2, step, 50, step * 8, 0.7 - step / 100)
        record = {"epoch": epoch, "train_loss": 0.5, "val_loss": 0.4, "val_macro_f1": 0.8, "epoch_seconds": 1.5}
        progress.epoch_end(epoch, record, best=epoch == 1)
    progress.stage_skipped("register", "export failed")


def test_plain_lines_are_throttled_not_one_per_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")  # nothing is due within the test: only the ends show
    assert progress.configure("plain", out=out) == "plain"
    _run_events()
    lines = out.getvalue().splitlines()
    assert all(line.startswith("[") and "] " in line for line in lines)  # [HH:MM:SS] prefix
    text = "\n".join(lines)
    assert len(lines) == 7, text  # started, task end, done, cached, 2 epoch lines, skipped: not 200 batch lines
    assert "tokenise  started" in text and "tokenise  done in 0.5 s" in text
    assert "tokenised  1,000/1,000 rows (100%)" in text and "rows/s" in text
    assert "clean     cached: params (data, task, clean), inputs and code unchanged since its last run" in text
    assert "register  skipped: export failed" in text
    epoch = next(line for line in lines if "epoch 1/2" in line)
    assert "train_loss 0.5000" in epoch and "val_macro_f1 0.8000" in epoch and "50 steps" in epoch
    assert "samples/s" in epoch and "(best so far)" in epoch


def test_plain_progress_lines_come_at_most_once_per_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(progress.INTERVAL_ENV, "0.05")
    progress.configure("plain", out=out)
    with progress.track("checked", total=None, unit="rows", stage="validate") as task:
        for _ in range(30):
            task.advance(100)
            time.sleep(0.01)
    lines = [line for line in out.getvalue().splitlines() if "checked" in line]
    assert 2 <= len(lines) <= 10, lines  # a few interim lines and the end, not 30
    assert "3,000 rows" in lines[-1] and "in " in lines[-1]


def test_json_is_one_object_per_line_with_the_event_fields(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(progress.INTERVAL_ENV, "3600")
    assert progress.configure("json", out=out) == "json"
    _run_events()
    progress.emit("error", message="x.csv: file not found", exit_code=2)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds.count("stage_started") == 1 and kinds.count("stage_cached") == 1 and kinds.count("epoch_end") == 2
    assert all("ts" in e for e in events)
    ends = [e for e in events if e["event"] == "progress" and e["done"]]
    assert ends[0]["task"] == "tokenised" and ends[0]["completed"] == 1000 and ends[0]["rate"] > 0
    # throttled: each task's first event and its end (the 100 updates in between are not written)
    assert sum(1 for e in events if e["event"] == "progress" and e["task"] == "tokenised") == 2
    epoch = next(e for e in events if e["event"] == "epoch_end")
    assert epoch["metrics"] == {"train_loss": 0.5, "val_loss": 0.4, "val_macro_f1": 0.8} and epoch["steps"] == 50
    assert events[-1] == {**events[-1], "event": "error", "exit_code": 2}


def test_quiet_prints_nothing_but_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    out = io.StringIO()
    assert progress.configure("plain", quiet=True, out=out) == "quiet"
    _run_events()
    progress.message("the registry answered slowly", level="warning")
    assert out.getvalue() == ""
    assert "warning: the registry answered slowly" in capsys.readouterr().err


def test_quiet_json_keeps_only_errors_and_summaries(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(progress.QUIET_ENV, "1")
    progress.configure("json", out=out)
    _run_events()
    progress.emit("run_finished", seconds=1.0, summary={"registry": "m v1"})
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["run_finished"]


def test_the_choice_reaches_child_processes_through_the_environment() -> None:
    import os

    progress.configure("json", quiet=False, out=io.StringIO())
    assert os.environ[progress.FORMAT_ENV] == "json" and os.environ[progress.QUIET_ENV] == "0"
    progress.reset()
    assert progress.mode() == "json"  # a fresh process (or renderer) reads the same choice
    assert progress.resolve_format("auto", out=io.StringIO()) == "plain"  # not a terminal


def test_only_the_main_process_of_a_distributed_job_reports(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    progress.configure("plain", out=out)
    monkeypatch.setenv("RANK", "1")
    progress.stage_started("train")
    progress.training_step(1, 1, 1, 1, 8, 0.5)
    assert out.getvalue() == ""


def test_run_stage_reports_start_end_and_failure(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines import dag
    from pipelines.errors import DataError

    out = io.StringIO()
    progress.configure("json", out=out)
    spec = dag.STAGES["clean"]

    def fail(params: object) -> dict:
        raise DataError("x.csv: row 3: no label")

    monkeypatch.setattr(type(spec), "function", lambda self: lambda params: {"ok": 1})
    assert dag.run_stage(None, "clean") == {"ok": 1}  # type: ignore[arg-type]
    monkeypatch.setattr(type(spec), "function", lambda self: fail)
    with pytest.raises(DataError):
        dag.run_stage(None, "clean")  # type: ignore[arg-type]
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["stage_started", "stage_finished", "stage_started", "stage_failed"]
    assert events[-1]["error"] == "x.csv: row 3: no label" and events[-1]["stage"] == "clean"


def test_a_bad_log_format_is_one_clear_error() -> None:
    from pipelines.errors import ConfigError

    with pytest.raises(ConfigError, match="--log-format 'xml' is not allowed"):
        progress.configure("xml")


def test_each_epoch_validation_shows_as_its_own_task_until_the_epoch_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    out = io.StringIO()
    monkeypatch.setenv(progress.INTERVAL_ENV, "0")  # every update is due: shows each one
    progress.configure("json", out=out)
    progress.training_validation(30, "rows")
    for step in (1, 2):
        progress.training_step(1, 1, step, 2, step * 4, 0.6)
    for _ in range(3):
        progress.batch_done(10)  # what the validation batches of the loop report (feature_batches)
    progress.epoch_end(1, {"train_loss": 0.6, "val_loss": 0.5, "val_f1": 0.7})
    progress.batch_done(10)  # after the epoch: no validation task left to advance
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    validation = [e for e in events if e.get("task") == "epoch 1/1 validation"]
    assert [e["completed"] for e in validation] == [0, 10, 20, 30, 30] and validation[-1]["done"]
    assert validation[-1]["total"] == 30 and events[-1]["event"] == "epoch_end"
