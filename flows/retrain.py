"""The Prefect flow: orders the stage tasks of the stage table (pipelines/dag.py); each task only runs its stage.

Caching: a task's cache key is its stage fingerprint (params sections + input contents + code, the same facts
dvc.yaml lists). A cached result is only used when the outputs on disk were produced under that same key (a
stamp file); otherwise the task runs with refresh_cache, so a cached summary never stands in for outputs that
a run with other inputs has since overwritten.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.states import Completed

from pipelines import progress
from pipelines.config import DEFAULT_PARAMS_FILE, Params, load_params
from pipelines.dag import STAGE_ORDER, stage_fingerprint
from pipelines.dag import run_stage as run_stage_of_table
from pipelines.errors import NlpopsError, ServiceError
from pipelines.redact import install_log_redaction
from pipelines.stage_cache import (
    cache_reason,
    fingerprint_extra,
    keep_dvc_lock_in_step,
    outputs_current,
    syncs_dvc_lock,
    write_stamp,
)

# Stages that talk to the MLflow server may meet a transient outage; data and training errors are not retried.
RETRIES = {"register": 3, "evaluate": 2, "report": 2}


def _cache_key(stage: str):
    def key(context: Any, parameters: dict[str, Any]) -> str:
        return f"nlpops-{stage}-{parameters['fingerprint']}"

    return key


def _retry_transient(task_: Any, task_run: Any, state: Any) -> bool:
    try:
        exc = state.data if isinstance(state.data, BaseException) else state.result(raise_on_failure=False)
    except Exception:
        return True
    return not isinstance(exc, NlpopsError) or isinstance(exc, ServiceError)  # a server outage may pass


def _make_stage_task(stage: str):
    def run_stage(params_data: dict[str, Any], fingerprint: str) -> dict[str, Any]:
        params = Params.model_validate(params_data)
        summary = run_stage_of_table(params, stage)
        write_stamp(params, stage, fingerprint, summary)
        return summary

    run_stage.__name__ = f"{stage}_stage"
    return task(  # type: ignore[call-overload]
        run_stage,
        name=stage,
        cache_key_fn=_cache_key(stage),
        persist_result=True,
        retries=RETRIES.get(stage, 0),
        retry_delay_seconds=[2, 10, 30][: RETRIES.get(stage, 0)] or 0,
        retry_condition_fn=_retry_transient,
    )


STAGE_TASKS = {stage: _make_stage_task(stage) for stage in STAGE_ORDER}


@task(name="champion-version", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=2)
def champion_version(params_data: dict[str, Any], train_run_id: str) -> str | None:
    """The gate compares with the current champion, so the evaluate cache is keyed on its version too.

    A champion made by this very training run is no rival: the key is then the same as with no champion, so an
    unchanged rerun after a promotion reuses the evaluation instead of gating the model against itself.
    """
    from pipelines.registry import alias_version
    from pipelines.tracking import configure_tracking

    params = Params.model_validate(params_data)
    configure_tracking(params)
    version = alias_version(params.project.registered_model, params.register_.champion_alias)
    if version is None or version.run_id == train_run_id:
        return None
    return str(version.version)


@task(name="training-run-on-store", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=[5, 15])
def training_run_on_store(params_data: dict[str, Any]) -> dict[str, Any]:
    """The train summary with its MLflow run on the current store: a cached training logged to another store (the
    embedded one before `services up`) is re-logged there, or its migrated copy adopted (pipelines.stores)."""
    from pipelines.stores import training_summary_on_store

    return training_summary_on_store(Params.model_validate(params_data))


@task(name="check-changes", cache_policy=NO_CACHE, retries=3, retry_delay_seconds=[5, 15, 45])
def check_changes(params_data: dict[str, Any]) -> dict[str, Any]:
    """Data, params and code compared with the champion's lineage tags (retried: the registry may be restarting)."""
    from pipelines.changes import detect_changes

    return detect_changes(Params.model_validate(params_data)).to_dict()


