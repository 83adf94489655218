"""Sequence to sequence (translation, summarisation, question generation): text in, text out.

Importing this package is cheap (pydantic only). The modules:

- `readers`: CSV/TSV/JSONL/Parquet with `data.source_column` / `data.target_column` -> the canonical frame (source,
  target, [slice], row), through the shared table reader (pipelines/data/load.py);
- `validation`, `clean`: the validate and clean stages' task part (empty rows, length bounds, copy data,
  duplicates by (source, target), a split that keeps every target of one source together);
- `metrics`: sacreBLEU corpus BLEU and chrF, ROUGE-1/2/L (rouge-score, no NLTK data), generated length, and the
  same scores for copying the source (the floor a model must beat); torch-free;
- `generation`: greedy and beam search in numpy, step for step what transformers' `generate` does (no-repeat
  n-grams, length penalty, forced BOS/EOS), over any "first step" / "next step" functions; torch-free;
- `model`: the model (a local AutoModelForSeq2SeqLM folder, or BERT2BERT warm-started from an encoder such as the
  bundled MiniLM), its special tokens and generation config, and the two ONNX graphs (encoder + first decoder
  step; one decoder step with past key/values);
- `task`: the Task implementation; `runtime`: the torch-free ONNX runtime.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from pipelines.schema import Section, TaskOptions
from pipelines.tasks.catalog import TaskSpec

LEARNED_VOCABULARY = 1000  # output-vocabulary tokens kept on a trained model; task.output_vocabulary takes the first N


class GenerateOptions(Section):
    """How text is generated (evaluation, the early-stopping metric, the ONNX runtime: the same settings)."""

    num_beams: int = Field(4, ge=1, le=16, description="Beam width; 1 = greedy.")
    max_new_tokens: int = Field(48, ge=1, le=1024, description="Most tokens generated per output (EOS included).")
    no_repeat_ngram_size: int = Field(3, ge=0, description="No n-gram of this size twice in one output; 0 = off.")
    length_penalty: float = Field(
        1.0, description="Beam search: a finished hypothesis scores sum(log p) / length**length_penalty."
    )
    early_stopping: bool = Field(
        False, description="Beam search: stop as soon as num_beams hypotheses are finished (transformers' True)."
    )
    source_bias: float = Field(
        0.0,
        ge=0.0,
        le=20.0,
        description="Added to the score of every token of the source at every step (after the other rules; start, "
        "EOS and pad excepted): a decoding prior toward the source's words, for tasks whose outputs reuse them "
        "(question generation, summarisation) when little data leaves the model leaning on its language-model "
        "prior. 0 = off. It changes no weight (serving.json carries it), but the per-epoch validation metric is "
        "generated with it.",
    )


class Options(TaskOptions):
    type: Literal["seq2seq"] = Field("seq2seq", description="Sequence to sequence: text in, text out.")
    prefix: str = Field("", description="Prepended to every source (T5-style task prefix, e.g. 'summarize: ').")
    max_target_length: int = Field(
        64, ge=2, le=1024, description="Target tokens trained on (EOS included); longer targets are cut."
    )
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0, description="Label smoothing of the training loss.")
    primary_metric: Literal["bleu", "chrf", "rouge1", "rouge2", "rougeL"] = Field(
        "bleu", description="The metric the gate and early stopping use unless gate.metric / train.* name another."
    )
    validation_generate_rows: int | None = Field(
        200,
        ge=1,
        description="Validation rows (a seeded sample) generated for after each epoch's validation loss, for the "
        "early-stopping metric; empty = all of them.",
    )
    tie_encoder_decoder: bool = Field(
        False, description="BERT2BERT warm start: share the encoder's weights with the decoder (cross-attention new)."
    )
    cross_attention_init: Literal["random", "self_attention"] = Field(
        "random",
        description="BERT2BERT warm start: the decoder's new cross-attention layers start random (the BERT2BERT "
        "recipe) or as copies of the same layer's pre-trained self-attention (its query/key/value projections "
        "already match related tokens, so the decoder can look at the source from the first step).",
    )
    max_copy_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Validation: largest share of rows whose target equals the source."
    )
    lowercase_metrics: bool | None = Field(
        None,
        description="Score lower-cased text (BLEU, chrF; ROUGE always is); empty = when the model's tokenizer "
        "lower-cases (an uncased model cannot produce capitals).",
    )
    generate: GenerateOptions = Field(default_factory=GenerateOptions)
    copy_task_share: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description="Auxiliary copy task for little data: this share of the training rows is added again (a seeded "
        "sample, training split only) as `copy_task_prefix` + source -> the source itself, so the new decoder "
        "learns to read the source through its cross-attention and to write fluent text from it; 0 = off. The "
        "prefix keeps the two tasks apart: sources without it get the real task.",
    )
    copy_task_prefix: str = Field("copy: ", min_length=1, description="Prefix of the copy task's sources.")
    source_bias_in_loss: bool = Field(
        False,
        description="Train with task.generate.source_bias in the loss too: the training (and validation) loss is "
        "taken on the logits plus the same source-token bonus generation adds, so the model learns what the prior "
        "leaves over (lowering a source word the output should not reuse) instead of being corrected by it only "
        "at decoding. Needs a non-zero task.generate.source_bias.",
    )

    output_vocabulary: int = Field(
        0,
        ge=0,
        le=LEARNED_VOCABULARY,
        description="Generation writes only the tokens of its own source, EOS and the N tokens that training targets "
        "use most often without finding them in their source (question and function words; learned from the "
        "training split and stored with the model). For outputs that mostly reuse the input (question generation, "
        "extractive summaries) on little data: the model cannot drift to words of the training topics. It changes "
        "no weight unless output_vocabulary_in_loss; the per-epoch validation metric is generated with it. 0 = the "
        "whole vocabulary.",
    )
    output_vocabulary_in_loss: bool = Field(
        False,
        description="Train with task.output_vocabulary too: the loss's softmax is taken over the tokens generation "
        "may write (target tokens outside them are not trained on), so the model learns which of them to write "
        "instead of how to keep the rest of the vocabulary down. Needs task.output_vocabulary.",
    )

    @model_validator(mode="after")
    def _vocabulary_to_train_with(self) -> Options:
        if self.output_vocabulary_in_loss and not self.output_vocabulary:
            raise ValueError(
                "task.output_vocabulary_in_loss is on but task.output_vocabulary is 0: set the vocabulary size to "
                "train with (e.g. task.output_vocabulary: 30) or turn output_vocabulary_in_loss off"
            )
        return self

    @model_validator(mode="after")
    def _bias_to_train_with(self) -> Options:
        if self.source_bias_in_loss and not self.generate.source_bias:
            raise ValueError(
                "task.source_bias_in_loss is on but task.generate.source_bias is 0: set the bias to train with "
                "(e.g. task.generate.source_bias: 2.0) or turn source_bias_in_loss off"
            )
        return self


SPEC = TaskSpec(
    name="seq2seq",
    metrics=("bleu", "chrf", "rouge1", "rouge2", "rougeL", "gen_len", "copy_bleu", "copy_chrf", "copy_rougeL"),
    formats=("csv", "tsv", "jsonl", "parquet"),
    modules=(
        "pipelines.tasks.seq2seq",
        "pipelines.tasks.seq2seq.readers",
        "pipelines.tasks.seq2seq.validation",
        "pipelines.tasks.seq2seq.clean",
        "pipelines.tasks.seq2seq.metrics",
        "pipelines.tasks.seq2seq.generation",
        "pipelines.tasks.seq2seq.model",
        "pipelines.tasks.seq2seq.task",
        "pipelines.tasks.seq2seq.runtime",
        "pipelines.data.load",
        "pipelines.data.clean",
        "pipelines.data.validate",
    ),
    runtime="pipelines.tasks.seq2seq.runtime:OnnxSeq2Seq",
    parity_split="validation",
)

__all__ = ["SPEC", "OnnxSeq2Seq", "Options", "Task"]


def __getattr__(name: str):  # PEP 562: the Task and runtime classes load their modules on first use
    if name == "Task":
        from pipelines.tasks.seq2seq.task import Seq2Seq

        return Seq2Seq
    if name == "OnnxSeq2Seq":
        from pipelines.tasks.seq2seq.runtime import OnnxSeq2Seq

        return OnnxSeq2Seq
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
