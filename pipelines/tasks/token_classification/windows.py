"""Sub-word alignment and windows for token classification (numpy only: training and the runtime share it).

A sentence (a list of words) becomes one feature, or several overlapping windows when its sub-word tokens do not
fit `max_length`: consecutive words, at most `stride` tokens shared by neighbouring windows, never truncated
(only a single word longer than a whole window is cut, and then only its tail pieces). Each feature carries:

- `input_ids` (with the tokenizer's special tokens), `word_ids`: the *sentence-level* index of the word each token
  belongs to (-1 for special tokens), `example_id` (the sentence's row), `window_start_word`, `length`;
- `labels` (when gold tags are given): the word's tag id on its first sub-token, -100 on the other pieces (or, with
  `label_all_tokens`, the word's tag with B- turned into I-) and on special tokens.

Predictions come back to words with `merge_windows`: a word takes the prediction of its first sub-token, from the
window in which it is most central (farthest from the window's edges).
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np

IGNORE = -100
_WORD = re.compile(r"\w+(?:[-'’]\w+)*|[^\w\s]", re.UNICODE)


def split_words(text: str) -> tuple[list[str], list[tuple[int, int]]]:
    """Words of a raw string (runs of letters/digits, with inner hyphens/apostrophes; each other symbol alone) and
    their character spans."""
    matches = list(_WORD.finditer(text))
    return [m.group() for m in matches], [(m.start(), m.end()) for m in matches]


def window_ranges(counts: list[int], budget: int, stride: int) -> list[tuple[int, int]]:
    """Word ranges [start, end) covering every word: each at most `budget` tokens (a single longer word stands
    alone), neighbours sharing at most `stride` tokens of whole words, every window starting after the previous."""
    n = len(counts)
    ranges: list[tuple[int, int]] = []
    start = 0
    while n:
        end, used = start, 0
        while end < n and (used + counts[end] <= budget or end == start):
            used += counts[end]
            end += 1
        ranges.append((start, end))
        if end >= n:
            break
        nxt, overlap = end, 0
        while nxt - 1 > start and overlap + counts[nxt - 1] <= stride:
            nxt -= 1
            overlap += counts[nxt]
        start = nxt
    return ranges


def _word_ids(encoding: Any, i: int, offset: int) -> list[int]:
    return [-1 if w is None else int(w) + offset for w in encoding.word_ids(i)]


def encode_windows(
    tokenizer: Any, sentences: list[list[str]], max_length: int, stride: int, batch_size: int = 1000
) -> dict[str, list]:
    """Features for a list of sentences (see the module docstring); empty sentences get no feature."""
    out: dict[str, list] = {"input_ids": [], "word_ids": [], "example_id": [], "window_start_word": [], "length": []}

    def add(ids: list[int], wids: list[int], example: int, first_word: int) -> None:
        out["input_ids"].append(list(ids))
        out["word_ids"].append(wids)
        out["example_id"].append(example)
        out["window_start_word"].append(first_word)
        out["length"].append(len(ids))

    order = [i for i, words in enumerate(sentences) if len(words)]
    for begin in range(0, len(order), batch_size):
        chunk = order[begin : begin + batch_size]
        enc = tokenizer(
            [list(sentences[i]) for i in chunk],
            is_split_into_words=True,
            truncation=False,
            return_attention_mask=False,
            return_token_type_ids=False,
            verbose=False,
        )
        for k, example in enumerate(chunk):
            ids = enc["input_ids"][k]
            wids = _word_ids(enc, k, 0)
            if len(ids) <= max_length:
                add(ids, wids, example, 0)
                continue
            words = list(sentences[example])
            counts = np.bincount([w for w in wids if w >= 0], minlength=len(words)).tolist()
            budget = max(1, max_length - sum(1 for w in wids if w < 0))
            ranges = window_ranges(counts, budget, min(stride, budget - 1))
            win = tokenizer(
                [words[s:e] for s, e in ranges],
                is_split_into_words=True,
                truncation=True,
                max_length=max_length,
                return_attention_mask=False,
                return_token_type_ids=False,
            )
            for j, (s, _) in enumerate(ranges):
                add(win["input_ids"][j], _word_ids(win, j, s), example, s)
    # features in sentence order (chunks are already ordered; this keeps windows of one sentence together)
    return out


def first_subtokens(word_ids: list[int]) -> list[int]:
    """Positions of each word's first sub-token in one feature."""
    return [j for j, w in enumerate(word_ids) if w >= 0 and (j == 0 or word_ids[j - 1] != w)]


def align_labels(
    word_ids: list[int], tag_ids: list[int], label_all_tokens: bool, continuation: dict[int, int] | None = None
) -> list[int]:
    """Per token: the word's tag id on its first sub-token; on the other pieces -100, or with label_all_tokens the
    continuation tag id (`continuation` maps B-X's id to I-X's); -100 on special tokens."""
    labels = []
    previous = -1
    for w in word_ids:
        if w < 0:
            labels.append(IGNORE)
        elif w != previous:
            labels.append(int(tag_ids[w]))
        elif label_all_tokens:
            tag = int(tag_ids[w])
            labels.append((continuation or {}).get(tag, tag))
        else:
            labels.append(IGNORE)
        previous = w
    return labels


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def merge_windows(
    word_ids: list[list[int]],
    example_ids: list[int],
    logits: list[np.ndarray],
    n_words: list[int],
    fallback: int = 0,
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per sentence: the tag id and its probability for every word, from each word's first sub-token in the window
    where the word is most central. `logits[f]` is feature f's [tokens, labels] array (padding may follow).
    Words no window holds (a tokenizer that drops a character) get `fallback` with probability 0."""
    preds = [np.full(n, fallback, dtype=np.int64) for n in n_words]
    scores = [np.zeros(n, dtype=np.float64) for n in n_words]
    best = [np.full(n, -1, dtype=np.int64) for n in n_words]
    for wids, example, feature_logits in zip(word_ids, example_ids, logits, strict=True):
        positions = first_subtokens(wids)
        if not positions:
            continue
        words = np.asarray([wids[j] for j in positions], dtype=np.int64)
        lo, hi = int(min(w for w in wids if w >= 0)), int(max(wids))
        centrality = np.minimum(words - lo, hi - words)
        probs = softmax(np.asarray(feature_logits, dtype=np.float64)[positions])
        take = centrality > best[example][words]
        if not take.any():
            continue
        chosen = words[take]
        best[example][chosen] = centrality[take]
        preds[example][chosen] = probs[take].argmax(axis=-1)
        scores[example][chosen] = probs[take].max(axis=-1)
    return preds, scores


def pad_batch(rows: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows padded to the batch's longest: (ids, attention mask), int64 [batch, seq]."""
    width = max((len(r) for r in rows), default=1)
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask
