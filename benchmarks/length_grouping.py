"""Side-by-side: length-grouped batches vs random dynamic padding vs padding to max_length (run_glue's default).

Same data, model, seed and hyper-parameters; one epoch each, in one process, so the ratios are comparable on
a noisy machine. Prints seconds, padded-token counts, dev accuracy and the speed-up ratios.

    .venv/bin/python benchmarks/length_grouping.py --rows 4000 --dev-rows 872
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.config import ModelConfig, TokeniseConfig, TrainConfig
from pipelines.pretrained import bundled_model_path
from pipelines.tasks import get_task
from pipelines.tasks.text_classification.task import TextClassification
from pipelines.tokenise import tokenise_splits
from pipelines.train import length_grouped_batches, random_batches, read_tokenised_split, train_model

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


class PadToMaxLength(TextClassification):
    """The classic recipe: every batch padded to max_length."""

    def __init__(self, max_length: int) -> None:
        super().__init__(get_task("text_classification").params)
        self.max_length = max_length

    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, Any]:
        import torch.nn.functional as F

        batch = super().collate(rows, pad_token_id)
        extra = self.max_length - batch["input_ids"].shape[1]
        for key, value in (("input_ids", pad_token_id), ("attention_mask", 0), ("token_type_ids", 0)):
            if key in batch:
                batch[key] = F.pad(batch[key], (0, extra), value=value)
        return batch


def padded_tokens(lengths: list[int], batches: list[list[int]], fixed: int | None = None) -> int:
    return sum(len(b) * (fixed or max(lengths[i] for i in b)) for b in batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=SST2 / "train.tsv")
    parser.add_argument("--dev", type=Path, default=SST2 / "dev.tsv")
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--dev-rows", type=int, default=872)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--modes", default="grouped,random,pad_max")
    args = parser.parse_args()

    from pipelines.pretrained import quiet_transformers

    quiet_transformers()
    train = pd.read_csv(args.train, sep="\t", quoting=3).sample(n=args.rows, random_state=0)
    dev = pd.read_csv(args.dev, sep="\t", quoting=3).head(args.dev_rows)
    model_path = bundled_model_path()
    task = get_task("text_classification")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "clean").mkdir()
        for name, frame in (("train", train), ("validation", dev), ("test", dev)):
            frame.rename(columns={"sentence": "text"})[["text", "label"]].astype({"label": "int64"}).to_parquet(
                root / "clean" / f"{name}.parquet"
            )
        tokenise_splits(
            root / "clean", model_path, root / "tok", root / "cache", TokeniseConfig(max_length=args.max_length), task
        )
        lengths = read_tokenised_split(root / "tok" / "train.parquet")["length"]
        results = {}
        for mode in args.modes.split(","):
            cfg = TrainConfig(
                epochs=1,
                batch_size=args.batch_size,
                length_grouping=(mode == "grouped"),
                seed=42,
                early_stopping_patience=0,
            )
            mode_task = PadToMaxLength(args.max_length) if mode == "pad_max" else task
            batches = (
                length_grouped_batches(lengths, cfg.batch_size, cfg.mega_batch_factor, cfg.seed + 1)
                if mode == "grouped"
                else random_batches(len(lengths), cfg.batch_size, cfg.seed + 1)
            )
            started = time.perf_counter()
            out = train_model(
                root / "tok", {0: "0", 1: "1"}, model_path, root / f"model-{mode}", cfg, ModelConfig(), mode_task, 0
            )
            seconds = out["history"][0]["epoch_seconds"]
            results[mode] = {
                "train_seconds": seconds,
                "total_seconds": time.perf_counter() - started,
                "padded_tokens": padded_tokens(lengths, batches, args.max_length if mode == "pad_max" else None),
                "dev_accuracy": out["history"][0]["val_accuracy"],
            }
            print(
                f"{mode:>8}: {seconds:7.1f} s/epoch  padded tokens {results[mode]['padded_tokens']:>9,}  "
                f"dev accuracy {results[mode]['dev_accuracy']:.3f}",
                flush=True,
            )
    real = sum(lengths)
    print(f"\nreal tokens {real:,}; rows {args.rows}; batch {args.batch_size}; max_length {args.max_length}")
    if "grouped" in results:
        for other in ("random", "pad_max"):
            if other in results:
                ratio = results[other]["train_seconds"] / results["grouped"]["train_seconds"]
                print(f"speed-up of length grouping over {other}: {ratio:.2f}x")


if __name__ == "__main__":
    main()
