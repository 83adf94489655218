"""The Dask cluster behind Prefect's DaskTaskRunner (prefect-dask): sharded data preparation and tune workers.

`orchestration.dask_address` names a running scheduler (`dask scheduler` + `dask worker tcp://HOST:8786` on any
number of hosts); without it a local cluster of `orchestration.dask_workers` processes is started once per process
and kept for every later stage (closed at exit). Workers report their task runs to the same Prefect API as the flow:
a local cluster's workers are given this process's API URL (its temporary server when no PREFECT_API_URL is set,
so they do not each start one); workers of a remote cluster need PREFECT_API_URL set to a Prefect server.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pipelines.config import OrchestrationConfig

_clusters: dict[tuple[int, int, int | None], Any] = {}
_lock = threading.Lock()


def prefect_api_url() -> str:
    """The Prefect API this process reports to: PREFECT_API_URL, or its temporary local server (started now)."""
    from prefect.settings import PREFECT_API_URL

    url = PREFECT_API_URL.value()
    if url:
        return str(url)
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()  # the one Prefect's own client would start: one per process
    server.start(timeout=int(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS") or 180))
    return server.api_url


def _quiet() -> None:
    for name in ("distributed", "distributed.nanny", "distributed.scheduler", "distributed.worker", "bokeh"):
        logging.getLogger(name).setLevel(logging.ERROR)


def local_cluster(workers: int, threads_per_worker: int, omp_threads: int | None = None) -> Any:
    """A LocalCluster of `workers` processes, started on first use and reused by this process."""
    key = (workers, threads_per_worker, omp_threads)
    with _lock:
        cluster = _clusters.get(key)
        if cluster is not None and cluster.status.name == "running":
            return cluster
        _quiet()
        from distributed import LocalCluster

        env = {
            "PREFECT_API_URL": prefect_api_url(),
            "DASK_LOGGING__DISTRIBUTED": "error",
            "OMP_NUM_THREADS": str(omp_threads or threads_per_worker),
            "TOKENIZERS_PARALLELISM": "false",
        }
        cluster = LocalCluster(
            n_workers=workers,
            processes=True,
            threads_per_worker=threads_per_worker,
            dashboard_address=None,
            env=env,
            silence_logs=logging.ERROR,
        )
        _clusters[key] = cluster
        return cluster


@atexit.register
def close_clusters() -> None:
    with _lock:
        for cluster in _clusters.values():
            with contextlib.suppress(Exception):  # already gone at interpreter exit
                cluster.close()
        _clusters.clear()


def dask_address(orch: OrchestrationConfig, workers: int | None = None, omp_threads: int | None = None) -> str:
    """The scheduler to submit to: orchestration.dask_address, or this process's local cluster."""
    if orch.dask_address:
        _reachable(orch.dask_address)
        return orch.dask_address
    cluster = local_cluster(workers or orch.dask_workers, orch.dask_threads_per_worker, omp_threads)
    return str(cluster.scheduler_address)


def _reachable(address: str, timeout: float = 20.0) -> None:
    """One line naming orchestration.dask_address when no scheduler answers there (instead of a deep traceback)."""
    from distributed import Client

    from pipelines.errors import ServiceError, first_line

    try:
        Client(address, timeout=timeout, set_as_default=False).close()
    except (OSError, TimeoutError, ValueError) as exc:
        raise ServiceError(
            f"orchestration.dask_address={address}: no Dask scheduler answers ({first_line(exc, 200)}); start one "
            "(`dask scheduler` + `dask worker ADDRESS`) or leave the setting empty for a local cluster"
        ) from None


def task_runner(orch: OrchestrationConfig, workers: int | None = None, omp_threads: int | None = None) -> Any:
    """Prefect's DaskTaskRunner on that scheduler (the flow connects as a client; the cluster outlives it)."""
    from prefect_dask import DaskTaskRunner

    _quiet()
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "error")
    return DaskTaskRunner(address=dask_address(orch, workers, omp_threads))
