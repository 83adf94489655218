"""ONNX export of the tiny BERT: dynamic axes, opset, parity numbers on real rows, and the parity failure path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.config import ExportConfig
from pipelines.errors import ModelLoadError, ParityError
from pipelines.export_onnx import export_onnx, load_model_and_tokenizer, onnx_parity, parity_batch_sizes
from pipelines.hashing import file_digest

MAX_LENGTH = 32


def classifier_task(pair: bool = False):
    """The text-classification task with this file's max length (and a pair column when asked)."""
    from pipelines.config import Params
    from pipelines.tasks import get_task

    data = {"path": "-", **({"text_pair_column": "text_pair"} if pair else {})}
    return get_task(Params.model_validate({"data": data, "tokenise": {"max_length": MAX_LENGTH}}))


WORDS = ["the", "film", "was", "really", "good", "bad", "awful", "fun", "plot", "and", "acting", "quite", "dull"]


def make_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """Sentences of varied length (2 to 16 words) so batches pad to different widths."""
    rng = np.random.default_rng(seed)
    return [(" ".join(rng.choice(WORDS, size=int(rng.integers(2, 17)))), int(i % 2)) for i in range(n)]


def write_test_parquet(path: Path, rows: int, pair: bool = False) -> Path:
    data = make_rows(rows, seed=3)
    frame = pd.DataFrame({"text": [t for t, _ in data], "label": [label for _, label in data]})
    if pair:
        pairs = [" ".join(reversed(t.split()))[: 10 + 7 * (i % 5)] for i, (t, _) in enumerate(data)]
        frame.insert(1, "text_pair", pairs)
    frame.to_parquet(path, index=False)
    return path


