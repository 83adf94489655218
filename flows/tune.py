"""The Prefect flow of `nlpops tune` (pipelines/tune.py): data stages once, then trials as mapped Prefect tasks.

The trials are mapped over trial slots in a subflow whose task runner runs `tune.workers` of them at a time: this
process (one at a time) or prefect-dask's DaskTaskRunner (a local cluster of `tune.workers` processes, or the
cluster at `orchestration.dask_address`). Deployed on a work pool, the flow runs wherever the pool's worker is;
more processes (or deployments) given the same study name and storage join the same study.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from pipelines.config import DEFAULT_PARAMS_FILE, Params, load_params
from pipelines.redact import install_log_redaction

DATA_STAGES = ("validate", "clean", "tokenise")


@task(name="tune-trial", cache_policy=NO_CACHE, persist_result=False)
def trial(ctx: dict[str, Any], slot: int) -> dict[str, Any]:
    """One Optuna trial (a real training run); raises, after marking the trial FAIL, when the training fails."""
    from pipelines.tune import run_trial

    return run_trial(ctx, slot)


def _runner(params: Params) -> Any:
    if params.tune.workers == 1 and not params.orchestration.dask_address:
        return ThreadPoolTaskRunner(max_workers=1)
    from pipelines.cluster import task_runner

    threads = params.train.num_threads or None
    return task_runner(params.orchestration, workers=params.tune.workers, omp_threads=threads)


def run_trials(params: Params, ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """Map the trial task over tune.trials slots and collect every outcome (a failed trial is one too)."""

    @flow(name="nlpops-tune-trials", task_runner=_runner(params), validate_parameters=False)
    def trials() -> list[dict[str, Any]]:
        futures = trial.map(unmapped(ctx), list(range(params.tune.trials)))
        outcomes = []
        for slot, future in enumerate(futures):
            future.wait()
            state = future.state
            if state.is_completed():
                outcomes.append(future.result())
            else:
                message = state.message or state.name
                outcomes.append({"slot": slot, "state": "FAIL", "error": message})
        return outcomes

    return trials()


def _prepare_data(params: Params) -> dict[str, str]:
    """validate, clean, tokenise as `nlpops run` runs them (cached on their fingerprints, same stamps)."""
    from flows.retrain import STAGE_TASKS
    from pipelines.dag import stage_fingerprint
    from pipelines.stage_cache import outputs_current

    states = {}
    params_data = params.to_dict()
    for stage in DATA_STAGES:
        fingerprint = stage_fingerprint(params, stage)
        stage_task = STAGE_TASKS[stage]
        if not outputs_current(params, stage, fingerprint):
            stage_task = stage_task.with_options(refresh_cache=True)
        state = stage_task(params_data, fingerprint, return_state=True)
        state.result()  # re-raises the stage's own error
        states[stage] = state.name
    return states


@flow(name="nlpops-tune", log_prints=False, validate_parameters=False)
def tune(
    params_file: str = DEFAULT_PARAMS_FILE,
    overrides: list[str] | None = None,
    experiment: str | None = None,
) -> dict[str, Any]:
    """Data stages (cached) → study (created or joined) → trials (mapped) → summary, plots, best-params overlay."""
    import optuna

    from pipelines import tune as tuning
    from pipelines.paths import StagePaths
    from pipelines.run_lock import hold_run_lock
    from pipelines.tracking import configure_tracking, tracking_uri

    install_log_redaction()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    started = time.time()
    params = load_params(params_file, overrides or [], experiment)
    if not params.tune.space:
        from pipelines.errors import ConfigError

        raise ConfigError(f"{params_file}: tune.space is empty: name the train.*/model.* keys to search")
    name = tuning.study_name(params, experiment)
    with hold_run_lock(params, "nlpops tune (data stages)"):  # the trials read a snapshot: no lock while they run
        data_states = _prepare_data(params)
        storage_url = tuning.storage_url(params)
        tracking = {"uri": tracking_uri(params), "experiment_id": configure_tracking(params)}
        storage = tuning.open_storage(storage_url)
        study, created = tuning.create_or_join(params, name, storage)
        if created:
            point = tuning.default_point(params)
            if point is not None:  # trial 0: the params as they are, the baseline the best is compared with
                study.enqueue_trial(point, user_attrs={"baseline": True}, skip_if_exists=True)
        parent = tuning.parent_run(params, study, created, tracking)
        deadline = started + params.tune.timeout_s if params.tune.timeout_s else None
        ctx = tuning.trial_context(params, name, storage_url, tracking, parent, deadline)
    outcomes = run_trials(params, ctx)

    metric, direction = tuning.objective_metric(params)
    summary = tuning.study_summary(tuning._reload(study), metric, direction)
    from pipelines.redact import redact_url

    summary.update(
        created=created,
        storage=redact_url(storage_url),
        parent_run_id=parent,
        data_stages=data_states,
        this_process={
            "ran": sum(1 for o in outcomes if "state" in o),
            "skipped": sum(1 for o in outcomes if "skipped" in o),
            "seconds": round(time.time() - started, 1),
        },
        failures=[o for o in outcomes if o.get("state") == "FAIL"],
    )
    out_dir = StagePaths.from_params(params).root / "tune" / tuning._safe(name)
    plots = tuning.write_plots(tuning._reload(study), out_dir)
    summary["plots"] = plots
    if "best" in summary:
        space = list(params.tune.space)
        overlay = tuning.best_overlay(params_file, experiment, overrides or [], summary["best"]["params"], space)
        summary["best_experiment"] = str(tuning.write_best_experiment(params_file, name, overlay, summary))
    _log_parent(tracking["uri"], parent, summary, plots, out_dir)
    return summary


def _log_parent(uri: str, run_id: str, summary: dict[str, Any], plots: dict[str, str], out_dir: Path) -> None:
    """The study's summary onto its MLflow parent run: counts and best value as metrics, the summary JSON, plots."""
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from pipelines.redact import redact_settings

    client = MlflowClient(tracking_uri=uri)
    now = int(time.time() * 1000)
    values = {k: summary[k] for k in ("trials", "complete", "pruned", "failed")}
    if "best" in summary:
        values["best_value"] = summary["best"]["value"]
        client.set_tag(run_id, "nlpops.tune.best_trial", str(summary["best"]["number"]))
        client.set_tag(run_id, "nlpops.tune.best_params", json.dumps(summary["best"]["params"])[:4000])
    if "baseline" in summary:
        values["baseline_value"] = summary["baseline"]["value"]
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()])
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / "summary.json"
    target.write_text(json.dumps(redact_settings(summary), indent=2, default=str))
    client.log_artifact(run_id, str(target), artifact_path="tune")
    for path in plots.values():
        if Path(path).is_file():
            client.log_artifact(run_id, path, artifact_path="tune")
    client.set_terminated(run_id, status="FINISHED")
