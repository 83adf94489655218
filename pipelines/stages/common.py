"""What the stage modules share: JSON summaries, failed-run records, data-quality logging, lineage tags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.errors import StageInputError
from pipelines.hashing import file_digest
from pipelines.paths import StagePaths
from pipelines.redact import redact_settings, redact_text
from pipelines.schema import stable_hash


def read_json(path: Path, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise StageInputError(f"{path}: missing; run `nlpops {stage}` (or `nlpops run`) first")
    return json.loads(path.read_text())


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str))


def label_map(paths: StagePaths) -> dict[int, str]:
    raw = read_json(paths.label_map, "clean")
    return {int(k): v for k, v in (raw.get("id2label") or {}).items()}


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
    with mlflow.start_run(run_name=f"failed-{stage}"):
        mlflow.set_tags({"nlpops.failed_stage": stage, "nlpops.error": redact_text(message)[:4000]})
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


def log_data_quality(params: Params, paths: StagePaths) -> None:
    """Into the active MLflow run: the Data Docs and the clean stage's counts (quarantine, duplicates, leakage)."""
    import mlflow

    from pipelines.tasks.catalog import get_task

    if paths.data_docs.is_dir():
        mlflow.log_artifacts(str(paths.data_docs), artifact_path="data/data_docs")
    if paths.clean_summary.is_file():
        summary = json.loads(paths.clean_summary.read_text())
        mlflow.log_metrics(get_task(params).data_quality_metrics(summary))
    quarantine = paths.clean_dir / "quarantine.parquet"
    if quarantine.is_file():
        mlflow.log_artifact(str(quarantine), artifact_path="data")


def raw_file_records(params: Params, clean_summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per raw input file the run read: role, path, md5 (DVC's when tracked), bytes, rows read."""
    from pipelines.lineage import data_version

    rows_by_path = {str(i.get("path")): i.get("rows_in") for i in clean_summary.get("inputs") or []}
    records = []
    roles = (("data", params.data.path), ("validation", params.data.validation_path), ("test", params.data.test_path))
    for role, path in roles:
        if not path:
            continue
        version = data_version(path)
        file = Path(path)
        records.append(
            {
                "role": role,
                "path": str(path),
                "md5": version.get("md5"),
                "dvc_tracked": bool(version.get("dvc_tracked")),
                "bytes": file.stat().st_size if file.is_file() else None,
                "rows": rows_by_path.get(str(path)),
            }
        )
    return records


def lineage_tags(params: Params, paths: StagePaths) -> dict[str, str]:
    """The facts a registered version is audited against: every raw file's hash, the cleaned and tokenised data,
    the commit, params and code hashes, the seed and the library versions."""
    from pipelines.dag import pipeline_code_digest
    from pipelines.lineage import data_version, git_state, package_versions

    data = data_version(params.data.path)
    git = git_state()
    clean = read_json(paths.clean_summary, "clean")
    tokenised = read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    tags = {
        "task.type": params.task.type,
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
        "code.sha256": pipeline_code_digest(params),
        "train.seed": str(params.train.seed),
    }
    tags["data.files"] = json.dumps(raw_file_records(params, clean), separators=(",", ":"))[:4900]
    tags.update({f"version.{k}": v for k, v in package_versions().items()})
    from pipelines.dvc_experiment import experiment_tags

    tags.update(experiment_tags())  # dvc.exp_name / dvc.exp_baseline_rev inside `dvc exp run`
    return redact_settings(tags)  # these go on the run and on the registered version
