"""Keep DVC's view in step with runs made outside `dvc repro` (the Prefect flow), and bring data in."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from pipelines.errors import DataError


def _dvc(*args: str, cwd: str | Path = ".") -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, capture_output=True, text=True, timeout=600)


def is_dvc_repo(root: str | Path = ".") -> bool:
    return (Path(root) / ".dvc").is_dir() and (Path(root) / "dvc.yaml").is_file()


def commit_dvc_lock(root: str | Path = ".") -> str:
    """Record the current stage outputs in dvc.lock (and DVC's cache) so `dvc repro` sees them as up to date."""
    if not is_dvc_repo(root):
        return "not a DVC repo: dvc.lock not updated"
    done = _dvc("commit", "--force", "--quiet", cwd=root)
    if done.returncode != 0:
        return f"dvc commit failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    return "dvc.lock updated"


def add_data(source: str | Path, dest_dir: str | Path = "data/raw", root: str | Path = ".") -> Path:
    """Copy a data file into data/raw/ and version it with DVC (`dvc add`), pushing to the default remote."""
    source = Path(source)
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    dest = Path(dest_dir) / source.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    if source.resolve() != dest.resolve():
        shutil.copy2(source, dest)
    if not is_dvc_repo(root):
        raise DataError(f"{Path(root).resolve()}: not a DVC repository (run `dvc init` first)")
    done = _dvc("add", str(dest), cwd=root)
    if done.returncode != 0:
        raise DataError(f"{dest}: dvc add failed: {(done.stderr or done.stdout).strip()}")
    from pipelines.dvc_visibility import require_visible

    require_visible(Path(f"{dest}.dvc").resolve(), root)  # else `dvc exp run` would delete the data file
    _dvc("push", "--quiet", str(dest) + ".dvc", cwd=root)  # best effort: the remote may be unset
    return dest
