"""Load a registered model's ONNX export (by alias or version) for prediction, cached locally."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.errors import RegistryError


def split_pairs(lines: list[str]) -> list[Any]:
    """Input items from lines: 'a<TAB>b' lines are (text, text_pair) pairs when every line has a TAB."""
    if lines and all("\t" in line for line in lines):
        return [tuple(line.split("\t", 1)) for line in lines]
    return list(lines)


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
