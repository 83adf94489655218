"""Test-split metrics, plots for DVC, and the champion/challenger gate (a pure function)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.config import GateConfig


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    challenger: float
    champion: float | None
    champion_version: str | None
    checks: list[GateCheck] = field(default_factory=list)

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reasons": self.reasons}


def decide_gate(
    metrics: dict[str, Any],
    cfg: GateConfig,
    champion_metrics: dict[str, Any] | None = None,
    champion_version: str | None = None,
) -> GateDecision:
    """Challenger metrics + thresholds + champion metrics (same test split) → pass/fail with reasons.

    No champion yet: only the absolute floor applies. With a champion: the challenger must also beat it by at
    least `min_improvement` on the gate metric. A tie never replaces the champion unless min_improvement < 0.
    """
    name = cfg.metric
    value = float(metrics[name])
    checks = [
        GateCheck(
            "min_score",
            value >= cfg.min_score,
            f"{name} {value:.4f} {'>=' if value >= cfg.min_score else '<'} min_score {cfg.min_score:.4f}",
        )
    ]
    champion_value = None
    if champion_metrics is not None and name in champion_metrics:
        champion_value = float(champion_metrics[name])
        gain = value - champion_value
        ok = gain >= cfg.min_improvement if cfg.min_improvement else gain > 0
        checks.append(
            GateCheck(
                "beats_champion",
                ok,
                f"{name} {value:.4f} vs champion v{champion_version} {champion_value:.4f}: "
                f"gain {gain:+.4f} {'meets' if ok else 'misses'} min_improvement {cfg.min_improvement:+.4f}"
                + ("" if cfg.min_improvement else " (must be strictly better)"),
            )
        )
    else:
        checks.append(GateCheck("beats_champion", True, "no champion yet: absolute threshold only"))
    return GateDecision(
        passed=all(c.passed for c in checks),
        metric=name,
        challenger=value,
        champion=champion_value,
        champion_version=champion_version,
        checks=checks,
    )


def plot_confusion_matrix(confusion: list[list[int]], labels: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    matrix = np.asarray(confusion)
    size = max(3.0, 0.6 * len(labels) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (i, j), count in np.ndenumerate(matrix):
        ax.text(j, i, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    ax.set_title("Confusion matrix (test split)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_evaluation(
    scores: dict[str, Any], predictions: np.ndarray, labels: np.ndarray, out_dir: Path
) -> dict[str, str]:
    """metrics.json (scalars, for `dvc metrics`), per_class.json, confusion.csv (for `dvc plots`), PNG."""
    out_dir.mkdir(parents=True, exist_ok=True)
    names = scores["labels"]
    scalar = {"accuracy": scores["accuracy"], "macro_f1": scores["macro_f1"], "test_rows": scores["rows"]}
    paths = {
        "metrics": out_dir / "metrics.json",
        "per_class": out_dir / "per_class.json",
        "confusion_csv": out_dir / "confusion.csv",
        "confusion_png": out_dir / "confusion_matrix.png",
    }
    paths["metrics"].write_text(json.dumps(scalar, indent=2))
    paths["per_class"].write_text(
        json.dumps({"per_class": scores["per_class"], "confusion_matrix": scores["confusion_matrix"]}, indent=2)
    )
    rows = ["actual,predicted"] + [f"{names[a]},{names[p]}" for a, p in zip(labels, predictions, strict=True)]
    paths["confusion_csv"].write_text("\n".join(rows) + "\n")
    plot_confusion_matrix(scores["confusion_matrix"], names, paths["confusion_png"])
    return {k: str(v) for k, v in paths.items()}
