"""Question answering quality on an unseen article: train the bundled MiniLM on the SQuAD articles of
../shared/data/squad/*.json except one held out (and one more kept as validation for the null threshold), then
F1 / EM with HasAns / NoAns on the held-out article, next to the always-no-answer baseline on the same questions.

Uses the task's own pieces (windows, collate, predict, score: the tuned threshold included) with a plain AdamW
loop, so it can down-sample training windows of answerable questions that do not hold the answer (the remedy for
the "no answer everywhere" collapse of a small model) and stop at a time budget (CPU machines).

    .venv/bin/python benchmarks/qa_quality.py --holdout "Normans" --epochs 3 --lr 1e-4 --keep-negative 0.3
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipelines.config import ModelConfig, Params
from pipelines.pretrained import bundled_model_path, load_pretrained_model
from pipelines.tasks.catalog import get_task
from pipelines.tasks.question_answering.metrics import squad_v2_scores
from pipelines.tasks.question_answering.readers import read_examples

SQUAD = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--holdout", default=None, help="Title of the held-out article (default: the last one).")
    ap.add_argument("--validation", default=None, help="Title of the validation article (default: the first one).")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-length", type=int, default=384)
    ap.add_argument("--doc-stride", type=int, default=128)
    ap.add_argument("--keep-negative", type=float, default=0.3, help="Share of answer-less windows of answerable "
                    "questions kept in training.")  # fmt: skip
    ap.add_argument("--max-minutes", type=float, default=None, help="Stop training after this long.")
    ap.add_argument("--max-train-questions", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--squad-dir", type=Path, default=SQUAD, help="Folder of SQuAD JSON files.")
    args = ap.parse_args()

    import torch

    torch.manual_seed(args.seed)
    params = Params.model_validate(
        {
            "data": {"path": "-"},
            "task": {"type": "question_answering", "max_length": args.max_length, "doc_stride": args.doc_stride},
        }
    )
    task = get_task(params)
    frames = [read_examples(p, params.data) for p in sorted(args.squad_dir.glob("*.json"))]
    frame = pd.concat(frames, ignore_index=True)
    titles = list(dict.fromkeys(frame["title"]))
    holdout = args.holdout or titles[-1]
    validation = args.validation or next(t for t in titles if t != holdout)
    test = frame[frame["title"] == holdout].reset_index(drop=True)
    val = frame[frame["title"] == validation].reset_index(drop=True)
    train = frame[~frame["title"].isin([holdout, validation])].reset_index(drop=True)
    if args.max_train_questions:
        train = train.sample(n=min(args.max_train_questions, len(train)), random_state=args.seed).reset_index(drop=True)
    model_path = bundled_model_path()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = load_pretrained_model(model_path, task, {}, ModelConfig(path=str(model_path)))
    rows = task.tokenise(tokenizer, train, params.tokenise)
    rng = np.random.default_rng(args.seed)
    answerable = train["answer_texts"].map(len).to_numpy() > 0
    keep = [
        i
        for i, (e, s) in enumerate(zip(rows["example_id"], rows["start_positions"], strict=True))
        if s != 0 or not answerable[e] or rng.random() < args.keep_negative
    ]
    rows = {k: [v[i] for i in keep] for k, v in rows.items()}
    val_rows = task.tokenise(tokenizer, val, params.tokenise)
    test_rows = task.tokenise(tokenizer, test, params.tokenise)
    unanswerable = int((test["answer_texts"].map(len) == 0).sum())
    print(f"train {len(train)} questions / {len(keep)} windows kept; validation {validation!r} {len(val)}; "
          f"held out {holdout!r} {len(test)} ({unanswerable} unanswerable)")  # fmt: skip
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01)
    steps = args.epochs * ((len(keep) + args.batch_size - 1) // args.batch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: max(0.0, 1 - s / max(steps, 1)))
    started, stopped = time.perf_counter(), False
    pad = tokenizer.pad_token_id or 0
    for epoch in range(args.epochs):
        model.train()
        order = rng.permutation(len(keep))
        for b in range(0, len(order), args.batch_size):
            idx = order[b : b + args.batch_size]
            batch = task.collate({k: [v[i] for i in idx] for k, v in rows.items()}, pad)
            loss = model(**batch).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            if args.max_minutes and time.perf_counter() - started > 60 * args.max_minutes:
                stopped = True
                break
        seconds = time.perf_counter() - started
        print(f"epoch {epoch + 1}: last loss {float(loss.detach()):.3f}, {seconds:.0f} s", flush=True)
        if stopped:
            print(f"time budget reached after {b + len(idx)} of {len(order)} windows of epoch {epoch + 1}")
            break
    train_seconds = time.perf_counter() - started
    val_scores = task.score(task.predict(model, val_rows, val, 64, pad), val, {})  # tunes and stores the threshold
    test_scores = task.score(task.predict(model, test_rows, test, 64, pad), test, {})
    golds = [list(t) for t in test["answer_texts"]]
    baseline = squad_v2_scores(golds, [""] * len(golds))
    keys = ("f1", "exact", "has_ans_f1", "has_ans_exact", "no_ans_f1", "no_ans_exact")
    report = {
        "held_out": holdout,
        "questions": len(test),
        "train_seconds": round(train_seconds, 1),
        "threshold": val_scores["best_f1_thresh"],
        "model": {k: round(100 * test_scores[k], 2) for k in keys},
        "always_no_answer": {k: round(100 * baseline[k], 2) for k in keys},
        "args": vars(args),
    }
    print(json.dumps(report, indent=2, default=str))


if __name__ == "__main__":
    main()
