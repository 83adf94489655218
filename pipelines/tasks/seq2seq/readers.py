"""Read a sequence-to-sequence file (csv, tsv, jsonl, parquet) into columns source, target, [group], [slice] and
row.

The shared table reader (pipelines/data/load.py) does the work, so every file problem it explains (encoding,
delimiter, header, quoting, binary junk) reads the same here: it is given data.source_column as the text column and
data.target_column as the label column (and data.group_column as the pair column), and its hint about which
settings name the columns is reworded.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.errors import ConfigError, DataError

_GENERIC_HINT = "data.text_column / data.text_pair_column / data.label_column"
_OUR_HINT = "data.source_column / data.target_column"
_OUR_HINT_GROUPED = "data.source_column / data.group_column / data.target_column"


def read_pairs(path: str | Path, data: Any) -> pd.DataFrame:
    """One file as (source, target, [group], [slice], row): str values, nulls kept as null; row = 1-based source
    line."""
    from pipelines.data.load import read_table

    if data.source_column == data.target_column:
        raise ConfigError(
            f"data.source_column and data.target_column are both {data.source_column!r}; they must differ"
        )
    group = getattr(data, "group_column", None)
    if group in (data.source_column, data.target_column):
        raise ConfigError(f"data.group_column is {group!r}, the source or target column; name another column")
    mapped = data.model_copy(
        update={"text_column": data.source_column, "text_pair_column": group, "label_column": data.target_column}
    )
    try:
        frame = read_table(path, mapped)
    except DataError as exc:
        message = str(exc).replace(_GENERIC_HINT, _OUR_HINT_GROUPED if group else _OUR_HINT)
        if group and f"missing column '{group}'" in message and "data.group_column" not in message:
            message += f"; data.group_column names {group!r}"
        raise DataError(message) from None
    out = frame.rename(columns={"text": "source", "label": "target", "text_pair": "group"})
    out.attrs.update(frame.attrs)
    return out
