"""Typed schema of params.yaml.

Every hyper-parameter lives in params.yaml; this module validates it (unknown keys rejected) and applies
`--set section.key=value` overrides the way `dvc exp run -S` does. Errors name the key and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from pipelines.errors import ConfigError
from pipelines.redact import refuse_embedded_credentials
from pipelines.schema import Section, stable_hash
from pipelines.tasks.catalog import TaskConfig, all_formats, task_metric_names, task_names, task_spec

DEFAULT_PARAMS_FILE = "params.yaml"


class ProjectConfig(Section):
    state_dir: str = Field(".nlpops", description="Local state: MLflow SQLite + artifacts, caches, DVC remote.")
    artifacts_dir: str = Field("artifacts", description="Stage outputs (DVC outs).")
    experiment: str = Field("nlpops", description="MLflow experiment name.")
    registered_model: str = Field("nlpops-text-classifier", description="MLflow registered model name.")


class DataConfig(Section):
    path: str = Field(..., description="Raw data file (csv, tsv, jsonl, parquet); split into train/validation/test.")
    validation_path: str | None = Field(None, description="Optional user-provided validation split.")
    test_path: str | None = Field(None, description="Optional user-provided test split.")
    format: str = Field(
        "auto", description="auto (from the suffix) or a format the task reads: csv, tsv, jsonl, parquet, conll, ..."
    )
    header: Literal["auto", "yes", "no"] = Field(
        "auto",
        description="Delimited files: does the first row hold column names? 'auto' checks for the mapped columns.",
    )
    column_names: list[str] | None = Field(None, description="Names for a header-less file's columns, in order.")

    @field_validator("header", mode="before")
    @classmethod
    def _yaml_booleans_are_words(cls, value: Any) -> Any:
        # `header: no` in params.yaml is YAML 1.1's False: read it as the word the schema asks for.
        return {True: "yes", False: "no"}.get(value, value) if isinstance(value, bool) else value

    text_column: str = "text"
    text_pair_column: str | None = Field(None, description="Second text column for sentence-pair tasks.")
    label_column: str = "label"
    labels: list[str] | None = Field(None, description="Declared label set (in id order); inferred when empty.")
    encoding: str = "utf-8"
    encoding_fallback: str | None = Field(
        None,
        description="Encoding tried (with a logged warning) when a file is not valid data.encoding text, e.g. "
        "latin-1; empty = such a file is refused with the offending byte and line.",
    )
    slice_column: str | None = Field(
        None, description="Raw column with user-defined slices; read and cleaned files carry it as column 'slice'."
    )

    source_column: str = Field("source", description="Sequence to sequence: the input text column.")
    target_column: str = Field("target", description="Sequence to sequence: the output text column.")
    group_column: str | None = Field(
        None,
        description="Sequence to sequence: rows sharing this column's value (e.g. the article a pair was made from) "
        "stay in one split when validation/test are cut from data.path, so no split sees another's topic; empty = "
        "rows are grouped by their source only.",
    )

    tokens_column: str = Field("tokens", description="Token classification, JSONL/Parquet: the list of words.")
    tags_column: str = Field("tags", description="Token classification, JSONL/Parquet: the list of tags.")
    tag_column: int | str = Field(
        -1,
        description="Token classification, CoNLL: which column after the token holds the tags (index, -1 = last; "
        "or a name from data.column_names, e.g. ner for CoNLL-2003's 'token pos chunk ner').",
    )

    @model_validator(mode="after")
    def _format_known(self) -> DataConfig:
        if self.format != "auto" and self.format not in all_formats():
            allowed = ", ".join(repr(f) for f in ("auto", *all_formats()))
            raise ValueError(f"data.format={self.format!r} is not allowed (allowed: {allowed})")
        return self

    @model_validator(mode="after")
    def _columns_distinct(self) -> DataConfig:
        cols = [c for c in (self.text_column, self.text_pair_column, self.label_column, self.slice_column) if c]
        if len(set(cols)) != len(cols):
            raise ValueError(f"text_column, text_pair_column, label_column and slice_column must differ (got {cols})")
        return self


# The `task` section (TaskConfig): one typed model per task type, chosen by `task.type` (a discriminated union).
# The models live with their task modules; pipelines/tasks/catalog.py is the one table that lists them.


class ValidateConfig(Section):
    min_rows: int = Field(20, ge=1)
    min_text_chars: int = Field(1, ge=0)
    max_text_chars: int = Field(20000, ge=1)
    min_text_tokens: int = Field(1, ge=0, description="Fewest whitespace-separated tokens a text may have.")
    max_text_tokens: int | None = Field(
        None, ge=1, description="Most whitespace-separated tokens a text may have; empty = no limit."
    )
    max_null_share: float = Field(0.0, ge=0.0, le=1.0, description="Largest share of empty/null text or label allowed.")
    max_duplicate_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Largest share of rows whose text repeats an earlier row (exact match)."
    )
    max_numeric_text_share: float = Field(
        0.5, ge=0.0, le=1.0, description="Largest share of texts that are only a number (a wrongly mapped column?)."
    )
    min_rows_per_class: int = Field(2, ge=1)
    min_class_share: float = Field(0.0, ge=0.0, lt=1.0, description="Smallest share of the training rows per class.")
    expectations_dir: str = Field(
        "expectations",
        description="Folder of the stored Great Expectations suites (<task>.rows.json, <task>.labels.json); a "
        "missing suite file falls back to the built-in one generated from these params.",
    )


class CleanConfig(Section):
    unicode_form: Literal["NFC", "NFKC"] = "NFC"
    drop_duplicates: bool = True
    max_quarantine_share: float = Field(
        0.1,
        ge=0.0,
        le=1.0,
        description="Stop the run when more than this share of rows is quarantined (empty text, missing or "
        "unknown label, conflicting labels); quarantined rows are kept in artifacts/clean/quarantine.parquet.",
    )
    repair_iob: bool = Field(
        False,
        description="Token classification: rewrite an I-X after O / B-Y / I-Y (or first in a sentence) as B-X, "
        "counted in summary.json (iob_repaired); false = such sentences are quarantined.",
    )
    validation_size: float = Field(0.1, gt=0.0, lt=0.5)
    test_size: float = Field(0.1, gt=0.0, lt=0.5)
    seed: int = 42


class TokeniseConfig(Section):
    max_length: int = Field(128, ge=8, le=4096)
    batch_size: int = Field(1000, ge=1, description="Rows per fast-tokenizer call.")


class ModelConfig(Section):
    path: str | None = Field(None, description="Local Hugging Face model folder; empty = bundled all-MiniLM-L6-v2.")
    dropout: float = Field(0.1, ge=0.0, lt=1.0, description="Hidden and classifier dropout.")
    freeze_embeddings: bool = False
    freeze_layers: int = Field(0, ge=0, description="Freeze the first N encoder layers.")
    train_last_layers: int | None = Field(None, ge=0, description="Train only the last N encoder layers (+ head).")
    # --- fine-tuning strategies (pipelines/finetuning.py)
    reinit_top_layers: int = Field(
        0,
        ge=0,
        description="Re-initialise the pooler (if any) and the top N encoder layers before training (few-sample "
        "fine-tuning); 0 = keep every pre-trained weight.",
    )


class TrainConfig(Section):
    learning_rate: float = Field(5e-5, gt=0.0, lt=1.0)
    epochs: int = Field(3, ge=1)
    batch_size: int = Field(32, ge=1)
    eval_batch_size: int = Field(64, ge=1)
    warmup_ratio: float = Field(0.1, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.01, ge=0.0)
    max_grad_norm: float = Field(1.0, gt=0.0)
    seed: int = 42
    early_stopping_metric: str | None = Field(
        None,
        description="Validation metric for early stopping and the best epoch: empty = the task's primary "
        "metric; 'loss' = validation loss; or any metric the task reports.",
    )
    early_stopping_patience: int = Field(2, ge=0, description="Epochs without improvement before stopping; 0 = off.")
    length_grouping: bool = Field(True, description="Group batches by length (less padding, faster).")
    mega_batch_factor: int = Field(50, ge=1, description="Batches per sorted mega-batch when grouping by length.")
    batch_tokens: int | None = Field(
        None,
        ge=1,
        description="Token budget per training batch (with length_grouping): rows x the batch's longest row stay "
        "within it, batch_size still caps the rows; short texts make wide batches, long ones narrow; the LR "
        "schedule counts the batches this makes. Empty = batch_size rows per batch.",
    )
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (smoke runs).")
    max_train_rows: int | None = Field(None, ge=1, description="Use a stratified subset of the training split.")
    skip_unread_positions: bool = Field(
        True,
        description="In training, skip work whose output the loss never reads (text classification on BERT-style "
        "models: the top layer computes only the first position, the one the head reads): the same loss and "
        "gradients, ~14% less work for a 6-layer encoder. Evaluation and export always run the full model.",
    )
    sparse_embedding_updates: bool = Field(
        False,
        description="Update only the word-embedding rows a batch uses (their AdamW moments, step and weight decay "
        "too: 'lazy' Adam, as TensorFlow's LazyAdam and torch's SparseAdam): the embedding's gradient is sparse, "
        "so backward, clipping and AdamW skip the ~30k rows a batch never reads (half of MiniLM's weights). "
        "Faster per step, but a row seen once moves less than under AdamW's momentum, so words learn more "
        "slowly (benchmarks/README.md: Training). Applies where the input embedding is not tied to another "
        "weight and training runs in one process.",
    )
    num_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads per process; empty = the physical cores this process may use (affinity, "
        "cgroup quota) that are idle when training starts: a core busy with other work would stall every op.",
    )
    checkpoint_every_steps: int = Field(
        200,
        ge=0,
        description="Write a resumable checkpoint (model, optimiser, scheduler, RNG, batch position) every N "
        "optimiser steps, under the state dir; one is also written at every epoch's end. 0 = epoch ends only.",
    )
    resume: bool = Field(
        True, description="Resume an interrupted training run from its last checkpoint (same data, params, code)."
    )
    # --- fine-tuning strategies (pipelines/finetuning.py)
    head_learning_rate: float | None = Field(
        None, gt=0.0, lt=1.0, description="Learning rate of the new task head; empty = learning_rate."
    )
    layer_lr_decay: float = Field(
        1.0,
        gt=0.0,
        le=1.0,
        description="Layer-wise learning-rate decay d: layer i of L trains at learning_rate*d**(L-i), the "
        "embeddings at learning_rate*d**(L+1), the head at head_learning_rate; 1 = off.",
    )
    gradual_unfreezing: bool = Field(
        False,
        description="ULMFiT: epoch 1 trains the head and the top layer, each further epoch one more layer "
        "downwards, the embeddings last.",
    )
    recipe: Literal["auto", "default", "little_data"] = Field(
        "default",
        description="little_data: more epochs with early stopping, lower LR, LLRD, a faster head; auto: "
        "little_data below little_data_rows training rows. Keys set in params.yaml or --set always win.",
    )
    little_data_rows: int = Field(1000, ge=1, description="recipe=auto picks little_data below this many rows.")
    # --- distributed training (pipelines/distributed.py)
    processes: int = Field(
        1,
        ge=1,
        description="Training processes (torchrun, DistributedDataParallel: gloo on CPU, NCCL on GPUs); batch_size "
        "stays the global batch, split across them; num_threads is per process. 1 = this process.",
    )


class GateConfig(Section):
    metric: str | None = Field(None, description="Test metric the gate compares; empty = the task's primary metric.")
    min_score: float = Field(0.5, ge=0.0, le=1.0, description="Absolute floor on the test metric.")
    min_improvement: float = Field(0.0, description="Required gain over the champion on the same test split.")
    max_slice_drop: float | None = Field(
        0.05,
        ge=0.0,
        le=1.0,
        description="Largest drop vs the champion allowed on any slice (per class, short/long texts, "
        "data.slice_column); empty = slices reported, not gated.",
    )
    slice_min_rows: int = Field(20, ge=1, description="Slices with fewer test rows are reported but not gated.")
    length_slice_unit: Literal["tokens", "chars"] = Field("tokens", description="How text length is measured.")
    long_text_threshold: int = Field(64, ge=1, description="Texts longer than this (in length_slice_unit) are 'long'.")
    max_latency_ms: float | None = Field(
        None, gt=0.0, description="Upper bound on p95 ONNX latency at batch 1 (ms); empty = no limit."
    )


class ExportConfig(Section):
    opset: int = Field(17, ge=17, le=23)
    atol: float = Field(1e-4, gt=0.0, description="Max abs difference allowed between ONNX and PyTorch logits.")
    parity_rows: int = Field(64, ge=1, description="Real test rows used for the parity check.")
    latency_runs: int = Field(
        50, ge=0, description="Single-row ONNX runs timed for the p95 latency the gate checks; 0 = not measured."
    )
    optimise: bool = Field(
        True,
        description="Fuse transformer ops in the served graph (Attention, SkipLayerNormalization, BiasGelu: "
        "onnxscript's ONNX Runtime fusions); parity against PyTorch is checked on the fused graph.",
    )
    quantise: Literal["auto", "int8", "none"] = Field(
        "auto",
        description="Dynamic INT8 weights for the served graph. auto: served when it passes the INT8 gate "
        "(int8_max_drop against fp32), else fp32; int8: the export fails when the gate does; none: fp32. "
        "Tasks that generate text keep fp32.",
    )
    int8_max_drop: float = Field(
        0.5, ge=0.0, description="INT8 gate: largest drop of the gate metric vs fp32, in points (0-100 scale)."
    )
    int8_gate_rows: int = Field(
        1000, ge=1, description="Rows of the parity split (test) both graphs are scored on for the INT8 gate."
    )
    graph_cache: bool = Field(
        True,
        description="Reuse the traced (and the fused) graph of an earlier export of the same architecture "
        "(~/.cache/nlpops/onnx-graphs, weights not kept): only the new weights are written into it. Parity is "
        "checked as for a fresh export; a failure exports afresh.",
    )


class RegisterConfig(Section):
    champion_alias: str = "champion"
    challenger_alias: str = "challenger"
    lock: Literal["auto", "file", "postgres", "none"] = Field(
        "auto",
        description="Serialises 'beats the champion?' + alias move. auto: PostgreSQL advisory lock when lock_url "
        "(or NLPOPS_LOCK_URL) is set, else a file lock under state_dir (one host).",
    )
    lock_url: str | None = Field(
        None, description="postgresql://... for the advisory lock shared by every host; NLPOPS_LOCK_URL overrides."
    )
    lock_timeout_s: float = Field(300.0, gt=0.0, description="Give up waiting for the promotion lock after this.")
    promote: Literal["auto", "gate", "never"] = Field(
        "auto",
        description="When champion moves: auto = when the gate passes, except in a DVC experiment (`dvc exp run`: "
        "registered and challenger only); gate = when the gate passes, in DVC experiments too; never = only by "
        "`nlpops models promote` (pipelines/dvc_experiment.py).",
    )


# Settings that may point at a credential-protected service. They are left out of every params hash (so a moved
# lock server is no reason to retrain) and out of dvc.yaml's params (so dvc.lock never records them); a password
# in them is refused with this advice (pipelines/redact.py). README: Credentials.
SECRET_SETTINGS: dict[str, str] = {
    "register.lock_url": "set NLPOPS_LOCK_URL instead, or keep register.lock_url password-less and put the password "
    "in PGPASSWORD or ~/.pgpass",
    "tune.storage": "set NLPOPS_TUNE_STORAGE instead, or keep tune.storage password-less and put the password in "
    "PGPASSWORD or ~/.pgpass",
}


def without_secrets(data: dict[str, Any]) -> dict[str, Any]:
    """params as plain data minus SECRET_SETTINGS: what the params hashes cover."""
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for dotted in SECRET_SETTINGS:
        section, key = dotted.split(".", 1)
        if isinstance(out.get(section), dict):
            out[section].pop(key, None)
    return out


# ---------------------------------------------------------------- scaling out: tune, orchestration

# Keys a search space may not vary: they do not change the model, or they change what tokenise made once.
UNTUNABLE = {
    "model.path": "it changes the tokenizer, and a study tokenises once; run one study per model",
    "train.processes": "trials train in one process each",
    "train.resume": "trials never resume",
    "train.checkpoint_every_steps": "trials write no checkpoints",
    "train.num_threads": "it does not change the model",
}


class TuneParam(Section):
    """One dimension of the search space."""

    type: Literal["loguniform", "uniform", "int", "categorical"] = Field(
        ..., description="loguniform / uniform floats in [low, high], int in [low, high] (step), categorical choices."
    )
    low: float | None = None
    high: float | None = None
    step: float | None = Field(None, gt=0, description="int (or uniform) grid step; empty = 1 for int, continuous.")
    choices: list[bool | int | float | str | None] | None = None

    @model_validator(mode="after")
    def _complete(self) -> TuneParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("a categorical dimension needs a non-empty 'choices' list")
            if self.low is not None or self.high is not None:
                raise ValueError("a categorical dimension takes 'choices', not low/high")
            return self
        if self.low is None or self.high is None:
            raise ValueError(f"a {self.type} dimension needs 'low' and 'high'")
        if self.choices is not None:
            raise ValueError(f"a {self.type} dimension takes low/high, not 'choices'")
        if self.low > self.high:
            raise ValueError(f"low={self.low} is above high={self.high}")
        if self.type == "loguniform" and self.low <= 0:
            raise ValueError(f"a loguniform dimension needs low > 0 (got {self.low})")
        if self.type == "loguniform" and self.step is not None:
            raise ValueError("a loguniform dimension takes no 'step'")
        if self.type == "int" and not all(float(v).is_integer() for v in (self.low, self.high, self.step or 1)):
            raise ValueError("an int dimension needs whole-number low, high and step")
        return self

    def candidates(self) -> list[Any]:
        """Values that show whether the key's own constraints accept the dimension (bounds and choices)."""
        if self.type == "categorical":
            return list(self.choices or [])
        if self.type == "int":
            return [int(self.low or 0), int(self.high or 0)]
        return [self.low, self.high]


