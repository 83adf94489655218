"""Shared fixtures: a tiny random BERT built in the test (no downloads) and small labelled data."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

POSITIVE = ["good", "great", "lovely", "excellent", "fun", "superb", "brilliant", "enjoyable", "warm", "clever"]
NEGATIVE = ["bad", "awful", "boring", "terrible", "dull", "poor", "weak", "messy", "slow", "tedious"]
FILLER = ["the", "film", "was", "really", "a", "very", "story", "plot", "and", "acting", "it", "is", "quite"]


REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def clean_env(**extra: str) -> dict[str, str]:
    """Environment for a CLI or server subprocess: os.environ without the MLFLOW_* / PREFECT_* variables that
    earlier in-process tests exported (mlflow.set_*_uri and the CLI's set-up write them), the venv's bin first on
    PATH, offline Hugging Face; then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "PREFECT_"))}
    for name in ("NLPOPS_QUIET", "NLPOPS_LOG_FORMAT"):  # the CLI's output choice, exported by in-process CLI tests
        env.pop(name, None)
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["HF_HUB_OFFLINE"] = "1"
    return {**env, **extra}


def readme_env() -> dict[str, str]:
    """`clean_env` without PYTHONPATH: a benchmark script run as the README runs it must find the repo's modules
    itself."""
    return {k: v for k, v in clean_env().items() if k != "PYTHONPATH"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def git(project: Path, *args: str) -> str:
    """Run git in `project` with a throwaway identity; returns stdout."""
    done = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.invalid", *args],
        cwd=project,
        check=True,
        capture_output=True,
        text=True,
    )
    return done.stdout.strip()


def copy_repo(root: Path, skip: tuple[str, ...]) -> Path:
    """This repository's files as they stand in the working tree (tracked, and untracked ones git does not
    ignore) copied to `root`, except those under the folders in `skip`."""
    files = git(REPO, "ls-files", "--cached", "--others", "--exclude-standard")
    for rel in files.splitlines():
        src = REPO / rel
        if src.is_file() and not rel.startswith(skip):
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, root / rel)
    return root


def use_mlflow_store(uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, actor: str) -> None:
    """Point MLflow (and the nlpops code under test) at `uri`, with experiment 'tests' storing under tmp_path."""
    import mlflow

    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("NLPOPS_ACTOR", actor)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    # Other tests may leave an active experiment id behind that this fresh store does not have.
    monkeypatch.delenv("MLFLOW_EXPERIMENT_ID", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    if mlflow.get_experiment_by_name("tests") is None:  # artifacts under tmp_path, not ./mlruns
        mlflow.create_experiment("tests", artifact_location=(tmp_path / "mlartifacts").as_uri())
    mlflow.set_experiment("tests")


class MlflowServer:
    """A real `mlflow server` process on `backend` (SQLite file or PostgreSQL URL) that can be stopped and started
    again on the same port."""

    def __init__(self, root: Path, backend: str, workers: int = 1) -> None:
        self.root, self.backend, self.workers = root, backend, workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120.0) -> None:
        command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--backend-store-uri", self.backend, "--workers", str(self.workers)]
        command += ["--artifacts-destination", (self.root / "artifacts").as_uri()]
        log_path = self.root / "server.log"
        with log_path.open("a") as log:
            self.proc = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=clean_env(MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false"),  # as `nlpops services up` runs it
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"mlflow server did not become healthy:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None


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


def tokenise_sentiment(
    tmp_path: Path, model_dir: Path, rows: int, seed: int, validation: slice, test: slice, train_rows: int = 140
) -> Path:
    """Synthetic sentiment rows (labels 0/1) split into train[:train_rows] / validation / test and tokenised."""
    import pandas as pd

    from pipelines.config import TokeniseConfig
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits

    df = pd.DataFrame(make_sentiment_rows(rows, seed=seed), columns=["text", "label"])
    df["label"] = (df["label"] == "positive").astype("int64")
    clean = tmp_path / "clean"
    clean.mkdir()
    df[:train_rows].to_parquet(clean / "train.parquet")
    df[validation].to_parquet(clean / "validation.parquet")
    df[test].to_parquet(clean / "test.parquet")
    task = get_task("text_classification")
    tokenise_splits(clean, model_dir, tmp_path / "tok", tmp_path / "cache", TokeniseConfig(), task)
    return tmp_path / "tok"


@pytest.fixture(autouse=True)
def _forget_the_cli_output_choice():
    """The CLI exports its --quiet / --log-format choice for its stage processes; a test that runs the CLI in this
    process must not pass it on to the next test's subprocesses."""
    yield
    for name in ("NLPOPS_QUIET", "NLPOPS_LOG_FORMAT"):
        os.environ.pop(name, None)


@pytest.fixture
def mlflow_uris_restored(monkeypatch: pytest.MonkeyPatch):
    """No MLFLOW_* URI or experiment from the environment (or an earlier test) on the way in; MLflow's tracking and
    registry URIs reset on the way out (configure_tracking sets them process-wide)."""
    import mlflow

    for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
        monkeypatch.delenv(key, raising=False)
    yield
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
