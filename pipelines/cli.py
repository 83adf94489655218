"""`nlpops`: the whole flow, one command per stage (used by dvc.yaml), prediction and the registry."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import typer

from pipelines.config import DEFAULT_PARAMS_FILE, Params, load_params
from pipelines.errors import NlpopsError

app = typer.Typer(
    name="nlpops",
    help="Fine-tune pre-trained transformers and carry each model to a registered, audited ONNX artifact.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Bring data in under DVC.", no_args_is_help=True)
app.add_typer(data_app, name="data")

ParamsOpt = typer.Option(DEFAULT_PARAMS_FILE, "--params", "-p", help="Params file (typed, unknown keys rejected).")
SetOpt = typer.Option(
    None, "--set", "-S", help="Override a param for this run, e.g. --set train.learning_rate=3e-5 (repeatable)."
)
VerboseOpt = typer.Option(False, "--verbose", "-v", help="Show library logs and full tracebacks.")

_verbose = False


def _setup(params_file: str, overrides: list[str] | None, verbose: bool) -> Params:
    global _verbose
    _verbose = verbose
    params = load_params(params_file, overrides or [])
    from pipelines.dvc_experiment import anchor_state_dir

    params = anchor_state_dir(params)  # a queued `dvc exp run` keeps using the project's MLflow store
    state = Path(params.project.state_dir).resolve()
    from pipelines.statedir import ensure_writable_dir

    ensure_writable_dir(state)  # before Prefect and MLflow try to put their databases there
    # Prefect keeps its ephemeral database and cached results with the rest of the project's state.
    os.environ.setdefault("PREFECT_HOME", str(state / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
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


def _echo(text: str = "") -> None:
    typer.echo(text)


def _print_summary(stage: str, summary: dict[str, Any]) -> None:
    shown = {k: v for k, v in summary.items() if k not in ("history",)}
    _echo(f"{stage}: " + json.dumps(shown, default=str, indent=None)[:2000])


def _stage_command(stage: str):
    def command(
        params_file: str = ParamsOpt,
        overrides: list[str] = SetOpt,
        verbose: bool = VerboseOpt,
    ) -> None:
        from pipelines.runner import STAGE_RUNNERS

        params = _setup(params_file, overrides, verbose)
        _print_summary(stage, STAGE_RUNNERS[stage](params))

    command.__doc__ = f"Run the {stage} stage alone (what dvc.yaml calls)."
    return command


for _stage, _help in (
    ("validate", "Validate raw data with the Great Expectations suite built from params."),
    ("clean", "Normalise text, drop empty/duplicate/conflicting rows, split, map labels."),
    ("tokenise", "Tokenise the cleaned splits (cached by content hash + tokenizer + max length)."),
    ("train", "Fine-tune the pre-trained model; per-epoch validation and early stopping."),
    ("evaluate", "Test metrics, confusion matrix and the champion/challenger gate."),
    ("export", "Export ONNX and check parity against PyTorch on real test rows."),
    ("register", "Register the ONNX model as challenger; promote to champion if the gate passed."),
):
    app.command(_stage, help=_help)(_stage_command(_stage))


@app.command("run")
def run_flow(
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    verbose: bool = VerboseOpt,
    if_changed: bool = typer.Option(
        False, "--if-changed", help="Skip (and say why) when data, params and code match the champion's lineage."
    ),
) -> None:
    """Run the whole Prefect flow: validate → clean → tokenise → train → evaluate → export → register."""
    params = _setup(params_file, overrides, verbose)
    started = time.perf_counter()
    from flows.retrain import retrain

    result: dict[str, Any] = retrain(  # type: ignore[assignment]
        params_file=params_file, overrides=overrides or [], skip_if_unchanged=if_changed
    )
    if result.get("skipped"):
        _echo(f"nlpops run skipped after {time.perf_counter() - started:.1f} s: {result['reason']}")
        return
    _print_run_report(params, result, time.perf_counter() - started)


def _print_run_report(params: Params, result: dict[str, Any], seconds: float) -> None:
    states, res = result["states"], result["results"]
    cached = [s for s, state in states.items() if state == "Cached"]
    ev, reg, tr, ex = res["evaluate"], res["register"], res["train"], res["export"]
    clean = res["clean"]
    _echo("")
    _echo(f"nlpops run finished in {seconds:.1f} s" + (f" (cached stages: {', '.join(cached)})" if cached else ""))
    _echo(f"  data      {params.data.path}: {clean.get('rows_in')} rows in, splits {clean.get('splits')}")
    _echo(f"  training  best epoch {tr['best_epoch']}/{tr['epochs_run']}, {tr['train_seconds']} s, run {tr['run_id']}")
    _echo(f"  test      accuracy {ev['accuracy']:.4f}  macro-F1 {ev['macro_f1']:.4f}  ({ev['test_rows']} rows)")
    gate = reg.get("gate") or ev["gate"]  # the final decision (with parity and latency) is made at register
    _echo(f"  gate      {'PASSED' if gate['passed'] else 'FAILED'}: " + "; ".join(gate.get("reasons") or []))
    _echo(f"  onnx      {ex['onnx_path']} (parity max abs diff {ex['max_abs_diff']:.2e} ≤ {ex['atol']})")
    aliases = f"'{params.register_.challenger_alias}'"
    if reg["promoted"]:
        aliases += f" and '{params.register_.champion_alias}'"
    champion = f"champion is v{reg['champion']}" if reg["champion"] else "no champion yet"
    _echo(f"  registry  {reg['name']} v{reg['version']} alias {aliases}; {champion}")
    from pipelines.tracking import tracking_uri

    _echo(f"  tracking  {tracking_uri(params)}")
    if "dvc" in res:
        _echo(f"  dvc       {res['dvc']}")


@app.command("predict")
def predict(
    text: str | None = typer.Argument(None, help="Text to classify; omit to read lines from --file or stdin."),
    pair: str | None = typer.Option(None, "--pair", help="Second text, for sentence-pair models."),
    file: Path | None = typer.Option(None, "--file", "-f", help="File with one text per line (TAB separates a pair)."),
    alias: str = typer.Option("champion", "--alias", help="Registry alias to load."),
    version: str | None = typer.Option(None, "--version", help="Registered version (overrides --alias)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON lines instead of 'label<TAB>score'."),
    params_file: str = ParamsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Classify text with the champion's ONNX model (label and score per line)."""
    from pipelines.predict import load_registered_classifier, split_pairs

    params = _setup(params_file, [], verbose)
    if text is not None:
        texts, pairs = [text], [pair] if pair is not None else None
    else:
        source = file.read_text(encoding="utf-8") if file else sys.stdin.read()
        texts, pairs = split_pairs([line for line in source.splitlines() if line.strip()])
    if not texts:
        raise NlpopsError("predict: no text given (pass TEXT, --file or lines on stdin)")
    classifier, label = load_registered_classifier(params, alias=alias, version=version)
    for i, p in enumerate(classifier.predict(texts, pairs)):
        if as_json:
            _echo(json.dumps({"text": texts[i], "label": p["label"], "score": round(p["score"], 6), "model": label}))
        else:
            _echo(f"{p['label']}\t{p['score']:.4f}")


@data_app.command("add")
def data_add(
    path: Path = typer.Argument(..., help="Data file to version."),
    dest: Path = typer.Option(Path("data/raw"), "--dest", help="Folder inside the repo."),
    verbose: bool = VerboseOpt,
) -> None:
    """Copy a data file into data/raw/ and version it with DVC."""
    global _verbose
    _verbose = verbose
    from pipelines.dvc_sync import add_data

    out = add_data(path, dest)
    _echo(f"{out} is now tracked by DVC ({out}.dvc); commit the .dvc file with git")


from pipelines.cli_registry import add_registry_commands  # noqa: E402  (it imports _setup lazily from here)

add_registry_commands(app)

from pipelines.cli_ops import add_ops_commands  # noqa: E402  (services, schedule, changes)

add_ops_commands(app)


def main() -> None:
    try:
        app(standalone_mode=False)
    except NlpopsError as exc:
        typer.echo(f"error: {exc}", err=True)
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
        if _verbose:
            raise
        typer.echo(f"error: unexpected {type(exc).__name__}: {exc} (rerun with --verbose for details)", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
