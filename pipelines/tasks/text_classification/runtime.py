"""Torch-free runtime of a text classifier: ONNX Runtime + the training tokenizer; labels and softmax scores."""

from __future__ import annotations

from typing import Any

from pipelines.serving import OnnxRuntimeModel, length_batches, pad_rows, softmax, tokenise_rows


class OnnxTextClassifier(OnnxRuntimeModel):
    """Items are texts (str) or, for a pair model, (text, text_pair) tuples / {"text", "text_pair"} dicts."""

    task = "text_classification"
    required_keys = ("max_length", "pair", "input_names", "id2label")

    def __init__(self, session: Any, tokenizer: Any, serving: dict[str, Any], path: Any = None) -> None:
        super().__init__(session, tokenizer, serving, path)
        self.pair = bool(serving["pair"])
        self.id2label = {int(i): str(name) for i, name in serving["id2label"].items()}

    def predict_logits(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32):
        """Raw logits, float32 [rows, labels], in input order (batches of similar-length rows; `sort_by_length`)."""
        import numpy as np

        texts = [str(t) for t in texts]
        if self.pair:
            if text_pairs is None:
                raise ValueError("this is a sentence-pair model: text_pairs is required")
            text_pairs = [str(t) for t in text_pairs]
            if len(text_pairs) != len(texts):
                raise ValueError(f"texts and text_pairs differ in length ({len(texts)} vs {len(text_pairs)})")
        elif text_pairs is not None:
            raise ValueError("this is a single-sentence model: text_pairs must be None")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        logits = np.zeros((len(texts), len(self.id2label)), dtype=np.float32)
        if not texts:
            return logits
        rows = tokenise_rows(self.tokenizer, texts, text_pairs, self.max_length, self.input_names)
        lengths = [len(ids) for ids in rows["input_ids"]]
        for index in length_batches(lengths, batch_size, self.sort_by_length):
            logits[index] = self.run(pad_rows(self.tokenizer, rows, index))[0]
        return logits

    def classify(self, texts: list[str], text_pairs: list[str] | None = None, batch_size: int = 32) -> list[dict]:
        """[{"label": name, "score": probability of that label, "scores": {label: probability}}] per row."""
        probs = softmax(self.predict_logits(texts, text_pairs, batch_size).astype("float64"))
        names = [self.id2label[i] for i in range(probs.shape[1])]
        out = []
        for row in probs:
            best = int(row.argmax())
            out.append(
                {
                    "label": names[best],
                    "score": float(row[best]),
                    "scores": {name: float(p) for name, p in zip(names, row, strict=True)},
                }
            )
        return out

    def predict(self, items: list[Any], batch_size: int = 32) -> list[dict[str, Any]]:
        texts, pairs = self._split(items)
        return self.classify(texts, pairs, batch_size)

    def _split(self, items: list[Any]) -> tuple[list[str], list[str] | None]:
        texts: list[str] = []
        pairs: list[str] = []
        for item in items:
            if isinstance(item, dict):
                texts.append(str(item.get("text", "")))
                if "text_pair" in item and item["text_pair"] is not None:
                    pairs.append(str(item["text_pair"]))
            elif isinstance(item, list | tuple):
                texts.append(str(item[0]))
                if len(item) > 1:
                    pairs.append(str(item[1]))
            else:
                texts.append(str(item))
        if not self.pair:
            return texts, None  # an optional second text the single-sentence model does not use
        if len(pairs) != len(texts):
            raise ValueError("this is a sentence-pair model: every item needs a text and a text_pair")
        return texts, pairs

    def items_from_frame(self, model_input: Any) -> list[Any]:
        import pandas as pd

        if isinstance(model_input, pd.DataFrame):
            if "text" not in model_input.columns:
                raise ValueError(f"input needs a 'text' column (got {list(model_input.columns)})")
            if "text_pair" in model_input.columns:
                return list(zip(model_input["text"].tolist(), model_input["text_pair"].tolist(), strict=True))
            return model_input["text"].tolist()
        if isinstance(model_input, pd.Series):
            return model_input.tolist()
        if isinstance(model_input, str):
            return [model_input]
        if isinstance(model_input, dict):
            return self.items_from_frame(pd.DataFrame(model_input))
        if isinstance(model_input, list | tuple):
            if model_input and isinstance(model_input[0], dict):
                return self.items_from_frame(pd.DataFrame(list(model_input)))
            return list(model_input)
        raise ValueError(f"unsupported input type {type(model_input).__name__}: pass a DataFrame with a 'text' column")

    def output_frame(self, results: list[dict[str, Any]]) -> Any:
        import pandas as pd

        return pd.DataFrame(
            {
                "label": pd.Series([r["label"] for r in results], dtype=object),
                "score": pd.Series([r["score"] for r in results], dtype="float64"),
            }
        )

    def format_result(self, result: dict[str, Any]) -> str:
        return f"{result['label']}\t{result['score']:.4f}"

    @classmethod
    def signature(cls) -> Any:
        from mlflow.models import ModelSignature
        from mlflow.types import ColSpec, Schema

        return ModelSignature(
            inputs=Schema([ColSpec("string", "text"), ColSpec("string", "text_pair", required=False)]),
            outputs=Schema([ColSpec("string", "label"), ColSpec("double", "score")]),
        )
