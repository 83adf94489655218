"""Token classification readers: CoNLL, JSONL and Parquet files -> the canonical frame.

The canonical frame has one row per sentence: `tokens` (list[str]), `tags` (list[str]) and `source_line` (int, the
1-based line of the sentence's first token in its file; the row number for Parquet). `frame.attrs["format"]` says
which reader made it: in CoNLL files token i of a sentence sits on line `source_line + i`.

Every problem a user can fix is one `DataError` line naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.errors import DataError

FORMATS_BY_SUFFIX = {
    ".conll": "conll",
    ".conllu": "conll",
    ".iob": "conll",
    ".bio": "conll",
    ".txt": "conll",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
DOCSTART = "-DOCSTART-"
COLUMNS = ("tokens", "tags", "source_line")


def detect_format(path: Path, data: Any) -> str:
    """data.format, or (auto) the format its suffix names."""
    if data.format != "auto":
        return str(data.format)
    fmt = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        allowed = ", ".join(FORMATS_BY_SUFFIX)
        raise DataError(
            f"{path}: unknown file format '{path.suffix or '(no extension)'}' for token classification "
            f"(allowed: {allowed}); or set data.format=conll|jsonl|parquet"
        )
    return fmt


def read_sentences(path: str | Path, data: Any) -> pd.DataFrame:
    """Read one token classification file into the canonical frame (tokens, tags, source_line)."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    fmt = detect_format(path, data)
    if fmt == "parquet":
        frame = _read_parquet(path, data)
        frame.attrs.update(format="parquet", encoding="parquet")
        return frame
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not raw.strip():
        raise DataError(f"{path}: file is empty ({len(raw)} bytes)")
    if raw.startswith(b"PAR1"):
        raise DataError(f"{path}: this is a parquet file, not {fmt}; set data.format=parquet or rename it")
    from pipelines.data.load import _to_utf8  # the project's one decoder: BOM, data.encoding(_fallback), binary

    utf8, encoding = _to_utf8(path, raw, data)
    text = utf8.decode("utf-8")
    if fmt == "conll":
        frame = read_conll_text(text, path, data.tag_column, data.column_names)
    elif fmt == "jsonl":
        frame = _read_jsonl(text, path, data)
    else:
        raise DataError(f"{path}: data.format={fmt!r} is not read by token classification (conll, jsonl, parquet)")
    frame.attrs.update(format=fmt, encoding=encoding)
    return frame


def _frame(tokens: list[list[str]], tags: list[list[str]], lines: list[int]) -> pd.DataFrame:
    return pd.DataFrame({"tokens": tokens, "tags": tags, "source_line": pd.Series(lines, dtype="int64")})


def _tag_index(path: Path, tag_column: int | str, column_names: list[str] | None, n_after: int) -> int:
    """Which of the n_after columns after the token holds the tags."""
    if isinstance(tag_column, str):
        if not column_names or tag_column not in column_names:
            raise DataError(
                f"{path}: data.tag_column={tag_column!r} is not in data.column_names "
                f"{column_names or '(unset)'}; name every column of the file there, the token first"
            )
        position = column_names.index(tag_column)
        if position == 0:
            raise DataError(f"{path}: data.tag_column={tag_column!r} names the token column (the first one)")
        if len(column_names) != n_after + 1:
            raise DataError(
                f"{path}: data.column_names has {len(column_names)} names but the file has {n_after + 1} columns"
            )
        return position - 1
    index = tag_column + n_after if tag_column < 0 else tag_column
    if not 0 <= index < n_after:
        raise DataError(
            f"{path}: data.tag_column={tag_column} is out of range: the file has {n_after} column(s) after the token "
            f"(allowed: 0..{n_after - 1}, or -1 for the last)"
        )
    return index


