"""Inference side by side on SST-2 dev sentences: torch eager vs ONNX Runtime on the plain export (fp32) vs the
optimised graph (fused Attention, SkipLayerNormalization, BiasGelu) vs INT8 (dynamic, on the fused graph), and which
of them the export stage serves (its INT8 gate).

Every ONNX variant runs through the pipeline's serving runtime (OnnxTextClassifier: the input tokenised once,
batches of similar length, results back in input order: what `nlpops predict --file` does, batch 32); torch eager
gets the same tokenisation and the same batches and runs the fine-tuned model under inference_mode. One process,
interleaved: every repeat runs each variant once, in rotating order; medians are reported. Measured:
- rows/s at batch 32, rows in file order and sorted by length (tokenisation included);
- batch-1 latency p50/p95 (one sentence per call; each round gives every variant the same sentence);
- accuracy on the dev rows, and each variant's agreement with torch.

The graphs come from the pipeline's own functions (export_model_to_onnx, fuse_transformer_ops, quantise_int8); the
served choice and its gate figures from export_onnx itself (the export stage's defaults). Without --model-dir the
script first fine-tunes the bundled MiniLM briefly through the pipeline's train_model (--train-rows, one epoch).

    nice -n 5 .venv/bin/python benchmarks/inference.py                       # fine-tune (2,000 rows), then measure
    nice -n 5 .venv/bin/python benchmarks/inference.py --model-dir artifacts/model
    .venv/bin/python benchmarks/inference.py --smoke                          # tiny random BERT, seconds
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def shared_data() -> Path:
    """$NLPOPS_SHARED_DATA, else ../shared/data next to the project (for a git worktree: next to its main
    checkout)."""
    if os.environ.get("NLPOPS_SHARED_DATA"):
        return Path(os.environ["NLPOPS_SHARED_DATA"])
    candidates = [ROOT.parent / "shared" / "data"]
    done = subprocess.run(["git", "rev-parse", "--git-common-dir"], cwd=ROOT, capture_output=True, text=True)
    if done.returncode == 0 and done.stdout.strip():
        candidates.append((ROOT / done.stdout.strip()).resolve().parent.parent / "shared" / "data")
    return next((path for path in candidates if path.is_dir()), candidates[0])


SST2 = shared_data() / "sst2"
RESULTS = ROOT / "benchmarks" / "results"
BATCH = 32
TARGET_SPEEDUP, TARGET_DROP_POINTS, TARGET_P50_MS = 2.5, 0.5, 4.0

Predict = Callable[[list[str], int, bool], np.ndarray]  # (texts, batch size, sort by length) -> logits


@dataclass
class Variant:
    name: str
    label: str
    predict: Predict
    same_as: str = ""  # the variant whose graph this one runs (other session settings): same predictions
    timings: dict[str, list[float]] = field(default_factory=dict)  # measure -> per-repeat values


# ---------------------------------------------------------------------------------------------- models and data


def read_sst2(path: Path, rows: int | None = None) -> pd.DataFrame:
    """SST-2 TSV (header sentence<TAB>label) as the pipeline's clean frame: text, label."""
    frame = pd.read_csv(path, sep="\t", quoting=3, keep_default_na=False)
    frame = frame.rename(columns={"sentence": "text"})[["text", "label"]].astype({"text": str, "label": "int64"})
    return frame.head(rows) if rows else frame


