"""Empty, migrated SQLite databases copied into new projects instead of being migrated on a run's critical path.

A new project's first run creates two databases: MLflow's tracking/registry store and the temporary Prefect
server's. Each runs its whole chain of schema migrations (MLflow about 1.5 s, Prefect about 5 s on this kind of
machine). The result depends only on the installed version, so it is built once per machine and version under
`~/.cache/nlpops/` (XDG_CACHE_HOME) and copied: the tools then open a database already at their head revision and
do the rest of their start (MLflow's default experiment, Prefect's block types) as always. Builders write to a
private file and rename it into place, so concurrent first runs never see half a template; any failure leaves the
tool to create its database itself.
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nlpops"


def template_path(tool: str) -> Path:
    return cache_dir() / f"{tool}-{importlib.metadata.version(tool)}.db"


def seed(target: Path, tool: str, build: Callable[[Path], None]) -> bool:
    """Copy `tool`'s template to `target` when `target` does not exist (building the template first when this
    machine has none: `build(path)` creates an empty migrated database at `path`); True when it was copied."""
    if target.exists():
        return False
    try:
        template = template_path(tool)
        if not template.is_file():
            template.parent.mkdir(parents=True, exist_ok=True)
            partial = template.with_name(f"{template.name}.{os.getpid()}.partial")
            try:
                build(partial)
                os.replace(partial, template)  # atomic: a concurrent builder's copy is as good
            finally:
                partial.unlink(missing_ok=True)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
        shutil.copyfile(template, partial)
        if target.exists():  # another process created it meanwhile: theirs stands
            partial.unlink(missing_ok=True)
            return False
        os.replace(partial, target)
        return True
    except Exception as exc:
        print(f"nlpops: no {tool} database template ({type(exc).__name__}: {exc}); {tool} creates it", file=sys.stderr)
        return False


def build_mlflow(path: Path) -> None:
    """MLflow's tables at its head revision, no rows of a project (its default experiment names a path)."""
    import sqlalchemy
    from mlflow.store.db.utils import _initialize_tables

    engine = sqlalchemy.create_engine(f"sqlite:///{path}")
    try:
        _initialize_tables(engine)
    finally:
        engine.dispose()
