"""Content hashes: every arrow in the pipeline is a file with a hash, which is what makes lineage auditable."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

_CHUNK = 1 << 20
# Digests of large files already read by this process, by file identity and state: one `nlpops run` records the
# same model files in the train, evaluate and export lineage records. A rewrite (new inode on rename, or new size,
# mtime or ctime in place; ctime cannot be set back, and moves with the file system's timestamp tick of a few ms)
# misses it. Files under _MEMO_MIN_BYTES are simply re-read.
_memo: dict[tuple[str, int, int, int, int, int], str] = {}
_MEMO_MIN_BYTES = 1 << 20


def _state(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def file_digest(path: str | Path, algorithm: str = "sha256") -> str:
    with open(path, "rb") as fh:
        before = os.fstat(fh.fileno())
        key = (algorithm, *_state(before))
        if before.st_size >= _MEMO_MIN_BYTES and key in _memo:
            return _memo[key]
        digest = hashlib.new(algorithm)
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
        value = digest.hexdigest()
        if before.st_size >= _MEMO_MIN_BYTES and _state(os.fstat(fh.fileno())) == key[1:]:  # not written meanwhile
            _memo[key] = value
    return value


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
