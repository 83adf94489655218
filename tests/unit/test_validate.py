"""validate_data: Great Expectations suite + pandas checks, JSON report, one-line failure messages."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from pipelines.config import Params
from pipelines.data.validate import validate_data
from pipelines.errors import DataError, DataValidationError

ROOT = Path(__file__).resolve().parents[2]


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


def good_rows(n: int = 30) -> list[tuple[str, str]]:
    return [(f"review {i} was {'fine' if i % 2 else 'poor'}", "positive" if i % 2 else "negative") for i in range(n)]


def failure(params: Params, report: Path) -> tuple[str, dict]:
    with pytest.raises(DataValidationError) as err:
        validate_data(params, report)
    assert err.value.report_path == str(report)
    assert "\n" not in str(err.value)
    return str(err.value), json.loads(report.read_text())


def test_passes_and_writes_report_silently(sentiment_csv: Path, tmp_path: Path, capfd: pytest.CaptureFixture) -> None:
    report = tmp_path / "deep" / "validate" / "report.json"
    result = validate_data(make_params(tmp_path, {"path": str(sentiment_csv)}), report)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # Great Expectations prints nothing (no progress bars, no logs)
    docs = report.parent / "data_docs"
    assert result == {
        "success": True,
        "rows": 120,
        "files": [str(sentiment_csv)],
        "report": str(report),
        "data_docs": str(docs / "index.html"),
        "suites": {
            "rows": "expectations/text_classification.rows.json",
            "labels": "expectations/text_classification.labels.json",
        },
    }
    assert {p.name for p in docs.iterdir()} == {"index.html", "train-rows.html", "train-labels.html"}
    page = (docs / "train-rows.html").read_text()
    assert "Successful Expectations" in page and "text_tokens" in page  # GE's rendering of this suite's results

    data = json.loads(report.read_text())
    assert data["success"] is True
    assert data["great_expectations_version"].startswith("1.")
    (entry,) = data["files"]
    assert entry["path"] == str(sentiment_csv) and entry["role"] == "train" and entry["rows"] == 120
    assert len(entry["sha256"]) == 64
    checks = [(c["check"], c["column"]) for c in entry["checks"]]
    assert checks == [
        ("text_present", "text"),
        ("label_present", "label"),
        ("text_not_empty", "text"),
        ("text_length_chars", "text"),
        ("text_length_tokens", "text"),
        ("text_not_numeric", "text"),
        ("duplicate_share", "text"),
        ("label_not_empty", "label"),
        ("label_in_set", "label"),
        ("min_rows", None),
        ("at_least_two_labels", "label"),
        ("class_min_rows", "label"),
        ("class_min_share", "label"),
        ("one_label_type", "label"),
        ("label_ids_non_negative", "label"),
    ]
    assert entry["class_counts"] == {"negative": 60, "positive": 60} and entry["encoding"] == "utf-8"
    assert data["suites"]["rows"]["source"] == "file" and len(data["suites"]["rows"]["sha256"]) == 64
    assert all(
        set(c) >= {"expectation", "column", "success", "unexpected_count", "example_rows", "details"}
        for c in entry["checks"]
    )


def test_empty_text_names_file_column_rows_and_expectation(tmp_path: Path) -> None:
    rows = good_rows()
    rows[2] = ("", "positive")  # line 4
    rows[7] = ("   ", "negative")  # line 9
    rows[10] = ("", "negative")  # line 12
    path = write_csv(tmp_path / "x.csv", rows)
    report = tmp_path / "report.json"
    message, data = failure(make_params(tmp_path, {"path": str(path)}), report)
    assert message == (
        f"{path}: column 'text': 3 rows empty or null (rows 4, 9, 12) "
        "[text_not_empty: expect_column_values_to_not_be_null]"
    )
    check = next(c for c in data["files"][0]["checks"] if not c["success"])
    assert check["unexpected_count"] == 3 and check["example_rows"] == [4, 9, 12]
    assert data["success"] is False and data["files"][0]["success"] is False


def test_null_share_allows_some_empty_text(tmp_path: Path) -> None:
    rows = good_rows(40)
    rows[0] = ("", "negative")
    path = write_csv(tmp_path / "x.csv", rows)
    result = validate_data(
        make_params(tmp_path, {"path": str(path)}, validate={"max_null_share": 0.05}), tmp_path / "r.json"
    )
    assert result["success"] is True


def test_several_failures_name_the_first_and_count_the_rest(tmp_path: Path) -> None:
    rows = [("ok text", "a"), ("x" * 50, "b"), ("fine", "zzz"), ("ok", "b")]
    path = write_csv(tmp_path / "x.csv", rows)
    report = tmp_path / "report.json"
    params = make_params(tmp_path, {"path": str(path), "labels": ["a", "b"]}, validate={"max_text_chars": 20})
    message, data = failure(params, report)
    assert message.startswith(f"{path}: column 'text': 1 row shorter than 1 or longer than 20 characters (row 3) ")
    assert "[text_length_chars: expect_column_value_lengths_to_be_between]" in message
    failed = [c["check"] for c in data["files"][0]["checks"] if not c["success"]]
    assert failed == ["text_length_chars", "label_in_set", "min_rows", "class_min_rows"]
    assert message.endswith(f"(+3 more failed checks, see {report} and {report.parent / 'data_docs' / 'index.html'})")
    in_set = next(c for c in data["files"][0]["checks"] if c["check"] == "label_in_set")
    assert in_set["example_rows"] == [4] and "'zzz'" in in_set["details"]


def test_class_balance_checks(tmp_path: Path) -> None:
    rows = [*good_rows(30), ("a single rare one", "rare")]
    path = write_csv(tmp_path / "x.csv", rows)
    message, _ = failure(make_params(tmp_path, {"path": str(path)}), tmp_path / "r.json")
    assert message == (
        f"{path}: column 'label': class 'rare' has 1 row, fewer than validate.min_rows_per_class=2 (row 32) "
        "[class_min_rows: expect_column_values_to_be_between]"
    )

    one_class = write_csv(tmp_path / "one.csv", [(f"text {i}", "only") for i in range(25)])
    message, _ = failure(make_params(tmp_path, {"path": str(one_class)}), tmp_path / "r2.json")
    assert "1 distinct labels ('only'); a classifier needs at least 2" in message
    assert "[at_least_two_labels: expect_table_row_count_to_be_between]" in message


def test_validation_file_labels_must_be_known(tmp_path: Path) -> None:
    train = write_csv(tmp_path / "train.csv", good_rows())
    val = write_csv(tmp_path / "val.csv", [("fine", "positive"), ("what", "neutral")])
    report = tmp_path / "r.json"
    message, data = failure(make_params(tmp_path, {"path": str(train), "validation_path": str(val)}), report)
    assert message.startswith(
        f"{val}: column 'label': 1 row with a label not in the labels of {train} (e.g. 'neutral') (row 3) "
        "[label_in_set: expect_column_values_to_be_in_set] (+1 more failed checks"
    )
    missing = next(c for c in data["files"][1]["checks"] if c["check"] == "class_min_rows")
    assert "class 'negative' has no rows in this validation file" in missing["details"]
    assert [f["role"] for f in data["files"]] == ["train", "validation"]
    assert [f["success"] for f in data["files"]] == [True, False]


def test_read_errors_propagate_unchanged(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing\.csv: file not found"):
        validate_data(make_params(tmp_path, {"path": str(tmp_path / "missing.csv")}), tmp_path / "r.json")


def test_demo_reviews_pass(tmp_path: Path) -> None:
    data = {"path": str(ROOT / "demo" / "reviews.csv"), "labels": ["negative", "positive"]}
    result = validate_data(make_params(tmp_path, data), tmp_path / "report.json")
    assert result["success"] is True and 380 <= result["rows"] <= 420


def test_stored_suites_match_the_built_in_ones() -> None:
    from pipelines.data.validate import SUITE_KINDS, build_suite

    for variant in ("text_classification", "text_classification_pair"):
        for kind in SUITE_KINDS:
            stored = json.loads((ROOT / "expectations" / f"{variant}.{kind}.json").read_text())
            assert stored == build_suite(variant, kind), "regenerate: python -m pipelines.data.validate --write-suites"


def test_a_user_edited_suite_is_used(tmp_path: Path) -> None:
    from pipelines.data.validate import write_suites

    suites = tmp_path / "suites"
    write_suites(suites)
    rows_suite = suites / "text_classification.rows.json"
    spec = json.loads(rows_suite.read_text())
    spec["expectations"].append(
        {"type": "expect_column_values_to_match_regex", "kwargs": {"column": "text", "regex": "^review"}}
    )
    rows_suite.write_text(json.dumps(spec))
    rows = good_rows()
    rows[4] = ("not a review at all", "positive")
    path = write_csv(tmp_path / "x.csv", rows)
    params = make_params(tmp_path, {"path": str(path)}, validate={"expectations_dir": str(suites)})
    message, data = failure(params, tmp_path / "r.json")
    assert message == (
        f"{path}: column 'text': 1 row unexpected (e.g. 'not a review at all') (row 6) "
        "[expect_column_values_to_match_regex: expect_column_values_to_match_regex]"
    )
    assert data["suites"]["rows"]["path"] == str(rows_suite)


def test_missing_suite_falls_back_to_built_in_and_a_broken_one_is_refused(tmp_path: Path) -> None:
    from pipelines.errors import ConfigError

    path = write_csv(tmp_path / "x.csv", good_rows())
    params = make_params(tmp_path, {"path": str(path)}, validate={"expectations_dir": str(tmp_path / "none")})
    validate_data(params, tmp_path / "r.json")
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["suites"]["rows"]["source"] == "built-in"

    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "text_classification.rows.json").write_text(
        json.dumps({"expectations": [{"type": "expect_column_values_to_be_fabulous", "kwargs": {}}]})
    )
    params = make_params(tmp_path, {"path": str(path)}, validate={"expectations_dir": str(broken)})
    with pytest.raises(
        ConfigError, match=r"text_classification\.rows\.json: expectation #1 \(expect_column_values_to_be_fabulous\)"
    ):
        validate_data(params, tmp_path / "r2.json")


def test_params_thresholds_reach_the_suite(tmp_path: Path) -> None:
    rows = [*good_rows(40), *[(f"rare one {i}", "rare") for i in range(3)]]
    rows[1] = ("one two three four five six seven eight", "positive")
    path = write_csv(tmp_path / "x.csv", rows)
    message, _ = failure(
        make_params(tmp_path, {"path": str(path)}, validate={"max_text_tokens": 6}), tmp_path / "r.json"
    )
    assert "1 row with fewer than 1 or more than 6 whitespace-separated tokens (row 3)" in message
    message, _ = failure(
        make_params(tmp_path, {"path": str(path)}, validate={"min_class_share": 0.1}), tmp_path / "r2.json"
    )
    assert "class 'rare' is 7.0% of the rows, less than validate.min_class_share=10.0%" in message
