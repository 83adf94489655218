"""Question answering: readers, validate/clean (answer offsets, article split, leakage), windows and offsets,
n-best post-processing, the SQuAD 2.0 metric on hand-computed cases, threshold tuning, the Task on a tiny random
BERT, ONNX export + parity and the torch-free runtime."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DataError, DataValidationError
from pipelines.tasks.question_answering.clean import fix_answer_start
from pipelines.tasks.question_answering.features import answer_positions, best_answers, encode_windows, final_answer
from pipelines.tasks.question_answering.metrics import (
    exact_score,
    f1_score,
    find_best_threshold,
    normalize_answer,
    squad_v2_scores,
)
from pipelines.tasks.question_answering.readers import read_examples

REPO = Path(__file__).resolve().parents[2]
WORDS = ["what", "who", "where", "is", "the", "city", "capital", "of", "france", "paris", "berlin", "river", "a"]


def make_params(tmp_path: Path, path: Path, **sections):
    from pipelines.config import Params

    data = {"path": str(path), **sections.pop("data", {})}
    task = {"type": "question_answering", **sections.pop("task", {})}
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
    from transformers import BertTokenizerFast

    letters = list("abcdefghijklmnopqrstuvwxyz0123456789")
    vocab = [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
        *WORDS,
        *letters,
        *[f"##{c}" for c in letters],
        ".",
        ",",
        "?",
    ]
    vocab = list(dict.fromkeys(vocab))  # one id per token ('a' is a word and a letter)
    tokenizer = BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True)
    path.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(path)
    return tokenizer


@pytest.fixture(scope="module")
def tiny_qa_model(tmp_path_factory: pytest.TempPathFactory):
    """(folder, model, tokenizer): a random 2-layer BertForQuestionAnswering."""
    import torch
    from transformers import BertConfig, BertForQuestionAnswering

    path = tmp_path_factory.mktemp("tiny-qa-bert")
    tokenizer = build_tokenizer(path)
    config = BertConfig(
        vocab_size=len(tokenizer.get_vocab()),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
    )
    torch.manual_seed(0)
    model = BertForQuestionAnswering(config).eval()
    model.save_pretrained(path)
    return path, model, tokenizer


def squad_doc(articles: list[tuple[str, list[tuple[str, list[tuple[str, str, int | None]]]]]]) -> dict:
    """SQuAD v2 JSON from [(title, [(context, [(id, question, answer_start or None)])])]; the answer text is read
    from the context (up to the next space or full stop)."""
    data = []
    for title, paragraphs in articles:
        paras = []
        for context, qas in paragraphs:
            items = []
            for qid, question, start in qas:
                if start is None:
                    items.append({"id": qid, "question": question, "answers": [], "is_impossible": True})
                else:
                    end = min(i for i in (context.find(" ", start), context.find(".", start), len(context)) if i >= 0)
                    items.append(
                        {
                            "id": qid,
                            "question": question,
                            "answers": [{"text": context[start:end], "answer_start": start}],
                        }
                    )
            paras.append({"context": context, "qas": items})
        data.append({"title": title, "paragraphs": paras})
    return {"version": "v2.0", "data": data}


def write_squad(path: Path, doc: dict) -> Path:
    path.write_text(json.dumps(doc), encoding="utf-8")
    return path


def small_corpus(n_articles: int = 6) -> dict:
    articles = []
    for a in range(n_articles):
        context = f"the capital of place{a} is city{a}. the river of place{a} is river{a}."
        qas = [
            (f"q{a}-1", f"what is the capital of place{a}?", context.index(f"city{a}")),
            (f"q{a}-2", f"what is the river of place{a}?", context.index(f"river{a}")),
            (f"q{a}-3", f"who is the king of place{a}?", None),
        ]
        articles.append((f"article{a}", [(context, qas)]))
    return squad_doc(articles)


# ---------------------------------------------------------------- readers, validate, clean


def test_squad_and_jsonl_readers_give_the_same_frame(tmp_path: Path) -> None:
    doc = small_corpus(2)
    squad = read_examples(write_squad(tmp_path / "s.json", doc), make_params(tmp_path, tmp_path / "s.json").data)
    lines = []
    for article in doc["data"]:
        for para in article["paragraphs"]:
            for qa in para["qas"]:
                answers = {
                    "text": [a["text"] for a in qa["answers"]],
                    "answer_start": [a["answer_start"] for a in qa["answers"]],
                }
                lines.append(
                    json.dumps(
                        {
                            "id": qa["id"],
                            "title": article["title"],
                            "context": para["context"],
                            "question": qa["question"],
                            "answers": answers,
                        }
                    )
                )
    (tmp_path / "s.jsonl").write_text("\n".join(lines) + "\n")
    jsonl = read_examples(tmp_path / "s.jsonl", make_params(tmp_path, tmp_path / "s.jsonl").data)
    cols = ["id", "title", "context", "question", "answer_texts", "answer_starts", "is_impossible"]
    assert squad[cols].to_dict("records") == jsonl[cols].to_dict("records")
    assert squad["is_impossible"].tolist() == [False, False, True, False, False, True]
    assert squad["where"].iloc[4] == "data[1].paragraphs[0].qas[1]"
    assert squad["answer_texts"].iloc[0] == ["city0"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not valid JSON"),
        ('{"data": 3}', "'data' list"),
        (
            '{"data": [{"paragraphs": [{"context": "x", "qas": [{"question": 5}]}]}]}',
            "data[0].paragraphs[0].qas[0]: 'question'",
        ),
        (
            '{"data": [{"paragraphs": [{"context": "x", "qas": [{"question": "q", '
            '"answers": [{"text": "x", "answer_start": "a"}]}]}]}]}',
            "answer_start must be an integer",
        ),
    ],
)
def test_bad_squad_input_is_one_data_error(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(DataError, match=re.escape(message)):
        read_examples(path, make_params(tmp_path, path).data)


def test_validate_names_file_location_id_and_both_strings(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task

    doc = small_corpus(3)
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] += 3
    path = write_squad(tmp_path / "bad.json", doc)
    task = get_task(make_params(tmp_path, path))
    with pytest.raises(DataValidationError) as err:
        task.validate_data(tmp_path / "report.json", None)
    text = str(err.value)
    assert str(path) in text and "data[1].paragraphs[0].qas[0]" in text and "'q1-1'" in text
    assert "'city1'" in text and "answer_matches_context" in text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["files"][0]["unanswerable_share"] == pytest.approx(1 / 3)

    ok = write_squad(tmp_path / "ok.json", small_corpus(3))
    summary = get_task(make_params(tmp_path, ok)).validate_data(tmp_path / "report2.json", None)
    assert summary["success"] and summary["rows"] == 9


def test_duplicate_ids_and_empty_questions_fail_validation(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task

    doc = small_corpus(3)
    doc["data"][2]["paragraphs"][0]["qas"][1]["id"] = "q0-1"
    path = write_squad(tmp_path / "dup.json", doc)
    with pytest.raises(DataValidationError, match="duplicate question id"):
        get_task(make_params(tmp_path, path)).validate_data(tmp_path / "r.json", None)
    doc = small_corpus(3)
    doc["data"][0]["paragraphs"][0]["qas"][2]["question"] = "  "
    path = write_squad(tmp_path / "empty.json", doc)
    with pytest.raises(DataValidationError, match="empty question"):
        get_task(make_params(tmp_path, path)).validate_data(tmp_path / "r.json", None)


def test_fix_answer_start_moves_to_the_nearest_occurrence() -> None:
    context = "abc city x city y"
    assert fix_answer_start(context, "city", 4, 8) == 4
    assert fix_answer_start(context, "city", 2, 8) == 4
    assert fix_answer_start(context, "city", 9, 8) == 11
    assert fix_answer_start(context, "city", 0, 2) is None
    assert fix_answer_start(context, "town", 4, 8) is None


def test_clean_fixes_offsets_splits_by_article_and_removes_question_leakage(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task

    doc = small_corpus(10)
    doc["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] -= 2  # off by two: repaired
    doc["data"][1]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "nowhere"  # quarantined
    # the same question text in two articles: whichever lands in train is dropped when the other is held out
    for a in range(10):
        doc["data"][a]["paragraphs"][0]["qas"][2]["question"] = "who is the king?"
    path = write_squad(tmp_path / "squad.json", doc)
    params = make_params(tmp_path, path, clean={"validation_size": 0.2, "test_size": 0.2, "max_quarantine_share": 0.5})
    out = tmp_path / "clean"
    summary = get_task(params).clean_data(out)
    assert summary["answer_start_fixed"] == 1
    assert summary["quarantine_reasons"] == {"answer_not_in_context": 1}
    assert summary["split_by"] == "title"
    splits = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    titles = {s: set(f["title"]) for s, f in splits.items()}
    assert not titles["train"] & titles["test"] and not titles["train"] & titles["validation"]
    assert not titles["validation"] & titles["test"]
    assert not set(splits["train"]["context"]) & set(splits["test"]["context"])
    assert "who is the king?" not in set(splits["train"]["question"])
    assert summary["leakage_question"] == sum(1 for t in titles["train"])
    repaired = pd.concat(splits.values())
    row = repaired.loc[repaired["id"] == "q0-1"].iloc[0]
    start = int(row["answer_starts"][0])
    assert row["context"][start : start + 5] == "city0"
    # same input, same params -> byte-identical splits
    again = get_task(params).clean_data(tmp_path / "clean2")
    assert again["sha256"] == summary["sha256"]


# ---------------------------------------------------------------- windows and offsets


def _decode(features: dict, f: int, context: str) -> str:
    s, e = features["start_positions"][f], features["end_positions"][f]
    if s == 0 and e == 0:
        return ""
    return context[features["offset_start"][f][s] : features["offset_end"][f][e]]


def test_windows_label_the_answer_only_where_it_is_whole(tmp_path: Path) -> None:
    tokenizer = build_tokenizer(tmp_path / "tok")
    context = " ".join(f"w{i}" for i in range(40))  # 'w12' -> w ##1 ##2: 2-3 tokens per word
    question = "what is the city?"
    late = context.index("w35")
    early = context.index("w2 ")
    features = encode_windows(
        tokenizer,
        [question, question, question],
        [context] * 3,
        48,
        16,
        answers=[(late, late + 3), (early, early + 2), None],
    )
    by_example: dict[int, list[int]] = {}
    for f, e in enumerate(features["example_id"]):
        by_example.setdefault(e, []).append(f)
    assert len(by_example[0]) >= 3  # the context needs several windows
    assert all(len(ids) <= 48 for ids in features["input_ids"])
    # the answer at the end: CLS in the first window, the span in a later one
    decoded = [_decode(features, f, context) for f in by_example[0]]
    assert decoded[0] == "" and "w35" in decoded
    assert (features["start_positions"][by_example[0][0]], features["end_positions"][by_example[0][0]]) == (0, 0)
    # the answer at the start: found in the first window only
    decoded = [_decode(features, f, context) for f in by_example[1]]
    assert decoded[0] == "w2" and all(d == "" for d in decoded[1:])
    # unanswerable: CLS everywhere
    assert all(features["start_positions"][f] == 0 == features["end_positions"][f] for f in by_example[2])
    # offsets are -1 on question and special tokens, character offsets on the context
    first = by_example[0][0]
    types = features["token_type_ids"][first]
    assert all(
        (s == -1) == (t == 0 or k == len(types) - 1)
        for k, (s, t) in enumerate(zip(features["offset_start"][first], types, strict=True))
    )
    # consecutive windows overlap (stride): the second starts before the first ends
    second = by_example[0][1]
    first_end = max(features["offset_end"][first])
    second_start = min(s for s in features["offset_start"][second] if s >= 0)
    assert second_start < first_end


def test_answer_at_a_window_edge() -> None:
    starts = [-1, -1, 0, 4, 8, -1]
    ends = [-1, -1, 3, 7, 11, -1]
    assert answer_positions(starts, ends, (8, 11)) == (4, 4)  # the last context token
    assert answer_positions(starts, ends, (0, 3)) == (2, 2)  # the first one
    assert answer_positions(starts, ends, (8, 13)) == (0, 0)  # runs past the window: CLS
    assert answer_positions(starts, ends, (4, 11)) == (3, 4)
    assert answer_positions(starts, ends, None) == (0, 0)


# ---------------------------------------------------------------- post-processing


def test_best_answers_pick_the_best_valid_span_and_min_null_over_windows() -> None:
    context = "aaa bbb ccc ddd"
    offs = [[-1, -1, 0, 4, 8, -1], [-1, -1, 8, 12, -1]]
    offe = [[-1, -1, 3, 7, 11, -1], [-1, -1, 11, 15, -1]]
    start = [np.array([1.0, 9.0, 2.0, 5.0, 0.0, 9.0]), np.array([3.0, 0.0, 1.0, 4.0, 0.0])]
    end = [np.array([1.0, 9.0, 0.0, 1.0, 6.0, 9.0]), np.array([0.5, 0.0, 0.0, 4.5, 0.0])]
    best = best_answers(start, end, offs, offe, [0, 0], [context], n_best_size=20, max_answer_length=30)[0]
    # window 0: bbb..ccc = 5 + 6 = 11 (question/special tokens never count); window 1: ddd = 8.5
    assert (best["text"], best["start"], best["end"], best["score"]) == ("bbb ccc", 4, 11, 11.0)
    assert best["null_score"] == 2.0 and best["score_diff"] == -9.0  # min(1+1, 3+0.5)
    assert final_answer(best, 0.0) == "bbb ccc" and final_answer(best, -10.0) == ""
    short = best_answers(start, end, offs, offe, [0, 0], [context], max_answer_length=1)[0]
    assert short["text"] == "ddd"  # 'bbb ccc' is two tokens: too long
    end_before_start = [np.array([0.0, 0.0, 0.0, 0.0, 9.0, 0.0])], [np.array([0.0, 0.0, 9.0, 0.0, 0.0, 0.0])]
    only = best_answers(*end_before_start, offs[:1], offe[:1], [0], [context], n_best_size=1)[0]
    assert only["text"] == "" and only["score_diff"] == float("inf") and final_answer(only, 1e9) == ""


# ---------------------------------------------------------------- metric


def test_normalise_exact_and_f1_by_hand() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("a cat, an owl and the dog") == "cat owl and dog"
    assert exact_score("The Paris", "paris.") == 1
    # gold 'the big red dog' -> big red dog; pred 'red dog barked' -> 2 common, p=2/3, r=2/3
    assert f1_score("the big red dog", "red dog barked") == pytest.approx(2 / 3)
    assert f1_score("", "") == 1.0 and f1_score("", "x") == 0.0 and f1_score("x", "") == 0.0
    golds = [["Paris", "the city of Paris"], [], ["blue whale"], []]
    preds = ["city of paris", "", "whale", "something"]
    s = squad_v2_scores(golds, preds)
    # q1: exact 1 (second gold); q2: 1; q3: f1 = 2*(1*0.5)/1.5 = 2/3, exact 0; q4: 0
    assert s["exact"] == pytest.approx(2 / 4)
    assert s["f1"] == pytest.approx((1 + 1 + 2 / 3 + 0) / 4)
    assert s["has_ans_exact"] == pytest.approx(1 / 2) and s["has_ans_f1"] == pytest.approx((1 + 2 / 3) / 2)
    assert s["no_ans_exact"] == pytest.approx(1 / 2) and s["no_ans_f1"] == pytest.approx(1 / 2)
    assert (s["has_ans_total"], s["no_ans_total"]) == (2, 2)


def test_threshold_tuning_finds_the_best_f1_cut() -> None:
    # span answers and score differences (null - span); two answerable questions with low diffs, two
    # unanswerable with high diffs, one unanswerable with a low diff
    golds = [["paris"], ["rome"], [], [], []]
    spans = ["paris", "rome", "x", "y", "z"]
    diffs = [-5.0, -1.0, 2.0, 3.0, -2.0]
    span_exact = [1, 1, 0, 0, 0]
    has = [True, True, False, False, False]
    best, thresh = find_best_threshold(spans, span_exact, diffs, has)
    # threshold -5: only q1 answered, '' elsewhere -> 4/5 right (threshold -1 also gives 4/5, the first one wins)
    assert (best, thresh) == (pytest.approx(4 / 5), -5.0)
    s = squad_v2_scores(
        golds,
        [final_answer({"text": t, "score_diff": d}, thresh) for t, d in zip(spans, diffs, strict=True)],
        spans,
        diffs,
    )
    assert s["f1"] == pytest.approx(s["best_f1"]) == pytest.approx(4 / 5)
    assert s["best_f1_thresh"] == -5.0
    # all unanswerable: answering nothing is best (the threshold stays at 0 only if no question helps)
    best, thresh = find_best_threshold(["a", "b"], [0, 0], [1.0, 2.0], [False, False])
    assert best == 1.0 and thresh == 0.0
    # ... even when every span outscores the null answer
    best, thresh = find_best_threshold(["a", "b"], [0, 0], [-1.0, -2.0], [False, False])
    assert best == 1.0 and thresh < -2.0


# ---------------------------------------------------------------- task on a tiny model, export, runtime


def _frame(n: int = 6) -> pd.DataFrame:
    rows = []
    for a in range(n):
        context = (
            f"the capital of place{a} is city{a}. "
            + " ".join(f"w{i}" for i in range(a * 3))
            + f" the river is river{a}."
        )
        start = context.index(f"city{a}")
        rows.append(
            {
                "id": f"q{a}",
                "title": "t",
                "context": context,
                "question": f"what is the capital of place{a}?",
                "answer_texts": [f"city{a}"] if a % 3 else [],
                "answer_starts": [start] if a % 3 else [],
                "is_impossible": not a % 3,
            }
        )
    return pd.DataFrame(rows)


def test_task_predict_score_and_tuned_threshold_on_tiny_model(tmp_path: Path, tiny_qa_model) -> None:
    from pipelines.tasks.catalog import get_task

    _path, model, tokenizer = tiny_qa_model
    params = make_params(tmp_path, tmp_path / "x.json", task={"max_length": 32, "doc_stride": 8})
    task = get_task(params)
    frame = _frame()
    rows = task.tokenise(tokenizer, frame, params.tokenise)
    assert max(rows["length"]) <= 32 and len(rows["input_ids"]) > len(frame)
    assert set(rows) >= {"start_positions", "end_positions", "offset_start", "token_type_ids", "example_id"}
    model.config.nlpops_null_threshold = 0.0
    preds = task.predict(model, rows, frame, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    assert len(preds.values) == len(frame) and np.isfinite(preds.loss)
    scores = task.score(preds, frame, {})
    assert set(task.spec.metrics) <= set(scores)
    assert model.config.nlpops_null_threshold == scores["best_f1_thresh"]  # tuned and stored on the config
    again = task.predict(model, rows, frame, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    assert task.score(again, frame, {})["f1"] == pytest.approx(scores["best_f1"])
    validation = frame.copy()
    validation.attrs["split"] = "validation"  # the training loop's validation: scored at the threshold it tunes
    model.config.nlpops_null_threshold = 1e9  # a stale threshold: every question answered
    stale = task.predict(model, rows, validation, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    tuned = task.score(stale, validation, {})
    assert tuned["f1"] == pytest.approx(tuned["best_f1"]) and tuned["null_threshold"] == tuned["best_f1_thresh"]
    assert model.config.nlpops_null_threshold == tuned["best_f1_thresh"]
    slices, _membership, _ = task.slices(again, frame, rows, {})
    assert {"answerable=yes", "answerable=no", "question=what"} <= set(slices)
    assert slices["answerable=no"]["rows"] == 2
    fixed = get_task(
        make_params(
            tmp_path, tmp_path / "x.json", task={"max_length": 32, "doc_stride": 8, "null_score_diff_threshold": 1e9}
        )
    )
    everything = fixed.predict(model, rows, frame, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    assert all(v for v in everything.values)  # a huge threshold: always a span
    assert fixed.score(everything, frame, {})["null_threshold_source"] == "params"


def test_onnx_export_parity_and_runtime_on_tiny_model(tmp_path: Path, tiny_qa_model) -> None:
    import torch

    from pipelines.serving import load_runtime
    from pipelines.tasks.catalog import get_task

    _path, model, tokenizer = tiny_qa_model
    params = make_params(tmp_path, tmp_path / "x.json", task={"max_length": 32, "doc_stride": 8})
    task = get_task(params)
    model.config.nlpops_null_threshold = 0.5
    spec = task.export_spec(model, tokenizer)
    with torch.no_grad():  # the exported wrapper gives the model's own start/end logits
        direct = model(**dict(zip(spec.input_names, spec.example_inputs, strict=True)))
        wrapped = spec.module(*spec.example_inputs)
    assert torch.allclose(direct.start_logits, wrapped[0]) and torch.allclose(direct.end_logits, wrapped[1])
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
            opset_version=params.export.opset,
            verbose=False,
        )
    program.save(str(export_dir / "model.onnx"))
    tokenizer.save_pretrained(export_dir / "tokenizer")
    serving = task.serving_config(model, tokenizer, spec)
    assert serving["null_score_diff_threshold"] == 0.5 and serving["max_length"] == 32
    (export_dir / "serving.json").write_text(json.dumps(serving))

    runtime = load_runtime(export_dir)
    frame = pd.concat([_frame()] * 3, ignore_index=True)
    feeds = task.parity_feeds(tokenizer, frame, spec.input_names)
    assert [len(f["input_ids"]) for f in feeds][:2] == [1, 7]
    for feed in feeds:
        with torch.no_grad():
            ours = [t.numpy() for t in spec.module(*(torch.from_numpy(feed[n]) for n in spec.input_names))]
        theirs = runtime.run(feed)
        assert max(np.abs(a - b).max() for a, b in zip(ours, theirs, strict=True)) < 1e-4
        assert task.outputs_disagree(ours, theirs, feed) == 0
        flipped = [theirs[0].copy(), theirs[1]]
        row = flipped[0][0]
        row[int(np.argmin(np.where(feed["attention_mask"][0] > 0, row, np.inf)))] = row.max() + 10
        assert task.outputs_disagree(ours, flipped, feed) == 1
        # an answer string that changes: the best span of the first question moves to another context token
        window = feed["attention_mask"][0].sum()
        moved = [theirs[0].copy(), theirs[1].copy()]
        moved[0][0, :window] = -50.0
        moved[1][0, :window] = -50.0
        moved[0][0, window - 2] = moved[1][0, window - 2] = 50.0  # the last context token, alone
        assert task.outputs_disagree(ours, moved, feed) == 1
        assert task.outputs_disagree(ours, moved, dict(feed)) == 1  # a copy: logits only, same window
    # the runtime gives the same final answers as the torch path
    rows = task.tokenise(tokenizer, frame, params.tokenise)
    torch_preds = task.predict(model, rows, frame, batch_size=4, pad_token_id=tokenizer.pad_token_id)
    outputs = runtime.predict(task.runtime_inputs(frame), batch_size=3)
    back = task.predictions_from_runtime(outputs, {})
    assert back is not None and back.values == torch_preds.values

    def same_answers(other: list[dict]) -> bool:
        scores = [[o["score"] for o in out] for out in (outputs, other)]
        return [o["answer"] for o in other] == [o["answer"] for o in outputs] and np.allclose(*scores, atol=1e-5)

    runtime.sort_by_length = False  # windows run by length, results in input order: as in input order
    assert same_answers(runtime.predict(task.runtime_inputs(frame), batch_size=3))
    runtime.sort_by_length = True
    from pipelines.onnx_optimise import fuse_transformer_ops  # the export stage's fusion covers QA's encoder

    fused = fuse_transformer_ops(export_dir / "model.onnx", export_dir / "fused.onnx")
    assert fused["Attention"] == model.config.num_hidden_layers
    (export_dir / "fused.onnx").replace(export_dir / "model.onnx")
    assert same_answers(load_runtime(export_dir).predict(task.runtime_inputs(frame), batch_size=3))
    assert np.allclose(back.scores, [o["score"] if o["answer"] else 0 for o in outputs] or back.scores)
    for item, out in zip(task.runtime_inputs(frame), outputs, strict=True):
        if out["answer"]:
            assert item["context"][out["start"] : out["end"]] == out["answer"]
            assert runtime.format_result(out).startswith(json.dumps(out["answer"]))
        else:
            assert out["start"] == -1 and runtime.format_result(out).startswith("(no answer)")
    assert runtime.items_from_frame(pd.DataFrame({"question": ["q"], "context": ["c"]})) == [
        {"question": "q", "context": "c"}
    ]
    with pytest.raises(ValueError, match="question"):
        runtime.predict(["just a string"])


def test_package_import_is_torch_free() -> None:
    code = (
        "import sys; import pipelines.tasks.question_answering as t; "
        "from pipelines.tasks.question_answering import Task, OnnxQuestionAnswerer, Options, SPEC; "
        "bad = [m for m in ('torch', 'transformers') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_options_defaults_and_spec() -> None:
    from pipelines.tasks.catalog import get_task, task_spec

    task = get_task("question_answering")
    o = task.options
    assert (o.max_length, o.doc_stride, o.n_best_size, o.max_answer_length, o.null_score_diff_threshold) == (
        384,
        128,
        20,
        30,
        None,
    )
    assert task_spec("question_answering").metrics[0] == "f1"
    assert "squad" in task_spec("question_answering").formats


def test_predict_input_lines_json_objects_pairs_and_texts() -> None:
    from pipelines.predict import split_pairs

    item = {"question": "who?", "context": "Ann went home."}
    assert split_pairs([json.dumps(item), json.dumps(item)]) == [item, item]
    assert split_pairs(["a\tb", json.dumps(item)]) == [("a", "b"), item]
    assert split_pairs(["plain text", "{not json"]) == ["plain text", "{not json"]
    assert split_pairs(['["a list"]', "x\ty"]) == ['["a list"]', "x\ty"]  # only objects become items
    assert split_pairs(["a\tb", "c\td"]) == [("a", "b"), ("c", "d")]


def test_training_windows_without_the_answer_are_down_sampled_only_in_train(tmp_path: Path) -> None:
    from pipelines.tasks.catalog import get_task
    from pipelines.tasks.question_answering.task import sample_training_windows

    rows = {"example_id": [0, 0, 0, 1, 1, 2], "start_positions": [0, 5, 0, 0, 0, 0], "x": list(range(6))}
    none = sample_training_windows(rows, [True, False, True], keep=0.0)
    assert none["x"] == [1, 3, 4]  # the answer window and the unanswerable question's windows
    assert sample_training_windows(rows, [True, False, True], keep=1.0) == rows
    no_unanswerable = sample_training_windows(rows, [True, False, True], keep=1.0, keep_unanswerable=0.0)
    assert no_unanswerable["x"] == [0, 1, 2, 5]  # question 1 (unanswerable) goes whole: both of its windows
    many = {"example_id": [e for e in range(200) for _ in range(2)], "start_positions": [0] * 400}
    half = sample_training_windows(many, [False] * 200, keep=1.0, keep_unanswerable=0.5)
    kept = half["example_id"]
    assert 60 < len(set(kept)) < 140 and all(kept.count(e) == 2 for e in set(kept))  # whole questions, about half
    tokenizer = build_tokenizer(tmp_path / "tok")
    params = make_params(
        tmp_path, tmp_path / "x.json", task={"max_length": 32, "doc_stride": 8, "train_negative_windows": 0.0}
    )
    task = get_task(params)
    frame = _frame()
    everything = task.tokenise(tokenizer, frame, params.tokenise)
    frame.attrs["split"] = "train"
    train = task.tokenise(tokenizer, frame, params.tokenise)
    assert len(train["input_ids"]) < len(everything["input_ids"])
    answerable = {e for e, t in enumerate(frame["answer_texts"]) if len(t)}
    assert all(s != 0 for e, s in zip(train["example_id"], train["start_positions"], strict=True) if e in answerable)


def test_answerable_only_epochs_train_spans_first_then_every_window(tmp_path: Path) -> None:
    from pipelines.config import TrainConfig
    from pipelines.tasks.catalog import get_task
    from pipelines.train import _epoch_batches

    params = make_params(tmp_path, tmp_path / "x.json", task={"answerable_only_epochs": 2})
    task = get_task(params)
    rows = {"start_positions": [0, 5, 0, 7, 0, 9], "length": [10, 12, 11, 30, 9, 14]}
    assert task.epoch_training_rows(rows, 1) == task.epoch_training_rows(rows, 2) == [1, 3, 5]
    assert task.epoch_training_rows(rows, 3) is None
    assert task.epoch_training_rows({"length": [3]}, 1) is None  # unlabelled features: nothing to narrow
    cfg = TrainConfig(batch_size=2, epochs=3)
    first = _epoch_batches(rows["length"], task.epoch_training_rows(rows, 1), cfg, 1)
    third = _epoch_batches(rows["length"], task.epoch_training_rows(rows, 3), cfg, 3)
    assert sorted(i for b in first for i in b) == [1, 3, 5]  # indices into the whole split, answer windows only
    assert sorted(i for b in third for i in b) == list(range(6))
    with pytest.raises(ValueError, match=r"task.answerable_only_epochs=3 .* below train.epochs=3"):
        make_params(tmp_path, tmp_path / "x.json", task={"answerable_only_epochs": 3}, train={"epochs": 3})
