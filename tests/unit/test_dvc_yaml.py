"""The stage table is declared once (pipelines/dag.py): dvc.yaml is generated from it, the flow and the CLI read it.

A test per front-end, so none can drift: the committed dvc.yaml equals the generated one, the flow runs the table's
stages in its order, the CLI has a verb per stage, and every code dependency names a real file.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.config import SECRET_SETTINGS, load_params
from pipelines.dag import STAGE_ORDER, STAGES, dvc_params, render_dvc_yaml

REPO = Path(__file__).resolve().parents[2]


def test_committed_dvc_yaml_is_the_generated_one() -> None:
    params = load_params(REPO / "params.yaml")
    generated = render_dvc_yaml(params)
    committed = (REPO / "dvc.yaml").read_text()
    assert committed == generated, "dvc.yaml drifted from pipelines/dag.py: run `nlpops dag --write-dvc`"


def test_dvc_yaml_declares_every_stage_with_its_params_and_outputs() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(dvc) == list(STAGE_ORDER)
    for name, spec in STAGES.items():
        assert dvc[name]["cmd"] == f"nlpops {name}"
        assert dvc[name]["params"] == [key for section in spec.params for key in dvc_params(section)]
        for dep in dvc[name]["deps"]:
            if dep.startswith("pipelines"):
                assert (REPO / dep).exists(), f"{name}: code dep {dep} does not exist"


def test_flow_and_cli_follow_the_stage_table() -> None:
    from flows import retrain
    from pipelines.cli import app

    assert retrain.STAGE_ORDER == STAGE_ORDER
    assert set(retrain.STAGE_TASKS) == set(STAGES)
    verbs = {c.name for c in app.registered_commands}
    assert set(STAGES) <= verbs


def test_every_stage_code_module_is_importable() -> None:
    import importlib

    for spec in STAGES.values():
        for module in spec.code_modules(None):
            importlib.import_module(module)
        assert callable(spec.function())


def test_dvc_lock_never_records_a_secret_bearing_setting() -> None:
    listed = {
        p for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values() for p in stage["params"]
    }
    assert "register.lock_url" in SECRET_SETTINGS
    for secret in SECRET_SETTINGS:
        assert secret not in listed and secret.split(".")[0] not in listed, secret
