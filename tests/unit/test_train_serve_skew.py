"""Train/serve skew: the token ids the model was trained on must be the ids the serving runtime feeds it.

Training side: the real `tokenise` stage (`pipelines.tokenise.tokenise_splits`, which calls the task's `tokenise`
through the tokenizer's Rust backend) on a cleaned split, read back from its Parquet output.
Serving side: the real runtime (`pipelines.serving.load_runtime` on an export folder laid out like
`export_onnx` writes it, tokenizer saved with `save_pretrained`), with the ONNX session replaced by a recorder of
the feeds `predict_logits` sends it; padding is removed with the attention mask it sends.

The tokenizer is the bundled MiniLM one (a tokenizer load, no weights). Text is real: SST-2 sentences, RTE
sentence pairs and long inputs (well over max_length, so truncation is compared too), read by path from
../shared/data (skipped with the reason when absent), and the demo reviews shipped in demo/.

More task types: add their cases to CASES (a `SkewCase` holds a cleaned split frame with the columns the task
reads) and, when their serving runtime is not the text classifier, a function in SERVING_IDS.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA_ENV = "NLPOPS_SHARED_DATA"
# Every input the BERT-family export has (export_onnx.onnx_input_names): token_type_ids included, also for one
# sentence, where serving must send zeros (training sends none, and the model defaults them to zeros).
INPUT_NAMES = ["input_ids", "attention_mask", "token_type_ids"]
SERVING_BATCH = 16  # serving pads each batch to its longest row; ids must not depend on the batch

Encoded = tuple[tuple[int, ...], tuple[int, ...] | None]  # (input ids, token type ids or None when not produced)


def shared_data() -> Path:
    """$NLPOPS_SHARED_DATA, else ../shared/data relative to the project root (for a git worktree, also relative to
    its main checkout)."""
    if os.environ.get(SHARED_DATA_ENV):
        return Path(os.environ[SHARED_DATA_ENV])
    candidates = [REPO.parent / "shared" / "data"]
    done = subprocess.run(
        ["git", "rev-parse", "--path-format=absolute", "--git-common-dir"], cwd=REPO, capture_output=True, text=True
    )
    if done.returncode == 0 and done.stdout.strip():
        candidates.append(Path(done.stdout.strip()).parent.parent / "shared" / "data")
    return next((path for path in candidates if path.is_dir()), candidates[0])


def read_shared(rel: str, **kwargs: Any) -> pd.DataFrame:
    path = shared_data() / rel
    if not path.is_file():
        pytest.skip(
            f"{path} not found: the real data sets are read from ../shared/data next to the project "
            f"(set {SHARED_DATA_ENV} to their folder to run this case)"
        )
    return pd.read_csv(path, sep="\t", quoting=csv.QUOTE_NONE, keep_default_na=False, **kwargs)


@dataclass(frozen=True)
class SkewCase:
    """One comparison: a cleaned split (`frame`, the columns the task reads + label) tokenised both ways."""

    task: str
    frame: pd.DataFrame
    max_length: int
    expect_truncation: bool = False  # the case is meant to exercise truncation: some rows must hit max_length


def _single(texts: list[str], max_length: int, expect_truncation: bool = False) -> SkewCase:
    frame = pd.DataFrame({"text": texts, "label": [i % 2 for i in range(len(texts))]})
    return SkewCase("text_classification", frame, max_length, expect_truncation)


def _pairs(firsts: list[str], seconds: list[str], max_length: int, expect_truncation: bool = False) -> SkewCase:
    frame = pd.DataFrame({"text": firsts, "text_pair": seconds, "label": [i % 2 for i in range(len(firsts))]})
    return SkewCase("text_classification", frame, max_length, expect_truncation)


def _joined(sentences: list[str], per_text: int) -> list[str]:
    """Consecutive sentences joined into long texts (hundreds of tokens)."""
    return [" ".join(sentences[i : i + per_text]) for i in range(0, len(sentences) - per_text + 1, per_text)]


def demo_reviews() -> SkewCase:
    frame = pd.read_csv(REPO / "demo" / "reviews.csv", keep_default_na=False)
    return _single(frame["text"].tolist()[:200], 128)


def demo_reviews_truncated() -> SkewCase:
    frame = pd.read_csv(REPO / "demo" / "reviews.csv", keep_default_na=False)
    return _single(frame["text"].tolist()[:200], 12, expect_truncation=True)


def sst2_sentences() -> SkewCase:
    return _single(read_shared("sst2/dev.tsv")["sentence"].tolist()[:300], 128)


def sst2_long_texts() -> SkewCase:
    """~30 sentences per text (several hundred tokens), cut at 64 tokens."""
    sentences = read_shared("sst2/train.tsv")["sentence"].tolist()[:1200]
    return _single(_joined(sentences, 30), 64, expect_truncation=True)


def sst2_over_model_max() -> SkewCase:
    """Texts longer than the model's 512 positions, at max_length 512."""
    sentences = read_shared("sst2/train.tsv")["sentence"].tolist()[:3000]
    return _single(_joined(sentences, 150), 512, expect_truncation=True)


