"""Token classification (NER with IOB2 tags, or POS-style tag sets): one tag per word.

Importing this package is cheap (pydantic only): torch and transformers load inside the methods that need them,
and the runtime imports only numpy and onnxruntime. The modules:

- `readers`: CoNLL / JSONL / Parquet files -> the canonical frame (tokens, tags, source_line);
- `iob`: IOB2 checks, repair and entity spans (pure Python);
- `windows`: sub-word alignment (`word_ids()`), overlapping windows for long sentences and the merge of window
  predictions back to words (numpy only; shared by training and the runtime);
- `validation`, `clean`: the validate and clean stages' task part;
- `metrics`: seqeval strict IOB2 scores, per type;
- `task`: the Task implementation; `runtime`: the torch-free ONNX runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.schema import TaskOptions
from pipelines.tasks.catalog import TaskSpec


class Options(TaskOptions):
    type: Literal["token_classification"] = Field("token_classification", description="NER (IOB2) or POS tagging.")
    label_all_tokens: bool = Field(
        False,
        description="Label every sub-token of a word (B- becomes I- on continuation pieces); else only the first.",
    )
    scheme: Literal["IOB2", "none"] = Field(
        "IOB2",
        description="IOB2: entity tags (B-X, I-X, O), entity-level seqeval metrics and BIO checks; none: a plain tag "
        "set (POS), token accuracy and per-tag macro scores, no BIO checks.",
    )
    stride: int = Field(
        32,
        ge=0,
        description="Overlap (in sub-word tokens) between the windows a sentence longer than tokenise.max_length is "
        "split into; sentences are never truncated.",
    )
    min_tokens: int = Field(1, ge=0, description="Validation: fewest words a sentence may have.")
    max_tokens: int | None = Field(None, ge=1, description="Validation: most words a sentence may have; empty = any.")


SPEC = TaskSpec(
    name="token_classification",
    metrics=("f1", "precision", "recall", "accuracy"),
    formats=("conll", "jsonl", "parquet"),
    modules=(
        "pipelines.tasks.token_classification",
        "pipelines.tasks.token_classification.readers",
        "pipelines.tasks.token_classification.iob",
        "pipelines.tasks.token_classification.windows",
        "pipelines.tasks.token_classification.validation",
        "pipelines.tasks.token_classification.clean",
        "pipelines.tasks.token_classification.metrics",
        "pipelines.tasks.token_classification.task",
        "pipelines.tasks.token_classification.runtime",
        "pipelines.data.validate",
    ),
    runtime="pipelines.tasks.token_classification.runtime:OnnxTokenClassifier",
)

__all__ = ["SPEC", "OnnxTokenClassifier", "Options", "Task"]


def __getattr__(name: str):  # PEP 562: the Task and runtime classes load their modules on first use
    if name == "Task":
        from pipelines.tasks.token_classification.task import TokenClassification

        return TokenClassification
    if name == "OnnxTokenClassifier":
        from pipelines.tasks.token_classification.runtime import OnnxTokenClassifier

        return OnnxTokenClassifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
