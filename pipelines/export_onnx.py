"""Export the fine-tuned classifier to ONNX and prove, on real test rows, that it computes what PyTorch computes.

Exporter: torch.onnx.export(dynamo=True) (torch.export-based, the default since torch 2.9). The legacy TorchScript
exporter traces transformers 5's attention-mask code into constants and gives logits off by ~1e-2 on padded batches;
the dynamo exporter matches to ~1e-8 with dynamic batch and sequence axes. Its console chatter (progress lines,
torchvision notices, deprecation warnings) is captured and only shown when the export fails.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

from pipelines.config import ExportConfig
from pipelines.errors import ModelLoadError, ParityError

CANDIDATE_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
FIRST_BATCH_SIZES = (1, 7)  # then the rest in batches of at most MAX_PARITY_BATCH: exercises the dynamic axes
MAX_PARITY_BATCH = 64
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf caps a single .onnx file at 2 GiB


@contextlib.contextmanager
def _captured():
    """Console output, warnings and log records below ERROR go to a buffer instead of the terminal."""
    from pipelines.serving import quiet

    buffer = io.StringIO()
    with quiet(), contextlib.redirect_stdout(buffer), contextlib.redirect_stderr(buffer):
        yield buffer


def load_model_and_tokenizer(model_dir: Path) -> tuple[Any, Any]:
    """The fine-tuned model in eval mode and its tokenizer; local files only, never remote code."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir}: no config.json, not a trained model folder")
    with _captured():
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            model = AutoModelForSequenceClassification.from_pretrained(
                model_dir, local_files_only=True, trust_remote_code=False
            )
        except Exception as exc:  # transformers raises many types for a broken folder
            raise ModelLoadError(f"{model_dir}: cannot load the model ({type(exc).__name__}: {exc})") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"{model_dir}: cannot load the tokenizer ({type(exc).__name__}: {exc})") from None
    return model.eval(), tokenizer


def onnx_input_names(model: Any, tokenizer: Any) -> list[str]:
    """input_ids, attention_mask, and token_type_ids when both the model's forward and the tokenizer use them."""
    import inspect

    accepted = set(inspect.signature(model.forward).parameters)
    produced = set(getattr(tokenizer, "model_input_names", CANDIDATE_INPUTS)) | {"input_ids", "attention_mask"}
    return [name for name in CANDIDATE_INPUTS if name in accepted and name in produced]


def parity_batch_sizes(rows: int) -> list[int]:
    """1, 7, then the rest in batches of at most MAX_PARITY_BATCH (e.g. 64 rows -> [1, 7, 56])."""
    sizes, left = [], rows
    for size in FIRST_BATCH_SIZES:
        if left <= 0:
            break
        sizes.append(min(size, left))
        left -= sizes[-1]
    while left > 0:
        sizes.append(min(MAX_PARITY_BATCH, left))
        left -= sizes[-1]
    return sizes


def _example_inputs(tokenizer: Any, input_names: list[str], pair: bool, max_length: int) -> tuple[Any, ...]:
    """Two rows of different lengths (so padding is present) as the tracing example."""
    import torch

    from pipelines.serving import encode

    texts = ["an example sentence that is a little longer than the other one", "short"]
    pairs = ["a second sentence for the pair", "ok"] if pair else None
    feeds = encode(tokenizer, texts, pairs, max_length, input_names)
    return tuple(torch.from_numpy(feeds[name]) for name in input_names)


def export_model_to_onnx(
    model: Any, tokenizer: Any, onnx_path: Path, opset: int, pair: bool, max_length: int
) -> list[str]:
    """Write onnx_path (inputs int64 [batch, sequence], output `logits` [batch, labels]); returns the input names."""
    import torch

    input_names = onnx_input_names(model, tokenizer)

    class LogitsOnly(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids=None):
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None:
                kwargs["token_type_ids"] = token_type_ids
            return self.inner(**kwargs).logits

    wrapper = LogitsOnly(model).eval()
    args = _example_inputs(tokenizer, input_names, pair, max_length)
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    dynamic_shapes = tuple({0: batch, 1: sequence} for _ in input_names)
    external = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with _captured() as log, torch.no_grad():
        try:
            program = torch.onnx.export(
                wrapper,
                args,
                input_names=input_names,
                output_names=["logits"],
                opset_version=opset,
                dynamo=True,
                dynamic_shapes=dynamic_shapes,
                optimize=True,
                verbose=False,
            )
            assert program is not None  # dynamo=True always returns an ONNXProgram
            program.save(str(onnx_path), external_data=external)
        except Exception as exc:
            raise RuntimeError(
                f"{onnx_path}: torch.onnx.export failed ({type(exc).__name__}: {exc})\nexporter output:\n"
                f"{log.getvalue()[-4000:]}"
            ) from exc
    import onnx

    onnx.checker.check_model(str(onnx_path), full_check=True)
    return input_names


