"""Validate stage, seq2seq: a stored Great Expectations suite over one row per (source, target) pair.

`expectations/seq2seq.rows.json` (a missing file falls back to `build_suite()`) runs on every row of every data file:
`empty_source` / `empty_target` (blank text; at most validate.max_null_share of the rows), `source_tokens` /
`target_tokens` (whitespace-separated tokens, within validate.min_text_tokens..max_text_tokens; empty rows are left
to the emptiness checks), `is_copy` (the target is the source, case and spacing aside: at most task.max_copy_share
of the rows, else it is copy data or swapped columns), `pair_key` (repeated pairs: at most
validate.max_duplicate_share) and the row count (validate.min_rows for the main file). A failure raises
DataValidationError naming the file, the line, the column and the check; the report lists every check.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.tasks.seq2seq.readers import read_pairs

SUITE = "seq2seq.rows.json"
MAX_EXAMPLES = 5


def _expectation(kind: str, check: str, **kwargs: Any) -> dict[str, Any]:
    return {"type": kind, "kwargs": kwargs, "meta": {"check": check}}


def build_suite() -> dict[str, Any]:
    """The built-in per-pair suite (what expectations/seq2seq.rows.json holds); thresholds are suite parameters."""
    p = lambda name: {"$PARAMETER": name}  # noqa: E731
    expectations = [
        _expectation(
            "expect_column_values_to_be_in_set",
            "no_empty_source",
            column="empty_source",
            value_set=[0],
            mostly=p("text_mostly"),
        ),
        _expectation(
            "expect_column_values_to_be_in_set",
            "no_empty_target",
            column="empty_target",
            value_set=[0],
            mostly=p("text_mostly"),
        ),
        _expectation(
            "expect_column_values_to_be_between",
            "source_length_tokens",
            column="source_tokens",
            min_value=p("min_text_tokens"),
            max_value=p("max_text_tokens"),
        ),
        _expectation(
            "expect_column_values_to_be_between",
            "target_length_tokens",
            column="target_tokens",
            min_value=p("min_text_tokens"),
            max_value=p("max_text_tokens"),
        ),
        _expectation(  # row-level with `mostly` (not a column mean: GE's Data Docs cannot render numpy means)
            "expect_column_values_to_be_in_set",
            "copy_share",
            column="is_copy",
            value_set=[0],
            mostly=p("copy_mostly"),
        ),
        _expectation(
            "expect_column_proportion_of_unique_values_to_be_between",
            "duplicate_share",
            column="pair_key",
            min_value=p("min_unique_share"),
        ),
        _expectation("expect_table_row_count_to_be_between", "min_rows", min_value=p("min_rows")),
    ]
    return {"name": "nlpops-seq2seq-rows", "expectations": expectations, "meta": {"batch": "pairs"}}


def load_suite(expectations_dir: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The stored suite (or the built-in one when the file is absent) and where it came from."""
    from pipelines.data.validate import read_task_suite

    return read_task_suite(Path(expectations_dir) / SUITE, build_suite)


def same_text(a: Any, b: Any) -> bool:
    """Whether two texts are the same, case and spacing aside (a target that copies its source)."""
    return " ".join(str(a).split()).casefold() == " ".join(str(b).split()).casefold()


def _blank(values: pd.Series) -> np.ndarray:
    return values.isna().to_numpy() | (values.astype("str").fillna("").str.strip() == "").to_numpy()


def pair_batch(frame: pd.DataFrame) -> pd.DataFrame:
    """One row per pair: empty_source, empty_target, source_tokens, target_tokens (NaN when empty), is_copy,
    pair_key and row."""
    empty_source, empty_target = _blank(frame["source"]), _blank(frame["target"])
    sources = frame["source"].astype("str").fillna("")
    targets = frame["target"].astype("str").fillna("")
    source_tokens = np.asarray([len(s.split()) for s in sources], dtype=np.float64)
    target_tokens = np.asarray([len(t.split()) for t in targets], dtype=np.float64)
    source_tokens[empty_source] = np.nan
    target_tokens[empty_target] = np.nan
    is_copy = [
        int(not (es or et) and same_text(s, t))
        for s, t, es, et in zip(sources, targets, empty_source, empty_target, strict=True)
    ]
    return pd.DataFrame(
        {
            "empty_source": empty_source.astype(int),
            "empty_target": empty_target.astype(int),
            "source_tokens": source_tokens,
            "target_tokens": target_tokens,
            "is_copy": np.asarray(is_copy, dtype=np.int64),
            "pair_key": (sources + "\x1f" + targets).to_numpy(),
            "row": frame["row"].to_numpy(),
        }
    )


def _pct(share: float) -> str:
    return f"{100 * share:.1f}%"


