"""afmon and a real Alertmanager: the same fingerprints and group keys, alerts pushed by a
real `afmon serve` that Alertmanager lists, silences and resolves; and the push's schedule,
retries and non-blocking on a local receiver."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from afmon.aggregator.metrics.exporter import IngestMetrics
from afmon.alerts.alertmanager import AlertmanagerPusher, Postable, Target, rfc3339
from afmon.alerts.evaluate import Alert, Status
from afmon.alerts.labelset import fingerprint, group_key, label_set_string
from afmon.alerts.notifiers import webhook_payload
from afmon.collectors import wire
from afmon.collectors.simulator import Poster
from tests.alerts.alertmanager_server import running_alertmanager
from tests.conftest import free_port

T0 = 1_790_000_000.0
TRICKY = 'a"f\\ é\u00a0\x01\t\n ☃ 𝄞'  # quotes, backslash, Unicode, non-printables


def _alert(node: str, status: Status = "firing", at: float = T0, **kw: Any) -> Alert:
    return Alert(
        "AfmonAgentSilent", (("facility", "af"), ("node", node)), status, "critical",
        1200.0, at - 600, fired_at=at, summary=f"Agent on {node} silent",
        description="nothing for 20m 0s", **kw,
    )  # fmt: skip


def _parse(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def _wait(
    what: str, check: Callable[[], Any], timeout: float = 60.0, seen: Callable[[], str] = str
) -> Any:
    """`check()` once it is true; fails after `timeout` naming what was `seen` meanwhile."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if got:
            return got
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s; seen: {seen()}"
        time.sleep(0.2)