@task(name="dvc-lock", cache_policy=NO_CACHE)
def sync_dvc_lock(params_data: dict[str, Any]) -> str:
    return keep_dvc_lock_in_step(Params.model_validate(params_data))


@flow(name="nlpops-retrain", log_prints=False, validate_parameters=False)
def retrain(
    params_file: str = DEFAULT_PARAMS_FILE,
    overrides: list[str] | None = None,
    sync_dvc: bool = True,
    skip_if_unchanged: bool = False,
    experiment: str | None = None,
) -> Any:
    """validate → clean → tokenise → train → evaluate (gate) → export (parity) → register → report.

    skip_if_unchanged (scheduled runs): first compare data, params and code with the champion's lineage; when
    nothing changed, end at once in a Completed state named "Skipped" whose message gives the reason.
    The whole flow holds the project run lock (pipelines/run_lock.py): another run of the project is waited for, or
    with run.on_conflict=fail this one stops (a scheduled run ends as "Skipped: a run is in progress ...").
    """
    from pipelines.run_lock import hold_run_lock

    install_log_redaction()  # a worker runs this flow without the CLI's set-up
    params = load_params(params_file, overrides or [], experiment)
    lock = hold_run_lock(params, "Prefect flow nlpops-retrain", skip_if_busy=skip_if_unchanged, echo=_lock_echo)
    with lock as busy:
        if busy:
            return Completed(name="Skipped", message=busy, data={"skipped": True, "reason": busy})
        return _run_stages(params, params_file, overrides, sync_dvc, skip_if_unchanged, experiment)


def _after_failure(params: Params, stage: str, later: tuple[str, ...], exc: BaseException, began: float) -> None:
    """A stage failed: say which stages did not run, and write the report of what there is (never raises)."""
    for name in later:
        progress.stage_skipped(name, f"{stage} failed")
    from pipelines.stages.report import write_partial_report

    write_partial_report(params, stage, exc, since=began)


def _lock_echo(line: str) -> None:
    """The run lock's waiting lines: on stderr, and in the flow run's log (the Prefect UI shows them)."""
    print(line, file=sys.stderr, flush=True)
    get_run_logger().warning(line)


def _run_stages(
    params: Params,
    params_file: str,
    overrides: list[str] | None,
    sync_dvc: bool,
    skip_if_unchanged: bool,
    experiment: str | None = None,
) -> Any:
    """The flow's body, run while the run lock is held."""
    params_data = params.to_dict()
    if skip_if_unchanged:
        changes = check_changes(params_data)
        get_run_logger().info("change check: %s", changes["summary"])
        if not changes["changed"]:
            return Completed(
                name="Skipped", message=changes["summary"], data={"skipped": True, "reason": changes["summary"]}
            )
    states: dict[str, str] = {}
    results: dict[str, Any] = {}
    for position, stage in enumerate(STAGE_ORDER):
        champion = None
        if stage == "evaluate":
            champion = champion_version(params_data, results["train"]["run_id"])
        fingerprint = stage_fingerprint(params, stage, fingerprint_extra(stage, results, champion))
        stage_task = STAGE_TASKS[stage]
        if not outputs_current(params, stage, fingerprint):
            # Outputs missing or produced under other inputs: run, and store the result under this key.
            stage_task = stage_task.with_options(refresh_cache=True)
        began = time.time()
        state = stage_task(params_data, fingerprint, return_state=True)
        states[stage] = state.name
        if state.name == "Cached":
            progress.stage_cached(stage, cache_reason(stage, fingerprint))
        try:
            results[stage] = state.result()  # re-raises the stage's own error
        except BaseException as exc:
            _after_failure(params, stage, STAGE_ORDER[position + 1 :], exc, began)
            raise
        if stage == "train":
            results["train"] = training_run_on_store(params_data)
    # The workspace now holds exactly what `dvc repro` would produce from params.yaml: record it in dvc.lock
    # so a following `dvc repro` has nothing to do. Not with --set overrides: those are not in params.yaml.
    if syncs_dvc_lock(params_file, overrides, experiment, sync_dvc):
        results["dvc"] = sync_dvc_lock(params_data)
    return {"states": states, "results": results}
