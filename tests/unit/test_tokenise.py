from __future__ import annotations

from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from pipelines.config import TokeniseConfig
from pipelines.tasks import get_task
from pipelines.tokenise import tokenise_splits

TASK = get_task("text_classification")


def _clean(tmp_path: Path, pair: bool = False) -> Path:
    clean = tmp_path / "clean"
    clean.mkdir()
    for split, n in (("train", 12), ("validation", 4), ("test", 4)):
        df = pd.DataFrame(
            {"text": [f"the film was good {'very ' * i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
        )
        if pair:
            df.insert(1, "text_pair", ["it is dull"] * n)
        df.to_parquet(clean / f"{split}.parquet")
    return clean


def test_unchanged_rerun_comes_from_the_cache(tmp_path: Path, tiny_model_dir: Path) -> None:
    clean = _clean(tmp_path)
    first = tokenise_splits(clean, tiny_model_dir, tmp_path / "out", tmp_path / "cache", TokeniseConfig(), TASK)
    again = tokenise_splits(clean, tiny_model_dir, tmp_path / "out2", tmp_path / "cache", TokeniseConfig(), TASK)
    assert first["cache_hit"] is False and again["cache_hit"] is True
    assert first["cache_key"] == again["cache_key"]
    assert pq.read_table(tmp_path / "out" / "train.parquet").equals(pq.read_table(tmp_path / "out2" / "train.parquet"))
    other = tokenise_splits(
        clean, tiny_model_dir, tmp_path / "out3", tmp_path / "cache", TokeniseConfig(max_length=8), TASK
    )
    assert other["cache_key"] != first["cache_key"] and other["cache_hit"] is False


def test_rows_are_truncated_to_max_length_and_not_padded(tmp_path: Path, tiny_model_dir: Path) -> None:
    clean = _clean(tmp_path)
    out = tokenise_splits(
        clean, tiny_model_dir, tmp_path / "out", tmp_path / "cache", TokeniseConfig(max_length=8), TASK
    )
    rows = pq.read_table(tmp_path / "out" / "train.parquet").to_pydict()
    assert max(rows["length"]) == 8 and min(rows["length"]) < 8
    assert all(len(ids) == n for ids, n in zip(rows["input_ids"], rows["length"], strict=True))
    assert out["splits"]["train"]["truncated_rows"] > 0


def test_pairs_carry_segment_ids(tmp_path: Path, tiny_model_dir: Path) -> None:
    clean = _clean(tmp_path, pair=True)
    tokenise_splits(clean, tiny_model_dir, tmp_path / "out", tmp_path / "cache", TokeniseConfig(), TASK)
    rows = pq.read_table(tmp_path / "out" / "test.parquet").to_pydict()
    assert set(rows["token_type_ids"][0]) == {0, 1}
