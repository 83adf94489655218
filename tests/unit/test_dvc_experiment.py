"""DVC experiments: what a stage learns from DVC's environment, who may promote, where a queued run keeps its state,
and whether DVC sees a .dvc file at all (the cause of issue 17: `dvc exp run` deleted data/raw/reviews.csv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git

from pipelines.config import load_params
from pipelines.dvc_experiment import (
    anchor_state_dir,
    current_experiment,
    experiment_tags,
    promotion_policy,
)
from pipelines.dvc_visibility import dvc_sees, require_visible
from pipelines.errors import DataError

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# What DVC 3 sets for a stage (printed from a stage: workspace `dvc exp run`, and `dvc queue start`).
WORKSPACE_EXP = {"DVC_EXP_NAME": "ep2", "DVC_EXP_BASELINE_REV": "3573859", "DVC_ROOT": "/p", "DVC_STAGE": "train"}
PLAIN_REPRO = {"DVC_ROOT": "/p", "DVC_STAGE": "train"}


def test_only_an_experiment_is_an_experiment(tmp_path: Path) -> None:
    assert current_experiment({}) is None
    assert current_experiment(PLAIN_REPRO, Path("/p")) is None  # `dvc repro` is not an experiment
    exp = current_experiment(WORKSPACE_EXP, Path("/p"))
    assert exp is not None and exp.name == "ep2" and exp.baseline_rev == "3573859"
    assert not exp.in_temp_copy
    queued = current_experiment(WORKSPACE_EXP, Path("/p/.dvc/tmp/exps/tmpab12"))
    assert queued is not None and queued.in_temp_copy
    assert experiment_tags(WORKSPACE_EXP) == {"dvc.exp_name": "ep2", "dvc.exp_baseline_rev": "3573859"}
    assert experiment_tags(PLAIN_REPRO) == {}


def test_an_experiment_never_promotes_unless_the_params_say_so() -> None:
    exp = current_experiment(WORKSPACE_EXP, Path("/p"))
    assert promotion_policy("auto", None).allowed  # nlpops run / dvc repro: the gate decides
    held = promotion_policy("auto", exp)
    assert not held.allowed and "'ep2'" in held.reason and "register.promote=gate" in held.reason
    assert promotion_policy("gate", exp).allowed
    assert promotion_policy("gate", None).allowed
    for experiment in (None, exp):
        never = promotion_policy("never", experiment)
        assert not never.allowed and "nlpops models promote" in never.reason


def test_register_promote_is_a_checked_param() -> None:
    from pipelines.errors import ConfigError

    assert load_params(REPO / "params.yaml").register_.promote == "auto"
    assert load_params(REPO / "params.yaml", ["register.promote=gate"]).register_.promote == "gate"
    with pytest.raises(ConfigError, match=r"register\.promote='always' is not allowed"):
        load_params(REPO / "params.yaml", ["register.promote=always"])


def test_a_queued_experiment_keeps_the_projects_state_dir(tmp_path: Path) -> None:
    params = load_params(REPO / "params.yaml")
    assert params.project.state_dir == ".nlpops"
    project = tmp_path / "project"
    env = {**WORKSPACE_EXP, "DVC_ROOT": str(project)}
    queued = current_experiment(env, project / ".dvc" / "tmp" / "exps" / "tmpab12")
    anchored = anchor_state_dir(params, queued)
    assert anchored.project.state_dir == str((project / ".nlpops").resolve())
    assert params.project.state_dir == ".nlpops"  # a copy; the loaded params are untouched
    assert anchored.train == params.train
    in_workspace = current_experiment(env, project)
    assert anchor_state_dir(params, in_workspace).project.state_dir == ".nlpops"
    absolute = load_params(REPO / "params.yaml", [f"project.state_dir={tmp_path / 'state'}"])
    assert anchor_state_dir(absolute, queued).project.state_dir == str(tmp_path / "state")


def _dvc_project(root: Path, gitignore: str) -> Path:
    root.mkdir()
    git(root, "init", "-q")
    subprocess.run([str(BIN / "dvc"), "init", "-q"], cwd=root, check=True, capture_output=True)
    (root / ".gitignore").write_text(gitignore)
    raw = root / "data" / "raw"
    raw.mkdir(parents=True)
    (raw / "reviews.csv").write_text("text,label\nfine,positive\n")
    (raw / "reviews.csv.dvc").write_text(
        "outs:\n- md5: 5d41402abc4b2a76b9719d911017c592\n  size: 26\n  hash: md5\n  path: reviews.csv\n"
    )
    return raw / "reviews.csv.dvc"


def test_a_folder_ignored_as_a_whole_hides_its_dvc_files_from_dvc(tmp_path: Path) -> None:
    # The .gitignore this project had: git re-includes the .dvc file, DVC's walk skips data/raw/ altogether
    # (treeverse/dvc#10987; should a DVC release fix that, this assertion fails and can go).
    hidden = _dvc_project(tmp_path / "old", "/data/raw/*\n!/data/raw/*.dvc\n!/data/raw/.gitignore\n")
    assert not dvc_sees(hidden, tmp_path / "old")
    with pytest.raises(DataError, match=r"reviews.csv.dvc: DVC does not see this file.*delete.*reviews.csv"):
        require_visible(hidden, tmp_path / "old")


def test_this_projects_gitignore_lets_dvc_see_the_raw_data(tmp_path: Path) -> None:
    dvc_file = _dvc_project(tmp_path / "new", (REPO / ".gitignore").read_text())
    shutil.copy(REPO / "data" / "raw" / ".gitignore", dvc_file.parent / ".gitignore")
    assert dvc_sees(dvc_file, tmp_path / "new")
    require_visible(dvc_file.relative_to(tmp_path / "new"), tmp_path / "new")
    ignored = git(tmp_path / "new", "check-ignore", "data/raw/reviews.csv")
    assert ignored == "data/raw/reviews.csv"  # the data itself stays out of git
