"""clean_text and clean_data: normalisation, drop counts, label maps, deterministic stratified splits."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import DataConfig, Params
from pipelines.data.clean import clean_data, clean_series, clean_text
from pipelines.data.load import read_table
from pipelines.errors import DataError

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared" / "data"


def make_params(tmp_path: Path, data: dict, **sections) -> Params:
    return Params.model_validate(
        {"data": data, "project": {"artifacts_dir": str(tmp_path / "a"), "state_dir": str(tmp_path / "s")}, **sections}
    )


def write_csv(path: Path, rows: list[tuple], header: tuple = ("text", "label")) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def balanced_rows(n: int, labels: tuple[str, ...] = ("negative", "positive")) -> list[tuple[str, str]]:
    return [(f"review number {i} is {labels[i % len(labels)]}", labels[i % len(labels)]) for i in range(n)]


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Fish &amp; chips &quot;fresh&quot;", 'Fish & chips "fresh"'),
        ("It #39;s over, I #39;m leaving; he hasn #39;t", "It's over, I'm leaving; he hasn't"),
        ("the #39;best#39; bit", "the 'best' bit"),
        ("raised \\$828m \\& more", "raised $828m & more"),
        ("Title\\\\Body text", "Title Body text"),
        ("said  quot;unlikely quot; and amp; Co.", 'said "unlikely " and & Co.'),
        ("AP - up #151; down", "AP - up \u2014 down"),
        ('&lt;A HREF="http://x.com/q?a=b"&gt;KMB.N&lt;/A&gt; said', "KMB.N said"),
        ("<b>bold</b> move<br/>next <!-- note -->line", "bold move next line"),
        ("keeps x <3 y and a<b", "keeps x <3 y and a<b"),
        ("tab\there\nnew\u00a0line  \r\n end ", "tab here new line end"),
        ("ctrl\x00\x07chars\u200band\ufeffzero", "ctrlcharsandzero"),
        ("&amp;quot;double&amp;quot;", '"double"'),
        ("   ", ""),
    ],
)
def test_clean_text(raw: str, expected: str) -> None:
    assert clean_text(raw) == expected


def test_clean_text_unicode_forms() -> None:
    decomposed = "cafe\u0301"
    assert clean_text(decomposed) == "caf\u00e9"
    assert clean_text("\uff26\uff55\uff4c\uff4c \ufb01", "NFKC") == "Full fi"
    assert clean_text("\ufb01", "NFC") == "\ufb01"
    assert clean_text(None) == ""  # type: ignore[arg-type]


def test_clean_series_matches_clean_text() -> None:
    values = pd.Series(["a  &amp; b", None, "It #39;s", "a  &amp; b", "<i>x</i>"], index=[5, 6, 7, 8, 9])
    out = clean_series(values)
    assert out.index.tolist() == [5, 6, 7, 8, 9]
    assert out.tolist() == ["a & b", "", "It's", "a & b", "x"]


@pytest.mark.skipif(not (SHARED / "agnews" / "dev.tsv").is_file(), reason="shared AG News data not present")
def test_agnews_noise_is_removed() -> None:
    data = DataConfig(path="unused", header="no", column_names=["text", "label"])
    frame = read_table(SHARED / "agnews" / "dev.tsv", data)
    assert frame["text"].str.contains("#39;", regex=False).sum() > 100
    cleaned = clean_series(frame["text"])
    assert not cleaned.str.contains("#39;", regex=False).any()
    assert not cleaned.str.contains("&lt;", regex=False).any()
    assert not cleaned.str.contains("\\$", regex=False).any()
    assert not cleaned.str.contains("<a href", case=False, regex=False).any()
    assert (cleaned != "").all()


def test_clean_data_counts_and_outputs(tmp_path: Path) -> None:
    rows = balanced_rows(60)
    rows += [
        ("  &nbsp;  ", "positive"),  # empty after cleaning
        ("<br>", "negative"),  # empty after cleaning
        ("review number 0 is negative", "negative"),  # exact duplicate of row 0
        ("review   number 0 is negative", "negative"),  # duplicate once whitespace is collapsed
        ("same words, two labels", "positive"),
        ("same words, two labels", "negative"),
        ("same  words, two labels", "positive"),
        ("Fish &amp; chips", "positive"),
    ]
    path = write_csv(tmp_path / "raw.csv", rows)
    out = tmp_path / "clean"
    summary = clean_data(make_params(tmp_path, {"path": str(path)}), out)

    assert summary["rows_in"] == 68
    assert summary["dropped_empty"] == 2
    assert summary["dropped_duplicates"] == 3  # two copies of row 0 + one of the conflicting positive text
    assert summary["dropped_conflicting_labels"] == 2  # all remaining copies of the conflicting text
    assert summary["rows_out"] == 61 == sum(summary["splits"].values())
    assert summary["splits"] == {"train": 49, "validation": 6, "test": 6}
    assert summary["stratified"] is True

    label_map = json.loads((out / "label_map.json").read_text())
    assert label_map == {"id2label": {"0": "negative", "1": "positive"}, "label2id": {"negative": 0, "positive": 1}}
    frames = {s: pd.read_parquet(out / f"{s}.parquet") for s in ("train", "validation", "test")}
    for name, frame in frames.items():
        assert list(frame.columns) == ["text", "label"]
        assert str(frame["label"].dtype) == "int64"
        counts = summary["class_counts"][name]
        assert counts == {"negative": int((frame["label"] == 0).sum()), "positive": int((frame["label"] == 1).sum())}
    everything = pd.concat(frames.values())
    assert "Fish & chips" in set(everything["text"])
    assert not everything.duplicated(["text"]).any()
    assert summary["class_counts"]["validation"] == {"negative": 3, "positive": 3}

    import hashlib

    for name, digest in summary["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert json.loads((out / "summary.json").read_text()) == summary


def test_clean_data_is_deterministic(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", balanced_rows(200, ("a", "b", "c")))
    first = clean_data(make_params(tmp_path, {"path": str(path)}), tmp_path / "one")
    again = clean_data(make_params(tmp_path, {"path": str(path)}), tmp_path / "two")
    assert first["sha256"] == again["sha256"]
    other = clean_data(make_params(tmp_path, {"path": str(path)}, clean={"seed": 7}), tmp_path / "three")
    assert other["sha256"]["train.parquet"] != first["sha256"]["train.parquet"]
    assert other["splits"] == first["splits"] == {"train": 160, "validation": 20, "test": 20}


def test_small_class_falls_back_to_plain_split(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", [*balanced_rows(40), ("a lonely rare review", "rare")])
    summary = clean_data(make_params(tmp_path, {"path": str(path)}), tmp_path / "out")
    assert summary["stratified"] is False
    assert "'rare'" in summary["split_note"]
    assert all(n > 0 for n in summary["splits"].values())


def test_declared_labels_order_and_unknown_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", balanced_rows(30))
    params = make_params(tmp_path, {"path": str(path), "labels": ["positive", "negative"]})
    clean_data(params, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "label_map.json").read_text())["label2id"] == {"positive": 0, "negative": 1}

    bad = write_csv(tmp_path / "bad.csv", [*balanced_rows(30), ("meh", "neutral"), ("so-so", "neutral")])
    params = make_params(tmp_path, {"path": str(bad), "labels": ["positive", "negative"]})
    with pytest.raises(DataError) as err:
        clean_data(params, tmp_path / "out2")
    assert str(err.value) == (f"{bad}: label 'neutral' is not in data.labels ['positive', 'negative'] (rows 32, 33)")


def test_integer_labels_sort_numerically(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", balanced_rows(40, ("10", "2", "0", "1")))
    clean_data(make_params(tmp_path, {"path": str(path)}), tmp_path / "out")
    id2label = json.loads((tmp_path / "out" / "label_map.json").read_text())["id2label"]
    assert id2label == {"0": "0", "1": "1", "2": "2", "3": "10"}


def test_user_splits_and_pairs(tmp_path: Path) -> None:
    header = ("premise", "hypothesis", "label")
    train = write_csv(tmp_path / "train.csv", [(f"p{i}", f"h{i}", "yes" if i % 2 else "no") for i in range(50)], header)
    val = write_csv(tmp_path / "val.csv", [("vp", "vh", "yes"), ("vp2", "vh2", "no")], header)
    data = {"path": str(train), "validation_path": str(val), "text_column": "premise", "text_pair_column": "hypothesis"}
    summary = clean_data(make_params(tmp_path, data), tmp_path / "out")
    assert summary["split_source"] == {"train": "file", "validation": "file", "test": "split"}
    assert summary["splits"] == {"train": 45, "validation": 2, "test": 5}
    frame = pd.read_parquet(tmp_path / "out" / "validation.parquet")
    assert list(frame.columns) == ["text", "text_pair", "label"]
    assert frame["text_pair"].tolist() == ["vh", "vh2"]

    bad_val = write_csv(tmp_path / "bad_val.csv", [("vp", "vh", "maybe")], header)
    data["validation_path"] = str(bad_val)
    with pytest.raises(
        DataError, match=r"bad_val\.csv: label 'maybe' is not in the labels of .*train\.csv \['no', 'yes'\] \(row 2\)"
    ):
        clean_data(make_params(tmp_path, data), tmp_path / "out2")


def test_too_few_rows_for_three_splits(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", [("one", "a"), ("two", "b")])
    with pytest.raises(DataError, match=r"raw\.csv: only 2 rows left after cleaning; need at least 3"):
        clean_data(make_params(tmp_path, {"path": str(path)}), tmp_path / "out")


def test_demo_reviews_clean(tmp_path: Path) -> None:
    summary = clean_data(make_params(tmp_path, {"path": str(ROOT / "demo" / "reviews.csv")}), tmp_path / "out")
    assert summary["labels"] == ["negative", "positive"]
    assert summary["dropped_duplicates"] == 3
    assert summary["dropped_empty"] == summary["dropped_conflicting_labels"] == 0
    assert 380 <= summary["rows_out"] <= 420
    texts = pd.concat(pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "validation", "test"))
    assert not texts["text"].str.contains("&amp;|&quot;|  ", regex=True).any()
