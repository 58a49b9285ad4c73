"""The dask-gateway probe against a real `dask-gateway-server` (UnsafeLocalBackend: schedulers
run as local processes, SimpleAuthenticator, its Go proxy, 127.0.0.1 and free ports): each
cluster's start and stop are the gateway's own (milliseconds), a cluster that fails is a
`failed` one, each state change is one event and nothing repeats, the owner is the user the
probe asked as, and the events land in the ledger. A gateway restart that forgets an open
cluster ends it as `gone`."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.web.app import create_app
from afmon.collectors import wire
from afmon.collectors.probes.base import READY
from afmon.collectors.probes.dask_gateway import DaskGatewayProbe, epoch_of_ms
from afmon.collectors.probes.registry import build_probes
from afmon.collectors.settings import AgentSettings
from tests.conftest import free_port

PASSWORD = "afmon-gateway-password"
ALL = "PENDING,RUNNING,STOPPING,STOPPED,FAILED"
IDENTITY = """
[vos.atlas]
issuer = "https://atlas-auth.example/"

[[members]]
vo = "atlas"
subject = "alice-sub"
display_name = "Alice"
accounts = [{ facility = "af", local = "alice" }]

[[members]]
vo = "atlas"
subject = "bob-sub"
display_name = "Bob"
accounts = [{ facility = "af", local = "bob" }]
"""

CONFIG = """
import sys
from dask_gateway_server.options import Bool, Options, String

c.DaskGateway.address = "127.0.0.1:{api_port}"
c.Proxy.address = "127.0.0.1:{http_port}"
c.Proxy.tcp_address = "127.0.0.1:{tcp_port}"
c.DaskGateway.backend_class = "dask_gateway_server.backends.local.UnsafeLocalBackend"
c.DaskGateway.authenticator_class = "dask_gateway_server.auth.SimpleAuthenticator"
c.SimpleAuthenticator.password = {password!r}
c.LocalBackend.clusters_directory = "{work}/clusters"
c.DBBackendBase.cluster_status_period = 0.5
c.ClusterConfig.scheduler_cmd = [sys.executable, "-m", "distributed.cli.dask_scheduler"]
c.ClusterConfig.worker_cmd = [sys.executable, "-m", "distributed.cli.dask_worker"]

def _handler(options):  # option fail=True: a scheduler that exits at once, a real FAILED
    return {{"scheduler_cmd": ["/bin/false"]}} if options.fail else {{}}

