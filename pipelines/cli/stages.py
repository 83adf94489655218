"""`nlpops run`, one verb per stage of the stage table (what dvc.yaml calls), `predict` and `data add`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import typer

from pipelines.cli.options import (
    ExperimentOpt,
    LogFormatOpt,
    ModelOpt,
    ParamsOpt,
    QuietOpt,
    SetOpt,
    VerboseOpt,
    configure_progress,
    echo,
    setup,
    state,
)
from pipelines.config import Params
from pipelines.dag import STAGE_ORDER
from pipelines.errors import NlpopsError

data_app = typer.Typer(help="Bring data in under DVC.", no_args_is_help=True)


def _print_summary(stage: str, summary: dict[str, Any]) -> None:
    from pipelines import progress
    from pipelines.redact import redact_settings

    shown = {k: v for k, v in summary.items() if k not in ("history",)}
    if progress.mode() == "json":  # every stdout line is a JSON object then
        progress.emit("stage_summary", stage=stage, summary=json.loads(json.dumps(redact_settings(shown), default=str)))
        return
    echo(f"{stage}: " + json.dumps(redact_settings(shown), default=str, indent=None)[:2000])


def _stage_command(stage: str):
    def command(
        params_file: str = ParamsOpt,
        overrides: list[str] = SetOpt,
        experiment: str | None = ExperimentOpt,
        verbose: bool = VerboseOpt,
        quiet: bool = QuietOpt,
        log_format: str | None = LogFormatOpt,
    ) -> None:
        from pipelines.dag import run_stage
        from pipelines.run_lock import hold_run_lock

        configure_progress(log_format, quiet)
        params = setup(params_file, overrides, verbose, experiment=experiment)
        with hold_run_lock(params, f"nlpops {stage}"):  # under `dvc repro`: held for DVC, first stage to last
            _print_summary(stage, run_stage(params, stage))

    command.__doc__ = f"Run the {stage} stage alone (what dvc.yaml calls)."
    return command


STAGE_HELP = {
    "validate": "Validate raw data with the task's stored Great Expectations suites.",
    "clean": "Normalise, drop empty/duplicate/conflicting rows, split without leakage, map labels.",
    "tokenise": "Tokenise the cleaned splits (cached by content hash + tokenizer + max length).",
    "train": "Fine-tune the pre-trained model; per-epoch validation and early stopping.",
    "evaluate": "Test metrics, the task's evaluation views and slices, and the champion/challenger gate.",
    "export": "Export ONNX and check parity against PyTorch on real test inputs.",
    "register": "Register the ONNX model as challenger; promote to champion if the gate passed.",
    "report": "Write the HTML run report and the registered version's model card (both logged to MLflow).",
}


def run_flow(
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
    if_changed: bool = typer.Option(
        False, "--if-changed", help="Skip (and say why) when data, params and code match the champion's lineage."
    ),
    quiet: bool = QuietOpt,
    log_format: str | None = LogFormatOpt,
) -> None:
    """Run the whole Prefect flow: validate → clean → tokenise → train → evaluate → export → register → report."""
    configure_progress(log_format, quiet)
    params = setup(params_file, overrides, verbose, experiment=experiment)
    started = time.perf_counter()
    from pipelines import prefect_server
    from pipelines.run_lock import hold_run_lock

    # Taken before Prefect starts (the flow takes it again, re-entrantly): a waiting run holds no server.
    result: dict[str, Any]
    with hold_run_lock(params, "nlpops run", skip_if_busy=if_changed) as busy:
        if busy:
            result = {"skipped": True, "reason": busy}
        else:
            from pipelines.paths import StagePaths
            from pipelines.stage_cache import up_to_date
            from pipelines.tracking import configure_tracking

            # Nothing to run (every stage's outputs current): the flow's result without starting Prefect. The
            # temporary Prefect server boots on the other core while this process opens (on a first run: creates)
            # the MLflow store, imports Prefect and then what the first stages to run import. It is launched at
            # once when a stage before evaluate is to run (a first run, new data, other params: known without the
            # store), else after the store has told whether anything is to run.
            stale: list[str] = []
            look = not if_changed and any(StagePaths.from_params(params).stamps_dir.glob("*.json"))
            current, tracking = None, False
            local = up_to_date(params, stale, local_only=True) if look else None
            if local is not None:  # the data stages and training are current: the store tells the rest
                configure_tracking(params)
                tracking = True
                current = _current_run(params, params_file, overrides, experiment, stale, known=local)
            if current is not None:
                result = current
            else:
                prefect_server.start_early()
                from flows.retrain import retrain

                if not tracking:
                    configure_tracking(params)
                prefect_server.wait_ready(warm=_warm_imports(params, stale[0] if stale else None))
                with prefect_server.flow_settings():
                    result = retrain(  # type: ignore[assignment]
                        params_file=params_file,
                        overrides=overrides or [],
                        skip_if_unchanged=if_changed,
                        experiment=experiment,
                    )
    if result.get("skipped"):
        from pipelines import progress

        if progress.mode() == "json":
            progress.emit("run_skipped", seconds=round(time.perf_counter() - started, 1), reason=result["reason"])
            return
        echo(f"nlpops run skipped after {time.perf_counter() - started:.1f} s: {result['reason']}")
        return
    _print_run_report(params, result, time.perf_counter() - started, named=bool(experiment or overrides))


def _current_run(
    params: Params,
    params_file: str,
    overrides: list[str] | None,
    experiment: str | None,
    stale: list[str] | None = None,
    known: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Every stage current (pipelines.stage_cache.up_to_date, going on from `known`; tracking configured): say so
    per stage, keep dvc.lock in step; else None (and `stale` gets the first stage that would run)."""
    from pipelines import progress
    from pipelines.stage_cache import cache_reason, keep_dvc_lock_in_step, syncs_dvc_lock, up_to_date

    current = up_to_date(params, stale, known=known)
    if current is None:
        return None
    for stage, fingerprint in current.pop("fingerprints").items():
        progress.stage_cached(stage, cache_reason(stage, fingerprint))
    if syncs_dvc_lock(params_file, overrides, experiment):
        current["results"]["dvc"] = keep_dvc_lock_in_step(params)
    return current