def _detail(check: str, result: dict[str, Any], batch: pd.DataFrame, params: Any) -> str:
    """One readable sentence for a failed check (the first offending line where rows fail)."""
    cfg, data, options = params.validate_, params.data, params.task
    count = int(result.get("unexpected_count") or 0)
    indexes = sorted(int(i) for i in result.get("partial_unexpected_index_list") or [])
    line = f"line {int(batch['row'].iloc[indexes[0]])}" if indexes else "some rows"
    n = len(batch)
    if check in ("no_empty_source", "no_empty_target"):
        side = "source" if check.endswith("source") else "target"
        column = data.source_column if side == "source" else data.target_column
        allowed = f" ({count} rows, {_pct(count / max(n, 1))} > validate.max_null_share={_pct(cfg.max_null_share)})"
        return f"column {column!r}: {line}: empty {side}" + (allowed if cfg.max_null_share > 0 else "")
    if check in ("source_length_tokens", "target_length_tokens"):
        side = "source" if check.startswith("source") else "target"
        column = data.source_column if side == "source" else data.target_column
        upper = f"..{cfg.max_text_tokens}" if cfg.max_text_tokens else "+"
        found = int(batch[f"{side}_tokens"].iloc[indexes[0]]) if indexes else "?"
        return (
            f"column {column!r}: {line}: the {side} has {found} whitespace-separated tokens, outside "
            f"{cfg.min_text_tokens}{upper} (validate.min_text_tokens / max_text_tokens)"
        )
    if check == "copy_share":
        copies = batch.index[batch["is_copy"] == 1]
        first = f"line {int(batch['row'].iloc[copies[0]])}" if len(copies) else "?"
        share = float(batch["is_copy"].mean()) if n else 0.0
        return (
            f"{len(copies)} of {n} rows ({_pct(share)}) have a target identical to their source (first: {first}), "
            f"more than task.max_copy_share={_pct(options.max_copy_share)}: copy data, or data.source_column and "
            "data.target_column naming the same text?"
        )
    if check == "duplicate_share":
        unique = float(result.get("observed_value") or 0.0)
        return (
            f"{_pct(1 - unique)} of rows repeat an earlier (source, target) pair, more than "
            f"validate.max_duplicate_share={_pct(cfg.max_duplicate_share)}"
        )
    if check == "min_rows":
        return f"{n} rows, fewer than validate.min_rows={cfg.min_rows}"
    return f"{count} rows failed" if count else "check failed"


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
    data, cfg = params.data, params.validate_
    sources = [
        (r, p) for r, p in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)) if p
    ]
    frames = [(role, str(path), read_pairs(path, data)) for role, path in sources]  # DataError propagates
    spec, origin = load_suite(cfg.expectations_dir)
    gx = _import_gx()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        context = _quiet_context(gx)
    suite = _gx_suite(gx, spec, origin)
    file_reports, docs = [], []
    for role, path, frame in frames:
        batch = pair_batch(frame)
        parameters = {
            "text_mostly": round(1.0 - cfg.max_null_share, 10),
            "min_text_tokens": cfg.min_text_tokens,
            "max_text_tokens": cfg.max_text_tokens,
            "copy_mostly": round(1.0 - params.task.max_copy_share, 10),
            "min_unique_share": round(1.0 - cfg.max_duplicate_share, 10),
            "min_rows": cfg.min_rows if role == "train" else 1,
        }
        outcome = _run_suite(context, suite, batch, f"{role}-pairs", parameters)
        docs.append((f"{role}-pairs", outcome))
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
            else:
                details = _detail(check, result, batch, params)
            checks.append(
                {
                    "check": check,
                    "expectation": config.type,
                    "column": config.kwargs.get("column"),
                    "success": bool(res.success),
                    "unexpected_count": int(result.get("unexpected_count") or 0),
                    "observed_value": _jsonable(result.get("observed_value")),
                    "example_lines": [int(batch["row"].iloc[i]) for i in indexes[:MAX_EXAMPLES]],
                    "details": details,
                }
            )
        file_reports.append(
            {
                "path": path,
                "role": role,
                "sha256": file_digest(path),
                "rows": len(frame),
                "encoding": frame.attrs.get("encoding"),
                "copy_share": round(float(batch["is_copy"].mean()) if len(batch) else 0.0, 6),
                "mean_source_tokens": round(float(np.nanmean(batch["source_tokens"])) if len(batch) else 0.0, 2),
                "mean_target_tokens": round(float(np.nanmean(batch["target_tokens"])) if len(batch) else 0.0, 2),
                "success": all(c["success"] for c in checks),
                "checks": checks,
            }
        )
    success = all(f["success"] for f in file_reports)
    index = _write_data_docs(docs, docs_dir)
    report = {
        "success": success,
        "task": "seq2seq",
        "suites": {"pairs": {"name": spec.get("name"), **origin}},
        "engine": "great_expectations (pandas), every expectation on every (source, target) pair",
        "great_expectations_version": gx.__version__,
        "data_docs": str(index),
        "files": file_reports,
    }
    write_report_or_raise(report_path, report, "rows")
    return {
        "success": True,
        "rows": sum(f["rows"] for f in file_reports),
        "copy_share": {f["path"]: f["copy_share"] for f in file_reports},
        "files": [f["path"] for f in file_reports],
        "report": str(report_path),
        "data_docs": str(index),
        "suites": {"pairs": origin.get("path") or "built-in"},
    }


if __name__ == "__main__":  # python -m pipelines.tasks.seq2seq.validation DIR: write the stored suite
    import sys

    if len(sys.argv) != 2:
        sys.exit("usage: python -m pipelines.tasks.seq2seq.validation EXPECTATIONS_DIR")
    target = Path(sys.argv[1]) / SUITE
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(build_suite(), indent=2) + "\n", encoding="utf-8")
    print(target)
