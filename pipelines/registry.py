"""MLflow model registry: register the ONNX challenger, move aliases, keep an alias history.

Every alias move is recorded in the registry itself, as a registered-model tag
`nlpops.alias_event.<epoch-ms>` holding JSON {alias, from, to, by, at, reason}.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipelines.errors import RegistryError

EVENT_PREFIX = "nlpops.alias_event."


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def actor() -> str:
    """Who moved an alias: NLPOPS_ACTOR, else the OS user."""
    try:
        return os.environ.get("NLPOPS_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _is_missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return "RESOURCE_DOES_NOT_EXIST" in str(code) or "not found" in str(exc).lower()


def alias_version(name: str, alias: str) -> Any | None:
    """The ModelVersion an alias points to, or None when the model or the alias does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version_by_alias(name, alias)
    except MlflowException as exc:
        if _is_missing(exc) or "alias" in str(exc).lower():
            return None
        raise RegistryError(f"registry: cannot read alias {alias!r} of {name!r}: {exc}") from None


def version_for_run(name: str, run_id: str) -> Any | None:
    """The version already registered from this run (re-running register must not add a duplicate)."""
    versions = _client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


def record_alias_event(name: str, alias: str, old: str | None, new: str | None, reason: str) -> dict[str, Any]:
    event = {
        "alias": alias,
        "from": old,
        "to": new,
        "by": actor(),
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "reason": reason,
    }
    # Millisecond key + a short sleep keeps keys unique and ordered for back-to-back moves.
    key = f"{EVENT_PREFIX}{time.time_ns() // 1_000_000:013d}"
    time.sleep(0.002)
    _client().set_registered_model_tag(name, key, json.dumps(event))
    return event


def alias_history(name: str) -> list[dict[str, Any]]:
    model = _client().get_registered_model(name)
    events = [(k, v) for k, v in (model.tags or {}).items() if k.startswith(EVENT_PREFIX)]
    return [json.loads(v) for _, v in sorted(events)]


def move_alias(name: str, alias: str, version: str, reason: str) -> dict[str, Any]:
    """Point alias at version and record who/when/why; a no-op move is not recorded twice."""
    current = alias_version(name, alias)
    old = str(current.version) if current is not None else None
    if old == str(version):
        return {"alias": alias, "from": old, "to": old, "unchanged": True}
    _client().set_registered_model_alias(name, alias, str(version))
    return record_alias_event(name, alias, old, str(version), reason)


def register_challenger(
    name: str,
    run_id: str,
    export_dir: Path,
    tags: dict[str, str],
    promote: bool,
    challenger_alias: str,
    champion_alias: str,
    reason: str,
) -> dict[str, Any]:
    """Log the ONNX pyfunc on the run, register it (once per run), alias it challenger, champion if promote."""
    import mlflow

    from pipelines.serving import log_onnx_pyfunc

    existing = version_for_run(name, run_id)
    if existing is not None:
        version = existing
        reused = True
    else:
        with mlflow.start_run(run_id=run_id):
            info = log_onnx_pyfunc(export_dir, name="model")
        # register_model prints progress to stderr itself; the run summary says what happened instead.
        with contextlib.redirect_stderr(io.StringIO()):
            version = mlflow.register_model(info.model_uri, name, tags=tags)
        reused = False
    client = _client()
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    events = [move_alias(name, challenger_alias, version.version, "new challenger from run " + run_id)]
    previous = alias_version(name, champion_alias)
    if promote:
        events.append(move_alias(name, champion_alias, version.version, reason))
    champion = alias_version(name, champion_alias)
    return {
        "name": name,
        "version": str(version.version),
        "source": version.source,
        "run_id": run_id,
        "reused_existing_version": reused,
        "promoted": bool(promote),
        "previous_champion": str(previous.version) if previous is not None else None,
        "champion": str(champion.version) if champion is not None else None,
        "alias_events": events,
    }


def list_versions(name: str) -> list[dict[str, Any]]:
    """Versions newest first with their aliases, key metrics and gate result."""
    from datetime import datetime as dt

    client = _client()
    try:
        model = client.get_registered_model(name)
    except Exception as exc:
        if _is_missing(exc):
            return []
        raise RegistryError(f"registry: cannot read {name!r}: {exc}") from None
    aliases: dict[str, list[str]] = {}
    for alias, version in (model.aliases or {}).items():
        aliases.setdefault(str(version), []).append(alias)
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        tags = v.tags or {}
        rows.append(
            {
                "version": str(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "accuracy": _short(tags.get("metric.accuracy")),
                "macro_f1": _short(tags.get("metric.macro_f1")),
                "gate": {"true": "pass", "false": "fail"}.get(tags.get("gate.passed", ""), "-"),
                "created": dt.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "run_id": v.run_id,
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def _short(value: str | None) -> str:
    try:
        return f"{float(value):.4f}" if value is not None else "-"
    except ValueError:
        return value or "-"