@pytest.fixture(scope="module")
def single_export(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("export-single")
    test_parquet = write_test_parquet(root / "test.parquet", rows=30)
    cfg = ExportConfig(opset=17, atol=1e-4, parity_rows=20, quantise="none")  # fp32: compared with torch below
    result = export_onnx(tiny_model_dir, test_parquet, root / "onnx", cfg, classifier_task())
    return root / "onnx", result


def test_parity_batch_sizes_exercise_dynamic_batch() -> None:
    assert parity_batch_sizes(64) == [1, 7, 56]
    assert parity_batch_sizes(1) == [1]
    assert parity_batch_sizes(5) == [1, 4]
    assert parity_batch_sizes(200) == [1, 7, 64, 64, 64]
    assert sum(parity_batch_sizes(137)) == 137


def test_export_writes_checked_onnx_with_dynamic_axes(single_export: tuple[Path, dict]) -> None:
    import onnx

    out_dir, result = single_export
    onnx_path = out_dir / "model.onnx"
    model = onnx.load(onnx_path)
    onnx.checker.check_model(model, full_check=True)
    assert {o.domain or "ai.onnx": o.version for o in model.opset_import}["ai.onnx"] == 17

    def dims(value_info) -> list:
        return [d.dim_param or d.dim_value for d in value_info.type.tensor_type.shape.dim]

    inputs = {i.name: i for i in model.graph.input}
    assert list(inputs) == ["input_ids", "attention_mask", "token_type_ids"]  # BERT uses token types
    for value in inputs.values():
        assert value.type.tensor_type.elem_type == onnx.TensorProto.INT64
        assert dims(value) == ["batch", "sequence"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert dims(model.graph.output[0]) == ["batch", 2]

    assert result["onnx_path"] == str(onnx_path)
    assert result["onnx_sha256"] == file_digest(onnx_path)
    assert result["onnx_bytes"] == onnx_path.stat().st_size


def test_export_parity_numbers_and_files(single_export: tuple[Path, dict]) -> None:
    out_dir, result = single_export
    parity = json.loads((out_dir / "parity.json").read_text())
    assert parity == {k: v for k, v in result.items() if k != "onnx_path"}
    assert parity["passed"] is True
    assert 0.0 <= parity["max_abs_diff"] <= 1e-5  # ~1e-8 in practice; atol is 1e-4
    assert parity["atol"] == 1e-4
    assert parity["rows"] == 20
    assert parity["label_mismatches"] == 0
    assert parity["batch_sizes"] == [1, 7, 12]  # three batch shapes through the same graph
    assert len(parity["seq_lengths"]) == 3 and all(n > 2 for n in parity["seq_lengths"])
    assert parity["opset"] == 17

    serving = json.loads((out_dir / "serving.json").read_text())
    assert serving == {
        "task": "text_classification",
        "max_length": MAX_LENGTH,
        "pair": False,
        "input_names": ["input_ids", "attention_mask", "token_type_ids"],
        "output_names": ["logits"],
        "id2label": {"0": "LABEL_0", "1": "LABEL_1"},
        "opset": 17,
    }
    assert (out_dir / "tokenizer" / "tokenizer.json").is_file()
    assert (out_dir / "tokenizer" / "tokenizer_config.json").is_file()


def test_onnx_graph_runs_shapes_never_traced(single_export: tuple[Path, dict], tiny_model_dir: Path) -> None:
    """Batch 5 x sequence 90 (longer than every parity batch) still matches PyTorch."""
    import torch

    from pipelines.serving import ort_session

    out_dir, _ = single_export
    model, _ = load_model_and_tokenizer(tiny_model_dir, classifier_task())
    rng = np.random.default_rng(0)
    input_ids = rng.integers(5, 40, size=(5, 90)).astype(np.int64)
    attention = np.ones_like(input_ids)
    attention[1, 30:] = 0
    attention[4, 7:] = 0
    feeds = {"input_ids": input_ids, "attention_mask": attention, "token_type_ids": np.zeros_like(input_ids)}
    got = ort_session(out_dir / "model.onnx").run(["logits"], feeds)[0]
    with torch.inference_mode():
        expected = model(**{k: torch.from_numpy(v) for k, v in feeds.items()}).logits.numpy()
    assert got.shape == (5, 2)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_onnx_parity_detects_a_changed_model(single_export: tuple[Path, dict], tiny_model_dir: Path) -> None:
    import torch

    out_dir, _ = single_export
    task = classifier_task()
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, task)
    spec = task.export_spec(model, tokenizer)
    frame = pd.DataFrame({"text": [t for t, _ in make_rows(9, seed=5)]})
    feeds = task.parity_feeds(tokenizer, frame, spec.input_names)
    ok = onnx_parity(out_dir / "model.onnx", spec, task, feeds, atol=1e-4)
    assert ok["passed"] and ok["batch_sizes"] == [1, 7, 1] and ok["rows"] == 9
    with torch.no_grad():
        model.classifier.bias[1] += 0.5  # the ONNX graph still holds the old weights
    bad = onnx_parity(out_dir / "model.onnx", spec, task, feeds, atol=1e-4)
    assert bad["passed"] is False
    assert bad["max_abs_diff"] == pytest.approx(0.5, abs=1e-4)


def test_parity_failure_raises_and_still_writes_report(
    single_export: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    import shutil

    import torch

    import pipelines.export_onnx as export_module

    exported_onnx = single_export[0] / "model.onnx"

    def reuse_export_then_change_model(spec, onnx_path, *args, **kwargs):
        # The graph of the unchanged tiny model (exported by the fixture; saves a 5 s export), then a PyTorch
        # model that now always prefers label 1: the parity check must catch the disagreement.
        shutil.copyfile(exported_onnx, onnx_path)
        with torch.no_grad():
            spec.module.inner.classifier.bias[1] += 10.0
        return spec.input_names

    monkeypatch.setattr(export_module, "export_model_to_onnx", reuse_export_then_change_model)
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=10)
    out_dir = tmp_path / "onnx"
    with pytest.raises(ParityError, match=r"model\.onnx: parity failed: max abs diff .* > atol 0\.0001 on 10 rows"):
        export_onnx(
            tiny_model_dir, test_parquet, out_dir, ExportConfig(opset=17, atol=1e-4, parity_rows=64), classifier_task()
        )
    parity = json.loads((out_dir / "parity.json").read_text())
    assert parity["passed"] is False
    assert parity["max_abs_diff"] == pytest.approx(10.0, abs=1e-3)
    assert parity["rows"] == 10 and parity["batch_sizes"] == [1, 7, 2]
    assert 0 < parity["label_mismatches"] <= 10  # rows where the ONNX graph picks label 0
    assert parity["onnx_sha256"] == file_digest(out_dir / "model.onnx")


def test_missing_model_folder_is_a_model_load_error(tmp_path: Path) -> None:
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=4)
    with pytest.raises(ModelLoadError, match=r"config\.json"):
        export_onnx(
            tmp_path / "nope",
            test_parquet,
            tmp_path / "onnx",
            ExportConfig(opset=17, atol=1e-4, parity_rows=64),
            classifier_task(),
        )


