"""Task types as plug-ins: the interface (base.py), the table of task types (catalog.py), one module each."""

from __future__ import annotations

from pipelines.tasks.catalog import TASKS, get_task, task_spec

__all__ = ["TASKS", "get_task", "task_spec"]
