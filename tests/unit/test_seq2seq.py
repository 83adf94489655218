"""Sequence to sequence: reading, validate/clean, target tokenisation, the metrics on hand-computed cases, the numpy
generation loop against torch's `generate` (greedy and beam), the ONNX export with its parity check and the
torch-free runtime, and tied BERT2BERT weights surviving save/load. A tiny random BERT (hidden 32, 2 layers) built
here is warm-started into BERT2BERT; nothing is downloaded."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.errors import DataError, DataValidationError

REPO = Path(__file__).resolve().parents[2]
LETTERS = list("abcdefghijklmnopqrstuvwxyz")
WORDS = ["answer", "context", "what", "is", "the", "cat", "sat", "on", "mat", "a", "dog", "ran", "?", ":"]


def build_tiny_encoder(path: Path, init: float = 0.02, seed: int = 0) -> Path:
    """A tiny random BERT encoder folder (a BERT2BERT warm start source) with a word-level tokenizer."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *LETTERS]))
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
        initializer_range=init,
    )
    torch.manual_seed(seed)
    BertModel(config).save_pretrained(path)
    return path


def make_params(tmp_path: Path, data_path: Path | str = "-", **sections):
    from pipelines.config import Params

    task = {"type": "seq2seq", **sections.pop("task", {})}
    return Params.model_validate(
        {
            "project": {"artifacts_dir": str(tmp_path / "artifacts"), "state_dir": str(tmp_path / ".nlpops")},
            "data": {"path": str(data_path), **sections.pop("data", {})},
            "task": task,
            "validate": {"min_rows": 1, "expectations_dir": str(REPO / "expectations"), **sections.pop("validate", {})},
            **sections,
        }
    )


@pytest.fixture(scope="module")
def encoder_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # a wide initialisation: a random model whose outputs depend on its input (and sometimes end early)
    return build_tiny_encoder(tmp_path_factory.mktemp("tiny-bert-encoder"), init=0.2)


@pytest.fixture(scope="module")
def bert2bert(encoder_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """(task, model, tokenizer): a BERT2BERT warm-started from the tiny encoder, EOS made likelier so that some
    outputs stop early."""
    import torch

    params = make_params(tmp_path_factory.mktemp("b2b"), model={"path": str(encoder_dir)})
    from pipelines.tasks import get_task

    task = get_task(params)
    model = task.build_model(encoder_dir, {}, params.model).eval()
    with torch.no_grad():
        model.decoder.cls.predictions.bias[task.tokenizer().sep_token_id] += 3.0
    return task, model, task.tokenizer()


SOURCES = [
    "answer: a cat context: the cat sat on the mat",
    "answer: dog context: a dog ran",
    "the mat",
    "what is the cat on ? a mat",
    "a b c d e f g",
    "z y x",
    "answer: mat context: the cat sat on a mat and the dog ran on the mat",
]


# ------------------------------------------------------------------------------------------------ data


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def test_reader_maps_source_and_target_columns_and_names_missing_ones(tmp_path: Path) -> None:
    from pipelines.tasks.seq2seq.readers import read_pairs

    csv = tmp_path / "pairs.csv"
    csv.write_text("question,context_and_answer\nwhat?,answer: x context: y\n", encoding="utf-8")
    params = make_params(tmp_path, csv, data={"source_column": "context_and_answer", "target_column": "question"})
    frame = read_pairs(csv, params.data)
    assert frame[["source", "target", "row"]].values.tolist() == [["answer: x context: y", "what?", 2]]
    with pytest.raises(DataError, match=r"missing column 'target'.*data\.source_column / data\.target_column"):
        read_pairs(csv, make_params(tmp_path, csv, data={"source_column": "question"}).data)
    jsonl = write_jsonl(tmp_path / "pairs.jsonl", [{"source": "a", "tgt": "b"}])
    with pytest.raises(DataError, match=r"pairs.jsonl: line 1: missing column 'target'"):
        read_pairs(jsonl, make_params(tmp_path, jsonl).data)


def _pairs(n: int, copy: int = 0) -> list[dict]:
    rows = [{"source": f"answer: w{i} context: the cat number {i} sat", "target": f"what sat {i} ?"} for i in range(n)]
    for i in range(copy):
        rows[i]["target"] = rows[i]["source"]
    return rows


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (_pairs(10, copy=8), "8 of 10 rows (80.0%) have a target identical to their source (first: line 1)"),
        ([*_pairs(5), {"source": "x", "target": "  "}], "column 'target': line 6: empty target"),
        ([{"source": "", "target": "y"}, *_pairs(5)], "column 'source': line 1: empty source"),
    ],
    ids=["copy-data", "empty-target", "empty-source"],
)
def test_validation_refuses_copy_data_and_empty_rows_in_one_line(
    tmp_path: Path, rows: list[dict], message: str
) -> None:
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    task = _task(make_params(tmp_path, path))
    with pytest.raises(DataValidationError) as info:
        task.validate_data(tmp_path / "report.json", tmp_path / "docs")
    text = str(info.value)
    assert "\n" not in text and text.startswith(f"{path}: ") and message in text, text
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["task"] == "seq2seq" and report["success"] is False


def _task(params):
    from pipelines.tasks import get_task

    return get_task(params)


