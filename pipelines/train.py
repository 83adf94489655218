"""Fine-tune a pre-trained transformer on the tokenised splits.

A plain PyTorch loop rather than `Trainer`: it keeps the length-grouped sampler, early stopping and the
checkpoint format under our control. Good practice built in: AdamW without decay on biases/LayerNorm, linear
warm-up then decay, gradient clipping, dropout from params, validation every epoch, early stopping on a chosen
metric, the best epoch kept as a safetensors checkpoint, optional freezing of embeddings and lower layers.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from pipelines import progress
from pipelines.config import ModelConfig, TrainConfig
from pipelines.errors import ModelLoadError
from pipelines.tasks.base import Task

if TYPE_CHECKING:
    import pandas as pd

EpochCallback = Callable[[int, dict[str, float]], None]


def length_grouped_batches(
    lengths: list[int], batch_size: int, mega_batch_factor: int, seed: int, batch_tokens: int | None = None
) -> list[list[int]]:
    """Shuffle, cut into mega-batches, sort each by length, split into batches, then shuffle the batches.

    Rows in a batch have similar lengths (little padding) while the batch order stays random. With
    `batch_tokens`, a batch also stops before rows x its longest row would pass that budget (a row longer than
    the budget gets a batch of its own): short rows make wide batches, long rows narrow ones, so every step
    multiplies matrices of about the same, efficient size. A mega-batch then holds `mega_batch_factor` times the
    rows an average batch takes, so the batches stay as random as with row counts.
    """
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(lengths))
    lengths_arr = np.asarray(lengths)
    rows_per_batch = batch_size
    if batch_tokens is not None and len(lengths):
        rows_per_batch = int(min(batch_size, max(1, batch_tokens // max(1.0, float(lengths_arr.mean())))))
    mega = rows_per_batch * mega_batch_factor
    batches: list[list[int]] = []
    for start in range(0, len(order), mega):
        chunk = order[start : start + mega]
        chunk = chunk[np.argsort(-lengths_arr[chunk], kind="stable")]
        batches.extend(_cut_sorted(chunk.tolist(), lengths_arr[chunk].tolist(), batch_size, batch_tokens))
    rng.shuffle(batches)  # type: ignore[arg-type]
    return batches


def _cut_sorted(rows: list[int], lengths: list[int], batch_size: int, batch_tokens: int | None) -> list[list[int]]:
    """Consecutive batches of rows sorted longest first: at most batch_size rows and, with a token budget, at
    most batch_tokens padded tokens (the first row of a batch is its longest, so rows x that length)."""
    if batch_tokens is None:
        return [rows[i : i + batch_size] for i in range(0, len(rows), batch_size)]
    batches: list[list[int]] = []
    i = 0
    while i < len(rows):
        take = min(batch_size, max(1, batch_tokens // max(1, lengths[i])))
        batches.append(rows[i : i + take])
        i += take
    return batches


def training_batches(lengths: list[int], cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The batches of one epoch (row indices), from `train.*`: length-grouped (by rows, or by a token budget) or
    random; seeded by seed + epoch, so a resumed run gets the same ones."""
    seed = cfg.seed + epoch
    if cfg.length_grouping:
        return length_grouped_batches(lengths, cfg.batch_size, cfg.mega_batch_factor, seed, cfg.batch_tokens)
    return random_batches(len(lengths), cfg.batch_size, seed)


def _epoch_batches(lengths: list[int], keep: list[int] | None, cfg: TrainConfig, epoch: int) -> list[list[int]]:
    """The epoch's batches over the features `keep` (Task.epoch_training_rows; None: all of them)."""
    if keep is None:
        return training_batches(lengths, cfg, epoch)
    batches = training_batches([lengths[i] for i in keep], cfg, epoch)
    return [[keep[j] for j in batch] for batch in batches]


def random_batches(n: int, batch_size: int, seed: int) -> list[list[int]]:
    order = np.random.default_rng(seed).permutation(n)
    return [order[i : i + batch_size].tolist() for i in range(0, n, batch_size)]


