"""Writable-folder checks and atomic writes, with one clear message naming the path when the disk says no."""

from __future__ import annotations

import errno
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from pipelines.errors import StateDirError

_REASONS = {
    errno.ENOSPC: "disk full",
    errno.EDQUOT: "disk quota exceeded",
    errno.EACCES: "permission denied",
    errno.EPERM: "permission denied",
    errno.EROFS: "read-only file system",
}


def describe_os_error(path: str | Path, exc: OSError, what: str = "cannot write") -> StateDirError:
    """An OSError turned into one line that names the path and the cause (disk full, permission denied...)."""
    reason = _REASONS.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    return StateDirError(f"{path}: {what} ({reason})")


def ensure_writable_dir(path: str | Path, what: str = "state dir") -> Path:
    """Create the folder if needed and prove it takes a file; raise StateDirError naming it otherwise."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        try:
            os.write(fd, b"ok")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise describe_os_error(path, exc, f"{what} is not writable") from None
    return path


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call write(tmp) on a temp file beside path, fsync it, then rename over path: readers never see half a file.

    A failure (disk full, permissions) leaves the previous file untouched and raises StateDirError naming path.
    """
    path = Path(path)
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)
    except OSError as exc:
        raise describe_os_error(path, exc) from None
    except RuntimeError as exc:
        # torch.save reports a failed write as RuntimeError ("file write failed"), not OSError.
        if "write" not in str(exc).lower():
            raise
        raise StateDirError(f"{path}: cannot write ({exc}); is the disk full?") from None
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return path
