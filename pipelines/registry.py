"""MLflow model registry: register the ONNX challenger, promote, roll back, keep an alias history.

Every alias move is recorded in the registry itself, as a registered-model tag
`nlpops.alias_event.<epoch-ms>.<random>` holding JSON {seq, alias, action, from, to, by, at, reason, forced}.
`seq` orders the events (assigned under the promotion lock, so it is gap-free and clock-independent).

Every move happens under the promotion lock (pipelines.registry_lock): reading the champion, deciding and moving
the alias are one step, so concurrent registrations cannot both end as champion. A move whose history record cannot
be written is undone, so an alias never moves without a record; a failure before the move leaves aliases as they
were.
"""

from __future__ import annotations

import contextlib
import getpass
import io
import json
import os
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from pipelines.errors import RegistryError
from pipelines.registry_lock import LockSettings

EVENT_PREFIX = "nlpops.alias_event."
GATE_FINAL_TAG = "gate.final_at"
REASON_CHARS = 1000


def _client() -> Any:
    from mlflow import MlflowClient

    return MlflowClient()


def actor() -> str:
    """Who moved an alias: NLPOPS_ACTOR, else the OS user."""
    try:
        return os.environ.get("NLPOPS_ACTOR") or getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


def get_version(name: str, version: str) -> Any:
    """The ModelVersion, or RegistryError naming what exists."""
    from mlflow.exceptions import MlflowException

    try:
        return _client().get_model_version(name, str(version))
    except MlflowException as exc:
        if _is_missing(exc) or "INVALID_PARAMETER" in str(getattr(exc, "error_code", "")):
            raise RegistryError(f"registry: {name!r} has no version {version!r} (see `nlpops models list`)") from None
        raise RegistryError(f"registry: cannot read {name!r} v{version}: {exc}") from None


def version_for_run(name: str, run_id: str) -> Any | None:
    """The version already registered from this run (re-running register must not add a duplicate)."""
    versions = _client().search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    return min(versions, key=lambda v: int(v.version)) if versions else None


# ------------------------------------------------------------------------------------------------ history


def _event_records(name: str) -> list[tuple[str, dict[str, Any]]]:
    try:
        model = _client().get_registered_model(name)
    except Exception as exc:
        if _is_missing(exc):
            return []
        raise RegistryError(f"registry: cannot read {name!r}: {exc}") from None
    records = []
    for key, value in (model.tags or {}).items():
        if key.startswith(EVENT_PREFIX):
            try:
                records.append((key, json.loads(value)))
            except json.JSONDecodeError:
                records.append((key, {"alias": "?", "from": None, "to": None, "reason": f"unreadable: {value[:80]}"}))
    # Events written before `seq` existed sort first, by their millisecond key.
    return sorted(records, key=lambda kv: (int(kv[1].get("seq", 0)), kv[0]))


def alias_history(name: str, alias: str | None = None, version: str | None = None) -> list[dict[str, Any]]:
    """Alias moves, oldest first; optionally only one alias's, or only those to/from one version."""
    events = [e for _, e in _event_records(name)]
    if alias is not None:
        events = [e for e in events if e.get("alias") == alias]
    if version is not None:
        events = [e for e in events if str(version) in (str(e.get("from")), str(e.get("to")))]
    return events


def record_alias_event(
    name: str,
    alias: str,
    old: str | None,
    new: str | None,
    reason: str,
    action: str = "move",
    forced: bool = False,
) -> dict[str, Any]:
    """Write one history record (call under the promotion lock: `seq` is last seq + 1)."""
    records = _event_records(name)
    seq = max((int(e.get("seq", 0)) for _, e in records), default=0) + 1
    event = {
        "seq": seq,
        "alias": alias,
        "action": action,
        "from": old,
        "to": new,
        "by": actor(),
        "at": _now(),
        "reason": reason[:REASON_CHARS],
        "forced": forced,
    }
    # Milliseconds keep keys in time order; the random suffix keeps them unique even across hosts.
    key = f"{EVENT_PREFIX}{time.time_ns() // 1_000_000:013d}.{uuid.uuid4().hex[:8]}"
    _client().set_registered_model_tag(name, key, json.dumps(event))
    return event


def _set_alias(name: str, alias: str, version: str | None) -> None:
    client = _client()
    if version is None:
        client.delete_registered_model_alias(name, alias)
    else:
        client.set_registered_model_alias(name, alias, str(version))


