"""Sequence to sequence through the whole Prefect flow, as a user runs it: a JSONL file of (source, target) pairs in
(a synthetic task: every letter of the source spelled as another letter, a fixed substitution), a registered ONNX
champion out that learnt it (BLEU well above the copy-the-source floor, ONNX beam search token-identical to torch's
`generate` on the validation split) and `nlpops predict` printing the generated text (bad seq2seq input: the
corpus in tests/data/bad). The model is a tiny random BERT encoder built here, warm-started into BERT2BERT
(the default path for an encoder folder), one layer and 32 hidden units to keep the run short."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import clean_env, copy_repo, git

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
MODEL_NAME = "e2e-seq2seq"
ALPHABET = "abcdefgh"
SUBSTITUTE = dict(zip(ALPHABET, "fhgabedc", strict=True))  # a fixed permutation: the task to learn


def make_pairs(n: int, seed: int = 0) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        letters = [rng.choice(ALPHABET) for _ in range(rng.randint(4, 6))]
        rows.append({"source": " ".join(letters), "target": " ".join(SUBSTITUTE[c] for c in letters)})
    return rows


def build_tiny_encoder(path: Path) -> Path:
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *ALPHABET]
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=32,
    )
    torch.manual_seed(0)
    BertModel(config).save_pretrained(path)
    return path


def nlpops(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "nlpops"), *args],
        cwd=project,
        env=clean_env(NLPOPS_ACTOR="e2e-seq2seq-test"),
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = copy_repo(tmp_path_factory.mktemp("s2s") / "project", skip=("tests/", "demo/", "data/"))
    model_dir = build_tiny_encoder(root.parent / "tiny-bert")
    (root / "incoming").mkdir()
    (root / "incoming" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in make_pairs(360)))
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["project"]["registered_model"] = MODEL_NAME
    params["data"] = {"path": "incoming/pairs.jsonl"}
    params["task"] = {
        "type": "seq2seq",
        "max_target_length": 8,
        "validation_generate_rows": 40,
        "generate": {"num_beams": 2, "max_new_tokens": 8, "no_repeat_ngram_size": 0},
        # learned at training (every letter is some target's letter its source lacks), kept with the model, applied
        # by torch and the ONNX runtime alike: the flow carries it from train to serving.json
        "output_vocabulary": 8,
        "output_vocabulary_in_loss": True,
    }
    params["validate"].update(min_rows=50)
    params["clean"].update(validation_size=0.15, test_size=0.15)
    params["tokenise"]["max_length"] = 16
    params["model"].update(path=str(model_dir), dropout=0.0)
    params["train"].update(
        epochs=10,
        learning_rate=5e-3,
        batch_size=16,
        warmup_ratio=0.0,
        early_stopping_patience=0,
        early_stopping_metric=None,
    )
    params["gate"].update(metric=None, min_score=0.3, max_slice_drop=None, max_latency_ms=None)
    params["export"].update(parity_rows=40, latency_runs=5)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "seq2seq project")
    return root


@pytest.fixture(scope="module")
def first_run(project: Path) -> subprocess.CompletedProcess[str]:
    return nlpops(project, "run")


def _client(project: Path):
    from mlflow import MlflowClient

    uri = f"sqlite:///{project / '.nlpops' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def test_pairs_file_becomes_a_registered_onnx_champion_that_beats_copying(project: Path, first_run) -> None:
    assert first_run.returncode == 0, first_run.stdout[-3000:] + first_run.stderr[-3000:]
    assert "gate      PASSED" in first_run.stdout, first_run.stdout
    metrics = json.loads((project / "artifacts" / "evaluate" / "metrics.json").read_text())
    assert set(metrics) >= {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "gen_len", "copy_bleu", "copy_rougeL"}
    assert metrics["bleu"] > metrics["copy_bleu"] + 0.3, metrics  # it learnt the substitution, not to copy
    assert metrics["chrf"] > metrics["copy_chrf"], metrics
    parity = json.loads((project / "artifacts" / "export" / "parity.json").read_text())
    assert parity["passed"] and parity["label_mismatches"] == 0 and parity["rows"] >= 32, parity
    assert parity["split"] == "validation" and parity["generation"]["num_beams"] == 2
    export = project / "artifacts" / "export"
    assert (export / "decoder.onnx").is_file()
    serving = json.loads((export / "serving.json").read_text())
    assert serving["task"] == "seq2seq" and serving["decoder_input_names"][0] == "decoder_input_ids"
    vocabulary = serving["generation"]["vocabulary"]
    assert sorted(vocabulary) == list(range(5, 13)) and serving["generation"]["source_bias_normalised"]  # the letters
    champion = _client(project).get_model_version_by_alias(MODEL_NAME, "champion")
    assert champion.tags["task.type"] == "seq2seq"
    assert float(champion.tags["metric.bleu"]) == pytest.approx(metrics["bleu"])
    generations = json.loads((project / "artifacts" / "evaluate" / "views" / "generations.json").read_text())
    assert generations and {"source", "target", "generated"} <= set(generations[0])


def test_predict_prints_the_generated_text_and_json_adds_scores_and_timings(
    project: Path, first_run, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    done = nlpops(project, "predict", "b d a c")
    assert done.returncode == 0, done.stderr
    expected = " ".join(SUBSTITUTE[c] for c in ("b", "d", "a", "c"))
    assert done.stdout.strip() == expected, done.stdout
    # --json through the CLI entry point in this process (a second subprocess would cost ~10 s of imports)
    from pipelines.cli import main

    saved = dict(os.environ)
    for name in [k for k in os.environ if k.startswith(("MLFLOW_", "PREFECT_"))]:  # left by earlier in-process tests
        monkeypatch.delenv(name)
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["nlpops", "predict", "b d a c", "--json"])
    try:
        main()
    finally:
        os.environ.clear()
        os.environ.update(saved)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["model"] == f"{MODEL_NAME} v1" and result["text"] == "b d a c"
    assert result["generated_text"] == expected and result["tokens"] == 5  # 4 letters and EOS
    assert {"score", "latency_ms", "tokens_per_s"} <= set(result)
