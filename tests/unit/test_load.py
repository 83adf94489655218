"""read_table: formats, header detection, row numbers and one-line DataErrors."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from pipelines.config import DataConfig
from pipelines.data.load import read_table
from pipelines.errors import DataError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def cfg(**kw) -> DataConfig:
    return DataConfig(path="unused", **kw)


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.write_bytes(text.encode(encoding))
    return path


def test_csv_keeps_strings_and_numbers_rows(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", 'text,label\nhello,0\n"a, quoted ""comma""",1\n,1\n')
    df = read_table(path, cfg())
    assert list(df.columns) == ["text", "label", "row"]
    assert df["label"].tolist() == ["0", "1", "1"]
    assert df["text"].tolist() == ["hello", 'a, quoted "comma"', ""]  # empty cell stays "", not NaN
    assert df["row"].tolist() == [2, 3, 4]


def test_csv_bom_crlf_blank_lines_and_multiline_field(tmp_path: Path) -> None:
    text = '\ufefftext,label\r\n"two\r\nlines",a\r\n\r\nthird,b\r\n'
    df = read_table(write(tmp_path / "d.csv", text), cfg())
    assert df["text"].tolist() == ["two\r\nlines", "third"]
    assert df["row"].tolist() == [2, 5]  # source line numbers, blank line skipped


