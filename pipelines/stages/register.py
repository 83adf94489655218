"""register: the exported model becomes a challenger version; the final gate (metrics, slices, parity, latency) is
decided under the promotion lock against the champion of that moment, and the champion moves only when it passed."""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import Params
from pipelines.errors import ParityError
from pipelines.hashing import file_digest
from pipelines.paths import StagePaths
from pipelines.redact import redact_text
from pipelines.stages.common import lineage_tags, read_json, write_json
from pipelines.stages.evaluate import champion_reference


def _raise_if_registry_unreachable(params: Params, exc: Exception) -> None:
    """The registry went away mid-registration (after the client's retries): one line, and how to finish."""
    from pipelines.errors import NlpopsError, ServiceError, first_line
    from pipelines.tracking import is_unreachable, tracking_uri

    if not isinstance(exc, NlpopsError) and is_unreachable(exc):
        raise ServiceError(
            redact_text(
                f"registry at {tracking_uri(params)} unreachable during registration ({first_line(exc, 200)}); "
                "aliases were not moved; rerun `nlpops register` to finish (it reuses this run's version, never a "
                "second one)"
            )
        ) from None


def run_register(params: Params) -> dict[str, Any]:
    """Register the exported model as challenger; the final gate (metrics, slices, parity, latency) is decided
    under the promotion lock against the champion of that moment, and champion moves only when it passed."""
    import mlflow

    from pipelines.evaluate import decide_gate
    from pipelines.registry import register_challenger
    from pipelines.registry_lock import LockSettings
    from pipelines.tasks.catalog import get_task
    from pipelines.tracking import configure_tracking

    paths = StagePaths.from_params(params)
    from pipelines.stores import training_summary_on_store

    train_summary = training_summary_on_store(params)
    read_json(paths.gate, "evaluate")
    parity = read_json(paths.parity_report, "export")
    if not parity.get("passed"):
        raise ParityError(f"{paths.parity_report}: ONNX parity failed; nothing registered")
    configure_tracking(params)
    from pipelines.dvc_experiment import current_experiment, promotion_policy

    policy = promotion_policy(params.register_.promote, current_experiment())
    metrics = read_json(paths.metrics, "evaluate")
    sliced = read_json(paths.slices, "evaluate")
    challenger = {**metrics, "slices": sliced.get("slices", {})}
    run_id = train_summary["run_id"]
    test_sha256 = file_digest(paths.clean_split("test"))
    compact_slices = json.dumps(
        {k: [v["value"], v["rows"], v["metric"]] for k, v in challenger["slices"].items()}, separators=(",", ":")
    )
    tags = lineage_tags(params, paths)
    from pipelines.provenance import verify_run_chain  # refuse a mix of runs; tag with what the run trained on

    tags.update(verify_run_chain(paths, tags))
    tags.update(
        {
            "run_id": run_id,
            "onnx.sha256": str(parity.get("onnx_sha256")),
            "onnx.parity_max_abs_diff": str(parity.get("max_abs_diff")),
            "onnx.latency_p95_ms": str(parity.get("latency_p95_ms")),
            "onnx.precision": str((parity.get("graph") or {}).get("precision", "fp32")),
            "slices.membership": str(sliced.get("membership_sha256")),
            **{f"metric.{k}": str(v) for k, v in get_task(params).metric_tags(metrics).items()},
        }
    )
    if len(compact_slices) <= 4900:  # else the champion's slices are read from its run artifact
        tags["metric.slices"] = compact_slices
    decided: dict[str, Any] = {}

    def decide(_champion: Any) -> Any:
        reference, version, basis = champion_reference(params, test_sha256, run_id, sliced.get("membership_sha256"))
        decision = decide_gate(
            challenger, params.gate, reference, version, parity, parity.get("latency_p95_ms"), params.gate_metric
        )
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
            allow_promotion=policy.allowed,  # register.promote: no accidental promotion from `dvc exp run`
            hold_reason=policy.reason,
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
    write_json(paths.registration, result)
    return result
