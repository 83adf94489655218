"""Which run made each artifact, so `register` never puts one run's gate, metrics or ONNX model on another's version.

The run lock (pipelines/run_lock.py) keeps runs from interleaving; this is the check that holds even without it (a
stage run by hand, `run.lock: none`, a file copied in): each stage records what it was made from, inside its own
DVC outputs, and register verifies the chain before it touches the registry.

- train (artifacts/train/summary.json `provenance`): its MLflow run id, the sha256 of the model dir it wrote, and the
  data lineage it trained on (raw md5, validation report, cleaned splits, test split, tokenised cache key).
- evaluate (artifacts/evaluate/gate.json `provenance`): the run id and model hash it scored, the test split, and the
  sha256 of the metrics.json and slices.json it wrote.
- export (artifacts/export/provenance.json): the run id and model hash it exported, the sha256 of model.onnx and of
  parity.json.

register checks: evaluate and export name train's run and model hash; metrics.json, slices.json, model.onnx and
parity.json are the files those stages wrote; the cleaned data, test split and tokenised cache on disk are the ones
the run trained and was scored on. Any difference is one MixedRunError line and nothing is registered.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pipelines.errors import MixedRunError
from pipelines.hashing import file_digest, tree_digest
from pipelines.paths import StagePaths

# Lineage tags the training run records for itself; register tags the version with these, not with what is on disk
# by then (equal when the chain holds; raw-data facts may differ when new raw data cleaned to the same splits).
TRAIN_LINEAGE = (
    "data.md5",
    "data.dvc_tracked",
    "data.clean_sha256",
    "data.test_sha256",
    "data.validation_sha256",
    "tokenise.cache_key",
)
# What must still be on disk at register: the data the model was trained and scored on.
CHECKED_ON_DISK = ("data.clean_sha256", "data.test_sha256", "tokenise.cache_key")
RERUN = "rerun `nlpops run` (or `dvc repro`) so one run makes them all"


def export_record_path(paths: StagePaths) -> Path:
    return paths.export_dir / "provenance.json"


def _sha(path: Path) -> str | None:
    return file_digest(path) if path.is_file() else None


def train_record(paths: StagePaths, run_id: str, lineage: dict[str, str]) -> dict[str, Any]:
    """train's provenance (after the model dir is written): run id, model hash, the data lineage it trained on."""
    return {
        "run_id": run_id,
        "model_sha256": tree_digest(paths.model_dir),
        "lineage": {k: lineage.get(k) for k in TRAIN_LINEAGE},
    }


def evaluate_record(paths: StagePaths, run_id: str) -> dict[str, Any]:
    """evaluate's provenance (after metrics.json and slices.json are written)."""
    return {
        "run_id": run_id,
        "model_sha256": tree_digest(paths.model_dir),
        "test_sha256": _sha(paths.clean_split("test")),
        "metrics_sha256": _sha(paths.metrics),
        "slices_sha256": _sha(paths.evaluate_dir / "slices.json"),
    }


def write_export_record(paths: StagePaths, run_id: str) -> dict[str, Any]:
    """export's provenance, written beside model.onnx (inside the DVC output, so it travels with it)."""
    record = {
        "run_id": run_id,
        "model_sha256": tree_digest(paths.model_dir),
        "onnx_sha256": _sha(paths.onnx_model),
        "parity_sha256": _sha(paths.parity_report),
    }
    export_record_path(paths).write_text(json.dumps(record, indent=2))
    return record


def _load(path: Path, key: str | None, stage: str) -> dict[str, Any]:
    if not path.is_file():
        raise MixedRunError(f"{path}: missing; run `nlpops {stage}` (or `nlpops run`) first; nothing registered")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        raise MixedRunError(f"{path}: not valid JSON; {RERUN}; nothing registered") from None
    record = data.get(key) if key else data
    if not isinstance(record, dict) or not record.get("run_id"):
        raise MixedRunError(
            f"{path}: records no provenance (made by an older nlpops, or by hand), so it cannot be tied to a "
            f"training run; rerun `nlpops {stage}` (or `nlpops run`); nothing registered"
        )
    return record


def _short(value: Any) -> str:
    return str(value)[:12]


def chain_problems(paths: StagePaths, lineage_now: dict[str, str]) -> tuple[list[str], dict[str, Any]]:
    """Every broken link between the artifacts register would combine, and train's record."""
    train = _load(paths.train_summary, "provenance", "train")
    evaluate = _load(paths.gate, "provenance", "evaluate")
    export = _load(export_record_path(paths), None, "export")
    run, model = train["run_id"], train["model_sha256"]
    problems = []
    for path, rec in ((paths.gate, evaluate), (export_record_path(paths), export)):
        if rec["run_id"] != run:
            problems.append(f"{path} comes from training run {rec['run_id']}, but {paths.train_summary} is run {run}")
        elif rec.get("model_sha256") != model:
            problems.append(
                f"{path} used model {_short(rec.get('model_sha256'))}, but run {run} wrote {_short(model)} "
                f"to {paths.model_dir}"
            )
    for path, recorded, what in (
        (paths.metrics, evaluate.get("metrics_sha256"), "evaluate"),
        (paths.evaluate_dir / "slices.json", evaluate.get("slices_sha256"), "evaluate"),
        (paths.onnx_model, export.get("onnx_sha256"), "export"),
        (paths.parity_report, export.get("parity_sha256"), "export"),
    ):
        now = _sha(path)
        if now != recorded:
            problems.append(
                f"{path} is not the file {what} wrote for run {run} (sha256 {_short(now)}, recorded {_short(recorded)})"
            )
    if evaluate.get("test_sha256") != lineage_now.get("data.test_sha256"):
        problems.append(f"{paths.clean_split('test')} is not the test split run {run} was scored on")
    trained_on = train.get("lineage") or {}
    for key in CHECKED_ON_DISK:
        if key in trained_on and trained_on[key] != lineage_now.get(key):
            problems.append(
                f"{key} on disk is {_short(lineage_now.get(key))}, run {run} trained on {_short(trained_on[key])}"
            )
    return problems, train


def verify_run_chain(paths: StagePaths, lineage_now: dict[str, str]) -> dict[str, str]:
    """Raise MixedRunError (one line) unless every artifact register would combine comes from one run; returns the
    lineage tags the training run recorded for itself (what the version should carry)."""
    problems, train = chain_problems(paths, lineage_now)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise MixedRunError(
            f"register: refusing to register a mix of runs: {problems[0]}{more}; {RERUN}; nothing registered"
        )
    return {k: str(v) for k, v in (train.get("lineage") or {}).items() if v is not None}
