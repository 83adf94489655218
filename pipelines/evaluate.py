"""Test-split metrics, slices, plots for DVC, and the champion/challenger gate (a pure function).

The gate is decided twice with the same function: `evaluate` runs it on metrics alone (parity and latency are not
known yet, so those checks are *pending*), and `register` makes the final decision, under the promotion lock, with
the champion as it is at that moment plus the ONNX parity and latency that `export` measured.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import GateConfig, stable_hash

# A float compared after JSON round-trips (tags hold str(float)) must not fail on the last bit.
_EPS = 1e-9


@dataclass(frozen=True)
class GateCheck:
    name: str
    passed: bool
    detail: str
    values: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GateDecision:
    passed: bool
    metric: str
    challenger: float
    champion: float | None
    champion_version: str | None
    checks: list[GateCheck] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    @property
    def final(self) -> bool:
        """True once parity and latency were part of the decision (the register stage)."""
        return not self.pending

    @property
    def reasons(self) -> list[str]:
        return [c.detail for c in self.checks]

    @property
    def failed(self) -> list[GateCheck]:
        return [c for c in self.checks if not c.passed]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "final": self.final, "reasons": self.reasons}

    def summary(self, limit: int = 4900) -> str:
        """Compact JSON for a model-version tag (MLflow caps tag values at 5000 chars)."""
        data: dict[str, Any] = {
            "passed": self.passed,
            "final": self.final,
            "metric": self.metric,
            "challenger": round(self.challenger, 6),
            "champion": None if self.champion is None else round(self.champion, 6),
            "champion_version": self.champion_version,
            "failed": [c.detail for c in self.failed],
            "checks": {c.name: c.passed for c in self.checks},
        }
        text = json.dumps(data, separators=(",", ":"))
        if len(text) > limit:
            data["checks"] = {"total": len(self.checks), "failed": len(self.failed)}
            data["failed"] = [d[:300] for d in data["failed"][:10]]
            text = json.dumps(data, separators=(",", ":"))[:limit]
        return text


def membership_digest(members: Any) -> str:
    """Same digest = same rows in every slice: recorded slice metrics of two models are then comparable."""
    return stable_hash(members)


# ------------------------------------------------------------------------------------------------ the gate


def _slice_checks(
    challenger: dict[str, dict[str, Any]],
    champion: dict[str, dict[str, Any]] | None,
    cfg: GateConfig,
    champion_version: str | None,
) -> list[GateCheck]:
    if cfg.max_slice_drop is None:
        return []
    if not champion:
        return [GateCheck("slices", True, "champion has no slice metrics on this test split: slices not compared")]
    checks = []
    for name in sorted(challenger):
        mine, theirs = challenger[name], champion.get(name)
        if theirs is None or mine.get("value") is None or theirs.get("value") is None:
            continue
        if int(mine.get("rows", 0)) < cfg.slice_min_rows:
            continue
        new, old = float(mine["value"]), float(theirs["value"])
        drop = old - new
        ok = drop <= cfg.max_slice_drop + _EPS
        checks.append(
            GateCheck(
                f"slice:{name}",
                ok,
                f"slice {name} {mine.get('metric', '')} {new:.4f} vs champion v{champion_version} {old:.4f}: "
                f"drop {max(drop, 0.0):.4f} {'<=' if ok else '>'} max_slice_drop {cfg.max_slice_drop:.4f} "
                f"({mine.get('rows')} rows)",
                {"challenger": new, "champion": old, "drop": drop, "rows": int(mine.get("rows", 0))},
            )
        )
    if not checks:
        checks.append(
            GateCheck("slices", True, f"no slice has {cfg.slice_min_rows}+ rows in both models: slices not compared")
        )
    return checks


def decide_gate(
    metrics: dict[str, Any],
    cfg: GateConfig,
    champion_metrics: dict[str, Any] | None = None,
    champion_version: str | None = None,
    parity: dict[str, Any] | None = None,
    latency_p95_ms: float | None = None,
    metric: str | None = None,
) -> GateDecision:
    """Challenger metrics + thresholds + champion metrics (same test split) → pass/fail with reasons.

    Checks: the absolute floor `min_score`; with a champion, a gain of at least `min_improvement` (strictly better
    when it is 0) and no slice (`metrics["slices"]`) dropping more than `max_slice_drop`; ONNX parity passed; p95
    latency at batch 1 under `max_latency_ms`. No champion → absolute checks only. `parity=None` means export has
    not run yet: parity and latency are then listed as pending instead of checked.
    """
    name = metric or cfg.metric
    if name is None:
        raise ValueError("decide_gate needs the metric (gate.metric or the task's primary metric)")
    value = float(metrics[name])
    checks = [
        GateCheck(
            "min_score",
            value >= cfg.min_score - _EPS,
            f"{name} {value:.4f} {'>=' if value >= cfg.min_score - _EPS else '<'} min_score {cfg.min_score:.4f}",
            {"challenger": value, "min_score": cfg.min_score},
        )
    ]
    champion_value = None
    if champion_metrics is not None and champion_metrics.get(name) is not None:
        champion_value = float(champion_metrics[name])
        gain = value - champion_value
        # A tie never replaces the champion; only a negative min_improvement (an explicit opt-in) allows worse.
        ok = (
            gain >= cfg.min_improvement - _EPS
            if cfg.min_improvement < 0
            else gain > 0 and gain >= cfg.min_improvement - _EPS
        )
        checks.append(
            GateCheck(
                "beats_champion",
                ok,
                f"{name} {value:.4f} vs champion v{champion_version} {champion_value:.4f}: "
                f"gain {gain:+.4f} {'meets' if ok else 'misses'} min_improvement {cfg.min_improvement:+.4f}"
                + ("" if cfg.min_improvement else " (must be strictly better)"),
                {"challenger": value, "champion": champion_value, "gain": gain},
            )
        )
        checks += _slice_checks(metrics.get("slices") or {}, champion_metrics.get("slices"), cfg, champion_version)
    else:
        checks.append(GateCheck("beats_champion", True, "no champion yet: absolute thresholds only"))
    pending = []
    if parity is None:
        pending += ["onnx_parity", "latency"]
    else:
        diff, atol = parity.get("max_abs_diff"), parity.get("atol")
        ok = bool(parity.get("passed"))
        checks.append(
            GateCheck(
                "onnx_parity",
                ok,
                f"ONNX parity {'passed' if ok else 'FAILED'}: max abs diff {_num(diff)} vs atol {_num(atol)} "
                f"on {parity.get('rows', '?')} rows, {parity.get('label_mismatches', '?')} label mismatches",
                {"max_abs_diff": diff, "atol": atol},
            )
        )
        checks.append(_latency_check(latency_p95_ms, cfg.max_latency_ms))
    return GateDecision(
        passed=all(c.passed for c in checks),
        metric=name,
        challenger=value,
        champion=champion_value,
        champion_version=champion_version,
        checks=checks,
        pending=pending,
    )


def _latency_check(p95: float | None, limit: float | None) -> GateCheck:
    values = {"p95_ms": p95, "max_latency_ms": limit}
    if limit is None:
        measured = f"p95 {p95:.2f} ms" if p95 is not None else "not measured"
        return GateCheck("latency", True, f"no latency limit set (batch-1 {measured})", values)
    if p95 is None:
        return GateCheck("latency", False, f"p95 latency not measured (export.latency_runs=0) but limit {limit} ms set")
    ok = p95 <= limit
    return GateCheck(
        "latency", ok, f"p95 ONNX latency at batch 1 {p95:.2f} ms {'<=' if ok else '>'} max {limit:.2f} ms", values
    )


def _num(value: Any) -> str:
    try:
        return f"{float(value):.2e}"
    except (TypeError, ValueError):
        return "?"


def write_metrics(scores: dict[str, Any], metric_names: tuple[str, ...], path: Path) -> dict[str, float]:
    """metrics.json: the task's scalar test metrics and the row count (what `dvc metrics` and `dvc exp show` read)."""
    scalar = {name: float(scores[name]) for name in metric_names if name in scores}
    scalar["test_rows"] = int(scores.get("rows", 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(scalar, indent=2))
    return scalar


def calibration_summary(confidence: Any, correct: Any, unit: str = "examples", bins: int = 10) -> dict[str, Any]:
    """Equal-width confidence bins over [0, 1]: count, mean confidence and accuracy per bin, and the expected
    calibration error (ECE: the count-weighted gap between accuracy and confidence). What the run report draws
    its score histogram and reliability diagram from."""
    import numpy as np

    conf = np.clip(np.asarray(confidence, dtype=np.float64), 0.0, 1.0)
    right = np.asarray(correct, dtype=bool)
    edges = np.linspace(0.0, 1.0, bins + 1)
    index = np.minimum(np.searchsorted(edges, conf, side="right") - 1, bins - 1)
    out_bins, ece = [], 0.0
    for b in range(bins):
        mask = index == b
        count = int(mask.sum())
        record: dict[str, Any] = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "count": count}
        record["mean_confidence"] = record["accuracy"] = None
        if count:
            record["mean_confidence"], record["accuracy"] = float(conf[mask].mean()), float(right[mask].mean())
            ece += count / len(conf) * abs(record["accuracy"] - record["mean_confidence"])
        out_bins.append(record)
    return {
        "unit": unit,
        "count": len(conf),
        "accuracy": float(right.mean()) if len(right) else None,
        "mean_confidence": float(conf.mean()) if len(conf) else None,
        "ece": round(ece, 6) if len(conf) else None,
        "bins": out_bins,
    }
