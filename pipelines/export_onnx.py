"""Export the fine-tuned model (the graph its task declares) to ONNX and prove, on real test inputs, that it computes
what PyTorch computes.

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
from pipelines.tasks.base import ExportSpec, Task

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


def load_model_and_tokenizer(model_dir: Path, task: Task) -> tuple[Any, Any]:
    """The fine-tuned model (the task's head) in eval mode and its tokenizer; local files only, never remote code."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file():
        raise ModelLoadError(f"{model_dir}: no config.json, not a trained model folder")
    with _captured():
        from transformers import AutoTokenizer

        model = task.load_trained(model_dir)
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


def export_model_to_onnx(spec: ExportSpec, onnx_path: Path, opset: int) -> list[str]:
    """Write onnx_path from the task's export spec (dynamic axes as it declares); returns the input names."""
    import torch

    dims: dict[str, Any] = {}
    dynamic_shapes = tuple(
        {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in spec.dynamic_axes[name].items()}
        for name in spec.input_names
    )
    external = sum(p.numel() * p.element_size() for p in spec.module.parameters()) > EXTERNAL_DATA_BYTES
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    with _captured() as log, torch.no_grad():
        try:
            program = torch.onnx.export(
                spec.module,
                spec.example_inputs,
                input_names=spec.input_names,
                output_names=spec.output_names,
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
    return list(spec.input_names)


def onnx_parity(
    onnx_path: Path, spec: ExportSpec, task: Task, feeds_list: list[dict[str, Any]], atol: float
) -> dict[str, Any]:
    """Compare onnxruntime (CPU) and PyTorch outputs batch by batch on real test inputs.

    passed = max abs diff <= atol on every output and the task decodes identical results (labels, tag sequences,
    answers...). Returns passed, max_abs_diff, atol, rows, label_mismatches, batch_sizes and seq_lengths.
    """
    import numpy as np
    import torch

    from pipelines import progress
    from pipelines.serving import ort_session

    session = ort_session(onnx_path)
    model = spec.module
    max_diff, mismatches, seq_lengths, sizes = 0.0, 0, [], []
    total = sum(int(f[spec.input_names[0]].shape[0]) for f in feeds_list)
    tracker = progress.Task("parity", total, "rows", "export")
    for feeds in feeds_list:
        with torch.inference_mode():
            expected = model(*(torch.from_numpy(feeds[name]) for name in spec.input_names))
        expected = [expected] if isinstance(expected, torch.Tensor) else list(expected)
        expected_np = [e.float().numpy() for e in expected]
        got = session.run(spec.output_names, feeds)
        for g, e in zip(got, expected_np, strict=True):
            if g.shape != e.shape:
                raise ParityError(f"{onnx_path}: ONNX output shape {g.shape} != PyTorch {e.shape}")
            max_diff = max(max_diff, float(np.abs(g.astype(np.float64) - e).max(initial=0.0)))
            if not np.isfinite(g).all():
                max_diff = float("inf")
        mismatches += task.outputs_disagree(expected_np, got, feeds)
        first = feeds[spec.input_names[0]]
        sizes.append(int(first.shape[0]))
        seq_lengths.append(int(first.shape[1]) if first.ndim > 1 else 1)
        tracker.advance(sizes[-1], max_abs_diff=max_diff)
    tracker.finish()
    return {
        "passed": bool(max_diff <= atol and mismatches == 0),
        "max_abs_diff": max_diff,
        "atol": float(atol),
        "rows": int(sum(sizes)),
        "label_mismatches": mismatches,
        "batch_sizes": sizes,
        "seq_lengths": seq_lengths,
    }


def onnx_latency(runtime: Any, items: list[Any], runs: int) -> dict[str, Any]:
    """p50/p95 wall time (ms) of single-item runtime calls on real test inputs (pre- and post-processing
    included), after a short warm-up: what one online request costs. The gate bounds the p95."""
    import time

    import numpy as np

    if runs <= 0 or not items:
        return {}
    from pipelines import progress

    timings = []
    tracker = progress.Task("latency", runs + 3, "calls", "export")
    for i in range(runs + 3):
        item = items[i % len(items)]
        start = time.perf_counter()
        runtime.predict([item], batch_size=1)
        if i >= 3:  # the first calls pay for allocations, not for the model
            timings.append((time.perf_counter() - start) * 1000.0)
        tracker.advance(1)
    tracker.finish(p95=f"{np.percentile(timings, 95):.2f} ms")
    return {
        "latency_runs": len(timings),
        "latency_p50_ms": float(np.percentile(timings, 50)),
        "latency_p95_ms": float(np.percentile(timings, 95)),
    }


def export_onnx(model_dir: Path, test_parquet: Path, out_dir: Path, cfg: ExportConfig, task: Task) -> dict:
    """model.onnx (and any further graph the task exports) + tokenizer/ + serving.json + parity.json in out_dir;
    ParityError if ONNX and PyTorch disagree. `test_parquet`: the clean split parity runs on (the task's
    spec.parity_split)."""
    import pandas as pd

    from pipelines.hashing import file_digest
    from pipelines.serving import load_runtime

    model_dir, out_dir = Path(model_dir), Path(out_dir)
    frame = pd.read_parquet(test_parquet)
    rows = frame.head(cfg.parity_rows)
    if rows.empty:
        raise ParityError(f"{test_parquet}: no rows for the parity check")

    model, tokenizer = load_model_and_tokenizer(model_dir, task)
    graphs = task.export_graphs(model, tokenizer)  # model.onnx first; an encoder-decoder adds its decoder step
    spec = graphs["model.onnx"]
    out_dir.mkdir(parents=True, exist_ok=True)
    onnx_path = out_dir / "model.onnx"
    from pipelines import progress

    progress.message(f"exporting the ONNX graph (opset {cfg.opset}, dynamic batch and sequence axes)", stage="export")
    input_names = export_model_to_onnx(spec, onnx_path, cfg.opset)
    for name, graph in graphs.items():
        if name != "model.onnx":
            export_model_to_onnx(graph, out_dir / name, cfg.opset)

    shutil.rmtree(out_dir / "tokenizer", ignore_errors=True)  # no stale files from an earlier export
    with _captured():
        tokenizer.save_pretrained(out_dir / "tokenizer")  # the files AutoTokenizer needs, tokenizer.json included
    serving = {**task.serving_config(model, tokenizer, spec), "opset": int(cfg.opset)}
    (out_dir / "serving.json").write_text(json.dumps(serving, indent=2), encoding="utf-8")

    parity = task.check_parity(out_dir, graphs, tokenizer, rows, cfg)
    if parity is None:
        parity = onnx_parity(onnx_path, spec, task, task.parity_feeds(tokenizer, rows, input_names), cfg.atol)
    parity.update(opset=int(cfg.opset), onnx_sha256=file_digest(onnx_path), onnx_bytes=onnx_path.stat().st_size)
    if len(graphs) > 1:
        parity["onnx_files"] = {name: file_digest(out_dir / name) for name in graphs}
    if parity["passed"]:
        parity.update(onnx_latency(load_runtime(out_dir), task.runtime_inputs(rows), cfg.latency_runs))
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2), encoding="utf-8")
    if not parity["passed"]:
        raise ParityError(
            f"{onnx_path}: parity failed: max abs diff {parity['max_abs_diff']:.3g} > atol {parity['atol']:g} "
            f"on {parity['rows']} rows ({parity['label_mismatches']} mismatched results)"
        )
    return {**parity, "onnx_path": str(onnx_path)}
