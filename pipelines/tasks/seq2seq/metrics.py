"""Generation metrics, as fractions in [0, 1] (the gate's scale): sacreBLEU corpus BLEU and chrF, ROUGE-1/2/L
F-measure (rouge-score, averaged over examples), and the mean generated length in tokens.

- BLEU: sacreBLEU's corpus BLEU (13a tokenisation, exponential smoothing), divided by 100;
- chrF: sacreBLEU's corpus chrF (character 6-grams, beta 2), divided by 100;
- ROUGE: rouge-score's rouge1 / rouge2 / rougeL F-measure with its Porter stemmer (plain code, no NLTK data: rougeLsum,
  which needs NLTK's sentence splitter data, is not computed), averaged over examples;
- `lowercase`: BLEU and chrF on lower-cased text (rouge-score always lower-cases), for uncased models.

`copy_scores` scores the sources themselves as the predictions: the floor a model must beat (on data where the
output mostly repeats the input, copying scores high). Torch-free: the runtime and the champion re-scoring use it too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

METRICS = ("bleu", "chrf", "rouge1", "rouge2", "rougeL")
COPY_METRICS = ("bleu", "chrf", "rougeL")  # reported as copy_<name>


def corpus_scores(predictions: Sequence[str], references: Sequence[str], lowercase: bool = False) -> dict[str, float]:
    """bleu, chrf, rouge1, rouge2, rougeL of `predictions` against one reference each (0.0 for no rows)."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    if not predictions:
        return dict.fromkeys(METRICS, 0.0)
    from sacrebleu.metrics import BLEU, CHRF

    preds, refs = [str(p) for p in predictions], [str(r) for r in references]
    bleu = BLEU(lowercase=lowercase).corpus_score(preds, [refs]).score / 100.0
    chrf = CHRF(lowercase=lowercase).corpus_score(preds, [refs]).score / 100.0
    return {"bleu": float(bleu), "chrf": float(chrf), **rouge_scores(preds, refs)}


def rouge_scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean rouge1 / rouge2 / rougeL F-measure over the examples."""
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    totals = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for pred, ref in zip(predictions, references, strict=True):
        for name, score in scorer.score(ref, pred).items():  # score(target, prediction)
            totals[name] += score.fmeasure
    n = max(len(predictions), 1)
    return {name: total / n for name, total in totals.items()}


def copy_scores(sources: Sequence[str], references: Sequence[str], lowercase: bool = False) -> dict[str, float]:
    """copy_bleu, copy_chrf, copy_rougeL: the scores of answering every source with the source itself."""
    scores = corpus_scores(sources, references, lowercase)
    return {f"copy_{name}": scores[name] for name in COPY_METRICS}


def generation_scores(
    predictions: Sequence[str],
    references: Sequence[str],
    sources: Sequence[str],
    generated_tokens: Sequence[int] | None,
    lowercase: bool = False,
) -> dict[str, Any]:
    """Every metric of the task: the corpus scores, gen_len (mean generated tokens, EOS included; NaN unknown),
    the copy-source floor, and `rows`."""
    scores: dict[str, Any] = corpus_scores(predictions, references, lowercase)
    if generated_tokens is not None and len(generated_tokens):
        scores["gen_len"] = float(sum(generated_tokens) / len(generated_tokens))
    else:
        scores["gen_len"] = float("nan") if predictions else 0.0
    scores.update(copy_scores(sources, references, lowercase))
    scores["rows"] = len(predictions)
    return scores
