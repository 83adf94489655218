"""DVC experiments as a DVC user runs them, in a copy of this project right after its first `nlpops run` (what
`make run` leaves: raw data brought in by `nlpops data add`, dvc.lock rewritten and not committed).

Issue 17: `dvc exp run -S train.epochs=1` used to fail with "No such file or directory: data/raw/reviews.csv" and
leave the workspace without the raw file. Cause: the root .gitignore ignored `data/raw/*` (re-including `*.dvc`);
DVC's project walk treats such a folder as ignored as a whole and never saw data/raw/reviews.csv.dvc, so the
checkout that `dvc exp run` does first removed data/raw/reviews.csv as an "unused link" of DVC's (it had been
linked by `dvc add`). A tiny random BERT keeps every training to a second; the time goes on process start-up.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, clean_env, copy_repo, git, make_sentiment_rows

# The fixtures run about 20 pipeline stages as separate processes (DVC starts each one): more than the default
# 900 s per test on a loaded two-core machine.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(3600)]

BIN = Path(sys.executable).parent
MODEL_NAME = "exp-sentiment"
UPSTREAM = ("validate", "clean", "tokenise")
TRAINING = ("train", "evaluate", "export", "register")


def _run(project: Path, *command: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    env = clean_env(NLPOPS_ACTOR="exp-test", DVC_NO_ANALYTICS="1")
    return subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=timeout)


def dvc(project: Path, *args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return _run(project, str(BIN / "dvc"), *args, timeout=timeout)


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(project: Path) -> list:
    return sorted(_client(project).search_model_versions(f"name = '{MODEL_NAME}'"), key=lambda v: int(v.version))


def _alias(project: Path, alias: str) -> str:
    return str(_client(project).get_model_version_by_alias(MODEL_NAME, alias).version)


def _exp_name(done: subprocess.CompletedProcess[str]) -> str:
    found = re.search(r"Reproducing experiment '([^']+)'", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    return found.group(1)


def _experiments(project: Path) -> dict[str, dict]:
    """`dvc exp show --json` as {experiment name: its data (params, metrics, ...)}."""
    done = dvc(project, "exp", "show", "--json")
    assert done.returncode == 0, done.stderr
    out = {}
    for baseline in json.loads(done.stdout):
        for exp in baseline.get("experiments") or []:
            rev = exp["revs"][0]
            out[exp["name"] or rev["name"]] = rev.get("data") or {}
    return out


def _train_params(data: dict) -> dict:
    return data["params"]["params.yaml"]["data"]["train"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This repository copied, with tiny data and a tiny model, committed; then `nlpops data add` + `nlpops run` as
    `make run` does (gate.min_score 0 and min_improvement -1: every model passes, so promotion is what is tested)."""
    root = copy_repo(tmp_path_factory.mktemp("dvc-exp") / "project", skip=("tests/",))
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    incoming = root.parent / "incoming" / "reviews.csv"
    incoming.parent.mkdir()
    with incoming.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(160, seed=5))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"]["registered_model"] = MODEL_NAME
    params["validate"].update(min_rows=50, min_rows_per_class=5)
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(epochs=2, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0)
    params["gate"].update(min_score=0.0, min_improvement=-1.0, max_slice_drop=None)
    params["export"].update(parity_rows=16, latency_runs=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    git(root, "config", "user.name", "exp-test")  # DVC commits each experiment
    git(root, "config", "user.email", "exp-test@example.invalid")
    done = _run(root, str(BIN / "nlpops"), "data", "add", str(incoming))
    assert done.returncode == 0, done.stderr
    git(root, "add", "-A")
    git(root, "commit", "-qm", "project with its data under DVC")
    assert "data/raw/reviews.csv" not in git(root, "ls-files", "data/raw").splitlines()  # the data stays in DVC
    done = _run(root, str(BIN / "nlpops"), "run")
    assert done.returncode == 0, done.stderr
    assert "dvc.lock updated" in done.stdout
    assert git(root, "status", "--porcelain", "--untracked-files=no") == "M dvc.lock"  # as `make run` leaves it
    return root


@pytest.fixture(scope="module")
def raw_md5(project: Path) -> str:
    return _md5(project / "data" / "raw" / "reviews.csv")


@pytest.fixture(scope="module")
def epoch_exp(project: Path, raw_md5: str) -> tuple[subprocess.CompletedProcess[str], str]:
    """The command from issue 17."""
    done = dvc(project, "exp", "run", "-S", "train.epochs=1")
    return done, _exp_name(done)


def test_exp_run_keeps_the_raw_data_and_reruns_only_what_the_change_touches(project: Path, raw_md5, epoch_exp):
    done, _ = epoch_exp
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (project / "data" / "raw" / "reviews.csv").is_file()
    assert _md5(project / "data" / "raw" / "reviews.csv") == raw_md5
    assert (project / "artifacts" / "validate" / "report.json").is_file()
    assert "'data/raw/reviews.csv.dvc' didn't change, skipping" in done.stdout  # DVC sees the raw data now
    for stage in UPSTREAM:
        assert f"Stage '{stage}' didn't change, skipping" in done.stdout
    for stage in TRAINING:
        assert f"Running stage '{stage}'" in done.stdout
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 1


def test_exp_run_logs_to_mlflow_and_registers_a_challenger_but_never_a_champion(project: Path, epoch_exp):
    _, name = epoch_exp
    client = _client(project)
    runs = client.search_runs(
        [client.get_experiment_by_name("nlpops-demo").experiment_id], f"tags.`dvc.exp_name` = '{name}'"
    )
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["train.epochs"] == "1"
    assert "test_macro_f1" in run.data.metrics and "val_macro_f1" in run.data.metrics
    assert run.data.tags["dvc.exp_baseline_rev"] == git(project, "rev-parse", "HEAD")
    versions = _versions(project)
    assert [str(v.version) for v in versions] == ["1", "2"]
    newest = versions[-1]
    assert newest.run_id == run.info.run_id and newest.tags["dvc.exp_name"] == name
    assert newest.tags["gate.passed"] == "true"  # it passed the gate (min_score 0) ...
    assert f"DVC experiment '{name}'" in newest.tags["promotion.held"]  # ... and was held back
    assert _alias(project, "champion") == "1" and _alias(project, "challenger") == "2"


def test_exp_show_lists_the_experiment_with_its_params_and_metrics(project: Path, epoch_exp):
    _, name = epoch_exp
    shown = _experiments(project)[name]
    assert _train_params(shown)["epochs"] == 1
    metrics = shown["metrics"]["artifacts/evaluate/metrics.json"]["data"]
    on_disk = json.loads((project / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert metrics["macro_f1"] == pytest.approx(on_disk["macro_f1"]) and metrics["accuracy"] == on_disk["accuracy"]


def test_exp_diff_and_plots_diff_compare_the_experiment_with_its_baseline(project: Path, epoch_exp):
    _, name = epoch_exp
    done = dvc(project, "exp", "diff", "--json")  # workspace (the experiment's result) against HEAD
    assert done.returncode == 0, done.stderr
    diff = json.loads(done.stdout)
    assert diff["params"]["params.yaml"]["train.epochs"] == {"old": 2, "new": 1, "diff": -1}
    assert "macro_f1" in diff["metrics"]["artifacts/evaluate/metrics.json"]
    done = dvc(project, "plots", "diff", name, "--json")
    assert done.returncode == 0, done.stderr
    curves = json.loads(done.stdout)["data"]["training_curves"]
    assert {name, "workspace"} <= set(curves[0]["revisions"])
    points = curves[0]["content"]["data"]["values"]
    assert {p["rev"] for p in points if p["field"] == "val_loss"} == {name, "workspace"}


@pytest.fixture(scope="module")
def gate_exp(project: Path, epoch_exp) -> subprocess.CompletedProcess[str]:
    """-S on another section: gate.min_score feeds evaluate and register only."""
    return dvc(project, "exp", "run", "-S", "gate.min_score=0.01")


@pytest.mark.slow  # a second `dvc exp run` (15 s); the data-change one above stays in make test
def test_exp_run_on_the_gate_section_reruns_evaluate_and_register_only(project: Path, raw_md5, gate_exp):
    assert gate_exp.returncode == 0, gate_exp.stdout[-3000:] + gate_exp.stderr[-3000:]
    for stage in (*UPSTREAM, "train", "export"):
        assert f"Stage '{stage}' didn't change, skipping" in gate_exp.stdout
    for stage in ("evaluate", "register"):
        assert f"Running stage '{stage}'" in gate_exp.stdout
    assert len(_versions(project)) == 2  # the same trained model: its version is reused, not registered again
    assert _md5(project / "data" / "raw" / "reviews.csv") == raw_md5


@pytest.fixture(scope="module")
def queued(project: Path, gate_exp) -> dict[str, str]:
    """A two-entry grid on the queue, run by `dvc queue start` (temporary copies under .dvc/tmp/exps)."""
    done = dvc(project, "exp", "run", "--queue", "-S", "train.learning_rate=1e-3,2e-3")
    assert done.returncode == 0, done.stderr
    names = re.findall(r"Queued experiment '([^']+)'", done.stdout + done.stderr)
    assert len(names) == 2, done.stdout + done.stderr
    done = dvc(project, "queue", "start")
    assert done.returncode == 0, done.stderr
    deadline = time.monotonic() + 1200
    while True:
        status = dvc(project, "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        assert time.monotonic() < deadline, f"queue still busy after 20 min:\n{status}"
        time.sleep(3)
    dvc(project, "queue", "stop")
    return {name: dvc(project, "queue", "logs", name).stdout for name in names}


@pytest.mark.slow  # the queued grid trains twice more in DVC temp copies: make test-all
def test_queued_grid_runs_in_temp_copies_and_logs_to_the_projects_mlflow(project: Path, raw_md5, queued):
    shown = _experiments(project)
    rates = {}
    for name, log in queued.items():
        assert name in shown, (name, list(shown))
        rates[name] = _train_params(shown[name])["learning_rate"]
        assert "macro_f1" in shown[name]["metrics"]["artifacts/evaluate/metrics.json"]["data"], log
        assert "Stage 'tokenise' didn't change, skipping" in log and "Running stage 'train'" in log, log
    assert sorted(rates.values()) == [1e-3, 2e-3]
    client = _client(project)
    for name in queued:
        runs = client.search_runs(
            [client.get_experiment_by_name("nlpops-demo").experiment_id], f"tags.`dvc.exp_name` = '{name}'"
        )
        assert len(runs) == 1, name  # in the project's store, not in a deleted temporary copy
    versions = _versions(project)
    assert len(versions) == 4 and {v.tags.get("dvc.exp_name") for v in versions[2:]} == set(queued)
    assert _alias(project, "champion") == "1"
    assert not list((project / ".dvc" / "tmp" / "exps").rglob("mlflow.db"))
    assert _md5(project / "data" / "raw" / "reviews.csv") == raw_md5


@pytest.mark.slow  # the queued grid trains twice more in DVC temp copies: make test-all
def test_exp_apply_brings_back_an_experiments_params_metrics_and_model(project: Path, raw_md5, epoch_exp, queued):
    _, name = epoch_exp
    done = dvc(project, "exp", "apply", name)
    assert done.returncode == 0, done.stderr
    assert yaml.safe_load((project / "params.yaml").read_text())["train"]["epochs"] == 1
    shown = _experiments(project)[name]["metrics"]["artifacts/evaluate/metrics.json"]["data"]
    applied = json.loads((project / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert applied["macro_f1"] == pytest.approx(shown["macro_f1"])
    summary = json.loads((project / "artifacts" / "train" / "summary.json").read_text())
    assert summary["epochs_run"] == 1
    status = dvc(project, "status", "--json")
    assert status.returncode == 0 and json.loads(status.stdout) == {}, status.stdout  # all outputs restored
    assert _md5(project / "data" / "raw" / "reviews.csv") == raw_md5


@pytest.mark.slow  # the queued grid trains twice more in DVC temp copies: make test-all
def test_no_dvc_command_from_the_readme_harms_the_raw_data_the_registry_or_mlflow(project: Path, raw_md5, queued):
    before = [(str(v.version), v.run_id) for v in _versions(project)]
    for command in (("checkout",), ("status",), ("repro",), ("exp", "run", "-S", "train.epochs=1")):
        done = dvc(project, *command)
        assert done.returncode == 0, (command, done.stderr[-2000:])
        assert _md5(project / "data" / "raw" / "reviews.csv") == raw_md5, command
    assert [(str(v.version), v.run_id) for v in _versions(project)] == before
    assert _alias(project, "champion") == "1"
    with sqlite3.connect(project / ".nlpops" / "mlflow.db") as db:
        assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert len(_client(project).search_runs([_client(project).get_experiment_by_name("nlpops-demo").experiment_id]))