class Receiver:
    """A local HTTP receiver recording JSON bodies; answers the statuses given, then 200."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.bodies: list[Any] = []
        self.times: list[float] = []
        self.statuses = list(statuses or [])
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["content-length"])))
                outer.bodies.append(body)
                outer.times.append(time.monotonic())
                self.send_response(outer.statuses.pop(0) if outer.statuses else 200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


# -- identity: computed as Alertmanager computes it ------------------------------------------


def test_fingerprint_known_values() -> None:
    assert fingerprint({}) == "cbf29ce484222325"  # FNV-1a's offset basis: no label at all
    assert fingerprint({"a": "1", "empty": ""}) == fingerprint({"a": "1"})
    assert fingerprint({"a": "1", "b": "2"}) != fingerprint({"a": "12"})  # separated
    assert label_set_string({"b": "x", "a": TRICKY}) == (
        '{a="a\\"f\\\\ é\\u00a0\\x01\\t\\n ☃ 𝄞", b="x"}'
    )


def test_fingerprints_and_group_key_are_alertmanagers(tmp_path: Path, receiver: Receiver) -> None:
    """Alertmanager's own answers: GET /api/v2/alerts' fingerprints, and the groupKey and
    fingerprints of the webhook it sends, equal those afmon computes."""
    label_sets = [
        {"alertname": "AfmonAgentSilent", "severity": "critical", "facility": "af", "node": "n1"},
        {"alertname": "AfmonAgentSilent", "severity": "critical", "facility": "af", "node": "n2"},
        {"alertname": "G", "facility": TRICKY, "zone": "ü", "a_b": "x y", "gpu": "GPU-0:1"},
        {"alertname": "OnlyName"},
    ]
    config = {
        "route": {"receiver": "hook", "group_by": ["alertname", "facility"], "group_wait": "1s"},
        "receivers": [{"name": "hook", "webhook_configs": [{"url": f"{receiver.url}/hook"}]}],
    }
    with running_alertmanager(tmp_path, config) as am:
        ends = rfc3339(time.time() + 600)
        body = [{"labels": ls, "startsAt": rfc3339(T0), "endsAt": ends} for ls in label_sets]
        assert httpx.post(f"{am.url}/api/v2/alerts", json=body, timeout=10).status_code == 200
        listed = am.alerts()
        assert len(listed) == len(label_sets)
        for a in listed:
            assert len(a["fingerprint"]) == 16
            assert a["fingerprint"] == fingerprint(a["labels"]), a["labels"]
        # the webhook of the group (AfmonAgentSilent, af): n1 and n2 together
        group = _wait(
            "Alertmanager's webhook for AfmonAgentSilent",
            lambda: next(
                (
                    b
                    for b in receiver.bodies
                    if len(b["alerts"]) == 2
                    and b["groupLabels"].get("alertname") == "AfmonAgentSilent"
                ),
                None,
            ),  # fmt: skip
            seen=lambda: f"{receiver.bodies!r}; log: {am.log.read_text()[-1500:]}",
        )
        tricky = _wait(
            "Alertmanager's webhook for G",
            lambda: next((b for b in receiver.bodies if b["groupLabels"].get("alertname") == "G"),
                         None),
        )  # fmt: skip
    ours = webhook_payload([_alert("n1"), _alert("n2")])
    assert (
        ours["groupKey"] == group["groupKey"] == '{}:{alertname="AfmonAgentSilent", facility="af"}'
    )
    assert ours["groupLabels"] == group["groupLabels"]
    assert ours["commonLabels"] == group["commonLabels"]
    assert sorted(a["fingerprint"] for a in ours["alerts"]) == sorted(
        a["fingerprint"] for a in group["alerts"]
    )
    assert tricky["groupKey"] == group_key(tricky["groupLabels"])
    assert tricky["groupLabels"]["facility"] == TRICKY


def test_webhook_group_labels_are_those_shared() -> None:
    one = webhook_payload([_alert("n1")], external_url="https://afmon.example.org")
    assert one["groupKey"] == '{}:{alertname="AfmonAgentSilent", facility="af"}'
    assert one["alerts"][0]["generatorURL"] == "https://afmon.example.org/alerts"
    assert one["externalURL"] == "https://afmon.example.org"
    other = Alert("AfmonGpuHoarding", (("facility", "af"),), "firing", "warning", 1.0, T0)
    mixed = webhook_payload([_alert("n1"), other])
    assert mixed["groupLabels"] == {"facility": "af"}
    assert mixed["groupKey"] == '{}:{facility="af"}'


# -- the push's schedule (a recording target: no threads, no network) -------------------------


class _Recorder:
    def __init__(self, url: str) -> None:
        self.url = url
        self.errors = 0
        self.batches: list[list[Postable]] = []

    def enqueue(self, alerts: list[Postable]) -> None:
        self.batches.append(list(alerts))

    def close(self) -> None:
        pass


def test_push_schedule_is_prometheus() -> None:
    pusher = AlertmanagerPusher(["http://am"], "https://afmon.test/alerts", 30, target=_Recorder)
    [rec] = pusher.targets

    def sent(now: float, *state: Alert) -> list[tuple[str, float]]:
        return [(a["labels"]["node"], _parse(a["endsAt"])) for a in pusher.update(state, now)]

    pending = Alert("AfmonAgentSilent", (("node", "p"),), "pending", "critical", 1.0, T0)
    assert sent(T0, pending) == []  # pending alerts are Prometheus' too: never sent
    n1 = _alert("n1")
    assert sent(T0, n1, pending) == [("n1", T0 + 240)]  # 4 x max(30 s, resend 60 s)
    assert rec.batches[0][0] == {
        "labels": {"alertname": "AfmonAgentSilent", "severity": "critical", "facility": "af",
                   "node": "n1"},
        "annotations": {"summary": "Agent on n1 silent", "description": "nothing for 20m 0s"},
        "startsAt": rfc3339(T0),
        "endsAt": rfc3339(T0 + 240),
        "generatorURL": "https://afmon.test/alerts",
    }  # fmt: skip
    assert sent(T0 + 30, n1) == []
    assert sent(T0 + 60, n1) == [("n1", T0 + 300)]  # re-sent: its endsAt moves on
    # resolved: sent at once with endsAt = the resolve time, re-sent while retained
    gone = _alert("n1", "resolved", resolved_at=T0 + 90)
    assert sent(T0 + 90, gone) == [("n1", T0 + 90)]
    assert sent(T0 + 120) == []  # gone from the state: afmon keeps it
    assert sent(T0 + 150) == [("n1", T0 + 90)]
    # a new breach of the same labels fires again at once
    again = _alert("n1", at=T0 + 180)
    assert sent(T0 + 180, again) == [("n1", T0 + 420)]
    assert sent(T0 + 210, again) == []
    gone = _alert("n1", "resolved", at=T0 + 180, resolved_at=T0 + 240)
    assert sent(T0 + 240, gone) == [("n1", T0 + 240)]
    assert sent(T0 + 240 + 900) == [("n1", T0 + 240)]  # last re-send within the retention
    assert sent(T0 + 240 + 960) == []  # retention over: forgotten
    assert len(rec.batches) == 7


# -- the push's delivery: retries, refusals, never blocking ------------------------------------


def _fast(url: str) -> Target:
    return Target(url, httpx.Client(timeout=1), backoff=(0.2, 0.4))


def _counted(registry: CollectorRegistry) -> Callable[[str], Target]:
    """Fast targets that count on `registry`, as the server's /metrics does."""
    instruments = IngestMetrics(registry)
    return lambda url: Target(
        url, httpx.Client(timeout=1), backoff=(0.2, 0.4), counts=instruments.push_counts(url)
    )


