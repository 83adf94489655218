"""`nlpops`: the whole flow, one command per stage (from the stage table), prediction, the registry, operations.

Modules: options (shared options and set-up), stages (run, stage verbs, predict, data), registry (models,
promote, rollback, lineage), ops (services, schedule, changes), tune (hyper-parameter search). Each adds its
commands to the app here; none imports another command module.
"""

from __future__ import annotations

import sys

import typer

from pipelines.cli import ops, registry, serve, stages, tune
from pipelines.cli.options import state
from pipelines.errors import NlpopsError

app = typer.Typer(
    name="nlpops",
    help="Fine-tune pre-trained transformers and carry each model to a registered, audited ONNX artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stages.add_commands(app)
registry.add_commands(app)
ops.add_commands(app)
serve.add_commands(app)
tune.add_commands(app)


def main() -> None:
    from pipelines.redact import redact_text

    try:
        result = app(standalone_mode=False)
    except NlpopsError as exc:
        typer.echo(f"error: {redact_text(str(exc))}", err=True)
        _error_event(redact_text(str(exc)), exc.exit_code)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if isinstance(exc, click.exceptions.Abort):
            sys.exit(1)
        if isinstance(exc, click.exceptions.Exit):
            sys.exit(exc.exit_code)
        from pipelines.stores import explain_store_error

        moved = explain_store_error(exc)  # outputs logged to another MLflow store than the current one
        if moved:
            typer.echo(f"error: {redact_text(moved)}", err=True)
            sys.exit(NlpopsError.exit_code)
        if state.verbose:  # the full traceback, credentials hidden
            import traceback

            typer.echo(redact_text(traceback.format_exc()).rstrip("\n"), err=True)
            sys.exit(1)
        typer.echo(
            f"error: unexpected {type(exc).__name__}: {redact_text(str(exc))} (rerun with --verbose for details)",
            err=True,
        )
        _error_event(f"unexpected {type(exc).__name__}: {redact_text(str(exc))}", 1)
        sys.exit(1)
    # standalone_mode=False returns a command's typer.Exit code instead of exiting with it: pass it on
    if isinstance(result, int) and result:
        sys.exit(result)


def _error_event(message: str, exit_code: int) -> None:
    """--log-format json: the error as one more JSON object on stdout (the one-line text stays on stderr)."""
    from pipelines import progress

    progress.emit("error", message=message, exit_code=exit_code)


__all__ = ["app", "main"]
