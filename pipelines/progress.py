"""Progress events: what the stages, the flow and the training loop report, and the renderers that show them.

Emitters call the functions here (`stage_started`, `stage_cached`, `stage_skipped(reason)`, `stage_finished`,
`track(...)` / `progress(task, completed, total, **fields)`, `training_step`, `epoch_end`, `message`); one
renderer per process turns each event into output on **stdout** (the command's own results go there too; errors
stay one line on stderr):

- ``rich``: progress bars with rate and ETA, finished tasks and stage lines printed above them (stdout is a TTY);
- ``plain``: one line per stage event; a task's progress at most every NLPOPS_PROGRESS_SECONDS (default 10) and
  once when it ends (CI logs, schedulers: not a line per batch);
- ``json``: one JSON object per event per line (`{"ts": ..., "event": "progress", "task": ..., ...}`), progress
  throttled the same way (log shippers);
- ``quiet``: nothing but warnings (the CLI still prints errors and its final summary).

The CLI's ``--log-format auto|rich|plain|json`` and ``--quiet`` set NLPOPS_LOG_FORMAT / NLPOPS_QUIET, so stage
processes started by DVC, a Prefect worker or a distributed launcher inherit the choice; ``auto`` is rich on a
terminal and plain otherwise. Only the main process of a distributed job (RANK unset or 0) reports.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, TextIO

FORMATS = ("auto", "rich", "plain", "json")
FORMAT_ENV = "NLPOPS_LOG_FORMAT"
QUIET_ENV = "NLPOPS_QUIET"
INTERVAL_ENV = "NLPOPS_PROGRESS_SECONDS"
DEFAULT_INTERVAL = 10.0

# ------------------------------------------------------------------------------------------------ formatting


def _num(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.4f}" if value == 0 or abs(value) >= 1e-3 else f"{value:.2e}"
    return str(value)


def _rate(value: float) -> str:
    """Throughput: 1,234 / 56.7 / 2.9 / 0.11."""
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def duration(seconds: float | None) -> str:
    """12.3 s, 4m05s, 1h02m."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def _fields_text(fields: dict[str, Any]) -> str:
    return "  ".join(
        f"{k.replace('_per_s', '/s')} {_rate(v) if k.endswith('_per_s') and isinstance(v, float) else _num(v)}"
        for k, v in fields.items()
        if v is not None
    )


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


# ------------------------------------------------------------------------------------------------ tasks


class Task:
    """One unit of work with a count (rows, steps, features ...): rate and ETA come from its own clock."""

    def __init__(
        self,
        name: str,
        total: int | None,
        unit: str,
        stage: str | None = None,
        completed: int = 0,
        quiet_end: bool = False,
    ) -> None:
        self.name, self.total, self.unit, self.stage = name, total, unit, stage
        self.completed = completed
        self.start_completed = completed  # a resumed epoch starts part-way: the rate counts this process's work
        self.started = time.monotonic()
        self.fields: dict[str, Any] = {}
        self.done = False
        self.quiet_end = quiet_end  # the end is reported by another event (an epoch's end line)
        self.last_emitted = self.started
        self.announced = False  # json: a task's first event is written at once (then throttled)

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def rate(self) -> float | None:
        done = self.completed - self.start_completed
        elapsed = self.elapsed
        return done / elapsed if elapsed > 0 and done > 0 else None

    @property
    def eta(self) -> float | None:
        rate = self.rate
        if self.total is None or not rate:
            return None
        return max(self.total - self.completed, 0) / rate

    def event(self) -> dict[str, Any]:
        return {
            "task": self.name,
            "stage": self.stage,
            "completed": self.completed,
            "total": self.total,
            "unit": self.unit,
            "elapsed_s": round(self.elapsed, 3),
            "rate": None if self.rate is None else round(self.rate, 3),
            "eta_s": None if self.eta is None else round(self.eta, 1),
            "done": self.done,
            **self.fields,
        }

    def update(self, completed: int | None = None, advance: int = 0, total: int | None = None, **fields: Any) -> None:
        if total is not None:
            self.total = total
        if completed is not None:
            self.completed = completed
        self.completed += advance
        self.fields.update(fields)
        _emit_progress(self)

    def advance(self, n: int = 1, **fields: Any) -> None:
        self.update(advance=n, **fields)

    def finish(self, **fields: Any) -> None:
        if self.done:
            return
        self.fields.update(fields)
        if self.total is None:
            self.total = self.completed
        self.done = True
        _emit_progress(self)
        with _lock:
            if self in _ambient:
                _ambient.remove(self)


