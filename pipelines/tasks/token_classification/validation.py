"""Validate stage, token classification: a stored Great Expectations suite over a per-sentence batch.

`expectations/token_classification.rows.json` (a missing file falls back to the built-in suite, `build_suite()`)
runs on one row per sentence of every data file: `n_tokens`, `empty` (no words, or a blank word), `tag_ok` (every tag
in the declared `data.labels`, else in the training file's tags), `iob_ok` (no IOB2 violation: an I-X after O, after
B-Y / I-Y or at the start, or a tag that is not O/B-X/I-X; accepted as-is with task.scheme=none) and `source_line`.
Thresholds are suite parameters from params (task.min_tokens / max_tokens, validate.min_rows).

GE runs through the project's GE plumbing in pipelines/data/validate.py. A failure raises `DataValidationError`
with one line naming the file, the line of the offending word, and the check; the report JSON and Data Docs list
all of them.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.tasks.token_classification.iob import iob_violations
from pipelines.tasks.token_classification.readers import location, read_sentences

SUITE = "token_classification.rows.json"
MAX_EXAMPLES = 5


def _expectation(kind: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"check": check}}


def build_suite() -> dict[str, Any]:
    """The built-in per-sentence suite (GE's JSON form; what expectations/token_classification.rows.json holds)."""
    p = lambda name: {"$PARAMETER": name}  # noqa: E731
    expectations = [
        _expectation("expect_column_values_to_be_in_set", "no_empty_sentences", column="empty", value_set=[0]),
        _expectation(
            "expect_column_values_to_be_between",
            "sentence_length",
            column="n_tokens",
            min_value=p("min_tokens"),
            max_value=p("max_tokens"),
        ),
        _expectation("expect_column_values_to_be_in_set", "tags_in_set", column="tag_ok", value_set=[1]),
        _expectation(
            "expect_column_values_to_be_in_set", "iob_consistency", column="iob_ok", value_set=p("iob_allowed")
        ),
        _expectation("expect_table_row_count_to_be_between", "min_rows", min_value=p("min_rows")),
    ]
    return {"name": "nlpops-token_classification-rows", "expectations": expectations, "meta": {"batch": "sentences"}}


def load_suite(expectations_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored suite (or the built-in one when the file is absent) and where it came from."""
    from pipelines.data.validate import read_task_suite

    return read_task_suite(Path(expectations_dir) / SUITE, build_suite)


def sentence_batch(frame: pd.DataFrame, tag_set: set[str] | None, iob: bool) -> pd.DataFrame:
    """One row per sentence: n_tokens, empty, tag_ok, iob_ok (0/1) and source_line."""
    tokens, tags = frame["tokens"].tolist(), frame["tags"].tolist()
    return pd.DataFrame(
        {
            "n_tokens": [len(t) for t in tokens],
            "empty": [int(not t or any(not str(w).strip() for w in t)) for t in tokens],
            "tag_ok": [int(tag_set is None or set(t) <= tag_set) for t in tags],
            "iob_ok": [int(not iob or not iob_violations(list(t))) for t in tags],
            "source_line": frame["source_line"].to_numpy(),
        }
    )


def _first_detail(check: str, row: int, frame: pd.DataFrame, params: Any, tag_set: set[str] | None, main: str) -> str:
    """'line N: what is wrong' for the first sentence a check failed on."""
    options = params.task
    words, tags = list(frame["tokens"].iloc[row]), list(frame["tags"].iloc[row])
    if check == "iob_consistency":
        v = iob_violations(tags)[0]
        return f"{location(frame, row, v.index)}: {v.describe()} (word {words[v.index]!r})"
    if check == "tags_in_set":
        i = next(k for k, t in enumerate(tags) if tag_set is not None and t not in tag_set)
        allowed = f"data.labels {list(params.data.labels)}" if params.data.labels else f"the tags of {main}"
        return f"{location(frame, row, i)}: tag {tags[i]!r} (word {words[i]!r}) is not in {allowed}"
    if check == "no_empty_sentences":
        blank = next((k for k, w in enumerate(words) if not str(w).strip()), 0)
        if not words:
            return f"{location(frame, row)}: an empty sentence"
        return f"{location(frame, row, blank)}: a blank word"
    if check == "sentence_length":
        upper = options.max_tokens if options.max_tokens is not None else "any"
        return (
            f"{location(frame, row)}: sentence of {len(words)} words, outside "
            f"task.min_tokens={options.min_tokens}..task.max_tokens={upper}"
        )
    return f"{location(frame, row)}: check failed"


def validate_data(params: Any, report_path: Path, docs_dir: Path | None = None) -> dict[str, Any]:
    """Run the suite on the main file and any user-given validation/test files; write the report and Data Docs."""
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
    data, options = params.data, params.task
    sources = [
        (r, p) for r, p in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)) if p
    ]
    frames = [(role, str(path), read_sentences(path, data)) for role, path in sources]  # DataError propagates
    spec, origin = load_suite(params.validate_.expectations_dir)
    gx = _import_gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = _quiet_context(gx)
    suite = _gx_suite(gx, spec, origin)

    main = str(data.path)
    train_tags = sorted({t for tags in frames[0][2]["tags"] for t in tags})
    iob = options.scheme == "IOB2"
    file_reports, docs = [], []
    for role, path, frame in frames:
        tag_set = set(data.labels) if data.labels else (None if role == "train" else set(train_tags))
        batch = sentence_batch(frame, tag_set, iob)
        parameters = {
            "min_tokens": options.min_tokens,
            "max_tokens": options.max_tokens,
            "iob_allowed": [1] if iob else [0, 1],
            "min_rows": params.validate_.min_rows if role == "train" else 1,
        }
        outcome = _run_suite(context, suite, batch, f"{role}-sentences", parameters)
        docs.append((f"{role}-sentences", outcome))
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
                details = f"{len(frame)} sentences, fewer than validate.min_rows={params.validate_.min_rows}"
            elif indexes:
                details = _first_detail(check, indexes[0], frame, params, tag_set, main)
            else:
                details = f"{int(result.get('unexpected_count') or 0)} sentences failed"
            checks.append(
                {
                    "check": check,
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "success": bool(res.success),
                    "unexpected_count": int(result.get("unexpected_count") or 0),
                    "observed_value": _jsonable(result.get("observed_value")),
                    "example_lines": [int(batch["source_line"].iloc[i]) for i in indexes[:MAX_EXAMPLES]],
                    "details": details,
                }
            )
        tag_counts: dict[str, int] = {}
        for tags in frame["tags"]:
            for t in tags:
                tag_counts[t] = tag_counts.get(t, 0) + 1
        file_reports.append(
            {
                "path": path,
                "role": role,
                "format": frame.attrs.get("format"),
                "sha256": file_digest(path),
                "rows": len(frame),
                "tokens": int(batch["n_tokens"].sum()),
                "encoding": frame.attrs.get("encoding"),
                "success": all(c["success"] for c in checks),
                "tag_counts": dict(sorted(tag_counts.items())),
                "checks": checks,
            }
        )

    success = all(f["success"] for f in file_reports)
    index = _write_data_docs(docs, docs_dir)
    report = {
        "success": success,
        "task": "token_classification",
        "suites": {"sentences": {"name": spec.get("name"), **origin}},
        "engine": "great_expectations (pandas), every expectation on every sentence (one row per sentence)",
        "great_expectations_version": gx.__version__,
        "data_docs": str(index),
        "files": file_reports,
    }
    write_report_or_raise(report_path, report, "sentences")
    return {
        "success": True,
        "rows": sum(f["rows"] for f in file_reports),
        "files": [f["path"] for f in file_reports],
        "report": str(report_path),
        "data_docs": str(index),
        "suites": {"sentences": origin.get("path") or "built-in"},
    }


if __name__ == "__main__":  # python -m pipelines.tasks.token_classification.validation DIR: write the stored suite
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipelines.tasks.token_classification.validation EXPECTATIONS_DIR")
    target = Path(sys.argv[1]) / SUITE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(build_suite(), indent=2) + "\n", encoding="utf-8")
    print(target)
