"""`nlpops tune`: hyper-parameter search with Optuna over any train.* / model.* keys (the `tune` params section).

- The data stages run once (cached like `nlpops run`); the tokenised splits are then snapshotted (hard links) under
  the state dir, so every trial reads the same features even if a run rewrites the artifacts meanwhile.
- Each trial is a real training (pipelines.train.train_model) with the trial's values laid over train/model; its
  per-epoch validation metric is reported to Optuna, and the pruner (median or Hyperband) stops a trial that falls
  behind (optuna.TrialPruned from the epoch callback).
- Trials are Prefect tasks mapped over trial slots (flows/tune.py): one at a time in this process, or `workers` at a
  time on a Dask cluster. Any number of processes, on any hosts, join one study by giving the same study name and
  storage (tune.storage: SQLite under the state dir by default, PostgreSQL for several hosts); `tune.trials` counts
  the study's trials, whoever runs them. A trial that raises is marked FAIL (Optuna, MLflow, Prefect); one whose
  process died is marked FAIL by the next worker once its heartbeat is stale.
- MLflow: one parent run per study (created by the process that created the study, whose id the study keeps) with
  the study summary, the Optuna history and importance plots; each trial a nested run (params, per-epoch metrics).
- The result: `experiments/<name>-best.yaml`, the keys of the best trial that differ from params.yaml (plus the
  searched keys), so `nlpops run -e <name>-best` trains, gates and registers it as usual. Tuning never registers
  or promotes anything.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import os
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

from pipelines.config import UNTUNABLE, Params, TuneConfig, TuneParam, load_params
from pipelines.errors import ConfigError, ServiceError

STORAGE_ENV = "NLPOPS_TUNE_STORAGE"
PARENT_ATTR = "mlflow_parent_run_id"
HEARTBEAT_S = 30  # a RUNNING trial whose process stops beating for GRACE_S is marked FAIL by the next worker
GRACE_S = 120
JOIN_WAIT_S = 120.0  # a process joining a new study waits up to this long after its creation for the parent run

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- names, storage, sampler, pruner


def study_name(params: Params, experiment: str | None = None) -> str:
    """tune.study_name, else the experiment's name (-e), else project.experiment."""
    return params.tune.study_name or experiment or params.project.experiment


def storage_url(params: Params) -> str:
    """NLPOPS_TUNE_STORAGE, tune.storage, or a SQLite file under the state dir."""
    url = os.environ.get(STORAGE_ENV) or params.tune.storage
    if url:
        return url
    return f"sqlite:///{(Path(params.project.state_dir) / 'optuna.db').resolve()}"


def objective_metric(params: Params) -> tuple[str, str]:
    """(metric, direction): tune.metric or the training's stopping metric; loss is minimised."""
    metric = params.tune.metric or params.stopping_metric
    return metric, "minimize" if metric == "loss" else "maximize"


@contextlib.contextmanager
def _creation_lock(url: str) -> Iterator[None]:
    """An exclusive lock beside a SQLite storage file while its tables are made (nothing for server databases)."""
    if not url.startswith("sqlite:///"):
        yield
        return
    import fcntl

    with open(url.removeprefix("sqlite:///") + ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def open_storage(url: str) -> Any:
    """Optuna's RDB storage with heartbeats (a killed trial is not left RUNNING forever)."""
    import optuna
    from sqlalchemy.exc import SQLAlchemyError

    from pipelines.redact import redact_url

    if url.startswith("sqlite:///"):
        Path(url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
        engine: dict[str, Any] = {"connect_args": {"timeout": 120}}
    else:
        engine = {"pool_pre_ping": True}
    if url.startswith(("postgresql://", "postgres://")) and importlib.util.find_spec("psycopg") is None:
        url = "postgresql+psycopg2://" + url.split("://", 1)[1]  # SQLAlchemy 2.1 would look for psycopg 3
    import warnings

    for attempt in range(3):
        try:
            # Two processes creating the tables of a new storage at once race on its schema (the alembic version
            # row): on SQLite one file lock serialises the creation; elsewhere the loser retries and finds it made.
            with _creation_lock(url), warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: experimental
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S
                )
        except SQLAlchemyError as exc:
            if attempt < 2 and any(m in str(exc) for m in ("already exists", "UNIQUE constraint", "duplicate key")):
                time.sleep(1.0 + attempt)
                continue
            error: Exception = exc
        except (ImportError, ValueError) as exc:
            error = exc
        from pipelines.errors import first_line

        raise ServiceError(f"tune storage {redact_url(url)}: cannot open ({first_line(error, 300)})") from None
    raise AssertionError("unreachable")


def max_epochs(params: Params) -> int:
    dim = params.tune.space.get("train.epochs")
    if dim is None:
        return params.train.epochs
    return int(max(dim.candidates()))


def make_sampler(cfg: TuneConfig, offset: int = 0) -> Any:
    import optuna

    seed = None if cfg.seed is None else cfg.seed + offset
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    # constant_liar: trials running at the same time count as bad guesses, so parallel workers spread out
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=cfg.startup_trials, constant_liar=True)


