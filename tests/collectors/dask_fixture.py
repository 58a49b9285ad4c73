"""A real Dask LocalCluster with process workers, tracked by afmon's scheduler plugin that
posts to a real afmon server (shared by the fixed-scale and the adaptive tests)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ServerProcess


@contextmanager
def tracked_cluster(
    server: ServerProcess, tmp_path: Path, profile: str
) -> Iterator[tuple[Any, Any, Any]]:
    """(cluster, client, plugin): no workers yet; scale requests reach the plugin."""
    try:
        from distributed import Client, LocalCluster
    except ImportError as exc:
        pytest.fail(f"dask and distributed are needed (the [dask] extra): {exc}")
    from afmon.collectors.probes.dask_plugin import AfmonSchedulerPlugin, track_cluster

    settings = {
        "server_url": server.url,
        "token": server.token,
        "facility": server.facility,
        "node": "dask-sched",
        "spool_dir": str(tmp_path / "spool"),
    }
    with (
        LocalCluster(
            n_workers=0, processes=True, threads_per_worker=1, memory_limit="400MiB",
            host="127.0.0.1", dashboard_address=":0",
        ) as cluster,
        Client(cluster) as client,
    ):  # fmt: skip
        client.register_plugin(
            AfmonSchedulerPlugin(owner="alice", profile=profile, settings=settings, interval=0.5)
        )
        plugin = cluster.scheduler.plugins["afmon"]
        track_cluster(cluster, plugin)
        yield cluster, client, plugin


def wait_workers(scheduler: Any, n: int, exact: bool = True, timeout: float = 60.0) -> None:
    """Wait until the scheduler has `n` workers (`exact`) or at least `n`."""
    deadline = time.monotonic() + timeout
    while (len(scheduler.workers) != n) if exact else (len(scheduler.workers) < n):
        assert time.monotonic() < deadline, f"the cluster did not reach {n} workers"
        time.sleep(0.02)
