"""`nlpops serve`: the champion over HTTP (pipelines/http_server.py), following promotions and rollbacks."""

from __future__ import annotations

import typer

from pipelines.cli.options import ExperimentOpt, ModelOpt, ParamsOpt, SetOpt, VerboseOpt, echo, setup
from pipelines.errors import NlpopsError


def serve_command(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, "--port", help="TCP port (0: any free one, printed at start)."),
    alias: str | None = typer.Option(
        None, "--alias", help="Registry alias to serve (default: register.champion_alias of the params)."
    ),
    poll_s: float = typer.Option(
        10.0, "--poll-seconds", help="Re-read the alias this often; a moved alias is loaded and swapped in (0: never)."
    ),
    max_items: int = typer.Option(256, "--max-items", help="Most inputs in one /predict request (a 422 above)."),
    max_chars: int = typer.Option(10_000, "--max-chars", help="Longest text (characters) one input may have."),
    batch_rows: int = typer.Option(
        64, "--batch-rows", help="Requests waiting together are combined into runtime batches of up to this many rows."
    ),
    access_log: bool = typer.Option(False, "--access-log", help="Log every request (uvicorn's access log)."),
    model: str | None = ModelOpt,
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Serve the champion's ONNX model over HTTP: POST /predict, GET /health, GET /model, docs at /docs."""
    from pipelines.http_server import ServeOptions, serve

    for name, value, least in (
        ("--max-items", max_items, 1),
        ("--max-chars", max_chars, 1),
        ("--batch-rows", batch_rows, 1),
    ):
        if value < least:
            raise NlpopsError(f"serve: {name} must be at least {least} (got {value})")
    if not 0 <= port <= 65535:
        raise NlpopsError(f"serve: --port must be 0..65535 (got {port})")
    if poll_s < 0:
        raise NlpopsError(f"serve: --poll-seconds must be 0 (never) or more (got {poll_s:g})")
    params = setup(params_file, overrides, verbose, model, experiment)
    options = ServeOptions(
        alias=alias or params.register_.champion_alias,
        poll_s=poll_s,
        max_items=max_items,
        max_chars=max_chars,
        batch_rows=batch_rows,
    )
    serve(params, host, port, options, announce=echo, access_log=access_log)


def add_commands(app: typer.Typer) -> None:
    """Attach `serve` to the main app."""
    app.command("serve")(serve_command)
