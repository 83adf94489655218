"""Read a raw data file (csv, tsv, jsonl, parquet) into canonical columns: text, [text_pair], label, row.

Every failure a user can fix becomes one `DataError` line that starts with the file path; no pandas, pyarrow
or csv traceback escapes. `row` is the 1-based line number in the source file (the first data row of a
headered file is row 2), so later error messages can point at the exact line.
"""

from __future__ import annotations

import codecs
import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import DataConfig
from pipelines.errors import DataError

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


def canonical_columns(data: DataConfig) -> list[str]:
    """The canonical columns read_table returns, in order (without `row`)."""
    return ["text", "text_pair", "label"] if data.text_pair_column else ["text", "label"]


def _mapping(data: DataConfig) -> dict[str, str]:
    """canonical name -> source column name."""
    mapping = {"text": data.text_column}
    if data.text_pair_column:
        mapping["text_pair"] = data.text_pair_column
    mapping["label"] = data.label_column
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
    """Read one data file into columns text, [text_pair], label (raw values as str; nulls stay null) and row."""
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
        raise DataError(f"{path}: file is empty")
    if fmt == "parquet":
        return _read_parquet(path, data)
    text = _decode(path, raw, data.encoding)
    if not text.strip():
        raise DataError(f"{path}: file is empty")
    if fmt == "jsonl":
        return _read_jsonl(path, text, data)
    return _read_delimited(path, text, data, delimiter="\t" if fmt == "tsv" else ",")


# --------------------------------------------------------------------------------------------------- decoding


def _decode(path: Path, raw: bytes, encoding: str) -> str:
    try:
        codec = codecs.lookup(encoding).name
    except LookupError:
        raise DataError(f"{path}: unknown encoding data.encoding={encoding!r}") from None
    offset = 0
    if codec == "utf-8" and raw.startswith(_UTF8_BOM):  # BOM tolerated (as utf-8-sig), offsets stay file offsets
        offset = len(_UTF8_BOM)
    if not codec.startswith(("utf-16", "utf-32")):
        nul = raw.find(b"\x00")
        if nul >= 0:
            raise DataError(
                f"{path}: looks like a binary file (NUL byte at byte offset {nul}), not {encoding} text; "
                "if it is text in another encoding set data.encoding (e.g. latin-1)"
            )
    try:
        return raw[offset:].decode(codec)
    except UnicodeDecodeError as exc:
        pos = exc.start + offset
        bad = raw[pos : pos + 1].hex()
        raise DataError(
            f"{path}: not valid {encoding} text (byte 0x{bad} at byte offset {pos}); "
            "binary file, or text in another encoding? set data.encoding (e.g. data.encoding=latin-1)"
        ) from None
    except UnicodeError as exc:
        raise DataError(f"{path}: cannot decode as {encoding} ({exc}); set data.encoding") from None


# -------------------------------------------------------------------------------------------------- delimited


