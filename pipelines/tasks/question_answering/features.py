"""Question + context windows and the n-best post-processing (numpy and the fast tokenizer only; shared by the
tokenise stage, the torch predict and the runtime, so training and serving see the same windows).

A window is `[CLS] question [SEP] context-piece [SEP]`: the context is cut into pieces of at most
`max_length` tokens overall (truncation only_second) that overlap by `doc_stride` tokens. Each window keeps
`offset_start` / `offset_end` (character offsets into its context for context tokens, -1 elsewhere) and
`example_id` (its question's row). Labels: the token positions of the answer's first and last character when the
whole answer lies inside the window's context, else both 0 (the CLS token: "no answer in this window").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NO_OFFSET = -1


def cut_question(tokenizer: Any, question: str, max_query_length: int) -> str:
    """The question without leading blanks, cut after `max_query_length` tokens (a question longer than the window
    would leave no room for the context)."""
    question = str(question).lstrip()
    enc = tokenizer(question, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    if len(offsets) <= max_query_length:
        return question
    return question[: offsets[max_query_length - 1][1]]


def encode_windows(
    tokenizer: Any,
    questions: Sequence[str],
    contexts: Sequence[str],
    max_length: int,
    doc_stride: int,
    max_query_length: int = 64,
    answers: Sequence[tuple[int, int] | None] | None = None,
    batch_size: int = 1000,
) -> dict[str, list]:
    """Feature columns for (question, context) pairs: input_ids, token_type_ids, offset_start, offset_end,
    example_id, length and, with `answers` ((start_char, end_char) or None per example), start/end_positions."""
    query_limit = max(1, min(max_query_length, max_length // 2 - 3))
    stride = min(doc_stride, max(0, max_length - query_limit - 4))  # the tokenizer needs stride < the context room
    out: dict[str, list] = {k: [] for k in ("input_ids", "token_type_ids", "offset_start", "offset_end")}
    out["example_id"], out["length"] = [], []
    if answers is not None:
        out["start_positions"], out["end_positions"] = [], []
    for first in range(0, len(questions), batch_size):
        qs = [cut_question(tokenizer, q, query_limit) for q in questions[first : first + batch_size]]
        cs = [str(c) for c in contexts[first : first + batch_size]]
        enc = tokenizer(
            qs,
            cs,
            truncation="only_second",
            max_length=max_length,
            stride=stride,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
            return_token_type_ids=True,
            padding=False,
        )
        mapping = enc["overflow_to_sample_mapping"]
        for i, ids in enumerate(enc["input_ids"]):
            sequence = enc.sequence_ids(i)
            starts = [o[0] if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][i], sequence, strict=True)]
            ends = [o[1] if s == 1 else NO_OFFSET for o, s in zip(enc["offset_mapping"][i], sequence, strict=True)]
            example = first + int(mapping[i])
            out["input_ids"].append(list(ids))
            out["token_type_ids"].append(list(enc["token_type_ids"][i]))
            out["offset_start"].append(starts)
            out["offset_end"].append(ends)
            out["example_id"].append(example)
            out["length"].append(len(ids))
            if answers is not None:
                s, e = answer_positions(starts, ends, answers[example])
                out["start_positions"].append(s)
                out["end_positions"].append(e)
    return out


def answer_positions(starts: Sequence[int], ends: Sequence[int], answer: tuple[int, int] | None) -> tuple[int, int]:
    """Token positions of the answer span [start_char, end_char) in one window, or (0, 0) (CLS) when there is no
    answer or it is not wholly inside this window's context."""
    if answer is None:
        return 0, 0
    start_char, end_char = answer
    context = [k for k, s in enumerate(starts) if s != NO_OFFSET]
    if not context or starts[context[0]] > start_char or ends[context[-1]] < end_char:
        return 0, 0
    token_start = next(k for k in context if ends[k] > start_char)
    token_end = next(k for k in reversed(context) if starts[k] < end_char)
    if token_end < token_start:
        return 0, 0
    return token_start, token_end


def pad_batch(rows: Sequence[Sequence[int]], pad: int) -> tuple[np.ndarray, np.ndarray]:
    """int64 [batch, longest] ids and the attention mask."""
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), width), pad, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = list(r)
        mask[i, : len(r)] = 1
    return ids, mask


def best_answers(
    start_logits: Sequence[np.ndarray],
    end_logits: Sequence[np.ndarray],
    offset_start: Sequence[Sequence[int]],
    offset_end: Sequence[Sequence[int]],
    example_ids: Sequence[int],
    contexts: Sequence[str],
    n_best_size: int = 20,
    max_answer_length: int = 30,
) -> list[dict[str, Any]]:
    """Per example: the best span over all its windows and the null score.

    Candidates are the n_best_size highest start and end logits of each window, kept when both are context tokens,
    end >= start and the span has at most max_answer_length tokens; a span's score is start + end logit. The null
    score is the minimum over the example's windows of start[CLS] + end[CLS]. Returns dicts with `text`, `start`,
    `end` (characters; '' / -1 when no valid span), `score` (best span score, -inf without one), `null_score`,
    `score_diff` (null_score - score) and `probability` (softmax of the best span over the n-best and the null)."""
    windows: dict[int, list[int]] = {}
    for f, e in enumerate(example_ids):
        windows.setdefault(int(e), []).append(f)
    results = []
    for e, context in enumerate(contexts):
        null_score = float("inf")
        candidates: list[tuple[float, int, int]] = []
        for f in windows.get(e, []):
            start, end = np.asarray(start_logits[f]), np.asarray(end_logits[f])
            starts, ends = offset_start[f], offset_end[f]
            n = min(len(start), len(starts))
            null_score = min(null_score, float(start[0] + end[0]))
            top_start = np.argsort(start[:n])[::-1][:n_best_size]
            top_end = np.argsort(end[:n])[::-1][:n_best_size]
            for s in top_start:
                if starts[s] == NO_OFFSET:
                    continue
                for t in top_end:
                    if ends[t] == NO_OFFSET or t < s or t - s + 1 > max_answer_length:
                        continue
                    candidates.append((float(start[s] + end[t]), int(starts[s]), int(ends[t])))
        if null_score == float("inf"):
            null_score = 0.0
        candidates.sort(key=lambda c: -c[0])
        candidates = candidates[:n_best_size]
        if candidates:
            score, char_start, char_end = candidates[0]
            logits = np.array([c[0] for c in candidates] + [null_score])
            probs = np.exp(logits - logits.max())
            probability = float(probs[0] / probs.sum())
            null_probability = float(probs[-1] / probs.sum())
            text = context[char_start:char_end]
        else:
            score, char_start, char_end, text = float("-inf"), -1, -1, ""
            probability, null_probability = 0.0, 1.0
        results.append(
            {
                "text": text,
                "start": char_start,
                "end": char_end,
                "score": score,
                "null_score": null_score,
                "score_diff": null_score - score if candidates else float("inf"),
                "probability": probability,
                "null_probability": null_probability,
            }
        )
    return results


def final_answer(best: dict[str, Any], threshold: float) -> str:
    """The span text, or '' (no answer) when null score - span score exceeds the threshold or there is no span."""
    return "" if not best["text"] or best["score_diff"] > threshold else str(best["text"])