# ---------------------------------------------------------------- the served graph: fusion and the INT8 gate


def test_served_graph_has_fused_attention(single_export: tuple[Path, dict]) -> None:
    """Every encoder layer's attention is one com.microsoft Attention node (as are its residual LayerNorms and
    bias+GELU), and the fused graph still matches PyTorch within atol (test_export_parity_numbers_and_files)."""
    from pipelines.onnx_optimise import CONTRIB_DOMAIN, graph_op_counts

    out_dir, result = single_export
    fused = {"Attention": 2, "BiasGelu": 2, "SkipLayerNormalization": 4}  # 2 layers in the tiny BERT
    assert result["graph"] == {"optimised": True, "fused_ops": fused, "precision": "fp32", "source": "exported"}
    assert graph_op_counts(out_dir / "model.onnx", CONTRIB_DOMAIN) == fused
    assert "Softmax" not in graph_op_counts(out_dir / "model.onnx", "")  # no unfused attention left
    assert result["int8"] == {"served": False, "note": "export.quantise is none"}


def reuse_fixture_export(monkeypatch: pytest.MonkeyPatch, exported: Path) -> None:
    """export_onnx writes the fixture's graph instead of exporting again (saves a ~5 s export per test)."""
    import shutil

    import pipelines.export_onnx as export_module

    def copy_export(spec, onnx_path, *args, **kwargs):
        shutil.copyfile(exported, onnx_path)
        return spec.input_names

    monkeypatch.setattr(export_module, "export_model_to_onnx", copy_export)


def test_int8_is_served_when_it_passes_its_gate(
    single_export: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnx

    from pipelines.onnx_optimise import graph_op_counts

    reuse_fixture_export(monkeypatch, single_export[0] / "model.onnx")
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=24)
    cfg = ExportConfig(parity_rows=10, int8_max_drop=100.0, int8_gate_rows=20, latency_runs=3)
    result = export_onnx(tiny_model_dir, test_parquet, tmp_path / "onnx", cfg, classifier_task())
    onnx_path = tmp_path / "onnx" / "model.onnx"
    assert result["passed"] is True and result["max_abs_diff"] <= 1e-5  # parity: the fp32 graph against torch
    assert result["graph"]["precision"] == "int8"
    int8 = result["int8"]
    assert int8["served"] is True and int8["passed"] is True
    assert int8["metric"] == "macro_f1" and int8["rows"] == 20 and int8["max_drop_points"] == 100.0
    assert int8["drop_points"] == pytest.approx((int8["fp32"] - int8["int8"]) * 100)
    assert 0.0 <= int8["agreement"] <= 1.0
    ops = graph_op_counts(onnx_path)
    assert ops.get("DynamicQuantizeLinear", 0) + ops.get("DynamicQuantizeMatMul", 0) > 0 and ops["Attention"] == 2
    assert result["onnx_sha256"] == file_digest(onnx_path) and result["latency_runs"] == 3
    files = sorted(p.name for p in onnx_path.parent.iterdir())
    assert files == ["model.onnx", "parity.json", "serving.json", "tokenizer"]  # no INT8 candidate left behind
    onnx.checker.check_model(str(onnx_path))
    from pipelines.serving import load_runtime

    labels = [r["label"] for r in load_runtime(onnx_path.parent).predict(["the film was good", "dull"])]
    assert set(labels) <= {"LABEL_0", "LABEL_1"}


def failing_gate(*args, **kwargs) -> dict:
    from pipelines.onnx_optimise import int8_figures

    return int8_figures("macro_f1", 0.9, 0.8, 0.9, 20, 0.5)


