"""Writes grafana/dashboards/*.json: afmon's Grafana dashboards, built from one description.

    python grafana/make_dashboards.py      # rewrites the JSON files next to this script

Every panel has a unit, a description and PromQL on catalog metrics only
(aggregator/metrics/catalog.py); every dashboard has the template variables
`datasource`, `facility` and `vo`. tests/grafana checks the files against this
script, against the catalog and against a real Prometheus scraping afmon.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DS = {"type": "prometheus", "uid": "${datasource}"}
F = 'facility=~"$facility"'
FV = 'facility=~"$facility", vo=~"$vo"'
UNMAPPED = f'vo="unmapped", {F}'
RI = "[$__rate_interval]"
# Grafana unit ids: `s` and `h` are durations, `bytes` IEC sizes; a quantity Grafana has no
# unit for gets a custom one, `si:<symbol>` (SI prefixes: kB·s, MB·s, ...).
BYTE_SECONDS = "si:B·s"
HS23_SECONDS = "si:HS23·s"
SCHEMA_VERSION = 39

# (title, panel type, unit, description, [(expr, legend)])
Panel = tuple[str, str, str, str, list[tuple[str, str]]]

DASHBOARDS: dict[str, tuple[str, str, list[Panel]]] = {
    "afmon-facility": (
        "afmon / Facility overview",
        "Capacity, load, agent liveness and ingest health of the facilities afmon watches.",
        [
            (
                "CPU cores",
                "stat",
                "short",
                "CPU cores reported by the node agents, per facility.",
                [(f"sum by (facility) (afmon_node_cpu_cores{{{F}}})", "{{facility}}")],
            ),
            (
                "Memory",
                "stat",
                "bytes",
                "Memory of the nodes, per facility.",
                [(f"sum by (facility) (afmon_node_memory_bytes{{{F}}})", "{{facility}}")],
            ),
            (
                "Node CPU busy",
                "timeseries",
                "percentunit",
                "Busy share of each node's CPUs (0..1), as its agent last reported.",
                [(f"afmon_node_cpu_busy_ratio{{{F}}}", "{{node}}")],
            ),
            (
                "CPU used per VO",
                "timeseries",
                "short",
                "CPU time used per second (= cores busy), per VO, from the ledger.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_cpu_seconds_total{{{FV}}}{RI}))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "Time since each agent delivered",
                "table",
                "s",
                "Seconds since each node's agent last delivered a batch; over 600 s the "
                "AfmonAgentSilent alert fires.",
                [(f"time() - afmon_agent_last_seen_timestamp_seconds{{{F}}}", "{{node}}")],
            ),
            (
                "Agent spool",
                "timeseries",
                "short",
                "Batches waiting in each agent's spool: growing means the agent cannot deliver.",
                [(f"afmon_agent_spool_batches{{{F}}}", "{{node}}")],
            ),
            (
                "Time-series store backlog",
                "timeseries",
                "short",
                "Ingested batches (and their raw samples) waiting in the outbox for the "
                "time-series store (AFMON_TSDB_URL); growing means the store is slow or down. "
                "Server-wide, not per facility.",
                [
                    ("max(afmon_tsdb_outbox_batches)", "batches"),
                    ("max(afmon_tsdb_outbox_samples)", "samples"),
                ],
            ),
            (
                "Ingest batches by outcome",
                "timeseries",
                "reqps",
                "Batches received per second by outcome; other than applied/duplicate is refused.",
                [
                    (
                        f"sum by (outcome) (rate(afmon_ingest_batches_total{{{F}}}{RI}))",
                        "{{outcome}}",
                    )
                ],
            ),
            (
                "Samples ingested",
                "timeseries",
                "short",
                "Samples applied per second, per facility.",
                [
                    (
                        f"sum by (facility) (rate(afmon_ingest_samples_total{{{F}}}{RI}))",
                        "{{facility}}",
                    )
                ],
            ),
            (
                "Ingest latency p95",
                "timeseries",
                "s",
                "95th percentile of the time to decode and apply one batch (all facilities).",
                [
                    (
                        "histogram_quantile(0.95, sum by (le) "
                        "(rate(afmon_ingest_duration_seconds_bucket[$__rate_interval])))",
                        "p95",
                    )
                ],
            ),
        ],
    ),
    "afmon-interactive": (
        "afmon / Interactive SLOs",
        "Interactive analysis against the seed's targets: time-to-session O(seconds), "
        "time-to-first-worker O(1 minute), time-to-scale-up O(few minutes).",
        [
            (
                "Active sessions per VO",
                "timeseries",
                "short",
                "Interactive sessions started and not yet ended.",
                [
                    (  # 0 for a VO with sessions, none open now
                        f"sum by (vo) (afmon_sessions_active{{{FV}}}) "
                        f"or 0 * sum by (vo) (afmon_usage_sessions_total{{{FV}}})",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "Session time per VO",
                "timeseries",
                "short",
                "Interactive session time accounted per second, per VO (= sessions open).",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_session_seconds_total{{{FV}}}"
                        "[$__rate_interval]))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "Time-to-session p95 (all time)",
                "stat",
                "s",
                "95th percentile of request -> server ready and routed; SLO 10 s.",
                [
                    (
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(afmon_time_to_session_seconds_bucket{{{FV}}}))",
                        "p95",
                    )
                ],
            ),
            (
                "Time-to-session p95 over time",
                "timeseries",
                "s",
                "95th percentile of time-to-session over the rate interval; SLO 10 s.",
                [
                    (
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(rate(afmon_time_to_session_seconds_bucket{{{FV}}}{RI})))",
                        "p95",
                    )
                ],
            ),
            (
                "Time-to-first-worker p95 (all time)",
                "stat",
                "s",
                "95th percentile of Dask cluster requested -> first worker joined; SLO 60 s.",
                [
                    (
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(afmon_time_to_first_worker_seconds_bucket{{{FV}}}))",
                        "p95",
                    )
                ],
            ),
            (
                "Time-to-scale-up p95 (all time)",
                "stat",
                "s",
                "95th percentile of scale request -> target workers reached; SLO 300 s.",
                [
                    (
                        f"histogram_quantile(0.95, sum by (le) "
                        f"(afmon_time_to_scale_up_seconds_bucket{{{FV}}}))",
                        "p95",
                    )
                ],
            ),
            (
                "Sessions measured per VO",
                "bargauge",
                "short",
                "Server starts whose time-to-session was measured, per VO.",
                [
                    (
                        f"sum by (vo) (afmon_time_to_session_seconds_count{{{FV}}}) "
                        f"or 0 * sum by (vo) (afmon_usage_sessions_total{{{FV}}})",
                        "{{vo}}",
                    )
                ],
            ),
        ],
    ),
    "afmon-gpus": (
        "afmon / GPUs",
        "GPU utilisation, GPUs held, idle-but-held GPUs and GPU time per VO.",
        [
            (
                "GPU utilisation",
                "timeseries",
                "percentunit",
                "Busy share of each GPU or MIG unit (0..1).",
                [(f"afmon_gpu_utilization_ratio{{{F}}}", "{{node}} {{gpu}}")],
            ),
            (
                "GPUs held",
                "stat",
                "short",
                "GPUs (or MIG units) that a process holds now, per facility.",
                [
                    (  # 0 at a facility whose GPUs nobody holds
                        f"sum by (facility) (afmon_gpu_held{{{F}}}) "
                        f"or 0 * sum by (facility) (afmon_gpu_utilization_ratio{{{F}}})",
                        "{{facility}}",
                    )
                ],
            ),
            (
                "Idle but held",
                "table",
                "short",
                "GPUs held by a process while under 5 % busy (1 = idle but held): waste; the "
                "AfmonGpuIdleButHeld alert fires after 30 min of the same signal.",
                [
                    (
                        f"max by (facility, node, gpu) (afmon_signal_gpu_idle_held{{{F}}})",
                        "{{node}} {{gpu}}",
                    )
                ],
            ),
            (
                "GPU allocated per VO",
                "timeseries",
                "short",
                "GPU time held per second (= GPUs held), per VO, from the ledger.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_gpu_allocated_seconds_total{{{FV}}}"
                        "[$__rate_interval]))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "GPU active per VO",
                "timeseries",
                "short",
                "GPU time held x busy ratio per second, per VO: compare with allocated.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_gpu_active_seconds_total{{{FV}}}"
                        "[$__rate_interval]))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "GPU hours per VO",
                "bargauge",
                "h",
                "GPU hours allocated and active per VO, summed over the ledger.",
                [
                    (
                        f"sum by (vo) (afmon_usage_gpu_allocated_seconds_total{{{FV}}}) / 3600",
                        "{{vo}} allocated",
                    ),
                    (
                        f"sum by (vo) (afmon_usage_gpu_active_seconds_total{{{FV}}}) / 3600",
                        "{{vo}} active",
                    ),
                ],
            ),
        ],
    ),
    "afmon-data": (
        "afmon / Data access",
        "Bytes read and written per VO, from the per-user IO counters in the ledger.",
        [
            (
                "Read rate per VO",
                "timeseries",
                "Bps",
                "Bytes read per second (local IO), per VO.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_io_read_bytes_total{{{FV}}}{RI}))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "Write rate per VO",
                "timeseries",
                "Bps",
                "Bytes written per second (local IO), per VO.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_io_write_bytes_total{{{FV}}}"
                        "[$__rate_interval]))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "Bytes read per VO",
                "bargauge",
                "bytes",
                "Bytes read, summed over the ledger, per VO.",
                [(f"sum by (vo) (afmon_usage_io_read_bytes_total{{{FV}}})", "{{vo}}")],
            ),
            (
                "Bytes read per CPU second",
                "timeseries",
                "bytes",
                "Bytes read per CPU second used, per VO: how IO-bound the analyses are.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_io_read_bytes_total{{{FV}}}{RI}))"
                        f" / sum by (vo) (rate(afmon_usage_cpu_seconds_total{{{FV}}}"
                        "[$__rate_interval]))",
                        "{{vo}}",
                    )
                ],
            ),
        ],
    ),
    "afmon-vo": (
        "afmon / VO accounting",
        "Usage per VO from the ledger (members are in afmon's own dashboard, never in labels).",
        [
            (
                "CPU time per VO",
                "bargauge",
                "s",
                "CPU time used, summed over the ledger.",
                [(f"sum by (vo) (afmon_usage_cpu_seconds_total{{{FV}}})", "{{vo}}")],
            ),
            (
                "Normalised CPU per VO",
                "bargauge",
                HS23_SECONDS,
                "CPU time x HEPscore23 per core (HS23·s), as WLCG accounting normalises.",
                [(f"sum by (vo) (afmon_usage_cpu_hs23_seconds_total{{{FV}}})", "{{vo}}")],
            ),
            (
                "Memory x time per VO",
                "bargauge",
                BYTE_SECONDS,
                "Resident memory integrated over time (byte-seconds).",
                [(f"sum by (vo) (afmon_usage_memory_byte_seconds_total{{{FV}}})", "{{vo}}")],
            ),
            (
                "Sessions per VO",
                "bargauge",
                "short",
                "Interactive sessions accounted.",
                [(f"sum by (vo) (afmon_usage_sessions_total{{{FV}}})", "{{vo}}")],
            ),
            (
                "CPU used per VO over time",
                "timeseries",
                "short",
                "CPU time used per second (= cores busy), per VO.",
                [
                    (
                        f"sum by (vo) (rate(afmon_usage_cpu_seconds_total{{{FV}}}{RI}))",
                        "{{vo}}",
                    )
                ],
            ),
            (
                "Unmapped share of CPU",
                "stat",
                "percentunit",
                "Share of CPU time accounted to accounts the identity map does not know; "
                "the AfmonUnmappedUsage alert fires above 10 %.",
                [
                    (  # 0, not "No data", where nothing is unmapped
                        f"(sum by (facility) (afmon_usage_cpu_seconds_total{{{UNMAPPED}}}) "
                        f"or 0 * sum by (facility) (afmon_usage_cpu_seconds_total{{{F}}})) "
                        f"/ sum by (facility) (afmon_usage_cpu_seconds_total{{{F}}})",
                        "{{facility}}",
                    )
                ],
            ),
        ],
    ),
}


def _variables() -> list[dict[str, Any]]:
    def query_var(name: str, label: str, query: str) -> dict[str, Any]:
        return {
            "name": name,
            "label": label,
            "type": "query",
            "datasource": DS,
            "query": {"query": query, "refId": f"{name}-var"},
            "definition": query,
            "refresh": 2,
            "includeAll": True,
            "multi": True,
            "allValue": ".*",
            "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
            "sort": 1,
        }

    return [
        {
            "name": "datasource",
            "label": "Prometheus",
            "type": "datasource",
            "query": "prometheus",
            "current": {"selected": True, "text": "afmon Prometheus", "value": "afmon-prometheus"},
        },
        query_var(
            "facility",
            "Facility",
            "label_values(afmon_agent_last_seen_timestamp_seconds, facility)",
        ),
        query_var(
            "vo", "VO", 'label_values(afmon_usage_cpu_seconds_total{facility=~"$facility"}, vo)'
        ),
    ]


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    out = []
    for i, (ptitle, ptype, unit, desc, targets) in enumerate(panels):
        width = 8 if ptype == "stat" else 12
        out.append(
            {
                "id": i + 1,
                "type": ptype,
                "title": ptitle,
                "description": desc,
                "datasource": DS,
                "gridPos": {"h": 8, "w": width, "x": (i % 2) * 12, "y": (i // 2) * 8},
                "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
                "options": {},
                "targets": [
                    {
                        "refId": chr(ord("A") + k),
                        "datasource": DS,
                        "expr": expr,
                        "legendFormat": legend,
                        **({"instant": True, "format": "table"} if ptype == "table" else {}),
                    }
                    for k, (expr, legend) in enumerate(targets)
                ],
            }
        )
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["afmon"],
        "timezone": "utc",
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "editable": True,
        "refresh": "1m",
        "time": {"from": "now-24h", "to": "now"},
        "templating": {"list": _variables()},
        "annotations": {"list": []},
        "links": [],
        "panels": out,
    }


def render_all() -> dict[str, str]:
    """file name -> JSON text of every dashboard."""
    return {
        f"{uid}.json": json.dumps(dashboard(uid, *spec), indent=2, ensure_ascii=False) + "\n"
        for uid, spec in DASHBOARDS.items()
    }


if __name__ == "__main__":
    for name, body in render_all().items():
        (HERE / "dashboards" / name).write_text(body)
        print(f"wrote grafana/dashboards/{name}")
