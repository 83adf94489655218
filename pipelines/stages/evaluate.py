"""evaluate: test-split metrics, the task's views and slices, then the (preliminary) gate against the champion.

The champion is always compared like for like: on the same test split and slices it brings its recorded metrics;
otherwise its registered ONNX model is re-scored on the current split through its task's runtime.
"""

from __future__ import annotations

import copy
import json
import shutil
from typing import Any

from pipelines.config import Params
from pipelines.hashing import file_digest
from pipelines.paths import StagePaths
from pipelines.stages.common import label_map, read_json, write_json


def champion_reference(
    params: Params, test_sha256: str, run_id: str, membership: str | None = None
) -> tuple[dict[str, Any] | None, str | None, str]:
    """The champion's metrics (with slices) on *this* test split, with how they were obtained."""
    from pipelines.registry import alias_version

    champion = alias_version(params.project.registered_model, params.register_.champion_alias)
    if champion is None:
        return None, None, "no champion"
    if champion.run_id == run_id:
        return None, None, "the champion is this run's own model"
    tags = champion.tags or {}
    metric = params.gate_metric
    if tags.get("task.type", params.task.type) != params.task.type:
        return None, str(champion.version), f"champion is a {tags['task.type']} model: not comparable"
    same_split = tags.get("data.test_sha256") == test_sha256
    if same_split and tags.get(f"metric.{metric}") is not None:
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
    key = (_store_uri(), champion.name, str(champion.version), champion.run_id, test_sha256, membership)
    if key not in _RESCORED:  # register re-checks the champion under the promotion lock: score it once per process
        _RESCORED.clear()
        _RESCORED[key] = score_champion(params, champion)
    return copy.deepcopy(_RESCORED[key]), str(champion.version), "champion re-scored on the current test split"


# The last champion re-scoring of this process: a registered version's model never changes, and the key holds the
# test split's digest, so the flow's register stage reuses what its evaluate stage computed moments before.
_RESCORED: dict[tuple[str | None, ...], dict[str, Any] | None] = {}


def _store_uri() -> str:
    import mlflow

    return str(mlflow.get_tracking_uri())


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
    """The champion's registered ONNX model scored on the current test split by its task's runtime."""
    import pandas as pd

    from pipelines.serving import load_runtime
    from pipelines.tasks.catalog import get_task

    paths = StagePaths.from_params(params)
    id2label = label_map(paths)
    from pipelines.predict import registered_export_dir

    runtime = load_runtime(registered_export_dir(params, champion.name, str(champion.version)))
    task = get_task(params)
    test = pd.read_parquet(paths.clean_split("test"))
    predictions = task.predictions_from_runtime(runtime.predict(task.runtime_inputs(test)), id2label)
    if predictions is None:
        return None
    metrics = task.score(predictions, test, id2label)
    rows = _tokenised_rows(paths)
    metrics["slices"], _, _ = task.slices(predictions, test, rows, id2label)
    return metrics


def _tokenised_rows(paths: StagePaths) -> dict[str, list] | None:
    from pipelines.train import read_tokenised_split

    path = paths.tokenised_dir / "test.parquet"
    return read_tokenised_split(path) if path.is_file() else None


def run_evaluate(params: Params) -> dict[str, Any]:
    import mlflow
    import pandas as pd

    from pipelines.evaluate import decide_gate, membership_digest, write_metrics
    from pipelines.tasks.catalog import get_task
    from pipelines.tracking import configure_tracking
    from pipelines.train import read_tokenised_split

    paths = StagePaths.from_params(params)
    from pipelines.stores import training_summary_on_store

    train_summary = training_summary_on_store(params)  # re-logged or adopted there when the store moved
    manifest = read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    id2label = label_map(paths)
    task = get_task(params)
    model = task.load_trained(paths.model_dir)
    test_rows = read_tokenised_split(paths.tokenised_dir / "test.parquet")
    test = pd.read_parquet(paths.clean_split("test"))
    from pipelines import progress

    features = len(test_rows["input_ids"])
    unit = "rows" if features == len(test) else "windows"  # long inputs are split into several windows
    with progress.track("test split", total=features, unit=unit, stage="evaluate", ambient=True):
        predictions = task.predict(model, test_rows, test, params.train.eval_batch_size, manifest["pad_token_id"])
    scores = task.score(predictions, test, id2label)
    write_metrics(scores, task.spec.metrics, paths.metrics)
    shutil.rmtree(paths.evaluation_views, ignore_errors=True)
    views = task.write_evaluation(scores, predictions, test, paths.evaluation_views)
    scored = task.confidences(predictions, test)
    if scored is not None and len(scored["confidence"]):  # the run report's score histogram and calibration
        from pipelines.evaluate import calibration_summary

        calibration = calibration_summary(scored["confidence"], scored["correct"], scored.get("unit", "examples"))
        write_json(paths.calibration, calibration)
        views = {**views, "calibration": paths.calibration}
    scores["slices"], members, notes = task.slices(predictions, test, test_rows, id2label)
    membership = membership_digest(members)
    write_json(paths.slices, {"slices": scores["slices"], "membership_sha256": membership, "notes": notes})
    configure_tracking(params)
    champion_metrics, champion_version, basis = champion_reference(
        params, file_digest(paths.clean_split("test")), train_summary["run_id"], membership
    )
    decision = decide_gate(scores, params.gate, champion_metrics, champion_version, metric=params.gate_metric)
    from pipelines.provenance import evaluate_record  # which run and files this gate judged

    gate = {
        **decision.to_dict(),
        "champion_basis": basis,
        "provenance": evaluate_record(paths, train_summary["run_id"]),
    }
    write_json(paths.gate, gate)
    with mlflow.start_run(run_id=train_summary["run_id"]):
        mlflow.log_metrics({f"test_{k}": v for k, v in task.metric_tags(scores).items()})
        for name, stats in scores["slices"].items():
            if stats.get("value") is not None:
                safe = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
                mlflow.log_metric(f"test_slice.{safe}", float(stats["value"]))
        for path in (paths.metrics, paths.gate, paths.slices, *views.values()):
            mlflow.log_artifact(str(path), artifact_path="evaluate")
        mlflow.set_tag("gate.metrics_passed", str(decision.passed).lower())
    return {
        **task.metric_tags(scores),
        "test_rows": scores.get("rows"),
        "gate": gate,
        "slice_notes": notes,
        "run_id": train_summary["run_id"],
    }