def move_alias(
    name: str, alias: str, version: str, reason: str, action: str = "move", forced: bool = False
) -> dict[str, Any]:
    """Point alias at version and record who/when/from/to/why (call under the promotion lock).

    A no-op move is not recorded twice. If the history record cannot be written, the alias is put back where it
    was, so a move is never left unrecorded.
    """
    current = alias_version(name, alias)
    old = str(current.version) if current is not None else None
    if old == str(version):
        return {"alias": alias, "from": old, "to": old, "unchanged": True}
    try:
        _set_alias(name, alias, str(version))
    except Exception as exc:
        raise RegistryError(f"registry: cannot move {alias!r} of {name!r} to v{version} ({exc}); unchanged") from None
    try:
        return record_alias_event(name, alias, old, str(version), reason, action, forced)
    except Exception as exc:
        try:
            _set_alias(name, alias, old)
            state = f"put back on v{old}" if old else "removed again"
        except Exception:
            state = f"may now point at v{version} without a history record; check `nlpops models history`"
        raise RegistryError(
            f"registry: moved {alias!r} of {name!r} to v{version} but could not record it ({exc}); alias {state}"
        ) from None


def champion_stack(events: list[dict[str, Any]], alias: str, current: str | None) -> list[str]:
    """Versions that held `alias`, oldest first, replaying promotions (push) and rollbacks (pop).

    The last entry is the current holder, the one before it is where `rollback` goes.
    """
    stack: list[str] = []
    for e in events:
        if e.get("alias") != alias or e.get("to") is None:
            continue
        if e.get("action") == "rollback":
            while stack and stack[-1] != str(e["to"]):
                stack.pop()
            if not stack:
                stack.append(str(e["to"]))
        else:
            if e.get("from") is not None and (not stack or stack[-1] != str(e["from"])):
                stack.append(str(e["from"]))  # a move made outside nlpops, or history that began mid-way
            stack.append(str(e["to"]))
    if current is not None and (not stack or stack[-1] != current):
        stack.append(current)  # the alias was moved outside nlpops
    return stack


# ------------------------------------------------------------------------------------------------ register


def register_challenger(
    name: str,
    run_id: str,
    log_model: Callable[[], str],
    tags: dict[str, str],
    decide: Callable[[Any | None], Any],
    challenger_alias: str,
    champion_alias: str,
    lock: LockSettings,
    allow_promotion: bool = True,
    hold_reason: str = "",
) -> dict[str, Any]:
    """Register the run's model once, decide the final gate against the champion of *this moment*, move aliases.

    With allow_promotion False (register.promote, pipelines/dvc_experiment.py) a version that passes the gate is
    registered and made challenger, but champion stays; `hold_reason` is kept on the version as `promotion.held`.

    `log_model()` logs the model on the run and returns its URI (skipped when the run already has a version).
    `decide(champion_version_or_None)` returns a GateDecision. Deciding and moving `champion` happen under the
    promotion lock. Re-running for a run whose version already has a final decision changes nothing.
    """
    existing = version_for_run(name, run_id)
    uri = log_model() if existing is None else None
    with lock.hold(name) as backend:
        version = version_for_run(name, run_id)  # another process may have registered this run meanwhile
        reused = version is not None
        if version is None:
            import mlflow

            # register_model prints progress to stderr itself; the run summary says what happened instead.
            with contextlib.redirect_stderr(io.StringIO()):
                version = mlflow.register_model(uri, name, tags={**tags, "registered.by": actor()})
        number = str(version.version)
        current = get_version(name, number)
        previous = alias_version(name, champion_alias)
        if reused and (current.tags or {}).get(GATE_FINAL_TAG):
            return _result(name, number, version, run_id, True, False, previous, previous, [], current.tags, backend)
        client = _client()
        for key, value in tags.items():
            client.set_model_version_tag(name, number, key, value)
        decision = decide(previous)
        client.set_model_version_tag(name, number, "gate.passed", str(decision.passed).lower())
        client.set_model_version_tag(name, number, "gate.decision", decision.summary())
        events = [move_alias(name, challenger_alias, number, f"new challenger from run {run_id}", "register")]
        promote = bool(decision.passed) and (previous is None or str(previous.version) != number)
        held = promote and not allow_promotion
        if held:
            promote = False
            client.set_model_version_tag(name, number, "promotion.held", hold_reason or "promotion not allowed")
        if promote:
            reason = "gate passed: " + "; ".join(decision.reasons)
            events.append(move_alias(name, champion_alias, number, reason, "promote"))
        client.set_model_version_tag(name, number, GATE_FINAL_TAG, _now())
        champion = alias_version(name, champion_alias)
    out = _result(
        name, number, version, run_id, reused, promote, previous, champion, events, {"gate": decision}, backend
    )
    if held:
        out["promotion_held"] = hold_reason or "promotion not allowed"
    return out


def _result(
    name: str,
    number: str,
    version: Any,
    run_id: str,
    reused: bool,
    promoted: bool,
    previous: Any | None,
    champion: Any | None,
    events: list[dict[str, Any]],
    extra: dict[str, Any],
    backend: str,
) -> dict[str, Any]:
    out = {
        "name": name,
        "version": number,
        "source": version.source,
        "run_id": run_id,
        "reused_existing_version": reused,
        "promoted": promoted,
        "previous_champion": str(previous.version) if previous is not None else None,
        "champion": str(champion.version) if champion is not None else None,
        "alias_events": events,
        "lock": backend,
    }
    if "gate" in extra:
        out["gate"] = extra["gate"].to_dict()
    elif "gate.decision" in extra:
        with contextlib.suppress(json.JSONDecodeError):
            out["gate"] = json.loads(extra["gate.decision"])
    return out


