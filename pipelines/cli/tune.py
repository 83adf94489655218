"""`nlpops tune`: an Optuna study over the `tune.space` of the params (pipelines/tune.py, flows/tune.py)."""

from __future__ import annotations

import time
from typing import Any

import typer

from pipelines.cli.options import ExperimentOpt, ParamsOpt, SetOpt, VerboseOpt, echo, setup


def tune_command(
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    workers: int | None = typer.Option(
        None, "--workers", min=1, help="Trials at a time, on a Dask cluster when > 1 (= --set tune.workers=N)."
    ),
    trials: int | None = typer.Option(None, "--trials", min=1, help="Trials in the study (= --set tune.trials=N)."),
    timeout: float | None = typer.Option(None, "--timeout", help="Start no trial after S seconds (tune.timeout_s)."),
    study: str | None = typer.Option(
        None, "--study", help="Study name; processes giving the same one (and storage) join it (tune.study_name)."
    ),
    verbose: bool = VerboseOpt,
) -> None:
    """Search hyper-parameters with Optuna: trials are real trainings, pruned on their per-epoch validation metric;
    writes experiments/<name>-best.yaml (`nlpops run -e <name>-best` then trains, gates and registers it)."""
    extra = [f"tune.workers={workers}"] if workers else []
    extra += [f"tune.trials={trials}"] if trials else []
    extra += [f"tune.timeout_s={timeout}"] if timeout else []
    extra += [f"tune.study_name={study}"] if study else []
    sets = [*(overrides or []), *extra]
    setup(params_file, sets, verbose, experiment=experiment)
    started = time.perf_counter()
    from flows.tune import tune

    summary: dict[str, Any] = tune(params_file=params_file, overrides=sets, experiment=experiment)
    _print(summary, time.perf_counter() - started)


def _print(summary: dict[str, Any], seconds: float) -> None:
    from pipelines.redact import redact_url

    echo(f"nlpops tune finished in {seconds:.1f} s: study {summary['study']!r} ({redact_url(summary['storage'])})")
    own = summary["this_process"]
    echo(
        f"  trials    {summary['trials']} in the study: {summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed"
        + (f", {summary['running']} running" if summary["running"] else "")
        + f"; this process ran {own['ran']}"
    )
    echo(f"  {'trial':>5} {'state':<9} {summary['metric']:>10} {'epochs':>6} {'s':>6}  params")
    for row in summary["table"]:
        value = f"{row['value']:.4f}" if isinstance(row["value"], float) else "-"
        seconds_ = f"{row['seconds']:.0f}" if row["seconds"] is not None else "-"
        shown = ", ".join(f"{k.split('.', 1)[1]}={_short(v)}" for k, v in row["params"].items())
        echo(f"  {row['number']:>5} {row['state']:<9} {value:>10} {row['epochs']:>6} {seconds_:>6}  {shown}")
    for failure in summary.get("failures") or []:
        echo(f"  failed    slot {failure.get('slot')}: {failure.get('error')}")
    if "best" in summary:
        best = summary["best"]
        line = f"  best      trial {best['number']}: {summary['metric']} {best['value']:.4f}"
        if "baseline" in summary:
            line += f" (params as they are, trial {summary['baseline']['number']}: {summary['baseline']['value']:.4f})"
        echo(line)
        echo(f"  written   {summary['best_experiment']}: nlpops run -e {_experiment(summary['best_experiment'])}")
    else:
        echo("  best      none: no trial completed")
    for name, path in summary["plots"].items():
        echo(f"  plot      {name}: {path}")
    echo(f"  mlflow    parent run {summary['parent_run_id']} (each trial a nested run)")


def _short(value: Any) -> str:
    return f"{value:.3g}" if isinstance(value, float) else str(value)


def _experiment(path: str) -> str:
    from pathlib import Path

    return Path(path).stem


def add_commands(app: typer.Typer) -> None:
    app.command("tune")(tune_command)
