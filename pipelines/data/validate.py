"""Validate stage: a Great Expectations 1.x suite (built from params) plus a few pandas checks per data file.

Writes a JSON report; on failure raises `DataValidationError` with one line naming the file, the column, example
source rows and the failed expectation. Great Expectations is imported lazily (slow) and kept silent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import Params
from pipelines.data.load import read_table
from pipelines.errors import DataValidationError

SUITE_NAME = "nlpops-data"
MAX_EXAMPLE_ROWS = 5
_GX_LOGGERS = ("great_expectations", "great_expectations.core", "great_expectations.data_context", "tzlocal")


def _import_gx() -> Any:
    """Import great_expectations quietly (no analytics, no INFO logs)."""
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
    for name in _GX_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import great_expectations as gx
    for name in _GX_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)
    return gx


def _quiet_context(gx: Any) -> Any:
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return context


def _sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _rows_text(rows: list[int]) -> str:
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(str(r) for r in rows)


def _n(count: int, noun: str = "row") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _blank_to_null(series: pd.Series, strip: bool = False) -> pd.Series:
    """Empty / whitespace-only strings become null, so 'not null' also means 'not empty'."""
    values = series.astype(object)
    if strip:
        values = values.map(lambda v: v.strip() if isinstance(v, str) else v)
    blank = values.map(lambda v: isinstance(v, str) and not v.strip())
    return values.where(~blank & values.notna(), None)


def _build_suite(gx: Any, params: Params, text_cols: list[str], role: str) -> tuple[Any, list[tuple[str, str | None]]]:
    import great_expectations.expectations as gxe

    cfg = params.validate_
    mostly = round(1.0 - cfg.max_null_share, 10)
    suite = gx.ExpectationSuite(name=SUITE_NAME)
    order: list[tuple[str, str | None]] = []

    def add(expectation: Any) -> None:
        suite.add_expectation(expectation)
        order.append((expectation.expectation_type, getattr(expectation, "column", None)))

    for col in [*text_cols, "label"]:
        add(gxe.ExpectColumnToExist(column=col))
    for col in text_cols:
        add(gxe.ExpectColumnValuesToNotBeNull(column=col, mostly=mostly))
        add(
            gxe.ExpectColumnValueLengthsToBeBetween(
                column=col, min_value=cfg.min_text_chars, max_value=cfg.max_text_chars
            )
        )
    add(gxe.ExpectColumnValuesToNotBeNull(column="label", mostly=mostly))
    if params.data.labels:
        add(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(params.data.labels)))
    add(gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows if role == "train" else 1))
    return suite, order


def _details(kind: str, column: str | None, result: dict[str, Any], params: Params, n_rows: int) -> str:
    cfg = params.validate_
    count = int(result.get("unexpected_count") or 0)
    if kind == "expect_column_to_exist":
        return "column present" if result.get("success", True) else "column missing"
    if kind == "expect_column_values_to_not_be_null":
        text = f"{_n(count)} empty or null"
        if cfg.max_null_share > 0 and n_rows:
            text += f" ({100 * count / n_rows:.1f}% > allowed {100 * cfg.max_null_share:.1f}%)"
        return text
    if kind == "expect_column_value_lengths_to_be_between":
        return f"{_n(count)} shorter than {cfg.min_text_chars} or longer than {cfg.max_text_chars} characters"
    if kind == "expect_column_values_to_be_in_set":
        values = list(dict.fromkeys(str(v) for v in result.get("partial_unexpected_list") or []))[:3]
        shown = ", ".join(repr(v) for v in values)
        return f"{_n(count)} with a label not in data.labels {list(params.data.labels or [])}" + (
            f" (e.g. {shown})" if shown else ""
        )
    if kind == "expect_table_row_count_to_be_between":
        observed = result.get("observed_value", n_rows)
        return f"{_n(int(observed))}, fewer than validate.min_rows={cfg.min_rows}"
    return f"{count} unexpected values"


def _gx_checks(
    gx: Any, context: Any, params: Params, frame: pd.DataFrame, role: str, text_cols: list[str]
) -> list[dict]:
    gx_frame = frame.copy()
    for col in text_cols:
        gx_frame[col] = _blank_to_null(gx_frame[col])
    gx_frame["label"] = _blank_to_null(gx_frame["label"], strip=True)
    gx_frame = gx_frame.reset_index(drop=True)
    rows = gx_frame["row"].tolist()

    suite, order = _build_suite(gx, params, text_cols, role)
    source = context.data_sources.add_pandas(f"nlpops-{role}")
    asset = source.add_dataframe_asset(role)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": gx_frame})
    result_format = {
        "result_format": "COMPLETE",
        "partial_unexpected_count": 20,
        "return_unexpected_index_query": False,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        outcome = batch.validate(suite, result_format=result_format)

    by_key: dict[tuple[str, str | None], Any] = {}
    for res in outcome.results:
        cfg = res.expectation_config
        by_key[(cfg.type, cfg.kwargs.get("column"))] = res
    checks = []
    for kind, column in order:
        res = by_key[(kind, column)]
        result = dict(res.result or {})
        result["success"] = bool(res.success)
        index_list = result.get("unexpected_index_list") or result.get("partial_unexpected_index_list") or []
        examples = [int(rows[i]) for i in index_list[:MAX_EXAMPLE_ROWS] if isinstance(i, int) and 0 <= i < len(rows)]
        info = res.exception_info or {}
        details = _details(kind, column, result, params, len(gx_frame))
        if info.get("raised_exception"):
            lines = str(info.get("exception_message") or "error").strip().splitlines() or ["error"]
            details = f"expectation raised an error: {lines[0]}"
        checks.append(
            {
                "expectation": kind,
                "column": column,
                "success": bool(res.success),
                "unexpected_count": int(result.get("unexpected_count") or 0),
                "example_rows": examples,
                "details": details,
                "engine": "great_expectations",
            }
        )
    return checks


def _pandas_check(kind: str, success: bool, count: int, rows: list[int], details: str) -> dict[str, Any]:
    return {
        "expectation": kind,
        "column": "label",
        "success": success,
        "unexpected_count": count,
        "example_rows": [int(r) for r in rows[:MAX_EXAMPLE_ROWS]],
        "details": details,
        "engine": "pandas",
    }


def _labels(frame: pd.DataFrame) -> pd.Series:
    labels = _blank_to_null(frame["label"], strip=True)
    return labels[labels.notna()]


def _class_checks(frame: pd.DataFrame, params: Params) -> list[dict[str, Any]]:
    minimum = params.validate_.min_rows_per_class
    labels = _labels(frame)
    counts = labels.value_counts()
    small = counts[counts < minimum]
    if small.empty:
        per_class = _pandas_check(
            "expect_each_label_to_have_min_rows", True, 0, [], f"every class has at least {minimum} rows"
        )
    else:
        first = small.index[0]
        rows = frame.loc[labels.index[labels == first], "row"].tolist()
        others = f" (+{len(small) - 1} more classes below it)" if len(small) > 1 else ""
        per_class = _pandas_check(
            "expect_each_label_to_have_min_rows",
            False,
            int(small.sum()),
            rows,
            f"class {first!r} has {_n(int(small.iloc[0]))}, fewer than validate.min_rows_per_class={minimum}{others}",
        )
    n_classes = len(counts)
    shown = ", ".join(repr(c) for c in list(counts.index)[:5])
    two = _pandas_check(
        "expect_at_least_two_labels",
        n_classes >= 2,
        0 if n_classes >= 2 else len(labels),
        [] if n_classes >= 2 else frame.loc[labels.index, "row"].tolist(),
        f"{n_classes} distinct labels ({shown})" + ("" if n_classes >= 2 else "; a classifier needs at least 2"),
    )
    return [per_class, two]


def _subset_check(frame: pd.DataFrame, main_labels: set[str], main_path: str) -> dict[str, Any]:
    labels = _labels(frame)
    unknown = labels[~labels.isin(main_labels)]
    if unknown.empty:
        return _pandas_check("expect_labels_to_be_subset_of_train", True, 0, [], f"all labels occur in {main_path}")
    values = list(dict.fromkeys(unknown))
    shown = ", ".join(repr(v) for v in values[:3])
    rows = frame.loc[unknown.index, "row"].tolist()
    return _pandas_check(
        "expect_labels_to_be_subset_of_train",
        False,
        len(unknown),
        rows,
        f"{_n(len(unknown))} with labels not in {main_path} ({shown})",
    )


def _message(path: str, check: dict[str, Any]) -> str:
    where = f"column '{check['column']}': " if check["column"] else ""
    rows = f" ({_rows_text(check['example_rows'])})" if check["example_rows"] else ""
    return f"{path}: {where}{check['details']}{rows} [{check['expectation']}]"


def validate_data(params: Params, report_path: Path) -> dict[str, Any]:
    """Run the data suite on the main file and any user-provided validation/test files; write the report."""
    report_path = Path(report_path)
    data = params.data
    text_cols = ["text", "text_pair"] if data.text_pair_column else ["text"]
    sources = [
        (r, p) for r, p in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)) if p
    ]
    frames = [(role, str(path), read_table(path, data)) for role, path in sources]  # DataError propagates

    gx = _import_gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = _quiet_context(gx)

    main_labels = set(_labels(frames[0][2]))
    file_reports: list[dict[str, Any]] = []
    for role, path, frame in frames:
        checks = _gx_checks(gx, context, params, frame, role, text_cols)
        if role == "train":
            checks += _class_checks(frame, params)
        else:
            checks.append(_subset_check(frame, main_labels, data.path))
        file_reports.append(
            {
                "path": path,
                "role": role,
                "sha256": _sha256(path),
                "rows": len(frame),
                "success": all(c["success"] for c in checks),
                "checks": checks,
            }
        )

    success = all(f["success"] for f in file_reports)
    report = {
        "success": success,
        "suite": SUITE_NAME,
        "great_expectations_version": gx.__version__,
        "files": file_reports,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    if not success:
        failures = [(f["path"], c) for f in file_reports for c in f["checks"] if not c["success"]]
        path, first = failures[0]
        message = _message(path, first)
        if len(failures) > 1:
            message += f" (+{len(failures) - 1} more failed checks, see {report_path})"
        raise DataValidationError(message, report_path=str(report_path))
    return {
        "success": True,
        "rows": sum(f["rows"] for f in file_reports),
        "files": [f["path"] for f in file_reports],
        "report": str(report_path),
    }
