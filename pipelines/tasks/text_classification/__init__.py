"""Text classification: single sentences, or sentence pairs with `data.text_pair_column` (sequence classification
head). Importing this package is cheap: torch and transformers load inside the methods that need them."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.schema import TaskOptions
from pipelines.tasks.catalog import TaskSpec


class Options(TaskOptions):
    type: Literal["text_classification"] = Field(
        "text_classification", description="Pair classification is text_classification + data.text_pair_column."
    )


SPEC = TaskSpec(
    name="text_classification",
    metrics=("macro_f1", "accuracy"),
    formats=("csv", "tsv", "jsonl", "parquet"),
    modules=(
        "pipelines.tasks.text_classification",
        "pipelines.tasks.text_classification.task",
        "pipelines.tasks.text_classification.metrics",
        "pipelines.tasks.text_classification.runtime",
        "pipelines.data.validate",
        "pipelines.data.clean",
        "pipelines.data.load",
    ),
    runtime="pipelines.tasks.text_classification.runtime:OnnxTextClassifier",
)


def __getattr__(name: str):  # PEP 562: the Task class loads its heavier module on first use
    if name == "Task":
        from pipelines.tasks.text_classification.task import TextClassification

        return TextClassification
    if name == "OnnxTextClassifier":
        from pipelines.tasks.text_classification.runtime import OnnxTextClassifier

        return OnnxTextClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
