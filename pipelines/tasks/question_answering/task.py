"""The question answering Task: extractive QA (SQuAD 2.0, unanswerable questions included) with a span head.

Examples are questions (clean frame rows: id, title, context, question, answer_texts, answer_starts,
is_impossible); features are question + context windows (features.py); predictions are one answer string per
question ('' = no answer). The null threshold: task.null_score_diff_threshold when set, else the one tuned for the
best F1 on the validation split at the end of every training epoch (`score` stores it on the model's config as
`nlpops_null_threshold`, so the saved checkpoint, evaluate, serving.json and the runtime all use it).
torch and transformers are imported inside the methods.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipelines.tasks.base import ExportSpec, Predictions, Task
from pipelines.tasks.question_answering import SPEC, Options
from pipelines.tasks.question_answering.features import best_answers, encode_windows, final_answer, pad_batch
from pipelines.tasks.question_answering.metrics import squad_v2_scores

if TYPE_CHECKING:
    from pathlib import Path

    import pandas as pd
    import torch

    from pipelines.config import TokeniseConfig
    from pipelines.tasks.catalog import TaskSpec

THRESHOLD_ATTR = "nlpops_null_threshold"
QUESTION_WORDS = ("what", "who", "when", "where", "which", "why", "how")
DIFF_CLIP = 1e6  # score differences of questions without any valid span (inf) are clipped for the threshold search


def question_type(question: str) -> str:
    """The first wh-word of the question (what/who/when/where/which/why/how), else 'other'."""
    words = str(question).lower().replace("?", " ").split()
    return next((w for w in words if w in QUESTION_WORDS), "other")


def gold_spans(frame: pd.DataFrame) -> list[tuple[int, int] | None]:
    """(start_char, end_char) of each question's first answer, None when unanswerable."""
    out: list[tuple[int, int] | None] = []
    for texts, starts in zip(frame["answer_texts"], frame["answer_starts"], strict=True):
        texts, starts = list(texts), list(starts)
        out.append((int(starts[0]), int(starts[0]) + len(texts[0])) if len(texts) else None)
    return out


def sample_training_windows(
    rows: dict[str, list], answerable: list[bool], keep: float, seed: int = 0, keep_unanswerable: float = 1.0
) -> dict[str, list]:
    """Training windows without: those of answerable questions that do not hold the answer (labelled CLS) are kept
    with probability `keep`, and the unanswerable questions with probability `keep_unanswerable` (a draw per
    question: all of its windows or none); both seeded. Answer windows always stay."""
    rng = np.random.default_rng(seed)
    draws = rng.random(len(rows["example_id"]))
    question_draws = np.random.default_rng(seed + 1).random(len(answerable))
    kept = [
        i
        for i, (e, s) in enumerate(zip(rows["example_id"], rows["start_positions"], strict=True))
        if (answerable[e] and (s != 0 or draws[i] < keep))
        or (not answerable[e] and question_draws[e] < keep_unanswerable)
    ]
    return {k: [v[i] for i in kept] for k, v in rows.items()}