def fine_tune(train_tsv: Path, rows: int, out_dir: Path, work: Path) -> Path:
    """The bundled MiniLM fine-tuned for one epoch on `rows` SST-2 train rows by the pipeline's train_model
    (its defaults: length-grouped batches of 32, AdamW 5e-5); 500 other train rows validate."""
    from pipelines.config import ModelConfig, TokeniseConfig, TrainConfig
    from pipelines.pretrained import bundled_model_path, quiet_transformers
    from pipelines.tasks import get_task
    from pipelines.tokenise import tokenise_splits
    from pipelines.train import train_model

    quiet_transformers()
    frame = read_sst2(train_tsv).sample(n=rows + 500, random_state=0)
    clean = work / "clean"
    clean.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", frame.head(rows)), ("validation", frame.tail(500)), ("test", frame.tail(500))):
        part.to_parquet(clean / f"{name}.parquet", index=False)
    task = get_task("text_classification")
    model_path = bundled_model_path()
    tokenise_splits(clean, model_path, work / "tok", work / "cache", TokeniseConfig(max_length=128), task)
    cfg = TrainConfig(epochs=1, batch_size=BATCH, seed=42, early_stopping_patience=0)
    started = time.perf_counter()
    train_model(work / "tok", {0: "negative", 1: "positive"}, model_path, out_dir, cfg, ModelConfig(), task, 0)
    print(f"fine-tuned MiniLM on {rows} SST-2 rows in {time.perf_counter() - started:.0f} s -> {out_dir}", flush=True)
    return out_dir


def tiny_model(out_dir: Path) -> tuple[Path, pd.DataFrame]:
    """A tiny random BERT classifier (built here, no download) and synthetic labelled sentences: --smoke."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["the", "film", "was", "really", "good", "bad", "awful", "fun", "plot", "and", "acting", "dull"]
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]
    tokenizer = BertTokenizerFast(vocab={token: i for i, token in enumerate(vocab)}, do_lower_case=True)
    tokenizer.save_pretrained(out_dir)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=48,
        max_position_embeddings=128,
        num_labels=2,
    )
    import torch

    torch.manual_seed(0)
    BertForSequenceClassification(config).save_pretrained(out_dir)
    rng = random.Random(0)
    texts = [" ".join(rng.choices(words, k=rng.randint(2, 30))) for _ in range(96)]
    return out_dir, pd.DataFrame({"text": texts, "label": [rng.randint(0, 1) for _ in texts]})


@contextlib.contextmanager
def export_reused(plain: Path) -> Iterator[None]:
    """Inside: export_onnx's torch export step copies `plain` (the same model's export, made a moment before)
    instead of exporting again; everything after it (fusion, parity, INT8 gate, latency) runs as in the stage."""
    import pipelines.export_onnx as stage

    original = stage.export_model_to_onnx

    def copy(spec: Any, onnx_path: Path, opset: int) -> list[str]:
        shutil.copyfile(plain, onnx_path)
        return list(spec.input_names)

    stage.export_model_to_onnx = copy
    try:
        yield
    finally:
        stage.export_model_to_onnx = original


def build_graphs(model_dir: Path, gate_frame: pd.DataFrame, work: Path, max_length: int) -> dict[str, Any]:
    """The plain export, its fused and INT8 versions (pipeline functions), and the export stage's own result on
    the same model (served graph + parity.json, the torch export step reused) in work/served."""
    from pipelines.config import ExportConfig, Params
    from pipelines.export_onnx import export_model_to_onnx, export_onnx, load_model_and_tokenizer
    from pipelines.onnx_optimise import fuse_transformer_ops, quantise_int8
    from pipelines.tasks import get_task

    params = Params.model_validate({"data": {"path": "-"}, "tokenise": {"max_length": max_length}})
    task = get_task(params)
    model, tokenizer = load_model_and_tokenizer(model_dir, task)
    graphs = {"plain": work / "plain.onnx", "fused": work / "fused.onnx", "int8": work / "int8.onnx"}
    export_model_to_onnx(task.export_spec(model, tokenizer), graphs["plain"], params.export.opset)
    gate_frame.to_parquet(work / "test.parquet", index=False)
    started = time.perf_counter()
    with export_reused(graphs["plain"]):
        parity = export_onnx(model_dir, work / "test.parquet", work / "served", ExportConfig(), task)
    export_seconds = time.perf_counter() - started
    fused_ops = fuse_transformer_ops(graphs["plain"], graphs["fused"])
    quantise_int8(graphs["fused"], graphs["int8"])
    return {
        "task": task,
        "model": model,
        "tokenizer": tokenizer,
        "graphs": graphs,
        "parity": parity,
        "export_seconds": export_seconds,
        "fused_ops": fused_ops,
    }


def fusion_statistics(graphs: dict[str, Path], model: Any) -> dict[str, Any]:
    """onnxruntime's own view (get_fused_operator_statistics) of each graph, and what onnxruntime's transformer
    optimiser alone makes of the plain export (for comparison: it matches no Attention in a dynamo export)."""
    import onnx
    from onnxruntime.transformers.onnx_model_bert import BertOnnxModel
    from onnxruntime.transformers.optimizer import optimize_model

    from pipelines.serving import quiet

    heads, hidden = int(model.config.num_attention_heads), int(model.config.hidden_size)

    def stats(onnx_model: Any) -> dict[str, int]:
        found = BertOnnxModel(onnx_model, heads, hidden).get_fused_operator_statistics()
        return {op: int(n) for op, n in sorted(found.items()) if n}

    out = {name: stats(onnx.load(str(path))) for name, path in graphs.items()}
    with quiet():
        optimised = optimize_model(str(graphs["plain"]), model_type="bert", num_heads=heads, hidden_size=hidden)
    out["plain + onnxruntime.transformers.optimizer"] = stats(optimised.model)
    return out


# ---------------------------------------------------------------------------------------------- the variants


def torch_variant(model: Any, tokenizer: Any, max_length: int, threads: int) -> Variant:
    """Torch eager on the fine-tuned model: the runtime's tokenisation and batches, inference_mode."""
    import torch

    from pipelines.serving import length_batches, pad_rows, tokenise_rows

    if threads:
        torch.set_num_threads(threads)
    names = ["input_ids", "attention_mask", "token_type_ids"]

    def predict(texts: list[str], batch_size: int, by_length: bool) -> np.ndarray:
        rows = tokenise_rows(tokenizer, texts, None, max_length, names)
        logits = np.zeros((len(texts), int(model.config.num_labels)), dtype=np.float32)
        for index in length_batches([len(r) for r in rows["input_ids"]], batch_size, by_length):
            feeds = pad_rows(tokenizer, rows, index)
            with torch.inference_mode():
                logits[index] = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
        return logits

    return Variant("torch", "torch eager", predict)


