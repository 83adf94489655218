"""The task interface: everything that differs between task types, and nothing else.

Stages (validate, clean, tokenise, train, evaluate, export, register), the champion re-scoring, `nlpops predict`
and the MLflow pyfunc only call these methods; none of them tests a task name. A task type is one module under
pipelines/tasks/ with `Options` (its typed params section), `SPEC` (pipelines/tasks/catalog.py TaskSpec), a `Task`
subclass of this class and a torch-free runtime class (`Runtime` subclass of pipelines.serving.OnnxRuntimeModel).

Data flow and the objects that carry it:
- clean writes `<artifacts>/clean/{train,validation,test}.parquet`, one row per *example* (a sentence, a sentence
  pair, a tokenised sentence ...), plus label_map.json (`id2label`, or empty for tasks without a label space);
- tokenise turns each split into *features* (`Task.tokenise`): one or more per example (long inputs become
  windows), each with `example_id` (its example's row) and `length` (its token count), stored in Parquet with proper
  Arrow list types (`Task.feature_types`);
- train/evaluate run `Task.predict` (torch) on features and get `Predictions`: one prediction per *example*, plus
  the mean loss; `Task.score` turns predictions + the clean frame into metrics (the spec's scalar metrics + detail);
- the exported runtime predicts from raw inputs (`Runtime.predict`), and `Task.predictions_from_runtime` brings its
  outputs back to the same `Predictions`, so the champion is scored by the very same `Task.score`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from pipelines.config import ModelConfig, Params, TokeniseConfig
    from pipelines.tasks.catalog import TaskSpec


@dataclass
class Predictions:
    """One prediction per example of a split (`values`, task-defined), optional per-example scores, and the mean
    loss over the features (NaN when there are no gold labels)."""

    values: list[Any]
    scores: Any = None  # per-example scores (a list, or an array with one row per example)
    loss: float = float("nan")
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class ExportSpec:
    """What to trace and how: the wrapper module (returns a tuple of tensors in `output_names` order), its input
    and output names, and example inputs with every dynamic dimension >= 2 (the exporter specialises size 1)."""

    module: Any
    input_names: list[str]
    output_names: list[str]
    example_inputs: tuple[Any, ...]
    dynamic_axes: dict[str, dict[int, str]]


class Task(ABC):
    """One task type bound to one run's params."""

    spec: ClassVar[TaskSpec]
    # clean-summary counts of this task logged to MLflow besides the shared ones (data.clean.data_quality_metrics)
    clean_counts: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Params) -> None:
        self.params = params
        self.options = params.task

    @property
    def name(self) -> str:
        return self.spec.name

    # ------------------------------------------------------------------ data: validate + clean stages

    @abstractmethod
    def validate_data(self, report_path: Path, docs_dir: Path | None) -> dict[str, Any]:
        """Read every raw file, run the task's stored Great Expectations suites, write the report (and Data Docs);
        raise DataValidationError naming file, column/line and check on failure. Returns a small summary."""

    @abstractmethod
    def clean_data(self, out_dir: Path) -> dict[str, Any]:
        """Normalise, de-duplicate, quarantine, split (no leakage), write {split}.parquet, label_map.json,
        summary.json (and quarantine.parquet). Returns the summary."""

    def data_quality_metrics(self, summary: dict[str, Any]) -> dict[str, float]:
        """Counts from the clean summary logged to MLflow (rows read, dropped, quarantined, leakage...)."""
        from pipelines.data.clean import data_quality_metrics

        return data_quality_metrics(summary, self.clean_counts)

    # ------------------------------------------------------------------ tokenise stage

    @abstractmethod
    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, cfg: TokeniseConfig) -> dict[str, list]:
        """Feature columns for one clean split; must include `example_id` and `length`."""

    def tokenise_shardable(self, split: str) -> bool:
        """True when a split's features depend on each example alone (its `example_id` = its row), so a large
        split may be tokenised in shards (pipelines/sharded.py) with the same result; False keeps one piece."""
        return False

    def feature_types(self) -> dict[str, Any]:
        """Arrow type per feature column; columns not named here are int64 scalars."""
        import pyarrow as pa

        return {"input_ids": pa.list_(pa.int32()), "token_type_ids": pa.list_(pa.int32())}

    # ------------------------------------------------------------------ model

    @abstractmethod
    def auto_class(self) -> Any:
        """The transformers Auto class with this task's head."""

    def configure_model(self, config: Any, id2label: dict[int, str]) -> None:
        """Set the head's size and label maps on the pre-trained config before the weights load."""
        if id2label:
            config.num_labels = len(id2label)
            config.id2label = {int(i): name for i, name in id2label.items()}
            config.label2id = {name: int(i) for i, name in id2label.items()}

    def build_model(self, model_path: Path, id2label: dict[int, str], model_cfg: ModelConfig) -> Any:
        """Pre-trained weights + a new head for this task; local files only, no remote code."""
        from pipelines.pretrained import load_pretrained_model

        return load_pretrained_model(model_path, self, id2label, model_cfg)

    def learn_from_training_split(self, model: Any, rows: dict[str, list], clean_path: Path | None = None) -> None:
        """Settings the model learns from the tokenised training split (and the clean split it came from, where
        given: a parquet file whose rows `example_id` indexes) before training and keeps on its config (seq2seq:
        the output vocabulary); none by default."""
        return None

    def epoch_training_rows(self, rows: dict[str, list], epoch: int) -> list[int] | None:
        """The training features (indices into the tokenised training split) epoch `epoch` (from 1) trains on;
        None, the default: all of them. A curriculum (question answering: spans before 'no answer') narrows the
        early epochs; the batches and the LR schedule are built on what each epoch gets."""
        return None

    def load_trained(self, model_dir: Path) -> Any:
        """A fine-tuned checkpoint written by the train stage, in eval mode."""
        from pipelines.pretrained import load_trained_model

        return load_trained_model(model_dir, self)

    @abstractmethod
    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, torch.Tensor]:
        """Pad a batch of features to its own longest row; includes `labels` when the features carry them."""

    def training_loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """The loss one training step minimises on a collated batch: by default the model's own loss from its
        labels (a task may compute it itself, e.g. with label smoothing)."""
        return model(**batch).loss

    def training_fast_path(self, model: Any) -> str | None:
        """Make the model skip, in training mode only, work whose output the loss never reads (same loss and
        gradients); returns what was changed, or None. Default: nothing (every position feeds the loss)."""
        return None

    # ------------------------------------------------------------------ predictions and metrics

    @abstractmethod
    def predict(
        self, model: Any, rows: dict[str, list], frame: pd.DataFrame, batch_size: int, pad_token_id: int
    ) -> Predictions:
        """Run the torch model on a split's features; one prediction per example of `frame` (in frame order)."""

    @abstractmethod
    def score(self, predictions: Predictions, frame: pd.DataFrame, id2label: dict[int, str]) -> dict[str, Any]:
        """Every metric in spec.metrics (floats) plus detail (per class/type, confusion...) and `rows`."""

    @abstractmethod
    def slices(
        self, predictions: Predictions, frame: pd.DataFrame, rows: dict[str, list] | None, id2label: dict[int, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
        """Gate slices: ({slice: {value, rows, metric}}, membership (what defines the slices, hashed to compare
        with the champion's recorded slices), notes)."""

    def write_evaluation(
        self, scores: dict[str, Any], predictions: Predictions, frame: pd.DataFrame, out_dir: Path
    ) -> dict[str, Path]:
        """The task's evaluation views for DVC and MLflow (tables, plots); returns {name: path}."""
        return {}

    def evaluation_files(self, out_dir: Path) -> list[Path]:
        """The files write_evaluation writes (DVC outs of the evaluate stage)."""
        return []

    def metric_tags(self, scores: dict[str, Any]) -> dict[str, float]:
        """Scalar metrics recorded on the run and the registered version."""
        return {name: float(scores[name]) for name in self.spec.metrics if name in scores}

    # ------------------------------------------------------------------ run report and model card

    # Hugging Face `pipeline_tag` of the model card (None: left out)
    card_pipeline_tag: ClassVar[str | None] = None

    def confidences(self, predictions: Predictions, frame: pd.DataFrame) -> dict[str, Any] | None:
        """Per-prediction confidence and correctness for the report's score histogram and calibration:
        {"confidence": [...], "correct": [...], "unit": "examples"}; None when the task has no such scores."""
        return None

    def report_sections(self, metrics: dict[str, Any], slices: dict[str, Any], views_dir: Path) -> list[Any]:
        """The task's evaluation views in the run report (pipelines.report.html.Section objects), drawn from what
        `write_evaluation` wrote to views_dir. Default: every PNG there, inline."""
        from pipelines.report.html import Section, png

        images = sorted(Path(views_dir).glob("*.png")) if Path(views_dir).is_dir() else []
        if not images:
            return []
        return [Section("task-views", "Evaluation views", [png(p.read_bytes(), p.stem) for p in images])]

    # ------------------------------------------------------------------ export, parity, serving

    # What the export stage may do to model.onnx after exporting it (pipelines/onnx_optimise.py): fuse the
    # transformer ops (export.optimise) and serve it with INT8 weights when the INT8 gate passes (export.quantise).
    # The gate scores both graphs with the task's runtime and `score`, so a task that cannot be judged that way
    # cheaply (generation) keeps fp32.
    onnx_fusion: ClassVar[bool] = True
    onnx_int8: ClassVar[bool] = True

    @abstractmethod
    def export_spec(self, model: Any, tokenizer: Any) -> ExportSpec:
        """The graph to export."""

    def export_graphs(self, model: Any, tokenizer: Any) -> dict[str, ExportSpec]:
        """Every ONNX file to write, by file name. The first is model.onnx: the graph that takes the tokenizer's
        inputs (serving.json's input_names); a task may add more (an encoder-decoder exports its decoder step too).
        Default: the one graph of `export_spec`."""
        return {"model.onnx": self.export_spec(model, tokenizer)}

    def check_parity(
        self, export_dir: Path, graphs: dict[str, ExportSpec], tokenizer: Any, frame: pd.DataFrame, cfg: Any
    ) -> dict[str, Any] | None:
        """The task's own ONNX-vs-PyTorch parity check on real rows of `frame` (its spec.parity_split, at most
        export.parity_rows), run after serving.json is written: parity.json's fields (passed, max_abs_diff, atol,
        rows, label_mismatches, batch_sizes, seq_lengths). None (the default): the generic check, model.onnx's
        outputs against export_spec's module batch by batch on `parity_feeds`, decoded by `outputs_disagree`."""
        return None

    @abstractmethod
    def serving_config(self, model: Any, tokenizer: Any, export_spec: ExportSpec) -> dict[str, Any]:
        """serving.json for the runtime (always with `task` and `input_names`)."""

    @abstractmethod
    def parity_feeds(self, tokenizer: Any, frame: pd.DataFrame, input_names: list[str]) -> list[dict[str, Any]]:
        """Real test inputs as ONNX feeds (numpy int64), in batches of varied sizes (1, 7, then up to 64)."""

    @abstractmethod
    def outputs_disagree(self, torch_outputs: list[Any], onnx_outputs: list[Any], feeds: dict[str, Any]) -> int:
        """Number of examples in one batch whose decoded result differs between PyTorch and ONNX outputs."""

    @abstractmethod
    def runtime_inputs(self, frame: pd.DataFrame) -> list[Any]:
        """Clean-split rows as the runtime's input items (what a user would send)."""

    @abstractmethod
    def predictions_from_runtime(self, outputs: list[Any], id2label: dict[int, str]) -> Predictions | None:
        """Runtime outputs as Predictions for `score`; None when they cannot be compared (another label set)."""
