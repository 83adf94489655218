"""Serve an exported ONNX model: the task runtimes' base (`OnnxRuntimeModel`) and the MLflow pyfunc for all tasks.

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
    from collections.abc import Iterator, Sequence

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
__all__ = ["ModelLoadError", "OnnxRuntimeModel", "encode", "load_runtime", "log_onnx_pyfunc", "ort_session"]


def load_tokenizer(folder: Path) -> Any:
    """The export's tokenizer, as `AutoTokenizer.from_pretrained` loads it, without importing torch where it can.

    AutoTokenizer's module imports transformers' configuration code, which imports torch: 1.3 s of every
    `nlpops predict` and server start, for a runtime that never uses torch. The class named in tokenizer_config.json
    (the class AutoTokenizer would pick) is imported from its own module, transformers.models.<name>.tokenization_
    <name>, when that module exists under the plain lower-cased name and imports (transformers 5.23: BERT,
    DistilBERT, RoBERTa, MPNet, ALBERT, T5, BART); any other name (ELECTRA, XLM-R, Marian) goes through
    AutoTokenizer."""
    import importlib

    name = ""
    config_file = folder / "tokenizer_config.json"
    if config_file.is_file():
        try:
            name = str(json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class") or "")
        except (OSError, ValueError, AttributeError):
            name = ""
    base = name.removesuffix("Fast").removesuffix("Tokenizer").lower()
    if base.isidentifier() and name.endswith(("Tokenizer", "TokenizerFast")):
        try:
            module = importlib.import_module(f"transformers.models.{base}.tokenization_{base}")
        except ImportError:
            module = None
        cls = getattr(module, name, None)
        if cls is not None:
            return cls.from_pretrained(folder, local_files_only=True, trust_remote_code=False)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(folder, local_files_only=True, trust_remote_code=False)


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

    enc = _tokenise(tokenizer, texts, text_pairs, max_length, input_names, padding="longest", return_tensors="np")
    return {name: np.asarray(enc[name], dtype=np.int64) for name in input_names}


def _tokenise(
    tokenizer: Any, texts: list[str], text_pairs: list[str] | None, max_length: int, input_names: list[str], **how: Any
) -> Any:
    """The tokenizer call of `encode` and `tokenise_rows`: truncation as in training, the graph's inputs."""
    return tokenizer(
        list(texts),
        list(text_pairs) if text_pairs is not None else None,
        truncation="longest_first",
        max_length=max_length,
        return_attention_mask=True,
        return_token_type_ids="token_type_ids" in input_names,
        **how,
    )


def tokenise_rows(
    tokenizer: Any, texts: list[str], text_pairs: list[str] | None, max_length: int, input_names: list[str]
) -> dict[str, list[list[int]]]:
    """`encode` without the padding: per graph input, one token list per row; `pad_rows` pads any batch of them
    later (the whole input is tokenised once, then batched by length)."""
    enc = _tokenise(tokenizer, texts, text_pairs, max_length, input_names, padding=False)
    return {name: list(enc[name]) for name in input_names}


def pad_rows(tokenizer: Any, rows: dict[str, list[list[int]]], index: Sequence[int]) -> dict[str, Any]:
    """The rows at `index` as ONNX feeds, padded to the batch's longest as the tokenizer pads (its side, its pad
    token and type id): exactly what `encode` gives for those texts."""
    import numpy as np

    pad_values = {"input_ids": tokenizer.pad_token_id or 0, "token_type_ids": tokenizer.pad_token_type_id or 0}
    left = getattr(tokenizer, "padding_side", "right") == "left"
    width = max((len(rows["input_ids"][i]) for i in index), default=0)
    feeds = {}
    for name, values in rows.items():
        array = np.full((len(index), width), pad_values.get(name, 0), dtype=np.int64)
        for j, i in enumerate(index):
            row = values[i]
            start = width - len(row) if left else 0
            array[j, start : start + len(row)] = row
        feeds[name] = array
    return feeds


def softmax(logits):
    import numpy as np

    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


ORT_THREADS_ENV = "NLPOPS_ORT_THREADS"  # intra-op threads of every session; unset or 0: onnxruntime's default


def ort_session(onnx_path: str | Path, threads: int | None = None):
    """A CPU onnxruntime session that only reports errors (ORT's graph-cleanup warnings are not news).

    Every graph optimisation ORT has (level ALL: its own fusions and layout changes on top of the export's), one
    operator at a time (sequential: a transformer is a chain, parallel execution only adds scheduling), and
    `threads` intra-op threads (else $NLPOPS_ORT_THREADS; 0 or unset: onnxruntime's default, one per physical
    core). benchmarks/inference.py measures these settings."""
    import os

    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads is None:
        threads = int(os.environ.get(ORT_THREADS_ENV) or 0)
    options.intra_op_num_threads = max(0, int(threads))
    return ort.InferenceSession(str(onnx_path), sess_options=options, providers=["CPUExecutionProvider"])


