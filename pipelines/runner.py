"""Run one stage: resolve its paths from params, call the pure stage function, track it in MLflow.

The CLI (`nlpops <stage>`, used by dvc.yaml) and the Prefect flow both call these functions, so the three
front-ends cannot drift apart. `STAGES` declares each stage's params sections, inputs, outputs and code,
the same facts dvc.yaml declares (a test keeps the two in step); Prefect's cache key is built from them.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.config import Params, stable_hash
from pipelines.errors import DataValidationError, ParityError, StageInputError
from pipelines.hashing import file_digest, source_digest
from pipelines.paths import SPLITS, StagePaths


@dataclass(frozen=True)
class StageSpec:
    name: str
    params: tuple[str, ...]
    deps: Callable[[Params, StagePaths], list[Path]]
    outs: Callable[[Params, StagePaths], list[Path]]
    code: tuple[str, ...]


def _raw_files(p: Params) -> list[Path]:
    return [Path(x) for x in (p.data.path, p.data.validation_path, p.data.test_path) if x]


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec(
            "validate",
            ("data", "validate"),
            lambda p, sp: [*_raw_files(p), Path(p.validate_.expectations_dir)],
            lambda p, sp: [sp.validation_report, _data_docs(sp)],
            ("pipelines.data.validate", "pipelines.data.load"),
        ),
        StageSpec(
            "clean",
            ("data", "clean"),
            lambda p, sp: [*_raw_files(p), sp.validation_report],
            lambda p, sp: [sp.clean_dir],
            ("pipelines.data.clean", "pipelines.data.load", "pipelines.data.validate"),
        ),
        StageSpec(
            "tokenise",
            ("tokenise", "model", "task"),
            lambda p, sp: [sp.clean_dir],
            lambda p, sp: [sp.tokenised_dir],
            ("pipelines.tokenise", "pipelines.tasks.text_classification"),
        ),
        StageSpec(
            "train",
            ("model", "train", "task"),
            lambda p, sp: [sp.tokenised_dir, sp.label_map],
            lambda p, sp: [sp.model_dir, sp.train_summary, sp.train_history],
            ("pipelines.train", "pipelines.finetuning", "pipelines.tasks.text_classification"),
        ),
        StageSpec(
            "evaluate",
            ("gate",),
            lambda p, sp: [sp.model_dir, sp.tokenised_dir / "test.parquet", sp.clean_split("test"), sp.label_map],
            lambda p, sp: [sp.metrics, sp.per_class, sp.gate, _slices_path(sp), sp.confusion_csv, sp.confusion_png],
            ("pipelines.evaluate", "pipelines.tasks.text_classification"),
        ),
        StageSpec(
            "export",
            ("export", "tokenise"),
            lambda p, sp: [sp.model_dir, sp.clean_split("test")],
            lambda p, sp: [sp.export_dir],
            ("pipelines.export_onnx",),
        ),
        StageSpec(
            "register",
            ("project", "gate", "register"),
            lambda p, sp: [sp.export_dir, sp.gate, sp.metrics, _slices_path(sp), sp.train_summary],
            lambda p, sp: [sp.registration],
            ("pipelines.registry", "pipelines.registry_lock", "pipelines.evaluate", "pipelines.serving"),
        ),
    )
}


def _path_digest(path: Path) -> str | None:
    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        from pipelines.hashing import tree_digest

        return tree_digest(path)
    return None


def stage_outputs_exist(params: Params, stage: str) -> bool:
    spec = STAGES[stage]
    return all(out.exists() for out in spec.outs(params, StagePaths.from_params(params)))


def stage_fingerprint(params: Params, stage: str, extra: dict[str, Any] | None = None) -> str:
    """Hash of a stage's params sections, input contents and code (plus extra facts such as the champion)."""
    spec = STAGES[stage]
    paths = StagePaths.from_params(params)
    return stable_hash(
        {
            "stage": stage,
            "params": {s: params.section(s) for s in spec.params},
            "deps": {str(d): _path_digest(d) for d in spec.deps(params, paths)},
            "code": source_digest("pipelines.runner", *spec.code),
            "extra": extra or {},
        }
    )


