"""No secret lands anywhere: the real flow runs with a PostgreSQL promotion lock whose password comes from
NLPOPS_LOCK_URL (and an MLflow password in MLFLOW_TRACKING_PASSWORD), then every byte it left behind (MLflow's
SQLite store and artifacts, dvc.lock, artifacts/, the state dir with Prefect's database) and everything it printed
is searched for the passwords. A password in params.yaml or --set is refused before anything runs.

PostgreSQL here trusts local connections, so any password is accepted: the lock is really taken with it.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import build_tiny_model, clean_env, copy_repo, free_port, git, make_sentiment_rows

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
LOCK_PASSWORD = "s3cretPW"
MLFLOW_PASSWORD = "mlfl0wS3cret"
LOCK_URL = f"postgresql://postgres:{LOCK_PASSWORD}@127.0.0.1:5432/test"
SECRETS = (LOCK_PASSWORD.encode(), MLFLOW_PASSWORD.encode())


def _postgres_up() -> bool:
    try:
        import psycopg2

        psycopg2.connect(LOCK_URL, connect_timeout=5).close()
        return True
    except Exception:
        return False


def nlpops(project: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nlpops"), *args],
        cwd=project,
        env=clean_env(NLPOPS_ACTOR="secrets-test", **env),
        capture_output=True,
        text=True,
        timeout=600,
    )


def _hits(root: Path) -> list[str]:
    """Files under root whose bytes contain one of the passwords."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            data = path.read_bytes()
            found += [f"{path.relative_to(root)}: {s.decode()}" for s in SECRETS if s in data]
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this repository under git and DVC, with a tiny model, tiny data and the PostgreSQL lock."""
    root = copy_repo(tmp_path_factory.mktemp("secrets") / "project", skip=("tests/", "demo/", "data/"))
    model_dir = build_tiny_model(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    with (root / "incoming" / "reviews.csv").open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["text", "label"])
        writer.writerows(make_sentiment_rows(100, seed=5))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"]["registered_model"] = "secrets-sentiment"
    params["data"]["path"] = "data/raw/reviews.csv"
    params["validate"].update(min_rows=50, min_rows_per_class=5)
    params["model"]["path"] = str(model_dir)
    params["train"].update(epochs=1, batch_size=16, checkpoint_every_steps=0)
    params["gate"].update(min_score=0.0, max_latency_ms=None, max_slice_drop=None)
    params["export"].update(parity_rows=8, latency_runs=0)
    params["register"]["lock"] = "postgres"  # the URL, with its password, comes from NLPOPS_LOCK_URL only
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    done = nlpops(root, "data", "add", "incoming/reviews.csv")
    assert done.returncode == 0, done.stderr
    git(root, "add", "-A")
    git(root, "commit", "-qm", "secrets project")
    return root


@pytest.mark.skipif(not _postgres_up(), reason="needs PostgreSQL at 127.0.0.1:5432 (trust auth)")
def test_a_run_with_credentials_from_the_environment_leaves_no_password_anywhere(project: Path) -> None:
    env = {
        "NLPOPS_LOCK_URL": LOCK_URL,
        "MLFLOW_TRACKING_USERNAME": "nlpops",
        "MLFLOW_TRACKING_PASSWORD": MLFLOW_PASSWORD,
    }
    # --verbose: library and Prefect logs at INFO reach the console too, and are searched with the rest.
    done = nlpops(project, "run", "--verbose", **env)
    assert done.returncode == 0, done.stderr[-3000:]
    registration = json.loads((project / "artifacts/register/registration.json").read_text())
    assert registration["lock"] == "postgres"  # the promotion lock was taken on the password-bearing URL
    assert "dvc.lock updated" in done.stdout
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert "register.champion_alias" in lock["stages"]["register"]["params"]["params.yaml"]

    # The promotion lock server unreachable: the error names it, redacted.
    dead = LOCK_URL.replace(":5432/", f":{free_port()}/")
    refused = nlpops(project, "register", NLPOPS_LOCK_URL=dead)
    assert refused.returncode == 2, refused.stderr
    # the run lock (taken first) or the promotion lock: either names the server with the password hidden
    assert "lock: cannot connect to postgresql://postgres:***@127.0.0.1:" in refused.stderr

    # A tracking server URI with an embedded password (the user's own env): shown redacted when unreachable.
    port = free_port()
    unreachable = nlpops(
        project,
        "changes",
        MLFLOW_TRACKING_URI=f"http://nlpops:{MLFLOW_PASSWORD}@127.0.0.1:{port}",
        MLFLOW_HTTP_REQUEST_MAX_RETRIES="0",
        MLFLOW_HTTP_REQUEST_TIMEOUT="5",
    )
    assert unreachable.returncode != 0
    assert f"http://nlpops:***@127.0.0.1:{port}" in unreachable.stderr

    printed = [done.stdout, done.stderr, refused.stdout, refused.stderr, unreachable.stdout, unreachable.stderr]
    assert not [s for s in SECRETS for out in printed if s.decode() in out], "a password was printed"
    state = project / ".nlpops"
    assert (state / "mlflow.db").is_file() and (state / "mlartifacts").is_dir() and (state / "prefect").is_dir()
    assert (project / "artifacts/export/model.onnx").is_file()
    assert _hits(project) == []  # MLflow DB + artifacts, Prefect DB, dvc.lock, artifacts/, caches, .git


@pytest.mark.parametrize("where", ["params.yaml", "--set"])
def test_a_password_in_params_or_set_is_refused_before_anything_runs(tmp_path: Path, where: str) -> None:
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    args = ["run"]
    if where == "params.yaml":
        params["register"]["lock_url"] = LOCK_URL
    else:
        args += ["--set", "register.lock=postgres", "--set", f"register.lock_url={LOCK_URL}"]
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    done = nlpops(tmp_path, *args)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"error: {where}: register.lock_url holds a password")
    assert "NLPOPS_LOCK_URL" in lines[0] and "postgresql://postgres:***@127.0.0.1:5432/test" in lines[0]
    assert LOCK_PASSWORD not in done.stdout + done.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["params.yaml"]  # nothing run: no state dir, no artifacts