def _pushed(registry: CollectorRegistry, url: str) -> tuple[float, float, float]:
    """(sent, dropped, failures) of the push to `url` on `registry`."""
    where = {"alertmanager": url}
    get = registry.get_sample_value
    return (
        get("afmon_alertmanager_alerts_total", {**where, "outcome": "sent"}) or 0.0,
        get("afmon_alertmanager_alerts_total", {**where, "outcome": "dropped"}) or 0.0,
        get("afmon_alertmanager_send_failures_total", where) or 0.0,
    )


def test_push_retries_with_backoff_newest_version_wins() -> None:
    am = Receiver([503, 503])
    registry = CollectorRegistry()
    pusher = AlertmanagerPusher([am.url], "", interval=60, target=_counted(registry))
    try:
        pusher.update([_alert("n1")], T0)
        _wait("first attempt", lambda: am.bodies)
        pusher.update([_alert("n1", "resolved", resolved_at=T0 + 60)], T0 + 60)  # while failing
        _wait("delivery", lambda: len(am.bodies) >= 3 and pusher.targets[0].idle())
        time.sleep(0.5)
        assert pusher.errors == 2 and pusher.targets[0].sent == 1
        assert len(am.bodies) == 3  # two refused (503), one accepted: nothing after it
        assert am.times[2] - am.times[1] >= 0.3  # backed off (0.2 s, then 0.4 s)
        [last] = am.bodies[2]
        assert last["endsAt"] == rfc3339(T0 + 60)  # the resolve, not the stale firing version
        assert _pushed(registry, am.url) == (1.0, 0.0, 2.0)  # as /metrics shows it
    finally:
        pusher.close()
        am.close()


def test_push_drops_what_alertmanager_refuses(caplog: pytest.LogCaptureFixture) -> None:
    am = Receiver([400])
    registry = CollectorRegistry()
    pusher = AlertmanagerPusher([am.url], "", interval=60, target=_counted(registry))
    try:
        pusher.update([_alert("n1")], T0)
        _wait("refusal", lambda: am.bodies and pusher.targets[0].idle())
        time.sleep(0.6)  # more than the backoff: no retry of a refused alert
        assert len(am.bodies) == 1 and pusher.errors == 1 and pusher.targets[0].dropped == 1
        assert "refused 1 alerts: HTTP 400" in caplog.text
        assert _pushed(registry, am.url) == (0.0, 1.0, 1.0)
    finally:
        pusher.close()
        am.close()


def test_push_never_blocks_evaluation(receiver: Receiver) -> None:
    """An Alertmanager that accepts connections but never answers, one that refuses them,
    and a working one: update() returns at once, and the working one gets the alert."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen()
    dead = f"http://127.0.0.1:{free_port()}"
    urls = [f"http://127.0.0.1:{hang.getsockname()[1]}", dead, receiver.url]
    pusher = AlertmanagerPusher(urls, "", interval=60, target=_fast)
    try:
        started = time.monotonic()
        for i in range(5):
            pusher.update([_alert(f"n{i}")], T0 + i)
        assert time.monotonic() - started < 0.5
        _wait("the working Alertmanager", lambda: len(receiver.bodies) >= 1)
        _wait("errors counted", lambda: pusher.targets[0].errors and pusher.targets[1].errors)
        nodes = {f"n{i}" for i in range(5)}
        _wait(
            "all five", lambda: {a["labels"]["node"] for b in receiver.bodies for a in b} == nodes
        )
        assert receiver.bodies[0][0]["labels"]["node"] == "n0"
    finally:
        pusher.close()
        hang.close()


# -- a real afmon serve, a real Alertmanager ---------------------------------------------------

RULES = """
rules:
  - name: AfmonTestAgentSilent
    signal: agent_silence_seconds
    op: ">"
    threshold: 3
    clear: 2
    for: 0s
    severity: warning
    summary: "Agent on {{ $labels.node }} silent"
    description: "The agent on {{ $labels.node }} has delivered nothing for {{ $value }} s."
