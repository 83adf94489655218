"""Clean stage, token classification: normalise words and tags, repair or quarantine IOB2 problems, drop duplicate
sentences, split by sentence (not stratified; user-given validation/test files honoured), remove leakage.

Writes `{train,validation,test}.parquet` (tokens list<string>, tags list<string>, tag_ids list<int64> in
label_map.json's ids, source_line int64), `label_map.json` (`id2label`: O first, then the other tags sorted; or
data.labels in its order), `quarantine.parquet` (source, role, source_line, reason, tokens, tags) and
`summary.json`. Same input + same params -> byte-identical outputs.
"""

from __future__ import annotations

import json
import math
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.errors import DataError, DataValidationError
from pipelines.tasks.token_classification.iob import OUTSIDE, iob_violations, repair_iob, split_tag
from pipelines.tasks.token_classification.readers import read_sentences

SPLITS = ("train", "validation", "test")
QUARANTINE = "quarantine.parquet"
REASONS = ("empty_sentence", "unknown_tag", "tag_not_in_train", "iob_violation", "conflicting_tags")


def tag_order(tags: set[str] | list[str]) -> list[str]:
    """O first, then the other tags sorted (B-X before I-X of the same type comes for free: 'B' < 'I')."""
    rest = sorted(t for t in set(tags) if t != OUTSIDE)
    return ([OUTSIDE] if OUTSIDE in set(tags) else []) + rest


def sentence_key(tokens: list[str]) -> str:
    """What makes two sentences the same (duplicates, leakage): the joined words."""
    return " ".join(tokens)


def _normalise(frame: pd.DataFrame, form: str) -> pd.DataFrame:
    out = frame.copy()
    out["tokens"] = [[unicodedata.normalize(form, str(w)).strip() for w in t] for t in frame["tokens"]]  # type: ignore[arg-type]
    out["tags"] = [[str(x).strip() for x in t] for t in frame["tags"]]
    return out


def _write(frame: pd.DataFrame, path: Path, label2id: dict[str, int] | None) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {
        "tokens": pa.array([list(t) for t in frame["tokens"]], type=pa.list_(pa.string())),
        "tags": pa.array([list(t) for t in frame["tags"]], type=pa.list_(pa.string())),
    }
    if label2id is not None:
        columns["tag_ids"] = pa.array([[label2id[x] for x in t] for t in frame["tags"]], type=pa.list_(pa.int64()))
    columns["source_line"] = pa.array(frame["source_line"].to_numpy(dtype=np.int64), type=pa.int64())
    for extra in ("source", "role", "reason"):
        if extra in frame.columns:
            columns[extra] = pa.array(frame[extra].astype("str").tolist(), type=pa.string())
    pq.write_table(pa.table(columns), path)


def _split(n: int, fractions: dict[str, float], seed: int, path: str) -> dict[str, np.ndarray]:
    targets = {k: max(1, math.floor(n * f + 0.5)) for k, f in fractions.items()}
    if n - sum(targets.values()) < 1:
        raise DataError(
            f"{path}: only {n} sentences left after cleaning; need at least {sum(targets.values()) + 1} for "
            f"non-empty {'/'.join(['train', *targets])} splits"
        )
    perm = np.random.default_rng(seed).permutation(n)
    parts, start = {}, 0
    for name, k in targets.items():
        parts[name] = np.sort(perm[start : start + k])
        start += k
    parts["train"] = np.sort(perm[start:])
    return parts


def _entity_counts(tags: pd.Series, iob: bool) -> dict[str, int]:
    counts: dict[str, int] = {}
    for sentence in tags:
        for t in sentence:
            prefix, kind = split_tag(t)
            key = kind if iob and prefix == "B" else (None if iob else t)
            if key:
                counts[key] = counts.get(key, 0) + 1
    return dict(sorted(counts.items()))


