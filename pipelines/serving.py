"""Serve an exported ONNX classifier: plain Python (`OnnxTextClassifier`) and as an MLflow pyfunc model.

This file must load in a bare serving environment (numpy, onnxruntime, transformers' tokenizer, pandas, mlflow):
no torch and no other nlpops module. MLflow logs it as "model from code" (no pickle): MLflow executes this file,
the `set_model` call at the bottom registers the pyfunc, and `load_context` opens the export folder shipped as the
model's `export_dir` artifact. Importing it is cheap: numpy, onnxruntime, transformers and mlflow load on first use.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

try:  # one error type for the CLI when nlpops is installed; a local stand-in inside a bare MLflow serving env
    from pipelines.errors import ModelLoadError
except ImportError:  # pragma: no cover - exercised only without nlpops on sys.path

    class ModelLoadError(Exception):  # type: ignore[no-redef]
        """The exported model folder is missing or unusable."""


ONNX_FILE = "model.onnx"
TOKENIZER_DIR = "tokenizer"
SERVING_FILE = "serving.json"
OUTPUT_NAME = "logits"
SERVING_REQUIREMENTS = ("onnxruntime", "transformers", "tokenizers", "numpy", "pandas")

# Also OnnxTextClassifierModel, defined on first access (module __getattr__ below) to keep this import cheap.
__all__ = ["ModelLoadError", "OnnxTextClassifier", "encode", "log_onnx_pyfunc", "ort_session"]


@contextmanager
def quiet():
    """Library warnings, log records below ERROR and tqdm bars off the console for the duration."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(previous)


def encode(tokenizer: Any, texts: list[str], text_pairs: list[str] | None, max_length: int, input_names: list[str]):
    """Tokenise like training: truncation to max_length (longest_first for pairs), padding to the batch's longest.

    Returns {input name: int64 array [batch, seq]} holding exactly the ONNX graph's inputs.
    """
    import numpy as np

    enc = tokenizer(
        list(texts),
        list(text_pairs) if text_pairs is not None else None,
        truncation="longest_first",
        max_length=max_length,
        padding="longest",
        return_attention_mask=True,
        return_token_type_ids="token_type_ids" in input_names,
        return_tensors="np",
    )
    return {name: np.asarray(enc[name], dtype=np.int64) for name in input_names}


def softmax(logits):
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


def ort_session(onnx_path: str | Path):
    """A CPU onnxruntime session that only reports errors (ORT's graph-cleanup warnings are not news)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def check_export_dir(path: str | Path) -> Path:
    """The export folder's files, or a ModelLoadError naming what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise ModelLoadError(f"{path}: not an ONNX export folder (no such directory)")
    missing = [name for name in (ONNX_FILE, SERVING_FILE) if not (path / name).is_file()]
    if not (path / TOKENIZER_DIR).is_dir() or not any((path / TOKENIZER_DIR).iterdir()):
        missing.append(f"{TOKENIZER_DIR}/")
    if missing:
        raise ModelLoadError(f"{path}: incomplete ONNX export, missing {', '.join(missing)}")
    return path


class OnnxTextClassifier:
    """ONNX Runtime + the training tokenizer; predicts labels and softmax scores."""

    def __init__(self, session: Any, tokenizer: Any, serving: dict[str, Any]) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.max_length = int(serving["max_length"])
        self.pair = bool(serving["pair"])
        self.input_names = list(serving["input_names"])
        self.id2label = {int(i): str(name) for i, name in serving["id2label"].items()}
        self.opset = serving.get("opset")

    @classmethod
    def from_dir(cls, path: str | Path) -> OnnxTextClassifier:
        path = check_export_dir(path)
        try:
            serving = json.loads((path / SERVING_FILE).read_text(encoding="utf-8"))
            missing = [k for k in ("max_length", "pair", "input_names", "id2label") if k not in serving]
        except (OSError, ValueError) as exc:
            raise ModelLoadError(f"{path / SERVING_FILE}: unreadable ({exc})") from None
        if missing:
            raise ModelLoadError(f"{path / SERVING_FILE}: missing keys {missing}")
        try:
            with quiet():
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(
                    path / TOKENIZER_DIR, local_files_only=True, trust_remote_code=False
                )
        except Exception as exc:  # transformers raises many types for a broken folder
            reason = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"{path / TOKENIZER_DIR}: cannot load tokenizer ({reason})") from None
        try:
            session = ort_session(path / ONNX_FILE)
        except Exception as exc:  # onnxruntime raises its own exception types
            reason = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"{path / ONNX_FILE}: onnxruntime cannot load it ({reason})") from None
        graph_inputs = [i.name for i in session.get_inputs()]
        if sorted(graph_inputs) != sorted(serving["input_names"]):
            raise ModelLoadError(
                f"{path}: serving.json input_names {serving['input_names']} do not match the graph's {graph_inputs}"
            )
        return cls(session, tokenizer, serving)

    def predict_logits(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32):
        """Raw logits, float32 [rows, labels]."""
        import numpy as np

        texts = [str(t) for t in texts]
        if self.pair:
            if text_pairs is None:
                raise ValueError("this is a sentence-pair model: text_pairs is required")
            text_pairs = [str(t) for t in text_pairs]
            if len(text_pairs) != len(texts):
                raise ValueError(f"texts and text_pairs differ in length ({len(texts)} vs {len(text_pairs)})")
        elif text_pairs is not None:
            raise ValueError("this is a single-sentence model: text_pairs must be None")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        chunks = []
        for start in range(0, len(texts), batch_size):
            stop = start + batch_size
            feeds = encode(
                self.tokenizer,
                texts[start:stop],
                text_pairs[start:stop] if text_pairs is not None else None,
                self.max_length,
                self.input_names,
            )
            chunks.append(self.session.run([OUTPUT_NAME], feeds)[0])
        if not chunks:
            return np.zeros((0, len(self.id2label)), dtype=np.float32)
        return np.concatenate(chunks, axis=0)

    def predict(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32) -> list[dict]:
        """[{"label": name, "score": probability of that label, "scores": {label: probability}}] per row."""
        probs = softmax(self.predict_logits(texts, text_pairs, batch_size).astype("float64"))
        names = [self.id2label[i] for i in range(probs.shape[1])]
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(
                {
                    "label": names[best],
                    "score": float(row[best]),
                    "scores": {name: float(p) for name, p in zip(names, row, strict=True)},
                }
            )
        return out