def _read_delimited(path: Path, text: str, data: DataConfig, delimiter: str) -> pd.DataFrame:
    kind = "TSV" if delimiter == "\t" else "CSV"
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
        raise DataError(f"{path}: line {reader.line_num + 1}: malformed {kind} ({exc})") from None
    if not records:
        raise DataError(f"{path}: file is empty")

    mapping = _mapping(data)
    wanted = list(mapping.values())
    first = [c.strip() for c in records[0][1]]
    if data.header == "yes":
        has_header = True
    elif data.header == "no":
        has_header = False
    else:
        has_header = all(c in first for c in wanted)
        if not has_header and not data.column_names:
            raise DataError(
                f"{path}: first row has no header with the expected columns {_fmt_cols(wanted)} "
                f"(first row: {_fmt_cols(first, limit=8)}); for a header-less file set data.column_names "
                f"(and data.header=no)"
            )
    if has_header:
        names = list(data.column_names) if data.column_names else first
        body = records[1:]
        if data.column_names and len(names) != len(first):
            raise DataError(
                f"{path}: data.column_names has {len(names)} names but the header (line {records[0][0]}) "
                f"has {len(first)} columns: {_fmt_cols(first, limit=8)}"
            )
    else:
        if not data.column_names:
            raise DataError(f"{path}: data.header=no needs data.column_names (the names of the file's columns)")
        names = list(data.column_names)
        body = records
    missing = [c for c in wanted if c not in names]
    if missing:
        where = "columns found" if has_header else "data.column_names"
        raise DataError(
            f"{path}: missing column '{missing[0]}' ({where}: {_fmt_cols(names, limit=12)}); "
            "set data.text_column / data.text_pair_column / data.label_column to match"
        )
    if not body:
        raise DataError(f"{path}: header only, no data rows")

    width = len(names)
    hint = "wrong delimiter" if delimiter == "\t" else f"wrong delimiter or an unquoted '{delimiter}' in the text"
    for start, fields in body:
        if len(fields) != width:
            raise DataError(
                f"{path}: line {start}: expected {width} {kind} fields, found {len(fields)} ({hint}? check data.format)"
            )
    positions = {canon: names.index(src) for canon, src in mapping.items()}
    columns: dict[str, Any] = {canon: [f[pos] for _, f in body] for canon, pos in positions.items()}
    columns["row"] = [start for start, _ in body]
    return _frame(columns, data)


def _fmt_cols(cols: list[str], limit: int = 12) -> str:
    shown = ", ".join(repr(c if len(c) <= 40 else c[:37] + "...") for c in cols[:limit])
    return f"[{shown}{', ...' if len(cols) > limit else ''}]"


# ---------------------------------------------------------------------------------------------- jsonl/parquet


def _as_str(value: Any) -> Any:
    """Labels/texts from typed formats as str; nulls stay None; 1.0 -> '1' (ints that went through float)."""
    if value is None:
        return None
    if isinstance(value, float):
        if math.isnan(value):
            return None
        if value.is_integer():
            return str(int(value))
    if isinstance(value, str):
        return value
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _read_jsonl(path: Path, text: str, data: DataConfig) -> pd.DataFrame:
    mapping = _mapping(data)
    rows: list[tuple[int, dict[str, Any]]] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {lineno}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}: line {lineno}: expected a JSON object per line, found {type(obj).__name__}")
        rows.append((lineno, obj))
    if not rows:
        raise DataError(f"{path}: file is empty")
    for lineno, obj in rows:
        for src in mapping.values():
            if src not in obj:
                raise DataError(
                    f"{path}: line {lineno}: missing column '{src}' (columns found: {_fmt_cols(list(obj))})"
                )
    columns: dict[str, Any] = {canon: [_as_str(obj[src]) for _, obj in rows] for canon, src in mapping.items()}
    columns["row"] = [lineno for lineno, _ in rows]
    return _frame(columns, data)


def _read_parquet(path: Path, data: DataConfig) -> pd.DataFrame:
    mapping = _mapping(data)
    try:
        import pyarrow.parquet as pq

        schema_names = pq.read_schema(path).names
    except Exception as exc:  # pyarrow raises many types; none may escape
        raise DataError(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
    missing = [c for c in mapping.values() if c not in schema_names]
    if missing:
        raise DataError(f"{path}: missing column '{missing[0]}' (columns found: {_fmt_cols(schema_names)})")
    try:
        table = pq.read_table(path, columns=list(dict.fromkeys(mapping.values())))
    except Exception as exc:
        raise DataError(f"{path}: cannot read parquet data ({_first_line(exc)})") from None
    if table.num_rows == 0:
        raise DataError(f"{path}: no data rows")
    columns: dict[str, Any] = {
        canon: [_as_str(v) for v in table.column(src).to_pylist()] for canon, src in mapping.items()
    }
    columns["row"] = list(range(1, table.num_rows + 1))
    return _frame(columns, data)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _frame(columns: dict[str, Any], data: DataConfig) -> pd.DataFrame:
    frame = pd.DataFrame({c: pd.Series(columns[c], dtype="str") for c in canonical_columns(data)})
    frame["row"] = pd.Series(columns["row"], dtype="int64")
    return frame
