"""train: fine-tune in an MLflow run (new, or the one given); logs params, lineage, per-epoch metrics."""

from __future__ import annotations

from typing import Any

from pipelines.config import Params
from pipelines.paths import StagePaths
from pipelines.redact import redact_settings
from pipelines.stages.common import label_map, lineage_tags, log_data_quality, read_json, write_json


def run_train(params: Params, run_id: str | None = None) -> dict[str, Any]:
    from pipelines import distributed

    if distributed.should_launch(params.train.processes):  # train.processes > 1: this stage on torchrun ranks
        return distributed.launch_train_stage(params, run_id)
    import mlflow
    import pandas as pd

    from pipelines.pretrained import resolve_model_path
    from pipelines.tasks.catalog import get_task
    from pipelines.tracking import configure_tracking, flatten
    from pipelines.train import train_model

    paths = StagePaths.from_params(params)
    manifest = read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    id2label = label_map(paths)
    model_path = resolve_model_path(params.model)
    task = get_task(params)
    val_frame = pd.read_parquet(paths.clean_split("validation"))
    configure_tracking(params)
    tags = lineage_tags(params, paths)
    with mlflow.start_run(run_id=run_id, run_name=None if run_id else "train") as run:
        mlflow.log_params(redact_settings(flatten("", params.to_dict())))
        mlflow.set_tags(redact_settings({**tags, "model.base": str(model_path)}))
        for report in (paths.validation_report, paths.clean_summary, paths.label_map):
            if report.is_file():
                mlflow.log_artifact(str(report), artifact_path="data")
        log_data_quality(params, paths)
        mlflow.log_dict(manifest, "data/tokenise_manifest.json")

        from pipelines import progress

        features = (manifest.get("splits") or {}).get("validation", {}).get("features")
        progress.training_validation(features, "rows" if features == len(val_frame) else "windows")
        metric = params.stopping_metric
        best: list[float] = []

        def log_epoch(epoch: int, record: dict[str, float]) -> None:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            value = record.get("val_loss" if metric == "loss" else f"val_{metric}")
            better = value is not None and (not best or (value < best[0] if metric == "loss" else value > best[0]))
            if better and value is not None:
                best[:] = [float(value)]
            progress.epoch_end(epoch, record, best=better)

        summary = train_model(
            paths.tokenised_dir,
            id2label,
            model_path,
            paths.model_dir,
            params.train,
            params.model,
            task,
            manifest["pad_token_id"],
            on_epoch_end=log_epoch,
            checkpoint_dir=paths.checkpoint_dir,
            val_frame=val_frame,
            metric=metric,
        )
        summary["run_id"] = run.info.run_id
        summary["base_model"] = str(model_path)
        from pipelines.stores import store_identity

        summary["tracking_store"] = store_identity(params)  # a later move to another store re-logs (stores.py)
        mlflow.log_metrics(
            {
                "best_epoch": summary["best_epoch"],
                "epochs_run": summary["epochs_run"],
                "train_seconds": summary["train_seconds"],
                "trainable_params": summary["trainable_params"],
            }
        )
        if summary.get("recipe"):
            mlflow.set_tags(
                {
                    "train.recipe": str(summary["recipe"]),
                    "train.recipe_reason": str(summary.get("recipe_reason", ""))[:4000],
                    **{f"recipe.{k}": str(v) for k, v in (summary.get("recipe_applied") or {}).items()},
                }
            )
        write_json(paths.train_history, {"history": summary["history"]})
        from pipelines.provenance import train_record  # which run made the model (register checks the chain)

        summary["provenance"] = train_record(paths, run.info.run_id, tags)
        write_json(paths.train_summary, summary)
        mlflow.log_artifact(str(paths.train_history), artifact_path="train")
    return summary