def test_clean_keeps_one_source_with_several_targets_together_and_drops_duplicate_pairs(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        rows.append({"source": f"answer: a{i} context: sentence {i}", "target": f"question one {i} ?"})
        rows.append({"source": f"answer: a{i} context: sentence {i}", "target": f"question two {i} ?"})
    rows.append(dict(rows[0]))  # an exact duplicate pair
    rows.append({"source": "   ", "target": "orphan"})  # quarantined
    test_rows = [{"source": "ANSWER: a3   context: sentence 3", "target": "held out ?"}]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    test = write_jsonl(tmp_path / "test.jsonl", test_rows)
    params = make_params(
        tmp_path, path, data={"test_path": str(test)}, clean={"validation_size": 0.2, "max_quarantine_share": 0.5}
    )
    summary = _task(params).clean_data(tmp_path / "clean")
    assert summary["dropped_duplicates"] == 1 and summary["quarantine_reasons"] == {"empty_source": 1}
    assert summary["leakage_removed_from_train"] == 2  # both targets of the source the test file holds
    splits = {s: pd.read_parquet(tmp_path / "clean" / f"{s}.parquet") for s in ("train", "validation", "test")}
    assert set(splits["train"]["source"]).isdisjoint(splits["validation"]["source"])
    assert all(n == 2 for n in splits["validation"]["source"].value_counts())  # both targets of a source together
    assert len(splits["test"]) == 1 and list(splits["train"].columns) == ["source", "target", "row"]
    again = _task(params).clean_data(tmp_path / "clean2")
    assert again["sha256"] == summary["sha256"]  # deterministic


# ------------------------------------------------------------------------------------------------ tokenisation


def test_target_tokenisation_drops_the_start_token_ends_with_eos_and_is_cut(encoder_dir: Path, tmp_path: Path) -> None:
    from pipelines.config import TokeniseConfig
    from pipelines.tasks.seq2seq.task import target_ids

    params = make_params(
        tmp_path, model={"path": str(encoder_dir)}, task={"prefix": "answer: ", "max_target_length": 4}
    )
    task = _task(params)
    tok = task.tokenizer()
    cls, sep = tok.cls_token_id, tok.sep_token_id
    frame = pd.DataFrame({"source": ["a cat", "the dog"], "target": ["what sat", "a b c d e f"], "row": [1, 2]})
    frame.attrs["split"] = "test"
    rows = task.tokenise(tok, frame, TokeniseConfig(max_length=16))
    ids = tok.convert_tokens_to_ids
    assert rows["input_ids"][0] == [cls, ids("answer"), ids(":"), ids("a"), ids("cat"), sep]  # the prefix first
    assert rows["labels"][0] == [ids("what"), ids("sat"), sep]  # no [CLS]: the decoder is fed it
    assert rows["labels"][1] == [ids("a"), ids("b"), ids("c"), sep]  # cut to max_target_length, EOS kept
    assert rows["decoder_input_ids"][1] == [cls, ids("a"), ids("b"), ids("c")]  # labels shifted behind the start
    assert rows["generate"] == [1, 1] and rows["length"] == [6, 6]
    # a tokenizer whose targets do not start with the decoder start token keeps them whole; a missing EOS is added
    assert target_ids(tok, ["what sat"], 8, start_id=tok.pad_token_id, eos_ids=(sep,)) == [
        [cls, ids("what"), ids("sat"), sep]
    ]
    assert target_ids(tok, ["what sat"], 8, start_id=cls, eos_ids=(ids("?"),)) == [
        [ids("what"), ids("sat"), sep, ids("?")]
    ]
    # validation: a seeded sample is generated for, train never
    many = pd.DataFrame({"source": ["a"] * 10, "target": ["b"] * 10, "row": range(10)})
    many.attrs["split"] = "validation"
    sampled = _task(make_params(tmp_path, model={"path": str(encoder_dir)}, task={"validation_generate_rows": 3}))
    assert sum(sampled.tokenise(tok, many, TokeniseConfig())["generate"]) == 3
    many.attrs["split"] = "train"
    assert sum(sampled.tokenise(tok, many, TokeniseConfig())["generate"]) == 0


def test_copy_task_adds_prefixed_source_to_source_rows_to_the_training_split_only(
    encoder_dir: Path, tmp_path: Path
) -> None:
    from pipelines.config import TokeniseConfig

    task = _task(make_params(tmp_path, model={"path": str(encoder_dir)}, task={"copy_task_share": 0.5}))
    tok = task.tokenizer()
    ids = tok.convert_tokens_to_ids
    frame = pd.DataFrame({"source": ["a cat", "the dog", "b c", "z y"], "target": ["what", "who", "x", "e"]})
    frame["row"] = range(4)
    frame.attrs["split"] = "train"
    rows = task.tokenise(tok, frame, TokeniseConfig(max_length=16))
    assert len(rows["input_ids"]) == 6 and rows["labels"][:4] == [[ids("what"), tok.sep_token_id], *rows["labels"][1:4]]
    copies = rows["example_id"][4:]
    assert len(set(copies)) == 2 and set(copies) <= {0, 1, 2, 3} and rows["example_id"][:4] == [0, 1, 2, 3]
    for extra, original in zip(range(4, 6), copies, strict=True):
        words = tok.tokenize(frame["source"][original])
        assert rows["input_ids"][extra] == [tok.cls_token_id, ids("copy"), ids(":"), *ids(words), tok.sep_token_id]
        assert rows["labels"][extra] == [*ids(words), tok.sep_token_id]  # the source itself is the target
    assert rows["generate"] == [0] * 6 and rows["length"][4:] == [len(rows["input_ids"][i]) for i in (4, 5)]
    assert task.tokenise(tok, frame, TokeniseConfig(max_length=16))["example_id"] == rows["example_id"]  # seeded
    frame.attrs["split"] = "validation"  # evaluation splits are never changed
    assert len(task.tokenise(tok, frame, TokeniseConfig(max_length=16))["input_ids"]) == 4


# ------------------------------------------------------------------------------------------------ metrics


def test_metrics_on_hand_computed_cases() -> None:
    from pipelines.tasks.seq2seq.metrics import copy_scores, corpus_scores, generation_scores

    # BLEU: p1 = 5/6, p2 = 3/5, p3 = 2/4, p4 = 1/3, same length (BP = 1): (5/6 * 3/5 * 1/2 * 1/3) ** (1/4)
    scores = corpus_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert scores["bleu"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 2 * 1 / 3) ** 0.25, abs=1e-4)
    # ROUGE: 'the cat sat' vs 'the cat ran': unigrams 2/3, bigrams 1/2, LCS 2 of 3
    rouge = corpus_scores(["the cat sat"], ["the cat ran"])
    assert rouge["rouge1"] == pytest.approx(2 / 3) and rouge["rouge2"] == pytest.approx(1 / 2)
    assert rouge["rougeL"] == pytest.approx(2 / 3)
    # ROUGE averages over examples; BLEU and chrF are corpus scores
    two = corpus_scores(["the cat sat", "a dog"], ["the cat ran", "a dog"])
    assert two["rouge1"] == pytest.approx((2 / 3 + 1) / 2)
    same = corpus_scores(["What is the capital of France?"], ["What is the capital of France?"])
    assert all(same[m] == pytest.approx(1.0) for m in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"))
    disjoint = corpus_scores(["xyz"], ["abc"])
    assert all(disjoint[m] == pytest.approx(0.0) for m in ("bleu", "chrf", "rouge1", "rouge2", "rougeL"))
    # an uncased model cannot produce capitals: lower-cased scoring does not punish it
    cased = corpus_scores(["what is the capital of france ?"], ["What is the capital of France?"])
    lower = corpus_scores(["what is the capital of france ?"], ["What is the capital of France?"], lowercase=True)
    assert lower["bleu"] == pytest.approx(1.0) and cased["bleu"] < 0.7
    assert lower["chrf"] == pytest.approx(1.0) and cased["chrf"] < 1.0
    # the copy floor: the sources scored as predictions
    floor = copy_scores(["the cat sat on the mat"], ["the cat sat on a mat"])
    assert floor == {
        f"copy_{k}": v
        for k, v in corpus_scores(["the cat sat on the mat"], ["the cat sat on a mat"]).items()
        if k in ("bleu", "chrf", "rougeL")
    }
    full = generation_scores(["a b", "c"], ["a b", "c"], ["x", "y"], [3, 2])
    assert full["gen_len"] == 2.5 and full["rows"] == 2 and full["copy_bleu"] == pytest.approx(0.0)
    assert corpus_scores([], [])["bleu"] == 0.0


# ------------------------------------------------------------------------------------------------ generation


def _torch_fns(model, ids, mask, decoder_start: int):
    """first/step for generation.py backed by the torch graph modules (what the ONNX files are exported from)."""
    import torch

    from pipelines.tasks.seq2seq.model import decoder_step_module, encoder_hidden_size, first_step_module

    first_module = first_step_module(model, decoder_start)
    with torch.inference_mode():
        out = first_module(torch.from_numpy(ids), torch.from_numpy(mask))
    layers = (len(out) - 1) // 4
    step_module = decoder_step_module(model, layers, encoder_hidden_size(model))

    def first():
        return (
            out[0].numpy(),
            [t.numpy() for t in out[1 : 1 + 2 * layers]],
            [t.numpy() for t in out[1 + 2 * layers :]],
        )

    def step(tokens, encoder_mask, self_kv, cross_kv):
        with torch.inference_mode():
            result = step_module(
                torch.from_numpy(np.asarray(tokens, dtype=np.int64))[:, None],
                torch.from_numpy(encoder_mask),
                *(torch.from_numpy(np.ascontiguousarray(t)) for t in self_kv),
                *(torch.from_numpy(np.ascontiguousarray(t)) for t in cross_kv),
            )
        return result[0].numpy(), [t.numpy() for t in result[1:]]

    return first, step


SETTINGS = [
    {"num_beams": 1, "max_new_tokens": 9, "no_repeat_ngram_size": 0},
    {"num_beams": 1, "max_new_tokens": 9, "no_repeat_ngram_size": 2},
    {"num_beams": 3, "max_new_tokens": 8, "no_repeat_ngram_size": 0, "length_penalty": 1.0},
    {"num_beams": 4, "max_new_tokens": 7, "no_repeat_ngram_size": 2, "length_penalty": 0.6, "early_stopping": True},
    {"num_beams": 1, "max_new_tokens": 9, "no_repeat_ngram_size": 2, "source_bias": 4.0},
    {"num_beams": 3, "max_new_tokens": 8, "no_repeat_ngram_size": 2, "source_bias": 4.0},
    {
        "num_beams": 3,
        "max_new_tokens": 8,
        "no_repeat_ngram_size": 2,
        "source_bias": 4.0,
        "source_bias_normalised": True,
    },
    {"num_beams": 1, "max_new_tokens": 9, "no_repeat_ngram_size": 2, "source_bias": 4.0, "vocabulary": ("what", "?")},
    {
        "num_beams": 3,
        "max_new_tokens": 8,
        "no_repeat_ngram_size": 2,
        "source_bias": 4.0,
        "source_bias_normalised": True,
        "vocabulary": ("what", "is", "?"),
    },
]


@pytest.mark.parametrize(
    "options",
    SETTINGS,
    ids=[
        "greedy",
        "greedy-ngram",
        "beam3",
        "beam4-ngram-lp-early",
        "greedy-source-bias",
        "beam3-source-bias",
        "beam3-source-bias-normalised",
        "greedy-vocabulary",
        "beam3-vocabulary-source-bias-normalised",
    ],
)
def test_numpy_generation_matches_torch_generate(bert2bert, options: dict) -> None:
    """The loop the ONNX runtime runs gives torch's token ids exactly, greedy and beam (float32 throughout)."""
    import torch

    from pipelines.tasks.seq2seq.generation import generate, trim
    from pipelines.tasks.seq2seq.model import torch_generate

    task, model, tok = bert2bert
    if "vocabulary" in options:  # words -> the tiny tokenizer's ids
        options = {**options, "vocabulary": tuple(tok.convert_tokens_to_ids(list(options["vocabulary"])))}
    settings = dataclasses.replace(task.settings_for(task.special_tokens()), **options)
    enc = tok(SOURCES, padding="longest", return_tensors="np", return_token_type_ids=False)
    ids, mask = enc["input_ids"].astype(np.int64), enc["attention_mask"].astype(np.int64)
    with torch.inference_mode():
        expected = torch_generate(model, torch.from_numpy(ids), torch.from_numpy(mask), settings)
    expected_ids = [trim(row, settings.eos_token_ids) for row in expected.tolist()]
    first, step = _torch_fns(model, ids, mask, settings.decoder_start_token_id)
    got = generate(first, step, mask, settings, ids)
    assert got.sequences == expected_ids
    if settings.source_bias:  # the bias pulls the random model's outputs onto each row's own source tokens
        unbiased = generate(first, step, mask, dataclasses.replace(settings, source_bias=0.0, vocabulary=None))
        special = {settings.decoder_start_token_id, *settings.eos_token_ids, settings.pad_token_id}

        def from_source(sequences: list[list[int]]) -> float:
            sources = [set(row[m == 1].tolist()) for row, m in zip(ids, mask, strict=True)]
            hits = [t in src for src, seq in zip(sources, sequences, strict=True) for t in seq if t not in special]
            return sum(hits) / max(len(hits), 1)

        assert from_source(got.sequences) > from_source(unbiased.sequences)
    if settings.vocabulary is not None:  # only each row's own source tokens, the vocabulary and EOS are written
        for row, m, seq in zip(ids, mask, got.sequences, strict=True):
            allowed = (set(row[m == 1].tolist()) | set(settings.vocabulary) | set(settings.eos_token_ids)) - {
                settings.decoder_start_token_id,
                settings.pad_token_id,
            }
            assert set(seq[1:]) <= allowed, (seq, allowed)
    assert len({tuple(s) for s in got.sequences}) > 2, got.sequences  # the random model does depend on its input
    if options["max_new_tokens"] >= 8:
        assert any(len(s) < settings.max_length for s in got.sequences)  # some stop at EOS before the limit
    if options["no_repeat_ngram_size"] == 2:
        for seq in got.sequences:
            bigrams = list(itertools.pairwise(seq))
            assert len(bigrams) == len(set(bigrams))


def test_generation_helpers() -> None:
    from pipelines.tasks.seq2seq.generation import (
        GenerationSettings,
        banned_ngram_tokens,
        process_scores,
        source_bias_rows,
        trim,
    )

    assert (
        trim([2, 5, 3, 0, 0], [3]) == [2, 5, 3]
        and trim([2, 5, 6], [3]) == [2, 5, 6]
        and trim([3, 4, 3], [3]) == [3, 4, 3]
    )
    seqs = np.asarray([[2, 5, 6, 5]])
    assert banned_ngram_tokens(seqs, 2) == [(0, 6)]  # (5, 6) was seen: after 5, 6 is banned
    s = GenerationSettings(2, (3,), 0, max_new_tokens=3, forced_bos_token_id=7, forced_eos_token_ids=(3,))
    first = process_scores(np.asarray([[2]]), np.zeros((1, 10), dtype=np.float32), s)
    assert first.argmax() == 7 and np.isinf(first).sum() == 9
    last = process_scores(np.asarray([[2, 5, 6]]), np.zeros((1, 10), dtype=np.float32), s)
    assert last.argmax() == 3 and np.isinf(last).sum() == 9
    assert GenerationSettings.from_dict(s.to_dict()) == s
    # the source-token bias: each row's real source tokens, the start/EOS/pad tokens excepted
    biased = GenerationSettings(2, (3,), 0, source_bias=1.5)
    rows = source_bias_rows(
        np.asarray([[2, 5, 6, 3], [2, 7, 3, 0]]), np.asarray([[1, 1, 1, 1], [1, 1, 1, 0]]), 10, biased
    )
    assert rows.dtype == np.float32 and rows.shape == (2, 10)
    assert np.nonzero(rows[0])[0].tolist() == [5, 6] and np.nonzero(rows[1])[0].tolist() == [7]
    assert rows.max() == np.float32(1.5) and source_bias_rows(None, np.ones((1, 1)), 10, s) is None
    with pytest.raises(ValueError, match="token ids"):
        source_bias_rows(None, np.ones((1, 1)), 10, biased)
    scored = process_scores(np.asarray([[2], [2]]), np.zeros((2, 10), dtype=np.float32), biased, rows)
    assert scored[0].argmax() == 5 and scored[1].argmax() == 7
    assert GenerationSettings.from_dict(biased.to_dict()) == biased
    # the output vocabulary: -inf on every token neither in the row's source, nor in the vocabulary, nor EOS
    kept = GenerationSettings(2, (3,), 0, source_bias=1.5, vocabulary=(8, 9))
    ids, mask = np.asarray([[2, 5, 6, 3], [2, 7, 3, 0]]), np.asarray([[1, 1, 1, 1], [1, 1, 1, 0]])
    rows = source_bias_rows(ids, mask, 10, kept)
    assert np.isfinite(rows[0]).nonzero()[0].tolist() == [3, 5, 6, 8, 9]
    assert np.isfinite(rows[1]).nonzero()[0].tolist() == [3, 7, 8, 9]
    assert rows[0, 5] == np.float32(1.5) and rows[0, 8] == 0.0 and rows[0, 3] == 0.0
    plain = source_bias_rows(ids, mask, 10, kept, bias=False)  # the vocabulary rule alone (the loss without a bias)
    assert plain[0, 5] == 0.0 and np.isinf(plain[0, 4])
    assert source_bias_rows(ids, mask, 10, dataclasses.replace(kept, source_bias=0.0)) is not None
    scored = process_scores(np.asarray([[2], [2]]), np.zeros((2, 10), dtype=np.float32), kept, rows)
    assert np.isinf(scored[:, [0, 1, 2, 4]]).all() and scored[0].argmax() == 5
    assert GenerationSettings.from_dict(json.loads(json.dumps(kept.to_dict()))) == kept


# ------------------------------------------------------------------------------------------------ ONNX


def test_onnx_export_parity_and_runtime_match_torch_greedy_and_beam(bert2bert, tmp_path: Path) -> None:
    """Two graphs exported (dynamo), parity checked on real rows (token ids + first-step logits), and the
    torch-free runtime generating torch's ids for greedy and beam search."""
    import torch

    from pipelines.config import ExportConfig
    from pipelines.export_onnx import export_onnx
    from pipelines.serving import load_runtime
    from pipelines.tasks.seq2seq.generation import trim
    from pipelines.tasks.seq2seq.model import torch_generate

    _, model, tok = bert2bert
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    frame = pd.DataFrame({"source": SOURCES * 5, "target": ["x"] * 35, "row": range(35)})
    frame.to_parquet(tmp_path / "validation.parquet")
    generate = {"num_beams": 2, "max_new_tokens": 6}  # the export's own parity check runs beam search
    task = _task(make_params(tmp_path, model={"path": str(model_dir)}, task={"generate": generate}))
    result = export_onnx(
        model_dir, tmp_path / "validation.parquet", tmp_path / "export", ExportConfig(latency_runs=2), task
    )
    assert result["passed"] and result["label_mismatches"] == 0 and result["rows"] == 35
    assert result["batch_sizes"] == [1, 7, 27] and result["max_abs_diff"] < 1e-4
    assert set(result["onnx_files"]) == {"model.onnx", "decoder.onnx"} and "latency_p95_ms" in result
    serving = json.loads((tmp_path / "export" / "serving.json").read_text())
    assert serving["task"] == "seq2seq" and serving["layers"] == 2 and serving["generation"]["num_beams"] == 2

    runtime = load_runtime(tmp_path / "export")
    trained = task.load_trained(model_dir)
    base = runtime.settings
    for options in (
        {"num_beams": 1, "no_repeat_ngram_size": 0},
        {"num_beams": 3, "length_penalty": 0.8},
        {"num_beams": 2, "source_bias": 3.0},
        {"num_beams": 2, "vocabulary": tuple(tok.convert_tokens_to_ids(["what", "?"])), "source_bias_normalised": True},
    ):
        settings = dataclasses.replace(base, max_new_tokens=9, **options)
        feeds = runtime.encode(SOURCES)
        with torch.inference_mode():
            expected = torch_generate(
                trained, torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]), settings
            )
        assert runtime.generate_ids(SOURCES, settings).sequences == [
            trim(r, settings.eos_token_ids) for r in expected.tolist()
        ]
    results = runtime.predict(SOURCES[:2], batch_size=1)
    assert set(results[0]) == {"generated_text", "tokens", "score", "latency_ms", "tokens_per_s"}
    assert runtime.format_result(results[0]) == results[0]["generated_text"]
    assert runtime.items_from_frame(pd.DataFrame({"source": ["a", "b"]})) == ["a", "b"]
    with pytest.raises(ValueError, match="source text"):
        runtime.predict([{"question": "x"}])
    predictions = task.predictions_from_runtime(results, {})
    assert predictions.values == [r["generated_text"] for r in results]


