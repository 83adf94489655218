"""Question answering readers: SQuAD JSON (v1.1 / v2.0), JSONL and Parquet -> the canonical frame.

Columns: id, title (the SQuAD article; JSONL/Parquet: `title` when given, else empty), context, question,
answer_texts (list of str), answer_starts (list of int), is_impossible (bool), source_line (JSONL: the line; SQuAD:
the question's position in the file, 1-based; Parquet: the row) and where (a human location: `line 12` or
`data[0].paragraphs[3].qas[1]`). JSONL/Parquet rows: {"id", "question", "context", "answers": {"text": [...],
"answer_start": [...]}} (the Hugging Face `squad_v2` layout); empty answer lists mean unanswerable.
Any malformed input is one DataError naming the file and where.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.errors import DataError

COLUMNS = (
    "id",
    "title",
    "context",
    "question",
    "answer_texts",
    "answer_starts",
    "is_impossible",
    "source_line",
    "where",
)


def detect_format(path: Path, data: Any) -> str:
    fmt = str(getattr(data, "format", "auto") or "auto")
    if fmt != "auto":
        if fmt not in ("squad", "jsonl", "parquet"):
            raise DataError(f"{path}: data.format={fmt!r} is not read by question answering (squad, jsonl, parquet)")
        return fmt
    suffix = path.suffix.lower()
    found = {".json": "squad", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}.get(suffix)
    if found is None:
        raise DataError(f"{path}: cannot tell the format from {suffix!r}; set data.format to squad, jsonl or parquet")
    return found


def _answers(raw: Any, where: str, path: Path) -> tuple[list[str], list[int]]:
    """(texts, starts) from a SQuAD `answers` list or a {"text": [...], "answer_start": [...]} mapping."""
    if raw is None:
        return [], []
    if isinstance(raw, dict):
        texts, starts = raw.get("text", []), raw.get("answer_start", [])
        if hasattr(texts, "tolist"):
            texts, starts = texts.tolist(), list(starts)
        if not isinstance(texts, list) or not isinstance(starts, list) or len(texts) != len(starts):
            raise DataError(f"{path}: {where}: answers needs equally long 'text' and 'answer_start' lists")
        pairs = list(zip(texts, starts, strict=True))
    elif isinstance(raw, list):
        if not all(isinstance(a, dict) for a in raw):
            raise DataError(f"{path}: {where}: each answer must be an object with 'text' and 'answer_start'")
        pairs = [(a.get("text"), a.get("answer_start")) for a in raw]
    else:
        raise DataError(f"{path}: {where}: 'answers' must be a list or an object, got {type(raw).__name__}")
    texts_out, starts_out = [], []
    for text, start in pairs:
        if not isinstance(text, str):
            raise DataError(f"{path}: {where}: answer text must be a string, got {text!r}")
        if isinstance(start, bool) or not isinstance(start, (int, float)) or int(start) != start:
            raise DataError(f"{path}: {where}: answer_start must be an integer, got {start!r}")
        texts_out.append(text)
        starts_out.append(int(start))
    return texts_out, starts_out


def _row(obj: dict, title: str, context: Any, where: str, line: int, path: Path) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {where}: expected a JSON object, got {type(obj).__name__}")
    question = obj.get("question")
    if not isinstance(question, str):
        raise DataError(f"{path}: {where}: 'question' must be a string, got {question!r}")
    if not isinstance(context, str):
        raise DataError(f"{path}: {where}: 'context' must be a string, got {type(context).__name__}")
    texts, starts = _answers(obj.get("answers"), where, path)
    impossible = bool(obj.get("is_impossible", False)) or not texts
    if obj.get("is_impossible") and texts:  # SQuAD 2.0 keeps plausible answers apart; answers must be empty
        texts, starts = [], []
    qid = obj.get("id")
    return {
        "id": str(qid) if qid is not None else f"{path.name}:{line}",
        "title": str(title or ""),
        "context": context,
        "question": question,
        "answer_texts": texts,
        "answer_starts": starts,
        "is_impossible": impossible,
        "source_line": line,
        "where": where,
    }


def _read_squad(text: str, path: Path) -> list[dict[str, Any]]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), list):
        raise DataError(f"{path}: a SQuAD file needs a top-level object with a 'data' list of articles")
    rows: list[dict[str, Any]] = []
    for a, article in enumerate(doc["data"]):
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise DataError(f"{path}: data[{a}]: an article needs a 'paragraphs' list")
        title = str(article.get("title") or f"article-{a}")
        for p, para in enumerate(article["paragraphs"]):
            if not isinstance(para, dict) or not isinstance(para.get("qas"), list):
                raise DataError(f"{path}: data[{a}].paragraphs[{p}]: a paragraph needs 'context' and a 'qas' list")
            for q, qa in enumerate(para["qas"]):
                where = f"data[{a}].paragraphs[{p}].qas[{q}]"
                rows.append(_row(qa, title, para.get("context"), where, len(rows) + 1, path))
    return rows


def _read_jsonl(text: str, path: Path) -> list[dict[str, Any]]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}: line {number}: not valid JSON ({exc.msg})") from None
        where = f"line {number}"
        if not isinstance(obj, dict):
            raise DataError(f"{path}: {where}: expected a JSON object, got {type(obj).__name__}")
        rows.append(_row(obj, obj.get("title") or "", obj.get("context"), where, number, path))
    return rows


def _read_parquet(path: Path) -> list[dict[str, Any]]:
    try:
        frame = pd.read_parquet(path)
    except Exception as exc:  # pyarrow raises several types for a broken file
        raise DataError(f"{path}: not a readable parquet file ({type(exc).__name__}: {exc})") from None
    missing = [c for c in ("question", "context") if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing} (have {list(frame.columns)})")
    rows = []
    for i, rec in enumerate(frame.to_dict("records")):
        rows.append(_row(rec, rec.get("title") or "", rec.get("context"), f"row {i}", i, path))
    return rows


def read_examples(path: str | Path, data: Any) -> pd.DataFrame:
    """Read one question answering file into the canonical frame (attrs: format, encoding)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    fmt = detect_format(path, data)
    if fmt == "parquet":
        rows, encoding = _read_parquet(path), "parquet"
    else:
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read file ({exc.strerror or exc})") from None
        if not raw.strip():
            raise DataError(f"{path}: file is empty ({len(raw)} bytes)")
        from pipelines.data.load import _to_utf8  # the project's one decoder: BOM, data.encoding(_fallback), binary

        utf8, encoding = _to_utf8(path, raw, data)
        text = utf8.decode("utf-8")
        rows = _read_squad(text, path) if fmt == "squad" else _read_jsonl(text, path)
    if not rows:
        raise DataError(f"{path}: no questions found")
    frame = pd.DataFrame(rows, columns=list(COLUMNS))
    frame.attrs.update(format=fmt, encoding=encoding)
    return frame
