"""Serving an exported tiny BERT: the text-classification runtime against PyTorch, and the MLflow pyfunc round trip."""

from __future__ import annotations

import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

import pipelines.serving as serving
from pipelines.config import ExportConfig
from pipelines.errors import ModelLoadError
from pipelines.export_onnx import export_onnx, load_model_and_tokenizer
from pipelines.serving import log_onnx_pyfunc
from pipelines.tasks.text_classification.runtime import OnnxTextClassifier

MAX_LENGTH = 32


def classifier_task(pair: bool = False):
    from pipelines.config import Params
    from pipelines.tasks import get_task

    data = {"path": "-", **({"text_pair_column": "text_pair"} if pair else {})}
    return get_task(Params.model_validate({"data": data, "tokenise": {"max_length": MAX_LENGTH}}))


LABELS = {"0": "negative", "1": "positive"}
TEXTS = [
    "the film was good",
    "bad",
    "really a very dull plot and the acting is quite awful , slow and messy",
    "fun !",
    "the story was warm , clever and the acting superb",
    "tedious",
    "it is a film",
]
PAIRS = ["a film", "the plot was weak and the acting poor", "great", "x", "good and fun", "the end", "boring"]


def relabelled_copy(model_dir: Path, dest: Path) -> Path:
    """The tiny model with named labels, so the tests can tell id2label mapping from raw ids."""
    shutil.copytree(model_dir, dest)
    config = json.loads((dest / "config.json").read_text())
    config["id2label"] = LABELS
    config["label2id"] = {name: int(i) for i, name in LABELS.items()}
    (dest / "config.json").write_text(json.dumps(config))
    return dest


def export(model_dir: Path, root: Path, pair: bool) -> Path:
    frame = pd.DataFrame({"text": TEXTS, "label": [0, 1, 0, 1, 1, 0, 1]})
    if pair:
        frame["text_pair"] = PAIRS
    frame.to_parquet(root / "test.parquet", index=False)
    cfg = ExportConfig(opset=17, atol=1e-4, parity_rows=16, quantise="none")  # fp32: probabilities match torch
    export_onnx(model_dir, root / "test.parquet", root / "onnx", cfg, classifier_task(pair))
    return root / "onnx"


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return relabelled_copy(tiny_model_dir, tmp_path_factory.mktemp("serving") / "model")


@pytest.fixture(scope="module")
def single_dir(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export(model_dir, tmp_path_factory.mktemp("single"), pair=False)


def torch_probabilities(model_dir: Path, texts: list[str], pairs: list[str] | None = None) -> np.ndarray:
    """PyTorch reference: one batch, padded to its longest row, tokenised like training."""
    import torch

    model, tokenizer = load_model_and_tokenizer(model_dir, classifier_task())
    enc = tokenizer(texts, pairs, truncation="longest_first", max_length=MAX_LENGTH, padding=True, return_tensors="pt")
    with torch.inference_mode():
        return torch.softmax(model(**enc).logits, dim=-1).numpy()


def test_classifier_matches_torch_argmax_and_probabilities(single_dir: Path, model_dir: Path) -> None:
    classifier = OnnxTextClassifier.from_dir(single_dir)
    assert classifier.id2label == {0: "negative", 1: "positive"} and classifier.pair is False
    rows = classifier.classify(TEXTS, batch_size=3)  # batches of 3, 3, 1: each padded differently
    expected = torch_probabilities(model_dir, TEXTS)
    assert [r["label"] for r in rows] == [LABELS[str(i)] for i in expected.argmax(axis=1)]
    for row, probs in zip(rows, expected, strict=True):
        assert set(row["scores"]) == {"negative", "positive"}
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-9)
        assert row["score"] == row["scores"][row["label"]] == max(row["scores"].values())
        assert [row["scores"]["negative"], row["scores"]["positive"]] == pytest.approx(probs.tolist(), abs=1e-6)
    assert classifier.classify([]) == []
    with pytest.raises(ValueError, match="single-sentence"):
        classifier.classify(TEXTS, PAIRS)


