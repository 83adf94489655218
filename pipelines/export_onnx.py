"""Export the fine-tuned model (the graph its task declares) to ONNX and prove, on real test inputs, that it computes
what PyTorch computes.

Exporter: torch.onnx.export(dynamo=True) (torch.export-based, the default since torch 2.9). The legacy TorchScript
exporter traces transformers 5's attention-mask code into constants and gives logits off by ~1e-2 on padded batches;
the dynamo exporter matches to ~1e-8 with dynamic batch and sequence axes. Its console chatter (progress lines,
torchvision notices, deprecation warnings) is captured and only shown when the export fails.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
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


def needs_external_data(spec: ExportSpec) -> bool:
    """True when the weights are too large for one .onnx file (they go to a .data file next to it)."""
    return sum(p.numel() * p.element_size() for p in spec.module.parameters()) > EXTERNAL_DATA_BYTES


def export_model_to_onnx(spec: ExportSpec, onnx_path: Path, opset: int) -> list[str]:
    """Write onnx_path from the task's export spec (dynamic axes as it declares); returns the input names."""
    import torch

    dims: dict[str, Any] = {}
    dynamic_shapes = tuple(
        {axis: dims.setdefault(label, torch.export.Dim(label)) for axis, label in spec.dynamic_axes[name].items()}
        for name in spec.input_names
    )
    external = needs_external_data(spec)
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
    onnx_path: Path,
    spec: ExportSpec,
    task: Task,
    feeds_list: list[dict[str, Any]],
    atol: float,
    session: Any = None,
) -> dict[str, Any]:
    """Compare onnxruntime (CPU) and PyTorch outputs batch by batch on real test inputs.

    passed = max abs diff <= atol on every output and the task decodes identical results (labels, tag sequences,
    answers...). Returns passed, max_abs_diff, atol, rows, label_mismatches, batch_sizes and seq_lengths.
    `session`: an ORT session already open on onnx_path (the export stage goes on serving from it).
    """
    import numpy as np
    import torch

    from pipelines import progress
    from pipelines.serving import ort_session

    session = session or ort_session(onnx_path)
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


def optimise_graph(onnx_path: Path, cfg: ExportConfig, task: Task, external: bool) -> dict[str, Any]:
    """Fuse the transformer ops of onnx_path in place when export.optimise and the task allow it (a failed fusion
    keeps the plain export, with the reason). Returns parity.json's `graph` record: optimised, fused_ops (the
    com.microsoft operators, as onnxruntime's get_fused_operator_statistics counts them), precision, note."""
    from pipelines import progress
    from pipelines.onnx_optimise import fuse_transformer_ops

    record: dict[str, Any] = {"optimised": False, "fused_ops": {}, "precision": "fp32"}
    if not (cfg.optimise and task.onnx_fusion):
        record["note"] = "export.optimise is off" if not cfg.optimise else f"{task.name} graphs are served as exported"
        return record
    if external:
        record["note"] = "not fused: the weights are in an external data file"
        return record
    progress.message("fusing transformer ops (Attention, SkipLayerNormalization, BiasGelu)", stage="export")
    fused = onnx_path.with_name(f".fused-{onnx_path.name}")
    try:
        with _captured():
            counts = fuse_transformer_ops(onnx_path, fused)
    except Exception as exc:  # a rewriter failure costs speed, not the export
        fused.unlink(missing_ok=True)
        record["note"] = f"fusion failed, the plain export is served ({type(exc).__name__}: {exc})"[:500]
        return record
    os.replace(fused, onnx_path)
    record.update(optimised=True, fused_ops=counts)
    return record


