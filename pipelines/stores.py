"""Which MLflow store a stage's outputs were logged to, and what happens when the project moves to another one.

A project starts on the embedded store (SQLite under `.nlpops/`) and later points MLFLOW_TRACKING_URI at a server
(or from one server to another, or back). The files under `artifacts/` stay valid (they are content-hashed), but
the training run they were logged to lives in the old store. The rule:

- **train is re-logged, never re-run**, when its outputs are current (same params, inputs and code: the stage
  fingerprint, which does not include the store). Retraining costs minutes to hours; re-logging the run's params,
  lineage tags, per-epoch metrics and reports from the files on disk costs seconds, and every hash a lineage audit
  checks (data md5, validation report, cleaned splits, tokenise manifest) is re-hashed from the same files.
  When the destination already holds a copy of that run (made by `nlpops migrate` or an earlier re-log, tagged
  `nlpops.copied_from_run`), that copy is adopted instead, so a migrated champion is reused, not duplicated.
- **evaluate, export and register re-run** on the new store: their fingerprints include the training run id, they
  are cheap (seconds), and the gate must be decided against the champion of the store the model lands in.

`artifacts/train/summary.json` records `tracking_store` (the redacted tracking URI) and `run_id`; a re-log or an
adoption rewrites both and keeps the previous pair under `previous_runs`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pipelines.config import Params
from pipelines.paths import StagePaths

COPIED_FROM_RUN = "nlpops.copied_from_run"
COPIED_FROM_STORE = "nlpops.copied_from_store"
COPY_KIND = "nlpops.copy_kind"  # "relogged" (rebuilt from local files) or "migrated" (copied store to store)
# Tags of the original training run that describe the moment of training, not the workspace of today.
_TRAINING_TIME_TAGS = ("git.commit", "git.dirty", "model.base")
_SECRET_QUERY_KEYS = ("password", "token", "secret", "key", "sig", "signature", "credential")


def redact_uri(uri: str) -> str:
    """A store URI without credentials: user:password@ and secret-looking query values are removed."""
    parts = urlsplit(uri)
    if not parts.scheme or not parts.netloc:
        return uri
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True)]
    query = [(k, "***" if any(s in k.lower() for s in _SECRET_QUERY_KEYS) else v) for k, v in query]
    return urlunsplit((parts.scheme, host, parts.path, urlencode(query), ""))


def store_identity(params: Params) -> str:
    """The tracking store this project logs to now (redacted), plus the registry when it is a different one."""
    from pipelines.tracking import tracking_uri

    tracking = redact_uri(tracking_uri(params))
    registry = os.environ.get("MLFLOW_REGISTRY_URI")
    if registry and redact_uri(registry) != tracking and not _set_by_this_process(registry):
        return f"{tracking} (registry {redact_uri(registry)})"
    return tracking


def _set_by_this_process(registry: str) -> bool:
    from pipelines import tracking

    return registry == tracking._registry_set_here


def store_key(params: Params) -> str:
    """A short file-name-safe key of the current store (for local caches of things read from it)."""
    return hashlib.sha256(store_identity(params).encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------------------------ runs on a store


def run_exists(run_id: str | None) -> bool:
    """True when the active tracking store holds this run (deleted runs count as gone)."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    if not run_id:
        return False
    try:
        run = MlflowClient().get_run(run_id)
    except MlflowException as exc:
        from pipelines.tracking import is_unreachable

        if is_unreachable(exc):
            raise
        return False
    return run.info.lifecycle_stage != "deleted"


def find_copy(run_id: str) -> str | None:
    """A run on the active store that is a copy of `run_id` (migrated or re-logged earlier), newest first."""
    from mlflow import MlflowClient

    client = MlflowClient()
    experiment_ids = [e.experiment_id for e in client.search_experiments()]
    if not experiment_ids:
        return None
    runs = client.search_runs(
        experiment_ids,
        filter_string=f"tags.`{COPIED_FROM_RUN}` = '{run_id}'",
        order_by=["attributes.start_time DESC"],
        max_results=5,
    )
    finished = [r for r in runs if r.info.status == "FINISHED"]
    return finished[0].info.run_id if finished else None


def _read_summary(paths: StagePaths) -> dict[str, Any]:
    from pipelines.errors import StageInputError

    if not paths.train_summary.is_file():
        raise StageInputError(f"{paths.train_summary}: missing; run `nlpops train` (or `nlpops run`) first")
    return json.loads(paths.train_summary.read_text())


def training_summary_on_store(params: Params) -> dict[str, Any]:
    """artifacts/train/summary.json, with its training run guaranteed to exist on the current store.

    Same store and the run is there: returned as is. Otherwise the run is adopted (a copy already on this store) or
    re-logged from the files on disk, and summary.json is rewritten with the new run id and store.
    """
    from pipelines.statedir import atomic_write
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    summary = _read_summary(paths)
    configure_tracking(params)
    here = store_identity(params)
    old_run, old_store = summary.get("run_id"), summary.get("tracking_store")
    if old_store in (None, here) and run_exists(old_run):
        return summary
    copy = run_already_on_store(summary, here)
    how = "adopted" if copy else "relogged"
    new_run = copy or relog_training_run(params, summary)
    entry = {"tracking_store": old_store, "run_id": old_run}
    previous = [p for p in summary.get("previous_runs", []) if p != entry and p.get("run_id") != new_run] + [entry]
    summary.update(run_id=new_run, tracking_store=here, previous_runs=previous, store_move=how)
    if isinstance(summary.get("provenance"), dict):  # register checks evaluate/export against this run id
        summary["provenance"]["run_id"] = new_run
    text = json.dumps(summary, indent=2, default=str)
    atomic_write(paths.train_summary, lambda tmp: _write_text(tmp, text))
    return summary


