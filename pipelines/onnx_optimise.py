"""What the export stage does to the exported graph before it is served: transformer-op fusion and dynamic INT8.

Fusion: onnxscript's ONNX Runtime fusion rewriter (`onnxscript.rewriter.ort_fusions.optimize_for_ort`), written for
torch's dynamo exports. On the BERT encoder it folds each layer's self-attention (the exporter's
scaled-dot-product-attention decomposition, IsNaN/Where mask handling included) into one com.microsoft `Attention`
node, residual + LayerNorm into `SkipLayerNormalization` and bias + GELU into `BiasGelu`. onnxruntime's own
transformer optimiser (`onnxruntime.transformers.optimizer`) matches the last two on the same graph but no
Attention: its attention patterns are those of the TorchScript exporter. The fused graph computes what the plain
one does (the export stage's parity check runs on it, against PyTorch, within export.atol).

INT8: `onnxruntime.quantization.quantize_dynamic` on the fused graph: every MatMul / Gemm with a constant weight
gets 8-bit weights (unsigned, per output channel, 7-bit range: on CPUs without VNNI the u8 x s8 kernels can
saturate at full range) and activations quantised at run time. The Attention node keeps its float QKV projection
(onnxruntime's QAttention has no additive attention bias, which the fused node takes its mask as). Whether the
INT8 graph is served is the export stage's decision (pipelines/export_onnx.py `int8_gate`).

Export-time only (onnxscript and onnxruntime.quantization); the serving runtime never imports this module.
"""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

CONTRIB_DOMAIN = "com.microsoft"


def graph_op_counts(onnx_path: Path, domain: str | None = None) -> dict[str, int]:
    """{op type: node count} of the graph's top level (only `domain`'s ops when given; "" is the ONNX domain).
    With domain com.microsoft: the fused operators, what onnxruntime's `get_fused_operator_statistics` reports."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    counts = collections.Counter(
        node.op_type for node in model.graph.node if domain is None or (node.domain or "") == domain
    )
    return dict(sorted(counts.items()))


def fuse_transformer_ops(src: Path, dst: Path) -> dict[str, int]:
    """Write `dst`: `src` with onnxscript's ORT transformer fusions applied. Returns the fused-operator counts
    (com.microsoft op type -> nodes), e.g. {"Attention": 6, "BiasGelu": 6, "SkipLayerNormalization": 12}."""
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    model, _ = optimize_for_ort(model)
    ir.save(model, str(dst))
    return graph_op_counts(dst, CONTRIB_DOMAIN)


def quantise_int8(src: Path, dst: Path) -> None:
    """Write `dst`: `src` with dynamic INT8 weights on every MatMul/Gemm with a constant weight (see the module
    docstring for the settings and why)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from pipelines.serving import quiet

    with quiet():  # its "consider pre-processing" warning is advice for static quantisation
        quantize_dynamic(Path(src), Path(dst), weight_type=QuantType.QUInt8, per_channel=True, reduce_range=True)


def int8_figures(metric: str, fp32: float, int8: float, agreement: float, rows: int, max_drop: float) -> dict[str, Any]:
    """The INT8 gate's record: the metric on fp32 and INT8, the drop in points (100 x the metric's 0-1 scale;
    negative = INT8 scored higher), the share of examples with identical results, and passed (drop <= max_drop)."""
    drop = (fp32 - int8) * 100.0
    return {
        "metric": metric,
        "rows": int(rows),
        "fp32": float(fp32),
        "int8": float(int8),
        "drop_points": float(drop),
        "max_drop_points": float(max_drop),
        "agreement": float(agreement),
        "passed": bool(drop <= max_drop),
    }


def served_graph_lines(parity: dict[str, Any]) -> list[tuple[str, str]]:
    """What parity.json says about the served graph, as (label, text) rows for the run report and the model card:
    its precision and fused operators, and the INT8 gate's figures and decision."""
    graph, int8 = parity.get("graph") or {}, parity.get("int8") or {}
    if not graph:
        return []  # an export from before graph optimisation
    fused = ", ".join(f"{op} x{n}" for op, n in sorted((graph.get("fused_ops") or {}).items()))
    rows = [
        ("served graph", f"{graph.get('precision', 'fp32')}, " + (f"fused: {fused}" if fused else "no fused ops")),
    ]
    if graph.get("note"):
        rows.append(("fusion", str(graph["note"])))
    if "drop_points" in int8:
        verdict = "INT8 served" if int8.get("served") else "fp32 served"
        rows.append(
            (
                "INT8 gate",
                f"{int8['metric']} {int8['int8']:.4f} INT8 vs {int8['fp32']:.4f} fp32 on {int8['rows']} rows: drop "
                f"{int8['drop_points']:.2f} points (at most {int8['max_drop_points']:g}), "
                f"{100 * int8['agreement']:.1f}% identical results; {verdict}",
            )
        )
    elif int8.get("note"):
        rows.append(("INT8 gate", str(int8["note"])))
    return rows