def test_tied_encoder_decoder_weights_survive_save_and_load(encoder_dir: Path, tmp_path: Path) -> None:
    import torch

    params = make_params(tmp_path, model={"path": str(encoder_dir)}, task={"tie_encoder_decoder": True})
    task = _task(params)
    model = task.build_model(encoder_dir, {}, params.model).eval()
    shared = model.encoder.encoder.layer[0].attention.self.query.weight
    assert model.decoder.bert.encoder.layer[0].attention.self.query.weight is shared
    assert model.decoder.cls.predictions.decoder.weight is model.encoder.embeddings.word_embeddings.weight
    assert model.decoder.bert.encoder.layer[0].crossattention.self.query.weight is not shared  # new, not tied
    untied = _task(make_params(tmp_path, model={"path": str(encoder_dir)})).build_model(encoder_dir, {}, params.model)
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in untied.parameters())
    model.save_pretrained(tmp_path / "tied")
    loaded = task.load_trained(tmp_path / "tied")
    assert (
        loaded.decoder.bert.encoder.layer[0].attention.self.query.weight
        is loaded.encoder.encoder.layer[0].attention.self.query.weight
    )
    ids = torch.tensor([[2, 7, 8, 3]])
    with torch.inference_mode():
        a = model(input_ids=ids, decoder_input_ids=ids).logits
        b = loaded(input_ids=ids, decoder_input_ids=ids).logits
    assert torch.allclose(a, b)