def _write_text(path: Path, text: str) -> None:
    path.write_text(text)


def run_already_on_store(summary: dict[str, Any], here: str) -> str | None:
    """A run on the active store (`here`) standing for the summary's training run: the one it had when it was on this
    store before (server -> embedded -> server), or a copy of it (`nlpops migrate`, an earlier re-log)."""
    earlier = [p["run_id"] for p in summary.get("previous_runs", []) if p.get("tracking_store") == here]
    found = next((r for r in reversed(earlier) if run_exists(r)), None)
    run_id = summary.get("run_id")
    return found or (find_copy(run_id) if run_id else None)


def _original_tags(summary: dict[str, Any]) -> dict[str, str]:
    """Tags of the original run when its store is a local SQLite file still on disk (no network wait)."""
    store, run_id = summary.get("tracking_store") or "", summary.get("run_id")
    if not store.startswith("sqlite:///") or not run_id or not Path(store.removeprefix("sqlite:///")).is_file():
        return {}
    try:
        from mlflow import MlflowClient

        run = MlflowClient(tracking_uri=store, registry_uri=store).get_run(run_id)
    except Exception:
        return {}
    tags = run.data.tags
    return {k: v for k, v in tags.items() if k in _TRAINING_TIME_TAGS or k.startswith("version.")}


def relog_training_run(params: Params, summary: dict[str, Any]) -> str:
    """A new FINISHED run on the active store holding what `nlpops train` logged, rebuilt from the files on disk.

    Params, lineage tags (re-hashed now; they equal training time's because the train fingerprint is unchanged),
    the data reports, per-epoch metrics from history.json and the best-epoch figures. Returns the new run id.
    """
    import mlflow

    from pipelines.stages.common import lineage_tags, log_data_quality
    from pipelines.tracking import flatten

    paths = StagePaths.from_params(params)
    tags = {**lineage_tags(params, paths), "model.base": str(summary.get("base_model", ""))}
    tags.update(_original_tags(summary))
    tags.update(
        {
            COPIED_FROM_RUN: str(summary.get("run_id")),
            COPIED_FROM_STORE: str(
                summary.get("tracking_store") or "unknown (summary written before stores were recorded)"
            ),
            COPY_KIND: "relogged",
        }
    )
    manifest = json.loads((paths.tokenised_dir / "manifest.json").read_text())
    history = summary.get("history")
    if history is None and paths.train_history.is_file():
        history = json.loads(paths.train_history.read_text()).get("history")
    with mlflow.start_run(run_name="train") as run:
        mlflow.log_params(flatten("", params.to_dict()))
        mlflow.set_tags(tags)
        for report in (paths.validation_report, paths.clean_summary, paths.label_map):
            if report.is_file():
                mlflow.log_artifact(str(report), artifact_path="data")
        log_data_quality(params, paths)
        mlflow.log_dict(manifest, "data/tokenise_manifest.json")
        for record in history or []:
            mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=int(record["epoch"]))
        mlflow.log_metrics(
            {k: summary[k] for k in ("best_epoch", "epochs_run", "train_seconds", "trainable_params") if k in summary}
        )
        if paths.train_history.is_file():
            mlflow.log_artifact(str(paths.train_history), artifact_path="train")
        return str(run.info.run_id)


def store_change_note(params: Params) -> str | None:
    """One line when the training outputs on disk were logged to another store than the current one, else None."""
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    if not paths.train_summary.is_file():
        return None
    try:
        summary = json.loads(paths.train_summary.read_text())
    except (OSError, ValueError):
        return None
    configure_tracking(params)
    here, there, run_id = store_identity(params), summary.get("tracking_store"), summary.get("run_id")
    if there == here or (there is None and run_exists(run_id)):
        return None
    copy = run_already_on_store(summary, here)
    next_step = f"the next run uses run {copy} there" if copy else "the next run re-logs it there (no retraining)"
    return (
        f"tracking store changed: training run {run_id} was logged to {there or 'another store'}, "
        f"MLflow now points at {here}; {next_step}"
    )


def explain_store_error(exc: BaseException) -> str | None:
    """One line for an MLflow 'run not found' that escaped a command: outputs logged to another store than the one
    MLflow points at now. None for any other error."""
    import re

    from mlflow.exceptions import MlflowException

    if not isinstance(exc, MlflowException) or "RESOURCE_DOES_NOT_EXIST" not in str(exc.error_code):
        return None
    found = re.search(r"Run (?:with id=|')([0-9a-f]{32})", str(exc))
    if not found:
        return None
    import mlflow

    return (
        f"MLflow store {redact_uri(mlflow.get_tracking_uri())} has no run {found.group(1)}: the outputs under "
        "artifacts/ were logged to another store. Run `nlpops run` (re-logs the cached training run here, no "
        "retraining), or point MLFLOW_TRACKING_URI back at the store they came from"
    )
