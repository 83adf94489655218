"""Operations commands: `nlpops services up|down|status`, `nlpops schedule`, `nlpops changes`."""

from __future__ import annotations

import os

import typer

from pipelines.cli.options import ExperimentOpt, ParamsOpt, SetOpt, VerboseOpt, setup
from pipelines.errors import ConfigError, ServiceError
from pipelines.redact import embedded_credential, redact_text

services_app = typer.Typer(help="Local MLflow and Prefect servers on PostgreSQL.", no_args_is_help=True)

PostgresOpt = typer.Option(
    None,
    "--postgres-url",
    help="Server holding both databases [env NLPOPS_POSTGRES_URL; postgresql://postgres@127.0.0.1:5432]",
)
MlflowPortOpt = typer.Option(None, "--mlflow-port", help="[env NLPOPS_MLFLOW_PORT; 5000]")
PrefectPortOpt = typer.Option(None, "--prefect-port", help="[env NLPOPS_PREFECT_PORT; 4200]")


def _config(params_file: str, overrides: list[str] | None, verbose: bool, experiment: str | None = None, **ports):
    from pipelines.services import ServicesConfig

    params = setup(params_file, overrides, verbose, experiment=experiment)
    return ServicesConfig.from_env(params.project.state_dir, **ports)


@services_app.command("up")
def services_up_cmd(
    postgres_url: str | None = PostgresOpt,
    mlflow_port: int | None = MlflowPortOpt,
    prefect_port: int | None = PrefectPortOpt,
    ui: bool = typer.Option(True, "--ui/--no-ui", help="Serve the Prefect UI."),
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Create the databases if needed, start MLflow and Prefect servers, wait until healthy, print URLs."""
    from pipelines.services import client_env, services_up

    if postgres_url and embedded_credential(postgres_url):  # a command line ends up in shell history and `ps`
        raise ConfigError(
            f"--postgres-url {redact_text(postgres_url)}: holds a password; put it in PGPASSWORD or ~/.pgpass, "
            "or give the whole URL in NLPOPS_POSTGRES_URL"
        )
    cfg = _config(
        params_file,
        overrides,
        verbose,
        experiment,
        postgres_url=postgres_url,
        mlflow_port=mlflow_port,
        prefect_port=prefect_port,
        prefect_ui=ui,
    )
    state = services_up(cfg)
    for name in ("mlflow", "prefect"):
        how = "already running" if state[name].get("reused") else f"started, pid {state[name]['pid']}"
        db = cfg.mlflow_db if name == "mlflow" else cfg.prefect_db
        url = cfg.mlflow_url if name == "mlflow" else cfg.prefect_api_url.removesuffix("/api")
        typer.echo(f"{name:<8} {url:<28} healthy ({how}; PostgreSQL database {db})")
    typer.echo(f"logs     {cfg.run_dir}")
    for warning in state.get("warnings", []):
        typer.echo(f"warning: {warning}", err=True)
    typer.echo("point nlpops at them:")
    for key, value in client_env(cfg).items():
        typer.echo(f"  export {key}={value}")


@services_app.command("down")
def services_down_cmd(
    mlflow_port: int | None = MlflowPortOpt,
    prefect_port: int | None = PrefectPortOpt,
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Stop the servers `services up` started (the databases are kept)."""
    from pipelines.services import services_down

    cfg = _config(params_file, overrides, verbose, experiment, mlflow_port=mlflow_port, prefect_port=prefect_port)
    stopped = services_down(cfg)
    typer.echo(f"stopped: {', '.join(stopped)}" if stopped else "nothing to stop")


@services_app.command("status")
def services_status_cmd(
    mlflow_port: int | None = MlflowPortOpt,
    prefect_port: int | None = PrefectPortOpt,
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Health of both servers; exit code 3 when one is down."""
    from pipelines.services import services_status

    cfg = _config(params_file, overrides, verbose, experiment, mlflow_port=mlflow_port, prefect_port=prefect_port)
    status = services_status(cfg)
    for name, s in status.items():
        typer.echo(
            f"{name:<8} {s['url']:<28} {'healthy' if s['healthy'] else 'DOWN'}"
            + (f" (pid {s['pid']})" if s["pid"] else "")
        )
    if not all(s["healthy"] for s in status.values()):
        raise typer.Exit(3)


def schedule(
    cron: str = typer.Option("0 3 * * *", "--cron", help="Cron expression of the retraining schedule."),
    timezone: str = typer.Option("UTC", "--timezone", help="IANA time zone of the cron expression."),
    name: str = typer.Option("nightly", "--name", help="Deployment name (flow nlpops-retrain)."),
    work_pool: str | None = typer.Option(
        None, "--work-pool", help="Register on this work pool and return (a worker runs it); default: serve here."
    ),
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Deploy the retrain flow on a cron schedule; each run skips when nothing changed since the champion."""
    # Run logs (the change check's verdict) go to the Prefect server, where the UI shows them.
    os.environ.setdefault("PREFECT_LOGGING_SERVER_LEVEL", "INFO")

    setup(params_file, overrides, verbose, experiment=experiment)
    if not os.environ.get("PREFECT_API_URL"):
        raise ServiceError(
            "PREFECT_API_URL is not set: a schedule needs a Prefect server (`nlpops services up` prints the exports)"
        )
    from flows.deploy import FLOW_NAME, build_deployment, deploy_to_work_pool, serve_deployment, validate_cron

    validate_cron(cron, timezone)
    where = redact_text(
        f"{os.environ['PREFECT_API_URL']}, MLflow {os.environ.get('MLFLOW_TRACKING_URI', 'local sqlite')}"
    )
    if work_pool:
        deployment_id = deploy_to_work_pool(work_pool, cron, name, params_file, timezone)
        typer.echo(
            f"deployment {FLOW_NAME}/{name} ({deployment_id}) on work pool {work_pool!r}, cron '{cron}' {timezone}"
        )
        typer.echo(f"start a worker: prefect worker start --pool {work_pool}")
        return
    typer.echo(f"serving {FLOW_NAME}/{name}: cron '{cron}' {timezone}; skips when nothing changed ({where})")
    typer.echo(f"trigger now: prefect deployment run '{FLOW_NAME}/{name}'   (Ctrl-C stops serving)")
    serve_deployment(build_deployment(cron, name, params_file, timezone))


def changes(
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """What changed since the champion was made (data md5, params hash, pipeline code); exit 0 either way."""
    from pipelines.changes import detect_changes

    report = detect_changes(setup(params_file, overrides, verbose, experiment=experiment))
    typer.echo(redact_text(report.summary))


def add_commands(app: typer.Typer) -> None:
    app.add_typer(services_app, name="services")
    app.command("schedule")(schedule)
    app.command("changes")(changes)
