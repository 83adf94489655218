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
from pipelines.errors import DataError, DataValidationError

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
        ("Review number 1 is POSITIVE!", "positive"),  # near duplicate of row 1 (case, punctuation)
    ]
    path = write_csv(tmp_path / "raw.csv", rows)
    out = tmp_path / "clean"
    summary = clean_data(make_params(tmp_path, {"path": str(path)}), out)

    assert summary["rows_in"] == 69
    assert summary["dropped_empty"] == 2
    assert summary["dropped_duplicates"] == 2  # two copies of row 0 (one only once whitespace is collapsed)
    assert summary["dropped_near_duplicates"] == 1
    assert summary["dropped_conflicting_labels"] == 3  # every copy of the text that carries both labels
    assert summary["quarantined"] == 5 and summary["quarantine_reasons"] == {"conflicting_labels": 3, "empty_text": 2}
    quarantine = pd.read_parquet(out / "quarantine.parquet")
    assert list(quarantine.columns) == ["source", "role", "row", "reason", "text", "label"]
    assert sorted(quarantine["row"].tolist()) == [62, 63, 66, 67, 68]  # source lines (header is line 1)
    assert set(quarantine.loc[quarantine["row"] == 62, "reason"]) == {"empty_text"}
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


def test_a_class_too_small_for_every_split_stops_with_its_name(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", [*balanced_rows(40), ("a lonely rare review", "rare")])
    with pytest.raises(
        DataError, match=r"raw\.csv: class 'rare' has no rows in the \w+ split \(1 usable rows in all\)"
    ):
        clean_data(make_params(tmp_path, {"path": str(path)}), tmp_path / "out")


def test_declared_labels_order_and_unknown_label(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "raw.csv", balanced_rows(30))
    params = make_params(tmp_path, {"path": str(path), "labels": ["positive", "negative"]})
    clean_data(params, tmp_path / "out")
    assert json.loads((tmp_path / "out" / "label_map.json").read_text())["label2id"] == {"positive": 0, "negative": 1}

    bad = write_csv(tmp_path / "bad.csv", [*balanced_rows(30), ("meh", "neutral"), ("so-so", "neutral")])
    params = make_params(tmp_path, {"path": str(bad), "labels": ["positive", "negative"]})
    summary = clean_data(params, tmp_path / "out2")  # 2 of 32 rows (6.2%) quarantined: under the 10% default
    assert summary["quarantine_reasons"] == {"unknown_label": 2} and summary["rows_out"] == 30
    quarantine = pd.read_parquet(tmp_path / "out2" / "quarantine.parquet")
    assert quarantine["row"].tolist() == [32, 33] and set(quarantine["label"]) == {"neutral"}

    strict = make_params(
        tmp_path, {"path": str(bad), "labels": ["positive", "negative"]}, clean={"max_quarantine_share": 0.05}
    )
    with pytest.raises(DataValidationError) as err:
        clean_data(strict, tmp_path / "out2")
    assert str(err.value) == (
        f"{bad}: 2 of 32 rows (6.2%) quarantined, more than clean.max_quarantine_share=5.0% "
        f"(2 unknown_label; rows 32, 33); see {tmp_path / 'out2' / 'quarantine.parquet'}"
    )
    assert err.value.report_path == str(tmp_path / "out2" / "quarantine.parquet")
    assert not (tmp_path / "out2" / "train.parquet").exists()  # the previous run's splits are gone


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
        DataValidationError,
        match=r"bad_val\.csv: 1 of 51 rows \(2\.0%\) quarantined, no usable validation rows left "
        r"\(1 label_not_in_train; row 2\)",
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


def test_leakage_between_files_is_removed_from_train(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", balanced_rows(60))
    test = write_csv(
        tmp_path / "test.csv",
        [
            ("REVIEW NUMBER 3 is positive!!", "positive"),
            ("Review number 4, is negative", "negative"),
            ("a held-out review", "negative"),
            ("another held-out one", "positive"),
        ],
    )
    summary = clean_data(make_params(tmp_path, {"path": str(train), "test_path": str(test)}), tmp_path / "out")
    assert summary["leakage_removed_from_train"] == 2
    kept = pd.concat(pd.read_parquet(tmp_path / "out" / f"{s}.parquet") for s in ("train", "validation"))
    assert not kept["text"].isin(["review number 3 is positive", "review number 4 is negative"]).any()
    assert summary["splits"]["test"] == 4 and summary["rows_out"] == 62


def test_slice_column_is_carried_into_every_split(tmp_path: Path) -> None:
    rows = [(t, label, "web" if i % 3 else "mail") for i, (t, label) in enumerate(balanced_rows(60))]
    path = write_csv(tmp_path / "raw.csv", rows, header=("text", "label", "channel"))
    clean_data(make_params(tmp_path, {"path": str(path), "slice_column": "channel"}), tmp_path / "out")
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(tmp_path / "out" / f"{split}.parquet")
        assert list(frame.columns) == ["text", "label", "slice"]
        assert set(frame["slice"]) <= {"web", "mail"}


def test_clean_series_fast_path_matches_clean_text() -> None:
    values = pd.Series(
        ["  plain   ascii\ttext ", "caf\u00e9 &amp; cr\u00e8me", "x <b>bold</b>", "a\\$1", None, "", "tab\there"]
    )
    assert clean_series(values).tolist() == [clean_text(v) if v else "" for v in values]


def test_data_quality_metrics_for_mlflow() -> None:
    from pipelines.data.clean import data_quality_metrics

    metrics = data_quality_metrics(
        {"rows_in": 10, "quarantined": 2, "quarantine_share": 0.2, "quarantine_reasons": {"empty_text": 2}}
    )
    assert metrics == {
        "clean.rows_in": 10.0,
        "clean.quarantined": 2.0,
        "clean.quarantine_share": 0.2,
        "clean.quarantined.empty_text": 2.0,
    }
