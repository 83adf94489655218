"""The task plug-in interface: what differs between task types, and nothing else.

A task decides which columns it reads, how rows become token ids, which model head it uses, how a batch
is collated and which metrics it reports. Stages (tokenise, train, evaluate, export) only talk to this.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    import torch

    from pipelines.config import DataConfig


class TaskPlugin(ABC):
    name: str
    # Metric names this task reports on the validation split; the first is the default selection metric.
    metrics: tuple[str, ...]

    @abstractmethod
    def text_columns(self, data: DataConfig) -> list[str]:
        """Canonical text columns the cleaned splits carry (e.g. ['text'] or ['text', 'text_pair'])."""

    @abstractmethod
    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, max_length: int, batch_size: int) -> dict[str, list]:
        """Token ids (unpadded) and labels for each row: columns of the tokenised split."""

    @abstractmethod
    def model_class(self) -> Any:
        """The transformers Auto class with the right head."""

    @abstractmethod
    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, torch.Tensor]:
        """Pad a batch to its own longest row."""

    @abstractmethod
    def compute_metrics(self, logits: np.ndarray, labels: np.ndarray, id2label: dict[int, str]) -> dict[str, Any]:
        """Scalar metrics plus task-specific detail (per-class scores, confusion matrix)."""
