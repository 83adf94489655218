from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import tokenise_sentiment

from pipelines.config import ModelConfig, TrainConfig
from pipelines.errors import ModelLoadError
from pipelines.tasks import get_task
from pipelines.train import (
    apply_freezing,
    encoder_layers,
    length_grouped_batches,
    random_batches,
    stratified_subset,
    train_model,
    training_batches,
)

ID2LABEL = {0: "negative", 1: "positive"}
TASK = get_task("text_classification")


def test_length_grouped_batches_cover_every_row_once_with_little_padding() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 120, size=1000).tolist()
    batches = length_grouped_batches(lengths, batch_size=16, mega_batch_factor=10, seed=1)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    assert all(len(b) <= 16 for b in batches)

    def padding(bs: list[list[int]]) -> int:
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    assert padding(batches) < 0.25 * padding(random_batches(1000, 16, seed=1))
    assert batches == length_grouped_batches(lengths, 16, 10, seed=1)
    assert batches != length_grouped_batches(lengths, 16, 10, seed=2)
    # Batch order is shuffled: the first batch is not always the longest one.
    firsts = {max(lengths[i] for i in length_grouped_batches(lengths, 16, 10, seed=s)[0]) for s in range(8)}
    assert len(firsts) > 1


def test_token_budget_batches_hold_every_row_once_within_the_budget() -> None:
    rng = np.random.default_rng(0)
    lengths = rng.integers(3, 200, size=2000).tolist()
    batches = length_grouped_batches(lengths, batch_size=64, mega_batch_factor=20, seed=3, batch_tokens=1000)
    assert sorted(i for b in batches for i in b) == list(range(2000))
    for b in batches:
        assert len(b) <= 64
        assert len(b) * max(lengths[i] for i in b) <= 1000 or len(b) == 1
    widths = {len(b): max(lengths[i] for i in b) for b in batches}
    assert max(widths) > 4 * min(widths), "short rows make wide batches, long rows narrow ones"
    assert batches == length_grouped_batches(lengths, 64, 20, seed=3, batch_tokens=1000)
    # A row longer than the budget is a batch of its own; batch_size still caps the short rows.
    small = length_grouped_batches([50, 2, 2, 2], batch_size=2, mega_batch_factor=10, seed=0, batch_tokens=10)
    assert [0] in small and sorted(len(b) for b in small) == [1, 1, 2]


def test_without_a_token_budget_batches_are_unchanged() -> None:
    lengths = np.random.default_rng(1).integers(5, 60, size=300).tolist()
    cfg = TrainConfig(batch_size=16, mega_batch_factor=5, seed=7)
    assert training_batches(lengths, cfg, 1) == length_grouped_batches(lengths, 16, 5, seed=8)
    # Mega-batches of 5 x 16 = 80 rows: 80, 80, 80, 60 -> eighteen batches of 16 and one of 12.
    assert sorted(len(b) for b in training_batches(lengths, cfg, 2)) == [12] + [16] * 18


def test_stratified_subset_keeps_class_shares() -> None:
    labels = [0] * 800 + [1] * 200
    idx = stratified_subset(labels, 100, seed=0)
    picked = [labels[i] for i in idx]
    assert len(idx) == 100 and picked.count(1) == 20
    assert idx == stratified_subset(labels, 100, seed=0)


def test_freezing_lower_layers_and_training_only_the_last(tiny_model_dir: Path) -> None:
    model = TASK.build_model(tiny_model_dir, ID2LABEL, ModelConfig(freeze_layers=1))
    layers = encoder_layers(model)
    stats = apply_freezing(model, ModelConfig(freeze_layers=1))
    assert len(layers) == 2 and stats["frozen_layers"] == 1
    assert not any(p.requires_grad for p in layers[0].parameters())
    assert all(p.requires_grad for p in layers[1].parameters())
    assert all(p.requires_grad for p in model.base_model.embeddings.parameters())

    model = TASK.build_model(tiny_model_dir, ID2LABEL, ModelConfig())
    apply_freezing(model, ModelConfig(train_last_layers=1))
    assert not any(p.requires_grad for p in model.base_model.embeddings.parameters())
    assert not any(p.requires_grad for p in encoder_layers(model)[0].parameters())
    assert all(p.requires_grad for p in model.classifier.parameters())

    with pytest.raises(ModelLoadError, match="freeze_layers=5 but the model has 2 layers"):
        apply_freezing(TASK.build_model(tiny_model_dir, ID2LABEL, ModelConfig()), ModelConfig(freeze_layers=5))


