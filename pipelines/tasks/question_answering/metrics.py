"""The official SQuAD 2.0 metric, written in the project (pure Python).

normalise: lower case, punctuation removed, articles (a/an/the) removed, whitespace collapsed. Exact match compares
normalised strings; F1 is over the bags of normalised tokens. Each prediction is scored against every gold answer
and the best counts; an unanswerable question's gold is [""], which only the empty prediction matches. The best
threshold search follows the official script: questions sorted by score difference (null - best span), the
threshold where F1 over all questions is highest.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Sequence
from typing import Any

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(text: str) -> str:
    text = "".join(ch for ch in str(text).lower() if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_score(gold: str, pred: str) -> int:
    return int(normalize_answer(gold) == normalize_answer(pred))


def f1_score(gold: str, pred: str) -> float:
    gold_toks, pred_toks = normalize_answer(gold).split(), normalize_answer(pred).split()
    if not gold_toks or not pred_toks:  # unanswerable: 1 only when both are empty
        return float(gold_toks == pred_toks)
    common = collections.Counter(gold_toks) & collections.Counter(pred_toks)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred_toks), same / len(gold_toks)
    return 2 * precision * recall / (precision + recall)


def gold_list(answers: Sequence[str]) -> list[str]:
    """Gold answers that normalise to something; [''] for an unanswerable question."""
    golds = [a for a in answers if normalize_answer(a)]
    return golds or [""]


def per_question(golds: Sequence[Sequence[str]], preds: Sequence[str]) -> tuple[list[int], list[float]]:
    exact, f1 = [], []
    for answers, pred in zip(golds, preds, strict=True):
        g = gold_list(answers)
        exact.append(max(exact_score(a, pred) for a in g))
        f1.append(max(f1_score(a, pred) for a in g))
    return exact, f1


def _mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else 0.0


def find_best_threshold(
    preds: Sequence[str], scores: Sequence[float], score_diffs: Sequence[float], has_ans: Sequence[bool]
) -> tuple[float, float]:
    """(best score in [0, 1], threshold) for one per-question score list (exact or F1 of the span answer `preds`):
    predicting '' for every question whose score_diff > threshold. As in the official evaluate-v2.0 script."""
    num_no_ans = sum(1 for h in has_ans if not h)
    cur = best = float(num_no_ans)
    # no question helps: a threshold below every difference, so that '' is predicted everywhere (the official
    # script's 0.0 would still answer the questions whose best span outscores the null answer)
    best_thresh = min(0.0, min(score_diffs, default=0.0) - 1.0)
    order = sorted(range(len(score_diffs)), key=lambda i: score_diffs[i])
    for i in order:
        if has_ans[i]:
            diff = scores[i]
        elif preds[i]:
            diff = -1.0
        else:
            diff = 0.0
        cur += diff
        if cur > best:
            best, best_thresh = cur, float(score_diffs[i])
    return best / max(len(scores), 1), best_thresh


def squad_v2_scores(
    golds: Sequence[Sequence[str]],
    preds: Sequence[str],
    span_preds: Sequence[str] | None = None,
    score_diffs: Sequence[float] | None = None,
) -> dict[str, Any]:
    """Scores in [0, 1]: f1, exact, has_ans_*, no_ans_* (0 and counts 0 when a part has no questions) and, with the
    best span answers and their score differences, best_f1 / best_exact and their thresholds."""
    has_ans = [any(normalize_answer(a) for a in g) for g in golds]
    exact, f1 = per_question(golds, preds)
    has = [i for i, h in enumerate(has_ans) if h]
    no = [i for i, h in enumerate(has_ans) if not h]
    out: dict[str, Any] = {
        "f1": _mean(f1),
        "exact": _mean(exact),
        "has_ans_exact": _mean([exact[i] for i in has]),
        "has_ans_f1": _mean([f1[i] for i in has]),
        "no_ans_exact": _mean([exact[i] for i in no]),
        "no_ans_f1": _mean([f1[i] for i in no]),
        "has_ans_total": len(has),
        "no_ans_total": len(no),
        "total": len(golds),
    }
    if span_preds is not None and score_diffs is not None:
        span_exact, span_f1 = per_question(golds, span_preds)
        out["best_exact"], out["best_exact_thresh"] = find_best_threshold(span_preds, span_exact, score_diffs, has_ans)
        out["best_f1"], out["best_f1_thresh"] = find_best_threshold(span_preds, span_f1, score_diffs, has_ans)
    return out
