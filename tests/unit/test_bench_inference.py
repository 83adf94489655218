"""benchmarks/inference.py --smoke: the whole benchmark (export stage, fused and INT8 graphs, every measurement,
JSON and PNG) on a tiny random BERT. Checks the report's shape and internal consistency, never timings."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "inference.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("bench_inference", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_smoke_run_writes_the_side_by_side_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bench = load_benchmark()
    out = tmp_path / "inference.json"
    result = bench.main(["--smoke", "--out", str(out)])
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert out.with_suffix(".png").stat().st_size > 0

    rows = {r["variant"]: r for r in result["results"]}
    assert list(rows) == ["torch", "ort_fp32", "ort_fused", "ort_int8"]
    for r in rows.values():
        for key in ("rows_per_s_file", "rows_per_s_sorted", "latency_p50_ms", "latency_p95_ms"):
            assert r[key] > 0
        assert r["speedup_sorted_vs_torch_file"] == pytest.approx(
            r["rows_per_s_sorted"] / rows["torch"]["rows_per_s_file"]
        )
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["agreement_with_torch"] <= 1.0
    assert rows["torch"]["speedup_file_vs_torch_file"] == pytest.approx(1.0)
    assert rows["ort_fp32"]["agreement_with_torch"] == rows["ort_fused"]["agreement_with_torch"] == 1.0

    fused = {"Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4}
    assert result["fused_ops"] == fused
    stats = result["fused_operator_statistics"]
    assert stats["fused"]["Attention"] == 2 and stats["int8"]["Attention"] == 2
    assert "Attention" not in stats["plain"] and "Attention" not in stats["plain + onnxruntime.transformers.optimizer"]

    stage = result["export_stage"]
    assert stage["graph"]["fused_ops"] == fused and stage["parity_max_abs_diff"] <= 1e-4
    assert result["served_variant"] == ("ort_int8" if stage["graph"]["precision"] == "int8" else "ort_fused")
    assert set(result["targets"]) >= {"served_sorted_vs_torch_file", "served_accuracy_drop_points"}
    printed = capsys.readouterr().out
    assert "ORT fused INT8" in printed and "x torch eager" in printed


def test_missing_inputs_are_one_line(tmp_path: Path) -> None:
    bench = load_benchmark()
    with pytest.raises(SystemExit, match=r"not found: .*nope.*config\.json"):
        bench.main(["--model-dir", str(tmp_path / "nope"), "--dev", str(tmp_path / "dev.tsv")])