class TuneConfig(Section):
    """`nlpops tune`: an Optuna study over any train.* / model.* keys (pipelines/tune.py, flows/tune.py)."""

    space: dict[str, TuneParam] = Field(
        default_factory=dict,
        description="Search space: 'train.<key>' or 'model.<key>' -> {type: loguniform|uniform|int|categorical, "
        "low, high, step, choices}.",
    )
    trials: int = Field(20, ge=1, description="Trials in the study (all workers and processes together).")
    timeout_s: float | None = Field(
        None, gt=0, description="Start no new trial after this many seconds (per process); empty = no limit."
    )
    metric: str | None = Field(
        None, description="Validation metric to optimise; empty = the training's stopping metric; 'loss' minimises."
    )
    sampler: Literal["tpe", "random"] = "tpe"
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stops unpromising trials from their per-epoch validation metric."
    )
    startup_trials: int = Field(
        4, ge=0, description="Trials before TPE models the space and before the median pruner prunes."
    )
    warmup_epochs: int = Field(
        1,
        ge=0,
        description="Median pruner: epochs that never prune a trial (1 = pruned from epoch 2 on at the earliest).",
    )
    storage: str | None = Field(
        None,
        description="Optuna storage URL shared by every worker: empty = sqlite:///<state_dir>/optuna.db (one host); "
        "postgresql://user@host:5432/optuna for several hosts (NLPOPS_TUNE_STORAGE overrides; password in "
        "PGPASSWORD or ~/.pgpass).",
    )
    study_name: str | None = Field(
        None, description="Processes giving the same name (and storage) join one study; empty = <experiment>-tune."
    )
    workers: int = Field(
        1, ge=1, description="Trials at a time: >1 maps them over a Dask cluster (orchestration.dask_address or local)."
    )
    seed: int | None = Field(None, description="Sampler seed (trial k of a sequential study gets seed + k).")

    @field_validator("space", mode="before")
    @classmethod
    def _dimensions_named(cls, space: Any) -> Any:
        """A bad dimension's error names its key (tune.space.<key>: ...)."""
        if not isinstance(space, dict):
            return space
        for key, dim in space.items():
            if isinstance(dim, TuneParam):
                continue
            try:
                TuneParam.model_validate(dim)
            except ValidationError as exc:
                err = exc.errors()[0]
                where = ".".join(str(p) for p in err["loc"])
                msg = str(err["msg"]).removeprefix("Value error, ")
                raise ValueError(f"tune.space.{key}{'.' + where if where else ''}: {msg}") from None
        return space

    @field_validator("space")
    @classmethod
    def _keys_tunable(cls, space: dict[str, TuneParam]) -> dict[str, TuneParam]:
        sections: dict[str, type[Section]] = {"train": TrainConfig, "model": ModelConfig}
        for key, dim in space.items():
            section, _, name = key.partition(".")
            model = sections.get(section)
            if model is None or not name:
                raise ValueError(f"tune.space: {key!r} is not a train.* or model.* key")
            if name not in model.model_fields:
                raise ValueError(f"tune.space: unknown key {key!r} (allowed: {', '.join(model.model_fields)})")
            if key in UNTUNABLE:
                raise ValueError(f"tune.space: {key} cannot be searched: {UNTUNABLE[key]}")
            probe = model()
            for value in dim.candidates():
                try:
                    setattr(probe, name, value)
                except ValidationError as exc:
                    reason = exc.errors()[0]["msg"]
                    raise ValueError(f"tune.space: {key}={value!r} is not allowed ({reason})") from None
        return space