def test_pair_model_exports_quietly_and_serves_pairs(model_dir: Path, tmp_path: Path, capfd) -> None:
    """Export and serving of a sentence-pair model (the only pair export in the suite: each costs ~5 s)."""
    capfd.readouterr()
    pair_dir = export(model_dir, tmp_path, pair=True)
    out, err = capfd.readouterr()
    assert out == "" and err == ""  # exporter progress lines and warnings stay off the console
    parity = json.loads((pair_dir / "parity.json").read_text())
    assert parity["passed"] is True and parity["max_abs_diff"] <= 1e-5 and parity["label_mismatches"] == 0
    assert parity["rows"] == 7 and parity["batch_sizes"] == [1, 6]
    serving_json = json.loads((pair_dir / "serving.json").read_text())
    assert serving_json["pair"] is True and serving_json["id2label"] == LABELS
    assert serving_json["input_names"] == ["input_ids", "attention_mask", "token_type_ids"]

    classifier = OnnxTextClassifier.from_dir(pair_dir)
    assert classifier.pair is True
    with pytest.raises(ValueError, match="text_pairs is required"):
        classifier.classify(TEXTS)
    with pytest.raises(ValueError, match="differ in length"):
        classifier.classify(TEXTS, PAIRS[:2])
    rows = classifier.classify(TEXTS, PAIRS, batch_size=4)
    expected = torch_probabilities(model_dir, TEXTS, PAIRS)
    assert [r["label"] for r in rows] == [LABELS[str(i)] for i in expected.argmax(axis=1)]
    assert np.array([r["scores"]["positive"] for r in rows]) == pytest.approx(expected[:, 1], abs=1e-6)
    model = serving.OnnxTextClassifierModel()
    model.load_context(SimpleNamespace(artifacts={"export_dir": str(pair_dir)}))
    frame = model.predict(None, pd.DataFrame({"text": TEXTS, "text_pair": PAIRS}))
    assert frame["label"].tolist() == [r["label"] for r in rows]


def test_missing_files_are_model_load_errors(single_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such directory"):
        OnnxTextClassifier.from_dir(tmp_path / "absent")
    broken = tmp_path / "broken"
    shutil.copytree(single_dir, broken)
    (broken / "model.onnx").unlink()
    shutil.rmtree(broken / "tokenizer")
    with pytest.raises(ModelLoadError, match=r"missing model\.onnx, tokenizer/"):
        OnnxTextClassifier.from_dir(broken)
    shutil.copytree(single_dir, tmp_path / "bad-onnx")
    (tmp_path / "bad-onnx" / "model.onnx").write_bytes(b"not an onnx file")
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load it"):
        OnnxTextClassifier.from_dir(tmp_path / "bad-onnx")


def test_pyfunc_model_accepts_frames_and_lists(single_dir: Path) -> None:
    model = serving.OnnxTextClassifierModel()
    model.load_context(SimpleNamespace(artifacts={"export_dir": str(single_dir)}))
    from_list = model.predict(None, TEXTS[:3])
    from_frame = model.predict(None, pd.DataFrame({"text": TEXTS[:3]}))
    assert list(from_list.columns) == ["label", "score"] and from_list["score"].dtype == np.float64
    pd.testing.assert_frame_equal(from_list, from_frame)


def test_serving_module_is_torch_free_and_cheap_to_import() -> None:
    tree = ast.parse(Path(serving.__file__).read_text())
    imported = {
        ((node.module or "") if isinstance(node, ast.ImportFrom) else alias.name).split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import | ast.ImportFrom)
        for alias in node.names
    }
    third_party = imported - set(sys.stdlib_module_names) - {"__future__"}
    assert third_party == {"numpy", "onnxruntime", "transformers", "pandas", "mlflow", "pipelines"}
    from_pipelines = [
        n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and "pipelines" in n.module
    ]
    assert from_pipelines == ["pipelines.errors", "pipelines.tasks.catalog"]
    code = (
        "import sys, pipelines.serving, pipelines.tasks.text_classification.runtime;"
        "print(sorted({'torch', 'mlflow', 'transformers'} & set(sys.modules)))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_loading_and_running_a_runtime_imports_no_torch(single_dir: Path) -> None:
    """The tokenizer comes from its class's own module, not AutoTokenizer (whose import pulls torch in: 1.3 s of
    every `nlpops predict` and server start)."""
    code = (
        "import sys; from pipelines.serving import load_runtime;"
        f"r = load_runtime({str(single_dir)!r}); r.predict(['a fine film', 'dull']);"
        "print(type(r.tokenizer).__name__, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["BertTokenizer", "False"], out.stdout + out.stderr


def test_load_tokenizer_gives_what_auto_tokenizer_gives(single_dir: Path, tmp_path: Path) -> None:
    from transformers import AutoTokenizer

    folder = single_dir / serving.TOKENIZER_DIR
    direct, auto = serving.load_tokenizer(folder), AutoTokenizer.from_pretrained(folder, local_files_only=True)
    assert type(direct) is type(auto)
    texts, pairs = ["A fine film, 3.5 stars!", "naïve café"], ["yes", "the second text of a pair " * 20]
    how = {"truncation": "only_second", "max_length": 24, "stride": 4, "return_overflowing_tokens": True}
    assert direct(texts, pairs, return_offsets_mapping=True, **how) == auto(
        texts, pairs, return_offsets_mapping=True, **how
    )
    assert direct.model_input_names == auto.model_input_names
    # a class whose module cannot be found by name, or no tokenizer_config.json: AutoTokenizer decides
    other = tmp_path / "other"
    auto.save_pretrained(other)
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "NoSuchTokenizer"}))
    fallback = serving.load_tokenizer(other)
    assert type(fallback) is type(AutoTokenizer.from_pretrained(other, local_files_only=True))
    assert fallback(texts)["input_ids"] == auto(texts)["input_ids"]