def test_cross_attention_can_start_as_a_copy_of_self_attention(encoder_dir: Path, tmp_path: Path) -> None:
    import torch

    params = make_params(tmp_path, model={"path": str(encoder_dir)}, task={"cross_attention_init": "self_attention"})
    model = _task(params).build_model(encoder_dir, {}, params.model)
    for layer in model.decoder.bert.encoder.layer:
        own, cross = layer.attention.state_dict(), layer.crossattention.state_dict()
        assert all(torch.equal(own[k], cross[k]) for k in own)
        assert layer.crossattention.self.query.weight is not layer.attention.self.query.weight  # copies, not shared
    random = _task(make_params(tmp_path, model={"path": str(encoder_dir)})).build_model(encoder_dir, {}, params.model)
    layer = random.decoder.bert.encoder.layer[0]
    assert not torch.equal(layer.attention.self.query.weight, layer.crossattention.self.query.weight)


def test_training_loss_with_label_smoothing_and_predict_on_a_sample(bert2bert, tmp_path: Path) -> None:
    from pipelines.config import TokeniseConfig

    base, model, tok = bert2bert
    frame = pd.DataFrame({"source": SOURCES, "target": ["the cat"] * len(SOURCES), "row": range(len(SOURCES))})
    frame.attrs["split"] = "validation"
    task = _task(
        base.params.model_copy(update={"task": base.options.model_copy(update={"validation_generate_rows": 3})})
    )
    rows = task.tokenise(tok, frame, TokeniseConfig(max_length=32))
    batch = task.collate(rows, tok.pad_token_id)
    assert set(batch) == {"input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask", "labels"}
    plain = float(task.training_loss(model, batch).detach())
    task.options.label_smoothing = 0.1
    smoothed = float(task.training_loss(model, batch).detach())
    task.options.label_smoothing = 0.0
    assert math.isfinite(plain) and smoothed != pytest.approx(plain)
    predictions = task.predict(model, rows, frame, 4, tok.pad_token_id)
    assert sum(v is not None for v in predictions.values) == 3 and math.isfinite(predictions.loss)
    scores = task.score(predictions, frame, {})
    assert scores["rows"] == 3 and set(task.spec.metrics) <= set(scores)
    slices, membership, _ = task.slices(predictions, frame, rows, {})
    assert sum(s["rows"] for s in slices.values()) == 3 and membership["generated"]


