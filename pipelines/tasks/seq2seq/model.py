"""The seq2seq model: which one, its special tokens, its generation config and its two ONNX graphs. torch and
transformers are imported inside the functions (the package stays cheap to import).

- A local folder whose config says `is_encoder_decoder` (T5, BART, Marian, mBART, a saved EncoderDecoderModel) is
  loaded with AutoModelForSeq2SeqLM as it is.
- Any other folder (an encoder such as BERT or the bundled MiniLM) becomes a BERT2BERT `EncoderDecoderModel`
  warm-started from it twice: the encoder, and a decoder (causal mask, new cross-attention layers) whose LM head is
  tied to its word embeddings; `task.tie_encoder_decoder` shares the encoder's weights with the decoder. Its
  decoder starts from [CLS] and stops at [SEP] (the BERT2BERT recipe), padding is [PAD].
- In transformers 5 generation settings live in `model.generation_config`; the config keeps only what the
  architecture declares (EncoderDecoderConfig: decoder_start_token_id, pad_token_id).

ONNX: `first_step_module` (encoder + the decoder step on the start token: first logits, the self-attention
key/values of that step and every layer's cross-attention key/values, computed once per source) is model.onnx;
`decoder_step_module` (one token, past self-attention key/values in and out, cross key/values in) is decoder.onnx.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipelines.errors import ModelLoadError
from pipelines.tasks.seq2seq.generation import GenerationSettings, source_bias_rows

TIED_ATTR = "nlpops_tied_encoder_decoder"  # on the saved config: the decoder shares the encoder's weights
VOCABULARY_ATTR = "nlpops_output_vocabulary"  # on the saved config: the ids learned for task.output_vocabulary


@dataclass(frozen=True)
class SpecialTokens:
    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None  # always set by special_tokens; a loaded model's generation config may lack it
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: tuple[int, ...] | None = None


def read_config(model_path: Path) -> dict[str, Any]:
    try:
        return json.loads((Path(model_path) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"{model_path}: cannot read config.json ({exc})") from None


def is_seq2seq_folder(model_path: Path) -> bool:
    """True for an encoder-decoder checkpoint; False for an encoder to warm-start BERT2BERT from."""
    return bool(read_config(model_path).get("is_encoder_decoder"))


def _ids(value: Any) -> tuple[int, ...]:
    if value is None:
        return ()
    if isinstance(value, (list, tuple)):
        return tuple(int(v) for v in value)
    return (int(value),)


def special_tokens(model_path: Path, tokenizer: Any) -> SpecialTokens:
    """Decoder start, EOS, pad (and forced BOS/EOS) for the model in `model_path` with its tokenizer."""
    config = read_config(model_path)
    if config.get("is_encoder_decoder"):
        generation: dict[str, Any] = {}
        path = Path(model_path) / "generation_config.json"
        if path.is_file():
            try:
                generation = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                generation = {}

        def pick(name: str, default: Any = None) -> Any:
            for source in (generation, config):
                if source.get(name) is not None:
                    return source[name]
            return default

        pad = pick("pad_token_id", tokenizer.pad_token_id)
        start = pick("decoder_start_token_id", pad)
        eos = _ids(pick("eos_token_id", tokenizer.eos_token_id))
        forced_bos, forced_eos = pick("forced_bos_token_id"), _ids(pick("forced_eos_token_id")) or None
    else:  # BERT2BERT: [CLS] starts the decoder, [SEP] ends it
        start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        eos, pad, forced_bos, forced_eos = _ids(sep), tokenizer.pad_token_id, None, None
    missing = [n for n, v in (("decoder start", start), ("end of sequence", eos), ("padding", pad)) if v in (None, ())]
    if missing:
        raise ModelLoadError(
            f"{model_path}: the model/tokenizer defines no {', '.join(missing)} token; a seq2seq model needs them"
        )
    return SpecialTokens(int(start), eos, int(pad), None if forced_bos is None else int(forced_bos), forced_eos)


def learned_vocabulary(
    source_ids: list[list[int]],
    label_ids: list[list[int]],
    special: SpecialTokens,
    size: int,
    groups: list[str] | None = None,
) -> list[int]:
    """The `size` token ids that most training targets use without finding them in their own source (counted once
    per target; ties by id): what a model restricted to its source's tokens must still be able to write (question
    words, function words). Special tokens and label padding (< 0) are never counted.

    With `groups` (a data.group_column value per row: articles, say), the tokens that the targets of at least
    half the groups add come first (by count), then the rest by how many groups add them: a topic's name that one
    article's questions keep adding ("Huguenots") ranks below the words every article's questions add ("what",
    "?", "the")."""
    from collections import Counter

    skip = {special.decoder_start_token_id, *special.eos_token_ids, special.pad_token_id}
    counts: Counter[int] = Counter()
    seen_in: dict[int, set[str]] = {}
    for i, (source, labels) in enumerate(zip(source_ids, label_ids, strict=True)):
        present = set(source)
        added = [t for t in set(labels) if t >= 0 and t not in present and t not in skip]
        counts.update(added)
        if groups is not None:
            for t in added:
                seen_in.setdefault(t, set()).add(groups[i])
    if groups is None:
        return [t for t, _ in sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:size]]
    spread = {t: len(g) for t, g in seen_in.items()}
    general = max(2, -(-len(set(groups)) // 2))  # in at least half the groups (and two)

    def rank(item: tuple[int, int]) -> tuple[int, int, int, int]:
        token, count = item
        wide = spread[token] >= general
        return (0 if wide else 1, 0 if wide else -spread[token], -count, token)

    return [t for t, _ in sorted(counts.items(), key=rank)[:size]]


def model_vocabulary(model: Any, options: Any) -> tuple[int, ...] | None:
    """The output vocabulary generation is restricted to: the ids the model learned at training (stored on its
    config), at most task.output_vocabulary of them; None when the option is 0 or the model carries none."""
    size = int(getattr(options, "output_vocabulary", 0) or 0)
    learned = getattr(getattr(model, "config", None), VOCABULARY_ATTR, None)
    if not size or learned is None:
        return None
    return tuple(int(t) for t in list(learned)[:size])


def settings_from(
    special: SpecialTokens, options: Any, vocabulary: tuple[int, ...] | None = None
) -> GenerationSettings:
    """The settings generation runs with: a model's special tokens + task.generate (`options` is the task's) + the
    model's output vocabulary (`model_vocabulary`)."""
    o = options.generate
    return GenerationSettings(
        decoder_start_token_id=special.decoder_start_token_id,
        eos_token_ids=special.eos_token_ids,
        pad_token_id=special.pad_token_id,
        num_beams=int(o.num_beams),
        max_new_tokens=int(o.max_new_tokens),
        no_repeat_ngram_size=int(o.no_repeat_ngram_size),
        length_penalty=float(o.length_penalty),
        early_stopping=bool(o.early_stopping),
        forced_bos_token_id=special.forced_bos_token_id,
        forced_eos_token_ids=special.forced_eos_token_ids,
        source_bias=float(o.source_bias),
        # the loss's softmax is over logits + the rows generation adds: beam search scores with the same
        source_bias_normalised=bool(
            options.source_bias_in_loss or (vocabulary is not None and options.output_vocabulary_in_loss)
        ),
        vocabulary=vocabulary,
    )