@pytest.fixture
def sqlite_tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)  # restored afterwards
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    return mlflow.create_experiment("serving-test", artifact_location=(tmp_path / "mlartifacts").as_uri())


def test_log_onnx_pyfunc_round_trip(
    single_dir: Path, sqlite_tracking: str, capfd, monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlflow
    from mlflow.utils import requirements_utils

    scans: list[int] = []
    real_scan = requirements_utils.importlib_metadata.packages_distributions
    monkeypatch.setattr(requirements_utils, "_MODULES_TO_PACKAGES", None)
    monkeypatch.setattr(
        requirements_utils.importlib_metadata, "packages_distributions", lambda: scans.append(1) or real_scan()
    )
    with mlflow.start_run(experiment_id=sqlite_tracking):
        capfd.readouterr()
        info = log_onnx_pyfunc(single_dir, name="classifier")
        out, err = capfd.readouterr()
    assert out == "" and err == ""  # quiet: no warnings, no requirement inference
    # MLflow's check of the explicit requirements did not scan every installed distribution (0.3-4 s), and its
    # map is left unbuilt for whatever else this process logs.
    assert scans == [] and requirements_utils._MODULES_TO_PACKAGES is None

    local = Path(mlflow.artifacts.download_artifacts(info.model_uri))
    requirements = (local / "requirements.txt").read_text().split()
    for name in ("onnxruntime", "transformers", "tokenizers", "numpy", "pandas"):
        assert any(r.startswith(f"{name}==") for r in requirements), requirements
    assert not any(r.startswith("torch") for r in requirements)
    flavor = info.flavors["python_function"]
    assert "model_code_path" in flavor and "python_model" not in flavor  # model from code: nothing pickled
    assert info.saved_input_example_info is None
    assert info.signature.inputs.input_names() == ["text", "text_pair"]
    assert [c.type.name for c in info.signature.outputs.inputs] == ["string", "double"]

    loaded = mlflow.pyfunc.load_model(info.model_uri)
    result = loaded.predict(pd.DataFrame({"text": TEXTS}))
    assert list(result.columns) == ["label", "score"]
    assert set(result["label"]) <= set(LABELS.values())
    direct = OnnxTextClassifier.from_dir(single_dir).classify(TEXTS)
    assert result["label"].tolist() == [r["label"] for r in direct]
    assert result["score"].to_numpy() == pytest.approx([r["score"] for r in direct], abs=1e-9)

    # A fresh interpreter without torch and without the installed nlpops (its editable finder and path removed)
    # still loads and serves the model: the runtime comes from the nlpops code logged with the model.
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in type(f).__module__.lower()]\n"
        f"sys.path[:] = [p for p in sys.path if p not in ('', {str(Path(serving.__file__).parents[1])!r})]\n"
        "import mlflow, pandas as pd\n"
        f"mlflow.set_tracking_uri({mlflow.get_tracking_uri()!r})\n"
        f"model = mlflow.pyfunc.load_model({info.model_uri!r})\n"
        f"print(','.join(model.predict(pd.DataFrame({{'text': {TEXTS!r}}}))['label']))\n"
    )
    bare = subprocess.run(
        [sys.executable, "-c", code + "import pipelines; print(pipelines.__file__, file=sys.stderr)\n"],
        capture_output=True,
        text=True,
        cwd=Path(local).parent,
    )
    assert bare.returncode == 0, bare.stderr[-2000:]
    assert str(Path(serving.__file__).parents[1]) not in bare.stderr  # the logged copy, not this checkout
    assert bare.stdout.strip().split(",") == result["label"].tolist()


