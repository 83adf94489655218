"""Training speed: the pipeline's own training (`train_model` with its defaults) against the run_glue recipe.

Both train the same model on the same SST-2 rows for the same epochs with the same seed, in one process:

- **pipeline**: `train_model` with `TrainConfig()`'s defaults (length-grouped batches, fused AdamW, the top
  layer computing only the position the head reads, intra-op threads = usable idle cores with one inter-op
  thread, SDPA attention), epochs/seed/early stopping set equal for both;
- **run_glue**: the Hugging Face `run_glue.py` recipe: every batch padded to max_length 128, random batches of
  `--baseline-batch` rows, the full model in training (no first-token fast path); the same optimiser, schedule
  and thread settings.

Speed (samples/s, real and padded tokens/s) is the training loop's own timing (`train_samples_per_second` in the
epoch record: collate + forward + backward + clip + optimiser step, no validation). The run_glue recipe is ~20x
slower, so its speed is measured on `--baseline-steps` of its batches, in two halves run before and after the
pipeline's epoch (interleaved), and averaged. Its dev accuracy is that of the same recipe run over every row
(`--baseline-accuracy dynamic`, the default): the same random batches of the same rows with the same settings,
padded to each batch's longest row instead of 128. Padding changes only speed (attention masks out pad
positions; the weights after each step agree to float rounding, which `--smoke` checks with dropout off: the
dropout masks drawn for the wider tensors differ). `--baseline-accuracy padded` trains it padded to 128
throughout (about 40 minutes on 2 busy cores).

Achieved training FLOP/s counts 6 x N x real (non-pad) tokens per optimiser pass (2N forward, 4N backward),
where N = the weights of the encoder layers' Linear maps (L x (4h^2 + 2h*i): 10,616,832 for MiniLM-L6), i.e.
the non-embedding matrix parameters every token goes through. Not counted: embedding lookups, attention scores
and context (they grow with sequence length; ~4% of N's work at SST-2 lengths), pooler and classifier (once per
row), biases, norms, activations, optimiser. "% exec" counts instead the matrix FLOPs really executed: with the
text-classification fast path (`train.skip_unread_positions`) the top layer's query, attention-output and
feed-forward maps run for one position per row, so 6N per token overstates the work by ~16%. The GEMM peak is
`torch.matmul` on fp32 [T x h] @ [h x i] and [T x i] @ [i x h] (T = the token budget, else 1024), the faster of
the two, with the same thread count, measured in bursts before, between and after the runs (median of the
bursts; each burst the median of its repeats).

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/training.py              # ~10 min on 2 busy cores
    PYTHONPATH=$PWD .venv/bin/python benchmarks/training.py --smoke --model DIR --train T.tsv --dev D.tsv
    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/training.py --levers     # per-lever table instead
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `python benchmarks/training.py` from anywhere
from benchmarks.length_grouping import PadToMaxLength
from benchmarks.little_data import SST2
from pipelines.config import ModelConfig, TokeniseConfig, TrainConfig
from pipelines.pretrained import bundled_model_path, quiet_transformers
from pipelines.tasks import get_task
from pipelines.tokenise import tokenise_splits
from pipelines.train import read_tokenised_split, train_model, training_batches

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
ID2LABEL = {0: "negative", 1: "positive"}
SPEED_VAL_ROWS = 8  # speed-only runs validate on a handful of rows (their accuracy is not used)


# ------------------------------------------------------------------------------------------------ measuring


def gemm_gflops(tokens: int, hidden: int, inner: int, repeats: int = 7) -> float:
    """fp32 torch.matmul GFLOP/s on the model's two MLP shapes (the faster), median of `repeats` each."""
    import torch

    best = 0.0
    for k, n in ((hidden, inner), (inner, hidden)):
        a, b = torch.randn(tokens, k), torch.randn(k, n)
        a @ b  # warm-up: first-touch of the output, MKL's buffers
        times = []
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - started)
        best = max(best, 2 * tokens * k * n / statistics.median(times) / 1e9)
    return best


