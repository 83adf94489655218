"""The whole product, as a user runs it: `nlpops run` in a git + DVC project, then `dvc repro`, a cached rerun,
a challenger that fails the gate, and bad data. A tiny random BERT keeps it to a couple of minutes on 2 cores."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, clean_env, copy_repo, git, make_sentiment_rows

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "e2e-sentiment"


def _env() -> dict[str, str]:
    return clean_env(NLPOPS_ACTOR="e2e-test")


def nlpops(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nlpops"), *args],
        cwd=project,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this repository's tracked files, with a tiny model and tiny data, under git and DVC."""
    root = copy_repo(tmp_path_factory.mktemp("e2e") / "project", skip=("tests/", "demo/", "data/"))
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    with (root / "incoming" / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["review", "sentiment"])
        writer.writerows(make_sentiment_rows(160, seed=3))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"]["registered_model"] = MODEL_NAME
    params["data"].update(path="data/raw/reviews.csv", text_column="review", label_column="sentiment")
    params["validate"].update(min_rows=50, min_rows_per_class=5)
    params["model"]["path"] = str(model_dir)
    params["model"]["dropout"] = 0.0
    params["train"].update(epochs=4, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0)
    params["gate"]["min_score"] = 0.5
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    done = nlpops(root, "data", "add", "incoming/reviews.csv")
    assert done.returncode == 0, done.stderr
    git(root, "add", "-A")
    git(root, "commit", "-qm", "e2e project")
    return root


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(project: Path) -> list:
    return sorted(_client(project).search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda v: int(v.version))


@pytest.fixture(scope="module")
def first_run(project: Path) -> subprocess.CompletedProcess[str]:
    return nlpops(project, "run")