class OrchestrationConfig(Section):
    """Where parallel work runs: Dask for sharded data preparation and `nlpops tune --workers`."""

    dask_address: str | None = Field(
        None,
        description="Dask scheduler (tcp://host:8786) for sharded data preparation and tune workers; empty = a "
        "local cluster of dask_workers processes started for the run.",
    )
    dask_workers: int = Field(2, ge=1, description="Worker processes of the local Dask cluster.")
    dask_threads_per_worker: int = Field(1, ge=1, description="Threads per worker process of the local cluster.")
    shard_rows: int | None = Field(
        None,
        ge=1,
        description="validate/clean/tokenise: inputs with more rows than this are cut into shards of this many rows "
        "whose row-wise work runs in parallel on Dask (same outputs, same hashes); empty = one process.",
    )


class RunConfig(Section):
    """How runs of one project (same artifacts dir) are kept apart: pipelines/run_lock.py."""

    on_conflict: Literal["wait", "fail"] = Field(
        "wait",
        description="Another run of this project holds the run lock: wait (a line names the holder, its pid/host "
        "and start) or fail (one line, exit code 75; a scheduled run ends as Skipped).",
    )
    wait_timeout_s: float | None = Field(
        None, gt=0.0, description="Give up waiting for the run lock after this many seconds; empty = no limit."
    )
    lock: Literal["auto", "file", "postgres", "none"] = Field(
        "auto",
        description="auto: a lease file under state_dir/locks, plus the PostgreSQL advisory lock when "
        "register.lock_url (or NLPOPS_LOCK_URL) is set, so runs on other hosts queue too; none: no run lock.",
    )


