"""Greedy and beam-search generation in numpy: what transformers' `generate` does for an encoder-decoder, step for
step, so the ONNX runtime produces the very token ids PyTorch does (the export stage checks it).

The model is reached through two functions, so the same loop serves ONNX Runtime (the runtime) and any test double:

- `first()` -> (logits [batch, vocab] of the first decoder step, self-attention key/values, cross-attention
  key/values): the encoder and the step on the decoder start token, for the batch's sources;
- `step(tokens [rows], encoder_mask [rows, source], self_kv, cross_kv)` -> (logits [rows, vocab], new self_kv):
  one decoder step with past key/values (rows = batch * num_beams in beam search).

Replicated from transformers 5 (generation/utils.py `_sample` / `_beam_search`, logits processors): the logits
processors no-repeat n-grams, forced BOS (first step) and forced EOS (last step), then pipelines' own
source-token bias (`source_bias`) and output vocabulary (`vocabulary`: only the source's tokens, those ids and EOS;
torch gets both as a custom processor: model.torch_generate); greedy takes the
argmax of the processed logits, finished rows continue with the pad token; beam search keeps 2 * num_beams
candidates per step, scores finished hypotheses by sum(log p) / generated_length ** length_penalty, and stops by
the same heuristic (`early_stopping` False: when the best running beam can no longer beat the worst finished
one). Scores stay in float32 as in torch. Sequences start with the decoder start token; `trim` cuts them after
their first EOS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

NEG = np.float32(-1.0e9)  # transformers' "never pick this" score in beam search

FirstFn = Callable[[], tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]]
StepFn = Callable[[np.ndarray, np.ndarray, list[np.ndarray], list[np.ndarray]], tuple[np.ndarray, list[np.ndarray]]]


@dataclass(frozen=True)
class GenerationSettings:
    """Everything that decides the generated ids (serving.json carries it; torch's GenerationConfig is built
    from it)."""

    decoder_start_token_id: int
    eos_token_ids: tuple[int, ...]
    pad_token_id: int | None
    num_beams: int = 1
    max_new_tokens: int = 20
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    early_stopping: bool = False
    forced_bos_token_id: int | None = None
    forced_eos_token_ids: tuple[int, ...] | None = None
    source_bias: float = 0.0
    source_bias_normalised: bool = False  # scores log-softmaxed again after the bias (trained with it in the loss)
    # the only tokens written besides the source's own and EOS (task.output_vocabulary); None = any token
    vocabulary: tuple[int, ...] | None = None

    @property
    def max_length(self) -> int:
        """Decoder sequence length at most: the start token plus max_new_tokens."""
        return 1 + self.max_new_tokens

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["eos_token_ids"] = list(self.eos_token_ids)
        out["forced_eos_token_ids"] = list(self.forced_eos_token_ids) if self.forced_eos_token_ids else None
        out["vocabulary"] = None if self.vocabulary is None else list(self.vocabulary)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GenerationSettings:
        forced_eos = data.get("forced_eos_token_ids")
        return cls(
            decoder_start_token_id=int(data["decoder_start_token_id"]),
            eos_token_ids=tuple(int(x) for x in data["eos_token_ids"]),
            pad_token_id=None if data.get("pad_token_id") is None else int(data["pad_token_id"]),
            num_beams=int(data.get("num_beams", 1)),
            max_new_tokens=int(data.get("max_new_tokens", 20)),
            no_repeat_ngram_size=int(data.get("no_repeat_ngram_size", 0)),
            length_penalty=float(data.get("length_penalty", 1.0)),
            early_stopping=bool(data.get("early_stopping", False)),
            forced_bos_token_id=None if data.get("forced_bos_token_id") is None else int(data["forced_bos_token_id"]),
            forced_eos_token_ids=tuple(int(x) for x in forced_eos) if forced_eos else None,
            source_bias=float(data.get("source_bias", 0.0)),
            source_bias_normalised=bool(data.get("source_bias_normalised", False)),
            vocabulary=None if data.get("vocabulary") is None else tuple(int(x) for x in data["vocabulary"]),
        )

    @property
    def fill_token_id(self) -> int:
        """What finished greedy rows are continued with (transformers: pad, else the first EOS)."""
        return self.pad_token_id if self.pad_token_id is not None else self.eos_token_ids[0]


@dataclass
class Generated:
    """One generated sequence per source (decoder start token first, trimmed after the first EOS), its score
    (beam search: the length-penalised sum of log-probabilities of the best hypothesis; greedy: the mean
    log-probability of the chosen tokens) and the number of decoder calls made."""

    sequences: list[list[int]]
    scores: list[float]
    steps: int


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float32, copy=False)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def trim(ids: Sequence[int], eos_token_ids: Sequence[int]) -> list[int]:
    """A generated row up to and including its first EOS after the start token (all of it when it has none)."""
    ids = [int(i) for i in ids]
    eos = set(int(e) for e in eos_token_ids)
    for position in range(1, len(ids)):
        if ids[position] in eos:
            return ids[: position + 1]
    return ids


def banned_ngram_tokens(sequences: np.ndarray, size: int) -> list[tuple[int, int]]:
    """(row, token) pairs that would repeat an n-gram of `size` already in the row (transformers'
    NoRepeatNGramLogitsProcessor: the window starting at the current suffix never bans its own successor)."""
    cur_len = sequences.shape[1]
    if size <= 0 or cur_len < size:
        return []
    prefix = sequences[:, cur_len + 1 - size :]
    windows = np.lib.stride_tricks.sliding_window_view(sequences, size, axis=1)  # [rows, cur_len - size + 1, size]
    matches = (windows[..., :-1] == prefix[:, None, :]).all(axis=-1)
    found = np.nonzero(matches)
    return list(zip(found[0].tolist(), windows[found[0], found[1], -1].tolist(), strict=True))


def source_bias_rows(
    source_ids: np.ndarray | None, encoder_mask: np.ndarray, vocab: int, s: GenerationSettings, bias: bool = True
) -> np.ndarray | None:
    """[sources, vocab] float32 added to each step's scores: `s.source_bias` on every token id of each source (its
    real tokens; the start, EOS and pad tokens excepted), 0 elsewhere; with `s.vocabulary`, -inf on every token
    that is neither in the source, nor in the vocabulary, nor EOS. None when neither rule is on. `bias=False`:
    the vocabulary rule alone (the training loss without the bias)."""
    amount = float(s.source_bias) if bias else 0.0
    if not amount and s.vocabulary is None:
        return None
    if source_ids is None:
        raise ValueError("generation with a source_bias or a vocabulary needs the sources' token ids")
    rows, cols = np.nonzero(np.asarray(encoder_mask).astype(bool))
    tokens = np.asarray(source_ids)[rows, cols]
    special = [s.decoder_start_token_id, *s.eos_token_ids, *([] if s.pad_token_id is None else [s.pad_token_id])]
    keep = (tokens >= 0) & (tokens < vocab) & ~np.isin(tokens, special)
    if s.vocabulary is None:
        out = np.zeros((source_ids.shape[0], vocab), dtype=np.float32)
    else:
        out = np.full((source_ids.shape[0], vocab), -np.inf, dtype=np.float32)
        allowed = np.asarray([t for t in (*s.vocabulary, *s.eos_token_ids) if 0 <= t < vocab], dtype=np.int64)
        out[:, allowed] = 0.0
    out[rows[keep], tokens[keep]] = np.float32(amount)
    return out


def process_scores(
    sequences: np.ndarray, scores: np.ndarray, s: GenerationSettings, bias: np.ndarray | None = None
) -> np.ndarray:
    """The logits processors generate applies, in its order: no-repeat n-grams, forced BOS, forced EOS, then the
    source-token rows (`source_bias_rows`: the bias and the vocabulary rule, one row per row of `scores`;
    pipelines' own processor, which torch's `generate` gets as a custom logits processor, run after its own),
    log-softmaxed again when `source_bias_normalised` (a model trained with them in its loss: beam search then sums
    the log-probs of softmax(logits + rows), as in training; greedy picks the same token either way)."""
    scores = np.array(scores, dtype=np.float32, copy=True)
    cur_len = sequences.shape[1]
    vocab = scores.shape[-1]
    for row, token in banned_ngram_tokens(sequences, s.no_repeat_ngram_size):
        if token < vocab:
            scores[row, token] = -np.inf
    if s.forced_bos_token_id is not None and cur_len == 1:
        scores[:] = -np.inf
        scores[:, s.forced_bos_token_id] = 0.0
    if s.forced_eos_token_ids and cur_len == s.max_length - 1:
        scores[:] = -np.inf
        scores[:, list(s.forced_eos_token_ids)] = 0.0
    if bias is not None:
        scores += bias
        if s.source_bias_normalised:  # the model's distribution is softmax(logits + bias): log-probs of that
            scores = log_softmax(scores)
    return scores


def generate(
    first: FirstFn, step: StepFn, encoder_mask: np.ndarray, s: GenerationSettings, source_ids: np.ndarray | None = None
) -> Generated:
    """Greedy search (num_beams 1) or beam search over the model behind `first` / `step`; `source_ids` (the
    encoder's input ids) are needed for a non-zero `s.source_bias`."""
    if s.num_beams > 1:
        return beam_search(first, step, encoder_mask, s, source_ids)
    return greedy(first, step, encoder_mask, s, source_ids)


def greedy(
    first: FirstFn, step: StepFn, encoder_mask: np.ndarray, s: GenerationSettings, source_ids: np.ndarray | None = None
) -> Generated:
    logits, self_kv, cross_kv = first()
    batch = logits.shape[0]
    bias = source_bias_rows(source_ids, encoder_mask, logits.shape[-1], s)
    sequences = np.full((batch, 1), s.decoder_start_token_id, dtype=np.int64)
    unfinished = np.ones(batch, dtype=bool)
    eos = np.asarray(s.eos_token_ids, dtype=np.int64)
    logprob_sum = np.zeros(batch, dtype=np.float64)
    chosen = np.zeros(batch, dtype=np.int64)
    steps = 1
    while True:
        scores = process_scores(sequences, logits, s, bias)
        next_tokens = scores.argmax(axis=-1)
        logprobs = log_softmax(scores)[np.arange(batch), next_tokens]
        logprob_sum += np.where(unfinished, logprobs, 0.0)
        chosen += unfinished
        next_tokens = np.where(unfinished, next_tokens, s.fill_token_id)
        sequences = np.concatenate([sequences, next_tokens[:, None]], axis=1)
        unfinished &= ~(np.isin(next_tokens, eos) | (sequences.shape[1] >= s.max_length))
        if not unfinished.any():
            break
        logits, self_kv = step(next_tokens, encoder_mask, self_kv, cross_kv)
        steps += 1
    return Generated(
        sequences=[trim(row, s.eos_token_ids) for row in sequences.tolist()],
        scores=[float(total) / max(int(n), 1) for total, n in zip(logprob_sum, chosen, strict=True)],
        steps=steps,
    )


def _topk(values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k largest values per row and their indices, largest first (ties: lower index first)."""
    k = min(k, values.shape[-1])
    part = np.argpartition(-values, k - 1, axis=-1)[..., :k]
    part_values = np.take_along_axis(values, part, axis=-1)
    order = np.lexsort((part, -part_values), axis=-1)
    indices = np.take_along_axis(part, order, axis=-1)
    return np.take_along_axis(values, indices, axis=-1), indices


def _gather(tensor: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """tensor[b, indices[b, j], ...] for every b, j (transformers' _gather_beams)."""
    while indices.ndim < tensor.ndim:
        indices = indices[..., None]
    return np.take_along_axis(tensor, indices, axis=1)


def beam_search(
    first: FirstFn, step: StepFn, encoder_mask: np.ndarray, s: GenerationSettings, source_ids: np.ndarray | None = None
) -> Generated:
    """transformers' vectorised beam search (num_return_sequences 1, no sampling)."""
    beams, max_length, lp = s.num_beams, s.max_length, np.float32(s.length_penalty)
    logits, self_kv, cross_kv = first()
    batch = logits.shape[0]
    bias = source_bias_rows(source_ids, encoder_mask, logits.shape[-1], s)
    if bias is not None:
        bias = np.repeat(bias, beams, axis=0)
    # every source's first step, its key/values and its encoder mask repeated for its beams
    logits = np.repeat(logits, beams, axis=0)
    self_kv = [np.repeat(kv, beams, axis=0) for kv in self_kv]
    cross_kv = [np.repeat(kv, beams, axis=0) for kv in cross_kv]
    mask = np.repeat(encoder_mask, beams, axis=0)

    eos = np.asarray(s.eos_token_ids, dtype=np.int64)
    keep = max(2, 1 + len(eos)) * beams
    top_num_beam_mask = np.arange(keep) < beams
    fill = s.pad_token_id if s.pad_token_id else int(eos[0])  # transformers: `pad_token_id or eos_token_id[0]`
    cur_len = prompt_len = 1
    running_sequences = np.full((batch, beams, max_length), fill, dtype=np.int64)
    running_sequences[:, :, 0] = s.decoder_start_token_id
    sequences = running_sequences.copy()
    running_beam_scores = np.zeros((batch, beams), dtype=np.float32)
    running_beam_scores[:, 1:] = NEG
    beam_scores = np.full((batch, beams), NEG, dtype=np.float32)
    is_sent_finished = np.zeros((batch, beams), dtype=bool)
    unsatisfied = np.ones((batch, 1), dtype=bool)  # improvement of the finished hypotheses still possible
    running_beam_indices = np.full((batch, beams, max_length - 1), -1, dtype=np.int64)
    beam_indices = running_beam_indices.copy()
    steps = 1
    while True:
        flat_running = running_sequences[:, :, :cur_len].reshape(batch * beams, cur_len)
        log_probs = process_scores(flat_running, log_softmax(logits), s, bias)
        vocab = log_probs.shape[-1]
        log_probs = log_probs.reshape(batch, beams, vocab) + running_beam_scores[:, :, None]
        log_probs = log_probs.reshape(batch, beams * vocab)

        # top-k continuations over all beams of each source
        topk_log_probs, topk_indices = _topk(log_probs, keep)
        topk_beam = topk_indices // vocab
        topk_ids = topk_indices % vocab
        topk_running_beam_indices = _gather(running_beam_indices, topk_beam)
        topk_running_sequences = _gather(running_sequences, topk_beam)
        topk_running_sequences[:, :, cur_len] = topk_ids
        topk_running_beam_indices[:, :, cur_len - prompt_len] = topk_beam + np.arange(batch)[:, None] * beams

        # which candidates finish here (EOS, or the length limit)
        hits = np.isin(topk_ids, eos) | (cur_len + 1 >= max_length)

        # the best unfinished candidates run on
        topk_running_log_probs = topk_log_probs + hits.astype(np.float32) * NEG
        next_indices = _topk(topk_running_log_probs, beams)[1]
        running_sequences = _gather(topk_running_sequences, next_indices)
        running_beam_scores = _gather(topk_running_log_probs, next_indices)
        running_beam_indices = _gather(topk_running_beam_indices, next_indices)

        # finished candidates among the top num_beams join the finished hypotheses if they score better
        just_finished = hits & top_num_beam_mask[None, :]
        finished_scores = topk_log_probs / (np.float32(cur_len + 1 - prompt_len) ** lp)
        full = is_sent_finished.all(axis=-1, keepdims=True) & (s.early_stopping is True)
        finished_scores = finished_scores + full.astype(np.float32) * NEG
        finished_scores = finished_scores + (~unsatisfied).astype(np.float32) * NEG
        finished_scores = finished_scores + (~just_finished).astype(np.float32) * NEG
        merged_sequences = np.concatenate([sequences, topk_running_sequences], axis=1)
        merged_scores = np.concatenate([beam_scores, finished_scores], axis=1)
        merged_beam_indices = np.concatenate([beam_indices, topk_running_beam_indices], axis=1)
        merged_finished = np.concatenate([is_sent_finished, just_finished], axis=1)
        best = _topk(merged_scores, beams)[1]
        sequences = _gather(merged_sequences, best)
        beam_scores = _gather(merged_scores, best)
        beam_indices = _gather(merged_beam_indices, best)
        is_sent_finished = _gather(merged_finished, best)

        # the key/values of the beams that run on
        beam_idx = running_beam_indices[:, :, cur_len - prompt_len].reshape(-1)
        cur_len += 1
        # can the best running beam still beat the worst finished hypothesis (at its current length)?
        best_running = running_beam_scores[:, :1] / (np.float32(cur_len - prompt_len) ** lp)
        worst_finished = np.where(is_sent_finished, beam_scores.min(axis=1, keepdims=True), NEG)
        unsatisfied = unsatisfied & (best_running > worst_finished).any(axis=-1, keepdims=True)
        open_beam = not (is_sent_finished.all() and s.early_stopping is True)
        if not (unsatisfied.any() and open_beam and not hits.all()):
            break
        self_kv = [kv[beam_idx] for kv in self_kv]
        logits, self_kv = step(running_sequences[:, :, cur_len - 1].reshape(-1), mask, self_kv, cross_kv)
        steps += 1

    out, scores = [], []
    for b in range(batch):
        length = prompt_len + int((beam_indices[b, 0] >= 0).sum())
        out.append(trim(sequences[b, 0, :length].tolist(), s.eos_token_ids))
        scores.append(float(beam_scores[b, 0]))
    return Generated(sequences=out, scores=scores, steps=steps)