def test_tsv_is_glue_style_quotes_are_literal(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", 'sentence\tlabel\n"quoted" start\t1\nsays "hi\t0\n')
    df = read_table(path, cfg(text_column="sentence"))
    assert df["text"].tolist() == ['"quoted" start', 'says "hi']
    assert df["label"].tolist() == ["1", "0"]


def test_tab_extension_and_explicit_format(tmp_path: Path) -> None:
    assert read_table(write(tmp_path / "d.tab", "text\tlabel\nx\ty\n"), cfg())["text"].tolist() == ["x"]
    df = read_table(write(tmp_path / "d.txt", "text\tlabel\nx\ty\n"), cfg(format="tsv"))
    assert df["label"].tolist() == ["y"]


def test_pair_columns_are_mapped(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "index\ts1\ts2\tlabel\n0\tA man.\tA person.\tentailment\n")
    df = read_table(path, cfg(text_column="s1", text_pair_column="s2"))
    assert list(df.columns) == ["text", "text_pair", "label", "row"]
    assert df.iloc[0][["text", "text_pair", "label"]].tolist() == ["A man.", "A person.", "entailment"]


def test_headerless_with_column_names(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "first text\tWorld\nsecond\tSports\n")
    df = read_table(path, cfg(column_names=["text", "label"]))  # header=auto: first row lacks the columns
    assert df["text"].tolist() == ["first text", "second"]
    assert df["row"].tolist() == [1, 2]
    df = read_table(path, cfg(header="no", column_names=["text", "label"]))
    assert len(df) == 2


def test_headerless_without_column_names_is_explained(tmp_path: Path) -> None:
    path = write(tmp_path / "d.tsv", "first text\tWorld\n")
    with pytest.raises(DataError) as err:
        read_table(path, cfg())
    msg = str(err.value)
    assert msg.startswith(str(path))
    assert "['text', 'label']" in msg and "'first text'" in msg and "data.column_names" in msg
    assert "\n" not in msg


def test_missing_mapped_column_names_it_and_lists_found(tmp_path: Path) -> None:
    path = write(tmp_path / "d.csv", "review,label\nnice,1\n")
    with pytest.raises(DataError, match=r"missing column 'text' \(columns found: \['review', 'label'\]\)") as err:
        read_table(path, cfg(header="yes"))
    assert str(err.value).startswith(f"{path}:")


def test_jsonl_labels_become_str_and_nulls_stay_null(tmp_path: Path) -> None:
    lines = [{"text": "a", "label": 1}, {"text": "b", "label": None}, {"text": "c", "label": 2.0}]
    path = write(
        tmp_path / "d.jsonl", "\n".join(json.dumps(x) for x in lines[:2]) + "\n\n" + json.dumps(lines[2]) + "\n"
    )
    df = read_table(path, cfg())
    assert df["label"].iloc[0] == "1" and df["label"].iloc[2] == "2"
    assert pd.isna(df["label"].iloc[1])
    assert df["row"].tolist() == [1, 2, 4]


def test_jsonl_bad_line(tmp_path: Path) -> None:
    path = write(tmp_path / "d.ndjson", '{"text": "a", "label": "x"}\n{"text": oops}\n')
    with pytest.raises(DataError, match=r"d\.ndjson: line 2: not valid JSON"):
        read_table(path, cfg())


def test_parquet_labels_become_str(tmp_path: Path) -> None:
    path = tmp_path / "d.parquet"
    pd.DataFrame({"body": ["x", "y", "z"], "label": [0, 1, None]}).to_parquet(path, index=False)
    df = read_table(path, cfg(text_column="body"))
    assert df["label"].tolist()[:2] == ["0", "1"]  # float64 with NaN in the file: ids come back as "0", "1"
    assert pd.isna(df["label"].iloc[2])
    assert df["row"].tolist() == [1, 2, 3]
    with pytest.raises(DataError, match=r"missing column 'text' \(columns found: \['body', 'label'\]\)"):
        read_table(path, cfg())


@pytest.mark.parametrize(
    ("name", "content", "pattern"),
    [
        ("empty.csv", b"", "file is empty"),
        ("blank.csv", b"\n\n  \n", "file is empty"),
        ("header.csv", b"text,label\n", "header only, no data rows"),
        ("data.xlsx", b"PK\x03\x04", r"unknown file format '\.xlsx' \(allowed: \.csv, \.tsv"),
        ("binary.csv", b"text,label\n\x00\x01\x02", "binary file.*byte offset 11.*latin-1"),
        (
            "latin.csv",
            "text,label\ncaf\u00e9,1\n".encode("latin-1"),
            r"byte 0xe9 at byte offset 14.*data.encoding=latin-1",
        ),
        ("ragged.csv", b"text,label\ngood,1\nbad, unquoted comma,0\n", "line 3: expected 2 CSV fields, found 3"),
        ("broken.parquet", b"not parquet at all", "not a readable parquet file"),
    ],
)
def test_errors_are_one_line_and_start_with_the_path(tmp_path: Path, name: str, content: bytes, pattern: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=pattern) as err:
        read_table(path, cfg())
    assert str(err.value).startswith(f"{path}: ")
    assert "\n" not in str(err.value)


def test_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.csv: file not found"):
        read_table(tmp_path / "nope.csv", cfg())


def test_latin1_reads_with_encoding_set(tmp_path: Path) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\u00e9,1\n".encode("latin-1"))
    assert read_table(path, cfg(encoding="latin-1"))["text"].tolist() == ["caf\u00e9"]


@pytest.mark.skipif(not (SHARED / "rte" / "train.tsv").is_file(), reason="shared RTE data not present")
def test_reads_real_rte_pairs() -> None:
    df = read_table(SHARED / "rte" / "train.tsv", cfg(text_column="sentence1", text_pair_column="sentence2"))
    assert len(df) == 2127
    assert set(df["label"]) == {"entailment", "not_entailment"}
    assert df["row"].iloc[0] == 2 and df["row"].iloc[-1] == 2128


def test_fast_and_exact_parsers_agree_on_values_and_row_numbers(tmp_path: Path) -> None:
    body = "".join(f'"row {i}, with a comma",{i % 2}\n' for i in range(50))
    fast = read_table(write(tmp_path / "fast.csv", "text,label\n" + body), cfg())  # one line per record
    exact = read_table(write(tmp_path / "exact.csv", "text,label\n\n" + body), cfg())  # blank line: exact parser
    assert fast["text"].tolist() == exact["text"].tolist() and fast["label"].tolist() == exact["label"].tolist()
    assert fast["row"].tolist() == list(range(2, 52)) and exact["row"].tolist() == list(range(3, 53))


def test_unterminated_quote_names_the_line_where_it_opens(tmp_path: Path) -> None:
    text = "text,label\nfine,a\n" + '"never closed,b\n' + "".join(f"more {i},a\n" for i in range(5))
    with pytest.raises(DataError, match=r"line 3: malformed CSV \(a quoted field opened here is never closed"):
        read_table(write(tmp_path / "q.csv", text), cfg())


def test_wrong_delimiter_and_partial_header_are_explained(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"the first row looks ';'-separated"):
        read_table(write(tmp_path / "semi.csv", "text;label\nhello;a\n"), cfg())
    with pytest.raises(DataError, match=r"looks TAB-separated \(data\.format=tsv\)"):
        read_table(write(tmp_path / "tabs.csv", "text\tlabel\nhello\ta\n"), cfg())
    with pytest.raises(DataError, match=r"missing column 'label' \(columns found: \['text', 'sentiment'\]\)"):
        read_table(write(tmp_path / "partial.csv", "text,sentiment\nhello,a\n"), cfg())


def test_encoding_fallback_is_explicit_and_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "latin.csv"
    path.write_bytes("text,label\ncaf\u00e9 cr\u00e8me,1\n".encode("latin-1"))
    with caplog.at_level("WARNING", logger="nlpops.data"):
        frame = read_table(path, cfg(encoding_fallback="latin-1"))
    assert frame["text"].tolist() == ["caf\u00e9 cr\u00e8me"] and frame.attrs["encoding"] == "latin-1"
    assert "decoded as latin-1 (data.encoding_fallback)" in caplog.text and "line 2" in caplog.text


def test_binary_junk_without_nul_bytes_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "junk.csv", "text,label\n" + "".join(chr(c) for c in range(1, 9)) * 20 + ",a\n")
    with pytest.raises(DataError, match=r"looks like a binary file \(\d+ control bytes"):
        read_table(path, cfg())


def test_slice_column_is_read_as_slice(tmp_path: Path) -> None:
    df = read_table(write(tmp_path / "s.csv", "text,label,channel\nhi,a,web\n"), cfg(slice_column="channel"))
    assert list(df.columns) == ["text", "label", "slice", "row"] and df["slice"].tolist() == ["web"]
