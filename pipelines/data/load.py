"""Read a raw data file (csv, tsv, jsonl, parquet) into canonical columns: text, [text_pair], label, [slice], row.

Every failure a user can fix becomes one `DataError` line that starts with the file path; no pandas, pyarrow
or csv traceback escapes. `row` is the 1-based line number in the source file (the first data row of a
headered file is row 2), so later error messages can point at the exact line.

Delimited files take a fast path (pyarrow's multi-threaded C++ parser) whenever each record is exactly one line;
anything else (blank lines, quoted newlines, ragged rows, unterminated quotes) is re-read with Python's csv
module, which knows every record's line number and so gives exact error messages.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import DataConfig
from pipelines.errors import first_line, DataError

log = logging.getLogger("nlpops.data")

FORMATS_BY_SUFFIX = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".tab": "tsv",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".parquet": "parquet",
}
_ALLOWED = ", ".join(FORMATS_BY_SUFFIX)
_UTF8_BOM = codecs.BOM_UTF8
# A text file has almost no C0 control characters besides TAB/CR/LF; binary junk has many.
_CONTROL_BYTES = bytes([*range(0, 9), 11, 12, *range(14, 32), 127])
_MAX_CONTROL_SHARE = 0.01


def canonical_columns(data: DataConfig) -> list[str]:
    """The canonical columns read_table returns, in order (without `row`)."""
    return list(_mapping(data))


def _mapping(data: DataConfig) -> dict[str, str]:
    """canonical name -> source column name."""
    mapping = {"text": data.text_column}
    if data.text_pair_column:
        mapping["text_pair"] = data.text_pair_column
    mapping["label"] = data.label_column
    if data.slice_column:
        mapping["slice"] = data.slice_column
    return mapping


def detect_format(path: Path, data: DataConfig) -> str:
    if data.format != "auto":
        return data.format
    fmt = FORMATS_BY_SUFFIX.get(path.suffix.lower())
    if fmt is None:
        suffix = path.suffix or "(no extension)"
        raise DataError(f"{path}: unknown file format '{suffix}' (allowed: {_ALLOWED}); or set data.format")
    return fmt


def read_table(path: str | Path, data: DataConfig) -> pd.DataFrame:
    """Read one data file into columns text, [text_pair], label, [slice] (str; nulls stay null) and row.

    `frame.attrs["encoding"]` names the encoding actually used (differs from data.encoding only when
    data.encoding_fallback was needed; that is also logged as a warning).
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    if not path.is_file():
        raise DataError(f"{path}: not a file")
    fmt = detect_format(path, data)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
    if not raw.strip():
        raise DataError(f"{path}: file is empty ({len(raw)} bytes)")
    if fmt == "parquet":
        frame = _read_parquet(path, data)
        frame.attrs["encoding"] = "parquet"
        return frame
    if raw.startswith(b"PAR1"):
        raise DataError(f"{path}: this is a parquet file, not {fmt}; set data.format=parquet or rename it")
    utf8, encoding = _to_utf8(path, raw, data)
    if not utf8.strip():
        raise DataError(f"{path}: file is empty (only a byte-order mark / whitespace)")
    if fmt == "jsonl":
        frame = _read_jsonl(path, utf8.decode("utf-8"), data)
    else:
        frame = _read_delimited(path, utf8, data, delimiter="\t" if fmt == "tsv" else ",")
    frame.attrs["encoding"] = encoding
    return frame


# --------------------------------------------------------------------------------------------------- decoding


def _check_binary(path: Path, raw: bytes, encoding: str) -> None:
    nul = raw.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{path}: looks like a binary file (NUL byte at byte offset {nul}), not {encoding} text; "
            "if it is text in another encoding set data.encoding (e.g. latin-1)"
        )
    sample = raw[: 1 << 20]
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    if controls > max(2, _MAX_CONTROL_SHARE * len(sample)):
        raise DataError(
            f"{path}: looks like a binary file ({controls} control bytes in the first {len(sample)} bytes), "
            f"not {encoding} text"
        )


