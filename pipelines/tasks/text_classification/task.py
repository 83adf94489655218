"""Text classification as a Task: the stages call these methods (see pipelines/tasks/base.py)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.tasks.base import ExportSpec, Predictions, Task
from pipelines.tasks.text_classification import SPEC
from pipelines.tasks.text_classification.metrics import (
    classification_metrics,
    evaluation_paths,
    score_slices,
    slice_membership,
    write_classification_views,
)

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from pipelines.config import TokeniseConfig


class BatchEncoder:
    """The tokenizer's Rust backend called directly (`encode_batch_fast`: no offsets, no BatchEncoding): the same
    ids as the transformers call (tests/unit/test_train_serve_skew.py checks), 2-3x faster on large splits."""

    def __init__(self, tokenizer: Any) -> None:
        from tokenizers import Tokenizer

        self._backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())  # own copy: settings change below
        self._backend.no_padding()

    def __call__(self, texts: list[str], pairs: list[str] | None, max_length: int) -> dict[str, list]:
        self._backend.enable_truncation(max_length, strategy="longest_first")
        inputs = list(zip(texts, pairs, strict=True)) if pairs is not None else texts
        encodings = self._backend.encode_batch_fast(inputs, add_special_tokens=True)
        return {"input_ids": [e.ids for e in encodings], "token_type_ids": [e.type_ids for e in encodings]}


class TextClassification(Task):
    spec = SPEC

    # ------------------------------------------------------------------ data

    def validate_data(self, report_path: Path, docs_dir: Path | None) -> dict[str, Any]:
        from pipelines.data.validate import validate_data

        return validate_data(self.params, report_path, docs_dir)

    def clean_data(self, out_dir: Path) -> dict[str, Any]:
        from pipelines.data.clean import clean_data

        return clean_data(self.params, out_dir)

    # ------------------------------------------------------------------ tokenise

    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, cfg: TokeniseConfig) -> dict[str, list]:
        pair = "text_pair" in frame.columns
        out: dict[str, list] = {"input_ids": [], "label": frame["label"].astype("int64").tolist()}
        if pair:
            out["token_type_ids"] = []
        texts = frame["text"].tolist()
        pairs = frame["text_pair"].tolist() if pair else None
        encode: Any
        if getattr(tokenizer, "is_fast", False):
            encode = BatchEncoder(tokenizer)
        else:  # a slow tokenizer: the transformers call, same arguments

            def encode(t: list[str], p: list[str] | None, max_length: int) -> dict[str, list]:
                return tokenizer(t, p, truncation="longest_first", max_length=max_length, return_token_type_ids=True)

        for start in range(0, len(texts), cfg.batch_size):
            stop = start + cfg.batch_size
            enc = encode(texts[start:stop], pairs[start:stop] if pairs is not None else None, cfg.max_length)
            out["input_ids"].extend(enc["input_ids"])
            if pair:
                out["token_type_ids"].extend(enc["token_type_ids"])
        out["length"] = [len(ids) for ids in out["input_ids"]]
        out["example_id"] = list(range(len(texts)))
        return out

    # ------------------------------------------------------------------ model

    def tokenise_shardable(self, split: str) -> bool:
        return True  # one feature per row, from that row alone

    def auto_class(self) -> Any:
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification

    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, torch.Tensor]:
        import torch

        ids = rows["input_ids"]
        width = max(len(r) for r in ids)
        input_ids = torch.full((len(ids), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(ids), width), dtype=torch.long)
        for i, r in enumerate(ids):
            input_ids[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            attention[i, : len(r)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in rows:
            types = torch.zeros((len(ids), width), dtype=torch.long)
            for i, r in enumerate(rows["token_type_ids"]):
                types[i, : len(r)] = torch.as_tensor(r, dtype=torch.long)
            batch["token_type_ids"] = types
        if "label" in rows:
            batch["labels"] = torch.as_tensor(rows["label"], dtype=torch.long)
        return batch

    def training_fast_path(self, model: Any) -> str | None:
        from pipelines.tasks.text_classification.first_token import first_token_top_layer

        return first_token_top_layer(model)

    # ------------------------------------------------------------------ predictions and metrics

    def predict(
        self, model: Any, rows: dict[str, list], frame: pd.DataFrame, batch_size: int, pad_token_id: int
    ) -> Predictions:
        from pipelines.train import feature_batches

        logits = np.zeros((len(rows["input_ids"]), model.config.num_labels), dtype=np.float32)
        loss_sum, seen = 0.0, 0
        for idx, _batch, outputs in feature_batches(model, self, rows, batch_size, pad_token_id):
            logits[idx] = outputs.logits.float().numpy()
            if outputs.loss is not None:
                loss_sum += float(outputs.loss) * len(idx)
                seen += len(idx)
        order = np.asarray(rows["example_id"], dtype=np.int64)
        by_example = np.zeros_like(logits)
        by_example[order] = logits
        return Predictions(
            values=by_example.argmax(axis=-1).tolist(),
            scores=by_example,
            loss=loss_sum / seen if seen else float("nan"),
        )

    def score(self, predictions: Predictions, frame: pd.DataFrame, id2label: dict[int, str]) -> dict[str, Any]:
        return classification_metrics(np.asarray(predictions.values), frame["label"].to_numpy(), id2label)

    def slices(
        self, predictions: Predictions, frame: pd.DataFrame, rows: dict[str, list] | None, id2label: dict[int, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
        gate = self.params.gate
        notes: list[str] = []
        lengths: list[int] | None
        if gate.length_slice_unit == "tokens":
            lengths = None
            if rows is not None:
                by_example = dict(zip(rows["example_id"], rows["length"], strict=True))
                lengths = [by_example.get(i, 0) for i in range(len(frame))]
                if len(rows["length"]) != len(frame):
                    lengths = None
                    notes.append("tokenised test split does not match the cleaned one: no length slices")
        else:
            chars = frame["text"].astype(str).str.len()
            if "text_pair" in frame.columns:
                chars = chars + frame["text_pair"].astype(str).str.len()
            lengths = chars.tolist()
        groups = None
        column = self.params.data.slice_column  # clean carries it into the splits as column 'slice'
        if column:
            if "slice" in frame.columns:
                groups = frame["slice"].tolist()
            else:
                notes.append(f"data.slice_column {column!r}: no 'slice' column in the cleaned test split")
        members = slice_membership(frame["label"].tolist(), id2label, lengths, gate.long_text_threshold, groups, column)
        scored = score_slices(predictions.values, frame["label"].to_numpy(), members, id2label, self.params.gate_metric)
        return scored, members, notes

    def write_evaluation(
        self, scores: dict[str, Any], predictions: Predictions, frame: pd.DataFrame, out_dir: Path
    ) -> dict[str, Path]:
        return write_classification_views(scores, np.asarray(predictions.values), frame["label"].to_numpy(), out_dir)

    def evaluation_files(self, out_dir: Path) -> list[Path]:
        return list(evaluation_paths(out_dir).values())

    # ------------------------------------------------------------------ run report

    card_pipeline_tag = "text-classification"

    def confidences(self, predictions: Predictions, frame: pd.DataFrame) -> dict[str, Any] | None:
        """Softmax probability of the predicted class, and whether it is the true one."""
        if predictions.scores is None:
            return None
        logits = np.asarray(predictions.scores, dtype=np.float64)
        probs = np.exp(logits - logits.max(axis=-1, keepdims=True))
        probs /= probs.sum(axis=-1, keepdims=True)
        predicted = np.asarray(predictions.values, dtype=np.int64)
        correct = predicted == frame["label"].to_numpy(dtype=np.int64)
        return {"confidence": probs.max(axis=-1).tolist(), "correct": correct.tolist(), "unit": "examples"}

    def report_sections(self, metrics: dict[str, Any], slices: dict[str, Any], views_dir: Path) -> list[Any]:
        """The confusion matrix and per-class precision / recall / F1 (from per_class.json)."""
        import json

        from pipelines.report.html import Section, hbar_chart, heatmap, table

        path = evaluation_paths(Path(views_dir))["per_class"]
        if not path.is_file():
            return [Section("classes", "Per class", note=f"not available: {path} missing")]
        data = json.loads(path.read_text())
        per_class = data.get("per_class") or {}
        labels = list(per_class)
        rows = [[name, v["precision"], v["recall"], v["f1"], v["support"]] for name, v in per_class.items()]
        return [
            Section(
                "confusion",
                "Confusion matrix (rows: true label, columns: predicted)",
                [heatmap(data.get("confusion_matrix") or [], labels, "Confusion matrix (test split)")],
            ),
            Section(
                "classes",
                "Per class",
                [
                    table(["class", "precision", "recall", "f1", "support"], rows),
                    hbar_chart(labels, [v["f1"] for v in per_class.values()], "F1 per class"),
                ],
            ),
        ]

    # ------------------------------------------------------------------ export and serving

    def export_spec(self, model: Any, tokenizer: Any) -> ExportSpec:
        import torch

        from pipelines.export_onnx import onnx_input_names
        from pipelines.serving import encode

        input_names = onnx_input_names(model, tokenizer)

        class LogitsOnly(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                return self.inner(**kwargs).logits

        pair = bool(self.params.data.text_pair_column)
        texts = ["an example sentence that is a little longer than the other one", "short"]
        pairs = ["a second sentence for the pair", "ok"] if pair else None
        feeds = encode(tokenizer, texts, pairs, self.params.tokenise.max_length, input_names)
        return ExportSpec(
            module=LogitsOnly(model).eval(),
            input_names=input_names,
            output_names=["logits"],
            example_inputs=tuple(torch.from_numpy(feeds[name]) for name in input_names),
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in input_names},
        )

    def serving_config(self, model: Any, tokenizer: Any, export_spec: ExportSpec) -> dict[str, Any]:
        return {
            "task": self.name,
            "max_length": int(self.params.tokenise.max_length),
            "pair": bool(self.params.data.text_pair_column),
            "input_names": export_spec.input_names,
            "output_names": export_spec.output_names,
            "id2label": {str(int(i)): str(name) for i, name in sorted(model.config.id2label.items())},
        }

    def parity_feeds(self, tokenizer: Any, frame: pd.DataFrame, input_names: list[str]) -> list[dict[str, Any]]:
        from pipelines.export_onnx import parity_batch_sizes
        from pipelines.serving import encode

        texts = frame["text"].astype(str).tolist()
        pairs = frame["text_pair"].astype(str).tolist() if "text_pair" in frame.columns else None
        feeds, start = [], 0
        for size in parity_batch_sizes(len(texts)):
            stop = start + size
            part = pairs[start:stop] if pairs is not None else None
            feeds.append(encode(tokenizer, texts[start:stop], part, self.params.tokenise.max_length, input_names))
            start = stop
        return feeds

    def outputs_disagree(self, torch_outputs: list[Any], onnx_outputs: list[Any], feeds: dict[str, Any]) -> int:
        return int((np.asarray(torch_outputs[0]).argmax(-1) != np.asarray(onnx_outputs[0]).argmax(-1)).sum())

    def runtime_inputs(self, frame: pd.DataFrame) -> list[Any]:
        if "text_pair" in frame.columns:
            return list(zip(frame["text"].astype(str), frame["text_pair"].astype(str), strict=True))
        return frame["text"].astype(str).tolist()

    def predictions_from_runtime(self, outputs: list[Any], id2label: dict[int, str]) -> Predictions | None:
        label2id = {v: k for k, v in id2label.items()}
        if any(o["label"] not in label2id for o in outputs):
            return None  # a champion with another label set cannot be compared
        return Predictions(values=[label2id[o["label"]] for o in outputs])