def _warm_imports(params: Params, first: str | None) -> list[Any]:
    """What the stages from `first` on (None: all) import first, in stage order, for the wait on the Prefect server:
    Great Expectations (validate), the tokenizer classes (tokenise), torch and the model's transformers module
    (train). Each step is an import the stage would do anyway, so a step the server's readiness cuts short moves
    work earlier and adds none."""
    import importlib

    order = list(STAGE_ORDER)
    start = order.index(first) if first in order else 0
    steps: list[Any] = []
    if start <= order.index("validate"):
        from pipelines.data.validate import _import_gx

        steps.append(_import_gx)
    if start <= order.index("tokenise"):
        steps.append(lambda: importlib.import_module("transformers.models.auto.tokenization_auto"))
    if start <= order.index("train"):
        steps.append(lambda: importlib.import_module("torch"))
        steps.append(lambda: importlib.import_module("transformers.modeling_utils"))
        model_type = _model_type(params)
        if model_type:
            steps.append(lambda: importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}"))
    return steps


def _model_type(params: Params) -> str | None:
    """config.json's model_type of model.path (the bundled MiniLM when empty), or None."""
    try:
        from pipelines.pretrained import bundled_model_path

        folder = Path(params.model.path) if params.model.path else bundled_model_path()
        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
    except Exception:
        return None
    return str(model_type).replace("-", "_") if model_type else None