def ort_variant(name: str, label: str, export_dir: Path, graph: Path, session: Any = None) -> Variant:
    """An ONNX graph served by the pipeline's runtime (export_dir's tokenizer and serving.json)."""
    from pipelines.serving import load_runtime, ort_session

    runtime = load_runtime(export_dir, session=session or ort_session(graph))

    def predict(texts: list[str], batch_size: int, by_length: bool) -> np.ndarray:
        runtime.sort_by_length = by_length
        return runtime.predict_logits(texts, batch_size=batch_size)

    return Variant(name, label, predict)


def settings_variants(export_dir: Path, graph: Path) -> list[Variant]:
    """The fused graph under other ORT session settings (--ort-settings): 1 intra-op thread; no spinning."""
    import onnxruntime as ort

    from pipelines.serving import ort_session

    no_spin = ort.SessionOptions()
    no_spin.log_severity_level = 3
    no_spin.add_session_config_entry("session.intra_op.allow_spinning", "0")
    spinless = ort.InferenceSession(str(graph), sess_options=no_spin, providers=["CPUExecutionProvider"])
    variants = [
        ort_variant("fused_1thread", "ORT fused, 1 thread", export_dir, graph, ort_session(graph, threads=1)),
        ort_variant("fused_nospin", "ORT fused, no spinning", export_dir, graph, spinless),
    ]
    for variant in variants:
        variant.same_as = "ort_fused"
    return variants


# ---------------------------------------------------------------------------------------------- measurements


def rotated(variants: list[Variant], turn: int) -> list[Variant]:
    shift = turn % len(variants)
    return variants[shift:] + variants[:shift]


