"""The seq2seq Task: an encoder-decoder fine-tuned with teacher forcing, evaluated by generation.

Examples are (source, target) pairs (clean frame rows); features are the tokenised source (`input_ids`, the task
prefix prepended, cut at tokenise.max_length), the target as `labels` (cut at task.max_target_length, ending with
EOS, never starting with the decoder start token, which the decoder is fed instead) and `decoder_input_ids` (the
labels shifted right behind the start token), plus `generate`: whether evaluation generates for the example (all
test rows; a seeded sample of task.validation_generate_rows validation rows, so the per-epoch metric stays cheap).

Predictions are the generated texts (None for rows not generated for); the loss is the teacher-forced
cross-entropy per target token. ONNX: two graphs (model.py) and a parity check of its own: identical generated
token ids to torch's `generate` on real validation sources, and the logits of the first steps within export.atol.
torch and transformers are imported inside the methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipelines.tasks.base import ExportSpec, Predictions, Task
from pipelines.tasks.seq2seq import SPEC, Options
from pipelines.tasks.seq2seq.generation import GenerationSettings, trim
from pipelines.tasks.seq2seq.metrics import corpus_scores, generation_scores

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from pipelines.config import TokeniseConfig
    from pipelines.tasks.catalog import TaskSpec

IGNORE = -100
GENERATIONS_FILE = "generations.json"
GENERATIONS_SHOWN = 100
PARITY_LOGIT_STEPS = 3  # decoder steps whose logits are compared (the first from model.onnx, then decoder.onnx)
SAMPLE_SOURCES = ["an example source text that is a little longer than the other one", "a short source"]


def target_ids(
    tokenizer: Any, targets: list[str], max_length: int, start_id: int, eos_ids: tuple[int, ...]
) -> list[list[int]]:
    """Label ids per target: the tokenizer's own target encoding without a leading decoder start token (BERT's
    [CLS]: the decoder is fed it), ending with EOS, at most `max_length` ids."""
    encoded = tokenizer(text_target=list(targets), truncation=True, max_length=max_length + 1)["input_ids"]
    out = []
    for ids in encoded:
        ids = list(ids)
        if ids and ids[0] == start_id:
            ids = ids[1:]
        if not ids or ids[-1] not in eos_ids:
            ids = [*ids[: max_length - 1], eos_ids[0]]
        elif len(ids) > max_length:
            ids = [*ids[: max_length - 1], ids[-1]]
        out.append(ids)
    return out


def _pad(rows: list[list[int]], value: int) -> tuple[np.ndarray, np.ndarray]:
    width = max((len(r) for r in rows), default=0)
    ids = np.full((len(rows), max(width, 1)), value, dtype=np.int64)
    mask = np.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
        mask[i, : len(r)] = 1
    return ids, mask


class Seq2Seq(Task):
    """Text in, text out: teacher-forced training, evaluation and serving by generation."""

    spec: ClassVar[TaskSpec] = SPEC
    options: Options
    # the encoder-decoder graphs are served as exported: fp32, generation-level parity (check_parity)
    onnx_fusion: ClassVar[bool] = False
    onnx_int8: ClassVar[bool] = False
    _tokenizer: Any = None
    _special: Any = None
    _lowercase: bool | None = None
    _export: dict[str, Any] | None = None

    # ------------------------------------------------------------------ data

    def validate_data(self, report_path: Path, docs_dir: Path | None) -> dict[str, Any]:
        from pipelines.tasks.seq2seq.validation import validate_data

        return validate_data(self.params, report_path, docs_dir)

    def clean_data(self, out_dir: Path) -> dict[str, Any]:
        from pipelines.tasks.seq2seq.clean import clean_data

        return clean_data(self.params, out_dir)

    # ------------------------------------------------------------------ the base model's tokenizer and tokens

    def base_model_path(self) -> Path:
        from pipelines.pretrained import resolve_model_path

        return resolve_model_path(self.params.model)

    def tokenizer(self) -> Any:
        """The training tokenizer (the base model's; the checkpoint and the export carry a copy)."""
        if self._tokenizer is None:
            from pipelines.pretrained import load_tokenizer

            self._tokenizer = load_tokenizer(self.base_model_path())
        return self._tokenizer

    def special_tokens(self, tokenizer: Any | None = None) -> Any:
        if self._special is None:
            from pipelines.tasks.seq2seq.model import special_tokens

            self._special = special_tokens(self.base_model_path(), tokenizer or self.tokenizer())
        return self._special

    def lowercase(self) -> bool:
        """Score lower-cased text: task.lowercase_metrics, else whether the tokenizer lower-cases."""
        if self.options.lowercase_metrics is not None:
            return bool(self.options.lowercase_metrics)
        if self._lowercase is None:
            tok = self.tokenizer()
            self._lowercase = tok("Hello World")["input_ids"] == tok("hello world")["input_ids"]
        return bool(self._lowercase)

    # ------------------------------------------------------------------ tokenise

    def tokenise(self, tokenizer: Any, frame: pd.DataFrame, cfg: TokeniseConfig) -> dict[str, list]:
        special = self.special_tokens(tokenizer)
        sources = [self.options.prefix + str(s) for s in frame["source"]]
        targets = [str(t) for t in frame["target"]]
        example_ids = list(range(len(frame)))
        split = frame.attrs.get("split")
        if split == "train" and self.options.copy_task_share:  # the auxiliary copy task (task.copy_task_share)
            order = np.random.default_rng(self.params.train.seed).permutation(len(frame))
            copies = sorted(order[: round(self.options.copy_task_share * len(frame))].tolist())
            originals = [str(frame["source"].iloc[i]) for i in copies]
            sources += [self.options.copy_task_prefix + source for source in originals]
            targets += originals
            example_ids += copies  # each copy row points at the row it was made from
        input_ids: list[list[int]] = []
        for first in range(0, len(sources), cfg.batch_size):
            enc = tokenizer(
                sources[first : first + cfg.batch_size],
                truncation=True,
                max_length=cfg.max_length,
                return_token_type_ids=False,
                return_attention_mask=False,
            )
            input_ids.extend(list(ids) for ids in enc["input_ids"])
        labels = target_ids(
            tokenizer, targets, self.options.max_target_length, special.decoder_start_token_id, special.eos_token_ids
        )
        n = len(sources)
        generate = np.ones(n, dtype=np.int64)
        if split == "train":
            generate[:] = 0
        elif (
            split == "validation"
            and self.options.validation_generate_rows
            and n > self.options.validation_generate_rows
        ):
            generate[:] = 0
            chosen = np.random.default_rng(self.params.train.seed).choice(
                n, size=self.options.validation_generate_rows, replace=False
            )
            generate[chosen] = 1
        return {
            "input_ids": input_ids,
            "labels": labels,
            "decoder_input_ids": [[special.decoder_start_token_id, *ids[:-1]] for ids in labels],
            "example_id": example_ids,
            "length": [len(ids) for ids in input_ids],
            "generate": generate.tolist(),
        }

    def feature_types(self) -> dict[str, Any]:
        import pyarrow as pa

        ints = pa.list_(pa.int32())
        return {"input_ids": ints, "labels": ints, "decoder_input_ids": ints}

    # ------------------------------------------------------------------ model

    def auto_class(self) -> Any:
        from transformers import AutoModelForSeq2SeqLM

        return AutoModelForSeq2SeqLM

    def configure_model(self, config: Any, id2label: dict[int, str]) -> None:
        """No label space: nothing to size."""

    def settings_for(self, special: Any) -> GenerationSettings:
        from pipelines.tasks.seq2seq.model import settings_from

        return settings_from(special, self.options)

    def build_model(self, model_path: Path, id2label: dict[int, str], model_cfg: Any) -> Any:
        """A local seq2seq checkpoint as it is, or BERT2BERT warm-started from an encoder (model.py)."""
        from pipelines.pretrained import load_pretrained_model, load_tokenizer, quiet_transformers
        from pipelines.tasks.seq2seq.model import is_seq2seq_folder, set_generation, special_tokens, warm_start

        quiet_transformers()
        special = special_tokens(model_path, load_tokenizer(model_path))
        if is_seq2seq_folder(model_path):
            model = load_pretrained_model(model_path, self, {}, model_cfg)
        else:
            model = warm_start(
                model_path, model_cfg.dropout, self.options.tie_encoder_decoder, self.options.cross_attention_init
            )
        set_generation(model, self.settings_for(special))
        return model

    def learn_from_training_split(self, model: Any, rows: dict[str, list], clean_path: Path | None = None) -> None:
        """task.output_vocabulary: the target tokens most often not found in their source, kept on the model's
        config in that order (saved with it; generation, the export and serving.json take the first
        task.output_vocabulary of them). Where the clean split has data.group_column's values, tokens added in
        more groups rank first (`learned_vocabulary`)."""
        from pipelines.tasks.seq2seq import LEARNED_VOCABULARY
        from pipelines.tasks.seq2seq.model import VOCABULARY_ATTR, learned_vocabulary

        if self.options.output_vocabulary:
            groups = None
            if clean_path is not None:
                import pyarrow.parquet as pq

                if "group" in pq.read_schema(clean_path).names:
                    values = pq.read_table(clean_path, columns=["group"]).column("group").to_pylist()
                    if len(set(values)) > 1:
                        groups = [str(values[int(i)]) for i in rows["example_id"]]
            special = self.special_tokens()
            learned = learned_vocabulary(rows["input_ids"], rows["labels"], special, LEARNED_VOCABULARY, groups)
            setattr(model.config, VOCABULARY_ATTR, learned)

    def load_trained(self, model_dir: Path) -> Any:
        from pipelines.tasks.seq2seq.model import generation_settings, load_seq2seq, set_generation

        model = load_seq2seq(model_dir)
        set_generation(model, generation_settings(model, self.options))  # this run's task.generate settings
        return model

    def collate(self, rows: dict[str, list], pad_token_id: int) -> dict[str, torch.Tensor]:
        import torch

        ids, mask = _pad([list(r) for r in rows["input_ids"]], pad_token_id)
        batch = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
        if "labels" in rows:
            labels, _ = _pad([list(r) for r in rows["labels"]], IGNORE)
            decoder, decoder_mask = _pad([list(r) for r in rows["decoder_input_ids"]], pad_token_id)
            batch["decoder_input_ids"] = torch.from_numpy(decoder)
            batch["decoder_attention_mask"] = torch.from_numpy(decoder_mask)
            batch["labels"] = torch.from_numpy(labels)
        return batch

    def training_loss(self, model: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Teacher-forced cross-entropy over the target tokens, with task.label_smoothing (and the source-token
        bias on the logits when task.source_bias_in_loss; over the output vocabulary when
        task.output_vocabulary_in_loss)."""
        total, count = self._loss(model, batch, self.options.label_smoothing)
        return total / max(count, 1)

    def _loss(self, model: Any, batch: dict[str, Any], smoothing: float) -> tuple[Any, int]:
        """(summed loss, target tokens it covers). With task.output_vocabulary_in_loss the softmax is taken over the
        tokens generation may write (the source's, the output vocabulary, EOS) and label smoothing spreads over them
        alone; target tokens outside them, which generation can never write, are not trained on."""
        import torch

        from pipelines.tasks.seq2seq.model import generation_settings, model_vocabulary, source_bias_tensor

        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs).logits
        labels = batch["labels"]
        inner = getattr(model, "module", model)  # DDP wraps the model
        restricted = self.options.output_vocabulary_in_loss and model_vocabulary(inner, self.options) is not None
        if self.options.source_bias_in_loss or restricted:  # the rows generation adds at every step, every position
            settings = generation_settings(inner, self.options)
            rows = source_bias_tensor(
                batch["input_ids"],
                batch["attention_mask"],
                int(logits.shape[-1]),
                settings,
                self.options.source_bias_in_loss,
            )
            assert rows is not None  # Options refuses source_bias_in_loss without a bias
            logits = logits + rows.to(logits.dtype).unsqueeze(1)
        if not restricted:
            flat = labels.reshape(-1)
            total = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]).float(),
                flat,
                ignore_index=IGNORE,
                label_smoothing=smoothing,
                reduction="sum",
            )
            return total, int((flat != IGNORE).sum())
        logp = torch.log_softmax(logits.float(), dim=-1)
        picked = logp.gather(-1, labels.clamp(min=0).unsqueeze(-1)).squeeze(-1)
        trained = (labels != IGNORE) & torch.isfinite(picked)
        per_token = -picked.masked_fill(~trained, 0.0)
        if smoothing:
            allowed = torch.isfinite(logp)
            spread = -logp.masked_fill(~allowed, 0.0).sum(-1) / allowed.sum(-1).clamp(min=1)
            per_token = (1.0 - smoothing) * per_token + smoothing * spread.masked_fill(~trained, 0.0)
        return per_token.sum(), int(trained.sum())

    # ------------------------------------------------------------------ predictions and metrics

    def predict(
        self, model: Any, rows: dict[str, list], frame: pd.DataFrame, batch_size: int, pad_token_id: int
    ) -> Predictions:
        """Generated text for every example flagged `generate` (None for the others), the teacher-forced loss per
        target token over all of them (no label smoothing)."""
        import torch

        from pipelines.tasks.seq2seq.model import generation_settings, set_generation, torch_generate
        from pipelines.train import sequential_batches

        def take(idx: list[int]) -> dict[str, list]:
            return {k: [v[i] for i in idx] for k, v in rows.items()}

        settings = generation_settings(model, self.options)
        set_generation(model, settings)
        model.eval()
        n = len(frame)
        loss_sum, tokens = 0.0, 0
        values: list[str | None] = [None] * n
        generated_tokens: list[int | None] = [None] * n
        tokenizer = self.tokenizer()
        with torch.inference_mode():
            if "labels" in rows:
                for idx in sequential_batches(rows["length"], batch_size):
                    total, count = self._loss(model, self.collate(take(idx), pad_token_id), 0.0)
                    loss_sum += float(total)
                    tokens += count
            chosen = [i for i, flag in enumerate(rows.get("generate") or [1] * len(rows["input_ids"])) if flag]
            lengths = [rows["length"][i] for i in chosen]
            for order in sequential_batches(lengths, batch_size):
                idx = [chosen[k] for k in order]
                ids, mask = _pad([list(rows["input_ids"][i]) for i in idx], pad_token_id)
                out = torch_generate(model, torch.from_numpy(ids), torch.from_numpy(mask), settings)
                sequences = [trim(seq, settings.eos_token_ids) for seq in out.tolist()]
                texts = tokenizer.batch_decode(
                    [seq[1:] for seq in sequences], skip_special_tokens=True, clean_up_tokenization_spaces=True
                )
                for i, seq, text in zip(idx, sequences, texts, strict=True):
                    example = int(rows["example_id"][i])
                    values[example] = text.strip()
                    generated_tokens[example] = len(seq) - 1
        return Predictions(
            values=values,
            loss=loss_sum / tokens if tokens else float("nan"),
            extra={"generated_tokens": generated_tokens},
        )

    def _generated(self, predictions: Predictions, frame: pd.DataFrame) -> tuple[list[int], list[str], list[int]]:
        idx = [i for i, v in enumerate(predictions.values) if v is not None]
        counts = (predictions.extra or {}).get("generated_tokens") or [None] * len(predictions.values)
        return idx, [str(predictions.values[i]) for i in idx], [int(counts[i] or 0) for i in idx]

    def score(self, predictions: Predictions, frame: pd.DataFrame, id2label: dict[int, str]) -> dict[str, Any]:
        """bleu, chrf, rouge1/2/L, gen_len and the copy-source floor (copy_bleu, copy_chrf, copy_rougeL) on the
        examples generated for; `rows` counts them."""
        idx, texts, counts = self._generated(predictions, frame)
        references = [str(frame["target"].iloc[i]) for i in idx]
        sources = [str(frame["source"].iloc[i]) for i in idx]
        scores = generation_scores(texts, references, sources, counts, self.lowercase())
        scores["lowercased"] = self.lowercase()
        return scores

    def slices(
        self, predictions: Predictions, frame: pd.DataFrame, rows: dict[str, list] | None, id2label: dict[int, str]
    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any], list[str]]:
        """The primary metric on short vs long sources (gate.long_text_threshold, in gate.length_slice_unit) and
        per data.slice_column value."""
        gate = self.params.gate
        metric = self.params.primary_metric
        idx, texts, _ = self._generated(predictions, frame)
        sources = [str(s) for s in frame["source"]]
        sizes = [len(s.split()) if gate.length_slice_unit == "tokens" else len(s) for s in sources]
        long = [size > gate.long_text_threshold for size in sizes]
        groups: dict[str, list[int]] = {}
        for k, i in enumerate(idx):
            groups.setdefault("source=long" if long[i] else "source=short", []).append(k)
            if "slice" in frame.columns:
                groups.setdefault(f"slice={frame['slice'].iloc[i]}", []).append(k)
        found = {}
        lowercase = self.lowercase()
        for name, members in sorted(groups.items()):
            part = corpus_scores(
                [texts[k] for k in members], [str(frame["target"].iloc[idx[k]]) for k in members], lowercase
            )
            found[name] = {
                "value": float(part[metric]) if metric in part else None,
                "rows": len(members),
                "metric": metric,
            }
        membership = {
            "rows": [int(r) for r in frame["row"]],
            "generated": idx,
            "long": long,
            "slice": frame["slice"].astype(str).tolist() if "slice" in frame.columns else None,
        }
        unit = gate.length_slice_unit
        notes = [f"{metric} on sources of at most / more than {gate.long_text_threshold} {unit}, and per data slice"]
        return found, membership, notes

    def write_evaluation(
        self, scores: dict[str, Any], predictions: Predictions, frame: pd.DataFrame, out_dir: Path
    ) -> dict[str, Path]:
        """generations.json: the first test examples with their reference and generated text."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        idx, texts, counts = self._generated(predictions, frame)
        shown = [
            {
                "row": int(frame["row"].iloc[i]),
                "source": str(frame["source"].iloc[i]),
                "target": str(frame["target"].iloc[i]),
                "generated": text,
                "tokens": count,
            }
            for i, text, count in list(zip(idx, texts, counts, strict=True))[:GENERATIONS_SHOWN]
        ]
        path = out_dir / GENERATIONS_FILE
        path.write_text(json.dumps(shown, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        return {"generations": path}

    def evaluation_files(self, out_dir: Path) -> list[Path]:
        return [Path(out_dir) / GENERATIONS_FILE]

    # ------------------------------------------------------------------ export, parity, serving

    def export_graphs(self, model: Any, tokenizer: Any) -> dict[str, ExportSpec]:
        """model.onnx: (input_ids, attention_mask) -> first-step logits, the start token's self-attention k/v and
        every layer's cross-attention k/v; decoder.onnx: one decoder step with past k/v. Sample inputs have batch 2,
        a source of 5+ tokens and a past of 3 (every dynamic dimension >= 2, and distinct)."""
        import torch

        from pipelines.tasks.seq2seq.model import (
            decoder_step_module,
            encoder_hidden_size,
            first_step_module,
            generation_settings,
            kv_names,
            use_eager_attention,
        )

        use_eager_attention(model)
        model.eval()
        settings = generation_settings(model, self.options)
        first = first_step_module(model, settings.decoder_start_token_id)
        enc = tokenizer(
            [self.options.prefix + s for s in SAMPLE_SOURCES],
            padding="longest",
            return_tensors="pt",
            return_token_type_ids=False,
        )
        ids, mask = enc["input_ids"].long(), enc["attention_mask"].long()
        with torch.inference_mode():
            out = first(ids, mask)
        layers = (len(out) - 1) // 4
        step = decoder_step_module(model, layers, encoder_hidden_size(model))
        past, cross = list(out[1 : 1 + 2 * layers]), list(out[1 + 2 * layers :])
        tokens = out[0].argmax(-1, keepdim=True)
        with torch.inference_mode():
            for _ in range(2):  # a past of 3 tokens for the sample
                result = step(tokens, mask, *past, *cross)
                past, tokens = list(result[1:]), result[0].argmax(-1, keepdim=True)
        past = [p.clone() for p in past]
        cross = [c.clone() for c in cross]
        first_outputs = ["logits", *kv_names("present", layers), *kv_names("cross", layers)]
        step_inputs = [
            "decoder_input_ids",
            "encoder_attention_mask",
            *kv_names("past", layers),
            *kv_names("cross", layers),
        ]
        step_axes: dict[str, dict[int, str]] = {
            "decoder_input_ids": {0: "batch"},
            "encoder_attention_mask": {0: "batch", 1: "source"},
            **{name: {0: "batch", 2: "past"} for name in kv_names("past", layers)},
            **{name: {0: "batch", 2: "source"} for name in kv_names("cross", layers)},
        }
        graphs = {
            "model.onnx": ExportSpec(
                module=first,
                input_names=["input_ids", "attention_mask"],
                output_names=first_outputs,
                example_inputs=(ids, mask),
                dynamic_axes={"input_ids": {0: "batch", 1: "source"}, "attention_mask": {0: "batch", 1: "source"}},
            ),
            "decoder.onnx": ExportSpec(
                module=step,
                input_names=step_inputs,
                output_names=["logits", *kv_names("present", layers)],
                example_inputs=(tokens.clone(), mask, *past, *cross),
                dynamic_axes=step_axes,
            ),
        }
        self._export = {"model": model, "settings": settings, "layers": layers, "graphs": graphs}
        return graphs

    def export_spec(self, model: Any, tokenizer: Any) -> ExportSpec:
        return self.export_graphs(model, tokenizer)["model.onnx"]

    def serving_config(self, model: Any, tokenizer: Any, export_spec: ExportSpec) -> dict[str, Any]:
        from pipelines.tasks.seq2seq.model import generation_settings

        known = self._export or {}
        graphs = known.get("graphs") or {}
        decoder = graphs.get("decoder.onnx")
        return {
            "task": self.name,
            "max_length": int(self.params.tokenise.max_length),
            "prefix": self.options.prefix,
            "input_names": list(export_spec.input_names),
            "output_names": list(export_spec.output_names),
            "decoder_input_names": list(decoder.input_names) if decoder else [],
            "decoder_output_names": list(decoder.output_names) if decoder else [],
            "layers": int(known.get("layers", 0)),
            "generation": (known.get("settings") or generation_settings(model, self.options)).to_dict(),
        }

    def parity_feeds(self, tokenizer: Any, frame: pd.DataFrame, input_names: list[str]) -> list[dict[str, Any]]:
        """Encoder inputs of the first export.parity_rows sources in batches of 1, 7, then up to 64 (the generic
        check; `check_parity` is what the export stage runs)."""
        from pipelines.export_onnx import parity_batch_sizes

        sources = [self.options.prefix + str(s) for s in frame["source"].iloc[: int(self.params.export.parity_rows)]]
        feeds, start = [], 0
        for size in parity_batch_sizes(len(sources)):
            enc = tokenizer(
                sources[start : start + size],
                truncation=True,
                max_length=self.params.tokenise.max_length,
                padding="longest",
                return_token_type_ids=False,
                return_tensors="np",
            )
            feeds.append({name: np.asarray(enc[name], dtype=np.int64) for name in input_names})
            start += size
        return feeds

    def outputs_disagree(self, torch_outputs: list[Any], onnx_outputs: list[Any], feeds: dict[str, Any]) -> int:
        """Sources whose first generated token (argmax of the first-step logits) differs."""
        return int((np.asarray(torch_outputs[0]).argmax(-1) != np.asarray(onnx_outputs[0]).argmax(-1)).sum())

    def check_parity(
        self, export_dir: Path, graphs: dict[str, ExportSpec], tokenizer: Any, frame: pd.DataFrame, cfg: Any
    ) -> dict[str, Any] | None:
        """Generation through the ONNX runtime against torch's `generate` with the same settings, on the first
        export.parity_rows rows of the split, in batches of 1, 7, then up to 64: every source's generated token ids
        must be identical (`label_mismatches` counts those that are not), and the logits of the first
        PARITY_LOGIT_STEPS steps (teacher-forced on torch's tokens) within export.atol."""
        import torch

        from pipelines.export_onnx import parity_batch_sizes
        from pipelines.serving import load_runtime
        from pipelines.tasks.seq2seq.model import torch_generate

        known = self._export or {}
        model, settings = known["model"], known["settings"]
        first, step = graphs["model.onnx"].module, graphs["decoder.onnx"].module
        runtime = load_runtime(export_dir)
        sources = [str(s) for s in frame["source"].iloc[: int(cfg.parity_rows)]]
        max_diff, mismatches, sizes, lengths, start = 0.0, 0, [], [], 0
        examples: list[dict[str, Any]] = []
        for size in parity_batch_sizes(len(sources)):
            part = sources[start : start + size]
            start += size
            feeds = runtime.encode(part)
            ids, mask = torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"])
            with torch.inference_mode():
                expected = torch_generate(model, ids, mask, settings)
            expected_ids = [trim(seq, settings.eos_token_ids) for seq in expected.tolist()]
            got = runtime.generate_ids(part).sequences
            for source, a, b in zip(part, expected_ids, got, strict=True):
                if a != b:
                    mismatches += 1
                    if len(examples) < 5:
                        examples.append({"source": source, "torch": a, "onnx": b})
            max_diff = max(max_diff, self._logit_diff(runtime, first, step, feeds, expected_ids, settings))
            sizes.append(int(ids.shape[0]))
            lengths.append(int(ids.shape[1]))
        return {
            "passed": bool(max_diff <= cfg.atol and mismatches == 0),
            "max_abs_diff": max_diff,
            "atol": float(cfg.atol),
            "rows": int(sum(sizes)),
            "label_mismatches": mismatches,
            "batch_sizes": sizes,
            "seq_lengths": lengths,
            "split": self.spec.parity_split,
            "check": f"generated token ids identical to torch generate; logits of the first {PARITY_LOGIT_STEPS} "
            "decoder steps within atol",
            "generation": settings.to_dict(),
            "mismatch_examples": examples,
        }

    @staticmethod
    def _logit_diff(
        runtime: Any, first: Any, step: Any, feeds: dict[str, Any], token_ids: list[list[int]], s: GenerationSettings
    ) -> float:
        """Max |ONNX - torch| over the logits of the first decoder steps, both fed torch's generated tokens."""
        import torch

        mask = feeds["attention_mask"]
        logits, self_kv, cross_kv = runtime.first(feeds)
        with torch.inference_mode():
            expected = first(torch.from_numpy(feeds["input_ids"]), torch.from_numpy(mask))
        layers = (len(expected) - 1) // 4
        torch_logits, past, cross = expected[0], list(expected[1 : 1 + 2 * layers]), list(expected[1 + 2 * layers :])
        diff = float(np.abs(logits - torch_logits.float().numpy()).max(initial=0.0))
        for k in range(1, PARITY_LOGIT_STEPS):
            tokens = np.asarray([seq[k] if len(seq) > k else s.fill_token_id for seq in token_ids], dtype=np.int64)
            logits, self_kv = runtime.step(tokens, mask, self_kv, cross_kv)
            with torch.inference_mode():
                result = step(torch.from_numpy(tokens)[:, None], torch.from_numpy(mask), *past, *cross)
            torch_logits, past = result[0], list(result[1:])
            diff = max(diff, float(np.abs(logits - torch_logits.float().numpy()).max(initial=0.0)))
            if not np.isfinite(logits).all():
                return float("inf")
        return diff

    def runtime_inputs(self, frame: pd.DataFrame) -> list[Any]:
        return [str(s) for s in frame["source"]]

    def predictions_from_runtime(self, outputs: list[Any], id2label: dict[int, str]) -> Predictions | None:
        return Predictions(
            values=[str(o.get("generated_text", "")) for o in outputs],
            scores=[float(o.get("score", 0.0)) for o in outputs],
            extra={"generated_tokens": [int(o.get("tokens", 0)) for o in outputs]},
        )
