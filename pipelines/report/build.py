"""The run report: one self-contained HTML page from the stage outputs on disk (`<artifacts>/report/index.html`).

It reads what the stages wrote (`collect`), never recomputes a metric, and says plainly what is missing: a run that
stopped at a stage gets a *partial* report of the stages before it (and the failing stage's own fresh outputs, such
as the validation report or parity.json that explain the failure). Outputs left by an earlier run are not mixed in:
evaluate, export and register outputs count only when they name this run's training run.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipelines.onnx_optimise import served_graph_lines
from pipelines.paths import StagePaths
from pipelines.report.html import (
    Section,
    badge,
    bar_chart,
    esc,
    fmt,
    hbar_chart,
    key_values,
    line_chart,
    page,
    paragraph,
    standalone_svg,
    table,
)

if TYPE_CHECKING:
    from pipelines.config import Params
    from pipelines.tasks.base import Task

_EMPTY_SVG = '<svg class="plot" xmlns="http://www.w3.org/2000/svg" width="10" height="10"></svg>'


def _files(paths: StagePaths) -> dict[str, dict[str, Path]]:
    """Each stage's outputs the report reads, by stage (in stage order)."""
    return {
        "validate": {"validation": paths.validation_report},
        "clean": {"clean": paths.clean_summary},
        "tokenise": {"tokenised": paths.tokenised_dir / "manifest.json"},
        "train": {"train": paths.train_summary, "history": paths.train_history},
        "evaluate": {
            "metrics": paths.metrics,
            "slices": paths.slices,
            "gate": paths.gate,
            "calibration": paths.calibration,
        },
        "export": {"parity": paths.parity_report, "export_record": paths.export_dir / "provenance.json"},
        "register": {"registration": paths.registration},
    }


@dataclass
class RunFacts:
    """What the stages of one run left on disk (None: not there, or not from this run)."""

    paths: StagePaths
    data: dict[str, Any] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)  # name -> why
    failed: tuple[str, str] | None = None  # (stage, error) when the run stopped there
    lineage: dict[str, str] = field(default_factory=dict)  # the version's (or the run's) lineage tags
    version_tags: dict[str, str] = field(default_factory=dict)

    def get(self, name: str) -> Any:
        return self.data.get(name)

    @property
    def run_id(self) -> str | None:
        train = self.get("train") or {}
        return train.get("run_id")

    @property
    def history(self) -> list[dict[str, Any]]:
        return list((self.get("history") or {}).get("history") or (self.get("train") or {}).get("history") or [])


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def collect(
    paths: StagePaths, stages: tuple[str, ...], failed: str | None = None, since: float | None = None
) -> RunFacts:
    """Read the outputs of `stages` (in order). With `failed`, stages after it are left out and its own outputs
    count only when written since `since` (epoch seconds: when it started)."""
    facts = RunFacts(paths=paths)
    files = _files(paths)
    stopped = False
    for stage in stages:
        for name, path in files.get(stage, {}).items():
            if stopped:
                facts.missing[name] = f"{stage} did not run ({failed} failed)"
                continue
            if stage == failed and since is not None and path.is_file() and path.stat().st_mtime < since - 1:
                facts.missing[name] = f"{path}: left by an earlier run ({stage} failed before writing it)"
                continue
            value = _read(path) if path.is_file() else None
            if value is None:
                facts.missing[name] = f"{path}: missing (written by `nlpops {stage}`)"
            else:
                facts.data[name] = value
        if stage == failed:
            stopped = True
    _drop_other_runs(facts)
    return facts


