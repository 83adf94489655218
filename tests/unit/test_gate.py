from __future__ import annotations

import json

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pipelines.config import GateConfig
from pipelines.evaluate import decide_gate, membership_digest
from pipelines.tasks.text_classification.metrics import score_slices, slice_membership

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
PARITY_OK = {"passed": True, "max_abs_diff": 1e-7, "atol": 1e-4, "rows": 64, "label_mismatches": 0}


def _slices(**values: float) -> dict:
    return {name.replace("_", "="): {"value": v, "rows": 50, "metric": "macro_f1"} for name, v in values.items()}


def test_no_champion_uses_the_absolute_floor_only() -> None:
    cfg = GateConfig(metric="macro_f1", min_score=0.7)
    assert decide_gate({"macro_f1": 0.71}, cfg).passed
    failed = decide_gate({"macro_f1": 0.69}, cfg)
    assert not failed.passed
    assert "0.6900 < min_score 0.7000" in failed.reasons[0]


def test_challenger_must_be_strictly_better_than_the_champion_by_default() -> None:
    cfg = GateConfig(metric="accuracy", min_score=0.5)
    tie = decide_gate({"accuracy": 0.9}, cfg, {"accuracy": 0.9}, "3")
    assert not tie.passed and "v3" in tie.reasons[1]
    assert decide_gate({"accuracy": 0.91}, cfg, {"accuracy": 0.9}, "3").passed


def test_min_improvement_is_required_over_the_champion() -> None:
    cfg = GateConfig(metric="macro_f1", min_score=0.0, min_improvement=0.02)
    assert not decide_gate({"macro_f1": 0.81}, cfg, {"macro_f1": 0.80}, "1").passed
    assert decide_gate({"macro_f1": 0.83}, cfg, {"macro_f1": 0.80}, "1").passed


def test_a_slice_that_regresses_too_much_fails_the_gate_even_when_the_total_improves() -> None:
    cfg = GateConfig(metric="macro_f1", min_score=0.0, max_slice_drop=0.05)
    champion = {"macro_f1": 0.80, "slices": _slices(class_neg=0.80, length_long=0.70)}
    challenger = {"macro_f1": 0.85, "slices": _slices(class_neg=0.81, length_long=0.60)}
    decision = decide_gate(challenger, cfg, champion, "4")
    assert not decision.passed
    [failed] = decision.failed
    assert failed.name == "slice:length=long"
    assert "drop 0.1000 > max_slice_drop 0.0500" in failed.detail
    assert failed.values["champion"] == 0.70 and failed.values["challenger"] == 0.60
    # The same drop within the allowance passes.
    relaxed = GateConfig(metric="macro_f1", min_score=0.0, max_slice_drop=0.15)
    assert decide_gate(challenger, relaxed, champion, "4").passed


def test_small_slices_are_reported_but_not_gated_and_slices_can_be_switched_off() -> None:
    champion = {"macro_f1": 0.8, "slices": {"topic=x": {"value": 0.9, "rows": 5, "metric": "macro_f1"}}}
    challenger = {"macro_f1": 0.9, "slices": {"topic=x": {"value": 0.1, "rows": 5, "metric": "macro_f1"}}}
    assert decide_gate(
        challenger, GateConfig(metric="macro_f1", min_score=0.0, slice_min_rows=20), champion, "1"
    ).passed
    assert not decide_gate(
        challenger, GateConfig(metric="macro_f1", min_score=0.0, slice_min_rows=5), champion, "1"
    ).passed
    off = GateConfig(metric="macro_f1", min_score=0.0, slice_min_rows=5, max_slice_drop=None)
    assert decide_gate(challenger, off, champion, "1").passed


def test_parity_and_latency_are_pending_in_evaluate_and_decided_at_register() -> None:
    cfg = GateConfig(metric="macro_f1", min_score=0.0, max_latency_ms=50.0)
    early = decide_gate({"macro_f1": 0.9}, cfg)
    assert early.passed and not early.final and early.pending == ["onnx_parity", "latency"]
    final = decide_gate({"macro_f1": 0.9}, cfg, parity=PARITY_OK, latency_p95_ms=12.5)
    assert final.passed and final.final
    assert "12.50 ms <= max 50.00 ms" in final.reasons[-1]
    slow = decide_gate({"macro_f1": 0.9}, cfg, parity=PARITY_OK, latency_p95_ms=80.0)
    assert not slow.passed and slow.failed[0].name == "latency"
    unmeasured = decide_gate({"macro_f1": 0.9}, cfg, parity=PARITY_OK, latency_p95_ms=None)
    assert not unmeasured.passed and "not measured" in unmeasured.failed[0].detail
    broken = decide_gate({"macro_f1": 0.9}, cfg, parity={**PARITY_OK, "passed": False}, latency_p95_ms=1.0)
    assert not broken.passed and broken.failed[0].name == "onnx_parity"