def make_pruner(cfg: TuneConfig, epochs: int) -> Any:
    import optuna

    if cfg.pruner == "median":
        # steps are epochs (1, 2, ...): pruning starts at step n_warmup_steps, the epoch after the warm-up ones
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.startup_trials, n_warmup_steps=cfg.warmup_epochs + 1)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(epochs, 1), reduction_factor=3)
    return optuna.pruners.NopPruner()


def suggest(trial: Any, space: dict[str, TuneParam]) -> dict[str, Any]:
    """The trial's value for every key of the space."""
    values: dict[str, Any] = {}
    for key, dim in space.items():
        low, high = dim.low or 0.0, dim.high or 0.0
        if dim.type == "loguniform":
            values[key] = trial.suggest_float(key, low, high, log=True)
        elif dim.type == "uniform":
            values[key] = trial.suggest_float(key, low, high, step=dim.step)
        elif dim.type == "int":
            values[key] = trial.suggest_int(key, int(low), int(high), step=int(dim.step or 1))
        else:
            values[key] = trial.suggest_categorical(key, list(dim.choices or []))
    return values


def default_point(params: Params) -> dict[str, Any] | None:
    """The params' own values of the searched keys, when each lies in the space: the first trial (the baseline)."""
    point: dict[str, Any] = {}
    for key, dim in params.tune.space.items():
        section, name = key.split(".", 1)
        value = getattr(getattr(params, section), name)
        if dim.type == "categorical":
            if value not in (dim.choices or []):
                return None
        elif value is None or not (float(dim.low or 0) <= float(value) <= float(dim.high or 0)):
            return None
        point[key] = value
    return point


def apply_values(train: dict[str, Any], model: dict[str, Any], values: dict[str, Any]) -> tuple[Any, Any]:
    """TrainConfig and ModelConfig with the trial's values set (set = as if written in params.yaml, so a recipe
    never overrides them)."""
    from pipelines.config import ModelConfig, TrainConfig

    train_cfg, model_cfg = TrainConfig.model_validate(train), ModelConfig.model_validate(model)
    for key, value in values.items():
        section, name = key.split(".", 1)
        setattr(train_cfg if section == "train" else model_cfg, name, value)
    return train_cfg, model_cfg


# ---------------------------------------------------------------- the study and its parent run


def create_or_join(params: Params, name: str, storage: Any) -> tuple[Any, bool]:
    """(study, created): the first process creates it (atomically, by its unique name); the others load it."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    _, direction = objective_metric(params)
    sampler, pruner = make_sampler(params.tune), make_pruner(params.tune, max_epochs(params))
    try:
        study = optuna.create_study(
            study_name=name, storage=storage, direction=cast(Any, direction), sampler=sampler, pruner=pruner
        )
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction.name.lower() != direction:
        metric, _ = objective_metric(params)
        raise ConfigError(
            f"tune: study {name!r} {study.direction.name.lower()}s its objective, but tune.metric={metric} asks to "
            f"{direction} it; give another tune.study_name"
        )
    return study, False


def parent_run(params: Params, study: Any, created: bool, tracking: dict[str, str]) -> str:
    """The study's MLflow parent run: made by the creator and recorded on the study; joiners wait for it."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=tracking["uri"])
    if created:
        study.set_user_attr("created_at", time.time())
    known = study.user_attrs.get(PARENT_ATTR)
    if not created and not known:  # the creator is making it now (not when it died long ago)
        deadline = float(study.user_attrs.get("created_at") or 0) + JOIN_WAIT_S
        while not known and time.time() < deadline:
            time.sleep(1.0)
            known = _reload(study).user_attrs.get(PARENT_ATTR)
    if known:
        try:
            run = client.get_run(known)
            if run.info.experiment_id == tracking["experiment_id"]:
                client.update_run(known, status="RUNNING")
                return str(known)
        except Exception:  # another tracking store: this one gets its own parent run
            pass
    metric, direction = objective_metric(params)
    run = client.create_run(
        tracking["experiment_id"],
        run_name=f"tune-{study.study_name}",
        tags={"nlpops.tune.study": study.study_name, "nlpops.tune.role": "study"},
    )
    study.set_user_attr(PARENT_ATTR, run.info.run_id)
    settings = params.tune.model_dump(mode="json", exclude={"space", "storage", "metric"})
    space = {k: json.dumps(v.model_dump(exclude_none=True)) for k, v in params.tune.space.items()}
    client.log_batch(
        run.info.run_id,
        params=[_param("tune.metric", metric), _param("tune.direction", direction)]
        + [_param(f"tune.{k}", v) for k, v in settings.items()]
        + [_param(f"tune.space.{k}", v) for k, v in space.items()],
    )
    return str(run.info.run_id)