def _decode_one(path: Path, raw: bytes, encoding: str) -> str:
    """Decode with one codec; raises UnicodeError (callers turn it into a DataError)."""
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding data.encoding={encoding!r}") from None
    if codec == "utf-8" and raw.startswith(_UTF8_BOM):  # BOM tolerated (as utf-8-sig)
        raw = raw[len(_UTF8_BOM) :]
    if not codec.startswith(("utf-16", "utf-32")):
        _check_binary(path, raw, encoding)
    return raw.decode(codec)


def _to_utf8(path: Path, raw: bytes, data: DataConfig) -> tuple[bytes, str]:
    """The file's text as UTF-8 bytes without BOM, and the encoding used; refuses what cannot be decoded."""
    encoding = data.encoding
    codec = _codec(path, encoding)
    try:
        if codec == "utf-8":
            body = raw[len(_UTF8_BOM) :] if raw.startswith(_UTF8_BOM) else raw
            _check_binary(path, body, encoding)
            body.decode("utf-8")  # validate only: the bytes are already what the parsers want
            return body, encoding
        return _decode_one(path, raw, encoding).encode("utf-8"), encoding
    except UnicodeDecodeError as exc:
        offset = len(_UTF8_BOM) if codec == "utf-8" and raw.startswith(_UTF8_BOM) else 0
        pos = exc.start + offset
        line = raw.count(b"\n", 0, pos) + 1
        bad = raw[pos : pos + 1].hex()
        where = f"byte 0x{bad} at byte offset {pos}, line {line}"
        fallback = data.encoding_fallback
        if fallback:
            try:
                text = _decode_one(path, raw, fallback)
            except UnicodeError:
                raise DataError(
                    f"{path}: not valid {encoding} text ({where}), nor {fallback} (data.encoding_fallback)"
                ) from None
            log.warning(
                "warning: %s: not valid %s text (%s); decoded as %s (data.encoding_fallback)",
                path,
                encoding,
                where,
                fallback,
            )
            return text.encode("utf-8"), fallback
        raise DataError(
            f"{path}: not valid {encoding} text ({where}); binary file, or text in another encoding? "
            "set data.encoding (e.g. data.encoding=latin-1) or data.encoding_fallback"
        ) from None
    except UnicodeError as exc:
        raise DataError(f"{path}: cannot decode as {encoding} ({exc}); set data.encoding") from None


def _codec(path: Path, encoding: str) -> str:
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding data.encoding={encoding!r}") from None


# -------------------------------------------------------------------------------------------------- delimited


@dataclass
class _Records:
    """Parsed records of a delimited file: the first record, and the body's columns by position."""

    first: list[str]
    first_line: int
    count: int  # records including the first
    column: Callable[[int, int], pd.Series]  # (position, records to skip) -> values as str
    lines: Callable[[int], np.ndarray]  # (records to skip) -> source line of each record


def _read_delimited(path: Path, utf8: bytes, data: DataConfig, delimiter: str) -> pd.DataFrame:
    kind = "TSV" if delimiter == "\t" else "CSV"
    records = _fast_records(utf8, delimiter) or _slow_records(path, utf8.decode("utf-8"), delimiter, kind)
    mapping = _mapping(data)
    wanted = list(mapping.values())
    first = [c.strip() for c in records.first]
    if data.header == "yes":
        has_header = True
    elif data.header == "no":
        has_header = False
    else:
        # A first row naming some of the mapped columns is a header that lacks the others (reported below).
        has_header = (any(c in first for c in wanted) and not data.column_names) or all(c in first for c in wanted)
        if not has_header and not data.column_names:
            raise DataError(
                f"{path}: first row has no header with the expected columns {_fmt_cols(wanted)} "
                f"(first row: {_fmt_cols(first, limit=8)}){_delimiter_hint(records.first, wanted, delimiter)}; "
                "for a header-less file set data.column_names (and data.header=no)"
            )
    if has_header:
        names = list(data.column_names) if data.column_names else first
        skip = 1
        if data.column_names and len(names) != len(first):
            raise DataError(
                f"{path}: data.column_names has {len(names)} names but the header (line {records.first_line}) "
                f"has {len(first)} columns: {_fmt_cols(first, limit=8)}"
            )
    else:
        if not data.column_names:
            raise DataError(f"{path}: data.header=no needs data.column_names (the names of the file's columns)")
        names = list(data.column_names)
        skip = 0
        if len(names) != len(first):
            raise DataError(
                f"{path}: data.column_names has {len(names)} names but line {records.first_line} has "
                f"{len(first)} {kind} fields"
            )
    missing = [c for c in wanted if c not in names]
    if missing:
        where = "columns found" if has_header else "data.column_names"
        raise DataError(
            f"{path}: missing column '{missing[0]}' ({where}: {_fmt_cols(names, limit=12)})"
            f"{_delimiter_hint(records.first, wanted, delimiter)}; "
            "set data.text_column / data.text_pair_column / data.label_column to match"
        )
    if records.count - skip <= 0:
        raise DataError(f"{path}: header only, no data rows")
    frame = pd.DataFrame({canon: records.column(names.index(src), skip) for canon, src in mapping.items()})
    frame["row"] = records.lines(skip)
    return frame


