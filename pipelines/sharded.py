"""Sharded data preparation: the row-wise work of validate, clean and tokenise, in parallel on a Dask cluster.

With `orchestration.shard_rows: N`, an input of more than N rows is cut into shards of N rows; each shard's
row-wise work runs as one Prefect task mapped over the shards by prefect-dask's DaskTaskRunner (a local cluster,
or `orchestration.dask_address`), and the results are put back together in row order:

- validate: the batch Great Expectations checks (blank texts as nulls, normalised labels, token counts);
- clean: text normalisation, label values and the near-duplicate key of every row;
- tokenise: the task's features (for tasks whose features depend on each example alone, `Task.tokenise_shardable`;
  example ids are shifted by the shard's first row).

What depends on all rows together stays in one place and runs once, on the reassembled result: the expectation
suites (row counts, duplicate share, classes), de-duplication, quarantine, leakage and the split. So the outputs are
the single-process outputs, byte for byte (tests/unit/test_sharded.py compares their hashes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd

    from pipelines.config import Params
    from pipelines.tasks.base import Task


def shard_bounds(rows: int, shard_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of at most shard_rows rows covering 0..rows."""
    return [(start, min(start + shard_rows, rows)) for start in range(0, rows, shard_rows)] or [(0, 0)]


def applies(params: Params, rows: int) -> bool:
    """Shard this input: orchestration.shard_rows is set and the input is larger."""
    limit = params.orchestration.shard_rows
    return bool(limit) and rows > int(limit or 0)


def _call(fn: Callable[..., Any], part: Any, args: tuple[Any, ...]) -> Any:
    return fn(part, *args)


def map_shards(params: Params, fn: Callable[..., Any], frame: pd.DataFrame, *args: Any, what: str) -> list[Any]:
    """fn(shard, *args) for every shard of frame, on the Dask cluster, results in shard order."""
    from prefect import flow, task, unmapped
    from prefect.cache_policies import NO_CACHE

    from pipelines.cluster import task_runner

    bounds = shard_bounds(len(frame), int(params.orchestration.shard_rows or len(frame) or 1))
    parts = [frame.iloc[a:b] for a, b in bounds]
    shard_task = task(name=f"{what}-shard", cache_policy=NO_CACHE, persist_result=False)(_call)

    @flow(name=f"nlpops-shards-{what}", task_runner=task_runner(params.orchestration), validate_parameters=False)
    def shards() -> list[Any]:
        futures = shard_task.map(unmapped(fn), parts, unmapped(args))
        return [f.result() for f in futures]

    return shards()


def frame_map(
    params: Params, fn: Callable[..., pd.DataFrame], frame: pd.DataFrame, *args: Any, what: str, renumber: bool = False
) -> pd.DataFrame:
    """fn(frame, *args) for a row-wise fn returning a frame: on shards when the input is large, else here.

    renumber: the shards' results are numbered from 0 each (a fresh RangeIndex), so the whole gets 0..n-1."""
    if not applies(params, len(frame)):
        return fn(frame, *args)
    import pandas as pd

    return pd.concat(map_shards(params, fn, frame, *args, what=what), ignore_index=renumber)


def _tokenise_shard(
    frame: pd.DataFrame, task: Task, tokenizer: Any, cfg: Any, types: dict[str, Any], parallel: bool
) -> Any:
    """One shard's features as an Arrow table (compact to send back), example ids still local to the shard."""
    import os

    import pyarrow as pa

    before = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if parallel else "false"
    try:
        columns = task.tokenise(tokenizer, frame, cfg)
    finally:
        if before is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = before
    return pa.table({name: pa.array(values, type=types.get(name, pa.int64())) for name, values in columns.items()})


def tokenise_table(task: Task, tokenizer: Any, frame: pd.DataFrame, cfg: Any, split: str) -> Any | None:
    """The split's features as one Arrow table, tokenised on shards; None when sharding does not apply (input
    small, or the task's features of this split depend on more than one example)."""
    if not applies(task.params, len(frame)) or not task.tokenise_shardable(split):
        return None
    import pyarrow as pa
    import pyarrow.compute as pc

    types = task.feature_types()
    parallel = task.params.orchestration.dask_threads_per_worker > 1 or bool(task.params.orchestration.dask_address)
    tables = map_shards(task.params, _tokenise_shard, frame, task, tokenizer, cfg, types, parallel, what="tokenise")
    starts = [a for a, _ in shard_bounds(len(frame), int(task.params.orchestration.shard_rows or 1))]
    shifted = []
    for start, table in zip(starts, tables, strict=True):
        ids = pc.add(table["example_id"], pa.scalar(start, type=table.schema.field("example_id").type))
        shifted.append(table.set_column(table.schema.get_field_index("example_id"), "example_id", ids))
    return pa.concat_tables(shifted).combine_chunks()
