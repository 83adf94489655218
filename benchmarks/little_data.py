"""Little data: the `little_data` recipe against the `default` recipe on a small stratified SST-2 slice.

For each seed: a stratified slice of `--rows` training rows and a disjoint stratified slice of `--val-rows`
validation rows (early stopping and best-epoch choice) from train.tsv, the first `--dev-rows` rows of dev.tsv
as the held-out test set (never used for any choice). Each config trains with the pipeline's own
`train_model` on the bundled MiniLM, then the kept best epoch is scored on dev. Same slices, same seed for
every config of a seed (paired comparison).

Configs: `default` = the shipped params.yaml training settings (recipe default, epochs 4, batch 16);
`little_data` = recipe little_data, batch 16, everything else left to the recipe. More with `--config
NAME:train.key=value,model.key=value` (repeatable) for exploring the recipe's values.

    PYTHONPATH=$PWD nice -n 10 .venv/bin/python benchmarks/little_data.py --rows 500 --seeds 1,2,3
    PYTHONPATH=$PWD .venv/bin/python benchmarks/little_data.py --rows 40 --val-rows 20 --dev-rows 40 --seeds 1 \
        --model tests-tiny-model/   # smoke run
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from pipelines.config import ModelConfig, TokeniseConfig, TrainConfig
from pipelines.pretrained import bundled_model_path
from pipelines.tasks import get_task
from pipelines.tokenise import tokenise_splits
from pipelines.train import (
    read_tokenised_split,
    stratified_subset,
    train_model,
)

HERE = Path(__file__).resolve().parent
# ../shared next to the checkout (/work/main) or next to the worktrees' folder (/work/wt/NAME).
SST2 = (
    next(
        (d for d in (HERE.parents[1] / "shared", HERE.parents[2] / "shared") if d.is_dir()),
        HERE.parents[1] / "shared",
    )
    / "data"
    / "sst2"
)
ID2LABEL = {0: "negative", 1: "positive"}
CONFIGS = {
    "default": {"train.recipe": "default", "train.epochs": 4, "train.batch_size": 16},
    "little_data": {"train.recipe": "little_data", "train.batch_size": 16},
}


def parse_config(text: str) -> tuple[str, dict[str, Any]]:
    name, _, body = text.partition(":")
    settings = {}
    for item in filter(None, body.split(",")):
        key, _, raw = item.partition("=")
        settings[key.strip()] = yaml.safe_load(raw)
    return name, settings


def slices(train: pd.DataFrame, rows: int, val_rows: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Disjoint stratified train and validation slices of train.tsv for this seed."""
    labels = train["label"].tolist()
    picked = stratified_subset(labels, rows + val_rows, seed)
    both = train.iloc[picked].reset_index(drop=True)
    train_idx = set(stratified_subset(both["label"].tolist(), rows, seed + 1000))
    mask = np.array([i in train_idx for i in range(len(both))])
    return both[mask], both[~mask]


