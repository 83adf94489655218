"""Content hashes: every arrow in the pipeline is a file with a hash, which is what makes lineage auditable."""

from __future__ import annotations

import hashlib
from pathlib import Path

_CHUNK = 1 << 20


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    digest = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def file_md5(path: str | Path) -> str:
    """The hash DVC 3 records for a single file (md5 of its bytes)."""
    return file_digest(path, "md5")


def tree_digest(root: str | Path, pattern: str = "*") -> str:
    """sha256 over relative names and contents of the files under root (stable across machines)."""
    root = Path(root)
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob(pattern) if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(file_digest(path).encode())
    return digest.hexdigest()


def source_digest(*modules: str) -> str:
    """sha256 of the source files of the given modules: a stage re-runs when its code changes."""
    import importlib

    digest = hashlib.sha256()
    for name in sorted(modules):
        module = importlib.import_module(name)
        file = getattr(module, "__file__", None)
        if file:
            digest.update(name.encode())
            digest.update(Path(file).read_bytes())
    return digest.hexdigest()