def test_source_bias_in_loss_is_the_loss_on_the_biased_logits_and_needs_a_bias(bert2bert) -> None:
    import torch

    from pipelines.config import TokeniseConfig, load_params
    from pipelines.errors import ConfigError

    base, model, tok = bert2bert
    frame = pd.DataFrame({"source": SOURCES[:4], "target": ["the cat", "a dog", "mat", "cat"], "row": range(4)})
    frame.attrs["split"] = "train"
    generate = base.options.generate.model_copy(update={"source_bias": 2.5})
    task = _task(
        base.params.model_copy(
            update={"task": base.options.model_copy(update={"generate": generate, "source_bias_in_loss": True})}
        )
    )
    batch = task.collate(task.tokenise(tok, frame, TokeniseConfig(max_length=32)), tok.pad_token_id)
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        logits = model(**inputs).logits
        biased = logits.clone()
        special = {model.generation_config.decoder_start_token_id, tok.sep_token_id, tok.pad_token_id}
        for row, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"], strict=True)):
            for token in {int(t) for t, m in zip(ids, mask, strict=True) if m} - special:
                biased[row, :, token] += 2.5  # every target step of the row: the bias generation adds
        expected = torch.nn.functional.cross_entropy(biased.reshape(-1, biased.shape[-1]), batch["labels"].reshape(-1))
        plain = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1))
        got = task.training_loss(model, batch)
    assert float(got) == pytest.approx(float(expected), rel=1e-5) and float(got) != pytest.approx(float(plain))

    class Wrapper(torch.nn.Module):  # DistributedDataParallel's shape: the model is .module, the call forwards
        def __init__(self) -> None:
            super().__init__()
            self.module = model

        def forward(self, **kw):
            return self.module(**kw)

    with torch.no_grad():
        assert float(task.training_loss(Wrapper(), batch)) == pytest.approx(float(expected), rel=1e-5)
    with pytest.raises(ConfigError, match=r"task\.source_bias_in_loss is on but task\.generate\.source_bias is 0"):
        load_params(REPO / "params.yaml", ["task.type=seq2seq", "task.source_bias_in_loss=true"])


