"""Token classification metrics.

scheme IOB2 (NER): entity-level precision / recall / F1 with seqeval in strict IOB2 mode (`mode="strict",
scheme=IOB2`: an entity counts only when its type and exact boundaries match; seqeval's default lenient mode would
also credit e.g. a gold `B-PER I-PER` predicted as `I-PER I-PER`), micro-averaged over entities, plus per-type
scores and token accuracy.

scheme none (POS-style tag sets, no entities): `accuracy` (token accuracy) is what matters; `f1`, `precision` and
`recall` are then the *macro* average of per-tag token-level scores over the tags present in the gold data (so the
metric keys, and the gate's primary metric `f1`, exist for every scheme).
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np


def token_accuracy(gold: list[list[str]], pred: list[list[str]]) -> float:
    total = sum(len(g) for g in gold)
    right = sum(int(a == b) for g, p in zip(gold, pred, strict=True) for a, b in zip(g, p, strict=True))
    return right / total if total else 0.0


def _check_lengths(gold: list[list[str]], pred: list[list[str]]) -> None:
    if len(gold) != len(pred):
        raise ValueError(f"{len(pred)} predicted sentences for {len(gold)} gold sentences")
    for i, (g, p) in enumerate(zip(gold, pred, strict=True)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(p)} predicted tags for {len(g)} words")


def entity_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """seqeval strict IOB2: micro precision/recall/F1, per type {precision, recall, f1, support}, token accuracy."""
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    _check_lengths(gold, pred)
    gold = [list(s) for s in gold]
    pred = [list(s) for s in pred]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # seqeval warns about ill-defined scores of absent types
        report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    per_type = {
        name: {
            "precision": float(v["precision"]),
            "recall": float(v["recall"]),
            "f1": float(v["f1-score"]),
            "support": int(v["support"]),
        }
        for name, v in report.items()
        if not name.endswith(" avg")
    }
    micro = report.get("micro avg") or {"precision": 0.0, "recall": 0.0, "f1-score": 0.0, "support": 0}
    return {
        "f1": float(micro["f1-score"]),
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "accuracy": token_accuracy(gold, pred),
        "per_type": per_type,
        "entities": int(micro["support"]),
    }


def tag_scores(gold: list[list[str]], pred: list[list[str]]) -> dict[str, Any]:
    """scheme none: token accuracy, and macro precision/recall/F1 over the gold tags (per tag in per_type)."""
    _check_lengths(gold, pred)
    flat_gold = np.asarray([t for s in gold for t in s], dtype=object)
    flat_pred = np.asarray([t for s in pred for t in s], dtype=object)
    per_type: dict[str, dict[str, Any]] = {}
    for tag in sorted(set(flat_gold.tolist())):
        tp = int(((flat_gold == tag) & (flat_pred == tag)).sum())
        predicted = int((flat_pred == tag).sum())
        support = int((flat_gold == tag).sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_type[tag] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    mean = lambda k: float(np.mean([v[k] for v in per_type.values()])) if per_type else 0.0  # noqa: E731
    return {
        "f1": mean("f1"),
        "precision": mean("precision"),
        "recall": mean("recall"),
        "accuracy": token_accuracy(gold, pred),
        "per_type": per_type,
        "averaging": "macro over gold tags (token level); scheme none",
    }


def score_tags(gold: list[list[str]], pred: list[list[str]], scheme: str) -> dict[str, Any]:
    """The task's metrics for a scheme ('IOB2' or 'none'); adds `rows` (sentences) and `tokens`."""
    scores = entity_scores(gold, pred) if scheme == "IOB2" else tag_scores(gold, pred)
    scores["rows"] = len(gold)
    scores["tokens"] = sum(len(s) for s in gold)
    scores["scheme"] = scheme
    return scores