def _drop_other_runs(facts: RunFacts) -> None:
    """Outputs that name another training run than train/summary.json are an earlier run's: left out."""
    run_id = facts.run_id
    if run_id is None:
        return
    owners = {
        "gate": ((facts.get("gate") or {}).get("provenance") or {}).get("run_id"),
        "export_record": (facts.get("export_record") or {}).get("run_id"),
        "registration": (facts.get("registration") or {}).get("run_id"),
    }
    for name, owner in owners.items():
        if name in facts.data and owner and owner != run_id:
            del facts.data[name]
            facts.missing[name] = f"from another training run ({owner[:12]}), not this one ({run_id[:12]})"
    other = facts.missing.get("export_record", "")
    if other.startswith("from another") and "parity" in facts.data:  # parity.json is that export's too
        del facts.data["parity"]
        facts.missing["parity"] = other


# ------------------------------------------------------------------------------------------------ sections


def _why(facts: RunFacts, *names: str) -> str:
    reasons = [facts.missing[n] for n in names if n in facts.missing]
    return "not available: " + ("; ".join(dict.fromkeys(reasons)) or "no data")


def learning_curves(history: list[dict[str, Any]], metric: str, best_epoch: int | None) -> list[str]:
    """Two SVG charts: train/validation loss, and the validation metrics, per epoch."""
    if not history:
        return []
    epochs = [float(r.get("epoch", i + 1)) for i, r in enumerate(history)]
    losses = {
        k: [_f(r.get(k)) for r in history]
        for k in ("train_loss", "val_loss")
        if any(_f(r.get(k)) is not None for r in history)
    }
    metrics = sorted({k for r in history for k in r if k.startswith("val_") and k != "val_loss"})
    ordered = [f"val_{metric}"] if f"val_{metric}" in metrics else []
    ordered += [m for m in metrics if m not in ordered]
    values = {m: [_f(r.get(m)) for r in history] for m in ordered}
    shown = [v for vs in values.values() for v in vs if v is not None]
    unit_range = (0.0, 1.0) if shown and min(shown) >= 0 and max(shown) <= 1 else None
    marker_label = f"best epoch {best_epoch}" if best_epoch else ""
    charts = [
        line_chart(epochs, losses, "Loss per epoch", "epoch", "loss", marker=best_epoch, marker_label=marker_label)
    ]
    if values:
        charts.append(
            line_chart(
                epochs,
                values,
                "Validation metrics per epoch",
                "epoch",
                "score",
                marker=best_epoch,
                marker_label=marker_label,
                y_range=unit_range,
            )
        )
    return charts