def test_output_vocabulary_is_learned_from_training_targets_kept_with_the_model_and_bounds_the_loss(
    bert2bert, tmp_path: Path
) -> None:
    """task.output_vocabulary: the target tokens most often absent from their own source, counted once per target;
    stored on the model's config (it survives save/load and reaches the generation settings); the training loss is
    the cross-entropy of a softmax over the row's source tokens, those ids and EOS, label smoothing spread over them
    alone, and target tokens outside them are not trained on."""
    import torch

    from pipelines.config import TokeniseConfig, load_params
    from pipelines.errors import ConfigError
    from pipelines.tasks.seq2seq.model import VOCABULARY_ATTR, generation_settings, learned_vocabulary

    base, _, tok = bert2bert
    special = base.special_tokens()
    ids = tok.convert_tokens_to_ids
    sources = [[2, *ids(["the", "cat"]), 3], [2, *ids(["a", "dog"]), 3], [2, *ids(["mat"]), 3]]
    labels = [
        [*ids(["what", "what", "the", "?"]), 3],
        [*ids(["what", "is", "the", "?"]), 3, -100],
        [*ids(["is", "mat", "?"]), 3],
    ]
    # '?' in 3 targets, 'what' and 'is' in 2 (once per target), 'the' counts only where its source lacks it: 1
    assert learned_vocabulary(sources, labels, special, 3) == [ids("?"), *sorted(ids(["what", "is"]))]
    assert learned_vocabulary(sources, labels, special, 10)[-1] == ids("the")  # 'mat' is in its own source
    # with groups (articles): a word one group's targets keep adding ranks below one that two groups add
    topical = [[2, 3]] * 4
    topic_labels = [[*ids(["dog"]), 3], [*ids(["dog"]), 3], [*ids(["dog", "what"]), 3], [*ids(["what"]), 3]]
    assert learned_vocabulary(topical, topic_labels, special, 2)[0] == ids("dog")  # 3 targets against 2
    assert learned_vocabulary(topical, topic_labels, special, 2, ["a", "a", "a", "b"]) == ids(["what", "dog"])
    assert learned_vocabulary(topical, topic_labels, special, 2, ["a", "a", "b", "b"])[0] == ids("dog")  # both wide

    options = base.options.model_copy(
        update={"output_vocabulary": 2, "output_vocabulary_in_loss": True, "label_smoothing": 0.1}
    )
    task = _task(base.params.model_copy(update={"task": options}))
    decoding_only = _task(
        base.params.model_copy(update={"task": options.model_copy(update={"output_vocabulary_in_loss": False})})
    )
    frame = pd.DataFrame({"source": SOURCES[:4], "target": ["what is the cat", "a dog ?", "what mat", "z"]})
    frame["row"] = range(4)
    frame.attrs["split"] = "train"
    rows = task.tokenise(tok, frame, TokeniseConfig(max_length=32))
    fresh = task.build_model(Path(base.params.model.path), {}, base.params.model)
    task.learn_from_training_split(fresh, rows)
    learned = getattr(fresh.config, VOCABULARY_ATTR)  # every such token, most frequent first
    assert learned == [ids("what"), *sorted(ids(["is", "?", "z"]))]  # 'what' twice, then ties by id
    # the clean split's data.group_column values (the flow passes its clean train.parquet): indexed by example_id
    frame.assign(group=["b", "a", "a", "a"]).to_parquet(tmp_path / "clean.parquet")
    task.learn_from_training_split(fresh, rows, tmp_path / "clean.parquet")
    groups = [["b", "a", "a", "a"][i] for i in rows["example_id"]]
    expected = learned_vocabulary(rows["input_ids"], rows["labels"], task.special_tokens(), 1000, groups)
    assert getattr(fresh.config, VOCABULARY_ATTR) == expected
    fresh.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded = task.load_trained(tmp_path / "m")
    settings = generation_settings(loaded, task.options)
    vocabulary = list(settings.vocabulary)
    assert vocabulary == learned[:2] and settings.source_bias_normalised  # beam scores as trained
    assert not generation_settings(loaded, decoding_only.options).source_bias_normalised
    assert generation_settings(loaded, base.options).vocabulary is None  # task.output_vocabulary 0: off

    batch = task.collate(rows, tok.pad_token_id)
    with torch.no_grad():
        got = task.training_loss(fresh, batch)
        logits = fresh(**{k: v for k, v in batch.items() if k != "labels"}).logits
    total, count = 0.0, 0
    for r in range(logits.shape[0]):
        source = {int(t) for t, m in zip(batch["input_ids"][r], batch["attention_mask"][r], strict=True) if m}
        allowed = sorted((source - {2, tok.pad_token_id}) | set(vocabulary) | {3})
        for position, label in enumerate(batch["labels"][r].tolist()):
            if label == -100 or label not in allowed:
                continue  # padding, and what generation can never write: not trained on
            logp = torch.log_softmax(logits[r, position, allowed], dim=-1)
            total += float(-(0.9 * logp[allowed.index(label)] + 0.1 * logp.mean()))
            count += 1
    assert 0 < count < int((batch["labels"] != -100).sum())  # 'z' is neither in its source nor in the vocabulary
    assert float(got) == pytest.approx(total / count, rel=1e-5)
    with torch.no_grad():  # without output_vocabulary_in_loss: the plain loss
        plain = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), batch["labels"].reshape(-1), label_smoothing=0.1
        )
        assert float(decoding_only.training_loss(fresh, batch)) == pytest.approx(float(plain), rel=1e-5)
    with pytest.raises(ConfigError, match=r"task\.output_vocabulary_in_loss is on but task\.output_vocabulary is 0"):
        load_params(REPO / "params.yaml", ["task.type=seq2seq", "task.output_vocabulary_in_loss=true"])


