"""Has anything changed since the champion was made? The scheduled run's first question.

The champion's registry version carries lineage tags written at registration (pipelines.stages.common.lineage_tags):
the DVC md5 of the raw data, the hash of every param, and the sha256 of the pipeline's source. The same facts
are computed for the workspace now; when they all agree there is nothing new to learn from and the scheduled
run ends as skipped. A commit that touches no pipeline code (docs, tests) does not trigger a retrain; older
versions without a code hash fall back to the git commit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from pipelines.config import Params


@dataclass
class ChangeReport:
    changed: bool
    reasons: list[str]
    compared_with: str | None = None
    current: dict[str, str | None] = field(default_factory=dict)

    @property
    def summary(self) -> str:
        head = "changed" if self.changed else "unchanged"
        return f"{head}: " + "; ".join(self.reasons)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "summary": self.summary}


def current_lineage(params: Params) -> dict[str, str | None]:
    """The lineage facts a new model would be tagged with, computed without running any stage."""
    from pipelines.dag import pipeline_code_digest
    from pipelines.lineage import data_version, git_state

    return {
        "data.path": str(params.data.path),
        "data.md5": data_version(params.data.path).get("md5"),
        "params.hash": params.params_hash(),
        "code.sha256": pipeline_code_digest(params),
        "git.commit": git_state()["commit"],
    }


def _short(value: str | None) -> str:
    return (value or "none")[:12]


def differences(tags: dict[str, str], current: dict[str, str | None]) -> list[str]:
    """What differs between a registered version's lineage tags and the workspace, one phrase per fact."""
    reasons = []
    if tags.get("data.path") != current["data.path"]:
        reasons.append(f"data path is {current['data.path']} (was {tags.get('data.path')})")
    elif tags.get("data.md5") != str(current["data.md5"]):
        reasons.append(
            f"data changed: {current['data.path']} md5 {_short(current['data.md5'])} "
            f"(was {_short(tags.get('data.md5'))})"
        )
    if tags.get("params.hash") != current["params.hash"]:
        reasons.append(f"params changed: hash {_short(current['params.hash'])} (was {_short(tags.get('params.hash'))})")
    if "code.sha256" in tags:
        if tags["code.sha256"] != current["code.sha256"]:
            reasons.append(
                f"pipeline code changed: sha256 {_short(current['code.sha256'])} (was {_short(tags['code.sha256'])})"
            )
    elif tags.get("git.commit") != current["git.commit"]:
        reasons.append(f"git commit is {_short(current['git.commit'])} (was {_short(tags.get('git.commit'))})")
    return reasons


def detect_changes(params: Params) -> ChangeReport:
    """Compare the workspace with the champion (and with a newer challenger that already failed the gate); a
    tracking store other than the one the training outputs were logged to is said too (it decides nothing)."""
    from pipelines.stores import store_change_note
    from pipelines.tracking import configure_tracking

    configure_tracking(params)
    report = _compare_with_champion(params)
    note = store_change_note(params)
    if note:
        report.reasons.append(note)
    return report


def _compare_with_champion(params: Params) -> ChangeReport:
    from pipelines.registry import alias_version

    name = params.project.registered_model
    current = current_lineage(params)
    if current["data.md5"] is None:
        return ChangeReport(True, [f"{params.data.path}: data file not found (the run will say more)"], None, current)
    champion = alias_version(name, params.register_.champion_alias)
    if champion is None:
        return ChangeReport(True, [f"no {params.register_.champion_alias} for {name} yet"], None, current)
    label = f"{params.register_.champion_alias} v{champion.version}"
    reasons = differences(champion.tags or {}, current)
    if not reasons:
        return ChangeReport(
            False,
            [
                f"nothing changed since {label} was made (data md5 {_short(current['data.md5'])}, "
                f"params hash {_short(current['params.hash'])}, code sha256 {_short(current['code.sha256'])})"
            ],
            label,
            current,
        )
    # The same new inputs already produced a challenger that failed the gate: retraining would only repeat it.
    challenger = alias_version(name, params.register_.challenger_alias)
    if (
        challenger is not None
        and str(challenger.version) != str(champion.version)
        and (challenger.tags or {}).get("gate.passed") == "false"
        and not differences(challenger.tags or {}, current)
    ):
        return ChangeReport(
            False,
            [
                f"inputs unchanged since {params.register_.challenger_alias} v{challenger.version}, which failed "
                f"the gate ({'; '.join(reasons)} relative to {label})"
            ],
            f"{params.register_.challenger_alias} v{challenger.version}",
            current,
        )
    return ChangeReport(True, [*reasons, f"relative to {label}"], label, current)
