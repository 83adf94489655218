"""report: the HTML run report and the registered version's model card, logged to the run and the version.

The last stage of the table: it reads what the other stages wrote (pipelines/report/build.py), writes
`<artifacts>/report/index.html`, `learning_curves.svg` (a DVC image plot) and `model_card.md`, logs the report to the
training run (`report/`) and the card as `model_card/README.md`, and tags the registered version with it
(`nlpops models card VERSION` prints it). A run that stops earlier still gets a partial report of what it did
(`write_partial_report`, called by the flow; local only, nothing is logged).
"""

from __future__ import annotations

import time
from typing import Any

from pipelines.config import Params
from pipelines.paths import StagePaths

REPORTED = ("validate", "clean", "tokenise", "train", "evaluate", "export", "register")


def _lineage(params: Params, paths: StagePaths, registration: dict[str, Any] | None) -> dict[str, str]:
    """The registered version's tags (what the version carries); else the run's lineage computed now."""
    if registration:
        try:
            from pipelines.registry import get_version

            tags = dict(get_version(registration["name"], str(registration["version"])).tags or {})
            if tags:
                return tags
        except Exception:
            pass
    try:
        from pipelines.stages.common import lineage_tags

        return lineage_tags(params, paths)
    except Exception:
        return {}


def run_report(params: Params) -> dict[str, Any]:
    import mlflow

    from pipelines import progress
    from pipelines.report.build import collect, write_report
    from pipelines.report.card import CARD_ARTIFACT, CARD_TAG, render_card
    from pipelines.tasks.catalog import get_task
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    task = get_task(params)
    facts = collect(paths, REPORTED)
    registration = facts.get("registration")
    if registration or facts.run_id:
        configure_tracking(params)
    facts.lineage = _lineage(params, paths, registration)
    written = write_report(facts, params, task, paths.report_dir)
    card = render_card(facts, params, task)
    paths.model_card.write_text(card, encoding="utf-8")
    logged = False
    if facts.run_id:
        with mlflow.start_run(run_id=facts.run_id):
            mlflow.log_artifact(str(written["report"]), artifact_path="report")
            mlflow.log_artifact(str(written["learning_curves"]), artifact_path="report")
            if registration:
                mlflow.log_text(card, CARD_ARTIFACT)
        logged = True
    if registration:
        from mlflow import MlflowClient

        MlflowClient().set_model_version_tag(
            registration["name"], str(registration["version"]), CARD_TAG, CARD_ARTIFACT
        )
    progress.message(f"report {written['report']}", stage="report")
    return {
        "report": str(written["report"]),
        "learning_curves": str(written["learning_curves"]),
        "card": str(paths.model_card) if registration else None,
        "version": str(registration["version"]) if registration else None,
        "run_id": facts.run_id,
        "logged_to_mlflow": logged,
        "missing": sorted(facts.missing),
    }


def write_partial_report(params: Params, stage: str, exc: BaseException, since: float | None = None) -> str | None:
    """After `stage` failed: the report of the stages before it (and its own fresh outputs), on disk only.
    Never raises: the stage's own error is what the user must see."""
    if stage not in REPORTED:
        return None
    try:
        from pipelines import progress
        from pipelines.errors import first_line
        from pipelines.redact import redact_text
        from pipelines.report.build import collect, write_report
        from pipelines.tasks.catalog import get_task

        paths = StagePaths.from_params(params)
        facts = collect(paths, REPORTED, failed=stage, since=since if since is not None else time.time())
        facts.failed = (stage, redact_text(first_line(exc, 300)))
        written = write_report(facts, params, get_task(params), paths.report_dir)
        paths.model_card.unlink(missing_ok=True)  # no version: no card (an old one would describe another run)
        progress.message(f"partial report {written['report']}", stage="report")
        return str(written["report"])
    except Exception:
        return None
