"""Torch-free question answering runtime: ONNX Runtime + the training tokenizer + serving.json.

An input item is `{"question": str, "context": str}` (a (question, context) pair is accepted too). Contexts longer
than one window are split exactly as in training (features.py). Each result is
`{"answer", "score", "start", "end", "no_answer", "span_text", "score_diff", "threshold"}`: `answer` is the span
text or '' (no answer: the null score beat the best span by more than serving.json's tuned threshold), `start` /
`end` are character offsets into the context (-1 with no answer), `score` the answer's probability among the n-best
spans and the null answer (the null's probability when there is no answer).
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.serving import OnnxRuntimeModel, length_batches
from pipelines.tasks.question_answering.features import best_answers, encode_windows, final_answer, pad_batch


def as_pair(item: Any) -> tuple[str, str]:
    if isinstance(item, dict):
        question, context = item.get("question"), item.get("context")
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        question, context = item
    else:
        raise ValueError(
            'question answering input must be {"question": ..., "context": ...}, got ' + type(item).__name__
        )
    if not isinstance(question, str) or not isinstance(context, str):
        raise ValueError('question answering input needs string "question" and "context" values')
    if not question.strip() or not context.strip():
        raise ValueError("question answering input: question and context must not be empty")
    return question, context


class OnnxQuestionAnswerer(OnnxRuntimeModel):
    """Answers questions about a context with the exported span graph."""

    task = "question_answering"
    required_keys = ("max_length", "input_names", "doc_stride")

    def __init__(self, session: Any, tokenizer: Any, serving: dict[str, Any], path: Any = None) -> None:
        super().__init__(session, tokenizer, serving, path)
        self.output_names = list(serving.get("output_names", ["start_logits", "end_logits"]))
        self.doc_stride = int(serving["doc_stride"])
        self.max_query_length = int(serving.get("max_query_length", 64))
        self.n_best_size = int(serving.get("n_best_size", 20))
        self.max_answer_length = int(serving.get("max_answer_length", 30))
        self.threshold = float(serving.get("null_score_diff_threshold", 0.0))

    def logits(self, features: dict[str, list], batch_size: int) -> tuple[list[Any], list[Any]]:
        """Per window, in input order: its start and end logits (padding removed); batch_size windows of similar
        length per ONNX call (`sort_by_length`)."""
        import numpy as np

        pad = self.tokenizer.pad_token_id or 0
        rows, types = features["input_ids"], features["token_type_ids"]
        starts: list[Any] = [None] * len(rows)
        ends: list[Any] = [None] * len(rows)
        for index in length_batches([len(r) for r in rows], batch_size, self.sort_by_length):
            ids, mask = pad_batch([rows[i] for i in index], pad)
            type_ids, _ = pad_batch([types[i] for i in index], 0)
            available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": type_ids}
            s, e = self.run({name: available[name] for name in self.input_names})[:2]
            for j, i in enumerate(index):
                starts[i] = np.asarray(s[j, : len(rows[i])])
                ends[i] = np.asarray(e[j, : len(rows[i])])
        return starts, ends

    def predict(self, items: list[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        pairs = [as_pair(item) for item in items]
        questions, contexts = [q for q, _ in pairs], [c for _, c in pairs]
        features = encode_windows(
            self.tokenizer, questions, contexts, self.max_length, self.doc_stride, self.max_query_length
        )
        starts, ends = self.logits(features, max(1, batch_size)) if features["input_ids"] else ([], [])
        best = best_answers(
            starts,
            ends,
            features["offset_start"],
            features["offset_end"],
            features["example_id"],
            contexts,
            self.n_best_size,
            self.max_answer_length,
        )
        results = []
        for b in best:
            answer = final_answer(b, self.threshold)
            results.append(
                {
                    "answer": answer,
                    "score": float(b["probability"] if answer else b["null_probability"]),
                    "start": int(b["start"]) if answer else -1,
                    "end": int(b["end"]) if answer else -1,
                    "no_answer": not answer,
                    "span_text": str(b["text"]),
                    "score_diff": float(b["score_diff"]),
                    "threshold": self.threshold,
                }
            )
        return results

    def format_result(self, result: dict[str, Any]) -> str:
        """`"Paris" 22:27 0.9812`, or `(no answer) 0.8731`."""
        if result["no_answer"]:
            return f"(no answer) {result['score']:.4f}"
        answer = json.dumps(result["answer"], ensure_ascii=False)
        return f"{answer} {result['start']}:{result['end']} {result['score']:.4f}"

    def items_from_frame(self, model_input: Any) -> list[Any]:
        """A DataFrame (or dict of columns) with `question` and `context` columns, a list of items, or one item."""
        import pandas as pd

        if isinstance(model_input, dict) and isinstance(model_input.get("question"), str):
            return [model_input]
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if isinstance(model_input, pd.DataFrame):
            missing = [c for c in ("question", "context") if c not in model_input.columns]
            if missing:
                raise ValueError(
                    f"question answering input needs 'question' and 'context' columns (got {list(model_input.columns)})"
                )
            return [
                {"question": str(q), "context": str(c)}
                for q, c in zip(model_input["question"], model_input["context"], strict=True)
            ]
        if isinstance(model_input, (list, tuple)):
            return list(model_input)
        raise ValueError(f"question answering input: unsupported type {type(model_input).__name__}")

    @classmethod
    def signature(cls) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([ColSpec("string", "question"), ColSpec("string", "context")])
        outputs = Schema(
            [
                ColSpec("string", "answer"),
                ColSpec("double", "score"),
                ColSpec("long", "start"),
                ColSpec("long", "end"),
                ColSpec("boolean", "no_answer"),
                ColSpec("string", "span_text"),
                ColSpec("double", "score_diff"),
                ColSpec("double", "threshold"),
            ]
        )
        return ModelSignature(inputs=inputs, outputs=outputs)