def _read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise StageInputError(f"{path}: missing; run `nlpops {stage}` (or `nlpops run`) first")
    return json.loads(path.read_text())


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def _label_map(paths: StagePaths) -> dict[int, str]:
    raw = _read_json(paths.label_map, "clean")
    return {int(k): v for k, v in raw["id2label"].items()}


# ---------------------------------------------------------------- data stages (no MLflow run yet)


def _data_docs(paths: StagePaths) -> Path:
    return paths.validate_dir / "data_docs"


def run_validate(params: Params) -> dict[str, Any]:
    from pipelines.data.validate import validate_data

    paths = StagePaths.from_params(params)
    try:
        return validate_data(params, paths.validation_report, _data_docs(paths))
    except DataValidationError as exc:
        record_failed_run(params, "validate", str(exc), exc.report_path, [_data_docs(paths)])
        raise


def run_clean(params: Params) -> dict[str, Any]:
    from pipelines.data.clean import clean_data, data_quality_metrics

    paths = StagePaths.from_params(params)
    _read_json(paths.validation_report, "validate")
    try:
        return clean_data(params, paths.clean_dir)
    except DataValidationError as exc:  # too many rows quarantined
        summary = json.loads(paths.clean_summary.read_text()) if paths.clean_summary.is_file() else {}
        extra = [paths.clean_summary, _data_docs(paths)]
        record_failed_run(params, "clean", str(exc), exc.report_path, extra, data_quality_metrics(summary))
        raise


def log_data_quality(paths: StagePaths) -> None:
    """Into the active MLflow run: the Data Docs and the clean stage's counts (quarantine, duplicates, leakage)."""
    import mlflow

    from pipelines.data.clean import data_quality_metrics

    if _data_docs(paths).is_dir():
        mlflow.log_artifacts(str(_data_docs(paths)), artifact_path="data/data_docs")
    if paths.clean_summary.is_file():
        mlflow.log_metrics(data_quality_metrics(json.loads(paths.clean_summary.read_text())))
    quarantine = paths.clean_dir / "quarantine.parquet"
    if quarantine.is_file():
        mlflow.log_artifact(str(quarantine), artifact_path="data")


def run_tokenise(params: Params) -> dict[str, Any]:
    from pipelines.pretrained import resolve_model_path
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits

    paths = StagePaths.from_params(params)
    for split in SPLITS:
        if not paths.clean_split(split).is_file():
            raise StageInputError(f"{paths.clean_split(split)}: missing; run `nlpops clean` first")
    return tokenise_splits(
        paths.clean_dir,
        resolve_model_path(params.model),
        paths.tokenised_dir,
        paths.tokenise_cache,
        params.tokenise,
        get_task(params.task.type),
    )


# ---------------------------------------------------------------- tracked stages


def record_failed_run(
    params: Params,
    stage: str,
    message: str,
    report: str | None = None,
    extra: list[Path] | None = None,
    metrics: dict[str, float] | None = None,
) -> None:
    """A run that stopped on bad data is still on record in MLflow, with the report that stopped it."""
    import mlflow

    from pipelines.tracking import configure_tracking

    configure_tracking(params)
    with mlflow.start_run(run_name=f"failed-{stage}") as run:
        mlflow.set_tags({"nlpops.failed_stage": stage, "nlpops.error": message[:4000]})
        if report and Path(report).is_file():
            mlflow.log_artifact(report, artifact_path=stage)
        for path in extra or []:
            if path.is_dir():
                mlflow.log_artifacts(str(path), artifact_path=f"{stage}/{path.name}")
            elif path.is_file():
                mlflow.log_artifact(str(path), artifact_path=stage)
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.end_run(status="FAILED")
        del run


