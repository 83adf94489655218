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


class _Clock:
    """Wall and process clocks this test moves by hand; `sleep` moves the wall clock only (a sleeping process uses
    no CPU)."""

    def __init__(self) -> None:
        self.wall = 100.0
        self.own = 5.0
        self.slept: list[float] = []

    def monotonic(self) -> float:
        return self.wall

    def process_time(self) -> float:
        return self.own

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.wall += seconds

    def work(self, seconds: float) -> None:
        """This process busy on one core for `seconds`."""
        self.wall += seconds
        self.own += seconds


@pytest.mark.parametrize(("other_job", "expected"), [(False, 2.0), (True, 1.0)])
def test_idle_sample_spans_the_work_done_meanwhile(
    monkeypatch: pytest.MonkeyPatch, other_job: bool, expected: float
) -> None:
    """A sample begun before a model load counts the load's window: this process's busy core is idle to it (and a
    core another job holds is not), and the window is topped up to the minimum only when the work was shorter."""
    clock = _Clock()
    monkeypatch.setattr(cpu, "time", clock)
    monkeypatch.setattr(cpu.os, "sched_getaffinity", lambda pid: {0, 1})
    ticks = iter(
        [
            {0: (1000, 2000), 1: (1000, 2000)},
            # 0.5 s at 100 ticks/s: cpu 0 busy for the 0.3 s load (this process), cpu 1 idle or held by another job
            {0: (1020, 2050), 1: (1000 if other_job else 1050, 2050)},
        ]
    )
    monkeypatch.setattr(cpu, "_cpu_times", lambda cpus: next(ticks))
    sample = cpu.IdleSample()
    clock.work(0.3)  # a model load
    assert sample.idle(min_seconds=0.5) == pytest.approx(expected)
    assert clock.slept == [pytest.approx(0.2)]  # only the rest of the 0.5 s is slept
    sample = cpu.IdleSample.__new__(cpu.IdleSample)  # a window already longer than the minimum sleeps nothing
    sample.cpus, sample.before, sample.own_before, sample.wall_before = {0, 1}, {0: (0, 0)}, clock.own, clock.wall
    clock.work(0.8)
    monkeypatch.setattr(cpu, "_cpu_times", lambda cpus: {0: (0, 80)})
    assert sample.idle(min_seconds=0.5) == pytest.approx(1.0)
    assert clock.slept[-1] == 0.0


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="Linux /proc/stat")
def test_idle_sample_reads_the_real_proc_stat() -> None:
    """The same against the machine's own /proc/stat: a value within the CPUs (what it is depends on what else
    runs, e.g. the other pytest worker, so the exact arithmetic is the test above)."""
    sample = cpu.IdleSample()
    idle = sample.idle(min_seconds=0.05)
    assert idle is not None and 0.0 <= idle <= len(os.sched_getaffinity(0))