def counted_params(model_path: Path) -> tuple[int, dict[str, int]]:
    """N of the FLOP count: the encoder layers' Linear weights, L x (4h^2 + 2h*i) for a BERT-style encoder."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(model_path, local_files_only=True)
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    return layers * (4 * h * h + 2 * h * i), {"hidden": h, "intermediate": i, "layers": layers}


def executed_flops(dims: dict[str, int], tokens: float, rows: float, fast_path: bool) -> float:
    """The matrix FLOPs a run really executes: 6N per real token, less what the first-token fast path skips
    (the top layer's query, attention-output and feed-forward maps run for one position per row)."""
    h, i, layers = dims["hidden"], dims["intermediate"], dims["layers"]
    per_layer = 4 * h * h + 2 * h * i
    if not fast_path:
        return 6.0 * layers * per_layer * tokens
    return 6.0 * ((layers - 1) * per_layer + 2 * h * h) * tokens + 6.0 * (per_layer - 2 * h * h) * rows


def padded_tokens(lengths: list[int], batches: list[list[int]], fixed: int | None = None) -> int:
    return sum(len(b) * (fixed or max(lengths[i] for i in b)) for b in batches)


# ------------------------------------------------------------------------------------------------ data


def write_split(folder: Path, frames: dict[str, pd.DataFrame]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in frames.items():
        frame.rename(columns={"sentence": "text"})[["text", "label"]].astype({"label": "int64"}).to_parquet(
            folder / f"{name}.parquet"
        )


def prepare(root: Path, train: pd.DataFrame, dev: pd.DataFrame, model_path: Path, max_length: int) -> None:
    """root/full: validation = the dev rows (accuracy); root/speed: validation = a handful (speed-only runs)."""
    task = get_task("text_classification")
    for name, val in (("full", dev), ("speed", dev.head(SPEED_VAL_ROWS))):
        write_split(root / name / "clean", {"train": train, "validation": val, "test": val})
        tokenise_splits(
            root / name / "clean",
            model_path,
            root / name / "tok",
            root / name / "cache",
            TokeniseConfig(max_length=max_length),
            task,
        )


# ------------------------------------------------------------------------------------------------ recipes


def pipeline_config(args: argparse.Namespace) -> TrainConfig:
    """The pipeline's defaults; only what both recipes must share is set (epochs, seed, no early stopping)."""
    return TrainConfig(epochs=args.epochs, seed=args.seed, early_stopping_patience=0, num_threads=args.threads)


def baseline_config(args: argparse.Namespace, **extra: Any) -> TrainConfig:
    """run_glue: random batches of a fixed row count, every position of the top layer computed; optimiser,
    schedule and threads as the pipeline's."""
    base = pipeline_config(args).model_dump()
    base.update(
        batch_size=args.baseline_batch,
        length_grouping=False,
        batch_tokens=None,
        skip_unread_positions=False,
        **extra,
    )
    return TrainConfig(**base)


def train(root: Path, model_path: Path, cfg: TrainConfig, task: Any, model_cfg: ModelConfig | None = None) -> dict:
    """One train_model run; returns its last epoch record with the run's steps and threads."""
    val_frame = pd.read_parquet(root / "clean" / "validation.parquet")
    with tempfile.TemporaryDirectory(dir=root) as out:
        summary = train_model(
            root / "tok", ID2LABEL, model_path, Path(out) / "model", cfg, model_cfg or ModelConfig(), task, 0,
            val_frame=val_frame,
        )  # fmt: skip
    return {
        **summary["history"][-1],
        "steps": summary["steps"],
        "threads": summary["threads"],
        "fast_path": summary["fast_path"],
    }


def speed_row(
    name: str, records: list[dict], lengths: list[int], batches: list[list[int]], fixed: int | None, dims: dict
) -> dict[str, Any]:
    """Samples/s, tokens/s and FLOP/s over the steps the records ran (the first len(batches) steps)."""
    seconds = sum(r["train_loop_seconds"] for r in records)
    rows = sum(r["train_samples_per_second"] * r["train_loop_seconds"] for r in records)
    real = sum(r["train_tokens_per_second"] * r["train_loop_seconds"] for r in records)
    fast = bool(records[0]["fast_path"])
    return {
        "recipe": name,
        "steps_timed": sum(r["steps"] for r in records),
        "loop_seconds": seconds,
        "samples_per_second": rows / seconds,
        "real_tokens_per_second": real / seconds,
        "padded_tokens_per_second": padded_tokens(lengths, batches, fixed) / seconds,
        "padding_share": 1 - real / padded_tokens(lengths, batches, fixed),
        "achieved_gflops": executed_flops(dims, real, rows, False) / seconds / 1e9,
        "fast_path": records[0]["fast_path"],
        "executed_gflops": executed_flops(dims, real, rows, fast) / seconds / 1e9,
    }


# ------------------------------------------------------------------------------------------------ main run


def run(args: argparse.Namespace) -> dict[str, Any]:
    from pipelines.cpu import configure_threads

    quiet_transformers()
    model_path = Path(args.model) if args.model else bundled_model_path()
    n_params, dims = counted_params(model_path)
    flops_per_token = 6 * n_params
    train_df = pd.read_csv(args.train, sep="\t", quoting=3)
    train_df = train_df.sample(n=min(args.rows, len(train_df)), random_state=0)
    dev_df = pd.read_csv(args.dev, sep="\t", quoting=3).head(args.dev_rows)
    task = get_task("text_classification")
    padded_task = PadToMaxLength(args.max_length)
    threads_setting = args.threads
    # The pipeline's thread choice (train.num_threads empty: the idle usable cores), made once here and given to
    # both recipes and the GEMM bursts alike.
    args.threads = threads = configure_threads(args.threads)
    ours_cfg = pipeline_config(args).model_copy(update={"sparse_embedding_updates": args.sparse_embeddings})
    ours_model = ModelConfig(freeze_embeddings=args.freeze_embeddings)
    glue_cfg = baseline_config(args)
    started = time.time()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-training-") as tmp:
        root = Path(tmp)
        prepare(root, train_df, dev_df, model_path, args.max_length)
        lengths = read_tokenised_split(root / "full" / "tok" / "train.parquet")["length"]
        ours_batches = [b for e in range(1, args.epochs + 1) for b in training_batches(lengths, ours_cfg, e)]
        glue_batches = [b for e in range(1, args.epochs + 1) for b in training_batches(lengths, glue_cfg, e)]
        gemm_tokens = ours_cfg.batch_tokens or ours_cfg.batch_size * 16
        gemm: list[float] = [gemm_gflops(gemm_tokens, dims["hidden"], dims["intermediate"])]
        half = max(1, args.baseline_steps // 2)
        log(f"run_glue recipe, padded to {args.max_length}: {half} steps (speed)")
        glue_speed = [train(root / "speed", model_path, baseline_config(args, max_steps=half), padded_task)]
        gemm.append(gemm_gflops(gemm_tokens, dims["hidden"], dims["intermediate"]))
        log(f"pipeline: {len(ours_batches)} steps, {len(lengths)} rows x {args.epochs} epoch(s)")
        ours = train(root / "full", model_path, ours_cfg, task, ours_model)
        gemm.append(gemm_gflops(gemm_tokens, dims["hidden"], dims["intermediate"]))
        log(f"run_glue recipe, padded to {args.max_length}: {half} more steps (speed)")
        glue_speed.append(train(root / "speed", model_path, baseline_config(args, max_steps=half), padded_task))
        gemm.append(gemm_gflops(gemm_tokens, dims["hidden"], dims["intermediate"]))
        glue_acc = None
        if args.baseline_accuracy != "skip":
            padded = args.baseline_accuracy == "padded"
            log(f"run_glue recipe over every row ({'padded to 128' if padded else 'dynamic padding'}): accuracy")
            glue_acc = train(root / "full", model_path, glue_cfg, padded_task if padded else task)
            gemm.append(gemm_gflops(gemm_tokens, dims["hidden"], dims["intermediate"]))
        equivalence = padding_equivalence(root / "speed", model_path, args) if args.smoke else None
    peak = statistics.median(gemm)
    rows = [
        speed_row("pipeline", [ours], lengths, ours_batches, None, dims),
        speed_row("run_glue", glue_speed, lengths, glue_batches[: 2 * half], args.max_length, dims),
    ]
    rows[0]["dev_accuracy"] = ours["val_accuracy"]
    rows[1]["dev_accuracy"] = glue_acc["val_accuracy"] if glue_acc else None
    for row in rows:
        row["gemm_peak_gflops"] = peak
        row["percent_of_peak"] = 100 * row["achieved_gflops"] / peak
        row["executed_percent_of_peak"] = 100 * row["executed_gflops"] / peak
    ratio = rows[0]["samples_per_second"] / rows[1]["samples_per_second"]
    return {
        "benchmark": "training",
        "command": "benchmarks/training.py " + " ".join(args.argv),
        "machine": machine(threads),
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "seconds": round(time.time() - started, 1),
        "settings": {
            "rows": len(train_df),
            "dev_rows": len(dev_df),
            "epochs": args.epochs,
            "seed": args.seed,
            "max_length": args.max_length,
            "model": "bundled all-MiniLM-L6-v2" if not args.model else str(args.model),
            "pipeline": {**ours_cfg.model_dump(mode="json"), "model": ours_model.model_dump(mode="json")},
            "run_glue": {**glue_cfg.model_dump(mode="json"), "pad_to": args.max_length},
            "baseline_steps_timed": 2 * half,
            "baseline_accuracy": args.baseline_accuracy,
            "gemm_tokens": gemm_tokens,
            "threads": threads if threads_setting else f"{threads} (train.num_threads empty: picked at the start)",
        },
        "flop_count": {
            "per_real_token": flops_per_token,
            "counted_params": n_params,
            "what": "6 x N x real tokens; N = encoder layers' Linear weights L*(4h^2+2h*i)",
            **dims,
        },
        "gemm_bursts_gflops": gemm,
        "results": rows,
        "speedup_samples_per_second": ratio,
        "accuracy_delta": (rows[0]["dev_accuracy"] - rows[1]["dev_accuracy"]) if glue_acc else None,
        "padding_equivalence": equivalence,
        "targets": {
            "speedup_min": 12.0,
            "percent_of_peak_min": 80.0,
            "speedup_met": ratio >= 12.0,
            "accuracy_met": bool(glue_acc) and rows[0]["dev_accuracy"] >= rows[1]["dev_accuracy"],
            "peak_met": rows[0]["percent_of_peak"] >= 80.0,
        },
    }


def padding_equivalence(root: Path, model_path: Path, args: argparse.Namespace) -> dict[str, Any]:
    """With dropout off, the run_glue recipe padded to max_length and padded per batch end with the same
    weights (to float rounding): padding to 128 changes speed, not the model. Checked in --smoke only."""
    from safetensors.torch import load_file

    weights = []
    for task in (PadToMaxLength(args.max_length), get_task("text_classification")):
        with tempfile.TemporaryDirectory(dir=root) as out:
            cfg = baseline_config(args, max_steps=3)
            val = pd.read_parquet(root / "clean" / "validation.parquet")
            train_model(root / "tok", ID2LABEL, model_path, Path(out) / "m", cfg, ModelConfig(dropout=0.0), task, 0,
                        val_frame=val)  # fmt: skip
            weights.append(load_file(str(Path(out) / "m" / "model.safetensors")))
    diff = max(float((weights[0][k] - weights[1][k]).abs().max()) for k in weights[0])
    return {"steps": 3, "max_weight_diff": diff, "equal": diff <= 1e-4}


# ------------------------------------------------------------------------------------------------ levers

# Each lever changes one thing from the pipeline's defaults ("default": threads as `train.num_threads` empty picks
# them at the start of the lever run); "train"/"model" entries are params, the others hooks.
LEVERS: dict[str, dict[str, Any]] = {
    "default": {},
    "threads=1": {"train": {"num_threads": 1}},
    "threads=2": {"train": {"num_threads": 2}},
    "rows=32 (no token budget)": {"train": {"batch_tokens": None, "batch_size": 32}},
    "tokens=512": {"train": {"batch_tokens": 512, "batch_size": 256}},
    "tokens=1024": {"train": {"batch_tokens": 1024, "batch_size": 256}},
    "tokens=2048": {"train": {"batch_tokens": 2048, "batch_size": 256}},
    "AdamW foreach (not fused)": {"optimizer": "foreach"},
    "AdamW for-loop": {"optimizer": "for-loop"},
    "eager attention": {"attention": "eager"},
    "attention dropout 0 (flash SDPA)": {"attention": "no-dropout"},
    "no first-token fast path": {"train": {"skip_unread_positions": False}},
    "frozen embeddings": {"model": {"freeze_embeddings": True}},
    "sparse embedding rows (lazy AdamW)": {"train": {"sparse_embedding_updates": True}},
    "torch.compile": {"compile": True},
}


class Hooked:
    """The text-classification task with a lever's model changes (attention kind, compile) applied."""

    def __new__(cls, lever: dict[str, Any]) -> Any:
        base = type(get_task("text_classification"))

        class Task(base):  # type: ignore[misc, valid-type]
            def build_model(self, model_path: Path, id2label: dict[int, str], model_cfg: Any) -> Any:
                model = super().build_model(model_path, id2label, model_cfg)
                if lever.get("attention") == "eager":
                    model.set_attn_implementation("eager")
                if lever.get("attention") == "no-dropout":  # SDPA's fused CPU kernel takes no dropout
                    for module in model.modules():
                        if type(module).__name__.endswith("SelfAttention"):
                            module.dropout.p = 0.0
                return model

            def training_loss(self, model: Any, batch: dict[str, Any]) -> Any:
                if lever.get("compile"):
                    import torch

                    compiled = self.__dict__.setdefault("_compiled", torch.compile(model, dynamic=True))
                    return compiled(**batch).loss
                return super().training_loss(model, batch)

        return Task(get_task("text_classification").params)


def lever_run(root: Path, model_path: Path, args: argparse.Namespace, lever: dict[str, Any]) -> dict:
    """`args.lever_steps` steps of the pipeline with one lever changed; per-step times from the loop's own
    progress calls (after each optimiser step), so steps 2.. are timed without model loading or the first step."""
    import torch

    from pipelines import finetuning, progress

    train_kw = {"num_threads": args.threads, **lever.get("train", {}), "max_steps": args.lever_steps}
    cfg = TrainConfig(**{**pipeline_config(args).model_dump(), **train_kw})
    stamps: list[float] = []
    original_step, original_build = progress.training_step, finetuning.build_optimizer

    def stamp(*a: Any, **k: Any) -> None:
        stamps.append(time.perf_counter())
        original_step(*a, **k)

    def build(model: Any, train_cfg: TrainConfig) -> Any:
        groups = finetuning.parameter_groups(model, train_cfg)
        return torch.optim.AdamW(groups, lr=train_cfg.learning_rate, foreach=lever["optimizer"] == "foreach")

    progress.training_step = stamp  # type: ignore[assignment]
    if "optimizer" in lever:
        finetuning.build_optimizer = build  # type: ignore[assignment]
    try:
        record = train(root, model_path, cfg, Hooked(lever), ModelConfig(**lever.get("model", {})))
    finally:
        progress.training_step, finetuning.build_optimizer = original_step, original_build  # type: ignore[assignment]
    lengths = read_tokenised_split(root / "tok" / "train.parquet")["length"]
    batches = training_batches(lengths, cfg, 1)[: len(stamps)]
    seconds = stamps[-1] - stamps[0]
    return {
        "first_step_seconds": record["train_loop_seconds"] - seconds,  # the loop's time up to the first stamp
        "real_tokens_per_second": sum(lengths[i] for b in batches[1:] for i in b) / seconds,
        "samples_per_second": sum(len(b) for b in batches[1:]) / seconds,
        "padded_tokens_per_second": padded_tokens(lengths, batches[1:]) / seconds,
        "threads": record["threads"],
    }


def levers(args: argparse.Namespace) -> dict[str, Any]:
    """Each lever against the defaults on the same rows, interleaved over `--rounds` rounds; medians."""
    from pipelines.cpu import configure_threads

    quiet_transformers()
    model_path = Path(args.model) if args.model else bundled_model_path()
    n_params, dims = counted_params(model_path)
    names = [n.strip() for n in args.levers.split(",")] if args.levers != "all" else list(LEVERS)
    train_df = pd.read_csv(args.train, sep="\t", quoting=3).sample(n=args.rows, random_state=0)
    dev_df = pd.read_csv(args.dev, sep="\t", quoting=3).head(SPEED_VAL_ROWS)
    threads = configure_threads(args.threads)
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    gemm: list[float] = []
    with tempfile.TemporaryDirectory(prefix="bench-levers-") as tmp:
        root = Path(tmp)
        prepare(root, train_df, dev_df, model_path, args.max_length)
        tokens = pipeline_config(args).batch_tokens or 1024
        lever_run(root / "speed", model_path, args, {})  # warm-up: imports, allocator, first-call costs
        for round_ in range(args.rounds):
            gemm.append(gemm_gflops(tokens, dims["hidden"], dims["intermediate"]))
            for name in names:
                lever = LEVERS[name]
                runs[name].append(lever_run(root / "speed", model_path, args, lever))
                last = runs[name][-1]
                log(f"round {round_ + 1}: {name:<34} {last['real_tokens_per_second']:8.0f} real tok/s, "
                    f"{last['threads']} thread(s)")  # fmt: skip
    peak = statistics.median(gemm)
    table_rows = []
    for name in names:
        tok_s = statistics.median(r["real_tokens_per_second"] for r in runs[name])
        table_rows.append(
            {
                "lever": name,
                "real_tokens_per_second": tok_s,
                "samples_per_second": statistics.median(r["samples_per_second"] for r in runs[name]),
                "achieved_gflops": 6 * n_params * tok_s / 1e9,
                "percent_of_peak": 100 * 6 * n_params * tok_s / 1e9 / peak,
                "first_step_seconds": statistics.median(r["first_step_seconds"] for r in runs[name]),
                "runs": runs[name],
            }
        )
    base = table_rows[0]["real_tokens_per_second"]
    for row in table_rows:
        row["vs_first"] = row["real_tokens_per_second"] / base
    return {
        "benchmark": "training levers",
        "command": "benchmarks/training.py " + " ".join(args.argv),
        "machine": machine(threads),
        "settings": {"rows": args.rows, "steps_per_run": args.lever_steps, "rounds": args.rounds},
        "gemm_bursts_gflops": gemm,
        "gemm_peak_gflops": peak,
        "levers": table_rows,
    }


def machine(threads: int) -> dict[str, Any]:
    import torch

    from pipelines.cpu import usable_cores

    cpu = platform.processor()
    info = Path("/proc/cpuinfo")
    if info.is_file():
        names = [line.split(":", 1)[1].strip() for line in info.read_text().splitlines() if "model name" in line]
        cpu = names[0] if names else cpu
    return {"cpu": cpu, "usable_cores": usable_cores(), "threads": threads, "torch": torch.__version__}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------------ output


def table(result: dict[str, Any]) -> str:
    head = (
        f"{'recipe':<9} {'samples/s':>10} {'real tok/s':>11} {'padded tok/s':>13} {'GFLOP/s':>8} "
        f"{'GEMM peak':>10} {'% peak':>7} {'% exec':>7} {'dev acc':>8} {'ratio':>6}"
    )
    lines = [head, "-" * len(head)]
    base = result["results"][1]["samples_per_second"]
    for row in result["results"]:
        acc = f"{row['dev_accuracy']:.4f}" if row["dev_accuracy"] is not None else "-"
        lines.append(
            f"{row['recipe']:<9} {row['samples_per_second']:>10.2f} {row['real_tokens_per_second']:>11.0f} "
            f"{row['padded_tokens_per_second']:>13.0f} {row['achieved_gflops']:>8.2f} "
            f"{row['gemm_peak_gflops']:>10.2f} {row['percent_of_peak']:>6.1f}% "
            f"{row['executed_percent_of_peak']:>6.1f}% {acc:>8} "
            f"{row['samples_per_second'] / base:>5.2f}x"
        )
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["results"]
    names = [r["recipe"] for r in rows]
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6))
    bars = left.bar(names, [r["samples_per_second"] for r in rows], color=["tab:green", "tab:gray"])
    for bar, row in zip(bars, rows, strict=True):
        acc = f"acc {row['dev_accuracy']:.3f}" if row["dev_accuracy"] is not None else ""
        top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
        left.annotate(f"{row['samples_per_second']:.1f}/s\n{acc}", top, ha="center", va="bottom", fontsize=8)
    left.set_ylabel("training samples/s")
    left.set_title(f"{result['speedup_samples_per_second']:.1f}x samples/s")
    left.margins(y=0.25)
    right.bar(names, [r["percent_of_peak"] for r in rows], color=["tab:green", "tab:gray"])
    right.axhline(80, color="tab:red", linestyle="--", linewidth=1, label="target 80%")
    right.set_ylabel("% of fp32 GEMM peak (6N x real tokens)")
    right.set_title(f"GEMM peak {rows[0]['gemm_peak_gflops']:.1f} GFLOP/s, {result['machine']['threads']} threads")
    right.legend(fontsize=8)
    fig.suptitle(f"Training: {result['settings']['rows']} SST-2 rows, {result['settings']['epochs']} epoch, MiniLM")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=Path, default=SST2 / "train.tsv")
    parser.add_argument("--dev", type=Path, default=SST2 / "dev.tsv")
    parser.add_argument("--model", type=Path, default=None, help="model folder; default the bundled MiniLM")
    parser.add_argument("--rows", type=int, default=4000, help="SST-2 training rows (a seeded sample)")
    parser.add_argument("--dev-rows", type=int, default=2000, help="first rows of the dev file scored")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--max-length", type=int, default=128, help="run_glue's padding length")
    parser.add_argument("--baseline-batch", type=int, default=32, help="run_glue rows per batch")
    parser.add_argument("--baseline-steps", type=int, default=8, help="run_glue steps timed (two halves)")
    parser.add_argument("--baseline-accuracy", choices=("dynamic", "padded", "skip"), default="dynamic")
    parser.add_argument("--threads", type=int, default=None, help="train.num_threads; default the pipeline's")
    parser.add_argument(
        "--freeze-embeddings",
        action="store_true",
        help="the pipeline row with model.freeze_embeddings (no gradients or optimiser state for the embeddings)",
    )
    parser.add_argument(
        "--sparse-embeddings",
        action="store_true",
        help="the pipeline row with train.sparse_embedding_updates (AdamW on the embedding rows a batch used only)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny sizes (with --model a tiny BERT: seconds)")
    parser.add_argument("--levers", default=None, help="'all' or comma-separated LEVERS names: per-lever table")
    parser.add_argument("--lever-steps", type=int, default=6, help="steps per lever run (the first is not timed)")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds of the lever runs")
    parser.add_argument("--out", type=Path, default=None, help="JSON path; default benchmarks/results/")
    parser.add_argument("--plot", type=Path, default=None, help="PNG path; default next to --out")
    args = parser.parse_args(argv)
    args.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if args.smoke:
        args.rows, args.dev_rows, args.baseline_steps = min(args.rows, 96), min(args.dev_rows, 32), 2
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args.levers:
        result = levers(args)
        out = args.out or RESULTS / "training_levers.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nGEMM peak {result['gemm_peak_gflops']:.1f} GFLOP/s ({result['machine']['threads']} threads)")
        for row in result["levers"]:
            print(
                f"{row['lever']:<34} {row['real_tokens_per_second']:8.0f} real tok/s "
                f"{row['percent_of_peak']:5.1f}% of peak (6N)  {row['vs_first']:.2f}x  first step "
                f"{row['first_step_seconds']:.1f} s"
            )
        return result
    result = run(args)
    print()
    print(table(result))
    print(
        f"\nspeed-up {result['speedup_samples_per_second']:.2f}x samples/s; pipeline at "
        f"{result['results'][0]['percent_of_peak']:.1f}% of the fp32 GEMM peak; "
        f"GEMM bursts {', '.join(f'{g:.1f}' for g in result['gemm_bursts_gflops'])} GFLOP/s"
    )
    out = args.out or RESULTS / "training.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, args.plot or out.with_suffix(".png"))
    print(f"wrote {out}")
    return result


if __name__ == "__main__":
    main()
