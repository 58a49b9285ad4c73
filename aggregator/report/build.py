"""Building the weekly report document (a plain, JSON-ready dict) through the query layer.

Every output format is rendered from this one document, so the formats agree with each
other, and the document holds nothing that is not derived from the data and the settings
(no time of generation): the same data and settings give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pandas as pd

from afmon.aggregator import __version__
from afmon.aggregator.core import latency
from afmon.aggregator.core.settings import ServerSettings
from afmon.aggregator.query.operations import LatencyWaits
from afmon.aggregator.query.reads import Principal, Query
from afmon.aggregator.report import apel_inputs
from afmon.aggregator.report.prefetch import READERS, Prefetch
from afmon.aggregator.report.quantities import LEVELS, Quantity, num, quantities, ratio
from afmon.aggregator.report.week import Month, Week, iso_utc
from afmon.aggregator.store.schema import RESOURCES, UNMAPPED

SCHEMA_ID = "afmon-weekly-report/1"
NO_LATENCY = "no latency data"
Progress = Callable[[str, int, int], None]
Key = tuple[str, ...]

# settings that change a figure of the report (ingest-time ones included)
NUMBER_SETTINGS = (
    "default_hepscore23_per_core",
    "gauge_max_gap_seconds",
    "report_silence_seconds",
    "report_hs06_per_hs23",
    "latency_slo_seconds",
)
QUANTILES = (0.5, 0.95)


def settings_provenance(settings: ServerSettings, filters: dict[str, str | None]) -> dict[str, Any]:
    values = {name: getattr(settings, name, None) for name in NUMBER_SETTINGS}
    catalog = [[r.name, r.unit] for r in RESOURCES.values()]
    blob = json.dumps(
        {"settings": values, "filters": filters, "resources": catalog},
        sort_keys=True,
        separators=(",", ":"),
    )
    return {
        "afmon_version": __version__,
        "settings": values,
        "settings_sha256": hashlib.sha256(blob.encode()).hexdigest(),
        "resources": [
            {"name": r.name, "unit": r.unit, "title": r.title} for r in RESOURCES.values()
        ],
    }


@dataclass(frozen=True)
class Zeros:
    """A row's values for resources without use (0, 0 and null), written once per report:
    most of the catalog is unused by most members, and the rows then only set what is used."""

    usage: dict[str, int | float]
    quantities_of: dict[str, list[Quantity]]
    resources: dict[str, int | float]
    no_change: dict[str, None]

    @classmethod
    def of(cls, qs: list[Quantity]) -> Zeros:
        quantities_of: dict[str, list[Quantity]] = defaultdict(list)
        for q in qs:
            quantities_of[q.resource].append(q)
        return cls(
            usage={q.name: num(0.0 / q.divisor) for q in qs},
            quantities_of=dict(quantities_of),
            resources={r: num(0.0) for r in RESOURCES},
            no_change=dict.fromkeys(RESOURCES),
        )

    def per_resource(self, amounts: dict[str, float]) -> dict[str, int | float]:
        """Every catalog resource, in catalog order: its amount as written, or the zero."""
        return {**self.resources, **{r: num(a) for r, a in amounts.items() if r in self.resources}}


def _window(start: float, end: float) -> dict[str, Any]:
    return {
        "start": iso_utc(start),
        "end": iso_utc(end),
        "start_epoch": int(start),
        "end_epoch": int(end),
    }


class ReportBuilder:
    """Reads what `principal` may see for one week and returns the report document."""

    def __init__(
        self,
        query: Query,
        principal: Principal,
        settings: ServerSettings,
        facility: str | None = None,
        vo: str | None = None,
        progress: Progress | None = None,
    ) -> None:
        self._q = query
        self._p = principal
        self._settings = settings
        self._facility = facility
        self._vo = vo
        self._progress = progress or (lambda _label, _done, _total: None)

    def _keep(self, df: pd.DataFrame, by: tuple[str, ...], with_vo: bool = True) -> pd.DataFrame:
        if self._facility is not None:
            df = df[df["facility"] == self._facility]
        if with_vo and self._vo is not None and "vo" in by:
            df = df[df["vo"] == self._vo]
        return df

    def _totals(
        self,
        reads: Prefetch,
        start: float,
        end: float,
        by: tuple[str, ...],
        with_vo: bool = True,
    ) -> dict[Key, dict[str, float]]:
        df = self._keep(reads.totals(start, end, by).result(), by, with_vo)
        out: dict[Key, dict[str, float]] = defaultdict(dict)
        keys = zip(*(map(str, df[b].tolist()) for b in by), strict=True)
        for key, resource, amount in zip(
            keys, df["resource"].tolist(), df["amount"].tolist(), strict=True
        ):
            out[key][resource] = float(amount)
        return out

    def build(self, week: Week) -> dict[str, Any]:
        with ThreadPoolExecutor(READERS, thread_name_prefix="afmon-report") as pool:
            return self._build(week, Prefetch(self._q, self._p, pool))

    def _build(self, week: Week, reads: Prefetch) -> dict[str, Any]:
        months = week.months()
        steps = 3 * len(LEVELS) + len(months) + 2
        done = 0

        def step(label: str) -> None:
            nonlocal done
            done += 1
            self._progress(label, done, steps)

        prev = week.shifted(-1)
        # every read starts now, the longest (the month to date) first; the APEL inputs as soon
        # as the month to date is in, as they look up its members
        members = reads.submit(self._q.members, self._p)
        month_ends = [(m, min(m.end, week.end)) for m in months]
        for m, end in month_ends:
            reads.totals(m.start, end, LEVELS["member"])
        for by in LEVELS.values():
            reads.totals(week.start, week.end, by)
            reads.totals(prev.start, prev.end, by)
        waits = {  # kind -> its waits in the week, read once
            kind: reads.submit(self._q.latency_waits, self._p, kind, week.start, week.end)
            for kind in sorted(latency.KINDS)
        }
        receipts = reads.submit(self._q.agent_receipts, self._p, week.start, week.end)
        names = {
            str(m.member_id): str(m.display_name) for m in members.result().itertuples(index=False)
        }
        qs = quantities()
        zeros = Zeros.of(qs)
        month_rows = []
        for m, end in month_ends:
            tot = self._totals(reads, m.start, end, LEVELS["member"])
            month_rows.append(
                {
                    "month": str(m),
                    "year": m.year,
                    "month_number": m.month,
                    "window": _window(m.start, end),
                    "members": [
                        self._month_row(key, tot[key], zeros, names) for key in sorted(tot)
                    ],
                }
            )
        # what the APEL summaries need beyond the month to date (report/apel_inputs.py)
        apel = reads.submit(
            apel_inputs.section,
            self._q,
            self._p,
            self._settings,
            month_rows,
            self._facility,
            self._vo,
        )
        levels: dict[str, list[dict[str, Any]]] = {}
        for level, by in LEVELS.items():
            cur = self._totals(reads, week.start, week.end, by)
            step(f"{level}s, {week}")
            before = self._totals(reads, prev.start, prev.end, by)
            step(f"{level}s, {prev}")
            levels[level] = [
                self._row(by, key, cur.get(key, {}), before.get(key, {}), zeros, names)
                for key in sorted(set(cur) | set(before))
            ]
        for m in months:
            step(f"month to date {m}")
        completeness = {
            "silence_threshold_seconds": num(self._settings.report_silence_seconds),
            "agents": self._agents(week, receipts.result()),
            "unmapped": self._unmapped(reads, week),
        }
        step("completeness")
        filters = {"facility": self._facility, "vo": self._vo}
        doc = {
            "schema": SCHEMA_ID,
            "week": str(week),
            "window": _window(week.start, week.end),
            "previous_week": str(prev),
            "previous_window": _window(prev.start, prev.end),
            "scope": {
                "role": self._p.role,
                "member": self._p.member_id,
                "vo": self._p.vo,
                "facility": self._p.facility,
                "filters": filters,
            },
            "provenance": settings_provenance(self._settings, filters),
            "quantities": [
                {
                    "name": q.name,
                    "unit": q.unit,
                    "title": q.title,
                    "resource": q.resource,
                    "divisor": q.divisor,
                }
                for q in qs
            ],
            "levels": levels,
            "latency": self._latency(waits, step),
            "completeness": completeness,
            "month_to_date": month_rows,
            "apel": apel.result(),
        }
        step("done")
        return doc

    @staticmethod
    def _row(
        by: tuple[str, ...],
        key: Key,
        cur: dict[str, float],
        before: dict[str, float],
        zeros: Zeros,
        names: dict[str, str],
    ) -> dict[str, Any]:
        row: dict[str, Any] = dict(zip(by, key, strict=True))
        if "member" in row:
            row["display_name"] = names.get(row["member"], row["member"])
        usage = dict(zeros.usage)
        for r, amount in cur.items():
            for q in zeros.quantities_of.get(r, ()):
                usage[q.name] = num(amount / q.divisor)
        row["usage"] = usage
        row["previous"] = zeros.per_resource(before)
        row["change"] = {
            **zeros.no_change,
            **{r: ratio(cur.get(r, 0.0), a) for r, a in before.items() if r in zeros.resources},
        }
        return row

    @staticmethod
    def _month_row(
        key: Key, amounts: dict[str, float], zeros: Zeros, names: dict[str, str]
    ) -> dict[str, Any]:
        row: dict[str, Any] = dict(zip(LEVELS["member"], key, strict=True))
        row["display_name"] = names.get(row["member"], row["member"])
        row["usage"] = zeros.per_resource(amounts)
        return row

    def _latency(
        self, waits: dict[str, Future[LatencyWaits]], step: Callable[[str], None]
    ) -> dict[str, Any]:
        """p50/p95 and the share within the SLO per latency kind and level. Each kind's waits
        are read once for the report (`Query.latency_waits`, `waits`) and grouped per level in
        memory: the frames `latency_percentiles` returns for each level, without reading them
        again."""
        slos = getattr(self._settings, "latency_slo_seconds", {}) or {}
        levels: dict[str, list[dict[str, Any]]] = {}
        for level, by in LEVELS.items():
            rows = []
            for kind in sorted(latency.KINDS):
                slo = slos.get(kind)
                df = self._keep(
                    waits[kind].result().percentiles(by, quantiles=QUANTILES, slo_seconds=slo),
                    by,
                )
                for r in df.to_dict(orient="records"):
                    rows.append(
                        {
                            **{b: str(r[b]) for b in by},
                            "kind": kind,
                            "count": int(r["count"]),
                            "slo_seconds": None if slo is None else num(slo),
                            **{
                                c: _finite(r[c])
                                for c in ("mean_seconds", "p50_seconds", "p95_seconds")
                            },
                            "within_slo_ratio": _finite(r.get("within_slo_ratio")),
                        }
                    )
            levels[level] = sorted(rows, key=lambda x: (*(x[b] for b in by), x["kind"]))
            step(f"latency per {level}")
        if not levels["facility"]:
            return {
                "status": NO_LATENCY,
                "kinds": sorted(latency.KINDS),
                "levels": levels,
                "note": "no latency (time-to-session, time-to-first-worker, ...) was "
                "observed in this week's window.",
            }
        return {
            "status": "ok",
            "kinds": sorted(latency.KINDS),
            "levels": levels,
            "note": "successful starts only (failed starts are listed on the Interactive page); "
            "p50/p95 exact from the per-wait records, linear between waits "
            "(aggregator/core/latency.py), never outside the measured range; "
            "within_slo_ratio is exact when the SLO is a bucket bound.",
        }

    def _agents(self, week: Week, df: pd.DataFrame) -> list[dict[str, Any]] | None:
        """Per node, its batches and silences in the week, from `df` (`agent_receipts`)."""
        if self._p.role != "facility_admin":
            return None  # agent liveness is facility information
        if self._facility is not None:
            df = df[df["facility"] == self._facility]
        limit = self._settings.report_silence_seconds
        out = []
        for (facility, node), g in df.groupby(["facility", "node"], sort=True):
            times = sorted(float(t) for t in g["received_at"])
            in_week = [t for t in times if t >= week.start]
            # from the last batch before the week (or the first ever, if heard first this
            # week) to the end of the week
            points = [*times, float(week.end)]
            silences = []
            for a, b in zip(points, points[1:], strict=False):
                if b - a > limit:
                    lo = max(a, float(week.start))
                    silences.append(
                        {
                            "from": iso_utc(lo),
                            "to": iso_utc(b),
                            "seconds": num(b - lo),
                            "gap_seconds": num(b - a),
                        }
                    )
            out.append(
                {
                    "facility": str(facility),
                    "node": str(node),
                    "batches": len(in_week),
                    "silent_seconds": num(sum(s["seconds"] for s in silences)),
                    "longest_silence_seconds": num(
                        max((s["seconds"] for s in silences), default=0)
                    ),
                    "silences": silences,
                }
            )
        return out

    def _unmapped(self, reads: Prefetch, week: Week) -> list[dict[str, Any]]:
        by_vo = self._totals(reads, week.start, week.end, LEVELS["vo"], with_vo=False)
        per_facility: dict[str, dict[str, list[float]]] = defaultdict(
            lambda: defaultdict(lambda: [0.0, 0.0])
        )
        for (facility, vo), amounts in by_vo.items():
            for r, a in amounts.items():
                cell = per_facility[facility][r]
                cell[1] += a
                if vo == UNMAPPED:
                    cell[0] += a
        return [
            {
                "facility": f,
                "resource": r,
                "unmapped": num(u),
                "total": num(t),
                "share": round(u / t, 6) if t else None,
            }
            for f in sorted(per_facility)
            for r, (u, t) in sorted(per_facility[f].items())
            if t
        ]


def _finite(x: Any) -> float | int | None:
    if x is None or pd.isna(x):
        return None
    return num(round(float(x), 6))


def build_report(
    query: Query,
    principal: Principal,
    week: Week,
    settings: ServerSettings,
    facility: str | None = None,
    vo: str | None = None,
    progress: Progress | None = None,
) -> dict[str, Any]:
    return ReportBuilder(query, principal, settings, facility, vo, progress).build(week)


__all__ = ["Month", "NO_LATENCY", "SCHEMA_ID", "ReportBuilder", "build_report"]
