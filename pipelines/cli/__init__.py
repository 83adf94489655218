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


def entry() -> None:
    """The `nlpops` console script: main(), then every exit handler (servers stopped, logs flushed, locks released),
    then the process ends without the interpreter's own teardown. That teardown (freeing every module of torch,
    transformers, onnxruntime, MLflow and Prefect one object at a time) took 2.5 s of a 20 s `nlpops run` and does
    nothing a finished process needs; NLPOPS_SLOW_EXIT=1 keeps it. In-process callers use main()."""
    import os

    try:
        main()
        code = 0
    except SystemExit as exc:
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:  # sys.exit("message"): what the interpreter would print
            print(exc.code, file=sys.stderr)
            code = 1
    if os.environ.get("NLPOPS_SLOW_EXIT") == "1":
        sys.exit(code)
    import atexit
    import contextlib
    import threading

    try:  # what the interpreter's own exit does first, in its order: join threads (and run their exit hooks:
        threading._shutdown()  # type: ignore[attr-defined]  # Prefect drains its log/event workers there), then
        atexit._run_exitfuncs()  # the atexit handlers; only the module teardown after them is skipped
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        os._exit(code)


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
