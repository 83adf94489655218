"""Load a registered model's ONNX export (by alias or version) for prediction, cached locally."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.errors import RegistryError


def json_object(line: str) -> dict[str, Any] | None:
    """The line as a JSON object ({"question": ..., "context": ...} for question answering), else None."""
    import json

    stripped = line.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def split_pairs(lines: list[str]) -> list[Any]:
    """Input items from lines: a line that parses as a JSON object is that object (e.g. {"question", "context"});
    the other lines are (text, text_pair) pairs when every one of them has a TAB ('a<TAB>b'), else plain texts."""
    objects = [json_object(line) for line in lines]
    texts = [line for line, o in zip(lines, objects, strict=True) if o is None]
    pairs = bool(texts) and all("\t" in line for line in texts)
    return [
        o if o is not None else (tuple(line.split("\t", 1)) if pairs else line)
        for line, o in zip(lines, objects, strict=True)
    ]


def load_registered_runtime(params: Params, alias: str = "champion", version: str | None = None) -> tuple[Any, str]:
    """(the version's task runtime, 'name vN') for the given version or alias; a clear error when there is none."""

    from pipelines.registry import alias_version
    from pipelines.serving import load_runtime
    from pipelines.tracking import configure_tracking

    configure_tracking(params)
    name = params.project.registered_model
    if version is None:
        found = alias_version(name, alias)
        if found is None:
            raise RegistryError(f"registry: {name!r} has no version with alias {alias!r}; run `nlpops run` first")
        version = str(found.version)
    return load_runtime(registered_export_dir(params, name, str(version))), f"{name} v{version}"


def registered_export_dir(params: Params, name: str, version: str) -> Path:
    """A registered version's ONNX export folder, downloaded once into the state dir's cache (keyed by store:
    version numbers are per store) and swapped in whole, so a killed download never leaves half a model."""
    import mlflow

    from pipelines.stores import store_key

    target = Path(params.project.state_dir) / "cache" / "registered" / store_key(params) / name / version
    if (target / "serving.json").is_file():
        return target
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{name}/{version}")
    except Exception as exc:
        raise RegistryError(f"registry: cannot load {name} v{version}: {exc}") from None
    export = next(Path(local).rglob("serving.json")).parent
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    shutil.copytree(export, staging, dirs_exist_ok=True)
    if target.exists():
        shutil.rmtree(target)
    staging.rename(target)
    return target
