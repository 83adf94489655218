"""Tokenise the cleaned splits with the model's fast tokenizer, cached by content.

The cache key is the hash of: each cleaned split's bytes, the tokenizer's files, max_length, the task and this
module's source. An unchanged rerun copies from the cache instead of tokenising again.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipelines.config import TokeniseConfig, stable_hash
from pipelines.hashing import file_digest, source_digest, tree_digest
from pipelines.paths import SPLITS
from pipelines.tasks.base import Task

MANIFEST = "manifest.json"


def tokenise_cache_key(clean_dir: Path, tokenizer_dir: Path, cfg: TokeniseConfig, task: Task) -> str:
    tokenizer_files = [
        p for p in sorted(tokenizer_dir.iterdir()) if p.is_file() and ("token" in p.name or p.name.startswith("vocab"))
    ]
    return stable_hash(
        {
            "splits": {s: file_digest(clean_dir / f"{s}.parquet") for s in SPLITS},
            "tokenizer": {p.name: file_digest(p) for p in tokenizer_files},
            "max_length": cfg.max_length,
            "task": task.options.model_dump(mode="json"),
            "code": source_digest("pipelines.tokenise", *task.spec.modules),
        }
    )


def _write_split(columns: dict[str, list], path: Path, types: dict[str, Any]) -> None:
    """Feature columns with the task's Arrow types (lists of ids, offsets, labels); other columns int64."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {name: pa.array(values, type=types.get(name, pa.int64())) for name, values in columns.items()}
    pq.write_table(pa.table(arrays), path)


class _TokenizerThreads:
    """Let the Rust tokenizer use every core while tokenising (the CLI turns that off for the rest of the run, so
    forked DataLoader workers stay safe); the previous setting is restored afterwards."""

    def __enter__(self) -> None:
        self._before = os.environ.get("TOKENIZERS_PARALLELISM")
        os.environ["TOKENIZERS_PARALLELISM"] = "true"

    def __exit__(self, *exc: object) -> None:
        if self._before is None:
            os.environ["TOKENIZERS_PARALLELISM"] = "false"
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = self._before


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _split_stats(frame: Any, lengths: list[int], cfg: TokeniseConfig) -> dict[str, Any]:
    """One tokenised split's row, feature and token counts for the manifest."""
    return {
        "rows": len(frame),
        "features": len(lengths),
        "tokens": int(sum(lengths)),
        "max_tokens": int(max(lengths, default=0)),
        "mean_tokens": round(sum(lengths) / max(len(lengths), 1), 2),
        "truncated_rows": int(sum(1 for n in lengths if n >= cfg.max_length)),
    }


def tokenise_splits(
    clean_dir: Path,
    tokenizer_dir: Path,
    out_dir: Path,
    cache_root: Path,
    cfg: TokeniseConfig,
    task: Task,
) -> dict[str, Any]:
    """Write out_dir/{split}.parquet (+ manifest.json); reuse the content-keyed cache when it holds the result."""
    import pandas as pd

    from pipelines.pretrained import load_tokenizer

    key = tokenise_cache_key(clean_dir, tokenizer_dir, cfg, task)
    cache_dir = cache_root / key
    started = time.perf_counter()
    cache_hit = (cache_dir / MANIFEST).is_file()
    if not cache_hit:
        tokenizer = load_tokenizer(tokenizer_dir)
        cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}-", dir=cache_root))
        stats: dict[str, Any] = {}
        import pyarrow.parquet as pq

        from pipelines import progress
        from pipelines.sharded import tokenise_table

        rows = sum(pq.ParquetFile(clean_dir / f"{s}.parquet").metadata.num_rows for s in SPLITS)
        with progress.track("tokenised", total=rows, unit="rows", stage="tokenise") as tracker:
            for split in SPLITS:
                frame = pd.read_parquet(clean_dir / f"{split}.parquet")
                frame.attrs["split"] = split  # a task may treat train differently (QA down-samples windows)
                table = tokenise_table(task, tokenizer, frame, cfg, split)  # large inputs: on shards (Dask)
                if table is not None:
                    pq.write_table(table, staging / f"{split}.parquet")
                    lengths = table["length"].to_pylist()
                else:
                    with _TokenizerThreads():
                        columns = task.tokenise(tokenizer, frame, cfg)
                    _write_split(columns, staging / f"{split}.parquet", task.feature_types())
                    lengths = columns["length"]
                tracker.advance(len(frame))
                stats[split] = _split_stats(frame, lengths, cfg)
        manifest = {
            "cache_key": key,
            "max_length": cfg.max_length,
            "tokenizer": str(tokenizer_dir),
            "tokenizer_sha256": tree_digest(tokenizer_dir, "*token*"),
            "pad_token_id": int(tokenizer.pad_token_id or 0),
            "splits": stats,
        }
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
        # Publish atomically so a killed run never leaves a half-written cache entry behind.
        try:
            staging.rename(cache_dir)
        except OSError:  # another run published the same key first
            shutil.rmtree(staging, ignore_errors=True)
    else:
        from pipelines import progress

        progress.message(f"tokenised splits reused from the content cache ({key[:12]})", stage="tokenise")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in [*(f"{s}.parquet" for s in SPLITS), MANIFEST]:
        _link_or_copy(cache_dir / name, out_dir / name)
    manifest = json.loads((out_dir / MANIFEST).read_text())
    return {
        "cache_key": key,
        "cache_hit": cache_hit,
        "seconds": round(time.perf_counter() - started, 3),
        "splits": manifest["splits"],
        "pad_token_id": manifest["pad_token_id"],
    }