def onnx_parity(
    onnx_path: Path,
    model: Any,
    tokenizer: Any,
    texts: list[str],
    text_pairs: list[str] | None,
    max_length: int,
    atol: float,
    batch_sizes: list[int] | None = None,
) -> dict[str, Any]:
    """Compare onnxruntime (CPU) and PyTorch logits batch by batch (each padded to its longest row).

    passed = max abs diff <= atol and identical argmax labels. Returns passed, max_abs_diff, atol, rows,
    label_mismatches, batch_sizes and seq_lengths (padded width of each batch).
    """
    import numpy as np
    import torch

    from pipelines.serving import OUTPUT_NAME, encode, ort_session

    session = ort_session(onnx_path)
    input_names = [i.name for i in session.get_inputs()]
    sizes = list(batch_sizes) if batch_sizes is not None else parity_batch_sizes(len(texts))
    if sum(sizes) != len(texts):
        raise ValueError(f"batch_sizes {sizes} do not add up to {len(texts)} rows")
    was_training = model.training
    model.eval()
    max_diff, mismatches, seq_lengths, start = 0.0, 0, [], 0
    try:
        for size in sizes:
            stop = start + size
            feeds = encode(
                tokenizer,
                texts[start:stop],
                text_pairs[start:stop] if text_pairs is not None else None,
                max_length,
                input_names,
            )
            with torch.inference_mode():
                expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.float().numpy()
            got = session.run([OUTPUT_NAME], feeds)[0]
            if got.shape != expected.shape:
                raise ParityError(f"{onnx_path}: ONNX logits shape {got.shape} != PyTorch {expected.shape}")
            max_diff = max(max_diff, float(np.abs(got.astype(np.float64) - expected).max(initial=0.0)))
            if not np.isfinite(got).all():
                max_diff = float("inf")
            mismatches += int((got.argmax(axis=-1) != expected.argmax(axis=-1)).sum())
            seq_lengths.append(int(feeds["input_ids"].shape[1]))
            start = stop
    finally:
        model.train(was_training)
    return {
        "passed": bool(max_diff <= atol and mismatches == 0),
        "max_abs_diff": max_diff,
        "atol": float(atol),
        "rows": len(texts),
        "label_mismatches": mismatches,
        "batch_sizes": sizes,
        "seq_lengths": seq_lengths,
    }


def onnx_latency(
    onnx_path: Path, tokenizer: Any, texts: list[str], text_pairs: list[str] | None, max_length: int, runs: int
) -> dict[str, Any]:
    """p50/p95 wall time (ms) of single-row onnxruntime calls on real test rows (tokenising included), after a
    short warm-up: what one online request costs. The gate bounds the p95 (gate.max_latency_ms)."""
    import time

    import numpy as np

    from pipelines.serving import OUTPUT_NAME, encode, ort_session

    if runs <= 0 or not texts:
        return {}
    session = ort_session(onnx_path)
    input_names = [i.name for i in session.get_inputs()]
    timings = []
    for i in range(runs + 3):
        j = i % len(texts)
        start = time.perf_counter()
        pair = text_pairs[j : j + 1] if text_pairs else None
        feeds = encode(tokenizer, texts[j : j + 1], pair, max_length, input_names)
        session.run([OUTPUT_NAME], feeds)
        if i >= 3:  # the first calls pay for allocations, not for the model
            timings.append((time.perf_counter() - start) * 1000.0)
    return {
        "latency_runs": len(timings),
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p95_ms": float(np.percentile(timings, 95)),
    }


def export_onnx(model_dir: Path, test_parquet: Path, out_dir: Path, cfg: ExportConfig, max_length: int) -> dict:
    """model.onnx + tokenizer/ + serving.json + parity.json in out_dir; ParityError if ONNX and PyTorch disagree."""
    import pandas as pd

    from pipelines.hashing import file_digest

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    frame = pd.read_parquet(test_parquet)
    if "text" not in frame.columns:
        raise ParityError(f"{test_parquet}: no 'text' column for the parity check")
    pair = "text_pair" in frame.columns
    rows = frame.head(cfg.parity_rows)
    if rows.empty:
        raise ParityError(f"{test_parquet}: no rows for the parity check")
    texts = rows["text"].astype(str).tolist()
    text_pairs = rows["text_pair"].astype(str).tolist() if pair else None

    model, tokenizer = load_model_and_tokenizer(model_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    input_names = export_model_to_onnx(model, tokenizer, onnx_path, cfg.opset, pair, max_length)

    shutil.rmtree(out_dir / "tokenizer", ignore_errors=True)  # no stale files from an earlier export
    with _captured():
        tokenizer.save_pretrained(out_dir / "tokenizer")  # the files AutoTokenizer needs, tokenizer.json included
    serving = {
        "max_length": int(max_length),
        "pair": pair,
        "input_names": input_names,
        "id2label": {str(int(i)): str(name) for i, name in sorted(model.config.id2label.items())},
        "opset": int(cfg.opset),
    }
    (out_dir / "serving.json").write_text(json.dumps(serving, indent=2), encoding="utf-8")

    parity = onnx_parity(onnx_path, model, tokenizer, texts, text_pairs, max_length, cfg.atol)
    parity.update(opset=int(cfg.opset), onnx_sha256=file_digest(onnx_path), onnx_bytes=onnx_path.stat().st_size)
    parity.update(onnx_latency(onnx_path, tokenizer, texts, text_pairs, max_length, cfg.latency_runs))
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2), encoding="utf-8")
    if not parity["passed"]:
        raise ParityError(
            f"{onnx_path}: parity failed: max abs diff {parity['max_abs_diff']:.3g} > atol {parity['atol']:g} "
            f"on {parity['rows']} rows ({parity['label_mismatches']} label mismatches)"
        )
    return {**parity, "onnx_path": str(onnx_path)}