# ------------------------------------------------------------------------------------------------ renderers


class Renderer:
    """Turns events into output; `progress` events come with their Task (for bars and throttling)."""

    def __init__(self, out: TextIO, interval: float) -> None:
        self.out, self.interval = out, interval

    def event(self, kind: str, data: dict[str, Any]) -> None:
        raise NotImplementedError

    def progress(self, task: Task) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _due(self, task: Task) -> bool:
        """Throttle: the end of a task always shows; otherwise at most once per interval."""
        now = time.monotonic()
        if task.done or now - task.last_emitted >= self.interval:
            task.last_emitted = now
            return True
        return False


class QuietRenderer(Renderer):
    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "message" and data.get("level") in ("warning", "error"):
            print(f"{data['level']}: {data['text']}", file=sys.stderr, flush=True)

    def progress(self, task: Task) -> None:
        pass


class JsonRenderer(Renderer):
    def _write(self, kind: str, data: dict[str, Any]) -> None:
        record = {"ts": datetime.now(UTC).isoformat(timespec="milliseconds"), "event": kind, **data}
        self.out.write(json.dumps(_jsonable(record), separators=(",", ":")) + "\n")
        self.out.flush()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        self._write(kind, data)

    def progress(self, task: Task) -> None:
        first = not task.announced
        if self._due(task) or first:
            task.announced = True
            self._write("progress", task.event())


def progress_text(task: Task) -> str:
    """`epoch 1/4  120/500 steps (24%)  41.2 steps/s  ETA 1m20s  loss 0.6531` (plain lines, rich's done lines)."""
    count = f"{_num(task.completed)}/{_num(task.total)}" if task.total is not None else _num(task.completed)
    parts = [f"{task.name}  {count} {task.unit}"]
    if task.total:
        parts[0] += f" ({100 * task.completed / task.total:.0f}%)"
    if task.done:
        parts.append(f"in {duration(task.elapsed)}")
    if task.rate:
        parts.append(f"{_rate(task.rate)} {task.unit}/s")
    if not task.done and task.eta is not None:
        parts.append(f"ETA {duration(task.eta)}")
    shown = _fields_text(task.fields)
    return "  ".join(parts) + (f"  {shown}" if shown else "")


def event_text(kind: str, data: dict[str, Any]) -> str | None:
    """One human line per event (None: nothing to say)."""
    stage = data.get("stage") or ""
    if kind == "stage_started":
        return f"{stage:<9} started"
    if kind == "stage_finished":
        extra = f"  {data['note']}" if data.get("note") else ""
        return f"{stage:<9} done in {duration(data.get('seconds'))}{extra}"
    if kind == "stage_cached":
        return f"{stage:<9} cached: {data.get('reason')}"
    if kind == "stage_skipped":
        return f"{stage:<9} skipped: {data.get('reason')}"
    if kind == "stage_failed":
        return f"{stage:<9} FAILED after {duration(data.get('seconds'))} (the error follows)"
    if kind == "epoch_end":
        metrics = _fields_text(data.get("metrics") or {})
        speed = f", {_rate(float(data['samples_per_s']))} samples/s" if data.get("samples_per_s") else ""
        best = "  (best so far)" if data.get("best") else ""
        return (
            f"{'train':<9} epoch {data.get('epoch')}/{data.get('epochs') or '?'}  {metrics}  "
            f"({data.get('steps') or '?'} steps in {duration(data.get('seconds'))}{speed}){best}"
        )
    if kind == "message":
        level = data.get("level", "info")
        prefix = "" if level == "info" else f"{level}: "
        return f"{stage:<9} {prefix}{data.get('text')}" if stage else f"{prefix}{data.get('text')}"
    if kind == "run_skipped":
        return f"run skipped: {data.get('reason')}"
    return None