def int8_gate(
    task: Task, fp32: Any, int8: Any, frame: Any, cfg: ExportConfig, id2label: dict[int, str]
) -> dict[str, Any]:
    """Score the fp32 and the INT8 runtime on the first export.int8_gate_rows rows of the parity split with the
    task's own `score` (the gate metric) and compare: parity.json's `int8` record (pipelines/onnx_optimise.py
    int8_figures). Agreement: the share of examples whose decoded result is identical."""
    from pipelines import progress
    from pipelines.onnx_optimise import int8_figures

    rows = frame.head(cfg.int8_gate_rows)
    items = task.runtime_inputs(rows)
    metric = task.params.gate_metric
    progress.message(f"INT8 gate: {metric} of fp32 and INT8 on {len(items)} rows", stage="export")
    base = task.predictions_from_runtime(fp32.predict(items), id2label)
    other = task.predictions_from_runtime(int8.predict(items), id2label)
    if base is None or other is None:
        return {"metric": metric, "rows": len(items), "passed": False, "note": "runtime outputs cannot be scored"}
    scores = [float(task.score(p, rows, id2label)[metric]) for p in (base, other)]
    same = [_same(a, b) for a, b in zip(base.values, other.values, strict=True)]
    agreement = sum(same) / len(same) if same else 1.0
    return int8_figures(metric, scores[0], scores[1], agreement, len(items), cfg.int8_max_drop)


def _same(a: Any, b: Any) -> bool:
    import numpy as np

    return bool(np.array_equal(np.asarray(a, dtype=object), np.asarray(b, dtype=object)))


def serve_int8_if_it_passes(
    out_dir: Path, runtime: Any, task: Task, frame: Any, cfg: ExportConfig, id2label: dict[int, str], why_not: str
) -> tuple[Any, dict[str, Any]]:
    """(the runtime to serve, parity.json's `int8` record). Quantises model.onnx (fused, fp32) to INT8 and runs
    the INT8 gate; when it passes, the INT8 graph replaces model.onnx. `why_not`: a reason to keep fp32 without
    trying (empty: try)."""
    from pipelines import progress
    from pipelines.onnx_optimise import quantise_int8
    from pipelines.serving import load_runtime, ort_session

    if why_not:
        return runtime, {"served": False, "note": why_not}
    onnx_path = out_dir / "model.onnx"
    candidate = out_dir / ".int8-model.onnx"
    progress.message("quantising to INT8 (dynamic, per-channel weights)", stage="export")
    try:
        try:
            quantise_int8(onnx_path, candidate)
            int8 = load_runtime(out_dir, session=ort_session(candidate))
        except Exception as exc:  # an op the quantiser or ORT cannot take: fp32 is served
            note = f"quantisation failed ({type(exc).__name__}: {exc})"[:500]
            return runtime, {"served": False, "passed": False, "note": note}
        record = int8_gate(task, runtime, int8, frame, cfg, id2label)
        record["served"] = bool(record["passed"])
        if record["served"]:
            os.replace(candidate, onnx_path)
            return int8, record
        return runtime, record
    finally:
        candidate.unlink(missing_ok=True)


def int8_gate_min_rows(cfg: ExportConfig) -> int:
    """Gate rows below which export.quantise auto does not try INT8: one changed row must fit in the allowed drop
    (100 / int8_max_drop rows: 200 for 0.5 points). With fewer, one row moves the metric by more than the drop
    allowed, so any single changed prediction fails the gate: quantising (~2 s for MiniLM) would buy nothing."""
    return math.ceil(100.0 / cfg.int8_max_drop) if cfg.int8_max_drop > 0 else 1


def _int8_skip_reason(cfg: ExportConfig, task: Task, external: bool, gate_rows: int) -> str:
    """Why the INT8 graph is not even tried ('' when it is)."""
    if cfg.quantise == "none":
        return "export.quantise is none"
    if not task.onnx_int8:
        return f"{task.name} is served in fp32"
    if external:
        return "not quantised: the weights are in an external data file"
    need = int8_gate_min_rows(cfg)
    if cfg.quantise == "auto" and gate_rows < need:
        return (
            f"not tried: the INT8 gate would score {gate_rows} rows, where one changed row moves the metric by "
            f"{100.0 / max(gate_rows, 1):.2f} points, more than export.int8_max_drop {cfg.int8_max_drop:g} "
            f"(export.quantise auto tries INT8 from {need} rows; int8 forces it)"
        )
    return ""


