"""Facts that tie a model to the exact data, code and environment that made it."""

from __future__ import annotations

import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from pipelines.hashing import file_md5

TRACKED_PACKAGES = ("nlpops", "torch", "transformers", "tokenizers", "onnx", "onnxruntime", "mlflow", "dvc", "prefect")


def package_versions() -> dict[str, str]:
    versions = {}
    for name in TRACKED_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def git_state(cwd: str | Path = ".") -> dict[str, Any]:
    """Commit and whether the work tree differs from it (a dirty tree is recorded, not hidden)."""

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=20, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"commit": "unknown", "dirty": None}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": commit, "dirty": bool(status)}


def data_version(path: str | Path) -> dict[str, Any]:
    """DVC's hash of a raw data file: from its .dvc file when tracked, else computed the same way (md5)."""
    path = Path(path)
    dvc_file = path.with_name(path.name + ".dvc")
    current = file_md5(path) if path.is_file() else None
    if dvc_file.is_file():
        try:
            outs = (yaml.safe_load(dvc_file.read_text()) or {}).get("outs") or [{}]
            recorded = outs[0].get("md5")
        except (yaml.YAMLError, AttributeError, IndexError):
            recorded = None
        return {
            "path": str(path),
            "md5": current,
            "dvc_file": str(dvc_file),
            "dvc_md5": recorded,
            "dvc_tracked": True,
            "matches_dvc": recorded == current,
        }
    return {"path": str(path), "md5": current, "dvc_tracked": False}