def test_dropout_and_labels_reach_the_model_config(tiny_model_dir: Path) -> None:
    model = TASK.build_model(tiny_model_dir, {0: "a", 1: "b", 2: "c"}, ModelConfig(dropout=0.3))
    assert model.config.hidden_dropout_prob == 0.3 and model.config.attention_probs_dropout_prob == 0.3
    assert model.config.num_labels == 3 and model.config.id2label[2] == "c"


def test_missing_model_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"cannot read config\.json"):
        TASK.build_model(tmp_path, ID2LABEL, ModelConfig())


@pytest.fixture
def tokenised(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return tokenise_sentiment(tmp_path, tiny_model_dir, 200, seed=1, validation=slice(140, 170), test=slice(170, None))


def test_training_learns_and_keeps_the_best_epoch(tokenised: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    seen: list[int] = []
    cfg = TrainConfig(epochs=5, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0)
    out = train_model(
        tokenised,
        ID2LABEL,
        tiny_model_dir,
        tmp_path / "model",
        cfg,
        ModelConfig(dropout=0.0),
        TASK,
        0,
        on_epoch_end=lambda epoch, record: seen.append(epoch),
    )
    assert seen == [1, 2, 3, 4, 5]
    best = max(h["val_macro_f1"] for h in out["history"])
    assert best >= 0.9
    assert out["best_metric"]["value"] == best
    assert (tmp_path / "model" / "model.safetensors").is_file()
    assert (tmp_path / "model" / "tokenizer.json").is_file()
    saved = json.loads((tmp_path / "model" / "nlpops_checkpoint.json").read_text())
    assert saved["epoch"] == out["best_epoch"]


def test_early_stopping_stops_when_validation_stalls(tokenised: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    # A learning rate this small cannot move the metric: patience 1 stops after the second epoch.
    cfg = TrainConfig(
        epochs=6, learning_rate=1e-12, batch_size=16, early_stopping_patience=1, early_stopping_metric="accuracy"
    )
    out = train_model(tokenised, ID2LABEL, tiny_model_dir, tmp_path / "model", cfg, ModelConfig(), TASK, 0)
    assert out["stopped_early"] is True and out["epochs_run"] == 2 and out["best_epoch"] == 1


def test_a_curriculums_narrowed_epochs_use_no_patience(tokenised: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Epochs a task narrows (Task.epoch_training_rows) train on their rows only, and a stall there does not count
    towards early stopping: the same stalling run as above, which stops at epoch 2, goes on to epoch 3."""

    class FirstTwoOnHalf(type(TASK)):  # type: ignore[misc]
        def epoch_training_rows(self, rows: dict, epoch: int) -> list[int] | None:
            return list(range(0, len(rows["length"]), 2)) if epoch <= 2 else None

    task = FirstTwoOnHalf(TASK.params)
    cfg = TrainConfig(
        epochs=6, learning_rate=1e-12, batch_size=16, early_stopping_patience=1, early_stopping_metric="accuracy"
    )
    out = train_model(tokenised, ID2LABEL, tiny_model_dir, tmp_path / "model", cfg, ModelConfig(), task, 0)
    assert out["stopped_early"] is True and out["epochs_run"] == 3 and out["best_epoch"] == 1
    steps = [record["step"] for record in out["history"]]
    full = steps[2] - steps[1]
    assert steps[0] == steps[1] - steps[0] < full  # the narrowed epochs ran fewer batches


def test_max_steps_and_max_train_rows_bound_a_quick_run(tokenised: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    cfg = TrainConfig(epochs=3, batch_size=4, max_steps=5, max_train_rows=40)
    out = train_model(tokenised, ID2LABEL, tiny_model_dir, tmp_path / "model", cfg, ModelConfig(), TASK, 0)
    assert out["steps"] == 5 and out["train_rows"] == 40 and out["epochs_run"] == 1


def test_token_budget_training_schedules_over_the_batches_it_makes(
    tokenised: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    from pipelines.train import read_tokenised_split

    cfg = TrainConfig(epochs=2, batch_size=64, batch_tokens=120, early_stopping_patience=0)
    lengths = read_tokenised_split(tokenised / "train.parquet")["length"]
    expected = [len(training_batches(lengths, cfg, epoch)) for epoch in (1, 2)]
    assert 140 / 64 < expected[0] < 140 / 4, "the budget, not the row cap, sets the batch count"
    out = train_model(tokenised, ID2LABEL, tiny_model_dir, tmp_path / "model", cfg, ModelConfig(), TASK, 0)
    assert out["steps"] == sum(expected)
    assert out["history"][-1]["learning_rate"] == pytest.approx(0.0, abs=1e-12), "the decay ends on the last batch"


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_first_token_top_layer_trains_like_the_full_layer(tiny_model_dir: Path, attention: str) -> None:
    """The text-classification fast path (top layer at position 0 only) gives the full model's loss and gradients,
    leaves the state dict alone and evaluates with the original layer."""
    import torch

    full = TASK.build_model(tiny_model_dir, ID2LABEL, ModelConfig(dropout=0.0))
    fast = TASK.build_model(tiny_model_dir, ID2LABEL, ModelConfig(dropout=0.0))
    fast.load_state_dict(full.state_dict())  # the same new head too
    for model in (full, fast):
        model.set_attn_implementation(attention)
    assert TASK.training_fast_path(fast) is not None
    assert list(fast.state_dict()) == list(full.state_dict())
    padded = TASK.collate({"input_ids": [[2, 9, 12, 7, 3], [2, 8, 3], [2, 10, 11, 3]], "label": [0, 1, 1]}, 0)
    unpadded = TASK.collate({"input_ids": [[2, 9, 12, 3], [2, 8, 14, 3]], "label": [1, 0]}, 0)
    for batch in (padded, unpadded):
        losses = []
        for model in (full, fast):
            model.train()
            model.zero_grad()
            loss = TASK.training_loss(model, batch)
            loss.backward()
            losses.append(float(loss.detach()))
        assert losses[0] == pytest.approx(losses[1], abs=1e-6)
        for (name, a), b in zip(full.named_parameters(), fast.parameters(), strict=True):
            assert torch.allclose(a.grad, b.grad, atol=1e-6), name
    full.eval()
    fast.eval()
    with torch.no_grad():
        assert torch.equal(full(**padded).logits, fast(**padded).logits)
        assert fast.base_model(**{k: v for k, v in padded.items() if k != "labels"}).last_hidden_state.shape[1] == 5


def test_fast_path_is_skipped_where_every_position_counts(tiny_model_dir: Path) -> None:
    from transformers import AutoModelForTokenClassification

    from pipelines.tasks.text_classification.first_token import first_token_top_layer

    tokens = AutoModelForTokenClassification.from_pretrained(tiny_model_dir, num_labels=2)
    assert first_token_top_layer(tokens) is None


def test_experiments_keep_their_own_stamps_and_checkpoints(tmp_path: Path) -> None:
    """Another artifacts dir (another experiment) gets its own flow stamps and checkpoint folder, and loading a
    checkpoint for one experiment never deletes the other's."""
    from pipelines.paths import StagePaths
    from pipelines.train import CHECKPOINT_SUFFIX, load_training_state

    a = StagePaths(root=tmp_path / "artifacts", state=tmp_path / ".nlpops")
    b = StagePaths(root=tmp_path / "runs" / "sst2", state=tmp_path / ".nlpops")
    assert a.stamps_dir != b.stamps_dir and a.checkpoint_dir != b.checkpoint_dir
    assert a.experiment_key == StagePaths(root=tmp_path / "artifacts", state=tmp_path / "elsewhere").experiment_key
    for paths in (a, b):
        paths.checkpoint_dir.mkdir(parents=True)
        (paths.checkpoint_dir / f"{'0' * 24}{CHECKPOINT_SUFFIX}").write_bytes(b"a checkpoint")
    assert load_training_state(b.checkpoint_dir, "f" * 64) is None  # b's stale checkpoint goes, a's stays
    assert not any(b.checkpoint_dir.iterdir())
    assert (a.checkpoint_dir / f"{'0' * 24}{CHECKPOINT_SUFFIX}").is_file()
