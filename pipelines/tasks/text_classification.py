"""Single-sentence and sentence-pair classification (sequence classification head)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from pipelines.tasks.base import TaskPlugin

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from pipelines.config import DataConfig


def classification_metrics(predictions: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
    """Accuracy, macro-F1, per-class precision/recall/F1/support and the confusion matrix (rows = true)."""
    n = len(id2label)
    predictions = np.asarray(predictions, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    confusion = np.zeros((n, n), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    tp = np.diag(confusion).astype(float)
    predicted = confusion.sum(axis=0).astype(float)
    support = confusion.sum(axis=1).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    present = support > 0  # classes absent from this split do not drag macro-F1 down to zero
    per_class = {
        id2label[i]: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i in range(n)
    }
    total = max(int(confusion.sum()), 1)
    return {
        "accuracy": float(tp.sum() / total),
        "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
        "per_class": per_class,
        "confusion_matrix": confusion.tolist(),
        "labels": [id2label[i] for i in range(n)],
        "rows": int(confusion.sum()),
    }


class TextClassification(TaskPlugin):
    name = "text_classification"
    metrics = ("macro_f1", "accuracy")

    def text_columns(self, data: DataConfig) -> list[str]:
        return ["text", "text_pair"] if data.text_pair_column else ["text"]

    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, max_length: int, batch_size: int) -> dict[str, list]:
        pair = "text_pair" in frame.columns
        out: dict[str, list] = {"input_ids": [], "label": frame["label"].astype("int64").tolist()}
        if pair:
            out["token_type_ids"] = []
        texts = frame["text"].tolist()
        pairs = frame["text_pair"].tolist() if pair else None
        for start in range(0, len(texts), batch_size):
            stop = start + batch_size
            enc = tokenizer(
                texts[start:stop],
                pairs[start:stop] if pairs is not None else None,
                truncation="longest_first" if pair else True,
                max_length=max_length,
                padding=False,
                return_attention_mask=False,
                return_token_type_ids=pair,
            )
            out["input_ids"].extend(enc["input_ids"])
            if pair:
                out["token_type_ids"].extend(enc["token_type_ids"])
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out

    def model_class(self) -> Any:
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
        batch["labels"] = torch.as_tensor(rows["label"], dtype=torch.long)
        return batch

    def compute_metrics(self, logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
        return classification_metrics(np.asarray(logits).argmax(axis=-1), labels, id2label)
