"""Which stage outputs on disk are current: the stamps the flow writes after each stage (its fingerprint and its
summary), the check that a whole run would be served from cache, and whether dvc.lock already records the outputs.

No Prefect import here: `nlpops run` asks `up_to_date` before it starts Prefect, so an unchanged rerun costs the
fingerprints and one MLflow lookup, not a server start and a flow run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.config import DEFAULT_PARAMS_FILE, Params
from pipelines.dag import STAGE_ORDER, stage_fingerprint, stage_outputs_exist
from pipelines.paths import StagePaths


def stamp_path(params: Params, stage: str) -> Path:
    """Per experiment (artifacts dir): running another experiment never evicts this one's cache."""
    return StagePaths.from_params(params).stamps_dir / f"{stage}.json"


def read_stamp(params: Params, stage: str) -> dict[str, Any] | None:
    """The stage's stamp ({"fingerprint", "summary"}), or None when it has none."""
    stamp = stamp_path(params, stage)
    return json.loads(stamp.read_text()) if stamp.is_file() else None


def _stamp_matches(params: Params, stage: str, fingerprint: str, stamp: dict[str, Any] | None) -> bool:
    return stamp is not None and stamp.get("fingerprint") == fingerprint and stage_outputs_exist(params, stage)


def outputs_current(params: Params, stage: str, fingerprint: str) -> bool:
    """True when the outputs on disk were produced by a run with this exact fingerprint."""
    return _stamp_matches(params, stage, fingerprint, read_stamp(params, stage))


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths and the like as plain JSON values (a stage summary kept in its stamp)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def stamp_summary(params: Params, stage: str) -> dict[str, Any] | None:
    """The summary the stage returned when it produced the outputs on disk (kept in its stamp), or None."""
    return _summary_of(read_stamp(params, stage))


def _summary_of(stamp: dict[str, Any] | None) -> dict[str, Any] | None:
    summary = (stamp or {}).get("summary")
    return summary if isinstance(summary, dict) else None


def write_stamp(params: Params, stage: str, fingerprint: str, summary: dict[str, Any]) -> None:
    """After the stage ran: the fingerprint its outputs were produced under, and the summary it returned."""
    stamp = stamp_path(params, stage)
    stamp.parent.mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"fingerprint": fingerprint, "summary": summary}, default=_jsonable))


def fingerprint_extra(stage: str, results: dict[str, Any], champion: str | None) -> dict[str, Any] | None:
    """What a stage's cache key holds besides params, inputs and code: evaluate gates against the champion, and
    evaluate and export log onto the training run (a re-logged run means run them again)."""
    extra: dict[str, Any] = {}
    if stage == "evaluate":
        extra["champion"] = champion
    if stage in ("evaluate", "export"):
        extra["train_run"] = results["train"]["run_id"]
    return extra or None


def syncs_dvc_lock(
    params_file: str, overrides: list[str] | None, experiment: str | None, sync_dvc: bool = True
) -> bool:
    """A run of params.yaml as it is (no --set, no -e) leaves exactly what `dvc repro` would: record it in dvc.lock."""
    plain = not overrides and not experiment
    return sync_dvc and plain and Path(params_file).resolve() == Path(DEFAULT_PARAMS_FILE).resolve()


def _stage_fingerprints(params: Params) -> dict[str, str]:
    stamps = {stage: read_stamp(params, stage) for stage in STAGE_ORDER}
    return {stage: stamp.get("fingerprint", "") for stage, stamp in stamps.items() if stamp is not None}


def dvc_lock_current(params: Params) -> bool:
    """dvc.lock was written by `dvc commit` after the stages produced the outputs now on disk, and not since changed."""
    from pipelines.hashing import file_digest

    record = StagePaths.from_params(params).stamps_dir / "dvc-lock.json"
    lock = Path("dvc.lock")
    if not record.is_file() or not lock.is_file():
        return False
    seen = json.loads(record.read_text())
    return seen.get("stages") == _stage_fingerprints(params) and seen.get("dvc_lock") == file_digest(lock)


def record_dvc_lock(params: Params) -> None:
    from pipelines.hashing import file_digest

    record = StagePaths.from_params(params).stamps_dir / "dvc-lock.json"
    if Path("dvc.lock").is_file():
        record.write_text(
            json.dumps({"stages": _stage_fingerprints(params), "dvc_lock": file_digest(Path("dvc.lock"))})
        )


def keep_dvc_lock_in_step(params: Params) -> str:
    """`dvc commit` the stage outputs into dvc.lock, unless it already records exactly these outputs."""
    if dvc_lock_current(params):
        return "dvc.lock already up to date"
    from pipelines.dvc_sync import commit_dvc_lock

    message = commit_dvc_lock()
    if message == "dvc.lock updated":
        record_dvc_lock(params)
    return message


def up_to_date(
    params: Params, stale: list[str] | None = None, local_only: bool = False, known: dict[str, Any] | None = None
) -> dict[str, Any] | None:
    """Every stage's outputs on disk were produced under the fingerprint this run would compute: the flow's result
    (every stage Cached, the summaries from the stamps) without starting Prefect, or None when anything would run.

    The same facts as the flow's cache keys: params, inputs and code per stage, the training run present on the
    current MLflow store, and the champion the gate compares with. `stale` gets the first stage that would run.
    `local_only`: only the stages before evaluate, which need no MLflow store (their results when current);
    `known`: such a result, from which the check goes on (those stages are not fingerprinted again).
    """
    from pipelines.registry import alias_version
    from pipelines.stores import run_exists

    results: dict[str, Any] = dict(known["results"]) if known else {}
    fingerprints: dict[str, str] = dict(known["fingerprints"]) if known else {}
    for stage in STAGE_ORDER:
        if stage in results:
            continue
        stamp = read_stamp(params, stage)
        summary = _summary_of(stamp)
        if summary is None:
            return _stale(stale, stage)
        champion = None
        if stage == "evaluate" and local_only:
            return {"states": dict.fromkeys(results, "Cached"), "results": results, "fingerprints": fingerprints}
        if stage == "evaluate":
            if not run_exists(results["train"].get("run_id")):  # the flow's check: else it re-logs the training
                return _stale(stale, "train")
            version = alias_version(params.project.registered_model, params.register_.champion_alias)
            if version is not None and version.run_id != results["train"]["run_id"]:
                champion = str(version.version)
        fingerprint = stage_fingerprint(params, stage, fingerprint_extra(stage, results, champion))
        if not _stamp_matches(params, stage, fingerprint, stamp):
            return _stale(stale, stage)
        results[stage], fingerprints[stage] = summary, fingerprint
    return {"states": dict.fromkeys(STAGE_ORDER, "Cached"), "results": results, "fingerprints": fingerprints}


def _stale(stale: list[str] | None, stage: str) -> dict[str, Any] | None:
    """up_to_date's "something would run" (None), noting in `stale` the first stage that would."""
    if stale is not None:
        stale.append(stage)
    return None


def cache_reason(stage: str, fingerprint: str) -> str:
    """Why a stage is served from cache, as the progress line says it."""
    from pipelines.dag import STAGES

    params = ", ".join(STAGES[stage].params)
    return f"params ({params}), inputs and code unchanged since its last run (fingerprint {fingerprint[:12]})"
