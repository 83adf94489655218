"""Clean stage: normalise text, quarantine unusable rows, drop duplicates and leakage, map labels to ids, split.

Outputs (in `out_dir`): train/validation/test.parquet (text, [text_pair], label int64, [slice]), label_map.json,
quarantine.parquet (source, role, row, reason, values) and summary.json. Same input + same params -> byte-identical
outputs.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import re
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import Params
from pipelines.data.load import read_table
from pipelines.data.validate import label_values
from pipelines.hashing import file_digest
from pipelines.paths import SPLITS
from pipelines.errors import DataError, DataValidationError

QUARANTINE = "quarantine.parquet"

# Backslash escapes (AG News): "\$" -> "$"; a run of 2+ backslashes (title\\body separator) -> space.
_BACKSLASH_RUN = re.compile(r"\\{2,}")
_BACKSLASH_ESCAPE = re.compile(r"""\\([$&#%_{}"'*])""")
# HTML entities whose '&' was lost (AG News: "It #39;s", " quot;", " amp;").
_BROKEN_CONTRACTION = re.compile(r"(?<=\w) #39;(?=(?:s|t|m|d|ll|re|ve)\b)")
_BROKEN_NUMERIC = re.compile(r"(?<!&)(#(?:\d{2,5}|x[0-9a-fA-F]{2,4});)")
_BROKEN_NAMED = re.compile(r"(?<![&\w;])((?:quot|amp|lt|gt|nbsp|apos);)")
_ENTITY = re.compile(r"&(?:#\d+|#x[0-9a-fA-F]+|[A-Za-z][A-Za-z0-9]*);")
# HTML tags (known tag names only, so "a <3 b" or "x<y" survive); block tags become a space.
_BLOCK_TAGS = "br|p|div|li|ul|ol|tr|td|th|table|h[1-6]|hr|blockquote|pre|dd|dt|dl|body|html|head|title"
_INLINE_TAGS = "a|b|i|u|s|em|strong|font|span|img|sub|sup|small|big|strike|tt|q|cite|code|center|abbr|iframe|meta|link"
_BLOCK_TAG = re.compile(rf"<\s*/?\s*(?:{_BLOCK_TAGS})\b(?:\s[^<>]*)?/?\s*>", re.IGNORECASE)
_INLINE_TAG = re.compile(rf"<\s*/?\s*(?:{_INLINE_TAGS})\b(?:\s[^<>]*)?/?\s*>", re.IGNORECASE)
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)
# Control characters that are not whitespace, plus invisible zero-width / soft-hyphen / BOM characters.
_CONTROL = re.compile("[\x00-\x08\x0e-\x1f\x7f-\x84\x86-\x9f\u00ad\u200b\u2060\ufeff]")
_SPACE = re.compile(r"\s+")


def clean_text(s: str, unicode_form: str = "NFC") -> str:
    """Unicode-normalise, unescape HTML (also '&'-less '#39;'), drop tags and control chars, collapse spaces."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return ""
    s = str(s)
    if "\\" in s:
        s = _BACKSLASH_RUN.sub(" ", s)
        s = _BACKSLASH_ESCAPE.sub(r"\1", s)
    if ";" in s:
        s = _BROKEN_CONTRACTION.sub("'", s)
        s = _BROKEN_NUMERIC.sub(r"&\1", s)
        s = _BROKEN_NAMED.sub(r"&\1", s)
        for _ in range(2):  # twice: double-escaped text ("&amp;quot;") is common in scraped data
            if not _ENTITY.search(s):
                break
            s = html.unescape(s)
    if "<" in s:
        s = _COMMENT.sub(" ", s)
        s = _BLOCK_TAG.sub(" ", s)
        s = _INLINE_TAG.sub("", s)
    s = unicodedata.normalize(unicode_form, s)  # type: ignore[arg-type]
    s = _CONTROL.sub("", s)
    return _SPACE.sub(" ", s).strip()


# Values made only of printable ASCII and plain whitespace, with none of '&', ';', '<', '\\', need nothing but
# whitespace collapsing: done for the whole column at once by Arrow's regex kernels. The rest go through
# clean_text, each distinct value once.
_NEEDS_FULL_CLEAN = r"[^\t\n\r\f\x20-\x7e]|[&;<\\]"


def _arrow(values: pd.Series) -> Any:
    """The values as an Arrow string array (no copy for pandas' Arrow-backed str dtype), nulls as ""."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return pc.fill_null(pa.array(values.astype("str")), "")


def _collapse_spaces(arr: Any) -> Any:
    import pyarrow.compute as pc

    # Same result as replacing r"\s+", far fewer matches (single spaces are left alone).
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(arr, r"\s\s+|[\t\n\r\f]", " "))


def clean_series(values: pd.Series, unicode_form: str = "NFC") -> pd.Series:
    """clean_text over a Series (nulls -> ""), vectorised (Arrow kernels) where the text is plain ASCII."""
    import pyarrow.compute as pc

    arr = _arrow(values.astype("str"))
    out = _collapse_spaces(arr).to_pandas()
    out.index = values.index
    fancy = pc.match_substring_regex(arr, _NEEDS_FULL_CLEAN).to_numpy(zero_copy_only=False)
    if fancy.any():
        subset = values.astype("str").fillna("")[fancy].to_numpy(dtype=object)
        cleaned = {u: clean_text(u, unicode_form) for u in pd.unique(subset)}
        out = out.copy()
        out[fancy] = [cleaned[v] for v in subset]
    return out.astype("str")


def normalised_key(values: pd.Series) -> pd.Series:
    """What makes two cleaned texts 'the same': case, punctuation and spacing ignored."""
    import pyarrow.compute as pc

    key = pc.replace_substring_regex(pc.utf8_lower(_arrow(values)), r"[^\p{L}\p{N}\s]+", " ")
    out = _collapse_spaces(key).to_pandas()
    out.index = values.index
    return out


# ------------------------------------------------------------------------------------------------ clean_data


def _is_int_label(label: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", label) is not None


def _sorted_labels(labels: set[str]) -> list[str]:
    if labels and all(_is_int_label(x) for x in labels):
        return sorted(labels, key=lambda x: (int(x), x))
    return sorted(labels)


def _rows_text(rows: list[int], limit: int = 5) -> str:
    shown = ", ".join(str(r) for r in rows[:limit])
    return f"{'row' if len(rows) == 1 else 'rows'} {shown}{', ...' if len(rows) > limit else ''}"


def _target_sizes(n: int, fractions: dict[str, float]) -> dict[str, int]:
    return {k: max(1, math.floor(n * f + 0.5)) for k, f in fractions.items()}


def _split_indices(
    labels: np.ndarray, fractions: dict[str, float], rng: np.random.Generator, path: str, names: list[str]
) -> tuple[dict[str, np.ndarray], bool, str | None]:
    """Split positions 0..n-1 into the named parts + 'train'; stratified by label where every class allows it."""
    n = len(labels)
    targets = _target_sizes(n, fractions)
    if n - sum(targets.values()) < 1:
        need = sum(targets.values()) + 1
        raise DataError(
            f"{path}: only {n} rows left after cleaning; need at least {need} for non-empty "
            f"{'/'.join(['train', *targets])} splits"
        )
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    note = None
    alloc: dict[str, np.ndarray] = {}
    stratify = True
    if counts.min() < 2:
        smallest = int(counts.argmin())
        note = f"plain shuffled split: class {names[int(classes[smallest])]!r} has only {int(counts[smallest])} row"
        stratify = False
    else:
        cap = counts - 1  # every class keeps at least one training row
        tie = rng.permutation(len(classes))
        for name, target in targets.items():
            share = counts * target / n
            base = np.minimum(np.floor(share).astype(np.int64), cap)
            left = target - int(base.sum())
            order = np.lexsort((tie, -(share - base)))
            while left > 0:
                progressed = False
                for i in order:
                    if left and base[i] < cap[i]:
                        base[i] += 1
                        left -= 1
                        progressed = True
                if not progressed:
                    break
            if left > 0:
                note = "plain shuffled split: classes too small to stratify"
                stratify = False
                break
            alloc[name] = base
            cap = cap - base
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ["train", *targets]}
    if stratify:
        for ci in range(len(classes)):
            members = rng.permutation(np.flatnonzero(inverse == ci))
            start = 0
            for name in targets:
                k = int(alloc[name][ci])
                parts[name].append(members[start : start + k])
                start += k
            parts["train"].append(members[start:])
    else:
        perm = rng.permutation(n)
        start = 0
        for name, k in targets.items():
            parts[name].append(perm[start : start + k])
            start += k
        parts["train"].append(perm[start:])
    result = {k: np.sort(np.concatenate(v)) for k, v in parts.items()}
    return result, stratify, note



def _write_parquet(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = []
    for c in columns:
        if c == "row" or (c == "label" and frame[c].dtype.kind in "iu"):
            arrays.append(pa.array(frame[c].to_numpy(dtype=np.int64), type=pa.int64()))
        else:
            arrays.append(pa.array(frame[c].astype("str")).cast(pa.string()))
    pq.write_table(pa.Table.from_arrays(arrays, names=columns), path)


def _prepare(frame: pd.DataFrame, text_cols: list[str], params: Params) -> pd.DataFrame:
    """Cleaned texts, normalised labels, the near-duplicate key, and the source row of each record."""
    out = pd.DataFrame({c: clean_series(frame[c], params.clean.unicode_form) for c in text_cols})
    out["label"] = label_values(frame["label"]).fillna("").astype("str")
    if "slice" in frame.columns:
        out["slice"] = frame["slice"].astype("str").str.strip().fillna("").replace("", "(missing)")
    key = normalised_key(out[text_cols[0]])
    if len(text_cols) > 1:
        key = key + "\x1f" + normalised_key(out[text_cols[1]])
    exact = out[text_cols[0]] if len(text_cols) == 1 else out[text_cols[0]] + "\x1f" + out[text_cols[1]]
    out["key"] = key.where(key.str.strip("\x1f") != "", exact)  # punctuation-only texts: compare exactly
    out["row"] = frame["row"].to_numpy()
    return out


def _quarantine_reasons(
    frame: pd.DataFrame, text_cols: list[str], allowed: list[str] | None, unknown_reason: str
) -> np.ndarray:
    """Per row: why it cannot be used (first reason wins), or None."""
    reasons = np.full(len(frame), None, dtype=object)

    def mark(mask: np.ndarray, reason: str) -> None:
        reasons[mask & (reasons == None)] = reason  # noqa: E711 (element-wise on an object array)

    empty = np.zeros(len(frame), dtype=bool)
    for col in text_cols:
        empty |= (frame[col] == "").to_numpy(dtype=bool)
    mark(empty, "empty_text")
    mark((frame["label"] == "").to_numpy(dtype=bool), "missing_label")
    if allowed is not None:
        mark(~frame["label"].isin(allowed).to_numpy(dtype=bool), unknown_reason)
    usable = reasons == None  # noqa: E711
    labels_per_key = frame.loc[usable].groupby("key", sort=False)["label"].nunique()
    conflicted = labels_per_key.index[labels_per_key.to_numpy() > 1]
    if len(conflicted):
        mark(frame["key"].isin(conflicted).to_numpy(dtype=bool), "conflicting_labels")
    return reasons


def data_quality_metrics(summary: dict[str, Any], extra_keys: tuple[str, ...] = ()) -> dict[str, float]:
    """The clean summary's counts as MLflow metrics (clean.*), for every task type: the shared counts, the task's
    own (`extra_keys`, e.g. iob_repaired) and one metric per quarantine reason. Counts absent from a summary are
    left out."""
    keys = (
        "rows_in",
        "rows_out",
        "quarantined",
        "quarantine_share",
        "dropped_duplicates",
        "dropped_near_duplicates",
        "leakage_removed_from_train",
        *extra_keys,
    )
    metrics = {f"clean.{k}": float(summary[k]) for k in keys if k in summary}
    for reason, count in (summary.get("quarantine_reasons") or {}).items():
        metrics[f"clean.quarantined.{reason}"] = float(count)
    return metrics


def clean_data(params: Params, out_dir: Path) -> dict[str, Any]:
    """Clean and split the raw data into out_dir; returns the summary (also written to summary.json).

    Rows that cannot be used go to quarantine.parquet with a `reason`; more than clean.max_quarantine_share of
    them stops the run (DataValidationError) before any split is written.
    """
    data = params.data
    out_dir = Path(out_dir)
    text_cols = ["text", "text_pair"] if data.text_pair_column else ["text"]
    keep_cols = [*text_cols, "label", *(["slice"] if data.slice_column else [])]
    sources = [("train", data.path), ("validation", data.validation_path), ("test", data.test_path)]
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*(out_dir / f"{s}.parquet" for s in SPLITS), out_dir / "label_map.json"]:
        stale.unlink(missing_ok=True)  # a failed clean must not leave the previous run's splits behind

    frames: dict[str, pd.DataFrame] = {}
    inputs: list[dict[str, Any]] = []
    quarantined: list[pd.DataFrame] = []
    train_labels: list[str] | None = None
    for role, path in sources:
        if not path:
            continue
        from pipelines.sharded import frame_map  # row-wise: on shards (Dask) when the input is large

        prepared = frame_map(params, _prepare, read_table(path, data), text_cols, params, what="clean")
        allowed: list[str] | None
        if data.labels:
            allowed, unknown_reason = list(data.labels), "unknown_label"
        elif role != "train":
            allowed, unknown_reason = train_labels, "label_not_in_train"
        else:
            allowed, unknown_reason = None, "unknown_label"
        reasons = _quarantine_reasons(prepared, text_cols, allowed, unknown_reason)
        bad = reasons != None  # noqa: E711
        if bad.any():
            q = prepared.loc[bad, ["row", *keep_cols]].copy()
            q.insert(0, "reason", reasons[bad])
            q.insert(0, "role", role)
            q.insert(0, "source", str(path))
            quarantined.append(q)
        kept = prepared.loc[~bad]
        counts = {"rows_in": len(prepared)}
        for reason in ("empty_text", "missing_label", "unknown_label", "label_not_in_train", "conflicting_labels"):
            counts[f"quarantined_{reason}"] = int((reasons == reason).sum())
        counts["dropped_duplicates"] = counts["dropped_near_duplicates"] = 0
        if params.clean.drop_duplicates:
            exact = kept.duplicated(subset=[*text_cols, "label"], keep="first").to_numpy()
            near = kept.duplicated(subset=["key", "label"], keep="first").to_numpy() & ~exact
            counts["dropped_duplicates"], counts["dropped_near_duplicates"] = int(exact.sum()), int(near.sum())
            kept = kept.loc[~(exact | near)]
        frames[role] = kept.reset_index(drop=True)
        inputs.append({"path": str(path), "role": role, **counts, "rows_kept": len(kept)})
        if role == "train":
            train_labels = sorted(kept["label"].unique().tolist())

    # Leakage: a text in the validation or test file must not also be trained on.
    leakage = 0
    held_out = [frames[r]["key"] for r in ("validation", "test") if r in frames]
    if held_out:
        seen = pd.concat(held_out, ignore_index=True).unique()
        leaked = frames["train"]["key"].isin(seen).to_numpy()
        leakage = int(leaked.sum())
        frames["train"] = frames["train"].loc[~leaked].reset_index(drop=True)
    overlap_val_test = 0
    if "validation" in frames and "test" in frames:
        overlap_val_test = int(frames["validation"]["key"].isin(frames["test"]["key"].unique()).sum())

    rows_in = sum(i["rows_in"] for i in inputs)
    quarantine = (
        pd.concat(quarantined, ignore_index=True)
        if quarantined
        else pd.DataFrame({c: pd.Series(dtype="str") for c in ["source", "role", "reason", *keep_cols]}).assign(
            row=pd.Series(dtype="int64")
        )
    )
    quarantine = quarantine[["source", "role", "row", "reason", *keep_cols]]
    quarantine_path = out_dir / QUARANTINE
    _write_parquet(quarantine, list(quarantine.columns), quarantine_path)
    reason_counts = {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()}
    share = len(quarantine) / max(rows_in, 1)
    base: dict[str, Any] = {
        "rows_in": rows_in,
        "quarantined": len(quarantine),
        "quarantine_share": round(share, 6),
        "quarantine_reasons": reason_counts,
        "quarantine_file": str(quarantine_path),
        "dropped_empty": reason_counts.get("empty_text", 0),
        "dropped_missing_label": reason_counts.get("missing_label", 0),
        "dropped_conflicting_labels": reason_counts.get("conflicting_labels", 0),
        "dropped_duplicates": sum(i["dropped_duplicates"] for i in inputs),
        "dropped_near_duplicates": sum(i["dropped_near_duplicates"] for i in inputs),
        "leakage_removed_from_train": leakage,
        "overlap_validation_test": overlap_val_test,
    }
    limit = params.clean.max_quarantine_share
    emptied = [i for i in inputs if not len(frames[i["role"]])]
    if share > limit or emptied:
        worst = (
            emptied[0] if emptied else max(inputs, key=lambda i: sum(i[k] for k in i if k.startswith("quarantined_")))
        )
        shown = ", ".join(f"{n} {r}" for r, n in sorted(reason_counts.items(), key=lambda x: -x[1]))
        examples = quarantine.loc[quarantine["source"] == worst["path"], "row"].tolist()
        if share > limit:
            what = f"more than clean.max_quarantine_share={100 * limit:.1f}%"
        else:
            what = f"no usable {worst['role']} rows left"
        message = (
            f"{worst['path']}: {len(quarantine)} of {rows_in} rows ({100 * share:.1f}%) quarantined, {what} "
            f"({shown}; {_rows_text(examples)}); see {quarantine_path}"
        )
        failed = {**base, "failed": message, "inputs": inputs}
        (out_dir / "summary.json").write_text(json.dumps(failed, indent=2, ensure_ascii=False) + "\n")
        raise DataValidationError(message, report_path=str(quarantine_path))

    label_names = list(data.labels) if data.labels else _sorted_labels(set(frames["train"]["label"].unique().tolist()))
    label2id = {name: i for i, name in enumerate(label_names)}

    main = frames["train"]
    missing = {
        k: f
        for k, f in (("validation", params.clean.validation_size), ("test", params.clean.test_size))
        if k not in frames
    }
    stratified, note = True, None
    splits: dict[str, pd.DataFrame] = {k: v for k, v in frames.items() if k != "train"}
    if missing:
        rng = np.random.default_rng(params.clean.seed)
        ids = pd.Categorical(main["label"], categories=label_names).codes.astype(np.int64)
        parts, stratified, note = _split_indices(ids, missing, rng, data.path, label_names)
        for name, idx in parts.items():
            splits[name] = main.iloc[idx]
    else:
        splits["train"] = main
        stratified, note = False, "validation and test splits read from data.validation_path / data.test_path"

    sizes: dict[str, int] = {}
    class_counts: dict[str, dict[str, int]] = {}
    digests: dict[str, str] = {}
    present = set(main["label"].unique().tolist())
    for name in SPLITS:
        part = splits[name]
        if part.empty:
            raise DataError(f"{data.path}: the {name} split is empty after cleaning")
        vc = part["label"].value_counts()
        absent = [label for label in label_names if label in present and not vc.get(label, 0)]
        if absent:
            have = int((main["label"] == absent[0]).sum())
            raise DataError(
                f"{data.path}: class {absent[0]!r} has no rows in the {name} split ({have} usable rows in all); "
                "every class must appear in every split: add rows, or raise validate.min_rows_per_class"
            )
        frame = part[keep_cols].reset_index(drop=True)
        frame["label"] = pd.Categorical(part["label"], categories=label_names).codes.astype(np.int64)
        target = out_dir / f"{name}.parquet"
        _write_parquet(frame, keep_cols, target)
        sizes[name] = len(frame)
        class_counts[name] = {label: int(vc.get(label, 0)) for label in label_names}
        digests[target.name] = file_digest(target)

    label_map = {"id2label": {str(i): n for n, i in label2id.items()}, "label2id": label2id}
    map_path = out_dir / "label_map.json"
    map_path.write_text(json.dumps(label_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    digests[map_path.name] = file_digest(map_path)
    digests[QUARANTINE] = file_digest(quarantine_path)

    summary: dict[str, Any] = {
        **base,
        "rows_out": sum(sizes.values()),
        "splits": sizes,
        "class_counts": class_counts,
        "labels": label_names,
        "stratified": bool(stratified),
        "split_note": note,
        "split_source": {k: ("file" if k in frames else "split") for k in SPLITS},
        "seed": params.clean.seed,
        "inputs": inputs,
        "sha256": digests,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