def export_onnx(
    model_dir: Path, test_parquet: Path, out_dir: Path, cfg: ExportConfig, task: Task, cache_dir: Path | None = None
) -> dict:
    """model.onnx (and any further graph the task exports) + tokenizer/ + serving.json + parity.json in out_dir;
    ParityError if ONNX and PyTorch disagree. `test_parquet`: the clean split parity runs on (the task's
    spec.parity_split).

    model.onnx is the graph served: the export with its transformer ops fused (export.optimise), and with INT8
    weights when they pass the INT8 gate (export.quantise). Parity against PyTorch (within export.atol) is checked
    on the fp32 graph; the INT8 graph is judged by the task metric against fp32 instead. One ORT session serves the
    parity check, the fp32 side of the INT8 gate and, when fp32 is served, the latency runs. parity.json records
    `graph` (optimised, fused_ops, precision, source: exported or cached) and `int8` (the gate's figures and
    decision). `cache_dir` (export.graph_cache): traced graphs reused for the same architecture
    (pipelines/onnx_cache.py); when parity fails on a reused graph, the graph is exported afresh and checked again."""
    import pandas as pd

    from pipelines.hashing import file_digest
    from pipelines.onnx_cache import GraphCache, graph_key
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
    shutil.rmtree(out_dir / "tokenizer", ignore_errors=True)  # no stale files from an earlier export
    with _captured():
        tokenizer.save_pretrained(out_dir / "tokenizer")  # the files AutoTokenizer needs, tokenizer.json included
    serving = {**task.serving_config(model, tokenizer, spec), "opset": int(cfg.opset)}
    (out_dir / "serving.json").write_text(json.dumps(serving, indent=2), encoding="utf-8")

    external = needs_external_data(spec)
    cache = GraphCache(cache_dir) if cache_dir is not None and not external else None
    graph, parity, session = _graphs_with_parity(graphs, out_dir, cfg, task, tokenizer, rows, cache, external)
    if not parity["passed"] and graph["source"] == "cached":
        from pipelines import progress

        assert cache is not None
        progress.message("parity failed on the reused graph: exporting it afresh", stage="export")
        for graph_spec in graphs.values():
            cache.drop(graph_key(graph_spec, cfg.opset))
        graph, parity, session = _graphs_with_parity(graphs, out_dir, cfg, task, tokenizer, rows, cache, external)
    if parity["passed"]:
        id2label = {int(i): str(name) for i, name in (getattr(model.config, "id2label", None) or {}).items()}
        runtime, parity["int8"] = serve_int8_if_it_passes(
            out_dir,
            load_runtime(out_dir, session=session),
            task,
            frame,
            cfg,
            id2label,
            _int8_skip_reason(cfg, task, external, min(len(frame), cfg.int8_gate_rows)),
        )
        graph["precision"] = "int8" if parity["int8"]["served"] else "fp32"
        parity.update(onnx_latency(runtime, task.runtime_inputs(rows), cfg.latency_runs))
    parity["graph"] = graph
    parity.update(opset=int(cfg.opset), onnx_sha256=file_digest(onnx_path), onnx_bytes=onnx_path.stat().st_size)
    if len(graphs) > 1:
        parity["onnx_files"] = {name: file_digest(out_dir / name) for name in graphs}
    (out_dir / "parity.json").write_text(json.dumps(parity, indent=2), encoding="utf-8")
    if not parity["passed"]:
        raise ParityError(
            f"{onnx_path}: parity failed: max abs diff {parity['max_abs_diff']:.3g} > atol {parity['atol']:g} "
            f"on {parity['rows']} rows ({parity['label_mismatches']} mismatched results)"
        )
    int8 = parity.get("int8") or {}
    if cfg.quantise == "int8" and "passed" in int8 and not int8["served"]:  # tried, and the gate said no
        raise ParityError(f"{onnx_path}: export.quantise is int8 but the INT8 graph is not served: {_int8_text(int8)}")
    return {**parity, "onnx_path": str(onnx_path)}


def write_graph(spec: ExportSpec, onnx_path: Path, opset: int, cache: Any = None, key: str | None = None) -> str:
    """onnx_path from spec: "cached" when the cache held this architecture's traced graph (the weights written
    into it), else "exported" (a fresh torch export, then kept in the cache when one is given). `key`: spec's
    graph_key when the caller has it."""
    from pipelines.onnx_cache import graph_key

    if cache is None:
        export_model_to_onnx(spec, onnx_path, opset)
        return "exported"
    key = key or graph_key(spec, opset)  # once: it reads the wrapper's and the exporter's source
    if cache.fill(key, spec, onnx_path):
        return "cached"
    export_model_to_onnx(spec, onnx_path, opset)
    with contextlib.suppress(Exception):  # the cache saves time; failing to fill it costs none of the export
        cache.remember(key, spec, onnx_path)
    return "exported"


