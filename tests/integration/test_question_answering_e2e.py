"""Question answering through the whole Prefect flow, as a user runs it: a small SQuAD 2.0 file in (generated here,
answerable and unanswerable questions, several articles), a registered ONNX champion out (parity passed, the null
threshold tuned on validation and shipped in serving.json), `nlpops predict --question --context` and JSONL on
stdin, and a misplaced answer refused in one line with the registry untouched. A tiny random BERT built here,
max_length 64 and doc_stride 16 keep it short."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, copy_repo, git

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "e2e-qa"
PLACES = ["alba", "brin", "cora", "dova", "elm", "fenn", "gale", "holt", "isla", "jura", "kent", "lorn", "mora", "nash"]
FILLER = ["it", "is", "a", "quiet", "land", "with", "hills", "and", "farms", "people", "live", "there", "in", "the"]


def make_squad(seed: int = 0) -> dict:
    """Articles of a few paragraphs; 'what is the capital of X?' is answerable, 'who is the king of X?' is not."""
    rng = random.Random(seed)
    data = []
    for a, place in enumerate(PLACES):
        paragraphs = []
        for p in range(3):
            city = f"{place}ton{p}"
            filler = " ".join(rng.choice(FILLER) for _ in range(rng.randint(3, 40)))
            context = f"{filler}. the capital of {place}{p} is {city}. {' '.join(rng.sample(FILLER, 6))}."
            start = context.index(f" {city}.") + 1
            qas = [
                {
                    "id": f"{a}-{p}-cap",
                    "question": f"what is the capital of {place}{p}?",
                    "answers": [{"text": city, "answer_start": start}],
                },
                {"id": f"{a}-{p}-king", "question": f"who is the king of {place}{p}?", "answers": []},
            ]
            paragraphs.append({"context": context, "qas": qas})
        data.append({"title": place, "paragraphs": paragraphs})
    return {"version": "v2.0", "data": data}


def build_tiny_qa_model(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertForQuestionAnswering, BertTokenizerFast

    chars = list("abcdefghijklmnopqrstuvwxyz0123456789")
    words = ["what", "who", "is", "the", "capital", "king", "of", *FILLER]
    vocab = list(
        dict.fromkeys(
            ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words, *chars, *(f"##{c}" for c in chars), ".", "?"]
        )
    )
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=96,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    BertForQuestionAnswering(config).save_pretrained(path)
    return path


def nlpops(project: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nlpops"), *args],
        cwd=project,
        env=clean_env(NLPOPS_ACTOR="e2e-qa-test"),
        capture_output=True,
        text=True,
        input=stdin,
        timeout=900,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("qa") / "project", skip=("tests/", "demo/", "data/"))
    model_dir = build_tiny_qa_model(root.parent / "tiny-qa-bert")
    (root / "incoming").mkdir()
    (root / "incoming" / "squad.json").write_text(json.dumps(make_squad()), encoding="utf-8")
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"]["registered_model"] = MODEL_NAME
    params["data"] = {"path": "incoming/squad.json", "format": "squad"}
    params["task"] = {"type": "question_answering", "max_length": 64, "doc_stride": 16}
    params["validate"].update(min_rows=20)
    params["clean"].update(validation_size=0.15, test_size=0.15)
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(
        epochs=15,
        learning_rate=3e-3,
        batch_size=8,
        warmup_ratio=0.0,
        early_stopping_patience=0,
        early_stopping_metric=None,
    )
    params["gate"].update(metric=None, min_score=0.5, max_slice_drop=None)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "qa project")
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> subprocess.CompletedProcess[str]:
    return nlpops(project, "run")


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_squad_file_becomes_a_registered_onnx_champion(project: Path, first_run) -> None:
    assert first_run.returncode == 0, first_run.stdout[-3000:] + first_run.stderr[-3000:]
    assert "gate      PASSED" in first_run.stdout, first_run.stdout
    metrics = json.loads((project / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) >= {"f1", "exact", "has_ans_f1", "no_ans_f1", "best_f1_thresh"}
    assert metrics["f1"] >= 0.5, metrics  # always-no-answer scores 0.5 here; it must do at least that
    assert metrics["has_ans_f1"] > 0.0, metrics  # and answer some questions
    clean = json.loads((project / "artifacts" / "clean" / "summary.json").read_text())
    assert clean["split_by"] == "title"
    parity = json.loads((project / "artifacts" / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["label_mismatches"] == 0
    serving = json.loads((project / "artifacts" / "export" / "serving.json").read_text())
    assert serving["task"] == "question_answering" and serving["max_length"] == 64
    assert serving["threshold_source"] == "tuned on validation"
    assert isinstance(serving["null_score_diff_threshold"], float)
    champion = _client(project).get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.tags["task.type"] == "question_answering"
    assert float(champion.tags["metric.f1"]) == pytest.approx(metrics["f1"])
    slices = json.loads((project / "artifacts" / "evaluate" / "slices.json").read_text())["slices"]
    assert {"answerable=yes", "answerable=no"} <= set(slices)


def test_predict_with_question_and_context_and_jsonl_stdin(project: Path, first_run) -> None:
    context = "it is a quiet land. the capital of alba0 is albaton0. people live there."
    done = nlpops(project, "predict", "--question", "what is the capital of alba0?", "--context", context, "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.splitlines()[0])
    assert result["model"] == f"{MODEL_NAME} v1"
    assert set(result) >= {"answer", "score", "start", "end"}
    if result["answer"]:
        assert context[result["start"] : result["end"]] == result["answer"]
    lines = "\n".join(json.dumps({"question": q, "context": context}) for q in ("who is the king of alba0?", "what?"))
    piped = nlpops(project, "predict", stdin=lines + "\n")
    assert piped.returncode == 0, piped.stderr
    assert len(piped.stdout.strip().splitlines()) == 2
    half = nlpops(project, "predict", "--question", "what?")
    assert half.returncode != 0 and "--context" in half.stderr and "Traceback" not in half.stderr


def test_misplaced_answer_is_one_message_and_the_champion_stays(project: Path, first_run) -> None:
    before = _client(project).get_model_version_by_alias(MODEL_NAME, "champion").version
    doc = make_squad()
    doc["data"][2]["paragraphs"][1]["qas"][0]["answers"][0]["answer_start"] += 40
    (project / "incoming" / "bad.json").write_text(json.dumps(doc), encoding="utf-8")
    done = nlpops(project, "run", "--set", "data.path=incoming/bad.json")
    assert done.returncode == 2, done.stdout + done.stderr
    message = done.stderr.strip()
    assert "\n" not in message and "bad.json" in message and "data[2].paragraphs[1].qas[0]" in message, message
    assert "'2-1-cap'" in message and "Traceback" not in done.stderr
    assert _client(project).get_model_version_by_alias(MODEL_NAME, "champion").version == before
