"""Registry verbs of the `nlpops` CLI: `models list|history`, `promote`, `rollback`, `lineage`.

pipelines/cli.py attaches them (`add_registry_commands(app)`); the shared set-up (params, quiet libraries) and the
one-line error handling stay there.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from pipelines.cli.options import ExperimentOpt, JsonOpt, ModelOpt, ParamsOpt, SetOpt, VerboseOpt, setup
from pipelines.config import Params
from pipelines.errors import NlpopsError, RegistryError, first_line
from pipelines.redact import redact_text

models_app = typer.Typer(help="Inspect the MLflow model registry.", no_args_is_help=True)

ReasonOpt = typer.Option(None, "--reason", "-r", help="Why (required; recorded in the alias history).")
ModelsOpt = typer.Option(None, "--model", "-m", help="Only this registered model (repeatable) [all].")
HtmlOpt = typer.Option(None, "--html", help="Also write a one-page HTML audit report to this file.")


def _params(
    params_file: str, overrides: list[str] | None, verbose: bool, model: str | None, experiment: str | None
) -> Params:
    return setup(params_file, overrides, verbose, model, experiment)


@contextlib.contextmanager
def _registry(params: Params) -> Iterator[None]:
    """Point MLflow at the store; a store that cannot be reached is one readable line, not a traceback."""
    from pipelines.tracking import configure_tracking, is_unreachable, tracking_uri

    try:
        configure_tracking(params)
        yield
    except NlpopsError:
        raise
    except Exception as exc:
        from mlflow.exceptions import MlflowException

        if isinstance(exc, MlflowException) or is_unreachable(exc):  # API errors too: nothing was changed
            raise RegistryError(
                redact_text(f"registry at {tracking_uri(params)}: {first_line(exc, 300)}; nothing was changed")
            ) from None
        raise


def _lock(params: Params) -> Any:
    from pipelines.registry_lock import LockSettings

    return LockSettings.from_params(params)


def _event_line(e: dict[str, Any]) -> str:
    forced = " FORCED" if e.get("forced") else ""
    return (
        f"{e.get('at')}  {e.get('alias', '?'):<11} v{e.get('from') or '-'} -> v{e.get('to') or '-'}  "
        f"{e.get('action', 'move')}{forced} by {e.get('by')}: {e.get('reason')}"
    )


@models_app.command("list")
def models_list(
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    model: str | None = ModelOpt,
    all_models: bool = typer.Option(False, "--all", help="Every registered model in the store, one line each."),
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Registered versions: aliases, key metrics, gate result, registered and promoted when and by whom."""
    from pipelines.registry import list_models, list_versions

    params = _params(params_file, overrides, verbose, model, experiment)
    if all_models:
        with _registry(params):
            models = list_models(params.register_.champion_alias)
        if as_json:
            typer.echo(json.dumps(models, indent=2))
            return
        if not models:
            typer.echo("no registered models yet")
        for m in models:
            metrics = " ".join(f"{k}={v}" for k, v in m["metrics"].items()) or "-"
            champion = f"champion v{m['champion']}" if m["champion"] else "no champion"
            promoted = (
                f"  last promotion {m['last_promotion']} by {m['last_promotion_by']}" if m["last_promotion"] else ""
            )
            typer.echo(f"{m['name']:<28} {m['task']:<22} {m['versions']} versions  {champion}  {metrics}{promoted}")
        return
    with _registry(params):
        rows = list_versions(params.project.registered_model, params.register_.champion_alias)
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        typer.echo(f"no versions of {params.project.registered_model} registered yet")
    for r in rows:
        promoted = f"  promoted {r['promoted']} by {r['promoted_by']}" if r["promoted"] else ""
        typer.echo(
            f"v{r['version']:<4} {','.join(r['aliases']) or '-':<22} "
            + " ".join(f"{k}={v:<8}" for k, v in r["metrics"].items())
            + f" gate={r['gate']:<5} registered {r['created']} by {r['created_by']}{promoted}  run={r['run_id']}"
        )


