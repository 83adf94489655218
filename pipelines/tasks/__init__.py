"""Task plug-ins by name. A new task type (token classification, QA, seq2seq) registers here."""

from __future__ import annotations

from pipelines.errors import ConfigError
from pipelines.tasks.base import TaskPlugin
from pipelines.tasks.text_classification import TextClassification

TASKS: dict[str, type[TaskPlugin]] = {TextClassification.name: TextClassification}


def get_task(name: str) -> TaskPlugin:
    try:
        return TASKS[name]()
    except KeyError:
        raise ConfigError(f"task.type={name!r} is not supported (allowed: {', '.join(sorted(TASKS))})") from None
