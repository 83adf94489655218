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


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux /proc/stat")
def test_idle_sample_spans_the_work_done_meanwhile() -> None:
    """A sample begun before a model load counts the load's window: this process's busy core is idle to it, and
    the window is topped up to the minimum only when the work was shorter."""
    import time

    sample = cpu.IdleSample()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # busy, as a model load is
        sum(range(1000))
    started = time.monotonic()
    idle = sample.idle(min_seconds=0.5)
    assert 0.15 <= time.monotonic() - started <= 0.4  # only the rest of the 0.5 s is slept
    assert idle is not None and 0.0 <= idle <= len(os.sched_getaffinity(0))
    assert idle >= 0.75  # its own busy core counts as idle (another job may hold the rest, on a shared machine)
