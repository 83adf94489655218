"""Clean stage, seq2seq: normalise text, quarantine unusable pairs, drop duplicate pairs, split without leakage.

- Text: the shared cleaning (Unicode form, HTML entities and tags, control characters, spacing:
  pipelines/data/clean.py `clean_series`) on source and target.
- Quarantine reasons: empty_source, empty_target (after cleaning). More than clean.max_quarantine_share stops the
  run (DataValidationError) before any split is written.
- Duplicates: the same (source, target) pair again is dropped (clean.drop_duplicates). The same source with
  another target is kept: several references are normal (paraphrases, several questions about one answer).
- Split: validation/test files given in params are used as they are; missing ones are cut from the main file by
  source, so all targets of one source land in one split (seeded, about clean.validation_size / test_size of the
  rows), or by data.group_column when set (whole articles, say, so validation scores unseen topics). Then training
  pairs whose source (case, punctuation and spacing aside) is in validation or test are removed (leakage).

Writes `{train,validation,test}.parquet` (source, target, [slice], row), `label_map.json` (no label space),
`quarantine.parquet` and `summary.json`. Same input + same params -> byte-identical outputs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataError, DataValidationError
from pipelines.paths import SPLITS
from pipelines.tasks.seq2seq.readers import read_pairs

QUARANTINE = "quarantine.parquet"
REASONS = ("empty_source", "empty_target")


def _write(frame: pd.DataFrame, columns: list[str], path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for c in columns:
        if c == "row":
            arrays[c] = pa.array(frame[c].to_numpy(dtype=np.int64), type=pa.int64())
        else:
            arrays[c] = pa.array(frame[c].astype("str").fillna("").tolist(), type=pa.string())
    pq.write_table(pa.table(arrays), path)


def split_by_source(
    keys: pd.Series, fractions: dict[str, float], seed: int, path: str, unit: str = "source"
) -> dict[str, np.ndarray]:
    """Row positions per split: whole groups of one key (a source, or a data.group_column value) only,
    validation/test filled to about their share of the rows in a seeded random group order (a group that would
    take a split further from its share than it is is left for later splits or train; each split gets at least
    one, the smallest where all are too large); train gets the rest."""
    names = sorted(keys.unique().tolist())
    if len(names) < len(fractions) + 1:
        raise DataError(
            f"{path}: only {len(names)} distinct {unit}s after cleaning; need at least {len(fractions) + 1} to split "
            f"into train/{'/'.join(fractions)} without one {unit} in two splits"
        )
    sizes = keys.value_counts().to_dict()
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    assigned: dict[str, str] = {}
    for k, (split, fraction) in enumerate(fractions.items()):
        target, taken = max(1, math.floor(len(keys) * fraction + 0.5)), 0
        reserve = len(fractions) - k  # groups kept back: one for each later split, one for train
        left: list[str] = []  # one pass, linear in the groups (a split by source has one per row)
        for position, name in enumerate(order):
            room = len(order) - position + len(left) > reserve
            # a group that overshoots by more than it fills is left for later splits or train
            if taken < target and room and abs(taken + sizes[name] - target) < abs(target - taken):
                assigned[name] = split
                taken += sizes[name]
            else:
                left.append(name)
        if not taken and len(left) > reserve:  # every group is larger than twice the share: the smallest
            smallest = min(left, key=lambda n: sizes[n])
            assigned[smallest] = split
            left.remove(smallest)
        order = left
    for name in order:
        assigned[name] = "train"
    labels = keys.map(assigned).to_numpy()
    return {s: np.flatnonzero(labels == s) for s in ("train", *fractions)}


def clean_data(params: Any, out_dir: Path) -> dict[str, Any]:
    from pipelines.data.clean import clean_series, normalised_key
    from pipelines.hashing import file_digest

    data, cfg = params.data, params.clean
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*(out_dir / f"{s}.parquet" for s in SPLITS), out_dir / "label_map.json"]:
        stale.unlink(missing_ok=True)  # a failed clean must not leave the previous run's splits behind
    groups = ["group"] if data.group_column else []  # kept: the output vocabulary counts words per group
    columns = ["source", "target", *(["slice"] if data.slice_column else []), *groups, "row"]
    frames: dict[str, pd.DataFrame] = {}
    inputs: list[dict[str, Any]] = []
    quarantined: list[pd.DataFrame] = []
    for role, path in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)):
        if not path:
            continue
        # the group column is needed where splits are cut: the main file only
        raw = read_pairs(path, data if role == "train" else data.model_copy(update={"group_column": None}))
        frame = pd.DataFrame(
            {
                "source": clean_series(raw["source"], cfg.unicode_form).to_numpy(),
                "target": clean_series(raw["target"], cfg.unicode_form).to_numpy(),
                "row": raw["row"].to_numpy(),
            }
        )
        if "group" in raw.columns:
            frame["group"] = raw["group"].fillna("").astype("str").str.strip().to_numpy()
        elif groups:  # a validation/test file without the column
            frame["group"] = ""
        if "slice" in raw.columns:
            frame["slice"] = raw["slice"].astype("str").str.strip().fillna("").replace("", "(missing)").to_numpy()
        reason = np.full(len(frame), None, dtype=object)
        reason[(frame["target"] == "").to_numpy()] = "empty_target"
        reason[(frame["source"] == "").to_numpy()] = "empty_source"
        bad = reason != None  # noqa: E711 (element-wise on an object array)
        if bad.any():
            q = frame.loc[bad].copy()
            q.insert(0, "reason", reason[bad])
            q.insert(0, "role", role)
            q.insert(0, "source_file", str(path))
            quarantined.append(q)
        kept = frame.loc[~bad]
        duplicates = 0
        if cfg.drop_duplicates:
            dup = kept.duplicated(subset=["source", "target"], keep="first").to_numpy()
            duplicates = int(dup.sum())
            kept = kept.loc[~dup]
        frames[role] = kept.reset_index(drop=True)
        inputs.append(
            {
                "path": str(path),
                "role": role,
                "rows_in": len(frame),
                **{f"quarantined_{r}": int((reason == r).sum()) for r in REASONS},
                "dropped_duplicates": duplicates,
                "rows_kept": len(kept),
            }
        )

    rows_in = sum(i["rows_in"] for i in inputs)
    q_columns = ["source_file", "role", "reason", *columns]
    quarantine = (
        pd.concat(quarantined, ignore_index=True)[q_columns]
        if quarantined
        else pd.DataFrame({c: pd.Series(dtype="int64" if c == "row" else "str") for c in q_columns})
    )
    quarantine_path = out_dir / QUARANTINE
    _write(quarantine, q_columns, quarantine_path)
    reason_counts = {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()}
    share = len(quarantine) / max(rows_in, 1)
    base: dict[str, Any] = {
        "rows_in": rows_in,
        "quarantined": len(quarantine),
        "quarantine_share": round(share, 6),
        "quarantine_reasons": reason_counts,
        "quarantine_file": str(quarantine_path),
        "dropped_duplicates": sum(i["dropped_duplicates"] for i in inputs),
    }
    emptied = [i for i in inputs if not len(frames[i["role"]])]
    if share > cfg.max_quarantine_share or emptied:
        worst = emptied[0] if emptied else max(inputs, key=lambda i: i["rows_in"] - i["rows_kept"])
        shown = ", ".join(f"{n} {r}" for r, n in sorted(reason_counts.items(), key=lambda x: -x[1]))
        lines = quarantine.loc[quarantine["source_file"] == worst["path"], "row"].astype(int).tolist()[:5]
        what = (
            f"more than clean.max_quarantine_share={100 * cfg.max_quarantine_share:.1f}%"
            if share > cfg.max_quarantine_share
            else f"no usable {worst['role']} rows left"
        )
        message = (
            f"{worst['path']}: {len(quarantine)} of {rows_in} rows ({100 * share:.1f}%) quarantined, {what} "
            f"({shown}; lines {', '.join(str(x) for x in lines)}); see {quarantine_path}"
        )
        (out_dir / "summary.json").write_text(
            json.dumps({**base, "failed": message, "inputs": inputs}, indent=2, ensure_ascii=False) + "\n"
        )
        raise DataValidationError(message, report_path=str(quarantine_path))

    keys = {role: normalised_key(frame["source"]) for role, frame in frames.items()}
    missing = {k: f for k, f in (("validation", cfg.validation_size), ("test", cfg.test_size)) if k not in frames}
    splits = {k: v for k, v in frames.items() if k != "train"}
    train = frames["train"]
    grouped = "group" in train.columns
    if missing:
        # whole groups (data.group_column: e.g. articles) or whole sources go to one split
        split_keys = train["group"] if grouped else keys["train"]
        unit = f"{data.group_column} value" if grouped else "source"
        for name, idx in split_by_source(split_keys, missing, cfg.seed, str(data.path), unit).items():
            splits[name] = train.iloc[idx]
    else:
        splits["train"] = train
    held: set[str] = set()
    for name in ("validation", "test"):
        part_keys = keys[name] if name in frames else keys["train"].loc[splits[name].index]
        held |= set(part_keys)
    in_train = splits["train"]
    leaked = keys["train"].loc[in_train.index].isin(held).to_numpy()
    splits["train"] = in_train.loc[~leaked]
    sizes, digests = {}, {}
    for name in SPLITS:
        part = splits[name].reset_index(drop=True)
        if part.empty:
            raise DataError(f"{data.path}: the {name} split is empty after cleaning")
        target = out_dir / f"{name}.parquet"
        _write(part, columns, target)
        sizes[name] = len(part)
        digests[target.name] = file_digest(target)
    map_path = out_dir / "label_map.json"
    map_path.write_text(json.dumps({"id2label": {}, "label2id": {}}, indent=2) + "\n", encoding="utf-8")
    digests[map_path.name] = file_digest(map_path)
    digests[QUARANTINE] = file_digest(quarantine_path)
    summary: dict[str, Any] = {
        **base,
        "leakage_removed_from_train": int(leaked.sum()),
        "rows_out": sum(sizes.values()),
        "splits": sizes,
        "labels": [],
        "stratified": False,
        "split_by": (f"group ({data.group_column})" if grouped else "source") if missing else "file",
        "split_note": None if missing else "validation and test splits read from data.validation_path / data.test_path",
        "split_source": {k: ("file" if k in frames else "split") for k in SPLITS},
        "seed": cfg.seed,
        "inputs": inputs,
        "sha256": digests,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
