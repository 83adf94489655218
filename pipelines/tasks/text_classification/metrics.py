"""Classification metrics, gate slices (per class, short/long texts, a user slice column) and evaluation views."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    n = len(id2label)
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    support = confusion.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0  # classes absent from this split do not drag macro-F1 down to zero
    per_class = {
        id2label[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(n)
    }
    total = max(int(confusion.sum()), 1)
    return {
        "accuracy": float(tp.sum() / total),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": [id2label[i] for i in range(n)],
        "rows": int(confusion.sum()),
    }


def slice_membership(
    labels: Any,
    id2label: dict[int, str],
    lengths: Any | None,
    long_threshold: int,
    groups: Sequence[Any] | None = None,
    group_column: str | None = None,
) -> dict[str, list[int]]:
    """Row indices of every slice: `class=<label>`, `length=short|long`, `<group_column>=<value>`."""
    label_ids = np.asarray(labels, dtype=np.int64)
    members: dict[str, list[int]] = {}
    for i, name in sorted(id2label.items()):
        members[f"class={name}"] = np.flatnonzero(label_ids == i).tolist()
    if lengths is not None:
        sizes = np.asarray(lengths)
        members["length=short"] = np.flatnonzero(sizes <= long_threshold).tolist()
        members["length=long"] = np.flatnonzero(sizes > long_threshold).tolist()
    if groups is not None and group_column:
        values = ["" if g is None or (isinstance(g, float) and np.isnan(g)) else str(g) for g in groups]
        for value in sorted(set(values)):
            members[f"{group_column}={value or '(empty)'}"] = [i for i, v in enumerate(values) if v == value]
    return members


def score_slices(
    predictions: Any,
    labels: Any,
    members: dict[str, list[int]],
    id2label: dict[int, str],
    metric: str,
) -> dict[str, dict[str, Any]]:
    """{slice: {value, rows, metric}}: a class slice scores that class's F1 (over the whole split, so false
    positives count); any other slice scores the gate metric on its rows."""
    predicted = np.asarray(predictions, dtype=np.int64)
    truth = np.asarray(labels, dtype=np.int64)
    overall = classification_metrics(predicted, truth, id2label)
    out: dict[str, dict[str, Any]] = {}
    for name, idx in members.items():
        if name.startswith("class="):
            label = name.removeprefix("class=")
            stats = overall["per_class"][label]
            out[name] = {"value": float(stats["f1"]), "rows": int(stats["support"]), "metric": "f1"}
        elif idx:
            sub = classification_metrics(predicted[idx], truth[idx], id2label)
            out[name] = {"value": float(sub[metric]), "rows": len(idx), "metric": metric}
        else:
            out[name] = {"value": None, "rows": 0, "metric": metric}
    return out


def plot_confusion_matrix(confusion: list[list[int]], labels: list[str], path: Path) -> None:
    from pipelines.report.png import confusion_matrix_png

    confusion_matrix_png(confusion, labels, path, "Confusion matrix (test split)")


def evaluation_paths(out_dir: Path) -> dict[str, Path]:
    return {
        "per_class": out_dir / "per_class.json",
        "confusion_csv": out_dir / "confusion.csv",
        "confusion_png": out_dir / "confusion_matrix.png",
    }


def write_classification_views(
    scores: dict[str, Any], predictions: np.ndarray, labels: np.ndarray, out_dir: Path
) -> dict[str, Path]:
    """per_class.json, confusion.csv (for `dvc plots`) and the confusion-matrix PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = scores["labels"]
    paths = evaluation_paths(out_dir)
    paths["per_class"].write_text(
        json.dumps({"per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"]}, indent=2)
    )
    rows = ["actual,predicted"] + [f"{names[a]},{names[p]}" for a, p in zip(labels, predictions, strict=True)]
    paths["confusion_csv"].write_text("\n".join(rows) + "\n")
    plot_confusion_matrix(scores["confusion_matrix"], names, paths["confusion_png"])
    return paths