def length_batches(lengths: Sequence[int], batch_size: int, by_length: bool = True) -> list[list[int]]:
    """Row indices in batches of at most batch_size, longest rows first (by_length; else input order).

    Rows of one batch then have similar lengths, so little of each batch is padding; the caller writes every
    batch's results back at its indices, so results come out in input order. Longest first: the first batch
    sizes ORT's memory arena once for the whole call."""
    import numpy as np

    size = max(1, int(batch_size))
    order = np.argsort(-np.asarray(lengths, dtype=np.int64), kind="stable") if by_length else np.arange(len(lengths))
    return [order[i : i + size].tolist() for i in range(0, len(order), size)]


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


class OnnxRuntimeModel:
    """Base of every task's torch-free runtime: ONNX Runtime + the training tokenizer + serving.json.

    A task's runtime (named in its TaskSpec.runtime) implements `predict` (a list of the task's input items -> a
    list of result dicts), `items_from_frame` (a DataFrame / list / str as the pyfunc receives it -> items) and
    may override `output_frame` (results -> DataFrame) and require more serving.json keys (`required_keys`).
    """

    task: str = ""
    required_keys: tuple[str, ...] = ("max_length", "input_names")
    # batch prediction runs rows sorted by length (results still in input order); False: input order, for
    # benchmarks/inference.py's side-by-side
    sort_by_length: bool = True

    def __init__(self, session: Any, tokenizer: Any, serving: dict[str, Any], path: Path | None = None) -> None:
        self.session = session
        self.tokenizer = tokenizer
        self.serving = serving
        self.path = path
        self.max_length = int(serving["max_length"])
        self.input_names = list(serving["input_names"])
        self.output_names = list(serving.get("output_names", [OUTPUT_NAME]))
        self.opset = serving.get("opset")

    @classmethod
    def from_dir(cls, path: str | Path, session: Any = None) -> Any:
        """The runtime of an export folder; `session`: an ORT session already open on a graph of that folder
        (the export stage reuses its parity session instead of opening model.onnx again)."""
        path = check_export_dir(path)
        serving = read_serving_json(path)
        missing = [k for k in cls.required_keys if k not in serving]
        if missing:
            raise ModelLoadError(f"{path / SERVING_FILE}: missing keys {missing}")
        try:
            with quiet():
                tokenizer = load_tokenizer(path / TOKENIZER_DIR)
        except Exception as exc:  # transformers raises many types for a broken folder
            reason = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"{path / TOKENIZER_DIR}: cannot load tokenizer ({reason})") from None
        try:
            session = session or ort_session(path / ONNX_FILE)
        except Exception as exc:  # onnxruntime raises its own exception types
            reason = f"{type(exc).__name__}: {exc}"
            raise ModelLoadError(f"{path / ONNX_FILE}: onnxruntime cannot load it ({reason})") from None
        graph_inputs = [i.name for i in session.get_inputs()]
        if sorted(graph_inputs) != sorted(serving["input_names"]):
            raise ModelLoadError(
                f"{path}: serving.json input_names {serving['input_names']} do not match the graph's {graph_inputs}"
            )
        return cls(session, tokenizer, serving, path)

    def run(self, feeds: dict[str, Any]) -> list[Any]:
        """One ONNX Runtime call; outputs in serving.json's output_names order."""
        return self.session.run(self.output_names, feeds)

    def predict(self, items: list[Any], batch_size: int = 32) -> list[dict[str, Any]]:  # pragma: no cover
        raise NotImplementedError

    def items_from_frame(self, model_input: Any) -> list[Any]:  # pragma: no cover
        raise NotImplementedError

    def output_frame(self, results: list[dict[str, Any]]) -> Any:
        import pandas as pd

        return pd.DataFrame(results)

    def format_result(self, result: dict[str, Any]) -> str:
        """One line for `nlpops predict` without --json."""
        return json.dumps(result, default=str)