def _fast_records(utf8: bytes, delimiter: str) -> _Records | None:
    """pyarrow's parser, used only when every record is one line (so row numbers stay exact); else None."""
    import pyarrow as pa
    import pyarrow.csv as pa_csv

    end = utf8.find(b"\n")
    head = (utf8 if end < 0 else utf8[:end]).decode("utf-8").rstrip("\r")
    if not head.strip() or (delimiter == "," and head.count('"') % 2):
        return None  # blank first line, or a quoted newline in the header: the exact path handles it
    width = len(_split_line(head, delimiter))
    lines = utf8.count(b"\n") + (0 if utf8.endswith(b"\n") else 1)
    try:
        table = pa_csv.read_csv(
            io.BytesIO(utf8),
            read_options=pa_csv.ReadOptions(autogenerate_column_names=True, block_size=1 << 24),
            parse_options=pa_csv.ParseOptions(
                delimiter=delimiter,
                quote_char='"' if delimiter == "," else False,
                newlines_in_values=delimiter == ",",
            ),
            convert_options=pa_csv.ConvertOptions(
                column_types={f"f{i}": pa.string() for i in range(width)},
                strings_can_be_null=False,
                quoted_strings_can_be_null=False,
            ),
        )
    except (pa.ArrowInvalid, pa.ArrowException, ValueError):
        return None  # ragged rows, bad quoting...: the exact path finds the line and explains it
    if table.num_columns != width or table.num_rows != lines:
        return None  # blank lines or multi-line records: line numbers need the exact path
    first = [str(table.column(i)[0].as_py()) for i in range(width)]

    def column(pos: int, skip: int) -> pd.Series:
        return table.column(pos).slice(skip).to_pandas().reset_index(drop=True)

    def line_numbers(skip: int) -> np.ndarray:
        return np.arange(1 + skip, table.num_rows + 1, dtype=np.int64)

    return _Records(first, 1, table.num_rows, column, line_numbers)


def _split_line(line: str, delimiter: str) -> list[str]:
    if delimiter == "\t":
        return line.split("\t")
    return next(csv.reader([line], delimiter=delimiter), [])


def _slow_records(path: Path, text: str, delimiter: str, kind: str) -> _Records:
    source = io.StringIO(text, newline="")
    if delimiter == "\t":  # GLUE-style TSV: quote characters are literal text
        reader = csv.reader(source, delimiter=delimiter, quoting=csv.QUOTE_NONE, strict=False)
    else:
        reader = csv.reader(source, delimiter=delimiter, quoting=csv.QUOTE_MINIMAL, strict=False)
    records: list[tuple[int, list[str]]] = []  # (start line, fields)
    line = 0
    try:
        for fields in reader:
            start = line + 1
            line = reader.line_num
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue  # blank line
            records.append((start, fields))
    except csv.Error as exc:
        detail = str(exc)
        if "unexpected end of data" in detail or "EOF" in detail:
            detail = "a quoted field opened here is never closed (unterminated '\"')"
        raise DataError(f"{path}: line {line + 1}: malformed {kind} ({detail})") from None
    if not records:
        raise DataError(f"{path}: file is empty (blank lines only)")
    width = len(records[0][1])
    hint = "wrong delimiter" if delimiter == "\t" else f"wrong delimiter or an unquoted '{delimiter}' in the text"
    for i, (start, fields) in enumerate(records[1:], start=1):
        if len(fields) != width and i == len(records) - 1 and line - start > 1 and any("\n" in f for f in fields):
            raise DataError(
                f"{path}: line {start}: malformed {kind} (a quoted field opened here is never closed: "
                f"unterminated '\"' runs to the end of the file, line {line})"
            )
        if len(fields) != width:
            raise DataError(
                f"{path}: line {start}: expected {width} {kind} fields, found {len(fields)} ({hint}? check data.format)"
            )

    def column(pos: int, skip: int) -> pd.Series:
        return pd.Series([f[pos] for _, f in records[skip:]], dtype="str")

    def line_numbers(skip: int) -> np.ndarray:
        return np.asarray([start for start, _ in records[skip:]], dtype=np.int64)

    return _Records(records[0][1], records[0][0], len(records), column, line_numbers)