def generation_settings(model: Any, options: Any) -> GenerationSettings:
    """`settings_from` with the special tokens of the model's generation config and its output vocabulary."""
    g = model.generation_config
    special = SpecialTokens(
        decoder_start_token_id=int(g.decoder_start_token_id),
        eos_token_ids=_ids(g.eos_token_id),
        pad_token_id=None if g.pad_token_id is None else int(g.pad_token_id),
        forced_bos_token_id=None if g.forced_bos_token_id is None else int(g.forced_bos_token_id),
        forced_eos_token_ids=_ids(g.forced_eos_token_id) or None,
    )
    return settings_from(special, options, model_vocabulary(model, options))


def torch_generation_config(settings: GenerationSettings) -> Any:
    """A GenerationConfig that makes torch's `generate` do exactly what `settings` say (nothing left to the
    model's own defaults)."""
    from transformers import GenerationConfig

    eos = list(settings.eos_token_ids)
    values: dict[str, Any] = {
        "decoder_start_token_id": settings.decoder_start_token_id,
        "eos_token_id": eos[0] if len(eos) == 1 else eos,
        "pad_token_id": settings.pad_token_id,
        "do_sample": False,
        "num_beams": settings.num_beams,
        "max_new_tokens": settings.max_new_tokens,
        "min_length": 0,
        "no_repeat_ngram_size": settings.no_repeat_ngram_size,
        "forced_bos_token_id": settings.forced_bos_token_id,
        "forced_eos_token_id": list(settings.forced_eos_token_ids) if settings.forced_eos_token_ids else None,
    }
    if settings.num_beams > 1:  # beam-only flags on a greedy config make it unsavable in transformers 5
        values.update(length_penalty=settings.length_penalty, early_stopping=settings.early_stopping)
    return GenerationConfig(**values)


