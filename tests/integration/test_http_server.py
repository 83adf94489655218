"""`nlpops serve` as a real subprocess on a temp SQLite registry holding two versions of a tiny random BERT:
predictions, /health, /model, a promotion and a rollback picked up while serving, bad requests, a bounded load from
a second process, and schemathesis over the OpenAPI schema (when schemathesis is installed)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import BIN, clean_env, free_port

pytestmark = pytest.mark.integration

MODEL = "tiny-served"
TEXTS = ["the film was good", "bad", "really a very dull plot and the acting is quite awful", "fun !"]
V1_LABELS = {"0": "negative", "1": "positive"}
V2_LABELS = {"0": "NEG", "1": "POS"}  # v2: the same graph with other label names, so a switch is visible


class Decision:
    def __init__(self, passed: bool) -> None:
        self.passed = passed
        self.reasons = ["test"]

    def summary(self) -> str:
        return "passed" if self.passed else "failed: test"

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed}


def _export(model_dir: Path, root: Path) -> Path:
    import pandas as pd

    from pipelines.config import ExportConfig, Params
    from pipelines.export_onnx import export_onnx
    from pipelines.tasks import get_task

    config = json.loads((model_dir / "config.json").read_text())
    config["id2label"] = V1_LABELS
    config["label2id"] = {v: int(k) for k, v in V1_LABELS.items()}
    named = root / "model"
    shutil.copytree(model_dir, named)
    (named / "config.json").write_text(json.dumps(config))
    pd.DataFrame({"text": TEXTS, "label": [1, 0, 0, 1]}).to_parquet(root / "test.parquet", index=False)
    task = get_task(Params.model_validate({"data": {"path": "-"}, "tokenise": {"max_length": 32}}))
    export_onnx(named, root / "test.parquet", root / "v1", ExportConfig(opset=17, atol=1e-4, parity_rows=8), task)
    shutil.copytree(root / "v1", root / "v2")
    serving = json.loads((root / "v2" / "serving.json").read_text())
    serving["id2label"] = V2_LABELS
    (root / "v2" / "serving.json").write_text(json.dumps(serving))
    return root


@pytest.fixture(scope="module")
def project(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A project folder with params.yaml and a registry: v1 (gate passed, champion), v2 (gate failed, challenger)."""
    import mlflow

    from pipelines import registry
    from pipelines.registry_lock import LockSettings
    from pipelines.serving import log_onnx_pyfunc

    root = tmp_path_factory.mktemp("serve")
    exports = _export(tiny_model_dir, root)
    uri = f"sqlite:///{root / 'mlflow.db'}"
    state_dir = root / ".nlpops"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setenv("NLPOPS_ACTOR", "tester")
        for var in ("MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_REGISTRY_URI"):
            mp.delenv(var, raising=False)
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        experiment = mlflow.create_experiment("serve-test", artifact_location=(root / "mlartifacts").as_uri())
        lock = LockSettings(state_dir=str(state_dir), kind="file")
        for version, passed, f1 in (("v1", True, 0.71), ("v2", False, 0.69)):
            with mlflow.start_run(experiment_id=experiment) as run:
                info = log_onnx_pyfunc(exports / version, name="model")
            tags = {
                "task.type": "text_classification",
                "metric.macro_f1": str(f1),
                "metric.accuracy": str(f1 + 0.01),
                "data.md5": f"md5-{version}",
                "git.commit": f"commit-{version}",
                "params.hash": f"params-{version}",
                "run_id": run.info.run_id,
            }
            registry.register_challenger(
                MODEL,
                run.info.run_id,
                lambda uri=info.model_uri: uri,
                tags,
                lambda _champion, passed=passed: Decision(passed),
                "challenger",
                "champion",
                lock,
            )
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    params = root / "params.yaml"
    params.write_text(
        f"project:\n  state_dir: {state_dir}\n  registered_model: {MODEL}\n  artifacts_dir: {root / 'artifacts'}\n"
        "data:\n  path: unused.csv\n"
    )
    return {"root": root, "uri": uri, "params": params, "lock": lock}


def _http(method: str, url: str, body: Any = None, raw: bytes | None = None, timeout: float = 30) -> tuple[int, Any]:
    import urllib.error
    import urllib.request

    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


