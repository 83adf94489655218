"""Question generation quality: BERT2BERT warm-started from the bundled MiniLM (encoder and decoder, cross-attention
new), trained on ../shared/data/qg/train.jsonl and scored by generation on dev.jsonl (BLEU, chrF, ROUGE-1/2/L,
gen_len) next to the copy-the-source floor on the same rows; then the ONNX export (two graphs), its parity check on
validation sources, and generation speed: the ONNX Runtime loop against torch's `generate` (tokens/s, same
settings, same sources).

Uses the task's own pieces (clean with its split by source, tokenise, collate, training_loss, predict, score,
export_graphs, check_parity, the runtime) with a plain AdamW loop (length-grouped batches, linear warm-up and
decay, clipping), the best epoch by validation BLEU kept, and a time budget for CPU machines.

The source-token bias (task.generate.source_bias, a decoding prior) and the output vocabulary (task.output_vocabulary:
the source's tokens, EOS and the N learned ones) are chosen together after training among the --source-bias x
--output-vocabulary candidates by validation BLEU; the test split is scored with them and without (same model).
--group-column title cuts the validation split by article, so that choice is made on an unseen topic, as dev is.

    OMP_NUM_THREADS=2 .venv/bin/python benchmarks/seq2seq_quality.py --max-minutes 20 --source-bias 0,1,2,3
    .venv/bin/python benchmarks/seq2seq_quality.py --load-model /tmp/qg-model --source-bias 0,2,4  # no training
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipelines.config import ExportConfig, Params, TrainConfig
from pipelines.pretrained import bundled_model_path
from pipelines.tasks.catalog import get_task

QG = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "qg"
RESULTS = Path(__file__).resolve().parent / "results" / "seq2seq_quality.json"
SCORES = ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "gen_len")  # reported for the test split


def tokens_per_second(run: Any, sources: list[str], batch_size: int) -> dict[str, float]:
    """Generated tokens (EOS included, start token not) per wall second over `sources` in batches."""
    started, tokens = time.perf_counter(), 0
    for first in range(0, len(sources), batch_size):
        tokens += run(sources[first : first + batch_size])
    seconds = time.perf_counter() - started
    return {"tokens": tokens, "seconds": round(seconds, 2), "tokens_per_s": round(tokens / seconds, 1)}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data-dir", type=Path, default=QG, help="Folder with train.jsonl and dev.jsonl.")
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=float, default=0.1)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-minutes", type=float, default=20.0, help="Stop training after this long.")
    ap.add_argument("--max-source", type=int, default=128, help="Source tokens (tokenise.max_length).")
    ap.add_argument("--max-target", type=int, default=40)
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--beams", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--no-repeat", type=int, default=3)
    ap.add_argument("--val-rows", type=int, default=64, help="Validation rows generated for after each epoch.")
    ap.add_argument("--val-beams", type=int, default=1, help="Beam width of the per-epoch validation generation.")
    ap.add_argument("--speed-rows", type=int, default=48, help="Dev sources timed for torch vs ONNX generation.")
    ap.add_argument("--tie", action="store_true", help="Share the encoder's weights with the decoder.")
    ap.add_argument(
        "--cross-attention-init",
        choices=("random", "self_attention"),
        default="random",
        help="task.cross_attention_init: new cross-attention random, or copied from each layer's self-attention.",
    )
    ap.add_argument(
        "--source-bias",
        default="0",
        help="task.generate.source_bias candidates, comma-separated: each is scored on the validation split after "
        "training (same beams as the test), the best one is used on the test split, next to the test at 0.",
    )
    ap.add_argument(
        "--train-source-bias",
        type=float,
        default=0.0,
        help="Train with this source-token bias in the loss (task.source_bias_in_loss with task.generate."
        "source_bias); 0 = off. The per-epoch validation generates with it.",
    )
    ap.add_argument(
        "--copy-task-share",
        type=float,
        default=0.0,
        help="task.copy_task_share: this share of the training rows is added again as 'copy: source' -> source.",
    )
    ap.add_argument(
        "--output-vocabulary",
        default="0",
        help="task.output_vocabulary candidates, comma-separated (generate only the source's tokens, EOS and this "
        "many tokens learned from the training targets; 0 = off): chosen after training with --source-bias, every "
        "pair scored on the validation split.",
    )
    ap.add_argument(
        "--train-vocabulary",
        type=int,
        default=0,
        help="Train with this output vocabulary in the loss (task.output_vocabulary_in_loss); 0 = off. The "
        "per-epoch validation generates with it; the candidates above must then include it.",
    )
    ap.add_argument(
        "--group-column",
        default=None,
        help="data.group_column: cut the validation split from train.jsonl by this column (title: whole articles, "
        "so validation scores unseen topics as dev does); default: by source.",
    )
    ap.add_argument("--save-model", type=Path, default=None, help="Save the trained model (and tokenizer) here.")
    ap.add_argument("--load-model", type=Path, default=None, help="Skip training: load a model saved by --save-model.")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()

    import torch

    from pipelines import finetuning
    from pipelines.export_onnx import export_model_to_onnx
    from pipelines.serving import load_runtime
    from pipelines.tasks.seq2seq.model import VOCABULARY_ATTR, torch_generate
    from pipelines.train import length_grouped_batches

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    work = Path(tempfile.mkdtemp(prefix="seq2seq-quality-"))
    params = Params.model_validate(
        {
            "project": {"artifacts_dir": str(work / "artifacts"), "state_dir": str(work / "state")},
            "data": {
                "path": str(args.data_dir / "train.jsonl"),
                "test_path": str(args.data_dir / "dev.jsonl"),
                "group_column": args.group_column,
            },
            "task": {
                "type": "seq2seq",
                "max_target_length": args.max_target,
                "label_smoothing": args.label_smoothing,
                "validation_generate_rows": args.val_rows,
                "tie_encoder_decoder": args.tie,
                "cross_attention_init": args.cross_attention_init,
                "source_bias_in_loss": bool(args.train_source_bias),
                "copy_task_share": args.copy_task_share,
                "output_vocabulary": args.train_vocabulary or max(int(k) for k in args.output_vocabulary.split(",")),
                "output_vocabulary_in_loss": bool(args.train_vocabulary),
                "generate": {
                    "source_bias": args.train_source_bias,
                    "num_beams": args.beams,
                    "max_new_tokens": args.max_new_tokens,
                    "no_repeat_ngram_size": args.no_repeat,
                },
            },
            "clean": {"validation_size": 0.1, "test_size": 0.1},
            "tokenise": {"max_length": args.max_source},
        }
    )
    task = get_task(params)
    clean_dir = work / "clean"
    summary = task.clean_data(clean_dir)  # validation cut from train by source; dev.jsonl is the test split
    frames, rows = {}, {}
    tokenizer = task.tokenizer()
    for split in ("train", "validation", "test"):
        frame = pd.read_parquet(clean_dir / f"{split}.parquet")
        frame.attrs["split"] = split
        frames[split], rows[split] = frame, task.tokenise(tokenizer, frame, params.tokenise)
    pad = int(tokenizer.pad_token_id or 0)
    print(f"splits {summary['splits']}; tokens per source {np.mean(rows['train']['length']):.1f}", flush=True)

    if args.load_model:
        model = task.load_trained(args.load_model)
        args.epochs = 0
        if task.options.output_vocabulary and getattr(model.config, VOCABULARY_ATTR, None) is None:
            # a model saved without one: learn it now
            task.learn_from_training_split(model, rows["train"], clean_dir / "train.parquet")
    else:
        model = task.build_model(bundled_model_path(), {}, params.model)
        task.learn_from_training_split(model, rows["train"], clean_dir / "train.parquet")
    train_cfg = TrainConfig(learning_rate=args.lr, batch_size=args.batch_size, warmup_ratio=args.warmup)
    optimizer = finetuning.build_optimizer(model, train_cfg)
    steps_per_epoch = (len(rows["train"]["input_ids"]) + args.batch_size - 1) // args.batch_size
    # linear warm-up and decay to 0 over the steps that fit: all epochs, or (re-estimated from the first steps'
    # speed) what the time budget allows, so a budget-cut run still ends at a low learning rate
    plan = {"total": steps_per_epoch * args.epochs}

    def schedule(step: int) -> float:
        warm = max(1, int(args.warmup * plan["total"]))
        return step / warm if step < warm else max(0.0, (plan["total"] - step) / max(1, plan["total"] - warm))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    base = task.options

    def task_generating(vocabulary: int | None = None, **settings: Any) -> Any:
        """The task with these task.generate settings (and output vocabulary size) changed, the model and
        everything else as they are."""
        generate = base.generate.model_copy(update=settings)
        in_loss = base.source_bias_in_loss and bool(generate.source_bias)  # a loss with no bias to add: off
        size = base.output_vocabulary if vocabulary is None else vocabulary
        update = {"generate": generate, "source_bias_in_loss": in_loss, "output_vocabulary": size}
        update["output_vocabulary_in_loss"] = base.output_vocabulary_in_loss and bool(size)
        return get_task(params.model_copy(update={"task": base.model_copy(update=update)}))

    # the per-epoch validation: greedy unless --val-beams; the vocabulary trained with, else none
    validation_task = task_generating(vocabulary=args.train_vocabulary, num_beams=args.val_beams)
    started, best, best_state, history, stop, step = time.perf_counter(), -1.0, None, [], False, 0
    after_first = started
    for epoch in range(1, args.epochs + 1):
        model.train()
        batches = length_grouped_batches(rows["train"]["length"], args.batch_size, 50, args.seed + epoch)
        losses = []
        for idx in batches:
            batch = task.collate({k: [v[i] for i in idx] for k, v in rows["train"].items()}, pad)
            loss = task.training_loss(model, batch)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
            step += 1
            if step == 1:
                after_first = time.perf_counter()  # the first step pays for allocations: not a speed sample
            elif step % 20 == 10:  # re-plan from the speed so far
                per_step = (time.perf_counter() - after_first) / (step - 1)
                left = 60 * args.max_minutes - (time.perf_counter() - started)
                plan["total"] = max(step + 1, min(steps_per_epoch * args.epochs, step + int(left / per_step)))
                print(f"step {step}: {per_step:.1f} s/step, planning {plan['total']} steps", flush=True)
            if time.perf_counter() - started > 60 * args.max_minutes or step >= plan["total"]:
                stop = step < steps_per_epoch * args.epochs
                break
        train_seconds = time.perf_counter() - started
        predictions = validation_task.predict(model, rows["validation"], frames["validation"], 32, pad)
        scores = validation_task.score(predictions, frames["validation"], {})
        record = {
            "epoch": epoch,
            "batches": len(losses),
            "train_loss": round(float(np.mean(losses)), 4),
            "val_loss": round(predictions.loss, 4),
            "val_bleu": round(scores["bleu"], 4),
            "val_rougeL": round(scores["rougeL"], 4),
            "train_seconds": round(train_seconds, 1),
        }
        history.append(record)
        print(json.dumps(record), flush=True)
        if scores["bleu"] > best:
            best, best_state = scores["bleu"], copy.deepcopy(model.state_dict())
        started = time.perf_counter() - train_seconds  # validation time is not training time
        if stop:
            print(f"time budget reached in epoch {epoch} after {len(losses)} of {len(batches)} batches", flush=True)
            break
    train_seconds = history[-1]["train_seconds"] if history else 0.0
    if best_state is not None:
        model.load_state_dict(best_state)
    if args.save_model:
        model.save_pretrained(args.save_model)
        tokenizer.save_pretrained(args.save_model)

    # the source-token bias and the output vocabulary (generation only): chosen together on the validation split,
    # all of its rows, test beams
    every = {**rows["validation"], "generate": [1] * len(rows["validation"]["input_ids"])}
    bias_scores: dict[str, float] = {}
    for bias in [float(b) for b in args.source_bias.split(",")]:
        for size in [int(k) for k in args.output_vocabulary.split(",")]:
            candidate = task_generating(vocabulary=size, source_bias=bias)
            scored = candidate.score(
                candidate.predict(model, every, frames["validation"], 32, pad), frames["validation"], {}
            )
            bias_scores[f"{bias}/{size}"] = round(float(scored["bleu"]), 4)
            print(f"source_bias {bias}, output_vocabulary {size}: validation BLEU {scored['bleu']:.4f}", flush=True)
    chosen = max(bias_scores, key=lambda b: bias_scores[b])
    chosen_bias, chosen_size = float(chosen.split("/")[0]), int(chosen.split("/")[1])
    unbiased_test = None
    if chosen_bias or chosen_size:
        plain = task_generating(vocabulary=0, source_bias=0.0)
        unbiased = plain.score(plain.predict(model, rows["test"], frames["test"], 32, pad), frames["test"], {})
        unbiased_test = {k: round(float(unbiased[k]), 4) for k in SCORES}
        task = task_generating(vocabulary=chosen_size, source_bias=chosen_bias)

    evaluated = time.perf_counter()
    predictions = task.predict(model, rows["test"], frames["test"], 32, pad)
    test = task.score(predictions, frames["test"], {})
    eval_seconds = time.perf_counter() - evaluated
    generated = [str(v) for v in predictions.values]
    examples = {  # the first outputs and how varied they are (no source text: the data stays where it is)
        "first_generated": generated[:8],
        "distinct_outputs": len(set(generated)),
    }
    print(json.dumps({k: test[k] for k in task.spec.metrics}), flush=True)

    # ONNX: the two graphs, parity on validation sources, then generation speed against torch
    export_dir = work / "export"
    model.eval()
    graphs = task.export_graphs(model, tokenizer)
    exported = time.perf_counter()
    for name, graph in graphs.items():
        export_model_to_onnx(graph, export_dir / name, 17)
    export_seconds = time.perf_counter() - exported
    tokenizer.save_pretrained(export_dir / "tokenizer")
    serving = {**task.serving_config(model, tokenizer, graphs["model.onnx"]), "opset": 17}
    (export_dir / "serving.json").write_text(json.dumps(serving, indent=2), encoding="utf-8")
    parity = task.check_parity(export_dir, graphs, tokenizer, frames["validation"], ExportConfig(parity_rows=64))
    runtime = load_runtime(export_dir)
    settings = runtime.settings
    sources = [str(s) for s in frames["test"]["source"][: args.speed_rows]]

    def torch_run(part: list[str]) -> int:
        feeds = runtime.encode(part)
        with torch.inference_mode():
            out = torch_generate(
                model, torch.from_numpy(feeds["input_ids"]), torch.from_numpy(feeds["attention_mask"]), settings
            )
        from pipelines.tasks.seq2seq.generation import trim

        return sum(len(trim(seq, settings.eos_token_ids)) - 1 for seq in out.tolist())

    def onnx_run(part: list[str]) -> int:
        return sum(len(seq) - 1 for seq in runtime.generate_ids(part).sequences)

    speed: dict[str, Any] = {}
    for batch_size in (1, 16):
        part = sources[: 16 if batch_size == 1 else len(sources)]
        torch_run(part[:1]), onnx_run(part[:1])  # warm-up
        speed[f"batch_{batch_size}"] = {
            "sources": len(part),
            "torch_generate": tokens_per_second(torch_run, part, batch_size),
            "onnx_runtime": tokens_per_second(onnx_run, part, batch_size),
        }
    report = {
        "data": {"train": str(args.data_dir / "train.jsonl"), "test": str(args.data_dir / "dev.jsonl")},
        "splits": summary["splits"],
        "model": "BERT2BERT warm-started from the bundled all-MiniLM-L6-v2"
        + (" (tied)" if args.tie else "")
        + (", cross-attention copied from self-attention" if args.cross_attention_init == "self_attention" else ""),
        "generation": settings.to_dict(),
        "output_vocabulary": tokenizer.convert_ids_to_tokens(list(settings.vocabulary))
        if settings.vocabulary
        else None,
        "lowercased_scoring": bool(test["lowercased"]),
        "test_rows": test["rows"],
        "test": {k: round(float(test[k]), 4) for k in SCORES},
        "copy_source_floor": {k: round(float(test[k]), 4) for k in ("copy_bleu", "copy_chrf", "copy_rougeL")},
        "source_bias": {
            "validation_bleu": bias_scores,  # "bias/vocabulary size": BLEU
            "chosen": chosen_bias,
            "chosen_output_vocabulary": chosen_size,
            "test_without_it": unbiased_test,  # neither bias nor vocabulary
        },
        "train_seconds": train_seconds,
        "best_val_bleu": round(best, 4),
        "history": history,
        "test_eval_seconds": round(eval_seconds, 1),
        "onnx_export_seconds": round(export_seconds, 1),
        "parity": {k: parity[k] for k in ("passed", "rows", "label_mismatches", "max_abs_diff", "batch_sizes")},
        "speed": speed,
        "examples": examples,
        "load_average": os.getloadavg(),
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in report.items() if k not in ("history", "examples")}, indent=2), flush=True)
    print(f"written: {args.out}")


if __name__ == "__main__":
    main()
