"""The model card of a registered version: Markdown in the Hugging Face model-card layout.

YAML front matter (pipeline_tag, tags, base_model, metrics and a `model-index` with the test results), then
model details, intended use, training data (file hashes and row counts), training procedure and hyper-parameters,
evaluation results with slices and the gate decision, limitations (some measured on this run), how to use it and
its lineage (data, params and code hashes, the MLflow run id). Built from the same facts as the run report
(pipelines/report/build.py), stored with the version (`model_card/README.md` on its run, tag `model_card`), printed
by `nlpops models card VERSION|champion`.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import yaml

from pipelines.onnx_optimise import served_graph_lines
from pipelines.report.build import gate_checks
from pipelines.report.html import fmt

if TYPE_CHECKING:
    from pipelines.config import Params
    from pipelines.report.build import RunFacts
    from pipelines.tasks.base import Task

CARD_ARTIFACT = "model_card/README.md"  # on the version's training run
CARD_TAG = "model_card"  # version tag naming that artifact


def _md_table(columns: list[str], rows: list[list[Any]]) -> str:
    def cell(value: Any) -> str:
        return fmt(value).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _labels(facts: RunFacts) -> list[str]:
    clean = facts.get("clean") or {}
    return [str(x) for x in clean.get("labels") or []]


def _data_files(facts: RunFacts) -> list[dict[str, Any]]:
    raw = facts.lineage.get("data.files")
    if raw:
        try:
            return list(json.loads(raw))
        except ValueError:
            pass
    clean = facts.get("clean") or {}
    return [{"role": i.get("role"), "path": i.get("path"), "rows": i.get("rows_in")} for i in clean.get("inputs") or []]


def front_matter(facts: RunFacts, params: Params, task: Task) -> dict[str, Any]:
    reg, metrics, train = facts.get("registration") or {}, facts.get("metrics") or {}, facts.get("train") or {}
    files = _data_files(facts)
    meta: dict[str, Any] = {
        "library_name": "onnxruntime",
        "tags": ["nlpops", task.name.replace("_", "-"), "onnx"],
    }
    if task.card_pipeline_tag:
        meta["pipeline_tag"] = task.card_pipeline_tag
    if train.get("base_model"):
        meta["base_model"] = str(train["base_model"])
    if files:
        meta["datasets"] = [str(f.get("path")) for f in files]
    scalar = {k: float(v) for k, v in metrics.items() if isinstance(v, int | float) and k != "test_rows"}
    meta["metrics"] = list(scalar)
    if scalar:
        task_block: dict[str, Any] = {"type": task.card_pipeline_tag or task.name}
        meta["model-index"] = [
            {
                "name": f"{reg.get('name', params.project.registered_model)}",
                "results": [
                    {
                        "task": task_block,
                        "dataset": {
                            "name": str(params.data.test_path or params.data.path),
                            "type": "local",
                            "split": "test",
                        },
                        "metrics": [
                            {"type": k, "value": round(v, 6), "name": f"test {k}"}
                            for k, v in scalar.items()
                            if math.isfinite(v)
                        ],
                    }
                ],
            }
        ]
    return meta


def render_card(facts: RunFacts, params: Params, task: Task) -> str:
    """The card as Markdown (needs the registration: the version it describes)."""
    reg = facts.get("registration") or {}
    train, metrics, clean = facts.get("train") or {}, facts.get("metrics") or {}, facts.get("clean") or {}
    parity, tokenised = facts.get("parity") or {}, facts.get("tokenised") or {}
    gate = reg.get("gate") or facts.get("gate") or {}
    name, version = reg.get("name", params.project.registered_model), reg.get("version", "?")
    labels = _labels(facts)
    primary = params.gate_metric
    out: list[str] = ["---", yaml.safe_dump(front_matter(facts, params, task), sort_keys=False).rstrip(), "---", ""]
    out.append(f"# {name} v{version}")
    out.append("")
    score = metrics.get(primary)
    out.append(
        f"A {task.name.replace('_', ' ')} model fine-tuned by nlpops from `{train.get('base_model', '?')}` on "
        f"`{params.data.path}`"
        + (f"; test {primary} {fmt(score)} on {fmt(metrics.get('test_rows'))} rows." if score is not None else ".")
        + " Served as ONNX through the task's torch-free runtime."
    )
    out += ["", "## Model details", ""]
    aliases = [params.register_.challenger_alias] + ([params.register_.champion_alias] if reg.get("promoted") else [])
    details = [
        ("task", task.name),
        ("registered model", f"{name} v{version} (aliases set at registration: {', '.join(aliases)})"),
        ("base model", train.get("base_model")),
        ("format", f"ONNX opset {parity.get('opset', '?')}, {(parity.get('onnx_bytes') or 0) / 1e6:.1f} MB"),
        ("labels", ", ".join(labels) if labels else None),
        ("max input length", f"{tokenised.get('max_length', params.tokenise.max_length)} tokens"),
        ("MLflow run", facts.run_id),
        ("card written", datetime.now(UTC).isoformat(timespec="seconds")),
    ]
    out += [f"- **{k}**: {v}" for k, v in details if v is not None]
    out += ["", "## Intended use", ""]
    kind = task.name.replace("_", " ").capitalize()
    out.append(
        f"{kind} of text like the training data (`{params.data.path}`: same language, domain and label definitions), "
        "e.g. behind `nlpops serve` or `nlpops predict`, with its scores used as confidence."
    )
    out += [
        "",
        "Out of scope: text in other languages or domains than the training data, labels outside the label set, "
        "and decisions about people without human review. Inputs longer than the max input length are truncated.",
    ]
    out += ["", "## Training data", ""]
    files = _data_files(facts)
    if files:
        out.append(
            _md_table(
                ["role", "file", "md5", "rows read"],
                [[f.get("role"), f.get("path"), f.get("md5") or "–", f.get("rows")] for f in files],
            )
        )
        out.append("")
    if clean:
        reasons = ", ".join(f"{k} {v}" for k, v in (clean.get("quarantine_reasons") or {}).items()) or "none"
        out.append(
            f"{fmt(clean.get('rows_in'))} rows read, {fmt(clean.get('rows_out'))} kept; "
            f"{fmt(clean.get('quarantined'))} quarantined ({reasons}); "
            f"{fmt(clean.get('dropped_duplicates'))} duplicates and "
            f"{fmt(clean.get('dropped_near_duplicates'))} near-duplicates dropped; "
            f"{fmt(clean.get('leakage_removed_from_train'))} training rows removed for overlapping evaluation splits."
        )
        splits = clean.get("splits") or {}
        if splits:
            counts = clean.get("class_counts") or {}
            columns = ["split", "rows", *labels] if labels and counts else ["split", "rows"]
            rows = [[s, n, *[(counts.get(s) or {}).get(lab) for lab in labels]] for s, n in splits.items()]
            out += ["", _md_table(columns, [r[: len(columns)] for r in rows])]
        if clean.get("split_note"):
            out += ["", str(clean["split_note"])]
    out += ["", "## Training procedure", ""]
    hyper = {
        "recipe": train.get("recipe"),
        "epochs run (max)": f"{train.get('epochs_run')} ({params.train.epochs})",
        "best epoch": train.get("best_epoch"),
        "learning rate": params.train.learning_rate,
        "batch size": params.train.batch_size,
        "warm-up ratio": params.train.warmup_ratio,
        "weight decay": params.train.weight_decay,
        "max grad norm": params.train.max_grad_norm,
        "dropout": params.model.dropout,
        "early stopping": f"{params.stopping_metric}, patience {params.train.early_stopping_patience}",
        "max training rows": params.train.max_train_rows,
        "seed": params.train.seed,
        "trainable parameters": train.get("trainable_params"),
        "training time": f"{train.get('train_seconds')} s",
    }
    out.append(_md_table(["hyper-parameter", "value"], [[k, v] for k, v in hyper.items() if v is not None]))
    if train.get("recipe_reason"):
        out += ["", f"Recipe: {train['recipe_reason']}."]
    history = facts.history
    if history:
        cols = [
            "epoch",
            "train_loss",
            "val_loss",
            *sorted({k for r in history for k in r if k.startswith("val_") and k != "val_loss"}),
        ]
        out += ["", _md_table(cols, [[r.get(c) for c in cols] for r in history])]
    out += ["", "## Evaluation", ""]
    scalar = [[k, v] for k, v in metrics.items() if isinstance(v, int | float)]
    out.append(_md_table(["test metric", "value"], scalar) if scalar else "No test metrics recorded.")
    sliced = (facts.get("slices") or {}).get("slices") or {}
    if sliced:
        checks = {
            c["name"].removeprefix("slice:"): c
            for c in gate_checks(gate)
            if str(c.get("name", "")).startswith("slice:")
        }
        rows = []
        for s, v in sliced.items():
            champion = ((checks.get(s) or {}).get("values") or {}).get("champion")
            rows.append([s, v.get("metric"), v.get("rows"), v.get("value"), champion])
        out += ["", "Slices:", "", _md_table(["slice", "metric", "rows", "value", "champion"], rows)]
    if gate:
        verdict = "passed" if gate.get("passed") else "failed"
        out += [
            "",
            f"Gate against the champion: **{verdict}**"
            + (f" ({gate.get('champion_basis')})" if gate.get("champion_basis") else ""),
        ]
        out += [f"- {'✓' if c.get('passed') else '✗'} {c.get('detail')}" for c in gate_checks(gate)]
    if parity:
        out += [
            "",
            f"ONNX parity with PyTorch: max abs difference {fmt(parity.get('max_abs_diff'))} "
            f"(atol {fmt(parity.get('atol'))}) on {fmt(parity.get('rows'))} test rows, "
            f"{fmt(parity.get('label_mismatches'))} differing results; batch-1 "
            f"latency p50 {fmt(parity.get('latency_p50_ms'), 2)} ms, p95 {fmt(parity.get('latency_p95_ms'), 2)} ms.",
        ]
        served = served_graph_lines(parity)
        out += ["", *(f"- {label}: {text}" for label, text in served)] if served else []
    out += ["", "## Limitations", ""]
    out += [f"- {line}" for line in limitations(facts, params)]
    out += ["", "## How to use", ""]
    out += [
        "```bash",
        f'nlpops predict --model {name} --version {version} "some text"',
        f"nlpops serve --model {name}        # the champion over HTTP",
        "```",
        "",
        "```python",
        "import mlflow",
        f'model = mlflow.pyfunc.load_model("models:/{name}/{version}")  # ONNX Runtime, no torch',
        "```",
    ]
    out += ["", "## Lineage", ""]
    keys = [
        ("MLflow run id", facts.run_id),
        ("raw data md5", facts.lineage.get("data.md5")),
        ("cleaned splits sha256", facts.lineage.get("data.clean_sha256")),
        ("test split sha256", facts.lineage.get("data.test_sha256")),
        ("tokenised cache key", facts.lineage.get("tokenise.cache_key")),
        ("params hash", facts.lineage.get("params.hash")),
        ("code sha256", facts.lineage.get("code.sha256")),
        ("git commit", facts.lineage.get("git.commit")),
        ("git tree dirty", facts.lineage.get("git.dirty")),
        ("ONNX sha256", facts.lineage.get("onnx.sha256") or parity.get("onnx_sha256")),
    ]
    out.append(_md_table(["link", "value"], [[k, v] for k, v in keys if v]))
    out += ["", f"Audit it: `nlpops lineage {version} --model {name} --verify`.", ""]
    return "\n".join(out)


def limitations(facts: RunFacts, params: Params) -> list[str]:
    """Generic limits, plus the ones this run's numbers show."""
    metrics, clean, tokenised = facts.get("metrics") or {}, facts.get("clean") or {}, facts.get("tokenised") or {}
    calibration = facts.get("calibration") or {}
    lines = [f"Trained and evaluated only on `{params.data.path}`: quality on other sources is unknown."]
    n, value = metrics.get("test_rows"), metrics.get(params.gate_metric)
    if isinstance(n, int) and n > 0 and isinstance(value, int | float) and 0 <= value <= 1:
        margin = 1.96 * math.sqrt(max(value * (1 - value), 0.25 / n) / n)
        lines.append(
            f"The test split has {n:,} rows: {params.gate_metric} {value:.4f} is uncertain by about ±{margin:.3f} "
            "(95 % normal approximation)."
        )
    sliced = (facts.get("slices") or {}).get("slices") or {}
    small = [s for s, v in sliced.items() if 0 < int(v.get("rows") or 0) < params.gate.slice_min_rows]
    if small:
        lines.append(f"Slices with fewer than {params.gate.slice_min_rows} rows are not gated: {', '.join(small)}.")
    empty = [s for s, v in sliced.items() if not v.get("rows")]
    if empty:
        lines.append(f"No test rows at all in: {', '.join(empty)}.")
    truncated = sum(int((s or {}).get("truncated_rows") or 0) for s in (tokenised.get("splits") or {}).values())
    if truncated:
        lines.append(f"{truncated:,} rows reached the {tokenised.get('max_length')}-token limit and were truncated.")
    train_counts = (clean.get("class_counts") or {}).get("train") or {}
    if len(train_counts) > 1 and min(train_counts.values()) > 0:
        ratio = max(train_counts.values()) / min(train_counts.values())
        if ratio >= 3:
            lines.append(f"Training classes are imbalanced (largest / smallest = {ratio:.1f}).")
    if calibration.get("ece") is not None and float(calibration["ece"]) > 0.05:
        lines.append(
            f"Scores are not well calibrated (ECE {float(calibration['ece']):.3f}): do not read them as probabilities."
        )
    if clean.get("quarantined"):
        n = int(clean["quarantined"])
        were = "rows were" if n != 1 else "row was"
        lines.append(f"{n:,} raw {were} unusable and quarantined: inputs like them are untested.")
    return lines