class PlainRenderer(Renderer):
    def _line(self, text: str) -> None:
        self.out.write(f"[{datetime.now().strftime('%H:%M:%S')}] {text}\n")
        self.out.flush()

    def event(self, kind: str, data: dict[str, Any]) -> None:
        text = event_text(kind, data)
        if text is not None:
            self._line(text)

    def progress(self, task: Task) -> None:
        if task.done and task.quiet_end:
            return
        if task.completed == task.start_completed and not task.done:
            return  # nothing done yet: the stage's started line says enough
        if self._due(task):
            self._line(f"{task.stage or '':<9} {progress_text(task)}".rstrip())


class RichRenderer(Renderer):
    """rich bars on a terminal; a finished task leaves one line (its bar goes), so the screen reads as a log."""

    def __init__(self, out: TextIO, interval: float) -> None:
        super().__init__(out, interval)
        from rich.console import Console

        self.console = Console(file=out, highlight=False, soft_wrap=True)
        self._progress: Any = None
        self._ids: dict[int, Any] = {}
        import atexit

        atexit.register(self.close)  # an error mid-task: the bars go before the shell prompt comes back

    def _bars(self) -> Any:
        if self._progress is None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[bold]{task.fields[stage]:<9}[/] {task.description}"),
                BarColumn(bar_width=30),
                TextColumn("{task.fields[count]}"),
                TextColumn("{task.fields[rate]}"),
                TimeRemainingColumn(),
                TextColumn("{task.fields[extra]}"),
                console=self.console,
                transient=True,
                refresh_per_second=4,
            )
            self._progress.start()
        return self._progress

    def _print(self, text: str) -> None:
        from rich.text import Text

        target = self._progress.console if self._progress is not None else self.console
        target.print(Text(text))

    def event(self, kind: str, data: dict[str, Any]) -> None:
        text = event_text(kind, data)
        if text is not None:
            self._print(text)

    def progress(self, task: Task) -> None:
        bars = self._bars()
        count = (
            f"{_num(task.completed)}/{_num(task.total)} {task.unit}"
            if task.total
            else f"{_num(task.completed)} {task.unit}"
        )
        fields = {
            "stage": task.stage or "",
            "count": count,
            "rate": f"{_rate(task.rate)} {task.unit}/s" if task.rate else "",
            "extra": _fields_text(task.fields),
        }
        key = id(task)
        if key not in self._ids:
            self._ids[key] = bars.add_task(task.name, total=task.total, completed=task.completed, **fields)
        bars.update(self._ids[key], total=task.total, completed=task.completed, **fields)
        if task.done:
            bars.remove_task(self._ids.pop(key))
            if not task.quiet_end:
                self._print(f"{task.stage or '':<9} {progress_text(task)}".rstrip())
            if not self._ids:
                self.close()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
            self._ids.clear()


# ------------------------------------------------------------------------------------------------ renderer in use

_lock = threading.RLock()
_renderer: Renderer | None = None
_ambient: list[Task] = []  # tasks that count the batches of `feature_batches` (evaluation)
_training: dict[str, Any] = {}  # the current epoch's task and what epoch_end needs


def _is_main_process() -> bool:
    return os.environ.get("RANK", "0") in ("", "0")


def resolve_format(log_format: str | None = None, quiet: bool | None = None, out: TextIO | None = None) -> str:
    """rich | plain | json | quiet, from the arguments, else the environment, else auto."""
    chosen = (log_format or os.environ.get(FORMAT_ENV) or "auto").strip().lower()
    if chosen not in FORMATS:
        from pipelines.errors import ConfigError

        raise ConfigError(f"--log-format {chosen!r} is not allowed (allowed: {', '.join(FORMATS)})")
    if quiet is None:
        quiet = os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes")
    if quiet and chosen != "json":
        return "quiet"
    if chosen == "auto":
        stream = out if out is not None else sys.stdout
        return "rich" if getattr(stream, "isatty", lambda: False)() else "plain"
    return chosen


