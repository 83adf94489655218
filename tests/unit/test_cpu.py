"""Thread settings from the cores that are really free: this process's own CPU use is not competition."""

from __future__ import annotations

import os

import pytest

from pipelines import cpu


def test_idle_share_counts_this_process_time_as_idle_and_caps_at_the_cpus() -> None:
    before = {0: (0, 0), 1: (0, 0)}
    half_busy = {0: (50, 100), 1: (100, 100)}  # cpu 0 half busy, cpu 1 idle
    assert cpu.idle_share(before, half_busy, own_cpu_seconds=0.0, wall_seconds=1.0) == pytest.approx(1.5)
    # the busy half was this process (e.g. its own warm-up thread): both cores are free for its training
    assert cpu.idle_share(before, half_busy, own_cpu_seconds=0.5, wall_seconds=1.0) == pytest.approx(2.0)
    assert cpu.idle_share(before, half_busy, own_cpu_seconds=5.0, wall_seconds=1.0) == 2.0
    assert cpu.idle_share(before, {0: (0, 0), 1: (0, 0)}, 0.0, 0.0) == 0.0  # no ticks: nothing known idle


@pytest.mark.parametrize(("idle", "threads"), [(2.0, 2), (1.8, 2), (1.7, 1), (1.0, 1), (0.1, 1)])
def test_auto_threads_takes_the_cores_idle_at_three_quarters(
    monkeypatch: pytest.MonkeyPatch, idle: float, threads: int
) -> None:
    monkeypatch.setattr(cpu, "usable_cores", lambda: 2)
    monkeypatch.setattr(cpu, "idle_cores", lambda: idle)
    assert cpu.auto_threads() == threads


def test_idle_cores_samples_proc_stat_on_linux() -> None:
    idle = cpu.idle_cores(0.05)
    assert idle is None or 0.0 <= idle <= len(os.sched_getaffinity(0))
