"""Options every `nlpops` command shares, declared once, and the set-up every command runs first."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from pipelines.config import DEFAULT_PARAMS_FILE, Params, load_params

ParamsOpt = typer.Option(DEFAULT_PARAMS_FILE, "--params", "-p", help="Params file (typed, unknown keys rejected).")
SetOpt = typer.Option(
    None, "--set", "-S", help="Override a param for this command, e.g. --set train.learning_rate=3e-5 (repeatable)."
)
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show library logs and full tracebacks.")
ExperimentOpt = typer.Option(
    None, "--experiment", "-e", help="Named experiment: experiments/NAME.yaml laid over params.yaml (then --set)."
)
ModelOpt = typer.Option(
    None, "--model", "-m", help="Registered model name (default: project.registered_model of the params)."
)
JsonOpt = typer.Option(False, "--json", help="Print JSON instead of text.")
QuietOpt = typer.Option(False, "--quiet", "-q", help="No progress: only errors and the final summary.")
LogFormatOpt = typer.Option(
    None,
    "--log-format",
    help="Progress as auto (bars on a terminal, else plain lines) | rich | plain | json (one JSON object per event "
    "on stdout) [env NLPOPS_LOG_FORMAT].",
)


def configure_progress(log_format: str | None, quiet: bool) -> None:
    """--log-format / --quiet for this process and, through the environment, the stage processes it starts."""
    from pipelines import progress

    progress.configure(log_format, quiet or None)


class _State:
    verbose = False


state = _State()


def echo(text: str = "") -> None:
    typer.echo(text)


def setup(
    params_file: str,
    overrides: list[str] | None,
    verbose: bool,
    model: str | None = None,
    experiment: str | None = None,
) -> Params:
    """Load params (+ --set, + --model), make the state dir, and keep Prefect/MLflow/GE quiet and offline."""
    state.verbose = verbose
    from pipelines.redact import install_log_redaction

    install_log_redaction()  # every log record from here on, any library, any level: credentials hidden
    extra = [f"project.registered_model={model}"] if model else []
    params = load_params(params_file, [*(overrides or []), *extra], experiment)
    from pipelines.dvc_experiment import anchor_state_dir

    params = anchor_state_dir(params)  # a queued `dvc exp run` keeps using the project's MLflow store
    state_dir = Path(params.project.state_dir).resolve()
    from pipelines.statedir import ensure_writable_dir

    ensure_writable_dir(state_dir)  # before Prefect and MLflow try to put their databases there
    # Prefect keeps its ephemeral database and cached results with the rest of the project's state.
    os.environ.setdefault("PREFECT_HOME", str(state_dir / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # ... and its client: no telemetry notice on the terminal of an offline machine (the standard opt-out variable)
    os.environ.setdefault("DO_NOT_TRACK", "1")
    # MLflow 3 sends usage telemetry from two background threads unless told not to, and reads DO_NOT_TRACK only
    # as "true" (not the standard's "1"): off like Prefect's and Great Expectations', unless the user says otherwise.
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    # The first start of the ephemeral server migrates its database; on a busy 2-core machine that can take
    # longer than Prefect's 20 s default.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Task failures reach the user as one line from us; Prefect's console handler would repeat them with a
    # traceback. Its API handler still records everything for the Prefect UI when a server is used.
    os.environ.setdefault("PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL", "INFO" if verbose else "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "INFO" if verbose else "CRITICAL")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "false")
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from pipelines.tracking import quiet_libraries

    quiet_libraries(verbose)
    return params
