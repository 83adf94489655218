"""Clean stage: normalise text, drop empty / duplicate / conflicting rows, map labels to ids, split.

Outputs (in `out_dir`): train/validation/test.parquet (text, [text_pair], label int64), label_map.json and
summary.json. Same input + same params -> byte-identical outputs.
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
from pipelines.data.load import canonical_columns, read_table
from pipelines.errors import DataError

SPLITS = ("train", "validation", "test")

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


def clean_series(values: pd.Series, unicode_form: str = "NFC") -> pd.Series:
    """clean_text over a Series (nulls -> ""); each distinct value is cleaned once."""
    filled = values.astype(object).where(values.notna(), "")
    uniques = pd.unique(filled.to_numpy())
    cleaned = {u: clean_text(u, unicode_form) for u in uniques}
    return pd.Series([cleaned[v] for v in filled.to_numpy()], index=values.index, dtype="str")


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


def _clean_frame(frame: pd.DataFrame, text_cols: list[str], params: Params) -> tuple[pd.DataFrame, dict[str, int]]:
    """Clean one file's rows; returns the kept rows and what was dropped."""
    cfg = params.clean
    out = frame.copy()
    for col in text_cols:
        out[col] = clean_series(out[col], cfg.unicode_form)
    out["label"] = out["label"].astype(object).where(out["label"].notna(), "").map(lambda v: str(v).strip())
    counts = {"rows_in": len(out)}

    empty = np.zeros(len(out), dtype=bool)
    for col in text_cols:
        empty |= (out[col] == "").to_numpy()
    counts["dropped_empty"] = int(empty.sum())
    out = out[~empty]

    no_label = (out["label"] == "").to_numpy()
    counts["dropped_missing_label"] = int(no_label.sum())
    out = out[~no_label]

    key = [*text_cols, "label"]
    if cfg.drop_duplicates:
        dup = out.duplicated(subset=key, keep="first").to_numpy()
        counts["dropped_duplicates"] = int(dup.sum())
        out = out[~dup]
    else:
        counts["dropped_duplicates"] = 0

    n_labels = out.groupby(text_cols, sort=False)["label"].transform("nunique").to_numpy()
    conflict = n_labels > 1
    counts["dropped_conflicting_labels"] = int(conflict.sum())
    out = out[~conflict]
    counts["rows_out"] = len(out)
    return out.reset_index(drop=True), counts


def _check_labels(frame: pd.DataFrame, allowed: list[str], path: str, what: str) -> None:
    unknown = frame.loc[~frame["label"].isin(allowed), ["label", "row"]]
    if unknown.empty:
        return
    values = list(dict.fromkeys(unknown["label"]))
    first = values[0]
    rows = unknown.loc[unknown["label"] == first, "row"].tolist()
    more = (
        f" (+{len(values) - 1} more unknown labels: {', '.join(repr(v) for v in values[1:4])})"
        if len(values) > 1
        else ""
    )
    raise DataError(f"{path}: label {first!r} is not in {what} {allowed} ({_rows_text(rows)}){more}")


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _write_parquet(frame: pd.DataFrame, text_cols: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = [pa.array(frame[c].tolist(), type=pa.string()) for c in text_cols]
    arrays.append(pa.array(frame["label"].to_numpy(dtype=np.int64), type=pa.int64()))
    table = pa.Table.from_arrays(arrays, names=[*text_cols, "label"])
    pq.write_table(table, path)


def clean_data(params: Params, out_dir: Path) -> dict[str, Any]:
    """Clean and split the raw data into out_dir; returns the summary (also written to summary.json)."""
    data = params.data
    out_dir = Path(out_dir)
    text_cols = [c for c in canonical_columns(data) if c != "label"]
    sources = [("train", data.path), ("validation", data.validation_path), ("test", data.test_path)]
    frames: dict[str, pd.DataFrame] = {}
    inputs: list[dict[str, Any]] = []
    for role, path in sources:
        if not path:
            continue
        raw = read_table(path, data)
        if data.labels:
            labels = raw["label"].astype(object).where(raw["label"].notna(), "").map(lambda v: str(v).strip())
            present = raw.assign(label=labels)
            _check_labels(present[present["label"] != ""], list(data.labels), path, "data.labels")
        cleaned, counts = _clean_frame(raw, text_cols, params)
        if cleaned.empty:
            raise DataError(
                f"{path}: no rows left after cleaning ({counts['rows_in']} rows in: "
                f"{counts['dropped_empty']} with empty text, {counts['dropped_missing_label']} without a label, "
                f"{counts['dropped_duplicates']} duplicates, "
                f"{counts['dropped_conflicting_labels']} with conflicting labels)"
            )
        frames[role] = cleaned
        inputs.append({"path": str(path), "role": role, **counts})

    if data.labels:
        label_names = list(data.labels)
    else:
        label_names = _sorted_labels(set(frames["train"]["label"]))
        for role in ("validation", "test"):
            if role in frames:
                _check_labels(frames[role], label_names, str(dict(sources)[role]), f"the labels of {data.path}")
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
        ids = main["label"].map(label2id).to_numpy()
        parts, stratified, note = _split_indices(ids, missing, rng, data.path, label_names)
        for name, idx in parts.items():
            splits[name] = main.iloc[idx]
    else:
        splits["train"] = main
        stratified, note = False, "validation and test splits read from data.validation_path / data.test_path"

    out_dir.mkdir(parents=True, exist_ok=True)
    sizes: dict[str, int] = {}
    class_counts: dict[str, dict[str, int]] = {}
    digests: dict[str, str] = {}
    for name in SPLITS:
        part = splits[name]
        if part.empty:
            raise DataError(f"{data.path}: the {name} split is empty after cleaning")
        frame = part[text_cols].reset_index(drop=True)
        frame["label"] = part["label"].map(label2id).astype("int64").to_numpy()
        target = out_dir / f"{name}.parquet"
        _write_parquet(frame, text_cols, target)
        sizes[name] = len(frame)
        vc = part["label"].value_counts()
        class_counts[name] = {label: int(vc.get(label, 0)) for label in label_names}
        digests[target.name] = _sha256(target)

    label_map = {"id2label": {str(i): n for n, i in label2id.items()}, "label2id": label2id}
    map_path = out_dir / "label_map.json"
    map_path.write_text(json.dumps(label_map, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    digests[map_path.name] = _sha256(map_path)

    totals = {
        k: sum(int(i[k]) for i in inputs)
        for k in (
            "rows_in",
            "dropped_empty",
            "dropped_missing_label",
            "dropped_duplicates",
            "dropped_conflicting_labels",
        )
    }
    summary: dict[str, Any] = {
        **totals,
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
