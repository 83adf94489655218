"""The one table of task types: adding a task type means one module under pipelines/tasks/, one expectation
suite in expectations/, and one line in TASKS below.

Each task module defines, cheaply importable (no torch, no transformers at import time):
- `Options`: its typed `task` section of params.yaml (`type: Literal["<name>"]` plus its own settings);
- `SPEC`: a TaskSpec (metrics, formats, code modules);
- `Task`: the Task implementation (pipelines/tasks/base.py), built lazily by `get_task`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Annotated, Any, Union

from pydantic import Field

if TYPE_CHECKING:
    from pipelines.config import Params
    from pipelines.tasks.base import Task

# task.type -> module. The first entry is the default task.
TASKS: dict[str, str] = {
    "text_classification": "pipelines.tasks.text_classification",
    "token_classification": "pipelines.tasks.token_classification",
    "question_answering": "pipelines.tasks.question_answering",
    "seq2seq": "pipelines.tasks.seq2seq",
}


@dataclass(frozen=True)
class TaskSpec:
    """Facts about a task type that config validation, the DAG and the CLI need without loading models."""

    name: str
    metrics: tuple[str, ...]  # scalar test/validation metrics; the first is the primary (gate + early stopping)
    formats: tuple[str, ...]  # data.format values its readers accept
    modules: tuple[str, ...]  # its source modules: code deps of the stages that call it
    runtime: str  # "module:Class" of its torch-free serving runtime
    parity_split: str = "test"  # the clean split whose rows the export stage checks ONNX parity on


def _module(name: str) -> Any:
    return importlib.import_module(TASKS[name])


def task_names() -> list[str]:
    return list(TASKS)


@cache
def task_spec(name: str) -> TaskSpec:
    from pipelines.errors import ConfigError

    if name not in TASKS:
        raise ConfigError(f"task.type={name!r} is not supported (allowed: {', '.join(TASKS)})")
    return _module(name).SPEC


def task_metric_names(name: str) -> tuple[str, ...]:
    return task_spec(name).metrics


def all_formats() -> tuple[str, ...]:
    seen: dict[str, None] = {}
    for name in TASKS:
        seen.update(dict.fromkeys(task_spec(name).formats))
    return tuple(seen)


def all_task_modules() -> tuple[str, ...]:
    return tuple(m for name in TASKS for m in task_spec(name).modules)


def _options() -> tuple[Any, ...]:
    return tuple(_module(name).Options for name in TASKS)


if TYPE_CHECKING:
    from pipelines.schema import TaskOptions as TaskConfig
else:  # params' `task` section: the union of every task module's Options, told apart by `type`
    TaskConfig = Annotated[Union[_options()], Field(discriminator="type")]  # noqa: UP007


def default_task_config() -> Any:
    return _module(next(iter(TASKS))).Options()


def get_task(params: Params | str, **task_options: Any) -> Task:
    """The Task implementation for params.task.type, bound to these params. A task name instead of params gives
    the task with default params (tests, benchmarks); data-free methods only."""
    if isinstance(params, str):
        from pipelines.config import Params

        params = Params.model_validate({"data": {"path": "-"}, "task": {"type": params, **task_options}})
    return _module(params.task.type).Task(params)