def _delimiter_hint(first: list[str], wanted: list[str], delimiter: str) -> str:
    """' (the first row looks ';'-separated ...)' when another delimiter would give the expected columns."""
    line = delimiter.join(first)
    for other, name in ((";", "';'"), ("\t", "TAB"), (",", "','"), ("|", "'|'")):
        if other == delimiter or other not in line:
            continue
        parts = [p.strip().strip('"') for p in line.split(other)]
        if all(c in parts for c in wanted) or len(parts) >= len(wanted):
            fix = {"\t": "data.format=tsv", ",": "data.format=csv"}.get(other, "convert the file to csv or tsv")
            return f"; wrong delimiter? the first row looks {name}-separated ({fix})"
    return ""


def _fmt_cols(cols: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(c if len(c) <= 40 else c[:37] + "...") for c in cols[:limit])
    return f"[{shown}{', ...' if len(cols) > limit else ''}]"


# ---------------------------------------------------------------------------------------------- jsonl/parquet


def _as_str(value: Any) -> Any:
    """Labels/texts from typed formats as str; nulls stay None; 1.0 -> '1' (ints that went through float)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _read_jsonl(path: Path, text: str, data: DataConfig) -> pd.DataFrame:
    mapping = _mapping(data)
    values: dict[str, list[Any]] = {canon: [] for canon in mapping}
    rows: list[int] = []
    decode = json.JSONDecoder().decode
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = decode(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object per line, found {type(obj).__name__}")
        for canon, src in mapping.items():
            if src not in obj:
                raise DataError(
                    f"{path}: line {lineno}: missing column '{src}' (columns found: {_fmt_cols(list(obj))})"
                )
            values[canon].append(_as_str(obj[src]))
        rows.append(lineno)
    if not rows:
        raise DataError(f"{path}: file is empty")
    frame = pd.DataFrame({canon: pd.Series(v, dtype="str") for canon, v in values.items()})
    frame["row"] = np.asarray(rows, dtype=np.int64)
    return frame


def _arrow_to_str(column: Any) -> pd.Series:
    """A parquet column as str values: strings as they are, integers as digits, anything else value by value."""
    import pyarrow as pa
    import pyarrow.compute as pc

    kind = column.type
    if pa.types.is_dictionary(kind):
        column = column.cast(kind.value_type)
        kind = column.type
    if pa.types.is_large_string(kind) or pa.types.is_string(kind):
        return column.cast(pa.string()).to_pandas().reset_index(drop=True)
    if pa.types.is_integer(kind):
        return pc.cast(column, pa.string()).to_pandas().reset_index(drop=True)
    return pd.Series([_as_str(v) for v in column.to_pylist()], dtype="str")


def _read_parquet(path: Path, data: DataConfig) -> pd.DataFrame:
    mapping = _mapping(data)
    try:
        import pyarrow.parquet as pq

        schema_names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises many types; none may escape
        raise DataError(f"{path}: not a readable parquet file ({first_line(exc)})") from None
    missing = [c for c in mapping.values() if c not in schema_names]
    if missing:
        raise DataError(f"{path}: missing column '{missing[0]}' (columns found: {_fmt_cols(schema_names)})")
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(mapping.values())))
    except Exception as exc:
        raise DataError(f"{path}: cannot read parquet data ({first_line(exc)})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    frame = pd.DataFrame({canon: _arrow_to_str(table.column(src)) for canon, src in mapping.items()})
    frame["row"] = np.arange(1, table.num_rows + 1, dtype=np.int64)
    return frame

