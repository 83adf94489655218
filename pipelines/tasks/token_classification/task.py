"""The token classification Task: NER (IOB2) or POS-style tagging with a token classification head.

Examples are sentences (the clean frame's rows: tokens, tags, tag_ids, source_line); features are sub-word
windows (pipelines/tasks/token_classification/windows.py); predictions are one tag list per sentence, word level.
torch and transformers are imported inside the methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipelines.tasks.base import ExportSpec, Predictions, Task
from pipelines.tasks.token_classification import SPEC, Options
from pipelines.tasks.token_classification.iob import OUTSIDE, continuation_tag
from pipelines.tasks.token_classification.metrics import score_tags
from pipelines.tasks.token_classification.windows import IGNORE, align_labels, encode_windows, merge_windows, pad_batch

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from pipelines.config import TokeniseConfig
    from pipelines.tasks.catalog import TaskSpec

PER_TYPE_FILE = "per_type.json"
PER_TYPE_PLOT = "per_type_f1.png"
FIRST_PARITY_BATCHES = (1, 7)
MAX_PARITY_BATCH = 64


def _label_maps(id2label: dict[Any, str]) -> tuple[list[str], dict[str, int]]:
    names = [id2label[k] for k in sorted(id2label, key=int)]
    return names, {n: i for i, n in enumerate(names)}


def parity_batch_sizes(rows: int) -> list[int]:
    """1, 7, then the rest in batches of at most 64."""
    sizes, left = [], rows
    for size in FIRST_PARITY_BATCHES:
        if left > 0:
            sizes.append(min(size, left))
            left -= sizes[-1]
    while left > 0:
        sizes.append(min(MAX_PARITY_BATCH, left))
        left -= sizes[-1]
    return sizes


class TokenClassification(Task):
    """One tag per word; long sentences split into overlapping windows, never truncated."""

    spec: ClassVar[TaskSpec] = SPEC
    clean_counts = ("iob_repaired",)
    options: Options  # params.task, narrowed to this task's section

    # ------------------------------------------------------------------ data

    def validate_data(self, report_path: Path, docs_dir: Path | None) -> dict[str, Any]:
        from pipelines.tasks.token_classification.validation import validate_data

        return validate_data(self.params, report_path, docs_dir)

    def clean_data(self, out_dir: Path) -> dict[str, Any]:
        from pipelines.tasks.token_classification.clean import clean_data

        return clean_data(self.params, out_dir)

    # ------------------------------------------------------------------ tokenise

    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, cfg: TokeniseConfig) -> dict[str, list]:
        """Features for one clean split: input_ids, word_ids, example_id, window_start_word, length, and labels
        when the frame carries tag_ids. Labels need the label map: the clean frame's `tag_ids` already hold it."""
        sentences = [list(t) for t in frame["tokens"]]
        out = encode_windows(tokenizer, sentences, cfg.max_length, self.options.stride, cfg.batch_size)
        if "tag_ids" in frame.columns:
            tag_ids = [list(t) for t in frame["tag_ids"]]
            all_tokens = self.options.label_all_tokens
            continuation = self._continuation_from_frame(frame) if all_tokens and "tags" in frame.columns else {}
            out["labels"] = [
                align_labels(w, tag_ids[e], all_tokens, continuation)
                for w, e in zip(out["word_ids"], out["example_id"], strict=True)
            ]
        return out

    @staticmethod
    def _continuation_from_frame(frame: pd.DataFrame) -> dict[int, int]:
        """B-X id -> I-X id as seen in the split's (tags, tag_ids) pairs."""
        ids: dict[str, int] = {}
        for tags, tag_ids in zip(frame["tags"], frame["tag_ids"], strict=True):
            ids.update(zip(tags, (int(i) for i in tag_ids), strict=True))
        return {i: ids[continuation_tag(t)] for t, i in ids.items() if continuation_tag(t) in ids}

    def feature_types(self) -> dict[str, Any]:
        import pyarrow as pa

        return {
            "input_ids": pa.list_(pa.int32()),
            "word_ids": pa.list_(pa.int32()),
            "labels": pa.list_(pa.int32()),
        }

    # ------------------------------------------------------------------ model

    def auto_class(self) -> Any:
        from transformers import AutoModelForTokenClassification

        return AutoModelForTokenClassification

    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, torch.Tensor]:
        import torch

        ids, mask = pad_batch([list(r) for r in rows["input_ids"]], pad_token_id)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if "labels" in rows:
            labels = np.full(ids.shape, IGNORE, dtype=np.int64)
            for i, r in enumerate(rows["labels"]):
                labels[i, : len(r)] = list(r)
            batch["labels"] = torch.from_numpy(labels)
        return batch

    # ------------------------------------------------------------------ predictions and metrics

    def predict(
        self, model: Any, rows: dict[str, list], frame: pd.DataFrame, batch_size: int, pad_token_id: int
    ) -> Predictions:
        """Word-level tags per sentence (first sub-token, most central window) + per-word max softmax; the loss is
        the mean cross-entropy over the labelled tokens (NaN without labels)."""
        import torch

        from pipelines.train import feature_batches

        names = [model.config.id2label[i] for i in range(model.config.num_labels)]
        fallback = names.index(OUTSIDE) if OUTSIDE in names else 0
        logits_out: list[np.ndarray] = [np.zeros((0, len(names)), dtype=np.float32)] * len(rows["input_ids"])
        loss_sum, loss_tokens = 0.0, 0
        for idx, batch, outputs in feature_batches(model, self, rows, batch_size, pad_token_id):
            logits = outputs.logits.float()
            labels = batch.get("labels")
            if labels is not None:
                mask = labels != IGNORE
                if mask.any():
                    loss_sum += float(torch.nn.functional.cross_entropy(logits[mask], labels[mask], reduction="sum"))
                    loss_tokens += int(mask.sum())
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            arr = logits.numpy()
            for k, i in enumerate(idx):
                logits_out[i] = arr[k, : lengths[k]]
        n_words = [len(t) for t in frame["tokens"]]
        preds, scores = merge_windows(
            [list(w) for w in rows["word_ids"]], list(rows["example_id"]), logits_out, n_words, fallback
        )
        return Predictions(
            values=[[names[i] for i in p] for p in preds],
            scores=[s.tolist() for s in scores],
            loss=loss_sum / loss_tokens if loss_tokens else float("nan"),
        )

    def score(self, predictions: Predictions, frame: pd.DataFrame, id2label: dict[int, str]) -> dict[str, Any]:
        """seqeval strict IOB2 entity scores (f1/precision/recall micro over entities) + token accuracy; with
        task.scheme=none, accuracy + macro per-tag scores (see metrics.py)."""
        gold = [list(t) for t in frame["tags"]]
        return score_tags(gold, [list(p) for p in predictions.values], self.options.scheme)

    def slices(
        self, predictions: Predictions, frame: pd.DataFrame, rows: dict[str, list] | None, id2label: dict[int, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
        """One slice per entity type (per tag with scheme none): its F1, support = gold entities (tokens)."""
        scores = self.score(predictions, frame, id2label)
        unit = "entities" if self.options.scheme == "IOB2" else "tokens"
        found = {
            f"type={name}": {"value": float(v["f1"]), "rows": int(v["support"]), "metric": "f1"}
            for name, v in sorted(scores["per_type"].items())
        }
        membership = {"unit": unit, "support": {name: int(v["support"]) for name, v in scores["per_type"].items()}}
        notes = [f"per-type F1 slices; 'rows' counts gold {unit} of the type"]
        return found, membership, notes

    def write_evaluation(
        self, scores: dict[str, Any], predictions: Predictions, frame: pd.DataFrame, out_dir: Path
    ) -> dict[str, Path]:
        """per_type.json and a bar chart of per-type F1."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        per_type = scores.get("per_type", {})
        table = out_dir / PER_TYPE_FILE
        payload = [{"type": k, **v} for k, v in sorted(per_type.items())]
        table.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
        plot = out_dir / PER_TYPE_PLOT
        from pipelines.report.png import bar_chart_png

        title = "per-type F1 (strict IOB2)" if self.options.scheme == "IOB2" else "per-tag F1"
        bar_chart_png([p["type"] for p in payload], [p["f1"] for p in payload], plot, title, "F1")
        return {"per_type": table, "per_type_plot": plot}

    def evaluation_files(self, out_dir: Path) -> list[Path]:
        return [Path(out_dir) / PER_TYPE_FILE, Path(out_dir) / PER_TYPE_PLOT]

    # ------------------------------------------------------------------ run report

    card_pipeline_tag = "token-classification"

    def confidences(self, predictions: Predictions, frame: pd.DataFrame) -> dict[str, Any] | None:
        """Per word: the softmax probability of its predicted tag, and whether that is the gold tag."""
        if predictions.scores is None:
            return None
        confidence: list[float] = []
        correct: list[bool] = []
        for scores, tags, gold in zip(predictions.scores, predictions.values, frame["tags"], strict=True):
            for score, tag, true in zip(scores, tags, gold, strict=False):
                confidence.append(float(score))
                correct.append(tag == true)
        return {"confidence": confidence, "correct": correct, "unit": "words"}

    def report_sections(self, metrics: dict[str, Any], slices: dict[str, Any], views_dir: Path) -> list[Any]:
        """Precision / recall / F1 and support per entity type (per tag with scheme none)."""
        from pipelines.report.html import Section, hbar_chart, table

        path = Path(views_dir) / PER_TYPE_FILE
        if not path.is_file():
            return [Section("types", "Per entity type", note=f"not available: {path} missing")]
        rows = json.loads(path.read_text())
        unit = "entity type" if self.options.scheme == "IOB2" else "tag"
        return [
            Section(
                "types",
                f"Per {unit} ({'strict IOB2, exact boundaries' if self.options.scheme == 'IOB2' else 'token level'})",
                [
                    table(
                        [unit, "precision", "recall", "f1", "support"],
                        [[r["type"], r["precision"], r["recall"], r["f1"], r["support"]] for r in rows],
                    ),
                    hbar_chart([r["type"] for r in rows], [r["f1"] for r in rows], f"F1 per {unit}"),
                ],
            )
        ]

    # ------------------------------------------------------------------ export, parity, serving

    def export_spec(self, model: Any, tokenizer: Any) -> ExportSpec:
        """logits [batch, sequence, labels] from input_ids + attention_mask, both axes dynamic."""
        import torch

        class TokenLogits(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask):
                return (self.inner(input_ids=input_ids, attention_mask=attention_mask).logits,)

        features = encode_windows(
            tokenizer, [["an", "example", "sentence", "a", "little", "longer"], ["short", "one"]], 64, 0
        )
        ids, mask = pad_batch(features["input_ids"], tokenizer.pad_token_id or 0)
        names = ["input_ids", "attention_mask"]
        axes = {name: {0: "batch", 1: "sequence"} for name in [*names, "logits"]}
        return ExportSpec(
            module=TokenLogits(model).eval(),
            input_names=names,
            output_names=["logits"],
            example_inputs=(torch.from_numpy(ids), torch.from_numpy(mask)),
            dynamic_axes=axes,
        )

    def serving_config(self, model: Any, tokenizer: Any, export_spec: ExportSpec) -> dict[str, Any]:
        return {
            "task": self.name,
            "max_length": int(self.params.tokenise.max_length),
            "stride": int(self.options.stride),
            "input_names": list(export_spec.input_names),
            "output_names": list(export_spec.output_names),
            "id2label": {str(i): model.config.id2label[i] for i in range(model.config.num_labels)},
            "label_all_tokens": bool(self.options.label_all_tokens),
            "scheme": self.options.scheme,
        }

    def parity_feeds(self, tokenizer: Any, frame: pd.DataFrame, input_names: list[str]) -> list[dict[str, Any]]:
        """Windows of the first export.parity_rows test sentences, in batches of 1, 7, then up to 64."""
        limit = int(self.params.export.parity_rows)
        sentences = [list(t) for t in frame["tokens"].iloc[:limit] if len(t)]
        features = encode_windows(tokenizer, sentences, self.params.tokenise.max_length, self.options.stride)
        rows = features["input_ids"]
        feeds, start = [], 0
        for size in parity_batch_sizes(len(rows)):
            ids, mask = pad_batch(rows[start : start + size], tokenizer.pad_token_id or 0)
            start += size
            available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
            feeds.append({name: available[name] for name in input_names})
        return feeds

    def outputs_disagree(self, torch_outputs: list[Any], onnx_outputs: list[Any], feeds: dict[str, Any]) -> int:
        """Rows of the batch whose argmax tag sequences differ on the non-padding positions."""
        a = np.asarray(torch_outputs[0]).argmax(axis=-1)
        b = np.asarray(onnx_outputs[0]).argmax(axis=-1)
        mask = np.asarray(feeds["attention_mask"]).astype(bool)
        return int(((a != b) & mask).any(axis=1).sum())

    def runtime_inputs(self, frame: pd.DataFrame) -> list[Any]:
        """Each sentence as its list of words (the runtime keeps the split, so scores line up word for word)."""
        return [list(t) for t in frame["tokens"]]

    def predictions_from_runtime(self, outputs: list[Any], id2label: dict[int, str]) -> Predictions | None:
        known = set(id2label.values())
        values = [list(o["tags"]) for o in outputs]
        if any(t not in known for tags in values for t in tags):
            return None
        return Predictions(values=values, scores=[list(o.get("scores", [])) for o in outputs])