def clean_data(params: Any, out_dir: Path) -> dict[str, Any]:
    """Clean and split the raw sentences into out_dir; returns the summary (also written to summary.json)."""
    from pipelines.hashing import file_digest

    data, options, cfg = params.data, params.task, params.clean
    iob = options.scheme == "IOB2"
    repair = bool(getattr(cfg, "repair_iob", False))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in [*(out_dir / f"{s}.parquet" for s in SPLITS), out_dir / "label_map.json"]:
        stale.unlink(missing_ok=True)  # a failed clean must not leave the previous run's splits behind

    frames: dict[str, pd.DataFrame] = {}
    inputs: list[dict[str, Any]] = []
    quarantined: list[pd.DataFrame] = []
    train_tags: set[str] | None = None
    for role, path in (("train", data.path), ("validation", data.validation_path), ("test", data.test_path)):
        if not path:
            continue
        frame = _normalise(read_sentences(path, data), cfg.unicode_form)
        repaired = 0
        if iob and repair:
            fixed = [repair_iob(list(t)) for t in frame["tags"]]
            frame["tags"] = [t for t, _ in fixed]
            repaired = sum(c for _, c in fixed)
        allowed = set(data.labels) if data.labels else (train_tags if role != "train" else None)
        unknown = "unknown_tag" if data.labels else "tag_not_in_train"
        reasons: list[str | None] = []
        for words, tags in zip(frame["tokens"], frame["tags"], strict=True):
            if not words or any(not w for w in words):
                reasons.append("empty_sentence")
            elif allowed is not None and not set(tags) <= allowed:
                reasons.append(unknown)
            elif iob and iob_violations(list(tags)):
                reasons.append("iob_violation")
            else:
                reasons.append(None)
        frame["reason"] = reasons
        keys = frame["tokens"].map(sentence_key)
        tag_keys = frame["tags"].map(sentence_key)
        usable = frame["reason"].isna()
        # the same words with different tags: which one is right is unknown, so neither is used
        variants = pd.DataFrame({"key": keys, "tags": tag_keys})[usable].groupby("key")["tags"].nunique()
        conflicted = keys.isin(variants.index[variants.to_numpy() > 1]) & usable
        frame.loc[conflicted, "reason"] = "conflicting_tags"
        bad = frame["reason"].notna()
        if bad.any():
            q = frame.loc[bad].copy()
            q["source"], q["role"] = str(path), role
            quarantined.append(q)
        kept = frame.loc[~bad].assign(key=keys[~bad])
        duplicates = 0
        if cfg.drop_duplicates:
            dup = kept.duplicated(subset=["key"], keep="first").to_numpy()
            duplicates = int(dup.sum())
            kept = kept.loc[~dup]
        frames[role] = kept.reset_index(drop=True)
        counts = {f"quarantined_{r}": int((frame["reason"] == r).sum()) for r in REASONS}
        inputs.append(
            {
                "path": str(path),
                "role": role,
                "rows_in": len(frame),
                **counts,
                "iob_repaired": repaired,
                "dropped_duplicates": duplicates,
                "rows_kept": len(kept),
            }
        )
        if role == "train":
            train_tags = {t for tags in kept["tags"] for t in tags}

    leakage = 0
    held_out = [frames[r]["key"] for r in ("validation", "test") if r in frames]
    if held_out:
        leaked = frames["train"]["key"].isin(pd.concat(held_out).unique()).to_numpy()
        leakage = int(leaked.sum())
        frames["train"] = frames["train"].loc[~leaked].reset_index(drop=True)

    rows_in = sum(i["rows_in"] for i in inputs)
    quarantine = (
        pd.concat(quarantined, ignore_index=True)
        if quarantined
        else pd.DataFrame({"tokens": [], "tags": [], "source_line": [], "source": [], "role": [], "reason": []})
    )
    quarantine_path = out_dir / QUARANTINE
    _write(quarantine, quarantine_path, None)
    reason_counts = {str(k): int(v) for k, v in quarantine["reason"].value_counts().sort_index().items()}
    share = len(quarantine) / max(rows_in, 1)
    base: dict[str, Any] = {
        "rows_in": rows_in,
        "quarantined": len(quarantine),
        "quarantine_share": round(share, 6),
        "quarantine_reasons": reason_counts,
        "quarantine_file": str(quarantine_path),
        "iob_repaired": sum(i["iob_repaired"] for i in inputs),
        "dropped_duplicates": sum(i["dropped_duplicates"] for i in inputs),
        "leakage_removed_from_train": leakage,
    }
    emptied = [i for i in inputs if not len(frames[i["role"]])]
    if share > cfg.max_quarantine_share or emptied:
        worst = emptied[0] if emptied else max(inputs, key=lambda i: i["rows_in"] - i["rows_kept"])
        shown = ", ".join(f"{n} {r}" for r, n in sorted(reason_counts.items(), key=lambda x: -x[1]))
        lines = quarantine.loc[quarantine["source"] == worst["path"], "source_line"].astype(int).tolist()[:5]
        what = (
            f"more than clean.max_quarantine_share={100 * cfg.max_quarantine_share:.1f}%"
            if share > cfg.max_quarantine_share
            else f"no usable {worst['role']} sentences left"
        )
        hint = "; clean.repair_iob=true repairs I-X after O" if reason_counts.get("iob_violation") else ""
        message = (
            f"{worst['path']}: {len(quarantine)} of {rows_in} sentences ({100 * share:.1f}%) quarantined, {what} "
            f"({shown}; lines {', '.join(map(str, lines))}){hint}; see {quarantine_path}"
        )
        (out_dir / "summary.json").write_text(
            json.dumps({**base, "failed": message, "inputs": inputs}, indent=2, ensure_ascii=False) + "\n"
        )
        raise DataValidationError(message, report_path=str(quarantine_path))

    label_names = list(data.labels) if data.labels else tag_order({t for tags in frames["train"]["tags"] for t in tags})
    label2id = {name: i for i, name in enumerate(label_names)}
    missing = {k: f for k, f in (("validation", cfg.validation_size), ("test", cfg.test_size)) if k not in frames}
    splits = {k: v for k, v in frames.items() if k != "train"}
    if missing:
        for name, idx in _split(len(frames["train"]), missing, cfg.seed, str(data.path)).items():
            splits[name] = frames["train"].iloc[idx]
    else:
        splits["train"] = frames["train"]
    sizes, tokens, entities, digests = {}, {}, {}, {}
    for name in SPLITS:
        part = splits[name].reset_index(drop=True)
        if part.empty:
            raise DataError(f"{data.path}: the {name} split is empty after cleaning")
        target = out_dir / f"{name}.parquet"
        _write(part[["tokens", "tags", "source_line"]], target, label2id)
        sizes[name] = len(part)
        tokens[name] = int(sum(len(t) for t in part["tokens"]))
        entities[name] = _entity_counts(part["tags"], iob)
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
        "tokens": tokens,
        "entity_counts" if iob else "tag_counts": entities,
        "labels": label_names,
        "stratified": False,
        "split_note": None if missing else "validation and test splits read from data.validation_path / data.test_path",
        "split_source": {k: ("file" if k in frames else "split") for k in SPLITS},
        "seed": cfg.seed,
        "inputs": inputs,
        "sha256": digests,
    }
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return summary