"""


def _deliver(poster: Poster, facility: str, seq: int) -> None:
    batch = wire.Batch(
        version=wire.WIRE_VERSION, agent_id="agent-n1", facility=facility, node="n1", seq=seq,
        sent_at=time.time(), series=[], events=[],
    )  # fmt: skip
    poster.post(batch)


def test_a_real_server_pushes_to_alertmanager(
    tmp_path: Path, server_factory: Callable[..., Any], receiver: Receiver
) -> None:
    """afmon fires: Alertmanager lists the alert with afmon's labels and fingerprint; a
    silence made in Alertmanager suppresses it; afmon resolves it: Alertmanager drops it.
    A second, unreachable Alertmanager is logged and changes nothing."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    unreachable = f"http://127.0.0.1:{free_port()}"
    with running_alertmanager(tmp_path) as am:
        server = server_factory(
            alert_interval_seconds="0.5",
            alert_rules_file=str(rules),
            alertmanager_urls=json.dumps([unreachable, am.url + "/"]),
            alert_webhook_url=f"{receiver.url}/hook",
            public_url="https://afmon.example.org/",
        )
        poster = Poster(server.url, server.token, httpx.Client(timeout=30))
        _deliver(poster, server.facility, 1)

        def ours() -> list[dict[str, Any]]:
            return [a for a in am.alerts() if a["labels"]["alertname"] == "AfmonTestAgentSilent"]

        [alert] = _wait("the alert in Alertmanager", ours)
        labels = {"alertname": "AfmonTestAgentSilent", "severity": "warning",
                  "facility": server.facility, "node": "n1"}  # fmt: skip
        assert alert["labels"] == labels
        assert alert["fingerprint"] == fingerprint(labels)
        assert alert["status"]["state"] == "active"
        assert alert["generatorURL"] == "https://afmon.example.org/alerts"
        assert alert["annotations"]["summary"] == "Agent on n1 silent"
        assert 200 < _parse(alert["endsAt"]) - time.time() <= 240  # 4 x the resend interval
        [listed] = httpx.get(f"{server.url}/api/v1/alerts", timeout=10).json()
        assert _parse(alert["startsAt"]) == pytest.approx(listed["fired_at"], abs=0.001)
        # the webhook carries the same fingerprint and Alertmanager's group key
        [hook] = _wait("the webhook", lambda: receiver.bodies)
        assert hook["alerts"][0]["fingerprint"] == alert["fingerprint"]
        assert hook["groupKey"] == (
            f'{{}}:{{alertname="AfmonTestAgentSilent", facility="{server.facility}"}}'
        )
        assert hook["alerts"][0]["generatorURL"] == alert["generatorURL"]
        # the push on /metrics: each Alertmanager by its URL, the unreachable one failing
        scraped = {
            (m.name, s.labels.get("alertmanager"), s.labels.get("outcome")): s.value
            for m in text_string_to_metric_families(
                httpx.get(f"{server.url}/metrics", timeout=10).text
            )
            for s in m.samples
            if m.name.startswith("afmon_alertmanager_")
        }
        assert scraped[("afmon_alertmanager_alerts", am.url, "sent")] >= 1
        assert scraped[("afmon_alertmanager_alerts", am.url, "dropped")] == 0
        assert scraped[("afmon_alertmanager_send_failures", am.url, None)] == 0
        assert scraped[("afmon_alertmanager_alerts", unreachable, "sent")] == 0
        assert scraped[("afmon_alertmanager_send_failures", unreachable, None)] >= 1

        now = time.time()
        silence = {
            "matchers": [
                {"name": "alertname", "value": "AfmonTestAgentSilent", "isRegex": False,
                 "isEqual": True},
                {"name": "node", "value": "n1", "isRegex": False, "isEqual": True},
            ],
            "startsAt": rfc3339(now - 1), "endsAt": rfc3339(now + 3600),
            "createdBy": "afmon tests", "comment": "n1 in maintenance",
        }  # fmt: skip
        r = httpx.post(f"{am.url}/api/v2/silences", json=silence, timeout=10)
        assert r.status_code == 200, r.text
        silence_id = r.json()["silenceID"]
        [suppressed] = _wait(
            "the alert suppressed",
            lambda: [a for a in ours() if a["status"]["state"] == "suppressed"],
        )
        assert suppressed["status"]["silencedBy"] == [silence_id]
        assert suppressed["fingerprint"] == alert["fingerprint"]

        seq = [1]

        def delivered_and_gone() -> bool:  # the agent delivers again (and on): afmon resolves
            seq[0] += 1
            _deliver(poster, server.facility, seq[0])
            return not ours()

        _wait("the alert gone from Alertmanager", delivered_and_gone)
        resolved = httpx.get(
            f"{server.url}/api/v1/alerts", params={"status": "resolved"}, timeout=10
        ).json()
        assert [a["rule"] for a in resolved] == ["AfmonTestAgentSilent"]
        assert any(b["status"] == "resolved" for b in receiver.bodies)
        am.alive()
    assert f"alertmanager {unreachable}/api/v2/alerts unreachable" in server.log.read_text()
