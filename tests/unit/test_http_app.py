"""pipelines/http_server.py with stand-in runtimes (no model, no registry): the atomic swap with requests in
flight, a version that cannot be loaded, the request shapes per task type, and the batcher."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipelines.http_server import Batcher, LoadedModel, ModelHolder, ServeOptions, create_app


class FakeRuntime:
    def __init__(self, tag: str, task: str = "text_classification", pair: bool = False) -> None:
        self.tag, self.task, self.pair = tag, task, pair
        self.gate: threading.Event | None = None  # when set, predict waits on it (a request held in flight)
        self.entered = threading.Event()
        self.calls: list[list[Any]] = []

    def predict(self, items: list[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        self.calls.append(list(items))
        self.entered.set()
        if self.gate is not None:
            assert self.gate.wait(30)
        if any(item == "boom" for item in items):
            raise ValueError("boom is not a sentence")
        return [{"label": self.tag, "item": item if isinstance(item, str) else list(item)} for item in items]


class FakeSource:
    """Versions by number; `alias` says which one the alias points at."""

    name = "m"
    alias = "champion"

    def __init__(self, runtimes: dict[str, FakeRuntime]) -> None:
        self.runtimes = runtimes
        self.points_at: str | None = "1"
        self.broken: set[str] = set()

    def resolve(self) -> Any:
        if self.points_at is None:
            return None
        return SimpleNamespace(version=self.points_at, aliases=["champion"], tags={}, run_id="r")

    def load(self, version: Any) -> LoadedModel:
        if version.version in self.broken:
            raise RuntimeError(f"v{version.version} has no model.onnx")
        rt = self.runtimes[version.version]
        info = {"name": "m", "version": version.version, "aliases": ["champion"], "task": rt.task, "metrics": {}}
        return LoadedModel(rt, "m", version.version, rt.task, rt.pair, {**info, "lineage": {}})


def client_for(source: FakeSource, **options: Any) -> tuple[TestClient, ModelHolder]:
    holder = ModelHolder(source, poll_s=0)
    holder.load_initial()
    return TestClient(create_app(holder, ServeOptions(poll_s=0, **options))), holder


def test_a_swap_lets_the_request_in_flight_finish_on_the_old_model() -> None:
    old, new = FakeRuntime("old"), FakeRuntime("new")
    source = FakeSource({"1": old, "2": new})
    client, holder = client_for(source)
    old.gate = threading.Event()
    answers: list[Any] = []
    with client:
        worker = threading.Thread(target=lambda: answers.append(client.post("/predict", json={"inputs": ["a"]})))
        worker.start()
        assert old.entered.wait(30)  # the request is inside the old runtime
        source.points_at = "2"
        assert holder.refresh() is True and holder.current.version == "2" and holder.swaps == 1
        old.gate.set()
        worker.join(30)
        assert answers[0].status_code == 200
        assert answers[0].json()["version"] == "1" and answers[0].json()["outputs"][0]["label"] == "old"
        after = client.post("/predict", json={"inputs": ["b"]}).json()
        assert after["version"] == "2" and after["outputs"][0]["label"] == "new"
        assert client.get("/model").json()["version"] == "2"


def test_an_unloadable_version_or_a_missing_alias_keeps_the_old_model_serving() -> None:
    source = FakeSource({"1": FakeRuntime("one")})
    client, holder = client_for(source)
    with client:
        source.points_at, source.broken = "2", {"2"}
        assert holder.refresh() is False
        health = client.get("/health").json()
        assert health["status"] == "degraded" and health["version"] == "1"
        assert "cannot load v2: v2 has no model.onnx; still serving the old one" in health["last_error"]
        assert client.post("/predict", json={"inputs": ["a"]}).json()["version"] == "1"
        source.points_at = None
        holder.refresh()
        assert "alias 'champion' is not set" in client.get("/health").json()["last_error"]
        source.points_at = "1"
        holder.refresh()
        assert client.get("/health").json() | {"uptime_s": 0} == {
            "status": "ok",
            "model": "m",
            "version": "1",
            "alias": "champion",
            "uptime_s": 0,
            "last_poll": holder.last_poll,
            "last_error": None,
        }


def test_no_champion_is_a_clear_error() -> None:
    from pipelines.errors import RegistryError

    source = FakeSource({})
    source.points_at = None
    with pytest.raises(RegistryError, match="has no version with alias 'champion'"):
        ModelHolder(source, 0).load_initial()


def test_token_classification_takes_texts_and_word_lists_only() -> None:
    runtime = FakeRuntime("tok", task="token_classification")
    client, _ = client_for(FakeSource({"1": runtime}), max_chars=20)
    with client:
        answer = client.post("/predict", json={"inputs": ["Angela Merkel", ["Angela", "Merkel"]]})
        assert answer.status_code == 200 and runtime.calls[-1] == ["Angela Merkel", ["Angela", "Merkel"]]
        bad = client.post("/predict", json={"inputs": [{"text": "a"}]})
        assert bad.status_code == 422 and bad.json()["detail"] == "inputs[0]: expected texts, or lists of words"
        bad = client.post("/predict", json={"inputs": [["a" * 12, "b" * 12]]})
        assert bad.status_code == 422 and "words add up to more than 20 characters" in bad.json()["detail"]
        schema = client.get("/openapi.json").json()["components"]["schemas"]["PredictRequest"]
        assert schema["properties"]["inputs"]["maxItems"] == 256


def test_a_pair_model_needs_text_and_text_pair() -> None:
    runtime = FakeRuntime("pair", pair=True)
    client, _ = client_for(FakeSource({"1": runtime}))
    with client:
        ok = client.post("/predict", json={"inputs": [{"text": "a", "text_pair": "b"}]})
        assert ok.status_code == 200 and runtime.calls[-1] == [("a", "b")]
        bad = client.post("/predict", json={"inputs": ["a"]})
        assert bad.status_code == 422 and bad.json()["detail"] == 'inputs[0]: expected {"text", "text_pair"} objects'
        bad = client.post("/predict", json={"inputs": [{"text": "a"}]})
        assert bad.status_code == 422 and bad.json()["detail"] == "inputs[0].text_pair: Field required"


def test_a_runtime_refusal_is_a_422_not_a_500() -> None:
    client, _ = client_for(FakeSource({"1": FakeRuntime("one")}))
    with client:
        bad = client.post("/predict", json={"inputs": ["fine", "boom"]})
        assert bad.status_code == 422
        assert bad.json()["detail"] == "input refused by the text_classification runtime: boom is not a sentence"


def test_the_batcher_combines_waiting_requests_and_isolates_a_bad_one() -> None:
    runtime = FakeRuntime("b")
    model = LoadedModel(runtime, "m", "1", "text_classification", False, {})
    runtime.gate = threading.Event()
    batcher = Batcher(batch_rows=64)
    try:
        first = batcher.submit(model, ["a"])
        assert runtime.entered.wait(30)  # the worker is busy: the next three queue up
        queued = [batcher.submit(model, ["b", "c"]), batcher.submit(model, ["boom"]), batcher.submit(model, ["d"])]
        gone = batcher.submit(model, ["never"])
        assert gone.cancel()  # its client went away while it waited: skipped, and the worker lives on
        runtime.gate.set()
        assert [r["item"] for r in first.result(30)] == ["a"]
        assert [r["item"] for r in queued[0].result(30)] == ["b", "c"]
        with pytest.raises(ValueError, match="boom"):
            queued[1].result(30)
        assert [r["item"] for r in queued[2].result(30)] == ["d"]
        # one combined call for the three queued requests, then each alone after it failed
        assert runtime.calls == [["a"], ["b", "c", "boom", "d"], ["b", "c"], ["boom"], ["d"]]
    finally:
        batcher.close()