def source_bias_tensor(
    input_ids: Any, attention_mask: Any, vocab: int, settings: GenerationSettings, bias: bool = True
) -> Any:
    """`source_bias_rows` for torch tensors: [rows, vocab] on the ids' device; None when neither the bias nor the
    vocabulary rule is on."""
    import numpy as np
    import torch

    rows = source_bias_rows(np.asarray(input_ids.cpu()), np.asarray(attention_mask.cpu()), vocab, settings, bias)
    return None if rows is None else torch.from_numpy(rows).to(input_ids.device)


def torch_generate(model: Any, input_ids: Any, attention_mask: Any, settings: GenerationSettings) -> Any:
    """torch's `generate` with exactly `settings`: its GenerationConfig, plus the source-token bias and the output
    vocabulary as a custom logits processor (run after generate's own, as the numpy loop applies them). Returns the
    sequences tensor."""
    import torch
    from transformers import LogitsProcessor, LogitsProcessorList

    class SourceTokenBias(LogitsProcessor):
        def __init__(self) -> None:
            self.bias: Any = None

        def __call__(self, sequences: Any, scores: Any) -> Any:
            if self.bias is None:  # the vocabulary size is the scores' (the output layer's), known at the first step
                rows = source_bias_tensor(input_ids, attention_mask, int(scores.shape[-1]), settings)
                assert rows is not None  # the processor is only made for a bias or a vocabulary
                self.bias = rows.repeat_interleave(scores.shape[0] // rows.shape[0], dim=0)
            scores = scores + self.bias.to(scores.device, scores.dtype)
            return torch.log_softmax(scores, dim=-1) if settings.source_bias_normalised else scores

    on = bool(settings.source_bias) or settings.vocabulary is not None
    processors = LogitsProcessorList([SourceTokenBias()] if on else [])
    return model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        generation_config=torch_generation_config(settings),
        logits_processor=processors,
    )


def set_generation(model: Any, settings: GenerationSettings) -> None:
    model.generation_config = torch_generation_config(settings)
    if type(model).__name__ == "EncoderDecoderModel":  # declared fields of EncoderDecoderConfig (loss, shifting)
        model.config.decoder_start_token_id = settings.decoder_start_token_id
        model.config.pad_token_id = settings.pad_token_id


# ----------------------------------------------------------------------------------------------- building