class Params(Section):
    project: ProjectConfig = ProjectConfig()
    data: DataConfig
    task: TaskConfig = Field(default_factory=lambda: _default_task())
    validate_: ValidateConfig = Field(ValidateConfig(), alias="validate")
    clean: CleanConfig = CleanConfig()
    tokenise: TokeniseConfig = TokeniseConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    gate: GateConfig = GateConfig()
    export: ExportConfig = ExportConfig()
    register_: RegisterConfig = Field(RegisterConfig(), alias="register")
    run: RunConfig = RunConfig()
    tune: TuneConfig = TuneConfig()
    orchestration: OrchestrationConfig = OrchestrationConfig()

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @model_validator(mode="after")
    def _format_read_by_task(self) -> Params:
        formats = task_spec(self.task.type).formats
        if self.data.format != "auto" and self.data.format not in formats:
            allowed = ", ".join(repr(f) for f in ("auto", *formats))
            raise ValueError(
                f"data.format={self.data.format!r} is not read by task {self.task.type} (allowed: {allowed})"
            )
        return self

    @model_validator(mode="after")
    def _curriculum_within_training(self) -> Params:
        first = int(getattr(self.task, "answerable_only_epochs", 0) or 0)
        if first and first >= self.train.epochs:
            raise ValueError(
                f"task.answerable_only_epochs={first} leaves no epoch for the unanswerable questions: it must be "
                f"below train.epochs={self.train.epochs}"
            )
        return self

    @model_validator(mode="after")
    def _metrics_known_to_task(self) -> Params:
        allowed = task_metric_names(self.task.type)
        quoted = ", ".join(repr(m) for m in allowed)
        if self.gate.metric is not None and self.gate.metric not in allowed:
            raise ValueError(
                f"gate.metric={self.gate.metric!r} is not allowed for task {self.task.type} (allowed: {quoted})"
            )
        stop = self.train.early_stopping_metric
        if stop is not None and stop != "loss" and stop not in allowed:
            raise ValueError(
                f"train.early_stopping_metric={stop!r} is not allowed for task {self.task.type} "
                f"(allowed: {quoted}, 'loss')"
            )
        tuned = self.tune.metric
        if tuned is not None and tuned != "loss" and tuned not in allowed:
            raise ValueError(
                f"tune.metric={tuned!r} is not allowed for task {self.task.type} (allowed: {quoted}, 'loss')"
            )
        return self

    @property
    def primary_metric(self) -> str:
        """The task's primary metric: its `task.primary_metric` setting where it has one, else its first metric."""
        return getattr(self.task, "primary_metric", None) or task_metric_names(self.task.type)[0]

    @property
    def gate_metric(self) -> str:
        """The metric the gate compares: gate.metric, or the task's primary metric."""
        return self.gate.metric or self.primary_metric

    @property
    def stopping_metric(self) -> str:
        """The validation metric that picks the best epoch: train.early_stopping_metric, or the primary metric."""
        return self.train.early_stopping_metric or self.primary_metric

    def section(self, name: str) -> dict[str, Any]:
        """One params section as plain data (what a stage depends on; SECRET_SETTINGS left out)."""
        return without_secrets(self.to_dict())[name]

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def section_hash(self, *names: str) -> str:
        return stable_hash({n: self.section(n) for n in names})

    def params_hash(self) -> str:
        # Secret-bearing settings, how concurrent runs queue (`run`), the search space (`tune`) and where parallel
        # work runs (`orchestration`) say nothing about the model: changing them is no reason to retrain, and they
        # are not part of a version's lineage.
        skip = ("run", "tune", "orchestration")
        return stable_hash({k: v for k, v in without_secrets(self.to_dict()).items() if k not in skip})