def read_serving_json(path: Path) -> dict[str, Any]:
    try:
        serving = json.loads((Path(path) / SERVING_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{Path(path) / SERVING_FILE}: unreadable ({exc})") from None
    if not isinstance(serving, dict):
        raise ModelLoadError(f"{Path(path) / SERVING_FILE}: expected a JSON object")
    return serving


def runtime_class(task: str) -> Any:
    """The runtime class of a task type (TaskSpec.runtime, "module:Class")."""
    import importlib

    from pipelines.tasks.catalog import task_spec

    module, _, name = task_spec(task).runtime.partition(":")
    return getattr(importlib.import_module(module), name)


def load_runtime(path: str | Path, session: Any = None) -> Any:
    """The runtime for an export folder, chosen by its serving.json `task` (older exports: text_classification);
    `session`: an open ORT session to use instead of opening model.onnx."""
    path = check_export_dir(path)
    task = str(read_serving_json(path).get("task", "text_classification"))
    try:
        cls = runtime_class(task)
    except Exception as exc:
        raise ModelLoadError(f"{path / SERVING_FILE}: unknown task {task!r} ({exc})") from None
    return cls.from_dir(path, session=session)


_PYFUNC_CLASS: type | None = None


def _pyfunc_class() -> type:
    """Define the PythonModel subclass on first use, so importing this module does not import mlflow (~3 s)."""
    global _PYFUNC_CLASS
    if _PYFUNC_CLASS is not None:
        return _PYFUNC_CLASS
    import pandas as pd
    from mlflow.pyfunc import PythonModel

    class OnnxTextClassifierModel(PythonModel):
        """MLflow pyfunc for every task type: the task's runtime (chosen by serving.json) on the export folder.
        Input: a DataFrame in the task's input shape (or a list of items); output: the runtime's result frame."""

        def load_context(self, context) -> None:
            self.runtime = load_runtime(context.artifacts["export_dir"])

        def predict(self, context, model_input, params=None):
            batch_size = int((params or {}).get("batch_size", 32))
            items = self.runtime.items_from_frame(model_input)
            return self.runtime.output_frame(self.runtime.predict(items, batch_size=batch_size))

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


def serving_signature(export_dir: Path):
    """The runtime's own MLflow signature (its `signature()` classmethod), or none."""
    cls = runtime_class(str(read_serving_json(export_dir).get("task", "text_classification")))
    return cls.signature() if hasattr(cls, "signature") else None


def serving_requirements() -> list[str]:
    """Pinned to what is installed here; explicit so MLflow does not infer them (slow, and it would find torch)."""
    from importlib.metadata import version

    return [f"{name}=={version(name)}" for name in SERVING_REQUIREMENTS]


@contextmanager
def _known_package_modules() -> Iterator[None]:
    """MLflow checks the explicit requirements against this environment through a module -> package map it first
    builds by scanning every installed distribution (0.3-4 s, a third of `register`); our requirements are
    packages whose module has the same name, so the map it needs is known. The map is MLflow's private state, set
    only for the duration (another model logged in this process gets MLflow's own scan) and left alone if it
    moved or was already built."""
    try:
        from mlflow.utils import requirements_utils
    except ImportError:  # pragma: no cover - another MLflow layout: it scans, as before
        yield
        return
    if getattr(requirements_utils, "_MODULES_TO_PACKAGES", False) is not None:
        yield
        return
    requirements_utils._MODULES_TO_PACKAGES = {name: [name] for name in SERVING_REQUIREMENTS}  # type: ignore[assignment]
    try:
        yield
    finally:
        requirements_utils._MODULES_TO_PACKAGES = None
        requirements_utils._PACKAGES_TO_MODULES = None


def log_onnx_pyfunc(export_dir: Path, name: str = "model") -> ModelInfo:
    """Log the export folder as an MLflow pyfunc model in the active run; returns MLflow's ModelInfo."""
    import mlflow

    export_dir = check_export_dir(export_dir)
    if mlflow.active_run() is None:
        raise RuntimeError("log_onnx_pyfunc must be called inside an active MLflow run (mlflow.start_run())")
    with quiet(), _known_package_modules():
        return mlflow.pyfunc.log_model(
            name=name,
            python_model=str(Path(__file__).resolve()),  # model from code: this file, no pickle
            artifacts={"export_dir": str(export_dir.resolve())},
            signature=serving_signature(export_dir),
            pip_requirements=serving_requirements(),
            # the task runtimes live in the nlpops package: ship it, so a bare serving env can load the model
            code_paths=[str(Path(__file__).resolve().parent)],
        )


# MLflow "model from code": when MLflow executes this file (at log and at load time) mlflow is already imported,
# and it expects the file to register its model. A plain import of pipelines.serving without mlflow skips this.
if "mlflow" in sys.modules and __name__ != "pipelines.serving":  # MLflow's own load of this file, not an import
    from mlflow.models import set_model

    set_model(_pyfunc_class()())