def configure(log_format: str | None = None, quiet: bool | None = None, out: TextIO | None = None) -> str:
    """Choose this process's renderer (and, through the environment, its children's); returns the mode.

    With --quiet and json, only errors and the summary are written (as JSON)."""
    global _renderer
    mode = resolve_format(log_format, quiet, out)
    if log_format:
        os.environ[FORMAT_ENV] = log_format
    if quiet is not None:
        os.environ[QUIET_ENV] = "1" if quiet else "0"
    with _lock:
        if _renderer is not None:
            _renderer.close()
        _renderer = _make(mode, out)
    return mode


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL)))
    except ValueError:
        return DEFAULT_INTERVAL


def _make(mode: str, out: TextIO | None) -> Renderer:
    stream = out if out is not None else sys.stdout
    if mode == "json" and os.environ.get(QUIET_ENV, "").strip().lower() in ("1", "true", "yes"):
        return _QuietJson(stream, _interval())
    renderer: type[Renderer] = {
        "rich": RichRenderer,
        "plain": PlainRenderer,
        "json": JsonRenderer,
        "quiet": QuietRenderer,
    }[mode]
    return renderer(stream, _interval())


class _QuietJson(JsonRenderer):
    """--quiet --log-format json: only errors and summaries, as JSON."""

    def event(self, kind: str, data: dict[str, Any]) -> None:
        if kind in ("error", "run_finished", "run_skipped", "stage_summary") or (
            kind == "message" and data.get("level") in ("warning", "error")
        ):
            self._write(kind, data)

    def progress(self, task: Task) -> None:
        pass


def renderer() -> Renderer:
    global _renderer
    with _lock:
        if _renderer is None:
            _renderer = _make(resolve_format(), None)
        return _renderer


def mode() -> str:
    """The current renderer's mode: rich, plain, json or quiet."""
    r = renderer()
    return {
        RichRenderer: "rich",
        PlainRenderer: "plain",
        JsonRenderer: "json",
        _QuietJson: "json",
        QuietRenderer: "quiet",
    }.get(type(r), "plain")


def reset() -> None:
    """Forget the renderer (tests; a forked child re-reads the environment)."""
    global _renderer
    with _lock:
        if _renderer is not None:
            _renderer.close()
        _renderer = None
        _ambient.clear()
        _training.clear()


def emit(kind: str, **data: Any) -> None:
    """Any event; never raises (progress must not break a run)."""
    if not _is_main_process():
        return
    with _lock, contextlib.suppress(Exception):  # a closed stream, a terminal gone: the run goes on
        renderer().event(kind, data)


def _emit_progress(task: Task) -> None:
    if not _is_main_process():
        return
    with _lock, contextlib.suppress(Exception):
        renderer().progress(task)


# ------------------------------------------------------------------------------------------------ the emitters' API


def stage_started(stage: str) -> None:
    emit("stage_started", stage=stage)


def stage_finished(stage: str, seconds: float, note: str | None = None) -> None:
    emit("stage_finished", stage=stage, seconds=round(seconds, 3), note=note)


def stage_cached(stage: str, reason: str) -> None:
    emit("stage_cached", stage=stage, reason=reason)


def stage_skipped(stage: str, reason: str) -> None:
    emit("stage_skipped", stage=stage, reason=reason)


def stage_failed(stage: str, seconds: float, error: str) -> None:
    emit("stage_failed", stage=stage, seconds=round(seconds, 3), error=error)


def message(text: str, level: str = "info", stage: str | None = None) -> None:
    emit("message", level=level, text=text, stage=stage)


