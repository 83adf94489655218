"""Extractive question answering (SQuAD 1.1 / 2.0, unanswerable questions included): a span of the context.

Importing this package is cheap (pydantic only). The modules:

- `readers`: SQuAD JSON (v1.1/v2.0, article title kept for splitting) / JSONL / Parquet -> the canonical frame
  (id, title, context, question, answer_texts, answer_starts, source);
- `features`: question + context windows (truncation only_second, stride, offsets, overflow -> example), start/end
  labels (CLS for a window without the answer) and the n-best post-processing (numpy only; shared by training and
  the runtime);
- `metrics`: the official SQuAD 2.0 metric (normalised exact match and token F1, has/no-answer parts, best
  threshold), written in the project;
- `validation`, `clean`: the validate and clean stages' task part;
- `task`: the Task implementation; `runtime`: the torch-free ONNX runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.schema import TaskOptions
from pipelines.tasks.catalog import TaskSpec


class Options(TaskOptions):
    type: Literal["question_answering"] = Field(
        "question_answering", description="Extractive question answering (SQuAD 2.0 style, may be unanswerable)."
    )
    max_length: int = Field(
        384, ge=16, description="Tokens per window (question + context); used instead of tokenise.max_length."
    )
    doc_stride: int = Field(128, ge=0, description="Overlap in tokens between consecutive windows of a long context.")
    max_query_length: int = Field(64, ge=1, description="Questions longer than this many tokens are cut.")
    n_best_size: int = Field(20, ge=1, description="Start and end candidates per window in post-processing.")
    max_answer_length: int = Field(30, ge=1, description="Longest answer span in tokens.")
    null_score_diff_threshold: float | None = Field(
        None,
        description="Answer '' when null score - best span score exceeds this; empty = tuned on the validation "
        "split (best F1) and stored with the model.",
    )
    train_negative_windows: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of the training windows of answerable questions that do not hold the answer kept "
        "(seeded); below 1 counters a small model's collapse to 'no answer'. Validation/test keep every window.",
    )
    train_unanswerable: float = Field(
        1.0,
        ge=0.0,
        le=1.0,
        description="Share of the unanswerable training questions kept (seeded, whole questions: all their windows "
        "or none); below 1 lowers the 'no answer' prior and the cost of an epoch. The null threshold tuned on the "
        "validation split (every question kept) re-balances the decision. Validation/test keep every question.",
    )
    answerable_only_epochs: int = Field(
        0,
        ge=0,
        description="A curriculum: the first N training epochs train on the windows that hold an answer only "
        "(spans first, as on SQuAD 1.1), the later ones on every training window kept (the unanswerable questions "
        "and answer-less windows too). Counters the collapse to 'no answer' without dropping negatives; must be "
        "below train.epochs.",
    )
    answer_search_window: int = Field(
        8, ge=0, description="Clean: an answer_start off by at most this many characters is moved to the answer."
    )


SPEC = TaskSpec(
    name="question_answering",
    metrics=("f1", "exact", "has_ans_exact", "has_ans_f1", "no_ans_exact", "no_ans_f1", "best_f1_thresh"),
    formats=("squad", "jsonl", "parquet"),
    modules=(
        "pipelines.tasks.question_answering",
        "pipelines.tasks.question_answering.readers",
        "pipelines.tasks.question_answering.features",
        "pipelines.tasks.question_answering.metrics",
        "pipelines.tasks.question_answering.validation",
        "pipelines.tasks.question_answering.clean",
        "pipelines.tasks.question_answering.task",
        "pipelines.tasks.question_answering.runtime",
        "pipelines.data.validate",
    ),
    runtime="pipelines.tasks.question_answering.runtime:OnnxQuestionAnswerer",
)

__all__ = ["SPEC", "OnnxQuestionAnswerer", "Options", "Task"]


def __getattr__(name: str):  # PEP 562: the Task and runtime classes load their modules on first use
    if name == "Task":
        from pipelines.tasks.question_answering.task import QuestionAnswering

        return QuestionAnswering
    if name == "OnnxQuestionAnswerer":
        from pipelines.tasks.question_answering.runtime import OnnxQuestionAnswerer

        return OnnxQuestionAnswerer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