def _f(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def summary_section(facts: RunFacts, params: Params, task: Task) -> Section:
    reg, train, metrics = facts.get("registration") or {}, facts.get("train") or {}, facts.get("metrics") or {}
    gate = (reg.get("gate") if reg else None) or facts.get("gate") or {}
    primary = params.gate_metric
    items: list[tuple[str, Any]] = [
        ("task", task.name),
        ("registered model", f"{reg['name']} v{reg['version']}" if reg else "not registered in this run"),
    ]
    if reg:
        aliases = [params.register_.challenger_alias] + (
            [params.register_.champion_alias] if reg.get("promoted") else []
        )
        items.append(("aliases set by this run", ", ".join(aliases)))
        items.append(("champion after the run", f"v{reg['champion']}" if reg.get("champion") else "none"))
    items.append((f"test {primary}", metrics.get(primary)))
    items.append(("test rows", metrics.get("test_rows")))
    items.append(("MLflow run", facts.run_id))
    if train:
        items.append(("best epoch", f"{train.get('best_epoch')} of {train.get('epochs_run')}"))
        items.append(("training time", f"{train.get('train_seconds')} s"))
        items.append(("base model", train.get("base_model")))
    gate_html = badge(gate.get("passed") if gate else None) + (
        " (preliminary: parity and latency pending)" if gate and not gate.get("final", True) else ""
    )
    rows = "".join(f"<tr><th>{esc(k)}</th><td>{esc(fmt(v))}</td></tr>" for k, v in items)
    rows += f"<tr><th>gate</th><td>{gate_html}</td></tr>"
    return Section("summary", "Summary", [f'<table class="facts"><tbody>{rows}</tbody></table>'])


def training_section(facts: RunFacts, params: Params) -> Section:
    train, history = facts.get("train") or {}, facts.history
    section = Section("training", "Training")
    if not history:
        section.note = _why(facts, "history", "train")
        return section
    metric = (train.get("best_metric") or {}).get("name") or params.stopping_metric
    section.blocks.append(
        '<div class="plots">' + "".join(learning_curves(history, metric, train.get("best_epoch"))) + "</div>"
    )
    columns = ["epoch", "step", "train_loss", "val_loss"]
    columns += sorted({k for r in history for k in r if k.startswith("val_") and k != "val_loss"})
    columns += ["learning_rate", "epoch_seconds"]
    section.blocks.append(table(columns, [[r.get(c) for c in columns] for r in history]))
    hyper = [
        ("recipe", f"{train.get('recipe')} ({train.get('recipe_reason')})" if train.get("recipe") else None),
        ("epochs (run / max)", f"{train.get('epochs_run')} / {params.train.epochs}"),
        ("stopped early", train.get("stopped_early")),
        ("learning rate", params.train.learning_rate),
        ("batch size", params.train.batch_size),
        ("warm-up ratio", params.train.warmup_ratio),
        ("weight decay", params.train.weight_decay),
        ("early stopping", f"{metric}, patience {params.train.early_stopping_patience}"),
        ("trainable / frozen parameters", f"{fmt(train.get('trainable_params'))} / {fmt(train.get('frozen_params'))}"),
        ("training rows (features)", f"{fmt(train.get('train_rows'))} ({fmt(train.get('train_features'))})"),
        ("seed", params.train.seed),
    ]
    section.blocks.append("<h3>Hyper-parameters</h3>" + key_values([(k, v) for k, v in hyper if v is not None]))
    return section


def evaluation_section(facts: RunFacts, params: Params, task: Task) -> Section:
    metrics = facts.get("metrics")
    section = Section("evaluation", "Evaluation (test split)")
    if not metrics:
        section.note = _why(facts, "metrics")
        return section
    scalar = [(k, v) for k, v in metrics.items() if isinstance(v, int | float)]
    section.blocks.append(table(["metric", "value"], scalar))
    try:
        views = task.report_sections(metrics, facts.get("slices") or {}, facts.paths.evaluation_views)
    except Exception as exc:  # a view that cannot be drawn must not cost the whole report
        views = [Section("task-views", "Task views", note=f"task views could not be drawn: {exc}")]
    for view in views:
        section.blocks.append(f"<h3>{esc(view.title)}</h3>")
        if view.note:
            section.blocks.append(paragraph(view.note, "note"))
        section.blocks.extend(view.blocks)
    return section


def gate_checks(gate: dict[str, Any]) -> list[dict[str, Any]]:
    """The gate's checks as dicts: evaluate writes a list of {name, passed, detail, values}; a registration that
    reuses an existing version carries its tags' {name: passed} instead."""
    checks = gate.get("checks") or []
    if isinstance(checks, dict):
        return [{"name": str(k), "passed": v, "detail": "as recorded on the version"} for k, v in checks.items()]
    return [c if isinstance(c, dict) else {"name": str(c)} for c in checks]


def _slice_checks(gate: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for check in gate_checks(gate):
        if str(check.get("name", "")).startswith("slice:"):
            out[check["name"].removeprefix("slice:")] = check
    return out


def slices_section(facts: RunFacts) -> Section:
    sliced = facts.get("slices")
    section = Section("slices", "Slices")
    if not sliced or not sliced.get("slices"):
        section.note = _why(facts, "slices") if not sliced else "this task defines no slices"
        return section
    gate = (facts.get("registration") or {}).get("gate") or facts.get("gate") or {}
    checks = _slice_checks(gate)
    rows = []
    for name, stats in sliced["slices"].items():
        check = checks.get(name) or {}
        values = check.get("values") or {}
        verdict = badge(check.get("passed")) if check else badge(None, unknown="not compared")
        rows.append([name, stats.get("metric"), stats.get("rows"), stats.get("value"), values.get("champion"), verdict])
    section.blocks.append(table(["slice", "metric", "rows", "value", "champion", "gate"], rows, raw=(5,)))
    names = list(sliced["slices"])
    section.blocks.append(hbar_chart(names, [sliced["slices"][n].get("value") for n in names], "Score per slice"))
    for note in sliced.get("notes") or []:
        section.blocks.append(paragraph(note, "note"))
    return section


def calibration_section(facts: RunFacts) -> Section:
    calib = facts.get("calibration")
    section = Section("calibration", "Scores and calibration")
    if not calib or not calib.get("bins"):
        section.note = (
            _why(facts, "calibration")
            if "calibration" in facts.missing
            else "this task reports no per-prediction scores"
        )
        return section
    bins = calib["bins"]
    labels = [f"{b['lo']:.1f}–{b['hi']:.1f}" for b in bins]
    counts = [int(b["count"]) for b in bins]
    unit = calib.get("unit", "predictions")
    hist = bar_chart(labels, counts, f"Confidence of the predictions ({unit})", unit, x_label="confidence")
    used = [b for b in bins if b["count"]]
    reliability = line_chart(
        [b["mean_confidence"] for b in used],
        {"accuracy": [b["accuracy"] for b in used]},
        "Reliability: accuracy per confidence bin",
        "mean confidence",
        "accuracy",
        y_range=(0.0, 1.0),
        x_range=(0.0, 1.0),
        diagonal=True,
    )
    section.blocks.append(f'<div class="plots">{hist}{reliability}</div>')
    section.blocks.append(
        key_values(
            [
                (unit, calib.get("count")),
                ("accuracy", calib.get("accuracy")),
                ("mean confidence", calib.get("mean_confidence")),
                ("expected calibration error (ECE)", calib.get("ece")),
            ]
        )
    )
    return section


def data_quality_section(facts: RunFacts) -> Section:
    section = Section("data-quality", "Data quality")
    validation, clean, tokenised = facts.get("validation"), facts.get("clean"), facts.get("tokenised")
    if not (validation or clean or tokenised):
        section.note = _why(facts, "validation", "clean")
        return section
    if validation:
        rows = []
        failed_checks = []
        for f in validation.get("files") or []:
            checks = f.get("checks") or []
            bad = [c for c in checks if not c.get("success")]
            failed_checks += [(f.get("path"), c) for c in bad]
            rows.append(
                [
                    f.get("role"),
                    f.get("path"),
                    f.get("rows"),
                    f.get("encoding"),
                    len(checks) - len(bad),
                    len(bad),
                    badge(f.get("success")),
                ]
            )
        section.blocks.append("<h3>Validation (Great Expectations)</h3>")
        section.blocks.append(
            table(["role", "file", "rows read", "encoding", "checks passed", "failed", "result"], rows, raw=(6,))
        )
        if failed_checks:
            section.blocks.append(
                table(
                    ["file", "check", "column", "unexpected", "details"],
                    [
                        [p, c.get("check"), c.get("column"), c.get("unexpected_count"), c.get("details")]
                        for p, c in failed_checks[:50]
                    ],
                )
            )
    if clean:
        section.blocks.append("<h3>Cleaning</h3>")
        if clean.get("failed"):
            section.blocks.append(paragraph(f"clean stopped the run: {clean['failed']}", "note"))
        counts = [
            ("rows read", clean.get("rows_in")),
            ("rows kept", clean.get("rows_out")),
            (
                "quarantined",
                f"{fmt(clean.get('quarantined'))} ({100 * float(clean.get('quarantine_share') or 0):.2f} %)",
            ),
            ("dropped duplicates", clean.get("dropped_duplicates")),
            ("dropped near-duplicates", clean.get("dropped_near_duplicates")),
            ("removed from train (leakage)", clean.get("leakage_removed_from_train")),
            ("overlap validation/test", clean.get("overlap_validation_test")),
        ]
        section.blocks.append(key_values([(k, v) for k, v in counts if v is not None]))
        reasons = clean.get("quarantine_reasons") or {}
        if reasons:
            section.blocks.append(table(["quarantine reason", "rows"], sorted(reasons.items(), key=lambda x: -x[1])))
        inputs = clean.get("inputs") or []
        if inputs:  # one column per input file, one row per count
            keys = sorted({k for i in inputs for k in i if k not in ("path", "role") and isinstance(i[k], int | float)})
            columns = ["count", *[f"{i.get('role')}: {i.get('path')}" for i in inputs]]
            section.blocks.append(table(columns, [[k, *[i.get(k) for i in inputs]] for k in keys]))
        splits = clean.get("splits") or {}
        class_counts = clean.get("class_counts") or {}
        if splits:
            labels = sorted({lab for c in class_counts.values() for lab in c})
            rows = [
                [name, n, *[(class_counts.get(name) or {}).get(lab) for lab in labels]] for name, n in splits.items()
            ]
            section.blocks.append(table(["split", "rows", *labels], rows))
    if tokenised:
        section.blocks.append("<h3>Tokenisation</h3>")
        splits = tokenised.get("splits") or {}
        columns = ["rows", "features", "mean_tokens", "max_tokens", "truncated_rows"]
        section.blocks.append(
            table(["split", *columns], [[name, *[s.get(c) for c in columns]] for name, s in splits.items()])
        )
        section.blocks.append(
            paragraph(f"max_length {tokenised.get('max_length')}; tokenizer {tokenised.get('tokenizer')}")
        )
    return section


def gate_section(facts: RunFacts) -> Section:
    reg = facts.get("registration") or {}
    gate = reg.get("gate") or facts.get("gate")
    section = Section("gate", "Gate decision against the champion")
    if not gate:
        section.note = _why(facts, "gate", "registration")
        return section
    final = bool(gate.get("final", True)) and bool(reg.get("gate"))
    facts_rows: list[tuple[str, Any]] = [
        ("metric", gate.get("metric")),
        ("challenger (this run)", gate.get("challenger")),
        (
            "champion",
            f"v{gate['champion_version']}: {fmt(gate.get('champion'))}" if gate.get("champion_version") else "none",
        ),
        ("how the champion was scored", gate.get("champion_basis")),
    ]
    if reg:
        facts_rows.append(("champion moved", "yes" if reg.get("promoted") else "no"))
        if reg.get("promotion_held"):
            facts_rows.append(("promotion held", reg["promotion_held"]))
    verdict = badge(gate.get("passed"))
    kind = "final decision (register)" if final else "preliminary decision (evaluate: parity and latency pending)"
    section.blocks.append(f"<p>{verdict} {esc(kind)}</p>")
    section.blocks.append(key_values(facts_rows))
    rows = [[c.get("name"), badge(c.get("passed")), c.get("detail")] for c in gate_checks(gate)]
    rows += [[name, badge(None, unknown="pending"), "decided at register"] for name in gate.get("pending") or []]
    section.blocks.append(table(["check", "result", "detail"], rows, raw=(1,)))
    return section


def onnx_section(facts: RunFacts) -> Section:
    parity = facts.get("parity")
    section = Section("onnx", "ONNX export: parity and latency")
    if not parity:
        section.note = _why(facts, "parity")
        return section
    section.blocks.append(
        f"<p>{badge(parity.get('passed'))} parity of ONNX Runtime against PyTorch on real test rows</p>"
    )
    section.blocks.append(
        key_values(
            [
                ("max abs difference", parity.get("max_abs_diff")),
                ("tolerance (atol)", parity.get("atol")),
                ("rows compared", parity.get("rows")),
                ("results that differ", parity.get("label_mismatches")),
                ("batch sizes", ", ".join(str(b) for b in parity.get("batch_sizes") or [])),
                ("opset", parity.get("opset")),
                ("model size", f"{(parity.get('onnx_bytes') or 0) / 1e6:.1f} MB"),
                (
                    "latency p50 (batch 1)",
                    f"{fmt(parity.get('latency_p50_ms'), 2)} ms" if parity.get("latency_p50_ms") is not None else None,
                ),
                (
                    "latency p95 (batch 1)",
                    f"{fmt(parity.get('latency_p95_ms'), 2)} ms" if parity.get("latency_p95_ms") is not None else None,
                ),
                ("latency runs", parity.get("latency_runs")),
                *served_graph_lines(parity),
            ]
        )
    )
    return section


def lineage_section(facts: RunFacts) -> Section:
    section = Section("lineage", "Lineage")
    tags = facts.lineage
    if not tags:
        section.note = "not available: no lineage recorded for this run yet"
        return section
    keys = [
        ("raw data md5", "data.md5"),
        ("cleaned splits sha256", "data.clean_sha256"),
        ("test split sha256", "data.test_sha256"),
        ("tokenised cache key", "tokenise.cache_key"),
        ("params hash", "params.hash"),
        ("code sha256", "code.sha256"),
        ("git commit", "git.commit"),
        ("git tree dirty", "git.dirty"),
        ("seed", "train.seed"),
        ("ONNX sha256", "onnx.sha256"),
        ("DVC experiment", "dvc.exp_name"),
    ]
    section.blocks.append(key_values([(label, tags[k]) for label, k in keys if tags.get(k)]))
    versions = {k.removeprefix("version."): v for k, v in tags.items() if k.startswith("version.")}
    if versions:
        section.blocks.append(paragraph("libraries: " + ", ".join(f"{k} {v}" for k, v in sorted(versions.items()))))
    return section


def build_sections(facts: RunFacts, params: Params, task: Task) -> list[Section]:
    return [
        summary_section(facts, params, task),
        training_section(facts, params),
        evaluation_section(facts, params, task),
        slices_section(facts),
        calibration_section(facts),
        data_quality_section(facts),
        gate_section(facts),
        onnx_section(facts),
        lineage_section(facts),
    ]


def render_report(facts: RunFacts, params: Params, task: Task) -> str:
    reg = facts.get("registration") or {}
    name = f"{reg['name']} v{reg['version']}" if reg else params.project.registered_model
    title = f"nlpops run report: {name}"
    subtitle = (
        f"{task.name} · data {params.data.path} · run {facts.run_id or 'none'} · experiment {params.project.experiment}"
    )
    if facts.failed:
        stage, error = facts.failed
        banner, cls = f"PARTIAL: the run stopped at {stage}: {error}", "partial"
    else:
        banner, cls = "Complete run: every stage finished", "complete"
    generated = datetime.now(UTC).isoformat(timespec="seconds")
    footer = f"generated by nlpops at {generated} from {facts.paths.root}; self-contained (no scripts, no network)"
    return page(title, subtitle, banner, cls, build_sections(facts, params, task), footer)


def write_report(facts: RunFacts, params: Params, task: Task, out_dir: Path) -> dict[str, Path]:
    """index.html and learning_curves.svg (a DVC image plot) in out_dir."""
    out_dir.mkdir(parents=True, exist_ok=True)
    index = out_dir / "index.html"
    index.write_text(render_report(facts, params, task), encoding="utf-8")
    curves = out_dir / "learning_curves.svg"
    train = facts.get("train") or {}
    metric = (train.get("best_metric") or {}).get("name") or params.stopping_metric
    charts = learning_curves(facts.history, metric, train.get("best_epoch"))
    curves.write_text(standalone_svg(charts[0] if charts else _EMPTY_SVG), encoding="utf-8")
    return {"report": index, "learning_curves": curves}
