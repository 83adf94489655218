from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.config import Params, apply_overrides, load_params
from pipelines.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def test_repo_params_file_is_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert params.train.learning_rate == pytest.approx(5e-5)
    assert params.register_.champion_alias == "champion"


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("train.lr=1", "unknown key 'train.lr' (allowed: learning_rate"),
        ("trian.epochs=1", "unknown key 'trian' (allowed: project, data, task, validate"),
        (
            "train.early_stopping_metric=f2",
            "train.early_stopping_metric='f2' is not allowed for task text_classification",
        ),
        ("gate.metric=f1", "gate.metric='f1' is not allowed for task text_classification (allowed: 'macro_f1'"),
        ("train.epochs=0", "train.epochs=0: Input should be greater than or equal to 1"),
        ("validate.max_null_share=2", "validate.max_null_share=2"),
        ("task.type=ner", "task.type='ner' is not allowed (allowed: 'text_classification'"),
        ("task.foo=1", "unknown key 'task.foo'"),
    ],
)
def test_invalid_values_name_the_key_and_what_is_allowed(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_params(REPO / "params.yaml", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_parse_yaml_scalars_like_dvc_exp_run() -> None:
    params = load_params(
        REPO / "params.yaml",
        ["train.learning_rate=3e-5", "train.max_steps=null", "clean.drop_duplicates=false", "data.labels=[a, b]"],
    )
    assert params.train.learning_rate == pytest.approx(3e-5)
    assert params.train.max_steps is None
    assert params.clean.drop_duplicates is False
    assert params.data.labels == ["a", "b"]


@pytest.mark.parametrize("bad", ["train.epochs", "epochs=3", "train.=3"])
def test_malformed_override_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="--set"):
        apply_overrides({}, [bad])


def test_missing_and_broken_params_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(broken)
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(ConfigError, match="required key 'data' is missing"):
        load_params(empty)


def test_pair_columns_must_differ() -> None:
    with pytest.raises(ValueError, match="must differ"):
        Params.model_validate({"data": {"path": "x.csv", "text_pair_column": "text"}})


def test_params_hash_changes_with_any_value() -> None:
    a = Params.model_validate({"data": {"path": "x.csv"}})
    b = Params.model_validate({"data": {"path": "x.csv"}, "train": {"seed": 1}})
    assert a.params_hash() != b.params_hash()
    assert a.section_hash("data") == b.section_hash("data")


def test_yaml_boolean_words_stay_strings_where_the_schema_wants_strings(tmp_path: Path) -> None:
    # Regression: `--set data.header=no` was read as False and refused with a message telling users to set "no".
    params = load_params(
        REPO / "params.yaml", ["data.header=no", "project.experiment=on", "data.encoding_fallback=null"]
    )
    assert params.data.header == "no" and params.project.experiment == "on" and params.data.encoding_fallback is None
    yaml_file = tmp_path / "params.yaml"
    yaml_file.write_text("data:\n  path: x.csv\n  header: no\n")
    assert load_params(yaml_file).data.header == "no"
    assert (
        load_params(REPO / "params.yaml", ["train.epochs=2", "clean.drop_duplicates=no"]).clean.drop_duplicates is False
    )


def test_named_experiment_overlays_params_then_set_applies(tmp_path: Path) -> None:
    (tmp_path / "params.yaml").write_text("data:\n  path: x.csv\ntrain:\n  epochs: 4\n  seed: 1\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "big.yaml").write_text("train:\n  epochs: 9\ntask:\n  type: token_classification\n")
    params = load_params(tmp_path / "params.yaml", ["train.seed=5"], "big")
    assert params.train.epochs == 9 and params.train.seed == 5 and params.task.type == "token_classification"
    assert params.data.path == "x.csv"
    with pytest.raises(ConfigError, match=r"experiment 'nope': no file .*nope\.yaml \(experiments: big\)"):
        load_params(tmp_path / "params.yaml", [], "nope")
    (tmp_path / "experiments" / "bad.yaml").write_text("train:\n  epochs: 0\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: train\.epochs=0"):
        load_params(tmp_path / "params.yaml", [], "bad")


def test_shipped_experiments_are_valid() -> None:
    from pipelines.config import available_experiments

    names = available_experiments(REPO / "params.yaml")
    assert {"sst2", "sst2-budget", "rte", "agnews", "conll"} <= set(names)
    for name in names:
        load_params(REPO / "params.yaml", [], name)


def test_raw_params_lay_the_experiment_over_params_yaml_keeping_left_out_keys_out(tmp_path: Path) -> None:
    """`nlpops params -e NAME --write` (how `dvc exp run` runs a named experiment) writes these: only keys written
    somewhere, so a key left to train.recipe stays left out."""
    from pipelines.config import raw_params

    (tmp_path / "params.yaml").write_text("data:\n  path: a.csv\ntrain:\n  epochs: 4\n  seed: 1\n")
    (tmp_path / "experiments").mkdir()
    (tmp_path / "experiments" / "big.yaml").write_text("project:\n  artifacts_dir: runs/big\ntrain:\n  epochs: 1\n")
    raw = raw_params(tmp_path / "params.yaml", ["train.seed=7"], "big")
    assert raw == {
        "data": {"path": "a.csv"},
        "train": {"epochs": 1, "seed": 7},
        "project": {"artifacts_dir": "runs/big"},
    }
    with pytest.raises(ConfigError, match="experiment 'nope'"):
        raw_params(tmp_path / "params.yaml", [], "nope")