def measure_throughput(variants: list[Variant], texts: list[str], repeats: int) -> None:
    """rows/s (wall) and rows per CPU-second at batch 32, file order and sorted, each variant once per repeat."""
    for turn in range(repeats):
        for by_length in (False, True):
            key = "sorted" if by_length else "file"
            for variant in rotated(variants, turn):
                wall, cpu = time.perf_counter(), time.process_time()
                variant.predict(texts, BATCH, by_length)
                wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
                variant.timings.setdefault(f"rows_per_s_{key}", []).append(len(texts) / wall)
                variant.timings.setdefault(f"rows_per_cpu_s_{key}", []).append(len(texts) / max(cpu, 1e-9))
        print(f"  throughput repeat {turn + 1}/{repeats} done", flush=True)


def measure_latency(variants: list[Variant], texts: list[str], runs: int, block: int = 25) -> None:
    """Batch-1 wall time per call (ms): `runs` calls per variant in blocks of `block` consecutive calls, the
    variants taking turns block by block (rotating order); the first 3 calls of a block are warm-up and not
    counted (the previous variant's idle thread pool may still be spinning: per-call turns would time that).
    Every variant gets the same sentences."""
    for start in range(0, runs, block):
        chosen = [texts[i % len(texts)] for i in range(start, min(start + block, runs))]
        for variant in rotated(variants, start // block):
            for text in chosen[:3]:
                variant.predict([text], 1, True)
            for text in chosen:
                began = time.perf_counter()
                variant.predict([text], 1, True)
                variant.timings.setdefault("latency_ms", []).append((time.perf_counter() - began) * 1000.0)


def measure_accuracy(variants: list[Variant], frame: pd.DataFrame) -> dict[str, np.ndarray]:
    """Each variant's predicted labels on the dev rows (sorted batches of 64: the fastest way through). Variants
    that only change session settings of another graph (`same_as`) reuse its labels."""
    texts = frame["text"].tolist()
    labels = {v.name: v.predict(texts, 64, True).argmax(axis=1) for v in variants if not v.same_as}
    return {v.name: labels[v.same_as or v.name] for v in variants}


def summarise(variants: list[Variant], predictions: dict[str, np.ndarray], labels: np.ndarray) -> list[dict]:
    base = variants[0]
    base_file = float(np.median(base.timings["rows_per_s_file"]))
    base_sorted = float(np.median(base.timings["rows_per_s_sorted"]))
    rows = []
    for v in variants:
        t = {k: float(np.median(vals)) for k, vals in v.timings.items() if k != "latency_ms"}
        latency = np.asarray(v.timings["latency_ms"])
        rows.append(
            {
                "variant": v.name,
                "label": v.label,
                **t,
                "speedup_file_vs_torch_file": t["rows_per_s_file"] / base_file,
                "speedup_sorted_vs_torch_file": t["rows_per_s_sorted"] / base_file,
                "speedup_sorted_vs_torch_sorted": t["rows_per_s_sorted"] / base_sorted,
                "latency_p50_ms": float(np.percentile(latency, 50)),
                "latency_p95_ms": float(np.percentile(latency, 95)),
                "accuracy": float((predictions[v.name] == labels).mean()),
                "agreement_with_torch": float((predictions[v.name] == predictions[base.name]).mean()),
                "repeats": {k: [float(x) for x in vals] for k, vals in v.timings.items() if k != "latency_ms"},
            }
        )
    return rows


def print_table(rows: list[dict], served: str) -> None:
    head = (
        f"{'variant':<26}{'file r/s':>9}{'sorted r/s':>11}{'x file':>8}{'x sorted':>9}{'x like':>8}"
        f"{'b1 p50':>8}{'b1 p95':>8}{'accuracy':>10}{'agree':>8}"
    )
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        mark = " *" if r["variant"] == served else ""
        print(
            f"{(r['label'] + mark):<26}{r['rows_per_s_file']:>9.1f}{r['rows_per_s_sorted']:>11.1f}"
            f"{r['speedup_file_vs_torch_file']:>8.2f}{r['speedup_sorted_vs_torch_file']:>9.2f}"
            f"{r['speedup_sorted_vs_torch_sorted']:>8.2f}{r['latency_p50_ms']:>8.2f}{r['latency_p95_ms']:>8.2f}"
            f"{r['accuracy']:>10.4f}{r['agreement_with_torch']:>8.4f}"
        )
    print(
        "x file / x sorted: rows/s in file order / sorted, over torch eager in file order; x like: sorted over torch "
        "sorted; b1: batch-1 ms; * = the graph the export stage serves"
    )


def plot(rows: list[dict], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [r["label"] for r in rows]
    x = np.arange(len(rows))
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    left.bar(x - 0.2, [r["rows_per_s_file"] for r in rows], 0.4, label="file order")
    left.bar(x + 0.2, [r["rows_per_s_sorted"] for r in rows], 0.4, label="sorted by length")
    left.axhline(TARGET_SPEEDUP * rows[0]["rows_per_s_file"], color="grey", ls="--", lw=1, label="2.5x torch (file)")
    left.set_ylabel(f"rows/s, batch {BATCH}")
    left.legend(fontsize=8)
    right.bar(x, [r["latency_p50_ms"] for r in rows], 0.6, color="tab:green")
    right.axhline(TARGET_P50_MS, color="grey", ls="--", lw=1, label="4 ms target")
    right.set_ylabel("batch-1 latency p50, ms")
    right.legend(fontsize=8)
    for axis in (left, right):
        axis.set_xticks(x, labels, rotation=20, ha="right", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", type=Path, help="a fine-tuned model folder (a run's artifacts/model)")
    parser.add_argument("--train", type=Path, default=SST2 / "train.tsv")
    parser.add_argument("--dev", type=Path, default=SST2 / "dev.tsv")
    parser.add_argument("--train-rows", type=int, default=2000, help="fine-tuning rows without --model-dir")
    parser.add_argument("--keep-model", type=Path, help="where to keep the fine-tuned model (reuse: --model-dir)")
    parser.add_argument("--rows", type=int, default=1024, help="dev rows timed (file order: the first ones)")
    parser.add_argument("--accuracy-rows", type=int, default=0, help="dev rows scored (0 = all)")
    parser.add_argument("--gate-rows", type=int, default=1000, help="dev rows the export stage's INT8 gate scores")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--latency-runs", type=int, default=200)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch and ORT intra-op threads (0: defaults)")
    parser.add_argument("--ort-settings", action="store_true", help="add the fused graph with 1 thread / no spin")
    parser.add_argument(
        "--out",
        type=Path,
        help="results JSON (+ PNG next to it); default "
        + str(RESULTS / "inference.json")
        + ", with --smoke a temp file",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny random BERT and synthetic rows: seconds")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Missing files are one line and exit status 2, not a traceback."""
    needed = [] if args.smoke else [args.dev] + ([] if args.model_dir else [args.train])
    missing = [str(p) for p in needed if not Path(p).is_file()]
    if args.model_dir and not args.smoke and not (args.model_dir / "config.json").is_file():
        missing.append(f"{args.model_dir}/config.json (a trained model folder)")
    if missing:
        raise SystemExit(f"inference benchmark: not found: {', '.join(missing)} (SST-2 lives in ../shared/data/sst2)")
    if args.out is None:
        args.out = Path(tempfile.gettempdir()) / "inference-smoke.json" if args.smoke else RESULTS / "inference.json"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    check_inputs(args)
    from pipelines.pretrained import quiet_transformers

    quiet_transformers()
    if args.threads:
        os.environ["NLPOPS_ORT_THREADS"] = str(args.threads)
    load_before = os.getloadavg()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nlpops-bench-inference-") as tmp:
        work = Path(tmp)
        if args.smoke:
            model_dir, dev = tiny_model(work / "tiny")
            args.rows, args.repeats, args.latency_runs = min(args.rows, 64), 1, 5
        else:
            dev = read_sst2(args.dev)
            model_dir = args.model_dir or fine_tune(
                args.train, args.train_rows, args.keep_model or work / "model", work / "finetune"
            )
        scored = dev.head(args.accuracy_rows) if args.accuracy_rows else dev
        built = build_graphs(model_dir, dev.head(args.gate_rows), work, args.max_length)
        parity, graphs, served_dir = built["parity"], built["graphs"], work / "served"
        variants = [
            torch_variant(built["model"], built["tokenizer"], args.max_length, args.threads),
            ort_variant("ort_fp32", "ORT fp32 (plain export)", served_dir, graphs["plain"]),
            ort_variant("ort_fused", "ORT fused fp32", served_dir, graphs["fused"]),
            ort_variant("ort_int8", "ORT fused INT8", served_dir, graphs["int8"]),
        ]
        if args.ort_settings:
            variants += settings_variants(served_dir, graphs["fused"])
        served = "ort_int8" if parity["graph"]["precision"] == "int8" else "ort_fused"
        texts = dev["text"].head(args.rows).tolist()
        print(f"timing {len(texts)} rows x {args.repeats} repeats, {args.latency_runs} batch-1 runs", flush=True)
        measure_throughput(variants, texts, args.repeats)
        measure_latency(variants, texts, args.latency_runs)
        print(f"scoring {len(scored)} dev rows per variant", flush=True)
        rows = summarise(variants, measure_accuracy(variants, scored), scored["label"].to_numpy())
        fusion = fusion_statistics(graphs, built["model"])
    print_table(rows, served)
    by_name = {r["variant"]: r for r in rows}
    fp32_accuracy = by_name["ort_fused"]["accuracy"]
    result = {
        "benchmark": "inference",
        "smoke": bool(args.smoke),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "load_average_before": list(load_before),
            "load_average_after": list(os.getloadavg()),
        },
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "model_dir": str(model_dir),
        "timed_rows": len(texts),
        "scored_rows": len(scored),
        "batch_size": BATCH,
        "fused_ops": built["fused_ops"],
        "fused_operator_statistics": fusion,
        "export_stage": {
            "seconds": built["export_seconds"],
            "graph": parity["graph"],
            "int8_gate": parity.get("int8"),
            "parity_max_abs_diff": parity["max_abs_diff"],
            "parity_rows": parity["rows"],
            "latency_p50_ms": parity.get("latency_p50_ms"),
        },
        "served_variant": served,
        "results": rows,
        "targets": {
            "served_sorted_vs_torch_file": by_name[served]["speedup_sorted_vs_torch_file"],
            "speedup_target": TARGET_SPEEDUP,
            "served_accuracy_drop_points": (fp32_accuracy - by_name[served]["accuracy"]) * 100.0,
            "drop_target_points": TARGET_DROP_POINTS,
            "served_batch1_p50_ms": by_name[served]["latency_p50_ms"],
            "p50_target_ms": TARGET_P50_MS,
        },
        "seconds": time.perf_counter() - started,
    }
    t = result["targets"]
    print(
        f"\nserved ({served}): {t['served_sorted_vs_torch_file']:.2f}x torch eager (target {TARGET_SPEEDUP}x), "
        f"accuracy drop {t['served_accuracy_drop_points']:.2f} points vs fp32 (target <= {TARGET_DROP_POINTS}), "
        f"batch-1 p50 {t['served_batch1_p50_ms']:.2f} ms (target <= {TARGET_P50_MS}); "
        f"fused ops {built['fused_ops']}; {result['seconds']:.0f} s in all"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2), encoding="utf-8")
    title = f"Inference, {'tiny random BERT (smoke)' if args.smoke else 'MiniLM on SST-2 dev'}; {os.cpu_count()} CPUs"
    plot(rows, args.out.with_suffix(".png"), title)
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return result


if __name__ == "__main__":
    main()