def test_int8_gate_failure_serves_fp32_or_fails_when_int8_is_required(
    single_export: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.export_onnx as export_module
    from pipelines.onnx_optimise import graph_op_counts

    reuse_fixture_export(monkeypatch, single_export[0] / "model.onnx")
    monkeypatch.setattr(export_module, "int8_gate", failing_gate)
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=12)
    auto = ExportConfig(parity_rows=10, latency_runs=0, int8_max_drop=10.0)  # 12 rows resolve 10 points
    result = export_onnx(tiny_model_dir, test_parquet, tmp_path / "auto", auto, classifier_task())
    assert result["graph"]["precision"] == "fp32"
    assert result["int8"]["served"] is False and result["int8"]["drop_points"] == pytest.approx(10.0)
    ops = graph_op_counts(tmp_path / "auto" / "model.onnx")
    assert ops["Attention"] == 2 and "DynamicQuantizeLinear" not in ops  # the fused fp32 graph
    assert not list((tmp_path / "auto").glob(".*onnx"))  # no INT8 candidate left behind

    cfg = ExportConfig(parity_rows=10, latency_runs=0, quantise="int8")
    with pytest.raises(ParityError, match=r"quantise is int8 but .*macro_f1 0\.8000 vs fp32 0\.9000 on 20 rows"):
        export_onnx(tiny_model_dir, test_parquet, tmp_path / "int8", cfg, classifier_task())
    parity = json.loads((tmp_path / "int8" / "parity.json").read_text())
    assert parity["passed"] is True and parity["int8"]["served"] is False


def test_fusion_off_or_failing_serves_the_plain_export(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pipelines.onnx_optimise as optimise_module
    from pipelines.export_onnx import optimise_graph
    from pipelines.onnx_optimise import CONTRIB_DOMAIN, graph_op_counts

    task = classifier_task()
    model, tokenizer = load_model_and_tokenizer(tiny_model_dir, task)
    from pipelines.export_onnx import export_model_to_onnx

    plain = tmp_path / "model.onnx"
    export_model_to_onnx(task.export_spec(model, tokenizer), plain, 17)
    digest = file_digest(plain)
    off = optimise_graph(plain, ExportConfig(optimise=False), task, external=False)
    assert off == {"optimised": False, "fused_ops": {}, "precision": "fp32", "note": "export.optimise is off"}

    def broken(src, dst):
        Path(dst).write_text("half a graph")
        raise RuntimeError("no match")

    monkeypatch.setattr(optimise_module, "fuse_transformer_ops", broken)
    failed = optimise_graph(plain, ExportConfig(), task, external=False)
    assert failed["optimised"] is False and "fusion failed" in failed["note"] and "no match" in failed["note"]
    assert file_digest(plain) == digest and graph_op_counts(plain, CONTRIB_DOMAIN) == {}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]


def test_int8_figures_are_points_of_the_metric() -> None:
    from pipelines.onnx_optimise import int8_figures

    ok = int8_figures("accuracy", 0.8612, 0.8590, 0.97, 1000, 0.5)
    assert ok["drop_points"] == pytest.approx(0.22) and ok["passed"] is True
    assert int8_figures("accuracy", 0.8612, 0.8544, 0.97, 1000, 0.5)["passed"] is False  # -0.68 points
    assert int8_figures("accuracy", 0.80, 0.81, 0.97, 1000, 0.0)["drop_points"] == pytest.approx(-1.0)