def rte_pairs() -> SkewCase:
    frame = read_shared("rte/train.tsv")[:300]
    return _pairs(frame["sentence1"].tolist(), frame["sentence2"].tolist(), 128, expect_truncation=True)


def rte_pairs_truncated() -> SkewCase:
    """longest_first truncation of both sides (premises are long, hypotheses short), and the reverse order."""
    frame = read_shared("rte/val.tsv", header=None, names=["index", "sentence1", "sentence2", "label"])[:200]
    firsts, seconds = frame["sentence1"].tolist(), frame["sentence2"].tolist()
    return _pairs(firsts + seconds, seconds + firsts, 40, expect_truncation=True)


def rte_long_pairs() -> SkewCase:
    """Both sides over max_length on their own."""
    frame = read_shared("rte/train.tsv")
    premises = frame["sentence1"].tolist()[:800]
    return _pairs(_joined(premises, 8), _joined(premises[400:] + premises[:400], 8), 96, expect_truncation=True)


CASES: dict[str, Callable[[], SkewCase]] = {
    "demo-reviews": demo_reviews,
    "demo-reviews-max12": demo_reviews_truncated,
    "sst2-dev": sst2_sentences,
    "sst2-long-max64": sst2_long_texts,
    "sst2-over-512": sst2_over_model_max,
    "rte-pairs": rte_pairs,
    "rte-pairs-max40-both-orders": rte_pairs_truncated,
    "rte-long-pairs-max96": rte_long_pairs,
}


# ------------------------------------------------------------------------------------------------ the two sides


def training_ids(case: SkewCase, tokenizer_dir: Path, tmp: Path) -> list[Encoded]:
    """Run the tokenise stage on `case.frame` (as every split) and read the train split's ids back."""
    from pipelines.config import TokeniseConfig
    from pipelines.paths import SPLITS
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits

    clean = tmp / "clean"
    clean.mkdir(parents=True)
    for split in SPLITS:
        case.frame.to_parquet(clean / f"{split}.parquet", index=False)
    cfg = TokeniseConfig(max_length=case.max_length)
    tokenise_splits(clean, tokenizer_dir, tmp / "tok", tmp / "cache", cfg, get_task(case.task))
    out = pd.read_parquet(tmp / "tok" / "train.parquet")
    types = out["token_type_ids"] if "token_type_ids" in out.columns else [None] * len(out)
    return [
        (tuple(int(i) for i in ids), None if tt is None else tuple(int(t) for t in tt))
        for ids, tt in zip(out["input_ids"], types, strict=True)
    ]