_DROPOUT_ATTRS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def warm_start(model_path: Path, dropout: float, tie: bool, cross_attention_init: str = "random") -> Any:
    """BERT2BERT from one encoder checkpoint: encoder + causal decoder with new cross-attention (random, or copied
    from each layer's self-attention with `cross_attention_init="self_attention"`)."""
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, EncoderDecoderModel

    def config(decoder: bool) -> Any:
        cfg = AutoConfig.from_pretrained(model_path, local_files_only=True, trust_remote_code=False)
        for attr in _DROPOUT_ATTRS:
            if hasattr(cfg, attr):
                setattr(cfg, attr, dropout)
        if decoder:
            cfg.is_decoder = True
            cfg.add_cross_attention = True
        return cfg

    kwargs = {"local_files_only": True, "trust_remote_code": False}
    try:
        try:  # the encoder's pooler is never used by a decoder: leave it out where the class allows
            encoder = AutoModel.from_pretrained(model_path, config=config(False), add_pooling_layer=False, **kwargs)
        except TypeError:
            encoder = AutoModel.from_pretrained(model_path, config=config(False), **kwargs)
        decoder = AutoModelForCausalLM.from_pretrained(model_path, config=config(True), **kwargs)
        model = EncoderDecoderModel(encoder=encoder, decoder=decoder)
    except Exception as exc:  # transformers raises many types for an encoder without a causal-LM twin
        raise ModelLoadError(
            f"{model_path}: cannot build a BERT2BERT encoder-decoder from this encoder ({type(exc).__name__}: "
            f"{str(exc).strip().splitlines()[0] if str(exc).strip() else ''}); set model.path to a seq2seq model "
            "folder (T5, BART, ...) or to a BERT-like encoder"
        ) from None
    if cross_attention_init == "self_attention":
        copy_self_to_cross_attention(model.decoder)
    if tie:
        tie_encoder_decoder(model)
    return model


def copy_self_to_cross_attention(decoder: Any) -> int:
    """Every decoder layer with a `crossattention` module of the same class and shapes as its `attention` (BERT,
    RoBERTa, ELECTRA... layers) gets a copy of the self-attention weights there (copies, not shared: they train
    apart). Returns how many layers were set; a model without such layers is left as it is."""
    done = 0
    for module in decoder.modules():
        cross, own = getattr(module, "crossattention", None), getattr(module, "attention", None)
        if cross is None or own is None or type(cross) is not type(own):
            continue
        source, target = own.state_dict(), cross.state_dict()
        if source.keys() != target.keys() or any(source[k].shape != target[k].shape for k in source):
            continue
        cross.load_state_dict(source)  # copies the values into cross's own parameters
        done += 1
    return done


def tie_encoder_decoder(model: Any) -> int:
    """Share every encoder weight with the decoder parameter of the same name and shape (embeddings, self-attention,
    feed-forward; cross-attention and the LM head transform stay the decoder's own). Returns how many were tied.
    The tied copies are declared so that save_pretrained keeps the encoder's and `load_trained` ties them again."""
    encoder_params = dict(model.encoder.named_parameters())
    body = model.decoder.base_model
    prefix = next(name for name, module in model.named_modules() if module is body)
    tied: dict[str, str] = {}
    for name, param in list(body.named_parameters()):
        source = encoder_params.get(name)
        if source is None or source is param or source.shape != param.shape:
            continue
        owner, _, attr = name.rpartition(".")
        setattr(body.get_submodule(owner) if owner else body, attr, source)
        tied[f"^{re.escape(f'{prefix}.{name}')}$"] = f"encoder.{name}"
    model.decoder.tie_weights()  # the LM head follows the (now shared) word embeddings
    model._tied_weights_keys = {**(getattr(model, "_tied_weights_keys", None) or {}), **tied}
    setattr(model.config, TIED_ATTR, True)
    return len(tied)


def load_seq2seq(model_dir: Path) -> Any:
    """A fine-tuned checkpoint in eval mode (weights shared again when they were at training)."""
    from transformers import AutoModelForSeq2SeqLM

    from pipelines.pretrained import quiet_transformers

    quiet_transformers()
    if not (Path(model_dir) / "config.json").is_file():
        raise ModelLoadError(f"{model_dir}: no config.json, not a trained model folder")
    try:
        model = AutoModelForSeq2SeqLM.from_pretrained(model_dir, local_files_only=True, trust_remote_code=False)
    except Exception as exc:
        raise ModelLoadError(f"{model_dir}: cannot load the trained checkpoint ({type(exc).__name__}: {exc})") from None
    if getattr(model.config, TIED_ATTR, False):
        tie_encoder_decoder(model)
    return model.eval()