def pipeline_code_digest() -> str:
    """sha256 of every stage's source: what a scheduled run compares to decide whether the code changed."""
    modules = {m for spec in STAGES.values() for m in spec.code}
    return source_digest("pipelines.runner", *modules)


def _lineage_tags(params: Params, paths: StagePaths) -> dict[str, str]:
    from pipelines.lineage import data_version, git_state, package_versions

    data = data_version(params.data.path)
    git = git_state()
    clean = _read_json(paths.clean_summary, "clean")
    tokenised = _read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    tags = {
        "data.path": str(params.data.path),
        "data.md5": str(data.get("md5")),
        "data.dvc_tracked": str(data.get("dvc_tracked")).lower(),
        "data.clean_sha256": stable_hash(clean.get("sha256", {})),
        "data.test_sha256": file_digest(paths.clean_split("test")),
        "data.validation_sha256": file_digest(paths.validation_report) if paths.validation_report.is_file() else "",
        "tokenise.cache_key": tokenised["cache_key"],
        "git.commit": git["commit"],
        "git.dirty": str(git["dirty"]).lower(),
        "params.hash": params.params_hash(),
        "code.sha256": pipeline_code_digest(),
        "train.seed": str(params.train.seed),
    }
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    return tags


def run_train(params: Params, run_id: str | None = None) -> dict[str, Any]:
    """Fine-tune in an MLflow run (new, or the one given); logs params, lineage, per-epoch metrics."""
    import mlflow

    from pipelines.pretrained import resolve_model_path
    from pipelines.tasks import get_task
    from pipelines.tracking import configure_tracking, flatten
    from pipelines.train import train_model

    paths = StagePaths.from_params(params)
    manifest = _read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    id2label = _label_map(paths)
    model_path = resolve_model_path(params.model)
    configure_tracking(params)
    tags = _lineage_tags(params, paths)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "train") as run:
        mlflow.log_params(flatten("", params.to_dict()))
        mlflow.set_tags({**tags, "model.base": str(model_path)})
        for report in (paths.validation_report, paths.clean_summary, paths.label_map):
            if report.is_file():
                mlflow.log_artifact(str(report), artifact_path="data")
        log_data_quality(paths)
        mlflow.log_dict(manifest, "data/tokenise_manifest.json")

        def log_epoch(epoch: int, record: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)

        summary = train_model(
            paths.tokenised_dir,
            id2label,
            model_path,
            paths.model_dir,
            params.train,
            params.model,
            get_task(params.task.type),
            manifest["pad_token_id"],
            on_epoch_end=log_epoch,
            checkpoint_dir=paths.state / "checkpoints" / "train",
        )
        summary["run_id"] = run.info.run_id
        summary["base_model"] = str(model_path)
        mlflow.log_metrics(
            {
                "best_epoch": summary["best_epoch"],
                "epochs_run": summary["epochs_run"],
                "train_seconds": summary["train_seconds"],
                "trainable_params": summary["trainable_params"],
            }
        )
        _write_json(paths.train_history, {"history": summary["history"]})
        _write_json(paths.train_summary, summary)
        mlflow.log_artifact(str(paths.train_history), artifact_path="train")
    return summary


def _slices_path(paths: StagePaths) -> Path:
    return paths.evaluate_dir / "slices.json"