def test_decision_serialises_with_reasons_and_a_compact_tag() -> None:
    many = {f"class=c{i}": {"value": 0.5, "rows": 100, "metric": "f1"} for i in range(400)}
    d = decide_gate(
        {"macro_f1": 0.9, "slices": many}, GateConfig(metric="macro_f1"), {"macro_f1": 0.8, "slices": many}, "2"
    )
    data = d.to_dict()
    assert data["passed"] is True and data["champion_version"] == "2" and len(data["reasons"]) == 402
    tag = d.summary()
    assert len(tag) <= 4900 and json.loads(tag)["passed"] is True


@settings(max_examples=300, deadline=None)
@given(
    challenger=scores,
    champion=scores,
    floor=scores,
    gain=st.floats(min_value=0.0, max_value=0.2),
    max_drop=st.floats(min_value=0.0, max_value=0.3),
    slice_pairs=st.lists(st.tuples(scores, scores, st.integers(1, 200)), max_size=5),
    parity_ok=st.booleans(),
    latency=st.floats(min_value=0.1, max_value=500.0),
)
def test_a_worse_challenger_is_never_promoted(
    challenger: float,
    champion: float,
    floor: float,
    gain: float,
    max_drop: float,
    slice_pairs: list[tuple[float, float, int]],
    parity_ok: bool,
    latency: float,
) -> None:
    cfg = GateConfig(
        metric="macro_f1", min_score=floor, min_improvement=gain, max_slice_drop=max_drop, max_latency_ms=250.0
    )
    mine = {f"s{i}": {"value": a, "rows": n} for i, (a, _, n) in enumerate(slice_pairs)}
    theirs = {f"s{i}": {"value": b, "rows": n} for i, (_, b, n) in enumerate(slice_pairs)}
    decision = decide_gate(
        {"macro_f1": challenger, "slices": mine},
        cfg,
        {"macro_f1": champion, "slices": theirs},
        "1",
        parity={**PARITY_OK, "passed": parity_ok},
        latency_p95_ms=latency,
    )
    if decision.passed:
        assert challenger > champion and challenger - champion >= gain - 1e-9
        assert challenger >= floor - 1e-9
        assert parity_ok and latency <= 250.0
        for a, b, n in slice_pairs:
            assert n < cfg.slice_min_rows or b - a <= max_drop + 1e-9
    if challenger <= champion or not parity_ok or latency > 250.0:
        assert not decision.passed


def test_slices_cover_classes_lengths_and_a_user_column() -> None:
    id2label = {0: "neg", 1: "pos"}
    labels = [0, 0, 1, 1, 1, 0]
    lengths = [3, 90, 5, 100, 7, 8]
    groups = ["web", "web", "mail", "mail", None, "web"]
    members = slice_membership(labels, id2label, lengths, 64, groups, "source")
    assert members == {
        "class=neg": [0, 1, 5],
        "class=pos": [2, 3, 4],
        "length=short": [0, 2, 4, 5],
        "length=long": [1, 3],
        "source=(empty)": [4],
        "source=mail": [2, 3],
        "source=web": [0, 1, 5],
    }
    predictions = np.array([0, 1, 1, 0, 1, 0])  # wrong exactly on the two long texts
    scored = score_slices(predictions, labels, members, id2label, "accuracy")
    assert scored["length=short"] == {"value": 1.0, "rows": 4, "metric": "accuracy"}
    assert scored["length=long"]["value"] == 0.0
    assert scored["class=neg"]["metric"] == "f1" and scored["class=neg"]["rows"] == 3
    assert scored["source=mail"]["value"] == 0.5
    assert membership_digest(members) != membership_digest({**members, "length=long": [1]})


def test_a_champion_is_re_scored_once_for_evaluate_and_register(monkeypatch) -> None:
    """Register re-checks the champion under the promotion lock; on the same test split the same registered
    version is not scored again (a version's model never changes), a new split or version is."""
    from types import SimpleNamespace

    import pipelines.registry as registry
    import pipelines.stages.evaluate as stage
    from pipelines.config import Params

    params = Params.model_validate({"data": {"path": "-"}})
    champion = SimpleNamespace(name="m", version="3", run_id="old", tags={"task.type": params.task.type})
    monkeypatch.setattr(registry, "alias_version", lambda *a: champion)
    scored: list[str] = []

    def score(_params, version):
        scored.append(version.version)
        return {"macro_f1": 0.8, "slices": {}}

    monkeypatch.setattr(stage, "score_champion", score)
    monkeypatch.setattr(stage, "_RESCORED", {})
    first = stage.champion_reference(params, "split-a", "new-run")
    first[0]["macro_f1"] = 0.0  # a caller's change does not reach the memo
    again = stage.champion_reference(params, "split-a", "new-run")
    assert again == ({"macro_f1": 0.8, "slices": {}}, "3", "champion re-scored on the current test split")
    assert scored == ["3"]
    stage.champion_reference(params, "split-b", "new-run")
    champion.version = "4"
    stage.champion_reference(params, "split-b", "new-run")
    assert scored == ["3", "3", "4"]
