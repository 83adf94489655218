"""The base of every params section (unknown keys refused, assignments validated) and the canonical hash.

Kept apart from pipelines/config.py so task modules can declare their own `task` section without an import cycle.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class TaskOptions(Section):
    """Base of every task type's `task` section (each narrows `type` to its own Literal name)."""

    type: str


def stable_hash(obj: Any) -> str:
    """sha256 of canonical JSON: the same data always gives the same hash."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