class Server:
    def __init__(self, project: dict[str, Any], *args: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = project["root"] / f"serve-{self.port}.log"
        command = [str(BIN / "nlpops"), "serve", "--params", str(project["params"]), "--port", str(self.port), *args]
        env = clean_env(MLFLOW_TRACKING_URI=project["uri"], NLPOPS_ACTOR="tester")
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=project["root"], start_new_session=True
            )

    def wait_healthy(self, timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"nlpops serve exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                status, body = _http("GET", f"{self.url}/health", timeout=2)
                if status == 200:
                    return body
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"nlpops serve not healthy within {timeout}s:\n{self.log.read_text()[-3000:]}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self.proc.returncode


@pytest.fixture(scope="module")
def server(project: dict[str, Any]):
    srv = Server(project, "--poll-seconds", "0.3", "--max-items", "8", "--max-chars", "200")
    srv.wait_healthy()
    yield srv
    code = srv.stop()
    # SIGTERM: a graceful shutdown, after which uvicorn re-raises the signal (so the exit status says SIGTERM)
    assert code in (0, -signal.SIGTERM) and "Traceback" not in srv.log.read_text(), srv.log.read_text()[-3000:]


def _wait_for_version(url: str, version: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    body: Any = None
    while time.monotonic() < deadline:
        status, body = _http("GET", f"{url}/model")
        if status == 200 and body["version"] == version:
            return body
        time.sleep(0.1)
    raise AssertionError(f"server still on {body} after {timeout}s")


def test_predict_health_and_model(server: Server) -> None:
    status, body = _http("POST", f"{server.url}/predict", {"inputs": TEXTS})
    assert status == 200, body
    assert body["model"] == MODEL and body["version"] == "1" and body["task"] == "text_classification"
    assert len(body["outputs"]) == len(TEXTS)
    for out in body["outputs"]:
        assert out["label"] in V1_LABELS.values() and set(out["scores"]) == set(V1_LABELS.values())
        assert abs(sum(out["scores"].values()) - 1) < 1e-6 and out["score"] == max(out["scores"].values())
    status, one = _http("POST", f"{server.url}/predict", {"inputs": [{"text": TEXTS[2]}]})
    # An object item is the same text. Not bit-equal: the served INT8 graph quantises activations per batch (its
    # scale comes from the whole batch), so a text's scores move in the 5th decimal with its batch-mates.
    assert status == 200 and one["outputs"][0]["label"] == body["outputs"][2]["label"]
    for label, score in body["outputs"][2]["scores"].items():
        assert one["outputs"][0]["scores"][label] == pytest.approx(score, abs=1e-3)

    status, health = _http("GET", f"{server.url}/health")
    assert status == 200 and health["status"] == "ok" and health["version"] == "1" and health["alias"] == "champion"
    status, model = _http("GET", f"{server.url}/model")
    assert status == 200
    assert model["name"] == MODEL and model["version"] == "1" and model["aliases"] == ["champion"]
    assert model["task"] == "text_classification" and model["pair"] is False
    assert model["metrics"] == {"accuracy": 0.72, "macro_f1": 0.71}
    lineage = model["lineage"]
    assert lineage["data_md5"] == "md5-v1" and lineage["git_commit"] == "commit-v1"
    assert lineage["params_hash"] == "params-v1" and lineage["run_id"] and lineage["gate_passed"] == "true"
    status, docs = 0, None
    import urllib.request

    with urllib.request.urlopen(f"{server.url}/docs", timeout=10) as resp:
        status, docs = resp.status, resp.read().decode()
    assert status == 200 and "swagger" in docs.lower()
    status, schema = _http("GET", f"{server.url}/openapi.json")
    assert status == 200 and {"/predict", "/health", "/model"} <= set(schema["paths"])


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ({"inputs": []}, 422, "inputs: List should have at least 1 item"),
        ({"inputs": ["a"] * 9}, 422, "inputs: List should have at most 8 items"),
        ({"inputs": ["x" * 201]}, 422, "inputs[0]: String should have at most 200 characters"),
        ({"inputs": ["ok", {"text": "y" * 201}]}, 422, "inputs[1].text: String should have at most 200 characters"),
        ({"inputs": [5]}, 422, 'inputs[0]: expected texts (or {"text"} objects)'),
        ({"inputs": "a text"}, 422, "inputs: Input should be a valid list"),
        ({"inputs": ["a"], "temperature": 2}, 422, "temperature: unknown field"),
        ({"inputs": [{"text": "a", "label": "x"}]}, 422, "inputs[0].label: unknown field"),
        ({"inputs": [{"text": 3}]}, 422, "inputs[0].text: Input should be a valid string"),
        ({"inputs": [{"text_pair": "b"}]}, 422, "inputs[0].text: Field required"),
        ({"texts": ["a"]}, 422, 'body: missing "inputs"'),
        ({"inputs": [["a", "list"]]}, 422, 'inputs[0]: expected texts (or {"text"} objects)'),
        ({"inputs": [{"text": "a", "text_pair": "b"}]}, 422, "inputs[0].text_pair: unknown field"),
        ([1, 2], 422, "Input should be a valid dictionary"),
    ],
)
def test_bad_requests_get_4xx_with_a_message(server: Server, body: Any, status: int, message: str) -> None:
    got, answer = _http("POST", f"{server.url}/predict", body)
    assert got == status, answer
    assert isinstance(answer["detail"], str) and message in answer["detail"], answer