def test_log_onnx_pyfunc_needs_a_run_and_a_complete_folder(single_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="missing"):
        log_onnx_pyfunc(tmp_path)
    with pytest.raises(RuntimeError, match="active MLflow run"):
        log_onnx_pyfunc(single_dir)


# ---------------------------------------------------------------- batching by length, session settings


def test_length_batches_longest_first_cover_every_row_once() -> None:
    assert serving.length_batches([3, 9, 1, 9, 5], 2) == [[1, 3], [4, 0], [2]]  # ties keep input order
    assert serving.length_batches([3, 9, 1], 2, by_length=False) == [[0, 1], [2]]
    assert serving.length_batches([], 4) == []
    assert sorted(i for b in serving.length_batches(list(range(100)), 7) for i in b) == list(range(100))


def test_pad_rows_gives_what_encode_gives(single_dir: Path) -> None:
    classifier = OnnxTextClassifier.from_dir(single_dir)
    tokenizer, names = classifier.tokenizer, classifier.input_names
    rows = serving.tokenise_rows(tokenizer, TEXTS, None, MAX_LENGTH, names)
    index = [2, 0, 5]
    got = serving.pad_rows(tokenizer, rows, index)
    expected = serving.encode(tokenizer, [TEXTS[i] for i in index], None, MAX_LENGTH, names)
    assert list(got) == names
    for name in names:
        np.testing.assert_array_equal(got[name], expected[name])
    pair_rows = serving.tokenise_rows(tokenizer, TEXTS, PAIRS, MAX_LENGTH, names)
    pair_expected = serving.encode(tokenizer, TEXTS[:3], PAIRS[:3], MAX_LENGTH, names)
    for name, array in serving.pad_rows(tokenizer, pair_rows, [0, 1, 2]).items():
        np.testing.assert_array_equal(array, pair_expected[name])


def test_sorted_batches_come_back_in_input_order(single_dir: Path) -> None:
    """Rows run longest first in batches of similar length; each result is still its own row's."""
    classifier = OnnxTextClassifier.from_dir(single_dir)
    texts = [TEXTS[i % len(TEXTS)] + " ." * (i % 4) for i in range(23)]
    assert classifier.sort_by_length is True
    by_length = classifier.predict_logits(texts, batch_size=4)
    one_by_one = np.concatenate([classifier.predict_logits([t], batch_size=1) for t in texts])
    classifier.sort_by_length = False
    in_order = classifier.predict_logits(texts, batch_size=4)
    assert by_length.shape == (23, 2)
    np.testing.assert_allclose(by_length, one_by_one, atol=1e-5)
    np.testing.assert_allclose(by_length, in_order, atol=1e-5)


def test_ort_session_settings(single_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    options = serving.ort_session(single_dir / "model.onnx", threads=1).get_session_options()
    assert options.intra_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    monkeypatch.setenv(serving.ORT_THREADS_ENV, "2")
    assert serving.ort_session(single_dir / "model.onnx").get_session_options().intra_op_num_threads == 2
