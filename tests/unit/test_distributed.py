"""Distributed training (pipelines/distributed.py): real torchrun ranks on gloo, compared with one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import tokenise_sentiment

from pipelines import distributed
from pipelines.config import ModelConfig, TrainConfig
from pipelines.tasks import get_task
from pipelines.train import length_grouped_batches, train_model

ID2LABEL = {0: "negative", 1: "positive"}


def test_shards_split_every_global_batch_and_weight_the_losses(monkeypatch: pytest.MonkeyPatch) -> None:
    assert distributed.shard([4, 5, 6]) == ([4, 5, 6], 1.0, 3)  # one process: the batch itself
    batches = length_grouped_batches(list(range(3, 40)), batch_size=5, mega_batch_factor=2, seed=3)
    for world in (2, 3):
        monkeypatch.setattr(distributed, "world_size", lambda w=world: w)
        for batch in batches:
            parts = []
            for r in range(world):
                monkeypatch.setattr(distributed, "rank", lambda r=r: r)
                parts.append(distributed.shard(batch))
            real = [idx for idx, _, n in parts if n]
            assert sorted(i for idx in real for i in idx) == sorted(batch)  # every row once, on some rank
            assert len(parts) == world  # every rank takes this step (a rank without rows runs one with weight 0)
            # DDP averages the ranks' gradients of weight_r * (mean loss over its n_r rows): each row then counts
            # weight_r / (world * n_r), which must be 1 / len(batch), as in the mean over the whole batch.
            for _, w, n in parts:
                if n:
                    assert w / (world * n) == pytest.approx(1 / len(batch))


@pytest.fixture
def tokenised(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return tokenise_sentiment(tmp_path, tiny_model_dir, 160, seed=4, validation=slice(100, 130), test=slice(130, None))


def test_two_processes_reach_the_metrics_of_one(tokenised: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """2 ranks x 1 thread (torchrun, gloo, DDP) vs 1 process x 2 threads, same global batch: same epochs."""
    common = dict(epochs=3, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0, seed=3)
    model_cfg = ModelConfig(dropout=0.0)
    task = get_task("text_classification")
    val = tokenised.parent / "clean" / "validation.parquet"
    one = train_model(
        tokenised, ID2LABEL, tiny_model_dir, tmp_path / "one", TrainConfig(**common, num_threads=2), model_cfg, task, 0
    )
    two = distributed.train_model_distributed(
        2,
        tokenised,
        ID2LABEL,
        tiny_model_dir,
        tmp_path / "two",
        TrainConfig(**common, num_threads=1, processes=2),
        model_cfg,
        "text_classification",
        0,
        val_path=val,
    )
    assert one["processes"] == 1 and two["processes"] == 2
    assert two["steps"] == one["steps"] and two["epochs_run"] == one["epochs_run"] == 3
    for a, b in zip(one["history"], two["history"], strict=True):
        for key in ("train_loss", "val_loss", "val_accuracy", "val_macro_f1"):
            assert b[key] == pytest.approx(a[key], abs=2e-4), (key, a, b)
    assert two["best_epoch"] == one["best_epoch"]
    saved = json.loads((tmp_path / "two" / "nlpops_checkpoint.json").read_text())  # rank 0 wrote the best epoch
    assert saved["epoch"] == two["best_epoch"]