def test_malformed_bodies_and_wrong_methods(server: Server) -> None:
    got, answer = _http("POST", f"{server.url}/predict", raw=b'{"inputs": ["a"')
    assert got == 422 and "not valid JSON" in answer["detail"]
    got, answer = _http("POST", f"{server.url}/predict", raw=b'{"inputs": ["\\ud800"]}')
    assert got == 422 and "lone surrogate" in answer["detail"]
    got, answer = _http("POST", f"{server.url}/predict", raw=b"\x80")
    assert got == 400 and "send UTF-8 JSON" in answer["detail"]
    import socket

    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as conn:  # a header announcing 9 MiB
        conn.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        conn.sendall(b"Content-Length: 9437184\r\n\r\n")
        reply = b""
        while not reply.endswith(b"}"):  # headers and body may come in separate packets
            chunk = conn.recv(65536)
            if not chunk:
                break
            reply += chunk
    reply = reply.decode()
    assert reply.startswith("HTTP/1.1 413") and "request body over 75648 bytes" in reply, reply
    got, answer = _http("GET", f"{server.url}/predict")
    assert got == 405 and answer["detail"] == "Method Not Allowed"
    got, answer = _http("GET", f"{server.url}/nowhere")
    assert got == 404


def test_promotion_and_rollback_are_picked_up_without_restart(server: Server, project: dict[str, Any]) -> None:
    import mlflow

    from pipelines import registry

    pid = server.proc.pid
    mlflow.set_tracking_uri(project["uri"])
    mlflow.set_registry_uri(project["uri"])
    try:
        registry.promote(MODEL, "2", "serving test", "champion", project["lock"], force=True)
        model = _wait_for_version(server.url, "2")
        assert model["aliases"] == ["challenger", "champion"] and model["lineage"]["git_commit"] == "commit-v2"
        status, body = _http("POST", f"{server.url}/predict", {"inputs": TEXTS})
        assert status == 200 and body["version"] == "2"
        assert {o["label"] for o in body["outputs"]} <= set(V2_LABELS.values())
        registry.rollback(MODEL, "serving test rollback", "champion", project["lock"])
        assert _wait_for_version(server.url, "1")["aliases"] == ["champion"]
        status, body = _http("POST", f"{server.url}/predict", {"inputs": TEXTS})
        assert status == 200 and body["version"] == "1"
        assert {o["label"] for o in body["outputs"]} <= set(V1_LABELS.values())
    finally:
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)
    assert server.proc.pid == pid and server.proc.poll() is None  # the same process all along


LOAD_SCRIPT = r"""
import http.client, json, sys, time
from concurrent.futures import ThreadPoolExecutor
port, requests, threads = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
texts = ["the film was good", "bad and boring", "a very dull plot", "it is quite fun !"]
def worker(k):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    out = []
    for i in range(k, requests, threads):
        body = json.dumps({"inputs": [texts[i % 4]]})
        t = time.perf_counter()
        conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
        resp = conn.getresponse()
        data = json.loads(resp.read())
        out.append((resp.status, time.perf_counter() - t, data.get("outputs", [{}])[0].get("label")))
    return out
start = time.perf_counter()
with ThreadPoolExecutor(threads) as pool:
    results = [r for chunk in pool.map(worker, range(threads)) for r in chunk]
wall = time.perf_counter() - start
lat = sorted(r[1] for r in results)
print(json.dumps({"requests": len(results), "ok": sum(r[0] == 200 for r in results), "wall_s": wall,
    "rows_per_s": len(results) / wall, "p50_ms": 1000 * lat[len(lat) // 2], "p95_ms": 1000 * lat[int(len(lat) * 0.95)],
    "labels": sorted({str(r[2]) for r in results})}))
"""


def test_bounded_load_from_a_second_process(server: Server) -> None:
    done = subprocess.run(
        [sys.executable, "-c", LOAD_SCRIPT, str(server.port), "2000", "8"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    stats = json.loads(done.stdout)
    print(f"load: {stats}")  # the figures (pytest -s shows them)
    assert stats["requests"] == 2000 and stats["ok"] == 2000, stats
    assert set(stats["labels"]) <= set(V1_LABELS.values()) | set(V2_LABELS.values())
    status, health = _http("GET", f"{server.url}/health")
    assert status == 200 and health["status"] == "ok"


SCHEMATHESIS_OPTIONS = ["--checks", "all", "--max-examples", "60", "--seed", "1", "--no-color"]


def test_schemathesis_finds_no_server_error(server: Server, tmp_path: Path) -> None:
    pytest.importorskip("schemathesis")
    done = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "run", f"{server.url}/openapi.json", *SCHEMATHESIS_OPTIONS],
        capture_output=True,
        text=True,
        timeout=600,
        env=clean_env(),
        cwd=tmp_path,  # its .schemathesis/ cache lands there, not in the checkout
    )
    assert done.returncode == 0, (done.stdout + done.stderr)[-5000:]
    assert server.proc.poll() is None


def test_serve_refuses_clearly_when_there_is_no_champion_or_the_port_is_taken(project: dict[str, Any]) -> None:
    env = clean_env(MLFLOW_TRACKING_URI=project["uri"])
    base = [str(BIN / "nlpops"), "serve", "--params", str(project["params"])]
    done = subprocess.run([*base, "--alias", "nobody"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.startswith("error: serve:"), done.stderr
    assert "has no version with alias 'nobody'" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run([*base, "--max-items", "0"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and "--max-items must be at least 1" in done.stderr, done.stderr
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = str(taken.getsockname()[1])
        done = subprocess.run([*base, "--port", port], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 2 and f"serve: cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr
