"""What a stage must know when DVC runs it as an experiment (`dvc exp run`, in the workspace or from the queue).

DVC tells a stage through its environment (checked by printing it from a stage, DVC 3.67):

- every stage DVC runs gets DVC_ROOT (the project root) and DVC_STAGE;
- a stage of an experiment also gets DVC_EXP_NAME and DVC_EXP_BASELINE_REV; plain `dvc repro` does not set them;
- a queued experiment (`dvc exp run --queue` + `dvc queue start`, or `--temp`) runs in a temporary git copy under
  `.dvc/tmp/exps/tmpXXXX` that DVC deletes afterwards, while DVC_ROOT still names the project itself.

Two decisions follow from that, both made here:

- promotion (`register.promote`): an experiment registers its model as a version and moves `challenger`, but the
  champion only moves when the params say so, so trying hyper-parameters never promotes by accident;
- the state dir: a relative `project.state_dir` (MLflow store, registry lock, caches) is anchored at DVC_ROOT in
  a temporary copy, so a queued experiment logs to the project's MLflow store and not to a copy that is deleted.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipelines.config import Params

EXP_NAME = "DVC_EXP_NAME"
EXP_BASELINE = "DVC_EXP_BASELINE_REV"
ROOT = "DVC_ROOT"

PROMOTE_MODES = ("auto", "gate", "never")


@dataclass(frozen=True)
class DvcExperiment:
    """The DVC experiment this process runs in."""

    name: str
    baseline_rev: str
    root: Path | None  # the project (DVC_ROOT); None when DVC did not say
    cwd: Path

    @property
    def in_temp_copy(self) -> bool:
        """True for a queued (or --temp) experiment: the stage runs in a copy, not in the project."""
        return self.root is not None and self.root.resolve() != self.cwd.resolve()

    def tags(self) -> dict[str, str]:
        """MLflow tags that tie a run (and its registered version) to the experiment `dvc exp show` lists."""
        return {"dvc.exp_name": self.name, "dvc.exp_baseline_rev": self.baseline_rev}


def current_experiment(env: Mapping[str, str] | None = None, cwd: Path | None = None) -> DvcExperiment | None:
    """The DVC experiment this process is a stage of, or None (`nlpops run`, plain `dvc repro`, a shell)."""
    env = os.environ if env is None else env
    name = env.get(EXP_NAME, "").strip()
    if not name:
        return None
    root = env.get(ROOT, "").strip()
    return DvcExperiment(
        name=name,
        baseline_rev=env.get(EXP_BASELINE, "").strip(),
        root=Path(root) if root else None,
        cwd=cwd if cwd is not None else Path.cwd(),
    )


def experiment_tags(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`dvc.exp_name` / `dvc.exp_baseline_rev` when running inside a DVC experiment, else nothing."""
    experiment = current_experiment(env)
    return experiment.tags() if experiment else {}


@dataclass(frozen=True)
class PromotionPolicy:
    """Whether this run may move the champion alias when the gate passes, and why not."""

    allowed: bool
    reason: str  # why the champion is held back ("" when allowed)


def promotion_policy(mode: str, experiment: DvcExperiment | None) -> PromotionPolicy:
    """`register.promote` for this run.

    auto  : the gate decides for `nlpops run` / `dvc repro`; a DVC experiment registers only (champion held);
    gate  : the gate decides, in DVC experiments too (`dvc exp run -S register.promote=gate`);
    never : register only; the champion moves with `nlpops models promote` alone.
    """
    if mode not in PROMOTE_MODES:
        from pipelines.errors import ConfigError

        raise ConfigError(f"register.promote={mode!r} is not allowed (allowed: {', '.join(PROMOTE_MODES)})")
    if mode == "never":
        return PromotionPolicy(False, "register.promote=never: champion moves only with `nlpops models promote`")
    if mode == "auto" and experiment is not None:
        return PromotionPolicy(
            False,
            f"DVC experiment {experiment.name!r} with register.promote=auto: registered only, champion unchanged "
            "(promote with `nlpops models promote`, or run the experiment with -S register.promote=gate)",
        )
    return PromotionPolicy(True, "")


def anchor_state_dir(params: Params, experiment: DvcExperiment | None = None) -> Params:
    """Params whose relative `project.state_dir` points into the project when DVC runs this in a temporary copy.

    Only that case changes anything: the workspace, `dvc repro` and `nlpops run` keep the state dir as given,
    and an absolute state dir (or a server named by MLFLOW_TRACKING_URI) is already shared.
    """
    experiment = experiment if experiment is not None else current_experiment()
    state_dir = Path(params.project.state_dir)
    if experiment is None or not experiment.in_temp_copy or state_dir.is_absolute() or experiment.root is None:
        return params
    anchored = str((experiment.root / state_dir).resolve())
    return params.model_copy(update={"project": params.project.model_copy(update={"state_dir": anchored})})