def read_card(name: str, ref: str) -> tuple[str, str]:
    """(version, card Markdown) stored with version `ref` (a number, or an alias such as champion) of `name`;
    RegistryError naming what is missing otherwise."""
    import tempfile
    from pathlib import Path

    from pipelines.errors import RegistryError
    from pipelines.registry import alias_version, get_version

    if ref.lstrip("v").isdigit():
        version = get_version(name, ref.lstrip("v"))
    else:
        version = alias_version(name, ref)
        if version is None:
            raise RegistryError(
                f"models card: {name!r} has no {ref!r} version yet (nothing registered or promoted under that alias; "
                "see `nlpops models list`)"
            )
    artifact = (version.tags or {}).get(CARD_TAG)
    if not artifact:
        raise RegistryError(
            f"models card: {name} v{version.version} has no model card (registered before model cards existed, or "
            "its run's report stage has not run: `nlpops report`)"
        )
    from mlflow import MlflowClient

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = MlflowClient().download_artifacts(version.run_id, artifact, tmp)
            return str(version.version), Path(local).read_text(encoding="utf-8")
        except Exception as exc:
            from pipelines.errors import first_line

            raise RegistryError(
                f"models card: {name} v{version.version}: cannot read {artifact} of run {version.run_id} "
                f"({first_line(exc, 200)})"
            ) from None
