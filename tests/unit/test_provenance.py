"""register refuses a mix of runs (pipelines/provenance.py): the gate, metrics, ONNX model and lineage of a version all
come from the training run it names, or nothing is registered."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipelines.config import Params, stable_hash
from pipelines.errors import MixedRunError
from pipelines.hashing import file_digest
from pipelines.paths import StagePaths
from pipelines.provenance import evaluate_record, train_record, verify_run_chain, write_export_record


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else json.dumps(data).encode())


def _make_run(paths: StagePaths, run_id: str, seed: int) -> None:
    """What one run's stages leave on disk, each stage recording its provenance as the stage modules do."""
    _write(paths.model_dir / "model.safetensors", f"weights of run {seed}".encode())
    _write(paths.model_dir / "config.json", {"seed": seed})
    lineage = {
        "data.md5": "raw-md5",
        "data.dvc_tracked": "true",
        "data.clean_sha256": stable_hash(json.loads(paths.clean_summary.read_text())["sha256"]),
        "data.test_sha256": file_digest(paths.clean_split("test")),
        "data.validation_sha256": "",
        "tokenise.cache_key": json.loads((paths.tokenised_dir / "manifest.json").read_text())["cache_key"],
    }
    _write(paths.train_summary, {"run_id": run_id, "provenance": train_record(paths, run_id, lineage)})
    _write(paths.metrics, {"accuracy": 0.5 + seed / 100, "macro_f1": 0.4 + seed / 100, "rows": 80})
    _write(paths.evaluate_dir / "slices.json", {"slices": {}, "membership_sha256": "m"})
    _write(paths.gate, {"passed": True, "reasons": [], "provenance": evaluate_record(paths, run_id)})
    _write(paths.onnx_model, f"onnx of run {seed}".encode())
    _write(paths.parity_report, {"passed": True, "onnx_sha256": file_digest(paths.onnx_model), "max_abs_diff": 0.0})
    write_export_record(paths, run_id)


@pytest.fixture
def project(tmp_path: Path) -> tuple[Params, StagePaths]:
    data = tmp_path / "reviews.csv"
    data.write_text("text,label\ngood,positive\n")
    params = Params.model_validate(
        {
            "data": {"path": str(data)},
            "project": {"state_dir": str(tmp_path / "state"), "artifacts_dir": str(tmp_path / "artifacts")},
        }
    )
    paths = StagePaths.from_params(params)
    _write(paths.clean_split("test"), b"test split v1")
    _write(paths.clean_summary, {"sha256": {"test.parquet": file_digest(paths.clean_split("test"))}})
    _write(paths.label_map, {"id2label": {"0": "negative", "1": "positive"}})
    _write(paths.tokenised_dir / "manifest.json", {"cache_key": "tok-key-1"})
    _make_run(paths, "run-A", seed=7)
    return params, paths


def _now(paths: StagePaths) -> dict[str, str]:
    """The lineage register computes from the files on disk (stages.common.lineage_tags)."""
    return {
        "data.md5": "raw-md5",
        "data.clean_sha256": stable_hash(json.loads(paths.clean_summary.read_text())["sha256"]),
        "data.test_sha256": file_digest(paths.clean_split("test")),
        "tokenise.cache_key": json.loads((paths.tokenised_dir / "manifest.json").read_text())["cache_key"],
    }


def test_one_run_whole_passes_and_keeps_the_lineage_it_trained_on(project) -> None:
    _, paths = project
    lineage = verify_run_chain(paths, _now(paths))
    assert lineage["tokenise.cache_key"] == "tok-key-1" and lineage["data.md5"] == "raw-md5"


def _refused(paths: StagePaths, *expected: str) -> str:
    with pytest.raises(MixedRunError) as err:
        verify_run_chain(paths, _now(paths))
    message = str(err.value)
    assert "\n" not in message and message.startswith("register: refusing to register a mix of runs: ")
    assert message.endswith("nothing registered")
    for text in expected:
        assert text in message, message
    return message


def test_the_issue_mix_another_run_trained_after_this_one_was_evaluated(project) -> None:
    # Run B (seed 8) overwrote the model and train summary; evaluate and export still hold run A's.
    _, paths = project
    _write(paths.model_dir / "model.safetensors", b"weights of run 8")
    _write(paths.train_summary, {"run_id": "run-B", "provenance": train_record(paths, "run-B", _now(paths))})
    _refused(paths, f"{paths.gate} comes from training run run-A, but {paths.train_summary} is run run-B", "1 more")


def test_metrics_written_by_another_evaluation_are_refused(project) -> None:
    _, paths = project
    _write(paths.metrics, {"accuracy": 0.99, "macro_f1": 0.99, "rows": 80})
    _refused(paths, f"{paths.metrics} is not the file evaluate wrote for run run-A")


