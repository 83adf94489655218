"""Stage stamps (fingerprint + summary), the dvc.lock record, and the whole-run up-to-date check's refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipelines.config import Params, load_params
from pipelines.dag import STAGE_ORDER
from pipelines.stage_cache import (
    cache_reason,
    dvc_lock_current,
    record_dvc_lock,
    stamp_summary,
    syncs_dvc_lock,
    up_to_date,
    write_stamp,
)

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def params(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Params:
    monkeypatch.chdir(tmp_path)
    return load_params(
        REPO / "params.yaml",
        [f"project.artifacts_dir={tmp_path / 'artifacts'}", f"project.state_dir={tmp_path / 'state'}"],
    )


def test_a_stamp_keeps_the_summary_as_plain_json(params: Params) -> None:
    write_stamp(params, "evaluate", "f" * 64, {"accuracy": np.float32(0.75), "rows": np.int64(80), "v": np.ones(2)})
    assert stamp_summary(params, "evaluate") == {"accuracy": 0.75, "rows": 80, "v": [1.0, 1.0]}
    assert stamp_summary(params, "train") is None


def test_dvc_lock_is_current_only_for_the_outputs_it_was_committed_with(params: Params, tmp_path: Path) -> None:
    for stage in STAGE_ORDER:
        write_stamp(params, stage, f"{stage}-1", {})
    assert not dvc_lock_current(params)  # never committed
    Path("dvc.lock").write_text("schema: '2.0'\n")
    record_dvc_lock(params)
    assert dvc_lock_current(params)
    write_stamp(params, "train", "train-2", {})  # a stage ran again since
    assert not dvc_lock_current(params)
    record_dvc_lock(params)
    Path("dvc.lock").write_text("schema: '2.0'\nstages: {}\n")  # dvc.lock edited since (e.g. `dvc repro`)
    assert not dvc_lock_current(params)


def test_only_a_plain_run_of_params_yaml_syncs_dvc_lock() -> None:
    assert syncs_dvc_lock("params.yaml", [], None)
    assert not syncs_dvc_lock("params.yaml", ["train.epochs=1"], None)
    assert not syncs_dvc_lock("params.yaml", [], "sst2")
    assert not syncs_dvc_lock("params.yaml", [], None, sync_dvc=False)


def test_no_stamps_or_missing_outputs_mean_the_flow_must_run(params: Params) -> None:
    stale: list[str] = []
    assert up_to_date(params, stale) is None and stale == ["validate"]  # nothing ran yet: from the first stage
    assert up_to_date(params, stale, local_only=True) is None and stale == ["validate", "validate"]
    for stage in STAGE_ORDER:
        write_stamp(params, stage, "x", {"run_id": "r"})
    assert up_to_date(params) is None  # stamps without outputs on disk (or with other fingerprints)


def test_the_wait_for_prefect_warms_only_the_stages_that_will_run(params: Params) -> None:
    """`nlpops run` imports what the first stage to run needs while the Prefect server boots: everything on a
    first run, nothing of validate/tokenise when training is the first stage to run, nothing after train."""
    from pipelines.cli.stages import _warm_imports

    assert len(_warm_imports(params, None)) == len(_warm_imports(params, "validate")) == 5  # GX, tokenizer, torch, HF
    assert len(_warm_imports(params, "train")) == 3
    assert _warm_imports(params, "export") == []


def test_the_cache_reason_names_the_params_sections() -> None:
    reason = cache_reason("train", "0123456789abcdef")
    assert reason.startswith("params (") and "train" in reason and "fingerprint 0123456789ab)" in reason
