"""`nlpops migrate --to URI`: copy registered models from one MLflow store to another, so the champion survives a move
(typically from the embedded SQLite store to the server `nlpops services up` starts).

What is copied, per registered model: every version in order (the ONNX pyfunc model files, re-logged and registered
on the destination), its tags (lineage hashes, metrics, gate decision), its training run (params, tags, full metric
histories, artifacts: what `nlpops lineage --verify` re-hashes), the registered model's tags (the alias history,
`nlpops.alias_event.*`) and its aliases. Copied runs are tagged `nlpops.copied_from_run`, so the next `nlpops run`
on the destination adopts the copy of its cached training run instead of re-logging it (pipelines.stores), and
registering it again finds the migrated version instead of adding a duplicate.

The destination must not already hold versions of the model (the version numbers, and the alias history that
names them, would clash); a second migrate of the same model is a no-op. Version numbers are kept when the source
has no gaps; otherwise versions are renumbered 1..n and the history is rewritten through the same map (each version
keeps `migrated.from_version`).

Everything is read from the source first (into a temporary folder), then written, so the two stores are never
addressed at the same time through MLflow's process-wide URIs.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.errors import RegistryError, first_line
from pipelines.registry import EVENT_PREFIX
from pipelines.stores import COPIED_FROM_RUN, COPIED_FROM_STORE, COPY_KIND, redact_uri

MIGRATED_FROM_VERSION = "migrated.from_version"
MIGRATED_FROM_STORE = "migrated.from_store"


@dataclass
class RunCopy:
    run_id: str
    experiment: str
    name: str | None
    status: str
    start_time: int | None
    end_time: int | None
    params: dict[str, str]
    tags: dict[str, str]
    metrics: dict[str, list[tuple[float, int, int]]]  # key -> [(value, timestamp, step)]
    artifacts: Path


@dataclass
class VersionCopy:
    version: str
    tags: dict[str, str]
    description: str | None
    run_id: str | None
    model_dir: Path


@dataclass
class ModelCopy:
    name: str
    description: str | None
    tags: dict[str, str]
    aliases: dict[str, str]
    versions: list[VersionCopy] = field(default_factory=list)


def _use(uri: str) -> Any:
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def _read_run(client: Any, run_id: str, work: Path) -> RunCopy:
    run = client.get_run(run_id)
    experiment = client.get_experiment(run.info.experiment_id)
    metrics = {
        key: [(m.value, m.timestamp, m.step) for m in client.get_metric_history(run_id, key)]
        for key in run.data.metrics
    }
    artifacts = work / "runs" / run_id
    artifacts.mkdir(parents=True, exist_ok=True)
    if client.list_artifacts(run_id):
        client.download_artifacts(run_id, "", str(artifacts))
    tags = {k: v for k, v in run.data.tags.items() if not k.startswith("mlflow.")}
    for key in ("mlflow.runName", "mlflow.user", "mlflow.source.name", "mlflow.source.type", "mlflow.note.content"):
        if key in run.data.tags:
            tags[key] = run.data.tags[key]
    return RunCopy(
        run_id,
        experiment.name,
        run.info.run_name,
        run.info.status,
        run.info.start_time,
        run.info.end_time,
        dict(run.data.params),
        tags,
        metrics,
        artifacts,
    )


def read_models(source: str, names: list[str] | None, work: Path) -> tuple[list[ModelCopy], dict[str, RunCopy]]:
    """Everything to copy, read from `source` into `work` (model files and run artifacts downloaded)."""
    import mlflow

    client = _use(source)
    if names:
        models = []
        for name in names:
            try:
                models.append(client.get_registered_model(name))
            except Exception as exc:
                raise RegistryError(
                    f"migrate: {redact_uri(source)} has no registered model {name!r} ({first_line(exc, 120)})"
                ) from None
    else:
        models = list(client.search_registered_models())
    copies, runs = [], {}
    for model in models:
        copy = ModelCopy(
            model.name, model.description, dict(model.tags or {}), {a: str(v) for a, v in (model.aliases or {}).items()}
        )
        versions = sorted(client.search_model_versions(f"name = '{model.name}'"), key=lambda v: int(v.version))
        for mv in versions:
            target = work / "models" / model.name / str(mv.version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{model.name}/{mv.version}", dst_path=str(target)
            )
            copy.versions.append(
                VersionCopy(str(mv.version), dict(mv.tags or {}), mv.description, mv.run_id, Path(local))
            )
            if mv.run_id and mv.run_id not in runs:
                with contextlib.suppress(Exception):  # a version whose run was deleted still moves (without it)
                    runs[mv.run_id] = _read_run(client, mv.run_id, work)
        copies.append(copy)
    return copies, runs


def _write_run(client: Any, run: RunCopy, source: str) -> str:
    from mlflow.entities import Metric, Param, RunTag

    experiment = client.get_experiment_by_name(run.experiment)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(run.experiment)
    tags = dict(run.tags)
    if run.run_id:
        tags.update({COPIED_FROM_RUN: run.run_id, COPIED_FROM_STORE: redact_uri(source), COPY_KIND: "migrated"})
    new = client.create_run(experiment_id, start_time=run.start_time, run_name=run.name)
    new_id = new.info.run_id
    params = [Param(k, v) for k, v in run.params.items()]
    for i in range(0, len(params), 100):
        client.log_batch(new_id, params=params[i : i + 100])
    tag_list = [RunTag(k, v) for k, v in tags.items()]
    for i in range(0, len(tag_list), 100):
        client.log_batch(new_id, tags=tag_list[i : i + 100])
    metrics = [Metric(k, v, ts, step) for k, points in run.metrics.items() for v, ts, step in points]
    for i in range(0, len(metrics), 1000):
        client.log_batch(new_id, metrics=metrics[i : i + 1000])
    if any(run.artifacts.iterdir()):
        client.log_artifacts(new_id, str(run.artifacts))
    client.set_terminated(
        new_id,
        status=run.status if run.status in ("FINISHED", "FAILED", "KILLED") else "FINISHED",
        end_time=run.end_time,
    )
    return new_id


def _orphan_run(name: str, version: str) -> RunCopy:
    empty = Path(tempfile.mkdtemp(prefix="nlpops-migrate-empty-"))
    return RunCopy("", "nlpops-migrated", f"migrated-{name}-v{version}", "FINISHED", None, None, {}, {}, {}, empty)


def _export_dir(model_dir: Path) -> Path:
    found = next(model_dir.rglob("serving.json"), None)
    if found is None:
        raise RegistryError(f"migrate: {model_dir} holds no serving.json: not an nlpops ONNX model; nothing copied")
    return found.parent


def _remap_event(value: str, versions: dict[str, str]) -> str:
    try:
        event = json.loads(value)
    except json.JSONDecodeError:
        return value
    for key in ("from", "to"):
        if event.get(key) is not None:
            event[key] = versions.get(str(event[key]), event[key])
    return json.dumps(event)


def _existing_versions(client: Any, name: str) -> list[Any]:
    try:
        client.get_registered_model(name)
    except Exception:
        return []
    return list(client.search_model_versions(f"name = '{name}'"))


def write_models(
    destination: str, source: str, models: list[ModelCopy], runs: dict[str, RunCopy]
) -> list[dict[str, Any]]:
    """Create each model on `destination`; returns one summary per model (versions, aliases, skipped)."""
    import mlflow

    from pipelines.serving import log_onnx_pyfunc

    client = _use(destination)
    results: list[dict[str, Any]] = []
    for model in models:
        existing = _existing_versions(client, model.name)
        if existing:
            if all((v.tags or {}).get(MIGRATED_FROM_STORE) == redact_uri(source) for v in existing):
                results.append({"name": model.name, "skipped": f"already migrated ({len(existing)} versions)"})
                continue
            raise RegistryError(
                f"migrate: {redact_uri(destination)} already has {len(existing)} versions of {model.name!r}; "
                "migrate copies into a registry without that model (use another project.registered_model, or "
                "delete the model there first)"
            )
        with contextlib.suppress(Exception):
            client.create_registered_model(model.name, description=model.description)
        new_runs: dict[str, str] = {}
        numbers: dict[str, str] = {}
        for version in model.versions:
            run_id = version.run_id
            if run_id and run_id in runs and run_id not in new_runs:
                new_runs[run_id] = _write_run(client, runs[run_id], source)
            new_run = new_runs.get(run_id or "")
            if new_run is None:  # the version's run was gone in the source: the model gets a run of its own
                new_run = _write_run(client, _orphan_run(model.name, version.version), source)
            # The fluent API refuses a run of another experiment than the active one (configure_tracking set it).
            mlflow.set_experiment(experiment_id=client.get_run(new_run).info.experiment_id)
            with mlflow.start_run(run_id=new_run):
                uri = log_onnx_pyfunc(_export_dir(version.model_dir), name="model").model_uri
            tags = {**version.tags, MIGRATED_FROM_VERSION: version.version, MIGRATED_FROM_STORE: redact_uri(source)}
            if new_run and "run_id" in tags:
                tags["run_id"] = new_run  # the lineage audit checks this tag against the version's run
            with contextlib.redirect_stderr(io.StringIO()):
                created = mlflow.register_model(uri, model.name, tags=tags)
            numbers[version.version] = str(created.version)
            if version.description:
                client.update_model_version(model.name, str(created.version), version.description)
        for key, value in model.tags.items():
            client.set_registered_model_tag(
                model.name, key, _remap_event(value, numbers) if key.startswith(EVENT_PREFIX) else value
            )
        for alias, target in model.aliases.items():
            if target in numbers:
                client.set_registered_model_alias(model.name, alias, numbers[target])
        results.append(
            {
                "name": model.name,
                "versions": numbers,
                "aliases": {a: numbers.get(v) for a, v in model.aliases.items()},
                "runs": len(new_runs),
                "history_events": sum(1 for k in model.tags if k.startswith(EVENT_PREFIX)),
            }
        )
    return results


def migrate(source: str, destination: str, names: list[str] | None = None) -> list[dict[str, Any]]:
    """Copy registered models (all, or `names`) with versions, runs, tags, alias history and aliases."""
    import mlflow

    if redact_uri(source) == redact_uri(destination):
        raise RegistryError(f"migrate: source and destination are the same store ({redact_uri(source)})")
    if source.startswith("sqlite:///") and not Path(source.removeprefix("sqlite:///")).is_file():
        raise RegistryError(f"migrate: {source}: no such store file (run `nlpops run` on the embedded store first)")
    previous = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    try:
        with tempfile.TemporaryDirectory(prefix="nlpops-migrate-") as tmp:
            try:
                models, runs = read_models(source, names, Path(tmp))
            except RegistryError:
                raise
            except Exception as exc:
                raise RegistryError(
                    f"migrate: cannot read {redact_uri(source)}: {first_line(exc, 200)}; nothing copied"
                ) from None
            try:
                return write_models(destination, source, models, runs)
            except RegistryError:
                raise
            except Exception as exc:
                raise RegistryError(
                    f"migrate: writing to {redact_uri(destination)} failed: {first_line(exc, 200)}; "
                    "check `nlpops models list` there (versions copied so far stay)"
                ) from None
    finally:
        mlflow.set_tracking_uri(previous[0])
        mlflow.set_registry_uri(previous[1])
