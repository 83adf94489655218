"""Where each stage reads and writes. dvc.yaml declares the same paths as deps/outs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Params
from pipelines.schema import stable_hash

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

    @property
    def data_docs(self) -> Path:
        return self.validate_dir / "data_docs"

    # per-experiment state: two experiments of one project (other artifacts dirs) never share stamps/checkpoints
    @property
    def experiment_key(self) -> str:
        return stable_hash(str(self.root.resolve()))[:16]

    @property
    def experiment_state(self) -> Path:
        return self.state / "experiments" / self.experiment_key

    @property
    def stamps_dir(self) -> Path:
        return self.experiment_state / "stamps"

    @property
    def checkpoint_dir(self) -> Path:
        return self.experiment_state / "checkpoints" / "train"

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
    def slices(self) -> Path:
        return self.evaluate_dir / "slices.json"

    @property
    def evaluation_views(self) -> Path:
        """The task's own evaluation tables and plots (confusion matrix, per entity type, ...)."""
        return self.evaluate_dir / "views"

    @property
    def calibration(self) -> Path:
        """Confidence bins of the test predictions (score histogram and reliability diagram of the report)."""
        return self.evaluation_views / "calibration.json"

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

    # report
    @property
    def report_dir(self) -> Path:
        return self.root / "report"

    @property
    def report_html(self) -> Path:
        return self.report_dir / "index.html"

    @property
    def learning_curves(self) -> Path:
        return self.report_dir / "learning_curves.svg"

    @property
    def model_card(self) -> Path:
        return self.report_dir / "model_card.md"