@contextlib.contextmanager
def track(
    name: str, total: int | None = None, unit: str = "rows", stage: str | None = None, ambient: bool = False
) -> Iterator[Task]:
    """A task for the duration of a block; finished on exit (also on error, without an end line then).

    ambient=True: `batch_done` (called by the evaluation batches) advances it."""
    task = Task(name, total, unit, stage)
    if ambient:
        with _lock:
            _ambient.append(task)
    _emit_progress(task)
    try:
        yield task
    except BaseException:
        task.quiet_end = True
        task.finish()
        raise
    finally:
        with _lock:
            if task in _ambient:
                _ambient.remove(task)
    task.finish()


def progress(task: str, completed: int, total: int | None, unit: str = "rows", **fields: Any) -> None:
    """Functional form: the named task's count now (created on first call, finished when completed == total)."""
    with _lock:
        tasks = _training.setdefault("named", {})
        current = tasks.get(task)
        if current is None or current.done:
            current = tasks[task] = Task(task, total, unit, fields.pop("stage", None))
    current.update(completed=completed, total=total, **fields)
    if total is not None and completed >= total:
        current.finish()


def batch_done(n: int) -> None:
    """A batch of n features went through the model (evaluation): advances the innermost ambient task."""
    with _lock:
        task = _ambient[-1] if _ambient else None
    if task is not None:
        task.advance(n)


def training_step(epoch: int, epochs: int, step: int, steps: int, samples: int, loss: float) -> None:
    """Called by the training loop after each optimiser step: `step` of `steps` in this epoch, `samples` seen in
    it so far, the running mean loss. The epoch's task ends with `epoch_end` (its line carries the speed)."""
    with _lock:
        current: Task | None = _training.get("task")
        fresh = current is None or _training.get("epoch") != epoch or current.done
        if fresh:
            if current is not None and not current.done:
                current.quiet_end = True
                current.finish()
            # counted from the end of the first step seen (a resumed epoch starts part-way)
            current = Task(f"epoch {epoch}/{epochs}", steps, "steps", "train", completed=step, quiet_end=True)
            _training.update(task=current, epoch=epoch, epochs=epochs, first_samples=samples, samples_per_s=None)
        assert current is not None
        counted, elapsed = samples - _training["first_samples"], current.elapsed
        speed = counted / elapsed if elapsed > 0 and counted > 0 else _training.get("samples_per_s")
        _training["samples_per_s"] = speed
    current.update(completed=step, loss=round(float(loss), 4), samples_per_s=None if speed is None else round(speed, 1))
    if step >= steps and "validation" in _training:
        _start_validation(epoch, epochs)


def training_validation(total: int | None, unit: str = "rows") -> None:
    """How many validation features each epoch's validation runs through (the train stage says, before training):
    after an epoch's last step, its validation shows as a task of its own until `epoch_end`."""
    with _lock:
        _training["validation"] = (total, unit)


def _start_validation(epoch: int, epochs: int) -> None:
    total, unit = _training.get("validation") or (None, "rows")
    task = Task(f"epoch {epoch}/{epochs} validation", total, unit, "train", quiet_end=True)
    with _lock:
        _training["validating"] = task
        _ambient.append(task)  # advanced by the evaluation batches (batch_done)
    _emit_progress(task)


def epoch_end(epoch: int, record: dict[str, Any], best: bool | None = None) -> None:
    """An epoch finished and was validated: train loss, validation loss and metrics (record from the loop)."""
    with _lock:
        current: Task | None = _training.get("task")
        epochs = _training.get("epochs")
        speed = _training.get("samples_per_s")
        _training.pop("task", None)
        validating: Task | None = _training.pop("validating", None)
    for task in (current, validating):
        if task is not None and not task.done:
            task.quiet_end = True
            task.finish()
    metrics = {
        k: float(v)
        for k, v in record.items()
        if isinstance(v, int | float) and (k == "train_loss" or k.startswith("val_"))
    }
    emit(
        "epoch_end",
        stage="train",
        epoch=epoch,
        epochs=epochs,
        steps=None if current is None else current.completed,
        seconds=record.get("epoch_seconds"),
        samples_per_s=None if speed is None else round(speed, 1),
        metrics=metrics,
        best=best,
    )
