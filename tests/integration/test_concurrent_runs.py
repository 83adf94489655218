"""Overlapping runs of one project (issue 18), as users start them: `nlpops run` processes at the same time.

A run killed with -9 while holding the run lock; then two runs started together (seeds 7 and 8, run.on_conflict
wait) and, while they run, a third with run.on_conflict=fail. The killed run must not block the others; the two end
with two complete, distinct versions, each described by its own run (run id, metrics, gate, seed); the third is
refused with one line; `nlpops lineage <v> --verify` verifies every link of both versions. A tiny random BERT keeps it
to a few minutes on 2 cores.
"""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, clean_env, copy_repo, git, make_sentiment_rows

from pipelines.run_lock import lease_path, read_holder

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "overlap-sentiment"


def _env() -> dict[str, str]:
    return clean_env(NLPOPS_ACTOR="overlap-test")


def _start(project: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [str(BIN / "nlpops"), *args],
        cwd=project,
        env=_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group: a kill -9 takes its Prefect server with it
    )


def nlpops(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nlpops"), *args], cwd=project, env=_env(), capture_output=True, text=True, timeout=600
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repo(
        tmp_path_factory.mktemp("overlap") / "project", skip=("tests/", "demo/", "data/", "infra/", "benchmarks/")
    )
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    with (root / "incoming" / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(120, seed=5))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"].update(registered_model=MODEL_NAME, experiment="overlap-test")
    params["data"]["path"] = "data/raw/reviews.csv"
    params["validate"].update(min_rows=50, min_rows_per_class=5)
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(epochs=2, learning_rate=5e-3, batch_size=8, warmup_ratio=0.0, early_stopping_patience=0)
    params["gate"]["min_score"] = 0.0
    params["export"].update(parity_rows=16, latency_runs=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    done = nlpops(root, "data", "add", "incoming/reviews.csv")
    assert done.returncode == 0, done.stderr
    git(root, "add", "-A")
    git(root, "commit", "-qm", "overlap test project")
    return root


def _lease(project: Path) -> Path:
    return lease_path(project / ".nlpops", project / "artifacts")


def _wait_for_holder(project: Path, pids: set[int], procs: list[subprocess.Popen], timeout: float = 180.0) -> int:
    """Poll the lease file until one of `pids` holds the run lock; its pid."""
    deadline = time.monotonic() + timeout
    while True:
        holder = read_holder(_lease(project))
        if holder is not None and holder.pid in pids:
            return holder.pid
        for proc in procs:
            if proc.poll() is not None:
                out, err = proc.communicate()
                raise AssertionError(f"pid {proc.pid} exited before holding the lock: {out}\n{err}")
        if time.monotonic() > deadline:
            raise AssertionError(f"none of {pids} took the run lock; lease: {holder}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def overlap(project: Path) -> dict:
    # 1. A run killed with -9 while it holds the lock (its whole process group, Prefect server included).
    killed = _start(project, "run", "--set", "train.seed=5")
    _wait_for_holder(project, {killed.pid}, [killed])
    os.killpg(killed.pid, signal.SIGKILL)
    killed.wait(timeout=30)
    stale = read_holder(_lease(project))
    # 2. Two runs started together; 3. while they run, one that must not wait.
    started = time.perf_counter()
    runs = {seed: _start(project, "run", "--set", f"train.seed={seed}") for seed in (7, 8)}
    first = _wait_for_holder(project, {p.pid for p in runs.values()}, list(runs.values()))
    refused = nlpops(project, "run", "--set", "run.on_conflict=fail", "--set", "train.seed=9")
    results = {seed: proc.communicate(timeout=600) for seed, proc in runs.items()}
    return {
        "killed": killed,
        "stale": stale,
        "runs": runs,
        "first": first,
        "refused": refused,
        "out": {seed: out for seed, (out, _) in results.items()},
        "err": {seed: err for seed, (_, err) in results.items()},
        "seconds": time.perf_counter() - started,
    }


def _report(stdout: str) -> dict[str, str]:
    """The facts a run's summary claims: training run id, test metrics, gate line, registered version."""
    run_id = re.search(r"^  training .*, run (\w+)$", stdout, re.M)
    test = re.search(r"^  test      macro_f1 ([\d.]+)  accuracy ([\d.]+)", stdout, re.M)
    gate = re.search(r"^  gate      (.*)$", stdout, re.M)
    version = re.search(rf"^  registry  {MODEL_NAME} v(\d+) ", stdout, re.M)
    assert run_id and test and gate and version, stdout
    return {
        "run_id": run_id[1],
        "accuracy": test[2],
        "macro_f1": test[1],
        "gate": gate[1],
        "version": version[1],
    }


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_a_run_killed_with_sigkill_does_not_block_the_next(overlap: dict) -> None:
    killed = overlap["killed"]
    assert overlap["stale"] is not None and overlap["stale"].pid == killed.pid  # it died holding the lock
    first = next(seed for seed, proc in overlap["runs"].items() if proc.pid == overlap["first"])
    assert f"taking over from `nlpops run` (pid {killed.pid} on " in overlap["err"][first], overlap["err"][first]
    assert all(proc.returncode == 0 for proc in overlap["runs"].values()), overlap["err"]
    each = [re.search(r"nlpops run finished in ([\d.]+) s", out) for out in overlap["out"].values()]
    print(
        f"\ntwo overlapping runs, serialised: {overlap['seconds']:.1f} s ({', '.join(m[1] for m in each if m)} s each)"
    )


def test_run_on_conflict_fail_refuses_with_one_line(overlap: dict) -> None:
    refused = overlap["refused"]
    assert refused.returncode == 75, refused.stderr
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, refused.stderr
    assert lines[0].startswith("error: artifacts: another run is in progress: `nlpops run` (pid ")
    assert f"(pid {overlap['first']} on " in lines[0] and "run.on_conflict=fail" in lines[0]
    assert "Traceback" not in refused.stdout + refused.stderr


def test_two_runs_started_together_end_as_two_whole_distinct_versions(overlap: dict, project: Path) -> None:
    runs, err = overlap["runs"], overlap["err"]
    second = next(seed for seed, proc in runs.items() if proc.pid != overlap["first"])
    # The second one waited, and said for whom.
    assert f"waiting for the run lock on artifacts: held by `nlpops run` (pid {overlap['first']} on " in err[second]
    client = _client(project)
    versions = {str(v.version): v for v in client.search_model_versions(f"name = '{MODEL_NAME}'")}
    assert len(versions) == 2, sorted(versions)  # the killed run registered nothing
    reports = {seed: _report(overlap["out"][seed]) for seed in runs}
    assert {r["version"] for r in reports.values()} == set(versions)
    assert reports[7]["run_id"] != reports[8]["run_id"]
    for seed, report in reports.items():
        tags = versions[report["version"]].tags
        # What the run printed is what its version carries: its own training run, seed, metrics and gate.
        assert versions[report["version"]].run_id == tags["run_id"] == report["run_id"]
        assert tags["train.seed"] == str(seed)
        assert f"{float(tags['metric.accuracy']):.4f}" == report["accuracy"]
        assert f"{float(tags['metric.macro_f1']):.4f}" == report["macro_f1"]
        assert f"macro_f1 {report['macro_f1']}" in report["gate"], report["gate"]
        run = client.get_run(report["run_id"])
        assert run.data.params["train.seed"] == str(seed) and run.info.status == "FINISHED"
        assert abs(run.data.metrics["test_macro_f1"] - float(tags["metric.macro_f1"])) < 1e-12


def test_lineage_verify_of_every_version_verifies_every_link(
    overlap: dict, project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What `nlpops lineage <v> --verify` prints, in this process (two CLI starts would cost more than the audit)."""
    import mlflow

    from pipelines.audit import build_lineage, render_text

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):  # mlflow.set_*_uri export them: undone after
        monkeypatch.setenv(name, uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        for version in ("1", "2"):
            text = render_text(build_lineage(MODEL_NAME, version, verify=True, root=project))
            assert "verify: 8 verified, 0 changed, 0 missing" in text, text
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)  # type: ignore[arg-type]