class FeedRecorder:
    """Stands in for the onnxruntime session: records the feeds and answers logits whose first column numbers the
    rows in the order it saw them (the runtime batches rows by length, then puts results back in input order: the
    logits it returns tell which recorded row was which input)."""

    def __init__(self, input_names: list[str], labels: int) -> None:
        self.input_names, self.labels = input_names, labels
        self.feeds: list[dict[str, np.ndarray]] = []
        self.seen = 0

    def get_inputs(self) -> list[SimpleNamespace]:
        return [SimpleNamespace(name=name) for name in self.input_names]

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        self.feeds.append(feeds)
        rows = len(feeds["input_ids"])
        logits = np.zeros((rows, self.labels), dtype=np.float32)
        logits[:, 0] = np.arange(self.seen, self.seen + rows)
        self.seen += rows
        return [logits]


def classifier_serving_ids(
    case: SkewCase, tokenizer_dir: Path, tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> list[Encoded]:
    """The text-classification runtime on an export folder laid out like export_onnx's, fed rows in batches."""
    import pipelines.serving as serving
    from pipelines.pretrained import load_tokenizer

    export = tmp / "export"
    export.mkdir(parents=True)
    load_tokenizer(tokenizer_dir).save_pretrained(export / serving.TOKENIZER_DIR)  # as export_onnx does
    pair = "text_pair" in case.frame.columns
    meta = {"max_length": case.max_length, "pair": pair, "input_names": INPUT_NAMES, "id2label": {"0": "a", "1": "b"}}
    (export / serving.SERVING_FILE).write_text(json.dumps(meta))
    (export / serving.ONNX_FILE).write_bytes(b"not read: the session is a recorder")
    recorder = FeedRecorder(INPUT_NAMES, 2)
    monkeypatch.setattr(serving, "ort_session", lambda path: recorder)

    classifier = serving.load_runtime(export)  # serving.json without `task`: a text classifier
    texts = case.frame["text"].tolist()
    pairs = case.frame["text_pair"].tolist() if pair else None
    logits = classifier.predict_logits(texts, pairs, batch_size=SERVING_BATCH)

    rows: list[Encoded] = []
    for feeds in recorder.feeds:
        assert sorted(feeds) == sorted(INPUT_NAMES) and all(a.dtype == np.int64 for a in feeds.values())
        for ids, mask, types in zip(feeds["input_ids"], feeds["attention_mask"], feeds["token_type_ids"], strict=True):
            n = int(mask.sum())
            assert mask[:n].all() and not mask[n:].any(), "padding is not a suffix: the mask would skew positions"
            rows.append((tuple(int(i) for i in ids[:n]), tuple(int(t) for t in types[:n])))
    return [rows[int(seen)] for seen in logits[:, 0]]  # input order


SERVING_IDS = {"text_classification": classifier_serving_ids}


# ------------------------------------------------------------------------------------------------ the test


@pytest.fixture(scope="module")
def tokenizer_dir() -> Path:
    from pipelines.pretrained import bundled_model_path

    try:
        path = bundled_model_path()
    except Exception as exc:  # ModelLoadError: the package is not installed
        pytest.skip(f"bundled MiniLM tokenizer unavailable: {exc}")
    return path


def _first_difference(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize("case_name", list(CASES))
def test_training_and_serving_produce_the_same_ids(
    case_name: str, tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    case = CASES[case_name]()
    trained = training_ids(case, tokenizer_dir, tmp_path / "train")
    served = SERVING_IDS[case.task](case, tokenizer_dir, tmp_path / "serve", monkeypatch)

    assert len(trained) == len(served) == len(case.frame)
    lengths = [len(ids) for ids, _ in trained]
    assert max(lengths) <= case.max_length
    if case.expect_truncation:
        assert max(lengths) == case.max_length, "no row reached max_length: this case does not test truncation"
    pair = "text_pair" in case.frame.columns
    for row, ((train_ids, train_types), (serve_ids, serve_types)) in enumerate(zip(trained, served, strict=True)):
        where = f"{case_name} row {row} ({str(case.frame['text'].iloc[row])[:60]!r})"
        assert train_ids == serve_ids, (
            f"{where}: ids differ from position {_first_difference(train_ids, serve_ids)} "
            + (f"(training {len(train_ids)} ids, serving {len(serve_ids)})")
        )
        if pair:
            assert train_types == serve_types, f"{where}: token type ids differ"
            assert train_types is not None and 1 in train_types, f"{where}: no second segment"
        else:  # training sends no token_type_ids: the model uses zeros, and serving must send exactly that
            assert train_types is None and serve_types is not None and not any(serve_types), where


# ------------------------------------------------------------------------------------------------ token classification


def conll_sentences(limit: int = 300) -> pd.DataFrame:
    """Real CoNLL-2003 dev sentences as the clean stage writes them (tokens, tags, tag_ids)."""
    path = shared_data() / "conll2003" / "dev.txt"
    if not path.is_file():
        pytest.skip(f"{path} not found: the real data sets are read from ../shared/data next to the project")
    sentences, words = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip() or line.startswith("-DOCSTART-"):
            if words:
                sentences.append(words)
                words = []
            if len(sentences) >= limit:
                break
            continue
        words.append(line.split()[0])
    return pd.DataFrame({"tokens": sentences, "tags": [["O"] * len(s) for s in sentences]}).assign(
        tag_ids=lambda f: [[0] * len(s) for s in f["tokens"]]
    )


@pytest.mark.parametrize("max_length", [128, 16])  # 16: most sentences become several overlapping windows
def test_token_classification_training_and_serving_send_the_same_windows(
    max_length: int, tokenizer_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.serving as serving
    from pipelines.config import TokeniseConfig
    from pipelines.paths import SPLITS
    from pipelines.pretrained import load_tokenizer
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits

    frame = conll_sentences()
    task = get_task("token_classification", stride=4)
    clean = tmp_path / "clean"
    clean.mkdir()
    for split in SPLITS:
        frame.to_parquet(clean / f"{split}.parquet", index=False)
    tokenise_splits(
        clean, tokenizer_dir, tmp_path / "tok", tmp_path / "cache", TokeniseConfig(max_length=max_length), task
    )
    trained = [tuple(int(i) for i in ids) for ids in pd.read_parquet(tmp_path / "tok" / "train.parquet")["input_ids"]]

    export = tmp_path / "export"
    export.mkdir()
    load_tokenizer(tokenizer_dir).save_pretrained(export / serving.TOKENIZER_DIR)
    meta = {
        "task": "token_classification",
        "max_length": max_length,
        "stride": 4,
        "input_names": ["input_ids", "attention_mask"],
        "output_names": ["logits"],
        "id2label": {"0": "O", "1": "B-PER"},
    }
    (export / serving.SERVING_FILE).write_text(json.dumps(meta))
    (export / serving.ONNX_FILE).write_bytes(b"not read: the session is a recorder")

    class TokenRecorder(FeedRecorder):
        def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
            self.feeds.append(feeds)
            return [np.zeros((*feeds["input_ids"].shape, 2), dtype=np.float32)]

    recorder = TokenRecorder(["input_ids", "attention_mask"], 2)
    monkeypatch.setattr(serving, "ort_session", lambda path: recorder)
    runtime = serving.load_runtime(export)
    results = runtime.predict(frame["tokens"].tolist(), batch_size=SERVING_BATCH)
    served = [
        tuple(int(i) for i in ids[: int(mask.sum())])
        for feeds in recorder.feeds
        for ids, mask in zip(feeds["input_ids"], feeds["attention_mask"], strict=True)
    ]
    assert len(served) == len(trained) >= len(frame)
    if max_length == 16:
        assert len(trained) > len(frame), "no sentence was windowed: this case does not test windows"
    # the runtime sends windows by length (test_token_classification checks the results come back in order):
    # every training window is sent, as often as training has it
    assert Counter(served) == Counter(trained), f"{len(set(trained) ^ set(served))} windows differ"
    assert [len(r["tags"]) for r in results] == [len(t) for t in frame["tokens"]]  # every word predicted once