class QuestionAnswering(Task):
    """Answer spans from question + context windows; '' when the null score wins."""

    spec: ClassVar[TaskSpec] = SPEC
    clean_counts = ("answer_start_fixed",)
    options: Options

    # ------------------------------------------------------------------ data

    def validate_data(self, report_path: Path, docs_dir: Path | None) -> dict[str, Any]:
        from pipelines.tasks.question_answering.validation import validate_data

        return validate_data(self.params, report_path, docs_dir)

    def clean_data(self, out_dir: Path) -> dict[str, Any]:
        from pipelines.tasks.question_answering.clean import clean_data

        return clean_data(self.params, out_dir)

    # ------------------------------------------------------------------ tokenise

    def windows(self, tokenizer: Any, frame: pd.DataFrame, labels: bool, batch_size: int = 1000) -> dict[str, list]:
        o = self.options
        out = encode_windows(
            tokenizer,
            frame["question"].astype(str).tolist(),
            frame["context"].astype(str).tolist(),
            o.max_length,
            o.doc_stride,
            o.max_query_length,
            gold_spans(frame) if labels else None,
            batch_size,
        )
        if "token_type_ids" not in getattr(tokenizer, "model_input_names", ["token_type_ids"]):
            del out["token_type_ids"]
        return out

    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, cfg: TokeniseConfig) -> dict[str, list]:
        """Windows of task.max_length tokens (not tokenise.max_length) with task.doc_stride overlap; labels are the
        answer's token positions, CLS (0) in windows without it."""
        labels = "answer_texts" in frame.columns
        rows = self.windows(tokenizer, frame, labels, cfg.batch_size)
        keep, keep_unanswerable = self.options.train_negative_windows, self.options.train_unanswerable
        if labels and min(keep, keep_unanswerable) < 1.0 and frame.attrs.get("split") == "train":
            answerable = [bool(len(t)) for t in frame["answer_texts"]]
            rows = sample_training_windows(rows, answerable, keep, keep_unanswerable=keep_unanswerable)
        return rows

    def epoch_training_rows(self, rows: dict[str, list], epoch: int) -> list[int] | None:
        """task.answerable_only_epochs: the first epochs train on the windows that hold an answer only."""
        if epoch > self.options.answerable_only_epochs or "start_positions" not in rows:
            return None
        return [i for i, start in enumerate(rows["start_positions"]) if int(start) != 0]

    def feature_types(self) -> dict[str, Any]:
        import pyarrow as pa

        ints = pa.list_(pa.int32())
        return {"input_ids": ints, "token_type_ids": ints, "offset_start": ints, "offset_end": ints}

    # ------------------------------------------------------------------ model

    def auto_class(self) -> Any:
        from transformers import AutoModelForQuestionAnswering

        return AutoModelForQuestionAnswering

    def configure_model(self, config: Any, id2label: dict[int, str]) -> None:
        config.num_labels = 2  # start and end logits

    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, torch.Tensor]:
        import torch

        ids, mask = pad_batch([list(r) for r in rows["input_ids"]], pad_token_id)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if "token_type_ids" in rows:
            types, _ = pad_batch([list(r) for r in rows["token_type_ids"]], 0)
            batch["token_type_ids"] = torch.from_numpy(types)
        if "start_positions" in rows:
            batch["start_positions"] = torch.tensor([int(x) for x in rows["start_positions"]], dtype=torch.long)
            batch["end_positions"] = torch.tensor([int(x) for x in rows["end_positions"]], dtype=torch.long)
        return batch

    # ------------------------------------------------------------------ predictions and metrics

    def threshold(self, model_config: Any = None) -> float:
        if self.options.null_score_diff_threshold is not None:
            return float(self.options.null_score_diff_threshold)
        return float(getattr(model_config, THRESHOLD_ATTR, 0.0) or 0.0)

    def decode(
        self, starts: list[Any], ends: list[Any], rows: dict[str, list], frame: pd.DataFrame, threshold: float
    ) -> Predictions:
        o = self.options
        best = best_answers(
            starts,
            ends,
            rows["offset_start"],
            rows["offset_end"],
            rows["example_id"],
            frame["context"].astype(str).tolist(),
            o.n_best_size,
            o.max_answer_length,
        )
        return Predictions(
            values=[final_answer(b, threshold) for b in best],
            scores=[b["probability"] for b in best],
            extra={
                "span_texts": [b["text"] for b in best],
                "score_diffs": [b["score_diff"] for b in best],
                "threshold": threshold,
            },
        )

    def predict(
        self, model: Any, rows: dict[str, list], frame: pd.DataFrame, batch_size: int, pad_token_id: int
    ) -> Predictions:
        """n-best spans over every window of a question, '' when null score - best span score > the threshold;
        the loss is the mean start/end cross-entropy over the windows (NaN without labels)."""
        from pipelines.train import feature_batches

        n = len(rows["input_ids"])
        starts: list[Any] = [np.zeros(0, dtype=np.float32)] * n
        ends: list[Any] = [np.zeros(0, dtype=np.float32)] * n
        loss_sum, loss_rows = 0.0, 0
        for idx, batch, outputs in feature_batches(model, self, rows, batch_size, pad_token_id):
            if getattr(outputs, "loss", None) is not None:
                loss_sum += float(outputs.loss) * len(idx)
                loss_rows += len(idx)
            lengths = batch["attention_mask"].sum(dim=1).tolist()
            s, e = outputs.start_logits.float().numpy(), outputs.end_logits.float().numpy()
            for k, i in enumerate(idx):
                starts[i], ends[i] = s[k, : lengths[k]], e[k, : lengths[k]]
        predictions = self.decode(starts, ends, rows, frame, self.threshold(model.config))
        predictions.loss = loss_sum / loss_rows if loss_rows else float("nan")
        predictions.extra["model_config"] = model.config
        return predictions

    def score(self, predictions: Predictions, frame: pd.DataFrame, id2label: dict[int, str]) -> dict[str, Any]:
        """The SQuAD 2.0 metric (fractions in [0, 1]) at the threshold the predictions used, plus best_f1 and
        best_f1_thresh. With task.null_score_diff_threshold empty and a torch model behind the predictions, the
        best-F1 threshold is stored on the model's config (train: on the validation split, before the checkpoint
        is saved)."""
        golds = [list(t) for t in frame["answer_texts"]]
        extra = predictions.extra or {}
        spans, diffs = extra.get("span_texts"), extra.get("score_diffs")
        clipped = [max(-DIFF_CLIP, min(DIFF_CLIP, float(d))) for d in diffs] if diffs is not None else None
        scores = squad_v2_scores(golds, [str(v) for v in predictions.values], spans, clipped)
        threshold = float(extra.get("threshold", self.threshold()))
        scores.setdefault("best_f1", scores["f1"])
        scores.setdefault("best_f1_thresh", threshold)
        scores["null_threshold"] = threshold
        scores["null_threshold_source"] = "params" if self.options.null_score_diff_threshold is not None else "tuned"
        config = extra.get("model_config")
        tuned = (
            config is not None
            and self.options.null_score_diff_threshold is None
            and math.isfinite(scores["best_f1_thresh"])
        )
        if tuned:
            setattr(config, THRESHOLD_ATTR, float(scores["best_f1_thresh"]))
        if tuned and spans is not None and diffs is not None and frame.attrs.get("split") == "validation":
            # the training loop's validation: score the answers at the threshold just tuned, the one the epoch's
            # checkpoint carries, so epoch selection compares what each checkpoint would answer
            threshold = float(scores["best_f1_thresh"])
            at_tuned = [
                final_answer({"text": text, "score_diff": float(d)}, threshold)
                for text, d in zip(spans, diffs, strict=True)
            ]
            best_f1, best_thresh = scores["best_f1"], scores["best_f1_thresh"]
            scores = {**scores, **squad_v2_scores(golds, at_tuned), "best_f1": best_f1, "best_f1_thresh": best_thresh}
            scores["null_threshold"] = threshold
        scores["rows"] = len(frame)
        return scores

    def slices(
        self, predictions: Predictions, frame: pd.DataFrame, rows: dict[str, list] | None, id2label: dict[int, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
        """F1 on answerable vs unanswerable questions, and per question word (what/who/when/...)."""
        golds = [list(t) for t in frame["answer_texts"]]
        values = [str(v) for v in predictions.values]
        answerable = [bool(len(g)) for g in golds]
        kinds = [question_type(q) for q in frame["question"]]
        groups: dict[str, list[int]] = {}
        for i, (has, kind) in enumerate(zip(answerable, kinds, strict=True)):
            groups.setdefault("answerable=yes" if has else "answerable=no", []).append(i)
            groups.setdefault(f"question={kind}", []).append(i)
        found = {}
        for name, idx in sorted(groups.items()):
            part = squad_v2_scores([golds[i] for i in idx], [values[i] for i in idx])
            found[name] = {"value": float(part["f1"]), "rows": len(idx), "metric": "f1"}
        membership = {"ids": [str(x) for x in frame["id"]], "answerable": answerable, "question_type": kinds}
        notes = ["F1 on answerable / unanswerable questions and per question word (first wh-word, else 'other')"]
        return found, membership, notes

    # ------------------------------------------------------------------ run report

    card_pipeline_tag = "question-answering"

    def confidences(self, predictions: Predictions, frame: pd.DataFrame) -> dict[str, Any] | None:
        """Answered questions only: the probability of the chosen span, and whether it matches a gold answer
        exactly (SQuAD normalisation)."""
        from pipelines.tasks.question_answering.metrics import per_question

        if predictions.scores is None:
            return None
        values = [str(v) for v in predictions.values]
        exact, _ = per_question([list(t) for t in frame["answer_texts"]], values)
        answered = [i for i, v in enumerate(values) if v]
        return {
            "confidence": [float(predictions.scores[i]) for i in answered],
            "correct": [bool(exact[i]) for i in answered],
            "unit": "answered questions",
        }

    def report_sections(self, metrics: dict[str, Any], slices: dict[str, Any], views_dir: Path) -> list[Any]:
        """SQuAD 2.0's split: answerable (HasAns) and unanswerable (NoAns) questions, then per question word."""
        from pipelines.report.html import Section, hbar_chart, table

        found = slices.get("slices") or {}
        has, no = found.get("answerable=yes") or {}, found.get("answerable=no") or {}
        rows = [
            ["HasAns (answerable)", has.get("rows"), metrics.get("has_ans_exact"), metrics.get("has_ans_f1")],
            ["NoAns (unanswerable)", no.get("rows"), metrics.get("no_ans_exact"), metrics.get("no_ans_f1")],
            ["all", metrics.get("test_rows"), metrics.get("exact"), metrics.get("f1")],
        ]
        words = {k.removeprefix("question="): v for k, v in sorted(found.items()) if k.startswith("question=")}
        sections = [
            Section(
                "has-no-ans",
                "HasAns / NoAns",
                [
                    table(["questions", "count", "exact", "f1"], rows),
                    table(["null-score threshold (best F1 on validation)"], [[metrics.get("best_f1_thresh")]]),
                ],
            )
        ]
        if words:
            sections.append(
                Section(
                    "question-words",
                    "F1 per question word",
                    [
                        table(
                            ["question word", "questions", "f1"],
                            [[k, v.get("rows"), v.get("value")] for k, v in words.items()],
                        ),
                        hbar_chart(list(words), [v.get("value") for v in words.values()], "F1 per question word"),
                    ],
                )
            )
        return sections

    # ------------------------------------------------------------------ export, parity, serving

    _parity_config: Any = None  # the exported model's config (its tuned threshold) for outputs_disagree

    def export_spec(self, model: Any, tokenizer: Any) -> ExportSpec:
        """start_logits and end_logits [batch, sequence] from the tokenizer's inputs, both axes dynamic."""
        import torch

        self._parity_config = model.config

        from pipelines.export_onnx import onnx_input_names

        input_names = onnx_input_names(model, tokenizer)

        class SpanLogits(torch.nn.Module):
            def __init__(self, inner: Any) -> None:
                super().__init__()
                self.inner = inner

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
                if token_type_ids is not None:
                    kwargs["token_type_ids"] = token_type_ids
                head = getattr(self.inner, "qa_outputs", None)
                if head is None:  # a head of another shape: the model's own forward
                    out = self.inner(**kwargs)
                    return out.start_logits, out.end_logits
                # the HF heads split [.., 2] logits with Tensor.split, which exports as a Split node that needs
                # opset 18; indexing exports at any opset and gives the same numbers
                logits = head(self.inner.base_model(**kwargs)[0])
                return logits[..., 0].contiguous(), logits[..., 1].contiguous()

        frame = {
            "question": ["what is this example about?", "who?"],
            "context": ["an example context that is a little longer than the other one", "short context"],
        }
        feeds = self.feeds(
            tokenizer, encode_windows(tokenizer, frame["question"], frame["context"], 64, 0), input_names
        )
        outputs = ["start_logits", "end_logits"]
        return ExportSpec(
            module=SpanLogits(model).eval(),
            input_names=input_names,
            output_names=outputs,
            example_inputs=tuple(torch.from_numpy(feeds[name]) for name in input_names),
            dynamic_axes={name: {0: "batch", 1: "sequence"} for name in [*input_names, *outputs]},
        )

    @staticmethod
    def feeds(tokenizer: Any, features: dict[str, list], input_names: list[str]) -> dict[str, Any]:
        ids, mask = pad_batch(features["input_ids"], tokenizer.pad_token_id or 0)
        types, _ = pad_batch(features["token_type_ids"], 0)
        available = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
        return {name: available[name] for name in input_names}

    def serving_config(self, model: Any, tokenizer: Any, export_spec: ExportSpec) -> dict[str, Any]:
        o = self.options
        return {
            "task": self.name,
            "max_length": int(o.max_length),
            "doc_stride": int(o.doc_stride),
            "max_query_length": int(o.max_query_length),
            "n_best_size": int(o.n_best_size),
            "max_answer_length": int(o.max_answer_length),
            "null_score_diff_threshold": self.threshold(model.config),
            "threshold_source": "params" if o.null_score_diff_threshold is not None else "tuned on validation",
            "input_names": list(export_spec.input_names),
            "output_names": list(export_spec.output_names),
        }

    def parity_feeds(self, tokenizer: Any, frame: pd.DataFrame, input_names: list[str]) -> list[dict[str, Any]]:
        """Windows of the first export.parity_rows test questions, in batches of 1, 7, then up to 64."""
        from pipelines.export_onnx import parity_batch_sizes

        limit = int(self.params.export.parity_rows)
        features = self.windows(tokenizer, frame.iloc[:limit], labels=False)
        features.setdefault("token_type_ids", [[0] * len(r) for r in features["input_ids"]])
        contexts = frame["context"].astype(str).tolist()
        out, start = [], 0
        self._parity_windows: dict[int, tuple[dict[str, list], list[str]]] = {}
        for size in parity_batch_sizes(len(features["input_ids"])):
            part = {k: v[start : start + size] for k, v in features.items()}
            feed = self.feeds(tokenizer, part, input_names)
            out.append(feed)
            self._parity_windows[id(feed)] = (part, contexts)  # for outputs_disagree: answers, not only logits
            start += size
        return out

    def outputs_disagree(self, torch_outputs: list[Any], onnx_outputs: list[Any], feeds: dict[str, Any]) -> int:
        """Questions of the batch whose final answer string (n-best post-processing with the threshold) differs
        between PyTorch and ONNX, or one of whose windows has a different best start or end token. For feeds not
        made by `parity_feeds` here: the windows with a different best start or end token."""
        mask = np.asarray(feeds["attention_mask"]).astype(bool)
        differ = np.zeros(mask.shape[0], dtype=bool)
        for a, b in zip(torch_outputs[:2], onnx_outputs[:2], strict=True):
            a, b = np.where(mask, np.asarray(a), -np.inf), np.where(mask, np.asarray(b), -np.inf)
            differ |= a.argmax(axis=1) != b.argmax(axis=1)
        known = getattr(self, "_parity_windows", {}).get(id(feeds))
        if known is None:
            return int(differ.sum())
        part, contexts = known
        lengths = mask.sum(axis=1)
        examples = sorted(set(part["example_id"]))
        local = {e: k for k, e in enumerate(examples)}
        ids = [local[e] for e in part["example_id"]]
        answers = []
        for outputs in (torch_outputs, onnx_outputs):
            starts = [np.asarray(outputs[0])[i, : lengths[i]] for i in range(len(lengths))]
            ends = [np.asarray(outputs[1])[i, : lengths[i]] for i in range(len(lengths))]
            o = self.options
            best = best_answers(
                starts,
                ends,
                part["offset_start"],
                part["offset_end"],
                ids,
                [contexts[e] for e in examples],
                o.n_best_size,
                o.max_answer_length,
            )
            answers.append([final_answer(b, self.threshold(self._parity_config)) for b in best])
        bad = {examples[k] for k, (x, y) in enumerate(zip(*answers, strict=True)) if x != y}
        bad |= {part["example_id"][i] for i in np.flatnonzero(differ)}
        return len(bad)

    def runtime_inputs(self, frame: pd.DataFrame) -> list[Any]:
        return [
            {"question": str(q), "context": str(c)} for q, c in zip(frame["question"], frame["context"], strict=True)
        ]

    def predictions_from_runtime(self, outputs: list[Any], id2label: dict[int, str]) -> Predictions | None:
        return Predictions(
            values=[str(o.get("answer") or "") for o in outputs],
            scores=[float(o.get("score", 0.0)) for o in outputs],
            extra={
                "span_texts": [str(o.get("span_text", "")) for o in outputs],
                "score_diffs": [float(o.get("score_diff", math.inf)) for o in outputs],
                "threshold": float(outputs[0].get("threshold", self.threshold())) if outputs else self.threshold(),
            },
        )