def _frame_columns(model_input: Any) -> tuple[list[str], list[str] | None]:
    import pandas as pd

    if isinstance(model_input, pd.DataFrame):
        if "text" not in model_input.columns:
            raise ValueError(f"input needs a 'text' column (got {list(model_input.columns)})")
        pairs = model_input["text_pair"].tolist() if "text_pair" in model_input.columns else None
        return model_input["text"].tolist(), pairs
    if isinstance(model_input, pd.Series):
        return model_input.tolist(), None
    if isinstance(model_input, str):
        return [model_input], None
    if isinstance(model_input, dict):
        return _frame_columns(pd.DataFrame(model_input))
    if isinstance(model_input, list | tuple):
        if model_input and isinstance(model_input[0], dict):
            return _frame_columns(pd.DataFrame(list(model_input)))
        return list(model_input), None
    raise ValueError(f"unsupported input type {type(model_input).__name__}: pass a DataFrame with a 'text' column")


_PYFUNC_CLASS: type | None = None


def _pyfunc_class() -> type:
    """Define the PythonModel subclass on first use, so importing this module does not import mlflow (~3 s)."""
    global _PYFUNC_CLASS
    if _PYFUNC_CLASS is not None:
        return _PYFUNC_CLASS
    import pandas as pd
    from mlflow.pyfunc import PythonModel

    class OnnxTextClassifierModel(PythonModel):
        """MLflow pyfunc: DataFrame (text[, text_pair]) or list of texts -> DataFrame (label, score)."""

        def load_context(self, context) -> None:
            self.classifier = OnnxTextClassifier.from_dir(context.artifacts["export_dir"])

        def predict(self, context, model_input, params=None):
            texts, pairs = _frame_columns(model_input)
            if pairs is not None and not self.classifier.pair:
                pairs = None  # an optional column the single-sentence model does not use
            batch_size = int((params or {}).get("batch_size", 32))
            rows = self.classifier.predict(texts, pairs, batch_size=batch_size)
            return pd.DataFrame(
                {
                    "label": pd.Series([r["label"] for r in rows], dtype=object),
                    "score": pd.Series([r["score"] for r in rows], dtype="float64"),
                }
            )

        # A real (not string) hint, set before the class exists: MLflow inspects it when the class is created and
        # otherwise warns "Add type hints". DataFrame hints switch off MLflow's hint-based checks; the explicit
        # signature still validates input. Called directly, predict also takes a list of texts.
        predict.__annotations__["model_input"] = pd.DataFrame

    OnnxTextClassifierModel.__module__ = __name__
    OnnxTextClassifierModel.__qualname__ = "OnnxTextClassifierModel"
    _PYFUNC_CLASS = OnnxTextClassifierModel
    return OnnxTextClassifierModel


def __getattr__(name: str) -> Any:  # PEP 562: `from pipelines.serving import OnnxTextClassifierModel`
    if name == "OnnxTextClassifierModel":
        return _pyfunc_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def serving_signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)]),
        outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
    )


def serving_requirements() -> list[str]:
    """Pinned to what is installed here; explicit so MLflow does not infer them (slow, and it would find torch)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVING_REQUIREMENTS]


def log_onnx_pyfunc(export_dir: Path, name: str = "model") -> ModelInfo:
    """Log the export folder as an MLflow pyfunc model in the active run; returns MLflow's ModelInfo."""
    import mlflow

    export_dir = check_export_dir(export_dir)
    if mlflow.active_run() is None:
        raise RuntimeError("log_onnx_pyfunc must be called inside an active MLflow run (mlflow.start_run())")
    with quiet():
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).resolve()),  # model from code: this file, no pickle
            artifacts={"export_dir": str(export_dir.resolve())},
            signature=serving_signature(),
            pip_requirements=serving_requirements(),
        )


# MLflow "model from code": when MLflow executes this file (at log and at load time) mlflow is already imported,
# and it expects the file to register its model. A plain import of pipelines.serving without mlflow skips this.
if "mlflow" in sys.modules:
    from mlflow.models import set_model

    set_model(_pyfunc_class()())
