"""Token classification: readers, IOB2 checks and repair, validate/clean, sub-word alignment, windows, strict
seqeval metrics, the Task on a tiny random BERT, ONNX export + parity, and the torch-free runtime."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DataError, DataValidationError
from pipelines.tasks.token_classification.iob import entity_spans, iob_violations, repair_iob
from pipelines.tasks.token_classification.metrics import score_tags
from pipelines.tasks.token_classification.readers import read_conll_text, read_sentences
from pipelines.tasks.token_classification.windows import (
    IGNORE,
    align_labels,
    encode_windows,
    merge_windows,
    split_words,
    window_ranges,
)

REPO = Path(__file__).resolve().parents[2]
TAGS = ["O", "B-LOC", "B-PER", "I-LOC", "I-PER"]
WORDS = ["angela", "merkel", "visited", "paris", "mr", "smith", "met", "in", "berlin", "the", "team", "today"]


def make_params(tmp_path: Path, path: Path, **sections):
    from pipelines.config import Params

    data = {"path": str(path), **sections.pop("data", {})}
    task = {"type": "token_classification", **sections.pop("task", {})}
    return Params.model_validate(
        {
            "project": {"artifacts_dir": str(tmp_path / "artifacts")},
            "data": data,
            "task": task,
            "validate": {"min_rows": 1, "expectations_dir": str(REPO / "expectations"), **sections.pop("validate", {})},
            **sections,
        }
    )


def build_tokenizer(path: Path):
    """A tiny BERT WordPiece tokenizer: whole words for the test sentences, letters and ##letters for the rest."""
    from transformers import BertTokenizerFast

    letters = list("abcdefghijklmnopqrstuvwxyz")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *letters, *[f"##{c}" for c in letters], ".", ","]
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def tiny_token_model(tmp_path_factory: pytest.TempPathFactory):
    """(folder, model, tokenizer): a random 2-layer BertForTokenClassification over TAGS."""
    import torch
    from transformers import BertConfig, BertForTokenClassification

    path = tmp_path_factory.mktemp("tiny-token-bert")
    tokenizer = build_tokenizer(path)
    config = BertConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=len(TAGS),
        id2label=dict(enumerate(TAGS)),
        label2id={t: i for i, t in enumerate(TAGS)},
    )
    torch.manual_seed(0)
    model = BertForTokenClassification(config).eval()
    model.save_pretrained(path)
    return path, model, tokenizer


# ----------------------------------------------------------------------------------------------------- readers


def test_conll_reader_docstart_crlf_and_source_lines(tmp_path: Path) -> None:
    text = "-DOCSTART- -X- O\r\n\r\nAngela B-PER\r\nMerkel I-PER\r\n\r\n\r\nParis B-LOC\r\nrocks O\r\n"
    path = tmp_path / "a.conll"
    path.write_bytes(text.encode())
    params = make_params(tmp_path, path)
    frame = read_sentences(path, params.data)
    assert frame["tokens"].tolist() == [["Angela", "Merkel"], ["Paris", "rocks"]]
    assert frame["tags"].tolist() == [["B-PER", "I-PER"], ["B-LOC", "O"]]  # no '\r' left on the tags
    assert frame["source_line"].tolist() == [3, 7]
    assert frame.attrs["format"] == "conll"


def test_conll_reader_tag_column_by_index_and_name(tmp_path: Path) -> None:
    text = "EU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n"
    assert read_conll_text(text, "x.conll")["tags"].tolist() == [["B-ORG", "O"], ["B-PER"]]  # -1 = last
    assert read_conll_text(text, "x.conll", tag_column=0)["tags"].tolist() == [["NNP", "VBZ"], ["NNP"]]
    names = ["token", "pos", "chunk", "ner"]
    assert read_conll_text(text, "x.conll", "chunk", names)["tags"].tolist() == [["B-NP", "B-VP"], ["B-NP"]]
    with pytest.raises(DataError, match=r"x.conll: data.tag_column=5 is out of range"):
        read_conll_text(text, "x.conll", tag_column=5)
    with pytest.raises(DataError, match=r"data.tag_column='ner' is not in data.column_names"):
        read_conll_text(text, "x.conll", "ner", None)