def test_clean_splits_by_the_group_column_and_names_it_when_missing(tmp_path: Path) -> None:
    rows = [
        {"source": f"answer: a{i} context: sentence {i} of {g}", "target": f"question {i} ?", "title": g}
        for g in ("alpha", "beta", "gamma", "delta", "epsilon")
        for i in range(12)
    ]
    path = write_jsonl(tmp_path / "train.jsonl", rows)
    clean = {"validation_size": 0.2, "test_size": 0.2}
    params = make_params(tmp_path, path, data={"group_column": "title"}, clean=clean)
    summary = _task(params).clean_data(tmp_path / "clean")
    assert summary["split_by"] == "group (title)"
    titles = {
        s: set(pd.read_parquet(tmp_path / "clean" / f"{s}.parquet")["source"].str.rsplit(" ", n=1).str[-1])
        for s in ("train", "validation", "test")
    }
    assert all(len(t) >= 1 for t in titles.values())
    assert sum(len(t) for t in titles.values()) == 5  # each article in exactly one split
    assert summary["splits"] == {s: 12 * len(titles[s]) for s in titles}
    # the test file may lack the group column: only the split file needs it
    test = write_jsonl(tmp_path / "test.jsonl", [{"source": "x y", "target": "z ?"}])
    grouped = make_params(tmp_path, path, data={"group_column": "title", "test_path": str(test)}, clean=clean)
    assert _task(grouped).clean_data(tmp_path / "clean2")["splits"]["test"] == 1
    missing = make_params(tmp_path, path, data={"group_column": "article"}, clean=clean)
    with pytest.raises(DataError, match=r"missing column 'article'.*data\.group_column"):
        _task(missing).clean_data(tmp_path / "clean3")