# ------------------------------------------------------------------------------------------------ promote/rollback


def promote(
    name: str, version: str, reason: str, champion_alias: str, lock: LockSettings, force: bool = False
) -> dict[str, Any]:
    """Move champion to `version`; refused when its gate failed (or never ran) unless force, which needs a reason."""
    reason = (reason or "").strip()
    if not reason:
        raise RegistryError("promote: --reason is required (it is recorded in the alias history)")
    target = get_version(name, version)
    gate = (target.tags or {}).get("gate.passed")
    if gate != "true" and not force:
        why = "failed the gate" if gate == "false" else "has no gate decision"
        raise RegistryError(
            f"promote: {name} v{version} {why} ({_failed_checks(target.tags or {})}); "
            "use --force with a --reason to promote it anyway"
        )
    with lock.hold(name):
        forced = gate != "true"
        action = "force-promote" if forced else "promote"
        event = move_alias(name, champion_alias, str(target.version), reason, action, forced=forced)
    return event


def _failed_checks(tags: dict[str, str]) -> str:
    try:
        failed = json.loads(tags.get("gate.decision", "{}")).get("failed") or []
    except json.JSONDecodeError:
        failed = []
    return "; ".join(failed[:3]) or "no details recorded"


def rollback(name: str, reason: str, champion_alias: str, lock: LockSettings) -> dict[str, Any]:
    """Move champion back to the version that held it before the current one."""
    reason = (reason or "").strip()
    if not reason:
        raise RegistryError("rollback: --reason is required (it is recorded in the alias history)")
    with lock.hold(name):
        current = alias_version(name, champion_alias)
        if current is None:
            raise RegistryError(f"rollback: {name!r} has no {champion_alias!r} to roll back")
        stack = champion_stack(alias_history(name, champion_alias), champion_alias, str(current.version))
        if len(stack) < 2:
            raise RegistryError(
                f"rollback: v{current.version} is the first {champion_alias} of {name!r}; nothing to go back to"
            )
        target = get_version(name, stack[-2])
        return move_alias(name, champion_alias, str(target.version), reason, "rollback")


# ------------------------------------------------------------------------------------------------ listing


def list_versions(name: str, champion_alias: str = "champion") -> list[dict[str, Any]]:
    """Versions newest first: aliases, key metrics, gate result, registered and promoted when/by whom."""
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
    promoted: dict[str, dict[str, Any]] = {}
    for e in alias_history(name, champion_alias):
        if e.get("to") is not None:
            promoted[str(e["to"])] = e
    rows = []
    for v in client.search_model_versions(f"name = '{name}'"):
        tags = v.tags or {}
        event = promoted.get(str(v.version))
        rows.append(
            {
                "version": str(v.version),
                "aliases": sorted(aliases.get(str(v.version), [])),
                "task": tags.get("task.type", "text_classification"),
                "metrics": {
                    k.removeprefix("metric."): _short(v)
                    for k, v in sorted(tags.items())
                    if k.startswith("metric.") and k != "metric.slices"
                },
                "accuracy": _short(tags.get("metric.accuracy")),
                "macro_f1": _short(tags.get("metric.macro_f1")),
                "gate": {"true": "pass", "false": "fail"}.get(tags.get("gate.passed", ""), "-"),
                "created": datetime.fromtimestamp(v.creation_timestamp / 1000, UTC).isoformat(timespec="seconds"),
                "created_by": tags.get("registered.by") or v.user_id or "-",
                "promoted": event["at"] if event else None,
                "promoted_by": event["by"] if event else None,
                "run_id": v.run_id,
            }
        )
    return sorted(rows, key=lambda r: int(r["version"]), reverse=True)


def list_models(champion_alias: str = "champion") -> list[dict[str, Any]]:
    """Every registered model in the store: versions, champion, its task type and metrics, last promotion."""
    client = _client()
    rows = []
    for model in client.search_registered_models(max_results=1000):
        versions = list_versions(model.name, champion_alias)
        champion = next((v for v in versions if champion_alias in v["aliases"]), None)
        promotions = [e for e in alias_history(model.name, champion_alias) if e.get("to") is not None]
        rows.append(
            {
                "name": model.name,
                "versions": len(versions),
                "champion": champion["version"] if champion else None,
                "task": (champion or (versions[0] if versions else {})).get("task", "-"),
                "metrics": champion["metrics"] if champion else {},
                "last_promotion": promotions[-1]["at"] if promotions else None,
                "last_promotion_by": promotions[-1]["by"] if promotions else None,
            }
        )
    return sorted(rows, key=lambda r: r["name"])


def _short(value: str | None) -> str:
    try:
        return f"{float(value):.4f}" if value is not None else "-"
    except ValueError:
        return value or "-"
