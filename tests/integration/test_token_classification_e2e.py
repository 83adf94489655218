"""Token classification through the whole Prefect flow, as a user runs it: a CoNLL file in, a registered ONNX
champion out (parity passed, lineage tags), `nlpops predict` printing entities, and bad CoNLL input refused in one
line with the registry untouched. A tiny random BERT and the tiny synthetic CoNLL file keep it short."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO, build_tiny_model, clean_env, copy_repo, git

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "e2e-ner"


def nlpops(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nlpops"), *args],
        cwd=project,
        env=clean_env(NLPOPS_ACTOR="e2e-ner-test"),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("ner") / "project", skip=("tests/", "demo/", "data/"))
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    shutil.copy(REPO / "tests" / "data" / "conll" / "tiny_train.conll", root / "incoming" / "ner.conll")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"]["registered_model"] = MODEL_NAME
    params["data"] = {"path": "incoming/ner.conll", "format": "conll"}
    params["task"] = {"type": "token_classification"}
    params["validate"].update(min_rows=50)
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(
        epochs=12,
        learning_rate=5e-3,
        batch_size=8,
        warmup_ratio=0.0,
        early_stopping_patience=0,
        early_stopping_metric=None,
    )
    params["gate"].update(metric=None, min_score=0.5, max_slice_drop=None)
    params["tokenise"]["max_length"] = 32
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "ner project")
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> subprocess.CompletedProcess[str]:
    return nlpops(project, "run")


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_conll_file_becomes_a_registered_onnx_champion(project: Path, first_run) -> None:
    assert first_run.returncode == 0, first_run.stderr[-3000:]
    assert "gate      PASSED" in first_run.stdout, first_run.stdout
    metrics = json.loads((project / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) >= {"f1", "precision", "recall", "accuracy"}
    assert metrics["f1"] >= 0.5, metrics
    parity = json.loads((project / "artifacts" / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["label_mismatches"] == 0
    serving = json.loads((project / "artifacts" / "export" / "serving.json").read_text())
    assert serving["task"] == "token_classification"
    client = _client(project)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.tags["task.type"] == "token_classification"
    assert float(champion.tags["metric.f1"]) == pytest.approx(metrics["f1"])
    assert json.loads(champion.tags["data.files"])[0]["path"] == "incoming/ner.conll"
    slices = json.loads((project / "artifacts" / "evaluate" / "slices.json").read_text())["slices"]
    assert {"type=PER", "type=LOC"} <= set(slices)


def test_predict_prints_entities_with_types_and_character_spans(project: Path, first_run) -> None:
    text = "Mr Smith visited Paris today ."
    done = nlpops(project, "predict", text, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert result["model"] == f"{MODEL_NAME} v1"
    for entity in result["entities"]:
        assert text[entity["start"] : entity["end"]] == entity["text"]
        assert entity["type"] in {"PER", "LOC", "ORG"} and 0.0 < entity["score"] <= 1.0
    found = {(e["type"], e["text"]) for e in result["entities"]}
    assert ("PER", "Smith") in found or ("LOC", "Paris") in found, result
    plain = nlpops(project, "predict", text)
    assert plain.returncode == 0 and plain.stdout.strip(), plain.stderr


def test_lineage_of_the_champion_verifies(project: Path, first_run) -> None:
    done = nlpops(project, "lineage", "champion", "--verify")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 changed, 0 missing" in done.stdout, done.stdout


def test_bad_conll_line_is_one_message_and_the_champion_stays(project: Path, first_run) -> None:
    before = _client(project).get_model_version_by_alias(MODEL_NAME, "champion").version
    bad = project / "incoming" / "bad.conll"
    lines = (project / "incoming" / "ner.conll").read_text().splitlines()
    lines[5] = lines[5] + " EXTRA COLUMNS"
    bad.write_text("\n".join(lines))
    done = nlpops(project, "run", "--set", "data.path=incoming/bad.conll")
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip()
    assert "\n" not in message and "bad.conll" in message and "line 6" in message, message
    assert "Traceback" not in done.stderr
    assert _client(project).get_model_version_by_alias(MODEL_NAME, "champion").version == before
