"""Torch-free seq2seq runtime: ONNX Runtime (model.onnx = encoder + first decoder step, decoder.onnx = one decoder
step with past key/values) + the training tokenizer + serving.json, and the numpy generation loop (generation.py).

An input item is the source text (a str, or {"source": str}); the task prefix in serving.json is prepended as in
training. Each result is `{"generated_text", "tokens", "score", "latency_ms", "tokens_per_s"}`: the text (special
tokens dropped), the generated tokens (EOS included), the sequence score (beam: length-penalised log-probability;
greedy: mean token log-probability), and the wall time of the batch the item was generated in.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipelines.serving import ModelLoadError, OnnxRuntimeModel, ort_session
from pipelines.tasks.seq2seq.generation import Generated, GenerationSettings, generate

DECODER_FILE = "decoder.onnx"


def as_source(item: Any) -> str:
    if isinstance(item, dict):
        item = item.get("source", item.get("text"))
    if not isinstance(item, str):
        raise ValueError(
            f'seq2seq input must be the source text (a string or {{"source": ...}}), got {type(item).__name__}'
        )
    if not item.strip():
        raise ValueError("seq2seq input: the source text is empty")
    return item


class OnnxSeq2Seq(OnnxRuntimeModel):
    """Generates text with the exported encoder/decoder graphs."""

    task = "seq2seq"
    required_keys = ("max_length", "input_names", "generation", "layers", "decoder_input_names")

    def __init__(self, session: Any, tokenizer: Any, serving: dict[str, Any], path: Any = None) -> None:
        super().__init__(session, tokenizer, serving, path)
        self.settings = GenerationSettings.from_dict(serving["generation"])
        self.layers = int(serving["layers"])
        self.prefix = str(serving.get("prefix", ""))
        self.decoder_input_names = list(serving["decoder_input_names"])
        self.decoder_output_names = list(serving.get("decoder_output_names", []))
        self.decoder: Any = None

    @classmethod
    def from_dir(cls, path: str | Path, session: Any = None) -> Any:
        runtime = super().from_dir(path, session=session)
        decoder = Path(path) / DECODER_FILE
        if not decoder.is_file():
            raise ModelLoadError(f"{path}: incomplete seq2seq export, missing {DECODER_FILE}")
        try:
            runtime.decoder = ort_session(decoder)
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ModelLoadError(f"{decoder}: onnxruntime cannot load it ({type(exc).__name__}: {exc})") from None
        if not runtime.decoder_output_names:
            runtime.decoder_output_names = [o.name for o in runtime.decoder.get_outputs()]
        return runtime

    # ------------------------------------------------------------------ the model as generation.py calls it

    def encode(self, sources: list[str]) -> dict[str, Any]:
        import numpy as np

        enc = self.tokenizer(
            [self.prefix + s for s in sources],
            truncation=True,
            max_length=self.max_length,
            padding="longest",
            return_attention_mask=True,
            return_token_type_ids=False,
            return_tensors="np",
        )
        return {name: np.asarray(enc[name], dtype=np.int64) for name in self.input_names}

    def first(self, feeds: dict[str, Any]) -> tuple[Any, list[Any], list[Any]]:
        outputs = self.run(feeds)
        n = 2 * self.layers
        return outputs[0], list(outputs[1 : 1 + n]), list(outputs[1 + n : 1 + 2 * n])

    def step(self, tokens: Any, mask: Any, self_kv: list[Any], cross_kv: list[Any]) -> tuple[Any, list[Any]]:
        import numpy as np

        values = [np.asarray(tokens, dtype=np.int64).reshape(-1, 1), mask, *self_kv, *cross_kv]
        outputs = self.decoder.run(self.decoder_output_names, dict(zip(self.decoder_input_names, values, strict=True)))
        return outputs[0], list(outputs[1:])

    def generate_ids(self, sources: list[str], settings: GenerationSettings | None = None) -> Generated:
        """One batch of sources through the generation loop: token ids (start token first, up to EOS)."""
        feeds = self.encode(sources)
        mask = feeds["attention_mask"]
        return generate(lambda: self.first(feeds), self.step, mask, settings or self.settings, feeds["input_ids"])

    # ------------------------------------------------------------------ the runtime interface

    def predict(self, items: list[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        sources = [as_source(item) for item in items]
        results: list[dict[str, Any]] = []
        size = max(1, batch_size)
        for first in range(0, len(sources), size):
            batch = sources[first : first + size]
            started = time.perf_counter()
            generated = self.generate_ids(batch)
            seconds = time.perf_counter() - started
            tokens = [len(seq) - 1 for seq in generated.sequences]
            texts = self.tokenizer.batch_decode(
                [seq[1:] for seq in generated.sequences], skip_special_tokens=True, clean_up_tokenization_spaces=True
            )
            for text, count, score in zip(texts, tokens, generated.scores, strict=True):
                results.append(
                    {
                        "generated_text": text.strip(),
                        "tokens": int(count),
                        "score": float(score),
                        "latency_ms": round(seconds * 1000.0, 3),
                        "tokens_per_s": round(sum(tokens) / seconds, 1) if seconds > 0 else None,
                    }
                )
        return results

    def format_result(self, result: dict[str, Any]) -> str:
        """The generated text."""
        return str(result["generated_text"])

    def items_from_frame(self, model_input: Any) -> list[Any]:
        """A DataFrame (or dict of columns) with a `source` (or `text`) column, a list of sources, or one source."""
        import pandas as pd

        if isinstance(model_input, str):
            return [model_input]
        if isinstance(model_input, dict) and isinstance(model_input.get("source", model_input.get("text")), str):
            return [model_input]
        if isinstance(model_input, dict):
            model_input = pd.DataFrame(model_input)
        if isinstance(model_input, pd.DataFrame):
            column = next((c for c in ("source", "text") if c in model_input.columns), None)
            if column is None:
                raise ValueError(f"seq2seq input needs a 'source' column (got {list(model_input.columns)})")
            return [str(s) for s in model_input[column]]
        if isinstance(model_input, (list, tuple)):
            return list(model_input)
        raise ValueError(f"seq2seq input: unsupported type {type(model_input).__name__}")

    @classmethod
    def signature(cls) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types.schema import ColSpec, Schema

        inputs = Schema([ColSpec("string", "source")])
        outputs = Schema(
            [
                ColSpec("string", "generated_text"),
                ColSpec("long", "tokens"),
                ColSpec("double", "score"),
                ColSpec("double", "latency_ms"),
                ColSpec("double", "tokens_per_s"),
            ]
        )
        return ModelSignature(inputs=inputs, outputs=outputs)
