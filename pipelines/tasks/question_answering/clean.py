"""Clean stage, question answering: repair answer offsets, quarantine unusable questions, drop duplicates, split by
article (SQuAD title; else by context) so that no context is in two splits, and remove question-text leakage.

- An answer whose text is not at its answer_start but occurs within task.answer_search_window characters of it is
  moved there (the nearest occurrence; counted as `answer_start_fixed`); one that cannot be found is quarantined.
- Quarantine reasons: empty_question, empty_context, answer_not_in_context, duplicate_id (one id, two different
  questions). Exact duplicates (same question and context) are dropped.
- Split: whole articles (or contexts, when the file has no titles) go to validation/test until each holds about
  clean.validation_size / clean.test_size of the questions. User-given validation/test files are honoured; then
  train questions whose context or normalised question text appears in validation/test are removed (leakage).
Contexts are kept byte for byte (offsets point into them): no Unicode normalisation here.

Writes `{train,validation,test}.parquet`, `label_map.json` (no label space: `{"id2label": {}}`),
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
from pipelines.tasks.question_answering.readers import read_examples

SPLITS = ("train", "validation", "test")
QUARANTINE = "quarantine.parquet"
REASONS = ("empty_question", "empty_context", "answer_not_in_context", "duplicate_id")


def question_key(question: str) -> str:
    """What makes two questions the same for leakage: lower case, single spaces."""
    return " ".join(str(question).lower().split())


def fix_answer_start(context: str, text: str, start: int, window: int) -> int | None:
    """The answer_start where `text` really is: `start` when right, else the nearest occurrence at most `window`
    characters away, else None."""
    if start >= 0 and context[start : start + len(text)] == text:
        return start
    if not text:
        return None
    best: int | None = None
    low = max(0, start - window)
    found = context.find(text, low, start + window + len(text))
    while found != -1 and found <= start + window:
        if best is None or abs(found - start) < abs(best - start):
            best = found
        found = context.find(text, found + 1, start + window + len(text))
    return best


def _write(frame: pd.DataFrame, path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "id": pa.array(frame["id"].astype(str).tolist(), type=pa.string()),
        "title": pa.array(frame["title"].astype(str).tolist(), type=pa.string()),
        "context": pa.array(frame["context"].astype(str).tolist(), type=pa.string()),
        "question": pa.array(frame["question"].astype(str).tolist(), type=pa.string()),
        "answer_texts": pa.array([list(t) for t in frame["answer_texts"]], type=pa.list_(pa.string())),
        "answer_starts": pa.array([[int(s) for s in x] for x in frame["answer_starts"]], type=pa.list_(pa.int64())),
        "is_impossible": pa.array([bool(x) for x in frame["is_impossible"]], type=pa.bool_()),
        "source_line": pa.array(frame["source_line"].to_numpy(dtype=np.int64), type=pa.int64()),
        "where": pa.array(frame["where"].astype(str).tolist(), type=pa.string()),
    }
    for extra in ("source", "role", "reason"):
        if extra in frame.columns:
            columns[extra] = pa.array(frame[extra].astype(str).tolist(), type=pa.string())
    pq.write_table(pa.table(columns), path)


def split_groups(groups: pd.Series, fractions: dict[str, float], seed: int, path: str) -> dict[str, np.ndarray]:
    """Row indexes per split; whole groups (articles/contexts) only, validation/test filled to about their share
    of the rows, in a seeded random group order."""
    names = sorted(groups.unique().tolist())
    if len(names) < len(fractions) + 1:
        raise DataError(
            f"{path}: only {len(names)} articles/contexts after cleaning; need at least {len(fractions) + 1} to split "
            f"into train/{'/'.join(fractions)} without the same context in two splits"
        )
    sizes = groups.value_counts().to_dict()
    order = [names[i] for i in np.random.default_rng(seed).permutation(len(names))]
    assigned: dict[str, str] = {}
    position = 0
    for k, (split, fraction) in enumerate(fractions.items()):
        target, taken = max(1, math.floor(len(groups) * fraction + 0.5)), 0
        reserve = len(fractions) - k  # groups kept back: one for each later split, one for train
        while taken < target and len(order) - position > reserve:
            assigned[order[position]] = split
            taken += sizes[order[position]]
            position += 1
    for name in order[position:]:
        assigned[name] = "train"
    labels = groups.map(assigned).to_numpy()
    return {s: np.flatnonzero(labels == s) for s in ("train", *fractions)}


def clean_data(params: Any, out_dir: Path) -> dict[str, Any]:
    from pipelines.hashing import file_digest

    data, options, cfg = params.data, params.task, params.clean
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*(out_dir / f"{s}.parquet" for s in SPLITS), out_dir / "label_map.json"]:
        stale.unlink(missing_ok=True)
    frames: dict[str, pd.DataFrame] = {}
    inputs: list[dict[str, Any]] = []
    quarantined: list[pd.DataFrame] = []
    for role, path in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)):
        if not path:
            continue
        frame = read_examples(path, data)
        frame["question"] = [str(q).strip() for q in frame["question"]]
        reasons: list[str | None] = []
        fixed_starts, fixed = [], 0
        for context, texts, starts in zip(frame["context"], frame["answer_texts"], frame["answer_starts"], strict=True):
            new = [
                fix_answer_start(context, t, int(s), options.answer_search_window)
                for t, s in zip(texts, starts, strict=True)
            ]
            fixed += sum(1 for n, s in zip(new, starts, strict=True) if n is not None and n != s)
            fixed_starts.append([n if n is not None else int(s) for n, s in zip(new, starts, strict=True)])
            reasons.append("answer_not_in_context" if any(n is None for n in new) else None)
        frame["answer_starts"] = fixed_starts
        empty_q = frame["question"].map(lambda q: not q)
        empty_c = frame["context"].map(lambda c: not str(c).strip())
        frame["reason"] = reasons
        frame.loc[empty_c, "reason"] = "empty_context"
        frame.loc[empty_q, "reason"] = "empty_question"
        content = frame["question"] + "\x00" + frame["context"]
        usable = frame["reason"].isna()
        variants = pd.DataFrame({"id": frame["id"], "content": content})[usable].groupby("id")["content"].nunique()
        clash = frame["id"].isin(variants.index[variants.to_numpy() > 1]) & usable
        frame.loc[clash, "reason"] = "duplicate_id"
        bad = frame["reason"].notna()
        if bad.any():
            q = frame.loc[bad].copy()
            q["source"], q["role"] = str(path), role
            quarantined.append(q)
        kept = frame.loc[~bad].drop(columns=["reason"])
        duplicates = 0
        if cfg.drop_duplicates:
            dup = (kept["question"] + "\x00" + kept["context"]).duplicated(keep="first").to_numpy()
            duplicates = int(dup.sum())
            kept = kept.loc[~dup]
        frames[role] = kept.reset_index(drop=True)
        inputs.append(
            {
                "path": str(path),
                "role": role,
                "rows_in": len(frame),
                **{f"quarantined_{r}": int((frame["reason"] == r).sum()) for r in REASONS},
                "answer_start_fixed": fixed,
                "dropped_duplicates": duplicates,
                "rows_kept": len(kept),
            }
        )

    rows_in = sum(i["rows_in"] for i in inputs)
    quarantine = (
        pd.concat(quarantined, ignore_index=True)
        if quarantined
        else frames["train"].iloc[:0].assign(source=[], role=[], reason=[])
    )
    quarantine_path = out_dir / QUARANTINE
    _write(quarantine, quarantine_path)
    reason_counts = {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()}
    share = len(quarantine) / max(rows_in, 1)
    base: dict[str, Any] = {
        "rows_in": rows_in,
        "quarantined": len(quarantine),
        "quarantine_share": round(share, 6),
        "quarantine_reasons": reason_counts,
        "quarantine_file": str(quarantine_path),
        "answer_start_fixed": sum(i["answer_start_fixed"] for i in inputs),
        "dropped_duplicates": sum(i["dropped_duplicates"] for i in inputs),
    }
    emptied = [i for i in inputs if not len(frames[i["role"]])]
    if share > cfg.max_quarantine_share or emptied:
        worst = emptied[0] if emptied else max(inputs, key=lambda i: i["rows_in"] - i["rows_kept"])
        shown = ", ".join(f"{n} {r}" for r, n in sorted(reason_counts.items(), key=lambda x: -x[1]))
        where = quarantine.loc[quarantine["source"] == worst["path"], "where"].astype(str).tolist()[:3]
        what = (
            f"more than clean.max_quarantine_share={100 * cfg.max_quarantine_share:.1f}%"
            if share > cfg.max_quarantine_share
            else f"no usable {worst['role']} questions left"
        )
        message = (
            f"{worst['path']}: {len(quarantine)} of {rows_in} questions ({100 * share:.1f}%) quarantined, {what} "
            f"({shown}; at {', '.join(where)}); see {quarantine_path}"
        )
        (out_dir / "summary.json").write_text(
            json.dumps({**base, "failed": message, "inputs": inputs}, indent=2, ensure_ascii=False) + "\n"
        )
        raise DataValidationError(message, report_path=str(quarantine_path))

    train = frames["train"]
    has_titles = bool((train["title"].astype(str) != "").all())
    group_by = "title" if has_titles and train["title"].nunique() >= 3 else "context"
    missing = {k: f for k, f in (("validation", cfg.validation_size), ("test", cfg.test_size)) if k not in frames}
    splits = {k: v for k, v in frames.items() if k != "train"}
    if missing:
        for name, idx in split_groups(train[group_by], missing, cfg.seed, str(data.path)).items():
            splits[name] = train.iloc[idx]
    else:
        splits["train"] = train
    held = pd.concat([splits["validation"], splits["test"]])
    held_questions = set(held["question"].map(question_key))
    held_contexts = set(held["context"])
    in_train = splits["train"]
    context_leak = in_train["context"].isin(held_contexts).to_numpy()
    question_leak = in_train["question"].map(question_key).isin(held_questions).to_numpy() & ~context_leak
    splits["train"] = in_train.loc[~(context_leak | question_leak)]
    sizes, unanswerable, digests = {}, {}, {}
    for name in SPLITS:
        part = splits[name].reset_index(drop=True)
        if part.empty:
            raise DataError(f"{data.path}: the {name} split is empty after cleaning")
        target = out_dir / f"{name}.parquet"
        _write(part, target)
        sizes[name] = len(part)
        unanswerable[name] = int(part["is_impossible"].sum())
        digests[target.name] = file_digest(target)
    map_path = out_dir / "label_map.json"
    map_path.write_text(json.dumps({"id2label": {}, "label2id": {}}, indent=2) + "\n", encoding="utf-8")
    digests[map_path.name] = file_digest(map_path)
    digests[QUARANTINE] = file_digest(quarantine_path)
    summary: dict[str, Any] = {
        **base,
        "leakage_removed_from_train": int(context_leak.sum() + question_leak.sum()),
        "leakage_context": int(context_leak.sum()),
        "leakage_question": int(question_leak.sum()),
        "rows_out": sum(sizes.values()),
        "splits": sizes,
        "unanswerable": unanswerable,
        "labels": [],
        "stratified": False,
        "split_by": group_by if missing else "file",
        "split_note": None if missing else "validation and test splits read from data.validation_path / data.test_path",
        "split_source": {k: ("file" if k in frames else "split") for k in SPLITS},
        "seed": cfg.seed,
        "inputs": inputs,
        "sha256": digests,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