def test_first_run_registers_an_onnx_champion_with_lineage(project: Path, first_run) -> None:
    assert first_run.returncode == 0, first_run.stderr
    assert "Traceback" not in first_run.stderr and "Traceback" not in first_run.stdout
    assert f"{MODEL_NAME} v1" in first_run.stdout
    client = _client(project)
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
    challenger = client.get_model_version_by_alias(MODEL_NAME, "challenger")
    assert str(champion.version) == str(challenger.version) == "1"
    tags = champion.tags
    for key in (
        "data.md5",
        "data.clean_sha256",
        "data.test_sha256",
        "tokenise.cache_key",
        "git.commit",
        "params.hash",
        "run_id",
        "version.torch",
        "version.transformers",
        "onnx.sha256",
        "gate.passed",
    ):
        assert tags.get(key), f"lineage tag {key} missing"
    assert tags["data.dvc_tracked"] == "true"
    dvc_md5 = yaml.safe_load((project / "data/raw/reviews.csv.dvc").read_text())["outs"][0]["md5"]
    assert tags["data.md5"] == dvc_md5
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=project, capture_output=True, text=True).stdout.strip()
    assert tags["git.commit"] == head
    assert tags["run_id"] == champion.run_id

    import mlflow

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    local = Path(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/1", dst_path=str(project / "dl")))
    onnx_files = list(local.rglob("model.onnx"))
    assert onnx_files and onnx_files[0].stat().st_size > 1000
    parity = json.loads((project / "artifacts/export/parity.json").read_text())
    assert parity["passed"] is True and parity["max_abs_diff"] <= 1e-4
    assert parity["onnx_sha256"] == tags["onnx.sha256"]
    run = client.get_run(champion.run_id)
    assert "val_macro_f1" in run.data.metrics and "test_accuracy" in run.data.metrics
    history = client.get_metric_history(champion.run_id, "val_macro_f1")
    assert len(history) == 4  # one point per epoch


def test_first_run_writes_the_html_report_and_the_champion_card(project: Path, first_run) -> None:
    assert "  report    artifacts/report/index.html" in first_run.stdout
    assert "train     epoch 4/4" in first_run.stdout and "evaluate  done in" in first_run.stdout  # plain progress
    page = (project / "artifacts/report/index.html").read_text()
    assert "Complete run" in page and f"{MODEL_NAME} v1" in page
    assert page.count('<svg class="plot"') >= 5 and 'data-points="0"' not in page.split('id="slices"')[0]
    assert (project / "artifacts/report/learning_curves.svg").is_file()
    card = nlpops(project, "models", "card", "champion")
    assert card.returncode == 0, card.stderr
    assert card.stdout.startswith("---\n") and f"# {MODEL_NAME} v1" in card.stdout and "## Lineage" in card.stdout
    assert card.stdout.strip() == (project / "artifacts/report/model_card.md").read_text().strip()


# Unambiguous sentences in the training data's vocabulary (conftest POSITIVE / NEGATIVE / FILLER: the tiny model's
# tokenizer knows only those words), none of them a training row.
UNAMBIGUOUS = {
    "the film was really superb and brilliant": "positive",
    "a lovely , clever and enjoyable story": "positive",
    "great acting and a warm , fun plot": "positive",
    "the film was really awful and terrible": "negative",
    "a dull , boring and tedious story": "negative",
    "bad acting and a weak , messy plot": "negative",
}


def test_predict_uses_the_champion_and_gets_clear_cases_right(project: Path, first_run) -> None:
    done = nlpops(project, "predict", "the film was really superb and brilliant", "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["label"] == "positive" and 0.5 < out["score"] <= 1.0
    assert out["model"] == f"{MODEL_NAME} v1"

    (project / "clear.txt").write_text("\n".join(UNAMBIGUOUS) + "\n", encoding="utf-8")
    done = nlpops(project, "predict", "--file", "clear.txt", "--json")
    assert done.returncode == 0, done.stderr
    predicted = {row["text"]: row["label"] for row in map(json.loads, done.stdout.strip().splitlines())}
    wrong = {text: label for text, label in predicted.items() if UNAMBIGUOUS[text] != label}
    assert set(predicted) == set(UNAMBIGUOUS) and not wrong, f"wrong labels: {wrong}"


def test_dvc_repro_after_a_run_does_nothing(project: Path, first_run) -> None:
    done = subprocess.run(
        [str(BIN / "dvc"), "repro"], cwd=project, env=_env(), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    for stage in ("validate", "clean", "tokenise", "train", "evaluate", "export", "register", "report"):
        assert f"Stage '{stage}' didn't change, skipping" in done.stdout
    assert "Running stage" not in done.stdout


@pytest.mark.slow  # a second experiment trains a second model in the same project (28 s): make test-all
def test_another_experiment_leaves_the_first_cached_and_every_command_reaches_both(project: Path, first_run) -> None:
    """Two experiments in one project (a named experiment with its own artifacts dir and model): running the
    second evicts nothing of the first, and the model-facing verbs reach either model by -e or --model."""
    before = len(_versions(project))
    (project / "experiments" / "other.yaml").write_text(
        "project:\n  artifacts_dir: runs/other\n  registered_model: e2e-other\n"
        "train:\n  seed: 3\ngate:\n  min_score: 0.0\n"
    )
    other = nlpops(project, "run", "-e", "other")
    assert other.returncode == 0, other.stderr
    assert "registry  e2e-other v1" in other.stdout, other.stdout
    server_log = project / ".nlpops" / "prefect" / "server.log"
    server_started = server_log.stat().st_mtime_ns
    done = nlpops(project, "run")
    assert done.returncode == 0, done.stderr
    assert "cached stages: validate, clean, tokenise, train, evaluate, export, register, report" in done.stdout
    # nothing to run: answered from the stage stamps without starting Prefect, and dvc.lock left as it is
    assert server_log.stat().st_mtime_ns == server_started
    assert "dvc.lock already up to date" in done.stdout, done.stdout
    assert len(_versions(project)) == before
    listed = nlpops(project, "models", "list", "--all")
    assert listed.returncode == 0, listed.stderr
    assert MODEL_NAME in listed.stdout and "e2e-other" in listed.stdout and "champion v1" in listed.stdout
    by_model = nlpops(project, "lineage", "champion", "--model", "e2e-other", "--verify")
    assert by_model.returncode == 0 and "e2e-other v1" in by_model.stdout, by_model.stdout + by_model.stderr
    by_experiment = nlpops(project, "models", "list", "-e", "other", "--json")
    assert json.loads(by_experiment.stdout)[0]["version"] == "1"


def test_failing_gate_registers_a_challenger_and_keeps_the_champion(project: Path, first_run) -> None:
    client = _client(project)
    champion_before = client.get_model_version_by_alias(MODEL_NAME, "champion").version
    done = nlpops(project, "run", "--set", "train.seed=7", "--set", "gate.min_improvement=0.9")
    assert done.returncode == 0, done.stderr
    assert "gate      FAILED" in done.stdout
    newest = _versions(project)[-1]
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion_before
    assert client.get_model_version_by_alias(MODEL_NAME, "challenger").version == newest.version
    assert str(newest.version) != str(champion_before)
    assert newest.tags["gate.passed"] == "false"


def test_bad_data_stops_the_run_with_one_line_and_touches_nothing(project: Path, first_run) -> None:
    versions_before = len(_versions(project))
    champion_before = _client(project).get_model_version_by_alias(MODEL_NAME, "champion").version
    (project / "bad.csv").write_text("review,sentiment\nfine film,positive\n,negative\n", encoding="utf-8")
    done = nlpops(project, "run", "--set", "data.path=bad.csv")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: bad.csv:"), done.stderr
    assert "validate  FAILED" in done.stdout and "register  skipped: validate failed" in done.stdout
    page = (project / "artifacts/report/index.html").read_text()  # a partial report says where the run stopped
    assert "PARTIAL: the run stopped at validate: bad.csv:" in page and "Validation (Great Expectations)" in page
    assert len(_versions(project)) == versions_before
    assert _client(project).get_model_version_by_alias(MODEL_NAME, "champion").version == champion_before