def test_group_split_does_not_overshoot_a_share_with_a_large_group() -> None:
    from pipelines.tasks.seq2seq.clean import split_by_source

    # 1,000 rows; validation's share 100: a 90-row group, then a 300-row one would make it 390 (skipped)
    sizes = {"a": 90, "b": 300, "c": 12, "d": 250, "e": 348}
    keys = pd.Series([name for name, n in sizes.items() for _ in range(n)])
    for seed in range(20):
        splits = split_by_source(keys, {"validation": 0.1}, seed, "train.jsonl", unit="group")
        assert 0 < len(splits["validation"]) <= 200, seed  # never two large groups where one small one does
        assert len(splits["validation"]) + len(splits["train"]) == 1000

    # with an order that starts at the 90-row group, the 300 is skipped and the 12 fills it
    def chosen(seed: int) -> set[str]:
        return set(keys.iloc[split_by_source(keys, {"validation": 0.1}, seed, "f")["validation"]])

    assert all(not chosen(seed) & {"b", "d", "e"} for seed in range(50))  # 250-348 rows: never, 90 + 12 fit
    assert {frozenset(chosen(seed)) for seed in range(50)} <= {frozenset("a"), frozenset("c"), frozenset("ac")}


def test_package_import_is_torch_free() -> None:
    code = (
        "import sys; import pipelines.tasks.seq2seq, pipelines.tasks.seq2seq.runtime, "
        "pipelines.tasks.seq2seq.generation, pipelines.tasks.seq2seq.metrics; "
        "print('torch' in sys.modules, 'transformers' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert done.stdout.split() == ["False", "False"], done.stdout


def build_tiny_seq2seq(path: Path, kind: str) -> Path:
    """A tiny random BART (decoder starts at EOS, forced BOS/EOS) or T5 (starts at pad, relative attention)
    folder with the word-level tokenizer: the AutoModelForSeq2SeqLM path."""
    import torch
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        BertTokenizerFast,
        GenerationConfig,
        T5Config,
        T5ForConditionalGeneration,
    )

    vocab = list(dict.fromkeys(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, *LETTERS]))
    path.mkdir(parents=True, exist_ok=True)
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocab)}, do_lower_case=True).save_pretrained(path)
    torch.manual_seed(0)
    if kind == "bart":
        config = BartConfig(
            vocab_size=len(vocab),
            d_model=32,
            encoder_layers=1,
            decoder_layers=2,
            encoder_attention_heads=2,
            decoder_attention_heads=2,
            encoder_ffn_dim=37,
            decoder_ffn_dim=37,
            max_position_embeddings=64,
            pad_token_id=0,
            bos_token_id=2,
            eos_token_id=3,
            decoder_start_token_id=3,
            init_std=0.2,
        )
        model = BartForConditionalGeneration(config)
        generation = {"decoder_start_token_id": 3, "forced_bos_token_id": 2, "forced_eos_token_id": 3}
    else:
        config = T5Config(
            vocab_size=len(vocab),
            d_model=32,
            d_kv=16,
            d_ff=37,
            num_layers=2,  # transformers sizes generate's cache by num_layers: keep the decoder as deep
            num_decoder_layers=2,
            num_heads=2,
            pad_token_id=0,
            eos_token_id=3,
            decoder_start_token_id=0,
            initializer_factor=2.0,
        )
        model = T5ForConditionalGeneration(config)
        generation = {"decoder_start_token_id": 0}
    model.generation_config = GenerationConfig(pad_token_id=0, eos_token_id=3, bos_token_id=2, **generation)
    model.save_pretrained(path)
    return path


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["bart", "t5"])
def test_any_seq2seq_folder_exports_with_parity(tmp_path: Path, kind: str) -> None:
    """A local AutoModelForSeq2SeqLM folder (not BERT2BERT) through build, export, parity and the runtime."""
    import torch

    from pipelines.config import ExportConfig
    from pipelines.export_onnx import export_onnx
    from pipelines.serving import load_runtime
    from pipelines.tasks.seq2seq.generation import trim
    from pipelines.tasks.seq2seq.model import torch_generation_config

    folder = build_tiny_seq2seq(tmp_path / kind, kind)
    task = _task(make_params(tmp_path, model={"path": str(folder)}, task={"generate": {"num_beams": 2}}))
    special = task.special_tokens()
    if kind == "bart":
        assert (special.decoder_start_token_id, special.forced_bos_token_id) == (3, 2)
    model = task.build_model(folder, {}, task.params.model).eval()
    assert type(model).__name__ == ("BartForConditionalGeneration" if kind == "bart" else "T5ForConditionalGeneration")
    model_dir = tmp_path / "model"
    model.save_pretrained(model_dir)
    task.tokenizer().save_pretrained(model_dir)
    frame = pd.DataFrame({"source": SOURCES * 5, "target": ["x"] * 35, "row": range(35)})
    frame.to_parquet(tmp_path / "validation.parquet")
    result = export_onnx(
        model_dir, tmp_path / "validation.parquet", tmp_path / "export", ExportConfig(latency_runs=0), task
    )
    assert result["passed"] and result["label_mismatches"] == 0, result
    runtime = load_runtime(tmp_path / "export")
    trained = task.load_trained(model_dir)
    settings = dataclasses.replace(runtime.settings, num_beams=1, max_new_tokens=7)
    feeds = runtime.encode(SOURCES)
    with torch.inference_mode():
        expected = trained.generate(
            input_ids=torch.from_numpy(feeds["input_ids"]),
            attention_mask=torch.from_numpy(feeds["attention_mask"]),
            generation_config=torch_generation_config(settings),
        )
    got = runtime.generate_ids(SOURCES, settings).sequences
    assert got == [trim(r, settings.eos_token_ids) for r in expected.tolist()]
    if kind == "bart":
        assert all(seq[:2] == [3, 2] and seq[-1] == 3 for seq in got)  # start at EOS, forced BOS, forced EOS