def sequential_batches(lengths: list[int], batch_size: int) -> Iterator[list[int]]:
    """Evaluation order: sorted by length for speed (metrics do not depend on order)."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for i in range(0, len(order), batch_size):
        yield order[i : i + batch_size].tolist()


def stratified_subset(labels: list[int], n: int, seed: int) -> list[int]:
    """Deterministic subset of about n rows keeping class proportions (for small-data and quick runs)."""
    if n >= len(labels):
        return list(range(len(labels)))
    rng = np.random.default_rng(seed)
    labels_arr = np.asarray(labels)
    chosen: list[int] = []
    for label in np.unique(labels_arr):
        idx = np.flatnonzero(labels_arr == label)
        take = max(1, round(n * len(idx) / len(labels_arr)))
        chosen.extend(rng.choice(idx, size=min(take, len(idx)), replace=False).tolist())
    return sorted(chosen)


def set_seed(seed: int) -> None:
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def encoder_layers(model: Any) -> list[Any]:
    """The transformer blocks, found generically: the first ModuleList as long as config.num_hidden_layers."""
    import torch

    n = getattr(model.config, "num_hidden_layers", None)
    for module in model.base_model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return list(module)
    return []


def apply_freezing(model: Any, cfg: ModelConfig) -> dict[str, int]:
    """Freeze embeddings and/or lower layers; returns trainable/frozen parameter counts."""
    layers = encoder_layers(model)
    if (cfg.freeze_layers or cfg.train_last_layers is not None) and not layers:
        raise ModelLoadError("model.freeze_layers/train_last_layers: cannot find the encoder layers of this model")
    if cfg.freeze_layers > len(layers):
        raise ModelLoadError(f"model.freeze_layers={cfg.freeze_layers} but the model has {len(layers)} layers")
    frozen_layers = cfg.freeze_layers
    if cfg.train_last_layers is not None:
        frozen_layers = max(frozen_layers, len(layers) - cfg.train_last_layers)
    to_freeze = [layer for layer in layers[:frozen_layers]]
    if cfg.freeze_embeddings or cfg.train_last_layers is not None:
        embeddings = getattr(model.base_model, "embeddings", None)
        if embeddings is not None:
            to_freeze.append(embeddings)
    for module in to_freeze:
        for p in module.parameters():
            p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": trainable, "frozen_params": total - trainable, "frozen_layers": frozen_layers}


def read_tokenised_split(path: Path) -> dict[str, list]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pydict()


def _take(rows: dict[str, list], idx: list[int]) -> dict[str, list]:
    return {k: [v[i] for i in idx] for k, v in rows.items()}


def feature_batches(
    model: Any, task: Task, rows: dict[str, list], batch_size: int, pad_token_id: int
) -> Iterator[tuple[list[int], dict[str, Any], Any]]:
    """(feature indices, collated batch, model outputs) in length-sorted order, without gradients."""
    import torch

    model.eval()
    with torch.inference_mode():
        for idx in sequential_batches(rows["length"], batch_size):
            batch = task.collate(_take(rows, idx), pad_token_id)
            outputs = model(**batch)
            progress.batch_done(len(idx))  # evaluation and per-epoch validation progress (pipelines/progress.py)
            yield idx, batch, outputs


def subset_rows(rows: dict[str, list], n: int, seed: int) -> dict[str, list]:
    """About n training examples (all their features): stratified by label when the features carry one."""
    examples = rows["example_id"]
    if "label" in rows:
        first: dict[int, int] = {}
        for e, label in zip(examples, rows["label"], strict=True):
            first.setdefault(e, label)
        ids = sorted(first)
        keep = {ids[i] for i in stratified_subset([first[e] for e in ids], n, seed)}
    else:
        unique = sorted(set(examples))
        rng = np.random.default_rng(seed)
        keep = set(rng.choice(unique, size=min(n, len(unique)), replace=False).tolist())
    return _take(rows, [i for i, e in enumerate(examples) if e in keep])


def _is_better(metric: str, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value < best if metric == "loss" else value > best


def _best_model_matches(out_dir: Path, key: str | None, best_epoch: int) -> bool:
    """The best epoch saved so far must come from the run being resumed (or none saved yet)."""
    if best_epoch == 0:
        return True
    try:
        saved = json.loads((out_dir / "nlpops_checkpoint.json").read_text())
    except (OSError, ValueError):
        return False
    return saved.get("training_state") == key and saved.get("epoch") == best_epoch


def _save_checkpoint(model: Any, tokenizer_dir: Path, out_dir: Path, extra: dict[str, Any]) -> None:
    """Write model + tokenizer to a temp folder, then swap it in: a crash never leaves a half checkpoint."""
    from pipelines.pretrained import load_tokenizer

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".model-", dir=out_dir.parent))
    staging.chmod(0o755)  # mkdtemp's 0700 would make the checkpoint private to this user
    model.save_pretrained(staging, safe_serialization=True)
    load_tokenizer(tokenizer_dir).save_pretrained(staging)
    (staging / "nlpops_checkpoint.json").write_text(json.dumps(extra, indent=2))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    staging.rename(out_dir)


# ---------------------------------------------------------------- resumable training state

CHECKPOINT_SUFFIX = ".ckpt.pt"


def training_state_key(
    tokenised_dir: Path,
    id2label: dict[int, str],
    model_path: Path,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    task: Task,
    pad_token_id: int,
) -> str:
    """What a checkpoint belongs to: a rerun only resumes one made from the same data, params, base model and code."""
    from pipelines.config import stable_hash
    from pipelines.hashing import file_digest, source_digest, tree_digest

    train_fields = train_cfg.model_dump(mode="json", exclude={"checkpoint_every_steps", "resume"})
    return stable_hash(
        {
            "data": {s: file_digest(tokenised_dir / f"{s}.parquet") for s in ("train", "validation")},
            "labels": {str(k): v for k, v in id2label.items()},
            "model": tree_digest(model_path) if Path(model_path).is_dir() else str(model_path),
            "train": train_fields,
            "model_cfg": model_cfg.model_dump(mode="json"),
            "task": task.options.model_dump(mode="json"),
            "pad": pad_token_id,
            "code": source_digest("pipelines.train", "pipelines.finetuning", "pipelines.distributed"),
        }
    )


def _rng_state() -> dict[str, Any]:
    import torch

    kind, keys, pos, has_gauss, gauss = cast(tuple[str, Any, int, int, float], np.random.get_state())
    return {
        "python": random.getstate(),
        "numpy": [kind, np.asarray(keys).tolist(), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }


def _restore_rng(state: dict[str, Any]) -> None:
    import torch

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, gauss_np = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss_np))
    torch.set_rng_state(state["torch"])


def save_training_state(path: Path, state: dict[str, Any]) -> None:
    """torch.save to a temp file, fsync, rename: a kill -9 mid-write leaves the previous checkpoint intact."""
    import torch

    from pipelines.statedir import atomic_write

    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_training_state(checkpoint_dir: Path, key: str) -> dict[str, Any] | None:
    """The last checkpoint for this key; checkpoints of other inputs are deleted (they can never be resumed)."""
    import torch

    path = checkpoint_dir / f"{key[:24]}{CHECKPOINT_SUFFIX}"
    for other in checkpoint_dir.glob(f"*{CHECKPOINT_SUFFIX}"):
        if other != path:
            other.unlink(missing_ok=True)
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: start over rather than fail
        logging.getLogger(__name__).warning("%s: unreadable checkpoint (%s); training from the start", path, exc)
        return None
    return state if state.get("key") == key else None


def train_model(
    tokenised_dir: Path,
    id2label: dict[int, str],
    model_path: Path,
    out_dir: Path,
    train_cfg: TrainConfig,
    model_cfg: ModelConfig,
    task: Task,
    pad_token_id: int,
    on_epoch_end: EpochCallback | None = None,
    checkpoint_dir: Path | None = None,
    val_frame: pd.DataFrame | None = None,
    metric: str | None = None,
) -> dict[str, Any]:
    """Train, validate every epoch, stop early, keep the best epoch in out_dir. Returns a summary with history.

    With checkpoint_dir, the full training state is saved there every `checkpoint_every_steps` steps and at each
    epoch's end, and (with `resume`) a rerun continues from the last one: same batches, same dropout masks, so
    it ends with the same weights and metrics as a run that was never interrupted. The folder is emptied on
    success.
    """
    from transformers import get_linear_schedule_with_warmup

    from pipelines.cpu import IdleSample, configure_threads

    idle_sample = IdleSample()  # the thread rule's idle-CPU sample spans the model load below, not a sleep
    set_seed(train_cfg.seed)
    train_rows = read_tokenised_split(tokenised_dir / "train.parquet")
    val_rows = read_tokenised_split(tokenised_dir / "validation.parquet")
    if train_cfg.max_train_rows:
        train_rows = subset_rows(train_rows, train_cfg.max_train_rows, train_cfg.seed)
    # --- fine-tuning strategies (pipelines/finetuning.py): recipe first, it may change train/model settings
    from pipelines import finetuning

    choice = finetuning.resolve_recipe(train_cfg, model_cfg, len(set(train_rows["example_id"])))
    train_cfg, model_cfg = choice.train, choice.model
    logging.getLogger(__name__).info("recipe %s (%s); set: %s", choice.recipe, choice.reason, choice.applied or "-")
    # ---
    clean_dir = Path(tokenised_dir).parent / "clean"  # the clean splits sit next to the tokenised ones
    if val_frame is None:
        import pandas as pd

        val_frame = pd.read_parquet(clean_dir / "validation.parquet")
    val_frame.attrs["split"] = "validation"  # as tokenise marks its splits: a task may score validation apart

    model = task.build_model(model_path, id2label, model_cfg)
    clean_train = clean_dir / "train.parquet"  # the rows example_id points at
    task.learn_from_training_split(model, train_rows, clean_train if clean_train.exists() else None)
    threads = configure_threads(train_cfg.num_threads, idle_sample)
    freezing = apply_freezing(model, model_cfg)
    fast_path = task.training_fast_path(model) if train_cfg.skip_unread_positions else None
    # --- fine-tuning strategies: re-initialised top layers, LLRD/head-LR groups, gradual unfreezing
    reinitialised = finetuning.reinit_top_layers(model, model_cfg.reinit_top_layers)
    optimizer = finetuning.build_optimizer(model, train_cfg)
    unfreezer = finetuning.GradualUnfreezer(model) if train_cfg.gradual_unfreezing else None
    # ---
    from pipelines import distributed  # under torchrun: DDP, sharded batches, rank 0 writes (no-ops otherwise)

    distributed.seed_rank(train_cfg.seed)
    # Every epoch's batches up front: with a token budget their number varies, and the schedule needs the total.
    kept = {e: task.epoch_training_rows(train_rows, e) for e in range(1, train_cfg.epochs + 1)}
    epoch_batches = {e: _epoch_batches(train_rows["length"], keep, train_cfg, e) for e, keep in kept.items()}
    # A curriculum's narrowed epochs (question answering: spans before 'no answer') are not the recipe's model yet:
    # they are scored and may be kept, but a stall there uses none of the early-stopping patience.
    narrowed = {e for e, keep in kept.items() if keep is not None}
    total_steps = sum(len(b) for b in epoch_batches.values())
    if train_cfg.max_steps:
        total_steps = min(total_steps, train_cfg.max_steps)
    scheduler = get_linear_schedule_with_warmup(optimizer, int(train_cfg.warmup_ratio * total_steps), total_steps)

    metric = metric or train_cfg.early_stopping_metric or task.spec.metrics[0]
    history: list[dict[str, float]] = []
    best: float | None = None
    best_epoch = 0
    stale = 0
    step = 0
    started = time.perf_counter()
    stopped_early = False
    key = ckpt_path = None
    start_epoch, start_batch, carried = 1, 0, (0.0, 0)
    elapsed_before = 0.0
    resumed_from: dict[str, int] | None = None
    if checkpoint_dir is not None:
        key = training_state_key(tokenised_dir, id2label, model_path, train_cfg, model_cfg, task, pad_token_id)
        ckpt_path = Path(checkpoint_dir) / f"{key[:24]}{CHECKPOINT_SUFFIX}"
        from pipelines.statedir import ensure_writable_dir

        ensure_writable_dir(checkpoint_dir, "checkpoint dir")
        state = load_training_state(Path(checkpoint_dir), key) if train_cfg.resume else None
        if state is not None and not _best_model_matches(out_dir, key, state["best_epoch"]):
            logging.getLogger(__name__).warning("%s: best model does not match the checkpoint; restarting", out_dir)
            state = None
        if state is not None:
            if not train_cfg.num_threads and state.get("threads"):  # auto threads: the interrupted run's count,
                threads = configure_threads(int(state["threads"]))  # so the float sums (and weights) stay the same
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            history, best, best_epoch = list(state["history"]), state["best"], state["best_epoch"]
            stale, step, elapsed_before = state["stale"], state["step"], state["elapsed"]
            start_epoch, start_batch, carried = state["epoch"], state["batch"], tuple(state["epoch_loss_seen"])
            _restore_rng(state["rng"])
            own = distributed.own_state(state)  # distributed: this rank's RNG and partial epoch loss
            if own is not None:
                _restore_rng(own["rng"])
                carried = tuple(own["epoch_loss_seen"])
            resumed_from = {"epoch": start_epoch, "batch": start_batch, "step": step}
            if on_epoch_end:
                for record in history:  # the new tracking run gets the epochs the interrupted one finished
                    on_epoch_end(int(record["epoch"]), record)

    def checkpoint(next_epoch: int, next_batch: int, loss_seen: tuple[float, int]) -> None:
        if ckpt_path is None:
            return
        ranks = distributed.gather({"rng": _rng_state(), "epoch_loss_seen": list(loss_seen)})
        if not distributed.is_main():
            return
        save_training_state(
            ckpt_path,
            {
                "key": key,
                "epoch": next_epoch,
                "batch": next_batch,
                "step": step,
                "epoch_loss_seen": list(loss_seen),
                "history": history,
                "best": best,
                "best_epoch": best_epoch,
                "stale": stale,
                "elapsed": elapsed_before + time.perf_counter() - started,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "rng": _rng_state(),
                "threads": threads,
                **({"ranks": ranks} if distributed.world_size() > 1 else {}),
            },
        )

    every = train_cfg.checkpoint_every_steps
    for epoch in range(start_epoch, train_cfg.epochs + 1):
        if train_cfg.max_steps and step >= train_cfg.max_steps:
            break
        model.train()
        forward = distributed.wrap(model)  # each epoch: gradual unfreezing may have changed the trainable set
        if unfreezer is not None:  # fine-tuning strategies: trainable set is a function of the epoch alone
            logging.getLogger(__name__).info("epoch %s: %s", epoch, unfreezer.apply(epoch))
        batches = epoch_batches[epoch]
        first = start_batch if epoch == start_epoch else 0
        epoch_loss, seen = carried if epoch == start_epoch else (0.0, 0)
        epoch_started = time.perf_counter()
        loop_rows = loop_tokens = 0  # this run's own training-loop speed (a resumed epoch counts its part)
        for position in range(first, len(batches)):
            idx, weight, rows_here = distributed.shard(batches[position])  # this rank's share of the batch
            batch = task.collate(_take(train_rows, idx), pad_token_id)
            loop_rows += rows_here
            loop_tokens += sum(train_rows["length"][i] for i in idx) if rows_here else 0
            loss = task.training_loss(forward, batch)
            (loss * weight if weight != 1.0 else loss).backward()
            finetuning.clip_gradients(model.parameters(), train_cfg.max_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            epoch_loss += float(loss.detach()) * rows_here
            seen += rows_here
            step += 1
            progress.training_step(epoch, train_cfg.epochs, position + 1, len(batches), seen, epoch_loss / max(seen, 1))
            if train_cfg.max_steps and step >= train_cfg.max_steps:
                break
            if every and step % every == 0 and position + 1 < len(batches):
                checkpoint(epoch, position + 1, (epoch_loss, seen))
        loop_seconds = time.perf_counter() - epoch_started
        loss_sum, seen_sum, rows_sum, tokens_sum = distributed.all_sum(epoch_loss, seen, loop_rows, loop_tokens)
        reported: dict[str, float] | None = None
        if distributed.is_main():  # rank 0 validates; every rank takes its record (same early-stopping decisions)
            predictions = task.predict(model, val_rows, val_frame, train_cfg.eval_batch_size, pad_token_id)
            scores = task.score(predictions, val_frame, id2label)
            reported = {
                "epoch": epoch,
                "step": step,
                "train_loss": loss_sum / max(seen_sum, 1),
                "val_loss": predictions.loss,
                **{f"val_{name}": float(scores[name]) for name in task.spec.metrics},
                "learning_rate": finetuning.scheduled_lr(optimizer, train_cfg.learning_rate),  # fine-tuning strategies
                "epoch_seconds": time.perf_counter() - epoch_started,
                # the training loop alone (no validation): features and their real (unpadded) tokens per second
                "train_loop_seconds": loop_seconds,
                "train_samples_per_second": rows_sum / max(loop_seconds, 1e-9),
                "train_tokens_per_second": tokens_sum / max(loop_seconds, 1e-9),
            }
        record = cast(dict[str, float], distributed.broadcast(reported))
        history.append(record)
        if on_epoch_end:
            on_epoch_end(epoch, record)
        value = record["val_loss"] if metric == "loss" else record[f"val_{metric}"]
        if _is_better(metric, value, best):
            best, best_epoch, stale = value, epoch, 0
            if distributed.is_main():
                _save_checkpoint(
                    model, model_path, out_dir, {"epoch": epoch, "step": step, metric: value, "training_state": key}
                )
        elif epoch not in narrowed:
            stale += 1
            if train_cfg.early_stopping_patience and stale >= train_cfg.early_stopping_patience:
                stopped_early = True
                break
        if train_cfg.max_steps and step >= train_cfg.max_steps:
            break
        if epoch < train_cfg.epochs:
            checkpoint(epoch + 1, 0, (0.0, 0))
    logging.getLogger(__name__).info("best epoch %s (%s=%s)", best_epoch, metric, best)
    if ckpt_path is not None and distributed.is_main():
        ckpt_path.unlink(missing_ok=True)  # finished: the best model is in out_dir
    return {
        "best_epoch": best_epoch,
        "best_metric": {"name": metric, "value": best},
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "steps": step,
        "train_rows": len(set(train_rows["example_id"])),
        "train_features": len(train_rows["input_ids"]),
        "validation_rows": len(val_frame),
        "train_seconds": round(elapsed_before + time.perf_counter() - started, 2),
        "resumed_from": resumed_from,
        "history": history,
        **freezing,
        # fine-tuning strategies: the caller logs recipe/recipe_reason as MLflow tags
        "recipe": choice.recipe,
        "recipe_reason": choice.reason,
        "recipe_applied": choice.applied,
        "learning_rates": finetuning.describe_groups(optimizer),
        "reinitialised": reinitialised,
        "processes": distributed.world_size(),
        "threads": threads,
        "fast_path": fast_path,
    }
