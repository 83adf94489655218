"""How many CPU cores this process may really use, and torch's thread settings from that.

torch's default intra-op thread count is the number of logical CPUs the OpenMP runtime sees. That is too many
in three common cases:

- SMT hosts: two hyper-threads share one core's FMA units, so a GEMM gains nothing from the second, and every
  op pays a barrier across twice the threads;
- containers limited by a CPU quota (docker `--cpus 2`, a Kubernetes limit on a 64-core node): 64 threads
  time-sliced onto 2 cores, each op waiting for its slowest, descheduled thread;
- cores busy with other work (a shared CI runner, other jobs on the node): each of the ~1,500 parallel ops of a
  training step ends at a barrier, and a thread that lost its core to another process holds up the others for
  a scheduler time slice. Measured on 2 cores with other jobs running (`benchmarks/training.py --levers`,
  benchmarks/README.md): 1 thread trained 2.7x faster than 2.

`usable_cores` counts physical cores within the affinity mask and the cgroup quota; `idle_cores` how many of
them were idle over half a second (this process's own CPU time counts as idle: its own background threads are
not another job); `configure_threads` takes the smaller, within OMP_NUM_THREADS when
that is set (torchrun's share per rank), and one inter-op thread (eager training never runs independent ops in
parallel; a second pool would only compete for the same cores).
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from pathlib import Path

# cgroup v2, then v1: quota and period in microseconds ("max" = no quota)
_CGROUP_V2 = Path("/sys/fs/cgroup/cpu.max")
_CGROUP_V1 = (Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"), Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us"))


def cgroup_cpu_limit() -> float | None:
    """The container's CPU quota in cores (e.g. 2.5), or None when there is none or it cannot be read."""
    try:
        if _CGROUP_V2.is_file():
            quota, period = _CGROUP_V2.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        quota_path, period_path = _CGROUP_V1
        if quota_path.is_file() and period_path.is_file():
            quota_us = int(quota_path.read_text())
            return None if quota_us <= 0 else quota_us / int(period_path.read_text())
    except (OSError, ValueError):
        return None
    return None


def usable_cores() -> int:
    """Physical cores this process may run on: its affinity mask, less SMT siblings, within the cgroup quota."""
    try:
        logical = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        logical = os.cpu_count() or 1
    cores = logical
    try:
        import psutil

        physical, total = psutil.cpu_count(logical=False), psutil.cpu_count(logical=True)
        if physical and total and total > physical:
            cores = max(1, logical * physical // total)  # SMT: the same share of the mask is physical
    except ImportError:
        pass
    limit = cgroup_cpu_limit()
    if limit is not None:
        cores = min(cores, max(1, math.ceil(limit)))
    return max(1, cores)


def _cpu_times(cpus: set[int]) -> dict[int, tuple[int, int]]:
    """(idle, total) jiffies of each CPU in `cpus` from /proc/stat (idle includes iowait; steal counts as busy)."""
    times: dict[int, tuple[int, int]] = {}
    for line in Path("/proc/stat").read_text().splitlines():
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cpus:
            values = [int(v) for v in fields[:8]]
            times[int(name[3:])] = (values[3] + values[4], sum(values))
    return times


def idle_share(
    before: dict[int, tuple[int, int]], after: dict[int, tuple[int, int]], own_cpu_seconds: float, wall_seconds: float
) -> float:
    """Cores idle between two /proc/stat samples, the CPU time this process used meanwhile counted as idle (its
    own threads, e.g. a warm-up or a progress thread, are not another job holding a core), at most the CPUs."""
    idle = 0.0
    for cpu, (idle_after, total_after) in after.items():
        idle_before, total_before = before.get(cpu, (idle_after, total_after))
        if total_after > total_before:
            idle += (idle_after - idle_before) / (total_after - total_before)
    own = own_cpu_seconds / wall_seconds if wall_seconds > 0 else 0.0
    return min(float(len(after)), idle + max(0.0, own))


class IdleSample:
    """A measurement of idle CPUs begun now and read later (`idle`): work this process does meanwhile (loading a
    model) is the sampling window instead of a sleep, since this process's own use counts as idle."""

    def __init__(self) -> None:
        try:
            self.cpus: set[int] | None = set(os.sched_getaffinity(0))
            self.before = _cpu_times(self.cpus)
        except (AttributeError, OSError, ValueError):
            self.cpus = None
        self.own_before, self.wall_before = time.process_time(), time.monotonic()

    def idle(self, min_seconds: float = 0.5) -> float | None:
        """Idle CPUs since the start (at least `min_seconds`: sleeps the rest); None where /proc/stat cannot tell."""
        if self.cpus is None:
            return None
        time.sleep(max(0.0, min_seconds - (time.monotonic() - self.wall_before)))
        try:
            after = _cpu_times(self.cpus)
        except (OSError, ValueError):
            return None
        if not after or not self.before:
            return None
        own, wall = time.process_time() - self.own_before, time.monotonic() - self.wall_before
        return idle_share(self.before, after, own, wall)


def idle_cores(seconds: float = 0.5) -> float | None:
    """How many of this process's CPUs sat idle over `seconds` (e.g. 0.9 of 2 when another job takes one), this
    process's own use counted as idle; None where /proc/stat cannot tell (not Linux)."""
    return IdleSample().idle(seconds)


def auto_threads(sample: IdleSample | None = None) -> int:
    """Intra-op threads for training: the usable cores that are idle now (a core counts from 3/4 idle), >= 1.
    `sample`: a measurement begun earlier (else one of 0.5 s now)."""
    cores = usable_cores()
    idle = sample.idle() if sample is not None else idle_cores()
    if idle is None:
        return cores
    return max(1, min(cores, math.floor(idle + 0.25)))


def configure_threads(num_threads: int | None, sample: IdleSample | None = None) -> int:
    """Set torch's intra-op threads (num_threads, else `auto_threads` within OMP_NUM_THREADS, from `sample` when
    given) and one inter-op thread. Returns the intra-op thread count now in effect."""
    import torch

    if not num_threads:
        num_threads = auto_threads(sample)
        with contextlib.suppress(ValueError):  # torchrun's per-rank share, or a user's limit
            num_threads = min(num_threads, max(1, int(os.environ.get("OMP_NUM_THREADS", "0")) or num_threads))
    torch.set_num_threads(num_threads)
    with contextlib.suppress(RuntimeError):  # only settable once per process, before any inter-op work
        torch.set_num_interop_threads(1)
    return torch.get_num_threads()
