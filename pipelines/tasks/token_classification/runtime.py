"""Torch-free token classification runtime: ONNX Runtime + the training tokenizer + serving.json.

An input item is a raw string (split into words: letter/digit runs and single symbols, character offsets kept) or
a list of words (joined by single spaces for the offsets). Sentences longer than serving.json's max_length are
windowed exactly as in training (windows.py). Each result is
`{"entities": [{"type", "text", "start", "end", "score"}], "tags": [...], "words": [...], "scores": [...]}` with
character spans into the input string; an entity's score is the mean of its words' tag probabilities. With
scheme none (POS-style tags) `entities` is empty.
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.serving import OnnxRuntimeModel, length_batches
from pipelines.tasks.token_classification.iob import entity_spans
from pipelines.tasks.token_classification.windows import encode_windows, merge_windows, pad_batch, split_words


def words_and_spans(item: Any) -> tuple[str, list[str], list[tuple[int, int]]]:
    """(text, words, character spans) for a raw string or a list of words."""
    if isinstance(item, str):
        words, spans = split_words(item)
        return item, words, spans
    if hasattr(item, "tolist"):
        item = item.tolist()
    if not isinstance(item, (list, tuple)):
        raise ValueError(f"token classification input must be a string or a list of words, got {type(item).__name__}")
    words = [str(w) for w in item]
    spans, position = [], 0
    for w in words:
        spans.append((position, position + len(w)))
        position += len(w) + 1
    return " ".join(words), words, spans


def decode_entities(
    text: str, tags: list[str], spans: list[tuple[int, int]], scores: list[float]
) -> list[dict[str, Any]]:
    """Entities with character spans into `text` (IOB2 tags, decoded leniently: a stray I-X starts an entity)."""
    out = []
    for kind, first, end in entity_spans(tags):
        start, stop = spans[first][0], spans[end - 1][1]
        word_scores = scores[first:end]
        out.append(
            {
                "type": kind,
                "text": text[start:stop],
                "start": int(start),
                "end": int(stop),
                "score": float(sum(word_scores) / len(word_scores)) if word_scores else 0.0,
            }
        )
    return out


class OnnxTokenClassifier(OnnxRuntimeModel):
    """Tags words and extracts entities with the exported token classification graph."""

    task = "token_classification"
    required_keys = ("max_length", "input_names", "id2label")

    def __init__(self, session: Any, tokenizer: Any, serving: dict[str, Any], path: Any = None) -> None:
        super().__init__(session, tokenizer, serving, path)
        id2label = serving["id2label"]
        self.labels = [id2label[k] for k in sorted(id2label, key=int)]
        self.stride = int(serving.get("stride", 0))
        self.scheme = str(serving.get("scheme", "IOB2"))
        self.fallback = self.labels.index("O") if "O" in self.labels else 0

    def logits(self, rows: list[list[int]], batch_size: int) -> list[Any]:
        """Per feature, in input order: its [tokens, labels] logits (padding removed); batch_size features of
        similar length per ONNX call (`sort_by_length`)."""
        import numpy as np

        pad = self.tokenizer.pad_token_id or 0
        out: list[Any] = [None] * len(rows)
        for index in length_batches([len(r) for r in rows], batch_size, self.sort_by_length):
            ids, mask = pad_batch([rows[i] for i in index], pad)
            available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            logits = self.run({name: available[name] for name in self.input_names})[0]
            for j, i in enumerate(index):
                out[i] = logits[j, : len(rows[i])]
        return out

    def predict(self, items: list[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        parsed = [words_and_spans(item) for item in items]
        features = encode_windows(self.tokenizer, [w for _, w, _ in parsed], self.max_length, self.stride)
        logits = self.logits(features["input_ids"], max(1, batch_size)) if features["input_ids"] else []
        preds, probs = merge_windows(
            features["word_ids"], features["example_id"], logits, [len(w) for _, w, _ in parsed], self.fallback
        )
        results = []
        for (text, words, spans), pred, prob in zip(parsed, preds, probs, strict=True):
            tags = [self.labels[i] for i in pred]
            scores = [float(p) for p in prob]
            entities = decode_entities(text, tags, spans, scores) if self.scheme == "IOB2" else []
            results.append({"entities": entities, "tags": tags, "words": words, "scores": scores})
        return results

    def format_result(self, result: dict[str, Any]) -> str:
        """One line for `nlpops predict`: `PER "Angela Merkel" 0:13 0.9812; LOC "Paris" 22:27 0.9901` (IOB2), or
        `word/TAG ...` with scheme none."""
        if self.scheme != "IOB2":
            return " ".join(f"{w}/{t}" for w, t in zip(result["words"], result["tags"], strict=True))
        if not result["entities"]:
            return "(no entities)"
        return "; ".join(
            f"{e['type']} {json.dumps(e['text'], ensure_ascii=False)} {e['start']}:{e['end']} {e['score']:.4f}"
            for e in result["entities"]
        )

    def items_from_frame(self, model_input: Any) -> list[Any]:
        """A DataFrame with a `text` (strings) or `tokens` (lists of words) column, a list of items, or a string."""
        import pandas as pd

        if isinstance(model_input, str):
            return [model_input]
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if isinstance(model_input, pd.DataFrame):
            for column in ("text", "tokens"):
                if column in model_input.columns:
                    return [v if isinstance(v, str) else list(v) for v in model_input[column].tolist()]
            raise ValueError(
                f"token classification input needs a 'text' or 'tokens' column (got {list(model_input.columns)})"
            )
        if isinstance(model_input, (list, tuple)):
            return list(model_input)
        raise ValueError(f"token classification input: unsupported type {type(model_input).__name__}")

    @classmethod
    def signature(cls) -> Any:
        """MLflow signature: a `text` string column in; entities, tags, words and scores out."""
        from mlflow.models import ModelSignature
        from mlflow.types.schema import Array, ColSpec, Object, Property, Schema

        entity = Object(
            [
                Property("type", "string"),
                Property("text", "string"),
                Property("start", "long"),
                Property("end", "long"),
                Property("score", "double"),
            ]
        )
        outputs = Schema(
            [
                ColSpec(Array(entity), "entities"),
                ColSpec(Array("string"), "tags"),
                ColSpec(Array("string"), "words"),
                ColSpec(Array("double"), "scores"),
            ]
        )
        return ModelSignature(inputs=Schema([ColSpec("string", "text")]), outputs=outputs)