c.Backend.cluster_options = Options(
    String("profile", default="small"), Bool("fail", default=False), handler=_handler
)
"""


@dataclass
class Gateway:
    url: str
    work: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        exe = Path(sys.executable).parent / "dask-gateway-server"
        with (self.work / "gateway.log").open("ab") as log:
            self.proc = subprocess.Popen(
                [str(exe), "-f", str(self.work / "config.py")],
                cwd=self.work,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                pytest.fail(f"dask-gateway-server exited: {self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/api/health", timeout=2).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"dask-gateway-server did not answer: {self.log()[-3000:]}")
            time.sleep(0.1)

    def stop(self) -> None:
        """SIGTERM (the gateway stops its clusters and proxy), then its process group."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def log(self) -> str:
        return (self.work / "gateway.log").read_text(errors="replace")

    def api(self, user: str, method: str, path: str, **kw: Any) -> httpx.Response:
        return httpx.request(
            method, f"{self.url}/api/v1{path}", auth=(user, PASSWORD), timeout=10, **kw
        )

    def create(self, user: str, **options: Any) -> str:
        r = self.api(user, "POST", "/clusters/", json={"cluster_options": options})
        assert r.status_code == 201, r.text
        return str(r.json()["name"])

    def wait(self, user: str, name: str, statuses: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            model = self.api(user, "GET", f"/clusters/{name}").json()
            if model.get("status") in statuses:
                return model
            time.sleep(0.1)
        raise AssertionError(f"cluster {name} never {statuses}: {self.log()[-3000:]}")


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    if shutil.which("dask-gateway-server", path=str(Path(sys.executable).parent)) is None:
        pytest.fail(
            "dask-gateway-server is not installed in this environment (pip install "
            "'dask-gateway-server[local]' dask-gateway, or the [test] extra)"
        )
    work = tmp_path_factory.mktemp("gateway")
    http_port = free_port()
    (work / "config.py").write_text(
        textwrap.dedent(
            CONFIG.format(
                api_port=free_port(),
                http_port=http_port,
                tcp_port=free_port(),
                password=PASSWORD,
                work=work,
            )
        )
    )
    gw = Gateway(f"http://127.0.0.1:{http_port}", work)
    try:
        gw.start()
        yield gw
    finally:
        gw.stop()


def test_clusters_from_the_gateway_api(gateway: Gateway, tmp_path: Path) -> None:
    # the probe as the agent builds it from its settings: basic auth as alice and bob
    settings = AgentSettings(
        dask_gateway_url=gateway.url + "/",
        dask_gateway_token=PASSWORD,
        dask_gateway_auth="basic",
        dask_gateway_users='["alice", "bob"]',  # as the flag gives it
        dask_gateway_poll_seconds=0,
        gpu_enabled=False,
    )
    (probe,) = [p for p in build_probes(settings, None) if isinstance(p, DaskGatewayProbe)]
    assert probe.state == READY
    ns = gateway.url.removeprefix("http://")
    assert probe.collect(time.time()).events == []

    big = gateway.create("alice", profile="big")
    bad = gateway.create("bob", fail=True)
    running = gateway.wait("alice", big, {"RUNNING"})
    failed = gateway.wait("bob", bad, {"FAILED"})
    events = {e.id: e for e in probe.collect(time.time()).events}
    assert set(events) == {f"{ns}/{big}", f"{ns}/{bad}"}
    e = events[f"{ns}/{big}"]
    assert e.kind == "dask_cluster" and e.user == "alice" and e.end is None
    assert e.start == running["start_time"] / 1000  # the request, from milliseconds
    assert e.attrs["status"] == "RUNNING" and e.attrs["profile"] == "big"
    assert e.attrs["options"] == '{"fail": false, "profile": "big"}'
    e = events[f"{ns}/{bad}"]
    assert e.user == "bob" and e.attrs["outcome"] == "failed" and e.attrs["status"] == "FAILED"
    assert (e.start, e.end) == (failed["start_time"] / 1000, failed["stop_time"] / 1000)
    assert e.attrs["profile"] == "small"  # the gateway's default for the option
    assert probe.collect(time.time()).events == []  # nothing changed: nothing repeats

    r = gateway.api("alice", "DELETE", f"/clusters/{big}")
    assert r.status_code == 204, r.text
    stopped = gateway.wait("alice", big, {"STOPPED"})
    (e,) = probe.collect(time.time()).events
    assert e.id == f"{ns}/{big}" and e.attrs["outcome"] == "ok" and e.attrs["status"] == "STOPPED"
    assert (e.start, e.end) == (stopped["start_time"] / 1000, stopped["stop_time"] / 1000)
    assert e.end is not None and e.end > e.start
    assert probe.collect(time.time()).events == []
    # the gateway still lists both ended clusters; the probe says nothing more of them
    listed = gateway.api("alice", "GET", "/clusters/", params={"status": ALL}).json()
    assert big in listed

    # the events are valid wire events and land in the ledger, once each, per owner
    opened = events[f"{ns}/{big}"]
    (tmp_path / "identity.toml").write_text(IDENTITY)
    settings = ServerSettings(
        database_url=f"sqlite:///{tmp_path}/a.sqlite",
        facility_tokens={"af": "t"},
        identity_file=tmp_path / "identity.toml",
    )
    api = TestClient(create_app(settings, with_dashboard=False))
    for seq, batch_events in enumerate(([opened, events[f"{ns}/{bad}"]], [e], [e])):
        batch = wire.Batch(
            version=1, agent_id="gw-agent", facility="af", node="gw", seq=seq,
            sent_at=time.time(), events=batch_events,
        )  # fmt: skip
        r = api.post(
            "/api/v1/ingest", content=wire.encode(batch), headers={"Authorization": "Bearer t"}
        )
        assert r.status_code == 200, r.text
    q = api.app.state.services.query
    now = time.time()
    totals = q.usage_totals(LOCAL_ADMIN, now - 3600, now + 3600, by=("member",))
    got = {
        (str(m).rsplit("|", 1)[-1], res): amount
        for m, res, amount in zip(
            totals["member"], totals["resource"], totals["amount"], strict=True
        )
    }
    assert got == {
        ("alice-sub", "dask_clusters"): 1.0,
        ("alice-sub", "dask_cluster_seconds"): pytest.approx(
            (stopped["stop_time"] - stopped["start_time"]) / 1000, abs=1e-6
        ),
        ("bob-sub", "dask_clusters"): 1.0,
        ("bob-sub", "dask_cluster_seconds"): pytest.approx(
            (failed["stop_time"] - failed["start_time"]) / 1000, abs=1e-6
        ),
    }


def test_a_cluster_the_gateway_forgets_ends_as_gone(gateway: Gateway) -> None:
    probe = DaskGatewayProbe(gateway.url, PASSWORD, auth="basic", users=["carol"], poll_seconds=0)
    name = gateway.create("carol", profile="medium")
    model = gateway.wait("carol", name, {"RUNNING"})
    (opened,) = probe.collect(time.time()).events
    assert opened.end is None and opened.attrs["status"] == "RUNNING"

    gateway.stop()  # its database is in memory: after a restart it knows no cluster
    assert probe.collect(time.time()).events == []  # the gateway is down: logged, kept
    gateway.start()
    before = time.time()
    (gone,) = probe.collect(time.time()).events
    assert gone.id == opened.id and gone.start == model["start_time"] / 1000
    assert gone.attrs["outcome"] == "gone" and gone.attrs["status"] == "GONE"
    assert gone.attrs["profile"] == "medium"
    assert gone.end is not None and before <= gone.end <= time.time()
    assert probe.collect(time.time()).events == []


def test_probe_configuration_errors_name_the_setting() -> None:
    def state(**kw: Any) -> str:
        return DaskGatewayProbe("http://gw:8000", **{"token": "t", **kw}).state

    assert state(users=["alice"]) == READY
    assert "AFMON_DASK_GATEWAY_TOKEN" in state(token=None, users=["alice"])
    assert "AFMON_DASK_GATEWAY_USERS" in state()
    assert "one user, not 2" in state(users=["alice", "bob"])
    assert state(auth="basic", users=["alice", "bob"]) == READY
    assert "AFMON_DASK_GATEWAY_AUTH" in state(auth="kerberos", users=["alice"])
    assert epoch_of_ms(1_795_638_943_073, "t") == 1_795_638_943.073
    with pytest.raises(ValueError, match="milliseconds"):
        epoch_of_ms("soon", "start_time")


def test_a_cluster_model_not_as_documented_is_skipped_and_named(
    caplog: pytest.LogCaptureFixture,
) -> None:
    probe = DaskGatewayProbe("http://gw:8000", "t", users=["alice"])
    events: list[wire.Event] = []
    good = {"name": "c1", "status": "STOPPED", "start_time": 1_000_500, "stop_time": 1_002_000}
    for model in (
        {"name": "c0", "status": "SLEEPING", "start_time": 1},
        {"name": "c2", "status": "RUNNING", "start_time": "yesterday"},
        {"name": "c3", "status": "RUNNING"},
        good,
    ):
        probe._see("alice", model, 5.0, events)
    assert [(e.id, e.start, e.end, e.attrs["profile"]) for e in events] == [
        ("gw:8000/c1", 1000.5, 1002.0, "default")
    ]
    text = caplog.text
    assert "'c0': cluster c0: unknown status 'SLEEPING'" in text
    assert "'c2': cluster c2: start_time must be milliseconds" in text
    assert "'c3': cluster c3: no start_time" in text


def test_headers_per_scheme() -> None:
    """The Authorization header each token scheme sends (read from an httpx request hook;
    nothing listens on 127.0.0.1:9, so each poll fails, is logged and emits nothing)."""
    sent: list[str] = []
    client = httpx.Client(
        event_hooks={"request": [lambda r: sent.append(r.headers["authorization"])]}
    )
    for auth, want in (
        ("jupyterhub", "jupyterhub tok"), ("token", "token tok"), ("bearer", "Bearer tok"),
    ):  # fmt: skip
        probe = DaskGatewayProbe(
            "http://127.0.0.1:9", "tok", auth=auth, users=["u"], client=client, poll_seconds=0
        )
        probe.collect(time.time())  # nothing listens on port 9: logged, no events
        assert sent[-1] == want