def run_one(root: Path, model_path: Path, settings: dict[str, Any], seed: int, threads: int) -> dict[str, Any]:
    train_kw = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("train.")}
    model_kw = {k.split(".", 1)[1]: v for k, v in settings.items() if k.startswith("model.")}
    # Only these keys are set, so the recipe decides the rest (as for a params.yaml that leaves them out).
    train_cfg = TrainConfig(seed=seed, num_threads=threads, **train_kw)
    model_cfg = ModelConfig(**model_kw)
    task = get_task("text_classification")
    out_dir = root / "model"
    started = time.perf_counter()
    summary = train_model(root / "tok", ID2LABEL, model_path, out_dir, train_cfg, model_cfg, task, 0)
    wall = time.perf_counter() - started
    dev = read_tokenised_split(root / "tok" / "test.parquet")
    dev_frame = pd.read_parquet(root / "clean" / "test.parquet")
    predictions = task.predict(task.load_trained(out_dir), dev, dev_frame, 128, 0)
    accuracy = float((np.asarray(predictions.values) == np.asarray(dev_frame["label"])).mean())
    return {
        "dev_accuracy": accuracy,
        "best_epoch": summary["best_epoch"],
        "epochs_run": summary["epochs_run"],
        "val_best": summary["best_metric"]["value"],
        "train_seconds": summary["train_seconds"],
        "wall_seconds": round(wall, 2),
        "recipe": summary["recipe"],
        "recipe_applied": summary["recipe_applied"],
        "learning_rates": summary["learning_rates"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=SST2 / "train.tsv")
    parser.add_argument("--dev", type=Path, default=SST2 / "dev.tsv")
    parser.add_argument("--model", type=Path, default=None, help="model folder; default: the bundled MiniLM")
    parser.add_argument("--rows", type=int, default=500)
    parser.add_argument("--val-rows", type=int, default=200)
    parser.add_argument("--dev-rows", type=int, default=872)
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--configs", default="default,little_data", help="built-in configs to run")
    parser.add_argument("--config", action="append", default=[], help="NAME:train.key=value,model.key=value")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "little_data.json")
    parser.add_argument("--combine", type=Path, nargs="+", help="only merge these result files into --out")
    args = parser.parse_args()
    if args.combine:
        combine(args.combine, args.out)
        return

    from pipelines.pretrained import quiet_transformers

    quiet_transformers()
    configs = {name: CONFIGS[name] for name in filter(None, args.configs.split(","))}
    configs.update(parse_config(text) for text in args.config)
    train = pd.read_csv(args.train, sep="\t", quoting=3).rename(columns={"sentence": "text"})
    dev = pd.read_csv(args.dev, sep="\t", quoting=3).rename(columns={"sentence": "text"}).head(args.dev_rows)
    model_path = args.model or bundled_model_path()
    seeds = [int(s) for s in args.seeds.split(",")]
    results: dict[str, dict[str, Any]] = {name: {} for name in configs}
    for seed in seeds:
        train_slice, val_slice = slices(train, args.rows, args.val_rows, seed)
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            (root / "clean").mkdir()
            for split, frame in (("train", train_slice), ("validation", val_slice), ("test", dev)):
                frame[["text", "label"]].astype({"label": "int64"}).to_parquet(root / "clean" / f"{split}.parquet")
            tokenise_splits(
                root / "clean",
                model_path,
                root / "tok",
                root / "cache",
                TokeniseConfig(max_length=args.max_length),
                get_task("text_classification"),
            )
            for name, settings in configs.items():
                result = run_one(root, model_path, settings, seed, args.threads)
                results[name][str(seed)] = result
                partial = args.out.with_suffix(".partial.json")  # survives an interrupted run
                partial.parent.mkdir(parents=True, exist_ok=True)
                partial.write_text(json.dumps({"configs": configs, "results": results}, indent=2))
                print(
                    f"seed {seed} {name:>14}: dev accuracy {result['dev_accuracy']:.4f}  best epoch "
                    f"{result['best_epoch']}/{result['epochs_run']}  train {result['train_seconds']:.0f} s",
                    flush=True,
                )

    report = {
        "rows": args.rows,
        "val_rows": args.val_rows,
        "dev_rows": len(dev),
        "seeds": seeds,
        "threads": args.threads,
        "model": str(model_path),
        "configs": configs,
        "machine": platform.processor() or platform.machine(),
        "results": results,
    }
    write_report(report, args.out)


def write_report(report: dict[str, Any], out: Path) -> None:
    """Print the per-seed table with mean and std, add the summary to the report and write it as JSON."""
    results = report["results"]
    seeds = sorted({int(s) for per_seed in results.values() for s in per_seed})
    print(
        f"\n{report['rows']} training rows, {report['val_rows']} validation rows, first {report['dev_rows']} dev rows"
    )
    header = f"{'config':>14} | " + " | ".join(f"seed {s:>2}" for s in seeds) + " |   mean |   std | train s (mean)"
    print(header)
    print("-" * len(header))
    table = {}
    for name, per_seed in results.items():
        accs = [per_seed[str(s)]["dev_accuracy"] for s in seeds if str(s) in per_seed]
        secs = [per_seed[str(s)]["train_seconds"] for s in seeds if str(s) in per_seed]
        table[name] = {
            "seeds": len(accs),
            "mean": statistics.mean(accs),
            "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
            "train_seconds_mean": statistics.mean(secs),
        }
        cells = " | ".join(
            f"{per_seed[str(s)]['dev_accuracy']:7.4f}" if str(s) in per_seed else "      -" for s in seeds
        )
        print(
            f"{name:>14} | {cells} | {table[name]['mean']:.4f} | {table[name]['std']:.4f} | "
            f"{table[name]['train_seconds_mean']:.0f}"
        )
    report["summary"] = table
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")


def combine(files: list[Path], out: Path) -> None:
    """Merge the results of several runs (e.g. seeds run side by side) into one report."""
    reports = [json.loads(f.read_text()) for f in files]
    merged = {k: v for k, v in reports[0].items() if k not in ("results", "summary", "seeds", "configs")}
    merged["configs"], merged["results"] = {}, {}
    for report in reports:
        if (report["rows"], report["val_rows"], report["dev_rows"]) != (
            merged["rows"],
            merged["val_rows"],
            merged["dev_rows"],
        ):
            raise SystemExit(f"cannot combine runs with different rows/val_rows/dev_rows: {files}")
        merged["configs"].update(report["configs"])
        for name, per_seed in report["results"].items():
            merged["results"].setdefault(name, {}).update(per_seed)
    merged["seeds"] = sorted({int(s) for per_seed in merged["results"].values() for s in per_seed})
    write_report(merged, out)


if __name__ == "__main__":
    main()
