"""Validate stage: stored Great Expectations 1.x suites, thresholds from params, Data Docs, a JSON report.

Two suites per task variant live in `validate.expectations_dir` (default `expectations/`, versioned with the
code and editable: add any GE expectation to them):

- `<variant>.rows.json` runs on every row of each data file (columns text, [text_pair], label, row, [slice],
  plus the derived `text_tokens` / `text_pair_tokens` and, for pairs, `pair_key`);
- `<variant>.labels.json` runs on a per-class summary of each file (label, rows, share, label_id, kind): class
  sizes and shares, at least two classes, every training class present in each user-given split, one label type,
  no negative label ids.

Thresholds are GE suite parameters (`{"$PARAMETER": "min_rows"}`) filled in from params.yaml at run time, so one
stored suite serves every params set. A missing suite file falls back to the built-in suite (the same one
`python -m pipelines.data.validate --write-suites DIR` writes). Every expectation runs on every row (no sampling).

Writes the report JSON and GE Data Docs (HTML); on failure raises `DataValidationError` with one line naming the
file, the column, example source rows and the failed check. Great Expectations is imported lazily (slow) and kept
silent.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Params
from pipelines.data.load import read_table
from pipelines.hashing import file_digest
from pipelines.errors import ConfigError, DataValidationError

MAX_EXAMPLE_ROWS = 5
_GX_LOGGERS = ("great_expectations", "great_expectations.core", "great_expectations.data_context", "tzlocal")
NULL_LABELS = ("nan", "NaN", "NAN", "null", "NULL", "Null", "None", "none")
NUMERIC_TEXT = r"^\s*[-+]?(\d+([.,]\d*)?|[.,]\d+)([eE][-+]?\d+)?\s*$"
SUITE_KINDS = ("rows", "labels")


# ------------------------------------------------------------------------------------------------- the suites


def suite_variant(params: Params) -> str:
    """Which stored suites apply: one set per task type (and per single-text / text-pair input)."""
    return params.task.type + ("_pair" if params.data.text_pair_column else "")


def _expectation(kind: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"check": check}}


def _p(name: str) -> dict[str, str]:
    return {"$PARAMETER": name}


def build_suite(variant: str, kind: str) -> dict[str, Any]:
    """The built-in suite (GE's JSON form) for a task variant; thresholds are suite parameters."""
    pair = variant.endswith("_pair")
    if kind == "labels":
        expectations = [
            _expectation("expect_table_row_count_to_be_between", "at_least_two_labels", min_value=_p("min_classes")),
            _expectation(
                "expect_column_values_to_be_between", "class_min_rows", column="rows", min_value=_p("min_class_rows")
            ),
            _expectation(
                "expect_column_values_to_be_between", "class_min_share", column="share", min_value=_p("min_class_share")
            ),
            _expectation(
                "expect_column_unique_value_count_to_be_between", "one_label_type", column="kind", max_value=1
            ),
            _expectation(
                "expect_column_values_to_be_between", "label_ids_non_negative", column="label_id", min_value=0
            ),
        ]
        return {"name": f"nlpops-{variant}-labels", "expectations": expectations, "meta": {"batch": "labels"}}
    text_cols = ["text", "text_pair"] if pair else ["text"]
    expectations = [_expectation("expect_column_to_exist", f"{c}_present", column=c) for c in [*text_cols, "label"]]
    for col in text_cols:
        expectations += [
            _expectation(
                "expect_column_values_to_not_be_null", f"{col}_not_empty", column=col, mostly=_p("text_mostly")
            ),
            _expectation(
                "expect_column_value_lengths_to_be_between",
                f"{col}_length_chars",
                column=col,
                min_value=_p("min_text_chars"),
                max_value=_p("max_text_chars"),
            ),
            _expectation(
                "expect_column_values_to_be_between",
                f"{col}_length_tokens",
                column=f"{col}_tokens",
                min_value=_p("min_text_tokens"),
                max_value=_p("max_text_tokens"),
            ),
            _expectation(
                "expect_column_values_to_not_match_regex",
                f"{col}_not_numeric",
                column=col,
                regex=NUMERIC_TEXT,
                mostly=_p("numeric_mostly"),
            ),
        ]
    expectations += [
        _expectation(
            "expect_column_proportion_of_unique_values_to_be_between",
            "duplicate_share",
            column="pair_key" if pair else "text",
            min_value=_p("min_unique_share"),
        ),
        _expectation(
            "expect_column_values_to_not_be_null", "label_not_empty", column="label", mostly=_p("label_mostly")
        ),
        _expectation("expect_column_values_to_be_in_set", "label_in_set", column="label", value_set=_p("label_set")),
        _expectation("expect_table_row_count_to_be_between", "min_rows", min_value=_p("min_rows")),
    ]
    return {"name": f"nlpops-{variant}-rows", "expectations": expectations, "meta": {"batch": "rows"}}


def write_suites(directory: Path, variants: tuple[str, ...] = ("text_classification", "text_classification_pair")):
    """Write the built-in suites as JSON files (what expectations/ in the repository holds)."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for variant in variants:
        for kind in SUITE_KINDS:
            target = directory / f"{variant}.{kind}.json"
            target.write_text(json.dumps(build_suite(variant, kind), indent=2) + "\n", encoding="utf-8")
            written.append(target)
    return written


def load_suite_spec(params: Params, kind: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The suite to run (stored file, or the built-in one when absent) and where it came from."""
    variant = suite_variant(params)
    path = Path(params.validate_.expectations_dir) / f"{variant}.{kind}.json"
    if not path.is_file():
        spec = build_suite(variant, kind)
        digest = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()
        return spec, {"source": "built-in", "path": None, "missing_file": str(path), "sha256": digest}
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable expectation suite ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise ConfigError(f"{path}: an expectation suite needs a list under 'expectations'")
    return spec, {"source": "file", "path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def _gx_suite(gx: Any, spec: dict[str, Any], origin: dict[str, Any]) -> Any:
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    where = origin.get("path") or "built-in suite"
    suite = gx.ExpectationSuite(name=str(spec.get("name") or "nlpops"))
    for i, item in enumerate(spec["expectations"]):
        try:
            config = ExpectationConfiguration(
                type=item["type"], kwargs=dict(item.get("kwargs") or {}), meta=dict(item.get("meta") or {})
            )
            suite.add_expectation(config.to_domain_obj())
        except Exception as exc:  # GE raises many types for a bad configuration
            text = str(exc).strip().splitlines()
            raise ConfigError(
                f"{where}: expectation #{i + 1} ({item.get('type') if isinstance(item, dict) else repr(item)}) "
                f"is not valid: {text[0] if text else type(exc).__name__}"
            ) from None
    return suite


# ----------------------------------------------------------------------------------------------- GE plumbing


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


def _run_suite(context: Any, suite: Any, frame: pd.DataFrame, name: str, parameters: dict[str, Any]) -> Any:
    source = context.data_sources.add_pandas(name)
    asset = source.add_dataframe_asset(name)
    batch = asset.add_batch_definition_whole_dataframe("whole").get_batch(batch_parameters={"dataframe": frame})
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": MAX_EXAMPLE_ROWS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = batch.validate(suite, result_format=result_format, expectation_parameters=parameters)
    if not name.endswith("-labels"):  # the per-class summary batch is not data rows
        from pipelines import progress

        progress.batch_done(len(frame))  # the validate stage's "rows checked"
    return result


def _write_data_docs(results: list[tuple[str, Any]], docs_dir: Path) -> Path:
    """GE's validation-result pages (the HTML Data Docs show) plus an index; returns index.html."""
    from great_expectations.render.renderer import ValidationResultsPageRenderer
    from great_expectations.render.view import DefaultJinjaPageView

    if docs_dir.exists():
        shutil.rmtree(docs_dir)
    docs_dir.mkdir(parents=True)
    renderer, view = ValidationResultsPageRenderer(), DefaultJinjaPageView()
    links = []
    for name, result in results:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            html = view.render(renderer.render(result))
        (docs_dir / f"{name}.html").write_text(html, encoding="utf-8")
        status = "passed" if result.success else "FAILED"
        links.append(f'<li><a href="{name}.html">{name}</a>: {status}</li>')
    index = docs_dir / "index.html"
    index.write_text(
        "<!doctype html><html><head><meta charset='utf-8'><title>nlpops data validation</title></head><body>"
        "<h1>nlpops data validation (Great Expectations)</h1><ul>" + "".join(links) + "</ul></body></html>\n",
        encoding="utf-8",
    )
    return index


# ----------------------------------------------------------------------------------------------- the batches


def _blank_to_null(series: pd.Series) -> pd.Series:
    """Empty / whitespace-only strings become null, so 'not null' also means 'not empty'."""
    values = series.astype("str")
    return values.where(values.str.strip().fillna("") != "", None)


def label_values(series: pd.Series) -> pd.Series:
    """Labels stripped; empty strings and spelled-out nulls ('nan', 'null', 'None') become null."""
    values = series.astype("str").str.strip()
    return values.where(~(values.isin(NULL_LABELS) | (values.fillna("") == "")), None)


def _token_counts(series: pd.Series) -> pd.Series:
    import pyarrow as pa
    import pyarrow.compute as pc

    arrow = pa.chunked_array(pa.array(series.to_numpy(dtype=object, na_value=None), type=pa.string()))
    counts = pc.list_value_length(pc.utf8_split_whitespace(arrow))
    return pd.Series(counts.to_numpy(zero_copy_only=False), index=series.index, dtype="float64")


def rows_batch(frame: pd.DataFrame, text_cols: list[str]) -> pd.DataFrame:
    """The frame GE validates row by row: blanks as nulls, labels normalised, token counts and pair keys added."""
    batch = pd.DataFrame(index=pd.RangeIndex(len(frame)))
    for col in text_cols:
        batch[col] = _blank_to_null(frame[col]).to_numpy()
        batch[f"{col}_tokens"] = _token_counts(batch[col]).to_numpy()
    batch["label"] = label_values(frame["label"]).to_numpy()
    batch["row"] = frame["row"].to_numpy()
    if "slice" in frame.columns:
        batch["slice"] = frame["slice"].to_numpy()
    if "text_pair" in text_cols:
        batch["pair_key"] = batch["text"].fillna("") + "\x1f" + batch["text_pair"].fillna("")
    return batch


def _label_id(label: str) -> float:
    try:
        return float(int(label))
    except ValueError:
        return float("nan")


def labels_batch(labels: pd.Series, expected: list[str]) -> pd.DataFrame:
    """One row per class: present labels plus the expected ones (which may have 0 rows in this file)."""
    present = labels.dropna().value_counts(sort=False)
    names = list(dict.fromkeys([*expected, *sorted(present.index)]))
    counts = np.asarray([int(present.get(n, 0)) for n in names], dtype=np.int64)
    total = max(int(counts.sum()), 1)
    return pd.DataFrame(
        {
            "label": pd.Series(names, dtype="str"),
            "rows": counts,
            "share": counts / total,
            "label_id": [_label_id(n) for n in names],
            "kind": ["integer" if not np.isnan(_label_id(n)) else "name" for n in names],
        }
    )


def suite_parameters(params: Params, role: str, label_set: list[str]) -> dict[str, Any]:
    cfg = params.validate_
    return {
        "text_mostly": round(1.0 - cfg.max_null_share, 10),
        "label_mostly": round(1.0 - cfg.max_null_share, 10),
        "min_text_chars": cfg.min_text_chars,
        "max_text_chars": cfg.max_text_chars,
        "min_text_tokens": cfg.min_text_tokens,
        "max_text_tokens": cfg.max_text_tokens,
        "numeric_mostly": round(1.0 - cfg.max_numeric_text_share, 10),
        "min_unique_share": round(1.0 - cfg.max_duplicate_share, 10),
        "label_set": label_set,
        "min_rows": cfg.min_rows if role == "train" else 1,
        "min_classes": 2 if role == "train" else 1,
        "min_class_rows": cfg.min_rows_per_class if role == "train" else 1,
        "min_class_share": cfg.min_class_share if role == "train" else 0.0,
    }


# --------------------------------------------------------------------------------------------------- messages


def _n(count: int, noun: str = "row") -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _rows_text(rows: list[int]) -> str:
    return ("row " if len(rows) == 1 else "rows ") + ", ".join(str(r) for r in rows)


def _failed_classes(result: dict[str, Any], stats: pd.DataFrame, column: str) -> list[str]:
    indexes = result.get("partial_unexpected_index_list") or []
    return [str(stats["label"].iloc[i]) for i in indexes if isinstance(i, (int, np.integer)) and 0 <= i < len(stats)]


def _first_failed_class(result: dict[str, Any], stats: pd.DataFrame, column: str) -> tuple[str, float, str]:
    """The first class a per-class expectation failed on, its value in `column`, and '(+N more classes)'."""
    failed = _failed_classes(result, stats, column)
    count = int(result.get("unexpected_count") or 0)
    more = f" (+{count - 1} more classes)" if count > 1 else ""
    if not failed:
        return "?", 0.0, more
    return failed[0], float(stats.loc[stats["label"] == failed[0], column].iloc[0]), more


def _describe(
    check: str, result: dict[str, Any], params: Params, role: str, n_rows: int, stats: pd.DataFrame, main_path: str
) -> str:
    cfg = params.validate_
    count = int(result.get("unexpected_count") or 0)
    col = check.removesuffix("_not_numeric")
    if check.endswith("_present"):
        return "column present" if result.get("success", True) else "column missing"
    if check.endswith("_not_empty"):
        text = f"{_n(count)} empty or null"
        if cfg.max_null_share > 0 and n_rows:
            text += f" ({_pct(count / n_rows)} > allowed validate.max_null_share={_pct(cfg.max_null_share)})"
        return text
    if check.endswith("_length_chars"):
        return f"{_n(count)} shorter than {cfg.min_text_chars} or longer than {cfg.max_text_chars} characters"
    if check.endswith("_length_tokens"):
        upper = f" or more than {cfg.max_text_tokens}" if cfg.max_text_tokens else ""
        return f"{_n(count)} with fewer than {cfg.min_text_tokens}{upper} whitespace-separated tokens"
    if check.endswith("_not_numeric"):
        return (
            f"{_n(count)} ({_pct(count / max(n_rows, 1))}) hold only a number, more than "
            f"validate.max_numeric_text_share={_pct(cfg.max_numeric_text_share)}; is data.{col}_column "
            "really the text?"
        )
    if check == "duplicate_share":
        unique = float(result.get("observed_value") or 0.0)
        return (
            f"{_pct(1 - unique)} of rows repeat an earlier text, more than "
            f"validate.max_duplicate_share={_pct(cfg.max_duplicate_share)}"
        )
    if check == "label_in_set":
        values = list(dict.fromkeys(str(v) for v in result.get("partial_unexpected_list") or []))[:3]
        shown = ", ".join(repr(v) for v in values)
        allowed = f"data.labels {list(params.data.labels)}" if params.data.labels else f"the labels of {main_path}"
        return f"{_n(count)} with a label not in {allowed}" + (f" (e.g. {shown})" if shown else "")
    if check == "min_rows":
        observed = int(result.get("observed_value", n_rows) or 0)
        return f"{_n(observed)}, fewer than validate.min_rows={cfg.min_rows}"
    if check == "at_least_two_labels":
        present = stats.loc[stats["rows"] > 0, "label"].tolist()
        shown = ", ".join(repr(c) for c in present[:5])
        return f"{len(present)} distinct labels ({shown}); a classifier needs at least 2"
    if check == "class_min_rows":
        first, rows, more = _first_failed_class(result, stats, "rows")
        have = int(rows)
        if role != "train":
            return (
                f"class {first!r} has no rows in this {role} file{more}; every class of {main_path} must appear in "
                "every split"
            )
        return f"class {first!r} has {_n(have)}, fewer than validate.min_rows_per_class={cfg.min_rows_per_class}{more}"
    if check == "class_min_share":
        first, share, more = _first_failed_class(result, stats, "share")
        floor = _pct(cfg.min_class_share)
        return f"class {first!r} is {_pct(share)} of the rows, less than validate.min_class_share={floor}{more}"
    if check == "one_label_type":
        ids = stats.loc[(stats["kind"] == "integer") & (stats["rows"] > 0), "label"].tolist()[:3]
        names = stats.loc[(stats["kind"] == "name") & (stats["rows"] > 0), "label"].tolist()[:3]
        return (
            f"labels mix numeric ids ({', '.join(repr(x) for x in ids)}) and names "
            f"({', '.join(repr(x) for x in names)}); use one kind (and data.labels to name ids)"
        )
    if check == "label_ids_non_negative":
        failed = _failed_classes(result, stats, "label_id")
        shown = ", ".join(repr(x) for x in failed[:3])
        return f"negative label ids ({shown}); -1 usually marks unlabelled rows (e.g. GLUE test files)"
    seen = result.get("observed_value")
    if seen is not None and not count:
        return f"observed {seen!r}"
    values = list(dict.fromkeys(str(v)[:40] for v in result.get("partial_unexpected_list") or []))[:3]
    return f"{_n(count)} unexpected" + (f" (e.g. {', '.join(repr(v) for v in values)})" if values else "")


_LABEL_CHECK_ROWS = {"class_min_rows", "class_min_share", "label_ids_non_negative"}


def _in_suite_order(results: list[Any], spec: dict[str, Any]) -> list[Any]:
    """GE returns results grouped its own way; report them (and pick the first failure) in the suite's order."""

    def key(item: dict[str, Any] | Any) -> tuple[str, str, str]:
        if isinstance(item, dict):
            kind, kwargs, meta = item.get("type"), item.get("kwargs") or {}, item.get("meta") or {}
        else:
            config = item.expectation_config
            kind, kwargs, meta = config.type, config.kwargs, config.meta or {}
        return str(kind), str(meta.get("check")), str(kwargs.get("column"))

    order: dict[tuple[str, str, str], int] = {}
    for i, item in enumerate(spec["expectations"]):
        order.setdefault(key(item), i)
    return sorted(results, key=lambda r: order.get(key(r), len(order)))


def _checks(
    outcome: Any,
    kind: str,
    batch: pd.DataFrame,
    source_rows: np.ndarray,
    labels: pd.Series,
    params: Params,
    role: str,
    stats: pd.DataFrame,
    main_path: str,
    spec: dict[str, Any],
) -> list[dict[str, Any]]:
    checks = []
    for res in _in_suite_order(outcome.results, spec):
        config = res.expectation_config
        check = str((config.meta or {}).get("check") or config.type)
        result = dict(res.result or {})
        result["success"] = bool(res.success)
        column = config.kwargs.get("column")
        indexes = [
            int(i) for i in result.get("partial_unexpected_index_list") or [] if isinstance(i, (int, np.integer))
        ]
        if kind == "rows":
            examples = [int(source_rows[i]) for i in indexes[:MAX_EXAMPLE_ROWS] if 0 <= i < len(source_rows)]
            if column in ("text_tokens", "text_pair_tokens"):
                column = column.removesuffix("_tokens")
            if column == "pair_key":
                column = "text, text_pair"
        else:
            column = "label"
            examples = []
            failed = _failed_classes(result, stats, "") if check in _LABEL_CHECK_ROWS else []
            if failed:
                examples = [int(r) for r in source_rows[(labels == failed[0]).to_numpy()][:MAX_EXAMPLE_ROWS]]
        if config.type == "expect_table_row_count_to_be_between" and kind == "rows":
            column = None
        info = res.exception_info or {}
        if info.get("raised_exception"):
            lines = str(info.get("exception_message") or "error").strip().splitlines() or ["error"]
            details = f"expectation raised an error: {lines[0]}"
        else:
            details = _describe(check, result, params, role, len(batch), stats, main_path)
        checks.append(
            {
                "check": check,
                "expectation": config.type,
                "suite": kind,
                "column": column,
                "success": bool(res.success),
                "unexpected_count": int(result.get("unexpected_count") or 0),
                "observed_value": _jsonable(result.get("observed_value")),
                "example_rows": examples,
                "details": details,
            }
        )
    return checks


def _jsonable(value: Any) -> Any:
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _message(path: str, check: dict[str, Any]) -> str:
    where = f"column '{check['column']}': " if check["column"] else ""
    rows = f" ({_rows_text(check['example_rows'])})" if check["example_rows"] else ""
    return f"{path}: {where}{check['details']}{rows} [{check['check']}: {check['expectation']}]"


# ------------------------------------------------------------------------------------------------- the stage


def read_task_suite(path: Path, build: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """A task's stored expectation suite at `path` (or `build()`, the built-in one, when the file is absent) and
    where it came from. Shared by the task types that keep one suite file (token classification, QA, seq2seq)."""
    from pipelines.schema import stable_hash

    if not path.is_file():
        spec = build()
        return spec, {"source": "built-in", "path": None, "missing_file": str(path), "sha256": stable_hash(spec)}
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable expectation suite ({exc})") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("expectations"), list):
        raise ConfigError(f"{path}: an expectation suite needs a list under 'expectations'")
    return spec, {"source": "file", "path": str(path), "sha256": file_digest(path)}


def write_report_or_raise(report_path: Path, report: dict[str, Any], unit: str) -> None:
    """Write a task's validation report (JSON); when a check failed, raise DataValidationError naming the first
    failing file and check, how many more `unit`s (rows, sentences, questions) it caught and how many more checks
    failed. Shared by the task types whose checks are listed per file under report["files"][i]["checks"]."""
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    if report["success"]:
        return
    failures = [(f["path"], c) for f in report["files"] for c in f["checks"] if not c["success"]]
    path, first = failures[0]
    more = first["unexpected_count"] - 1
    message = f"{path}: {first['details']} [{first['check']}: {first['expectation']}]"
    if more > 0:
        message += f" (+{more} more {unit})"
    if len(failures) > 1:
        message += f" (+{len(failures) - 1} more failed checks, see {report_path})"
    raise DataValidationError(message, report_path=str(report_path))


def validate_data(params: Params, report_path: Path, docs_dir: Path | None = None) -> dict[str, Any]:
    """Run the stored suites on the main file and any user-given validation/test files; write report + Data Docs."""
    report_path = Path(report_path)
    docs_dir = Path(docs_dir) if docs_dir else report_path.parent / "data_docs"
    data = params.data
    text_cols = ["text", "text_pair"] if data.text_pair_column else ["text"]
    sources = [
        (r, p) for r, p in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)) if p
    ]
    frames = [(role, str(path), read_table(path, data)) for role, path in sources]  # DataError propagates
    specs = {kind: load_suite_spec(params, kind) for kind in SUITE_KINDS}

    gx = _import_gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = _quiet_context(gx)
    suites = {kind: _gx_suite(gx, spec, origin) for kind, (spec, origin) in specs.items()}

    main_path = str(data.path)
    main_labels = sorted(set(label_values(frames[0][2]["label"]).dropna()))
    file_reports: list[dict[str, Any]] = []
    docs: list[tuple[str, Any]] = []
    from pipelines.sharded import frame_map  # row-wise: on shards (Dask) when the input is large

    for role, path, frame in frames:
        batch = frame_map(params, rows_batch, frame, text_cols, what="validate", renumber=True)
        labels = batch["label"]
        if data.labels:
            label_set = list(data.labels)
        else:
            label_set = main_labels if role != "train" else sorted(set(labels.dropna()))
        expected = (
            list(data.labels or []) if role == "train" else list(dict.fromkeys([*(data.labels or []), *main_labels]))
        )
        stats = labels_batch(labels, expected)
        parameters = suite_parameters(params, role, label_set)
        source_rows = batch["row"].to_numpy()
        checks: list[dict[str, Any]] = []
        for kind, frame_for_kind in (("rows", batch), ("labels", stats)):
            outcome = _run_suite(context, suites[kind], frame_for_kind, f"{role}-{kind}", parameters)
            docs.append((f"{role}-{kind}", outcome))
            checks += _checks(outcome, kind, batch, source_rows, labels, params, role, stats, main_path, specs[kind][0])
        file_reports.append(
            {
                "path": path,
                "role": role,
                "sha256": file_digest(path),
                "rows": len(frame),
                "encoding": frame.attrs.get("encoding"),
                "success": all(c["success"] for c in checks),
                "class_counts": {str(k): int(v) for k, v in zip(stats["label"], stats["rows"], strict=True)},
                "checks": checks,
            }
        )

    success = all(f["success"] for f in file_reports)
    index = _write_data_docs(docs, docs_dir)
    report = {
        "success": success,
        "suites": {kind: {"name": spec.get("name"), **origin} for kind, (spec, origin) in specs.items()},
        "engine": "great_expectations (pandas), every expectation on every row; per-class checks on a per-class "
        "summary batch",
        "great_expectations_version": gx.__version__,
        "data_docs": str(index),
        "files": file_reports,
    }
    report_path.parent.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")

    if not success:
        failures = [(f["path"], c) for f in file_reports for c in f["checks"] if not c["success"]]
        path, first = failures[0]
        message = _message(path, first)
        if len(failures) > 1:
            message += f" (+{len(failures) - 1} more failed checks, see {report_path} and {index})"
        raise DataValidationError(message, report_path=str(report_path))
    return {
        "success": True,
        "rows": sum(f["rows"] for f in file_reports),
        "files": [f["path"] for f in file_reports],
        "report": str(report_path),
        "data_docs": str(index),
        "suites": {kind: origin.get("path") or "built-in" for kind, (_, origin) in specs.items()},
    }


if __name__ == "__main__":  # python -m pipelines.data.validate --write-suites expectations
    import sys

    if len(sys.argv) != 3 or sys.argv[1] != "--write-suites":
        sys.exit("usage: python -m pipelines.data.validate --write-suites DIR")
    for written in write_suites(Path(sys.argv[2])):
        print(written)
