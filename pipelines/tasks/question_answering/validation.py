"""Validate stage, question answering: a stored Great Expectations suite over a per-question batch.

`expectations/question_answering.rows.json` (a missing file falls back to `build_suite()`) runs on one row per
question of every data file: `answer_ok` (every answer text equals the context at its answer_start), `empty_question`,
`empty_context`, `duplicate_id` (an id seen before in the file) and `source_line`. A failure raises
DataValidationError naming the file, where (line or data[a].paragraphs[p].qas[q]), the question id and, for a
misplaced answer, both strings. The report also gives the unanswerable share per file.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.tasks.question_answering.readers import read_examples

SUITE = "question_answering.rows.json"
MAX_EXAMPLES = 5


def _expectation(kind: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"check": check}}


def build_suite() -> dict[str, Any]:
    """The built-in per-question suite (what expectations/question_answering.rows.json holds)."""
    expectations = [
        _expectation("expect_column_values_to_be_in_set", "no_empty_question", column="empty_question", value_set=[0]),
        _expectation("expect_column_values_to_be_in_set", "no_empty_context", column="empty_context", value_set=[0]),
        _expectation("expect_column_values_to_be_in_set", "unique_ids", column="duplicate_id", value_set=[0]),
        _expectation("expect_column_values_to_be_in_set", "answer_matches_context", column="answer_ok", value_set=[1]),
        _expectation("expect_table_row_count_to_be_between", "min_rows", min_value={"$PARAMETER": "min_rows"}),
    ]
    return {"name": "nlpops-question_answering-rows", "expectations": expectations, "meta": {"batch": "questions"}}


def load_suite(expectations_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored suite (or the built-in one when the file is absent) and where it came from."""
    from pipelines.data.validate import read_task_suite

    return read_task_suite(Path(expectations_dir) / SUITE, build_suite)


def first_bad_answer(context: str, texts: list[str], starts: list[int]) -> int | None:
    """Index of the first answer whose text is not the context at its answer_start, else None."""
    for k, (text, start) in enumerate(zip(texts, starts, strict=True)):
        if start < 0 or context[start : start + len(text)] != text:
            return k
    return None


def question_batch(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per question: empty_question, empty_context, duplicate_id, answer_ok (0/1) and source_line."""
    return pd.DataFrame(
        {
            "empty_question": [int(not str(q).strip()) for q in frame["question"]],
            "empty_context": [int(not str(c).strip()) for c in frame["context"]],
            "duplicate_id": frame["id"].duplicated(keep="first").astype(int).to_numpy(),
            "answer_ok": [
                int(first_bad_answer(c, list(t), list(s)) is None)
                for c, t, s in zip(frame["context"], frame["answer_texts"], frame["answer_starts"], strict=True)
            ],
            "source_line": frame["source_line"].to_numpy(),
        }
    )


def _detail(check: str, row: int, frame: pd.DataFrame) -> str:
    rec = frame.iloc[row]
    where = f"{rec['where']} (id {rec['id']!r})"
    if check == "answer_matches_context":
        texts, starts = list(rec["answer_texts"]), list(rec["answer_starts"])
        k = first_bad_answer(rec["context"], texts, starts) or 0
        found = rec["context"][starts[k] : starts[k] + len(texts[k])]
        return f"{where}: answer {texts[k]!r} at answer_start={starts[k]}, but the context there reads {found!r}"
    if check == "no_empty_question":
        return f"{where}: empty question"
    if check == "no_empty_context":
        return f"{where}: empty context"
    if check == "unique_ids":
        return f"{where}: duplicate question id"
    return f"{where}: check failed"


def validate_data(params: Any, report_path: Path, docs_dir: Path | None = None) -> dict[str, Any]:
    """Run the suite on the main file and any validation/test files; write the report and Data Docs."""
    from pipelines.data.validate import (
        _gx_suite,
        _import_gx,
        _in_suite_order,
        _jsonable,
        _quiet_context,
        _run_suite,
        _write_data_docs,
        write_report_or_raise,
    )
    from pipelines.hashing import file_digest

    report_path = Path(report_path)
    docs_dir = Path(docs_dir) if docs_dir else report_path.parent / "data_docs"
    data = params.data
    sources = [
        (r, p) for r, p in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)) if p
    ]
    frames = [(role, str(path), read_examples(path, data)) for role, path in sources]
    spec, origin = load_suite(params.validate_.expectations_dir)
    gx = _import_gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = _quiet_context(gx)
    suite = _gx_suite(gx, spec, origin)
    file_reports, docs = [], []
    for role, path, frame in frames:
        batch = question_batch(frame)
        parameters = {"min_rows": params.validate_.min_rows if role == "train" else 1}
        outcome = _run_suite(context, suite, batch, f"{role}-questions", parameters)
        docs.append((f"{role}-questions", outcome))
        checks = []
        for res in _in_suite_order(outcome.results, spec):
            config = res.expectation_config
            check = str((config.meta or {}).get("check") or config.type)
            result = dict(res.result or {})
            indexes = sorted(int(i) for i in result.get("partial_unexpected_index_list") or [])
            info = res.exception_info or {}
            if info.get("raised_exception"):
                lines = str(info.get("exception_message") or "error").strip().splitlines() or ["error"]
                details = f"expectation raised an error: {lines[0]}"
            elif res.success:
                details = "ok"
            elif check == "min_rows":
                details = f"{len(frame)} questions, fewer than validate.min_rows={params.validate_.min_rows}"
            elif indexes:
                details = _detail(check, indexes[0], frame)
            else:
                details = f"{int(result.get('unexpected_count') or 0)} questions failed"
            checks.append(
                {
                    "check": check,
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "success": bool(res.success),
                    "unexpected_count": int(result.get("unexpected_count") or 0),
                    "observed_value": _jsonable(result.get("observed_value")),
                    "examples": [str(frame["where"].iloc[i]) for i in indexes[:MAX_EXAMPLES]],
                    "details": details,
                }
            )
        unanswerable = int(frame["is_impossible"].sum())
        file_reports.append(
            {
                "path": path,
                "role": role,
                "format": frame.attrs.get("format"),
                "sha256": file_digest(path),
                "rows": len(frame),
                "contexts": int(frame["context"].nunique()),
                "articles": int(frame["title"].nunique()),
                "unanswerable": unanswerable,
                "unanswerable_share": round(unanswerable / max(len(frame), 1), 6),
                "encoding": frame.attrs.get("encoding"),
                "success": all(c["success"] for c in checks),
                "checks": checks,
            }
        )
    success = all(f["success"] for f in file_reports)
    index = _write_data_docs(docs, docs_dir)
    report = {
        "success": success,
        "task": "question_answering",
        "suites": {"questions": {"name": spec.get("name"), **origin}},
        "engine": "great_expectations (pandas), every expectation on every question (one row per question)",
        "great_expectations_version": gx.__version__,
        "data_docs": str(index),
        "files": file_reports,
    }
    write_report_or_raise(report_path, report, "questions")
    return {
        "success": True,
        "rows": sum(f["rows"] for f in file_reports),
        "unanswerable_share": {f["path"]: f["unanswerable_share"] for f in file_reports},
        "files": [f["path"] for f in file_reports],
        "report": str(report_path),
        "data_docs": str(index),
        "suites": {"questions": origin.get("path") or "built-in"},
    }


if __name__ == "__main__":  # python -m pipelines.tasks.question_answering.validation DIR: write the stored suite
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipelines.tasks.question_answering.validation EXPECTATIONS_DIR")
    target = Path(sys.argv[1]) / SUITE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(build_suite(), indent=2) + "\n", encoding="utf-8")
    print(target)