def _print_run_report(params: Params, result: dict[str, Any], seconds: float, named: bool = False) -> None:
    """The run's summary; `named`: run with -e or --set, so the card hint names the model."""
    states, res = result["states"], result["results"]
    cached = [s for s, state in states.items() if state == "Cached"]
    ev, reg, tr, ex = res["evaluate"], res["register"], res["train"], res["export"]
    clean = res["clean"]
    rows: list[tuple[str, str]] = []
    rows.append(("data", f"{params.data.path}: {clean.get('rows_in')} rows in, splits {clean.get('splits')}"))
    rows.append(
        ("training", f"best epoch {tr['best_epoch']}/{tr['epochs_run']}, {tr['train_seconds']} s, run {tr['run_id']}")
    )
    shown = "  ".join(f"{k} {v:.4f}" for k, v in ev.items() if isinstance(v, float))
    rows.append(("test", f"{shown}  ({ev['test_rows']} rows)"))
    gate = reg.get("gate") or ev["gate"]  # the final decision (with parity and latency) is made at register
    rows.append(("gate", f"{'PASSED' if gate['passed'] else 'FAILED'}: " + "; ".join(gate.get("reasons") or [])))
    rows.append(("onnx", f"{ex['onnx_path']} (parity max abs diff {ex['max_abs_diff']:.2e} ≤ {ex['atol']})"))
    aliases = f"'{params.register_.challenger_alias}'"
    if reg["promoted"]:
        aliases += f" and '{params.register_.champion_alias}'"
    champion = f"champion is v{reg['champion']}" if reg["champion"] else "no champion yet"
    rows.append(("registry", f"{reg['name']} v{reg['version']} alias {aliases}; {champion}"))
    report = res.get("report") or {}
    if report.get("report"):
        rows.append(("report", str(report["report"])))
    if report.get("card"):
        model = f" --model {reg['name']}" if named else ""
        rows.append(("card", f"{report['card']} (nlpops models card {reg['version']}{model})"))
    from pipelines.redact import redact_url
    from pipelines.tracking import tracking_uri

    rows.append(("tracking", redact_url(tracking_uri(params))))
    if "dvc" in res:
        rows.append(("dvc", str(res["dvc"])))
    from pipelines import progress

    if progress.mode() == "json":
        progress.emit("run_finished", seconds=round(seconds, 1), cached=cached, summary=dict(rows))
        return
    echo("")
    echo(f"nlpops run finished in {seconds:.1f} s" + (f" (cached stages: {', '.join(cached)})" if cached else ""))
    for key, text in rows:
        echo(f"  {key:<9} {text}")


