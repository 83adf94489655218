"""export: the task's ONNX graph, its parity on real test inputs and its batch-1 latency through the runtime."""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import Params
from pipelines.errors import ParityError, StageInputError
from pipelines.paths import StagePaths


def run_export(params: Params) -> dict[str, Any]:
    from pipelines.export_onnx import export_onnx
    from pipelines.tasks.catalog import get_task
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    from pipelines.stores import training_summary_on_store

    train_summary = training_summary_on_store(params)
    if not (paths.model_dir / "config.json").is_file():
        raise StageInputError(f"{paths.model_dir}: no trained model; run `nlpops train` first")
    configure_tracking(params)
    try:
        task = get_task(params)
        parity_rows = paths.clean_split(task.spec.parity_split)
        from pipelines.onnx_cache import machine_cache_dir

        cache = machine_cache_dir() if params.export.graph_cache else None
        result = export_onnx(paths.model_dir, parity_rows, paths.export_dir, params.export, task, cache)
    except ParityError:
        _log_parity(train_summary["run_id"], paths, passed=False)
        raise
    from pipelines.provenance import write_export_record  # which run's model this ONNX file is

    write_export_record(paths, train_summary["run_id"])
    _log_parity(train_summary["run_id"], paths, passed=True)
    return result


def _log_parity(run_id: str, paths: StagePaths, passed: bool) -> None:
    import mlflow

    with mlflow.start_run(run_id=run_id):
        mlflow.set_tag("onnx.parity_passed", str(passed).lower())
        if paths.parity_report.is_file():
            parity = json.loads(paths.parity_report.read_text())
            mlflow.log_metric("onnx_max_abs_diff", float(parity.get("max_abs_diff", float("nan"))))
            graph, int8 = parity.get("graph") or {}, parity.get("int8") or {}
            mlflow.set_tag("onnx.precision", str(graph.get("precision", "fp32")))
            mlflow.set_tag("onnx.fused_ops", json.dumps(graph.get("fused_ops") or {}, sort_keys=True))
            if "drop_points" in int8:  # the INT8 gate ran
                mlflow.log_metric("onnx_int8_drop_points", float(int8["drop_points"]))
                mlflow.log_metric("onnx_int8_agreement", float(int8["agreement"]))
            mlflow.log_artifact(str(paths.parity_report), artifact_path="export")