def test_an_onnx_file_replaced_after_export_is_refused(project) -> None:
    _, paths = project
    _write(paths.onnx_model, b"onnx of another run")
    _refused(paths, f"{paths.onnx_model} is not the file export wrote for run run-A")


def test_an_export_of_another_model_under_the_same_run_id_is_refused(project) -> None:
    _, paths = project
    _write(paths.model_dir / "model.safetensors", b"resumed and changed")
    write_export_record(paths, "run-A")  # exported from a model train did not write
    _write(paths.model_dir / "model.safetensors", b"weights of run 7")
    _refused(paths, f"{paths.export_dir / 'provenance.json'} used model")


def test_a_test_split_other_than_the_scored_one_is_refused(project) -> None:
    _, paths = project
    _write(paths.clean_split("test"), b"test split v2")
    _refused(paths, f"{paths.clean_split('test')} is not the test split run run-A was scored on")


def test_artifacts_without_provenance_are_refused(project) -> None:
    _, paths = project
    gate = json.loads(paths.gate.read_text())
    del gate["provenance"]
    _write(paths.gate, gate)
    with pytest.raises(MixedRunError, match="records no provenance"):
        verify_run_chain(paths, _now(paths))


def test_run_register_refuses_a_mix_before_touching_the_registry(project, monkeypatch: pytest.MonkeyPatch) -> None:
    """The call site: `nlpops register` on mixed artifacts registers nothing; on one run it tags that run."""
    import pipelines.registry
    import pipelines.stores
    import pipelines.tracking
    from pipelines.stages.register import run_register

    params, paths = project
    registered: list[dict[str, str]] = []

    def fake_register(name: str, run_id: str, log_model: Any, tags: dict[str, str], *a: Any, **k: Any) -> dict:
        registered.append({**tags, "run_id": run_id})
        return {"name": name, "version": "1", "promoted": False, "champion": None, "gate": {"passed": True}}

    monkeypatch.setattr(pipelines.tracking, "configure_tracking", lambda params: "test")
    monkeypatch.setattr(pipelines.registry, "register_challenger", fake_register)
    # the fake runs exist on no store: read the summary as it is (no re-log onto the store, pipelines/stores.py)
    monkeypatch.setattr(
        pipelines.stores, "training_summary_on_store", lambda p: json.loads(paths.train_summary.read_text())
    )
    _write(paths.metrics, {"accuracy": 0.99, "macro_f1": 0.99, "rows": 80})  # another evaluation's metrics
    with pytest.raises(MixedRunError, match="is not the file evaluate wrote for run run-A"):
        run_register(params)
    assert registered == [] and not paths.registration.exists()

    _make_run(paths, "run-A", seed=7)  # one run, whole
    run_register(params)
    assert len(registered) == 1 and registered[0]["run_id"] == "run-A"
    assert registered[0]["tokenise.cache_key"] == "tok-key-1"
    assert registered[0]["metric.macro_f1"] == str(0.4 + 7 / 100)


def test_file_digest_reuses_a_large_files_digest_only_while_the_file_is_unchanged(tmp_path: Path) -> None:
    """A run hashes the same model files for several lineage records: the second read is skipped, but any rewrite
    (in place with the same size and a restored mtime, or a new file renamed over it) is hashed again."""
    import hashlib
    import os
    import time

    from pipelines import hashing

    big = tmp_path / "model.safetensors"
    data = bytes(range(256)) * (hashing._MEMO_MIN_BYTES // 256 + 1)
    big.write_bytes(data)
    assert file_digest(big) == hashlib.sha256(data).hexdigest()
    reads: list[int] = []
    real_new = hashlib.new
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(hashing.hashlib, "new", lambda name: reads.append(1) or real_new(name))
        assert file_digest(big) == hashlib.sha256(data).hexdigest() and reads == []  # reused
        assert file_digest(big, "md5") == hashlib.md5(data).hexdigest() and reads == [1]  # another algorithm
        stat = big.stat()
        time.sleep(0.05)  # past the file system's timestamp tick (coarse clocks: a few ms)
        changed = b"x" + data[1:]
        big.write_bytes(changed)  # same size, in place, mtime set back: ctime still moves
        os.utime(big, ns=(stat.st_atime_ns, stat.st_mtime_ns))
        assert file_digest(big) == hashlib.sha256(changed).hexdigest()
        other = tmp_path / "new.safetensors"
        other.write_bytes(data)
        other.replace(big)  # atomic rename over it: another inode
        assert file_digest(big) == hashlib.sha256(data).hexdigest()
        small = tmp_path / "config.json"
        small.write_text("{}")
        before = len(reads)
        file_digest(small)
        file_digest(small)
        assert len(reads) == before + 2  # small files are simply re-read
