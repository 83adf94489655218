"""MLflow set-up: embedded SQLite + local artifacts by default, MLFLOW_TRACKING_URI for a real server."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

from pipelines.config import Params

NOISY_LOGGERS = (
    "mlflow",
    "alembic",
    "great_expectations",
    "urllib3",
    "git",
    "filelock",
    "httpx",
    "matplotlib",
    "onnxscript",
    "torch.onnx",
)


def quiet_libraries(verbose: bool = False) -> None:
    """Library chatter (migrations, deprecation and experimental notices) off the console unless --verbose."""
    # MLflow (re)configures its loggers when imported, from these variables; set them before that happens.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "true" if verbose else "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    level = logging.INFO if verbose else logging.WARNING
    for name in NOISY_LOGGERS:
        logging.getLogger(name).setLevel(level if name != "alembic" else max(level, logging.WARNING))
    if not verbose:
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=UserWarning, module="mlflow")
        warnings.filterwarnings("ignore", message=".*experimental.*")
        warnings.filterwarnings("ignore", message=".*Add type hints to the `predict` method.*")
    os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


def tracking_uri(params: Params) -> str:
    """MLFLOW_TRACKING_URI wins; otherwise a SQLite file under the state dir."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    db = (Path(params.project.state_dir) / "mlflow.db").resolve()
    return f"sqlite:///{db}"


def artifact_root(params: Params) -> str:
    return (Path(params.project.state_dir) / "mlartifacts").resolve().as_uri()


_registry_set_here: str | None = None


def is_unreachable(exc: BaseException) -> bool:
    """A network failure talking to the tracking/registry server (after MLflow's own retries), not an API error."""
    from mlflow.exceptions import MlflowException

    if isinstance(exc, OSError) or type(exc).__module__.startswith(("requests", "urllib3")):
        return True
    return isinstance(exc, MlflowException) and ("Max retries" in str(exc) or "Connection" in str(exc))


def configure_tracking(params: Params) -> str:
    """Point MLflow at the tracking/registry store and select (or create) the experiment; returns its id."""
    import mlflow

    uri = tracking_uri(params)
    if uri.startswith("sqlite:///"):
        from pipelines import db_templates

        store = Path(uri.removeprefix("sqlite:///"))
        store.parent.mkdir(parents=True, exist_ok=True)
        db_templates.seed(store, "mlflow", db_templates.build_mlflow)
    # mlflow.set_*_uri also export MLFLOW_*_URI, so a registry URI this process set itself earlier (another
    # project, another test) must not be mistaken for the user's MLFLOW_REGISTRY_URI.
    global _registry_set_here
    registry = os.environ.get("MLFLOW_REGISTRY_URI")
    if not registry or registry == _registry_set_here:
        registry = uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(registry)
    _registry_set_here = registry
    # A server restart should be ridden out, a dead server reported within about a minute (MLflow's own
    # default backs off for over four minutes per request): retries at 2, 4, 8, 16, 32 s.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "5")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "60")
    client = mlflow.MlflowClient()
    try:
        experiment = client.get_experiment_by_name(params.project.experiment)
    except mlflow.exceptions.MlflowException as exc:
        if not is_unreachable(exc):
            raise
        from pipelines.errors import ServiceError
        from pipelines.redact import redact_url

        retries = os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"]
        raise ServiceError(
            f"MLflow tracking server {redact_url(uri)} unreachable after {retries} retries with backoff; start it "
            "(`nlpops services up`) or fix MLFLOW_TRACKING_URI. Nothing was logged or registered."
        ) from None
    if experiment is None:
        # A real server keeps its own artifact root; only the embedded default needs one chosen here.
        location = artifact_root(params) if uri.startswith("sqlite:") else None
        experiment_id = client.create_experiment(params.project.experiment, artifact_location=location)
    else:
        experiment_id = experiment.experiment_id
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def flatten(prefix: str, value: Any, out: dict[str, Any] | None = None) -> dict[str, Any]:
    """{'train': {'lr': 1}} -> {'train.lr': 1} for mlflow.log_params."""
    out = {} if out is None else out
    if isinstance(value, dict):
        for k, v in value.items():
            flatten(f"{prefix}.{k}" if prefix else str(k), v, out)
    else:
        out[prefix] = value
    return out