def _param(key: str, value: Any) -> Any:
    from mlflow.entities import Param

    return Param(key, str(value)[:6000])


def _reload(study: Any) -> Any:
    import optuna

    return optuna.load_study(study_name=study.study_name, storage=study._storage)


# ---------------------------------------------------------------- one trial (runs in a worker)


def _finished(study: Any) -> int:
    """Trials that count against tune.trials: every one asked for, except those still waiting in the queue."""
    from optuna.trial import TrialState

    return sum(1 for t in study.get_trials(deepcopy=False) if t.state != TrialState.WAITING)


def run_trial(ctx: dict[str, Any], slot: int) -> dict[str, Any]:
    """One trial of the study, or a skip when the study already has its trials or the deadline has passed."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # a failed trial is reported once, by the summary
    storage = open_storage(ctx["storage"])
    cfg = TuneConfig.model_validate(ctx["tune"])
    probe = optuna.load_study(study_name=ctx["study"], storage=storage)
    done = _finished(probe)
    if done >= ctx["trials"]:
        return {"slot": slot, "skipped": f"the study has its {ctx['trials']} trials"}
    if ctx.get("deadline") and time.time() >= ctx["deadline"]:
        return {"slot": slot, "skipped": f"tune.timeout_s={cfg.timeout_s} reached"}
    study = optuna.load_study(
        study_name=ctx["study"],
        storage=storage,
        sampler=make_sampler(cfg, offset=done),
        pruner=make_pruner(cfg, int(ctx["max_epochs"])),
    )
    outcome: dict[str, Any] = {"slot": slot}
    study.optimize(lambda trial: _objective(trial, ctx, outcome), n_trials=1, catch=(), gc_after_trial=True)
    return outcome


def _objective(trial: Any, ctx: dict[str, Any], outcome: dict[str, Any]) -> float:
    import optuna
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Metric

    from pipelines.errors import first_line
    from pipelines.tasks.catalog import get_task
    from pipelines.train import train_model

    space = {k: TuneParam.model_validate(v) for k, v in ctx["tune"]["space"].items()}
    values = suggest(trial, space)
    worker = f"{socket.gethostname()}:{os.getpid()}"
    trial.set_user_attr("worker", worker)
    outcome.update(number=trial.number, params=values, worker=worker)
    client = MlflowClient(tracking_uri=ctx["tracking_uri"])
    run = client.create_run(
        ctx["experiment_id"],
        run_name=f"trial-{trial.number}",
        tags={
            "mlflow.parentRunId": ctx["parent_run_id"],
            "nlpops.tune.study": ctx["study"],
            "nlpops.tune.role": "trial",
            "optuna.trial": str(trial.number),
            "nlpops.tune.worker": worker,
        },
    )
    run_id = run.info.run_id
    trial.set_user_attr("mlflow_run_id", run_id)
    outcome["mlflow_run_id"] = run_id
    client.log_batch(run_id, params=[_param(k, v) for k, v in values.items()])
    metric = ctx["metric"]
    key = "val_loss" if metric == "loss" else f"val_{metric}"

    def on_epoch(epoch: int, record: dict[str, float]) -> None:
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, epoch) for k, v in record.items() if k != "epoch"]
        client.log_batch(run_id, metrics=metrics)
        value = float(record[key])
        trial.report(value, epoch)
        outcome.update(epochs_run=epoch, last_value=value)
        if trial.should_prune():
            raise optuna.TrialPruned(f"pruned after epoch {epoch} ({key}={value:.4f})")

    out_dir = Path(ctx["work_dir"]) / f"trial-{trial.number}-{uuid.uuid4().hex[:8]}"
    try:
        train_cfg, model_cfg = apply_values(ctx["train"], ctx["model"], values)
        if ctx.get("threads") and not train_cfg.num_threads:  # this worker's share of the host's cores
            train_cfg = train_cfg.model_copy(update={"num_threads": int(ctx["threads"])})
        summary = train_model(
            Path(ctx["tokenised_dir"]),
            {int(k): v for k, v in ctx["id2label"].items()},
            Path(ctx["model_path"]),
            out_dir,
            train_cfg,
            model_cfg,
            get_task(Params.model_validate(ctx["params"])),
            int(ctx["pad_token_id"]),
            on_epoch_end=on_epoch,
            val_frame=pd.read_parquet(ctx["val_path"]),
            metric=metric,
        )
    except optuna.TrialPruned as exc:
        client.set_tag(run_id, "optuna.state", "PRUNED")
        client.set_tag(run_id, "optuna.pruned", str(exc))
        client.set_terminated(run_id, status="KILLED")
        outcome.update(state="PRUNED")
        raise
    except Exception as exc:
        client.set_tag(run_id, "optuna.state", "FAIL")
        client.set_tag(run_id, "nlpops.error", first_line(exc, 4000))
        client.set_terminated(run_id, status="FAILED")
        outcome.update(state="FAIL", error=f"{type(exc).__name__}: {first_line(exc, 500)}")
        raise
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    value = float(summary["best_metric"]["value"])
    client.log_batch(
        run_id,
        metrics=[
            Metric("objective", value, int(time.time() * 1000), 0),
            Metric("train_seconds", summary["train_seconds"], int(time.time() * 1000), 0),
        ],
    )
    client.set_tag(run_id, "optuna.state", "COMPLETE")
    client.set_terminated(run_id, status="FINISHED")
    outcome.update(state="COMPLETE", value=value, best_epoch=summary["best_epoch"], epochs_run=summary["epochs_run"])
    return value


# ---------------------------------------------------------------- before and after the trials


def snapshot_inputs(params: Params, name: str) -> dict[str, Any]:
    """Hard links (or copies) of the tokenised train/validation splits, the clean validation split and the label
    map under <state>/tune/<name>/data/<tokenise key>: what every trial reads, immune to later runs."""
    from pipelines.paths import StagePaths
    from pipelines.stages.common import label_map, read_json

    paths = StagePaths.from_params(params)
    manifest = read_json(paths.tokenised_dir / "manifest.json", "tokenise")
    root = (Path(params.project.state_dir) / "tune" / _safe(name)).resolve()
    data = root / "data" / str(manifest["cache_key"])[:16]
    if not (data / "ready").is_file():
        staging = data.with_name(f".{data.name}-{uuid.uuid4().hex[:8]}")
        (staging / "tokenised").mkdir(parents=True)
        for split in ("train", "validation"):
            _link(paths.tokenised_dir / f"{split}.parquet", staging / "tokenised" / f"{split}.parquet")
        _link(paths.tokenised_dir / "manifest.json", staging / "tokenised" / "manifest.json")
        _link(paths.clean_split("validation"), staging / "validation.parquet")
        (staging / "ready").write_text("")
        try:
            staging.rename(data)
        except OSError:  # another process made the same snapshot first
            shutil.rmtree(staging, ignore_errors=True)
    return {
        "tokenised_dir": str(data / "tokenised"),
        "val_path": str(data / "validation.parquet"),
        "id2label": {str(k): v for k, v in label_map(paths).items()},
        "pad_token_id": int(manifest["pad_token_id"]),
        "work_dir": str(root / "trials"),
    }


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def trial_context(
    params: Params, name: str, storage: str, tracking: dict[str, str], parent_run_id: str, deadline: float | None
) -> dict[str, Any]:
    """Everything a trial needs, as plain data (it may run in another process or on another host)."""
    from pipelines.pretrained import resolve_model_path

    metric, direction = objective_metric(params)
    threads = params.train.num_threads
    if not threads and params.tune.workers > 1 and not params.orchestration.dask_address:
        from pipelines.cpu import usable_cores

        threads = max(1, usable_cores() // params.tune.workers)  # local workers share this host's cores
    return {
        "study": name,
        "storage": storage,
        "metric": metric,
        "direction": direction,
        "trials": params.tune.trials,
        "deadline": deadline,
        "tune": params.tune.model_dump(mode="json"),
        "max_epochs": max_epochs(params),
        # exclude_unset: a recipe still sees which keys the user set
        "train": params.train.model_dump(mode="json", exclude_unset=True),
        "model": params.model.model_dump(mode="json", exclude_unset=True),
        "params": params.model_dump(mode="json", by_alias=True, exclude_unset=True),
        "model_path": str(Path(resolve_model_path(params.model)).resolve()),
        "tracking_uri": tracking["uri"],
        "experiment_id": tracking["experiment_id"],
        "parent_run_id": parent_run_id,
        "threads": threads,
        **snapshot_inputs(params, name),
    }


def study_summary(study: Any, metric: str, direction: str) -> dict[str, Any]:
    from collections import Counter

    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = Counter(t.state.name for t in trials)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    summary: dict[str, Any] = {
        "study": study.study_name,
        "metric": metric,
        "direction": direction,
        "trials": len(trials),
        "states": dict(sorted(counts.items())),
        "complete": counts.get("COMPLETE", 0),
        "pruned": counts.get("PRUNED", 0),
        "failed": counts.get("FAIL", 0),
        "running": counts.get("RUNNING", 0),
    }
    if complete:
        best = study.best_trial
        summary["best"] = {"number": best.number, "value": best.value, "params": best.params}
        baseline = [t for t in complete if t.user_attrs.get("baseline")]
        if baseline:
            summary["baseline"] = {
                "number": baseline[0].number,
                "value": baseline[0].value,
                "params": baseline[0].params,
            }
    summary["table"] = [
        {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            "epochs": len(t.intermediate_values),
            "seconds": round(t.duration.total_seconds(), 1) if t.duration else None,
            "worker": t.user_attrs.get("worker"),
            "params": t.params,
        }
        for t in trials
    ]
    return summary


def write_plots(study: Any, out_dir: Path) -> dict[str, str]:
    """Optuna's optimisation history and parameter importances as PNG (matplotlib); what could not be drawn is
    named instead (importances need two complete trials that differ)."""
    import matplotlib

    matplotlib.use("Agg")
    import warnings

    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as vis

    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    for name, plot in (("history", vis.plot_optimization_history), ("importance", vis.plot_param_importances)):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                axes = plot(study)
            figure: Any = axes.figure if hasattr(axes, "figure") else plt.gcf()
            figure.set_size_inches(8, 5)
            figure.tight_layout()
            target = out_dir / f"{name}.png"
            figure.savefig(target, dpi=110)
            written[name] = str(target)
        except Exception as exc:  # too few trials, one value everywhere: no plot, say why
            written[name] = f"not drawn: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        finally:
            plt.close("all")
    return written


def best_overlay(
    params_file: str | Path, experiment: str | None, overrides: list[str], best: dict[str, Any], space: list[str]
) -> dict[str, Any]:
    """The best trial's params as an experiment overlay: keys that differ from params.yaml, plus every searched
    key (so a recipe cannot override a tuned value), without the tune section and secret settings."""
    from pipelines.config import without_secrets

    base = without_secrets(load_params(params_file).to_dict())
    sets = [*overrides, *(f"{k}={json.dumps(v)}" for k, v in best.items())]
    tuned = without_secrets(load_params(params_file, sets, experiment).to_dict())
    overlay: dict[str, Any] = {}
    for section, values in tuned.items():
        if section in ("tune",) or not isinstance(values, dict):
            continue
        if section == "task" and values.get("type") != (base.get("task") or {}).get("type"):
            overlay[section] = values
            continue
        changed = {
            k: v
            for k, v in values.items()
            if f"{section}.{k}" in space or (base.get(section) or {}).get(k, object()) != v
        }
        if changed:
            overlay[section] = changed
    return overlay


def write_best_experiment(params_file: str | Path, name: str, overlay: dict[str, Any], summary: dict[str, Any]) -> Path:
    import yaml

    from pipelines.config import experiment_file

    target = experiment_file(params_file, f"{name}-best")
    target.parent.mkdir(parents=True, exist_ok=True)
    best = summary["best"]
    header = (
        f"# Best trial of Optuna study {summary['study']!r} (written by `nlpops tune`): trial {best['number']}, "
        f"val {summary['metric']} {best['value']:.4f} ({summary['complete']} complete, {summary['pruned']} pruned, "
        f"{summary['failed']} failed of {summary['trials']}).\n"
        f"# Keys that differ from params.yaml, plus the searched ones. Train, gate and register it as usual:\n"
        f"#   nlpops run -e {name}-best\n"
    )
    target.write_text(header + yaml.safe_dump(overlay, sort_keys=False), encoding="utf-8")
    return target


__all__ = ["UNTUNABLE", "run_trial", "storage_url", "study_name"]
