"""The nightly retraining deployment: the retrain flow on a cron schedule, with skip_if_unchanged on.

Two ways to run it (both need a Prefect server, PREFECT_API_URL):
- `nlpops schedule --cron "0 3 * * *"`: registers the deployment and serves it from this process (`serve`);
  each scheduled or manual run executes here, in a subprocess, in this working copy.
- `nlpops schedule --work-pool NAME`: registers the deployment on a work pool and returns; a worker
  (`prefect worker start --pool NAME`, or the container in infra/docker-compose.yml, or a Kubernetes pool with
  infra/k8s/base-job-template.json) picks the runs up. prefect.yaml at the repo root declares the same
  deployment for `prefect deploy`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipelines.config import DEFAULT_PARAMS_FILE
from pipelines.errors import ConfigError

FLOW_NAME = "nlpops-retrain"
ENTRYPOINT = "flows/retrain.py:retrain"
DEFAULT_CRON = "0 3 * * *"
DEFAULT_DEPLOYMENT = "nightly"


def scheduled_parameters(params_file: str = DEFAULT_PARAMS_FILE) -> dict[str, Any]:
    """A scheduled run retrains only when data, params or code changed since the champion was made."""
    return {"params_file": params_file, "skip_if_unchanged": True}


def deployment_concurrency(params_file: str = DEFAULT_PARAMS_FILE) -> Any:
    """One run of the deployment at a time: a trigger while one runs waits (AwaitingConcurrencySlot) when
    run.on_conflict is wait, or is cancelled by Prefect when it is fail. The flow's run lock (pipelines/run_lock.py)
    also queues it behind, or skips it past, runs started outside the deployment (`nlpops run`, `dvc repro`)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    from pipelines.config import load_params

    on_conflict = load_params(params_file).run.on_conflict
    strategy = ConcurrencyLimitStrategy.ENQUEUE if on_conflict == "wait" else ConcurrencyLimitStrategy.CANCEL_NEW
    return ConcurrencyLimitConfig(limit=1, collision_strategy=strategy)


def validate_cron(cron: str, timezone: str) -> Any:
    """The Prefect schedule object; a bad expression or time zone is one clear ConfigError."""
    from prefect.schedules import Cron

    try:
        return Cron(cron, timezone=timezone)
    except Exception as exc:
        first = str(exc).strip().splitlines()
        detail = first[-1] if first else type(exc).__name__
        raise ConfigError(f"--cron {cron!r} / --timezone {timezone!r}: not a valid schedule ({detail})") from None


def build_deployment(
    cron: str = DEFAULT_CRON,
    name: str = DEFAULT_DEPLOYMENT,
    params_file: str = DEFAULT_PARAMS_FILE,
    timezone: str = "UTC",
) -> Any:
    """A RunnerDeployment of the retrain flow on a cron schedule (for `serve`)."""
    from flows.retrain import retrain

    return retrain.to_deployment(
        name=name,
        schedules=[validate_cron(cron, timezone)],
        parameters=scheduled_parameters(params_file),
        description="Scheduled retraining: skipped when nothing changed since the champion was made.",
        tags=["nlpops", "scheduled"],
        concurrency_limit=deployment_concurrency(params_file),  # overlapping retrains would race on artifacts/
    )


def serve_deployment(deployment: Any) -> None:
    """Register the deployment and execute its runs from this process until interrupted."""
    from prefect import serve

    serve(deployment, print_starting_message=False, limit=1)


def deploy_to_work_pool(
    work_pool: str,
    cron: str = DEFAULT_CRON,
    name: str = DEFAULT_DEPLOYMENT,
    params_file: str = DEFAULT_PARAMS_FILE,
    timezone: str = "UTC",
    source: str | Path = ".",
) -> str:
    """Register the deployment on a work pool (the code is read from `source` by the worker); returns its id."""
    from prefect import flow

    remote = flow.from_source(source=str(Path(source).resolve()), entrypoint=ENTRYPOINT)
    deployment_id = remote.deploy(  # type: ignore[union-attr]  # sync context: a Flow, not a coroutine
        name=name,
        work_pool_name=work_pool,
        schedules=[validate_cron(cron, timezone)],
        parameters=scheduled_parameters(params_file),
        tags=["nlpops", "scheduled"],
        concurrency_limit=deployment_concurrency(params_file),
        build=False,
        push=False,
        print_next_steps=False,
    )
    return str(deployment_id)