def test_auto_int8_is_not_tried_when_one_row_exceeds_the_allowed_drop(
    single_export: tuple[Path, dict], tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """12 gate rows: one changed row is 8.3 points, more than the 0.5 allowed, so auto keeps fp32 without
    quantising (it says why); int8 still quantises and gates."""
    import pipelines.export_onnx as export_module
    from pipelines.export_onnx import int8_gate_min_rows

    assert int8_gate_min_rows(ExportConfig()) == 200 and int8_gate_min_rows(ExportConfig(int8_max_drop=2.0)) == 50
    reuse_fixture_export(monkeypatch, single_export[0] / "model.onnx")
    quantised: list[Path] = []
    real = export_module.serve_int8_if_it_passes
    monkeypatch.setattr("pipelines.onnx_optimise.quantise_int8", lambda src, dst: quantised.append(dst) or 1 / 0)
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=12)
    result = export_onnx(
        tiny_model_dir, test_parquet, tmp_path / "auto", ExportConfig(parity_rows=10, latency_runs=0), classifier_task()
    )
    assert quantised == [] and result["graph"]["precision"] == "fp32" and result["int8"]["served"] is False
    assert "12 rows" in result["int8"]["note"] and "from 200 rows" in result["int8"]["note"]
    assert real is export_module.serve_int8_if_it_passes
    cfg = ExportConfig(parity_rows=10, latency_runs=0, quantise="int8")
    with pytest.raises(ParityError, match="quantise is int8"):
        export_onnx(tiny_model_dir, test_parquet, tmp_path / "int8", cfg, classifier_task())
    assert len(quantised) == 1  # forced: tried (and here failed)


def perturbed_copy(model_dir: Path, dst: Path, scale: float) -> Path:
    """The tiny model with every weight moved a little: another training run of the same architecture."""
    import shutil

    import torch
    from transformers import AutoModelForSequenceClassification

    shutil.copytree(model_dir, dst)
    model = AutoModelForSequenceClassification.from_pretrained(dst)
    generator = torch.Generator().manual_seed(int(scale * 1000))
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn(param.shape, generator=generator) * scale)
    model.save_pretrained(dst)
    return dst


