"""Shared fixtures: a tiny random BERT built in the test (no downloads) and small labelled data."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

POSITIVE = ["good", "great", "lovely", "excellent", "fun", "superb", "brilliant", "enjoyable", "warm", "clever"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "weak", "messy", "slow", "tedious"]
FILLER = ["the", "film", "was", "really", "a", "very", "story", "plot", "and", "acting", "it", "is", "quite"]


def clean_env(**extra: str) -> dict[str, str]:
    """os.environ without MLFLOW_* / PREFECT_* variables that earlier in-process tests exported (mlflow.set_*_uri
    and the CLI's set-up write them), so a CLI subprocess sees only what its own params and folder say."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    return {**env, **extra}


def tiny_vocab() -> list[str]:
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return special + sorted(set(POSITIVE + NEGATIVE + FILLER)) + list("abcdefghijklmnopqrstuvwxyz.,!?")


def build_tiny_model(path: Path, num_labels: int = 2) -> Path:
    """Save a tiny random BertForSequenceClassification + fast tokenizer as a local HF folder."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    path.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    # transformers 5: the fast tokenizer takes the vocabulary itself (`vocab=`), not a vocab_file path.
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=num_labels,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-bert"))


def make_sentiment_rows(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """Short synthetic sentences whose label follows their sentiment word (learnable in a few steps)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        word = rng.choice(POSITIVE if label == "positive" else NEGATIVE)
        words = [*rng.sample(FILLER, rng.randint(2, 6)), word, *rng.sample(FILLER, rng.randint(0, 4))]
        rows.append((" ".join(words) + f" {i}", label))
    return rows


@pytest.fixture
def sentiment_csv(tmp_path: Path) -> Path:
    import csv

    path = tmp_path / "reviews.csv"
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(120))
    return path
