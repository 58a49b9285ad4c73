"""afmon's own evaluator and its exported rules in a real Prometheus agree on the same data:
the same alerts fire with the same values (GPU idle-but-held and hoarding included), the first
refused batch included (the ingest
counters exist at 0 before it, so increase() sees it) and a latency SLO whose ledger totals
also hold backfilled data from hours ago (which rate() over totals would count now)."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from afmon.alerts.export import export_prometheus, exportable
from afmon.alerts.rules import load_rules
from afmon.collectors import wire
from afmon.collectors.simulator import Poster
from tests.prometheus_server import running_prometheus

Firing = dict[tuple[str, str], float]  # (alertname, facility) -> value


def _rules_without_for(tmp_path: Path) -> tuple[Path, Path]:
    """The packaged rules with `for: 0s` (so that a test need not wait 10 min), as afmon's
    rule file and as the Prometheus rule file exported from it."""
    rules = [r.model_copy(update={"for_": "0s"}) for r in load_rules()]
    afmon = tmp_path / "rules.yaml"
    afmon.write_text(
        yaml.safe_dump({"rules": [r.model_dump(by_alias=True, exclude_none=True) for r in rules]})
    )
    prom = tmp_path / "prometheus-rules.yml"
    prom.write_text(export_prometheus(load_rules(afmon), interval="1s"))
    return afmon, prom


def _batch(facility: str, now: float, seq: int, version: int = wire.WIRE_VERSION) -> wire.Batch:
    """A node's capacity, a 60 s server start and a 600 s scale-up now, and, backfilled, a
    fast scale-up of five hours ago; a member holding two GPUs, one of them idle, while a GPU
    request waits."""

    t = [now - 30]
    gpus = [
        wire.Series("gpu_utilization_ratio", "ratio", "gauge", {"node": "n1", "gpu": g}, t, [u])
        for g, u in (("A", 0.0), ("B", 0.9))
    ] + [
        wire.Series("gpu_held", "1", "gauge", {"node": "n1", "gpu": g, "user": "atlas001"}, t,
                    [1.0])
        for g in ("A", "B")
    ] + [wire.Series("gpu_requests_waiting", "1", "gauge", {"node": "n1"}, t, [1.0])]  # fmt: skip
    cores = wire.Series("node_cpu_cores", "cores", "gauge", {"node": "n1"}, t, [8.0])
    return wire.Batch(
        version=version,
        agent_id="agent-n1",
        facility=facility,
        node="n1",
        seq=seq,
        sent_at=now,
        series=[cores, *gpus],
        events=[
            wire.Event("spawn", "spawn-1", "atlas001", now - 300, now - 240),
            wire.Event("dask_scale", "c1/up-1", "atlas001", now - 700, now - 100,
                       attrs={"reason": "scale", "target": 4, "from": 1}),
            wire.Event("dask_scale", "c0/up-1", "atlas001", now - 5 * 3600, now - 5 * 3600 + 20,
                       attrs={"reason": "scale", "target": 4, "from": 1}),
        ],
    )  # fmt: skip


def _prometheus_query(url: str, expr: str) -> list[dict[str, Any]]:
    try:
        body = httpx.get(f"{url}/api/v1/query", params={"query": expr}, timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return []
    return body["data"]["result"] if body.get("status") == "success" else []


def _prometheus_firing(url: str) -> Firing:
    try:
        body = httpx.get(f"{url}/api/v1/alerts", timeout=10).json()
    except (httpx.HTTPError, ValueError):
        return {}
    return {
        (a["labels"]["alertname"], a["labels"].get("facility", "")): float(a["value"])
        for a in body.get("data", {}).get("alerts", [])
        if a["state"] == "firing"
    }


def _afmon_firing(url: str, names: set[str]) -> Firing:
    r = httpx.get(f"{url}/api/v1/alerts", timeout=10)  # local mode: the admin's view
    assert r.status_code == 200, r.text
    return {
        (a["rule"], a["labels"].get("facility", "")): float(a["value"])
        for a in r.json()
        if a["rule"] in names
    }


def test_afmon_and_prometheus_fire_the_same_alerts(
    tmp_path: Path, server_factory: Callable[..., Any]
) -> None:
    afmon_rules, prom_rules = _rules_without_for(tmp_path)
    names = {r.name for r in exportable(load_rules(afmon_rules))}
    server = server_factory(alert_rules_file=str(afmon_rules), alert_interval_seconds="1")
    poster = Poster(server.url, server.token)
    facility = server.facility
    poster.post(_batch(facility, time.time(), seq=1))  # the agent delivers: its facility is known
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(prom_rules)],
        "scrape_configs": [
            {"job_name": "afmon", "static_configs": [{"targets": [server.url[7:]]}]}
        ],
    }
    with running_prometheus(tmp_path, config) as prom:
        # before any refusal, Prometheus has scraped the refused-batch counter at 0
        zero = (
            f'count_over_time(afmon_ingest_batches_total{{facility="{facility}", '
            f'outcome="rejected"}}[1m]) >= 6 and afmon_ingest_batches_total == 0'
        )
        deadline = time.monotonic() + 90
        while not _prometheus_query(prom.url, zero):
            prom.alive()
            assert time.monotonic() < deadline, "the rejected counter never showed 0"
            time.sleep(0.5)

        bad = wire.encode(_batch(facility, time.time(), seq=2, version=999), compress=True)
        r = httpx.post(
            f"{server.url}/api/v1/ingest",
            content=bad,
            headers={
                "Authorization": f"Bearer {server.token}",
                "Content-Type": wire.CONTENT_TYPE,
                "Content-Encoding": "gzip",
            },
            timeout=10,
        )
        assert r.status_code == 422, r.text  # rejected: a wire version the server refuses

        expected = {
            ("AfmonIngestRejections", facility),
            ("AfmonTimeToScaleUpSLO", facility),
            ("AfmonTimeToSessionSLO", facility),
            ("AfmonGpuIdleButHeld", facility),
            ("AfmonGpuHoarding", facility),
        }
        deadline = time.monotonic() + 60
        ours: Firing = {}
        theirs: Firing = {}
        while time.monotonic() < deadline:
            prom.alive()
            ours, theirs = _afmon_firing(server.url, names), _prometheus_firing(prom.url)
            if set(ours) == set(theirs) == expected:
                break
            time.sleep(0.5)
        else:
            pytest.fail(f"afmon fires {sorted(ours)}, Prometheus {sorted(theirs)}")

    # the same values: the latency signals exactly (afmon's p95, the backfilled fast
    # scale-up of five hours ago outside both); the refused batches are one in afmon, and in
    # Prometheus increase() extrapolates to the ends of its window: up to half a scrape
    # interval before the first sample (6 s or more before the refusal here) and one after
    # the last, so at most (6 + 1.5) / 6 of it
    for key in (
        ("AfmonTimeToScaleUpSLO", facility),
        ("AfmonTimeToSessionSLO", facility),
        ("AfmonGpuIdleButHeld", facility),
        ("AfmonGpuHoarding", facility),
    ):
        assert ours[key] == theirs[key], key
    assert ours[("AfmonGpuHoarding", facility)] == 1.0  # atlas001, two GPUs, one waiting
    assert ours[("AfmonTimeToScaleUpSLO", facility)] == 600.0
    assert ours[("AfmonTimeToSessionSLO", facility)] == 60.0
    rejected = ("AfmonIngestRejections", facility)
    assert ours[rejected] == 1.0
    assert 1.0 <= theirs[rejected] <= 1.25
