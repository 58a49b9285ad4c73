"""Signals from a real database fed through the real ingest path, the alert service on top
of them (store, API), and the periodic job of a real server process notifying a webhook."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query import signals
from afmon.aggregator.query.reads import LOCAL_ADMIN
from afmon.aggregator.store.tsdb import Drainer
from afmon.aggregator.web.app import create_app
from afmon.alerts.rules import load_rules
from afmon.alerts.service import AlertService
from afmon.collectors import wire
from afmon.collectors.simulator import FacilitySimulator, Poster, backfill
from tests.conftest import free_port

END = 1_790_006_400.0


def _series(metric: str, labels: dict[str, str], times: list[float], values: list[float]):
    unit, kind = wire.KNOWN_METRICS.get(metric, ("seconds", "gauge"))
    return wire.Series(metric, unit, kind, labels, times, values)


def _batch(agent: str, node: str, seq: int, series: list, events: list | None = None):
    return wire.Batch(
        version=wire.WIRE_VERSION, agent_id=agent, facility="af", node=node, seq=seq,
        sent_at=END, series=series, events=events or [],
    )  # fmt: skip


def _gpus(t: float) -> list[wire.Series]:
    gpu = {"node": "gpu1"}
    return [
        _series("gpu_utilization_ratio", {**gpu, "gpu": "A"}, [t], [0.0]),
        _series("gpu_utilization_ratio", {**gpu, "gpu": "B"}, [t], [0.9]),
        _series("gpu_held", {**gpu, "gpu": "A", "user": "atlas001"}, [t], [1]),
        _series("gpu_held", {**gpu, "gpu": "B", "user": "atlas001"}, [t], [1]),
        _series("gpu_requests_waiting", gpu, [t], [1]),
    ]


@pytest.fixture
def fed(tmp_path: Path, database_url: str) -> Iterator[tuple[TestClient, list[float]]]:
    """An app (no background alert job) fed with a simulated facility, a GPU node whose
    atlas001 holds two GPUs (one idle) while GPUs are asked for, a growing spool, and
    slow server starts. The clock is a list so that tests can move it."""
    sim = FacilitySimulator(
        facility="af", nodes=2, members_per_vo=2, seed=3, sessions_per_member_day=48
    )
    identity = tmp_path / "identity.toml"
    identity.write_text(sim.identity_toml())
    now = [END]
    settings = ServerSettings(
        database_url=database_url,
        identity_file=identity,
        facility_tokens={"af": "t" * 32},
        alert_interval_seconds=0,
        local_mode=True,
    )
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: now[0]))
    poster = Poster("http://testserver", "t" * 32, client)
    backfill(sim, poster, END - 2 * 3600, END, report=None)
    t = [END - 840 + 60 * i for i in range(15)]
    poster.post(_batch("gpu-agent", "gpu1", 1, [
        *_gpus(END - 60),
        _series("agent_spool_batches", {"node": "gpu1"}, t, [min(i, 5) for i in range(15)]),
    ], [
        wire.Event("spawn", f"s{i}", "cms001", END - 1800 + 60 * i, END - 1800 + 60 * i + 25)
        for i in range(10)
    ]))  # fmt: skip
    yield client, now
    client.close()


def _by_labels(obs: list[signals.Observation]) -> dict[tuple, float]:
    return {o.labels: o.value for o in obs}


def test_signals_from_the_database(fed: tuple[TestClient, list[float]]) -> None:
    client, _now = fed
    engine = client.app.state.services.engine
    fresh = signals.compute(engine, END)
    got = signals.compute(engine, END + 1200)
    assert _by_labels(got["agent_silence_seconds"]) == {
        (("facility", "af"), ("node", n)): 1200.0 for n in ("gpu1", "sim-node001", "sim-node002")
    }
    assert _by_labels(fresh["gpu_idle_held"]) == {
        (("facility", "af"), ("gpu", "A"), ("node", "gpu1")): 1.0,
        (("facility", "af"), ("gpu", "B"), ("node", "gpu1")): 0.0,
    }
    assert _by_labels(fresh["gpu_hoarders"]) == {(("facility", "af"),): 1.0}
    assert got["gpu_idle_held"] == got["gpu_hoarders"] == []  # 20 min old: says nothing now
    # the spool went 0 -> 5 over the last 15 min (seen from END; 20 min later it says nothing)
    assert _by_labels(fresh["agent_spool_growth_batches"]) == {
        (("facility", "af"), ("node", "gpu1")): 5.0
    }
    assert got["agent_spool_growth_batches"] == []
    assert fresh["tsdb_outbox_age_seconds"] == []  # no store configured: the outbox is empty
    # 25 s waits are in the (15, 30] bucket: its bound is the p95; no Dask data: no data
    assert _by_labels(got["time_to_session_p95_seconds"]) == {(("facility", "af"),): 30.0}
    assert got["time_to_first_worker_p95_seconds"] == []
    totals = client.app.state.services.query.usage_totals(
        LOCAL_ADMIN, END - 86400, END + 3600, by=("vo",), resources=("cpu_seconds",)
    )
    share = totals.loc[totals.vo == "unmapped", "amount"].sum() / totals.amount.sum()
    [ratio] = got["unmapped_usage_ratio"]
    assert ratio.labels == (("facility", "af"),) and ratio.value == pytest.approx(share)
    assert 0 < ratio.value < 1


def test_service_fires_stores_and_resolves(fed: tuple[TestClient, list[float]]) -> None:
    client, now = fed
    services = client.app.state.services
    poster = Poster("http://testserver", "t" * 32, client)
    service = AlertService(services.engine, load_rules(), clock=lambda: now[0])
    now[0] = END + 60
    assert service.run_once() == []  # nobody silent for 10 min yet; the rest need their `for`
    assert {a.rule for a in service.state.values()} >= {
        "AfmonTimeToSessionSLO", "AfmonGpuHoarding", "AfmonGpuIdleButHeld"
    }  # fmt: skip
    now[0] = END + 1200
    poster.post(_batch("gpu-agent", "gpu1", 2, _gpus(END + 1190)))  # the GPU node reports
    fired = {(a.rule, a.status) for a in service.run_once()}
    assert ("AfmonAgentSilent", "firing") in fired
    assert ("AfmonTimeToSessionSLO", "firing") in fired  # breached since END + 60
    assert ("AfmonGpuHoarding", "firing") in fired  # breached for 19 min > 15 min
    assert ("AfmonGpuIdleButHeld", "firing") not in fired  # only 19 of 30 min
    r = client.get("/api/v1/alerts")
    assert r.status_code == 200
    listed = {(a["rule"], a["labels"].get("node")) for a in r.json()}
    assert {("AfmonAgentSilent", n) for n in ("sim-node001", "sim-node002")} <= listed
    assert ("AfmonAgentSilent", "gpu1") not in listed
    silent = next(a for a in r.json() if a["rule"] == "AfmonAgentSilent")
    assert silent["status"] == "firing" and silent["facility"] == "af"
    assert silent["description"].endswith("nothing for 20m 0s.")
    assert silent["fired_at"] == END + 1200 and silent["resolved_at"] is None
    # a restarted service picks the state up from the table: nothing fires twice
    again = AlertService(services.engine, load_rules(), clock=lambda: now[0])
    assert again.state == service.state
    now[0] = END + 1260
    assert [a for a in again.run_once() if a.status == "firing"] == []
    # sim-node001's agent delivers again: its silence alert resolves, sim-node002's does not
    poster.post(_batch("agent-n1-again", "sim-node001", 1, []))
    changed = again.run_once()
    assert [(a.rule, a.status, dict(a.labels)["node"]) for a in changed] == [
        ("AfmonAgentSilent", "resolved", "sim-node001")
    ]
    history = client.get("/api/v1/alerts", params={"status": "resolved"}).json()
    assert [(a["rule"], a["labels"]["node"]) for a in history] == [
        ("AfmonAgentSilent", "sim-node001")
    ]
    assert client.get("/api/v1/alerts", params={"status": "nope"}).status_code == 422


def test_outbox_behind_fires_holds_and_resolves(database_url: str) -> None:
    """Batches staged by the real ingest while the store is down age into
    AfmonTsdbOutboxBehind; the real drainer, oldest row first, brings it back."""
    now = [END]
    settings = ServerSettings(
        database_url=database_url,
        facility_tokens={"af": "t" * 32},
        tsdb_url=f"http://127.0.0.1:{free_port()}",  # nothing listens; no drain job runs here
        alert_interval_seconds=0,
        local_mode=True,
    )
    client = TestClient(create_app(settings, with_dashboard=False, clock=lambda: now[0]))
    engine = client.app.state.services.engine
    poster = Poster("http://testserver", "t" * 32, client)

    def post(seq: int) -> None:
        busy = _series("node_cpu_busy_ratio", {"node": "n1"}, [now[0] - 30], [0.5])
        assert poster.post(_batch("agent-1", "n1", seq, [busy]))["status"] == "applied"

    [rule] = [r for r in load_rules() if r.name == "AfmonTsdbOutboxBehind"]
    service = AlertService(engine, [rule], clock=lambda: now[0])
    try:
        post(1)  # staged at END
        now[0] = END + 60
        assert service.run_once() == [] and service.state == {}
        now[0] = END + 700
        assert service.run_once() == []
        [pending] = service.state.values()
        assert (pending.status, pending.labels, pending.value) == ("pending", (), 700.0)
        now[0] = END + 1200
        post(2)  # staged at END + 1200
        now[0] = END + 1300  # over 600 s for 10 min (since END + 700)
        [fired] = service.run_once()
        assert (fired.status, fired.value) == ("firing", 1300.0)
        assert fired.label_dict() == {"alertname": "AfmonTsdbOutboxBehind", "severity": "warning"}
        assert fired.description.startswith(
            "The oldest batch in the time-series outbox has waited 21m 40s"
        )
        [listed] = client.get("/api/v1/alerts").json()
        assert (listed["rule"], listed["facility"], listed["labels"]) == (
            "AfmonTsdbOutboxBehind", None, {}
        )  # fmt: skip
        written: list[bytes] = []
        writer = type("W", (), {"write": lambda _self, body: written.append(body)})()
        drainer = Drainer(engine, writer, rows_per_write=1)
        assert drainer.drain_once() == 1  # END's batch: END + 1200's is the oldest now
        now[0] = END + 1400  # 200 s: under the threshold, over `clear`: still firing
        assert service.run_once() == []
        assert [(a.status, a.value) for a in service.state.values()] == [("firing", 200.0)]
        now[0] = END + 1500
        assert drainer.drain_once() == 1 and drainer.pending() == 0
        [resolved] = service.run_once()  # the outbox is empty: no data, resolved
        assert (resolved.rule, resolved.status) == ("AfmonTsdbOutboxBehind", "resolved")
        assert written == [  # oldest first, the samples each batch was staged with
            f"afmon,facility=af,node=n1 node_cpu_busy_ratio=0.5 {round(t * 1000)}".encode()
            for t in (END - 30, END + 1170)
        ]
    finally:
        client.close()


class _Receiver:
    def __init__(self) -> None:
        self.payloads: list[dict[str, Any]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                outer.payloads.append(
                    json.loads(self.rfile.read(int(self.headers["content-length"])))
                )
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_a_real_server_notifies_rejected_batches(server_factory: Callable[..., Any]) -> None:
    receiver = _Receiver()
    try:
        server = server_factory(alert_interval_seconds="0.5", alert_webhook_url=receiver.url)
        bad = httpx.post(
            f"{server.url}/api/v1/ingest",
            content=b'{"version": 1}',
            headers={"Authorization": f"Bearer {server.token}"},
            timeout=10,
        )
        assert bad.status_code == 422
        deadline = time.monotonic() + 20
        while not receiver.payloads and time.monotonic() < deadline:
            time.sleep(0.1)
        assert receiver.payloads, "no webhook within 20 s"
        [alert] = receiver.payloads[0]["alerts"]
        assert alert["labels"] == {
            "alertname": "AfmonIngestRejections",
            "severity": "warning",
            "facility": server.facility,
        }
        assert alert["annotations"]["description"].startswith("1 batches were refused")
        listed = httpx.get(f"{server.url}/api/v1/alerts", timeout=10).json()
        assert [a["rule"] for a in listed] == ["AfmonIngestRejections"]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()