# ----------------------------------------------------------------------------------------------- ONNX graphs


def kv_names(kind: str, layers: int) -> list[str]:
    """present_key_0, present_value_0, present_key_1, ... (kind: past, present or cross)."""
    return [f"{kind}_{part}_{i}" for i in range(layers) for part in ("key", "value")]


def _flat(cache: Any) -> list[Any]:
    return [t for layer in cache.layers for t in (layer.keys, layer.values)]


def first_step_module(model: Any, decoder_start_token_id: int) -> Any:
    """(input_ids, attention_mask) -> (logits [batch, vocab], present k/v of the start token per layer,
    cross-attention k/v per layer)."""
    import torch

    class FirstStep(torch.nn.Module):
        def __init__(self, inner: Any, start: int) -> None:
            super().__init__()
            self.inner, self.start = inner, start

        def forward(self, input_ids, attention_mask):
            from transformers.cache_utils import DynamicCache, EncoderDecoderCache
            from transformers.modeling_outputs import BaseModelOutput

            encoder = self.inner.get_encoder()
            hidden = encoder(input_ids=input_ids, attention_mask=attention_mask, return_dict=True).last_hidden_state
            out = self.inner(
                encoder_outputs=BaseModelOutput(last_hidden_state=hidden),
                attention_mask=attention_mask,
                decoder_input_ids=torch.full_like(input_ids[:, :1], self.start),
                past_key_values=EncoderDecoderCache(DynamicCache(), DynamicCache()),
                use_cache=True,
                return_dict=True,
            )
            cache = out.past_key_values
            return (out.logits[:, -1, :], *_flat(cache.self_attention_cache), *_flat(cache.cross_attention_cache))

    return FirstStep(model, decoder_start_token_id).eval()


def decoder_step_module(model: Any, layers: int, encoder_hidden_size: int) -> Any:
    """(decoder_input_ids [rows, 1], encoder_attention_mask, past k/v..., cross k/v...) -> (logits [rows, vocab],
    present k/v...). The cross-attention layers read the cached cross k/v; the encoder states they would otherwise
    project are a zero placeholder of the right shape."""
    import torch

    names = ["decoder_input_ids", "encoder_attention_mask", *kv_names("past", layers), *kv_names("cross", layers)]

    class DecoderStep(torch.nn.Module):
        def __init__(self, inner: Any) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, *inputs):
            from transformers.cache_utils import EncoderDecoderCache
            from transformers.modeling_outputs import BaseModelOutput

            ids, mask = inputs[0], inputs[1]
            past, cross = inputs[2 : 2 + 2 * layers], inputs[2 + 2 * layers :]
            cache = EncoderDecoderCache(
                tuple((past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1]) for i in range(layers))
            )
            placeholder = cross[0].new_zeros((mask.shape[0], mask.shape[1], encoder_hidden_size))
            out = self.inner(
                encoder_outputs=BaseModelOutput(last_hidden_state=placeholder),
                attention_mask=mask,
                decoder_input_ids=ids,
                past_key_values=cache,
                use_cache=True,
                return_dict=True,
            )
            return (out.logits[:, -1, :], *_flat(out.past_key_values.self_attention_cache))

    # torch.export binds inputs by the forward's signature: one named positional argument per graph input
    parameters = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names]
    DecoderStep.forward.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD), *parameters]
    )
    return DecoderStep(model).eval()


def encoder_hidden_size(model: Any) -> int:
    config = model.get_encoder().config
    return int(getattr(config, "hidden_size", None) or config.d_model)


def use_eager_attention(model: Any) -> None:
    """Plain attention for export (the SDPA path hands torch.export a symbolic `is_causal`)."""
    with contextlib.suppress(Exception):  # older or custom models: keep what they have
        model.set_attn_implementation("eager")
