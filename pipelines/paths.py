"""Where each stage reads and writes. dvc.yaml declares the same paths as deps/outs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Params

SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class StagePaths:
    root: Path
    state: Path

    @classmethod
    def from_params(cls, params: Params) -> StagePaths:
        return cls(root=Path(params.project.artifacts_dir), state=Path(params.project.state_dir))

    # validate
    @property
    def validate_dir(self) -> Path:
        return self.root / "validate"

    @property
    def validation_report(self) -> Path:
        return self.validate_dir / "report.json"

    # clean
    @property
    def clean_dir(self) -> Path:
        return self.root / "clean"

    def clean_split(self, split: str) -> Path:
        return self.clean_dir / f"{split}.parquet"

    @property
    def label_map(self) -> Path:
        return self.clean_dir / "label_map.json"

    @property
    def clean_summary(self) -> Path:
        return self.clean_dir / "summary.json"

    # tokenise
    @property
    def tokenised_dir(self) -> Path:
        return self.root / "tokenised"

    @property
    def tokenise_cache(self) -> Path:
        return self.state / "cache" / "tokenised"

    # train
    @property
    def model_dir(self) -> Path:
        return self.root / "model"

    @property
    def train_dir(self) -> Path:
        return self.root / "train"

    @property
    def train_summary(self) -> Path:
        return self.train_dir / "summary.json"

    @property
    def train_history(self) -> Path:
        return self.train_dir / "history.json"

    # evaluate
    @property
    def evaluate_dir(self) -> Path:
        return self.root / "evaluate"

    @property
    def metrics(self) -> Path:
        return self.evaluate_dir / "metrics.json"

    @property
    def per_class(self) -> Path:
        return self.evaluate_dir / "per_class.json"

    @property
    def confusion_csv(self) -> Path:
        return self.evaluate_dir / "confusion.csv"

    @property
    def confusion_png(self) -> Path:
        return self.evaluate_dir / "confusion_matrix.png"

    @property
    def gate(self) -> Path:
        return self.evaluate_dir / "gate.json"

    # export
    @property
    def export_dir(self) -> Path:
        return self.root / "export"

    @property
    def onnx_model(self) -> Path:
        return self.export_dir / "model.onnx"

    @property
    def parity_report(self) -> Path:
        return self.export_dir / "parity.json"

    # register
    @property
    def registration(self) -> Path:
        return self.root / "register" / "registration.json"
