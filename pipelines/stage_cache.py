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


def outputs_current(params: Params, stage: str, fingerprint: str) -> bool:
    """True when the outputs on disk were produced by a run with this exact fingerprint."""
    stamp = stamp_path(params, stage)
    if not stage_outputs_exist(params, stage) or not stamp.is_file():
        return False
    return json.loads(stamp.read_text()).get("fingerprint") == fingerprint


def _jsonable(value: Any) -> Any:
    """numpy scalars and arrays, paths and the like as plain JSON values (a stage summary kept in its stamp)."""
    if hasattr(value, "tolist"):
        return value.tolist()
    if hasattr(value, "item"):
        return value.item()
    return str(value)


def stamp_summary(params: Params, stage: str) -> dict[str, Any] | None:
    """The summary the stage returned when it produced the outputs on disk (kept in its stamp), or None."""
    stamp = stamp_path(params, stage)
    if not stamp.is_file():
        return None
    summary = json.loads(stamp.read_text()).get("summary")
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
    stamps = StagePaths.from_params(params).stamps_dir
    return {
        stage: json.loads((stamps / f"{stage}.json").read_text()).get("fingerprint", "")
        for stage in STAGE_ORDER
        if (stamps / f"{stage}.json").is_file()
    }


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


def up_to_date(params: Params) -> dict[str, Any] | None:
    """Every stage's outputs on disk were produced under the fingerprint this run would compute: the flow's result
    (every stage Cached, the summaries from the stamps) without starting Prefect, or None when anything would run.

    The same facts as the flow's cache keys: params, inputs and code per stage, the training run present on the
    current MLflow store, and the champion the gate compares with.
    """
    from pipelines.registry import alias_version

    results: dict[str, Any] = {}
    fingerprints: dict[str, str] = {}
    for stage in STAGE_ORDER:
        summary = stamp_summary(params, stage)
        if summary is None:
            return None
        champion = None
        if stage == "evaluate":
            if not _run_on_store(results["train"].get("run_id")):
                return None
            version = alias_version(params.project.registered_model, params.register_.champion_alias)
            if version is not None and version.run_id != results["train"]["run_id"]:
                champion = str(version.version)
        fingerprint = stage_fingerprint(params, stage, fingerprint_extra(stage, results, champion))
        if not outputs_current(params, stage, fingerprint):
            return None
        results[stage], fingerprints[stage] = summary, fingerprint
    return {"states": dict.fromkeys(STAGE_ORDER, "Cached"), "results": results, "fingerprints": fingerprints}


def cache_reason(stage: str, fingerprint: str) -> str:
    """Why a stage is served from cache, as the progress line says it."""
    from pipelines.dag import STAGES

    params = ", ".join(STAGES[stage].params)
    return f"params ({params}), inputs and code unchanged since its last run (fingerprint {fingerprint[:12]})"


def _run_on_store(run_id: str | None) -> bool:
    import mlflow

    if not run_id:
        return False
    try:
        mlflow.MlflowClient().get_run(run_id)
    except mlflow.exceptions.MlflowException:
        return False
    return True