@models_app.command("history")
def models_history(
    version: str | None = typer.Option(None, "--version", help="Only moves to or from this version."),
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    model: str | None = ModelOpt,
    as_json: bool = JsonOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Every alias move: when, who, from which version to which, why (oldest first)."""
    from pipelines.registry import alias_history

    params = _params(params_file, overrides, verbose, model, experiment)
    with _registry(params):
        events = alias_history(params.project.registered_model, version=version)
    if as_json:
        typer.echo(json.dumps(events, indent=2))
        return
    if not events:
        typer.echo(f"no alias moves recorded for {params.project.registered_model}")
    for e in events:
        typer.echo(_event_line(e))


@models_app.command("card")
def models_card(
    version: str = typer.Argument(..., help="Version number, or an alias (champion, challenger)."),
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    model: str | None = ModelOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Print the model card stored with VERSION (Markdown in the Hugging Face model-card layout)."""
    from pipelines.report.card import read_card

    params = _params(params_file, overrides, verbose, model, experiment)
    with _registry(params):
        _, card = read_card(params.project.registered_model, version)
    typer.echo(card.rstrip("\n"))


def promote_command(
    version: str = typer.Argument(..., help="Version number to make champion."),
    reason: str | None = ReasonOpt,
    force: bool = typer.Option(False, "--force", help="Promote even though its gate failed (the reason is recorded)."),
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    model: str | None = ModelOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Move the champion alias to VERSION; refused when its gate failed unless --force."""
    from pipelines.registry import promote

    params = _params(params_file, overrides, verbose, model, experiment)
    with _registry(params):
        event = promote(
            params.project.registered_model,
            version.lstrip("v"),
            reason or "",
            params.register_.champion_alias,
            _lock(params),
            force=force,
        )
    if event.get("unchanged"):
        typer.echo(f"{params.project.registered_model} v{event['to']} is already {params.register_.champion_alias}")
    else:
        typer.echo(_event_line(event))


def rollback_command(
    reason: str | None = ReasonOpt,
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    model: str | None = ModelOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Move the champion alias back to the previous champion."""
    from pipelines.registry import rollback

    params = _params(params_file, overrides, verbose, model, experiment)
    with _registry(params):
        event = rollback(params.project.registered_model, reason or "", params.register_.champion_alias, _lock(params))
    typer.echo(_event_line(event))


def lineage_command(
    version: str = typer.Argument(..., help="Version number, or an alias (champion, challenger)."),
    verify: bool = typer.Option(
        False, "--verify", help="Re-hash each link (data, run artifacts, git commit, ONNX); exit 1 if one changed."
    ),
    as_json: bool = JsonOpt,
    html_file: Path | None = HtmlOpt,
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    model: str | None = ModelOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """How VERSION was made: raw data → validation → cleaned data → tokenised cache → training run → metrics and
    gate → ONNX → registered version → alias history."""
    from pipelines.audit import build_lineage, render_html, render_text

    params = _params(params_file, overrides, verbose, model, experiment)
    with _registry(params):
        report = build_lineage(params.project.registered_model, version, verify=verify)
    if html_file is not None:
        try:
            html_file.parent.mkdir(parents=True, exist_ok=True)
            html_file.write_text(render_html(report), encoding="utf-8")
        except OSError as exc:
            raise NlpopsError(f"{html_file}: cannot write the HTML report ({exc.strerror})") from None
    typer.echo(json.dumps(report, indent=2, default=str) if as_json else render_text(report))
    if html_file is not None and not as_json:
        typer.echo(f"html report: {html_file}")
    if verify and report["summary"]["changed"]:
        raise SystemExit(1)  # typer.Exit is swallowed by app(standalone_mode=False) in cli.main


def migrate_command(
    to: str = typer.Option(..., "--to", help="Destination tracking/registry URI, e.g. http://127.0.0.1:5000."),
    source: str | None = typer.Option(
        None,
        "--from",
        help="Source store URI [default: this project's embedded store, sqlite:///<state_dir>/mlflow.db].",
    ),
    models: list[str] = ModelsOpt,
    params_file: str = ParamsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Copy registered models (versions, tags, training runs, alias history, aliases) to another MLflow store."""
    from pipelines.redact import redact_url as redact_uri
    from pipelines.registry_migrate import migrate

    params = _params(params_file, [], verbose, None, None)
    if source is None:
        source = f"sqlite:///{(Path(params.project.state_dir) / 'mlflow.db').resolve()}"
    results = migrate(source, to, list(models) if models else None)
    if not results:
        typer.echo(f"no registered models in {redact_uri(source)}; nothing to migrate")
    for r in results:
        if "skipped" in r:
            typer.echo(f"{r['name']}: {r['skipped']} in {redact_uri(to)}; nothing to do")
            continue
        moved = ", ".join(f"v{old}->v{new}" if old != new else f"v{new}" for old, new in r["versions"].items())
        aliases = ", ".join(f"{a} v{v}" for a, v in sorted(r["aliases"].items())) or "no aliases"
        typer.echo(
            f"{r['name']}: copied {moved} ({r['runs']} runs, {r['history_events']} alias-history events) to "
            f"{redact_uri(to)}; {aliases}"
        )


def add_commands(app: typer.Typer) -> None:
    """Attach `models`, `promote`, `rollback` and `lineage` to the main app."""
    app.add_typer(models_app, name="models")
    app.command("promote")(promote_command)
    app.command("rollback")(rollback_command)
    app.command("lineage")(lineage_command)
    app.command("migrate")(migrate_command)
    app.command("migrate")(migrate_command)