def fused_variant() -> str:
    """The graph cache's name for model.onnx after fusion: it changes with the fusion code (onnxscript's version
    is in the key)."""
    import inspect

    from pipelines import onnx_optimise

    return "fused-" + hashlib.sha256(inspect.getsource(onnx_optimise).encode()).hexdigest()[:12]


def _fill_fused(spec: ExportSpec, onnx_path: Path, key: str, variant: str, cache: Any) -> dict[str, Any] | None:
    """model.onnx straight from the cache's fused graph of this architecture (`key`: spec's graph_key; `variant`:
    fused_variant()), new weights in, the fusion skipped: parity.json's `graph` record; None when the cache holds
    no fused graph for it."""
    from pipelines.onnx_optimise import CONTRIB_DOMAIN, graph_op_counts

    if not cache.fill(key, spec, onnx_path, variant=variant):
        return None
    counts = graph_op_counts(cache.graph_file(key, variant), CONTRIB_DOMAIN)
    return {"optimised": True, "fused_ops": counts, "precision": "fp32"}


def _graphs_with_parity(
    graphs: dict[str, ExportSpec],
    out_dir: Path,
    cfg: ExportConfig,
    task: Task,
    tokenizer: Any,
    rows: Any,
    cache: Any,
    external: bool,
) -> tuple[dict[str, Any], dict[str, Any], Any]:
    """Write every graph (fresh or from the cache), fuse model.onnx, check parity: the graph record, the parity
    record and the ORT session parity ran on (None when the task checks parity its own way)."""
    from pipelines import progress
    from pipelines.onnx_cache import graph_key
    from pipelines.serving import ort_session

    spec, onnx_path = graphs["model.onnx"], out_dir / "model.onnx"
    progress.message(f"exporting the ONNX graph (opset {cfg.opset}, dynamic batch and sequence axes)", stage="export")
    key = graph_key(spec, cfg.opset) if cache is not None else None
    fusing = cfg.optimise and task.onnx_fusion and not external
    variant = fused_variant() if fusing and key is not None else None  # once: it reads the fusion module's source
    fused = _fill_fused(spec, onnx_path, key, variant, cache) if key is not None and variant else None
    sources = {"model.onnx": "cached" if fused is not None else write_graph(spec, onnx_path, cfg.opset, cache, key)}
    for name, graph_spec in graphs.items():
        if name != "model.onnx":
            sources[name] = write_graph(graph_spec, out_dir / name, cfg.opset, cache)
    if "cached" in sources.values():
        reused = ", ".join(name for name, source in sources.items() if source == "cached")
        kept = "traced and fused" if fused is not None else "traced"
        message = f"{reused}: the {kept} graph of an earlier export, new weights (export.graph_cache)"
        progress.message(message, stage="export")
    input_names = list(spec.input_names)
    graph = fused if fused is not None else optimise_graph(onnx_path, cfg, task, external)
    if fused is None and graph["optimised"] and key is not None and variant:
        with contextlib.suppress(Exception):  # as in write_graph: the cache saves time, never costs the export
            cache.remember(key, spec, onnx_path, variant=variant)
    graph["source"] = "cached" if "cached" in sources.values() else "exported"
    session = None
    parity = task.check_parity(out_dir, graphs, tokenizer, rows, cfg)
    if parity is None:
        session = ort_session(onnx_path)
        feeds = task.parity_feeds(tokenizer, rows, input_names)
        parity = onnx_parity(onnx_path, spec, task, feeds, cfg.atol, session=session)
    return graph, parity, session


def _int8_text(record: dict[str, Any]) -> str:
    """One line on the INT8 gate for messages."""
    if "drop_points" not in record:
        return str(record.get("note", "no INT8 figures"))
    return (
        f"{record['metric']} {record['int8']:.4f} vs fp32 {record['fp32']:.4f} on {record['rows']} rows "
        f"(drop {record['drop_points']:.2f} points, at most {record['max_drop_points']:g} allowed)"
    )
