"""Is a `.dvc` file one that DVC itself will find when it walks the project?

DVC collects `.dvc` files by walking the project and skips every folder that git ignores as a whole. It asks
its git library (dulwich) with a trailing slash, and dulwich counts a folder as ignored by a `folder/*` line even
when a `!folder/*.dvc` line re-includes the `.dvc` files (git itself does not). A `.dvc` file in such a folder
still works when named explicitly (`dvc add`, `dvc checkout data/raw/x.csv.dvc`), but every command that
walks the project (`dvc status`, `dvc push`, `dvc gc`, and the checkout that `dvc exp run` and `dvc exp apply` do)
acts as if it did not exist: that checkout deletes the data file as an unused link. This module tells.
"""

from __future__ import annotations

from pathlib import Path

from pipelines.errors import DataError


def dvc_sees(dvc_file: str | Path, root: str | Path = ".") -> bool:
    """True when DVC's own collection of the project at `root` includes `dvc_file`."""
    from dvc.repo import Repo

    target = (Path(root) / dvc_file).resolve()
    with Repo(str(root)) as repo:
        return any(Path(stage.path).resolve() == target for stage in repo.index.stages)


def require_visible(dvc_file: str | Path, root: str | Path = ".") -> None:
    """Raise DataError (one line, with the fix) when DVC would not see `dvc_file`."""
    if not dvc_sees(dvc_file, root):
        data = str(dvc_file).removesuffix(".dvc")
        raise DataError(
            f"{dvc_file}: DVC does not see this file, because git ignores its whole folder (a line such as "
            f"'{Path(data).parent.as_posix()}/*' in a .gitignore); `dvc exp run` and `dvc checkout` would then delete "
            f"{data}. Ignore the data file itself instead (`dvc add` writes it to "
            f"{Path(data).parent.as_posix()}/.gitignore) and run `nlpops data add` again"
        )