def _default_task() -> Any:
    from pipelines.tasks.catalog import default_task_config

    return default_task_config()


def _field_annotation(keys: list[str]) -> Any:
    """The schema's type of section.key (None when unknown, e.g. the task union or a typo)."""
    fields = {name.rstrip("_"): f for name, f in Params.model_fields.items()}
    field = fields.get(keys[0])
    for key in keys[1:]:
        model = getattr(field, "annotation", None) if field is not None else None
        if not isinstance(model, type) or not hasattr(model, "model_fields"):
            return None
        field = model.model_fields.get(key)
    return getattr(field, "annotation", None) if field is not None else None


def _takes_strings_only(annotation: Any) -> bool:
    """str, a Literal of strings, or either of them | None: YAML's `no`/`on`/`1.0` must stay the string."""
    import types
    import typing

    if annotation is str:
        return True
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return all(isinstance(a, str) for a in typing.get_args(annotation))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(_takes_strings_only(a) for a in args)
    return False


def _parse_value(raw: str, keys: list[str] | None = None) -> Any:
    """YAML scalars (3e-5, true, null, [a, b]) as params.yaml would read them, except where the schema takes only
    strings: there `no` stays "no" (YAML 1.1 would make it False) and only null/~ mean empty."""
    if keys and _takes_strings_only(_field_annotation(keys)):
        return None if raw.strip() in ("null", "~", "") else raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `section.key=value` overrides (repeatable), like `dvc exp run -S`."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected section.key=value, e.g. train.learning_rate=3e-5")
        dotted, raw = item.split("=", 1)
        keys = dotted.strip().split(".")
        if len(keys) < 2 or not all(keys):
            raise ConfigError(f"--set {item!r}: the key must be section.key, e.g. train.epochs=2")
        node = data
        for k in keys[:-1]:
            child = node.setdefault(k, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {k!r} is a value, not a section")
            node = child
        node[keys[-1]] = _parse_value(raw, keys)
    return data


def _describe(err: dict[str, Any], params_file: str) -> str:
    kind = err["type"]
    parts = [str(p).rstrip("_") for p in err["loc"]]
    if parts[:1] == ["task"] and len(parts) > 2 and parts[1] in task_names():
        del parts[1]  # pydantic names the union member (task.token_classification.x): users wrote task.x
    loc = ".".join(parts)
    if kind == "union_tag_invalid":
        allowed = ", ".join(repr(n) for n in task_names())
        return f"{params_file}: {loc}.type={err['ctx'].get('tag')!r} is not allowed (allowed: {allowed})"
    if kind == "value_error":
        return f"{params_file}: " + str(err["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        section = loc.rsplit(".", 1)[0] if "." in loc else None
        allowed = ""
        fields = {name.rstrip("_"): f for name, f in Params.model_fields.items()}
        if section == "task":
            allowed = ""
        elif section in fields:
            allowed = ", ".join(fields[section].annotation.model_fields)  # type: ignore[union-attr]
        elif section is None:
            allowed = ", ".join(fields)
        return f"{params_file}: unknown key '{loc}'" + (f" (allowed: {allowed})" if allowed else "")
    if kind == "literal_error":
        expected = err.get("ctx", {}).get("expected", "")
        return f"{params_file}: {loc}={err.get('input')!r} is not allowed (allowed: {expected})"
    if kind == "missing":
        return f"{params_file}: required key '{loc}' is missing"
    return f"{params_file}: {loc}={err.get('input')!r}: {err['msg']}"


def _read_yaml_mapping(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    refuse_embedded_credentials(data, str(path), SECRET_SETTINGS)  # before anything is run or logged
    return data


def experiment_file(params_file: str | Path, name: str) -> Path:
    """experiments/<name>.yaml next to the params file."""
    return Path(params_file).parent / "experiments" / f"{name}.yaml"


def overlay(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """params with an experiment's sections laid over them key by key; a `task` of another type replaces the
    whole section (each task type has its own keys)."""
    out = dict(base)
    for section, values in changes.items():
        same_task = section == "task" and (base.get("task") or {}).get("type") == (values or {}).get("type")
        if isinstance(values, dict) and isinstance(base.get(section), dict) and (section != "task" or same_task):
            out[section] = {**base[section], **values}
        else:
            out[section] = values
    return out


def available_experiments(params_file: str | Path = DEFAULT_PARAMS_FILE) -> list[str]:
    folder = Path(params_file).parent / "experiments"
    return sorted(p.stem for p in folder.glob("*.yaml")) if folder.is_dir() else []


def raw_params(
    path: str | Path = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None, experiment: str | None = None
) -> dict[str, Any]:
    """The keys as written: params.yaml, the named experiment laid over it, --set on top; not validated and without
    defaults (a key left out stays out, so train.recipe still decides it). `nlpops params` prints or writes it."""
    load_params(path, overrides, experiment)  # every error a run would meet, first
    data = _read_yaml_mapping(Path(path))
    if experiment:
        data = overlay(data, _read_yaml_mapping(experiment_file(path, experiment)))
    return apply_overrides(data, overrides or [])


def load_params(
    path: str | Path = DEFAULT_PARAMS_FILE, overrides: list[str] | None = None, experiment: str | None = None
) -> Params:
    """Read params.yaml, lay the named experiment over it, apply --set overrides, validate; raises ConfigError
    with one readable line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found")
    data = _read_yaml_mapping(path)
    if experiment:
        file = experiment_file(path, experiment)
        if not file.is_file():
            known = ", ".join(available_experiments(path)) or "none yet"
            raise ConfigError(f"experiment {experiment!r}: no file {file} (experiments: {known})")
        data = overlay(data, _read_yaml_mapping(file))
        path = file  # errors name the file that set the value last
    refuse_embedded_credentials(apply_overrides({}, overrides or []), "--set", SECRET_SETTINGS)
    data = apply_overrides(data, overrides or [])
    try:
        return Params.model_validate(data)
    except ValidationError as exc:
        messages = [_describe(dict(e), str(path)) for e in exc.errors()]
        raise ConfigError("; ".join(messages)) from None