def test_slice_membership(params: Params, paths: StagePaths) -> tuple[dict[str, list[int]], str, list[str]]:
    """Rows of each gate slice of the current test split, their digest, and notes (e.g. a missing slice column)."""
    import pandas as pd

    from pipelines.evaluate import membership_digest, slice_membership

    gate = params.gate
    test = pd.read_parquet(paths.clean_split("test"))
    notes = []
    if gate.length_slice_unit == "tokens":
        tokenised = paths.tokenised_dir / "test.parquet"
        lengths = pd.read_parquet(tokenised, columns=["length"])["length"].tolist() if tokenised.is_file() else None
    else:
        lengths = test["text"].astype(str).str.len()
        if "text_pair" in test.columns:
            lengths = lengths + test["text_pair"].astype(str).str.len()
        lengths = lengths.tolist()
    if lengths is not None and len(lengths) != len(test):
        lengths = None
        notes.append("tokenised test split does not match the cleaned one: no length slices")
    groups = None
    column = params.data.slice_column  # clean carries it into the splits as column 'slice'
    if column:
        if "slice" in test.columns:
            groups = test["slice"].tolist()
        else:
            notes.append(f"data.slice_column {column!r}: no 'slice' column in {paths.clean_split('test')}")
    members = slice_membership(
        test["label"].tolist(), _label_map(paths), lengths, gate.long_text_threshold, groups, column
    )
    return members, membership_digest(members), notes


def champion_reference(
    params: Params, test_sha256: str, run_id: str, membership: str | None = None
) -> tuple[dict[str, Any] | None, str | None, str]:
    """The champion's metrics (with slices) on *this* test split, with how they were obtained.

    Same test split and slice rows as when it was registered → its recorded metrics; otherwise its ONNX model is
    scored on the current split, so the comparison is always like for like.
    """
    from pipelines.registry import alias_version

    champion = alias_version(params.project.registered_model, params.register_.champion_alias)
    if champion is None:
        return None, None, "no champion"
    if champion.run_id == run_id:
        return None, None, "the champion is this run's own model"
    tags = champion.tags or {}
    same_split = tags.get("data.test_sha256") == test_sha256
    if same_split and tags.get(f"metric.{params.gate.metric}") is not None:
        metrics: dict[str, Any] = {
            k.removeprefix("metric."): float(v)
            for k, v in tags.items()
            if k.startswith("metric.") and k != "metric.slices"
        }
        if membership is None or tags.get("slices.membership") != membership:
            return metrics, str(champion.version), "champion's recorded metrics on the same test split (no slices)"
        slices = _recorded_slices(champion, tags)
        if slices is not None:
            metrics["slices"] = slices
            return metrics, str(champion.version), "champion's recorded metrics and slices on the same test split"
    return score_champion(params, champion), str(champion.version), "champion re-scored on the current test split"


def _recorded_slices(champion: Any, tags: dict[str, str]) -> dict[str, Any] | None:
    if tags.get("metric.slices"):
        try:
            recorded = json.loads(tags["metric.slices"]).items()
            return {k: {"value": v[0], "rows": v[1], "metric": v[2]} for k, v in recorded}
        except (json.JSONDecodeError, IndexError, TypeError):
            pass
    try:
        import mlflow

        return mlflow.artifacts.load_dict(f"runs:/{champion.run_id}/evaluate/slices.json")["slices"]
    except Exception:
        return None


def score_champion(params: Params, champion: Any) -> dict[str, Any] | None:
    import mlflow
    import numpy as np
    import pandas as pd

    from pipelines.evaluate import score_slices
    from pipelines.serving import OnnxTextClassifier
    from pipelines.tasks.text_classification import classification_metrics

    paths = StagePaths.from_params(params)
    id2label = _label_map(paths)
    target = paths.state / "cache" / "champions" / str(champion.version)
    if not target.exists():
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{champion.name}/{champion.version}")
        export = next(Path(local).rglob("serving.json")).parent
        shutil.copytree(export, target)
    classifier = OnnxTextClassifier.from_dir(target)
    test = pd.read_parquet(paths.clean_split("test"))
    pairs = test["text_pair"].tolist() if "text_pair" in test.columns else None
    predicted = classifier.predict(test["text"].tolist(), pairs)
    label2id = {v: k for k, v in id2label.items()}
    if any(p["label"] not in label2id for p in predicted):
        return None  # a champion with another label set cannot be compared
    ids = np.asarray([label2id[p["label"]] for p in predicted])
    labels = test["label"].to_numpy()
    metrics = classification_metrics(ids, labels, id2label)
    members, _, _ = test_slice_membership(params, paths)
    metrics["slices"] = score_slices(ids, labels, members, id2label, params.gate.metric)
    return metrics