def test_conll_reader_bad_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.conll"
    path.write_text("EU NNP B-ORG\nrejects VBZ O\n\nGerman JJ\n", encoding="utf-8")
    params = make_params(tmp_path, path)
    with pytest.raises(DataError, match=r"bad.conll: line 4: 2 column\(s\), expected 3 like line 1"):
        read_sentences(path, params.data)


def test_jsonl_and_parquet_readers(tmp_path: Path) -> None:
    rows = [{"words": ["Paris", "rocks"], "ner": ["B-LOC", "O"]}, {"words": ["Hi"], "ner": ["O"]}]
    path = tmp_path / "a.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    params = make_params(tmp_path, path, data={"tokens_column": "words", "tags_column": "ner"})
    frame = read_sentences(path, params.data)
    assert frame["tokens"].tolist() == [["Paris", "rocks"], ["Hi"]] and frame["source_line"].tolist() == [1, 2]
    pq = tmp_path / "a.parquet"
    pd.DataFrame(rows).to_parquet(pq)
    assert read_sentences(pq, params.data)["tags"].tolist() == [["B-LOC", "O"], ["O"]]
    path.write_text(json.dumps({"words": ["a", "b"], "ner": ["O"]}) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"a.jsonl: line 1: 2 tokens but 1 tags"):
        read_sentences(path, params.data)


# ------------------------------------------------------------------------------------------------------ IOB2


def test_iob_violations_and_repair() -> None:
    tags = ["I-PER", "O", "B-PER", "I-LOC", "I-LOC", "O", "B-ORG", "I-ORG", "PER"]
    found = [(v.index, v.after) for v in iob_violations(tags)]
    assert found == [(0, "start"), (3, "B-PER"), (8, "malformed")]
    repaired, changed = repair_iob(["O", "I-PER", "I-PER", "B-LOC", "I-PER", "O"])
    assert repaired == ["O", "B-PER", "I-PER", "B-LOC", "B-PER", "O"] and changed == 2
    assert entity_spans(repaired) == [("PER", 1, 3), ("LOC", 3, 4), ("PER", 4, 5)]


def _write_conll(path: Path, sentences: list[list[tuple[str, str]]]) -> Path:
    path.write_text("\n\n".join("\n".join(f"{w} {t}" for w, t in s) for s in sentences) + "\n", encoding="utf-8")
    return path


def test_validate_reports_iob_violation_with_file_and_line(tmp_path: Path) -> None:
    sentences = [[("Mr", "O"), ("Smith", "B-PER")], [("in", "O"), ("Paris", "B-LOC")], [("the", "O"), ("Lee", "I-PER")]]
    path = _write_conll(tmp_path / "train.conll", sentences)
    params = make_params(tmp_path, path)
    from pipelines.tasks.catalog import get_task

    task = get_task(params)
    with pytest.raises(DataValidationError) as info:
        task.validate_data(tmp_path / "report.json", tmp_path / "docs")
    message = str(info.value)
    assert "train.conll: line 8: I-PER after O (word 'Lee')" in message and "iob_consistency" in message
    report = json.loads((tmp_path / "report.json").read_text())
    failed = [c["check"] for c in report["files"][0]["checks"] if not c["success"]]
    assert failed == ["iob_consistency"] and (tmp_path / "docs" / "index.html").is_file()
    # scheme none (POS tags): the same file passes, BIO is not checked
    summary = get_task(make_params(tmp_path, path, task={"scheme": "none"})).validate_data(tmp_path / "r2.json", None)
    assert summary["success"] and summary["rows"] == 3


def test_validate_tags_outside_declared_set_and_length_bounds(tmp_path: Path) -> None:
    path = _write_conll(tmp_path / "t.conll", [[("Paris", "B-LOC"), ("rocks", "O")], [("Acme", "B-ORG")]])
    from pipelines.tasks.catalog import get_task

    params = make_params(tmp_path, path, data={"labels": ["O", "B-LOC", "I-LOC"]})
    with pytest.raises(
        DataValidationError, match=r"t.conll: line 4: tag 'B-ORG' \(word 'Acme'\) is not in data.labels"
    ):
        get_task(params).validate_data(tmp_path / "report.json", None)
    params = make_params(tmp_path, path, task={"min_tokens": 2})
    with pytest.raises(DataValidationError, match=r"t.conll: line 4: sentence of 1 words, outside task.min_tokens=2"):
        get_task(params).validate_data(tmp_path / "report.json", None)


