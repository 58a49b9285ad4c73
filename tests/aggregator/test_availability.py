"""Service availability (docs/availability.md) against a real Dask scheduler and a real
xrootd that are stopped and started: the agent's service probe checks them over TCP (and
afmon's own /healthz over HTTP) into a real `afmon serve`; the down time afmon reports equals
the outage the test saw within a poll interval, and a planned downtime declared with
`afmon downtime add` turns it into planned down time."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from afmon.aggregator.query.availability import coverage, intersect, subtract, union
from afmon.collectors import wire
from afmon.collectors.probes.services import ServiceCheck, ServiceProbe
from afmon.collectors.simulator import Poster
from tests.conftest import ServerProcess, free_port

POLL = 0.5


def _scheduler(port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
             "--port", str(port), "--dashboard-address", ":0", "--no-show"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _xrootd(port: int, base: Path) -> subprocess.Popen[bytes]:
    """A real xrootd (Debian's xrootd-server) on 127.0.0.1:`port`, as user xrootd when root."""
    (base / "data").mkdir(exist_ok=True)
    for d in (base, base / "data"):
        d.chmod(0o777)
    cfg = base / "xrootd.cfg"
    cfg.write_text(
        f"all.export /\noss.localroot {base / 'data'}\nxrd.port {port}\n"
        f"all.adminpath {base}\nall.pidpath {base}\n"
    )
    user = ["-R", "xrootd"] if os.geteuid() == 0 else []
    with (base / "out.log").open("ab") as out:
        return subprocess.Popen(
            ["xrootd", "-c", str(cfg), "-l", str(base / "xrootd.log"), *user, "-n", "avail"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip


def _answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return True
    except OSError:
        return False


def _until(what: str, check: Callable[[], bool], timeout: float = 60.0) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.05)
    return time.time()


def test_stopped_services_are_down_as_long_as_they_were(
    server_factory: Callable[..., ServerProcess], tmp_path: Path
) -> None:
    """A Dask scheduler, then an xrootd, each stopped and started again."""
    server = server_factory(dashboard="false")
    port, xport = free_port(), free_port()
    sched = _scheduler(port, tmp_path / "scheduler.log")
    # xrootd runs as user xrootd (as root): its files not under pytest's private tmp dirs
    xbase = Path(tempfile.mkdtemp(prefix="afmon-availability-xrootd-"))
    xrd = _xrootd(xport, xbase)
    probe = ServiceProbe("sched-node", [
        ServiceCheck(service="dask-scheduler", tcp=f"127.0.0.1:{port}"),
        ServiceCheck(service="xrootd", tcp=f"127.0.0.1:{xport}"),
        ServiceCheck(service="afmon", url=f"{server.url}/healthz"),
    ], timeout=1.0)  # fmt: skip
    poster = Poster(server.url, server.token)
    seq = [0]
    times: list[float] = []

    def collect_for(seconds: float) -> None:
        end = time.time() + seconds
        while time.time() < end:
            now = time.time()
            out = probe.collect(now)
            seq[0] += 1
            poster.post(wire.Batch(
                version=wire.WIRE_VERSION, agent_id="service-agent", facility=server.facility,
                node="sched-node", seq=seq[0], sent_at=now, series=out.series,
            ))  # fmt: skip
            times.append(now)
            time.sleep(max(0.0, POLL - (time.time() - now)))

    try:
        _until("the scheduler", lambda: _answers(port))
        _until("xrootd", lambda: _answers(xport))
        collect_for(3)
        stopped = time.time()
        sched.terminate()
        sched.wait(30)
        collect_for(4)
        sched = _scheduler(port, tmp_path / "scheduler.log")
        back = _until("the scheduler again", lambda: _answers(port))
        collect_for(2)
        x_stopped = time.time()
        xrd.terminate()
        xrd.wait(30)
        collect_for(3)
        xrd = _xrootd(xport, xbase)
        x_back = _until("xrootd again", lambda: _answers(xport))
        collect_for(2)
    finally:
        for proc in (sched, xrd):
            proc.terminate()
            proc.wait(30)
        shutil.rmtree(xbase, ignore_errors=True)
    outage = back - stopped
    slack = max(b - a for a, b in zip(times, times[1:], strict=False))  # the longest poll gap
    params = {"start": times[0] - 60, "end": times[-1] + 60}
    answer = httpx.get(f"{server.url}/api/v1/availability", params=params, timeout=10).json()
    rows = {r["service"]: r for r in answer["services"]}
    dask = rows["dask-scheduler"]
    assert dask["down_seconds"] == pytest.approx(outage, abs=slack), (outage, slack)
    assert dask["planned_down_seconds"] == 0
    total = dask["up_seconds"] + dask["down_seconds"]
    assert dask["availability"] == pytest.approx(dask["up_seconds"] / total)
    assert rows["afmon"]["down_seconds"] == 0 and rows["afmon"]["availability"] == 1.0
    xrootd = rows["xrootd"]
    assert xrootd["down_seconds"] == pytest.approx(x_back - x_stopped, abs=slack)
    [x_down] = [d for d in answer["downtimes"] if d["service"] == "xrootd"]
    assert x_down["start"] == pytest.approx(x_stopped, abs=slack)
    [down] = [d for d in answer["downtimes"] if d["service"] == "dask-scheduler"]
    assert down["start"] == pytest.approx(stopped, abs=slack)
    assert down["end"] == pytest.approx(back, abs=slack)

    # the outage declared as planned (`afmon downtime add`): all of it planned
    cli = [sys.executable, "-m", "afmon.aggregator.cli", "downtime"]
    added = subprocess.run(
        [*cli, "add", "--facility", server.facility, "--service", "dask-scheduler",
         "--start", str(stopped - 5), "--end", str(back + 5), "--reason", "upgrade"],
        env=server.env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    listed = subprocess.run([*cli, "list"], env=server.env, capture_output=True, text=True)
    assert "#1 " in listed.stdout and "dask-scheduler" in listed.stdout
    assert "(upgrade)" in listed.stdout
    answer = httpx.get(f"{server.url}/api/v1/availability", params=params, timeout=10).json()
    dask = {r["service"]: r for r in answer["services"]}["dask-scheduler"]
    assert dask["planned_down_seconds"] == pytest.approx(dask["down_seconds"])
    assert dask["unplanned_availability"] == 1.0
    per_day = httpx.get(
        f"{server.url}/api/v1/availability", params={**params, "per": "day"}, timeout=10
    ).json()
    days = [r for r in per_day["services"] if r["service"] == "dask-scheduler"]
    assert sum(r["down_seconds"] for r in days) == pytest.approx(dask["down_seconds"])
    bad = subprocess.run([*cli, "add", "--facility", "f", "--service", "s", "--start",
                          "yesterday", "--end", "1"], env=server.env, capture_output=True,
                         text=True)  # fmt: skip
    assert bad.returncode == 2 and "is not a time" in bad.stderr


def test_interval_rules() -> None:
    assert union([(0, 2), (1, 3), (5, 6)]) == [(0, 3), (5, 6)]
    assert subtract([(0, 10)], [(2, 3), (5, 7)]) == [(0, 2), (3, 5), (7, 10)]
    assert intersect([(0, 4), (6, 9)], [(3, 7)]) == [(3, 4), (6, 7)]
    # a sample speaks until the next within the gap, else for one usual step
    up, down = coverage([(0, 1), (10, 1), (20, 0), (30, 1), (1000, 1)], max_gap=600)
    assert up == [(0, 10), (10, 20), (30, 40), (1000, 1010)] and down == [(20, 30)]


def test_a_check_needs_one_target() -> None:
    with pytest.raises(ValueError, match="either url or tcp"):
        ServiceCheck(service="hub")
    with pytest.raises(ValueError, match="http:// or https://"):
        ServiceCheck(service="hub", url="ftp://x")
    probe = ServiceProbe("n", [ServiceCheck(service="closed", tcp=f"127.0.0.1:{free_port()}")],
                         timeout=0.5)  # fmt: skip
    [up, took] = probe.collect(1_790_000_000.0).series
    assert (up.metric, up.values, up.labels) == (
        "service_up",
        [0.0],
        {"service": "closed", "node": "n"},
    )
    assert took.metric == "service_check_seconds" and 0 <= took.values[0] < 5
