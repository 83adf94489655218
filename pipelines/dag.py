"""THE stage table: each stage's function, params sections, inputs, outputs and code, declared once.

The Prefect flow (flows/retrain.py) runs STAGES in this order, the CLI makes one verb per stage from it, stage
fingerprints (the flow's cache keys) hash exactly these facts, and dvc.yaml is generated from it
(`nlpops dag --write-dvc`; tests/unit/test_dvc_yaml.py fails when the committed file drifts).
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipelines.config import Params
from pipelines.paths import StagePaths
from pipelines.schema import stable_hash

# Stage code every stage shares (the table itself, paths, helpers).
COMMON_CODE = ("pipelines.dag", "pipelines.stages.common")


@dataclass(frozen=True)
class StageSpec:
    name: str
    run: str  # "module:function" taking Params, returning a summary dict
    params: tuple[str, ...]
    deps: Callable[[Params, StagePaths], list[Path]]
    outs: Callable[[Params, StagePaths], list[Path]]
    code: tuple[str, ...]
    uses_task: bool = False  # the task's own modules are code deps too
    # dvc.yaml only: which outputs are metrics or plots, as paths relative to the artifacts dir. Every output is
    # cached (.dvc/cache), so `dvc exp apply`, `dvc checkout` and queued experiments can restore any of them.
    dvc: dict[str, Any] = field(default_factory=dict)

    def function(self) -> Callable[[Params], dict[str, Any]]:
        module, _, name = self.run.partition(":")
        return getattr(importlib.import_module(module), name)

    def code_modules(self, params: Params | None) -> tuple[str, ...]:
        """Source modules whose change re-runs this stage (the task's own modules for the task in params)."""
        from pipelines.tasks.catalog import all_task_modules, task_spec

        task_modules: tuple[str, ...] = ()
        if self.uses_task:
            task_modules = task_spec(params.task.type).modules if params is not None else all_task_modules()
        modules = dict.fromkeys((*COMMON_CODE, *self.code, "pipelines.tasks.base", *task_modules))
        return tuple(m for m in modules if importlib.util.find_spec(m) is not None)


def raw_files(p: Params) -> list[Path]:
    """Every raw input file the run reads."""
    return [Path(x) for x in (p.data.path, p.data.validation_path, p.data.test_path) if x]


def _parity_split(p: Params) -> str:
    """The clean split the export stage checks ONNX parity on (the task's; test for most)."""
    from pipelines.tasks.catalog import task_spec

    return task_spec(p.task.type).parity_split


def _evaluate_outs(p: Params, sp: StagePaths) -> list[Path]:
    return [sp.metrics, sp.gate, sp.slices, sp.evaluation_views]


STAGES: dict[str, StageSpec] = {
    s.name: s
    for s in (
        StageSpec(
            "validate",
            "pipelines.stages.data:run_validate",
            ("data", "task", "validate"),
            lambda p, sp: [*raw_files(p), Path(p.validate_.expectations_dir)],
            lambda p, sp: [sp.validation_report, sp.data_docs],
            ("pipelines.stages.data", "pipelines.sharded"),
            uses_task=True,
        ),
        StageSpec(
            "clean",
            "pipelines.stages.data:run_clean",
            ("data", "task", "clean"),
            lambda p, sp: [*raw_files(p), sp.validation_report],
            lambda p, sp: [sp.clean_dir],
            ("pipelines.stages.data", "pipelines.sharded"),
            uses_task=True,
        ),
        StageSpec(
            "tokenise",
            "pipelines.stages.data:run_tokenise",
            ("task", "tokenise", "model"),
            lambda p, sp: [sp.clean_dir],
            lambda p, sp: [sp.tokenised_dir],
            ("pipelines.stages.data", "pipelines.tokenise", "pipelines.sharded"),
            uses_task=True,
        ),
        StageSpec(
            "train",
            "pipelines.stages.train:run_train",
            ("task", "model", "train"),
            lambda p, sp: [sp.tokenised_dir, sp.label_map, sp.clean_split("validation")],
            lambda p, sp: [sp.model_dir, sp.train_summary, sp.train_history],
            (
                "pipelines.stages.train",
                "pipelines.train",
                "pipelines.distributed",
                "pipelines.pretrained",
                "pipelines.finetuning",
                "pipelines.provenance",
            ),
            uses_task=True,
            dvc={"plots": {"train/history.json": {"x": "epoch", "y": "val_loss"}}},
        ),
        StageSpec(
            "evaluate",
            "pipelines.stages.evaluate:run_evaluate",
            ("task", "gate"),
            lambda p, sp: [sp.model_dir, sp.tokenised_dir / "test.parquet", sp.clean_split("test"), sp.label_map],
            _evaluate_outs,
            (
                "pipelines.stages.evaluate",
                "pipelines.evaluate",
                "pipelines.train",
                "pipelines.pretrained",
                "pipelines.provenance",
            ),
            uses_task=True,
            dvc={"metrics": ["evaluate/metrics.json"]},
        ),
        StageSpec(
            "export",
            "pipelines.stages.export:run_export",
            ("task", "export", "tokenise"),
            lambda p, sp: [sp.model_dir, sp.clean_split(_parity_split(p))],
            lambda p, sp: [sp.export_dir],
            (
                "pipelines.stages.export",
                "pipelines.export_onnx",
                "pipelines.onnx_optimise",
                "pipelines.serving",
                "pipelines.pretrained",
                "pipelines.provenance",
            ),
            uses_task=True,
        ),
        StageSpec(
            "register",
            "pipelines.stages.register:run_register",
            ("project", "task", "gate", "register"),
            lambda p, sp: [sp.export_dir, sp.gate, sp.metrics, sp.slices, sp.train_summary],
            lambda p, sp: [sp.registration],
            (
                "pipelines.stages.register",
                "pipelines.stages.evaluate",
                "pipelines.registry",
                "pipelines.registry_lock",
                "pipelines.evaluate",
                "pipelines.serving",
                "pipelines.lineage",
                "pipelines.provenance",
                "pipelines.dvc_experiment",
            ),
            uses_task=True,
        ),
        StageSpec(
            "report",
            "pipelines.stages.report:run_report",
            ("project", "data", "task", "tokenise", "model", "train", "gate", "register"),
            lambda p, sp: [
                sp.validation_report,
                sp.clean_dir,
                sp.train_summary,
                sp.train_history,
                *_evaluate_outs(p, sp),
                sp.export_dir,
                sp.registration,
            ],
            lambda p, sp: [sp.report_html, sp.learning_curves, sp.model_card],
            (
                "pipelines.stages.report",
                "pipelines.report.build",
                "pipelines.report.card",
                "pipelines.report.html",
                "pipelines.onnx_optimise",
                "pipelines.stages.common",
                "pipelines.registry",
            ),
            uses_task=True,
            dvc={"plots": {"report/learning_curves.svg": {}}},
        ),
    )
}

STAGE_ORDER: tuple[str, ...] = tuple(STAGES)


def run_stage(params: Params, stage: str) -> dict[str, Any]:
    """Run one stage, reporting its start, end or failure (pipelines/progress.py)."""
    import time

    from pipelines import progress
    from pipelines.errors import first_line
    from pipelines.redact import redact_text

    progress.stage_started(stage)
    started = time.perf_counter()
    try:
        summary = STAGES[stage].function()(params)
    except BaseException as exc:
        progress.stage_failed(stage, time.perf_counter() - started, redact_text(first_line(exc, 300)))
        raise
    progress.stage_finished(stage, time.perf_counter() - started)
    return summary


def _path_digest(path: Path) -> str | None:
    from pipelines.hashing import file_digest, tree_digest

    if path.is_file():
        return file_digest(path)
    if path.is_dir():
        return tree_digest(path)
    return None


def stage_outputs_exist(params: Params, stage: str) -> bool:
    spec = STAGES[stage]
    return all(out.exists() for out in spec.outs(params, StagePaths.from_params(params)))


def stage_fingerprint(params: Params, stage: str, extra: dict[str, Any] | None = None) -> str:
    """Hash of a stage's params sections, input contents and code (plus extra facts such as the champion)."""
    from pipelines.hashing import source_digest

    spec = STAGES[stage]
    paths = StagePaths.from_params(params)
    return stable_hash(
        {
            "stage": stage,
            "params": {s: params.section(s) for s in spec.params},
            "deps": {str(d): _path_digest(d) for d in spec.deps(params, paths)},
            "code": source_digest(*spec.code_modules(params)),
            "extra": extra or {},
        }
    )


def pipeline_code_digest(params: Params | None = None) -> str:
    """sha256 of every stage's source: what a scheduled run compares to decide whether the code changed."""
    from pipelines.hashing import source_digest

    modules = {m for spec in STAGES.values() for m in spec.code_modules(params)}
    return source_digest(*modules)


# ---------------------------------------------------------------- dvc.yaml, generated from the table

_DVC_HEADER = """\
# GENERATED from pipelines/dag.py by `nlpops dag --write-dvc`: edit the stage table there, not this file
# (tests/unit/test_dvc_yaml.py fails when the two differ). One DVC stage per pipeline stage, `cmd: nlpops <stage>`;
# deps: its inputs and source; params: its params.yaml sections; outs: what it writes.
"""


def _code_files(modules: tuple[str, ...]) -> list[str]:
    files = []
    for module in modules:
        if module.startswith("pipelines.tasks."):
            continue  # the task's modules: the whole pipelines/tasks folder below (any task type)
        spec = importlib.util.find_spec(module)
        if spec is None or not spec.origin:
            continue  # an optional module that is not there: nothing to depend on
        files.append(str(Path(spec.origin).relative_to(Path(__file__).resolve().parents[1])))
    return files


def dvc_params(section: str) -> list[str]:
    """How dvc.yaml lists a params section: whole, or key by key without its secret-bearing settings, so dvc.lock
    (committed to git) never records a credential (config.SECRET_SETTINGS)."""
    from pipelines.config import SECRET_SETTINGS

    if not any(s.startswith(f"{section}.") for s in SECRET_SETTINGS):
        return [section]
    fields = {name.rstrip("_"): f for name, f in Params.model_fields.items()}
    keys = fields[section].annotation.model_fields  # type: ignore[union-attr]
    return [f"{section}.{k}" for k in keys if f"{section}.{k}" not in SECRET_SETTINGS]


def render_dvc_yaml(params: Params) -> str:
    """dvc.yaml for the stage table: ${project.artifacts_dir} and ${data.path} templated from params.yaml."""
    import yaml

    paths = StagePaths(root=Path("${project.artifacts_dir}"), state=Path(params.project.state_dir))
    root = str(paths.root)
    stages: dict[str, Any] = {}
    for name, spec in STAGES.items():
        deps: list[str] = []
        for dep in spec.deps(params, paths):
            text = str(dep)
            if Path(text) in [Path(x) for x in (params.data.validation_path, params.data.test_path) if x]:
                continue  # optional files: the fingerprint covers them; dvc.yaml cannot depend on a null path
            deps.append("${data.path}" if text == str(params.data.path) else text)
        code = _code_files(spec.code_modules(None))
        if spec.uses_task:
            code.append("pipelines/tasks")
        deps += [c for c in code if c not in deps]
        metrics = [f"{root}/{p}" for p in spec.dvc.get("metrics", [])]
        plots = {f"{root}/{p}": v for p, v in spec.dvc.get("plots", {}).items()}
        outs: list[Any] = []
        for out in spec.outs(params, paths):
            text = str(out)
            if text in metrics or text in plots:
                continue
            outs.append(text)
        stage: dict[str, Any] = {
            "cmd": f"nlpops {name}",
            "deps": deps,
            "params": [key for section in spec.params for key in dvc_params(section)],
            "outs": outs,
        }
        if metrics:
            stage["metrics"] = list(metrics)
        if plots:
            stage["plots"] = [{p: dict(v)} if v else p for p, v in plots.items()]  # {}: an image plot
        stages[name] = stage
    curves = [{"training_curves": {"x": "epoch", "y": {f"{root}/train/history.json": ["train_loss", "val_loss"]}}}]
    return _DVC_HEADER + yaml.safe_dump({"stages": stages, "plots": curves}, sort_keys=False, width=120)