def predict(
    text: str | None = typer.Argument(None, help="Input text; omit to read one input per line from --file or stdin."),
    pair: str | None = typer.Option(None, "--pair", help="Second text, for sentence-pair models."),
    question: str | None = typer.Option(None, "--question", help="Question answering: the question (with --context)."),
    context: str | None = typer.Option(None, "--context", help="Question answering: the context (with --question)."),
    file: Path | None = typer.Option(None, "--file", "-f", help="File with one input per line (TAB separates a pair)."),
    alias: str = typer.Option("champion", "--alias", help="Registry alias to load."),
    version: str | None = typer.Option(None, "--version", help="Registered version (overrides --alias)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object per input."),
    model: str | None = ModelOpt,
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Predict with a registered model's ONNX runtime (the champion by default), whatever its task."""
    from pipelines.predict import load_registered_runtime, split_pairs

    params = setup(params_file, overrides, verbose, model, experiment)
    if (question is None) != (context is None):
        raise NlpopsError("predict: --question and --context go together (question answering)")
    if question is not None and context is not None:
        items: list[Any] = [{"question": question, "context": context}]
    elif text is not None:
        items = [(text, pair)] if pair is not None else [text]
    else:
        source = file.read_text(encoding="utf-8") if file else sys.stdin.read()
        items = split_pairs([line for line in source.splitlines() if line.strip()])
    if not items:
        raise NlpopsError("predict: no input given (pass TEXT, --file or lines on stdin)")
    runtime, label = load_registered_runtime(params, alias=alias, version=version)
    try:
        results = runtime.predict(items)
    except ValueError as exc:
        raise NlpopsError(f"predict: {exc}") from None
    for item, result in zip(items, results, strict=True):
        if as_json:
            given = {"text": item} if isinstance(item, str) else {"input": item}
            echo(json.dumps({**given, **result, "model": label}, default=str))
        else:
            echo(runtime.format_result(result))


@data_app.command("add")
def data_add(
    path: Path = typer.Argument(..., help="Data file to version."),
    dest: Path = typer.Option(Path("data/raw"), "--dest", help="Folder inside the repo."),
    verbose: bool = VerboseOpt,
) -> None:
    """Copy a data file into data/raw/ and version it with DVC."""
    state.verbose = verbose
    from pipelines.dvc_sync import add_data

    out = add_data(path, dest)
    echo(f"{out} is now tracked by DVC ({out}.dvc); commit the .dvc file with git")


def dag_command(
    write_dvc: bool = typer.Option(False, "--write-dvc", help="Write dvc.yaml generated from the stage table."),
    params_file: str = ParamsOpt,
    verbose: bool = VerboseOpt,
) -> None:
    """Print the stage table (stages, params sections, inputs, outputs); --write-dvc regenerates dvc.yaml."""
    from pipelines.config import load_params
    from pipelines.dag import STAGES, render_dvc_yaml

    state.verbose = verbose
    params = load_params(params_file)
    if write_dvc:
        Path("dvc.yaml").write_text(render_dvc_yaml(params), encoding="utf-8")
        echo("dvc.yaml written from pipelines/dag.py")
        return
    for name, spec in STAGES.items():
        echo(f"{name:<9} params {', '.join(spec.params)}; code {', '.join(spec.code_modules(params))}")


def params_command(
    params_file: str = ParamsOpt,
    overrides: list[str] = SetOpt,
    experiment: str | None = ExperimentOpt,
    write: bool = typer.Option(
        False,
        "--write",
        help="Write them over the params file (comments are not kept): how `dvc exp run` runs -e NAME.",
    ),
    verbose: bool = VerboseOpt,
) -> None:
    """Print the params a run reads: params.yaml, the named experiment (-e) laid over it, --set on top."""
    import yaml

    from pipelines.config import raw_params

    state.verbose = verbose
    text = yaml.safe_dump(raw_params(params_file, overrides, experiment), sort_keys=False, allow_unicode=True)
    if not write:
        echo(text.rstrip("\n"))
        return
    Path(params_file).write_text(text, encoding="utf-8")
    changed = f"experiment {experiment!r}" if experiment else "the overrides"
    echo(f"{params_file}: {changed} written in (`git checkout {params_file}` restores it)")


def _train_command():
    """`nlpops train` also takes --nproc N (train.processes: the loop under torchrun, pipelines/distributed.py)."""
    stage_command = _stage_command("train")

    def command(
        params_file: str = ParamsOpt,
        overrides: list[str] = SetOpt,
        experiment: str | None = ExperimentOpt,
        nproc: int | None = typer.Option(
            None, "--nproc", min=1, help="Training processes on this host (torchrun + DDP); = --set train.processes=N."
        ),
        verbose: bool = VerboseOpt,
        quiet: bool = QuietOpt,
        log_format: str | None = LogFormatOpt,
    ) -> None:
        extra = [f"train.processes={nproc}"] if nproc else []
        stage_command(params_file, [*(overrides or []), *extra], experiment, verbose, quiet, log_format)

    command.__doc__ = stage_command.__doc__
    return command


def add_commands(app: typer.Typer) -> None:
    for stage in STAGE_ORDER:
        command = _train_command() if stage == "train" else _stage_command(stage)
        app.command(stage, help=STAGE_HELP.get(stage))(command)
    app.command("run")(run_flow)
    app.command("predict")(predict)
    app.command("dag")(dag_command)
    app.command("params")(params_command)
    app.add_typer(data_app, name="data")
