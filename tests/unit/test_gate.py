from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from pipelines.config import GateConfig
from pipelines.evaluate import decide_gate

scores = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)


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


@given(challenger=scores, champion=scores, floor=scores, gain=st.floats(min_value=0.0, max_value=0.2))
def test_a_worse_challenger_is_never_promoted(challenger: float, champion: float, floor: float, gain: float) -> None:
    cfg = GateConfig(metric="macro_f1", min_score=floor, min_improvement=gain)
    decision = decide_gate({"macro_f1": challenger}, cfg, {"macro_f1": champion}, "1")
    if decision.passed:
        assert challenger > champion or (gain > 0 and challenger - champion >= gain)
        assert challenger >= floor
    if challenger <= champion:
        assert not decision.passed


def test_decision_serialises_with_reasons() -> None:
    d = decide_gate({"macro_f1": 0.9}, GateConfig(), {"macro_f1": 0.8}, "2").to_dict()
    assert d["passed"] is True and d["champion_version"] == "2" and len(d["reasons"]) == 2
