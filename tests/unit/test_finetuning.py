"""Fine-tuning strategies (pipelines/finetuning.py) on a tiny random BERT: LLRD, head LR, frozen parameters,
gradual unfreezing, re-initialised top layers, the little-data recipe, and short training runs with each."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import tokenise_sentiment

from pipelines import finetuning
from pipelines.config import ModelConfig, TrainConfig, load_params
from pipelines.errors import ConfigError, ModelLoadError
from pipelines.tasks import get_task
from pipelines.train import apply_freezing, train_model

ID2LABEL = {0: "negative", 1: "positive"}
TASK = get_task("text_classification")


@pytest.fixture
def model(tiny_model_dir: Path) -> Any:
    return TASK.build_model(tiny_model_dir, ID2LABEL, ModelConfig(dropout=0.0))


def _group_of(optimizer: Any) -> dict[int, dict[str, Any]]:
    return {id(p): g for g in optimizer.param_groups for p in g["params"]}


def _tiny_config() -> Any:
    from transformers import BertConfig

    return BertConfig(
        vocab_size=60,
        hidden_size=16,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
        num_labels=3,
    )


# ------------------------------------------------------------------------------------------- parts and groups


def test_layer_map_puts_embeddings_layers_pooler_and_head_at_their_depths(model: Any) -> None:
    lmap = finetuning.layer_map(model)
    assert lmap.num_layers == 2
    assert lmap.depth["bert.embeddings.word_embeddings.weight"] == 0
    assert lmap.depth["bert.embeddings.LayerNorm.weight"] == 0
    assert lmap.depth["bert.encoder.layer.0.attention.self.query.weight"] == 1
    assert lmap.depth["bert.encoder.layer.1.output.dense.bias"] == 2
    assert lmap.depth["bert.pooler.dense.weight"] == 3
    assert lmap.head == {"classifier.weight", "classifier.bias"}
    assert set(lmap.depth) | lmap.head == {n for n, _ in model.named_parameters()}


def test_layer_wise_decay_and_head_learning_rate_per_group(model: Any) -> None:
    cfg = TrainConfig(learning_rate=1e-3, layer_lr_decay=0.5, head_learning_rate=1e-2, weight_decay=0.01)
    optimizer = finetuning.build_optimizer(model, cfg)
    lrs = finetuning.describe_groups(optimizer)
    assert lrs == pytest.approx(
        {"head": 1e-2, "body_top": 1e-3, "layer.1": 5e-4, "layer.0": 2.5e-4, "embeddings": 1.25e-4}
    )
    assert list(lrs) == ["head", "body_top", "layer.1", "layer.0", "embeddings"]  # top first
    group = _group_of(optimizer)
    bert = model.bert
    assert group[id(model.classifier.weight)]["lr"] == pytest.approx(1e-2)
    assert all(group[id(p)]["lr"] == pytest.approx(5e-4) for p in bert.encoder.layer[1].parameters())
    assert all(group[id(p)]["lr"] == pytest.approx(2.5e-4) for p in bert.encoder.layer[0].parameters())
    assert all(group[id(p)]["lr"] == pytest.approx(1.25e-4) for p in bert.embeddings.parameters())
    # No weight decay on biases and LayerNorm weights; decay on the rest.
    assert group[id(bert.encoder.layer[0].output.LayerNorm.weight)]["weight_decay"] == 0.0
    assert group[id(bert.encoder.layer[0].output.dense.bias)]["weight_decay"] == 0.0
    assert group[id(bert.encoder.layer[0].output.dense.weight)]["weight_decay"] == 0.01
    assert group[id(bert.embeddings.word_embeddings.weight)]["weight_decay"] == 0.01
    # Every parameter is in exactly one group.
    params = [p for g in optimizer.param_groups for p in g["params"]]
    assert len(params) == len({id(p) for p in params}) == len(list(model.parameters()))


def test_defaults_give_one_learning_rate_like_before(model: Any) -> None:
    optimizer = finetuning.build_optimizer(model, TrainConfig(learning_rate=3e-5))
    assert {g["lr"] for g in optimizer.param_groups} == {3e-5}
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.0, 0.01}


def test_frozen_parameters_get_no_group_and_no_optimiser_state(model: Any) -> None:
    apply_freezing(model, ModelConfig(freeze_embeddings=True, freeze_layers=1))
    optimizer = finetuning.build_optimizer(model, TrainConfig(layer_lr_decay=0.8))
    grouped = {id(p) for g in optimizer.param_groups for p in g["params"]}
    frozen = [*model.bert.embeddings.parameters(), *model.bert.encoder.layer[0].parameters()]
    assert not grouped & {id(p) for p in frozen}
    assert {g["name"].split(".no_decay")[0] for g in optimizer.param_groups} == {"head", "body_top", "layer.1"}
    batch = {"input_ids": torch.tensor([[2, 7, 9, 3]]), "labels": torch.tensor([1])}
    model(**batch).loss.backward()
    optimizer.step()
    assert {id(p) for p in optimizer.state} == grouped


def test_every_parameter_frozen_is_a_clear_error(model: Any) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
    with pytest.raises(ModelLoadError, match="every parameter is frozen"):
        finetuning.build_optimizer(model, TrainConfig())


def test_llrd_on_a_model_whose_layers_cannot_be_found_is_a_clear_error(model: Any) -> None:
    model.config.num_hidden_layers = 7  # no ModuleList of 7 blocks
    finetuning.build_optimizer(model, TrainConfig())  # no decay asked: fine
    with pytest.raises(ModelLoadError, match=r"train\.layer_lr_decay=0\.9: cannot find the encoder layers"):
        finetuning.build_optimizer(model, TrainConfig(layer_lr_decay=0.9))
    with pytest.raises(ModelLoadError, match=r"train\.gradual_unfreezing: cannot find"):
        finetuning.GradualUnfreezer(model)


@pytest.mark.parametrize("head_class", ["BertForTokenClassification", "BertForQuestionAnswering"])
def test_token_classification_and_qa_heads_are_found_generically(head_class: str) -> None:
    import transformers

    torch.manual_seed(0)
    model = getattr(transformers, head_class)(_tiny_config())
    lmap = finetuning.layer_map(model)
    head_module = "classifier" if head_class == "BertForTokenClassification" else "qa_outputs"
    assert lmap.num_layers == 3 and lmap.head == {f"{head_module}.weight", f"{head_module}.bias"}
    lrs = finetuning.describe_groups(finetuning.build_optimizer(model, TrainConfig(layer_lr_decay=0.5)))
    # No pooler in these heads, so no body_top group; the top layer trains at lr*d.
    assert lrs == pytest.approx(
        {"head": 5e-5, "layer.2": 2.5e-5, "layer.1": 1.25e-5, "layer.0": 6.25e-6, "embeddings": 3.125e-6}
    )


def test_encoder_decoder_model_decays_over_its_encoder() -> None:
    from transformers import BertConfig, EncoderDecoderConfig, EncoderDecoderModel

    encoder = _tiny_config()
    decoder = BertConfig(
        **{**encoder.to_dict(), "num_hidden_layers": 2, "is_decoder": True, "add_cross_attention": True}
    )
    model = EncoderDecoderModel(config=EncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder))
    lmap = finetuning.layer_map(model)
    assert lmap.num_layers == 3
    assert lmap.depth["encoder.encoder.layer.2.output.dense.weight"] == 3
    assert lmap.depth["encoder.embeddings.word_embeddings.weight"] == 0
    assert "decoder.bert.encoder.layer.0.crossattention.self.query.weight" in lmap.head
    unfreezer = finetuning.GradualUnfreezer(model)
    unfreezer.apply(1)
    assert model.decoder.bert.encoder.layer[0].crossattention.self.query.weight.requires_grad
    assert not model.encoder.encoder.layer[1].output.dense.weight.requires_grad


# ------------------------------------------------------------------------------------------- fused AdamW


def test_fused_adamw_matches_the_default_implementation(model: Any) -> None:
    assert finetuning._fused_ok()  # torch >= 2.4 has fused AdamW on CPU; the pipeline relies on the check
    cfg = TrainConfig(learning_rate=1e-3, layer_lr_decay=0.7, head_learning_rate=5e-3)
    other = copy.deepcopy(model)
    fused = finetuning.build_optimizer(model, cfg)
    assert all(g["fused"] for g in fused.param_groups)
    plain = torch.optim.AdamW(finetuning.parameter_groups(other, cfg), lr=cfg.learning_rate)
    generator = torch.Generator().manual_seed(0)
    for _ in range(5):
        ids = torch.randint(5, 40, (4, 9), generator=generator)
        labels = torch.randint(0, 2, (4,), generator=generator)
        for m, opt in ((model, fused), (other, plain)):
            m(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name


# ------------------------------------------------------------------------------------------- sparse embedding rows


def _step(model: Any, optimizer: Any, ids: Any, labels: Any, clip: float | None = None) -> None:
    model(input_ids=ids, labels=labels).loss.backward()
    if clip is not None:
        finetuning.clip_gradients(model.parameters(), clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def test_sparse_embedding_updates_match_clipped_adamw_and_leave_unused_rows_alone() -> None:
    """With every row in every batch the row-sparse update is AdamW exactly (clipping included)."""
    from transformers import BertForSequenceClassification

    cfg = _tiny_config()
    cfg.vocab_size, cfg.pad_token_id = 12, 11
    torch.manual_seed(0)
    model = BertForSequenceClassification(cfg).eval()
    model.bert.embeddings.word_embeddings.padding_idx = None
    other = copy.deepcopy(model)
    train_cfg = TrainConfig(learning_rate=1e-2, weight_decay=0.1, sparse_embedding_updates=True)
    sparse = finetuning.build_optimizer(model, train_cfg)
    assert model.get_input_embeddings().sparse
    dense = torch.optim.AdamW(finetuning.parameter_groups(other, train_cfg), lr=1e-2)
    everything = torch.arange(12).repeat(2, 1)
    labels = torch.tensor([0, 2])
    for _ in range(3):
        for m, opt in ((model, sparse), (other, dense)):
            m(input_ids=everything, labels=labels).loss.backward()
            if m is model:
                total = finetuning.clip_gradients(m.parameters(), 0.05)
            else:
                expected = float(torch.nn.utils.clip_grad_norm_(m.parameters(), 0.05))
            opt.step()
            opt.zero_grad(set_to_none=True)
        assert total == pytest.approx(expected, rel=1e-5)  # same norm, so clipping bites the same
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    # a batch that uses rows 0-3 only: the other rows keep their weights and their moments
    table = model.get_input_embeddings().weight
    weights, moments = table.detach().clone(), sparse.state[table]["exp_avg"].clone()
    _step(model, sparse, torch.tensor([[0, 1, 2, 3]]), torch.tensor([1]))
    assert torch.equal(table[4:], weights[4:]) and torch.equal(sparse.state[table]["exp_avg"][4:], moments[4:])
    assert not torch.equal(table[:4], weights[:4])
    assert float(sparse.state[table]["step"]) == 4.0
    # a checkpoint round-trip keeps the row state
    fresh = finetuning.build_optimizer(copy.deepcopy(model), train_cfg)
    fresh.load_state_dict(sparse.state_dict())
    assert float(next(s["step"] for s in fresh.state.values() if s["exp_avg"].shape[0] == 12)) == 4.0


def test_sparse_embedding_updates_stay_dense_where_they_cannot_apply(model: Any, tiny_model_dir: Path) -> None:
    finetuning.build_optimizer(model, TrainConfig())  # off by default
    assert not model.get_input_embeddings().sparse
    apply_freezing(model, ModelConfig(freeze_embeddings=True))
    assert finetuning.sparse_embeddings_apply(model) == "the input embedding is frozen"
    from transformers import BertConfig, BertForMaskedLM

    tied = BertForMaskedLM(BertConfig(**{**_tiny_config().to_dict(), "tie_word_embeddings": True}))
    assert finetuning.sparse_embeddings_apply(tied) == "the input embedding's weight is tied to another weight"
    finetuning.build_optimizer(tied, TrainConfig(sparse_embedding_updates=True))
    assert not tied.get_input_embeddings().sparse


# ------------------------------------------------------------------------------------------- gradual unfreezing


def _trainable(model: Any) -> set[str]:
    parts = {"embeddings": model.bert.embeddings, "layer0": model.bert.encoder.layer[0]}
    parts |= {"layer1": model.bert.encoder.layer[1], "pooler": model.bert.pooler, "head": model.classifier}
    return {name for name, m in parts.items() if all(p.requires_grad for p in m.parameters())}


def test_gradual_unfreezing_top_down_one_layer_per_epoch(model: Any) -> None:
    unfreezer = finetuning.GradualUnfreezer(model)
    expected = {
        1: {"head", "pooler", "layer1"},
        2: {"head", "pooler", "layer1", "layer0"},
        3: {"head", "pooler", "layer1", "layer0", "embeddings"},
        9: {"head", "pooler", "layer1", "layer0", "embeddings"},
    }
    for epoch in (3, 1, 9, 2):  # any order: the trainable set depends on the epoch alone (resume)
        info = unfreezer.apply(epoch)
        assert _trainable(model) == expected[epoch], epoch
        assert not any(p.requires_grad for p in model.parameters()) or info["trainable_params"] > 0
        assert info["unfrozen_layers"] == min(epoch, 2) and info["embeddings_unfrozen"] == int(epoch >= 3)
    with pytest.raises(ValueError):
        unfreezer.apply(0)


def test_gradual_unfreezing_never_unfreezes_what_params_freeze(model: Any) -> None:
    apply_freezing(model, ModelConfig(freeze_embeddings=True))
    unfreezer = finetuning.GradualUnfreezer(model)
    unfreezer.apply(10)
    assert _trainable(model) == {"head", "pooler", "layer1", "layer0"}
    assert not any(p.requires_grad for p in model.bert.embeddings.parameters())


def test_layers_waiting_to_unfreeze_get_no_update_and_no_state(model: Any) -> None:
    optimizer = finetuning.build_optimizer(model, TrainConfig(learning_rate=1e-2, weight_decay=0.1))
    finetuning.GradualUnfreezer(model).apply(1)
    before = model.bert.encoder.layer[0].output.dense.weight.detach().clone()
    model(input_ids=torch.tensor([[2, 7, 9, 3]]), labels=torch.tensor([1])).loss.backward()
    optimizer.step()
    assert torch.equal(model.bert.encoder.layer[0].output.dense.weight, before)  # not even weight decay
    assert id(model.bert.encoder.layer[0].output.dense.weight) not in {id(p) for p in optimizer.state}
    assert id(model.bert.encoder.layer[1].output.dense.weight) in {id(p) for p in optimizer.state}


# ------------------------------------------------------------------------------------------- re-initialising


def test_reinit_top_layers_resets_the_pooler_and_top_layers_only(model: Any) -> None:
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    torch.manual_seed(3)
    reset = finetuning.reinit_top_layers(model, 1)
    assert reset == ["bert.encoder.layer.1", "pooler"]
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert "bert.encoder.layer.1.attention.self.query.weight" in changed
    assert "bert.pooler.dense.weight" in changed
    assert not any(n.startswith(("bert.encoder.layer.0.", "bert.embeddings.", "classifier.")) for n in changed)
    assert torch.all(model.bert.encoder.layer[1].output.dense.bias == 0)
    assert torch.all(model.bert.encoder.layer[1].output.LayerNorm.weight == 1)
    std = float(model.bert.encoder.layer[1].intermediate.dense.weight.detach().std())
    assert std == pytest.approx(model.config.initializer_range, rel=0.3)
    assert finetuning.reinit_top_layers(model, 0) == []


def test_reinit_errors_name_the_setting(model: Any) -> None:
    with pytest.raises(ModelLoadError, match=r"model\.reinit_top_layers=3 but the model has 2 layers"):
        finetuning.reinit_top_layers(model, 3)
    apply_freezing(model, ModelConfig(freeze_layers=2))
    with pytest.raises(ModelLoadError, match=r"would re-initialise layers that model\.freeze_layers"):
        finetuning.reinit_top_layers(model, 1)


# ------------------------------------------------------------------------------------------- recipes


def test_auto_recipe_picks_little_data_below_the_threshold_and_says_why() -> None:
    choice = finetuning.resolve_recipe(TrainConfig(recipe="auto"), ModelConfig(), train_rows=500)
    assert choice.recipe == "little_data"
    assert choice.reason == "train.recipe=auto: 500 training rows < train.little_data_rows=1000"
    for key, value in finetuning.LITTLE_DATA["train"].items():
        assert getattr(choice.train, key) == value
        assert choice.applied[f"train.{key}"] == value

    big = finetuning.resolve_recipe(TrainConfig(recipe="auto", little_data_rows=200), ModelConfig(), train_rows=500)
    assert big.recipe == "default" and big.applied == {}
    assert big.reason == "train.recipe=auto: 500 training rows >= train.little_data_rows=200"
    assert big.train == TrainConfig(recipe="auto", little_data_rows=200)


def test_recipe_default_changes_nothing_and_explicit_little_data_applies_anywhere() -> None:
    cfg = TrainConfig(recipe="default")
    assert finetuning.resolve_recipe(cfg, ModelConfig(), 10).train is cfg
    choice = finetuning.resolve_recipe(TrainConfig(recipe="little_data"), ModelConfig(), 50_000)
    assert choice.recipe == "little_data" and choice.reason.startswith("train.recipe=little_data set in params")
    assert choice.train.layer_lr_decay == finetuning.LITTLE_DATA["train"]["layer_lr_decay"]


def test_values_the_user_set_win_over_the_recipe() -> None:
    train = TrainConfig(recipe="little_data", learning_rate=1e-4, epochs=2)
    choice = finetuning.resolve_recipe(train, ModelConfig(reinit_top_layers=1), train_rows=100)
    assert choice.train.learning_rate == 1e-4 and choice.train.epochs == 2
    assert choice.model.reinit_top_layers == 1
    assert "train.learning_rate" not in choice.applied and "train.epochs" not in choice.applied
    assert choice.kept == {"train.learning_rate": 1e-4, "train.epochs": 2, "model.reinit_top_layers": 1}
    assert "kept from params: train.epochs=2, train.learning_rate=0.0001" in choice.reason
    assert choice.train.layer_lr_decay == finetuning.LITTLE_DATA["train"]["layer_lr_decay"]
    # Resolving again changes nothing more.
    again = finetuning.resolve_recipe(choice.train, choice.model, train_rows=100)
    assert again.train == choice.train and again.applied == {}


def test_keys_written_in_params_yaml_or_set_count_as_user_set(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  path: x.csv\ntrain:\n  recipe: auto\n  epochs: 4\n")
    params = load_params(path, ["train.learning_rate=2e-5"])
    choice = finetuning.resolve_recipe(params.train, params.model, train_rows=300)
    assert choice.recipe == "little_data"
    assert (choice.train.epochs, choice.train.learning_rate) == (4, 2e-5)
    assert choice.train.warmup_ratio == finetuning.LITTLE_DATA["train"]["warmup_ratio"]


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.layer_lr_decay=0", "train.layer_lr_decay=0"),
        ("train.layer_lr_decay=1.5", "train.layer_lr_decay=1.5"),
        ("train.recipe=tiny", "train.recipe='tiny' is not allowed"),
        ("train.head_learning_rate=-1", "train.head_learning_rate=-1"),
        ("model.reinit_top_layers=-1", "model.reinit_top_layers=-1"),
    ],
)
def test_bad_strategy_settings_are_one_line_errors(tmp_path: Path, override: str, message: str) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("data:\n  path: x.csv\n")
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")) as info:
        load_params(path, [override])
    assert "\n" not in str(info.value)


# ------------------------------------------------------------------------------------------- training runs


@pytest.fixture
def tokenised(tmp_path: Path, tiny_model_dir: Path) -> Path:
    return tokenise_sentiment(tmp_path, tiny_model_dir, 200, seed=1, validation=slice(140, 170), test=slice(170, None))


BASE = {"epochs": 5, "learning_rate": 5e-3, "batch_size": 8, "warmup_ratio": 0.0, "early_stopping_patience": 0}


@pytest.mark.parametrize(
    ("train_kw", "model_kw"),
    [
        ({"layer_lr_decay": 0.8, "head_learning_rate": 1e-3}, {}),
        ({"gradual_unfreezing": True}, {}),
        ({"learning_rate": 2e-3}, {"reinit_top_layers": 1}),
        ({"recipe": "auto"}, {}),  # 140 rows: little_data, with the learning rate and epochs set here
        ({"sparse_embedding_updates": True}, {}),
    ],
    ids=["llrd+head_lr", "gradual_unfreezing", "reinit", "recipe_auto", "sparse_embedding_rows"],
)
def test_training_with_each_strategy_still_learns(
    tokenised: Path, tiny_model_dir: Path, tmp_path: Path, train_kw: dict, model_kw: dict
) -> None:
    cfg = TrainConfig(**{**BASE, **train_kw})
    out = train_model(
        tokenised, ID2LABEL, tiny_model_dir, tmp_path / "model", cfg, ModelConfig(dropout=0.0, **model_kw), TASK, 0
    )
    assert max(h["val_macro_f1"] for h in out["history"]) >= 0.9
    if train_kw.get("recipe") == "auto":
        assert out["recipe"] == "little_data"
        assert out["recipe_reason"].startswith("train.recipe=auto: 140 training rows < train.little_data_rows=1000")
        assert out["recipe_applied"]["train.layer_lr_decay"] == finetuning.LITTLE_DATA["train"]["layer_lr_decay"]
        assert "train.learning_rate" not in out["recipe_applied"]
        assert out["learning_rates"]["head"] == finetuning.LITTLE_DATA["train"]["head_learning_rate"]
    else:
        assert out["recipe"] == "default" and out["recipe_applied"] == {}
    if "layer_lr_decay" in train_kw:
        assert out["learning_rates"]["layer.0"] == pytest.approx(5e-3 * 0.8**2)
        assert out["learning_rates"]["head"] == pytest.approx(1e-3)
        # history's learning_rate is the scheduled base rate, not the head's
        assert out["history"][0]["learning_rate"] == pytest.approx(5e-3 * 4 / 5)
    if model_kw:
        assert out["reinitialised"] == ["bert.encoder.layer.1", "pooler"]


def test_gradual_unfreezing_resumes_to_the_same_result(tokenised: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Interrupted after epoch 1 and resumed: same history as an uninterrupted run (trainable set per epoch)."""
    cfg = TrainConfig(**{**BASE, "epochs": 3}, gradual_unfreezing=True, layer_lr_decay=0.8, checkpoint_every_steps=0)
    model_cfg = ModelConfig(dropout=0.1)
    whole = train_model(tokenised, ID2LABEL, tiny_model_dir, tmp_path / "a", cfg, model_cfg, TASK, 0)

    class Interrupt(Exception):
        pass

    def stop_after_epoch_2(epoch: int, record: dict[str, float]) -> None:
        if epoch == 2:
            raise Interrupt

    ckpt = tmp_path / "ckpt"
    with pytest.raises(Interrupt):
        train_model(
            tokenised, ID2LABEL, tiny_model_dir, tmp_path / "b", cfg, model_cfg, TASK, 0, stop_after_epoch_2, ckpt
        )
    resumed = train_model(tokenised, ID2LABEL, tiny_model_dir, tmp_path / "b", cfg, model_cfg, TASK, 0, None, ckpt)
    assert resumed["resumed_from"] == {"epoch": 2, "batch": 0, "step": whole["history"][0]["step"]}
    for a, b in zip(whole["history"], resumed["history"], strict=True):
        assert a["val_loss"] == pytest.approx(b["val_loss"], abs=1e-6)
        assert a["train_loss"] == pytest.approx(b["train_loss"], abs=1e-6)
