"""The run report and the model card (pipelines/report/, pipelines/stages/report.py), built from a tiny synthetic
run's stage outputs (JSON written here: no training), plus the report opened in headless Chromium and
`nlpops models card` against a real MLflow store."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
import yaml

from pipelines.config import Params
from pipelines.evaluate import calibration_summary
from pipelines.paths import StagePaths
from pipelines.report.build import collect, render_report, write_report
from pipelines.report.card import render_card
from pipelines.stages.report import REPORTED
from pipelines.tasks.catalog import get_task

RUN_ID = "0123456789abcdef0123456789abcdef"


def _write(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def write_synthetic_run(root: Path, run_id: str = RUN_ID, name: str = "demo", version: str = "3") -> StagePaths:
    """Every output the report reads, as a finished text-classification run would leave them."""
    paths = StagePaths(root=root, state=root.parent / ".nlpops")
    checks = [{"check": "text_not_empty", "column": "text", "success": True}]
    _write(
        paths.validation_report,
        {
            "success": True,
            "files": [{"path": "data.csv", "role": "train", "rows": 210, "success": True, "checks": checks}],
        },
    )
    _write(
        paths.clean_summary,
        {
            "rows_in": 210,
            "rows_out": 200,
            "quarantined": 4,
            "quarantine_share": 0.019,
            "quarantine_reasons": {"empty_text": 3, "conflicting_labels": 1},
            "dropped_duplicates": 6,
            "dropped_near_duplicates": 0,
            "leakage_removed_from_train": 0,
            "splits": {"train": 130, "validation": 30, "test": 40},
            "class_counts": {"train": {"negative": 65, "positive": 65}, "test": {"negative": 20, "positive": 20}},
            "labels": ["negative", "positive"],
            "inputs": [{"path": "data.csv", "role": "train", "rows_in": 210, "quarantined_empty_text": 3}],
        },
    )
    _write(
        paths.tokenised_dir / "manifest.json",
        {"max_length": 128, "tokenizer": "tiny", "splits": {"test": {"rows": 40, "features": 40, "truncated_rows": 2}}},
    )
    history = [
        {"epoch": e, "step": 9 * e, "train_loss": 0.7 / e, "val_loss": 0.65 / e, "val_macro_f1": 0.5 + 0.1 * e}
        for e in (1, 2, 3)
    ]
    _write(paths.train_history, {"history": history})
    _write(
        paths.train_summary,
        {
            "run_id": run_id,
            "best_epoch": 3,
            "epochs_run": 3,
            "best_metric": {"name": "macro_f1", "value": 0.8},
            "train_seconds": 4.2,
            "base_model": "tiny-bert",
            "train_rows": 130,
            "recipe": "default",
            "history": history,
        },
    )
    _write(paths.metrics, {"macro_f1": 0.8, "accuracy": 0.8, "test_rows": 40})
    slices = {
        "class=negative": {"value": 0.78, "rows": 20, "metric": "f1"},
        "class=positive": {"value": 0.82, "rows": 20, "metric": "f1"},
        "length=long": {"value": None, "rows": 0, "metric": "macro_f1"},
    }
    _write(paths.slices, {"slices": slices, "notes": []})
    gate_checks = [
        {"name": "min_score", "passed": True, "detail": "macro_f1 0.8000 >= min_score 0.7000"},
        {
            "name": "slice:class=negative",
            "passed": False,
            "detail": "slice class=negative f1 0.7800 vs champion v2 0.9000: drop 0.1200 > max_slice_drop 0.0500",
            "values": {"challenger": 0.78, "champion": 0.9},
        },
    ]
    gate = {"passed": False, "metric": "macro_f1", "challenger": 0.8, "checks": gate_checks, "final": False}
    _write(paths.gate, {**gate, "pending": ["onnx_parity", "latency"], "provenance": {"run_id": run_id}})
    _write(
        paths.evaluation_views / "per_class.json",
        {
            "per_class": {
                "negative": {"precision": 0.8, "recall": 0.78, "f1": 0.78, "support": 20},
                "positive": {"precision": 0.79, "recall": 0.82, "f1": 0.82, "support": 20},
            },
            "confusion_matrix": [[16, 4], [4, 16]],
        },
    )
    confidence = [0.55 + 0.01 * i for i in range(40)]
    _write(paths.calibration, calibration_summary(confidence, [i % 5 != 0 for i in range(40)]))
    _write(
        paths.parity_report,
        {
            "passed": True,
            "max_abs_diff": 2e-7,
            "atol": 1e-4,
            "rows": 40,
            "label_mismatches": 0,
            "opset": 17,
            "onnx_bytes": 120000,
            "latency_p50_ms": 0.3,
            "latency_p95_ms": 1.2,
            "onnx_sha256": "ab" * 32,
        },
    )
    _write(paths.export_dir / "provenance.json", {"run_id": run_id})
    final = {**gate, "final": True, "champion_version": "2", "champion": 0.85, "champion_basis": "recorded metrics"}
    _write(
        paths.registration,
        {"name": name, "version": version, "run_id": run_id, "promoted": False, "champion": "2", "gate": final},
    )
    return paths


def _params(root: Path, **project: str) -> Params:
    return Params.model_validate({"data": {"path": "data.csv"}, "project": {"artifacts_dir": str(root), **project}})


class _Dom(HTMLParser):
    """Elements of a page: tag -> list of attribute dicts, and the section ids."""

    def __init__(self) -> None:
        super().__init__()
        self.elements: dict[str, list[dict[str, str]]] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.elements.setdefault(tag, []).append({k: v or "" for k, v in attrs})


def _dom(text: str) -> _Dom:
    dom = _Dom()
    dom.feed(text)
    return dom


def _plots(dom: _Dom) -> list[dict[str, str]]:
    return [a for a in dom.elements.get("svg", []) if "plot" in a.get("class", "")]


def test_report_of_a_complete_run_has_every_section_and_its_plots(tmp_path: Path) -> None:
    paths = write_synthetic_run(tmp_path / "artifacts")
    params = _params(paths.root)
    facts = collect(paths, REPORTED)
    assert not facts.missing
    page = render_report(facts, params, get_task(params))
    dom = _dom(page)
    ids = {a.get("id") for a in dom.elements["section"]}
    assert {"summary", "training", "evaluation", "slices", "calibration", "data-quality", "gate", "onnx"} <= ids
    kinds = {a["data-kind"]: int(a["data-points"]) for a in _plots(dom)}
    assert kinds["line"] > 0 and kinds["heatmap"] == 4 and kinds["bar"] == 10 and kinds["hbar"] > 0
    assert "Complete run" in page and "demo v3" in page
    assert "drop 0.1200 &gt; max_slice_drop" in page  # the failed slice check, escaped
    assert "conflicting_labels" in page and "dropped duplicates" in page  # data quality: why rows went
    assert "latency p95 (batch 1)" in page and "1.20 ms" in page
    assert not re.search(r'(src|href)="(https?:)?//', page), "the report must not load anything from the network"


def test_partial_report_leaves_out_what_the_failed_run_did_not_make(tmp_path: Path) -> None:
    paths = write_synthetic_run(tmp_path / "artifacts")
    params = _params(paths.root)
    old = paths.parity_report.stat().st_mtime
    os.utime(paths.parity_report, (old - 3600, old - 3600))  # parity.json left by an earlier run
    facts = collect(paths, REPORTED, failed="export", since=old - 10)
    facts.failed = ("export", "parity failed")
    assert "parity" not in facts.data and "registration" not in facts.data and "metrics" in facts.data
    assert "left by an earlier run" in facts.missing["parity"] and "export failed" in facts.missing["registration"]
    written = write_report(facts, params, get_task(params), tmp_path / "report")
    page = written["report"].read_text()
    assert "PARTIAL: the run stopped at export: parity failed" in page
    assert "not available" in page and "not registered in this run" in page
    assert written["learning_curves"].read_text().startswith("<?xml")


def test_outputs_of_another_training_run_are_not_mixed_in(tmp_path: Path) -> None:
    paths = write_synthetic_run(tmp_path / "artifacts")
    _write(paths.registration, {"name": "demo", "version": "2", "run_id": "f" * 32})
    facts = collect(paths, REPORTED)
    assert "registration" not in facts.data and "from another training run" in facts.missing["registration"]


def test_task_views_for_token_classification_question_answering_and_the_generic_default(tmp_path: Path) -> None:
    views = tmp_path / "views"
    views.mkdir()
    (views / "per_type.json").write_text(
        json.dumps([{"type": "PER", "precision": 0.9, "recall": 0.8, "f1": 0.85, "support": 12}])
    )
    ner = get_task("token_classification").report_sections({}, {}, views)
    assert ner[0].title.startswith("Per entity type") and "PER" in "".join(ner[0].blocks)
    qa_metrics = {"has_ans_f1": 0.7, "no_ans_f1": 0.9, "has_ans_exact": 0.6, "no_ans_exact": 0.9, "f1": 0.8}
    qa_slices = {
        "slices": {
            "answerable=yes": {"rows": 30},
            "answerable=no": {"rows": 10},
            "question=who": {"rows": 5, "value": 0.5},
        }
    }
    qa = get_task("question_answering").report_sections(qa_metrics, qa_slices, views)
    text = "".join(b for s in qa for b in s.blocks)
    assert "HasAns (answerable)" in text and "NoAns (unanswerable)" in text and "who" in text
    (views / "plot.png").write_bytes(b"\x89PNG\r\n\x1a\nfake")
    from pipelines.tasks.base import Task

    generic = Task.report_sections(get_task("question_answering"), {}, {}, views)  # what a task without views gets
    assert generic and 'src="data:image/png;base64,' in generic[0].blocks[0]


def test_model_card_has_the_hugging_face_layout_and_the_run_facts(tmp_path: Path) -> None:
    paths = write_synthetic_run(tmp_path / "artifacts")
    params = _params(paths.root)
    facts = collect(paths, REPORTED)
    facts.lineage = {"data.md5": "d" * 32, "params.hash": "p" * 64, "code.sha256": "c" * 64, "git.commit": "abc123"}
    card = render_card(facts, params, get_task(params))
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    assert meta["pipeline_tag"] == "text-classification" and meta["base_model"] == "tiny-bert"
    results = meta["model-index"][0]["results"][0]
    assert {m["type"]: m["value"] for m in results["metrics"]} == {"macro_f1": 0.8, "accuracy": 0.8}
    for heading in (
        "# demo v3",
        "## Intended use",
        "## Training data",
        "## Training procedure",
        "## Evaluation",
        "## Limitations",
        "## Lineage",
    ):
        assert heading in body, heading
    assert "| train | data.csv | – | 210 |" in body  # each file read: role, path, md5, rows
    assert "210 rows read, 200 kept; 4 quarantined (empty_text 3, conflicting_labels 1)" in body
    assert "| class=negative | f1 | 20 | 0.7800 | 0.9000 |" in body  # a slice with the champion's value
    assert "Gate against the champion: **failed**" in body
    assert "p" * 64 in body and "c" * 64 in body and RUN_ID in body and "abc123" in body
    assert "2 rows reached the 128-token limit" in body


# ------------------------------------------------------------------------------------------------ headless Chromium

CHROMIUM = ("chromium", "chromium-browser", "google-chrome")


def _find_chromium() -> str | None:
    return next((p for p in map(shutil.which, CHROMIUM) if p), None)


@pytest.fixture(scope="session")
def chromium() -> str:
    """The Debian `chromium` package: installed here when absent (as root, with apt-get); skipped only when it
    cannot be had."""
    found = _find_chromium()
    if found:
        return found
    if not hasattr(os, "geteuid") or os.geteuid() != 0 or not shutil.which("apt-get"):
        pytest.skip("chromium is not installed and cannot be installed here (needs root and apt-get)")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = ""
    for command in (
        ["apt-get", "install", "-y", "-q", "chromium"],
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "chromium"],
    ):
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1200)
        log = (done.stdout + done.stderr)[-500:]
        if _find_chromium():
            break
    found = _find_chromium()
    if not found:
        pytest.skip(f"chromium could not be installed with apt-get: {log}")
    return found


def _headless(binary: str, *args: str) -> subprocess.CompletedProcess[str]:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run", "--mute-audio"]
    return subprocess.run([binary, *flags, *args], capture_output=True, text=True, timeout=120)


def test_report_renders_in_headless_chromium_with_its_plots(tmp_path: Path, chromium: str) -> None:
    paths = write_synthetic_run(tmp_path / "artifacts")
    params = _params(paths.root)
    index = write_report(collect(paths, REPORTED), params, get_task(params), tmp_path / "report")["report"]
    shot = tmp_path / "report.png"
    done = _headless(chromium, "--window-size=1280,4000", f"--screenshot={shot}", index.as_uri())
    assert shot.is_file() and shot.stat().st_size > 20_000, done.stderr[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    done = _headless(chromium, "--dump-dom", index.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = _dom(done.stdout)  # the DOM as Chromium built it from the page
    plots = _plots(dom)
    assert len(plots) >= 6 and all(int(p["data-points"]) > 0 for p in plots), plots
    assert {p["data-kind"] for p in plots} >= {"line", "bar", "heatmap", "hbar"}
    assert len(dom.elements.get("polyline", [])) >= 4 and len(dom.elements.get("rect", [])) >= 10
    sections = {a.get("id") for a in dom.elements["section"]}
    assert {"training", "evaluation", "slices", "calibration", "data-quality", "gate", "onnx"} <= sections
    print(f"report screenshot: {shot}")


# ------------------------------------------------------------------------------------------------ stage + CLI


def _cli(*args: str, cwd: Path) -> tuple[int, str, str]:
    """`nlpops ARGS` in-process (its real exit-code path: main() → sys.exit), environment restored afterwards."""
    import contextlib
    import io
    import sys

    from pipelines import progress
    from pipelines.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = Path.cwd()
    with mock.patch.dict(os.environ), mock.patch.object(sys, "argv", ["nlpops", *args]):
        os.chdir(cwd)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                main()
        except SystemExit as exc:
            code = int(exc.code or 0)
        finally:
            os.chdir(old)
            progress.reset()
    return code, out.getvalue(), err.getvalue()


def test_report_stage_logs_the_report_and_models_card_prints_the_card(tmp_path: Path) -> None:
    import mlflow
    from mlflow import MlflowClient

    from pipelines.stages.report import run_report

    project = tmp_path / "project"
    project.mkdir()
    state = project / ".nlpops"
    uri = f"sqlite:///{state / 'mlflow.db'}"
    state.mkdir()
    (project / "params.yaml").write_text(
        yaml.safe_dump({"data": {"path": "data.csv"}, "project": {"registered_model": "demo", "experiment": "t"}})
    )
    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": uri, "MLFLOW_REGISTRY_URI": uri}):
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)  # an earlier test in this process may have pointed the registry elsewhere
        client = MlflowClient(uri, uri)
        experiment = client.create_experiment("t", artifact_location=(state / "mlartifacts").as_uri())
        run_id = client.create_run(experiment).info.run_id
        client.create_registered_model("demo")
        client.create_model_version("demo", f"runs:/{run_id}/model", run_id)  # v1: registered before cards existed
        client.create_model_version("demo", f"runs:/{run_id}/model", run_id)
        paths = write_synthetic_run(project / "artifacts", run_id=run_id, version="2")
        params = Params.model_validate(
            {
                "data": {"path": "data.csv"},
                "project": {
                    "artifacts_dir": str(paths.root),
                    "state_dir": str(state),
                    "registered_model": "demo",
                    "experiment": "t",
                },
            }
        )
        summary = run_report(params)
        assert summary["logged_to_mlflow"] and summary["version"] == "2"
        listed = {a.path for a in client.list_artifacts(run_id, "report")}
        assert listed == {"report/index.html", "report/learning_curves.svg"}
        assert client.get_model_version("demo", "2").tags["model_card"] == "model_card/README.md"
        code, out, err = _cli("models", "card", "2", cwd=project)
        assert code == 0, err
        assert out.strip() == paths.model_card.read_text().strip() and out.startswith("---\n")
        code, out, err = _cli("models", "card", "champion", cwd=project)  # nothing promoted
        assert code == 2 and "'demo' has no 'champion' version yet" in err and "Traceback" not in err
        client.set_registered_model_alias("demo", "champion", "2")
        code, out, _ = _cli("models", "card", "champion", cwd=project)
        assert code == 0 and "# demo v2" in out
        code, _, err = _cli("models", "card", "9", cwd=project)
        assert code == 2 and err.strip() == "error: registry: 'demo' has no version '9' (see `nlpops models list`)"
        code, _, err = _cli("models", "card", "1", cwd=project)
        assert code == 2 and "demo v1 has no model card" in err


def test_each_task_gives_confidences_for_the_calibration_view() -> None:
    import numpy as np
    import pandas as pd

    from pipelines.tasks.base import Predictions

    text = get_task("text_classification").confidences(
        Predictions(values=[1, 0], scores=np.array([[0.0, 2.0], [1.0, 0.0]])), pd.DataFrame({"label": [1, 1]})
    )
    assert text is not None and text["correct"] == [True, False] and text["unit"] == "examples"
    assert text["confidence"] == pytest.approx([1 / (1 + np.exp(-2)), 1 / (1 + np.exp(-1))])
    tags = get_task("token_classification").confidences(
        Predictions(values=[["O", "B-PER"], ["O"]], scores=[[0.9, 0.6], [0.7]]),
        pd.DataFrame({"tags": [["O", "I-PER"], ["O"]]}),
    )
    assert tags == {"confidence": [0.9, 0.6, 0.7], "correct": [True, False, True], "unit": "words"}
    answers = get_task("question_answering").confidences(
        Predictions(values=["the Paris", "", "Rome"], scores=[0.8, 0.3, 0.6]),
        pd.DataFrame({"answer_texts": [["Paris"], [], ["Milan"]]}),
    )
    assert answers == {"confidence": [0.8, 0.6], "correct": [True, False], "unit": "answered questions"}
    assert get_task("text_classification").confidences(Predictions(values=[1]), pd.DataFrame({"label": [1]})) is None
    summary = calibration_summary([0.95, 0.95, 0.55, 0.65], [True, False, True, True], bins=10)
    assert summary["count"] == 4 and [b["count"] for b in summary["bins"]][5:] == [1, 1, 0, 0, 2]
    assert summary["ece"] == pytest.approx((2 * 0.45 + 0.45 + 0.35) / 4)
