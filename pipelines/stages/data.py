"""validate, clean and tokenise: the task reads, checks, cleans and tokenises its data; no MLflow run yet."""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import Params
from pipelines.errors import DataValidationError, StageInputError
from pipelines.paths import SPLITS, StagePaths
from pipelines.stages.common import read_json, record_failed_run


def run_validate(params: Params) -> dict[str, Any]:
    from pipelines import progress
    from pipelines.tasks.catalog import get_task

    paths = StagePaths.from_params(params)
    try:
        with progress.track("checked", unit="rows", stage="validate", ambient=True):
            return get_task(params).validate_data(paths.validation_report, paths.data_docs)
    except DataValidationError as exc:
        record_failed_run(params, "validate", str(exc), exc.report_path, [paths.data_docs])
        raise


def run_clean(params: Params) -> dict[str, Any]:
    from pipelines.tasks.catalog import get_task

    paths = StagePaths.from_params(params)
    read_json(paths.validation_report, "validate")
    task = get_task(params)
    try:
        return task.clean_data(paths.clean_dir)
    except DataValidationError as exc:  # too many rows quarantined
        summary = json.loads(paths.clean_summary.read_text()) if paths.clean_summary.is_file() else {}
        extra = [paths.clean_summary, paths.data_docs]
        record_failed_run(params, "clean", str(exc), exc.report_path, extra, task.data_quality_metrics(summary))
        raise


def run_tokenise(params: Params) -> dict[str, Any]:
    from pipelines.pretrained import resolve_model_path
    from pipelines.tasks.catalog import get_task
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
        get_task(params),
    )