def test_graph_cache_reuses_the_trace_byte_for_byte(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second export of the same architecture (other weights) reuses the traced and the fused graph: the served
    graph is the same bytes a fresh export and fusion give, parity passes, and the cache holds the graphs without
    their weights."""
    from pipelines import onnx_optimise

    cfg = ExportConfig(parity_rows=10, latency_runs=0, quantise="none")
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=12)
    cache = tmp_path / "cache"
    # The tiny model fresh from its init has equal tensors (zero biases), which the exporter merges: not kept.
    untrained = export_onnx(tiny_model_dir, test_parquet, tmp_path / "u", cfg, classifier_task(), cache)
    assert untrained["graph"]["source"] == "exported" and not list(cache.glob("*/slots.json"))
    trained = perturbed_copy(tiny_model_dir, tmp_path / "trained-model", 0.01)
    first = export_onnx(trained, test_parquet, tmp_path / "a", cfg, classifier_task(), cache)
    assert first["graph"]["source"] == "exported"
    (entry,) = list(cache.iterdir())
    slots = json.loads((entry / "slots.json").read_text())
    assert {how for _, how in slots.values()} == {"same", "transpose"}  # Linear weights are stored transposed
    import onnx

    kept = {init.name: init for init in onnx.load(str(entry / "graph.onnx")).graph.initializer}
    assert set(slots) <= set(kept) and all(not kept[name].raw_data for name in slots)  # the graph, no weights

    # The fused graph is kept too: the attention's query, key and value weights are one concatenated initializer.
    (fused_slots,) = list(entry.glob("fused-*.slots.json"))
    fused = json.loads(fused_slots.read_text())
    assert any(slot[0] == "concat" for slot in fused.values()) and first["graph"]["fused_ops"].get("Attention")

    other = perturbed_copy(tiny_model_dir, tmp_path / "other-model", 0.02)
    fusions: list[Path] = []
    real_fuse = onnx_optimise.fuse_transformer_ops
    monkeypatch.setattr(onnx_optimise, "fuse_transformer_ops", lambda *a: fusions.append(a[0]) or real_fuse(*a))
    reused = export_onnx(other, test_parquet, tmp_path / "b", cfg, classifier_task(), cache)
    assert fusions == []  # traced and fused graph both reused
    fresh = export_onnx(other, test_parquet, tmp_path / "c", cfg, classifier_task())
    assert reused["graph"]["source"] == "cached" and fresh["graph"]["source"] == "exported" and len(fusions) == 1
    assert reused["graph"]["fused_ops"] == fresh["graph"]["fused_ops"] == first["graph"]["fused_ops"]
    assert reused["passed"] is True and reused["max_abs_diff"] == fresh["max_abs_diff"]
    assert reused["onnx_sha256"] == fresh["onnx_sha256"] != first["onnx_sha256"]


def test_graph_cache_entry_that_fails_parity_is_dropped_and_exported_afresh(
    tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A cache entry whose maps are wrong (two weights swapped in the traced and in the fused graph) gives a graph
    that fails parity: the export says so, drops the entry, exports afresh and passes; an unreadable entry is
    dropped before use."""
    cfg = ExportConfig(parity_rows=10, latency_runs=0, quantise="none")
    test_parquet = write_test_parquet(tmp_path / "test.parquet", rows=12)
    cache = tmp_path / "cache"
    tiny_model_dir = perturbed_copy(tiny_model_dir, tmp_path / "trained-model", 0.01)
    export_onnx(tiny_model_dir, test_parquet, tmp_path / "a", cfg, classifier_task(), cache)
    served = file_digest(tmp_path / "a" / "model.onnx")
    (entry,) = list(cache.iterdir())
    (fused_file,) = list(entry.glob("fused-*.slots.json"))  # the fused graph: one initializer holds q, k and v
    fused = json.loads(fused_file.read_text())
    qkv = next(slot for slot in fused.values() if slot[0] == "concat" and slot[1] == 1)  # a weight, not a bias
    qkv[2][0], qkv[2][2] = qkv[2][2], qkv[2][0]  # query <-> value
    fused_file.write_text(json.dumps(fused))
    said: list[str] = []
    monkeypatch.setattr("pipelines.progress.message", lambda text, **_: said.append(text))
    result = export_onnx(tiny_model_dir, test_parquet, tmp_path / "b", cfg, classifier_task(), cache)
    assert result["passed"] is True and result["graph"]["source"] == "exported"
    assert result["onnx_sha256"] == served
    assert "parity failed on the reused graph: exporting it afresh" in said
    said.clear()

    (entry,) = list(cache.iterdir())  # kept again from the fresh export, fused graph included
    for fused_graph in entry.glob("fused-*"):
        fused_graph.unlink()  # the traced graph's map alone is wrong now: filled, fused, parity fails
    slots = json.loads((entry / "slots.json").read_text())
    layer0 = "inner.bert.encoder.layer.0.attention.self"
    query, value = (
        next(k for k, v in slots.items() if v == [f"{layer0}.{w}.weight", "transpose"]) for w in ("query", "value")
    )
    slots[query], slots[value] = slots[value], slots[query]  # same shape: the graph fills, and computes nonsense
    (entry / "slots.json").write_text(json.dumps(slots))
    result = export_onnx(tiny_model_dir, test_parquet, tmp_path / "c", cfg, classifier_task(), cache)
    assert result["passed"] is True and result["graph"]["source"] == "exported"
    assert result["onnx_sha256"] == served
    assert "parity failed on the reused graph: exporting it afresh" in said
    said.clear()

    (entry,) = list(cache.iterdir())
    for graph in (entry / "graph.onnx", *entry.glob("fused-*.onnx")):
        graph.write_bytes(b"not a graph")
    result = export_onnx(tiny_model_dir, test_parquet, tmp_path / "d", cfg, classifier_task(), cache)
    assert result["passed"] is True and result["graph"]["source"] == "exported"
    assert not any("parity failed" in text for text in said)  # dropped before use


def test_graph_cache_keeps_one_fused_variant_per_entry(tmp_path: Path) -> None:
    """A fused graph kept by newer fusion code replaces the older one's files; without the traced graph of its
    key, a variant is not kept at all."""
    from onnx import helper

    from pipelines.onnx_cache import SLOTS_FILE, GraphCache

    cache = GraphCache(tmp_path)
    entry = cache.entry("key")
    entry.mkdir()
    (entry / SLOTS_FILE).write_text("{}")
    (entry / "fused-old.onnx").write_bytes(b"graph")
    (entry / "fused-old.slots.json").write_text("{}")
    model = helper.make_model(helper.make_graph([], "g", [], []))
    assert cache._keep_variant("key", "fused-new", model, {})
    assert sorted(p.name for p in entry.iterdir()) == ["fused-new.onnx", "fused-new.slots.json", SLOTS_FILE]
    assert not cache._keep_variant("other", "fused-new", model, {}) and not cache.entry("other").exists()
