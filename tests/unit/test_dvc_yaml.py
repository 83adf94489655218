"""dvc.yaml and the runner's STAGES describe the same DAG: the DVC and Prefect front-ends cannot drift apart."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipelines.config import SECRET_SETTINGS, Params, load_params
from pipelines.paths import StagePaths
from pipelines.runner import STAGES

REPO = Path(__file__).resolve().parents[2]


def _module_file(module: str) -> str:
    return module.replace(".", "/") + ".py"


def _out_paths(entries: list) -> set[str]:
    return {next(iter(e)) if isinstance(e, dict) else e for e in entries}


def _dvc_params(section: str) -> list[str]:
    """How dvc.yaml lists a params section: whole, or key by key when it holds a secret-bearing setting."""
    if not any(s.startswith(f"{section}.") for s in SECRET_SETTINGS):
        return [section]
    fields = {name.rstrip("_"): f for name, f in Params.model_fields.items()}
    keys = fields[section].annotation.model_fields  # type: ignore[union-attr]
    return [f"{section}.{k}" for k in keys if f"{section}.{k}" not in SECRET_SETTINGS]


def test_dvc_stages_match_the_runner_stages() -> None:
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = load_params(REPO / "params.yaml")
    paths = StagePaths.from_params(params)
    assert list(dvc) == list(STAGES)
    for name, spec in STAGES.items():
        stage = dvc[name]
        assert stage["cmd"] == f"nlpops {name}"
        assert stage["params"] == [p for s in spec.params for p in _dvc_params(s)], name
        code = {"pipelines/runner.py", *(_module_file(m) for m in spec.code)}
        deps = set(stage["deps"])
        assert code <= deps, f"{name}: source files missing from deps: {code - deps}"
        data_deps = {str(p) for p in spec.deps(params, paths)} | (
            {"${data.path}"} if name in ("validate", "clean") else set()
        )
        expected = data_deps - {params.data.path} | ({"${data.path}"} if name in ("validate", "clean") else set())
        assert deps - code == expected, name
        declared = _out_paths(stage.get("outs", []) + stage.get("metrics", []) + stage.get("plots", []))
        runner_outs = {str(p) for p in spec.outs(params, paths)}
        assert runner_outs <= declared, f"{name}: {runner_outs - declared} not declared in dvc.yaml"
        for f in code:
            assert (REPO / f).is_file(), f


def test_dvc_lock_never_records_a_secret_bearing_setting() -> None:
    listed = {
        p for stage in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values() for p in stage["params"]
    }
    assert "register.lock_url" in SECRET_SETTINGS
    for secret in SECRET_SETTINGS:
        assert secret not in listed and secret.split(".")[0] not in listed, secret
