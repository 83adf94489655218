"""`nlpops lineage`: the chain from raw data to alias history, and --verify marking each link verified/changed/missing.

The registry here is built by hand (a run with the artifacts `train` logs, a logged model holding model.onnx, a
version with the lineage tags `register` writes), so the audit is tested without training anything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import git, use_mlflow_store

from pipelines.audit import build_lineage, render_html, render_text
from pipelines.config import stable_hash
from pipelines.hashing import file_digest, file_md5
from pipelines.registry import move_alias

NAME = "audited"


@pytest.fixture
def audited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A project dir (git + data file) and a registered version whose lineage tags describe it."""
    import mlflow

    project = tmp_path / "project"
    (project / "data" / "raw").mkdir(parents=True)
    data = project / "data" / "raw" / "reviews.csv"
    data.write_text("text,label\ngood film,positive\nbad film,negative\n")
    (project / "params.yaml").write_text(f"project:\n  registered_model: {NAME}\ndata:\n  path: data/raw/reviews.csv\n")
    git(project, "init", "-q")
    git(project, "add", "-A")
    git(project, "commit", "-qm", "data")
    commit = git(project, "rev-parse", "HEAD")

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    use_mlflow_store(uri, tmp_path, monkeypatch, actor="auditor")
    files = tmp_path / "files"
    (files / "data").mkdir(parents=True)
    report = files / "data" / "report.json"
    report.write_text(json.dumps({"success": True, "suite": "s", "files": [{"path": "x", "checks": [{}, {}]}]}))
    split_hashes = {"train.parquet": "a" * 64, "test.parquet": "b" * 64}
    (files / "data" / "summary.json").write_text(json.dumps({"sha256": split_hashes, "rows_out": 3}))
    (files / "data" / "tokenise_manifest.json").write_text(json.dumps({"cache_key": "k" * 64, "max_length": 32}))
    (files / "onnx").mkdir()
    onnx = files / "onnx" / "model.onnx"
    onnx.write_bytes(b"not really onnx, but bytes with a hash")
    with mlflow.start_run() as run:
        mlflow.log_artifacts(str(files / "data"), artifact_path="data")
        mlflow.log_metrics({"test_accuracy": 0.9, "test_macro_f1": 0.85})
        mlflow.set_tag("model.base", "tiny-bert")
    model = mlflow.initialize_logged_model(name="model", source_run_id=run.info.run_id)
    mlflow.MlflowClient().log_model_artifacts(model.model_id, str(files / "onnx"))
    mlflow.finalize_logged_model(model.model_id, "READY")
    tags = {
        "data.path": "data/raw/reviews.csv",
        "data.md5": file_md5(data),
        "data.dvc_tracked": "false",
        "data.validation_sha256": file_digest(report),
        "data.clean_sha256": stable_hash(split_hashes),
        "data.test_sha256": "b" * 64,
        "tokenise.cache_key": "k" * 64,
        "git.commit": commit,
        "git.dirty": "false",
        "train.seed": "42",
        "params.hash": "p" * 64,
        "version.torch": "2.13.0",
        "run_id": run.info.run_id,
        "metric.accuracy": "0.9",
        "metric.macro_f1": "0.85",
        "gate.passed": "true",
        "gate.decision": json.dumps({"passed": True, "failed": []}),
        "onnx.sha256": file_digest(onnx),
        "onnx.latency_p95_ms": "3.5",
    }
    mlflow.register_model(model.model_uri, NAME, tags=tags)
    move_alias(NAME, "champion", "1", "first champion", "promote")
    yield project
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)


def _status(report: dict) -> dict[str, str]:
    return {link["step"]: link["status"] for link in report["links"]}


def test_every_link_of_an_untouched_version_verifies(audited: Path) -> None:
    report = build_lineage(NAME, "champion", verify=True, root=audited)
    assert report["version"] == "1" and report["aliases"] == ["champion"]
    status = _status(report)
    assert status.pop("alias history") == "recorded"
    assert set(status.values()) == {"verified"}, status
    assert report["summary"] == {"verified": 8, "changed": 0, "missing": 0, "recorded": 1}
    links = {link["step"]: link for link in report["links"]}
    assert links["training run"]["facts"]["seed"] == "42"
    assert links["training run"]["facts"]["start"] and links["training run"]["facts"]["end"]
    assert links["alias history"]["facts"]["events"][0]["reason"] == "first champion"
    text = render_text(report)
    assert text.startswith(f"lineage of {NAME} v1 (champion)")
    assert "verify: 8 verified, 0 changed, 0 missing" in text
    page = render_html(report)
    assert page.startswith("<!doctype html>") and "8 verified, 0 changed, 0 missing" in page


def test_verify_reports_changed_data_tampered_onnx_and_a_missing_commit(audited: Path) -> None:
    from mlflow import MlflowClient

    (audited / "data" / "raw" / "reviews.csv").write_text("text,label\nsomething else,positive\n")
    client = MlflowClient()
    client.set_model_version_tag(NAME, "1", "onnx.sha256", "0" * 64)
    client.set_model_version_tag(NAME, "1", "git.commit", "f" * 40)
    status = _status(build_lineage(NAME, "1", verify=True, root=audited))
    assert status["raw data"] == "changed"
    assert status["onnx model"] == "changed"
    assert status["training run"] == "missing"
    shutil.rmtree(audited / "data")
    assert _status(build_lineage(NAME, "1", verify=True, root=audited))["raw data"] == "missing"
    # Without --verify nothing is re-hashed: every link is just recorded.
    assert set(_status(build_lineage(NAME, "1", root=audited)).values()) == {"recorded"}


def test_cli_lineage_json_html_and_exit_code(audited: Path, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    MlflowClient().set_model_version_tag(NAME, "1", "onnx.sha256", "0" * 64)
    page = tmp_path / "audit" / "report.html"
    env = {**os.environ, "MLFLOW_TRACKING_URI": os.environ["MLFLOW_TRACKING_URI"]}
    done = subprocess.run(
        [str(Path(sys.executable).parent / "nlpops"), "lineage", "champion", "--verify", "--json", "--html", str(page)],
        cwd=audited,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stderr  # a link changed
    report = json.loads(done.stdout)
    assert _status(report)["onnx model"] == "changed" and report["summary"]["changed"] == 1
    assert "changed" in page.read_text() and done.stderr == ""
    missing = subprocess.run(
        [str(Path(sys.executable).parent / "nlpops"), "lineage", "7"],
        cwd=audited,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 2 and "has no version '7'" in missing.stderr and "Traceback" not in missing.stderr


def test_cli_models_list_and_promote_without_a_reason(audited: Path) -> None:
    nlpops = str(Path(sys.executable).parent / "nlpops")
    listed = subprocess.run([nlpops, "models", "list"], cwd=audited, capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    assert "v1" in listed.stdout and "champion" in listed.stdout and "gate=pass" in listed.stdout
    assert "promoted" in listed.stdout and "by auditor" in listed.stdout
    refused = subprocess.run([nlpops, "promote", "1"], cwd=audited, capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: promote: --reason is required (it is recorded in the alias history)"
    ]