def read_conll_text(
    text: str, path: str | Path, tag_column: int | str = -1, column_names: list[str] | None = None
) -> pd.DataFrame:
    """Parse CoNLL text: `token [col ...] tag` per line, blank lines between sentences, -DOCSTART- lines skipped,
    CRLF or LF. Every token line must have as many columns as the first one."""
    path = Path(path)
    sentences: list[list[str]] = []
    tag_lists: list[list[str]] = []
    starts: list[int] = []
    tokens: list[str] = []
    tags: list[str] = []
    width = 0
    first_line = 0
    index = 0
    start = 0
    for number, line in enumerate(text.split("\n"), start=1):
        fields = line.split()
        if not fields or fields[0] == DOCSTART:
            if tokens:
                sentences.append(tokens)
                tag_lists.append(tags)
                starts.append(start)
                tokens, tags = [], []
            continue
        if not width:
            width, first_line = len(fields), number
            if width < 2:
                raise DataError(
                    f"{path}: line {number}: one column ({fields[0]!r}); CoNLL needs 'token TAG' (whitespace-separated)"
                )
            index = _tag_index(path, tag_column, column_names, width - 1)
        elif len(fields) != width:
            raise DataError(
                f"{path}: line {number}: {len(fields)} column(s), expected {width} like line {first_line} "
                f"(token + {width - 1} tag column(s)); a token with a space inside?"
            )
        if not tokens:
            start = number
        tokens.append(fields[0])
        tags.append(fields[1 + index])
    if tokens:
        sentences.append(tokens)
        tag_lists.append(tags)
        starts.append(start)
    if not sentences:
        raise DataError(f"{path}: no sentences (only blank or {DOCSTART} lines)")
    return _frame(sentences, tag_lists, starts)


def _as_words(value: Any, path: Path, where: str, column: str) -> list[str]:
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, list):
        raise DataError(f"{path}: {where}: '{column}' must be a list of strings, got {type(value).__name__}")
    out = []
    for item in value:
        if item is None or isinstance(item, (dict, list)):
            raise DataError(f"{path}: {where}: '{column}' holds {item!r}; expected strings")
        out.append(str(item))
    return out


def _pair(record: dict[str, Any], path: Path, where: str, data: Any) -> tuple[list[str], list[str]]:
    for column in (data.tokens_column, data.tags_column):
        if column not in record:
            keys = ", ".join(list(record)[:8])
            raise DataError(
                f"{path}: {where}: no key '{column}' (has: {keys}); set data.tokens_column / data.tags_column"
            )
    words = _as_words(record[data.tokens_column], path, where, data.tokens_column)
    tags = [t.strip() for t in _as_words(record[data.tags_column], path, where, data.tags_column)]
    if len(words) != len(tags):
        raise DataError(f"{path}: {where}: {len(words)} tokens but {len(tags)} tags")
    return words, tags


def _read_jsonl(text: str, path: Path, data: Any) -> pd.DataFrame:
    sentences, tag_lists, lines = [], [], []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        if not isinstance(record, dict):
            raise DataError(f"{path}: line {number}: expected a JSON object, got {type(record).__name__}")
        words, tags = _pair(record, path, f"line {number}", data)
        sentences.append(words)
        tag_lists.append(tags)
        lines.append(number)
    if not sentences:
        raise DataError(f"{path}: no records")
    return _frame(sentences, tag_lists, lines)


def _read_parquet(path: Path, data: Any) -> pd.DataFrame:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=None)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    sentences, tag_lists = [], []
    records = table.to_pylist()
    for i, record in enumerate(records):
        words, tags = _pair(record, path, f"row {i + 1}", data)
        sentences.append(words)
        tag_lists.append(tags)
    if not sentences:
        raise DataError(f"{path}: no rows")
    return _frame(sentences, tag_lists, list(range(1, len(records) + 1)))


def location(frame: pd.DataFrame, row: int, index: int | None = None) -> str:
    """Where word `index` of sentence `row` sits in its file: 'line N' (CoNLL: one line per token; JSONL: the
    sentence's line, plus the word's position) or 'row N' (Parquet)."""
    line = int(frame["source_line"].iloc[row])
    fmt = frame.attrs.get("format")
    if fmt == "conll":
        return f"line {line + (index or 0)}"
    where = f"row {line}" if fmt == "parquet" else f"line {line}"
    return where + (f", word {index + 1}" if index is not None else "")