def run_evaluate(params: Params) -> dict[str, Any]:
    """Test-split metrics, slices and plots, then the (preliminary) gate against the current champion."""
    import mlflow

    from pipelines.evaluate import decide_gate, score_slices, write_evaluation
    from pipelines.tasks import get_task
    from pipelines.tracking import configure_tracking
    from pipelines.train import load_pretrained_checkpoint, predict_logits, read_tokenised_split

    paths = StagePaths.from_params(params)
    train_summary = _read_json(paths.train_summary, "train")
    manifest = _read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    id2label = _label_map(paths)
    task = get_task(params.task.type)
    model = load_pretrained_checkpoint(paths.model_dir, task)
    test_rows = read_tokenised_split(paths.tokenised_dir / "test.parquet")
    logits = predict_logits(model, task, test_rows, params.train.eval_batch_size, manifest["pad_token_id"])
    labels = test_rows["label"]
    import numpy as np

    scores = task.compute_metrics(logits, np.asarray(labels), id2label)
    files = write_evaluation(scores, logits.argmax(axis=-1), np.asarray(labels), paths.evaluate_dir)
    members, membership, notes = test_slice_membership(params, paths)
    scores["slices"] = score_slices(logits.argmax(axis=-1), np.asarray(labels), members, id2label, params.gate.metric)
    _write_json(_slices_path(paths), {"slices": scores["slices"], "membership_sha256": membership, "notes": notes})
    configure_tracking(params)
    champion_metrics, champion_version, basis = champion_reference(
        params, file_digest(paths.clean_split("test")), train_summary["run_id"], membership
    )
    decision = decide_gate(scores, params.gate, champion_metrics, champion_version)
    gate = {**decision.to_dict(), "champion_basis": basis}
    _write_json(paths.gate, gate)
    with mlflow.start_run(run_id=train_summary["run_id"]):
        mlflow.log_metrics({"test_accuracy": scores["accuracy"], "test_macro_f1": scores["macro_f1"]})
        for name, stats in scores["per_class"].items():
            safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
            mlflow.log_metric(f"test_f1.{safe}", stats["f1"])
        for path in (*files.values(), paths.gate, _slices_path(paths)):
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        mlflow.set_tag("gate.metrics_passed", str(decision.passed).lower())
    return {
        "accuracy": scores["accuracy"],
        "macro_f1": scores["macro_f1"],
        "test_rows": scores["rows"],
        "gate": gate,
        "slice_notes": notes,
        "run_id": train_summary["run_id"],
    }


def run_export(params: Params) -> dict[str, Any]:

    from pipelines.export_onnx import export_onnx
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    train_summary = _read_json(paths.train_summary, "train")
    if not (paths.model_dir / "config.json").is_file():
        raise StageInputError(f"{paths.model_dir}: no trained model; run `nlpops train` first")
    configure_tracking(params)
    try:
        result = export_onnx(
            paths.model_dir, paths.clean_split("test"), paths.export_dir, params.export, params.tokenise.max_length
        )
    except ParityError:
        _log_parity(train_summary["run_id"], paths, passed=False)
        raise
    _log_parity(train_summary["run_id"], paths, passed=True)
    return result


def _log_parity(run_id: str, paths: StagePaths, passed: bool) -> None:
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag("onnx.parity_passed", str(passed).lower())
        if paths.parity_report.is_file():
            parity = json.loads(paths.parity_report.read_text())
            mlflow.log_metric("onnx_max_abs_diff", float(parity.get("max_abs_diff", float("nan"))))
            mlflow.log_artifact(str(paths.parity_report), artifact_path="export")