def test_validate_empty_sentence_in_jsonl(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task

    rows = [{"tokens": ["Paris"], "tags": ["B-LOC"]}, {"tokens": [], "tags": []}, {"tokens": ["x"], "tags": ["O"]}]
    path = tmp_path / "t.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    with pytest.raises(DataValidationError, match=r"t.jsonl: line 2: an empty sentence \[no_empty_sentences"):
        get_task(make_params(tmp_path, path)).validate_data(tmp_path / "report.json", None)


def test_clean_refuses_too_many_quarantined_sentences(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task

    path = _write_conll(tmp_path / "t.conll", [[("a", "O"), ("b", "I-PER")]] * 3 + [[("c", "O")]] * 5)
    with pytest.raises(DataValidationError, match=r"t.conll: 3 of 8 sentences \(37.5%\) quarantined.*iob_violation"):
        get_task(make_params(tmp_path, path)).clean_data(tmp_path / "clean")
    assert not (tmp_path / "clean" / "train.parquet").exists()


def test_clean_repairs_dedups_splits_and_writes_label_map(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task
    from pipelines.tasks.token_classification.clean import SPLITS

    sentences = [[("Mr", "O"), (f"N{i}", "B-PER"), ("in", "O"), (f"P{i}", "B-LOC")] for i in range(40)]
    sentences.append([("Mr", "O"), ("Lee", "I-PER")])  # repaired to B-PER
    sentences.append(list(sentences[0]))  # duplicate
    path = _write_conll(tmp_path / "train.conll", sentences)
    params = make_params(tmp_path, path, clean={"repair_iob": True, "validation_size": 0.1, "test_size": 0.1})
    summary = get_task(params).clean_data(tmp_path / "clean")
    assert summary["iob_repaired"] == 1 and summary["dropped_duplicates"] == 1 and summary["quarantined"] == 0
    assert summary["splits"] == {"train": 33, "validation": 4, "test": 4}
    label_map = json.loads((tmp_path / "clean" / "label_map.json").read_text())
    assert list(label_map["id2label"].values()) == ["O", "B-LOC", "B-PER"]
    frames = {s: pd.read_parquet(tmp_path / "clean" / f"{s}.parquet") for s in SPLITS}
    keys = {s: {" ".join(t) for t in f["tokens"]} for s, f in frames.items()}
    assert not keys["train"] & (keys["validation"] | keys["test"])
    lee = pd.concat(frames.values()).loc[lambda f: f["tokens"].map(lambda t: "Lee" in list(t))]
    assert list(lee["tags"].iloc[0]) == ["O", "B-PER"] and list(lee["tag_ids"].iloc[0]) == [0, 2]

    # without repair the sentence is quarantined (within clean.max_quarantine_share)
    params = make_params(tmp_path, path, clean={"max_quarantine_share": 0.5})
    summary = get_task(params).clean_data(tmp_path / "clean2")
    assert summary["quarantine_reasons"] == {"iob_violation": 1}


def test_clean_honours_given_splits_and_removes_leakage(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task

    train = [[("Mr", "O"), (f"N{i}", "B-PER")] for i in range(10)]
    test = [[("Mr", "O"), ("N3", "B-PER")], [("Mr", "O"), ("X", "B-PER")]]
    val = [[("Mr", "O"), ("Y", "B-PER"), ("in", "O"), ("Z", "B-LOC")]]  # B-LOC not in train: quarantined
    paths = [_write_conll(tmp_path / f"{n}.conll", s) for n, s in (("train", train), ("test", test), ("val", val))]
    val_extra = _write_conll(tmp_path / "val.conll", [*val, [("Mr", "O"), ("W", "B-PER")]])
    params = make_params(
        tmp_path,
        paths[0],
        data={"test_path": str(paths[1]), "validation_path": str(val_extra)},
        clean={"max_quarantine_share": 0.5},
    )
    summary = get_task(params).clean_data(tmp_path / "clean")
    assert summary["leakage_removed_from_train"] == 1
    assert summary["splits"] == {"train": 9, "validation": 1, "test": 2}
    assert summary["quarantine_reasons"] == {"tag_not_in_train": 1}


# ------------------------------------------------------------------------------------------- sub-word alignment


def test_word_ids_alignment_first_subtoken_and_label_all(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "tok")
    words, tags = ["Angela", "Merkelx", "visited", "Parisz"], [2, 4, 0, 1]  # B-PER I-PER O B-LOC
    features = encode_windows(tokenizer, [words], max_length=64, stride=0)
    wids = features["word_ids"][0]
    pieces = tokenizer.convert_ids_to_tokens(features["input_ids"][0])
    assert pieces == ["[CLS]", "angela", "merkel", "##x", "visited", "paris", "##z", "[SEP]"]
    assert wids == [-1, 0, 1, 1, 2, 3, 3, -1]
    assert align_labels(wids, tags, False) == [IGNORE, 2, 4, IGNORE, 0, 1, IGNORE, IGNORE]
    # label_all_tokens: continuation pieces get the word's tag, B-LOC (1) turning into I-LOC (3)
    assert align_labels(wids, tags, True, {1: 3, 2: 4}) == [IGNORE, 2, 4, 4, 0, 1, 3, IGNORE]


def test_task_tokenise_uses_tag_ids_and_label_all_tokens(tmp_path: Path) -> None:
    from pipelines.config import TokeniseConfig
    from pipelines.tasks.catalog import get_task

    tokenizer = build_tokenizer(tmp_path / "tok")
    frame = pd.DataFrame({"tokens": [["Parisz", "in"]], "tags": [["B-LOC", "O"]], "tag_ids": [[1, 0]]})
    frame_i = pd.DataFrame({"tokens": [["Berlin"]], "tags": [["I-LOC"]], "tag_ids": [[3]]})
    both = pd.concat([frame, frame_i], ignore_index=True)
    path = _write_conll(tmp_path / "t.conll", [[("a", "O")]])
    task = get_task(make_params(tmp_path, path, task={"label_all_tokens": True}))
    out = task.tokenise(tokenizer, both, TokeniseConfig(max_length=32))
    assert out["labels"][0] == [IGNORE, 1, 3, 0, IGNORE]  # paris ##z in
    assert out["example_id"] == [0, 1] and out["length"] == [5, 3]
    plain = get_task(make_params(tmp_path, path)).tokenise(tokenizer, both, TokeniseConfig(max_length=32))
    assert plain["labels"][0] == [IGNORE, 1, IGNORE, 0, IGNORE]


# ---------------------------------------------------------------------------------------------------- windows


def test_window_ranges_cover_every_word_with_bounded_overlap() -> None:
    counts = [1, 3, 2, 1, 1, 4, 1, 2, 2, 1, 1, 1]
    for budget, stride in ((6, 0), (6, 3), (5, 2), (8, 4)):
        ranges = window_ranges(counts, budget, stride)
        assert ranges[0][0] == 0 and ranges[-1][1] == len(counts)
        for (s1, e1), (s2, _e2) in itertools.pairwise(ranges):
            assert s1 < s2 <= e1, (budget, stride, ranges)  # progress, no gap
            assert sum(counts[s2:e1]) <= stride  # overlap within the stride
        assert all(sum(counts[s:e]) <= budget for s, e in ranges)


def test_long_sentence_windows_lose_no_word_and_predict_each_once(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "tok")
    words = [w for i in range(30) for w in (("Parisz", "in") if i % 2 else ("met", "Berlin"))]  # 60 words
    features = encode_windows(tokenizer, [words, ["short"]], max_length=16, stride=4)
    windows = [w for w, e in zip(features["word_ids"], features["example_id"], strict=True) if e == 0]
    assert len(windows) > 4 and max(features["length"]) <= 16
    covered = {w for ids in windows for w in ids if w >= 0}
    assert covered == set(range(len(words)))
    assert any(set(a) & set(b) - {-1} for a, b in itertools.pairwise(windows))  # they overlap
    # logits that encode "word index mod 5" at each first sub-token: merged predictions give every word once
    logits = []
    for ids in features["word_ids"]:
        arr = np.zeros((len(ids), 5))
        for j, w in enumerate(ids):
            if w >= 0:
                arr[j, w % 5] = 10.0
        logits.append(arr)
    preds, scores = merge_windows(features["word_ids"], features["example_id"], logits, [len(words), 1])
    assert preds[0].tolist() == [i % 5 for i in range(len(words))] and len(preds[1]) == 1
    assert (scores[0] > 0.99).all()


def test_merge_prefers_the_most_central_window() -> None:
    # word 2 sits at the edge of window A (words 0..2) and in the middle of window B (words 1..3)
    a_ids, b_ids = [-1, 0, 1, 2, -1], [-1, 1, 2, 3, -1]
    a = np.zeros((5, 2))
    b = np.zeros((5, 2))
    a[3] = [5.0, 0.0]  # A says label 0 for word 2
    b[2] = [0.0, 5.0]  # B says label 1 for word 2
    preds, _ = merge_windows([a_ids, b_ids], [0, 0], [a, b], [4])
    assert preds[0][2] == 1


# ---------------------------------------------------------------------------------------------------- metrics


def test_strict_iob2_metrics_by_hand() -> None:
    gold = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "I-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "O", "O"]]
    # gold entities: PER(0-1), LOC(3), ORG(0-1); predicted: PER(0-1) right, ORG(0) wrong boundary
    s = score_tags(gold, pred, "IOB2")
    assert s["precision"] == pytest.approx(1 / 2) and s["recall"] == pytest.approx(1 / 3)
    assert s["f1"] == pytest.approx(2 * (1 / 2) * (1 / 3) / (1 / 2 + 1 / 3))
    assert s["accuracy"] == pytest.approx(5 / 7)
    assert s["per_type"]["PER"] == {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    assert s["per_type"]["LOC"]["support"] == 1 and s["per_type"]["LOC"]["recall"] == 0.0


def test_strict_differs_from_lenient() -> None:
    """`I-PER I-PER` for gold `B-PER I-PER`: lenient (conlleval) counts the entity, strict IOB2 does not."""
    from seqeval.metrics import f1_score

    gold, pred = [["B-PER", "I-PER", "O"]], [["I-PER", "I-PER", "O"]]
    assert f1_score(gold, pred) == 1.0  # seqeval's default lenient mode
    assert score_tags(gold, pred, "IOB2")["f1"] == 0.0


def test_scheme_none_is_token_accuracy_and_macro_per_tag() -> None:
    gold, pred = [["DT", "NN", "VB"], ["NN"]], [["DT", "VB", "VB"], ["NN"]]
    s = score_tags(gold, pred, "none")
    assert s["accuracy"] == pytest.approx(3 / 4)
    # DT: p=r=1; NN: p=1, r=1/2 (f1 2/3); VB: p=1/2, r=1 (f1 2/3)
    assert s["f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    assert s["precision"] == pytest.approx((1 + 1 + 0.5) / 3) and s["recall"] == pytest.approx((1 + 0.5 + 1) / 3)


# ------------------------------------------------------------------------------------------- task + tiny model


def _tiny_frame() -> pd.DataFrame:
    tokens = [["Angela", "Merkel", "visited", "Paris"], ["Mr", "Smith", "met", "the", "team", "in", "Berlin", "today"]]
    tags = [["B-PER", "I-PER", "O", "B-LOC"], ["O", "B-PER", "O", "O", "O", "O", "B-LOC", "O"]]
    tokens += [["the", "team", "visited", "Berlin"] * 12]  # 48 words: windows at max_length 16
    tags += [["O", "O", "O", "B-LOC"] * 12]
    ids = {t: i for i, t in enumerate(TAGS)}
    return pd.DataFrame({"tokens": tokens, "tags": tags, "tag_ids": [[ids[t] for t in s] for s in tags]})


def test_predict_score_slices_and_evaluation_files(tmp_path: Path, tiny_token_model) -> None:
    from pipelines.config import TokeniseConfig
    from pipelines.tasks.catalog import get_task

    _, model, tokenizer = tiny_token_model
    path = _write_conll(tmp_path / "t.conll", [[("a", "O")]])
    task = get_task(make_params(tmp_path, path, task={"stride": 4}))
    frame = _tiny_frame()
    rows = task.tokenise(tokenizer, frame, TokeniseConfig(max_length=16))
    assert rows["example_id"].count(2) > 1  # the long sentence became windows
    batch = task.collate({k: v[:3] for k, v in rows.items()}, tokenizer.pad_token_id)
    assert batch["input_ids"].shape == batch["labels"].shape and int(batch["labels"][0, -1]) in (IGNORE, 0, 1, 2, 3, 4)
    predictions = task.predict(model, rows, frame, batch_size=2, pad_token_id=tokenizer.pad_token_id)
    assert [len(p) for p in predictions.values] == [len(t) for t in frame["tokens"]]
    assert all(t in TAGS for p in predictions.values for t in p) and np.isfinite(predictions.loss)
    scores = task.score(predictions, frame, dict(enumerate(TAGS)))
    assert set(task.spec.metrics) <= set(scores) and scores["rows"] == 3
    # perfect predictions: strict F1 1.0 and slices per type with gold entity counts
    gold = type(predictions)(values=[list(t) for t in frame["tags"]])
    assert task.score(gold, frame, dict(enumerate(TAGS)))["f1"] == 1.0
    found, membership, _ = task.slices(gold, frame, rows, dict(enumerate(TAGS)))
    assert found == {
        "type=LOC": {"value": 1.0, "rows": 14, "metric": "f1"},
        "type=PER": {"value": 1.0, "rows": 2, "metric": "f1"},
    }
    assert membership["support"] == {"LOC": 14, "PER": 2}
    written = task.write_evaluation(scores, predictions, frame, tmp_path / "eval")
    assert sorted(p.name for p in written.values()) == sorted(p.name for p in task.evaluation_files(tmp_path / "eval"))
    assert all(p.stat().st_size > 0 for p in written.values())


class _FakeSession:
    """Stands in for onnxruntime: logits from a fixed token-id -> tag table (everything else O)."""

    def __init__(self, table: dict[int, int], n_labels: int) -> None:
        self.table, self.n_labels = table, n_labels

    def run(self, names, feeds):
        ids = feeds["input_ids"]
        logits = np.zeros((*ids.shape, self.n_labels), dtype=np.float32)
        logits[..., 0] = 2.0
        for (i, j), token in np.ndenumerate(ids):
            if token in self.table:
                logits[i, j, self.table[token]] = 6.0
        return [logits]


def test_runtime_entity_character_spans(tmp_path: Path) -> None:
    from pipelines.tasks.token_classification import OnnxTokenClassifier

    tokenizer = build_tokenizer(tmp_path / "tok")
    vocab = tokenizer.get_vocab()
    table = {vocab["angela"]: 2, vocab["merkel"]: 4, vocab["paris"]: 1}
    serving = {
        "task": "token_classification",
        "max_length": 32,
        "stride": 4,
        "input_names": ["input_ids", "attention_mask"],
        "output_names": ["logits"],
        "id2label": {str(i): t for i, t in enumerate(TAGS)},
        "scheme": "IOB2",
    }
    runtime = OnnxTokenClassifier(_FakeSession(table, len(TAGS)), tokenizer, serving)
    text = "Angela  Merkel visited Paris."
    (result,) = runtime.predict([text])
    assert result["words"] == ["Angela", "Merkel", "visited", "Paris", "."]
    assert result["tags"] == ["B-PER", "I-PER", "O", "B-LOC", "O"]
    entities = [(e["type"], e["text"], e["start"], e["end"]) for e in result["entities"]]
    assert entities == [("PER", "Angela  Merkel", 0, 14), ("LOC", "Paris", 23, 28)]
    assert all(0.5 < e["score"] <= 1.0 for e in result["entities"])
    # pre-split words: spans index the words joined by single spaces; a long input is windowed, not cut
    long_words = ["Angela", "Merkel", *(["visited"] * 40), "Paris"]
    (r,) = runtime.predict([long_words])
    assert r["tags"][0] == "B-PER" and r["tags"][-1] == "B-LOC" and len(r["tags"]) == len(long_words)
    assert r["entities"][-1]["text"] == "Paris"
    assert runtime.format_result(result).startswith('PER "Angela  Merkel" 0:14 0.')
    assert '; LOC "Paris" 23:28 0.' in runtime.format_result(result)
    items = runtime.items_from_frame(pd.DataFrame({"text": ["a b", "c"]}))
    assert items == ["a b", "c"] and runtime.items_from_frame("x") == ["x"]
    assert runtime.items_from_frame(pd.DataFrame({"tokens": [["a", "b"]]})) == [["a", "b"]]
    assert runtime.predict([""]) == [{"entities": [], "tags": [], "words": [], "scores": []}]
    assert split_words("Mr. O'Neil's well-known") == (
        ["Mr", ".", "O'Neil's", "well-known"],
        [(0, 2), (2, 3), (4, 12), (13, 23)],
    )


def test_onnx_export_parity_and_runtime_on_tiny_model(tmp_path: Path, tiny_token_model) -> None:
    import torch

    from pipelines.serving import load_runtime
    from pipelines.tasks.catalog import get_task

    _model_dir, model, tokenizer = tiny_token_model
    path = _write_conll(tmp_path / "t.conll", [[("a", "O")]])
    task = get_task(make_params(tmp_path, path, task={"stride": 4}, tokenise={"max_length": 16}))
    spec = task.export_spec(model, tokenizer)
    export_dir = tmp_path / "export"
    export_dir.mkdir()
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    with torch.no_grad():
        program = torch.onnx.export(
            spec.module,
            spec.example_inputs,
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamo=True,
            dynamic_shapes=tuple({0: batch, 1: sequence} for _ in spec.input_names),
            opset_version=18,
            verbose=False,
        )
    program.save(str(export_dir / "model.onnx"))
    tokenizer.save_pretrained(export_dir / "tokenizer")
    (export_dir / "serving.json").write_text(json.dumps(task.serving_config(model, tokenizer, spec)))

    runtime = load_runtime(export_dir)
    frame = pd.concat([_tiny_frame()] * 4, ignore_index=True)
    feeds = task.parity_feeds(tokenizer, frame, spec.input_names)
    assert [len(f["input_ids"]) for f in feeds][:2] == [1, 7]
    for feed in feeds:
        with torch.no_grad():
            ours = [t.numpy() for t in spec.module(*(torch.from_numpy(feed[n]) for n in spec.input_names))]
        theirs = runtime.run(feed)
        assert np.abs(ours[0] - theirs[0]).max() < 1e-4
        assert task.outputs_disagree(ours, theirs, feed) == 0
        flipped = [theirs[0].copy()]
        flipped[0][0, 1] = -flipped[0][0, 1]  # a real token position of row 0 changes its argmax
        assert task.outputs_disagree(ours, flipped, feed) == 1
    # the runtime on the same sentences gives the same tags as the torch path
    rows = task.tokenise(tokenizer, frame, task.params.tokenise)
    torch_preds = task.predict(model, rows, frame, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    outputs = runtime.predict(task.runtime_inputs(frame), batch_size=3)
    back = task.predictions_from_runtime(outputs, dict(enumerate(TAGS)))
    assert back is not None and back.values == torch_preds.values
    assert np.allclose(np.concatenate(back.scores), np.concatenate(torch_preds.scores), atol=1e-4)

    def same_tags(other: list[dict]) -> bool:
        scores = [np.concatenate([o["scores"] for o in out]) for out in (outputs, other)]
        return [o["tags"] for o in other] == [o["tags"] for o in outputs] and np.allclose(*scores, atol=1e-5)

    runtime.sort_by_length = False  # windows run by length, results in input order: as in input order
    assert same_tags(runtime.predict(task.runtime_inputs(frame), batch_size=3))
    from pipelines.onnx_optimise import fuse_transformer_ops  # the export stage's fusion covers this encoder too

    fused = fuse_transformer_ops(export_dir / "model.onnx", export_dir / "fused.onnx")
    assert fused["Attention"] == model.config.num_hidden_layers
    (export_dir / "fused.onnx").replace(export_dir / "model.onnx")
    assert same_tags(load_runtime(export_dir).predict(task.runtime_inputs(frame), batch_size=3))


def test_package_import_is_torch_free() -> None:
    code = (
        "import sys; import pipelines.tasks.token_classification as t; "
        "from pipelines.tasks.token_classification import Task, OnnxTokenClassifier, Options, SPEC; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_tiny_conll_file_is_generated_and_valid(tmp_path: Path) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tiny", REPO / "tests" / "data" / "conll" / "make_tiny.py")
    assert spec is not None and spec.loader is not None
    make_tiny = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_tiny)
    out = make_tiny.write(tmp_path / "tiny.conll")
    assert out.read_bytes() == (REPO / "tests" / "data" / "conll" / "tiny_train.conll").read_bytes()
    frame = read_conll_text(out.read_text(encoding="utf-8"), out)
    assert len(frame) == 200 and not any(iob_violations(list(t)) for t in frame["tags"])
    assert {t for tags in frame["tags"] for t in tags} == {"O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"}