def _raise_if_registry_unreachable(params: Params, exc: Exception) -> None:
    """The registry went away mid-registration (after the client's retries): one line, and how to finish."""
    from pipelines.errors import NlpopsError, ServiceError, first_line
    from pipelines.tracking import is_unreachable, tracking_uri

    if not isinstance(exc, NlpopsError) and is_unreachable(exc):
        raise ServiceError(
            f"registry at {tracking_uri(params)} unreachable during registration ({first_line(exc, 200)}); aliases "
            "were not moved; rerun `nlpops register` to finish (it reuses this run's version, never a second one)"
        ) from None


def run_register(params: Params) -> dict[str, Any]:
    """Register the exported model as challenger; the final gate (metrics, slices, parity, latency) is decided
    under the promotion lock against the champion of that moment, and champion moves only when it passed."""
    import mlflow

    from pipelines.evaluate import decide_gate
    from pipelines.registry import register_challenger
    from pipelines.registry_lock import LockSettings
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    train_summary = _read_json(paths.train_summary, "train")
    _read_json(paths.gate, "evaluate")
    parity = _read_json(paths.parity_report, "export")
    if not parity.get("passed"):
        raise ParityError(f"{paths.parity_report}: ONNX parity failed; nothing registered")
    configure_tracking(params)
    metrics = _read_json(paths.metrics, "evaluate")
    sliced = _read_json(_slices_path(paths), "evaluate")
    challenger = {**metrics, "slices": sliced.get("slices", {})}
    run_id = train_summary["run_id"]
    test_sha256 = file_digest(paths.clean_split("test"))
    compact_slices = json.dumps(
        {k: [v["value"], v["rows"], v["metric"]] for k, v in challenger["slices"].items()}, separators=(",", ":")
    )
    tags = _lineage_tags(params, paths)
    tags.update(
        {
            "run_id": run_id,
            "onnx.sha256": str(parity.get("onnx_sha256")),
            "onnx.parity_max_abs_diff": str(parity.get("max_abs_diff")),
            "onnx.latency_p95_ms": str(parity.get("latency_p95_ms")),
            "slices.membership": str(sliced.get("membership_sha256")),
            **{f"metric.{k}": str(v) for k, v in metrics.items() if k in ("accuracy", "macro_f1")},
        }
    )
    if len(compact_slices) <= 4900:  # else the champion's slices are read from its run artifact
        tags["metric.slices"] = compact_slices
    decided: dict[str, Any] = {}

    def decide(_champion: Any) -> Any:
        reference, version, basis = champion_reference(params, test_sha256, run_id, sliced.get("membership_sha256"))
        decision = decide_gate(challenger, params.gate, reference, version, parity, parity.get("latency_p95_ms"))
        decided.update(decision.to_dict(), champion_basis=basis)
        return decision

    def log_model() -> str:
        from pipelines.serving import log_onnx_pyfunc

        with mlflow.start_run(run_id=run_id):
            return log_onnx_pyfunc(paths.export_dir, name="model").model_uri

    try:
        result = register_challenger(
            params.project.registered_model,
            run_id,
            log_model,
            tags,
            decide,
            challenger_alias=params.register_.challenger_alias,
            champion_alias=params.register_.champion_alias,
            lock=LockSettings.from_params(params),
        )
    except Exception as exc:
        _raise_if_registry_unreachable(params, exc)
        raise
    if decided:  # a fresh decision (not a re-run of a version already decided): keep it on the run too
        result["gate"] = decided
        with mlflow.start_run(run_id=run_id):
            mlflow.log_dict(decided, "register/gate_decision.json")
            mlflow.set_tag("gate.passed", str(decided["passed"]).lower())
    gate = result.get("gate") or {}
    result["gate_passed"] = gate.get("passed")
    result["gate_reasons"] = gate.get("reasons") or gate.get("failed") or []
    _write_json(paths.registration, result)
    return result


STAGE_RUNNERS: dict[str, Callable[[Params], dict[str, Any]]] = {
    "validate": run_validate,
    "clean": run_clean,
    "tokenise": run_tokenise,
    "train": run_train,
    "evaluate": run_evaluate,
    "export": run_export,
    "register": run_register,
}
